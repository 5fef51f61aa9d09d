"""The benchmark report's in-process verdicts, from made-up samples (no timing here)."""

from __future__ import annotations

import time

from benchmarks.inprocess import Measurement
from benchmarks.noise import CoreWatch, speed_probe, window_speeds
from benchmarks.report import Report, Target, targets
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


def test_samples_taken_on_a_slowed_core_are_not_quiet() -> None:
    slowed = measured("starlette_bare", 10.0, 20.0, 10.2, 19.0, 10.1)
    slowed.speeds = [1.0, 0.5, 0.95, 0.55, 0.9]
    assert slowed.quiet_count == 3
    assert slowed.median_us == 10.1
    assert slowed.spread < 0.03


def test_with_too_few_samples_at_full_speed_the_other_processes_share_decides() -> None:
    slowed = measured("starlette_bare", 10.0, 20.0, 11.0, 19.0, 12.0)
    slowed.speeds = [0.8, 1.0, 0.7, 0.55, 1.0]
    slowed.noise = [0.0, 0.0, 0.5, 0.0, 0.0]
    assert slowed.quiet_count == 2
    assert sorted(slowed.quiet) == [10.0 / 1e6, 12.0 / 1e6, 19.0 / 1e6, 20.0 / 1e6]


def test_a_verdict_from_slowed_samples_is_marked_noisy() -> None:
    bare = measured("starlette_bare", 10.0, 10.0, 10.0)
    hit = measured("starlette_bg_hit", 12.0, 12.0, 12.0)
    hit.speeds = [0.5, 1.0, 0.6]
    found = target(targets([bare, hit], None), "cache hit <= +3")
    assert found.verdict == "met (noisy)"


def test_the_report_says_how_often_the_core_ran_slow() -> None:
    bare = measured("starlette_bare", 10.0, 20.0)
    bare.speeds = [1.0, 0.5]
    report = Report(
        started="now",
        command="bench",
        machine={},
        settings={"other_processes_cpu": {"in-process part": 0.01}},
        inprocess=[bare],
        served=None,
        served_note="",
        targets=[],
    )
    assert report._noise_lines("- ") == [
        "- other processes used 1% of all CPUs during the in-process part",
        "- the core ran below 85% of its full speed around 1 of 2 in-process samples "
        "(slowest: 50%) (a throttled core: see the quiet columns)",
    ]


def test_the_speed_probe_times_its_loop() -> None:
    assert 0.0 < speed_probe() < 1.0


def test_a_served_target_shows_the_median_of_the_rounds_paired_ratios() -> None:
    def rounds(key: str, *rates: float) -> ServedResult:
        result = ServedResult(key, key, None)
        result.runs.extend(WrkRun(rate, 1.0, 2.0, 1000, 0, 0, others=0.0) for rate in rates)
        return result

    runs = [
        rounds("starlette_bare", 30_000, 40_000, 30_000),  # one lucky round
        rounds("starlette_bg_hit", 27_000, 27_300, 27_600),
    ]
    found = target(targets([], runs), "cache hit >= 0.90x")
    assert found.met is False  # still judged on the best rounds
    assert found.figure == (
        "0.69x (27,600 / 40,000 req/s; the rounds' paired ratios, median: 0.90x)"
    )


def test_a_round_on_a_slowed_server_core_is_not_quiet() -> None:
    result = ServedResult("starlette_bg_hit", "hit", "starlette_bare")
    result.runs.extend(
        WrkRun(rate, 1.0, 2.0, 1000, 0, 0, others=0.0, core_speed=speed)
        for rate, speed in ((9_000, 0.6), (8_000, 1.0), (7_900, 0.9))
    )
    assert [run.requests_per_second for run in result.quiet] == [8_000, 7_900]
    assert result.best is not None
    assert result.best.requests_per_second == 8_000


def test_with_no_round_at_full_speed_the_least_disturbed_two_count_and_the_verdict_is_noisy() -> (
    None
):
    def slowed(key: str, *rounds: tuple[float, float, float]) -> ServedResult:
        result = ServedResult(key, key, None)
        result.runs.extend(
            WrkRun(rate, 1.0, 2.0, 1000, 0, 0, others=others, core_speed=speed)
            for rate, others, speed in rounds
        )
        return result

    hit = slowed("starlette_bg_hit", (9_000, 0.0, 0.5), (8_000, 0.0, 0.8), (8_500, 0.05, 0.7))
    assert [run.requests_per_second for run in hit.quiet] == [8_000, 8_500]
    bare = slowed("starlette_bare", (9_000, 0.0, 1.0))
    assert target(targets([], [bare, hit]), "cache hit >= 0.90x").verdict == "met (noisy)"


def test_the_core_speed_within_each_window_is_the_mean_of_its_probes() -> None:
    probes = [(float(when), seconds) for when, seconds in enumerate([1.0] * 9 + [2.0, 4.0])]
    assert window_speeds(probes, [(0.0, 2.5), (8.5, 10.0), (20.0, 21.0)]) == [
        1.0,
        (0.5 + 0.25) / 2,
        None,
    ]
    assert window_speeds([], [(0.0, 1.0)]) == [None]


def test_the_core_watch_times_its_loop_until_closed() -> None:
    watch = CoreWatch([], interval=0.01)
    try:
        started = time.monotonic()
        deadline = started + 30
        while len(watch.probes) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(watch.probes) >= 3
        assert watch.speeds([(started - 60, time.monotonic())])[0] is not None
    finally:
        watch.close()
    assert watch._process.returncode is not None


def test_the_report_says_how_often_the_server_core_ran_slow() -> None:
    result = ServedResult("starlette_bare", "bare", None)
    result.runs.extend(
        WrkRun(8_000, 1.0, 2.0, 1000, 0, 0, others=0.0, core_speed=speed) for speed in (1.0, 0.6)
    )
    report = Report(
        started="now",
        command="bench",
        machine={},
        settings={},
        inprocess=[],
        served=[result],
        served_note="",
        targets=[],
    )
    assert report._noise_lines("- ") == [
        "- the server's core ran below 85% of its full speed, on average, during 1 of 2 wrk "
        "rounds (slowest: 60%) (a throttled core: see the quiet column)"
    ]
    assert report.as_json()["served"]["starlette_bare"]["rounds"][1]["core_speed"] == 0.6


def test_a_served_target_shows_the_paired_ratios_adjusted_for_the_cores_speed() -> None:
    def rounds(key: str, *runs: tuple[float, float]) -> ServedResult:
        result = ServedResult(key, key, None)
        result.runs.extend(
            WrkRun(rate, 1.0, 2.0, 1000, 0, 0, others=0.0, core_speed=speed) for rate, speed in runs
        )
        return result

    # The bare app's second and third rounds ran on a slowed core (not quiet: the paired
    # ratios of quiet rounds are too few); by req/s alone the hit beat it there, over each
    # round's core speed every pair says 0.90x.
    runs = [
        rounds("starlette_bare", (10_000, 1.0), (5_000, 0.5), (6_000, 0.6)),
        rounds("starlette_bg_hit", (9_000, 1.0), (9_000, 1.0), (7_200, 0.8)),
    ]
    found = target(targets([], runs), "cache hit >= 0.90x")
    assert found.figure == (
        "0.90x (9,000 / 10,000 req/s; each app's req/s over its core's speed, median of the "
        "rounds: 0.90x)"
    )
