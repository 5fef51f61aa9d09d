"""Instructions per operation under callgrind: an A/B measure that a busy machine cannot blur.

Usage (from the repository root; needs valgrind):

    python3 scripts/dev.py instructions            # about 10 minutes on 2 cores
    python3 scripts/dev.py instructions --cases starlette_hit,reference

Timings on a shared virtual machine can spread by tens of percent from one repeat to the
next, which hides a change worth half a microsecond. Valgrind's callgrind counts the machine
instructions a process executes instead: the same code, inputs and hash seed give the same
count whatever else the machine is doing (each run mints its own tokens, which moves the
counts by about 0.1%). Each case runs twice in a fresh interpreter, with a few hundred and
with a few thousand operations after the same warm-up; the difference divided by the
difference in operations is the count per operation, start-up excluded. The ``served_``
cases count a uvicorn server (uvloop, httptools) answering requests sent one after another
on one keep-alive connection. A server also runs on timers (uvicorn's main loop wakes every
0.1 s), so its count per request grows with the run's wall time: a busy machine does blur
those cases. The same served hit counted 2% more beside five busy processes than beside
one; compare served counts from runs under like load.

Counts are not times. Python's interpreter, RSA's big-number code and SHA-256 run at very
different instructions per cycle, and valgrind hides CPU features (SHA extensions among them)
so OpenSSL's SHA-256 runs its portable code here. Compare a case with itself across a change,
not one case with another; the targets stay with ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

CASES = {
    "starlette_bare": "Starlette, bare (one ASGI request)",
    "starlette_hit": "+ bearerguard, cache hit, accepted-audit off",
    "starlette_audited": "+ bearerguard, cache hit, every decision audited",
    "reference": "+ reference: SHA-256 token lookup only",
    "bg_miss": "bearerguard authenticate, cache_size=0 (miss)",
    "jwt_decode": "jwt.decode (key object at hand)",
    "audit_event": "one token.accepted audit event alone",
    "audit_event_dropped": "the same, dropped by the app's first processor",
    "audit_event_unrendered": "the same, to a logger whose one processor renders nothing",
    "audit_pipeline": "the app's processors and write alone, on that event's fields",
    "served_bare": "under uvicorn: Starlette, bare (one HTTP request)",
    "served_hit": "under uvicorn: + bearerguard, cache hit, accepted-audit off",
    "served_audited": "under uvicorn: + bearerguard, cache hit, every decision audited",
    "served_reference": "under uvicorn: + reference: SHA-256 token lookup only",
    "flask_bare": "Flask (WSGI), bare (one request)",
    "flask_hit": "+ bearerguard WSGI middleware + @requires_scopes, cache hit, accepted-audit off",
}
# The app each request case runs, in-process and under uvicorn.
_APPS = {
    "starlette_bare": "bare",
    "starlette_hit": "hit",
    "starlette_audited": "audited",
    "reference": "reference",
    "served_bare": "bare",
    "served_hit": "hit",
    "served_audited": "audited",
    "served_reference": "reference",
}
_BARE = {
    "starlette_bare": ("starlette_hit", "starlette_audited", "reference"),
    "served_bare": ("served_hit", "served_audited", "served_reference"),
    "flask_bare": ("flask_hit",),
}
WARM_UP = 200
_COLLECTED = re.compile(r"Collected : (\d+)")
_CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


def _app(kind: str, fixture: dict[str, Any]) -> Any:
    """The benchmark's Starlette app: ``bare``, ``hit`` or ``audited`` (bearerguard, accepted
    events sampled off or all emitted), or ``reference``."""
    from bearerguard import BearerGuard
    from benchmarks.apps import Settings, configure_audit_logging, starlette_apps

    settings = Settings(issuer=fixture["issuer"], jwks_uri="", audience=fixture["audience"])
    configure_audit_logging()
    if kind == "bare":
        return starlette_apps.build_bare(settings)
    if kind == "reference":
        return starlette_apps.build_hash_lookup(settings)
    guard = BearerGuard(
        issuer=fixture["issuer"],
        audience=fixture["audience"],
        keys=fixture["jwks"],
        audit_sample_accepted=1.0 if kind == "audited" else 0.0,
    )
    return starlette_apps.build_bearerguard(settings, guard=guard)


def _operation(case: str, fixture: dict[str, Any]) -> Callable[[int], None]:
    """A function doing ``count`` operations of ``case``, everything imported and built."""
    from bearerguard import BearerGuard
    from bearerguard.audit import RequestInfo
    from benchmarks.apps import PATH, configure_audit_logging, dropping_audit_logger
    from benchmarks.inprocess import _drop, _receive, asgi_scope

    issuer, audience, tokens = fixture["issuer"], fixture["audience"], fixture["tokens"]
    configure_audit_logging()

    def guard(**options: Any) -> BearerGuard:
        return BearerGuard(issuer=issuer, audience=audience, keys=fixture["jwks"], **options)

    loop = asyncio.new_event_loop()

    if case in _APPS:
        app = _app(_APPS[case], fixture)
        scope = asgi_scope(tokens[0])

        async def requests(count: int) -> None:
            for _ in range(count):
                await app(dict(scope), _receive, _drop)

        # One coroutine per batch, as benchmarks/inprocess.py drives its apps.
        return lambda count: loop.run_until_complete(requests(count))
    if case in ("flask_bare", "flask_hit"):
        from benchmarks.inprocess import WSGICase, flask_app

        protected = guard(audit_sample_accepted=0.0) if case == "flask_hit" else None
        wsgi = WSGICase(case, CASES[case], None, app=flask_app(protected), token=tokens[0])

        def wsgi_requests(count: int) -> None:
            for _ in range(count):
                wsgi.call()

        return wsgi_requests
    if case == "bg_miss":
        miss = guard(cache_size=0, audit_sample_accepted=0.0)

        async def misses(count: int) -> None:
            for token in tokens[:count]:
                await miss.authenticate(token)

        return lambda count: loop.run_until_complete(misses(count))
    if case == "jwt_decode":
        import jwt

        key = jwt.PyJWK(fixture["jwks"]["keys"][0]).key

        def decodes(count: int) -> None:
            for token in tokens[:count]:
                jwt.decode(token, key, algorithms=["RS256"], audience=audience, issuer=issuer)

        return decodes
    if case == "audit_pipeline":
        return _pipeline(guard, tokens[0])
    if case in ("audit_event", "audit_event_dropped", "audit_event_unrendered"):
        chosen = {"audit_event_dropped": dropping_audit_logger, "audit_event_unrendered": _silent}
        audit_logger = chosen[case]() if case in chosen else None
        audited = guard(audit_sample_accepted=1.0, audit_logger=audit_logger)
        audited.authenticate_sync(tokens[0])  # verified once: the cache holds it
        entry = audited.reused(b"Bearer " + tokens[0].encode())
        assert entry is not None
        request = RequestInfo("GET", PATH, "127.0.0.1", None)
        audit = audited.audit
        entry.record_accepted(audit, request, 0.0001)
        if audit.sink_failing:  # an event the logger failed to take counts the failure's cost
            raise RuntimeError(f"{case}: the audit logger failed to take the event")

        def events(count: int) -> None:
            for _ in range(count):
                entry.record_accepted(audit, request, 0.0001)  # as the middlewares' cache hits do

        return events
    raise ValueError(f"unknown case {case!r}")


class _Null:
    """A logger that writes nothing (structlog calls the method named as the level)."""

    def msg(self, message: bytes) -> None:
        return None

    info = msg


def _silent() -> Any:
    """A bound logger whose one processor renders nothing, to a logger that writes nothing:
    what structlog's dispatch and the library cost, with no exception (``DropEvent``) raised."""
    import logging

    import structlog

    def nothing(logger: Any, method: str, event: Any) -> bytes:
        return b""

    bound: Any = structlog.make_filtering_bound_logger(logging.INFO)
    return bound(_Null(), [nothing], {})


