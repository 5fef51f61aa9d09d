"""A readiness check an application can mount: are keys loaded, is the store reachable?

    app = Starlette(routes=[Mount("/ready", app=ReadinessEndpoint(guard))], middleware=[
        Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/ready"])])

``GET`` answers 200 with a JSON report when tokens can be verified now, else 503 (so a load
balancer sends no traffic to an instance that would refuse every token).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from bearerguard.errors import ServiceUnavailableError
from bearerguard.guard import BearerGuard

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["ReadinessEndpoint", "readiness", "readiness_wsgi"]

_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]


def readiness(guard: BearerGuard) -> dict[str, Any]:
    """The guard's readiness as plain data: keys usable, key set age, store health.

    A store that reports no health (the memory store) counts as healthy; one that does (the
    Redis store's ``healthy``) must say so.
    """
    store = guard.revocation
    healthy = getattr(store, "healthy", True)
    keys_ready = guard.keys_ready()
    return {
        "ready": bool(keys_ready and healthy),
        "keys": {
            "ready": keys_ready,
            "kids": len(guard.key_ids),
            "age_seconds": guard.key_set_age(),
        },
        "revocation": {"store": getattr(store, "name", type(store).__name__), "healthy": healthy},
    }


def _answer(report: dict[str, Any]) -> tuple[int, bytes]:
    return (200 if report["ready"] else 503), json.dumps(report).encode()


class ReadinessEndpoint:
    """An ASGI app answering ``GET``/``HEAD`` with the guard's readiness.

    Args:
        guard: the guard to report on.
        warm_up: when keys are not loaded yet, try to fetch them before answering (bounded
            by the guard's fetch timeout).
    """

    def __init__(self, guard: BearerGuard, *, warm_up: bool = True) -> None:
        self.guard = guard
        self.warm_up = warm_up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own: nothing to start or stop
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b'{"error": "method_not_allowed"}', [("allow", "GET, HEAD")])
            return
        if self.warm_up and not self.guard.keys_ready():
            with contextlib.suppress(ServiceUnavailableError):  # reported below as not ready
                await self.guard.warm_up()
        status, body = _answer(readiness(self.guard))
        await _send(send, status, b"" if scope["method"] == "HEAD" else body)


async def _send(
    send: Send, status: int, body: bytes, extra: Iterable[tuple[str, str]] = ()
) -> None:
    headers = [(name.encode(), value.encode()) for name, value in [*_HEADERS, *extra]]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def readiness_wsgi(guard: BearerGuard, *, warm_up: bool = True) -> Any:
    """The same check as a WSGI app (mount it with your framework, or wrap it in a route)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if warm_up and not guard.keys_ready():
            with contextlib.suppress(ServiceUnavailableError):  # reported below as not ready
                guard.warm_up_sync()
        status, body = _answer(readiness(guard))
        start_response("200 OK" if status == 200 else "503 Service Unavailable", list(_HEADERS))
        return [body]

    return app
