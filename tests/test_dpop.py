"""DPoP (RFC 9449): the proof checks, the stores, and both middlewares end to end.

Proofs are built by hand with ``cryptography`` and our own base64url, and, for interop, with
joserfc, a JOSE library that shares no code with ours.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jws as jose_jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from starlette.testclient import TestClient
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import EnvironBuilder

from bearerguard import BearerGuard
from bearerguard._core.dpop import (
    access_token_hash,
    b64url,
    check_proof,
    jwk_thumbprint,
    normalize_htu,
)
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.dpop import (
    _PRUNE_BATCH,
    DPoPPolicy,
    DPoPReplayStore,
    MemoryDPoPReplayStore,
    NonceIssuer,
    RedisDPoPReplayStore,
    _member,
    dpop_request,
)
from bearerguard.errors import ConfigurationError, InvalidDPoPProofError, ReplayStoreError
from bearerguard.revocation.memory import MemoryRevocationStore
from bearerguard.testing import DevIssuer, audit_events
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.apps import build_app, build_flask_app
from tests.helpers import asgi_call, http_scope, serving
from tests.redis_server import RedisServer

URL = "http://testserver/me"
Client = Callable[..., httpx.Response]


class Holder:
    """A client's DPoP key (EC P-256), making proofs by hand."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }
        self.jkt = jwk_thumbprint(self.jwk)

    def sign(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        signing_input = (
            b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def proof(
        self,
        token: str,
        *,
        method: str = "GET",
        url: str = URL,
        iat: float | None = None,
        nonce: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        head: dict[str, Any] = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk}
        body: dict[str, Any] = {
            "jti": str(uuid.uuid4()),
            "htm": method,
            "htu": url,
            "iat": int(time.time() if iat is None else iat),
            "ath": access_token_hash(token),
        }
        if nonce is not None:
            body["nonce"] = nonce
        head.update(header or {})
        body.update(claims or {})
        return self.sign(
            {k: v for k, v in head.items() if v is not None},
            {k: v for k, v in body.items() if v is not None},
        )


@pytest.fixture
def holder() -> Holder:
    return Holder()


def dpop(token: str, proof: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


# -- the sans-I/O core ------------------------------------------------------------------


def test_ath_matches_rfc_9449_example() -> None:
    # RFC 9449 §7.1: the example access token and its ath.
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_thumbprint_matches_rfc_7638_example() -> None:
    # RFC 7638 §3.1.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
            "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
            "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
            "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    "make",
    [
        lambda: ECKey.generate_key("P-256"),
        lambda: ECKey.generate_key("P-384"),
        lambda: RSAKey.generate_key(2048),
        lambda: OKPKey.generate_key("Ed25519"),
    ],
    ids=["P-256", "P-384", "RSA", "Ed25519"],
)
def test_thumbprint_agrees_with_joserfc(make: Callable[[], Any]) -> None:
    key = make()
    assert jwk_thumbprint(key.as_dict(private=False)) == key.thumbprint()


def test_thumbprint_refuses_unknown_or_incomplete_keys() -> None:
    with pytest.raises(ValueError, match="kty"):
        jwk_thumbprint({"kty": "oct", "k": "AAAA"})
    with pytest.raises(ValueError, match="'y'"):
        jwk_thumbprint({"kty": "EC", "crv": "P-256", "x": "AAAA"})


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://API.Example.COM/a/b", "https://api.example.com/a/b"),
        ("HTTPS://api.example.com:443/a", "https://api.example.com/a"),
        ("http://api.example.com:80/a", "http://api.example.com/a"),
        ("http://api.example.com:8080/a", "http://api.example.com:8080/a"),
        ("https://api.example.com", "https://api.example.com/"),
        ("https://api.example.com/a?x=1#f", "https://api.example.com/a"),
        ("https://api.example.com/%7euser/%2f", "https://api.example.com/~user/%2F"),
        ("https://[::1]:8443/a", "https://[::1]:8443/a"),
        ("https://h/u/ada%40x.com/a%2cb%3A", "https://h/u/ada@x.com/a,b:"),
        ("https://h/a%3Fb%23c%25", "https://h/a%3Fb%23c%25"),
    ],
)
def test_htu_normalisation(url: str, normal: str) -> None:
    assert normalize_htu(url) == normal


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x/a",
        "/relative",
        "https:///nohost",
        "http://h:99999/",
        # RFC 9110 §4.2.4: userinfo in an http(s) URI from an untrusted source is an error.
        "http://user@h/a",
        "http://user:secret@h/a",
        "http://@h/a",
    ],
)
def test_htu_normalisation_refuses_non_http_uris(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by cause
        normalize_htu(url)


@pytest.mark.parametrize("htu", ["http://user@testserver/me", "http://user:pw@testserver/me"])
def test_a_proof_whose_htu_holds_userinfo_is_refused(holder: Holder, htu: str) -> None:
    # RFC 9449 §4.3 step 9: the htu names the request's URI, which holds no userinfo (RFC
    # 9110 §4.2.4); it was dropped by the normalisation and the proof accepted.
    with pytest.raises(InvalidDPoPProofError, match="htu does not match"):
        _check(holder.proof("tok", url=htu))


def _check(proof: str, token: str = "tok", **options: Any) -> Any:  # noqa: S107
    arguments: dict[str, Any] = {
        "method": "GET",
        "url": URL,
        "access_token": token,
        "now": time.time(),
        "algorithms": frozenset({"ES256", "RS256", "EdDSA"}),
        "iat_window": 300.0,
        "leeway": 5.0,
    }
    arguments.update(options)
    return check_proof(proof, **arguments)


def test_a_good_proof_passes(holder: Holder) -> None:
    checked = _check(holder.proof("tok", nonce="n-1"))
    assert checked.thumbprint == holder.jkt
    assert checked.nonce == "n-1"
    assert checked.algorithm == "ES256"


def test_htu_is_compared_after_normalisation(holder: Holder) -> None:
    proof = holder.proof("tok", url="HTTP://TestServer:80/me?page=2")
    assert _check(proof).thumbprint == holder.jkt


@pytest.mark.parametrize(
    "typ", ["dpop+jwt", "application/dpop+jwt", "DPoP+JWT", "Application/DPoP+jwt"]
)
def test_typ_is_compared_as_a_media_type(holder: Holder, typ: str) -> None:
    # RFC 7515 §4.1.9: a typ without "/" is read with "application/" before it, and media
    # types are case-insensitive (RFC 6838 §4.2), as for the access token's at+jwt.
    assert _check(holder.proof("tok", header={"typ": typ})).thumbprint == holder.jkt


def _private_jwk(holder: Holder) -> dict[str, Any]:
    d = holder.key.private_numbers().private_value.to_bytes(32, "big")
    return {**holder.jwk, "d": b64url(d)}


# Every RFC 9449 §4.3 check, failing: (name, proof-making function, detail matched).
FAILURES: list[tuple[str, Callable[[Holder], str], str]] = [
    ("not-a-jws", lambda h: "not.a.jws!", "strict compact JWS"),
    ("two-segments", lambda h: h.proof("tok").rsplit(".", 1)[0], "strict compact JWS"),
    ("no-typ", lambda h: h.proof("tok", header={"typ": None}), "typ missing"),
    ("no-jwk", lambda h: h.proof("tok", header={"jwk": None}), "jwk missing"),
    ("no-jti", lambda h: h.proof("tok", claims={"jti": None}), "jti missing"),
    ("no-htm", lambda h: h.proof("tok", claims={"htm": None}), "htm missing"),
    ("no-htu", lambda h: h.proof("tok", claims={"htu": None}), "htu missing"),
    ("no-iat", lambda h: h.proof("tok", claims={"iat": None}), "iat missing"),
    ("no-ath", lambda h: h.proof("tok", claims={"ath": None}), "ath missing"),
    ("typ-jwt", lambda h: h.proof("tok", header={"typ": "JWT"}), "typ is not"),
    ("typ-at+jwt", lambda h: h.proof("tok", header={"typ": "at+jwt"}), "typ is not"),
    ("typ-other-prefix", lambda h: h.proof("tok", header={"typ": "text/dpop+jwt"}), "typ is not"),
    ("typ-padded", lambda h: h.proof("tok", header={"typ": " dpop+jwt"}), "typ is not"),
    ("typ-not-string", lambda h: h.proof("tok", header={"typ": ["dpop+jwt"]}), "typ is not"),
    ("alg-none", lambda h: h.proof("tok", header={"alg": "none"}), "strict compact JWS"),
    ("alg-hs256", lambda h: h.proof("tok", header={"alg": "HS256"}), "not accepted"),
    ("alg-not-allowed", lambda h: h.proof("tok", header={"alg": "ES384"}), "not accepted"),
    ("alg-not-key", lambda h: h.proof("tok", header={"alg": "RS256"}), "jwk unusable"),
    ("jwk-private", lambda h: h.proof("tok", header={"jwk": _private_jwk(h)}), "private"),
    ("jwk-not-object", lambda h: h.proof("tok", header={"jwk": "k"}), "not a JSON object"),
    ("jwk-other-key", lambda h: h.proof("tok", header={"jwk": Holder().jwk}), "signature"),
    ("bad-signature", lambda h: h.proof("tok")[:-4] + "AAAA", "signature"),
    ("htm-post", lambda h: h.proof("tok", method="POST"), "htm"),
    ("htm-lowercase", lambda h: h.proof("tok", method="get"), "htm"),
    ("htu-other-path", lambda h: h.proof("tok", url="http://testserver/other"), "htu"),
    ("htu-other-host", lambda h: h.proof("tok", url="http://evil.example/me"), "htu"),
    ("htu-https", lambda h: h.proof("tok", url="https://testserver/me"), "htu"),
    ("htu-not-string", lambda h: h.proof("tok", claims={"htu": 1}), "htu"),
    ("htu-garbage", lambda h: h.proof("tok", claims={"htu": "::"}), "htu"),
    ("iat-old", lambda h: h.proof("tok", iat=time.time() - 301), "too old"),
    ("iat-future", lambda h: h.proof("tok", iat=time.time() + 60), "future"),
    ("iat-string", lambda h: h.proof("tok", claims={"iat": "now"}), "iat is not"),
    ("iat-bool", lambda h: h.proof("tok", claims={"iat": True}), "iat is not"),
    ("ath-other-token", lambda h: h.proof("other"), "ath"),
    ("jti-empty", lambda h: h.proof("tok", claims={"jti": ""}), "jti"),
    ("jti-huge", lambda h: h.proof("tok", claims={"jti": "j" * 300}), "jti"),
    ("nonce-number", lambda h: h.proof("tok", claims={"nonce": 7}), "nonce"),
    ("crit", lambda h: h.proof("tok", header={"crit": ["x"], "x": 1}), "strict compact JWS"),
]


@pytest.mark.parametrize(
    ("make", "detail"), [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES]
)
def test_every_check_fails_on_its_own(
    holder: Holder, make: Callable[[Holder], str], detail: str
) -> None:
    with pytest.raises(InvalidDPoPProofError) as raised:
        _check(make(holder), algorithms=frozenset({"ES256", "RS256"}))
    assert detail in str(raised.value.detail)
    assert raised.value.error_code == "invalid_dpop_proof"
    assert raised.value.status == 401


def test_oversized_proof_is_refused_before_parsing(holder: Holder) -> None:
    with pytest.raises(InvalidDPoPProofError, match="too large"):
        _check("a" * 9000)


# -- interop: proofs made by joserfc ----------------------------------------------------


@pytest.mark.parametrize(
    ("make", "alg"),
    [
        (lambda: ECKey.generate_key("P-256"), "ES256"),
        (lambda: RSAKey.generate_key(2048), "PS256"),
        (lambda: OKPKey.generate_key("Ed25519"), "EdDSA"),
        (lambda: OKPKey.generate_key("Ed25519"), "Ed25519"),
        (lambda: OKPKey.generate_key("Ed448"), "Ed448"),
    ],
    ids=["ES256", "PS256", "EdDSA", "Ed25519", "Ed448"],
)
def test_proofs_made_by_joserfc_pass(make: Callable[[], Any], alg: str) -> None:
    key = make()
    proof = joserfc_proof(key, alg, "tok")
    checked = _check(proof, algorithms=frozenset({alg}))
    assert checked.thumbprint == key.thumbprint()


@pytest.mark.parametrize(
    ("curve", "labelled", "alg", "accepted"),
    [
        ("Ed25519", "EdDSA", "EdDSA", True),
        ("Ed25519", "EdDSA", "Ed25519", True),  # the same operation under its RFC 9864 name
        ("Ed25519", "EdDSA", "Ed448", False),  # never another curve's name
        ("Ed25519", "Ed25519", "Ed25519", True),
        ("Ed25519", "Ed25519", "EdDSA", False),  # labelled with the new name: only that
        ("Ed448", "EdDSA", "Ed448", True),
        ("Ed448", "EdDSA", "Ed25519", False),
        ("Ed448", "Ed448", "EdDSA", False),
    ],
)
def test_a_proof_jwk_labelled_eddsa_verifies_its_curves_name(
    curve: str, labelled: str, alg: str, *, accepted: bool
) -> None:
    # RFC 9864: a proof's jwk carrying the deprecated "alg": "EdDSA" was refused under
    # "Ed25519", the name of the very operation it declares.
    key = OKPKey.generate_key(curve)
    jwk = {**key.as_dict(private=False), "alg": labelled}
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": jwk}
    claims = {"jti": "j", "htm": "GET", "htu": URL, "iat": int(time.time())}
    claims["ath"] = access_token_hash("tok")
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    proof = signing_input + "." + b64url(key.private_key.sign(signing_input.encode()))
    everything = frozenset({"EdDSA", "Ed25519", "Ed448"})
    if accepted:
        assert _check(proof, algorithms=everything).thumbprint == key.thumbprint()
    else:
        with pytest.raises(InvalidDPoPProofError, match="jwk unusable"):
            _check(proof, algorithms=everything)


def joserfc_proof(key: Any, alg: str, token: str, *, url: str = URL, **claims: Any) -> str:
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    payload = {
        "jti": str(uuid.uuid4()),
        "htm": "GET",
        "htu": url,
        "iat": int(time.time()),
        "ath": access_token_hash(token),
        **claims,
    }
    registry = jose_jws.JWSRegistry(algorithms=[alg])
    with warnings.catch_warnings():
        # joserfc warns that "EdDSA" is deprecated by RFC 9864 (in favour of "Ed25519"), but
        # RFC 9449 deployments still use it.
        warnings.simplefilter("ignore", SecurityWarning)
        return str(jose_jws.serialize_compact(header, json.dumps(payload), key, registry=registry))


def test_a_proof_key_with_a_huge_rsa_exponent_is_refused_unused() -> None:
    # A client's own proof key, checked before the token's binding: with a 3072-bit
    # exponent every request cost a full-size exponentiation, a hundred times a usual
    # verification, whatever the signature. The key is refused before any signature check.
    public = rsa.generate_private_key(public_exponent=65537, key_size=3072).public_key()
    n = public.public_numbers().n
    e = (1 << 3069) | 1
    jwk = {"kty": "RSA", "n": b64url(n.to_bytes(384, "big")), "e": b64url(e.to_bytes(384, "big"))}
    header = {"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk}
    claims = {"jti": "j", "htm": "GET", "htu": URL, "iat": int(time.time()), "ath": "x"}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    proof = signing_input + "." + b64url((n // 3).to_bytes(384, "big"))
    with pytest.raises(InvalidDPoPProofError, match="jwk unusable"):
        _check(proof, algorithms=frozenset({"RS256"}))


# -- the stores -------------------------------------------------------------------------


def test_memory_replay_store_remembers_until_expiry() -> None:
    now = [1000.0]
    store = MemoryDPoPReplayStore(clock=lambda: now[0])
    assert store.first_use_sync("a", 10)
    assert not store.first_use_sync("a", 10)
    now[0] += 11
    assert store.first_use_sync("a", 10)
    assert len(store) == 1


def test_memory_replay_store_is_bounded_and_never_forgets_a_live_proof() -> None:
    now = [0.0]
    store = MemoryDPoPReplayStore(max_entries=3, clock=lambda: now[0])
    # Each proof's ttl depends on its iat: the first recorded is not the first to expire.
    assert store.first_use_sync("victim", 300)
    assert store.first_use_sync("b", 10)
    assert store.first_use_sync("c", 20)
    with pytest.raises(ReplayStoreError):  # full of live proofs: a replay cannot be ruled out
        store.first_use_sync("d", 60)
    assert not store.first_use_sync("victim", 300)  # still remembered
    now[0] = 15  # "b" expired: its room is free again
    assert store.first_use_sync("d", 60)
    assert len(store) == 3
    for _ in range(2):
        with pytest.raises(ReplayStoreError):
            store.first_use_sync("e", 60)
        assert not store.first_use_sync("victim", 300)
    now[0] = 301
    assert store.first_use_sync("victim", 300)  # expired long ago: a fresh proof may reuse it
    assert len(store) == 1
    with pytest.raises(ConfigurationError):
        MemoryDPoPReplayStore(max_entries=0)


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_a_full_replay_store_answers_503_rather_than_forgetting_a_proof(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    replay = MemoryDPoPReplayStore(max_entries=3, max_per_key=3)
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(replay=replay))
    victim = Holder()
    victims_token = bound(session_issuer, victim)
    captured = dpop(victims_token, victim.proof(victims_token))
    attackers_token = bound(session_issuer, holder)
    for call in open_client(stack, guard):
        assert call("GET", "/me", headers=captured).status_code == 200
        statuses = [
            call(
                "GET", "/me", headers=dpop(attackers_token, holder.proof(attackers_token))
            ).status_code
            for _ in range(4)
        ]
        assert statuses == [200, 200, 503, 503]  # the victim's jti is not pushed out
        assert call("GET", "/me", headers=captured).status_code == 401  # still a replay


def test_memory_replay_store_gives_each_proof_key_a_share() -> None:
    now = [0.0]
    store = MemoryDPoPReplayStore(max_entries=4, max_per_key=2, clock=lambda: now[0])
    assert store.first_use_sync("jkt-a:1", 10)
    assert store.first_use_sync("jkt-a:2", 20)
    with pytest.raises(InvalidDPoPProofError):  # half full, this key's share used up: a 401
        store.first_use_sync("jkt-a:3", 10)
    assert not store.first_use_sync("jkt-a:1", 10)  # a replay is still a replay
    assert store.first_use_sync("jkt-b:1", 10)  # another key keeps its share
    assert store.first_use_sync("jkt-b:a:b", 10)  # the key is what comes before the first ":"
    now[0] = 11  # jkt-a:1 expired: its room in the share is free again
    assert store.first_use_sync("jkt-a:3", 10)
    assert len(store) == 2
    small = MemoryDPoPReplayStore(max_entries=2)  # the default share: at least 1
    assert small.first_use_sync("jkt-a:1", 10)
    with pytest.raises(InvalidDPoPProofError):
        small.first_use_sync("jkt-a:2", 10)
    for options in ({"max_per_key": 0}, {"max_entries": 5, "max_per_key": 6}):
        with pytest.raises(ConfigurationError):
            MemoryDPoPReplayStore(**options)


def test_a_busy_client_alone_is_not_held_to_a_share() -> None:
    # One key (a backend with one DPoP key) sending 20 proofs a second: with the share
    # applied from the first proof, the default store refused it after 250 s, while it held
    # 5 000 proofs of 100 000 and no other client needed the room.
    now = [0.0]
    store = MemoryDPoPReplayStore(clock=lambda: now[0])
    for i in range(8_000):
        now[0] = i / 20
        assert store.first_use_sync(f"jkt-busy:{i}", 305)
    assert len(store) > 5_000  # over the default share, the store well below half full
    small = MemoryDPoPReplayStore(max_entries=10, max_per_key=2)
    assert all(small.first_use_sync(f"jkt-a:{i}", 10) for i in range(5))  # up to half full
    with pytest.raises(InvalidDPoPProofError):
        small.first_use_sync("jkt-a:5", 10)
    assert small.first_use_sync("jkt-b:1", 10)  # others keep their share of the rest
    assert small.first_use_sync("jkt-b:2", 10)


def test_filling_the_store_takes_eleven_keys() -> None:
    # docs/dpop.md: with the default share (a twentieth) one key alone holds half the store,
    # and ten more keys, a share each, fill the rest.
    store = MemoryDPoPReplayStore(max_entries=200)
    held = []
    for owner in range(12):
        count = 0
        try:
            while store.first_use_sync(f"jkt-{owner}:{count}", 30):
                count += 1
        except InvalidDPoPProofError:
            held.append(count)
        except ReplayStoreError:
            held.append(count)
            break
    assert held == [100] + [10] * 10 + [0]


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_one_key_flooding_the_replay_store_does_not_lock_out_other_clients(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    # RFC 9449 §11.1. One client with one bound token filled the whole default store with
    # its proofs, and every DPoP client was then answered 503 until they expired.
    replay = MemoryDPoPReplayStore(max_entries=40)  # the default share: 2 per key, from 20
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(replay=replay))
    token = bound(session_issuer, holder)
    other = Holder()
    others_token = bound(session_issuer, other)
    for call in open_client(stack, guard):
        with structlog.testing.capture_logs() as logged:
            flood = [
                call("GET", "/me", headers=dpop(token, holder.proof(token))) for _ in range(40)
            ]
        assert [r.status_code for r in flood].count(200) == 20  # up to half the store
        refused = flood[-1]
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_dpop_proof"
        assert 'error="invalid_dpop_proof"' in challenge(refused)
        assert logged[-1]["reason"] == "invalid_dpop_proof"
        assert "its share" in logged[-1]["detail"]
        for _ in range(2):
            response = call("GET", "/me", headers=dpop(others_token, other.proof(others_token)))
            assert response.status_code == 200
        assert len(replay) == 22


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_refused_tokens_take_no_room_in_the_replay_store(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    # RFC 9449 §11.1: a proof is remembered once its request is let in. Recorded before the
    # revocation check, a revoked token's proofs (its holder keeps the key) filled the store,
    # and every other client was answered 503 until they expired.
    replay = MemoryDPoPReplayStore(max_entries=2)
    revocation = MemoryRevocationStore()
    policy = DPoPPolicy(replay=replay)
    guard = session_issuer.guard(in_process=True, dpop=policy, revocation=revocation)
    revoked = session_issuer.mint_revoked(revocation, cnf={"jkt": holder.jkt})
    other = Holder()
    token = bound(session_issuer, other)
    for call in open_client(stack, guard):
        for _ in range(3):
            response = call("GET", "/me", headers=dpop(revoked, holder.proof(revoked)))
            assert response.json()["error"] == "invalid_token"
        assert len(replay) == 0
        assert call("GET", "/me", headers=dpop(token, other.proof(token))).status_code == 200


@pytest.mark.anyio
async def test_memory_replay_store_async_side() -> None:
    store = MemoryDPoPReplayStore()
    assert await store.first_use("k", 5)
    assert not await store.first_use("k", 5)


def test_nonces() -> None:
    issuer = NonceIssuer(secret=b"s" * 32, lifetime=60)
    nonce = issuer.issue(1000)
    assert issuer.is_valid(nonce, 1000)
    assert issuer.is_valid(nonce, 1059)
    assert not issuer.is_valid(nonce, 1060)
    assert not issuer.is_valid(nonce, 990)
    assert not NonceIssuer(secret=b"t" * 32).is_valid(nonce, 1000)
    assert not issuer.is_valid(nonce[:-2] + "AA", 1000)
    assert not issuer.is_valid("short", 1000)
    assert not issuer.is_valid("!" * 32, 1000)
    with pytest.raises(ConfigurationError):
        NonceIssuer(secret=b"short")
    with pytest.raises(ConfigurationError):
        NonceIssuer(lifetime=0)
    for lifetime in (float("nan"), float("inf")):
        with pytest.raises(ConfigurationError):
            NonceIssuer(lifetime=lifetime)


@pytest.mark.parametrize("secret", ["s" * 32, 32, ["s"] * 32])
def test_a_nonce_secret_that_is_not_bytes_is_refused_at_construction(secret: Any) -> None:
    # A str secret (an environment variable) passed, then every DPoP request was a 500:
    # the HMAC takes bytes only.
    with pytest.raises(ConfigurationError, match="secret"):
        NonceIssuer(secret=secret)


def test_a_nonce_secret_may_be_any_bytes_like_object() -> None:
    for secret in (bytearray(b"s" * 32), memoryview(b"s" * 32)):
        nonce = NonceIssuer(secret=secret).issue(1000)
        assert NonceIssuer(secret=b"s" * 32).is_valid(nonce, 1000)


def test_a_policy_nonce_that_is_no_nonce_issuer_is_refused() -> None:
    # Was taken, then every DPoP request was a 500 (an AttributeError on issue()).
    with pytest.raises(ConfigurationError, match="nonce"):
        DPoPPolicy(nonce="a shared secret")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "sometimes"},
        {"algorithms": ["HS256"]},
        {"algorithms": []},
        {"algorithms": ["ES256", 1]},  # not sortable with the names: still the config error
        {"algorithms": 7},
        {"iat_window": 0},
        {"leeway": -1},
        # NaN passes any comparison: it would switch off the iat window and replay detection.
        {"iat_window": float("nan")},
        {"iat_window": float("inf")},
        {"leeway": float("nan")},
        {"leeway": float("inf")},
        {"replay": object()},
        {"external_url": "ftp://x"},
        # RFC 9449 §4.3 step 9: a path appended after "?" or "#" would not be compared.
        {"external_url": "https://api.example.com/v1?"},
        {"external_url": "https://api.example.com/v1#"},
        {"external_url": "https://user@api.example.com"},
        # Clients remove dot segments (RFC 3986 §5.2): no htu would ever match.
        {"external_url": "https://api.example.com/v1/.."},
        {"external_url": "https://api.example.com/v1/./"},
        {"external_url": "https://api.example.com/%2E%2E/v1"},
    ],
)
def test_policy_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        DPoPPolicy(**options)


@pytest.mark.parametrize(
    "external_url",
    [
        "https://api.example.com ",  # the host "api.example.com ": no htu matches
        "https://api.example.com/v1 ",  # the path "/v1 /me": no htu matches
        "https://api.example.com/v1\n",  # read from a file or the environment
        "\thttps://api.example.com",
        "https://api.example.com/v\x001",
        b"https://api.example.com",
        7,
    ],
)
def test_an_external_url_with_white_space_or_of_another_type_is_refused(
    external_url: Any,
) -> None:
    # RFC 9449 §4.3 step 9: every request's URL is rebuilt from external_url, so a stray
    # space (an environment variable, a file) failed every proof with "htu does not match",
    # and a value other than text raised AttributeError rather than a configuration error.
    with pytest.raises(ConfigurationError, match="external_url"):
        DPoPPolicy(external_url=external_url)


def test_external_url_may_hold_an_at_sign_in_its_path() -> None:
    policy = DPoPPolicy(external_url="https://api.example.com/@v1/")
    assert policy.request_url("http", "ignored", "/me") == "https://api.example.com/@v1/me"


def test_guard_refuses_a_policy_of_another_type(session_issuer: DevIssuer) -> None:
    with pytest.raises(ConfigurationError):
        session_issuer.guard(in_process=True, dpop={"mode": "required"})


def test_policy_advertises_sorted_algorithms() -> None:
    assert DPoPPolicy(algorithms="ES256").algs == "ES256"
    assert DPoPPolicy(algorithms=["PS256", "ES256"]).algs == "ES256 PS256"


# -- both middlewares -------------------------------------------------------------------


@pytest.fixture(params=["asgi", "wsgi"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_client(
    stack: str, guard: BearerGuard, base_url: str = "http://testserver"
) -> Iterator[Client]:
    if stack == "asgi":
        with TestClient(build_app(guard), base_url=base_url) as client:
            yield client.request
    else:
        transport = httpx.WSGITransport(app=build_flask_app(guard))
        with httpx.Client(transport=transport, base_url=base_url) as client:
            yield client.request


def make_client(stack: str, issuer: DevIssuer, **policy: Any) -> Iterator[Client]:
    yield from open_client(stack, issuer.guard(in_process=True, dpop=DPoPPolicy(**policy)))


@pytest.fixture
def call(stack: str, session_issuer: DevIssuer) -> Iterator[Client]:
    yield from make_client(stack, session_issuer)


@pytest.fixture
def strict(stack: str, session_issuer: DevIssuer) -> Iterator[Client]:
    yield from make_client(stack, session_issuer, mode="required")


def bound(issuer: DevIssuer, holder: Holder, **claims: Any) -> str:
    return issuer.mint(cnf={"jkt": holder.jkt}, **claims)


def challenge(response: httpx.Response) -> str:
    return response.headers.get("www-authenticate", "")


def test_dpop_request_is_accepted(call: Client, session_issuer: DevIssuer, holder: Holder) -> None:
    token = bound(session_issuer, holder)
    with structlog.testing.capture_logs() as logged:
        response = call("GET", "/me", headers=dpop(token, holder.proof(token)))
    assert response.status_code == 200, response.text
    assert response.json()["sub"] == "user-1"
    accepted = [e for e in logged if e["event"] == "token.accepted"]
    assert [e["binding"] for e in accepted] == ["dpop"]


def test_plain_bearer_is_still_accepted_in_allowed_mode(
    call: Client, session_issuer: DevIssuer
) -> None:
    with structlog.testing.capture_logs() as logged:
        response = call("GET", "/me", headers={"Authorization": f"Bearer {session_issuer.mint()}"})
    assert response.status_code == 200
    assert [e["binding"] for e in logged if e["event"] == "token.accepted"] == ["bearer"]


def test_missing_credentials_get_both_challenges(call: Client) -> None:
    response = call("GET", "/me")
    assert response.status_code == 401
    value = challenge(response)
    assert value.startswith("Bearer realm=")
    assert ', DPoP realm="' in value
    assert 'algs="ES256 ES384 Ed25519 EdDSA PS256 RS256"' in value
    assert "error=" not in value


def test_public_paths_stay_open(call: Client) -> None:
    assert call("GET", "/health").status_code == 200


def test_scope_denied_names_the_dpop_binding(
    call: Client, session_issuer: DevIssuer, holder: Holder
) -> None:
    # The scope check runs after authentication: its challenge was DPoP's, but its
    # scope.denied event said "bearer" for a request accepted, and audited, as "dpop".
    token = bound(session_issuer, holder)
    proof = holder.proof(token, url="http://testserver/items")
    with structlog.testing.capture_logs() as logged:
        response = call("GET", "/items", headers=dpop(token, proof))
    assert response.status_code == 403
    assert 'DPoP realm="https://api.example", error="insufficient_scope"' in challenge(response)
    assert [(e["event"], e["binding"]) for e in logged] == [
        ("token.accepted", "dpop"),
        ("scope.denied", "dpop"),
    ]


def test_replayed_proof_is_refused(call: Client, session_issuer: DevIssuer, holder: Holder) -> None:
    token = bound(session_issuer, holder)
    headers = dpop(token, holder.proof(token))
    assert call("GET", "/me", headers=headers).status_code == 200
    with structlog.testing.capture_logs() as logged:
        replay = call("GET", "/me", headers=headers)
    assert replay.status_code == 401
    value = challenge(replay)
    assert 'DPoP realm="' in value
    assert 'error="invalid_dpop_proof"' in value.split("DPoP realm=")[1]
    assert "error=" not in value.split(", DPoP realm=")[0]
    assert replay.json()["error"] == "invalid_dpop_proof"
    rejected = [e for e in logged if e["event"] == "token.rejected"]
    assert rejected[0]["binding"] == "dpop"
    assert rejected[0]["reason"] == "invalid_dpop_proof"
    assert rejected[0]["detail"] == "proof jti replayed"


def test_reused_serves_no_bound_token_without_its_proof(
    session_issuer: DevIssuer, holder: Holder
) -> None:
    # guard.reused() answers the middlewares' cache-hit fast path, which checks no proof: on
    # a guard with DPoP it handed out a DPoP-bound token on its credentials alone.
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy())
    token = bound(session_issuer, holder)
    for call in open_client("asgi", guard):
        assert call("GET", "/me", headers=dpop(token, holder.proof(token))).status_code == 200
    assert guard.reused(b"Bearer " + token.encode()) is None


def test_cached_token_needs_a_fresh_proof_each_time(
    call: Client, session_issuer: DevIssuer, holder: Holder
) -> None:
    token = bound(session_issuer, holder)
    for _ in range(3):
        assert call("GET", "/me", headers=dpop(token, holder.proof(token))).status_code == 200
    # The token's verification comes from the cache now; the binding is still checked.
    thief = Holder()
    response = call("GET", "/me", headers=dpop(token, thief.proof(token)))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_dpop_proof"
    response = call("GET", "/me", headers={"Authorization": f"DPoP {token}"})
    assert response.json()["error"] == "invalid_dpop_proof"


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("wrong-method", lambda h, t: h.proof(t, method="POST")),
        ("wrong-url", lambda h, t: h.proof(t, url="http://testserver/items")),
        ("other-token", lambda h, t: h.proof("another-token")),
        ("old", lambda h, t: h.proof(t, iat=time.time() - 3600)),
        ("bearer-typ", lambda h, t: h.proof(t, header={"typ": "JWT"})),
    ],
)
def test_bad_proofs_through_the_middleware(
    call: Client,
    session_issuer: DevIssuer,
    holder: Holder,
    name: str,
    make: Callable[[Holder, str], str],
) -> None:
    token = bound(session_issuer, holder)
    response = call("GET", "/me", headers=dpop(token, make(holder, token)))
    assert response.status_code == 401, name
    assert response.json()["error"] == "invalid_dpop_proof"


@pytest.mark.parametrize(
    "carry",
    [
        lambda h, token, part: {"jwk": {**h.jwk, "use": part}},
        lambda h, token, part: {"jwk": {**h.jwk, "alg": part}},
        lambda h, token, part: {"jwk": {**h.jwk, "kty": part}},
        lambda h, token, part: {"jwk": {**h.jwk, "crv": part}},
        lambda h, token, part: {"jwk": {**h.jwk, "x": part}},
        lambda h, token, part: {"jwk": {**h.jwk, "kid": [part]}},
        lambda h, token, part: {"alg": part},
    ],
    ids=["use", "jwk-alg", "kty", "crv", "x", "kid", "alg"],
)
@pytest.mark.parametrize("whole", [True, False], ids=["token", "signature"])
def test_a_proof_carrying_the_access_token_keeps_it_out_of_audit_events(
    call: Client,
    session_issuer: DevIssuer,
    holder: Holder,
    carry: Callable[[Holder, str, str], dict[str, Any]],
    whole: bool,
) -> None:
    # The proof is the client's own text: a member holding the access token (or its
    # signature) was quoted in the refusal's detail, and events never carry any part of it.
    token = bound(session_issuer, holder)
    signature = token.rsplit(".", 1)[1]
    proof = holder.proof(token, header=carry(holder, token, token if whole else signature))
    with structlog.testing.capture_logs() as logged:
        response = call("GET", "/me", headers=dpop(token, proof))
    assert response.status_code == 401
    [event] = logged
    assert event["reason"] == "invalid_dpop_proof"
    assert signature[:8] not in repr(event)
    assert token.split(".", 1)[0][:16] not in repr(event)


def test_several_proofs_are_refused(
    stack: str, call: Client, session_issuer: DevIssuer, holder: Holder
) -> None:
    token = bound(session_issuer, holder)
    one, two = holder.proof(token), holder.proof(token)
    # WSGI servers join repeated headers with commas; ASGI keeps them apart.
    forms: list[Any] = [{"Authorization": f"DPoP {token}", "DPoP": f"{one}, {two}"}]
    if stack == "asgi":
        forms.append([("Authorization", f"DPoP {token}"), ("DPoP", one), ("DPoP", two)])
    for headers in forms:
        response = call("GET", "/me", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_dpop_proof"


def test_bound_token_presented_as_bearer_is_refused(
    call: Client, session_issuer: DevIssuer, holder: Holder
) -> None:
    token = bound(session_issuer, holder)
    with structlog.testing.capture_logs() as logged:
        response = call(
            "GET", "/me", headers={"Authorization": f"Bearer {token}", "DPoP": holder.proof(token)}
        )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    value = challenge(response)
    assert 'error="invalid_token"' in value.split(", DPoP realm=")[0]
    rejected = [e for e in logged if e["event"] == "token.rejected"]
    assert rejected[0]["binding"] == "bearer"


@pytest.mark.parametrize(
    "headers",
    [
        lambda h, token: {"Authorization": f"Bearer {token}"},
        lambda h, token: {"Authorization": f"DPoP {token}"},
        lambda h, token: dpop(token, h.proof(token, method="POST")),
    ],
    ids=["as-bearer", "no-proof", "bad-proof"],
)
def test_a_verified_token_refused_for_its_proof_is_audited_with_its_claims(
    call: Client,
    session_issuer: DevIssuer,
    holder: Holder,
    headers: Callable[[Holder, str], dict[str, str]],
) -> None:
    # docs/audit-events.md: a verified token refused carries sub, client_id, iss, jti and
    # scopes, and kid and alg once its header parsed; a proof refusal carried token_fp alone.
    token = bound(session_issuer, holder, jti="dpop-audit")
    with structlog.testing.capture_logs() as logged:
        assert call("GET", "/me", headers=headers(holder, token)).status_code == 401
    [event] = logged
    assert event["event"] == "token.rejected"
    assert (event["sub"], event["jti"], event["iss"]) == (
        "user-1",
        "dpop-audit",
        session_issuer.url,
    )
    assert (event["kid"], event["alg"]) == (
        session_issuer.key().kid,
        session_issuer.key().algorithm,
    )


def test_unbound_token_with_the_dpop_scheme_is_refused(
    call: Client, session_issuer: DevIssuer, holder: Holder
) -> None:
    token = session_issuer.mint()
    response = call("GET", "/me", headers=dpop(token, holder.proof(token)))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in challenge(response).split("DPoP realm=")[1]


def test_dpop_scheme_errors_in_the_header(call: Client) -> None:
    for value in ("DPoP", "DPoP  ", "DPoP a b", "DPoP\t"):  # trailing OWS: RFC 9110 §5.5
        response = call("GET", "/me", headers={"Authorization": value})
        assert response.status_code == 400, value
        assert 'error="invalid_request"' in challenge(response).split("DPoP realm=")[1]
    response = call("GET", "/me?access_token=x", headers={"Authorization": "DPoP abc"})
    assert response.status_code == 400


def test_invalid_token_with_dpop_gets_the_dpop_challenge(call: Client, holder: Holder) -> None:
    response = call("GET", "/me", headers=dpop("not-a-jwt", holder.proof("not-a-jwt")))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response).split("DPoP realm=")[1]


def test_required_mode_refuses_bearer(
    strict: Client, session_issuer: DevIssuer, holder: Holder
) -> None:
    response = strict("GET", "/me", headers={"Authorization": f"Bearer {session_issuer.mint()}"})
    assert response.status_code == 401
    value = challenge(response)
    assert value.startswith("DPoP realm=")
    assert "Bearer" not in value
    assert 'error="invalid_token"' in value
    missing = strict("GET", "/me")
    assert challenge(missing).startswith("DPoP realm=")
    assert "error=" not in challenge(missing)
    token = bound(session_issuer, holder)
    assert strict("GET", "/me", headers=dpop(token, holder.proof(token))).status_code == 200


def test_insufficient_scope_names_the_dpop_scheme(
    call: Client, session_issuer: DevIssuer, holder: Holder
) -> None:
    token = bound(session_issuer, holder, scopes=["other"])
    response = call(
        "GET", "/items", headers=dpop(token, holder.proof(token, url=URL[:-2] + "items"))
    )
    assert response.status_code == 403
    value = challenge(response)
    assert 'error="insufficient_scope"' in value.split("DPoP realm=")[1]
    assert "error=" not in value.split(", DPoP realm=")[0]


def test_nonce_flow(stack: str, session_issuer: DevIssuer, holder: Holder) -> None:
    nonces = NonceIssuer(lifetime=60)
    for call in make_client(stack, session_issuer, nonce=nonces):
        token = bound(session_issuer, holder)
        first = call("GET", "/me", headers=dpop(token, holder.proof(token)))
        assert first.status_code == 401
        assert first.json()["error"] == "use_dpop_nonce"
        assert 'error="use_dpop_nonce"' in challenge(first).split("DPoP realm=")[1]
        nonce = first.headers["dpop-nonce"]
        assert nonces.is_valid(nonce, time.time())
        stale = NonceIssuer().issue(time.time())
        refused = call("GET", "/me", headers=dpop(token, holder.proof(token, nonce=stale)))
        assert refused.json()["error"] == "use_dpop_nonce"
        again = call("GET", "/me", headers=dpop(token, holder.proof(token, nonce=nonce)))
        assert again.status_code == 200, again.text


def test_external_url_behind_a_proxy(stack: str, session_issuer: DevIssuer, holder: Holder) -> None:
    token = bound(session_issuer, holder)
    public = "https://api.example.com/v1/me"
    for call in make_client(stack, session_issuer, external_url="https://API.example.com/v1/"):
        # The proxy strips /v1 and speaks plain HTTP to the app, with another Host.
        assert call("GET", "/me", headers=dpop(token, holder.proof(token, url=public))).is_success
        internal = call("GET", "/me", headers=dpop(token, holder.proof(token)))
        assert internal.json()["error"] == "invalid_dpop_proof"
    for call in make_client(stack, session_issuer):
        refused = call("GET", "/me", headers=dpop(token, holder.proof(token, url=public)))
        assert refused.json()["error"] == "invalid_dpop_proof"


def test_a_decimal_window_checks_proofs(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    # Read from a configuration file as Decimal, the window passed the policy's checks and
    # every proof then failed on float - Decimal: 401 invalid_dpop_proof for every client.
    token = bound(session_issuer, holder)
    for call in make_client(stack, session_issuer, iat_window=Decimal("300")):
        response = call("GET", "/me", headers=dpop(token, holder.proof(token)))
        assert response.status_code == 200, response.text
        stale = holder.proof(token, iat=time.time() - 400)
        assert call("GET", "/me", headers=dpop(token, stale)).status_code == 401


def test_htu_from_host_and_scheme_without_external_url(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    token = bound(session_issuer, holder)
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy())
    for call in open_client(stack, guard, base_url="https://Api.Example.com:443"):
        url = "https://api.example.com/me"
        assert call("GET", "/me", headers=dpop(token, holder.proof(token, url=url))).is_success
        url = "http://api.example.com/me"
        assert call("GET", "/me", headers=dpop(token, holder.proof(token, url=url))).is_error


def test_a_proof_made_for_another_host_is_refused_once_the_apis_hosts_are_listed(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    # RFC 9449 §4.3 step 9, §11.1: htu binds a proof to one URI. Rebuilt from Host, which the
    # client chooses, a proof captured on its way to server A (same audience, same path) was
    # accepted by server B when sent with "Host: A". Listing B's hosts makes it B's URI only.
    token = bound(session_issuer, holder)
    a_proof = holder.proof(token, url="https://a.example/me")
    listed = DPoPPolicy(hosts=["b.example", "b.example:8443"])
    for policy, replayed in ((DPoPPolicy(), 200), (listed, 401)):
        guard = session_issuer.guard(in_process=True, dpop=policy)
        for call in open_client(stack, guard, base_url="https://b.example"):
            headers = {**dpop(token, a_proof), "Host": "a.example"}
            assert call("GET", "/me", headers=headers).status_code == replayed
    guard = session_issuer.guard(in_process=True, dpop=listed)
    for call in open_client(stack, guard, base_url="https://b.example"):
        # The listed hosts, compared case-insensitively, the default port said or not.
        for host, url in (
            ("b.example", "https://b.example/me"),
            ("B.Example:443", "https://b.example/me"),
            ("b.example:8443", "https://b.example:8443/me"),
        ):
            headers = {**dpop(token, holder.proof(token, url=url)), "Host": host}
            assert call("GET", "/me", headers=headers).is_success, host
        # A port not listed is another origin (RFC 6454 §4).
        proof = holder.proof(token, url="https://b.example:9443/me")
        headers = {**dpop(token, proof), "Host": "b.example:9443"}
        assert call("GET", "/me", headers=headers).status_code == 401


def test_a_host_with_a_port_too_long_for_a_port_is_refused_not_a_500(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    # RFC 9110 §7.2 lets port be any run of digits; past 4,300 of them int() raises
    # ValueError (CPython's conversion limit). No port has more than five digits (0-65535).
    token = bound(session_issuer, holder)
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(hosts=["b.example"]))
    for call in open_client(stack, guard, base_url="https://b.example"):
        for port in ("9" * 5000, "0" * 4400 + "443", "65536"):
            host = f"b.example:{port}"
            proof = holder.proof(token, url=f"https://{host}/me")
            headers = {**dpop(token, proof), "Host": host}
            assert call("GET", "/me", headers=headers).status_code == 401, port[:8]
    for port in ("9" * 5000, "65536"):
        with pytest.raises(ConfigurationError, match="hosts"):
            DPoPPolicy(hosts=[f"b.example:{port}"])


def test_listed_hosts_are_matched_per_scheme_and_port() -> None:
    policy = DPoPPolicy(hosts=("API.example.com", "[::1]:8000", "localhost:443"))
    assert policy.hosts == frozenset({"api.example.com", "[::1]:8000", "localhost:443"})
    assert policy.request_url("https", "api.example.com", "/me") == "https://api.example.com/me"
    assert policy.request_url("http", "api.example.com:80", "/me") == "http://api.example.com:80/me"
    assert policy.request_url("https", "api.example.com:80", "/me") == ""
    assert policy.request_url("http", "[::1]:8000", "/me") == "http://[::1]:8000/me"
    assert policy.request_url("http", "[::1]", "/me") == ""
    assert policy.request_url("https", "localhost", "/me") == "https://localhost/me"
    assert policy.request_url("http", "localhost", "/me") == ""
    assert policy.request_url("https", "evil.example", "/me") == ""
    assert DPoPPolicy(hosts="api.example.com").hosts == frozenset({"api.example.com"})


@pytest.mark.parametrize(
    "options",
    [
        {"hosts": []},
        {"hosts": [""]},
        {"hosts": ["api.example.com/v1"]},
        {"hosts": ["https://api.example.com"]},
        {"hosts": ["user@api.example.com"]},
        {"hosts": ["api.example.com:port"]},
        {"hosts": ["api.example.com "]},
        {"hosts": [7]},
        {"hosts": 7},
        {"hosts": ["api.example.com"], "external_url": "https://api.example.com"},
    ],
)
def test_hosts_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="hosts"):
        DPoPPolicy(**options)


def test_a_guard_warns_once_when_its_dpop_urls_come_from_the_host_header(
    session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "bearerguard"):
        session_issuer.guard(in_process=True, dpop=DPoPPolicy())
        session_issuer.guard(in_process=True, dpop=DPoPPolicy(hosts=["api.example.com"]))
        session_issuer.guard(
            in_process=True, dpop=DPoPPolicy(external_url="https://api.example.com")
        )
        session_issuer.guard(in_process=True)
    warned = [record.getMessage() for record in caplog.records if record.name == "bearerguard"]
    assert len(warned) == 1
    assert "DPoPPolicy" in warned[0]
    assert "external_url" in warned[0]
    assert "hosts" in warned[0]


def test_joserfc_proof_through_the_middleware(call: Client, session_issuer: DevIssuer) -> None:
    key = ECKey.generate_key("P-256")
    token = session_issuer.mint(cnf={"jkt": key.thumbprint()})
    response = call("GET", "/me", headers=dpop(token, joserfc_proof(key, "ES256", token)))
    assert response.status_code == 200, response.text


def test_fully_specified_edwards_proofs_through_the_middleware(
    call: Client, session_issuer: DevIssuer
) -> None:
    # RFC 9864: "Ed25519" proofs (what joserfc makes by default now) were refused; they are
    # accepted by default, each only from a key of its own curve.
    key = OKPKey.generate_key("Ed25519")
    token = session_issuer.mint(cnf={"jkt": key.thumbprint()})
    response = call("GET", "/me", headers=dpop(token, joserfc_proof(key, "Ed25519", token)))
    assert response.status_code == 200, response.text
    assert "Ed25519" in challenge(call("GET", "/me"))  # advertised in algs
    # An Ed448 key signing under the Ed25519 name: refused, whatever the signature.
    ed448 = OKPKey.generate_key("Ed448")
    bound448 = session_issuer.mint(cnf={"jkt": ed448.thumbprint()})
    header = {"typ": "dpop+jwt", "alg": "Ed25519", "jwk": ed448.as_dict(private=False)}
    claims = {"jti": "j", "htm": "GET", "htu": URL, "iat": int(time.time())}
    claims["ath"] = access_token_hash(bound448)
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = ed448.private_key.sign(signing_input.encode())
    proof = signing_input + "." + b64url(signature)
    with structlog.testing.capture_logs() as logged:
        response = call("GET", "/me", headers=dpop(bound448, proof))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_dpop_proof"
    assert "no allowed algorithm" in logged[-1]["detail"]


def test_shared_replay_store_across_guards(session_issuer: DevIssuer, holder: Holder) -> None:
    shared = MemoryDPoPReplayStore()
    token = bound(session_issuer, holder)
    headers = dpop(token, holder.proof(token))
    statuses = []
    for stack in ("asgi", "wsgi"):
        guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(replay=shared))
        statuses.extend(
            call("GET", "/me", headers=headers).status_code for call in open_client(stack, guard)
        )
    assert statuses == [200, 401]


@pytest.mark.parametrize(
    "cnf",
    [{"jkt": "x" * 43}, {"jwk": {"kty": "EC"}}, {"jkt": "x" * 43, "x5t#S256": "y" * 43}, "jkt"],
    ids=["jkt", "jwk", "two", "not-an-object"],
)
def test_a_bound_token_the_guard_cannot_check_is_refused(
    stack: str, session_issuer: DevIssuer, cnf: object
) -> None:
    # RFC 7800 §3.1: cnf names who may present the token; taken as a plain bearer token, a
    # stolen one would work for anyone.
    headers = {"Authorization": f"Bearer {session_issuer.mint(cnf=cnf)}"}
    guards = [session_issuer.guard(in_process=True)]
    if cnf != {"jkt": "x" * 43}:  # bound some way that DPoP does not check either
        guards.append(session_issuer.guard(in_process=True, dpop=DPoPPolicy()))
    for guard in guards:
        for call in open_client(stack, guard):
            assert call("GET", "/me", headers=headers).status_code == 401


@pytest.mark.anyio
async def test_guard_without_request_info_treats_the_call_as_bearer(
    session_issuer: DevIssuer, holder: Holder
) -> None:
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy())
    assert (await guard.authenticate(session_issuer.mint())).subject == "user-1"
    with pytest.raises(Exception, match="Bearer scheme"):
        await guard.authenticate(bound(session_issuer, holder))


