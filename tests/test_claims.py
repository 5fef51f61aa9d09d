"""Claim validation against an injected now (RFC 7519 §4.1, RFC 9068 §4)."""

from __future__ import annotations

from typing import Any

import pytest

from bearerguard._core.claims import ClaimsPolicy, validate_claims
from bearerguard.errors import (
    ExpiredTokenError,
    InvalidAudienceError,
    InvalidClaimError,
    InvalidIssuerError,
    InvalidTokenError,
    InvalidTypeError,
    MalformedTokenError,
    NotYetValidError,
    TokenTooOldError,
)

NOW = 1_800_000_000.0
ISS = "https://issuer.example"
POLICY = ClaimsPolicy(issuer=ISS, audiences=frozenset({"api"}), leeway=30)
HEADER = {"alg": "RS256", "typ": "at+jwt"}


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": "api", "exp": NOW + 60, "iat": NOW - 10}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def test_valid_claims() -> None:
    times = validate_claims(HEADER, claims(), POLICY, NOW)
    assert times.expires_at == NOW + 60
    assert times.issued_at == NOW - 10
    assert times.valid_until == NOW + 90


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"exp": None}, InvalidClaimError),
        ({"exp": NOW - 30}, ExpiredTokenError),
        ({"exp": "1900000000"}, MalformedTokenError),
        ({"exp": True}, MalformedTokenError),
        ({"exp": [NOW + 60]}, MalformedTokenError),
        ({"exp": -1}, MalformedTokenError),
        ({"exp": 1e20}, MalformedTokenError),
        ({"nbf": NOW + 31}, NotYetValidError),
        ({"iat": NOW + 31}, NotYetValidError),
        ({"iat": "yesterday"}, MalformedTokenError),
        ({"iss": None}, InvalidIssuerError),
        ({"iss": ISS + "/"}, InvalidIssuerError),
        ({"iss": ISS.upper()}, InvalidIssuerError),
        ({"iss": [ISS]}, InvalidIssuerError),
        ({"aud": None}, InvalidAudienceError),
        ({"aud": []}, InvalidAudienceError),
        ({"aud": "other"}, InvalidAudienceError),
        ({"aud": ["other", 5]}, InvalidAudienceError),
        ({"aud": 5}, InvalidAudienceError),
        ({"sub": 5}, MalformedTokenError),
        ({"jti": ["x"]}, MalformedTokenError),
        ({"client_id": {}}, MalformedTokenError),
        ({"exp": 10**400}, MalformedTokenError),  # an int too large for a float
        ({"exp": float("nan")}, MalformedTokenError),
        ({"exp": float("inf")}, MalformedTokenError),
        ({"nbf": True}, MalformedTokenError),
        ({"nbf": -5}, MalformedTokenError),
        ({"iat": 10**400}, MalformedTokenError),
        ({"iat": float("nan")}, MalformedTokenError),
    ],
    ids=lambda value: str(value) if not isinstance(value, dict) else ",".join(value),
)
def test_refusals(overrides: dict[str, Any], error: type[InvalidTokenError]) -> None:
    with pytest.raises(error):
        validate_claims(HEADER, claims(**overrides), POLICY, NOW)


def test_leeway_applies_to_exp_nbf_and_iat() -> None:
    validate_claims(HEADER, claims(exp=NOW - 29, iat=NOW - 60), POLICY, NOW)
    validate_claims(HEADER, claims(nbf=NOW + 29, iat=NOW + 29), POLICY, NOW)
    with pytest.raises(ExpiredTokenError):
        validate_claims(HEADER, claims(exp=NOW - 30.5), POLICY, NOW)


def test_fractional_numeric_dates_are_accepted() -> None:
    validate_claims(HEADER, claims(exp=NOW + 0.5, iat=NOW - 0.25), POLICY, NOW)


def test_audience_array_needs_one_match() -> None:
    validate_claims(HEADER, claims(aud=["other", "api"]), POLICY, NOW)


