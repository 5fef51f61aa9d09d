"""``TrustedIssuers``: one API, several trusted issuers, each with its own ``BearerGuard``.

Multi-tenant identity providers (Entra ID, one issuer per tenant) and several Auth0 custom
domains give one API tokens from several issuers, each with its own keys, audience and
algorithms. ``TrustedIssuers`` holds a ``BearerGuard`` per issuer and hands each token to the
guard of its ``iss``, read from the payload after strict parsing but before any signature is
checked. The token is then verified entirely by that guard, against that issuer's keys only.

An ``iss`` that no configured guard names is refused (401 ``invalid_token``) before any key is
fetched: keys are never fetched from an issuer named by a token (that would be SSRF, and would
let anyone mint tokens). A ``resolver`` can admit issuers by pattern (tenants): it is given the
``iss`` string and returns a guard for it, or ``None``; resolved guards are cached, bounded.

Both middlewares accept a ``TrustedIssuers`` wherever they accept a ``BearerGuard``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

from bearerguard._core.extract import check_b64token
from bearerguard._core.introspected import INTROSPECTION_ALGORITHM
from bearerguard._core.jws import decode_payload, looks_compact, parse_compact
from bearerguard._core.scopes import ScopeImplications
from bearerguard._core.times import check_count
from bearerguard._failures import traceback_text
from bearerguard._fork import reset_after_fork
from bearerguard.audit import AuditLog, RequestInfo
from bearerguard.dpop import DPoPPolicy, DPoPRequest
from bearerguard.errors import (
    AuthError,
    ConfigurationError,
    InvalidIssuerError,
    ServiceUnavailableError,
)
from bearerguard.guard import BearerGuard
from bearerguard.metadata import ProtectedResource
from bearerguard.metrics import MetricsHook
from bearerguard.mtls import CertificateBinding
from bearerguard.token import AccessToken, token_fingerprint
from bearerguard.usage import SyncUsageMonitor, UsageMonitor

__all__ = ["IssuerResolver", "TrustedIssuers"]

_T = TypeVar("_T")

IssuerResolver = Callable[[str], BearerGuard | None]
"""Given a token's (unverified) ``iss``, a guard for that issuer, or ``None`` to refuse it."""

_log = logging.getLogger("bearerguard")
_MAX_ISSUER_LENGTH = 512
# Issuers already warned about (resolved with an unused introspector): each is warned about
# once, though eviction and resolving again bring it back; the most recent are remembered.
_MAX_WARNED = 1024
# An opaque token names no issuer, so only one guard can judge it: sending it to every
# introspection endpoint would disclose it to authorization servers that did not issue it,
# and the first to answer "active" would give it that issuer's identity.
_SECOND_INTROSPECTOR = (
    "only the primary (first) guard of a TrustedIssuers may have introspection: opaque "
    "tokens name no issuer and all go to it; {!r} has an introspector that would never be "
    "asked (move that guard first, or serve its opaque tokens on another route)"
)


def _request_settings(guard: BearerGuard) -> tuple[Any, ...]:
    """What every guard of a ``TrustedIssuers`` must agree on: it shapes each request."""
    resource = guard.protected_resource
    return (guard.dpop, guard.mtls, None if resource is None else resource.resource)


