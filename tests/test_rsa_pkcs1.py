"""RS256/384/512 verification (RFC 8017 §8.2.2): every encoded message but the exact one fails;
PS* signatures of another length than the modulus fail too (RFC 8017 §8.1.2).

Signatures here are made with the raw RSA private operation over hand-built encoded
messages, so each malformation a lenient verifier has been fooled by can be tried
(Bleichenbacher 2006, BERserk, trailing data, other hashes, shortened signatures).
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bearerguard._core.keys import VerificationKey, verify_signature

PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NUMBERS = PRIVATE.private_numbers()
MODULUS = NUMBERS.public_numbers.n
SIZE = 256  # octets in the modulus
KEY = VerificationKey(
    kid="r1", algorithms=frozenset({"RS256", "RS384", "RS512"}), key=PRIVATE.public_key()
)
MESSAGE = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0"
SHA256_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
SHA1_INFO = bytes.fromhex("3021300906052b0e03021a05000414")


def raw_sign(encoded: bytes) -> bytes:
    """The RSA private operation (RSASP1) over an encoded message of the modulus's length."""
    assert len(encoded) == SIZE
    value = pow(int.from_bytes(encoded, "big"), NUMBERS.d, MODULUS)
    return value.to_bytes(SIZE, "big")


def encoded(block: bytes, *, padding_byte: int = 0xFF, block_type: int = 1) -> bytes:
    """00 || block type || padding || 00 || block, filling the modulus's length."""
    filler = bytes([padding_byte]) * (SIZE - 3 - len(block))
    return bytes([0, block_type]) + filler + b"\x00" + block


def digest_info(message: bytes = MESSAGE) -> bytes:
    return SHA256_INFO + hashlib.sha256(message).digest()


def test_the_exact_encoding_verifies() -> None:
    signature = raw_sign(encoded(digest_info()))
    assert signature == PRIVATE.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    assert verify_signature(KEY, "RS256", MESSAGE, signature)


@pytest.mark.parametrize(
    ("alg", "hash_algorithm"),
    [("RS256", hashes.SHA256()), ("RS384", hashes.SHA384()), ("RS512", hashes.SHA512())],
)
def test_each_hash_verifies_only_under_its_own_alg(
    alg: str, hash_algorithm: hashes.HashAlgorithm
) -> None:
    signature = PRIVATE.sign(MESSAGE, padding.PKCS1v15(), hash_algorithm)
    assert verify_signature(KEY, alg, MESSAGE, signature)
    for other in {"RS256", "RS384", "RS512"} - {alg}:
        assert not verify_signature(KEY, other, MESSAGE, signature)


@pytest.mark.parametrize(
    "em",
    [
        # Trailing data after the hash, paid for with a shorter padding (BERserk-style).
        encoded(digest_info() + b"\x00" * 4),
        encoded(digest_info() + b"garbage"),
        # A zero inside the padding: the block after it is not the DigestInfo.
        encoded(b"\xff" * 20 + b"\x00" + digest_info()),
        # Padding of another byte, or of the encryption block type.
        encoded(digest_info(), padding_byte=0xFE),
        encoded(digest_info(), block_type=2),
        # Another hash's DigestInfo, the right hash without its DigestInfo, parameters
        # left out of the AlgorithmIdentifier, another message's hash.
        encoded(SHA1_INFO + hashlib.sha1(MESSAGE).digest()),  # noqa: S324 - the attack
        encoded(hashlib.sha256(MESSAGE).digest()),
        encoded(
            bytes.fromhex("302f300b0609608648016503040201")
            + b"\x04\x20"
            + hashlib.sha256(MESSAGE).digest()
        ),
        encoded(digest_info(b"another message")),
        # Under eight bytes of padding.
        b"\x00\x01" + b"\xff" * 7 + b"\x00" + digest_info().rjust(SIZE - 10, b"\x00"),
    ],
    ids=[
        "trailing-zeros",
        "trailing-garbage",
        "zero-in-padding",
        "padding-fe",
        "block-type-2",
        "sha1-digest-info",
        "bare-hash",
        "absent-parameters",
        "other-message",
        "short-padding",
    ],
)
def test_every_other_encoding_fails(em: bytes) -> None:
    assert not verify_signature(KEY, "RS256", MESSAGE, raw_sign(em))


def test_a_signature_not_of_the_modulus_length_fails() -> None:
    # RFC 8017 §8.2.2 step 1. A valid signature with leading zero octets dropped would
    # still recover correctly, so the length is checked on its own.
    message = next(
        m
        for m in (MESSAGE + str(i).encode() for i in range(100_000))
        if raw_sign(encoded(digest_info(m)))[0] == 0
    )
    signature = raw_sign(encoded(digest_info(message)))
    assert verify_signature(KEY, "RS256", message, signature)
    assert not verify_signature(KEY, "RS256", message, signature[1:])
    assert not verify_signature(KEY, "RS256", message, b"\x00" + signature)
    assert not verify_signature(KEY, "RS256", message, b"")


@pytest.mark.parametrize(
    "signature",
    [
        MODULUS.to_bytes(SIZE, "big"),  # equal to the modulus: out of range (RFC 8017 §5.2.2)
        b"\xff" * SIZE,
        bytes(SIZE),
        (1).to_bytes(SIZE, "big"),
        (MODULUS - 1).to_bytes(SIZE, "big"),
    ],
    ids=["modulus", "all-ones", "zero", "one", "modulus-minus-one"],
)
def test_degenerate_signature_values_fail(signature: bytes) -> None:
    assert not verify_signature(KEY, "RS256", MESSAGE, signature)


@pytest.mark.parametrize("bits", [2050, 3072])
def test_moduli_of_other_sizes(bits: int) -> None:
    # A 2050-bit modulus takes 257-octet signatures: the length rule rounds up.
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    key = VerificationKey(kid=None, algorithms=frozenset({"RS256"}), key=private.public_key())
    signature = private.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    assert len(signature) == (bits + 7) // 8
    assert verify_signature(key, "RS256", MESSAGE, signature)
    assert not verify_signature(key, "RS256", MESSAGE + b"x", signature)
    assert not verify_signature(key, "RS256", MESSAGE, signature[1:] + b"\x00")


@pytest.mark.parametrize(
    ("alg", "hash_algorithm"), [("PS256", hashes.SHA256()), ("PS512", hashes.SHA512())]
)
def test_a_pss_signature_not_of_the_modulus_length_fails(
    alg: str, hash_algorithm: hashes.HashAlgorithm
) -> None:
    # RFC 8017 §8.1.2 step 1 holds for RSASSA-PSS too; OpenSSL alone accepts a signature
    # whose leading zero octets were dropped: another token string with the same signature.
    key = VerificationKey(kid="p1", algorithms=frozenset({alg}), key=PRIVATE.public_key())
    scheme = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=hash_algorithm.digest_size)
    signature = next(
        s
        for s in (PRIVATE.sign(MESSAGE, scheme, hash_algorithm) for _ in range(100_000))
        if s[0] == 0
    )
    assert verify_signature(key, alg, MESSAGE, signature)
    assert not verify_signature(key, alg, MESSAGE, signature[1:])
    assert not verify_signature(key, alg, MESSAGE, b"\x00" + signature)
    assert not verify_signature(key, alg, MESSAGE, b"")
