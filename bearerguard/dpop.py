"""DPoP: sender-constrained access tokens (RFC 9449).

A DPoP-bound token carries ``cnf.jkt``, the thumbprint of a key only its client holds; each
request carries a fresh proof signed by that key (the ``DPoP`` header), bound to the
request's method and URL and to the token. A stolen token is of no use without the key.

Give ``BearerGuard(dpop=DPoPPolicy(...))``; both middlewares then accept
``Authorization: DPoP <token>`` with its proof, and answer with DPoP challenges
(RFC 9449 §7.1). See ``docs/dpop.md``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import hmac
import math
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, unquote_to_bytes, urlsplit

import anyio.to_thread

from bearerguard._core.dpop import b64url, normalize_htu
from bearerguard._core.keys import ASYMMETRIC_ALGORITHMS
from bearerguard._core.times import check_count, check_seconds
from bearerguard._fork import reset_after_fork
from bearerguard.errors import ConfigurationError, InvalidDPoPProofError, ReplayStoreError

__all__ = [
    "DEFAULT_DPOP_ALGORITHMS",
    "DPoPPolicy",
    "DPoPReplayStore",
    "DPoPRequest",
    "MemoryDPoPReplayStore",
    "NonceIssuer",
    "RedisDPoPReplayStore",
    "dpop_request",
]

# "Ed25519" is RFC 9864's fully-specified name for what "EdDSA" proofs mostly carry; "Ed448"
# (rare, and "EdDSA" still admits Ed448 keys) only when configured.
DEFAULT_DPOP_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "Ed25519", "EdDSA", "PS256", "RS256")
_NONCE_SKEW = 5.0
# The longest iat_window, leeway and nonce lifetime: a proof's jti is remembered for up to
# iat_window plus twice the leeway, and RFC 9449 §11.1 has proofs accepted for "a reasonably
# short time".
_MAX_WINDOW = 86_400.0
# The longest a replay store records a jti: far beyond what the guard asks (three days at
# most), far below what Redis's millisecond expiry or a float can hold.
_MAX_TTL = 365 * 86_400.0
# RFC 9110 §7.2: Host = uri-host [ ":" port ], uri-host an IP-literal or a reg-name
# (RFC 3986 §3.2.2). Nothing that would end the authority of the rebuilt URL ("/", "?",
# "#") or add userinfo ("@") may pass: the htu would then be checked against another path.
_HOST = re.compile(r"(?:\[[0-9A-Za-z:._~!$&'()*+,;=-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
_DEFAULT_PORTS = {"http": 80, "https": 443}  # RFC 9110 §4.2.1, §4.2.2


def _authority(host: str) -> tuple[str, int | None] | None:
    """A ``Host`` value as its lower-cased name and its port (``None`` if not given), or
    ``None`` if it is not one (RFC 9110 §7.2) or its port is out of range. Names compare
    case-insensitively (RFC 3986 §3.2.2); an empty port is no port (§6.2.3)."""
    if not host or not _HOST.fullmatch(host):
        return None
    name, colon, port = host.rpartition(":")
    if not colon or "]" in port:  # no port; or the colon was inside an IPv6 literal
        name, port = host, ""
    # No port has more than five digits (0-65535, RFC 6335 §6); past 4,300 int() would
    # raise (CPython's conversion limit), and the Host is the client's.
    if not name or len(port) > 5 or (port and int(port) > 65535):
        return None
    return name.lower(), int(port) if port else None


@runtime_checkable
class DPoPReplayStore(Protocol):
    """Remembers the ``jti`` of every proof seen, for RFC 9449 §11.1 replay detection.

    ``first_use`` records ``key`` (``<jkt>:<jti>``) for ``ttl`` seconds and returns ``True``
    unless it was already recorded (then the proof is a replay). It must be atomic.
    ``first_use_sync`` is the same for WSGI. A store may raise ``InvalidDPoPProofError`` to
    refuse one proof (a key over its share, 401); any other exception answers 503.
    """

    async def first_use(self, key: str, ttl: float) -> bool: ...

    def first_use_sync(self, key: str, ttl: float) -> bool: ...


class MemoryDPoPReplayStore:
    """An in-process replay store: bounded, entries expiring with the ``iat`` window.

    Good for one process; several instances need a shared store, or a replay may succeed
    once per instance.

    Keys are ``<jkt>:<jti>``, as the guard records them: once the store is half full, each
    proof key (its RFC 7638 thumbprint, the part before the first ``:``) may hold only
    ``max_per_key`` live entries. A client then holding its share gets its own proofs
    refused (401 ``invalid_dpop_proof``) until its older ones expire; the other clients keep
    working. Below half full no share applies: one busy client alone may fill half the
    store before its own proofs are refused (size ``max_entries`` at twice its rate times the
    window, or raise ``max_per_key`` for it).

    Args:
        max_entries: the bound. A proof's ``jti`` is never forgotten before it expires: when
            every entry is still live, a new proof raises ``ReplayStoreError`` (the guard
            answers 503), as a replay could not be ruled out later. Otherwise a client
            sending many proofs of its own could push out another's and replay it.
        max_per_key: the share of one proof key once the store is half full; by default a
            twentieth of ``max_entries`` (5 000 live proofs, about 16 a second over the
            default window). Filling the other half then takes ten distinct keys, each with
            its own valid token bound to it.
        clock: returns epoch seconds; injectable for tests.

    Raises:
        ConfigurationError: a bound below 1, or a share above the bound.
    """

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        max_per_key: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._share = _share(max_entries, max_per_key)
        self._clock = clock
        self._max = max_entries
        # The share applies from here on: below it, one busy client takes no room others need.
        self._pressure = max_entries // 2
        self._seen: dict[str, float] = {}
        # Live entries per proof key; a key leaves when its last entry expires.
        self._per_key: dict[str, int] = {}
        # (expiry, key), earliest first: each proof's ttl depends on its iat, so the order
        # of insertion is not the order of expiry.
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        reset_after_fork(self)

    def _forked(self) -> None:
        """In a child process after ``fork()`` (bearerguard._fork): a lock another thread of
        the parent held at the fork is never released here, and the first proof checked waited
        for it for the worker's whole life."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def first_use_sync(self, key: str, ttl: float) -> bool:
        """Record ``key`` for ``ttl`` seconds; ``False`` if it was already recorded.

        Raises:
            InvalidDPoPProofError: the store is half full and the proof key already holds
                ``max_per_key`` live entries.
            ReplayStoreError: ``max_entries`` live entries are held, or ``ttl`` is not a
                finite number of seconds up to a year.
        """
        ttl = _checked_ttl(ttl)
        now = self._clock()
        owner = key.partition(":")[0]
        with self._lock:
            seen, expiries, per_key = self._seen, self._expiries, self._per_key
            while expiries and expiries[0][0] <= now:
                expires, oldest = heapq.heappop(expiries)
                if seen.get(oldest) == expires:  # not recorded again since
                    del seen[oldest]
                    _forget(per_key, oldest.partition(":")[0])
            previous = seen.get(key)
            if previous is not None and previous > now:
                return False
            held = per_key.get(owner, 0)
            if held >= self._share and len(seen) >= self._pressure:
                # RFC 9449 §11.1: a jti that cannot be remembered cannot be accepted; only
                # this key's proofs are refused, never another client's.
                raise InvalidDPoPProofError(f"proof key holds {held} live proofs, its share")
            if len(seen) >= self._max:
                raise ReplayStoreError(f"replay store full: {self._max} live proofs")
            seen[key] = expires = now + ttl
            per_key[owner] = held + 1
            heapq.heappush(expiries, (expires, key))
            return True

    async def first_use(self, key: str, ttl: float) -> bool:
        """As ``first_use_sync`` (no I/O: safe on the event loop)."""
        return self.first_use_sync(key, ttl)


