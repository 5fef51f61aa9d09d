"""The machine, the tables, the targets: rendered as text for stdout and as Markdown/JSON."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.inprocess import Measurement
from benchmarks.noise import FULL_SPEED, QUIET
from benchmarks.served import ServedResult

__all__ = ["Report", "Target", "machine", "targets"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "bearerguard",
    "starlette",
    "fastapi",
    "flask",
    "uvicorn",
    "uvloop",
    "httptools",
    "PyJWT",
    "cryptography",
    "structlog",
    "cachetools",
    "httpx",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    head = subprocess.run(  # noqa: S603 - fixed arguments, read-only
        [git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(  # noqa: S603 - fixed arguments, read-only
        [git, "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head or 'unknown'}{' (with uncommitted changes)' if dirty else ''}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from cryptography.hazmat.backends.openssl import backend

    versions = {name: _version(name) for name in PACKAGES}
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cpus": affinity,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "openssl": backend.openssl_version_text(),
        "packages": versions,
        "git": _git(),
    }


@dataclass(frozen=True, slots=True)
class Target:
    """One of the project's performance targets, and how this run did against it."""

    goal: str
    figure: str
    met: bool | None  # None: not measured in this run
    noisy: bool = False  # measured without enough quiet samples: take the verdict lightly

    @property
    def verdict(self) -> str:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[self.met]
        return f"{verdict} (noisy)" if self.noisy and self.met is not None else verdict


def _by_key(items: list[Any]) -> dict[str, Any]:
    return {item.key: item for item in items}


def _quiet_case(case: Measurement) -> bool:
    return case.quiet_count >= min(3, len(case.samples))


def _quiet_result(result: ServedResult) -> bool:
    return any(run.quiet for run in result.runs)


def _paired(ours: ServedResult, base: ServedResult) -> str:
    """The median over rounds of the two apps' req/s ratio, each pair from the same round.

    The apps take turns within a round, so a pair was measured seconds apart. One lucky or
    unlucky round of either app moves the best-round ratio; it hardly moves this one. Beside
    it, the same median with each round's req/s divided by its core's mean speed.
    """
    pairs = [
        (mine, theirs)
        for mine, theirs in zip(ours.runs, base.runs, strict=False)
        if theirs.requests_per_second > 0
    ]
    quiet = [(mine, theirs) for mine, theirs in pairs if mine.quiet and theirs.quiet]
    chosen = quiet or pairs
    ratios = [mine.requests_per_second / theirs.requests_per_second for mine, theirs in chosen]
    figure = ""
    if len(ratios) >= 2:
        figure = f"; the rounds' paired ratios, median: {statistics.median(ratios):.2f}x"
    # Every round, each app's req/s over its core's mean speed: on a core the host throttles
    # through most rounds, the figure the quiet rounds are too few to give (not a verdict).
    adjusted = [
        (mine.requests_per_second / mine.core_speed)
        / (theirs.requests_per_second / theirs.core_speed)
        for mine, theirs in pairs
        if mine.core_speed and theirs.core_speed
    ]
    if len(adjusted) >= 2:
        figure += (
            f"{',' if figure else ';'} each app's req/s over its core's speed, median of the "
            f"rounds: {statistics.median(adjusted):.2f}x"
        )
    return figure


def _beside(runs: dict[str, ServedResult], key: str, label: str) -> str:
    """Another app's ratio to the bare Starlette app, printed beside a target's figure."""
    other, bare = runs.get(key), runs.get("starlette_bare")
    if other is None or bare is None or not other.best or not bare.best:
        return ""
    return f"; {label}: {other.best.requests_per_second / bare.best.requests_per_second:.2f}x"


def _repeats_within(
    ours: Measurement, base: Measurement, within: Callable[[float, float], bool]
) -> str:
    """How many repeats met an in-process target on their own.

    A repeat times every case once, in turn, so its two samples were taken side by side: the
    count says whether a verdict near the bound is a close call or a steady result.
    """
    pairs = list(zip(ours.samples, base.samples, strict=False))
    met = sum(1 for mine, theirs in pairs if within(mine, theirs))
    return f"; {met} of {len(pairs)} repeats within it"


