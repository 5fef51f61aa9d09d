"""``benchmarks/event_inside.py``: the timed app serves, and writes its timings at shutdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bearerguard import guard as guard_module
from bearerguard.testing import DevIssuer
from benchmarks import event_inside
from benchmarks.apps import PATH, SCOPE


def test_the_timed_app_times_every_part_of_each_event(
    session_issuer: DevIssuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timings = tmp_path / "timings.tsv"
    for name, value in {
        "BENCH_ISSUER": session_issuer.url,
        "BENCH_JWKS_URI": session_issuer.jwks_uri,
        "BENCH_AUDIENCE": session_issuer.audience,
        "BENCH_AUDIT": "all",
        event_inside.TIMINGS_ENV: str(timings),
    }.items():
        monkeypatch.setenv(name, value)
    # create_timed wraps the class's method, as it may in its own server process: undone here.
    verified = guard_module.Verified
    monkeypatch.setattr(verified, "record_accepted", verified.record_accepted)
    monkeypatch.setattr(event_inside, "_totals", {})
    sinks: list[Any] = []
    monkeypatch.setattr(event_inside, "_devnull", sinks)
    token = session_issuer.mint(scopes=[SCOPE])

    with TestClient(event_inside.create_timed()) as client:
        for _ in range(3):
            response = client.get(PATH, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
        assert not timings.exists()
    for sink in sinks:
        sink.close()

    counted = {}
    for line in timings.read_text().splitlines():
        name, count, total = line.split("\t")
        counted[name] = int(count)
        assert float(total) > 0
    assert counted == {
        "merge_contextvars": 3,
        "add_log_level": 3,
        "ExceptionRenderer": 3,
        "TimeStamper": 3,
        "JSONRenderer": 3,
        event_inside._SINK: 3,
        event_inside._CALL: 2,  # cache hits only: the first request verified the token
    }
