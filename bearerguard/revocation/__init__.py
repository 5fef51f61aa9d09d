"""Revocation stores: where the guard asks whether a verified token has been revoked.

``RevocationStore`` is the protocol the guard consumes; ``MemoryRevocationStore`` is the
default, for one process.
"""

from bearerguard.revocation.memory import MemoryRevocationStore
from bearerguard.revocation.protocol import RevocationStore, SyncRevocationStore

__all__ = ["MemoryRevocationStore", "RevocationStore", "SyncRevocationStore"]
