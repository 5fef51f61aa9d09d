"""``bearerguard demo`` and the command line: in process, and as the real command."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog

import bearerguard
from bearerguard import _demo, cli
from bearerguard.revocation.memory import MemoryRevocationStore
from bearerguard.testing import DevIssuer

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = [
    ("No token", "401", ["token.rejected"]),
    ("A valid token with scope items:read", "200", ["token.accepted"]),
    ("An expired token", "401", ["token.rejected"]),
    ("needs items:write", "403", ["token.accepted", "scope.denied"]),
    ("after revoking it by jti", "401", ["token.rejected"]),
    ("signature was tampered with", "401", ["token.rejected"]),
    ("a key the issuer never published", "401", ["token.rejected"]),
]
REASONS = ["missing_token", None, "expired", "insufficient_scope", "revoked", "bad_signature",
           "unknown_key"]  # fmt: skip
_STEP = re.compile(r"^\[(\d)/7\] (.*)$", re.MULTILINE)


def steps_of(output: str) -> list[str]:
    """The output split into one block per walkthrough step."""
    starts = [match.start() for match in _STEP.finditer(output)]
    return [
        output[start:end] for start, end in zip(starts, [*starts[1:], len(output)], strict=True)
    ]


def check_walkthrough(output: str) -> None:
    blocks = steps_of(output)
    assert len(blocks) == len(EXPECTED)
    for block, (title, status, events), reason in zip(blocks, EXPECTED, REASONS, strict=True):
        assert title in block.splitlines()[0]
        assert re.search(rf"-> {status} \w[\w ]* \(ok\)", block), block
        assert re.findall(r"audit: (\S+)", block) == events, block
        if reason is not None:
            assert f"reason={reason}" in block, block
        if status != "200":
            assert "WWW-Authenticate: Bearer realm=" in block, block
    assert "All 7 steps got the expected answer." in output
    # Tokens are abbreviated: no line carries more than the first 16 characters of one.
    assert not re.search(r"eyJ[\w-]{14,}\.", output)
    assert "Bearer eyJhbGciOiJSUzI1…" in output


def test_walkthrough_in_process() -> None:
    structlog_config = structlog.get_config()
    root_handlers = list(logging.getLogger().handlers)
    out = io.StringIO()
    started = time.monotonic()
    assert _demo.run_demo(port=0, out=out) == 0
    assert time.monotonic() - started < 10
    check_walkthrough(out.getvalue())
    # The demo leaves the host program's structlog and logging configuration alone.
    assert structlog.get_config() == structlog_config
    assert logging.getLogger().handlers == root_handlers


@pytest.mark.parametrize(
    ("challenge", "lines"),
    [
        ("Bearer", ["  WWW-Authenticate: Bearer"]),
        ('Bearer realm="a, \\"b"', ['  WWW-Authenticate: Bearer realm="a, \\"b"']),
        (
            'Bearer realm="https://api.example", error="insufficient_scope", '
            'error_description="The access token does not grant the scope this request '
            'needs.", scope="items:write"',
            [
                '  WWW-Authenticate: Bearer realm="https://api.example", '
                'error="insufficient_scope",',
                '                    error_description="The access token does not grant the '
                'scope this request needs.",',
                '                    scope="items:write"',
            ],
        ),
    ],
)
def test_challenges_wrap_between_auth_params(challenge: str, lines: list[str]) -> None:
    out = io.StringIO()
    _demo.Printer(out).challenge(challenge, "  ")
    assert out.getvalue().splitlines() == lines


def test_walkthrough_fails_on_an_unexpected_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _demo.build_steps

    def wrong_expectation(
        issuer: DevIssuer, store: MemoryRevocationStore, *, ellipsis: str = "..."
    ) -> list[_demo.Step]:
        steps = real(issuer, store, ellipsis=ellipsis)
        steps[0] = dataclasses.replace(steps[0], status=200)
        return steps

    monkeypatch.setattr(_demo, "build_steps", wrong_expectation)
    out = io.StringIO()
    assert _demo.run_demo(out=out) == 1
    text = out.getvalue()
    assert "-> 401 Unauthorized  (UNEXPECTED, wanted 200)" in text
    assert "1 of 7 steps did not get the expected answer: 1." in text


def test_port_in_use_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        assert _demo.run_demo(port=port, out=io.StringIO()) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_ellipsis_falls_back_to_ascii() -> None:
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    say = _demo.Printer(stream)
    assert say.short("eyJhbGciOiJSUzI1NiIsInR5cCI6", 16) == "eyJhbGciOiJSUzI1..."
    assert _demo.Printer(io.StringIO()).short("abc") == "abc"
    stream.detach()


async def _demo_api_calls(issuer: DevIssuer) -> list[httpx.Response]:
    app = _demo.create_demo_app(issuer.guard())
    token = issuer.mint(scopes=["items:read", "items:write"], sub="alice")
    auth = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        return [
            await client.get("/health"),
            await client.get("/me", headers=auth),
            await client.post("/items", headers=auth, json={"name": "mug"}),
            await client.post("/items", headers=auth, content=b"not json"),
            await client.get("/items", headers=auth),
        ]


@pytest.mark.anyio
async def test_demo_api_routes(session_issuer: DevIssuer) -> None:
    health, me, created, invalid, listed = await _demo_api_calls(session_issuer)
    assert health.json() == {"status": "ok"}
    assert me.json()["subject"] == "alice"
    assert me.json()["scopes"] == ["items:read", "items:write"]
    assert (created.status_code, created.json()) == (201, {"id": 3, "name": "mug"})
    assert invalid.status_code == 422
    assert [item["name"] for item in listed.json()["items"]] == ["teapot", "kettle", "mug"]


# -- the command line -------------------------------------------------------------------


def test_cli_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "demo" in capsys.readouterr().err


def test_cli_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bearerguard {bearerguard.__version__}"
    assert cli.main(["demo", "--port", "http"]) == cli.EXIT_USAGE
    assert "not a port number" in capsys.readouterr().err
    assert cli.main(["demo", "--port", "70000"]) == cli.EXIT_USAGE
    assert cli.main(["nope"]) == cli.EXIT_USAGE


def test_cli_runs_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, bool]] = []

    def fake_run_demo(*, port: int, serve: bool) -> int:
        calls.append((port, serve))
        return 0

    monkeypatch.setattr(_demo, "run_demo", fake_run_demo)
    assert cli.main(["demo"]) == 0
    assert cli.main(["demo", "--serve", "--port", "8123"]) == 0
    assert calls == [(0, False), (8123, True)]


def test_cli_ctrl_c_is_clean(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*, port: int, serve: bool) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_demo, "run_demo", interrupted)
    assert cli.main(["demo"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted"


def test_cli_demo_without_uvicorn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    monkeypatch.delitem(sys.modules, "bearerguard._demo")
    monkeypatch.delattr(bearerguard, "_demo")
    assert cli.main(["demo"]) == cli.EXIT_USAGE
    assert "pip install 'bearerguard[demo]'" in capsys.readouterr().err


# -- the real command -------------------------------------------------------------------


def _command(*args: str) -> list[str]:
    return [sys.executable, "-W", "error", "-m", "bearerguard", "demo", *args]


def _environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    return env


def test_python_m_bearerguard_demo() -> None:
    result = subprocess.run(  # noqa: S603 - our own command
        _command(),
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    check_walkthrough(result.stdout)


@dataclasses.dataclass
class Running:
    """A ``demo --serve`` process, its standard output read line by line from a thread."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str]
    pump: threading.Thread

    def read_until(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while not seen or marker not in seen[-1]:
            seen.append(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
        return "".join(seen)

    def rest(self) -> str:
        """Everything printed after the last read, once the process has ended."""
        self.pump.join(timeout=5)
        seen: list[str] = []
        while not self.lines.empty():
            seen.append(self.lines.get())
        return "".join(seen)


@pytest.fixture
def serving_demo() -> Iterator[Running]:
    process = subprocess.Popen(  # noqa: S603 - our own command
        _command("--serve"),
        cwd=ROOT,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    assert process.stdout is not None
    assert process.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield Running(process, lines, thread)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)
        thread.join(timeout=5)
        process.stdout.close()
        process.stderr.close()


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_serve_mode_until_ctrl_c(serving_demo: Running) -> None:
    output = serving_demo.read_until("Audit events:", timeout=15)
    assert "All 7 steps got the expected answer." in output
    api = re.search(r"^Serving (http://127\.0\.0\.1:\d+) until Ctrl-C", output, re.MULTILINE)
    token = re.search(r"^  (eyJ\S+)$", output, re.MULTILINE)
    assert api is not None
    assert token is not None
    assert f"curl -i -H 'Authorization: Bearer {token.group(1)}' {api.group(1)}/items" in output

    auth = {"Authorization": f"Bearer {token.group(1)}"}
    with httpx.Client(base_url=api.group(1), trust_env=False) as client:
        assert client.get("/items", headers=auth).status_code == 200
        assert client.post("/items", headers=auth, json={"name": "mug"}).status_code == 201
    echoed = serving_demo.read_until("token_fp=", timeout=5)
    assert "audit: token.accepted GET /items sub=alice" in echoed

    process = serving_demo.process
    stopping = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=5) == 0
    assert time.monotonic() - stopping < 2
    assert serving_demo.rest().rstrip().endswith("Stopping.")
    assert process.stderr is not None
    assert process.stderr.read() == ""  # no traceback


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_line_and_exit_74() -> None:
    # As for every other command: the walkthrough's first line met ENOSPC and the demo
    # ended in a traceback (OSError) with exit 1.
    with open("/dev/full", "wb") as full:
        result = subprocess.run(  # noqa: S603 - our own command
            _command(),
            cwd=ROOT,
            env=_environment(),
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=30,
            check=False,
        )
    assert result.returncode == cli.EXIT_OUTPUT
    assert result.stderr.decode() == (
        "bearerguard: cannot write the output: No space left on device\n"
    )
