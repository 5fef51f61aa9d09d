"""The verified access token handed to application code."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NoReturn

__all__ = ["AccessToken", "token_fingerprint"]


def token_fingerprint(token: str | bytes) -> str:
    """A token's fingerprint: the first 8 bytes of its SHA-256, in hex.

    It correlates the log lines of one token and reveals nothing of it.
    """
    credentials = token if isinstance(token, bytes) else token.encode("latin-1", "replace")
    return hashlib.sha256(credentials).digest()[:8].hex()


class _Claims(dict[str, Any]):
    """A token's claims: a ``dict`` that refuses every change.

    A dict, so that it serializes as one (``json.dumps``, Flask's ``jsonify``, FastAPI's
    ``jsonable_encoder``) and a token pickles, copies and goes through
    ``dataclasses.asdict``; read-only, as the verification cache hands one token to every
    request that sends it.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))  # rebuilt whole: pickle's item by item would write


def _read_only(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise TypeError("a token's claims are read-only: change a copy, dict(token.claims)")


for _method in (
    "__setitem__",
    "__delitem__",
    "__ior__",
    "clear",
    "pop",
    "popitem",
    "setdefault",
    "update",
):
    setattr(_Claims, _method, _read_only)


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
        claims: all claims, a read-only ``dict`` (it serializes, pickles and copies as
            one; change a copy, ``dict(token.claims)``). Nested objects and arrays are the
            decoded JSON, shared by every request that reuses the token (the verification
            cache): read them, copy them to change them.
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
            (RFC 7662); never in ``repr`` and never logged by bearerguard. It is a field:
            ``dataclasses.asdict`` includes it, and so does a FastAPI route returning the
            token; return the fields the client needs instead.
    """

    subject: str | None
    scopes: frozenset[str]
    claims: Mapping[str, Any] = field(repr=False, hash=False)  # a mapping is unhashable
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
        fingerprint: str | None,
        raw: str = "",
    ) -> AccessToken:
        """Build a token from claims that have already been validated.

        ``fingerprint=None``: ``token_fingerprint(raw)``, computed on first read.
        """
        aud = claims["aud"]
        audience = (aud,) if isinstance(aud, str) else tuple(aud)
        if cls is not AccessToken:  # a subclass may add fields or a __post_init__
            return cls(
                subject=claims.get("sub"),
                scopes=scopes,
                claims=_Claims(claims),
                token_id=claims.get("jti"),
                client_id=_client_id(claims),
                issuer=claims["iss"],
                audience=audience,
                expires_at=datetime.fromtimestamp(expires_at, _UTC),
                issued_at=None if issued_at is None else datetime.fromtimestamp(issued_at, _UTC),
                key_id=key_id,
                algorithm=algorithm,
                fingerprint=token_fingerprint(raw) if fingerprint is None else fingerprint,
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
        draft.claims = _Claims(claims)
        draft.token_id = claims.get("jti")
        draft.client_id = client_id
        draft.issuer = claims["iss"]
        draft.audience = audience
        draft.expires_at = float(expires_at)  # epoch seconds: _Instant converts on first read
        draft.issued_at = None if issued_at is None else float(issued_at)
        draft.key_id = key_id
        draft.algorithm = algorithm
        draft.fingerprint = fingerprint  # None: _Fingerprint hashes raw on first read
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


class _Instant:
    """A datetime slot of ``AccessToken`` that ``from_claims`` may fill with epoch seconds.

    The datetime is made on first read and kept: a verified token whose times nobody reads
    costs no ``datetime.fromtimestamp`` (two per token, about 1 µs of a cache miss). Every
    read (attributes, ``==``, ``repr``, ``dataclasses.replace``) sees a datetime.
    """

    __slots__ = ("_slot",)

    def __init__(self, slot: Any) -> None:
        self._slot = slot  # the slot's own member descriptor

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = self._slot.__get__(instance, owner)
        if type(value) is not float:  # a datetime (or a subclass) given, or None
            return value
        instant = datetime.fromtimestamp(value, _UTC)  # range checked by validate_claims
        self._slot.__set__(instance, instant)
        return instant

    def __set__(self, instance: object, value: Any) -> None:
        self._slot.__set__(instance, value)


for _name in ("expires_at", "issued_at"):
    setattr(AccessToken, _name, _Instant(AccessToken.__dict__[_name]))


_RAW: Any = AccessToken.__dict__["raw"]  # the raw slot's own member descriptor


class _Fingerprint:
    """``AccessToken``'s fingerprint slot, which ``from_claims`` may leave to first read.

    A verification whose token nobody logs (a cache miss that records no event) then spends
    no SHA-256 on it. Every read sees the fingerprint of ``raw``.
    """

    __slots__ = ("_slot",)

    def __init__(self, slot: Any) -> None:
        self._slot = slot

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = self._slot.__get__(instance, owner)
        if value is None:
            value = token_fingerprint(_RAW.__get__(instance, owner))
            self._slot.__set__(instance, value)
        return value

    def __set__(self, instance: object, value: Any) -> None:
        self._slot.__set__(instance, value)


setattr(AccessToken, "fingerprint", _Fingerprint(AccessToken.__dict__["fingerprint"]))  # noqa: B010
