"""The attack corpus: forged, confused and malformed tokens, driven through the real middleware.

Every case sends one request through ``BearerGuardMiddleware`` in front of a Starlette app,
with a guard that trusts a ``DevIssuer`` serving discovery and its JWKS on 127.0.0.1, and
asserts the whole refusal: the exact status (400 or 401, so never a 200 and never a 500), the
``WWW-Authenticate`` error code, exactly one audit event with the expected ``reason``, and
that neither the token nor its signature leaks into the response body or the audit event.

The classes covered are those of RFC 8725 §2 and the CVE history of JWT libraries:

* ``alg: none`` in any case (the 2015 disclosures, CVE-2022-23540) and ``alg`` of the wrong
  type;
* algorithm confusion: HMAC keyed with a public key in any encoding (CVE-2015-9235,
  CVE-2016-10555, CVE-2017-11424, CVE-2022-29217), or with an empty key for an RSA JWK that
  declares no ``alg`` (CVE-2026-44699), and ``alg`` not matching the key's type;
* psychic ECDSA signatures (CVE-2022-21449) and malformed ECDSA signatures;
* keys supplied by the token itself: ``jwk`` (CVE-2018-0114), ``jku``, ``x5u``, ``x5c``, and
  ``kid`` injection (path traversal, SQL, non-string);
* header parameters that change processing: ``crit``, ``b64`` (RFC 7797), JWE, ``zip``,
  nested JWTs and sign/encrypt confusion (CVE-2023-51774);
* JSON parser differentials: duplicate members, encodings, non-finite numbers, huge integers
  (CVE-2020-10735), deep nesting;
* claim type confusion in ``exp``/``nbf``/``iat``/``iss``/``aud``/``sub``/``scope``;
* compact-serialization framing, RFC 6750 header framing, and size bombs;
* splicing signatures and payloads, retired keys, and key sets publishing unusable keys.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from structlog.testing import capture_logs

from bearerguard import BearerGuard, RefreshPolicy
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.testing import DevIssuer, Override, SigningKey

pytestmark = pytest.mark.anyio

# -- vocabulary ------------------------------------------------------------------------------

MALFORMED = "malformed_token"
UNSUPPORTED = "unsupported_algorithm"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
INVALID_ISSUER = "invalid_issuer"
INVALID_AUDIENCE = "invalid_audience"
INVALID_CLAIM = "invalid_claim"
INVALID_REQUEST = "invalid_request"
MISSING_TOKEN = "missing_token"

SECRET = b"s" * 48  # a shared secret long enough for HS256 and HS384
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ALGORITHMS = get_default_algorithms()
DROP = object()  # a header or claim value meaning "leave this member out"
ATTACKER_PATH = "/attacker"  # where header-supplied URLs point; must never be fetched
MIN_SECRET_CHARS = 16  # credentials and signature segments this long are checked for leaks
ATTACKER_SECRET = b"attacker-chosen-secret-" * 2

# -- encoding and signing --------------------------------------------------------------------

Signer = Callable[[bytes], bytes]


def b64u(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def by_key(private_key: Any, alg: str) -> Signer:
    """Sign with a private key under ``alg``, as an honest library would."""
    return lambda message: ALGORITHMS[alg].sign(message, private_key)


def by_hmac(secret: bytes, alg: str = "HS256") -> Signer:
    """HMAC keyed with arbitrary bytes: PyJWT refuses PEM keys here, an attacker does not."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return lambda message: hmac.new(secret, message, digest).digest()


def fixed(signature: bytes) -> Signer:
    return lambda _message: signature


def assemble(header_segment: str, payload_segment: str, sign: Signer) -> str:
    signing_input = f"{header_segment}.{payload_segment}"
    return f"{signing_input}.{b64u(sign(signing_input.encode()))}"


def forge(
    header: Mapping[str, Any] | bytes, payload: Mapping[str, Any] | bytes, sign: Signer
) -> str:
    """A compact JWS from a header and payload given as objects or as raw bytes."""
    raw_header = header if isinstance(header, bytes) else dumps(dict(header))
    raw_payload = payload if isinstance(payload, bytes) else dumps(dict(payload))
    return assemble(b64u(raw_header), b64u(raw_payload), sign)


def segments(token: str) -> list[str]:
    return token.split(".")


def noncanonical(segment: str) -> str:
    """The same bytes with nonzero unused low bits in the last character (RFC 4648 §3.5)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 in (2, 3), "a segment without unused bits"
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) | 1]


def header_segment_with_unused_bits(header: Mapping[str, Any]) -> str:
    """Encode ``header`` padded with JSON white space until its last character has spare bits."""
    raw = dumps(dict(header))
    while len(raw) % 3 == 0:
        raw += b" "
    return b64u(raw)


def split_raw(signature: bytes) -> tuple[int, int]:
    return int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")


def raw_signature(r: int, s: int, size: int = 32) -> bytes:
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


# -- the attacker's material ------------------------------------------------------------------


@dataclass(frozen=True)
class Attacker:
    """Keys the attacker controls, and a 1024-bit RSA key no one should trust."""

    rsa: RSAPrivateKey
    ec: EllipticCurvePrivateKey
    weak_rsa: RSAPrivateKey
    certificate: bytes  # DER, self-signed for ``rsa``

    def rsa_jwk(self, **members: Any) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        return {**jwk, **members}

    def ec_jwk(self, **members: Any) -> dict[str, Any]:
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        return {**jwk, **members}


def self_signed_der(key: RSAPrivateKey) -> bytes:
    """A self-signed certificate for ``key``, DER-encoded."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def attacker() -> Attacker:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Attacker(
        rsa=key,
        ec=ec.generate_private_key(ec.SECP256R1()),
        # Weak on purpose: a JWKS publishing it must not get it used (RFC 8725 §3.5).
        weak_rsa=rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
        certificate=self_signed_der(key),
    )


# -- the lab: the trusted issuer's keys and token builders ------------------------------------


@dataclass(frozen=True)
class Lab:
    """What a case builds its request from: the trusted issuer and the attacker."""

    issuer: DevIssuer
    attacker: Attacker

    @property
    def rsa(self) -> SigningKey:
        return self.issuer.key("RS256")

    @property
    def ec(self) -> SigningKey:
        return self.issuer.key("ES256")

    def pem(self, key: SigningKey, fmt: serialization.PublicFormat | None = None) -> bytes:
        encoded: bytes = key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, fmt or serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return encoded

    def der(self, key: SigningKey) -> bytes:
        encoded: bytes = key.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return encoded

    def header(self, key: SigningKey | None = None, **members: Any) -> dict[str, Any]:
        """The header the issuer would write, with members changed (``DROP`` removes one)."""
        key = key or self.rsa
        header = {"alg": key.algorithm, "kid": key.kid, "typ": "at+jwt", **members}
        return {name: value for name, value in header.items() if value is not DROP}

    def payload(self, *, raw: bytes = b"", **claims: Any) -> bytes:
        """Valid claims with some changed (``DROP`` removes one), plus raw JSON members."""
        values = self.issuer.claims(
            **{name: value for name, value in claims.items() if value is not DROP}
        )
        for name, value in claims.items():
            if value is DROP:
                values.pop(name, None)
        text = dumps(values)
        return text[:-1] + b"," + raw + b"}" if raw else text

    def token(
        self,
        *,
        key: SigningKey | None = None,
        header: Mapping[str, Any] | bytes | None = None,
        payload: Mapping[str, Any] | bytes | None = None,
        sign: Signer | None = None,
        **claims: Any,
    ) -> str:
        """A token the trusted issuer signed (unless ``sign`` says otherwise)."""
        key = key or self.rsa
        return forge(
            self.header(key) if header is None else header,
            self.payload(**claims) if payload is None else payload,
            sign or by_key(key.private_key, key.algorithm),
        )

    def signed_by_issuer(
        self, header: Mapping[str, Any] | bytes, payload: bytes | None = None
    ) -> str:
        """A validly signed token (with the RS256 key) around a hostile header or payload."""
        return self.token(header=header, payload=payload)

    def attacker_token(self, header: Mapping[str, Any], **claims: Any) -> str:
        return self.token(header=header, sign=by_key(self.attacker.rsa, "RS256"), **claims)

    def url(self, name: str) -> str:
        return f"{self.issuer.url}{ATTACKER_PATH}/{name}"


