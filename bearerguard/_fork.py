"""Objects whose in-flight state must start afresh in a child process after ``fork()``.

A pre-forking server (gunicorn ``--preload``) builds the app, and so the guard, in its
master, then forks the workers from it. Only the forking thread goes on in a child: what
another thread had under way (a key set fetch, an introspection exchange) never ends there,
and a lock it held is never released. One hook for every such object, each held weakly: an
object gone costs nothing, and none adds a hook of its own that could never be removed.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

__all__ = ["Forkable", "reset_after_fork"]


class Forkable(Protocol):
    def _forked(self) -> None:
        """Called in the child: forget what other threads of the parent had under way."""


# By id, not in a WeakSet: an object need not be hashable (a subclass defining __eq__).
_objects: weakref.WeakValueDictionary[int, Forkable] = weakref.WeakValueDictionary()


def reset_after_fork(instance: Forkable) -> None:
    """Have ``instance._forked()`` called in every child forked from now on, while it lives."""
    _objects[id(instance)] = instance


def _after_fork_in_child() -> None:
    for instance in list(_objects.values()):
        try:
            instance._forked()
        except Exception:  # noqa: PERF203 - one failing hook must not leave the others undone
            logging.getLogger("bearerguard").exception(
                "bearerguard: resetting %s after fork failed", type(instance).__name__
            )


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork()
    os.register_at_fork(after_in_child=_after_fork_in_child)
