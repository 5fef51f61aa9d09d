"""Scopes granted by a token, and whether they satisfy a route (RFC 6749 §3.3, RFC 9068 §2.2.3)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from bearerguard.errors import ConfigurationError, MalformedTokenError

__all__ = [
    "ScopeImplications",
    "grants",
    "parse_scope_claim_paths",
    "read_scopes",
    "split_scope",
    "validate_scope_names",
]


_NOTHING = frozenset({""})  # what two adjacent spaces leave between them


def split_scope(value: str) -> frozenset[str]:
    """The scopes of a space-delimited ``scope`` string.

    RFC 6749 §3.3: delimited by spaces (%x20) only. ``str.split()`` would also split on
    tabs, no-break spaces and other white space, turning one signed scope into several.
    """
    names = frozenset(value.split(" "))
    return names - _NOTHING if "" in names else names


# Members that, in an object given as a scope claim, usually hold the scopes (Keycloak's
# realm_access.roles, resource_access.<client>.roles): the only member names a refusal
# names. Others come from the token and are never echoed.
_SCOPE_MEMBERS = ("roles", "scopes", "permissions")


def _split(value: Any, claim: str, *, configured: bool = False) -> Iterable[str]:
    if isinstance(value, str):
        return split_scope(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise MalformedTokenError(_wrong_type(value, claim, configured=configured))


def _json_type(value: Any) -> str:
    """The JSON type of a claim's value, with its article (RFC 8259 §3)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "null"


def _wrong_type(value: Any, claim: str, *, configured: bool) -> str:
    """Why a scope claim's value is refused, for the audit event's detail: its JSON type and,
    for an object named in ``scope_claims``, the nested path that was likely meant."""
    if isinstance(value, list):
        odd = next(item for item in value if not isinstance(item, str))
        kind = f"an array holding {_json_type(odd)}"
    else:
        kind = _json_type(value)
    detail = f"scope claim {claim!r} is {kind}, not a string or array of strings"
    if configured and isinstance(value, dict):
        members = [name for name in _SCOPE_MEMBERS if name in value] or ["<member>"]
        paths = " or ".join(repr([f"{claim}.{name}"]) for name in members)
        detail += f"; name the member holding the scopes: scope_claims={paths}"
    return detail