@dataclass(frozen=True)
class Req:
    """A request's ``Authorization`` header values and query string."""

    authorization: tuple[bytes, ...]
    query: str = ""


def bearer(token: str | bytes, scheme: bytes = b"Bearer ") -> Req:
    return Req((scheme + (token.encode() if isinstance(token, str) else token),))


def headers(*values: bytes | str) -> Req:
    return Req(tuple(value.encode() if isinstance(value, str) else value for value in values))


# -- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One attack and the refusal it must get."""

    id: str
    build: Callable[[Lab], Req]
    reason: str
    status: int = 401
    error: str | None = "invalid_token"
    detail: str | None = None  # a substring the audit event's detail must hold
    options: Mapping[str, Any] = field(default_factory=dict)  # BearerGuard options
    jwks: Callable[[Lab], list[dict[str, Any]]] | None = None  # extra keys to publish


def refused(case_id: str, reason: str, build: Callable[[Lab], Req], **kw: Any) -> Case:
    """A token refused with 401 ``invalid_token``."""
    return Case(case_id, build, reason, **kw)


def invalid_request(case_id: str, build: Callable[[Lab], Req]) -> Case:
    """A request refused with 400 ``invalid_request`` (RFC 6750 §3.1)."""
    return Case(case_id, build, INVALID_REQUEST, status=400, error="invalid_request")


def no_credentials(case_id: str, build: Callable[[Lab], Req]) -> Case:
    """No bearer credentials at all: 401 with a bare challenge (RFC 6750 §3.1)."""
    return Case(case_id, build, MISSING_TOKEN, error=None)


def with_header(
    signer: Callable[[Lab], Signer] | None = None, **members: Any
) -> Callable[[Lab], Req]:
    """A request whose token carries the issuer's header with ``members`` changed.

    Signed by the issuer's RS256 key unless ``signer`` makes the signer from the lab.
    """

    def build(lab: Lab) -> Req:
        sign = None if signer is None else signer(lab)
        return bearer(lab.token(header=lab.header(**members), sign=sign))

    return build


def hmac_keyed_with(encode: Callable[[Lab], bytes], alg: str = "HS256") -> Callable[[Lab], Signer]:
    return lambda lab: by_hmac(encode(lab), alg)


def _alg_none_cases() -> list[Case]:
    cases = []
    signatures: dict[str, Callable[[Lab], Signer]] = {
        "empty_sig": lambda _lab: fixed(b""),
        "garbage_sig": lambda _lab: fixed(b"\x00" * 32),
        "real_rs256_sig": lambda lab: by_key(lab.rsa.private_key, "RS256"),
    }
    for alg in ("none", "None", "NONE", "nOnE"):
        for sig_name, signer in signatures.items():
            # An empty third segment is no compact JWS at all; any other is refused for alg.
            reason = MALFORMED if sig_name == "empty_sig" else UNSUPPORTED
            cases.append(refused(f"alg_{alg}_{sig_name}", reason, with_header(signer, alg=alg)))
    odd_algs: list[tuple[str, object]] = [
        ("missing", DROP),
        ("null", None),
        ("empty", ""),
        ("number", 256),
        ("true", True),
        ("list", ["RS256"]),
        ("object", {"name": "RS256"}),
        ("lowercase_rs256", "rs256"),
        ("padded_rs256", " RS256"),
        ("none_with_nul", "none\u0000"),
    ]
    for name, value in odd_algs:
        cases.append(refused(f"alg_{name}", UNSUPPORTED, with_header(alg=value)))
    return cases


def _confusion_cases() -> list[Case]:
    """HMAC keyed with the public key (refused: HS* is not allowed), and alg/key mismatches."""
    encodings: dict[str, Callable[[Lab], bytes]] = {
        "rsa_pem_spki": lambda lab: lab.pem(lab.rsa),
        "rsa_pem_pkcs1": lambda lab: lab.pem(lab.rsa, serialization.PublicFormat.PKCS1),
        "rsa_pem_no_newline": lambda lab: lab.pem(lab.rsa).rstrip(b"\n"),
        "rsa_der": lambda lab: lab.der(lab.rsa),
        "rsa_jwk_json": lambda lab: json.dumps(lab.rsa.public_jwk()).encode(),
        "rsa_n": lambda lab: lab.rsa.public_jwk()["n"].encode(),
        "rsa_n_bytes": lambda lab: base64.urlsafe_b64decode(lab.rsa.public_jwk()["n"] + "=="),
        "ec_pem": lambda lab: lab.pem(lab.ec),
        "ec_der": lambda lab: lab.der(lab.ec),
        "ec_jwk_json": lambda lab: json.dumps(lab.ec.public_jwk()).encode(),
    }
    cases = [
        refused(
            f"hs256_keyed_with_{name}",
            UNSUPPORTED,
            with_header(hmac_keyed_with(encode), alg="HS256"),
        )
        for name, encode in encodings.items()
    ]
    cases += [
        refused(
            f"{alg.lower()}_keyed_with_rsa_pem_no_kid",
            UNSUPPORTED,
            with_header(hmac_keyed_with(encodings["rsa_pem_spki"], alg), alg=alg, kid=DROP),
        )
        for alg in ("HS256", "HS384", "HS512")
    ]
    cases += [
        refused(
            "rs256_header_with_ec_kid",
            UNSUPPORTED,
            lambda lab: bearer(
                lab.token(
                    header=lab.header(lab.ec, alg="RS256"), sign=by_key(lab.attacker.rsa, "RS256")
                )
            ),
        ),
        refused(
            "es256_header_with_rsa_kid",
            UNSUPPORTED,
            lambda lab: bearer(
                lab.token(
                    header=lab.header(lab.rsa, alg="ES256"), sign=by_key(lab.attacker.ec, "ES256")
                )
            ),
        ),
        refused(
            # The JWK says alg RS256: even a genuine PSS signature by the same key is refused.
            "ps256_by_the_rs256_key",
            UNSUPPORTED,
            lambda lab: bearer(
                lab.token(header=lab.header(alg="PS256"), sign=by_key(lab.rsa.private_key, "PS256"))
            ),
        ),
        refused(
            "rs512_by_the_rs256_key",
            UNSUPPORTED,
            lambda lab: bearer(
                lab.token(header=lab.header(alg="RS512"), sign=by_key(lab.rsa.private_key, "RS512"))
            ),
        ),
        refused(
            "es384_header_with_p256_kid",
            UNSUPPORTED,
            lambda lab: bearer(
                lab.token(header=lab.header(lab.ec, alg="ES384"), sign=fixed(b"\x01" * 96))
            ),
        ),
        refused(
            "eddsa_header_with_rsa_kid",
            UNSUPPORTED,
            lambda lab: bearer(lab.token(header=lab.header(alg="EdDSA"), sign=fixed(b"\x01" * 64))),
        ),
    ]
    return cases


def _ecdsa_cases() -> list[Case]:
    """CVE-2022-21449 and friends: every one carries the trusted EC key's kid."""

    def ecdsa(name: str, forge_signature: Callable[[Lab, bytes], bytes]) -> Case:
        def build(lab: Lab) -> Req:
            genuine = by_key(lab.ec.private_key, "ES256")

            def sign(message: bytes) -> bytes:
                return forge_signature(lab, genuine(message))

            return bearer(lab.token(key=lab.ec, sign=sign, sub="psychic"))

        return refused(f"ecdsa_{name}", BAD_SIGNATURE, build)

    def der(_lab: Lab, genuine: bytes) -> bytes:
        return encode_dss_signature(*split_raw(genuine))

    n = P256_ORDER
    return [
        ecdsa("psychic_all_zero_64_bytes", lambda _lab, _sig: bytes(64)),
        ecdsa("r_zero", lambda _lab, sig: raw_signature(0, split_raw(sig)[1])),
        ecdsa("s_zero", lambda _lab, sig: raw_signature(split_raw(sig)[0], 0)),
        ecdsa("r_equals_order", lambda _lab, sig: raw_signature(n, split_raw(sig)[1])),
        ecdsa("s_equals_order", lambda _lab, sig: raw_signature(split_raw(sig)[0], n)),
        ecdsa("r_and_s_equal_order", lambda _lab, _sig: raw_signature(n, n)),
        ecdsa(
            "r_plus_order_66_bytes",
            lambda _lab, sig: raw_signature(split_raw(sig)[0] + n, split_raw(sig)[1], 33),
        ),
        ecdsa("r_s_all_ones", lambda _lab, _sig: b"\xff" * 64),
        ecdsa("r_s_one", lambda _lab, _sig: raw_signature(1, 1)),
        ecdsa("sig_63_bytes", lambda _lab, sig: sig[:63]),
        ecdsa("sig_65_bytes", lambda _lab, sig: sig + b"\x00"),
        ecdsa("sig_leading_zero_byte", lambda _lab, sig: b"\x00" + sig),
        ecdsa("sig_96_bytes_es384_length", lambda _lab, sig: sig + sig[:32]),
        ecdsa("sig_doubled", lambda _lab, sig: sig + sig),
        ecdsa("sig_one_byte", lambda _lab, _sig: b"\x00"),
        ecdsa("sig_der_encoded", der),
        ecdsa("r_s_swapped", lambda _lab, sig: sig[32:] + sig[:32]),
    ]