def _pipeline(guard: Callable[..., Any], token: str) -> Callable[[int], None]:
    """The application's processors and write, as ``configure_audit_logging`` sets them up,
    on a copy of the fields of one ``token.accepted`` event of ``token`` (taken once)."""
    import logging

    import structlog

    from bearerguard.audit import RequestInfo
    from benchmarks.apps import PATH, audit_processors

    taken: list[dict[str, Any]] = []

    def take(logger: Any, method: str, event: Any) -> bytes:
        taken.append(dict(event))
        return b""

    bound: Any = structlog.make_filtering_bound_logger(logging.INFO)
    taking = bound(_Null(), [take], {})
    audited = guard(audit_sample_accepted=1.0, audit_logger=taking)
    audited.authenticate_sync(token)
    entry = audited.reused(b"Bearer " + token.encode())
    assert entry is not None
    entry.record_accepted(audited.audit, RequestInfo("GET", PATH, "127.0.0.1", None), 0.0001)
    fields = taken[0]
    processors = audit_processors()
    sink = structlog.BytesLogger(open(os.devnull, "wb"))  # noqa: SIM115 - the process's life

    def events(count: int) -> None:
        for _ in range(count):
            event: Any = fields.copy()
            for processor in processors:
                event = processor(sink, "info", event)
            sink.msg(event)

    return events


