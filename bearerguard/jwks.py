"""Fetching key sets and issuer metadata over HTTP, with httpx.

This is a thin I/O edge: it returns parsed JSON documents and their freshness lifetimes;
deciding when to fetch and what to trust lives in ``bearerguard._core``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import ssl
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

from bearerguard.__about__ import __version__
from bearerguard._core.bodies import BodyError, BoundedBody
from bearerguard._core.freshness import freshness_lifetime
from bearerguard._core.times import check_count, check_wait
from bearerguard._resolver import resolve
from bearerguard.errors import ConfigurationError

__all__ = [
    "USER_AGENT",
    "FetchError",
    "FetchPolicy",
    "JWKSFetcher",
    "NotJSONError",
    "async_client",
    "check_issuer",
    "check_url",
    "client_options",
    "deadline_client",
    "discovery_urls",
]

USER_AGENT = f"bearerguard/{__version__} (+https://pypi.org/project/bearerguard/)"
_LOOPBACK_NAMES = frozenset({"localhost"})


class FetchError(Exception):
    """A key set or metadata document could not be had; the message says why.

    ``cause`` says it again in a short fixed form that holds no URL and nothing the server
    sent (``HTTP 503``, ``timed out``): the ``auth.unavailable`` event's detail quotes it.
    """

    def __init__(self, message: str, cause: str = "fetch failed") -> None:
        super().__init__(message)
        self.cause = cause


class NotJSONError(FetchError):
    """The server answered, but not with a JSON document (RFC 8259)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "invalid JSON")


