"""A refused ``?access_token=`` is redacted where the server logs the request from
(RFC 6750 §5.3): real uvicorn servers, their ``uvicorn.access`` log captured."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.fastapi import BearerAuth
from bearerguard.testing import DevIssuer
from tests.helpers import uvicorn_logging


async def _echo(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _requests(base: str, token: str) -> list[int]:
    return [
        httpx.get(f"http://{base}/me?page=1&access_token={token}").status_code,
        httpx.get(f"http://{base}/me?access%5Ftoken={token}&x=1").status_code,
        httpx.get(f"http://{base}/me?page=3").status_code,  # refused, no query token
        httpx.get(f"http://{base}/health?page=4&q=access").status_code,  # let in
    ]


def test_the_middleware_redacts_a_refused_query_token_in_the_access_log(
    session_issuer: DevIssuer,
) -> None:
    token = session_issuer.mint(sub="ann")
    app = BearerGuardMiddleware(
        Starlette(routes=[Route("/me", _echo), Route("/health", _echo)]),
        guard=session_issuer.guard(),
        public_paths=["/health"],
    )
    with uvicorn_logging(app) as (base, log):
        assert _requests(base, token) == [400, 400, 401, 200]
    assert token not in log.getvalue()
    assert [line.split('"')[1] for line in log.getvalue().splitlines()] == [
        "GET /me?page=1&access_token=REDACTED HTTP/1.1",
        "GET /me?access%5Ftoken=REDACTED&x=1 HTTP/1.1",
        "GET /me?page=3 HTTP/1.1",
        "GET /health?page=4&q=access HTTP/1.1",
    ]


def test_bearer_auth_redacts_a_refused_query_token_in_the_access_log(
    session_issuer: DevIssuer,
) -> None:
    # BearerAuth without the middleware: its refusal is raised inside FastAPI's routing,
    # on the scope uvicorn logs from.
    token = session_issuer.mint(sub="ann")
    bearer = BearerAuth(session_issuer.guard())
    app = FastAPI()
    bearer.install(app)

    @app.get("/me", dependencies=[bearer.requires()])
    async def me() -> dict[str, bool]:  # pragma: no cover - never let in here
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    with uvicorn_logging(app) as (base, log):
        assert _requests(base, token) == [400, 400, 401, 200]
    assert token not in log.getvalue()
    assert [line.split('"')[1] for line in log.getvalue().splitlines()] == [
        "GET /me?page=1&access_token=REDACTED HTTP/1.1",
        "GET /me?access%5Ftoken=REDACTED&x=1 HTTP/1.1",
        "GET /me?page=3 HTTP/1.1",
        "GET /health?page=4&q=access HTTP/1.1",
    ]


@pytest.mark.parametrize("token_first", [True, False])
def test_a_query_token_with_a_header_token_is_redacted_too(
    session_issuer: DevIssuer, token_first: bool
) -> None:
    # Two methods at once (RFC 6750 §2): refused whatever the header holds, and redacted.
    token = session_issuer.mint(sub="ann")
    app = BearerGuardMiddleware(
        Starlette(routes=[Route("/me", _echo)]), guard=session_issuer.guard()
    )
    query = f"access_token={token}&a=1" if token_first else f"a=1&access_token={token}"
    with uvicorn_logging(app) as (base, log):
        response = httpx.get(
            f"http://{base}/me?{query}", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 400
    assert token not in log.getvalue()
    assert "access_token=REDACTED" in log.getvalue()


def test_the_metadata_answer_redacts_a_query_token_in_the_access_log(
    session_issuer: DevIssuer,
) -> None:
    # The protected-resource metadata (RFC 9728 §3) is answered without a token check, so
    # a token sent there in the query is no refusal; it is still nothing to log.
    token = session_issuer.mint(sub="ann")
    guard = session_issuer.guard(audience=None, resource="https://api.example")
    app = BearerGuardMiddleware(Starlette(routes=[Route("/me", _echo)]), guard=guard)
    with uvicorn_logging(app) as (base, log):
        url = f"http://{base}/.well-known/oauth-protected-resource?access_token={token}"
        assert httpx.get(url).status_code == 200
    assert token not in log.getvalue()
    assert [line.split('"')[1] for line in log.getvalue().splitlines()] == [
        "GET /.well-known/oauth-protected-resource?access_token=REDACTED HTTP/1.1",
    ]


@pytest.mark.parametrize("other", [chr(0xDCFF), chr(0xD800), "é"])
def test_a_text_query_with_any_surrogate_is_redacted_not_a_500(other: str) -> None:
    # Django's AsyncClient puts text in scope["query_string"]; test code can put any
    # surrogate there, not only the U+DC80-DCFF of surrogateescape.
    from bearerguard.asgi import _redact_query_token

    scope = {"query_string": f"q={other}&access_token=abc.def"}
    _redact_query_token(scope)
    assert scope["query_string"] == f"q={other}&access_token=REDACTED"
