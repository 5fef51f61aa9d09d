"""Redis plumbing shared by the Redis-backed components: clients and one bounded retry.

Our clients never let redis-py retry: a call stays bounded by the socket timeout, and a
pub/sub connection never reconnects and resubscribes behind a mirror's back. A pooled
connection that Redis closed while idle (or a restarted Redis) fails at once; one
more try gets a fresh connection. A slow failure or a timeout is never retried, so a call
stays bounded by about the socket timeout.

redis-py bounds each wait on its own (connecting, then each answer: a new connection's
handshake has several, a script unknown to Redis two more), so a call that must end by a
deadline, waits and retry included, sets it: ``within`` for an owned synchronous client,
``again_within`` for an asynchronous one (cancelled at the deadline). ``within`` reaches
connecting and reading only: waiting for a free pooled connection, sending and a TLS
handshake keep a socket timeout each (redis-py's pool and socket set them), as
docs/deployment.md says.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from bearerguard._core.times import check_count, check_wait
from bearerguard._fork import reset_after_fork
from bearerguard.errors import ConfigurationError

__all__ = [
    "DEFAULT_URL",
    "RedisClients",
    "again",
    "again_sync",
    "again_within",
    "async_client",
    "sync_client",
    "within",
]

DEFAULT_URL = "redis://127.0.0.1:6379/0"

_T = TypeVar("_T")


class _Pool(redis.BlockingConnectionPool):
    """A blocking pool that, once ``closed``, makes no connection and keeps none given back.

    Closing a pool cuts the connections it holds, but a call under way then retried on a new
    connection, or gave its own back afterwards: left open in the closed pool, until the
    garbage collector closed it.
    """

    closed = False

    def get_connection(self, *args: Any, **options: Any) -> Any:
        if self.closed:
            raise RedisConnectionError("the client was closed")
        return super().get_connection(*args, **options)  # type: ignore[no-untyped-call]

    def release(self, connection: Any) -> None:
        super().release(connection)  # type: ignore[no-untyped-call]
        if self.closed:
            connection.disconnect()


class _AsyncPool(aredis.BlockingConnectionPool):
    """As ``_Pool``, for ``redis.asyncio``."""

    closed = False

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        if self.closed:
            raise RedisConnectionError("the client was closed")
        return await super().get_connection(*args, **options)  # type: ignore[no-untyped-call]

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        if self.closed:
            await connection.disconnect()


# The instant (time.monotonic) by which the synchronous calls of this thread must end, if any.
_deadline: ContextVar[float | None] = ContextVar("bearerguard_redis_deadline", default=None)


@contextlib.contextmanager
def within(deadline: float) -> Iterator[None]:
    """Every connection made and every answer awaited in this block by an owned synchronous
    client (``sync_client``) ends by ``deadline``, a ``time.monotonic()`` instant: together,
    not each within the socket timeout."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def _time_left() -> float | None:
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def _socket_of(connection: object) -> Any:
    """A redis-py connection's socket (``None`` while not connected).

    Private to redis-py (``_sock`` from 5.0 to 8 at least), and the extra allows any release
    from 5.2.1 on: one that keeps it elsewhere gets ``None``, its waits then bounded each by
    its own timeouts (as before the deadline), rather than every call failing.
    """
    return getattr(connection, "_sock", None)


@functools.cache
def _bounded(base: type[Any]) -> type[Any]:
    """redis-py's connection class for the URL (TCP, TLS or a Unix socket), whose waits end
    by the deadline ``within`` set, when one is set: each is given what is left of it."""

    class Bounded(base):  # type: ignore[misc]
        def connect(self) -> None:
            left = _time_left()
            if left is None or _socket_of(self) is not None:
                super().connect()
                return
            if left <= 0:
                raise RedisTimeoutError("Timeout connecting to server")
            connection: Any = self  # redis-py's attribute, unknown to mypy through Any
            configured = connection.socket_connect_timeout
            bounded = left if configured is None else min(configured, left)
            connection.socket_connect_timeout = bounded
            try:
                super().connect()  # the handshake's answers come through read_response
            finally:
                connection.socket_connect_timeout = configured

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            left = _time_left()
            sock = _socket_of(self)
            if left is None or sock is None:
                return super().read_response(*args, **kwargs)
            if left <= 0:
                self.disconnect()  # the answer, unread, must not be the next command's
                raise RedisTimeoutError("Timeout reading from socket")
            configured = self.socket_timeout
            sock.settimeout(left if configured is None else min(configured, left))
            try:
                return super().read_response(*args, **kwargs)
            finally:
                if _socket_of(self) is sock:  # not disconnected by a failure
                    sock.settimeout(configured)

    Bounded.__name__ = Bounded.__qualname__ = f"Bounded{base.__name__}"
    return Bounded


