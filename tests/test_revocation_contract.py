"""One contract for every built-in revocation store, on its asynchronous and synchronous side.

Each test runs against ``MemoryRevocationStore``, ``RedisRevocationStore`` with its mirror and
``RedisRevocationStore`` asking Redis on every check (a real redis-server, see
``tests/redis_server.py``), each driven through ``revoke_*``/``is_revoked`` and through the
``*_sync`` twins. Time is an injected clock, so expiry is checked without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from bearerguard import AccessToken
from bearerguard.revocation import MemoryRevocationStore, RevocationStore, SyncRevocationStore

ISS = "https://issuer.example"
OTHER = "https://other.example"
NOW = 1_800_000_000.0
STORES = ["memory", "redis-mirror", "redis-direct"]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token(
    jti: str | None = "j1",
    sub: str | None = "s1",
    iat: float | None = NOW - 1000,
    client_id: str | None = "c1",
    iss: str = ISS,
    sid: str | None = None,
) -> AccessToken:
    optional = {"jti": jti, "sub": sub, "iat": iat, "client_id": client_id, "sid": sid}
    claims: dict[str, Any] = {"iss": iss, "aud": "api", "exp": NOW + 3600}
    claims.update({name: value for name, value in optional.items() if value is not None})
    return AccessToken.from_claims(
        claims,
        scopes=frozenset(),
        expires_at=NOW + 3600,
        issued_at=iat,
        key_id=None,
        algorithm="RS256",
        fingerprint="f",
    )


class Side:
    """The store seen through one side: ``await side.revoke_token(...)`` calls either
    ``store.revoke_token`` or ``store.revoke_token_sync``."""

    def __init__(self, store: Any, sync: bool) -> None:
        self.store = store
        self.sync = sync

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.sync:
                return getattr(self.store, f"{name}_sync")(*args, **kwargs)
            return await getattr(self.store, name)(*args, **kwargs)

        return call


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_store(
    kind: str, request: pytest.FixtureRequest, redis_namespace: str
) -> AsyncIterator[Callable[..., Any]]:
    """Builds stores of ``kind`` (each in this test's own namespace) and closes them after."""
    server = None if kind == "memory" else request.getfixturevalue("redis_server")
    created: list[Any] = []

    def make(**options: Any) -> Any:
        if server is None:
            store: Any = MemoryRevocationStore(**options)
        else:
            from bearerguard.revocation import RedisRevocationStore

            store = RedisRevocationStore(
                server.url,
                namespace=redis_namespace,
                mirror=kind == "redis-mirror",
                failure_timeout=3.0,
                **options,
            )
        created.append(store)
        return store

    yield make
    for store in created:
        if hasattr(store, "aclose"):
            await store.aclose()


@pytest.fixture(params=["async", "sync"])
def side(request: pytest.FixtureRequest, make_store: Callable[..., Any]) -> Callable[..., Side]:
    """Builds a store and wraps it in one of its sides."""
    sync = request.param == "sync"
    return lambda **options: Side(make_store(**options), sync)


@pytest.mark.anyio
async def test_implements_both_protocols(make_store: Callable[..., Any]) -> None:
    store = make_store()
    assert isinstance(store, RevocationStore)
    assert isinstance(store, SyncRevocationStore)
    assert isinstance(store.name, str)


@pytest.mark.anyio
async def test_revocations_are_keyed_on_issuer_and_jti(side: Callable[..., Side]) -> None:
    store = side(clock=Clock())
    assert not await store.is_revoked(token())
    await store.revoke_token("j1", NOW + 100, issuer=OTHER)
    assert not await store.is_revoked(token())
    assert await store.is_revoked(token(iss=OTHER))
    assert not await store.is_revoked(token(jti="j2", iss=OTHER))
    await store.revoke_token("j1", NOW + 100, issuer=ISS)
    assert await store.is_revoked(token())


@pytest.mark.anyio
async def test_issuer_none_matches_every_issuer(side: Callable[..., Side]) -> None:
    store = side(clock=Clock())
    await store.revoke_token("j1", NOW + 100)
    assert await store.is_revoked(token())
    assert await store.is_revoked(token(iss=OTHER))
    await store.revoke_subject("s2")
    assert await store.is_revoked(token(jti="x", sub="s2", iss=OTHER))
    await store.revoke_client("c2")
    assert await store.is_revoked(token(jti="x", client_id="c2", iss=OTHER))


@pytest.mark.anyio
async def test_names_with_separators_are_not_confused(side: Callable[..., Side]) -> None:
    store = side(clock=Clock())
    await store.revoke_token("a:b", NOW + 100, issuer="https://x.example:443")
    await store.revoke_token("*", NOW + 100, issuer="*")
    assert await store.is_revoked(token(jti="a:b", iss="https://x.example:443"))
    assert not await store.is_revoked(token(jti="b", iss="https://x.example:443:a"))
    assert not await store.is_revoked(token(jti="a:b", iss="https://x.example"))
    assert await store.is_revoked(token(jti="*", iss="*"))
    assert not await store.is_revoked(token(jti="*", iss=ISS))  # "*" is an issuer, not "any"


@pytest.mark.anyio
async def test_names_with_lone_surrogates_are_revoked(side: Callable[..., Side]) -> None:
    # A JSON string may hold a lone surrogate ("\ud800"), which has no UTF-8 encoding: Redis
    # could not be asked about such a token (503) nor told to revoke it.
    store = side(clock=Clock())
    odd = "\ud800a:\udfff"
    assert await store.revoke_token(odd, NOW + 100, issuer=ISS + "/\udc80")
    assert await store.revoke_subject(odd, NOW - 100)
    assert await store.revoke_session(odd, NOW - 100, subject="s\ud800")
    assert await store.is_revoked(token(jti=odd, iss=ISS + "/\udc80"))
    assert not await store.is_revoked(token(jti=odd + "b", iss=ISS + "/\udc80"))
    assert await store.is_revoked(token(jti="x", sub=odd, iat=NOW - 200))
    assert await store.is_revoked(token(jti="x", sub="s2", sid=odd, iat=NOW - 200))
    assert await store.is_revoked(token(jti="x", sub="s\ud800", iat=NOW - 200))
    assert not await store.is_revoked(token(jti="x", sub="s2", sid="\ud800", iat=NOW - 200))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "issuer"),
    [(b"j1", None), (42, None), ("", None), ("j1", b"https://issuer.example"), ("j1", "")],
)
async def test_what_no_token_can_carry_is_refused_not_held(
    side: Callable[..., Side], name: Any, issuer: Any
) -> None:
    # A jti, sub or client_id is a non-empty JSON string (RFC 7519 §4.1), and a guard's
    # issuer a URL: an entry under anything else would be reported held, yet never refuse a
    # token ("" is no issuer: None means every issuer).
    store = side(clock=Clock())
    for method in ("revoke_token", "revoke_subject", "revoke_client"):
        with pytest.raises(TypeError):
            await getattr(store, method)(name, NOW + 100, issuer=issuer)
    assert not await store.is_revoked(token(jti="j1", sub="j1", client_id="j1", iat=None))
    if isinstance(store.store, MemoryRevocationStore):
        assert len(store.store) == 0


