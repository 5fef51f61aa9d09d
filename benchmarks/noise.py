"""The noise of a shared machine: CPU taken by other processes, and a core running slow.

The machine's busy time (``/proc/stat``, every CPU together) minus the CPU time of this
process, of its reaped children (``os.times``) and of any still-running processes of ours
(the uvicorn servers, read from ``/proc/<pid>/stat``): what is left was used by processes
the benchmark does not own. Every sample records this share, so that figures can be taken
from the quiet samples only. Linux only; elsewhere the share is unknown (``None``).

A virtual machine's host can also slow a core down without any of it showing in
``/proc/stat`` (seen on 2026-11-29: a fixed loop took 4.2 ms, then 8 to 10 ms, in phases of
0.1 to 1 s, on each core independently). ``speed_probe`` times a fixed piece of work around
each in-process sample, so that samples taken while the core ran slow count as noisy too.
Under uvicorn the server's core is busy, so ``CoreWatch`` times the same work every 0.2 s
from a process pinned beside the server, by its own CPU time (``time.thread_time``): the
server's turns on the core do not count, a core the host slows down does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter

__all__ = [
    "FULL_SPEED",
    "QUIET",
    "CoreWatch",
    "CpuMeter",
    "process_cpu_seconds",
    "speed_probe",
    "window_speeds",
]

QUIET = 0.10
"""A sample is quiet when other processes used at most this share of all CPUs."""

FULL_SPEED = 0.85
"""An in-process sample is quiet only if, besides, the probes around it ran at least this
share of the run's full speed (its tenth-percentile probe)."""

_PROBE_STEPS = 20_000  # about 1 ms of bytecode on a fast core


def speed_probe() -> float:
    """Seconds a fixed piece of pure-Python work takes now, on the core this runs on."""
    started = perf_counter()
    total = 0
    for step in range(_PROBE_STEPS):
        total += step
    return perf_counter() - started


def _machine_seconds() -> tuple[float, float] | None:
    """Busy and total CPU seconds of every CPU together, from ``/proc/stat``."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    except (OSError, IndexError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields)
    hz = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq + steal
    return busy / hz, (busy + idle + iowait) / hz


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process, or ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuMeter:
    """Started on creation; ``others()`` is the share other processes used since.

    Args:
        running: returns the CPU seconds used so far by processes of ours that have not
            been reaped yet (they are not in ``os.times``).
    """

    def __init__(self, running: Callable[[], float] | None = None) -> None:
        self._running = running
        self._machine = _machine_seconds()
        self._own = _own_seconds() + (running() if running else 0.0)

    def others(self) -> float | None:
        """The share of the machine's CPU capacity used by other processes (0 to 1)."""
        end = _machine_seconds()
        if self._machine is None or end is None or end[1] <= self._machine[1]:
            return None
        own = _own_seconds() + (self._running() if self._running else 0.0) - self._own
        busy = end[0] - self._machine[0]
        return min(1.0, max(0.0, busy - own) / (end[1] - self._machine[1]))


_WATCHER = f"""
import sys, time
while True:
    started = time.thread_time()
    total = 0
    for step in range({_PROBE_STEPS}):
        total += step
    print(time.monotonic(), time.thread_time() - started, flush=True)
    time.sleep(float(sys.argv[1]))
"""


def window_speeds(
    probes: Sequence[tuple[float, float]], windows: Sequence[tuple[float, float]]
) -> list[float | None]:
    """The core's mean speed within each ``(start, end)`` window (monotonic seconds).

    ``probes`` are ``(when, seconds)`` timings of the same work. Full speed is the tenth
    percentile of all of them, as for the in-process probes; a window no probe fell in
    has no speed (``None``).
    """
    timings = sorted(seconds for _, seconds in probes if seconds > 0)
    if not timings:
        return [None] * len(windows)
    full = timings[len(timings) // 10]
    speeds: list[float | None] = []
    for start, end in windows:
        inside = [
            full / seconds for when, seconds in probes if start <= when <= end and seconds > 0
        ]
        speeds.append(sum(inside) / len(inside) if inside else None)
    return speeds


class CoreWatch:
    """Times a fixed piece of work every ``interval`` seconds on one core, until closed.

    Args:
        prefix: the command prefix that pins a process to the core (``taskset -c N``).
        interval: seconds between two timings; each takes about 1 ms of the core.
    """

    def __init__(self, prefix: Sequence[str], interval: float = 0.2) -> None:
        self.probes: list[tuple[float, float]] = []
        self._process = subprocess.Popen(  # noqa: S603 - our own fixed command line
            [*prefix, sys.executable, "-c", _WATCHER, str(interval)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            fields = line.split()
            if len(fields) == 2:  # not a line cut short when the process was ended
                self.probes.append((float(fields[0]), float(fields[1])))

    def speeds(self, windows: Sequence[tuple[float, float]]) -> list[float | None]:
        """The core's mean speed within each window, from the timings so far."""
        return window_speeds(list(self.probes), windows)

    def close(self) -> None:
        self._process.terminate()
        self._process.wait()
        self._reader.join(timeout=5)
        if self._process.stdout is not None:
            self._process.stdout.close()
