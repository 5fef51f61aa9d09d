"""Property-based tests of the WSGI stack: a Flask app behind ``BearerGuardWSGIMiddleware``.

The same invariants as the ASGI middleware properties in ``tests/test_properties.py``, held
by the Flask app of ``tests/apps.py`` (``build_flask_app``), called with real WSGI environs:

* whatever ``Authorization`` value the server hands over (any bytes, as PEP 3333's latin-1
  strings, several headers joined with commas as servers join them, or even text that is not
  latin-1 at all), and whatever the query string, the answer is never a 5xx;
* 200 only to a genuine, unrevoked token, byte for byte, alone in its header, on a route its
  scopes allow; 403 only to such a token on a route needing a scope it lacks;
* every 400 and 401 carries one RFC 6750 ``Bearer`` challenge, and every decision emits
  exactly one audit event (two for a 403: the acceptance, then ``scope.denied``);
* no answer and no audit event contains a genuine token or its signature.

``HYPOTHESIS_PROFILE=long`` runs many more examples, as for the ASGI properties.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from werkzeug.test import EnvironBuilder

from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from tests.apps import build_flask_app
from tests.test_properties import (
    BEARER_VALUE,
    MIDDLEWARE_PROFILE,
    header_values,
    mutate,
    mutations,
    queries,
)

# Protected routes only (public paths answer without a token by design): a route any valid
# token may read, one needing items:read, and paths Flask does not route (404 after the
# middleware has accepted the token, never before).
# Werkzeug merges slashes, so "//items" is routed to /items (and its scope is still required).
PATHS = ("/me", "/items", "/reports", "/me/", "//items", "/nowhere")
ROUTE_OF = {"/me": "/me", "/items": "/items", "/reports": "/reports", "//items": "/items"}
SCOPED = {"/items": "items:read", "/reports": "reports:read"}
ROUTED = ("/me", "/items", "/reports")


@dataclass(frozen=True)
class Outcome:
    """What the WSGI stack answered, and the audit events emitted meanwhile."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    events: list[MutableMapping[str, Any]]


class WsgiTarget:
    """The Flask test app behind the WSGI middleware, and the genuine tokens it must accept."""

    def __init__(self, issuer: DevIssuer) -> None:
        store = MemoryRevocationStore()
        self.guard = issuer.guard(revocation=store)
        self.app = build_flask_app(self.guard)
        # token -> its scopes
        self.genuine = {
            issuer.mint(scopes=["items:read"]): {"items:read"},
            issuer.mint(algorithm="ES256", sub="ec-user"): set(),
            issuer.mint(
                expires_in=3600,
                aud=["https://other.example", issuer.audience],
                scopes=["items:read", "reports:read"],
            ): {"items:read", "reports:read"},
        }
        self.revoked = issuer.mint_revoked(store, scopes=["items:read", "reports:read"])
        self.tokens = (*self.genuine, self.revoked)

    def call(self, value: str | None, path: str, query: bytes = b"") -> Outcome:
        builder = EnvironBuilder(path="/", query_string=query.decode("latin-1"))
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        environ["PATH_INFO"] = path
        if value is not None:
            environ["HTTP_AUTHORIZATION"] = value
        seen: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            seen["status"], seen["headers"] = status, headers
            return lambda data: None

        with capture_logs() as events:
            result: Iterable[bytes] = self.app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return Outcome(int(seen["status"][:3]), seen["headers"], body, events)

    def check(self, values: list[bytes] | str, path: str, query: bytes, outcome: Outcome) -> None:
        """The properties of every answer; ``values`` are the headers sent (or the raw text)."""
        status, events = outcome.status, outcome.events
        names = [entry["event"] for entry in events]
        assert status in (200, 400, 401, 403, 404), status
        for token in self.tokens:
            assert token.encode() not in outcome.body
            signature = token.rsplit(".", 1)[1]
            assert all(signature not in repr(entry) for entry in events)
        if status in (200, 403, 404):
            # Only a genuine, unrevoked token, byte for byte, alone in its header.
            token = self._sole_token(values)
            assert token in self.genuine, (status, values)
            assert b"access_token" not in query
            scopes = self.genuine[token]
            route = ROUTE_OF.get(path)
            needed = None if route is None else SCOPED.get(route)
            if status == 200:
                assert route is not None
                assert needed is None or needed in scopes
                assert names == ["token.accepted"], names
            elif status == 403:
                assert needed is not None
                assert needed not in scopes
                assert names == ["token.accepted", "scope.denied"], names
                assert any(name.lower() == "www-authenticate" for name, _ in outcome.headers)
            else:
                assert route is None
                assert names == ["token.accepted"], names
            return
        challenges = [v for name, v in outcome.headers if name.lower() == "www-authenticate"]
        assert len(challenges) == 1, outcome.headers
        assert challenges[0].startswith("Bearer")
        assert names == ["token.rejected"], names
        audit = events[0]
        assert audit["status"] == status
        assert (status == 400) == (audit["reason"] == "invalid_request")
        assert not (audit.get("detail") or "").startswith("unexpected"), audit

    @staticmethod
    def _sole_token(values: list[bytes] | str) -> str:
        if isinstance(values, str):
            raw = values.encode("latin-1")  # raises (fails the test) for non-latin-1 text
        else:
            assert len(values) == 1
            raw = values[0]
        match = BEARER_VALUE.fullmatch(raw)
        assert match is not None
        return match.group(1).decode("latin-1")


