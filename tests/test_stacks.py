"""One behavioural suite, run against the ASGI (Starlette) and the WSGI (Flask) stacks.

Every case sends the same request to both and expects the same status, challenge, body and
audit events, so any difference between the integrations fails a test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from starlette.testclient import TestClient

from bearerguard import AccessToken, BearerGuard
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from tests.apps import build_app, build_flask_app

Client = Callable[..., httpx.Response]


class BrokenStore:
    async def is_revoked(self, token: AccessToken) -> bool:
        raise ConnectionError("down")

    def is_revoked_sync(self, token: AccessToken) -> bool:
        raise ConnectionError("down")


@pytest.fixture(params=["asgi", "wsgi"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_client(stack: str, guard: BearerGuard) -> Iterator[Client]:
    if stack == "asgi":
        with TestClient(build_app(guard), base_url="http://testserver") as client:
            yield client.request
    else:
        transport = httpx.WSGITransport(app=build_flask_app(guard))
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            yield client.request


@pytest.fixture
def store() -> MemoryRevocationStore:
    return MemoryRevocationStore()


@pytest.fixture
def call(stack: str, session_issuer: DevIssuer, store: MemoryRevocationStore) -> Iterator[Client]:
    yield from open_client(stack, session_issuer.guard(revocation=store))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


CASES: list[
    tuple[str, str, str, Callable[[DevIssuer], dict[str, str]], int, str | None, list[str]]
] = [
    ("no-credentials", "GET", "/me", lambda i: {}, 401, None, ["token.rejected"]),
    (
        "basic-scheme",
        "GET",
        "/me",
        lambda i: {"Authorization": "Basic eDp5"},
        401,
        None,
        ["token.rejected"],
    ),
    ("valid", "GET", "/me", lambda i: bearer(i.mint(scopes=["a"])), 200, None, ["token.accepted"]),
    (
        "lowercase-scheme",
        "GET",
        "/me",
        lambda i: {"Authorization": f"bearer {i.mint()}"},
        200,
        None,
        ["token.accepted"],
    ),
    (
        "scoped-ok",
        "GET",
        "/items",
        lambda i: bearer(i.mint(scopes=["items:read"])),
        200,
        None,
        ["token.accepted"],
    ),
    (
        "scope-missing",
        "GET",
        "/items",
        lambda i: bearer(i.mint()),
        403,
        "insufficient_scope",
        ["token.accepted", "scope.denied"],
    ),
    (
        "all-of-missing-one",
        "POST",
        "/items",
        lambda i: bearer(i.mint(scopes=["items:read"])),
        403,
        "insufficient_scope",
        ["token.accepted", "scope.denied"],
    ),
    (
        "any-of",
        "DELETE",
        "/items",
        lambda i: bearer(i.mint(scopes=["admin"])),
        200,
        None,
        ["token.accepted"],
    ),
    (
        "any-of-none",
        "DELETE",
        "/items",
        lambda i: bearer(i.mint(scopes=["x"])),
        403,
        "insufficient_scope",
        ["token.accepted", "scope.denied"],
    ),
    (
        "class-or-blueprint",
        "GET",
        "/reports",
        lambda i: bearer(i.mint(scopes=["reports:read"])),
        200,
        None,
        ["token.accepted"],
    ),
    (
        "class-or-blueprint-denied",
        "POST",
        "/reports",
        lambda i: bearer(i.mint(scopes=["reports:read"])),
        403,
        "insufficient_scope",
        ["token.accepted", "scope.denied"],
    ),
    (
        "expired",
        "GET",
        "/me",
        lambda i: bearer(i.mint(expires_in=-120)),
        401,
        "invalid_token",
        ["token.rejected"],
    ),
    (
        "garbage",
        "GET",
        "/me",
        lambda i: bearer("abc.def.ghi"),
        401,
        "invalid_token",
        ["token.rejected"],
    ),
    (
        "not-b64token",
        "GET",
        "/me",
        lambda i: {"Authorization": "Bearer a b"},
        400,
        "invalid_request",
        ["token.rejected"],
    ),
    (
        "oversized",
        "GET",
        "/me",
        lambda i: bearer("a" * 9000),
        401,
        "invalid_token",
        ["token.rejected"],
    ),
    ("public", "GET", "/health", lambda i: {}, 200, None, []),
    ("public-prefix", "GET", "/static/app.js", lambda i: {}, 200, None, []),
    ("not-a-prefix", "GET", "/healthcheck-admin", lambda i: {}, 401, None, ["token.rejected"]),
    (
        "public-bad-token",
        "GET",
        "/health",
        lambda i: bearer("x.y.z"),
        401,
        "invalid_token",
        ["token.rejected"],
    ),
    ("public-scoped", "GET", "/open", lambda i: {}, 401, None, ["token.rejected"]),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "error", "events"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_same_answer_on_both_stacks(
    call: Client,
    session_issuer: DevIssuer,
    method: str,
    path: str,
    headers: Callable[[DevIssuer], dict[str, str]],
    status: int,
    error: str | None,
    events: list[str],
) -> None:
    with structlog.testing.capture_logs() as logged:
        response = call(method, path, headers=headers(session_issuer))
    assert response.status_code == status
    assert [event["event"] for event in logged] == events
    if status in (400, 401, 403):
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="https://api.example"')
        assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"error", "error_description"}


def test_token_in_the_query_string(call: Client, session_issuer: DevIssuer) -> None:
    response = call("GET", f"/me?access_token={session_issuer.mint()}")
    assert response.status_code == 400


def test_revocation_on_both_stacks(
    call: Client, session_issuer: DevIssuer, store: MemoryRevocationStore
) -> None:
    token = session_issuer.mint(sub="ivy", jti="revoke-me")
    assert call("GET", "/me", headers=bearer(token)).status_code == 200
    store.revoke_token_sync("revoke-me")
    with structlog.testing.capture_logs() as logged:
        assert call("GET", "/me", headers=bearer(token)).status_code == 401
    assert logged[0]["reason"] == "revoked"


def test_failing_store_fails_closed_on_both_stacks(stack: str, session_issuer: DevIssuer) -> None:
    for client in open_client(stack, session_issuer.guard(revocation=BrokenStore())):
        response = client("GET", "/me", headers=bearer(session_issuer.mint()))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"


def test_same_body_and_challenge_text(session_issuer: DevIssuer) -> None:
    answers: list[tuple[int, str, Any]] = []
    token = session_issuer.mint()
    for stack in ("asgi", "wsgi"):
        for client in open_client(stack, session_issuer.guard()):
            response = client("POST", "/items", headers=bearer(token))
            answers.append(
                (response.status_code, response.headers["www-authenticate"], response.json())
            )
    assert answers[0] == answers[1]
