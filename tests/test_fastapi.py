"""bearerguard.fastapi: the Security dependency, with and without the middleware, and OpenAPI.

No ``from __future__ import annotations`` here: FastAPI evaluates string annotations in the
module's globals, and these path operations annotate with a local ``BearerAuth``.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
import structlog
from fastapi import APIRouter, Depends, FastAPI, File, Request, Security, UploadFile
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from structlog.testing import capture_logs

from bearerguard import (
    AccessToken,
    BearerGuard,
    get_access_token,
    requires_any_scope,
    requires_scopes,
)
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.errors import ConfigurationError
from bearerguard.fastapi import BearerAuth, document_middleware, oauth2_flows, serve_metadata
from bearerguard.issuers import TrustedIssuers
from bearerguard.testing import DevIssuer
from bearerguard.usage import MemoryUsageMonitor, UsagePolicy

pytestmark = pytest.mark.anyio

IMPLICATIONS = {"items:write": ["items:read"], "admin": ["admin:*", "items:write"]}


class ItemIn(BaseModel):
    name: str = Field(min_length=1)


def build_api(guard: BearerGuard, *, middleware: bool, install: bool = True) -> FastAPI:
    bearer = BearerAuth(guard)
    app = FastAPI(
        middleware=[Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/health"])]
        if middleware
        else []
    )
    if install:
        bearer.install(app)

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/items")
    async def list_items(
        token: Annotated[AccessToken, bearer.requires("items:read")],
    ) -> dict[str, Any]:
        current = get_access_token()
        return {"sub": token.subject, "same": current is token}

    @app.post("/items", status_code=201)
    def add_item(
        item: ItemIn, token: Annotated[AccessToken, Security(bearer, scopes=["items:write"])]
    ) -> dict[str, Any]:
        return {"name": item.name, "owner": token.subject}

    @app.delete("/items/{item_id}", dependencies=[bearer.requires_any("items:delete", "admin")])
    async def delete_item(item_id: int) -> dict[str, int]:
        return {"deleted": item_id}

    @app.get("/admin/users")
    async def admin_users(
        token: Annotated[AccessToken, bearer.requires("admin:users")],
    ) -> list[str]:
        return []

    @app.get("/me")
    async def me(token: Annotated[AccessToken, bearer.requires()]) -> dict[str, Any]:
        return {"sub": token.subject, "scopes": sorted(token.scopes)}

    @app.get("/decorated")
    @requires_scopes("reports:read")
    async def decorated() -> dict[str, bool]:
        return {"ok": True}

    @app.websocket("/ws")
    async def socket(
        websocket: WebSocket, token: Annotated[AccessToken, bearer.requires("chat")]
    ) -> None:
        await websocket.accept()
        await websocket.send_json({"sub": token.subject})
        await websocket.close()

    return app


@pytest.fixture
def guard(session_issuer: DevIssuer) -> BearerGuard:
    return session_issuer.guard(scope_implications=IMPLICATIONS)


@pytest.fixture(params=["dependency-only", "with-middleware"])
def middleware(request: pytest.FixtureRequest) -> bool:
    return request.param == "with-middleware"


@pytest.fixture
async def client(guard: BearerGuard, middleware: bool) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_api(guard, middleware=middleware))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def bearer(issuer: DevIssuer, *scopes: str, sub: str = "erin") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(scopes=scopes, sub=sub)}"}


def assert_refusal(response: httpx.Response, status: int, error: str | None) -> str:
    assert response.status_code == status, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="https://api.example"')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == (error or "unauthorized")
    return challenge


@pytest.mark.parametrize(
    ("method", "path", "scopes", "status"),
    [
        ("GET", "/items", ["items:read"], 200),
        ("GET", "/items", ["items:write"], 200),  # implied
        ("GET", "/items", ["admin"], 200),  # implied, transitively
        ("GET", "/items", ["items:delete"], 403),
        ("DELETE", "/items/1", ["items:delete"], 200),
        ("DELETE", "/items/1", ["admin"], 200),
        ("DELETE", "/items/1", ["items:write"], 403),
        ("GET", "/admin/users", ["admin"], 200),  # admin implies admin:*
        ("GET", "/admin/users", ["admin:users"], 200),
        ("GET", "/admin/users", ["admin:*"], 403),  # a token's scopes are literal
        ("GET", "/admin/users", ["items:write"], 403),
        ("GET", "/me", [], 200),
    ],
)
async def test_scopes_all_of_any_of_and_implied(
    client: httpx.AsyncClient,
    session_issuer: DevIssuer,
    method: str,
    path: str,
    scopes: list[str],
    status: int,
) -> None:
    with capture_logs() as events:
        response = await client.request(method, path, headers=bearer(session_issuer, *scopes))
    assert response.status_code == status, response.text
    expected = ["token.accepted"] if status == 200 else ["token.accepted", "scope.denied"]
    assert [event["event"] for event in events] == expected
    if status == 403:
        assert_refusal(response, 403, "insufficient_scope")


async def test_the_token_is_injected_and_current(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    response = await client.get("/items", headers=bearer(session_issuer, "items:read", sub="fay"))
    assert response.json() == {"sub": "fay", "same": True}


async def test_missing_and_bad_tokens(
    client: httpx.AsyncClient, session_issuer: DevIssuer, middleware: bool
) -> None:
    with capture_logs() as events:
        missing = await client.get("/items")
        expired = await client.get(
            "/items", headers={"Authorization": f"Bearer {session_issuer.mint(expires_in=-300)}"}
        )
        doubled = await client.get("/items?access_token=abc", headers=bearer(session_issuer))
    challenge = assert_refusal(missing, 401, None)
    if not middleware:
        # The dependency knows the operation's scopes: the 401 says which to ask for.
        assert challenge.endswith('scope="items:read"')
    assert_refusal(expired, 401, "invalid_token")
    assert_refusal(doubled, 400, "invalid_request")
    assert [(event["event"], event["reason"]) for event in events] == [
        ("token.rejected", "missing_token"),
        ("token.rejected", "expired"),
        ("token.rejected", "invalid_request"),
    ]


@pytest.mark.parametrize(("query", "status"), [("page=2", 200), ("access_token={t}", 400)])
async def test_a_text_query_string_is_answered_not_a_500(
    guard: BearerGuard, session_issuer: DevIssuer, middleware: bool, query: str, status: int
) -> None:
    # ASGI says bytes; Django's AsyncClient and some test tools put text in query_string.
    from tests.helpers import asgi_call, http_scope

    app = build_api(guard, middleware=middleware)
    token = session_issuer.mint(sub="erin")
    scope = http_scope(
        [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
        query_string=query.format(t=token),
    )
    with capture_logs() as events:
        sent = await asgi_call(app, scope)
    assert sent[0]["status"] == status
    assert [event["event"] for event in events] == [
        "token.accepted" if status == 200 else "token.rejected"
    ]


async def test_a_bytearray_authorization_value_is_answered_not_a_500(
    guard: BearerGuard, session_issuer: DevIssuer, middleware: bool
) -> None:
    # ASGI says bytes; Starlette reads a bytearray value too. BearerAuth (and the
    # middleware) called bytes methods on it: AttributeError, a 500.
    from tests.helpers import asgi_call, http_scope

    app = build_api(guard, middleware=middleware)
    token = session_issuer.mint(sub="erin")
    for credentials, status in [(token, 200), (token + "!", 400)]:
        scope = http_scope(
            [
                (b"host", b"testserver"),
                (b"authorization", bytearray(f"Bearer {credentials}".encode())),
            ]
        )
        with capture_logs() as events:
            sent = await asgi_call(app, scope)
        assert sent[0]["status"] == status
        assert [event["event"] for event in events] == [
            "token.accepted" if status == 200 else "token.rejected"
        ]


async def test_scope_checked_before_the_body_is_validated(
    client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    under = await client.post(
        "/items", headers=bearer(session_issuer, "items:read"), json={"name": ""}
    )
    assert_refusal(under, 403, "insufficient_scope")
    assert "detail" not in under.text
    invalid = await client.post(
        "/items", headers=bearer(session_issuer, "items:write"), json={"name": ""}
    )
    assert invalid.status_code == 422
    created = await client.post(
        "/items", headers=bearer(session_issuer, "items:write"), json={"name": "mug"}
    )
    assert created.json() == {"name": "mug", "owner": "erin"}


@pytest.mark.parametrize("middleware", [False, True])
async def test_only_the_middleware_refuses_an_upload_before_reading_it(
    guard: BearerGuard, middleware: bool
) -> None:
    # docs/fastapi.md: FastAPI reads and parses a multipart body before any dependency
    # runs, so BearerAuth alone refuses only once the upload is in; the middleware first.
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(
        FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)] if middleware else [])
    )

    @app.post("/upload")
    async def upload(
        file: Annotated[UploadFile, File()],
        token: Annotated[AccessToken, bearer_auth.requires()],
    ) -> None:
        pass  # pragma: no cover - refused

    received: list[bytes] = []

    async def reading(scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            received.append(message.get("body", b""))
            return message

        await app(scope, counted, send)

    upload_bytes = b"x" * 1_000_000
    transport = httpx.ASGITransport(app=reading)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        refused = await client.post("/upload", files={"file": ("big.bin", upload_bytes)})
    assert_refusal(refused, 401, None)
    if middleware:
        assert received == []  # not one receive() call
    else:
        assert sum(map(len, received)) > len(upload_bytes)


async def test_one_verification_with_the_middleware(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    app = build_api(guard, middleware=True, install=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with capture_logs() as events:
            ok = await client.get("/items", headers=bearer(session_issuer, "items:read"))
            denied = await client.get("/items", headers=bearer(session_issuer, "x"))
            public = await client.get("/health")
    assert ok.status_code == 200
    # Without install(), the middleware still answers the dependency's refusal in full.
    assert_refusal(denied, 403, "insufficient_scope")
    assert public.status_code == 200
    assert [event["event"] for event in events] == [
        "token.accepted",
        "token.accepted",
        "scope.denied",
    ]


async def test_without_install_or_middleware_the_answer_is_still_safe(
    guard: BearerGuard, session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_api(guard, middleware=False, install=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        denied = await client.get("/items", headers=bearer(session_issuer, "x"))
        missing = await client.get("/items")
    assert denied.status_code == 403
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
    assert denied.json() == {
        "detail": "The access token does not grant the scope this request needs."
    }
    assert missing.status_code == 401
    assert "install(app)" in caplog.text


def test_a_decorator_under_a_router_dependency_answers_without_middleware_or_install(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    bearer_auth = BearerAuth(guard)
    router = APIRouter(dependencies=[bearer_auth.requires()])

    @router.get("/items")
    @requires_scopes("items:read")
    async def items() -> dict[str, bool]:
        return {"ok": True}

    app = FastAPI()
    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        denied = client.get("/items", headers=bearer(session_issuer, "other"))
        allowed = client.get("/items", headers=bearer(session_issuer, "items:read"))
    assert denied.status_code == 403
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
    assert 'scope="items:read"' in denied.headers["www-authenticate"]
    assert allowed.json() == {"ok": True}


def test_a_decorator_over_a_bearer_parameter_answers_without_middleware(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # The decorator's check reads the verdict the operation's own BearerAuth parameter
    # records: it ran first and found none, a 500 for every request.
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())
    loaded: list[int] = []

    def load(item_id: int) -> int:
        loaded.append(item_id)
        return item_id

    @app.get("/items/{item_id}")
    @requires_scopes("items:read")
    async def item(
        record: Annotated[int, Depends(load)],
        token: Annotated[AccessToken, bearer_auth.requires_any("items:read", "items:delete")],
    ) -> dict[str, Any]:
        return {"id": record, "sub": token.subject}

    any_token = bearer_auth.requires()  # as a default, not in Annotated

    @app.websocket("/ws")
    @requires_scopes("chat")
    async def socket(websocket: WebSocket, token: AccessToken = any_token) -> None:
        await websocket.accept()
        await websocket.send_json({"sub": token.subject})
        await websocket.close()

    with TestClient(app, raise_server_exceptions=False) as client:
        allowed = client.get("/items/3", headers=bearer(session_issuer, "items:read"))
        denied = client.get("/items/4", headers=bearer(session_issuer, "items:delete"))
        with client.websocket_connect("/ws", headers=bearer(session_issuer, "chat")) as ws:
            assert ws.receive_json() == {"sub": "erin"}
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect("/ws", headers=bearer(session_issuer, "other")),
        ):
            pass  # pragma: no cover - refused before accept
    assert allowed.json() == {"id": 3, "sub": "erin"}
    assert_refusal(denied, 403, "insufficient_scope")
    assert loaded == [3]  # the record loader still runs after the check
    assert closed.value.code == 1008


def test_a_decorator_over_a_bearer_used_only_by_a_nested_dependency(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # The decorator's check runs before the dependency that holds the BearerAuth: it found
    # no verdict, and every request, with a token or without, was answered 500.
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())

    async def current_user(token: Annotated[AccessToken, bearer_auth.requires()]) -> str:
        return token.subject or ""

    @app.get("/reports")
    @requires_scopes("reports:read")
    async def reports(user: Annotated[str, Depends(current_user)]) -> dict[str, Any]:
        token = get_access_token()
        return {"user": user, "current": None if token is None else token.subject}

    with TestClient(app, raise_server_exceptions=False) as client, capture_logs() as events:
        missing = client.get("/reports")
        under = client.get("/reports", headers=bearer(session_issuer, "other"))
        allowed = client.get("/reports", headers=bearer(session_issuer, "reports:read"))
    assert assert_refusal(missing, 401, None).endswith('scope="reports:read"')
    assert_refusal(under, 403, "insufficient_scope")
    assert allowed.json() == {"user": "erin", "current": "erin"}
    assert [event["event"] for event in events] == [
        "token.rejected",
        "token.accepted",
        "scope.denied",
        "token.accepted",  # verified once, by the check; the dependency reused it
    ]
    assert get_access_token() is None


def test_a_scope_declared_twice_is_challenged_and_audited_once(session_issuer: DevIssuer) -> None:
    # FastAPI adds up the Security scopes around a dependency, and requires() kept a name
    # given twice: the audit event and the challenge repeated it (RFC 6750 §3).
    guard = session_issuer.guard()
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())

    @app.get("/twice", dependencies=[bearer_auth.requires("a")])
    async def twice(token: Annotated[AccessToken, bearer_auth.requires("a", "b", "a")]) -> None:
        pass  # pragma: no cover

    with TestClient(app) as client, structlog.testing.capture_logs() as events:
        answer = client.get("/twice", headers=bearer(session_issuer, "a"))
    assert answer.status_code == 403
    assert answer.headers["www-authenticate"].endswith('scope="a b"')
    assert events[-1]["required_scopes"] == ["a", "b"]


@pytest.mark.parametrize("middleware", [False, True])
def test_insufficient_scope_names_every_scope_the_operation_needs(
    session_issuer: DevIssuer, middleware: bool
) -> None:
    # RFC 6750 §3: scope names "the scope necessary to access the requested resource". It
    # named only the failing check's: a client granted what a 403 named was refused by the
    # next check, and asked for the first one's scopes again (scope="a", then "b", then "a").
    guard = session_issuer.guard()  # no implications
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(
        FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)] if middleware else [])
    )

    @app.get("/siblings", dependencies=[bearer_auth.requires("a")])
    async def siblings(token: Annotated[AccessToken, bearer_auth.requires("b")]) -> None:
        pass

    @app.get("/decorated")
    @requires_scopes("c")
    async def decorated(token: Annotated[AccessToken, bearer_auth.requires("d")]) -> None:
        pass

    @app.get("/any", dependencies=[bearer_auth.requires("a"), bearer_auth.requires_any("x", "y")])
    async def any_of() -> None:
        pass

    def scope_named(path: str, *granted: str) -> str:
        answer = client.get(path, headers=bearer(session_issuer, *granted))
        assert answer.status_code == 403, (path, granted)
        return answer.headers["www-authenticate"].rpartition("scope=")[2]

    with TestClient(app) as client:
        assert scope_named("/siblings", "b") == scope_named("/siblings", "a") == '"a b"'
        assert scope_named("/decorated", "c") == scope_named("/decorated", "d") == '"d c"'
        assert scope_named("/any", "a") == '"a x y"'  # none held: any of them
        assert scope_named("/any", "y") == '"a y"'  # the alternative it holds is kept
        # the client that asks for what was named is let in
        for path, granted in [("/siblings", "a b"), ("/decorated", "d c"), ("/any", "a y")]:
            answer = client.get(path, headers=bearer(session_issuer, *granted.split()))
            assert answer.status_code == 200, path
        if not middleware:  # the dependency names them on a 401 too
            missing = client.get("/siblings")
            assert missing.headers["www-authenticate"].endswith('scope="a b"')


def test_a_decorator_over_a_nested_bearer_replaced_by_dependency_overrides(
    guard: BearerGuard, session_issuer: DevIssuer, issuer: DevIssuer
) -> None:
    # A suite replaces the app's BearerAuth with one trusting its own issuer: FastAPI runs
    # the replacement, but the decorator's check looked for the original, found none, and
    # answered every request 500. It verifies with the replacement, once.
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())

    async def current_user(token: Annotated[AccessToken, bearer_auth.requires()]) -> str:
        return token.subject or ""

    @app.get("/reports")
    @requires_scopes("reports:read")
    async def reports(user: Annotated[str, Depends(current_user)]) -> dict[str, str]:
        return {"user": user}

    app.dependency_overrides[bearer_auth] = BearerAuth(issuer.guard())
    with TestClient(app, raise_server_exceptions=False) as client, capture_logs() as events:
        missing = client.get("/reports")
        under = client.get("/reports", headers=bearer(issuer, "other"))
        allowed = client.get("/reports", headers=bearer(issuer, "reports:read"))
        original = client.get("/reports", headers=bearer(session_issuer, "reports:read"))
    assert_refusal(missing, 401, None)
    assert_refusal(under, 403, "insufficient_scope")
    assert allowed.json() == {"user": "erin"}
    assert_refusal(original, 401, "invalid_token")
    assert [event["event"] for event in events] == [
        "token.rejected",
        "token.accepted",
        "scope.denied",
        "token.accepted",
        "token.rejected",
    ]


def test_requires_any_verifies_with_the_bearer_auth_dependency_overrides_swap_in(
    guard: BearerGuard, session_issuer: DevIssuer, issuer: DevIssuer
) -> None:
    # docs/fastapi.md swaps an app's guard in a test with
    # app.dependency_overrides[bearer] = BearerAuth(issuer.guard()): requires_any (and a
    # decorator reading its verdict) kept verifying with the original, refusing every token.
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())

    @app.delete(
        "/items/{item_id}", dependencies=[bearer_auth.requires_any("items:delete", "admin")]
    )
    async def delete_item(item_id: int) -> dict[str, int]:
        return {"deleted": item_id}

    async def reader(
        token: Annotated[AccessToken, bearer_auth.requires_any("reports:read", "admin")],
    ) -> str:
        return token.subject or ""

    @app.get("/reports")
    @requires_scopes("reports:export")
    async def reports(user: Annotated[str, Depends(reader)]) -> dict[str, str]:
        return {"user": user}

    app.dependency_overrides[bearer_auth] = BearerAuth(issuer.guard())
    with TestClient(app) as client, capture_logs() as events:
        allowed = client.delete("/items/1", headers=bearer(issuer, "admin"))
        under = client.delete("/items/1", headers=bearer(issuer, "items:write"))
        original = client.delete("/items/1", headers=bearer(session_issuer, "admin"))
        both = client.get("/reports", headers=bearer(issuer, "reports:read", "reports:export"))
        no_export = client.get("/reports", headers=bearer(issuer, "reports:read"))
    assert allowed.json() == {"deleted": 1}
    assert_refusal(under, 403, "insufficient_scope")
    assert_refusal(original, 401, "invalid_token")
    assert both.json() == {"user": "erin"}
    assert_refusal(no_export, 403, "insufficient_scope")
    assert [event["event"] for event in events].count("token.accepted") == 4


def fake_user() -> str:
    """A test's replacement for a user dependency: it takes no token."""
    return "fake"


