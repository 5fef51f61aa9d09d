"""Keys bound to their algorithms (RFC 7517, RFC 8725 §3.1)."""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from bearerguard._core.keys import (
    ASYMMETRIC_ALGORITHMS,
    KeySet,
    VerificationKey,
    _ed25519_small_order,
    key_from_pem,
    key_from_secret,
    keys_from_jwks,
    verify_signature,
)
from bearerguard.errors import ConfigurationError, UnsupportedAlgorithmError
from bearerguard.testing import DevIssuer, Override
from tests.apps import build_app
from tests.helpers import compact
from tests.test_adversarial import self_signed_der

ALL = ASYMMETRIC_ALGORITHMS
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(**extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    jwk.update({"kid": "r1", **extra})
    return jwk


def ec_jwk(**extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True)
    jwk.update({"kid": "e1", **extra})
    return jwk


def load_one(jwk: dict[str, Any], allowed: frozenset[str] = ALL) -> Any:
    keys, skipped = keys_from_jwks({"keys": [jwk]}, allowed)
    return keys[0] if keys else skipped[0][1]


def test_rsa_key_without_alg_allows_rsa_algorithms_only() -> None:
    key = load_one(rsa_jwk())
    assert key.algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


def test_declared_alg_restricts_the_key() -> None:
    assert load_one(rsa_jwk(alg="PS256")).algorithms == {"PS256"}


def test_ec_key_is_bound_to_its_curve() -> None:
    assert load_one(ec_jwk()).algorithms == {"ES256"}
    assert "does not match" in load_one(ec_jwk(alg="ES384"))


ED25519_KEY = ed25519.Ed25519PrivateKey.generate()
ED448_KEY = ed448.Ed448PrivateKey.generate()


def okp_jwk(private: Any, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update({"kid": "o1", **extra})
    return jwk


@pytest.mark.parametrize(
    ("private", "alg", "loaded"),
    [
        (ED25519_KEY, None, {"EdDSA", "Ed25519"}),
        (ED448_KEY, None, {"EdDSA", "Ed448"}),
        (ED25519_KEY, "Ed25519", {"Ed25519"}),
        (ED25519_KEY, "EdDSA", {"EdDSA", "Ed25519"}),
        (ED448_KEY, "Ed448", {"Ed448"}),
        (ED448_KEY, "EdDSA", {"EdDSA", "Ed448"}),
        (ED25519_KEY, "Ed448", "does not match"),
        (ED448_KEY, "Ed25519", "does not match"),
    ],
    ids=[
        "ed25519",
        "ed448",
        "ed25519-alg",
        "eddsa-alg",
        "ed448-alg",
        "eddsa-alg-448",
        "ed25519-as-448",
        "ed448-as-25519",
    ],
)
def test_edwards_keys_are_bound_to_their_curve(private: Any, alg: str | None, loaded: Any) -> None:
    """RFC 9864: "Ed25519" and "Ed448" name their curve; a key verifies its own curve's
    name and the polymorphic "EdDSA", and a JWK's alg must agree with its curve. A JWK
    labelled with the deprecated "EdDSA" also verifies its curve's fully-specified name (the
    same operation, RFC 9864 §2.2); one labelled with the new name verifies only that."""
    key = load_one(okp_jwk(private, alg=alg) if alg else okp_jwk(private))
    if isinstance(loaded, str):
        assert loaded in key
    else:
        assert key.algorithms == loaded


def test_an_eddsa_labelled_key_keeps_to_the_allow_list() -> None:
    # Accepting "Ed25519" for a JWK labelled "EdDSA" never widens the configured list.
    labelled = okp_jwk(ED25519_KEY, alg="EdDSA")
    assert load_one(labelled, frozenset({"EdDSA"})).algorithms == {"EdDSA"}
    assert load_one(labelled, frozenset({"Ed25519"})).algorithms == {"Ed25519"}
    assert "no allowed algorithm" in load_one(labelled, frozenset({"Ed448", "ES256"}))
    renamed = okp_jwk(ED25519_KEY, alg="Ed25519")
    assert "no allowed algorithm" in load_one(renamed, frozenset({"EdDSA"}))


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_fully_specified_edwards_signatures_verify(alg: str) -> None:
    ed25519_key = load_one(okp_jwk(ED25519_KEY))
    signature = ED25519_KEY.sign(b"head.body")
    assert verify_signature(ed25519_key, alg, b"head.body", signature)
    assert not verify_signature(ed25519_key, alg, b"head.other", signature)
    ed448_key = load_one(okp_jwk(ED448_KEY))
    assert verify_signature(ed448_key, "Ed448", b"head.body", ED448_KEY.sign(b"head.body"))


def _edwards_token(issuer: DevIssuer, private: Any, kid: str, alg: str) -> str:
    unsigned = compact({"alg": alg, "kid": kid, "typ": "at+jwt"}, issuer.claims(), b"")
    signing_input = unsigned.rsplit(".", 1)[0]
    signature = base64.urlsafe_b64encode(private.sign(signing_input.encode())).rstrip(b"=")
    return signing_input + "." + signature.decode()


@pytest.mark.anyio
async def test_fully_specified_edwards_tokens_through_the_middleware(issuer: DevIssuer) -> None:
    # RFC 9864: issuers now sign with "Ed25519"; it was refused (unsupported_algorithm), only
    # "EdDSA" worked. Keys come from the issuer's JWKS over HTTP, each bound to its curve.
    published = [
        okp_jwk(ED25519_KEY, kid="ed25519"),
        okp_jwk(ED448_KEY, kid="ed448"),
        okp_jwk(ED25519_KEY, kid="ed25519-labelled-eddsa", alg="EdDSA"),
        okp_jwk(ED448_KEY, kid="ed448-labelled-eddsa", alg="EdDSA"),
        okp_jwk(ED25519_KEY, kid="ed25519-labelled-ed25519", alg="Ed25519"),
        okp_jwk(ED448_KEY, kid="ed448-labelled-ed448", alg="Ed448"),
    ]
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": published}).encode())
    guard = issuer.guard()
    cases = [
        (ED25519_KEY, "ed25519", "Ed25519", 200),
        (ED25519_KEY, "ed25519", "EdDSA", 200),
        (ED448_KEY, "ed448", "Ed448", 200),
        (ED448_KEY, "ed448", "EdDSA", 200),
        (ED448_KEY, "ed448", "Ed25519", 401),  # another curve's name
        (ED25519_KEY, "ed25519", "Ed448", 401),
        # A JWK labelled with the deprecated "EdDSA": the same operation under its curve's
        # RFC 9864 name verifies, never the other curve's name (the key stays on its curve).
        (ED25519_KEY, "ed25519-labelled-eddsa", "EdDSA", 200),
        (ED25519_KEY, "ed25519-labelled-eddsa", "Ed25519", 200),
        (ED25519_KEY, "ed25519-labelled-eddsa", "Ed448", 401),
        (ED448_KEY, "ed448-labelled-eddsa", "EdDSA", 200),
        (ED448_KEY, "ed448-labelled-eddsa", "Ed448", 200),
        (ED448_KEY, "ed448-labelled-eddsa", "Ed25519", 401),
        # A JWK labelled with its RFC 9864 name verifies that name only.
        (ED25519_KEY, "ed25519-labelled-ed25519", "Ed25519", 200),
        (ED25519_KEY, "ed25519-labelled-ed25519", "EdDSA", 401),
        (ED25519_KEY, "ed25519-labelled-ed25519", "Ed448", 401),
        (ED448_KEY, "ed448-labelled-ed448", "Ed448", 200),
        (ED448_KEY, "ed448-labelled-ed448", "EdDSA", 401),
        (ED448_KEY, "ed448-labelled-ed448", "Ed25519", 401),
        # Signed by another key than the kid names: refused whatever the alg.
        (ED448_KEY, "ed25519-labelled-eddsa", "Ed25519", 401),
        (ED25519_KEY, "ed448-labelled-eddsa", "Ed448", 401),
    ]
    transport = httpx.ASGITransport(app=build_app(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for private, kid, alg, status in cases:
            token = _edwards_token(issuer, private, kid, alg)
            response = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == status, (kid, alg, response.text)
            if status == 401:
                assert response.json()["error"] == "invalid_token"


def test_an_ed448_key_never_verifies_ed25519() -> None:
    # Even if a key were listed for the other curve's name, the signature check refuses it.
    forced = VerificationKey("o1", frozenset({"Ed25519"}), ED448_KEY.public_key())
    assert not verify_signature(forced, "Ed25519", b"head.body", ED448_KEY.sign(b"head.body"))
    keys = KeySet([load_one(okp_jwk(ED448_KEY))])
    with pytest.raises(UnsupportedAlgorithmError):
        keys.key_for("o1", "Ed25519")
    assert "no allowed algorithm" in load_one(okp_jwk(ED448_KEY), frozenset({"Ed25519"}))


def test_configured_allow_list_narrows_keys() -> None:
    assert load_one(rsa_jwk(), frozenset({"RS256", "ES256"})).algorithms == {"RS256"}
    assert "no allowed algorithm" in load_one(rsa_jwk(), frozenset({"ES256"}))


@pytest.mark.parametrize(
    ("jwk", "why"),
    [
        (rsa_jwk(alg="HS256"), "does not match"),
        (rsa_jwk(alg="ES256"), "does not match"),
        (rsa_jwk(use="enc"), "use"),
        (rsa_jwk(key_ops=["encrypt"]), "key_ops"),
        (rsa_jwk(d="AQAB"), "private"),
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "o"}, "private or symmetric"),
        ({"kty": "RSA", "kid": "x", "n": "AQAB"}, "unusable"),
        ({"kty": "XYZ", "kid": "x"}, "unusable"),
        (rsa_jwk(kid=5), "kid"),
        ("not-an-object", "not a JSON object"),
    ],
    ids=["hs-alg", "ec-alg", "use-enc", "key-ops", "private", "oct", "broken", "kty", "kid", "str"],
)
def test_unusable_jwks_entries_are_skipped(jwk: Any, why: str) -> None:
    assert why in load_one(jwk)


SMALL_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505


@pytest.mark.parametrize("alg", [None, "RS256"])
def test_small_rsa_keys_are_skipped_as_weak(alg: str | None) -> None:
    # The reason names the weakness, a declared alg or not (it said "no allowed algorithm",
    # or "alg 'RS256' does not match the key type").
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(SMALL_RSA_KEY.public_key(), as_dict=True)
    jwk.update({} if alg is None else {"alg": alg})
    assert load_one(jwk) == "weak key: an RSA modulus of 1024 bits (under 2048)"


def _b64_int(number: int) -> str:
    encoded = base64.urlsafe_b64encode(number.to_bytes(-(-number.bit_length() // 8), "big"))
    return encoded.rstrip(b"=").decode()


@pytest.mark.parametrize("alg", [None, "RS256"])
def test_rsa_keys_over_16384_bits_are_skipped_as_unusable(alg: str | None) -> None:
    """OpenSSL loads such a key, then refuses to verify any signature with it."""
    n = (1 << 16400) | (RSA_KEY.public_key().public_numbers().n << 8) | 1
    jwk = rsa_jwk(n=_b64_int(n), **({} if alg is None else {"alg": alg}))
    assert load_one(jwk) == "an RSA modulus of 16401 bits: OpenSSL verifies with 16384 at most"
    public = rsa.RSAPublicNumbers(65537, n).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ConfigurationError, match="16401 bits"):
        key_from_pem(pem, ALL)


def _rsa_jwk_with_exponent(e: int) -> dict[str, Any]:
    encoded = base64.urlsafe_b64encode(e.to_bytes(-(-e.bit_length() // 8), "big"))
    return rsa_jwk(e=encoded.rstrip(b"=").decode())


@pytest.mark.parametrize("bits", [34, 64, 2040])
def test_rsa_keys_with_a_huge_public_exponent_are_skipped(bits: int) -> None:
    """Verifying under such a key is a full-size exponentiation (a 3072-bit modulus takes
    a 3072-bit exponent): a hundred times the usual cost, for every bad signature too."""
    e = (1 << (bits - 1)) | 1
    why = "weak key: an RSA public exponent over 33 bits"
    assert load_one(_rsa_jwk_with_exponent(e)) == why
    assert load_one({**_rsa_jwk_with_exponent(e), "alg": "PS256"}) == why


@pytest.mark.parametrize("e", [3, 65537, 2**32 + 1])
def test_rsa_keys_with_usual_public_exponents_load(e: int) -> None:
    assert load_one(_rsa_jwk_with_exponent(e)).algorithms == load_one(rsa_jwk()).algorithms


_P25519 = 2**255 - 19
# Every encoding of a point of order 1, 2, 4 or 8 (libsodium's blocklist, with the sign bit
# clear), non-canonical ones (y >= p) included.
_SMALL_ORDER_ED25519 = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    (_P25519 - 1).to_bytes(32, "little"),
    _P25519.to_bytes(32, "little"),
    (_P25519 + 1).to_bytes(32, "little"),
]


@pytest.mark.parametrize("sign", [0, 0x80])
@pytest.mark.parametrize("point", _SMALL_ORDER_ED25519, ids=lambda point: point[:4].hex())
def test_small_order_ed25519_keys_are_skipped(point: bytes, sign: int) -> None:
    """Such a key verifies a forged signature (R the identity, S zero) for any message, or
    for one in a few: anyone could mint tokens under it. OpenSSL loads it all the same."""
    encoded = point[:31] + bytes([point[31] | sign])
    x = base64.urlsafe_b64encode(encoded).rstrip(b"=").decode()
    why = "weak key: an Ed25519 point of small order"
    assert load_one({"kty": "OKP", "crv": "Ed25519", "x": x}) == why
    assert load_one({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "Ed25519"}) == why


def _small_order_by_doubling(encoded: bytes) -> bool:
    """RFC 8032 §5.1.3 decoding, then the point doubled three times: [8]A is the identity."""
    p = _P25519
    d = -121665 * pow(121666, p - 2, p) % p
    y = (int.from_bytes(encoded, "little") & ((1 << 255) - 1)) % p
    x2 = (y * y - 1) * pow(d * y * y + 1, p - 2, p) % p
    x = pow(x2, (p + 3) // 8, p)
    if (x * x - x2) % p:
        x = x * pow(2, (p - 1) // 4, p) % p
    if (x * x - x2) % p:
        return False  # not on the curve
    for _ in range(3):  # the complete twisted Edwards addition law, a = -1, P + P
        t = d * x * x * y * y % p
        x, y = (
            2 * x * y * pow(1 + t, p - 2, p) % p,
            (y * y + x * x) * pow(1 - t, p - 2, p) % p,
        )
    return x == 0 and y == 1


def test_the_small_order_lookup_agrees_with_the_curve_arithmetic() -> None:
    random = [os.urandom(32) for _ in range(200)]
    genuine = [ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()]
    signed = [point[:31] + bytes([point[31] | 0x80]) for point in _SMALL_ORDER_ED25519]
    for encoded in [*_SMALL_ORDER_ED25519, *signed, *random, *genuine]:
        assert _ed25519_small_order(encoded) is _small_order_by_doubling(encoded)


def test_ed25519_keys_load_without_field_arithmetic() -> None:
    # Field inversions in Python cost about a millisecond per key: a 512 KB key set of 6 000
    # Ed25519 keys held the event loop for seconds at each fetch (or a DPoP proof key cost
    # a millisecond per request). Counted: the calls to pow() while loading keys.
    jwks = {
        "keys": [
            OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate().public_key(), as_dict=True)
            for _ in range(20)
        ]
    }
    calls = []

    def count(frame: Any, event: str, function: Any) -> None:
        if event == "c_call" and function is pow:
            calls.append(function)

    sys.setprofile(count)
    try:
        keys, _ = keys_from_jwks(jwks, ALL)
    finally:
        sys.setprofile(None)
    assert len(keys) == 20
    assert calls == []


def test_the_identity_as_an_ed25519_key_would_verify_anything() -> None:
    identity = (1).to_bytes(32, "little")
    key = VerificationKey(
        "z", frozenset({"EdDSA"}), ed25519.Ed25519PublicKey.from_public_bytes(identity)
    )
    assert verify_signature(key, "EdDSA", b"any.thing", identity + bytes(32))


@pytest.mark.parametrize(
    ("private_key", "count"),
    [(ed25519.Ed25519PrivateKey, 50), (ed448.Ed448PrivateKey, 20)],
    ids=["ed25519", "ed448"],
)
def test_genuine_edwards_keys_still_load(private_key: Any, count: int) -> None:
    for _ in range(count):
        public = private_key.generate().public_key()
        jwk: dict[str, Any] = OKPAlgorithm.to_jwk(public, as_dict=True)
        keys, _ = keys_from_jwks({"keys": [jwk]}, ALL)
        assert len(keys) == 1


_P448 = 2**448 - 2**224 - 1
# Every point of order 1, 2 or 4 on edwards448 ((0, 1), (0, -1), (1, 0), (-1, 0)) by its y,
# non-canonical encodings (y >= p) included.
_SMALL_ORDER_ED448 = [1, _P448 - 1, 0, _P448, _P448 + 1]
# RFC 8032 §5.2: the Ed448 base point B, encoded.
_ED448_B = bytes.fromhex(
    "14fa30f25b790898adc8d74e2c13bdfdc4397ce61cffd33ad7c2a0051e9c78874098a36c7373ea4b62c7c9"
    "563720768824bcb66e71463f6900"
)


@pytest.mark.parametrize("sign", [0, 0x80])
@pytest.mark.parametrize("y", _SMALL_ORDER_ED448, ids=lambda y: f"y{y % _P448}-{y >= _P448}")
def test_small_order_ed448_keys_are_skipped(y: int, sign: int) -> None:
    """(+-1, 0) verifies R = B, S = 1 for every message under OpenSSL (RFC 8032 §5.2)."""
    encoded = y.to_bytes(57, "little")
    encoded = encoded[:56] + bytes([encoded[56] | sign])
    x = base64.urlsafe_b64encode(encoded).rstrip(b"=").decode()
    why = "weak key: an Ed448 point of small order"
    assert load_one({"kty": "OKP", "crv": "Ed448", "x": x}) == why
    assert load_one({"kty": "OKP", "crv": "Ed448", "x": x, "alg": "EdDSA"}) == why


def test_a_small_order_ed448_key_would_verify_anything() -> None:
    point = bytes(56) + b"\x80"  # (1, 0), of order 4
    key = VerificationKey("z", frozenset({"EdDSA"}), ed448.Ed448PublicKey.from_public_bytes(point))
    forged = _ED448_B + (1).to_bytes(57, "little")
    assert verify_signature(key, "EdDSA", b"any.thing", forged)
    assert verify_signature(key, "EdDSA", b"other.thing", forged)


@pytest.mark.parametrize("document", [None, [], {}, {"keys": {}}, "keys"])
def test_not_a_jwks(document: Any) -> None:
    with pytest.raises(ValueError, match="not a JWK Set"):
        keys_from_jwks(document, ALL)


def test_issuer_metadata_given_as_a_jwks_names_its_key_set() -> None:
    # The openid-configuration URL given as the jwks_uri: say where its keys are.
    metadata = {"issuer": "https://as.example", "jwks_uri": "https://as.example/keys\n"}
    with pytest.raises(
        ValueError, match=r"metadata, not a JWK Set: its jwks_uri is 'https://as.example/keys\\n'"
    ):
        keys_from_jwks(metadata, ALL)
    with pytest.raises(ValueError, match=r"not a JWK Set: expected an object with a 'keys' array$"):
        keys_from_jwks({"jwks_uri": 5}, ALL)


def test_pem_keys() -> None:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_from_pem(pem, ALL).algorithms >= {"RS256"}
    with pytest.raises(ConfigurationError):
        key_from_pem("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----", ALL)
    with pytest.raises(ConfigurationError):
        key_from_pem(pem, frozenset({"ES256"}))
    small = SMALL_RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ConfigurationError, match="weak key: an RSA modulus of 1024 bits"):
        key_from_pem(small, ALL)


def test_secrets_must_be_long_enough() -> None:
    assert key_from_secret("s" * 32, frozenset({"HS256", "HS512"})).algorithms == {"HS256"}
    with pytest.raises(ConfigurationError):
        key_from_secret("short", frozenset({"HS256"}))


def test_key_set_lookup() -> None:
    rsa_key = load_one(rsa_jwk())
    ec_key = load_one(ec_jwk())
    keys = KeySet([rsa_key, ec_key])
    assert keys.candidates("r1") == [rsa_key]
    assert keys.candidates("nope") == []
    assert keys.candidates(None) == []
    assert keys.kids == ["e1", "r1"]
    single = KeySet([rsa_key])
    assert single.candidates(None) == [rsa_key]
    assert single.candidates("other") == []


def test_key_for_binds_the_alg_to_the_named_key() -> None:
    rsa_key = load_one(rsa_jwk())
    ec_key = load_one(ec_jwk())
    keys = KeySet([rsa_key, ec_key])
    assert keys.key_for("r1", "RS256") is rsa_key
    assert keys.key_for("r1", "PS384") is rsa_key
    assert keys.key_for("e1", "ES256") is ec_key
    assert keys.key_for("nope", "RS256") is None
    assert keys.key_for(None, "RS256") is None  # several keys: a token must name one
    # RFC 8725 §3.1: a kid naming a key of another type is algorithm confusion, not a miss.
    for kid, alg in (("r1", "ES256"), ("e1", "RS256"), ("r1", "HS256")):
        with pytest.raises(UnsupportedAlgorithmError):
            keys.key_for(kid, alg)
    single = KeySet([rsa_key])
    assert single.key_for(None, "RS256") is rsa_key
    assert single.key_for("other", "RS256") is None


def test_key_set_keeps_unchanged_keys_across_refreshes() -> None:
    first = KeySet(keys_from_jwks({"keys": [rsa_jwk(), ec_jwk()]}, ALL)[0])
    second = KeySet(keys_from_jwks({"keys": [rsa_jwk()]}, ALL)[0], previous=first)
    (old_rsa,) = first.candidates("r1")
    (old_ec,) = first.candidates("e1")
    assert old_rsa in second
    assert old_ec not in second


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256"])
def test_verify_signature_for_every_algorithm_of_the_key(alg: str) -> None:
    private = EC_KEY if alg.startswith("ES") else RSA_KEY
    key = load_one(ec_jwk() if alg.startswith("ES") else rsa_jwk())
    signing_input = b"header.payload"
    signature = get_default_algorithms()[alg].sign(signing_input, private)
    assert verify_signature(key, alg, signing_input, signature)
    assert not verify_signature(key, alg, signing_input + b"x", signature)
    assert not verify_signature(key, alg, signing_input, bytes(len(signature)))
    if alg.startswith("RS"):  # the same key under PSS does not accept a PKCS #1 v1.5 signature
        assert not verify_signature(key, "PS" + alg[2:], signing_input, signature)


@pytest.mark.parametrize(
    "secret",
    [
        "-----BEGIN PUBLIC KEY-----\n" + "A" * 64 + "\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\n" + b"B" * 64 + b"\n-----END CERTIFICATE-----",
        "ssh-rsa " + "C" * 64 + " user@host",
    ],
)
def test_a_public_key_is_no_shared_secret(secret: str | bytes) -> None:
    # RFC 8725 §3.2: HMAC keyed with a public key lets anyone forge HS* tokens.
    with pytest.raises(ConfigurationError, match="is a public key"):
        key_from_secret(secret, frozenset({"HS256"}))


@pytest.mark.parametrize(
    "encoding", ["jwk", "der", "der_certificate"], ids=["jwk", "der", "der-certificate"]
)
def test_a_public_key_in_another_encoding_is_no_shared_secret(encoding: str) -> None:
    secret = {
        "jwk": lambda: json.dumps(rsa_jwk()),
        "der": lambda: RSA_KEY.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "der_certificate": lambda: self_signed_der(RSA_KEY),
    }[encoding]()
    with pytest.raises(ConfigurationError, match="is a public key"):
        key_from_secret(secret, frozenset({"HS256"}))


def test_a_random_secret_starting_with_a_brace_is_still_a_secret() -> None:
    assert key_from_secret(b"{" + b"s" * 40, frozenset({"HS256"})).algorithms == {"HS256"}