def parse_scope_claim_paths(claims: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Turn claim names such as ``permissions`` or ``realm_access.roles`` into key paths."""
    paths = []
    for claim in claims:
        path = tuple(claim.split("."))
        if not all(path):
            raise ConfigurationError(f"invalid scope claim path {claim!r}")
        paths.append(path)
    return tuple(paths)


def _walk(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` through nested objects, or ``None``.

    RFC 7519 §4.2: a public claim name should be collision-resistant, usually a URI
    (``https://app.example/roles``, as Auth0 requires), whose dots are part of the name: at
    each level the longest run of parts that names a member is taken.
    """
    node: Any = claims
    start = 0
    while start < len(path):
        if not isinstance(node, dict):
            return None
        for end in range(len(path), start, -1):
            child = node.get(".".join(path[start:end]))
            if child is not None:
                break
        else:
            return None
        node, start = child, end
    return node


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
    scope = claims.get("scope")
    if type(scope) is str and not extra_paths and claims.get("scp") is None:
        return split_scope(scope)  # the usual shape, in one step
    granted: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is not None:
            granted.update(_split(value, name))
    for path in extra_paths:
        node = _walk(claims, path)
        if node is not None:
            granted.update(_split(node, ".".join(path), configured=True))
    granted.discard("")  # an empty name in a list
    return frozenset(granted)


def validate_scope_names(scopes: Iterable[str], *, usage: str = "") -> tuple[str, ...]:
    """Check scope names given to a decorator: each one a scope-token (RFC 6749 §3.3).

    Those are the characters a challenge's ``scope`` attribute can carry (RFC 6750 §3):
    a name outside them is refused here, at configuration, never while refusing a request.
    ``usage`` names the decorator, for the hint on how to call it.
    """
    names = tuple(scopes)
    if not names:
        raise ConfigurationError("at least one scope is required")
    for name in names:
        if not isinstance(name, str) or not _SCOPE_TOKEN.fullmatch(name):
            raise ConfigurationError(
                f"invalid scope name {name!r}: printable ASCII but space, '\"' and '\\'"
                + _hint(name, usage)
            )
    return names


def _hint(name: object, usage: str) -> str:
    """How the likely mistake behind an invalid scope name is written right."""
    if isinstance(name, str) and " " in name.strip(" "):
        # A scope claim's string, copied whole: its spaces separate scopes (RFC 6749 §3.3).
        parts = ", ".join(repr(part) for part in name.split(" ") if part)
        return f"; give {parts} as separate scopes"
    if isinstance(name, list | tuple | set | frozenset):
        if not usage:
            return "; scopes are given one per argument, not as a list"
        listed = ", ".join(repr(part) for part in name)
        return f"; scopes are given one per argument: {usage}({listed})"
    if callable(name) and usage:
        return f"; the decorator needs its scopes: @{usage}('items:read')"
    return ""


# scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def grants(granted: frozenset[str], required: tuple[str, ...], *, any_of: bool) -> bool:
    """Whether ``granted`` satisfies ``required``: every scope, or one when ``any_of``.

    Matching is exact and case-sensitive (RFC 6749 §3.3).
    """
    if any_of:
        return not granted.isdisjoint(required)
    return granted.issuperset(required)


class ScopeImplications:
    """A declared map of broader scopes to the narrower ones they imply.

    ``{"items:write": ["items:read"], "admin": ["admin:*"]}`` reads "items:write implies
    items:read" and "admin implies every scope under admin:". A trailing ``*`` on an implied
    scope is a prefix; nothing else is a pattern, and a token's own scopes are always taken
    literally (a token granting ``admin:*`` grants that one scope name only). Implications
    are transitive, so ``{"a": ["b"], "b": ["c"]}`` lets ``a`` satisfy ``c``.

    The MCP authorization specification asks servers to honour broader scopes; RFC 6749
    §3.3 leaves the meaning of scope values to the resource server, which is where this map
    declares it.

    Raises:
        ConfigurationError: a scope name with white space, a ``*`` anywhere but at the end
            of an implied scope, a key that is a pattern, or a key implying no scope names.
    """

    __slots__ = ("_cache", "_map")

    def __init__(self, implications: Mapping[str, Iterable[str]] | None = None) -> None:
        if implications is not None and not isinstance(implications, Mapping):
            raise ConfigurationError("scope implications map scope names to implied scopes")
        mapping: dict[str, tuple[str, ...]] = {}
        for broad, narrower in (implications or {}).items():
            (key,) = validate_scope_names([broad])
            if "*" in key:
                raise ConfigurationError(f"scope implication key {key!r} cannot be a pattern")
            if isinstance(narrower, str):
                implied: tuple[str, ...] = (narrower,)
            elif isinstance(narrower, Iterable) and not isinstance(narrower, Mapping):
                implied = tuple(narrower)
            else:  # None or a number (a bare TypeError), a nested map (its keys were taken)
                raise ConfigurationError(f"scope {key!r} implies {narrower!r}, not scope names")
            for name in validate_scope_names(implied):
                if "*" in name[:-1] or name == "*":
                    raise ConfigurationError(f"implied scope {name!r}: '*' only after a prefix")
            mapping[key] = implied
        self._map = mapping
        self._cache: dict[frozenset[str], tuple[frozenset[str], tuple[str, ...]]] = {}

    @classmethod
    def of(
        cls, implications: ScopeImplications | Mapping[str, Iterable[str]] | None
    ) -> ScopeImplications:
        """``implications`` as a ``ScopeImplications`` (built from a mapping if need be)."""
        return implications if isinstance(implications, ScopeImplications) else cls(implications)

    def __bool__(self) -> bool:
        return bool(self._map)

    def __repr__(self) -> str:
        return f"ScopeImplications({self._map!r})"

    @property
    def declared(self) -> frozenset[str]:
        """Every scope name the map mentions literally (keys and non-pattern implied scopes)."""
        names = set(self._map)
        for implied in self._map.values():
            names.update(name for name in implied if not name.endswith("*"))
        return frozenset(names)

    def _closure(self, granted: frozenset[str]) -> tuple[frozenset[str], tuple[str, ...]]:
        """The scopes ``granted`` reaches: exact names and prefixes, to a fixed point."""
        cached = self._cache.get(granted)
        if cached is not None:
            return cached
        exact = set(granted)
        prefixes: set[str] = set()
        pending = dict(self._map)
        changed = True
        while changed:  # the map is finite: each pass applies at least one key or stops
            changed = False
            for key in [k for k in pending if k in exact or k.startswith(tuple(prefixes))]:
                for name in pending.pop(key):
                    if name.endswith("*"):
                        prefixes.add(name[:-1])
                    else:
                        exact.add(name)
                changed = True
        result = (frozenset(exact), tuple(sorted(prefixes)))
        if len(self._cache) >= 1024:  # bounded: scope sets come from tokens
            self._cache.clear()
        self._cache[granted] = result
        return result

    def reached(self, granted: frozenset[str], names: Iterable[str] = ()) -> frozenset[str]:
        """``granted`` and every scope name it implies, listed: those ``names`` an implied
        prefix covers too (a prefix, ``admin:*``, stands for names no list can hold)."""
        if not self._map:
            return granted
        exact, prefixes = self._closure(granted)
        if not prefixes:
            return exact
        return exact | {name for name in names if name.startswith(prefixes)}

    def grants(self, granted: frozenset[str], required: tuple[str, ...], *, any_of: bool) -> bool:
        """Whether ``granted``, with everything it implies, satisfies ``required``."""
        if grants(granted, required, any_of=any_of):
            return True
        if not self._map:
            return False
        exact, prefixes = self._closure(granted)
        check = any if any_of else all
        return check(name in exact or name.startswith(prefixes) for name in required)
