"""The sans-I/O core of ``RedisRevocationStore``: key layout, entries, the in-process table
and the mirror session, written once as a flow of I/O requests.

Nothing here imports redis, opens a socket or sleeps. ``session`` is a generator that yields
``Subscribe``, ``Receive``, ``Scan`` and ``Ping`` requests and is sent their replies; the
store drives it with redis-py's synchronous client in a thread, or with ``redis.asyncio`` in
a task (httpx's ``auth_flow`` pattern), so both sides share every rule about ordering and
trust.

Layout in Redis, one string key per entry, each expiring with what it covers::

    {namespace}:t:{issuer}:{jti}        a revoked token
    {namespace}:s:{issuer}:{sub}        a subject cut-off
    {namespace}:c:{issuer}:{client_id}  a client cut-off
    {namespace}:n:{issuer}:{sid}        a session cut-off
    {namespace}:u:{issuer}:{sub}        a cut-off of the subject's tokens without sid
    value: {"u": lapse_ms, "c": cutoff_ms, "r": reason, "a": updated_ms}

``{issuer}`` is ``*`` for "any issuer"; in the parts ``%``, ``:`` and ``*`` are
percent-encoded, so a key splits unambiguously and namespaces cannot read each other's keys
(and lone surrogates, as their ``surrogatepass`` UTF-8 bytes: a key must be UTF-8).
Every change is published on ``{namespace}:changes`` as ``[key, value]`` by the same Lua
script that writes it, so the write and its announcement are one atomic step.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from bearerguard.errors import RevocationStoreError
from bearerguard.revocation._table import Entry, Kind, RevocationTable
from bearerguard.token import AccessToken

_log = logging.getLogger("bearerguard")

__all__ = [
    "REVOKE_SCRIPT",
    "Entry",
    "Layout",
    "Mirror",
    "Ping",
    "Receive",
    "RevocationTable",
    "Scan",
    "Subscribe",
    "session",
]

KINDS: tuple[Kind, ...] = ("t", "s", "c", "n", "u")

# KEYS: the entries. ARGV: the channel, then four per entry: lapse_ms, cutoff_ms ("" for a
# token), reason, and "1" when the cut-off is "now" (no instant was given).
# "Now" is Redis's own clock (TIME), never the caller's: a revoking process whose clock is
# wrong neither drops the entry nor shortens its expiry. A cut-off at "now" is at least
# Redis's now (the lapse moves with it): a revoker whose clock is behind would otherwise
# spare the tokens issued in the last moments before it. Calling TIME before a write needs
# effect replication, the default since Redis 5. Merges with an existing entry (the later
# lapse, the later cut-off: a revocation is never weakened), writes it to expire at its
# lapse by that clock, and publishes it. Every entry is read before any is written: a
# script is not rolled back, so a failure (a key of another type) must come before the
# first write, and the entries of one revocation (a session and its user's tokens without
# sid) are written together or not at all. Returns each stored value, or false for one
# that had already lapsed by Redis's clock (nothing written, nothing published).
REVOKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local writes = {}
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 4
  local u = tonumber(ARGV[a + 1])
  local c = tonumber(ARGV[a + 2])
  local r = ARGV[a + 3]
  if c and ARGV[a + 4] == '1' and c < now then
    u = u + (now - c)
    c = now
  end
  local old = redis.call('GET', KEYS[i])
  if old then
    local ok, e = pcall(cjson.decode, old)
    if ok and type(e) == 'table' then
      local ou = tonumber(e.u)
      if ou and ou > u then u = ou end
      local oc = tonumber(e.c)
      if c and oc and oc > c then c = oc end
      if r == '' and type(e.r) == 'string' then r = e.r end
    end
  end
  out[i] = false
  if u > now then
    local entry = {u = u, a = now}
    if c then entry.c = c end
    if r ~= '' then entry.r = r end
    out[i] = cjson.encode(entry)
    writes[#writes + 1] = {KEYS[i], out[i], u - now}
  end
end
for _, w in ipairs(writes) do
  redis.call('SET', w[1], w[2], 'PX', w[3])
  redis.call('PUBLISH', ARGV[1], cjson.encode({w[1], w[2]}))
end
return out
"""


# A lone surrogate (a JSON claim's "\ud800") has no UTF-8 encoding: redis-py refused every
# call naming it, so such a token could be neither revoked nor checked without a mirror.
# Percent-encoded as its surrogatepass bytes, which no other text encodes to ("%" is %25).
_SURROGATE = re.compile("[\ud800-\udfff]")
_ENCODED_SURROGATE = re.compile("%ED%[AB][0-9A-F]%[89AB][0-9A-F]")


