"""FastAPI apps: bare, bearerguard with ``@requires_scopes``, and ``HTTPBearer`` with PyJWT.

Served by uvicorn as ``benchmarks.apps.fastapi_apps:create_<name>`` with ``--factory``.

No ``from __future__ import annotations`` here: FastAPI reads the ``Annotated`` dependencies
of the nested endpoints at definition time, and their names are local.
"""

from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bearerguard import BearerGuard, requires_scopes
from bearerguard.asgi import BearerGuardMiddleware
from benchmarks.apps import PATH, SCOPE, Settings
from benchmarks.apps.pyjwt_middleware import decode_token
from benchmarks.apps.starlette_apps import guard_for

__all__ = [
    "build_bare",
    "build_bearerguard",
    "build_httpbearer",
    "create_bare",
    "create_bearerguard",
    "create_httpbearer",
]


def build_bare(settings: Settings) -> FastAPI:
    """One JSON path operation, nothing else (``response_model=None`` everywhere)."""
    app = FastAPI()

    @app.get(PATH, response_model=None)
    async def items() -> dict[str, bool]:
        return {"ok": True}

    return app


def build_bearerguard(settings: Settings, *, guard: BearerGuard | None = None) -> FastAPI:
    """The same path operation behind ``BearerGuardMiddleware``, with ``@requires_scopes``."""
    app = FastAPI()
    app.add_middleware(BearerGuardMiddleware, guard=guard or guard_for(settings), warm_up=True)

    @app.get(PATH, response_model=None)
    @requires_scopes(SCOPE)
    async def items() -> dict[str, bool]:
        return {"ok": True}

    return app


def build_httpbearer(settings: Settings) -> FastAPI:
    """FastAPI's tutorial pattern: an ``HTTPBearer()`` dependency decoding with PyJWT.

    The dependency is ``async def`` (a sync one would also pay a thread hop per request),
    and checks the scope the way the tutorials do.
    """
    app = FastAPI()
    bearer = HTTPBearer()
    jwks_client = jwt.PyJWKClient(settings.jwks_uri)

    async def verified_claims(
        credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)],
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = decode_token(
                jwks_client,
                credentials.credentials,
                audience=settings.audience,
                issuer=settings.issuer,
            )
        except jwt.PyJWTError as exc:
            raise HTTPException(
                status_code=401, detail="Invalid token", headers={"WWW-Authenticate": "Bearer"}
            ) from exc
        if SCOPE not in str(claims.get("scope", "")).split():
            raise HTTPException(status_code=403, detail="Not enough permissions")
        return claims

    @app.get(PATH, response_model=None)
    async def items(claims: Annotated[dict[str, Any], Depends(verified_claims)]) -> dict[str, bool]:
        return {"ok": True}

    return app


def create_bare() -> FastAPI:
    return build_bare(Settings.from_env())


def create_bearerguard() -> FastAPI:
    return build_bearerguard(Settings.from_env())


def create_httpbearer() -> FastAPI:
    return build_httpbearer(Settings.from_env())