@pytest.mark.parametrize("middleware", [False, True])
@pytest.mark.parametrize("replaced", ["current_user", "bearer"])
def test_a_decorator_when_dependency_overrides_drop_the_bearer(
    guard: BearerGuard, session_issuer: DevIssuer, middleware: bool, replaced: str
) -> None:
    # A test replaced the user dependency (or the BearerAuth itself) with a function that
    # takes no token: the decorator's check found no verdict and answered every request
    # 500. The override never stands in for a token: the check verifies it with the
    # BearerAuth the operation was written with (or takes the middleware's verdict), so
    # the replacement runs for a token granting the scopes, and nothing gets in without one.
    # get_access_token(request) returns the token the check verified (docs/fastapi.md).
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(
        FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)] if middleware else [])
    )

    async def current_user(token: Annotated[AccessToken, bearer_auth.requires()]) -> str:
        # The replacement's value when the BearerAuth itself is replaced.
        return token.subject if isinstance(token, AccessToken) else str(token)

    @app.get("/reports")
    @requires_scopes("reports:read")
    async def reports(
        request: Request, user: Annotated[str, Depends(current_user)]
    ) -> dict[str, str | None]:
        token = get_access_token(request)
        return {"user": user, "sub": None if token is None else token.subject}

    app.dependency_overrides[current_user if replaced == "current_user" else bearer_auth] = (
        fake_user
    )
    with TestClient(app, raise_server_exceptions=False) as client, capture_logs() as events:
        missing = client.get("/reports")
        under = client.get("/reports", headers=bearer(session_issuer, "other"))
        allowed = client.get("/reports", headers=bearer(session_issuer, "reports:read"))
        forged_token = session_issuer.mint_forged(scopes=["reports:read"])
        forged = client.get("/reports", headers={"Authorization": f"Bearer {forged_token}"})
    assert_refusal(missing, 401, None)
    assert_refusal(under, 403, "insufficient_scope")
    assert_refusal(forged, 401, "invalid_token")
    assert allowed.json() == {"user": "fake", "sub": "erin"}
    assert [event["event"] for event in events] == [
        "token.rejected",
        "token.accepted",
        "scope.denied",
        "token.accepted",
        "token.rejected",
    ]
    assert get_access_token() is None


