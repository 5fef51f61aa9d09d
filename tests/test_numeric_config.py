"""Numeric settings: NaN, infinity, booleans and the wrong types are refused at construction.

NaN compares false with everything, so a NaN bound or grace turned off the check made with
it; an infinite one never ends. Each is a ``ConfigurationError`` when the object is built,
never a check quietly off (or a 500) at request time.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from bearerguard import BearerGuard, FetchPolicy, RefreshPolicy
from bearerguard._usage_redis import RedisUsageMonitor
from bearerguard.dpop import DPoPPolicy, MemoryDPoPReplayStore, NonceIssuer, RedisDPoPReplayStore
from bearerguard.errors import ConfigurationError
from bearerguard.events import SecurityEventReceiver
from bearerguard.introspection import Introspector
from bearerguard.issuers import TrustedIssuers
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.revocation.redis import RedisRevocationStore
from bearerguard.usage import MemoryUsageMonitor, UsagePolicy

ISS = "https://issuer.example"
POLICY = UsagePolicy(max_uses_per_token=5)


def _guard() -> BearerGuard:
    return BearerGuard(issuer=ISS, audience="api", jwks_uri=f"{ISS}/jwks")


FACTORIES: dict[str, Callable[..., Any]] = {
    "memory store": MemoryRevocationStore,
    "redis store": lambda **kw: RedisRevocationStore("redis://127.0.0.1:1", mirror=False, **kw),
    "introspector": lambda **kw: Introspector(
        f"{ISS}/introspect", client_id="api", client_secret="secret", **kw
    ),
    "usage monitor": lambda **kw: MemoryUsageMonitor(POLICY, **kw),
    "redis usage monitor": lambda **kw: RedisUsageMonitor(POLICY, "redis://127.0.0.1:1", **kw),
    "trusted issuers": lambda **kw: TrustedIssuers([_guard()], **kw),
    "event receiver": lambda **kw: SecurityEventReceiver(guard=_guard(), audience="api", **kw),
}

REDIS_FACTORIES: dict[str, Callable[..., Any]] = {
    "redis store": FACTORIES["redis store"],
    "redis usage monitor": FACTORIES["redis usage monitor"],
    "redis replay store": lambda **kw: RedisDPoPReplayStore("redis://127.0.0.1:1", **kw),
}

SECONDS = [math.nan, math.inf, -1.0, True, "60", None, Decimal("NaN")]
COUNTS = [math.nan, math.inf, 1e6, True, "10", None]

CASES = [
    *[("memory store", name, bad) for name in ("retention", "expiry_grace") for bad in SECONDS],
    *[("memory store", "max_entries", bad) for bad in COUNTS],
    *[("redis store", name, bad) for name in ("retention", "expiry_grace") for bad in SECONDS],
    *[("redis store", "max_entries", bad) for bad in COUNTS],
    *[("introspector", name, bad) for name in ("max_bytes", "cache_size") for bad in COUNTS],
    *[
        ("usage monitor", name, bad)
        for name in ("max_keys", "max_addresses_tracked")
        for bad in COUNTS
    ],
    *[("redis usage monitor", "failure_cooldown", bad) for bad in SECONDS],
    *[("trusted issuers", "max_resolved", bad) for bad in COUNTS],
    *[
        ("event receiver", name, bad)
        for name in ("max_body_bytes", "replay_cache_size")
        for bad in COUNTS
    ],
]


@pytest.mark.parametrize(("factory", "name", "value"), CASES)
def test_a_numeric_setting_that_is_not_a_sensible_number_is_refused(
    factory: str, name: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match=name):
        FACTORIES[factory](**{name: value})


@pytest.mark.parametrize(
    ("factory", "options"),
    [
        ("memory store", {"retention": 60, "expiry_grace": 0, "max_entries": 1}),
        ("memory store", {"retention": Decimal("3600.5"), "expiry_grace": 30.0}),
        ("redis store", {"retention": 60, "expiry_grace": 0, "max_entries": 1}),
        ("introspector", {"max_bytes": 256, "cache_size": 0}),
        ("usage monitor", {"max_keys": 1, "max_addresses_tracked": 6}),
        ("redis usage monitor", {"failure_cooldown": 0}),
        ("trusted issuers", {"max_resolved": 0}),
        ("event receiver", {"max_body_bytes": 512, "replay_cache_size": 1}),
    ],
)
def test_sensible_numbers_are_still_taken(factory: str, options: dict[str, Any]) -> None:
    FACTORIES[factory](**options)


def test_a_nan_grace_no_longer_lets_a_revoked_token_through() -> None:
    # Was: until = exp + NaN, and "now < NaN" is false: the entry never matched.
    with pytest.raises(ConfigurationError, match="expiry_grace"):
        BearerGuard(
            issuer=ISS,
            audience="api",
            jwks_uri=f"{ISS}/jwks",
            revocation=MemoryRevocationStore(expiry_grace=math.nan),
        )


@pytest.mark.parametrize("name", ["default_ttl", "min_ttl", "max_ttl", "cooldown", "max_stale"])
@pytest.mark.parametrize("value", [math.inf, math.nan, True, "60", None])
def test_refresh_policy_takes_finite_seconds(name: str, value: object) -> None:
    # An infinite TTL never fetched the set again: a withdrawn key stayed trusted. Only
    # max_ttl may be infinite: it caps what a server's max-age asks, and no more.
    if name == "max_ttl" and value == math.inf:
        assert RefreshPolicy(max_ttl=value).max_ttl == math.inf
        return
    options = {"max_ttl": math.inf} if name == "default_ttl" else {}
    with pytest.raises(ConfigurationError, match=name):
        RefreshPolicy(**{**options, name: value})


@pytest.mark.parametrize("value", [math.inf, math.nan, True, "1024", None])
def test_fetch_policy_max_bytes_is_a_whole_number(value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_bytes"):
        FetchPolicy(max_bytes=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", [True, "5", None, math.nan, math.inf, 1e300, 0, -1, Decimal("sNaN")]
)
def test_fetch_policy_timeout_is_a_finite_wait(value: object) -> None:
    # True was taken for one second and a string raised TypeError: one check_wait for
    # every timeout (FetchPolicy, Introspector, the Redis components).
    with pytest.raises(ConfigurationError, match="timeout"):
        FetchPolicy(timeout=value)  # type: ignore[arg-type]
    assert type(FetchPolicy(timeout=Decimal("0.5")).timeout) is float  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["max_entries", "max_per_key"])
@pytest.mark.parametrize("value", [math.nan, 1e300, True, "10", 2.5])
def test_the_dpop_replay_store_bounds_are_whole_numbers(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=name):
        MemoryDPoPReplayStore(**{name: value})


@pytest.mark.parametrize(
    ("build", "name", "value"),
    [
        *[(DPoPPolicy, "iat_window", bad) for bad in (True, "300", None, Decimal("NaN"), 0)],
        *[(DPoPPolicy, "leeway", bad) for bad in (True, "5", None, Decimal("sNaN"), -1)],
        *[(NonceIssuer, "lifetime", bad) for bad in (True, "300", None, Decimal("NaN"), 0)],
    ],
)
def test_the_dpop_windows_are_finite_seconds(
    build: Callable[..., Any], name: str, value: object
) -> None:
    # Was a TypeError, or True taken for one second.
    with pytest.raises(ConfigurationError, match=name):
        build(**{name: value})


def test_the_dpop_windows_are_kept_as_floats() -> None:
    # A Decimal window passed the policy's checks, then every proof failed on float - Decimal
    # (401 invalid_dpop_proof: DPoP was off for every client).
    policy = DPoPPolicy(iat_window=Decimal("300"), leeway=Decimal("0.5"))
    assert (policy.iat_window, policy.leeway) == (300.0, 0.5)
    assert type(policy.iat_window) is float
    assert type(policy.leeway) is float
    assert type(NonceIssuer(lifetime=Decimal("60")).lifetime) is float


@pytest.mark.parametrize("value", [math.nan, "50", None, 1.5])
def test_redis_max_connections_is_a_whole_number(value: object) -> None:
    # Was redis-py's ValueError or TypeError, or ours only for some.
    for build in (FACTORIES["redis store"], FACTORIES["redis usage monitor"]):
        with pytest.raises(ConfigurationError, match="max_connections"):
            build(max_connections=value)


REDIS_TIMEOUTS = [
    *[("redis store", name) for name in ("socket_timeout", "connect_timeout", "failure_timeout")],
    *[("redis usage monitor", name) for name in ("socket_timeout", "connect_timeout")],
    *[("redis replay store", name) for name in ("socket_timeout", "connect_timeout")],
]


@pytest.mark.parametrize(("factory", "name"), REDIS_TIMEOUTS)
@pytest.mark.parametrize(
    "value", [True, "1", None, math.nan, math.inf, 1e300, 0, -1, Decimal("sNaN")]
)
def test_redis_timeouts_are_finite_seconds(factory: str, name: str, value: object) -> None:
    # Was True taken for one second, and a plain TypeError for a string or None.
    with pytest.raises(ConfigurationError, match=name):
        REDIS_FACTORIES[factory](**{name: value})


@pytest.mark.parametrize(("factory", "name"), REDIS_TIMEOUTS)
def test_redis_timeouts_are_kept_as_floats(factory: str, name: str) -> None:
    built = REDIS_FACTORIES[factory](**{name: Decimal("0.5")})
    if name == "failure_timeout":
        assert type(built._failure_timeout) is float
    else:
        options = built._clients.options
        assert options[name.replace("connect", "socket_connect")] == 0.5
        keys = ("socket_timeout", "socket_connect_timeout", "timeout")
        assert all(type(options[key]) is float for key in keys)
        assert type(built._timeout) is float


GUARD_SETTINGS = [
    *[
        ("leeway", bad, f"leeway must be a finite number of seconds, not negative: {bad!r}")
        for bad in (math.nan, math.inf, -1, -0.5, True, "30", None, Decimal("NaN"))
    ],
    *[
        ("max_age", bad, f"max_age must be a finite number of seconds, positive: {bad!r}")
        for bad in (math.nan, math.inf, 0, -1, True, "60", Decimal("sNaN"))
    ],
    *[
        ("max_token_bytes", bad, f"max_token_bytes must be a whole number, at least 16: {bad!r}")
        for bad in (15, 0, -1, 8192.0, math.nan, math.inf, True, "8192", None)
    ],
]


@pytest.mark.parametrize(("name", "value", "message"), GUARD_SETTINGS)
def test_the_guard_names_the_setting_it_refuses_and_why(
    name: str, value: object, message: str
) -> None:
    # Was one sentence for three settings: "leeway, max_age and max_token_bytes must be
    # sensible", or "must be a number, not ...", whichever check caught it first.
    with pytest.raises(ConfigurationError) as refused:
        BearerGuard(issuer=ISS, audience="api", jwks_uri=f"{ISS}/jwks", **{name: value})
    assert str(refused.value) == message


def test_the_guard_still_takes_sensible_times_and_sizes() -> None:
    guard = BearerGuard(
        issuer=ISS,
        audience="api",
        jwks_uri=f"{ISS}/jwks",
        leeway=Decimal("0"),
        max_age=Decimal("0.5"),
        max_token_bytes=16,
    )
    assert (guard.leeway, guard.max_token_bytes) == (0.0, 16)
    assert type(guard.leeway) is float
    assert type(guard.max_token_bytes) is int
    assert BearerGuard(issuer=ISS, audience="api", jwks_uri=f"{ISS}/jwks", max_age=None)


class _Whole:
    """An integer as a library may register one: a numbers.Integral with ``int()`` only."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"_Whole({self.value})"


