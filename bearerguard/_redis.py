"""Redis plumbing shared by the Redis-backed components: clients and one bounded retry.

Our clients never let redis-py retry: a call stays bounded by the socket timeout, and a
pub/sub connection never reconnects and resubscribes behind a mirror's back. A pooled
connection that Redis closed while idle (or a restarted Redis) fails at once; one
more try gets a fresh connection. A slow failure or a timeout is never retried, so a call
stays bounded by about the socket timeout.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

__all__ = ["again", "again_sync", "async_client", "sync_client"]

_T = TypeVar("_T")


def sync_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """A client over a blocking pool (waiting for a connection is bounded too), no retries."""
    pool = redis.BlockingConnectionPool.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    return redis.Redis.from_pool(pool)


def async_client(url: str, options: dict[str, Any]) -> aredis.Redis:
    """As ``sync_client``, for ``redis.asyncio`` (one per event loop)."""
    pool = aredis.BlockingConnectionPool.from_url(url, retry=AsyncRetry(NoBackoff(), 0), **options)
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


async def again(call: Callable[[], Awaitable[_T]], timeout: float) -> _T:
    """As ``again_sync``, awaited."""
    started = time.monotonic()
    try:
        return await call()
    except RedisConnectionError:
        if time.monotonic() - started > timeout / 2:
            raise
    return await call()
