"""MemoryRevocationStore, and revocation as the guard applies it on every request."""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import structlog

from bearerguard import AccessToken
from bearerguard.errors import (
    ConfigurationError,
    ExpiredTokenError,
    RevocationStoreError,
    RevokedTokenError,
)
from bearerguard.revocation import MemoryRevocationStore, RevocationStore
from bearerguard.testing import DevIssuer
from tests.apps import build_app

pytestmark = pytest.mark.anyio

ISS = "https://issuer.example"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token(
    jti: str | None = "j1",
    sub: str | None = "s1",
    iat: float | None = 1_799_999_000.0,
    client_id: str | None = "c1",
    iss: str = ISS,
) -> AccessToken:
    optional = {"jti": jti, "sub": sub, "iat": iat, "client_id": client_id}
    claims: dict[str, Any] = {"iss": iss, "aud": "api", "exp": 1_800_003_600}
    claims.update({name: value for name, value in optional.items() if value is not None})
    return AccessToken.from_claims(
        claims,
        scopes=frozenset(),
        expires_at=1_800_003_600,
        issued_at=iat,
        key_id=None,
        algorithm="RS256",
        fingerprint="f",
    )


def test_is_a_revocation_store() -> None:
    assert isinstance(MemoryRevocationStore(), RevocationStore)


async def test_revoke_token_until_expiry_plus_grace() -> None:
    clock = Clock()
    store = MemoryRevocationStore(clock=clock, expiry_grace=60)
    assert not await store.is_revoked(token())
    assert await store.revoke_token("j1", expires_at=clock.now + 100) is True
    assert await store.is_revoked(token())
    assert not await store.is_revoked(token(jti="j2"))
    clock.now += 159
    assert await store.is_revoked(token())
    clock.now += 2
    assert not await store.is_revoked(token())


async def test_revoke_token_accepts_aware_datetimes_only() -> None:
    store = MemoryRevocationStore()
    await store.revoke_token("j1", expires_at=datetime(2030, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ValueError, match="naive"):
        await store.revoke_token("j1", expires_at=datetime(2030, 1, 1))
    with pytest.raises(TypeError):
        await store.revoke_token("j1", expires_at="2030")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "instant", [10**400, -(10**400), float("nan"), float("inf"), 1e16, -1e16, 10**16]
)
async def test_an_instant_beyond_any_date_is_refused(instant: float) -> None:
    store = MemoryRevocationStore()
    with pytest.raises(ValueError, match="instant is"):
        await store.revoke_token("j1", expires_at=instant)
    with pytest.raises(ValueError, match="instant is"):
        await store.revoke_subject("s1", issued_before=instant)


async def test_revocations_are_keyed_on_issuer_and_jti() -> None:
    store = MemoryRevocationStore()
    await store.revoke_token("j1", issuer="https://other.example")
    assert not await store.is_revoked(token())
    assert await store.is_revoked(token(iss="https://other.example"))
    await store.revoke_token("j1")  # any issuer
    assert await store.is_revoked(token())


async def test_revoke_subject_cuts_tokens_issued_up_to_the_instant() -> None:
    clock = Clock()
    store = MemoryRevocationStore(clock=clock)
    await store.revoke_subject("s1")
    assert await store.is_revoked(token(iat=clock.now - 10))
    assert await store.is_revoked(token(iat=clock.now))
    assert not await store.is_revoked(token(iat=clock.now + 1))
    assert await store.is_revoked(token(iat=None, jti=None))  # no iat: cannot show it is newer
    assert not await store.is_revoked(token(sub="s2"))


async def test_subject_cutoff_in_the_past_and_retention() -> None:
    clock = Clock()
    store = MemoryRevocationStore(clock=clock, retention=100, expiry_grace=10)
    await store.revoke_subject("s1", issued_before=clock.now - 500)
    assert not await store.is_revoked(token(iat=clock.now - 400))
    assert await store.is_revoked(token(iat=clock.now - 600))
    # A later cut-off never moves back in time.
    await store.revoke_subject("s1", issued_before=clock.now - 1000)
    assert await store.is_revoked(token(iat=clock.now - 600))
    clock.now += 109  # retention plus the grace
    assert await store.is_revoked(token(iat=clock.now - 109 - 600))
    clock.now += 2
    assert not await store.is_revoked(token(iat=clock.now - 10_000))


