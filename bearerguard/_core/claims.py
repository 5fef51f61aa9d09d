"""Claim checks against an injected ``now`` (RFC 7519 §4.1, RFC 9068 §4, RFC 8725 §3.8-3.11)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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

__all__ = [
    "ClaimCheck",
    "ClaimsPolicy",
    "TimeClaims",
    "check_times",
    "run_checks",
    "validate_claims",
]

ClaimCheck = Callable[[Mapping[str, Any]], object]
"""A custom check: return a falsy value or raise to refuse the token."""

# NumericDate (RFC 7519 §2) values outside [0, year 9999] are refused as nonsense.
_MAX_NUMERIC_DATE = 253_402_300_799.0
# RFC 9068 §2.1: "at+jwt", with or without the "application/" prefix (RFC 7515 §4.1.9),
# compared case-insensitively as media types are.
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_STRING_CLAIMS = ("sub", "jti", "client_id", "azp")


@dataclass(frozen=True, slots=True)
class ClaimsPolicy:
    """What the claims of an acceptable token look like."""

    issuer: str
    audiences: frozenset[str]
    leeway: float = 0.0
    max_age: float | None = None
    require_typ: bool = False
    required_claims: frozenset[str] = frozenset()
    checks: tuple[ClaimCheck, ...] = ()


@dataclass(frozen=True, slots=True)
class TimeClaims:
    """The validated time claims, as floats."""

    expires_at: float
    issued_at: float | None
    valid_until: float
    """The instant the token stops being acceptable: ``exp`` (or the maximum age) plus leeway."""


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int subclass; strings, NaN and infinities are refused too (RFC 7519 §2).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedTokenError(f"claim {name!r} is not a NumericDate")
    number = float(value)
    if not (math.isfinite(number) and 0 <= number <= _MAX_NUMERIC_DATE):
        raise MalformedTokenError(f"claim {name!r} is out of range")
    return number


def _check_types(
    header: Mapping[str, Any], claims: Mapping[str, Any], policy: ClaimsPolicy
) -> None:
    for name in _STRING_CLAIMS:
        value = claims.get(name)
        if value is not None and not isinstance(value, str):
            raise MalformedTokenError(f"claim {name!r} is not a string")
    if policy.require_typ:
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise InvalidTypeError(f"typ is {typ!r}, not at+jwt")


def _check_issuer_and_audience(claims: Mapping[str, Any], policy: ClaimsPolicy) -> None:
    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise InvalidIssuerError("iss is missing or not a string")
    if iss != policy.issuer:  # RFC 9068 §4: exact match with the trusted issuer.
        raise InvalidIssuerError(f"iss {iss[:200]!r} is not trusted")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not audiences:
        raise InvalidAudienceError("aud is missing or not a string or non-empty array")
    if not all(isinstance(item, str) for item in audiences):
        raise InvalidAudienceError("aud holds a non-string")
    if policy.audiences.isdisjoint(audiences):
        raise InvalidAudienceError("aud does not name this resource server")


def check_times(claims: Mapping[str, Any], policy: ClaimsPolicy, now: float) -> TimeClaims:
    """Check exp (required), nbf and iat at ``now`` with leeway, and the maximum age."""
    exp = _numeric_date(claims, "exp")
    if exp is None:
        raise InvalidClaimError("exp is required")
    nbf = _numeric_date(claims, "nbf")
    iat = _numeric_date(claims, "iat")
    leeway = policy.leeway
    if now >= exp + leeway:  # RFC 7519 §4.1.4: now must be before exp.
        raise ExpiredTokenError(f"expired {now - exp:.0f}s ago")
    if nbf is not None and now + leeway < nbf:  # RFC 7519 §4.1.5
        raise NotYetValidError(f"nbf is {nbf - now:.0f}s in the future")
    if iat is not None and now + leeway < iat:
        raise NotYetValidError(f"iat is {iat - now:.0f}s in the future")
    valid_until = exp + leeway
    if policy.max_age is not None:
        if iat is None:
            raise InvalidClaimError("iat is required to enforce a maximum token age")
        oldest = iat + policy.max_age + leeway
        if now >= oldest:
            raise TokenTooOldError(f"issued {now - iat:.0f}s ago")
        valid_until = min(valid_until, oldest)
    return TimeClaims(expires_at=exp, issued_at=iat, valid_until=valid_until)


def run_checks(claims: Mapping[str, Any], policy: ClaimsPolicy) -> None:
    """Check the required claims and run the custom claim checks."""
    missing = [name for name in policy.required_claims if claims.get(name) is None]
    if missing:
        raise InvalidClaimError(f"required claims missing: {', '.join(sorted(missing))}")
    for check in policy.checks:
        try:
            accepted = bool(check(claims))
        except InvalidTokenError:
            raise
        except Exception as exc:  # a user's check failing on odd claims must not become a 500
            raise InvalidClaimError(
                f"claim check {_name(check)} raised {type(exc).__name__}"
            ) from exc
        if not accepted:
            raise InvalidClaimError(f"claim check {_name(check)} refused the token")


def _name(check: ClaimCheck) -> str:
    return getattr(check, "__qualname__", None) or type(check).__name__


def validate_claims(
    header: Mapping[str, Any], claims: Mapping[str, Any], policy: ClaimsPolicy, now: float
) -> TimeClaims:
    """Validate a verified token's header and claims at ``now``.

    Raises:
        InvalidTokenError: a subclass naming the first check that failed.
    """
    _check_types(header, claims, policy)
    _check_issuer_and_audience(claims, policy)
    times = check_times(claims, policy, now)
    run_checks(claims, policy)
    return times
