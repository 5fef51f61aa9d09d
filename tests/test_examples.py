"""The examples, end to end: every kind of endpoint answers 200, 401 and 403 as documented.

Each example is imported by path (``examples/`` is not a package) and built with a guard
that trusts a real development issuer on 127.0.0.1. The tables mint tokens only, so they
share the session issuer.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from bearerguard.testing import DevIssuer

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NO_CHALLENGE = "no challenge"  # Starlette's own ``requires`` answers a bare 403
_ERROR = re.compile(r'\berror="([^"]*)"')


def load_example(name: str) -> Iterator[ModuleType]:
    module_name = f"bearerguard_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered while in use: pydantic resolves the models' annotations through sys.modules.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[module_name]


@pytest.fixture(scope="module")
def starlette_example() -> Iterator[ModuleType]:
    yield from load_example("starlette_app")


@pytest.fixture(scope="module")
def fastapi_example() -> Iterator[ModuleType]:
    yield from load_example("fastapi_app")


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def starlette_client(
    starlette_example: ModuleType, session_issuer: DevIssuer
) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(starlette_example.create_app(session_issuer.guard())) as client:
        yield client


@pytest.fixture
async def fastapi_client(
    fastapi_example: ModuleType, session_issuer: DevIssuer
) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(fastapi_example.create_app(session_issuer.guard())) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


Case = tuple[str, str, Sequence[str] | None, int, str | None]


def case_id(case: Case) -> str:
    method, path, scopes, status, _ = case
    token = "no-token" if scopes is None else "+".join(scopes) or "no-scope"
    return f"{method} {path} {token} {status}"


async def send(client: httpx.AsyncClient, issuer: DevIssuer, case: Case) -> httpx.Response:
    """Send a case's request: ``scopes=None`` sends no token, ``[]`` one without scopes."""
    method, path, scopes, _, _ = case
    headers = {} if scopes is None else bearer(issuer.mint(scopes=scopes))
    body = {"name": "mug"} if method == "POST" else None
    return await client.request(method, path, headers=headers, json=body)


def assert_answer(response: httpx.Response, status: int, error: str | None) -> None:
    """The status, and the RFC 6750 challenge that goes with it."""
    assert response.status_code == status, response.text
    challenge = response.headers.get("www-authenticate")
    if status == 401:
        assert challenge is not None
        assert challenge.startswith('Bearer realm="https://api.example"')
        found = _ERROR.search(challenge)
        assert (found.group(1) if found else None) == error
    elif status == 403 and error == NO_CHALLENGE:
        assert challenge is None
    elif status == 403:
        assert challenge is not None
        assert 'error="insufficient_scope"' in challenge
    else:
        assert challenge is None


# -- Starlette --------------------------------------------------------------------------

STARLETTE_CASES: list[Case] = [
    # public sync function
    ("GET", "/health", None, 200, None),
    # async function, any valid token
    ("GET", "/me", None, 401, None),
    ("GET", "/me", [], 200, None),
    # sync function with requires_scopes
    ("GET", "/reports", ["reports:read"], 200, None),
    ("GET", "/reports", ["items:read"], 403, "insufficient_scope"),
    ("GET", "/reports", None, 401, None),
    # HTTPEndpoint: async methods, one scope each
    ("GET", "/items", ["items:read"], 200, None),
    ("GET", "/items", ["items:write"], 403, "insufficient_scope"),
    ("GET", "/items", None, 401, None),
    ("POST", "/items", ["items:write"], 201, None),
    ("POST", "/items", ["items:read"], 403, "insufficient_scope"),
    ("GET", "/items/1", ["items:read"], 200, None),
    ("GET", "/items/9", ["items:read"], 404, None),
    # HTTPEndpoint: a sync method with requires_any_scope
    ("DELETE", "/items/1", ["items:delete"], 204, None),
    ("DELETE", "/items/1", ["items:admin"], 204, None),
    ("DELETE", "/items/1", ["items:read"], 403, "insufficient_scope"),
    ("DELETE", "/items/1", None, 401, None),
    # Starlette's own requires()
    ("GET", "/admin/stats", ["admin"], 200, None),
    ("GET", "/admin/stats", ["items:read"], 403, NO_CHALLENGE),
    ("GET", "/admin/stats", None, 401, None),
]


@pytest.mark.parametrize("case", STARLETTE_CASES, ids=case_id)
async def test_starlette_routes(
    starlette_client: httpx.AsyncClient, session_issuer: DevIssuer, case: Case
) -> None:
    response = await send(starlette_client, session_issuer, case)
    assert_answer(response, case[3], case[4])


