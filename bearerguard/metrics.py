"""Metrics: what the guard decides and does, counted through one small hook.

Give a guard a ``MetricsHook`` (``BearerGuard(metrics=...)``) and it reports:

========================================  =========  ==========================================
name                                      kind       labels
========================================  =========  ==========================================
``bearerguard_decisions_total``           counter    ``event`` (``token.accepted`` ...), ``reason``
``bearerguard_decision_seconds``          histogram  ``event``: time spent deciding
``bearerguard_token_cache_total``         counter    ``result``: ``hit`` or ``miss``
``bearerguard_jwks_fetches_total``        counter    ``result``: ``ok`` or ``error``
``bearerguard_revocation_failures_total`` counter    ``store``
``bearerguard_audit_events_lost_total``   counter    ``event``: the audit logger raised
``bearerguard_usage_unmonitored_total``   counter    ``monitor``: let in, the monitor down
========================================  =========  ==========================================

and, to a hook with the optional ``set_gauge`` method (both built-in hooks have it), the
gauge ``bearerguard_jwks_last_success_timestamp_seconds`` (label ``issuer``): the instant,
in epoch seconds by the guard's clock, of each successful key set fetch.

Every decision is counted, whatever the audit sampling. The key set's age is read when asked
(``BearerGuard.key_set_age()``), so exporters publish it as a gauge computed at scrape time.
A hook that raises changes no decision (never a 500, never a refusal let through): the lost
figure is reported on the stdlib logger ``bearerguard`` (``metrics_failed``), boundedly.

``InMemoryMetrics`` keeps the figures in the process (``snapshot()``, for tests and a debug
endpoint); ``PrometheusMetrics`` (extra ``bearerguard[prometheus]``) exports them. Anything
else, OpenTelemetry or statsd, is a class with the two methods of ``MetricsHook``.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bearerguard._failures import FailureReport
from bearerguard._fork import reset_after_fork
from bearerguard.errors import ConfigurationError

if TYPE_CHECKING:
    from bearerguard.guard import BearerGuard

__all__ = [
    "AUDIT_EVENTS_LOST",
    "CACHE",
    "DECISIONS",
    "DECISION_SECONDS",
    "JWKS_FETCHES",
    "JWKS_LAST_SUCCESS",
    "LATENCY_BUCKETS",
    "REVOCATION_FAILURES",
    "USAGE_UNMONITORED",
    "InMemoryMetrics",
    "MetricsHook",
    "PrometheusMetrics",
    "count",
    "hook_failures",
    "metrics_failed",
    "set_gauge",
]

_log = logging.getLogger("bearerguard")

DECISIONS = "bearerguard_decisions_total"
DECISION_SECONDS = "bearerguard_decision_seconds"
CACHE = "bearerguard_token_cache_total"
JWKS_FETCHES = "bearerguard_jwks_fetches_total"
REVOCATION_FAILURES = "bearerguard_revocation_failures_total"
JWKS_AGE = "bearerguard_jwks_age_seconds"
JWKS_LAST_SUCCESS = "bearerguard_jwks_last_success_timestamp_seconds"
AUDIT_EVENTS_LOST = "bearerguard_audit_events_lost_total"
USAGE_UNMONITORED = "bearerguard_usage_unmonitored_total"

LATENCY_BUCKETS = (0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""Upper bounds, in seconds: a cache hit takes microseconds, a key fetch up to the timeout."""

_LABELS = {
    DECISIONS: ("event", "reason"),
    DECISION_SECONDS: ("event",),
    CACHE: ("result",),
    JWKS_FETCHES: ("result",),
    REVOCATION_FAILURES: ("store",),
    AUDIT_EVENTS_LOST: ("event",),
    USAGE_UNMONITORED: ("monitor",),
}
_HELP = {
    DECISIONS: "Authentication and authorization decisions, by audit event and reason.",
    DECISION_SECONDS: "Time spent deciding, by audit event.",
    CACHE: "Lookups in the verified-token cache.",
    JWKS_FETCHES: "Key set fetches, by result.",
    REVOCATION_FAILURES: "Revocation store failures, by store.",
    JWKS_AGE: "Seconds since the key set was last fetched successfully.",
    JWKS_LAST_SUCCESS: "When the key set was last fetched successfully, in epoch seconds.",
    AUDIT_EVENTS_LOST: "Audit events the application's logger failed to take, by event.",
    USAGE_UNMONITORED: "Requests let in unmonitored: the usage monitor failed, failing open.",
}


