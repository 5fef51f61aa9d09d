"""One behavioural suite, run against every integration.

``test_same_answer_on_every_stack`` sends each request of ``CASES`` to five stacks: the ASGI
middleware (Starlette), the WSGI middleware (Flask), the Django middleware through Django's
``Client`` (sync) and ``AsyncClient`` (async), and FastAPI with ``BearerAuth`` alone (no
middleware). Each must answer as the ASGI stack does: the same status, headers, body and
audit events, less the differences the docs describe, which the cases assert. A stack that
cannot send a case's request is skipped with the reason. The other tests compare the ASGI
and WSGI stacks on what only the middlewares do (metadata, reused tokens).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import django
import httpx
import pytest
import structlog
from django.conf import settings
from starlette.testclient import TestClient
from werkzeug.test import Client as WerkzeugClient

if not settings.configured:  # the first Django test of the session (see docs/wsgi.md)
    settings.configure(
        ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="tests-only", MIDDLEWARE=[]
    )
    django.setup()

from django.test import override_settings

from bearerguard import AccessToken, BearerGuard
from bearerguard.dpop import DPoPPolicy
from bearerguard.metadata import ResourceMetadata
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from tests.apps import build_app, build_django_urls, build_fastapi_app, build_flask_app
from tests.test_dpop import Holder

Client = Callable[..., httpx.Response]
urlpatterns: list[Any] = []  # the default URLconf, when this module configures Django


class BrokenStore:
    async def is_revoked(self, token: AccessToken) -> bool:
        raise ConnectionError("down")

    def is_revoked_sync(self, token: AccessToken) -> bool:
        raise ConnectionError("down")


@pytest.fixture(params=["asgi", "wsgi"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_client(stack: str, guard: BearerGuard) -> Iterator[Client]:
    if stack == "asgi":
        with TestClient(build_app(guard), base_url="http://testserver") as client:
            yield client.request
    else:
        transport = httpx.WSGITransport(app=build_flask_app(guard))
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            yield client.request


@pytest.fixture
def store() -> MemoryRevocationStore:
    return MemoryRevocationStore()


@pytest.fixture
def call(stack: str, session_issuer: DevIssuer, store: MemoryRevocationStore) -> Iterator[Client]:
    yield from open_client(stack, session_issuer.guard(revocation=store))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- one request, every stack: the same status, challenge, body and audit events ------------

STACKS = ["asgi", "wsgi", "django-sync", "django-async", "fastapi"]
PUBLIC_PATHS = ["/health", "/static/*", "/open"]
WSGI_STACKS = ("wsgi", "django-sync")
DJANGO_HEADERS = "Django's test clients take headers as a dict: no repeated header"
NO_PUBLIC_PATHS = "BearerAuth alone has no public paths: a route without it verifies nothing"
NO_METHOD = "FastAPI answers a method its route lacks 405 before any dependency runs"
ASYNC_CLIENT_PATH = "Django's AsyncClient decodes a path as latin-1, no ASGI server does"
NO_ROUTE = "FastAPI answers a path no route takes (404, a redirect) before any dependency"
Headers = list[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Answer:
    """What a stack answered, in one shape for httpx's and Django's responses."""

    status: int
    headers: dict[str, str]
    body: bytes


Send = Callable[[str, str, Headers], Answer]


def _from_httpx(response: httpx.Response) -> Answer:
    return Answer(response.status_code, dict(response.headers), response.content)


def _latin1(headers: Headers) -> list[tuple[str, str]]:
    # A WSGI server hands the app latin-1 text (PEP 3333), as Django's clients take it.
    return [
        (name, value.decode("latin-1") if isinstance(value, bytes) else value)
        for name, value in headers
    ]


def _from_werkzeug(response: Any) -> Answer:
    headers = {name.lower(): value for name, value in response.headers.items()}
    return Answer(response.status_code, headers, response.data)


def _from_django(response: Any) -> Answer:
    headers = {name.lower(): value for name, value in response.headers.items()}
    return Answer(response.status_code, headers, response.content)


def open_stack(stack: str, guard: BearerGuard) -> Iterator[Send]:
    """Yield a function that sends one request to ``stack``, protected by ``guard``."""
    if stack.startswith("django"):
        yield from _open_django(stack, guard)
        return
    if stack == "wsgi":
        # werkzeug's client, not httpx's: it joins repeated headers and passes latin-1 text,
        # as WSGI servers do (PEP 3333).
        wsgi_client = WerkzeugClient(build_flask_app(guard))
        yield lambda method, path, headers: _from_werkzeug(
            wsgi_client.open(path, "http://testserver", method=method, headers=_latin1(headers))
        )
        return
    app = build_app(guard) if stack == "asgi" else build_fastapi_app(guard)
    with TestClient(app, base_url="http://testserver") as test_client:
        yield lambda method, path, headers: _from_httpx(
            test_client.request(method, path, headers=headers)
        )


def _open_django(stack: str, guard: BearerGuard) -> Iterator[Send]:
    from django.test import AsyncClient
    from django.test import Client as DjangoClient

    settings = override_settings(
        ROOT_URLCONF=build_django_urls(),
        ALLOWED_HOSTS=["testserver"],
        MIDDLEWARE=["bearerguard.django.BearerGuardMiddleware"],
        BEARERGUARD={"GUARD": guard, "PUBLIC_PATHS": PUBLIC_PATHS},
    )
    with settings:
        if stack == "django-sync":
            sync_client = DjangoClient()
            yield lambda method, path, headers: _from_django(
                sync_client.generic(method, path, headers=dict(_latin1(headers)))
            )
        else:
            async_client = AsyncClient()
            yield lambda method, path, headers: _from_django(
                asyncio.run(async_client.generic(method, path, headers=dict(_latin1(headers))))
            )


@dataclass(frozen=True)
class Case:
    """One request and the answer every stack must give it."""

    method: str
    path: str
    headers: Callable[[DevIssuer], Headers]
    status: int
    error: str | None
    events: list[tuple[str, str]]  # (event, reason)
    skip: dict[str, str] = field(default_factory=dict)  # stack -> why it cannot send this
    store: str = "memory"  # "down": a revocation store that fails
    dpop: bool = False  # the guard accepts DPoP (RFC 9449)
    keys_down: bool = False  # the guard's key set cannot be fetched
    warm: Callable[[Headers], Headers] | None = None  # sent first: the token is then reused
    before: Callable[[MemoryRevocationStore], object] | None = None
    # stack -> audit fields that differ from ASGI's on purpose (documented), with their value
    differs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # stack -> the scope= its challenge adds to ASGI's: docs/fastapi.md, "the scope of a 403
    # insufficient_scope (and of the dependency's 401) names every scope the operation needs"
    hint: dict[str, str] = field(default_factory=dict)


def auth(value: str | bytes, **more: str) -> Callable[[DevIssuer], Headers]:
    return lambda i: [("Authorization", value), *more.items()]


def minted(scheme: str = "Bearer", **options: Any) -> Callable[[DevIssuer], Headers]:
    return lambda i: [("Authorization", f"{scheme} {i.mint(**options)}")]


def proved(
    path: str = "/me",
    *,
    method: str = "GET",
    scheme: str = "DPoP",
    url: str | None = None,
    proofs: int = 1,
    **options: Any,
) -> Callable[[DevIssuer], Headers]:
    """A DPoP-bound token and ``proofs`` proofs for ``url`` (the request's, by default)."""

    def headers(i: DevIssuer) -> Headers:
        holder = Holder()
        token = i.mint(cnf={"jkt": holder.jkt}, **options)
        proof = holder.proof(token, method=method, url=url or f"http://testserver{path}")
        return [("Authorization", f"{scheme} {token}"), *[("DPoP", proof)] * proofs]

    return headers


def same(headers: Headers) -> Headers:
    return headers


def as_bearer(headers: Headers) -> Headers:
    """The same token, sent the usual way: ``Bearer`` and one space."""
    value = headers[0][1]
    token = (value.decode() if isinstance(value, bytes) else value).split()[-1]
    return [("Authorization", f"Bearer {token}")]


def joined(i: DevIssuer) -> Headers:
    token = i.mint()
    return [("Authorization", f"Bearer {token}, Bearer {token}")]


def first(headers: Headers) -> Headers:
    """The first token of a joined ``Authorization`` value, alone."""
    value = headers[0][1]
    text = value.decode() if isinstance(value, bytes) else value
    return [("Authorization", text.split(",")[0])]


def none(i: DevIssuer) -> Headers:
    return []


ACCEPTED = [("token.accepted", "ok")]
MISSING = [("token.rejected", "missing_token")]
DENIED = [("token.accepted", "ok"), ("scope.denied", "insufficient_scope")]
BAD_REQUEST = [("token.rejected", "invalid_request")]


# docs/wsgi.md "Differences that remain": a WSGI server joins repeated headers, so the WSGI
# side reads a joined value as several (docs/django.md: Django decides as the WSGI
# middleware, under ASGI too); one such ASGI header is one bad b64token.
JOINED_ON_WSGI: dict[str, dict[str, Any]] = {
    stack: {"detail": "several Authorization headers", "token_fp": None}
    for stack in ("wsgi", "django-sync", "django-async")
}


def rejected(reason: str) -> list[tuple[str, str]]:
    return [("token.rejected", reason)]


CASES: dict[str, Case] = {
    "no-credentials": Case("GET", "/me", none, 401, None, MISSING),
    "basic-scheme": Case("GET", "/me", auth("Basic eDp5"), 401, None, MISSING),
    "valid": Case("GET", "/me", minted(scopes=["a"]), 200, None, ACCEPTED),
    "lowercase-scheme": Case("GET", "/me", minted("bearer"), 200, None, ACCEPTED),
    "uppercase-scheme": Case("GET", "/me", minted("BEARER"), 200, None, ACCEPTED),
    "scoped-ok": Case("GET", "/items", minted(scopes=["items:read"]), 200, None, ACCEPTED),
    "scope-missing": Case("GET", "/items", minted(), 403, "insufficient_scope", DENIED),
    "all-of-missing-one": Case(
        "POST", "/items", minted(scopes=["items:read"]), 403, "insufficient_scope", DENIED
    ),
    "all-of": Case(
        "POST", "/items", minted(scopes=["items:read", "items:write"]), 200, None, ACCEPTED
    ),
    "any-of": Case("DELETE", "/items", minted(scopes=["admin"]), 200, None, ACCEPTED),
    "any-of-none": Case(
        "DELETE", "/items", minted(scopes=["x"]), 403, "insufficient_scope", DENIED
    ),
    "class-or-blueprint": Case(
        "GET", "/reports", minted(scopes=["reports:read"]), 200, None, ACCEPTED
    ),
    "class-or-blueprint-denied": Case(
        "POST", "/reports", minted(scopes=["reports:read"]), 403, "insufficient_scope", DENIED
    ),
    "expired": Case(
        "GET", "/me", minted(expires_in=-120), 401, "invalid_token", rejected("expired")
    ),
    "not-yet-valid": Case(
        "GET",
        "/me",
        lambda i: [("Authorization", f"Bearer {i.mint_not_yet_valid()}")],
        401,
        "invalid_token",
        rejected("not_yet_valid"),
    ),
    "wrong-issuer": Case(
        "GET",
        "/me",
        minted(iss="https://elsewhere.example"),
        401,
        "invalid_token",
        rejected("invalid_issuer"),
    ),
    "wrong-audience": Case(
        "GET",
        "/me",
        minted(aud="https://other-api.example"),
        401,
        "invalid_token",
        rejected("invalid_audience"),
    ),
    "garbage": Case(
        "GET", "/me", auth("Bearer abc.def.ghi"), 401, "invalid_token", rejected("malformed_token")
    ),
    "not-b64token": Case("GET", "/me", auth("Bearer a b"), 400, "invalid_request", BAD_REQUEST),
    "oversized": Case(
        "GET",
        "/me",
        auth("Bearer " + "a" * 9000),
        401,
        "invalid_token",
        rejected("malformed_token"),
    ),
    "non-ascii-authorization": Case(
        "GET",
        "/me",
        auth("Bearer caf\u00e9.\u20ac.x".encode()),
        400,
        "invalid_request",
        BAD_REQUEST,
    ),
    "two-authorization-headers": Case(
        "GET",
        "/me",
        lambda i: [("Authorization", f"Bearer {i.mint()}"), ("Authorization", "Bearer x.y.z")],
        400,
        "invalid_request",
        BAD_REQUEST,
        skip={"django-sync": DJANGO_HEADERS, "django-async": DJANGO_HEADERS},
    ),
    "joined-authorization-headers": Case(
        "GET",
        "/me",
        lambda i: [("Authorization", f"Bearer {i.mint()}, Bearer {i.mint()}")],
        400,
        "invalid_request",
        BAD_REQUEST,
        differs=JOINED_ON_WSGI,
    ),
    "header-and-query": Case(
        "GET",
        "/me?access_token=abc",
        minted(),
        400,
        "invalid_request",
        BAD_REQUEST,
    ),
    "query-only": Case(
        "GET",
        "/me?access_token=abc",
        none,
        400,
        "invalid_request",
        BAD_REQUEST,
    ),
    "revoked-token": Case(
        "GET",
        "/me",
        minted(jti="revoked-1"),
        401,
        "invalid_token",
        rejected("revoked"),
        before=lambda store: store.revoke_token_sync("revoked-1"),
    ),
    "revoked-subject": Case(
        "GET",
        "/me",
        minted(sub="cut-off"),
        401,
        "invalid_token",
        rejected("revoked"),
        before=lambda store: store.revoke_subject_sync("cut-off"),
    ),
    "store-down": Case(
        "GET",
        "/me",
        minted(),
        503,
        None,
        [("auth.unavailable", "revocation_unavailable")],
        store="down",
    ),
    "request-id": Case(
        "GET", "/me", lambda i: [*minted()(i), ("X-Request-ID", "r-1")], 200, None, ACCEPTED
    ),
    "request-id-refused": Case(
        "GET", "/me", lambda i: [("X-Request-ID", "r-2")], 401, None, MISSING
    ),
    "request-id-repeated": Case(
        "GET",
        "/me",
        lambda i: [("X-Request-ID", "r-3"), ("X-Request-ID", "r-4")],
        401,
        None,
        MISSING,
        skip={"django-sync": DJANGO_HEADERS, "django-async": DJANGO_HEADERS},
    ),
    "head": Case("HEAD", "/me", minted(), 200, None, ACCEPTED),
    "head-no-credentials": Case("HEAD", "/me", none, 401, None, MISSING),
    "options-no-credentials": Case(
        "OPTIONS", "/me", none, 401, None, MISSING, skip={"fastapi": NO_METHOD}
    ),
    "public": Case("GET", "/health", none, 200, None, []),
    "public-prefix": Case("GET", "/static/app.js", none, 200, None, []),
    "public-percent-encoded": Case("GET", "/heal%74h", none, 200, None, []),
    "public-prefix-percent-encoded": Case("GET", "/static%2Fapp.js", none, 200, None, []),
    "not-a-prefix": Case("GET", "/healthcheck-admin", none, 401, None, MISSING),
    "not-a-prefix-percent-encoded": Case("GET", "/health%63heck-admin", none, 401, None, MISSING),
    "public-bad-token": Case(
        "GET",
        "/health",
        auth("Bearer x.y.z"),
        401,
        "invalid_token",
        rejected("malformed_token"),
        skip={"fastapi": NO_PUBLIC_PATHS},
    ),
    "public-scoped": Case(
        "GET", "/open", none, 401, None, MISSING, skip={"fastapi": NO_PUBLIC_PATHS}
    ),
    "bearer-without-credentials": Case(
        "GET", "/me", auth("Bearer"), 400, "invalid_request", BAD_REQUEST
    ),
    "two-spaces-after-scheme": Case(  # RFC 6750 §2.1: 1*SP
        "GET", "/me", lambda i: [("Authorization", f"Bearer  {i.mint()}")], 200, None, ACCEPTED
    ),
    "trailing-whitespace": Case(  # RFC 9110 §5.5: no part of the field value
        "GET", "/me", lambda i: [("Authorization", f"Bearer {i.mint()} \t")], 200, None, ACCEPTED
    ),
    "tab-after-scheme": Case(  # not 1*SP: no Bearer credentials
        "GET", "/me", lambda i: [("Authorization", f"Bearer\t{i.mint()}")], 401, None, MISSING
    ),
    "dpop-scheme-without-dpop": Case("GET", "/me", minted("DPoP"), 401, None, MISSING),
    "query-on-public-path": Case(
        "GET",
        "/health?access_token=x",
        none,
        400,
        "invalid_request",
        BAD_REQUEST,
        skip={"fastapi": NO_PUBLIC_PATHS},
    ),
    "query-name-percent-encoded": Case(
        "GET", "/me?%61ccess_token=x", none, 400, "invalid_request", BAD_REQUEST
    ),
    "query-empty-value": Case(
        "GET", "/me?access_token=", none, 400, "invalid_request", BAD_REQUEST
    ),
    "query-name-only": Case("GET", "/me?access_token", none, 400, "invalid_request", BAD_REQUEST),
    "query-other-name": Case("GET", "/me?ACCESS_TOKEN=x", none, 401, None, MISSING),
    "head-scope-missing": Case("HEAD", "/items", minted(), 403, "insufficient_scope", DENIED),
    "public-path-with-slash": Case(
        "GET", "/health/", none, 401, None, MISSING, skip={"fastapi": NO_ROUTE}
    ),
    "dot-segments-encoded": Case(
        "GET", "/static%2F..%2Fme", none, 401, None, MISSING, skip={"fastapi": NO_ROUTE}
    ),
    "public-path-with-parameter": Case(
        "GET", "/health;x", none, 401, None, MISSING, skip={"fastapi": NO_ROUTE}
    ),
    "path-not-utf8": Case(
        "GET",
        "/me%ff",
        none,
        401,
        None,
        MISSING,
        skip={"django-async": ASYNC_CLIENT_PATH, "fastapi": NO_ROUTE},
        # docs/django.md: under WSGI, Django percent-encodes a path's stray bytes again
        # before any middleware runs; the others decode them with replacement characters.
        differs={"django-sync": {"path": "/me%FF"}},
    ),
    "path-with-line-feed": Case("GET", "/me%0a", none, 401, None, MISSING),
    "request-id-not-ascii": Case(
        "GET", "/me", lambda i: [("X-Request-ID", "r\u00e9-\u20ac".encode())], 401, None, MISSING
    ),
    "request-id-long": Case(
        "GET", "/me", lambda i: [("X-Request-ID", "r" * 300)], 401, None, MISSING
    ),
    "request-id-escape": Case(
        "GET", "/me", lambda i: [("X-Request-ID", "a\x1b[31mb")], 401, None, MISSING
    ),
    "request-id-empty": Case("GET", "/me", lambda i: [("X-Request-ID", "")], 401, None, MISSING),
    "revoked-subject-no-jti": Case(
        "GET",
        "/me",
        minted(sub="cut-off-2", jti=None),
        401,
        "invalid_token",
        rejected("revoked"),
        before=lambda store: store.revoke_subject_sync("cut-off-2"),
    ),
    "subject-not-printable": Case("GET", "/me", minted(sub="jos\u00e9\n"), 200, None, ACCEPTED),
    "expired-on-public-path": Case(
        "GET",
        "/health",
        minted(expires_in=-120),
        401,
        "invalid_token",
        rejected("expired"),
        skip={"fastapi": NO_PUBLIC_PATHS},
    ),
    "store-down-on-public-path": Case(
        "GET",
        "/health",
        minted(),
        503,
        None,
        [("auth.unavailable", "revocation_unavailable")],
        store="down",
        skip={"fastapi": NO_PUBLIC_PATHS},
    ),
    "store-down-on-scoped-route": Case(
        "GET",
        "/items",
        minted(),
        503,
        None,
        [("auth.unavailable", "revocation_unavailable")],
        store="down",
    ),
    "no-credentials-on-scoped-route": Case(
        "GET", "/items", none, 401, None, MISSING, hint={"fastapi": 'scope="items:read"'}
    ),
    "expired-on-scoped-route": Case(
        "GET",
        "/items",
        minted(expires_in=-120),
        401,
        "invalid_token",
        rejected("expired"),
        hint={"fastapi": 'scope="items:read"'},
    ),
    "revoked-on-scoped-route": Case(
        "POST",
        "/items",
        minted(jti="revoked-2"),
        401,
        "invalid_token",
        rejected("revoked"),
        before=lambda store: store.revoke_token_sync("revoked-2"),
        hint={"fastapi": 'scope="items:read items:write"'},
    ),
    "method-not-routed": Case("POST", "/me", none, 401, None, MISSING, skip={"fastapi": NO_METHOD}),
    "path-not-routed": Case(
        "GET", "/nowhere", none, 401, None, MISSING, skip={"fastapi": NO_ROUTE}
    ),
    "path-not-routed-token": Case(
        "GET", "/nowhere", minted(), 404, None, ACCEPTED, skip={"fastapi": NO_ROUTE}
    ),
    "dpop": Case("GET", "/me", proved(), 200, None, [("token.accepted", "ok")], dpop=True),
    "dpop-head": Case(
        "HEAD", "/me", proved(method="HEAD"), 200, None, [("token.accepted", "ok")], dpop=True
    ),
    "dpop-query-string": Case(  # RFC 9449 §4.3: htu without the query
        "GET", "/me?page=2", proved(url="http://testserver/me"), 200, None, ACCEPTED, dpop=True
    ),
    "dpop-percent-encoded-path": Case(
        "GET", "/m%65", proved("/m%65"), 200, None, ACCEPTED, dpop=True
    ),
    "dpop-scope-missing": Case(
        "GET", "/items", proved("/items"), 403, "insufficient_scope", DENIED, dpop=True
    ),
    "dpop-bound-token-as-bearer": Case(  # RFC 9449 §7.2
        "GET",
        "/me",
        proved(scheme="Bearer"),
        401,
        "invalid_token",
        rejected("invalid_token"),
        dpop=True,
    ),
    "dpop-without-proof": Case(
        "GET",
        "/me",
        proved(proofs=0),
        401,
        "invalid_dpop_proof",
        rejected("invalid_dpop_proof"),
        dpop=True,
    ),
    "dpop-two-proofs": Case(
        "GET",
        "/me",
        proved(proofs=2),
        401,
        "invalid_dpop_proof",
        rejected("invalid_dpop_proof"),
        dpop=True,
        skip={"django-sync": DJANGO_HEADERS, "django-async": DJANGO_HEADERS},
    ),
    "dpop-other-url": Case(
        "GET",
        "/me",
        proved(url="http://testserver/items"),
        401,
        "invalid_dpop_proof",
        rejected("invalid_dpop_proof"),
        dpop=True,
    ),
    "dpop-no-credentials": Case("GET", "/me", none, 401, None, MISSING, dpop=True),
    "reused": Case("GET", "/me", minted(), 200, None, ACCEPTED, warm=same),
    "reused-revoked-token": Case(
        "GET",
        "/me",
        minted(jti="revoked-3"),
        401,
        "invalid_token",
        rejected("revoked"),
        before=lambda store: store.revoke_token_sync("revoked-3"),
        warm=same,
    ),
    "reused-revoked-subject": Case(
        "GET",
        "/me",
        minted(sub="cut-off-3"),
        401,
        "invalid_token",
        rejected("revoked"),
        before=lambda store: store.revoke_subject_sync("cut-off-3"),
        warm=same,
    ),
    "reused-lowercase-scheme": Case(
        "GET", "/me", minted("bearer"), 200, None, ACCEPTED, warm=as_bearer
    ),
    "reused-with-query": Case(
        "GET", "/me?access_token=x", minted(), 400, "invalid_request", BAD_REQUEST, warm=same
    ),
    "reused-query-percent-encoded": Case(
        "GET", "/me?%61ccess_token=x", minted(), 400, "invalid_request", BAD_REQUEST, warm=same
    ),
    "reused-joined": Case(
        "GET",
        "/me",
        joined,
        400,
        "invalid_request",
        BAD_REQUEST,
        warm=first,
        differs=JOINED_ON_WSGI,
    ),
    "reused-two-spaces": Case("GET", "/me", minted("Bearer "), 200, None, ACCEPTED, warm=as_bearer),
    "reused-trailing-whitespace": Case(
        "GET",
        "/me",
        lambda i: [("Authorization", f"Bearer {i.mint()} ")],
        200,
        None,
        ACCEPTED,
        warm=as_bearer,
    ),
    "reused-request-id": Case(
        "GET",
        "/me",
        lambda i: [*minted()(i), ("X-Request-ID", "r-5")],
        200,
        None,
        ACCEPTED,
        warm=same,
    ),
    "reused-scope-missing": Case(
        "POST",
        "/items",
        minted(scopes=["items:read"]),
        403,
        "insufficient_scope",
        DENIED,
        warm=same,
    ),
    "reused-on-public-path": Case(
        "GET",
        "/health",
        minted(),
        200,
        None,
        ACCEPTED,
        warm=same,
        skip={"fastapi": NO_PUBLIC_PATHS},
    ),
    "reused-head": Case("HEAD", "/me", minted(), 200, None, ACCEPTED, warm=same),
    "keys-down": Case(
        "GET",
        "/me",
        minted(),
        503,
        None,
        [("auth.unavailable", "keys_unavailable")],
        keys_down=True,
    ),
    "keys-down-no-credentials": Case("GET", "/me", none, 401, None, MISSING, keys_down=True),
}


VOLATILE = {"latency_ms", "client"}  # the time taken; the peer each test client reports


def _events(logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events = [{k: v for k, v in event.items() if k not in VOLATILE} for event in logged]
    for event in events:  # "expired 120s ago": a second may pass between two requests
        if isinstance(event.get("detail"), str):
            event["detail"] = re.sub(r"\d+s\b", "Ns", event["detail"])
    return events


def _ask(
    stack: str, guard: BearerGuard, case: Case, headers: Headers, store: MemoryRevocationStore
) -> tuple[Answer, Any]:
    for send in open_stack(stack, guard):
        if case.warm is not None:  # until the guard serves the token from its cache
            for _ in range(3):
                assert send("GET", "/me", case.warm(headers)).status == 200
        if case.before is not None:
            case.before(store)
        with structlog.testing.capture_logs() as logged:
            answer = send(case.method, case.path, headers)
        return answer, _events(logged)
    raise AssertionError("open_stack yielded nothing")


@pytest.mark.parametrize(
    ("name", "stack"),
    [
        pytest.param(
            name,
            stack,
            marks=[pytest.mark.skip(reason=case.skip[stack])] if stack in case.skip else [],
        )
        for name, case in CASES.items()
        for stack in STACKS
    ],
)
def test_same_answer_on_every_stack(session_issuer: DevIssuer, name: str, stack: str) -> None:
    case = CASES[name]
    store = MemoryRevocationStore()

    def guard() -> BearerGuard:
        options: dict[str, Any] = {
            "revocation": BrokenStore() if case.store == "down" else store,
            "dpop": DPoPPolicy() if case.dpop else None,
        }
        if case.keys_down:  # nothing listens on port 9 of the loopback: refused at once
            return BearerGuard(
                issuer=session_issuer.url,
                audience=session_issuer.audience,
                jwks_uri="http://127.0.0.1:9/jwks.json",
                **options,
            )
        return session_issuer.guard(**options)

    headers = case.headers(session_issuer)  # one request, sent to ASGI and to `stack`
    answer, events = _ask(stack, guard(), case, headers, store)
    assert answer.status == case.status, answer.body
    assert [(event["event"], event["reason"]) for event in events] == case.events
    if case.status in (400, 401, 403):
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="https://api.example"')
        assert (f'error="{case.error}"' in challenge) if case.error else ("error=" not in challenge)
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["content-type"] == "application/json"
        if case.method != "HEAD":
            assert set(json.loads(answer.body)) == {"error", "error_description"}
    if stack == "asgi":
        return
    if case.warm is not None:
        store = MemoryRevocationStore()  # the reference warms up before its revocation too
    reference, reference_events = _ask("asgi", guard(), case, headers, store)
    assert len(events) == len(reference_events)
    for event, expected in zip(events, reference_events, strict=True):
        expected.update(case.differs.get(stack, {}))
        keys = event.keys() | expected.keys()
        differing = {
            k: (event.get(k), expected.get(k)) for k in keys if event.get(k) != expected.get(k)
        }
        assert differing == {}  # (this stack's, ASGI's) for each field that differs
    if case.status in (400, 401, 403, 503):  # the guard's own answers, header for header
        # Content-Length is framing: Django leaves it to the server (CommonMiddleware, below
        # the guard, sets it), and for HEAD some stacks give the GET body's length.
        headers = {k: v for k, v in reference.headers.items() if k != "content-length"}
        answer_headers = {k: v for k, v in answer.headers.items() if k != "content-length"}
        if stack in case.hint:
            headers["www-authenticate"] += f", {case.hint[stack]}"
        assert answer_headers == headers
        assert answer.body == reference.body


def test_token_in_the_query_string(call: Client, session_issuer: DevIssuer) -> None:
    response = call("GET", f"/me?access_token={session_issuer.mint()}")
    assert response.status_code == 400


def test_revocation_on_both_stacks(
    call: Client, session_issuer: DevIssuer, store: MemoryRevocationStore
) -> None:
    token = session_issuer.mint(sub="ivy", jti="revoke-me")
    assert call("GET", "/me", headers=bearer(token)).status_code == 200
    store.revoke_token_sync("revoke-me")
    with structlog.testing.capture_logs() as logged:
        assert call("GET", "/me", headers=bearer(token)).status_code == 401
    assert logged[0]["reason"] == "revoked"


def test_failing_store_fails_closed_on_both_stacks(stack: str, session_issuer: DevIssuer) -> None:
    for client in open_client(stack, session_issuer.guard(revocation=BrokenStore())):
        response = client("GET", "/me", headers=bearer(session_issuer.mint()))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"


def test_same_body_and_challenge_text(session_issuer: DevIssuer) -> None:
    answers: list[tuple[int, str, Any]] = []
    token = session_issuer.mint()
    for stack in ("asgi", "wsgi"):
        for client in open_client(stack, session_issuer.guard()):
            response = client("POST", "/items", headers=bearer(token))
            answers.append(
                (response.status_code, response.headers["www-authenticate"], response.json())
            )
    assert answers[0] == answers[1]


# -- scope implications and RFC 9728 metadata: the same on both stacks ----------------------

IMPLICATIONS = {"items:admin": ["items:write", "items:delete"], "items:write": ["items:read"]}
RESOURCE = "https://api.example/v1"
METADATA_URL = "https://api.example/.well-known/oauth-protected-resource/v1"


@pytest.fixture
def described(stack: str, session_issuer: DevIssuer) -> Iterator[Client]:
    guard = session_issuer.guard(
        scope_implications=IMPLICATIONS,
        audience=session_issuer.audience,  # the tokens' aud; the resource is published
        resource=RESOURCE,
        resource_metadata=ResourceMetadata(scopes_supported=["items:read", "items:write"]),
    )
    yield from open_client(stack, guard)


@pytest.mark.parametrize(
    ("method", "path", "scopes", "status"),
    [
        ("GET", "/items", ["items:write"], 200),
        ("GET", "/items", ["items:admin"], 200),
        ("POST", "/items", ["items:write"], 200),
        ("POST", "/items", ["items:admin"], 200),
        ("DELETE", "/items", ["items:admin"], 200),
        ("POST", "/items", ["items:read"], 403),
        ("GET", "/reports", ["items:admin"], 403),
    ],
)
def test_implied_scopes_on_both_stacks(
    described: Client,
    session_issuer: DevIssuer,
    method: str,
    path: str,
    scopes: list[str],
    status: int,
) -> None:
    with structlog.testing.capture_logs() as logged:
        response = described(method, path, headers=bearer(session_issuer.mint(scopes=scopes)))
    assert response.status_code == status
    expected = ["token.accepted"] + (["scope.denied"] if status == 403 else [])
    assert [event["event"] for event in logged] == expected
    if status == 403:
        assert f'resource_metadata="{METADATA_URL}"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("path", "headers", "challenge"),
    [
        ("/me", {}, f'Bearer realm="https://api.example", resource_metadata="{METADATA_URL}"'),
        (
            "/me",
            {"Authorization": "Bearer x.y.z"},
            'Bearer realm="https://api.example", error="invalid_token", '
            'error_description="The access token is malformed.", '
            f'resource_metadata="{METADATA_URL}"',
        ),
        (
            "/open",  # public, but the route's scopes are known: they are hinted
            {},
            f'Bearer realm="https://api.example", resource_metadata="{METADATA_URL}", '
            'scope="items:read"',
        ),
    ],
)
def test_challenges_name_the_metadata_on_both_stacks(
    described: Client, path: str, headers: dict[str, str], challenge: str
) -> None:
    response = described("GET", path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge


def test_bad_requests_and_outages_carry_no_metadata(stack: str, session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(
        audience=session_issuer.audience, resource=RESOURCE, revocation=BrokenStore()
    )
    for client in open_client(stack, guard):
        assert "resource_metadata" not in client(
            "GET", "/me", headers={"Authorization": "Bearer a b"}
        ).headers.get("www-authenticate", "")
        outage = client("GET", "/me", headers=bearer(session_issuer.mint()))
        assert outage.status_code == 503
        assert "www-authenticate" not in outage.headers


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource/v1", "/.well-known/oauth-protected-resource"]
)
def test_metadata_served_on_both_stacks(
    described: Client, session_issuer: DevIssuer, path: str
) -> None:
    with structlog.testing.capture_logs() as logged:
        response = described("GET", path, headers={"Authorization": "Bearer not-even-checked"})
        head = described("HEAD", path)
        post = described("POST", path)
    assert logged == []  # public metadata, not an authentication decision
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json() == {
        "resource": RESOURCE,
        "authorization_servers": [session_issuer.url],
        "scopes_supported": ["items:read", "items:write"],
        "bearer_methods_supported": ["header"],
    }
    assert head.status_code == 200
    assert head.content == b""
    assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD, OPTIONS")


def test_a_percent_encoded_resource_path_is_served_where_challenges_point(
    stack: str, session_issuer: DevIssuer
) -> None:
    resource = "https://api.example/notes%20v2/%7Emia"
    guard = session_issuer.guard(audience=session_issuer.audience, resource=resource)
    for client in open_client(stack, guard):
        challenge = client("GET", "/me").headers["www-authenticate"]
        url = "https://api.example/.well-known/oauth-protected-resource/notes%20v2/%7Emia"
        assert f'resource_metadata="{url}"' in challenge
        served = client("GET", "/.well-known/oauth-protected-resource/notes%20v2/%7Emia")
        assert served.status_code == 200
        assert served.json()["resource"] == resource


def test_other_well_known_paths_stay_protected(described: Client) -> None:
    assert described("GET", "/.well-known/oauth-protected-resource/v2").status_code == 401


def test_same_metadata_and_challenges_text(session_issuer: DevIssuer) -> None:
    answers: list[tuple[Any, ...]] = []
    for stack in ("asgi", "wsgi"):
        guard = session_issuer.guard(scope_implications=IMPLICATIONS, resource=RESOURCE)
        for client in open_client(stack, guard):
            document = client("GET", "/.well-known/oauth-protected-resource/v1")
            denied = client("GET", "/reports", headers=bearer(session_issuer.mint()))
            answers.append(
                (document.content, denied.status_code, denied.headers["www-authenticate"])
            )
    assert answers[0] == answers[1]


# -- reused tokens: the cache-hit fast path of each middleware applies the same rules -------


def _reused(call: Client, token: str) -> None:
    """Send ``token`` until the middleware serves it from its fast path."""
    for _ in range(3):
        assert call("GET", "/me", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("kind", ["token", "subject", "client"])
def test_revoking_a_reused_token_on_both_stacks(
    call: Client, session_issuer: DevIssuer, store: MemoryRevocationStore, kind: str
) -> None:
    token = session_issuer.mint(sub="jo", client_id="app-3", jti="reused-1")
    _reused(call, token)
    store.revoke_subject_sync("someone-else")  # a change that does not concern it
    assert call("GET", "/me", headers=bearer(token)).status_code == 200
    if kind == "token":
        store.revoke_token_sync("reused-1")
    elif kind == "subject":
        store.revoke_subject_sync("jo")
    else:
        store.revoke_client_sync("app-3")
    with structlog.testing.capture_logs() as logged:
        assert call("GET", "/me", headers=bearer(token)).status_code == 401
    assert logged[0]["reason"] == "revoked"


@pytest.mark.parametrize(("query", "status"), [("", 200), ("?x=1", 200), ("?access_token=t", 400)])
def test_request_rules_hold_for_a_reused_token_on_both_stacks(
    call: Client, session_issuer: DevIssuer, query: str, status: int
) -> None:
    token = session_issuer.mint()
    _reused(call, token)
    assert call("GET", f"/me{query}", headers=bearer(token)).status_code == status
    joined = {"Authorization": f"Bearer {token}, Bearer {token}"}  # what WSGI servers make
    assert call("GET", "/me", headers=joined).status_code == 400


def test_reused_token_events_and_scope_checks_on_both_stacks(
    call: Client, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(sub="kai", scopes=["items:read"])
    _reused(call, token)
    with structlog.testing.capture_logs() as logged:
        ok = call("GET", "/items", headers={**bearer(token), "X-Request-ID": "r-9"})
        denied = call("POST", "/items", headers={**bearer(token), "X-Request-ID": "r-10"})
    assert (ok.status_code, denied.status_code) == (200, 403)
    assert [event["event"] for event in logged] == [
        "token.accepted",
        "token.accepted",
        "scope.denied",
    ]
    assert [event["request_id"] for event in logged] == ["r-9", "r-10", "r-10"]
    assert {event["sub"] for event in logged} == {"kai"}
    assert logged[0]["scopes"] == ["items:read"]


@pytest.mark.parametrize(
    "name", ["two-authorization-headers", "request-id-repeated", "dpop-two-proofs"]
)
def test_repeated_headers_under_django_asgi(session_issuer: DevIssuer, name: str) -> None:
    # Django's AsyncClient takes one value per header: Django's ASGI handler, driven as a
    # server drives it, receives each. Its request joins them with a bare ","; the audit
    # events must still be those of the ASGI middleware, which joins X-Request-ID values as
    # WSGI servers do (", ").
    from django.core.handlers.asgi import ASGIHandler

    case = CASES[name]
    headers = case.headers(session_issuer)

    def guard() -> BearerGuard:
        return session_issuer.guard(dpop=DPoPPolicy() if case.dpop else None)

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGIHandler())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.request(case.method, case.path, headers=headers)

    for _ in _open_django("django-async", guard()):
        with structlog.testing.capture_logs() as logged:
            response = asyncio.run(ask())
        reference, expected = _ask("asgi", guard(), case, headers, MemoryRevocationStore())
        assert response.status_code == reference.status == case.status
        assert response.headers["www-authenticate"] == reference.headers["www-authenticate"]
        assert _events(logged) == expected
