"""Key-set behaviour against real loopback HTTP servers: discovery, caching, rotation, outages.

Every test talks to a real ``DevIssuer`` on 127.0.0.1 (or a raw socket, where the issuer
cannot express the case). Time is a ``FakeClock`` handed to the guard, so TTLs, cooldowns
and staleness are crossed by advancing it: nothing sleeps, except where a real network
delay is the point (a fetch held open, a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gc
import gzip
import itertools
import json
import socket
import sys
import threading
import time
import tracemalloc
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message
from structlog.testing import capture_logs

from bearerguard import (
    BearerGuard,
    ConfigurationError,
    FetchPolicy,
    KeySetUnavailableError,
    RefreshPolicy,
    __version__,
)
from bearerguard._core.keys import KEYS_PER_KID
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.errors import BadSignatureError, UnknownKeyError, UnsupportedAlgorithmError
from bearerguard.jwks import USER_AGENT, FetchError, JWKSFetcher
from bearerguard.readiness import ReadinessEndpoint
from bearerguard.testing import DevIssuer, Override, SigningKey
from tests.helpers import b64, until, until_awaited

# Fresh for 300 s (the issuer's max-age), one fetch per 30 s on misses or failures, and
# stale keys served for 600 s past freshness while fetches fail.
POLICY = RefreshPolicy(default_ttl=300, min_ttl=60, max_ttl=3600, cooldown=30, max_stale=600)
# Generous for fetches that should succeed (no flakes on a loaded machine); SHORT where a
# fetch is meant to time out, or is bound to fail anyway.
FETCH = FetchPolicy(timeout=5.0, max_bytes=16 * 1024)
SHORT = FetchPolicy(timeout=0.3, max_bytes=FETCH.max_bytes)
# How late a "slow" answer comes: well past SHORT's timeout (0.3 s later let a process
# stalled on a busy core read the answer before its timeout fired). Nothing waits for it:
# a stopped DevIssuer ends its delays.
SLOW = SHORT.timeout + 5.0
LONG = 30 * 86_400  # token lifetime that outlives every clock jump in this file


class FakeClock:
    """Epoch seconds that move only when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def dev() -> Iterator[DevIssuer]:
    """A fresh single-key ES256 issuer (fast to generate); faults go in ``overrides``."""
    with DevIssuer(algorithms=("ES256",)) as issuer:
        yield issuer


def make_guard(
    issuer: DevIssuer, clock: FakeClock, *, discover: bool = True, **options: Any
) -> BearerGuard:
    options.setdefault("refresh", POLICY)
    options.setdefault("fetch", FETCH)
    return issuer.guard(discover=discover, clock=clock, **options)


def mint(issuer: DevIssuer, **options: Any) -> str:
    return issuer.mint(expires_in=LONG, **options)


def random_kid_token(issuer: DevIssuer) -> str:
    """A token naming a key nobody publishes (the signature is never reached)."""
    return issuer.sign(issuer.claims(expires_in=LONG), headers={"kid": uuid.uuid4().hex})


def sign_with(issuer: DevIssuer, key: SigningKey) -> str:
    """A token signed by a given (possibly no longer current) key of the issuer."""
    header = {"kid": key.kid, "typ": "at+jwt"}
    claims = issuer.claims(expires_in=LONG)
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers=header)


def jwks_body(issuer: DevIssuer, **extra: Any) -> bytes:
    return json.dumps({**issuer.jwks(), **extra}).encode()


def serve_jwks(
    issuer: DevIssuer, *, delay: float = 0.0, cache_control: str | None = "max-age=300"
) -> None:
    """Serve the current JWKS from an override: a snapshot, optionally slow."""
    headers = {} if cache_control is None else {"Cache-Control": cache_control}
    issuer.overrides[issuer.jwks_path] = Override(
        body=jwks_body(issuer), delay=delay, headers=headers
    )


def break_jwks(issuer: DevIssuer) -> None:
    issuer.overrides[issuer.jwks_path] = Override(status=500, body=b'{"error": "boom"}')


def repair_jwks(issuer: DevIssuer) -> None:
    issuer.overrides.pop(issuer.jwks_path, None)


# -- the middleware -----------------------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


def protected(guard: BearerGuard, **options: Any) -> BearerGuardMiddleware:
    app = Starlette(routes=[Route("/me", whoami)])
    return BearerGuardMiddleware(app, guard=guard, **options)


@asynccontextmanager
async def client_for(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


async def get_me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/me", headers={"Authorization": f"Bearer {token}"})


def assert_unavailable(response: httpx.Response) -> None:
    """Fail closed: 503 with Retry-After, no challenge (the token may well be good)."""
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "www-authenticate" not in response.headers
    assert response.json()["error"] == "temporarily_unavailable"


async def assert_guard_unavailable(guard: BearerGuard, token: str) -> None:
    with pytest.raises(KeySetUnavailableError):
        await guard.authenticate(token)


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[Message]:
    """Run a real ASGI lifespan cycle by hand; yields the app's answer to start-up."""
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    to_app, app_inbox = anyio.create_memory_object_stream[Message](1)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](1)
    with to_app, app_inbox, app_outbox, from_app, anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app, scope, app_inbox.receive, app_outbox.send)
            await to_app.send({"type": "lifespan.startup"})
            yield await from_app.receive()
            await to_app.send({"type": "lifespan.shutdown"})
            assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A URL on a port that accepts TCP connections but never answers them."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"


# == discovery ============================================================================


@pytest.mark.anyio
async def test_discovers_the_jwks_uri_from_openid_configuration(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock)
    token = await guard.authenticate(mint(dev))
    assert token.subject == "user-1"
    assert dev.requests == [dev.oidc_metadata_path, dev.jwks_path]


@pytest.mark.anyio
async def test_falls_back_to_rfc8414_metadata_when_oidc_discovery_is_404(
    clock: FakeClock,
) -> None:
    with DevIssuer(algorithms=("ES256",), oidc_discovery=False, oauth_metadata=True) as issuer:
        guard = make_guard(issuer, clock)
        await guard.authenticate(mint(issuer))
        assert issuer.requests == [
            issuer.oidc_metadata_path,
            issuer.oauth_metadata_path,
            issuer.jwks_path,
        ]


@pytest.mark.anyio
@pytest.mark.parametrize("oidc", [True, False], ids=["oidc", "rfc8414"])
async def test_issuer_with_a_path_component(clock: FakeClock, *, oidc: bool) -> None:
    options = {"oidc_discovery": oidc, "oauth_metadata": not oidc}
    with DevIssuer(algorithms=("ES256",), path="/tenants/a", **options) as issuer:
        guard = make_guard(issuer, clock)
        await guard.authenticate(mint(issuer))
        # OIDC appends the well-known suffix; RFC 8414 §3.1 inserts it before the path.
        assert "/tenants/a/.well-known/openid-configuration" in issuer.requests
        if not oidc:
            assert "/.well-known/oauth-authorization-server/tenants/a" in issuer.requests
        assert issuer.requests[-1] == "/tenants/a/jwks.json"


@pytest.mark.anyio
@pytest.mark.parametrize("oidc", [True, False], ids=["oidc", "rfc8414"])
@pytest.mark.parametrize("path", ["", "/tenants/a"], ids=["root", "path"])
async def test_issuer_ending_with_a_slash(clock: FakeClock, path: str, *, oidc: bool) -> None:
    """Auth0 issuers end with "/": OIDC Discovery §4 and RFC 8414 §3.1 both remove that
    terminating "/" before placing the well-known suffix."""
    options = {"oidc_discovery": False, "oauth_metadata": False}
    with DevIssuer(algorithms=("ES256",), path=path, **options) as issuer:
        url = issuer.url + "/"
        where = issuer.oidc_metadata_path if oidc else issuer.oauth_metadata_path
        metadata = {**issuer.metadata(), "issuer": url}
        issuer.overrides[where] = Override(body=json.dumps(metadata).encode())
        guard = BearerGuard(
            issuer=url, audience=issuer.audience, refresh=POLICY, fetch=FETCH, clock=clock
        )
        await guard.authenticate(mint(issuer, iss=url))
        assert where == (
            f"{path}/.well-known/openid-configuration"
            if oidc
            else f"/.well-known/oauth-authorization-server{path}"
        )
        assert issuer.requests[-2:] == [where, issuer.jwks_path]


@pytest.mark.anyio
async def test_discovery_happens_once_then_only_the_jwks_is_refetched(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock)
    await guard.authenticate(mint(dev))
    clock.advance(300)
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 2
    assert dev.fetch_count(dev.oidc_metadata_path) == 1


MOVED_PATH = "/v2/jwks.json"


def move_the_jwks(issuer: DevIssuer, metadata: dict[str, Any] | None = None) -> None:
    """The issuer moves its key set: the old URL keeps serving the old keys, a new key is
    published only at the new URL, which the metadata now names (unless given other)."""
    serve_jwks(issuer)  # a snapshot of the old keys, at the old URL
    issuer.rotate("ES256")
    issuer.overrides[MOVED_PATH] = Override(body=issuer.jwks_bytes())
    moved = {**issuer.metadata(), "jwks_uri": issuer.url + MOVED_PATH}
    body = json.dumps(moved if metadata is None else metadata).encode()
    issuer.overrides[issuer.oidc_metadata_path] = Override(body=body)


@pytest.mark.anyio
@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
async def test_a_moved_jwks_is_followed_when_a_kid_is_unknown(
    dev: DevIssuer, clock: FakeClock, *, synchronous: bool
) -> None:
    """A kid the set lacks reads the metadata again (one fetch per cooldown, as the key set's):
    a discovered jwks_uri was kept for as long as the old URL answered, new keys never seen."""
    guard = make_guard(dev, clock)
    old_token = mint(dev)
    await guard.authenticate(old_token)
    move_the_jwks(dev)
    clock.advance(POLICY.cooldown)
    new_token = mint(dev)
    if synchronous:
        assert guard.authenticate_sync(new_token).subject == "user-1"
    else:
        assert (await guard.authenticate(new_token)).subject == "user-1"
    assert dev.fetch_count(dev.oidc_metadata_path) == 2
    assert dev.fetch_count(MOVED_PATH) == 1
    clock.advance(300)  # a refresh by freshness: the new URL, no metadata
    assert (await guard.authenticate(old_token)).subject == "user-1"
    assert dev.fetch_count(MOVED_PATH) == 2
    assert dev.fetch_count(dev.oidc_metadata_path) == 2


@pytest.mark.anyio
async def test_rediscovery_keeps_the_known_jwks_uri_when_the_metadata_does_not_answer(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock)
    await guard.authenticate(mint(dev))
    dev.overrides[dev.oidc_metadata_path] = Override(status=503)
    dev.rotate("ES256")  # published at the URL known
    clock.advance(POLICY.cooldown)
    assert (await guard.authenticate(mint(dev))).subject == "user-1"
    assert dev.fetch_count() == 2


UNUSABLE_REDISCOVERIES: dict[str, Callable[[DevIssuer], bytes]] = {
    "no-jwks-uri": lambda i: json.dumps({"issuer": i.url}).encode(),
    "jwks-uri-not-a-string": lambda i: json.dumps({"issuer": i.url, "jwks_uri": [1]}).encode(),
    "jwks-uri-unsafe": lambda i: json.dumps(
        {"issuer": i.url, "jwks_uri": "http://example.com/jwks.json"}
    ).encode(),
    "not-json": lambda i: b"<html>maintenance</html>",
}