# -- the Redis replay store, and store failures -----------------------------------------


@pytest.fixture
def redis_replay(redis_server: RedisServer, redis_namespace: str) -> Iterator[RedisDPoPReplayStore]:
    store = RedisDPoPReplayStore(redis_server.url, namespace=redis_namespace)
    yield store
    store.close()


def test_redis_replay_store_sync(
    redis_replay: RedisDPoPReplayStore, redis_server: RedisServer
) -> None:
    assert redis_replay.first_use_sync("jkt:a", 30)
    assert not redis_replay.first_use_sync("jkt:a", 30)
    with redis_server.client() as client:
        ttl = client.pttl(next(iter(client.scan_iter("*:dpop:jkt:a"))))
    assert 0 < ttl <= 30_000
    assert redis_replay.first_use_sync("jkt:b", 0.001)


@pytest.mark.anyio
async def test_redis_replay_store_async(redis_server: RedisServer, redis_namespace: str) -> None:
    one = RedisDPoPReplayStore(redis_server.url, namespace=redis_namespace)
    two = RedisDPoPReplayStore(redis_server.url, namespace=redis_namespace)
    try:
        assert await one.first_use("jkt:x", 30)
        assert not await two.first_use("jkt:x", 30)  # another instance sees it
        assert not two.first_use_sync("jkt:x", 30)
    finally:
        await one.aclose()
        await two.aclose()


