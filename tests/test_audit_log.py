"""AuditLog's own behaviour: the logger it emits through, and the latency field."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import anyio
import pytest
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bearerguard import AccessToken, BearerGuard
from bearerguard._context import SCOPE_KEY
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.audit import AuditLog, RequestInfo, sink_failures, token_fields
from bearerguard.errors import ExpiredTokenError
from bearerguard.metrics import AUDIT_EVENTS_LOST, DECISIONS, InMemoryMetrics
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer, audit_events
from bearerguard.usage import UsageMonitorError, UsagePolicy, UsageVerdict
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.helpers import Clock, asgi_call, http_scope

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


def bound_logger(*processors: Any) -> Any:
    """A structlog bound logger with ``processors``, made directly (no lazy proxy)."""
    bound_logger_class: Any = structlog.make_filtering_bound_logger(logging.INFO)
    return bound_logger_class(None, list(processors), {})


def test_no_token_logger_through_the_lazy_proxy(session_issuer: DevIssuer) -> None:
    structlog.configure(processors=[Sink()], cache_logger_on_first_use=False)
    token = session_issuer.guard().authenticate_sync(session_issuer.mint())
    assert AuditLog().token_logger(token_fields(token)) is None
    given = AuditLog(logger=structlog.wrap_logger(None, processors=[Sink()]))
    assert given.token_logger(token_fields(token)) is None


def test_a_token_logger_carries_the_tokens_fields(session_issuer: DevIssuer) -> None:
    sink = Sink()
    audit = AuditLog(logger=bound_logger(sink))
    token = session_issuer.guard().authenticate_sync(session_issuer.mint())
    described = token_fields(token)
    bound = audit.token_logger(described)
    audit.accepted(token, REQUEST, 0.001, described=described)
    audit.emit_accepted(token, REQUEST, 0.001, token_logger=bound)
    assert sink.events[0] == sink.events[1]
    assert described.items() <= sink.events[1].items()
    # Its bound fields are those of a Bearer token's acceptance: other bindings pass theirs.
    audit.emit_accepted(
        token, REQUEST, 0.001, binding="dpop", described=described, token_logger=bound
    )
    assert sink.events[2] == {**sink.events[0], "binding": "dpop"}


@pytest.mark.parametrize(
    "request_info",
    [
        REQUEST,
        RequestInfo("GET", "/items", "", ""),
        RequestInfo("GET", "/" + "p" * 600, "c" * 200, "r" * 200),
        RequestInfo("GE\nT", "/a\x1b[31m\u2028b", "10.0.0.1\r\nx", "id\x85\ud800"),
        RequestInfo("X" * 130 + "\n", "/" + "p" * 511 + "\n", "c" * 128 + "\n", "\t" * 300),
    ],
)
def test_an_event_through_a_token_logger_is_the_full_event(
    session_issuer: DevIssuer, request_info: RequestInfo
) -> None:
    # The cache hit's emission (the token's fields bound) truncates and escapes the
    # request's text exactly as the event with every field passed does.
    sink = Sink()
    audit = AuditLog(logger=bound_logger(sink))
    token = session_issuer.guard().authenticate_sync(session_issuer.mint())
    audit.accepted(token, request_info, 0.0012345)
    audit.accepted_through(audit.token_logger(token_fields(token)), request_info, 0.0012345)
    assert sink.events[0] == sink.events[1]
    assert all(str(value).isprintable() for value in sink.events[1].values())


@pytest.mark.parametrize("sample", [0.0, 1.0])
def test_an_event_through_a_token_logger_is_counted_and_sampled_as_any(
    session_issuer: DevIssuer, sample: float
) -> None:
    sink, metrics = Sink(), InMemoryMetrics()
    audit = AuditLog(logger=bound_logger(sink), sample_accepted=sample, metrics=metrics)
    token = session_issuer.guard().authenticate_sync(session_issuer.mint())
    bound = audit.token_logger(token_fields(token))
    audit.accepted_through(bound, REQUEST, 0.001)
    assert len(sink.events) == (1 if sample else 0)
    assert metrics.count(DECISIONS, event="token.accepted", reason="ok") == 1
    # Admitted by the caller already: emitted, and neither sampled nor counted again.
    audit.accepted_through(bound, REQUEST, 0.001, admitted=True)
    assert len(sink.events) == (2 if sample else 1)
    assert metrics.count(DECISIONS, event="token.accepted", reason="ok") == 1


def serve_asgi(guard: BearerGuard) -> Callable[[str], int]:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(
        routes=[Route("/", hello)], middleware=[Middleware(BearerGuardMiddleware, guard=guard)]
    )
    client = TestClient(app)

    def get(token: str) -> int:
        return client.get("/", headers={"Authorization": f"Bearer {token}"}).status_code

    return get


def serve_wsgi(guard: BearerGuard) -> Callable[[str], int]:
    def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    app = BearerGuardWSGIMiddleware(hello, guard=guard)

    def get(token: str) -> int:
        seen: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "QUERY_STRING": "",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "wsgi.input": io.BytesIO(b""),
        }
        b"".join(app(environ, lambda status, headers: seen.append(status)))
        return int(seen[0].split()[0])

    return get


SERVERS = [pytest.param(serve_asgi, id="asgi"), pytest.param(serve_wsgi, id="wsgi")]


@pytest.mark.parametrize("serve", SERVERS)
def test_a_reused_token_is_audited_through_a_logger_with_its_fields_bound(
    session_issuer: DevIssuer, serve: Callable[[BearerGuard], Callable[[str], int]]
) -> None:
    sink = Sink()
    structlog.configure(processors=[sink], cache_logger_on_first_use=True)
    guard = session_issuer.guard()
    get = serve(guard)
    token = session_issuer.mint()
    assert [get(token) for _ in range(3)] == [200, 200, 200]
    entry = guard.reused(b"Bearer " + token.encode())
    assert entry is not None
    assert entry.audit_logger is not None
    assert entry.audit_logger[0] is guard.audit
    # The first event (a verification) and the reused token's carry the same fields.
    events = [{**event, "latency_ms": None} for event in sink.events]
    assert [event["event"] for event in events] == ["token.accepted"] * 3
    assert events[0] == events[1] == events[2]
    with structlog.testing.capture_logs() as captured:  # its loggers share the processors
        assert get(token) == 200
    assert [event["event"] for event in captured] == ["token.accepted"]
    assert captured[0]["token_fp"] == events[0]["token_fp"]


@pytest.mark.parametrize("serve", SERVERS)
def test_without_caching_a_reused_tokens_events_follow_a_later_configuration(
    session_issuer: DevIssuer, serve: Callable[[BearerGuard], Callable[[str], int]]
) -> None:
    first, second = Sink(), Sink()
    structlog.configure(processors=[first], cache_logger_on_first_use=False)
    guard = session_issuer.guard()
    get = serve(guard)
    token = session_issuer.mint()
    assert [get(token) for _ in range(2)] == [200, 200]
    structlog.configure(processors=[second])
    assert get(token) == 200
    entry = guard.reused(b"Bearer " + token.encode())
    assert entry is not None
    assert entry.audit_logger is None
    assert len(first.events) == 2
    assert [event["event"] for event in second.events] == ["token.accepted"]


def test_a_cached_token_binds_again_for_another_audit_log(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard()
    token = session_issuer.mint()
    guard.authenticate_sync(token)
    entry = guard.reused(b"Bearer " + token.encode())
    assert entry is not None
    one, other = Sink(), Sink()
    first, second = AuditLog(logger=bound_logger(one)), AuditLog(logger=bound_logger(other))
    kept = entry.token_logger(first)
    assert entry.token_logger(first) is kept
    entry.token_logger(second).info("token.accepted")
    assert not one.events
    assert other.events[0]["token_fp"] == entry.token.fingerprint


@pytest.mark.parametrize("serve", SERVERS)
def test_an_acceptance_only_counted_binds_no_logger(
    session_issuer: DevIssuer, serve: Callable[[BearerGuard], Callable[[str], int]]
) -> None:
    sink = Sink()
    structlog.configure(processors=[sink], cache_logger_on_first_use=True)
    metrics = InMemoryMetrics()
    guard = session_issuer.guard(metrics=metrics, audit_sample_accepted=0.0)
    get = serve(guard)
    token = session_issuer.mint()
    assert [get(token) for _ in range(3)] == [200, 200, 200]
    entry = guard.reused(b"Bearer " + token.encode())
    assert entry is not None
    assert entry.audit_logger is None  # nothing emitted, so nothing bound
    assert sink.events == []
    assert metrics.count(DECISIONS, event="token.accepted", reason="ok") == 3


def _unsigned(header: bytes, payload: bytes = b'{"sub":"x"}') -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(payload)}.{b64(b'sig')}"


def _utf8_console() -> tuple[Any, io.BytesIO]:
    """A logger rendering to a UTF-8 text stream, which raises on what UTF-8 cannot carry,
    as a real stdout does."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    logger = structlog.wrap_logger(
        structlog.PrintLogger(stream),
        processors=[structlog.dev.ConsoleRenderer(colors=False)],
    )
    return logger, raw


