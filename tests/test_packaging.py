"""What a user installs: the extras the code and docs name exist, the license ships, and the
dev extra installs from wheels on every supported Python."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

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


@pytest.mark.parametrize(
    ("python", "wheel", "sdist_only"), [("3.10", "2.3.0", "3.0.0"), ("3.13", "3.1.0", None)]
)
def test_the_dev_extra_asks_for_an_atheris_with_a_wheel(
    python: str, wheel: str, sdist_only: str | None
) -> None:
    # scripts/dev.py installs the dev extra for the README's commands. atheris 3.x has no
    # CPython 3.10 wheel, and building its sdist needs clang with libFuzzer: on 3.10, pip
    # picked 3.0.0's sdist over 2.3.0's wheel and the install failed.
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = {"python_version": python, "sys_platform": "linux"}
    environment |= {"platform_machine": "x86_64", "extra": "dev"}
    wanted = [
        Requirement(line)
        for line in project["optional-dependencies"]["dev"]
        if Requirement(line).name == "atheris"
    ]
    applying = [req for req in wanted if req.marker is None or req.marker.evaluate(environment)]
    assert len(applying) == 1, applying
    assert wheel in applying[0].specifier
    assert sdist_only is None or sdist_only not in applying[0].specifier


def test_the_metadata_names_what_a_user_searches_for() -> None:
    # PyPI's search and filters read the summary, keywords and classifiers: each framework
    # with an extra of its own, and each Python the package supports, is named there.
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    classifiers = set(project["classifiers"])
    for framework in ("FastAPI", "Flask", "Django"):
        assert f"Framework :: {framework}" in classifiers, framework
        assert framework in project["description"], framework
        assert framework.lower() in project["keywords"], framework
    assert project["requires-python"] == ">=3.10"
    versions = {c.rsplit(" :: ", 1)[1] for c in classifiers if re.fullmatch(r".*:: 3\.\d+", c)}
    assert versions == {"3.10", "3.11", "3.12", "3.13"}
    assert "Programming Language :: Python :: 3 :: Only" in classifiers


def test_the_readme_says_how_to_install() -> None:
    # The README is the PyPI page (readme = "README.md"): its first commands a user reads are
    # the pip install lines, with the extra of each framework, not only a clone's dev script.
    readme = (ROOT / "README.md").read_text()
    install = readme.index("pip install bearerguard")
    assert install < readme.index("scripts/dev.py")
    for extra in ("fastapi", "flask", "django"):
        assert f"pip install 'bearerguard[{extra}]'" in readme, extra
