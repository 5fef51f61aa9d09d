"""The long fuzz run: the property tests with many examples, and atheris over the parsers.

Two engines, each given a share of ``--seconds``:

* **hypothesis**: ``tests/test_properties.py`` and ``tests/test_properties_wsgi.py`` (header
  parser, compact-JWS parser, claim validation, the ASGI middleware and the Flask/WSGI stack)
  under ``HYPOTHESIS_PROFILE=long`` (5,000 examples per core property, a third of that per
  middleware property), round after round with a new seed each, until the budget is spent.
  A round that would not fit runs the default profile instead. The figures are read from
  ``--hypothesis-show-statistics``.
* **atheris** (coverage-guided libFuzzer, when ``atheris`` is installed: Linux x86_64 wheels
  for CPython 3.10 to 3.14): ``extract_bearer``, ``parse_compact``, ``decode_json_object``
  and the ASGI middleware, each in a process of its own with ``-max_total_time``, started
  from a small seed corpus of genuine tokens. Every input must be refused with the library's
  own errors, accepted only if it is a genuine token, and (middleware) answered 200, 400 or
  401 with exactly one audit event and never an "unexpected" defect.

    python3 scripts/dev.py fuzz --seconds 300               # both engines, about 5 minutes
    python3 scripts/dev.py fuzz --engine atheris --seconds 60 --target parse_compact

Crashing inputs are kept under ``--artifacts`` (a temporary directory by default) and named
in the report; the run exits 1 when any engine found a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bearerguard.testing import DevIssuer

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("extract_bearer", "parse_compact", "decode_json_object", "asgi_middleware")
PROPERTY_FILES = ("tests/test_properties.py", "tests/test_properties_wsgi.py")
CHILD_VARIABLE = "BEARERGUARD_FUZZ_TARGET"
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass
class Figures:
    """What one engine run on one target reported."""

    engine: str
    target: str
    examples: int = 0
    seconds: float = 0.0
    failures: int = 0
    rounds: int = 0
    coverage: str = ""
    details: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0


# -- hypothesis -------------------------------------------------------------------------------

_TEST_HEADER = re.compile(r"^(tests/\S+::\S+):$")
_PHASE = re.compile(r"- during (\w+) phase \(([\d.]+) seconds\)")
_COUNTS = re.compile(r"- (\d+) passing, (\d+) failing, and (\d+) invalid")


def _parse_statistics(text: str, figures: dict[str, Figures]) -> None:
    current: Figures | None = None
    for line in text.splitlines():
        header = _TEST_HEADER.match(line.strip())
        if header:
            name = header.group(1).split("::", 1)[1]
            current = figures.setdefault(name, Figures("hypothesis", name))
            continue
        if current is None:
            continue
        phase = _PHASE.search(line)
        if phase:
            current.seconds += float(phase.group(2))
            continue
        counts = _COUNTS.search(line)
        if counts:
            passing, failing, invalid = (int(x) for x in counts.groups())
            current.examples += passing + failing + invalid
            current.failures += failing


def run_hypothesis(budget: float) -> tuple[list[Figures], list[str]]:
    """Rounds of the property tests with new seeds until ``budget`` seconds are spent."""
    figures: dict[str, Figures] = {}
    problems: list[str] = []
    deadline = time.monotonic() + budget
    long_round = 150.0  # the first estimate of a long-profile round on a small machine
    rounds = 0
    while True:
        remaining = deadline - time.monotonic()
        profile = "long" if remaining >= long_round else "fast"
        if remaining < 15 or (rounds and profile == "fast" and remaining < 25):
            break
        seed = secrets.randbelow(2**32)
        argv = [
            sys.executable, "-m", "pytest", *PROPERTY_FILES, "-q", "-p", "no:cacheprovider",
            "--hypothesis-show-statistics", f"--hypothesis-seed={seed}",
        ]  # fmt: skip
        env = {**os.environ, "HYPOTHESIS_PROFILE": profile}
        print(f"hypothesis round {rounds + 1}: profile {profile}, seed {seed} ...",
              file=sys.stderr, flush=True)  # fmt: skip
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv, cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=max(remaining, 30), check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as expired:
            output = expired.stdout if isinstance(expired.stdout, str) else ""
            _parse_statistics(output, figures)
            problems.append(f"round {rounds + 1} stopped at the time limit (partial figures)")
            break
        took = time.monotonic() - started
        if profile == "long":
            long_round = took * 1.1
        _parse_statistics(done.stdout, figures)
        rounds += 1
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-40:])
            problems.append(f"round {rounds} (seed {seed}) failed:\n{tail}")
    for item in figures.values():
        item.rounds = rounds
    return sorted(figures.values(), key=lambda f: f.target), problems


# -- atheris: the child process ---------------------------------------------------------------


class _Recorder:
    """An audit logger that keeps the event names of the current input."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    info = warning = error = _record