def _share(max_entries: int, max_per_key: int | None) -> int:
    """The share of one proof key: ``max_per_key``, by default a twentieth of the bound."""
    max_entries = check_count("max_entries", max_entries)
    if max_per_key is None:
        share = max(max_entries // 20, 1)
    else:
        share = check_count("max_per_key", max_per_key)
    if not 1 <= share <= max_entries:
        raise ConfigurationError("max_per_key must be between 1 and max_entries")
    return share


def _checked_ttl(ttl: float) -> float:
    """``ttl`` if a store can keep a ``jti`` that long; else ``ReplayStoreError`` (503).

    A NaN expiry compares false with every instant, so the ``jti`` would never count as
    seen (replays accepted); an infinite or huge one overflows Redis's millisecond expiry.
    """
    if not (math.isfinite(ttl) and ttl <= _MAX_TTL):
        raise ReplayStoreError(f"replay ttl out of range: {ttl!r} seconds")
    return ttl


def _forget(per_key: dict[str, int], owner: str) -> None:
    held = per_key[owner] - 1
    if held:
        per_key[owner] = held
    else:
        del per_key[owner]


# The memory store's rules, as one atomic step in Redis (RFC 9449 §11.1). KEYS: the proof
# (<namespace>:dpop:<jkt>:<jti>), its proof key's live proofs and the store's (sorted sets of
# the proofs' digests, scored by expiry). ARGV: ttl_ms, the digest of <jkt>:<jti>,
# max_per_key, the half-full mark, max_entries, the pruning batch. Returns {1, 0} when
# recorded, {0, 0} for a replay, {-1, held} for a key over its share, {-2, live} for a full
# store.
# Expiry follows Redis's clock (TIME; effect replication, the default since Redis 5), as the
# proof key's PX does; each sorted set expires with the last proof it counts. The SET is the
# first write: over maxmemory Redis refuses a script's first write that may grow memory, but
# lets all its later writes through (a script runs whole), so pruning (a write Redis never
# refuses) comes last, and the counts before it only read the live proofs (ZCOUNT). Pruning
# takes at most a batch of the oldest entries (the expired ones rank first: a set is ordered
# by score), so a burst of proofs expiring together never makes one call O(burst), blocking
# Redis past the client's socket_timeout. Each recorded proof adds one entry and prunes up to
# a batch, so a backlog drains, changing no count meanwhile, and a set still never holds more
# than max_entries entries (it grows only when nothing in it has expired).
_FIRST_USE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0} end
local held = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local live = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
if held >= tonumber(ARGV[3]) and live >= tonumber(ARGV[4]) then return {-1, held} end
if live >= tonumber(ARGV[5]) then return {-2, live} end
redis.call('SET', KEYS[1], '1', 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[2])
for i = 2, 3 do
  local expired = math.min(redis.call('ZCOUNT', KEYS[i], '-inf', now), tonumber(ARGV[6]))
  if expired > 0 then redis.call('ZREMRANGEBYRANK', KEYS[i], 0, expired - 1) end
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return {1, 0}
"""


# The most expired entries one recorded proof prunes from each sorted set.
_PRUNE_BATCH = 256


def _member(key: str) -> str:
    """A proof's entry in the sorted sets: 22 characters, whatever the client's ``jti``."""
    return b64url(hashlib.sha256(key.encode()).digest()[:16])


class RedisDPoPReplayStore:
    """A replay store shared through Redis by every instance of the API.

    One round trip per proof: a Lua script, atomic in Redis, so two instances receiving the
    same proof at once cannot both accept it, nor together let a key past its share. It
    records the proof (``SET key 1 PX ttl``) and counts it among its proof key's live proofs
    and the store's; every key expires with the proof's window.

    Bounded and shared as ``MemoryDPoPReplayStore`` is, across every instance: once the
    store holds half of ``max_entries`` live proofs, each proof key (its RFC 7638
    thumbprint) may hold only ``max_per_key``; a key over its share gets its own proofs
    refused (``InvalidDPoPProofError``, 401) and the other clients keep working
    (RFC 9449 §11.1). With ``max_entries`` live proofs, a new one raises
    ``ReplayStoreError`` (503): a live proof is never forgotten.

    Args:
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL, used for both sides.
        namespace: the prefix of every key (``<namespace>:dpop:<jkt>:<jti>``, and
            ``<namespace>:dpop-key:<jkt>`` and ``<namespace>:dpop-live`` for the counts).
        max_entries: the bound on live proofs, for every instance together (about 3 300
            proofs a second over the default window).
        max_per_key: the share of one proof key once the store is half full; by default a
            twentieth of ``max_entries``.
        client: an existing ``redis.Redis`` for the synchronous side, instead of ``url``;
            without ``async_client`` the asynchronous side uses it too, in a worker thread.
        async_client: an existing ``redis.asyncio.Redis`` for the asynchronous side.
        socket_timeout: seconds a command, or the wait for a pooled connection, may take.
        connect_timeout: seconds to establish a connection.
        max_connections: connections per side.

    Any Redis failure is raised as ``ReplayStoreError``: the guard answers 503 (a replay
    cannot be ruled out). Run Redis with ``maxmemory-policy noeviction``: any evicting policy
    may forget a live proof and then accept its replay (``volatile-ttl`` evicts these
    short-lived keys first). One Redis, not Redis Cluster (the script touches keys in several
    hash slots); a Redis ACL user needs the commands docs/dpop.md lists, not ``SET`` alone.

    Raises:
        ConfigurationError: a bound below 1, a share above the bound, or bad connection
            settings.
    """

    name = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "bearerguard",
        max_entries: int = 1_000_000,
        max_per_key: int | None = None,
        client: Any = None,
        async_client: Any = None,
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        max_connections: int = 50,
    ) -> None:
        try:
            import redis  # noqa: PLC0415 - an optional extra

            from bearerguard._redis import (  # noqa: PLC0415 - imports redis-py
                RedisClients,
                again,
                again_sync,
                check_namespace,
            )
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError(
                "RedisDPoPReplayStore needs redis-py: pip install 'bearerguard[redis]'"
            ) from exc
        if url is None and client is None and async_client is None:
            raise ConfigurationError("give a Redis URL or clients")
        check_namespace(namespace)
        self._share = _share(max_entries, max_per_key)
        self._max = max_entries
        self._prefix = f"{namespace}:dpop:"
        self._per_key_prefix = f"{namespace}:dpop-key:"
        self._live = f"{namespace}:dpop-live"
        self._sync_script: Any = None
        self._async_script: Any = None
        self._errors = (redis.RedisError, OSError, asyncio.TimeoutError)
        # A pooled connection Redis closed while idle (its ``timeout``, a restart) fails at
        # once: one more try, on a fresh connection. A script that ran before the connection
        # broke only makes the retry see a replay (401, never an accepted replay).
        self._again, self._again_sync = again, again_sync
        # Clients without retries, bounded waits (bearerguard._redis).
        self._clients = RedisClients(
            url,
            client,
            async_client,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            client_name="bearerguard-dpop",
        )
        self._timeout = self._clients.timeout

    @property
    def synchronous(self) -> bool:
        """Whether this store has its synchronous side (a synchronous client), for WSGI."""
        return self._clients.sync is not None

    def _call(self, key: str, ttl: float) -> tuple[list[str], list[str | int]]:
        """The script's keys and arguments for recording ``key`` for ``ttl`` seconds."""
        owner = key.partition(":")[0]
        ttl_ms = max(int(_checked_ttl(ttl) * 1000), 1)
        keys = [self._prefix + key, self._per_key_prefix + owner, self._live]
        return keys, [ttl_ms, _member(key), self._share, self._max // 2, self._max, _PRUNE_BATCH]

    def _outcome(self, reply: Any) -> bool:
        """``True`` when recorded, ``False`` for a replay; raises for a refusal."""
        try:
            code, count = (int(item) for item in reply)
        except (TypeError, ValueError) as exc:
            raise ReplayStoreError(f"redis replay script answered {reply!r:.100}") from exc
        if code == -1:
            # RFC 9449 §11.1: a jti that cannot be remembered cannot be accepted; only this
            # key's proofs are refused, never another client's.
            raise InvalidDPoPProofError(f"proof key holds {count} live proofs, its share")
        if code == -2:
            raise ReplayStoreError(f"replay store full: {count} live proofs")
        return code == 1

    def first_use_sync(self, key: str, ttl: float) -> bool:
        """Record ``key`` for ``ttl`` seconds; ``False`` if it was already recorded.

        Raises:
            InvalidDPoPProofError: the store is half full and the proof key already holds
                ``max_per_key`` live entries.
            ReplayStoreError: Redis failed, there is no synchronous client,
                ``max_entries`` live entries are held, or ``ttl`` is not a finite number of
                seconds up to a year.
        """
        client = self._clients.sync
        if client is None:
            raise ReplayStoreError("no synchronous Redis client: give url= or client=")
        keys, args = self._call(key, ttl)
        try:
            if self._sync_script is None:
                self._sync_script = client.register_script(_FIRST_USE_SCRIPT)
            script = self._sync_script
            reply = self._again_sync(lambda: script(keys=keys, args=args), self._timeout)
        except self._errors as exc:
            raise ReplayStoreError(
                f"redis replay script failed: {type(exc).__name__}: {exc}"
            ) from exc
        return self._outcome(reply)

    async def first_use(self, key: str, ttl: float) -> bool:
        """As ``first_use_sync``, on the event loop."""
        clients = self._clients
        if clients.asynchronous is None and not clients.owns_async and clients.sync is not None:
            # Built with only client= (as for WSGI): under ASGI, through it in a worker thread
            # rather than fail every DPoP request with 503.
            return await anyio.to_thread.run_sync(self.first_use_sync, key, ttl)
        client = self._async_client()
        keys, args = self._call(key, ttl)
        try:
            if self._async_script is None:
                self._async_script = client.register_script(_FIRST_USE_SCRIPT)
            script = self._async_script
            # This loop's client, not the one the script was registered with (another loop's).
            reply = await self._again(
                lambda: script(keys=keys, args=args, client=client), self._timeout
            )
        except self._errors as exc:
            raise ReplayStoreError(
                f"redis replay script failed: {type(exc).__name__}: {exc}"
            ) from exc
        return self._outcome(reply)

    async def health(self) -> dict[str, Any]:
        """Whether Redis answers now (a ``PING``), for a readiness endpoint: ``"healthy"``."""
        clients = self._clients
        if clients.asynchronous is None and not clients.owns_async and clients.sync is not None:
            return await anyio.to_thread.run_sync(self.health_sync)
        try:
            client = self._async_client()
            await self._again(client.ping, self._timeout)
        except (ReplayStoreError, *self._errors):
            return {"store": self.name, "healthy": False}
        return {"store": self.name, "healthy": True}

    def health_sync(self) -> dict[str, Any]:
        """As ``health``, blocking (for WSGI)."""
        client = self._clients.sync
        try:
            if client is None:
                raise ReplayStoreError("no synchronous Redis client")  # noqa: TRY301 - as a failure
            self._again_sync(client.ping, self._timeout)
        except (ReplayStoreError, *self._errors):
            return {"store": self.name, "healthy": False}
        return {"store": self.name, "healthy": True}

    def _async_client(self) -> Any:
        # Each loop's own client when owned (bearerguard._redis.RedisClients).
        client = self._clients.for_loop(asyncio.get_running_loop())
        if client is None:
            raise ReplayStoreError("no asynchronous Redis client: give url= or async_client=")
        return client

    async def aclose(self) -> None:
        """Close the connections this store opened (the asynchronous ones from their loop)."""
        await self._clients.aclose()

    def close(self) -> None:
        """Close the synchronous connections this store opened."""
        self._clients.close()


class NonceIssuer:
    """Issues and checks server nonces for DPoP proofs (RFC 9449 §9), statelessly.

    A nonce is its issue time with an HMAC over it: any instance sharing ``secret`` accepts
    it until ``lifetime`` seconds have passed, then asks for a fresh one with
    ``use_dpop_nonce``. Nonces limit how far ahead a stolen key holder can make proofs.

    Args:
        secret: at least 32 bytes, shared by every instance; random per process by default.
        lifetime: seconds a nonce stays acceptable; at least 5, at most a day. The issue
            time is kept to the second, so a nonce is acceptable for up to a second less.

    Raises:
        ConfigurationError: a secret that is not bytes or is shorter, or a lifetime that is
            not a number of seconds from 5 up to a day.
    """

    def __init__(
        self, *, secret: bytes | bytearray | memoryview | None = None, lifetime: float = 300.0
    ) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        elif not isinstance(secret, bytes | bytearray | memoryview):
            # The HMAC takes bytes only: a str (an environment variable) failed every request.
            raise ConfigurationError(f"the nonce secret must be bytes, not {type(secret).__name__}")
        if len(secret) < 32:
            raise ConfigurationError("the nonce secret must be at least 32 bytes")
        self._secret = bytes(secret)
        self.lifetime = check_seconds("lifetime", lifetime, positive=True)  # NaN fails too
        if self.lifetime > _MAX_WINDOW:
            # A nonce limits how long a proof made ahead stays usable (RFC 9449 §8, §11.1): a
            # huge lifetime kept every nonce fresh for good, silently.
            raise ConfigurationError(
                f"lifetime must be at most {_MAX_WINDOW:.0f} seconds (a day): {self.lifetime!r}"
            )
        if self.lifetime < _NONCE_SKEW:
            # The issue time is kept to the second (a nonce issued at x.9 with lifetime=0.5
            # was expired when issued), instances sharing the secret may be _NONCE_SKEW
            # apart, and a client needs a round trip to use a nonce (RFC 9449 §8, §9).
            raise ConfigurationError(
                f"lifetime must be at least {_NONCE_SKEW:.0f} seconds: {self.lifetime!r}"
            )

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.new(self._secret, b"dpop-nonce" + stamp, hashlib.sha256).digest()[:16]

    def issue(self, now: float) -> str:
        """A fresh nonce issued at ``now`` (epoch seconds)."""
        stamp = struct.pack(">Q", int(now))
        return b64url(stamp + self._mac(stamp))

    def is_valid(self, nonce: str, now: float) -> bool:
        """Whether ``nonce`` was issued by this secret and is still fresh at ``now``."""
        if len(nonce) != 32:  # 24 bytes, base64url
            return False
        try:
            raw = base64.urlsafe_b64decode(nonce + "==")
        except ValueError:
            return False
        stamp, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, self._mac(stamp)):
            return False
        issued = int(struct.unpack(">Q", stamp)[0])
        # A few seconds of skew between instances sharing the secret.
        return issued - _NONCE_SKEW <= now < issued + self.lifetime


