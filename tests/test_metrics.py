"""Metrics through the real middlewares, the Prometheus exporter, and the readiness check."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.testclient import TestClient

from bearerguard import AccessToken, BearerGuard
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.errors import ConfigurationError, KeySetUnavailableError
from bearerguard.issuers import TrustedIssuers
from bearerguard.metrics import (
    _LABELS,
    CACHE,
    DECISION_SECONDS,
    DECISIONS,
    JWKS_FETCHES,
    JWKS_LAST_SUCCESS,
    REVOCATION_FAILURES,
    InMemoryMetrics,
    PrometheusMetrics,
    hook_failures,
)
from bearerguard.readiness import ReadinessEndpoint, readiness, readiness_wsgi
from bearerguard.revocation import IntrospectionRevocationStore
from bearerguard.testing import DevIssuer, Override
from tests.apps import build_app, build_flask_app
from tests.helpers import Clock, until
from tests.redis_server import RedisServer
from tests.test_introspection import AUDIENCE, Fault, IntrospectionServer


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_every_decision_is_counted_whatever_the_sampling(stack: str, issuer: DevIssuer) -> None:
    metrics = InMemoryMetrics()
    guard = issuer.guard(metrics=metrics, audit_sample_accepted=0.0)
    token = issuer.mint(scopes=["items:read"])
    if stack == "asgi":
        client: httpx.Client = TestClient(build_app(guard))
    else:
        client = httpx.Client(
            transport=httpx.WSGITransport(app=build_flask_app(guard)), base_url="http://t"
        )
    with client:
        for _ in range(3):
            assert client.get("/items", headers=bearer(token)).status_code == 200
        assert client.get("/items").status_code == 401
        assert client.get("/items", headers=bearer(issuer.mint_expired())).status_code == 401
        assert client.post("/items", headers=bearer(token)).status_code == 403
    assert metrics.count(DECISIONS, event="token.accepted", reason="ok") == 4
    assert metrics.count(DECISIONS, event="token.rejected", reason="missing_token") == 1
    assert metrics.count(DECISIONS, event="token.rejected", reason="expired") == 1
    assert metrics.count(DECISIONS, event="scope.denied", reason="insufficient_scope") == 1
    assert metrics.count(CACHE, result="miss") == 2  # the token, then the expired one
    assert metrics.count(CACHE, result="hit") == 3
    assert metrics.count(JWKS_FETCHES, result="ok") == 1
    (latency,) = [
        h
        for h in metrics.snapshot()["histograms"]
        if h["name"] == DECISION_SECONDS and h["labels"] == {"event": "token.accepted"}
    ]
    assert latency["count"] == 4
    assert sum(latency["buckets"].values()) == 4


class BrokenStore:
    name = "broken"

    async def is_revoked(self, token: AccessToken) -> bool:
        raise ConnectionError("down")


def test_fetch_and_store_failures_are_counted(issuer: DevIssuer) -> None:
    metrics = InMemoryMetrics()
    issuer.overrides["/jwks.json"] = Override(status=500)
    guard = issuer.guard(metrics=metrics)
    with TestClient(build_app(guard)) as client:
        assert client.get("/me", headers=bearer(issuer.mint())).status_code == 503
    assert metrics.count(JWKS_FETCHES, result="error") == 1
    issuer.overrides.clear()
    failing = issuer.guard(metrics=metrics, revocation=BrokenStore())
    with TestClient(build_app(failing)) as client:
        assert client.get("/me", headers=bearer(issuer.mint())).status_code == 503
    assert metrics.count(REVOCATION_FAILURES, store="broken") == 1
    assert metrics.count(DECISIONS, event="auth.unavailable", reason="revocation_unavailable") == 1


class FailingHook:
    """A metrics hook whose backend is down: every call raises."""

    def increment(self, name: str, labels: dict[str, str]) -> None:
        raise ConnectionError("statsd down")

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        raise ConnectionError("statsd down")


class BrokenSyncStore(BrokenStore):
    def is_revoked_sync(self, token: AccessToken) -> bool:
        raise ConnectionError("down")


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_a_failing_hook_changes_no_decision(
    stack: str, issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every decision stands, never a 500: the hook is the application's, as its logger is."""
    token = bearer(issuer.mint(scopes=["items:read"]))
    guard = issuer.guard(metrics=FailingHook())
    # A store that fails, with a policy that lets the request through all the same.
    failing_open = issuer.guard(
        metrics=FailingHook(), revocation=BrokenSyncStore(), revocation_failure="allow"
    )
    answers = []
    for guarded in (guard, failing_open):
        if stack == "asgi":
            client: httpx.Client = TestClient(build_app(guarded), raise_server_exceptions=False)
        else:
            app = build_flask_app(guarded)
            transport = httpx.WSGITransport(app=app, raise_app_exceptions=False)
            client = httpx.Client(transport=transport, base_url="http://t")
        with client:
            answers += [
                client.get("/items", headers=token).status_code,  # a miss, then a cache hit
                client.get("/items", headers=token).status_code,
                client.get("/items").status_code,
                client.get("/items", headers=bearer(issuer.mint_expired())).status_code,
                client.post("/items", headers=token).status_code,
            ]
    assert answers == [200, 200, 401, 401, 403] * 2
    assert "the metrics hook failed" in caplog.text


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_a_hook_that_stays_down_is_reported_once_then_counted(
    issuer: DevIssuer, caplog: pytest.LogCaptureFixture, stack: str
) -> None:
    # Each request records two figures or more: a traceback for each would flood the error
    # log while the metrics backend is down. The first is logged in full, later ones only
    # counted (a line a minute at most); a second hook's failure is its own, in full.
    token = bearer(issuer.mint(scopes=["items:read"]))
    statuses = []
    with caplog.at_level(logging.WARNING, "bearerguard"):
        for _ in range(2):
            guard = issuer.guard(metrics=FailingHook())
            if stack == "asgi":
                client: httpx.Client = TestClient(build_app(guard))
            else:
                transport = httpx.WSGITransport(app=build_flask_app(guard))
                client = httpx.Client(transport=transport, base_url="http://t")
            with client:
                statuses += [client.get("/items", headers=token).status_code for _ in range(20)]
    assert statuses == [200] * 40
    full = [record for record in caplog.records if "\nTraceback" in record.getMessage()]
    assert [record.getMessage().split(";")[0] for record in full] == [
        "bearerguard: the metrics hook failed"
    ] * 2


