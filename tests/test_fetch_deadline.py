"""Fetches end within their timeout, however slowly the server answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bearerguard.introspection import IntrospectionError, Introspector
from bearerguard.jwks import FetchError, FetchPolicy, JWKSFetcher


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
    assert time.monotonic() - started < 1.5


def test_a_sync_discovery_and_fetch_end_within_one_timeout(dripping_server: str) -> None:
    # Discovery tries two metadata URLs: the whole fetch still has one timeout.
    fetcher = JWKSFetcher(dripping_server, None, FetchPolicy(timeout=0.5))
    started = time.monotonic()
    with pytest.raises(FetchError):
        fetcher.fetch_sync()
    assert time.monotonic() - started < 1.5


def test_a_sync_introspection_ends_within_its_timeout(dripping_server: str) -> None:
    introspector = Introspector(
        f"{dripping_server}/introspect", client_id="rs", client_secret="s", timeout=0.5
    )
    started = time.monotonic()
    with pytest.raises(IntrospectionError, match="timed out"):
        introspector.introspect_sync("opaque")
    assert time.monotonic() - started < 1.5


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
