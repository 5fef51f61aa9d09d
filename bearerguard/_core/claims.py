"""Claim checks against an injected ``now`` (RFC 7519 §4.1, RFC 9068 §4, RFC 8725 §3.8-3.11)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

from bearerguard._core.times import MAX_NUMERIC_DATE
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
    "check_confirmation",
    "check_identifiers",
    "check_still_valid",
    "check_times",
    "refuse_audience",
    "refuse_issuer",
    "run_checks",
    "validate_claims",
]

ClaimCheck = Callable[[Mapping[str, Any]], object]
"""A custom check: return a falsy value or raise to refuse the token."""

# NumericDate (RFC 7519 §2) values outside [0, year 9999] are refused as nonsense.
# RFC 9068 §2.1: "at+jwt", with or without the "application/" prefix (RFC 7515 §4.1.9),
# compared case-insensitively as media types are.
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# Types that say the JWT is something else, refused even without require_typ (RFC 8725
# §3.11): a Security Event Token (RFC 8417 §2.3; the SET receiver refuses access tokens in
# turn), an OpenID Connect back-channel logout token (Back-Channel Logout 1.0 §2.4) or a
# JWT introspection response (RFC 9701 §5, which names this resource server in aud), all
# signed by the trusted issuer, must never pass as an access token.
_OTHER_TYPES = frozenset(
    {
        "secevent+jwt",
        "application/secevent+jwt",
        "logout+jwt",
        "application/logout+jwt",
        "token-introspection+jwt",
        "application/token-introspection+jwt",
    }
)
_STRING_CLAIMS = ("sub", "jti", "client_id", "azp")
_NUMBERS = frozenset({int, float})  # exactly: bool is an int subclass
# What claims.get returns for an absent claim: a claim present as JSON null is not absent
# (RFC 7519 §4.1.2-4.1.7: each registered claim has a value of its type when present).
_ABSENT: Any = object()


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
    confirmations: frozenset[str] | None = frozenset()
    """The ``cnf`` members whose binding is checked on each request: ``jkt`` with DPoP,
    ``x5t#S256`` with mTLS; a token bound any other way is refused. ``None``: a gateway
    checks them, any is accepted."""


class TimeClaims(NamedTuple):
    """The validated time claims, as floats."""

    expires_at: float
    issued_at: float | None
    valid_until: float
    """The instant the token stops being acceptable: ``exp`` (or the maximum age) plus leeway."""
    valid_from: float
    """The first instant it is acceptable: the later of ``nbf`` and ``iat`` less leeway
    (``-inf`` with neither), so that a clock stepped back finds a reused token not yet
    valid, as it would find a fresh one."""


# TimeClaims(...) without the generated Python-level __new__: this runs once per token.
_new_times = tuple.__new__


def _numeric_date(value: Any, name: str) -> float:
    """``value`` (not ``None``) as a NumericDate (RFC 7519 §2), or a refusal."""
    # bool is an int subclass; strings are refused too. NaN fails every comparison and the
    # infinities and huge integers are out of range, all before float() is applied.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedTokenError(f"claim {name!r} is not a NumericDate")
    if not 0 <= value <= MAX_NUMERIC_DATE:
        raise MalformedTokenError(f"claim {name!r} is out of range")
    return float(value)


def _check_typ(header: Mapping[str, Any]) -> None:
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
        raise InvalidTypeError(f"typ is {typ!r}, not at+jwt")


def refuse_issuer(iss: Any, policy: ClaimsPolicy, *, claim: str = "iss") -> NoReturn:
    """Refuse ``iss``, its value and the trusted one in the detail (operators read it).

    ``claim`` names where the value came from (``introspected iss`` for an answer).
    """
    if not isinstance(iss, str):
        raise InvalidIssuerError(f"{claim} is missing or not a string")
    # Both sides, so that the log shows a trailing slash or scheme that differs.
    raise InvalidIssuerError(f"{claim} {iss[:200]!r} is not trusted (trusted: {policy.issuer!r})")


def _listed(values: Iterable[str]) -> str:
    """At most three values, each cut short, for a detail line (they come from the token)."""
    items = list(values)
    if not items:
        return "[]"
    shown = ", ".join(repr(item[:100]) for item in items[:3])
    return shown + (", ..." if len(items) > 3 else "")


def refuse_audience(aud: Iterable[str], policy: ClaimsPolicy, *, claim: str = "aud") -> NoReturn:
    """Refuse ``aud``, its values and the accepted ones in the detail, each cut short.

    ``claim`` names where the values came from (``introspected aud`` for an answer).
    """
    # The token's values and this API's, as refuse_issuer: a Keycloak token without an
    # audience mapper says aud 'account', and the log should show it.
    raise InvalidAudienceError(
        f"{claim} {_listed(aud)} does not name this resource server "
        f"(accepted: {_listed(sorted(policy.audiences))})"
    )


def _check_audience_list(aud: Any, policy: ClaimsPolicy) -> None:
    if not isinstance(aud, list) or not aud:
        raise InvalidAudienceError("aud is missing or not a string or non-empty array")
    for item in aud:
        if not isinstance(item, str):
            raise InvalidAudienceError("aud holds a non-string")
    if policy.audiences.isdisjoint(aud):
        refuse_audience(aud, policy)


def check_times(claims: Mapping[str, Any], policy: ClaimsPolicy, now: float) -> TimeClaims:
    """Check exp (required), nbf and iat at ``now`` with leeway, and the maximum age."""
    # A plain int or float in range is a NumericDate: checked inline, the rest by
    # _numeric_date (once per token, so the common case costs no call).
    exp: Any = claims.get("exp")
    if type(exp) in _NUMBERS and 0 <= exp <= MAX_NUMERIC_DATE:
        exp = float(exp)
    elif exp is None:
        raise InvalidClaimError("exp is required")
    else:
        exp = _numeric_date(exp, "exp")
    # RFC 7519 §4.1.5, §4.1.6: when present, nbf and iat are NumericDates; null is neither
    # absent nor a date, so it is refused rather than read as "no constraint".
    nbf: Any = claims.get("nbf", _ABSENT)
    if nbf is _ABSENT:
        nbf = None
    elif not (type(nbf) in _NUMBERS and 0 <= nbf <= MAX_NUMERIC_DATE):
        nbf = _numeric_date(nbf, "nbf")
    iat: Any = claims.get("iat", _ABSENT)
    if type(iat) in _NUMBERS and 0 <= iat <= MAX_NUMERIC_DATE:
        iat = float(iat)
    elif iat is _ABSENT:
        iat = None
    else:
        iat = _numeric_date(iat, "iat")
    leeway = policy.leeway
    valid_until = exp + leeway
    if now >= valid_until:  # RFC 7519 §4.1.4: now must be before exp.
        raise ExpiredTokenError(f"expired {now - exp:.0f}s ago")
    if nbf is not None and now + leeway < nbf:  # RFC 7519 §4.1.5
        raise NotYetValidError(f"nbf is {nbf - now:.0f}s in the future")
    if iat is not None and now + leeway < iat:
        raise NotYetValidError(f"iat is {iat - now:.0f}s in the future")
    # RFC 7519 §4.1.4, §4.1.5: acceptable from nbf (and, here, iat) until before exp. Not
    # before exp, the token is acceptable at no instant, yet the leeway on each side alone
    # let it in for up to twice the leeway.
    if (nbf is not None and nbf >= exp) or (iat is not None and iat >= exp):
        raise InvalidClaimError("nbf or iat is not before exp: the token is never valid")
    if policy.max_age is not None:
        if iat is None:
            raise InvalidClaimError("iat is required to enforce a maximum token age")
        oldest = iat + policy.max_age + leeway
        if now >= oldest:
            raise TokenTooOldError(f"issued {now - iat:.0f}s ago")
        valid_until = min(valid_until, oldest)
    start = nbf if iat is None or (nbf is not None and nbf > iat) else iat
    valid_from = -math.inf if start is None else start - leeway
    return _new_times(TimeClaims, (exp, iat, valid_until, valid_from))


def check_still_valid(
    expires_at: float, issued_at: float | None, policy: ClaimsPolicy, now: float
) -> None:
    """At a later use of a token accepted before (a websocket message): ``exp`` and the
    maximum age at ``now``, with leeway, as ``check_times`` judged them at acceptance."""
    leeway = policy.leeway
    if now >= expires_at + leeway:  # RFC 7519 §4.1.4: now must be before exp.
        raise ExpiredTokenError(f"expired {now - expires_at:.0f}s ago")
    max_age = policy.max_age
    if max_age is not None and issued_at is not None and now >= issued_at + max_age + leeway:
        raise TokenTooOldError(f"issued {now - issued_at:.0f}s ago")


def run_checks(claims: Mapping[str, Any], policy: ClaimsPolicy) -> None:
    """Check the required claims and run the custom claim checks."""
    missing = [name for name in policy.required_claims if claims.get(name) is None]
    if missing:
        raise InvalidClaimError(f"required claims missing: {', '.join(sorted(missing))}")
    for check in policy.checks:
        try:
            accepted = _verdict(check(claims), check)
        except InvalidTokenError:
            raise
        except Exception as exc:  # a user's check failing on odd claims must not become a 500
            raise InvalidClaimError(
                f"claim check {_name(check)} raised {type(exc).__name__}"
            ) from exc
        if not accepted:
            raise InvalidClaimError(f"claim check {_name(check)} refused the token")


def check_identifiers(claims: Mapping[str, Any]) -> None:
    """Refuse ``sub``, ``jti``, ``client_id`` or ``azp`` that is not a non-empty string.

    An empty identifier names nobody: it would satisfy ``require_jti`` and the RFC 9068
    profile while no store can revoke it (RFC 7519 §4.1.2, §4.1.7). Applied to verified
    tokens and to introspection answers alike.
    """
    for name in _STRING_CLAIMS:
        value = claims.get(name, _ABSENT)
        # null is not absent: a present identifier must name someone (RFC 7519 §4.1.2).
        if value is not _ABSENT and (not isinstance(value, str) or not value):
            raise MalformedTokenError(f"claim {name!r} is not a non-empty string")


def check_confirmation(cnf: Any, policy: ClaimsPolicy) -> None:
    """Refuse a sender-constrained token whose binding this guard does not check.

    ``cnf`` (RFC 7800 §3.1) says who may present the token: the holder of a DPoP key (RFC
    9449 §6) or of a client certificate (RFC 8705 §3). Accepted as a plain bearer token, a
    stolen one would work for anyone, which is what the binding exists to prevent.
    """
    if not isinstance(cnf, Mapping):
        raise MalformedTokenError("claim 'cnf' is not a JSON object")
    if policy.confirmations is None:
        return
    unchecked = cnf.keys() - policy.confirmations
    if unchecked:
        shown = ", ".join(sorted(name[:32] for name in unchecked)[:3])
        raise InvalidClaimError(f"token bound by cnf {shown}, which this API does not check")


def _verdict(result: object, check: ClaimCheck) -> bool:
    """A check's result as a yes or no; an awaitable (an async check) is always truthy, so it
    must never count as a yes."""
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if callable(close):
            close()  # never awaited: no warning, no leak
        raise InvalidClaimError(f"claim check {_name(check)} returned an awaitable")
    return bool(result)


def _name(check: ClaimCheck) -> str:
    return getattr(check, "__qualname__", None) or type(check).__name__


def validate_claims(
    header: Mapping[str, Any], claims: Mapping[str, Any], policy: ClaimsPolicy, now: float
) -> TimeClaims:
    """Validate a verified token's header and claims at ``now``.

    Raises:
        InvalidTokenError: a subclass naming the first check that failed.
    """
    get = claims.get
    check_identifiers(claims)
    if policy.require_typ:
        _check_typ(header)  # RFC 9068 §2.1
    else:
        typ = header.get("typ")
        # Compared as a media type: without parameters or white space (RFC 9110 §8.3.1).
        if isinstance(typ, str) and typ.partition(";")[0].strip(" \t").lower() in _OTHER_TYPES:
            raise InvalidTypeError(f"typ is {typ!r}, not an access token")
    iss = get("iss")
    if iss != policy.issuer or not isinstance(iss, str):
        refuse_issuer(iss, policy)  # RFC 9068 §4: exact match with the trusted issuer.
    aud = get("aud")
    if isinstance(aud, str):  # RFC 7519 §4.1.3: a string or an array of strings
        if aud not in policy.audiences:
            refuse_audience([aud], policy)
    else:
        _check_audience_list(aud, policy)
    times = check_times(claims, policy, now)
    # RFC 7800 §3.1: cnf, when present, is a JSON object; null is not absent, or a bound
    # token whose cnf an issuer wrote as null would pass as a plain bearer token.
    cnf = get("cnf", _ABSENT)
    if cnf is not _ABSENT:
        check_confirmation(cnf, policy)
    if policy.required_claims or policy.checks:
        run_checks(claims, policy)
    return times
