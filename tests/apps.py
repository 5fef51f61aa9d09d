"""A small Starlette app protected by bearerguard, shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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


def build_app(
    guard: BearerGuard, public_paths: Iterable[str] = ("/health", "/static/*", "/open")
) -> Starlette:
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


def build_flask_app(
    guard: BearerGuard, public_paths: Iterable[str] = ("/health", "/static/*", "/open")
) -> Any:
    """The same routes as ``build_app``, in Flask behind the WSGI middleware."""
    import flask

    from bearerguard.flask import protect

    app = flask.Flask("bearerguard-tests", static_folder=None)

    @app.get("/me")
    def flask_me() -> Any:
        token = get_access_token(flask.request)
        return {
            "sub": None if token is None else token.subject,
            "user": None if token is None else (token.subject or token.client_id),
            "auth_scopes": [] if token is None else sorted(token.scopes),
        }

    @app.get("/items")
    @requires_scopes("items:read")
    def flask_read_items() -> Any:
        return {"items": []}

    @app.post("/items")
    @requires_scopes("items:read", "items:write")
    def flask_write_items() -> Any:
        return {"written": True}

    @app.delete("/items")
    @requires_any_scope("admin", "items:delete")
    async def flask_delete_items() -> Any:
        return {"deleted": True}

    reports = flask.Blueprint("reports", "reports")

    @reports.get("/reports")
    @requires_scopes("reports:read")
    def flask_reports() -> Any:
        return {"reports": []}

    @reports.post("/reports")
    @requires_scopes("reports:write")
    def flask_create_report() -> Any:
        return {"created": True}

    app.register_blueprint(reports)

    def flask_health(name: str | None = None) -> Any:
        token = get_access_token()
        return {"ok": True, "sub": None if token is None else token.subject}

    app.add_url_rule("/health", "health", flask_health)
    app.add_url_rule("/healthcheck-admin", "healthcheck_admin", flask_health)
    app.add_url_rule("/static/<name>", "static_files", flask_health)

    @app.get("/open")
    @requires_scopes("items:read")
    def flask_public_but_scoped() -> Any:
        return {"never": "without a token"}

    protect(app, guard=guard, public_paths=public_paths)
    return app
