"""The documentation site builds with ``mkdocs build --strict``: no broken link or anchor, no
page missing from the nav, no docstring the API reference cannot render."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MISSING = (
    "mkdocs, mkdocs-material or mkdocstrings[python] is not installed, so the docs site was "
    "NOT built: pip install -e '.[docs]' (the dev extra has them; CI fails instead of skipping)"
)


def _installed() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _installed():
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    target = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(  # noqa: S603 - our own build
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(target)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def test_every_page_is_built(site: Path) -> None:
    for page in sorted((ROOT / "docs").glob("*.md")):
        name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (site / name).is_file(), page.name


def test_the_request_flow_diagram_is_a_mermaid_block(site: Path) -> None:
    home = (site / "index.html").read_text()
    assert re.search(r'<pre class="mermaid"><code>flowchart TD', home)


def test_the_reference_is_generated_from_the_code(site: Path) -> None:
    reference = (site / "reference" / "index.html").read_text()
    for name in (
        "bearerguard.BearerGuard",
        "authenticate_sync",
        "bearerguard.asgi.BearerGuardMiddleware",
        "bearerguard.wsgi.BearerGuardWSGIMiddleware",
        "bearerguard.decorators.requires_scopes",
        "bearerguard.revocation.MemoryRevocationStore",
        "InsufficientScopeError",
        "bearerguard.testing.DevIssuer",
    ):
        assert name in reference, name
    # A docstring's Args section is rendered as the parameter table.
    assert "the trusted issuer; a token" in reference