@pytest.mark.anyio
@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("case", sorted(UNUSABLE_REDISCOVERIES))
async def test_rediscovery_keeps_the_known_jwks_uri_when_the_metadata_names_none_usable(
    dev: DevIssuer, clock: FakeClock, case: str, *, synchronous: bool
) -> None:
    """Metadata of this issuer read again without a usable jwks_uri failed the fetch: a key
    published at the URL known was refused (503) on every kid miss, while metadata that did
    not answer at all kept the URL."""
    guard = make_guard(dev, clock)
    await guard.authenticate(mint(dev))
    body = UNUSABLE_REDISCOVERIES[case](dev)
    dev.overrides[dev.oidc_metadata_path] = dev.overrides[dev.oauth_metadata_path] = Override(
        body=body
    )
    dev.rotate("ES256")  # published at the URL known
    clock.advance(POLICY.cooldown)
    token = mint(dev)
    if synchronous:
        assert guard.authenticate_sync(token).subject == "user-1"
    else:
        assert (await guard.authenticate(token)).subject == "user-1"
    assert dev.fetch_count() == 2


@pytest.mark.anyio
@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
async def test_rediscovery_leaves_the_key_set_time_when_the_metadata_hangs(
    dev: DevIssuer, clock: FakeClock, *, synchronous: bool
) -> None:
    """Metadata that hangs spent the whole fetch timeout, which it shares with the key set:
    the known URL was then given no time, and a key published there was refused (503) on
    every kid miss. Read again, the metadata may spend half the timeout, no more."""
    guard = make_guard(dev, clock, fetch=FetchPolicy(timeout=4.0))
    await guard.authenticate(mint(dev))
    hang = Override(body=json.dumps(dev.metadata()).encode(), delay=6.0)
    dev.overrides[dev.oidc_metadata_path] = dev.overrides[dev.oauth_metadata_path] = hang
    dev.rotate("ES256")  # published at the URL known
    clock.advance(POLICY.cooldown)
    token = mint(dev)
    if synchronous:
        assert guard.authenticate_sync(token).subject == "user-1"
    else:
        assert (await guard.authenticate(token)).subject == "user-1"
    assert dev.fetch_count() == 2


@pytest.mark.anyio
async def test_rediscovered_metadata_naming_another_issuer_fails_closed(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock)
    old_token = mint(dev)
    await guard.authenticate(old_token)
    move_the_jwks(dev, {"issuer": "https://evil.example", "jwks_uri": dev.url + MOVED_PATH})
    clock.advance(POLICY.cooldown)
    # RFC 8414 §3.3: never followed; the fetch failed, so the kid miss is 503, not 401 ...
    await assert_guard_unavailable(guard, mint(dev))
    assert dev.fetch_count(MOVED_PATH) == 0
    # ... and the last good keys serve on (stale-if-error).
    assert (await guard.authenticate(old_token)).subject == "user-1"


@pytest.mark.anyio
async def test_explicit_jwks_uri_skips_discovery(dev: DevIssuer, clock: FakeClock) -> None:
    # Discovery would fail: it is never asked.
    dev.overrides[dev.oidc_metadata_path] = Override(status=500)
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))
    assert dev.requests == [dev.jwks_path]


def _mismatched(issuer: DevIssuer) -> dict[str, object]:
    return {"issuer": "https://evil.example", "jwks_uri": issuer.jwks_uri}


METADATA_MISMATCHES: dict[str, Callable[[DevIssuer], object]] = {
    "other-issuer": _mismatched,
    "trailing-slash": lambda i: {"issuer": i.url + "/", "jwks_uri": i.jwks_uri},
    "other-port": lambda i: {"issuer": "http://127.0.0.1:1", "jwks_uri": i.jwks_uri},
    "case-differs": lambda i: {"issuer": i.url.upper(), "jwks_uri": i.jwks_uri},
    "no-issuer": lambda i: {"jwks_uri": i.jwks_uri},
    "issuer-not-a-string": lambda i: {"issuer": [i.url], "jwks_uri": i.jwks_uri},
    "not-an-object": lambda i: [{"issuer": i.url, "jwks_uri": i.jwks_uri}],
    "no-jwks-uri": lambda i: {"issuer": i.url},
    "jwks-uri-not-a-string": lambda i: {"issuer": i.url, "jwks_uri": [i.jwks_uri]},
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("where", "case"),
    [("oidc", case) for case in sorted(METADATA_MISMATCHES)]
    + [("rfc8414", case) for case in ("other-issuer", "trailing-slash", "no-jwks-uri")],
)
async def test_unacceptable_metadata_fails_closed(
    dev: DevIssuer, clock: FakeClock, case: str, where: str
) -> None:
    body = json.dumps(METADATA_MISMATCHES[case](dev)).encode()
    if where == "oidc":
        dev.overrides[dev.oidc_metadata_path] = Override(body=body)
    else:
        dev.overrides[dev.oidc_metadata_path] = Override(status=404)
        dev.overrides[dev.oauth_metadata_path] = Override(body=body)
    guard = make_guard(dev, clock)
    await assert_guard_unavailable(guard, mint(dev))
    async with client_for(protected(guard)) as client:
        assert_unavailable(await get_me(client, mint(dev)))
    # The JWKS the bad metadata points at (a working one) is never fetched.
    assert dev.fetch_count() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["catch-all", "no-issuer", "other-issuer"])
@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
async def test_oidc_metadata_not_naming_the_issuer_falls_back_to_rfc8414(
    clock: FakeClock, case: str, *, synchronous: bool
) -> None:
    """A catch-all answering the OIDC URL with {}, or another issuer's document, is never
    used (OIDC Discovery §4.3); the RFC 8414 document naming this issuer still is. Only a
    document naming it is read again first."""
    with DevIssuer(algorithms=("ES256",), oidc_discovery=False, oauth_metadata=True) as issuer:
        moved = {"keys": [{**issuer.jwks()["keys"][0], "kid": "decoy"}]}
        issuer.overrides[MOVED_PATH] = Override(body=json.dumps(moved).encode())
        decoy = issuer.url + MOVED_PATH
        wrong = {
            "catch-all": {},
            "no-issuer": {"jwks_uri": decoy},
            "other-issuer": {"issuer": "https://evil.example", "jwks_uri": decoy},
        }[case]
        issuer.overrides[issuer.oidc_metadata_path] = Override(body=json.dumps(wrong).encode())
        guard = make_guard(issuer, clock)
        token = mint(issuer)
        if synchronous:
            assert guard.authenticate_sync(token).subject == "user-1"
        else:
            assert (await guard.authenticate(token)).subject == "user-1"
        assert issuer.requests == [
            issuer.oidc_metadata_path,
            issuer.oauth_metadata_path,
            issuer.jwks_path,
        ]
        clock.advance(POLICY.cooldown)
        with pytest.raises(UnknownKeyError):  # a kid miss rediscovers: RFC 8414 first
            await guard.authenticate(random_kid_token(issuer))
        assert issuer.requests[3:] == [issuer.oauth_metadata_path, issuer.jwks_path]
        assert issuer.fetch_count(MOVED_PATH) == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "jwks_uri",
    [
        "http://example.com/jwks.json",
        "http://10.0.0.1/jwks.json",
        "http://127.0.0.1.nip.io/jwks.json",
        "file:///etc/passwd",
        "https://user:secret@example.com/jwks.json",
        "https://example.com/jwks.json#fragment",
        "/jwks.json",
        "http://[::1/jwks.json",
    ],
)
async def test_metadata_with_an_unsafe_jwks_uri_is_refused(
    dev: DevIssuer, clock: FakeClock, jwks_uri: str
) -> None:
    metadata = {**dev.metadata(), "jwks_uri": jwks_uri}
    dev.overrides[dev.oidc_metadata_path] = Override(body=json.dumps(metadata).encode())
    guard = make_guard(dev, clock)
    await assert_guard_unavailable(guard, mint(dev))
    async with client_for(protected(guard)) as client:
        assert_unavailable(await get_me(client, mint(dev)))


# == Cache-Control ========================================================================


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [
        ("public, max-age=120", 120),  # within bounds: as said
        ("max-age=5", 60),  # below min_ttl: clamped up (max-age=0, no-cache: test_keycache)
        ("public, max-age=999999", 3600),  # above max_ttl: clamped down
        ("no-store", 60),  # min_ttl: never a fetch per request
        # Two header lines (the JWKS endpoint's, a proxy's) joined: stale (RFC 9111 §4.2.1),
        # never the larger lifetime.
        ("max-age=60, max-age=86400", 60),
        # A private cache ignores s-maxage beside max-age, even in conflict (RFC 9111 §5.2.2.10).
        ("max-age=600, s-maxage=60, s-maxage=86400", 600),
        # Not delta-seconds (RFC 9111 §1.2.2): stale (§4.2.1), so min_ttl; never 600 s read
        # out of the garbage, nor default_ttl as if unsaid.
        ("max-age=600abc", 60),
        ("max-age=-600", 60),
        ("max-age=", 60),
        ('max-age="600', 60),
        ('max-age="600"', 600),  # the quoted-string form, which recipients accept (§5.2)
        (None, 300),  # unsaid: default_ttl
    ],
)
async def test_cache_control_is_respected_within_bounds(
    dev: DevIssuer, clock: FakeClock, cache_control: str | None, ttl: float
) -> None:
    serve_jwks(dev, cache_control=cache_control)
    guard = make_guard(dev, clock, discover=False)
    for _ in range(3):  # fresh tokens: the verified-token cache never answers
        await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 1
    clock.advance(ttl - 0.5)
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 1
    clock.advance(0.5)
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 2
    clock.advance(ttl - 0.5)
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 2


@pytest.mark.anyio
async def test_the_age_a_cache_in_between_held_the_jwks_counts(
    dev: DevIssuer, clock: FakeClock
) -> None:
    """RFC 9111 §4.2.3: a CDN that held the JWKS for 250 of its 300 s leaves it fresh for
    50 s more (here the 60 s minimum), not another 300 s."""
    headers = {"Cache-Control": "max-age=300", "Age": "250"}
    dev.overrides[dev.jwks_path] = Override(body=jwks_body(dev), headers=headers)
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))
    clock.advance(POLICY.min_ttl)
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 2


class RawKeyServer:
    """A JWKS endpoint on a raw socket, answering every GET with the header lines it is
    given, byte for byte: two lines of one field, bytes no HTTP library would write."""

    def __init__(self, body: bytes, header_lines: list[bytes]) -> None:
        self._answer = b"\r\n".join(
            [
                b"HTTP/1.1 200 OK",
                b"Content-Type: application/json",
                b"Content-Length: " + str(len(body)).encode(),
                b"Connection: close",
                *header_lines,
                b"",
                body,
            ]
        )
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/jwks.json"
        self.fetches = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # closed: the test is over
            while True:
                conn, _ = self._sock.accept()
                with conn:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    self.fetches += 1
                    conn.sendall(self._answer)

    def close(self) -> None:
        self._sock.close()