@pytest.mark.parametrize("serve", SERVERS)
@pytest.mark.parametrize(
    "header",
    [
        rb'{"alg":"ES256","kid":"\ud800"}',
        rb'{"alg":"\udfff"}',
        rb'{"alg":"ES256","x":"\ud83d"}',
    ],
    ids=["kid", "alg", "other"],
)
def test_a_lone_surrogate_in_a_header_is_refused_and_logged_without_error(
    session_issuer: DevIssuer,
    serve: Callable[[BearerGuard], Callable[[str], int]],
    header: bytes,
) -> None:
    logger, raw = _utf8_console()
    get = serve(session_issuer.guard(audit_logger=logger))
    assert get(_unsigned(header)) == 401
    written = raw.getvalue().decode("utf-8")
    assert "token.rejected" in written
    assert "reason=malformed" in written


@pytest.mark.parametrize("serve", SERVERS)
def test_unverified_header_text_is_escaped_in_audit_events(
    session_issuer: DevIssuer, serve: Callable[[BearerGuard], Callable[[str], int]]
) -> None:
    sink = Sink()
    get = serve(session_issuer.guard(audit_logger=structlog.wrap_logger(None, processors=[sink])))
    kid = "k\n2026-11-29 [info] token.accepted sub=admin\x1b[0m é"
    header = json.dumps({"alg": "ES256", "kid": kid}).encode()
    assert get(_unsigned(header)) == 401
    [event] = sink.events
    assert event["kid"] == "k\\n2026-11-29 [info] token.accepted sub=admin\\x1b[0m \\xe9"
    assert event["kid"].isascii()
    assert event["kid"].isprintable()
    assert event["alg"] == "ES256"


