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
* no answer and no audit event contains a genuine token or its signature;
* the cache-hit fast path answers as the general path: a guard serving cache hits and one
  caching nothing give every environ (Authorization spellings, query, request id, paths,
  method) the same status, headers, body, verdict seen by the app, and audit events.

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

from bearerguard._context import SCOPE_KEY, RequestAuth, current_auth
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.apps import build_flask_app
from tests.test_properties import (
    BEARER_VALUE,
    MIDDLEWARE_PROFILE,
    RESPELLING_CHARS,
    header_values,
    mutate,
    mutations,
    positions,
    queries,
    respelled,
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
        status, headers, body, events = served(self.app, environ)
        return Outcome(int(status[:3]), headers, body, events)

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


# -- the cache-hit fast path against the general path -----------------------------------------

DIFF_PUBLIC = ("/public", "/health", "/static/*")


def echo_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A plain WSGI app answering with what the middleware handed it."""
    auth = environ.get(SCOPE_KEY)
    seen = current_auth.get()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [repr((verdict_seen(auth), seen is auth)).encode()]


def verdict_seen(auth: RequestAuth | None) -> tuple[Any, ...] | None:
    """A verdict as an app can observe it (not its start time)."""
    if auth is None:
        return None
    token = auth.token
    return (
        None if token is None else (token.subject, sorted(token.scopes)),
        auth.method,
        auth.path,
        auth.client,
        auth.request_id,
        getattr(auth.respond, "__name__", None),
    )


def comparable_events(events: list[MutableMapping[str, Any]]) -> list[dict[str, Any]]:
    """Audit events less what differs between any two requests (the measured latency)."""
    return [{k: v for k, v in entry.items() if k != "latency_ms"} for entry in events]


class WsgiDifferential:
    """Two guards, same issuer and rules: one reusing verified tokens (the WSGI cache-hit
    fast path serves its hits), one caching nothing (every request takes the general path);
    each in front of a plain WSGI app and of the Flask test app."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.tokens = (
            issuer.mint(scopes=["items:read"]),
            issuer.mint(algorithm="ES256", sub="ec"),
        )
        self.warm_guard = issuer.guard()
        cold_guard = issuer.guard(cache_size=0)
        self.apps = {
            "plain": tuple(
                BearerGuardWSGIMiddleware(echo_app, guard=guard, public_paths=DIFF_PUBLIC)
                for guard in (self.warm_guard, cold_guard)
            ),
            "flask": tuple(
                build_flask_app(guard, DIFF_PUBLIC) for guard in (self.warm_guard, cold_guard)
            ),
        }

    def warm_up(self) -> None:
        """Make every genuine token a cache hit of the warm guard."""
        for token in self.tokens:
            call_wsgi(self.apps["plain"][0], {"HTTP_AUTHORIZATION": f"Bearer {token}"})


def call_wsgi(app: Any, overrides: dict[str, str]) -> tuple[str, list[tuple[str, str]], bytes, Any]:
    """One request to ``app``: the environ a server would build, with ``overrides``."""
    builder = EnvironBuilder(path="/me")
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    environ.update(overrides)
    status, headers, body, events = served(app, environ)
    return status, headers, body, comparable_events(events)


def served(
    app: Any, environ: dict[str, Any]
) -> tuple[str, list[tuple[str, str]], bytes, list[dict[str, Any]]]:
    """Call ``app`` as a WSGI server does (the body read, then closed): its status line,
    headers, body and the audit events captured meanwhile."""
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, headers
        return lambda data: None

    with capture_logs() as events:
        result: Iterable[bytes] = app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    return seen["status"], seen["headers"], body, events


@pytest.fixture(scope="module")
def wsgi_differential(session_issuer: DevIssuer) -> WsgiDifferential:
    return WsgiDifferential(session_issuer)


