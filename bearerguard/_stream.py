"""A streamed HTTP response's token, checked again at each body chunk (``stream_recheck``).

A request is authenticated when it arrives, and its response may then stream for hours:
Server-Sent Events, an MCP session's GET stream, a long download. Each chunk after the
first that said more would follow is a use of the token, so it is sent only while
``recheck`` passes. The first that fails ends the response, audited once as the websocket
recheck is (``_recheck`` holds what both share): the same events and reasons. A response
that sent no body yet, or sent it whole, is never checked: a plain response costs one call
per message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bearerguard._recheck import Rechecked

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Send

    from bearerguard.audit import RequestInfo
    from bearerguard.errors import AuthError
    from bearerguard.guard import BearerGuard
    from bearerguard.issuers import TrustedIssuers
    from bearerguard.token import AccessToken

__all__ = ["STREAM_KEY", "RecheckedStream"]

STREAM_KEY = "bearerguard.stream"
"""The scope key holding a request's ``RecheckedStream``: one per request, however many
layers (the middleware, ``MCPToolScopes``) would recheck it."""


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
    ``more_body`` has gone out, each further ``http.response.body`` reaches the client only
    while the token passes ``recheck``.

    Once it fails, the response is ended: with a last empty chunk, so that the client sees
    the stream end (an SSE client then reconnects, with its token, and meets the RFC 6750
    401); without it when the start stated a ``Content-Length``, which the server will not
    let a shorter body end cleanly (it closes the connection once the app returns, and the
    client sees the download cut short, not a complete shorter file). The app's pending
    (or next) receive gets ``http.disconnect``, and its later sends are dropped, not raised:
    as the server does for a client that went away (ASGI HTTP spec 2.3).
    """

    __slots__ = ("_start", "_streaming")

    def __init__(
        self,
        guard: BearerGuard | TrustedIssuers,
        token: AccessToken,
        request: RequestInfo,
        receive: Receive,
        send: Send,
    ) -> None:
        super().__init__(guard, token, request, receive, send)
        self._start: Message | None = None
        self._streaming = False

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
            return
        kind = message["type"]
        if kind == "http.response.body":
            if self._streaming and not await self._valid():
                return
            if message.get("more_body", False):
                self._streaming = True
        elif kind == "http.response.start":
            self._start = message  # read only if the stream is ended
        await self._send(message)

    async def _end(self, error: AuthError) -> None:
        if not _sized(self._start):
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
