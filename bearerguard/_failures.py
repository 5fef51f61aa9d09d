"""Bounded reports of a failure that recurs on every request (the audit sink, a usage store).

A sink that stays down fails once per request: a traceback per failure floods the error log
exactly when something is already wrong, and costs CPU on every request. A report logs the
first failure in full, then only counts: one summary line at most per window while the
failures go on, and one line when the thing works again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

_log = logging.getLogger("bearerguard")


class FailureReport:
    """Logs a recurring failure on the stdlib ``bearerguard`` logger, boundedly.

    Args:
        first: the first failure's message; ``%s`` is what ``failed`` was given.
        summary: a later window's message; ``%d`` failures since the last line, ``%d`` in all.
        recovery: the message once it works again; ``%d`` failures in all.
        level: of the first and summary lines (recovery is a warning).
        traceback: whether the first line carries the exception's traceback.
        window: seconds between summary lines at most.
        quiet: for a caller that does not call ``recovered`` (watching every success would
            cost too much): a failure this many seconds after the last one ends the outage
            (its recovery line) and starts a new one, logged in full. ``None``: never.
        clock: monotonic seconds; injectable for tests.

    Thread-safe. A line its logger fails to take (a handler that raises) is dropped: the
    report never raises into the request it is made on. ``failing`` is read without the
    lock on the success path: a stale read only moves ``recovered``'s line to the next
    success.
    """

    __slots__ = (
        "_clock",
        "_failed_at",
        "_first",
        "_level",
        "_lock",
        "_quiet",
        "_recovery",
        "_reported_at",
        "_summary",
        "_total",
        "_traceback",
        "_unreported",
        "_window",
        "failing",
    )

    def __init__(
        self,
        first: str,
        summary: str,
        recovery: str,
        *,
        level: int = logging.ERROR,
        traceback: bool = True,
        window: float = 60.0,
        quiet: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window >= 0:  # NaN fails too
            raise ValueError("window must not be negative")
        self._first, self._summary, self._recovery = first, summary, recovery
        self._level, self._traceback = level, traceback
        self._window, self._quiet, self._clock = window, quiet, clock
        self._lock = threading.Lock()
        self._total = self._unreported = 0
        self._reported_at = self._failed_at = 0.0
        self.failing = False
        """Whether the last failure has not been followed by a ``recovered`` yet."""

    def failed(self, what: str, exc: BaseException | None = None) -> None:
        """Count one failure; log it in full if it is the first, or a summary if due."""
        ended = None
        with self._lock:
            now = self._clock()
            quiet = self._quiet
            if self.failing and quiet is not None and now - self._failed_at >= quiet:
                self.failing, ended = False, self._total
            self._failed_at = now
            if not self.failing:
                self.failing = True
                self._total, self._unreported, self._reported_at = 1, 0, now
                summary = None
            else:
                self._total += 1
                self._unreported += 1
                if now - self._reported_at < self._window:
                    return
                summary = (self._unreported, self._total)
                self._unreported, self._reported_at = 0, now
        # Logged outside the lock: a slow handler must not hold up every other request.
        if ended is not None:
            _say(logging.WARNING, self._recovery, ended)
        if summary is None:
            exc_info = exc if self._traceback and exc is not None else None
            _say(self._level, self._first, what, exc_info=exc_info)
        else:
            _say(self._level, self._summary, *summary)

    def recovered(self) -> None:
        """It worked: log the recovery with the count, once, if it was failing."""
        with self._lock:
            if not self.failing:
                return  # another thread said it first
            self.failing = False
            lost = self._total
        _say(logging.WARNING, self._recovery, lost)


def _say(level: int, message: str, *args: object, exc_info: BaseException | None = None) -> None:
    """Log a report line, whatever the logging raises.

    A handler that does not catch its own failure (or the same broken pipeline as the sink
    reported on) leaves nowhere to report it; the request it happened on must not fail.
    """
    with contextlib.suppress(Exception):  # the report's own logger: never a 500
        _log.log(level, message, *args, exc_info=exc_info)
