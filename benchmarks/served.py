"""Throughput under uvicorn (uvloop, httptools), driven by ``wrk`` on the loopback interface.

Every app runs in its own uvicorn process (one worker), pinned to one core with
``taskset``; ``wrk`` runs pinned to another. All servers are started first (an idle server
costs nothing), each is checked to answer 200 and warmed up, then rounds of ``wrk`` runs go
through the apps in turn, so a slow spell of a shared machine spreads over every app. The
figure reported for an app is its best quiet round by requests per second (a round during
which other processes used at most 10% of all CPUs, see ``benchmarks/noise.py``; the two
quietest when none was), with that round's latency percentiles, and the server's CPU time per
request (median of the quiet rounds), which other processes disturb least of all. A round
is quiet only if, besides, the server's core ran at full speed through it: a ``CoreWatch``
pinned beside the server times a fixed piece of work every 0.2 s (a host that slows a core
down slows the server's req/s and its CPU time per request alike, unseen by ``/proc/stat``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import httpx

from benchmarks.apps import AUDIT_DROPPED, PATH, Audit, Settings
from benchmarks.noise import FULL_SPEED, QUIET, CoreWatch, CpuMeter, process_cpu_seconds

__all__ = [
    "SERVED_APPS",
    "ServedApp",
    "ServedResult",
    "WrkOptions",
    "WrkRun",
    "free_port",
    "pinning",
    "run_served",
    "uvicorn_command",
    "wrk_install_hint",
    "wrk_version",
]

ROOT = Path(__file__).resolve().parent.parent
WRK_INSTALL_HINT = "apt-get install -y wrk (Debian/Ubuntu), brew install wrk (macOS)"


@dataclass(frozen=True, slots=True)
class ServedApp:
    """One app to serve: its uvicorn factory and the audit setting it gets."""

    key: str
    label: str
    factory: str
    baseline: str | None
    audit: Audit = "off"


SERVED_APPS = (
    ServedApp("starlette_bare", "Starlette, bare", "starlette_apps:create_bare", None),
    ServedApp(
        "starlette_bg_hit",
        "+ bearerguard, cache hit, accepted-audit off",
        "starlette_apps:create_bearerguard",
        "starlette_bare",
    ),
    ServedApp(
        "starlette_bg_hit_audited",
        "+ bearerguard, cache hit, every decision audited",
        "starlette_apps:create_bearerguard",
        "starlette_bare",
        audit="all",
    ),
    ServedApp(
        "starlette_bg_hit_audit_dropped",
        f"+ bearerguard, cache hit, every decision audited, {AUDIT_DROPPED}",
        "starlette_apps:create_bearerguard",
        "starlette_bare",
        audit="dropped",
    ),
    ServedApp(
        "starlette_hash_lookup",
        "reference: SHA-256 token lookup only (no checks, not bearerguard)",
        "starlette_apps:create_hash_lookup",
        "starlette_bare",
    ),
    ServedApp(
        "starlette_pyjwt_asgi",
        "+ hand-rolled PyJWT, pure ASGI middleware",
        "starlette_apps:create_pyjwt_asgi",
        "starlette_bare",
    ),
    ServedApp(
        "starlette_pyjwt_base",
        "+ hand-rolled PyJWT, BaseHTTPMiddleware",
        "starlette_apps:create_pyjwt_base",
        "starlette_bare",
    ),
    ServedApp("fastapi_bare", "FastAPI, bare", "fastapi_apps:create_bare", None),
    ServedApp(
        "fastapi_bg_hit",
        "+ bearerguard + @requires_scopes, accepted-audit off",
        "fastapi_apps:create_bearerguard",
        "fastapi_bare",
    ),
    ServedApp(
        "fastapi_bg_hit_audited",
        "+ bearerguard + @requires_scopes, every decision audited",
        "fastapi_apps:create_bearerguard",
        "fastapi_bare",
        audit="all",
    ),
    ServedApp(
        "fastapi_httpbearer",
        "+ HTTPBearer() dependency + PyJWT (tutorial pattern)",
        "fastapi_apps:create_httpbearer",
        "fastapi_bare",
    ),
)


@dataclass(frozen=True, slots=True)
class WrkOptions:
    """How ``wrk`` drives each app."""

    threads: int
    connections: int
    duration: int
    warmup: int
    rounds: int


@dataclass(frozen=True, slots=True)
class WrkRun:
    """What one ``wrk`` run reported."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    server_cpu_us: float | None = None
    """The server process's CPU time (user + system) per request, in µs."""
    utilization: float | None = None
    """The server's CPU time over the run's duration: below ~0.9 the server was not the
    bottleneck (the load generator was, or other processes took its core)."""
    others: float | None = None
    """The share of all CPUs other processes used during the run."""
    core_speed: float | None = None
    """The server's core's mean speed during the run against the run's full speed (1.0),
    from a ``CoreWatch``; ``None`` when unwatched (the server not pinned)."""

    @property
    def quiet(self) -> bool:
        """Whether other processes left the machine quiet, and the core ran at full speed."""
        calm = self.others is None or self.others <= QUIET
        return calm and (self.core_speed is None or self.core_speed >= FULL_SPEED)