numbers.Integral.register(_Whole)


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        ("memory store", "max_entries"),
        ("introspector", "cache_size"),
        ("usage monitor", "max_keys"),
    ],
)
def test_a_registered_integral_is_taken_and_bounded_once_converted(factory: str, name: str) -> None:
    # Was TypeError: the bound was compared with the value before int(), and an Integral
    # need not compare with an int.
    FACTORIES[factory](**{name: _Whole(300)})
    with pytest.raises(ConfigurationError, match=rf"^{name} must be a whole number.*_Whole\(-1\)"):
        FACTORIES[factory](**{name: _Whole(-1)})


class _Unshowable(_Whole):
    """A whole number whose ``repr`` fails, as a proxy not configured yet may."""

    def __repr__(self) -> str:
        raise RuntimeError("not configured")


def test_a_setting_is_judged_without_being_shown() -> None:
    # The refusal's message was built before the value was judged: an integer beyond
    # Python's 4300 digits for str() raised ValueError for a sound max_token_bytes (and for
    # any leeway, which must be a ConfigurationError), and a failing repr failed every value.
    huge = 10**5000
    guard = BearerGuard(issuer=ISS, audience="api", jwks_uri=f"{ISS}/jwks", max_token_bytes=huge)
    assert guard.max_token_bytes == huge
    for name, value in [("leeway", huge), ("max_age", huge), ("max_token_bytes", -huge)]:
        with pytest.raises(ConfigurationError, match=rf"^{name} must be .*: <int of \d+ bits>$"):
            BearerGuard(issuer=ISS, audience="api", jwks_uri=f"{ISS}/jwks", **{name: value})
    MemoryRevocationStore(max_entries=_Unshowable(300))  # taken: only a refusal shows it
    with pytest.raises(ConfigurationError, match=r"^max_entries must be .*: <_Unshowable>$"):
        MemoryRevocationStore(max_entries=_Unshowable(-1))
    with pytest.raises(ConfigurationError, match=r": 'x{56}\.\.\.$"):
        MemoryRevocationStore(retention="x" * 1000)
