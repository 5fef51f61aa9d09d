"""Token introspection (RFC 7662) against a real authorization server on 127.0.0.1.

``IntrospectionServer`` is a small RFC 7662 endpoint: it requires client authentication
(HTTP Basic with form-urlencoded credentials, or credentials in the body: RFC 6749 §2.3.1),
answers from a table of tokens, counts its calls, and can be told to fail, stall or answer
garbage. Time is a ``Clock`` given to the introspector: cache lifetimes are crossed by
advancing it, never by sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gc
import gzip
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import anyio
import httpx
import pytest
import structlog

from bearerguard import BearerGuard, ConfigurationError, ServiceUnavailableError
from bearerguard._core.claims import ClaimsPolicy
from bearerguard._core.introspected import (
    INTROSPECTION_ALGORITHM,
    IntrospectionResponseError,
    parse_introspection_response,
    token_from_introspection,
)
from bearerguard._core.jws import looks_compact
from bearerguard.errors import (
    ExpiredTokenError,
    InvalidAudienceError,
    InvalidClaimError,
    InvalidIssuerError,
    MalformedTokenError,
    NotYetValidError,
    RevocationStoreError,
    RevokedTokenError,
)
from bearerguard.introspection import (
    InactiveTokenError,
    IntrospectionError,
    IntrospectionResult,
    Introspector,
)
from bearerguard.revocation import IntrospectionRevocationStore, MemoryRevocationStore
from bearerguard.testing import DevIssuer, _ServingThread
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.apps import build_app, build_flask_app
from tests.helpers import Clock

CLIENT_ID = "api server"  # a space and a colon below: both must survive RFC 6749 §2.3.1
CLIENT_SECRET = "s3cr:t+/%é"
AUDIENCE = "https://api.example"


@dataclass
class Fault:
    """What the server answers instead of the truth."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    form: dict[str, list[str]]
    headers: dict[str, str]
    client: str | None
    """The client id it authenticated, ``None`` when authentication failed."""


class IntrospectionServer:
    """An RFC 7662 introspection endpoint on 127.0.0.1 (POST /introspect)."""

    def __init__(self, *, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET):
        self.client_id = client_id
        self.client_secret = client_secret
        self.tokens: dict[str, dict[str, Any]] = {}
        self.fault: Fault | None = None
        self.seen: list[Seen] = []
        self.answering: Callable[[], object] | None = None
        """Called before each answer is sent: what passes while the exchange is under way."""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._serving = _ServingThread(self._server)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/introspect"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.seen)

    def introspector(self, **options: Any) -> Introspector:
        options.setdefault("client_id", self.client_id)
        options.setdefault("client_secret", self.client_secret)
        return Introspector(self.endpoint, **options)

    def activate(self, token: str, **members: Any) -> None:
        """Make ``token`` active with ``members`` (exp in five minutes and aud the tests' API
        unless given); a member given as ``None`` is left out."""
        members.setdefault("exp", int(time.time()) + 300)
        members.setdefault("aud", AUDIENCE)
        answer = {"active": True, **members}
        self.tokens[token] = {name: value for name, value in answer.items() if value is not None}

    def deactivate(self, token: str) -> None:
        self.tokens[token] = {"active": False}

    def __enter__(self) -> IntrospectionServer:
        self._serving.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._serving.close()

    def _authenticate(self, headers: dict[str, str], form: dict[str, list[str]]) -> str | None:
        basic = headers.get("authorization", "")
        in_body = "client_secret" in form or "client_id" in form
        if basic and in_body:
            return None  # RFC 6749 §2.3: one method per request
        if basic:
            scheme, _, encoded = basic.partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                pair = base64.b64decode(encoded, validate=True).decode()
            except ValueError:
                return None
            raw_id, _, raw_secret = pair.partition(":")
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        elif in_body:
            client_id = form.get("client_id", [""])[0]
            secret = form.get("client_secret", [""])[0]
        else:
            return None
        ok = client_id == self.client_id and secret == self.client_secret
        return client_id if ok else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                body = self.rfile.read(int(headers.get("content-length", "0")))
                form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
                client = server._authenticate(headers, form)
                with server._lock:
                    server.seen.append(Seen(form, headers, client))
                    fault = server.fault
                    answer = server.tokens.get(form.get("token", [""])[0], {"active": False})
                if server.answering is not None:
                    server.answering()
                if fault is not None:
                    self._send(fault.status, fault.body, fault.content_type, fault.headers)
                elif self.path != "/introspect":
                    self._send(404, b'{"error": "not_found"}')
                elif client is None:
                    self._send(
                        401,
                        b'{"error": "invalid_client"}',
                        headers={"WWW-Authenticate": 'Basic realm="as"'},
                    )
                else:
                    self._send(200, json.dumps(answer).encode())

            def _send(
                self,
                status: int,
                body: bytes,
                content_type: str = "application/json",
                headers: dict[str, str] | None = None,
            ) -> None:
                fault = server.fault
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    if fault is not None and fault.delay:
                        # Headers sent, body withheld: the client must give up on its own.
                        self.end_headers()
                        self.wfile.flush()
                        time.sleep(fault.delay)
                    else:
                        self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[IntrospectionServer]:
    with IntrospectionServer() as running:
        yield running


@pytest.fixture
def clock() -> Clock:
    return Clock()


# -- the client: requests, client authentication, answers --------------------------------


@pytest.mark.anyio
async def test_active_answer_with_basic_client_authentication(
    server: IntrospectionServer,
) -> None:
    server.activate("opaque-1", scope="items:read items:write", sub="kim", client_id="app")
    result = await server.introspector().introspect("opaque-1")
    assert result.active
    assert result.scopes == {"items:read", "items:write"}
    assert (result.subject, result.client_id) == ("kim", "app")
    (seen,) = server.seen
    assert seen.client == CLIENT_ID  # credentials form-urlencoded, then Basic (RFC 6749 §2.3.1)
    assert seen.form == {"token": ["opaque-1"], "token_type_hint": ["access_token"]}
    assert seen.headers["content-type"] == "application/x-www-form-urlencoded"
    assert seen.headers["accept"] == "application/json"
    assert seen.headers["authorization"].startswith("Basic ")


def test_client_secret_post_sync(server: IntrospectionServer) -> None:
    server.activate("opaque-2", sub="lee")
    introspector = server.introspector(auth_method="client_secret_post")
    result = introspector.introspect_sync("opaque-2")
    assert result.active
    assert result.subject == "lee"
    (seen,) = server.seen
    assert seen.client == CLIENT_ID
    assert "authorization" not in seen.headers
    assert seen.form["client_secret"] == [CLIENT_SECRET]


@pytest.mark.anyio
async def test_inactive_and_unknown_tokens(server: IntrospectionServer) -> None:
    server.deactivate("revoked")
    introspector = server.introspector()
    assert not (await introspector.introspect("revoked")).active
    assert not (await introspector.introspect("never-issued")).active
    assert introspector.introspect_sync("never-issued-either").claims == {"active": False}


@pytest.mark.anyio
@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_client_authentication_failure_fails_closed(
    server: IntrospectionServer, auth_method: Any
) -> None:
    server.activate("opaque-3")
    introspector = server.introspector(client_secret="wrong", auth_method=auth_method)
    with pytest.raises(IntrospectionError, match=r"401 \('invalid_client'\)"):
        await introspector.introspect("opaque-3")
    with pytest.raises(IntrospectionError, match="401"):
        introspector.introspect_sync("opaque-3")
    assert server.calls == 2  # failures are never cached
    assert all(seen.client is None for seen in server.seen)


@pytest.mark.anyio
async def test_timeouts_fail_closed(server: IntrospectionServer) -> None:
    server.activate("slow")
    server.fault = Fault(body=b'{"active": true, "exp": 9999999999}', delay=1.0)
    introspector = server.introspector(timeout=0.2)
    started = time.monotonic()
    with pytest.raises(IntrospectionError, match="timed out"):
        await introspector.introspect("slow")
    with pytest.raises(IntrospectionError, match="timed out"):
        introspector.introspect_sync("slow")
    assert time.monotonic() - started < 1.5