@pytest.mark.parametrize(
    ("header_lines", "ttl"),
    [
        # RFC 9111 §5.1: of two Age lines (two caches in between), the first counts; both
        # ignored, the set was fresh for all 300 s of its max-age rather than min_ttl.
        ([b"Cache-Control: max-age=300", b"Age: 250", b"Age: 250"], 60),
        # A quote never closed hides the no-store after it: stale (min_ttl), not default_ttl.
        ([b'Cache-Control: ext="x, no-store'], 60),
        ([b'Cache-Control: ext="x', b"Cache-Control: max-age=0"], 60),
        # Bytes beyond ASCII in a header: read as an unknown directive, never a failed fetch.
        ([b"Cache-Control: max-age=120, \xff\xfe=\xe9"], 120),
        ([b"Cache-Control: max-age=120", b"Expires: \xff"], 120),
    ],
)
def test_odd_header_lines_from_the_key_server(
    dev: DevIssuer, clock: FakeClock, header_lines: list[bytes], ttl: float
) -> None:
    server = RawKeyServer(jwks_body(dev), header_lines)
    try:
        guard = make_guard(dev, clock, discover=False, jwks_uri=server.url)
        asyncio.run(guard.authenticate(mint(dev)))
        clock.advance(ttl - 0.5)
        asyncio.run(guard.authenticate(mint(dev)))
        assert server.fetches == 1
        clock.advance(1)
        asyncio.run(guard.authenticate(mint(dev)))
        assert server.fetches == 2
    finally:
        server.close()


def http_date(epoch: float) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7)."""
    return email.utils.formatdate(epoch, usegmt=True)


def assert_fresh_for(issuer: DevIssuer, guard: BearerGuard, clock: FakeClock, ttl: float) -> None:
    """The first fetch keeps the set fresh for ``ttl`` seconds (one second either way:
    HTTP dates have whole seconds), then one more fetch."""
    asyncio.run(guard.authenticate(mint(issuer)))
    clock.advance(ttl - 1.5)
    asyncio.run(guard.authenticate(mint(issuer)))
    assert issuer.fetch_count() == 1
    clock.advance(3)
    asyncio.run(guard.authenticate(mint(issuer)))
    assert issuer.fetch_count() == 2


# The issuer's Date is the wall clock's time; so is the FakeClock's start.
EXPIRES_CASES: dict[str, tuple[Callable[[float], dict[str, str]], float]] = {
    # RFC 9111 §4.2.1: without max-age, fresh for Expires minus Date.
    "expires": (lambda now: {"Expires": http_date(now + 1200)}, 1200),
    "expires-rfc850": (
        lambda now: {
            "Expires": time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(now + 1200))
        },
        1200,
    ),
    # Within the bounds: above max_ttl clamped down, in the past clamped up to min_ttl.
    "expires-far": (lambda now: {"Expires": http_date(now + 10 * 86_400)}, 3600),
    "expires-past": (lambda now: {"Expires": http_date(now - 86_400)}, 60),
    # RFC 9111 §5.3: an invalid date, "0" above all, means already expired: min_ttl.
    "expires-0": (lambda now: {"Expires": "0"}, 60),
    "expires-garbage": (lambda now: {"Expires": "next tuesday"}, 60),
    "expires-numeric-offset": (lambda now: {"Expires": http_date(now)[:-3] + "+0100"}, 60),
    # RFC 9111 §5.3: beside max-age, Expires is ignored, valid or not.
    "max-age-wins": (
        lambda now: {"Cache-Control": "max-age=120", "Expires": http_date(now + 1200)},
        120,
    ),
    "max-age-wins-over-invalid": (
        lambda now: {"Cache-Control": "max-age=1200", "Expires": "0"},
        1200,
    ),
    # s-maxage is a shared cache's (RFC 9111 §4.2.1): a private one reads Expires first.
    "expires-over-s-maxage": (
        lambda now: {"Cache-Control": "s-maxage=120", "Expires": http_date(now + 1200)},
        1200,
    ),
    # RFC 9111 §4.2.1: the most restrictive directive is honoured.
    "no-cache-wins": (
        lambda now: {"Cache-Control": "no-cache", "Expires": http_date(now + 1200)},
        60,
    ),
    # RFC 9111 §4.2.3: the Age a cache in between held it counts against Expires too.
    "expires-less-age": (
        lambda now: {"Expires": http_date(now + 1200), "Age": "1000"},
        200,
    ),
}


@pytest.mark.parametrize("case", sorted(EXPIRES_CASES))
def test_expires_gives_the_freshness_without_max_age(
    dev: DevIssuer, clock: FakeClock, case: str
) -> None:
    headers, ttl = EXPIRES_CASES[case]
    dev.overrides[dev.jwks_path] = Override(body=jwks_body(dev), headers=headers(time.time()))
    guard = make_guard(dev, clock, discover=False)
    assert_fresh_for(dev, guard, clock, ttl)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_expires_without_a_date_counts_from_the_guards_clock(
    dev: DevIssuer, clock: FakeClock, *, sync: bool
) -> None:
    """RFC 9111 §4.2.1: with no usable Date, Expires counts from when the response came (RFC
    9110 §6.6.1), on the guard's clock: a second Date line makes the first unusable."""
    clock.advance(7 * 86_400)  # a week from the wall clock: only the guard's clock fits
    headers = {"Expires": http_date(clock.now + 1200), "Date": "not a date"}
    dev.overrides[dev.jwks_path] = Override(body=jwks_body(dev), headers=headers)
    guard = make_guard(dev, clock, discover=False)
    if sync:
        guard.authenticate_sync(mint(dev))
        clock.advance(1200 - 1.5)
        guard.authenticate_sync(mint(dev))
        assert dev.fetch_count() == 1
        clock.advance(3)
        guard.authenticate_sync(mint(dev))
        assert dev.fetch_count() == 2
    else:
        assert_fresh_for(dev, guard, clock, 1200)


@pytest.mark.anyio
async def test_expired_set_is_refetched_once_not_per_request(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))
    clock.advance(3 * 300)
    for _ in range(20):
        await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 2


# == rotation =============================================================================


@pytest.mark.anyio
async def test_rotated_key_is_picked_up_by_its_first_token(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False)
    async with client_for(protected(guard)) as client:
        assert (await get_me(client, mint(dev))).status_code == 200
        clock.advance(POLICY.cooldown)  # well within the set's freshness (300 s)
        old = dev.key()
        new = dev.rotate("ES256")
        response = await get_me(client, mint(dev))
        assert response.status_code == 200, response.text
        assert dev.fetch_count() == 2
        assert new.kid in guard.key_ids
        # The previous key is still published and still verifies.
        assert (await get_me(client, sign_with(dev, old))).status_code == 200
        assert dev.fetch_count() == 2


@pytest.mark.anyio
async def test_rotated_key_within_the_cooldown_waits_for_it(
    dev: DevIssuer, clock: FakeClock
) -> None:
    """A kid-miss refresh is rate limited: a key published right after a fetch is unknown
    (401) until the cooldown has passed, then picked up by the next token naming it."""
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))
    dev.rotate("ES256")
    clock.advance(POLICY.cooldown - 1)
    with pytest.raises(UnknownKeyError):
        await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 1
    clock.advance(1)
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 2


@pytest.mark.anyio
async def test_a_rotated_key_is_picked_up_after_the_clock_stepped_back(dev: DevIssuer) -> None:
    """A wall clock an hour fast, then stepped back (NTP): the last fetch is an hour "in
    the future", and its cooldown held for that hour; a key published meanwhile was refused
    (401) until the clock caught up. The first token naming it now fetches it."""
    clock = FakeClock(time.time() + 3600)
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))
    clock.advance(-3600 + 1)
    dev.rotate("ES256")
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 2
    # From there, one fetch per cooldown again.
    with pytest.raises(UnknownKeyError):
        await guard.authenticate(random_kid_token(dev))
    assert dev.fetch_count() == 2


@pytest.mark.anyio
@pytest.mark.parametrize("elapsed", [POLICY.cooldown, 400], ids=["fresh", "stale"])
async def test_tokens_of_a_new_key_wait_for_the_fetch_another_started(
    dev: DevIssuer, clock: FakeClock, elapsed: float
) -> None:
    """Tokens naming a key just published that arrive while another request's fetch is in
    flight wait for it, rather than being refused as unknown_key."""
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=2.0))
    await guard.warm_up()
    clock.advance(elapsed)  # past the cooldown; "stale": past the freshness too
    dev.rotate("ES256")
    serve_jwks(dev, delay=0.3)
    subjects: list[str | None] = []

    async def verify(token: str) -> None:
        subjects.append((await guard.authenticate(token)).subject)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            for token in [mint(dev) for _ in range(10)]:
                tasks.start_soon(verify, token)
    assert subjects == ["user-1"] * 10
    assert dev.fetch_count() == 2


@pytest.mark.anyio
async def test_a_cancelled_request_does_not_abandon_the_fetch_others_wait_for(
    dev: DevIssuer, clock: FakeClock
) -> None:
    """The request whose kid miss started a fetch is cancelled (its client left, a request
    timeout): the fetch still ends, and the requests waiting for it get the new key, not a
    401 lasting a whole cooldown."""
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=2.0))
    await guard.warm_up()
    clock.advance(POLICY.cooldown)
    dev.rotate("ES256")
    serve_jwks(dev, delay=0.3)
    token = mint(dev)
    subjects: list[str | None] = []
    leaving = anyio.CancelScope()

    async def leave() -> None:
        with leaving:
            await guard.authenticate(token)

    async def verify() -> None:
        subjects.append((await guard.authenticate(token)).subject)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(leave)
            await anyio.wait_all_tasks_blocked()  # its kid miss's fetch is under way
            tasks.start_soon(verify)
            await anyio.wait_all_tasks_blocked()
            leaving.cancel()
    assert leaving.cancelled_caught is not None
    assert subjects == ["user-1"]
    assert (await guard.authenticate(mint(dev))).subject == "user-1"
    assert dev.fetch_count() == 2


@pytest.mark.anyio
async def test_a_natively_cancelled_request_does_not_abandon_the_fetch_others_wait_for(
    dev: DevIssuer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """As above, but cancelled by asyncio itself (``task.cancel()``: uvicorn on a client gone,
    ``asyncio.wait_for``), which anyio's shield does not stop: the fetch was abandoned."""
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=2.0))
    await guard.warm_up()
    clock.advance(POLICY.cooldown)
    dev.rotate("ES256")
    serve_jwks(dev, delay=0.3)
    token = mint(dev)
    with anyio.fail_after(5):
        leader = asyncio.ensure_future(guard.authenticate(token))
        await anyio.wait_all_tasks_blocked()  # its kid miss's fetch is under way
        waiter = asyncio.ensure_future(guard.authenticate(token))
        await anyio.wait_all_tasks_blocked()
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert (await waiter).subject == "user-1"
    assert dev.fetch_count() == 2
    del leader, waiter
    gc.collect()
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.records


def test_a_finished_fetch_keeps_no_event_loop_alive(dev: DevIssuer, clock: FakeClock) -> None:
    """The task a fetch runs in was kept by the guard once done: and with it its event loop,
    closed (one per test, lifespan or reload), and the context of the request that started it."""
    guard = make_guard(dev, clock, discover=False)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def request() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        assert (await guard.authenticate(mint(dev))).subject == "user-1"

    asyncio.run(request())
    gc.collect()
    assert loops[0]() is None
    assert dev.fetch_count() == 1