def test_an_audience_or_issuer_refusal_shows_both_sides_in_its_detail() -> None:
    # The audit event's detail is what an operator reads: a Keycloak token without an
    # audience mapper (aud 'account'), or an issuer configured without its trailing slash.
    with pytest.raises(InvalidAudienceError) as refused:
        validate_claims(HEADER, claims(aud="account"), POLICY, NOW)
    assert refused.value.detail == (
        "aud 'account' does not name this resource server (accepted: 'api')"
    )
    many = [f"client-{n}" for n in range(5)]
    with pytest.raises(
        InvalidAudienceError, match=r"aud 'client-0', 'client-1', 'client-2', \.\.\. "
    ):
        validate_claims(HEADER, claims(aud=many), POLICY, NOW)
    with pytest.raises(InvalidAudienceError) as refused:
        validate_claims(HEADER, claims(aud="x" * 5000), POLICY, NOW)
    assert len(refused.value.detail) < 200  # cut short: the value comes from the token
    with pytest.raises(InvalidIssuerError) as wrong:
        validate_claims(HEADER, claims(iss=ISS + "/"), POLICY, NOW)
    assert wrong.value.detail == f"iss {ISS + '/'!r} is not trusted (trusted: {ISS!r})"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
def test_typ_enforcement_accepts_access_token_types(typ: str) -> None:
    policy = ClaimsPolicy(issuer=ISS, audiences=frozenset({"api"}), require_typ=True)
    validate_claims({"typ": typ}, claims(), policy, NOW)


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt; x", 5])
def test_typ_enforcement_refuses_other_types(typ: object) -> None:
    policy = ClaimsPolicy(issuer=ISS, audiences=frozenset({"api"}), require_typ=True)
    with pytest.raises(InvalidTypeError):
        validate_claims({"typ": typ}, claims(), policy, NOW)


def test_max_age() -> None:
    policy = ClaimsPolicy(issuer=ISS, audiences=frozenset({"api"}), max_age=60, leeway=0)
    times = validate_claims(HEADER, claims(iat=NOW - 50), policy, NOW)
    assert times.valid_until == NOW + 10
    with pytest.raises(TokenTooOldError):
        validate_claims(HEADER, claims(iat=NOW - 61), policy, NOW)
    with pytest.raises(InvalidClaimError):
        validate_claims(HEADER, claims(iat=None), policy, NOW)


def test_required_claims_and_custom_checks() -> None:
    def tenant_is_acme(values: Any) -> bool:
        return bool(values["tenant"] == "acme")

    policy = ClaimsPolicy(
        issuer=ISS,
        audiences=frozenset({"api"}),
        required_claims=frozenset({"tenant"}),
        checks=(tenant_is_acme,),
    )
    validate_claims(HEADER, claims(tenant="acme"), policy, NOW)
    with pytest.raises(InvalidClaimError, match="required claims missing"):
        validate_claims(HEADER, claims(), policy, NOW)
    with pytest.raises(InvalidClaimError, match="refused"):
        validate_claims(HEADER, claims(tenant="other"), policy, NOW)


def test_a_custom_check_that_crashes_refuses_instead_of_raising() -> None:
    def crashes(values: Any) -> bool:
        return bool(values["missing"])

    policy = ClaimsPolicy(issuer=ISS, audiences=frozenset({"api"}), checks=(crashes,))
    with pytest.raises(InvalidClaimError, match="raised KeyError"):
        validate_claims(HEADER, claims(), policy, NOW)


def test_a_custom_check_may_raise_its_own_token_error() -> None:
    def expired_session(values: Any) -> bool:
        raise ExpiredTokenError("session over")

    policy = ClaimsPolicy(issuer=ISS, audiences=frozenset({"api"}), checks=(expired_session,))
    with pytest.raises(ExpiredTokenError):
        validate_claims(HEADER, claims(), policy, NOW)


@pytest.mark.parametrize("name", ["jti", "sub", "client_id", "azp"])
def test_an_empty_identifier_is_refused(name: str) -> None:
    # It names nobody: it would satisfy require_jti or the RFC 9068 profile while no store
    # could revoke it.
    with pytest.raises(MalformedTokenError, match="non-empty string"):
        validate_claims(HEADER, claims(**{name: ""}), POLICY, NOW)


