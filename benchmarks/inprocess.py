"""In-process costs: ASGI apps called directly, and token verification alone.

Each app is driven with a prebuilt HTTP scope (a shallow copy per request, as a server hands
each request its own scope), a ``receive`` that returns an empty body and a ``send`` that
drops messages. No server, no sockets: the figure is the per-request cost of the framework
plus the authentication, which is what a middleware adds to every request.

Cases run interleaved (repeat 1 of every case, then repeat 2, ...) so that a slow spell of a
shared machine lands on every case alike. Every repeat records how much CPU other processes
took meanwhile; the figure reported is the median of the quiet repeats (see
``benchmarks/noise.py``), or of the three quietest when fewer were quiet. The garbage
collector stays on, as it is in a server.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.utils import base64url_decode
from starlette.types import ASGIApp, Message, Scope

from bearerguard import BearerGuard
from bearerguard._core.keys import VerificationKey, verify_signature
from bearerguard.audit import AuditLog, RequestInfo
from bearerguard.testing import DevIssuer
from benchmarks.apps import (
    AUDIT_DROPPED,
    AUDIT_STDLIB,
    PATH,
    SCOPE,
    Settings,
    audit_processors,
    configure_audit_logging,
    fastapi_apps,
    starlette_apps,
    stdlib_audit_logger,
)
from benchmarks.apps.pyjwt_middleware import decode_token
from benchmarks.noise import FULL_SPEED, QUIET, CpuMeter, speed_probe

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["Measurement", "Plan", "run_inprocess"]


@dataclass(frozen=True, slots=True)
class Plan:
    """How long to measure."""

    repeats: int
    seconds_per_repeat: float
    fresh_tokens: int


@dataclass(slots=True)
class Measurement:
    """The repeats of one case, in seconds per operation."""

    key: str
    label: str
    group: str
    baseline: str | None
    iterations: int = 0
    samples: list[float] = field(default_factory=list)
    noise: list[float | None] = field(default_factory=list)
    """For each sample, the share of all CPUs other processes used while it ran."""
    speeds: list[float | None] = field(default_factory=list)
    """For each sample, the core's speed around it: the slower of the two ``speed_probe``
    timings taken just before and just after it, against the run's full speed (the tenth
    percentile of all its probes' timings); 1.0 is full speed."""

    def _calm(self) -> list[bool]:
        speeds = self.speeds or [None] * len(self.samples)
        return [
            (share is None or share <= QUIET) and (speed is None or speed >= FULL_SPEED)
            for share, speed in zip(self.noise, speeds, strict=True)
        ]

    @property
    def quiet_count(self) -> int:
        """How many samples were quiet: other processes idle enough, the core at full speed."""
        return sum(self._calm())

    @property
    def quiet(self) -> list[float]:
        """The samples taken while the machine was quiet; at least the three quietest.

        With fewer than three at full speed, a core's speed is no guide (it changed too
        often): the samples are then chosen by the other processes' share alone, and the
        report marks the verdict noisy.
        """
        enough = min(3, len(self.samples))
        calm = [sample for sample, ok in zip(self.samples, self._calm(), strict=True) if ok]
        if len(calm) >= enough:
            return calm
        quiet = [
            s for s, n in zip(self.samples, self.noise, strict=True) if n is None or n <= QUIET
        ]
        if len(quiet) >= enough:
            return quiet
        ranked = sorted(zip(self.noise, self.samples, strict=True), key=lambda pair: pair[0] or 0.0)
        return [sample for _, sample in ranked[:3]]

    @property
    def median_us(self) -> float:
        """The median of the quiet samples, in µs."""
        return statistics.median(self.quiet) * 1e6

    @property
    def best_us(self) -> float:
        return min(self.samples) * 1e6

    @property
    def spread(self) -> float:
        """(max - min) / median of the quiet samples: how noisy the figure still is."""
        quiet = self.quiet
        return (max(quiet) - min(quiet)) / statistics.median(quiet)


def asgi_scope(token: str) -> Scope:
    """The benchmark's request: GET of the route with ``token``, as an ASGI scope.

    It has the keys uvicorn's scopes have, ``state`` (the lifespan state) included, so a
    middleware adding keys grows the dict as it does under uvicorn. Starlette adds six; the
    bearerguard middleware's three more then take the scope past the 21 keys its table was
    sized for, a resize per request (about 750 instructions by callgrind).
    """
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 51000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"bearerguard-bench"),
            (b"accept", b"*/*"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "state": {},
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _drop(message: Message) -> None:
    return None


async def _status(app: ASGIApp, scope: Scope) -> int:
    """Serve one request and return its status (to check the case measures a 200)."""
    status = 0

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), _receive, send)
    return status


