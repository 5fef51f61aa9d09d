"""The protocol the guard consumes to ask whether a token is revoked."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bearerguard.token import AccessToken

__all__ = ["RevocationStore", "SyncRevocationStore"]


@runtime_checkable
class RevocationStore(Protocol):
    """Answers whether a verified token has been revoked.

    The guard calls ``is_revoked`` on every request, after the signature and claims check
    and also for tokens served from its verification cache, so a revocation takes effect on
    the next request. Stores key individual tokens on ``(token.issuer, token.token_id)``,
    never on the token's bytes (ECDSA signatures are malleable), and may also revoke by
    subject, client or session (``sid``).

    Any exception raised is treated as the store failing: the guard fails closed (503)
    unless it was built with ``revocation_failure="allow"``. ``is_revoked`` must be a
    coroutine function (and ``is_revoked_sync``/``is_revoked_now`` plain ones): the guard
    refuses any other with ``ConfigurationError``.

    A store whose ``is_revoked_sync`` answers from memory without ever waiting may set a
    class attribute ``nonblocking = True``: the guard then calls that method directly on the
    event loop and saves a coroutine per request. A store that can answer so only at times
    (a mirror that may be out of contact) may offer ``is_revoked_now(token) -> bool`` instead,
    raising whenever it cannot answer that way: the middlewares ask it first for a token
    served from the cache, and ``is_revoked`` when it raises.

    Either stands in for ``is_revoked`` only when defined in the class that defines
    ``is_revoked`` or in a subclass of it: a subclass of a built-in store that overrides
    ``is_revoked`` alone is awaited on every request (and has no synchronous side for WSGI).
    """

    async def is_revoked(self, token: AccessToken) -> bool:
        """Return ``True`` when ``token`` must be refused."""
        ...


@runtime_checkable
class SyncRevocationStore(Protocol):
    """The synchronous side of a revocation store, for WSGI applications.

    The same contract as ``RevocationStore``, for code that cannot await. The built-in
    stores implement both sides over the same state.
    """

    def is_revoked_sync(self, token: AccessToken) -> bool:
        """Return ``True`` when ``token`` must be refused."""
        ...