@runtime_checkable
class MetricsHook(Protocol):
    """Receives the guard's metrics. Called on the request path: keep both methods cheap.

    A hook may also have ``set_gauge(name, value, labels)``, which sets the gauge ``name``
    with ``labels`` to ``value``; a hook without it gets no gauge (see ``set_gauge``).
    """

    def increment(self, name: str, labels: dict[str, str]) -> None:
        """Add one to the counter ``name`` with ``labels``."""
        ...

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        """Record ``value`` in the histogram ``name`` with ``labels``."""
        ...


def hook_failures(
    *, window: float = 60.0, clock: Callable[[], float] = time.monotonic
) -> FailureReport:
    """The report of a metrics hook's failures: the first in full, with its traceback; then
    a count per ``window`` seconds while it keeps failing. Successes are not watched (a
    check per figure on the request path): a failure after ``window`` seconds without one
    says the last outage ended and is logged in full again."""
    return FailureReport(
        "bearerguard: the metrics hook failed; %s not recorded",
        "bearerguard: the metrics hook is still failing; %d more figures not recorded (%d in all)",
        "bearerguard: the metrics hook took figures again after %d not recorded",
        window=window,
        quiet=window,
        clock=clock,
    )


_hook_reports: weakref.WeakKeyDictionary[Any, FailureReport] = weakref.WeakKeyDictionary()
_hook_reports_lock = threading.Lock()
_unreferenced_hooks = hook_failures()
"""The report shared by the hooks that cannot be weakly referenced (or hashed)."""


def _forked() -> None:
    """In a child process after ``fork()``: a lock another thread of the parent held at the
    fork is never released here, and every failing hook's report waited for it forever."""
    global _hook_reports_lock  # noqa: PLW0603 - the module's state, made anew in the child
    _hook_reports_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork()
    os.register_at_fork(after_in_child=_forked)


def _report_for(hook: object) -> FailureReport:
    with _hook_reports_lock:
        try:
            report = _hook_reports.get(hook)
            if report is None:
                report = _hook_reports[hook] = hook_failures()
        except TypeError:
            return _unreferenced_hooks
    return report


def metrics_failed(name: str, exc: Exception, hook: object = None) -> None:
    """Report a figure the metrics hook failed to take (it raised). The decision it
    described stands: a refusal is still answered as one, an acceptance still reaches the
    app; neither becomes a 500.

    Bounded per ``hook`` (``hook_failures``): the first failure is logged with its
    traceback on the stdlib ``bearerguard`` logger, then one line a minute at most counts
    the figures lost while it keeps failing.
    """
    _report_for(hook).failed(name, exc)


def count(hook: MetricsHook | None, name: str, labels: dict[str, str]) -> None:
    """``hook.increment(name, labels)`` when there is a hook, whatever it raises."""
    if hook is not None:
        try:
            hook.increment(name, labels)
        except Exception as exc:  # noqa: BLE001 - the application's hook: never a 500
            metrics_failed(name, exc, hook)


def set_gauge(hook: MetricsHook | None, name: str, value: float, labels: dict[str, str]) -> None:
    """``hook.set_gauge(name, value, labels)`` when the hook has that optional method (a
    hook written with ``MetricsHook``'s two methods only is left alone), whatever it raises."""
    if hook is not None:
        try:
            setter = getattr(hook, "set_gauge", None)
            if setter is not None:
                setter(name, value, labels)
        except Exception as exc:  # noqa: BLE001 - the application's hook: never a 500
            metrics_failed(name, exc, hook)