class Case:
    """Something timed per operation; subclasses say what one operation is."""

    def __init__(self, key: str, label: str, group: str, baseline: str | None) -> None:
        self.result = Measurement(key, label, group, baseline)

    async def prepare(self) -> None:
        """Warm up and check, outside any timing."""

    async def before_repeat(self) -> None:
        """Set up one repeat, outside its timing."""

    async def timed(self, n: int) -> float:
        """Run ``n`` operations; return seconds per operation."""
        raise NotImplementedError

    def iterations_for(self, seconds: float, per_op: float) -> int:
        return max(50, min(500_000, int(seconds / per_op)))


class AppCase(Case):
    """One ASGI app, the same request (the same token) every time."""

    def __init__(
        self, key: str, label: str, group: str, baseline: str | None, *, app: ASGIApp, token: str
    ) -> None:
        super().__init__(key, label, group, baseline)
        self.app = app
        self.scope = asgi_scope(token)

    async def prepare(self) -> None:
        for _ in range(20):  # first requests fetch keys and fill caches
            status = await _status(self.app, self.scope)
            if status != 200:
                raise RuntimeError(f"{self.result.label}: status {status}, expected 200")

    async def timed(self, n: int) -> float:
        app, scope = self.app, self.scope
        started = time.perf_counter()
        for _ in range(n):
            await app(dict(scope), _receive, _drop)
        return (time.perf_counter() - started) / n


class FreshTokenCase(Case):
    """An app behind a new guard each repeat, every request with a token it has not seen."""

    def __init__(
        self,
        key: str,
        label: str,
        group: str,
        baseline: str | None,
        *,
        build: Callable[[], ASGIApp],
        tokens: list[str],
        warm_token: str,
    ) -> None:
        super().__init__(key, label, group, baseline)
        self.build = build
        self.scopes = [asgi_scope(token) for token in tokens]
        self.warm_scope = asgi_scope(warm_token)
        self.app = build()

    async def prepare(self) -> None:
        await self.before_repeat()

    async def before_repeat(self) -> None:
        self.app = self.build()
        status = await _status(self.app, self.warm_scope)  # fetches the keys
        if status != 200:
            raise RuntimeError(f"{self.result.label}: status {status}, expected 200")

    def iterations_for(self, seconds: float, per_op: float) -> int:
        return len(self.scopes)

    async def timed(self, n: int) -> float:
        app = self.app
        scopes = [dict(scope) for scope in self.scopes[:n]]
        started = time.perf_counter()
        for scope in scopes:
            await app(scope, _receive, _drop)
        return (time.perf_counter() - started) / len(scopes)


class WSGICase(Case):
    """One WSGI app called directly with a prebuilt environ, the same token every time."""

    def __init__(
        self, key: str, label: str, baseline: str | None, *, app: WSGIApplication, token: str
    ) -> None:
        super().__init__(key, label, "flask", baseline)
        self.app = app
        self.environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": PATH,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }

    def call(self) -> str:
        """One request; returns its status line."""
        status = ""

        def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
            nonlocal status
            status = line
            return None

        body = self.app(dict(self.environ), start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return status

    async def prepare(self) -> None:
        for _ in range(20):
            status = self.call()
            if not status.startswith("200"):
                raise RuntimeError(f"{self.result.label}: status {status}, expected 200")

    async def timed(self, n: int) -> float:
        call = self.call
        started = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - started) / n