def test_redis_replay_store_advises_no_evicting_policy() -> None:
    """An evicting policy forgets live proofs, and a replayed proof is then accepted:
    volatile-ttl, once advised here, evicts exactly these short-lived keys first."""
    advice = " ".join((RedisDPoPReplayStore.__doc__ or "").split())
    assert "maxmemory-policy noeviction``:" in advice
    assert "noeviction`` or" not in advice


@pytest.mark.anyio
async def test_redis_replay_store_with_only_a_sync_client_serves_the_async_side(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    """Built for WSGI with client= alone, the store under ASGI must still record proofs (in
    a worker thread), not answer every DPoP request with 503."""
    import redis

    sync_client = redis.Redis.from_url(redis_server.url, socket_timeout=1)
    store = RedisDPoPReplayStore(client=sync_client, namespace=redis_namespace)
    try:
        assert await store.first_use("jkt:s", 30)
        assert not await store.first_use("jkt:s", 30)
        assert not store.first_use_sync("jkt:s", 30)
    finally:
        await store.aclose()
        sync_client.close()


@pytest.mark.anyio
async def test_redis_replay_store_survives_a_redis_restart(private_redis: RedisServer) -> None:
    """A pooled connection Redis closed (a restart, its idle ``timeout``) is retried once on
    a fresh connection, as the other Redis components do, not answered with 503."""
    store = RedisDPoPReplayStore(private_redis.url)
    try:
        assert await store.first_use("jkt:before", 30)
        assert store.first_use_sync("jkt:before-sync", 30)
        private_redis.restart()
        assert await store.first_use("jkt:after", 30)
        assert store.first_use_sync("jkt:after-sync", 30)
    finally:
        await store.aclose()


def redis_client(stack: str, guard: BearerGuard, store: RedisDPoPReplayStore) -> Iterator[Client]:
    """A client whose Redis store's asynchronous connections are closed on the app's loop."""
    if stack == "asgi":
        with TestClient(build_app(guard), base_url="http://testserver") as client:
            yield client.request
            client.portal.call(store.aclose)
    else:
        yield from open_client(stack, guard)
        store.close()


def test_redis_replay_store_through_both_middlewares(
    redis_replay: RedisDPoPReplayStore, session_issuer: DevIssuer, holder: Holder
) -> None:
    token = bound(session_issuer, holder)
    headers = dpop(token, holder.proof(token))
    statuses = []
    for stack in ("wsgi", "asgi"):  # the ASGI client closes the store on its way out
        guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(replay=redis_replay))
        statuses.extend(
            call("GET", "/me", headers=headers).status_code
            for call in redis_client(stack, guard, redis_replay)
        )
    assert statuses == [200, 401]


