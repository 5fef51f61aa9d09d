"""Revocation stores: where the guard asks whether a verified token has been revoked.

``RevocationStore`` is the protocol the guard consumes; ``MemoryRevocationStore`` is the
default, for one process; ``RedisRevocationStore`` shares revocations between every instance
of an API (it needs the ``bearerguard[redis]`` extra and is imported on first use);
``IntrospectionRevocationStore`` asks the authorization server (RFC 7662) instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bearerguard.revocation.introspection import IntrospectionRevocationStore
from bearerguard.revocation.memory import MemoryRevocationStore
from bearerguard.revocation.protocol import RevocationStore, SyncRevocationStore

if TYPE_CHECKING:
    from bearerguard.revocation.redis import RedisRevocationStore

__all__ = [
    "IntrospectionRevocationStore",
    "MemoryRevocationStore",
    "RedisRevocationStore",
    "RevocationStore",
    "SyncRevocationStore",
]


def __getattr__(name: str) -> Any:
    # Lazily, so that importing this package never needs redis-py.
    if name == "RedisRevocationStore":
        try:
            from bearerguard.revocation.redis import (  # noqa: PLC0415 - lazily, see above
                RedisRevocationStore,
            )
        except ImportError as exc:
            raise ImportError(
                "RedisRevocationStore needs redis-py: pip install 'bearerguard[redis]'"
            ) from exc
        return RedisRevocationStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