def targets(inprocess: list[Measurement], served: list[ServedResult] | None) -> list[Target]:
    """Evaluate the project's targets against this run's figures."""
    cases: dict[str, Measurement] = _by_key(inprocess)
    runs: dict[str, ServedResult] = _by_key(served or [])
    found: list[Target] = []

    goal = "cache hit <= +3 µs per request (in-process, accepted-audit off)"
    hit, bare = cases.get("starlette_bg_hit"), cases.get("starlette_bare")
    if hit is None or bare is None:
        found.append(Target(goal, "-", None))
    else:
        delta = hit.median_us - bare.median_us
        noisy = not (_quiet_case(hit) and _quiet_case(bare))
        figure = f"{delta:+.2f} µs ({hit.median_us:.2f} vs {bare.median_us:.2f} µs/request"
        figure += _repeats_within(hit, bare, lambda mine, theirs: (mine - theirs) * 1e6 <= 3.0)
        found.append(Target(goal, figure + ")", delta <= 3.0, noisy))

    def ratio(key: str, baseline: str, bound: float, goal: str, extra: str = "") -> None:
        ours, base = runs.get(key), runs.get(baseline)
        ours_run = None if ours is None or ours.error else ours.best
        base_run = None if base is None or base.error else base.best
        if ours is None or base is None or ours_run is None or base_run is None:
            found.append(Target(goal, "-", None))
            return
        value = ours_run.requests_per_second / base_run.requests_per_second
        figure = (
            f"{value:.2f}x ({ours_run.requests_per_second:,.0f} / "
            f"{base_run.requests_per_second:,.0f} req/s{_paired(ours, base)}{extra}"
        )
        noisy = not (_quiet_result(ours) and _quiet_result(base))
        if ours.cpu_us is not None and base.cpu_us is not None:
            by_cpu = base.cpu_us / ours.cpu_us
            figure += f"; by server CPU per request: {by_cpu:.2f}x"
            if noisy:
                # No quiet round: req/s measured the other processes; judge by CPU time.
                figure += ", the verdict's basis: no quiet round"
                value = by_cpu
        found.append(Target(goal, figure + ")", value >= bound, noisy))

    ratio(
        "starlette_bg_hit",
        "starlette_bare",
        0.90,
        "cache hit >= 0.90x bare rps under uvicorn, accepted-audit sampled off",
        # The reference SHA-256 lookup: the floor under any cache hit.
        _beside(runs, "starlette_hash_lookup", "the SHA-256 lookup alone, no checks"),
    )
    ratio(
        "starlette_bg_hit_audited",
        "starlette_bare",
        0.75,
        "cache hit >= 0.75x bare rps under uvicorn, every decision audited",
        _beside(
            runs,
            "starlette_bg_hit_audit_dropped",
            "events dropped by the app's first processor, the library's share",
        ),
    )

    goal = "cache miss <= 0.5x the cost of jwt.decode (same RS256 token)"
    miss, decode = cases.get("bg_miss"), cases.get("jwt_decode")
    if miss is None or decode is None:
        found.append(Target(goal, "-", None))
    else:
        value = miss.median_us / decode.median_us
        figure = f"{value:.3f}x ({miss.median_us:.1f} / {decode.median_us:.1f} µs"
        figure += _repeats_within(miss, decode, lambda mine, theirs: mine <= 0.5 * theirs)
        noisy = not (_quiet_case(miss) and _quiet_case(decode))
        found.append(Target(goal, figure + ")", value <= 0.5, noisy))

    audited = runs.get("fastapi_bg_hit_audited")
    theirs = runs.get("fastapi_httpbearer")
    extra = ", accepted-audit off"
    if audited is not None and theirs is not None and audited.best and theirs.best:
        value = audited.best.requests_per_second / theirs.best.requests_per_second
        extra += f"; every decision audited: {value:.2f}x"
    ratio(
        "fastapi_bg_hit",
        "fastapi_httpbearer",
        2.0,
        "FastAPI + bearerguard >= 2x the rps of FastAPI HTTPBearer + PyJWT",
        extra,
    )
    return found


def _table(header: list[str], rows: list[list[str]], *, markdown: bool) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return lines
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        return "  " + "  ".join(cells).rstrip()

    return [
        line(header),
        "  " + "  ".join("-" * width for width in widths),
        *[line(row) for row in rows],
    ]


def _slowed(core: str, how: str, speeds: list[float], samples: str, column: str) -> str:
    """The report's line saying how many ``samples`` ran on a slowed core ("" for none)."""
    if not speeds:
        return ""
    slow = sum(1 for speed in speeds if speed < FULL_SPEED)
    warning = f" (a throttled core: see the quiet {column})" if slow else ""
    return (
        f"{core} ran below {FULL_SPEED:.0%} of its full speed{how} {slow} of {len(speeds)} "
        f"{samples} (slowest: {min(speeds):.0%}){warning}"
    )


