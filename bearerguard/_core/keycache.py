"""When to fetch a JWK Set again: freshness, cooldown, stale-if-error. Pure state, no I/O.

The rules:

* a fetched set is fresh for its TTL: ``Cache-Control: max-age`` clamped to configured bounds;
* an unknown ``kid`` triggers a refresh, unless a fetch started less than ``cooldown`` seconds
  ago. That one rule is the negative cache: every kid that a fetch just came back without is
  answered "unknown" without another fetch, so a flood of random kids costs at most one fetch
  per cooldown, while a key that newly appears is picked up by the first request after it;
* a failed fetch keeps the last good set usable until ``max_stale`` seconds past its
  freshness (stale-if-error), and is retried at most once per cooldown;
* past that, there are no usable keys and the guard fails closed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bearerguard._core.keys import KeySet
from bearerguard._core.times import check_seconds
from bearerguard.errors import ConfigurationError

__all__ = ["KeyCache", "RefreshPolicy", "ttl_from_cache_control"]

# RFC 9110 §5.6.2: a token; §5.6.4: a quoted-string, whose quoted-pairs stand for their
# character (the alternatives are disjoint: matching stays linear). RFC 9111 §5.2:
# cache-directive = token [ "=" ( token / quoted-string ) ].
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_DIRECTIVE = re.compile(rf'({_TCHARS})(?:=(?:({_TCHARS})|"((?:[^"\\]|\\.)*)"))?')
_QUOTED_PAIR = re.compile(r"\\(.)")
_DELTA_SECONDS = re.compile(r"[0-9]+")  # RFC 9111 §1.2.2: 1*DIGIT, ASCII digits only
# RFC 9111 §1.2.2: delta-seconds too large to represent count as 2**31, never as unsaid.
_MAX_DELTA_SECONDS = 2**31
_LIFETIMES = ("max-age", "s-maxage")
_NO_REUSE = ("no-cache", "no-store")
_STALE = 0.0


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """How long key sets are trusted and how often they may be fetched.

    Args:
        default_ttl: freshness when the response has no usable ``Cache-Control``; finite.
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
        """The freshness to grant a set the server described with ``max_age``."""
        wanted = self.default_ttl if max_age is None else max_age
        return min(max(wanted, self.min_ttl), self.max_ttl)


def _delta_seconds(digits: str) -> int:
    """A delta-seconds value, at most 2**31 (RFC 9111 §1.2.2)."""
    # The length first (int() refuses strings of over 4300 digits), of the value: leading
    # zeros count for nothing.
    digits = digits.lstrip("0")
    return _MAX_DELTA_SECONDS if len(digits) > 10 else min(int(digits or "0"), _MAX_DELTA_SECONDS)


def _elements(value: str) -> list[str]:
    """The members of a comma-separated list (RFC 9110 §5.6.1), a comma inside a
    quoted-string (§5.6.4) kept in its member, each stripped of optional whitespace."""
    members, start, quoted, escaped = [], 0, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            escaped, quoted = char == "\\", char != '"'
        elif char == '"':
            quoted = True
        elif char == ",":
            members.append(value[start:index].strip(" \t"))
            start = index + 1
    members.append(value[start:].strip(" \t"))
    return members


def _seconds(member: str) -> float:
    """The delta-seconds of a ``max-age`` or ``s-maxage`` member; stale when invalid."""
    directive = _DIRECTIVE.fullmatch(member)
    if directive is None:
        # RFC 9111 §4.2.1: a response with invalid freshness information (an argument that
        # is not 1*DIGIT, a missing one, a stray quote) is best considered stale.
        return _STALE
    token, quoted = directive[2], directive[3]
    # RFC 9111 §5.2: recipients ought to accept the quoted-string form as well as the token.
    argument = token if quoted is None else _QUOTED_PAIR.sub(r"\1", quoted)
    if argument is None or not _DELTA_SECONDS.fullmatch(argument):
        return _STALE
    return float(_delta_seconds(argument))


