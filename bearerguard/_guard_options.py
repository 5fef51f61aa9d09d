"""``BearerGuard``'s constructor arguments: each checked, and turned into what the guard uses.

A mistaken or unsafe argument is a ``ConfigurationError`` here, at construction, never a
refusal or a 500 at request time. Besides the checks: where the keys come from (static keys
loaded once, or a fetcher for the issuer's JWK Set), the audiences a ``resource`` stands for,
and how the revocation store can be asked without a coroutine.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from bearerguard._core.keycache import KeyCache, RefreshPolicy
from bearerguard._core.keys import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    KeySet,
    VerificationKey,
    key_from_pem,
    keys_from_jwks,
)
from bearerguard.errors import ConfigurationError
from bearerguard.introspection import Introspector
from bearerguard.jwks import FetchPolicy, JWKSFetcher
from bearerguard.metadata import ProtectedResource, ResourceMetadata, check_resource
from bearerguard.mtls import CertificateBinding
from bearerguard.revocation._table import RevocationTable
from bearerguard.revocation.memory import MemoryRevocationStore
from bearerguard.revocation.protocol import RevocationStore, SyncRevocationStore
from bearerguard.token import AccessToken
from bearerguard.usage import SyncUsageMonitor, UsageMonitor

# asgiref's markcoroutinefunction, before Python 3.12, sets a marker only asyncio reads.
_is_coroutine_function = (
    inspect.iscoroutinefunction if sys.version_info >= (3, 12) else asyncio.iscoroutinefunction
)


def _answers_as_is_revoked(store: RevocationStore, method: str) -> bool:
    """Whether ``store``'s synchronous ``method`` may stand in for its other checks.

    Only when it is defined where ``is_revoked`` (and, for ``is_revoked_now``, also
    ``is_revoked_sync``) is, or below: a subclass of a built-in store that overrides one
    check alone keeps the inherited shortcut, which knows nothing of the override, so the
    guard asks the overridden check instead.
    """
    overridden = getattr(store, "__dict__", {})
    others = ["is_revoked"] if method == "is_revoked_sync" else ["is_revoked", "is_revoked_sync"]
    if any(name in overridden for name in others):
        return False
    mro = type(store).__mro__
    owner = next((cls for cls in mro if method in vars(cls)), object)
    return all(
        issubclass(owner, next((cls for cls in mro if name in vars(cls)), object))
        for name in others
    )


def _check_store_methods(store: RevocationStore) -> None:
    """Refuse a store whose checks cannot be called as the guard calls them.

    ``is_revoked`` is awaited: a plain function failed every await, read as the store
    failing (503, and with ``revocation_failure="allow"`` every token let in, revoked ones
    included). ``is_revoked_sync`` and ``is_revoked_now`` are called: as coroutine
    functions, their answer (a coroutine) is true, and every token was refused as revoked.
    """
    name = type(store).__name__
    check = store.is_revoked
    if inspect.isroutine(check) and not _is_coroutine_function(check):
        raise ConfigurationError(f"{name}.is_revoked must be a coroutine function (async def)")
    for method in ("is_revoked_sync", "is_revoked_now"):
        if _is_coroutine_function(getattr(store, method, None)):
            raise ConfigurationError(f"{name}.{method} must be a plain function, not async def")


def _nonblocking_checks(
    store: RevocationStore,
) -> tuple[
    Callable[[AccessToken], bool] | None,
    Callable[[AccessToken], bool] | None,
    RevocationTable | None,
]:
    """How ``store`` is asked without a coroutine: its synchronous check when it never
    blocks (for every request); what a reuse asks first, which may raise to say "not now"
    (``is_revoked_now``, else that same check); and the built-in memory store's table (not
    a subclass's, which may answer differently), whose version says when a token cleared
    before needs no new lookup."""
    revoked_now = (
        store.is_revoked_sync
        if getattr(store, "nonblocking", False)
        and isinstance(store, SyncRevocationStore)
        and _answers_as_is_revoked(store, "is_revoked_sync")
        else None
    )
    answer_now = getattr(store, "is_revoked_now", None)
    if not (callable(answer_now) and _answers_as_is_revoked(store, "is_revoked_now")):
        answer_now = None
    reuse_check = answer_now or revoked_now
    return revoked_now, reuse_check, store.table if type(store) is MemoryRevocationStore else None


def _static_keys(keys: Any, allowed: frozenset[str]) -> KeySet:
    items = keys if isinstance(keys, list | tuple) else [keys]
    loaded: list[VerificationKey] = []
    for item in items:
        document = item
        if isinstance(item, bytes | str):
            try:
                text = item.decode() if isinstance(item, bytes) else item
            except UnicodeDecodeError:  # a DER key, say: neither PEM nor JSON
                raise ConfigurationError("keys must be PEM public keys or a JWKS") from None
            if text.lstrip().startswith("-----BEGIN"):
                loaded.append(key_from_pem(text, allowed))
                continue
            try:
                document = json.loads(text)
            except ValueError as exc:
                raise ConfigurationError("keys must be PEM public keys or a JWKS") from exc
        try:
            found, skipped = keys_from_jwks(document, allowed)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        if skipped:
            reasons = "; ".join(f"{kid}: {why}" for kid, why in skipped)
            raise ConfigurationError(f"unusable static keys: {reasons}")
        loaded.extend(found)
    if not loaded:
        raise ConfigurationError("no static keys given")
    if len(loaded) > 1 and any(key.kid is None for key in loaded):
        # A token names its key by kid; a key without one serves only as the sole key.
        raise ConfigurationError(
            "several static keys each need a kid: give them as a JWKS, or give one PEM key"
        )
    return KeySet(loaded)


def _introspector(introspection: object) -> Introspector | None:
    if not isinstance(introspection, Introspector | None):
        raise ConfigurationError("introspection must be an Introspector")
    return introspection


def _key_source(
    issuer: str,
    *,
    keys: Any,
    jwks_uri: str | None,
    asymmetric: frozenset[str],
    refresh: RefreshPolicy,
    fetch: FetchPolicy,
    clock: Callable[[], float],
) -> tuple[JWKSFetcher | None, KeyCache]:
    """Static keys, or a fetcher for the issuer's JWKS (none when only HS* is allowed)."""
    if keys is not None:
        if jwks_uri is not None:
            raise ConfigurationError("give either static keys or jwks_uri, not both")
        return None, KeyCache(refresh, _static_keys(keys, asymmetric))
    if asymmetric:
        return JWKSFetcher(issuer, jwks_uri, fetch, clock), KeyCache(refresh)
    return None, KeyCache(refresh, KeySet([]))


