"""``BearerGuard``: the one verification flow, shared by every integration.

The flow for a token: a cache lookup by a hash of the token's end; on a miss, strict JWS parsing,
key selection (fetching the JWK Set only when the cache says so), signature verification,
claim validation; then, hit or miss, the revocation check. Everything but the key fetch and
the revocation store is synchronous, sans-I/O code from ``bearerguard._core``.

Around the flow, each in a module of its own: the constructor's argument checks
(``_guard_options``), fetching the key set (``_keyrefresh.KeyRefresher``), a bound token's
DPoP proof and client certificate (``_binding``), and usage monitoring's verdicts
(``_usage_watch.UsageWatch``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from numbers import Real
from typing import Any, Literal, NoReturn

from bearerguard._binding import check_certificate, check_dpop_binding, replay_failed
from bearerguard._core.claims import (
    ClaimCheck,
    ClaimsPolicy,
    check_still_valid,
    validate_claims,
)
from bearerguard._core.extract import (
    DEFAULT_MAX_TOKEN_BYTES,
    check_b64token,
    redact_token,
    too_large,
)
from bearerguard._core.introspected import token_from_introspection
from bearerguard._core.jws import (
    CompactJWS,
    decode_payload,
    looks_compact,
    parse_compact,
    parse_credentials,
)
from bearerguard._core.keycache import RefreshPolicy
from bearerguard._core.keys import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    KeySet,
    VerificationKey,
    key_from_secret,
    verify_signature,
)
from bearerguard._core.scopes import ScopeImplications, parse_scope_claim_paths, read_scopes
from bearerguard._core.times import check_count, check_seconds
from bearerguard._failures import traceback_text
from bearerguard._guard_options import (
    _allowed_algorithms,
    _answers_as_is_revoked,
    _audiences,
    _certificate_binding,
    _check_store_methods,
    _checked_confirmations,
    _header_text,
    _introspector,
    _key_source,
    _names,
    _nonblocking_checks,
    _protected_resource,
    _usage_monitor,
)
from bearerguard._keyrefresh import KeyRefresher
from bearerguard._usage_watch import UsageWatch
from bearerguard.audit import AuditLog, RequestInfo, token_fields
from bearerguard.dpop import DPoPPolicy, DPoPRequest
from bearerguard.errors import (
    AuthError,
    BadSignatureError,
    ConfigurationError,
    InvalidDPoPProofError,
    KeySetUnavailableError,
    MalformedTokenError,
    RevocationStoreError,
    RevokedTokenError,
    UnknownKeyError,
    UnsupportedAlgorithmError,
)
from bearerguard.introspection import Introspector
from bearerguard.jwks import FetchPolicy, check_issuer
from bearerguard.metadata import ResourceMetadata
from bearerguard.metrics import (
    CACHE,
    REVOCATION_FAILURES,
    MetricsHook,
    count,
)
from bearerguard.mtls import CertificateBinding
from bearerguard.revocation._table import DEFAULT_EXPIRY_GRACE
from bearerguard.revocation.memory import MemoryRevocationStore
from bearerguard.revocation.protocol import RevocationStore, SyncRevocationStore
from bearerguard.token import AccessToken, token_fingerprint
from bearerguard.usage import (
    SyncUsageMonitor,
    UsageMonitor,
)

__all__ = ["DEFAULT_ALGORITHMS", "BearerGuard"]

DEFAULT_ALGORITHMS: tuple[str, ...] = tuple(sorted(ASYMMETRIC_ALGORITHMS))
_RFC9068_CLAIMS = frozenset({"sub", "client_id", "iat", "jti"})
_log = logging.getLogger("bearerguard")
_HIT, _MISS = {"result": "hit"}, {"result": "miss"}
_UNKNOWN_REQUEST = RequestInfo("-", "-", None, None)


class _KeysNeeded(Exception):  # noqa: N818 - a signal between the core and its drivers
    """Raised by the synchronous core when the key set must be fetched before going on."""

    def __init__(self, *, unknown_kid: bool) -> None:
        super().__init__()
        self.unknown_kid = unknown_kid


def _unexpected(exc: Exception, jws: CompactJWS | None) -> MalformedTokenError:
    """A defect reached by client input must still be a refusal, never a 500."""
    # Not exc_info: an exception's message may quote what it failed on (claim values, header
    # bytes), and no log may hold any part of a token. Its type and frames say where.
    _log.error("unexpected error while verifying a token\n%s", traceback_text(exc, message=False))
    error = MalformedTokenError(f"unexpected {type(exc).__name__} during verification")
    error.header = None if jws is None else jws.header
    return error


@dataclass(slots=True)
class Verified:
    """A verification cache entry: the token, until when it may be reused, and its key."""

    token: AccessToken
    valid_until: float
    key: VerificationKey
    authorization: bytes = field(repr=False)
    """``Bearer <token>``, the token as sent in its ``Authorization`` value, which a lookup
    compares in full (the cache's key is its hash): ``reused`` takes the header's value as
    it is, and copies no token out of it."""
    key_set: KeySet | None = None
    """The published key set ``key`` was found in (at verification, then by ``_cached``):
    while it is still the current one, a reuse needs no membership check."""
    valid_from: float = -math.inf
    """The first instant it may be used (``nbf``/``iat`` less leeway): a wall clock stepped
    back before it finds the token not yet valid (RFC 7519 §4.1.5)."""
    cleared: int = 0
    """The memory store's table version at which the token was last found unrevoked."""
    described: dict[str, Any] | None = None
    attached: Any = None
    """What an integration derived from the token once and reuses on every hit (the ASGI
    middleware keeps Starlette's ``request.auth`` and ``request.user`` objects here)."""
    audit_logger: tuple[AuditLog, Any] | None = None
    """An audit log and its ``token_logger`` for this token, once it had one to give."""

    def audit_fields(self) -> dict[str, Any]:
        """The token's audit event fields (``token_fields``), built at the first call."""
        described = self.described
        if described is None:
            described = self.described = token_fields(self.token)
        return described

    def token_logger(self, audit: AuditLog) -> Any:
        """``audit.token_logger`` for this token, kept from the first call that got one."""
        kept = self.audit_logger
        if kept is not None and kept[0] is audit:
            return kept[1]
        logger = audit.token_logger(self.audit_fields())
        if logger is not None:
            self.audit_logger = (audit, logger)
        return logger

    def record_accepted(self, audit: AuditLog, request: RequestInfo, latency: float) -> None:
        """``audit.accepted`` for this cached token, with what the entry keeps for it.

        The token's logger is bound only for an event sampled in: an acceptance that is
        only counted, or sampled out, leaves the entry as it was. The middlewares' cache
        hit is counted here, once per request decided (``BearerGuard.reused`` counts none).
        """
        if audit.metrics is not None:
            count(audit.metrics, CACHE, _HIT)
        kept = self.audit_logger
        if kept is not None and kept[0] is audit:  # every event after the token's first
            audit.accepted_through(kept[1], request, latency)
        elif audit.admits_accepted(latency):
            audit.emit_accepted(
                self.token,
                request,
                latency,
                described=self.audit_fields(),
                token_logger=self.token_logger(audit),
            )


_cache_key = hash
"""The verification cache's key, applied to a token's last 32 bytes (``credentials[-32:]``,
its signature's end): Python's hash of them, SipHash-1-3 under a key drawn at random per
process (PEP 456). Only a key: a lookup compares the whole token, so a collision, chosen or
not, is only a miss, and only verified tokens are inserted, whose signatures' ends nobody
else chooses. The tail, not the whole token: 0.17 µs for the slice, hash and lookup against
0.44 µs with the whole token (0.77 µs for SHA-256 alone, whose fixed set-up costs more than
hashing)."""

_BEARER = b"Bearer "
"""The scheme as the middlewares' cache hit takes it: ``Verified.authorization``."""


def _credentials(token: str | bytes) -> bytes:
    """The token's bytes, as the verification cache and the fingerprint take them."""
    return token if isinstance(token, bytes) else token.encode("latin-1", "replace")


def _describe_refusal(
    exc: AuthError,
    credentials: bytes,
    access: AccessToken | None,
    dpop: DPoPRequest | None,
    *,
    held: bool,
) -> None:
    """What the audit log and the challenge need to know of a refusal by ``authenticate``.

    ``held``: the token's certificate binding held (RFC 8705 §3) before it was refused (it
    was revoked, its store was down): audited with ``binding="mtls"``, as its acceptance.
    """
    exc.fingerprint = token_fingerprint(credentials)
    if exc.token is None:  # refused once verified (a DPoP proof): audited with its claims
        exc.token = access
    if dpop is not None:
        exc.sent_with(dpop.scheme)  # the challenge of the scheme the client used
    if held and exc.binding == "bearer":
        exc.binding = "mtls"


def _make_room(cache: dict[int, Verified], size: int) -> None:
    """Evict the oldest entries of ``cache`` until one more fits within ``size``.

    Down below the bound, not one entry: WSGI threads verifying at once may each find room
    and each insert, and an eviction is skipped when another thread changes the dict under
    it. Evicting one entry per insertion would keep every such excess for good; this way
    the next insertion takes the cache back within its bound.
    """
    # Another thread changing the dict meanwhile makes next(iter()) raise: the next
    # insertion evicts what this one could not.
    with contextlib.suppress(RuntimeError, StopIteration):
        while len(cache) >= size:
            cache.pop(next(iter(cache)), None)


def _still_chosen(keys: KeySet, entry: Verified) -> bool:
    """Whether a first verification of the entry's token would pick its key in ``keys``.

    Not only that the key is still published: that the token's ``kid`` (or its absence, once
    the set holds several keys) and ``alg`` still name that key (RFC 7515 §4.1.4), else a
    cached token would be accepted where the same token seen first is refused. Among keys
    sharing the kid, a first verification would try each: any of them will do.
    """
    token = entry.token
    return entry.key in keys.keys_for(token.key_id, token.algorithm)


class BearerGuard:
    """Verifies access tokens from one trusted issuer for one resource server.

    Args:
        issuer: the trusted issuer; a token's ``iss`` must equal it exactly. https, or http
            on a loopback host for development; no query or fragment (RFC 8414 §2).
        audience: this API's identifier(s); a token's ``aud`` must contain one of them. The
            ``resource`` by default: a token obtained for another resource is refused even
            from the trusted issuer (RFC 8707 §2, RFC 9068 §4).
        jwks_uri: where the issuer publishes its keys; ``None`` discovers it from the
            issuer's metadata (OIDC Discovery, then RFC 8414).
        algorithms: the allow-list. By default every asymmetric JWS algorithm (RS*, PS*,
            ES*, EdDSA, and RFC 9864's Ed25519 and Ed448), each usable only with a key of its
            own type and curve. HS* only together
            with ``secret``, and never with keys from a JWKS (RFC 8725 §3.1, §3.2).
        leeway: seconds of clock skew tolerated for ``exp``, ``nbf`` and ``iat``.
        revocation: the store asked on every request; by default a ``MemoryRevocationStore``
            on this guard's clock that keeps a revoked token's entry 300 s past its ``exp``,
            or ``leeway`` plus 60 s when longer. A store whose ``expiry_grace`` is shorter
            than ``leeway`` is refused: a revocation would lapse while the token is accepted.
        revocation_failure: ``"deny"`` (default) answers 503 when the store fails;
            ``"allow"`` lets verified tokens through and records the failure.
        introspection: accept opaque access tokens by asking the authorization server
            (RFC 7662): a token that is not shaped as a compact JWS is introspected, one that
            is stays verified locally. The answer must say ``active: true``, carry ``exp``,
            and name one of the audiences in ``aud``, as a JWT must (RFC 9068 §4): an answer
            without ``aud`` cannot show the token was meant for this API, unless the
            introspector was built with ``audience_checked_by_server=True``. ``iss``, when
            present, must match (list it in ``required_claims`` to demand it). The
            revocation store is asked afterwards, as for JWTs. An endpoint failure answers
            503 (fail closed).
        keys: static keys for offline use, instead of fetching: a PEM public key, a JWKS
            (dict or JSON text), or a list of these; with several keys, each needs a
            ``kid`` (tokens name their key by it).
        secret: a shared secret for HS* tokens, configured on purpose; at least as long as
            the hash (RFC 7518 §3.2).
        profile: ``"rfc9068"`` enforces the JWT access token profile: ``typ`` ``at+jwt`` and
            the claims ``sub``, ``client_id``, ``iat`` and ``jti``.
        require_typ: require ``typ`` ``at+jwt`` (RFC 9068 §2.1) without the whole profile.
        require_jti: refuse tokens without ``jti`` (they cannot be revoked individually).
        max_age: refuse tokens issued more than this many seconds ago (needs ``iat``).
        required_claims: claims that must be present and not null.
        claim_checks: callables given the claims; a falsy result or an exception refuses.
            They run when a token is verified, not on each reuse of a cached one.
        scope_claims: further claims read as scopes, besides ``scope`` and ``scp``; dotted
            paths reach into objects (``"realm_access.roles"``), and a claim named by a URI
            (``"https://app.example/roles"``) is read whole, its dots part of its name.
        usage: watch how each token is used (``bearerguard.usage``): distinct client
            networks and uses per token and per subject over a window, with a
            ``token.anomaly`` audit event and, as its policy says, the token refused or
            revoked. Off by default.
        scope_implications: broader scopes and the narrower ones they imply, applied by
            every scope check (``{"items:write": ["items:read"], "admin": ["admin:*"]}``);
            see ``ScopeImplications``.
        resource: this API's canonical resource identifier (RFC 8707 §2, RFC 9728 §1.2),
            an https URL without query or fragment. It is the default audience (one
            without a path also spelt with ``/`` as its path, RFC 3986 §6.2.3), the
            middlewares serve its protected-resource metadata (RFC 9728 §3), and every 401
            and 403 challenge carries ``resource_metadata`` (RFC 9728 §5.1).
        resource_metadata: further members of that metadata document (needs ``resource``).
        realm: the ``realm`` of challenges; the first audience by default.
        max_token_bytes: tokens longer than this are refused before any decoding.
        cache_size: how many verified tokens are remembered; 0 disables the cache.
        refresh: key set freshness, cooldown and staleness rules.
        fetch: timeouts and size limits for key set fetches.
        audit_sample_accepted: the share of ``token.accepted`` events emitted (0.0 to 1.0).
        audit_logger: a structlog-compatible logger instead of ``bearerguard.audit``.
        metrics: counts decisions, cache lookups, key fetches and store failures
            (``bearerguard.metrics``: in memory, Prometheus, or your own hook).
        dpop: accept DPoP-bound tokens (RFC 9449) as its ``DPoPPolicy`` says; see
            ``bearerguard.dpop``. Off by default.
        mtls: accept certificate-bound tokens (RFC 8705 §3): a token with ``cnf``
            ``x5t#S256`` only with the client certificate it names, taken as its
            ``CertificateBinding`` says; see ``bearerguard.mtls``. Off by default.
        bindings_checked_upstream: accept tokens bound to their client (``cnf``) that
            this guard does not check, because a gateway in front of the API checks them.
            Off by default: such a token is refused (``invalid_claim``).
        clock: returns epoch seconds; injectable for tests.

    A token bound to its client (a ``cnf`` claim, RFC 7800 §3) is accepted only when the
    guard checks that binding: with ``dpop`` for ``cnf.jkt`` (RFC 9449 §6), with ``mtls``
    for ``cnf.x5t#S256`` (RFC 8705 §3). Otherwise it is refused, never taken as a plain
    bearer token that would work for whoever stole it, unless
    ``bindings_checked_upstream``.

    Raises:
        ConfigurationError: an inconsistent or unsafe configuration.
    """

    def __init__(  # noqa: PLR0915 - one statement per setting
        self,
        *,
        issuer: str,
        audience: str | Sequence[str] | None = None,
        jwks_uri: str | None = None,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        leeway: float = 30.0,
        revocation: RevocationStore | None = None,
        revocation_failure: Literal["deny", "allow"] = "deny",
        introspection: Introspector | None = None,
        usage: UsageMonitor | SyncUsageMonitor | None = None,
        keys: Any = None,
        secret: str | bytes | None = None,
        profile: Literal["rfc9068"] | None = None,
        require_typ: bool = False,
        require_jti: bool = False,
        max_age: float | None = None,
        required_claims: Iterable[str] = (),
        claim_checks: Iterable[ClaimCheck] = (),
        scope_claims: Iterable[str] = (),
        scope_implications: ScopeImplications | Mapping[str, Iterable[str]] | None = None,
        resource: str | None = None,
        resource_metadata: ResourceMetadata | None = None,
        realm: str | None = None,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        cache_size: int = 10_000,
        refresh: RefreshPolicy | None = None,
        fetch: FetchPolicy | None = None,
        audit_sample_accepted: float = 1.0,
        audit_logger: Any = None,
        metrics: MetricsHook | None = None,
        dpop: DPoPPolicy | None = None,
        mtls: CertificateBinding | None = None,
        bindings_checked_upstream: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = check_issuer(issuer)
        self.protected_resource = _protected_resource(resource, resource_metadata, self.issuer)
        self.audiences = audiences = _audiences(audience, resource)
        allowed = _allowed_algorithms(algorithms, secret)
        if profile not in (None, "rfc9068"):
            raise ConfigurationError(f"unknown profile {profile!r}")
        # A NaN leeway or max_age compared false with every instant: expiry, or the age
        # limit, was off. Numbers of any kind (numpy's, Fraction, Decimal from a settings
        # library) serve once converted.
        leeway = check_seconds("leeway", leeway)
        max_age = None if max_age is None else check_seconds("max_age", max_age, positive=True)
        max_token_bytes = check_count("max_token_bytes", max_token_bytes, least=16)
        # 0 turns the cache off; a negative size did too, silently.
        cache_size = check_count("cache_size", cache_size, least=0)
        share: object = audit_sample_accepted  # typed float, given anything
        if isinstance(share, bool) or not isinstance(share, Real | Decimal):
            raise ConfigurationError(f"audit_sample_accepted must be a number, not {share!r}")
        try:
            audit_sample_accepted = float(audit_sample_accepted)
        except (ValueError, OverflowError):  # Decimal("sNaN"); an int beyond any float
            raise ConfigurationError("audit_sample_accepted must be a number") from None
        if not 0.0 <= audit_sample_accepted <= 1.0:  # NaN fails too
            raise ConfigurationError("audit_sample_accepted must be between 0 and 1")
        if not callable(clock):
            raise ConfigurationError("clock must be a callable returning epoch seconds")
        for name, flag in (
            ("require_typ", require_typ),
            ("require_jti", require_jti),
            ("bindings_checked_upstream", bindings_checked_upstream),
        ):
            if not isinstance(flag, bool):
                # A string such as "false" (from the environment) is truthy: it would switch
                # bindings_checked_upstream on, accepting bound tokens unchecked.
                raise ConfigurationError(f"{name} must be True or False, not {flag!r}")
        required_claims = _names(required_claims, "required_claims")
        scope_claims = _names(scope_claims, "scope_claims")
        if callable(claim_checks):
            raise ConfigurationError("claim_checks takes a list of functions of the claims")
        claim_checks = tuple(claim_checks)
        for check in claim_checks:
            if not callable(check) or inspect.iscoroutinefunction(check):
                raise ConfigurationError(
                    f"claim_checks take plain functions of the claims, not {check!r}"
                )
        if revocation_failure not in ("deny", "allow"):
            raise ConfigurationError("revocation_failure is 'deny' or 'allow'")
        if not isinstance(refresh, RefreshPolicy | None) or not isinstance(
            fetch, FetchPolicy | None
        ):
            raise ConfigurationError("refresh and fetch take RefreshPolicy and FetchPolicy")
        self.algorithms = allowed
        self.leeway = float(leeway)
        self.realm = _header_text(audiences[0] if realm is None else realm, "realm")
        self.max_token_bytes = max_token_bytes
        self.revocation: RevocationStore = (
            MemoryRevocationStore(
                expiry_grace=max(DEFAULT_EXPIRY_GRACE, self.leeway + 60.0), clock=clock
            )
            if revocation is None
            else revocation
        )
        if not isinstance(self.revocation, RevocationStore):
            raise ConfigurationError("revocation must implement RevocationStore.is_revoked")
        _check_store_methods(self.revocation)
        grace = getattr(self.revocation, "expiry_grace", None)
        if isinstance(grace, int | float) and not grace >= self.leeway:  # NaN fails too
            # A revoked token's entry would lapse while the token is still accepted.
            raise ConfigurationError(
                f"the revocation store's expiry_grace ({grace:g} s) must be at least "
                f"the guard's leeway ({self.leeway:g} s)"
            )
        self._fail_open = revocation_failure == "allow"
        # Protocol checks are slow: decided once here, not per request.
        store = self.revocation
        self._sync_store = (
            store
            if isinstance(store, SyncRevocationStore)
            and _answers_as_is_revoked(store, "is_revoked_sync")
            else None
        )
        self._revoked_now, self._reuse_check, self._revocations = _nonblocking_checks(store)
        self._introspector = _introspector(introspection)
        self.usage = _usage_monitor(usage)
        # "revoke" promises every instance refuses the token from then on: a store that
        # cannot revoke would leave it refused only while its usage stays over the limit.
        if (
            self.usage is not None
            and self.usage.policy.action == "revoke"
            and not any(
                callable(getattr(store, name, None))
                for name in ("revoke_token", "revoke_token_sync")
            )
        ):
            raise ConfigurationError(
                f"UsagePolicy(action='revoke') needs a revocation store with revoke_token; "
                f"{type(store).__name__} has none (use action='reject')"
            )
        self._store_name = str(getattr(self.revocation, "name", type(self.revocation).__name__))
        strict = profile == "rfc9068"
        self._policy = ClaimsPolicy(
            issuer=self.issuer,
            audiences=frozenset(audiences),
            leeway=self.leeway,
            max_age=max_age,
            require_typ=require_typ or strict,
            required_claims=frozenset(required_claims)
            | (_RFC9068_CLAIMS if strict else frozenset())
            | ({"jti"} if require_jti else frozenset()),
            checks=claim_checks,
            confirmations=_checked_confirmations(dpop, mtls, upstream=bindings_checked_upstream),
        )
        # How scopes are read from tokens, and how they are matched against routes.
        self._scope_paths, self.scope_implications = (
            parse_scope_claim_paths(scope_claims),
            ScopeImplications.of(scope_implications),
        )
        self._secret = None if secret is None else key_from_secret(secret, allowed)
        asymmetric = allowed & ASYMMETRIC_ALGORITHMS
        self._refresh_policy = refresh or RefreshPolicy()
        fetch_policy = fetch or FetchPolicy()
        fetcher, self._keys = _key_source(
            self.issuer,
            keys=keys,
            jwks_uri=jwks_uri,
            asymmetric=asymmetric,
            refresh=self._refresh_policy,
            fetch=fetch_policy,
            clock=clock,
        )
        # A plain dict, oldest entry evicted first: a lookup costs a fraction of an LRU's, and
        # single dict operations stay safe under WSGI threads without a lock. Keyed by a hash
        # of the token's end (_cache_key), each match confirmed by comparing the whole token.
        self._cache: dict[int, Verified] | None = {} if cache_size > 0 else None
        self._cache_size = cache_size
        # What reused() looks in: no cache when a reuse may need I/O (the store has no
        # answer without a coroutine, or usage monitoring counts every use), or a check of
        # the request: a DPoP proof (RFC 9449 §7.1) or the client certificate (RFC 8705 §3).
        bound = dpop is not None or mtls is not None
        reusable = self._reuse_check is not None and self.usage is None and not bound
        self._reuse_cache = self._cache if reusable else None
        if metrics is not None and not isinstance(metrics, MetricsHook):
            raise ConfigurationError("metrics must implement MetricsHook (increment, observe)")
        self.metrics = metrics
        # Fetches the key set into self._keys as its rules want, once however many ask.
        self._refresher = KeyRefresher(
            fetcher,
            self._keys,
            algorithms=asymmetric,
            timeout=fetch_policy.timeout,
            issuer=self.issuer,
            metrics=metrics,
            clock=clock,
        )
        self.audit = AuditLog(
            sample_accepted=audit_sample_accepted, logger=audit_logger, metrics=metrics
        )
        # Each accepted token's use observed, and its verdict applied (bearerguard.usage).
        self._usage_watch = (
            None
            if self.usage is None
            else UsageWatch(
                self.usage, revocation=self.revocation, audit=self.audit, metrics=metrics
            )
        )
        if dpop is not None and not isinstance(dpop, DPoPPolicy):
            raise ConfigurationError("dpop must be a DPoPPolicy")
        self.dpop = dpop
        self.mtls = _certificate_binding(mtls)
        if self.protected_resource is not None:
            self.protected_resource = self.protected_resource.binding(
                dpop_algorithms=None if dpop is None else dpop.allowed,
                dpop_required=dpop is not None and dpop.mode == "required",
                mtls=self.mtls is not None,
                upstream=bindings_checked_upstream,
            )
        # One check on the middlewares' hot path: does any request need more than a token?
        self.sender_constrained = dpop is not None or mtls is not None
        self.clock = clock
        if dpop is not None and dpop.external_url is None and dpop.hosts is None:
            # RFC 9449 §4.3 step 9, §11.1: the htu is then checked against a URL rebuilt from
            # the client's own Host header. Refusing such requests would break every server
            # reached directly and local development; a word at start makes it a choice.
            _log.warning(
                "bearerguard: DPoP proofs are checked against the request's Host header, "
                "which the client chooses: a proof made for another API accepting the same "
                "tokens can be replayed here. Set DPoPPolicy(external_url=...) or "
                "DPoPPolicy(hosts=[...]) in production"
            )

    @property
    def resource(self) -> str | None:
        """The canonical resource identifier this guard protects (RFC 8707), if configured."""
        resource = self.protected_resource
        return None if resource is None else resource.resource

    @property
    def introspection(self) -> Introspector | None:
        """The introspector that judges opaque tokens, if configured."""
        return self._introspector

    def __repr__(self) -> str:
        return f"BearerGuard(issuer={self.issuer!r}, audience={self.audiences!r})"

    # -- the flow -------------------------------------------------------------------------

    def reused(self, authorization: bytes) -> Verified | None:
        """The cache entry of a token verified before, when nothing on this request needs I/O.

        ``authorization`` is the request's ``Authorization`` value, ``Bearer <token>``: it
        must equal the entry's byte for byte, so any other spelling of the scheme (RFC 6750
        §2.1 lets it vary in case) returns ``None``, as does the bare token.

        For the middlewares' hot path: answers only a cache hit whose key set is fresh
        and still holds its key, whose revocation store answers without waiting
        (``nonblocking``, or ``is_revoked_now`` when it can), with no usage monitor.
        Anything else, refusals included, returns ``None`` and goes through
        ``authenticate``, which applies every rule and carries the details a refusal needs.
        The hit is counted by ``Verified.record_accepted``, once the middleware decides the
        request (an inner middleware meeting a request already let in counts nothing).
        """
        cache = self._reuse_cache
        if cache is None:
            return None
        # The token's last 32 bytes, as _verify_jws keyed it (every verified token is longer).
        entry = cache.get(_cache_key(authorization[-32:]))
        if entry is None or entry.authorization != authorization:
            return None
        now = self.clock()
        keys = self._keys
        # Expiry (and nbf/iat, should the clock step back) on every use; the key set must be
        # fresh and still the one that held the key (any refresh installs a new set:
        # _cached checks membership again and re-stamps).
        if not (
            entry.valid_from <= now < entry.valid_until
            and keys.fresh_from <= now < keys.fresh_until
            and entry.key_set is keys.keys
        ):
            return None
        table = self._revocations
        version = 0 if table is None else table.version  # read before the lookup it vouches for
        if version == 0 or entry.cleared != version:
            revoked_now = self._reuse_check
            try:
                if revoked_now is None or revoked_now(entry.token):
                    return None
            except Exception:  # noqa: BLE001 - authenticate applies the failure policy
                return None
            entry.cleared = version
        return entry

    async def authenticate(
        self,
        token: str | bytes,
        *,
        client: str | None = None,
        request: RequestInfo | None = None,
        dpop: DPoPRequest | None = None,
        certificate: bytes | None = None,
    ) -> AccessToken:
        """Verify ``token`` and check its revocation status.

        Args:
            token: the bearer token, as text or as the raw credentials of the request's
                ``Authorization`` header. Its b64token syntax (RFC 6750 §2.1) is checked
                unless this exact token was verified before.
            client: the client's address, counted by usage monitoring.
            request: the request, for the ``token.anomaly`` audit event.
            dpop: the request's scheme, ``DPoP`` proofs, method and URL, when the guard has
                a ``DPoPPolicy``; ``None`` counts as the Bearer scheme without a proof.
            certificate: the DER of the request's client certificate, when the guard has a
                ``CertificateBinding``; ``None``: no certificate was presented.

        Returns:
            The verified token.

        Raises:
            AuthError: the token is refused (``InvalidTokenError``), or keys or revocation
                status cannot be had (``ServiceUnavailableError``). The error carries the
                token's fingerprint, and its header or verified token where known.
        """
        credentials = _credentials(token)
        access = None
        held = False  # the token's certificate binding held (RFC 8705 §3)
        try:
            verified = self._cached(credentials)
            if verified is not None:
                access = verified.token
            elif len(credentials) > self.max_token_bytes:  # as extraction: before decoding
                raise too_large(credentials, self.max_token_bytes)
            elif self._introspector is not None and not looks_compact(
                text := check_b64token(credentials)
            ):
                answer = await self._introspector.introspect(text)
                access = self._introspected(answer.claims, text)
            else:
                jws = self._parse(credentials)
                try:
                    verified = self._verify_jws(jws, credentials, refreshed=False)
                except _KeysNeeded as needed:
                    await self._refresher.refresh(unknown_kid=needed.unknown_kid)
                    verified = self._verify_jws(jws, credentials, refreshed=True)
                access = verified.token
            policy = self.dpop
            replay = (
                None if policy is None else check_dpop_binding(policy, access, dpop, self.clock)
            )
            if self.mtls is not None:
                held = check_certificate(self.mtls, access, certificate)
            try:
                if self._revoked_now is not None:  # a store that never blocks: no coroutine
                    revoked = self._revoked_now(access)
                else:
                    revoked = await self.revocation.is_revoked(access)
            except Exception as exc:  # noqa: BLE001 - any store failure: the policy decides
                self._revocation_failed(access, exc)
            else:
                if revoked:
                    self._revoked(access)
            if policy is not None and replay is not None:  # last, as check_dpop_binding says
                try:
                    first = await policy.replay.first_use(*replay)
                except Exception as exc:  # noqa: BLE001 - any store failure: fail closed
                    replay_failed(access, exc)
                if not first:
                    raise InvalidDPoPProofError("proof jti replayed")
            if self._usage_watch is not None:
                await self._usage_watch.observe(access, client, request)
        except AuthError as exc:
            _describe_refusal(exc, credentials, access, dpop, held=held)
            raise
        return access

    async def recheck(self, token: AccessToken) -> None:
        """Check again, at a later use, a token this guard accepted earlier (each message of
        a websocket): what may have changed since. Expiry at the guard's clock, with its
        leeway and maximum age, as at acceptance (RFC 7519 §4.1.4), and revocation: the
        store's check that never waits when it has one, else ``is_revoked``, under the
        guard's ``revocation_failure`` policy. Signature and claims are not checked again.

        Raises:
            ExpiredTokenError: ``exp`` (plus leeway) has passed.
            TokenTooOldError: the maximum age (plus leeway) has passed.
            RevokedTokenError: the store says the token is revoked.
            RevocationStoreError: the store failed (not with ``revocation_failure="allow"``).
        """
        self._check_still_valid(token)
        # As authenticate asks (a Redis store's is_revoked reads its mirror when it has one).
        try:
            if self._revoked_now is not None:  # a store that never blocks: no coroutine
                revoked = self._revoked_now(token)
            else:
                revoked = await self.revocation.is_revoked(token)
        except Exception as exc:  # noqa: BLE001 - any store failure: the policy decides
            self._revocation_failed(token, exc)
        else:
            if revoked:
                self._revoked(token)

    def recheck_sync(self, token: AccessToken) -> None:
        """Check again a token accepted earlier, as ``recheck`` does, blocking this thread
        (for WSGI: each further chunk of a streamed response). The revocation store's
        synchronous side answers (``SyncRevocationStore``), as in ``authenticate_sync``.

        Raises:
            ExpiredTokenError: ``exp`` (plus leeway) has passed.
            TokenTooOldError: the maximum age (plus leeway) has passed.
            RevokedTokenError: the store says the token is revoked.
            RevocationStoreError: the store failed (not with ``revocation_failure="allow"``).
            ConfigurationError: the store has no synchronous side.
        """
        self._check_still_valid(token)
        store = self.require_sync_revocation()  # outside the failure policy, as at acceptance
        try:
            revoked = store.is_revoked_sync(token)
        except Exception as exc:  # noqa: BLE001 - any store failure: the policy decides
            self._revocation_failed(token, exc)
        else:
            if revoked:
                self._revoked(token)

    def authenticate_sync(
        self,
        token: str | bytes,
        *,
        client: str | None = None,
        request: RequestInfo | None = None,
        dpop: DPoPRequest | None = None,
        certificate: bytes | None = None,
    ) -> AccessToken:
        """Verify ``token`` as ``authenticate`` does, blocking this thread (for WSGI).

        Key fetches are coalesced across threads, no lock is held while verifying, and no
        call blocks for longer than one fetch's timeout. The revocation store must offer the
        synchronous side (``SyncRevocationStore``): without it, ``ConfigurationError``.
        """
        credentials = _credentials(token)
        access = None
        held = False  # the token's certificate binding held (RFC 8705 §3)
        try:
            verified = self._cached(credentials)
            if verified is not None:
                access = verified.token
            elif len(credentials) > self.max_token_bytes:  # as extraction: before decoding
                raise too_large(credentials, self.max_token_bytes)
            elif self._introspector is not None and not looks_compact(
                text := check_b64token(credentials)
            ):
                answer = self._introspector.introspect_sync(text)
                access = self._introspected(answer.claims, text)
            else:
                jws = self._parse(credentials)
                try:
                    verified = self._verify_jws(jws, credentials, refreshed=False)
                except _KeysNeeded as needed:
                    self._refresher.refresh_sync(unknown_kid=needed.unknown_kid)
                    verified = self._verify_jws(jws, credentials, refreshed=True)
                access = verified.token
            policy = self.dpop
            replay = (
                None if policy is None else check_dpop_binding(policy, access, dpop, self.clock)
            )
            if self.mtls is not None:
                held = check_certificate(self.mtls, access, certificate)
            # Outside the failure policy: a store without a synchronous side is a
            # configuration mistake, never an outage ("allow" let every token through).
            store = self.require_sync_revocation()
            try:
                revoked = store.is_revoked_sync(access)
            except Exception as exc:  # noqa: BLE001 - any store failure: the policy decides
                self._revocation_failed(access, exc)
            else:
                if revoked:
                    self._revoked(access)
            if policy is not None and replay is not None:  # last, as check_dpop_binding says
                try:
                    first = policy.replay.first_use_sync(*replay)
                except Exception as exc:  # noqa: BLE001 - any store failure: fail closed
                    replay_failed(access, exc)
                if not first:
                    raise InvalidDPoPProofError("proof jti replayed")
            if self._usage_watch is not None:
                self._usage_watch.observe_sync(access, client, request)
        except AuthError as exc:
            _describe_refusal(exc, credentials, access, dpop, held=held)
            raise
        return access

    # Everything below up to the I/O edges is synchronous and shared by every driver.

    def _check_still_valid(self, token: AccessToken) -> None:
        """A recheck's expiry and maximum age, at the guard's clock (RFC 7519 §4.1.4)."""
        try:
            issued = token.issued_at
            check_still_valid(
                token.expires_at.timestamp(),
                None if issued is None else issued.timestamp(),
                self._policy,
                self.clock(),
            )
        except AuthError as exc:
            exc.token = token
            raise

    def _cached(self, credentials: bytes) -> Verified | None:
        """The cache entry for ``credentials`` if it may still be used, counted as a hit or miss."""
        verified = self._usable_entry(credentials)
        if self.metrics is not None:  # no call at all without a hook: the hot path
            count(self.metrics, CACHE, _MISS if verified is None else _HIT)
        return verified

    def _usable_entry(self, credentials: bytes) -> Verified | None:
        cache = self._cache
        if cache is None:
            return None
        key = _cache_key(credentials[-32:])
        entry = cache.get(key)
        # The token compared with the entry's Bearer form from its eighth byte, in place.
        if (
            entry is None
            or len(entry.authorization) != len(credentials) + len(_BEARER)
            or not entry.authorization.endswith(credentials)
        ):
            return None
        now = self.clock()
        # Expiry is checked on every use, and nbf/iat: a clock stepped back (an NTP
        # correction) drops the entry, and verifying again refuses the token as not yet
        # valid. A cached verification also lasts only while the key set it came from may
        # be used without a refresh, and while the key that made it is still published:
        # removing a key from the JWKS revokes its tokens.
        if entry.valid_from <= now < entry.valid_until:
            if entry.key is self._secret:
                return entry
            keys = self._keys
            # The set is read once: one another thread installs meanwhile must not be
            # stamped on the entry unchecked (reused() trusts the stamp alone).
            published = keys.keys
            if (
                keys.current(now)
                and published is not None
                and (entry.key_set is published or _still_chosen(published, entry))
            ):
                entry.key_set = published
                return entry
        cache.pop(key, None)
        return None

    @staticmethod
    def _parse(credentials: str | bytes) -> CompactJWS:
        try:
            if isinstance(credentials, str):
                return parse_compact(credentials)
            # Credentials that are exactly a compact JWS's characters are a b64token too;
            # anything else is checked as one first (RFC 6750 §2.1), then as a JWS.
            jws = parse_credentials(credentials)
            return parse_compact(check_b64token(credentials)) if jws is None else jws
        except AuthError:
            raise
        except Exception as exc:
            raise _unexpected(exc, None) from exc

    def _verify_jws(self, jws: CompactJWS, credentials: bytes, *, refreshed: bool) -> Verified:
        """Verify a parsed token; raises ``_KeysNeeded`` when the key set must be fetched.

        The verification is cached under ``credentials``.
        """
        header = jws.header
        try:
            key, key_set = self._select_key(jws, refreshed=refreshed)
            if not verify_signature(key, header["alg"], jws.signing_input, jws.signature):
                key = self._another_key(jws, key, key_set, refreshed=refreshed)
            claims = decode_payload(jws)
            times = validate_claims(header, claims, self._policy, self.clock())
            access = AccessToken.from_claims(
                claims,
                scopes=read_scopes(claims, self._scope_paths),
                expires_at=times.expires_at,
                issued_at=times.issued_at,
                key_id=header.get("kid"),
                algorithm=header["alg"],
                fingerprint=None,  # hashed on first read: a miss nobody logs spends no SHA-256
                raw=jws.token,
            )
        except AuthError as exc:
            exc.header = header
            raise
        except _KeysNeeded:
            raise
        except Exception as exc:
            raise _unexpected(exc, jws) from exc
        verified = Verified(
            access,
            times.valid_until,
            key,
            _BEARER + credentials,
            key_set,
            times.valid_from,
        )
        cache = self._cache
        if cache is not None:
            if len(cache) >= self._cache_size:
                _make_room(cache, self._cache_size)
            cache[_cache_key(credentials[-32:])] = verified
        return verified

    def _introspected(self, answer: Mapping[str, Any], token: str) -> AccessToken:
        """Judge an opaque token on the authorization server's answer (never cached here:
        the introspector's own cache keeps active answers briefly)."""
        introspector = self._introspector
        assert introspector is not None  # noqa: S101 - only introspected tokens come here
        try:
            return token_from_introspection(
                answer,
                policy=self._policy,
                scope_paths=self._scope_paths,
                now=self.clock(),
                fingerprint=token_fingerprint(token),
                raw=token,
                audience_checked_by_server=introspector.audience_checked_by_server,
            )
        except AuthError:
            raise
        except Exception as exc:
            raise _unexpected(exc, None) from exc

    def _select_key(
        self, jws: CompactJWS, *, refreshed: bool
    ) -> tuple[VerificationKey, KeySet | None]:
        """The trusted key for ``jws``, and the published set it was found in (``None`` for
        the shared secret): a cache entry is stamped with that set."""
        header = jws.header
        alg: str = header["alg"]
        if alg not in self.algorithms:
            raise UnsupportedAlgorithmError(f"alg {alg[:32]!r} is not allowed")
        if alg in HMAC_ALGORITHMS:
            # Only the configured secret verifies HS*: never a JWK, never a public key.
            assert self._secret is not None  # noqa: S101 - guaranteed by __init__
            if alg not in self._secret.algorithms:
                raise UnsupportedAlgorithmError("the shared secret is too short for this alg")
            return self._secret, None
        kid: str | None = header.get("kid")
        cache = self._keys
        keys = cache.keys
        now = self.clock()
        # A set within its freshness is usable and needs no refresh: the rules apply past it.
        if keys is None or not cache.fresh(now):
            if not refreshed and self._refresher.fetcher is not None and cache.needs_refresh(now):
                # A kid the set lacks waits for a fetch already under way (rotation).
                raise _KeysNeeded(unknown_kid=keys is not None and not keys.candidates(kid))
            if not cache.usable(now) or keys is None:
                if not refreshed and self._refresher.in_flight():
                    raise _KeysNeeded(unknown_kid=False)  # wait for the fetch under way
                raise KeySetUnavailableError(cache.unavailable(now))
        try:
            key = keys.key_for(kid, alg)
        except UnsupportedAlgorithmError:
            # RFC 7517 §4.5: one kid may name keys of several types, and a key of this type
            # may just have been published: look once, as for a kid miss, then refuse.
            if not refreshed and self._refresher.may_look_again(now):
                raise _KeysNeeded(unknown_kid=True) from None
            raise
        if key is not None:
            return key, keys
        if not refreshed and self._refresher.may_look_again(now):
            raise _KeysNeeded(unknown_kid=True)
        if cache.last_failed:
            raise KeySetUnavailableError(
                f"kid {str(kid)[:64]!r} unknown; key set unreachable: "
                f"last fetch failed ({cache.failure})"
            )
        raise UnknownKeyError(f"no trusted key for kid {str(kid)[:64]!r}")

    def _another_key(
        self,
        jws: CompactJWS,
        tried: VerificationKey,
        key_set: KeySet | None,
        *,
        refreshed: bool,
    ) -> VerificationKey:
        """The key verifying ``jws`` among the others the set holds under its ``kid`` and for
        its ``alg``, once ``tried`` did not; else the refusal of ``_bad_signature``.

        RFC 7517 §4.5: kids should be distinct within a set, yet an issuer may publish an old
        and a new key under one kid while it rotates. Only keys of the trusted set are tried,
        each bound to its own algorithms (``use: enc`` keys were never loaded).
        """
        if key_set is not None:
            for key in key_set.keys_for(jws.header.get("kid"), jws.alg):
                if key is not tried and verify_signature(
                    key, jws.alg, jws.signing_input, jws.signature
                ):
                    return key
        return self._bad_signature(key_set, refreshed=refreshed)

    def _bad_signature(self, key_set: KeySet | None, *, refreshed: bool) -> NoReturn:
        """Refuse a signature the chosen key does not verify, once the published set has
        been looked at again if the rules allow (``_KeysNeeded``).

        An issuer may replace a key and keep its ``kid``, or replace its one key without a
        ``kid``: tokens of the new key then name the old one (RFC 7515 §4.1.4: the ``kid`` is
        a hint). They were refused until the set's freshness ended (up to ``max_ttl``);
        they are now looked for as a kid miss is, at most one fetch per cooldown.
        """
        fetched = key_set is not None and self._refresher.fetcher is not None  # not a static key
        if fetched and not refreshed and self._refresher.may_look_again(self.clock()):
            raise _KeysNeeded(unknown_kid=True)
        raise BadSignatureError("signature does not verify")

    def _revocation_failed(self, access: AccessToken, exc: Exception) -> None:
        count(self.metrics, REVOCATION_FAILURES, {"store": self._store_name})
        # The application's store may quote the token it was given: never logged.
        detail = redact_token(f"{type(exc).__name__}: {exc}", access.raw)
        if self._fail_open:
            _log.warning(
                "bearerguard: revocation store %s failed, failing open: %s",
                self._store_name,
                detail,
            )
            return
        failure = RevocationStoreError(detail[:200])
        failure.token = access
        failure.store = self._store_name
        raise failure from exc

    def _revoked(self, access: AccessToken) -> NoReturn:
        refusal = RevokedTokenError("revoked")
        refusal.token = access
        refusal.store = self._store_name
        raise refusal

    # -- the synchronous I/O edge ---------------------------------------------------------

    def require_sync_side(self) -> None:
        """Check that everything this guard calls offers a synchronous side, for WSGI.

        Raises:
            ConfigurationError: the revocation store, the usage monitor or the DPoP replay
                store is async-only (a Redis-backed one: built with only ``async_client``).
        """
        # A Redis-backed component given only an asynchronous client answers every
        # synchronous call with an error: as good as no synchronous side (checked here, once:
        # a closed store drops its client, and then answers 503).
        if getattr(self.require_sync_revocation(), "synchronous", True) is False:
            raise ConfigurationError(
                f"{type(self.revocation).__name__} has no synchronous client: give it url= "
                "or client= for WSGI"
            )
        if self._usage_watch is not None and not self._usage_watch.has_sync_side():
            raise ConfigurationError("the usage monitor has no synchronous side (observe_sync)")
        if (
            self.usage is not None
            and self.usage.policy.action == "revoke"
            and not callable(getattr(self.revocation, "revoke_token_sync", None))
        ):
            raise ConfigurationError(
                "UsagePolicy(action='revoke') needs a revocation store with revoke_token_sync "
                "for WSGI"
            )
        if self.dpop is not None and getattr(self.dpop.replay, "synchronous", True) is False:
            raise ConfigurationError(
                "the DPoP replay store has no synchronous side: give it url= or client="
            )

    def require_sync_revocation(self) -> SyncRevocationStore:
        """The revocation store's synchronous side, for WSGI.

        Raises:
            ConfigurationError: the store offers only the asynchronous side, or overrides
                ``is_revoked`` without ``is_revoked_sync``.
        """
        store = self._sync_store
        if store is None:
            raise ConfigurationError(
                f"{type(self.revocation).__name__} has no synchronous side that answers as "
                "its is_revoked does: implement is_revoked_sync (SyncRevocationStore) for WSGI"
            )
        return store

    # -- the signature step alone, for other signed JWTs ----------------------------------

    async def verify_signed(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify only the signature of a compact JWS with this guard's trusted keys.

        For signed JWTs that are not access tokens, such as Security Event Tokens (RFC 8417):
        the same strict parsing, algorithm allow-list, key binding and key set fetching as
        ``authenticate``, but no claim is checked, nothing is cached and the revocation store
        is not asked.

        Warning:
            The caller must check every claim it relies on (``iss``, ``aud``, ``typ``, times).

        Returns:
            The JOSE header and the claims.

        Raises:
            InvalidTokenError: malformed, an algorithm not allowed (``none`` never), no
                trusted key, or a bad signature.
            KeySetUnavailableError: no usable keys could be had.
        """
        jws = self._parse(token)
        try:
            return self._verify_signature_only(jws, refreshed=False)
        except _KeysNeeded as needed:
            await self._refresher.refresh(unknown_kid=needed.unknown_kid)
            return self._verify_signature_only(jws, refreshed=True)

    def verify_signed_sync(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify only the signature of a compact JWS, blocking; as ``verify_signed``."""
        jws = self._parse(token)
        try:
            return self._verify_signature_only(jws, refreshed=False)
        except _KeysNeeded as needed:
            self._refresher.refresh_sync(unknown_kid=needed.unknown_kid)
            return self._verify_signature_only(jws, refreshed=True)

    def _verify_signature_only(
        self, jws: CompactJWS, *, refreshed: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            self._check_signature(jws, refreshed=refreshed)
            # A copy: the parsed header is shared by every later token with the same one.
            return dict(jws.header), decode_payload(jws)
        except AuthError as exc:
            exc.header = jws.header
            raise
        except _KeysNeeded:
            raise
        except Exception as exc:
            raise _unexpected(exc, jws) from exc

    def _check_signature(self, jws: CompactJWS, *, refreshed: bool) -> None:
        key, key_set = self._select_key(jws, refreshed=refreshed)
        if not verify_signature(key, jws.alg, jws.signing_input, jws.signature):
            self._another_key(jws, key, key_set, refreshed=refreshed)

    # -- lifecycle ------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Fetch the key set now, for example at application start-up.

        Raises:
            KeySetUnavailableError: no usable keys could be had.
        """
        now = self.clock()
        # As warm_up_sync (whose refresh_sync asks needs_refresh): after a failed fetch, no
        # new one before the cooldown, or every GET of a public readiness endpoint would
        # send one to an issuer that is down.
        if self._refresher.fetcher is not None:
            if not self._keys.usable(now) and self._keys.needs_refresh(now):
                await self._refresher.refresh()
            elif self._withdrawn():
                await self._refresher.refresh(unknown_kid=True)
        now = self.clock()
        if not self._keys.usable(now):
            raise KeySetUnavailableError(self._keys.unavailable(now))

    def warm_up_sync(self) -> None:
        """Fetch the key set now, blocking (for WSGI start-up); as ``warm_up``."""
        if self._refresher.fetcher is not None:
            if not self._keys.usable(self.clock()):
                self._refresher.refresh_sync()
            elif self._withdrawn():
                self._refresher.refresh_sync(unknown_kid=True)
        now = self.clock()
        if not self._keys.usable(now):
            raise KeySetUnavailableError(self._keys.unavailable(now))

    def _withdrawn(self) -> bool:
        """Whether the issuer published an empty key set. Its tokens' kid misses look again
        once per cooldown, but an instance its readiness took out of the load balancer gets
        no token: warm-up looks again as a kid miss does, or it stayed out for the set's
        freshness and ``max_stale`` (up to two days)."""
        keys = self._keys.keys
        return keys is not None and len(keys) == 0

    def keys_ready(self) -> bool:
        """Whether tokens can be verified now: a usable key set (or a shared secret) is held."""
        return self._keys.usable(self.clock()) and (
            (self._keys.keys is not None and len(self._keys.keys) > 0) or self._secret is not None
        )

    def key_set_age(self) -> float | None:
        """Seconds since the key set was last fetched successfully (``None``: never, or static)."""
        fetched = self._keys.fetched_at
        return None if fetched is None else max(0.0, self.clock() - fetched)

    @property
    def key_ids(self) -> list[str]:
        """The key ids currently trusted (empty before the first fetch)."""
        keys = self._keys.keys
        return [] if keys is None else keys.kids
