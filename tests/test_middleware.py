"""The ASGI middleware end to end, against a real issuer on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from bearerguard import BearerGuard
from bearerguard.asgi import BearerGuardMiddleware, PublicPaths
from bearerguard.errors import ConfigurationError
from bearerguard.testing import DevIssuer
from tests.apps import build_app
from tests.helpers import asgi_call, uvicorn_logging

pytestmark = pytest.mark.anyio


@pytest.fixture
def guard(session_issuer: DevIssuer) -> BearerGuard:
    return session_issuer.guard()


@pytest.fixture
async def client(guard: BearerGuard) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_no_credentials_gets_a_bare_challenge(client: httpx.AsyncClient) -> None:
    with structlog.testing.capture_logs() as events:
        response = await client.get("/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="https://api.example"'
    assert response.json()["error"] == "unauthorized"
    assert [event["event"] for event in events] == ["token.rejected"]
    assert events[0]["reason"] == "missing_token"


async def test_another_scheme_is_no_credentials(client: httpx.AsyncClient) -> None:
    response = await client.get("/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401
    assert "error=" not in response.headers["www-authenticate"]


async def test_valid_token_fills_request_auth_and_user(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(scopes=["items:read", "b"], sub="alice")
    response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"sub": "alice", "user": "alice", "auth_scopes": ["b", "items:read"]}


async def test_starlette_requires_sees_the_token_scopes(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    ok = await client.get("/starlette", headers=bearer(session_issuer.mint(scopes=["items:read"])))
    assert ok.status_code == 200
    denied = await client.get("/starlette", headers=bearer(session_issuer.mint()))
    assert denied.status_code == 403


async def test_lowercase_scheme_and_extra_spaces(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    response = await client.get(
        "/me", headers={"Authorization": f"bearer   {session_issuer.mint()}"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("ows", [b" ", b"\t", b" \t "])
def test_trailing_white_space_after_the_token_is_no_part_of_it(
    guard: BearerGuard, session_issuer: DevIssuer, ows: bytes
) -> None:
    # RFC 9110 §5.5: OWS around a field value is no part of it. uvicorn's httptools parser
    # (its default with uvicorn[standard]) passes it on, where h11 strips it: 400 there.
    head = b"GET /me HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n"
    value = b"Bearer " + session_issuer.mint().encode() + ows
    with uvicorn_logging(build_app(guard)) as (address, _):
        host, _, port = address.partition(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(head + b"Authorization: " + value + b"\r\n\r\n")
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 200 OK", answer


async def test_two_authorization_headers_are_invalid_request(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint()
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    response = await client.get("/me", headers=headers)
    assert response.status_code == 400
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


async def test_token_in_header_and_query_is_invalid_request(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint()
    response = await client.get(f"/me?access_token={token}", headers=bearer(token))
    assert response.status_code == 400
    only_query = await client.get(f"/me?access_token={token}")
    assert only_query.status_code == 400


async def test_a_percent_encoded_access_token_name_is_a_query_token(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    # The app's query parser decodes access%5Ftoken to access_token (RFC 6750 §2.3 is
    # form-encoded): it is a token in the URL, whether the header's token is cached or not.
    token = session_issuer.mint()
    for query in ("access%5Ftoken", "%61ccess_token"):
        response = await client.get(f"/me?{query}={token}", headers=bearer(token))
        assert response.status_code == 400, query
    assert (await client.get("/me", headers=bearer(token))).status_code == 200  # now cached
    for query in ("access%5Ftoken", "%61ccess_token"):
        response = await client.get(f"/me?{query}={token}", headers=bearer(token))
        assert response.status_code == 400, query
    assert (await client.get("/me?q=a%20b", headers=bearer(token))).status_code == 200


async def test_oversized_token_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/me", headers=bearer("a" * 9000))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("path", "status"),
    [("/health", 200), ("/static/app.js", 200), ("/healthcheck-admin", 401), ("/health/", 401)],
)
async def test_public_paths_are_exact_or_explicit_prefixes(
    client: httpx.AsyncClient, path: str, status: int
) -> None:
    assert (await client.get(path)).status_code == status


async def test_public_path_reached_without_credentials_has_no_token(
    client: httpx.AsyncClient,
) -> None:
    with structlog.testing.capture_logs() as events:
        response = await client.get("/health")
    assert response.json() == {"ok": True, "sub": None}
    assert events == []


async def test_public_path_with_valid_token_sees_it(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    response = await client.get("/health", headers=bearer(session_issuer.mint(sub="bob")))
    assert response.json()["sub"] == "bob"


async def test_public_path_with_invalid_token_is_refused(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health", headers=bearer("abc.def.ghi"))).status_code == 401


async def test_scoped_route_on_public_path_needs_a_token(client: httpx.AsyncClient) -> None:
    with structlog.testing.capture_logs() as events:
        response = await client.get("/open")
    assert response.status_code == 401
    # The route's scopes are known here, so the challenge hints at them (RFC 6750 §3).
    assert response.headers["www-authenticate"] == (
        'Bearer realm="https://api.example", scope="items:read"'
    )
    assert [event["event"] for event in events] == ["token.rejected"]


def test_public_path_patterns_are_validated() -> None:
    for pattern in ["health", "/a*", "/*/x"]:
        with pytest.raises(ConfigurationError):
            PublicPaths([pattern])
    paths = PublicPaths(["/", "/docs/*"])
    assert "/" in paths
    assert "/docs/" in paths
    assert "/docs" not in paths
    assert "/x" not in paths


def test_public_paths_may_be_given_as_public_paths(session_issuer: DevIssuer) -> None:
    paths = PublicPaths(["/health", "/static/*", "/a"])
    assert list(paths) == ["/a", "/health", "/static/*"]
    again = PublicPaths(paths)
    assert "/static/x" in again
    assert "/health" in again
    assert "/healthz" not in again
    app = Starlette(routes=[Route("/health", lambda _request: PlainTextResponse("ok"))])
    guarded = BearerGuardMiddleware(app, guard=session_issuer.guard(), public_paths=paths)
    with TestClient(guarded) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/healthz").status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/static/../me",
        "/static/..",
        "/static/./app.js",
        "/static/a/../../me",
        "/static/%2e%2e/me",
        "/static/%2E./me",
        "/health/..",
        "/static/.",
        "/static/..\\me",
        "/static/a\\..\\..\\me",
        "/static/..%5cme",
        "/static/..;x=1/me",
        "/static/.;/app.js",
        "/static/..%2f..%2fme",
        "/static/%2F..%2F..%2Fme",
        "/static/a%2f..",
    ],
)
def test_a_dot_segment_never_matches_a_public_path(path: str) -> None:
    # "/static/../me" is /me once a proxy, a mounted WSGI app or StaticFiles normalises it
    # (RFC 3986 §5.2.4): fail closed, the token is required. Percent-encoded dots are what
    # a second decoding turns into dots, and "%2f" into the slashes around them.
    paths = PublicPaths(["/static/*", "/health"])
    assert path not in paths


@pytest.mark.parametrize(
    "path", ["/static/.well-known/x", "/static/..x/y", "/static/a.b", "/static/a;v=1.js"]
)
def test_a_segment_merely_starting_with_a_dot_is_no_dot_segment(path: str) -> None:
    assert path in PublicPaths(["/static/*"])


@pytest.mark.parametrize("pattern", ["/static/../*", "/a/./b", "/a/..", "/%2e%2e/x"])
def test_a_public_path_with_a_dot_segment_is_a_configuration_error(pattern: str) -> None:
    with pytest.raises(ConfigurationError, match="dot segment"):
        PublicPaths([pattern])


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("/health?probe=1", "query string"),
        ("/docs#intro", "fragment"),
        ("/health ", "white space or control"),
        ("/health\n", "white space or control"),
        ("/a\tb", "white space or control"),
        ("/health\x00", "white space or control"),
        ("/health\x7f", "white space or control"),
        ("/health\u2028", "white space or control"),
        ("/caf%C3%A9", "decoded path"),
        ("/static%2F*", "decoded path"),
        ("health", "must start with '/'"),
        (" /health", "must start with '/'"),
        ("https://api.example/health", "must start with '/'"),
        ("", "must start with '/'"),
    ],
)
def test_a_public_path_that_can_never_match_is_a_configuration_error(
    guard: BearerGuard, pattern: str, message: str
) -> None:
    # Requests are matched on their decoded path alone: an entry with a query, a fragment,
    # white space or a percent-encoding would silently protect what it was meant to open.
    with pytest.raises(ConfigurationError, match=message):
        PublicPaths([pattern])
    with pytest.raises(ConfigurationError, match=message):
        BearerGuardMiddleware(build_app(guard), guard=guard, public_paths=[pattern])


def test_public_paths_given_as_one_string_is_a_configuration_error(guard: BearerGuard) -> None:
    # A string is an iterable of one-character "paths"; "/" alone would open the root.
    for given in ("/", "/health"):
        with pytest.raises(ConfigurationError, match=r"a list of paths"):
            BearerGuardMiddleware(build_app(guard), guard=guard, public_paths=given)


@pytest.mark.parametrize("pattern", ["/50%25", "/files/a%2541", "/static/%25/*"])
def test_a_percent_written_as_25_is_refused_with_how_to_write_it(pattern: str) -> None:
    # "%25" stays refused: "/50%" already matches a request for "/50%25", and what "%25"
    # alone would add is a decoded path holding "%XX" ("/a%41"), which a second decoding
    # (a proxy, a framework) turns into another path ("/aA"), as "%2e%2e" into "..".
    with pytest.raises(ConfigurationError, match=r"a literal '%' is written as itself"):
        PublicPaths([pattern])


def test_a_public_path_keeps_its_other_characters() -> None:
    # Decoded paths may hold these: "/50%" is what a request for "/50%25" is matched as.
    paths = PublicPaths(["/caf\u00e9", "/a+b", "/v1/items:batch", "/~user/*", "/50%"])
    assert all(p in paths for p in ("/caf\u00e9", "/a+b", "/v1/items:batch", "/~user/x", "/50%"))


@pytest.mark.parametrize(
    ("path", "raw_path"),
    [
        ("/static/../me", b"/static/../me"),
        ("/static/../me", b"/static/%2e%2e/me"),
        ("/static/%2e%2e/me", b"/static/%252e%252e/me"),
    ],
)
async def test_the_middleware_asks_a_dot_segment_path_for_a_token(
    guard: BearerGuard, path: str, raw_path: bytes
) -> None:
    # httpx removes dot segments from URLs, so the scope is built here as a server gives
    # it (uvicorn decodes %2e in path and keeps raw_path as received).
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = build_app(guard)  # "/static/*" is public
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "scheme": "http",
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    with structlog.testing.capture_logs() as events:
        await app(scope, receive, send)
    assert sent[0]["status"] == 401
    assert [event["reason"] for event in events] == ["missing_token"]


async def test_audit_event_fields_and_no_raw_token(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(scopes=["items:read"], sub="carol")
    with structlog.testing.capture_logs() as events:
        await client.get("/me", headers={**bearer(token), "X-Request-ID": "req-42"})
    (event,) = events
    assert event["event"] == "token.accepted"
    assert event["outcome"] == "allow"
    assert event["sub"] == "carol"
    assert event["client_id"] == "dev-client"
    assert event["request_id"] == "req-42"
    assert event["method"] == "GET"
    assert event["path"] == "/me"
    assert event["client"] == "127.0.0.1"
    assert event["scopes"] == ["items:read"]
    assert event["alg"] == "RS256"
    assert len(event["token_fp"]) == 16
    assert event["latency_ms"] >= 0
    signature = token.rsplit(".", 1)[1]
    flat = repr(events)
    assert token not in flat
    assert signature[:12] not in flat


async def test_every_refusal_emits_one_event(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    cases: list[dict[str, Any]] = [
        {},
        bearer("x.y.z"),
        bearer(session_issuer.mint(expires_in=-120)),
        {"Authorization": "Bearer a b"},
    ]
    for headers in cases:
        with structlog.testing.capture_logs() as events:
            await client.get("/items", headers=headers)
        assert len(events) == 1, (headers, events)


async def test_sampling_accepted_events_off(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(audit_sample_accepted=0.0)
    transport = httpx.ASGITransport(app=build_app(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with structlog.testing.capture_logs() as events:
            ok = await client.get("/me", headers=bearer(session_issuer.mint()))
            refused = await client.get("/me")
    assert (ok.status_code, refused.status_code) == (200, 401)
    assert [event["event"] for event in events] == ["token.rejected"]


def test_websocket_with_token_is_accepted(guard: BearerGuard, session_issuer: DevIssuer) -> None:
    with (
        TestClient(build_app(guard)) as client,
        client.websocket_connect(
            "/ws", headers=bearer(session_issuer.mint(sub="dan"))
        ) as websocket,
    ):
        assert websocket.receive_json() == {"sub": "dan"}


def test_websocket_without_token_is_refused_before_accept(guard: BearerGuard) -> None:
    from starlette.testclient import WebSocketDenialResponse

    with (
        TestClient(build_app(guard)) as client,
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect("/ws"),
    ):
        pass  # pragma: no cover - never accepted
    assert denied.value.status_code == 401
    assert denied.value.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("extensions", [{}, None], ids=["empty", "none"])
async def test_websocket_refusal_without_denial_extension_closes_1008(
    guard: BearerGuard, extensions: dict[str, Any] | None
) -> None:
    # Some servers send None for no extensions: read as none, as mtls reads it.
    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
        "extensions": extensions,
    }
    sent = await asgi_call(build_app(guard), scope, [{"type": "websocket.connect"}])
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "missing_token"}]


def test_websocket_scope_denial_closes_1008(guard: BearerGuard, session_issuer: DevIssuer) -> None:
    with TestClient(build_app(guard)) as client:
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect("/ws/chat", headers=bearer(session_issuer.mint())) as ws,
        ):
            ws.receive_json()  # pragma: no cover
        assert closed.value.code == 1008
        with client.websocket_connect(
            "/ws/chat", headers=bearer(session_issuer.mint(scopes=["chat"]))
        ) as ws:
            assert ws.receive_json() == {"chat": True}


async def test_lifespan_and_other_scopes_pass_through(guard: BearerGuard) -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = BearerGuardMiddleware(app, guard=guard)
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "custom"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "custom"]


def test_middleware_needs_a_guard() -> None:
    with pytest.raises(ConfigurationError):
        BearerGuardMiddleware(build_app, guard="nope")  # type: ignore[arg-type]


async def test_a_refusal_states_its_length(guard: BearerGuard) -> None:
    # Sent raw to the server: without content-length an HTTP/1.1 server chunks the body and
    # an HTTP/1.0 client's connection is closed to end it.
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}  # pragma: no cover - never read

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for headers in ([], [(b"authorization", b"Bearer not-a-jwt")], [(b"authorization", b"x")]):
        sent.clear()
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/items",
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 1),
        }
        await BearerGuardMiddleware(build_app(guard), guard=guard)(scope, receive, send)
        start, body = sent
        assert start["status"] in (400, 401)
        assert (b"content-length", str(len(body["body"])).encode()) in start["headers"]


def _mounted(guard: BearerGuard) -> Starlette:
    """The test app mounted under /api, its middleware inside the mount."""
    return Starlette(routes=[Mount("/api", app=build_app(guard))])


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/health", 200),
        ("/api/static/app.js", 200),
        ("/api/me", 401),
        ("/api/healthcheck-admin", 401),
        ("/api/health/", 401),
    ],
)
async def test_public_paths_are_app_relative_in_a_mounted_app(
    guard: BearerGuard, path: str, status: int
) -> None:
    # Starlette's router matches what follows the mount point (root_path), so does
    # public_paths: "/health" of an app mounted under /api is /api/health.
    transport = httpx.ASGITransport(app=_mounted(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get(path)).status_code == status


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/health", 200),  # ASGI 3: path includes root_path (uvicorn --root-path)
        ("/health", 200),  # older servers: path without it
        ("/api", 401),
        ("/apihealth", 401),  # the root path is stripped only before a "/"
        ("/api/api/health", 401),
        ("/api/me", 401),
    ],
)
async def test_public_paths_are_app_relative_under_a_root_path(
    guard: BearerGuard, path: str, status: int
) -> None:
    app = BearerGuardMiddleware(_echo_path, guard=guard, public_paths=["/health"])
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get(path)
    assert response.status_code == status


async def test_a_public_root_under_a_root_path_is_the_mount_point(guard: BearerGuard) -> None:
    # As WSGI serves an empty PATH_INFO (the mount point reached without a slash) as "/".
    app = BearerGuardMiddleware(_echo_path, guard=guard, public_paths=["/"])
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/api")).status_code == 200
        assert (await client.get("/api/")).status_code == 200
        assert (await client.get("/api/x")).status_code == 401


async def _echo_path(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse(scope["path"])(scope, receive, send)


async def test_a_refused_head_request_gets_no_content(guard: BearerGuard) -> None:
    # RFC 9110 §9.3.2: a HEAD answer carries no content, as the WSGI middleware sends it; a
    # thin ASGI server would write out what the app sends.
    scope = {
        "type": "http",
        "method": "HEAD",
        "path": "/me",
        "headers": [(b"authorization", b"Bearer not-a-jwt")],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
    }
    sent = await asgi_call(build_app(guard), scope)
    assert sent[0]["status"] == 401
    headers = dict(sent[0]["headers"])
    assert headers[b"www-authenticate"].startswith(b"Bearer ")
    assert sent[1] == {"type": "http.response.body", "body": b""}


async def test_a_form_body_token_is_never_read(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    # RFC 6750 §2.2 (a MAY for resource servers; docs/security.md): the body is the app's.
    token = session_issuer.mint(scopes=["items:read", "items:write"])
    form = {"access_token": token}
    response = await client.post("/items", data=form)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="https://api.example"'
    assert (await client.post("/items", data=form, headers=bearer(token))).status_code == 200
