"""What a user installs: the extras the code and docs name exist, and the license ships."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_EXTRA = re.compile(r"bearerguard\[([a-z0-9_-]+)\]")


def _extras() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; 3.10 runs the rest
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["optional-dependencies"])


def test_every_extra_named_in_the_code_and_docs_exists() -> None:
    sources = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("bearerguard/**/*.py")]
    named = {name for path in sources for name in _EXTRA.findall(path.read_text())}
    assert named, "no extra named anywhere: the pattern is wrong"
    assert named <= _extras() - {"dev"}, named - _extras()


@pytest.mark.parametrize(
    ("module", "package", "extra"),
    [("bearerguard.fastapi", "fastapi", "fastapi"), ("bearerguard.django", "django", "django")],
)
def test_a_framework_module_without_its_framework_names_its_extra(
    module: str, package: str, extra: str
) -> None:
    code = f"import sys; sys.modules[{package!r}] = None\nimport {module}\n"
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 1
    assert f"ImportError: {module} needs" in result.stderr
    assert f"pip install 'bearerguard[{extra}]'" in result.stderr


def test_the_license_text_ships_with_the_package() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    # hatchling puts LICENSE* files into the wheel and the sdist (PEP 639 License-File);
    # the MIT license asks for its notice in every copy.
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text
