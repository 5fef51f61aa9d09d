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
from bearerguard.metadata import ResourceMetadata
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


# -- scope implications and RFC 9728 metadata: the same on both stacks ----------------------

IMPLICATIONS = {"items:admin": ["items:write", "items:delete"], "items:write": ["items:read"]}
RESOURCE = "https://api.example/v1"
METADATA_URL = "https://api.example/.well-known/oauth-protected-resource/v1"


@pytest.fixture
def described(stack: str, session_issuer: DevIssuer) -> Iterator[Client]:
    guard = session_issuer.guard(
        scope_implications=IMPLICATIONS,
        audience=session_issuer.audience,  # the tokens' aud; the resource is published
        resource=RESOURCE,
        resource_metadata=ResourceMetadata(scopes_supported=["items:read", "items:write"]),
    )
    yield from open_client(stack, guard)


@pytest.mark.parametrize(
    ("method", "path", "scopes", "status"),
    [
        ("GET", "/items", ["items:write"], 200),
        ("GET", "/items", ["items:admin"], 200),
        ("POST", "/items", ["items:write"], 200),
        ("POST", "/items", ["items:admin"], 200),
        ("DELETE", "/items", ["items:admin"], 200),
        ("POST", "/items", ["items:read"], 403),
        ("GET", "/reports", ["items:admin"], 403),
    ],
)
def test_implied_scopes_on_both_stacks(
    described: Client,
    session_issuer: DevIssuer,
    method: str,
    path: str,
    scopes: list[str],
    status: int,
) -> None:
    with structlog.testing.capture_logs() as logged:
        response = described(method, path, headers=bearer(session_issuer.mint(scopes=scopes)))
    assert response.status_code == status
    expected = ["token.accepted"] + (["scope.denied"] if status == 403 else [])
    assert [event["event"] for event in logged] == expected
    if status == 403:
        assert f'resource_metadata="{METADATA_URL}"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("path", "headers", "challenge"),
    [
        ("/me", {}, f'Bearer realm="https://api.example", resource_metadata="{METADATA_URL}"'),
        (
            "/me",
            {"Authorization": "Bearer x.y.z"},
            'Bearer realm="https://api.example", error="invalid_token", '
            'error_description="The access token is malformed.", '
            f'resource_metadata="{METADATA_URL}"',
        ),
        (
            "/open",  # public, but the route's scopes are known: they are hinted
            {},
            f'Bearer realm="https://api.example", resource_metadata="{METADATA_URL}", '
            'scope="items:read"',
        ),
    ],
)
def test_challenges_name_the_metadata_on_both_stacks(
    described: Client, path: str, headers: dict[str, str], challenge: str
) -> None:
    response = described("GET", path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge


def test_bad_requests_and_outages_carry_no_metadata(stack: str, session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(
        audience=session_issuer.audience, resource=RESOURCE, revocation=BrokenStore()
    )
    for client in open_client(stack, guard):
        assert "resource_metadata" not in client(
            "GET", "/me", headers={"Authorization": "Bearer a b"}
        ).headers.get("www-authenticate", "")
        outage = client("GET", "/me", headers=bearer(session_issuer.mint()))
        assert outage.status_code == 503
        assert "www-authenticate" not in outage.headers


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource/v1", "/.well-known/oauth-protected-resource"]
)
def test_metadata_served_on_both_stacks(
    described: Client, session_issuer: DevIssuer, path: str
) -> None:
    with structlog.testing.capture_logs() as logged:
        response = described("GET", path, headers={"Authorization": "Bearer not-even-checked"})
        head = described("HEAD", path)
        post = described("POST", path)
    assert logged == []  # public metadata, not an authentication decision
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json() == {
        "resource": RESOURCE,
        "authorization_servers": [session_issuer.url],
        "scopes_supported": ["items:read", "items:write"],
        "bearer_methods_supported": ["header"],
    }
    assert head.status_code == 200
    assert head.content == b""
    assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD, OPTIONS")


def test_a_percent_encoded_resource_path_is_served_where_challenges_point(
    stack: str, session_issuer: DevIssuer
) -> None:
    resource = "https://api.example/notes%20v2/%7Emia"
    guard = session_issuer.guard(audience=session_issuer.audience, resource=resource)
    for client in open_client(stack, guard):
        challenge = client("GET", "/me").headers["www-authenticate"]
        url = "https://api.example/.well-known/oauth-protected-resource/notes%20v2/%7Emia"
        assert f'resource_metadata="{url}"' in challenge
        served = client("GET", "/.well-known/oauth-protected-resource/notes%20v2/%7Emia")
        assert served.status_code == 200
        assert served.json()["resource"] == resource


def test_other_well_known_paths_stay_protected(described: Client) -> None:
    assert described("GET", "/.well-known/oauth-protected-resource/v2").status_code == 401


def test_same_metadata_and_challenges_text(session_issuer: DevIssuer) -> None:
    answers: list[tuple[Any, ...]] = []
    for stack in ("asgi", "wsgi"):
        guard = session_issuer.guard(scope_implications=IMPLICATIONS, resource=RESOURCE)
        for client in open_client(stack, guard):
            document = client("GET", "/.well-known/oauth-protected-resource/v1")
            denied = client("GET", "/reports", headers=bearer(session_issuer.mint()))
            answers.append(
                (document.content, denied.status_code, denied.headers["www-authenticate"])
            )
    assert answers[0] == answers[1]


# -- reused tokens: the cache-hit fast path of each middleware applies the same rules -------


def _reused(call: Client, token: str) -> None:
    """Send ``token`` until the middleware serves it from its fast path."""
    for _ in range(3):
        assert call("GET", "/me", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("kind", ["token", "subject", "client"])
def test_revoking_a_reused_token_on_both_stacks(
    call: Client, session_issuer: DevIssuer, store: MemoryRevocationStore, kind: str
) -> None:
    token = session_issuer.mint(sub="jo", client_id="app-3", jti="reused-1")
    _reused(call, token)
    store.revoke_subject_sync("someone-else")  # a change that does not concern it
    assert call("GET", "/me", headers=bearer(token)).status_code == 200
    if kind == "token":
        store.revoke_token_sync("reused-1")
    elif kind == "subject":
        store.revoke_subject_sync("jo")
    else:
        store.revoke_client_sync("app-3")
    with structlog.testing.capture_logs() as logged:
        assert call("GET", "/me", headers=bearer(token)).status_code == 401
    assert logged[0]["reason"] == "revoked"


@pytest.mark.parametrize(("query", "status"), [("", 200), ("?x=1", 200), ("?access_token=t", 400)])
def test_request_rules_hold_for_a_reused_token_on_both_stacks(
    call: Client, session_issuer: DevIssuer, query: str, status: int
) -> None:
    token = session_issuer.mint()
    _reused(call, token)
    assert call("GET", f"/me{query}", headers=bearer(token)).status_code == status
    joined = {"Authorization": f"Bearer {token}, Bearer {token}"}  # what WSGI servers make
    assert call("GET", "/me", headers=joined).status_code == 400


def test_reused_token_events_and_scope_checks_on_both_stacks(
    call: Client, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(sub="kai", scopes=["items:read"])
    _reused(call, token)
    with structlog.testing.capture_logs() as logged:
        ok = call("GET", "/items", headers={**bearer(token), "X-Request-ID": "r-9"})
        denied = call("POST", "/items", headers={**bearer(token), "X-Request-ID": "r-10"})
    assert (ok.status_code, denied.status_code) == (200, 403)
    assert [event["event"] for event in logged] == [
        "token.accepted",
        "token.accepted",
        "scope.denied",
    ]
    assert [event["request_id"] for event in logged] == ["r-9", "r-10", "r-10"]
    assert {event["sub"] for event in logged} == {"kai"}
    assert logged[0]["scopes"] == ["items:read"]
