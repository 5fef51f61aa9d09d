"""Fault injection against real servers: what the API answers when its dependencies fail.

The example API (``examples/starlette_app.py``) runs under uvicorn on 127.0.0.1, behind
bearerguard with a ``RedisRevocationStore`` on a private ``redis-server`` and keys from a
``DevIssuer``'s JWKS. A steady client load (asyncio + httpx, a few workers, bounded) sends
valid tokens, revoked tokens and forged tokens to ``GET /items`` while one fault at a time is
injected into the issuer or into Redis, then healed. For each scenario the run records what
the API answered during and after the fault, whether anything was accepted that must not be
(a revoked or forged token answered 200: must be 0), any 5xx other than the intended 503, how
long after the fault started valid tokens were refused (fail closed), and how long after it
ended the first valid token got 200 again (recovery).

    python3 scripts/dev.py faults                     # every scenario, about 2 minutes
    python3 scripts/dev.py faults --only redis_pause  # one scenario
    python3 scripts/dev.py faults --fault-seconds 3 --output faults.md

The guard is configured so that faults show within seconds: the JWKS is fresh for 1 s, a
failed fetch is retried once a second, stale keys serve for 2 s past freshness, a fetch times
out after 1 s, and the Redis mirror is trusted for 1 s without word from Redis. Every run is
bounded: each scenario lasts its fault plus at most ``--recovery-limit`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
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
    temporary_file,
)

from bearerguard.revocation import RedisRevocationStore
from bearerguard.testing import Override, SigningKey

JWKS_TTL = 1
COOLDOWN = 1.0
MAX_STALE = 2.0
FETCH_TIMEOUT = 1.0
FAILURE_TIMEOUT = 1.0
REDIS_TIMEOUT = 0.5
# After a key is retired, tokens it signed may verify until the next refresh notices:
# at most the JWKS freshness, plus a cooldown, plus one fetch. Beyond that a 200 is wrong.
RETIRE_GRACE = JWKS_TTL + COOLDOWN + FETCH_TIMEOUT + 0.5
MUST_REFUSE = ("revoked", "forged")


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it was sent, its token class, the status (0: no answer), latency."""

    sent: float
    kind: str
    status: int
    latency: float


