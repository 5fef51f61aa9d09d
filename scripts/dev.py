"""Set up a development environment and run the demo, the tests, or a benchmark.

Usage (from a fresh clone, with only Python 3.10+ installed):

    python3 scripts/dev.py demo [--serve]   # the walkthrough; --serve keeps serving
    python3 scripts/dev.py test [pytest args]
    python3 scripts/dev.py lint              # ruff (lint and format) and mypy
    python3 scripts/dev.py bench [args]      # benchmarks/run.py
    python3 scripts/dev.py peers [args]      # benchmarks/peers.py: Authlib, joserfc, PyJWT
    python3 scripts/dev.py instructions      # benchmarks/instructions.py: callgrind counts
    python3 scripts/dev.py fuzz [args]       # scripts/fuzz.py --seconds N: hypothesis, atheris
    python3 scripts/dev.py faults [args]     # scripts/faults.py: JWKS and Redis outages
    python3 scripts/dev.py load [args]       # scripts/load.py: uvicorn + wrk, RSS under a flood

The first call creates ``.venv`` and installs the package with its ``dev`` extra; later calls
reinstall only when ``pyproject.toml`` changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".bearerguard-installed"
# The Python sources ruff formats (Markdown code blocks in docs/ keep their own layout).
_FORMATTED = ("bearerguard", "tests", "benchmarks", "scripts", "examples")


def _python() -> Path:
    return BIN / ("python.exe" if os.name == "nt" else "python")


def ensure_environment() -> None:
    """Create .venv and install the project when missing or out of date."""
    if sys.version_info < (3, 10):  # noqa: UP036 - users may run an older python3
        sys.exit(f"bearerguard needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and _python().exists():
        return
    if not _python().exists():
        print(f"creating {VENV.relative_to(ROOT)} ...", flush=True)
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        except Exception as exc:  # noqa: BLE001 - any failure here gets the same advice
            shutil.rmtree(VENV, ignore_errors=True)
            sys.exit(
                f"could not create a virtual environment ({exc}).\n"
                "On Debian or Ubuntu install it with: apt-get install python3-venv"
            )
    print("installing bearerguard with its dev extra (first run only) ...", flush=True)
    pip = [str(_python()), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    for args in (["install", "--upgrade", "pip"], ["install", "-e", f"{ROOT}[dev,redis]"]):
        if subprocess.call([*pip, *args]) != 0:
            sys.exit(f"installing failed: pip {' '.join(args)}")
    STAMP.write_text(wanted)


def run(argv: list[str]) -> int:
    """Run a command inside the virtual environment and return its exit code."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    return subprocess.call(argv, cwd=ROOT, env=env)


def main() -> int:
    """Dispatch the sub-command named on the command line."""
    command, *rest = sys.argv[1:] or ["help"]
    scripts = {
        "bench": "benchmarks/run.py",
        "peers": "benchmarks/peers.py",
        "instructions": "benchmarks/instructions.py",
        "event-inside": "benchmarks/event_inside.py",
        "fuzz": "scripts/fuzz.py",
        "faults": "scripts/faults.py",
        "load": "scripts/load.py",
    }
    if command not in {"demo", "test", "lint", *scripts}:
        print(__doc__)
        return 0 if command in {"help", "-h", "--help"} else 2
    ensure_environment()
    python = str(_python())
    if command == "demo":
        return run([python, "-m", "bearerguard", "demo", *rest])
    if command == "test":
        return run([python, "-m", "pytest", *rest])
    if command in scripts:
        return run([python, scripts[command], *rest])
    return (
        run([python, "-m", "ruff", "check", "."])
        or run([python, "-m", "ruff", "format", "--check", *_FORMATTED])
        or run([python, "-m", "mypy"])
    )


if __name__ == "__main__":
    sys.exit(main())
