"""Measure what bearerguard costs per request, next to a bare app and the hand-rolled patterns.

Usage (from the repository root):

    python3 scripts/dev.py bench              # the full run, ~4 minutes
    python3 scripts/dev.py bench --quick      # a smoke check, ~30 seconds
    python3 scripts/dev.py bench --no-wrk     # in-process figures only
    python3 scripts/dev.py bench --profile    # cProfile of the cache-hit and cache-miss paths

One run measures, side by side: the in-process cost per request of a bare Starlette and
FastAPI app, the same behind bearerguard (cache hit with and without audit events, and with
every event dropped by the application's first structlog processor; cache miss) and behind
the hand-rolled PyJWT patterns; token verification alone; and requests per
second under uvicorn driven by ``wrk``. The report goes to stdout and to
``benchmarks/results/latest.md`` and ``latest.json`` (``quick.*`` for ``--quick``).
Benchmarks never assert: the targets are reported as met or not met.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 scripts/dev.py bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    parser.add_argument("--no-wrk", action="store_true", help="skip the uvicorn + wrk part")
    parser.add_argument("--no-inprocess", action="store_true", help="skip the in-process part")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 3, quick 1)")
    parser.add_argument("--rounds", type=int, help="wrk rounds per app (default 5, quick 1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--repeats", type=int, help="in-process repeats (default 9, quick 3)")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write <name>.md and <name>.json (default benchmarks/results/latest)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the cache-hit and cache-miss paths instead"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; returns the exit status."""
    from bearerguard.testing import DevIssuer
    from benchmarks.apps import AUDIT_CONFIG, Settings
    from benchmarks.inprocess import Plan, run_inprocess
    from benchmarks.noise import CpuMeter
    from benchmarks.report import Report, machine, targets
    from benchmarks.served import WrkOptions, pinning, run_served, wrk_install_hint, wrk_version

    args = _arguments(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    command = shlex.join(
        ["python3", "scripts/dev.py", "bench", *(sys.argv[1:] if argv is None else argv)]
    )

    with DevIssuer(algorithms=("RS256",), jwks_max_age=3600) as issuer:
        settings = Settings(issuer=issuer.url, jwks_uri=issuer.jwks_uri, audience=issuer.audience)
        token = issuer.mint(scopes=["items:read"], expires_in=3600)

        if args.profile:
            from benchmarks.profiling import profile_paths

            profile_paths(issuer, settings, token)
            return 0

        plan = Plan(
            repeats=args.repeats or (3 if quick else 9),
            seconds_per_repeat=0.05 if quick else 0.2,
            fresh_tokens=200 if quick else 1500,
        )
        noise: dict[str, float | None] = {}
        meter = CpuMeter()
        inprocess = []
        if not args.no_inprocess:
            inprocess = run_inprocess(issuer, settings, token, plan, _progress)
            noise["in-process part"] = meter.others()

        options = WrkOptions(
            threads=1,
            connections=args.connections,
            duration=args.duration or (1 if quick else 3),
            warmup=1 if quick else 2,
            rounds=args.rounds or (1 if quick else 5),
        )
        served = None
        version = wrk_version()
        if args.no_wrk:
            note = "Skipped (--no-wrk)."
        elif version is None:
            note = f"Skipped: wrk is not installed. Install it with: {wrk_install_hint()}"
            _progress(note)
        else:
            _, _, pinned = pinning()
            note = (
                f"uvicorn (1 worker, --loop uvloop --http httptools, no access log) on 127.0.0.1; "
                f"{version.split(' [')[0]} -t{options.threads} -c{options.connections} "
                f"-d{options.duration}s --latency after a {options.warmup}s warm-up; {pinned}. "
                f"Best quiet round of {options.rounds} by req/s (its p50/p99 shown; quiet: other "
                "processes used <= 10% of all CPUs and the server's core ran at >= 85% of its "
                "full speed on average, by a fixed loop timed every 0.2 s beside the server, "
                "else the two quietest rounds count); "
                "x is against the bare app of the same framework; every response checked 2xx. "
                "CPU µs/req: the server process's CPU time per request (median of the quiet "
                "rounds), the figure least disturbed by other processes; util: server CPU time / "
                "run time of the best round (below ~0.9 the server was not the bottleneck)."
            )
            meter = CpuMeter()
            served = run_served(settings, token, options, _progress)
            noise["uvicorn + wrk part"] = meter.others()

        report = Report(
            started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            command=command,
            machine=machine(),
            settings={
                "repeats": plan.repeats,
                "seconds_per_repeat": plan.seconds_per_repeat,
                "fresh_tokens": plan.fresh_tokens,
                "token_bytes": len(token),
                "audit_config": AUDIT_CONFIG,
                "wrk": None if served is None else options.__repr__(),
                "quick": quick,
                "other_processes_cpu": noise,
            },
            inprocess=inprocess,
            served=served,
            served_note=note,
            targets=targets(inprocess, served),
        )

    print("\n".join(report.lines(markdown=False)))
    output = args.output or ROOT / "benchmarks" / "results" / ("quick" if quick else "latest")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text("\n".join(report.lines(markdown=True)) + "\n")
    output.with_suffix(".json").write_text(json.dumps(report.as_json(), indent=2) + "\n")
    print(f"\nwritten: {output.with_suffix('.md')} and {output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