@pytest.mark.parametrize("included", [False, True])
def test_a_decorator_follows_dependency_overrides_changed_between_requests(
    guard: BearerGuard, session_issuer: DevIssuer, issuer: DevIssuer, included: bool
) -> None:
    # The BearerAuth the check verifies with is found once per operation while there are
    # no overrides; overrides added, changed or cleared later must still be followed. Also
    # for an included router's operation, whose overrides FastAPI takes from the app that
    # included it (the route's own provider is the router's: none).
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())

    async def current_user(token: Annotated[AccessToken, bearer_auth.requires()]) -> str:
        return token.subject or ""

    router = APIRouter() if included else app.router

    @router.get("/reports")
    @requires_scopes("reports:read")
    async def reports(user: Annotated[str, Depends(current_user)]) -> str:
        return user

    if included:
        app.include_router(router)
    ours = bearer(session_issuer, "reports:read")
    theirs = {"Authorization": f"Bearer {issuer.mint(scopes=['reports:read'], sub='tess')}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/reports", headers=ours).json() == "erin"
        assert client.get("/reports", headers=theirs).status_code == 401
        app.dependency_overrides[bearer_auth] = BearerAuth(issuer.guard())  # a test's guard
        assert client.get("/reports", headers=theirs).json() == "tess"
        assert client.get("/reports", headers=ours).status_code == 401
        app.dependency_overrides[current_user] = fake_user  # and the user replaced too
        assert client.get("/reports", headers=theirs).json() == "fake"
        app.dependency_overrides.clear()
        assert client.get("/reports", headers=ours).json() == "erin"
        assert client.get("/reports", headers=theirs).status_code == 401


def test_a_decorator_when_overrides_drop_the_user_and_swap_the_bearer(
    guard: BearerGuard, session_issuer: DevIssuer, issuer: DevIssuer
) -> None:
    # docs/fastapi.md's two overrides at once: a fake current_user, and the app's own
    # BearerAuth swapped for one trusting the test's issuer. The decorator's check verified
    # with the BearerAuth the operation was written with, ignoring the swap: the test's
    # token was refused 401 (with a real guard, its key set fetched from production).
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())

    async def current_user(token: Annotated[AccessToken, bearer_auth.requires()]) -> str:
        return token.subject or ""  # pragma: no cover - replaced

    @app.get("/team")
    @requires_scopes("team:read")
    async def team(user: Annotated[str, Depends(current_user)]) -> dict[str, str]:
        return {"user": user}

    app.dependency_overrides[bearer_auth] = BearerAuth(issuer.guard())
    app.dependency_overrides[current_user] = fake_user
    with TestClient(app, raise_server_exceptions=False) as client, capture_logs() as events:
        allowed = client.get("/team", headers=bearer(issuer, "team:read"))
        under = client.get("/team", headers=bearer(issuer, "other"))
        original = client.get("/team", headers=bearer(session_issuer, "team:read"))
    assert allowed.json() == {"user": "fake"}
    assert_refusal(under, 403, "insufficient_scope")
    assert_refusal(original, 401, "invalid_token")  # the swapped-out guard's token
    assert [event["event"] for event in events] == [
        "token.accepted",
        "token.accepted",
        "scope.denied",
        "token.rejected",
    ]


def test_a_decorator_when_an_override_takes_the_token_with_its_own_bearer(
    guard: BearerGuard, session_issuer: DevIssuer, issuer: DevIssuer
) -> None:
    # A test's user dependency taking the token with a BearerAuth of its own (its guard):
    # the decorator's check did not read what the replacement needs, and verified with the
    # BearerAuth of the dependency it replaced. The test's token was refused 401, and the
    # app's own token was verified twice (token.accepted, then token.rejected by the
    # replacement's BearerAuth): two audit events for one request.
    bearer_auth = BearerAuth(guard)
    test_bearer = BearerAuth(issuer.guard())
    app = bearer_auth.install(FastAPI())

    async def current_user(token: Annotated[AccessToken, bearer_auth.requires()]) -> str:
        return token.subject or ""  # pragma: no cover - replaced

    async def test_user(token: Annotated[AccessToken, test_bearer.requires()]) -> str:
        return f"test:{token.subject}"

    async def stacked(user: Annotated[str, Depends(current_user)]) -> str:
        return user  # pragma: no cover - refused before

    @app.get("/team")
    @requires_scopes("team:read")
    async def team(user: Annotated[str, Depends(current_user)]) -> dict[str, str]:
        return {"user": user}

    app.dependency_overrides[current_user] = test_user
    with TestClient(app, raise_server_exceptions=False) as client, capture_logs() as events:
        allowed = client.get("/team", headers=bearer(issuer, "team:read"))
        under = client.get("/team", headers=bearer(issuer, "other"))
        original = client.get("/team", headers=bearer(session_issuer, "team:read"))
        # A replacement needing what it replaced (read once, never a check looping forever):
        # nothing else of it takes a token, so the original BearerAuth verifies.
        app.dependency_overrides[current_user] = stacked
        looping = client.get("/team", headers=bearer(issuer, "team:read"))
    assert allowed.json() == {"user": "test:erin"}
    assert_refusal(under, 403, "insufficient_scope")
    assert_refusal(original, 401, "invalid_token")
    assert_refusal(looping, 401, "invalid_token")
    assert [event["event"] for event in events][:4] == [
        "token.accepted",
        "token.accepted",
        "scope.denied",
        "token.rejected",
    ]


class Catalog:
    """Path operations and a class-based dependency written as decorated methods."""

    @requires_scopes("items:read")
    async def search(self, q: str = "") -> dict[str, str]:
        return {"q": q}

    @requires_any_scope("items:write", "items:delete")
    def __call__(self, item_id: int) -> int:
        return item_id


def test_decorated_methods_are_path_operations_and_dependencies(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # The check declared first and keyword-only took self's place: inspect refused the
    # bound method's signature, and FastAPI could not register either (ValueError).
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])
    catalog = Catalog()
    app.add_api_route("/search", catalog.search)

    @app.delete("/items/{item_id}")
    async def delete(item_id: Annotated[int, Depends(catalog)]) -> dict[str, int]:
        return {"deleted": item_id}

    with TestClient(app) as client:
        found = client.get("/search?q=pen", headers=bearer(session_issuer, "items:read"))
        hidden = client.get("/search?q=pen", headers=bearer(session_issuer, "other"))
        deleted = client.delete("/items/5", headers=bearer(session_issuer, "items:delete"))
        kept = client.delete("/items/5", headers=bearer(session_issuer, "items:read"))
    assert found.json() == {"q": "pen"}
    assert deleted.json() == {"deleted": 5}
    assert_refusal(hidden, 403, "insufficient_scope")
    assert_refusal(kept, 403, "insufficient_scope")
    assert [p["name"] for p in app.openapi()["paths"]["/search"]["get"]["parameters"]] == ["q"]


written: list[int] = []


def write_record(item_id: int) -> int:
    written.append(item_id)  # a side effect no under-scoped token may cause
    return item_id


class Records:
    """A path operation written as a decorated staticmethod whose first parameter is a
    dependency."""

    @staticmethod
    @requires_scopes("items:write")
    def create(record: Annotated[int, Depends(write_record)]) -> dict[str, int]:
        return {"id": record}


def test_a_staticmethods_first_dependency_runs_after_the_check(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # A method's self is kept first; a staticmethod's first parameter was taken for self
    # and kept before the check too: its dependency wrote for an under-scoped token.
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])
    app.add_api_route("/records/{item_id}", Records.create, methods=["POST"])
    written.clear()
    with TestClient(app) as client:
        refused = client.post("/records/1", headers=bearer(session_issuer, "items:read"))
        created = client.post("/records/2", headers=bearer(session_issuer, "items:write"))
    assert_refusal(refused, 403, "insufficient_scope")
    assert created.json() == {"id": 2}
    assert written == [2]


async def test_websocket_dependency(guard: BearerGuard, session_issuer: DevIssuer) -> None:
    for middleware in (False, True):
        with TestClient(build_api(guard, middleware=middleware)) as client:
            with client.websocket_connect("/ws", headers=bearer(session_issuer, "chat")) as ws:
                assert ws.receive_json() == {"sub": "erin"}
            with (
                pytest.raises(WebSocketDisconnect) as closed,
                client.websocket_connect("/ws", headers=bearer(session_issuer, "other")),
            ):
                pass  # pragma: no cover - refused before accept
            assert closed.value.code == 1008