def _escaped_message(exc: BaseException) -> str:
    """``exc``'s type and message for one log line: escaped (``repr``) and cut to 256."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an application's exception may not print
        text = "<unprintable>"
    return f"{type(exc).__name__}({text[:256]!r})"


class TrustedIssuers:
    """Verifies tokens from several trusted issuers, each with its own ``BearerGuard``.

    Args:
        guards: a guard per trusted issuer (each ``issuer`` at most once). The first is the
            primary: its request-level settings (``resource`` and its metadata, ``realm``,
            ``max_token_bytes``, the audit logger, ``scope_implications``) apply to every
            request, and it alone judges tokens that are not JWTs (``introspection``): an
            opaque token names no issuer, and is never sent to another issuer's
            authorization server. Every guard must have the same ``dpop``, ``mtls`` and
            ``resource``, and no other guard may have ``introspection`` (a resolved one
            that has is used for its JWTs; its introspector is never asked, as logged once
            per issuer).
        resolver: admits further issuers: called with a token's ``iss`` (a string of at most
            512 characters) when no guard names it, it returns a guard whose ``issuer`` is
            exactly that string, or ``None`` to refuse the token. It must not do I/O (it is
            called on the request path) and must accept only issuers you trust, such as
            ``https://login.microsoftonline.com/<one of your tenants>/v2.0``: a resolver that
            accepts any issuer accepts tokens anyone can mint. It should return the same
            guard for an issuer every time (``functools.cache`` over your tenants): a new
            guard holds no keys, so one built afresh whenever an issuer is resolved again
            (after being dropped) would fetch that issuer's keys again.
        max_resolved: how many resolved guards are kept (least recently used go first).

    Raises:
        ConfigurationError: no guard, an issuer configured twice, guards that disagree, or
            introspection on a guard other than the primary.

    Warning:
        A resolved guard that breaks these rules (another issuer, other request-level
        settings, no synchronous side under WSGI) is not used: its tokens are refused and
        the error is logged, since a configuration error cannot be raised on a request.
    """

    def __init__(
        self,
        guards: Iterable[BearerGuard],
        *,
        resolver: IssuerResolver | None = None,
        max_resolved: int = 100,
    ) -> None:
        if isinstance(guards, BearerGuard):
            raise ConfigurationError("TrustedIssuers takes a list of guards: [guard, ...]")
        try:
            listed = list(guards)
        except TypeError:  # not iterable
            listed = []
        if not listed or not all(isinstance(guard, BearerGuard) for guard in listed):
            raise ConfigurationError("TrustedIssuers needs at least one BearerGuard")
        if resolver is not None and not callable(resolver):
            raise ConfigurationError("resolver must be a callable")
        # A NaN bound never evicted: every issuer resolved was kept.
        max_resolved = check_count("max_resolved", max_resolved, least=0)
        self._guards: dict[str, BearerGuard] = {}
        primary = listed[0]
        for guard in listed:
            if guard.issuer in self._guards:
                raise ConfigurationError(f"issuer {guard.issuer!r} is configured twice")
            if _request_settings(guard) != _request_settings(primary):
                raise ConfigurationError(
                    "every guard of a TrustedIssuers needs the same dpop, mtls and resource"
                )
            if guard is not primary and guard.introspection is not None:
                raise ConfigurationError(_SECOND_INTROSPECTOR.format(guard.issuer))
            self._guards[guard.issuer] = guard
        self.primary = primary
        self.resolver = resolver
        self._resolved: OrderedDict[str, BearerGuard] = OrderedDict()
        self._max_resolved = max_resolved
        self._warned: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        reset_after_fork(self)
        self._sync = False
        # The request-level settings the middlewares read, from the primary guard.
        resource = primary.protected_resource
        # Every listed issuer is trusted: the metadata names them all (RFC 9728 §2).
        self.protected_resource: ProtectedResource | None = (
            None if resource is None else resource.naming(self._guards)
        )
        self.realm: str = primary.realm
        self.max_token_bytes: int = primary.max_token_bytes
        self.dpop: DPoPPolicy | None = primary.dpop
        self.mtls: CertificateBinding | None = primary.mtls
        # Always the middlewares' full path: it hands every guard the request's client,
        # certificate and DPoP proof, whichever guard the token turns out to need.
        self.sender_constrained = True
        self.audit: AuditLog = primary.audit
        self.metrics: MetricsHook | None = primary.metrics
        self.scope_implications: ScopeImplications = primary.scope_implications
        self.usage: UsageMonitor | SyncUsageMonitor | None = primary.usage

    def _forked(self) -> None:
        """In a child process after ``fork()`` (bearerguard._fork): a lock another thread of
        the parent held at the fork is never released here, and the first token of an issuer
        not listed waited for it for the worker's whole life."""
        self._lock = threading.Lock()

    @property
    def configured(self) -> list[BearerGuard]:
        """The guards given at construction, the primary first (not those resolved)."""
        return list(self._guards.values())

    @property
    def issuers(self) -> list[str]:
        """The issuers configured, then those resolved and still cached."""
        return [*self._guards, *self._resolved]

    def __repr__(self) -> str:
        return f"TrustedIssuers(issuers={self.issuers!r})"

    # -- choosing the guard ---------------------------------------------------------------

    def guard_for(self, token: str | bytes) -> BearerGuard:
        """The guard that verifies ``token``: the one for its ``iss``.

        Tokens longer than ``max_token_bytes``, not compact JWS, or whose payload cannot be
        read, go to the primary guard, which refuses them (or introspects them) exactly as
        it would alone.

        Raises:
            InvalidIssuerError: the ``iss`` is not a trusted issuer (401 ``invalid_token``).
        """
        if len(token) > self.max_token_bytes:
            # As BearerGuard.authenticate: refused (by the primary) before any decoding.
            return self.primary
        issuer, header = _unverified_issuer(token)
        if issuer is None:
            return self.primary
        guard = self._guards.get(issuer)
        if guard is None:
            guard = self._resolve(issuer)
        if guard is None:
            error = InvalidIssuerError(f"iss {issuer[:128]!r} is not a trusted issuer")
            error.header = header
            raise error
        return guard

    def guard_of(self, issuer: str) -> BearerGuard | None:
        """The guard configured or resolved (and still cached) for ``issuer``; no resolving."""
        return self._guards.get(issuer) or self._resolved.get(issuer)

    def verifier_of(self, token: AccessToken) -> BearerGuard | None:
        """The guard ``guard_for`` hands the accepted ``token`` to, without reading it again:
        the primary for one too large or accepted on introspection (an opaque token names no
        issuer), else ``guard_of`` its issuer, or the resolver's guard for it when none is
        held (``max_resolved=0``, or dropped since); ``None`` when the resolver refuses it."""
        if token.algorithm == INTROSPECTION_ALGORITHM or len(token.raw) > self.max_token_bytes:
            return self.primary
        # Resolved again as guard_for would: with none kept, a verdict made by the very guard
        # a dependency holds (BearerAuth) was not known for its own, and verified twice.
        return self.guard_of(token.issuer) or self._resolve(token.issuer)

    def _resolve(self, issuer: str) -> BearerGuard | None:
        resolver = self.resolver
        if resolver is None or len(issuer) > _MAX_ISSUER_LENGTH:
            return None
        with self._lock:
            cached = self._resolved.get(issuer)
            if cached is not None:
                self._resolved.move_to_end(issuer)
                return cached
        try:
            guard = resolver(issuer)
        except Exception as exc:  # noqa: BLE001 - a broken resolver refuses the token, never a 500
            # Not exc_info: the messages would be printed raw, and they may quote the token's
            # unverified iss (line breaks: a forged log line). The resolver's own message is
            # the application's, kept but escaped and cut; chained ones by their type only.
            _log.error(
                "bearerguard: the issuer resolver failed for %r: %s\n%s",
                issuer[:128],
                _escaped_message(exc),
                traceback_text(exc, message=False),
            )
            return None
        if guard is None:
            return None
        problem = self._unusable(guard, issuer)
        if problem is not None:
            _log.error("bearerguard: resolved guard for %r not used: %s", issuer[:128], problem)
            return None
        if guard.introspection is not None and self._first_warning(issuer):
            # Only JWTs naming this issuer reach it: its introspector is never asked (an
            # opaque token goes to the primary), so nothing is disclosed and its JWTs pass.
            _log.warning(
                "bearerguard: resolved guard for %r has introspection, never used: only the "
                "primary guard judges opaque tokens",
                issuer[:128],
            )
        with self._lock:
            guard = self._resolved.setdefault(issuer, guard)  # another thread may have won
            while len(self._resolved) > self._max_resolved:
                self._resolved.popitem(last=False)
        return guard

    def _first_warning(self, issuer: str) -> bool:
        """Whether ``issuer`` is warned about for the first time (as far as remembered)."""
        with self._lock:
            if issuer in self._warned:
                self._warned.move_to_end(issuer)
                return False
            self._warned[issuer] = None
            if len(self._warned) > _MAX_WARNED:
                self._warned.popitem(last=False)
            return True

    def _unusable(self, guard: object, issuer: str) -> str | None:
        if not isinstance(guard, BearerGuard):
            return "the resolver must return a BearerGuard or None"
        if guard.issuer != issuer:
            return f"its issuer is {guard.issuer!r}"
        if _request_settings(guard) != _request_settings(self.primary):
            return "its dpop, mtls or resource differ from the primary guard's"
        if self._sync:
            try:
                guard.require_sync_side()
            except ConfigurationError as exc:
                return str(exc)
        return None

    # -- the flow -------------------------------------------------------------------------

    async def authenticate(
        self,
        token: str | bytes,
        *,
        client: str | None = None,
        request: RequestInfo | None = None,
        dpop: DPoPRequest | None = None,
        certificate: bytes | None = None,
    ) -> AccessToken:
        """Verify ``token`` with the guard of its issuer; as ``BearerGuard.authenticate``."""
        guard = self._route(token, dpop)
        return await guard.authenticate(
            token, client=client, request=request, dpop=dpop, certificate=certificate
        )

    def authenticate_sync(
        self,
        token: str | bytes,
        *,
        client: str | None = None,
        request: RequestInfo | None = None,
        dpop: DPoPRequest | None = None,
        certificate: bytes | None = None,
    ) -> AccessToken:
        """Verify ``token`` with the guard of its issuer, blocking (for WSGI)."""
        guard = self._route(token, dpop)
        return guard.authenticate_sync(
            token, client=client, request=request, dpop=dpop, certificate=certificate
        )

    async def recheck(self, token: AccessToken) -> None:
        """Check again, at a later use, a token accepted earlier, with the guard that
        accepted it (``verifier_of``); as ``BearerGuard.recheck``. Refused as at acceptance
        when that guard is no longer to be had (the resolver now refuses its issuer)."""
        guard = self.verifier_of(token) or self._route(token.raw, None)
        await guard.recheck(token)

    def recheck_sync(self, token: AccessToken) -> None:
        """As ``recheck``, blocking this thread (for WSGI); as ``BearerGuard.recheck_sync``."""
        guard = self.verifier_of(token) or self._route(token.raw, None)
        guard.recheck_sync(token)

    def _route(self, token: str | bytes, dpop: DPoPRequest | None) -> BearerGuard:
        try:
            return self.guard_for(token)
        except AuthError as exc:
            exc.fingerprint = token_fingerprint(token)
            if dpop is not None:
                exc.sent_with(dpop.scheme)
            raise

    # -- lifecycle ------------------------------------------------------------------------

    def require_sync_side(self) -> None:
        """Check that every configured guard offers a synchronous side, for WSGI.

        Resolved guards are checked when resolved; one without is not used.

        Raises:
            ConfigurationError: a guard's revocation store or usage monitor is async-only.
        """
        for guard in self._guards.values():
            guard.require_sync_side()
        self._sync = True

    async def warm_up(self) -> None:
        """Fetch every configured issuer's key set now, all at once.

        Raises:
            KeySetUnavailableError: some issuer's keys could not be had (the others are
                fetched all the same).
        """
        failures: dict[str, ServiceUnavailableError] = {}

        async def warm(guard: BearerGuard) -> None:
            try:
                await guard.warm_up()
            except ServiceUnavailableError as exc:
                failures[guard.issuer] = exc

        async with anyio.create_task_group() as group:
            for guard in self._guards.values():
                group.start_soon(warm, guard)
        _raise_for_issuers([(issuer, failures.get(issuer)) for issuer in self._guards])

    def warm_up_sync(self) -> None:
        """Fetch every configured issuer's key set now, blocking; as ``warm_up``, all at once
        (a thread each): issuers that are down hold it for one fetch timeout, not their sum."""
        outcomes = _each_at_once(_warm_up_sync, self.configured)
        _raise_for_issuers([(g.issuer, o) for g, o in zip(self.configured, outcomes, strict=True)])