class _DefectHandler(logging.Handler):
    """Turns the guard's "unexpected error" log records into failures."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _extract_bearer_target(
    issuer: DevIssuer, genuine: tuple[str, ...], token_seeds: list[bytes]
) -> tuple[Callable[[bytes], None], list[bytes]]:
    """Header values (split at newlines) through ``extract_bearer``."""
    from bearerguard._core.extract import extract_bearer
    from bearerguard.errors import InvalidRequestError, MalformedTokenError
    from tests.test_properties import is_b64token

    def extract(data: bytes) -> None:
        max_bytes = 16 + (data[0] if data else 0) * 4
        values = data[1:].split(b"\n")[:3] if data else []
        try:
            token = extract_bearer(values, max_bytes=max_bytes)
        except (InvalidRequestError, MalformedTokenError):
            return
        if token is None:
            return
        assert len(values) == 1
        scheme, _, rest = values[0].partition(b" ")
        assert scheme.lower() == b"bearer"
        assert rest.lstrip(b" ") == token.encode("ascii")
        assert is_b64token(token)
        assert len(token) <= max_bytes

    seeds = [b"\xff" + b"Bearer " + t for t in token_seeds]
    seeds += [b"\x10Bearer abc\nBearer def", b"\x00Basic dXNlcjpwYXNz", b"\x40bearer   a.b.c="]
    return extract, seeds


def _parse_compact_target(
    issuer: DevIssuer, genuine: tuple[str, ...], token_seeds: list[bytes]
) -> tuple[Callable[[bytes], None], list[bytes]]:
    """Any text through ``parse_compact``: refused, or strict and canonical."""
    from bearerguard._core.jws import parse_compact
    from bearerguard.errors import AuthError
    from tests.test_properties import check_parsed

    def parse(data: bytes) -> None:
        text = data.decode("utf-8", "surrogateescape")
        try:
            jws = parse_compact(text)
        except AuthError:
            return
        check_parsed(text, jws)

    seeds = [*token_seeds, b"a.b.c", b"e30.e30.c2ln", b"a.b.c.d.e"]
    return parse, seeds


def _decode_json_object_target(
    issuer: DevIssuer, genuine: tuple[str, ...], token_seeds: list[bytes]
) -> tuple[Callable[[bytes], None], list[bytes]]:
    """Segments through the strict JSON decoder, checked against ``json``."""
    from bearerguard._core.jws import decode_json_object
    from bearerguard.errors import MalformedTokenError

    def decode(data: bytes) -> None:
        # Half the inputs are the segment text itself (base64url framing and canonical
        # form), half are raw bytes encoded here (the strict JSON decoder).
        direct = bool(data) and data[0] & 1
        segment = data[1:].decode("latin-1") if direct else _b64u(data[1:])
        if direct and not set(segment) <= _B64URL:
            # The callers' contract: parse_compact's pattern admits only the base64url
            # alphabet. decode_json_object alone would decode "e\x0530" as "e30" ({}), since
            # binascii skips characters outside the alphabet (a hardening note, not a bug).
            return
        try:
            value = decode_json_object(segment, "payload")
        except MalformedTokenError:
            return
        assert isinstance(value, dict)
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        assert _b64u(raw) == segment  # only canonical base64url is accepted
        assert json.loads(raw.decode("utf-8")) == value

    seeds = [
        b"\x00" + raw
        for raw in (b'{"a": 1}', b'{"a": 1, "a": 2}', b"[1]", b'{"x": NaN}', b'{"n": 1e999}')
    ]
    seeds += [b"\x01" + t.split(b".")[1] for t in token_seeds]
    return decode, seeds


def _asgi_middleware_target(
    issuer: DevIssuer, genuine: tuple[str, ...], token_seeds: list[bytes]
) -> tuple[Callable[[bytes], None], list[bytes]]:
    """Authorization headers through the middleware, with the test oracle."""
    from bearerguard.asgi import BearerGuardMiddleware

    recorder = _Recorder()
    defects = _DefectHandler()
    logging.getLogger("bearerguard").addHandler(defects)
    guard = issuer.guard(in_process=True, audit_logger=recorder)
    messages: list[dict[str, Any]] = []

    async def protected(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"protected"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(dict(message))

    app = BearerGuardMiddleware(protected, guard=guard)
    loop = asyncio.new_event_loop()
    bearer = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +(.+)", re.DOTALL)

    def middleware(data: bytes) -> None:
        values = data.split(b"\n")[:3] if data else []
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/protected",
            "raw_path": b"/protected", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"fuzz")] + [(b"authorization", v) for v in values],
            "client": ("127.0.0.1", 50000), "server": ("fuzz", 80),
        }  # fmt: skip
        messages.clear()
        recorder.events.clear()
        defects.records.clear()
        loop.run_until_complete(app(scope, receive, send))
        status = messages[0]["status"]
        names = [event for event, _ in recorder.events]
        assert not defects.records, defects.records[0].getMessage()
        assert status in (200, 400, 401), status
        assert len(names) == 1, names
        if status == 200:
            assert len(values) == 1
            match = bearer.fullmatch(values[0])
            assert match is not None
            assert match.group(1).decode("latin-1") in genuine
            assert names == ["token.accepted"]
        else:
            assert names == ["token.rejected"], names
            headers = dict(messages[0]["headers"])
            assert headers[b"www-authenticate"].startswith(b"Bearer")
            assert not str(recorder.events[0][1].get("detail") or "").startswith("unexpected")

    seeds = [b"Bearer " + t for t in token_seeds]
    seeds += [b"bearer  " + token_seeds[1], b"Bearer " + token_seeds[0] + b"\nBearer x"]
    return middleware, seeds


def _child_target(name: str) -> tuple[Callable[[bytes], None], list[bytes]]:
    """The fuzz target ``name`` and its seed inputs (imports instrumented by the caller)."""
    from bearerguard.testing import DevIssuer

    sys.path.insert(0, str(ROOT))
    builders = {
        "extract_bearer": _extract_bearer_target,
        "parse_compact": _parse_compact_target,
        "decode_json_object": _decode_json_object_target,
        "asgi_middleware": _asgi_middleware_target,
    }
    if name not in builders:
        raise SystemExit(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    issuer = DevIssuer(algorithms=("RS256", "ES256"))  # never started: keys in-process
    genuine = (issuer.mint(scopes=["read"]), issuer.mint(algorithm="ES256", sub="ec-user"))
    token_seeds = [t.encode() for t in (*genuine, issuer.mint_forged())]
    return builders[name](issuer, genuine, token_seeds)


def child_main(name: str) -> None:
    """Run inside the atheris process: instrument bearerguard, then fuzz one target."""
    import atheris

    # Let str comparisons guide the fuzzer. (The "RegEx" hook fails on bytes patterns in
    # atheris 3.0: TypeError in function_hooks.gen_match_recursive.)
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["bearerguard"]):
        import bearerguard._core.extract
        import bearerguard._core.jws
        import bearerguard.asgi
        import bearerguard.guard  # noqa: F401
    target, _seeds = _child_target(name)
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


# -- atheris: the driver ----------------------------------------------------------------------

_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_COV = re.compile(r"#\d+\s+\w+\s+cov: (\d+) ft: (\d+)")


def _write_seeds(name: str, corpus: Path) -> None:
    """Write the target's seed inputs, computed in a fresh process (no instrumentation)."""
    code = (
        "import sys, pathlib; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        "import fuzz; _, seeds = fuzz._child_target(sys.argv[3]);"
        "[pathlib.Path(sys.argv[4], f'seed-{i}').write_bytes(s) for i, s in enumerate(seeds)]"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(ROOT / "scripts"), name, str(corpus)],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip


def run_atheris(
    targets: list[str], budget: float, artifacts: Path
) -> tuple[list[Figures], list[str]]:
    """Each target for an equal share of ``budget`` seconds, in a process of its own."""
    results: list[Figures] = []
    problems: list[str] = []
    share = max(5, int(budget / len(targets)))
    for name in targets:
        print(f"atheris {name}: {share} s ...", file=sys.stderr, flush=True)
        corpus = Path(tempfile.mkdtemp(prefix=f"bearerguard-fuzz-{name}-"))
        try:
            _write_seeds(name, corpus)
            argv = [
                sys.executable, str(Path(__file__).resolve()), f"-max_total_time={share}",
                "-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048", "-max_len=4096",
                f"-artifact_prefix={artifacts}/{name}-", str(corpus),
            ]  # fmt: skip
            started = time.monotonic()
            done = subprocess.run(
                argv, cwd=ROOT, env={**os.environ, CHILD_VARIABLE: name},
                capture_output=True, text=True, timeout=share + 120, check=False,
            )  # fmt: skip
            took = time.monotonic() - started
        finally:
            shutil.rmtree(corpus, ignore_errors=True)
        output = done.stderr + done.stdout
        figures = Figures("atheris", name, seconds=took, rounds=1)
        stats = dict(_STAT.findall(output))
        runs = _DONE.search(output)
        executed = stats.get("number_of_executed_units") or (runs.group(1) if runs else "0")
        figures.examples = int(executed)
        coverage = _COV.findall(output)
        if coverage:
            figures.coverage = f"cov {coverage[-1][0]}, ft {coverage[-1][1]}"
        if runs:
            figures.seconds = max(float(runs.group(2)), 1.0)
        if done.returncode != 0:
            figures.failures = 1
            crash = re.findall(r"Test unit written to (\S+)", output)
            tail = "\n".join(output.splitlines()[-30:])
            problems.append(f"atheris {name} failed (input: {', '.join(crash) or '?'}):\n{tail}")
        results.append(figures)
    return results, problems


