"""Scopes granted by a token, and whether they satisfy a route (RFC 6749 §3.3, RFC 9068 §2.2.3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bearerguard.errors import ConfigurationError, MalformedTokenError

__all__ = ["grants", "parse_scope_claim_paths", "read_scopes", "validate_scope_names"]


def _split(value: Any, claim: str) -> Iterable[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise MalformedTokenError(f"claim {claim!r} is neither a string nor a list of strings")


def parse_scope_claim_paths(claims: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Turn claim names such as ``permissions`` or ``realm_access.roles`` into key paths."""
    paths = []
    for claim in claims:
        path = tuple(claim.split("."))
        if not all(path):
            raise ConfigurationError(f"invalid scope claim path {claim!r}")
        paths.append(path)
    return tuple(paths)


def read_scopes(
    claims: Mapping[str, Any], extra_paths: tuple[tuple[str, ...], ...] = ()
) -> frozenset[str]:
    """Collect the scopes a token grants.

    ``scope`` may be a space-delimited string (RFC 8693 §4.2) or a list; ``scp`` a list or a
    space-delimited string (Entra ID). Each extra path names a claim, possibly nested in
    objects, holding a list or a space-delimited string (``permissions``, ``roles``,
    ``realm_access.roles``). A missing claim grants nothing; a claim of another type makes
    the token malformed rather than being read loosely.
    """
    granted: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is not None:
            granted.update(_split(value, name))
    for path in extra_paths:
        node: Any = claims
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if node is not None:
            granted.update(_split(node, ".".join(path)))
    granted.discard("")
    return frozenset(granted)


def validate_scope_names(scopes: Iterable[str]) -> tuple[str, ...]:
    """Check scope names given to a decorator: non-empty, no white space (RFC 6749 §3.3)."""
    names = tuple(scopes)
    if not names:
        raise ConfigurationError("at least one scope is required")
    for name in names:
        if not isinstance(name, str) or not name or any(char.isspace() for char in name):
            raise ConfigurationError(f"invalid scope name {name!r}")
    return names


def grants(granted: frozenset[str], required: tuple[str, ...], *, any_of: bool) -> bool:
    """Whether ``granted`` satisfies ``required``: every scope, or one when ``any_of``.

    Matching is exact and case-sensitive (RFC 6749 §3.3).
    """
    if any_of:
        return not granted.isdisjoint(required)
    return granted.issuperset(required)