def test_a_fetch_left_by_a_cancelled_request_ends_with_its_event_loop(
    dev: DevIssuer, clock: FakeClock
) -> None:
    """One guard, two event loops: the first loop's request is cancelled and the loop ends
    with the fetch it started still running: that fetch ends with its loop, and the next
    loop fetches again (not refused after waiting for a fetch that can no longer end)."""
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=5.0))
    serve_jwks(dev, delay=0.5)
    token = mint(dev)

    async def leave() -> None:
        request = asyncio.ensure_future(guard.authenticate(token))
        await anyio.wait_all_tasks_blocked()  # its fetch is under way
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    asyncio.run(leave())  # the fetch's task is cancelled as the loop shuts down
    serve_jwks(dev)
    assert anyio.run(guard.authenticate, token).subject == "user-1"
    assert dev.fetch_count() == 2


def test_a_fetch_left_in_an_event_loop_closed_without_cancelling_it_is_dropped(
    dev: DevIssuer, clock: FakeClock
) -> None:
    """A loop closed with the fetch still pending (``run_until_complete`` then ``close``, no
    cancelling: some runners and reloaders do this) never runs it again, so its done callback
    never comes. The guard kept the task, and with it the loop, for ever; the next loop's
    first request waited a whole fetch timeout for it, then was refused (503)."""
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=5.0))
    serve_jwks(dev, delay=0.5)
    token = mint(dev)

    async def leave() -> None:
        request = asyncio.ensure_future(guard.authenticate(token))
        await anyio.wait_all_tasks_blocked()  # its fetch is under way
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    for _ in range(2):  # two loops in turn, each closed with its fetch pending
        loop = asyncio.new_event_loop()
        loop.run_until_complete(leave())
        loop.close()
    serve_jwks(dev)
    # Fetched afresh: not refused after waiting for the abandoned fetch.
    assert asyncio.run(guard.authenticate(token)).subject == "user-1"
    # Neither closed loop's task is held any longer.
    assert not guard._refresher._fetch_tasks
    assert dev.fetch_count() == 3


@pytest.mark.parametrize("cancelled", [True, False], ids=["cancelled", "left-pending"])
def test_a_kid_miss_fetch_its_event_loop_ended_spends_no_cooldown(
    dev: DevIssuer, clock: FakeClock, *, cancelled: bool
) -> None:
    """A kid miss's fetch that its event loop ended (cancelled as ``asyncio.run`` shuts
    down, or left pending in a loop closed without cancelling) brought nothing, yet its
    cooldown held: the next loop's tokens of a key just published were refused (401) for
    a whole cooldown, as after a fork (``forget_unsettled_attempt``)."""
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=5.0))
    guard.warm_up_sync()
    clock.advance(POLICY.cooldown)
    dev.rotate("ES256")
    serve_jwks(dev, delay=0.5)
    token = mint(dev)

    async def leave() -> None:
        request = asyncio.ensure_future(guard.authenticate(token))
        await anyio.wait_all_tasks_blocked()  # its kid miss's fetch is under way
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    if cancelled:
        asyncio.run(leave())  # the fetch's task is cancelled as the loop shuts down
    else:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(leave())
        loop.close()
    serve_jwks(dev)
    assert asyncio.run(guard.authenticate(token)).subject == "user-1"
    assert dev.fetch_count() == 3


def test_two_loops_dropping_the_same_abandoned_fetch_at_once(
    dev: DevIssuer, clock: FakeClock
) -> None:
    """Two event loops in two threads (one guard) each drop a closed loop's fetch as they
    refresh: the one that looked second found it gone, and its request raised KeyError (a
    500). The other thread's drop is played where the interleaving puts it: while this
    one asks whether the abandoned task's loop is closed."""
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=5.0))
    serve_jwks(dev, delay=0.5)
    token = mint(dev)

    class Interleaved(asyncio.SelectorEventLoop):
        other_thread_done = False

        def is_closed(self) -> bool:
            closed = super().is_closed()
            if closed and not self.other_thread_done:
                self.other_thread_done = True
                guard._refresher._drop_abandoned_fetches()  # the other loop's refresh, in between
            return closed

    async def leave() -> None:
        request = asyncio.ensure_future(guard.authenticate(token))
        await anyio.wait_all_tasks_blocked()  # its fetch is under way
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    loop = Interleaved()
    loop.run_until_complete(leave())
    loop.close()
    serve_jwks(dev)
    assert asyncio.run(guard.authenticate(token)).subject == "user-1"
    assert loop.other_thread_done
    assert not guard._refresher._fetch_tasks


def test_tokens_of_a_new_key_wait_for_another_threads_fetch(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=2.0))
    guard.warm_up_sync()
    clock.advance(POLICY.cooldown)
    dev.rotate("ES256")
    serve_jwks(dev, delay=0.3)
    tokens = [mint(dev) for _ in range(5)]
    with ThreadPoolExecutor(max_workers=5) as pool:
        subjects = list(pool.map(lambda token: guard.authenticate_sync(token).subject, tokens))
    assert subjects == ["user-1"] * 5
    assert dev.fetch_count() == 2


def test_a_fetch_under_way_in_another_event_loop_is_waited_for(
    dev: DevIssuer, clock: FakeClock
) -> None:
    # One guard serving two event loops (two threads each running one): the second loop's
    # cold request waited on the first loop's event, which can never wake it, and hung.
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=5.0))
    serve_jwks(dev, delay=1.0)  # long enough for the second loop to come while it lasts
    token = mint(dev)
    subjects: list[str | None] = []

    def in_its_own_loop(first: bool) -> None:
        if not first:  # once the first loop's fetch is under way (the issuer has it)
            until(lambda: dev.fetch_count() == 1, 10)
        subjects.append(anyio.run(guard.authenticate, token).subject)

    threads = [
        threading.Thread(target=in_its_own_loop, args=(f,), daemon=True) for f in (True, False)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)  # a hang detector, not a timing assertion
    assert not any(thread.is_alive() for thread in threads)
    assert subjects == ["user-1", "user-1"]
    assert dev.fetch_count() == 1


def authenticate_in_a_loop_of_its_own(
    guard: BearerGuard, token: str, start: threading.Barrier, failures: list[str]
) -> None:
    """Verify ``token`` in an event loop of this thread's own, once every thread is ready."""
    start.wait()
    try:
        asyncio.run(guard.authenticate(token))
    except Exception as exc:
        failures.append(repr(exc))


def test_event_loops_starting_at_once_in_threads_share_one_fetch(dev: DevIssuer) -> None:
    """One guard, cold, asked at once by event loops in eight threads. Each looked for a
    fetch under way, then claimed one under the fetch lock without looking again: a loop
    between the two claimed a second fetch, and a loop finding the lock held by another's
    claim took it for a thread's fetch, waited for it to be released, found it released
    again by the time it tried: no fetch of its own, none waited for, and a 503."""
    serve_jwks(dev, delay=0.05)
    token = mint(dev)
    failures: list[str] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race is narrow
    try:
        for _ in range(30):
            before = dev.fetch_count()
            guard = make_guard(dev, FakeClock(time.time()), discover=False)
            start = threading.Barrier(8)
            threads = [
                threading.Thread(
                    target=authenticate_in_a_loop_of_its_own,
                    args=(guard, token, start, failures),
                    daemon=True,
                )
                for _ in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)  # a hang detector, not a timing assertion
            assert not any(thread.is_alive() for thread in threads)
            if dev.fetch_count() - before != 1:
                failures.append(f"{dev.fetch_count() - before} fetches")
    finally:
        sys.setswitchinterval(interval)
    assert failures == []


def test_a_fetch_task_cancelled_before_it_ran_is_not_waited_for_for_ever(
    dev: DevIssuer, clock: FakeClock
) -> None:
    """Something cancelling every task (a shutdown hook's asyncio.all_tasks()) reaches the
    fetch's task before its first step: its coroutine never runs, nor the code that ends the
    fetch. Every later request of that loop waited for it for ever."""
    guard = make_guard(dev, clock, discover=False)
    token = mint(dev)

    async def main() -> str | None:
        first = asyncio.create_task(guard.authenticate(token))
        await asyncio.sleep(0)  # the first request has started its fetch task, not run it
        fetches = [task for task in asyncio.all_tasks() if task.get_name().startswith("bearer")]
        assert fetches
        for task in fetches:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        with anyio.fail_after(10):
            return (await guard.authenticate(token)).subject

    assert asyncio.run(main()) == "user-1"


