"""Usage monitoring: the pure core, one contract suite over both monitors, and Redis itself.

The contract runs every scenario on ``MemoryUsageMonitor`` and on ``RedisUsageMonitor``
against a real redis-server (``tests/redis_server.py``), on both sides (``observe`` and
``observe_sync``), with an injected clock so that windows roll over on demand.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from bearerguard import AccessToken
from bearerguard._core.usage import (
    Breach,
    UsageVerdict,
    address_key,
    estimate,
    targets,
    window_at,
)
from bearerguard.audit import AuditLog, RequestInfo
from bearerguard.errors import ConfigurationError, InvalidTokenError, render_challenge
from bearerguard.testing import DevIssuer
from bearerguard.usage import (
    MemoryUsageMonitor,
    SyncUsageMonitor,
    UsageAnomalyError,
    UsageMonitor,
    UsageMonitorError,
    UsagePolicy,
    consequence,
    usage_failed,
)
from tests.redis_server import CuttingProxy, RedisServer
from tests.test_introspection import AUDIENCE, IntrospectionServer

ISS = "https://issuer.example"
WINDOW = 60.0
START = 1_800_000_000.0  # the start of a window of 60 s (divisible by 60)


def token(jti: str | None = "j1", sub: str | None = "alice", iss: str = ISS) -> AccessToken:
    claims: dict[str, Any] = {"iss": iss, "aud": "api", "exp": START + 3600, "iat": START}
    claims.update({name: value for name, value in {"jti": jti, "sub": sub}.items() if value})
    return AccessToken.from_claims(
        claims,
        scopes=frozenset(),
        expires_at=START + 3600,
        issued_at=START,
        key_id=None,
        algorithm="RS256",
        fingerprint="f",
    )


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def verdict(**fields: Any) -> UsageVerdict:
    defaults: dict[str, Any] = {
        "action": "log",
        "breaches": (),
        "first": False,
        "revocable": True,
        "token_uses": 1,
        "token_addresses": None,
        "subject_uses": None,
        "subject_addresses": None,
        "window": WINDOW,
    }
    return UsageVerdict(**{**defaults, **fields})


# -- the pure core --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "at least one limit"),
        ({"max_uses_per_token": 0}, "positive integer"),
        ({"max_uses_per_token": True}, "positive integer"),
        ({"max_uses_per_token": 2.5}, "positive integer"),
        ({"max_uses_per_token": 5, "window": 0.5}, "at least one second"),
        ({"max_uses_per_token": 5, "window": float("inf")}, "at least one second"),
        ({"max_uses_per_token": 5, "window": 1e16}, "at most 366 days"),
        ({"max_uses_per_token": 5, "action": "block"}, "action"),
        ({"max_uses_per_token": 5, "failure": "open"}, "failure"),
        ({"max_uses_per_token": 5, "ipv6_prefix": 129}, "ipv6_prefix"),
        ({"max_uses_per_token": 5, "ipv4_prefix": 0}, "ipv4_prefix"),
    ],
)
def test_a_policy_refuses_what_cannot_work(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        UsagePolicy(**options)


def test_windows_are_aligned_to_the_epoch() -> None:
    at_start = window_at(START, WINDOW)
    assert at_start.number == START // WINDOW
    assert at_start.remaining == 1000  # the previous window still counts in full
    assert at_start.ttl == 2 * WINDOW + 5.0
    later = window_at(START + 45, WINDOW)
    assert later.number == at_start.number
    assert later.remaining == 250
    assert later.ttl == WINDOW + 15 + 5.0
    assert window_at(START + 59.9999, WINDOW).remaining == 1
    assert window_at(START + 60, WINDOW).number == at_start.number + 1


@pytest.mark.parametrize(
    ("current", "previous", "remaining", "expected"),
    [(1, 0, 1000, 1), (1, 10, 1000, 11), (1, 10, 500, 6), (3, 10, 1, 3), (0, 7, 999, 6)],
)
def test_the_sliding_estimate(current: int, previous: int, remaining: int, expected: int) -> None:
    assert estimate(current, previous, remaining) == expected


@pytest.mark.parametrize(
    ("client", "prefixes", "expected"),
    [
        (None, {}, None),
        ("", {}, None),
        ("203.0.113.7", {}, "203.0.113.7"),
        ("203.0.113.7", {"ipv4_prefix": 24}, "203.0.113.0/24"),
        ("2001:db8:1:2:aaaa::1", {}, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", {}, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", {"ipv6_prefix": 128}, "2001:db8:1:2:bbbb::9/128"),
        ("[2001:db8::1]", {}, "2001:db8::/64"),
        # A dual-stack socket reports IPv4 clients as mapped addresses: they stay distinct.
        ("::ffff:203.0.113.7", {}, "203.0.113.7"),
        ("::ffff:203.0.113.7", {"ipv4_prefix": 16}, "203.0.0.0/16"),
        # A proxy that forwards the client's port (RFC 7239 §6), passed on by ProxyFix: one
        # client's connections each have a port of their own, and count as one address.
        ("203.0.113.7:50001", {}, "203.0.113.7"),
        ("203.0.113.7:50001", {"ipv4_prefix": 24}, "203.0.113.0/24"),
        ("[2001:db8::1]:4711", {}, "2001:db8::/64"),
        ("[::ffff:203.0.113.7]:4711", {}, "203.0.113.7"),
        # Behind an IPv4/IPv6 translator every IPv4 client is 64:ff9b::<IPv4> (RFC 6052
        # §2.1): one /64 for all of them; each counts as the IPv4 address it embeds.
        ("64:ff9b::203.0.113.7", {}, "203.0.113.7"),
        ("64:ff9b::cb00:7108", {}, "203.0.113.8"),
        ("[64:ff9b::203.0.113.7]:4711", {}, "203.0.113.7"),
        ("64:ff9b::203.0.113.7", {"ipv4_prefix": 24}, "203.0.113.0/24"),
        ("64:ff9b:0:0:1::203.0.113.7", {}, "64:ff9b::/64"),  # not the /96: IPv6 rules
        ("64:ff9b:1::203.0.113.7", {}, "64:ff9b:1::/64"),  # RFC 8215's local-use /48
        ("testclient", {}, "testclient"),
        ("testclient:80", {}, "testclient:80"),
        ("203.0.113.7:port", {}, "203.0.113.7:port"),
        ("203.0.113.7:655350", {}, "203.0.113.7:655350"),
        ("2001:db8::1:4711", {}, "2001:db8::/64"),  # no brackets: an address of its own
        ("not:an:address", {}, "not:an:address"),
        ("x" * 1000, {}, "x" * 256),
        # Text inet_pton refuses with ValueError, not OSError (a NUL, a lone surrogate):
        # counted as itself like any other name, never a failure of the monitor.
        ("203.0.113.7\x00", {"ipv4_prefix": 24}, "203.0.113.7\x00"),
        ("::1\x00", {}, "::1\x00"),
        ("[::1\x00]:80", {}, "[::1\x00]:80"),
        ("203.0.113.7\x00:80", {}, "203.0.113.7\x00:80"),
        ("\ud800", {"ipv4_prefix": 24}, "\ud800"),
        ("\ud800:80", {}, "\ud800:80"),
    ],
)
def test_addresses_count_by_network(
    client: str | None, prefixes: dict[str, int], expected: str | None
) -> None:
    policy = UsagePolicy(max_addresses_per_token=3, **prefixes)
    assert address_key(client, policy) == expected


def test_tokens_are_tracked_by_iss_and_jti_subjects_by_iss_and_sub() -> None:
    both = UsagePolicy(max_uses_per_token=5, max_addresses_per_subject=3)
    found = targets(token(), both)
    assert [(t.scope, t.issuer, t.name) for t in found] == [
        ("token", ISS, "j1"),
        ("subject", ISS, "alice"),
    ]
    assert (found[0].max_uses, found[0].max_addresses) == (5, None)
    assert (found[1].max_uses, found[1].max_addresses) == (None, 3)
    # Never by the token's bytes: without a jti, a token is not tracked by token.
    assert [t.scope for t in targets(token(jti=None), both)] == ["subject"]
    assert targets(token(jti=None, sub=None), both) == ()
    assert [t.scope for t in targets(token(), UsagePolicy(max_uses_per_token=1))] == ["token"]


@pytest.mark.parametrize(
    ("action", "breached", "revocable", "expected"),
    [
        ("log", False, True, "allow"),
        ("revoke", False, True, "allow"),
        ("log", True, True, "log"),
        ("reject", True, True, "reject"),
        ("revoke", True, True, "revoke"),
        ("revoke", True, False, "reject"),  # no jti: nothing to revoke, refuse it anyway
    ],
)
def test_consequence(action: str, breached: bool, revocable: bool, expected: str) -> None:
    breaches = (Breach("token", "uses", 6, 5),) if breached else ()
    judged = verdict(action=action, breaches=breaches, revocable=revocable)
    assert consequence(judged) == expected
    assert judged.exceeded is breached


def test_a_verdict_describes_itself_without_token_material() -> None:
    judged = verdict(
        breaches=(Breach("token", "addresses", 4, 3), Breach("subject", "uses", 101, 100))
    )
    assert judged.describe() == "token addresses 4 > 3, subject uses 101 > 100 (window 60 s)"
    assert verdict().describe() == "within limits"


def test_the_anomaly_error_is_a_401_invalid_token_with_a_fixed_description() -> None:
    judged = verdict(action="reject", breaches=(Breach("token", "addresses", 4, 3),))
    error = UsageAnomalyError.of(judged, token())
    assert isinstance(error, InvalidTokenError)
    assert (error.status, error.error_code, error.reason) == (401, "invalid_token", "usage_anomaly")
    assert error.verdict is judged
    assert error.token == token()
    assert error.detail == "usage anomaly: token addresses 4 > 3 (window 60 s)"
    challenge = render_challenge("api", error)
    assert 'error="invalid_token"' in challenge
    assert "addresses" not in challenge  # the details stay in the audit log


def test_failures_are_tolerated_or_raised_as_the_policy_says(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lenient = UsagePolicy(max_uses_per_token=1)
    strict = UsagePolicy(max_uses_per_token=1, failure="deny")
    with caplog.at_level(logging.DEBUG, logger="bearerguard"):
        usage_failed(lenient, UsageMonitorError("redis usage monitor failed: boom"))
        usage_failed(lenient, UsageMonitorError("skipped", skipped=True))
        usage_failed(lenient, RuntimeError("a custom monitor broke"))
    prefix = "bearerguard: usage monitor failed, request not monitored: "
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, prefix + "redis usage monitor failed: boom"),
        (logging.DEBUG, prefix + "skipped"),
        (logging.WARNING, prefix + "RuntimeError: a custom monitor broke"),
    ]
    with pytest.raises(UsageMonitorError) as raised:
        usage_failed(strict, RuntimeError("broke"))
    assert raised.value.status == 503
    assert raised.value.reason == "usage_unavailable"
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_the_anomaly_audit_event() -> None:
    judged = verdict(
        action="revoke",
        breaches=(Breach("token", "addresses", 4, 3),),
        first=True,
        token_addresses=4,
        token_uses=9,
    )
    audit = AuditLog()
    request = RequestInfo("GET", "/items", "203.0.113.7", "r-1")
    with structlog.testing.capture_logs() as events:
        audit.anomaly(token(), request, judged)
        audit.anomaly(token(), request, verdict(action="log", breaches=judged.breaches))
    assert events[0] == {
        "event": "token.anomaly",
        "log_level": "warning",
        "outcome": "deny",
        "reason": "usage_anomaly",
        "status": 401,
        "action": "revoke",
        "breaches": [{"scope": "token", "measure": "addresses", "count": 4, "limit": 3}],
        "window_s": 60.0,
        "first": True,
        "token_uses": 9,
        "token_addresses": 4,
        "subject_uses": None,
        "subject_addresses": None,
        "method": "GET",
        "path": "/items",
        "client": "203.0.113.7",
        "request_id": "r-1",
        "sub": "alice",
        "client_id": None,
        "iss": ISS,
        "jti": "j1",
        "exp": START + 3600,
        "kid": None,
        "alg": "RS256",
        "scopes": [],
        "token_fp": "f",
    }
    assert (events[1]["outcome"], events[1]["action"], events[1]["status"]) == (
        "allow",
        "log",
        None,
    )


def test_the_module_imports_without_redis_and_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import bearerguard.usage as u\n"
        "assert u.MemoryUsageMonitor\n"
        "try:\n"
        "    u.RedisUsageMonitor\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert "bearerguard[redis]" in result.stdout


# -- the contract, over every monitor and both sides ----------------------------------------

Make = Callable[..., Any]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["async", "sync"])
def side(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_target(backend: str, request: pytest.FixtureRequest) -> tuple[str, str] | None:
    """The URL and a fresh namespace for the Redis backend; ``None`` for memory."""
    if backend == "memory":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url, request.getfixturevalue("redis_namespace")


@pytest.fixture
def redis_server_or_none(backend: str, request: pytest.FixtureRequest) -> RedisServer | None:
    """The Redis the backend under test counts in; ``None`` for memory."""
    if backend == "memory":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


@pytest.fixture
async def make(redis_target: tuple[str, str] | None) -> AsyncIterator[Make]:
    """Builds monitors of the backend under test, closed afterwards."""
    created: list[Any] = []

    def build(policy: UsagePolicy, clock: Clock, **options: Any) -> Any:
        if redis_target is None:
            monitor: Any = MemoryUsageMonitor(policy, clock=clock, **options)
        else:
            from bearerguard.usage import RedisUsageMonitor

            url, namespace = redis_target
            options.setdefault("namespace", namespace)
            monitor = RedisUsageMonitor(policy, url, clock=clock, **options)
        created.append(monitor)
        return monitor

    yield build
    for monitor in created:
        if hasattr(monitor, "aclose"):
            await monitor.aclose()


async def observe(monitor: Any, side: str, checked: AccessToken, client: str | None) -> Any:
    if side == "sync":
        return monitor.observe_sync(checked, client)
    return await monitor.observe(checked, client)


@pytest.mark.anyio
async def test_within_limits_nothing_is_flagged(make: Make, side: str) -> None:
    clock = Clock()
    policy = UsagePolicy(
        max_addresses_per_token=2,
        max_uses_per_token=10,
        max_addresses_per_subject=5,
        max_uses_per_subject=100,
    )
    monitor = make(policy, clock)
    assert isinstance(monitor, UsageMonitor)
    assert isinstance(monitor, SyncUsageMonitor)
    assert monitor.policy is policy
    for _ in range(3):
        found = await observe(monitor, side, token(), "203.0.113.7")
    assert not found.exceeded
    assert consequence(found) == "allow"
    assert (found.token_uses, found.token_addresses) == (3, 1)
    assert (found.subject_uses, found.subject_addresses) == (3, 1)
    assert (found.window, found.action, found.first, found.revocable) == (60.0, "log", False, True)


@pytest.mark.anyio
async def test_a_token_used_from_too_many_addresses(make: Make, side: str) -> None:
    clock = Clock()
    monitor = make(UsagePolicy(max_addresses_per_token=2, action="revoke"), clock)
    first = await observe(monitor, side, token(), "203.0.113.1")
    second = await observe(monitor, side, token(), "198.51.100.2")
    again = await observe(monitor, side, token(), "203.0.113.1")  # a known address
    assert not any(v.exceeded for v in (first, second, again))
    third = await observe(monitor, side, token(), "192.0.2.3")
    assert third.breaches == (Breach("token", "addresses", 3, 2),)
    assert third.first
    assert consequence(third) == "revoke"
    assert (third.token_uses, third.subject_uses, third.subject_addresses) == (4, None, None)
    # Still exceeded on the next use, but reported once per window.
    fourth = await observe(monitor, side, token(), "203.0.113.1")
    assert fourth.exceeded
    assert not fourth.first
    # Another token is counted on its own.
    other = await observe(monitor, side, token(jti="j2"), "192.0.2.99")
    assert not other.exceeded
    assert other.token_addresses == 1


@pytest.mark.anyio
async def test_a_token_used_too_often(make: Make, side: str) -> None:
    clock = Clock()
    monitor = make(UsagePolicy(max_uses_per_token=3, action="reject"), clock)
    found = [await observe(monitor, side, token(), None) for _ in range(5)]
    assert [v.exceeded for v in found] == [False, False, False, True, True]
    assert [v.first for v in found] == [False, False, False, True, False]
    assert found[3].breaches == (Breach("token", "uses", 4, 3),)
    assert found[4].token_addresses is None  # no address limit: addresses are not counted
    assert consequence(found[3]) == "reject"


@pytest.mark.anyio
async def test_a_subject_is_counted_across_its_tokens(make: Make, side: str) -> None:
    clock = Clock()
    policy = UsagePolicy(max_addresses_per_subject=2, max_uses_per_subject=4)
    monitor = make(policy, clock)
    seen = [
        await observe(monitor, side, token(jti=f"t{i}"), f"203.0.113.{i % 3}") for i in range(3)
    ]
    assert [v.subject_addresses for v in seen] == [1, 2, 3]
    assert seen[2].breaches == (Breach("subject", "addresses", 3, 2),)
    assert seen[2].token_uses is None  # no token limit: tokens are not tracked
    assert (await observe(monitor, side, token(jti="t9", sub="bob"), "192.0.2.1")).subject_uses == 1
    # Both limits at once; the first was already reported in this window.
    for _ in range(2):
        last = await observe(monitor, side, token(jti="t4"), "203.0.113.0")
    assert last.breaches == (
        Breach("subject", "addresses", 3, 2),
        Breach("subject", "uses", 5, 4),
    )
    assert not last.first


@pytest.mark.anyio
async def test_issuers_and_missing_claims_keep_counts_apart(make: Make, side: str) -> None:
    clock = Clock()
    monitor = make(UsagePolicy(max_uses_per_token=1, max_uses_per_subject=1), clock)
    assert not (await observe(monitor, side, token(), None)).exceeded
    other = await observe(monitor, side, token(iss="https://other.example"), None)
    assert not other.exceeded
    no_claims = await observe(monitor, side, token(jti=None, sub=None), "192.0.2.1")
    assert (no_claims.token_uses, no_claims.subject_uses, no_claims.revocable) == (
        None,
        None,
        False,
    )
    anonymous = await observe(monitor, side, token(jti=None), None)
    assert anonymous.breaches == (Breach("subject", "uses", 2, 1),)
    assert consequence(anonymous) == "log"


@pytest.mark.anyio
async def test_an_opaque_token_without_jti_is_counted_by_its_fingerprint(
    make: Make,
    side: str,
    redis_target: tuple[str, str] | None,
    redis_server_or_none: RedisServer | None,
    session_issuer: DevIssuer,
) -> None:
    # An opaque token has no other encoding (unlike a JWS), so a hash of it names it.
    with IntrospectionServer() as server:
        server.activate("opaque-kim", sub="kim")
        server.activate("opaque-lee", sub="lee")
        guard = session_issuer.guard(audience=AUDIENCE, introspection=server.introspector())
        kim, lee = (guard.authenticate_sync(raw) for raw in ("opaque-kim", "opaque-lee"))
    assert kim.token_id is None
    assert [t.name for t in targets(kim, UsagePolicy(max_uses_per_token=1))] == [
        f"fp:{kim.fingerprint}"
    ]
    monitor = make(UsagePolicy(max_addresses_per_token=1, action="revoke"), Clock())
    assert not (await observe(monitor, side, kim, "203.0.113.1")).exceeded
    assert (await observe(monitor, side, lee, "198.51.100.2")).token_addresses == 1
    second = await observe(monitor, side, kim, "192.0.2.3")
    assert second.breaches == (Breach("token", "addresses", 2, 1),)
    assert second.first
    assert consequence(second) == "reject"  # no jti: it cannot be revoked
    if redis_target is not None:
        assert redis_server_or_none is not None
        inspect = redis_server_or_none.client()
        try:
            keys = list(inspect.scan_iter(match=f"{redis_target[1]}:*"))
        finally:
            inspect.close()
        assert any(key.endswith(f":fp%3A{kim.fingerprint}") for key in keys), keys
        assert not any("opaque" in key for key in keys)  # never the token itself


@pytest.mark.anyio
async def test_windows_roll_over(make: Make, side: str) -> None:
    clock = Clock()
    policy = UsagePolicy(max_addresses_per_token=2, max_uses_per_token=10, action="reject")
    monitor = make(policy, clock)
    for i in range(8):
        await observe(monitor, side, token(), f"203.0.113.{i % 2}")
    # The next window, just begun: the previous one still counts almost in full.
    clock.advance(WINDOW + 1)  # 1/60 of the way in: the previous window weighs 984/1000
    found = await observe(monitor, side, token(), "203.0.113.0")
    assert (found.token_uses, found.token_addresses) == (1 + 8 * 984 // 1000, 2)
    found = await observe(monitor, side, token(), "203.0.113.5")
    # Two uses less than a window apart, from a third address: seen across the boundary.
    assert found.breaches == (Breach("token", "addresses", 3, 2),)
    assert found.first
    # Late in the window the previous one hardly counts; addresses still union both.
    clock.advance(WINDOW - 2)
    found = await observe(monitor, side, token(), "203.0.113.0")
    assert found.token_uses == 3 + 8 * 17 // 1000
    assert found.token_addresses == 3
    # A window later the first one is forgotten, and a new breach is reported again.
    clock.advance(2)
    found = await observe(monitor, side, token(), "192.0.2.1")
    # 3 uses in the previous window, weighing 984/1000; addresses 203.0.113.{0,5}, 192.0.2.1
    assert (found.token_uses, found.token_addresses) == (1 + 3 * 984 // 1000, 3)
    assert found.first
    # After two idle windows nothing is left.
    clock.advance(2 * WINDOW)
    found = await observe(monitor, side, token(), "192.0.2.1")
    assert (found.token_uses, found.token_addresses, found.exceeded) == (1, 1, False)


@pytest.mark.anyio
async def test_uses_without_an_address_are_counted(make: Make, side: str) -> None:
    clock = Clock()
    monitor = make(UsagePolicy(max_addresses_per_token=1, max_uses_per_token=2), clock)
    await observe(monitor, side, token(), None)
    found = await observe(monitor, side, token(), "")
    assert (found.token_uses, found.token_addresses) == (2, 0)
    found = await observe(monitor, side, token(), "203.0.113.9")
    assert (found.token_uses, found.token_addresses) == (3, 1)
    assert found.breaches == (Breach("token", "uses", 3, 2),)


@pytest.mark.anyio
async def test_one_client_through_a_proxy_that_forwards_ports(make: Make, side: str) -> None:
    """Each connection of one client has its own port: one address, however many."""
    monitor = make(UsagePolicy(max_addresses_per_token=1), Clock())
    for address in ("203.0.113.7:50001", "203.0.113.7:50002", "203.0.113.7"):
        found = await observe(monitor, side, token(), address)
    assert (found.token_addresses, found.exceeded) == (1, False)
    found = await observe(monitor, side, token(), "198.51.100.2:50001")
    assert (found.token_addresses, found.exceeded) == (2, True)


@pytest.mark.anyio
async def test_odd_addresses_and_names_are_counted_without_failing(make: Make, side: str) -> None:
    """A client address or a claim Redis cannot take as UTF-8 text (a lone surrogate), or
    inet_pton refuses with ValueError (a NUL), is counted like any other: a failure here let
    the request in unmonitored, and with Redis skipped everyone's for ``failure_cooldown``."""
    policy = UsagePolicy(max_addresses_per_token=1, max_addresses_per_subject=5, ipv4_prefix=24)
    monitor = make(policy, Clock())
    odd = token(jti="j\ud800", sub="al\udcffice")
    for address in ("198.51.100.1\x00", "\ud800:80", "\ud800"):
        found = await observe(monitor, side, odd, address)
    assert (found.token_addresses, found.subject_addresses, found.exceeded) == (3, 3, True)
    found = await observe(monitor, side, token(), "192.0.2.1")  # nothing skipped
    assert (found.token_addresses, found.exceeded) == (1, False)
    assert (await observe(monitor, side, token(jti="j\udcff"), None)).token_uses == 1


