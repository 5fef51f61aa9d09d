"""Real Redis servers for the tests (a pytest plugin: ``pytest_plugins = ["tests.redis_server"]``).

``redis_server`` (session) is one ``redis-server`` started for the whole run, on a free port,
without persistence, in a temporary directory; or the server named by ``BEARERGUARD_REDIS_URL``
when that is set. Tests share it by using a namespace of their own (``redis_namespace``).

``private_redis`` (function) is a server of the test's own, which it may stop, restart, pause
(SIGSTOP) and resume: for outage tests. It needs the ``redis-server`` binary.

When no server can be had the tests are skipped with a loud reason, except under CI (the ``CI``
environment variable is set), where they fail: a CI run must not pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    import redis

__all__ = ["RedisServer", "private_redis", "redis_namespace", "redis_server"]

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

    def start(self, timeout: float = 5.0) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING."""
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
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - a fixed argv of our own
            argv, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"redis-server did not start: {(self.directory / 'redis.log').read_text()}"
                )
            time.sleep(0.01)
        return self

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