def sync_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """A client over a blocking pool (waiting for a connection is bounded too), no retries,
    whose calls end by the deadline ``within`` sets."""
    pool = _Pool.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    pool.connection_class = _bounded(pool.connection_class)
    return redis.Redis.from_pool(pool)


def async_client(url: str, options: dict[str, Any]) -> aredis.Redis:
    """As ``sync_client``, for ``redis.asyncio`` (one per event loop)."""
    pool = _AsyncPool.from_url(url, retry=AsyncRetry(NoBackoff(), 0), **options)
    return aredis.Redis.from_pool(pool)


def again_sync(call: Callable[[], _T], timeout: float) -> _T:
    """``call()``, once more if it failed with a connection error within ``timeout / 2``."""
    started = time.monotonic()
    try:
        return call()
    except RedisConnectionError:
        if time.monotonic() - started > timeout / 2:
            raise
    return call()


async def again(call: Callable[[], Awaitable[_T]], socket_timeout: float) -> _T:
    """As ``again_sync``, awaited."""
    started = time.monotonic()
    try:
        return await call()
    except RedisConnectionError:
        if time.monotonic() - started > socket_timeout / 2:
            raise
    return await call()


async def again_within(
    call: Callable[[], Awaitable[_T]], socket_timeout: float, deadline: float
) -> _T:
    """As ``again``, cancelled at ``deadline`` (a ``time.monotonic()`` instant): every wait,
    connecting and the retry included, ends by then.

    Raises:
        redis.exceptions.TimeoutError: the deadline passed first.
    """
    with anyio.move_on_after(deadline - time.monotonic()):
        return await again(call, socket_timeout)
    raise RedisTimeoutError(f"Timeout: no answer within {socket_timeout:g} s")


async def _closed_with_loop(client: aredis.Redis) -> AsyncGenerator[None, None]:
    """Held open for as long as ``client``'s loop runs: closes the client when the loop shuts
    its asynchronous generators down (``asyncio.run``, ``asyncio.Runner``, anyio, asgiref)."""
    try:
        yield
    finally:
        pool = client.connection_pool
        if isinstance(pool, _AsyncPool):
            pool.closed = True  # for good: see _Pool
        with contextlib.suppress(Exception):
            await client.aclose()


def _keeper(client: aredis.Redis) -> AsyncGenerator[None, None]:
    """A started ``_closed_with_loop``: the running loop now knows it (its asyncgen hooks)."""
    keeper = _closed_with_loop(client)
    step = keeper.asend(None)
    with contextlib.suppress(StopIteration):  # it yields at once: no awaiting needed
        step.send(None)
    return keeper


def check_namespace(namespace: object) -> None:
    """Refuse a key namespace that is not a non-empty string, or holds NUL or a newline."""
    if not isinstance(namespace, str) or not namespace or any(c in namespace for c in "\0\n"):
        raise ConfigurationError("namespace must be a non-empty string")


