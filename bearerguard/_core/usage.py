"""Usage monitoring's sans-I/O core: the policy, windows, client addresses and verdicts.

Shared by ``MemoryUsageMonitor`` and ``RedisUsageMonitor`` (whose Lua script applies the same
integer arithmetic to decide when to set its "reported" marker), so both backends judge
the same counts the same way. Nothing here reads the clock: ``now`` is passed in.

Counting, per tracked key (``(iss, jti)`` for a token, ``(iss, sub)`` for a subject), in
fixed windows of ``policy.window`` seconds aligned to the epoch:

- **uses**: the sliding-window estimate of uses over the last ``window`` seconds, as rate
  limiters compute it: the current window's count plus the previous window's count weighted
  by the share of the previous window that still lies within the last ``window`` seconds
  (``current + previous * remaining // 1000``, ``remaining`` in thousandths). It assumes the
  previous window's uses were spread evenly; a burst straddling a boundary is still seen.
- **addresses**: the distinct client addresses of the current and the previous window
  together, that is over the last ``window`` to ``2 * window`` seconds. Two uses from two
  addresses are always seen together when less than ``window`` seconds apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Literal, NamedTuple

from bearerguard._core.introspected import INTROSPECTION_ALGORITHM
from bearerguard.errors import ConfigurationError
from bearerguard.token import AccessToken

__all__ = [
    "Action",
    "Breach",
    "Consequence",
    "Target",
    "UsagePolicy",
    "UsageVerdict",
    "Window",
    "address_key",
    "breaches_of",
    "consequence",
    "estimate",
    "targets",
    "token_name",
    "verdict_of",
    "window_at",
]

Action = Literal["log", "reject", "revoke"]
Consequence = Literal["allow", "log", "reject", "revoke"]
Scope = Literal["token", "subject"]
Measure = Literal["addresses", "uses"]

# Client-supplied strings (a forwarded address) are cut to this before counting.
MAX_ADDRESS_LENGTH = 256
# Keys of the current window outlive its end by one more window (the next one reads them as
# its "previous"), plus this margin for clock skew between instances.
TTL_MARGIN = 5.0


def _limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer or None")
    return value


_MAX_WINDOW = 366 * 86_400.0  # a year: longer windows are a mistake (and overflow Redis)


@dataclass(frozen=True, slots=True)
class UsagePolicy:
    """How tokens may be used before it counts as an anomaly, and what then happens.

    Every limit is a maximum: a token (or subject) used from more distinct client addresses,
    or more often, than its limit within the window is anomalous. ``None`` leaves a measure
    unchecked (and, for addresses, uncounted); at least one limit must be set.

    Args:
        window: seconds; uses are counted over the last ``window`` seconds (a sliding
            estimate), addresses over the last ``window`` to ``2 * window`` seconds.
        max_addresses_per_token: distinct client addresses one token (``iss``, ``jti``) may
            be used from. A bearer token replayed by a thief usually shows up here first.
        max_uses_per_token: uses of one token within the window.
        max_addresses_per_subject: distinct addresses across every token of one subject
            (``iss``, ``sub``): a user with several devices has several.
        max_uses_per_subject: uses across every token of one subject within the window.
        action: ``"log"`` emits a ``token.anomaly`` audit event and lets the request through;
            ``"reject"`` also refuses it (401 ``invalid_token``, reason ``usage_anomaly``);
            ``"revoke"`` also revokes the token (by ``jti``) in the guard's revocation
            store, so every instance refuses it from then on. A token without ``jti``
            cannot be revoked and is rejected instead.
        failure: what the guard does when the monitor's store fails: ``"allow"`` (default)
            lets the request through unmonitored and logs a warning (monitoring is a
            detection control); ``"deny"`` answers 503 (``UsageMonitorError``).
        ipv4_prefix: IPv4 addresses are counted by network of this prefix length (32: each
            address on its own).
        ipv6_prefix: IPv6 addresses are counted by network of this prefix length; 64 by
            default, since one device may use several temporary addresses of its /64
            (RFC 8981). IPv4-mapped IPv6 addresses (``::ffff:0:0/96``) and NAT64's
            well-known prefix (``64:ff9b::/96``, RFC 6052) count as the IPv4 address they
            embed.

    Raises:
        ConfigurationError: a limit that is not a positive integer, no limit at all, an
            unknown action or failure mode, or a window shorter than one second or
            longer than 366 days.

    Warning:
        Addresses are as the integration reports them: behind a proxy, configure the
        middleware to take the client address from the proxy's header, or every request
        appears to come from the proxy.
    """

    window: float = 60.0
    max_addresses_per_token: int | None = None
    max_uses_per_token: int | None = None
    max_addresses_per_subject: int | None = None
    max_uses_per_subject: int | None = None
    action: Action = "log"
    failure: Literal["allow", "deny"] = "allow"
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64

    def __post_init__(self) -> None:
        window = self.window
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise ConfigurationError("window must be a number of seconds")
        if not math.isfinite(window) or window < 1.0:
            raise ConfigurationError("window must be at least one second")
        if window > _MAX_WINDOW:  # Redis keys expire after two windows, in milliseconds
            raise ConfigurationError("window must be at most 366 days")
        limits = [
            _limit(name, getattr(self, name))
            for name in (
                "max_addresses_per_token",
                "max_uses_per_token",
                "max_addresses_per_subject",
                "max_uses_per_subject",
            )
        ]
        if all(limit is None for limit in limits):
            raise ConfigurationError("a UsagePolicy needs at least one limit")
        if self.action not in ("log", "reject", "revoke"):
            raise ConfigurationError("action is 'log', 'reject' or 'revoke'")
        if self.failure not in ("allow", "deny"):
            raise ConfigurationError("failure is 'allow' or 'deny'")
        for name, top in (("ipv4_prefix", 32), ("ipv6_prefix", 128)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ConfigurationError(f"{name} must be an integer from 1 to {top}")

    @property
    def counts_addresses(self) -> bool:
        """Whether any address limit is set (addresses are counted only then)."""
        return self.max_addresses_per_token is not None or (
            self.max_addresses_per_subject is not None
        )


@dataclass(frozen=True, slots=True)
class Breach:
    """One limit exceeded: ``count`` is above ``limit`` for ``measure`` of ``scope``."""

    scope: Scope
    measure: Measure
    count: int
    limit: int

    def describe(self) -> str:
        what = "addresses" if self.measure == "addresses" else "uses"
        return f"{self.scope} {what} {self.count} > {self.limit}"


@dataclass(frozen=True, slots=True)
class UsageVerdict:
    """What one observation found.

    Attributes:
        action: the policy's action, to take when ``exceeded``.
        breaches: every limit exceeded by this observation; empty when within limits.
        first: whether this observation is the first to find a breach for its token or
            subject in the current window (across every instance with Redis; in this
            process with memory). Emit the ``token.anomaly`` event when it is set, so a
            sustained anomaly is reported once per window rather than once per request.
        revocable: whether the token carries a ``jti`` (only then can it be revoked).
        token_uses: the token's uses in the last window (the sliding estimate), or ``None``
            when the token is not tracked (no token limit set, or no ``jti``).
        token_addresses: the token's distinct addresses, or ``None`` when not counted (no
            address limit for tokens, or no ``jti``).
        subject_uses: as ``token_uses``, for the subject (``None`` without ``sub``).
        subject_addresses: as ``token_addresses``, for the subject.
        window: the policy's window, in seconds.
    """

    action: Action
    breaches: tuple[Breach, ...]
    first: bool
    revocable: bool
    token_uses: int | None
    token_addresses: int | None
    subject_uses: int | None
    subject_addresses: int | None
    window: float

    @property
    def exceeded(self) -> bool:
        """Whether any limit was exceeded."""
        return bool(self.breaches)

    def describe(self) -> str:
        """A short line for logs and error details (no token material)."""
        if not self.breaches:
            return "within limits"
        found = ", ".join(breach.describe() for breach in self.breaches)
        return f"{found} (window {self.window:g} s)"


def consequence(verdict: UsageVerdict) -> Consequence:
    """What the guard does with ``verdict``: the one rule every integration applies.

    Returns:
        ``"allow"`` within limits; otherwise the policy's action, except that ``"revoke"``
        becomes ``"reject"`` for a token without ``jti``. ``"log"`` lets the request
        through; ``"reject"`` and ``"revoke"`` refuse it (``UsageAnomalyError``), and
        ``"revoke"`` also revokes the token by ``(iss, jti)`` until its ``exp``.
    """
    if not verdict.breaches:
        return "allow"
    if verdict.action == "revoke" and not verdict.revocable:
        return "reject"
    return verdict.action


class Window(NamedTuple):
    """Where ``now`` falls among fixed windows aligned to the epoch.

    Attributes:
        number: ``floor(now / length)``: names the current window's keys.
        remaining: thousandths (1 to 1000) of the previous window that still lie within the
            last ``length`` seconds: its weight in the uses estimate.
        ttl: seconds the current window's keys must live: to the end of the next window
            (which reads them as its previous one), plus a margin for clock skew.
    """

    number: int
    remaining: int
    ttl: float


def window_at(now: float, length: float) -> Window:
    """The window ``now`` falls in, for windows of ``length`` seconds."""
    position = now / length
    index = math.floor(position)
    elapsed = min(999, math.floor((position - index) * 1000))
    return Window(index, 1000 - elapsed, (index + 2) * length - now + TTL_MARGIN)


def estimate(current: int, previous: int, remaining: int) -> int:
    """The sliding-window estimate of uses (integers only: Lua computes the same)."""
    return current + previous * remaining // 1000


def address_key(client: str | None, policy: UsagePolicy) -> str | None:
    """What a client address counts as: itself, or its network for the policy's prefixes.

    An address with a port, as some proxies forward it (``192.0.2.43:47011``,
    ``[2001:db8::1]:4711``: RFC 7239 §6) and as Werkzeug's ``ProxyFix`` passes it on, counts
    as the address: each connection of one client has a port of its own. Anything else that
    is not an IP address (a Unix socket path, a test client's name) counts as itself, cut to
    a bounded length; ``None`` or an empty string is not counted.
    """
    if not client:
        return None
    client = client[:MAX_ADDRESS_LENGTH]
    if ":" not in client:
        if policy.ipv4_prefix == 32:
            return client  # the common case, without parsing
        try:
            packed = inet_pton(AF_INET, client)
        except (OSError, ValueError):  # ValueError: a NUL, a lone surrogate
            return client
        return _network(AF_INET, packed, policy.ipv4_prefix)
    try:
        # inet_pton, not ipaddress: C, and a tenth of the cost on the hot path.
        packed = inet_pton(AF_INET6, client.strip("[]"))
    except (OSError, ValueError):
        host = _without_port(client)
        return client if host is None else address_key(host, policy)
    if packed[:12] in _EMBEDDING_IPV4:
        if policy.ipv4_prefix == 32:
            return inet_ntop(AF_INET, packed[12:])
        return _network(AF_INET, packed[12:], policy.ipv4_prefix)
    return _network(AF_INET6, packed, policy.ipv6_prefix)


_IPV4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96 (RFC 4291 §2.5.5.2)
# 64:ff9b::/96, the well-known prefix of IPv4/IPv6 translation (RFC 6052 §2.1): an
# IPv6-only server behind a translator (NAT64, SIIT-DC: RFC 7755) sees every IPv4 client
# in one /64, so each counts as the IPv4 address embedded in the last 32 bits.
# Network-specific prefixes (RFC 8215's 64:ff9b:1::/48 among them) place the address
# according to their length, which cannot be told from the address: IPv6 rules apply.
_NAT64 = b"\x00\x64\xff\x9b" + bytes(8)
_EMBEDDING_IPV4 = frozenset({_IPV4_MAPPED, _NAT64})


def _without_port(client: str) -> str | None:
    """The IP address of ``client`` written with a port (RFC 7239 §6: ``IPv4:port``, or
    ``[IPv6]:port``), else ``None``."""
    host, _, port = client.rpartition(":")
    if not (port.isdecimal() and port.isascii() and len(port) <= 5):
        return None
    if host[:1] == "[" and host[-1:] == "]":
        family, host = AF_INET6, host[1:-1]
    else:
        family = AF_INET
    try:
        inet_pton(family, host)
    except (OSError, ValueError):
        return None
    return host


def _network(family: int, packed: bytes, prefix: int) -> str:
    bits = len(packed) * 8
    shift = bits - prefix
    value = int.from_bytes(packed, "big") >> shift << shift
    return f"{inet_ntop(family, value.to_bytes(len(packed), 'big'))}/{prefix}"


class Target(NamedTuple):
    """One counted key: a token by ``(iss, jti)`` or a subject by ``(iss, sub)``."""

    scope: Scope
    issuer: str
    name: str
    max_uses: int | None
    max_addresses: int | None


def targets(token: AccessToken, policy: UsagePolicy) -> tuple[Target, ...]:
    """The keys ``token`` is counted under: its ``(iss, jti)`` and its ``(iss, sub)``.

    A scope is tracked only when one of its limits is set and the token names it. A JWT
    without ``jti`` is never counted by token (its bytes are no key: ECDSA signatures are
    malleable, so one token can be presented under several byte strings); an opaque token
    without ``jti`` is counted by its fingerprint (see ``token_name``).
    """
    found: list[Target] = []
    token_limits = (policy.max_uses_per_token, policy.max_addresses_per_token)
    name = token_name(token) if token_limits != (None, None) else None
    if name is not None:
        found.append(Target("token", token.issuer, name, *token_limits))
    subject_limits = (policy.max_uses_per_subject, policy.max_addresses_per_subject)
    sub = token.subject
    if isinstance(sub, str) and sub and subject_limits != (None, None):
        found.append(Target("subject", token.issuer, sub, *subject_limits))
    return tuple(found)


def token_name(token: AccessToken) -> str | None:
    """The name ``token`` is counted under by token: its ``jti``; for an opaque token
    without one, ``fp:`` and its fingerprint; else ``None`` (not counted by token).

    An opaque token is the very string its authorization server looks up (RFC 7662 §2.1):
    unlike a JWS it has no other encoding, so a hash of its bytes names it. The fingerprint
    (64 bits of its SHA-256) is such a hash, already computed, and never the token itself.
    """
    jti = token.token_id
    if isinstance(jti, str) and jti:
        return jti
    if token.algorithm == INTROSPECTION_ALGORITHM and token.fingerprint:
        return f"fp:{token.fingerprint}"
    return None


def breaches_of(target: Target, uses: int, addresses: int | None) -> tuple[Breach, ...]:
    """The limits of ``target`` that ``uses`` (an estimate) and ``addresses`` exceed."""
    found: tuple[Breach, ...] = ()
    limit = target.max_addresses
    if limit is not None and addresses is not None and addresses > limit:
        found += (Breach(target.scope, "addresses", addresses, limit),)
    if target.max_uses is not None and uses > target.max_uses:
        found += (Breach(target.scope, "uses", uses, target.max_uses),)
    return found


def verdict_of(
    policy: UsagePolicy,
    token: AccessToken,
    counted: list[tuple[Target, int, int | None]],
    *,
    first: bool,
) -> UsageVerdict:
    """The verdict for the counts found: ``(target, uses estimate, addresses)`` each."""
    token_uses = token_addresses = subject_uses = subject_addresses = None
    breaches: tuple[Breach, ...] = ()
    for target, uses, addresses in counted:
        if target.scope == "token":
            token_uses, token_addresses = uses, addresses
        else:
            subject_uses, subject_addresses = uses, addresses
        breaches += breaches_of(target, uses, addresses)
    return UsageVerdict(
        policy.action,
        breaches,
        first and bool(breaches),
        bool(token.token_id),
        token_uses,
        token_addresses,
        subject_uses,
        subject_addresses,
        float(policy.window),
    )