async def test_starlette_me_reads_request_user_and_auth(
    starlette_client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(scopes=["items:read", "reports:read"], sub="alice")
    response = await starlette_client.get("/me", headers=bearer(token))
    assert response.status_code == 200
    body = response.json()
    assert body["subject"] == "alice"
    assert body["display_name"] == "alice"
    assert body["client_id"] == "dev-client"
    assert body["scopes"] == ["items:read", "reports:read"]


async def test_starlette_created_item_is_owned_by_the_subject(
    starlette_client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(scopes=["items:read", "items:write"], sub="bob")
    created = await starlette_client.post("/items", headers=bearer(token), json={"name": "mug"})
    assert created.status_code == 201
    assert created.json()["owner"] == "bob"
    listed = await starlette_client.get("/items", headers=bearer(token))
    assert {"id": created.json()["id"], "name": "mug", "owner": "bob"} in listed.json()["items"]
    invalid = await starlette_client.post("/items", headers=bearer(token), json={"name": ""})
    assert invalid.status_code == 422


@pytest.mark.parametrize(
    ("tweak", "reason"),
    [
        ({"exp": 1_000_000}, "expired"),
        ({"aud": "https://another.example"}, "invalid_audience"),
    ],
)
async def test_starlette_refuses_bad_tokens_even_on_public_paths(
    starlette_client: httpx.AsyncClient,
    session_issuer: DevIssuer,
    tweak: dict[str, Any],
    reason: str,
) -> None:
    token = session_issuer.mint(scopes=["reports:read"], iat=900_000, **tweak)
    with capture_logs() as events:
        for path in ("/reports", "/health"):
            response = await starlette_client.get(path, headers=bearer(token))
            assert_answer(response, 401, "invalid_token")
    assert [(event["event"], event["reason"]) for event in events] == [
        ("token.rejected", reason),
        ("token.rejected", reason),
    ]


async def test_starlette_audit_events(
    starlette_client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    reader = session_issuer.mint(scopes=["items:read"], sub="alice")
    with capture_logs() as events:
        assert (await starlette_client.get("/reports")).status_code == 401
        assert (await starlette_client.get("/items", headers=bearer(reader))).status_code == 200
        denied = await starlette_client.get("/reports", headers=bearer(reader))  # sync endpoint
        assert denied.status_code == 403
        delete = await starlette_client.delete("/items/1", headers=bearer(reader))  # sync method
        assert delete.status_code == 403
    assert [event["event"] for event in events] == [
        "token.rejected",
        "token.accepted",
        "token.accepted",
        "scope.denied",
        "token.accepted",
        "scope.denied",
    ]
    missing, accepted, _, denied_all, _, denied_any = events
    assert missing["reason"] == "missing_token"
    assert missing["status"] == 401
    assert missing["path"] == "/reports"
    assert accepted["sub"] == "alice"
    assert accepted["scopes"] == ["items:read"]
    assert accepted["outcome"] == "allow"
    assert denied_all["required_scopes"] == ["reports:read"]
    assert denied_all["scope_match"] == "all"
    assert denied_all["status"] == 403
    assert denied_any["required_scopes"] == ["items:delete", "items:admin"]
    assert denied_any["scope_match"] == "any"
    assert all(event["token_fp"] == accepted["token_fp"] for event in events[1:])


def test_starlette_with_testclient_warms_up_the_keys(
    starlette_example: ModuleType, issuer: DevIssuer
) -> None:
    app = starlette_example.create_app(issuer.guard())
    with TestClient(app) as client:
        # The lifespan start-up fetched discovery and the JWK Set before any request.
        assert issuer.requests == ["/.well-known/openid-configuration", "/jwks.json"]
        token = issuer.mint(scopes=["admin"])
        assert client.get("/admin/stats", headers=bearer(token)).json() == {"items": 1}
        assert client.get("/health").json() == {"status": "ok"}
    assert issuer.requests == ["/.well-known/openid-configuration", "/jwks.json"]


def test_starlette_guard_from_env(starlette_example: ModuleType, issuer: DevIssuer) -> None:
    env = {"ISSUER": issuer.url, "AUDIENCE": "https://a.example, https://b.example"}
    guard = starlette_example.guard_from_env(env)
    assert guard.issuer == issuer.url
    assert guard.audiences == ("https://a.example", "https://b.example")
    with pytest.raises(SystemExit, match="set ISSUER and AUDIENCE"):
        starlette_example.guard_from_env({"ISSUER": issuer.url})


# -- FastAPI ----------------------------------------------------------------------------

FASTAPI_CASES: list[Case] = [
    # public
    ("GET", "/health", None, 200, None),
    ("GET", "/openapi.json", None, 200, None),
    ("GET", "/docs", None, 200, None),
    # async, get_access_token() without an argument
    ("GET", "/me", [], 200, None),
    ("GET", "/me", None, 401, None),
    # async, requires_scopes
    ("GET", "/items", ["items:read"], 200, None),
    ("GET", "/items", ["items:write"], 403, "insufficient_scope"),
    ("GET", "/items", None, 401, None),
    # sync, requires_scopes, a body
    ("POST", "/items", ["items:write"], 201, None),
    ("POST", "/items", ["items:read"], 403, "insufficient_scope"),
    ("POST", "/items", None, 401, None),
    # sync, requires_any_scope
    ("GET", "/items/1", ["items:read"], 200, None),
    ("GET", "/items/1", ["items:admin"], 200, None),
    ("GET", "/items/1", ["items:delete"], 403, "insufficient_scope"),
    ("GET", "/items/9", ["items:read"], 404, None),
    # async, requires_any_scope
    ("DELETE", "/items/1", ["items:delete"], 204, None),
    ("DELETE", "/items/1", ["items:admin"], 204, None),
    ("DELETE", "/items/1", ["items:write"], 403, "insufficient_scope"),
    ("DELETE", "/items/1", None, 401, None),
]


@pytest.mark.parametrize("case", FASTAPI_CASES, ids=case_id)
async def test_fastapi_routes(
    fastapi_client: httpx.AsyncClient, session_issuer: DevIssuer, case: Case
) -> None:
    response = await send(fastapi_client, session_issuer, case)
    assert_answer(response, case[3], case[4])


async def test_fastapi_me_uses_the_response_model(
    fastapi_client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(scopes=["b", "a"], sub="alice", exp=2_000_000_000)
    response = await fastapi_client.get("/me", headers=bearer(token))
    assert response.json() == {
        "subject": "alice",
        "client_id": "dev-client",
        "scopes": ["a", "b"],
        "expires_at": "2033-05-18T03:33:20Z",
    }


async def test_fastapi_sync_path_operation_sees_the_token(
    fastapi_client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(scopes=["items:read", "items:write"], sub="bob")
    created = await fastapi_client.post("/items", headers=bearer(token), json={"name": "mug"})
    assert created.status_code == 201
    assert created.json() == {"name": "mug", "id": 2, "owner": "bob"}
    fetched = await fastapi_client.get("/items/2", headers=bearer(token))
    assert fetched.json() == created.json()
    invalid = await fastapi_client.post("/items", headers=bearer(token), json={"name": ""})
    assert invalid.status_code == 422


async def test_fastapi_checks_scopes_before_validating(
    fastapi_client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    # The decorator also runs as a FastAPI dependency, before the body is validated: an
    # under-scoped request never learns the body's schema from a 422.
    token = session_issuer.mint(scopes=["items:read"])
    with capture_logs() as events:
        response = await fastapi_client.post("/items", headers=bearer(token), json={"name": ""})
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert 'scope="items:write"' in response.headers["www-authenticate"]
    assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]
    # With the scope, validation answers as usual.
    writer = session_issuer.mint(scopes=["items:write"])
    invalid = await fastapi_client.post("/items", headers=bearer(writer), json={"name": ""})
    assert invalid.status_code == 422


async def test_fastapi_openapi_shows_the_decorated_signatures(
    fastapi_client: httpx.AsyncClient,
) -> None:
    schema = (await fastapi_client.get("/openapi.json")).json()
    post = schema["paths"]["/items"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ItemIn"
    }
    item = schema["paths"]["/items/{item_id}"]["get"]
    assert [param["name"] for param in item["parameters"]] == ["item_id"]
    assert "Me" in schema["components"]["schemas"]


async def test_fastapi_audit_events(
    fastapi_client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    reader = session_issuer.mint(scopes=["items:read"], sub="alice")
    expired = session_issuer.mint(scopes=["items:read"], iat=900_000, exp=1_000_000)
    with capture_logs() as events:
        await fastapi_client.get("/items", headers=bearer(reader))  # async, allowed
        await fastapi_client.post("/items", headers=bearer(reader), json={"name": "x"})  # sync
        await fastapi_client.delete("/items/1", headers=bearer(reader))  # async, any-of
        await fastapi_client.get("/items", headers=bearer(expired))
        await fastapi_client.get("/health")
    assert [(event["event"], event["reason"]) for event in events] == [
        ("token.accepted", "ok"),
        ("token.accepted", "ok"),
        ("scope.denied", "insufficient_scope"),
        ("token.accepted", "ok"),
        ("scope.denied", "insufficient_scope"),
        ("token.rejected", "expired"),
    ]
    assert events[2]["required_scopes"] == ["items:write"]
    assert events[2]["method"] == "POST"
    assert events[4]["required_scopes"] == ["items:delete", "items:admin"]
    assert events[4]["scope_match"] == "any"
    assert "sub" not in events[5]  # refused before its claims could be trusted
    assert events[5]["kid"] == session_issuer.key().kid


def test_fastapi_with_testclient(fastapi_example: ModuleType, issuer: DevIssuer) -> None:
    app = fastapi_example.create_app(issuer.guard())
    with TestClient(app) as client:
        assert issuer.requests == ["/.well-known/openid-configuration", "/jwks.json"]
        token = issuer.mint(scopes=["items:read"])
        assert client.get("/items", headers=bearer(token)).json() == [
            {"name": "teapot", "id": 1, "owner": None}
        ]
        assert client.get("/items").status_code == 401


def test_fastapi_guard_from_env(fastapi_example: ModuleType, issuer: DevIssuer) -> None:
    env = {"ISSUER": issuer.url, "AUDIENCE": "https://api.example", "JWKS_URI": issuer.jwks_uri}
    guard = fastapi_example.guard_from_env(env)
    assert guard.audiences == ("https://api.example",)
    with pytest.raises(SystemExit, match="set ISSUER and AUDIENCE"):
        fastapi_example.guard_from_env({})
