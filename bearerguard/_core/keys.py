"""Trusted verification keys, each bound to the algorithms it may verify (RFC 8725 §3.1).

A key's algorithms come from the key itself (its JWK ``alg``, or its type and curve), never
from the token: a token's ``alg`` header only selects among what the key already allows. Keys
for encryption (``use: enc``), symmetric JWKs, keys carrying private members, RSA keys
under 2048 bits, over 16384 bits or with a public exponent over 33 bits, and Ed25519 or
Ed448 keys of small order are never loaded from a key set.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError
from jwt.utils import is_pem_format, is_ssh_key

from bearerguard.errors import ConfigurationError, UnsupportedAlgorithmError

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "KEYS_PER_KID",
    "KeySet",
    "VerificationKey",
    "crowded_kids",
    "key_from_pem",
    "key_from_secret",
    "keys_from_jwks",
    "not_a_jwks",
    "verify_signature",
]

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_EC_ALGORITHM_BY_CLASS: dict[type[ec.EllipticCurve], str] = {
    ec.SECP256R1: "ES256",
    ec.SECP384R1: "ES384",
    ec.SECP521R1: "ES512",
}
# RFC 9864: "Ed25519" and "Ed448" name their curve; "EdDSA" (RFC 8037), now deprecated, names
# either. Each key verifies "EdDSA" and the name of its own curve only.
_EDDSA_ALGORITHM_BY_CLASS: dict[type[Any], str] = {
    ed25519.Ed25519PublicKey: "Ed25519",
    ed448.Ed448PublicKey: "Ed448",
}
ASYMMETRIC_ALGORITHMS = (
    _RSA_ALGORITHMS
    | frozenset(_EC_ALGORITHM_BY_CURVE.values())
    | frozenset(_EDDSA_ALGORITHM_BY_CLASS.values())
    | {"EdDSA"}
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_MIN_RSA_BITS = 2048
# OpenSSL refuses every operation with a modulus over OPENSSL_RSA_MAX_MODULUS_BITS (16384),
# though it loads the key: under such a key every signature fails to verify.
_MAX_RSA_BITS = 16384
# RFC 8017 §3.1 bounds the public exponent only by the modulus, and OpenSSL accepts one as
# large as a 3072-bit modulus: verifying then costs a full-size exponentiation, about a
# hundred times an e = 65537 verification, paid for a proof's or a token's bad signature
# too. 33 bits (BoringSSL's limit) keeps every exponent in use, e = 2**32 + 1 included.
_MAX_RSA_EXPONENT_BITS = 33
# RFC 7517 §4.5 lets one kid name several keys (a rotation in place: the old key, the new
# one, perhaps the next): a token naming it has that many signature checks tried, bad
# signatures included. A set repeating one kid over hundreds of keys would make each forged
# token cost hundreds of checks on the event loop: only the first few are tried.
KEYS_PER_KID = 4
# RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
# Members that only private or symmetric JWKs carry (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_IMPLEMENTATIONS: dict[str, Algorithm] = {
    name: algorithm
    for name, algorithm in get_default_algorithms().items()
    if name in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS
}
_EDDSA = _IMPLEMENTATIONS["EdDSA"]
_EDDSA_KEY_CLASS = {alg: cls for cls, alg in _EDDSA_ALGORITHM_BY_CLASS.items()}


def _pss(digest: hashes.HashAlgorithm) -> padding.PSS:
    # RFC 7518 §3.5: MGF1 with the same hash, and a salt as long as the hash output.
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)


# RSASSA-PSS signatures are checked with the key object itself and padding and hash objects
# built once (RFC 7518 §3.5), as PyJWT would but without building them for every token.
_PSS_SCHEMES: dict[str, tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]] = {
    "PS256": (_pss(hashes.SHA256()), hashes.SHA256()),
    "PS384": (_pss(hashes.SHA384()), hashes.SHA384()),
    "PS512": (_pss(hashes.SHA512()), hashes.SHA512()),
}
# RSASSA-PKCS1-v1_5 (RFC 7518 §3.3): each hash with the DER DigestInfo prefix its encoding
# starts with (RFC 8017 §9.2, note 1).
_PKCS1V15_DIGESTS: dict[str, tuple[Callable[[bytes], Any], bytes]] = {
    "RS256": (hashlib.sha256, bytes.fromhex("3031300d060960864801650304020105000420")),
    "RS384": (hashlib.sha384, bytes.fromhex("3041300d060960864801650304020205000430")),
    "RS512": (hashlib.sha512, bytes.fromhex("3051300d060960864801650304020305000440")),
}
_PKCS1V15 = padding.PKCS1v15()


@dataclass(frozen=True, slots=True, eq=False)
class VerificationKey:
    """A public key (or a configured shared secret) and the algorithms it may verify.

    Compared by identity: the key set keeps the same object across refreshes while the
    published JWK is unchanged, so a cached verification can tell whether its key is still
    trusted with one set lookup.
    """

    kid: str | None
    algorithms: frozenset[str]
    key: Any = field(repr=False)
    source: str = field(default="", repr=False)


def verify_signature(
    key: VerificationKey, alg: str, signing_input: bytes, signature: bytes
) -> bool:
    """Check ``signature`` over ``signing_input`` with ``key`` under ``alg``.

    The caller has already checked that ``alg`` is one of ``key.algorithms``, so an RS* or
    PS* ``alg`` comes with an RSA key.
    """
    pkcs1 = _PKCS1V15_DIGESTS.get(alg)
    if pkcs1 is not None:
        return _verify_pkcs1v15(key.key, pkcs1, signing_input, signature)
    scheme = _PSS_SCHEMES.get(alg)
    if scheme is None:
        curve = _EDDSA_KEY_CLASS.get(alg)
        if curve is not None:  # RFC 9864: PyJWT knows these names only as "EdDSA"
            return isinstance(key.key, curve) and _EDDSA.verify(signing_input, key.key, signature)
        return _IMPLEMENTATIONS[alg].verify(signing_input, key.key, signature)
    if len(signature) != (key.key.key_size + 7) // 8:
        # RFC 8017 §8.1.2 step 1: OpenSSL would accept a signature with its leading zero
        # octets dropped, a second encoding of the same token.
        return False
    try:
        key.key.verify(signature, signing_input, scheme[0], scheme[1])
    except InvalidSignature:
        return False
    return True


def _verify_pkcs1v15(
    public_key: rsa.RSAPublicKey,
    digest: tuple[Callable[[bytes], Any], bytes],
    signing_input: bytes,
    signature: bytes,
) -> bool:
    """RSASSA-PKCS1-V1_5-VERIFY (RFC 8017 §8.2.2), by encoding and comparing.

    OpenSSL applies RSAVP1 and checks the padding (``00 01``, at least eight ``FF``, ``00``);
    what follows must then be exactly the expected DigestInfo and hash (steps 3 and 4), so
    nothing is parsed and no trailing data can hide. This equals ``RSAPublicKey.verify``
    and saves its per-call hash and context set-up (``docs/performance.md``).
    """
    if len(signature) != (public_key.key_size + 7) // 8:
        return False  # step 1: the recovery alone would accept a shortened signature
    try:
        recovered = public_key.recover_data_from_signature(signature, _PKCS1V15, None)
    except InvalidSignature:
        return False
    hash_function, digest_info = digest
    return hmac.compare_digest(recovered, digest_info + hash_function(signing_input).digest())


# edwards25519 (RFC 8032 §5.1): the field prime.
_P25519 = 2**255 - 19
# The y of every point of small order: the identity (0, 1), (0, -1) of order 2, the two
# points of order 4 (y = 0), and the four of order 8, whose y are the roots of
# d*y**4 + 2*y**2 - 1 (their double has y = 0): one y and its negative. The point's x
# (its sign bit) plays no part: (x, y) and (-x, y) have the same order.
_ED25519_SMALL_ORDER_Y = frozenset(
    {
        0,
        1,
        _P25519 - 1,
        0x5FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826,
        0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7,
    }
)


def _ed25519_small_order(encoded: bytes) -> bool:
    """Whether an Ed25519 public key is a point of small order ([8]A is the identity).

    Such a key verifies forged signatures (R the identity, S zero) for any message, or for
    one in a handful, and OpenSSL accepts it: it is never loaded, as RSA keys under 2048
    bits are not. y is read as in RFC 8032 §5.1.3 (reduced modulo p, so that non-canonical
    encodings are caught too) and looked up: no field arithmetic, which in Python cost
    about a millisecond per key, seconds of event loop for a key set of thousands of keys.
    """
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    return y % _P25519 in _ED25519_SMALL_ORDER_Y


# edwards448 (RFC 8032 §5.2): the field prime.
_P448 = 2**448 - 2**224 - 1


def _ed448_small_order(encoded: bytes) -> bool:
    """Whether an Ed448 public key is a point of small order ([4]A is the identity).

    The cofactor of edwards448 is 4, and its only points of order dividing 4 are (0, 1),
    (0, -1) and (+-1, 0): y is 1, -1 or 0. OpenSSL loads (+-1, 0) and then accepts
    R = B, S = 1 as a signature of every message, so such a key is refused as small-order
    Ed25519 keys are. y is read as in RFC 8032 §5.2.3 (the x sign bit dropped) and reduced
    modulo p, so that non-canonical encodings are caught too.
    """
    y = int.from_bytes(encoded, "little") & ((1 << 455) - 1)
    return y % _P448 in {0, 1, _P448 - 1}


def _weakness(public_key: Any) -> str | None:
    """Why a public key is refused whatever its algorithm (weak, or unusable), or ``None``."""
    if isinstance(public_key, rsa.RSAPublicKey):
        bits = public_key.key_size
        if bits < _MIN_RSA_BITS:
            return f"weak key: an RSA modulus of {bits} bits (under {_MIN_RSA_BITS})"
        if bits > _MAX_RSA_BITS:
            return f"an RSA modulus of {bits} bits: OpenSSL verifies with {_MAX_RSA_BITS} at most"
        if public_key.public_numbers().e.bit_length() > _MAX_RSA_EXPONENT_BITS:
            return f"weak key: an RSA public exponent over {_MAX_RSA_EXPONENT_BITS} bits"
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        if _ed25519_small_order(public_key.public_bytes_raw()):
            return "weak key: an Ed25519 point of small order"
    elif isinstance(public_key, ed448.Ed448PublicKey) and _ed448_small_order(
        public_key.public_bytes_raw()
    ):
        return "weak key: an Ed448 point of small order"
    return None


def _type_algorithms(public_key: Any) -> frozenset[str]:
    """The algorithms a key of this type and curve verifies (its weakness aside)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHM_BY_CLASS.get(type(public_key.curve))
        return frozenset({alg}) if alg else frozenset()
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return frozenset({"EdDSA", "Ed25519"})
    if isinstance(public_key, ed448.Ed448PublicKey):
        return frozenset({"EdDSA", "Ed448"})
    return frozenset()