def test_a_hook_failure_after_a_quiet_window_is_a_new_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No success is watched for (that would cost every figure a check): a failure after a
    # window without any says the last outage ended, and is reported in full again.
    clock = Clock(1000.0)
    report = hook_failures(window=60.0, clock=clock)
    error = ConnectionError("statsd down")
    with caplog.at_level(logging.WARNING, "bearerguard"):
        report.failed(DECISIONS, error)
        clock.advance(30)
        report.failed(DECISIONS, error)  # counted
        clock.advance(59)
        report.failed(DECISIONS, error)  # the window since the first line is over: a summary
        clock.advance(60)
        report.failed(CACHE, error)  # a window without failure: a new outage
    reports = [r.getMessage().partition("\n") for r in caplog.records]
    assert [(first, rest.startswith("Traceback")) for first, _, rest in reports] == [
        ("bearerguard: the metrics hook failed; bearerguard_decisions_total not recorded", True),
        (
            "bearerguard: the metrics hook is still failing; 2 more figures not recorded "
            "(3 in all)",
            False,
        ),
        ("bearerguard: the metrics hook took figures again after 3 not recorded", False),
        ("bearerguard: the metrics hook failed; bearerguard_token_cache_total not recorded", True),
    ]


@pytest.mark.parametrize(
    "buckets",
    [(1.0, 0.1), (0.1, 0.1), (0.1, math.inf), (math.nan,), ("0.1",), (True,), 0.1, None],
)
def test_in_memory_buckets_must_be_finite_and_increasing(buckets: Any) -> None:
    # Unsorted bounds put 0.5 under +Inf rather than under 1.0; an explicit +Inf had its
    # count overwritten by the implicit one in snapshot(); both were taken silently.
    with pytest.raises(ConfigurationError, match="buckets"):
        InMemoryMetrics(buckets)


def test_in_memory_buckets_given_count_where_they_fall() -> None:
    metrics = InMemoryMetrics([0.1, 1])  # type: ignore[arg-type]
    metrics.observe("h", 0.5, {})
    metrics.observe("h", 5, {})
    (histogram,) = metrics.snapshot()["histograms"]
    assert histogram["buckets"] == {0.1: 0, 1.0: 1, math.inf: 1}


def test_metrics_must_be_a_hook(session_issuer: DevIssuer) -> None:
    with pytest.raises(ConfigurationError):
        session_issuer.guard(metrics=object())