def _usage_monitor(usage: object) -> UsageMonitor | SyncUsageMonitor | None:
    if usage is not None and not isinstance(usage, UsageMonitor | SyncUsageMonitor):
        raise ConfigurationError("usage must be a UsageMonitor (see bearerguard.usage)")
    return usage


def _checked_confirmations(dpop: object, mtls: object, *, upstream: bool) -> frozenset[str] | None:
    """The ``cnf`` members a token may carry: those this guard checks; ``None``: any."""
    if upstream:
        return None
    return frozenset(
        (["jkt"] if dpop is not None else []) + (["x5t#S256"] if mtls is not None else [])
    )


def _header_text(value: str, name: str) -> str:
    """``value``, checked to fit a ``WWW-Authenticate`` quoted-string (RFC 9110 §5.6.4):
    printable ASCII, so that no refusal can fail to encode or split the header."""
    if not isinstance(value, str) or not (value.isascii() and value.isprintable()):
        raise ConfigurationError(f"{name} must be printable ASCII: {value!r}")
    return value


def _names(names: Iterable[str], option: str) -> tuple[str, ...]:
    """Claim names, each a non-empty string: a bare string is refused, since it would be
    read as its characters (``"roles"``: the claims ``r``, ``o``, ``l``, ``e``, ``s``)."""
    if isinstance(names, str | bytes):
        raise ConfigurationError(f"{option} takes a list of claim names, not {names!r}")
    listed = tuple(names)
    if not all(isinstance(name, str) and name for name in listed):
        raise ConfigurationError(f"{option} takes non-empty strings: {listed!r}")
    return listed