def test_an_awaitable_from_a_claim_check_refuses_the_token() -> None:
    async def tenant_is_acme(claims: Any) -> bool:  # pragma: no cover - never awaited
        return claims.get("tenant") == "acme"

    def returns_a_coroutine(claims: Any) -> Any:  # how a wrapped async check looks
        return tenant_is_acme(claims)

    policy = ClaimsPolicy(issuer=ISS, audiences=frozenset({"api"}), checks=(returns_a_coroutine,))
    with pytest.raises(InvalidClaimError, match="returned an awaitable"):
        validate_claims(HEADER, claims(tenant="acme"), policy, NOW)


@pytest.mark.parametrize("name", ["nbf", "iat", "sub", "jti", "client_id", "azp", "cnf"])
def test_null_claims_are_not_absent(name: str) -> None:
    # RFC 7519 §4.1: a registered claim, when present, has a value of its type; JSON null
    # is neither that nor absence (nbf: null must not read as "no not-before").
    values = claims()
    values[name] = None
    with pytest.raises(MalformedTokenError):
        validate_claims(HEADER, values, POLICY, NOW)


@pytest.mark.parametrize("cnf", [None, "jkt", ["jkt"], 5, True, {}], ids=repr)
@pytest.mark.parametrize("confirmations", [frozenset(), frozenset({"jkt", "x5t#S256"}), None])
def test_a_confirmation_that_is_not_a_json_object_is_refused(
    cnf: object, confirmations: frozenset[str] | None
) -> None:
    # RFC 7800 §3.1: cnf is a JSON object. Present as anything else (null included), it is
    # refused, never read as "no cnf": the token would pass as a plain bearer token, even
    # where DPoP or mTLS are checked or a gateway checks bindings (confirmations None).
    policy = ClaimsPolicy(issuer=ISS, audiences=frozenset({"api"}), confirmations=confirmations)
    values = claims()
    values["cnf"] = cnf
    if cnf == {}:  # an object binding nothing is no binding to check
        validate_claims(HEADER, values, policy, NOW)
        return
    with pytest.raises(MalformedTokenError, match="'cnf' is not a JSON object"):
        validate_claims(HEADER, values, policy, NOW)


@pytest.mark.parametrize(
    "overrides",
    [
        {"nbf": NOW + 10, "exp": NOW + 5},
        {"nbf": NOW - 5, "exp": NOW - 10},
        {"nbf": NOW, "exp": NOW},
        {"iat": NOW + 10, "exp": NOW + 5},
        {"iat": NOW + 5, "exp": NOW + 5},
    ],
    ids=["nbf-after-exp", "nbf-after-exp-past", "nbf-at-exp", "iat-after-exp", "iat-at-exp"],
)
def test_a_token_never_valid_is_refused_whatever_the_leeway(overrides: dict[str, float]) -> None:
    # Each time falls within the leeway of now, so each check alone passes: the token is
    # still acceptable at no instant (RFC 7519 §4.1.4, §4.1.5), and must not be for 2x leeway.
    with pytest.raises(InvalidClaimError, match="never valid"):
        validate_claims(HEADER, claims(**overrides), POLICY, NOW)


@pytest.mark.parametrize(
    "typ",
    [
        "secevent+jwt",
        "application/secevent+jwt",
        "SecEvent+JWT",
        "logout+jwt",
        "application/logout+jwt",
        # RFC 9701 §5: an introspection response, whose aud is this resource server.
        "token-introspection+jwt",
        "application/token-introspection+jwt",
        # A media type with parameters or white space is the same type (RFC 9110 §8.3.1).
        "secevent+jwt; charset=utf-8",
        "application/logout+jwt ;x=1",
        " secevent+jwt",
    ],
)
def test_a_security_event_token_is_never_an_access_token(typ: str) -> None:
    # RFC 8417 §2.3, RFC 8725 §3.11: explicit typing keeps a SET from the trusted issuer
    # from passing as an access token, even where at+jwt is not required.
    with pytest.raises(InvalidTypeError):
        validate_claims({"typ": typ}, claims(), POLICY, NOW)
    validate_claims({"typ": "JWT"}, claims(), POLICY, NOW)
