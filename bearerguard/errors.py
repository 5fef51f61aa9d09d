"""Errors, shaped by RFC 6750 §3, and the ``WWW-Authenticate`` challenges they render.

```
BearerGuardError
├── AuthError                      a request is refused (status, error_code, reason)
│   ├── MissingTokenError          401, no error code (RFC 6750 §3.1)
│   ├── InvalidRequestError        400 invalid_request
│   ├── InvalidTokenError          401 invalid_token
│   │   ├── MalformedTokenError    not a strict compact JWS, or a claim of the wrong type
│   │   ├── UnsupportedAlgorithmError
│   │   ├── UnknownKeyError        no trusted key matches the kid and algorithm
│   │   ├── BadSignatureError
│   │   ├── ExpiredTokenError
│   │   ├── NotYetValidError       nbf in the future, or iat in the future
│   │   ├── TokenTooOldError       older than the configured maximum age
│   │   ├── InvalidIssuerError
│   │   ├── InvalidAudienceError
│   │   ├── InvalidTypeError       typ is not at+jwt where it is required
│   │   ├── InvalidClaimError      a required or custom claim check failed
│   │   ├── RevokedTokenError
│   │   └── CertificateBindingError   bound to a client certificate not presented (RFC 8705)
│   ├── InvalidDPoPProofError      401 invalid_dpop_proof (RFC 9449 §7.1)
│   ├── UseDPoPNonceError          401 use_dpop_nonce, with a DPoP-Nonce (RFC 9449 §8)
│   ├── InsufficientScopeError     403 insufficient_scope, scope="..."
│   └── ServiceUnavailableError    503: a dependency cannot answer, so we fail closed
│       ├── KeySetUnavailableError no usable signing keys (JWKS down past max staleness)
│       ├── RevocationStoreError   the revocation store failed
│       └── ReplayStoreError       the DPoP replay store failed
└── ConfigurationError             raised at construction, never while serving a request
```

``bearerguard.introspection`` adds ``InactiveTokenError`` (401, an ``InvalidTokenError``) and
``IntrospectionError`` (503, a ``ServiceUnavailableError``).

Every ``AuthError`` carries a fixed, safe ``description`` for clients; details (what the
token said, which check failed and why) go only to ``detail``, which the audit log records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

from bearerguard.token import AccessToken

__all__ = [
    "AuthError",
    "BadSignatureError",
    "BearerGuardError",
    "CertificateBindingError",
    "ConfigurationError",
    "ExpiredTokenError",
    "InsufficientScopeError",
    "InvalidAudienceError",
    "InvalidClaimError",
    "InvalidDPoPProofError",
    "InvalidIssuerError",
    "InvalidRequestError",
    "InvalidTokenError",
    "InvalidTypeError",
    "KeySetUnavailableError",
    "MalformedTokenError",
    "MissingTokenError",
    "NotYetValidError",
    "ReplayStoreError",
    "RevocationStoreError",
    "RevokedTokenError",
    "ServiceUnavailableError",
    "TokenTooOldError",
    "UnknownKeyError",
    "UnsupportedAlgorithmError",
    "UseDPoPNonceError",
    "render_challenge",
]


class BearerGuardError(Exception):
    """The root of every error this package raises."""


class ConfigurationError(BearerGuardError, ValueError):
    """A guard, store or middleware was configured wrongly; raised at construction."""


class AuthError(BearerGuardError):
    """A request is refused. Subclasses fix the status, RFC 6750 code and description.

    Args:
        detail: what exactly went wrong, for the audit log only; never sent to the client.
    """

    status: ClassVar[int] = 401
    error_code: ClassVar[str | None] = None
    reason: ClassVar[str] = "unauthenticated"
    description: ClassVar[str] = "The request is not authenticated."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.description)
        self.detail = detail
        # Filled by the guard for the audit log: what is known of the refused token.
        self.fingerprint: str | None = None
        self.header: dict[str, object] | None = None
        self.token: AccessToken | None = None
        self.store: str | None = None  # the revocation store that answered or failed
        # The authorization scheme the request used: "dpop" (RFC 9449 §7.1) or "bearer". Its
        # challenge carries the error code.
        self.scheme: str = "bearer"
        # What the audit log records: the scheme, or "mtls" when a certificate binding
        # refused the token (RFC 8705 §3), whichever scheme carried it.
        self.binding: str = "bearer"

    def sent_with(self, scheme: str) -> None:
        """Note the scheme the request used: its challenge carries the error code, and it
        is the audit's ``binding`` unless a certificate binding refused the token."""
        self.scheme = scheme
        if self.binding == "bearer":
            self.binding = scheme