async def test_resource_metadata_in_the_dependency_challenges(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(
        audience=None, resource="https://api.example", realm="https://api.example"
    )
    transport = httpx.ASGITransport(app=build_api(guard, middleware=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        missing = await client.get("/items")
        denied = await client.get("/items", headers=bearer(session_issuer, "x"))
    url = "https://api.example/.well-known/oauth-protected-resource"
    assert assert_refusal(missing, 401, None) == (
        f'Bearer realm="https://api.example", resource_metadata="{url}", scope="items:read"'
    )
    assert f'resource_metadata="{url}"' in assert_refusal(denied, 403, "insufficient_scope")


@pytest.mark.parametrize("middleware", [False, True])
async def test_the_metadata_the_challenges_name_is_served(
    session_issuer: DevIssuer, middleware: bool
) -> None:
    # RFC 9728 §5.1: resource_metadata must lead to the document, with or without the
    # middleware in front (it then answers first); the same answers either way.
    guard = session_issuer.guard(audience=None, resource="https://api.example/api")
    transport = httpx.ASGITransport(app=build_api(guard, middleware=middleware))
    url = "https://api.example/.well-known/oauth-protected-resource/api"
    async with httpx.AsyncClient(transport=transport, base_url="https://api.example") as client:
        missing = await client.get("/items")
        assert f'resource_metadata="{url}"' in missing.headers["www-authenticate"]
        document = await client.get(url)
        head = await client.head(url)
        post = await client.post(url)
    assert document.status_code == 200
    assert document.json()["resource"] == "https://api.example/api"
    assert document.headers["access-control-allow-origin"] == "*"
    assert (head.status_code, head.content) == (200, b"")
    assert (post.status_code, post.headers["allow"], post.content) == (
        405,
        "GET, HEAD, OPTIONS",
        b"",
    )
    assert (
        "/.well-known/oauth-protected-resource/api"
        not in build_api(guard, middleware=middleware).openapi()["paths"]
    )


def test_install_leaves_the_apps_own_metadata_route_and_reads_the_path_literally(
    session_issuer: DevIssuer,
) -> None:
    # A route of the app's own at the metadata path, added after install (as the docs order
    # it), still answers; a resource path decoding to "{...}" names one URL, not a pattern.
    guard = session_issuer.guard(audience=None, resource="https://api.example/%7Bt:x%7D")
    app = BearerAuth(guard).install(FastAPI())

    @app.get("/.well-known/oauth-protected-resource")
    def own() -> dict[str, str]:
        return {"mine": "yes"}

    client = TestClient(app)
    assert client.get("/.well-known/oauth-protected-resource").json() == {"mine": "yes"}
    served = client.get("/.well-known/oauth-protected-resource/%7Bt:x%7D")
    assert served.json()["resource"] == "https://api.example/%7Bt:x%7D"
    assert client.get("/.well-known/oauth-protected-resource/other").status_code == 404


@pytest.mark.parametrize("middleware", [False, True])
def test_the_metadata_of_a_mounted_app_is_served_by_the_outer_app(
    session_issuer: DevIssuer, middleware: bool
) -> None:
    # RFC 9728 §3.1: the well-known path goes between the host and the resource's path, so
    # an app mounted under /api (which install() or its own middleware serve from) never
    # receives the URL its challenges name: GET answered 404 by the outer app. The outer app
    # serves it with serve_metadata(); the mounted app's other requests are unchanged.
    guard = session_issuer.guard(audience=None, resource="https://api.example/api")
    api = build_api(guard, middleware=middleware)
    outer = Starlette(routes=[Mount("/api", app=api)])
    assert serve_metadata(outer, guard) is outer
    url = "https://api.example/.well-known/oauth-protected-resource/api"
    with TestClient(outer, base_url="https://api.example") as client:
        missing = client.get("/api/items")
        assert f'resource_metadata="{url}"' in missing.headers["www-authenticate"]
        document = client.get(url)
        assert document.status_code == 200
        assert document.json()["resource"] == "https://api.example/api"
        assert client.get("/.well-known/oauth-protected-resource").status_code == 200
        assert client.post(url).status_code == 405
        assert client.get("/api/health").json() == {"ok": True}


@pytest.mark.parametrize("server_root", ["", "/x"])
@pytest.mark.parametrize("mounted", [False, True])
async def test_install_serves_no_metadata_inside_a_mount(
    session_issuer: DevIssuer, mounted: bool, server_root: str
) -> None:
    # RFC 9728 §3.1, RFC 8615 §3: a well-known path follows the host (or the server's root
    # path, uvicorn --root-path), never a mount. install() on an app mounted at /api also
    # answered /api/.well-known/oauth-protected-resource/api, a URL no client derives; it
    # now answers where BearerGuardMiddleware would, and the outer app serves the real one.
    guard = session_issuer.guard(audience=None, resource="https://api.example/api")
    api = build_api(guard, middleware=False)
    app = serve_metadata(Starlette(routes=[Mount("/api", app=api)]), guard) if mounted else api
    transport = httpx.ASGITransport(app=app, root_path=server_root)
    well_known = "/.well-known/oauth-protected-resource"
    async with httpx.AsyncClient(transport=transport, base_url="https://api.example") as client:
        for served in (f"{well_known}/api", well_known):
            document = await client.get(f"{server_root}{served}")
            assert document.status_code == 200, served
            assert document.json()["resource"] == "https://api.example/api"
        if mounted:
            for inside in (f"{well_known}/api", well_known):
                path = f"{server_root}/api{inside}"
                assert (await client.get(path)).status_code == 404, path
            assert (await client.get(f"{server_root}/api/health")).json() == {"ok": True}


def test_serve_metadata_needs_a_resource(guard: BearerGuard) -> None:
    with pytest.raises(ConfigurationError, match="resource"):
        serve_metadata(FastAPI(), guard)


# -- whole apps and routers -------------------------------------------------------------


async def test_protect_an_app_and_a_router(guard: BearerGuard, session_issuer: DevIssuer) -> None:
    bearer_auth = BearerAuth(guard)
    app = FastAPI()
    bearer_auth.protect(app)
    admin = APIRouter(prefix="/admin", dependencies=[bearer_auth.requires("admin")])

    @admin.get("/stats")
    async def stats() -> dict[str, int]:
        return {"users": 1}

    @app.get("/anything")
    async def anything() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(admin)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert_refusal(await client.get("/anything"), 401, None)
        assert (await client.get("/anything", headers=bearer(session_issuer))).status_code == 200
        assert_refusal(
            await client.get("/admin/stats", headers=bearer(session_issuer)),
            403,
            "insufficient_scope",
        )
        ok = await client.get("/admin/stats", headers=bearer(session_issuer, "admin"))
        assert ok.json() == {"users": 1}
        assert (await client.get("/docs")).status_code == 200  # FastAPI's own pages stay open


def test_protect_refuses_apps_that_already_have_operations(guard: BearerGuard) -> None:
    bearer_auth = BearerAuth(guard)
    app = FastAPI()

    @app.get("/early")
    async def early() -> None:
        pass  # pragma: no cover

    with pytest.raises(ConfigurationError, match="before adding path operations"):
        bearer_auth.protect(app)
    # A public route added first is the usual reason: the error says what to do instead.
    with pytest.raises(ConfigurationError, match="protect an APIRouter instead"):
        bearer_auth.protect(app)
    with pytest.raises(ConfigurationError, match="BearerGuard"):
        BearerAuth("not a guard")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        bearer_auth.requires("two words")
    with pytest.raises(ConfigurationError):
        bearer_auth.requires_any()


def test_a_trusted_issuers_given_to_bearer_auth_is_told_what_serves_several_issuers(
    guard: BearerGuard,
) -> None:
    # A FastAPI user with two providers reaches for BearerAuth first: the refusal must name
    # what does work with a TrustedIssuers, not only what BearerAuth wants.
    with pytest.raises(ConfigurationError, match=r"BearerGuardMiddleware.*requires_scopes"):
        BearerAuth(TrustedIssuers([guard]))  # type: ignore[arg-type]


# -- OpenAPI ----------------------------------------------------------------------------


def test_openapi_security_scopes_and_responses(guard: BearerGuard) -> None:
    schema = build_api(guard, middleware=True).openapi()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An OAuth 2.0 access token (JWT) in the Authorization header.",
    }
    paths = schema["paths"]
    assert paths["/items"]["get"]["security"] == [{"bearerAuth": ["items:read"]}]
    assert paths["/items"]["post"]["security"] == [{"bearerAuth": ["items:write"]}]
    assert paths["/items/{item_id}"]["delete"]["security"] == [
        {"bearerAuth": ["items:delete"]},
        {"bearerAuth": ["admin"]},
    ]
    assert paths["/me"]["get"]["security"] == [{"bearerAuth": []}]
    # requires_scopes behind the middleware is documented too
    assert paths["/decorated"]["get"]["security"] == [{"bearerAuth": ["reports:read"]}]
    assert "security" not in paths["/health"]["get"]
    for path, method in [("/items", "get"), ("/items/{item_id}", "delete"), ("/decorated", "get")]:
        responses = paths[path][method]["responses"]
        assert {"401", "403"} <= set(responses)
        assert responses["403"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/BearerError"
        }
        assert "WWW-Authenticate" in responses["401"]["headers"]
    assert "403" not in paths["/me"]["get"]["responses"]
    assert "401" not in paths["/health"]["get"]["responses"]
    # the handler's own parameters are unchanged; the decorator's check is not a parameter
    assert [p["name"] for p in paths["/items/{item_id}"]["delete"]["parameters"]] == ["item_id"]
    assert "parameters" not in paths["/decorated"]["get"]


@pytest.mark.parametrize("sync", [False, True])
def test_stacked_scope_decorators_each_check_their_scopes(
    session_issuer: DevIssuer, sync: bool
) -> None:
    guard = session_issuer.guard()  # no implications: admin grants only admin
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])
    BearerAuth(guard).install(app)

    if sync:

        @app.delete("/items/{item_id}")
        @requires_scopes("admin")
        @requires_any_scope("items:write", "items:delete")
        def delete_sync(item_id: int) -> dict[str, int]:
            return {"deleted": item_id}

    else:

        @app.delete("/items/{item_id}")
        @requires_scopes("admin")
        @requires_any_scope("items:write", "items:delete")
        async def delete(item_id: int) -> dict[str, int]:
            return {"deleted": item_id}

    with TestClient(app) as client:
        for scopes, status in [
            (["items:delete"], 403),  # lacks the outer decorator's admin
            (["admin"], 403),  # lacks the inner one's alternatives
            (["admin", "items:write"], 200),
        ]:
            response = client.delete("/items/7", headers=bearer(session_issuer, *scopes))
            assert response.status_code == status, (scopes, response.text)
        assert response.json() == {"deleted": 7}
    operation = app.openapi()["paths"]["/items/{item_id}"]["delete"]
    assert operation["security"] == [
        {"bearerAuth": ["admin", "items:write"]},
        {"bearerAuth": ["admin", "items:delete"]},
    ]
    assert [p["name"] for p in operation["parameters"]] == ["item_id"]