@pytest.mark.anyio
async def test_a_revoked_token_lapses_after_its_expiry_plus_grace(
    side: Callable[..., Side],
) -> None:
    clock = Clock()
    store = side(clock=clock, expiry_grace=60)
    await store.revoke_token("j1", expires_at=NOW + 100)
    assert await store.is_revoked(token())
    assert not await store.is_revoked(token(jti="j2"))
    clock.now += 159
    assert await store.is_revoked(token())
    clock.now += 2
    assert not await store.is_revoked(token())


@pytest.mark.anyio
async def test_without_expiry_an_entry_lasts_for_the_retention(side: Callable[..., Side]) -> None:
    clock = Clock()
    # Retention plus the grace: a token revoked now may live `retention` more, and is
    # accepted up to the guard's leeway (at most the grace) past its exp.
    store = side(clock=clock, retention=100, expiry_grace=10)
    await store.revoke_token("j1")
    clock.now += 109
    assert await store.is_revoked(token())
    clock.now += 2
    assert not await store.is_revoked(token())


@pytest.mark.anyio
async def test_a_revocation_is_never_shortened(side: Callable[..., Side]) -> None:
    clock = Clock()
    store = side(clock=clock, expiry_grace=0)
    await store.revoke_token("j1", expires_at=NOW + 1000)
    await store.revoke_token("j1", expires_at=NOW + 10)
    clock.now += 500
    assert await store.is_revoked(token())


