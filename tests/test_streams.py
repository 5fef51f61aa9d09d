"""A streamed HTTP response's token checked again at each body chunk (``stream_recheck``).

Server-Sent Events, an MCP GET stream or a long download is authenticated once, when the
request arrives; each further chunk is a use of the token, so it passes only while the token
does. The in-process client (Starlette's ``TestClient``) runs each response to its end, so
its streams are finite and move the clock or revoke from inside; the revocation test runs a
real uvicorn server with an endless stream, as an SSE endpoint is.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from bearerguard import BearerGuard
from bearerguard._stream import StreamEndedError, absorbed
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.issuers import TrustedIssuers
from bearerguard.mcp import MCPToolScopes
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from bearerguard.token import AccessToken
from tests.helpers import Clock, asgi_call, http_scope, serving, until, uvicorn_logging

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

EVENTS = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]


class _Store:
    """An application's revocation store that can be made to fail (never blocks)."""

    failing = False

    async def is_revoked(self, token: AccessToken) -> bool:
        if self.failing:
            raise ConnectionError("store down")
        return False


def _events(between: Callable[[], None], seen: list[Any]) -> Starlette:
    """``/events``: three SSE events, ``between()`` called after the first is sent; ``seen``
    gets ``"ended"`` when the generator stops, however it stops."""

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield EVENTS[0]
            between()
            for event in EVENTS[1:]:
                yield event
        finally:
            seen.append("ended")

    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(stream(), media_type="text/event-stream")

    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/events", events), Route("/plain", plain)])


def _streamed(
    guard: BearerGuard | TrustedIssuers, token: str, between: Callable[[], None], **options: Any
) -> tuple[httpx.Response, list[Any], list[Any]]:
    """``/events`` behind the middleware: the response, what the app saw and the audit events
    while the stream ran (its acceptance excluded)."""
    seen: list[Any] = []
    app = _events(between, seen)
    guarded = Starlette(
        routes=app.routes,
        middleware=[Middleware(BearerGuardMiddleware, guard=guard, **options)],
    )
    with TestClient(guarded) as client, capture_logs() as events:
        response = client.get("/events", headers={"Authorization": f"Bearer {token}"})
    return response, seen, [e for e in events if e["event"] != "token.accepted"]


def test_an_expired_token_ends_the_stream_at_its_next_chunk(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()  # after minting: iat must not be ahead of the clock
    guard = session_issuer.guard(clock=clock, leeway=5)
    response, seen, events = _streamed(guard, token, lambda: clock.advance(66), stream_recheck=True)
    # Ended cleanly after the first event: a 200 whose body stops there (an SSE client
    # reconnects, with its token, and meets the 401).
    assert response.status_code == 200
    assert response.content == EVENTS[0]
    assert [(e["event"], e["reason"]) for e in events] == [("token.rejected", "expired")]
    assert events[0]["path"] == "/events"
    assert seen == ["ended"]  # the app was told of a disconnect, and stopped


def test_a_token_within_its_leeway_streams_to_the_end(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=5)
    response, _, events = _streamed(guard, token, lambda: clock.advance(64), stream_recheck=True)
    assert response.content == b"".join(EVENTS)
    assert events == []


def test_the_maximum_age_ends_the_stream_of_trusted_issuers(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=3600)
    clock = Clock()
    issuers = TrustedIssuers([session_issuer.guard(clock=clock, leeway=5, max_age=100)])
    response, _, events = _streamed(issuers, token, lambda: clock.advance(106), stream_recheck=True)
    assert response.content == EVENTS[0]
    assert [(e["event"], e["reason"]) for e in events] == [("token.rejected", "too_old")]


@pytest.mark.parametrize("policy", ["deny", "allow"])
def test_a_store_down_mid_stream_ends_it_unless_failing_open(
    session_issuer: DevIssuer, policy: str
) -> None:
    store = _Store()
    token = session_issuer.mint(sub="eve", expires_in=3600)
    guard = session_issuer.guard(revocation=store, revocation_failure=policy)

    def store_down() -> None:
        store.failing = True

    response, seen, events = _streamed(guard, token, store_down, stream_recheck=True)
    assert seen == ["ended"]
    if policy == "allow":
        assert response.content == b"".join(EVENTS)
        assert events == []
    else:
        assert response.content == EVENTS[0]
        assert [(e["event"], e["reason"]) for e in events] == [
            ("auth.unavailable", "revocation_unavailable")
        ]


def test_a_token_revoked_in_redis_ends_the_stream(
    session_issuer: DevIssuer, redis_server: Any, redis_namespace: str
) -> None:
    from bearerguard.revocation import RedisRevocationStore

    # No mirror: each chunk asks Redis (is_revoked), as the websocket recheck does.
    store = RedisRevocationStore(redis_server.url, namespace=redis_namespace, mirror=False)
    token = session_issuer.mint(sub="eve", expires_in=3600, jti="eve-1")
    guard = session_issuer.guard(revocation=store)
    try:
        response, _, events = _streamed(
            guard,
            token,
            lambda: store.revoke_token_sync("eve-1", issuer=session_issuer.url),
            stream_recheck=True,
        )
    finally:
        store.close()
    assert response.content == EVENTS[0]
    assert [(e["event"], e["reason"]) for e in events] == [("token.rejected", "revoked")]


def test_a_token_revoked_mid_stream_ends_a_served_sse_stream(session_issuer: DevIssuer) -> None:
    # A real server and an endless stream, as an SSE endpoint is: once the token is revoked
    # the stream ends, the app's generator stops, and the client's reconnection is refused.
    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint(sub="eve", expires_in=3600, jti="eve-2")
    stopped: list[str] = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            number = 0
            while True:
                number += 1
                yield f"data: {number}\n\n".encode()
                await asyncio.sleep(0.01)
        finally:
            stopped.append("stopped")

    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(endless(), media_type="text/event-stream")

    app = Starlette(
        routes=[Route("/events", events)],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard, stream_recheck=True)],
    )
    headers = {"Authorization": f"Bearer {token}"}
    received: list[str] = []
    with uvicorn_logging(app) as (host, _), httpx.Client(base_url=f"http://{host}") as client:
        with capture_logs() as audit, client.stream("GET", "/events", headers=headers) as stream:
            for line in stream.iter_lines():
                if not line:
                    continue
                received.append(line)
                if len(received) == 2:
                    store.revoke_token_sync("eve-2", issuer=session_issuer.url)
                # Unchecked, this stream never ends: fail rather than read it forever.
                assert len(received) < 500, "the stream outlived its revoked token"
        assert until(lambda: stopped == ["stopped"], 10)
        again = client.get("/events", headers=headers)
    # Every event up to the end, in order: the stream was ended, not broken off.
    assert received == [f"data: {number}" for number in range(1, len(received) + 1)]
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    assert refused == [("token.rejected", "revoked")]
    assert again.status_code == 401
    assert 'error="invalid_token"' in again.headers["www-authenticate"]