async def test_revoke_client() -> None:
    store = MemoryRevocationStore(clock=Clock())
    await store.revoke_client("c1")
    assert await store.is_revoked(token())
    assert not await store.is_revoked(token(client_id="c2"))


async def test_full_store_refuses_rather_than_forgetting() -> None:
    clock = Clock()
    store = MemoryRevocationStore(clock=clock, max_entries=2, expiry_grace=0)
    await store.revoke_token("a", expires_at=clock.now + 10)
    await store.revoke_token("b", expires_at=clock.now + 1000)
    with pytest.raises(RevocationStoreError):
        await store.revoke_token("c")
    clock.now += 11  # "a" expires: its room is reclaimed
    await store.revoke_token("c")
    assert len(store) == 2
    assert await store.is_revoked(token(jti="b"))


async def test_a_full_store_still_strengthens_an_entry_it_holds() -> None:
    # Moving a held cut-off later (or a token's lapse) adds no entry: refusing it would
    # leave the tokens issued since the first cut-off accepted.
    clock = Clock()
    store = MemoryRevocationStore(clock=clock, max_entries=2)
    await store.revoke_subject("s1", clock.now - 3600)
    await store.revoke_token("j9", expires_at=clock.now + 1000)
    await store.revoke_subject("s1")
    await store.revoke_token("j9", expires_at=clock.now + 2000)
    assert len(store) == 2
    assert await store.is_revoked(token(jti="other", iat=clock.now - 60))
    with pytest.raises(RevocationStoreError):
        await store.revoke_client("c9")  # a new entry is still refused


@pytest.mark.parametrize("sync", [False, True])
async def test_a_session_cutoff_that_does_not_fit_is_refused_whole(sync: bool) -> None:
    # A session cut-off with its user is two entries. With room for one, the user's entry
    # was written and the session's refused: half a revocation, reported as a failure.
    clock = Clock()
    store = MemoryRevocationStore(clock=clock, max_entries=3)
    await store.revoke_token("j0", expires_at=clock.now + 1000)
    await store.revoke_token("j1", expires_at=clock.now + 1000)

    async def revoke_with_user() -> None:
        if sync:
            store.revoke_session_sync("sess-1", subject="s9")
        else:
            await store.revoke_session("sess-1", subject="s9")

    with pytest.raises(RevocationStoreError, match="max_entries"):
        await revoke_with_user()
    assert len(store) == 2  # neither entry was written
    assert not await store.is_revoked(token(jti="other", sub="s9", iat=clock.now - 60))
    assert await store.revoke_session("sess-1")  # one entry still fits
    assert len(store) == 3


async def test_lapsed_entries_are_forgotten_before_the_store_is_full() -> None:
    # Entries vanish once the tokens they cover would have expired: revoking five-minute
    # tokens all day keeps the last minutes' revocations, not every one (max_entries).
    clock = Clock()
    store = MemoryRevocationStore(clock=clock)
    for minute in range(24 * 60):
        for i in range(10):
            await store.revoke_token(f"j{minute}-{i}", expires_at=clock.now + 300)
        clock.now += 60
    assert len(store) <= 10 * 11
    assert await store.is_revoked(token(jti=f"j{24 * 60 - 1}-0"))


def test_store_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        MemoryRevocationStore(max_entries=0)