def _directives(value: str) -> tuple[bool, dict[str, float]]:
    """Whether ``no-cache`` or ``no-store`` is said, and the seconds of each lifetime
    directive: stale for an invalid one, or one given twice with different values."""
    no_reuse = False
    found: dict[str, float] = {}
    for member in _elements(value):
        # RFC 9111 §5.2: directive names are compared case-insensitively.
        name = member.partition("=")[0].strip(" \t").lower()
        if name in _NO_REUSE:
            no_reuse = True
        elif name in _LIFETIMES:
            said = _seconds(member)
            # RFC 9111 §4.2.1: a directive given twice with different values (a proxy adding
            # its own header line) leaves the response stale, not fresh for the larger one.
            found[name] = said if found.setdefault(name, said) == said else _STALE
    return no_reuse, found


def ttl_from_cache_control(value: str | None, age: str | None = None) -> float | None:
    """Read ``max-age`` from a ``Cache-Control`` header (RFC 9111 §5.2.2); 0 for no-cache.

    An invalid or conflicting ``max-age`` gives 0: the response is stale (RFC 9111 §4.2.1).
    ``age`` is the response's ``Age`` header: the seconds a cache in between already held
    it, which its freshness has used up (RFC 9111 §4.2.3, §5.1).
    """
    if not value:
        return None
    no_reuse, found = _directives(value)
    if no_reuse:
        return _STALE
    # RFC 9111 §5.2.2.10: s-maxage is for shared caches; ours is private, so max-age wins
    # wherever it stands, and s-maxage serves only when there is no max-age. Only the
    # directive read counts: a conflict in an s-maxage beside max-age is ignored with it.
    lifetime = found.get("max-age", found.get("s-maxage"))
    held = _DELTA_SECONDS.fullmatch(age.strip()) if age else None
    if lifetime is not None and held is not None:
        lifetime = max(lifetime - _delta_seconds(held[0]), 0.0)
    return lifetime


class KeyCache:
    """The current key set and its fetch history."""

    __slots__ = (
        "fetched_at",
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
        self.fresh_until = forever
        self.usable_until = forever
        self.last_attempt = float("-inf")
        self.last_settled = float("-inf")  # the start of the last attempt seen to end
        self.last_failed = False
        self.fetched_at: float | None = None

    def usable(self, now: float) -> bool:
        """Whether a key set may be used to verify tokens at ``now``."""
        return self.keys is not None and now < self.usable_until

    def current(self, now: float) -> bool:
        """Whether the set may be used at ``now`` without trying a refresh first."""
        return now < self.fresh_until or (self.usable(now) and not self.needs_refresh(now))

    def needs_refresh(self, now: float) -> bool:
        """Whether the set is past its freshness and a fetch may start now."""
        if now < self.fresh_until:
            return False
        return not (self.last_failed and now - self.last_attempt < self.policy.cooldown)

    def may_refresh_for_unknown_kid(self, now: float) -> bool:
        """Whether an unknown ``kid`` may trigger a fetch now (one per cooldown)."""
        return self.fresh_until != float("inf") and now - self.last_attempt >= self.policy.cooldown

    def record_attempt(self, now: float) -> None:
        """Note that a fetch starts at ``now``."""
        self.last_attempt = now

    def record_success(self, keys: KeySet, now: float, max_age: float | None) -> None:
        """Install a freshly fetched set."""
        self.keys = keys
        self.fetched_at = now
        self.fresh_until = now + self.policy.ttl(max_age)
        # Never before fresh_until: a set within its freshness is usable (the guard relies on it).
        self.usable_until = self.fresh_until + self.policy.max_stale
        self.last_failed = False
        self.last_settled = self.last_attempt

    def record_failure(self) -> None:
        """Note that the fetch failed; the previous set stays usable until its deadline."""
        self.last_failed = True
        self.last_settled = self.last_attempt

    def forget_unsettled_attempt(self) -> None:
        """Drop the cooldown of an attempt whose end was never recorded.

        For a child process after ``fork()``: a fetch under way in another thread of the
        parent never ends there, and nothing it brings ever comes; its cooldown would only
        refuse the child's own first fetch.
        """
        self.last_attempt = self.last_settled