def test_prometheus_exporter(issuer: DevIssuer) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    guard = issuer.guard(metrics=metrics)
    metrics_with_age = PrometheusMetrics(CollectorRegistry(), guard=guard)
    assert metrics_with_age is not None
    with TestClient(build_app(guard)) as client:
        client.get("/me", headers=bearer(issuer.mint()))
        client.get("/me")
    text = generate_latest(registry).decode()
    assert 'bearerguard_decisions_total{event="token.accepted",reason="ok"} 1.0' in text
    assert 'bearerguard_decisions_total{event="token.rejected",reason="missing_token"} 1.0' in text
    assert 'bearerguard_token_cache_total{result="miss"} 1.0' in text
    assert "bearerguard_decision_seconds_bucket" in text
    assert 'bearerguard_jwks_fetches_total{result="ok"} 1.0' in text


def test_prometheus_exports_lost_audit_events_and_unmonitored_requests(
    issuer: DevIssuer,
) -> None:
    import structlog

    from bearerguard.usage import UsageMonitorError, UsagePolicy, UsageVerdict

    class DownMonitor:
        name = "down"
        policy = UsagePolicy(max_uses_per_token=10)

        async def observe(self, token: AccessToken, client: str | None) -> UsageVerdict:
            raise UsageMonitorError("store down")

    def full_disk(_logger: Any, _method: str, _event: Any) -> Any:
        raise OSError(28, "No space left on device")

    registry = CollectorRegistry()
    guard = issuer.guard(
        metrics=PrometheusMetrics(registry),
        usage=DownMonitor(),
        audit_logger=structlog.wrap_logger(None, processors=[full_disk]),
    )
    with TestClient(build_app(guard)) as client:
        assert client.get("/me", headers=bearer(issuer.mint())).status_code == 200
        assert client.get("/me").status_code == 401
    text = generate_latest(registry).decode()
    assert 'bearerguard_audit_events_lost_total{event="token.accepted"} 1.0' in text
    assert 'bearerguard_audit_events_lost_total{event="token.rejected"} 1.0' in text
    assert 'bearerguard_usage_unmonitored_total{monitor="down"} 1.0' in text


def test_every_metric_is_documented() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "observability.md").read_text()
    for name in _LABELS:
        assert f"| `{name}` |" in page, name


def test_prometheus_key_set_age_before_any_fetch(issuer: DevIssuer) -> None:
    """Keys never fetched are not "0 seconds old": an alert on the age must fire."""
    fetching = BearerGuard(
        issuer="https://issuer.invalid", audience="api", jwks_uri="https://issuer.invalid/jwks"
    )
    registry = CollectorRegistry()
    PrometheusMetrics(registry, guard=fetching)
    assert "bearerguard_jwks_age_seconds +Inf" in generate_latest(registry).decode()
    static = BearerGuard(issuer=issuer.url, audience="api", keys=issuer.jwks())
    registry = CollectorRegistry()
    PrometheusMetrics(registry, guard=static)
    assert "bearerguard_jwks_age_seconds 0.0" in generate_latest(registry).decode()
    warm = issuer.guard()
    warm.warm_up_sync()
    registry = CollectorRegistry()
    PrometheusMetrics(registry, guard=warm)
    assert "bearerguard_jwks_age_seconds +Inf" not in generate_latest(registry).decode()


def test_prometheus_decisions_and_key_set_age_on_one_registry(issuer: DevIssuer) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    guard = issuer.guard(metrics=metrics)
    metrics.publish_key_set_age(guard)
    metrics.publish_key_set_age(guard)  # again: the same gauge, not a second one
    guard.warm_up_sync()
    text = generate_latest(registry).decode()
    assert 'bearerguard_jwks_fetches_total{result="ok"} 1.0' in text
    age = next(line for line in text.splitlines() if line.startswith("bearerguard_jwks_age"))
    assert 0.0 <= float(age.split()[1]) < 60


_MULTIPROCESS_AGE = """
import sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from bearerguard import BearerGuard
from bearerguard.errors import ConfigurationError
from bearerguard.metrics import PrometheusMetrics

metrics = PrometheusMetrics()  # the counters work in multiprocess mode
guard = BearerGuard(issuer=sys.argv[1], audience="api", jwks_uri=sys.argv[1] + "/jwks.json")
try:
    PrometheusMetrics(CollectorRegistry(), guard=guard)
except ConfigurationError as exc:
    print("refused:", exc)
try:
    metrics.publish_key_set_age(guard)
except ConfigurationError:
    print("refused again")
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(generate_latest(registry).decode())
"""


