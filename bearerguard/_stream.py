"""A streamed HTTP response's token, checked again at each body chunk (``stream_recheck``):
an ASGI response's ``send`` (``RecheckedStream``), a WSGI or Django body (``RecheckedBody``,
``RecheckedAsyncBody``) and a WSGI app's ``write`` (``RecheckedSends``).

A request is authenticated when it arrives, and its response may then stream for hours:
Server-Sent Events, an MCP session's GET stream, a long download. Each chunk after the
first that said more would follow is a use of the token, so it is sent only while
``recheck`` passes. The first that fails ends the response, audited once as the websocket
recheck is (``_recheck`` holds what both share): the same events and reasons. A response
that sent no body yet, or sent it whole, is never checked: a plain response costs one call
per message.

Once ended, the stream answers the app as its server answers for a client that went away,
by the scope's ASGI HTTP spec version: sends dropped up to 2.3, an ``OSError`` raised from
2.4 (which Starlette's ``StreamingResponse`` stops on, listening for no disconnect). What
that raises out of the app is absorbed by whoever ended the stream (``absorbed``), as the
spec asks a server to catch what it raised, and not log it.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, Callable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from bearerguard._context import AsyncBodyWithAuth, BodyWithAuth
from bearerguard._recheck import Rechecked
from bearerguard.errors import AuthError

if sys.version_info < (3, 11):  # anyio, a dependency, brings the backport there
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from starlette.types import Message, Receive, Scope, Send

    from bearerguard._context import RequestAuth
    from bearerguard.audit import RequestInfo
    from bearerguard.guard import BearerGuard
    from bearerguard.issuers import TrustedIssuers
    from bearerguard.token import AccessToken

__all__ = [
    "STREAM_KEY",
    "RecheckedAsyncBody",
    "RecheckedBody",
    "RecheckedSends",
    "RecheckedStream",
    "StreamEndedError",
    "absorbed",
]

STREAM_KEY = "bearerguard.stream"
"""The scope key holding a request's ``RecheckedStream``: one per request, however many
layers (the middleware, ``MCPToolScopes``) would recheck it."""


_BODY = frozenset(("http.response.body", "http.response.zerocopysend", "http.response.pathsend"))
"""The messages that send a response's body: a chunk of it, a part of a file the server
sends (zero-copy send extension), or a whole file it sends by its path (path send)."""

_FILE_SENDS = ("http.response.zerocopysend", "http.response.pathsend")
"""The extensions by which the server sends a file itself: a whole file in one message."""


class StreamEndedError(OSError):
    """A send after bearerguard ended the stream, under ASGI HTTP spec 2.4 or later."""


def _raises_on_send(scope: Scope) -> bool:
    """Whether the scope's server raises from a send to a client that went away: ASGI HTTP
    spec 2.4 ("Disconnected Client - send exception"); before it, such a send is a no-op.
    A missing version is the spec's default, 2.0, and so is one that does not parse."""
    declared = (scope.get("asgi") or {}).get("spec_version", "2.0")
    try:
        major, minor = (int(part) for part in str(declared).split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 4)


def absorbed(error: BaseException) -> bool:
    """Whether ``error``, raised out of the app, is only what an ended stream's send raised:
    a ``StreamEndedError``, or what the app raised while handling one (Starlette's
    ``ClientDisconnect``), or a group of nothing else (an app streaming from an anyio task
    group raises its task's error wrapped in one). The ASGI spec asks a server to catch the
    ``OSError`` it raised and not log it as an error; any other error is the app's own and
    goes on, and so does a group holding one beside the stream's."""
    if isinstance(error, BaseExceptionGroup):
        # Never empty (the constructor refuses that): all() is not vacuously true here.
        return all(absorbed(leaf) for leaf in error.exceptions)
    if isinstance(error, StreamEndedError):
        return True
    return isinstance(error.__cause__ or error.__context__, StreamEndedError)