def test_one_key_flooding_the_redis_replay_store_does_not_lock_out_other_clients(
    stack: str,
    session_issuer: DevIssuer,
    holder: Holder,
    redis_server: RedisServer,
    redis_namespace: str,
) -> None:
    # RFC 9449 §11.1, as for the memory store: one client with one bound token, flooding,
    # is refused 401 once the store is half full; another client keeps its share.
    store = RedisDPoPReplayStore(redis_server.url, namespace=redis_namespace, max_entries=40)
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(replay=store))
    token = bound(session_issuer, holder)
    other = Holder()
    others_token = bound(session_issuer, other)
    for call in redis_client(stack, guard, store):
        with structlog.testing.capture_logs() as logged:
            flood = [
                call("GET", "/me", headers=dpop(token, holder.proof(token))) for _ in range(24)
            ]
        assert [r.status_code for r in flood] == [200] * 20 + [401] * 4  # half the store
        refused = flood[-1]
        assert refused.json()["error"] == "invalid_dpop_proof"
        assert 'error="invalid_dpop_proof"' in challenge(refused)
        assert logged[-1]["reason"] == "invalid_dpop_proof"
        assert "its share" in logged[-1]["detail"]
        for _ in range(2):
            response = call("GET", "/me", headers=dpop(others_token, other.proof(others_token)))
            assert response.status_code == 200