@dataclass(slots=True)
class ServedResult:
    """Every round of one app, and the best one."""

    key: str
    label: str
    baseline: str | None
    runs: list[WrkRun] = field(default_factory=list)
    error: str | None = None

    @property
    def quiet(self) -> list[WrkRun]:
        """The rounds run while the machine was quiet; else the quietest two."""
        quiet = [run for run in self.runs if run.quiet]
        if quiet:
            return quiet
        return sorted(self.runs, key=_noise)[:2]

    @property
    def best(self) -> WrkRun | None:
        """The quiet round with the most requests per second."""
        return max(self.quiet, key=lambda run: run.requests_per_second, default=None)

    @property
    def cpu_us(self) -> float | None:
        """The median server CPU time per request over the quiet rounds, in µs."""
        figures = [run.server_cpu_us for run in self.quiet if run.server_cpu_us is not None]
        return statistics.median(figures) if figures else None

    @property
    def spread(self) -> float:
        """(max - min) / median of the quiet rounds' requests per second."""
        rates = [run.requests_per_second for run in self.quiet]
        return (max(rates) - min(rates)) / statistics.median(rates) if rates else 0.0


def _noise(run: WrkRun) -> float:
    """How far a round was from quiet: other processes' share, plus the core's slowdown."""
    return (run.others or 0.0) + (1.0 - min(1.0, run.core_speed or 1.0))


def wrk_version() -> str | None:
    """``wrk``'s version line, or ``None`` when it is not installed."""
    path = shutil.which("wrk")
    if path is None:
        return None
    done = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)  # noqa: S603
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else "wrk"


def wrk_install_hint() -> str:
    return WRK_INSTALL_HINT


def pinning() -> tuple[list[str], list[str], str]:
    """``taskset`` prefixes for the server and for wrk, and a sentence saying what they do."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    taskset = shutil.which("taskset")
    if taskset is None or len(cpus) < 2:
        return [], [], "not pinned (needs taskset and two cores)"
    server, client = cpus[0], cpus[1]
    return (
        [taskset, "-c", str(server)],
        [taskset, "-c", str(client)],
        f"uvicorn pinned to CPU {server}, wrk to CPU {client} (taskset)",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(output: str) -> WrkRun:
    """Read requests/s, p50, p99 and error counts from ``wrk --latency`` output."""
    rps = _RPS.search(output)
    requests = _REQUESTS.search(output)
    latencies = {pct: float(value) * _TO_MS[unit] for pct, value, unit in _LATENCY.findall(output)}
    if rps is None or requests is None or set(latencies) != {"50", "99"}:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = _NON_2XX.search(output)
    socket_errors = _SOCKET_ERRORS.search(output)
    return WrkRun(
        requests_per_second=float(rps.group(1)),
        p50_ms=latencies["50"],
        p99_ms=latencies["99"],
        requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    )


def uvicorn_command(factory: str, port: int) -> list[str]:
    """How every served app runs: one uvicorn worker, uvloop, httptools, no access log."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--lifespan",
        "on",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


