"""A single-file Django API protected by bearerguard's Django middleware.

Run it against your authorization server:

    ISSUER=https://issuer.example AUDIENCE=https://api.example python examples/django_app.py

The whole Django setup is in the settings: the middleware in ``MIDDLEWARE`` and the
``BEARERGUARD`` setting naming the guard by its dotted path. Views take ``requires_scopes``
like any decorator, and ``get_access_token(request)`` returns the verified token. The same
settings serve ``get_asgi_application()``, and Django's test clients go through the guard.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

from bearerguard import BearerGuard, get_access_token, requires_scopes

guard: BearerGuard | None = None
"""The guard ``BEARERGUARD`` names: in a project, built in a module of its own."""

MIDDLEWARE = ["bearerguard.django.BearerGuardMiddleware"]
BEARERGUARD: dict[str, Any] = {"GUARD": f"{__name__}.guard", "PUBLIC_PATHS": ["/health"]}

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", secrets.token_urlsafe(32)),
        MIDDLEWARE=MIDDLEWARE,
        BEARERGUARD=BEARERGUARD,
        INSTALLED_APPS=[],
    )
    django.setup()
else:  # embedded in a process that configured Django already (the tests): route to this file
    settings.ROOT_URLCONF = __name__


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@requires_scopes("items:read")
def list_items(request: HttpRequest) -> JsonResponse:
    token = get_access_token(request)
    return JsonResponse({"items": ["pen", "ink"], "for": token.subject if token else None})


urlpatterns = [path("health", health), path("items", list_items)]


def guard_from_env(environ: Mapping[str, str] | None = None) -> BearerGuard:
    """A guard configured from ``ISSUER``, ``AUDIENCE`` and optionally ``JWKS_URI``."""
    env = os.environ if environ is None else environ
    issuer = env.get("ISSUER")
    audience = [item.strip() for item in env.get("AUDIENCE", "").split(",") if item.strip()]
    if not issuer or not audience:
        raise SystemExit("set ISSUER and AUDIENCE (and optionally JWKS_URI) to run this example")
    return BearerGuard(issuer=issuer, audience=audience, jwks_uri=env.get("JWKS_URI") or None)


def create_app(the_guard: BearerGuard | None = None) -> WSGIHandler:
    """The Django WSGI application, its guard from the environment when omitted.

    Django loads the middleware here, under the settings above: ``BEARERGUARD`` is read,
    and the guard imported, now. A guard from the environment fetches its keys then
    (``WARM_UP``), so the first request does not wait for them.
    """
    global guard  # noqa: PLW0603 - the module attribute BEARERGUARD names
    guard = the_guard or guard_from_env()
    settings.BEARERGUARD = {**settings.BEARERGUARD, "WARM_UP": the_guard is None}
    return get_wsgi_application()


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    print(f"serving on http://{host}:{port}")
    make_server(host, port, create_app()).serve_forever()