def _percent(found: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in found[0].encode("utf-8", "surrogatepass"))


def _surrogate(found: re.Match[str]) -> str:
    return bytes.fromhex(found[0].replace("%", "")).decode("utf-8", "surrogatepass")


def _encode_part(value: str | None) -> str:
    if value is None:
        return "*"
    part = value.replace("%", "%25").replace(":", "%3A").replace("*", "%2A")
    return part if part.isascii() else _SURROGATE.sub(_percent, part)


def _decode_part(part: str) -> str | None:
    if part == "*":
        return None
    text = _ENCODED_SURROGATE.sub(_surrogate, part) if "%ED" in part else part
    value = text.replace("%2A", "*").replace("%3A", ":").replace("%25", "%")
    # Only what _encode_part produces is ours: anything else is a foreign key.
    if _encode_part(value) != part:
        raise ValueError("not an encoded key part")
    return value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a namespace's entries and announcements live in Redis."""

    namespace: str

    @property
    def channel(self) -> str:
        return f"{self.namespace}:changes"

    @property
    def pattern(self) -> str:
        """A SCAN pattern for this namespace's entries (narrows; ``parse_key`` decides)."""
        return f"{_glob_escape(self.namespace)}:[tscnu]:*:*"

    def key(self, kind: Kind, issuer: str | None, name: str) -> str:
        return f"{self.namespace}:{kind}:{_encode_part(issuer)}:{_encode_part(name)}"

    def parse_key(self, key: bytes | str) -> tuple[Kind, str | None, str] | None:
        """``(kind, issuer, name)``, or ``None`` when the key is not one of ours."""
        try:
            text = _text(key)
        except UnicodeDecodeError:
            return None  # every key written here is UTF-8: another application's
        prefix = self.namespace + ":"
        if not text.startswith(prefix):
            return None
        parts = text[len(prefix) :].split(":")
        if len(parts) != 3 or parts[0] not in KINDS or parts[2] == "*":
            return None
        try:
            issuer = _decode_part(parts[1])
            name = _decode_part(parts[2])
        except ValueError:
            return None
        assert name is not None  # noqa: S101 - "*" was excluded above
        return parts[0], issuer, name

    def entry(self, key: bytes | str, value: bytes | str) -> Entry | None:
        """The entry stored under ``key``, or ``None`` for a key of another namespace.

        Raises:
            ValueError: one of our keys holds a value we cannot read.
        """
        parsed = self.parse_key(key)
        if parsed is None:
            return None
        kind, issuer, name = parsed
        try:
            document = json.loads(value)
            lapse = document["u"]
            cutoff = document.get("c")
            reason = document.get("r")
            updated = document.get("a", 0)
        except (KeyError, TypeError, AttributeError, ValueError):
            lapse = None
        if not isinstance(lapse, int | float) or (kind != "t") != isinstance(cutoff, int | float):
            raise ValueError(f"unreadable revocation entry under {_text(key)[:100]!r}")
        return Entry(
            kind=kind,
            issuer=issuer,
            name=name,
            until=lapse / 1000,
            cutoff=None if cutoff is None else cutoff / 1000,
            reason=reason if isinstance(reason, str) else None,
            updated_at=updated / 1000 if isinstance(updated, int | float) else 0.0,
        )

    def message(self, data: bytes | str) -> Entry | None:
        """The entry announced by a message on ``channel``.

        Raises:
            ValueError: a message we cannot read (the mirror then resynchronises).
        """
        try:
            key, value = json.loads(data)
        except (TypeError, ValueError) as exc:
            raise ValueError("unreadable revocation announcement") from exc
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("unreadable revocation announcement")  # noqa: TRY004 - bad data
        return self.entry(key, value)


def to_ms(seconds: float) -> int:
    """Epoch seconds as whole milliseconds, rounded up: a revocation errs on the long side."""
    return math.ceil(round(seconds * 1000, 3))


MirrorState = Literal["stopped", "connecting", "syncing", "live", "failed", "closed"]


