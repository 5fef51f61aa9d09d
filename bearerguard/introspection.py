"""OAuth 2.0 Token Introspection (RFC 7662): asking the authorization server about a token.

``Introspector`` posts a token to the authorization server's introspection endpoint and
returns its answer. The guard uses it two ways:

- ``BearerGuard(..., introspection=Introspector(...))`` accepts opaque (non-JWT) access
  tokens on the authorization server's word;
- ``IntrospectionRevocationStore`` (``bearerguard.revocation.introspection``) refuses a
  verified JWT once the authorization server says it is no longer active.

The exchange is one generator flow (cache lookup, request, strict parsing, caching) driven
by an asynchronous and a synchronous httpx edge, like the key set fetches in
``bearerguard.jwks``. Every failure of the endpoint raises ``IntrospectionError``: it is
never read as an answer, active or inactive (fail closed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote, urlencode

import anyio
import anyio.lowlevel
import httpx
from cachetools import LRUCache

from bearerguard._core.bodies import BodyError, BoundedBody
from bearerguard._core.introspected import (
    InactiveTokenError,
    IntrospectionResponseError,
    parse_introspection_response,
)
from bearerguard._core.scopes import split_scope
from bearerguard._core.times import check_count, check_seconds, check_wait
from bearerguard._fork import reset_after_fork
from bearerguard.errors import ConfigurationError, ServiceUnavailableError
from bearerguard.jwks import async_client, check_url, client_options, deadline_client

__all__ = [
    "InactiveTokenError",
    "IntrospectionError",
    "IntrospectionResult",
    "Introspector",
]

ClientAuthMethod = Literal["client_secret_basic", "client_secret_post"]
_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
_log = logging.getLogger("bearerguard")


class IntrospectionError(ServiceUnavailableError):
    """The introspection endpoint gave no usable answer: unreachable, slow, refusing our
    client credentials, or answering something that is not RFC 7662 JSON.

    The guard fails closed on it (503 with ``Retry-After``); the message says why, and
    never contains the token.
    """

    reason = "introspection_unavailable"


@dataclass(frozen=True, slots=True)
class IntrospectionResult:
    """The authorization server's answer about one token (RFC 7662 §2.2).

    Attributes:
        active: whether the token is active; the only member RFC 7662 requires.
        claims: every member of an active answer, read-only (``{"active": False}`` for an
            inactive one).
    """

    active: bool
    claims: Mapping[str, Any] = field(repr=False)

    @property
    def scopes(self) -> frozenset[str]:
        """The space-delimited ``scope`` member as a set (empty when absent)."""
        scope = self.claims.get("scope")
        return split_scope(scope) if isinstance(scope, str) else frozenset()

    @property
    def subject(self) -> str | None:
        """The ``sub`` member, if any."""
        return self.claims.get("sub")

    @property
    def client_id(self) -> str | None:
        """The ``client_id`` member, if any."""
        return self.claims.get("client_id")

    @property
    def expires_at(self) -> float | None:
        """The ``exp`` member in epoch seconds, if any."""
        exp = self.claims.get("exp")
        return None if exp is None else float(exp)


@dataclass(frozen=True, slots=True)
class _Request:
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    content_type: str | None
    body: bytes


_Flow = Generator[_Request, _Response, IntrospectionResult]
"""One introspection as a generator: it yields the request to send and is sent the answer."""


@dataclass(slots=True)
class _Flight:
    """One exchange under way about one token, whose outcome concurrent callers share."""

    result: IntrospectionResult | None = None
    error: IntrospectionError | None = None

    def shared(self) -> IntrospectionResult | None:
        """The leader's answer; its failure raised afresh; ``None`` if it gave up (cancelled)."""
        if self.error is not None:
            raise IntrospectionError(str(self.error))
        return self.result


@dataclass(slots=True)
class _AsyncFlight(_Flight):
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(slots=True)
class _SyncFlight(_Flight):
    done: threading.Event = field(default_factory=threading.Event)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").partition(";")[0].strip().lower()