class _NoKeySetURLError(FetchError):
    """The metadata gave no key set URL to follow, without naming another issuer: none
    answered with JSON, or the one for this issuer has no usable ``jwks_uri``."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message, cause)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """Require https, or http on a loopback host (for development).

    Raises:
        ConfigurationError: any other scheme, a missing host, an invalid port, credentials
            or a fragment.
    """
    refusal = ConfigurationError(
        f"{what} must be an https URL without credentials or fragment "
        f"(http only for a loopback host: 127.0.0.0/8, ::1 or localhost): {url!r}"
    )
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        # What httpx refuses on every request (a control character, a malformed IDNA host:
        # an InvalidURL or a UnicodeError, neither an httpx.HTTPError) is refused here.
        httpx.URL(url).host  # noqa: B018
    except (ValueError, httpx.InvalidURL):
        raise refusal from None
    secure = parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host))
    if not secure or not host or parts.username or parts.password or parts.fragment:
        raise refusal
    return url


def check_issuer(issuer: str) -> str:
    """Require an issuer identifier: a ``check_url`` URL without whitespace, query or fragment.

    RFC 8414 §2 and OIDC Discovery §3: an issuer has no query or fragment component (an
    empty one, a bare ``?`` or ``#``, included). Its metadata URLs would drop them, so its
    own metadata could never name it.

    Raises:
        ConfigurationError: any other value.
    """
    if isinstance(issuer, str) and any(char.isspace() for char in issuer):
        # A stray space or newline (from the environment, a file) never matches a token's
        # iss, compared exactly, and URL parsers drop it: the metadata found at the trimmed
        # URL names another issuer, and every token was refused.
        raise ConfigurationError(f"issuer must not contain whitespace: {issuer!r}")
    check_url(issuer, "issuer")
    if "?" in issuer or "#" in issuer:
        raise ConfigurationError(
            f"issuer must be an issuer identifier, without a query or fragment "
            f"(RFC 8414 §2): {issuer!r}"
        )
    if "{" in issuer or "}" in issuer:
        # Entra ID's multi-tenant metadata names the issuer ".../{tenantid}/v2.0": copied
        # as is, a template no token's iss equals (and braces are no URI characters,
        # RFC 3986 §2).
        raise ConfigurationError(
            f"issuer {issuer!r} holds a placeholder: put in the value it stands for "
            "(your tenant ID, your realm)"
        )
    _refuse_entra_alias(issuer)
    return issuer


# Entra ID's login hosts (public, US government, China) and the tenant aliases of its
# multi-tenant endpoints: an authority for sign-in, never the iss of a token, which names
# the user's own tenant.
_ENTRA_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)
_ENTRA_ALIASES = frozenset({"common", "organizations", "consumers"})


def _refuse_entra_alias(issuer: str) -> None:
    """Refuse an Entra ID multi-tenant endpoint given as the issuer.

    With it every request was answered 503 (its metadata names another issuer), or with a
    configured ``jwks_uri`` every token 401 ``invalid_issuer``: no token carries it.
    """
    parts = urlsplit(issuer)
    tenant = parts.path.strip("/").split("/")[0].lower()
    if (parts.hostname or "") in _ENTRA_HOSTS and tenant in _ENTRA_ALIASES:
        form = "TENANT_ID/" if parts.hostname == "sts.windows.net" else "TENANT_ID/v2.0"
        raise ConfigurationError(
            f"issuer {issuer!r} is Entra ID's multi-tenant endpoint, which no token names "
            "as its iss: each names its user's tenant. Configure "
            f"https://{parts.hostname}/{form} with your tenant ID, or accept several "
            "tenants with TrustedIssuers and a resolver (see the recipes)"
        )


def client_options(timeout: float, tls: ssl.SSLContext) -> dict[str, Any]:
    """httpx client settings for every request bearerguard makes to an authorization server.

    No redirects, no proxies or credentials from the environment, a prebuilt TLS context
    (loading the CA bundle costs tens of milliseconds), and uncompressed bodies asked for:
    a server that compresses anyway is inflated within the size limit by ``BoundedBody``
    (callers read ``iter_raw``), never by httpx.
    """
    return {
        "headers": {
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        },
        "timeout": timeout,
        "follow_redirects": False,
        "trust_env": False,
        "verify": tls,
    }


def discovery_urls(issuer: str) -> tuple[str, str]:
    """Where an issuer publishes its metadata: OIDC Discovery §4, then RFC 8414 §3."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return (
        f"{origin}{path}/.well-known/openid-configuration",
        f"{origin}/.well-known/oauth-authorization-server{path}",
    )


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Limits for every fetch.

    Args:
        timeout: seconds for the whole fetch, connection included.
        max_bytes: the largest response body read.

    Raises:
        ConfigurationError: a timeout that is not a positive number of seconds a thread
            can wait (``threading.TIMEOUT_MAX`` at most), or a ``max_bytes`` below 1.
    """

    timeout: float = 5.0
    max_bytes: int = 512 * 1024

    def __post_init__(self) -> None:
        # Written so that NaN fails too. Every fetch failed at once with an obscure message
        # (503 on every request), and under WSGI a thread waiting for another's fetch waits
        # up to ``timeout`` on a lock, which refuses more than TIMEOUT_MAX: a 500.
        object.__setattr__(self, "timeout", check_wait("FetchPolicy timeout", self.timeout))
        # Infinity read bodies of any size.
        check_count("FetchPolicy max_bytes", self.max_bytes)


def _status_error(url: str, status: int) -> FetchError:
    return FetchError(f"GET {url} answered {status}", f"HTTP {status}")


def _timed_out(url: str, policy: FetchPolicy) -> FetchError:
    return FetchError(f"GET {url} timed out after {policy.timeout}s", "timed out")


def _failed(url: str, exc: httpx.HTTPError) -> FetchError:
    """A GET that failed in transport: the cause names the httpx error and, when the
    system gave one, the errno's symbol (``ConnectError: ECONNREFUSED``), never its text:
    a name lookup's message quotes the host, a proxy's the URL."""
    symbol = _errno_symbol(exc)
    cause = type(exc).__name__ if symbol is None else f"{type(exc).__name__}: {symbol}"
    return FetchError(f"GET {url} failed: {type(exc).__name__}: {exc}", cause)


def _errno_symbol(exc: BaseException) -> str | None:
    """The symbol of the first ``OSError``'s errno found under ``exc`` (``ECONNREFUSED``).

    Looked for in its causes, its contexts and its arguments: httpcore wraps the socket's
    error as an argument, and a connection error raised again after its handler ended (the
    sync backend tries each address in turn) takes for context whatever exception is being
    handled then (the guard fetches while it handles a kid miss), not the socket's error.
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 16:  # a short chain: httpx's error, httpcore's, the OSError
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        code = current.errno if isinstance(current, OSError) else None
        if isinstance(code, int) and code in errno.errorcode:
            return errno.errorcode[code]
        pending.extend(
            found
            for found in (current.__cause__, current.__context__, *current.args)
            if isinstance(found, BaseException)
        )
    return None


