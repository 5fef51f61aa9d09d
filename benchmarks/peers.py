"""bearerguard next to peer libraries, per request, in-process, measured in one run.

Usage (from the repository root):

    .venv/bin/python benchmarks/peers.py              # about 20 seconds
    .venv/bin/python benchmarks/peers.py --repeats 15 --seconds 0.3

Every case is the same Starlette route (``GET /items``, ``benchmarks/apps``) behind a
different authentication, called directly as an ASGI app with the same RS256 token (a
``DevIssuer``'s, whose JWKS is served on 127.0.0.1), exactly as ``benchmarks/inprocess.py``
calls its apps:

* the bare app, and bearerguard with a cache hit (the library defaults, accepted-audit off),
  with the memory revocation store and with a Redis store (its mirror, and direct: one round
  trip per request) on a private redis-server;
* bearerguard with ``cache_size=0``: a full verification on every request, for a like-for-like
  comparison with the peers, none of which caches verified tokens;
* the hand-rolled PyJWT pattern (``PyJWKClient`` + ``jwt.decode``, pure ASGI middleware);
* **Authlib**'s resource protector for JWT access tokens (RFC 9068,
  ``authlib.oauth2.rfc9068.JWTBearerTokenValidator``: ``authenticate_token`` then
  ``validate_token`` with the scope, as its ``ResourceProtector`` calls them), its
  ``get_jwks()`` returning a key set fetched and imported once;
* **joserfc** (the JOSE library Authlib now builds on): ``jwt.decode`` with a key set
  imported once, then ``JWTClaimsRegistry.validate`` for ``iss``, ``aud`` and ``exp``.

Cases run interleaved, repeat after repeat, and each figure is the median of the repeats
during which other processes used at most 10% of the CPUs (``benchmarks/noise.py``), or of
the three quietest. The ratios (x bare, x bearerguard) are of costs: higher is slower.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from bearerguard.testing import DevIssuer  # noqa: E402
from benchmarks.apps import SCOPE, Settings, configure_audit_logging  # noqa: E402
from benchmarks.apps.starlette_apps import (  # noqa: E402
    ROUTES,
    build_bare,
    build_bearerguard,
    build_pyjwt_asgi,
    guard_for,
)
from benchmarks.inprocess import asgi_scope  # noqa: E402
from benchmarks.noise import QUIET, CpuMeter  # noqa: E402
from benchmarks.revocation import redis_server  # noqa: E402

__all__ = ["AuthlibMiddleware", "JoserfcMiddleware", "main"]


def _bearer(scope: Scope) -> str | None:
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"detail": "Invalid token"}, status_code=401)(scope, receive, send)


class AuthlibMiddleware:
    """Authlib's RFC 9068 validator (what its ``ResourceProtector`` calls), in pure ASGI."""

    def __init__(self, app: ASGIApp, *, jwks: dict[str, Any], issuer: str, audience: str) -> None:
        from authlib.oauth2.rfc6750.errors import InvalidTokenError  # type: ignore[import-untyped]
        from authlib.oauth2.rfc9068 import JWTBearerTokenValidator  # type: ignore[import-untyped]
        from joserfc.jwk import KeySet

        # Fetched and imported once, at start-up (Authlib leaves caching to the app); a dict
        # here would be imported again on every request, with a deprecation warning.
        keys: KeySet = KeySet.import_key_set(jwks)  # type: ignore[arg-type]

        class Validator(JWTBearerTokenValidator):  # type: ignore[misc]
            def get_jwks(self) -> KeySet:
                return keys

        self.app = app
        self.validator = Validator(issuer=issuer, resource_server=audience)
        self.errors: tuple[type[Exception], ...] = (InvalidTokenError, ValueError)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        try:
            if token is None:
                raise ValueError("no token")
            claims = self.validator.authenticate_token(token)
            self.validator.validate_token(claims, [SCOPE], None)
        except self.errors:
            await _refuse(scope, receive, send)
            return
        scope.setdefault("state", {})["claims"] = dict(claims)
        await self.app(scope, receive, send)


class JoserfcMiddleware:
    """joserfc's ``jwt.decode`` and claims registry, with the key set imported once."""

    def __init__(self, app: ASGIApp, *, jwks: dict[str, Any], issuer: str, audience: str) -> None:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        self.app = app
        self.jwt = jwt
        self.keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        self.registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
        )
        self.errors: tuple[type[Exception], ...] = (JoseError, ValueError)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        try:
            if token is None:
                raise ValueError("no token")
            decoded = self.jwt.decode(token, self.keys, algorithms=["RS256"])
            self.registry.validate(decoded.claims)
        except self.errors:
            await _refuse(scope, receive, send)
            return
        scope.setdefault("state", {})["claims"] = decoded.claims
        await self.app(scope, receive, send)


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Case:
    """One app and its samples (seconds per request) with the noise of each."""

    key: str
    label: str
    app: ASGIApp
    samples: list[float] = field(default_factory=list)
    noise: list[float | None] = field(default_factory=list)
    iterations: int = 0

    @property
    def median_us(self) -> float:
        pairs = list(zip(self.noise, self.samples, strict=True))
        quiet = [s for n, s in pairs if n is None or n <= QUIET]
        if len(quiet) < min(3, len(pairs)):
            quiet = [s for _, s in sorted(pairs, key=lambda p: p[0] or 0.0)[:3]]
        return statistics.median(quiet) * 1e6

    @property
    def best_us(self) -> float:
        return min(self.samples) * 1e6


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _drop(message: Message) -> None:
    return None


