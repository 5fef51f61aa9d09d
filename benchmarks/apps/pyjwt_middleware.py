"""The hand-rolled pattern bearerguard is compared with, written the way tutorials write it.

A ``PyJWKClient`` caches the JWK Set (its default: fetched once, kept 300 s) and every
request does ``get_signing_key_from_jwt(token)`` then ``jwt.decode(...)``. Two shapes:
``@app.middleware("http")`` style (``BaseHTTPMiddleware``, what most tutorials show) and a
pure ASGI class (what Starlette's docs recommend), to separate the cost of the middleware
style from the cost of the JWT work.
"""

from __future__ import annotations

from typing import Any

import jwt
from starlette.datastructures import Headers
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PyJWTASGIMiddleware", "PyJWTHTTPMiddleware", "decode_token"]


def decode_token(client: jwt.PyJWKClient, token: str, *, audience: str, issuer: str) -> Any:
    """The tutorial two-liner: look the key up by the token's ``kid``, then decode."""
    signing_key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token, signing_key.key, algorithms=["RS256"], audience=audience, issuer=issuer
    )


class PyJWTHTTPMiddleware(BaseHTTPMiddleware):
    """``BaseHTTPMiddleware`` with ``jwt.decode`` per request (the tutorial shape)."""

    def __init__(self, app: ASGIApp, *, jwks_uri: str, audience: str, issuer: str) -> None:
        super().__init__(app)
        self.jwks_client = jwt.PyJWKClient(jwks_uri)
        self.audience = audience
        self.issuer = issuer

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return JSONResponse({"detail": "Not authenticated"}, status_code=401)
        try:
            request.state.claims = decode_token(
                self.jwks_client, token, audience=self.audience, issuer=self.issuer
            )
        except jwt.PyJWTError:
            return JSONResponse({"detail": "Invalid token"}, status_code=401)
        return await call_next(request)


class PyJWTASGIMiddleware:
    """A pure ASGI middleware with ``jwt.decode`` per request."""

    def __init__(self, app: ASGIApp, *, jwks_uri: str, audience: str, issuer: str) -> None:
        self.app = app
        self.jwks_client = jwt.PyJWKClient(jwks_uri)
        self.audience = audience
        self.issuer = issuer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            await JSONResponse({"detail": "Not authenticated"}, status_code=401)(
                scope, receive, send
            )
            return
        try:
            claims = decode_token(
                self.jwks_client, token, audience=self.audience, issuer=self.issuer
            )
        except jwt.PyJWTError:
            await JSONResponse({"detail": "Invalid token"}, status_code=401)(scope, receive, send)
            return
        scope.setdefault("state", {})["claims"] = claims
        await self.app(scope, receive, send)
