"""DPoP proof checks (RFC 9449 §4.3), against an injected ``now``: no I/O, no clock.

``check_proof`` runs the checks of RFC 9449 §4.3 in the RFC's order (step 1, exactly one
``DPoP`` header, is the extraction's job; step 10, the server nonce, and the ``jti`` replay
check of §11.1 need state and are left to the caller, which gets the proof's ``nonce`` and
``jti``). ``jwk_thumbprint`` is RFC 7638; ``access_token_hash`` is the ``ath`` of §4.2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bearerguard._core.jws import decode_payload, parse_compact
from bearerguard._core.keys import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    VerificationKey,
    keys_from_jwks,
    verify_signature,
)
from bearerguard.errors import AuthError, InvalidDPoPProofError

__all__ = [
    "DPoPProof",
    "access_token_hash",
    "b64url",
    "check_proof",
    "jwk_thumbprint",
    "normalize_htu",
    "server_authority",
]


def server_authority(host: object, port: object) -> str:
    """The authority a request reached when it carried no ``Host`` header: the server's own
    address, an IPv6 one in brackets (RFC 3986 §3.2.2), without a port when it has none (a
    Unix socket's)."""
    name = str(host)
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    return name if port is None or port == "" else f"{name}:{port}"


MAX_PROOF_BYTES = 8192
_MAX_JTI = 256
# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
# What a JWKS skip reason that quotes member values says of a proof's jwk (see _unquoted).
_JWK_REASONS = (
    ("use is", "use is not 'sig'"),
    ("alg ", "its alg does not match the key type"),
    ("unusable key", "not a usable public key"),
)
# RFC 9449 §4.2, with or without the "application/" prefix (RFC 7515 §4.1.9), compared
# case-insensitively as media types are (RFC 6838 §4.2).
_PROOF_TYPES = frozenset({"dpop+jwt", "application/dpop+jwt"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 §3.3: the other characters a path segment may hold as they are (sub-delims, ":"
# and "@"). Servers hand over the path decoded, so the URL rebuilt from it cannot say whether
# the client escaped them: they are compared decoded too, or "/a%40b" could never match.
_DECODED = _UNRESERVED | frozenset(b"!$&'()*+,;=:@")


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(token: str) -> str:
    """The ``ath`` of a proof: base64url(SHA-256(ASCII of the access token)) (RFC 9449 §4.2)."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url encoded (RFC 9449 §6.1).

    Raises:
        ValueError: the key type is unknown or a required member is missing.
    """
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise ValueError("unsupported kty")
    required = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise ValueError(f"JWK member {name!r} missing")  # noqa: TRY004 - a bad JWK
        required[name] = value
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _normalize_escape(match: re.Match[str]) -> str:
    char = int(match.group(1), 16)
    # RFC 3986 §6.2.2: decode unreserved characters (and pchar ones, above), uppercase the
    # hex of the others.
    return chr(char) if char in _DECODED else "%" + match.group(1).upper()


def normalize_htu(url: str) -> str:
    """An HTTP URI reduced for the ``htu`` comparison (RFC 9449 §4.3 step 9, RFC 3986 §6).

    Scheme and host lowercase, the default port dropped, percent-escapes normalised, an
    empty path made ``/``, and the query and fragment removed.

    Dot segments are kept (not removed as RFC 3986 §6.2.2.3 would): ``/static/../admin``
    may reach another handler than ``/admin`` (a file server, a router matching the path
    as written), so a proof naming one must not pass for the other. Clients remove them
    before sending (RFC 3986 §5.2), so their htu and request agree.

    Raises:
        ValueError: not an absolute http(s) URI, or one with userinfo.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an absolute http(s) URI")
    if "@" in parts.netloc:
        # RFC 9110 §4.2.4: userinfo in an http(s) URI from an untrusted source is an error;
        # no request's URI holds one, so dropping it would pass an htu naming another URI.
        raise ValueError("userinfo in an http(s) URI")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port  # raises ValueError for a bad port
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _PERCENT.sub(_normalize_escape, parts.path) or "/"
    return f"{scheme}://{netloc}{path}"


@dataclass(frozen=True, slots=True)
class DPoPProof:
    """A proof that passed the stateless checks; ``jti`` and ``nonce`` are for the caller."""

    jti: str
    issued_at: float
    nonce: str | None
    thumbprint: str
    algorithm: str


def _invalid(detail: str) -> InvalidDPoPProofError:
    return InvalidDPoPProofError(detail)


def _unquoted(why: str) -> str:
    """Why a proof's ``jwk`` was skipped, without the member values the JWKS reasons quote.

    A proof is the client's own text: a ``use``, ``alg`` or ``kty`` holding the access token
    or its signature would put it in the refusal's audit ``detail``, which must never carry
    any part of the token.
    """
    for prefix, said in _JWK_REASONS:
        if why.startswith(prefix):
            return said
    return why if "'" not in why and '"' not in why else "unusable"


def _refused_alg(alg: str) -> InvalidDPoPProofError:
    """The refusal of a proof's ``alg``, quoted only when it is a name this library knows:
    the proof's header is the client's text, and no part of the access token may reach the
    audit detail."""
    known = alg in ASYMMETRIC_ALGORITHMS or alg in HMAC_ALGORITHMS
    return _invalid(f"{f'alg {alg!r}' if known else 'an unknown alg'} is not accepted for proofs")


def _public_key(jwk: Any, alg: str) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise _invalid("jwk header is not a JSON object")
    # Step 7: the key must be public; keys_from_jwks also binds alg to the key type.
    try:
        found, skipped = keys_from_jwks({"keys": [jwk]}, frozenset({alg}))
    except ValueError as exc:  # pragma: no cover - one JWK in a list is always a JWK Set
        raise _invalid("jwk unusable") from exc
    if not found:
        why = skipped[0][1] if skipped else "unusable"
        raise _invalid(f"jwk unusable: {_unquoted(why)}")
    return found[0]


def check_proof(
    proof: str,
    *,
    method: str,
    url: str,
    access_token: str,
    now: float,
    algorithms: frozenset[str],
    iat_window: float,
    leeway: float,
) -> DPoPProof:
    """Check a DPoP proof sent with ``access_token`` (RFC 9449 §4.3 steps 2-9, 11, 12).

    Args:
        proof: the ``DPoP`` header's value.
        method: the request's method.
        url: the request's URL as the client addressed it (normalised here).
        access_token: the access token the proof is presented with.
        now: epoch seconds.
        algorithms: the asymmetric algorithms accepted for proofs.
        iat_window: how far ``iat`` may lie in the past, in seconds.
        leeway: how far ``iat`` may lie in the future, in seconds.

    Raises:
        InvalidDPoPProofError: a check failed.
    """
    if len(proof) > MAX_PROOF_BYTES:
        raise _invalid("proof too large")
    # Step 2: a well-formed, strict compact JWS.
    try:
        jws = parse_compact(proof)
        claims = decode_payload(jws)
    except AuthError as exc:
        raise _invalid(f"not a strict compact JWS: {exc.detail}") from exc
    header = jws.header
    # Step 3: every required member present.
    for name in ("typ", "alg", "jwk"):
        if name not in header:
            raise _invalid(f"header {name} missing")
    for name in ("jti", "htm", "htu", "iat", "ath"):
        if name not in claims:
            raise _invalid(f"claim {name} missing")
    # Step 4: explicit typing.
    if not isinstance(typ := header["typ"], str) or typ.lower() not in _PROOF_TYPES:
        raise _invalid("typ is not dpop+jwt")
    # Step 5: an allowed asymmetric algorithm (never none, never HS*).
    alg = jws.alg
    if alg not in algorithms or alg not in ASYMMETRIC_ALGORITHMS:
        raise _refused_alg(alg)
    # Step 7 before step 6: the key must be public before it is used at all.
    jwk = header["jwk"]
    key = _public_key(jwk, alg)
    # Step 6: the signature verifies with the key in the header.
    if not verify_signature(key, alg, jws.signing_input, jws.signature):
        raise _invalid("signature does not verify")
    jti, htm, htu, iat, ath = (claims[n] for n in ("jti", "htm", "htu", "iat", "ath"))
    if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI:
        raise _invalid("jti is not a string of at most 256 characters")
    # Step 8: the method.
    if htm != method:
        raise _invalid("htm does not match the request method")
    # Step 9: the URI, without query and fragment, after normalisation.
    if not isinstance(htu, str):
        raise _invalid("htu is not a string")
    try:
        matches = normalize_htu(htu) == normalize_htu(url)
    except ValueError:
        matches = False
    if not matches:
        raise _invalid("htu does not match the request URI")
    # Step 11: iat within the window.
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise _invalid("iat is not a number")
    if iat > now + leeway:
        raise _invalid("iat is in the future")
    if iat < now - iat_window:
        raise _invalid("iat is too old")
    # Step 12: bound to this access token.
    if ath != access_token_hash(access_token):
        raise _invalid("ath does not match the access token")
    nonce = claims.get("nonce")
    if nonce is not None and not isinstance(nonce, str):
        raise _invalid("nonce is not a string")
    try:
        thumbprint = jwk_thumbprint(jwk)
    except ValueError as exc:  # pragma: no cover - _public_key loaded the key already
        raise _invalid(str(exc)) from exc
    return DPoPProof(
        jti=jti, issued_at=float(iat), nonce=nonce, thumbprint=thumbprint, algorithm=alg
    )