class CallCase(Case):
    """A synchronous call, or a coroutine function awaited, per operation."""

    def __init__(
        self,
        key: str,
        label: str,
        baseline: str | None,
        *,
        call: Callable[[], object] | None = None,
        acall: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        super().__init__(key, label, "verify", baseline)
        self.call = call
        self.acall = acall

    async def prepare(self) -> None:
        for _ in range(20):
            if self.call is not None:
                self.call()
            else:
                assert self.acall is not None
                await self.acall()

    async def timed(self, n: int) -> float:
        if self.call is not None:
            call = self.call
            started = time.perf_counter()
            for _ in range(n):
                call()
            return (time.perf_counter() - started) / n
        assert self.acall is not None
        acall = self.acall
        started = time.perf_counter()
        for _ in range(n):
            await acall()
        return (time.perf_counter() - started) / n


async def _measure(cases: list[Case], plan: Plan, progress: Callable[[str], None]) -> None:
    iterations: dict[str, int] = {}
    for case in cases:
        await case.prepare()
        per_op = await case.timed(50)  # a first estimate, also warming the path up
        iterations[case.result.key] = case.iterations_for(plan.seconds_per_repeat, per_op)
        case.result.iterations = iterations[case.result.key]
    slower: dict[str, list[float]] = {case.result.key: [] for case in cases}
    every: list[float] = []
    for repeat in range(plan.repeats):
        progress(f"in-process repeat {repeat + 1}/{plan.repeats}")
        for case in cases:
            await case.before_repeat()
            before = speed_probe()  # not after gc.collect(): its sweep slows the next ~1 ms
            gc.collect()
            meter = CpuMeter()
            case.result.samples.append(await case.timed(iterations[case.result.key]))
            case.result.noise.append(meter.others())
            after = speed_probe()
            every += (before, after)
            slower[case.result.key].append(max(before, after))
    # Full speed: the tenth percentile of the probes' times, not the one luckiest probe.
    full = sorted(every)[len(every) // 10]
    for case in cases:
        case.result.speeds = [full / probe for probe in slower[case.result.key]]


def flask_app(guard: BearerGuard | None) -> WSGIApplication:
    """The Flask twin of the Starlette apps: one JSON route, protected when ``guard`` is given."""
    import flask

    from bearerguard import requires_scopes
    from bearerguard.flask import protect

    app = flask.Flask("bench", static_folder=None)

    def hello() -> dict[str, bool]:
        return {"hello": True}

    view = hello if guard is None else requires_scopes(SCOPE)(hello)
    app.add_url_rule(PATH, "hello", view)
    if guard is not None:
        protect(app, guard=guard)
    return app.wsgi_app


def _cases(issuer: DevIssuer, settings: Settings, plan: Plan, token: str) -> list[Case]:
    audited = Settings(settings.issuer, settings.jwks_uri, settings.audience, audit="all")
    fresh = [issuer.mint(scopes=[SCOPE], expires_in=3600) for _ in range(plan.fresh_tokens)]
    warm = issuer.mint(scopes=[SCOPE], expires_in=3600)

    # Verification alone: the key objects are what PyJWKClient hands out.
    jwks_client = jwt.PyJWKClient(settings.jwks_uri)
    public_key: RSAPublicKey = jwks_client.get_signing_key_from_jwt(token).key
    signing_input, _, signature_segment = token.rpartition(".")
    signature = base64url_decode(signature_segment)
    miss_guard = starlette_apps.guard_for(settings, cache_size=0)
    hit_guard = starlette_apps.guard_for(settings)

    def rsa_verify() -> None:
        public_key.verify(signature, signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())

    rsa_key = VerificationKey(kid=None, algorithms=frozenset({"RS256"}), key=public_key)
    signed = signing_input.encode()

    def rsa_check() -> None:
        verify_signature(rsa_key, "RS256", signed, signature)

    credentials = token.encode()

    def sha256_token() -> None:
        hashlib.sha256(credentials).digest()

    def sha256_empty() -> None:
        hashlib.sha256(b"").digest()

    stamper = audit_processors()[3]  # the application's TimeStamper(fmt="iso", utc=True)
    stamped: dict[str, Any] = {}

    def timestamp() -> None:
        stamper(None, "info", stamped)

    def pyjwt_decode() -> object:
        return jwt.decode(
            token,
            public_key,
            algorithms=["RS256"],
            audience=settings.audience,
            issuer=settings.issuer,
        )

    def pyjwk_decode() -> object:
        return decode_token(jwks_client, token, audience=settings.audience, issuer=settings.issuer)

    audit_guard = starlette_apps.guard_for(audited)
    accepted = audit_guard.authenticate_sync(token)
    entry = audit_guard.reused(b"Bearer " + token.encode())
    assert entry is not None
    request = RequestInfo("GET", PATH, "127.0.0.1", None)
    audit = audit_guard.audit

    def audit_event() -> None:
        entry.record_accepted(audit, request, 0.0001)  # as the middlewares' cache hits do

    stdlib_audit = AuditLog(logger=stdlib_audit_logger())
    stdlib_token_logger = stdlib_audit.token_logger(entry.audit_fields())

    def audit_event_stdlib() -> None:
        stdlib_audit.emit_accepted(accepted, request, 0.0001, token_logger=stdlib_token_logger)

    def authenticate(guard: BearerGuard) -> Callable[[], Coroutine[Any, Any, object]]:
        async def call() -> object:
            return await guard.authenticate(token)

        return call

    def app(key: str, label: str, group: str, baseline: str | None, asgi: ASGIApp) -> Case:
        return AppCase(key, label, group, baseline, app=asgi, token=token)

    st, fa = "starlette", "fastapi"
    bare, bare_fa = "starlette_bare", "fastapi_bare"
    return [
        app(bare, "Starlette, bare", st, None, starlette_apps.build_bare(settings)),
        app(
            "starlette_bg_hit",
            "+ bearerguard, cache hit, accepted-audit off",
            st,
            bare,
            starlette_apps.build_bearerguard(settings),
        ),
        app(
            "starlette_bg_hit_audited",
            "+ bearerguard, cache hit, every decision audited",
            st,
            bare,
            starlette_apps.build_bearerguard(audited),
        ),
        app(
            "starlette_bg_hit_audit_dropped",
            f"+ bearerguard, cache hit, every decision audited, {AUDIT_DROPPED}",
            st,
            bare,
            starlette_apps.build_bearerguard(replace(audited, audit="dropped")),
        ),
        app(
            "starlette_hash_lookup",
            "reference: SHA-256 token lookup only (no checks, not bearerguard)",
            st,
            bare,
            starlette_apps.build_hash_lookup(settings),
        ),
        FreshTokenCase(
            "starlette_bg_miss",
            "+ bearerguard, cache miss (a fresh token each request)",
            st,
            bare,
            build=lambda: starlette_apps.build_bearerguard(settings),
            tokens=fresh,
            warm_token=warm,
        ),
        app(
            "starlette_pyjwt_asgi",
            "+ hand-rolled PyJWT, pure ASGI middleware",
            st,
            bare,
            starlette_apps.build_pyjwt_asgi(settings),
        ),
        app(
            "starlette_pyjwt_base",
            "+ hand-rolled PyJWT, BaseHTTPMiddleware",
            st,
            bare,
            starlette_apps.build_pyjwt_base(settings),
        ),
        app(bare_fa, "FastAPI, bare", fa, None, fastapi_apps.build_bare(settings)),
        app(
            "fastapi_bg_hit",
            "+ bearerguard + @requires_scopes, cache hit, accepted-audit off",
            fa,
            bare_fa,
            fastapi_apps.build_bearerguard(settings),
        ),
        app(
            "fastapi_bg_hit_audited",
            "+ bearerguard + @requires_scopes, cache hit, every decision audited",
            fa,
            bare_fa,
            fastapi_apps.build_bearerguard(audited),
        ),
        app(
            "fastapi_httpbearer",
            "+ HTTPBearer() dependency + PyJWT (tutorial pattern)",
            fa,
            bare_fa,
            fastapi_apps.build_httpbearer(settings),
        ),
        WSGICase("flask_bare", "Flask (WSGI), bare", None, app=flask_app(None), token=token),
        WSGICase(
            "flask_bg_hit",
            "+ bearerguard WSGI middleware + @requires_scopes, cache hit, accepted-audit off",
            "flask_bare",
            app=flask_app(starlette_apps.guard_for(settings)),
            token=token,
        ),
        CallCase(
            "rsa_verify",
            "RSA PKCS#1 v1.5 verify alone (cryptography's verify)",
            "jwt_decode",
            call=rsa_verify,
        ),
        CallCase(
            "rsa_check",
            "RSA PKCS#1 v1.5 as bearerguard checks it (recovery, then encoding compared)",
            "jwt_decode",
            call=rsa_check,
        ),
        CallCase("jwt_decode", "jwt.decode (key object at hand)", None, call=pyjwt_decode),
        CallCase(
            "pyjwk_decode",
            "PyJWKClient.get_signing_key_from_jwt + jwt.decode",
            "jwt_decode",
            call=pyjwk_decode,
        ),
        CallCase(
            "bg_miss",
            "bearerguard authenticate, cache_size=0 (miss)",
            "jwt_decode",
            acall=authenticate(miss_guard),
        ),
        CallCase(
            "bg_hit",
            "bearerguard authenticate, cache hit",
            "jwt_decode",
            acall=authenticate(hit_guard),
        ),
        CallCase(
            "audit_event",
            "one token.accepted audit event alone (this run's structlog pipeline)",
            None,
            call=audit_event,
        ),
        CallCase(
            "sha256_token",
            "SHA-256 of the token (hashlib): what every cache hit, and the reference, pays",
            None,
            call=sha256_token,
        ),
        CallCase(
            "sha256_empty",
            "SHA-256 of nothing (hashlib): the fixed part, OpenSSL's set-up",
            None,
            call=sha256_empty,
        ),
        CallCase(
            "timestamp",
            "the application's TimeStamper(fmt='iso', utc=True) alone, one event's timestamp",
            None,
            call=timestamp,
        ),
        CallCase(
            "audit_event_stdlib",
            f"the same event through the {AUDIT_STDLIB}",
            None,
            call=audit_event_stdlib,
        ),
    ]


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_inprocess(
    issuer: DevIssuer, settings: Settings, token: str, plan: Plan, progress: Callable[[str], None]
) -> list[Measurement]:
    """Measure every in-process case; returns them in report order."""
    configure_audit_logging()
    progress(f"minting {plan.fresh_tokens} fresh tokens for the cache-miss case")
    cases = _cases(issuer, settings, plan, token)
    loop = _new_loop()
    try:
        loop.run_until_complete(_measure(cases, plan, progress))
    finally:
        loop.close()
    return [case.result for case in cases]
