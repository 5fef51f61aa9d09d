"""Pre-forking servers: a guard built and warmed up in a master, then ``fork()``ed.

gunicorn ``--preload`` builds the app, and so the guard, in its master and forks the
workers from it (and forks new ones later, while the master's threads run on). Only the
forking thread goes on in a child: whatever another thread had under way there (a key set
fetch, an introspection exchange, the Redis mirror) never ends, and a lock it held is never
released. Each test forks for real and runs the worker's part in the child, which reports
through a pipe and is killed past its deadline: a deadlock fails the test, never hangs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import bearerguard.metrics
from bearerguard import BearerGuard
from bearerguard._core.keycache import RefreshPolicy
from bearerguard._failures import FailureReport
from bearerguard.dpop import MemoryDPoPReplayStore
from bearerguard.errors import (
    InvalidTokenError,
    RevocationStoreError,
    RevokedTokenError,
    UnknownKeyError,
)
from bearerguard.introspection import IntrospectionError
from bearerguard.issuers import TrustedIssuers
from bearerguard.jwks import FetchPolicy
from bearerguard.metrics import InMemoryMetrics, _report_for
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer, Override
from bearerguard.usage import MemoryUsageMonitor, UsagePolicy
from tests.helpers import until
from tests.redis_server import RedisServer
from tests.test_introspection import Fault, IntrospectionServer
from tests.test_revocation_redis import token

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

redis = pytest.importorskip("redis")
from bearerguard.revocation import RedisRevocationStore  # noqa: E402 - needs the extra


def in_child(work: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Fork, run ``work`` in the child and return what it returned (JSON).

    The child is killed once ``timeout`` has passed: the test then fails as deadlocked.
    An exception in the child fails the test with its text.
    """
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            report = json.dumps({"result": work()})
        except BaseException as exc:  # reported to the parent
            report = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            os.write(write, report.encode())
            os._exit(0)
    os.close(write)
    return reported(pid, read, timeout)


