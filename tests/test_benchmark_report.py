"""The benchmark report's in-process verdicts, from made-up samples (no timing here)."""

from __future__ import annotations

from benchmarks.inprocess import Measurement
from benchmarks.report import Target, targets
from benchmarks.served import ServedResult, WrkRun


def measured(key: str, *microseconds: float) -> Measurement:
    """A case whose repeats took ``microseconds`` per operation, on a quiet machine."""
    samples = [value / 1e6 for value in microseconds]
    return Measurement(key, key, "starlette", None, samples=samples, noise=[0.0] * len(samples))


def target(found: list[Target], prefix: str) -> Target:
    return next(item for item in found if item.goal.startswith(prefix))


def test_the_hit_target_counts_the_repeats_that_met_it_side_by_side() -> None:
    bare = measured("starlette_bare", 10.0, 10.0, 10.2, 10.0, 10.1)
    hit = measured("starlette_bg_hit", 12.9, 13.1, 13.1, 12.95, 13.2)
    found = target(targets([bare, hit], None), "cache hit <= +3")
    assert found.met is False
    assert found.figure == "+3.10 µs (13.10 vs 10.00 µs/request; 3 of 5 repeats within it)"
    assert found.verdict == "NOT MET"


def test_the_miss_target_shows_three_decimals_and_the_repeats_within_it() -> None:
    miss = measured("bg_miss", 33.3, 33.0, 33.4)
    decode = measured("jwt_decode", 66.5, 66.4, 66.6)
    found = target(targets([miss, decode], None), "cache miss")
    assert found.met is False
    assert found.figure == "0.501x (33.3 / 66.5 µs; 1 of 3 repeats within it)"


def test_targets_not_measured_say_so() -> None:
    found = targets([measured("starlette_bare", 10.0)], None)
    assert {item.verdict for item in found} == {"not measured"}


def served(key: str, requests_per_second: float) -> ServedResult:
    """An app served for one quiet round at ``requests_per_second``."""
    result = ServedResult(key, key, None)
    result.runs.append(WrkRun(requests_per_second, 1.0, 2.0, 1000, 0, 0, others=0.0))
    return result


def test_the_audited_target_shows_the_library_share_beside_the_verdict() -> None:
    runs = [
        served("starlette_bare", 30_000),
        served("starlette_bg_hit_audited", 18_000),
        served("starlette_bg_hit_audit_dropped", 24_000),
    ]
    found = target(targets([], runs), "cache hit >= 0.75x")
    assert found.met is False  # judged on the configured pipeline, not on the dropped events
    assert found.figure == (
        "0.60x (18,000 / 30,000 req/s; events dropped by the app's first processor, "
        "the library's share: 0.80x)"
    )


def test_the_served_hit_target_shows_the_reference_lookup_beside_it() -> None:
    runs = [
        served("starlette_bare", 30_000),
        served("starlette_bg_hit", 26_400),
        served("starlette_hash_lookup", 28_500),
    ]
    found = target(targets([], runs), "cache hit >= 0.90x")
    assert found.met is False
    assert found.figure == (
        "0.88x (26,400 / 30,000 req/s; the SHA-256 lookup alone, no checks: 0.95x)"
    )
