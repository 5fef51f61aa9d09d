"""``--profile``: where the time goes on the cache-hit and cache-miss paths (cProfile).

cProfile adds a fixed cost to every Python call, so it overstates code made of many small
calls; read the figures as shares and call counts, not as absolute costs. For absolute
costs, use the in-process figures of a normal run.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
from collections.abc import Awaitable, Callable

from bearerguard.testing import DevIssuer
from benchmarks.apps import Settings, configure_audit_logging, starlette_apps
from benchmarks.inprocess import _drop, _receive, asgi_scope

__all__ = ["profile_paths"]


def _report(title: str, profile: cProfile.Profile, calls: int, limit: int = 25) -> None:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.sort_stats("tottime").print_stats(limit)
    total = stats.total_tt  # type: ignore[attr-defined]  # set by pstats, not in the stubs
    print(f"\n=== {title}: {calls} calls, {total / calls * 1e6:.1f} µs/call under cProfile ===")
    text = stream.getvalue()
    print(text[text.find("   ncalls") :].rstrip())


def profile_paths(issuer: DevIssuer, settings: Settings, token: str) -> None:
    """Profile the middleware on a cache hit, and ``authenticate`` on a cache miss."""
    configure_audit_logging()
    app = starlette_apps.build_bearerguard(settings)
    miss_guard = starlette_apps.guard_for(settings, cache_size=0)
    scope = asgi_scope(token)

    async def hit() -> None:
        await app(dict(scope), _receive, _drop)

    async def miss() -> None:
        await miss_guard.authenticate(token)

    async def loop(call: Callable[[], Awaitable[None]], n: int) -> None:
        for _ in range(n):
            await call()

    for title, call, n in (
        ("cache hit: Starlette + BearerGuardMiddleware, accepted-audit off", hit, 50_000),
        ("cache miss: BearerGuard.authenticate with cache_size=0", miss, 5_000),
    ):
        asyncio.run(loop(call, 100))  # keys fetched, caches warm, outside the profile
        profile = cProfile.Profile()
        profile.enable()
        asyncio.run(loop(call, n))
        profile.disable()
        _report(title, profile, n)
