"""``BearerGuardMiddleware``: the guard as pure ASGI middleware (Starlette, FastAPI, any ASGI app).

Every HTTP request and websocket handshake is authenticated before the app sees it, except
on public paths reached without credentials. The verified token is put where Starlette looks
(``scope["auth"]`` and ``scope["user"]``, so ``request.auth``, ``request.user`` and
``starlette.authentication.requires`` work) and where ``get_access_token`` and
``requires_scopes`` find it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from time import perf_counter

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bearerguard._context import SCOPE_KEY, RequestAuth, current_auth
from bearerguard._core.extract import request_credentials
from bearerguard._core.paths import PublicPaths
from bearerguard._core.refusal import Refusal, render_refusal
from bearerguard.audit import RequestInfo
from bearerguard.errors import (
    AuthError,
    ConfigurationError,
    ServiceUnavailableError,
)
from bearerguard.guard import BearerGuard
from bearerguard.token import AccessToken

__all__ = ["BearerGuardMiddleware", "PublicPaths", "TokenUser"]

_log = logging.getLogger("bearerguard")
_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1


class TokenUser(BaseUser):
    """The Starlette user of a request authenticated by a token."""

    __slots__ = ("access_token",)

    def __init__(self, access_token: AccessToken) -> None:
        self.access_token = access_token

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.access_token.subject or self.access_token.client_id or ""

    @property
    def identity(self) -> str:
        return self.access_token.subject or ""


def _respond(refusal: Refusal) -> Response:
    return Response(refusal.body, status_code=refusal.status, headers=dict(refusal.headers))


def _describe(scope: Scope, request_id: bytes | None) -> tuple[str, str, str | None, str | None]:
    """Method, path, client address and request id, as the audit log records them."""
    client = scope.get("client")
    return (
        scope.get("method", "WEBSOCKET"),
        scope["path"],
        client[0] if client else None,
        request_id.decode("latin-1") if request_id else None,
    )


class BearerGuardMiddleware:
    """Authenticate every HTTP request and websocket handshake with a ``BearerGuard``.

    Args:
        app: the ASGI application to protect.
        guard: the configured guard.
        public_paths: paths served without credentials (exact, or ``"/prefix/*"``). A token
            sent to a public path is still verified, and refused if invalid.
        warm_up: fetch the key set during lifespan start-up, so the first request does not
            wait for it. A failure is logged; requests then fail closed until keys arrive.

    Refusals follow RFC 6750 §3: 401 with a bare challenge when no credentials were sent,
    400 ``invalid_request``, 401 ``invalid_token``, and 503 with ``Retry-After`` when keys or
    the revocation store cannot answer. Websockets are refused before ``accept``: with the
    same HTTP response where the server supports ``websocket.http.response``, else a close
    with code 1008.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: BearerGuard,
        public_paths: Iterable[str] = (),
        warm_up: bool = False,
    ) -> None:
        if not isinstance(guard, BearerGuard):
            raise ConfigurationError("guard must be a BearerGuard")
        self.app = app
        self.guard = guard
        self.public_paths = PublicPaths(public_paths)
        self.warm_up = warm_up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":  # noqa: PLR1714 - the hot path: no tuple
            if kind == "lifespan" and self.warm_up:
                receive = self._warming(receive)
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        guard = self.guard
        authorization: list[bytes] = []
        request_id: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization.append(value)
            elif name == b"x-request-id":
                request_id = value
        try:
            token = request_credentials(
                authorization,
                scope.get("query_string", b""),
                scope["path"],
                self.public_paths,
                max_bytes=guard.max_token_bytes,
            )
            access = None if token is None else await guard.authenticate(token)
        except AuthError as error:
            refused = RequestInfo(*_describe(scope, request_id))
            guard.audit.refused(error, refused, perf_counter() - started)
            await self._refuse(scope, receive, send, error)
            return
        request = _describe(scope, request_id)
        auth = RequestAuth(guard, access, started, request, _respond, websocket=kind == "websocket")
        if access is None:
            scope.setdefault("auth", AuthCredentials())
            scope.setdefault("user", UnauthenticatedUser())
        else:
            guard.audit.accepted(access, auth, perf_counter() - started)
            scope["auth"] = AuthCredentials(list(access.scopes))
            scope["user"] = TokenUser(access)
        scope[SCOPE_KEY] = auth
        reset = current_auth.set(auth)
        try:
            await self.app(scope, receive, send)
        finally:
            current_auth.reset(reset)

    def _warming(self, receive: Receive) -> Receive:
        async def receive_and_warm_up() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.guard.warm_up()
                except ServiceUnavailableError as exc:
                    _log.warning("bearerguard: warm-up failed, requests fail closed: %s", exc)
            return message

        return receive_and_warm_up

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: AuthError) -> None:
        refusal = render_refusal(error, self.guard.realm)
        headers = [(name.encode(), value.encode("latin-1")) for name, value in refusal.headers]
        if scope["type"] == "http":
            await send(
                {"type": "http.response.start", "status": refusal.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": refusal.body})
            return
        message = await receive()  # websocket.connect: refuse before accepting
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": refusal.status,
                    "headers": headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": refusal.body})
        else:
            await send(
                {"type": "websocket.close", "code": _POLICY_VIOLATION, "reason": error.reason}
            )