def _header_key_cases() -> list[Case]:
    """Keys and key locations the token names itself: never trusted, never fetched."""
    cases = [
        refused(
            "jwk_header_attacker_key_no_kid",
            UNKNOWN_KEY,
            lambda lab: bearer(
                lab.attacker_token({"alg": "RS256", "typ": "at+jwt", "jwk": lab.attacker.rsa_jwk()})
            ),
        ),
        refused(
            "jwk_header_attacker_key_and_kid",
            UNKNOWN_KEY,
            lambda lab: bearer(
                lab.attacker_token(
                    {"alg": "RS256", "kid": "evil", "jwk": lab.attacker.rsa_jwk(kid="evil")}
                )
            ),
        ),
        refused(
            "jwk_header_attacker_key_with_issuer_kid",
            BAD_SIGNATURE,
            lambda lab: bearer(
                lab.attacker_token(lab.header(jwk=lab.attacker.rsa_jwk(kid=lab.rsa.kid)))
            ),
        ),
        refused(
            "jwk_header_attacker_ec_key_with_issuer_kid",
            BAD_SIGNATURE,
            lambda lab: bearer(
                lab.token(
                    header=lab.header(lab.ec, jwk=lab.attacker.ec_jwk(kid=lab.ec.kid)),
                    sign=by_key(lab.attacker.ec, "ES256"),
                )
            ),
        ),
        refused(
            "jku_attacker_url",
            UNKNOWN_KEY,
            lambda lab: bearer(
                lab.attacker_token({"alg": "RS256", "kid": "evil", "jku": lab.url("jwks.json")})
            ),
        ),
        refused(
            "jku_attacker_url_with_issuer_kid",
            BAD_SIGNATURE,
            lambda lab: bearer(lab.attacker_token(lab.header(jku=lab.url("jwks.json")))),
        ),
        refused(
            "jku_file_url",
            UNKNOWN_KEY,
            lambda lab: bearer(
                lab.attacker_token({"alg": "RS256", "kid": "evil", "jku": "file:///etc/passwd"})
            ),
        ),
        refused(
            "x5u_attacker_url",
            UNKNOWN_KEY,
            lambda lab: bearer(
                lab.attacker_token({"alg": "RS256", "kid": "evil", "x5u": lab.url("cert.pem")})
            ),
        ),
        refused(
            "x5c_attacker_certificate",
            UNKNOWN_KEY,
            lambda lab: bearer(
                lab.attacker_token(
                    {
                        "alg": "RS256",
                        "x5c": [base64.b64encode(lab.attacker.certificate).decode()],
                        "x5t#S256": b64u(hashlib.sha256(lab.attacker.certificate).digest()),
                    }
                )
            ),
        ),
        refused(
            "x5c_attacker_certificate_with_issuer_kid",
            BAD_SIGNATURE,
            lambda lab: bearer(
                lab.attacker_token(
                    lab.header(x5c=[base64.b64encode(lab.attacker.certificate).decode()])
                )
            ),
        ),
        refused(
            "kid_pointing_at_nothing",
            UNKNOWN_KEY,
            lambda lab: bearer(lab.token(header=lab.header(kid="no-such-key"))),
        ),
        refused(
            "kid_absent_with_several_keys",
            UNKNOWN_KEY,
            lambda lab: bearer(lab.token(header=lab.header(kid=DROP))),
        ),
        # RFC 7515 §4.1.4: kid is a string; null is not "no kid".
        refused("kid_null", MALFORMED, lambda lab: bearer(lab.token(header=lab.header(kid=None)))),
        refused(
            "kid_wrong_case",
            UNKNOWN_KEY,
            lambda lab: bearer(lab.token(header=lab.header(kid=lab.rsa.kid.upper()))),
        ),
        refused(
            "kid_with_trailing_space",
            UNKNOWN_KEY,
            lambda lab: bearer(lab.token(header=lab.header(kid=lab.rsa.kid + " "))),
        ),
        refused(  # no UTF-8 can carry it (RFC 8259 §8.2): refused as it is decoded
            "kid_lone_surrogate",
            MALFORMED,
            lambda lab: bearer(
                lab.token(header=b'{"alg":"RS256","kid":"\\ud800' + lab.rsa.kid.encode() + b'"}')
            ),
        ),
    ]
    cases += [
        refused(f"kid_injection_{name}", UNKNOWN_KEY, with_header(kid=kid))
        for name, kid in [
            ("path_traversal", "../../dev/null"),
            ("deep_path_traversal", "../../../../../../../../etc/passwd"),
            ("absolute_path", "/dev/null"),
            ("encoded_traversal", "..%2F..%2Fdev%2Fnull"),
            ("nul_byte", "key\u0000../../dev/null"),
            ("sql_or", "' OR '1'='1"),
            ("sql_union", "x' UNION SELECT 'c2VjcmV0' --"),
            ("shell", "key|cat /etc/passwd"),
            ("url", "https://attacker.example/jwks.json"),
            ("json", '{"kid": "x"}'),
            ("empty", ""),
            ("long_4000_chars", "k" * 4000),
        ]
    ]
    cases += [
        refused(f"kid_not_a_string_{name}", MALFORMED, with_header(kid=kid))
        for name, kid in [
            ("number", 1),
            ("zero", 0),
            ("true", True),
            ("list", ["kid"]),
            ("object", {"kid": "x"}),
        ]
    ]
    return cases