def render(results: list[Figures], problems: list[str], command: str, wall: float) -> str:
    lines = [
        "| engine | target | examples / runs | seconds | per second | failures | notes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        note = r.coverage or (f"{r.rounds} round(s)" if r.engine == "hypothesis" else "")
        lines.append(
            f"| {r.engine} | {r.target} | {r.examples:,} | {r.seconds:.1f} | {r.rate:,.0f} | "
            f"{r.failures} | {note} |"
        )
    for engine in ("hypothesis", "atheris"):
        chosen = [r for r in results if r.engine == engine]
        if chosen:
            total = sum(r.examples for r in chosen)
            failures = sum(r.failures for r in chosen)
            lines.append(f"| **{engine}** | all | **{total:,}** | | | **{failures}** | |")
    lines += ["", f"Command: `{command}`; wall time {wall:.0f} s."]
    if problems:
        lines += ["", "Problems:", *(f"- {p}" for p in problems)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="the whole run's budget")
    parser.add_argument("--engine", choices=["both", "hypothesis", "atheris"], default="both")
    parser.add_argument("--target", action="append", choices=TARGETS, help="atheris targets")
    parser.add_argument("--artifacts", type=Path, help="where atheris keeps crashing inputs")
    parser.add_argument("--output", type=Path, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        has_atheris = False
    else:
        has_atheris = True
    engines = ["hypothesis", "atheris"] if args.engine == "both" else [args.engine]
    notes: list[str] = []
    if "atheris" in engines and not has_atheris:
        notes.append(
            "atheris is not installed (pip install atheris: wheels for Linux x86_64 only): "
            "hypothesis only"
        )
        engines = [e for e in engines if e != "atheris"] or ["hypothesis"]
    started = time.monotonic()
    share = args.seconds / len(engines)
    results: list[Figures] = []
    problems: list[str] = list(notes)
    failed = False
    if "hypothesis" in engines:
        found, trouble = run_hypothesis(share)
        results += found
        problems += trouble
        failed |= any(r.failures for r in found) or any("failed" in p for p in trouble)
    if "atheris" in engines:
        artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="bearerguard-fuzz-artifacts-"))
        artifacts.mkdir(parents=True, exist_ok=True)
        remaining = args.seconds - (time.monotonic() - started)
        targets = args.target or list(TARGETS)
        found, trouble = run_atheris(targets, max(remaining, 5.0 * len(targets)), artifacts)
        results += found
        problems += trouble
        failed |= any(r.failures for r in found)
        if not any(artifacts.iterdir()) and args.artifacts is None:
            artifacts.rmdir()
    command = "python3 scripts/dev.py fuzz " + " ".join(sys.argv[1:] if argv is None else argv)
    report = render(results, problems, command.strip(), time.monotonic() - started)
    print(report)
    if args.output:
        args.output.write_text(report)
    return 1 if failed else 0


if __name__ == "__main__":
    target = os.environ.get(CHILD_VARIABLE)
    if target:
        child_main(target)
    else:
        sys.exit(main())
