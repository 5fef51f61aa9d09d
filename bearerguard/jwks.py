"""Fetching key sets and issuer metadata over HTTP, with httpx.

This is a thin I/O edge: it returns parsed JSON documents and ``Cache-Control`` lifetimes;
deciding when to fetch and what to trust lives in ``bearerguard._core``.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from bearerguard.__about__ import __version__
from bearerguard._core.keycache import ttl_from_cache_control
from bearerguard.errors import ConfigurationError

__all__ = [
    "USER_AGENT",
    "FetchError",
    "FetchPolicy",
    "JWKSFetcher",
    "check_url",
    "discovery_urls",
]

USER_AGENT = f"bearerguard/{__version__} (+https://pypi.org/project/bearerguard/)"
_LOOPBACK_NAMES = frozenset({"localhost"})


class FetchError(Exception):
    """A key set or metadata document could not be had; the message says why."""


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
        f"(http only for 127.0.0.1, ::1 or localhost): {url!r}"
    )
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise refusal from None
    secure = parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host))
    if not secure or not host or parts.username or parts.password or parts.fragment:
        raise refusal
    return url


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
    """

    timeout: float = 5.0
    max_bytes: int = 512 * 1024


async def _get_json(
    client: httpx.AsyncClient, url: str, policy: FetchPolicy
) -> tuple[Any, str | None]:
    try:
        with anyio.fail_after(policy.timeout):
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise FetchError(f"GET {url} answered {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > policy.max_bytes:
                        raise FetchError(f"GET {url} body exceeds {policy.max_bytes} bytes")
                cache_control = response.headers.get("cache-control")
    except TimeoutError as exc:
        raise FetchError(f"GET {url} timed out after {policy.timeout}s") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
    try:
        return json.loads(bytes(body)), cache_control
    except (ValueError, RecursionError) as exc:
        raise FetchError(f"GET {url} did not return JSON") from exc


class JWKSFetcher:
    """Fetches an issuer's JWK Set, discovering its URL from the issuer metadata if needed.

    Args:
        issuer: the trusted issuer; discovery requires the metadata's ``issuer`` to equal it
            (OIDC Discovery §4.3, RFC 8414 §3.3).
        jwks_uri: the key set URL; ``None`` to discover it.
        policy: timeouts and size limits.

    Redirects are not followed and every URL must be https (http only on loopback).
    """

    def __init__(self, issuer: str, jwks_uri: str | None, policy: FetchPolicy) -> None:
        self.issuer = issuer
        self.configured_uri = None if jwks_uri is None else check_url(jwks_uri, "jwks_uri")
        self.jwks_uri = self.configured_uri
        self.policy = policy
        # Loading the CA bundle takes tens of milliseconds of CPU: do it once, here, rather
        # than on the event loop at every refresh.
        self._tls = ssl.create_default_context()

    def _client(self) -> httpx.AsyncClient:
        # A short-lived client per refresh: fetches are rare, and a client bound to no event
        # loop keeps the guard usable across loops (tests, lifespans, reloads).
        return httpx.AsyncClient(
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                # Uncompressed only: a compressed body could inflate far past max_bytes
                # within one chunk before the size check sees it.
                "Accept-Encoding": "identity",
            },
            timeout=self.policy.timeout,
            follow_redirects=False,
            trust_env=False,
            verify=self._tls,
        )

    async def _discover(self, client: httpx.AsyncClient) -> str:
        failures = []
        for url in discovery_urls(self.issuer):
            try:
                metadata, _ = await _get_json(client, url, self.policy)
            except FetchError as exc:
                failures.append(str(exc))
                continue
            if not isinstance(metadata, dict) or metadata.get("issuer") != self.issuer:
                raise FetchError(f"metadata at {url} names another issuer")
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise FetchError(f"metadata at {url} has no jwks_uri")
            try:
                return check_url(jwks_uri, "discovered jwks_uri")
            except ConfigurationError as exc:
                raise FetchError(str(exc)) from exc
        raise FetchError("discovery failed: " + "; ".join(failures))

    async def fetch(self) -> tuple[Any, float | None]:
        """Fetch the key set document.

        Returns:
            The parsed JSON, and the ``max-age`` its response allowed (``None`` if unsaid).

        Raises:
            FetchError: the network, the server or the document failed.
        """
        async with self._client() as client:
            if self.jwks_uri is None:
                self.jwks_uri = await self._discover(client)
            try:
                document, cache_control = await _get_json(client, self.jwks_uri, self.policy)
            except FetchError:
                # A discovered location may have moved: discover it again next time.
                self.jwks_uri = self.configured_uri
                raise
        return document, ttl_from_cache_control(cache_control)
