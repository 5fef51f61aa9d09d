"""Token introspection answers (RFC 7662 §2.2), parsed strictly and turned into tokens.

Pure code: the answer's bytes come in, a verdict goes out; ``now`` is passed in. The HTTP
exchange lives in ``bearerguard.introspection``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from bearerguard._core.claims import (
    ClaimsPolicy,
    check_confirmation,
    check_identifiers,
    check_times,
    refuse_audience,
    refuse_issuer,
    run_checks,
)
from bearerguard._core.scopes import read_scopes
from bearerguard._core.times import is_numeric_date
from bearerguard._core.unicode import has_lone_surrogate
from bearerguard.errors import (
    InvalidAudienceError,
    InvalidClaimError,
    InvalidTokenError,
)
from bearerguard.token import AccessToken, _Claims

__all__ = [
    "INTROSPECTION_ALGORITHM",
    "InactiveTokenError",
    "IntrospectionResponseError",
    "parse_introspection_response",
    "token_from_introspection",
]

INTROSPECTION_ALGORITHM = "introspection"
"""``AccessToken.algorithm`` of a token accepted on the authorization server's word."""

# The shape of a compact JWS, as bearerguard._core.jws matches it: a token of this shape is
# verified locally; any other (opaque strings, JWE) is for the authorization server.
_STRING_MEMBERS = ("scope", "client_id", "username", "token_type", "sub", "iss", "jti")
_TIME_MEMBERS = ("exp", "iat", "nbf")
# RFC 7662 §2.1: the endpoint extends its search past our token_type_hint to every type it
# knows, so a refresh token or an ID token can come back active. token_type (RFC 7662 §2.2)
# is an access token type (RFC 6749 §5.1, case-insensitive: Bearer, or DPoP per RFC 9449
# §6.2), or the access token's RFC 8693 §3 identifier; anything else is not an access token.
_ACCESS_TOKEN_TYPES = frozenset(
    {"bearer", "dpop", "access_token", "urn:ietf:params:oauth:token-type:access_token"}
)
# Keycloak answers with the token's own "typ" claim (not RFC 7662): "Bearer" or "DPoP" for an
# access token, "Refresh", "Offline" or "ID" for the others (its older releases send no
# token_type). RFC 9068 §2.1's header value is accepted too, should a server copy it there.
_ACCESS_TOKEN_TYPS = _ACCESS_TOKEN_TYPES | {"at+jwt", "application/at+jwt"}


class InactiveTokenError(InvalidTokenError):
    """The authorization server says the token is not active (RFC 7662 §2.2).

    It does not say why: expired, revoked, never issued, or not for this resource server.
    """

    reason = "inactive"
    description = "The access token is not active."