class RedisClients:
    """The clients of one Redis-backed component, and which of them it owns.

    Clients given by the application are used as they are and never closed here. From a URL
    (``DEFAULT_URL`` when nothing is given), the clients are built and owned: ``close`` and
    ``aclose`` close them, and an asynchronous one is built for each event loop it is used
    in, as redis.asyncio connections belong to one loop: loops running at once (one per
    thread) each have their own, and each is closed as its loop shuts down (a loop closed
    without shutting its asynchronous generators down leaves it to the garbage collector).
    """

    def __init__(
        self,
        url: str | None,
        client: redis.Redis | None,
        async_client: aredis.Redis | None,
        *,
        socket_timeout: float,
        connect_timeout: float,
        max_connections: int,
        client_name: str,
    ) -> None:
        socket_timeout = check_wait("socket_timeout", socket_timeout)
        connect_timeout = check_wait("connect_timeout", connect_timeout)
        # NaN or a string was redis-py's ValueError or TypeError, not ours.
        max_connections = check_count("max_connections", max_connections)
        if url is not None and (client is not None or async_client is not None):
            raise ConfigurationError("give either a URL or clients, not both")
        if client is None and async_client is None:
            url = DEFAULT_URL if url is None else url
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigurationError("url must start with redis://, rediss:// or unix://")
        self.url = url
        self.timeout = socket_timeout
        """``socket_timeout`` as checked: a float."""
        self.options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "health_check_interval": 0,
            "client_name": client_name,
            "max_connections": max_connections,
            "timeout": socket_timeout,  # the longest wait for a free pooled connection
        }
        self._owns_sync = client is None and url is not None
        self.sync: redis.Redis | None = (
            sync_client(url, self.options) if url is not None and self._owns_sync else client
        )
        self._owns_async = async_client is None and url is not None
        self.asynchronous: aredis.Redis | None = async_client
        """The application's asynchronous client (owned ones are per loop: ``for_loop``)."""
        # The owned clients, by the loop each belongs to. One client swapped as each loop
        # came along was used by two loops running at once (a guard serving a loop per
        # thread): a connection of one loop awaited in another hung that request for ever.
        # Each with its keeper (``_keeper``), which closes it as its loop shuts down: a loop
        # that ended (asyncio.run, asgiref's loop per call) left its client open until the
        # garbage collector closed it, with a ResourceWarning, one connection per loop.
        self._by_loop: dict[
            asyncio.AbstractEventLoop, tuple[aredis.Redis, AsyncGenerator[None, None]]
        ] = {}
        self._loops_lock = threading.Lock()
        reset_after_fork(self)

    def _forked(self) -> None:
        """In a child process after ``fork()`` (bearerguard._fork): the lock another thread
        of the parent held is never released, and the parent's loops do not run here."""
        self._loops_lock = threading.Lock()
        self._by_loop = {}

    @property
    def owns_async(self) -> bool:
        """Whether the asynchronous client is built here (from the URL) for each loop."""
        return self._owns_async

    def for_loop(self, loop: asyncio.AbstractEventLoop) -> aredis.Redis | None:
        """The asynchronous client to use in ``loop``: its own when owned, else the
        application's (``None`` when there is none)."""
        if not self._owns_async or self.url is None:
            return self.asynchronous
        owned = self._by_loop.get(loop)
        if owned is None:
            with self._loops_lock:
                owned = self._by_loop.get(loop)
                if owned is None:
                    # Loops closed meanwhile never run their clients again (their keepers
                    # closed them): dropped.
                    self._by_loop = {
                        known: kept
                        for known, kept in self._by_loop.items()
                        if not known.is_closed()
                    }
                    client = async_client(self.url, self.options)
                    owned = self._by_loop[loop] = (client, _keeper(client))
        return owned[0]

    async def aclose(self) -> None:
        """Close the owned clients: each asynchronous one from its own loop, then the other.

        The client of a loop stopped but not closed (``run_until_complete``, a test runner's
        loop between tests) is closed by that loop as it shuts down, or used there again.
        """
        with self._loops_lock:
            owned, self._by_loop = self._by_loop, {}
        here = asyncio.get_running_loop()
        for loop, (client, keeper) in owned.items():
            if loop is here:
                await keeper.aclose()  # closes its client
            elif loop.is_running():
                # Another thread's loop: closed there, waited for at most the socket timeout.
                closing = asyncio.run_coroutine_threadsafe(keeper.aclose(), loop)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(closing), self.timeout)
            elif not loop.is_closed():
                # Nothing runs there now. Dropped, the client stayed open, and the loop's
                # own clean shutdown (shutdown_asyncgens) warned of a pending task and an
                # unclosed connection: kept, its keeper closes it then.
                with self._loops_lock:
                    self._by_loop.setdefault(loop, (client, keeper))
        self.close()

    def close(self) -> None:
        """Close the owned synchronous client (``aclose`` closes the asynchronous one)."""
        client = self.sync
        if self._owns_sync and client is not None:
            self.sync = None
            pool = client.connection_pool
            if isinstance(pool, _Pool):
                pool.closed = True  # for good: a call under way keeps no connection
            client.close()
