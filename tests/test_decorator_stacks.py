"""Stacked scope decorators name every scope the endpoint needs, on every framework.

RFC 6750 §3.1: the ``scope`` of a 403 ``insufficient_scope`` is the scope necessary to
access the resource. A challenge naming only the failing decorator's scopes sends a client
for a token that the next decorator refuses in turn.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any

import flask
import httpx
import pytest
import structlog
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bearerguard import BearerGuard, requires_any_scope, requires_scopes
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.flask import protect
from bearerguard.testing import DevIssuer
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.test_wsgi_examples import load

_DESCRIPTION = "The access token does not grant the scope this request needs."


def challenge(scope: str) -> str:
    return (
        'Bearer realm="https://api.example", error="insufficient_scope", '
        f'error_description="{_DESCRIPTION}", scope="{scope}"'
    )


# Every stack is written on each framework below:
#   /two    requires_scopes("items:read") over requires_scopes("items:write")
#   /three  requires_scopes("items:read") over requires_any_scope("items:write", "admin")
#           over requires_scopes("audit")
# (path, granted, the challenge's scope, the failing check's scopes and match); None: 200.
ALL_OF_THREE = "items:read items:write admin audit"
CASES: list[tuple[str, list[str], str | None, list[str], str]] = [
    ("/two", ["items:read"], "items:read items:write", ["items:write"], "all"),
    ("/two", ["items:write"], "items:read items:write", ["items:read"], "all"),
    ("/two", ["other"], "items:read items:write", ["items:read"], "all"),
    ("/two", ["items:read", "items:write"], None, [], ""),
    # of the any-of group: every alternative while the token holds none, else the one held
    ("/three", ["items:read"], ALL_OF_THREE, ["items:write", "admin"], "any"),
    ("/three", ["items:read", "admin"], "items:read admin audit", ["audit"], "all"),
    ("/three", ["admin", "audit"], "items:read admin audit", ["items:read"], "all"),
    ("/three", ["items:read", "items:write", "audit"], None, [], ""),
]


# -- Starlette: function endpoints and HTTPEndpoint methods, async and sync --------------


@requires_scopes("items:read")
@requires_scopes("items:write")
async def two_async(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@requires_scopes("items:read")
@requires_any_scope("items:write", "admin")
@requires_scopes("audit")
async def three_async(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@requires_scopes("items:read")
@requires_scopes("items:write")
def two_sync(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@requires_scopes("items:read")
@requires_any_scope("items:write", "admin")
@requires_scopes("audit")
def three_sync(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


class Two(HTTPEndpoint):
    @requires_scopes("items:read")
    @requires_scopes("items:write")
    async def get(self, request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})


class Three(HTTPEndpoint):
    @requires_scopes("items:read")
    @requires_any_scope("items:write", "admin")
    @requires_scopes("audit")
    def get(self, request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})


def starlette_app(guard: BearerGuard) -> Starlette:
    routes = [
        Route("/async/two", two_async),
        Route("/async/three", three_async),
        Route("/sync/two", two_sync),
        Route("/sync/three", three_sync),
        Route("/endpoint/two", Two),
        Route("/endpoint/three", Three),
        Route("/open/three", three_async),
    ]
    middleware = [Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/open/*"])]
    return Starlette(routes=routes, middleware=middleware)


# -- Flask views, Django views ------------------------------------------------------------


def flask_app(guard: BearerGuard) -> flask.Flask:
    app = flask.Flask("stacked-scopes", static_folder=None)

    @app.get("/flask/two")
    @requires_scopes("items:read")
    @requires_scopes("items:write")
    def flask_two() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/flask/three")
    @app.get("/open/three")
    @requires_scopes("items:read")
    @requires_any_scope("items:write", "admin")
    @requires_scopes("audit")
    async def flask_three() -> dict[str, bool]:
        return {"ok": True}

    protect(app, guard=guard, public_paths=["/open/*"])
    return app


def django_urls() -> ModuleType:
    load("django_app")  # Django is set up by then
    from django.http import HttpRequest, JsonResponse
    from django.urls import path
    from django.utils.decorators import method_decorator
    from django.views import View

    @requires_scopes("items:read")
    @requires_scopes("items:write")
    def django_two(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"ok": True})

    @requires_scopes("items:read")
    @requires_any_scope("items:write", "admin")
    @requires_scopes("audit")
    def django_three(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"ok": True})

    # Django's list form decorates the bound dispatch on every request, outermost first.
    @method_decorator(
        [requires_scopes("items:read"), requires_scopes("items:write")], name="dispatch"
    )
    class DispatchTwo(View):
        def get(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"ok": True})

    @method_decorator(
        [
            requires_scopes("items:read"),
            requires_any_scope("items:write", "admin"),
            requires_scopes("audit"),
        ],
        name="dispatch",
    )
    class DispatchThree(View):
        async def get(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"ok": True})

    # One method_decorator each, on dispatch or on a method: stacked all the same.
    @method_decorator(requires_scopes("items:read"), name="dispatch")
    @method_decorator(requires_scopes("items:write"), name="dispatch")
    class SeparateTwo(View):
        async def get(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"ok": True})

    class SeparateThree(View):
        @method_decorator(requires_scopes("items:read"))
        @method_decorator(requires_any_scope("items:write", "admin"))
        @method_decorator(requires_scopes("audit"))
        def get(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"ok": True})

    urls = ModuleType("stacked_scope_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("django/two", django_two),
        path("django/three", django_three),
        path("dispatch/two", DispatchTwo.as_view()),
        path("dispatch/three", DispatchThree.as_view()),
        path("separate/two", SeparateTwo.as_view()),
        path("separate/three", SeparateThree.as_view()),
    ]
    return urls


@pytest.fixture(scope="module")
def django_app() -> Iterator[Any]:
    from django.core.wsgi import get_wsgi_application
    from django.test import override_settings

    urls = django_urls()
    sys.modules[urls.__name__] = urls
    try:
        # The views behind BearerGuardWSGIMiddleware alone: the example's settings (which
        # configure Django when this file runs first) list the Django middleware.
        with override_settings(ROOT_URLCONF=urls.__name__, MIDDLEWARE=[]):
            yield get_wsgi_application()
    finally:
        del sys.modules[urls.__name__]


# -- FastAPI, whose path operations named every scope already -----------------------------


def fastapi_app(guard: BearerGuard) -> FastAPI:
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])

    @app.get("/fastapi/two")
    @requires_scopes("items:read")
    @requires_scopes("items:write")
    async def fastapi_two() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/fastapi/three")
    @requires_scopes("items:read")
    @requires_any_scope("items:write", "admin")
    @requires_scopes("audit")
    def fastapi_three() -> dict[str, bool]:
        return {"ok": True}

    return app


VARIANTS = [
    "async",
    "sync",
    "endpoint",
    "flask",
    "django",
    "dispatch",
    "separate",
    "fastapi",
]


@pytest.fixture
def client(
    request: pytest.FixtureRequest, session_issuer: DevIssuer
) -> Iterator[httpx.Client | TestClient]:
    variant = request.param
    guard = session_issuer.guard()
    if variant in ("async", "sync", "endpoint", "fastapi"):
        asgi = fastapi_app(guard) if variant == "fastapi" else starlette_app(guard)
        with TestClient(asgi, base_url="http://testserver") as asgi_client:
            yield asgi_client
        return
    if variant == "flask":
        wsgi: Any = flask_app(guard)
    else:
        wsgi = BearerGuardWSGIMiddleware(request.getfixturevalue("django_app"), guard=guard)
    transport = httpx.WSGITransport(app=wsgi, raise_app_exceptions=False)
    with httpx.Client(transport=transport, base_url="http://testserver") as wsgi_client:
        yield wsgi_client


def bearer(issuer: DevIssuer, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(scopes=scopes, sub='ines')}"}


@pytest.mark.parametrize("client", VARIANTS, indirect=True)
@pytest.mark.parametrize(
    ("path", "granted", "scope", "required", "match"),
    CASES,
    ids=[f"{path[1:]}:{'+'.join(granted)}" for path, granted, *_ in CASES],
)
def test_a_refusal_names_every_scope_of_the_stack(
    client: httpx.Client | TestClient,
    session_issuer: DevIssuer,
    request: pytest.FixtureRequest,
    path: str,
    granted: list[str],
    scope: str | None,
    required: list[str],
    match: str,
) -> None:
    variant = request.node.callspec.params["client"]
    with structlog.testing.capture_logs() as events:
        response = client.get(f"/{variant}{path}", headers=bearer(session_issuer, *granted))
    if scope is None:
        assert response.status_code == 200, response.text
        assert response.json() == {"ok": True}
        assert [event["event"] for event in events] == ["token.accepted"]
        return
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == challenge(scope)
    assert response.json() == {"error": "insufficient_scope", "error_description": _DESCRIPTION}
    # one decision, one event; required_scopes stays the failing decorator's own
    assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]
    denied = events[1]
    assert denied["required_scopes"] == required
    assert denied["scope_match"] == match
    assert denied["scopes"] == sorted(granted)
    assert denied["status"] == 403


@pytest.mark.parametrize("framework", ["starlette", "flask"])
def test_a_public_path_without_a_token_hints_every_scope_of_the_stack(
    session_issuer: DevIssuer, framework: str
) -> None:
    guard = session_issuer.guard()
    if framework == "flask":
        transport = httpx.WSGITransport(app=flask_app(guard))
        with (
            httpx.Client(transport=transport, base_url="http://testserver") as wsgi_client,
            structlog.testing.capture_logs() as events,
        ):
            response = wsgi_client.get("/open/three")
    else:
        with (
            TestClient(starlette_app(guard)) as asgi_client,
            structlog.testing.capture_logs() as events,
        ):
            response = asgi_client.get("/open/three")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer realm="https://api.example", scope="{ALL_OF_THREE}"'
    )
    assert [(event["event"], event["reason"]) for event in events] == [
        ("token.rejected", "missing_token")
    ]


def test_a_decorator_between_two_scope_decorators_runs_after_both_checks(
    session_issuer: DevIssuer,
) -> None:
    # The outermost scope decorator checks the whole stack it finds through __wrapped__, so
    # a decorator written between two (here one that counts calls) runs for none but an
    # allowed token, and the 403 still names both decorators' scopes.
    calls: list[str] = []

    def counted(func: Callable[..., Awaitable[JSONResponse]]) -> Callable[..., Any]:
        @functools.wraps(func)
        async def wrapper(request: Request) -> JSONResponse:
            calls.append(request.url.path)
            return await func(request)

        return wrapper

    @requires_scopes("items:read")
    @counted
    @requires_scopes("items:write")
    async def between(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/between", between)],
        middleware=[Middleware(BearerGuardMiddleware, guard=session_issuer.guard())],
    )
    with TestClient(app) as asgi_client:
        denied = asgi_client.get("/between", headers=bearer(session_issuer, "items:read"))
        assert calls == []
        allowed = asgi_client.get(
            "/between", headers=bearer(session_issuer, "items:read", "items:write")
        )
    assert denied.headers["www-authenticate"] == challenge("items:read items:write")
    assert allowed.json() == {"ok": True}
    assert calls == ["/between"]


def test_a_scope_two_decorators_of_the_stack_require_is_named_once(
    session_issuer: DevIssuer,
) -> None:
    # A scope named by two decorators of the stack (all-of or any-of) appears once in the
    # challenge's space-delimited list, as FastAPI routes name it.
    @requires_scopes("items:read")
    @requires_scopes("items:read", "items:write")
    async def overlapping(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @requires_any_scope("items:write", "admin")
    @requires_any_scope("admin", "audit")
    async def alternatives(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/overlapping", overlapping), Route("/alternatives", alternatives)],
        middleware=[Middleware(BearerGuardMiddleware, guard=session_issuer.guard())],
    )
    with TestClient(app) as asgi_client:
        read = asgi_client.get("/overlapping", headers=bearer(session_issuer, "items:read"))
        other = asgi_client.get("/alternatives", headers=bearer(session_issuer, "other"))
    assert read.headers["www-authenticate"] == challenge("items:read items:write")
    assert other.headers["www-authenticate"] == challenge("items:write admin audit")