def authorization_values(tokens: tuple[str, ...]) -> st.SearchStrategy[str]:
    """``HTTP_AUTHORIZATION`` around the genuine tokens, as servers hand it over: scheme
    case, spaces and tabs, trailing OWS, two headers joined with ", ", any latin-1, or a
    token respelled with text that is not latin-1 (a server outside PEP 3333), which the
    cache lookup encodes with "replace": "?" for what latin-1 cannot say."""
    spelled = st.builds(
        lambda scheme, token, suffix: scheme + token + suffix,
        st.sampled_from(["Bearer ", "bearer ", "BEARER ", "Bearer  ", "Bearer\t", " Bearer ", ""]),
        st.sampled_from(tokens),
        st.sampled_from(["", " ", "\t", " \t", "=", "x", "\x00", ",", ", ", "\r\n"]),
    )
    respelling = st.builds(
        lambda token, how, at, char: "Bearer " + respelled(token, how, at, char),
        st.sampled_from(tokens),
        st.sampled_from(["replace", "insert", "prefix", "suffix"]),
        positions,
        st.sampled_from(RESPELLING_CHARS),
    )
    value = spelled | respelling | header_values.map(lambda raw: raw.decode("latin-1"))
    usual = st.sampled_from([f"Bearer {token}" for token in tokens])  # the cache hits
    joined = st.tuples(spelled, value).map(", ".join)
    return st.one_of(usual, usual, spelled, value, joined)  # two draws in five are hits


environ_overrides = st.fixed_dictionaries(
    {
        "REQUEST_METHOD": st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "DELETE", "get"]),
        "SCRIPT_NAME": st.sampled_from(["", "/api"]),
        "PATH_INFO": st.sampled_from(
            [
                "/me",
                "/items",
                "/public",
                "/static/a",
                "/static/../me",
                "/public/x",
                "/./public",
                "/",
                "",
                "/nowhere",
                "/health",
                "/%2e%2e/me",
                "/\xc3\xa9",
            ]
        ),
        "QUERY_STRING": st.sampled_from(
            [
                "",
                "a=1",
                "access_token=x",
                "access%5Ftoken=x",
                "%61ccess_token=x",
                "a=%41",
                "x=access_token",
                "access_token",
                "a=1&access_token=",
                "ACCESS_TOKEN=x",
            ]
        ),
    },
    optional={
        "HTTP_X_REQUEST_ID": st.sampled_from(["", "abc", "a, b", "\x85x", "é", "r" * 300]),
        "REMOTE_ADDR": st.sampled_from(["127.0.0.1", "::1", ""]),
    },
)


@settings(MIDDLEWARE_PROFILE)
@given(data=st.data())
def test_the_wsgi_fast_path_answers_as_the_general_path(
    wsgi_differential: WsgiDifferential, data: st.DataObject
) -> None:
    """Whatever environ a server hands over, a guard serving cache hits answers it as one
    without a cache: same status, headers and body, same verdict seen by the app, same audit
    events, under a plain WSGI app and under Flask."""
    overrides = data.draw(environ_overrides)
    authorization = data.draw(st.none() | authorization_values(wsgi_differential.tokens))
    if authorization is not None:
        overrides["HTTP_AUTHORIZATION"] = authorization
    kind = data.draw(st.sampled_from(["plain", "flask"]))
    wsgi_differential.warm_up()
    warm_app, cold_app = wsgi_differential.apps[kind]
    warm = call_wsgi(warm_app, dict(overrides))
    cold = call_wsgi(cold_app, dict(overrides))
    event(f"{kind} {warm[0]}")
    assert warm == cold


def test_control_a_hit_on_the_warm_wsgi_guard_answers_as_a_miss(
    wsgi_differential: WsgiDifferential,
) -> None:
    """The comparison above is meaningful only if the warm guard's hits take the fast path
    and reach the app: checked here for every token and app, whatever Hypothesis draws."""
    wsgi_differential.warm_up()
    for token in wsgi_differential.tokens:
        assert wsgi_differential.warm_guard.reused(b"Bearer " + token.encode()) is not None
        overrides = {
            "PATH_INFO": "/me",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "HTTP_X_REQUEST_ID": "rid",
            "REMOTE_ADDR": "10.0.0.1",
        }
        for warm_app, cold_app in wsgi_differential.apps.values():
            warm = call_wsgi(warm_app, dict(overrides))
            assert warm[0] == "200 OK", warm
            assert warm == call_wsgi(cold_app, dict(overrides))
