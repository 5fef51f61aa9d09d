"""A small Starlette app protected by bearerguard, shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bearerguard import (
    AccessToken,
    BearerGuard,
    get_access_token,
    requires_any_scope,
    requires_scopes,
)
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


def build_django_urls() -> Any:
    """The same routes as ``build_app``, as a Django URLconf (``ROOT_URLCONF`` takes it)."""
    from django.http import HttpRequest, JsonResponse
    from django.urls import path
    from django.utils.decorators import method_decorator
    from django.views import View

    def django_me(request: HttpRequest) -> JsonResponse:
        token = get_access_token(request)
        return JsonResponse({"sub": None if token is None else token.subject})

    class Items(View):
        @method_decorator(requires_scopes("items:read"))
        def get(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"items": []})

        @method_decorator(requires_scopes("items:read", "items:write"))
        def post(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"written": True})

        @method_decorator(requires_any_scope("admin", "items:delete"))
        def delete(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"deleted": True})

    class DjangoReports(View):
        @method_decorator(requires_scopes("reports:read"))
        def get(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"reports": []})

        @method_decorator(requires_scopes("reports:write"))
        def post(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"created": True})

    def django_health(request: HttpRequest, name: str | None = None) -> JsonResponse:
        token = get_access_token(request)
        return JsonResponse({"ok": True, "sub": None if token is None else token.subject})

    @requires_scopes("items:read")
    def django_public_but_scoped(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"never": "without a token"})

    class URLconf:  # what ROOT_URLCONF names: an object with urlpatterns
        urlpatterns: ClassVar[list[Any]] = [
            path("me", django_me),
            path("items", Items.as_view()),
            path("reports", DjangoReports.as_view()),
            path("health", django_health),
            path("healthcheck-admin", django_health),
            path("static/<str:name>", django_health),
            path("open", django_public_but_scoped),
        ]

    return URLconf


def build_fastapi_app(guard: BearerGuard) -> Any:
    """The same routes as ``build_app``, in FastAPI with ``BearerAuth`` and no middleware.

    Without the middleware there are no public paths: a route is public when it declares no
    ``BearerAuth`` dependency. GET routes take HEAD too, as Starlette's and Flask's do.
    """
    from fastapi import FastAPI

    from bearerguard.fastapi import BearerAuth

    bearer = BearerAuth(guard)
    app = bearer.install(FastAPI())
    get = ["GET", "HEAD"]
    anyone = bearer.requires()
    item_reader = bearer.requires("items:read")
    item_writer = bearer.requires("items:read", "items:write")
    report_reader = bearer.requires("reports:read")
    report_writer = bearer.requires("reports:write")

    @app.api_route("/me", methods=get)
    async def fastapi_me(token: AccessToken = anyone) -> dict[str, Any]:
        return {"sub": token.subject}

    @app.api_route("/items", methods=get)
    async def fastapi_read_items(
        token: AccessToken = item_reader,
    ) -> dict[str, Any]:
        return {"items": []}

    @app.post("/items")
    def fastapi_write_items(
        token: AccessToken = item_writer,
    ) -> dict[str, Any]:
        return {"written": True}

    @app.delete("/items", dependencies=[bearer.requires_any("admin", "items:delete")])
    async def fastapi_delete_items() -> dict[str, Any]:
        return {"deleted": True}

    @app.api_route("/reports", methods=get)
    async def fastapi_reports(token: AccessToken = report_reader) -> Any:
        return {"reports": []}

    @app.post("/reports")
    async def fastapi_create_report(token: AccessToken = report_writer) -> Any:
        return {"created": True}

    @app.api_route("/health", methods=get)
    @app.api_route("/static/{name}", methods=get)
    async def fastapi_health() -> dict[str, Any]:
        token = get_access_token()
        return {"ok": True, "sub": None if token is None else token.subject}

    @app.api_route("/healthcheck-admin", methods=get)
    async def fastapi_not_public(token: AccessToken = anyone) -> dict[str, Any]:
        return {"ok": True}

    @app.api_route("/open", methods=get)
    async def fastapi_public_but_scoped(
        token: AccessToken = item_reader,
    ) -> dict[str, Any]:
        return {"never": "without a token"}

    return app