def test_openapi_any_of_combines_with_all_of(guard: BearerGuard) -> None:
    bearer_auth = BearerAuth(guard, scheme_name="jwt")
    app = bearer_auth.install(FastAPI())
    groups = [bearer_auth.requires_any(f"g{n}a", f"g{n}b") for n in range(7)]

    @app.get("/combined", dependencies=[bearer_auth.requires("base"), groups[0], groups[1]])
    async def combined() -> None:
        pass  # pragma: no cover

    @app.get("/many", dependencies=groups)
    async def many() -> None:
        pass  # pragma: no cover

    paths = app.openapi()["paths"]
    assert paths["/combined"]["get"]["security"] == [
        {"jwt": ["base", "g0a", "g1a"]},
        {"jwt": ["base", "g0a", "g1b"]},
        {"jwt": ["base", "g0b", "g1a"]},
        {"jwt": ["base", "g0b", "g1b"]},
    ]
    # 2**7 alternatives are too many to list: every scope that may be needed is named
    (only,) = paths["/many"]["get"]["security"]
    assert len(only["jwt"]) == 14
    assert app.openapi() is app.openapi()


@requires_scopes("items:read", "items:audit")
async def load_audited(item_id: int) -> int:
    return item_id


@requires_scopes("admin")
@requires_any_scope("items:write", "items:delete")
async def load_editable(item_id: int) -> int:
    return item_id


def test_openapi_documents_what_dependencies_check(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # A decorated dependency's all-of scopes were listed as alternatives, only the outermost
    # of stacked ones was, and a requires_any dropped the scopes declared around it.
    bearer_auth = BearerAuth(guard, scheme_name="jwt")
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])
    bearer_auth.install(app)

    async def reader(token: Annotated[AccessToken, bearer_auth.requires_any("a", "b")]) -> str:
        return token.subject or ""

    @app.get("/audited/{item_id}")
    async def audited(item_id: Annotated[int, Depends(load_audited)]) -> int:
        return item_id

    @app.get("/editable/{item_id}")
    async def editable(item_id: Annotated[int, Depends(load_editable)]) -> int:
        return item_id

    @app.get("/nested")
    async def nested(sub: Annotated[str, Security(reader, scopes=["c"])]) -> str:
        return sub

    @app.delete("/catalog/{item_id}")
    async def uncatalog(item_id: Annotated[int, Depends(Catalog())]) -> int:
        return item_id

    paths = app.openapi()["paths"]
    assert paths["/audited/{item_id}"]["get"]["security"] == [
        {"jwt": ["items:read", "items:audit"]}
    ]
    assert paths["/editable/{item_id}"]["get"]["security"] == [
        {"jwt": ["admin", "items:write"]},
        {"jwt": ["admin", "items:delete"]},
    ]
    assert paths["/nested"]["get"]["security"] == [{"jwt": ["c", "a"]}, {"jwt": ["c", "b"]}]
    assert paths["/catalog/{item_id}"]["delete"]["security"] == [
        {"jwt": ["items:write"]},
        {"jwt": ["items:delete"]},
    ]
    # as the document now says: each alternative alone is let in, one scope less is not
    with TestClient(app) as client:
        for path, granted, status in [
            ("/audited/1", ["items:read"], 403),
            ("/audited/1", ["items:read", "items:audit"], 200),
            ("/editable/1", ["items:delete"], 403),
            ("/editable/1", ["admin", "items:delete"], 200),
            ("/nested", ["a"], 403),
            ("/nested", ["c", "b"], 200),
        ]:
            response = client.get(path, headers=bearer(session_issuer, *granted))
            assert response.status_code == status, (path, granted)


class Ledger:
    """A class-based dependency whose __init__ carries the scope decorator."""

    @requires_scopes("ledger:read")
    def __init__(self, record: Annotated[int, Depends(write_record)]) -> None:
        self.record = record


def test_a_class_dependency_decorated_on_init_is_documented_and_named(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # FastAPI calls the class; its scopes were looked for on type.__call__, so the
    # document said any token would do and the 401 challenge named no scope.
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())

    @app.get("/ledger/{item_id}")
    async def ledger(
        entry: Annotated[Ledger, Depends()],
        token: Annotated[AccessToken, bearer_auth.requires()],
    ) -> int:
        return entry.record

    operation = app.openapi()["paths"]["/ledger/{item_id}"]["get"]
    assert operation["security"] == [{"bearerAuth": ["ledger:read"]}]
    assert "403" in operation["responses"]
    written.clear()
    with TestClient(app) as client:
        missing = client.get("/ledger/1")
        denied = client.get("/ledger/1", headers=bearer(session_issuer, "other"))
        read = client.get("/ledger/2", headers=bearer(session_issuer, "ledger:read"))
    assert assert_refusal(missing, 401, None).endswith('scope="ledger:read"')
    assert assert_refusal(denied, 403, "insufficient_scope").endswith('scope="ledger:read"')
    assert read.json() == 2
    assert written == [2]