class Load:
    """A few async workers sending ``GET /items`` with tokens drawn from pools, round-robin."""

    def __init__(self, url: str, pools: dict[str, list[str]], workers: int, pause: float) -> None:
        self.url = url
        self.pools = pools
        self.workers = workers
        self.pause = pause
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()

    async def _worker(self, client: httpx.AsyncClient, offset: int) -> None:
        turn = offset
        while not self._stop.is_set():
            kinds = [kind for kind, pool in self.pools.items() if pool]
            # Valid tokens twice as often as each other class: the API's real traffic.
            schedule = ["valid", *kinds] if "valid" in kinds else kinds
            kind = schedule[turn % len(schedule)]
            pool = self.pools[kind]
            token = pool[(turn // len(schedule)) % len(pool)]
            turn += 1
            sent = time.monotonic()
            try:
                response = await client.get(PATH, headers={"Authorization": f"Bearer {token}"})
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            self.samples.append(Sample(sent, kind, status, time.monotonic() - sent))
            await asyncio.sleep(self.pause)

    async def run_until_stopped(self) -> None:
        limits = httpx.Limits(max_connections=self.workers, max_keepalive_connections=self.workers)
        async with httpx.AsyncClient(base_url=self.url, timeout=10.0, limits=limits) as client:
            await asyncio.gather(*(self._worker(client, n) for n in range(self.workers)))

    def stop(self) -> None:
        self._stop.set()


@dataclass
class World:
    """The servers of a run, and the token pools the load draws from."""

    redis: RedisProcess
    issuer: IssuerHost
    api: ApiServer
    admin: RedisRevocationStore
    pools: dict[str, list[str]]
    audit_path: Path
    notes: list[str] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def mint_valid(self, n: int = 8) -> list[str]:
        return [self.issuer.issuer.mint(scopes=[SCOPE], expires_in=3600) for _ in range(n)]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A fault: how to inject it, how to heal it, and whether valid tokens may see 503."""

    key: str
    label: str
    inject: Callable[[World], None]
    heal: Callable[[World], None]
    outage_expected: bool
    duration: float | None = None
    """How long the fault lasts when it is not ``--fault-seconds`` (``inject`` blocks)."""


def _override(world: World, override: Override) -> None:
    issuer = world.issuer.issuer
    issuer.overrides[issuer.jwks_path] = override


def _clear_override(world: World) -> None:
    issuer = world.issuer.issuer
    issuer.overrides.pop(issuer.jwks_path, None)


def _jwks_garbage(world: World) -> None:
    _override(world, Override(body=b"<html><body>502 Bad Gateway</body></html>{{{"))


def _jwks_slow(world: World) -> None:
    body = world.issuer.issuer.jwks_bytes()
    _override(world, Override(body=body, delay=FETCH_TIMEOUT + 1.5))


def _jwks_oversized(world: World) -> None:
    # 1 MiB: twice FetchPolicy's default max_bytes; a valid JSON document beyond the limit.
    _override(world, Override(body=b'{"keys": [' + b" " * (1 << 20) + b"]}"))


def _jwks_content_type(world: World) -> None:
    body = world.issuer.issuer.jwks_bytes()
    _override(
        world,
        Override(
            body=body,
            headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "max-age=1"},
        ),
    )


def _jwks_http_500(world: World) -> None:
    _override(world, Override(status=500, body=b'{"error": "internal"}'))


def _sign_with(world: World, key: SigningKey) -> list[str]:
    issuer = world.issuer.issuer
    headers = {"kid": key.kid, "typ": "at+jwt"}
    return [
        jwt.encode(issuer.claims(scopes=[SCOPE], expires_in=3600), key.private_key,
                   algorithm=key.algorithm, headers=headers)
        for _ in range(8)
    ]  # fmt: skip


def _rotate(world: World) -> None:
    """The way identity providers rotate: publish the new key, sign with it once every cache
    has had time to see it, then retire the old key (its tokens must stop verifying)."""
    issuer = world.issuer.issuer
    old = issuer.key()
    issuer.rotate(old.algorithm)  # published now; the pools still hold old-key tokens
    world.pools["valid"] = _sign_with(world, old)
    time.sleep(JWKS_TTL + FETCH_TIMEOUT + 0.5)
    world.pools["old_key"] = world.pools["valid"]
    world.pools["valid"] = world.mint_valid()
    time.sleep(2.0)
    issuer.retire(old.kid)
    world.marks["retired"] = time.monotonic()


def _rotate_abruptly(world: World) -> None:
    """Sign with a new key the moment it is published; retire the old one 2 s later."""
    issuer = world.issuer.issuer
    old = issuer.key()
    world.pools["old_key"] = world.pools["valid"]
    issuer.rotate(old.algorithm)
    world.pools["valid"] = world.mint_valid()
    time.sleep(2.0)
    issuer.retire(old.kid)
    world.marks["retired"] = time.monotonic()


def _redis_stop(world: World) -> None:
    world.redis.stop()


def _redis_start(world: World) -> None:
    world.redis.start()


def _redis_pause(world: World) -> None:
    world.redis.pause()


def _redis_resume(world: World) -> None:
    world.redis.resume()


_slow_stop = threading.Event()


def _redis_slow(world: World) -> None:
    """Stall Redis for 0.4 s out of every 0.7 s (DEBUG SLEEP), from a thread, until healed."""
    _slow_stop.clear()

    def stall() -> None:
        while not _slow_stop.is_set():
            try:
                world.redis.stall(0.4)
            except Exception as exc:  # noqa: BLE001 - noted, the scenario goes on
                world.notes.append(f"redis_slow: DEBUG SLEEP failed: {exc!r}")
                return
            _slow_stop.wait(0.3)

    threading.Thread(target=stall, name="redis-slow", daemon=True).start()


def _redis_slow_heal(world: World) -> None:
    _slow_stop.set()


def _redis_stall(world: World) -> None:
    world.redis.stall(2.5)


def _nothing(world: World) -> None:
    return None


SCENARIOS = (
    Scenario("jwks_down", "JWKS server down (connection refused)", lambda w: w.issuer.down(),
             lambda w: w.issuer.back_up(), outage_expected=True),
    Scenario("jwks_slow", f"JWKS answers after {FETCH_TIMEOUT + 1.5:g} s "
             f"(fetch timeout {FETCH_TIMEOUT:g} s)", _jwks_slow, _clear_override,
             outage_expected=True),
    Scenario("jwks_garbage", "JWKS answers 200 with garbage", _jwks_garbage, _clear_override,
             outage_expected=True),
    Scenario("jwks_oversized", "JWKS answers a 1 MiB body (limit 512 KiB)", _jwks_oversized,
             _clear_override, outage_expected=True),
    Scenario("jwks_http_500", "JWKS answers 500", _jwks_http_500, _clear_override,
             outage_expected=True),
    Scenario("jwks_content_type", "JWKS served as text/html", _jwks_content_type,
             _clear_override, outage_expected=False),
    Scenario("key_rotation", "key rotated mid-load: published, used 2.5 s later, old key "
             "retired 2 s after that", _rotate, _nothing, outage_expected=False),
    Scenario("key_rotation_abrupt", "key rotated mid-load and used at once, old key retired "
             "2 s later", _rotate_abruptly, _nothing, outage_expected=False),
    Scenario("redis_restart", "Redis stopped, then restarted", _redis_stop, _redis_start,
             outage_expected=True),
    Scenario("redis_pause", "Redis frozen (SIGSTOP), then resumed", _redis_pause,
             _redis_resume, outage_expected=True),
    Scenario("redis_slow", "Redis stalls 0.4 s of every 0.7 s (DEBUG SLEEP)", _redis_slow,
             _redis_slow_heal, outage_expected=False),
    Scenario("redis_stall", "Redis stalls once for 2.5 s (DEBUG SLEEP)", _redis_stall,
             _nothing, outage_expected=True, duration=2.5),
)  # fmt: skip


@dataclass
class Result:
    """What one scenario showed."""

    key: str
    label: str
    fault_seconds: float
    during: dict[str, Counter[int]]
    after: dict[str, Counter[int]]
    wrongly_accepted: int
    other_5xx: int
    no_answer: int
    fail_closed_after: float | None
    recovered_after: float | None
    valid_p99_ms_during: float | None
    audit_events: int
    requests: int
    retired_last_200: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def flaps(self) -> int:
        """Valid tokens refused after the recovery (reported, not a failure of the run)."""
        return sum(n for status, n in self.after.get("valid", {}).items() if status != 200)

    @property
    def ok(self) -> bool:
        """The invariants: nothing accepted wrongly, no 5xx but 503, every request answered
        and audited once, and valid tokens accepted again after the fault."""
        return (
            self.wrongly_accepted == 0
            and self.other_5xx == 0
            and self.no_answer == 0
            and self.recovered_after is not None
            and self.audit_events == self.requests
        )


def _count(samples: list[Sample]) -> dict[str, Counter[int]]:
    table: dict[str, Counter[int]] = {}
    for sample in samples:
        table.setdefault(sample.kind, Counter())[sample.status] += 1
    return table


def _audit_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as file:
        return sum(1 for _ in file)


def recovery(samples: list[Sample], healed: float) -> tuple[float | None, float | None]:
    """When valid tokens were accepted again after the fault ended at ``healed``.

    Returns ``(recovered, back)``: the seconds from ``healed`` to the sending of the first
    valid token answered 200, and the instant that answer was received, from which every
    request sent is judged "after" the recovery (nothing may flap from then on);
    ``(None, None)`` until then.

    Not from the sending of that request: the server decides a request some time after it
    is sent, and not in the order sent (the one that starts a JWKS refresh waits for the
    fetch; a starved client writes a request late), so a request sent after it may have been
    decided before the recovery, and answered 503 rightly. A request sent once its 200 is
    received reaches the one server process after it decided that 200: a refusal then is a
    flap.
    """
    accepted = [s for s in samples if s.sent >= healed and s.kind == "valid" and s.status == 200]
    if not accepted:
        return None, None
    first = min(accepted, key=lambda s: s.sent + s.latency)
    return first.sent - healed, first.sent + first.latency


async def _wait_healthy(world: World, limit: float) -> bool:
    """Wait until a valid token gets 200 (between scenarios)."""
    token = world.pools["valid"][0]
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient(base_url=world.api.url, timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(PATH, headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 200:
                return True
            await asyncio.sleep(0.1)
    return False


async def run_scenario(
    world: World,
    scenario: Scenario,
    *,
    fault_seconds: float,
    recovery_limit: float,
    workers: int,
    pause: float,
    observe_after: float = 2.0,
) -> Result:
    """Inject one fault under load, heal it, and measure (bounded in time)."""
    if not await _wait_healthy(world, recovery_limit):
        world.notes.append(f"{scenario.key}: the API was not healthy before the scenario")
    world.marks.clear()
    world.pools.pop("old_key", None)  # left by a rotation scenario
    notes_before = len(world.notes)
    audit_before = _audit_lines(world.audit_path)
    load = Load(world.api.url, world.pools, workers, pause)
    runner = asyncio.create_task(load.run_until_stopped())
    await asyncio.sleep(1.0)  # baseline
    fault_start = time.monotonic()
    await asyncio.to_thread(scenario.inject, world)
    lasting = fault_seconds if scenario.duration is None else scenario.duration
    remaining = lasting - (time.monotonic() - fault_start)
    await asyncio.sleep(max(0.0, remaining))
    await asyncio.to_thread(scenario.heal, world)
    healed = time.monotonic()
    recovered = back = None
    deadline = healed + recovery_limit
    while time.monotonic() < deadline:
        recovered, back = recovery(load.samples, healed)
        if back is not None and time.monotonic() >= back + observe_after:
            break  # recovered, and some "after" observed
        await asyncio.sleep(0.1)
    load.stop()
    await runner
    samples = load.samples
    await asyncio.sleep(0.2)  # the last audit lines reach the file
    audit_events = _audit_lines(world.audit_path) - audit_before

    during = [s for s in samples if fault_start <= s.sent < healed]
    # "After" starts once a valid token's 200 is received: from then on nothing may flap.
    after = [s for s in samples if s.sent >= (healed + recovery_limit if back is None else back)]
    retired = world.marks.get("retired")
    wrong = sum(1 for s in samples if s.kind in MUST_REFUSE and s.status == 200)
    retired_last: float | None = None
    if retired is not None:
        late = [s.sent - retired for s in samples if s.kind == "old_key" and s.status == 200]
        late = [t for t in late if t >= 0]
        retired_last = max(late) if late else None
        wrong += sum(1 for t in late if t > RETIRE_GRACE)
    failed_valid = [s.sent - fault_start for s in during if s.kind == "valid" and s.status != 200]
    valid_latencies = sorted(s.latency for s in during if s.kind == "valid")
    p99 = (
        valid_latencies[min(len(valid_latencies) - 1, math.ceil(0.99 * len(valid_latencies)) - 1)]
        * 1000
        if valid_latencies
        else None
    )
    return Result(
        key=scenario.key,
        label=scenario.label,
        fault_seconds=healed - fault_start,
        during=_count(during),
        after=_count(after),
        wrongly_accepted=wrong,
        other_5xx=sum(1 for s in samples if s.status >= 500 and s.status != 503),
        no_answer=sum(1 for s in samples if s.status == 0),
        fail_closed_after=min(failed_valid) if failed_valid else None,
        recovered_after=recovered,
        valid_p99_ms_during=p99,
        audit_events=audit_events,
        requests=sum(1 for s in samples if s.status != 0),
        retired_last_200=retired_last,
        notes=world.notes[notes_before:],
    )


def _statuses(counter: Counter[int] | None) -> str:
    if not counter:
        return "-"
    return " ".join(f"{status or 'none'}×{n}" for status, n in sorted(counter.items()))


def _seconds(value: float | None, none: str = "-") -> str:
    return none if value is None else f"{value:.2f} s"


def render(results: list[Result], machine: dict[str, str], command: str) -> str:
    """The report: one summary table, then the answers by token class."""
    lines = [
        "| scenario | valid tokens during the fault | valid after recovery | wrongly accepted | "
        "other 5xx | valid refused after | recovered after | audit events / requests |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    lines.extend(
        f"| {r.label} ({r.fault_seconds:.1f} s) | {_statuses(r.during.get('valid'))} | "
        f"{_statuses(r.after.get('valid'))} | {r.wrongly_accepted} | {r.other_5xx} | "
        f"{_seconds(r.fail_closed_after, 'never')} | {_seconds(r.recovered_after, 'NOT')} | "
        f"{r.audit_events} / {r.requests} |"
        for r in results
    )
    lines += [
        "",
        "Answers to the tokens that must never get 200, during the fault / after recovery:",
        "",
        "| scenario | revoked | forged | old key (rotation) |",
        "|---|---|---|---|",
    ]
    for r in results:
        cells = [
            f"{_statuses(r.during.get(kind))} / {_statuses(r.after.get(kind))}"
            for kind in ("revoked", "forged")
        ]
        old = "-"
        if "old_key" in r.during or "old_key" in r.after:
            old = (
                f"{_statuses(r.during.get('old_key'))} / {_statuses(r.after.get('old_key'))}; "
                f"last 200 {_seconds(r.retired_last_200, 'none')} after retiring "
                f"(bound {RETIRE_GRACE:g} s)"
            )
        lines.append(f"| {r.key} | {cells[0]} | {cells[1]} | {old} |")
    p99s = [f"{r.key} {r.valid_p99_ms_during:.0f} ms" for r in results if r.valid_p99_ms_during]
    lines += ["", "p99 latency of valid tokens during the fault: " + ", ".join(p99s)]
    notes = [note for r in results for note in r.notes]
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    lines += ["", f"Command: `{command}`", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items()]
    return "\n".join(lines) + "\n"


def _unsigned(claims: dict[str, object]) -> str:
    """An ``alg: none`` token with a junk signature segment."""

    def segment(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{segment({'alg': 'none', 'typ': 'at+jwt'})}.{segment(claims)}.c2ln"


def setup(workdir_audit: Path) -> World:
    """Start Redis, the issuer and the API; revoke the revoked pool; return the world."""
    redis = RedisProcess().start()
    host: IssuerHost | None = None
    api: ApiServer | None = None
    try:
        host = IssuerHost(jwks_max_age=JWKS_TTL)
        issuer = host.issuer
        settings = ApiSettings(
            issuer=issuer.url,
            jwks_uri=issuer.jwks_uri,
            redis_url=redis.url,
            namespace="faults",
            jwks_ttl=JWKS_TTL,
            cooldown=COOLDOWN,
            max_stale=MAX_STALE,
            fetch_timeout=FETCH_TIMEOUT,
            failure_timeout=FAILURE_TIMEOUT,
            redis_timeout=REDIS_TIMEOUT,
            audit_path=str(workdir_audit),
        )
        admin = RedisRevocationStore(redis.url, namespace="faults", mirror=False)
        revoked = []
        for _ in range(4):
            claims = issuer.claims(scopes=[SCOPE], expires_in=3600)
            admin.revoke_token_sync(claims["jti"], claims["exp"], issuer=issuer.url)
            revoked.append(issuer.sign(claims))
        forged = [
            issuer.mint_forged(scopes=[SCOPE]),  # a genuine kid, a stranger's signature
            issuer.mint_forged(scopes=[SCOPE], kid="never-published"),
            _unsigned(issuer.claims(scopes=[SCOPE], expires_in=3600)),
        ]
        pools = {
            "valid": [issuer.mint(scopes=[SCOPE], expires_in=3600) for _ in range(8)],
            "revoked": revoked,
            "forged": forged,
        }
        api = ApiServer(settings).start(pools["valid"][0])
        return World(redis, host, api, admin, pools, workdir_audit)
    except BaseException:
        if api is not None:
            api.close()
        if host is not None:
            host.close()
        redis.close()
        raise


def teardown(world: World) -> list[str]:
    """Stop everything; return the lines of the server's log that show a defect."""
    log = world.api.log_text()
    world.api.close()
    world.admin.close()
    world.issuer.close()
    world.redis.close()
    world.audit_path.unlink(missing_ok=True)
    return [
        line
        for line in log.splitlines()
        if "Traceback" in line or "unexpected error" in line or "Exception in ASGI" in line
    ]


async def run_all(
    keys: list[str],
    *,
    fault_seconds: float,
    recovery_limit: float,
    workers: int = 4,
    pause: float = 0.01,
    observe_after: float = 2.0,
) -> tuple[list[Result], list[str]]:
    """Run the chosen scenarios one after the other on one set of servers."""
    audit = temporary_file("bearerguard-faults-audit-", ".jsonl")
    world = await asyncio.to_thread(setup, audit)
    results: list[Result] = []
    try:
        for scenario in SCENARIOS:
            if scenario.key not in keys:
                continue
            print(f"scenario {scenario.key}: {scenario.label} ...", file=sys.stderr, flush=True)
            result = await run_scenario(
                world,
                scenario,
                fault_seconds=fault_seconds,
                recovery_limit=recovery_limit,
                workers=workers,
                pause=pause,
                observe_after=observe_after,
            )
            print(
                f"  wrongly accepted {result.wrongly_accepted}, other 5xx {result.other_5xx}, "
                f"recovered after {_seconds(result.recovered_after, 'NOT')}",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    finally:
        defects = await asyncio.to_thread(teardown, world)
    return results, defects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=[s.key for s in SCENARIOS])
    parser.add_argument("--fault-seconds", type=float, default=6.0)
    parser.add_argument("--recovery-limit", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between requests")
    parser.add_argument("--output", type=Path, help="also write the report here (markdown)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)
    keys = args.only or [s.key for s in SCENARIOS]
    started = time.monotonic()
    results, defects = asyncio.run(
        run_all(
            keys,
            fault_seconds=args.fault_seconds,
            recovery_limit=args.recovery_limit,
            workers=args.workers,
            pause=args.pause,
        )
    )
    command = "python3 scripts/dev.py faults " + " ".join(sys.argv[1:] if argv is None else argv)
    report = render(results, machine_description(), command.strip())
    if defects:
        report += "\nServer log lines showing defects:\n" + "\n".join(defects[:20]) + "\n"
    report += f"\nTotal time: {time.monotonic() - started:.0f} s\n"
    print(report)
    if args.output:
        args.output.write_text(report)
    if args.json:
        raw = [
            {**{k: v for k, v in r.__dict__.items() if k not in ("during", "after")},
             "during": {k: dict(v) for k, v in r.during.items()},
             "after": {k: dict(v) for k, v in r.after.items()}}
            for r in results
        ]  # fmt: skip
        args.json.write_text(json.dumps(raw, indent=2))
    failed = [r.key for r in results if not r.ok]
    if failed or defects:
        print(f"FAILED: {', '.join(failed) or 'server defects'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
