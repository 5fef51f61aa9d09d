"""A small Flask API protected by bearerguard (WSGI).

Run it against your authorization server:

    ISSUER=https://issuer.example AUDIENCE=https://api.example python examples/flask_app.py

Routes:
    GET    /health        public, no token needed
    GET    /me            any valid token
    GET    /items         scope items:read          (a blueprint)
    POST   /items         scope items:write
    DELETE /items/<id>    scope items:delete or admin

``protect`` wraps ``app.wsgi_app``; ``requires_scopes`` answers 403 ``insufficient_scope`` with
an RFC 6750 challenge, and ``get_access_token()`` returns the verified token inside views.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, request

from bearerguard import BearerGuard, get_access_token, requires_any_scope, requires_scopes
from bearerguard.flask import protect

items = Blueprint("items", __name__)
_ITEMS: dict[int, str] = {1: "pen", 2: "ink"}


@items.get("/items")
@requires_scopes("items:read")
def list_items() -> dict[str, Any]:
    return {"items": [{"id": key, "name": name} for key, name in sorted(_ITEMS.items())]}


@items.post("/items")
@requires_scopes("items:write")
def add_item() -> tuple[dict[str, Any], int]:
    name = str((request.get_json(silent=True) or {}).get("name", "unnamed"))
    key = max(_ITEMS, default=0) + 1
    _ITEMS[key] = name
    return {"id": key, "name": name}, 201


@items.delete("/items/<int:key>")
@requires_any_scope("items:delete", "admin")
def delete_item(key: int) -> tuple[str, int]:
    _ITEMS.pop(key, None)
    return "", 204


def guard_from_env(environ: Mapping[str, str] | None = None) -> BearerGuard:
    """A guard configured from ``ISSUER``, ``AUDIENCE`` and optionally ``JWKS_URI``."""
    env = os.environ if environ is None else environ
    issuer = env.get("ISSUER")
    audience = [item.strip() for item in env.get("AUDIENCE", "").split(",") if item.strip()]
    if not issuer or not audience:
        raise SystemExit("set ISSUER and AUDIENCE (and optionally JWKS_URI) to run this example")
    return BearerGuard(issuer=issuer, audience=audience, jwks_uri=env.get("JWKS_URI") or None)


def create_app(guard: BearerGuard | None = None) -> Flask:
    """The Flask app, protected by ``guard`` (from the environment when omitted)."""
    app = Flask(__name__)

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/me")
    def me() -> dict[str, Any]:
        token = get_access_token()
        assert token is not None  # noqa: S101 - only /health is public
        return {"subject": token.subject, "scopes": sorted(token.scopes), "client": token.client_id}

    app.register_blueprint(items)
    protect(app, guard=guard or guard_from_env(), public_paths=["/health"], warm_up=guard is None)
    return app


if __name__ == "__main__":
    create_app().run(
        host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000"))
    )