@dataclass(frozen=True, slots=True)
class _Response:
    body: bytes
    headers: httpx.Headers


async def _get_async(
    client: httpx.AsyncClient, url: str, policy: FetchPolicy, deadline: float
) -> _Response | FetchError:
    try:
        # What is left of the whole fetch's timeout (discovery included), not a fresh one.
        with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    return _status_error(url, response.status_code)
                headers = response.headers
                body = BoundedBody(headers.get("content-encoding"), policy.max_bytes)
                async for chunk in response.aiter_raw():
                    body.feed(chunk)
                return _Response(body.finish(), headers)
    except BodyError as exc:
        return FetchError(f"GET {url}: {exc}", exc.cause)
    except TimeoutError:
        return _timed_out(url, policy)
    except httpx.HTTPError as exc:
        return _failed(url, exc)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by ``deadline`` (``time.monotonic()``).

    httpx's sync timeouts bound each socket operation: a server sending its status line or
    headers a byte at a time would hold the thread for ever. Each operation here waits at
    most what is left of the whole exchange, and fails at once past it.
    """

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("deadline exceeded")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self._left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, left), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, its connections bounded by one deadline (``_DeadlineStream``),
    host name lookup included (``bearerguard._resolver``)."""

    def __init__(self, deadline: float) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def _left(self, timeout: float | None) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("deadline exceeded")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        # getaddrinfo takes no timeout: the name is resolved within the deadline first, then
        # each address it gives is tried in turn (as socket.create_connection does).
        try:
            addresses = resolve(host, port, self._left(timeout))
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        refused = httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            try:
                stream = self._backend.connect_tcp(
                    address, port, self._left(timeout), local_address, socket_options
                )
            except httpcore.ConnectTimeout:
                raise
            except httpcore.ConnectError as exc:
                refused = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        # Never an assert (python -O drops it): the fetch fails closed whatever resolve() gave.
        raise refused

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(path, self._left(timeout), socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def deadline_client(options: dict[str, Any], deadline: float) -> httpx.Client:
    """A sync client (``client_options``) whose whole use ends by ``deadline`` (monotonic).

    Past it, or when a host name lookup, a read, a write or a connection would outlast it,
    httpx raises a ``TimeoutException``: the sync counterpart of the ``anyio.fail_after``
    around async exchanges.
    """
    transport = httpx.HTTPTransport(verify=options["verify"], trust_env=False)
    # httpx offers no way to pass a network backend: its pool is rebuilt with ours.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=options["verify"],
        network_backend=_DeadlineBackend(deadline),
    )
    return httpx.Client(transport=transport, **options)


class _ConnectErrorBackend(httpcore.AsyncNetworkBackend):
    """httpcore's async backend, any failure to connect a ``ConnectError``.

    httpcore maps only ``OSError`` (and timeouts) from a connection attempt: whatever else
    the host name lookup raises (``LookupError`` from a frozen app without the idna codec,
    a patched ``getaddrinfo``'s own exception) went out of the fetch as it was, a 500 where
    not caught. The sync edge's ``_resolver`` turns the same into a failed lookup.
    """

    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            return await self._backend.connect_tcp(
                host, port, timeout, local_address, socket_options
            )
        except (httpcore.ConnectError, httpcore.ConnectTimeout):
            raise
        except Exception as exc:  # whatever broke, the connection failed (fail closed)
            raise httpcore.ConnectError(f"{type(exc).__name__}: {exc}") from exc

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._backend.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def async_client(options: dict[str, Any]) -> httpx.AsyncClient:
    """An async client (``client_options``) whose failures to connect are all httpx errors."""
    transport = httpx.AsyncHTTPTransport(verify=options["verify"], trust_env=False)
    # httpx offers no way to pass a network backend: its pool is rebuilt with ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=options["verify"],
        network_backend=_ConnectErrorBackend(),
    )
    return httpx.AsyncClient(transport=transport, **options)