def joined(values: list[bytes]) -> str | None:
    """The ``HTTP_AUTHORIZATION`` a server builds from repeated headers (PEP 3333: latin-1)."""
    return ", ".join(value.decode("latin-1") for value in values) if values else None


@pytest.fixture(scope="module")
def wsgi_target(session_issuer: DevIssuer) -> WsgiTarget:
    return WsgiTarget(session_issuer)


paths = st.sampled_from(PATHS)


@settings(MIDDLEWARE_PROFILE)
@given(values=st.lists(header_values, max_size=3), path=paths, query=queries)
def test_wsgi_over_arbitrary_authorization_bytes(
    wsgi_target: WsgiTarget, values: list[bytes], path: str, query: bytes
) -> None:
    outcome = wsgi_target.call(joined(values), path, query)
    event(f"status {outcome.status}")
    wsgi_target.check(values, path, query, outcome)


@settings(MIDDLEWARE_PROFILE)
@given(
    prefix=st.sampled_from(["", "Bearer ", "bearer  "]),
    genuine=st.none() | st.integers(min_value=0, max_value=3),
    text=st.text(max_size=120),
    path=paths,
)
def test_wsgi_over_arbitrary_text_a_server_should_not_send(
    wsgi_target: WsgiTarget, prefix: str, genuine: int | None, text: str, path: str
) -> None:
    """Text outside latin-1 (lone surrogates, astral characters), alone or after a genuine
    token: refused, never a 500."""
    token = "" if genuine is None else wsgi_target.tokens[genuine]
    text = prefix + token + text
    outcome = wsgi_target.call(text, path)
    event(f"status {outcome.status}")
    wsgi_target.check(text, path, b"", outcome)


@settings(MIDDLEWARE_PROFILE)
@given(
    pair=st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=3)),
    steps=st.lists(mutations, max_size=3),
    scheme=st.sampled_from([b"Bearer ", b"bearer ", b"Bearer  ", b"Basic ", b"Bearer\t"]),
    extra_header=st.booleans(),
    path=paths,
)
def test_wsgi_over_mutated_valid_tokens(
    wsgi_target: WsgiTarget,
    pair: tuple[int, int],
    steps: list[tuple[Any, ...]],
    scheme: bytes,
    extra_header: bool,
    path: str,
) -> None:
    index, donor = pair
    tokens = wsgi_target.tokens
    token = mutate(tokens[index], steps, tokens[donor])
    values = [scheme + token.encode()]
    if extra_header:
        values.append(b"Bearer " + tokens[donor].encode())
    outcome = wsgi_target.call(joined(values), path)
    event(f"status {outcome.status}")
    wsgi_target.check(values, path, b"", outcome)


def test_control_wsgi_accepts_every_genuine_token_and_refuses_the_revoked(
    wsgi_target: WsgiTarget,
) -> None:
    """The properties above are meaningful only if genuine tokens get through."""
    for token, scopes in wsgi_target.genuine.items():
        values = [b"Bearer " + token.encode()]
        for path in ROUTED:
            outcome = wsgi_target.call(joined(values), path)
            expected = 200 if SCOPED.get(path) in {None, *scopes} else 403
            assert outcome.status == expected, (path, scopes)
            wsgi_target.check(values, path, b"", outcome)
    outcome = wsgi_target.call(f"Bearer {wsgi_target.revoked}", "/me")
    assert outcome.status == 401
    assert outcome.events[0]["reason"] == "revoked"