def _offering_no_file_sends(scope: Scope) -> None:
    """Take the server's file sends out of what ``scope`` offers the app: a file it sends
    in one message (Starlette's ``FileResponse`` with path send) would go out whole, past
    any recheck; not offered, the app sends it in chunks, each further one rechecked. The
    server's own dict is left as it is: the scope gets a copy."""
    extensions = scope.get("extensions")
    if extensions and any(name in extensions for name in _FILE_SENDS):
        scope["extensions"] = {
            name: value for name, value in extensions.items() if name not in _FILE_SENDS
        }


def _sized(start: Message | None) -> bool:
    """Whether the response's start stated a ``Content-Length``."""
    headers: Any = () if start is None else start.get("headers") or ()
    # ASGI says bytes; text, which some apps send and servers encode, is read as its bytes.
    return any(
        (name.encode("latin-1") if isinstance(name, str) else bytes(name)).lower()
        == b"content-length"
        for name, _ in headers
    )


class RecheckedStream(Rechecked):
    """One HTTP request's ``receive`` and ``send``, wrapped: once a body chunk with
    ``more_body`` has gone out, each further one (``http.response.body``, or a file part
    the server sends, ``http.response.zerocopysend``) reaches the client only while the
    token passes ``recheck``. The app is not offered the server's file sends (zero-copy and
    path send), with which a file would go out in one message, whole: it sends the file in
    chunks instead (Starlette's ``FileResponse`` in 64 KiB ones), at the cost of sendfile.

    Once it fails, the response is ended: with a last empty chunk, so that the client sees
    the stream end (an SSE client then reconnects, with its token, and meets the RFC 6750
    401); without it when the start stated a ``Content-Length``, which the server will not
    let a shorter body end cleanly (it closes the connection once the app returns, and the
    client sees the download cut short, not a complete shorter file). The app's pending
    (or next) receive gets ``http.disconnect``, and the send that failed and its later
    ones answer as the server does for a client that went away: dropped under ASGI HTTP
    spec 2.3 and before, a ``StreamEndedError`` (an ``OSError``) raised from 2.4 on.
    """

    __slots__ = ("_raises", "_scope", "_start", "_streaming")

    def __init__(
        self,
        guard: BearerGuard | TrustedIssuers,
        token: AccessToken,
        request: RequestInfo,
        receive: Receive,
        send: Send,
        *,
        scope: Scope,
    ) -> None:
        super().__init__(guard, token, request, receive, send)
        _offering_no_file_sends(scope)
        self._scope = scope
        self._start: Message | None = None
        self._streaming = False
        self._raises = False  # set once ended, from the scope's spec version

    async def receive(self) -> Message:
        """The next message for the app; a disconnect once the stream was ended."""
        if self._ended:
            return {"type": "http.disconnect"}
        message = await self._receive()
        # Ended meanwhile: whatever came is not the app's (the server wakes a pending
        # receive once the last chunk is sent, with its own disconnect).
        return {"type": "http.disconnect"} if self._ended else message

    async def send(self, message: Message) -> None:
        """Pass the app's message on; a body chunk only while the token is good."""
        if self._ended:
            await self._gone()
            return
        kind = message["type"]
        if kind in _BODY:
            if self._streaming and not await self._valid():
                await self._gone()
                return
            if message.get("more_body", False):
                self._streaming = True
        elif kind == "http.response.start":
            self._start = message  # read only if the stream is ended
        await self._send(message)

    async def _gone(self) -> None:
        """A send once the stream ended: raised under ASGI HTTP spec 2.4, else dropped."""
        if self._raises:
            raise StreamEndedError("the stream was ended: its token no longer passes")
        # Dropped, but the loop gets a turn: a body that never awaits (its chunks at hand,
        # sent at the client's pace only while the server's sends pushed back) would send
        # on for ever holding the event loop, its disconnect listener (Starlette's
        # StreamingResponse under 2.3) never run. A cancellation that listener asked for
        # lands here only at the next dropped send: an app that awaits gets it in its own
        # code (a generator's finally then runs), as for a client that went away.
        await checkpoint_if_cancelled()
        await cancel_shielded_checkpoint()

    async def _end(self, error: AuthError) -> None:
        self._raises = _raises_on_send(self._scope)
        if not _sized(self._start):
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


