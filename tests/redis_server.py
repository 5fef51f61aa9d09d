"""Real Redis servers for the tests (a pytest plugin: ``pytest_plugins = ["tests.redis_server"]``).

``redis_server`` (session) is one ``redis-server`` started for the whole run, on a free port,
without persistence, in a temporary directory; or the server named by ``BEARERGUARD_REDIS_URL``
when that is set. Tests share it by using a namespace of their own (``redis_namespace``).

``private_redis`` (function) is a server of the test's own, which it may stop, restart, pause
(SIGSTOP) and resume: for outage tests. It needs the ``redis-server`` binary.

``cutting_proxy`` (function) is a loopback TCP proxy in front of the session server that drops
one connection on a chosen command, before Redis gets it or after Redis ran it (its answer
lost): for tests of what is retried.

When no server can be had the tests are skipped with a loud reason, except under CI (the ``CI``
environment variable is set), where they fail: a CI run must not pass by skipping them.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    import redis

__all__ = [
    "CuttingProxy",
    "RedisServer",
    "cutting_proxy",
    "private_redis",
    "redis_namespace",
    "redis_server",
]

URL_VARIABLE = "BEARERGUARD_REDIS_URL"


def _unavailable(reason: str) -> NoReturn:
    message = f"Redis tests need a server: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(f"!!! {message}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` process owned by the tests (or an external server, ``external``)."""

    def __init__(self, binary: str | None, url: str | None = None) -> None:
        self.binary = binary
        self.directory = Path(tempfile.mkdtemp(prefix="bearerguard-redis-"))
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.external = url is not None
        self.url = url or f"redis://127.0.0.1:{self.port}/0"
        self.paused = False
        self.started = False  # once started, a restart keeps the port

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING.

        The port was free when picked, but another process may take it before redis-server
        binds it (redis-server cannot be handed a bound socket): a first start then moves to
        another port; a restart cannot (its clients hold the URL) and fails saying why.
        """
        for _ in range(5):
            if self._launch(timeout):
                self.started = True
                return self
            if self.started or "Address already in use" not in self.log():
                break
            self.port = _free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self.log()}")

    def log(self) -> str:
        return (self.directory / "redis.log").read_text(errors="replace")

    def _launch(self, timeout: float) -> bool:
        """Whether redis-server, started on ``self.port``, came to answer there (it, and not
        another process that took the port)."""
        assert self.binary is not None
        assert not self.external
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",  # no snapshots and no AOF: a restart empties it, as in the tests
            "appendonly": "no",
            "dir": str(self.directory),
            "maxmemory-policy": "noeviction",
        }
        argv = [
            self.binary,
            *(part for name, value in options.items() for part in (f"--{name}", value)),
        ]
        log = (self.directory / "redis.log").open("wb")  # this start's lines alone
        self.process = subprocess.Popen(  # noqa: S603 - a fixed argv of our own
            argv, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._ours_answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.01)
        return True

    def _ours_answers(self) -> bool:
        """Whether the server answering on the port is the process we started."""
        import redis

        assert self.process is not None
        try:
            with redis.Redis.from_url(self.url, socket_timeout=0.5) as client:
                return int(client.info("server")["process_id"]) == self.process.pid
        except (redis.RedisError, OSError):
            return False

    def ping(self) -> bool:
        import redis

        try:
            with redis.Redis.from_url(self.url, socket_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        """Stop the server (its data goes with it: there is no persistence)."""
        process = self.process
        if process is None:
            return
        self.resume()
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.process is not None:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def client(self) -> redis.Redis:
        """A plain synchronous client, for inspecting what the store wrote."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2, decode_responses=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _binary() -> str | None:
    return shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the session: our own redis-server, or ``BEARERGUARD_REDIS_URL``."""
    try:
        import redis  # noqa: F401
    except ImportError:
        _unavailable("redis-py is not installed (pip install 'bearerguard[redis]')")
    url = os.environ.get(URL_VARIABLE)
    binary = _binary()
    if url:
        server = RedisServer(None, url)
        if not server.ping():
            _unavailable(f"{URL_VARIABLE}={url} does not answer PING")
        yield server
        server.close()
        return
    if binary is None:
        _unavailable(f"no redis-server binary on PATH and {URL_VARIABLE} is not set")
    server = RedisServer(binary).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop, restart and pause."""
    try:
        import redis  # noqa: F401
    except ImportError:
        _unavailable("redis-py is not installed (pip install 'bearerguard[redis]')")
    binary = _binary()
    if binary is None:
        _unavailable("outage tests need the redis-server binary on PATH")
    server = RedisServer(binary).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_namespace() -> str:
    """A namespace no other test uses, so tests can share one server."""
    return f"test-{uuid.uuid4().hex[:12]}"