@dataclass(frozen=True, slots=True)
class DPoPPolicy:
    """How a guard accepts DPoP-bound tokens (RFC 9449).

    Args:
        mode: ``"allowed"``: Bearer and DPoP are both accepted, but a DPoP-bound token (one
            with ``cnf.jkt``) presented as Bearer is refused (RFC 9449 §7.2). ``"required"``:
            only DPoP is accepted.
        algorithms: the proof algorithms accepted (asymmetric only; RFC 9449 §4.3 step 5),
            advertised in the challenge's ``algs``.
        iat_window: how many seconds old a proof may be; its ``jti`` is remembered that long.
            At most a day (RFC 9449 §11.1: a short window).
        leeway: how many seconds in the future a proof's ``iat`` may be (clock skew); at
            most a day.
        nonce: a ``NonceIssuer`` to require server nonces (RFC 9449 §9); off by default.
        replay: the ``jti`` store; a ``MemoryDPoPReplayStore`` by default. Use a shared one
            when several instances serve the API.
        external_url: the URL clients reach the API at (``https://api.example.com`` or
            with a path prefix), when a proxy stands in front: the request's path is appended
            to it to check ``htu``. That path includes any ASGI ``root_path`` or WSGI
            ``SCRIPT_NAME``: leave such a prefix out of it. Without it the URL is rebuilt
            from the request's scheme and ``Host``, which a proxy may change.
        hosts: without ``external_url``, the hosts (``api.example.com``, or with a port,
            ``api.example.com:8443``) clients reach the API at; a request whose ``Host`` is
            not one of them matches no proof's ``htu``. Compared case-insensitively; one
            listed without a port stands for the scheme's default port. ``None`` (the
            default) takes any well-formed ``Host``, which the client chooses: a proof made
            for another API accepting the same tokens can then be replayed here, and the
            guard logs a warning once at start.

    Raises:
        ConfigurationError: an unknown mode, a non-asymmetric algorithm, a window or
            leeway that is not a number of seconds up to a day, a nonce issuer or replay
            store of another type, a bad URL (one with a query, fragment, userinfo or
            dot segment), a bad host, or both ``external_url`` and ``hosts``.
    """

    mode: Literal["allowed", "required"] = "allowed"
    algorithms: Iterable[str] = DEFAULT_DPOP_ALGORITHMS
    iat_window: float = 300.0
    leeway: float = 5.0
    nonce: NonceIssuer | None = None
    replay: DPoPReplayStore = field(default_factory=MemoryDPoPReplayStore)
    external_url: str | None = None
    hosts: Iterable[str] | None = None
    allowed: frozenset[str] = field(init=False, repr=False)
    algs: str = field(init=False, repr=False)
    _authorities: frozenset[tuple[str, int | None]] | None = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.mode not in ("allowed", "required"):
            raise ConfigurationError("mode must be 'allowed' or 'required'")
        algorithms = self.algorithms
        try:
            allowed = frozenset((algorithms,) if isinstance(algorithms, str) else algorithms)
        except TypeError:  # not iterable, or an unhashable member
            allowed = frozenset()
        if not allowed or not allowed <= ASYMMETRIC_ALGORITHMS:
            named = sorted(map(repr, allowed))
            raise ConfigurationError(f"DPoP algorithms must be asymmetric JWS algorithms: {named}")
        # NaN fails too: it would pass every iat as fresh and every jti as new (RFC 9449 §11.1).
        # Kept as floats: a Decimal failed every proof's iat check (float - Decimal).
        iat_window = check_seconds("iat_window", self.iat_window, positive=True)
        leeway = check_seconds("leeway", self.leeway)
        for name, seconds in (("iat_window", iat_window), ("leeway", leeway)):
            if seconds > _MAX_WINDOW:
                # Every jti is remembered that long (RFC 9449 §11.1): a longer window made
                # the Redis store's expiry overflow, every DPoP request then failing.
                raise ConfigurationError(
                    f"{name} must be at most {_MAX_WINDOW:.0f} seconds (a day): {seconds!r}"
                )
        object.__setattr__(self, "iat_window", iat_window)
        object.__setattr__(self, "leeway", leeway)
        if not isinstance(self.replay, DPoPReplayStore):
            raise ConfigurationError("replay must be a DPoPReplayStore")
        if self.nonce is not None and not isinstance(self.nonce, NonceIssuer):
            raise ConfigurationError("nonce must be a NonceIssuer")
        if self.external_url is not None:
            if not isinstance(self.external_url, str):
                raise ConfigurationError(
                    f"external_url must be a string, not {type(self.external_url).__name__}"
                )
            if any(char.isspace() or not char.isprintable() for char in self.external_url):
                # RFC 3986 §2: no URI holds white space or controls. A stray one (from the
                # environment, a file) ended up in every rebuilt URL, or was dropped by the
                # URL parser only where it happened to be a newline: every proof refused.
                raise ConfigurationError(
                    f"external_url must not contain white space: {self.external_url!r}"
                )
            netloc = urlsplit(self.external_url).netloc
            if "?" in self.external_url or "#" in self.external_url or "@" in netloc:
                # The request's path is appended to it: after a query or fragment it would
                # drop out of the htu compared (RFC 9449 §4.3 step 9), matching every path.
                raise ConfigurationError("external_url takes no query, fragment or userinfo")
            try:
                normal = normalize_htu(self.external_url)
            except ValueError as exc:
                raise ConfigurationError("external_url must be an http(s) URL") from exc
            if any(part in {".", ".."} for part in urlsplit(normal).path.split("/")):
                # Clients remove dot segments before sending (RFC 3986 §5.2.4), so their htu
                # never holds one; the htu comparison keeps them: no proof would match.
                raise ConfigurationError(
                    f"external_url must not contain '.' or '..' segments: {self.external_url!r}"
                )
            object.__setattr__(self, "external_url", self.external_url.rstrip("/"))
        self._check_hosts()
        object.__setattr__(self, "allowed", allowed)
        object.__setattr__(self, "algs", " ".join(sorted(allowed)))

    def _check_hosts(self) -> None:
        """Check ``hosts`` and keep each as its name and port (``None``: the default)."""
        hosts = self.hosts
        if hosts is None:
            object.__setattr__(self, "_authorities", None)
            return
        if self.external_url is not None:
            # external_url fixes the URL: Host is never read, and a list beside it would
            # look like a check that is not made.
            raise ConfigurationError("give external_url or hosts, not both")
        named = [hosts] if isinstance(hosts, str) else hosts
        try:
            listed = list(named)
        except TypeError:
            raise ConfigurationError(f"hosts must be host names, not {hosts!r}") from None
        authorities = set()
        for host in listed:
            authority = _authority(host) if isinstance(host, str) and host else None
            if authority is None:
                raise ConfigurationError(
                    f"hosts must be host names, each with an optional port: {host!r}"
                )
            authorities.add(authority)
        if not authorities:
            raise ConfigurationError("hosts must name at least one host")
        shown = frozenset(name if port is None else f"{name}:{port}" for name, port in authorities)
        object.__setattr__(self, "hosts", shown)
        object.__setattr__(self, "_authorities", frozenset(authorities))

    def _serves(self, scheme: str, host: str) -> bool:
        """Whether ``host`` (a well-formed ``Host``) is one of ``hosts``, if they are listed."""
        if self._authorities is None:
            return True
        authority = _authority(host)
        if authority is None:
            return False
        name, port = authority
        default = _DEFAULT_PORTS.get(scheme)
        port = default if port is None else port
        # One listed without a port is the host at the scheme's default port (RFC 3986
        # §6.2.3); any other port is another origin (RFC 6454 §4).
        return (name, port) in self._authorities or (
            port == default and (name, None) in self._authorities
        )

    def request_url(self, scheme: str, host: str, path: str) -> str:
        """The URL a request was addressed to, as its proof's ``htu`` must name it."""
        if path and path[0] != "/":
            # RFC 9110 §3.2.1: an origin-form target starts with "/" (an empty path is "/",
            # RFC 3986 §6.2.3). Servers pass on others ("@evil.example/me"): appended to the
            # authority, they would make it userinfo and name another host, whose proofs
            # would then be accepted here (RFC 9449 §4.3 step 9).
            return ""  # matches no htu
        if self.external_url is not None:
            return self.external_url + path
        if not _HOST.fullmatch(host):
            return ""  # matches no htu (RFC 9449 §4.3 step 9)
        if not self._serves(scheme, host):
            # RFC 9449 §4.3 step 9 and §11.1: htu binds a proof to one URI. Host is the
            # client's to choose, so a proof made for another API accepting the same tokens
            # would match here if its host were taken at its word (RFC 9110 §7.4: a server
            # decides whether a target URI is one it serves).
            return ""
        return f"{scheme}://{host}{path}"