def test_openapi_oauth2_flows_from_the_issuer_metadata(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    metadata = session_issuer.metadata()
    flows = oauth2_flows(
        metadata,
        scopes={"items:read": "Read items"},
        flows=["authorizationCode", "clientCredentials"],
    )
    bearer_auth = BearerAuth(guard, oauth2_flows=flows)
    app = bearer_auth.install(FastAPI())

    @app.get("/items")
    async def items(token: Annotated[AccessToken, bearer_auth.requires("items:read")]) -> None:
        pass  # pragma: no cover

    scheme = app.openapi()["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "oauth2"
    assert scheme["flows"]["authorizationCode"] == {
        "authorizationUrl": f"{session_issuer.url}/authorize",
        "tokenUrl": f"{session_issuer.url}/token",
        "scopes": {"items:read": "Read items"},
    }
    assert scheme["flows"]["clientCredentials"]["tokenUrl"] == f"{session_issuer.url}/token"
    with pytest.raises(ConfigurationError, match="authorization_endpoint"):
        oauth2_flows({**metadata, "authorization_endpoint": None})
    with pytest.raises(ConfigurationError, match="token_endpoint"):
        oauth2_flows({}, flows=["clientCredentials"])
    with pytest.raises(ConfigurationError, match="unsupported flow"):
        oauth2_flows(metadata, scopes=["a"], flows=["implicit"])


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"scopes": "items:read"}, "scopes"),  # was the scopes i, t, e, m, s, :, r, a, d
        ({"scopes": ["items:read write"]}, "invalid scope name"),
        ({"flows": "clientCredentials"}, "flows"),  # was "unsupported flow 'c'"
        ({"flows": []}, "flows"),  # was a scheme with no flow to log in with
    ],
)
def test_oauth2_flows_refuses_a_string_for_a_list(
    session_issuer: DevIssuer, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        oauth2_flows(session_issuer.metadata(), **options)
    assert oauth2_flows(session_issuer.metadata(), scopes=("items:read",)).authorizationCode


def test_openapi_other_security_dependencies_are_required_with_the_token(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # FastAPI lists one requirement object per security dependency, which OpenAPI reads as
    # "any one of them": an API key or the token. Every dependency runs, so both are needed.
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())
    api_key = APIKeyHeader(name="X-API-Key")
    tenant = APIKeyHeader(name="X-Tenant", scheme_name="tenantKey", auto_error=False)

    @app.get("/keyed")
    def keyed(
        key: Annotated[str, Security(api_key)],
        token: Annotated[AccessToken, bearer_auth.requires("a")],
    ) -> dict[str, str]:
        return {"key": key}

    @app.get("/keyed-any", dependencies=[Security(api_key), bearer_auth.requires_any("a", "b")])
    def keyed_any() -> None:
        pass  # pragma: no cover

    @app.get("/tenant")
    def tenant_optional(
        tenant_id: Annotated[str | None, Security(tenant)],
        token: Annotated[AccessToken, bearer_auth.requires()],
    ) -> None:
        pass  # pragma: no cover

    @app.get("/decorated", dependencies=[Security(api_key)])
    @requires_scopes("r")
    def decorated() -> None:
        pass  # pragma: no cover

    other = BearerAuth(guard, scheme_name="other")
    other.install(app)

    @app.get("/two-schemes", dependencies=[bearer_auth.requires_any("a", "b")])
    def two_schemes(token: Annotated[AccessToken, other.requires("c")]) -> None:
        pass  # pragma: no cover

    paths = app.openapi()["paths"]
    assert paths["/keyed"]["get"]["security"] == [{"bearerAuth": ["a"], "APIKeyHeader": []}]
    assert paths["/keyed-any"]["get"]["security"] == [
        {"bearerAuth": ["a"], "APIKeyHeader": []},
        {"bearerAuth": ["b"], "APIKeyHeader": []},
    ]
    # A scheme that lets requests without its credentials through is an option, not a need.
    assert paths["/tenant"]["get"]["security"] == [
        {"bearerAuth": []},
        {"bearerAuth": [], "tenantKey": []},
    ]
    assert paths["/decorated"]["get"]["security"] == [{"bearerAuth": ["r"], "APIKeyHeader": []}]
    # Each BearerAuth names its own any-of groups; both are needed.
    assert paths["/two-schemes"]["get"]["security"] == [
        {"bearerAuth": ["a"], "other": ["c"]},
        {"bearerAuth": ["b"], "other": ["c"]},
    ]
    # as the document says: the token alone, or the key alone, is not let in
    with TestClient(app) as client:
        token = bearer(session_issuer, "a")
        assert client.get("/keyed", headers=token).status_code in {401, 403}
        assert client.get("/keyed", headers={"X-API-Key": "k"}).status_code == 401
        both = client.get("/keyed", headers={**token, "X-API-Key": "k"})
        assert both.json() == {"key": "k"}


def test_openapi_oauth2_flows_offer_every_scope_operations_require(guard: BearerGuard) -> None:
    flows = oauth2_flows(
        {
            "authorization_endpoint": "https://as.example/a",
            "token_endpoint": "https://as.example/t",
        },
        scopes={"b": "Read B"},
    )
    bearer_auth = BearerAuth(guard, oauth2_flows=flows)
    app = bearer_auth.install(FastAPI())

    @app.get("/x", dependencies=[bearer_auth.requires("a", "b"), bearer_auth.requires_any("c")])
    def x() -> None:
        pass  # pragma: no cover

    scheme = app.openapi()["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["flows"]["authorizationCode"]["scopes"] == {"b": "Read B", "a": "a", "c": "c"}


class BearerError(BaseModel):
    code: int


def test_openapi_keeps_the_apps_own_schema_named_like_the_error_body(guard: BearerGuard) -> None:
    # The RFC 6750 body's schema replaced an app's own model of the same name: the
    # operation's 200 answer was documented as an RFC 6750 error.
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())

    @app.get("/x", dependencies=[bearer_auth.requires("a")])
    def x() -> BearerError:
        return BearerError(code=1)  # pragma: no cover

    schema = app.openapi()
    schemas = schema["components"]["schemas"]
    assert schemas["BearerError"]["properties"] == {"code": {"title": "Code", "type": "integer"}}
    responses = schema["paths"]["/x"]["get"]["responses"]
    ref = responses["401"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == responses["403"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.removeprefix("#/components/schemas/")
    assert name != "BearerError"
    assert schemas[name]["required"] == ["error", "error_description"]


def test_swagger_ui_is_served(guard: BearerGuard) -> None:
    with TestClient(build_api(guard, middleware=False)) as client:
        assert "swagger-ui" in client.get("/docs").text
        assert client.get("/openapi.json").json()["paths"]["/items"]["get"]["security"]


def test_protect_refuses_apps_with_included_routers(guard: BearerGuard) -> None:
    router = APIRouter()

    @router.get("/included")
    async def included() -> None:
        pass  # pragma: no cover

    app = FastAPI()
    app.include_router(router)
    with pytest.raises(ConfigurationError, match="before adding path operations"):
        BearerAuth(guard).protect(app)


def test_protect_refuses_apps_and_routers_with_websocket_routes(guard: BearerGuard) -> None:
    # A websocket route takes the router's dependencies when it is added, as a path
    # operation does: one added before protect() would accept handshakes without a token.
    app = FastAPI()

    @app.websocket("/early")
    async def early(websocket: WebSocket) -> None:
        pass  # pragma: no cover

    with pytest.raises(ConfigurationError, match="before adding path operations"):
        BearerAuth(guard).protect(app)
    router = APIRouter()

    @router.websocket("/early")
    async def routed(websocket: WebSocket) -> None:
        pass  # pragma: no cover

    with pytest.raises(ConfigurationError, match="before adding path operations"):
        BearerAuth(guard).protect(router)
    including = FastAPI()
    including.include_router(router)
    with pytest.raises(ConfigurationError, match="before adding path operations"):
        BearerAuth(guard).protect(including)


def test_protect_refuses_apps_with_a_router_included_before_its_operations(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # FastAPI gives an included router the including one's dependencies as they are when it
    # is included: an operation added to it after protect() was served without a token.
    router = APIRouter(prefix="/later")
    app = FastAPI()
    app.include_router(router)
    with pytest.raises(ConfigurationError, match="before adding path operations"):
        BearerAuth(guard).protect(app)
    outer = APIRouter()
    outer.include_router(router)
    with pytest.raises(ConfigurationError, match="before adding path operations"):
        BearerAuth(guard).protect(outer)


def test_openapi_documents_included_routers(guard: BearerGuard) -> None:
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())
    inner = APIRouter(prefix="/inner", dependencies=[bearer_auth.requires_any("a", "b")])

    @inner.get("/x")
    async def x() -> None:
        pass  # pragma: no cover

    outer = APIRouter(prefix="/outer")
    outer.include_router(inner)
    app.include_router(outer)
    operation = app.openapi()["paths"]["/outer/inner/x"]["get"]
    assert operation["security"] == [{"bearerAuth": ["a"]}, {"bearerAuth": ["b"]}]
    assert {"401", "403"} <= set(operation["responses"])


@pytest.mark.parametrize("placement", ["wrapping", "mounted"])
@pytest.mark.parametrize("install", [False, True])
def test_refusals_when_the_middleware_is_outside_the_fastapi_app(
    guard: BearerGuard, session_issuer: DevIssuer, placement: str, install: bool
) -> None:
    # The middleware wrapping the app, or in front of a Mount holding it: the app's own
    # ServerErrorMiddleware sees a dependency's refusal before the middleware does.
    bearer_auth = BearerAuth(guard)
    api = FastAPI()
    if install:
        bearer_auth.install(api)

    @api.get("/items")
    @requires_scopes("items:read")
    async def items() -> dict[str, bool]:
        return {"ok": True}

    @api.get("/me")
    async def me(token: Annotated[AccessToken, bearer_auth.requires("admin")]) -> dict[str, bool]:
        return {"ok": True}

    app: Any
    prefix = ""
    if placement == "wrapping":
        app = BearerGuardMiddleware(api, guard=guard)
    else:
        prefix = "/api"
        app = Starlette(
            routes=[Mount(prefix, app=api)],
            middleware=[Middleware(BearerGuardMiddleware, guard=guard)],
        )
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ("/items", "/me"):
            denied = client.get(prefix + path, headers=bearer(session_issuer, "other"))
            assert denied.status_code == 403, (path, denied.text)
            assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
            if install:
                assert denied.json()["error"] == "insufficient_scope"
        allowed = client.get(prefix + "/items", headers=bearer(session_issuer, "items:read"))
    assert allowed.json() == {"ok": True}


def test_without_middleware_usage_monitoring_counts_the_client_address(
    session_issuer: DevIssuer,
) -> None:
    guard = session_issuer.guard(
        usage=MemoryUsageMonitor(UsagePolicy(max_addresses_per_token=1, action="reject"))
    )
    app = build_api(guard, middleware=False)
    headers = bearer(session_issuer)
    with capture_logs() as events:
        with TestClient(app, client=("198.51.100.7", 4000)) as here:
            assert here.get("/me", headers=headers).status_code == 200
        with TestClient(app, client=("203.0.113.50", 4000)) as elsewhere:
            replayed = elsewhere.get("/me", headers=headers)
    assert_refusal(replayed, 401, "invalid_token")
    anomaly = next(event for event in events if event["event"] == "token.anomaly")
    assert (anomaly["method"], anomaly["path"], anomaly["client"]) == ("GET", "/me", "203.0.113.50")


def test_installing_twice_documents_any_of_once(guard: BearerGuard) -> None:
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())
    bearer_auth.protect(app)  # installs again
    BearerAuth(guard).install(app)  # the same scheme name

    @app.get("/x", dependencies=[bearer_auth.requires_any("a", "b")])
    async def x() -> None:
        pass  # pragma: no cover

    @app.get("/y")
    @requires_any_scope("c", "d")
    async def y() -> None:
        pass  # pragma: no cover

    paths = app.openapi()["paths"]
    assert paths["/x"]["get"]["security"] == [{"bearerAuth": ["a"]}, {"bearerAuth": ["b"]}]
    assert paths["/y"]["get"]["security"] == [{"bearerAuth": ["c"]}, {"bearerAuth": ["d"]}]


async def test_without_middleware_the_token_does_not_outlive_its_request(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # httpx.ASGITransport serves every request in the caller's task, as a server may serve
    # several requests in one: the next request must not see this one's token.
    app = build_api(guard, middleware=False)

    @app.get("/whoami")
    async def whoami() -> str | None:
        token = get_access_token()
        return None if token is None else token.subject

    @app.get("/unprotected")
    @requires_scopes("items:read")
    async def unprotected() -> str:
        return "served"  # pragma: no cover - no BearerAuth: the decorator fails loudly

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/me", headers=bearer(session_issuer, "items:read"))).is_success
        assert (await client.get("/items", headers=bearer(session_issuer, "items:read"))).is_success
        assert (await client.get("/whoami")).json() is None
        assert (await client.get("/unprotected")).status_code == 500
    assert get_access_token() is None


def test_the_dependency_alone_checks_dpop_proofs(session_issuer: DevIssuer) -> None:
    # docs/migration.md: with dpop=DPoPPolicy() the dependency accepts DPoP-bound tokens
    # (RFC 9449 §7.1), each with its proof, as the middleware does; none without one.
    from bearerguard.dpop import DPoPPolicy
    from tests.test_dpop import Holder

    holder = Holder()
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy())
    bearer = BearerAuth(guard)
    app = bearer.install(FastAPI())

    @app.get("/private")
    async def private(token: Annotated[AccessToken, bearer.requires()]) -> dict[str, Any]:
        return {"sub": token.subject}

    token = session_issuer.mint(cnf={"jkt": holder.jkt})
    with TestClient(app) as client, capture_logs() as logged:
        proof = holder.proof(token, url="http://testserver/private")
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        assert client.get("/private", headers=headers).json() == {"sub": "user-1"}
        replayed = client.get("/private", headers=headers)
        assert replayed.json()["error"] == "invalid_dpop_proof"
        stolen = client.get("/private", headers={"Authorization": f"Bearer {token}"})
        assert stolen.status_code == 401
    decisions = [(e["event"], e.get("binding")) for e in logged if e["event"].startswith("token.")]
    assert decisions == [
        ("token.accepted", "dpop"),
        ("token.rejected", "dpop"),
        ("token.rejected", "bearer"),
    ]


def test_the_dependency_alone_audits_a_certificate_refusal_as_mtls(
    session_issuer: DevIssuer,
) -> None:
    # A token bound both ways (RFC 9449, RFC 8705 §3), sent with the DPoP scheme and a good
    # proof but no client certificate: the audit names the binding that refused it.
    from bearerguard.dpop import DPoPPolicy
    from bearerguard.mtls import CertificateBinding
    from tests.test_dpop import Holder
    from tests.test_mtls import issue

    holder = Holder()
    alice = issue("alice", issue("ca"))
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(), mtls=CertificateBinding())
    bearer = BearerAuth(guard)
    app = bearer.install(FastAPI())

    @app.get("/private")
    async def private(token: Annotated[AccessToken, bearer.requires()]) -> dict[str, Any]:
        return {"sub": token.subject}  # pragma: no cover - refused before

    token = session_issuer.mint(cnf={"x5t#S256": alice.thumbprint, "jkt": holder.jkt})
    with TestClient(app) as client, capture_logs() as logged:
        proof = holder.proof(token, url="http://testserver/private")
        response = client.get("/private", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert response.status_code == 401
    bearer_part, _, dpop_part = response.headers["www-authenticate"].partition(", DPoP ")
    assert 'error="invalid_token"' in dpop_part
    assert "error=" not in bearer_part
    assert [(e["event"], e["reason"], e["binding"]) for e in logged] == [
        ("token.rejected", "certificate_binding", "mtls")
    ]


def test_security_scopes_no_challenge_can_carry_answer_a_plain_401(guard: BearerGuard) -> None:
    bearer = BearerAuth(guard)
    app = bearer.install(FastAPI())

    @app.get("/a")
    def read(token: Annotated[AccessToken, Security(bearer, scopes=["读取"])]) -> dict[str, str]:
        return {}  # pragma: no cover

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/a")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer realm=")


def test_dependency_takes_the_trusted_issuers_middlewares_verdict() -> None:
    """BearerGuardMiddleware(guard=TrustedIssuers) in front of BearerAuth(one of its guards):
    the request is decided once (one audit event), not verified again by the dependency."""
    from bearerguard.issuers import TrustedIssuers
    from bearerguard.testing import audit_events

    with (
        DevIssuer(audience="api://one", path="/one") as one,
        DevIssuer(audience="api://two", path="/two") as two,
    ):
        first, second = one.guard(), two.guard()
        bearer = BearerAuth(first)
        app = FastAPI()

        @app.get("/items")
        def items(token: Annotated[AccessToken, Security(bearer)]) -> dict[str, str]:
            return {"sub": token.subject}

        app.add_middleware(BearerGuardMiddleware, guard=TrustedIssuers([first, second]))
        with TestClient(app) as client, audit_events() as events:
            answer = client.get("/items", headers={"Authorization": f"Bearer {one.mint()}"})
            assert answer.status_code == 200
            assert events.names == ["token.accepted"]
            # The other issuer's token is still this dependency's to judge: refused.
            answer = client.get("/items", headers={"Authorization": f"Bearer {two.mint()}"})
            assert answer.status_code == 401


def test_openapi_documents_the_token_the_middleware_requires(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # Behind BearerGuardMiddleware an operation without BearerAuth or a scope decorator
    # needs a token all the same, but the document said nothing: Swagger UI's "Authorize"
    # sent none, and every "Try it out" was answered 401.
    bearer_auth = BearerAuth(guard)
    public = ["/health", "/files/*"]
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard, public_paths=public)])
    partner_key = APIKeyHeader(name="X-Partner-Key")

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/files/{name}")
    async def file(name: str) -> str:
        return name  # pragma: no cover

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/reports")
    @requires_scopes("reports:read")
    async def reports() -> list[str]:
        return []  # pragma: no cover

    @app.get("/me")
    async def me(token: Annotated[AccessToken, bearer_auth.requires("profile")]) -> None:
        pass  # pragma: no cover

    @app.get("/partner", dependencies=[Security(partner_key)])
    async def partner() -> None:
        pass  # pragma: no cover

    bearer_auth.install(app)
    assert "security" not in app.openapi()["paths"]["/plain"]["get"]  # the middleware unsaid
    assert bearer_auth.document_middleware(app) is app  # reads the middleware's public paths
    schema = app.openapi()
    paths = schema["paths"]
    assert paths["/plain"]["get"]["security"] == [{"bearerAuth": []}]
    assert "401" in paths["/plain"]["get"]["responses"]
    assert "403" not in paths["/plain"]["get"]["responses"]  # no scope to lack
    assert paths["/partner"]["get"]["security"] == [{"bearerAuth": [], "APIKeyHeader": []}]
    assert paths["/reports"]["get"]["security"] == [{"bearerAuth": ["reports:read"]}]
    assert paths["/me"]["get"]["security"] == [{"bearerAuth": ["profile"]}]
    for path in ["/health", "/files/{name}"]:
        assert "security" not in paths[path]["get"], path
        assert "401" not in paths[path]["get"]["responses"], path
    assert set(schema["components"]["securitySchemes"]) == {"bearerAuth", "APIKeyHeader"}
    assert app.openapi() is schema
    bearer_auth.document_middleware(app)  # again: nothing changes
    assert app.openapi()["paths"]["/plain"]["get"]["security"] == [{"bearerAuth": []}]
    with TestClient(app) as client:  # what the document says is what the middleware does
        assert_refusal(client.get("/plain"), 401, None)
        assert client.get("/plain", headers=bearer(session_issuer)).status_code == 200
        assert client.get("/health").status_code == 200