class Mirror:
    """The mirror's state as the hot path sees it: a table and whether it may be trusted.

    The table is trusted only while ``state`` is ``"live"`` and Redis confirmed, less than
    ``failure_timeout`` ago, that every announcement published before it was received: a
    ping's answer arrives after every message published before the ping, on the same
    connection. A check that cannot be answered raises ``RevocationStoreError``.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        failure_timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = RevocationTable()
        self.state: MirrorState = "stopped"
        self.error: str | None = None
        self.max_entries = max_entries
        self.failure_timeout = failure_timeout
        self.fresh_at = -math.inf  # monotonic instant up to which the table is complete
        self.resyncs = 0
        self.ever_live = False
        self.down_since: float | None = None  # monotonic instant Redis was first missed
        self.live = threading.Event()  # set while live
        self.settled = threading.Event()  # set once a start has succeeded or failed
        self._monotonic = monotonic

    def answerable(self) -> bool:
        return self.state == "live" and self._monotonic() - self.fresh_at <= self.failure_timeout

    def check(self, token: AccessToken, now: float) -> bool:
        """Whether ``token`` is revoked, from the table, if it may be trusted.

        Raises:
            RevocationStoreError: the mirror is not synchronised with Redis, or has not heard
                from it for longer than ``failure_timeout``.
        """
        # The table is read before the state, and writers change the state before swapping
        # the table (lost, close): a check never answers from a table emptied by a loss.
        table = self.table
        state = self.state
        if state != "live":
            raise RevocationStoreError(f"revocation mirror is {state}: {self.error or 'starting'}")
        age = self._monotonic() - self.fresh_at
        if age > self.failure_timeout:
            raise RevocationStoreError(f"revocation mirror has not heard from Redis for {age:.1f}s")
        return table.revoked(token, now)

    def staleness(self) -> float | None:
        if self.fresh_at == -math.inf:
            return None
        return max(0.0, self._monotonic() - self.fresh_at)

    def apply(self, entry: Entry, now: float) -> None:
        """Add an entry to the current table, keeping it within ``max_entries``."""
        table = self.table
        table.apply(entry)
        if len(table) > self.max_entries:
            table.prune(now)
            if len(table) > self.max_entries:
                raise RevocationStoreError(
                    f"more than {self.max_entries} live revocations: raise max_entries"
                )

    def connecting(self) -> None:
        if self.state != "closed":
            self.settled.clear()
            self.state = "connecting"

    def syncing(self) -> None:
        if self.state != "closed":
            self.state = "syncing"

    def install(self, table: RevocationTable) -> None:
        """A freshly loaded table: trusted once the next ping is answered."""
        if self.state != "closed":
            self.table = table
            self.resyncs += 1

    def confirm(self, sent_at: float) -> None:
        """A ping sent at ``sent_at`` was answered: the table is complete up to then."""
        self.fresh_at = max(self.fresh_at, sent_at)
        if self.state == "syncing":
            self.state = "live"
            self.error = None
            again = self.ever_live
            self.ever_live = True
            self.live.set()
            self.settled.set()
            if self.down_since is not None:
                # The end of the outage whose start was logged (a lost session, or a start
                # that failed): checks are answered again.
                _log.warning(
                    "bearerguard: revocation mirror live %safter %.1fs without Redis (%d entries)",
                    "again " if again else "",
                    self._monotonic() - self.down_since,
                    len(self.table),
                )
                self.down_since = None

    def lost(self, error: BaseException) -> bool:
        """The session ended; returns whether it had been live."""
        if self.state == "closed":
            return False
        was_live = self.state == "live"
        if self.down_since is None:
            # An outage begins: a live mirror lost Redis, or its start failed (a worker that
            # stays up failing closed, as docs/deployment.md shows, must see the 503s end).
            self.down_since = self._monotonic()
        self.state = "failed"
        self.live.clear()
        self.error = f"{type(error).__name__}: {error}"[:300]
        self.table = RevocationTable()  # untrusted: free it, a resync loads a new one
        self.settled.set()
        return was_live

    def forked(self) -> None:
        """In a child process after ``fork()``: nothing inherited may be trusted.

        The runner did not survive the fork (a task of a loop the child runs on is no longer
        current there, and stands down), so announcements published from now on would
        never reach this copy of the table; it starts over as new (its events and table are
        new too: a lock held by a parent's thread at the fork is never released here).
        """
        self.table = RevocationTable()
        self.live = threading.Event()
        self.settled = threading.Event()
        self.fresh_at = -math.inf
        self.ever_live = False
        self.down_since = None
        self.error = None
        if self.state == "closed":
            self.settled.set()
        else:
            self.state = "stopped"

    def stopped(self) -> None:
        """Its runner ended without a failure of Redis (its event loop ended): nothing it
        held may be trusted, and the next start is waited for, as the first one is."""
        if self.state == "closed":
            return
        self.state = "stopped"  # before the table, as in ``lost``
        self.live.clear()
        self.settled.clear()
        self.fresh_at = -math.inf
        self.ever_live = False
        self.down_since = None
        self.error = None
        self.table = RevocationTable()

    def close(self) -> None:
        self.state = "closed"
        self.error = "the store was closed"
        self.live.clear()
        self.settled.set()
        self.table = RevocationTable()


# -- the session flow ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe the session's pub/sub connection to ``channel``. Reply: ``None``."""

    channel: str


@dataclass(frozen=True, slots=True)
class Receive:
    """Read one pub/sub message, waiting at most ``timeout``. Reply: redis-py's dict or None."""

    timeout: float


@dataclass(frozen=True, slots=True)
class Scan:
    """One SCAN step, then MGET of the keys found. Reply: ``(cursor, [(key, value)])``."""

    cursor: int
    match: str
    count: int


@dataclass(frozen=True, slots=True)
class Ping:
    """PING on the pub/sub connection; the answer comes back as a ``pong`` message."""

    payload: str


Request = Subscribe | Receive | Scan | Ping
Flow = Generator[Request, Any, NoReturn]

SCAN_COUNT = 1000
POLL = 0.05  # how long a Receive waits: bounds how soon a stopping thread notices
PRUNE_EVERY = 30.0
_serial = iter(range(1, 1 << 62))


def _load(mirror: Mirror, layout: Layout, now: float) -> Generator[Request, Any, RevocationTable]:
    """Every live entry of the namespace, SCAN step by SCAN step."""
    table = RevocationTable()
    cursor = 0
    while True:
        cursor, items = yield Scan(cursor, layout.pattern, SCAN_COUNT)
        for key, value in items:
            if value is None:
                continue  # expired between SCAN and MGET
            entry = layout.entry(key, value)
            if entry is not None and now < entry.until:
                table.apply(entry)
        if len(table) > mirror.max_entries:
            raise RevocationStoreError(
                f"more than {mirror.max_entries} live revocations: raise max_entries"
            )
        if not cursor:
            return table


def session(
    mirror: Mirror,
    layout: Layout,
    *,
    clock: Callable[[], float],
    monotonic: Callable[[], float] = time.monotonic,
) -> Flow:
    """One connection's life: subscribe, load, then follow; raises when it must end.

    The order is what makes the mirror complete. Subscribing first, and waiting for Redis to
    confirm it, means every revocation written after that instant will be announced to us;
    the SCAN that follows returns every key that exists for its whole duration, so every
    revocation written before the subscription is loaded (SCAN never misses a key present
    throughout). Announcements received during the load wait in the connection and are
    applied after it; merging is idempotent and commutative, so order does not matter. The
    mirror is trusted only when a ping sent after the load is answered: by then every
    announcement published before it has been applied.

    Every ``failure_timeout / 4`` a ping goes out; no answer within ``failure_timeout``, with
    nothing left to read, ends the session (a connection that stalls without closing). A
    second subscription confirmation means the client reconnected on its own, and messages
    may have been lost in between: that also ends the session, and the driver resynchronises
    from scratch.
    """
    heartbeat = mirror.failure_timeout / 4
    mirror.connecting()
    yield Subscribe(layout.channel)
    deadline = monotonic() + mirror.failure_timeout
    while True:
        message = yield Receive(POLL)
        if message is not None and message.get("type") == "subscribe":
            break
        if monotonic() > deadline:
            raise TimeoutError("Redis did not confirm the subscription")

    mirror.syncing()
    mirror.install((yield from _load(mirror, layout, clock())))

    pending: tuple[str, float] | None = None
    last_ping = -math.inf
    last_prune = monotonic()
    while True:
        instant = monotonic()
        if pending is None and instant - last_ping >= heartbeat:
            payload = f"bearerguard-{next(_serial)}"
            yield Ping(payload)
            pending = (payload, instant)
            last_ping = instant
        if instant - last_prune > PRUNE_EVERY:
            mirror.table.prune(clock())
            last_prune = instant
        message = yield Receive(POLL)
        overdue = pending is not None and monotonic() - pending[1] > mirror.failure_timeout
        if message is None and overdue:
            # Only once the connection has nothing more to give: after this process stalled
            # (a blocked event loop) the answer may be there, unread, and the wait above may
            # have timed out before reading it.
            message = yield Receive(0.0)
            if message is None:
                raise TimeoutError(f"Redis did not answer a ping within {mirror.failure_timeout}s")
        if message is None:
            continue
        kind = message.get("type")
        data = message.get("data")
        if kind == "message":
            entry = layout.message(data)
            if entry is not None:
                mirror.apply(entry, clock())
        elif kind == "pong":
            if pending is not None and _text(data) == pending[0]:
                mirror.confirm(pending[1])
                pending = None
        elif kind in ("subscribe", "unsubscribe"):
            raise ConnectionError("the subscription was renewed or dropped: resynchronising")
