"""AuditLog's own behaviour: the logger it emits through, and the latency field."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog

from bearerguard.audit import AuditLog, RequestInfo
from bearerguard.errors import ExpiredTokenError
from bearerguard.testing import DevIssuer

REQUEST = RequestInfo("GET", "/items", "127.0.0.1", None)


class Sink:
    """A structlog processor that keeps every event and drops it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        self.events.append(dict(event))
        raise structlog.DropEvent


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_a_cached_logger_is_called_directly_after_the_first_event(
    session_issuer: DevIssuer,
) -> None:
    sink = Sink()
    structlog.configure(processors=[sink], cache_logger_on_first_use=True)
    audit = AuditLog()
    proxy = audit.logger
    token = session_issuer.guard().authenticate_sync(session_issuer.mint())
    audit.accepted(token, REQUEST, 0.001)
    assert audit.logger is not proxy
    assert audit.logger is proxy.bind()  # the very logger structlog cached
    # capture_logs (and so bearerguard.testing.audit_events) still sees its events: it
    # swaps the processors inside the list cached loggers hold.
    with structlog.testing.capture_logs() as captured:
        audit.refused(ExpiredTokenError("expired"), REQUEST, 0.002)
    assert [event["event"] for event in captured] == ["token.rejected"]
    # As with structlog's own cached loggers, a later configure does not reach it.
    structlog.configure(processors=[Sink()])
    audit.accepted(token, REQUEST, 0.002)
    audit.refused(ExpiredTokenError("expired"), REQUEST, 0.003)
    assert [event["event"] for event in sink.events] == [
        "token.accepted",
        "token.accepted",
        "token.rejected",
    ]
    assert sink.events[0].keys() == sink.events[1].keys()


def test_without_caching_events_follow_a_later_configuration(session_issuer: DevIssuer) -> None:
    first, second = Sink(), Sink()
    structlog.configure(processors=[first], cache_logger_on_first_use=False)
    audit = AuditLog()
    proxy = audit.logger
    token = session_issuer.guard().authenticate_sync(session_issuer.mint())
    audit.accepted(token, REQUEST, 0.001)
    structlog.configure(processors=[second])
    audit.refused(ExpiredTokenError("expired"), REQUEST, 0.002)
    with structlog.testing.capture_logs() as captured:
        audit.accepted(token, REQUEST, 0.003)
    assert audit.logger is proxy
    assert [event["event"] for event in first.events] == ["token.accepted"]
    assert [event["event"] for event in second.events] == ["token.rejected"]
    assert [event["event"] for event in captured] == ["token.accepted"]


def test_a_logger_given_is_used_as_it_is() -> None:
    sink = Sink()
    structlog.configure(cache_logger_on_first_use=True)
    logger = structlog.wrap_logger(None, processors=[sink])
    audit = AuditLog(logger=logger)
    audit.refused(ExpiredTokenError("expired"), REQUEST, 0.001)
    audit.refused(ExpiredTokenError("expired"), REQUEST, 0.001)
    assert audit.logger is logger
    assert len(sink.events) == 2


@pytest.mark.parametrize(
    ("seconds", "milliseconds"),
    [(0.0, 0.0), (0.000_123_4, 0.123), (0.000_123_6, 0.124), (1.5, 1500.0), (42, 42000.0)],
)
def test_latency_is_in_milliseconds_to_the_microsecond(
    seconds: float, milliseconds: float, session_issuer: DevIssuer
) -> None:
    token = session_issuer.guard().authenticate_sync(session_issuer.mint())
    with structlog.testing.capture_logs() as events:
        AuditLog().accepted(token, REQUEST, seconds)
        AuditLog().refused(ExpiredTokenError("expired"), REQUEST, seconds)
    for event in events:
        assert event["latency_ms"] == milliseconds
        assert type(event["latency_ms"]) is float