@pytest.mark.parametrize("serve", SERVERS)
@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b'{"alg":"none","kid":"k1"}', "unsupported_algorithm"),
        (b'{"alg":"RS256","kid":"k1","crit":["exp"]}', "malformed_token"),
        (b'{"alg":"RS256","kid":"k1","cty":"JWT"}', "malformed_token"),
        (b'{"alg":"RS256","kid":"k1","zip":"DEF"}', "malformed_token"),
    ],
    ids=["alg-none", "crit", "nested", "zip"],
)
def test_a_header_refused_as_it_is_read_is_audited_with_its_kid_and_alg(
    session_issuer: DevIssuer,
    serve: Callable[[BearerGuard], Callable[[str], int]],
    header: bytes,
    reason: str,
) -> None:
    # docs/audit-events.md: a refused token's kid and alg are recorded whenever its header
    # parsed; an alg "none" token (RFC 8725 §3.1) is the one an operator most wants to see.
    sink = Sink()
    get = serve(session_issuer.guard(audit_logger=structlog.wrap_logger(None, processors=[sink])))
    assert get(_unsigned(header)) == 401
    [event] = sink.events
    assert event["reason"] == reason
    parsed = json.loads(header)
    assert (event["kid"], event["alg"]) == (parsed["kid"], parsed["alg"])


def test_a_non_canonical_signature_is_audited_with_the_headers_kid_and_alg(
    session_issuer: DevIssuer,
) -> None:
    sink = Sink()
    get = serve_asgi(
        session_issuer.guard(audit_logger=structlog.wrap_logger(None, processors=[sink]))
    )
    header, payload, _ = _unsigned(b'{"alg":"ES256","kid":"k1"}').split(".")
    # "c2k" is b"si"; "c2l" decodes alike with low bits set that a canonical encoding leaves
    # zero (RFC 4648 §3.5): refused while reading the token, after its header.
    assert get(f"{header}.{payload}.c2l") == 401
    [event] = sink.events
    assert event["detail"] == "non-canonical base64url segment"
    assert (event["kid"], event["alg"]) == ("k1", "ES256")


FORGED = "\n2026-11-29 [info     ] token.accepted sub=admin\x1b[0m\u2028"


def _forging_asgi(guard: BearerGuard) -> Callable[[str, dict[str, str]], int]:
    # Any path, line breaks included (a router's path pattern would not match those).
    client = TestClient(BearerGuardMiddleware(PlainTextResponse("hello"), guard=guard))

    def get(path: str, headers: dict[str, str]) -> int:
        return client.get(path, headers=headers).status_code

    return get


def _forging_wsgi(guard: BearerGuard) -> Callable[[str, dict[str, str]], int]:
    def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    app = BearerGuardWSGIMiddleware(hello, guard=guard)

    def get(path: str, headers: dict[str, str]) -> int:
        seen: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            # PEP 3333: the percent-decoded path's bytes, as latin-1 text.
            "PATH_INFO": urllib.parse.unquote(path).encode().decode("latin-1"),
            "QUERY_STRING": "",
            "REMOTE_ADDR": "127.0.0.1",
            **{f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()},
        }
        b"".join(app(environ, lambda status, _headers, *_: seen.append(status)))
        return int(seen[0].split()[0])

    return get


@pytest.mark.parametrize("serve", [_forging_asgi, _forging_wsgi], ids=["asgi", "wsgi"])
def test_request_and_token_text_is_escaped_in_audit_events(
    session_issuer: DevIssuer, serve: Callable[[BearerGuard], Callable[[str, dict[str, str]], int]]
) -> None:
    sink = Sink()
    get = serve(session_issuer.guard(audit_logger=structlog.wrap_logger(None, processors=[sink])))
    path = "/items" + urllib.parse.quote(FORGED)
    token = session_issuer.mint(sub="alice" + FORGED)
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "r1\x1b[0m"}
    # A first sight of the token, a cache hit, and a refusal.
    assert get(path, headers) == 200
    assert get(path, headers) == 200
    assert get(path, {"X-Request-ID": "r1\x1b[0m"}) == 401
    assert [event["event"] for event in sink.events] == ["token.accepted"] * 2 + ["token.rejected"]
    for event in sink.events:
        for value in event.values():
            assert not isinstance(value, str) or value.isprintable()
        assert event["path"].startswith("/items\\n2026-11-29 [info     ] token.accepted")
        assert event["request_id"] == "r1\\x1b[0m"
    for event in sink.events[:2]:
        assert event["sub"] == "alice" + FORGED.encode("unicode_escape").decode()
        assert event["sub"].startswith("alice\\n2026-11-29 [info     ] token.accepted")


def test_a_client_address_from_a_proxy_header_is_truncated_and_escaped(
    session_issuer: DevIssuer,
) -> None:
    # Behind a proxy the address is a client's X-Forwarded-For (uvicorn --proxy-headers,
    # werkzeug ProxyFix): any latin-1 text, as long as the header limit allows.
    forwarded = "198.51.100.7\x85forged " + "x" * 4000
    sink = Sink()
    guard = session_issuer.guard(audit_logger=structlog.wrap_logger(None, processors=[sink]))

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")  # pragma: no cover

    app = Starlette(
        routes=[Route("/", hello)], middleware=[Middleware(BearerGuardMiddleware, guard=guard)]
    )
    assert TestClient(app, client=(forwarded, 1)).get("/").status_code == 401
    wsgi = BearerGuardWSGIMiddleware(lambda environ, start_response: [], guard=guard)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "REMOTE_ADDR": forwarded,
        "wsgi.input": io.BytesIO(b""),
    }
    b"".join(wsgi(environ, lambda status, headers: None))
    assert len(sink.events) == 2
    for event in sink.events:
        assert event["client"] == "198.51.100.7\\x85forged " + "x" * (128 - 20)