@pytest.mark.anyio
async def test_requests_of_the_fetching_loop_wait_on_its_event_not_by_polling(
    dev: DevIssuer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fetch's loop was compared by identity with a new anyio token each time: never the
    # same, so every cold request of the fetching loop itself polled every 10 ms instead.
    guard = make_guard(dev, clock, discover=False)
    serve_jwks(dev, delay=0.3)
    token = mint(dev)
    polls: list[float] = []
    sleep = anyio.sleep

    async def counted(delay: float) -> None:
        polls.append(delay)
        await sleep(delay)

    monkeypatch.setattr(anyio, "sleep", counted)
    subjects: list[str | None] = []

    async def authenticate() -> None:
        subjects.append((await guard.authenticate(token)).subject)

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(authenticate)
    assert subjects == ["user-1"] * 5
    assert dev.fetch_count() == 1
    assert polls == []


@pytest.mark.anyio
async def test_a_key_of_another_type_published_under_a_known_kid_is_picked_up(
    clock: FakeClock,
) -> None:
    """RFC 7517 §4.5: one kid may name keys of different types. A token for the new type
    is a kid miss (a fetch, once per cooldown), not an algorithm refused on the old set."""
    original = SigningKey.generate("ES256")
    with DevIssuer(keys=[original]) as issuer:
        guard = make_guard(issuer, clock, discover=False)
        await guard.authenticate(mint(issuer))
        clock.advance(POLICY.cooldown)
        rsa = SigningKey(original.kid, "RS256", SigningKey.generate("RS256").private_key)
        issuer.keys.insert(0, rsa)
        issuer.published.append(rsa)
        await guard.authenticate(mint(issuer, algorithm="RS256"))
        assert issuer.fetch_count() == 2
        # Algorithm confusion is still refused, after at most that one fetch per cooldown.
        confused = jwt.encode(  # PS256: neither key's JWK alg
            issuer.claims(expires_in=LONG), rsa.private_key, "PS256", {"kid": original.kid}
        )
        with pytest.raises(UnsupportedAlgorithmError):
            await guard.authenticate(confused)
        assert issuer.fetch_count() == 2


def publish_under_one_kid(
    issuer: DevIssuer, *extra: dict[str, Any]
) -> tuple[SigningKey, SigningKey]:
    """Publish the issuer's key and a second ES256 key under the same kid (a rotation)."""
    old = issuer.key()
    new = SigningKey(old.kid, "ES256", SigningKey.generate("ES256").private_key)
    keys = [old.public_jwk(), new.public_jwk(), *extra]
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": keys}).encode())
    return old, new


@pytest.mark.anyio
async def test_every_key_published_under_one_kid_is_tried(clock: FakeClock) -> None:
    """RFC 7517 §4.5: an issuer rotating a key may publish the old and the new one under
    the same kid. Only the first was tried: the other's tokens were refused bad_signature."""
    with DevIssuer(algorithms=("ES256",)) as issuer:
        old, new = publish_under_one_kid(issuer)
        guard = make_guard(issuer, clock, discover=False)
        for key in (old, new, new, old):  # the second time, from the verification cache
            assert (await guard.authenticate(sign_with(issuer, key))).subject == "user-1"
            assert guard.authenticate_sync(sign_with(issuer, key)).subject == "user-1"
        header, _ = await guard.verify_signed(sign_with(issuer, new))
        assert header["kid"] == old.kid
        clock.advance(300)  # a refresh: the same keys, and their tokens still verify
        assert (await guard.authenticate(sign_with(issuer, new))).subject == "user-1"
        assert issuer.fetch_count() == 2
        # A signature neither key made is refused, after at most one fetch per cooldown.
        with pytest.raises(BadSignatureError):
            await guard.authenticate(issuer.mint_forged(expires_in=LONG))
        assert issuer.fetch_count() == 2


@pytest.mark.anyio
async def test_only_the_first_few_keys_under_one_kid_are_tried(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every key under a kid costs a signature check, a forged token's too: a set repeating
    one kid over hundreds of keys made each forged token hundreds of checks on the event
    loop. Only the first KEYS_PER_KID are tried, and the install says so."""
    with DevIssuer(algorithms=("ES256",)) as issuer:
        kid = issuer.key().kid
        first, *_ = extra = [
            SigningKey(kid, "ES256", SigningKey.generate("ES256").private_key)
            for _ in range(KEYS_PER_KID)
        ]
        keys = [key.public_jwk() for key in extra] + [issuer.key().public_jwk()]
        issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": keys}).encode())
        guard = make_guard(issuer, clock, discover=False)
        assert (await guard.authenticate(sign_with(issuer, first))).subject == "user-1"
        assert f"{KEYS_PER_KID + 1} keys for one alg share the kid" in caplog.text
        # The issuer's own key comes after the first few under its kid: never tried.
        with pytest.raises(BadSignatureError):
            await guard.authenticate(sign_with(issuer, issuer.key()))
        with pytest.raises(BadSignatureError):
            guard.authenticate_sync(sign_with(issuer, issuer.key()))


def test_keys_of_different_types_under_one_kid_are_not_capped(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The cap counts keys per alg, as it applies: RFC 7517 §4.5's own example of a shared
    kid is keys of different types, which a token's alg tells apart. Five of them drew a
    warning that only the first four are tried, while every one verifies."""
    with DevIssuer() as issuer:
        kid = issuer.key().kid
        private = {
            "ES256": ec.generate_private_key(ec.SECP256R1()),
            "ES384": ec.generate_private_key(ec.SECP384R1()),
            "ES512": ec.generate_private_key(ec.SECP521R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        }
        keys = [issuer.key().public_jwk()]
        for alg, key in private.items():
            impl = OKPAlgorithm if alg == "EdDSA" else ECAlgorithm
            jwk = impl.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": keys}).encode())
        guard = make_guard(issuer, clock, discover=False)
        last = SigningKey(kid, "EdDSA", private["EdDSA"])
        assert guard.authenticate_sync(sign_with(issuer, last)).subject == "user-1"
        assert "share the kid" not in caplog.text


@pytest.mark.anyio
async def test_an_encryption_key_under_a_signing_kid_never_verifies(clock: FakeClock) -> None:
    with DevIssuer(algorithms=("ES256",)) as issuer:
        encryption = SigningKey(issuer.key().kid, "ES256", SigningKey.generate("ES256").private_key)
        publish_under_one_kid(issuer, {**encryption.public_jwk(), "use": "enc"})
        guard = make_guard(issuer, clock, discover=False)
        with pytest.raises(BadSignatureError):
            await guard.authenticate(sign_with(issuer, encryption))
        with pytest.raises(BadSignatureError):
            guard.authenticate_sync(sign_with(issuer, encryption))


def publish_without_kid(issuer: DevIssuer) -> None:
    """Serve the issuer's published keys without their ``kid``."""
    keys = [{k: v for k, v in key.public_jwk().items() if k != "kid"} for key in issuer.published]
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": keys}).encode())


def replace_the_key(issuer: DevIssuer) -> None:
    """Replace the issuer's one key with a new one under the same ``kid``, and sign with it."""
    original = issuer.key()
    new = SigningKey(original.kid, original.algorithm, SigningKey.generate("ES256").private_key)
    issuer.keys.insert(0, new)
    issuer.published = [new]


@pytest.mark.anyio
@pytest.mark.parametrize("kid", [True, False], ids=["same-kid", "no-kid"])
async def test_a_key_replaced_under_the_same_kid_is_picked_up(
    clock: FakeClock, *, kid: bool
) -> None:
    """An issuer replaces its key but keeps the kid, or has one key and no kid: the new
    key's tokens select the old key, and were refused bad_signature until the set's
    freshness ended (up to max_ttl). They are looked for as a kid miss is."""
    headers = {} if kid else {"kid": None}
    with DevIssuer(algorithms=("ES256",)) as issuer:
        if not kid:
            publish_without_kid(issuer)
        guard = make_guard(issuer, clock, discover=False)
        await guard.authenticate(mint(issuer, headers=headers))
        clock.advance(POLICY.cooldown)
        replace_the_key(issuer)
        if not kid:
            publish_without_kid(issuer)
        assert (await guard.authenticate(mint(issuer, headers=headers))).subject == "user-1"
        assert issuer.fetch_count() == 2


def test_a_key_replaced_under_the_same_kid_is_picked_up_under_wsgi(clock: FakeClock) -> None:
    with DevIssuer(algorithms=("ES256",)) as issuer:
        guard = make_guard(issuer, clock, discover=False)
        guard.authenticate_sync(mint(issuer))
        clock.advance(POLICY.cooldown)
        replace_the_key(issuer)
        assert guard.authenticate_sync(mint(issuer)).subject == "user-1"
        assert issuer.fetch_count() == 2


@pytest.mark.anyio
async def test_a_flood_of_bad_signatures_costs_at_most_one_fetch_per_cooldown(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock)
    await guard.warm_up()
    for _ in range(1000):  # 1,000 forged tokens naming the real kid, over 100 s
        with pytest.raises(BadSignatureError):
            await guard.authenticate(dev.mint_forged(expires_in=LONG))
        clock.advance(0.1)
    assert dev.fetch_count() <= 1 + 100 // POLICY.cooldown


@pytest.mark.anyio
@pytest.mark.parametrize("trigger", ["unknown-kid", "ttl", "the-cached-token-itself"])
async def test_retired_keys_cached_tokens_stop_verifying_after_the_next_refresh(
    dev: DevIssuer, clock: FakeClock, trigger: str
) -> None:
    guard = make_guard(dev, clock, discover=False)
    old_token = mint(dev)
    old_kid = dev.key().kid
    await guard.authenticate(old_token)  # verified, and now in the verified-token cache
    dev.rotate("ES256")
    dev.retire(old_kid)
    # Until the set is refetched, the cached verification stands.
    await guard.authenticate(old_token)
    clock.advance(POLICY.cooldown if trigger == "unknown-kid" else 300)
    if trigger != "the-cached-token-itself":
        await guard.authenticate(mint(dev))  # new key: a refresh (kid miss, or expired TTL)
        assert dev.fetch_count() == 2
    # Past its freshness, even a cached verification waits for the refresh it triggers.
    with pytest.raises(UnknownKeyError):
        await guard.authenticate(old_token)
    assert dev.fetch_count() == 2
    assert old_kid not in guard.key_ids
    async with client_for(protected(guard)) as client:
        response = await get_me(client, old_token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.anyio
async def test_unchanged_keys_keep_their_cached_tokens_across_refreshes(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False)
    token = mint(dev)
    await guard.authenticate(token)
    dev.rotate("ES256")  # the old key stays published
    clock.advance(300)
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 2
    assert (await guard.authenticate(token)).subject == "user-1"


# == floods and concurrency ===============================================================


@pytest.mark.anyio
async def test_a_flood_of_random_kids_costs_at_most_one_fetch_per_cooldown(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock)
    fetched_at: list[float] = []
    for _ in range(1000):
        before = dev.fetch_count()
        with pytest.raises(UnknownKeyError) as caught:
            await guard.authenticate(random_kid_token(dev))
        assert caught.value.reason == "unknown_key"
        if dev.fetch_count() != before:
            fetched_at.append(clock.now)
        clock.advance(0.1)  # 1,000 tokens over 100 s
    # The cold fetch, then at most one per 30 s cooldown: at 0, 30, 60, 90 s.
    assert len(fetched_at) <= 1 + 100 // POLICY.cooldown
    gaps = [later - earlier for earlier, later in itertools.pairwise(fetched_at)]
    assert all(gap >= POLICY.cooldown for gap in gaps), gaps
    # Each kid miss's fetch reads the metadata again (the set may have moved): no more.
    assert dev.fetch_count(dev.oidc_metadata_path) == len(fetched_at)
    # The genuine keys still verify in the middle of the flood.
    assert (await guard.authenticate(mint(dev))).subject == "user-1"


@pytest.mark.anyio
async def test_a_flood_of_random_kids_through_the_middleware(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False)
    async with client_for(protected(guard)) as client:
        for _ in range(200):
            response = await get_me(client, random_kid_token(dev))
            assert response.status_code == 401
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert dev.fetch_count() == 1


@pytest.mark.anyio
async def test_concurrent_cold_requests_share_one_fetch(dev: DevIssuer, clock: FakeClock) -> None:
    # The JWKS answers after 0.2 s: every request arrives while the first fetch is open.
    serve_jwks(dev, delay=0.2)
    guard = make_guard(dev, clock, fetch=FetchPolicy(timeout=2.0))
    tokens = [mint(dev) for _ in range(50)]
    subjects: list[str | None] = []

    async def verify(token: str) -> None:
        subjects.append((await guard.authenticate(token)).subject)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            for token in tokens:
                tasks.start_soon(verify, token)
    assert subjects == ["user-1"] * 50
    assert dev.fetch_count(dev.oidc_metadata_path) == 1
    assert dev.fetch_count() == 1


@pytest.mark.anyio
async def test_concurrent_cold_requests_through_the_middleware(
    dev: DevIssuer, clock: FakeClock
) -> None:
    serve_jwks(dev, delay=0.2)
    guard = make_guard(dev, clock, fetch=FetchPolicy(timeout=2.0))
    statuses: list[int] = []
    async with client_for(protected(guard)) as client:

        async def call(token: str) -> None:
            statuses.append((await get_me(client, token)).status_code)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                for token in [mint(dev) for _ in range(50)]:
                    tasks.start_soon(call, token)
    assert statuses == [200] * 50
    assert dev.fetch_count() == 1


@pytest.mark.anyio
async def test_concurrent_cold_requests_share_one_failing_fetch(
    dev: DevIssuer, clock: FakeClock
) -> None:
    dev.overrides[dev.jwks_path] = Override(status=500, delay=0.2)
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=2.0))
    statuses: list[int] = []
    async with client_for(protected(guard)) as client:

        async def call(token: str) -> None:
            response = await get_me(client, token)
            assert_unavailable(response)
            statuses.append(response.status_code)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                for token in [mint(dev) for _ in range(50)]:
                    tasks.start_soon(call, token)
    assert statuses == [503] * 50
    assert dev.fetch_count() == 1


@pytest.mark.parametrize("first", ["async", "sync"])
def test_cold_requests_on_both_sides_of_one_guard_share_one_fetch(
    dev: DevIssuer, clock: FakeClock, first: str
) -> None:
    """Django under ASGI, sync views beside async ones: one guard verifies in the event loop
    and in worker threads. A cold start fetched the key set once per side."""
    serve_jwks(dev, delay=1.0)  # long enough for the other side to come while it lasts
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=5.0))
    subjects: list[str] = []

    def in_a_thread() -> None:
        subjects.append(guard.authenticate_sync(mint(dev)).subject)

    async def in_the_loop() -> None:
        subjects.append((await guard.authenticate(mint(dev))).subject)

    def fetching() -> bool:  # the first side's fetch is under way: the issuer has it
        return dev.fetch_count() == 1

    async def both() -> None:
        async with anyio.create_task_group() as tasks:
            if first == "async":
                tasks.start_soon(in_the_loop)
                assert await until_awaited(fetching, 10)
                tasks.start_soon(anyio.to_thread.run_sync, in_a_thread)
            else:
                tasks.start_soon(anyio.to_thread.run_sync, in_a_thread)
                assert await until_awaited(fetching, 10)
                tasks.start_soon(in_the_loop)

    asyncio.run(both())
    assert subjects == ["user-1"] * 2
    assert dev.fetch_count() == 1


