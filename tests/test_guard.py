"""BearerGuard configuration and the verification flow, without HTTP framing."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import numbers
import sys
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

import bearerguard.guard as guard_module
from bearerguard import BearerGuard, RefreshPolicy
from bearerguard.dpop import DPoPPolicy
from bearerguard.errors import (
    BadSignatureError,
    ConfigurationError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidRequestError,
    InvalidTypeError,
    MalformedTokenError,
    NotYetValidError,
    UnknownKeyError,
    UnsupportedAlgorithmError,
)
from bearerguard.mtls import CertificateBinding
from bearerguard.testing import DevIssuer, Override
from bearerguard.token import token_fingerprint
from tests.helpers import Clock, b64, segment


class _Whole:
    """An integer as numpy's are: a numbers.Integral, no int subclass."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value


numbers.Integral.register(_Whole)

pytestmark = pytest.mark.anyio
ISS = "https://issuer.example"
SECRET = "s" * 32


@pytest.mark.parametrize(
    "options",
    [
        {"issuer": "http://issuer.example", "audience": "a"},
        {"issuer": "ftp://issuer.example", "audience": "a"},
        {"issuer": "https://user:pw@issuer.example", "audience": "a"},
        {"issuer": ISS, "audience": ""},
        {"issuer": ISS, "audience": []},
        {"issuer": ISS, "audience": "a", "algorithms": ["none"]},
        {"issuer": ISS, "audience": "a", "algorithms": []},
        {"issuer": ISS, "audience": "a", "algorithms": ["HS256"]},
        {"issuer": ISS, "audience": "a", "secret": SECRET},
        {"issuer": ISS, "audience": "a", "algorithms": ["HS256"], "secret": "short"},
        {"issuer": ISS, "audience": "a", "jwks_uri": "http://keys.example/jwks"},
        {"issuer": ISS, "audience": "a", "profile": "strict"},
        {"issuer": ISS, "audience": "a", "leeway": -1},
        {"issuer": ISS, "audience": "a", "revocation": object()},
        {"issuer": ISS, "audience": "a", "revocation_failure": "maybe"},
        {"issuer": ISS, "audience": "a", "keys": "not a key"},
        {"issuer": ISS, "audience": "a", "keys": {"keys": [{"kty": "oct", "k": "AA"}]}},
        {"issuer": ISS, "audience": "a", "keys": {"keys": []}},
        {"issuer": ISS, "audience": "a", "keys": {"keys": []}, "jwks_uri": ISS + "/jwks"},
        {"issuer": ISS, "audience": "a", "refresh": "fast"},
    ],
    ids=lambda options: ",".join(f"{k}={v!s:.20}" for k, v in options.items() if k != "issuer"),
)
def test_unsafe_or_inconsistent_configuration_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        BearerGuard(**options)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_http_is_allowed_on_loopback(host: str) -> None:
    BearerGuard(issuer=f"http://{host}:8080", audience="a")


def test_refresh_policy_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        RefreshPolicy(min_ttl=10, default_ttl=5)


