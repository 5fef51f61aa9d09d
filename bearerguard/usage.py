"""Usage monitoring: notice a bearer token used from too many places, or too fast.

A bearer token works for whoever holds it (token replay, RFC 6750 §5.1); watching how each
token is used is the standard advice for noticing one that was copied. A monitor counts, for
every accepted request, the uses and the distinct client addresses of the token (by
``(iss, jti)``, or an opaque token without ``jti`` by its fingerprint) and of its subject
(by ``(iss, sub)``) within a sliding window, and says
whether a ``UsagePolicy`` limit was exceeded:

- ``MemoryUsageMonitor`` counts in this process (one process, or per-process limits);
- ``RedisUsageMonitor`` counts across every instance through Redis (HyperLogLog and window
  counters, one round trip per observation; needs ``bearerguard[redis]``).

Monitoring is off unless a monitor is given to the guard. The guard observes each accepted
token, emits a ``token.anomaly`` audit event when a limit is first exceeded in a window, and
then does what ``consequence(verdict)`` says: let the request through (``"log"``), refuse it
with ``UsageAnomalyError`` (``"reject"``), or also revoke the token (``"revoke"``).

A monitor whose store fails raises ``UsageMonitorError``; ``usage_failed`` applies the
policy's ``failure`` mode: by default the request goes through unmonitored, since
monitoring detects misuse rather than authenticates. The guard then logs a warning when the
outage starts, a count per minute while it lasts and a line when it ends
(``usage_failures``), and counts each such request in ``bearerguard_usage_unmonitored_total``.
The counting rules are in ``bearerguard._core.usage``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bearerguard._core.extract import redact_token
from bearerguard._core.times import check_count
from bearerguard._core.usage import (
    Action,
    Breach,
    Consequence,
    Target,
    UsagePolicy,
    UsageVerdict,
    address_key,
    breaches_of,
    consequence,
    estimate,
    targets,
    verdict_of,
    window_at,
)
from bearerguard._failures import FailureReport
from bearerguard._fork import reset_after_fork
from bearerguard.errors import ConfigurationError, InvalidTokenError, ServiceUnavailableError
from bearerguard.token import AccessToken

if TYPE_CHECKING:
    from bearerguard._usage_redis import RedisUsageMonitor

__all__ = [
    "Action",
    "Breach",
    "Consequence",
    "MemoryUsageMonitor",
    "RedisUsageMonitor",
    "SyncUsageMonitor",
    "UsageAnomalyError",
    "UsageMonitor",
    "UsageMonitorError",
    "UsagePolicy",
    "UsageVerdict",
    "consequence",
    "usage_failed",
    "usage_failures",
]

_log = logging.getLogger("bearerguard")


class UsageAnomalyError(InvalidTokenError):
    """The token was used beyond a ``UsagePolicy`` limit, and the policy refuses it.

    401 ``invalid_token`` (RFC 6750 §3.1): the client should stop using this token. The
    description sent to the client is fixed; which limit was exceeded goes to ``detail`` and
    ``verdict``, for the audit log only.
    """

    reason = "usage_anomaly"
    description = "The access token is being used in a way that is not allowed."

    def __init__(self, detail: str | None = None, *, verdict: UsageVerdict | None = None) -> None:
        super().__init__(detail)
        self.verdict = verdict

    @classmethod
    def of(cls, verdict: UsageVerdict, token: AccessToken) -> UsageAnomalyError:
        """The refusal for ``token`` after ``verdict``, ready for the audit log."""
        error = cls(f"usage anomaly: {verdict.describe()}", verdict=verdict)
        error.token = token
        return error


class UsageMonitorError(ServiceUnavailableError):
    """The usage monitor's store failed; see ``UsagePolicy.failure``.

    Attributes:
        skipped: the store was not even asked, because it failed moments ago (see
            ``RedisUsageMonitor``'s ``failure_cooldown``).
    """

    reason = "usage_unavailable"

    def __init__(self, detail: str | None = None, *, skipped: bool = False) -> None:
        super().__init__(detail)
        self.skipped = skipped


def usage_failures(
    *, window: float = 60.0, clock: Callable[[], float] = time.monotonic
) -> FailureReport:
    """The report of a monitor failing open: a warning when the outage starts, then a count
    of the requests let in unmonitored per ``window`` seconds, and one line when it ends."""
    return FailureReport(
        "bearerguard: usage monitor failed, request not monitored: %s",
        "bearerguard: the usage monitor is still failing; %d more requests not monitored "
        "(%d in all)",
        "bearerguard: usage monitor recovered after %d requests not monitored",
        level=logging.WARNING,
        traceback=False,
        window=window,
        clock=clock,
    )


def usage_failed(
    policy: UsagePolicy,
    error: Exception,
    report: FailureReport | None = None,
    *,
    token: AccessToken | None = None,
) -> None:
    """Apply ``policy.failure`` to a monitor that raised ``error``.

    With ``failure="allow"`` (the default) the request goes on unmonitored: this returns,
    after counting the failure in ``report`` (from ``usage_failures``, the guard's), or
    without one, after logging a warning on the ``bearerguard`` logger (at debug level
    while the store is skipped after a failure, so an outage logs about once per cooldown
    rather than once per request). With ``token`` (the one observed), the monitor's message
    has it and its signature replaced with ``REDACTED`` before it is cut and logged.

    Raises:
        UsageMonitorError: with ``failure="deny"``; the guard answers 503.
    """
    if isinstance(error, UsageMonitorError):
        failure = error
    else:
        text = f"{type(error).__name__}: {error}"
        if token is not None:  # the monitor may quote the token it was given: never logged
            text = redact_token(text, token.raw)
        failure = UsageMonitorError(text[:200])
    if policy.failure == "deny":
        if failure is error:
            raise failure
        raise failure from error
    detail = str(failure.detail)
    if token is not None and failure is error:
        detail = redact_token(detail, token.raw)
    if report is not None:
        report.failed(detail)
        return
    _log.log(
        logging.DEBUG if failure.skipped else logging.WARNING,
        "bearerguard: usage monitor failed, request not monitored: %s",
        detail,
    )


@runtime_checkable
class UsageMonitor(Protocol):
    """Counts how each accepted token is used and judges it against a ``UsagePolicy``.

    The guard calls ``observe`` once per accepted request, after the revocation check, with
    the client's address as the integration sees it. Implementations key tokens on
    ``(token.issuer, token_name(token))`` (the ``jti``; an opaque token without one, by its
    fingerprint: ``bearerguard._core.usage.token_name``) and subjects on
    ``(token.issuer, token.subject)``, never on the token's bytes, and raise
    ``UsageMonitorError`` when their store fails.
    """

    @property
    def policy(self) -> UsagePolicy:
        """The limits, the action and the failure mode."""
        ...

    async def observe(self, token: AccessToken, client: str | None) -> UsageVerdict:
        """Count one use of ``token`` from ``client`` and judge it."""
        ...


@runtime_checkable
class SyncUsageMonitor(Protocol):
    """The synchronous side of a usage monitor, for WSGI applications."""

    @property
    def policy(self) -> UsagePolicy:
        """The limits, the action and the failure mode."""
        ...

    def observe_sync(self, token: AccessToken, client: str | None) -> UsageVerdict:
        """Count one use of ``token`` from ``client`` and judge it, blocking."""
        ...


_NOTHING: frozenset[int] = frozenset()


class _Counts:
    """One key's counts in its current and previous window (addresses as hashes)."""

    __slots__ = ("index", "previous", "previous_seen", "reported", "seen", "uses")

    def __init__(self, index: int) -> None:
        self.index = index
        self.uses = 0
        self.previous = 0
        self.seen: set[int] = set()
        self.previous_seen: set[int] | frozenset[int] = _NOTHING
        self.reported = False

    def roll(self, index: int) -> None:
        if index <= self.index:
            return  # the same window, or a clock that stepped back: stay in it
        if index == self.index + 1:
            self.previous, self.previous_seen = self.uses, self.seen
        else:
            self.previous, self.previous_seen = 0, _NOTHING
        self.index = index
        self.uses = 0
        self.seen = set()
        self.reported = False


class MemoryUsageMonitor:
    """Counts token and subject usage in this process.

    Right for an API that runs as one process; with several, each counts only what it
    serves (a token replayed through another instance goes unseen): use
    ``RedisUsageMonitor`` there.

    Memory is bounded: at most ``max_keys`` tokens and subjects are tracked (the least
    recently used is forgotten first, losing its counts), and at most
    ``max_addresses_tracked`` addresses per key and window are remembered, as hashes (a
    count above it is reported as ``max_addresses_tracked``). About 0.5 KB per tracked key.

    Args:
        policy: the limits and what to do when one is exceeded.
        max_keys: how many tokens and subjects are tracked at once.
        max_addresses_tracked: distinct addresses remembered per key and window; must exceed
            every address limit of the policy.
        clock: returns epoch seconds; injectable for tests.

    Raises:
        ConfigurationError: inconsistent options.
    """

    name = "memory"

    def __init__(
        self,
        policy: UsagePolicy,
        *,
        max_keys: int = 100_000,
        max_addresses_tracked: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(policy, UsagePolicy):
            raise ConfigurationError("policy must be a UsagePolicy")
        # NaN fails every comparison: the table (or each key's addresses) grew without bound.
        max_keys = check_count("max_keys", max_keys)
        max_addresses_tracked = check_count("max_addresses_tracked", max_addresses_tracked)
        limits = (policy.max_addresses_per_token, policy.max_addresses_per_subject)
        if any(limit is not None and limit >= max_addresses_tracked for limit in limits):
            raise ConfigurationError("max_addresses_tracked must exceed every address limit")
        self._policy = policy
        self._max_keys = max_keys
        self._cap = max_addresses_tracked
        self._clock = clock
        self._table: OrderedDict[tuple[str, str, str], _Counts] = OrderedDict()
        self._lock = threading.Lock()
        reset_after_fork(self)

    def _forked(self) -> None:
        """In a child process after ``fork()`` (bearerguard._fork): a lock another thread of
        the parent held at the fork is never released here, and the first use counted waited
        for it for the worker's whole life."""
        self._lock = threading.Lock()

    @property
    def policy(self) -> UsagePolicy:
        """The limits, the action and the failure mode."""
        return self._policy

    def __len__(self) -> int:
        """How many tokens and subjects are tracked now."""
        return len(self._table)

    def __repr__(self) -> str:
        return f"MemoryUsageMonitor({self._policy!r})"

    def observe_sync(self, token: AccessToken, client: str | None) -> UsageVerdict:
        """Count one use of ``token`` from ``client`` (an address, or ``None``) and judge it."""
        policy = self._policy
        found = targets(token, policy)
        if not found:
            return verdict_of(policy, token, [], first=False)
        window = window_at(self._clock(), policy.window)
        address = address_key(client, policy) if policy.counts_addresses else None
        mark = None if address is None else hash(address)  # SipHash, keyed per process
        counted: list[tuple[Target, int, int | None]] = []
        first = False
        table = self._table
        cap = self._cap
        with self._lock:
            for target in found:
                key = (target.scope, target.issuer, target.name)
                counts = table.get(key)
                if counts is None:
                    counts = table[key] = _Counts(window.number)
                    if len(table) > self._max_keys:
                        table.popitem(last=False)
                else:
                    table.move_to_end(key)
                    counts.roll(window.number)
                counts.uses += 1
                uses = estimate(counts.uses, counts.previous, window.remaining)
                addresses = None
                if target.max_addresses is not None:
                    seen = counts.seen
                    if mark is not None and len(seen) < cap:
                        seen.add(mark)
                    previous = counts.previous_seen
                    addresses = min(cap, len(seen.union(previous)) if previous else len(seen))
                if not counts.reported and breaches_of(target, uses, addresses):
                    counts.reported = first = True
                counted.append((target, uses, addresses))
        return verdict_of(policy, token, counted, first=first)

    async def observe(self, token: AccessToken, client: str | None) -> UsageVerdict:
        """Count one use of ``token`` and judge it: as ``observe_sync`` (it never blocks)."""
        return self.observe_sync(token, client)


def __getattr__(name: str) -> Any:
    # Lazily, so that importing this module never needs redis-py.
    if name == "RedisUsageMonitor":
        try:
            from bearerguard._usage_redis import (  # noqa: PLC0415 - lazily, see above
                RedisUsageMonitor,
            )
        except ImportError as exc:
            raise ImportError(
                "RedisUsageMonitor needs redis-py: pip install 'bearerguard[redis]'"
            ) from exc
        return RedisUsageMonitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