def test_an_accepted_requests_client_address_is_truncated_and_escaped(
    session_issuer: DevIssuer,
) -> None:
    # As for refusals above: token.accepted, first verification and cache hits alike (the
    # hits through the token's own bound logger) records a proxy's X-Forwarded-For
    # truncated and escaped, never a raw "\x85" that a log viewer takes as a line break.
    forwarded = "198.51.100.7\x85forged " + "x" * 4000
    sink = Sink()
    structlog.configure(processors=[sink], cache_logger_on_first_use=True)
    guard = session_issuer.guard()
    headers = {"Authorization": f"Bearer {session_issuer.mint()}"}

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(
        routes=[Route("/", hello)], middleware=[Middleware(BearerGuardMiddleware, guard=guard)]
    )
    client = TestClient(app, client=(forwarded, 1))
    for _ in range(3):
        assert client.get("/", headers=headers).status_code == 200

    def ok(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "REMOTE_ADDR": forwarded,
        "HTTP_AUTHORIZATION": headers["Authorization"],
        "wsgi.input": io.BytesIO(b""),
    }
    b"".join(BearerGuardWSGIMiddleware(ok, guard=guard)(environ, lambda status, headers: None))
    assert [event["event"] for event in sink.events] == ["token.accepted"] * 4
    for event in sink.events:
        assert event["client"] == "198.51.100.7\\x85forged " + "x" * (128 - 20)


def test_a_repeated_request_id_is_recorded_alike_by_every_integration(
    session_issuer: DevIssuer,
) -> None:
    # RFC 9110 §5.3: repeated field lines are one comma-joined value, as a WSGI server
    # hands them over; the ASGI middleware (first sight and cache hit) and BearerAuth
    # without it record the same, neither only the first nor only the last header.
    from fastapi import FastAPI

    from bearerguard.fastapi import BearerAuth
    from bearerguard.testing import audit_events

    token = session_issuer.mint()
    headers = [("Authorization", f"Bearer {token}"), ("X-Request-ID", "a"), ("X-Request-ID", "b")]
    starlette = Starlette(
        routes=[Route("/me", lambda request: PlainTextResponse("ok"))],
        middleware=[Middleware(BearerGuardMiddleware, guard=session_issuer.guard(in_process=True))],
    )
    bearer = BearerAuth(session_issuer.guard(in_process=True))
    fastapi_app = FastAPI()

    @fastapi_app.get("/me", dependencies=[bearer.requires()])
    async def me() -> dict[str, str]:
        return {}

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    wsgi = BearerGuardWSGIMiddleware(wsgi_app, guard=session_issuer.guard(in_process=True))
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/me",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_X_REQUEST_ID": "a, b",
        "wsgi.input": io.BytesIO(),
    }
    with audit_events() as events:
        with TestClient(starlette) as client:
            assert client.get("/me", headers=headers).status_code == 200
            assert client.get("/me", headers=headers).status_code == 200  # a cache hit
        with TestClient(fastapi_app) as client:
            assert client.get("/me", headers=headers).status_code == 200
        list(wsgi(environ, lambda *args: None))
    assert [event["request_id"] for event in events] == ["a, b"] * 4
    # The security-event receiver's events too.
    from bearerguard.events import _request_fields

    scope = {"headers": [(b"x-request-id", b"a"), (b"x-request-id", b"b")], "path": "/events"}
    assert _request_fields(scope)["request_id"] == "a, b"
    assert _request_fields({"headers": [], "path": "/events"})["request_id"] is None


def test_many_request_ids_are_joined_once(session_issuer: DevIssuer) -> None:
    # Tens of thousands of X-Request-ID headers (uvicorn's httptools parser limits no header
    # size) were joined value by value, in quadratic time, on first sight as on a cache hit.
    # The join now happens once (speed belongs to benchmarks/; this checks the result).
    token = session_issuer.mint()
    app = BearerGuardMiddleware(
        Starlette(routes=[Route("/me", lambda request: PlainTextResponse("ok"))]),
        guard=session_issuer.guard(in_process=True),
    )
    ids = [(b"x-request-id", b"abcdefgh")] * 5_000

    async def call() -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/me",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"authorization", f"Bearer {token}".encode()), *ids],
            "client": ("127.0.0.1", 1),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            pass

        await app(scope, receive, send)

    with audit_events() as events:
        anyio.run(call)
        anyio.run(call)
    assert [event["event"] for event in events] == ["token.accepted"] * 2
    joined = ", ".join(["abcdefgh"] * 5_000)[:128]
    assert [event["request_id"] for event in events] == [joined, joined]


