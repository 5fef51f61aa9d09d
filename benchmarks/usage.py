"""Usage monitors measured: the cost of one observation, and memory per tracked token.

Usage (from the repository root; starts its own redis-server, needs the binary on PATH):

    .venv/bin/python benchmarks/usage.py            # about a minute and a half
    .venv/bin/python benchmarks/usage.py --quick    # a smoke check, about 15 seconds

Measured:

1. The cost of one observation (what a request pays when monitoring is on), per call, for
   ``MemoryUsageMonitor`` and ``RedisUsageMonitor`` on both sides, under three policies: one
   limit on tokens' uses; the usual pair (token addresses and uses); every limit (tokens
   and subjects, addresses and uses). Observations go round a population of 10,000 tokens
   of 1,000 subjects, each token used from one of a few addresses, so the keys are many and
   mostly warm, as in a live API. Redis: sequential calls (each one round trip over
   loopback), and the throughput of 64 concurrent observations on the asynchronous side.
2. Memory per tracked token: the memory monitor's Python objects (tracemalloc), and
   Redis's ``used_memory`` growth, for tokens that each have their own subject and were used
   from two addresses, under every limit.

Benchmarks never assert. Figures on a shared machine are orders of magnitude.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bearerguard import AccessToken

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

from bearerguard.usage import (  # noqa: E402
    MemoryUsageMonitor,
    RedisUsageMonitor,
    UsageMonitorError,
    UsagePolicy,
)
from benchmarks.revocation import redis_server  # noqa: E402

ISSUER = "https://login.example.com/"
TOKENS = 10_000
SUBJECTS = 1_000
POLICIES = {
    "token uses": UsagePolicy(max_uses_per_token=1_000_000),
    "token addresses + uses": UsagePolicy(max_addresses_per_token=3, max_uses_per_token=1_000_000),
    "every limit": UsagePolicy(
        max_addresses_per_token=3,
        max_uses_per_token=1_000_000,
        max_addresses_per_subject=10,
        max_uses_per_subject=1_000_000,
    ),
}


def token(jti: str, sub: str) -> AccessToken:
    now = time.time()
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "https://api.example.com",
        "sub": sub,
        "client_id": "web-app",
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


def population() -> list[tuple[AccessToken, str]]:
    """(token, address) pairs: 10,000 tokens of 1,000 subjects, two addresses per token."""
    pairs = []
    for i in range(TOKENS):
        # 36-character jti, as a UUID would be.
        checked = token(f"{i:036d}", f"user-{i % SUBJECTS:06d}@example.com")
        pairs += [(checked, f"198.51.{i % 200}.{i % 250}"), (checked, f"2001:db8:{i:x}::1")]
    return pairs


# -- a private redis-server ------------------------------------------------------------------


def sync_loop(monitor: Any, pairs: list[tuple[AccessToken, str]]) -> Callable[[int], float]:
    observe = monitor.observe_sync
    size = len(pairs)

    def run(calls: int) -> float:
        start = time.perf_counter()
        for i in range(calls):
            checked, client = pairs[i % size]
            observe(checked, client)
        return time.perf_counter() - start

    return run


def async_loop(
    monitor: Any, pairs: list[tuple[AccessToken, str]], loop: asyncio.AbstractEventLoop
) -> Callable[[int], float]:
    observe = monitor.observe
    size = len(pairs)

    async def calls_of(calls: int) -> float:
        start = time.perf_counter()
        for i in range(calls):
            checked, client = pairs[i % size]
            await observe(checked, client)
        return time.perf_counter() - start

    return lambda calls: loop.run_until_complete(calls_of(calls))


def per_call(run: Callable[[int], float], calls: int, repeats: int) -> float:
    """The median over ``repeats`` of seconds per call."""
    return statistics.median(run(calls) / calls for _ in range(repeats))


def concurrent_rate(
    monitor: RedisUsageMonitor,
    pairs: list[tuple[AccessToken, str]],
    loop: asyncio.AbstractEventLoop,
    total: int,
    concurrency: int = 64,
) -> float:
    """Observations per second with ``concurrency`` of them in flight at once."""

    failed = 0

    async def worker(offset: int) -> None:
        nonlocal failed
        for i in range(offset, total, concurrency):
            checked, client = pairs[i % len(pairs)]
            try:
                await monitor.observe(checked, client)
            except UsageMonitorError:
                failed += 1

    async def all_workers() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
        return time.perf_counter() - start

    rate = total / loop.run_until_complete(all_workers())
    if failed:
        _progress(f"{failed} of {total} concurrent observations failed")
    return rate


def costs(url: str, quick: bool) -> list[dict[str, Any]]:
    repeats = 3 if quick else 7
    fast_calls = 20_000 if quick else 100_000
    slow_calls = 500 if quick else 3_000
    pairs = population()
    loop = asyncio.new_event_loop()
    rows: list[dict[str, Any]] = []
    try:
        for label, policy in POLICIES.items():
            memory = MemoryUsageMonitor(policy)
            remote = RedisUsageMonitor(policy, url, namespace=f"bench-cost-{len(rows)}")
            for name, monitor, calls in (
                ("memory", memory, fast_calls),
                ("redis", remote, slow_calls),
            ):
                for side in ("async", "sync"):
                    if side == "async":
                        run = async_loop(monitor, pairs, loop)
                    else:
                        run = sync_loop(monitor, pairs)
                    run(min(calls, len(pairs)))  # warm up: every key exists
                    seconds = per_call(run, calls, repeats)
                    rows.append(
                        {"policy": label, "monitor": name, "side": side, "us": seconds * 1e6}
                    )
                    _progress(f"{label}, {name}, {side}: {seconds * 1e6:.2f} µs")
            rate = concurrent_rate(remote, pairs, loop, 5_000 if quick else 30_000)
            rows.append({"policy": label, "monitor": "redis", "side": "async x64", "rate": rate})
            _progress(f"{label}, redis, 64 concurrent: {rate:,.0f} observations/s")
            loop.run_until_complete(remote.aclose())
    finally:
        loop.close()
    return rows


# -- 2. memory -----------------------------------------------------------------------------


def memory(url: str, count: int) -> dict[str, Any]:
    policy = POLICIES["every limit"]
    pairs = [
        (token(f"{i:036d}", f"user-{i:06d}@example.com"), address)
        for i in range(count)
        for address in (f"198.51.{i % 200}.{i % 250}", f"2001:db8:{i:x}::1")
    ]
    monitor = MemoryUsageMonitor(policy, max_keys=2 * count + 1)
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    for checked, client in pairs:
        monitor.observe_sync(checked, client)
    held = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()
    inspect = redis.Redis.from_url(url)
    remote = RedisUsageMonitor(policy, url, namespace="bench-mem")
    inspect.memory_purge()
    before = int(inspect.info("memory")["used_memory"])
    for checked, client in pairs:
        remote.observe_sync(checked, client)
    after = int(inspect.info("memory")["used_memory"])
    keys = [key.decode() for key in inspect.scan_iter(match="bench-mem:*", count=1000)]
    sample = sorted(key for key in keys if key.endswith(f":{0:036d}"))
    remote.close()
    inspect.close()
    result = {
        "tokens": count,
        "memory_monitor_bytes_per_token": held / count,
        "redis_used_memory_bytes_per_token": (after - before) / count,
        "redis_keys_per_token": len(keys) / count,
        "sample_keys": sample,
    }
    _progress(
        f"memory: {held / count:.0f} B per token in memory, "
        f"{(after - before) / count:.0f} B per token in Redis"
    )
    return result


# -- the report -----------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def server_version(url: str) -> str:
    with redis.Redis.from_url(url) as client:
        info: dict[str, Any] = client.info("server")
    return str(info["redis_version"])


def report(data: dict[str, Any]) -> str:
    lines = [
        "# Usage monitors",
        "",
        f"Command: `{data['command']}`; redis-server {data['redis_version']} on 127.0.0.1, "
        f"Python {data['python']}.",
        "",
        f"## Cost of one observation ({TOKENS:,} tokens of {SUBJECTS:,} subjects, warm keys)",
        "",
        "| policy | memory async | memory sync | redis async | redis sync | redis, 64 concurrent |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in POLICIES:
        rows = {(r["monitor"], r["side"]): r for r in data["costs"] if r["policy"] == label}
        cells = [
            f"{rows[key]['us']:.2f} µs"
            for key in (
                ("memory", "async"),
                ("memory", "sync"),
                ("redis", "async"),
                ("redis", "sync"),
            )
        ]
        cells.append(f"{rows[('redis', 'async x64')]['rate']:,.0f} /s")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    mem = data["memory"]
    lines += [
        "",
        f"## Memory per tracked token ({mem['tokens']:,} tokens, each its own subject, "
        "two addresses, every limit)",
        "",
        f"- memory monitor: {mem['memory_monitor_bytes_per_token']:.0f} B per token "
        "(token and subject keys; tracemalloc)",
        f"- Redis: {mem['redis_used_memory_bytes_per_token']:.0f} B per token "
        f"(used_memory), {mem['redis_keys_per_token']:.1f} keys per token and window",
        "",
        "Keys of one token: " + ", ".join(f"`{key}`" for key in mem["sample_keys"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    parser.add_argument("--tokens", type=int, help="tokens for the memory figure (20000)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    count = args.tokens or (2_000 if args.quick else 20_000)
    with redis_server() as url:
        data: dict[str, Any] = {
            "command": " ".join(["python", "benchmarks/usage.py", *(argv or sys.argv[1:])]),
            "redis_version": server_version(url),
            "python": sys.version.split()[0],
        }
        data["costs"] = costs(url, args.quick)
        data["memory"] = memory(url, count)
    print(report(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