@pytest.mark.anyio
async def test_ipv6_temporary_addresses_of_one_network_count_once(make: Make, side: str) -> None:
    clock = Clock()
    monitor = make(UsagePolicy(max_addresses_per_token=1), clock)
    for address in ("2001:db8:0:1::1", "2001:db8:0:1::abcd:1", "2001:db8:0:1:ffff:ffff:ffff:fe"):
        found = await observe(monitor, side, token(), address)
    assert (found.token_addresses, found.exceeded) == (1, False)
    found = await observe(monitor, side, token(), "2001:db8:0:2::1")
    assert found.token_addresses == 2


@pytest.mark.anyio
async def test_ipv4_clients_behind_nat64_count_apart(make: Make, side: str) -> None:
    # Through a translator (NAT64, SIIT-DC) every IPv4 client appears in 64:ff9b::/96; a
    # limit on addresses must not see two IPv4 clients as one /64.
    clock = Clock()
    monitor = make(UsagePolicy(max_addresses_per_token=1), clock)
    found = await observe(monitor, side, token(), "64:ff9b::198.51.100.1")
    assert (found.token_addresses, found.exceeded) == (1, False)
    found = await observe(monitor, side, token(), "64:ff9b::198.51.100.2")
    assert (found.token_addresses, found.exceeded) == (2, True)
    found = await observe(monitor, side, token(), "::ffff:198.51.100.2")  # the same client
    assert found.token_addresses == 2


