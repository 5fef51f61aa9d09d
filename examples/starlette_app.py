"""A small Starlette API protected by bearerguard.

Run it against your authorization server:

    ISSUER=https://issuer.example AUDIENCE=https://api.example python examples/starlette_app.py

Environment:
    ISSUER     the trusted issuer; a token's ``iss`` must equal it exactly.
    AUDIENCE   this API's identifier (a token's ``aud`` must name it); comma-separated for
               several.
    JWKS_URI   optional: the issuer's key set URL; discovered from its metadata otherwise.
    HOST/PORT  optional: where to listen (127.0.0.1:8000).

Routes:
    GET    /health            public, no token needed           (sync function)
    GET    /me                any valid token                   (async function, request.user)
    GET    /reports           scope reports:read                (sync function)
    GET    /items             scope items:read                  (HTTPEndpoint, async)
    POST   /items             scope items:write                 (HTTPEndpoint, async)
    GET    /items/{id}        scope items:read                  (HTTPEndpoint, async)
    DELETE /items/{id}        scope items:delete or items:admin (HTTPEndpoint, sync)
    GET    /admin/stats       scope admin, with Starlette's own ``requires``

Every route but ``/health`` needs a valid token: the middleware answers 401 before the route
runs. ``requires_scopes`` answers 403 ``insufficient_scope`` with an RFC 6750 challenge and
an audit event; Starlette's ``requires`` works too (it reads ``request.auth.scopes``, which
the middleware fills) but answers a bare 403 and is not audited.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bearerguard import BearerGuard, requires_any_scope, requires_scopes
from bearerguard.asgi import BearerGuardMiddleware, TokenUser


def guard_from_env(environ: Mapping[str, str] | None = None) -> BearerGuard:
    """A guard configured from ``ISSUER``, ``AUDIENCE`` and optionally ``JWKS_URI``."""
    env = os.environ if environ is None else environ
    issuer = env.get("ISSUER")
    audience = [item.strip() for item in env.get("AUDIENCE", "").split(",") if item.strip()]
    if not issuer or not audience:
        raise SystemExit("set ISSUER and AUDIENCE (and optionally JWKS_URI) to run this example")
    return BearerGuard(issuer=issuer, audience=audience, jwks_uri=env.get("JWKS_URI") or None)


class ItemStore:
    """The API's data: a dict of items, shared by the routes through ``app.state``."""

    def __init__(self) -> None:
        self.items: dict[int, dict[str, Any]] = {1: {"id": 1, "name": "teapot"}}
        self.next_id = 2

    def add(self, name: str, owner: str) -> dict[str, Any]:
        item = {"id": self.next_id, "name": name, "owner": owner}
        self.items[self.next_id] = item
        self.next_id += 1
        return item


def _store(request: Request) -> ItemStore:
    store: ItemStore = request.app.state.items
    return store


# -- function endpoints -----------------------------------------------------------------


def health(_request: Request) -> JSONResponse:
    """Public: no token needed (a token sent anyway must be valid)."""
    return JSONResponse({"status": "ok"})


async def me(request: Request) -> JSONResponse:
    """Who is calling: any valid token will do."""
    user: TokenUser = request.user
    token = user.access_token
    return JSONResponse(
        {
            "subject": user.identity,
            "display_name": user.display_name,
            "client_id": token.client_id,
            "scopes": sorted(request.auth.scopes),
            "expires_at": token.expires_at.isoformat(),
        }
    )


@requires_scopes("reports:read")
def reports(_request: Request) -> JSONResponse:
    """A sync endpoint (run in a worker thread) with a scope requirement."""
    return JSONResponse({"reports": [{"name": "daily", "rows": 42}]})


@requires("admin")
async def admin_stats(request: Request) -> JSONResponse:
    """Starlette's own ``requires`` works as well: the middleware fills ``request.auth``."""
    return JSONResponse({"items": len(_store(request).items)})


# -- a class-based endpoint -------------------------------------------------------------


class Items(HTTPEndpoint):
    """The item collection: each method needs its own scope."""

    @requires_scopes("items:read")
    async def get(self, request: Request) -> Response:
        return JSONResponse({"items": list(_store(request).items.values())})

    @requires_scopes("items:write")
    async def post(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not 0 < len(name) <= 100:
            return JSONResponse({"error": 'expected {"name": "..."}'}, status_code=422)
        return JSONResponse(_store(request).add(name, request.user.identity), status_code=201)


class Item(HTTPEndpoint):
    """One item: reading needs ``items:read``, deleting one of two scopes."""

    @requires_scopes("items:read")
    async def get(self, request: Request) -> Response:
        item = _store(request).items.get(request.path_params["item_id"])
        if item is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(item)

    @requires_any_scope("items:delete", "items:admin")
    def delete(self, request: Request) -> Response:  # sync: runs in a worker thread
        if _store(request).items.pop(request.path_params["item_id"], None) is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(status_code=204)


# -- the application --------------------------------------------------------------------


def create_app(guard: BearerGuard | None = None) -> Starlette:
    """Build the API; ``guard`` defaults to one configured from the environment."""
    guard = guard_from_env() if guard is None else guard
    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/me", me),
            Route("/reports", reports),
            Route("/items", Items),
            Route("/items/{item_id:int}", Item),
            Route("/admin/stats", admin_stats),
        ],
        middleware=[
            # warm_up fetches the issuer's keys at start-up instead of on the first request.
            Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/health"], warm_up=True)
        ],
    )
    app.state.items = ItemStore()
    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        create_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
    )
