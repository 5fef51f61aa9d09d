"""The ASGI middleware's cache-hit path: a reused token meets every rule a fresh one does.

Each test sends a token once (verified and cached), then again in the situation under test,
so the second request goes through ``BearerGuard.reused`` rather than ``authenticate``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bearerguard import BearerGuard, RefreshPolicy, get_access_token, requires_scopes
from bearerguard._context import SCOPE_KEY, RequestAuth
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.metrics import CACHE, DECISIONS, InMemoryMetrics
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from tests.helpers import Clock, asgi_call, http_scope

pytestmark = pytest.mark.anyio


async def me(request: Request) -> JSONResponse:
    token = get_access_token(request)
    assert token is not None
    assert isinstance(request.auth.scopes, tuple)  # shared by reuses: must not be changeable
    return JSONResponse(
        {
            "sub": token.subject,
            "user": request.user.identity,
            "scopes": sorted(request.auth.scopes),
        }
    )


@requires_scopes("items:write")
async def write(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def app_for(guard: BearerGuard) -> BearerGuardMiddleware:
    routes = [Route("/me", me), Route("/write", write)]
    return BearerGuardMiddleware(Starlette(routes=routes), guard=guard)


@pytest.fixture
async def client(session_issuer: DevIssuer) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    transport = httpx.ASGITransport(app=app_for(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client, store


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


async def test_a_reused_token_fills_the_request_like_a_fresh_one(
    client: tuple[httpx.AsyncClient, Any], session_issuer: DevIssuer
) -> None:
    http, _ = client
    token = session_issuer.mint(sub="alice", scopes=["items:read", "b"])
    first = await http.get("/me", headers=bearer(token))
    with structlog.testing.capture_logs() as events:
        second = await http.get("/me", headers={**bearer(token), "X-Request-ID": "req-7"})
    assert (
        first.json()
        == second.json()
        == {"sub": "alice", "user": "alice", "scopes": ["b", "items:read"]}
    )
    [event] = events
    assert event["event"] == "token.accepted"
    assert event["request_id"] == "req-7"
    assert event["path"] == "/me"
    assert event["sub"] == "alice"
    assert event["scopes"] == ["b", "items:read"]


async def test_revocation_applies_to_a_reused_token_at_once(
    client: tuple[httpx.AsyncClient, Any], session_issuer: DevIssuer
) -> None:
    http, store = client
    token = session_issuer.mint(sub="bob")
    assert (await http.get("/me", headers=bearer(token))).status_code == 200
    assert (await http.get("/me", headers=bearer(token))).status_code == 200
    await store.revoke_subject("bob")
    with structlog.testing.capture_logs() as events:
        response = await http.get("/me", headers=bearer(token))
    assert response.status_code == 401
    assert events[0]["reason"] == "revoked"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([("Authorization", "Bearer {t}"), ("Authorization", "Bearer {t}")], 400),
        ([("Authorization", "Bearer {t}"), ("X-Other", "1")], 200),
        ([("Authorization", "bearer {t}")], 200),
        ([("Authorization", "BEARER   {t}")], 200),
        ([("Authorization", "Bearer {t}x")], 401),
        ([("Authorization", "Basic {t}")], 401),
    ],
)
async def test_the_request_rules_hold_for_a_reused_token(
    client: tuple[httpx.AsyncClient, Any],
    session_issuer: DevIssuer,
    headers: list[tuple[str, str]],
    status: int,
) -> None:
    http, _ = client
    token = session_issuer.mint()
    assert (await http.get("/me", headers=bearer(token))).status_code == 200
    sent = [(name, value.format(t=token)) for name, value in headers]
    response = await http.get("/me", headers=httpx.Headers(sent))
    assert response.status_code == status


async def test_a_query_token_beside_a_reused_header_token_is_invalid_request(
    client: tuple[httpx.AsyncClient, Any], session_issuer: DevIssuer
) -> None:
    http, _ = client
    token = session_issuer.mint()
    assert (await http.get("/me", headers=bearer(token))).status_code == 200
    response = await http.get(f"/me?access_token={token}", headers=bearer(token))
    assert response.status_code == 400


async def test_scope_checks_and_their_audit_event_on_a_reused_token(
    client: tuple[httpx.AsyncClient, Any], session_issuer: DevIssuer
) -> None:
    http, _ = client
    token = session_issuer.mint(scopes=["items:read"])
    assert (await http.get("/me", headers=bearer(token))).status_code == 200
    with structlog.testing.capture_logs() as events:
        response = await http.get("/write", headers={**bearer(token), "X-Request-ID": "r1"})
    assert response.status_code == 403
    assert [e["event"] for e in events] == ["token.accepted", "scope.denied"]
    assert events[1]["request_id"] == "r1"
    assert events[1]["required_scopes"] == ["items:write"]


async def test_a_reused_token_expires_on_time(session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(expires_in=60)
    clock = Clock()  # after minting: iat (whole seconds) must not be ahead of the clock
    guard = session_issuer.guard(clock=clock, leeway=0)
    transport = httpx.ASGITransport(app=app_for(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        assert (await http.get("/me", headers=bearer(token))).status_code == 200
        assert (await http.get("/me", headers=bearer(token))).status_code == 200
        clock.now += 61
        with structlog.testing.capture_logs() as events:
            response = await http.get("/me", headers=bearer(token))
    assert response.status_code == 401
    assert events[0]["reason"] == "expired"


async def test_a_reused_token_stops_when_its_key_leaves_the_key_set() -> None:
    clock = Clock()
    policy = RefreshPolicy(default_ttl=300, min_ttl=60, max_ttl=3600, cooldown=30, max_stale=600)
    with DevIssuer(algorithms=("ES256",)) as issuer:
        guard = issuer.guard(clock=clock, refresh=policy)
        token = issuer.mint(expires_in=86_400)
        transport = httpx.ASGITransport(app=app_for(guard))
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            for _ in range(2):  # verified, then found in the cache with its key set
                assert (await http.get("/me", headers=bearer(token))).status_code == 200
            # the next request reuses it
            assert guard.reused(b"Bearer " + token.encode()) is not None
            old = issuer.key().kid
            issuer.rotate("ES256")
            issuer.retire(old)
            # Within the set's freshness the cached verification stands, as documented.
            assert (await http.get("/me", headers=bearer(token))).status_code == 200
            clock.now += 301  # past freshness: the reuse path must not answer alone
            assert guard.reused(b"Bearer " + token.encode()) is None
            response = await http.get("/me", headers=bearer(token))
            assert response.status_code == 401
            fresh = issuer.mint(expires_in=86_400)
            assert (await http.get("/me", headers=bearer(fresh))).status_code == 200
            assert (await http.get("/me", headers=bearer(fresh))).status_code == 200


async def test_a_refreshed_set_still_holding_the_key_keeps_reusing(
    session_issuer: DevIssuer,
) -> None:
    clock = Clock()
    guard = session_issuer.guard(clock=clock)
    token = session_issuer.mint(expires_in=86_400)
    transport = httpx.ASGITransport(app=app_for(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        for _ in range(2):
            assert (await http.get("/me", headers=bearer(token))).status_code == 200
            assert (await http.get("/me", headers=bearer(token))).status_code == 200
            assert guard.reused(b"Bearer " + token.encode()) is not None
            clock.now += 7200  # past any TTL: the next request refreshes the set
            assert guard.reused(b"Bearer " + token.encode()) is None
    assert session_issuer.fetch_count() >= 2


async def test_metrics_count_reused_hits_and_accepted_decisions_with_audit_off(
    session_issuer: DevIssuer,
) -> None:
    metrics = InMemoryMetrics()
    guard = session_issuer.guard(metrics=metrics, audit_sample_accepted=0.0)
    token = session_issuer.mint()
    transport = httpx.ASGITransport(app=app_for(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        with structlog.testing.capture_logs() as events:
            for _ in range(3):
                assert (await http.get("/me", headers=bearer(token))).status_code == 200
    assert events == []
    assert metrics.count(CACHE, result="hit") == 2
    assert metrics.count(CACHE, result="miss") == 1
    assert metrics.count(DECISIONS, event="token.accepted", reason="ok") == 3


@pytest.mark.parametrize("kind", ["token", "subject", "client"])
async def test_every_kind_of_revocation_reaches_a_token_cleared_before(
    client: tuple[httpx.AsyncClient, Any], session_issuer: DevIssuer, kind: str
) -> None:
    http, store = client
    for _ in range(50):  # other revocations, before and between: each changes the table
        store.revoke_token_sync(f"other-{_}")
    token = session_issuer.mint(sub="carol", client_id="app-9")
    for _ in range(3):
        assert (await http.get("/me", headers=bearer(token))).status_code == 200
    store.revoke_subject_sync("someone-else")
    assert (await http.get("/me", headers=bearer(token))).status_code == 200
    if kind == "token":
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        store.revoke_token_sync(jti)
    elif kind == "subject":
        store.revoke_subject_sync("carol")
    else:
        store.revoke_client_sync("app-9")
    assert (await http.get("/me", headers=bearer(token))).status_code == 401


async def test_a_revocation_from_another_thread_applies_to_the_next_reuse(
    client: tuple[httpx.AsyncClient, Any], session_issuer: DevIssuer
) -> None:
    http, store = client
    token = session_issuer.mint(sub="dana")
    for _ in range(3):
        assert (await http.get("/me", headers=bearer(token))).status_code == 200
    worker = threading.Thread(target=store.revoke_subject_sync, args=("dana",))
    worker.start()
    worker.join()
    assert (await http.get("/me", headers=bearer(token))).status_code == 401


async def test_a_store_subclass_is_asked_on_every_reuse(session_issuer: DevIssuer) -> None:
    class Switch(MemoryRevocationStore):
        revoked = False

        def is_revoked_sync(self, token: Any) -> bool:
            return self.revoked

    store = Switch()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint()
    transport = httpx.ASGITransport(app=app_for(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        for _ in range(3):
            assert (await http.get("/me", headers=bearer(token))).status_code == 200
        store.revoked = True  # no write through the store's methods: nothing to notice
        assert (await http.get("/me", headers=bearer(token))).status_code == 401


async def test_the_first_reuse_already_takes_the_fast_path(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard()
    token = session_issuer.mint()
    assert guard.reused(b"Bearer " + token.encode()) is None  # never seen
    await guard.authenticate(token)
    entry = guard.reused(b"Bearer " + token.encode())
    assert entry is not None
    assert entry.key_set is not None  # stamped with the set its key came from


async def test_a_cached_token_whose_kid_no_longer_chooses_its_key_is_refused() -> None:
    # Without a kid, a token is verified only against a set of one key. Cached then, it must
    # not outlive that rule once the set holds two: seen first, it is refused.
    with DevIssuer(algorithms=("ES256",)) as issuer:
        guard = issuer.guard(refresh=RefreshPolicy(cooldown=0))
        kidless = issuer.mint(headers={"kid": None})
        transport = httpx.ASGITransport(app=app_for(guard))
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            assert (await http.get("/me", headers=bearer(kidless))).status_code == 200
            issuer.rotate("ES256")
            # The new key's token names a kid the set lacks: the set is fetched again.
            assert (await http.get("/me", headers=bearer(issuer.mint()))).status_code == 200
            assert len(guard.key_ids) == 2
            with structlog.testing.capture_logs() as events:
                response = await http.get("/me", headers=bearer(kidless))
            assert response.status_code == 401
            assert [event["reason"] for event in events] == ["unknown_key"]
            assert guard.reused(b"Bearer " + kidless.encode()) is None


async def test_a_reused_token_is_not_yet_valid_when_the_clock_steps_back(
    session_issuer: DevIssuer,
) -> None:
    clock = Clock(float(int(time.time())))
    token = session_issuer.mint(sub="nia", nbf=int(clock.now), iat=int(clock.now))
    guard = session_issuer.guard(clock=clock, leeway=5)
    transport = httpx.ASGITransport(app=app_for(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        for _ in range(2):  # verified, then reused
            assert (await http.get("/me", headers=bearer(token))).status_code == 200
        clock.now -= 6  # the wall clock jumps back: nbf is now beyond the leeway
        with structlog.testing.capture_logs() as events:
            response = await http.get("/me", headers=bearer(token))
        assert response.status_code == 401
        assert [(event["event"], event["reason"]) for event in events] == [
            ("token.rejected", "not_yet_valid")
        ]
        clock.now += 6
        assert (await http.get("/me", headers=bearer(token))).status_code == 200


async def _twice_with_query(
    issuer: DevIssuer, token: str, query_string: object, status: int
) -> list[dict[str, Any]]:
    """``GET /me`` with ``token`` and this scope ``query_string``, on the token's first sight
    and then as a cache hit; each answered ``status`` with one audit event. The scopes sent."""
    app = app_for(issuer.guard())
    scopes: list[dict[str, Any]] = []
    for _ in range(2):
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": "/me",
            "raw_path": b"/me",
            "query_string": query_string,
            "headers": [(b"host", b"api.test"), (b"authorization", f"Bearer {token}".encode())],
            "client": ("127.0.0.1", 1234),
        }
        with structlog.testing.capture_logs() as events:
            sent = await asgi_call(app, scope)
        assert sent[0]["status"] == status
        assert [e["event"] for e in events] == [
            "token.accepted" if status == 200 else "token.rejected"
        ]
        scopes.append(scope)
    return scopes


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 200),
        ("page=2&q=%C3%A9", 200),
        ("q=\u00e9t\u00e9", 200),
        ("a=1&access_token={t}", 400),
        ("access%5Ftoken={t}", 400),
    ],
    ids=["empty", "percent", "non-ascii", "token", "encoded-name"],
)
async def test_a_text_query_string_is_answered_not_a_500(
    session_issuer: DevIssuer, query: str, status: int
) -> None:
    # ASGI says bytes; Django's AsyncClient and some test tools put text in query_string.
    # The cache-hit path ran bytes methods on it (a 500): it now takes the general path,
    # which reads the text as the bytes it stands for. A refused query is redacted as text.
    token = session_issuer.mint(sub="ana")
    for scope in await _twice_with_query(session_issuer, token, query.format(t=token), status):
        assert isinstance(scope["query_string"], str)
        assert token not in scope["query_string"]


@pytest.mark.parametrize("kind", [bytearray, memoryview])
@pytest.mark.parametrize(
    ("query", "status"),
    [("a=1", 200), ("a=1&access_token={t}", 400), ("access%5Ftoken={t}", 400)],
    ids=["plain", "token", "encoded-name"],
)
async def test_a_bytes_like_query_string_is_read_as_its_bytes(
    session_issuer: DevIssuer, kind: type[bytearray | memoryview], query: str, status: int
) -> None:
    # Taken for no query at all once text got its own reading: a token in the query was let
    # in beside the header's (RFC 6750 §2: one method per request) and left in the scope
    # unredacted, on the cache hit (which hands such a query to the general path) as on the
    # first sight. Bytes of another type are read as the bytes they hold: fail closed.
    token = session_issuer.mint(sub="ana")
    query_string = kind(query.format(t=token).encode())
    for scope in await _twice_with_query(session_issuer, token, query_string, status):
        if status == 400:
            assert token.encode() not in bytes(scope["query_string"])


async def test_a_reused_token_records_the_request_as_a_fresh_one(
    session_issuer: DevIssuer,
) -> None:
    # The fast path sets RequestAuth's slots one by one (no __init__ frame): every slot is
    # set, to what the general path gives the same request.
    seen: list[RequestAuth] = []

    async def record(request: Request) -> JSONResponse:
        seen.append(request.scope[SCOPE_KEY])
        return JSONResponse({})

    guard = session_issuer.guard()
    app = BearerGuardMiddleware(Starlette(routes=[Route("/r", record)]), guard=guard)
    token = session_issuer.mint()
    headers = {**bearer(token), "X-Request-ID": "req-9"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        for _ in range(2):
            assert (await http.get("http://api.test/r", headers=headers)).status_code == 200
    fresh, reused = seen
    assert guard.reused(b"Bearer " + token.encode()) is not None  # the second request could take it
    slots = [name for cls in type(fresh).__mro__ for name in getattr(cls, "__slots__", ())]
    assert sorted(slots) == sorted(
        (
            "client",
            "method",
            "path",
            "request_id",
            "guard",
            "respond",
            "started",
            "token",
            "websocket",
        )
    )
    for name in slots:
        if name == "started":
            assert getattr(reused, name) > getattr(fresh, name)
        elif name == "token":
            assert reused.token == fresh.token
        else:
            assert getattr(reused, name) == getattr(fresh, name), name


@pytest.mark.parametrize("kind", [bytearray, memoryview])
async def test_a_bytes_like_authorization_value_is_read_as_its_bytes(
    session_issuer: DevIssuer, kind: type[bytearray | memoryview]
) -> None:
    # ASGI says bytes, yet Starlette reads any bytes-like header value (it only decodes it).
    # A bytearray or memoryview one raised on first sight (no rstrip, or unhashable) and a
    # bytearray one on the cache-hit lookup: a 500 where the token's answer was due. Read
    # as its bytes: verified, then reused; and refused as bytes are.
    app = app_for(session_issuer.guard())
    token = session_issuer.mint(sub="ana").encode()
    for credentials, status, event in [
        (token, 200, "token.accepted"),
        (token, 200, "token.accepted"),
        (token + b"!", 400, "token.rejected"),
    ]:
        scope = http_scope(
            [(b"host", b"api.test"), (b"authorization", kind(b"Bearer " + credentials))]
        )
        with structlog.testing.capture_logs() as events:
            sent = await asgi_call(app, scope)
        assert sent[0]["status"] == status
        assert [each["event"] for each in events] == [event]


@pytest.mark.parametrize("kind", [bytearray, memoryview])
async def test_a_bytes_like_request_id_is_read_as_its_bytes(
    session_issuer: DevIssuer, kind: type[bytearray | memoryview]
) -> None:
    # As an Authorization value: the general path joins X-Request-ID values into bytes, but
    # the cache hit decoded the one value as given, and a memoryview has no decode(): the
    # token's second request answered 500. Both requests now record the id as text.
    app = app_for(session_issuer.guard())
    token = session_issuer.mint(sub="ana").encode()
    for _ in range(2):
        scope = http_scope(
            [
                (b"host", b"api.test"),
                (b"authorization", b"Bearer " + token),
                (b"x-request-id", kind(b"req-7")),
            ]
        )
        with structlog.testing.capture_logs() as events:
            sent = await asgi_call(app, scope)
        assert sent[0]["status"] == 200
        assert [(each["event"], each["request_id"]) for each in events] == [
            ("token.accepted", "req-7")
        ]


async def test_one_request_cannot_change_what_later_reuses_of_its_token_see(
    session_issuer: DevIssuer,
) -> None:
    # The cache hit hands every request of a token the same request.auth and request.user.
    # A tuple kept their scopes from being changed in place, but rebinding them (a per-request
    # grant, an app's own sudo step) changed them for every later request of the token:
    # the second request below held "admin" without it. They are read-only now.
    rebound: list[str] = []

    async def widen(request: Request) -> JSONResponse:
        for owner, name, value in [
            (request.auth, "scopes", (*request.auth.scopes, "admin")),
            (request.user, "access_token", None),
        ]:
            try:
                setattr(owner, name, value)
            except AttributeError:
                continue
            rebound.append(name)
        return JSONResponse({})

    async def show(request: Request) -> JSONResponse:
        token = request.user.access_token
        return JSONResponse({"scopes": list(request.auth.scopes), "sub": token and token.subject})

    app = BearerGuardMiddleware(
        Starlette(routes=[Route("/widen", widen), Route("/show", show)]),
        guard=session_issuer.guard(),
    )
    token = session_issuer.mint(sub="ana", scope="items:read")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test"
    ) as http:
        assert (await http.get("/show", headers=bearer(token))).status_code == 200  # verified
        assert (await http.get("/widen", headers=bearer(token))).status_code == 200  # reused
        shown = (await http.get("/show", headers=bearer(token))).json()
    assert shown == {"scopes": ["items:read"], "sub": "ana"}
    assert rebound == []