@pytest.mark.anyio
async def test_instants_are_epoch_seconds_or_aware_datetimes(side: Callable[..., Side]) -> None:
    clock = Clock()
    store = side(clock=clock, expiry_grace=0)
    lapse = datetime.fromtimestamp(NOW, timezone(timedelta(hours=2))) + timedelta(seconds=100)
    await store.revoke_token("j1", expires_at=lapse)
    clock.now += 99
    assert await store.is_revoked(token())
    clock.now += 2
    assert not await store.is_revoked(token())
    naive = datetime(2030, 1, 1)  # naive on purpose
    with pytest.raises(ValueError, match="naive"):
        await store.revoke_token("j1", expires_at=naive)
    with pytest.raises(ValueError, match="naive"):
        await store.revoke_subject("s1", issued_before=naive)
    with pytest.raises(TypeError):
        await store.revoke_token("j1", expires_at="2030")
    with pytest.raises(TypeError):
        await store.revoke_client("c1", issued_before="2030")
    # A float past year 9999 is refused as an int is: the Redis side would overflow.
    with pytest.raises(ValueError, match="instant is out of range"):
        await store.revoke_token("j1", expires_at=1e16)
    assert not await store.is_revoked(token(jti="j1", sub="s1", client_id="c1"))


@pytest.mark.anyio
async def test_a_subject_cutoff_refuses_tokens_issued_at_or_before_it(
    side: Callable[..., Side],
) -> None:
    store = side(clock=Clock())
    await store.revoke_subject("s1")
    assert await store.is_revoked(token(jti="x", iat=NOW - 10))
    assert await store.is_revoked(token(jti="x", iat=NOW))
    assert not await store.is_revoked(token(jti="x", iat=NOW + 1))
    assert await store.is_revoked(token(jti=None, iat=None))  # no iat: cannot show it is newer
    assert not await store.is_revoked(token(jti="x", sub="s2"))


@pytest.mark.anyio
async def test_a_cutoff_in_the_past_never_moves_back_and_lasts_the_retention(
    side: Callable[..., Side],
) -> None:
    clock = Clock()
    store = side(clock=clock, retention=100, expiry_grace=10)
    await store.revoke_subject("s1", issued_before=NOW - 500)
    assert not await store.is_revoked(token(jti="x", iat=NOW - 400))
    assert await store.is_revoked(token(jti="x", iat=NOW - 600))
    await store.revoke_subject("s1", issued_before=NOW - 1000)
    assert await store.is_revoked(token(jti="x", iat=NOW - 600))
    clock.now += 109  # retention plus the grace
    assert await store.is_revoked(token(jti="x", iat=NOW - 600))
    clock.now += 2
    assert not await store.is_revoked(token(jti="x", iat=NOW - 10_000))


@pytest.mark.anyio
async def test_a_client_cutoff(side: Callable[..., Side]) -> None:
    store = side(clock=Clock())
    await store.revoke_client("c1", issuer=OTHER)
    assert not await store.is_revoked(token(jti="x"))
    assert await store.is_revoked(token(jti="x", iss=OTHER))
    await store.revoke_client("c1", issued_before=NOW - 500)
    assert not await store.is_revoked(token(jti="x", iat=NOW - 100))
    assert await store.is_revoked(token(jti="x", iat=NOW - 600))
    assert await store.is_revoked(token(jti="x", iat=None))
    assert not await store.is_revoked(token(jti="x", client_id="c2", iat=None))