def reported(pid: int, read: int, timeout: float) -> Any:
    """What the child ``pid`` reported through ``read``; killed (failing) past ``timeout``."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the forked worker did not finish within {timeout}s (deadlock?)")
            chunk = os.read(read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    report: dict[str, Any] = json.loads(b"".join(chunks))
    assert "error" not in report, report["error"]
    return report["result"]


def outcome(guard: BearerGuard, token: str) -> str:
    try:
        return str(guard.authenticate_sync(token).token_id)
    except (InvalidTokenError, RevocationStoreError) as exc:
        return type(exc).__name__


async def outcome_async(guard: BearerGuard, token: str) -> str:
    try:
        return str((await guard.authenticate(token)).token_id)
    except (InvalidTokenError, RevocationStoreError) as exc:
        return type(exc).__name__


@pytest.fixture
def stores(
    redis_server: RedisServer, redis_namespace: str
) -> Iterator[tuple[RedisRevocationStore, RedisRevocationStore]]:
    """The workers' mirrored store, and an admin's (another process's) direct one."""
    mirrored = RedisRevocationStore(redis_server.url, namespace=redis_namespace)
    admin = RedisRevocationStore(redis_server.url, namespace=redis_namespace, mirror=False)
    yield mirrored, admin
    mirrored.close()
    admin.close()


@pytest.mark.parametrize("side", ["sync", "async"])
def test_a_preforked_worker_verifies_sees_rotations_and_revocations(
    issuer: DevIssuer,
    redis_server: RedisServer,
    stores: tuple[RedisRevocationStore, RedisRevocationStore],
    side: str,
) -> None:
    # The master warms the keys up and starts the mirror (its thread keeps running), then
    # the issuer rotates its key and a worker is forked: the worker verifies with the keys
    # it inherited, fetches the new one on its kid miss, subscribes on a connection of its
    # own and sees a revocation made by another process after the fork.
    mirrored, admin = stores
    guard = issuer.guard(revocation=mirrored, refresh=RefreshPolicy(cooldown=0))
    guard.warm_up_sync()
    mirrored.start_sync()
    old = issuer.mint(jti="old")
    assert outcome(guard, old) == "old"
    issuer.rotate()
    new, later = issuer.mint(jti="new"), issuer.mint(jti="later")
    channel = f"{mirrored._layout.channel}"

    def subscribers() -> int:
        with redis_server.client() as client:
            return int(dict(client.pubsub_numsub(channel))[channel])

    def worker() -> list[str]:
        if side == "async":

            async def serve() -> list[str]:
                seen = [await outcome_async(guard, old), await outcome_async(guard, new)]
                deadline = time.monotonic() + 5
                while await outcome_async(guard, later) == "later":
                    assert time.monotonic() < deadline, "the revocation went unseen"
                    await asyncio.sleep(0.01)
                return [*seen, await outcome_async(guard, later)]

            return asyncio.run(serve())
        seen = [outcome(guard, old), outcome(guard, new)]
        assert until(lambda: outcome(guard, later) != "later", 5), "the revocation went unseen"
        return [*seen, outcome(guard, later), str(subscribers())]

    revoking = threading.Timer(
        0.2, lambda: admin.revoke_token_sync("later", time.time() + 600, issuer=issuer.url)
    )
    revoking.start()
    try:
        seen = in_child(worker)
    finally:
        revoking.join()
    assert seen[:3] == ["old", "new", RevokedTokenError.__name__]
    if side == "sync":
        assert seen[3] == "2"  # the master's subscription and the worker's own: none shared
    # The master's mirror was not disturbed by the worker: it is live and sees revocations.
    admin.revoke_token_sync("old", time.time() + 600, issuer=issuer.url)
    assert until(lambda: outcome(guard, old) == RevokedTokenError.__name__, 5)
    assert mirrored.health_report()["state"] == "live"


def test_a_worker_forked_during_a_key_set_fetch_fetches_keys_itself(issuer: DevIssuer) -> None:
    # A thread of the master was fetching the key set when the worker was forked: that
    # fetch never ends in the worker, and it held the guard's fetch lock. The worker waited
    # a whole fetch timeout on every kid miss and never fetched again: a rotated key was
    # refused for the worker's whole life.
    guard = issuer.guard(refresh=RefreshPolicy(cooldown=0), fetch=FetchPolicy(timeout=3))
    guard.warm_up_sync()
    issuer.rotate()
    new = issuer.mint(jti="new")
    issuer.overrides[issuer.jwks_path] = Override(body=issuer.jwks_bytes(), delay=1.0)
    fetches = issuer.fetch_count()
    fetching = threading.Thread(target=outcome, args=(guard, new))
    fetching.start()
    try:
        assert until(lambda: issuer.fetch_count() > fetches, 10)  # the fetch is under way

        def worker() -> list[object]:
            started = time.monotonic()
            return [outcome(guard, new), time.monotonic() - started]

        # Answered at once from now: the master's fetch was given its delay when its
        # request came (a timer clearing it later let a slow child meet the delay too).
        issuer.overrides.clear()
        accepted, took = in_child(worker)
    finally:
        fetching.join()
    assert accepted == "new"
    assert took < 2.0


def test_a_worker_forked_during_an_introspection_answers_that_token() -> None:
    # A thread of the master was asking the endpoint about a token when the worker was
    # forked: the exchange never ends in the worker. Every request with that token waited
    # for it a whole timeout, then was refused (503), for the worker's whole life; and the
    # slot it held stayed taken (here the only one: every other token failed too, and
    # health() never probed again).
    with IntrospectionServer() as server:
        server.activate("opaque")
        introspector = server.introspector(timeout=2.0, max_concurrent=1)
        answer = json.dumps({"active": True, "exp": int(time.time()) + 300}).encode()
        server.fault = Fault(body=answer, delay=1.0)
        asking = threading.Thread(target=introspector.introspect_sync, args=("opaque",))
        asking.start()
        try:
            assert until(lambda: server.calls == 1, 10)  # the exchange is under way

            def worker() -> list[object]:
                return [
                    introspector.introspect_sync("opaque").active,
                    introspector.introspect_sync("unknown").active,
                    introspector.health_sync()["healthy"],
                ]

            forked = threading.Timer(0.1, setattr, args=(server, "fault", None))
            forked.start()
            answered = in_child(worker)
            forked.join()
        finally:
            asking.join()
    assert answered == [True, False, True]


def _pause(loop: asyncio.AbstractEventLoop, seconds: float) -> asyncio.Future[None]:
    """A wait in ``loop`` that a forked child can run on: asyncio knows no running loop
    there (``asyncio.sleep`` raises), though the parent's loop is still on its stack."""
    paused = loop.create_future()
    loop.call_later(seconds, paused.set_result, None)
    return paused


@pytest.mark.anyio
async def test_a_mirror_task_inherited_by_a_child_that_runs_its_loop_on_stands_down(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    # A process forked from inside its event loop (os.fork in a coroutine) whose child runs
    # that loop on: the mirror's task came along, and the child's store, reset for a runner
    # of its own, still took it for its current runner. It went on listening on the
    # connection it shares with the parent (where either process may read an announcement,
    # or the answer to a ping), and failed the child's mirror as its own (asyncio knows no
    # running loop in a child): the child's first checks could be refused at once (503)
    # instead of waiting for its own runner's load. It now stands down at its next step,
    # without touching the child's mirror.
    store = RedisRevocationStore(redis_server.url, namespace=redis_namespace)
    try:
        await store.start()
        inherited, loop = store._task, asyncio.get_running_loop()
        assert inherited is not None
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                deadline = time.monotonic() + 5
                while not inherited.done() and time.monotonic() < deadline:
                    await _pause(loop, 0.01)  # the loop runs on: the inherited task too
                state = store.health_report()["state"]
                # The child's first check waits for its own runner's load, as after any fork.
                result = [inherited.done(), state, store.is_revoked_sync(token())]
                report = json.dumps({"result": result})
            except BaseException as exc:  # reported to the parent
                report = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
            finally:
                os.write(write, report.encode())
                os._exit(0)
        os.close(write)
        assert reported(pid, read, 20.0) == [True, "stopped", False]
    finally:
        await store.aclose()


def test_a_mirrored_store_is_built_where_there_is_no_fork(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows has no os.register_at_fork: registering the mirror's hook there raised
    # AttributeError, so no mirrored store could be built at all.
    monkeypatch.delattr(os, "register_at_fork")
    store = RedisRevocationStore(redis_server.url)
    assert repr(store).endswith("mode='mirror')")
    store.close()


@pytest.mark.parametrize("side", ["sync", "async"])
def test_a_worker_forked_during_a_key_set_fetch_keeps_no_cooldown_from_it(
    issuer: DevIssuer, side: str
) -> None:
    # A kid miss in a thread of the master started a fetch, and the worker was forked while
    # it ran: the worker never sees that fetch end, yet it kept the cooldown it started, and
    # refused a key just published (no fetch on a kid miss) for up to a whole cooldown.
    shift = [0.0]
    guard = issuer.guard(
        refresh=RefreshPolicy(cooldown=30),
        fetch=FetchPolicy(timeout=3),
        clock=lambda: time.time() + shift[0],
    )
    guard.warm_up_sync()
    shift[0] = 40.0  # the warm-up's cooldown is over; the set is still fresh
    issuer.rotate()
    new = issuer.mint(jti="new")
    issuer.overrides[issuer.jwks_path] = Override(body=issuer.jwks_bytes(), delay=1.0)
    fetches = issuer.fetch_count()
    fetching = threading.Thread(target=outcome, args=(guard, new))
    fetching.start()
    try:
        assert until(lambda: issuer.fetch_count() > fetches, 10)  # the fetch is under way

        def worker() -> str:
            if side == "async":
                return asyncio.run(outcome_async(guard, new))
            return outcome(guard, new)

        forked = threading.Timer(0.1, issuer.overrides.clear)  # answered at once from now
        forked.start()
        accepted = in_child(worker)
        forked.join()
    finally:
        fetching.join()
    assert accepted == "new"
    assert outcome(guard, new) == "new"  # the master's own fetch ended as before
    # A fetch that ended before the fork keeps its cooldown in the worker, as in the master:
    # a kid just after it is not fetched for again.
    issuer.rotate()
    newer, fetches = issuer.mint(jti="newer"), issuer.fetch_count()
    assert in_child(lambda: outcome(guard, newer)) == UnknownKeyError.__name__
    assert issuer.fetch_count() == fetches


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """A thread of the master holds ``lock`` (as one mid-update would) until the block ends."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(5)
        yield
    finally:
        done.set()
        holder.join()


def _usage(issuer: DevIssuer) -> tuple[Any, Callable[[], Any]]:
    monitor = MemoryUsageMonitor(UsagePolicy(max_uses_per_token=10))
    guard = issuer.guard(in_process=True, usage=monitor)
    token = issuer.mint(jti="used")
    return monitor._lock, lambda: outcome(guard, token)


def _revocations(issuer: DevIssuer) -> tuple[Any, Callable[[], Any]]:
    store = MemoryRevocationStore()
    guard = issuer.guard(in_process=True, revocation=store)
    token = issuer.mint(jti="revoked")

    def work() -> str:
        store.revoke_token_sync("revoked", time.time() + 600, issuer=issuer.url)
        return outcome(guard, token)

    return store.table._lock, work


def _metrics(issuer: DevIssuer) -> tuple[Any, Callable[[], Any]]:
    metrics = InMemoryMetrics()
    return metrics._lock, lambda: metrics.increment("bearerguard_requests_total", {})


def _hook_reports(issuer: DevIssuer) -> tuple[Any, Callable[[], Any]]:
    return bearerguard.metrics._hook_reports_lock, lambda: bool(_report_for(object()))


def _failure_report(issuer: DevIssuer) -> tuple[Any, Callable[[], Any]]:
    report = FailureReport("failed: %s", "%d more, %d in all", "recovered after %d")
    return report._lock, lambda: report.failed("once")


def _replays(issuer: DevIssuer) -> tuple[Any, Callable[[], Any]]:
    replays, proofs = MemoryDPoPReplayStore(), itertools.count()
    return replays._lock, lambda: replays.first_use_sync(f"proof {next(proofs)}", 60)


def _issuers(issuer: DevIssuer) -> tuple[Any, Callable[[], Any]]:
    trusted = TrustedIssuers([issuer.guard(in_process=True)], resolver=lambda iss: None)
    stranger = issuer.mint(iss="https://elsewhere.example")
    return trusted._lock, lambda: outcome_of(trusted, stranger)


def outcome_of(trusted: TrustedIssuers, token: str) -> str:
    try:
        return str(trusted.authenticate_sync(token).token_id)
    except InvalidTokenError as exc:
        return type(exc).__name__


@pytest.mark.parametrize(
    "component",
    [_usage, _revocations, _metrics, _hook_reports, _failure_report, _replays, _issuers],
)
def test_a_worker_forked_while_a_lock_was_held_does_not_deadlock(
    issuer: DevIssuer, component: Callable[[DevIssuer], tuple[Any, Callable[[], Any]]]
) -> None:
    # Another thread of the master held a component's lock when the worker was forked: that
    # thread never runs in the worker, so the lock stayed held there, and the first request
    # needing it hung the worker for good.
    lock, work = component(issuer)
    expected = work()  # what the master makes of it
    with held_by_another_thread(lock):
        assert in_child(work, timeout=10) == expected


def test_a_fork_inside_a_running_loop_keeps_the_exchange_limit_in_the_child() -> None:
    # A coroutine forked with an exchange in flight: the child goes on running the parent's
    # event loop (asyncio refuses new work there, but callbacks already due still run), and
    # the exchange ends in it. The fork forgot its slot (it was the parent's); its ending
    # freed it all the same, so the count went negative and the child let one exchange more
    # than max_concurrent run at once.
    answer = json.dumps({"active": True, "exp": int(time.time()) + 300}).encode()
    with IntrospectionServer() as server:
        introspector = server.introspector(timeout=5.0, max_concurrent=1)
        server.fault = Fault(body=answer, delay=0.5)

        def asked(token: str) -> str:
            try:
                return str(introspector.introspect_sync(token).active)
            except IntrospectionError as exc:
                return type(exc).__name__

        def at_once(tokens: list[str]) -> list[str]:
            with ThreadPoolExecutor(len(tokens)) as pool:
                return sorted(pool.map(asked, tokens))

        async def main() -> list[str]:
            first = asyncio.ensure_future(introspector.introspect("first"))
            while server.calls < 1:  # noqa: ASYNC110 - the server is another thread's
                await asyncio.sleep(0.01)
            read, write = os.pipe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports through the pipe
                try:
                    with contextlib.suppress(Exception):
                        await first  # the parent's exchange, ended in the child
                    report = json.dumps({"result": at_once(["a", "b"])})
                except BaseException as exc:  # reported to the parent
                    report = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
                finally:
                    os.write(write, report.encode())
                    os._exit(0)
            os.close(write)
            # Blocking: this loop does not run meanwhile, so the child alone reads the answer.
            result: list[str] = reported(pid, read, 20)
            first.cancel()
            return result

        seen = asyncio.run(main())
    assert seen == [IntrospectionError.__name__, "True"]


class _BrokenHook:
    def _forked(self) -> None:
        raise RuntimeError("a hook that fails")


class _RecordingHook:
    reset = False

    def _forked(self) -> None:
        self.reset = True


def test_a_failing_fork_hook_leaves_the_others_run() -> None:
    from bearerguard._fork import reset_after_fork

    broken, recording = _BrokenHook(), _RecordingHook()
    reset_after_fork(broken)  # registered first: its failure came before the other's turn
    reset_after_fork(recording)
    assert in_child(lambda: recording.reset) is True


def test_a_worker_forked_during_an_outage_logs_its_own_first_failure_in_full() -> None:
    # The master's outage was inherited as under way: the worker's first failure counted
    # towards a summary line a minute later, and its message (the error) was never logged.
    report = FailureReport("failed: %s", "%d more, %d in all", "recovered after %d")
    report.failed("in the master")
    lines: list[str] = []

    def first_line() -> list[str]:
        handler = logging.Handler()
        handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
        logger = logging.getLogger("bearerguard")
        logger.addHandler(handler)
        try:
            report.failed("in the worker")
        finally:
            logger.removeHandler(handler)
        return lines

    assert in_child(first_line) == ["failed: in the worker"]