class IntrospectionResponseError(ValueError):
    """The introspection endpoint's answer does not follow RFC 7662 §2.2."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise IntrospectionResponseError("duplicate JSON member name")
    return result


def _refuse_constant(name: str) -> Any:
    raise IntrospectionResponseError(f"JSON constant {name} is not allowed")


def _numeric_date(value: Any, name: str) -> None:
    if not is_numeric_date(value):
        raise IntrospectionResponseError(f"{name!r} is not a NumericDate in range")


def parse_introspection_response(body: bytes) -> dict[str, Any]:
    """Parse an introspection response body strictly (RFC 7662 §2.2).

    The body must be a UTF-8 JSON object without duplicate members. Only ``"active": true``
    says the token is active; any other ``active`` (``false``, missing, a string, a number,
    ``null``) is an inactive answer, reduced to ``{"active": False}``: RFC 7662 §2.2 gives
    its other members no meaning. For an active token, ``scope``, ``client_id``,
    ``username``, ``token_type``, ``sub``, ``iss`` and ``jti`` must be strings when present,
    ``exp``, ``iat`` and ``nbf`` NumericDates, and ``aud`` a string or an array of strings;
    any of these sent as ``null`` is left out, as if absent.

    Raises:
        IntrospectionResponseError: anything else.
    """
    try:
        text = body.decode("utf-8")
        value = json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except IntrospectionResponseError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IntrospectionResponseError("the body is not UTF-8 JSON") from exc
    if has_lone_surrogate(text, value):
        raise IntrospectionResponseError("the body is not UTF-8 JSON")
    if not isinstance(value, dict):
        raise IntrospectionResponseError("the body is not a JSON object")
    # RFC 7662 §2.2: anything but JSON true is not active. Read as a failure instead, a
    # guard with revocation_failure="allow" let a token through on {"active": "false"}.
    if value.get("active") is not True:
        return {"active": False}
    # RFC 7662 §2.2 makes every member but active optional: one sent as null (servers that
    # serialise unset fields) says nothing and is read as absent. The token is then judged
    # on the rest (no exp: 401), where the whole answer was refused as the server's failure.
    for name in (*_STRING_MEMBERS, *_TIME_MEMBERS, "aud"):
        if name in value and value[name] is None:
            del value[name]
    for name in _STRING_MEMBERS:
        if name in value and not isinstance(value[name], str):
            raise IntrospectionResponseError(f"{name!r} is not a string")
    for name in _TIME_MEMBERS:
        if name in value:
            _numeric_date(value[name], name)
    if "aud" in value:
        aud = value["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        # An empty array is understood: the token names no audience, and so is not for us
        # (token_from_introspection refuses it, 401), not an answer to fail on (503).
        if not (isinstance(audiences, list) and all(isinstance(item, str) for item in audiences)):
            raise IntrospectionResponseError("'aud' is not a string or array of strings")
    return value


def token_from_introspection(
    claims: Mapping[str, Any],
    *,
    policy: ClaimsPolicy,
    scope_paths: tuple[tuple[str, ...], ...],
    now: float,
    fingerprint: str,
    raw: str,
    audience_checked_by_server: bool = False,
) -> AccessToken:
    """Accept or refuse a token on the authorization server's answer about it.

    ``claims`` is an answer already checked by ``parse_introspection_response``. The token
    is accepted when the answer says ``active: true``; ``exp`` is present and, with the
    policy's leeway, not passed (nor ``nbf`` and ``iat`` in the future); ``token_type``, when
    present, names an access token (``Bearer``, or ``DPoP`` with ``cnf.jkt``), as do a
    ``typ`` (Keycloak) and a ``token_use`` (Hydra, Cognito); ``iss``, when
    present, equals the trusted issuer; ``aud`` names one of the policy's audiences (absent,
    it is accepted only if ``audience_checked_by_server``); and the policy's required
    claims, maximum age and custom checks pass. RFC 7662 §2.2 makes ``iss`` optional: list
    it in ``required_claims`` to demand it.

    Raises:
        InvalidTokenError: a subclass naming the first rule broken (``InactiveTokenError``
            when the answer says inactive).
    """
    if claims.get("active") is not True:
        raise InactiveTokenError("the authorization server says the token is not active")
    # A plain dict, as a verified JWT's claims are: the introspector hands its answer over
    # read-only, and read_scopes walks scope_claims paths through dicts only (claim checks
    # get a dict too, as for a JWT). A copy to the bottom: the introspector keeps its answer
    # for the next request, whose scopes a handler appending to a list here must not grant.
    plain = _copied(claims)
    _check_kind(claims, "token_type", _ACCESS_TOKEN_TYPES)
    _check_kind(claims, "typ", _ACCESS_TOKEN_TYPS)
    token_use = claims.get("token_use")  # not RFC 7662: ORY Hydra and Amazon Cognito name it
    if token_use is not None and token_use not in ("access_token", "access"):
        raise InvalidClaimError(f"introspected token_use {str(token_use)[:64]!r}: not access")
    check_identifiers(claims)  # as for a verified JWT
    iss = claims.get("iss")
    if iss is not None and iss != policy.issuer:
        refuse_issuer(iss, policy, claim="introspected iss")
    audiences = _audiences(claims.get("aud"), policy, checked=audience_checked_by_server)
    times = check_times(claims, policy, now)
    # RFC 7662 §2.2 allows cnf; RFC 8705 §3.2 and RFC 9449 §6.2 use it. Present, it must be
    # an object (RFC 7800 §3.1): a null one is refused, never read as an unbound token.
    if "cnf" in claims:
        check_confirmation(claims["cnf"], policy)
    run_checks(plain, policy)
    return AccessToken(
        subject=claims.get("sub"),
        scopes=read_scopes(plain, scope_paths),
        claims=_Claims(plain),
        token_id=claims.get("jti"),
        client_id=claims.get("client_id"),
        issuer=policy.issuer,
        audience=audiences,
        expires_at=_utc(times.expires_at),
        issued_at=None if times.issued_at is None else _utc(times.issued_at),
        key_id=None,
        algorithm=INTROSPECTION_ALGORITHM,
        fingerprint=fingerprint,
        raw=raw,
    )


def _audiences(
    aud: str | list[str] | None, policy: ClaimsPolicy, *, checked: bool
) -> tuple[str, ...]:
    """The answer's audiences, which must name this resource server.

    RFC 7662 §2.2 makes ``aud`` optional, but an answer without it cannot show the token was
    meant for this resource server: one the same authorization server issued for another
    would pass (token confusion), where a JWT's ``aud`` is required (RFC 9068 §4). Absent, it
    is accepted only from a server said to check it: RFC 7662 §4 has it determine whether
    the token can be used at the resource server making the call (``active: false`` if
    not), which shows what ``aud`` would. The same holds with ``resource``: RFC 8707 §2
    wants the token obtained for it, and such a server answers active for no other.
    """
    if aud is None:
        if checked:
            return ()
        raise InvalidAudienceError(
            "introspected answer names no audience (aud); if the authorization server answers "
            "active only for tokens meant for this client, say so with "
            "Introspector(audience_checked_by_server=True)"
        )
    audiences = (aud,) if isinstance(aud, str) else tuple(aud)
    # An empty aud names no audience, this resource server's included (RFC 7519 §4.1.3).
    if policy.audiences.isdisjoint(audiences):
        # Worded and cut short as for a JWT: the answer's values reach the audit detail only.
        refuse_audience(audiences, policy, claim="introspected aud")
    return audiences


def _copied(claims: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a decoded JSON object whose nested objects and arrays are copies too.

    Without recursion: an answer nested as deep as the JSON parser allows is copied too.
    """
    root = dict(claims)
    pending: list[dict[Any, Any] | list[Any]] = [root]
    while pending:
        node = pending.pop()
        for key, item in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(item, dict | list):
                copy = dict(item) if isinstance(item, dict) else list(item)
                node[key] = copy  # replacing a value: the size being iterated stays
                pending.append(copy)
    return root


def _check_kind(claims: Mapping[str, Any], name: str, accepted: frozenset[str]) -> None:
    """Refuse an answer whose ``name`` member is present and names no access token."""
    value = claims.get(name)
    if value is None:
        return
    kind = value.lower() if isinstance(value, str) else None
    if kind not in accepted:
        shown = value[:64] if isinstance(value, str) else type(value).__name__
        raise InvalidClaimError(f"introspected {name} {shown!r}: not an access token")
    cnf = claims.get("cnf")
    if kind == "dpop" and not (isinstance(cnf, Mapping) and "jkt" in cnf):
        # RFC 9449 §6.2: a DPoP token's answer carries cnf.jkt; without it the binding
        # could not be checked and the token would pass as a bearer token (§7.2).
        raise InvalidClaimError(f"introspected {name} DPoP without cnf.jkt")


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)