@pytest.mark.parametrize("setting", ["iat_window", "leeway"])
@pytest.mark.parametrize("seconds", [86_400.5, 10**6, 1e17, 1e306])
def test_a_window_beyond_a_day_is_a_configuration_error(setting: str, seconds: float) -> None:
    # Every jti is remembered for iat_window + leeway: 1e17 s overflowed Redis's expiry (503
    # on every DPoP request), 1e306 the milliseconds computed for it (a 500).
    with pytest.raises(ConfigurationError, match=f"{setting} must be at most 86400 seconds"):
        DPoPPolicy(**{setting: seconds})


@pytest.mark.parametrize("seconds", [86_400.5, 10**6, 1e17, 1e306])
def test_a_nonce_lifetime_beyond_a_day_is_a_configuration_error(seconds: float) -> None:
    # A nonce limits how far ahead proofs can be made (RFC 9449 §8, §11.1): a huge lifetime
    # silently kept every nonce fresh for good.
    with pytest.raises(ConfigurationError, match="lifetime must be at most 86400 seconds"):
        NonceIssuer(lifetime=seconds)
    longest = NonceIssuer(secret=b"s" * 32, lifetime=86_400)
    nonce = longest.issue(1000)
    assert longest.is_valid(nonce, 1000 + 86_399)
    assert not longest.is_valid(nonce, 1000 + 86_400)


@pytest.mark.parametrize("seconds", [0.5, 0.999, 1, 4.9])
def test_a_nonce_lifetime_under_five_seconds_is_a_configuration_error(seconds: float) -> None:
    # A nonce's issue time is kept to the second: with lifetime=0.5 one issued at x.9 was
    # expired when issued. Instances sharing the secret may be 5 s apart (_NONCE_SKEW), and
    # a client needs a round trip to use a nonce: under 5 s, nonces failed unpredictably.
    with pytest.raises(ConfigurationError, match="lifetime must be at least 5 seconds"):
        NonceIssuer(lifetime=seconds)
    shortest = NonceIssuer(secret=b"s" * 32, lifetime=5)
    nonce = shortest.issue(1000.999)  # kept as 1000: acceptable for 4 s at least
    assert shortest.is_valid(nonce, 1000.999)
    assert shortest.is_valid(nonce, 1004.999)
    assert not shortest.is_valid(nonce, 1005)


def test_the_longest_window_works_with_the_redis_store(
    stack: str,
    session_issuer: DevIssuer,
    holder: Holder,
    redis_server: RedisServer,
    redis_namespace: str,
) -> None:
    store = RedisDPoPReplayStore(redis_server.url, namespace=redis_namespace)
    policy = DPoPPolicy(iat_window=86_400, leeway=86_400, replay=store)
    guard = session_issuer.guard(in_process=True, dpop=policy)
    token = bound(session_issuer, holder)
    old = holder.proof(token, iat=time.time() - 86_000)
    for call in redis_client(stack, guard, store):
        statuses = [call("GET", "/me", headers=dpop(token, old)).status_code for _ in range(2)]
        assert statuses == [200, 401]  # accepted, then a replay
    with redis_server.client() as client:
        (key,) = client.scan_iter(f"{redis_namespace}:dpop:{holder.jkt}:*")
        assert 86_000_000 < client.pttl(key) <= 86_800_000  # iat + window + leeway - now


@pytest.mark.parametrize("ttl", [1e17, 1e306, float("inf"), float("nan")])
def test_a_replay_store_refuses_a_ttl_it_cannot_keep(
    redis_replay: RedisDPoPReplayStore, ttl: float
) -> None:
    # Fails closed (503), never an OverflowError (a 500) nor a NaN expiry that never
    # expires a jti it compares against (replays accepted).
    for store in (redis_replay, MemoryDPoPReplayStore()):
        with pytest.raises(ReplayStoreError, match="ttl"):
            store.first_use_sync("jkt:huge", ttl)


@pytest.mark.parametrize(
    "options",
    [
        {"url": "http://x"},
        {"url": "redis://x", "client": object()},
        {},
        {"url": "redis://x", "namespace": ""},
        {"url": "redis://x", "socket_timeout": 0},
        {"url": "redis://x", "max_connections": 0},
        {"url": "redis://x", "connect_timeout": 0},
        {"url": "redis://x", "namespace": "a\0b"},
    ],
)
def test_redis_replay_store_configuration(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RedisDPoPReplayStore(**options)


@pytest.mark.anyio
async def test_redis_replay_store_without_a_side() -> None:
    # A store with only client= serves the asynchronous side through it (tested above).
    async_only = RedisDPoPReplayStore(async_client=object())
    with pytest.raises(ReplayStoreError):
        async_only.first_use_sync("k", 1)


def test_redis_down_fails_closed(
    stack: str, session_issuer: DevIssuer, holder: Holder, closed_port: int
) -> None:
    store = RedisDPoPReplayStore(f"redis://127.0.0.1:{closed_port}/0", connect_timeout=0.2)
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(replay=store))
    token = bound(session_issuer, holder)
    try:
        for call in redis_client(stack, guard, store):
            with structlog.testing.capture_logs() as logged:
                response = call("GET", "/me", headers=dpop(token, holder.proof(token)))
            assert response.status_code == 503
            assert "retry-after" in response.headers
            assert logged[-1]["reason"] == "replay_store_unavailable"
    finally:
        store.close()


class BrokenStore:
    async def first_use(self, key: str, ttl: float) -> bool:
        raise RuntimeError("down")

    def first_use_sync(self, key: str, ttl: float) -> bool:
        raise RuntimeError("down")


def test_any_store_failure_fails_closed(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(replay=BrokenStore()))
    token = bound(session_issuer, holder)
    for call in open_client(stack, guard):
        response = call("GET", "/me", headers=dpop(token, holder.proof(token)))
        assert response.status_code == 503


class QuotingStore:
    """A replay store whose failure quotes the access token from the request it serves
    (as a careless application's store may), starting ``at`` characters into its message."""

    def __init__(self, token: str, at: int) -> None:
        self.message = "x" * (at - len("RuntimeError: ")) + token

    async def first_use(self, key: str, ttl: float) -> bool:
        raise RuntimeError(self.message)

    def first_use_sync(self, key: str, ttl: float) -> bool:
        raise RuntimeError(self.message)


@pytest.mark.parametrize("at", [20, 150, 199])
def test_a_replay_store_failure_quoting_the_token_is_audited_without_it(
    stack: str, session_issuer: DevIssuer, holder: Holder, at: int
) -> None:
    # replay_failed cut the message to 200 characters before the audit log looked for the
    # token: a token straddling the cut was no longer found, and its start (its header, part
    # of its payload) went to auth.unavailable.
    token = bound(session_issuer, holder)
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(replay=QuotingStore(token, at)))
    for call in open_client(stack, guard):
        with audit_events() as events:
            response = call("GET", "/me", headers=dpop(token, holder.proof(token)))
        assert response.status_code == 503
        detail = events.assert_one("auth.unavailable")["detail"]
        # Redacted, then cut: not even the token's first character is left.
        assert detail == ("RuntimeError: ".ljust(at, "x") + "REDACTED")[:200]


class QuotingRefusal:
    """A replay store refusing the proof itself (a client over its share), its message
    quoting the access token."""

    def __init__(self, token: str) -> None:
        self.message = f"too many proofs for {token}"

    async def first_use(self, key: str, ttl: float) -> bool:
        raise InvalidDPoPProofError(self.message)

    def first_use_sync(self, key: str, ttl: float) -> bool:
        raise InvalidDPoPProofError(self.message)


def test_a_replay_store_refusal_quoting_the_token_is_audited_without_it(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    # A store's own InvalidDPoPProofError is the client's 401: its detail went to
    # token.rejected as the store wrote it, token included.
    token = bound(session_issuer, holder)
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(replay=QuotingRefusal(token)))
    for call in open_client(stack, guard):
        with audit_events() as events:
            response = call("GET", "/me", headers=dpop(token, holder.proof(token)))
        assert response.status_code == 401
        event = events.assert_one("token.rejected")
        assert event["detail"] == "too many proofs for REDACTED"
        assert token.rpartition(".")[2] not in repr(event)