def _raise_for_issuers(outcomes: Sequence[tuple[str, ServiceUnavailableError | None]]) -> None:
    """Raise the first issuer's failure, its detail naming every issuer that failed and why
    (the start-up log line then tells an operator which key set to look at)."""
    failed = [(issuer, failure) for issuer, failure in outcomes if failure is not None]
    if failed:
        first = failed[0][1]
        detail = "; ".join(f"{issuer}: {failure.detail or failure}" for issuer, failure in failed)
        raise type(first)(detail) from first


def _each_at_once(call: Callable[[BearerGuard], _T], guards: Sequence[BearerGuard]) -> list[_T]:
    """``call`` on every guard, each in a thread of its own (a lone guard in this one), the
    results in the guards' order: blocking calls that may each wait for a key set fetch end
    within the slowest one, as the asynchronous sides' task groups do."""
    if len(guards) < 2:
        return [call(guard) for guard in guards]
    with ThreadPoolExecutor(len(guards), thread_name_prefix="bearerguard-issuer") as pool:
        return list(pool.map(call, guards))


def _warm_up_sync(guard: BearerGuard) -> ServiceUnavailableError | None:
    try:
        guard.warm_up_sync()
    except ServiceUnavailableError as exc:
        return exc
    return None


def _unverified_issuer(token: str | bytes) -> tuple[str | None, dict[str, Any] | None]:
    """The ``iss`` of a strictly parsed compact JWS, unverified; ``None`` when there is none.

    Only ever used to choose among trusted guards: nothing else is decided on it.
    """
    try:
        text = token if isinstance(token, str) else check_b64token(token)
        if not looks_compact(text):
            return None, None
        jws = parse_compact(text)
        claims = decode_payload(jws)
    except Exception:  # noqa: BLE001 - the primary guard refuses it with the precise reason
        return None, None
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        return None, jws.header
    return issuer, jws.header
