"""A readiness check an application can mount: are keys loaded, is the store reachable?

    app = Starlette(routes=[Mount("/ready", app=ReadinessEndpoint(guard))], middleware=[
        Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/ready"])])

``GET`` answers 200 with a JSON report when tokens can be verified now, else 503 (so a load
balancer sends no traffic to an instance that would refuse every token). A store that offers
``health()`` (ASGI) or ``health_sync()`` (WSGI) is asked at every request: the Redis store
then starts its mirror, or without one pings Redis, rather than report a stale flag.

The other stores a request cannot do without are asked the same way: the usage monitor when
its policy's ``failure`` is ``"deny"`` (report ``usage``), and the DPoP replay store
(``dpop``), whose failures answer 503 too. An introspection endpoint (``introspection``, and
``IntrospectionRevocationStore``) is probed with a random token, which it must answer
``active: false``, at most once per its ``health_interval``: never with a real token, and
never on the request path. Every one of these counts toward ``ready`` unless named in
``optional``: then it is still asked and reported, but left out of the verdict (for a
service every instance shares, whose outage would take them all out of the load balancer).

Given ``TrustedIssuers``, the report holds one such report per configured issuer under
``issuers``, and is ready when one of them is: an instance that verifies one issuer's
tokens still serves, and an outage of one issuer's keys, shared by every instance, must not
take them all out of the load balancer (issuers a resolver admits later are fetched on
their first token, and not reported).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.types import Receive, Scope, Send

from bearerguard.errors import ConfigurationError, ServiceUnavailableError
from bearerguard.guard import BearerGuard
from bearerguard.issuers import TrustedIssuers, _each_at_once

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["ReadinessEndpoint", "readiness", "readiness_wsgi"]

_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]
# The dependencies that may be left out of the verdict (``optional``); never the keys: an
# instance without them refuses every JWT.
_OPTIONAL = ("revocation", "introspection", "usage", "dpop")
_log = logging.getLogger("bearerguard")


def readiness(
    guard: BearerGuard | TrustedIssuers, *, optional: Iterable[str] = ()
) -> dict[str, Any]:
    """The guard's readiness as plain data, without I/O: keys usable, key set age, store health.

    A store that reports no health (the memory store) counts as healthy; one that does (the
    Redis store's ``healthy``) must say so. The endpoints ask the store first (``health()``).

    Args:
        guard: the guard to report on (a ``TrustedIssuers``: each configured issuer's).
        optional: dependencies reported but left out of ``ready`` (as in
            ``ReadinessEndpoint``).

    Raises:
        ConfigurationError: ``optional`` names something else than those dependencies.
    """
    left_out = _optional(optional)
    if isinstance(guard, TrustedIssuers):
        return _combined(
            {each.issuer: readiness(each, optional=left_out) for each in guard.configured}
        )
    return _report(guard, {name: (item, _flag(item)) for name, item in _members(guard)}, left_out)


def _optional(names: Iterable[str]) -> frozenset[str]:
    """``optional`` checked: a typo would silently count a dependency (or, worse, not)."""
    if isinstance(names, str | bytes):
        raise ConfigurationError(f"optional must be a collection of names, not {names!r}")
    try:
        chosen = frozenset(names)
    except TypeError:  # None, a number, or unhashable items: not names either
        raise ConfigurationError(
            f"optional must be a collection of names, not {names!r:.100}"
        ) from None
    unknown = sorted(map(repr, chosen - frozenset(_OPTIONAL)))
    if unknown:
        raise ConfigurationError(
            f"optional may name {', '.join(_OPTIONAL)} (keys always count), not "
            + ", ".join(unknown)
        )
    return chosen


def _combined(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Several issuers' reports: ready when one is (each says which are)."""
    return {"ready": any(report["ready"] for report in reports.values()), "issuers": reports}


async def _asked_report(
    guard: BearerGuard | TrustedIssuers, warm_up: bool, optional: frozenset[str]
) -> dict[str, Any]:
    """The report, each store asked through ``health()``; keys fetched first if asked to."""
    if isinstance(guard, TrustedIssuers):
        # Each issuer at once: one probe waits for the slowest fetch, not for their sum.
        reports: dict[str, dict[str, Any]] = {}

        async def ask(each: BearerGuard) -> None:
            reports[each.issuer] = await _asked_report(each, warm_up, optional)

        async with anyio.create_task_group() as group:
            for each in guard.configured:
                group.start_soon(ask, each)
        return _combined({each.issuer: reports[each.issuer] for each in guard.configured})
    if warm_up and not guard.keys_ready():
        with contextlib.suppress(ServiceUnavailableError):  # reported below as not ready
            await guard.warm_up()
    asked = {name: (item, await _asked(item)) for name, item in _members(guard)}
    return _report(guard, asked, optional)


def _asked_report_sync(
    guard: BearerGuard | TrustedIssuers, warm_up: bool, optional: frozenset[str]
) -> dict[str, Any]:
    """``_asked_report`` for WSGI: ``health_sync()``, ``warm_up_sync()``."""
    if isinstance(guard, TrustedIssuers):
        # Each issuer at once, as above: a thread each.
        configured = guard.configured

        def ask(each: BearerGuard) -> dict[str, Any]:
            return _asked_report_sync(each, warm_up, optional)

        reports = _each_at_once(ask, configured)
        return _combined(dict(zip([each.issuer for each in configured], reports, strict=True)))
    if warm_up and not guard.keys_ready():
        with contextlib.suppress(ServiceUnavailableError):  # reported below as not ready
            guard.warm_up_sync()
    asked = {name: (item, _asked_sync(item)) for name, item in _members(guard)}
    return _report(guard, asked, optional)


def _members(guard: BearerGuard) -> list[tuple[str, object]]:
    """The report's members: the revocation store, then the others whose failure refuses
    requests (503)."""
    needed: list[tuple[str, object]] = [("revocation", guard.revocation)]
    if guard.introspection is not None:
        needed.append(("introspection", guard.introspection))
    usage = guard.usage
    if usage is not None and usage.policy.failure == "deny":
        needed.append(("usage", usage))
    if guard.dpop is not None:
        needed.append(("dpop", guard.dpop.replay))
    return needed


def _flag(store: object) -> bool:
    """The store's own ``healthy`` flag; a store without one counts as healthy."""
    return bool(getattr(store, "healthy", True))


def _verdict(store: object, report: object) -> bool:
    """``report["healthy"]`` from a store's health report, else its ``healthy`` flag."""
    if isinstance(report, dict) and isinstance(report.get("healthy"), bool):
        return bool(report["healthy"])
    return _flag(store)


def _refused(store: object, exc: Exception) -> bool:
    """A store whose health check raised is not ready (the guard would fail on it too)."""
    _log.debug("bearerguard: revocation store %r failed its health check: %r", store, exc)
    return False


async def _asked(store: object) -> bool:
    """The store's health, asked through ``health()`` when it offers one (may do I/O)."""
    health = getattr(store, "health", None)
    if not callable(health):
        return _flag(store)
    try:
        report = health()
        if inspect.isawaitable(report):
            report = await report
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return _refused(store, exc)
    return _verdict(store, report)


def _asked_sync(store: object) -> bool:
    """The store's health, asked through ``health_sync()`` when it offers one."""
    health_sync = getattr(store, "health_sync", None)
    if not callable(health_sync):
        return _flag(store)
    try:
        report = health_sync()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return _refused(store, exc)
    return _verdict(store, report)


def _report(
    guard: BearerGuard, members: dict[str, tuple[object, bool]], optional: frozenset[str]
) -> dict[str, Any]:
    """The report of ``members`` (name: the store and whether it is healthy)."""
    keys_ready = guard.keys_ready()
    counted = [ok for name, (_, ok) in members.items() if name not in optional]
    report: dict[str, Any] = {
        "ready": bool(keys_ready and all(counted)),
        "keys": {
            "ready": keys_ready,
            "kids": len(guard.key_ids),
            "age_seconds": guard.key_set_age(),
        },
    }
    for name, (store, ok) in members.items():
        report[name] = {"store": _name(store), "healthy": ok}
        if name in optional:
            report[name]["required"] = False
    return report


def _name(store: object) -> str:
    return str(getattr(store, "name", type(store).__name__))


def _answer(report: dict[str, Any]) -> tuple[int, bytes]:
    return (200 if report["ready"] else 503), json.dumps(report).encode()


class ReadinessEndpoint:
    """An ASGI app answering ``GET``/``HEAD`` with the guard's readiness.

    Each request asks the store through ``health()`` when it offers one: a Redis store
    starts its mirror (the first answers are 503 until it has loaded, unless ``start()``
    ran at start-up) or, without a mirror, pings Redis.

    Args:
        guard: the guard to report on (a ``TrustedIssuers``: each configured issuer's).
        warm_up: when keys are not loaded yet, try to fetch them before answering (bounded
            by the guard's fetch timeout).
        optional: dependencies still asked and reported (``"required": false``) but left
            out of the verdict: any of ``"revocation"``, ``"introspection"``, ``"usage"``
            and ``"dpop"``. By default every one counts (fail closed). An outage of a
            service every instance shares (the authorization server, one Redis) then takes
            every instance out of the load balancer; leave it out when the requests that do
            not need it (JWTs verified locally, while introspection is down) should still
            be served. The keys always count. These name the report's members: an
            ``IntrospectionRevocationStore`` is ``"revocation"``, so name it too for the
            authorization server to be left out.

    Raises:
        ConfigurationError: ``optional`` names anything else.
    """

    def __init__(
        self,
        guard: BearerGuard | TrustedIssuers,
        *,
        warm_up: bool = True,
        optional: Iterable[str] = (),
    ) -> None:
        self.guard = guard
        self.warm_up = warm_up
        self.optional = _optional(optional)

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
        status, body = _answer(await _asked_report(self.guard, self.warm_up, self.optional))
        await _send(send, status, body, head=scope["method"] == "HEAD")


async def _send(
    send: Send,
    status: int,
    body: bytes,
    extra: Iterable[tuple[str, str]] = (),
    *,
    head: bool = False,
) -> None:
    headers = [(name.encode(), value.encode()) for name, value in _headers(body, extra)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _headers(body: bytes, extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The answer's headers; ``content-length`` is the body's, for ``HEAD`` too (RFC 9110
    §9.3.2: the headers a ``GET`` would get)."""
    return [*_HEADERS, ("content-length", str(len(body))), *extra]


def readiness_wsgi(
    guard: BearerGuard | TrustedIssuers, *, warm_up: bool = True, optional: Iterable[str] = ()
) -> Any:
    """The same check as a WSGI app (mount it with your framework, or wrap it in a route):
    ``GET`` and ``HEAD`` only, as the ASGI endpoint; ``warm_up`` and ``optional`` as there.

    It asks the store through ``health_sync()`` when it offers one (the Redis store then
    starts its mirror in a thread, or pings Redis).

    Raises:
        ConfigurationError: ``optional`` names anything else than ``ReadinessEndpoint``
            allows.
    """
    left_out = _optional(optional)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            refused = b'{"error": "method_not_allowed"}'
            start_response("405 Method Not Allowed", _headers(refused, [("allow", "GET, HEAD")]))
            return [refused]
        status, body = _answer(_asked_report_sync(guard, warm_up, left_out))
        start_response("200 OK" if status == 200 else "503 Service Unavailable", _headers(body))
        return [b"" if method == "HEAD" else body]

    return app
