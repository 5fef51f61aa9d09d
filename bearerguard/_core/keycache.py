"""When to fetch a JWK Set again: freshness, cooldown, stale-if-error. Pure state, no I/O.

The rules:

* a fetched set is fresh for its TTL: the lifetime its response's headers give it
  (``bearerguard._core.freshness``), clamped to configured bounds;
* an unknown ``kid`` triggers a refresh, unless a fetch started less than ``cooldown`` seconds
  ago. That one rule is the negative cache: every kid that a fetch just came back without is
  answered "unknown" without another fetch, so a flood of random kids costs at most one fetch
  per cooldown, while a key that newly appears is picked up by the first request after it;
* a failed fetch keeps the last good set usable until ``max_stale`` seconds past its
  freshness (stale-if-error), and is retried at most once per cooldown. The operator's
  bound alone: a response's ``must-revalidate`` (RFC 9111 §5.2.2.2), which identity
  providers send as a matter of course, and its ``stale-if-error`` (RFC 5861 §4) change
  nothing (why: docs/configuration.md);
* past that, there are no usable keys and the guard fails closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bearerguard._core.keys import KeySet
from bearerguard._core.times import check_seconds
from bearerguard.errors import ConfigurationError

__all__ = ["KeyCache", "RefreshPolicy"]

_MAX_CAUSE = 120  # a failure's cause, as the edge gave it: kept short for the audit detail


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """How long key sets are trusted and how often they may be fetched.

    Args:
        default_ttl: freshness when the response says none (no ``max-age``, no ``Expires``);
            finite.
        min_ttl: the least freshness granted, whatever the server says.
        max_ttl: the most freshness granted, whatever the server says.
        cooldown: the least time between two fetches triggered by unknown kids or failures.
        max_stale: how long past its freshness a set stays usable while fetches fail.
    """

    default_ttl: float = 600.0
    min_ttl: float = 60.0
    max_ttl: float = 86_400.0
    cooldown: float = 30.0
    max_stale: float = 86_400.0

    def __post_init__(self) -> None:
        # Finite: an infinite TTL never fetched the set again (a key the issuer withdrew
        # stayed trusted, a kid the set lacks was never looked for: infinite freshness marks
        # static keys), an infinite max_stale kept a set whose fetches fail for ever.
        for name in ("default_ttl", "min_ttl", "cooldown", "max_stale"):
            check_seconds(name, getattr(self, name))
        # max_ttl may be infinite (a server's max-age is at most 2**31 s), never NaN.
        if self.max_ttl != math.inf:
            check_seconds("max_ttl", self.max_ttl)
        if not 0 < self.min_ttl <= self.default_ttl <= self.max_ttl:
            raise ConfigurationError("key set TTLs must satisfy 0 < min <= default <= max")
        # Written so that NaN fails too: it compares false with everything, and a NaN
        # cooldown would let every request fetch.
        if not (self.cooldown >= 0 and self.max_stale >= 0):
            raise ConfigurationError("cooldown and max_stale must be numbers, not negative")

    def ttl(self, max_age: float | None) -> float:
        """The freshness to grant a set whose response gave it ``max_age`` seconds (its
        freshness lifetime less its age, ``bearerguard._core.freshness``)."""
        wanted = self.default_ttl if max_age is None else max_age
        return min(max(wanted, self.min_ttl), self.max_ttl)


class KeyCache:
    """The current key set and its fetch history."""

    __slots__ = (
        "failure",
        "fetched_at",
        "fresh_from",
        "fresh_until",
        "keys",
        "last_attempt",
        "last_failed",
        "last_settled",
        "policy",
        "usable_until",
    )

    def __init__(self, policy: RefreshPolicy, keys: KeySet | None = None) -> None:
        self.policy = policy
        self.keys = keys
        # Static keys never expire; fetched ones get their deadlines in record_success.
        forever = float("inf") if keys is not None else float("-inf")
        # The set is fresh from its fetch until fresh_until; static keys always are.
        self.fresh_from = float("-inf")
        self.fresh_until = forever
        self.usable_until = forever
        self.last_attempt = float("-inf")
        self.last_settled = float("-inf")  # the start of the last attempt seen to end
        self.last_failed = False
        self.failure = ""  # the last failed fetch's cause, in the edge's short fixed form
        self.fetched_at: float | None = None

    def usable(self, now: float) -> bool:
        """Whether a key set may be used to verify tokens at ``now``."""
        return self.keys is not None and now < self.usable_until

    def fresh(self, now: float) -> bool:
        """Whether the set is within its freshness at ``now``.

        Not before its fetch: a set fetched after ``now`` (the wall clock stepped back since)
        is of no known age, as an attempt is (``_cooling``); taken as fresh, it stayed so
        for its TTL plus the step, and a key its issuer withdrew stayed trusted as long.
        """
        return self.fresh_from <= now < self.fresh_until

    def current(self, now: float) -> bool:
        """Whether the set may be used at ``now`` without trying a refresh first."""
        return self.fresh(now) or (self.usable(now) and not self.needs_refresh(now))

    def needs_refresh(self, now: float) -> bool:
        """Whether the set is past its freshness and a fetch may start now."""
        if self.fresh(now):
            return False
        return not (self.last_failed and self._cooling(now))

    def may_refresh_for_unknown_kid(self, now: float) -> bool:
        """Whether an unknown ``kid`` may trigger a fetch now (one per cooldown)."""
        return self.fresh_until != float("inf") and not self._cooling(now)

    def _cooling(self, now: float) -> bool:
        """Whether the last attempt started less than ``cooldown`` before ``now``.

        An attempt after ``now`` (the wall clock stepped back since: NTP, a VM restored)
        started no one knows how long ago, and holds none: counted as recent, it refused a
        newly published key, and retried no failed fetch, for as long as the step.
        """
        return 0 <= now - self.last_attempt < self.policy.cooldown

    def record_attempt(self, now: float) -> None:
        """Note that a fetch starts at ``now``."""
        self.last_attempt = now

    def record_success(self, keys: KeySet, now: float, max_age: float | None) -> None:
        """Install a freshly fetched set."""
        self.keys = keys
        self.fetched_at = self.fresh_from = now
        self.fresh_until = now + self.policy.ttl(max_age)
        # Never before fresh_until: a set within its freshness is usable (the guard relies on it).
        self.usable_until = self.fresh_until + self.policy.max_stale
        self.last_failed = False
        self.last_settled = self.last_attempt

    def record_failure(self, cause: str = "unknown cause") -> None:
        """Note that the fetch failed; the previous set stays usable until its deadline.

        Args:
            cause: why, in a short fixed form holding no URL and nothing the server sent
                (``HTTP 503``, ``timed out``): ``unavailable`` quotes it to operators.
        """
        self.last_failed = True
        self.failure = cause[:_MAX_CAUSE]
        self.last_settled = self.last_attempt

    def unavailable(self, now: float) -> str:
        """Why no key set is usable at ``now``, for operators (the ``auth.unavailable``
        event's detail): the last good set too stale, and the last fetch's failure."""
        reasons = []
        if self.keys is not None and now >= self.usable_until:
            reasons.append("the last good set is past max_stale")
        if self.last_failed:
            reasons.append(f"last fetch failed ({self.failure})")
        elif self.keys is None:
            reasons.append("no fetch has succeeded yet")
        return "no usable key set: " + "; ".join(reasons)

    def abandon_attempt(self, started: float) -> None:
        """Drop the cooldown of the attempt started at ``started``, if it is the last one and
        never ended: a fetch cancelled with its event loop brought nothing, and its cooldown
        would only refuse a key published meanwhile. One that ended changes nothing."""
        if self.last_attempt == started:
            self.last_attempt = self.last_settled

    def forget_unsettled_attempt(self) -> None:
        """Drop the cooldown of an attempt whose end was never recorded.

        For a child process after ``fork()``: a fetch under way in another thread of the
        parent never ends there, and nothing it brings ever comes; its cooldown would only
        refuse the child's own first fetch.
        """
        self.last_attempt = self.last_settled
