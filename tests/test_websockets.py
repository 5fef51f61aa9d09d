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
from bearerguard.issuers import TrustedIssuers
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from bearerguard.token import AccessToken
from tests.helpers import Clock, asgi_call

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


# -- the token checked again at each message (websocket_recheck) ---------------------------


class _Store:
    """An application's revocation store that can be made to fail (never blocks)."""

    failing = False

    async def is_revoked(self, token: AccessToken) -> bool:
        if self.failing:
            raise ConnectionError("store down")
        return False


def _rechecked(guard: BearerGuard, clock: Clock, seen: list[Any], **options: Any) -> Starlette:
    """An echo websocket; ``expire`` has the app move the clock past exp and send twice.

    ``seen`` gets what the app's receives returned and whether its sends raised."""

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            seen.append(message)
            if message["type"] == "websocket.disconnect":
                return
            text = message["text"]
            if text == "expire":
                clock.advance(61)
                for _ in range(2):  # the first closes the connection, the second is dropped
                    await websocket.send_text("too late")
                seen.append("sent")
            else:
                await websocket.send_text(text)

    return Starlette(
        routes=[WebSocketRoute("/ws", chat)],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard, **options)],
    )


def _closed(ws: Any) -> WebSocketDisconnect:
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_text()
    return closed.value


def test_an_expired_token_closes_the_websocket_at_its_next_inbound_message(
    session_issuer: DevIssuer,
) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()  # after minting: iat must not be ahead of the clock
    guard = session_issuer.guard(clock=clock, leeway=5)
    seen: list[Any] = []
    headers = {"Authorization": f"Bearer {token}"}
    with (
        TestClient(_rechecked(guard, clock, seen)) as client,
        client.websocket_connect("/ws", headers=headers) as ws,
    ):
        ws.send_text("one")
        assert ws.receive_text() == "one"
        clock.advance(64)  # exp (60) + leeway (5) not reached: still good
        ws.send_text("two")
        assert ws.receive_text() == "two"
        clock.advance(1)
        with capture_logs() as events:
            ws.send_text("three")
            closed = _closed(ws)
    assert (closed.code, closed.reason) == (1008, "token expired")
    assert [(e["event"], e["reason"]) for e in events] == [("token.rejected", "expired")]
    assert events[0]["path"] == "/ws"
    # The message never reached the app: it was told of a disconnect instead.
    assert seen[-1] == {"type": "websocket.disconnect", "code": 1008}
    assert [m["text"] for m in seen[:-1]] == ["one", "two"]


def test_an_expired_token_closes_the_websocket_at_its_next_outbound_message(
    session_issuer: DevIssuer,
) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    seen: list[Any] = []
    headers = {"Authorization": f"Bearer {token}"}
    with (
        TestClient(_rechecked(guard, clock, seen)) as client,
        capture_logs() as events,
        client.websocket_connect("/ws", headers=headers) as ws,
    ):
        ws.send_text("expire")
        closed = _closed(ws)
    assert (closed.code, closed.reason) == (1008, "token expired")
    # The handshake's acceptance, then one refusal for the two sends.
    assert [e["event"] for e in events] == ["token.accepted", "token.rejected"]
    assert events[1]["reason"] == "expired"
    # Neither send raised into the app; its next receive was the disconnect.
    assert seen[1:] == ["sent", {"type": "websocket.disconnect", "code": 1008}]


def test_the_maximum_age_closes_the_websocket_of_trusted_issuers(
    session_issuer: DevIssuer,
) -> None:
    # Through TrustedIssuers, the guard that accepted the token checks it, with its own
    # leeway and maximum age: past iat + max_age + leeway is expired as well.
    token = session_issuer.mint(sub="eve", expires_in=3600)
    clock = Clock()
    issuers = TrustedIssuers([session_issuer.guard(clock=clock, leeway=5, max_age=100)])
    seen: list[Any] = []
    headers = {"Authorization": f"Bearer {token}"}
    with (
        TestClient(_rechecked(issuers, clock, seen)) as client,
        client.websocket_connect("/ws", headers=headers) as ws,
    ):
        clock.advance(100)
        ws.send_text("one")
        assert ws.receive_text() == "one"
        clock.advance(6)
        with capture_logs() as events:
            ws.send_text("two")
            closed = _closed(ws)
    assert (closed.code, closed.reason) == (1008, "token expired")
    assert [(e["event"], e["reason"]) for e in events] == [("token.rejected", "too_old")]