def _get_sync(
    client: httpx.Client, url: str, policy: FetchPolicy, deadline: float
) -> _Response | FetchError:
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                return _status_error(url, response.status_code)
            headers = response.headers
            body = BoundedBody(headers.get("content-encoding"), policy.max_bytes)
            for chunk in response.iter_raw():
                body.feed(chunk)
                if time.monotonic() > deadline:
                    return _timed_out(url, policy)
            return _Response(body.finish(), headers)
    except BodyError as exc:
        return FetchError(f"GET {url}: {exc}", exc.cause)
    except httpx.TimeoutException:
        return _timed_out(url, policy)
    except httpx.HTTPError as exc:
        return _failed(url, exc)


def _json(url: str, response: _Response) -> Any:
    try:
        return json.loads(response.body)
    except (ValueError, RecursionError) as exc:
        raise NotJSONError(f"GET {url} did not return JSON") from exc


def _lifetime(headers: httpx.Headers, received: float) -> float | None:
    """The freshness lifetime a response's headers give it (RFC 9111 §4.2)."""
    return freshness_lifetime(
        headers.get("cache-control"),
        headers.get("age"),
        expires=headers.get("expires"),
        date=headers.get("date"),
        received=received,
    )


_Result = tuple[Any, float | None]
_Get = tuple[str, bool]
"""A URL to GET, and whether the GET is optional: one the fetch can do without (metadata
read again), which may spend only the first half of the fetch's timeout."""
_Flow = Generator[_Get, _Response, _Result]
"""A fetch as a generator: it yields the GETs to make and is sent their responses."""


def _advance(flow: _Flow, outcome: _Response | FetchError) -> _Get:
    """Give the flow a GET's outcome; returns the next GET (StopIteration when done)."""
    if isinstance(outcome, FetchError):
        return flow.throw(outcome)
    return flow.send(outcome)


