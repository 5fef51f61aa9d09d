"""Scope claims and matching (RFC 6749 §3.3, RFC 9068 §2.2.3)."""

from __future__ import annotations

from typing import Any

import pytest

from bearerguard._core.scopes import (
    grants,
    parse_scope_claim_paths,
    read_scopes,
    validate_scope_names,
)
from bearerguard.errors import ConfigurationError, MalformedTokenError


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
