"""The authentication outcome of the current request, for decorators and accessors."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from bearerguard._core.refusal import Refusal
from bearerguard.audit import RequestInfo
from bearerguard.token import AccessToken

if TYPE_CHECKING:
    from bearerguard.guard import BearerGuard

__all__ = ["SCOPE_KEY", "RequestAuth", "current_auth"]

SCOPE_KEY = "bearerguard"
"""The ASGI scope key (and WSGI environ key) under which ``RequestAuth`` is stored."""


class RequestAuth(RequestInfo):
    """What the middleware decided for this request, with what the audit log records of it.

    One plain slotted object per request: it is built on the hot path.
    """

    __slots__ = ("guard", "respond", "started", "token", "websocket")

    def __init__(
        self,
        guard: BearerGuard,
        token: AccessToken | None,
        started: float,
        request: tuple[str, str, str | None, str | None],
        respond: Callable[[Refusal], Any],
        *,
        websocket: bool = False,
    ) -> None:
        self.method, self.path, self.client, self.request_id = request
        self.guard = guard
        self.token = token
        self.started = started
        self.respond = respond
        """Turns a refusal into the response type of the framework serving the request."""
        self.websocket = websocket


current_auth: ContextVar[RequestAuth | None] = ContextVar("bearerguard_auth", default=None)