def _load_jwk(jwk: Mapping[str, Any]) -> Any:
    kty = jwk.get("kty")
    loader = (
        {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}.get(kty) if isinstance(kty, str) else None
    )
    if loader is None:
        raise InvalidKeyError(f"unsupported kty {kty!r}")
    return _IMPLEMENTATIONS[loader].from_jwk(dict(jwk))


def _parse_jwk(jwk: Any, allowed: frozenset[str]) -> tuple[VerificationKey | None, str]:
    """Return a key bound to its algorithms, or ``None`` and why it was skipped."""
    if not isinstance(jwk, dict):
        return None, "not a JSON object"
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None, "kid is not a string"
    if _PRIVATE_MEMBERS & jwk.keys():
        return None, "private or symmetric key material published"
    use = jwk.get("use")
    if use is not None and use != "sig":
        return None, f"use is {use!r}, not 'sig'"  # RFC 7517 §4.2
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None, "key_ops does not allow verify"  # RFC 7517 §4.3
    try:
        public_key = _load_jwk(jwk)
    except (InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        return None, f"unusable key: {exc}"
    weakness = _weakness(public_key)
    if weakness is not None:
        return None, weakness
    algorithms = _type_algorithms(public_key)
    declared = jwk.get("alg")
    if declared is not None:
        # RFC 7517 §4.4: a JWK's alg restricts it; it must also agree with the key's type.
        if not isinstance(declared, str) or declared not in algorithms:
            return None, f"alg {declared!r} does not match the key type"
        # RFC 9864 §2.2 deprecates "EdDSA" for "Ed25519" and "Ed448": on a key of one curve
        # they name one operation, so a key labelled "EdDSA" also verifies its own curve's
        # name (``algorithms`` holds no other). A key labelled with the new name keeps to it.
        algorithms = algorithms if declared == "EdDSA" else frozenset({declared})
    algorithms &= allowed
    if not algorithms:
        return None, "no allowed algorithm for this key"
    source = json.dumps(jwk, sort_keys=True)
    return VerificationKey(kid=kid, algorithms=algorithms, key=public_key, source=source), ""


def not_a_jwks(document: Any) -> ValueError:
    """The error for a document that is no JWK Set, naming the key set of issuer metadata.

    The discovery URL (``.../.well-known/openid-configuration``) given where the key set's
    goes is a common slip: its ``jwks_uri`` says what to give instead. The value comes from
    the network, so it is quoted (``repr``: no line break reaches a log) and cut short.
    """
    jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
    if isinstance(jwks_uri, str):
        return ValueError(
            f"issuer metadata, not a JWK Set: its jwks_uri is {jwks_uri[:256]!r}, "
            "the key set URL to give"
        )
    return ValueError("not a JWK Set: expected an object with a 'keys' array")


def keys_from_jwks(
    document: Any, allowed: frozenset[str]
) -> tuple[list[VerificationKey], list[tuple[str | None, str]]]:
    """Load the usable signing keys of a JWK Set (RFC 7517 §5).

    Returns:
        The keys, and for every skipped entry its ``kid`` (when readable) and why.

    Raises:
        ValueError: the document is not a JWK Set at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise not_a_jwks(document)
    keys: list[VerificationKey] = []
    skipped: list[tuple[str | None, str]] = []
    for entry in document["keys"]:
        key, why = _parse_jwk(entry, allowed)
        if key is None:
            kid = entry.get("kid") if isinstance(entry, dict) else None
            skipped.append((kid if isinstance(kid, str) else None, why))
        else:
            keys.append(key)
    return keys, skipped


def key_from_pem(
    pem: str | bytes, allowed: frozenset[str], kid: str | None = None
) -> VerificationKey:
    """Load a PEM public key for offline use, bound to the algorithms its type allows."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        public_key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:  # a curve cryptography lacks: the latter
        raise ConfigurationError(f"not a PEM public key: {exc}") from exc
    weakness = _weakness(public_key)
    if weakness is not None:
        raise ConfigurationError(f"the PEM key is refused: {weakness}")
    algorithms = _type_algorithms(public_key) & allowed
    if not algorithms:
        raise ConfigurationError("the PEM key fits none of the allowed algorithms (RSA >= 2048)")
    return VerificationKey(kid=kid, algorithms=algorithms, key=public_key, source=data.decode())


def _is_public_key(data: bytes) -> bool:
    """Whether ``data`` is a key in another encoding: a JWK's JSON, or a DER public key or
    certificate (PEM and SSH are ``jwt.utils``'s to spot)."""
    if data[:1] == b"{":
        try:
            document = json.loads(data)
        except ValueError:
            return False
        return isinstance(document, dict) and "kty" in document
    for load in (load_der_public_key, x509.load_der_x509_certificate):
        try:
            load(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        return True
    return False


def key_from_secret(secret: str | bytes, allowed: frozenset[str]) -> VerificationKey:
    """Bind a shared secret to the HS* algorithms it is long enough for (RFC 7518 §3.2)."""
    data = secret.encode() if isinstance(secret, str) else secret
    if is_pem_format(data) or is_ssh_key(data) or _is_public_key(data):
        # RFC 8725 §3.1, §3.2: a public key is public; as an HMAC secret it would let anyone
        # sign HS* tokens (CVE-2015-9235, CVE-2022-29217). PyJWT refuses it for that reason.
        raise ConfigurationError(
            "the shared secret is a public key (PEM, SSH, DER or a JWK) or certificate, no "
            "HMAC secret; pass a public key with keys=, a random secret with secret="
        )
    algorithms = frozenset(
        alg for alg in allowed & HMAC_ALGORITHMS if len(data) >= _MIN_SECRET_BYTES[alg]
    )
    if not algorithms:
        raise ConfigurationError(
            "the shared secret is too short for every allowed HS* algorithm "
            "(RFC 7518 §3.2: at least 32 bytes for HS256, 48 for HS384, 64 for HS512)"
        )
    return VerificationKey(kid=None, algorithms=algorithms, key=data)


class KeySet:
    """An immutable set of trusted keys, looked up by ``kid`` and algorithm."""

    __slots__ = ("_by_kid", "_members", "_only")

    def __init__(self, keys: Iterable[VerificationKey], previous: KeySet | None = None) -> None:
        reuse = {key.source: key for key in previous._members} if previous else {}
        members = [reuse.get(key.source, key) if key.source else key for key in keys]
        self._members: frozenset[VerificationKey] = frozenset(members)
        self._by_kid: dict[str, list[VerificationKey]] = {}
        for key in members:
            if key.kid is not None:
                self._by_kid.setdefault(key.kid, []).append(key)
        self._only = members[0] if len(members) == 1 else None

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, key: object) -> bool:
        return key in self._members

    @property
    def kids(self) -> list[str]:
        """The key ids present, sorted."""
        return sorted(self._by_kid)

    def candidates(self, kid: str | None) -> list[VerificationKey]:
        """The keys that may have signed a token with this ``kid``.

        A token names its key by ``kid``; a key without a ``kid`` is used only when it is the
        set's sole key, and a token without ``kid`` only against a set of one key.
        """
        if kid is not None:
            found = self._by_kid.get(kid)
            if found:
                return found
        if self._only is not None and (kid is None or self._only.kid is None):
            return [self._only]
        return []

    def key_for(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The key that verifies ``alg`` for a token with this ``kid``, if any.

        Raises:
            UnsupportedAlgorithmError: the kid names only keys of another type or algorithm:
                algorithm confusion (RFC 8725 §3.1).
        """
        candidates = self._by_kid.get(kid) if kid is not None else None  # the usual case
        if candidates is None:
            candidates = self.candidates(kid)
        for key in candidates:
            if alg in key.algorithms:
                return key
        if candidates:
            raise UnsupportedAlgorithmError(f"alg {alg!r} does not match the key's algorithms")
        return None

    def keys_for(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Every key that verifies ``alg`` for a token with this ``kid``, ``key_for``'s first.

        RFC 7517 §4.5 asks for distinct kids within a set but lets them repeat: an issuer
        rotating a key may publish the old and the new one under one kid for a while. The
        first ``KEYS_PER_KID`` only: each costs a signature check, a forged token's too.
        """
        return [key for key in self.candidates(kid) if alg in key.algorithms][:KEYS_PER_KID]


def crowded_kids(keys: Iterable[tuple[str | None, Iterable[str]]]) -> dict[str, int]:
    """The kids naming more than ``KEYS_PER_KID`` keys for one algorithm, with that count.

    ``keys``: each usable key's ``kid`` and algorithms. Keys of different types under one
    kid (RFC 7517 §4.5's own example) never compete: a token's ``alg`` picks among them.
    """
    per_alg = Counter((kid, alg) for kid, algorithms in keys if kid for alg in algorithms)
    crowded: dict[str, int] = {}
    for (kid, _), count in per_alg.items():
        if count > KEYS_PER_KID:
            crowded[kid] = max(count, crowded.get(kid, 0))
    return crowded
