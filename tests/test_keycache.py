"""Pure unit tests of the key-set freshness rules: an injected ``now``, no I/O."""

from __future__ import annotations

import math

import pytest

from bearerguard._core.freshness import freshness_lifetime
from bearerguard._core.keycache import KeyCache, RefreshPolicy
from bearerguard._core.keys import KeySet, VerificationKey
from bearerguard.errors import ConfigurationError

POLICY = RefreshPolicy(default_ttl=300, min_ttl=60, max_ttl=3600, cooldown=30, max_stale=600)
T0 = 1_000_000.0


def _keys(*kids: str) -> KeySet:
    return KeySet(
        VerificationKey(kid=kid, algorithms=frozenset({"ES256"}), key=object(), source=kid)
        for kid in kids
    )


def _fetched(now: float = T0, max_age: float | None = None) -> KeyCache:
    cache = KeyCache(POLICY)
    cache.record_attempt(now)
    cache.record_success(_keys("a"), now, max_age)
    return cache


# -- RefreshPolicy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_age", "ttl"),
    [
        (None, 300.0),  # unsaid: the default
        (0.0, 60.0),  # no-store / no-cache / max-age=0: clamped up to min_ttl
        (5.0, 60.0),
        (60.0, 60.0),
        (120.0, 120.0),
        (3600.0, 3600.0),
        (86_400.0, 3600.0),  # clamped down to max_ttl
    ],
)
def test_policy_ttl_is_clamped(max_age: float | None, ttl: float) -> None:
    assert POLICY.ttl(max_age) == ttl