def test_websocket_handshake_with_dpop(session_issuer: DevIssuer, holder: Holder) -> None:
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(mode="required"))
    token = bound(session_issuer, holder)
    # A handshake is a GET; its htu names the http(s) URL of the same resource.
    proof = holder.proof(token, url="http://testserver/ws")
    with (
        TestClient(build_app(guard)) as client,
        client.websocket_connect("/ws", headers=dpop(token, proof)) as socket,
    ):
        assert socket.receive_json() == {"sub": "user-1"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("scheme", "external_url", "htu", "accepted"),
    [
        # ASGI: a websocket scope's scheme is optional, "ws" when absent; Daphne over TLS
        # leaves it out. A handshake is a GET over http(s) (RFC 6455 §4.1), so "ws" is http.
        ({}, None, "http://testserver/ws", True),
        ({}, None, "https://testserver/ws", False),  # TLS unknown: external_url says it
        ({}, "https://api.example.com", "https://api.example.com/ws", True),
        ({"scheme": "ws"}, None, "http://testserver/ws", True),
        ({"scheme": "wss"}, None, "https://testserver/ws", True),
        ({"scheme": "wss"}, None, "http://testserver/ws", False),
    ],
    ids=["absent", "absent-https", "absent-external", "ws", "wss", "wss-http"],
)
async def test_a_websocket_scope_s_scheme_names_the_http_url_of_the_handshake(
    session_issuer: DevIssuer,
    holder: Holder,
    scheme: dict[str, str],
    external_url: str | None,
    htu: str,
    accepted: bool,
) -> None:
    policy = DPoPPolicy(mode="required", external_url=external_url)
    guard = session_issuer.guard(in_process=True, dpop=policy)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    token = bound(session_issuer, holder)
    headers = [
        (b"host", b"testserver"),
        (b"authorization", f"DPoP {token}".encode()),
        (b"dpop", holder.proof(token, url=htu).encode()),
    ]
    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b""}
    scope |= {"headers": headers, "client": ("127.0.0.1", 1), **scheme}
    sent = await asgi_call(
        BearerGuardMiddleware(app, guard=guard), scope, [{"type": "websocket.connect"}]
    )
    refused = {"type": "websocket.close", "code": 1008, "reason": "invalid_dpop_proof"}
    assert sent[0] == ({"type": "websocket.accept"} if accepted else refused)


# -- one contract for every replay store ------------------------------------------------


ReplayStore = MemoryDPoPReplayStore | RedisDPoPReplayStore


@pytest.fixture(params=["memory", "redis"])
def any_replay_store(request: pytest.FixtureRequest) -> Iterator[Callable[..., ReplayStore]]:
    """Makes instances of one store (options as for the store's constructor): memory
    instances share the first one made, as instances sharing a Redis share its keys."""
    if request.param == "memory":
        shared: list[MemoryDPoPReplayStore] = []

        def make_memory(**options: Any) -> MemoryDPoPReplayStore:
            if not shared:
                shared.append(MemoryDPoPReplayStore(**options))
            return shared[0]

        yield make_memory
        return
    made: list[RedisDPoPReplayStore] = []
    server: RedisServer = request.getfixturevalue("redis_server")
    namespace: str = request.getfixturevalue("redis_namespace")

    def make(**options: Any) -> RedisDPoPReplayStore:
        made.append(RedisDPoPReplayStore(server.url, namespace=namespace, **options))
        return made[-1]

    yield make
    for store in made:
        store.close()


def test_replay_store_contract(any_replay_store: Callable[..., ReplayStore]) -> None:
    one, two = any_replay_store(), any_replay_store()
    assert isinstance(one, DPoPReplayStore)
    assert one.first_use_sync("jkt:1", 30)
    assert not one.first_use_sync("jkt:1", 30)
    assert not two.first_use_sync("jkt:1", 30)  # instances sharing the store share the jti
    assert two.first_use_sync("other-jkt:1", 30)  # a jti is scoped by the key
    assert one.first_use_sync("jkt:short", 0.05)
    time.sleep(0.12)
    assert one.first_use_sync("jkt:short", 0.05)  # expired with its window


def test_replay_store_share_contract(any_replay_store: Callable[..., ReplayStore]) -> None:
    # RFC 9449 §11.1. The Redis store had no share: one key with one valid bound token could
    # fill Redis with its proofs, pushing it to maxmemory (503 for every client).
    one = any_replay_store(max_entries=4, max_per_key=2)
    two = any_replay_store(max_entries=4, max_per_key=2)
    # jkt-a:1 must stay live through the checks below, and lapse before the last: 2 s, not
    # 0.3 or 1, which a process kept off a throttled, shared core could outlast midway.
    lapses = time.monotonic() + 2.0
    assert one.first_use_sync("jkt-a:1", 2.0)
    assert two.first_use_sync("jkt-a:2", 30)
    with pytest.raises(InvalidDPoPProofError, match="its share"):  # half full, share used
        one.first_use_sync("jkt-a:3", 30)
    with pytest.raises(InvalidDPoPProofError, match="its share"):  # on every instance
        two.first_use_sync("jkt-a:3", 30)
    assert not one.first_use_sync("jkt-a:1", 30)  # a replay is still a replay
    assert two.first_use_sync("jkt-b:1", 30)  # another key keeps its share
    assert one.first_use_sync("jkt-b:a:b", 30)  # the key is what comes before the first ":"
    with pytest.raises(InvalidDPoPProofError, match="holds 2 "):  # so jkt-b holds its share
        two.first_use_sync("jkt-b:2", 30)
    with pytest.raises(ReplayStoreError, match="full"):  # every entry live: never forgotten
        two.first_use_sync("jkt-c:1", 30)
    time.sleep(max(0.0, lapses + 0.2 - time.monotonic()))
    # jkt-a:1 expired: its room in the share and the store is free again.
    assert one.first_use_sync("jkt-a:3", 30)


def test_replay_store_share_applies_from_half_full(
    any_replay_store: Callable[..., ReplayStore],
) -> None:
    # Below half full, one busy key alone is not held to its share.
    store = any_replay_store(max_entries=10, max_per_key=2)
    assert all(store.first_use_sync(f"jkt-a:{i}", 30) for i in range(5))
    with pytest.raises(InvalidDPoPProofError):
        store.first_use_sync("jkt-a:5", 30)
    assert store.first_use_sync("jkt-b:1", 30)  # others keep their share of the rest
    assert store.first_use_sync("jkt-b:2", 30)
    with pytest.raises(InvalidDPoPProofError):
        store.first_use_sync("jkt-b:3", 30)


@pytest.mark.anyio
async def test_replay_store_share_async_side(any_replay_store: Callable[..., ReplayStore]) -> None:
    store = any_replay_store(max_entries=2, max_per_key=1)
    try:
        assert await store.first_use("jkt-a:1", 30)
        with pytest.raises(InvalidDPoPProofError, match="its share"):
            await store.first_use("jkt-a:2", 30)
        assert not await store.first_use("jkt-a:1", 30)
        assert await store.first_use("jkt-b:1", 30)
        with pytest.raises(ReplayStoreError):
            await store.first_use("jkt-c:1", 30)
    finally:
        if isinstance(store, RedisDPoPReplayStore):
            await store.aclose()


