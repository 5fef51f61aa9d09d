"""Every ```python block in README.md and docs/ runs, in order, one namespace per file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_python_blocks_run(document: Path) -> None:
    namespace: dict[str, object] = {"__name__": "docs_snippet"}
    for number, block in enumerate(_BLOCK.findall(document.read_text()), start=1):
        code = compile(block, f"{document.name}[block {number}]", "exec", dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - running our own documentation is the point