def _header_parameter_cases() -> list[Case]:
    """Header parameters that would change processing: refused, though validly signed."""

    def hostile(case_id: str, **members: Any) -> Case:
        return refused(
            case_id,
            MALFORMED,
            lambda lab: bearer(lab.signed_by_issuer(lab.header(**members))),
        )

    return [
        hostile(
            "crit_unknown_extension", crit=["urn:example:unknown"], **{"urn:example:unknown": 1}
        ),
        hostile("crit_registered_claim", crit=["exp"]),
        hostile("crit_empty_list", crit=[]),
        hostile("crit_not_a_list", crit="exp"),
        hostile("crit_null", crit=None),
        hostile("crit_object", crit={"b64": False}),
        hostile("b64_false_with_crit", b64=False, crit=["b64"]),
        hostile("b64_false_without_crit", b64=False),
        hostile("b64_true", b64=True),
        hostile("enc_in_jws_header", enc="A256GCM"),
        hostile("zip_deflate", zip="DEF"),
        hostile("cty_jwt", cty="JWT"),
        hostile("cty_jwt_lowercase", cty="jwt"),
        hostile("cty_application_jwt", cty="application/jwt"),
        hostile("cty_not_a_string", cty=["JWT"]),
        refused(
            "jwe_five_segments",
            MALFORMED,
            lambda lab: bearer(
                ".".join(
                    [
                        b64u(dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": lab.rsa.kid})),
                        b64u(b"k" * 256),
                        b64u(b"i" * 12),
                        b64u(lab.payload()),
                        b64u(b"t" * 16),
                    ]
                )
            ),
            detail="JWE",
        ),
        refused(
            "jwe_header_three_segments",
            MALFORMED,
            lambda lab: bearer(
                lab.signed_by_issuer({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": lab.rsa.kid})
            ),
        ),
        refused(
            "jwe_alg_dir",
            UNSUPPORTED,
            lambda lab: bearer(lab.signed_by_issuer(lab.header(alg="dir"))),
        ),
        refused(
            "nested_jwt_payload",
            MALFORMED,
            lambda lab: bearer(
                lab.signed_by_issuer(lab.header(cty="JWT"), payload=lab.token().encode())
            ),
        ),
    ]


def _json_cases() -> list[Case]:
    """Parser differentials in the header (signed or not) and in a validly signed payload."""

    def in_header(case_id: str, raw: Callable[[Lab], bytes]) -> Case:
        return refused(case_id, MALFORMED, lambda lab: bearer(lab.signed_by_issuer(raw(lab))))

    def in_payload(case_id: str, raw: Callable[[Lab], bytes]) -> Case:
        return refused(
            case_id,
            MALFORMED,
            lambda lab: bearer(lab.signed_by_issuer(lab.header(), payload=raw(lab))),
        )

    def kid(lab: Lab) -> bytes:
        return lab.rsa.kid.encode()

    # Past the recursion limit, and still under the size cap once encoded. Only a top-level
    # array: whether nesting inside an object parses depends on the Python version.
    deep = 2000
    return [
        in_header(
            "header_duplicate_alg_none_first",
            lambda lab: b'{"alg":"none","alg":"RS256","kid":"' + kid(lab) + b'"}',
        ),
        in_header(
            "header_duplicate_alg_none_last",
            lambda lab: b'{"alg":"RS256","kid":"' + kid(lab) + b'","alg":"none"}',
        ),
        in_header(
            "header_duplicate_alg_escaped",
            lambda lab: b'{"alg":"RS256","kid":"' + kid(lab) + b'","\\u0061lg":"HS256"}',
        ),
        in_header(
            "header_duplicate_kid",
            lambda lab: b'{"alg":"RS256","kid":"evil","kid":"' + kid(lab) + b'"}',
        ),
        in_header(
            "header_duplicate_crit",
            lambda lab: b'{"alg":"RS256","kid":"' + kid(lab) + b'","crit":[],"crit":[]}',
        ),
        in_header(
            "header_not_utf8",
            lambda lab: b'{"alg":"RS256","kid":"' + kid(lab) + b'","x":"\xff\xfe"}',
        ),
        in_header(
            "header_overlong_utf8",
            lambda lab: b'{"alg":"RS256","kid":"' + kid(lab) + b'","x":"\xc0\xaf"}',
        ),
        in_header("header_utf16", lambda lab: json.dumps(lab.header()).encode("utf-16")),
        in_header(
            "header_utf16_le_no_bom", lambda lab: json.dumps(lab.header()).encode("utf-16-le")
        ),
        in_header("header_utf32", lambda lab: json.dumps(lab.header()).encode("utf-32")),
        in_header("header_utf8_bom", lambda lab: b"\xef\xbb\xbf" + dumps(lab.header())),
        in_header("header_json_array", lambda lab: dumps([lab.header()])),
        in_header("header_json_string", lambda lab: dumps(json.dumps(lab.header()))),
        in_header("header_json_number", lambda _lab: b"256"),
        in_header("header_json_null", lambda _lab: b"null"),
        in_header("header_empty", lambda _lab: b""),
        in_header("header_trailing_garbage", lambda lab: dumps(lab.header()) + b"x"),
        in_header(
            "header_two_objects", lambda lab: dumps(lab.header()) + dumps(lab.header(alg="none"))
        ),
        in_header("header_trailing_nul", lambda lab: dumps(lab.header()) + b"\x00"),
        in_header(
            "header_raw_control_char",
            lambda lab: b'{"alg":"RS256","kid":"' + kid(lab) + b'","x":"a\nb"}',
        ),
        in_header(
            "header_bad_escape",
            lambda lab: b'{"alg":"RS256","kid":"' + kid(lab) + b'","x":"\\x41"}',
        ),
        in_header("header_single_quotes", lambda lab: b"{'alg':'RS256','kid':'" + kid(lab) + b"'}"),
        in_header("header_trailing_comma", lambda lab: dumps(lab.header())[:-1] + b",}"),
        in_header("header_nan", lambda lab: dumps(lab.header())[:-1] + b',"x":NaN}'),
        in_header("header_infinity", lambda lab: dumps(lab.header())[:-1] + b',"x":Infinity}'),
        in_header("header_1e400", lambda lab: dumps(lab.header())[:-1] + b',"x":1e400}'),
        in_header(
            "header_huge_integer",
            lambda lab: dumps(lab.header())[:-1] + b',"x":' + b"9" * 5000 + b"}",
        ),
        in_header("header_deep_nesting", lambda _lab: b"[" * deep + b"]" * deep),
        in_payload("payload_duplicate_exp_expired_last", lambda lab: lab.payload(raw=b'"exp":1')),
        in_payload(
            "payload_duplicate_exp_future_last",
            lambda lab: lab.payload(exp=1, raw=b'"exp":9999999999'),
        ),
        in_payload(
            "payload_duplicate_aud", lambda lab: lab.payload(raw=b'"aud":"https://other.example"')
        ),
        in_payload(
            "payload_duplicate_iss",
            lambda lab: lab.payload(raw=b'"iss":"https://attacker.example"'),
        ),
        in_payload("payload_duplicate_sub", lambda lab: lab.payload(raw=b'"sub":"admin"')),
        in_payload(
            "payload_duplicate_scope_escaped",
            lambda lab: lab.payload(scope="read", raw=b'"\\u0073cope":"admin"'),
        ),
        in_payload("payload_exp_nan", lambda lab: lab.payload(exp=DROP, raw=b'"exp":NaN')),
        in_payload(
            "payload_exp_infinity", lambda lab: lab.payload(exp=DROP, raw=b'"exp":Infinity')
        ),
        in_payload(
            "payload_exp_minus_infinity", lambda lab: lab.payload(exp=DROP, raw=b'"exp":-Infinity')
        ),
        in_payload("payload_exp_1e400", lambda lab: lab.payload(exp=DROP, raw=b'"exp":1e400')),
        in_payload(
            "payload_exp_5000_digits",
            lambda lab: lab.payload(exp=DROP, raw=b'"exp":' + b"9" * 5000),
        ),
        in_payload("payload_not_utf8", lambda lab: lab.payload(raw=b'"name":"\xff"')),
        in_payload("payload_utf16", lambda lab: lab.payload().decode().encode("utf-16")),
        in_payload("payload_utf8_bom", lambda lab: b"\xef\xbb\xbf" + lab.payload()),
        in_payload("payload_json_array", lambda lab: b"[" + lab.payload() + b"]"),
        in_payload("payload_json_string", lambda lab: dumps(lab.payload().decode())),
        in_payload("payload_json_null", lambda _lab: b"null"),
        in_payload("payload_empty_bytes", lambda _lab: b""),
        in_payload("payload_trailing_garbage", lambda lab: lab.payload() + b"}"),
        in_payload("payload_deep_nesting", lambda _lab: b"[" * deep + b"]" * deep),
    ]


def _claim_cases() -> list[Case]:
    """Claims of the wrong type or value, in tokens the trusted issuer signed."""

    def claim(case_id: str, reason: str, **claims: Any) -> Case:
        return refused(case_id, reason, lambda lab: bearer(lab.token(**claims)))

    def raw_claim(case_id: str, reason: str, name: str, raw: bytes) -> Case:
        return refused(
            case_id,
            reason,
            lambda lab: bearer(lab.token(payload=lab.payload(raw=raw, **{name: DROP}))),
        )

    def relative(case_id: str, reason: str, name: str, offset: float) -> Case:
        def build(lab: Lab) -> Req:
            claims: dict[str, Any] = {name: int(time.time() + offset)}
            return bearer(lab.token(**claims))

        return refused(case_id, reason, build)

    def issuer_variant(case_id: str, change: Callable[[str], Any]) -> Case:
        return refused(
            case_id,
            INVALID_ISSUER,
            lambda lab: bearer(lab.token(iss=change(lab.issuer.url))),
        )

    return [
        claim("exp_string", MALFORMED, exp="9999999999"),
        claim("exp_iso_date", MALFORMED, exp="2999-01-01T00:00:00Z"),
        claim("exp_true", MALFORMED, exp=True),
        claim("exp_false", MALFORMED, exp=False),
        raw_claim("exp_null", INVALID_CLAIM, "exp", b'"exp":null'),
        claim("exp_list", MALFORMED, exp=[9999999999]),
        claim("exp_object", MALFORMED, exp={"$date": 9999999999}),
        claim("exp_negative", MALFORMED, exp=-1),
        claim("exp_far_future_1e20", MALFORMED, exp=1e20),
        claim("exp_far_future_int", MALFORMED, exp=10**20),
        claim("exp_beyond_year_9999", MALFORMED, exp=253_402_300_800),
        claim("exp_missing", INVALID_CLAIM, exp=DROP),
        claim("exp_zero", EXPIRED, exp=0),
        relative("exp_an_hour_ago", EXPIRED, "exp", -3600),
        relative("exp_just_past_leeway", EXPIRED, "exp", -31),
        relative("nbf_in_an_hour", NOT_YET_VALID, "nbf", 3600),
        relative("nbf_just_past_leeway", NOT_YET_VALID, "nbf", 120),
        claim("nbf_string", MALFORMED, nbf="0"),
        claim("nbf_true", MALFORMED, nbf=True),
        relative("iat_in_an_hour", NOT_YET_VALID, "iat", 3600),
        claim("iat_string", MALFORMED, iat="0"),
        claim("iat_negative", MALFORMED, iat=-5),
        issuer_variant("iss_trailing_slash", lambda url: url + "/"),
        issuer_variant("iss_uppercase", lambda url: url.upper()),
        issuer_variant("iss_localhost_alias", lambda url: url.replace("127.0.0.1", "localhost")),
        issuer_variant("iss_in_a_list", lambda url: [url]),
        issuer_variant("iss_with_path", lambda url: url + "/tenant"),
        issuer_variant("iss_with_space", lambda url: " " + url),
        issuer_variant("iss_prefix_only", lambda url: url[:-1]),
        issuer_variant("iss_number", lambda _url: 1),
        issuer_variant("iss_attacker", lambda _url: "https://attacker.example"),
        claim("iss_missing", INVALID_ISSUER, iss=DROP),
        raw_claim("iss_null", INVALID_ISSUER, "iss", b'"iss":null'),
        claim("aud_empty_list", INVALID_AUDIENCE, aud=[]),
        claim("aud_empty_string", INVALID_AUDIENCE, aud=""),
        claim("aud_list_of_numbers", INVALID_AUDIENCE, aud=[1, 2]),
        claim("aud_list_with_a_number", INVALID_AUDIENCE, aud=["https://api.example", 1]),
        claim("aud_list_with_null", INVALID_AUDIENCE, aud=["https://api.example", None]),
        claim("aud_nested_list", INVALID_AUDIENCE, aud=[["https://api.example"]]),
        claim("aud_number", INVALID_AUDIENCE, aud=42),
        claim("aud_true", INVALID_AUDIENCE, aud=True),
        claim("aud_object", INVALID_AUDIENCE, aud={"https://api.example": True}),
        claim("aud_wrong", INVALID_AUDIENCE, aud="https://other.example"),
        claim("aud_trailing_slash", INVALID_AUDIENCE, aud="https://api.example/"),
        claim("aud_uppercase", INVALID_AUDIENCE, aud="HTTPS://API.EXAMPLE"),
        claim("aud_substring", INVALID_AUDIENCE, aud="https://api.example.attacker.example"),
        claim("aud_missing", INVALID_AUDIENCE, aud=DROP),
        raw_claim("aud_null", INVALID_AUDIENCE, "aud", b'"aud":null'),
        claim("sub_number", MALFORMED, sub=123),
        claim("sub_list", MALFORMED, sub=["admin"]),
        claim("sub_object", MALFORMED, sub={"id": "admin"}),
        claim("jti_number", MALFORMED, jti=7),
        claim("client_id_list", MALFORMED, client_id=["a", "b"]),
        claim("scope_number", MALFORMED, scope=42),
        claim("scope_list_with_number", MALFORMED, scope=["read", 1]),
        claim("scope_object", MALFORMED, scope={"admin": True}),
        claim("scp_number", MALFORMED, scp=1),
    ]


def _framing_cases() -> list[Case]:
    """The compact serialization (RFC 7515 §7.1) and the header (RFC 6750 §2.1)."""

    def valid(lab: Lab) -> str:
        return lab.token()

    def parts(lab: Lab) -> list[str]:
        return segments(valid(lab))

    def malformed(case_id: str, build: Callable[[Lab], str], **kw: Any) -> Case:
        return refused(case_id, MALFORMED, lambda lab: bearer(build(lab)), **kw)

    def oversized(lab: Lab) -> str:
        return lab.token(padding="p" * 8192)

    return [
        malformed("extra_trailing_dot", lambda lab: valid(lab) + "."),
        malformed("extra_leading_dot", lambda lab: "." + valid(lab)),
        malformed("extra_segment", lambda lab: valid(lab) + ".e30"),
        malformed(
            "four_segments_doubled_payload", lambda lab: ".".join(parts(lab)[:2] + parts(lab)[1:])
        ),
        malformed(
            "double_dot_in_the_middle", lambda lab: "..".join(parts(lab)[:2]) + "." + parts(lab)[2]
        ),
        malformed("empty_header_segment", lambda lab: "." + ".".join(parts(lab)[1:])),
        malformed("empty_payload_segment", lambda lab: parts(lab)[0] + ".." + parts(lab)[2]),
        malformed("signature_stripped", lambda lab: ".".join(parts(lab)[:2]) + "."),
        malformed("signature_segment_missing", lambda lab: ".".join(parts(lab)[:2])),
        malformed("header_only", lambda lab: parts(lab)[0]),
        malformed("dots_only", lambda _lab: ".."),
        malformed("single_character", lambda _lab: "a"),
        malformed("padding_on_signature", lambda lab: valid(lab) + "=="),
        malformed("padding_single_on_signature", lambda lab: valid(lab) + "="),
        malformed("length_1_mod_4_signature", lambda lab: valid(lab) + "AAA"),
        malformed(
            "noncanonical_signature_bits",
            lambda lab: ".".join([*parts(lab)[:2], noncanonical(parts(lab)[2])]),
        ),
        malformed(
            # Re-signed: the signature covers the non-canonical text; strict decoding stops it.
            "noncanonical_header_bits_resigned",
            lambda lab: assemble(
                noncanonical(header_segment_with_unused_bits(lab.header())),
                b64u(lab.payload()),
                by_key(lab.rsa.private_key, "RS256"),
            ),
        ),
        malformed(
            "standard_base64_signature",
            lambda lab: ".".join([*parts(lab)[:2], base64.b64encode(b"\xfb\xff\xbf" * 8).decode()]),
        ),
        malformed(
            "standard_base64_header",
            lambda lab: ".".join(["+/" + parts(lab)[0][2:], *parts(lab)[1:]]),
        ),
        malformed("tilde_instead_of_dot", lambda lab: valid(lab).replace(".", "~", 1)),
        malformed("size_bomb_valid_signature", oversized, detail="exceeds"),
        malformed("size_bomb_just_over", lambda _lab: "A" * 8193, detail="exceeds"),
        malformed("size_bomb_one_megabyte", lambda _lab: "A" * (1 << 20), detail="exceeds"),
        malformed("size_bomb_megabyte_of_dots", lambda _lab: "." * (1 << 20), detail="exceeds"),
        invalid_request(
            "padding_inside_token",
            lambda lab: bearer(parts(lab)[0] + "=." + ".".join(parts(lab)[1:])),
        ),
        invalid_request("space_inside_token", lambda lab: bearer(valid(lab).replace(".", " .", 1))),
        invalid_request("tab_inside_token", lambda lab: bearer(valid(lab).replace(".", "\t.", 1))),
        invalid_request(
            "newline_inside_token", lambda lab: bearer(valid(lab).replace(".", "\n.", 1))
        ),
        invalid_request("crlf_header_injection", lambda lab: bearer(valid(lab) + "\r\nX-Admin: 1")),
        invalid_request(
            "two_tokens_space_separated", lambda lab: bearer(valid(lab) + " " + valid(lab))
        ),
        invalid_request(
            "two_tokens_comma_joined", lambda lab: bearer(valid(lab) + ", Bearer " + valid(lab))
        ),
        invalid_request("non_ascii_bytes", lambda _lab: bearer(b"\xff\xfe\xfd")),
        invalid_request("utf8_token", lambda lab: bearer(valid(lab).encode() + "é".encode())),
        invalid_request("nul_byte", lambda lab: bearer(valid(lab).encode() + b"\x00")),
        invalid_request("quoted_token", lambda lab: bearer('"' + valid(lab) + '"')),
        invalid_request("bearer_without_token", lambda _lab: headers("Bearer")),
        invalid_request("bearer_with_space_only", lambda _lab: headers("Bearer ")),
        invalid_request("bearer_with_spaces_only", lambda _lab: headers("Bearer     ")),
        invalid_request(
            "two_authorization_headers",
            lambda lab: headers(f"Bearer {valid(lab)}", f"Bearer {valid(lab)}"),
        ),
        invalid_request(
            "two_headers_bearer_and_garbage",
            lambda lab: headers(f"Bearer {valid(lab)}", "Bearer x.y.z"),
        ),
        invalid_request(
            "two_headers_basic_and_bearer",
            lambda lab: headers("Basic dXNlcjpwYXNz", f"Bearer {valid(lab)}"),
        ),
        invalid_request("two_empty_headers", lambda _lab: headers("", "")),
        invalid_request("query_access_token", lambda lab: Req((), f"?access_token={valid(lab)}")),
        invalid_request("query_access_token_empty", lambda _lab: Req((), "?access_token=")),
        invalid_request(
            "query_access_token_second", lambda lab: Req((), f"?a=1&access_token={valid(lab)}")
        ),
        invalid_request(
            "query_and_header",
            lambda lab: Req((f"Bearer {valid(lab)}".encode(),), f"?access_token={valid(lab)}"),
        ),
        no_credentials("basic_scheme", lambda _lab: headers("Basic dXNlcjpwYXNz")),
        no_credentials("basic_scheme_with_a_jwt", lambda lab: headers(f"Basic {valid(lab)}")),
        no_credentials("digest_scheme", lambda _lab: headers('Digest username="a", nonce="b"')),
        no_credentials("token_scheme", lambda lab: headers(f"Token {valid(lab)}")),
        no_credentials("jwt_scheme", lambda lab: headers(f"JWT {valid(lab)}")),
        no_credentials("no_scheme", lambda lab: headers(valid(lab))),
        no_credentials("scheme_glued_to_token", lambda lab: headers(f"Bearer{valid(lab)}")),
        # ASGI servers strip the white space around a field value (RFC 9110 §5.5); unstripped
        # white space before the scheme leaves no "Bearer" scheme, and a tab is no separator.
        no_credentials("leading_space_before_scheme", lambda lab: headers(f" Bearer {valid(lab)}")),
        no_credentials("tab_after_scheme", lambda lab: headers(f"Bearer\t{valid(lab)}")),
        no_credentials("empty_authorization_header", lambda _lab: headers("")),
        no_credentials("no_authorization_header", lambda _lab: Req(())),
        no_credentials("access_token_lookalike_query", lambda _lab: Req((), "?my_access_token=x")),
    ]


def _splice_cases() -> list[Case]:
    """Genuine pieces put together wrongly, and tokens re-signed by the attacker."""

    def splice(case_id: str, build: Callable[[Lab], tuple[str, str, str]]) -> Case:
        return refused(case_id, BAD_SIGNATURE, lambda lab: bearer(".".join(build(lab))))

    def parts(lab: Lab, key: SigningKey | None = None) -> tuple[str, str, str]:
        header, payload, signature = segments(lab.token(key=key))
        return header, payload, signature

    def other(lab: Lab) -> tuple[str, str, str]:
        header, payload, signature = segments(lab.token(sub="someone-else", scope="admin"))
        return header, payload, signature

    def issuer_signature(lab: Lab, message: bytes) -> str:
        return b64u(by_key(lab.rsa.private_key, "RS256")(message))

    expired: dict[str, Any] = {"exp": 1_000_000_000, "iat": 999_999_000}
    return [
        splice("signature_from_another_token", lambda lab: (*parts(lab)[:2], other(lab)[2])),
        splice(
            "payload_swapped_between_tokens",
            lambda lab: (parts(lab)[0], other(lab)[1], parts(lab)[2]),
        ),
        splice(
            "header_and_payload_of_an_es256_token",
            lambda lab: (*parts(lab, lab.ec)[:2], parts(lab)[2]),
        ),
        splice(
            "signature_truncated",
            lambda lab: (*parts(lab)[:2], b64u(b64d(parts(lab)[2])[:-3])),
        ),
        splice(
            "signature_of_an_empty_message",
            lambda lab: (*parts(lab)[:2], issuer_signature(lab, b"")),
        ),
        splice(
            "signature_over_the_payload_only",
            lambda lab: (*parts(lab)[:2], issuer_signature(lab, parts(lab)[1].encode())),
        ),
        refused(
            "expired_token_resigned_by_attacker",
            BAD_SIGNATURE,
            lambda lab: bearer(lab.token(sign=by_key(lab.attacker.rsa, "RS256"), **expired)),
        ),
        refused(
            "fresh_claims_resigned_by_attacker",
            BAD_SIGNATURE,
            lambda lab: bearer(lab.token(sign=by_key(lab.attacker.rsa, "RS256"), scope="admin")),
        ),
        refused(
            "expired_token_resigned_by_attacker_kid",
            UNKNOWN_KEY,
            lambda lab: bearer(lab.attacker_token({"alg": "RS256", "kid": "evil"}, **expired)),
        ),
        refused("expired_genuine_token", EXPIRED, lambda lab: bearer(lab.token(**expired))),
    ]


DEFAULT_CASES = [
    *_alg_none_cases(),
    *_confusion_cases(),
    *_ecdsa_cases(),
    *_header_key_cases(),
    *_header_parameter_cases(),
    *_json_cases(),
    *_claim_cases(),
    *_framing_cases(),
    *_splice_cases(),
]

# A guard that also accepts HS256 with a configured secret must still never key HMAC with a
# public key, nor let an RS256 header pick the secret.
SECRET_GUARD: dict[str, Any] = {"secret": SECRET, "algorithms": ("HS256", "RS256")}


def _secret_cases() -> list[Case]:
    def hmac_case(
        case_id: str, key_bytes: Callable[[Lab], bytes], reason: str = BAD_SIGNATURE, **header: Any
    ) -> Case:
        return refused(
            f"secret_guard_{case_id}",
            reason,
            lambda lab: bearer(
                lab.token(
                    header=lab.header(**{"alg": "HS256", **header}), sign=by_hmac(key_bytes(lab))
                )
            ),
            options=SECRET_GUARD,
        )

    return [
        hmac_case("hs256_keyed_with_rsa_pem", lambda lab: lab.pem(lab.rsa)),
        hmac_case("hs256_keyed_with_rsa_pem_no_kid", lambda lab: lab.pem(lab.rsa), kid=DROP),
        hmac_case(
            "hs256_keyed_with_rsa_pkcs1",
            lambda lab: lab.pem(lab.rsa, serialization.PublicFormat.PKCS1),
        ),
        hmac_case("hs256_keyed_with_rsa_der", lambda lab: lab.der(lab.rsa)),
        hmac_case(
            "hs256_keyed_with_rsa_jwk_json", lambda lab: json.dumps(lab.rsa.public_jwk()).encode()
        ),
        hmac_case("hs256_keyed_with_rsa_n", lambda lab: lab.rsa.public_jwk()["n"].encode()),
        hmac_case("hs256_keyed_with_ec_pem", lambda lab: lab.pem(lab.ec), kid=DROP),
        hmac_case("hs256_keyed_with_empty_key", lambda _lab: b"", kid=DROP),
        hmac_case(
            "hs256_keyed_with_its_own_jwk_header",
            lambda _lab: ATTACKER_SECRET,
            jwk={"kty": "oct", "k": b64u(ATTACKER_SECRET)},
        ),
        refused(
            "secret_guard_hs384_with_the_secret",
            UNSUPPORTED,
            lambda lab: bearer(lab.token(header={"alg": "HS384"}, sign=by_hmac(SECRET, "HS384"))),
            options=SECRET_GUARD,
        ),
        refused(
            "secret_guard_rs256_claiming_hs_kid",
            UNKNOWN_KEY,
            lambda lab: bearer(
                lab.token(header={"alg": "RS256", "kid": "hs256"}, sign=by_hmac(lab.pem(lab.rsa)))
            ),
            options=SECRET_GUARD,
        ),
        refused(
            # The guard allows no EC algorithm, so the RS256 key is its only key and is tried.
            "secret_guard_rs256_no_kid_hmac_signature",
            BAD_SIGNATURE,
            lambda lab: bearer(lab.token(header={"alg": "RS256"}, sign=by_hmac(SECRET))),
            options=SECRET_GUARD,
        ),
        refused(
            "secret_guard_rs256_issuer_kid_hmac_signature",
            BAD_SIGNATURE,
            lambda lab: bearer(lab.token(sign=by_hmac(SECRET))),
            options=SECRET_GUARD,
        ),
        refused(
            "secret_guard_es256_not_allowed",
            UNSUPPORTED,
            lambda lab: bearer(lab.token(key=lab.ec)),
            options=SECRET_GUARD,
        ),
        refused(
            "secret_guard_alg_none",
            UNSUPPORTED,
            lambda lab: bearer(lab.token(header={"alg": "none"}, sign=fixed(b"x"))),
            options=SECRET_GUARD,
        ),
    ]


def _jwks_cases() -> list[Case]:
    """Keys published in the JWKS that must never be used to verify anything."""

    def weak(lab: Lab) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(lab.attacker.weak_rsa.public_key(), as_dict=True)
        return jwk

    def published(
        case_id: str,
        jwk: Callable[[Lab], dict[str, Any]],
        token: Callable[[Lab], str],
        reason: str = UNKNOWN_KEY,
        **options: Any,
    ) -> Case:
        return refused(
            f"jwks_{case_id}",
            reason,
            lambda lab: bearer(token(lab)),
            jwks=lambda lab: [jwk(lab)],
            options=options,
        )

    def by_attacker(kid: str) -> Callable[[Lab], str]:
        return lambda lab: lab.attacker_token({"alg": "RS256", "kid": kid})

    def oct_jwk(_lab: Lab) -> dict[str, Any]:
        return {"kty": "oct", "kid": "hmac", "alg": "HS256", "use": "sig", "k": b64u(b"k" * 32)}

    def hs256_by_oct(lab: Lab) -> str:
        return lab.token(header={"alg": "HS256", "kid": "hmac"}, sign=by_hmac(b"k" * 32))

    def no_alg_rsa_jwk(lab: Lab) -> dict[str, Any]:
        return lab.attacker.rsa_jwk(kid="no-alg", use="sig")

    def hs256_empty_key(lab: Lab) -> str:
        return lab.token(header={"alg": "HS256", "kid": "no-alg"}, sign=by_hmac(b""))

    return [
        published(
            "rsa_1024_bits",
            lambda lab: {**weak(lab), "kid": "weak", "alg": "RS256", "use": "sig"},
            lambda lab: lab.token(
                header={"alg": "RS256", "kid": "weak"}, sign=by_key(lab.attacker.weak_rsa, "RS256")
            ),
        ),
        published(
            "rsa_1024_bits_without_alg",
            lambda lab: {**weak(lab), "kid": "weak"},
            lambda lab: lab.token(
                header={"alg": "RS256", "kid": "weak"}, sign=by_key(lab.attacker.weak_rsa, "RS256")
            ),
        ),
        published(
            "use_enc", lambda lab: lab.attacker.rsa_jwk(kid="enc", use="enc"), by_attacker("enc")
        ),
        published(
            "use_unknown",
            lambda lab: lab.attacker.rsa_jwk(kid="odd", use="verify"),
            by_attacker("odd"),
        ),
        published(
            "key_ops_encrypt",
            lambda lab: lab.attacker.rsa_jwk(kid="ops", key_ops=["encrypt"]),
            by_attacker("ops"),
        ),
        published(
            "key_ops_sign_only",
            lambda lab: lab.attacker.rsa_jwk(kid="ops", key_ops=["sign"]),
            by_attacker("ops"),
        ),
        published(
            "key_ops_not_a_list",
            lambda lab: lab.attacker.rsa_jwk(kid="ops", key_ops="verify"),
            by_attacker("ops"),
        ),
        published(
            "alg_mismatch_es256_on_rsa",
            lambda lab: lab.attacker.rsa_jwk(kid="mis", alg="ES256"),
            by_attacker("mis"),
        ),
        published(
            "alg_hs256_on_rsa",
            lambda lab: lab.attacker.rsa_jwk(kid="mis", alg="HS256"),
            by_attacker("mis"),
        ),
        published(
            "alg_none_on_rsa",
            lambda lab: lab.attacker.rsa_jwk(kid="mis", alg="none"),
            by_attacker("mis"),
        ),
        published("kid_not_a_string", lambda lab: lab.attacker.rsa_jwk(kid=7), by_attacker("7")),
        published(
            "private_rsa_jwk_with_d",
            lambda lab: {**json.loads(RSAAlgorithm.to_jwk(lab.attacker.rsa)), "kid": "leaky"},
            by_attacker("leaky"),
        ),
        published(
            "private_ec_jwk_with_d",
            lambda lab: {**json.loads(ECAlgorithm.to_jwk(lab.attacker.ec)), "kid": "leaky"},
            lambda lab: lab.token(
                header={"alg": "ES256", "kid": "leaky"}, sign=by_key(lab.attacker.ec, "ES256")
            ),
        ),
        published("oct_key_hs256_default_guard", oct_jwk, hs256_by_oct, reason=UNSUPPORTED),
        published(
            "oct_key_hs256_secret_guard",
            oct_jwk,
            hs256_by_oct,
            reason=BAD_SIGNATURE,
            **SECRET_GUARD,
        ),
        published(
            "oct_key_rs256_header",
            oct_jwk,
            lambda lab: lab.token(header={"alg": "RS256", "kid": "hmac"}, sign=by_hmac(b"k" * 32)),
        ),
        # CVE-2026-44699: an RSA JWK without alg, picked by kid, keying HMAC with nothing.
        published(
            "rsa_without_alg_hs256_empty_key_default_guard",
            no_alg_rsa_jwk,
            hs256_empty_key,
            reason=UNSUPPORTED,
        ),
        published(
            "rsa_without_alg_hs256_empty_key_secret_guard",
            no_alg_rsa_jwk,
            hs256_empty_key,
            reason=BAD_SIGNATURE,
            **SECRET_GUARD,
        ),
        published(
            "rsa_without_alg_hs256_keyed_with_its_n",
            no_alg_rsa_jwk,
            lambda lab: lab.token(
                header={"alg": "HS256", "kid": "no-alg"},
                sign=by_hmac(lab.attacker.rsa_jwk()["n"].encode()),
            ),
            reason=BAD_SIGNATURE,
            **SECRET_GUARD,
        ),
    ]


SECRET_CASES = _secret_cases()
JWKS_CASES = _jwks_cases()
ALL_CASES = [*DEFAULT_CASES, *SECRET_CASES, *JWKS_CASES]

# -- driving the middleware -------------------------------------------------------------------


async def protected(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


def build_app(guard: BearerGuard) -> Starlette:
    return Starlette(
        routes=[Route("/protected", protected)],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard)],
    )


Events = list[MutableMapping[str, Any]]


async def send(guard: BearerGuard, req: Req) -> tuple[httpx.Response, Events]:
    """One request through the middleware, with the audit events it emitted."""
    transport = httpx.ASGITransport(app=build_app(guard))
    with capture_logs() as events:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get(
                "/protected" + req.query,
                headers=[(b"authorization", value) for value in req.authorization],
            )
    return response, events


def secrets_of(req: Req) -> set[str]:
    """The credentials sent, and the signature segment of each: none may be echoed."""
    sent = [value.decode("latin-1") for value in req.authorization]
    sent += re.findall(r"access_token=([^&]+)", req.query)
    found = set()
    for credential in (piece for value in sent for piece in re.split(r"[\s,]+", value)):
        if len(credential) >= MIN_SECRET_CHARS:
            found.add(credential)
        signature = credential.rsplit(".", 1)[-1]
        if "." in credential and len(signature) >= MIN_SECRET_CHARS:
            found.add(signature)
    return found


def challenge_error(challenge: str) -> str | None:
    match = re.search(r'\berror="([^"]*)"', challenge)
    return match.group(1) if match else None


def assert_refused(case: Case, req: Req, response: httpx.Response, events: Events) -> None:
    assert response.status_code == case.status, response.text
    challenges = response.headers.get_list("www-authenticate")
    assert len(challenges) == 1, challenges
    assert challenges[0].startswith("Bearer")
    assert challenge_error(challenges[0]) == case.error
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == (case.error or "unauthorized")

    assert [event["event"] for event in events] == ["token.rejected"], events
    event = events[0]
    assert event["reason"] == case.reason, event
    assert event["status"] == case.status
    detail = event.get("detail") or ""
    # The guard's catch-all turns a defect into a refusal: hitting it means a bug, not a defence.
    assert not detail.startswith("unexpected"), detail
    if case.detail is not None:
        assert case.detail in detail, detail
    if case.reason in (INVALID_REQUEST, MISSING_TOKEN) or "exceeds" in detail:
        # Refused on the request's framing alone: the token was never decoded.
        assert "alg" not in event
        assert "kid" not in event

    for secret in secrets_of(req):
        assert secret not in response.text
        assert secret not in repr(event)


def attacker_fetches(issuer: DevIssuer) -> list[str]:
    return [path for path in issuer.requests if path.startswith(ATTACKER_PATH)]


@pytest.fixture
def lab(session_issuer: DevIssuer, attacker: Attacker) -> Lab:
    return Lab(session_issuer, attacker)


@pytest.fixture
def jwks_lab(issuer: DevIssuer, attacker: Attacker) -> Lab:
    return Lab(issuer, attacker)


def publish(issuer: DevIssuer, extra: list[dict[str, Any]]) -> None:
    document = {"keys": [*issuer.jwks()["keys"], *extra]}
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps(document).encode())


# -- the tests --------------------------------------------------------------------------------


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in ALL_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", [*DEFAULT_CASES, *SECRET_CASES], ids=lambda case: case.id)
async def test_attack_is_refused(case: Case, lab: Lab) -> None:
    guard = lab.issuer.guard(**case.options)
    req = case.build(lab)
    response, events = await send(guard, req)
    assert_refused(case, req, response, events)
    assert attacker_fetches(lab.issuer) == []


@pytest.mark.parametrize("case", JWKS_CASES, ids=lambda case: case.id)
async def test_unusable_published_key_is_never_used(case: Case, jwks_lab: Lab) -> None:
    assert case.jwks is not None
    publish(jwks_lab.issuer, case.jwks(jwks_lab))
    guard = jwks_lab.issuer.guard(**case.options)
    # The issuer's genuine tokens still verify: the key set was fetched and the entry skipped.
    ok, _ = await send(guard, bearer(jwks_lab.token()))
    assert ok.status_code == 200, ok.text
    req = case.build(jwks_lab)
    response, events = await send(guard, req)
    assert_refused(case, req, response, events)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda lab: bearer(lab.token()), id="rs256"),
        pytest.param(lambda lab: bearer(lab.token(key=lab.ec)), id="es256"),
        pytest.param(lambda lab: bearer(lab.token(), b"bearer "), id="lowercase_bearer"),
        pytest.param(lambda lab: bearer(lab.token(), b"BEARER "), id="uppercase_bearer"),
        pytest.param(lambda lab: bearer(lab.token(), b"Bearer    "), id="several_spaces"),
        # Trailing OWS is no part of the field value (RFC 9110 §5.5).
        pytest.param(lambda lab: bearer(lab.token() + " \t"), id="trailing_white_space"),
        pytest.param(
            lambda lab: bearer(lab.token(iat=int(time.time()) + 10)), id="iat_within_leeway"
        ),
        pytest.param(
            lambda lab: bearer(lab.token(aud=["https://other.example", "https://api.example"])),
            id="aud_list",
        ),
        pytest.param(lambda lab: bearer(lab.token(header=lab.header(typ=DROP))), id="no_typ"),
        pytest.param(
            lambda lab: bearer(lab.token(padding="p" * 5500)), id="large_but_under_the_cap"
        ),
    ],
)
async def test_control_genuine_token_is_accepted(build: Callable[[Lab], Req], lab: Lab) -> None:
    """The corpus is meaningful only if the same guard lets genuine tokens through."""
    response, events = await send(lab.issuer.guard(), build(lab))
    assert response.status_code == 200, response.text
    assert [event["event"] for event in events] == ["token.accepted"]