@pytest.mark.anyio
async def test_a_sync_call_inside_the_fetching_event_loop_does_not_wait_for_it(
    dev: DevIssuer, clock: FakeClock
) -> None:
    # Waiting would block the loop whose fetch it waits for: it fetches, as before.
    serve_jwks(dev, delay=0.3)
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy(timeout=3.0))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(guard.authenticate, mint(dev))
        assert await until_awaited(lambda: dev.fetch_count() == 1, 10)  # its fetch under way
        started = time.monotonic()
        assert guard.authenticate_sync(mint(dev)).subject == "user-1"
        assert time.monotonic() - started < 2.0


# == outages ==============================================================================

_VALID_PADDING = "x" * (FETCH.max_bytes + 1)

# Each fault: what the JWKS endpoint answers instead of the key set (under FETCH limits).
JWKS_FAULTS: dict[str, Callable[[DevIssuer], Override]] = {
    "500": lambda _: Override(status=500, body=b'{"error": "boom"}'),
    "503-html": lambda _: Override(
        status=503, body=b"<h1>down</h1>", headers={"Content-Type": "text/html"}
    ),
    "404": lambda _: Override(status=404, body=b"{}"),
    "204": lambda _: Override(status=204),
    "not-json": lambda _: Override(body=b"this is not json"),
    "empty-body": lambda _: Override(body=b""),
    "json-without-keys": lambda _: Override(body=b'{"issuer": "x"}'),
    "keys-not-a-list": lambda _: Override(body=b'{"keys": {"kty": "EC"}}'),
    "json-array": lambda _: Override(body=b"[]"),
    "json-null": lambda _: Override(body=b"null"),
    "html": lambda _: Override(
        body=b"<!doctype html><html><body>Sign in</body></html>",
        headers={"Content-Type": "text/html; charset=utf-8"},
    ),
    "wrong-content-type": lambda _: Override(
        body=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", headers={"Content-Type": "image/png"}
    ),
    "invalid-utf8": lambda _: Override(body=b'{"keys": ["\xff\xfe"]}'),
    "deeply-nested": lambda _: Override(body=b"[" * 5000 + b"]" * 5000),
    # A valid JWKS, just too big: the limit is about bytes, not content.
    "oversized": lambda i: Override(body=jwks_body(i, padding=_VALID_PADDING)),
    "slow": lambda i: Override(body=jwks_body(i), delay=SLOW),
    "redirect": lambda i: Override(status=302, headers={"Location": i.jwks_uri + "?moved"}),
    "bad-gzip": lambda i: Override(body=jwks_body(i), headers={"Content-Encoding": "gzip"}),
    # Small on the wire, bigger than max_bytes once decoded: the limit counts decoded bytes.
    "gzip-bomb": lambda i: Override(
        body=gzip.compress(jwks_body(i, padding=" " * 10 * FETCH.max_bytes)),
        headers={"Content-Encoding": "gzip"},
    ),
    # Compressed twice: a millionfold, so httpx would inflate one chunk to gigabytes.
    "gzip-twice": lambda i: Override(
        body=gzip.compress(gzip.compress(jwks_body(i))),
        headers={"Content-Encoding": "gzip, gzip"},
    ),
    "brotli": lambda i: Override(body=jwks_body(i), headers={"Content-Encoding": "br"}),
}


@pytest.mark.anyio
@pytest.mark.parametrize("fault", sorted(JWKS_FAULTS))
async def test_cold_start_outage_fails_closed(dev: DevIssuer, clock: FakeClock, fault: str) -> None:
    dev.overrides[dev.jwks_path] = JWKS_FAULTS[fault](dev)
    guard = make_guard(dev, clock, discover=False, fetch=SHORT)
    await assert_guard_unavailable(guard, mint(dev))
    assert dev.fetch_count() == 1  # a redirect, in particular, is not followed
    async with client_for(protected(guard)) as client:
        for _ in range(3):
            clock.advance(POLICY.cooldown / 4)
            assert_unavailable(await get_me(client, mint(dev)))
    assert dev.fetch_count() == 1  # within the cooldown: no new fetch


@pytest.mark.anyio
async def test_cold_start_outage_is_retried_once_per_cooldown_until_it_heals(
    dev: DevIssuer, clock: FakeClock
) -> None:
    break_jwks(dev)
    guard = make_guard(dev, clock, discover=False)
    async with client_for(protected(guard)) as client:
        assert_unavailable(await get_me(client, mint(dev)))
        clock.advance(POLICY.cooldown - 0.1)
        assert_unavailable(await get_me(client, mint(dev)))
        assert dev.fetch_count() == 1
        clock.advance(0.1)
        assert_unavailable(await get_me(client, mint(dev)))
        assert dev.fetch_count() == 2
        repair_jwks(dev)  # the issuer heals, but the next try waits for the cooldown
        assert_unavailable(await get_me(client, mint(dev)))
        clock.advance(POLICY.cooldown)
        assert (await get_me(client, mint(dev))).status_code == 200
    assert dev.fetch_count() == 3


@pytest.mark.anyio
async def test_slow_fetch_is_bounded_by_the_timeout(dev: DevIssuer, clock: FakeClock) -> None:
    dev.overrides[dev.jwks_path] = Override(body=jwks_body(dev), delay=2.0)
    guard = make_guard(dev, clock, discover=False, fetch=SHORT)
    started = anyio.current_time()
    await assert_guard_unavailable(guard, mint(dev))
    assert anyio.current_time() - started < SHORT.timeout + 0.5


@pytest.mark.anyio
async def test_default_size_limit_refuses_a_huge_jwks(dev: DevIssuer, clock: FakeClock) -> None:
    limit = FetchPolicy().max_bytes
    padding = "x" * limit
    dev.overrides[dev.jwks_path] = Override(body=jwks_body(dev, padding=padding))
    guard = make_guard(dev, clock, discover=False, fetch=FetchPolicy())
    await assert_guard_unavailable(guard, mint(dev))


@pytest.mark.anyio
async def test_a_jwks_just_under_the_size_limit_is_accepted(
    dev: DevIssuer, clock: FakeClock
) -> None:
    body = jwks_body(dev, padding="")
    padding = "x" * (FETCH.max_bytes - len(body))
    dev.overrides[dev.jwks_path] = Override(body=jwks_body(dev, padding=padding))
    assert len(dev.overrides[dev.jwks_path].body) == FETCH.max_bytes
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))


@pytest.mark.anyio
async def test_oversized_or_slow_metadata_fails_closed(dev: DevIssuer, clock: FakeClock) -> None:
    metadata = {**dev.metadata(), "padding": _VALID_PADDING}
    dev.overrides[dev.oidc_metadata_path] = Override(body=json.dumps(metadata).encode())
    dev.overrides[dev.oauth_metadata_path] = Override(
        body=json.dumps(dev.metadata()).encode(), delay=SLOW
    )
    guard = make_guard(dev, clock, fetch=SHORT)
    await assert_guard_unavailable(guard, mint(dev))
    assert dev.fetch_count() == 0


@pytest.mark.anyio
async def test_connection_refused_fails_closed(dev: DevIssuer, clock: FakeClock) -> None:
    guard = make_guard(dev, clock)
    token = mint(dev)
    dev.stop()
    await assert_guard_unavailable(guard, token)
    async with client_for(protected(guard)) as client:
        assert_unavailable(await get_me(client, token))


@pytest.mark.anyio
async def test_a_server_that_never_answers_fails_closed(
    dev: DevIssuer, clock: FakeClock, black_hole: str
) -> None:
    guard = BearerGuard(
        issuer=dev.url,
        audience=dev.audience,
        jwks_uri=black_hole,
        refresh=POLICY,
        fetch=SHORT,
        clock=clock,
    )
    started = anyio.current_time()
    async with client_for(protected(guard)) as client:
        assert_unavailable(await get_me(client, mint(dev)))
    assert anyio.current_time() - started < SHORT.timeout + 0.5


@pytest.mark.anyio
async def test_a_valid_jwks_under_an_unusual_content_type_is_accepted(
    dev: DevIssuer, clock: FakeClock
) -> None:
    """Content-Type is not checked: static hosting often serves JWKS as text/plain or
    octet-stream, and the body is parsed strictly as a JWK Set whatever it claims to be."""
    headers = {"Content-Type": "application/octet-stream"}
    dev.overrides[dev.jwks_path] = Override(body=jwks_body(dev), headers=headers)
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))


# == stale-if-error =======================================================================

OUTAGES: dict[str, Callable[[DevIssuer], None]] = {
    "500": break_jwks,
    "connection-refused": lambda i: i.stop(),
}


@pytest.mark.anyio
@pytest.mark.parametrize("outage", sorted(OUTAGES))
async def test_stale_keys_serve_until_max_stale_then_fail_closed(
    dev: DevIssuer, clock: FakeClock, outage: str
) -> None:
    guard = make_guard(dev, clock)
    start = clock.now
    await guard.authenticate(mint(dev))
    OUTAGES[outage](dev)
    countable = outage != "connection-refused"  # a stopped server counts nothing

    async def at(offset: float, fetches: int) -> None:
        clock.now = start + offset
        await guard.authenticate(mint(dev))  # a fresh token: the verified cache is no help
        if countable:
            assert dev.fetch_count() == fetches, offset

    await at(299, 1)  # fresh
    await at(300, 2)  # stale: a fetch is tried and fails, the last good keys answer
    await at(329, 2)  # within the cooldown: no fetch
    await at(330, 3)  # a second try
    await at(340, 3)
    await at(899.9, 4)  # a third try, still within max_stale (300 + 600)
    clock.now = start + 900
    await assert_guard_unavailable(guard, mint(dev))
    async with client_for(protected(guard)) as client:
        assert_unavailable(await get_me(client, mint(dev)))
        clock.advance(POLICY.cooldown)
        assert_unavailable(await get_me(client, mint(dev)))
        if outage == "connection-refused":
            return
        assert dev.fetch_count() == 5
        repair_jwks(dev)
        clock.advance(POLICY.cooldown)
        assert (await get_me(client, mint(dev))).status_code == 200
        assert dev.fetch_count() == 6