class MissingTokenError(AuthError):
    """No bearer credentials at all: 401 with a bare challenge (RFC 6750 §3.1)."""

    reason = "missing_token"
    description = "Bearer authentication is required."


class InvalidRequestError(AuthError):
    """The request is malformed (RFC 6750 §3.1 ``invalid_request``)."""

    status = 400
    error_code = "invalid_request"
    reason = "invalid_request"
    description = "The request carries malformed or duplicated credentials."


class InvalidTokenError(AuthError):
    """The token is expired, revoked, malformed or invalid (RFC 6750 §3.1)."""

    error_code = "invalid_token"
    reason = "invalid_token"
    description = "The access token is invalid."


class MalformedTokenError(InvalidTokenError):
    """Not a strict compact JWS, or a claim of the wrong type."""

    reason = "malformed_token"
    description = "The access token is malformed."


class UnsupportedAlgorithmError(InvalidTokenError):
    """The header's ``alg`` is not allowed for this guard or for the key."""

    reason = "unsupported_algorithm"
    description = "The access token is signed with an algorithm that is not accepted."


class UnknownKeyError(InvalidTokenError):
    """No trusted key matches the token's ``kid`` and algorithm."""

    reason = "unknown_key"
    description = "The access token is signed by an unknown key."


class BadSignatureError(InvalidTokenError):
    """The signature does not verify with the trusted key."""

    reason = "bad_signature"
    description = "The access token signature is invalid."


class ExpiredTokenError(InvalidTokenError):
    """``exp`` has passed (RFC 7519 §4.1.4)."""

    reason = "expired"
    description = "The access token has expired."


class NotYetValidError(InvalidTokenError):
    """``nbf`` or ``iat`` lies in the future (RFC 7519 §4.1.5, §4.1.6)."""

    reason = "not_yet_valid"
    description = "The access token is not valid yet."


class TokenTooOldError(InvalidTokenError):
    """The token was issued longer ago than the configured maximum age."""

    reason = "too_old"
    description = "The access token is too old."


class InvalidIssuerError(InvalidTokenError):
    """``iss`` is not the trusted issuer (RFC 9068 §4)."""

    reason = "invalid_issuer"
    description = "The access token was issued by an untrusted issuer."


class InvalidAudienceError(InvalidTokenError):
    """``aud`` does not name this resource server (RFC 7519 §4.1.3)."""

    reason = "invalid_audience"
    description = "The access token is not meant for this resource."


class InvalidTypeError(InvalidTokenError):
    """The header's ``typ`` is not ``at+jwt`` where that is required (RFC 9068 §2.1)."""

    reason = "invalid_type"
    description = "The token is not an access token."


class InvalidClaimError(InvalidTokenError):
    """A required claim is missing or a custom claim check refused the token."""

    reason = "invalid_claim"
    description = "The access token claims are not acceptable."


class RevokedTokenError(InvalidTokenError):
    """The token, its subject, its client or its session (``sid``) has been revoked."""

    reason = "revoked"
    description = "The access token has been revoked."


class CertificateBindingError(InvalidTokenError):
    """A certificate-bound token without the client certificate it is bound to (RFC 8705 §3).

    The request presented no client certificate, or one whose SHA-256 thumbprint is not the
    token's ``cnf`` ``x5t#S256``: the token may have been stolen.
    """

    reason = "certificate_binding"
    description = "The access token is not bound to the client certificate presented."


class InvalidDPoPProofError(AuthError):
    """The DPoP proof is missing, malformed or fails a check (RFC 9449 §4.3, §7.1)."""

    error_code = "invalid_dpop_proof"
    reason = "invalid_dpop_proof"
    description = "The DPoP proof is invalid."


class UseDPoPNonceError(AuthError):
    """The proof must carry the server's current nonce (RFC 9449 §8, §9).

    Args:
        nonce: the fresh nonce, sent in the ``DPoP-Nonce`` response header.
    """

    error_code = "use_dpop_nonce"
    reason = "use_dpop_nonce"
    description = "Resource server requires nonce in DPoP proof."  # RFC 9449 §9

    def __init__(self, nonce: str, detail: str | None = None) -> None:
        super().__init__(detail)
        self.nonce = nonce