class _Server:
    def __init__(
        self, app: ServedApp, settings: Settings, prefix: list[str], log: IO[bytes]
    ) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PATH}"
        env = {**os.environ, **settings.env(), "BENCH_AUDIT": app.audit}
        env.pop("PYTHONPATH", None)
        command = [*prefix, *uvicorn_command(f"benchmarks.apps.{app.factory}", self.port)]
        self.log = log
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)  # noqa: S603

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (Linux ``/proc``)."""
        return process_cpu_seconds(self.process.pid)

    def wait_ready(self, authorization: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.process.returncode}: {self._tail()}")
            try:
                response = httpx.get(self.url, headers={"Authorization": authorization}, timeout=5)
            except httpx.TransportError as exc:
                last = repr(exc)
                time.sleep(0.1)
                continue
            if response.status_code == 200:
                return
            raise RuntimeError(f"status {response.status_code}: {response.text[:200]}")
        raise RuntimeError(f"not ready after {timeout:.0f}s ({last}): {self._tail()}")

    def _tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-800:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def _servers(
    apps: tuple[ServedApp, ...], settings: Settings, prefix: list[str]
) -> Iterator[list[_Server]]:
    started: list[_Server] = []
    with tempfile.TemporaryDirectory(prefix="bearerguard-bench-") as directory:
        try:
            for app in apps:
                log = open(Path(directory) / f"{app.key}.log", "w+b")  # noqa: SIM115 - closed below
                started.append(_Server(app, settings, prefix, log))
            yield started
        finally:
            for server in started:
                server.stop()
                server.log.close()


def _wrk(
    wrk: str,
    prefix: list[str],
    server: _Server,
    authorization: str,
    *,
    options: WrkOptions,
    seconds: int,
    running: Callable[[], float],
    windows: list[tuple[float, float]],
) -> WrkRun:
    command = [
        *prefix,
        wrk,
        f"-t{options.threads}",
        f"-c{options.connections}",
        f"-d{seconds}s",
        "--latency",
        "-H",
        f"Authorization: {authorization}",
        server.url,
    ]
    meter = CpuMeter(running)
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own fixed command line
        command, capture_output=True, text=True, check=False, timeout=seconds + 30
    )
    ended = time.monotonic()
    cpu_after = server.cpu_seconds()
    others = meter.others()
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    windows.append((started, ended))  # one per round kept: the runs and windows pair up
    run = replace(parse_wrk(done.stdout), others=others)
    if cpu_before is None or cpu_after is None or not run.requests:
        return run
    used = cpu_after - cpu_before
    return replace(run, server_cpu_us=used / run.requests * 1e6, utilization=used / seconds)


def run_served(
    settings: Settings, token: str, options: WrkOptions, progress: Callable[[str], None]
) -> list[ServedResult]:
    """Serve every app under uvicorn and drive it with wrk; results in report order."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError(f"wrk is not installed: {WRK_INSTALL_HINT}")
    server_prefix, client_prefix, _ = pinning()
    authorization = f"Bearer {token}"
    results = {app.key: ServedResult(app.key, app.label, app.baseline) for app in SERVED_APPS}
    windows: dict[str, list[tuple[float, float]]] = {app.key: [] for app in SERVED_APPS}
    watch = CoreWatch(server_prefix) if server_prefix else None
    try:
        with _servers(SERVED_APPS, settings, server_prefix) as servers:
            _drive(
                servers,
                results,
                windows,
                command=(wrk, client_prefix, authorization),
                options=options,
                progress=progress,
            )
    finally:
        if watch is not None:
            watch.close()
    if watch is not None:
        for result in results.values():
            speeds = watch.speeds(windows[result.key])
            result.runs = [
                replace(run, core_speed=speed)
                for run, speed in zip(result.runs, speeds, strict=True)
            ]
    return [results[app.key] for app in SERVED_APPS]


def _drive(
    servers: list[_Server],
    results: dict[str, ServedResult],
    windows: dict[str, list[tuple[float, float]]],
    *,
    command: tuple[str, list[str], str],
    options: WrkOptions,
    progress: Callable[[str], None],
) -> None:
    """Warm every ready server up, then run the rounds, the apps taking turns in each.

    ``command`` is wrk's path, the prefix pinning it, and the ``Authorization`` value; each
    round's start and end go to ``windows``, by app.
    """
    wrk, client_prefix, authorization = command
    ready: list[_Server] = []
    for server in servers:
        try:
            server.wait_ready(authorization)
        except RuntimeError as exc:
            results[server.app.key].error = str(exc)
            progress(f"{server.app.key}: {exc}")
            continue
        ready.append(server)

    def running() -> float:
        return sum(server.cpu_seconds() or 0.0 for server in servers)

    for server in ready:
        progress(f"warming up {server.app.key} ({options.warmup}s)")
        _wrk(
            wrk,
            client_prefix,
            server,
            authorization,
            options=options,
            seconds=options.warmup,
            running=running,
            windows=[],
        )
    for round_number in range(options.rounds):
        for server in ready:
            result = results[server.app.key]
            if result.error:
                continue
            progress(
                f"wrk round {round_number + 1}/{options.rounds}: {server.app.key} "
                f"({options.duration}s)"
            )
            run = _wrk(
                wrk,
                client_prefix,
                server,
                authorization,
                options=options,
                seconds=options.duration,
                running=running,
                windows=windows[server.app.key],
            )
            if run.non_2xx or run.socket_errors:
                result.error = f"{run.non_2xx} non-2xx responses, {run.socket_errors} socket errors"
            result.runs.append(run)
