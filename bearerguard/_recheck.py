"""What a websocket and a streamed response share once accepted: their token checked again
at each later use (``recheck``), the first failure ending the exchange, audited once.

``RecheckedWebSocket`` (``_websocket``) ends it with a close frame, ``RecheckedStream``
(``_stream``) with the response's last chunk.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from time import perf_counter
from typing import TYPE_CHECKING

from bearerguard.errors import AuthError

if TYPE_CHECKING:
    from starlette.types import Receive, Send

    from bearerguard.audit import RequestInfo
    from bearerguard.guard import BearerGuard
    from bearerguard.issuers import TrustedIssuers
    from bearerguard.token import AccessToken

__all__ = ["Rechecked"]


class Rechecked(ABC):
    """One accepted request's ``receive`` and ``send``, and its token to check again."""

    __slots__ = ("_ended", "_guard", "_receive", "_request", "_send", "_token")

    def __init__(
        self,
        guard: BearerGuard | TrustedIssuers,
        token: AccessToken,
        request: RequestInfo,
        receive: Receive,
        send: Send,
    ) -> None:
        self._guard = guard
        self._token = token
        self._request = request
        self._receive = receive
        self._send = send
        self._ended = False

    async def _valid(self) -> bool:
        """Whether the token still passes; the first failure is audited and ends the
        exchange (``_end``)."""
        started = perf_counter()
        try:
            await self._guard.recheck(self._token)
        except AuthError as error:
            # A receive and a send may both be checking: only the first to fail ends it.
            if self._ended:
                return False
            self._ended = True
            self._guard.audit.refused(error, self._request, perf_counter() - started)
            await self._end(error)
            return False
        return not self._ended

    @abstractmethod
    async def _end(self, error: AuthError) -> None:
        """Tell the client the exchange is over, ``error`` having ended it."""
