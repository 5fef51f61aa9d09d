"""Load: the example API under uvicorn, driven by wrk at saturation, with faults of the trade.

Three phases, each bounded in time, against the example API (``examples/starlette_app.py``)
behind bearerguard with a ``RedisRevocationStore`` (a private ``redis-server``) and a
``DevIssuer``'s JWKS, served by uvicorn (one worker, uvloop, httptools) on 127.0.0.1:

1. **Saturation** (``--duration``, 20 s): ``wrk`` sends valid tokens (a pool it re-reads
   every second) as fast as the server answers, while a side thread publishes a new signing
   key, switches the pool to it, retires the old key, and revokes tokens (taking them out of
   wrk's pool first). A separate verifier sends revoked, forged, expired and retired-key
   tokens meanwhile: none may get 200. Reported: requests/s, latency percentiles, status
   counts (zero 5xx), the server's CPU time per request, how soon each revocation took
   effect, and what the verifier saw.
2. **Flood of distinct invalid tokens** (``--flood-seconds``, 20 s): random junk, random
   ``kid`` headers, and the issuer's real header with random signatures, every one new. The
   server's RSS (``VmRSS``) is sampled throughout: it must stay flat (no cache grows).
3. **Distinct valid tokens** (``--distinct`` tokens, ``--distinct-seconds``): more distinct
   valid tokens than the verification cache holds (``cache_size`` 10,000): RSS grows while
   the cache fills, then stays flat.

    python3 scripts/dev.py load                       # about 90 seconds
    python3 scripts/dev.py load --duration 10 --flood-seconds 10 --distinct 0

Needs wrk (``apt-get install wrk``) and redis-server. The server is pinned to one core and
wrk to another with ``taskset`` when there are two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    PATH,
    SCOPE,
    ApiServer,
    ApiSettings,
    IssuerHost,
    RedisProcess,
    machine_description,
)

from bearerguard.revocation import RedisRevocationStore
from bearerguard.testing import DevIssuer, SigningKey
from benchmarks.noise import CpuMeter, process_cpu_seconds

JWKS_TTL = 2
COOLDOWN = 1.0
RETIRE_GRACE = JWKS_TTL + COOLDOWN + 1.5  # a retired key's tokens may verify this long
POOL_SIZE = 64

# -- wrk scripts ------------------------------------------------------------------------------

_LUA_COMMON = r"""
statuses = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  io.write("STATUSES")
  for k, v in pairs(total) do io.write(string.format(" %d=%d", k, v)) end
  io.write("\n")
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("PCT %g %d\n", p, latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format("SUMMARY %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.timeout))
end
"""

# Valid tokens from a file the driver rewrites; re-read once a second.
LUA_POOL = (
    _LUA_COMMON
    + r"""
local path = os.getenv("BG_TOKENS")
local tokens = {}
local loaded_at = -1
local i = 0
local function load()
  local f = io.open(path, "r")
  if f then
    local fresh = {}
    for line in f:lines() do if #line > 0 then fresh[#fresh + 1] = line end end
    f:close()
    if #fresh > 0 then tokens = fresh end
  end
  loaded_at = os.time()
end
function init(args) math.randomseed(os.time()); i = math.random(1, 997); load() end
function request()
  if os.time() ~= loaded_at then load() end
  i = i + 1
  local token = tokens[(i % #tokens) + 1]
  return wrk.format("GET", "/items", {["Authorization"] = "Bearer " .. token})
end
"""
)

# Every request a token never seen before: junk, a random kid, or the real header with a
# random signature of the right length (which costs the server an RSA verification).
LUA_FLOOD = (
    _LUA_COMMON
    + r"""
local A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local known_header = os.getenv("BG_HEADER")
local n = 0
local function rnd(len)
  local t = {}
  for k = 1, len do local c = math.random(1, 64); t[k] = A:sub(c, c) end
  return table.concat(t)
end
local function b64url(data)
  local out = {}
  for k = 1, #data, 3 do
    local a, b, c = data:byte(k, k + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local function ch(x) return A:sub(x + 1, x + 1) end
    out[#out + 1] = ch(math.floor(v / 262144) % 64) .. ch(math.floor(v / 4096) % 64)
    if b then out[#out + 1] = ch(math.floor(v / 64) % 64) end
    if c then out[#out + 1] = ch(v % 64) end
  end
  return table.concat(out)
end
local function signature() return rnd(341) .. ("AQgw"):sub(math.random(1, 4)):sub(1, 1) end
function init(args) math.randomseed(os.time() * 1000 + math.random(1, 1000)) end
function request()
  n = n + 1
  local kind = n % 3
  local token
  if kind == 0 then
    token = rnd(48) .. "." .. rnd(200) .. "." .. rnd(344)
  elseif kind == 1 then
    local header = '{"alg":"RS256","typ":"at+jwt","kid":"' .. rnd(16) .. '"}'
    token = b64url(header) .. "." .. rnd(200) .. "." .. signature()
  else
    token = known_header .. "." .. rnd(200) .. "." .. signature()
  end
  return wrk.format("GET", "/items", {["Authorization"] = "Bearer " .. token})
end
"""
)

# Distinct valid tokens from a file, each thread walking its own stretch.
LUA_DISTINCT = (
    _LUA_COMMON
    + r"""
local tokens = {}
local i = 0
function init(args)
  for line in io.lines(os.getenv("BG_TOKENS")) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  math.randomseed(os.time()); i = math.random(0, #tokens - 1)
end
function request()
  i = i + 1
  return wrk.format("GET", "/items",
    {["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1]})
end
"""
)


@dataclass
class WrkResult:
    """What one wrk run reported."""

    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    socket_errors: int = 0
    server_cpu_us: float | None = None
    utilization: float | None = None
    others: float | None = None
    rss_kb: list[tuple[float, int]] = field(default_factory=list)
    raw: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def five_xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def _pinning() -> tuple[list[str], list[str], str]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    taskset = shutil.which("taskset")
    if taskset is None or len(cpus) < 2:
        return [], [], "not pinned (needs taskset and two cores)"
    return (
        [taskset, "-c", str(cpus[0])],
        [taskset, "-c", str(cpus[1])],
        f"server on CPU {cpus[0]}, wrk on CPU {cpus[1]} (taskset)",
    )


def run_wrk(
    api: ApiServer,
    script: str,
    *,
    seconds: int,
    connections: int,
    pin: list[str],
    env: dict[str, str],
) -> WrkResult:
    """Run wrk once, sampling the server's RSS every half second; parse its report."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    if api.process is None:
        raise RuntimeError("the API server is not running")
    pid = api.process.pid
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
        lua = file.name
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            rss = api.rss_kb()
            if rss is not None:
                samples.append((time.monotonic() - started, rss))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    cpu_before = process_cpu_seconds(pid)
    meter = CpuMeter(lambda: process_cpu_seconds(pid) or 0.0)
    sampler.start()
    try:
        done = subprocess.run(
            [*pin, wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua,
             f"{api.url}{PATH}"],
            capture_output=True, text=True, timeout=seconds + 60, check=False,
            env={**os.environ, **env},
        )  # fmt: skip
    finally:
        stop.set()
        sampler.join()
        Path(lua).unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    cpu_after = process_cpu_seconds(pid)
    result = WrkResult(raw=done.stdout + done.stderr, rss_kb=samples, others=meter.others())
    for line in done.stdout.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "STATUSES":
            result.statuses = Counter(
                {int(k): int(v) for k, v in (part.split("=") for part in parts[1:])}
            )
        elif parts[0] == "PCT":
            result.percentiles_ms[f"p{parts[1]}"] = int(parts[2]) / 1000
        elif parts[0] == "SUMMARY":
            result.requests = int(parts[1])
            result.seconds = int(parts[2]) / 1e6
            result.socket_errors = sum(int(x) for x in parts[3:7])
    if done.returncode != 0 or not result.requests:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{result.raw[-2000:]}")
    if cpu_before is not None and cpu_after is not None:
        result.server_cpu_us = (cpu_after - cpu_before) / result.requests * 1e6
        result.utilization = (cpu_after - cpu_before) / elapsed
    return result


# -- the side activity during the saturation phase -------------------------------------------


PROPAGATION_BOUND_MS = 100


@dataclass
class Timeline:
    """What the side thread did, when (seconds since the phase started)."""

    events: list[tuple[float, str]] = field(default_factory=list)
    propagation_ms: list[float] = field(default_factory=list)
    """For each revocation, from the revoking call's return to the 401 (a round trip included)."""
    late_accepts_ms: list[float] = field(default_factory=list)
    """When each request that still got 200 was sent, after the revoking call returned."""
    attempts: list[int] = field(default_factory=list)
    """For each revocation, the requests it took to see a 401 (1: the very next one)."""
    revoked: list[str] = field(default_factory=list)
    old_key: list[str] = field(default_factory=list)
    retired_at: float | None = None

    def note(self, started: float, what: str) -> None:
        self.events.append((time.monotonic() - started, what))


def _write_pool(path: Path, tokens: list[str]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text("\n".join(tokens) + "\n")
    os.replace(temporary, path)  # wrk never reads a half-written file


def _sign_with(issuer: DevIssuer, key: SigningKey, n: int) -> list[str]:
    headers = {"kid": key.kid, "typ": "at+jwt"}
    return [
        jwt.encode(issuer.claims(scopes=[SCOPE], expires_in=3600), key.private_key,
                   algorithm=key.algorithm, headers=headers)
        for _ in range(n)
    ]  # fmt: skip


def side_activity(
    *,
    host: IssuerHost,
    admin: RedisRevocationStore,
    api_url: str,
    pool_path: Path,
    pool: list[str],
    duration: float,
    timeline: Timeline,
    started: float,
) -> None:
    """Rotate the signing key and revoke tokens while wrk runs (bounded by ``duration``)."""
    issuer = host.issuer
    old = issuer.key("RS256")
    plan = [
        (0.20, "rotate"),
        (0.25, "revoke"),
        (0.35, "switch"),
        (0.45, "revoke"),
        (0.50, "retire"),
        (0.65, "revoke"),
        (0.85, "revoke"),
    ]
    with httpx.Client(base_url=api_url, timeout=5.0) as client:
        for at, action in plan:
            delay = started + at * duration - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if action == "rotate":
                new = issuer.rotate("RS256")  # published; the pool keeps old-key tokens
                timeline.note(started, f"published a new signing key {new.kid}")
            elif action == "switch":
                timeline.old_key = list(pool[:8])
                pool[:] = [issuer.mint(scopes=[SCOPE], expires_in=3600) for _ in range(POOL_SIZE)]
                _write_pool(pool_path, pool)
                timeline.note(started, "wrk's pool switched to tokens signed by the new key")
            elif action == "retire":
                issuer.retire(old.kid)
                timeline.retired_at = time.monotonic()
                timeline.note(started, f"retired the old key {old.kid}")
            else:
                victims, pool[:] = pool[:4], pool[4:]
                _write_pool(pool_path, pool)
                time.sleep(1.5)  # wrk re-reads its pool every second: it no longer sends them
                for token in victims:
                    claims = jwt.decode(token, options={"verify_signature": False})
                    admin.revoke_token_sync(claims["jti"], claims["exp"], issuer=issuer.url)
                    revoked_at = time.monotonic()
                    # Refused as soon as the server's mirror has the revocation (pub/sub).
                    attempt = 0
                    for attempt in range(1, 501):  # noqa: B007 - the count is the result
                        headers = {"Authorization": f"Bearer {token}"}
                        sent_ms = (time.monotonic() - revoked_at) * 1000
                        if client.get(PATH, headers=headers).status_code == 401:
                            break
                        timeline.late_accepts_ms.append(sent_ms)
                    timeline.propagation_ms.append((time.monotonic() - revoked_at) * 1000)
                    timeline.attempts.append(attempt)
                    timeline.revoked.append(token)
                timeline.note(started, f"revoked {len(victims)} tokens of wrk's pool")


async def verify(
    *,
    api_url: str,
    classes: dict[str, list[str]],
    timeline: Timeline,
    stop: threading.Event,
    seen: dict[str, Counter[int]],
    wrong: list[str],
) -> None:
    """Send tokens that must be refused (and a valid one), a few dozen a second."""
    turn = 0
    async with httpx.AsyncClient(base_url=api_url, timeout=10.0) as client:
        while not stop.is_set():
            now = time.monotonic()
            pools = dict(classes)
            pools["revoked"] = list(timeline.revoked)
            retired = timeline.retired_at
            if retired is not None and now > retired + RETIRE_GRACE:
                pools["retired key"] = timeline.old_key
            kinds = [kind for kind, tokens in pools.items() if tokens]
            kind = kinds[turn % len(kinds)]
            token = pools[kind][(turn // len(kinds)) % len(pools[kind])]
            turn += 1
            try:
                status = (
                    await client.get(PATH, headers={"Authorization": f"Bearer {token}"})
                ).status_code
            except httpx.HTTPError:
                status = 0
            seen.setdefault(kind, Counter())[status] += 1
            if kind != "valid (ES256)" and status == 200:
                wrong.append(kind)
            await asyncio.sleep(0.02)


# -- the report -------------------------------------------------------------------------------


def _rss_curve(samples: list[tuple[float, int]], every: float = 2.0) -> str:
    shown: list[str] = []
    next_at = 0.0
    for at, rss in samples:
        if at >= next_at:
            shown.append(f"{at:.0f}s {rss / 1024:.1f}")
            next_at = at + every
    return ", ".join(shown)


def _flatness(samples: list[tuple[float, int]]) -> tuple[float, float, float]:
    """RSS (MiB) at the start, at a quarter of the run, and at the end."""
    if not samples:
        return 0.0, 0.0, 0.0
    quarter = samples[len(samples) // 4][1]
    return samples[0][1] / 1024, quarter / 1024, samples[-1][1] / 1024


def _statuses(counter: Counter[int]) -> str:
    return " ".join(f"{status or 'none'}×{n}" for status, n in sorted(counter.items())) or "-"


def render_wrk(title: str, result: WrkResult) -> list[str]:
    pct = result.percentiles_ms
    start, quarter, end = _flatness(result.rss_kb)
    return [
        f"### {title}",
        "",
        "| requests | req/s | p50 | p90 | p99 | p99.9 | statuses | socket errors | 5xx | "
        "server CPU µs/req | util | others' CPU |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        f"| {result.requests} | {result.rate:.0f} | {pct.get('p50', 0):.2f} ms | "
        f"{pct.get('p90', 0):.2f} ms | {pct.get('p99', 0):.2f} ms | {pct.get('p99.9', 0):.2f} ms "
        f"| {_statuses(result.statuses)} | {result.socket_errors} | {result.five_xx} | "
        f"{result.server_cpu_us or 0:.0f} | {result.utilization or 0:.2f} | "
        f"{(result.others or 0) * 100:.0f}% |",
        "",
        f"Server RSS (MiB): {start:.1f} at the start, {quarter:.1f} at a quarter of the run, "
        f"{end:.1f} at the end; every 2 s: {_rss_curve(result.rss_kb)}",
        "",
    ]


@dataclass
class Run:
    """The servers of a load run and where its token files go."""

    redis: RedisProcess
    host: IssuerHost
    admin: RedisRevocationStore
    api: ApiServer
    workdir: Path
    wrk_pin: list[str]
    connections: int
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> DevIssuer:
        return self.host.issuer

    def wrk(self, script: str, seconds: int, env: dict[str, str]) -> WrkResult:
        return run_wrk(
            self.api, script, seconds=seconds, connections=self.connections, pin=self.wrk_pin,
            env=env,
        )  # fmt: skip


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def saturation(run: Run, duration: int) -> str:
    """Phase 1; returns a valid token that stays valid (for checks after the phases)."""
    _progress(f"phase 1: wrk for {duration} s with rotation and revocations ...")
    issuer = run.issuer
    pool = [issuer.mint(scopes=[SCOPE], expires_in=3600) for _ in range(POOL_SIZE)]
    pool_path = run.workdir / "pool.txt"
    _write_pool(pool_path, pool)
    run.api.start(pool[0])
    steady = issuer.mint(scopes=[SCOPE], expires_in=3600, algorithm="ES256")
    classes = {
        "valid (ES256)": [steady],
        "forged": [issuer.mint_forged(scopes=[SCOPE]), issuer.mint_forged(kid="nope")],
        "expired": [issuer.mint_expired(scopes=[SCOPE])],
        "wrong audience": [issuer.mint_for_audience("https://other.example")],
    }
    timeline = Timeline()
    seen: dict[str, Counter[int]] = {}
    wrong: list[str] = []
    stop = threading.Event()
    checks = verify(
        api_url=run.api.url, classes=classes, timeline=timeline, stop=stop, seen=seen, wrong=wrong
    )
    verifier = threading.Thread(target=asyncio.run, args=(checks,), daemon=True)
    rss_before = run.api.rss_kb()
    side = threading.Thread(
        target=side_activity,
        kwargs={
            "host": run.host, "admin": run.admin, "api_url": run.api.url,
            "pool_path": pool_path, "pool": pool, "duration": duration,
            "timeline": timeline, "started": time.monotonic(),
        },
        daemon=True,
    )  # fmt: skip
    verifier.start()
    side.start()
    result = run.wrk(LUA_POOL, duration, {"BG_TOKENS": str(pool_path)})
    side.join(timeout=30)
    stop.set()
    verifier.join(timeout=30)
    lines = run.lines
    lines += render_wrk(
        f"1. Saturation: {duration} s, {run.connections} connections, valid tokens while keys "
        "rotate and tokens are revoked",
        result,
    )
    lines += [f"RSS before the phase: {(rss_before or 0) / 1024:.1f} MiB.", "", "Timeline:"]
    lines += [f"- {at:5.1f} s: {what}" for at, what in timeline.events]
    if timeline.propagation_ms:
        lines += [
            "",
            f"Revocations: {len(timeline.propagation_ms)}; requests needed after the revoking "
            f"call returned until a 401: at most {max(timeline.attempts)} (1 means the very "
            "next request was refused); from the call's return to that 401: "
            f"{min(timeline.propagation_ms):.1f} to {max(timeline.propagation_ms):.1f} ms "
            "(one round trip through the saturated server); still let in: "
            + (
                ", ".join(f"one sent {ms:.1f} ms after" for ms in timeline.late_accepts_ms)
                or "none"
            )
            + ".",
        ]
    lines += ["", "The verifier's requests meanwhile (status × count):", ""]
    lines += [f"- {kind}: {_statuses(counter)}" for kind, counter in sorted(seen.items())]
    lines += ["", f"Wrongly accepted: {len(wrong)}.", ""]
    if wrong:
        run.failures.append(f"wrongly accepted: {Counter(wrong)}")
    # The revocation is made by another process (an admin) and reaches the server's mirror by
    # pub/sub: the server may still answer one request in flight meanwhile. The promise is
    # enforcement on every instance within 100 ms (docs/deployment.md): no request sent later
    # than that may be let in. When the request went out decides, not when its answer came
    # back: on a busy machine one round trip through the saturated server can take longer.
    if any(ms > PROPAGATION_BOUND_MS for ms in timeline.late_accepts_ms):
        run.failures.append(
            f"a revoked token sent more than {PROPAGATION_BOUND_MS} ms after its revocation "
            "was accepted"
        )
    if result.five_xx or result.socket_errors:
        run.failures.append("phase 1: 5xx or socket errors")
    non_200 = sum(n for status, n in result.statuses.items() if status != 200)
    if non_200:
        lines += [
            f"wrk saw {non_200} answers other than 200: tokens still in flight when they were "
            "taken out of its pool, or a key switched before it was seen.",
            "",
        ]
    return steady


def flood(run: Run, seconds: int, steady: str) -> None:
    """Phase 2: distinct invalid tokens; RSS must stay flat; a valid token still passes."""
    _progress(f"phase 2: a flood of distinct invalid tokens for {seconds} s ...")
    header = run.issuer.mint(scopes=[SCOPE]).split(".")[0]
    result = run.wrk(LUA_FLOOD, seconds, {"BG_HEADER": header})
    run.lines += render_wrk(
        f"2. Flood: {seconds} s of distinct invalid tokens (junk, random kid, real header with a "
        "random signature, a third each)",
        result,
    )
    if result.five_xx or 200 in result.statuses:
        run.failures.append("phase 2: a 5xx or a 200")
    with httpx.Client(base_url=run.api.url, timeout=5.0) as client:
        after = client.get(PATH, headers={"Authorization": f"Bearer {steady}"}).status_code
    run.lines += [f"A valid token right after the flood: {after}.", ""]
    if after != 200:
        run.failures.append(f"a valid token after the flood: {after}")


def distinct(run: Run, count: int, seconds: int, cache_size: int) -> None:
    """Phase 3: more distinct valid tokens than the verification cache holds."""
    _progress(f"phase 3: minting {count} distinct ES256 tokens ...")
    path = run.workdir / "distinct.txt"
    tokens = (
        run.issuer.mint(scopes=[SCOPE], expires_in=3600, algorithm="ES256") for _ in range(count)
    )
    path.write_text("\n".join(tokens) + "\n")
    result = run.wrk(LUA_DISTINCT, seconds, {"BG_TOKENS": str(path)})
    run.lines += render_wrk(
        f"3. Distinct valid tokens: {count} tokens for {seconds} s (the verification cache "
        f"holds {cache_size})",
        result,
    )
    if result.five_xx:
        run.failures.append("phase 3: 5xx")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=20, help="saturation phase, seconds")
    parser.add_argument("--flood-seconds", type=int, default=20)
    parser.add_argument("--distinct", type=int, default=25_000, help="0 skips phase 3")
    parser.add_argument("--distinct-seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--output", type=Path, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    server_pin, wrk_pin, pinned = _pinning()
    started = time.monotonic()
    redis = RedisProcess().start()
    host = IssuerHost(algorithms=("RS256", "ES256"), jwks_max_age=JWKS_TTL)
    settings = ApiSettings(
        issuer=host.issuer.url,
        jwks_uri=host.issuer.jwks_uri,
        redis_url=redis.url,
        namespace="load",
        jwks_ttl=JWKS_TTL,
        cooldown=COOLDOWN,
    )
    run = Run(
        redis=redis,
        host=host,
        admin=RedisRevocationStore(redis.url, namespace="load", mirror=False),
        api=ApiServer(settings, pin=server_pin),
        workdir=Path(tempfile.mkdtemp(prefix="bearerguard-load-")),
        wrk_pin=wrk_pin,
        connections=args.connections,
    )
    try:
        steady = saturation(run, args.duration)
        flood(run, args.flood_seconds, steady)
        if args.distinct:
            distinct(run, args.distinct, args.distinct_seconds, settings.cache_size)
    finally:
        log = run.api.log_text()
        run.api.close()
        run.admin.close()
        host.close()
        redis.close()
        shutil.rmtree(run.workdir, ignore_errors=True)
    lines = run.lines
    defects = [line for line in log.splitlines() if "Traceback" in line or "unexpected" in line]
    if defects:
        run.failures.append("server log shows defects")
        lines += ["Server log lines showing defects:", *defects[:20], ""]
    command = "python3 scripts/dev.py load " + " ".join(sys.argv[1:] if argv is None else argv)
    total = time.monotonic() - started
    lines += [f"Command: `{command.strip()}`; {pinned}; total {total:.0f} s.", ""]
    lines += [f"- {name}: {value}" for name, value in machine_description().items()]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)
    if run.failures:
        print("FAILED: " + "; ".join(run.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
