"""Per-route scope requirements, and access to the verified token.

``requires_scopes`` and ``requires_any_scope`` wrap Starlette endpoints (functions and
``HTTPEndpoint`` methods) and FastAPI path operations, sync or async, without the handler
needing a ``request`` parameter: they read the outcome the middleware recorded for the
current request.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar, cast

from starlette.exceptions import WebSocketException

from bearerguard._context import SCOPE_KEY, RequestAuth, current_auth
from bearerguard._core.refusal import render_refusal
from bearerguard._core.scopes import grants, validate_scope_names
from bearerguard.errors import (
    AuthError,
    ConfigurationError,
    InsufficientScopeError,
    MissingTokenError,
)
from bearerguard.token import AccessToken

__all__ = ["get_access_token", "requires_any_scope", "requires_scopes"]

F = TypeVar("F", bound=Callable[..., Any])
_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1


def _request_auth(connection: object | None) -> RequestAuth | None:
    if connection is None:
        return current_auth.get()
    # Starlette connections keep it in .scope, Werkzeug (Flask) requests in .environ, and
    # Django requests in .META (the WSGI environ).
    for attribute in ("scope", "environ", "META"):
        store = getattr(connection, attribute, None)
        if isinstance(store, dict):
            auth = store.get(SCOPE_KEY)
            return auth if isinstance(auth, RequestAuth) else None
    return None


def get_access_token(connection: object | None = None) -> AccessToken | None:
    """Return the verified token of a request or websocket.

    Args:
        connection: the request: a Starlette ``Request`` or ``WebSocket``, a Flask
            (Werkzeug) request or a Django ``HttpRequest``; when omitted, the request being
            served in the current context.

    Returns:
        The ``AccessToken``, or ``None`` on a public path reached without credentials (or
        outside a request a bearerguard middleware has seen).
    """
    auth = _request_auth(connection)
    return None if auth is None else auth.token


def _denial(required: tuple[str, ...], any_of: bool) -> Any:
    """``None`` when the current request may proceed; else the refusal to answer with."""
    auth = current_auth.get()
    if auth is None:
        raise ConfigurationError(
            "requires_scopes found no BearerGuardMiddleware in front of this route"
        )
    token = auth.token
    if token is not None and grants(token.scopes, required, any_of=any_of):
        return None
    error: AuthError
    if token is None:
        # A public path reached without credentials: a scoped route still needs a token.
        error = MissingTokenError("scoped route on a public path reached without a token")
    else:
        error = InsufficientScopeError(required, any_of=any_of)
    auth.guard.audit.refused(error, auth, perf_counter() - auth.started, token=token)
    if auth.websocket:
        raise WebSocketException(code=_POLICY_VIOLATION, reason=error.reason)
    return auth.respond(render_refusal(error, auth.guard.realm))


def _scope_decorator(required: tuple[str, ...], any_of: bool) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                denial = _denial(required, any_of)
                if denial is not None:
                    return denial
                return await func(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            denial = _denial(required, any_of)
            if denial is not None:
                return denial
            return func(*args, **kwargs)

        return cast(F, sync_wrapper)

    return decorate


def requires_scopes(*scopes: str) -> Callable[[F], F]:
    """Require every one of ``scopes`` (exact, case-sensitive matching).

    A request whose token lacks one is answered 403 ``insufficient_scope`` with the required
    scopes in the challenge (RFC 6750 §3.1); a request without a token (on a public path) is
    answered 401. Websocket handlers are closed with code 1008 instead.

    Raises:
        ConfigurationError: no scopes, or a scope name with white space (at decoration), or
            no ``BearerGuardMiddleware`` in front of the route (at request time).
    """
    return _scope_decorator(validate_scope_names(scopes), any_of=False)


def requires_any_scope(*scopes: str) -> Callable[[F], F]:
    """Require at least one of ``scopes``; otherwise as ``requires_scopes``."""
    return _scope_decorator(validate_scope_names(scopes), any_of=True)