async def test_control_secret_guard_accepts_its_own_hs256(lab: Lab) -> None:
    token = lab.token(header={"alg": "HS256", "typ": "at+jwt"}, sign=by_hmac(SECRET))
    response, events = await send(lab.issuer.guard(**SECRET_GUARD), bearer(token))
    assert response.status_code == 200, response.text
    assert [event["event"] for event in events] == ["token.accepted"]


SHORT_REFRESH = RefreshPolicy(min_ttl=0.01, default_ttl=0.01, max_ttl=0.01, cooldown=0)


async def _retire_after_expiry(issuer: DevIssuer, guard: BearerGuard, kid: str) -> None:
    issuer.retire(kid)
    await anyio.sleep(0.05)  # past the key set's 10 ms freshness: the next use refreshes it
    # Another request makes the guard refresh its key set; the retired key is now gone.
    fresh, _ = await send(guard, bearer(issuer.mint()))
    assert fresh.status_code == 200, fresh.text
    assert kid not in guard.key_ids


@pytest.fixture
def rotated(issuer: DevIssuer, attacker: Attacker) -> tuple[Lab, SigningKey]:
    """An issuer whose original RS256 key has been superseded by a new one (both published)."""
    old = issuer.key("RS256")
    issuer.rotate("RS256")
    return Lab(issuer, attacker), old