@pytest.mark.anyio
async def test_both_backends_judge_a_sequence_alike(make: Make, backend: str) -> None:
    """The memory monitor and the Redis script apply the same rules, observation by
    observation (the Lua arithmetic is checked against the Python core here)."""
    policy = UsagePolicy(
        max_addresses_per_token=2,
        max_uses_per_token=6,
        max_addresses_per_subject=3,
        max_uses_per_subject=9,
        action="revoke",
    )
    steps = [(0.0, "j1", "a"), (5, "j1", "b"), (1, "j2", "c"), (3, "j1", "a"), (20, "j1", "c")]
    steps += [(7, "j2", "d"), (31, "j1", "a"), (2, "j3", None), (17, "j1", "e"), (44, "j2", "a")]
    steps += [(60, "j1", "b"), (3, "j1", "b"), (1, "j1", "b"), (90, "j1", "f"), (1, "j3", "g")]

    async def run(build: Callable[[Clock], Any]) -> list[UsageVerdict]:
        clock = Clock(START + 12.5)
        monitor = build(clock)
        found = []
        for delay, jti, client in steps:
            clock.advance(delay)
            address = client and f"10.0.0.{ord(client)}"
            found.append(await monitor.observe(token(jti=jti), address))
        return found

    judged = await run(lambda clock: make(policy, clock))
    reference = await run(lambda clock: MemoryUsageMonitor(policy, clock=clock))
    assert judged == reference, backend
    assert any(v.first for v in judged)
    assert any(v.exceeded and not v.first for v in judged)