def test_a_sized_response_is_cut_short_not_ended_as_complete(session_issuer: DevIssuer) -> None:
    # A download that states its length cannot be ended early with a clean end: the server
    # refuses a body shorter than its Content-Length. Its later chunks are dropped and the
    # response left unfinished, so the server closes the connection and the client sees the
    # download cut short, not a complete (shorter) file.
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)

    async def download(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"6")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        clock.advance(61)
        await send({"type": "http.response.body", "body": b"cd", "more_body": True})
        await send({"type": "http.response.body", "body": b"ef"})

    app = BearerGuardMiddleware(download, guard=guard, stream_recheck=True)
    scope = http_scope([(b"authorization", f"Bearer {token}".encode())])
    with capture_logs() as events:
        sent = asyncio.run(asgi_call(app, scope))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"ab"
    assert [e["event"] for e in events] == ["token.accepted", "token.rejected"]


def test_the_app_is_handed_a_disconnect_once_the_stream_ended(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    received: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        clock.advance(61)
        await send({"type": "http.response.body", "body": b"b", "more_body": True})
        await send({"type": "http.response.body", "body": b"c", "more_body": True})
        received.append(await receive())

    guarded = BearerGuardMiddleware(app, guard=guard, stream_recheck=True)
    scope = http_scope([(b"authorization", f"Bearer {token}".encode())])
    # The server still has the request's body to hand: the app is told of a disconnect.
    inbox = [{"type": "http.request", "body": b"", "more_body": True}]
    sent = asyncio.run(asgi_call(guarded, scope, inbox))
    assert sent[1:] == [
        {"type": "http.response.body", "body": b"a", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    assert received == [{"type": "http.disconnect"}]


def test_a_normal_response_is_untouched(session_issuer: DevIssuer) -> None:
    # Checked on the cache-hit path too: the second request reuses the verified token.
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    seen: list[Any] = []
    app = _events(lambda: None, seen)
    headers = {"Authorization": f"Bearer {token}"}
    answers: dict[bool, list[Any]] = {}
    for recheck in (False, True):
        guarded = BearerGuardMiddleware(app, guard=guard, stream_recheck=recheck)
        scope = http_scope([(b"authorization", f"Bearer {token}".encode())], path="/plain")
        answers[recheck] = [asyncio.run(asgi_call(guarded, dict(scope))) for _ in range(2)]
    assert answers[True] == answers[False]
    assert answers[True][1][-1] == {"type": "http.response.body", "body": b'{"ok":true}'}
    served = Starlette(
        routes=app.routes,
        middleware=[Middleware(BearerGuardMiddleware, guard=guard, stream_recheck=True)],
    )
    with TestClient(served) as client:
        assert client.get("/plain", headers=headers).json() == {"ok": True}


def test_a_stream_reused_from_the_cache_is_rechecked(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    guard.authenticate_sync(token)  # cached: the middleware's fast path serves the request
    response, _, events = _streamed(guard, token, lambda: clock.advance(61), stream_recheck=True)
    assert response.content == EVENTS[0]
    assert [(e["event"], e["reason"]) for e in events] == [("token.rejected", "expired")]


def test_stream_recheck_is_off_by_default(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    response, _, events = _streamed(guard, token, lambda: clock.advance(61))
    assert response.content == b"".join(EVENTS)
    assert events == []


def test_an_anonymous_stream_on_a_public_path_is_not_rechecked(
    session_issuer: DevIssuer,
) -> None:
    clock = Clock()
    guard = session_issuer.guard(clock=clock)
    seen: list[Any] = []
    app = _events(lambda: clock.advance(86_400), seen)
    guarded = Starlette(
        routes=app.routes,
        middleware=[
            Middleware(
                BearerGuardMiddleware, guard=guard, public_paths=["/events"], stream_recheck=True
            )
        ],
    )
    with TestClient(guarded) as client, capture_logs() as events:
        response = client.get("/events")
    assert response.content == b"".join(EVENTS)
    assert events == []


# -- MCP: MCPToolScopes turns it on for what it serves --------------------------------------


def _mcp_stream(guard: BearerGuard, between: Callable[[], None], **options: Any) -> Any:
    """A stand-in for an MCP app's GET stream (the SDK's notifications stream), inside
    ``MCPToolScopes`` and the middleware."""
    seen: list[Any] = []
    app = _events(between, seen)
    return BearerGuardMiddleware(MCPToolScopes(app, tools={}), guard=guard, **options)


@pytest.mark.parametrize("outer", [False, True])
def test_an_mcp_get_stream_ends_when_its_token_is_revoked(
    session_issuer: DevIssuer, outer: bool
) -> None:
    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint(sub="eve", expires_in=3600, jti="eve-3")

    def revoke() -> None:
        store.revoke_token_sync("eve-3", issuer=session_issuer.url)

    # With the middleware's own stream_recheck on as well, the stream is checked once.
    app = _mcp_stream(guard, revoke, **({"stream_recheck": True} if outer else {}))
    with TestClient(app) as client, capture_logs() as events:
        response = client.get("/events", headers={"Authorization": f"Bearer {token}"})
    assert response.content == EVENTS[0]
    refused = [(e["event"], e["reason"]) for e in events if e["event"] != "token.accepted"]
    assert refused == [("token.rejected", "revoked")]


def test_mcp_tool_scopes_stream_recheck_false_leaves_streams_alone(
    session_issuer: DevIssuer,
) -> None:
    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint(sub="eve", expires_in=3600, jti="eve-4")
    seen: list[Any] = []

    def revoke() -> None:
        store.revoke_token_sync("eve-4", issuer=session_issuer.url)

    inner = MCPToolScopes(_events(revoke, seen), tools={}, stream_recheck=False)
    with TestClient(BearerGuardMiddleware(inner, guard=guard)) as client:
        response = client.get("/events", headers={"Authorization": f"Bearer {token}"})
    assert response.content == b"".join(EVENTS)


# -- ASGI HTTP spec 2.4: a send after the end raises, as for a client that went away ---------


def _endless(stopped: list[int], limit: int = 200, made: list[int] | None = None) -> Starlette:
    """``/events``: an SSE generator with no end of its own (``limit`` only bounds a failing
    test), which never awaits; ``stopped`` gets how many events it had made when it stopped,
    ``made`` holds how many it has made so far."""
    made = [0] if made is None else made

    async def numbers() -> AsyncIterator[bytes]:
        number = 0
        try:
            while number < limit:
                number += 1
                made[0] = number
                yield f"data: {number}\n\n".encode()
        finally:
            stopped.append(number)

    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(numbers(), media_type="text/event-stream")

    return Starlette(routes=[Route("/events", events)])


def _spec_24(scope: Any) -> Any:
    """``scope`` as a server declaring ASGI HTTP spec 2.4 builds it."""
    return {**scope, "asgi": {"version": "3.0", "spec_version": "2.4"}, "path": "/events"}


def _revoking(store: MemoryRevocationStore, issuer: str, jti: str, after: int) -> Callable:
    """A ``send`` wrapper for ``asgi_call``'s app: revokes ``jti`` once ``after`` body chunks
    have reached the server."""

    def wrap(app: Any) -> Any:
        async def revoking(scope: Any, receive: Any, send: Any) -> None:
            chunks = 0

            async def counting(message: Any) -> None:
                nonlocal chunks
                await send(message)
                if message["type"] == "http.response.body":
                    chunks += 1
                    if chunks == after:
                        store.revoke_token_sync(jti, issuer=issuer)

            await app(scope, receive, counting)

        return revoking

    return wrap


@pytest.mark.parametrize("mcp", [False, True])
def test_an_endless_stream_stops_under_asgi_spec_24(session_issuer: DevIssuer, mcp: bool) -> None:
    # Spec 2.4's StreamingResponse listens for no disconnect: it stops when a send raises
    # (ASGI HTTP spec, "Disconnected Client - send exception"). A dropped send would leave
    # its generator running for ever; the raise it turns into ClientDisconnect must not
    # reach the server as an error.
    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint(sub="eve", expires_in=3600, jti="eve-5")
    stopped: list[int] = []
    app: Any = _endless(stopped)
    if mcp:
        app = MCPToolScopes(app, tools={})
    guarded = _revoking(store, session_issuer.url, "eve-5", after=2)(
        BearerGuardMiddleware(app, guard=guard, stream_recheck=not mcp)
    )
    scope = _spec_24(http_scope([(b"authorization", f"Bearer {token}".encode())]))
    with capture_logs() as audit:
        sent = asyncio.run(asgi_call(guarded, scope, []))
    assert stopped == [3]  # the third event was refused, and the generator closed there
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    assert refused == [("token.rejected", "revoked")]


def test_a_failure_after_the_end_that_is_not_the_disconnect_still_raises(
    session_issuer: DevIssuer,
) -> None:
    # Only what the ended stream raised is absorbed: the app's own error is still its own.
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        clock.advance(61)
        with contextlib.suppress(OSError):  # the app cleans up after the disconnect...
            await send({"type": "http.response.body", "body": b"b", "more_body": True})
        raise LookupError("the app's own")  # ... then fails on its own

    guarded = BearerGuardMiddleware(app, guard=guard, stream_recheck=True)
    scope = _spec_24(http_scope([(b"authorization", f"Bearer {token}".encode())]))
    with pytest.raises(LookupError):
        asyncio.run(asgi_call(guarded, scope))


# -- exception groups: an app that streams inside a task group -------------------------------


def _ended_in_a_group(issuer: DevIssuer, shape: str, *, mcp: bool = False) -> Any:
    """A spec 2.4 app behind the middleware (or ``MCPToolScopes``) whose stream is ended at
    its second chunk, and which then raises what ``shape`` names, built from what its sends
    raised: an anyio task group's own, or a group made by hand."""
    token = issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = issuer.guard(clock=clock, leeway=0)

    async def caught(send: Any) -> BaseException:
        try:
            await send({"type": "http.response.body", "body": b"b", "more_body": True})
        except OSError as error:
            return error
        raise AssertionError("the send after the end did not raise")  # pragma: no cover

    async def disconnect(send: Any) -> BaseException:
        try:  # as Starlette's StreamingResponse answers the raise: ClientDisconnect
            await send({"type": "http.response.body", "body": b"b", "more_body": True})
        except OSError:
            try:
                raise ClientDisconnect
            except ClientDisconnect as error:
                return error
        raise AssertionError("the send after the end did not raise")  # pragma: no cover

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        clock.advance(61)
        if shape == "task group":  # anyio wraps its task's raise in an ExceptionGroup
            async with anyio.create_task_group() as group:
                group.start_soon(send, {"type": "http.response.body", "body": b"b"})
        elif shape == "two leaves":
            raise ExceptionGroup("sends", [await caught(send), await disconnect(send)])
        elif shape == "nested":
            inner = ExceptionGroup("inner", [await disconnect(send)])
            raise BaseExceptionGroup("outer", [await caught(send), inner])
        elif shape == "another error":
            raise ExceptionGroup("sends", [await caught(send), LookupError("the app's own")])
        elif shape == "another error nested":
            inner = ExceptionGroup("inner", [await caught(send), LookupError("the app's own")])
            raise ExceptionGroup("outer", [await disconnect(send), inner])

    inner: Any = MCPToolScopes(app, tools={}) if mcp else app
    guarded = BearerGuardMiddleware(inner, guard=guard, stream_recheck=not mcp)
    scope = _spec_24(http_scope([(b"authorization", f"Bearer {token}".encode())]))
    return guarded, scope


@pytest.mark.parametrize("mcp", [False, True])
@pytest.mark.parametrize("shape", ["task group", "two leaves", "nested"])
def test_a_group_of_only_what_the_ended_stream_raised_is_absorbed(
    session_issuer: DevIssuer, shape: str, mcp: bool
) -> None:
    # An app that streams inside a task group raises a group, not the bare OSError: each
    # of its leaves is what the ended stream raised, so the group is absorbed as they are.
    guarded, scope = _ended_in_a_group(session_issuer, shape, mcp=mcp)
    with capture_logs() as audit:
        sent = asyncio.run(asgi_call(guarded, scope))
    assert [m.get("body") for m in sent[1:]] == [b"a", b""]
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    assert refused == [("token.rejected", "expired")]


@pytest.mark.parametrize("mcp", [False, True])
@pytest.mark.parametrize("shape", ["another error", "another error nested"])
def test_a_group_with_any_other_error_goes_on_unchanged(
    session_issuer: DevIssuer, shape: str, mcp: bool
) -> None:
    guarded, scope = _ended_in_a_group(session_issuer, shape, mcp=mcp)
    with pytest.raises(ExceptionGroup) as raised:
        asyncio.run(asgi_call(guarded, scope))
    assert raised.value.subgroup(LookupError) is not None  # the app's own error, kept
    assert raised.value.message == ("sends" if shape == "another error" else "outer")


class _Stop(BaseException):
    """Not an ``Exception``: what a server must see (a cancellation, an exit)."""


def test_a_group_is_absorbed_only_when_each_of_its_leaves_is() -> None:
    ended = StreamEndedError("ended")
    assert absorbed(BaseExceptionGroup("g", [ended, ExceptionGroup("h", [ended])]))
    assert not absorbed(BaseExceptionGroup("g", [ended, _Stop()]))
    assert not absorbed(ExceptionGroup("g", [ended, ExceptionGroup("h", [LookupError()])]))


def _after_the_end(issuer: DevIssuer, version: str) -> list[str]:
    """What two sends after the end did under a scope declaring ``version``."""
    token = issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = issuer.guard(clock=clock, leeway=0)
    seen: list[str] = []

    async def try_send(send: Any, chunk: bytes) -> None:
        try:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            seen.append("dropped")
        except OSError:
            seen.append("raised")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        clock.advance(61)
        await try_send(send, b"b")
        await try_send(send, b"c")

    guarded = BearerGuardMiddleware(app, guard=guard, stream_recheck=True)
    scope = http_scope([(b"authorization", f"Bearer {token}".encode())])
    scope["asgi"] = {"version": "3.0", "spec_version": version}
    asyncio.run(asgi_call(guarded, scope))
    return seen


@pytest.mark.parametrize(
    ("version", "outcome"),
    # One that does not parse is taken as the spec's default, 2.0.
    [("2.3", "dropped"), ("2.4", "raised"), ("2.10", "raised"), ("two", "dropped")],
)
def test_sends_after_the_end_raise_an_os_error_under_spec_24_only(
    session_issuer: DevIssuer, version: str, outcome: str
) -> None:
    assert _after_the_end(session_issuer, version) == [outcome, outcome]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("version", ["2.3", "2.4"])
def test_a_served_endless_stream_ends_without_a_server_error(
    session_issuer: DevIssuer, version: str, grouped: bool
) -> None:
    # uvicorn declares 2.3 for HTTP: a shim declares 2.4, as another server would, so that
    # the server's log shows whether what the ended stream raised reached it as an error.
    # Grouped, the response is sent from inside the app's own anyio task group (a stream
    # fed by a producer task): its ClientDisconnect comes out wrapped in an ExceptionGroup.
    # Under 2.3 the generator, which never awaits, stops only if a dropped send lets the
    # response's disconnect listener run: else it runs to its end holding the event loop,
    # and the server answers nothing else meanwhile.
    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint(sub="eve", expires_in=3600, jti="eve-6")
    stopped: list[int] = []
    made = [0]
    endless = _endless(stopped, 100_000, made)

    async def in_a_group(scope: Any, receive: Any, send: Any) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(endless, scope, receive, send)

    guarded = BearerGuardMiddleware(
        in_a_group if grouped else endless, guard=guard, stream_recheck=True
    )

    async def declaring(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "asgi": {**scope["asgi"], "spec_version": version}}
        await guarded(scope, receive, send)

    headers = {"Authorization": f"Bearer {token}"}
    received = 0
    with (
        uvicorn_logging(declaring, logger="uvicorn.error") as (host, log),
        httpx.Client(base_url=f"http://{host}") as client,
    ):
        with client.stream("GET", "/events", headers=headers) as stream:
            for line in stream.iter_lines():
                if line:
                    received += 1
                    if received == 2:
                        store.revoke_token_sync("eve-6", issuer=session_issuer.url)
        if version == "2.4":  # the raise ends the generator; under 2.3 it is cancelled out
            # of, in the dropped send, and Starlette leaves it to the garbage collector
            assert until(lambda: len(stopped) == 1, 10)
        again = client.get("/events", headers=headers)  # the server answers meanwhile
        # Stopped by the end, not by running out: the reconnection had its answer first.
        assert made[0] < 100_000
    assert again.status_code == 401
    assert "Exception" not in log.getvalue()
    assert "Traceback" not in log.getvalue()


# -- files the server sends itself: the pathsend and zero-copy send extensions ---------------

_FILE_SENDS = {"http.response.pathsend": {}, "http.response.zerocopysend": {}}


def _download(tmp_path: Any) -> Starlette:
    """``/events``: a Starlette ``FileResponse`` of four of its 64 KiB chunks."""
    from starlette.responses import FileResponse

    path = tmp_path / "download.bin"
    path.write_bytes(b"x" * (4 * 64 * 1024))

    async def download(request: Request) -> FileResponse:
        return FileResponse(path)

    return Starlette(routes=[Route("/events", download)])


@pytest.mark.parametrize("recheck", [False, True])
def test_a_file_response_is_sent_in_rechecked_chunks_not_by_the_server(
    session_issuer: DevIssuer, tmp_path: Any, recheck: bool
) -> None:
    # A server offering http.response.pathsend (granian) sends the whole file itself once
    # told its path: one message, past any recheck. Rechecked, the app is not offered it,
    # and Starlette's FileResponse sends the file in chunks, each further one rechecked.
    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint(sub="eve", expires_in=3600, jti="eve-9")
    guarded = _revoking(store, session_issuer.url, "eve-9", after=1)(
        BearerGuardMiddleware(_download(tmp_path), guard=guard, stream_recheck=recheck)
    )
    # Under 2.4, where a FileResponse listens for no disconnect (asgi_call's would come at
    # once): the sends after the end raise, and what that raises out of the app is absorbed.
    scope = _spec_24(http_scope([(b"authorization", f"Bearer {token}".encode())]))
    scope["extensions"] = _FILE_SENDS
    with capture_logs() as audit:
        sent = asyncio.run(asgi_call(guarded, scope))
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    if recheck:
        # Sized: cut short after the first chunk, never ended as complete.
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert refused == [("token.rejected", "revoked")]
    else:
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
        assert refused == []
    assert len(_FILE_SENDS) == 2  # the server's own dict, left as it was


def test_zero_copy_sends_are_rechecked_as_body_chunks(session_issuer: DevIssuer) -> None:
    # An app that sends a file in http.response.zerocopysend parts (the server sendfile()s
    # each): each part after one that said more would follow is a use of the token.
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        part = {"type": "http.response.zerocopysend", "file": 0, "count": 2, "more_body": True}
        await send(part)
        clock.advance(61)
        await send(part)
        await send({"type": "http.response.body", "body": b""})

    guarded = BearerGuardMiddleware(app, guard=guard, stream_recheck=True)
    scope = http_scope([(b"authorization", f"Bearer {token}".encode())], extensions=_FILE_SENDS)
    with capture_logs() as audit:
        sent = asyncio.run(asgi_call(guarded, scope))
    assert [(m["type"], m.get("more_body")) for m in sent] == [
        ("http.response.start", None),
        ("http.response.zerocopysend", True),
        ("http.response.body", False),  # the end, not the app's
    ]
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    assert refused == [("token.rejected", "expired")]


# -- WSGI: a streamed body (Flask, a plain generator) on a real werkzeug server --------------


def _flask_events(between: Callable[[], None], stopped: list[str]) -> Any:
    """A Flask app: ``/events`` streams three SSE events with ``stream_with_context``,
    ``between()`` called after the first; ``/plain`` answers JSON."""
    from flask import Flask, Response, stream_with_context

    app = Flask(__name__)

    @app.get("/events")
    def events() -> Response:
        def stream() -> Iterator[bytes]:
            try:
                yield EVENTS[0]
                between()
                yield from EVENTS[1:]
            finally:
                stopped.append("stopped")

        return Response(stream_with_context(stream()), mimetype="text/event-stream")

    @app.get("/plain")
    def plain() -> dict[str, bool]:
        return {"ok": True}

    return app


@contextlib.contextmanager
def _served_flask(
    guard: BearerGuard, between: Callable[[], None], **options: Any
) -> Iterator[tuple[httpx.Client, list[str]]]:
    """The Flask app behind ``protect(...)`` on a real werkzeug server: a client for it and
    what the app's generator reported."""
    from werkzeug.serving import make_server

    from bearerguard.flask import protect

    stopped: list[str] = []
    app = _flask_events(between, stopped)
    protect(app, guard=guard, **options)
    server = make_server("127.0.0.1", 0, app, threaded=False)
    with serving(server) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        yield client, stopped


def test_a_flask_stream_ends_when_its_token_expires(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=5)
    headers = {"Authorization": f"Bearer {token}"}
    with (
        _served_flask(guard, lambda: clock.advance(66), stream_recheck=True) as (client, stopped),
        capture_logs() as audit,
    ):
        response = client.get("/events", headers=headers)
        assert until(lambda: stopped == ["stopped"], 10)  # the app's generator was closed
        again = client.get("/events", headers=headers)
    assert response.status_code == 200
    assert response.content == EVENTS[0]
    refused = [
        (e["event"], e["reason"], e["path"]) for e in audit if e["event"] != "token.accepted"
    ]
    assert refused[0] == ("token.rejected", "expired", "/events")
    assert len(refused) == 2  # and the reconnection's refusal
    assert again.status_code == 401


def test_a_wsgi_stream_ends_when_its_token_is_revoked(session_issuer: DevIssuer) -> None:
    # A plain WSGI generator with no end of its own, as an SSE endpoint is.
    from werkzeug.serving import make_server

    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint(sub="eve", expires_in=3600, jti="eve-7")
    made: list[int] = []

    def endless(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        number = 0
        try:
            while number < 100_000:  # bounds only a failing test
                number += 1
                yield f"data: {number}\n\n".encode()
        finally:
            made.append(number)

    guarded = BearerGuardWSGIMiddleware(endless, guard=guard, stream_recheck=True)
    server = make_server("127.0.0.1", 0, guarded, threaded=False)
    received: list[str] = []
    headers = {"Authorization": f"Bearer {token}"}
    with (
        serving(server) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}") as client,
        capture_logs() as audit,
    ):
        with client.stream("GET", "/events", headers=headers) as stream:
            for line in stream.iter_lines():
                if line:
                    received.append(line)
                    if len(received) == 2:
                        store.revoke_token_sync("eve-7", issuer=session_issuer.url)
        assert until(lambda: len(made) == 1, 10)
        again = client.get("/events", headers=headers)
    assert made[0] < 100_000  # closed by the end, not run out
    assert received == [f"data: {number}" for number in range(1, len(received) + 1)]
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    assert refused[0] == ("token.rejected", "revoked")
    assert again.status_code == 401


@pytest.mark.parametrize("recheck", [False, True])
def test_a_flask_response_with_a_good_token_is_untouched(
    session_issuer: DevIssuer, recheck: bool
) -> None:
    token = session_issuer.mint(sub="eve", expires_in=3600)
    headers = {"Authorization": f"Bearer {token}"}
    guard = session_issuer.guard()
    with (
        _served_flask(guard, lambda: None, stream_recheck=recheck) as (client, stopped),
        capture_logs() as audit,
    ):
        streamed = client.get("/events", headers=headers)
        plain = client.get("/plain", headers=headers)
        assert until(lambda: stopped == ["stopped"], 10)
    assert streamed.content == b"".join(EVENTS)
    assert plain.json() == {"ok": True}
    assert [e["event"] for e in audit if e["event"] != "token.accepted"] == []


def test_wsgi_stream_recheck_is_off_by_default(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    with _served_flask(guard, lambda: clock.advance(61)) as (client, _):
        response = client.get("/events", headers={"Authorization": f"Bearer {token}"})
    assert response.content == b"".join(EVENTS)


# -- a file the app hands to the server's wsgi.file_wrapper (send_file, FileResponse) ---------


class _File(io.RawIOBase):
    """A file an app sends: one of ``chunks`` per read, ``between()`` run at the second."""

    def __init__(self, chunks: list[bytes], between: Callable[[], None]) -> None:
        super().__init__()
        self._chunks = list(chunks)
        self._between = between
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 2:
            self._between()
        return self._chunks.pop(0) if self._chunks else b""


@contextlib.contextmanager
def _wsgi_served(kind: str, app: Any) -> Iterator[httpx.Client]:
    """``app`` on a real server: the standard library's wsgiref, which offers its
    ``wsgi.file_wrapper`` (and, sending no file itself, iterates what it wraps), or
    werkzeug's, which offers none; a client for it."""
    if kind == "wsgiref":
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        server: Any = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    else:
        from werkzeug.serving import make_server as werkzeug_server

        server = werkzeug_server("127.0.0.1", 0, app)
    with serving(server) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        yield client


def test_a_file_handed_to_the_servers_file_wrapper_is_rechecked(
    session_issuer: DevIssuer,
) -> None:
    # A server sends what its own wsgi.file_wrapper wrapped as it likes (gunicorn and
    # waitress with sendfile, past any iteration): a long download read after its token
    # expired. Rechecked, the middleware has the server iterate it through the recheck.
    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    sent = _File([b"ab", b"cd", b"ef"], lambda: clock.advance(61))

    def download(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](sent, 2)

    guarded = BearerGuardWSGIMiddleware(download, guard=guard, stream_recheck=True)
    headers = {"Authorization": f"Bearer {token}"}
    with _wsgi_served("wsgiref", guarded) as client, capture_logs() as audit:
        response = client.get("/", headers=headers)
        assert until(lambda: sent.closed, 10)  # closed by the server, through the recheck
    assert response.content == b"ab"
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    assert refused == [("token.rejected", "expired")]


@pytest.mark.parametrize("server", ["wsgiref", "werkzeug"])
def test_a_flask_send_file_download_is_rechecked(session_issuer: DevIssuer, server: str) -> None:
    # Flask's send_file hands its file to the server's wsgi.file_wrapper when the server
    # offers one (wsgiref), else to werkzeug's own FileWrapper (werkzeug's server).
    from flask import Flask, Response, send_file

    from bearerguard.flask import protect

    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    sent = _File([b"ab", b"cd", b"ef"], lambda: clock.advance(61))
    app = Flask(__name__)

    @app.get("/download")
    def download() -> Response:
        return send_file(sent, mimetype="application/octet-stream")

    protect(app, guard=guard, stream_recheck=True)
    headers = {"Authorization": f"Bearer {token}"}
    with _wsgi_served(server, app) as client, capture_logs() as audit:
        response = client.get("/download", headers=headers)
        assert until(lambda: sent.closed, 10)
    assert response.content == b"ab"
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    assert refused == [("token.rejected", "expired")]


def test_a_file_wrapper_is_left_to_the_server_without_the_recheck(
    session_issuer: DevIssuer,
) -> None:
    # Off (by default), or for a request with no token, the server gets its own wrapper
    # back, as the app returned it: it may send the file as it likes (sendfile).
    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    guard = session_issuer.guard()
    returned: list[Any] = []

    def download(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        returned.append(environ["wsgi.file_wrapper"](io.BytesIO(b"abcdef"), 2))
        return returned[-1]

    from wsgiref.util import FileWrapper

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/files/a",
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.file_wrapper": FileWrapper,
    }
    token = {"HTTP_AUTHORIZATION": f"Bearer {session_issuer.mint(sub='eve')}"}
    off = BearerGuardWSGIMiddleware(download, guard=guard)
    assert off({**environ, **token}, lambda status, headers: None) is returned[-1]
    public = BearerGuardWSGIMiddleware(
        download, guard=guard, public_paths=["/files/*"], stream_recheck=True
    )
    assert public(environ, lambda status, headers: None) is returned[-1]


@pytest.mark.parametrize("server", ["wsgiref", "werkzeug"])
def test_a_body_written_with_start_responses_write_is_rechecked(
    session_issuer: DevIssuer, server: str
) -> None:
    # PEP 3333's write() callable sends past the iterable the app returns: an app that
    # streams with it (an endless one here) ran on after its token was revoked. Its
    # further writes are rechecked; the first that fails raises an OSError, as a write to
    # a client that went away does, which stops the app and is absorbed.
    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint(sub="eve", expires_in=3600, jti="eve-10")
    written: list[int] = []
    stopped: list[str] = []

    def writer(environ: Any, start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/event-stream")])
        try:
            while len(written) < 100_000:  # bounds only a failing test
                write(f"data: {len(written) + 1}\n\n".encode())
                written.append(len(written) + 1)
                if len(written) == 2:
                    store.revoke_token_sync("eve-10", issuer=session_issuer.url)
        finally:
            stopped.append("stopped")
        return []

    guarded = BearerGuardWSGIMiddleware(writer, guard=guard, stream_recheck=True)
    headers = {"Authorization": f"Bearer {token}"}
    with _wsgi_served(server, guarded) as client, capture_logs() as audit:
        response = client.get("/events", headers=headers)
        again = client.get("/events", headers=headers)
    assert stopped == ["stopped"]
    assert written == [1, 2]  # the third write raised
    assert response.text == "data: 1\n\ndata: 2\n\n"
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    assert refused == [("token.rejected", "revoked"), ("token.rejected", "revoked")]
    assert again.status_code == 401


def test_a_body_returned_after_a_failed_write_sends_nothing(session_issuer: DevIssuer) -> None:
    # The app catches the write's OSError (as it would a client gone) and returns a body:
    # the stream is over, so nothing of it goes, and it is closed.
    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)
    closed: list[str] = []

    def rest() -> Iterator[bytes]:
        try:
            yield b"c"
        finally:
            closed.append("closed")

    def writer(environ: Any, start_response: Any) -> Iterator[bytes]:
        write = start_response("200 OK", [])
        write(b"a")
        clock.advance(61)
        with contextlib.suppress(OSError):
            write(b"b")
        body = rest()
        next(body)  # started: a generator only runs its finally once started
        return body

    guarded = BearerGuardWSGIMiddleware(writer, guard=guard, stream_recheck=True)
    with _wsgi_served("wsgiref", guarded) as client, capture_logs() as audit:
        response = client.get("/", headers={"Authorization": f"Bearer {token}"})
        assert until(lambda: closed == ["closed"], 10)
    assert response.content == b"a"
    refused = [(e["event"], e["reason"]) for e in audit if e["event"] != "token.accepted"]
    assert refused == [("token.rejected", "expired")]


class _SyncStore(_Store):
    """``_Store`` with the synchronous side WSGI asks."""

    def is_revoked_sync(self, token: AccessToken) -> bool:
        if self.failing:
            raise ConnectionError("store down")
        return False


def _wsgi_streamed(
    guard: BearerGuard | TrustedIssuers, token: str, between: Callable[[], None]
) -> tuple[bytes, list[Any], list[Any]]:
    """Three chunks from a WSGI generator behind the middleware (``stream_recheck``), read
    and closed as a server does: the body, what the app saw and the refusals audited."""
    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    seen: list[Any] = []

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        try:
            yield EVENTS[0]
            between()
            yield from EVENTS[1:]
        finally:
            seen.append("ended")

    guarded = BearerGuardWSGIMiddleware(app, guard=guard, stream_recheck=True)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/events",
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "HTTP_AUTHORIZATION": f"Bearer {token}",
    }
    with capture_logs() as events:
        body = guarded(environ, lambda status, headers: None)
        try:
            content = b"".join(body)
        finally:
            body.close()  # type: ignore[attr-defined]
    return content, seen, [e for e in events if e["event"] != "token.accepted"]


@pytest.mark.parametrize("policy", ["deny", "allow"])
def test_a_store_down_mid_wsgi_stream_ends_it_unless_failing_open(
    session_issuer: DevIssuer, policy: str
) -> None:
    store = _SyncStore()
    token = session_issuer.mint(sub="eve", expires_in=3600)
    guard = session_issuer.guard(revocation=store, revocation_failure=policy)

    def store_down() -> None:
        store.failing = True

    content, seen, events = _wsgi_streamed(guard, token, store_down)
    assert seen == ["ended"]
    if policy == "allow":
        assert (content, events) == (b"".join(EVENTS), [])
    else:
        assert content == EVENTS[0]
        assert [(e["event"], e["reason"]) for e in events] == [
            ("auth.unavailable", "revocation_unavailable")
        ]


def test_the_maximum_age_ends_a_wsgi_stream_of_trusted_issuers(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(sub="eve", expires_in=3600)
    clock = Clock()
    issuers = TrustedIssuers([session_issuer.guard(clock=clock, leeway=5, max_age=100)])
    content, seen, events = _wsgi_streamed(issuers, token, lambda: clock.advance(106))
    assert content == EVENTS[0]
    assert seen == ["ended"]
    assert [(e["event"], e["reason"]) for e in events] == [("token.rejected", "too_old")]


def test_a_sized_wsgi_response_ended_early_is_cut_short(session_issuer: DevIssuer) -> None:
    # As docs/wsgi.md says: the server sends fewer bytes than the Content-Length it stated
    # and closes the connection; the client sees the download cut short, not complete.
    from werkzeug.serving import make_server

    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    guard = session_issuer.guard(clock=clock, leeway=0)

    def download(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "6")])
        yield b"ab"
        clock.advance(61)
        yield b"cd"
        yield b"ef"

    guarded = BearerGuardWSGIMiddleware(download, guard=guard, stream_recheck=True)
    server = make_server("127.0.0.1", 0, guarded, threaded=True)
    with serving(server) as port, pytest.raises(httpx.RemoteProtocolError, match="received 2"):
        httpx.get(f"http://127.0.0.1:{port}/", headers={"Authorization": f"Bearer {token}"})
