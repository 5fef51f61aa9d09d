"""The authentication outcome of the current request, for decorators and accessors."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bearerguard.audit import RequestInfo
from bearerguard.token import AccessToken

if TYPE_CHECKING:
    from bearerguard.guard import BearerGuard

__all__ = ["SCOPE_KEY", "RequestAuth", "current_auth"]

SCOPE_KEY = "bearerguard"
"""The ASGI scope key (and WSGI environ key) under which ``RequestAuth`` is stored."""


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """What the middleware decided for this request."""

    guard: BearerGuard
    token: AccessToken | None
    request: RequestInfo
    started: float
    websocket: bool = False


current_auth: ContextVar[RequestAuth | None] = ContextVar("bearerguard_auth", default=None)
