"""The authentication outcome of the current request, for decorators and accessors."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

from bearerguard.audit import RequestInfo
from bearerguard.token import AccessToken

if TYPE_CHECKING:
    from bearerguard.guard import BearerGuard

__all__ = ["SCOPE_KEY", "RequestAuth", "current_auth"]

SCOPE_KEY = "bearerguard"
"""The ASGI scope key (and WSGI environ key) under which ``RequestAuth`` is stored."""


class RequestAuth:
    """What the middleware decided for this request (a plain slotted class: built per request)."""

    __slots__ = ("guard", "request", "started", "token", "websocket")

    def __init__(
        self,
        guard: BearerGuard,
        token: AccessToken | None,
        request: RequestInfo,
        started: float,
        websocket: bool = False,
    ) -> None:
        self.guard = guard
        self.token = token
        self.request = request
        self.started = started
        self.websocket = websocket


current_auth: ContextVar[RequestAuth | None] = ContextVar("bearerguard_auth", default=None)