@dataclass(frozen=True, slots=True)
class DPoPRequest:
    """What a middleware tells the guard about a request for DPoP (per request).

    Attributes:
        scheme: the ``Authorization`` scheme used, ``"bearer"`` or ``"dpop"``.
        proofs: every ``DPoP`` header value sent (exactly one is accepted).
        method: the HTTP method.
        url: the request's URL (see ``DPoPPolicy.request_url``).
    """

    scheme: Literal["bearer", "dpop"]
    proofs: tuple[str, ...]
    method: str
    url: str


# Characters a path keeps unescaped (RFC 3986 §3.3 pchar and "/"); the rest is escaped as a
# client builds its htu, before both sides are normalised.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def dpop_request(  # noqa: PLR0917 - one call site per middleware
    policy: DPoPPolicy,
    scheme: Literal["bearer", "dpop"],
    proofs: Iterable[bytes],
    method: str,
    url_scheme: str,
    host: str,
    path: bytes,
    raw_path: bytes | None = None,
) -> DPoPRequest:
    """Describe a request for the guard's DPoP checks; both middlewares call this.

    Args:
        policy: the guard's policy (its ``external_url`` replaces ``url_scheme`` and
            ``host`` when set).
        scheme: the ``Authorization`` scheme used.
        proofs: every ``DPoP`` header value.
        method: the request method.
        url_scheme: ``http`` or ``https``, as the server saw the request.
        host: the ``Host`` header (or the server's name and port), as the server passes it.
        path: the full path the server received (including any root path), unescaped.
        raw_path: the same path as the client escaped it, when the server passes it on
            (ASGI ``raw_path``, WSGI ``REQUEST_URI``); used only if it unescapes to ``path``.
    """
    return DPoPRequest(
        scheme,
        # RFC 9110 §5.5: a field's leading and trailing white space is no part of its value
        # (uvicorn's httptools parser and werkzeug pass trailing white space on), the Host
        # field's included.
        tuple(value.strip(b" \t").decode("latin-1") for value in proofs),
        method,
        policy.request_url(url_scheme, host.strip(" \t"), _escaped_path(path, raw_path)),
    )


def _escaped_path(path: bytes, raw_path: bytes | None) -> str:
    """The request path as the client wrote it in its ``htu`` (RFC 9449 §4.3 step 9).

    Unescaping loses what the client meant: ``%2F`` and ``/`` are not equivalent (RFC 3986
    §2.2), so a proof for ``/files/a%2Fb`` names a URL that no re-escaping of ``/files/a/b``
    gives back. The raw path, when the server passes it on and it unescapes to the path the
    app routes on, is that URL; anything else falls back to escaping the decoded path.
    uvicorn (urllib's unquote) decodes escapes of bytes that are not UTF-8 to U+FFFD: such a path
    is the raw one decoded so, and the raw path is the URL (``/caf%E9``, not ``/caf%EF%BF%BD``).
    """
    if raw_path and raw_path[:1] == b"/":
        unescaped = unquote_to_bytes(raw_path)
        if unescaped == path or (
            b"\xef\xbf\xbd" in path and unescaped.decode("utf-8", "replace").encode() == path
        ):
            return quote(raw_path, safe=_PATH_SAFE + "%")
    return quote(path, safe=_PATH_SAFE)