class RecheckedSends:
    """What a rechecked WSGI response sends, by either way PEP 3333 has: the ``write``
    callable ``start_response`` returns, and the body the app returns (``RecheckedBody``).
    The first chunk goes unchecked; each further one, written or yielded, only while the
    token passes ``recheck_sync`` (the server has sent one chunk when it asks for the next,
    or when ``write`` returns). The first that fails ends the response, audited once.

    A write after the end raises a ``StreamEndedError`` (an ``OSError``), as a write to a
    client that went away does: an app that streams with ``write`` stops there, and the
    middleware absorbs what that raises out of the app (``absorbed``).
    """

    __slots__ = ("_auth", "ended", "started")

    def __init__(self, auth: RequestAuth) -> None:
        self._auth = auth
        self.started = False  # a chunk went out
        self.ended = False

    def start_response(self, start_response: StartResponse) -> StartResponse:
        """``start_response``, whose ``write`` callable sends only while the token passes."""

        def starting(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            write = (
                start_response(status, headers)
                if exc_info is None
                else start_response(status, headers, exc_info)
            )

            def rechecked(data: bytes) -> None:
                if not self.passes():
                    raise StreamEndedError("the stream was ended: its token no longer passes")
                write(data)

            return rechecked

        return starting

    def passes(self) -> bool:
        """Whether a chunk may go now: the first one, or a further one while the token
        passes; the first that fails ends the response, audited once."""
        if self.ended:
            return False
        if self.started:
            auth = self._auth
            token = auth.token
            assert token is not None  # noqa: S101 - only a request with a token is rechecked
            started = perf_counter()
            try:
                auth.guard.recheck_sync(token)
            except AuthError as error:
                self.ended = True
                auth.guard.audit.refused(error, auth, perf_counter() - started)
                return False
        self.started = True
        return True


class RecheckedBody(BodyWithAuth):
    """A WSGI response body (or a Django streaming one) whose chunks after the first reach
    the server only while the token passes ``recheck_sync``: a WSGI server has sent one
    chunk when it asks for the next (PEP 3333), so each further one is a use of the token.

    The first that fails ends the body where it stands, audited once as the ASGI stream
    is: the server sees the iteration stop, and the app's iterable is closed there (its
    clean-up runs with ``current_auth`` set), once, however often the server closes this.
    ``sent`` is what the app's ``write`` calls sent before it returned the body, if any.
    """

    __slots__ = ("_closed", "_sent")

    def __init__(
        self, body: Iterable[bytes], auth: RequestAuth, sent: RecheckedSends | None = None
    ) -> None:
        super().__init__(body, auth)
        self._sent = RecheckedSends(auth) if sent is None else sent
        self._closed = False

    def __next__(self) -> bytes:
        sent = self._sent
        if sent.ended:
            raise StopIteration
        chunk = super().__next__()
        if not sent.passes():
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Close the app's body, once."""
        if not self._closed:
            self._closed = True
            super().close()


class RecheckedAsyncBody(AsyncBodyWithAuth):
    """An asynchronous streaming body (Django's, under ASGI) rechecked as ``RecheckedBody``
    is, with the guard's ``recheck``: its app's iterator is closed (``aclose``) at the end."""

    __slots__ = ("_ended", "_streaming")

    def __init__(self, body: AsyncIterable[bytes], auth: RequestAuth) -> None:
        super().__init__(body, auth)
        self._streaming = False
        self._ended = False

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        chunk = await super().__anext__()
        if self._streaming and not await self._valid():
            raise StopAsyncIteration
        self._streaming = True
        return chunk

    async def _valid(self) -> bool:
        auth = self._auth
        token = auth.token
        assert token is not None  # noqa: S101 - only a request with a token is rechecked
        started = perf_counter()
        try:
            await auth.guard.recheck(token)
        except AuthError as error:
            self._ended = True
            auth.guard.audit.refused(error, auth, perf_counter() - started)
            await self.aclose()  # an async generator closes once: again is a no-op
            return False
        return True
