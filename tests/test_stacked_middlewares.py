"""An app mounted with its own middleware behind another with the same guard: one decision.

A request the outer middleware let in with a token meets the inner one decided: one audit
event per request, and a DPoP proof checked once (a second check would refuse it as
replayed). A request let in without a token is decided again.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from bearerguard import BearerGuard, get_access_token, requires_scopes
from bearerguard._context import SCOPE_KEY, RequestAuth, current_auth
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.dpop import DPoPPolicy
from bearerguard.metrics import CACHE, DECISIONS, InMemoryMetrics
from bearerguard.testing import DevIssuer
from bearerguard.wsgi import BearerGuardWSGIMiddleware, plain_response
from tests.test_dpop import Holder


async def me(request: Request) -> PlainTextResponse:
    token = get_access_token(request)
    return PlainTextResponse("anonymous" if token is None else str(token.subject))


def stacked(guard: BearerGuard, *, outer_public: tuple[str, ...] = ()) -> Starlette:
    inner = Starlette(
        routes=[Route("/me", me)], middleware=[Middleware(BearerGuardMiddleware, guard=guard)]
    )
    return Starlette(
        routes=[Mount("/api", app=inner)],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard, public_paths=outer_public)],
    )


def test_a_request_is_audited_once_through_two_middlewares(session_issuer: DevIssuer) -> None:
    client = TestClient(stacked(session_issuer.guard(in_process=True)))
    token = session_issuer.mint(sub="ada")
    for _ in range(2):  # the token's first sight, then a cache hit
        with capture_logs() as events:
            response = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert (response.status_code, response.text) == (200, "ada")
        assert [event["event"] for event in events] == ["token.accepted"]


def test_a_dpop_proof_is_checked_once_through_two_middlewares(session_issuer: DevIssuer) -> None:
    holder = Holder()
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy())
    client = TestClient(stacked(guard))
    token = session_issuer.mint(sub="ada", cnf={"jkt": holder.jkt})
    url = "http://testserver/api/me"
    with capture_logs() as events:
        response = client.get(
            "/api/me",
            headers={"Authorization": f"DPoP {token}", "DPoP": holder.proof(token, url=url)},
        )
    assert (response.status_code, response.text) == (200, "ada")
    assert [event["event"] for event in events] == ["token.accepted"]


def test_a_request_let_in_without_a_token_is_decided_again(session_issuer: DevIssuer) -> None:
    # Public outside, protected inside: the inner middleware still asks for a token.
    client = TestClient(stacked(session_issuer.guard(in_process=True), outer_public=("/api/*",)))
    with capture_logs() as events:
        response = client.get("/api/me")
    assert response.status_code == 401
    assert [event["event"] for event in events] == ["token.rejected"]


def test_another_guard_decides_for_itself(session_issuer: DevIssuer) -> None:
    outer, inner = session_issuer.guard(in_process=True), session_issuer.guard(in_process=True)
    inner_app = Starlette(
        routes=[Route("/me", me)], middleware=[Middleware(BearerGuardMiddleware, guard=inner)]
    )
    app = Starlette(
        routes=[Mount("/api", app=inner_app)],
        middleware=[Middleware(BearerGuardMiddleware, guard=outer)],
    )
    token = session_issuer.mint(sub="ada")
    with capture_logs() as events:
        response = TestClient(app).get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert [event["event"] for event in events] == ["token.accepted", "token.accepted"]


def test_wsgi_a_request_is_audited_once_through_two_middlewares(
    session_issuer: DevIssuer,
) -> None:
    guard = session_issuer.guard(in_process=True)

    def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(get_access_token()).encode()]

    app = BearerGuardWSGIMiddleware(BearerGuardWSGIMiddleware(hello, guard=guard), guard=guard)
    token = session_issuer.mint(sub="ada")
    statuses: list[str] = []

    def start_response(status: str, headers: Any, *_: Any) -> None:
        statuses.append(status)

    for _ in range(2):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/me",
            "QUERY_STRING": "",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
        }
        statuses.clear()
        with capture_logs() as events:
            b"".join(app(environ, start_response))
        assert statuses == ["200 OK"]
        assert [event["event"] for event in events] == ["token.accepted"]


def test_a_request_is_counted_once_through_two_middlewares(session_issuer: DevIssuer) -> None:
    """The inner middleware's look into the cache is no second hit: the metrics count each
    request once, cache hits as decisions, on the fast path as on the full one."""
    token = session_issuer.mint(sub="ada")
    for stack in ("asgi", "wsgi"):
        metrics = InMemoryMetrics()
        guard = session_issuer.guard(in_process=True, metrics=metrics)
        if stack == "asgi":
            client: httpx.Client = TestClient(stacked(guard))
            path = "/api/me"
        else:
            inner = BearerGuardWSGIMiddleware(hello_wsgi, guard=guard)
            transport = httpx.WSGITransport(app=BearerGuardWSGIMiddleware(inner, guard=guard))
            client, path = httpx.Client(transport=transport, base_url="http://t"), "/me"
        with client:
            for _ in range(3):  # the token's first sight, then two cache hits
                response = client.get(path, headers={"Authorization": f"Bearer {token}"})
                assert (response.status_code, response.text) == (200, "ada")
        assert metrics.count(CACHE, result="miss") == 1, stack
        assert metrics.count(CACHE, result="hit") == 2, stack
        assert metrics.count(DECISIONS, event="token.accepted", reason="ok") == 3, stack


def hello_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    token = get_access_token()
    return [str(None if token is None else token.subject).encode()]


def test_a_scope_refusal_inside_the_inner_app_is_answered_not_a_500(
    session_issuer: DevIssuer,
) -> None:
    # A FastAPI check finds the inner middleware in its app's stack and raises Refused for it
    # to send: passed over, the inner app's ServerErrorMiddleware would answer 500.
    guard = session_issuer.guard(in_process=True, cache_size=0)  # the general path each time
    inner = FastAPI()
    inner.add_middleware(BearerGuardMiddleware, guard=guard)

    @inner.get("/admin")
    @requires_scopes("admin")
    async def admin() -> dict[str, str]:
        return {"ok": "yes"}

    outer = Starlette(
        routes=[Mount("/api", app=inner)],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard)],
    )
    client = TestClient(outer, raise_server_exceptions=False)
    reader = session_issuer.mint(scopes=["read"])
    with capture_logs() as events:
        response = client.get("/api/admin", headers={"Authorization": f"Bearer {reader}"})
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]
    admin_token = session_issuer.mint(scopes=["admin"])
    assert client.get("/api/admin", headers={"Authorization": f"Bearer {admin_token}"}).json() == {
        "ok": "yes"
    }


def test_wsgi_an_inner_cache_hit_keeps_the_outer_verdict(session_issuer: DevIssuer) -> None:
    # The inner middleware found the token in the cache (the outer one had just put it
    # there) and replaced the outer verdict in the environ: its responder and start time.
    guard = session_issuer.guard(in_process=True)
    seen: list[object] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.extend((environ[SCOPE_KEY], current_auth.get()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def between(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(environ[SCOPE_KEY])
        return inner(environ, start_response)

    def outer_respond(refusal: Any) -> Any:  # pragma: no cover - no refusal here
        return plain_response(refusal)

    inner = BearerGuardWSGIMiddleware(app, guard=guard)
    outer = BearerGuardWSGIMiddleware(between, guard=guard, respond=outer_respond)
    client = httpx.Client(transport=httpx.WSGITransport(app=outer), base_url="http://t")
    token = session_issuer.mint(sub="ada")
    with client:
        for _ in range(2):  # the token's first sight outside, then a cache hit outside too
            seen.clear()
            with capture_logs() as events:
                response = client.get("/me", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
            assert [event["event"] for event in events] == ["token.accepted"]
            decided, in_app, current = seen
            assert in_app is decided
            assert current is decided
            assert isinstance(decided, RequestAuth)
            assert decided.respond is outer_respond


def test_asgi_an_inner_cache_hit_keeps_the_outer_verdict(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(in_process=True)
    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.extend((scope[SCOPE_KEY], current_auth.get()))
        await PlainTextResponse("ok")(scope, receive, send)

    inner = BearerGuardMiddleware(app, guard=guard)

    async def between(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope[SCOPE_KEY])
        await inner(scope, receive, send)

    client = TestClient(BearerGuardMiddleware(between, guard=guard))
    token = session_issuer.mint(sub="ada")
    for _ in range(2):  # the token's first sight outside, then a cache hit outside too
        seen.clear()
        with capture_logs() as events:
            response = client.get("/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert [event["event"] for event in events] == ["token.accepted"]
        decided, in_app, current = seen
        assert in_app is decided
        assert current is decided
