"""Usage monitoring wired into the guard, on the ASGI and the WSGI stack alike."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog

from bearerguard import AccessToken, BearerGuard
from bearerguard.errors import ConfigurationError
from bearerguard.metrics import USAGE_UNMONITORED, InMemoryMetrics
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from bearerguard.usage import MemoryUsageMonitor, UsagePolicy, UsageVerdict
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.apps import build_app, build_flask_app
from tests.test_introspection import AUDIENCE, IntrospectionServer

Send = Callable[[str, str], httpx.Response]


def client_for(stack: str, guard: BearerGuard) -> Iterator[Send]:
    """Send a request as a given client address, through one stack."""
    if stack == "asgi":
        app: Any = build_app(guard)
    else:
        app = build_flask_app(guard)

    def send(token: str, address: str) -> httpx.Response:
        if stack == "asgi":
            from starlette.testclient import TestClient

            with TestClient(app, client=(address, 5000)) as client:
                return client.get("/me", headers={"Authorization": f"Bearer {token}"})
        transport = httpx.WSGITransport(app=app, remote_addr=address)
        with httpx.Client(transport=transport, base_url="http://t") as client:
            return client.get("/me", headers={"Authorization": f"Bearer {token}"})

    yield send


@pytest.fixture(params=["asgi", "wsgi"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def guarded(issuer: DevIssuer, action: str, store: MemoryRevocationStore) -> BearerGuard:
    policy = UsagePolicy(max_addresses_per_token=1, action=action)  # type: ignore[arg-type]
    return issuer.guard(usage=MemoryUsageMonitor(policy), revocation=store)


@pytest.mark.parametrize("action", ["log", "reject", "revoke"])
def test_a_token_used_from_a_second_address(
    stack: str, session_issuer: DevIssuer, action: str
) -> None:
    store = MemoryRevocationStore()
    token = session_issuer.mint(sub="ola")
    for send in client_for(stack, guarded(session_issuer, action, store)):
        assert send(token, "10.0.0.1").status_code == 200
        with structlog.testing.capture_logs() as events:
            second = send(token, "10.0.0.2")
        names = [event["event"] for event in events]
        assert "token.anomaly" in names
        anomaly = next(event for event in events if event["event"] == "token.anomaly")
        assert anomaly["action"] == action
        assert anomaly["path"] == "/me"
        if action == "log":
            assert second.status_code == 200
            assert names == ["token.anomaly", "token.accepted"]
        else:
            assert second.status_code == 401
            assert 'error="invalid_token"' in second.headers["www-authenticate"]
            refusal = next(event for event in events if event["event"] == "token.rejected")
            assert refusal["reason"] == "usage_anomaly"
        # Back at the first address: only a revoked token stays refused.
        again = send(token, "10.0.0.1")
        assert again.status_code == (401 if action == "revoke" else 200 if action == "log" else 401)
        if action == "revoke":
            assert len(store) == 1


def test_an_opaque_token_without_jti_from_a_second_address(
    stack: str, session_issuer: DevIssuer
) -> None:
    # Counted by its fingerprint: before, an introspected token without jti was never
    # counted by token, and every address limit let it through.
    with IntrospectionServer() as server:
        server.activate("opaque-ola", sub="ola")
        server.activate("opaque-kim", sub="kim")
        policy = UsagePolicy(max_addresses_per_token=1, action="reject")
        guard = session_issuer.guard(
            audience=AUDIENCE,
            introspection=server.introspector(),
            usage=MemoryUsageMonitor(policy),
        )
        for send in client_for(stack, guard):
            assert send("opaque-ola", "10.0.0.1").status_code == 200
            assert send("opaque-kim", "10.0.0.2").status_code == 200  # another token
            with structlog.testing.capture_logs() as events:
                assert send("opaque-ola", "10.0.0.2").status_code == 401
            refusal = next(event for event in events if event["event"] == "token.rejected")
            assert refusal["reason"] == "usage_anomaly"


class BrokenMonitor:
    def __init__(self, failure: str) -> None:
        self.policy = UsagePolicy(max_uses_per_token=10, failure=failure)  # type: ignore[arg-type]

    async def observe(self, token: AccessToken, client: str | None) -> UsageVerdict:
        raise ConnectionError("down")

    def observe_sync(self, token: AccessToken, client: str | None) -> UsageVerdict:
        raise ConnectionError("down")


@pytest.mark.parametrize(("failure", "status"), [("allow", 200), ("deny", 503)])
def test_a_failing_monitor_follows_its_policy(
    stack: str, session_issuer: DevIssuer, failure: str, status: int
) -> None:
    metrics = InMemoryMetrics()
    guard = session_issuer.guard(usage=BrokenMonitor(failure), metrics=metrics)
    for send in client_for(stack, guard):
        assert send(session_issuer.mint(), "10.0.0.9").status_code == status
    # Let in unmonitored (failing open) is counted; a 503 is a decision, counted as one.
    unmonitored = metrics.count(USAGE_UNMONITORED, monitor="BrokenMonitor")
    assert unmonitored == (1 if failure == "allow" else 0)


class FlakyMonitor:
    """A monitor counting in memory through a store that can go down, as Redis can."""

    name = "flaky"

    def __init__(self) -> None:
        self.down = False
        self._memory = MemoryUsageMonitor(UsagePolicy(max_uses_per_token=100))

    @property
    def policy(self) -> UsagePolicy:
        return self._memory.policy

    async def observe(self, token: AccessToken, client: str | None) -> UsageVerdict:
        if self.down:
            raise ConnectionError("store down")
        return await self._memory.observe(token, client)

    def observe_sync(self, token: AccessToken, client: str | None) -> UsageVerdict:
        if self.down:
            raise ConnectionError("store down")
        return self._memory.observe_sync(token, client)


def test_a_monitor_failing_open_is_counted_and_logged_once_per_outage(
    stack: str, session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # An outage of the usage store lets requests in unmonitored: one warning when it
    # starts, a count per window while it lasts, one line when it ends; and a counter to
    # alert on, rather than a warning per request.
    monitor, metrics = FlakyMonitor(), InMemoryMetrics()
    guard = session_issuer.guard(usage=monitor, metrics=metrics)
    token = session_issuer.mint()
    for send in client_for(stack, guard):
        with caplog.at_level(logging.DEBUG, "bearerguard"):
            assert send(token, "10.0.0.9").status_code == 200
            monitor.down = True
            assert [send(token, "10.0.0.9").status_code for _ in range(5)] == [200] * 5
            monitor.down = False
            assert send(token, "10.0.0.9").status_code == 200
    lines = [record.getMessage() for record in caplog.records if "usage monitor" in record.msg]
    assert lines[0] == (
        "bearerguard: usage monitor failed, request not monitored: ConnectionError: store down"
    )
    assert lines[-1] == "bearerguard: usage monitor recovered after 5 requests not monitored"
    # Between them, only a summary once a window (a minute) has passed, if ever.
    assert all("still failing" in line for line in lines[1:-1])
    assert metrics.count(USAGE_UNMONITORED, monitor="flaky") == 5


def test_usage_must_be_a_monitor(session_issuer: DevIssuer) -> None:
    with pytest.raises(ConfigurationError):
        session_issuer.guard(usage=object())


def test_wsgi_needs_the_sync_side(session_issuer: DevIssuer) -> None:
    class AsyncOnly:
        policy = UsagePolicy(max_uses_per_token=1)

        async def observe(self, token: AccessToken, client: str | None) -> UsageVerdict:
            raise NotImplementedError

    guard = session_issuer.guard(usage=AsyncOnly())

    def app(environ: Any, start_response: Any) -> list[bytes]:
        return []  # pragma: no cover

    with pytest.raises(ConfigurationError, match="synchronous"):
        BearerGuardWSGIMiddleware(app, guard=guard)


def test_asgi_runs_a_sync_only_monitor(session_issuer: DevIssuer) -> None:
    """A SyncUsageMonitor is accepted by the guard, so ASGI must use it, not answer 500."""

    class SyncOnly:
        def __init__(self) -> None:
            self.inner = MemoryUsageMonitor(UsagePolicy(max_addresses_per_token=1))
            self.policy = self.inner.policy

        def observe_sync(self, token: AccessToken, client: str | None) -> UsageVerdict:
            return self.inner.observe_sync(token, client)

    guard = session_issuer.guard(usage=SyncOnly())
    token = session_issuer.mint()
    for send in client_for("asgi", guard):
        assert send(token, "10.0.0.1").status_code == 200
        with structlog.testing.capture_logs() as events:
            assert send(token, "10.0.0.2").status_code == 200  # action "log"
        assert [event["event"] for event in events] == ["token.anomaly", "token.accepted"]


class _CannotRevoke:
    """A valid revocation store (both sides) that has no revoke_* methods."""

    async def is_revoked(self, token: AccessToken) -> bool:
        return False

    def is_revoked_sync(self, token: AccessToken) -> bool:
        return False


class _RevokesAsyncOnly(_CannotRevoke):
    async def revoke_token(self, jti: str, expires_at: Any = None, *, issuer: Any = None) -> None:
        return None


def test_revoking_needs_a_store_that_can_revoke(session_issuer: DevIssuer) -> None:
    # Otherwise the "revoked" token would be accepted again once its usage dropped.
    policy = UsagePolicy(max_uses_per_token=2, action="revoke")
    with pytest.raises(ConfigurationError, match="revoke_token"):
        session_issuer.guard(usage=MemoryUsageMonitor(policy), revocation=_CannotRevoke())
    guard = session_issuer.guard(usage=MemoryUsageMonitor(policy), revocation=_RevokesAsyncOnly())
    with pytest.raises(ConfigurationError, match="revoke_token_sync"):
        guard.require_sync_side()
    rejecting = UsagePolicy(max_uses_per_token=2, action="reject")
    session_issuer.guard(usage=MemoryUsageMonitor(rejecting), revocation=_CannotRevoke())


def test_asgi_revokes_through_a_store_with_only_revoke_token_sync(
    session_issuer: DevIssuer,
) -> None:
    """The guard accepts action="revoke" with a store that has only revoke_token_sync: the
    asynchronous flow must then revoke through it, not log an AttributeError."""
    memory = MemoryRevocationStore()

    class SyncRevoking(_CannotRevoke):
        def revoke_token_sync(self, jti: str, expires_at: Any, *, issuer: Any = None) -> bool:
            return memory.revoke_token_sync(jti, expires_at, issuer=issuer)

    policy = UsagePolicy(max_addresses_per_token=1, action="revoke")
    guard = session_issuer.guard(usage=MemoryUsageMonitor(policy), revocation=SyncRevoking())
    token = session_issuer.mint()
    for send in client_for("asgi", guard):
        assert send(token, "10.0.0.1").status_code == 200
        assert send(token, "10.0.0.2").status_code == 401
    assert len(memory) == 1
