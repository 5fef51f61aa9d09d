"""``benchmarks/instructions.py``: every case runs, natively, as valgrind would start it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import instructions
from benchmarks.served import free_port

SCRIPT = Path(instructions.__file__)


@pytest.fixture(scope="module")
def fixture_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return instructions._fixture(tmp_path_factory.mktemp("instructions"), tokens=220)


IN_PROCESS = sorted(case for case in instructions.CASES if not case.startswith("served_"))
SERVED = sorted(case for case in instructions.CASES if case.startswith("served_"))


@pytest.mark.parametrize("case", IN_PROCESS)
def test_every_case_runs_as_a_child(case: str, fixture_file: Path) -> None:
    # A process of its own, as under valgrind: the cases configure structlog globally.
    command = [sys.executable, str(SCRIPT), "--child", case, "10", str(fixture_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("case", SERVED)
def test_every_served_case_answers_its_requests(case: str, fixture_file: Path) -> None:
    port = free_port()
    command = [sys.executable, str(SCRIPT), "--serve", case, str(port), str(fixture_file)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)  # noqa: S603
    try:
        token = json.loads(fixture_file.read_text())["tokens"][0]
        instructions._send_requests(port, token, 5, time.monotonic() + 60)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    assert server.returncode in (0, -signal.SIGTERM), stderr


def test_unknown_cases_and_bad_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--cases", "nope"], ["--small", "10", "--large", "10"]):
        with pytest.raises(SystemExit) as exited:
            instructions.main(argv)
        assert exited.value.code == 2
    assert "unknown cases ['nope']" in capsys.readouterr().err
