"""Websocket handshakes: refused before accept, the header by default, browser opt-ins."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from structlog.testing import capture_logs

from bearerguard import BearerGuard, get_access_token, requires_scopes
from bearerguard.asgi import WEBSOCKET_TOKEN_PROTOCOL_PREFIX, BearerGuardMiddleware
from bearerguard.errors import ConfigurationError
from bearerguard.fastapi import BearerAuth
from bearerguard.testing import DevIssuer
from bearerguard.token import AccessToken
from tests.helpers import asgi_call

PREFIX = WEBSOCKET_TOKEN_PROTOCOL_PREFIX


async def echo(websocket: WebSocket) -> None:
    offered = list(websocket.scope.get("subprotocols", []))
    await websocket.accept(subprotocol="chat" if "chat" in offered else None)
    token = get_access_token(websocket)
    header = websocket.headers.get("sec-websocket-protocol")
    await websocket.send_json(
        {"sub": None if token is None else token.subject, "offered": offered, "header": header}
    )
    await websocket.close()


@requires_scopes("chat:write")
async def scoped(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"ok": True})
    await websocket.close()


def build(guard: BearerGuard, credentials: Iterable[str] = ()) -> Starlette:
    return Starlette(
        routes=[WebSocketRoute("/ws", echo), WebSocketRoute("/ws/scoped", scoped)],
        middleware=[
            Middleware(BearerGuardMiddleware, guard=guard, websocket_credentials=credentials)
        ],
    )


@pytest.fixture
def guard(session_issuer: DevIssuer) -> BearerGuard:
    return session_issuer.guard(resource="https://api.example/ws", audience="https://api.example")


def denied(client: TestClient, path: str, **options: Any) -> WebSocketDenialResponse:
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        client.websocket_connect(path, **options),
    ):
        pass  # pragma: no cover - never accepted
    return refused.value


def test_the_authorization_header_is_the_default(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(sub="ann")
    with TestClient(build(guard)) as client:
        with client.websocket_connect("/ws", headers={"Authorization": f"Bearer {token}"}) as ws:
            assert ws.receive_json() == {"sub": "ann", "offered": [], "header": None}
        with capture_logs() as events:
            missing = denied(client, "/ws")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == (
            'Bearer realm="https://api.example", resource_metadata='
            '"https://api.example/.well-known/oauth-protected-resource/ws"'
        )
        assert missing.json()["error"] == "unauthorized"
        assert [event["event"] for event in events] == ["token.rejected"]
        # Without the opt-ins, a subprotocol token is just an unknown subprotocol and a
        # query token is refused outright (RFC 6750 §2.3 is not offered).
        assert denied(client, "/ws", subprotocols=[PREFIX + token]).status_code == 401
        assert denied(client, f"/ws?access_token={token}").status_code == 400


def test_subprotocol_opt_in(guard: BearerGuard, session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="bea")
    with TestClient(build(guard, ["subprotocol"])) as client:
        with client.websocket_connect("/ws", subprotocols=["chat", PREFIX + token]) as ws:
            assert ws.accepted_subprotocol == "chat"
            # The token never reaches the app, so it can never be echoed back or logged:
            # neither in the offered subprotocols nor in the raw header (RFC 6455 §4.1).
            assert ws.receive_json() == {"sub": "bea", "offered": ["chat"], "header": "chat"}
        with client.websocket_connect("/ws", subprotocols=[PREFIX + token]) as ws:
            assert ws.receive_json() == {"sub": "bea", "offered": [], "header": None}
        bad = denied(client, "/ws", subprotocols=["chat", PREFIX + "x.y.z"])
        assert bad.status_code == 401
        assert 'error="invalid_token"' in bad.headers["www-authenticate"]
        malformed = denied(client, "/ws", subprotocols=[PREFIX + "a%20b"])
        assert malformed.status_code == 400
        two = denied(client, "/ws", subprotocols=[PREFIX + token, PREFIX + token])
        assert two.status_code == 400
        both = denied(
            client,
            "/ws",
            subprotocols=[PREFIX + token],
            headers={"Authorization": f"Bearer {token}"},
        )
        assert both.status_code == 400  # one method per request (RFC 6750 §2)
        # The query stays refused unless opted in as well.
        assert denied(client, f"/ws?access_token={token}").status_code == 400


def test_query_opt_in(guard: BearerGuard, session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="cy")
    with TestClient(build(guard, ["query"])) as client:
        with client.websocket_connect(f"/ws?room=1&access_token={token}") as ws:
            assert ws.receive_json()["sub"] == "cy"
        both = denied(
            client, f"/ws?access_token={token}", headers={"Authorization": f"Bearer {token}"}
        )
        assert both.status_code == 400
        assert denied(client, f"/ws?access_token={token}&access_token={token}").status_code == 400
        assert denied(client, "/ws?access_token=").status_code == 400
        # Plain HTTP requests never take a query token, whatever the websocket opt-ins.
        assert client.get(f"/anything?access_token={token}").status_code == 400


def test_a_query_token_is_taken_out_of_the_query(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # As the subprotocol: the app and the server (uvicorn logs the handshake's path and
    # query from the scope) never see it (RFC 6750 §5.3), the rest of the query stays.
    async def query(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"query": websocket.scope["query_string"].decode()})
        await websocket.close()

    app = Starlette(
        routes=[WebSocketRoute("/ws", query)],
        middleware=[
            Middleware(BearerGuardMiddleware, guard=guard, websocket_credentials=["query"])
        ],
    )
    token = session_issuer.mint(sub="cy")
    with TestClient(app) as client:
        for sent, kept in [
            (f"room=1&access_token={token}&x=%20", "room=1&x=%20"),
            (f"access%5Ftoken={token}", ""),
        ]:
            with client.websocket_connect(f"/ws?{sent}") as ws:
                assert ws.receive_json() == {"query": kept}


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("room=1&access_token={t}&x=%20", "room=1&x=%20"), ("access%5Ftoken={t}", "")],
)
def test_a_query_token_in_a_text_query_string(
    guard: BearerGuard, session_issuer: DevIssuer, sent: str, kept: str
) -> None:
    # ASGI says bytes; Django's AsyncClient and some test tools put text in query_string.
    # Taken from it as from bytes, and the rest is left as text, as the app was handed it.
    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        token = get_access_token()
        seen.append((None if token is None else token.subject, scope["query_string"]))
        await send({"type": "websocket.close", "code": 1000})

    middleware = BearerGuardMiddleware(app, guard=guard, websocket_credentials=["query"])
    token = session_issuer.mint(sub="cy", audience="https://api.example")
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": sent.format(t=token),
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
    }
    with capture_logs() as events:
        asyncio.run(asgi_call(middleware, scope, [{"type": "websocket.connect"}]))
    assert [event["event"] for event in events] == ["token.accepted"]
    assert seen == [("cy", kept)]


def test_a_text_query_token_without_the_opt_in_is_refused_and_redacted(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(sub="cy", audience="https://api.example")
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": f"room=1&access_token={token}",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
    }
    with capture_logs() as events:
        sent = asyncio.run(asgi_call(build(guard), scope, [{"type": "websocket.connect"}]))
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "invalid_request"}]
    assert [event["reason"] for event in events] == ["invalid_request"]
    assert scope["query_string"] == "room=1&access_token=REDACTED"


def test_scope_denial_closes_before_accept(guard: BearerGuard, session_issuer: DevIssuer) -> None:
    with TestClient(build(guard, ["subprotocol"])) as client:
        token = session_issuer.mint(scopes=["chat:read"])
        with (
            capture_logs() as events,
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect("/ws/scoped", subprotocols=[PREFIX + token]) as ws,
        ):
            ws.receive_json()  # pragma: no cover
        assert closed.value.code == 1008
        assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]
        allowed = session_issuer.mint(scopes=["chat:write"])
        with client.websocket_connect("/ws/scoped", subprotocols=[PREFIX + allowed]) as ws:
            assert ws.receive_json() == {"ok": True}


@pytest.mark.parametrize("credentials", [["cookie"], "query", ["query", "header"]])
def test_opt_ins_are_validated(guard: BearerGuard, credentials: Any) -> None:
    with pytest.raises(ConfigurationError, match="websocket_credentials"):
        BearerGuardMiddleware(build(guard), guard=guard, websocket_credentials=credentials)


def test_a_subprotocol_that_is_not_latin1_is_refused_not_a_500(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # Servers decode the header as latin-1; a scope built otherwise must still get an answer.
    token = session_issuer.mint(audience="https://api.example")
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [(b"sec-websocket-protocol", b"chat, bearer.x")],
        "subprotocols": ["chat\u0100", PREFIX + token],
        "client": ("127.0.0.1", 1234),
    }
    sent: list[dict[str, Any]] = []
    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = BearerGuardMiddleware(app, guard=guard, websocket_credentials=["subprotocol"])
    with capture_logs() as events:
        asyncio.run(middleware(scope, receive, send))
    assert reached == []
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "invalid_request"}]
    assert [event["event"] for event in events] == ["token.rejected"]


class _Counted(str):
    """A subprotocol that counts the comparisons made with it."""

    __slots__ = ()
    compared: list[int] = [0]  # noqa: RUF012 - one counter shared by every instance

    def __eq__(self, other: object) -> bool:
        _Counted.compared[0] += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_many_offered_subprotocols_are_split_in_one_pass(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # uvicorn's websockets parser passes up to 128 header lines of 8 KB: ~100 000 offered
    # subprotocols. Each was looked up among the bearer.* ones, quadratic in their number
    # (20 000 of each held the event loop ~4 s). Counted: comparisons between them.
    offered = [_Counted(f"{PREFIX}{i}") for i in range(2_000)] + [_Counted("chat")] * 2_000
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [(b"sec-websocket-protocol", b"chat")],
        "subprotocols": offered,
        "client": ("127.0.0.1", 1234),
    }
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass  # pragma: no cover - refused before

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = BearerGuardMiddleware(app, guard=guard, websocket_credentials=["subprotocol"])
    _Counted.compared[0] = 0
    with capture_logs():
        asyncio.run(middleware(scope, receive, send))
    compared = _Counted.compared[0]
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "invalid_request"}]
    assert scope["subprotocols"] == ["chat"] * 2_000
    assert compared <= len(offered)


def test_a_scope_decorator_on_a_websocket_endpoint_class_is_refused(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # On a WebSocketEndpoint class the decorator put a function in its place, which Starlette
    # called with the websocket: every allowed token failed (TypeError from __init__). It is
    # refused as an HTTPEndpoint's class is; on_connect takes it.
    from starlette.endpoints import WebSocketEndpoint

    class Chat(WebSocketEndpoint):
        encoding = "text"

        async def on_receive(self, websocket: WebSocket, data: Any) -> None:
            await websocket.send_text(data)

    with pytest.raises(ConfigurationError, match=r"on the class .*Chat: .*on_connect"):
        requires_scopes("chat:write")(Chat)

    class GuardedChat(Chat):
        @requires_scopes("chat:write")
        async def on_connect(self, websocket: WebSocket) -> None:
            await websocket.accept()

    app = Starlette(
        routes=[WebSocketRoute("/chat", GuardedChat)],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard)],
    )
    allowed = {"Authorization": f"Bearer {session_issuer.mint(scopes=['chat:write'])}"}
    other = {"Authorization": f"Bearer {session_issuer.mint(scopes=['other'])}"}
    with TestClient(app) as client:
        with client.websocket_connect("/chat", headers=allowed) as session:
            session.send_text("hi")
            assert session.receive_text() == "hi"
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect("/chat", headers=other) as session,
        ):
            session.receive_text()  # pragma: no cover
        assert closed.value.code == 1008


def _bearer_auth_app(guard: BearerGuard) -> FastAPI:
    """A FastAPI websocket route behind ``BearerAuth``, without the middleware."""
    app = FastAPI()
    any_token = BearerAuth(guard).requires()  # a default: annotations here are strings

    @app.websocket("/ws")
    async def socket(
        websocket: WebSocket, token: AccessToken = any_token
    ) -> None:  # pragma: no cover - never accepted here
        await websocket.accept()
        await websocket.close()

    return app


@pytest.mark.parametrize(
    ("credentials", "status"),
    [([], 400), (["subprotocol"], 400), (["query"], 400), (None, 403)],
    ids=["middleware", "subprotocol", "query-and-header", "bearer-auth"],
)
def test_a_refused_handshake_leaves_no_query_token_in_the_server_log(
    guard: BearerGuard, session_issuer: DevIssuer, credentials: list[str] | None, status: int
) -> None:
    # uvicorn logs a handshake's URL from the scope once the app answers it, and to
    # uvicorn.error, which an access-log filter never sees (docs/security.md). A token the
    # guard refuses in the query (no "query" opt-in, sent by two methods at once, or to
    # BearerAuth, which takes none) is redacted in the scope, an accepted one taken out of
    # it (RFC 6750 §5.3).
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from tests.helpers import uvicorn_logging

    token = session_issuer.mint(sub="cy")
    app = _bearer_auth_app(guard) if credentials is None else build(guard, credentials)
    with uvicorn_logging(app, "uvicorn.error") as (host, stream):
        url = f"ws://{host}/ws?room=1&access_token={token}"
        # With the opt-in, a header beside the query token is two methods: refused too.
        two = credentials is not None and "query" in credentials
        headers = {"Authorization": f"Bearer {token}"} if two else {}
        with pytest.raises(InvalidStatus) as refused, connect(url, additional_headers=headers):
            pass  # pragma: no cover - never accepted
    assert refused.value.response.status_code == status
    lines = stream.getvalue().splitlines()
    # Refused: the value is redacted. Taken from the query by the opt-in: removed, before
    # the second method was found (the app of an accepted one never sees it either).
    query = "room=1" if two else "room=1&access_token=REDACTED"
    assert any(f'"WebSocket /ws?{query}" {status}' in line for line in lines), lines
    assert not [line for line in lines if token in line]
