"""A single-file Django API protected by bearerguard (WSGI).

Run it against your authorization server:

    ISSUER=https://issuer.example AUDIENCE=https://api.example python examples/django_app.py

The whole Django setup is one line in your ``wsgi.py``: wrap the application Django gives
you in ``BearerGuardWSGIMiddleware``. Views take ``requires_scopes`` like any decorator, and
``get_access_token(request)`` returns the verified token.

    application = BearerGuardWSGIMiddleware(
        get_wsgi_application(), guard=guard, public_paths=["/health"]
    )
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", secrets.token_urlsafe(32)),
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
    )
    django.setup()
else:  # embedded in a process that configured Django already (the tests): route to this file
    settings.ROOT_URLCONF = __name__

from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

from bearerguard import BearerGuard, get_access_token, requires_scopes
from bearerguard.wsgi import BearerGuardWSGIMiddleware


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


def create_app(guard: BearerGuard | None = None) -> BearerGuardWSGIMiddleware:
    """The Django WSGI application behind the guard (from the environment when omitted)."""
    return BearerGuardWSGIMiddleware(
        get_wsgi_application(),
        guard=guard or guard_from_env(),
        public_paths=["/health"],
        warm_up=guard is None,
    )


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    print(f"serving on http://{host}:{port}")
    make_server(host, port, create_app()).serve_forever()