# -- memory only ----------------------------------------------------------------------------


def test_memory_is_bounded_by_keys_and_addresses() -> None:
    clock = Clock()
    policy = UsagePolicy(max_addresses_per_token=3, max_uses_per_subject=100)
    monitor = MemoryUsageMonitor(policy, max_keys=3, max_addresses_tracked=5, clock=clock)
    for i in range(4):
        monitor.observe_sync(token(jti=f"t{i}", sub=f"s{i}"), "192.0.2.1")
    assert len(monitor) == 3  # the least recently used keys were forgotten
    for i in range(40):
        found = monitor.observe_sync(token(jti="big"), f"192.0.2.{i}")
    assert found.token_addresses == 5  # reported at the cap
    assert found.breaches == (Breach("token", "addresses", 5, 3),)
    assert "MemoryUsageMonitor" in repr(monitor)
    with pytest.raises(ConfigurationError, match="max_addresses_tracked"):
        MemoryUsageMonitor(policy, max_addresses_tracked=3)
    with pytest.raises(ConfigurationError):
        MemoryUsageMonitor(policy, max_keys=0)
    with pytest.raises(ConfigurationError):
        MemoryUsageMonitor({"max_uses_per_token": 1})  # type: ignore[arg-type]


def test_memory_counts_exactly_under_threads() -> None:
    monitor = MemoryUsageMonitor(UsagePolicy(max_uses_per_token=10_000), clock=Clock())

    def work() -> None:
        for _ in range(500):
            monitor.observe_sync(token(), "192.0.2.1")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert monitor.observe_sync(token(), None).token_uses == 4001


