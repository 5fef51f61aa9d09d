"""Why the key set is unavailable: the ``auth.unavailable`` event names the last fetch
failure's cause, in a fixed safe form, through the ASGI and the WSGI middleware; the client
still gets only the fixed RFC 6750 answer."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import pytest
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bearerguard import BearerGuard, RefreshPolicy
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.errors import KeySetUnavailableError
from bearerguard.jwks import FetchPolicy
from bearerguard.testing import DevIssuer, Override
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.helpers import Clock

Get = Callable[[str], tuple[int, bytes]]

# What every client is told, whatever the cause (RFC 6750 §3: no error code on a 503).
BODY = {
    "error": "temporarily_unavailable",
    "error_description": "Authentication is temporarily unavailable; retry shortly.",
}
SECRET = "s3cr3t-marker"


def serve_asgi(guard: BearerGuard) -> Get:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(
        routes=[Route("/", hello)], middleware=[Middleware(BearerGuardMiddleware, guard=guard)]
    )
    client = TestClient(app)

    def get(token: str) -> tuple[int, bytes]:
        response = client.get("/", headers={"Authorization": f"Bearer {token}"})
        return response.status_code, response.content

    return get


def serve_wsgi(guard: BearerGuard) -> Get:
    def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    app = BearerGuardWSGIMiddleware(hello, guard=guard)

    def get(token: str) -> tuple[int, bytes]:
        seen: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "QUERY_STRING": "",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.input": io.BytesIO(b""),
            "HTTP_AUTHORIZATION": f"Bearer {token}",
        }
        body = b"".join(app(environ, lambda status, _headers: seen.append(status)))
        return int(seen[0].split()[0]), body

    return get


SERVERS = [pytest.param(serve_asgi, id="asgi"), pytest.param(serve_wsgi, id="wsgi")]


def _detail(get: Get, token: str) -> str:
    """The detail of the one event a request refused for want of keys makes."""
    with structlog.testing.capture_logs() as events:
        status, body = get(token)
    assert (status, json.loads(body)) == (503, BODY)
    assert [(event["event"], event["reason"]) for event in events] == [
        ("auth.unavailable", "keys_unavailable")
    ]
    detail = events[0]["detail"]
    assert isinstance(detail, str)
    assert SECRET not in detail
    assert len(detail) <= 200
    return detail


@pytest.mark.parametrize("serve", SERVERS)
@pytest.mark.parametrize(
    ("override", "cause"),
    [
        pytest.param(Override(status=503, body=SECRET.encode()), "HTTP 503", id="status"),
        pytest.param(Override(body=f"<html>{SECRET}".encode()), "invalid JSON", id="not-json"),
        pytest.param(
            Override(body=json.dumps({"error": SECRET}).encode()), "not a JWK Set", id="not-jwks"
        ),
        pytest.param(
            Override(body=b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'),
            "no usable key in the set",
            id="no-usable-key",
        ),
    ],
)
def test_the_event_names_what_the_key_set_answered(
    issuer: DevIssuer, serve: Callable[[BearerGuard], Get], override: Override, cause: str
) -> None:
    issuer.overrides[issuer.jwks_path] = override
    # A query on the key set URL (a provider's API key, say) never reaches the event.
    guard = issuer.guard(jwks_uri=f"{issuer.jwks_uri}?key={SECRET}")
    detail = _detail(serve(guard), issuer.mint())
    assert detail == f"no usable key set: last fetch failed ({cause})"


@pytest.mark.parametrize("serve", SERVERS)
def test_the_event_names_a_refused_connection(
    issuer: DevIssuer, serve: Callable[[BearerGuard], Get]
) -> None:
    token = issuer.mint()
    issuer.stop()  # its port refuses connections
    detail = _detail(serve(issuer.guard(discover=False)), token)
    assert detail == "no usable key set: last fetch failed (ConnectError: ECONNREFUSED)"


@pytest.mark.parametrize("serve", SERVERS)
def test_the_event_names_a_timeout(issuer: DevIssuer, serve: Callable[[BearerGuard], Get]) -> None:
    issuer.overrides[issuer.jwks_path] = Override(delay=2.0)
    guard = issuer.guard(discover=False, fetch=FetchPolicy(timeout=0.3))
    detail = _detail(serve(guard), issuer.mint())
    assert detail == "no usable key set: last fetch failed (timed out)"


@pytest.mark.parametrize("serve", SERVERS)
def test_the_event_names_a_failed_discovery(
    issuer: DevIssuer, serve: Callable[[BearerGuard], Get]
) -> None:
    issuer.overrides[issuer.oidc_metadata_path] = Override(status=500, body=SECRET.encode())
    detail = _detail(serve(issuer.guard()), issuer.mint())
    # OIDC Discovery's URL answered 500, RFC 8414's (not served here) 404.
    assert detail == "no usable key set: last fetch failed (discovery: HTTP 500, HTTP 404)"


@pytest.mark.parametrize("serve", SERVERS)
def test_the_event_says_the_last_good_set_is_too_stale(
    issuer: DevIssuer, serve: Callable[[BearerGuard], Get]
) -> None:
    clock = Clock()
    policy = RefreshPolicy()
    get = serve(issuer.guard(discover=False, clock=clock, refresh=policy))
    token = issuer.mint(exp=int(clock.now) + 10**6)
    assert get(token)[0] == 200
    issuer.overrides[issuer.jwks_path] = Override(status=502)
    # Past the set's freshness (max_ttl at most) and max_stale after it.
    clock.advance(policy.max_ttl + policy.max_stale + 1)
    detail = _detail(get, token)
    assert detail == (
        "no usable key set: the last good set is past max_stale; last fetch failed (HTTP 502)"
    )


@pytest.mark.parametrize("serve", SERVERS)
def test_the_event_for_an_unknown_kid_names_the_failure_too(
    issuer: DevIssuer, serve: Callable[[BearerGuard], Get]
) -> None:
    clock = Clock()
    get = serve(issuer.guard(discover=False, clock=clock))
    assert get(issuer.mint())[0] == 200
    issuer.overrides[issuer.jwks_path] = Override(status=429)
    clock.advance(31)  # past the kid-miss cooldown (30 s), within the set's freshness
    detail = _detail(get, issuer.mint_forged(kid="never-published"))
    assert detail == (
        "kid 'never-published' unknown; key set unreachable: last fetch failed (HTTP 429)"
    )


@pytest.mark.parametrize("serve", SERVERS)
def test_the_event_names_a_body_too_large(
    issuer: DevIssuer, serve: Callable[[BearerGuard], Get]
) -> None:
    guard = issuer.guard(discover=False, fetch=FetchPolicy(max_bytes=64))
    detail = _detail(serve(guard), issuer.mint())
    assert detail == "no usable key set: last fetch failed (body too large)"


def test_a_failed_warm_up_names_the_cause(issuer: DevIssuer) -> None:
    # What the middlewares log at start-up ("warm-up failed, requests fail closed: ...").
    issuer.overrides[issuer.jwks_path] = Override(status=503)
    with pytest.raises(KeySetUnavailableError) as failed:
        issuer.guard(discover=False).warm_up_sync()
    assert str(failed.value) == "no usable key set: last fetch failed (HTTP 503)"
    with pytest.raises(KeySetUnavailableError) as failed:
        anyio.run(issuer.guard(discover=False).warm_up)
    assert str(failed.value) == "no usable key set: last fetch failed (HTTP 503)"