def _in_multiprocess_mode(snippet: str, issuer: DevIssuer, tmp_path: Path) -> str:
    """What ``snippet`` prints, run as a worker in prometheus_client's multiprocess mode
    (its files in ``tmp_path``, shared by every call), given the issuer's URL."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(  # noqa: S603 - our own snippet
        [sys.executable, "-c", snippet, issuer.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_prometheus_key_set_age_is_refused_in_multiprocess_mode(
    issuer: DevIssuer, tmp_path: Path
) -> None:
    """prometheus_client's multiprocess mode (several workers) exports what each process
    wrote to its files, never calling a gauge's function: the age would read 0 for ever,
    even before any key was fetched, so an alert on it could never fire."""
    output = _in_multiprocess_mode(_MULTIPROCESS_AGE, issuer, tmp_path)
    assert "refused: bearerguard_jwks_age_seconds" in output
    assert "PROMETHEUS_MULTIPROC_DIR" in output
    assert "refused again" in output
    assert "bearerguard_jwks_age_seconds" not in output.split("refused again")[1]


_MULTIPROCESS_LAST_SUCCESS = """
import sys, time
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from bearerguard import BearerGuard
from bearerguard.metrics import PrometheusMetrics

guard = BearerGuard(
    issuer=sys.argv[1],
    audience="api",
    jwks_uri=sys.argv[1] + "/jwks.json",
    metrics=PrometheusMetrics(),
)
print("before", time.time())
guard.warm_up_sync()
print("after", time.time())
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(generate_latest(registry).decode())
"""


def test_the_last_successful_fetch_is_exported_in_multiprocess_mode(
    issuer: DevIssuer, tmp_path: Path
) -> None:
    """Where the key set's age cannot be exported (read at scrape), the instant of the last
    successful fetch can: each worker writes it as it happens, and the scrape adds up the
    workers' files, keeping the latest (``max``)."""
    # One worker after the other: the second's fetch is the latest.
    outputs = [_in_multiprocess_mode(_MULTIPROCESS_LAST_SUCCESS, issuer, tmp_path) for _ in "ab"]
    lines = outputs[1].splitlines()
    before, after = (float(lines[i].split()[1]) for i in (0, 1))
    name = "bearerguard_jwks_last_success_timestamp_seconds"
    assert f"# TYPE {name} gauge" in lines
    [sample] = [line for line in lines if line.startswith(name + "{")]
    assert sample.startswith(f'{name}{{issuer="{issuer.url}"}} ')
    assert before <= float(sample.split()[-1]) <= after
    first_after = float(outputs[0].splitlines()[1].split()[1])
    assert float(sample.split()[-1]) > first_after


def test_the_last_successful_fetch_is_set_on_success_only(issuer: DevIssuer) -> None:
    registry = CollectorRegistry()
    clock = Clock(1_800_000_000.0)
    guard = issuer.guard(metrics=PrometheusMetrics(registry), clock=clock)
    name = "bearerguard_jwks_last_success_timestamp_seconds"
    assert registry.get_sample_value(name, {"issuer": issuer.url}) is None
    guard.warm_up_sync()
    assert registry.get_sample_value(name, {"issuer": issuer.url}) == 1_800_000_000.0
    issuer.overrides["/jwks.json"] = Override(status=500)
    clock.advance(30 * 86_400)  # past the keys' freshness and max_stale: fetched again
    with pytest.raises(KeySetUnavailableError):
        guard.warm_up_sync()
    fetches = "bearerguard_jwks_fetches_total"
    assert registry.get_sample_value(fetches, {"result": "error"}) == 1
    assert registry.get_sample_value(name, {"issuer": issuer.url}) == 1_800_000_000.0