def test_a_kid_is_escaped_when_unverified_and_whole_once_its_key_is_published(
    session_issuer: DevIssuer,
) -> None:
    # docs/audit-events.md: a header that did not verify is truncated and escaped; a verified
    # token's kid names a key its issuer publishes, and is written like its sub.
    kid = "clé-" + "k" * 200
    jwks = session_issuer.jwks()
    published = {**next(key for key in jwks["keys"] if key["kty"] == "RSA"), "kid": kid}
    store = MemoryRevocationStore()
    guard = BearerGuard(
        issuer=session_issuer.url,
        audience=session_issuer.audience,
        keys={"keys": [published]},
        revocation=store,
    )
    revoked = session_issuer.mint(headers={"kid": kid}, jti="kid-test")
    anyio.run(lambda: store.revoke_token("kid-test", expires_at=time.time() + 600))
    client = TestClient(BearerGuardMiddleware(PlainTextResponse("hello"), guard=guard))
    unknown = session_issuer.mint_forged(kid=kid)
    with structlog.testing.capture_logs() as events:
        for token in (revoked, unknown):
            assert client.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert [event["reason"] for event in events] == ["revoked", "bad_signature"]
    assert events[0]["kid"] == kid
    assert events[1]["kid"] == ("clé-" + "k" * 124).encode("unicode_escape").decode()


