"""The ``bearerguard`` pytest11 entry point: a switch for ``bearerguard.pytest_plugin``.

pytest loads every installed pytest11 entry point into every test run. Were the entry point
the fixture module itself, installing bearerguard would add its fixtures to every project
that has it installed; worse, a ``conftest.py`` saying
``pytest_plugins = ["bearerguard.pytest_plugin"]`` would then make pytest register the same
module a second time under another name, which pluggy refuses ("Plugin already registered
under a different name"). So the entry point is this switch: it does nothing unless the run
names it with ``-p bearerguard`` (on the command line, in ``addopts`` or
``PYTEST_ADDOPTS``), and then loads the fixture module. Naming the fixture module directly
in ``pytest_plugins`` works alongside it; either way the module is registered once.

``-p bearerguard`` also works with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set: pytest then loads
this entry point by its name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

ENTRY_POINT = "bearerguard"
FIXTURES = "bearerguard.pytest_plugin"


def pytest_configure(config: pytest.Config) -> None:
    """Load the fixtures when the run names the entry point with ``-p bearerguard``."""
    named: list[str] = getattr(config.option, "plugins", None) or []
    if any(name.strip() == ENTRY_POINT for name in named):
        config.pluginmanager.import_plugin(FIXTURES)