def test_a_clock_stepping_back_stays_in_the_current_window() -> None:
    clock = Clock(START + 70)
    monitor = MemoryUsageMonitor(UsagePolicy(max_uses_per_token=5), clock=clock)
    monitor.observe_sync(token(), None)
    clock.advance(-30)  # into the previous window
    assert monitor.observe_sync(token(), None).token_uses == 2


# -- Redis only -----------------------------------------------------------------------------


@pytest.fixture
def redis_monitor_class() -> Any:
    pytest.importorskip("redis")
    from bearerguard.usage import RedisUsageMonitor

    return RedisUsageMonitor


@pytest.mark.anyio
async def test_two_instances_count_together(
    redis_server: RedisServer, redis_namespace: str, redis_monitor_class: Any
) -> None:
    policy = UsagePolicy(max_addresses_per_token=2, max_uses_per_subject=7)
    clock = Clock()
    a = redis_monitor_class(policy, redis_server.url, namespace=redis_namespace, clock=clock)
    b = redis_monitor_class(policy, redis_server.url, namespace=redis_namespace, clock=clock)
    try:
        found = [
            await a.observe(token(), "203.0.113.1"),
            b.observe_sync(token(), "203.0.113.2"),
            await b.observe(token(), "203.0.113.1"),
            a.observe_sync(token(), "203.0.113.3"),  # a third address, through a
            await b.observe(token(), "203.0.113.4"),
        ]
        assert [v.token_addresses for v in found] == [1, 2, 2, 3, 4]
        assert [v.subject_uses for v in found] == [1, 2, 3, 4, 5]
        assert [v.first for v in found] == [False, False, False, True, False]  # once, in all
        # Another namespace counts apart.
        c = redis_monitor_class(policy, redis_server.url, namespace=redis_namespace + "-other")
        try:
            assert (await c.observe(token(), "203.0.113.9")).token_addresses == 1
        finally:
            await c.aclose()
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.anyio
async def test_only_a_sync_client_still_observes_from_async_code(
    redis_server: RedisServer, redis_namespace: str, redis_monitor_class: Any
) -> None:
    """Built for WSGI with client= alone, the monitor under ASGI must still count (in a worker
    thread), not fail every observation and let each request through unmonitored."""
    import redis

    policy = UsagePolicy(max_addresses_per_token=1)
    sync_client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    monitor = redis_monitor_class(policy, client=sync_client, namespace=redis_namespace)
    try:
        assert (await monitor.observe(token(), "203.0.113.1")).token_addresses == 1
        verdict = await monitor.observe(token(), "203.0.113.2")
        assert verdict.exceeded
        assert verdict.first
    finally:
        monitor.close()
        sync_client.close()