async def _check(case: Case, scope: Scope) -> None:
    status = 0

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    for _ in range(20):  # the first requests fetch keys and fill caches
        await case.app(dict(scope), _receive, send)
        if status != 200:
            raise RuntimeError(f"{case.label}: status {status}, expected 200")


async def _timed(app: ASGIApp, scope: Scope, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), _receive, _drop)
    return (time.perf_counter() - started) / n


async def measure(cases: list[Case], token: str, repeats: int, seconds: float) -> None:
    """Warm up and check every case, then run the repeats interleaved."""
    scope = asgi_scope(token)
    for case in cases:
        await _check(case, scope)
        per_op = await _timed(case.app, scope, 50)
        case.iterations = max(50, int(seconds / per_op))
    for repeat in range(repeats):
        print(f"... repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
        for case in cases:
            gc.collect()
            meter = CpuMeter()
            case.samples.append(await _timed(case.app, scope, case.iterations))
            case.noise.append(meter.others())


_STORES: list[Any] = []  # Redis stores to close before the event loop does


async def _close_stores() -> None:
    for store in _STORES:
        await store.aclose()


def build_cases(issuer: DevIssuer, redis_url: str | None = None) -> list[Case]:
    """The apps compared, each behind a different authentication."""
    settings = Settings(issuer.url, issuer.jwks_uri, issuer.audience)
    jwks = httpx.get(issuer.jwks_uri, timeout=5.0).json()  # once, as an app would at start-up
    options = {"jwks": jwks, "issuer": issuer.url, "audience": issuer.audience}

    def behind(middleware: Middleware) -> ASGIApp:
        return Starlette(routes=ROUTES, middleware=[middleware])

    full = guard_for(settings, cache_size=0)
    builders: list[tuple[str, str, Callable[[], ASGIApp]]] = [
        ("bare", "Starlette, bare", lambda: build_bare(settings)),
        ("bg_hit", "+ bearerguard, cache hit", lambda: build_bearerguard(settings)),
        (
            "bg_full",
            "+ bearerguard, cache_size=0 (full verification)",
            lambda: build_bearerguard(settings, guard=full),
        ),
        (
            "pyjwt",
            "+ hand-rolled PyJWT (PyJWKClient + jwt.decode)",
            lambda: build_pyjwt_asgi(settings),
        ),
        (
            "authlib",
            "+ Authlib RFC 9068 JWTBearerTokenValidator",
            lambda: behind(Middleware(AuthlibMiddleware, **options)),
        ),
        (
            "joserfc",
            "+ joserfc jwt.decode + JWTClaimsRegistry",
            lambda: behind(Middleware(JoserfcMiddleware, **options)),
        ),
    ]
    if redis_url is not None:
        from bearerguard import BearerGuard
        from bearerguard.revocation import RedisRevocationStore

        def with_store(mirror: bool) -> ASGIApp:
            store = RedisRevocationStore(redis_url, mirror=mirror, namespace=f"peers{mirror}")
            _STORES.append(store)
            guard = BearerGuard(
                issuer=settings.issuer,
                audience=settings.audience,
                jwks_uri=settings.jwks_uri,
                audit_sample_accepted=settings.sample_accepted,
                revocation=store,
            )
            return build_bearerguard(settings, guard=guard)

        builders[2:2] = [
            (
                "bg_hit_redis_mirror",
                "+ bearerguard, cache hit, Redis revocation (mirror)",
                lambda: with_store(True),
            ),
            (
                "bg_hit_redis_direct",
                "+ bearerguard, cache hit, Redis revocation (no mirror: one round trip)",
                lambda: with_store(False),
            ),
        ]
    return [Case(key, label, build()) for key, label, build in builders]


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def render(cases: list[Case], token_bytes: int) -> str:
    by_key = {case.key: case for case in cases}
    bare, hit, full = (
        by_key["bare"].median_us,
        by_key["bg_hit"].median_us,
        by_key["bg_full"].median_us,
    )
    lines = [
        "| app | µs/request | best | Δ µs vs bare | x bare | x bearerguard (hit) | "
        "x bearerguard (full verification) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        us = case.median_us
        lines.append(
            f"| {case.label} | {us:.1f} | {case.best_us:.1f} | {us - bare:+.1f} | "
            f"{us / bare:.2f} | {us / hit:.2f} | {us / full:.2f} |"
        )
    quiet = sum(1 for case in cases for n in case.noise if n is not None and n <= QUIET)
    total = sum(len(case.noise) for case in cases)
    packages = ", ".join(
        f"{name} {_version(name)}"
        for name in ("bearerguard", "starlette", "pyjwt", "cryptography", "authlib", "joserfc")
    )
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines += [
        "",
        f"RS256 token of {token_bytes} bytes; {quiet}/{total} samples quiet (others' CPU "
        f"<= {QUIET:.0%}). {cpu}, Python {platform.python_version()}; {packages}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure the cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.2, help="per repeat and case")
    parser.add_argument("--output", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    try:
        import authlib  # type: ignore[import-untyped]  # noqa: F401
        import joserfc  # noqa: F401
    except ImportError:
        print("peers.py needs authlib (pip install authlib, in the dev extra)", file=sys.stderr)
        return 2
    configure_audit_logging()
    with DevIssuer(algorithms=("RS256",)) as issuer:
        token = issuer.mint(scopes=[SCOPE], expires_in=3600)
        with redis_server() as redis_url:
            cases = build_cases(issuer, redis_url)
            loop: asyncio.AbstractEventLoop
            try:
                import uvloop

                loop = uvloop.new_event_loop()
            except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
                loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(measure(cases, token, args.repeats, args.seconds))
            finally:
                loop.run_until_complete(_close_stores())
                loop.close()
    report = render(cases, len(token))
    print(report)
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
