"""Audit events: one structured event per decision, on the ``bearerguard.audit`` logger.

The library only asks structlog for a logger; configuring structlog (renderers, levels,
where events go) belongs to the application. Events never carry the raw token nor any part
of its signature: a short SHA-256 fingerprint correlates events of one token.

Event names (stable): ``token.accepted``, ``token.rejected``, ``scope.denied``,
``auth.unavailable`` and ``token.anomaly`` (usage monitoring); the SET receiver adds
``event.received`` and ``event.rejected``. ``docs/audit-events.md`` documents every field.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import structlog

from bearerguard._core.extract import redact_token
from bearerguard._core.usage import UsageVerdict, consequence
from bearerguard._failures import FailureReport
from bearerguard.errors import AuthError, InsufficientScopeError, ServiceUnavailableError
from bearerguard.metrics import (
    AUDIT_EVENTS_LOST,
    DECISION_SECONDS,
    DECISIONS,
    MetricsHook,
    count,
    metrics_failed,
)
from bearerguard.token import AccessToken

__all__ = ["AUDIT_LOGGER_NAME", "AuditLog", "RequestInfo", "token_fields"]

AUDIT_LOGGER_NAME = "bearerguard.audit"
_MAX_FIELD = 128  # header values chosen by clients are truncated before logging
_MAX_PATH = 512
_MAX_DETAIL = 512  # a detail may quote what a client sent (an MCP body's content coding)


class RequestInfo:
    """What the audit log records about the request: filled by each integration.

    Values are kept as given; they are truncated only when an event is emitted, so building
    one costs nothing on the hot path.
    """

    __slots__ = ("client", "method", "path", "request_id")

    def __init__(self, method: str, path: str, client: str | None, request_id: str | None) -> None:
        self.method = method
        self.path = path
        self.client = client
        self.request_id = request_id

    def fields(self) -> dict[str, Any]:
        """The event fields describing the request, truncated."""
        request_id = self.request_id
        client = self.client
        return {
            "method": _printable(self.method[:_MAX_FIELD]),
            "path": _printable(self.path[:_MAX_PATH]),
            # Behind a proxy the address is a client's header (X-Forwarded-For, read by
            # uvicorn's --proxy-headers or werkzeug's ProxyFix): any text, of any length.
            "client": _printable(client[:_MAX_FIELD]) if client else None,  # "": no address
            "request_id": _printable(request_id[:_MAX_FIELD]) if request_id else None,
        }


def _escaped(value: str) -> str:
    """``value`` as printable ASCII, Python's escapes standing for the rest (``\\n``,
    ``\\x1b``, ``\\xe9``): an unverified header's text can neither break a log line nor
    fail a log sink's encoding."""
    if value.isascii() and value.isprintable():
        return value
    return value.encode("unicode_escape").decode("ascii")


def _printable(value: str) -> str:
    """``value`` itself when every character prints; else with Python's escapes for the
    text (``\\n``, ``\\x1b``, ``\\u2028``, a lone surrogate): a percent-encoded line break
    in a path, or a control character in a header or claim, can neither forge a log line
    nor fail a sink's encoding, whatever the application's renderer."""
    return value if value.isprintable() else value.encode("unicode_escape").decode("ascii")


def sink_failures(
    *, window: float = 60.0, clock: Callable[[], float] = time.monotonic
) -> FailureReport:
    """The report of an audit logger's failures: the first in full, with its traceback;
    then a count per ``window`` seconds while it stays down; one line once it recovers."""
    return FailureReport(
        "bearerguard: the audit logger failed; %s event lost",
        "bearerguard: the audit logger is still failing; %d more events lost (%d in all)",
        "bearerguard: audit sink recovered after %d lost events",
        window=window,
        clock=clock,
    )


def _milliseconds(seconds: float) -> float:
    """``seconds`` in milliseconds to the microsecond (``round(x, 3)`` costs three times more)."""
    return round(seconds * 1_000_000) / 1000


def token_fields(token: AccessToken) -> dict[str, Any]:
    """The event fields describing ``token``: the middlewares build them once per cached token."""
    subject, client_id, token_id, key_id = (
        token.subject,
        token.client_id,
        token.token_id,
        token.key_id,
    )
    # The exp claim as the token has it (epoch seconds, RFC 7519 §4.1.4): with iss and jti,
    # what revoking this one token takes. Not expires_at: a datetime costs a conversion.
    exp = token.claims.get("exp")
    if type(exp) is not int and type(exp) is not float:
        exp = None
    # Signed by the issuer, but some issuers put user-chosen text in them (a username as sub).
    return {
        "sub": None if subject is None else _printable(subject),
        "client_id": None if client_id is None else _printable(client_id),
        "iss": _printable(token.issuer),
        "jti": None if token_id is None else _printable(token_id),
        "exp": exp,
        "kid": None if key_id is None else _printable(key_id),
        "alg": token.algorithm,
        "scopes": [_printable(scope) for scope in sorted(token.scopes)],
        "token_fp": token.fingerprint,
    }