def _certificate_binding(mtls: object) -> CertificateBinding | None:
    if mtls is not None and not isinstance(mtls, CertificateBinding):
        raise ConfigurationError("mtls must be a CertificateBinding (see bearerguard.mtls)")
    return mtls


def _audiences(audience: str | Sequence[str] | None, resource: str | None) -> tuple[str, ...]:
    if audience is None:
        if resource is None:
            raise ConfigurationError(
                "give audience= (the aud your API is registered as at the issuer, e.g. "
                'audience="https://api.example"), or resource= (RFC 8707), which serves '
                "as the audience"
            )
        return _resource_audiences(resource)
    if not isinstance(audience, str | Iterable):
        raise ConfigurationError(
            f"audience must be a non-empty string or strings, not {audience!r}"
        )
    audiences = (audience,) if isinstance(audience, str) else tuple(audience)
    if not audiences or not all(isinstance(item, str) and item for item in audiences):
        raise ConfigurationError("audience must be a non-empty string or strings")
    return audiences


def _resource_audiences(resource: str) -> tuple[str, ...]:
    """The ``aud`` values naming ``resource``: itself, and for one without a path, its other
    spelling. RFC 3986 §6.2.3 makes ``https://api.example`` and ``https://api.example/`` one
    URI (MCP takes both as a server's canonical URI), and clients that serialize the
    metadata's ``resource`` with a URL parser (WHATWG URL's ``href``) ask for the latter
    when it says the former. A path is kept as it is: ``/mcp/`` is not ``/mcp``."""
    path = urlsplit(resource).path
    if path == "":
        return (resource, resource + "/")
    if path == "/":
        return (resource, resource[:-1])
    return (resource,)


def _protected_resource(
    resource: str | None, metadata: ResourceMetadata | None, issuer: str
) -> ProtectedResource | None:
    if resource is None:
        if metadata is not None:
            raise ConfigurationError("resource_metadata needs resource")
        return None
    protected = ProtectedResource(check_resource(resource), issuer, metadata)
    _header_text(protected.metadata_url, "the resource's metadata URL")  # in every challenge
    return protected


def _allowed_algorithms(algorithms: Iterable[str], secret: str | bytes | None) -> frozenset[str]:
    if isinstance(algorithms, str | bytes):
        # Read as its letters, "RS256" was refused as the algorithms R, S, 2, 5 and 6.
        raise ConfigurationError(f"algorithms takes a list of names, not {algorithms!r}")
    try:
        allowed = frozenset(algorithms)
    except TypeError:  # None, a number, a list of lists
        raise ConfigurationError(f"algorithms takes a list of names, not {algorithms!r}") from None
    unknown = allowed - ASYMMETRIC_ALGORITHMS - HMAC_ALGORITHMS
    if unknown:
        # "alg" is a case-sensitive string (RFC 7515 §4.1.1): "rs256" names nothing.
        spelled = {name.upper(): name for name in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS}
        meant = sorted(
            spelled[name.upper()]
            for name in unknown
            if isinstance(name, str) and name.upper() in spelled
        )
        hint = f"; names are case-sensitive: did you mean {meant}?" if meant else ""
        raise ConfigurationError(
            f"unsupported algorithms: {sorted(unknown, key=str)} ('none' never){hint}"
        )
    if not allowed:
        raise ConfigurationError("algorithms must not be empty")
    if bool(allowed & HMAC_ALGORITHMS) != (secret is not None):
        raise ConfigurationError(
            "HS* algorithms need a shared secret and a secret needs HS* algorithms: "
            "both must be configured on purpose (RFC 8725 §3.2)"
        )
    return allowed
