"""Scope claims and matching (RFC 6749 §3.3, RFC 9068 §2.2.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from bearerguard import requires_scopes
from bearerguard._core.scopes import (
    grants,
    parse_scope_claim_paths,
    read_scopes,
    validate_scope_names,
)
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.errors import ConfigurationError, MalformedTokenError
from bearerguard.testing import DevIssuer


@pytest.mark.parametrize(
    ("claims", "paths", "expected"),
    [
        ({}, (), set()),
        ({"scope": "a b  c"}, (), {"a", "b", "c"}),
        ({"scope": ["a", "b"]}, (), {"a", "b"}),
        ({"scp": ["a"]}, (), {"a"}),
        ({"scp": "a b"}, (), {"a", "b"}),
        ({"scope": "a", "scp": ["b"]}, (), {"a", "b"}),
        ({"permissions": ["read:x"]}, ("permissions",), {"read:x"}),
        ({"realm_access": {"roles": ["admin"]}}, ("realm_access.roles",), {"admin"}),
        ({"realm_access": "oops"}, ("realm_access.roles",), set()),
        ({"scope": ""}, (), set()),
        # RFC 7519 §4.2: a public claim name is collision-resistant, usually a URI, whose dots
        # are part of the name (Auth0's namespaced claims), at the top or further down.
        ({"https://app.example/roles": ["admin"]}, ("https://app.example/roles",), {"admin"}),
        (
            {"https://hasura.io/jwt/claims": {"x-hasura-allowed-roles": ["user"]}},
            ("https://hasura.io/jwt/claims.x-hasura-allowed-roles",),
            {"user"},
        ),
        ({"ext": {"app.example/roles": ["ops"]}}, ("ext.app.example/roles",), {"ops"}),
        # A Keycloak client ID holding dots (docs/recipes.md): its client roles are reached.
        (
            {"resource_access": {"orders.api": {"roles": ["ship"]}}},
            ("resource_access.orders.api.roles",),
            {"ship"},
        ),
        ({"a.b": ["whole"], "a": {"b": ["nested"]}}, ("a.b",), {"whole"}),
    ],
)
def test_read_scopes(claims: dict[str, Any], paths: tuple[str, ...], expected: set[str]) -> None:
    assert read_scopes(claims, parse_scope_claim_paths(paths)) == expected


@pytest.mark.parametrize(
    "claims",
    [{"scope": 5}, {"scope": ["a", 1]}, {"scp": {"a": 1}}, {"scope": None, "scp": True}],
)
def test_scope_claims_of_wrong_type_are_malformed(claims: dict[str, Any]) -> None:
    with pytest.raises(MalformedTokenError):
        read_scopes(claims)


@pytest.mark.parametrize(
    ("claims", "paths", "detail"),
    [
        (
            # Keycloak's realm roles object where its roles array was meant.
            {"realm_access": {"roles": ["admin"], "x-secret": "v"}},
            ("realm_access",),
            "scope claim 'realm_access' is an object, not a string or array of strings; "
            "name the member holding the scopes: scope_claims=['realm_access.roles']",
        ),
        (
            {"perms": {"scopes": ["a"], "permissions": ["b"]}},
            ("perms",),
            "scope claim 'perms' is an object, not a string or array of strings; name the "
            "member holding the scopes: scope_claims=['perms.scopes'] or ['perms.permissions']",
        ),
        (
            {"ext": {"x-secret": ["admin"]}},  # member names from the token are never echoed
            ("ext",),
            "scope claim 'ext' is an object, not a string or array of strings; name the "
            "member holding the scopes: scope_claims=['ext.<member>']",
        ),
        ({"scope": 5}, (), "scope claim 'scope' is a number, not a string or array of strings"),
        (
            {"scp": True},
            (),
            "scope claim 'scp' is a boolean, not a string or array of strings",
        ),
        (
            {"scope": ["a", 1]},
            (),
            "scope claim 'scope' is an array holding a number, not a string or array of strings",
        ),
        (
            {"scp": {"roles": ["a"]}},  # a standard claim: no scope_claims path to suggest
            (),
            "scope claim 'scp' is an object, not a string or array of strings",
        ),
    ],
)
def test_a_scope_claim_of_the_wrong_type_is_named_with_its_type(
    claims: dict[str, Any], paths: tuple[str, ...], detail: str
) -> None:
    with pytest.raises(MalformedTokenError) as refused:
        read_scopes(claims, parse_scope_claim_paths(paths))
    assert refused.value.detail == detail
    assert "x-secret" not in detail


def test_an_object_scope_claim_is_refused_with_the_path_to_give(
    session_issuer: DevIssuer,
) -> None:
    guard = session_issuer.guard(scope_claims=["realm_access"])
    token = session_issuer.mint(realm_access={"roles": ["orders-admin", "offline_access"]})
    app = Starlette(
        routes=[Route("/", lambda request: JSONResponse({}))],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard)],
    )
    detail = (
        "scope claim 'realm_access' is an object, not a string or array of strings; "
        "name the member holding the scopes: scope_claims=['realm_access.roles']"
    )
    with capture_logs() as events:
        response = TestClient(app).get("/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert [(event["reason"], event["detail"]) for event in events] == [("malformed_token", detail)]
    assert "orders-admin" not in repr(events)
    with pytest.raises(MalformedTokenError) as refused:
        guard.authenticate_sync(token)
    assert refused.value.detail == detail


def test_matching_is_exact_and_case_sensitive() -> None:
    granted = frozenset({"items:read", "Admin"})
    assert grants(granted, ("items:read",), any_of=False)
    assert not grants(granted, ("items:read", "items:write"), any_of=False)
    assert grants(granted, ("items:read", "items:write"), any_of=True)
    assert not grants(granted, ("admin",), any_of=False)
    assert not grants(granted, ("items",), any_of=True)


@pytest.mark.parametrize(
    "names",
    [(), ("",), ("a b",), ("a\t",), (5,), ("администратор",), ('a"b',), ("a\\b",), ("a\nb",)],
)
def test_scope_names_are_validated(names: tuple[object, ...]) -> None:
    # RFC 6749 §3.3 scope-tokens only: what a challenge's scope attribute can carry.
    with pytest.raises(ConfigurationError):
        validate_scope_names(names)  # type: ignore[arg-type]


async def _view() -> None:
    pass


@pytest.mark.parametrize(
    ("call", "hint"),
    [
        # Auth0's scope string, copied whole: RFC 6749 §3.3 scopes hold no space.
        (lambda: requires_scopes("read:orders write:orders"), r"'read:orders', 'write:orders'"),
        (lambda: requires_scopes(["a", "b"]), r"one per argument: requires_scopes\('a', 'b'\)"),
        (lambda: requires_scopes(("a",)), r"one per argument: requires_scopes\('a'\)"),
        # @requires_scopes without its parentheses: the view is taken as the scope.
        (lambda: requires_scopes(_view), r"@requires_scopes\('items:read'\)"),
    ],
)
def test_a_misused_scope_argument_says_how_to_write_it(call: Any, hint: str) -> None:
    with pytest.raises(ConfigurationError, match=hint):
        call()


def test_every_scope_token_character_is_accepted() -> None:
    every = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in '"\\')
    assert validate_scope_names([every, "items:read", "realm_access.roles"])[0] == every


def test_scope_claim_paths_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        parse_scope_claim_paths(["realm_access..roles"])


@pytest.mark.parametrize("separator", ["\u00a0", "\t", "\n", "\x1f", "\u2028", "\u3000"])
def test_scopes_are_split_on_spaces_only(separator: str) -> None:
    # RFC 6749 §3.3: one signed scope must never become several the issuer did not grant.
    value = f"reports:read{separator}admin"
    for claims in ({"scope": value}, {"scp": value}, {"scope": f"a  {value} "}):
        granted = read_scopes(claims)
        assert "admin" not in granted
        assert value in granted
    assert read_scopes({"permissions": value}, (("permissions",),)) == {value}
    assert read_scopes({"scope": " a  b "}) == {"a", "b"}


def test_starlette_requires_reads_granted_scopes_without_implications(
    session_issuer: DevIssuer,
) -> None:
    # request.auth.scopes are the token's own scopes: Starlette's requires does not apply
    # scope_implications, and the documents must not say "every scope check" does.
    @requires("items:read")
    async def starlette_check(request: Request) -> JSONResponse:
        return JSONResponse({})  # pragma: no cover

    @requires_scopes("items:read")
    async def ours(request: Request) -> JSONResponse:
        return JSONResponse({})

    guard = session_issuer.guard(scope_implications={"items:write": ["items:read"]})
    app = Starlette(
        routes=[Route("/starlette", starlette_check), Route("/ours", ours)],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard)],
    )
    headers = {"Authorization": f"Bearer {session_issuer.mint(scopes=['items:write'])}"}
    client = TestClient(app)
    assert client.get("/ours", headers=headers).status_code == 200
    assert client.get("/starlette", headers=headers).status_code == 403
    root = Path(__file__).resolve().parent.parent
    configuration = " ".join((root / "docs" / "configuration.md").read_text().split())
    assert "applied by every scope check" not in configuration
    assert "not by Starlette's own `requires`" in configuration
