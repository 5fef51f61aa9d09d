"""A short run of ``scripts/faults.py``: two real outages under load, in under 20 seconds.

The example API runs under uvicorn with a Redis revocation store and a ``DevIssuer``'s JWKS,
while valid, revoked and forged tokens are sent to it. The JWKS server goes down, then Redis
is frozen (SIGSTOP). Through both: no revoked or forged token is ever answered 200, no 5xx
but the intended 503, every request gets exactly one audit event, valid tokens are refused
(fail closed) within the configured bounds, and they get 200 again soon after each fault ends.

The full set of scenarios is ``python3 scripts/dev.py faults`` (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from bearerguard import AuthError, KeySetUnavailableError, RefreshPolicy
from bearerguard.testing import DevIssuer, Override
from tests.helpers import Clock
from tests.redis_server import _unavailable

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Any:
    if shutil.which("redis-server") is None:
        _unavailable("the fault smoke test needs the redis-server binary on PATH")
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import faults as module

    return module


def test_jwks_down_and_redis_frozen_fail_closed_and_recover(faults: Any) -> None:
    results, defects = asyncio.run(
        faults.run_all(
            ["jwks_down", "redis_pause"],
            fault_seconds=3.5,
            recovery_limit=8.0,
            observe_after=1.0,
        )
    )
    assert defects == []
    assert [r.key for r in results] == ["jwks_down", "redis_pause"]
    report = faults.render(results, {}, "smoke")
    for result in results:
        assert result.wrongly_accepted == 0, report
        assert result.other_5xx == 0, report
        assert result.no_answer == 0, report
        assert result.audit_events == result.requests, report
        # Valid tokens were refused during the outage (fail closed, 503 only) ...
        assert result.fail_closed_after is not None, report
        assert set(result.during["valid"]) <= {200, 503}, report
        # ... and accepted again soon after it ended, without flapping: requests arriving
        # while the recovering fetch is in flight wait for it (the test below).
        assert result.recovered_after is not None, report
        assert result.recovered_after < 3.0, report
        assert set(result.after["valid"]) == {200}, report
        for kind in ("revoked", "forged"):
            assert 200 not in result.during[kind], report
            assert set(result.after[kind]) == {401}, report
    jwks, redis = results
    # Stale keys serve for JWKS_TTL + MAX_STALE after the issuer vanishes; a frozen Redis is
    # trusted for FAILURE_TIMEOUT. Allow a second of slack on a loaded machine.
    assert jwks.fail_closed_after <= faults.JWKS_TTL + faults.MAX_STALE + 1.0, report
    assert redis.fail_closed_after <= faults.FAILURE_TIMEOUT + 1.0, report


def test_after_the_recovery_starts_once_a_valid_200_was_received(faults: Any) -> None:
    """Found under load (three suites at once): a revoked token's 503, decided before Redis
    was back, was counted as a flap "after" the recovery because its request was sent after
    that of the first valid 200, whose answer was decided later (it waited for a JWKS fetch,
    or the starved client wrote it late). Only a request sent once the client holds that 200
    is surely decided after it, by the one server process; a 503 from then on is a flap."""
    sample = faults.Sample
    healed = 100.0
    samples = [  # in the order answered, as Load records them
        sample(100.010, "valid", 503, 0.005),
        sample(100.030, "revoked", 503, 0.004),  # decided before the recovery
        sample(100.020, "valid", 200, 0.030),  # sent before it, answered at 100.050
        sample(100.040, "revoked", 401, 0.020),
        sample(100.060, "revoked", 503, 0.002),  # a flap: sent once the 200 was received
        sample(100.070, "valid", 200, 0.002),
    ]
    recovered, back = faults.recovery(samples, healed)
    assert recovered == pytest.approx(0.020)
    assert back == pytest.approx(100.050)
    after = [(s.kind, s.status) for s in samples if s.sent >= back]
    assert after == [("revoked", 503), ("valid", 200)]
    assert faults.recovery(samples[:2], healed) == (None, None)


@pytest.mark.anyio
async def test_requests_during_the_recovering_fetch_wait_for_it() -> None:
    """Found by scripts/faults.py: once an outage had made the key set unusable, a request
    arriving while the recovering fetch was in flight got 503 instead of waiting for it."""
    with DevIssuer(algorithms=("ES256",), jwks_max_age=1) as issuer:
        clock = Clock()
        policy = RefreshPolicy(default_ttl=1, min_ttl=1, max_ttl=1, cooldown=1, max_stale=2)
        guard = issuer.guard(discover=False, refresh=policy, clock=clock)
        first, second = issuer.mint(expires_in=3600), issuer.mint(expires_in=3600)
        await guard.authenticate(first)
        issuer.overrides[issuer.jwks_path] = Override(status=500)
        clock.now += 5  # past freshness and max_stale: the refresh fails, nothing is usable
        with pytest.raises(KeySetUnavailableError):
            await guard.authenticate(first)
        # The issuer is back, answering in 0.3 s; the cooldown has passed.
        issuer.overrides[issuer.jwks_path] = Override(body=issuer.jwks_bytes(), delay=0.3)
        clock.now += 1.5

        answers: dict[str, int] = {}

        async def request(name: str, token: str, delay: float) -> None:
            await anyio.sleep(delay)
            try:
                await guard.authenticate(token)
            except AuthError as error:
                answers[name] = error.status
            else:
                answers[name] = 200

        async with anyio.create_task_group() as group:
            group.start_soon(request, "first", first, 0.0)
            # The second arrives while the first request's fetch is under way.
            group.start_soon(request, "second", second, 0.05)
        assert answers == {"first": 200, "second": 200}
