"""The verified access token handed to application code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

__all__ = ["AccessToken"]


# RFC 9068 §2.2 names the client in client_id; OIDC-style tokens use azp, Okta uses cid and
# Entra ID v1 tokens appid.
_CLIENT_CLAIMS = ("client_id", "azp", "cid", "appid")


def _client_id(claims: Mapping[str, Any]) -> str | None:
    for name in _CLIENT_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A token whose signature, claims and revocation status have been checked.

    Attributes:
        subject: the ``sub`` claim (RFC 7519 §4.1.2), if any.
        scopes: every scope granted, from ``scope``, ``scp`` and any configured claim.
        claims: all claims, read-only.
        token_id: the ``jti`` claim (RFC 7519 §4.1.7), if any.
        client_id: the ``client_id`` claim (RFC 9068 §2.2), else ``azp``, ``cid`` (Okta) or
            ``appid`` (Entra ID v1), if any.
        issuer: the ``iss`` claim, equal to the guard's trusted issuer.
        audience: the ``aud`` claim as a tuple.
        expires_at: ``exp`` as an aware UTC datetime.
        issued_at: ``iat`` as an aware UTC datetime, if present.
        key_id: the ``kid`` of the key that verified the signature.
        algorithm: the JWS algorithm that was verified.
        fingerprint: a short, non-reversible hash of the token, for correlating log lines.
        raw: the token as the client sent it, for forwarding downstream or introspection
            (RFC 7662); never in ``repr`` and never logged by bearerguard.
    """

    subject: str | None
    scopes: frozenset[str]
    claims: Mapping[str, Any] = field(repr=False)
    token_id: str | None
    client_id: str | None
    issuer: str
    audience: tuple[str, ...]
    expires_at: datetime
    issued_at: datetime | None
    key_id: str | None
    algorithm: str
    fingerprint: str
    raw: str = field(default="", repr=False)

    @classmethod
    def from_claims(
        cls,
        claims: dict[str, Any],
        *,
        scopes: frozenset[str],
        expires_at: float,
        issued_at: float | None,
        key_id: str | None,
        algorithm: str,
        fingerprint: str,
        raw: str = "",
    ) -> AccessToken:
        """Build a token from claims that have already been validated."""
        aud = claims["aud"]
        audience = (aud,) if isinstance(aud, str) else tuple(aud)
        expires = datetime.fromtimestamp(expires_at, _UTC)
        issued = None if issued_at is None else datetime.fromtimestamp(issued_at, _UTC)
        if cls is not AccessToken:  # a subclass may add fields or a __post_init__
            return cls(
                subject=claims.get("sub"),
                scopes=scopes,
                claims=MappingProxyType(claims),
                token_id=claims.get("jti"),
                client_id=_client_id(claims),
                issuer=claims["iss"],
                audience=audience,
                expires_at=expires,
                issued_at=issued,
                key_id=key_id,
                algorithm=algorithm,
                fingerprint=fingerprint,
                raw=raw,
            )
        # Once per verified token, so built without the frozen __init__ (object.__setattr__
        # for every field): a _Draft with the same slots is filled, then becomes an
        # AccessToken, which CPython allows between classes of identical layout.
        client_id = claims.get("client_id")
        if not (isinstance(client_id, str) and client_id):
            client_id = _client_id(claims)
        draft: Any = object.__new__(_Draft)
        draft.subject = claims.get("sub")
        draft.scopes = scopes
        draft.claims = MappingProxyType(claims)
        draft.token_id = claims.get("jti")
        draft.client_id = client_id
        draft.issuer = claims["iss"]
        draft.audience = audience
        draft.expires_at = expires
        draft.issued_at = issued
        draft.key_id = key_id
        draft.algorithm = algorithm
        draft.fingerprint = fingerprint
        draft.raw = raw
        draft.__class__ = AccessToken
        token: AccessToken = draft
        return token

    def has_scopes(self, *required: str) -> bool:
        """Whether every one of ``required`` is granted (exact, case-sensitive)."""
        return self.scopes.issuperset(required)


_UTC = timezone.utc


class _Draft:
    """An ``AccessToken`` under construction: the same slots, none of them frozen."""

    __slots__ = AccessToken.__slots__
