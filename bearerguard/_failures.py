"""Bounded reports of a failure that recurs on every request (the audit sink, a usage store).

A sink that stays down fails once per request: a traceback per failure floods the error log
exactly when something is already wrong, and costs CPU on every request. A report logs the
first failure in full, then only counts: one summary line at most per window while the
failures go on, and one line when the thing works again.

"In full" is the failure's own message and the traceback, but no message of an exception
chained to it (``traceback_text``): a refusal is audited while it is handled, so it is the
context of a sink failing then, and its cause may quote the token (a store's error).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable

from bearerguard._fork import reset_after_fork

_log = logging.getLogger("bearerguard")


class FailureReport:
    """Logs a recurring failure on the stdlib ``bearerguard`` logger, boundedly.

    Args:
        first: the first failure's message; ``%s`` is what ``failed`` was given.
        summary: a later window's message; ``%d`` failures since the last line, ``%d`` in all.
        recovery: the message once it works again; ``%d`` failures in all.
        level: of the first and summary lines (recovery is a warning).
        traceback: whether the first line carries the exception's traceback (as
            ``traceback_text`` writes it).
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
        "__weakref__",  # bearerguard._fork holds each report weakly
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
        reset_after_fork(self)

    def _forked(self) -> None:
        """In a child process after ``fork()`` (bearerguard._fork): a lock another thread of
        the parent held at the fork is never released here, and the first failure reported waited
        for it for the worker's whole life. And the parent's outage is not the worker's: its
        first failure is logged in full, not counted towards the parent's summary."""
        self._lock = threading.Lock()
        self.failing = False
        self._total = self._unreported = 0

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
            _say(self._level, self._first, what, exc=exc if self._traceback else None)
        else:
            _say(self._level, self._summary, *summary)

    def reset(self) -> None:
        """End the current outage without a line, for an owner that logs its own ends and
        beginnings: the next failure is logged in full again."""
        with self._lock:
            self.failing = False

    def recovered(self) -> None:
        """It worked: log the recovery with the count, once, if it was failing."""
        with self._lock:
            if not self.failing:
                return  # another thread said it first
            self.failing = False
            lost = self._total
        _say(logging.WARNING, self._recovery, lost)


def traceback_text(exc: BaseException, *, message: bool = True) -> str:
    """``exc``'s traceback and those of the exceptions chained to it, as Python prints them,
    but each chained exception named by its type alone (``exc`` too, unless ``message``).

    Not ``exc_info``: the logging module prints every message in the chain, and a message
    may quote what its exception failed on (claim values, header bytes, a token a store was
    given), which no log may hold.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context
    parts: list[str] = []
    for error in reversed(chain):  # the first cause first, as Python prints them
        if parts:
            parts.append("\nwhich led to:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(error.__traceback__))
        if message and error is exc:
            parts.extend(traceback.format_exception_only(type(error), error))
        else:
            parts.append(f"{type(error).__module__}.{type(error).__qualname__}")
    return "".join(parts).rstrip("\n")


def _say(level: int, message: str, *args: object, exc: BaseException | None = None) -> None:
    """Log a report line, with ``exc``'s ``traceback_text`` if given, whatever the logging
    raises.

    A handler that does not catch its own failure (or the same broken pipeline as the sink
    reported on) leaves nowhere to report it; the request it happened on must not fail.
    """
    with contextlib.suppress(Exception):  # the report's own logger: never a 500
        if exc is not None:
            message, args = f"{message}\n%s", (*args, traceback_text(exc))
        _log.log(level, message, *args)