def test_openapi_documents_a_middleware_in_front_of_the_app(guard: BearerGuard) -> None:
    # A middleware wrapping the app from outside is not among its middleware: its public
    # paths are given. Without them there is nothing to read, which is said at once.
    bearer_auth = BearerAuth(guard, scheme_name="token")
    app = FastAPI()

    @app.get("/status")
    async def status() -> None:
        pass  # pragma: no cover

    @app.get("/orders")
    async def orders() -> None:
        pass  # pragma: no cover

    with pytest.raises(ConfigurationError, match="public_paths"):
        bearer_auth.document_middleware(app)
    with pytest.raises(ConfigurationError, match="query string"):
        bearer_auth.document_middleware(app, public_paths=["/status?verbose=1"])
    with pytest.raises(ConfigurationError, match="a list of paths"):
        document_middleware(app, public_paths="/status")
    served = BearerGuardMiddleware(app, guard=guard, public_paths=["/status"])
    bearer_auth.document_middleware(app, public_paths=["/status"])
    schema = app.openapi()
    assert schema["paths"]["/orders"]["get"]["security"] == [{"token": []}]
    assert "security" not in schema["paths"]["/status"]["get"]
    assert schema["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert served.app is app


def test_openapi_documents_an_app_mounted_behind_the_middleware(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # The middleware on the outer app matches its public paths with the mount's prefix
    # (/api/health); the mounted app's document has its own paths (/health), so its public
    # paths are given as it sees them. Given with the prefix, as the docs said ("the
    # middleware's"), /health was documented as needing a token it does not need.
    api = FastAPI()

    @api.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @api.get("/orders")
    async def orders() -> list[str]:
        return []

    outer = FastAPI(
        middleware=[
            Middleware(
                BearerGuardMiddleware,
                guard=guard,
                public_paths=["/api/health", "/api/openapi.json"],
            )
        ]
    )
    outer.mount("/api", api)
    BearerAuth(guard).document_middleware(api, public_paths=["/health", "/openapi.json"])
    with TestClient(outer) as client:
        schema = client.get("/api/openapi.json").json()
        assert schema["servers"] == [{"url": "/api"}]
        paths = schema["paths"]
        assert "security" not in paths["/health"]["get"]
        assert client.get("/api/health").status_code == 200  # as documented
        assert paths["/orders"]["get"]["security"] == [{"bearerAuth": []}]
        assert_refusal(client.get("/api/orders"), 401, None)
        assert client.get("/api/orders", headers=bearer(session_issuer)).json() == []


def test_openapi_documents_a_trusted_issuers_middleware_without_a_bearer_auth() -> None:
    # BearerAuth needs one BearerGuard: behind BearerGuardMiddleware(guard=TrustedIssuers),
    # nothing could document the token the middleware requires. The module's
    # document_middleware needs no guard; BearerAuth's method is the same with its scheme.
    from bearerguard.fastapi import document_middleware

    with (
        DevIssuer(audience="api://one", path="/one") as one,
        DevIssuer(audience="api://two", path="/two") as two,
    ):
        trusted = TrustedIssuers([one.guard(), two.guard()])
        app = FastAPI(
            middleware=[Middleware(BearerGuardMiddleware, guard=trusted, public_paths=["/health"])]
        )

        @app.get("/health")
        async def health() -> dict[str, bool]:
            return {"ok": True}

        @app.get("/orders")
        async def orders() -> list[str]:
            return []

        @app.get("/reports")
        @requires_scopes("reports:read")
        async def reports() -> list[str]:
            return []

        assert document_middleware(app) is app  # the middleware's public paths, read
        schema = app.openapi()
        paths = schema["paths"]
        assert paths["/orders"]["get"]["security"] == [{"bearerAuth": []}]
        assert "401" in paths["/orders"]["get"]["responses"]
        assert paths["/reports"]["get"]["security"] == [{"bearerAuth": ["reports:read"]}]
        assert {"401", "403"} <= set(paths["/reports"]["get"]["responses"])
        assert "security" not in paths["/health"]["get"]
        assert schema["components"]["securitySchemes"] == {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An OAuth 2.0 access token (JWT) in the Authorization header.",
            }
        }
        document_middleware(app)  # again: nothing changes
        assert app.openapi()["paths"]["/orders"]["get"]["security"] == [{"bearerAuth": []}]
        with TestClient(app) as client:  # what the document says is what the middleware does
            assert client.get("/orders").status_code == 401
            for issuer in (one, two):
                token = {"Authorization": f"Bearer {issuer.mint(scopes=['reports:read'])}"}
                assert client.get("/orders", headers=token).json() == []
                assert client.get("/reports", headers=token).json() == []
            assert client.get("/health").status_code == 200

    # A middleware in front of the app: its public paths given; a scheme of one's own.
    outside = FastAPI()

    @outside.get("/status")
    async def status() -> None:
        pass  # pragma: no cover

    @outside.get("/orders")
    async def outside_orders() -> None:
        pass  # pragma: no cover

    with pytest.raises(ConfigurationError, match="public_paths"):
        document_middleware(outside)
    flows = oauth2_flows(
        {"token_endpoint": "https://issuer.example/token"}, flows=["clientCredentials"]
    )
    document_middleware(outside, public_paths=["/status"], scheme_name="token", oauth2_flows=flows)
    schema = outside.openapi()
    assert schema["paths"]["/orders"]["get"]["security"] == [{"token": []}]
    assert "security" not in schema["paths"]["/status"]["get"]
    assert schema["components"]["securitySchemes"]["token"]["type"] == "oauth2"


def test_a_generator_of_public_paths_is_read_once_for_the_middleware_and_the_document(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # A generator given as public_paths was read by whichever came first, the document or
    # the middleware (built on the first request), and the other saw no public path:
    # /health then needed a token, or was documented as needing one.
    app = FastAPI(
        middleware=[
            Middleware(
                BearerGuardMiddleware,
                guard=guard,
                public_paths=(path for path in ["/health", "/openapi.json"]),
            )
        ]
    )

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/orders")
    async def orders() -> list[str]:
        return []

    bearer_auth = BearerAuth(guard)
    bearer_auth.document_middleware(app)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert_refusal(client.get("/orders"), 401, None)
        assert client.get("/orders", headers=bearer(session_issuer)).json() == []
        paths = client.get("/openapi.json").json()["paths"]
    assert "security" not in paths["/health"]["get"]
    assert paths["/orders"]["get"]["security"] == [{"bearerAuth": []}]


def test_a_generator_of_public_paths_the_middleware_read_is_not_documented_as_empty(
    guard: BearerGuard,
) -> None:
    # Documented after the app served a request, the generator is spent: the document would
    # say every path needs a token. Said at once instead.
    app = FastAPI(
        middleware=[
            Middleware(BearerGuardMiddleware, guard=guard, public_paths=(p for p in ["/health"]))
        ]
    )

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
    with pytest.raises(ConfigurationError, match="public_paths"):
        BearerAuth(guard).document_middleware(app)


def test_openapi_documents_the_400_and_503_a_protected_operation_answers() -> None:
    # Malformed credentials (400 invalid_request) and keys that cannot be had (503, fail
    # closed) are answers of every operation that needs a token, with the RFC 6750 body,
    # as 401 and 403 are; they were missing from the document.
    issuer = DevIssuer().start()
    guard = issuer.guard()
    bearer_auth = BearerAuth(guard)
    app = bearer_auth.install(FastAPI())

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/notes")
    async def notes(token: Annotated[AccessToken, bearer_auth.requires("notes:read")]) -> None:
        pass  # pragma: no cover

    paths = app.openapi()["paths"]
    responses = paths["/notes"]["get"]["responses"]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/BearerError"}}}
    assert responses["400"]["content"] == responses["503"]["content"] == error
    assert "WWW-Authenticate" in responses["400"]["headers"]  # error="invalid_request"
    assert "Retry-After" in responses["503"]["headers"]
    assert not {"400", "503"} & set(paths["/health"]["get"]["responses"])
    token = issuer.mint(scopes=["notes:read"])
    issuer.stop()  # the guard has no keys yet, and cannot fetch them now
    with TestClient(app) as client:
        malformed = client.get("/notes", headers={"Authorization": "Bearer a b"})
        assert malformed.status_code == 400
        assert malformed.json()["error"] == "invalid_request"
        unavailable = client.get("/notes", headers={"Authorization": f"Bearer {token}"})
        assert unavailable.status_code == 503
        assert set(unavailable.json()) == {"error", "error_description"}
        assert unavailable.headers["retry-after"].isdigit()


def test_openapi_offers_openid_connect_beside_the_bearer_scheme(session_issuer: DevIssuer) -> None:
    # openid_connect=True: the issuer's OpenID Connect discovery document, where the guard
    # discovers its keys, is offered as an openIdConnect scheme (Swagger UI logs in with
    # it) beside the HTTP bearer one (a token pasted), with the same scopes.
    guard = session_issuer.guard()
    bearer_auth = BearerAuth(guard, openid_connect=True)
    app = bearer_auth.install(FastAPI())

    @app.get("/notes")
    async def notes(token: Annotated[AccessToken, bearer_auth.requires("notes:read")]) -> str:
        return token.subject or ""

    @app.delete(
        "/notes/{note_id}", dependencies=[bearer_auth.requires_any("notes:delete", "admin")]
    )
    async def delete_note(note_id: int) -> None:
        pass  # pragma: no cover

    @app.get("/health")
    async def health() -> None:
        pass  # pragma: no cover

    schema = app.openapi()
    schemes = schema["components"]["securitySchemes"]
    discovery = f"{session_issuer.url}/.well-known/openid-configuration"
    assert schemes["openIdConnect"]["type"] == "openIdConnect"
    assert schemes["openIdConnect"]["openIdConnectUrl"] == discovery
    assert schemes["bearerAuth"]["type"] == "http"  # kept: a token may still be pasted
    paths = schema["paths"]
    assert paths["/notes"]["get"]["security"] == [
        {"bearerAuth": ["notes:read"]},
        {"openIdConnect": ["notes:read"]},
    ]
    assert paths["/notes/{note_id}"]["delete"]["security"] == [
        {"bearerAuth": ["notes:delete"]},
        {"bearerAuth": ["admin"]},
        {"openIdConnect": ["notes:delete"]},
        {"openIdConnect": ["admin"]},
    ]
    assert "security" not in paths["/health"]["get"]
    # The URL serves this issuer's metadata, and a token it issues is let in.
    metadata = httpx.get(discovery).json()
    assert metadata["issuer"] == guard.issuer
    with TestClient(app) as client:
        token = session_issuer.mint(scopes=["notes:read"], sub="ivy")
        answer = client.get("/notes", headers={"Authorization": f"Bearer {token}"})
        assert answer.json() == "ivy"
        assert client.get("/notes").status_code == 401


def test_openapi_openid_connect_instead_of_the_bearer_scheme_or_at_a_given_url(
    session_issuer: DevIssuer,
) -> None:
    guard = session_issuer.guard()
    url = "https://login.example/tenant/.well-known/openid-configuration"
    # Named as the scheme itself: that one scheme is openIdConnect, at the URL given.
    bearer_auth = BearerAuth(guard, openid_connect=url, openid_connect_scheme="bearerAuth")
    app = bearer_auth.install(FastAPI())

    @app.get("/notes")
    async def notes(token: Annotated[AccessToken, bearer_auth.requires("notes:read")]) -> None:
        pass  # pragma: no cover

    schema = app.openapi()
    assert schema["components"]["securitySchemes"] == {
        "bearerAuth": {
            "type": "openIdConnect",
            "openIdConnectUrl": url,
            "description": (
                "Log in with the issuer (OpenID Connect); the access token is sent in the "
                "Authorization header."
            ),
        }
    }
    assert schema["paths"]["/notes"]["get"]["security"] == [{"bearerAuth": ["notes:read"]}]
    # Behind the middleware, operations without a BearerAuth are offered both schemes too.
    beside = BearerAuth(guard, openid_connect=True)
    mixed = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])

    @mixed.get("/plain")
    async def plain() -> None:
        pass  # pragma: no cover

    beside.document_middleware(mixed)
    assert mixed.openapi()["paths"]["/plain"]["get"]["security"] == [
        {"bearerAuth": []},
        {"openIdConnect": []},
    ]
    with pytest.raises(ConfigurationError, match="openid_connect"):
        BearerAuth(guard, openid_connect="http://login.example/.well-known/openid-configuration")
    flows = oauth2_flows(
        {"token_endpoint": "https://issuer.example/token"}, flows=["clientCredentials"]
    )
    with pytest.raises(ConfigurationError, match="oauth2_flows"):
        BearerAuth(
            guard, oauth2_flows=flows, openid_connect=True, openid_connect_scheme="bearerAuth"
        )
    with_flows = BearerAuth(guard, oauth2_flows=flows, openid_connect=True)  # both offered
    assert with_flows.model.model_dump(by_alias=True, mode="json")["type"] == "oauth2"