@pytest.mark.anyio
async def test_stale_keys_through_the_middleware(dev: DevIssuer, clock: FakeClock) -> None:
    guard = make_guard(dev, clock, discover=False)
    async with client_for(protected(guard)) as client:
        assert (await get_me(client, mint(dev))).status_code == 200
        break_jwks(dev)
        clock.advance(300 + 600 - 1)
        assert (await get_me(client, mint(dev))).status_code == 200
        clock.advance(1)
        assert_unavailable(await get_me(client, mint(dev)))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cache_control",
    [
        "max-age=300, must-revalidate",
        "public, max-age=300, must-revalidate, no-transform",  # as Google's JWKS says it
        "max-age=300, proxy-revalidate",  # for shared caches only (RFC 9111 §5.2.2.8)
        "max-age=300, must-revalidate, stale-if-error=0",
        "max-age=300, stale-if-error=60",  # RFC 5861 §4: a permission, not a limit
        "max-age=300, stale-if-error=86400",  # nor more than max_stale
    ],
)
async def test_revalidation_directives_leave_stale_if_error_to_max_stale(
    dev: DevIssuer, clock: FakeClock, cache_control: str
) -> None:
    """Pinned on purpose (docs/configuration.md): past its freshness the set is fetched
    again whatever the directives, and while those fetches fail the last good set serves
    for max_stale, the operator's bound, as for a response without them. must-revalidate
    (RFC 9111 §5.2.2.2), which identity providers send with every key set response, would
    otherwise refuse every token in any outage of theirs past the set's max-age."""
    serve_jwks(dev, cache_control=cache_control)
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 1
    break_jwks(dev)
    clock.advance(300)  # stale: a fetch is tried, fails, and the last good keys answer
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 2
    clock.advance(600 - 1)
    await guard.authenticate(mint(dev))
    clock.advance(1)  # max_stale past freshness: fails closed
    await assert_guard_unavailable(guard, mint(dev))


@pytest.mark.anyio
async def test_cached_tokens_also_fail_closed_past_max_stale(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False)
    token = mint(dev)
    await guard.authenticate(token)  # verified and cached
    break_jwks(dev)
    clock.advance(300 + 600)
    await assert_guard_unavailable(guard, mint(dev))  # a new token: fails closed
    await assert_guard_unavailable(guard, token)  # the cached one must too


@pytest.mark.anyio
async def test_cached_tokens_keep_verifying_while_the_set_is_stale_but_usable(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False)
    token = mint(dev)
    await guard.authenticate(token)
    break_jwks(dev)
    clock.advance(300 + 600 - 1)
    await guard.authenticate(mint(dev))
    assert (await guard.authenticate(token)).subject == "user-1"


# == unknown kids and kid-less tokens =====================================================


@pytest.mark.anyio
async def test_unknown_kid_with_a_healthy_jwks_is_401_unknown_key(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))
    clock.advance(POLICY.cooldown)
    token = random_kid_token(dev)
    with pytest.raises(UnknownKeyError) as caught:
        await guard.authenticate(token)
    assert caught.value.reason == "unknown_key"
    assert dev.fetch_count() == 2  # the miss triggered one (fruitless) refresh
    with capture_logs() as events:
        async with client_for(protected(guard)) as client:
            response = await get_me(client, token)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert response.json()["error"] == "invalid_token"
    decisions = [(e["event"], e["reason"]) for e in events if "reason" in e]
    assert decisions == [("token.rejected", "unknown_key")]


@pytest.mark.anyio
async def test_unknown_kid_when_the_fetch_fails_is_503_not_401(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))
    break_jwks(dev)
    clock.advance(POLICY.cooldown)  # the set is still fresh; the kid miss may fetch
    await assert_guard_unavailable(guard, random_kid_token(dev))
    assert dev.fetch_count() == 2
    async with client_for(protected(guard)) as client:
        clock.advance(1)  # within the cooldown: no fetch, still 503 (not a verdict on the kid)
        assert_unavailable(await get_me(client, random_kid_token(dev)))
        assert dev.fetch_count() == 2
        # Known keys keep working meanwhile.
        assert (await get_me(client, mint(dev))).status_code == 200
        # Once the issuer answers again, the miss is a real verdict.
        repair_jwks(dev)
        clock.advance(POLICY.cooldown)
        response = await get_me(client, random_kid_token(dev))
        assert response.status_code == 401
        assert dev.fetch_count() == 3


@pytest.mark.anyio
async def test_unknown_kid_on_a_cold_failing_guard_is_503(dev: DevIssuer, clock: FakeClock) -> None:
    break_jwks(dev)
    guard = make_guard(dev, clock, discover=False)
    async with client_for(protected(guard)) as client:
        assert_unavailable(await get_me(client, random_kid_token(dev)))


@pytest.mark.anyio
async def test_token_without_kid_against_a_one_key_set_verifies(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock, discover=False)
    token = mint(dev, headers={"kid": None})
    assert "kid" not in jwt.get_unverified_header(token)
    assert (await guard.authenticate(token)).key_id is None


@pytest.mark.anyio
async def test_token_without_kid_against_a_multi_key_set_is_refused(clock: FakeClock) -> None:
    with DevIssuer(algorithms=("ES256", "ES256")) as issuer:
        guard = make_guard(issuer, clock, discover=False)
        await guard.authenticate(mint(issuer))
        with pytest.raises(UnknownKeyError):
            await guard.authenticate(mint(issuer, headers={"kid": None}))
        async with client_for(protected(guard)) as client:
            response = await get_me(client, mint(issuer, headers={"kid": None}))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.anyio
@pytest.mark.parametrize("token_kid", ["some-kid", None])
async def test_a_one_key_set_whose_key_has_no_kid(
    dev: DevIssuer, clock: FakeClock, token_kid: str | None
) -> None:
    jwks = dev.jwks()
    del jwks["keys"][0]["kid"]
    dev.overrides[dev.jwks_path] = Override(body=json.dumps(jwks).encode())
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev, headers={"kid": token_kid}))


@pytest.mark.anyio
async def test_an_empty_jwks_withdraws_every_key(dev: DevIssuer, clock: FakeClock) -> None:
    """The issuer publishes ``{"keys": []}``: every key is withdrawn, as one key dropped from
    a set is. It was taken for an outage, the last keys honoured up to max_stale (a day)."""
    guard = make_guard(dev, clock, discover=False)
    token = mint(dev)
    await guard.authenticate(token)
    dev.overrides[dev.jwks_path] = Override(body=b'{"keys": []}')
    clock.advance(300)
    with pytest.raises(UnknownKeyError):  # the cached verification goes with its key
        await guard.authenticate(token)
    with pytest.raises(UnknownKeyError):
        guard.authenticate_sync(mint(dev))
    async with client_for(protected(guard)) as client:
        response = await get_me(client, mint(dev))
    assert response.status_code == 401
    assert not guard.keys_ready()
    assert dev.fetch_count() == 2
    # Keys published again are picked up by the next kid miss (one fetch per cooldown).
    repair_jwks(dev)
    clock.advance(POLICY.cooldown)
    assert (await guard.authenticate(token)).subject == "user-1"
    assert dev.fetch_count() == 3


@pytest.mark.anyio
@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
async def test_readiness_looks_again_at_an_empty_jwks(
    dev: DevIssuer, clock: FakeClock, *, synchronous: bool
) -> None:
    """An empty set makes readiness fail, so the load balancer sends no token, so no kid
    miss looks again: warm-up (the readiness probe's) did not either, and the instance stayed
    out for the set's freshness and max_stale. It looks again once per cooldown."""
    guard = make_guard(dev, clock, discover=False)
    endpoint = ReadinessEndpoint(guard)
    await guard.authenticate(mint(dev))
    dev.overrides[dev.jwks_path] = Override(
        body=b'{"keys": []}', headers={"Cache-Control": "max-age=3600"}
    )
    clock.advance(300)
    with pytest.raises(UnknownKeyError):
        await guard.authenticate(mint(dev))  # a request refreshes the set: empty
    async with client_for(endpoint) as client:
        assert (await client.get("/")).status_code == 503
    assert dev.fetch_count() == 2
    repair_jwks(dev)
    clock.advance(POLICY.cooldown)
    if synchronous:
        guard.warm_up_sync()
    else:
        async with client_for(endpoint) as client:
            assert (await client.get("/")).status_code == 200
            assert (await client.get("/")).status_code == 200
    assert guard.keys_ready()
    assert dev.fetch_count() == 3


@pytest.mark.anyio
async def test_a_jwks_without_usable_keys_is_an_outage_not_a_verdict(
    dev: DevIssuer, clock: FakeClock
) -> None:
    body = b'{"keys": [{"kty": "EC", "use": "enc", "crv": "P-256"}]}'
    guard = make_guard(dev, clock, discover=False)
    token = mint(dev)
    await guard.authenticate(mint(dev))
    dev.overrides[dev.jwks_path] = Override(body=body)
    clock.advance(300)
    # The last good keys keep answering (stale-if-error), as for any broken answer ...
    await guard.authenticate(token)
    # ... and on a cold start, the refusal is 503, not a 401 about the client's token.
    cold = make_guard(dev, clock, discover=False)
    await assert_guard_unavailable(cold, mint(dev))