def _error_code(body: bytes) -> str:
    """The RFC 6749 §5.2 ``error`` of a refusal body, for the message (never the body)."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return f" ({error[:64]!r})" if isinstance(error, str) else ""


@dataclass(frozen=True, slots=True)
class _Limits:
    timeout: float
    max_bytes: int


async def _post_async(
    client: httpx.AsyncClient, url: str, request: _Request, limits: _Limits
) -> _Response | IntrospectionError:
    timeout, max_bytes = limits.timeout, limits.max_bytes
    try:
        with anyio.fail_after(timeout):
            async with client.stream(
                "POST", url, content=request.body, headers=dict(request.headers)
            ) as response:
                body = BoundedBody(response.headers.get("content-encoding"), max_bytes)
                async for chunk in response.aiter_raw():
                    body.feed(chunk)
                return _Response(
                    response.status_code, response.headers.get("content-type"), body.finish()
                )
    except BodyError as exc:
        return IntrospectionError(f"POST {url}: {exc}")
    except TimeoutError:
        return IntrospectionError(f"POST {url} timed out after {timeout}s")
    except httpx.HTTPError as exc:
        return IntrospectionError(f"POST {url} failed: {type(exc).__name__}: {exc}"[:300])


def _post_sync(
    client: httpx.Client, url: str, request: _Request, limits: _Limits, deadline: float
) -> _Response | IntrospectionError:
    timeout, max_bytes = limits.timeout, limits.max_bytes
    try:
        with client.stream(
            "POST", url, content=request.body, headers=dict(request.headers)
        ) as response:
            body = BoundedBody(response.headers.get("content-encoding"), max_bytes)
            for chunk in response.iter_raw():
                body.feed(chunk)
                if time.monotonic() > deadline:
                    return IntrospectionError(f"POST {url} timed out after {timeout}s")
            return _Response(
                response.status_code, response.headers.get("content-type"), body.finish()
            )
    except BodyError as exc:
        return IntrospectionError(f"POST {url}: {exc}")
    except httpx.TimeoutException:
        return IntrospectionError(f"POST {url} timed out after {timeout}s")
    except httpx.HTTPError as exc:
        return IntrospectionError(f"POST {url} failed: {type(exc).__name__}: {exc}"[:300])


def _finish(flow: _Flow, outcome: _Response | IntrospectionError) -> IntrospectionResult:
    """Hand the flow its one response (or failure) and return what it concludes."""
    try:
        if isinstance(outcome, IntrospectionError):
            flow.throw(outcome)
        else:
            flow.send(outcome)
    except StopIteration as done:
        result: IntrospectionResult = done.value
        return result
    raise RuntimeError("the introspection flow asked for a second request")  # pragma: no cover


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Introspector:
    """Asks an authorization server whether tokens are active (RFC 7662).

    Args:
        endpoint: the introspection endpoint; https, or http on a loopback host for
            development. Redirects are never followed.
        client_id: this resource server's client identifier at the authorization server.
        client_secret: its secret. RFC 7662 §2.1 requires the endpoint to authenticate its
            callers; an endpoint that does not would tell anyone whether a token is valid.
        auth_method: ``"client_secret_basic"`` (HTTP Basic, both parts form-urlencoded
            first, RFC 6749 §2.3.1) or ``"client_secret_post"`` (in the form body).
        timeout: seconds for the whole exchange, connection included.
        max_bytes: the largest answer read.
        cache_size: how many answers are remembered, keyed by the token's SHA-256 (never by
            the token itself), active and inactive answers each up to that many, apart (junk
            tokens never evict real users' answers); 0 disables the cache.
        active_ttl: how long an ``active: true`` answer is reused: keep it short, since a
            revocation at the authorization server is seen only once it lapses. Never past
            the answer's ``exp`` (RFC 7662 §4); 0 asks on every use.
        inactive_ttl: how long an ``active: false`` answer is reused.
        max_concurrent: the most exchanges in flight at once, sync and async together,
            readiness probes included (callers asking about one token share one). Past it
            a request fails closed at once (``IntrospectionError``, answered 503): a flood
            of unknown opaque tokens can neither exhaust the process's connections nor pass
            through to the authorization server unbounded.
        health_interval: the least time, in seconds, between two probes of the endpoint by
            ``health()`` (readiness checks); meanwhile the last outcome is reported. A probe
            is an exchange counted in ``max_concurrent``: one due at the limit is not sent,
            the last outcome stands (busy is not down: junk opaque tokens, anyone's to
            send, must not make the instance unready), and the next check probes again.
        audience_checked_by_server: whether the authorization server answers ``active: true``
            only about tokens meant for this client (the resource server it authenticates
            by ``client_id``), as RFC 7662 §4 asks of it. Off by default: a guard refuses an
            opaque token whose answer names no audience (``aud``, optional in RFC 7662
            §2.2), since a token the same server issued for another API would pass here.
            Turn it on only for a server that never sends ``aud`` and scopes its answers to
            the caller; an ``aud`` it does send is still checked.
        clock: returns epoch seconds; injectable for tests.

    Raises:
        ConfigurationError: an unusable endpoint, credentials, limit or flag.

    Answers are parsed strictly (RFC 7662 §2.2): a JSON object, active only when its
    ``active`` is JSON ``true`` (anything else is an inactive answer), with typed members
    (see ``parse_introspection_response``). Any failure (network, timeout, a status other
    than 200, a body too large or not such JSON) raises ``IntrospectionError`` and is not
    cached.
    """

    name = "introspection"

    def __init__(  # noqa: PLR0915 - one statement per setting
        self,
        endpoint: str,
        *,
        client_id: str,
        client_secret: str,
        auth_method: ClientAuthMethod = "client_secret_basic",
        timeout: float = 5.0,
        max_bytes: int = 64 * 1024,
        cache_size: int = 10_000,
        active_ttl: float = 30.0,
        inactive_ttl: float = 300.0,
        max_concurrent: int = 100,
        health_interval: float = 10.0,
        audience_checked_by_server: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # White space in a URL is sent as %20 or read as a relative URL by httpx: every
        # exchange would fail (503) for a mistake made here. None was a TypeError.
        if not isinstance(endpoint, str) or any(char.isspace() for char in endpoint):
            raise ConfigurationError(
                f"introspection endpoint must be a URL without white space: {endpoint!r}"
            )
        self.endpoint = check_url(endpoint, "introspection endpoint")
        if not (isinstance(client_id, str) and client_id):
            raise ConfigurationError("client_id must be a non-empty string")
        if not (isinstance(client_secret, str) and client_secret):
            raise ConfigurationError("client_secret must be a non-empty string (RFC 7662 §2.1)")
        # RFC 6749 Appendix A.1, A.2: both are VSCHARs, no control character. A secret read
        # from a file with its newline was refused (401) at every exchange: a 503 for every
        # opaque token, where the configuration was at fault.
        for name, value in (("client_id", client_id), ("client_secret", client_secret)):
            if any(char < " " or char == "\x7f" for char in value):
                raise ConfigurationError(
                    f"{name} must not contain control characters such as a line break "
                    "(RFC 6749 Appendix A)"
                )
        if auth_method not in _AUTH_METHODS:
            raise ConfigurationError(f"auth_method must be one of {_AUTH_METHODS}")
        # A NaN timeout fails every exchange with a ValueError (a 500), an infinite one
        # never fails closed, an infinite TTL never asks again (a revocation is never seen);
        # True is no duration. Past TIMEOUT_MAX, the longest a thread can wait, every
        # exchange raised OverflowError (a 500).
        timeout = check_wait("timeout", timeout)
        # A NaN or infinite max_bytes read answers of any size; an infinite cache grew forever.
        max_bytes = check_count("max_bytes", max_bytes, least=256)
        cache_size = check_count("cache_size", cache_size, least=0)
        active_ttl = check_seconds("active_ttl", active_ttl)
        inactive_ttl = check_seconds("inactive_ttl", inactive_ttl)
        if type(max_concurrent) is not int or max_concurrent < 1:
            raise ConfigurationError("max_concurrent must be a positive integer")
        # 0 would let readiness polls through unbounded.
        health_interval = check_seconds("health_interval", health_interval, positive=True)
        if not callable(clock):  # called once an answer comes: a TypeError then is a 500
            raise ConfigurationError("clock must be a callable returning epoch seconds")
        if not isinstance(audience_checked_by_server, bool):
            # "false" read from the environment is truthy: the audience check would be off.
            raise ConfigurationError(
                "audience_checked_by_server must be True or False, "
                f"not {audience_checked_by_server!r}"
            )
        self.audience_checked_by_server = audience_checked_by_server
        self.client_id = client_id
        self.auth_method = auth_method
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.active_ttl = active_ttl
        self.inactive_ttl = inactive_ttl
        self.max_concurrent = max_concurrent
        self.health_interval = health_interval
        self.clock = clock
        # Whether the last probe by health() was answered as it should be (none yet: no).
        self.healthy = False
        self._probed_at: float | None = None
        self._probing = False  # a probe under way (under _lock): no second one meanwhile
        self._secret = client_secret
        self._headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if auth_method == "client_secret_basic":
            # RFC 6749 §2.3.1: each part is form-urlencoded before the Basic encoding. quote()
            # writes a space as %20, which form decoders and plain percent-decoders both read.
            pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        # Active and inactive answers apart: a flood of junk tokens (each answered inactive)
        # evicts other junk, never the answers about real users' tokens.
        self._cache: LRUCache[bytes, tuple[IntrospectionResult, float, float]] | None = (
            LRUCache(maxsize=cache_size) if cache_size > 0 else None
        )
        self._inactive: LRUCache[bytes, tuple[IntrospectionResult, float, float]] | None = (
            LRUCache(maxsize=cache_size) if cache_size > 0 else None
        )
        self._lock = threading.Lock()
        # Concurrent callers asking about one token share one exchange: a burst of requests
        # with a token not (or no longer) cached costs one POST, not one each.
        self._async_flights: dict[tuple[object, bytes], _AsyncFlight] = {}
        self._sync_flights: dict[bytes, _SyncFlight] = {}
        self._in_flight = 0  # exchanges under way, under _lock
        # Bumped by each fork: a slot taken before it is not given back after it (_free_slot).
        self._generation = 0
        # Async exchanges and probes under way, each in a task of its own (_to_the_end),
        # with what ends it.
        self._tasks: dict[asyncio.Task[None], Callable[[], None]] = {}
        reset_after_fork(self)
        self._limits = _Limits(self.timeout, max_bytes)
        # Loading the CA bundle costs tens of milliseconds: once, not per request.
        self._tls = ssl.create_default_context()

    def __repr__(self) -> str:
        return f"Introspector({self.endpoint!r}, client_id={self.client_id!r})"

    def _forked(self) -> None:
        """In a child process after ``fork()`` (bearerguard._fork): exchanges under way in
        other threads of the parent never end here. Kept, a pre-forked worker waited for
        them a whole timeout on every request with their tokens, then refused it, for its
        whole life; their slots stayed taken, and a probe under way was never done again.
        (An event loop's flights are keyed by that loop: a new loop never meets them.)"""
        self._lock = threading.Lock()
        self._sync_flights = {}
        self._in_flight = 0
        self._probing = False
        # A coroutine that forks goes on running its event loop in the child, where the
        # exchanges it had in flight end: given back there, slots the child never counted
        # took the count below zero, and max_concurrent was exceeded for good.
        self._generation += 1

    async def introspect(self, token: str) -> IntrospectionResult:
        """Ask whether ``token`` is active, from the cache when a fresh answer is held.

        Raises:
            IntrospectionError: the endpoint gave no usable answer.
        """
        digest = _digest(token)
        flow = self._flow(token, digest)
        try:
            request = next(flow)
        except StopIteration as done:  # answered from the cache
            cached: IntrospectionResult = done.value
            return cached
        self._drop_abandoned()
        # An anyio.Event belongs to one event loop: flights are shared within a loop only.
        key = (anyio.lowlevel.current_token(), digest)
        flight = self._async_flights.get(key)
        if flight is not None:
            flow.close()
            await flight.done.wait()
            shared = flight.shared()
            return shared if shared is not None else await self.introspect(token)
        with self._lock:
            generation = self._take_slot(flow)
        flight = self._async_flights[key] = _AsyncFlight()
        # The exchange is every caller's who shares it, not only this one's: cancelled with
        # this caller, it left the others asking again, and an endpoint slower than the
        # callers' patience never had an answer taken, nor cached for the next ones.
        await self._to_the_end(
            self._exchange(flow, request, flight),
            functools.partial(self._exchange_ended, key, flight, generation),
            "bearerguard-introspection",
        )
        if flight.error is not None:
            raise flight.error
        assert flight.result is not None  # noqa: S101 - _exchange sets one or the other
        return flight.result

    async def _exchange(self, flow: _Flow, request: _Request, flight: _AsyncFlight) -> None:
        """Run one exchange and leave its outcome in ``flight``."""
        try:
            async with async_client(self._client_options()) as client:
                outcome = await _post_async(client, self.endpoint, request, self._limits)
            flight.result = _finish(flow, outcome)
        except IntrospectionError as exc:
            flight.error = exc

    def _exchange_ended(
        self, key: tuple[object, bytes], flight: _AsyncFlight, generation: int
    ) -> None:
        """Give an exchange's slot back, and its outcome to whoever waits for it."""
        if self._async_flights.get(key) is flight:
            del self._async_flights[key]
        self._free_slot(generation)
        # An abandoned exchange's loop is closed: its waiters, if any, never run again.
        with contextlib.suppress(RuntimeError):
            flight.done.set()

    def introspect_sync(self, token: str) -> IntrospectionResult:
        """Ask whether ``token`` is active, blocking this thread (for WSGI); as ``introspect``."""
        digest = _digest(token)
        flow = self._flow(token, digest)
        try:
            request = next(flow)
        except StopIteration as done:
            cached: IntrospectionResult = done.value
            return cached
        with self._lock:
            flight = self._sync_flights.get(digest)
            leading = flight is None
            if flight is None:
                generation = self._take_slot(flow)
                flight = self._sync_flights[digest] = _SyncFlight()
        if not leading:
            flow.close()
            # The leader's exchange ends within its timeout, which began before this call.
            if not flight.done.wait(self.timeout):
                raise IntrospectionError(f"POST {self.endpoint} timed out after {self.timeout}s")
            shared = flight.shared()
            return shared if shared is not None else self.introspect_sync(token)
        try:
            # One deadline for the whole exchange, as anyio.fail_after gives the async side.
            deadline = time.monotonic() + self.timeout
            with deadline_client(self._client_options(), deadline) as client:
                outcome = _post_sync(client, self.endpoint, request, self._limits, deadline)
            flight.result = _finish(flow, outcome)
        except IntrospectionError as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._sync_flights[digest]
            self._free_slot(generation)
            flight.done.set()
        return flight.result

    def _take_slot(self, flow: _Flow | None) -> int:
        """Count one more exchange in flight, or refuse (closing ``flow``) at the limit.

        The caller holds ``_lock``. Returns the generation to give the slot back with.
        """
        if self._in_flight >= self.max_concurrent:
            if flow is not None:
                flow.close()
            raise IntrospectionError(
                f"{self.max_concurrent} exchanges with {self.endpoint} already in flight"
            )
        self._in_flight += 1
        return self._generation

    def _free_slot(self, generation: int) -> bool:
        """Give a slot back; ``False`` (nothing given) for one taken before a fork."""
        with self._lock:
            if generation != self._generation:
                return False
            self._in_flight -= 1
            return True

    # -- readiness --------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Probe the endpoint, at most once per ``health_interval``, for readiness checks.

        The probe asks about a random token, never a real one, and bypasses the cache: the
        endpoint is healthy when it answers RFC 7662 JSON not saying ``active: true``. Within
        the interval (or while another probe is under way) the last outcome is reported.
        A probe runs to its end (within ``timeout``) even if the check that started it is
        cancelled: its outcome is what every check reports until the next one.
        """
        self._drop_abandoned()
        token = self._probe_due()
        if token is not None:
            generation = self._probe_slot()
            if generation is None:
                self._probe_over()
                return self._health()
            # Cancelled with its caller (a readiness poll's timeout shorter than the probe's,
            # a server cancelling the request of a client gone), the probe recorded nothing,
            # yet none was due again for health_interval: every check meanwhile reported
            # the outcome from before, healthy while the endpoint hung.
            await self._to_the_end(
                self._probe(token),
                functools.partial(self._probe_ended, generation),
                "bearerguard-introspection-probe",
            )
        return self._health()

    async def _probe(self, token: str) -> None:
        async with async_client(self._client_options()) as client:
            outcome = await _post_async(client, self.endpoint, self._request(token), self._limits)
        self._probed(outcome)

    def _probe_ended(self, generation: int) -> None:
        # A probe of the parent's, ended in a child, must not end the child's own.
        if self._free_slot(generation):
            self._probe_over()

    async def _to_the_end(
        self, work: Coroutine[Any, Any, None], ended: Callable[[], None], name: str
    ) -> None:
        """Await ``work``, which goes on to its end (bounded by ``timeout``) if this caller is
        cancelled; ``ended`` is called once, when it ends or is abandoned."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: anyio's shield covers every cancellation
            with anyio.CancelScope(shield=True):
                try:
                    await work
                finally:
                    ended()
            return
        # Under asyncio, task.cancel() reaches the caller whatever anyio shields: the work
        # runs in a task of its own, held here (the event loop holds tasks only weakly), and
        # ended by its done callback, which also comes for a task cancelled before it ran.
        task = loop.create_task(work, name=name)
        self._tasks[task] = ended
        task.add_done_callback(self._task_done)
        await asyncio.shield(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        ended = self._tasks.pop(task, None)
        if ended is not None:  # not abandoned meanwhile (_drop_abandoned)
            ended()

    def _drop_abandoned(self) -> None:
        """End the tasks of event loops closed with them pending (``loop.close()`` without
        cancelling them, as some test runners and reloaders do): those loops never run them
        again, nor their done callbacks. Held here for good, each kept its slot
        (``max_concurrent``: a few such loops left none for any exchange) and its loop."""
        for task in list(self._tasks):
            if task.get_loop().is_closed():
                ended = self._tasks.pop(task, None)  # not ``del``: another thread may drop it
                if ended is not None:
                    ended()

    def health_sync(self) -> dict[str, Any]:
        """Probe the endpoint, blocking (for WSGI); as ``health``."""
        token = self._probe_due()
        if token is not None:
            try:
                generation = self._probe_slot()
                if generation is not None:
                    try:
                        deadline = time.monotonic() + self.timeout
                        with deadline_client(self._client_options(), deadline) as client:
                            request = self._request(token)
                            outcome = _post_sync(
                                client, self.endpoint, request, self._limits, deadline
                            )
                    finally:
                        self._free_slot(generation)
                    self._probed(outcome)
            finally:
                self._probe_over()
        return self._health()

    def _probe_due(self) -> str | None:
        """A random token to probe with, when a probe is due (claimed under the lock)."""
        now = self.clock()
        with self._lock:
            # A probe outlasting the interval (a timeout longer than it) is waited for, not
            # joined by another each interval. A clock stepped back (a negative age) probes
            # again rather than wait for it.
            if self._probing or (
                self._probed_at is not None and 0 <= now - self._probed_at < self.health_interval
            ):
                return None
            self._probed_at = now
            self._probing = True
        return "bearerguard-probe-" + secrets.token_urlsafe(24)

    def _probe_slot(self) -> int | None:
        """Take a slot for a probe, which is one more exchange with the endpoint; its
        generation (``_take_slot``).

        At the limit (``None``) the probe is not sent. Slots all taken say how busy this
        instance is, not whether the endpoint answers, and anyone can take them with
        random opaque tokens: counted as a failure, a flood would make every instance
        report not ready. The last outcome stands, and the next poll probes again.
        """
        with self._lock:
            try:
                return self._take_slot(None)
            except IntrospectionError:
                self._probed_at = None
                return None

    def _probe_over(self) -> None:
        with self._lock:
            self._probing = False

    def _probed(self, outcome: _Response | IntrospectionError) -> None:
        try:
            if isinstance(outcome, IntrospectionError):
                raise outcome
            result = self._result(outcome)
        except IntrospectionError as exc:
            _log.debug("bearerguard: introspection health probe failed: %s", exc)
            self.healthy = False
            return
        if result.active:
            # A token no one issued, answered active: this endpoint would accept anything.
            _log.warning("bearerguard: %s answered active for a random token", self.endpoint)
        self.healthy = not result.active

    def _health(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "healthy": self.healthy}

    def forget(self, token: str) -> None:
        """Drop the cached answer about ``token``, if any."""
        if self._cache is not None and self._inactive is not None:
            digest = _digest(token)
            with self._lock:
                self._cache.pop(digest, None)
                self._inactive.pop(digest, None)

    # -- the flow both drivers share ------------------------------------------------------

    def _flow(self, token: str, digest: bytes) -> _Flow:
        cached = self._cached(digest)
        if cached is not None:
            return cached
        # The answer is as of some instant after this one: its TTL counts from here, or a
        # long exchange would stretch it (a revocation meanwhile unseen past active_ttl).
        asked = self.clock()
        response = yield self._request(token)
        result = self._result(response)
        self._remember(digest, result, asked)
        return result

    def _request(self, token: str) -> _Request:
        form = {"token": token, "token_type_hint": "access_token"}  # RFC 7662 §2.1
        if self.auth_method == "client_secret_post":
            form |= {"client_id": self.client_id, "client_secret": self._secret}
        return _Request(urlencode(form).encode("ascii"), self._headers)

    def _result(self, response: _Response) -> IntrospectionResult:
        where = f"introspection endpoint {self.endpoint}"
        if response.status != 200:
            hint = " (are client_id and client_secret right?)" if response.status == 401 else ""
            raise IntrospectionError(
                f"{where} answered {response.status}{_error_code(response.body)}{hint}"
            )
        if _media_type(response.content_type) != "application/json":
            raise IntrospectionError(f"{where} answered {response.content_type!r}, not JSON")
        try:
            claims = parse_introspection_response(response.body)
        except IntrospectionResponseError as exc:
            raise IntrospectionError(f"{where} answered malformed JSON: {exc}") from exc
        return IntrospectionResult(claims["active"], MappingProxyType(claims))

    def _cached(self, digest: bytes) -> IntrospectionResult | None:
        if self._cache is None or self._inactive is None:
            return None
        with self._lock:
            for cache in (self._cache, self._inactive):
                entry = cache.get(digest)
                if entry is None:
                    continue
                # Held from when it was asked for until its lapse: a clock stepped back
                # (before then) would otherwise stretch its lifetime past the configured TTL.
                if entry[1] <= self.clock() < entry[2]:
                    return entry[0]
                del cache[digest]
        return None

    def _remember(self, digest: bytes, result: IntrospectionResult, asked: float) -> None:
        """Cache ``result``, an answer to a question asked at ``asked`` (clock seconds)."""
        cache, other = (
            (self._cache, self._inactive) if result.active else (self._inactive, self._cache)
        )
        if cache is None or other is None:
            return
        now = self.clock()
        if result.active:
            until = asked + self.active_ttl
            exp = result.expires_at
            if exp is not None:
                until = min(until, exp)  # RFC 7662 §4: never past the token's expiry
        else:
            until = asked + self.inactive_ttl
        with self._lock:
            # The answer to the latest question alone. Threads and event loops each run
            # their own exchange: one asked later and answered first stands (an "active"
            # from before a revocation must not replace the "inactive" since), and an older
            # answer of the other kind must not outlive this one.
            for held in (cache, other):
                entry = held.get(digest)
                if entry is not None and entry[1] > asked:
                    return
            other.pop(digest, None)
            if until > now:
                cache[digest] = (result, asked, until)

    def _client_options(self) -> dict[str, Any]:
        # A short-lived client per exchange, bound to no event loop (as in jwks.py).
        return client_options(self.timeout, self._tls)