def test_openapi_refuses_one_scheme_name_for_two_schemes(session_issuer: DevIssuer) -> None:
    # Two BearerAuth of different issuers offering openIdConnect under the default name, or
    # one named as another's openIdConnect scheme: the document kept one scheme under that
    # name, so Swagger UI logged in at one issuer for the other's operations (refused with
    # 401), or the other scheme vanished. Refused at install, naming the scheme.
    with DevIssuer(keys=session_issuer.keys) as partner:
        ours = BearerAuth(session_issuer.guard(), openid_connect=True)
        theirs = BearerAuth(partner.guard(), scheme_name="partnerAuth", openid_connect=True)
        app = ours.install(FastAPI())
        with pytest.raises(ConfigurationError, match=r"'openIdConnect'.*openid_connect_scheme"):
            theirs.install(app)
        named = BearerAuth(partner.guard(), scheme_name="openIdConnect")
        with pytest.raises(ConfigurationError, match="'openIdConnect'"):
            named.install(ours.install(FastAPI()))
        with pytest.raises(ConfigurationError, match="'openIdConnect'"):
            ours.install(named.install(FastAPI()))
        # Installing again, or another BearerAuth describing the same scheme, is no clash.
        same = BearerAuth(session_issuer.guard(), scheme_name="more", openid_connect=True)
        again = same.install(ours.install(ours.install(FastAPI())))

        @again.get("/notes")
        async def notes(token: Annotated[AccessToken, same.requires("notes:read")]) -> None:
            pass  # pragma: no cover

        assert again.openapi()["paths"]["/notes"]["get"]["security"] == [
            {"more": ["notes:read"]},
            {"openIdConnect": ["notes:read"]},
        ]
        renamed = BearerAuth(
            partner.guard(),
            scheme_name="partnerAuth",
            openid_connect=True,
            openid_connect_scheme="partnerLogin",
        )
        assert renamed.install(ours.install(FastAPI())).openapi() is not None


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"openid_connect": 1}, "openid_connect"),  # AttributeError: 'int' ... 'decode'
        ({"openid_connect": None}, "openid_connect"),
        ({"scheme_name": ""}, "scheme_name"),
        ({"scheme_name": "bearer auth"}, "scheme_name"),  # not an OpenAPI component name
        ({"scheme_name": 5}, "scheme_name"),
        ({"openid_connect": True, "openid_connect_scheme": ""}, "openid_connect_scheme"),
    ],
)
def test_bearer_auth_refuses_scheme_options_it_cannot_document(
    guard: BearerGuard, options: dict[str, Any], named: str
) -> None:
    # These were taken (an empty or spaced name went into the OpenAPI document, where
    # OpenAPI 3.1 §4.8.7 allows component names of [a-zA-Z0-9.-_] only), or raised
    # AttributeError; each is a ConfigurationError naming the option.
    with pytest.raises(ConfigurationError, match=named):
        BearerAuth(guard, **options)
    if "scheme_name" in options:
        with pytest.raises(ConfigurationError, match=named):
            document_middleware(FastAPI(), public_paths=[], scheme_name=options["scheme_name"])


def test_the_dependency_alone_audits_an_empty_client_host_as_null(
    session_issuer: DevIssuer,
) -> None:
    # A server on a Unix socket (granian, gunicorn) gives the client's host as "": no
    # address, null in the events as under the middleware.
    bearer = BearerAuth(session_issuer.guard(in_process=True))
    app = bearer.install(FastAPI())

    @app.get("/private")
    async def private(token: Annotated[AccessToken, bearer.requires()]) -> dict[str, Any]:
        return {"sub": token.subject}

    with TestClient(app, client=("", 0)) as client, capture_logs() as logged:
        for token in (session_issuer.mint(), session_issuer.mint_expired()):
            client.get("/private", headers={"Authorization": f"Bearer {token}"})
    assert [(e["event"], e["client"]) for e in logged] == [
        ("token.accepted", None),
        ("token.rejected", None),
    ]