def _check_buckets(buckets: Iterable[Any]) -> tuple[float, ...]:
    """``buckets`` as a tuple of floats, if finite and strictly increasing.

    ``bisect`` needs them sorted (an unsorted bound put values in the wrong bucket), and
    ``+Inf`` is the implicit last one (given too, its count was overwritten in snapshots).
    """
    try:
        bounds = tuple(buckets)
    except TypeError:
        raise ConfigurationError("buckets must be a sequence of numbers") from None
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        raise ConfigurationError("buckets must be a sequence of numbers")
    if not all(math.isfinite(b) for b in bounds):
        raise ConfigurationError("buckets must be finite (+Inf is added)")
    if any(low >= high for low, high in itertools.pairwise(bounds)):
        raise ConfigurationError("buckets must be strictly increasing")
    return tuple(float(b) for b in bounds)


class InMemoryMetrics:
    """Counters, histograms and gauges kept in this process; thread-safe.

    Args:
        buckets: the histograms' upper bounds, finite and increasing (``+Inf`` is added).

    Raises:
        ConfigurationError: buckets that are not finite, increasing numbers.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._buckets = _check_buckets(buckets)
        self._lock = threading.Lock()
        reset_after_fork(self)
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._histograms: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def _forked(self) -> None:
        """In a child process after ``fork()`` (bearerguard._fork): a lock another thread of
        the parent held at the fork is never released here, and every request of the worker
        waited for it when recording its figures."""
        self._lock = threading.Lock()

    def increment(self, name: str, labels: dict[str, str]) -> None:
        """Add one to a counter."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + 1

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        """Record a value: bucket counts, then the count and the sum."""
        key = (name, tuple(sorted(labels.items())))
        slot = bisect.bisect_left(self._buckets, value)
        with self._lock:
            histogram = self._histograms.get(key)
            if histogram is None:
                histogram = self._histograms[key] = [0.0] * (len(self._buckets) + 3)
            histogram[slot] += 1
            histogram[-2] += 1
            histogram[-1] += value

    def set_gauge(self, name: str, value: float, labels: dict[str, str]) -> None:
        """Set a gauge."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._gauges[key] = value

    def count(self, name: str, **labels: str) -> float:
        """A counter's value (0 when never incremented)."""
        return self._counters.get((name, tuple(sorted(labels.items()))), 0)

    def gauge(self, name: str, **labels: str) -> float | None:
        """A gauge's value (``None`` when never set)."""
        return self._gauges.get((name, tuple(sorted(labels.items()))))

    def snapshot(self) -> dict[str, Any]:
        """Every counter, histogram and gauge, as plain data."""
        with self._lock:
            counters = [
                {"name": name, "labels": dict(labels), "value": value}
                for (name, labels), value in sorted(self._counters.items())
            ]
            histograms = [
                {
                    "name": name,
                    "labels": dict(labels),
                    "count": values[-2],
                    "sum": values[-1],
                    "buckets": dict(zip([*self._buckets, float("inf")], values[:-2], strict=True)),
                }
                for (name, labels), values in sorted(self._histograms.items())
            ]
            gauges = [
                {"name": name, "labels": dict(labels), "value": value}
                for (name, labels), value in sorted(self._gauges.items())
            ]
        return {"counters": counters, "histograms": histograms, "gauges": gauges}