def _child(case: str, count: int, fixture_path: Path) -> None:
    """The measured process: warm up, then ``count`` operations."""
    run = _operation(case, json.loads(fixture_path.read_text()))
    run(WARM_UP)
    run(count)


def _serve(case: str, port: int, fixture_path: Path) -> None:
    """The measured process of a served case: uvicorn as the benchmarks run it, until SIGTERM."""
    import uvicorn

    app = _app(_APPS[case], json.loads(fixture_path.read_text()))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


def _send_requests(port: int, token: str, count: int, deadline: float) -> None:
    """``count`` GET requests, one after another on one keep-alive connection; each must be 200."""
    from benchmarks.apps import PATH

    while True:  # the server starts slowly under valgrind
        try:
            connection = socket.create_connection(("127.0.0.1", port), timeout=60)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    request = (
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    buffer = b""
    with connection:
        for _ in range(count):
            connection.sendall(request)
            while True:
                end = buffer.find(b"\r\n\r\n")
                length = _CONTENT_LENGTH.search(buffer, 0, end) if end >= 0 else None
                if length is not None and len(buffer) >= end + 4 + int(length.group(1)):
                    if not buffer.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"not 200: {buffer[:100]!r}")
                    buffer = buffer[end + 4 + int(length.group(1)) :]
                    break
                received = connection.recv(65536)
                if not received:
                    raise RuntimeError("the server closed the connection")
                buffer += received


def _fixture(directory: Path, tokens: int) -> Path:
    """Mint distinct tokens and keep the key set, so children need no issuer nor key pair."""
    from bearerguard.testing import DevIssuer

    with DevIssuer(algorithms=("RS256",)) as issuer:
        document = {
            "issuer": issuer.url,
            "audience": issuer.audience,
            "jwks": issuer.jwks(),
            "tokens": [
                issuer.mint(scopes=["items:read"], expires_in=7 * 86400) for _ in range(tokens)
            ],
        }
    path = directory / "fixture.json"
    path.write_text(json.dumps(document))
    return path


def _instructions(valgrind: str, case: str, count: int, fixture: Path, out: Path) -> int:
    """Instructions of one measured process: ``count`` operations after the warm-up."""
    command = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if case.startswith("served_"):
        from benchmarks.served import free_port

        port = free_port()
        server = subprocess.Popen(  # noqa: S603 - our own fixed command line
            [*command, __file__, "--serve", case, str(port), str(fixture)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            token = json.loads(fixture.read_text())["tokens"][0]
            _send_requests(port, token, WARM_UP + count, time.monotonic() + 300)
        finally:
            server.terminate()  # uvicorn shuts down cleanly; valgrind then reports
            _, stderr = server.communicate(timeout=300)
        # uvicorn raises the signal again once shut down: dying of SIGTERM is its clean exit.
        returncode = 0 if server.returncode == -signal.SIGTERM else server.returncode
    else:
        command += [__file__, "--child", case, str(count), str(fixture)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)  # noqa: S603
        returncode, stderr = done.returncode, done.stderr
    found = _COLLECTED.search(stderr)
    if returncode != 0 or found is None:
        raise RuntimeError(f"{case} ({count}) failed: {stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    """Count instructions per operation for the chosen cases; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--small", type=int, default=500, help="operations in the short run")
    parser.add_argument("--large", type=int, default=2500, help="operations in the long run")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return 0
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]), Path(args.serve[2]))
        return 0
    cases = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or not 0 < args.small < args.large:
        parser.error(f"unknown cases {unknown}" if unknown else "need 0 < --small < --large")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind not found (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bearerguard-instructions-") as temporary:
        directory = Path(temporary)
        fixture = _fixture(directory, WARM_UP + args.large)
        runs = [(case, count) for case in cases for count in (args.small, args.large)]
        with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
            counted = dict(
                zip(
                    runs,
                    pool.map(
                        lambda run: _instructions(
                            valgrind, run[0], run[1], fixture, directory / f"{run[0]}.{run[1]}"
                        ),
                        runs,
                    ),
                    strict=True,
                )
            )
    per_operation = {
        case: (counted[case, args.large] - counted[case, args.small]) / (args.large - args.small)
        for case in cases
    }
    print(f"instructions per operation (callgrind; {args.large} - {args.small} operations)\n")
    print("| case | instructions/op | Δ vs bare |")
    print("|---|---|---|")
    for case in cases:
        value = per_operation[case]
        bare = next((b for b, cased in _BARE.items() if case in cased), None)
        delta = f"+{value - per_operation[bare]:,.0f}" if bare in per_operation else "-"
        print(f"| {CASES[case]} | {value:,.0f} | {delta} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