async def test_key_retired_from_the_jwks_is_refused_after_refresh(
    rotated: tuple[Lab, SigningKey],
) -> None:
    lab, old = rotated
    guard = lab.issuer.guard(refresh=SHORT_REFRESH)
    token = lab.token(key=old)
    warm, _ = await send(guard, bearer(lab.issuer.mint()))
    assert warm.status_code == 200
    await _retire_after_expiry(lab.issuer, guard, old.kid)
    req = bearer(token)
    response, events = await send(guard, req)
    assert_refused(refused("retired_key", UNKNOWN_KEY, lambda _lab: req), req, response, events)


async def test_key_retired_from_the_jwks_revokes_cached_verifications(
    rotated: tuple[Lab, SigningKey],
) -> None:
    """A token verified (and cached) before its key was retired is refused after the refresh."""
    lab, old = rotated
    guard = lab.issuer.guard(refresh=SHORT_REFRESH)
    req = bearer(lab.token(key=old))
    first, _ = await send(guard, req)
    assert first.status_code == 200, first.text
    await _retire_after_expiry(lab.issuer, guard, old.kid)
    response, events = await send(guard, req)
    assert_refused(
        refused("retired_key_cached", UNKNOWN_KEY, lambda _lab: req), req, response, events
    )


async def test_key_retired_without_other_traffic_is_refused_once_the_set_is_stale(
    rotated: tuple[Lab, SigningKey],
) -> None:
    """Only the retired key's token is sent: the cache hit must not skip the due refresh."""
    lab, old = rotated
    guard = lab.issuer.guard(refresh=SHORT_REFRESH)
    req = bearer(lab.token(key=old))
    first, _ = await send(guard, req)
    assert first.status_code == 200, first.text
    lab.issuer.retire(old.kid)
    await anyio.sleep(0.05)
    response, events = await send(guard, req)
    assert_refused(
        refused("retired_key_stale", UNKNOWN_KEY, lambda _lab: req), req, response, events
    )
