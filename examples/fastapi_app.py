"""A small FastAPI API protected by bearerguard.

Run it against your authorization server:

    ISSUER=https://issuer.example AUDIENCE=https://api.example python examples/fastapi_app.py

Environment:
    ISSUER     the trusted issuer; a token's ``iss`` must equal it exactly.
    AUDIENCE   this API's identifier (a token's ``aud`` must name it); comma-separated for
               several.
    JWKS_URI   optional: the issuer's key set URL; discovered from its metadata otherwise.
    HOST/PORT  optional: where to listen (127.0.0.1:8000).

Routes:
    GET    /health            public                             (sync)
    GET    /docs, /openapi.json  public
    GET    /me                any valid token, via get_access_token() (async)
    GET    /items             scope items:read                   (async)
    POST   /items             scope items:write                  (sync)
    GET    /items/{item_id}   scope items:read or items:admin    (sync)
    DELETE /items/{item_id}   scope items:delete or items:admin  (async)

The scope decorators go *under* the route decorator and need no ``request`` parameter:
they read the outcome the middleware recorded for the current request. A refusal is an
RFC 6750 response (401 without a valid token, 403 ``insufficient_scope`` without the
scope), and an audit event.

On a FastAPI path operation the decorators also run as a dependency, before FastAPI
validates the parameters and the body: a valid token that lacks the scope gets 403 even
with a body that fails validation, not 422 with the validation details (a body that is not
JSON at all is answered 422 by FastAPI before any dependency runs). The token itself is always
checked first, by the middleware. (``bearerguard.fastapi.BearerAuth`` is the dependency
to use when you want the token injected and the scopes in the OpenAPI document.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import datetime

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, Field

from bearerguard import BearerGuard, get_access_token, requires_any_scope, requires_scopes
from bearerguard.asgi import BearerGuardMiddleware


def guard_from_env(environ: Mapping[str, str] | None = None) -> BearerGuard:
    """A guard configured from ``ISSUER``, ``AUDIENCE`` and optionally ``JWKS_URI``."""
    env = os.environ if environ is None else environ
    issuer = env.get("ISSUER")
    audience = [item.strip() for item in env.get("AUDIENCE", "").split(",") if item.strip()]
    if not issuer or not audience:
        raise SystemExit("set ISSUER and AUDIENCE (and optionally JWKS_URI) to run this example")
    return BearerGuard(issuer=issuer, audience=audience, jwks_uri=env.get("JWKS_URI") or None)


class ItemIn(BaseModel):
    """What a client sends to create an item."""

    name: str = Field(min_length=1, max_length=100)


class Item(ItemIn):
    """An item as stored and returned."""

    id: int
    owner: str | None = None


class Me(BaseModel):
    """Who is calling, from the verified token."""

    subject: str | None
    client_id: str | None
    scopes: list[str]
    expires_at: datetime


class ItemStore:
    """The API's data. Sync path operations run in worker threads, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, Item] = {1: Item(id=1, name="teapot")}
        self._next_id = 2

    def all(self) -> list[Item]:
        with self._lock:
            return list(self._items.values())

    def get(self, item_id: int) -> Item | None:
        with self._lock:
            return self._items.get(item_id)

    def add(self, item: ItemIn, owner: str | None) -> Item:
        with self._lock:
            stored = Item(id=self._next_id, name=item.name, owner=owner)
            self._items[stored.id] = stored
            self._next_id += 1
            return stored

    def remove(self, item_id: int) -> bool:
        with self._lock:
            return self._items.pop(item_id, None) is not None


def create_app(guard: BearerGuard | None = None) -> FastAPI:
    """Build the API; ``guard`` defaults to one configured from the environment."""
    guard = guard_from_env() if guard is None else guard
    store = ItemStore()
    app = FastAPI(title="Items (bearerguard example)")
    app.add_middleware(
        BearerGuardMiddleware,
        guard=guard,
        public_paths=["/health", "/docs", "/openapi.json"],
        warm_up=True,  # fetch the issuer's keys at start-up, not on the first request
    )

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/me")
    async def me() -> Me:
        token = get_access_token()  # the token of the request being served
        if token is None:  # only on a public path reached without credentials
            raise HTTPException(status_code=401, detail="no token")
        return Me(
            subject=token.subject,
            client_id=token.client_id,
            scopes=sorted(token.scopes),
            expires_at=token.expires_at,
        )

    @app.get("/items")
    @requires_scopes("items:read")
    async def list_items() -> list[Item]:
        return store.all()

    @app.post("/items", status_code=201)
    @requires_scopes("items:write")
    def create_item(item: ItemIn) -> Item:
        token = get_access_token()  # works in sync path operations too (worker threads)
        return store.add(item, owner=None if token is None else token.subject)

    @app.get("/items/{item_id}")
    @requires_any_scope("items:read", "items:admin")
    def read_item(item_id: int) -> Item:
        item = store.get(item_id)
        if item is None:
            raise HTTPException(status_code=404, detail="no such item")
        return item

    @app.delete("/items/{item_id}", status_code=204)
    @requires_any_scope("items:delete", "items:admin")
    async def delete_item(item_id: int) -> Response:
        if not store.remove(item_id):
            raise HTTPException(status_code=404, detail="no such item")
        return Response(status_code=204)

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        create_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
    )
