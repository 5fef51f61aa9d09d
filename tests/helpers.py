"""Small helpers shared by the tests: base64url, hand-made tokens, a settable clock, a direct
ASGI call and the scope it takes."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any


async def asgi_call(
    app: Any,
    scope: dict[str, Any],
    inbox: Sequence[dict[str, Any]] = ({"type": "http.request", "body": b""},),
) -> list[dict[str, Any]]:
    """Call an ASGI app directly: ``inbox`` answers its ``receive()`` calls in turn, then a
    disconnect; returns every message it sent."""
    pending = list(inbox)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(headers: list[tuple[bytes, Any]], **changes: Any) -> dict[str, Any]:
    """A raw ASGI scope of ``GET /me`` as a server builds it, with ``changes`` applied: for
    what a test client cannot send (odd header types, no Host, another server address)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/me",
        "raw_path": b"/me",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    scope.update(changes)
    return scope


def b64(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    """A JSON value as a base64url segment."""
    return b64(json.dumps(value).encode())


def compact(header: Any, payload: Any, signature: bytes = b"sig") -> str:
    """A compact JWS from parts, signed with nothing in particular."""
    return f"{segment(header)}.{segment(payload)}.{b64(signature)}"


class Clock:
    """Epoch seconds that move only when told to (``now`` is set, or ``advance`` called)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.contextmanager
def serving(server: Any) -> Iterator[int]:
    """Run a ``socketserver`` server (wsgiref's, werkzeug's) in a thread: its port; shut
    down, closed and joined on exit."""
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for the whole block: bound, never
    listening. A port bound and released at once could be taken by another process (a
    server) before the test dials it; one held bound cannot."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def uvicorn_logging(
    app: Any, logger: str = "uvicorn.access", http: str = "auto"
) -> Iterator[tuple[str, io.StringIO]]:
    """A real uvicorn server for ``app`` on 127.0.0.1 (``http``: its parser): its base URL,
    and what ``logger`` writes while it serves (uvicorn's own formats: the access line)."""
    import logging
    import socket
    import threading

    import uvicorn

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger(logger)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="info", lifespan="off", http=http))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        log.addHandler(handler)
        try:
            yield f"127.0.0.1:{port}", stream
        finally:
            log.removeHandler(handler)
            server.should_exit = True
            thread.join(10)


def until(check: Callable[[], bool], timeout: float) -> bool:
    """Whether ``check()`` came true within ``timeout`` seconds (polled every 10 ms): for
    what another thread or process does, instead of a sleep that guesses how long it takes."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def until_awaited(check: Callable[[], bool], timeout: float) -> bool:
    """``until`` inside an event loop: polls with ``anyio.sleep``, so that the loop's own
    tasks (a fetch under way) run meanwhile."""
    import anyio

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.01)
    return True