class InsufficientScopeError(AuthError):
    """The token lacks a scope the route needs (RFC 6750 §3.1 ``insufficient_scope``).

    Args:
        required: the scopes the failing check asks for (the audit's ``required_scopes``).
        any_of: whether one of ``required`` suffices (otherwise all are needed).
        scope: the challenge's ``scope``: the scope necessary to access the resource (RFC
            6750 §3), every check's where several apply; ``required`` when not given.

    ``required`` and ``scope`` keep each name once, in the order first given.
    """

    status = 403
    error_code = "insufficient_scope"
    reason = "insufficient_scope"
    description = "The access token does not grant the scope this request needs."

    def __init__(
        self,
        required: Iterable[str] = (),
        *,
        any_of: bool = False,
        detail: str | None = None,
        scope: Iterable[str] | None = None,
    ) -> None:
        super().__init__(detail)
        # Each scope once, in order: stacked checks and FastAPI's summed Security scopes
        # can name one twice, which the challenge and the audit event would repeat.
        self.required = _once(required)
        self.any_of = any_of
        self.scope = self.required if scope is None else _once(scope)


class ServiceUnavailableError(AuthError):
    """A dependency cannot answer, so the guard fails closed with 503 ``Retry-After``.

    No ``WWW-Authenticate`` error code is sent: the client's token may well be good, and a 503
    tells it to retry rather than to fetch a new token.
    """

    status = 503
    error_code = "temporarily_unavailable"
    reason = "unavailable"
    description = "Authentication is temporarily unavailable; retry shortly."


class KeySetUnavailableError(ServiceUnavailableError):
    """No usable signing keys: the JWKS cannot be fetched and no fresh-enough copy is held."""

    reason = "keys_unavailable"


class RevocationStoreError(ServiceUnavailableError):
    """The revocation store failed; the guard fails closed unless configured to fail open."""

    reason = "revocation_unavailable"


class ReplayStoreError(ServiceUnavailableError):
    """The DPoP replay store failed: a replay cannot be ruled out, so the guard fails closed."""

    reason = "replay_store_unavailable"


# scope-token = 1*( %x21 / %x23-5B / %x5D-7E ) (RFC 6750 §3, RFC 6749 §3.3)
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def scope_attribute(names: Iterable[str]) -> str | None:
    """The ``scope`` auth-param for ``names`` (RFC 6750 §3), or ``None`` when there are none
    or one is not a scope-token: a name declared unchecked (FastAPI's ``Security(...,
    scopes=[...])``) with a space, a quote or a character outside ASCII would split the
    attribute or fail to encode the header, so the optional attribute is left out. A name
    given twice is named once."""
    listed = _once(names)
    if not listed or not all(
        isinstance(name, str) and _SCOPE_TOKEN.fullmatch(name) for name in listed
    ):
        return None
    return " ".join(listed)


def _once(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` with each one once, in order; compared by equality, so that a name that is
    not a string (declared unchecked, refused later) cannot raise here."""
    kept: list[str] = []
    for name in names:
        if name not in kept:
            kept.append(name)
    return tuple(kept)


def _quote(value: str) -> str:
    """Render an auth-param value as an RFC 9110 §5.6.4 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_challenge(
    realm: str | None,
    error: AuthError | None = None,
    *,
    scheme: str = "Bearer",
    extra: Iterable[tuple[str, str]] = (),
) -> str:
    """Render a ``WWW-Authenticate`` challenge (RFC 6750 §3).

    Args:
        realm: the protection space; omitted when ``None``.
        error: the refusal; a ``MissingTokenError`` (or ``None``) renders no error code, as
            RFC 6750 §3.1 asks when the request carried no credentials.
        scheme: the auth scheme.
        extra: further auth-params, rendered after the standard ones.
    """
    params: list[tuple[str, str]] = []
    if realm is not None:
        params.append(("realm", realm))
    if error is not None and error.error_code is not None:
        params.append(("error", error.error_code))
        params.append(("error_description", error.description))
        if isinstance(error, InsufficientScopeError):
            scope = scope_attribute(error.scope)
            if scope is not None:
                params.append(("scope", scope))
    params.extend(extra)
    if not params:
        return scheme
    return scheme + " " + ", ".join(f"{name}={_quote(value)}" for name, value in params)
