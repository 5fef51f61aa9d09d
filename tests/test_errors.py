"""RFC 6750 §3 challenges and refusal bodies."""

from __future__ import annotations

import json

import pytest

from bearerguard._core.refusal import render_refusal
from bearerguard.errors import (
    ExpiredTokenError,
    InsufficientScopeError,
    InvalidRequestError,
    KeySetUnavailableError,
    MissingTokenError,
    render_challenge,
)

EXPIRED = 'error_description="The access token has expired."'


@pytest.mark.parametrize(
    ("realm", "error", "expected"),
    [
        ("api", None, 'Bearer realm="api"'),
        (None, None, "Bearer"),
        ("api", MissingTokenError(), 'Bearer realm="api"'),
        (
            "api",
            InvalidRequestError(),
            'Bearer realm="api", error="invalid_request", '
            'error_description="The request carries malformed or duplicated credentials."',
        ),
        ("api", ExpiredTokenError(), f'Bearer realm="api", error="invalid_token", {EXPIRED}'),
        (
            "api",
            InsufficientScopeError(["items:read", "items:write"]),
            'Bearer realm="api", error="insufficient_scope", error_description="The access '
            'token does not grant the scope this request needs.", scope="items:read items:write"',
        ),
        ('a "quoted" \\ realm', None, 'Bearer realm="a \\"quoted\\" \\\\ realm"'),
    ],
    ids=["bare", "no-realm", "missing", "invalid-request", "expired", "scope", "quoting"],
)
def test_challenge_rendering(realm: str | None, error: object, expected: str) -> None:
    assert render_challenge(realm, error) == expected  # type: ignore[arg-type]


def test_detail_never_reaches_the_client() -> None:
    secret_detail = "iss 'https://evil' with token eyJhbGciOi..."
    refusal = render_refusal(ExpiredTokenError(secret_detail), "api")
    rendered = refusal.body.decode() + " ".join(value for _, value in refusal.headers)
    assert "evil" not in rendered
    assert "eyJ" not in rendered


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (MissingTokenError(), 401, "unauthorized"),
        (InvalidRequestError(), 400, "invalid_request"),
        (ExpiredTokenError(), 401, "invalid_token"),
        (InsufficientScopeError(["a"]), 403, "insufficient_scope"),
        (KeySetUnavailableError(), 503, "temporarily_unavailable"),
    ],
)
def test_refusal_status_and_body(error: object, status: int, code: str) -> None:
    refusal = render_refusal(error, "api")  # type: ignore[arg-type]
    headers = dict(refusal.headers)
    assert refusal.status == status
    assert json.loads(refusal.body)["error"] == code
    assert headers["cache-control"] == "no-store"
    if status == 503:
        assert "www-authenticate" not in headers
        assert headers["retry-after"] == "5"
    else:
        assert headers["www-authenticate"].startswith('Bearer realm="api"')


@pytest.mark.parametrize("name", ["读取", "read items", 'read"', "a\\b", ""])
def test_a_scope_no_challenge_can_carry_is_left_out(name: str) -> None:
    """RFC 6750 §3: ``scope`` holds scope-tokens; a route's scope declared unchecked (FastAPI's
    ``Security(scopes=[...])``) must neither fail to encode the header nor split it."""
    for error, hint in (
        (InsufficientScopeError(["ok", name]), ()),
        (MissingTokenError(), ("ok", name)),
        (ExpiredTokenError(), (name,)),
    ):
        refusal = render_refusal(error, "api", scope=hint)
        challenge = dict(refusal.headers)["www-authenticate"]
        challenge.encode("ascii")
        assert "scope=" not in challenge
    kept = render_refusal(InsufficientScopeError(["a:read", "b"]), "api")
    assert 'scope="a:read b"' in dict(kept.headers)["www-authenticate"]


def test_a_scope_given_twice_is_named_once() -> None:
    """RFC 6750 §3: ``scope`` lists scopes; one named twice (stacked checks, summed Security
    scopes) is named once, in the order first given, in the challenge and the audit event."""
    error = InsufficientScopeError(["b", "a", "b"], scope=["a", "b", "a", ["x"]])  # type: ignore[list-item]
    assert error.required == ("b", "a")
    assert error.scope == ("a", "b", ["x"])
    deduplicated = InsufficientScopeError(["b", "a", "b"])
    assert dict(render_refusal(deduplicated, "api").headers)["www-authenticate"].endswith(
        'scope="b a"'
    )
    hinted = render_refusal(ExpiredTokenError(), "api", scope=("a", "a"))
    assert dict(hinted.headers)["www-authenticate"].endswith('scope="a"')