def test_replay_store_share_holds_under_concurrent_instances(
    any_replay_store: Callable[..., ReplayStore],
) -> None:
    # The check and the record are one atomic step: instances racing with one key's proofs
    # never record more than the share allows (here half the store: the key is alone).
    stores = [any_replay_store(max_entries=20, max_per_key=5) for _ in range(4)]
    outcomes: list[str] = []

    def outcome(store: ReplayStore, key: str) -> str:
        try:
            return "ok" if store.first_use_sync(key, 30) else "seen"
        except InvalidDPoPProofError:
            return "share"

    def send(store: ReplayStore, worker: int) -> None:
        outcomes.extend(outcome(store, f"jkt-a:{worker}-{i}") for i in range(10))

    threads = [threading.Thread(target=send, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(outcomes)) == ["ok", "share"]
    assert outcomes.count("ok") == 10


@pytest.mark.parametrize(
    "options",
    [
        {"max_entries": 0},
        {"max_per_key": 0},
        {"max_entries": 5, "max_per_key": 6},
    ],
)
def test_replay_store_share_configuration(
    any_replay_store: Callable[..., ReplayStore], options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        any_replay_store(**options)


@pytest.mark.anyio
async def test_redis_replay_store_works_with_the_documented_acl(private_redis: RedisServer) -> None:
    # The previous release needed SET alone; the script needs more, and a Redis ACL user
    # without it gets 503 for every DPoP request. docs/dpop.md names what it needs.
    page = (Path(__file__).parent.parent / "docs" / "dpop.md").read_text()
    found = re.search(r"`(\+evalsha [^`]+)`", page)
    assert found is not None
    with private_redis.client() as admin:
        admin.acl_setuser(
            "api", enabled=True, passwords=["+secret"], commands=found[1].split(), keys=["api:*"]
        )
        url = private_redis.url.replace("redis://", "redis://api:secret@")
        store = RedisDPoPReplayStore(url, namespace="api", max_entries=2, max_per_key=1)
        try:
            assert store.first_use_sync("jkt-a:1", 30)
            admin.script_flush()  # redis-py loads the script again (SCRIPT LOAD)
            # The script prunes only when an entry has expired: give it one to prune, so
            # that the ACL is shown to allow the pruning command too.
            admin.zadd("api:dpop-live", {"expired": 0})
            assert await store.first_use("jkt-b:1", 30)
            assert admin.zscore("api:dpop-live", "expired") is None
            assert not await store.first_use("jkt-b:1", 30)
            with pytest.raises(InvalidDPoPProofError):
                store.first_use_sync("jkt-a:2", 30)
            assert (await store.health())["healthy"]
        finally:
            await store.aclose()


def test_redis_replay_store_counts_do_not_grow_with_the_jti(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    # The jti is the client's choice (up to 256 characters, 1 KB in UTF-8): the sorted sets
    # count each proof by a digest of fixed size, not by two more copies of the jti, so the
    # documented bytes a proof hold whatever the client sends.
    store = RedisDPoPReplayStore(redis_server.url, namespace=redis_namespace)
    longest = "\U0001f600" * 253
    try:
        for i in range(200):
            assert store.first_use_sync(f"jkt-a:{longest}{i:03d}", 30)
        with redis_server.client() as client:
            for name in ("dpop-key:jkt-a", "dpop-live"):
                key = f"{redis_namespace}:{name}"
                assert {len(member) for member in client.zrange(key, 0, -1)} == {22}
                # With the jti as the member: over 1 KB a proof, in each set.
                assert client.memory_usage(key, samples=0) < 200 * 200
            keys = client.scan_iter(f"{redis_namespace}:*")
            used = sum(client.memory_usage(key, samples=0) for key in keys)
            assert used < 200 * 1_700  # docs/dpop.md: up to 1.7 KB a proof with the longest jti
    finally:
        store.close()


@pytest.mark.anyio
async def test_redis_replay_store_obeys_maxmemory(private_redis: RedisServer) -> None:
    # Over maxmemory (noeviction) Redis refuses a script's first write if it may grow memory,
    # but lets every later write of that script through. The script once pruned first (a
    # write Redis never refuses), so it recorded proofs far past maxmemory; it must fail
    # closed (503) as SET NX did, writing nothing.
    store = RedisDPoPReplayStore(private_redis.url)
    try:
        assert store.first_use_sync("jkt-a:1", 30)
        with private_redis.client() as admin:
            keys = admin.dbsize()
            admin.config_set("maxmemory", 1)  # far below what is used
            try:
                with pytest.raises(ReplayStoreError, match="maxmemory"):
                    store.first_use_sync("jkt-a:2", 30)
                with pytest.raises(ReplayStoreError, match="maxmemory"):
                    await store.first_use("jkt-b:1", 30)
                assert not store.first_use_sync("jkt-a:1", 30)  # a replay is still a replay
                assert admin.dbsize() == keys
            finally:
                admin.config_set("maxmemory", 0)
        assert store.first_use_sync("jkt-a:2", 30)
    finally:
        await store.aclose()


def test_redis_replay_store_bookkeeping_expires_with_the_proofs(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    # Bounded memory: every key the share adds expires with the last proof it counts.
    # The brief proofs live a second, Redis's clock running on while this process waits for
    # a core: with 0.2 s, a loaded machine saw some expire before they were counted.
    store = RedisDPoPReplayStore(redis_server.url, namespace=redis_namespace)
    try:
        assert store.first_use_sync("jkt-a:1", 30)
        assert store.first_use_sync("jkt-a:2", 1.0)
        assert store.first_use_sync("jkt-b:1", 1.0)
        with redis_server.client() as client:
            keys = sorted(client.scan_iter(f"{redis_namespace}:*"))
            assert len(keys) == 6  # three proofs, a count per proof key, the store's count
            assert all(0 < client.pttl(key) <= 30_000 for key in keys)
            brief = [f"{redis_namespace}:dpop:{k}" for k in ("jkt-a:2", "jkt-b:1")]
            deadline = time.monotonic() + 10
            while client.exists(*brief):
                assert time.monotonic() < deadline, "the brief proofs never expired"
                time.sleep(0.05)
            left = sorted(client.scan_iter(f"{redis_namespace}:*"))
            assert left == [
                f"{redis_namespace}:{k}" for k in ("dpop-key:jkt-a", "dpop-live", "dpop:jkt-a:1")
            ]
            assert store.first_use_sync("jkt-c:1", 0.1)  # prunes what expired
            time.sleep(0.3)
            assert store.first_use_sync("jkt-c:2", 0.1)
            live = client.zrange(f"{redis_namespace}:dpop-live", 0, -1)
            assert sorted(live) == sorted(_member(key) for key in ("jkt-a:1", "jkt-c:2"))
    finally:
        store.close()


def test_redis_replay_store_prunes_a_backlog_in_bounded_batches(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    # A burst then a lull left one accepted proof to prune every expired entry at once
    # (O(M) inside the script, blocking Redis past the client's socket_timeout: 503). Each
    # accepted proof now prunes at most _PRUNE_BATCH; the counts read only live entries
    # (ZCOUNT by score), so the entries not yet pruned change no decision.
    store = RedisDPoPReplayStore(
        redis_server.url, namespace=redis_namespace, max_entries=10, max_per_key=1
    )
    backlog = 3 * _PRUNE_BATCH
    live_set, key_set = f"{redis_namespace}:dpop-live", f"{redis_namespace}:dpop-key:jkt-a"
    try:
        with redis_server.client() as client:
            expired = int(time.time() * 1000) - 1_000
            for name in (live_set, key_set):
                client.zadd(name, {f"old{i:019d}": expired for i in range(backlog)})
                client.pexpire(name, 30_000)
            assert store.first_use_sync("jkt-a:1", 30)  # a backlog far past both bounds
            assert client.zcard(live_set) == backlog - _PRUNE_BATCH + 1
            assert client.zcard(key_set) == backlog - _PRUNE_BATCH + 1
            assert store.first_use_sync("jkt-b:1", 30)
            assert client.zcard(live_set) == backlog - 2 * _PRUNE_BATCH + 2
            for i in range(2, 5):  # half full (5 live): jkt-a is past its share of 1
                assert store.first_use_sync(f"jkt-{i}:1", 30)
            with pytest.raises(InvalidDPoPProofError):
                store.first_use_sync("jkt-a:2", 30)
            for i in range(5, 10):
                assert store.first_use_sync(f"jkt-{i}:1", 30)
            with pytest.raises(ReplayStoreError, match="10 live proofs"):
                store.first_use_sync("jkt-10:1", 30)  # full: 10 live, whatever is pruned
            assert client.zcard(live_set) == 10  # the backlog is gone
            assert client.zcard(key_set) == backlog - _PRUNE_BATCH + 1  # pruned when used
    finally:
        store.close()


# -- ASGI and WSGI answer alike ---------------------------------------------------------

SCENARIOS: list[tuple[str, dict[str, Any], Callable[[DevIssuer, Holder], Any]]] = [
    ("no-credentials", {}, lambda i, h: {}),
    ("dpop-ok", {}, lambda i, h: dpop(t := bound(i, h), h.proof(t))),
    ("bearer-ok", {}, lambda i, h: {"Authorization": f"Bearer {i.mint()}"}),
    ("bound-as-bearer", {}, lambda i, h: {"Authorization": f"Bearer {bound(i, h)}"}),
    ("no-proof", {}, lambda i, h: {"Authorization": f"DPoP {bound(i, h)}"}),
    ("bad-proof", {}, lambda i, h: dpop(t := bound(i, h), h.proof(t, method="PUT"))),
    ("two-proofs", {}, lambda i, h: dpop(t := bound(i, h), h.proof(t) + "," + h.proof(t))),
    ("unbound-dpop", {}, lambda i, h: dpop(t := i.mint(), h.proof(t))),
    ("expired", {}, lambda i, h: dpop(t := i.mint_expired(cnf={"jkt": h.jkt}), h.proof(t))),
    ("empty-scheme", {}, lambda i, h: {"Authorization": "DPoP"}),
    ("required-bearer", {"mode": "required"}, lambda i, h: {"Authorization": f"Bearer {i.mint()}"}),
    ("required-none", {"mode": "required"}, lambda i, h: {}),
    ("nonce", {"nonce": NonceIssuer()}, lambda i, h: dpop(t := bound(i, h), h.proof(t))),
]


def _outcome(response: httpx.Response, logged: list[Any]) -> tuple[Any, ...]:
    events = [(e["event"], e["reason"], e["binding"]) for e in logged if "binding" in e]
    return (
        response.status_code,
        response.headers.get("www-authenticate"),
        response.content,
        "dpop-nonce" in response.headers,
        events,
    )


@pytest.mark.parametrize(
    ("policy", "make"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_asgi_and_wsgi_answer_alike(
    session_issuer: DevIssuer,
    holder: Holder,
    policy: dict[str, Any],
    make: Callable[[DevIssuer, Holder], Any],
) -> None:
    outcomes = []
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(**policy))
    for stack in ("asgi", "wsgi"):
        for call in open_client(stack, guard):
            with structlog.testing.capture_logs() as logged:
                response = call("GET", "/me", headers=make(session_issuer, holder))
            outcomes.append(_outcome(response, logged))
    asgi, wsgi = outcomes
    if asgi[0] == 200:
        # The app's own answers differ between the Starlette and Flask test apps.
        asgi, wsgi = asgi[:2] + asgi[3:], wsgi[:2] + wsgi[3:]
    assert asgi == wsgi


@pytest.mark.parametrize("host", ["testserver/items#", "testserver/items?", "x@testserver"])
def test_a_host_header_cannot_move_the_htu_to_another_path(
    stack: str, session_issuer: DevIssuer, holder: Holder, host: str
) -> None:
    # RFC 9449 §4.3 step 9 with RFC 9110 §7.2: a Host that ends the authority early would
    # rebuild the URL as http://testserver/items#/me, and a proof made for /items (or for
    # "/", with "testserver?") would be accepted on /me.
    token = bound(session_issuer, holder)
    for call in make_client(stack, session_issuer):
        for url in ("http://testserver/items", "http://testserver/"):
            proof = holder.proof(token, url=url)
            headers = {**dpop(token, proof), "Host": host}
            assert call("GET", "/me", headers=headers).status_code == 401
        # a well-formed Host with a port still works
        proof = holder.proof(token, url="http://testserver:8080/me")
        headers = {**dpop(token, proof), "Host": "TestServer:8080"}
        assert call("GET", "/me", headers=headers).is_success


def _served_path(environ_or_scope: Any) -> bytes:
    return str(environ_or_scope.get("PATH_INFO", environ_or_scope.get("path"))).encode()


async def _asgi_catch_all(scope: Any, receive: Any, send: Any) -> None:
    """An app that serves every path (a proxy, a mount at "/"): the guard alone decides."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": _served_path(scope)})


def _wsgi_catch_all(environ: Any, start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("content-length", str(len(_served_path(environ))))])
    return [_served_path(environ)]


def _raw_get(port: int, target: str, headers: dict[str, str], host: str = "api.example") -> bytes:
    """The status line of a GET for ``target`` exactly as written, over a plain socket."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0]


def _serving(
    stack: str, guard: BearerGuard, http: str = "h11", root_path: str = ""
) -> Iterator[int]:
    """uvicorn (``http``: h11 or httptools) or werkzeug on 127.0.0.1 serving a catch-all app
    behind the guard. ``root_path``: uvicorn's ``--root-path``; werkzeug gets a ``ProxyFix``
    taking ``X-Forwarded-Prefix`` into ``SCRIPT_NAME``."""
    if stack == "asgi":
        uvicorn = pytest.importorskip("uvicorn")
        app = BearerGuardMiddleware(_asgi_catch_all, guard=guard)
        config = uvicorn.Config(app, http=http, log_level="warning", root_path=root_path)
        server = uvicorn.Server(config)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            deadline = time.monotonic() + 10
            while not server.started:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.01)
            try:
                yield sock.getsockname()[1]
            finally:
                server.should_exit = True
                thread.join(10)
    else:
        from werkzeug.serving import make_server

        guarded = BearerGuardWSGIMiddleware(_wsgi_catch_all, guard=guard)
        wsgi = make_server("127.0.0.1", 0, ProxyFix(guarded, x_prefix=1) if root_path else guarded)
        with serving(wsgi) as port:
            yield port


@pytest.mark.parametrize("external_url", [None, "http://api.example"])
def test_a_request_target_not_in_origin_form_cannot_name_another_host(
    stack: str, session_issuer: DevIssuer, holder: Holder, external_url: str | None
) -> None:
    # RFC 9449 §4.3 step 9, RFC 9110 §3.2.1: uvicorn (h11) and werkzeug pass the target
    # "@evil.example/me" on as the path. Appended to the authority it became userinfo:
    # http://api.example@evil.example/me, so a proof the client made for another server
    # (which that server could replay here) was accepted.
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(external_url=external_url))
    token = bound(session_issuer, holder)
    for port in _serving(stack, guard):
        foreign = holder.proof(token, url="http://evil.example/me")
        assert b" 401 " in _raw_get(port, "@evil.example/me", dpop(token, foreign))
        own = holder.proof(token, url="http://api.example/me")
        assert b" 200 " in _raw_get(port, "/me", dpop(token, own))


def test_under_a_root_path_external_url_is_the_origin_alone(
    stack: str, session_issuer: DevIssuer, holder: Holder
) -> None:
    # docs/dpop.md: a proxy strips /v1 and the server is told of it (uvicorn --root-path /v1,
    # or SCRIPT_NAME through ProxyFix's x_prefix). The path then includes /v1 (ASGI 3,
    # PEP 3333), so an external_url ending in /v1 names /v1/v1/me and matches no htu.
    token = bound(session_issuer, holder)
    stripped = {"X-Forwarded-Prefix": "/v1"}  # what the proxy sends; uvicorn ignores it
    for external_url, status in [
        ("http://api.example", b" 200 "),
        ("http://api.example/v1", b" 401 "),
    ]:
        guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(external_url=external_url))
        for port in _serving(stack, guard, root_path="/v1"):
            proof = holder.proof(token, url="http://api.example/v1/me")
            assert status in _raw_get(port, "/me", {**dpop(token, proof), **stripped})


@pytest.mark.parametrize(("stack", "http"), [("asgi", "h11"), ("asgi", "httptools"), ("wsgi", "")])
def test_trailing_white_space_after_the_host_is_no_part_of_it(
    session_issuer: DevIssuer, holder: Holder, stack: str, http: str
) -> None:
    # RFC 9110 §5.5: uvicorn's httptools parser passes the Host field's trailing white space
    # on; the URL rebuilt from it was no valid authority and matched no htu, so every proof
    # of a client sending it was refused.
    if http == "httptools":
        pytest.importorskip("httptools")
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy())
    token = bound(session_issuer, holder)
    for port in _serving(stack, guard, http=http):
        proof = holder.proof(token, url="http://api.example/me")
        assert b" 200 " in _raw_get(port, "/me", dpop(token, proof), host="api.example \t")
        other = holder.proof(token, url="http://other.example/me")
        assert b" 401 " in _raw_get(port, "/me", dpop(token, other), host="api.example \t")


def test_a_proof_cannot_forge_or_flood_the_audit_detail(
    call: Client, session_issuer: DevIssuer, holder: Holder
) -> None:
    # The JOSE library quotes a bad curve; the detail says why without the member's value
    # (which could be the access token), and is escaped and bounded like every other field.
    token = bound(session_issuer, holder)
    crv = "P-256\n2026-01-01 [info] token.accepted sub=admin\x1b[2K" + "A" * 3000
    proof = holder.proof(token, header={"jwk": {**holder.jwk, "crv": crv}})
    with structlog.testing.capture_logs() as logged:
        assert call("GET", "/me", headers=dpop(token, proof)).status_code == 401
    (event,) = [e for e in logged if e["event"] == "token.rejected"]
    assert event["detail"].isprintable()
    assert "2026-01-01" not in event["detail"]
    assert len(event["detail"]) < 600


@pytest.mark.parametrize("jkt", [None, 5, ""])
def test_a_malformed_jkt_is_never_taken_as_a_bearer_token(
    call: Client, session_issuer: DevIssuer, jkt: Any
) -> None:
    # RFC 9449 §7.2: a token with cnf.jkt is DPoP-bound, whatever its value.
    token = session_issuer.mint(cnf={"jkt": jkt})
    response = call("GET", "/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/users/ada%40example.com", "/tags/a%2Cb", "/a%3Ab;c=d"])
def test_escaped_path_characters_match_the_request(
    call: Client, session_issuer: DevIssuer, holder: Holder, path: str
) -> None:
    # RFC 9449 §4.2: htu is the URL the client requested, escapes and all (a path built
    # with encodeURIComponent); the server only sees the path decoded.
    token = bound(session_issuer, holder)
    proof = holder.proof(token, url="http://testserver" + path)
    response = call("GET", path, headers=dpop(token, proof))
    assert response.status_code == 404  # past the guard: the app has no such route


@pytest.mark.parametrize("path", ["/files/a%2Fb", "/files/a%2fb%2F"])
def test_an_escaped_slash_matches_the_url_the_client_requested(
    stack: str, session_issuer: DevIssuer, holder: Holder, path: str
) -> None:
    # RFC 3986 §2.2: %2F is not "/", and the decoded path has lost it; the raw path the
    # server passes on (ASGI raw_path, WSGI REQUEST_URI) is the URL of the htu.
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy())
    token = bound(session_issuer, holder)
    headers = dpop(token, holder.proof(token, url="http://testserver" + path))
    if stack == "asgi":
        with TestClient(build_app(guard)) as client:
            status = client.get(path, headers=headers).status_code
    else:  # werkzeug's client, as its server, sets REQUEST_URI (httpx's transport does not)
        status = (
            build_flask_app(guard)
            .test_client()
            .get(path, headers=headers, base_url="http://testserver")
            .status_code
        )
    assert status == 404  # past the guard: the app has no such route
    # The decoded path's own URL is another one: its proof does not pass for this request.
    other = dpop(token, holder.proof(token, url="http://testserver/files/a/b"))
    if stack == "asgi":
        with TestClient(build_app(guard)) as client:
            assert client.get(path, headers=other).status_code == 401
    else:
        flask_client = build_flask_app(guard).test_client()
        assert (
            flask_client.get(path, headers=other, base_url="http://testserver").status_code == 401
        )