class _TwoMethods:
    """A hook written to ``MetricsHook``'s two methods, from before gauges."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def increment(self, name: str, labels: dict[str, str]) -> None:
        self.names.append(name)

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        self.names.append(name)


def test_the_last_successful_fetch_in_memory_and_to_a_hook_without_gauges(
    issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = InMemoryMetrics()
    clock = Clock(1_800_000_000.0)
    issuer.guard(metrics=metrics, clock=clock).warm_up_sync()
    assert metrics.gauge(JWKS_LAST_SUCCESS, issuer=issuer.url) == 1_800_000_000.0
    assert metrics.snapshot()["gauges"] == [
        {"name": JWKS_LAST_SUCCESS, "labels": {"issuer": issuer.url}, "value": 1_800_000_000.0}
    ]
    older = _TwoMethods()
    with caplog.at_level(logging.ERROR, logger="bearerguard"):
        issuer.guard(metrics=older).warm_up_sync()
    assert older.names == [JWKS_FETCHES]
    assert not caplog.records


def test_readiness_asgi(issuer: DevIssuer) -> None:
    guard = issuer.guard()
    app = Starlette(
        routes=[Mount("/ready", app=ReadinessEndpoint(guard))],
        middleware=[
            Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/ready/", "/ready"])
        ],
    )
    with TestClient(app) as client:
        ready = client.get("/ready/")
        assert ready.status_code == 200
        report = ready.json()
        assert report["ready"] is True
        assert report["keys"]["kids"] == 2
        assert report["keys"]["age_seconds"] >= 0
        assert report["revocation"] == {"store": "memory", "healthy": True}
        assert client.post("/ready/").status_code == 405
        assert client.head("/ready/").status_code == 200


def test_readiness_reports_missing_keys(issuer: DevIssuer) -> None:
    issuer.overrides["/jwks.json"] = Override(status=500)
    guard = issuer.guard()
    with TestClient(ReadinessEndpoint(guard)) as client:
        response = client.get("/")
    assert response.status_code == 503
    assert response.json()["keys"]["ready"] is False
    issuer.overrides.clear()
    assert readiness(guard)["ready"] is False  # until the cooldown allows another fetch


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_readiness_polled_during_an_outage_fetches_once_per_cooldown(
    issuer: DevIssuer, stack: str
) -> None:
    # A public readiness endpoint hammered while the issuer is down must not send one
    # fetch per request to the issuer: the failure cooldown holds, as on the token path.
    issuer.overrides[issuer.jwks_path] = Override(status=503)
    guard = issuer.guard(discover=False)
    client: httpx.Client
    if stack == "asgi":
        client = TestClient(ReadinessEndpoint(guard), base_url="http://t")
    else:
        transport = httpx.WSGITransport(app=readiness_wsgi(guard))
        client = httpx.Client(transport=transport, base_url="http://t")
    with client:
        statuses = {client.get("/").status_code for _ in range(20)}
    assert statuses == {503}
    assert issuer.fetch_count() == 1


def test_readiness_wsgi(issuer: DevIssuer) -> None:
    app = readiness_wsgi(issuer.guard())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.json()["ready"] is True


def test_readiness_wsgi_answers_as_the_asgi_endpoint(issuer: DevIssuer) -> None:
    guard = issuer.guard()
    wsgi = httpx.Client(
        transport=httpx.WSGITransport(app=readiness_wsgi(guard)), base_url="http://t"
    )
    asgi = TestClient(ReadinessEndpoint(guard), base_url="http://t")
    for client in (wsgi, asgi):
        head = client.head("/")
        assert (head.status_code, head.content) == (200, b"")
        post = client.post("/")
        assert post.status_code == 405
        assert post.headers["allow"] == "GET, HEAD"
        assert post.json() == {"error": "method_not_allowed"}
    wsgi.close()


# -- readiness with a Redis revocation store (real servers, tests/redis_server.py) ----------


def _poll_ready(client: httpx.Client, within: float = 10.0) -> list[int]:
    """GET /ready/ until it answers 200; the statuses seen, failing after ``within``."""
    statuses: list[int] = []
    deadline = time.monotonic() + within
    while not statuses or statuses[-1] != 200:
        assert time.monotonic() < deadline, f"never ready: {statuses}"
        statuses.append(client.get("/ready/").status_code)
        time.sleep(0.02)
    return statuses


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_readiness_starts_a_mirror_nobody_started(
    stack: str, issuer: DevIssuer, redis_server: RedisServer, redis_namespace: str
) -> None:
    """No request goes through the guard: readiness alone brings the mirror up."""
    from bearerguard.revocation import RedisRevocationStore

    store = RedisRevocationStore(redis_server.url, namespace=redis_namespace)
    guard = issuer.guard(revocation=store)
    try:
        with _ready_client(stack, guard) as client:
            assert set(_poll_ready(client)[:-1]) <= {503}
            assert client.get("/ready/").json()["revocation"] == {"store": "redis", "healthy": True}
            assert store.health_report()["state"] == "live"
    finally:
        store.close()


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_readiness_pings_redis_without_a_mirror(
    stack: str, issuer: DevIssuer, private_redis: RedisServer
) -> None:
    from bearerguard.revocation import RedisRevocationStore

    store = RedisRevocationStore(private_redis.url, mirror=False, socket_timeout=0.5)
    guard = issuer.guard(revocation=store)
    try:
        with _ready_client(stack, guard) as client:
            assert client.get("/ready/").status_code == 200  # asked before any check
            private_redis.stop()
            answer = client.get("/ready/")
            assert answer.status_code == 503
            assert answer.json()["revocation"] == {"store": "redis", "healthy": False}
            private_redis.start()
            assert client.get("/ready/").status_code == 200
    finally:
        store.close()


def test_readiness_of_a_store_that_cannot_serve_that_side(
    issuer: DevIssuer, redis_server: RedisServer, redis_namespace: str
) -> None:
    """A store whose health check raises (no synchronous client, under WSGI) is not ready:
    503. (One with only a synchronous client serves ASGI too: the test below.)"""
    import redis.asyncio as aredis

    from bearerguard.revocation import RedisRevocationStore

    async_client = aredis.Redis.from_url(redis_server.url)
    store = RedisRevocationStore(namespace=redis_namespace, async_client=async_client)
    with _ready_client("wsgi", issuer.guard(revocation=store)) as client:
        answer = client.get("/ready/")
    store.close()
    assert answer.status_code == 503
    assert answer.json()["revocation"] == {"store": "redis", "healthy": False}


def test_readiness_of_a_store_with_only_a_synchronous_client_under_asgi(
    issuer: DevIssuer, redis_server: RedisServer, redis_namespace: str
) -> None:
    """Built with client= alone, the store is asked through its thread under ASGI: the first
    probe starts its mirror, and readiness answers 503 until it has loaded, then 200.

    Whether the first probe finds it loaded already depends on how the threads are scheduled
    (a worker thread descheduled on a busy core let the mirror load first: a 503 asserted
    there answered 200), so probes are repeated until one answers 200."""
    import redis

    from bearerguard.revocation import RedisRevocationStore

    sync_client = redis.Redis.from_url(redis_server.url)
    store = RedisRevocationStore(namespace=redis_namespace, client=sync_client)
    answers: list[httpx.Response] = []
    with _ready_client("asgi", issuer.guard(revocation=store)) as client:

        def ready() -> bool:
            answers.append(client.get("/ready/"))
            return answers[-1].status_code == 200

        assert until(ready, 10)
    store.close()
    sync_client.close()
    assert {answer.status_code for answer in answers[:-1]} <= {503}
    assert [answer.json()["revocation"]["healthy"] for answer in answers[:-1]] == [False] * (
        len(answers) - 1
    )
    assert answers[-1].json()["revocation"] == {"store": "redis", "healthy": True}


@contextlib.contextmanager
def _ready_client(stack: str, guard: BearerGuard) -> Iterator[httpx.Client]:
    """A client of the readiness endpoint alone; the ASGI app closes the store at shutdown."""
    if stack == "asgi":

        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            yield
            await guard.revocation.aclose()  # type: ignore[attr-defined]

        app = Starlette(routes=[Mount("/ready", app=ReadinessEndpoint(guard))], lifespan=lifespan)
        with TestClient(app) as client:
            yield client
        return
    transport = httpx.WSGITransport(app=readiness_wsgi(guard))
    with httpx.Client(transport=transport, base_url="http://t/ready") as client:
        yield client


def _needing_redis(part: str, url: str) -> tuple[dict[str, object], object]:
    """Guard options whose every request needs Redis, and the Redis part itself."""
    if part == "usage":
        from bearerguard.usage import RedisUsageMonitor, UsagePolicy

        policy = UsagePolicy(max_uses_per_token=100, failure="deny")
        monitor = RedisUsageMonitor(policy, url, socket_timeout=0.5)
        return {"usage": monitor}, monitor
    from bearerguard.dpop import DPoPPolicy, RedisDPoPReplayStore

    store = RedisDPoPReplayStore(url, socket_timeout=0.5)
    return {"dpop": DPoPPolicy(replay=store)}, store


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
@pytest.mark.parametrize("part", ["usage", "dpop"])
def test_readiness_asks_every_store_a_request_needs(
    stack: str, part: str, issuer: DevIssuer, private_redis: RedisServer
) -> None:
    # A usage monitor with failure="deny" and a DPoP replay store answer 503 to every request
    # while their Redis is down: readiness said 200 all the same.
    options, needed = _needing_redis(part, private_redis.url)
    guard = issuer.guard(**options)
    client: httpx.Client
    if stack == "asgi":

        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            yield
            await needed.aclose()  # type: ignore[attr-defined]

        app = Starlette(routes=[Mount("/ready", app=ReadinessEndpoint(guard))], lifespan=lifespan)
        client = TestClient(app, base_url="http://t/ready")
    else:
        transport = httpx.WSGITransport(app=readiness_wsgi(guard))
        client = httpx.Client(transport=transport, base_url="http://t/ready")
    try:
        with client:
            ready = client.get("/ready/")
            assert ready.status_code == 200
            assert ready.json()[part] == {"store": "redis", "healthy": True}
            private_redis.stop()
            down = client.get("/ready/")
            assert down.status_code == 503
            assert down.json()["ready"] is False
            assert down.json()[part] == {"store": "redis", "healthy": False}
            private_redis.start()
            assert client.get("/ready/").status_code == 200
    finally:
        needed.close()  # type: ignore[attr-defined]


def test_readiness_leaves_out_a_usage_monitor_that_fails_open(issuer: DevIssuer) -> None:
    from bearerguard.usage import MemoryUsageMonitor, UsagePolicy

    monitor = MemoryUsageMonitor(UsagePolicy(max_uses_per_token=5))  # failure="allow"
    guard = issuer.guard(usage=monitor)
    guard.warm_up_sync()
    report = readiness(guard)
    assert report["ready"] is True
    assert "usage" not in report
    denying = MemoryUsageMonitor(UsagePolicy(max_uses_per_token=5, failure="deny"))
    assert readiness(issuer.guard(usage=denying))["usage"] == {"store": "memory", "healthy": True}


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_readiness_probes_the_introspection_endpoint(
    issuer: DevIssuer, stack: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A guard that accepts opaque tokens answered every one 503 while its authorization
    # server was down, and readiness said 200: the endpoint was never asked.
    clock = Clock()
    with IntrospectionServer() as server:
        introspector = server.introspector(health_interval=30, clock=clock)
        guard = issuer.guard(
            audience=AUDIENCE,
            introspection=introspector,
            revocation=IntrospectionRevocationStore(introspector),
        )
        assert readiness(guard)["ready"] is False  # no I/O, nothing probed yet
        with _readiness_client(guard, stack) as client:
            ready = client.get("/")
            assert ready.status_code == 200
            assert ready.json()["introspection"] == {"store": "introspection", "healthy": True}
            assert ready.json()["revocation"]["healthy"] is True
            # One probe, about a random token, for the guard and its store alike.
            assert server.calls == 1
            probe = server.seen[0].form
            assert probe["token"][0].startswith("bearerguard-probe-")
            assert probe["token_type_hint"] == ["access_token"]
            server.fault = Fault(status=500, body=b"down")
            assert client.get("/").status_code == 200  # the last outcome, within the interval
            assert server.calls == 1
            clock.advance(30)
            down = client.get("/")
            assert down.status_code == 503
            assert down.json()["introspection"]["healthy"] is False
            assert down.json()["revocation"]["healthy"] is False
            # An endpoint that says a token no one issued is active is not healthy either.
            server.fault = Fault(body=b'{"active": true}')
            clock.advance(30)
            with caplog.at_level("WARNING", "bearerguard"):
                assert client.get("/").status_code == 503
            assert "answered active for a random token" in caplog.text
            server.fault = None
            clock.advance(30)
            assert client.get("/").status_code == 200
            assert server.calls == 4
            assert len({seen.form["token"][0] for seen in server.seen}) == 4


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_readiness_states_the_length_of_its_document(issuer: DevIssuer, stack: str) -> None:
    guard = issuer.guard()
    client: httpx.Client
    if stack == "asgi":
        client = TestClient(ReadinessEndpoint(guard), base_url="http://t")
    else:
        client = httpx.Client(
            transport=httpx.WSGITransport(app=readiness_wsgi(guard)), base_url="http://t"
        )
    with client:
        got = client.get("/")
        head = client.head("/")
        refused = client.post("/")
    assert got.headers["content-length"] == str(len(got.content))
    # RFC 9110 §9.3.2: the length a GET would get (the document's figures may differ by now).
    assert int(head.headers["content-length"]) > 0
    assert head.content == b""
    assert refused.status_code == 405
    assert refused.headers["content-length"] == str(len(refused.content))


def _readiness_client(
    guard: BearerGuard | TrustedIssuers, stack: str, **options: Any
) -> httpx.Client:
    if stack == "asgi":
        return TestClient(ReadinessEndpoint(guard, **options), base_url="http://t")
    transport = httpx.WSGITransport(app=readiness_wsgi(guard, **options))
    return httpx.Client(transport=transport, base_url="http://t")


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_readiness_can_leave_the_authorization_server_out_of_the_verdict(
    issuer: DevIssuer, stack: str
) -> None:
    # An authorization server down took every instance out of the load balancer, JWTs
    # (verified locally) included: optional= reports its health without counting it.
    clock = Clock()
    with IntrospectionServer() as server:
        introspector = server.introspector(health_interval=30, clock=clock)
        guard = issuer.guard(audience=AUDIENCE, introspection=introspector)
        server.fault = Fault(status=500, body=b"down")
        with _readiness_client(guard, stack) as client:
            assert client.get("/").status_code == 503  # the default: it counts
        clock.advance(30)
        with _readiness_client(guard, stack, optional=["introspection"]) as client:
            down = client.get("/")
        assert down.status_code == 200
        assert down.json()["introspection"] == {
            "store": "introspection",
            "healthy": False,
            "required": False,
        }
        assert server.calls == 2  # still probed, for the report
        # Keys still count: without them nothing is served.
        issuer.overrides[issuer.jwks_path] = Override(status=500)
        cold = issuer.guard(audience=AUDIENCE, introspection=introspector)
        with _readiness_client(cold, stack, optional=["introspection"]) as client:
            assert client.get("/").status_code == 503
    assert readiness(guard, optional={"introspection"})["ready"] is True
    assert readiness(guard)["ready"] is False


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_readiness_leaves_an_introspection_revocation_store_out_only_when_named(
    issuer: DevIssuer, stack: str
) -> None:
    # optional= names members of the report: an IntrospectionRevocationStore is the
    # "revocation" member (it asks the same authorization server), so "introspection" alone
    # leaves the instance out while that server is down; docs/reliability.md says so.
    clock = Clock()
    with IntrospectionServer() as server:
        introspector = server.introspector(health_interval=30, clock=clock)
        guard = issuer.guard(
            audience=AUDIENCE,
            introspection=introspector,
            revocation=IntrospectionRevocationStore(introspector),
        )
        server.fault = Fault(status=500, body=b"down")
        with _readiness_client(guard, stack, optional=["introspection"]) as client:
            down = client.get("/")
        assert down.status_code == 503
        assert down.json()["revocation"] == {"store": "introspection", "healthy": False}
        both = ["introspection", "revocation"]
        with _readiness_client(guard, stack, optional=both) as client:
            assert client.get("/").status_code == 200


def test_readiness_can_leave_the_revocation_store_out_of_the_verdict(
    issuer: DevIssuer, private_redis: RedisServer
) -> None:
    from bearerguard.revocation import RedisRevocationStore

    store = RedisRevocationStore(private_redis.url, mirror=False, socket_timeout=0.5)
    guard = issuer.guard(revocation=store)
    try:
        private_redis.stop()
        with _readiness_client(guard, "wsgi", optional=("revocation",)) as client:
            answer = client.get("/")
        assert answer.status_code == 200
        assert answer.json()["revocation"] == {
            "store": "redis",
            "healthy": False,
            "required": False,
        }
    finally:
        private_redis.start()
        store.close()


@pytest.mark.parametrize(
    "optional",
    [["keys"], ["introspecton"], "introspection", [1], None, 3, [["revocation"]], [{}]],
    ids=repr,
)
def test_readiness_refuses_unknown_or_unsafe_optional_dependencies(
    session_issuer: DevIssuer, optional: Any
) -> None:
    guard = session_issuer.guard()
    with pytest.raises(ConfigurationError, match="optional"):
        ReadinessEndpoint(guard, optional=optional)
    with pytest.raises(ConfigurationError, match="optional"):
        readiness_wsgi(guard, optional=optional)
    with pytest.raises(ConfigurationError, match="optional"):
        readiness(guard, optional=optional)


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_readiness_of_several_issuers_reports_each(issuer: DevIssuer, stack: str) -> None:
    # ReadinessEndpoint(TrustedIssuers(...)) answered 500 to every probe.
    with DevIssuer() as other:
        trusted = TrustedIssuers([issuer.guard(), other.guard()])
        with _readiness_client(trusted, stack) as client:
            ready = client.get("/")
        assert ready.status_code == 200
        report = ready.json()
        assert report["ready"] is True
        assert set(report["issuers"]) == {issuer.url, other.url}
        plain = readiness(trusted)
        assert plain["ready"] is True
        assert {name: each["ready"] for name, each in plain["issuers"].items()} == {
            issuer.url: True,
            other.url: True,
        }
        # One issuer's keys cannot be had: still ready (its tokens are refused, the other's
        # are served), and the report says which; none can be had: not ready.
        other.overrides[other.jwks_path] = Override(status=503)
        with _readiness_client(TrustedIssuers([issuer.guard(), other.guard()]), stack) as client:
            partly = client.get("/")
        assert partly.status_code == 200
        assert partly.json()["issuers"][other.url]["ready"] is False
        assert partly.json()["issuers"][issuer.url]["ready"] is True
        issuer.overrides[issuer.jwks_path] = Override(status=503)
        try:
            guards = [issuer.guard(discover=False), other.guard(discover=False)]
            with _readiness_client(TrustedIssuers(guards), stack) as client:
                assert client.get("/").status_code == 503
        finally:
            del issuer.overrides[issuer.jwks_path]
