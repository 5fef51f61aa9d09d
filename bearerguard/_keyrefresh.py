"""Fetching a guard's key set (JWKS) when the freshness rules want it: once, however many
requests ask at the same time, from event loops and threads alike.

``KeyRefresher`` owns everything a fetch under way leaves behind: the event requests of its
event loop wait on, the asyncio task that runs it whatever becomes of the request that
started it, and the lock threads (``authenticate_sync``) and event loops claim a fetch under,
so that a thread and a loop starting at once fetch once. Whether a fetch is wanted is the
``KeyCache``'s rule (``bearerguard._core.keycache``); what a fetch brings is installed in that
cache, which the guard reads on every request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel

from bearerguard._core.keycache import KeyCache
from bearerguard._core.keys import KEYS_PER_KID, KeySet, crowded_kids, keys_from_jwks
from bearerguard._fork import reset_after_fork
from bearerguard.jwks import FetchError, JWKSFetcher
from bearerguard.metrics import JWKS_FETCHES, JWKS_LAST_SUCCESS, MetricsHook, count, set_gauge

__all__ = ["KeyRefresher"]

_log = logging.getLogger("bearerguard")


@dataclass(frozen=True, slots=True, eq=False)
class _Refreshing:
    """An event loop's key set fetch under way: the loop (an anyio token), the event its
    requests wait on, when it started (clock seconds), and the event threads wait on
    (``authenticate_sync``)."""

    loop: object
    done: anyio.Event
    started: float
    ended: threading.Event = field(default_factory=threading.Event)


class KeyRefresher:
    """Fetches an issuer's key set into ``keys`` (its ``KeyCache``) as its rules want.

    Args:
        fetcher: the issuer's JWKS fetcher; ``None`` for static keys or a shared secret
            alone, which are never fetched (``refresh`` and ``refresh_sync`` do nothing).
        keys: the cache the guard reads, where a fetch installs the set or records its failure.
        algorithms: the asymmetric algorithms the guard allows; a fetched key serves no other.
        timeout: one fetch's timeout: the longest a request waits for another's fetch.
        issuer: names the ``JWKS_LAST_SUCCESS`` gauge.
        metrics: counts fetches (``JWKS_FETCHES``).
        clock: the guard's clock.
    """

    def __init__(
        self,
        fetcher: JWKSFetcher | None,
        keys: KeyCache,
        *,
        algorithms: frozenset[str],
        timeout: float,
        issuer: str,
        metrics: MetricsHook | None,
        clock: Callable[[], float],
    ) -> None:
        self.fetcher = fetcher
        self._keys = keys
        self._algorithms = algorithms
        self._fetch_timeout = timeout
        self._issuer = issuer
        self._metrics = metrics
        self._clock = clock
        # The async fetch under way: the event loop it runs in, and what it sets when done.
        self._refreshing: _Refreshing | None = None
        # The asyncio tasks running fetches (one per event loop at most), each with the
        # ``_refreshing`` it ends: the event loop holds tasks only weakly. Each leaves when
        # done, or when found with its loop closed (``_drop_abandoned_fetches``), or it would
        # keep that loop alive.
        self._fetch_tasks: dict[asyncio.Task[None], _Refreshing] = {}
        self._fetch_lock = threading.Lock()
        self._fetches = 0  # sync fetches ended: tells a thread that waited whether one ran
        reset_after_fork(self)

    def _forked(self) -> None:
        """In a child process after ``fork()`` (bearerguard._fork): a fetch under way in
        another thread of the parent never ends here, nor releases the fetch lock. Kept, a
        pre-forked worker never fetched the key set again from its threads, and waited a
        whole fetch timeout on every kid miss: a rotated key was refused for its life.
        Nor does the cooldown that fetch started hold here: the child never learns what it
        brought, and kept it, refused a key just published for up to a whole cooldown."""
        self._fetch_lock = threading.Lock()
        self._refreshing = None
        self._fetch_tasks = {}
        self._keys.forget_unsettled_attempt()

    def in_flight(self) -> bool:
        """Whether a fetch is under way: an event loop's, or a thread's holding the lock."""
        return self._refreshing is not None or self._fetch_lock.locked()

    def may_look_again(self, now: float) -> bool:
        """Whether a token whose key the set lacks may have the set fetched (a kid miss,
        once per cooldown) or wait for a fetch already under way (another request's, which
        may bring a key just published)."""
        return self._keys.may_refresh_for_unknown_kid(now) or self.in_flight()

    def _install_keys(self, document: Any, max_age: float | None) -> None:
        """Install a fetched JWK Set, or record why it cannot be used."""
        cache = self._keys
        try:
            found, skipped = keys_from_jwks(document, self._algorithms)
        except ValueError as exc:
            self._keys_failed(exc, "not a JWK Set")
            return
        for kid, why in skipped:
            _log.info("bearerguard: skipped JWK %r: %s", kid, why)
        # Per algorithm: keys of different types under one kid never compete for a token.
        for kid, keys in crowded_kids((key.kid, key.algorithms) for key in found).items():
            _log.warning(
                "bearerguard: %d keys for one alg share the kid %r: only the first %d are tried",
                keys,
                kid[:64],
                KEYS_PER_KID,
            )
        if not found and skipped:
            # Keys published, none usable here (an algorithm not allowed, a key refused as
            # weak): a mismatch to fix, not a verdict on every token. Keep the last good keys
            # (stale-if-error) rather than refusing everything as invalid.
            self._keys_failed(
                ValueError("the key set has no usable key"), "no usable key in the set"
            )
            return
        if not found:
            # An empty set, over the issuer's own authenticated channel, withdraws every key
            # (as a set without one key withdraws that one): keeping the last keys for up to
            # max_stale would keep honouring keys an issuer dropped, perhaps as compromised.
            # A kid miss looks again once per cooldown, so keys published again are seen.
            _log.warning("bearerguard: the issuer publishes no key: every token is refused")
        now = self._clock()
        cache.record_success(KeySet(found, previous=cache.keys), now, max_age)
        count(self._metrics, JWKS_FETCHES, {"result": "ok"})
        set_gauge(self._metrics, JWKS_LAST_SUCCESS, now, {"issuer": self._issuer})

    def _keys_failed(self, error: Exception, cause: str | None = None) -> None:
        """Record a failed fetch; ``cause`` (else the ``FetchError``'s, else the exception's
        type) is what the ``auth.unavailable`` event's detail will name: never a URL or
        anything the server sent. The client is told none of it."""
        if cause is None:
            cause = error.cause if isinstance(error, FetchError) else type(error).__name__
        self._keys.record_failure(cause)
        count(self._metrics, JWKS_FETCHES, {"result": "error"})
        _log.warning("bearerguard: key set refresh failed: %s", error)

    # -- the asynchronous side ------------------------------------------------------------

    async def refresh(self, *, unknown_kid: bool = False) -> None:
        """Fetch the key set once, however many requests ask at the same time."""
        if self.fetcher is None:
            return
        self._drop_abandoned_fetches()
        if self._refreshing is None:
            ours = await self._claim_fetch(unknown_kid=unknown_kid)
            if ours is not None:
                await self._run_fetch(ours, rediscover=unknown_kid)
                return
        # Another request's fetch may be under way (found before claiming, or claimed by
        # another event loop meanwhile): wait for it when there is nothing usable to go on with.
        refreshing = self._refreshing
        if refreshing is not None and (unknown_kid or not self._keys.usable(self._clock())):
            await self._wait_for_fetch(refreshing)

    async def _wait_for_fetch(self, refreshing: _Refreshing) -> None:
        """Wait until an event loop's fetch ends (another loop's: at most one fetch timeout)."""
        # Equal, not identical: each current_token() call returns a new token.
        if refreshing.loop == anyio.lowlevel.current_token():
            await refreshing.done.wait()
            return
        # Another event loop's fetch (one guard serving two loops): its event cannot wake
        # this loop, so look, as for a thread's fetch (_claim_fetch).
        with anyio.move_on_after(self._fetch_timeout):
            while self._refreshing is refreshing:  # noqa: ASYNC110 - see above
                await anyio.sleep(0.01)
        if self._refreshing is refreshing:
            # Every fetch ends within its timeout unless its loop stopped running (closed
            # with the fetch pending): drop it, or no loop fetches again.
            self._drop_fetch(refreshing)

    async def _claim_fetch(self, *, unknown_kid: bool) -> _Refreshing | None:
        """Start this event loop's fetch if the rules want one and none is under way.

        ``None``: no fetch of ours (the rules want none, another's is under way, or a
        thread's held the fetch lock for a whole fetch timeout). While a thread holds the
        lock (authenticate_sync, warm_up_sync fetching), a fetch of our own would fetch twice:
        wait for it as a thread would, without blocking the event loop, then ask again.
        """
        with anyio.move_on_after(self._fetch_timeout):
            while True:
                decided, ours = self._try_claim_fetch(self._clock(), unknown_kid=unknown_kid)
                if decided or (not unknown_kid and self._keys.usable(self._clock())):
                    return ours  # decided, or the keys there are will do meanwhile
                await anyio.sleep(0.01)
        return None

    def _try_claim_fetch(self, now: float, *, unknown_kid: bool) -> tuple[bool, _Refreshing | None]:
        """Whether the fetch lock was free to decide, and the fetch started if one was.

        Decided holding the fetch lock, as a thread decides: a thread and the event loop
        starting at once fetched the key set twice (Django under ASGI, sync views beside
        async ones, on a cold start), and so did two event loops (one guard serving loops in
        two threads) each finding no fetch under way before either claimed one. The lock is
        only tried: the event loop never waits on it.
        """
        if not self._fetch_lock.acquire(blocking=False):
            return False, None
        try:
            cache = self._keys
            if self._refreshing is not None or not (
                cache.needs_refresh(now) or (unknown_kid and cache.may_refresh_for_unknown_kid(now))
            ):
                return True, None
            refreshing = _Refreshing(anyio.lowlevel.current_token(), anyio.Event(), now)
            self._refreshing = refreshing
            cache.record_attempt(now)
            return True, refreshing
        finally:
            self._fetch_lock.release()

    async def _run_fetch(self, refreshing: _Refreshing, *, rediscover: bool) -> None:
        """Run the fetch this request claimed, to its end whatever becomes of the request."""
        # The fetch is every waiting request's, not only this one's. Cancelled with it (a
        # client gone, a request timeout), it left the others refused and the kid-miss
        # cooldown spent: a key just published was refused for a whole cooldown. It ends
        # within its own timeout all the same.
        fetch = self._fetch_keys(refreshing, rediscover=rediscover)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: anyio's shield covers every cancellation
            with anyio.CancelScope(shield=True):
                await fetch
            return
        # Under asyncio, task.cancel() (uvicorn on a client gone, asyncio.wait_for) reaches
        # the task whatever anyio shields: the fetch runs in a task of its own, which a
        # cancelled request stops waiting for but does not stop.
        task = loop.create_task(fetch, name="bearerguard-jwks-fetch")
        self._fetch_tasks[task] = refreshing
        task.add_done_callback(self._fetch_done)
        await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        refreshing = self._fetch_tasks.pop(task, None)
        if refreshing is not None:
            # A task cancelled before its first step never runs _fetch_keys, whose finally
            # ends the fetch: ended here, or the fetching loop's requests waited for ever.
            self._end_fetch(refreshing)

    def _end_fetch(self, refreshing: _Refreshing) -> None:
        """Wake whoever waits for ``refreshing``; a second call changes nothing."""
        self._drop_fetch(refreshing)
        refreshing.done.set()
        refreshing.ended.set()

    def _drop_fetch(self, refreshing: _Refreshing) -> None:
        """No longer take ``refreshing`` for the fetch under way (unless dropped already).

        A fetch ended without an outcome (cancelled as its event loop shut down, or left in
        a loop closed with it pending) keeps no cooldown: kept, the next loop's tokens of a
        key just published were refused for a whole cooldown, the fetch that spent it
        having brought nothing.
        """
        if self._refreshing is refreshing:
            self._refreshing = None
        self._keys.abandon_attempt(refreshing.started)

    def _drop_abandoned_fetches(self) -> None:
        """Forget fetch tasks whose event loop was closed with them pending.

        A loop closed without cancelling its tasks (``loop.close()`` after
        ``run_until_complete``, as some test runners and reloaders do) never runs them
        again: their done callbacks never come. Kept, each held its closed loop alive, and
        the next loop's first requests waited a whole fetch timeout for a fetch that would
        never end, then were refused (503).
        """
        for task, refreshing in list(self._fetch_tasks.items()):
            if task.get_loop().is_closed():
                # Not ``del``: another loop's thread may drop the same task meanwhile, and a
                # second ``del`` raised KeyError (a 500).
                self._fetch_tasks.pop(task, None)
                self._drop_fetch(refreshing)

    async def _fetch_keys(self, refreshing: _Refreshing, *, rediscover: bool) -> None:
        """Fetch the key set and install it, or record the failure; then end ``refreshing``.

        ``rediscover``: a kid miss, which reads a discovered set's metadata again first.
        """
        assert self.fetcher is not None  # noqa: S101 - only called with a fetcher
        try:
            document, max_age = await self.fetcher.fetch(rediscover=rediscover)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the fetch failed: fail closed
            self._keys_failed(exc)
        else:
            self._install_keys(document, max_age)
        finally:
            self._end_fetch(refreshing)

    # -- the synchronous side -------------------------------------------------------------

    def refresh_sync(self, *, unknown_kid: bool = False) -> None:
        """Fetch the key set once across threads; others go on with usable keys or wait."""
        if self.fetcher is None:
            return
        cache = self._keys
        # A thread with a usable key for its token never waits for another's fetch; one
        # without (no usable set, or a kid the set lacks) waits at most one fetch timeout,
        # then goes on with what there is.
        lock = self._fetch_lock
        fetches = self._fetches
        if not lock.acquire(blocking=False):
            if (cache.usable(self._clock()) and not unknown_kid) or not lock.acquire(
                timeout=self._fetch_timeout
            ):
                return
            if self._fetches != fetches:
                # A fetch ended while this thread waited: go on with what it brought, as the
                # async side does; a fetch of its own would block it for a second timeout.
                lock.release()
                return
        try:
            # An event loop's fetch under way (one guard on both sides, as Django under ASGI
            # with sync views): wait for it, below, rather than fetch the set a second time.
            # Event loops start theirs holding this lock (_claim_fetch): no race between them.
            elsewhere = self._loop_fetch_elsewhere()
            if elsewhere is None:
                self._fetch_sync(unknown_kid=unknown_kid)
        finally:
            lock.release()
        if elsewhere is not None and (unknown_kid or not cache.usable(self._clock())):
            self._wait_for_loop_fetch(elsewhere)

    def _fetch_sync(self, *, unknown_kid: bool) -> None:
        """Fetch the key set in this thread if the rules want it; under the fetch lock."""
        assert self.fetcher is not None  # noqa: S101 - only called with a fetcher
        cache = self._keys
        # Another thread may have fetched while this one waited: ask the rules again.
        now = self._clock()
        if not (
            cache.needs_refresh(now) or (unknown_kid and cache.may_refresh_for_unknown_kid(now))
        ):
            return
        cache.record_attempt(now)
        try:
            document, max_age = self.fetcher.fetch_sync(rediscover=unknown_kid)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the fetch failed: fail closed
            self._keys_failed(exc)
        else:
            self._install_keys(document, max_age)
        finally:
            self._fetches += 1  # under the lock

    def _loop_fetch_elsewhere(self) -> _Refreshing | None:
        """An event loop's fetch under way, unless that loop runs in this thread: waiting
        for it here would stop it (``authenticate_sync`` called inside a coroutine)."""
        self._drop_abandoned_fetches()
        refreshing = self._refreshing
        if refreshing is None:
            return None
        try:
            here = anyio.lowlevel.current_token()
        except RuntimeError:  # no event loop in this thread (anyio's NoEventLoopError)
            return refreshing
        # Equal, not identical: each current_token() call returns a new token.
        return None if refreshing.loop == here else refreshing

    def _wait_for_loop_fetch(self, refreshing: _Refreshing) -> None:
        """Block until an event loop's fetch ends, at most one fetch timeout."""
        if not refreshing.ended.wait(self._fetch_timeout) and self._refreshing is refreshing:
            # Every fetch ends within its timeout unless its loop stopped running (closed
            # with the fetch pending): drop it, or no thread would fetch again.
            self._drop_fetch(refreshing)