@pytest.mark.anyio
async def test_a_path_escaping_bytes_that_are_not_utf8_matches_the_url_the_client_requested(
    session_issuer: DevIssuer, holder: Holder
) -> None:
    # uvicorn decodes the path as UTF-8 with replacement (urllib's unquote: U+FFFD for %E9): the
    # raw path no longer unescaped to it, so the htu was checked against the decoded path
    # escaped again (/caf%EF%BF%BD), a URL the client never requested, and every proof for
    # the one it did was refused. The raw path is the request's URL when the server's
    # decoding of it is the path the app routes on.
    app = build_app(session_issuer.guard(in_process=True, dpop=DPoPPolicy()))
    token = bound(session_issuer, holder)
    for url, status in [
        ("http://testserver/caf%E9", 404),  # past the guard: the app has no such route
        ("http://testserver/caf%EF%BF%BD", 401),
    ]:
        headers = [
            (b"host", b"testserver"),
            (b"authorization", f"DPoP {token}".encode()),
            (b"dpop", holder.proof(token, url=url).encode()),
        ]
        scope = http_scope(headers, path="/caf\ufffd", raw_path=b"/caf%E9")
        assert (await asgi_call(app, scope))[0]["status"] == status


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("htu_path", "path", "raw_path", "accepted"),
    [
        # RFC 3986 §2.3: a percent-encoded unreserved character is that character.
        ("/%7Euser/%61", b"/~user/a", b"/~user/a", True),
        ("/~user/a", b"/~user/a", b"/%7euser/%61", True),
        ("/a/%2E/b", b"/a/./b", b"/a/./b", True),
        # Dot segments are compared as written, never removed on either side: a proof
        # matches only a request that names the same segments.
        ("/a/./b", b"/a/./b", b"/a/./b", True),
        ("/a/./b", b"/a/b", b"/a/b", False),
        ("/a/b", b"/a/./b", b"/a/./b", False),
        ("/static/../admin", b"/admin", b"/admin", False),
        ("/admin", b"/static/../admin", b"/static/../admin", False),
        ("/admin", b"/static/../admin", b"/static/%2e%2e/admin", False),
        ("/admin", b"/static/%2e%2e/admin", b"/static/%252e%252e/admin", False),
    ],
)
async def test_htu_dot_segments_and_escapes(
    session_issuer: DevIssuer,
    holder: Holder,
    htu_path: str,
    path: bytes,
    raw_path: bytes,
    accepted: bool,
) -> None:
    # RFC 9449 §4.3 step 9 compares after RFC 3986 §6.2.2 normalisation. Escapes of
    # unreserved characters are undone on both sides. Dot segments are not removed
    # (§6.2.2.3): "/static/../admin" may reach another handler than "/admin" (a file
    # server, a router matching as written), so a proof naming one never passes for the
    # other; clients remove dot segments before sending (RFC 3986 §5.2), so theirs match.
    policy = DPoPPolicy()
    guard = session_issuer.guard(in_process=True, dpop=policy)
    token = bound(session_issuer, holder)
    proof = holder.proof(token, url="http://testserver" + htu_path)
    request = dpop_request(
        policy, "dpop", [proof.encode()], "GET", "http", "testserver", path, raw_path
    )
    if accepted:
        assert (await guard.authenticate(token, dpop=request)).subject == "user-1"
    else:
        with pytest.raises(InvalidDPoPProofError, match="htu"):
            await guard.authenticate(token, dpop=request)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw_path", "url", "status"),
    [
        # A bytearray or memoryview is read as the bytes it holds, as asgi.py reads header
        # values: its escaped slash is the URL the client requested (RFC 3986 §2.2).
        (bytearray(b"/files/a%2Fb"), "http://testserver/files/a%2Fb", 404),
        (memoryview(b"/files/a%2Fb"), "http://testserver/files/a%2Fb", 404),
        (memoryview(b"/files/a%2Fb"), "http://testserver/files/a/b", 401),
        # ASGI says bytes or None: anything else is no raw path, and the decoded path,
        # escaped again, is the URL.
        (7, "http://testserver/files/a/b", 404),
        ("/files/a%2Fb", "http://testserver/files/a/b", 404),
        ("/files/a%2Fb", "http://testserver/files/a%2Fb", 401),
        ([b"/files/a%2Fb"], "http://testserver/files/a/b", 404),
    ],
)
async def test_a_raw_path_that_is_not_bytes_is_no_500(
    session_issuer: DevIssuer, holder: Holder, raw_path: object, url: str, status: int
) -> None:
    # A raw_path of another type made _escaped_path raise (memoryview has no split, an int
    # no slice): a 500 without an audit event on any DPoP request such a server passed on.
    app = build_app(session_issuer.guard(in_process=True, dpop=DPoPPolicy()))
    token = bound(session_issuer, holder)
    headers = [
        (b"host", b"testserver"),
        (b"authorization", f"DPoP {token}".encode()),
        (b"dpop", holder.proof(token, url=url).encode()),
    ]
    scope = http_scope(headers, path="/files/a/b", raw_path=raw_path)
    with structlog.testing.capture_logs() as logged:
        sent = await asgi_call(app, scope)
    assert sent[0]["status"] == status
    assert [e["event"] for e in logged if e["event"].startswith("token.")] == [
        "token.accepted" if status == 404 else "token.rejected"
    ]


@pytest.mark.anyio
async def test_trailing_white_space_after_a_proof_is_no_part_of_it(
    session_issuer: DevIssuer, holder: Holder
) -> None:
    # RFC 9110 §5.5: uvicorn's httptools parser passes a field's trailing white space on.
    policy = DPoPPolicy()
    guard = session_issuer.guard(in_process=True, dpop=policy)
    token = bound(session_issuer, holder)
    proof = holder.proof(token)
    request = dpop_request(
        policy, "dpop", [proof.encode() + b" \t"], "GET", "http", "testserver", b"/me"
    )
    assert request.proofs == (proof,)
    assert (await guard.authenticate(token, dpop=request)).subject == "user-1"


@pytest.mark.anyio
async def test_a_path_no_utf_8_can_hold_is_refused_not_a_500(
    session_issuer: DevIssuer, holder: Holder
) -> None:
    # A lone surrogate outside surrogateescape's range: no real server decodes one, yet the
    # answer is still a refusal with its audit event (the proof's htu cannot match it).
    app = build_app(session_issuer.guard(in_process=True, dpop=DPoPPolicy()))
    token = bound(session_issuer, holder)
    headers = [
        (b"authorization", f"DPoP {token}".encode()),
        (b"dpop", holder.proof(token).encode()),
    ]
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": "/me\ud800",
        "raw_path": None,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    with structlog.testing.capture_logs() as logged:
        sent = await asgi_call(app, scope)
    assert sent[0]["status"] == 401
    assert [e["event"] for e in logged] == ["token.rejected"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("server", "url"),
    [
        (("::1", 8000), "http://[::1]:8000/me"),
        (("127.0.0.1", 8000), "http://127.0.0.1:8000/me"),
        (("/run/api.sock", None), "http:///run/api.sock/me"),
    ],
)
async def test_without_a_host_header_the_servers_address_is_the_authority(
    session_issuer: DevIssuer, holder: Holder, server: tuple[str, int | None], url: str
) -> None:
    # HTTP/1.0 sends no Host: the URL is rebuilt from the server's address, an IPv6 one in
    # brackets (RFC 3986 §3.2.2), as a client would have written it in its proof's htu.
    app = build_app(session_issuer.guard(in_process=True, dpop=DPoPPolicy()))
    token = bound(session_issuer, holder)
    headers = [
        (b"authorization", f"DPoP {token}".encode()),
        (b"dpop", holder.proof(token, url=url).encode()),
    ]
    scope = http_scope(headers, http_version="1.0", server=server)
    sent = await asgi_call(app, scope)
    expected = 401 if server[1] is None else 200  # a socket path is no authority: no htu matches
    assert sent[0]["status"] == expected


@pytest.mark.anyio
async def test_an_empty_host_header_is_no_authority_the_servers_address_is(
    session_issuer: DevIssuer, holder: Holder
) -> None:
    # granian (2.x) answers an HTTP/1.0 request without Host with an empty one in the scope
    # (and http_version "1", its port as text). An empty Host names no authority (RFC 9112
    # §3.2): the URL is rebuilt from the server's address, as without the header; it was
    # rebuilt as "http:///me" and every proof refused.
    app = build_app(session_issuer.guard(in_process=True, dpop=DPoPPolicy()))
    token = bound(session_issuer, holder)
    headers = [
        (b"host", b""),
        (b"authorization", f"DPoP {token}".encode()),
        (b"dpop", holder.proof(token, url="http://127.0.0.1:8000/me").encode()),
    ]
    scope = http_scope(headers, http_version="1", server=("127.0.0.1", "8000"))
    with structlog.testing.capture_logs() as logged:
        sent = await asgi_call(app, scope)
    assert sent[0]["status"] == 200
    assert [e["event"] for e in logged] == ["token.accepted"]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [bytearray, memoryview])
@pytest.mark.parametrize("header", [b"host", b"dpop"])
async def test_a_bytes_like_host_or_proof_value_is_read_as_its_bytes(
    session_issuer: DevIssuer, holder: Holder, header: bytes, kind: type[bytearray | memoryview]
) -> None:
    # ASGI says bytes, yet Starlette reads any bytes-like header value, and the middleware
    # reads an Authorization one as its bytes. A memoryview Host or DPoP value answered 500
    # (no decode(), no strip()): each is now read as the bytes it holds, the proof checked.
    app = build_app(session_issuer.guard(in_process=True, dpop=DPoPPolicy()))
    token = bound(session_issuer, holder)
    for proof, status, event in [
        (holder.proof(token), 200, "token.accepted"),
        (holder.proof(token, url="http://elsewhere/me"), 401, "token.rejected"),
    ]:
        values = {b"host": b"testserver", b"dpop": proof.encode()}
        headers = [(b"authorization", f"DPoP {token}".encode())]
        headers += [
            (name, kind(value) if name == header else value) for name, value in values.items()
        ]
        with structlog.testing.capture_logs() as logged:
            sent = await asgi_call(app, http_scope(headers))
        assert sent[0]["status"] == status
        assert [e["event"] for e in logged] == [event]


@pytest.mark.parametrize(
    ("server_name", "url"),
    [("::1", "http://[::1]:8000/me"), ("api.example", "http://api.example:8000/me")],
)
def test_without_a_host_header_wsgi_rebuilds_the_authority_from_the_server(
    session_issuer: DevIssuer, holder: Holder, server_name: str, url: str
) -> None:
    app = build_flask_app(session_issuer.guard(in_process=True, dpop=DPoPPolicy()))
    token = bound(session_issuer, holder)
    environ = EnvironBuilder(
        path="/me",
        headers={"Authorization": f"DPoP {token}", "DPoP": holder.proof(token, url=url)},
    ).get_environ()
    del environ["HTTP_HOST"]
    environ.update(SERVER_NAME=server_name, SERVER_PORT="8000", SERVER_PROTOCOL="HTTP/1.0")
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0].startswith("200")
