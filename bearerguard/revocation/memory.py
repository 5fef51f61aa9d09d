"""An in-process revocation store: the default, for an API that runs as one process."""

from __future__ import annotations

import time
from collections.abc import Callable

from bearerguard._core.times import Instant, check_count, check_seconds, to_epoch
from bearerguard.errors import ConfigurationError, RevocationStoreError
from bearerguard.revocation._table import (
    DEFAULT_EXPIRY_GRACE,
    Entry,
    Kind,
    RevocationTable,
    check_target,
)
from bearerguard.token import AccessToken

__all__ = ["MemoryRevocationStore"]

_PRUNE_EVERY = 30.0  # seconds between sweeps of lapsed entries, on a write (as the mirror)


class MemoryRevocationStore:
    """Revoked tokens (by ``(iss, jti)``), subjects, clients and sessions, in this process.

    Entries vanish once no token they cover could still be accepted, so memory stays bounded
    by the revocations of the last token lifetime. The store never drops a live entry to make
    room: when ``max_entries`` live entries exist, a new revocation raises
    ``RevocationStoreError`` instead of silently un-revoking an older one.

    Args:
        max_entries: the most live entries held, all kinds together.
        retention: how long an entry is kept when no expiry is known: a revoked token given
            without ``expires_at``, or a subject, client or session cutoff (which must outlive every
            token issued before it). Set it to at least your issuer's longest token lifetime;
            the entry is kept ``expiry_grace`` longer still, as a token is accepted up to
            ``leeway`` past its ``exp``.
        expiry_grace: how long a revoked token's entry is kept past its ``exp`` (and a
            retained entry past ``retention``): at least the ``leeway`` of every guard using
            the store (a guard refuses less).
        clock: returns epoch seconds; injectable for tests.

    Any ``issuer`` argument below limits an entry to tokens of that issuer; ``None`` matches
    every issuer the guard trusts.
    """

    name = "memory"
    nonblocking = True  # is_revoked_sync never waits: the guard calls it on the event loop

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        retention: float = 86_400.0,
        expiry_grace: float = DEFAULT_EXPIRY_GRACE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A NaN grace or retention made every entry's end NaN: never matched, revocations
        # were quietly ignored (fail open).
        max_entries = check_count("max_entries", max_entries)
        retention = check_seconds("retention", retention, positive=True)
        expiry_grace = check_seconds("expiry_grace", expiry_grace)
        if not callable(clock):  # time.time() for time.time
            raise ConfigurationError("clock must be a callable returning epoch seconds")
        self._max_entries = max_entries
        self._retention = retention
        self._grace = expiry_grace
        self._clock = clock
        self.table = RevocationTable()
        """The live entries (read by the guard; change them through the methods only)."""
        self._next_prune = clock() + _PRUNE_EVERY

    def __len__(self) -> int:
        return len(self.table)

    @property
    def expiry_grace(self) -> float:
        """Seconds a revoked token's entry is kept past its ``exp``."""
        return self._grace

    def revoke_token_sync(
        self, jti: str, expires_at: Instant | None = None, *, issuer: str | None = None
    ) -> bool:
        """Revoke one token by its ``jti``, until it would have expired anyway.

        Args:
            jti: the token's ``jti`` claim.
            expires_at: the token's ``exp`` (epoch seconds or an aware datetime); when
                omitted the entry is kept for ``retention`` (plus ``expiry_grace``).
            issuer: the token's ``iss``; ``None`` for any trusted issuer.

        Returns:
            ``True`` once the entry is held; ``False`` when nothing was kept because it had
            already lapsed (``exp`` plus the grace is past: no guard accepts the token).

        Raises:
            TypeError: ``jti`` is not a non-empty string (it could never match a token), or
                ``issuer`` is neither a string nor None.
        """
        check_target(jti, issuer)
        now = self._clock()
        # Without exp, the token may live up to retention from now, then leeway past that.
        lapse = now + self._retention if expires_at is None else to_epoch(expires_at)
        until = lapse + self._grace
        if until <= now:
            return False
        self._add([Entry("t", issuer, jti, until, None, None, now)], now)
        return True

    def revoke_subject_sync(
        self, sub: str, issued_before: Instant | None = None, *, issuer: str | None = None
    ) -> bool:
        """Revoke every token of ``sub`` issued at or before ``issued_before`` (default: now).

        Tokens without ``iat`` cannot show when they were issued, so a subject cutoff refuses
        them all while it lasts.
        """
        return self._cut("s", issuer, sub, issued_before)

    def revoke_client_sync(
        self, client_id: str, issued_before: Instant | None = None, *, issuer: str | None = None
    ) -> bool:
        """Revoke every token issued to ``client_id`` at or before ``issued_before``."""
        return self._cut("c", issuer, client_id, issued_before)

    def revoke_session_sync(
        self,
        sid: str,
        issued_before: Instant | None = None,
        *,
        issuer: str | None = None,
        subject: str | None = None,
    ) -> bool:
        """Revoke every token of session ``sid`` issued at or before ``issued_before``.

        Tokens are matched on their ``sid`` claim (OpenID Connect Front-Channel Logout 1.0
        §3, which identity providers also put in access tokens); the same user's other
        sessions are untouched. With ``subject`` (the session's user), that user's tokens
        that carry no ``sid`` are cut off too: they cannot show they belong to another
        session. Both entries last as a subject cut-off does.
        """
        check_target(sid, issuer)
        if subject is not None:
            check_target(subject, issuer)
        # One instant for both entries, "now" read once.
        now = self._clock()
        cutoff = now if issued_before is None else to_epoch(issued_before)
        entries = [self._cutoff_entry("n", issuer, sid, cutoff, now)]
        if subject is not None:
            entries.insert(0, self._cutoff_entry("u", issuer, subject, cutoff, now))
        # Room for both entries, or neither is written: half a session cut-off was held
        # though the call reported a failure.
        self._add(entries, now)
        return True  # a cut-off lives for retention past now: never lapsed already

    def is_revoked_sync(self, token: AccessToken) -> bool:
        """Whether ``token``, its subject, its client or its session has been revoked."""
        table = self.table
        if not (
            table.tokens or table.subjects or table.clients or table.sessions or table.sessionless
        ):
            return False
        return table.revoked(token, self._clock())

    # The asynchronous side: the same state, awaited (the memory store never blocks).

    async def revoke_token(
        self, jti: str, expires_at: Instant | None = None, *, issuer: str | None = None
    ) -> bool:
        """Revoke one token by its ``jti``: as ``revoke_token_sync``."""
        return self.revoke_token_sync(jti, expires_at, issuer=issuer)

    async def revoke_subject(
        self, sub: str, issued_before: Instant | None = None, *, issuer: str | None = None
    ) -> bool:
        """Revoke every token of ``sub`` issued up to an instant: as ``revoke_subject_sync``."""
        return self.revoke_subject_sync(sub, issued_before, issuer=issuer)

    async def revoke_client(
        self, client_id: str, issued_before: Instant | None = None, *, issuer: str | None = None
    ) -> bool:
        """Revoke every token of a client issued up to an instant: as ``revoke_client_sync``."""
        return self.revoke_client_sync(client_id, issued_before, issuer=issuer)

    async def revoke_session(
        self,
        sid: str,
        issued_before: Instant | None = None,
        *,
        issuer: str | None = None,
        subject: str | None = None,
    ) -> bool:
        """Revoke every token of a session issued up to an instant: as ``revoke_session_sync``."""
        return self.revoke_session_sync(sid, issued_before, issuer=issuer, subject=subject)

    async def is_revoked(self, token: AccessToken) -> bool:
        """Whether ``token``, its subject, its client or its session has been revoked."""
        return self.is_revoked_sync(token)

    def _cut(
        self, kind: Kind, issuer: str | None, name: str, issued_before: Instant | None
    ) -> bool:
        check_target(name, issuer)
        now = self._clock()
        cutoff = now if issued_before is None else to_epoch(issued_before)
        self._add([self._cutoff_entry(kind, issuer, name, cutoff, now)], now)
        return True  # a cut-off lives for retention past now: never lapsed already

    def _cutoff_entry(
        self, kind: Kind, issuer: str | None, name: str, cutoff: float, now: float
    ) -> Entry:
        # A token issued at the cut-off lives up to retention, and is accepted up to the
        # guard's leeway (at most expiry_grace) past its exp: the cut-off outlasts both.
        until = max(cutoff, now) + self._retention + self._grace
        return Entry(kind, issuer, name, until, cutoff, None, now)

    def _add(self, entries: list[Entry], now: float) -> None:
        """Hold every one of ``entries``, or none when they do not all fit."""
        table = self.table
        full = len(table) + _added(table, entries) > self._max_entries
        # Lapsed entries go on a write at least every _PRUNE_EVERY seconds, not only when the
        # table is full: the store holds the revocations of the last token lifetime.
        if full or now >= self._next_prune:
            table.prune(now)
            self._next_prune = now + _PRUNE_EVERY
            if len(table) + _added(table, entries) > self._max_entries:
                raise RevocationStoreError(
                    f"memory store holds {self._max_entries} live revocations; raise max_entries"
                )
        for entry in entries:
            table.apply(entry)


def _added(table: RevocationTable, entries: list[Entry]) -> int:
    # A held entry is merged into, not added: a full store still moves it later.
    return sum(not table.holds(entry.kind, entry.issuer, entry.name) for entry in entries)
