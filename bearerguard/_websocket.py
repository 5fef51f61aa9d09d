"""An accepted websocket's token, checked again at each message (``websocket_recheck``).

A websocket is authenticated at its handshake, then may stay open for hours: past its
token's ``exp``, and after the token is revoked. Each message is a use of the token, so
each one in either direction is let through only while ``recheck`` passes; the first that
fails closes the connection, audited once: with 1008 (RFC 6455 §7.4.1, policy violation)
for the token, with 1013 (Try Again Later, IANA's WebSocket close code registry, RFC 6455
§11.7) when the revocation store could not answer, as a request's 503 says the token may be
good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bearerguard._recheck import Rechecked
from bearerguard.errors import (
    AuthError,
    ExpiredTokenError,
    RevocationStoreError,
    RevokedTokenError,
    ServiceUnavailableError,
    TokenTooOldError,
)

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Send

    from bearerguard.audit import RequestInfo
    from bearerguard.guard import BearerGuard
    from bearerguard.issuers import TrustedIssuers
    from bearerguard.token import AccessToken

__all__ = [
    "POLICY_VIOLATION",
    "TRY_AGAIN_LATER",
    "RecheckedWebSocket",
    "close_code",
    "close_reason",
]

POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
TRY_AGAIN_LATER = 1013  # IANA WebSocket Close Code Number Registry (RFC 6455 §11.7)


def close_code(error: AuthError) -> int:
    """The close frame's code: 1013 when a dependency could not answer (the token may be
    good, and the client should come back), else 1008."""
    return TRY_AGAIN_LATER if isinstance(error, ServiceUnavailableError) else POLICY_VIOLATION


def close_reason(error: AuthError) -> str:
    """The close frame's reason: fixed text, never the error's detail (RFC 6455 §5.5.1
    allows 123 bytes; the client needs only the kind of refusal)."""
    if isinstance(error, ExpiredTokenError | TokenTooOldError):
        return "token expired"
    if isinstance(error, RevokedTokenError):
        return "token revoked"
    if isinstance(error, RevocationStoreError):
        return "revocation unavailable"
    return "token refused"


class RecheckedWebSocket(Rechecked):
    """One accepted connection's ``receive`` and ``send``, wrapped: an inbound
    ``websocket.receive`` reaches the app, and an outbound ``websocket.send`` the client,
    only while the token passes ``recheck``.

    Once it fails: the close is sent, the app's pending (or next) receive gets
    ``websocket.disconnect`` with the close's code, and its later sends are dropped, not
    raised (a server fails a send after close). Other messages pass as they are.
    """

    __slots__ = ("_code",)

    def __init__(
        self,
        guard: BearerGuard | TrustedIssuers,
        token: AccessToken,
        request: RequestInfo,
        receive: Receive,
        send: Send,
    ) -> None:
        super().__init__(guard, token, request, receive, send)
        self._code = POLICY_VIOLATION

    def _disconnected(self) -> Message:
        # A new one each time: the app may keep or change what it is handed.
        return {"type": "websocket.disconnect", "code": self._code}

    async def receive(self) -> Message:
        """The next message for the app; a disconnect once the token failed."""
        if self._ended:
            return self._disconnected()
        message = await self._receive()
        # Closed meanwhile by a send that failed the check: whatever came is not the app's.
        if self._ended or (message["type"] == "websocket.receive" and not await self._valid()):
            return self._disconnected()
        return message

    async def send(self, message: Message) -> None:
        """Pass the app's message on; dropped once the token failed."""
        if self._ended or (message["type"] == "websocket.send" and not await self._valid()):
            return
        await self._send(message)

    async def _end(self, error: AuthError) -> None:
        self._code = code = close_code(error)
        await self._send({"type": "websocket.close", "code": code, "reason": close_reason(error)})
