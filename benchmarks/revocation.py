"""Revocation stores measured: check cost, propagation between processes, Redis memory.

Usage (from the repository root; starts its own redis-server, needs the binary on PATH):

    .venv/bin/python benchmarks/revocation.py            # about a minute
    .venv/bin/python benchmarks/revocation.py --quick    # a smoke check, ~8 seconds

Three measurements in one run:

1. The cost of one revocation check, per call, for ``MemoryRevocationStore``,
   ``RedisRevocationStore`` answering from its mirror, and ``RedisRevocationStore(mirror=False)``
   asking Redis (one MGET round trip), each on the asynchronous and the synchronous side; the
   stores hold 1,000 live revocations and the token checked is not revoked (the common case).
2. Propagation: a second process follows the same Redis with a mirror-backed store and polls
   ``is_revoked`` for the token this process revokes next; each revocation is timed from just
   before ``revoke_token`` is called here to the instant the other process first sees it
   refused. Both processes read ``time.time()`` (one host, one realtime clock: comparable
   across processes; the monotonic clocks are not guaranteed to be). The round trip back to
   this process over a pipe, timed with ``perf_counter`` alone, is reported as an upper bound.
3. Memory: Redis's ``used_memory`` before and after many revocations, divided by their
   number, next to ``MEMORY USAGE`` of one key; and the mirror's Python memory per entry
   (tracemalloc).

Benchmarks never assert; the 100 ms propagation target is reported as met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from bearerguard import AccessToken
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.revocation.redis import RedisRevocationStore

ISSUER = "https://login.example.com/"
PREFILLED = 1000


def token(jti: str, sub: str = "user-1234", client_id: str = "web-app") -> AccessToken:
    now = time.time()
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "https://api.example.com",
        "sub": sub,
        "client_id": client_id,
        "jti": jti,
        "iat": int(now),
        "exp": int(now) + 3600,
    }
    return AccessToken.from_claims(
        claims,
        scopes=frozenset({"items:read"}),
        expires_at=now + 3600,
        issued_at=now,
        key_id="k1",
        algorithm="RS256",
        fingerprint="f",
    )


# -- a private redis-server ------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="bearerguard-bench-redis-")
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        directory,
        "--maxmemory-policy",
        "noeviction",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                with redis.Redis.from_url(url) as probe_client:
                    probe_client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        yield url
    finally:
        process.terminate()
        process.wait(5)
        shutil.rmtree(directory, ignore_errors=True)


def server_version(url: str) -> str:
    with redis.Redis.from_url(url) as client:
        info: dict[str, Any] = client.info("server")
    return str(info["redis_version"])


# -- 1. check cost ---------------------------------------------------------------------------


def per_call(run: Callable[[int], float], calls: int, repeats: int) -> float:
    """The median over ``repeats`` of seconds per call."""
    return statistics.median(run(calls) / calls for _ in range(repeats))


def sync_loop(store: Any, checked: AccessToken) -> Callable[[int], float]:
    check = store.is_revoked_sync

    def run(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            check(checked)
        return time.perf_counter() - start

    return run


def async_loop(
    store: Any, checked: AccessToken, loop: asyncio.AbstractEventLoop
) -> Callable[[int], float]:
    check = store.is_revoked

    async def calls_of(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await check(checked)
        return time.perf_counter() - start

    return lambda calls: loop.run_until_complete(calls_of(calls))


async def prefill(store: Any) -> None:
    exp = time.time() + 3600
    for i in range(PREFILLED):
        await store.revoke_token(f"prefilled-{i}", exp, issuer=ISSUER)


def check_costs(url: str, quick: bool) -> list[dict[str, Any]]:
    repeats = 3 if quick else 7
    fast_calls = 20_000 if quick else 200_000
    slow_calls = 500 if quick else 5_000
    checked = token(uuid.uuid4().hex)
    loop = asyncio.new_event_loop()
    stores: list[RedisRevocationStore] = []

    def redis_store(*, mirror: bool, side: str) -> RedisRevocationStore:
        # Built and started just before it is measured: a mirror's task runs only while its
        # event loop does, so a store must not sit in a stopped loop between measurements.
        store = RedisRevocationStore(url, namespace="bench-cost", mirror=mirror)
        stores.append(store)
        if mirror and side == "async":
            loop.run_until_complete(store.start())
        elif mirror:
            store.start_sync()  # the mirror in a thread
        return store

    memory = MemoryRevocationStore()
    rows: list[dict[str, Any]] = []
    try:
        loop.run_until_complete(prefill(memory))
        loop.run_until_complete(prefill(redis_store(mirror=False, side="async")))
        cases: list[tuple[str, Callable[[str], Any], int]] = [
            ("memory", lambda side: memory, fast_calls),
            ("redis, mirror", lambda side: redis_store(mirror=True, side=side), fast_calls),
            (
                "redis, direct (mirror=False)",
                lambda side: redis_store(mirror=False, side=side),
                slow_calls,
            ),
        ]
        for label, build, calls in cases:
            for side in ("async", "sync"):
                store = build(side)
                if side == "async":
                    run = async_loop(store, checked, loop)
                else:
                    run = sync_loop(store, checked)
                run(min(calls, 1000))  # warm up
                seconds = per_call(run, calls, repeats)
                rows.append({"store": label, "side": side, "us_per_check": seconds * 1e6})
                _progress(f"check cost: {label}, {side}: {seconds * 1e6:.2f} µs")
    finally:
        for store in stores:
            loop.run_until_complete(store.aclose())
        loop.close()
    return rows


# -- 2. propagation between two processes ----------------------------------------------------


def follow(url: str, namespace: str, count: int, side: str) -> None:
    """The other process: report when each revocation is first enforced here."""
    out = sys.stdout
    store = RedisRevocationStore(url, namespace=namespace)
    tokens = [token(f"prop-{i}") for i in range(count)]
    if side == "sync":
        store.start_sync()
        print("ready", flush=True)
        for i, checked in enumerate(tokens):
            while not store.is_revoked_sync(checked):
                time.sleep(0.0001)
            out.write(f"{i} {time.time()!r}\n")
            out.flush()
        store.close()
        return

    async def main() -> None:
        await store.start()
        print("ready", flush=True)
        for i, checked in enumerate(tokens):
            while not await store.is_revoked(checked):  # noqa: ASYNC110 - polling is the point
                await asyncio.sleep(0.0001)
            out.write(f"{i} {time.time()!r}\n")
            out.flush()
        await store.aclose()

    asyncio.run(main())


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def propagation(url: str, count: int, side: str) -> dict[str, Any]:
    namespace = f"bench-prop-{side}-{uuid.uuid4().hex[:6]}"
    child = subprocess.Popen(  # noqa: S603 - this very script, as the follower
        [sys.executable, __file__, "--follow", url, namespace, str(count), side],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError("the follower did not start")
    writer = RedisRevocationStore(url, namespace=namespace, mirror=False)
    one_way: list[float] = []
    round_trip: list[float] = []

    async def revoke_all() -> None:
        stdout = child.stdout
        assert stdout is not None
        for i in range(count):
            await asyncio.sleep(0.002 + (i % 5) * 0.001)  # spaced, never back to back
            sent_wall = time.time()
            sent = time.perf_counter()
            await writer.revoke_token(f"prop-{i}", time.time() + 600)
            line = await asyncio.to_thread(stdout.readline)
            round_trip.append(time.perf_counter() - sent)
            index, seen = line.split()
            assert int(index) == i
            one_way.append(float(seen) - sent_wall)
        await writer.aclose()

    asyncio.run(revoke_all())
    child.wait(10)
    result = {
        "side": side,
        "revocations": count,
        "p50_ms": percentile(one_way, 0.5) * 1e3,
        "p99_ms": percentile(one_way, 0.99) * 1e3,
        "max_ms": max(one_way) * 1e3,
        "round_trip_p50_ms": percentile(round_trip, 0.5) * 1e3,
        "round_trip_p99_ms": percentile(round_trip, 0.99) * 1e3,
    }
    _progress(f"propagation ({side}): p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    return result


# -- 3. memory ------------------------------------------------------------------------------


async def revoke_many(store: RedisRevocationStore, count: int, reason: str | None) -> None:
    exp = time.time() + 3600
    batch = 500
    for start in range(0, count, batch):
        await asyncio.gather(
            *(
                store.revoke_token(uuid.uuid4().hex, exp, issuer=ISSUER, reason=reason)
                for _ in range(start, min(count, start + batch))
            )
        )


def memory(url: str, count: int) -> dict[str, Any]:
    results: dict[str, Any] = {"entries": count}
    inspect = redis.Redis.from_url(url)
    for label, reason in (("plain", None), ("with_reason", "device reported stolen")):
        namespace = f"bench-mem-{label[0]}"  # same length for both: comparable keys
        store = RedisRevocationStore(url, namespace=namespace, mirror=False)
        inspect.memory_purge()
        before = int(inspect.info("memory")["used_memory"])
        asyncio.run(_revoke_then_close(store, count, reason))
        after = int(inspect.info("memory")["used_memory"])
        keys = [
            key
            for _, key in zip(range(200), inspect.scan_iter(match=f"{namespace}:*"), strict=False)
        ]
        usage = statistics.mean(int(inspect.memory_usage(key) or 0) for key in keys)
        sample_key = keys[0].decode()
        sample_value = inspect.get(keys[0])
        assert isinstance(sample_value, bytes)
        results[label] = {
            "used_memory_bytes_per_entry": (after - before) / count,
            "memory_usage_bytes_per_key": usage,
            "key_bytes": len(sample_key),
            "value_bytes": len(sample_value),
            "sample_key": sample_key,
            "sample_value": sample_value.decode(),
        }
        _progress(f"memory ({label}): {(after - before) / count:.0f} B per entry (used_memory)")
    # The mirror in this process, for the plain entries: how long a full load (a start, or a
    # resynchronisation) takes, then its memory (tracemalloc slows the load down: apart).
    loader = RedisRevocationStore(url, namespace="bench-mem-p", max_entries=count + 1)
    started = time.perf_counter()
    loader.start_sync(timeout=120)
    results["mirror_load_seconds"] = time.perf_counter() - started
    loader.close()
    mirror = RedisRevocationStore(url, namespace="bench-mem-p", max_entries=count + 1)
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    mirror.start_sync(timeout=300)
    held = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()
    entries = mirror.health_report()["entries"]
    mirror.close()
    results["mirror_python_bytes_per_entry"] = held / entries
    inspect.close()
    return results


async def _revoke_then_close(store: RedisRevocationStore, count: int, reason: str | None) -> None:
    await revoke_many(store, count, reason)
    await store.aclose()


# -- the report -----------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def report(data: dict[str, Any]) -> str:
    lines = [
        "# Revocation stores",
        "",
        f"Command: `{data['command']}`; redis-server {data['redis_version']} on 127.0.0.1, "
        f"Python {data['python']}.",
        "",
        "## Cost of one check (token not revoked, 1,000 live revocations held)",
        "",
        "| store | side | µs per check |",
        "|---|---|---:|",
    ]
    lines += [f"| {r['store']} | {r['side']} | {r['us_per_check']:.2f} |" for r in data["costs"]]
    lines += [
        "",
        "## Propagation to another process (revoke here, enforced there)",
        "",
        "| follower's mirror | revocations | p50 ms | p99 ms | max ms | round trip p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in data["propagation"]:
        lines.append(
            f"| {r['side']} | {r['revocations']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['max_ms']:.2f} | {r['round_trip_p50_ms']:.2f} / {r['round_trip_p99_ms']:.2f} |"
        )
    worst = max(r["p99_ms"] for r in data["propagation"])
    lines += [
        "",
        f"Target p99 < 100 ms: {'met' if worst < 100 else 'NOT met'} ({worst:.2f} ms).",
        "",
    ]
    mem = data["memory"]
    lines += [
        f"## Memory per revoked token ({mem['entries']:,} tokens)",
        "",
        "| entry | Redis used_memory per entry | MEMORY USAGE per key | key + value bytes |",
        "|---|---:|---:|---:|",
    ]
    for label in ("plain", "with_reason"):
        m = mem[label]
        lines.append(
            f"| {label.replace('_', ' ')} | {m['used_memory_bytes_per_entry']:.0f} B | "
            f"{m['memory_usage_bytes_per_key']:.0f} B | {m['key_bytes']} + {m['value_bytes']} |"
        )
    lines += [
        "",
        f"Mirror in the API process: {mem['mirror_python_bytes_per_entry']:.0f} B per entry "
        f"(tracemalloc); a full load of {mem['entries']:,} entries (start or resync) took "
        f"{mem['mirror_load_seconds']:.2f} s.",
        "",
        f"Sample key: `{mem['plain']['sample_key']}`, value `{mem['plain']['sample_value']}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--follow"]:
        url, namespace, count, side = args_list[1:5]
        follow(url, namespace, int(count), side)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    parser.add_argument("--propagations", type=int, help="revocations timed per side (500)")
    parser.add_argument("--entries", type=int, help="revocations for the memory figure (100000)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(args_list)
    propagations = args.propagations or (100 if args.quick else 500)
    entries = args.entries or (10_000 if args.quick else 100_000)
    with redis_server() as url:
        data: dict[str, Any] = {
            "command": " ".join(["python", "benchmarks/revocation.py", *args_list]),
            "redis_version": server_version(url),
            "python": sys.version.split()[0],
        }
        data["costs"] = check_costs(url, args.quick)
        data["propagation"] = [propagation(url, propagations, side) for side in ("async", "sync")]
        data["memory"] = memory(url, entries)
    print(report(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
