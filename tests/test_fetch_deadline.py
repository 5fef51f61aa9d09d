"""Fetches end within their timeout, however slowly the server answers."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bearerguard._resolver import resolve
from bearerguard.introspection import IntrospectionError, Introspector
from bearerguard.jwks import FetchError, FetchPolicy, JWKSFetcher
from bearerguard.testing import DevIssuer
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.test_wsgi import call, hello_app


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """Answers every request with its status line and headers a byte every 50 ms (~4 s)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def handle(connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 80:
                    if stop.is_set():
                        return
                    connection.sendall(bytes([byte]))
                    time.sleep(0.05)
                connection.sendall(b"\r\nContent-Length: 2\r\n\r\n{}")
            except OSError:
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_a_sync_key_set_fetch_ends_within_its_timeout(dripping_server: str) -> None:
    fetcher = JWKSFetcher(dripping_server, f"{dripping_server}/jwks", FetchPolicy(timeout=0.5))
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetcher.fetch_sync()
    assert time.monotonic() - started < 3.0  # the drip lasts 4 s; a margin for a slow core


def test_a_sync_discovery_and_fetch_end_within_one_timeout(dripping_server: str) -> None:
    # Discovery tries two metadata URLs: the whole fetch still has one timeout.
    fetcher = JWKSFetcher(dripping_server, None, FetchPolicy(timeout=0.5))
    started = time.monotonic()
    with pytest.raises(FetchError):
        fetcher.fetch_sync()
    assert time.monotonic() - started < 3.0  # the drip lasts 4 s; a margin for a slow core


def test_a_sync_introspection_ends_within_its_timeout(dripping_server: str) -> None:
    introspector = Introspector(
        f"{dripping_server}/introspect", client_id="rs", client_secret="s", timeout=0.5
    )
    started = time.monotonic()
    with pytest.raises(IntrospectionError, match="timed out"):
        introspector.introspect_sync("opaque")
    assert time.monotonic() - started < 3.0  # the drip lasts 4 s; a margin for a slow core


class _SlowIssuer(BaseHTTPRequestHandler):
    """Discovery metadata, then the key set, each answered after 0.3 s."""

    def do_GET(self) -> None:
        time.sleep(0.3)
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path.endswith("openid-configuration"):
            body = json.dumps({"issuer": base, "jwks_uri": f"{base}/jwks"}).encode()
        else:
            body = b'{"keys": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_issuer() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowIssuer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.anyio
async def test_an_async_discovery_and_fetch_end_within_one_timeout(slow_issuer: str) -> None:
    # Each GET alone is within the timeout; discovery and the key set together are not.
    fetcher = JWKSFetcher(slow_issuer, None, FetchPolicy(timeout=0.5))
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        await fetcher.fetch()
    assert time.monotonic() - started < 1.0


def test_a_slow_sync_discovery_and_fetch_end_within_one_timeout(slow_issuer: str) -> None:
    fetcher = JWKSFetcher(slow_issuer, None, FetchPolicy(timeout=0.5))
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetcher.fetch_sync()
    assert time.monotonic() - started < 1.0


# -- host name lookups --------------------------------------------------------------------

_getaddrinfo = socket.getaddrinfo


class SlowResolver:
    """The system resolver, made slow for one name as a slow DNS server would be: lookups of
    ``localhost`` wait until ``release`` is set (10 s at most), then resolve for real.

    It replaces ``socket.getaddrinfo``, which every resolution in the process goes through
    (httpcore's sync backend, asyncio's ``loop.getaddrinfo``): neither bearerguard nor the
    HTTP client is touched.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked = 0  # lookups of the slow name begun
        self.pending = 0  # and not yet answered
        self._lock = threading.Lock()

    def __call__(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("localhost", b"localhost"):
            with self._lock:
                self.asked += 1
                self.pending += 1
            try:
                self.release.wait(10)
            finally:
                with self._lock:
                    self.pending -= 1
        return _getaddrinfo(host, *args, **kwargs)


@pytest.fixture
def slow_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowResolver]:
    resolver = SlowResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    yield resolver
    resolver.release.set()


def by_name(issuer: DevIssuer) -> str:
    """The issuer's key set URL, its host a name to resolve (``localhost``)."""
    return f"http://localhost:{issuer.port}{issuer.jwks_path}"


def test_a_sync_fetch_fails_closed_while_the_host_name_is_still_resolving(
    issuer: DevIssuer, slow_resolver: SlowResolver
) -> None:
    fetcher = JWKSFetcher(issuer.url, by_name(issuer), FetchPolicy(timeout=0.2))
    with pytest.raises(FetchError, match="timed out"):
        fetcher.fetch_sync()
    # The fetch gave up at its deadline, not when the resolver answered.
    assert slow_resolver.pending == 1
    assert issuer.requests == []
    # A second fetch meanwhile waits for the same lookup rather than start another one.
    with pytest.raises(FetchError, match="timed out"):
        fetcher.fetch_sync()
    assert slow_resolver.asked == 1
    # Once the resolver answers, the name is used (every address it gives, in turn).
    slow_resolver.release.set()
    document, _ = fetcher.fetch_sync()
    assert document == issuer.jwks()


def test_a_sync_introspection_fails_closed_while_the_host_name_is_still_resolving(
    slow_resolver: SlowResolver,
) -> None:
    introspector = Introspector(
        "http://localhost:9/introspect", client_id="rs", client_secret="s", timeout=0.2
    )
    with pytest.raises(IntrospectionError, match="timed out"):
        introspector.introspect_sync("opaque")
    assert slow_resolver.pending == 1
    assert introspector.health_sync()["healthy"] is False


def test_the_wsgi_middleware_answers_503_while_the_host_name_is_still_resolving(
    issuer: DevIssuer, slow_resolver: SlowResolver
) -> None:
    guard = issuer.guard(jwks_uri=by_name(issuer), fetch=FetchPolicy(timeout=0.2))
    app = BearerGuardWSGIMiddleware(hello_app, guard=guard)
    status, headers, _ = call(app, HTTP_AUTHORIZATION=f"Bearer {issuer.mint()}")
    assert status == "503 Service Unavailable"
    assert "retry-after" in headers
    assert slow_resolver.pending == 1


@pytest.mark.anyio
async def test_an_async_fetch_fails_closed_while_the_host_name_is_still_resolving(
    issuer: DevIssuer, slow_resolver: SlowResolver
) -> None:
    # asyncio resolves in its executor; the fetch's deadline (anyio.fail_after) covers it.
    fetcher = JWKSFetcher(issuer.url, by_name(issuer), FetchPolicy(timeout=0.2))
    with pytest.raises(FetchError, match="timed out"):
        await fetcher.fetch()
    assert slow_resolver.pending == 1
    introspector = Introspector(
        "http://localhost:9/introspect", client_id="rs", client_secret="s", timeout=0.2
    )
    with pytest.raises(IntrospectionError, match="timed out"):
        await introspector.introspect("opaque")
    assert slow_resolver.pending >= 1
    assert issuer.requests == []
    slow_resolver.release.set()  # before the event loop closes: it waits for its executor


def test_ip_addresses_are_not_looked_up(slow_resolver: SlowResolver) -> None:
    assert resolve("127.0.0.1", 80, 0.0) == ["127.0.0.1"]
    assert resolve("::1", 80, 0.0) == ["::1"]
    assert slow_resolver.asked == 0


def test_a_name_that_does_not_resolve_fails_the_fetch(
    issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unknown(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "localhost":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return _getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    fetcher = JWKSFetcher(issuer.url, by_name(issuer), FetchPolicy(timeout=1))
    with pytest.raises(FetchError, match=r"ConnectError.*resolving localhost failed"):
        fetcher.fetch_sync()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_worker_does_not_wait_for_a_lookup_left_in_its_parent(
    issuer: DevIssuer, slow_resolver: SlowResolver
) -> None:
    # A pre-forking server (gunicorn --preload) warms up, its lookup still under way when it
    # forks: the child inherits the lookup but not its thread. Waited for, every fetch of
    # that name in the worker timed out, for as long as the worker lived.
    import warnings

    fetcher = JWKSFetcher(issuer.url, by_name(issuer), FetchPolicy(timeout=0.2))
    with pytest.raises(FetchError, match="timed out"):
        fetcher.fetch_sync()
    assert slow_resolver.pending == 1
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        outcome = b"refused"
        try:
            socket.getaddrinfo = _getaddrinfo  # the worker's resolver answers at once
            document, _ = JWKSFetcher(
                issuer.url, by_name(issuer), FetchPolicy(timeout=2.0)
            ).fetch_sync()
            if document == issuer.jwks():
                outcome = b"fetched"
        except BaseException as exc:  # reported to the parent
            outcome = repr(exc).encode()
        finally:
            os.write(write, outcome)
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        reported = pipe.read()
    os.waitpid(pid, 0)
    assert reported == b"fetched"


def test_a_lookup_whose_thread_cannot_start_fails_that_fetch_only(
    issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Out of threads (a container's pids.max reached): the lookup was registered before its
    # thread failed to start, so every later fetch of that name waited for a lookup no
    # thread would ever end, and timed out, long after threads were to be had again.
    start = threading.Thread.start

    def out_of_threads(thread: threading.Thread) -> None:
        if thread.name == "bearerguard-resolve":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", out_of_threads)
    fetcher = JWKSFetcher(issuer.url, by_name(issuer), FetchPolicy(timeout=2.0))
    with pytest.raises(FetchError, match=r"ConnectError.*can't start new thread"):
        fetcher.fetch_sync()
    monkeypatch.setattr(threading.Thread, "start", start)
    document, _ = fetcher.fetch_sync()
    assert document == issuer.jwks()


@pytest.fixture
def odd_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The system resolver failing ``localhost`` with neither an OSError nor a UnicodeError,
    as one does in a frozen app whose ``idna`` codec was left out (LookupError)."""

    def odd(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("localhost", b"localhost"):
            raise LookupError("unknown encoding: idna")
        return _getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", odd)


@pytest.mark.usefixtures("odd_resolver")
def test_a_lookup_failing_oddly_fails_a_sync_fetch_cleanly(issuer: DevIssuer) -> None:
    # The lookup's thread caught OSError and UnicodeError only: with any other exception it
    # left neither an address nor an error, and the connection failed an assert (an
    # AssertionError out of fetch_sync and introspect_sync; under python -O, a TypeError).
    fetcher = JWKSFetcher(issuer.url, by_name(issuer), FetchPolicy(timeout=1))
    with pytest.raises(FetchError, match=r"ConnectError.*resolving localhost failed"):
        fetcher.fetch_sync()
    introspector = Introspector(
        "http://localhost:9/introspect", client_id="rs", client_secret="s", timeout=1
    )
    with pytest.raises(IntrospectionError, match="resolving localhost failed"):
        introspector.introspect_sync("opaque")
    guard = issuer.guard(jwks_uri=by_name(issuer), fetch=FetchPolicy(timeout=1))
    app = BearerGuardWSGIMiddleware(hello_app, guard=guard)
    status, headers, _ = call(app, HTTP_AUTHORIZATION=f"Bearer {issuer.mint()}")
    assert status == "503 Service Unavailable"
    assert "retry-after" in headers


@pytest.mark.anyio
@pytest.mark.usefixtures("odd_resolver")
async def test_a_lookup_failing_oddly_fails_an_async_fetch_cleanly(issuer: DevIssuer) -> None:
    # httpcore maps only OSError from a connection to ConnectError: the resolver's other
    # exceptions went out of fetch() and introspect() as they were (a 500 where not caught).
    fetcher = JWKSFetcher(issuer.url, by_name(issuer), FetchPolicy(timeout=1))
    with pytest.raises(FetchError, match=r"ConnectError.*unknown encoding"):
        await fetcher.fetch()
    introspector = Introspector(
        "http://localhost:9/introspect", client_id="rs", client_secret="s", timeout=1
    )
    with pytest.raises(IntrospectionError, match="unknown encoding"):
        await introspector.introspect("opaque")