@pytest.mark.anyio
async def test_a_jwks_of_rsa_keys_openssl_cannot_use_keeps_the_last_good_keys(
    dev: DevIssuer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An RSA key over 16384 bits loads, yet OpenSSL verifies nothing with it: a set of
    such keys replaced the last good one, and every token failed as a bad signature."""
    n = (1 << 16400) | 1
    huge = {"kty": "RSA", "kid": "huge", "alg": "RS256", "n": b64(n.to_bytes(2051, "big"))}
    body = json.dumps({"keys": [{**huge, "e": "AQAB"}]}).encode()
    guard = make_guard(dev, clock, discover=False)
    token = mint(dev)
    await guard.authenticate(token)
    dev.overrides[dev.jwks_path] = Override(body=body)
    clock.advance(300)
    with caplog.at_level("INFO", logger="bearerguard"):
        assert (await guard.authenticate(token)).subject == "user-1"
    assert "skipped JWK 'huge': an RSA modulus of 16401 bits" in caplog.text
    assert "the key set has no usable key" in caplog.text
    assert dev.fetch_count() == 2


@pytest.mark.anyio
async def test_a_gzip_encoded_jwks_within_the_limit_is_accepted(
    dev: DevIssuer, clock: FakeClock
) -> None:
    headers = {"Content-Encoding": "gzip", "Cache-Control": "max-age=300"}
    dev.overrides[dev.jwks_path] = Override(body=gzip.compress(jwks_body(dev)), headers=headers)
    guard = make_guard(dev, clock, discover=False)
    await guard.authenticate(mint(dev))


@pytest.mark.anyio
@pytest.mark.parametrize("synchronous", [False, True])
async def test_a_compression_bomb_is_refused_without_being_inflated(
    dev: DevIssuer, clock: FakeClock, synchronous: bool
) -> None:
    decoded = 50_000_000  # in about 50 KB on the wire
    bomb = gzip.compress(jwks_body(dev, padding=" " * decoded))
    dev.overrides[dev.jwks_path] = Override(body=bomb, headers={"Content-Encoding": "gzip"})
    guard = make_guard(dev, clock, discover=False)
    token = mint(dev)
    tracemalloc.start()
    try:
        if synchronous:
            with pytest.raises(KeySetUnavailableError):
                guard.authenticate_sync(token)
        else:
            with pytest.raises(KeySetUnavailableError):
                await guard.authenticate(token)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # httpx inflating the chunks itself held up to 50 MB at once; the fetch's own clients
    # and TLS context, built on first use, account for most of what is left.
    assert peak < 5_000_000


# == URLs httpx cannot use (regressions: they once escaped as other errors) ================


@pytest.mark.anyio
@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}x/jwks.json",  # not a port: urlsplit is lenient, httpx is not
        "http://127.0.0.1:99999/jwks.json",  # out of range
        "http://127.0.0.1:{port}/jwks\x00.json",  # a control character httpx refuses
    ],
)
async def test_discovered_jwks_uri_httpx_cannot_use_fails_closed(
    dev: DevIssuer, clock: FakeClock, template: str
) -> None:
    metadata = {**dev.metadata(), "jwks_uri": template.format(port=dev.port)}
    dev.overrides[dev.oidc_metadata_path] = Override(body=json.dumps(metadata).encode())
    guard = make_guard(dev, clock)
    await assert_guard_unavailable(guard, mint(dev))
    async with client_for(protected(guard)) as client:
        clock.advance(POLICY.cooldown)  # a second try, after the cooldown, fails closed too
        assert_unavailable(await get_me(client, mint(dev)))


@pytest.mark.anyio
async def test_lifespan_warm_up_survives_a_jwks_uri_httpx_cannot_use(
    dev: DevIssuer, clock: FakeClock
) -> None:
    metadata = {**dev.metadata(), "jwks_uri": f"http://127.0.0.1:{dev.port}x/jwks.json"}
    dev.overrides[dev.oidc_metadata_path] = Override(body=json.dumps(metadata).encode())
    guard = make_guard(dev, clock)
    async with lifespan(protected(guard, warm_up=True)) as started:
        assert started["type"] == "lifespan.startup.complete"


def test_configured_jwks_uri_with_an_invalid_port_is_a_configuration_error(
    dev: DevIssuer,
) -> None:
    with pytest.raises(ConfigurationError):
        BearerGuard(issuer=dev.url, audience="api", jwks_uri="http://127.0.0.1:abc/jwks.json")


@pytest.mark.anyio
async def test_a_failing_discovered_jwks_uri_is_rediscovered(
    dev: DevIssuer, clock: FakeClock
) -> None:
    moved = {**dev.metadata(), "jwks_uri": f"{dev.url}/old/jwks.json"}  # answers 404
    dev.overrides[dev.oidc_metadata_path] = Override(body=json.dumps(moved).encode())
    guard = make_guard(dev, clock)
    await assert_guard_unavailable(guard, mint(dev))
    dev.overrides.clear()  # the issuer fixes its metadata
    clock.advance(POLICY.cooldown)
    await guard.authenticate(mint(dev))


# == warm-up ==============================================================================


@pytest.mark.anyio
async def test_warm_up_fetches_the_keys_before_the_first_request(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock)
    assert guard.key_ids == []
    await guard.warm_up()
    assert dev.requests == [dev.oidc_metadata_path, dev.jwks_path]
    assert guard.key_ids == [dev.key().kid]
    await guard.warm_up()  # usable keys: nothing to do
    await guard.authenticate(mint(dev))
    assert dev.fetch_count() == 1


@pytest.mark.anyio
async def test_failed_warm_up_raises_and_requests_fail_closed(
    dev: DevIssuer, clock: FakeClock
) -> None:
    break_jwks(dev)
    guard = make_guard(dev, clock, discover=False)
    with pytest.raises(KeySetUnavailableError):
        await guard.warm_up()
    await assert_guard_unavailable(guard, mint(dev))
    assert dev.fetch_count() == 1  # the warm-up's failure counts for the cooldown


async def _app_with_startup_hook(
    guard: BearerGuard, seen: list[int], issuer: DevIssuer, **options: Any
) -> BearerGuardMiddleware:
    @asynccontextmanager
    async def app_lifespan(_: Starlette) -> AsyncIterator[None]:
        seen.append(issuer.fetch_count())  # the application's own start-up still runs
        yield

    app = Starlette(routes=[Route("/me", whoami)], lifespan=app_lifespan)
    return BearerGuardMiddleware(app, guard=guard, **options)


@pytest.mark.anyio
async def test_middleware_warms_up_during_lifespan_startup(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock)
    seen: list[int] = []
    app = await _app_with_startup_hook(guard, seen, dev, warm_up=True)
    async with lifespan(app) as started:
        assert started["type"] == "lifespan.startup.complete"
        assert seen == [1]  # the keys were there before the application's start-up ran
        assert dev.requests == [dev.oidc_metadata_path, dev.jwks_path]
        async with client_for(app) as client:
            assert (await get_me(client, mint(dev))).status_code == 200
    assert dev.fetch_count() == 1


@pytest.mark.anyio
async def test_middleware_without_warm_up_fetches_on_the_first_request(
    dev: DevIssuer, clock: FakeClock
) -> None:
    guard = make_guard(dev, clock)
    seen: list[int] = []
    app = await _app_with_startup_hook(guard, seen, dev)
    async with lifespan(app) as started:
        assert started["type"] == "lifespan.startup.complete"
        assert dev.requests == []
        async with client_for(app) as client:
            assert (await get_me(client, mint(dev))).status_code == 200
    assert dev.fetch_count() == 1


LIFESPAN_FAULTS: dict[str, Callable[[DevIssuer], None]] = {
    "500": break_jwks,
    "timeout": lambda i: i.overrides.__setitem__(
        i.jwks_path, Override(body=jwks_body(i), delay=SLOW)
    ),
    "issuer-mismatch": lambda i: i.overrides.__setitem__(
        i.oidc_metadata_path, Override(body=json.dumps(_mismatched(i)).encode())
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("fault", sorted(LIFESPAN_FAULTS))
async def test_failing_lifespan_warm_up_does_not_crash_startup(
    dev: DevIssuer, clock: FakeClock, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    LIFESPAN_FAULTS[fault](dev)
    guard = make_guard(dev, clock, fetch=SHORT if fault == "timeout" else FETCH)
    seen: list[int] = []
    app = await _app_with_startup_hook(guard, seen, dev, warm_up=True)
    async with lifespan(app) as started:
        assert started["type"] == "lifespan.startup.complete"
        assert len(seen) == 1
        assert "warm-up failed" in caplog.text
        async with client_for(app) as client:
            assert_unavailable(await get_me(client, mint(dev)))
            if fault == "timeout":
                return  # recovery is shown below, without a tight timeout
            dev.overrides.clear()
            clock.advance(POLICY.cooldown)
            assert (await get_me(client, mint(dev))).status_code == 200


@pytest.mark.anyio
async def test_failing_lifespan_warm_up_when_the_issuer_is_down(clock: FakeClock) -> None:
    with DevIssuer(algorithms=("ES256",)) as issuer:
        guard = make_guard(issuer, clock)
        token = mint(issuer)
    app = protected(guard, warm_up=True)
    async with lifespan(app) as started:
        assert started["type"] == "lifespan.startup.complete"
        async with client_for(app) as client:
            assert_unavailable(await get_me(client, token))


def test_lifespan_warm_up_under_starlette_testclient(dev: DevIssuer, clock: FakeClock) -> None:
    guard = make_guard(dev, clock)
    app = protected(guard, warm_up=True)
    with TestClient(app) as client:
        assert dev.fetch_count() == 1  # start-up is over: the keys are in
        response = client.get("/me", headers={"Authorization": f"Bearer {mint(dev)}"})
        assert response.status_code == 200
    assert dev.fetch_count() == 1


# == what goes over the wire ==============================================================


@pytest.mark.anyio
async def test_fetches_carry_a_recognisable_user_agent(dev: DevIssuer, clock: FakeClock) -> None:
    guard = make_guard(dev, clock)
    await guard.authenticate(mint(dev))
    assert [r.path for r in dev.received] == [dev.oidc_metadata_path, dev.jwks_path]
    for request in dev.received:
        assert request.headers["user-agent"] == USER_AGENT
        assert request.headers["user-agent"].startswith(f"bearerguard/{__version__} ")
        assert "application/json" in request.headers["accept"]
        assert "authorization" not in request.headers
        assert "cookie" not in request.headers


@pytest.fixture
def elsewhere() -> Iterator[DevIssuer]:
    """A second issuer, the target of redirects: it must never be asked anything."""
    with DevIssuer(algorithms=("ES256",)) as issuer:
        yield issuer


@pytest.mark.anyio
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_jwks_redirects_are_not_followed(
    dev: DevIssuer, elsewhere: DevIssuer, clock: FakeClock, status: int
) -> None:
    dev.overrides[dev.jwks_path] = Override(status=status, headers={"Location": elsewhere.jwks_uri})
    guard = make_guard(dev, clock, discover=False)
    async with client_for(protected(guard)) as client:
        assert_unavailable(await get_me(client, mint(dev)))
    assert elsewhere.requests == []


@pytest.mark.anyio
async def test_metadata_redirects_are_not_followed(
    dev: DevIssuer, elsewhere: DevIssuer, clock: FakeClock
) -> None:
    # Even to a document that would name the right issuer and a working JWKS.
    elsewhere.overrides["/moved"] = Override(body=json.dumps(dev.metadata()).encode())
    for path in (dev.oidc_metadata_path, dev.oauth_metadata_path):
        dev.overrides[path] = Override(status=302, headers={"Location": f"{elsewhere.url}/moved"})
    guard = make_guard(dev, clock)
    await assert_guard_unavailable(guard, mint(dev))
    assert elsewhere.requests == []
    assert dev.fetch_count() == 0


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": 0.0},
        {"timeout": -1.0},
        {"timeout": 1e10},  # beyond threading.TIMEOUT_MAX
        {"max_bytes": 0},
    ],
)
def test_a_fetch_policy_that_cannot_work_is_a_configuration_error(options: dict[str, Any]) -> None:
    # Accepted, it failed every fetch (503 on every request), and a WSGI thread waiting for
    # another's fetch raised from Lock.acquire(timeout=...): a 500.
    with pytest.raises(ConfigurationError):
        FetchPolicy(**options)


def test_discovery_names_the_issuer_the_metadata_gives() -> None:
    """An issuer configured with a trailing slash its metadata lacks (or the reverse, as
    with Auth0's) is refused by discovery: the message says which issuer the metadata
    names, so the mistake shows in the log and in ``bearerguard jwks check``."""
    with DevIssuer() as issuer:
        configured = issuer.url + "/"
        fetcher = JWKSFetcher(configured, None, FetchPolicy())
        with pytest.raises(FetchError) as caught:
            fetcher.fetch_sync()
    assert (
        f"metadata at {issuer.url}/.well-known/openid-configuration names the issuer "
        f"{issuer.url!r}, not {configured!r}"
    ) in str(caught.value)