@dataclass(slots=True)
class Report:
    """Everything one run found."""

    started: str
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    inprocess: list[Measurement]
    served: list[ServedResult] | None
    served_note: str
    targets: list[Target]

    def _noise_lines(self, bullet: str) -> list[str]:
        lines = []
        for part, share in self.settings.get("other_processes_cpu", {}).items():
            if share is None:
                continue
            warning = " (busy: see the quiet columns)" if share > QUIET else ""
            lines.append(
                f"{bullet}other processes used {share:.0%} of all CPUs during the {part}{warning}"
            )
        speeds = [speed for case in self.inprocess for speed in case.speeds if speed is not None]
        rounds = [
            run.core_speed
            for result in self.served or []
            for run in result.runs
            if run.core_speed is not None
        ]
        slowed = (
            _slowed("the core", " around", speeds, "in-process samples", "columns"),
            _slowed("the server's core", ", on average, during", rounds, "wrk rounds", "column"),
        )
        lines.extend(bullet + line for line in slowed if line)
        return lines

    def _inprocess_rows(self, group: str) -> list[list[str]]:
        cases = _by_key(self.inprocess)
        rows = []
        for case in self.inprocess:
            if case.group != group:
                continue
            base = cases.get(case.baseline) if case.baseline else None
            delta = "-" if base is None else f"{case.median_us - base.median_us:+.1f}"
            ratio = "1.00x" if base is None else f"{case.median_us / base.median_us:.2f}x"
            rows.append(
                [
                    case.label,
                    f"{case.median_us:.1f}",
                    f"{case.best_us:.1f}",
                    delta,
                    ratio,
                    f"{case.spread:.0%}",
                    f"{case.quiet_count}/{len(case.samples)}",
                ]
            )
        return rows

    def _verify_rows(self) -> list[list[str]]:
        cases = _by_key(self.inprocess)
        baselines = {case.baseline for case in self.inprocess}
        rows = []
        for case in self.inprocess:
            if case.group != "verify":
                continue
            base = cases.get(case.baseline) if case.baseline else None
            if base is not None:
                ratio = f"{case.median_us / base.median_us:.2f}x"
            else:
                ratio = "1.00x" if case.key in baselines else "-"
            rows.append(
                [
                    case.label,
                    f"{case.median_us:.1f}",
                    f"{case.best_us:.1f}",
                    ratio,
                    f"{case.spread:.0%}",
                    f"{case.quiet_count}/{len(case.samples)}",
                ]
            )
        return rows

    def _served_rows(self) -> list[list[str]]:
        results = _by_key(self.served or [])
        rows = []
        for result in self.served or []:
            run = result.best
            if result.error or run is None:
                rows.append([result.label, "error", *["-"] * 8])
                continue
            base = results.get(result.baseline) if result.baseline else None
            base_run = None if base is None or base.error else base.best
            ratio = (
                "1.00x"
                if result.baseline is None
                else (
                    "-"
                    if base_run is None
                    else f"{run.requests_per_second / base_run.requests_per_second:.2f}x"
                )
            )
            cpu, base_cpu = result.cpu_us, None if base is None else base.cpu_us
            if cpu is None:
                cpu_ratio = "-"
            elif result.baseline is None:
                cpu_ratio = "1.00x"
            else:
                cpu_ratio = "-" if base_cpu is None else f"{base_cpu / cpu:.2f}x"
            rows.append(
                [
                    result.label,
                    f"{run.requests_per_second:,.0f}",
                    ratio,
                    f"{run.p50_ms:.2f}",
                    f"{run.p99_ms:.2f}",
                    "-" if cpu is None else f"{cpu:.1f}",
                    cpu_ratio,
                    "-" if run.utilization is None else f"{run.utilization:.2f}",
                    f"{result.spread:.0%}",
                    f"{sum(run.quiet for run in result.runs)}/{len(result.runs)}",
                ]
            )
        return rows

    def lines(self, *, markdown: bool) -> list[str]:
        """The report as text (aligned columns) or Markdown."""
        m = self.machine
        h = "## " if markdown else ""
        bullet = "- " if markdown else "  "
        packages = ", ".join(f"{name} {version}" for name, version in m["packages"].items())
        out = [
            ("# " if markdown else "") + f"bearerguard benchmarks, {self.started}",
            "",
            f"{bullet}command: `{self.command}`"
            if markdown
            else f"{bullet}command: {self.command}",
            f"{bullet}machine: {m['cpu']}, {m['cores']} cores "
            f"(usable: {m['usable_cpus']}), {m['platform']}",
            f"{bullet}Python: {m['python']}; OpenSSL: {m['openssl']}",
            f"{bullet}packages: {packages}",
            f"{bullet}git: {m['git']}",
            f"{bullet}token: RS256, 2048-bit key, {self.settings['token_bytes']} bytes; "
            "JWKS served by a DevIssuer on 127.0.0.1",
            f"{bullet}audit logging (all cases): {self.settings['audit_config']}",
            *self._noise_lines(bullet),
            "",
            f"{h}In-process, per request",
            "",
            f"Apps called directly with a prebuilt scope; {self.settings['repeats']} repeats of "
            f"~{self.settings['seconds_per_repeat']}s each, interleaved; µs/request is the median "
            f"of the quiet repeats (other processes <= {QUIET:.0%} of all CPUs, and a fixed "
            f"loop timed before and after ran at >= {FULL_SPEED:.0%} of the run's full speed, "
            "its tenth-percentile timing; the three quietest when fewer), best the fastest "
            "repeat, quiet how many were quiet. The "
            f"cache-miss row uses {self.settings['fresh_tokens']} distinct pre-minted tokens per "
            "repeat against a new guard. Δ and x are against the bare app of the same "
            "framework; spread is (max-min)/median of the quiet repeats.",
            "",
        ]
        header = ["app", "µs/request", "best", "Δ µs vs bare", "x bare", "spread", "quiet"]
        out += _table(header, self._inprocess_rows("starlette"), markdown=markdown)
        out.append("")
        out += _table(header, self._inprocess_rows("fastapi"), markdown=markdown)
        out.append("")
        out += _table(header, self._inprocess_rows("flask"), markdown=markdown)
        out += [
            "",
            f"{h}Token verification alone (the same RS256 token)",
            "",
        ]
        out += _table(
            ["operation", "µs/op", "best", "x jwt.decode", "spread", "quiet"],
            self._verify_rows(),
            markdown=markdown,
        )
        out += ["", f"{h}Under uvicorn + wrk", "", self.served_note, ""]
        if self.served:
            out += _table(
                [
                    "app",
                    "req/s",
                    "x bare",
                    "p50 ms",
                    "p99 ms",
                    "CPU µs/req",
                    "x bare (CPU)",
                    "util",
                    "spread",
                    "quiet",
                ],
                self._served_rows(),
                markdown=markdown,
            )
            errors = [f"{r.label}: {r.error}" for r in self.served if r.error]
            if errors:
                out += ["", "errors:", *errors]
        out += ["", f"{h}Targets", ""]
        if markdown:
            out += _table(
                ["target", "this run", "verdict"],
                [[t.goal, t.figure, t.verdict] for t in self.targets],
                markdown=True,
            )
        else:
            out += [f"  [{t.verdict:>20}]  {t.goal}: {t.figure}" for t in self.targets]
        return out

    def as_json(self) -> dict[str, Any]:
        """A machine-readable form of the same figures."""

        def served(result: ServedResult) -> dict[str, Any]:
            run = result.best
            return {
                "label": result.label,
                "baseline": result.baseline,
                "error": result.error,
                "requests_per_second": None if run is None else run.requests_per_second,
                "p50_ms": None if run is None else run.p50_ms,
                "p99_ms": None if run is None else run.p99_ms,
                "server_cpu_us_per_request": result.cpu_us,
                "rounds": [
                    {
                        "requests_per_second": r.requests_per_second,
                        "p50_ms": r.p50_ms,
                        "p99_ms": r.p99_ms,
                        "server_cpu_us_per_request": r.server_cpu_us,
                        "utilization": r.utilization,
                        "others_cpu_share": r.others,
                        "core_speed": None if r.core_speed is None else round(r.core_speed, 3),
                    }
                    for r in result.runs
                ],
            }

        return {
            "started": self.started,
            "command": self.command,
            "machine": self.machine,
            "settings": self.settings,
            "inprocess": {
                case.key: {
                    "label": case.label,
                    "group": case.group,
                    "baseline": case.baseline,
                    "median_us": round(case.median_us, 3),
                    "best_us": round(case.best_us, 3),
                    "iterations": case.iterations,
                    "samples_us": [round(s * 1e6, 3) for s in case.samples],
                    "others_cpu_share": case.noise,
                    "core_speed": [None if v is None else round(v, 3) for v in case.speeds],
                }
                for case in self.inprocess
            },
            "served": None if self.served is None else {r.key: served(r) for r in self.served},
            "served_note": self.served_note,
            "targets": [{"goal": t.goal, "figure": t.figure, "met": t.met} for t in self.targets],
        }