class PrometheusMetrics:
    """Exports the guard's metrics with ``prometheus_client`` (``bearerguard[prometheus]``).

    The gauge ``bearerguard_jwks_last_success_timestamp_seconds`` (``set_gauge``) is
    exported in multiprocess mode too, as the greatest of the workers' values.

    Args:
        registry: where to register; the default registry when omitted.
        guard: when given, also publishes ``bearerguard_jwks_age_seconds``, read at scrape
            (or later, for the guard given this hook: ``publish_key_set_age``); not in
            prometheus_client's multiprocess mode.

    Raises:
        ImportError: ``prometheus_client`` is not installed.
        ConfigurationError: ``guard`` given in multiprocess mode (``publish_key_set_age``).
    """

    def __init__(self, registry: Any = None, *, guard: BearerGuard | None = None) -> None:
        try:
            import prometheus_client as prometheus  # noqa: PLC0415 - an optional extra
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError(
                "PrometheusMetrics needs prometheus_client: pip install 'bearerguard[prometheus]'"
            ) from exc
        if guard is not None:
            _refuse_multiprocess(prometheus)  # before any counter is registered
        options: dict[str, Any] = {} if registry is None else {"registry": registry}
        self._metrics: dict[str, Any] = {}
        for name, labels in _LABELS.items():
            metric: Any
            if name == DECISION_SECONDS:
                metric = prometheus.Histogram(
                    name, _HELP[name], labels, buckets=LATENCY_BUCKETS, **options
                )
            else:
                # prometheus_client adds the _total suffix itself.
                metric = prometheus.Counter(
                    name.removesuffix("_total"), _HELP[name], labels, **options
                )
            self._metrics[name] = metric
        # Set by each worker as its fetch succeeds: under multiprocess mode the scrape
        # keeps the greatest of the workers' values, the latest success ("max"; as the
        # value is the instant it is written, "mostrecent" would give the same figure,
        # at the cost of a write timestamp per sample). Without that mode, "max" is unused.
        self._gauges: dict[str, Any] = {
            JWKS_LAST_SUCCESS: prometheus.Gauge(
                JWKS_LAST_SUCCESS,
                _HELP[JWKS_LAST_SUCCESS],
                ("issuer",),
                multiprocess_mode="max",
                **options,
            )
        }
        self._prometheus, self._options = prometheus, options
        self._age: Any = None
        if guard is not None:
            self.publish_key_set_age(guard)

    def publish_key_set_age(self, guard: BearerGuard) -> None:
        """Publish ``bearerguard_jwks_age_seconds`` of ``guard``, read at scrape time.

        For the guard built with this hook (``BearerGuard(metrics=...)`` needs the hook
        first): a second ``PrometheusMetrics`` on the same registry would register every
        counter twice. Calling it again switches the gauge to another guard.

        Raises:
            ConfigurationError: prometheus_client runs in multiprocess mode
                (``PROMETHEUS_MULTIPROC_DIR``), which cannot export a value read at scrape.
        """
        _refuse_multiprocess(self._prometheus)
        if self._age is None:
            self._age = self._prometheus.Gauge(JWKS_AGE, _HELP[JWKS_AGE], **self._options)
        self._age.set_function(lambda: _key_set_age(guard))

    def increment(self, name: str, labels: dict[str, str]) -> None:
        """Add one to a counter."""
        self._metrics[name].labels(**labels).inc()

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        """Record a value in a histogram."""
        self._metrics[name].labels(**labels).observe(value)

    def set_gauge(self, name: str, value: float, labels: dict[str, str]) -> None:
        """Set a gauge."""
        self._gauges[name].labels(**labels).set(value)


def _refuse_multiprocess(prometheus: Any) -> None:
    """Refuse the key set's age where prometheus_client could only export it wrong."""
    if prometheus.values.ValueClass is not prometheus.values.MutexValue:
        # Multiprocess mode exports what each process wrote to its files and never calls a
        # gauge's function: the age would read 0 for ever, even with no key ever fetched.
        raise ConfigurationError(
            f"{JWKS_AGE} is read when scraped, which prometheus_client's multiprocess mode "
            "(PROMETHEUS_MULTIPROC_DIR is set) cannot do: every worker would export 0. "
            "Leave it out there (no guard=, no publish_key_set_age); alert on "
            f"time() - {JWKS_LAST_SUCCESS} instead, which every PrometheusMetrics exports"
        )


def _key_set_age(guard: BearerGuard) -> float:
    """The gauge's value: +Inf while a guard that fetches its keys never had them (an alert on
    the age must fire for an instance that never got keys), 0 for static keys."""
    age = guard.key_set_age()
    if age is not None:
        return age
    return 0.0 if guard._refresher.fetcher is None else math.inf