@pytest.mark.anyio
async def test_tokens_without_identifiers_are_checked_by_what_they_have(
    side: Callable[..., Side],
) -> None:
    store = side(clock=Clock())
    bare = token(jti=None, sub=None, client_id=None)
    assert not await store.is_revoked(bare)
    await store.revoke_subject("s1")
    assert not await store.is_revoked(bare)
    assert await store.is_revoked(token(jti=None, client_id=None))


@pytest.mark.anyio
async def test_both_sides_share_one_state(make_store: Callable[..., Any]) -> None:
    store = make_store(clock=Clock())
    store.revoke_token_sync("j1", NOW + 100)
    await store.revoke_subject("s2")
    assert await store.is_revoked(token())
    assert store.is_revoked_sync(token())
    assert await store.is_revoked(token(jti="x", sub="s2"))
    assert store.is_revoked_sync(token(jti="x", sub="s2"))


@pytest.mark.anyio
async def test_a_session_cutoff_refuses_that_session_only(side: Callable[..., Side]) -> None:
    store = side(clock=Clock())
    assert await store.revoke_session("sess-1", issuer=ISS) is True
    assert await store.is_revoked(token(jti="x", sid="sess-1", iat=NOW - 10))
    assert await store.is_revoked(token(jti="x", sid="sess-1", iat=None))  # cannot show newer
    assert not await store.is_revoked(token(jti="x", sid="sess-1", iat=NOW + 1))
    assert not await store.is_revoked(token(jti="x", sid="sess-2"))  # the user's other session
    assert not await store.is_revoked(token(jti="x", sid="sess-1", iss=OTHER))
    assert not await store.is_revoked(token(jti="x"))  # no sid, no subject given: untouched


@pytest.mark.anyio
async def test_a_session_cutoff_with_its_user_cuts_off_the_user_s_tokens_without_sid(
    side: Callable[..., Side],
) -> None:
    store = side(clock=Clock())
    await store.revoke_session("sess-1", NOW - 100, issuer=ISS, subject="s1")
    assert await store.is_revoked(token(jti="x", iat=NOW - 200))  # s1, no sid
    assert not await store.is_revoked(token(jti="x", iat=NOW - 50))  # issued after
    assert await store.is_revoked(token(jti="x", sid="sess-1", iat=NOW - 200))
    assert not await store.is_revoked(token(jti="x", sid="sess-2", iat=NOW - 200))
    assert not await store.is_revoked(token(jti="x", sub="s2", iat=NOW - 200))


@pytest.mark.anyio
async def test_a_session_cutoff_lasts_the_retention(side: Callable[..., Side]) -> None:
    clock = Clock()
    store = side(clock=clock, retention=100, expiry_grace=10)
    await store.revoke_session("sess-1", subject="s1")
    await store.revoke_session("sess-1", issued_before=NOW - 1000)  # never moves back
    assert await store.is_revoked(token(jti="x", sid="sess-1", iat=NOW - 1))
    clock.now += 109
    assert await store.is_revoked(token(jti="x", sid="sess-1", iat=NOW - 1))
    assert await store.is_revoked(token(jti="x", iat=NOW - 1))
    clock.now += 2
    assert not await store.is_revoked(token(jti="x", sid="sess-1", iat=NOW - 1))
    assert not await store.is_revoked(token(jti="x", iat=NOW - 1))


@pytest.mark.anyio
async def test_what_no_sid_can_carry_is_refused(side: Callable[..., Side]) -> None:
    store = side(clock=Clock())
    for bad in ("", 42, None):
        with pytest.raises(TypeError):
            await store.revoke_session(bad)
    with pytest.raises(TypeError):
        await store.revoke_session("sess-1", subject="")
