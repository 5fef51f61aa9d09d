"""Starlette apps: bare, behind bearerguard, and behind the hand-rolled PyJWT middlewares.

Served by uvicorn as ``benchmarks.apps.starlette_apps:create_<name>`` with ``--factory``.
"""

from __future__ import annotations

import hashlib

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bearerguard import BearerGuard
from bearerguard.asgi import BearerGuardMiddleware
from benchmarks.apps import PATH, Settings, configure_audit_logging, dropping_audit_logger
from benchmarks.apps.pyjwt_middleware import PyJWTASGIMiddleware, PyJWTHTTPMiddleware

__all__ = [
    "HashLookupMiddleware",
    "build_bare",
    "build_bearerguard",
    "build_hash_lookup",
    "build_pyjwt_asgi",
    "build_pyjwt_base",
    "create_bare",
    "create_bearerguard",
    "create_hash_lookup",
    "create_pyjwt_asgi",
    "create_pyjwt_base",
    "guard_for",
]


async def items(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


ROUTES = [Route(PATH, items)]


def guard_for(settings: Settings, *, cache_size: int = 10_000) -> BearerGuard:
    """The guard every bearerguard app uses: the library defaults but for the audit settings."""
    configure_audit_logging()
    return BearerGuard(
        issuer=settings.issuer,
        audience=settings.audience,
        jwks_uri=settings.jwks_uri,
        audit_sample_accepted=settings.sample_accepted,
        audit_logger=dropping_audit_logger() if settings.audit == "dropped" else None,
        cache_size=cache_size,
    )


def build_bare(settings: Settings) -> Starlette:
    """One JSON route, nothing else."""
    return Starlette(routes=ROUTES)


def build_bearerguard(settings: Settings, *, guard: BearerGuard | None = None) -> Starlette:
    """The same route behind ``BearerGuardMiddleware`` (keys fetched at lifespan start-up)."""
    guard = guard or guard_for(settings)
    return Starlette(
        routes=ROUTES, middleware=[Middleware(BearerGuardMiddleware, guard=guard, warm_up=True)]
    )


class HashLookupMiddleware:
    """A reference, not an authenticator: the least a SHA-256-keyed token cache must do.

    Finds the ``Authorization`` header, hashes the token and looks the digest up in a dict.
    No expiry, revocation, audit or request state: the floor under any such cache hit.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: dict[bytes, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"authorization":
                    self.seen.setdefault(hashlib.sha256(value[7:]).digest(), True)
        await self.app(scope, receive, send)


def build_hash_lookup(settings: Settings) -> Starlette:
    """The same route behind ``HashLookupMiddleware`` (a reference floor, no checks)."""
    return Starlette(routes=ROUTES, middleware=[Middleware(HashLookupMiddleware)])


def build_pyjwt_asgi(settings: Settings) -> Starlette:
    """The same route behind a pure ASGI middleware calling ``jwt.decode``."""
    options = {
        "jwks_uri": settings.jwks_uri,
        "audience": settings.audience,
        "issuer": settings.issuer,
    }
    return Starlette(routes=ROUTES, middleware=[Middleware(PyJWTASGIMiddleware, **options)])


def build_pyjwt_base(settings: Settings) -> Starlette:
    """The same route behind a ``BaseHTTPMiddleware`` calling ``jwt.decode``."""
    options = {
        "jwks_uri": settings.jwks_uri,
        "audience": settings.audience,
        "issuer": settings.issuer,
    }
    return Starlette(routes=ROUTES, middleware=[Middleware(PyJWTHTTPMiddleware, **options)])


def create_bare() -> Starlette:
    return build_bare(Settings.from_env())


def create_bearerguard() -> Starlette:
    return build_bearerguard(Settings.from_env())


def create_hash_lookup() -> Starlette:
    return build_hash_lookup(Settings.from_env())


def create_pyjwt_asgi() -> Starlette:
    return build_pyjwt_asgi(Settings.from_env())


def create_pyjwt_base() -> Starlette:
    return build_pyjwt_base(Settings.from_env())