@pytest.mark.parametrize(
    "options",
    [
        {"min_ttl": 0.0},
        {"min_ttl": -1.0},
        {"min_ttl": 700.0},  # above default_ttl
        {"default_ttl": 100_000.0},  # above max_ttl
        {"max_ttl": 30.0},  # below min_ttl
        {"cooldown": -1.0},
        {"max_stale": -1.0},
        # NaN compares false with everything: a NaN cooldown lifted the one-fetch-per-
        # cooldown limit (every request retried a failing JWKS).
        {"cooldown": math.nan},
        {"max_stale": math.nan},
        {"max_ttl": math.nan},
        # An infinite freshness is how static keys are told apart: a fetched set given one
        # was never fetched again, not even for a kid it lacks (a rotation) or to drop a
        # withdrawn key.
        {"default_ttl": math.inf, "max_ttl": math.inf},
        {"min_ttl": math.inf, "default_ttl": math.inf, "max_ttl": math.inf},
    ],
)
def test_policy_refuses_inconsistent_bounds(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RefreshPolicy(**options)


def test_policy_defaults_are_consistent() -> None:
    policy = RefreshPolicy()
    assert policy.min_ttl <= policy.default_ttl <= policy.max_ttl
    assert RefreshPolicy(cooldown=0, max_stale=0).cooldown == 0


def test_an_unbounded_max_ttl_still_refreshes_for_an_unknown_kid() -> None:
    # The server's max-age is finite (at most 2**31 s): so is the freshness it is granted.
    cache = KeyCache(RefreshPolicy(max_ttl=math.inf))
    cache.record_attempt(T0)
    cache.record_success(_keys("a"), T0, freshness_lifetime("max-age=99999999999999", received=T0))
    assert cache.fresh_until < math.inf
    assert cache.may_refresh_for_unknown_kid(T0 + 30)


# -- KeyCache: cold -----------------------------------------------------------------------


def test_cold_cache_is_unusable_and_wants_a_fetch() -> None:
    cache = KeyCache(POLICY)
    assert cache.keys is None
    assert not cache.usable(T0)
    assert cache.needs_refresh(T0)


def test_cold_failure_is_retried_once_per_cooldown() -> None:
    cache = KeyCache(POLICY)
    cache.record_attempt(T0)
    cache.record_failure()
    assert not cache.usable(T0)
    assert not cache.needs_refresh(T0)
    assert not cache.needs_refresh(T0 + POLICY.cooldown - 0.001)
    assert cache.needs_refresh(T0 + POLICY.cooldown)


# -- KeyCache: fetched sets ---------------------------------------------------------------


def test_fetched_set_is_fresh_for_its_ttl() -> None:
    cache = _fetched(max_age=120)
    assert cache.usable(T0)
    assert not cache.needs_refresh(T0 + 119.9)
    assert cache.needs_refresh(T0 + 120)


@pytest.mark.parametrize(("max_age", "ttl"), [(1.0, 60.0), (None, 300.0), (10**6, 3600.0)])
def test_fetched_set_freshness_uses_the_clamped_ttl(max_age: float | None, ttl: float) -> None:
    cache = _fetched(max_age=max_age)
    assert cache.fresh_until == T0 + ttl
    assert cache.usable_until == T0 + ttl + POLICY.max_stale


def test_stale_if_error_until_max_stale_then_unusable() -> None:
    cache = _fetched()
    fresh_until = T0 + POLICY.default_ttl
    cache.record_attempt(fresh_until)
    cache.record_failure()
    assert cache.usable(fresh_until + POLICY.max_stale - 0.001)
    assert not cache.usable(fresh_until + POLICY.max_stale)
    # The last good keys are kept (for reuse by identity), just no longer usable.
    assert cache.keys is not None


def test_failed_refresh_is_retried_once_per_cooldown() -> None:
    cache = _fetched()
    stale = T0 + POLICY.default_ttl + 1
    assert cache.needs_refresh(stale)
    cache.record_attempt(stale)
    cache.record_failure()
    assert not cache.needs_refresh(stale + 1)
    assert not cache.needs_refresh(stale + POLICY.cooldown - 0.001)
    assert cache.needs_refresh(stale + POLICY.cooldown)


def test_success_after_failure_restores_freshness() -> None:
    cache = _fetched()
    later = T0 + POLICY.default_ttl + POLICY.max_stale - 1
    cache.record_attempt(later)
    cache.record_failure()
    cache.record_success(_keys("b"), later + 1, 120)
    assert not cache.last_failed
    assert cache.usable(later + 1)
    assert not cache.needs_refresh(later + 100)
    assert cache.usable_until == later + 1 + 120 + POLICY.max_stale


def test_unknown_kid_refresh_is_limited_to_one_per_cooldown() -> None:
    cache = _fetched()
    assert not cache.may_refresh_for_unknown_kid(T0)
    assert not cache.may_refresh_for_unknown_kid(T0 + POLICY.cooldown - 0.001)
    assert cache.may_refresh_for_unknown_kid(T0 + POLICY.cooldown)
    cache.record_attempt(T0 + 50)
    assert not cache.may_refresh_for_unknown_kid(T0 + 50 + POLICY.cooldown - 0.001)
    assert cache.may_refresh_for_unknown_kid(T0 + 50 + POLICY.cooldown)


def test_unknown_kid_cooldown_counts_failed_attempts_too() -> None:
    cache = _fetched()
    cache.record_attempt(T0 + 100)
    cache.record_failure()
    assert not cache.may_refresh_for_unknown_kid(T0 + 100 + POLICY.cooldown - 0.001)
    assert cache.may_refresh_for_unknown_kid(T0 + 100 + POLICY.cooldown)


def test_an_attempt_never_seen_to_end_can_be_forgotten_with_its_cooldown() -> None:
    # After fork(): the child never sees another thread's fetch end, nor its keys.
    cache = _fetched()
    cache.record_attempt(T0 + 100)
    cache.forget_unsettled_attempt()
    assert cache.may_refresh_for_unknown_kid(T0 + 100)
    # An attempt that ended keeps its cooldown, failed or not.
    cache.record_attempt(T0 + 100)
    cache.record_failure()
    cache.forget_unsettled_attempt()
    assert not cache.may_refresh_for_unknown_kid(T0 + 100 + POLICY.cooldown - 0.001)
    cache.record_attempt(T0 + 200)
    cache.record_success(_keys("b"), T0 + 201, None)
    cache.forget_unsettled_attempt()
    assert not cache.may_refresh_for_unknown_kid(T0 + 200 + POLICY.cooldown - 0.001)


def test_an_abandoned_attempt_keeps_no_cooldown_unless_another_started_since() -> None:
    # A fetch cancelled with its event loop: it brought nothing.
    cache = _fetched()
    cache.record_attempt(T0 + 100)
    cache.abandon_attempt(T0 + 100)
    assert cache.may_refresh_for_unknown_kid(T0 + 100)
    # One that ended keeps its cooldown; a later attempt's is not the abandoned one's.
    cache.record_attempt(T0 + 200)
    cache.record_failure()
    cache.abandon_attempt(T0 + 200)
    assert not cache.may_refresh_for_unknown_kid(T0 + 200 + POLICY.cooldown - 0.001)
    cache.record_attempt(T0 + 300)
    cache.abandon_attempt(T0 + 250)
    assert not cache.may_refresh_for_unknown_kid(T0 + 300 + POLICY.cooldown - 0.001)


def test_zero_cooldown_allows_a_refresh_every_time() -> None:
    policy = RefreshPolicy(cooldown=0)
    cache = KeyCache(policy)
    cache.record_attempt(T0)
    cache.record_success(_keys("a"), T0, None)
    assert cache.may_refresh_for_unknown_kid(T0)


def test_zero_max_stale_means_no_stale_serving() -> None:
    policy = RefreshPolicy(default_ttl=300, min_ttl=60, max_ttl=3600, max_stale=0)
    cache = KeyCache(policy)
    cache.record_attempt(T0)
    cache.record_success(_keys("a"), T0, None)
    assert cache.usable(T0 + 299.9)
    assert not cache.usable(T0 + 300)


def test_current_means_usable_without_trying_a_refresh_first() -> None:
    cache = KeyCache(POLICY)
    assert not cache.current(T0)  # cold
    cache.record_attempt(T0)
    cache.record_success(_keys("a"), T0, None)
    fresh_until = T0 + POLICY.default_ttl
    assert cache.current(fresh_until - 0.001)
    assert not cache.current(fresh_until)  # stale and a fetch may start: try it first
    cache.record_attempt(fresh_until)
    cache.record_failure()
    # Stale, the fetch just failed, the next try waits for the cooldown: use what we have.
    assert cache.current(fresh_until + POLICY.cooldown - 0.001)
    assert not cache.current(fresh_until + POLICY.cooldown)
    # Past max_stale nothing is current, cooldown or not.
    cache.record_attempt(fresh_until + POLICY.max_stale - 1)
    cache.record_failure()
    assert not cache.current(fresh_until + POLICY.max_stale)


def test_static_keys_are_always_current() -> None:
    assert KeyCache(POLICY, _keys("static")).current(T0 + 10**9)


# -- KeyCache: static keys ----------------------------------------------------------------


def test_static_keys_never_expire_nor_refresh() -> None:
    cache = KeyCache(POLICY, _keys("static"))
    far = T0 + 10**9
    assert cache.usable(far)
    assert not cache.needs_refresh(far)
    assert not cache.may_refresh_for_unknown_kid(far)
    assert math.isinf(cache.fresh_until)
    assert math.isinf(cache.usable_until)


def test_empty_static_set_is_usable_and_never_fetched() -> None:
    # An HS*-only guard has an empty asymmetric set: usable, never refreshed.
    cache = KeyCache(POLICY, KeySet([]))
    assert cache.usable(T0)
    assert not cache.needs_refresh(T0)
    assert not cache.may_refresh_for_unknown_kid(T0 + 10**6)


# -- KeySet.candidates (kid selection rules the guard relies on) --------------------------


def test_candidates_by_kid_and_single_key_fallback() -> None:
    one = _keys("a")
    assert [k.kid for k in one.candidates("a")] == ["a"]
    assert [k.kid for k in one.candidates(None)] == ["a"]  # no kid, one key: that key
    assert one.candidates("other") == []  # a named kid must match a kid-bearing key
    two = _keys("a", "b")
    assert two.candidates(None) == []  # no kid, several keys: ambiguous, refused
    assert [k.kid for k in two.candidates("b")] == ["b"]


def test_keyset_reuses_unchanged_keys_by_identity() -> None:
    first = _keys("a", "b")
    second = KeySet(
        [VerificationKey(kid="a", algorithms=frozenset({"ES256"}), key=object(), source="a")],
        previous=first,
    )
    [old_a] = first.candidates("a")
    assert old_a in second  # same published JWK: same object, cached verifications survive
    [old_b] = first.candidates("b")
    assert old_b not in second  # retired: its cached verifications are dropped


def test_a_clock_stepped_back_holds_no_cooldown() -> None:
    # An attempt after "now" (the wall clock stepped back since, NTP or a VM restored)
    # started no one knows how long ago: it holds no cooldown, or a rotated key's tokens
    # were refused, and a failed fetch never retried, for as long as the step.
    cache = _fetched()
    assert not cache.may_refresh_for_unknown_kid(T0 + POLICY.cooldown - 0.001)
    assert cache.may_refresh_for_unknown_kid(T0 - 3600)
    cold = KeyCache(POLICY)
    cold.record_attempt(T0)
    cold.record_failure()
    assert not cold.needs_refresh(T0 + POLICY.cooldown - 0.001)
    assert cold.needs_refresh(T0 - 3600)
    # The attempt made after the step holds its cooldown, counted from the new time.
    cache.record_attempt(T0 - 3600)
    assert not cache.may_refresh_for_unknown_kid(T0 - 3600 + POLICY.cooldown - 0.001)


def test_a_set_fetched_after_now_is_not_fresh() -> None:
    # A set fetched after "now" (the wall clock stepped back since) is of unknown age, as an
    # attempt is: taken as fresh, it stayed so for its TTL plus the step, and a key its
    # issuer withdrew stayed trusted that much longer. It is fetched again, and used
    # meanwhile (and should fetches fail) as a stale set is.
    cache = _fetched()
    assert cache.current(T0 + 299)
    assert not cache.needs_refresh(T0 + 299)
    for stepped_back in (T0 - 0.001, T0 - 3600):
        assert not cache.current(stepped_back)
        assert cache.needs_refresh(stepped_back)
        assert cache.usable(stepped_back)
    cache.record_attempt(T0 - 3600)
    cache.record_success(_keys("b"), T0 - 3600, None)  # fetched after the step: fresh again
    assert cache.current(T0 - 3600 + 299)
    assert not cache.needs_refresh(T0 - 3600)
    # Static keys have no age: the step changes nothing.
    static = KeyCache(POLICY, _keys("a"))
    assert static.current(T0 - 3600)
    assert not static.needs_refresh(T0 - 3600)


# -- KeyCache: why no set is usable (the auth.unavailable detail) ---------------------------


def test_unavailable_names_the_last_failure_and_a_set_too_stale() -> None:
    cache = KeyCache(POLICY)
    assert cache.unavailable(T0) == "no usable key set: no fetch has succeeded yet"
    cache.record_attempt(T0)
    cache.record_failure("HTTP 503")
    assert cache.unavailable(T0) == "no usable key set: last fetch failed (HTTP 503)"
    cache = _fetched()
    late = cache.usable_until
    cache.record_attempt(late)
    cache.record_failure("timed out" + "!" * 500)  # the edge's cause, bounded
    assert cache.unavailable(late) == (
        "no usable key set: the last good set is past max_stale; last fetch failed "
        f"(timed out{'!' * 111})"
    )
    cache.record_attempt(late + 1)
    cache.record_success(_keys("k2"), late + 1, None)
    assert not cache.last_failed
