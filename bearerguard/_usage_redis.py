"""``RedisUsageMonitor``: usage counted across every instance of an API, in one round trip.

Layout in Redis, per counted key (a token ``t``: ``(iss, jti)``, or ``(iss, "fp:" + its
fingerprint)`` for an opaque token without ``jti``; a subject ``s``: ``(iss, sub)``) and
fixed window (``{number}`` = ``floor(now / window)``, ``{ms}`` the window length, so that
policies with different windows never mix their counts)::

    {namespace}:use:{ms}:{number}:{t|s}n:{issuer}:{name}   uses (INCR)
    {namespace}:use:{ms}:{number}:{t|s}a:{issuer}:{name}   client addresses (HyperLogLog)
    {namespace}:use:{ms}:{number}:{t|s}r:{issuer}:{name}   "a breach was reported" (SET NX)
    {namespace}:use:{ms}:o:{random id}                     "this observation ran" (seconds)

Every key expires once the window after its own has ended (the next window reads it as its
previous one). One Lua script counts the use, reads the previous window, and sets the
"reported" marker when a limit is exceeded, for every tracked key at once: one round trip,
atomic, with the same integer arithmetic as ``bearerguard._core.usage``.

An observation whose connection drops is retried once (``bearerguard._redis.again``); if
Redis had run it and only the answer was lost, the retry must not count the use again. So
each observation leaves a mark under an id of its own, kept a few seconds: a retry that
finds it counts nothing and answers what the first run found. That is one more small key
per observation while it lives (about 2,000 at 1,000 observations a second, by default).

A HyperLogLog in its sparse form takes a few dozen bytes for a handful of addresses. Its
count of a small set is exact unless two addresses fall into the same of its 16,384
registers (for 5 addresses about 1 chance in 1,600), which can only undercount by one; the
standard error is 0.81 % for large sets. Addresses are sent as the policy's network keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread

try:
    import redis
    import redis.asyncio as aredis
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("RedisUsageMonitor needs redis-py: pip install 'bearerguard[redis]'") from exc

from bearerguard._core.times import check_seconds
from bearerguard._core.usage import (
    Target,
    UsagePolicy,
    UsageVerdict,
    address_key,
    estimate,
    targets,
    verdict_of,
    window_at,
)
from bearerguard._fork import reset_after_fork
from bearerguard._redis import (
    DEFAULT_URL,
    RedisClients,
    again_sync,
    again_within,
    check_namespace,
    within,
)
from bearerguard.errors import ConfigurationError
from bearerguard.token import AccessToken
from bearerguard.usage import UsageMonitorError

__all__ = ["DEFAULT_URL", "OBSERVE_SCRIPT", "RedisUsageMonitor"]

_T = TypeVar("_T")

# KEYS, five per counted key: uses now, uses before, addresses now, addresses before, marker;
# then the observation's mark. ARGV: ttl_ms, remaining (thousandths), address ("" for none),
# the mark's ttl_ms, then per counted key its uses limit and its addresses limit (-1: none;
# addresses are counted only with a limit).
# Returns per counted key {uses now, uses before, addresses (-1: not counted)}, then 1 when
# this observation set a marker (the first breach of its key in this window), else 0. Run
# again with the same mark (a retry), it counts nothing more (adding an address again is
# harmless) and answers 1 if either run set a marker.
OBSERVE_SCRIPT = """
local ttl = tonumber(ARGV[1])
local remaining = tonumber(ARGV[2])
local address = ARGV[3]
local mark = KEYS[#KEYS]
local ran = redis.call('GET', mark)
local out = {}
local first = 0
for i = 0, (#KEYS - 1) / 5 - 1 do
  local k = i * 5
  local max_uses = tonumber(ARGV[5 + i * 2])
  local max_addresses = tonumber(ARGV[6 + i * 2])
  local uses
  if ran then
    uses = tonumber(redis.call('GET', KEYS[k + 1]) or '0') or 0
  else
    uses = redis.call('INCR', KEYS[k + 1])
    if uses == 1 then redis.call('PEXPIRE', KEYS[k + 1], ttl) end
  end
  local before = tonumber(redis.call('GET', KEYS[k + 2]) or '0') or 0
  local exceeded = max_uses >= 0 and uses + math.floor(before * remaining / 1000) > max_uses
  local addresses = -1
  if max_addresses >= 0 then
    if address ~= '' and redis.call('PFADD', KEYS[k + 3], address) == 1 then
      redis.call('PEXPIRE', KEYS[k + 3], ttl)
    end
    addresses = redis.call('PFCOUNT', KEYS[k + 3], KEYS[k + 4])
    exceeded = exceeded or addresses > max_addresses
  end
  if exceeded and redis.call('SET', KEYS[k + 5], '1', 'NX', 'PX', ttl) then first = 1 end
  out[#out + 1] = uses
  out[#out + 1] = before
  out[#out + 1] = addresses
end
if ran then
  first = math.max(first, tonumber(ran) or 0)
else
  redis.call('SET', mark, first, 'PX', tonumber(ARGV[4]))
end
out[#out + 1] = first
return out
"""

_SCOPES = {"token": "t", "subject": "s"}


def _part(text: str) -> str:
    text = text.replace("%", "%25").replace(":", "%3A")
    return text if text.isascii() else _SURROGATE.sub(_percent, text)


# A lone surrogate (a JSON claim's "\ud800", a client address decoded with surrogateescape)
# has no UTF-8 encoding: redis-py refused the whole call, and the failure cooldown then left
# every request unmonitored. Percent-encoded as its surrogatepass bytes ("%" is already).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _percent(found: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in found[0].encode("utf-8", "surrogatepass"))


def _address(address: str | None) -> str | bytes:
    """The script's address argument: bytes when it has no UTF-8 encoding (see above)."""
    if not address:
        return ""
    return address if address.isascii() else address.encode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class _Plan:
    """One observation, ready to send: the keys and arguments of the script."""

    targets: tuple[Target, ...]
    remaining: int
    keys: list[str]
    args: list[str | bytes | int]


def _failure(exc: BaseException) -> UsageMonitorError:
    return UsageMonitorError(f"redis usage monitor failed: {type(exc).__name__}: {exc}"[:300])


class RedisUsageMonitor:
    """Counts token and subject usage across every instance that shares a Redis.

    Each observation is one round trip (an ``EVALSHA``): every instance pointing at the same
    Redis and ``namespace`` sees the same counts, so a token replayed through another
    instance, from another address, is noticed.

    Args:
        policy: the limits and what to do when one is exceeded.
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL; ``DEFAULT_URL`` when neither a
            URL nor clients are given.
        namespace: the prefix of every key (``{namespace}:use:...``); the revocation store's
            namespace may be shared, its keys do not overlap.
        client: an existing ``redis.Redis`` for the synchronous side, instead of ``url``
            (not closed by the monitor; give it timeouts). Without ``async_client``,
            ``observe`` uses it too, in a worker thread.
        async_client: an existing ``redis.asyncio.Redis`` for the asynchronous side.
        socket_timeout: seconds an observation may take before it fails, in all: waiting
            its turn for a connection, connecting and its one retry included (with
            ``client``, each command is bounded by that client's own timeouts). On the
            synchronous side, sending and a ``rediss://`` TLS handshake are each bounded by
            it alone, not by what is left of it. Every accepted request waits for it, so
            keep it short.
        connect_timeout: seconds to establish a connection (within ``socket_timeout``
            during an observation).
        max_connections: connections per side (with ``client`` or ``async_client``, the
            most observations in flight at once); a call waits in turn for one, out of its
            ``socket_timeout``, and fails alone ("busy"), without the cooldown, when it gets
            none, or no answer in the time left.
        failure_cooldown: after a failure, observations raise at once (``skipped``) for this
            many seconds instead of asking Redis: an outage then costs requests nothing.
        clock: returns epoch seconds, which name the windows: keep the instances' clocks
            synchronised (NTP). Injectable for tests.

    Raises:
        ConfigurationError: inconsistent options.

    Warning:
        One Redis, not Redis Cluster (the script touches keys of several slots). Counts may
        be evicted under memory pressure without harm beyond missed detections, but
        ``noeviction``, as the revocation store needs, is fine: keys expire on their own.
    """

    name = "redis"

    def __init__(
        self,
        policy: UsagePolicy,
        url: str | None = None,
        *,
        namespace: str = "bearerguard",
        client: redis.Redis | None = None,
        async_client: aredis.Redis | None = None,
        socket_timeout: float = 0.25,
        connect_timeout: float = 0.25,
        max_connections: int = 50,
        failure_cooldown: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(policy, UsagePolicy):
            raise ConfigurationError("policy must be a UsagePolicy")
        check_namespace(namespace)
        # NaN fails too; an infinite cooldown skipped every observation after one failure.
        failure_cooldown = check_seconds("failure_cooldown", failure_cooldown)
        self._policy = policy
        self._prefix = f"{namespace}:use:{round(policy.window * 1000)}:"
        self._namespace = namespace
        self._max_connections = max_connections
        self._cooldown = failure_cooldown
        self._down_until = -math.inf
        self._clock = clock
        self._closed = False
        # Clients without retries, bounded waits (bearerguard._redis).
        self._clients = RedisClients(
            url,
            client,
            async_client,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            client_name="bearerguard-usage",
        )
        self._timeout = self._clients.timeout
        # How long an observation's mark lives: through the application's own synchronous
        # client (ours end all of it within the socket timeout), a retry starts within half
        # the socket timeout, then waits at most that timeout for a connection, the connect
        # timeout to make one and the socket timeout for Redis; kept twice that, at least a
        # second.
        longest = 2.5 * self._timeout + self._clients.options["socket_connect_timeout"]
        self._mark_ttl = math.ceil(1000 * max(1.0, 2 * longest))
        self._sync_script: Any = None
        self._async_script: Any = None
        self._slots: dict[asyncio.AbstractEventLoop, anyio.Semaphore] = {}
        # The synchronous side's turns: threads queue here, not in redis-py's pool, whose
        # "No connection available" looked like Redis failing and started the cooldown.
        self._turns = threading.BoundedSemaphore(self._max_connections)
        reset_after_fork(self)

    def _forked(self) -> None:
        """In a child process (bearerguard._fork): turns taken by the parent's other
        threads are never given back here."""
        self._turns = threading.BoundedSemaphore(self._max_connections)

    @property
    def synchronous(self) -> bool:
        """Whether this monitor has its synchronous side (a synchronous client), for WSGI."""
        return self._clients.sync is not None

    @property
    def policy(self) -> UsagePolicy:
        """The limits, the action and the failure mode."""
        return self._policy

    def __repr__(self) -> str:
        return f"RedisUsageMonitor(namespace={self._namespace!r}, {self._policy!r})"

    # -- observing ------------------------------------------------------------------------

    def observe_sync(self, token: AccessToken, client: str | None) -> UsageVerdict:
        """Count one use of ``token`` from ``client`` and judge it: one round trip.

        Raises:
            UsageMonitorError: Redis failed or timed out, or failed less than
                ``failure_cooldown`` seconds ago (``skipped``).
        """
        plan = self._plan(token, client)
        if plan is None:
            return verdict_of(self._policy, token, [], first=False)
        deadline = time.monotonic() + self._timeout
        redis_client = self._sync_client()
        turns, queued = self._take_turn_sync(deadline)
        try:
            with self._failures(queued=queued), within(deadline):
                if self._sync_script is None:
                    self._sync_script = redis_client.register_script(OBSERVE_SCRIPT)
                script = self._sync_script
                reply = self._again_sync(lambda: script(keys=plan.keys, args=plan.args))
        finally:
            turns.release()
        return self._verdict(token, plan, reply)

    async def observe(self, token: AccessToken, client: str | None) -> UsageVerdict:
        """Count one use of ``token`` from ``client`` and judge it: as ``observe_sync``."""
        clients = self._clients
        if clients.asynchronous is None and not clients.owns_async and clients.sync is not None:
            # Built with only a synchronous client (client=, as for WSGI): under ASGI, observe
            # through it in a worker thread rather than fail every observation unmonitored.
            return await anyio.to_thread.run_sync(self.observe_sync, token, client)
        plan = self._plan(token, client)
        if plan is None:
            return verdict_of(self._policy, token, [], first=False)
        deadline = time.monotonic() + self._timeout
        redis_client, slots = self._async_client()
        queued = await self._take_turn(slots, deadline)
        try:
            with self._failures(queued=queued):
                if self._async_script is None:
                    self._async_script = redis_client.register_script(OBSERVE_SCRIPT)
                script = self._async_script
                # This loop's client, not the one the script was registered with.
                reply = await self._again(
                    lambda: script(keys=plan.keys, args=plan.args, client=redis_client),
                    deadline,
                )
        finally:
            slots.release()
        return self._verdict(token, plan, reply)

    async def _take_turn(self, slots: anyio.Semaphore, deadline: float) -> bool:
        """Wait for a connection in turn, at most until ``deadline``: redis-py's asyncio pool
        lets a waiter starve until its timeout while others come and go, and every call to
        Redis must stay bounded. Returns whether it had to wait.

        Raises:
            UsageMonitorError: no connection came free in time.
        """
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            pass
        else:
            return False
        with anyio.move_on_after(deadline - time.monotonic()) as waiting:
            await slots.acquire()
        if waiting.cancelled_caught:
            raise self._busy()
        return True

    def _take_turn_sync(self, deadline: float) -> tuple[threading.BoundedSemaphore, bool]:
        """As ``_take_turn``, for a thread; returns the semaphore to release, and whether it
        had to wait.

        Raises:
            UsageMonitorError: no connection came free in time (not a failure of Redis: the
                cooldown is not started).
        """
        turns = self._turns
        if turns.acquire(blocking=False):
            return turns, False
        if not turns.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._busy()
        return turns, True

    def _busy(self, waiting: str = "no connection free") -> UsageMonitorError:
        return UsageMonitorError(
            f"redis usage monitor busy: {waiting} within {self._timeout:g} s "
            "(raise max_connections?)"
        )

    def _plan(self, token: AccessToken, client: str | None) -> _Plan | None:
        policy = self._policy
        found = targets(token, policy)
        if not found:
            return None
        if time.monotonic() < self._down_until:
            raise UsageMonitorError(
                "redis usage monitor skipped: Redis failed moments ago", skipped=True
            )
        window = window_at(self._clock(), policy.window)
        address = address_key(client, policy) if policy.counts_addresses else None
        prefix = self._prefix
        now, before = f"{prefix}{window.number}:", f"{prefix}{window.number - 1}:"
        keys: list[str] = []
        args: list[str | bytes | int] = [
            math.ceil(window.ttl * 1000),
            window.remaining,
            _address(address),
            self._mark_ttl,
        ]
        for target in found:
            tail = f"{_part(target.issuer)}:{_part(target.name)}"
            scope = _SCOPES[target.scope]
            keys += [
                f"{now}{scope}n:{tail}",
                f"{before}{scope}n:{tail}",
                f"{now}{scope}a:{tail}",
                f"{before}{scope}a:{tail}",
                f"{now}{scope}r:{tail}",
            ]
            args += [
                -1 if target.max_uses is None else target.max_uses,
                -1 if target.max_addresses is None else target.max_addresses,
            ]
        keys.append(f"{prefix}o:{os.urandom(8).hex()}")  # this observation's mark
        return _Plan(found, window.remaining, keys, args)

    def _verdict(self, token: AccessToken, plan: _Plan, reply: Any) -> UsageVerdict:
        try:
            numbers = [int(item) for item in reply]
            counted: list[tuple[Target, int, int | None]] = []
            for position, target in enumerate(plan.targets):
                uses, before, addresses = numbers[position * 3 : position * 3 + 3]
                counted.append(
                    (
                        target,
                        estimate(uses, before, plan.remaining),
                        None if addresses < 0 else addresses,
                    )
                )
            first = numbers[len(plan.targets) * 3] == 1
        except (TypeError, ValueError, IndexError) as exc:
            raise UsageMonitorError(
                f"unexpected reply from the usage script: {reply!r:.100}"
            ) from exc
        return verdict_of(self._policy, token, counted, first=first)

    @contextlib.contextmanager
    def _failures(self, *, queued: bool) -> Iterator[None]:
        """Every failure of Redis becomes ``UsageMonitorError``, and starts the cooldown.

        Except a timeout after waiting a turn: the wait took part of the observation's
        ``socket_timeout``, so the call had less than all of it. That one fails alone, as
        "busy": a busy monitor is not a Redis that is down.
        """
        try:
            yield
        except (RedisTimeoutError, TimeoutError, asyncio.TimeoutError) as exc:
            if queued:
                raise self._busy("no answer, after waiting its turn,") from exc
            self._down_until = time.monotonic() + self._cooldown
            raise _failure(exc) from exc
        except (RedisError, OSError, ValueError) as exc:
            self._down_until = time.monotonic() + self._cooldown
            raise _failure(exc) from exc
        self._down_until = -math.inf

    def _again_sync(self, call: Callable[[], _T]) -> _T:
        return again_sync(call, self._timeout)

    async def _again(self, call: Callable[[], Awaitable[_T]], deadline: float) -> _T:
        return await again_within(call, self._timeout, deadline)

    # -- health ---------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Whether Redis answers now (a ``PING``), for a readiness endpoint: ``"healthy"``."""
        clients = self._clients
        if clients.asynchronous is None and not clients.owns_async and clients.sync is not None:
            return await anyio.to_thread.run_sync(self.health_sync)
        try:
            deadline = time.monotonic() + self._timeout
            client, slots = self._async_client()
            # In turn with the observations (one busy for the whole timeout: not ready).
            await self._take_turn(slots, deadline)
            try:
                await self._again(client.ping, deadline)
            finally:
                slots.release()
        except (UsageMonitorError, RedisError, OSError, asyncio.TimeoutError):
            return self._health(healthy=False)
        return self._health(healthy=True)

    def health_sync(self) -> dict[str, Any]:
        """As ``health``, blocking (for WSGI)."""
        try:
            deadline = time.monotonic() + self._timeout
            client = self._sync_client()
            # In turn with the observations, as in ``health``.
            turns, _ = self._take_turn_sync(deadline)
            try:
                with within(deadline):
                    self._again_sync(client.ping)
            finally:
                turns.release()
        except (UsageMonitorError, RedisError, OSError, asyncio.TimeoutError):
            return self._health(healthy=False)
        return self._health(healthy=True)

    def _health(self, *, healthy: bool) -> dict[str, Any]:
        return {"store": self.name, "namespace": self._namespace, "healthy": healthy}

    # -- clients and lifecycle ------------------------------------------------------------

    def _sync_client(self) -> redis.Redis:
        if self._closed:
            raise UsageMonitorError("the usage monitor is closed")
        client = self._clients.sync
        if client is None:
            raise UsageMonitorError("this monitor has no synchronous client: give url= or client=")
        return client

    def _async_client(self) -> tuple[aredis.Redis, anyio.Semaphore]:
        if self._closed:
            raise UsageMonitorError("the usage monitor is closed")
        loop = asyncio.get_running_loop()
        # Each loop's own client when owned (bearerguard._redis.RedisClients), and its own
        # queue: an anyio.Semaphore belongs to one loop.
        client = self._clients.for_loop(loop)
        if client is None:
            raise UsageMonitorError(
                "this monitor has no asynchronous client: give url= or async_client="
            )
        slots = self._slots.get(loop)
        if slots is None:
            # In place, no lock: setdefault is atomic, and only closed loops are dropped. A
            # dict rebuilt here could drop the queue another thread's loop had just added,
            # and that loop would then make a second one (twice max_connections in flight).
            for known in list(self._slots):
                if known.is_closed():
                    self._slots.pop(known, None)
            slots = self._slots.setdefault(loop, anyio.Semaphore(self._max_connections))
        return client, slots

    async def aclose(self) -> None:
        """Close the connections this monitor opened (both sides)."""
        self._closed = True
        await self._clients.aclose()

    def close(self) -> None:
        """Close the synchronous connections this monitor opened.

        An asynchronous client is closed by ``aclose()``, from its event loop.
        """
        self._closed = True
        self._clients.close()

    async def __aenter__(self) -> RedisUsageMonitor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> RedisUsageMonitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