async def test_revocation_takes_effect_on_the_next_request(session_issuer: DevIssuer) -> None:
    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    transport = httpx.ASGITransport(app=build_app(guard))
    minted = session_issuer.mint(sub="frank")
    headers = {"Authorization": f"Bearer {minted}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = await client.get("/me", headers=headers)
        assert first.status_code == 200  # now cached
        claims = (await guard.authenticate(minted)).claims
        await store.revoke_token(claims["jti"], expires_at=claims["exp"])
        with structlog.testing.capture_logs() as events:
            second = await client.get("/me", headers=headers)
        assert second.status_code == 401
        assert "The access token has been revoked." in second.headers["www-authenticate"]
        assert events[0]["reason"] == "revoked"
        assert events[0]["store"] == "memory"
        assert events[0]["sub"] == "frank"
        other = session_issuer.mint(sub="frank")
        assert (
            await client.get("/me", headers={"Authorization": f"Bearer {other}"})
        ).status_code == 200
        await store.revoke_subject("frank")
        assert (
            await client.get("/me", headers={"Authorization": f"Bearer {other}"})
        ).status_code == 401


class BrokenStore:
    async def is_revoked(self, token: AccessToken) -> bool:
        raise ConnectionError("store down")


async def test_a_failing_store_fails_closed(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(revocation=BrokenStore())
    transport = httpx.ASGITransport(app=build_app(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with structlog.testing.capture_logs() as events:
            response = await client.get(
                "/me", headers={"Authorization": f"Bearer {session_issuer.mint()}"}
            )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert events[0]["event"] == "auth.unavailable"
    assert events[0]["reason"] == "revocation_unavailable"
    assert events[0]["store"] == "BrokenStore"


async def test_failing_open_is_an_explicit_choice(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(revocation=BrokenStore(), revocation_failure="allow")
    transport = httpx.ASGITransport(app=build_app(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(
            "/me", headers={"Authorization": f"Bearer {session_issuer.mint()}"}
        )
    assert response.status_code == 200


class BrokenNonblockingStore:
    """Answers from memory (so the middleware may ask it on the hot path), and fails."""

    nonblocking = True

    async def is_revoked(self, token: AccessToken) -> bool:
        raise ConnectionError("store down")

    def is_revoked_sync(self, token: AccessToken) -> bool:
        raise ConnectionError("store down")


async def test_a_failing_nonblocking_store_fails_closed_on_cache_hits(
    session_issuer: DevIssuer,
) -> None:
    guard = session_issuer.guard(revocation=BrokenNonblockingStore())
    transport = httpx.ASGITransport(app=build_app(guard))
    headers = {"Authorization": f"Bearer {session_issuer.mint()}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = await client.get("/me", headers=headers)  # a miss: verified, then cached
        second = await client.get("/me", headers=headers)  # a hit: the fast path defers
    assert (first.status_code, second.status_code) == (503, 503)


async def test_the_guards_own_store_outlives_a_long_leeway(session_issuer: DevIssuer) -> None:
    clock = Clock(time.time())
    guard = session_issuer.guard(leeway=900, clock=clock)
    store = guard.revocation
    assert isinstance(store, MemoryRevocationStore)
    assert store.expiry_grace == 960
    minted = session_issuer.mint(expires_in=60)
    claims = (await guard.authenticate(minted)).claims
    await store.revoke_token(claims["jti"], expires_at=claims["exp"])
    for seconds_past_exp in (0, 400, 899):
        clock.now = claims["exp"] + seconds_past_exp
        with pytest.raises(RevokedTokenError):
            await guard.authenticate(minted)
    clock.now = claims["exp"] + 901  # past the leeway: expired, and the entry may go
    with pytest.raises(ExpiredTokenError):
        await guard.authenticate(minted)
    assert session_issuer.guard().revocation.expiry_grace == 300  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["subject", "token without exp"])
async def test_a_retained_entry_outlives_the_leeway(session_issuer: DevIssuer, kind: str) -> None:
    # retention set as documented (the longest token lifetime): a token issued just before
    # the revocation is accepted up to the leeway past its exp, and must stay refused.
    clock = Clock(time.time())
    store = MemoryRevocationStore(retention=3600, clock=clock)
    guard = session_issuer.guard(revocation=store, clock=clock, cache_size=0)
    issued = int(clock.now)
    minted = session_issuer.mint(sub="mallory", iat=issued, exp=issued + 3600)
    claims = (await guard.authenticate(minted)).claims
    if kind == "subject":
        await store.revoke_subject("mallory")
    else:
        await store.revoke_token(claims["jti"])
    for seconds_past_exp in (0, 15, guard.leeway - 1):
        clock.now = issued + 3600 + seconds_past_exp
        with pytest.raises(RevokedTokenError):
            await guard.authenticate(minted)


@pytest.mark.parametrize(("grace", "leeway"), [(60, 120), (0, 1), (299.5, 300)])
def test_a_store_forgetting_revocations_within_the_leeway_is_refused(
    session_issuer: DevIssuer, grace: float, leeway: float
) -> None:
    with pytest.raises(ConfigurationError, match="expiry_grace"):
        session_issuer.guard(revocation=MemoryRevocationStore(expiry_grace=grace), leeway=leeway)
    same = MemoryRevocationStore(expiry_grace=leeway)
    assert session_issuer.guard(revocation=same, leeway=leeway).revocation is same


class DenyList(MemoryRevocationStore):
    """Overrides only the protocol's ``is_revoked``: the inherited synchronous side knows
    nothing of its list."""

    def __init__(self) -> None:
        super().__init__()
        self.denied: set[str] = set()

    async def is_revoked(self, token: AccessToken) -> bool:
        return token.subject in self.denied or await super().is_revoked(token)


async def test_a_subclass_overriding_only_is_revoked_is_asked_first_and_on_reuse(
    session_issuer: DevIssuer,
) -> None:
    store = DenyList()
    guard = session_issuer.guard(revocation=store)
    transport = httpx.ASGITransport(app=build_app(guard))
    reused, fresh = session_issuer.mint(sub="carol"), session_issuer.mint(sub="carol")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(3):
            response = await client.get("/me", headers={"Authorization": f"Bearer {reused}"})
            assert response.status_code == 200
        store.denied.add("carol")
        for minted in (reused, fresh):
            response = await client.get("/me", headers={"Authorization": f"Bearer {minted}"})
            assert response.status_code == 401
        await store.revoke_subject("dave")  # the inherited state still applies
        dave = session_issuer.mint(sub="dave", iat=time.time() - 5)
        response = await client.get("/me", headers={"Authorization": f"Bearer {dave}"})
        assert response.status_code == 401


def test_such_a_subclass_has_no_synchronous_side_for_wsgi(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(revocation=DenyList())
    with pytest.raises(ConfigurationError, match="is_revoked_sync"):
        guard.require_sync_side()


@pytest.mark.parametrize("failure", ["deny", "allow"])
def test_authenticate_sync_without_a_synchronous_side_is_a_configuration_error(
    session_issuer: DevIssuer, failure: Any
) -> None:
    # Read as the store failing, it was a 503, and with "allow" every token was let in,
    # revoked ones included: the store was never asked.
    store = DenyList()
    store.denied.add("carol")
    guard = session_issuer.guard(revocation=store, revocation_failure=failure)
    with pytest.raises(ConfigurationError, match="is_revoked_sync"):
        guard.authenticate_sync(session_issuer.mint(sub="carol"))


class SyncIsRevoked:
    """``is_revoked`` written as a plain function: it cannot be awaited."""

    def is_revoked(self, token: AccessToken) -> bool:
        return token.subject == "mallory"


class AsyncIsRevokedSync(MemoryRevocationStore):
    """``is_revoked_sync`` written as a coroutine function: its answer is a coroutine."""

    async def is_revoked_sync(self, token: AccessToken) -> bool:  # type: ignore[override]
        return False


@pytest.mark.parametrize("store", [SyncIsRevoked, AsyncIsRevokedSync])
async def test_a_store_whose_checks_have_the_wrong_colour_is_refused(
    session_issuer: DevIssuer, store: type[Any]
) -> None:
    # A plain is_revoked failed every await: 503 on every request, and with "allow" every
    # token let in, revoked ones included (mallory's here).
    with pytest.raises(ConfigurationError, match="is_revoked"):
        session_issuer.guard(revocation=store(), revocation_failure="allow")


async def test_revoking_says_whether_an_entry_is_held() -> None:
    # As RedisRevocationStore: False when the entry had already lapsed (nothing kept).
    clock = Clock()
    store = MemoryRevocationStore(clock=clock, expiry_grace=60)
    assert await store.revoke_token("old", expires_at=clock.now - 61) is False
    assert store.revoke_token_sync("old", expires_at=clock.now - 59) is True
    assert len(store) == 1
    assert await store.revoke_subject("s1") is True
    assert store.revoke_client_sync("c1", issued_before=clock.now - 10) is True


def test_a_clock_that_is_not_callable_is_refused() -> None:
    # time.time() for time.time: a TypeError, not the ConfigurationError of other options.
    with pytest.raises(ConfigurationError, match="clock"):
        MemoryRevocationStore(clock=time.time())  # type: ignore[arg-type]


def test_a_store_of_your_own_with_a_nan_grace_is_refused(session_issuer: DevIssuer) -> None:
    # NaN compares false with everything: its entries would never match, nor fail "< leeway".
    class OwnStore:
        expiry_grace = math.nan

        async def is_revoked(self, token: AccessToken) -> bool:
            return False

    with pytest.raises(ConfigurationError, match="expiry_grace"):
        session_issuer.guard(revocation=OwnStore())