class AuditLog:
    """Emits the audit events of one guard.

    Args:
        sample_accepted: the share of ``token.accepted`` events emitted, from 0.0 (none) to
            1.0 (all). Refusals are always emitted.
        logger: a structlog-compatible logger; by default ``structlog.get_logger``
            named ``bearerguard.audit``.
        metrics: counts every decision and its latency, whatever the sampling, and the
            events the logger failed to take (``bearerguard_audit_events_lost_total``).
        failure_window: while the logger keeps failing, seconds between the summary
            lines that count the events lost (see ``lost``).
        clock: monotonic seconds for that window; injectable for tests.
    """

    __slots__ = ("_failures", "_logger", "_proxy", "_sample", "metrics", "records_accepted")

    def __init__(
        self,
        *,
        sample_accepted: float = 1.0,
        logger: Any = None,
        metrics: MetricsHook | None = None,
        failure_window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 <= sample_accepted <= 1.0:
            raise ValueError("sample_accepted must be between 0 and 1")
        self._failures = sink_failures(window=failure_window, clock=clock)
        self._sample = sample_accepted
        if logger is None:
            logger = self._proxy = structlog.get_logger(AUDIT_LOGGER_NAME)
        else:
            self._proxy = None
        self._logger = logger
        self.metrics = metrics
        self.records_accepted = sample_accepted > 0.0 or metrics is not None
        """Whether ``accepted`` has anything to do: events sampled in, or metrics to count."""

    def _count(self, event: str, reason: str, latency: float) -> None:
        metrics = self.metrics
        if metrics is not None:
            try:
                metrics.increment(DECISIONS, {"event": event, "reason": reason})
                metrics.observe(DECISION_SECONDS, latency, {"event": event})
            except Exception as exc:  # noqa: BLE001 - the application's hook: never a 500
                metrics_failed(DECISIONS, exc, metrics)  # the decision is answered all the same

    def lost(self, event: str, exc: Exception) -> None:
        """Report an ``event`` the logger failed to take (a processor or its sink raised).

        The decision stands: a refusal is still answered as one, an acceptance still
        reaches the app; neither becomes a 500. The first failure is logged on the stdlib
        ``bearerguard`` logger with its traceback; while the logger keeps failing, one line
        per ``failure_window`` counts the events lost, and one more says when it works
        again. Each lost event is counted in ``bearerguard_audit_events_lost_total``.
        """
        if self.metrics is not None:
            count(self.metrics, AUDIT_EVENTS_LOST, {"event": event})
        self._failures.failed(event, exc)

    def taken(self) -> None:
        """The logger took an event: after failures, report that it recovered.

        Callers check ``sink_failing`` first, so a working logger costs one attribute read.
        """
        self._failures.recovered()

    @property
    def sink_failing(self) -> bool:
        """Whether the logger failed last time (``lost``) and has not taken an event since."""
        return self._failures.failing

    @property
    def logger(self) -> Any:
        """The structlog logger events go to, for sibling components (the SET receiver)."""
        return self._logger

    def _settle(self) -> None:
        """Emit through the logger structlog's lazy proxy has cached, once it has cached one.

        With ``cache_logger_on_first_use``, the proxy from ``structlog.get_logger``
        assembles a bound logger at its first use and hands out that same logger ever after
        (a later ``structlog.configure`` does not reach it). Calling that logger directly
        skips the proxy's lookup on every event, 0.6 µs, and changes nothing else
        (``structlog.testing.capture_logs`` swaps the processors inside the list that
        logger holds, so it still sees the events). Without caching, events keep going
        through the proxy, so a later ``configure`` applies to them.
        """
        proxy = self._proxy
        # The proxy marks a cached logger by replacing its bind method on the instance.
        if proxy is not None and "bind" in vars(proxy):
            self._logger = proxy.bind()
            self._proxy = None

    def token_logger(self, described: dict[str, Any]) -> Any:
        """A logger for one token's ``token.accepted`` events as a Bearer token.

        It has the token's fields (``described``, from ``token_fields``) and the event's
        constant ones bound, so an event of a cached token passes only its five per-request
        fields through structlog's call boundaries (about 2.5 µs less per event than all
        eighteen on a slow machine). ``None`` while events go through the lazy proxy of
        ``structlog.get_logger`` (structlog has not cached a logger, or never will): a
        later ``structlog.configure`` must still reach them. A structlog bound logger, given
        or cached, keeps its processors whatever ``configure`` does later, and the loggers
        bound from it share them (so ``structlog.testing.capture_logs`` sees their events).
        """
        logger = self._logger
        if isinstance(logger, structlog.BoundLoggerBase):
            return logger.bind(
                outcome="allow", reason="ok", status=None, binding="bearer", **described
            )
        return None

    def admits_accepted(self, latency: float) -> bool:
        """Count an acceptance in the metrics, and say whether its event is sampled in.

        ``accepted`` asks it first; a caller with work to do only for an emitted event
        (``Verified.record_accepted`` binding a token's logger) asks it, then calls
        ``emit_accepted``.
        """
        if self.metrics is not None:
            self._count("token.accepted", "ok", latency)
        sample = self._sample
        return sample >= 1.0 or (sample > 0.0 and random.random() < sample)  # noqa: S311

    def accepted(
        self,
        token: AccessToken,
        request: RequestInfo,
        latency: float,
        *,
        binding: str = "bearer",
        described: dict[str, Any] | None = None,
    ) -> None:
        """Record a request let through with ``token``.

        ``binding`` is how the token was presented: ``"bearer"``, ``"dpop"`` with a
        proof of possession (RFC 9449), or ``"mtls"``: bound to the client certificate
        of the request (RFC 8705). ``described`` is ``token_fields(token)`` when the caller
        keeps it from an earlier request with the same token.
        """
        if self.admits_accepted(latency):
            self.emit_accepted(token, request, latency, binding=binding, described=described)

    def emit_accepted(
        self,
        token: AccessToken,
        request: RequestInfo,
        latency: float,
        *,
        binding: str = "bearer",
        described: dict[str, Any] | None = None,
        token_logger: Any = None,
    ) -> None:
        """The ``token.accepted`` event itself, once ``admits_accepted`` said yes.

        ``token_logger`` is this log's ``token_logger(described)`` when the caller keeps it.
        """
        if token_logger is not None and binding == "bearer":
            self.accepted_through(token_logger, request, latency, admitted=True)
            return
        # The request's fields, as RequestInfo.fields gives them, without building a dict.
        # Behind a proxy the address is a client's X-Forwarded-For: truncated and escaped
        # as in every other event (a security fix: a raw "\x85" forges a log line).
        request_id, client = request.request_id, request.client
        request_id = _printable(request_id[:_MAX_FIELD]) if request_id else None
        client = _printable(client[:_MAX_FIELD]) if client else None
        method = _printable(request.method[:_MAX_FIELD])
        path = _printable(request.path[:_MAX_PATH])
        try:
            self._logger.info(
                "token.accepted",
                outcome="allow",
                reason="ok",
                status=None,
                latency_ms=_milliseconds(latency),
                binding=binding,
                method=method,
                path=path,
                client=client,
                request_id=request_id,
                **(token_fields(token) if described is None else described),
            )
        except Exception as exc:  # noqa: BLE001 - the application's logger: never a 500
            self.lost("token.accepted", exc)
        else:
            if self._failures.failing:
                self._failures.recovered()
        if self._proxy is not None:
            self._settle()

    def accepted_through(
        self, token_logger: Any, request: RequestInfo, latency: float, *, admitted: bool = False
    ) -> None:
        """``accepted`` for a Bearer token whose ``token_logger`` is kept: counted, sampled
        and emitted in one frame, the same event as ``emit_accepted``'s.

        The cache hit's path, every event of a token after its first. ``admitted``: the
        caller asked ``admits_accepted`` already, so the acceptance is neither counted nor
        sampled again.
        """
        if not admitted:  # as admits_accepted, without its frame
            if self.metrics is not None:
                self._count("token.accepted", "ok", latency)
            sample = self._sample
            if sample < 1.0 and (sample <= 0.0 or random.random() >= sample):  # noqa: S311
                return
        # The request's fields as RequestInfo.fields gives them (truncated, then escaped:
        # behind a proxy the client is an X-Forwarded-For, and a raw "\x85" forges a log
        # line). Written out: a text short enough and printable is its own field, which
        # spares a slice and a call per field (_printable's test, made first).
        method, path, client, request_id = (
            request.method,
            request.path,
            request.client,
            request.request_id,
        )
        if len(method) > _MAX_FIELD or not method.isprintable():
            method = _printable(method[:_MAX_FIELD])
        if len(path) > _MAX_PATH or not path.isprintable():
            path = _printable(path[:_MAX_PATH])
        if not client:  # "": no address, as RequestInfo.fields gives it
            client = None
        elif len(client) > _MAX_FIELD or not client.isprintable():
            client = _printable(client[:_MAX_FIELD])
        if not request_id:
            request_id = None
        elif len(request_id) > _MAX_FIELD or not request_id.isprintable():
            request_id = _printable(request_id[:_MAX_FIELD])
        try:  # the other thirteen fields are bound to token_logger
            token_logger.info(
                "token.accepted",
                latency_ms=round(latency * 1_000_000) / 1000,  # as _milliseconds, no call
                method=method,
                path=path,
                client=client,
                request_id=request_id,
            )
        except Exception as exc:  # noqa: BLE001 - the application's logger: never a 500
            self.lost("token.accepted", exc)
        else:
            if self._failures.failing:  # the one read a working logger costs
                self._failures.recovered()

    def anomaly(self, token: AccessToken, request: RequestInfo, verdict: UsageVerdict) -> None:
        """Record ``token`` used beyond a usage limit: ``token.anomaly`` (always emitted).

        ``action`` is what the guard does about it (``log``, ``reject`` or ``revoke``, see
        ``bearerguard.usage.consequence``); ``breaches`` lists each limit exceeded with its
        count; the four counts are ``None`` where not measured.
        """
        action = consequence(verdict)
        try:
            self._logger.warning(
                "token.anomaly",
                outcome="allow" if action in ("allow", "log") else "deny",
                reason="usage_anomaly",
                status=None if action in ("allow", "log") else 401,
                action=action,
                breaches=[
                    {"scope": b.scope, "measure": b.measure, "count": b.count, "limit": b.limit}
                    for b in verdict.breaches
                ],
                window_s=verdict.window,
                first=verdict.first,
                token_uses=verdict.token_uses,
                token_addresses=verdict.token_addresses,
                subject_uses=verdict.subject_uses,
                subject_addresses=verdict.subject_addresses,
                **request.fields(),
                **token_fields(token),
            )
        except Exception as exc:  # noqa: BLE001 - the application's logger: never a 500
            self.lost("token.anomaly", exc)
        else:
            if self._failures.failing:
                self._failures.recovered()

    def refused(
        self,
        error: AuthError,
        request: RequestInfo,
        latency: float,
        *,
        token: AccessToken | None = None,
        status: int | None = None,
    ) -> None:
        """Record a refusal, with what ``error`` (or ``token``) tells of the refused token.

        ``status`` is the HTTP status answered when it is not the error's own: the MCP SDK
        answers every refusal of its token verifier with 401.
        """
        fields: dict[str, Any]
        token = token or error.token
        detail = error.detail
        if detail is not None and token is not None:
            # An application's store or check may quote the token it was given (a usage
            # monitor's failure, a DPoP replay store's refusal): kept out of every event.
            detail = redact_token(detail, token.raw)
        if token is not None:
            fields = token_fields(token)
        else:
            fields = {"token_fp": error.fingerprint}
            header = error.header
            if header:
                for name in ("kid", "alg"):
                    value = header.get(name)
                    if isinstance(value, str):
                        fields[name] = _escaped(value[:_MAX_FIELD])
        if error.store is not None:
            fields["store"] = error.store
        if isinstance(error, InsufficientScopeError):
            event, level = "scope.denied", "warning"
            fields["required_scopes"] = list(error.required)
            fields["scope_match"] = "any" if error.any_of else "all"
        elif isinstance(error, ServiceUnavailableError):
            event, level = "auth.unavailable", "error"
        else:
            event, level = "token.rejected", "warning"
        if self.metrics is not None:
            self._count(event, error.reason, latency)
        try:
            getattr(self._logger, level)(
                event,
                outcome="error" if level == "error" else "deny",
                reason=error.reason,
                status=error.status if status is None else status,
                detail=None if detail is None else _printable(detail[:_MAX_DETAIL]),
                latency_ms=_milliseconds(latency),
                binding=error.binding,
                **request.fields(),
                **fields,
            )
        except Exception as exc:  # noqa: BLE001 - the application's logger: never a 500
            self.lost(event, exc)  # the refusal is answered all the same
        else:
            if self._failures.failing:
                self._failures.recovered()
        if self._proxy is not None:
            self._settle()