class CuttingProxy:
    """A loopback TCP proxy to a Redis server that can drop one connection on a command.

    ``cut(b"EVALSHA")`` drops the connection that next sends a command holding those bytes,
    before Redis gets it; ``cut(b"EVALSHA", answered=True)`` forwards it, lets Redis run it and
    drops the connection instead of passing the answer on. Other connections, and the same
    connection before that command, are forwarded as they are. ``slow(b"EVALSHA", 0.1)``
    holds every such command that long before passing it on (a slow Redis, or network).
    """

    def __init__(self, upstream: str) -> None:
        parsed = urlsplit(upstream)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        credentials, at, _ = parsed.netloc.rpartition("@")  # kept: the proxy passes them on
        self.url = parsed._replace(netloc=f"{credentials}{at}127.0.0.1:{self.port}").geturl()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._dropping: set[socket.socket] = set()  # upstreams whose next answer is dropped
        self._cut: tuple[bytes, bool] | None = None
        self._slow: tuple[bytes, float] | None = None
        self._later: list[tuple[float, socket.socket, bytes]] = []  # (when, to, data)
        self.cuts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def cut(self, marker: bytes, *, answered: bool = False) -> None:
        with self._lock:
            self._cut = (marker, answered)

    def slow(self, marker: bytes, seconds: float) -> None:
        with self._lock:
            self._slow = (marker, seconds)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            while self._later and self._later[0][0] <= now:
                _, to, data = self._later.pop(0)
                if to in self._peers:
                    self._send(to, data)
            wait = min([0.05] + [when - now for when, _, _ in self._later[:1]])
            for ready, _ in self._selector.select(max(wait, 0.0)):
                sock = ready.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock in self._peers:
                    self._pump(sock)
        for sock in list(self._peers):
            self._drop(sock)
        self._selector.close()
        self._listener.close()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.create_connection(self._upstream)
        for sock in (client, upstream):
            sock.setblocking(True)
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        if sock in self._dropping:  # Redis ran the command: its answer is lost
            self._drop(sock)
            return
        with self._lock:
            cut, slow = self._cut, self._slow
            if cut is not None and cut[0] in data:
                self._cut = None
                self.cuts += 1
            else:
                cut = None
        if cut is not None and not cut[1]:
            self._drop(sock)  # before Redis gets it
            return
        if cut is not None:
            self._dropping.add(self._peers[sock])
        if slow is not None and slow[0] in data:
            # In order: redis-py sends a connection's next command after this one's answer.
            self._later.append((time.monotonic() + slow[1], self._peers[sock], data))
            self._later.sort(key=lambda item: item[0])
            return
        self._send(self._peers[sock], data)

    def _send(self, to: socket.socket, data: bytes) -> None:
        """Pass ``data`` on, dropping the connection if ``to`` is gone (a reset peer) rather
        than ending the proxy's thread."""
        try:
            to.sendall(data)
        except OSError:
            self._drop(to)

    def _drop(self, sock: socket.socket) -> None:
        if sock not in self._peers:
            return  # dropped with its peer
        for each in (sock, self._peers[sock]):
            del self._peers[each]
            self._dropping.discard(each)
            self._selector.unregister(each)
            each.close()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)


@pytest.fixture
def cutting_proxy(redis_server: RedisServer) -> Iterator[CuttingProxy]:
    """A ``CuttingProxy`` in front of the session's Redis."""
    proxy = CuttingProxy(redis_server.url)
    try:
        yield proxy
    finally:
        proxy.close()