def test_unreachable_endpoint_fails_closed() -> None:
    with IntrospectionServer() as gone:
        endpoint = gone.endpoint
    introspector = Introspector(endpoint, client_id="a", client_secret="b", timeout=1)
    with pytest.raises(IntrospectionError, match="ConnectError"):
        introspector.introspect_sync("opaque")


GARBAGE = {
    "not json": Fault(body=b"<html>hello</html>"),
    "html content type": Fault(body=b'{"active": true}', content_type="text/html"),
    "array": Fault(body=b'[{"active": true}]'),
    "string": Fault(body=b'"active"'),
    "duplicate active": Fault(body=b'{"active": false, "active": true}'),
    "scope as list": Fault(body=b'{"active": true, "scope": ["items:read"]}'),
    "exp as string": Fault(body=b'{"active": true, "exp": "9999999999"}'),
    "exp as bool": Fault(body=b'{"active": true, "exp": true}'),
    "exp NaN": Fault(body=b'{"active": true, "exp": NaN}'),
    "exp huge": Fault(body=b'{"active": true, "exp": 1e300}'),
    "exp beyond a float": Fault(body=b'{"active": true, "exp": 1' + b"0" * 400 + b"}"),
    "lone surrogate": Fault(body=b'{"active": true, "sub": "\\udc00"}'),
    "sub as number": Fault(body=b'{"active": true, "sub": 42}'),
    "aud of numbers": Fault(body=b'{"active": true, "aud": [1]}'),
    "not utf-8": Fault(body=b'{"active": true, "sub": "\xff"}'),
    "deep nesting": Fault(body=b'{"active": true, "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"),
    "server error": Fault(status=500, body=b'{"active": true}'),
    "redirect": Fault(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"}),
    "forbidden": Fault(status=403, body=b'{"error": "access_denied"}'),
    "too large": Fault(body=b'{"active": true, "x": "' + b"a" * 70_000 + b'"}'),
    "gzip bomb": Fault(
        body=gzip.compress(b'{"active": true, "x": "' + b" " * 10_000_000 + b'"}'),
        headers={"Content-Encoding": "gzip"},
    ),
    "compressed twice": Fault(
        body=gzip.compress(gzip.compress(b'{"active": true}')),
        headers={"Content-Encoding": "gzip, gzip"},
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(GARBAGE))
async def test_garbage_answers_fail_closed(server: IntrospectionServer, name: str) -> None:
    server.fault = GARBAGE[name]
    introspector = server.introspector()
    with pytest.raises(IntrospectionError):
        await introspector.introspect("opaque")
    with pytest.raises(IntrospectionError):
        introspector.introspect_sync("opaque")
    assert server.calls == 2


NOT_TRUE = {
    "active missing": b'{"scope": "items:read", "exp": 9999999999}',
    "active as string": b'{"active": "true", "exp": 9999999999}',
    "active as number": b'{"active": 1}',
    "active null": b'{"active": null}',
    "active as list": b'{"active": [true]}',
    "false as string": b'{"active": "false"}',
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(NOT_TRUE))
async def test_an_answer_whose_active_is_not_json_true_is_inactive(
    issuer: DevIssuer, server: IntrospectionServer, name: str
) -> None:
    # RFC 7662 §2.2: only "active": true says a token is active; anything else is an answer
    # that it is not. Taken for a failure instead, a guard with revocation_failure="allow"
    # let a JWT through that its authorization server had just said was not active.
    server.fault = Fault(body=NOT_TRUE[name])
    introspector = server.introspector(cache_size=0)
    assert (await introspector.introspect("opaque")).claims == {"active": False}
    assert introspector.introspect_sync("opaque").claims == {"active": False}
    store = IntrospectionRevocationStore(introspector)
    lenient = issuer.guard(audience=AUDIENCE, revocation=store, revocation_failure="allow")
    token = issuer.mint(aud=AUDIENCE)
    with pytest.raises(RevokedTokenError):
        await lenient.authenticate(token)
    with pytest.raises(RevokedTokenError):
        lenient.authenticate_sync(token)
    with pytest.raises(InactiveTokenError):  # an opaque token: 401, not 503
        opaque_guard(issuer, server).authenticate_sync("opaque")


def test_errors_never_carry_the_token(server: IntrospectionServer) -> None:
    server.fault = GARBAGE["exp as string"]
    with pytest.raises(IntrospectionError) as caught:
        server.introspector().introspect_sync("very-secret-token-value")
    assert "very-secret-token-value" not in str(caught.value)
    assert caught.value.status == 503


# -- the cache ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_active_answers_are_cached_for_active_ttl(
    server: IntrospectionServer, clock: Clock
) -> None:
    server.activate("opaque", exp=int(clock.now) + 3600)
    introspector = server.introspector(active_ttl=30, clock=clock)
    for _ in range(3):
        assert (await introspector.introspect("opaque")).active
        assert introspector.introspect_sync("opaque").active
    assert server.calls == 1
    clock.advance(29)
    assert (await introspector.introspect("opaque")).active
    assert server.calls == 1
    server.deactivate("opaque")
    clock.advance(1)  # active_ttl has passed: ask again
    assert not (await introspector.introspect("opaque")).active
    assert server.calls == 2


@pytest.mark.anyio
async def test_active_ttl_counts_from_when_the_question_was_asked(
    server: IntrospectionServer, clock: Clock
) -> None:
    # The authorization server answers as of when it is asked: counted from when the answer
    # came, active_ttl was stretched by the exchange's length, and a revocation made just
    # after the question went unseen for longer than active_ttl (docs/revocation.md).
    server.activate("opaque", exp=int(clock.now) + 3600)
    introspector = server.introspector(active_ttl=30, clock=clock)
    server.answering = lambda: clock.advance(4)  # an exchange that takes 4 s
    assert (await introspector.introspect("opaque")).active
    server.answering = None
    server.deactivate("opaque")
    clock.advance(25)  # 29 s since the question: reused
    assert introspector.introspect_sync("opaque").active
    assert server.calls == 1
    clock.advance(1)  # 30 s since the question: asked again
    assert not introspector.introspect_sync("opaque").active
    assert server.calls == 2


def test_active_answers_never_outlive_exp(server: IntrospectionServer, clock: Clock) -> None:
    server.activate("short", exp=int(clock.now) + 5)
    introspector = server.introspector(active_ttl=30, clock=clock)
    introspector.introspect_sync("short")
    clock.advance(4)
    introspector.introspect_sync("short")
    assert server.calls == 1
    clock.advance(1)
    introspector.introspect_sync("short")
    assert server.calls == 2
    # An answer already past its exp is not cached at all.
    server.activate("expired", exp=int(clock.now) - 10)
    introspector.introspect_sync("expired")
    introspector.introspect_sync("expired")
    assert server.calls == 4


def test_inactive_answers_are_cached_for_inactive_ttl(
    server: IntrospectionServer, clock: Clock
) -> None:
    introspector = server.introspector(inactive_ttl=60, clock=clock)
    introspector.introspect_sync("unknown")
    clock.advance(59)
    introspector.introspect_sync("unknown")
    assert server.calls == 1
    clock.advance(1)
    introspector.introspect_sync("unknown")
    assert server.calls == 2


@pytest.mark.anyio
async def test_a_clock_stepped_back_does_not_stretch_a_cached_answer(
    server: IntrospectionServer, clock: Clock
) -> None:
    # An answer was held until a wall-clock instant alone: a clock stepped back an hour (an
    # NTP correction) reused an "active" answer for an hour past active_ttl, a revocation
    # at the authorization server unseen all that time.
    server.activate("opaque", exp=int(clock.now) + 7200)
    introspector = server.introspector(active_ttl=30, inactive_ttl=60, clock=clock)
    assert (await introspector.introspect("opaque")).active
    server.deactivate("opaque")
    clock.advance(-3600)
    assert not (await introspector.introspect("opaque")).active
    assert server.calls == 2
    server.activate("opaque", exp=int(clock.now) + 7200)
    clock.advance(-3600)  # the inactive answer is not stretched either
    assert introspector.introspect_sync("opaque").active
    assert server.calls == 3
    clock.advance(29)  # time running forward again: the answer is reused as before
    assert introspector.introspect_sync("opaque").active
    assert server.calls == 3


def test_cache_is_bounded_and_keyed_by_hash(server: IntrospectionServer, clock: Clock) -> None:
    for name in ("a", "b", "c"):
        server.activate(f"token-{name}")
    introspector = server.introspector(cache_size=2, clock=clock)
    for name in ("a", "b", "c"):
        introspector.introspect_sync(f"token-{name}")
    assert server.calls == 3
    introspector.introspect_sync("token-c")  # held
    assert server.calls == 3
    introspector.introspect_sync("token-a")  # evicted: asked again
    assert server.calls == 4
    cache = introspector._cache
    assert cache is not None
    assert len(cache) == 2
    assert all(isinstance(key, bytes) and len(key) == 32 for key in cache)
    introspector.forget("token-a")
    introspector.introspect_sync("token-a")
    assert server.calls == 5


def test_junk_tokens_never_evict_answers_about_real_ones(
    server: IntrospectionServer, clock: Clock
) -> None:
    # A flood of random tokens, each answered inactive, used to push the active answers
    # out of the one shared cache: every real user's next request asked again.
    server.activate("real")
    introspector = server.introspector(cache_size=10, clock=clock)
    assert introspector.introspect_sync("real").active
    for number in range(50):
        assert not introspector.introspect_sync(f"junk-{number}").active
    calls = server.calls
    assert introspector.introspect_sync("real").active  # still held
    assert not introspector.introspect_sync("junk-49").active  # the latest junk, held too
    assert server.calls == calls
    introspector.forget("junk-49")
    introspector.introspect_sync("junk-49")
    assert server.calls == calls + 1


def test_cache_can_be_disabled(server: IntrospectionServer) -> None:
    server.activate("opaque")
    introspector = server.introspector(cache_size=0)
    introspector.introspect_sync("opaque")
    introspector.introspect_sync("opaque")
    assert server.calls == 2


@pytest.mark.anyio
async def test_concurrent_calls_about_one_token_share_one_exchange(
    server: IntrospectionServer,
) -> None:
    # docs/revocation.md: one POST per token per active_ttl, bursts included.
    answer = json.dumps({"active": True, "exp": int(time.time()) + 300, "sub": "kim"})
    server.fault = Fault(body=answer.encode(), delay=0.3)  # a slow answer
    introspector = server.introspector()
    results: list[IntrospectionResult] = []

    async def ask() -> None:
        results.append(await introspector.introspect("opaque"))

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(ask)
    assert server.calls == 1
    assert len(results) == 20
    assert {result.subject for result in results} == {"kim"}

    threads = [
        threading.Thread(target=lambda: results.append(introspector.introspect_sync("other")))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.calls == 2
    assert len(results) == 40


@pytest.mark.anyio
async def test_a_cancelled_caller_does_not_abandon_the_exchange_others_share(
    server: IntrospectionServer,
) -> None:
    """The caller that started an exchange, cancelled (a client gone, a request timeout,
    ``task.cancel()`` as uvicorn and ``asyncio.wait_for`` do), abandoned it: the callers
    sharing it asked again, and with an endpoint slower than the callers' patience no
    answer was ever had, nor cached for the next ones. It now runs to its end (within its
    timeout), its answer given to those waiting and cached."""
    answer = json.dumps({"active": True, "exp": int(time.time()) + 300, "sub": "kim"})
    server.fault = Fault(body=answer.encode(), delay=0.5)  # a slow answer
    introspector = server.introspector()
    leader = asyncio.ensure_future(introspector.introspect("opaque"))
    await anyio.wait_all_tasks_blocked()  # its exchange waits for the endpoint
    follower = asyncio.ensure_future(introspector.introspect("opaque"))
    await anyio.wait_all_tasks_blocked()
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    with anyio.fail_after(10):  # a hang detector, not a timing assertion
        assert (await follower).subject == "kim"
    assert (await introspector.introspect("opaque")).subject == "kim"  # cached
    assert server.calls == 1
    for _ in range(1000):  # the exchange's task gives its slot back a step after its answer
        if introspector._in_flight == 0:
            break
        await anyio.sleep(0.01)
    assert introspector._in_flight == 0


# What the closed loops leave to the collector (their exchanges' connections) is the point.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_exchanges_left_in_event_loops_closed_under_them_give_their_slots_back(
    server: IntrospectionServer,
) -> None:
    """An exchange runs to its end in a task of its own, which the introspector holds. A
    loop closed without cancelling its tasks never runs it again: held for good, it kept
    its slot, and ``max_concurrent`` such loops left no slot for any other exchange."""
    server.fault = Fault(body=b'{"active": false}', delay=0.5)  # answered, slowly
    introspector = server.introspector(max_concurrent=2, cache_size=0)

    async def leave() -> None:
        asking = asyncio.ensure_future(introspector.introspect("opaque"))
        await anyio.wait_all_tasks_blocked()  # its exchange waits for the endpoint
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking

    for _ in range(2):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(leave())
        loop.close()  # the exchange's task still pending
    gc.collect()
    server.fault = None
    assert asyncio.run(introspector.introspect("opaque")).active is False
    gc.collect()
    assert introspector._in_flight == 0


@pytest.mark.anyio
async def test_a_shared_exchange_fails_every_caller_and_is_not_cached(
    server: IntrospectionServer,
) -> None:
    server.fault = Fault(status=500, body=b"{}", delay=0.3)
    introspector = server.introspector()
    failures: list[Exception] = []

    async def ask() -> None:
        try:
            await introspector.introspect("opaque")
        except IntrospectionError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(ask)
    assert (server.calls, len(failures)) == (1, 10)
    assert all("500" in str(exc) for exc in failures)
    server.fault = None
    server.activate("opaque")
    assert (await introspector.introspect("opaque")).active
    assert server.calls == 2


@pytest.mark.anyio
async def test_exchanges_in_flight_are_bounded(server: IntrospectionServer) -> None:
    # A flood of distinct unknown tokens: past max_concurrent, each fails closed at once
    # instead of opening one more connection to the authorization server.
    server.fault = Fault(body=b'{"active": false}', delay=1.0)
    introspector = server.introspector(max_concurrent=3, cache_size=0)
    answers: list[bool] = []
    refusals: list[IntrospectionError] = []

    async def ask(token: str) -> None:
        try:
            answers.append((await introspector.introspect(token)).active)
        except IntrospectionError as exc:
            refusals.append(exc)

    async with anyio.create_task_group() as group:
        for number in range(10):
            group.start_soon(ask, f"junk-{number}")
    assert (server.calls, answers, len(refusals)) == (3, [False] * 3, 7)
    assert all("already in flight" in str(exc) for exc in refusals)

    together = threading.Barrier(10)

    def ask_sync(token: str) -> None:
        together.wait()
        try:
            answers.append(introspector.introspect_sync(token).active)
        except IntrospectionError as exc:
            refusals.append(exc)

    threads = [threading.Thread(target=ask_sync, args=(f"more-{n}",)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every slot was given back, by answers and refusals alike: three more exchanges.
    assert (server.calls, len(answers), len(refusals)) == (6, 6, 14)
    server.fault = Fault(status=500, body=b"{}")
    for _ in range(5):  # failed exchanges give their slot back too
        with pytest.raises(IntrospectionError, match="500"):
            introspector.introspect_sync("failing")
    assert introspector._in_flight == 0


def test_a_health_probe_under_way_is_not_joined_by_another(server: IntrospectionServer) -> None:
    # A probe that outlasts health_interval (its timeout is longer) is waited for: readiness
    # polls meanwhile report the last outcome instead of sending a probe each interval.
    clock = Clock()
    introspector = server.introspector(health_interval=1, timeout=30, clock=clock)
    server.fault = Fault(body=b'{"active": false}', delay=1.0)  # answered, slowly
    first = threading.Thread(target=introspector.health_sync)
    first.start()
    while server.calls == 0:  # the first probe has reached the server
        first.join(0.01)
    clock.advance(5)
    assert introspector.health_sync()["healthy"] is False  # none had answered yet
    assert server.calls == 1
    first.join()
    assert introspector.healthy is True
    server.fault = None
    clock.advance(5)
    assert anyio.run(introspector.health)["healthy"] is True
    assert server.calls == 2  # the next probe, once the first is over


@pytest.mark.anyio
async def test_a_health_probe_outlives_a_readiness_poll_cancelled_meanwhile(
    server: IntrospectionServer,
) -> None:
    """A readiness poll cancelled while its probe waited for the endpoint (a caller's
    timeout shorter than the probe's, a server cancelling the request of a client gone)
    abandoned the probe: its outcome was never recorded, yet no other probe was due for a
    whole interval, and every poll meanwhile reported the endpoint healthy as it was before.
    The probe is every later poll's: it now runs to its end, within its own timeout."""
    clock = Clock()
    introspector = server.introspector(health_interval=1, timeout=30, clock=clock)
    assert (await introspector.health())["healthy"] is True
    server.fault = Fault(status=500, body=b"down", delay=0.5)
    clock.advance(5)
    async with anyio.create_task_group() as group:

        async def poll() -> None:
            await introspector.health()

        group.start_soon(poll)
        await anyio.wait_all_tasks_blocked()  # its probe waits for the endpoint
        group.cancel_scope.cancel()
    for _ in range(1000):  # the probe ends in its own time (10 s: a hang detector)
        # Its outcome is recorded as its work ends, its slot given back as its task ends
        # (a step later): both are waited for, else a loaded machine sees the slot taken.
        if not introspector.healthy and introspector._in_flight == 0:
            break
        await anyio.sleep(0.01)
    assert (await introspector.health())["healthy"] is False  # the interval holds it
    assert server.calls == 2
    assert introspector._in_flight == 0


def test_health_probes_count_toward_max_concurrent(server: IntrospectionServer) -> None:
    # The probe is one more exchange with the authorization server: it takes a slot, and a
    # probe due with every slot taken is not sent and fails closed, as a request would.
    server.fault = Fault(body=b'{"active": false}', delay=1.0)  # answered, slowly
    clock = Clock()
    introspector = server.introspector(max_concurrent=1, health_interval=1, clock=clock)
    probe = threading.Thread(target=introspector.health_sync)
    probe.start()
    while server.calls == 0:  # the probe has reached the server
        probe.join(0.01)
    with pytest.raises(IntrospectionError, match="already in flight"):
        introspector.introspect_sync("opaque")
    probe.join()
    assert introspector.healthy is True
    assert server.calls == 1

    # A probe due with every slot taken is not sent. Slots taken say how busy this instance
    # is, not whether the endpoint answers: the last outcome stands (a flood of junk opaque
    # tokens, client input, must not make every instance report not ready), and the next
    # poll probes again, without waiting for another interval.
    server.fault = Fault(status=500, body=b"down", delay=1.0)

    def ask() -> None:
        with pytest.raises(IntrospectionError, match="answered 500"):
            introspector.introspect_sync("opaque")

    request = threading.Thread(target=ask)
    request.start()
    while server.calls == 1:  # the request's exchange has reached the server
        request.join(0.01)
    clock.advance(5)
    assert introspector.health_sync()["healthy"] is True
    assert anyio.run(introspector.health)["healthy"] is True
    request.join()
    assert server.calls == 2  # neither probe was sent
    assert introspector._in_flight == 0
    assert anyio.run(introspector.health)["healthy"] is False  # probed once a slot is free
    assert server.calls == 3


def test_junk_tokens_at_the_limit_do_not_make_the_instance_unready(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    # Random opaque tokens are anyone's to send: with max_concurrent slots taken by them, the
    # readiness endpoint answered 503, so a flood took every instance out of the load
    # balancer, JWT traffic included, though the authorization server was up.
    from bearerguard.readiness import readiness_wsgi

    server.fault = Fault(body=b'{"active": false}', delay=1.0)
    clock = Clock()
    introspector = server.introspector(max_concurrent=1, health_interval=1, clock=clock)
    guard = issuer.guard(audience=AUDIENCE, introspection=introspector)
    ready = httpx.Client(
        transport=httpx.WSGITransport(app=readiness_wsgi(guard)), base_url="http://t"
    )
    app = httpx.Client(
        transport=httpx.WSGITransport(app=build_flask_app(guard)), base_url="http://t"
    )
    with ready, app:
        assert ready.get("/").status_code == 200  # probed: the endpoint answers
        junk = threading.Thread(
            target=app.get, args=("/items",), kwargs={"headers": bearer("junk")}
        )
        junk.start()
        while server.calls == 1:  # the junk token's exchange has reached the server
            junk.join(0.01)
        clock.advance(5)
        assert ready.get("/").status_code == 200
        junk.join()
    assert server.calls == 2


def test_a_guard_answers_503_past_the_limit(issuer: DevIssuer, server: IntrospectionServer) -> None:
    server.fault = Fault(body=b'{"active": false}', delay=1.0)
    introspector = server.introspector(max_concurrent=1)
    guard = issuer.guard(audience=AUDIENCE, introspection=introspector)
    app = BearerGuardWSGIMiddleware(lambda environ, start_response: [], guard=guard)
    statuses: list[str] = []
    together = threading.Barrier(4)

    def call(token: str) -> None:
        together.wait()
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "QUERY_STRING": "",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "wsgi.input": io.BytesIO(b""),
        }
        list(app(environ, lambda status, headers: statuses.append(status)))

    threads = [threading.Thread(target=call, args=(f"opaque-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == ["401 Unauthorized"] + ["503 Service Unavailable"] * 3
    assert server.calls == 1


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "options"),
    [
        ("http://as.example/introspect", {}),  # http only on loopback
        ("https://user:pw@as.example/introspect", {}),
        ("https://as.example/introspect", {"client_id": ""}),
        ("https://as.example/introspect", {"client_secret": ""}),
        ("https://as.example/introspect", {"auth_method": "none"}),
        ("https://as.example/introspect", {"auth_method": "private_key_jwt"}),
        ("https://as.example/introspect", {"timeout": 0}),
        ("https://as.example/introspect", {"cache_size": -1}),
        ("https://as.example/introspect", {"active_ttl": -1}),
        ("https://as.example/introspect", {"timeout": float("nan")}),
        ("https://as.example/introspect", {"timeout": float("inf")}),
        ("https://as.example/introspect", {"timeout": 1e10}),  # past threading.TIMEOUT_MAX
        ("https://as.example/introspect", {"active_ttl": float("nan")}),
        ("https://as.example/introspect", {"active_ttl": float("inf")}),
        ("https://as.example/introspect", {"inactive_ttl": float("nan")}),
        ("https://as.example/introspect", {"inactive_ttl": float("inf")}),
        ("https://as.example/introspect", {"max_bytes": 10}),
        ("https://as.example/introspect", {"max_concurrent": 0}),
        ("https://as.example/introspect", {"max_concurrent": 2.5}),
        ("https://as.example/introspect", {"max_concurrent": True}),
        ("https://as.example/introspect", {"clock": None}),
        ("https://as.example/introspect", {"health_interval": 0}),
        ("https://as.example/introspect", {"health_interval": float("nan")}),
        ("https://as.example/introspect", {"health_interval": float("inf")}),
        ("https://as.example/introspect", {"clock": 1700000000.0}),
        # Booleans are no durations, and a string or None was a TypeError, not this error.
        *[
            ("https://as.example/introspect", {name: bad})
            for name in ("timeout", "active_ttl", "inactive_ttl", "health_interval")
            for bad in (True, "30", None, Decimal("NaN"))
        ],
        # URLs httpx refuses on every request: refused here, not a 500 per opaque token.
        ("http://127.0.0.1:8000/introspect\x7f", {}),
        ("https://as\x00.example/introspect", {}),
        ("https://xn--/introspect", {}),
        # RFC 6749 Appendix A: client_id and client_secret are VSCHARs. A secret read from a
        # file with its newline was every exchange's 401: every opaque token a 503.
        ("https://as.example/introspect", {"client_secret": "secret\n"}),
        ("https://as.example/introspect", {"client_id": "api\r\n"}),
        ("https://as.example/introspect", {"client_secret": "sec\tret"}),
        ("https://as.example/introspect", {"client_id": "api\x00"}),
        ("https://as.example/introspect", {"client_secret": "secret\x7f"}),
        ("https://as.example/introspect", {"client_id": 7}),
        # A URL whose white space httpx would send (%20) or read as relative: every exchange
        # a 404 or a failure (503), where the configuration was at fault.
        ("https://as.example/introspect ", {}),
        (" https://as.example/introspect", {}),
        ("https://as.example/intro spect", {}),
        (None, {}),
        (b"https://as.example/introspect", {}),
    ],
)
def test_configuration_is_checked(endpoint: Any, options: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"client_id": "api", "client_secret": "secret", **options}
    with pytest.raises(ConfigurationError):
        Introspector(endpoint, **settings)


def test_repr_hides_the_secret() -> None:
    introspector = Introspector(
        "https://as.example/introspect", client_id="api", client_secret="hunter2"
    )
    assert "hunter2" not in repr(introspector)
    assert "hunter2" not in repr(IntrospectionRevocationStore(introspector))
    assert "api" in repr(introspector)


def test_guard_and_store_check_their_arguments(session_issuer: DevIssuer) -> None:
    with pytest.raises(ConfigurationError):
        session_issuer.guard(introspection="https://as.example/introspect")
    with pytest.raises(ConfigurationError):
        IntrospectionRevocationStore("https://as.example/introspect")  # type: ignore[arg-type]


# -- the pure core: parsing and judging answers ------------------------------------------


def test_parsing_reduces_inactive_answers() -> None:
    body = b'{"active": false, "sub": 1, "exp": "never"}'
    assert parse_introspection_response(body) == {"active": False}
    for body in (b"{}", b'{"active": "true", "sub": 1}', b'{"active": 1}', b'{"active": null}'):
        assert parse_introspection_response(body) == {"active": False}


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"null",
        b'{"active": true, "iat": -1}',
        b"\xff",
        b'{"active": true, "sub": "\\ud800"}',  # no UTF-8 can carry it (RFC 8259 8.2)
        b'{"active": true, "exp": 1' + b"0" * 400 + b"}",  # beyond a float
        b'{"active": true, "iat": -1' + b"0" * 400 + b"}",
    ],
)
def test_parsing_refuses(body: bytes) -> None:
    with pytest.raises(IntrospectionResponseError):
        parse_introspection_response(body)


POLICY = ClaimsPolicy(issuer="https://as.example", audiences=frozenset({AUDIENCE}), leeway=10)
NOW = 1_700_000_000.0


def judge(
    policy: ClaimsPolicy = POLICY, *, audience_checked_by_server: bool = False, **members: Any
) -> Any:
    """Judge an active answer for this API expiring in a minute, with ``members`` (``None``
    removes one)."""
    claims = {"active": True, "exp": NOW + 60, "aud": AUDIENCE, **members}
    claims = {name: value for name, value in claims.items() if value is not None}
    return token_from_introspection(
        claims,
        policy=policy,
        scope_paths=(),
        now=NOW,
        fingerprint="fp",
        raw="opaque",
        audience_checked_by_server=audience_checked_by_server,
    )


def test_an_acceptable_answer_becomes_a_token() -> None:
    token = judge(
        scope="a b",
        sub="kim",
        client_id="app",
        jti="j-1",
        iat=NOW - 5,
        iss="https://as.example",
        aud=["other", AUDIENCE],
    )
    assert (token.subject, token.client_id, token.token_id) == ("kim", "app", "j-1")
    assert token.scopes == {"a", "b"}
    assert token.issuer == "https://as.example"
    assert token.audience == ("other", AUDIENCE)
    assert token.algorithm == INTROSPECTION_ALGORITHM
    assert token.key_id is None
    assert token.raw == "opaque"
    assert token.expires_at.timestamp() == NOW + 60
    assert token.issued_at is not None
    # iss is optional (RFC 7662 §2.2): absent, the trusted issuer stands in.
    bare = judge(iss=None)
    assert (bare.issuer, bare.audience, bare.scopes) == ("https://as.example", (AUDIENCE,), set())


def test_an_answer_naming_no_audience_is_refused_unless_the_server_checks_it() -> None:
    # RFC 7662 §2.2 makes aud optional; RFC 9068 §4 requires it of a JWT, and an answer
    # without it cannot show the token is meant for this API. A server that answers active
    # only for tokens usable by the caller (RFC 7662 §4) shows it another way.
    with pytest.raises(InvalidAudienceError, match="names no audience"):
        judge(aud=None)
    assert judge(aud=None, audience_checked_by_server=True).audience == ()
    for aud in ([], "https://other.example", ["a", "b"]):
        with pytest.raises(InvalidAudienceError):
            judge(aud=aud, audience_checked_by_server=True)


@pytest.mark.parametrize("name", ["sub", "jti", "client_id"])
def test_an_answer_with_an_empty_identifier_is_refused_as_a_jwt_would_be(name: str) -> None:
    with pytest.raises(MalformedTokenError, match="non-empty string"):
        judge(**{name: ""})


def test_an_answer_bound_to_its_client_needs_a_guard_that_checks_the_binding() -> None:
    # RFC 8705 §3.2 and RFC 9449 §6.2: introspection answers carry cnf too.
    with pytest.raises(InvalidClaimError, match="cnf jkt"):
        judge(cnf={"jkt": "x" * 43})
    dpop = dataclasses.replace(POLICY, confirmations=frozenset({"jkt"}))
    assert judge(dpop, cnf={"jkt": "x" * 43}).claims["cnf"] == {"jkt": "x" * 43}
    with pytest.raises(MalformedTokenError):
        judge(dpop, cnf="jkt")


@pytest.mark.parametrize("policy", [POLICY, dataclasses.replace(POLICY, confirmations=None)])
def test_an_answer_whose_cnf_is_null_is_refused_not_taken_as_unbound(policy: ClaimsPolicy) -> None:
    # RFC 7800 §3.1: cnf is an object. A null one says nothing about the binding, so the
    # token is refused as a JWT with it is, never let in as a plain bearer token.
    body = b'{"active": true, "exp": %d, "aud": "%s", "cnf": null}' % (NOW + 60, AUDIENCE.encode())
    answer = parse_introspection_response(body)
    with pytest.raises(MalformedTokenError, match="cnf"):
        token_from_introspection(
            answer, policy=policy, scope_paths=(), now=NOW, fingerprint="fp", raw="opaque"
        )


@pytest.mark.parametrize(
    "token_type",
    [
        "refresh_token",
        "urn:ietf:params:oauth:token-type:refresh_token",
        "id_token",
        "urn:ietf:params:oauth:token-type:id_token",
        "N_A",
    ],
)
def test_an_answer_about_another_kind_of_token_is_refused(token_type: str) -> None:
    # RFC 7662 §2.1: the endpoint searches past token_type_hint=access_token, so a refresh
    # token or an ID token sent as a bearer token can be answered active.
    with pytest.raises(InvalidClaimError, match="not an access token"):
        judge(token_type=token_type)


@pytest.mark.parametrize("token_use", ["refresh_token", "id", 5])
def test_an_answer_whose_token_use_is_not_access_is_refused(token_use: object) -> None:
    # ORY Hydra answers about refresh tokens with token_type Bearer, token_use refresh_token.
    with pytest.raises(InvalidClaimError, match="not access"):
        judge(token_type="bearer", token_use=token_use)
    assert judge(token_use="access_token").subject is None


@pytest.mark.parametrize("typ", ["Refresh", "Offline", "ID", "Logout", "JWT", 5])
def test_an_answer_whose_keycloak_typ_is_not_an_access_token_is_refused(typ: object) -> None:
    # Keycloak answers with the token's typ claim; before it added token_type, typ alone told
    # a refresh (or offline, or ID) token from an access token.
    with pytest.raises(InvalidClaimError, match=r"typ .*not an access token"):
        judge(typ=typ)
    with pytest.raises(InvalidClaimError, match=r"typ .*not an access token"):
        judge(typ=typ, token_type="Bearer")


def test_keycloak_access_token_answers_are_accepted() -> None:
    for typ in ("Bearer", "bearer", "at+jwt"):
        assert judge(typ=typ, token_type="Bearer", azp="app").claims["typ"] == typ
    dpop = dataclasses.replace(POLICY, confirmations=frozenset({"jkt"}))
    assert judge(dpop, typ="DPoP", token_type="DPoP", cnf={"jkt": "x" * 43}).subject is None
    with pytest.raises(InvalidClaimError, match=r"typ DPoP without cnf\.jkt"):
        judge(dpop, typ="DPoP")


def test_access_token_types_are_accepted_and_dpop_needs_its_binding() -> None:
    for token_type in ("Bearer", "bearer", "access_token"):
        assert judge(token_type=token_type).claims["token_type"] == token_type
    dpop = dataclasses.replace(POLICY, confirmations=frozenset({"jkt"}))
    assert judge(dpop, token_type="DPoP", cnf={"jkt": "x" * 43}).subject is None
    # RFC 9449 §6.2: a DPoP token without cnf.jkt would pass as a bearer token (§7.2).
    with pytest.raises(InvalidClaimError, match=r"without cnf\.jkt"):
        judge(dpop, token_type="DPoP")


@pytest.mark.anyio
async def test_an_answer_must_name_this_api_unless_the_server_checks_the_audience(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    # RFC 7662 §2.2 makes aud optional, but an answer naming no audience cannot show that
    # the token was meant for this API: one the same authorization server issued for another
    # resource server would pass (token confusion). A JWT's aud is required (RFC 9068 §4);
    # so is an answer's, unless the server itself refuses tokens not meant for the caller
    # (RFC 7662 §4), which the Introspector is told.
    server.activate("no-aud", sub="kim", aud=None)
    server.activate("for-us", sub="kim", aud=[AUDIENCE, "https://other.example"])
    server.activate("for-another", sub="kim", aud="https://other.example")
    server.activate("for-none", sub="kim", aud=[])
    default = opaque_guard(issuer, server)
    checked = opaque_guard(issuer, server, audience_checked_by_server=True)
    for guard in (default, checked):
        assert (await guard.authenticate("for-us")).subject == "kim"
        assert guard.authenticate_sync("for-us").audience == (AUDIENCE, "https://other.example")
        # Named, the audience is checked whoever else does: another one, or none, is refused.
        for token in ("for-another", "for-none"):
            with pytest.raises(InvalidAudienceError):
                await guard.authenticate(token)
            with pytest.raises(InvalidAudienceError):
                guard.authenticate_sync(token)
    with pytest.raises(InvalidAudienceError, match="names no audience"):
        await default.authenticate("no-aud")
    with pytest.raises(InvalidAudienceError, match="names no audience"):
        default.authenticate_sync("no-aud")
    assert (await checked.authenticate("no-aud")).audience == ()
    assert checked.authenticate_sync("no-aud").subject == "kim"
    # Demanded in required_claims, aud is required whatever the introspector says.
    strict = opaque_guard(issuer, server, audience_checked_by_server=True, required_claims=["aud"])
    with pytest.raises(InvalidClaimError, match="required claims missing: aud"):
        await strict.authenticate("no-aud")


@pytest.mark.anyio
async def test_an_answer_naming_no_audience_is_audited_as_not_for_this_api(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    server.activate("no-aud", sub="kim", scope="items:read", aud=None)
    refusing = build_app(opaque_guard(issuer, server))
    accepting = build_app(opaque_guard(issuer, server, audience_checked_by_server=True))
    with structlog.testing.capture_logs() as events:
        refused = await _get(refusing, "no-aud")
        accepted = await _get(accepting, "no-aud")
    assert (refused.status_code, accepted.status_code) == (401, 200)
    assert [(event["event"], event["reason"]) for event in events] == [
        ("token.rejected", "invalid_audience"),
        ("token.accepted", "ok"),
    ]
    # The client gets the fixed sentence; the log says what was missing and the way out.
    challenge = refused.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert 'error_description="The access token is not meant for this resource."' in challenge
    assert "names no audience" in events[0]["detail"]
    assert "audience_checked_by_server" in events[0]["detail"]


@pytest.mark.anyio
async def test_an_audience_or_issuer_refusal_audits_both_sides_as_for_a_jwt(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    # The operator reads the detail: which aud the authorization server said, and which this
    # API accepts, worded and cut short as for a JWT (a long value, at most three shown).
    # The client gets the fixed sentence only.
    many = ["https://other.example", "x" * 5000, "c", "d"]
    server.activate("for-another", sub="kim", aud="https://other.example")
    server.activate("for-many", sub="kim", aud=many)
    server.activate("for-none", sub="kim", aud=[])
    server.activate("from-another", sub="kim", iss="https://other-as.example")
    app = build_app(opaque_guard(issuer, server))
    with structlog.testing.capture_logs() as events:
        answers = [await _get(app, token) for token in server.tokens]
    assert [answer.status_code for answer in answers] == [401] * 4
    details = [event["detail"] for event in events]
    accepted = f"(accepted: {AUDIENCE!r})"
    assert details[0] == (
        f"introspected aud 'https://other.example' does not name this resource server {accepted}"
    )
    assert details[1].startswith(
        f"introspected aud 'https://other.example', {'x' * 100!r}, 'c', ... does not name"
    )
    assert details[1].endswith(accepted)
    assert details[2] == f"introspected aud [] does not name this resource server {accepted}"
    assert details[3] == (
        f"introspected iss 'https://other-as.example' is not trusted (trusted: {issuer.url!r})"
    )
    for answer in answers:
        for said in ("other", "xxx"):
            assert said not in answer.text + answer.headers["www-authenticate"]


async def _get(app: Any, token: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get("/items", headers=bearer(token))


@pytest.mark.anyio
async def test_a_resource_needs_the_answer_to_name_it(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    # RFC 8707 §2 (and MCP): an answer naming no audience cannot show that the token was
    # obtained for this resource; a token obtained for another one would pass. A server that
    # answers active only for tokens usable here (RFC 7662 §4) shows it all the same.
    resource = "https://api.example/mcp"
    server.activate("no-aud", sub="kim", aud=None)
    server.activate("for-us", sub="kim", aud=resource)
    guard = issuer.guard(resource=resource, introspection=server.introspector())
    with pytest.raises(InvalidAudienceError, match="names no audience"):
        await guard.authenticate("no-aud")
    with pytest.raises(InvalidAudienceError, match="names no audience"):
        guard.authenticate_sync("no-aud")
    assert (await guard.authenticate("for-us")).audience == (resource,)
    checking = server.introspector(audience_checked_by_server=True)
    trusting = issuer.guard(resource=resource, introspection=checking)
    assert (await trusting.authenticate("no-aud")).subject == "kim"
    # JWTs are judged locally: their aud stays required.
    with pytest.raises(InvalidAudienceError):
        await trusting.authenticate(issuer.mint(aud=None))


def test_the_audience_opt_out_is_a_real_boolean() -> None:
    # A string such as "false" (read from the environment) is truthy: it would turn the
    # audience check off.
    for value in ("false", 0, None):
        with pytest.raises(ConfigurationError, match="audience_checked_by_server"):
            Introspector(
                "https://as.example/introspect",
                client_id="api",
                client_secret="secret",
                audience_checked_by_server=value,  # type: ignore[arg-type]
            )
    assert not Introspector(
        "https://as.example/introspect", client_id="api", client_secret="secret"
    ).audience_checked_by_server


@pytest.mark.anyio
async def test_null_members_and_an_empty_aud_judge_the_token_not_the_server(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    # RFC 7662 §2.2: every member but active is optional. A null one says nothing (read as
    # absent), and "aud": [] names no audience, so the token is not for us: each answered
    # 401 or accepted on the token's merits, never 503 as if the server had failed.
    exp = int(time.time()) + 300
    nulls = dict.fromkeys(("sub", "iss", "aud", "scope", "client_id", "jti", "iat", "nbf"))
    server.tokens["nulls"] = {"active": True, "exp": exp, "token_type": None, **nulls}
    server.tokens["no-audience"] = {"active": True, "exp": exp, "sub": "kim", "aud": []}
    server.tokens["null-exp"] = {"active": True, "exp": None, "sub": "kim", "aud": AUDIENCE}
    guard = opaque_guard(issuer, server)
    # "aud": null is no audience named: refused, unless the server checks it itself.
    with pytest.raises(InvalidAudienceError, match="names no audience"):
        await guard.authenticate("nulls")
    checked = opaque_guard(issuer, server, audience_checked_by_server=True)
    for token in (await checked.authenticate("nulls"), checked.authenticate_sync("nulls")):
        assert (token.subject, token.token_id, token.audience) == (None, None, ())
        assert "sub" not in token.claims
    with pytest.raises(InvalidAudienceError):
        await guard.authenticate("no-audience")
    with pytest.raises(InvalidAudienceError):
        guard.authenticate_sync("no-audience")
    with pytest.raises(InvalidClaimError, match="exp is required"):
        await guard.authenticate("null-exp")
    strict = opaque_guard(issuer, server, audience_checked_by_server=True, required_claims=["sub"])
    with pytest.raises(InvalidClaimError, match="required claims missing: sub"):
        await strict.authenticate("nulls")
    app = build_app(guard)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with structlog.testing.capture_logs() as events:
            response = await client.get("/items", headers=bearer("no-audience"))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert [(event["event"], event["reason"]) for event in events] == [
        ("token.rejected", "invalid_audience")
    ]


def test_parsing_reads_null_members_as_absent() -> None:
    body = b'{"active": true, "sub": null, "exp": null, "aud": null, "scope": null, "x": null}'
    assert parse_introspection_response(body) == {"active": True, "x": None}
    assert parse_introspection_response(b'{"active": true, "aud": []}')["aud"] == []


@pytest.mark.anyio
async def test_a_refresh_token_is_not_an_access_token(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    server.activate("refresh-1", token_type="refresh_token", sub="kim", scope="items:read")
    guard = opaque_guard(issuer, server)
    with pytest.raises(InvalidClaimError):
        await guard.authenticate("refresh-1")
    with pytest.raises(InvalidClaimError):
        guard.authenticate_sync("refresh-1")


@pytest.mark.anyio
async def test_a_keycloak_refresh_token_is_not_an_access_token(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    # What Keycloak answers about its refresh and offline tokens (older releases: typ only;
    # newer: token_type too, equal to typ), and about an access token.
    server.activate("kc-refresh", typ="Refresh", sub="kim", azp="app", scope="items:read")
    server.activate("kc-offline", typ="Offline", token_type="Offline", sub="kim", azp="app")
    server.activate("kc-access", typ="Bearer", token_type="Bearer", sub="kim", azp="app")
    guard = opaque_guard(issuer, server)
    for token in ("kc-refresh", "kc-offline"):
        with pytest.raises(InvalidClaimError, match="not an access token"):
            await guard.authenticate(token)
        with pytest.raises(InvalidClaimError, match="not an access token"):
            guard.authenticate_sync(token)
    assert (await guard.authenticate("kc-access")).subject == "kim"
    assert guard.authenticate_sync("kc-access").subject == "kim"


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ({"active": False}, InactiveTokenError),
        ({"exp": None}, InvalidClaimError),
        ({"exp": NOW - 11}, ExpiredTokenError),
        ({"nbf": NOW + 11}, NotYetValidError),
        ({"iat": NOW + 11}, NotYetValidError),
        ({"iss": "https://evil.example"}, InvalidIssuerError),
        ({"aud": "https://other.example"}, InvalidAudienceError),
        ({"aud": ["a", "b"]}, InvalidAudienceError),
    ],
)
def test_unacceptable_answers_are_refused(members: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        judge(**members)


def test_leeway_and_the_guard_policy_apply() -> None:
    judge(exp=NOW - 9)  # within leeway
    strict = ClaimsPolicy(
        issuer=POLICY.issuer,
        audiences=POLICY.audiences,
        required_claims=frozenset({"aud", "sub"}),
        max_age=60,
        checks=(lambda claims: claims.get("sub") != "blocked",),
    )
    with pytest.raises(InvalidClaimError, match="required claims missing: sub"):
        judge(strict, iat=NOW)
    # Demanded, aud is required even from a server said to check the audience itself.
    with pytest.raises(InvalidClaimError, match="required claims missing: aud"):
        judge(strict, sub="kim", aud=None, iat=NOW, audience_checked_by_server=True)
    with pytest.raises(InvalidClaimError, match="refused"):
        judge(strict, sub="blocked", aud=AUDIENCE, iat=NOW)
    with pytest.raises(InvalidClaimError, match="iat is required"):
        judge(strict, sub="kim", aud=AUDIENCE)
    assert judge(strict, sub="kim", aud=AUDIENCE, iat=NOW).subject == "kim"


def test_shape_routing() -> None:
    assert looks_compact("eyJh.eyJz.c2ln")
    assert not looks_compact("opaque-token")
    assert not looks_compact("a.b.c.d.e")  # JWE: opaque to a resource server
    assert not looks_compact("a.b")
    assert not looks_compact("a..c")


def test_result_accessors() -> None:
    result = IntrospectionResult(True, {"active": True, "exp": 5, "scope": "x  y"})
    assert result.scopes == {"x", "y"}
    assert result.expires_at == 5.0
    assert result.subject is None
    assert IntrospectionResult(False, {"active": False}).scopes == frozenset()


# -- opaque tokens through the guard and the middlewares ---------------------------------


def opaque_guard(issuer: DevIssuer, server: IntrospectionServer, **options: Any) -> BearerGuard:
    introspector = server.introspector(
        clock=options.pop("introspector_clock", time.time),
        **{name: options.pop(name) for name in ("audience_checked_by_server",) if name in options},
    )
    return issuer.guard(audience=AUDIENCE, introspection=introspector, **options)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.anyio
async def test_opaque_tokens_through_the_asgi_middleware(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    server.activate("reader", scope="items:read", sub="kim", client_id="app")
    server.activate("writer", scope="items:read items:write", sub="lee", aud=AUDIENCE)
    server.activate("foreign", scope="items:read", aud="https://other.example")
    server.activate("other-issuer", scope="items:read", iss="https://evil.example")
    server.activate("expired", scope="items:read", exp=int(time.time()) - 3600)
    server.activate("no-exp", scope="items:read", exp=None)
    server.deactivate("revoked")
    app = build_app(opaque_guard(issuer, server))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        me = await client.get("/me", headers=bearer("reader"))
        assert me.json() == {"sub": "kim", "user": "kim", "auth_scopes": ["items:read"]}
        assert (await client.get("/items", headers=bearer("reader"))).status_code == 200
        denied = await client.post("/items", headers=bearer("reader"))
        assert denied.status_code == 403
        assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
        assert (await client.post("/items", headers=bearer("writer"))).status_code == 200
        assert (await client.get("/starlette", headers=bearer("reader"))).status_code == 200
        for refused in ("revoked", "unknown", "foreign", "other-issuer", "expired", "no-exp"):
            response = await client.get("/items", headers=bearer(refused))
            assert response.status_code == 401, refused
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
        # A JWT is still verified locally: the authorization server is not asked.
        calls = server.calls
        jwt_token = issuer.mint(scopes=["items:read"], aud=AUDIENCE)
        assert (await client.get("/items", headers=bearer(jwt_token))).status_code == 200
        assert server.calls == calls


@pytest.mark.anyio
async def test_opaque_tokens_are_granted_their_scope_claims(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    # The answer reaches the guard read-only: scope_claims must still be read from it, and a
    # claim of the wrong type refuses the token, as for a JWT.
    server.activate("roles", roles=["items:read"], realm_access={"roles": ["admin"]})
    server.activate("bad-roles", roles=[1, {"x": 2}])
    guard = opaque_guard(
        issuer,
        server,
        scope_claims=["roles", "realm_access.roles"],
        claim_checks=[json.dumps],  # given a dict, as for a JWT
    )
    assert (await guard.authenticate("roles")).scopes == {"items:read", "admin"}
    assert guard.authenticate_sync("roles").scopes == {"items:read", "admin"}
    with pytest.raises(MalformedTokenError, match="roles"):
        await guard.authenticate("bad-roles")


@pytest.mark.anyio
async def test_a_handler_changing_claims_does_not_change_the_next_requests_grants(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    # The introspector keeps its answer for the next request about the same token: a handler
    # appending to a list in token.claims must not add to what that request is granted.
    server.activate("roles", roles=["items:read"], realm_access={"roles": ["viewer"]})
    guard = opaque_guard(issuer, server, scope_claims=["roles", "realm_access.roles"])
    first = await guard.authenticate("roles")
    first.claims["roles"].append("admin")
    first.claims["realm_access"]["roles"].append("root")
    first.claims["realm_access"]["extra"] = ["x"]
    again = await guard.authenticate("roles")
    assert server.calls == 1  # the cached answer
    assert again.scopes == {"items:read", "viewer"}
    assert again.claims["roles"] == ["items:read"]
    assert again.claims["realm_access"] == {"roles": ["viewer"]}
    assert guard.authenticate_sync("roles").scopes == {"items:read", "viewer"}


@pytest.mark.anyio
async def test_opaque_token_refusals_and_outages_are_audited(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    server.activate("reader", scope="items:read", sub="kim")
    server.deactivate("revoked")
    app = build_app(opaque_guard(issuer, server))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with structlog.testing.capture_logs() as events:
            assert (await client.get("/items", headers=bearer("reader"))).status_code == 200
            assert (await client.get("/items", headers=bearer("revoked"))).status_code == 401
            server.fault = Fault(status=500)
            down = await client.get("/items", headers=bearer("fresh-token"))
    assert down.status_code == 503
    assert "retry-after" in down.headers
    accepted, rejected, unavailable = events
    assert (accepted["event"], accepted["alg"], accepted["sub"]) == (
        "token.accepted",
        "introspection",
        "kim",
    )
    assert (rejected["event"], rejected["reason"]) == ("token.rejected", "inactive")
    assert (unavailable["event"], unavailable["reason"]) == (
        "auth.unavailable",
        "introspection_unavailable",
    )
    for event in events:
        assert "reader" not in json.dumps(event, default=str)


@pytest.mark.anyio
async def test_opaque_tokens_still_meet_the_revocation_store(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    store = MemoryRevocationStore()
    server.activate("reader", scope="items:read", sub="kim", iat=int(time.time()) - 10)
    guard = opaque_guard(issuer, server, revocation=store)
    assert (await guard.authenticate("reader")).subject == "kim"
    await store.revoke_subject("kim")
    with pytest.raises(RevokedTokenError):
        await guard.authenticate("reader")


def test_opaque_tokens_through_the_wsgi_middleware(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    server.activate("reader", scope="items:read", sub="kim")
    server.activate("writer", scope="items:read items:write", sub="lee")
    server.deactivate("revoked")
    app = build_flask_app(opaque_guard(issuer, server))
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="http://t") as client:
        assert client.get("/me", headers=bearer("reader")).json()["sub"] == "kim"
        assert client.get("/items", headers=bearer("reader")).status_code == 200
        assert client.post("/items", headers=bearer("reader")).status_code == 403
        assert client.post("/items", headers=bearer("writer")).status_code == 200
        assert client.get("/items", headers=bearer("revoked")).status_code == 401
        server.fault = Fault(status=401, body=b'{"error": "invalid_client"}')
        assert client.get("/items", headers=bearer("another")).status_code == 503


def test_guard_error_carries_fingerprint_for_opaque_tokens(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    guard = opaque_guard(issuer, server)
    with pytest.raises(InactiveTokenError) as caught:
        guard.authenticate_sync("nope")
    assert caught.value.fingerprint is not None
    server.fault = Fault(status=500)
    with pytest.raises(ServiceUnavailableError):
        guard.authenticate_sync("nope-2")


# -- IntrospectionRevocationStore: a JWT revoked at the authorization server -------------


@pytest.mark.anyio
async def test_store_revokes_a_jwt_once_the_as_says_inactive(
    issuer: DevIssuer, server: IntrospectionServer, clock: Clock
) -> None:
    store = IntrospectionRevocationStore(server.introspector(active_ttl=30, clock=clock))
    assert store.name == "introspection"
    guard = issuer.guard(audience=AUDIENCE, revocation=store)
    token = issuer.mint(scopes=["items:read"], aud=AUDIENCE)
    server.activate(token)
    transport = httpx.ASGITransport(app=build_app(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/items", headers=bearer(token))).status_code == 200
        assert (await client.get("/items", headers=bearer(token))).status_code == 200
        assert server.calls == 1  # the second request was answered from the cache
        server.deactivate(token)  # revoked at the authorization server
        clock.advance(10)
        assert (await client.get("/items", headers=bearer(token))).status_code == 200
        clock.advance(21)  # active_ttl has passed: the next request asks again
        with structlog.testing.capture_logs() as events:
            refused = await client.get("/items", headers=bearer(token))
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert events[0]["reason"] == "revoked"
        assert server.calls == 2
    assert server.seen[-1].form["token"] == [token]


def test_store_sync_side_through_wsgi(
    issuer: DevIssuer, server: IntrospectionServer, clock: Clock
) -> None:
    store = IntrospectionRevocationStore(server.introspector(active_ttl=30, clock=clock))
    guard = issuer.guard(audience=AUDIENCE, revocation=store)
    token = issuer.mint(scopes=["items:read"], aud=AUDIENCE)
    server.activate(token)
    transport = httpx.WSGITransport(app=build_flask_app(guard))
    with httpx.Client(transport=transport, base_url="http://t") as client:
        assert client.get("/items", headers=bearer(token)).status_code == 200
        server.deactivate(token)
        clock.advance(31)
        assert client.get("/items", headers=bearer(token)).status_code == 401


@pytest.mark.anyio
async def test_store_failure_fails_closed_unless_allowed(
    issuer: DevIssuer, server: IntrospectionServer
) -> None:
    token = issuer.mint(aud=AUDIENCE)
    server.activate(token)
    server.fault = Fault(status=503)
    store = IntrospectionRevocationStore(server.introspector())
    closed = issuer.guard(audience=AUDIENCE, revocation=store)
    with pytest.raises(RevocationStoreError) as caught:
        await closed.authenticate(token)
    assert caught.value.status == 503
    lenient = issuer.guard(audience=AUDIENCE, revocation=store, revocation_failure="allow")
    assert (await lenient.authenticate(token)).token_id is not None


@pytest.mark.anyio
async def test_store_refuses_tokens_without_raw_form(session_issuer: DevIssuer) -> None:
    store = IntrospectionRevocationStore(
        Introspector("https://as.example/introspect", client_id="a", client_secret="b")
    )
    token = replace(session_issuer.guard().authenticate_sync(session_issuer.mint()), raw="")
    with pytest.raises(IntrospectionError):
        await store.is_revoked(token)
    with pytest.raises(IntrospectionError):
        store.is_revoked_sync(token)


@pytest.mark.parametrize(
    "name", ["bearerguard.introspection", "bearerguard.revocation.introspection"]
)
def test_exports_are_sorted_and_resolve(name: str) -> None:
    import importlib

    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda item: (not item.isupper(), item))
    assert all(hasattr(module, item) for item in exported)


@pytest.mark.anyio
async def test_an_answer_to_an_older_question_does_not_replace_a_newer_one(
    server: IntrospectionServer, clock: Clock
) -> None:
    # Threads and event loops each run their own exchange about one token. One asked before
    # the revocation and answered after another that asked since: its "active" replaced the
    # newer "inactive", and the revoked token was accepted for active_ttl more.
    server.activate("revoked-meanwhile")
    introspector = server.introspector(clock=clock)
    asked, release = threading.Event(), threading.Event()

    def stall() -> None:
        server.answering = None
        asked.set()
        release.wait(10)

    server.answering = stall
    early: list[bool] = []
    thread = threading.Thread(
        target=lambda: early.append(introspector.introspect_sync("revoked-meanwhile").active)
    )
    thread.start()
    assert asked.wait(10)  # the server has read its answer ("active") and holds it
    server.deactivate("revoked-meanwhile")
    clock.advance(1)
    assert not (await introspector.introspect("revoked-meanwhile")).active
    release.set()
    thread.join()
    assert early == [True]
    assert not (await introspector.introspect("revoked-meanwhile")).active
    assert not introspector.introspect_sync("revoked-meanwhile").active
    assert server.calls == 2


def test_the_latest_answer_replaces_an_older_one_of_the_other_kind(
    server: IntrospectionServer, clock: Clock
) -> None:
    # Active and inactive answers are cached apart: an answer must drop the other kind's
    # entry, or an older "active" (looked up first) would outlive a newer "inactive" that
    # a concurrent exchange (another thread or event loop) brought back.
    from bearerguard.introspection import _digest

    server.activate("revoked-soon")
    introspector = server.introspector(clock=clock)
    assert introspector.introspect_sync("revoked-soon").active
    inactive = IntrospectionResult(False, {"active": False})
    introspector._remember(_digest("revoked-soon"), inactive, clock.now)
    assert not introspector.introspect_sync("revoked-soon").active
    assert server.calls == 1
