"""The Flask and Django examples, driven over WSGI against a real issuer."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from bearerguard import get_access_token, requires_scopes
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.testing import DevIssuer
from bearerguard.wsgi import BearerGuardWSGIMiddleware

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def create_django_app(guard: Any) -> Any:
    """The Django example under its own settings: Django loads the middleware (and reads
    BEARERGUARD) when the application is built, and the process's settings stay as they
    were for the other tests."""
    from django.test import override_settings

    example = load("django_app")
    with override_settings(MIDDLEWARE=example.MIDDLEWARE, BEARERGUARD=example.BEARERGUARD):
        return example.create_app(guard)


@pytest.fixture(params=["flask_app", "django_app"])
def client(request: pytest.FixtureRequest, session_issuer: DevIssuer) -> httpx.Client:
    if request.param == "django_app":
        app = create_django_app(session_issuer.guard())
    else:
        app = load(request.param).create_app(session_issuer.guard())
    return httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://testserver")


def bearer(issuer: DevIssuer, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(scopes=scopes, sub='mia')}"}


def test_items(client: httpx.Client, session_issuer: DevIssuer) -> None:
    with client:
        assert client.get("/health").status_code == 200
        assert client.get("/items").status_code == 401
        ok = client.get("/items", headers=bearer(session_issuer, "items:read"))
        assert ok.status_code == 200
        denied = client.get("/items", headers=bearer(session_issuer, "other"))
        assert denied.status_code == 403
        assert 'scope="items:read"' in denied.headers["www-authenticate"]
        assert denied.json()["error"] == "insufficient_scope"
        assert client.get("/items", headers={"Authorization": "Bearer x.y.z"}).status_code == 401


def test_flask_routes(session_issuer: DevIssuer) -> None:
    app = load("flask_app").create_app(session_issuer.guard())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        me = client.get("/me", headers=bearer(session_issuer, "a"))
        assert me.json() == {"subject": "mia", "scopes": ["a"], "client": "dev-client"}
        created = client.post(
            "/items", json={"name": "cup"}, headers=bearer(session_issuer, "items:write")
        )
        assert created.status_code == 201
        assert client.delete("/items/1", headers=bearer(session_issuer, "admin")).status_code == 204
        assert (
            client.delete("/items/2", headers=bearer(session_issuer, "items:read")).status_code
            == 403
        )


def test_django_passes_the_token_through_request_meta(session_issuer: DevIssuer) -> None:
    app = create_django_app(session_issuer.guard())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        response = client.get("/items", headers=bearer(session_issuer, "items:read"))
    assert response.json() == {"items": ["pen", "ink"], "for": "mia"}


def test_django_behind_another_wsgi_wrapper_still_gets_a_django_refusal(
    session_issuer: DevIssuer,
) -> None:
    # WhiteNoise(get_wsgi_application()), Sentry's or OpenTelemetry's wrappers hide Django
    # from responder_for: the refusal must still be an HttpResponse, not a 500.
    django_app = load("django_app")

    class Wrapper:
        def __init__(self, application: Any) -> None:
            self.application = application

        def __call__(self, environ: Any, start_response: Any) -> Any:
            return self.application(environ, start_response)

    app = BearerGuardWSGIMiddleware(
        Wrapper(django_app.get_wsgi_application()), guard=session_issuer.guard()
    )
    transport = httpx.WSGITransport(app=app, raise_app_exceptions=False)
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        denied = client.get("/items", headers=bearer(session_issuer, "other"))
        assert denied.status_code == 403
        assert denied.json()["error"] == "insufficient_scope"
        assert 'scope="items:read"' in denied.headers["www-authenticate"]


def test_an_async_django_class_based_view_is_refused_403(session_issuer: DevIssuer) -> None:
    # as_view() of an async view is a plain function that Django marks as a coroutine
    # function; before Python 3.12 inspect does not see the mark. Wrapped as a sync view,
    # the refusal was returned to Django, which awaited it: a 500 instead of the 403.
    load("django_app")  # Django is set up by then
    from django.core.wsgi import get_wsgi_application
    from django.http import HttpRequest, JsonResponse
    from django.test import override_settings
    from django.urls import path
    from django.views import View

    class Items(View):
        async def get(self, request: HttpRequest) -> JsonResponse:
            token = get_access_token(request)
            return JsonResponse({"for": token.subject if token else None})

    urls = ModuleType("async_view_urls")
    urls.urlpatterns = [path("items", requires_scopes("items:read")(Items.as_view()))]  # type: ignore[attr-defined]
    sys.modules[urls.__name__] = urls
    app = BearerGuardWSGIMiddleware(get_wsgi_application(), guard=session_issuer.guard())
    transport = httpx.WSGITransport(app=app, raise_app_exceptions=False)
    try:
        with (
            override_settings(ROOT_URLCONF=urls.__name__),
            httpx.Client(transport=transport, base_url="http://testserver") as client,
        ):
            allowed = client.get("/items", headers=bearer(session_issuer, "items:read"))
            denied = client.get("/items", headers=bearer(session_issuer, "other"))
    finally:
        del sys.modules[urls.__name__]
    assert allowed.json() == {"for": "mia"}
    assert denied.status_code == 403
    assert denied.json()["error"] == "insufficient_scope"
    assert 'scope="items:read"' in denied.headers["www-authenticate"]


async def _under_scoped_over_asgi(issuer: DevIssuer) -> httpx.Response:
    from django.core.asgi import get_asgi_application  # Django is set up by then

    load("django_app")
    app = BearerGuardMiddleware(get_asgi_application(), guard=issuer.guard())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get("/items", headers=bearer(issuer, "other"))


def test_django_over_asgi_gets_a_django_refusal(session_issuer: DevIssuer) -> None:
    # Behind BearerGuardMiddleware the default responder builds a Starlette response, which
    # a Django view cannot return.
    denied = asyncio.run(_under_scoped_over_asgi(session_issuer))
    assert denied.status_code == 403
    assert denied.json()["error"] == "insufficient_scope"


def test_django_class_based_views_decorated_on_dispatch_are_refused_403(
    session_issuer: DevIssuer,
) -> None:
    # method_decorator(requires_scopes(...), name="dispatch"), Django's usual way to guard a
    # whole class-based view: the dispatch of an async view is sync but returns the
    # handler's coroutine, which Django awaits; the refusal returned in its place was
    # awaited too, and an under-scoped token got a 500 (its scope.denied event said 403).
    load("django_app")  # Django is set up by then
    from django.core.wsgi import get_wsgi_application
    from django.http import HttpRequest, JsonResponse
    from django.test import override_settings
    from django.urls import path
    from django.utils.decorators import method_decorator
    from django.views import View
    from django.views.decorators.csrf import csrf_exempt

    @method_decorator(requires_scopes("items:read"), name="dispatch")
    class AsyncItems(View):
        async def get(self, request: HttpRequest) -> JsonResponse:
            token = get_access_token(request)
            return JsonResponse({"for": token.subject if token else None})

    @method_decorator(requires_scopes("items:read"), name="dispatch")
    class Items(View):
        def get(self, request: HttpRequest) -> JsonResponse:
            token = get_access_token(request)
            return JsonResponse({"for": token.subject if token else None})

    # Django's list form, ours first: it wraps csrf_exempt's wrapper of the bound dispatch.
    @method_decorator([requires_scopes("items:read"), csrf_exempt], name="dispatch")
    class ListedItems(View):
        async def get(self, request: HttpRequest) -> JsonResponse:
            token = get_access_token(request)
            return JsonResponse({"for": token.subject if token else None})

    urls = ModuleType("dispatch_view_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("async", AsyncItems.as_view()),
        path("sync", Items.as_view()),
        path("listed", ListedItems.as_view()),
    ]
    sys.modules[urls.__name__] = urls
    app = BearerGuardWSGIMiddleware(get_wsgi_application(), guard=session_issuer.guard())
    transport = httpx.WSGITransport(app=app, raise_app_exceptions=False)
    try:
        with (
            override_settings(ROOT_URLCONF=urls.__name__),
            httpx.Client(transport=transport, base_url="http://testserver") as client,
        ):
            for view in ("/async", "/sync", "/listed"):
                allowed = client.get(view, headers=bearer(session_issuer, "items:read"))
                assert allowed.json() == {"for": "mia"}
                denied = client.get(view, headers=bearer(session_issuer, "other"))
                assert denied.status_code == 403, view
                assert denied.json()["error"] == "insufficient_scope"
                assert 'scope="items:read"' in denied.headers["www-authenticate"]
    finally:
        del sys.modules[urls.__name__]


def test_a_scope_decorator_on_a_view_class_is_refused(session_issuer: DevIssuer) -> None:
    # On the class, the decorator put a function in its place: Django's and Flask's
    # as_view() were gone (an AttributeError naming neither), a Starlette endpoint was
    # called with the request and failed (500) for every allowed token.
    load("django_app")  # Django is set up by then
    import flask
    from django.views import View
    from flask.views import MethodView
    from starlette.endpoints import HTTPEndpoint

    from bearerguard.errors import ConfigurationError
    from bearerguard.flask import protect

    class DjangoItems(View):
        pass

    class FlaskItems(MethodView):
        def get(self) -> dict[str, bool]:
            return {"ok": True}

    class StarletteItems(HTTPEndpoint):
        pass

    for view in (DjangoItems, FlaskItems, StarletteItems):
        with pytest.raises(ConfigurationError, match=f"on the class {view.__qualname__}"):
            requires_scopes("items:read")(view)

    class GuardedItems(FlaskItems):  # what the error suggests for Flask
        decorators = [requires_scopes("items:read")]  # noqa: RUF012 - Flask's attribute

    app = flask.Flask("class-views", static_folder=None)
    app.add_url_rule("/items", view_func=GuardedItems.as_view("items"))
    protect(app, guard=session_issuer.guard())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        assert client.get("/items", headers=bearer(session_issuer, "items:read")).json() == {
            "ok": True
        }
        assert client.get("/items", headers=bearer(session_issuer, "other")).status_code == 403


def test_a_method_decorated_view_skips_the_fastapi_test_per_request(
    session_issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Django's method_decorator applies requires_scopes to a bound method on every request.
    # With fastapi imported anywhere in the process, each request read the function's
    # parameters and its namespaces to tell a path operation from a view (a Django view
    # served about twice as slowly). Decorated from Django's own code, it is not one.
    import bearerguard.decorators

    importlib.import_module("fastapi")
    load("django_app")
    from django.http import HttpRequest, JsonResponse
    from django.test import RequestFactory
    from django.utils.decorators import method_decorator
    from django.views import View

    @method_decorator(requires_scopes("items:read"), name="dispatch")
    class Items(View):
        def get(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({})  # pragma: no cover - no verdict here

    looked: list[object] = []
    real = bearerguard.decorators._declares_fastapi
    monkeypatch.setattr(
        bearerguard.decorators, "_declares_fastapi", lambda f: looked.append(f) or real(f)
    )
    view = Items.as_view()
    for _ in range(3):
        with pytest.raises(Exception, match="no verified token"):  # no middleware: no verdict
            view(RequestFactory().get("/items"))
    assert looked == []


def test_the_django_example_warms_up_keys_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Run against a real issuer (its guard from ISSUER and AUDIENCE), the example fetches the
    # key set while Django loads the middleware, as the WSGI example did before it.
    from django.test import override_settings

    with DevIssuer() as issuer:
        monkeypatch.setenv("ISSUER", issuer.url)
        monkeypatch.setenv("AUDIENCE", "https://api.example")
        example = load("django_app")
        with override_settings(MIDDLEWARE=example.MIDDLEWARE, BEARERGUARD=example.BEARERGUARD):
            example.create_app()
        assert issuer.requests == ["/.well-known/openid-configuration", "/jwks.json"]
