"""A small Starlette app protected by bearerguard, shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bearerguard import BearerGuard, get_access_token, requires_any_scope, requires_scopes
from bearerguard.asgi import BearerGuardMiddleware


async def me(request: Request) -> JSONResponse:
    token = get_access_token(request)
    return JSONResponse(
        {
            "sub": None if token is None else token.subject,
            "user": request.user.display_name if request.user.is_authenticated else None,
            "auth_scopes": sorted(request.auth.scopes),
        }
    )


@requires_scopes("items:read")
async def read_items(request: Request) -> JSONResponse:
    return JSONResponse({"items": []})


@requires_scopes("items:read", "items:write")
def write_items(request: Request) -> JSONResponse:
    return JSONResponse({"written": True})


@requires_any_scope("admin", "items:delete")
async def delete_items(request: Request) -> JSONResponse:
    return JSONResponse({"deleted": True})


@requires("items:read")
async def starlette_requires(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


class Reports(HTTPEndpoint):
    @requires_scopes("reports:read")
    async def get(self, request: Request) -> JSONResponse:
        return JSONResponse({"reports": []})

    @requires_scopes("reports:write")
    def post(self, request: Request) -> JSONResponse:
        return JSONResponse({"created": True})


async def health(request: Request) -> JSONResponse:
    token = get_access_token(request)
    return JSONResponse({"ok": True, "sub": None if token is None else token.subject})


@requires_scopes("items:read")
async def public_but_scoped(request: Request) -> JSONResponse:
    return JSONResponse({"never": "without a token"})


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    token = get_access_token(websocket)
    await websocket.send_json({"sub": None if token is None else token.subject})
    await websocket.close()


@requires_scopes("chat")
async def scoped_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"chat": True})
    await websocket.close()


def build_app(guard: BearerGuard, public_paths: Iterable[str] = ("/health", "/static/*", "/open")) -> Starlette:
    """The test app: every kind of endpoint, behind the middleware."""
    return Starlette(
        routes=[
            Route("/me", me),
            Route("/items", read_items),
            Route("/items", write_items, methods=["POST"]),
            Route("/items", delete_items, methods=["DELETE"]),
            Route("/starlette", starlette_requires),
            Route("/reports", Reports),
            Route("/health", health),
            Route("/healthcheck-admin", health),
            Route("/static/{name}", health),
            Route("/open", public_but_scoped),
            WebSocketRoute("/ws", socket),
            WebSocketRoute("/ws/chat", scoped_socket),
        ],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard, public_paths=public_paths)],
    )
