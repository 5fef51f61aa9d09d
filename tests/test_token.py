"""AccessToken: built by from_claims, frozen, compared and shown as a dataclass."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pickle
from datetime import datetime, timezone
from typing import Any

import pytest

from bearerguard import AccessToken
from bearerguard.token import token_fingerprint

CLAIMS: dict[str, Any] = {
    "iss": "https://issuer.example",
    "aud": ["api", "other"],
    "sub": "user-1",
    "azp": "spa",
    "jti": "j1",
    "exp": 1_800_000_060,
    "iat": 1_800_000_000,
    "scope": "a b",
}


def built(
    cls: type[AccessToken] = AccessToken,
    *,
    expires_at: float = 1_800_000_060.0,
    issued_at: float | None = 1_800_000_000.0,
    **changes: Any,
) -> AccessToken:
    return cls.from_claims(
        {**CLAIMS, **changes},
        scopes=frozenset({"a", "b"}),
        expires_at=expires_at,
        issued_at=issued_at,
        key_id="k1",
        algorithm="RS256",
        fingerprint="0123456789abcdef",
        raw="h.p.s",
    )


def test_from_claims_fills_every_field_as_the_constructor_would() -> None:
    token = built()
    assert type(token) is AccessToken
    expected = AccessToken(
        subject="user-1",
        scopes=frozenset({"a", "b"}),
        claims={**CLAIMS},
        token_id="j1",
        client_id="spa",
        issuer="https://issuer.example",
        audience=("api", "other"),
        expires_at=datetime.fromtimestamp(1_800_000_060, timezone.utc),
        issued_at=datetime.fromtimestamp(1_800_000_000, timezone.utc),
        key_id="k1",
        algorithm="RS256",
        fingerprint="0123456789abcdef",
        raw="h.p.s",
    )
    assert token == expected
    assert {f.name: getattr(token, f.name) for f in dataclasses.fields(token)} == {
        f.name: getattr(expected, f.name) for f in dataclasses.fields(expected)
    }
    assert repr(token) == repr(expected)
    assert "h.p.s" not in repr(token)


def test_from_claims_tokens_are_frozen_and_read_only() -> None:
    token = built()
    with pytest.raises(dataclasses.FrozenInstanceError):
        token.subject = "someone-else"  # type: ignore[misc]
    with pytest.raises(TypeError):
        token.claims["sub"] = "someone-else"  # type: ignore[index]
    assert dataclasses.replace(token, raw="").raw == ""


def test_times_are_aware_datetimes_made_once_on_first_read() -> None:
    token = built()
    expires = token.expires_at
    assert expires == datetime.fromtimestamp(1_800_000_060, timezone.utc)
    assert expires.tzinfo is timezone.utc
    assert token.expires_at is expires  # kept after the first read
    fractional = built(expires_at=1_800_000_060.25, issued_at=None)
    assert fractional.expires_at == datetime.fromtimestamp(1_800_000_060.25, timezone.utc)
    assert fractional.issued_at is None


def fingerprinted_on_read(cls: type[AccessToken] = AccessToken) -> AccessToken:
    return cls.from_claims(
        {**CLAIMS},
        scopes=frozenset(),
        expires_at=1_800_000_060.0,
        issued_at=None,
        key_id=None,
        algorithm="RS256",
        fingerprint=None,
        raw="h.p.s",
    )


def test_a_fingerprint_left_to_first_read_is_the_raw_tokens() -> None:
    token = fingerprinted_on_read()
    expected = hashlib.sha256(b"h.p.s").digest()[:8].hex()
    assert token_fingerprint("h.p.s") == token_fingerprint(b"h.p.s") == expected
    assert token == dataclasses.replace(
        built(), fingerprint=expected, key_id=None, scopes=frozenset(), issued_at=None
    )
    assert token.fingerprint == expected
    assert hash(token) == hash(copy.copy(token))
    assert dataclasses.replace(token, raw="x").fingerprint == expected  # kept, not rehashed
    assert expected in repr(token)


def test_subclasses_get_the_fingerprint_of_raw_at_once() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Tagged(AccessToken):
        tag: str = "x"

    token = fingerprinted_on_read(Tagged)
    assert token.fingerprint == token_fingerprint("h.p.s")


def test_datetimes_given_to_the_constructor_are_kept_as_they_are() -> None:
    class LocalDatetime(datetime):  # as freezegun and pendulum hand out
        pass

    expires = LocalDatetime(2027, 1, 1, tzinfo=timezone.utc)
    token = dataclasses.replace(built(), expires_at=expires, issued_at=None)
    assert token.expires_at is expires
    assert token.issued_at is None


def test_tokens_copy_with_their_times() -> None:
    token = built()
    copied = copy.copy(token)
    assert copied == token
    assert type(copied.issued_at) is datetime
    assert dataclasses.replace(token, raw="").expires_at == token.expires_at


@pytest.mark.parametrize(
    ("changes", "client_id"),
    [
        ({"client_id": "c"}, "c"),
        ({"client_id": ""}, "spa"),  # empty: the next claim in line
        ({"client_id": 7}, "spa"),
        ({"azp": None, "cid": "okta"}, "okta"),
        ({"azp": None}, None),
    ],
)
def test_client_id_comes_from_the_first_usable_claim(
    changes: dict[str, Any], client_id: str | None
) -> None:
    assert built(**changes).client_id == client_id


def test_subclasses_are_built_through_their_own_init() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Tagged(AccessToken):
        tag: str = "x"

        def __post_init__(self) -> None:
            object.__setattr__(self, "tag", self.subject or "")

    token = built(Tagged)
    assert type(token) is Tagged
    assert token.tag == "user-1"


def test_tokens_are_hashable_and_equal_by_value() -> None:
    token = built()
    assert hash(token) == hash(built())
    assert token == built()
    assert len({token, built(), built(sub="other")}) == 2
    assert "h.p.s" not in repr(token)


def test_claims_serialize_pickle_and_copy_as_the_dict_they_are() -> None:
    # A mappingproxy before: json.dumps(token.claims) and Flask's jsonify raised TypeError,
    # and so did pickling the token, copy.deepcopy and dataclasses.asdict (FastAPI's
    # jsonable_encoder returning it): a 500 from a "who am I" route.
    token = built()
    assert json.loads(json.dumps(token.claims)) == CLAIMS
    assert isinstance(token.claims, dict)
    for twin in (pickle.loads(pickle.dumps(token)), copy.deepcopy(token)):  # noqa: S301 - ours
        assert twin == token
        assert twin.claims == CLAIMS
        with pytest.raises(TypeError):
            twin.claims["sub"] = "someone-else"  # type: ignore[index]
    assert dataclasses.asdict(token)["claims"] == CLAIMS
    assert copy.copy(token.claims) == CLAIMS
    assert dict(token.claims) | {"sub": "x"} == {**CLAIMS, "sub": "x"}  # a copy may change


@pytest.mark.parametrize(
    "change",
    [
        lambda claims: claims.__setitem__("sub", "x"),
        lambda claims: claims.__delitem__("sub"),
        lambda claims: claims.update(sub="x"),
        lambda claims: claims.setdefault("new", 1),
        lambda claims: claims.pop("sub"),
        lambda claims: claims.popitem(),
        lambda claims: claims.clear(),
        lambda claims: claims.__ior__({"sub": "x"}),
    ],
)
def test_claims_refuse_every_change(change: Any) -> None:
    token = built()
    with pytest.raises(TypeError):
        change(token.claims)
    assert token.claims == CLAIMS
