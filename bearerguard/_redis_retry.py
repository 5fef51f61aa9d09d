"""One retry after a fast connection failure, for the Redis-backed components.

A pooled connection that Redis closed while idle (or a restarted Redis) fails at once; one
more try gets a fresh connection. A slow failure or a timeout is never retried, so a call
stays bounded by about the socket timeout.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["again", "again_sync"]

_T = TypeVar("_T")


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