def calls(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


@pytest.mark.anyio
async def test_a_burst_larger_than_the_pool_waits_in_turn(
    redis_server: RedisServer, redis_namespace: str, redis_monitor_class: Any
) -> None:
    policy = UsagePolicy(max_uses_per_token=1_000)
    # A fixed clock: on a busy machine the burst could straddle the end of a window, which
    # starts the count again (300 == 301 seen once).
    monitor = redis_monitor_class(
        policy,
        redis_server.url,
        namespace=redis_namespace,
        max_connections=4,
        socket_timeout=2,
        clock=Clock(),
    )
    try:
        async with anyio.create_task_group() as group:
            for _ in range(300):
                group.start_soon(monitor.observe, token(), None)
        assert (await monitor.observe(token(), None)).token_uses == 301
    finally:
        await monitor.aclose()


@pytest.mark.anyio
async def test_the_readiness_ping_waits_its_turn_for_a_connection(
    redis_server: RedisServer, redis_namespace: str, redis_monitor_class: Any
) -> None:
    # The ping took a connection without its turn: an observation holding a slot then
    # waited in redis-py's pool, which is not first come, first served, and could time out
    # into the failure cooldown. It now queues as observations do; a saturated monitor is
    # not ready.
    monitor = redis_monitor_class(
        UsagePolicy(max_uses_per_token=10),
        redis_server.url,
        namespace=redis_namespace,
        max_connections=1,
        socket_timeout=0.5,
    )
    try:
        assert (await monitor.health())["healthy"] is True
        _, slots = monitor._async_client()
        await slots.acquire()  # as an observation under way holds it
        answered: list[bool] = []

        async def ready() -> None:
            answered.append((await monitor.health())["healthy"])

        async with anyio.create_task_group() as group:
            group.start_soon(ready)
            await anyio.sleep(0.2)
            assert answered == []  # waiting its turn
            slots.release()
        assert answered == [True]
        await slots.acquire()
        assert (await monitor.health())["healthy"] is False  # no connection within the timeout
        slots.release()
        assert (await monitor.health())["healthy"] is True
    finally:
        await monitor.aclose()


@pytest.mark.anyio
async def test_one_round_trip_and_keys_that_expire(
    private_redis: RedisServer, redis_monitor_class: Any
) -> None:
    policy = UsagePolicy(window=10, max_addresses_per_token=1, max_uses_per_subject=100)
    clock = Clock()
    monitor = redis_monitor_class(policy, private_redis.url, namespace="api", clock=clock)
    inspect = private_redis.client()
    try:
        await monitor.observe(token(), "203.0.113.1")  # loads the script
        before = calls(inspect)
        for i in range(10):
            await monitor.observe(token(jti=f"t{i}"), "203.0.113.1")
        monitor.observe_sync(token(jti=None, sub=None), "192.0.2.1")  # nothing to count
        after = calls(inspect).items()
        sent = {name: n - before.get(name, 0) for name, n in after if n != before.get(name)}
        assert sent.pop("evalsha") == 10  # one round trip each; the rest ran in the script
        assert set(sent) <= {"info", "incr", "get", "pfadd", "pfcount", "pexpire", "set"}, sent
        keys = sorted(inspect.scan_iter(match="*"))
        marks = [key for key in keys if key.startswith("api:use:10000:o:")]
        assert len(marks) == 11  # one per observation, for its retry
        assert all(0 < inspect.pttl(mark) <= 2_000 for mark in marks)  # briefly
        keys = [key for key in keys if key not in marks]
        assert keys
        index = int(START // 10)
        assert all(key.startswith(f"api:use:10000:{index}:") for key in keys), keys
        assert f"api:use:10000:{index}:tn:https%3A//issuer.example:j1" in keys
        assert f"api:use:10000:{index}:sa:https%3A//issuer.example:alice" not in keys
        for key in keys:
            assert 0 < inspect.pttl(key) <= (2 * 10 + 5) * 1000
        monitor.observe_sync(token(), "203.0.113.2")  # a breach sets the marker
        marker = f"api:use:10000:{index}:tr:https%3A//issuer.example:j1"
        assert inspect.get(marker) == "1"
        assert 0 < inspect.pttl(marker) <= 25_000
    finally:
        inspect.close()
        await monitor.aclose()


@pytest.mark.anyio
async def test_an_observation_retried_after_its_answer_was_lost_counts_once(
    cutting_proxy: CuttingProxy, redis_namespace: str, redis_monitor_class: Any, side: str
) -> None:
    # A connection dropped after Redis ran the script, before its answer arrived, was
    # retried on a new connection: the use was counted twice, and a token was refused for
    # uses it never made. The retry now finds the first run's mark and counts nothing more.
    monitor = redis_monitor_class(
        UsagePolicy(max_uses_per_token=1),
        cutting_proxy.url,
        namespace=redis_namespace,
        clock=Clock(),
        socket_timeout=2,
    )
    try:
        assert (await observe(monitor, side, token(), None)).token_uses == 1
        cutting_proxy.cut(b"EVALSHA", answered=True)
        found = await observe(monitor, side, token(), None)
        assert cutting_proxy.cuts == 1
        assert (found.token_uses, found.exceeded, found.first) == (2, True, True)
        found = await observe(monitor, side, token(), None)
        assert (found.token_uses, found.first) == (3, False)
    finally:
        await monitor.aclose()


def test_a_sync_burst_larger_than_the_pool_is_not_taken_for_redis_down(
    cutting_proxy: CuttingProxy, redis_namespace: str, redis_monitor_class: Any
) -> None:
    # WSGI threads queueing for the synchronous side's connections (Redis answering, only
    # slowly) timed out in redis-py's pool as "No connection available", which started the
    # failure cooldown: every request was then let in unmonitored, though Redis was up. An
    # observation that gets no connection in time now fails alone ("busy"), as on the
    # asynchronous side.
    monitor = redis_monitor_class(
        UsagePolicy(max_uses_per_token=1_000),
        cutting_proxy.url,
        namespace=redis_namespace,
        clock=Clock(),
        max_connections=1,
        socket_timeout=0.5,
        failure_cooldown=60,
    )
    try:
        monitor.observe_sync(token(), None)  # connected, the script loaded
        cutting_proxy.slow(b"EVALSHA", 0.15)
        failures: list[UsageMonitorError] = []

        def observe_in_thread() -> None:
            try:
                monitor.observe_sync(token(), None)
            except UsageMonitorError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=observe_in_thread) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures  # 0.15 s each, one at a time: the last ones wait beyond 0.5 s
        assert all("busy" in str(exc) and not exc.skipped for exc in failures), failures
        cutting_proxy.slow(b"EVALSHA", 0)
        counted = 1 + 6 - len(failures)
        assert monitor.observe_sync(token(), None).token_uses == counted + 1  # not skipped
        assert monitor.health_sync()["healthy"] is True
    finally:
        monitor.close()


@pytest.mark.anyio
async def test_closing_during_an_observation_leaves_no_connection_open(
    cutting_proxy: CuttingProxy,
    redis_server: RedisServer,
    redis_namespace: str,
    redis_monitor_class: Any,
    side: str,
) -> None:
    # close() cut the connection of an observation under way, which then retried on a new
    # one: that connection, made after the close, stayed open in the closed pool.
    name = f"usage-{redis_namespace}"
    monitor = redis_monitor_class(
        UsagePolicy(max_uses_per_token=50),
        cutting_proxy.url,
        namespace=redis_namespace,
        socket_timeout=2,
    )
    monitor._clients.options["client_name"] = name  # to find its connections
    admin = redis_server.client()

    def connected() -> int:
        return sum(client["name"] == name for client in admin.client_list())

    def closed() -> bool:  # Redis notices a closed connection a moment later
        deadline = time.monotonic() + 5
        while connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        return connected() == 0

    try:
        await observe(monitor, side, token(), None)
        cutting_proxy.slow(b"EVALSHA", 0.3)
        outcome: list[object] = []

        def in_thread() -> None:
            try:
                outcome.append(monitor.observe_sync(token(), None))
            except UsageMonitorError as exc:
                outcome.append(exc)

        async def in_task() -> None:
            try:
                outcome.append(await monitor.observe(token(), None))
            except UsageMonitorError as exc:
                outcome.append(exc)

        if side == "sync":
            thread = threading.Thread(target=in_thread)
            thread.start()
            await anyio.sleep(0.1)
            monitor.close()
            await anyio.to_thread.run_sync(thread.join)
        else:
            async with anyio.create_task_group() as group:
                group.start_soon(in_task)
                await anyio.sleep(0.1)
                await monitor.aclose()
        assert len(outcome) == 1
        cutting_proxy.slow(b"EVALSHA", 0)
        assert await anyio.to_thread.run_sync(closed)
    finally:
        await monitor.aclose()
        admin.close()


@pytest.mark.anyio
async def test_an_unreachable_redis_raises_fast_then_skips(
    private_redis: RedisServer, redis_monitor_class: Any
) -> None:
    policy = UsagePolicy(max_uses_per_token=5)
    # The calls below must fall within the cooldown: 2 s, for a process kept off its core.
    monitor = redis_monitor_class(policy, private_redis.url, failure_cooldown=2.0)
    try:
        assert (await monitor.observe(token(), None)).token_uses == 1
        private_redis.stop()
        for observe_on in ("async", "sync"):
            with pytest.raises(UsageMonitorError) as raised:
                await observe(monitor, observe_on, token(), None)
            assert raised.value.skipped is (observe_on == "sync")
            assert raised.value.status == 503
        with pytest.raises(UsageMonitorError) as raised:
            await monitor.observe(token(), None)
        assert raised.value.skipped  # Redis is not asked
        private_redis.start()
        await anyio.sleep(2.05)  # past the cooldown
        assert (await monitor.observe(token(), None)).token_uses == 1  # a new, empty Redis
        assert monitor.observe_sync(token(), None).token_uses == 2
    finally:
        await monitor.aclose()
    with pytest.raises(UsageMonitorError, match="closed"):
        monitor.observe_sync(token(), None)


@pytest.mark.anyio
async def test_a_paused_redis_costs_at_most_the_socket_timeout(
    private_redis: RedisServer, redis_monitor_class: Any
) -> None:
    # 0.5 s, not less: the first call connects, and a busy machine may take 0.1 s for it.
    monitor = redis_monitor_class(
        UsagePolicy(max_uses_per_token=5), private_redis.url, socket_timeout=0.5
    )
    try:
        monitor.observe_sync(token(), None)
        private_redis.pause()
        started = time.perf_counter()
        with pytest.raises(UsageMonitorError, match="Timeout"):
            monitor.observe_sync(token(), None)
        assert time.perf_counter() - started < 10  # a hang detector, not a timing assertion
    finally:
        private_redis.resume()
        await monitor.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("connection", ["new", "retried"])
async def test_a_slow_redis_costs_an_observation_one_socket_timeout_in_all(
    cutting_proxy: CuttingProxy,
    redis_namespace: str,
    redis_monitor_class: Any,
    side: str,
    connection: str,
) -> None:
    # Each wait for Redis had a socket_timeout of its own, not the observation: a new
    # connection's handshake (CLIENT SETNAME, two CLIENT SETINFO) and the script, each
    # answered within it, added up to several (a request waited 1.5 to 2 s here); a retry
    # after a dropped connection made a new one, as slowly. The observation now fails once
    # socket_timeout has passed in all: here, within the third answer of 0.2 s or more.
    monitor = redis_monitor_class(
        UsagePolicy(max_uses_per_token=100),
        cutting_proxy.url,
        namespace=redis_namespace,
        socket_timeout=0.5,
        failure_cooldown=60,
        clock=Clock(),
    )
    try:
        if connection == "retried":
            await observe(monitor, side, token(), None)  # connected, the script loaded
            cutting_proxy.cut(b"EVALSHA")  # dropped at once: retried on a new connection
        cutting_proxy.slow(b"*", 0.2)  # every command, each answered well within 0.5 s
        with pytest.raises(UsageMonitorError, match="Timeout") as raised:
            await observe(monitor, side, token(), None)
        assert not raised.value.skipped
        cutting_proxy.slow(b"*", 0)
        with pytest.raises(UsageMonitorError) as raised:  # a failure of Redis: the cooldown
            await observe(monitor, side, token(), None)
        assert raised.value.skipped
    finally:
        await monitor.aclose()


@pytest.mark.anyio
async def test_waiting_for_a_turn_comes_out_of_the_same_socket_timeout(
    cutting_proxy: CuttingProxy, redis_namespace: str, redis_monitor_class: Any, side: str
) -> None:
    # The wait for a free connection and the call had a socket_timeout each: a request could
    # wait twice it. They share one now; a call left too little of it fails as busy (handled
    # as the policy's failure mode says), without the cooldown: the monitor is busy, Redis
    # is not down.
    monitor = redis_monitor_class(
        UsagePolicy(max_uses_per_token=100),
        cutting_proxy.url,
        namespace=redis_namespace,
        max_connections=1,
        socket_timeout=0.5,
        failure_cooldown=60,
        clock=Clock(),
    )
    outcome: list[object] = []

    async def observe_in_turn() -> None:
        try:
            if side == "sync":
                outcome.append(await anyio.to_thread.run_sync(monitor.observe_sync, token(), None))
            else:
                outcome.append(await monitor.observe(token(), None))
        except UsageMonitorError as exc:
            outcome.append(exc)

    try:
        assert (await observe(monitor, side, token(), None)).token_uses == 1
        cutting_proxy.slow(b"EVALSHA", 0.3)
        if side == "sync":
            turns = monitor._turns
            turns.acquire()  # as an observation under way holds it
            release = turns.release
        else:
            _, slots = monitor._async_client()
            await slots.acquire()
            release = slots.release
        async with anyio.create_task_group() as group:
            group.start_soon(observe_in_turn)
            await anyio.sleep(0.3)  # at least: 0.3 s waited, 0.3 s more for the answer
            release()
        [failure] = outcome
        assert isinstance(failure, UsageMonitorError)
        assert "busy" in str(failure)
        assert not failure.skipped
        cutting_proxy.slow(b"EVALSHA", 0)
        assert (await observe(monitor, side, token(), None)).token_uses >= 2  # no cooldown
    finally:
        await monitor.aclose()


@pytest.mark.anyio
async def test_existing_clients_with_decoded_responses(
    redis_server: RedisServer, redis_namespace: str, redis_monitor_class: Any
) -> None:
    import redis
    import redis.asyncio as aredis

    sync_client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=1)
    async_client = aredis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=1)
    monitor = redis_monitor_class(
        UsagePolicy(max_addresses_per_token=1),
        client=sync_client,
        async_client=async_client,
        namespace=redis_namespace,
    )
    try:
        monitor.observe_sync(token(), "192.0.2.1")
        found = await monitor.observe(token(), "192.0.2.2")
        assert found.breaches == (Breach("token", "addresses", 2, 1),)
        await monitor.aclose()
        assert sync_client.ping()  # not ours: left open
    finally:
        sync_client.close()
        await async_client.aclose()


def test_redis_construction_does_not_connect_and_checks_options(
    redis_monitor_class: Any,
) -> None:
    import redis

    policy = UsagePolicy(max_uses_per_token=5)
    monitor = redis_monitor_class(policy, "redis://redis.invalid:6379/0", namespace="api")
    assert "api" in repr(monitor)
    monitor.close()
    for options in (
        {"url": "http://h/0"},
        {"url": "redis://h/0", "client": redis.Redis()},
        {"namespace": ""},
        {"socket_timeout": 0},
        {"socket_timeout": float("nan")},
        {"failure_cooldown": float("nan")},
        {"max_connections": 0},
    ):
        with pytest.raises(ConfigurationError):
            redis_monitor_class(policy, **options)
    with pytest.raises(ConfigurationError):
        redis_monitor_class({"max_uses_per_token": 5})


def test_redis_usage_keys_encode_the_separator_as_the_deployment_page_says() -> None:
    from bearerguard._usage_redis import _part

    assert _part("https://id.example:8443/") == "https%3A//id.example%3A8443/"
    assert _part("50%") == "50%25"
    page = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
    text = " ".join(page.split())
    assert "the `sub` as they are" not in text
    assert "with `%` and `:` percent-encoded" in text