def _failing_sink(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """A processor whose sink is down (a full disk, a closed stream): it raises."""
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("flask", [False, True], ids=["asgi", "wsgi"])
def test_an_audit_logger_that_raises_never_changes_a_decision(
    session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture, flask: bool
) -> None:
    # Every decision stands when the application's logger fails: no 500 for a refusal, an
    # acceptance (first sight and cache hit, through the token's bound logger) or a scope
    # denial. The first lost event is reported, with its traceback, on the stdlib
    # "bearerguard" logger; the others are counted (bearerguard_audit_events_lost_total),
    # not each logged: a sink that stays down must not flood the error log.
    from tests.apps import build_app, build_flask_app

    metrics = InMemoryMetrics()
    guard = session_issuer.guard(audit_logger=bound_logger(_failing_sink), metrics=metrics)
    if flask:
        client = build_flask_app(guard).test_client()
    else:
        client = TestClient(build_app(guard), raise_server_exceptions=False)
    readable = {"Authorization": f"Bearer {session_issuer.mint(scopes=['items:read'])}"}
    other = {"Authorization": f"Bearer {session_issuer.mint(scopes=['other'])}"}
    with caplog.at_level(logging.ERROR, "bearerguard"):
        assert client.get("/me").status_code == 401
        assert client.get("/me", headers={"Authorization": "Bearer a.b.c"}).status_code == 401
        assert [client.get("/items", headers=readable).status_code for _ in range(3)] == [200] * 3
        assert client.get("/items", headers=other).status_code == 403
    reported = [record for record in caplog.records if record.name == "bearerguard"]
    first, _, traceback = reported[0].getMessage().partition("\n")
    assert first == "bearerguard: the audit logger failed; token.rejected event lost"
    assert traceback.startswith("Traceback (most recent call last)")
    # Later lines, if any (a summary once a window has passed), carry no traceback.
    assert all("\n" not in record.getMessage() for record in reported[1:])
    lost = AUDIT_EVENTS_LOST
    assert metrics.count(lost, event="token.rejected") == 2
    assert metrics.count(lost, event="token.accepted") == 4
    assert metrics.count(lost, event="scope.denied") == 1


class Disk:
    """A structlog processor writing to a disk that fills up: it raises while full."""

    def __init__(self) -> None:
        self.full = False
        self.events: list[dict[str, Any]] = []

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        if self.full:
            raise OSError(28, "No space left on device")
        self.events.append(dict(event))
        raise structlog.DropEvent


def _reports(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    """Each report's level, first line, and whether a traceback follows it."""
    return [
        (record.levelno, *_traced(record.getMessage()))
        for record in caplog.records
        if record.name == "bearerguard"
    ]


def _traced(message: str) -> tuple[str, bool]:
    first, _, rest = message.partition("\n")
    return first, rest.startswith("Traceback (most recent call last)")


def test_a_sink_that_stays_down_is_reported_once_then_counted_per_window(
    session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    disk, clock, metrics = Disk(), Clock(1000.0), InMemoryMetrics()
    audit = AuditLog(logger=bound_logger(disk), metrics=metrics, failure_window=60.0, clock=clock)
    token = session_issuer.guard().authenticate_sync(session_issuer.mint())
    bound = audit.token_logger(token_fields(token))
    expired = ExpiredTokenError("expired")
    disk.full = True
    with caplog.at_level(logging.DEBUG, "bearerguard"):
        audit.refused(expired, REQUEST, 0.001)  # the first: logged with its traceback
        for _ in range(3):
            audit.accepted(token, REQUEST, 0.001)
            audit.emit_accepted(token, REQUEST, 0.001, token_logger=bound)  # a cache hit
        clock.now += 59.9
        audit.refused(expired, REQUEST, 0.001)  # still within the window: counted only
        clock.now += 0.1
        audit.refused(expired, REQUEST, 0.001)  # the window is over: one summary line
        audit.refused(expired, REQUEST, 0.001)
        clock.now += 600
        audit.refused(expired, REQUEST, 0.001)  # a window later: the next summary
        disk.full = False
        audit.accepted(token, REQUEST, 0.001)  # the sink works again: said once
        audit.emit_accepted(token, REQUEST, 0.001, token_logger=bound)
        audit.refused(expired, REQUEST, 0.001)
    assert _reports(caplog) == [
        (logging.ERROR, "bearerguard: the audit logger failed; token.rejected event lost", True),
        (
            logging.ERROR,
            "bearerguard: the audit logger is still failing; 8 more events lost (9 in all)",
            False,
        ),
        (
            logging.ERROR,
            "bearerguard: the audit logger is still failing; 2 more events lost (11 in all)",
            False,
        ),
        (logging.WARNING, "bearerguard: audit sink recovered after 11 lost events", False),
    ]
    assert [event["event"] for event in disk.events] == ["token.accepted"] * 2 + ["token.rejected"]
    assert metrics.count(AUDIT_EVENTS_LOST, event="token.rejected") == 5
    assert metrics.count(AUDIT_EVENTS_LOST, event="token.accepted") == 6


def test_a_sink_that_fails_again_after_recovering_is_reported_in_full_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    disk, clock = Disk(), Clock(1000.0)
    audit = AuditLog(logger=bound_logger(disk), clock=clock)  # no metrics: logs all the same
    expired = ExpiredTokenError("expired")
    with caplog.at_level(logging.DEBUG, "bearerguard"):
        for full in (True, True, False, False, True, False):
            disk.full = full
            audit.refused(expired, REQUEST, 0.001)
    assert _reports(caplog) == [
        (logging.ERROR, "bearerguard: the audit logger failed; token.rejected event lost", True),
        (logging.WARNING, "bearerguard: audit sink recovered after 2 lost events", False),
        (logging.ERROR, "bearerguard: the audit logger failed; token.rejected event lost", True),
        (logging.WARNING, "bearerguard: audit sink recovered after 1 lost events", False),
    ]


class BrokenHandler(logging.Handler):
    """A stdlib handler that does not catch its own failure: it raises from ``emit``."""

    def emit(self, record: logging.LogRecord) -> None:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("flask", [False, True], ids=["asgi", "wsgi"])
def test_a_report_its_own_logger_cannot_take_changes_no_decision(
    session_issuer: DevIssuer, flask: bool
) -> None:
    # The audit sink and the "bearerguard" logger that reports it both down (one disk, one
    # broken handler): the failure's first report, its summary and its recovery line all
    # raise. None may reach the request as a 500; the lost events are still counted.
    from tests.apps import build_app, build_flask_app

    disk, clock, metrics = Disk(), Clock(), InMemoryMetrics()
    guard = session_issuer.guard(audit_logger=bound_logger(disk), metrics=metrics)
    guard.audit._failures = sink_failures(window=60.0, clock=clock)
    if flask:
        client = build_flask_app(guard).test_client()
    else:
        client = TestClient(build_app(guard), raise_server_exceptions=False)
    readable = {"Authorization": f"Bearer {session_issuer.mint(scope='items:read')}"}
    broken = BrokenHandler()
    logging.getLogger("bearerguard").addHandler(broken)
    try:
        disk.full = True
        first = client.get("/me", headers={"Authorization": "Bearer a.b.c"}).status_code
        clock.now += 61
        summary = client.get("/items", headers=readable).status_code
        disk.full = False
        recovered = client.get("/items", headers=readable).status_code
    finally:
        logging.getLogger("bearerguard").removeHandler(broken)
    assert (first, summary, recovered) == (401, 200, 200)
    assert metrics.count(AUDIT_EVENTS_LOST, event="token.rejected") == 1
    assert metrics.count(AUDIT_EVENTS_LOST, event="token.accepted") == 1
    assert not guard.audit.sink_failing


def test_a_sink_down_under_many_threads_is_reported_once_and_every_loss_counted(
    session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # WSGI servers run requests in threads: the count must lose nothing, and only one
    # thread logs the failure in full.
    metrics = InMemoryMetrics()
    guard = session_issuer.guard(audit_logger=bound_logger(_failing_sink), metrics=metrics)
    get = serve_wsgi(guard)
    token = session_issuer.mint()
    start = threading.Barrier(8, timeout=60)

    def requests() -> list[int]:
        start.wait()
        return [get(token) for _ in range(25)]

    with (
        caplog.at_level(logging.ERROR, "bearerguard"),
        concurrent.futures.ThreadPoolExecutor(8) as pool,
    ):
        statuses = [
            status for batch in pool.map(lambda _: requests(), range(8)) for status in batch
        ]
    assert statuses == [200] * 200
    assert metrics.count(AUDIT_EVENTS_LOST, event="token.accepted") == 200
    full = [record for record in caplog.records if _traced(record.getMessage())[1]]
    assert len(full) == 1


@pytest.mark.parametrize("action", ["log", "reject"])
def test_a_token_anomaly_the_logger_cannot_take_keeps_its_verdict(
    session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture, action: str
) -> None:
    from bearerguard.usage import MemoryUsageMonitor, UsagePolicy

    policy = UsagePolicy(max_uses_per_token=1, action=action)  # type: ignore[arg-type]
    metrics = InMemoryMetrics()
    guard = session_issuer.guard(
        usage=MemoryUsageMonitor(policy), audit_logger=bound_logger(_failing_sink), metrics=metrics
    )
    client = TestClient(BearerGuardMiddleware(PlainTextResponse("hello"), guard=guard))
    headers = {"Authorization": f"Bearer {session_issuer.mint()}"}
    with caplog.at_level(logging.ERROR, "bearerguard"):
        statuses = [client.get("/", headers=headers).status_code for _ in range(2)]
    assert statuses == [200, 200 if action == "log" else 401]
    # The first lost event was logged in full; this one, lost while the logger is still
    # down, is counted.
    assert metrics.count(AUDIT_EVENTS_LOST, event="token.anomaly") == 1


class _QuotingStore:
    """A store whose failure quotes what it was given, as a careless store's may."""

    def __init__(self, quote: Callable[[str], str]) -> None:
        self.quote = quote

    async def is_revoked(self, token: AccessToken) -> bool:
        return self.is_revoked_sync(token)

    def is_revoked_sync(self, token: AccessToken) -> bool:
        raise KeyError(self.quote(token.raw))


class _QuotingMonitor:
    """A usage monitor whose failure (denying) quotes the token it was given."""

    policy = UsagePolicy(max_uses_per_token=10, failure="deny")

    async def observe(self, token: AccessToken, client: str | None) -> UsageVerdict:
        return self.observe_sync(token, client)

    def observe_sync(self, token: AccessToken, client: str | None) -> UsageVerdict:
        raise UsageMonitorError(f"no counter for {token.raw}")


def _signature(raw: str) -> str:
    return raw.rpartition(".")[2]


QUOTES = [
    pytest.param(lambda raw: raw, id="token"),
    pytest.param(lambda raw: f"signature {_signature(raw)} unknown", id="signature"),
]


@pytest.mark.parametrize("serve", SERVERS)
@pytest.mark.parametrize("quote", QUOTES)
def test_a_store_failure_quoting_the_token_is_audited_without_it(
    session_issuer: DevIssuer, serve: Callable[..., Callable[[str], int]], quote: Any
) -> None:
    # The detail carried str(exc) of the application's store: the raw token (or a 200
    # character prefix of it, header and payload) or its signature went to the audit log.
    get = serve(session_issuer.guard(revocation=_QuotingStore(quote)))
    raw = session_issuer.mint()
    with audit_events() as events:
        assert get(raw) == 503
    detail = events.assert_one("auth.unavailable")["detail"]
    assert "REDACTED" in detail
    assert _signature(raw) not in detail
    assert raw.partition(".")[0] not in detail  # not even the start of the token
    assert detail.startswith("KeyError: ")


@pytest.mark.parametrize("serve", SERVERS)
def test_a_usage_monitor_failure_quoting_the_token_is_audited_without_it(
    session_issuer: DevIssuer, serve: Callable[..., Callable[[str], int]]
) -> None:
    get = serve(session_issuer.guard(usage=_QuotingMonitor()))
    raw = session_issuer.mint()
    with audit_events() as events:
        assert get(raw) == 503
    detail = events.assert_one("auth.unavailable")["detail"]
    assert detail == "no counter for REDACTED"


class _RaisingMonitor:
    """A usage monitor failing with an exception of its own that quotes the token."""

    def __init__(self, failure: str) -> None:
        self.policy = UsagePolicy(max_uses_per_token=10, failure=failure)  # type: ignore[arg-type]

    async def observe(self, token: AccessToken, client: str | None) -> UsageVerdict:
        return self.observe_sync(token, client)

    def observe_sync(self, token: AccessToken, client: str | None) -> UsageVerdict:
        raise KeyError(token.raw)


@pytest.mark.parametrize("serve", SERVERS)
def test_a_usage_monitor_error_quoting_the_token_is_redacted_before_it_is_cut(
    session_issuer: DevIssuer,
    serve: Callable[..., Callable[[str], int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # usage_failed cut "KeyError: '<token>'" to 200 characters before the audit log looked
    # for the token: its header and part of its payload went to auth.unavailable; failing
    # open, the warning on the bearerguard logger carried the whole token.
    raw = session_issuer.mint()
    with audit_events() as events:
        assert serve(session_issuer.guard(usage=_RaisingMonitor("deny")))(raw) == 503
    detail = events.assert_one("auth.unavailable")["detail"]
    assert detail == "KeyError: 'REDACTED'"
    with caplog.at_level(logging.WARNING, logger="bearerguard"):
        assert serve(session_issuer.guard(usage=_RaisingMonitor("allow")))(raw) == 200
    assert "request not monitored: KeyError: 'REDACTED'" in caplog.text
    assert raw.partition(".")[0] not in caplog.text


def test_a_store_failing_open_is_logged_without_the_token_it_quotes(
    session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    store = _QuotingStore(lambda raw: raw)
    get = serve_asgi(session_issuer.guard(revocation=store, revocation_failure="allow"))
    raw = session_issuer.mint()
    with caplog.at_level(logging.WARNING, logger="bearerguard"):
        assert get(raw) == 200
    assert "failing open: KeyError: 'REDACTED'" in caplog.text
    assert _signature(raw) not in caplog.text


class _DecisionsDown(InMemoryMetrics):
    """A metrics hook whose decision counter is down: counting a decision raises."""

    def increment(self, name: str, labels: dict[str, str]) -> None:
        if name == DECISIONS:
            raise OSError(28, "No space left on device")
        super().increment(name, labels)


@pytest.mark.parametrize("serve", SERVERS)
@pytest.mark.parametrize("down", ["audit_logger", "metrics"])
@pytest.mark.parametrize("failing", ["revocation", "usage"])
def test_a_sink_failure_is_reported_without_the_text_of_the_refusal_under_way(
    session_issuer: DevIssuer,
    serve: Callable[..., Callable[[str], int]],
    caplog: pytest.LogCaptureFixture,
    down: str,
    failing: str,
) -> None:
    # The refusal is audited while it is being handled: a sink failing then has it as its
    # context, and the refusal has the store's own error, quoting the token, as its cause.
    # The report's traceback printed the whole chain, messages included.
    raw = session_issuer.mint()
    options: dict[str, Any] = (
        {"revocation": _QuotingStore(lambda quoted: quoted)}
        if failing == "revocation"
        else {"usage": _RaisingMonitor("deny")}
    )
    options[down] = bound_logger(_failing_sink) if down == "audit_logger" else _DecisionsDown()
    with caplog.at_level(logging.ERROR, logger="bearerguard"):
        assert serve(session_issuer.guard(**options))(raw) == 503
    (report,) = [record for record in caplog.records if record.name == "bearerguard"]
    assert _signature(raw) not in caplog.text
    assert raw.partition(".")[0] not in caplog.text
    assert report.exc_info is None  # the logging module would print every message
    assert "Traceback (most recent call last)" in report.getMessage()
    assert "OSError: [Errno 28] No space left on device" in caplog.text  # the sink's own
    assert "builtins.KeyError" in caplog.text  # where the refusal came from, by type


def test_events_of_a_token_carry_its_exp_to_revoke_it_by(session_issuer: DevIssuer) -> None:
    """Revoking a token takes its iss, jti and exp; an event gave only the first two, so an
    operator holding an event could not revoke the token it names."""
    exp = int(time.time()) + 600
    store = MemoryRevocationStore()
    get = serve_asgi(session_issuer.guard(revocation=store))
    raw = session_issuer.mint(exp=exp)
    with audit_events() as events:
        assert get(raw) == 200
        assert get(raw) == 200  # a cache hit: its fields bound once to the token's logger
        accepted = events.named("token.accepted")
        assert [event["exp"] for event in accepted] == [exp, exp]
        assert type(accepted[1]["exp"]) is int  # the claim as the token has it
        # Revoked by the event's own fields: the refusal's event carries them too.
        store.revoke_token_sync(accepted[0]["jti"], accepted[0]["exp"])
        assert get(raw) == 401
    assert events.named("token.rejected")[0]["exp"] == exp
    # The cache hit's own emission, through the token's logger with its fields bound.
    sink = Sink()
    audit = AuditLog(logger=bound_logger(sink))
    token = session_issuer.guard().authenticate_sync(session_issuer.mint(exp=exp + 0.5))
    audit.accepted_through(audit.token_logger(token_fields(token)), REQUEST, 0.001)
    assert sink.events[0]["exp"] == exp + 0.5


# -- a server that gives no client address ------------------------------------------------

# granian and gunicorn serving a Unix socket give an empty host: the ASGI scope's client is
# None, absent, or a pair (a list once it went through JSON) whose host is "", and WSGI's
# REMOTE_ADDR is "" or absent. Every event, and the request's auth, says null: no address.
NO_ASGI_CLIENT = [
    pytest.param({"client": None}, id="none"),
    pytest.param({"client": ("", 0)}, id="empty-tuple"),
    pytest.param({"client": ["", 0]}, id="empty-list"),
    pytest.param({}, id="absent"),
]


@pytest.mark.parametrize("client", NO_ASGI_CLIENT)
def test_an_asgi_request_without_a_client_address_is_audited_with_client_null(
    session_issuer: DevIssuer, client: dict[str, Any]
) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope[SCOPE_KEY].client)
        await PlainTextResponse("ok")(scope, receive, send)

    guard = session_issuer.guard()
    middleware = BearerGuardMiddleware(app, guard=guard)
    valid, expired = session_issuer.mint(), session_issuer.mint_expired()

    async def call(token: str) -> None:
        scope = http_scope([(b"authorization", f"Bearer {token}".encode())])
        scope.pop("client")
        await asgi_call(middleware, scope | client)

    with audit_events() as events:
        for token in (valid, valid, expired):  # verified, then a cache hit, then refused
            anyio.run(call, token)
    assert [event["event"] for event in events] == ["token.accepted"] * 2 + ["token.rejected"]
    assert [event["client"] for event in events] == [None] * 3
    assert seen == [None, None]


@pytest.mark.parametrize("remote_addr", [{"REMOTE_ADDR": ""}, {}], ids=["empty", "absent"])
def test_a_wsgi_request_without_a_client_address_is_audited_with_client_null(
    session_issuer: DevIssuer, remote_addr: dict[str, str]
) -> None:
    seen: list[Any] = []

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        seen.append(environ[SCOPE_KEY].client)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = BearerGuardWSGIMiddleware(app, guard=session_issuer.guard())
    valid, expired = session_issuer.mint(), session_issuer.mint_expired()
    with audit_events() as events:
        for token in (valid, valid, expired):
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": "/",
                "QUERY_STRING": "",
                "SERVER_NAME": "t",
                "SERVER_PORT": "80",
                "HTTP_AUTHORIZATION": f"Bearer {token}",
                "wsgi.input": io.BytesIO(b""),
                **remote_addr,
            }
            b"".join(middleware(environ, lambda status, headers, exc_info=None: None))
    assert [event["event"] for event in events] == ["token.accepted"] * 2 + ["token.rejected"]
    assert [event["client"] for event in events] == [None] * 3
    assert seen == [None, None]


def test_request_info_given_an_empty_client_gives_client_null() -> None:
    assert RequestInfo("GET", "/", "", None).fields()["client"] is None