async def test_static_keys_work_offline(session_issuer: DevIssuer) -> None:
    rsa_key = session_issuer.key("RS256")
    pem = rsa_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwks = session_issuer.jwks()
    for keys in (pem, pem.decode(), jwks, json.dumps(jwks), [jwks]):
        guard = BearerGuard(issuer=session_issuer.url, audience=session_issuer.audience, keys=keys)
        token = await guard.authenticate(session_issuer.mint(sub="static"))
        assert token.subject == "static"
    # A key without a kid serves only as the sole key: next to others it would never be
    # used, and two of them would refuse every token. Said at construction.
    other = (
        session_issuer.key("ES256")
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for keys in ([pem, jwks], [pem, other]):
        with pytest.raises(ConfigurationError, match="each need a kid"):
            BearerGuard(issuer=session_issuer.url, audience=session_issuer.audience, keys=keys)


# A P-112 key (secp112r1): PEM that cryptography parses, on a curve it does not support.
SECP112R1_PEM = """-----BEGIN PUBLIC KEY-----
MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEyNpSz4iNRPGKeRqufqxXaXdn1vb4877o
zDU3gA==
-----END PUBLIC KEY-----
"""


def test_static_keys_that_are_no_usable_key_are_a_configuration_error(
    session_issuer: DevIssuer,
) -> None:
    """A DER key given as bytes (not text: it raised UnicodeDecodeError) and a PEM key on
    a curve cryptography lacks (UnsupportedAlgorithm) are refused as every other unusable
    key is, with a ConfigurationError."""
    der = (
        session_issuer.key("ES256")
        .private_key.public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for keys in (der, [der], SECP112R1_PEM, SECP112R1_PEM.encode()):
        with pytest.raises(ConfigurationError):
            BearerGuard(issuer=session_issuer.url, audience=session_issuer.audience, keys=keys)


async def test_pem_key_verifies_tokens_whatever_their_kid(session_issuer: DevIssuer) -> None:
    public = session_issuer.key("ES256").private_key.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    guard = BearerGuard(issuer=session_issuer.url, audience=session_issuer.audience, keys=pem)
    assert (await guard.authenticate(session_issuer.mint(algorithm="ES256"))).algorithm == "ES256"
    with pytest.raises(UnsupportedAlgorithmError):
        await guard.authenticate(session_issuer.mint(algorithm="RS256"))


def hs_token(secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "aud": "api", "exp": now + 60, "iat": now, "sub": "svc", **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


async def test_shared_secret_configured_on_purpose() -> None:
    guard = BearerGuard(issuer=ISS, audience="api", algorithms=["HS256"], secret=SECRET)
    assert (await guard.authenticate(hs_token())).subject == "svc"
    with pytest.raises(BadSignatureError):
        await guard.authenticate(hs_token(secret="t" * 32))


async def test_hs_tokens_refused_when_no_secret_is_configured(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard()
    with pytest.raises(UnsupportedAlgorithmError):
        await guard.authenticate(hs_token())


async def test_rfc9068_profile(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(profile="rfc9068")
    await guard.authenticate(session_issuer.mint())
    with pytest.raises(InvalidClaimError):
        await guard.authenticate(session_issuer.mint(client_id=None))
    with pytest.raises(InvalidClaimError):
        await guard.authenticate(session_issuer.mint(jti=None))
    with pytest.raises(InvalidTypeError):
        await guard.authenticate(session_issuer.mint(headers={"typ": "JWT"}))


async def test_require_jti_and_extra_required_claims(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(require_jti=True, required_claims=["tenant"])
    await guard.authenticate(session_issuer.mint(tenant="acme"))
    with pytest.raises(InvalidClaimError):
        await guard.authenticate(session_issuer.mint(tenant="acme", jti=None))
    with pytest.raises(InvalidClaimError):
        await guard.authenticate(session_issuer.mint())


async def test_scope_claims(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(scope_claims=["permissions", "realm_access.roles"])
    token = await guard.authenticate(
        session_issuer.mint(scopes=["a"], permissions=["b"], realm_access={"roles": ["c"]})
    )
    assert token.scopes == {"a", "b", "c"}


async def test_scope_claims_named_by_a_uri_are_read_whole(session_issuer: DevIssuer) -> None:
    # Auth0 (and RFC 7519 §4.2's collision-resistant names) put custom claims under a URI:
    # its dots are part of the name, not a path, or every scoped route answered 403.
    guard = session_issuer.guard(scope_claims=["https://api.example/roles"])
    token = await guard.authenticate(
        session_issuer.mint(scopes=["a"], **{"https://api.example/roles": ["admin"]})
    )
    assert token.scopes == {"a", "admin"}


async def test_access_token_fields(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard()
    token = await guard.authenticate(session_issuer.mint(scopes=["x"], sub="gail", expires_in=120))
    assert token.subject == "gail"
    assert token.client_id == "dev-client"
    assert token.issuer == session_issuer.url
    assert token.audience == (session_issuer.audience,)
    assert token.token_id is not None
    assert token.key_id == session_issuer.key().kid
    assert token.expires_at.tzinfo is not None
    assert token.issued_at is not None
    with pytest.raises(TypeError):
        token.claims["sub"] = "mallory"  # type: ignore[index]


async def test_a_handler_changing_claims_does_not_change_what_a_reused_token_grants(
    session_issuer: DevIssuer,
) -> None:
    # The verified token is cached and handed to the next request with the same credentials:
    # its scopes were read once, so a list in its claims changed by a handler grants nothing.
    guard = session_issuer.guard(scope_claims=["roles"])
    token = session_issuer.mint(scopes=["a"], scp=["b"], roles=["c"])
    first = await guard.authenticate(token)
    first.claims["roles"].append("admin")
    first.claims["scp"].append("admin")
    again = await guard.authenticate(token)
    assert again is first  # the cache hit
    assert again.scopes == {"a", "b", "c"}
    assert not again.has_scopes("admin")


async def test_azp_stands_in_for_client_id(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard()
    token = await guard.authenticate(session_issuer.mint(client_id=None, azp="spa"))
    assert token.client_id == "spa"


async def test_cached_tokens_still_expire(session_issuer: DevIssuer) -> None:
    minted = session_issuer.mint(expires_in=60)
    clock = Clock()  # after minting: iat (whole seconds) must not be ahead of the clock
    guard = session_issuer.guard(clock=clock, leeway=0)
    first = await guard.authenticate(minted)
    assert await guard.authenticate(minted) is first  # served from the cache
    clock.now += 61
    with pytest.raises(ExpiredTokenError):
        await guard.authenticate(minted)


@pytest.mark.parametrize(
    ("claims", "leeway", "back", "valid"),
    [
        ({"nbf": 0, "iat": 0}, 0, 1, False),
        ({"nbf": 0, "iat": None}, 30, 29, True),  # within the leeway
        ({"nbf": 0, "iat": None}, 30, 31, False),
        ({"nbf": None, "iat": 0}, 0, 1, False),  # iat alone
        ({"nbf": None, "iat": None}, 0, 3600, True),  # neither: only exp bounds the token
    ],
)
async def test_cached_tokens_are_not_yet_valid_when_the_clock_steps_back(
    session_issuer: DevIssuer, claims: dict[str, Any], leeway: float, back: float, valid: bool
) -> None:
    # A verified token whose nbf/iat lie in the future once the wall clock jumps back (an
    # NTP correction) is refused as a fresh one would be, not served from the cache.
    clock = Clock(float(int(time.time())))
    at = {name: None if off is None else int(clock.now) + off for name, off in claims.items()}
    minted = session_issuer.mint(**at)
    guard = session_issuer.guard(clock=clock, leeway=leeway)
    first = await guard.authenticate(minted)
    assert await guard.authenticate(minted) is first
    clock.now -= back
    if valid:
        # Accepted again; verified again too: the key set, fetched after the clock's new
        # "now", is fetched once more first (test_a_clock_stepped_back_...).
        assert (await guard.authenticate(minted)).token_id == first.token_id
    else:
        with pytest.raises(NotYetValidError):
            await guard.authenticate(minted)


async def test_max_age_applies_to_cached_tokens(session_issuer: DevIssuer) -> None:
    minted = session_issuer.mint(expires_in=600)
    clock = Clock()  # after minting: iat (whole seconds) must not be ahead of the clock
    guard = session_issuer.guard(clock=clock, leeway=0, max_age=30)
    await guard.authenticate(minted)
    clock.now += 31
    with pytest.raises(InvalidClaimError.__mro__[1]):  # InvalidTokenError: too old
        await guard.authenticate(minted)


async def test_cache_can_be_disabled(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(cache_size=0)
    minted = session_issuer.mint()
    assert await guard.authenticate(minted) is not await guard.authenticate(minted)


async def test_unknown_kid_is_refused(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(refresh=RefreshPolicy(cooldown=3600))
    await guard.authenticate(session_issuer.mint())
    with pytest.raises(UnknownKeyError):
        await guard.authenticate(session_issuer.mint(headers={"kid": "nope"}))


async def test_refusals_carry_the_fingerprint_and_header(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard()
    with pytest.raises(ExpiredTokenError) as refused:
        await guard.authenticate(session_issuer.mint(expires_in=-100))
    assert refused.value.fingerprint is not None
    assert refused.value.header is not None
    assert refused.value.header["alg"] == "RS256"
    assert "BearerGuard(issuer=" in repr(guard)
    assert guard.key_ids


@pytest.mark.parametrize("as_bytes", [False, True])
async def test_accepted_and_refused_tokens_carry_one_fingerprint_of_their_bytes(
    session_issuer: DevIssuer, as_bytes: bool
) -> None:
    guard = session_issuer.guard(cache_size=0)
    expected = hashlib.sha256(minted := session_issuer.mint().encode()).digest()[:8].hex()
    accepted = await guard.authenticate(minted if as_bytes else minted.decode())
    assert accepted.fingerprint == expected == token_fingerprint(minted)
    expired = session_issuer.mint(expires_in=-100)
    with pytest.raises(ExpiredTokenError) as refused:
        await guard.authenticate(expired.encode() if as_bytes else expired)
    assert refused.value.fingerprint == token_fingerprint(expired)


async def test_the_verification_cache_is_bounded(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(cache_size=3)
    tokens = [session_issuer.mint() for _ in range(10)]
    for token in tokens:
        await guard.authenticate(token)
        assert guard._cache is not None
        assert len(guard._cache) <= 3
    assert await guard.authenticate(tokens[-1]) is await guard.authenticate(tokens[-1])


def test_the_verification_cache_returns_within_its_bound_after_threads_overfill_it(
    session_issuer: DevIssuer,
) -> None:
    # WSGI threads verifying new tokens at once: checking for room and inserting are two
    # steps, so two threads may both find room and both insert (or an eviction is skipped
    # when another thread changes the dict). The cache then stayed over its bound for good,
    # each later insertion evicting one entry only: it grew with every such race (this test
    # failed in each of six runs before the fix).
    size, threads = 4, 16
    guard = session_issuer.guard(in_process=True, cache_size=size)
    assert guard._cache is not None
    tokens = [session_issuer.mint() for _ in range(threads * 60)]
    workers = [
        threading.Thread(
            target=lambda mine: [guard.authenticate_sync(token) for token in mine],
            args=(tokens[index::threads],),
        )
        for index in range(threads)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races happen
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    guard.authenticate_sync(session_issuer.mint())
    assert len(guard._cache) <= size


async def test_a_cache_key_collision_is_only_a_miss(
    session_issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cache is keyed by a hash of the token and each match compares the whole token:
    # with every token hashed alike, another token (a forgery with a cached token's header
    # and payload among them) is never answered with a cached verification.
    monkeypatch.setattr(guard_module, "_cache_key", lambda credentials: 0)
    guard = session_issuer.guard()
    ana, bob = session_issuer.mint(sub="ana"), session_issuer.mint(sub="bob")
    assert (await guard.authenticate(ana)).subject == "ana"
    assert guard.reused(b"Bearer " + ana.encode()) is not None
    assert guard.reused(b"Bearer " + bob.encode()) is None
    assert (await guard.authenticate(bob)).subject == "bob"  # it takes the only slot
    assert guard.reused(b"Bearer " + ana.encode()) is None
    forged = ana.rsplit(".", 1)[0] + "." + bob.rsplit(".", 1)[1]
    assert guard.reused(b"Bearer " + forged.encode()) is None
    with pytest.raises(BadSignatureError):
        await guard.authenticate(forged)
    assert (await guard.authenticate(bob)).subject == "bob"


async def test_a_token_ending_as_a_cached_one_is_verified_on_its_own(
    session_issuer: DevIssuer,
) -> None:
    # The cache is keyed by the token's last 32 bytes (its signature's end): a forgery that
    # keeps a cached token's signature has its key, and is still compared in full, verified
    # and refused, leaving the cached token in place.
    guard = session_issuer.guard()
    ana, bob = session_issuer.mint(sub="ana"), session_issuer.mint(sub="bob")
    assert (await guard.authenticate(ana)).subject == "ana"
    forged = bob.rsplit(".", 1)[0] + "." + ana.rsplit(".", 1)[1]
    assert forged[-32:] == ana[-32:]
    assert guard.reused(b"Bearer " + forged.encode()) is None
    with pytest.raises(BadSignatureError):
        await guard.authenticate(forged)
    entry = guard.reused(b"Bearer " + ana.encode())
    assert entry is not None
    assert entry.token.subject == "ana"


async def test_reused_takes_the_authorization_value_as_sent(session_issuer: DevIssuer) -> None:
    # The middlewares pass the header's whole value: the entry compares it in full, the
    # scheme's spelling included, so a hit spares the copy of the token (RFC 6750 §2.1: any
    # other spelling of "Bearer", or the bare token, takes the general path, which applies
    # every rule and still finds the cached verification).
    guard = session_issuer.guard()
    token = session_issuer.mint(sub="ana")
    await guard.authenticate(token)
    entry = guard.reused(b"Bearer " + token.encode())
    assert entry is not None
    assert entry.token.subject == "ana"
    for other in (b"", b"bearer ", b"BEARER ", b"Bearer  ", b"DPoP ", b"Bearer x", b" Bearer "):
        assert guard.reused(other + token.encode()) is None
    assert guard.reused(b"Bearer " + token.encode() + b" ") is None
    assert (await guard.authenticate(token)).subject == "ana"


def _respelled(token: str, how: str) -> str:
    header, payload, signature = token.split(".")
    return {
        "space": f"{header}.{payload} .{signature}",
        "comma": f"{header}.{payload},.{signature}",
        "tilde": f"{header}.{payload}~.{signature}",
        "plus": f"{header}.{payload}+.{signature}",
        "slash": f"{header}.{payload}/.{signature}",
        "padding": f"{header}.{payload}.{signature}=",
        "two-segments": f"{header}.{payload}",
    }[how]


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("space", InvalidRequestError),  # not a b64token at all (RFC 6750 §2.1)
        ("comma", InvalidRequestError),
        ("tilde", MalformedTokenError),  # a b64token, but not base64url (RFC 7515 §7.1)
        ("plus", MalformedTokenError),
        ("slash", MalformedTokenError),
        ("padding", MalformedTokenError),
        ("two-segments", MalformedTokenError),
    ],
)
@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "text"])
async def test_credentials_are_a_b64token_then_a_strict_jws(
    session_issuer: DevIssuer, how: str, error: type[Exception], as_bytes: bool
) -> None:
    guard = session_issuer.guard(cache_size=0)
    token = _respelled(session_issuer.mint(), how)
    with pytest.raises(error):
        await guard.authenticate(token.encode() if as_bytes else token)
    with pytest.raises(error):
        guard.authenticate_sync(token.encode() if as_bytes else token)


async def test_a_fresh_token_is_the_same_from_bytes_or_text(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(cache_size=0)
    token = session_issuer.mint(scopes=["a", "b"])
    assert await guard.authenticate(token.encode()) == await guard.authenticate(token)


@pytest.mark.parametrize(
    "realm", ["Acme API \u2013 production", "api\r\nSet-Cookie: x=1", "tab\there", "caf\xe9"]
)
def test_a_realm_no_challenge_can_carry_is_refused_at_construction(
    session_issuer: DevIssuer, realm: str
) -> None:
    with pytest.raises(ConfigurationError, match="realm must be printable ASCII"):
        session_issuer.guard(realm=realm)
    assert session_issuer.guard(realm='Acme "API" \\ prod').realm == 'Acme "API" \\ prod'


@pytest.mark.parametrize(
    "options",
    [
        {"leeway": float("nan")},
        {"leeway": float("inf")},
        {"max_age": float("nan")},
        {"max_age": float("inf")},
        {"leeway": -1},
    ],
)
def test_times_that_would_switch_off_expiry_are_refused(
    session_issuer: DevIssuer, options: dict[str, float]
) -> None:
    (name,) = options
    with pytest.raises(ConfigurationError, match=rf"^{name} must be a finite number of seconds"):
        session_issuer.guard(**options)


def test_async_claim_checks_are_refused_at_construction(session_issuer: DevIssuer) -> None:
    async def tenant_is_acme(claims: Any) -> bool:  # pragma: no cover - never called
        return claims.get("tenant") == "acme"

    with pytest.raises(ConfigurationError, match="plain functions"):
        session_issuer.guard(claim_checks=[tenant_is_acme])
    with pytest.raises(ConfigurationError, match="plain functions"):
        session_issuer.guard(claim_checks=["tenant"])


@pytest.mark.parametrize(
    "options",
    [
        {"bindings_checked_upstream": "false"},
        {"require_jti": "no"},
        {"require_typ": 0},
        {"scope_claims": "roles"},
        {"required_claims": "tenant"},
        {"required_claims": ["tenant", 1]},
        {"scope_claims": [None]},
    ],
)
def test_options_of_the_wrong_type_are_refused_not_misread(
    session_issuer: DevIssuer, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        session_issuer.guard(**options)


def test_a_bare_string_of_scope_claims_grants_nothing_from_its_letters(
    session_issuer: DevIssuer,
) -> None:
    guard = session_issuer.guard(scope_claims=["roles"])
    access = guard.authenticate_sync(session_issuer.mint(s="admin", roles=["reader"]))
    assert access.scopes == frozenset({"reader"})


@pytest.mark.parametrize(
    "options",
    [
        {"leeway": "30"},
        {"leeway": None},
        {"max_age": "60"},
        {"max_token_bytes": None},
        {"max_token_bytes": float("inf")},
        {"cache_size": "10"},
        {"cache_size": None},
        {"cache_size": -1},  # not "off": 0 is, as for Introspector(cache_size=)
        {"audit_sample_accepted": 2},
        {"audit_sample_accepted": float("nan")},
        {"audit_sample_accepted": "1"},
        {"clock": 5},
        {"claim_checks": lambda claims: True},
        {"scope_implications": [("admin", "read")]},
        {"audience": 5},
        {"algorithms": None},
        {"algorithms": [["RS256"]]},
        {"algorithms": ["RS999", 5]},
    ],
)
def test_options_that_are_not_what_they_take_raise_configuration_errors(
    session_issuer: DevIssuer, options: dict[str, Any]
) -> None:
    """BearerGuard documents ConfigurationError for a bad option, not TypeError or ValueError."""
    with pytest.raises(ConfigurationError):
        session_issuer.guard(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"leeway": Fraction(10)},
        {"leeway": Decimal("10")},
        {"max_age": Fraction(3600)},
        {"audit_sample_accepted": Decimal("0.5")},
        {"cache_size": _Whole(100)},
        {"max_token_bytes": _Whole(8192)},
    ],
)
def test_numbers_of_other_types_are_taken_as_before(
    session_issuer: DevIssuer, options: dict[str, Any]
) -> None:
    # numpy's numbers (registered as numbers.Integral / Real, not int or float subclasses),
    # Fraction and Decimal were taken before the type checks: they still are, converted.
    guard = session_issuer.guard(**options)
    assert guard.authenticate_sync(session_issuer.mint(sub="ada")).subject == "ada"
    assert type(guard.leeway) is float


def test_a_signalling_nan_is_a_configuration_error(session_issuer: DevIssuer) -> None:
    with pytest.raises(ConfigurationError):
        session_issuer.guard(leeway=Decimal("sNaN"))


@pytest.mark.parametrize(
    "options", [{"leeway": 10**400}, {"max_age": Fraction(10**400)}, {"max_age": 10**400}]
)
def test_a_number_beyond_any_float_is_a_configuration_error(
    session_issuer: DevIssuer, options: dict[str, Any]
) -> None:
    # float() overflows: configuration raises ConfigurationError, not OverflowError.
    with pytest.raises(ConfigurationError):
        session_issuer.guard(**options)


def test_the_thread_that_starts_a_due_refresh_waits_for_it() -> None:
    # The set is past its freshness and the JWKS answers slowly: the request that starts
    # the refresh waits for it, though its token's key is held; the next one does not.
    # threats.md and migration.md must not promise that such a request never waits.
    clock = Clock()
    with DevIssuer(jwks_max_age=60) as issuer:
        guard = BearerGuard(
            issuer=issuer.url, audience=issuer.audience, jwks_uri=issuer.jwks_uri, clock=clock
        )
        guard.authenticate_sync(issuer.mint())
        issuer.overrides[issuer.jwks_path] = Override(body=issuer.jwks_bytes(), delay=0.5)
        clock.advance(61)
        started = time.monotonic()
        guard.authenticate_sync(issuer.mint())
        assert time.monotonic() - started >= 0.5
        started = time.monotonic()
        guard.authenticate_sync(issuer.mint())
        assert time.monotonic() - started < 0.5
    docs = Path(__file__).resolve().parent.parent / "docs"
    threats = " ".join((docs / "threats.md").read_text().split())
    assert "holding the key their token names never wait for a refresh" not in threats
    assert "in the background of the event loop" not in (docs / "migration.md").read_text()


async def test_async_kid_miss_waits_for_a_threads_fetch_instead_of_fetching(
    issuer: DevIssuer,
) -> None:
    """A thread's fetch (authenticate_sync, warm_up_sync) holds the sync lock: an async
    kid miss within the cooldown waits for it rather than fetching past the cooldown."""
    import threading

    clock = Clock()
    guard = issuer.guard(discover=False, clock=clock, cache_size=0)
    await guard.warm_up()
    clock.advance(31)
    guard._keys.record_attempt(clock())  # a thread's fetch starts now, holding the lock
    guard._refresher._fetch_lock.acquire()
    threading.Timer(0.2, guard._refresher._fetch_lock.release).start()
    started = time.monotonic()
    for kid in ("random-1", "random-2", "random-3"):
        with pytest.raises(UnknownKeyError):
            await guard.authenticate(issuer.sign(issuer.claims(), headers={"kid": kid}))
    assert issuer.fetch_count() == 1  # the warm-up's only: one fetch per cooldown
    assert time.monotonic() - started >= 0.15  # the first waited for the thread's fetch


async def test_a_direct_call_refuses_a_token_over_max_token_bytes(
    session_issuer: DevIssuer,
) -> None:
    # As the middlewares' extraction does: refused before any decoding, valid or not.
    guard = session_issuer.guard(in_process=True, max_token_bytes=256)
    valid = session_issuer.mint(sub="big")
    assert len(valid) > 256
    for token in (valid, valid.encode(), "a" * 10_000_000):
        with pytest.raises(MalformedTokenError, match="exceeds 256"):
            await guard.authenticate(token)
        with pytest.raises(MalformedTokenError, match="exceeds 256"):
            guard.authenticate_sync(token)
    roomy = session_issuer.guard(in_process=True)
    assert (await roomy.authenticate(valid)).subject == "big"


@pytest.mark.parametrize(
    "issuer",
    [
        "https://as.example/?tenant=a",
        "https://as.example/tenant?",
        "https://as.example/tenant#",
        "https://as.example/#frag",
    ],
)
def test_an_issuer_with_a_query_or_fragment_is_refused(
    session_issuer: DevIssuer, issuer: str
) -> None:
    # RFC 8414 §2: an issuer identifier has no query or fragment (an empty one included):
    # its metadata URLs drop them, so its own metadata could never name it.
    with pytest.raises(ConfigurationError, match="fragment"):
        BearerGuard(issuer=issuer, audience="api", keys=session_issuer.jwks())


@pytest.mark.parametrize(
    "issuer", ["https://as.example", "https://as.example/", "https://login.example/t/v2.0"]
)
def test_issuers_with_or_without_a_path_or_trailing_slash_are_taken(
    session_issuer: DevIssuer, issuer: str
) -> None:
    guard = BearerGuard(issuer=issuer, audience="api", keys=session_issuer.jwks())
    assert guard.issuer == issuer


@pytest.mark.parametrize(
    "issuer",
    ["https://as.example ", " https://as.example", "https://as.example/\n", "https://as.\texample"],
)
def test_an_issuer_with_whitespace_is_refused(session_issuer: DevIssuer, issuer: str) -> None:
    # An issuer read from the environment or a file with its newline or a stray space
    # never equals a token's iss (compared exactly), and URL parsers drop the space, so
    # discovery answered for the other spelling: every token was refused, unexplained.
    with pytest.raises(ConfigurationError, match="whitespace"):
        BearerGuard(issuer=issuer, audience="api", keys=session_issuer.jwks())


@pytest.mark.parametrize(
    "issuer",
    [
        "https://login.microsoftonline.com/common/v2.0",
        "https://login.microsoftonline.com/organizations/v2.0",
        "https://login.microsoftonline.com/consumers/v2.0",
        "https://login.microsoftonline.com/Common/v2.0/",
        "https://login.microsoftonline.com/common/",
        "https://sts.windows.net/common/",
        "https://login.microsoftonline.us/organizations/v2.0",
    ],
)
def test_an_entra_multi_tenant_endpoint_is_refused_as_an_issuer(
    session_issuer: DevIssuer, issuer: str
) -> None:
    # MSAL's authority, copied as the issuer: no token ever names it (each names its user's
    # tenant), and its metadata names '{tenantid}', so every request was answered 503.
    with pytest.raises(ConfigurationError, match=r"multi-tenant.*TENANT_ID.*TrustedIssuers"):
        BearerGuard(issuer=issuer, audience="api", keys=session_issuer.jwks())


@pytest.mark.parametrize(
    "issuer",
    [
        "https://login.microsoftonline.com/{tenantid}/v2.0",
        "https://auth.example/{realm}",
    ],
)
def test_a_templated_issuer_is_refused(session_issuer: DevIssuer, issuer: str) -> None:
    # The issuer of Entra ID's multi-tenant metadata is a template; copied as is, it never
    # equals a token's iss.
    with pytest.raises(ConfigurationError, match="placeholder"):
        BearerGuard(issuer=issuer, audience="api", keys=session_issuer.jwks())


def test_a_tenant_named_like_an_alias_elsewhere_is_taken(session_issuer: DevIssuer) -> None:
    # Only Microsoft's login hosts give those path names their meaning.
    for issuer in ("https://sso.example/common", "https://login.microsoftonline.com/t/v2.0"):
        assert BearerGuard(issuer=issuer, audience="api", keys=session_issuer.jwks()).issuer


def test_a_bare_algorithm_name_is_refused_as_such(session_issuer: DevIssuer) -> None:
    # PyJWT's habit: algorithms="RS256" was read as its letters, and refused as the
    # "unsupported algorithms ['2', '5', '6', 'R', 'S']".
    with pytest.raises(ConfigurationError, match=r"^algorithms takes a list of names, not 'RS256'"):
        session_issuer.guard(algorithms="RS256")


def test_an_algorithm_name_in_the_wrong_case_is_named_in_the_right_one(
    session_issuer: DevIssuer,
) -> None:
    # "alg" is case-sensitive (RFC 7515 §4.1.1); "rs256" was refused with no hint.
    with pytest.raises(
        ConfigurationError, match=r"case-sensitive: did you mean \['ES256', 'RS256'\]"
    ):
        session_issuer.guard(algorithms=["rs256", "es256"])
    with pytest.raises(ConfigurationError, match=r"did you mean \['EdDSA'\]"):
        session_issuer.guard(algorithms=["RS256", "eddsa"])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"dpop": DPoPPolicy()},
        {"mtls": CertificateBinding()},
        {"dpop": DPoPPolicy(), "mtls": CertificateBinding()},
        {"bindings_checked_upstream": True},
    ],
    ids=["bearer", "dpop", "mtls", "dpop-mtls", "upstream"],
)
async def test_a_null_confirmation_is_refused_not_read_as_a_bearer_token(
    session_issuer: DevIssuer, options: dict[str, Any]
) -> None:
    # RFC 7800 §3.1: cnf is a JSON object; "cnf": null once passed as a plain bearer token.
    guard = session_issuer.guard(in_process=True, **options)
    token = session_issuer.sign({**session_issuer.claims(), "cnf": None})
    with pytest.raises(MalformedTokenError, match="'cnf' is not a JSON object"):
        await guard.authenticate(token)
    with pytest.raises(MalformedTokenError, match="'cnf' is not a JSON object"):
        guard.authenticate_sync(token)


def _signed_by_hand(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    """A JWS whose header no JWT library would write (PyJWT refuses a non-string kid)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


@pytest.mark.parametrize("kid", [None, 7, ["k"]], ids=repr)
async def test_a_kid_that_is_not_a_string_is_refused_even_by_a_sole_key(
    session_issuer: DevIssuer, kid: object
) -> None:
    # RFC 7515 §4.1.4: kid is a string. "kid": null once read as no kid, taken by the sole
    # key (a PEM key, the shared secret) that verifies tokens whatever their kid.
    private = session_issuer.key("RS256").private_key
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sole = BearerGuard(issuer=session_issuer.url, audience=session_issuer.audience, keys=pem)
    rsa_token = _signed_by_hand(
        {"alg": "RS256", "typ": "at+jwt", "kid": kid},
        session_issuer.claims(),
        lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )
    shared = BearerGuard(issuer=ISS, audience="api", algorithms=["HS256"], secret=SECRET)
    now = int(time.time())
    hs_claims = {"iss": ISS, "aud": "api", "exp": now + 60, "iat": now, "sub": "svc"}
    hs_token = _signed_by_hand(
        {"alg": "HS256", "kid": kid},
        hs_claims,
        lambda data: hmac.digest(SECRET.encode(), data, "sha256"),
    )
    for guard, token in ((sole, rsa_token), (shared, hs_token)):
        with pytest.raises(MalformedTokenError, match="kid is not a string"):
            await guard.authenticate(token)
    # The same tokens with a string kid are accepted: only the kid's type is refused.
    assert await sole.authenticate(
        _signed_by_hand(
            {"alg": "RS256", "typ": "at+jwt", "kid": "any"},
            session_issuer.claims(),
            lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256()),
        )
    )


@pytest.mark.parametrize(
    ("member", "value"),
    [("typ", None), ("typ", ["secevent+jwt"]), ("typ", 1), ("cty", None)],
    ids=repr,
)
async def test_a_typ_or_cty_that_is_not_a_string_is_refused(
    session_issuer: DevIssuer, member: str, value: object
) -> None:
    # RFC 7515 §4.1.9, §4.1.10: typ and cty are strings. A typ of ["secevent+jwt"] once
    # slipped past the check that keeps other JWT types out (RFC 8725 §3.11).
    key = session_issuer.key("RS256")
    guard = session_issuer.guard()

    def signed(header: dict[str, Any]) -> str:
        return _signed_by_hand(
            header,
            session_issuer.claims(),
            lambda data: key.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
        )

    with pytest.raises(MalformedTokenError, match=f"{member} is not a string"):
        await guard.authenticate(signed({"alg": "RS256", "kid": key.kid, member: value}))
    assert await guard.authenticate(signed({"alg": "RS256", "kid": key.kid}))


def test_an_unexpected_error_is_logged_without_its_message(
    session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # An exception's message may quote what it failed on: claim values, header bytes. The
    # log keeps its type and where it was raised, never its text (nor its causes' text).
    secret_claim = "claim-value-7f3c9a"

    def failing_on(value: str) -> None:
        try:
            raise KeyError(f"cause {value}")
        except KeyError as cause:
            raise ValueError(f"cannot read {value!r}") from cause

    with caplog.at_level(logging.ERROR, "bearerguard"):
        try:
            failing_on(secret_claim)
        except ValueError as exc:
            refusal = guard_module._unexpected(exc, None)
    assert refusal.detail == "unexpected ValueError during verification"
    [record] = [r for r in caplog.records if r.name == "bearerguard"]
    logged = caplog.text
    assert secret_claim not in logged
    assert record.exc_info is None  # the default formatter would print the message
    # What and where: each exception's type, its cause's first, and their frames.
    assert logged.index("builtins.KeyError") < logged.index("builtins.ValueError")
    assert f'File "{__file__}"' in logged
    assert "in failing_on" in logged


async def test_a_clock_stepped_back_does_not_keep_a_key_set_fresh(issuer: DevIssuer) -> None:
    # The key set's TTL is counted on the guard's (wall) clock. Stepped back past the fetch,
    # the set's age is unknown: it was kept fresh for its TTL plus the step, and a key the
    # issuer withdrew stayed trusted for as long. Now the set is fetched again first.
    clock = Clock()
    guard = issuer.guard(discover=False, clock=clock)
    old = issuer.key()
    await guard.authenticate(issuer.mint())
    assert issuer.fetch_count() == 1
    issuer.rotate()
    issuer.retire(old.kid)
    clock.advance(-3600)
    now = int(clock())
    signed_by_old = jwt.encode(
        issuer.claims(iat=now - 5, exp=now + 300),
        old.private_key,
        algorithm=old.algorithm,
        headers={"kid": old.kid, "typ": "at+jwt"},
    )
    with pytest.raises(UnknownKeyError):
        await guard.authenticate(signed_by_old)
    assert issuer.fetch_count() == 2
    new_token = issuer.mint(iat=now - 5, exp=now + 300)
    assert (await guard.authenticate(new_token)).key_id == issuer.key().kid
    assert issuer.fetch_count() == 2  # fresh again, counted from the fetch after the step
