"""Where an audited request's time goes inside a uvicorn server, timed from within.

Usage (from the repository root; needs wrk):

    python3 scripts/dev.py event-inside                 # about 1 minute
    python3 scripts/dev.py event-inside --seconds 10

One ``token.accepted`` event costs a few µs in a tight loop, but an audited cache hit costs
the server several times that more CPU per request than an unaudited one. This serves three
apps under uvicorn (uvloop, httptools), as ``benchmarks/run.py`` does, and drives each with
wrk: the bare app, the cache hit with accepted events sampled off, and the cache hit with
every decision audited through the benchmarks' structlog pipeline, in which timers wrap each
part of the event: bearerguard's call as a whole (``Verified.record_accepted``), each of the
application's processors and its sink. The report gives each part's mean time per event
inside the server, and what is left of the audited request's extra CPU time once the event
itself is counted: the rest of the request, running slower after it.

Each timer reads ``perf_counter`` twice (about 0.1 µs a pair here); the audited server runs
a little slower than unwrapped. Benchmarks never assert: this is a measurement.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from benchmarks.apps import AUDIT_CONFIG, Settings, audit_processors  # noqa: E402

TIMINGS_ENV = "BENCH_TIMINGS_FILE"
_CALL = "bearerguard's call, in all (Verified.record_accepted)"
_SINK = "the sink (BytesLogger: write and flush)"

_totals: dict[str, list[float]] = {}
_devnull: list[Any] = []


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    totals = _totals.setdefault(name, [0.0, 0.0])

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[0] += 1
            totals[1] += time.perf_counter() - started

    return timed


class _TimedSink:
    """The benchmarks' ``BytesLogger`` on /dev/null, its ``msg`` timed."""

    def __init__(self) -> None:
        if not _devnull:
            _devnull.append(open(os.devnull, "wb"))  # noqa: SIM115 - open for the process's life
        self.msg = self.info = _timed(_SINK, structlog.BytesLogger(_devnull[0]).msg)


def _write_timings() -> None:
    path = os.environ.get(TIMINGS_ENV)
    if path:
        lines = [f"{name}\t{count:.0f}\t{total:.9f}" for name, (count, total) in _totals.items()]
        Path(path).write_text("\n".join(lines) + "\n")


class _WritesTimingsAtShutdown:
    """The app, writing the timings when the server shuts down (its lifespan's end)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                _write_timings()
            return message

        await self.app(scope, receiving if scope["type"] == "lifespan" else receive, send)


def create_timed() -> ASGIApp:
    """uvicorn factory: the audited cache-hit app, every part of its events timed."""
    from bearerguard import BearerGuard
    from bearerguard import guard as guard_module
    from benchmarks.apps.starlette_apps import build_bearerguard

    settings = Settings.from_env()
    processors = [_timed(getattr(p, "__name__", type(p).__name__), p) for p in audit_processors()]
    bound: Any = structlog.make_filtering_bound_logger(logging.INFO)
    guard = BearerGuard(  # guard_for's settings, with the timed logger
        issuer=settings.issuer,
        audience=settings.audience,
        jwks_uri=settings.jwks_uri,
        audit_sample_accepted=1.0,
        audit_logger=bound(_TimedSink(), processors, {}),
    )
    verified: Any = guard_module.Verified
    verified.record_accepted = _timed(_CALL, verified.record_accepted)
    return _WritesTimingsAtShutdown(build_bearerguard(settings, guard=guard))


def _serve(factory: str, settings: Settings, port: int, timings: Path | None) -> Any:
    from benchmarks.served import pinning, uvicorn_command

    env = {**os.environ, **settings.env()}
    env.pop("PYTHONPATH", None)
    if timings is not None:
        env[TIMINGS_ENV] = str(timings)
    command = [*pinning()[0], *uvicorn_command(factory, port)]
    return subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603 - our own command line


_APPS = {
    "bare": ("benchmarks.apps.starlette_apps:create_bare", "off"),
    "hit, accepted-audit off": ("benchmarks.apps.starlette_apps:create_bearerguard", "off"),
    "hit, every decision audited, timed": ("benchmarks.event_inside:create_timed", "all"),
}


def _wait_ready(url: str, token: str) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, headers={"Authorization": f"Bearer {token}"}).raise_for_status()
        except httpx.TransportError:  # noqa: PERF203 - polled until it listens
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return


def _measure(seconds: int, rounds: int, timings: Path) -> dict[str, float]:
    """Serve the apps, drive each with wrk in interleaved rounds: median CPU µs per request."""
    from bearerguard.testing import DevIssuer
    from benchmarks.noise import process_cpu_seconds
    from benchmarks.served import free_port, parse_wrk, pinning

    cpu: dict[str, list[float]] = {label: [] for label in _APPS}
    with DevIssuer(algorithms=("RS256",), jwks_max_age=3600) as issuer:
        token = issuer.mint(scopes=["items:read"], expires_in=3600)
        wrk = [*pinning()[1], "wrk", "-t1", "-c32", "-H", f"Authorization: Bearer {token}"]
        servers: dict[str, tuple[Any, str]] = {}
        try:
            for label, (factory, audit) in _APPS.items():
                settings = Settings(issuer.url, issuer.jwks_uri, issuer.audience, audit)  # type: ignore[arg-type]
                port = free_port()
                process = _serve(factory, settings, port, timings if audit == "all" else None)
                servers[label] = (process, f"http://127.0.0.1:{port}/items")
            for _, url in servers.values():
                _wait_ready(url, token)
                subprocess.run([*wrk, "-d2s", url], capture_output=True, check=True)  # noqa: S603
            for _ in range(rounds):
                for label, (process, url) in servers.items():
                    before = process_cpu_seconds(process.pid) or 0.0
                    done = subprocess.run(  # noqa: S603 - our own command line
                        [*wrk, "--latency", f"-d{seconds}s", url],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    used = (process_cpu_seconds(process.pid) or 0.0) - before
                    cpu[label].append(used / parse_wrk(done.stdout).requests * 1e6)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    return {label: statistics.median(values) for label, values in cpu.items()}


def _report(cpu: dict[str, float], parts: dict[str, float]) -> None:
    print(f"audit pipeline: {AUDIT_CONFIG}\n")
    print("| server | CPU µs per request (median of the rounds) |\n|---|---|")
    for label, value in cpu.items():
        print(f"| {label} | {value:.1f} |")
    off, audited = (cpu[label] for label in list(_APPS)[1:])
    event = parts.pop(_CALL)
    inside = sum(parts.values())
    print("\n| inside the audited server, per event | µs |\n|---|---|")
    print(f"| what auditing adds to a hit's CPU time | {audited - off:.1f} |")
    print(f"| ... bearerguard's call, all of it | {event:.1f} |")
    for name, value in parts.items():
        print(f"| ... ... {name} | {value:.2f} |")
    print(f"| ... ... the rest: bearerguard, structlog's dispatch | {event - inside:.2f} |")
    print(f"| ... the rest of the request, running slower | {audited - off - event:.1f} |")


def main(argv: list[str] | None = None) -> int:
    """Serve the three apps, time them and print the breakdown; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=4, help="wrk seconds per round (4)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="bearerguard-event-inside-"))
    timings = directory / "timings.tsv"
    try:
        cpu = _measure(args.seconds, args.rounds, timings)
        parts = {}
        for line in timings.read_text().splitlines():
            name, count, total = line.split("\t")
            parts[name] = float(total) / float(count) * 1e6
    finally:
        timings.unlink(missing_ok=True)
        directory.rmdir()
    _report(cpu, parts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
