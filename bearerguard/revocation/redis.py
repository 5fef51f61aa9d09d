"""A revocation store shared by every instance of an API, through Redis.

Redis holds the revocations; each process keeps a *mirror* of the live ones and answers
``is_revoked`` from it without a network round trip. A revocation made on any instance is
written and announced in one atomic Lua call, and every other mirror applies it as soon as the
announcement arrives (well under a millisecond on a LAN; see ``docs/deployment.md``).

Why pub/sub, rather than keyspace notifications or a stream:

- keyspace notifications need ``notify-keyspace-events`` set on the server (often refused on
  managed Redis) and carry only the key name, so each would cost a GET;
- a stream (XADD/XREAD) could replay what a disconnected mirror missed, but only while the
  stream still holds it, so a full reload is needed anyway as the fallback; it also costs
  memory per event and a trimming policy;
- pub/sub works on every Redis, carries the entry itself, and Redis never loses a message
  silently: a subscriber that falls too far behind is disconnected
  (``client-output-buffer-limit pubsub``). The mirror therefore only has to be right about
  connections, and it is: after any disconnection it is not trusted again until it has
  subscribed, reloaded every entry with SCAN (never KEYS) and seen a ping answered; the
  ordering argument is in ``bearerguard.revocation._mirror.session``.

Failure is never silent. While the mirror is not synchronised, or has not heard from Redis
(a ping answered) for ``failure_timeout`` seconds, ``is_revoked`` raises
``RevocationStoreError`` and the guard answers 503, unless it was built with
``revocation_failure="allow"``. With ``mirror=False`` every check is one MGET (one round
trip), bounded by the socket timeout.

The mirror runs as an asyncio task when the asynchronous side starts it (``await
store.start()``, or lazily on the first ``is_revoked``/``health``), or as a daemon thread
when the synchronous side does; either serves both sides, and ``aclose()``/``close()``
stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

import anyio.to_thread

try:
    import redis
    import redis.asyncio as aredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "RedisRevocationStore needs redis-py: pip install 'bearerguard[redis]'"
    ) from exc

from bearerguard._core.times import (
    MAX_NUMERIC_DATE,
    Instant,
    check_count,
    check_seconds,
    check_wait,
    to_epoch,
)
from bearerguard._failures import FailureReport
from bearerguard._fork import reset_after_fork
from bearerguard._redis import (
    DEFAULT_URL,
    RedisClients,
    again_sync,
    again_within,
    check_namespace,
    within,
)
from bearerguard.errors import ConfigurationError, RevocationStoreError
from bearerguard.revocation._mirror import (
    REVOKE_SCRIPT,
    SCAN_COUNT,
    Layout,
    Mirror,
    Ping,
    Receive,
    Request,
    RevocationTable,
    Scan,
    Subscribe,
    session,
    to_ms,
)
from bearerguard.revocation._table import DEFAULT_EXPIRY_GRACE, Entry, Kind, check_target
from bearerguard.token import AccessToken

__all__ = ["DEFAULT_URL", "RedisRevocationStore", "Revocation"]

RevocationKind = Literal["token", "subject", "client", "session", "sessionless"]
_KIND_NAMES: dict[Kind, RevocationKind] = {
    "t": "token",
    "s": "subject",
    "c": "client",
    "n": "session",
    "u": "sessionless",
}
_MAX_REASON = 500
_T = TypeVar("_T")
_log = logging.getLogger("bearerguard")


@dataclass(frozen=True, slots=True)
class Revocation:
    """One live revocation, as ``list_revocations`` reports it.

    Attributes:
        kind: ``"token"`` (by ``jti``), ``"subject"``, ``"client"``, ``"session"`` (by
            ``sid``) or ``"sessionless"`` (a subject's tokens without ``sid``, cut off with
            one of its sessions).
        issuer: the issuer it is limited to; ``None`` for every issuer.
        name: the ``jti``, ``sub``, ``client_id`` or ``sid``.
        lapses_at: when the entry is forgotten (a token's ``exp`` plus the grace, or the
            retention of a cut-off plus the grace).
        issued_before: for a cut-off, tokens issued at or before this instant are refused.
        reason: the reason given when revoking, if any.
        updated_at: when the entry was last written.
    """

    kind: RevocationKind
    issuer: str | None
    name: str
    lapses_at: datetime
    issued_before: datetime | None
    reason: str | None
    updated_at: datetime

    @classmethod
    def _from_entry(cls, entry: Entry) -> Revocation:
        def utc(seconds: float) -> datetime:
            # A cut-off near the end of year 9999 lapses, with its retention, past what a
            # datetime holds: shown as that last instant (it never lapses in practice).
            return datetime.fromtimestamp(min(seconds, MAX_NUMERIC_DATE), timezone.utc)

        return cls(
            kind=_KIND_NAMES[entry.kind],
            issuer=entry.issuer,
            name=entry.name,
            lapses_at=utc(entry.until),
            issued_before=None if entry.cutoff is None else utc(entry.cutoff),
            reason=entry.reason,
            updated_at=utc(entry.updated_at),
        )


@dataclass(frozen=True, slots=True)
class _Write:
    """One entry for ``REVOKE_SCRIPT``: the key, its four arguments, the lapse (epoch seconds)."""

    key: str
    argv: list[str | int]
    lapse: float


@contextlib.contextmanager
def _failures(action: str) -> Iterator[None]:
    """Every failure of Redis becomes ``RevocationStoreError`` (fail closed at the guard)."""
    try:
        yield
    except RevocationStoreError:
        raise
    except (RedisError, OSError, asyncio.TimeoutError, ValueError) as exc:
        raise RevocationStoreError(f"redis {action} failed: {type(exc).__name__}: {exc}") from exc


def _is_utf8(text: str) -> bool:
    """Whether ``text`` has a UTF-8 encoding (no lone surrogate), as Redis needs."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