def test_a_revoked_token_closes_the_websocket_at_once(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=3600)
    clock = Clock()
    store = MemoryRevocationStore(clock=clock)
    guard = session_issuer.guard(clock=clock, revocation=store)
    seen: list[Any] = []
    access = guard.authenticate_sync(token)
    headers = {"Authorization": f"Bearer {token}"}
    with (
        TestClient(_rechecked(guard, clock, seen)) as client,
        client.websocket_connect("/ws", headers=headers) as ws,
    ):
        ws.send_text("one")
        assert ws.receive_text() == "one"
        assert access.token_id is not None
        store.revoke_token_sync(access.token_id, access.expires_at, issuer=access.issuer)
        with capture_logs() as events:
            ws.send_text("two")
            closed = _closed(ws)
    assert (closed.code, closed.reason) == (1008, "token revoked")
    assert [(e["event"], e["reason"]) for e in events] == [("token.rejected", "revoked")]
    assert seen[-1] == {"type": "websocket.disconnect", "code": 1008}


def test_a_token_revoked_in_redis_closes_the_websocket(
    session_issuer: DevIssuer, redis_server: Any, redis_namespace: str
) -> None:
    from bearerguard.revocation import RedisRevocationStore

    # No mirror: is_revoked_now cannot answer, so each message asks Redis (is_revoked).
    store = RedisRevocationStore(redis_server.url, namespace=redis_namespace, mirror=False)
    token = session_issuer.mint(sub="eve", expires_in=3600)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, revocation=store)
    seen: list[Any] = []
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with (
            TestClient(_rechecked(guard, clock, seen)) as client,
            client.websocket_connect("/ws", headers=headers) as ws,
        ):
            ws.send_text("one")
            assert ws.receive_text() == "one"
            access = guard.authenticate_sync(token)  # not revoked yet
            store.revoke_token_sync(access.token_id or "", access.expires_at, issuer=access.issuer)
            with capture_logs() as events:
                ws.send_text("two")
                closed = _closed(ws)
    finally:
        store.close()
    assert (closed.code, closed.reason) == (1008, "token revoked")
    assert [(e["event"], e["reason"]) for e in events] == [("token.rejected", "revoked")]


@pytest.mark.parametrize("policy", ["deny", "allow"])
def test_a_failing_store_closes_the_websocket_unless_failing_open(
    session_issuer: DevIssuer, policy: str
) -> None:
    store = _Store()
    token = session_issuer.mint(sub="eve", expires_in=3600)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, revocation=store, revocation_failure=policy)
    seen: list[Any] = []
    headers = {"Authorization": f"Bearer {token}"}
    with (
        TestClient(_rechecked(guard, clock, seen)) as client,
        client.websocket_connect("/ws", headers=headers) as ws,
    ):
        store.failing = True
        with capture_logs() as events:
            ws.send_text("one")
            if policy == "allow":
                assert ws.receive_text() == "one"
            else:
                closed = _closed(ws)
    if policy == "allow":
        assert events == []
    else:
        # 1013, Try Again Later (RFC 6455 §11.7's registry): the token may be good, as a
        # request's 503 says; 1008 would send the client for a new token.
        assert (closed.code, closed.reason) == (1013, "revocation unavailable")
        assert seen[-1] == {"type": "websocket.disconnect", "code": 1013}
        assert [(e["event"], e["reason"]) for e in events] == [
            ("auth.unavailable", "revocation_unavailable")
        ]


def test_an_anonymous_websocket_on_a_public_path_is_not_rechecked(
    session_issuer: DevIssuer,
) -> None:
    clock = Clock()
    guard = session_issuer.guard(clock=clock)
    seen: list[Any] = []
    app = _rechecked(guard, clock, seen, public_paths=["/ws"])
    with (
        TestClient(app) as client,
        capture_logs() as events,
        client.websocket_connect("/ws") as ws,
    ):
        ws.send_text("expire")  # the app moves the clock: no token to expire
        assert ws.receive_text() == "too late"
        assert ws.receive_text() == "too late"
        clock.advance(86_400)
        ws.send_text("still")
        assert ws.receive_text() == "still"
    assert events == []


def test_websocket_recheck_off_leaves_the_connection_to_the_app(
    session_issuer: DevIssuer,
) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    seen: list[Any] = []
    app = _rechecked(guard, clock, seen, websocket_recheck=False)
    headers = {"Authorization": f"Bearer {token}"}
    with (
        TestClient(app) as client,
        capture_logs() as events,
        client.websocket_connect("/ws", headers=headers) as ws,
    ):
        ws.send_text("expire")
        assert ws.receive_text() == "too late"
        assert ws.receive_text() == "too late"
        ws.send_text("still")
        assert ws.receive_text() == "still"
    assert [e["event"] for e in events] == ["token.accepted"]