class JWKSFetcher:
    """Fetches an issuer's JWK Set, discovering its URL from the issuer metadata if needed.

    Args:
        issuer: the trusted issuer; discovery requires the metadata's ``issuer`` to equal it
            (OIDC Discovery §4.3, RFC 8414 §3.3).
        jwks_uri: the key set URL; ``None`` to discover it.
        policy: timeouts and size limits.
        clock: returns epoch seconds: when a response without a ``Date`` was received.

    Redirects are not followed and every URL must be https (http only on loopback).
    """

    def __init__(
        self,
        issuer: str,
        jwks_uri: str | None,
        policy: FetchPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self._clock = clock
        self.configured_uri = None if jwks_uri is None else check_url(jwks_uri, "jwks_uri")
        self.jwks_uri = self.configured_uri
        self.policy = policy
        self._metadata_url: str | None = None  # the discovery URL that answered last
        # Loading the CA bundle takes tens of milliseconds of CPU: do it once, here, rather
        # than on the event loop at every refresh.
        self._tls = ssl.create_default_context()

    def _client_options(self) -> dict[str, Any]:
        # A short-lived client per refresh: fetches are rare, and a client bound to no event
        # loop keeps the guard usable across loops (tests, lifespans, reloads).
        return client_options(self.policy.timeout, self._tls)

    def _flow(self, *, rediscover: bool) -> _Flow:
        """Discovery (when needed), then the key set: the logic both drivers share."""
        if self.jwks_uri is None:
            self.jwks_uri = yield from self._discover(optional=False)
        elif rediscover and self.configured_uri is None:
            # An issuer may move its key set (RFC 8414 §2 jwks_uri), the old URL still serving
            # the old keys: a kid the set lacks reads the metadata again, paced as that kid's
            # fetch is (one per cooldown). Metadata that no longer answers, or names no usable
            # jwks_uri, keeps the URL known; metadata naming only another issuer still fails
            # the fetch (RFC 8414 §3.3). Optional: metadata that hangs leaves the key set half
            # the timeout, not none.
            with contextlib.suppress(_NoKeySetURLError):
                self.jwks_uri = yield from self._discover(optional=True)
        try:
            response = yield self.jwks_uri, False
            document = _json(self.jwks_uri, response)
        except FetchError:
            # A discovered location may have moved: discover it again next time.
            self.jwks_uri = self.configured_uri
            raise
        return document, _lifetime(response.headers, self._clock())

    def _discover(self, *, optional: bool) -> Generator[_Get, _Response, str]:
        failures = []
        causes = []  # each URL's, for FetchError.cause
        misnamed = False
        urls = sorted(discovery_urls(self.issuer), key=lambda url: url != self._metadata_url)
        for url in urls:
            try:
                metadata = _json(url, (yield url, optional))
            except FetchError as exc:
                failures.append(str(exc))
                causes.append(exc.cause)
                continue
            named = metadata.get("issuer") if isinstance(metadata, dict) else None
            if named != self.issuer:
                # OIDC Discovery §4.3, RFC 8414 §3.3: a document not naming this issuer (a
                # catch-all's {}, another issuer's) MUST NOT be used. The other URL may
                # still serve this issuer's own; if none does, the fetch fails. The name it
                # gives shows the usual mistake: a trailing slash too many or too few.
                failures.append(
                    f"metadata at {url} names the issuer {named[:200]!r}, not {self.issuer!r}"
                    if isinstance(named, str)
                    else f"metadata at {url} names no issuer"
                )
                causes.append("another issuer named" if isinstance(named, str) else "no issuer")
                misnamed = True
                continue
            self._metadata_url = url
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise _NoKeySetURLError(
                    f"metadata at {url} has no jwks_uri", "discovery: no jwks_uri"
                )
            try:
                return check_url(jwks_uri, "discovered jwks_uri")
            except ConfigurationError as exc:
                raise _NoKeySetURLError(str(exc), "discovery: jwks_uri refused") from exc
        message = "discovery failed: " + "; ".join(failures)
        cause = "discovery: " + ", ".join(causes)
        raise FetchError(message, cause) if misnamed else _NoKeySetURLError(message, cause)

    async def fetch(self, *, rediscover: bool = False) -> tuple[Any, float | None]:
        """Fetch the key set document without blocking the event loop.

        The whole fetch (discovery included) ends within ``policy.timeout``.

        Args:
            rediscover: read the issuer metadata again first, when the key set's URL was
                discovered (the guard asks on a kid miss: the set may have moved).

        Returns:
            The parsed JSON, and the freshness lifetime its response's headers gave it
            (``Cache-Control: max-age``, else ``Expires``; ``None`` if unsaid).

        Raises:
            FetchError: the network, the server or the document failed.
        """
        start = time.monotonic()
        deadline = start + self.policy.timeout
        optional_deadline = start + self.policy.timeout / 2
        flow = self._flow(rediscover=rediscover)
        async with async_client(self._client_options()) as client:
            try:
                url, optional = next(flow)
                while True:
                    ends = optional_deadline if optional else deadline
                    outcome = await _get_async(client, url, self.policy, ends)
                    url, optional = _advance(flow, outcome)
            except StopIteration as done:
                result: _Result = done.value
                return result

    def fetch_sync(self, *, rediscover: bool = False) -> tuple[Any, float | None]:
        """Fetch the key set document, blocking this thread (for WSGI); as ``fetch``.

        The whole fetch (discovery included) ends within ``policy.timeout``.
        """
        start = time.monotonic()
        deadline = start + self.policy.timeout
        optional_deadline = start + self.policy.timeout / 2
        flow = self._flow(rediscover=rediscover)
        with contextlib.ExitStack() as clients:
            # A client's connections end by its deadline: optional GETs get a client of their
            # own, made when one is asked for.
            made: dict[float, httpx.Client] = {}

            def client_until(ends: float) -> httpx.Client:
                if ends not in made:
                    made[ends] = clients.enter_context(
                        deadline_client(self._client_options(), ends)
                    )
                return made[ends]

            try:
                url, optional = next(flow)
                while True:
                    ends = optional_deadline if optional else deadline
                    outcome = _get_sync(client_until(ends), url, self.policy, ends)
                    url, optional = _advance(flow, outcome)
            except StopIteration as done:
                result: _Result = done.value
                return result