async def _polled() -> None:
    """Let the event loop take in what its sockets hold, for a read that does not wait.

    Such a read sees only what the loop has taken from the socket. After a stall (a blocked
    event loop), the wait that timed out meanwhile can end before the loop polls the socket
    again (both due in one pass): an answer there all along would go unread. asyncio polls its
    selector at the start of a pass and queues what it found behind what is already queued:
    the second yield comes after that (uvloop polls between its passes too).
    """
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _message(pubsub: Any, response: Any) -> Any:
    """redis-py's message for a raw pub/sub response.

    Under RESP3 a PING on a subscribed connection is answered with a plain string; redis-py
    reads a decoded one (``decode_responses=True``) as a message list and loses the payload,
    so an answer to PING is recognised here, before redis-py's parsing.
    """
    if isinstance(response, bytes | str):
        return {"type": "pong", "data": response}
    return pubsub.handle_message(response) if response else None


class RedisRevocationStore:
    """Revoked tokens (by ``(iss, jti)``), subjects, clients and sessions, shared through Redis.

    The same methods and rules as ``MemoryRevocationStore``; every instance of the API that
    points at the same Redis and ``namespace`` sees the same revocations.

    Args:
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL; ``DEFAULT_URL`` when neither a
            URL nor clients are given. Credentials belong in the URL or in the clients.
        namespace: the prefix of every key and of the announcement channel; APIs that must
            not share revocations use different namespaces (a different database of the
            same server is not enough: pub/sub channels are server-wide).
        mirror: answer checks from an in-process copy kept current through pub/sub (no
            round trip per check). ``False`` asks Redis on every check (one MGET).
        client: an existing ``redis.Redis`` for the synchronous side, instead of ``url``;
            the store does not close it. Give it timeouts: the store cannot bound a call on
            a client without them. Without ``async_client`` the asynchronous side uses it
            too (the mirror in its thread, other calls in a worker thread).
        async_client: an existing ``redis.asyncio.Redis`` for the asynchronous side.
        socket_timeout: seconds a call to Redis may take before it fails, in all: a
            revocation, a direct check, a ping or a step of a listing, waiting for a free
            connection, connecting, loading the script again and its one retry included
            (with ``client``, each command is bounded by that client's own timeouts). On
            the synchronous side, waiting for a free connection, sending and a ``rediss://``
            TLS handshake are each bounded by it alone, not by what is left of it (see
            docs/deployment.md). Each command of the mirror's load is bounded by it too.
        connect_timeout: seconds to establish a connection (within ``socket_timeout``
            during a call).
        max_connections: connections per side (synchronous, asynchronous); a call waits for
            a free one out of its ``socket_timeout``.
        failure_timeout: the longest the mirror is trusted without word from Redis; a ping
            goes out every quarter of it. Also the longest the first check waits for the
            mirror's first load. While Redis is down, checks fail after at most this long.
        max_entries: the most live revocations the mirror holds. Beyond it the mirror stops
            answering (checks raise) rather than forget any, and this instance refuses to
            add more.
        retention: how long an entry lives when no expiry is known (a token revoked without
            ``expires_at``, a subject or client cut-off); at least your longest token
            lifetime. The entry lives ``expiry_grace`` longer still (the guard's leeway).
        expiry_grace: how long a revoked token's entry is kept past its ``exp`` (and a
            retained entry past ``retention``): at least the ``leeway`` of every guard using
            the store (a guard refuses less).
        clock: returns epoch seconds; injectable for tests.

    Raises:
        ConfigurationError: inconsistent options.

    Warning:
        Redis must not evict these keys: run it with ``maxmemory-policy noeviction`` (writes
        then fail loudly when memory is full) and with persistence if revocations must
        survive a restart of Redis. ``start()`` reads the policy in force, logs a warning
        when it evicts, and ``health()`` reports it.
    """

    name = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "bearerguard",
        mirror: bool = True,
        client: redis.Redis | None = None,
        async_client: aredis.Redis | None = None,
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        failure_timeout: float = 2.0,
        max_connections: int = 50,
        max_entries: int = 100_000,
        retention: float = 86_400.0,
        expiry_grace: float = DEFAULT_EXPIRY_GRACE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_namespace(namespace)
        # NaN fails too. The first checks wait up to failure_timeout for the mirror: past
        # threading.TIMEOUT_MAX (inf included) that wait raised OverflowError.
        failure_timeout = check_wait("failure_timeout", failure_timeout)
        # NaN fails too: it made every entry's end NaN, never matched by the mirror.
        max_entries = check_count("max_entries", max_entries)
        retention = check_seconds("retention", retention, positive=True)
        expiry_grace = check_seconds("expiry_grace", expiry_grace)
        max_connections = check_count("max_connections", max_connections, least=2)
        if not callable(clock):  # first called by the mirror: every check failed, 503
            raise ConfigurationError("clock must be a callable returning epoch seconds")
        self._layout = Layout(namespace)
        self._failure_timeout = failure_timeout
        self._max_entries = max_entries
        self._retention = retention
        self._grace = expiry_grace
        self._clock = clock
        self._closed = False
        self._last_ok: bool | None = None
        self._eviction_policy: str | None = None
        self._mirror = (
            Mirror(max_entries=max_entries, failure_timeout=failure_timeout) if mirror else None
        )
        # Clients without retries, bounded waits (bearerguard._redis).
        self._clients = RedisClients(
            url,
            client,
            async_client,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            client_name="bearerguard",
        )
        self._timeout = self._clients.timeout
        self._sync_script: Any = None
        self._async_script: Any = None
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._task_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Which start of the mirror is current: a runner whose number is no longer this one
        # was replaced, and stands down at its next step without touching the mirror.
        self._run = 0
        self._reconnects = FailureReport(
            "bearerguard: revocation mirror lost Redis (%s); resynchronising",
            "bearerguard: revocation mirror still cannot reach Redis; "
            "%d more failed reconnections (%d in all)",
            "",  # never recovered(): the mirror says when it is live again
            level=logging.INFO,
            traceback=False,
        )
        if self._mirror is not None:
            # A pre-forking server (gunicorn --preload) may start the mirror before forking
            # its workers: a worker's copy was trusted until failure_timeout ran out, though
            # no runner fed it, so revocations made meanwhile went unseen there. Through
            # bearerguard._fork: os.register_at_fork is missing where there is no fork() (Windows).
            reset_after_fork(self)

    def _forked(self) -> None:
        """In a child process: the inherited mirror restarts (and is waited for) on first use."""
        # A task of the forking thread's loop came along, and runs on if the child runs that
        # loop on: no longer current, it stands down at its next step, leaving the mirror to
        # the child's own runner (it listens on a connection shared with the parent).
        self._run += 1
        self._lock = threading.Lock()
        self._thread = None
        self._task = self._task_loop = None
        self._stop = threading.Event()
        if self._closed:
            self._stop.set()
        mirror = self._mirror
        if mirror is not None:
            mirror.forked()

    @property
    def expiry_grace(self) -> float:
        """Seconds a revoked token's entry is kept past its ``exp``."""
        return self._grace

    def __repr__(self) -> str:
        mode = "mirror" if self._mirror is not None else "direct"
        return f"RedisRevocationStore(namespace={self._layout.namespace!r}, mode={mode!r})"

    # -- revoking -------------------------------------------------------------------------

    def revoke_token_sync(
        self,
        jti: str,
        expires_at: Instant | None = None,
        *,
        issuer: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Revoke one token by its ``jti``, until it would have expired anyway.

        Args:
            jti: the token's ``jti`` claim.
            expires_at: the token's ``exp`` (epoch seconds or an aware datetime); the Redis
                key expires at it plus ``expiry_grace``. When omitted, kept for ``retention`` plus
                ``expiry_grace``.
            issuer: the token's ``iss``; ``None`` for any trusted issuer.
            reason: a short note kept with the entry, for ``list_revocations``.

        Returns:
            ``True`` once Redis holds the entry; ``False`` when nothing was written because
            the entry had already lapsed by Redis's clock (``expires_at`` plus the grace is
            past: no guard accepts the token any more). A lapse still ahead by this
            process's clock is also logged as a warning: the clocks disagree.

        Raises:
            ValueError: a naive datetime; TypeError: not an instant.
            RevocationStoreError: Redis failed, or the mirror is full.
        """
        return self._write_sync([self._token_write(jti, expires_at, issuer, reason)])[0]

    def revoke_subject_sync(
        self,
        sub: str,
        issued_before: Instant | None = None,
        *,
        issuer: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Revoke every token of ``sub`` issued at or before ``issued_before`` (default: now).

        Tokens without ``iat`` cannot show when they were issued, so a subject cut-off
        refuses them all while it lasts. A cut-off never moves back in time. "Now" is the
        later of this process's clock and Redis's: a clock running behind must not spare
        the tokens issued just before. Returns whether Redis holds the entry, as
        ``revoke_token_sync``.
        """
        return self._write_sync([self._cutoff_write("s", sub, issued_before, issuer, reason)])[0]

    def revoke_client_sync(
        self,
        client_id: str,
        issued_before: Instant | None = None,
        *,
        issuer: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Revoke every token issued to ``client_id`` at or before ``issued_before``."""
        write = self._cutoff_write("c", client_id, issued_before, issuer, reason)
        return self._write_sync([write])[0]

    def revoke_session_sync(
        self,
        sid: str,
        issued_before: Instant | None = None,
        *,
        issuer: str | None = None,
        subject: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Revoke every token of session ``sid`` issued at or before ``issued_before``.

        As ``MemoryRevocationStore.revoke_session_sync``: tokens are matched on their
        ``sid`` claim; with ``subject``, that user's tokens without a ``sid`` are cut off
        too (a second entry, written in the same script: both or neither). Returns whether
        Redis holds the session entry.
        """
        writes = self._session_writes(sid, issued_before, issuer, subject, reason)
        return self._write_sync(writes)[-1]

    async def revoke_session(
        self,
        sid: str,
        issued_before: Instant | None = None,
        *,
        issuer: str | None = None,
        subject: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Revoke every token of a session issued up to an instant: as ``revoke_session_sync``."""
        writes = self._session_writes(sid, issued_before, issuer, subject, reason)
        return (await self._write(writes))[-1]

    async def revoke_token(
        self,
        jti: str,
        expires_at: Instant | None = None,
        *,
        issuer: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Revoke one token by its ``jti``: as ``revoke_token_sync``."""
        return (await self._write([self._token_write(jti, expires_at, issuer, reason)]))[0]

    async def revoke_subject(
        self,
        sub: str,
        issued_before: Instant | None = None,
        *,
        issuer: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Revoke every token of ``sub`` issued up to an instant: as ``revoke_subject_sync``."""
        return (await self._write([self._cutoff_write("s", sub, issued_before, issuer, reason)]))[0]

    async def revoke_client(
        self,
        client_id: str,
        issued_before: Instant | None = None,
        *,
        issuer: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Revoke every token of a client issued up to an instant: as ``revoke_client_sync``."""
        write = self._cutoff_write("c", client_id, issued_before, issuer, reason)
        return (await self._write([write]))[0]

    def _token_write(
        self, jti: str, expires_at: Instant | None, issuer: str | None, reason: str | None
    ) -> _Write:
        now = self._clock()
        # Without exp, the token may live up to retention from now, then leeway past that.
        lapse = now + self._retention if expires_at is None else to_epoch(expires_at)
        until = lapse + self._grace
        return self._prepare("t", jti, issuer, reason, now=now, until=until, cutoff=None)

    def _session_writes(
        self,
        sid: str,
        issued_before: Instant | None,
        issuer: str | None,
        subject: str | None,
        reason: str | None,
    ) -> list[_Write]:
        check_target(sid, issuer)
        targets: list[tuple[Kind, str]] = [("n", sid)]
        if subject is not None:
            targets.insert(0, ("u", subject))
        writes = [
            self._cutoff_write(kind, name, issued_before, issuer, reason) for kind, name in targets
        ]
        # Room for both entries, or neither is written: each alone fitted, yet the two took
        # the mirror past max_entries, and it stopped answering.
        self._check_room(self._clock(), issuer, targets)
        return writes

    def _cutoff_write(
        self,
        kind: Kind,
        name: str,
        issued_before: Instant | None,
        issuer: str | None,
        reason: str | None,
    ) -> _Write:
        now = self._clock()
        cutoff = now if issued_before is None else to_epoch(issued_before)
        # A token issued at the cut-off lives up to retention, and is accepted up to the
        # guard's leeway (at most expiry_grace) past its exp: the cut-off outlasts both.
        until = max(cutoff, now) + self._retention + self._grace
        # "now": at least Redis's now (see REVOKE_SCRIPT).
        return self._prepare(
            kind,
            name,
            issuer,
            reason,
            now=now,
            until=until,
            cutoff=cutoff,
            at_now=issued_before is None,
        )

    def _prepare(
        self,
        kind: Kind,
        name: str,
        issuer: str | None,
        reason: str | None,
        *,
        now: float,
        until: float,
        cutoff: float | None,
        at_now: bool = False,
    ) -> _Write:
        """The script's arguments: absolute instants only, Redis supplies "now" (TIME)."""
        check_target(name, issuer)
        # A lone surrogate has no UTF-8 encoding: refused here, not failed at Redis as if the
        # store were down (reported unhealthy without a mirror).
        if reason is not None and (
            not isinstance(reason, str) or len(reason) > _MAX_REASON or not _is_utf8(reason)
        ):
            raise ValueError(
                f"reason must be UTF-8 text of at most {_MAX_REASON} characters (no lone surrogate)"
            )
        self._check_room(now, issuer, [(kind, name)])
        argv: list[str | int] = [
            to_ms(until),
            "" if cutoff is None else to_ms(cutoff),
            reason or "",
            "1" if at_now else "",
        ]
        return _Write(self._layout.key(kind, issuer, name), argv, until)

    def _check_room(self, now: float, issuer: str | None, targets: list[tuple[Kind, str]]) -> None:
        """Refuse entries the mirror has no room for (it would stop answering)."""
        mirror = self._mirror
        if mirror is None:
            return
        table = mirror.table
        # A held entry is merged into, not added: a full mirror still moves it later.
        added = sum(not table.holds(kind, issuer, name) for kind, name in targets)
        if len(table) + added <= self._max_entries:
            return
        table.prune(now)
        added = sum(not table.holds(kind, issuer, name) for kind, name in targets)
        if len(table) + added > self._max_entries:
            raise RevocationStoreError(
                f"the mirror holds {self._max_entries} live revocations; raise max_entries"
            )

    def _written(self, writes: list[_Write], values: Any) -> list[bool]:
        """Whether Redis holds each entry; the mirror reads its own writes at once."""
        self._last_ok = True
        held: list[bool] = []
        for write, value in zip(writes, values, strict=True):
            held.append(value is not None)
            if value is None:
                self._not_written(write)
            elif self._mirror is not None:
                entry = self._layout.entry(write.key, value)
                if entry is not None:
                    # Read your own writes at once; the announcement brings it again.
                    self._mirror.table.apply(entry)
        return held

    def _not_written(self, write: _Write) -> None:
        """Say that an entry was not written: it had lapsed by Redis's clock."""
        ahead = write.lapse - self._clock()
        if ahead > 0:
            _log.warning(
                "bearerguard: revocation %s not written: it lapsed by Redis's clock, yet "
                "lapses in %.0fs by this process's clock, which is behind Redis's; "
                "synchronise the clocks (NTP)",
                write.key[:200],
                ahead,
            )
        else:
            _log.debug("bearerguard: revocation %s not written: lapsed", write.key[:200])

    def _script_call(self, writes: list[_Write]) -> dict[str, Any]:
        """``REVOKE_SCRIPT``'s keys and arguments: every entry of one revocation, one call."""
        args: list[str | int] = [self._layout.channel]
        for write in writes:
            args += write.argv
        return {"keys": [write.key for write in writes], "args": args}

    def _write_sync(self, writes: list[_Write]) -> list[bool]:
        client = self._sync_client()
        call = self._script_call(writes)
        with self._recording("revocation"):
            if self._sync_script is None:
                self._sync_script = client.register_script(REVOKE_SCRIPT)
            script = self._sync_script
            # Retried safely: writing an entry again merges it into itself.
            return self._written(writes, self._again_sync(lambda: script(**call)))

    async def _write(self, writes: list[_Write]) -> list[bool]:
        if self._sync_only():
            return await anyio.to_thread.run_sync(self._write_sync, writes)
        client = self._async_client()
        call = self._script_call(writes)
        with self._recording("revocation"):
            if self._async_script is None:
                self._async_script = client.register_script(REVOKE_SCRIPT)
            script = self._async_script
            # This loop's client, not the one the script was registered with (another loop's).
            return self._written(writes, await self._again(lambda: script(**call, client=client)))

    # -- checking -------------------------------------------------------------------------

    def is_revoked_sync(self, token: AccessToken) -> bool:
        """Whether ``token``, its subject, its client or its session has been revoked.

        Raises:
            RevocationStoreError: the answer cannot be had (the mirror is not synchronised or
                has lost contact with Redis; or, without a mirror, Redis failed).
        """
        mirror = self._mirror
        if mirror is None:
            return self._check_direct_sync(token)
        if not mirror.answerable():
            self._start_thread()
            if not mirror.ever_live and mirror.state != "failed":
                mirror.settled.wait(self._failure_timeout)  # the first requests wait for it
        return mirror.check(token, self._clock())

    def is_revoked_now(self, token: AccessToken) -> bool:
        """Whether ``token`` is revoked, answered from the mirror without I/O or waiting.

        What the guard asks first for a token it has cached; when this raises, it asks
        ``is_revoked``, which starts the mirror, waits for it, or fails closed.

        Raises:
            RevocationStoreError: no mirror (every check is a round trip), or the mirror
                cannot answer now (not started, not synchronised, or out of contact).
        """
        mirror = self._mirror
        if mirror is None:
            raise RevocationStoreError("no mirror: every check asks Redis")
        return mirror.check(token, self._clock())

    async def is_revoked(self, token: AccessToken) -> bool:
        """Whether ``token``, its subject, client or session is revoked (no I/O with a mirror).

        Raises:
            RevocationStoreError: as ``is_revoked_sync``.
        """
        mirror = self._mirror
        if mirror is None:
            if self._sync_only():
                return await anyio.to_thread.run_sync(self._check_direct_sync, token)
            return await self._check_direct(token)
        if not mirror.answerable():
            self._start_runner()
            if not mirror.ever_live and mirror.state != "failed":
                await self._wait(mirror.settled, self._failure_timeout)
        return mirror.check(token, self._clock())

    def _lookup_keys(self, token: AccessToken) -> list[str]:
        key = self._layout.key
        keys: list[str] = []
        sid = token.claims.get("sid")
        # The session's entry, or the entry of the subject's tokens without one: in the same
        # MGET as the others (one round trip).
        session: tuple[Kind, object] = (
            ("n", sid) if isinstance(sid, str) and sid else ("u", token.subject)
        )
        for kind, name in (
            ("t", token.token_id),
            ("s", token.subject),
            ("c", token.client_id),
            session,
        ):
            if isinstance(name, str) and name:
                keys += [key(kind, token.issuer, name), key(kind, None, name)]
        return keys

    def _decide(self, token: AccessToken, keys: list[str], values: list[Any]) -> bool:
        table = RevocationTable()
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                entry = self._layout.entry(key, value)
                if entry is not None:
                    table.apply(entry)
        return table.revoked(token, self._clock())

    def _check_direct_sync(self, token: AccessToken) -> bool:
        keys = self._lookup_keys(token)
        if not keys:
            return False
        client = self._sync_client()
        with self._recording("check"):
            return self._decide(token, keys, self._again_sync(lambda: client.mget(keys)))

    async def _check_direct(self, token: AccessToken) -> bool:
        keys = self._lookup_keys(token)
        if not keys:
            return False
        client = self._async_client()
        with self._recording("check"):
            return self._decide(token, keys, await self._again(lambda: client.mget(keys)))

    # -- listing --------------------------------------------------------------------------

    def list_revocations_sync(self) -> list[Revocation]:
        """Every live revocation in this namespace, oldest change first (SCAN, never KEYS)."""
        client = self._sync_client()
        entries: list[Entry] = []
        cursor = 0
        pattern = self._layout.pattern
        with self._recording("listing"):
            while True:
                # Each step retried as the other calls are: it only reads.
                scan = functools.partial(client.scan, cursor, match=pattern, count=SCAN_COUNT)
                cursor, keys = self._again_sync(scan)
                values = self._again_sync(functools.partial(client.mget, keys)) if keys else []
                entries += self._entries(keys, values)
                if not cursor:
                    break
        return self._listing(entries)

    async def list_revocations(self) -> list[Revocation]:
        """Every live revocation in this namespace: as ``list_revocations_sync``."""
        if self._sync_only():
            return await anyio.to_thread.run_sync(self.list_revocations_sync)
        client = self._async_client()
        entries: list[Entry] = []
        cursor = 0
        pattern = self._layout.pattern
        with self._recording("listing"):
            while True:
                scan = functools.partial(client.scan, cursor, match=pattern, count=SCAN_COUNT)
                cursor, keys = await self._again(scan)
                values = await self._again(functools.partial(client.mget, keys)) if keys else []
                entries += self._entries(keys, values)
                if not cursor:
                    break
        return self._listing(entries)

    def _entries(self, keys: list[Any], values: list[Any]) -> list[Entry]:
        found = (
            self._layout.entry(key, value)
            for key, value in zip(keys, values, strict=True)
            if value is not None
        )
        return [entry for entry in found if entry is not None]

    def _listing(self, entries: list[Entry]) -> list[Revocation]:
        now = self._clock()
        live = {(e.kind, e.issuer, e.name): e for e in entries if now < e.until}
        ordered = sorted(live.values(), key=lambda e: (e.updated_at, e.kind, e.name))
        return [Revocation._from_entry(entry) for entry in ordered]

    # -- health ---------------------------------------------------------------------------

    @property
    def synchronous(self) -> bool:
        """Whether this store has its synchronous side (a synchronous client), for WSGI."""
        return self._clients.sync is not None

    @property
    def healthy(self) -> bool:
        """Whether a check would be answered now (no I/O).

        With a mirror: it is synchronised and has heard from Redis within
        ``failure_timeout``. Without one: the last call to Redis succeeded.
        """
        if self._closed:
            return False
        if self._mirror is not None:
            return self._mirror.answerable()
        return bool(self._last_ok)

    def health_report(self) -> dict[str, Any]:
        """The store's state for a health endpoint, without I/O (see ``health``)."""
        mirror = self._mirror
        report: dict[str, Any] = {
            "store": self.name,
            "namespace": self._layout.namespace,
            "mode": "direct" if mirror is None else "mirror",
            "healthy": self.healthy,
            "maxmemory_policy": self._eviction_policy,
        }
        if mirror is not None:
            staleness = mirror.staleness()
            report.update(
                state=mirror.state,
                entries=len(mirror.table),
                staleness_seconds=None if staleness is None else round(staleness, 3),
                resyncs=mirror.resyncs,
                error=mirror.error,
            )
        else:
            report["state"] = "closed" if self._closed else "direct"
        return report

    async def health(self) -> dict[str, Any]:
        """The store's state, for a readiness or health endpoint.

        With a mirror this starts it if needed (without waiting) and does no I/O; without
        one it pings Redis. The ``"healthy"`` member is what a load balancer should act on.
        """
        if self._sync_only():
            return await anyio.to_thread.run_sync(self.health_sync)
        if self._mirror is not None:
            if not self._closed:
                self._start_task()
        else:
            with contextlib.suppress(RevocationStoreError):
                client = self._async_client()
                with self._recording("ping"):
                    await self._again(client.ping)
        return self.health_report()

    def health_sync(self) -> dict[str, Any]:
        """As ``health``, for the synchronous side (the mirror runs in a thread)."""
        if self._mirror is not None:
            if not self._closed:
                self._start_thread()
        else:
            with contextlib.suppress(RevocationStoreError):
                client = self._sync_client()
                with self._recording("ping"):
                    self._again_sync(client.ping)
        return self.health_report()

    def _listening_mirrors(self) -> int | None:
        """How many mirrors (API processes) are subscribed to this namespace's announcements
        (``PUBSUB NUMSUB``), for the admin CLI; ``None`` when Redis would not say."""
        channel = self._layout.channel
        try:
            client = self._sync_client()
            with _failures("pubsub numsub"):
                [(_, count)] = self._again_sync(lambda: client.pubsub_numsub(channel))
            return int(count)
        except (RevocationStoreError, ValueError, TypeError):  # denied by an ACL, odd reply
            return None

    def _note_policy(self, info: Any) -> None:
        policy = info.get("maxmemory_policy") if isinstance(info, dict) else None
        self._eviction_policy = None if policy is None else str(policy)
        if self._eviction_policy not in (None, "noeviction"):
            _log.warning(
                "bearerguard: Redis evicts keys (maxmemory-policy %s): under memory pressure "
                "it may forget revocations; use noeviction",
                self._eviction_policy,
            )

    def _again_sync(self, call: Callable[[], _T]) -> _T:
        """``call()`` (retried once, as ``again_sync`` says), ended within one socket timeout
        in all: redis-py gives each wait its own (a free connection, a new connection's
        handshake, a script loaded again, the retry), and a request waited several."""
        with within(time.monotonic() + self._timeout):
            return again_sync(call, self._timeout)

    async def _again(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """As ``_again_sync``, awaited: cancelled once the socket timeout has passed."""
        return await again_within(call, self._timeout, time.monotonic() + self._timeout)

    @contextlib.contextmanager
    def _recording(self, action: str) -> Iterator[None]:
        try:
            with _failures(action):
                yield
        except RevocationStoreError:
            self._last_ok = False
            raise
        self._last_ok = True

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - public API
        """Start the mirror in this event loop and wait for its first load (or ping Redis).

        Call it at application start-up (a lifespan handler) so the first requests do not
        wait; without it the first check starts the mirror (and waits at most
        ``failure_timeout`` for it). Loading takes about a second per 100,000 entries.

        Args:
            timeout: how long to wait for the mirror, through reconnection attempts.

        Raises:
            RevocationStoreError: not ready within ``timeout`` (the mirror keeps trying).
        """
        if self._sync_only():
            await anyio.to_thread.run_sync(self.start_sync, timeout)
            return
        client = self._async_client()
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            self._note_policy(await client.info("memory"))
        mirror = self._mirror
        if mirror is None:
            with self._recording("ping"):
                await self._again(client.ping)
            return
        self._start_task()
        if not await self._wait(mirror.live, timeout):
            raise RevocationStoreError(f"revocation mirror not ready: {mirror.error or 'timeout'}")

    def start_sync(self, timeout: float = 10.0) -> None:
        """Start the mirror in a thread and wait for its first load; as ``start``."""
        client = self._sync_client()
        with contextlib.suppress(RedisError, OSError):
            self._note_policy(client.info("memory"))
        mirror = self._mirror
        if mirror is None:
            with self._recording("ping"):
                self._again_sync(client.ping)
            return
        self._start_thread()
        if not mirror.live.wait(timeout):
            raise RevocationStoreError(f"revocation mirror not ready: {mirror.error or 'timeout'}")

    async def aclose(self) -> None:
        """Stop the mirror and close the connections this store opened.

        Those of an event loop stopped but not closed (``run_until_complete``) are closed
        by that loop as it shuts down (``shutdown_asyncgens``, as ``asyncio.run`` does).
        """
        task, loop = self._shutdown()
        if task is not None and not task.done():
            if loop is asyncio.get_running_loop():
                task.cancel()
                # Bounded: the mirror ends at its next step even if the cancellation is lost.
                await asyncio.wait({task}, timeout=self._timeout + 1.0)
            elif loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, self._timeout + 1.0)
        await self._clients.aclose()

    def close(self) -> None:
        """Stop the mirror and close the synchronous connections this store opened.

        An asynchronous client is closed by ``aclose()``, from its event loop.
        """
        task, loop = self._shutdown()
        if task is not None and loop is not None and not task.done() and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(self._timeout + 1.0)
        self._clients.close()

    def _shutdown(self) -> tuple[asyncio.Task[None] | None, asyncio.AbstractEventLoop | None]:
        with self._lock:
            self._closed = True
            self._stop.set()
            if self._mirror is not None:
                self._mirror.close()
            task, loop = self._task, self._task_loop
            self._task = self._task_loop = None
        return task, loop

    async def __aenter__(self) -> RedisRevocationStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> RedisRevocationStore:
        self.start_sync()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- clients --------------------------------------------------------------------------

    def _sync_client(self) -> redis.Redis:
        if self._closed:
            raise RevocationStoreError("the revocation store is closed")
        client = self._clients.sync
        if client is None:
            raise RevocationStoreError("this store has no synchronous client: give url= or client=")
        return client

    def _sync_only(self) -> bool:
        """Built with only ``client=`` (as for WSGI): the asynchronous side goes through it,
        in a worker thread (the mirror in its daemon thread), rather than fail every call."""
        clients = self._clients
        return clients.asynchronous is None and not clients.owns_async and clients.sync is not None

    def _async_client(self) -> aredis.Redis:
        if self._closed:
            raise RevocationStoreError("the revocation store is closed")
        # Each loop's own client when owned (bearerguard._redis.RedisClients).
        client = self._clients.for_loop(asyncio.get_running_loop())
        if client is None:
            raise RevocationStoreError(
                "this store has no asynchronous client: give url= or async_client="
            )
        return client

    # -- the mirror's drivers -------------------------------------------------------------

    def _runner_alive(self) -> bool:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return True
        task, loop = self._task, self._task_loop
        return (
            task is not None
            and loop is not None
            and not task.done()
            and loop.is_running()
            and not loop.is_closed()
        )

    def _start_runner(self) -> None:
        """Start the mirror for the asynchronous side: a task, or a thread when sync-only."""
        if self._sync_only():
            self._start_thread()
        else:
            self._start_task()

    def _start_task(self) -> None:
        """Run the mirror as a task of the running loop, unless a runner is already alive."""
        mirror = self._mirror
        assert mirror is not None  # noqa: S101 - only called in mirror mode
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise RevocationStoreError("the revocation store is closed")
            if self._runner_alive():
                return
            self._async_client()  # fails now, in the caller, when there is no async client
            self._retire_task(mirror)
            self._run += 1
            self._task = loop.create_task(
                self._run_async(mirror, self._run), name="bearerguard-mirror"
            )
            self._task_loop = loop

    def _start_thread(self) -> None:
        """Run the mirror in a daemon thread, unless a runner is already alive."""
        mirror = self._mirror
        assert mirror is not None  # noqa: S101 - only called in mirror mode
        with self._lock:
            if self._closed:
                raise RevocationStoreError("the revocation store is closed")
            if self._runner_alive():
                return
            self._sync_client()
            self._retire_task(mirror)
            self._run += 1
            self._thread = threading.Thread(
                target=self._run_thread,
                args=(mirror, self._run),
                name="bearerguard-mirror",
                daemon=True,
            )
            self._thread.start()

    def _retire_task(self, mirror: Mirror) -> None:
        """Let go of a registered task that is not running, before another runner starts.

        Called with the lock held, once ``_runner_alive`` said no. The task may be over
        (cancelled, or left in a closed loop, where it ended without a word) or only paused:
        its loop stopped but not closed (between two ``run_until_complete`` calls), where it
        would go on listening once the loop ran again. Its number is no longer current, so
        it then stands down at its next step (and is cancelled, for a sooner end); either
        way the mirror it fed is stopped, and the new runner's first load is waited for.
        """
        task, loop = self._task, self._task_loop
        if task is None:
            return
        mirror.stopped()
        self._task = self._task_loop = None
        if loop is not None and not task.done() and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile by its thread
                loop.call_soon_threadsafe(task.cancel)

    def _current(self, run: int) -> bool:
        """Whether the runner started as ``run`` is still the store's (not closed or replaced)."""
        return self._run == run and not self._closed

    @staticmethod
    async def _wait(event: threading.Event, timeout: float) -> bool:  # noqa: ASYNC109 - polled
        # Polled: the event may be set by a thread; this happens only while starting.
        deadline = time.monotonic() + timeout
        while not event.is_set():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def _backoff(self, attempt: int) -> float:
        cap = min(2.0, self._failure_timeout)
        return min(cap, 0.05 * 2.0**attempt) * (0.5 + random.random() / 2)  # noqa: S311 - jitter

    def _lost(self, mirror: Mirror, exc: BaseException, attempt: int, run: int) -> int:
        if not self._current(run):
            return attempt  # the mirror is another runner's now: its state is not ours to fail
        was_live = mirror.lost(exc)
        if was_live:
            # A new outage: its warning here, the first failed reconnection in full after it.
            self._reconnects.reset()
            _log.warning(
                "bearerguard: revocation mirror lost Redis (%s); resynchronising", mirror.error
            )
            return 0
        # Every failed reconnection (up to one per 2 s per worker while Redis is down):
        # counted, and a line per minute at most.
        self._reconnects.failed(mirror.error or type(exc).__name__)
        return attempt + 1

    def _run_thread(self, mirror: Mirror, run: int) -> None:
        client = self._clients.sync
        assert client is not None  # noqa: S101 - checked by _start_thread
        attempt = 0
        while self._current(run):
            if self._eviction_policy is None:
                # Started lazily (no start_sync()): read the policy here, for the warning
                # and health().
                with contextlib.suppress(RedisError, OSError):
                    self._note_policy(client.info("memory"))
            pubsub = client.pubsub()  # type: ignore[no-untyped-call]
            try:
                flow = session(mirror, self._layout, clock=self._clock)
                reply: Any = None
                while self._current(run):
                    reply = self._perform_sync(client, pubsub, flow.send(reply))
            except Exception as exc:  # noqa: BLE001 - any failure ends the session: resync
                attempt = self._lost(mirror, exc, attempt, run)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
            self._stop.wait(self._backoff(attempt))

    @staticmethod
    def _perform_sync(client: redis.Redis, pubsub: Any, request: Request) -> Any:
        if isinstance(request, Receive):
            return _message(pubsub, pubsub.parse_response(block=False, timeout=request.timeout))
        if isinstance(request, Ping):
            return pubsub.ping(request.payload)
        if isinstance(request, Subscribe):
            return pubsub.subscribe(request.channel)
        cursor, keys = client.scan(request.cursor, match=request.match, count=request.count)
        return cursor, list(zip(keys, client.mget(keys) if keys else [], strict=True))

    async def _run_async(self, mirror: Mirror, run: int) -> None:
        task = asyncio.current_task()
        try:
            await self._sessions_async(mirror, run)
        finally:
            self._task_ended(mirror, task)

    def _task_ended(self, mirror: Mirror, task: asyncio.Task[Any] | None) -> None:
        """The mirror's ``task`` ended without the store closing: cancelled, mostly, as its
        event loop shut down (``asyncio.run``, asgiref's loop per call under WSGI).

        Nothing feeds the mirror any longer: it is stopped, and the next check starts it
        again and waits for it, as the first ones do. Left live, the next loops answered
        from a table nobody fed (revocations made meanwhile unseen, up to
        ``failure_timeout``), then refused every check at once (503) while a new task
        loaded, one such loop after another when each ended first.
        """
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if task is None or task.get_loop() is not running:
            # Finalized by the garbage collector, its loop closed under it: _start_task
            # stops the mirror when it replaces the task.
            return
        with self._lock:
            if self._task is not task:  # closed, or replaced meanwhile
                return
            mirror.stopped()  # first: no other runner starts while this one is registered
            self._task = self._task_loop = None

    async def _sessions_async(self, mirror: Mirror, run: int) -> None:
        client = self._async_client()
        attempt = 0
        while self._current(run):
            if self._eviction_policy is None:
                # Started lazily (no start()): read the policy here, for the warning and
                # health().
                with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                    self._note_policy(await client.info("memory"))
            pubsub = client.pubsub()
            try:
                flow = session(mirror, self._layout, clock=self._clock)
                reply: Any = None
                # Checked at every step, not only left to cancellation: a client library that
                # swallows a CancelledError (seen with redis-py's reads under uvloop) would
                # otherwise keep the mirror running after aclose(), or once replaced. Before
                # each step: a task resuming in a paused loop has been replaced meanwhile.
                while self._current(run):
                    reply = await self._perform(client, pubsub, flow.send(reply))
            except Exception as exc:  # noqa: BLE001 - any failure ends the session: resync
                attempt = self._lost(mirror, exc, attempt, run)
                # The pool's idle connections may be dead too (Redis restarted): redis.asyncio
                # 8 hands them out unchecked under RESP3, and the next load would fail on one.
                with contextlib.suppress(Exception):
                    await client.connection_pool.disconnect(inuse_connections=False)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._backoff(attempt))

    @staticmethod
    async def _perform(client: aredis.Redis, pubsub: Any, request: Request) -> Any:
        if isinstance(request, Receive):
            if request.timeout <= 0:
                await _polled()
            response = await pubsub.parse_response(block=False, timeout=request.timeout)
            if isinstance(response, bytes | str) or not response:
                return _message(pubsub, response)
            return await pubsub.handle_message(response)
        if isinstance(request, Ping):
            return await pubsub.ping(request.payload)
        if isinstance(request, Subscribe):
            return await pubsub.subscribe(request.channel)
        assert isinstance(request, Scan)  # noqa: S101 - the last kind of request
        cursor, keys = await client.scan(request.cursor, match=request.match, count=request.count)
        return cursor, list(zip(keys, await client.mget(keys) if keys else [], strict=True))
