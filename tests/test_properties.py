"""Property-based tests: whatever a client sends, the core refuses cleanly and never fails open.

Four properties, from the header parser up to the whole middleware:

1. ``extract_bearer`` over any header values raises only ``InvalidRequestError`` or
   ``MalformedTokenError``, and returns a token only when it is one RFC 6750 b64token;
2. ``parse_compact`` over any text, and over valid tokens after random mutations, raises only
   ``AuthError`` subclasses, and accepts only canonical base64url;
3. ``validate_claims`` over any JSON-like claims raises only ``InvalidTokenError`` subclasses,
   and what it accepts satisfies every rule (checked by an independent oracle);
4. the middleware, given any ``Authorization`` bytes, never answers 5xx, answers 200 only to
   a token byte-identical to a genuine one, always challenges on 400/401, and always emits
   exactly one audit event, which a UTF-8 console and orjson can write (unsigned tokens
   with arbitrary header and claims text included).

Example counts stay modest by default; ``HYPOTHESIS_PROFILE=long`` runs many more, e.g.
``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_properties.py``.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import re
import string
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send
from structlog.testing import capture_logs

from bearerguard import BearerGuard
from bearerguard._core.claims import ClaimsPolicy, TimeClaims, validate_claims
from bearerguard._core.extract import extract_bearer
from bearerguard._core.jws import CompactJWS, parse_compact
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.errors import (
    AuthError,
    InvalidRequestError,
    InvalidTokenError,
    MalformedTokenError,
)
from bearerguard.testing import DevIssuer

# -- profiles ---------------------------------------------------------------------------------
# Registered here rather than in conftest.py, under names of their own, and applied per test
# (as a parent) so that loading them never changes other files' Hypothesis settings.

settings.register_profile(
    "bearerguard-fast",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "bearerguard-long",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_PROFILE_NAMES = {
    "fast": "bearerguard-fast",
    "default": "bearerguard-fast",
    "long": "bearerguard-long",
}
_PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "fast")
if _PROFILE_NAME not in _PROFILE_NAMES:
    raise ValueError(f"HYPOTHESIS_PROFILE={_PROFILE_NAME!r}: use one of {sorted(_PROFILE_NAMES)}")
PROFILE = settings.get_profile(_PROFILE_NAMES[_PROFILE_NAME])
# The middleware runs a whole request per example: a third of the examples keeps it quick.
MIDDLEWARE_PROFILE = settings(
    PROFILE,
    max_examples=max(PROFILE.max_examples // 3, 10),
    # anyio_backend is function-scoped but constant; it does not need resetting per example.
    suppress_health_check=[*PROFILE.suppress_health_check, HealthCheck.function_scoped_fixture],
)

# -- shared vocabulary ------------------------------------------------------------------------

B64TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-._~+/")
B64URL_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
# Characters a mutation writes: the token alphabet and its neighbours in every sense.
MUTATION_CHARS = B64URL_ALPHABET + "=.+/~ \t\x00\x7fé\u2024"
ISSUER = "https://issuer.example"
AUDIENCE = "https://api.example"
NOW = 1_700_000_000.0
ACCESS_TOKEN_TYPES = {"at+jwt", "application/at+jwt"}
STRING_CLAIMS = ("sub", "jti", "client_id", "azp")


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def is_b64token(text: str) -> bool:
    """RFC 6750 §2.1 ``b64token``, checked without a regular expression."""
    body = text.rstrip("=")
    return bool(body) and all(char in B64TOKEN_CHARS for char in body)


# -- mutations of valid tokens ----------------------------------------------------------------

positions = st.integers(min_value=0, max_value=1 << 16)
segment_indices = st.integers(min_value=0, max_value=2)
mutations = st.one_of(
    st.tuples(st.just("replace"), positions, st.sampled_from(MUTATION_CHARS)),
    st.tuples(st.just("insert"), positions, st.text(MUTATION_CHARS, min_size=1, max_size=4)),
    st.tuples(st.just("delete"), positions, st.integers(min_value=1, max_value=8)),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("flip_bit"), positions, st.integers(min_value=0, max_value=5)),
    st.tuples(st.just("swap_segments"), segment_indices, segment_indices),
    st.tuples(st.just("duplicate_segment"), segment_indices),
    st.tuples(st.just("drop_segment"), segment_indices),
    st.tuples(st.just("transplant_segment"), segment_indices),
)
mutation_lists = st.lists(mutations, min_size=1, max_size=4)
_SEGMENT_MUTATIONS = frozenset(
    {"swap_segments", "duplicate_segment", "drop_segment", "transplant_segment"}
)


def mutate(token: str, steps: list[tuple[Any, ...]], donor: str) -> str:
    """Apply mutation steps to ``token``; ``donor`` is another genuine token to borrow from."""
    for kind, *args in steps:
        at = args[0] % (len(token) + 1) if args and kind not in _SEGMENT_MUTATIONS else 0
        parts = token.split(".")
        if kind == "replace":
            token = token[:at] + args[1] + token[at + 1 :]
        elif kind == "insert":
            token = token[:at] + args[1] + token[at:]
        elif kind == "delete":
            token = token[:at] + token[at + args[1] :]
        elif kind == "truncate":
            token = token[:at]
        elif kind == "flip_bit" and at < len(token) and token[at] in B64URL_ALPHABET:
            index = B64URL_ALPHABET.index(token[at]) ^ (1 << args[1])
            token = token[:at] + B64URL_ALPHABET[index] + token[at + 1 :]
        elif kind == "swap_segments" and max(args) < len(parts):
            parts[args[0]], parts[args[1]] = parts[args[1]], parts[args[0]]
            token = ".".join(parts)
        elif kind == "duplicate_segment" and args[0] < len(parts):
            token = ".".join([*parts[: args[0] + 1], *parts[args[0] :]])
        elif kind == "drop_segment" and args[0] < len(parts):
            token = ".".join(parts[: args[0]] + parts[args[0] + 1 :])
        elif kind == "transplant_segment" and args[0] < len(parts):
            parts[args[0]] = donor.split(".")[args[0]]
            token = ".".join(parts)
    return token


@functools.cache
def local_tokens() -> tuple[str, ...]:
    """Genuine tokens signed by local keys, for the sans-I/O parser (no issuer needed)."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": int(NOW) + 300}
    return (
        jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
        jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "ec-1"}),
        jwt.encode({**claims, "scope": "a b"}, rsa_key, algorithm="PS256"),
    )


# -- JSON-like values -------------------------------------------------------------------------

# Lone surrogates and control characters too: json.dumps writes them as \\u escapes, which
# decode to text no UTF-8 log sink can write, or that breaks a log line.
any_characters = st.characters(exclude_categories=()) | st.sampled_from("\ud800\udfff\n\x1b")
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),  # NaN and infinities too: the core must not rely on the JSON parser alone
    st.text(max_size=12),
    st.text(any_characters, max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(any_characters, max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)

# -- (1) extract_bearer -----------------------------------------------------------------------

b64tokens = st.from_regex(r"[A-Za-z0-9\-._~+/]{1,60}={0,2}", fullmatch=True)
schemes = st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"bEaReR", b"Basic", b"Bearerx", b""])
separators = st.sampled_from([b" ", b"  ", b"\t", b"", b", ", b"\x00"])
credentials = st.one_of(
    b64tokens.map(str.encode),
    st.binary(max_size=80),
    st.builds(
        lambda token, junk: token.encode() + junk, b64tokens, st.binary(min_size=1, max_size=3)
    ),
)
header_values = st.one_of(
    st.binary(max_size=100),
    st.builds(lambda scheme, sep, cred: scheme + sep + cred, schemes, separators, credentials),
)


@settings(PROFILE)
@given(
    values=st.lists(header_values, max_size=3), max_bytes=st.integers(min_value=16, max_value=96)
)
def test_extract_bearer_refuses_cleanly_and_returns_only_a_b64token(
    values: list[bytes], max_bytes: int
) -> None:
    try:
        token = extract_bearer(values, max_bytes=max_bytes)
    except InvalidRequestError:
        return
    except MalformedTokenError:
        assert len(values) == 1  # several headers are an invalid request, whatever their size
        return
    if token is None:
        # No credentials: no header, or one whose scheme is not Bearer.
        assert len(values) <= 1
        assert not values or values[0].partition(b" ")[0].lower() != b"bearer"
        return
    assert isinstance(token, str)
    assert len(values) == 1
    scheme, _, rest = values[0].partition(b" ")
    assert scheme.lower() == b"bearer"
    assert rest.lstrip(b" ").rstrip(b" \t") == token.encode("ascii")
    assert is_b64token(token)
    assert len(token) <= max_bytes


@settings(PROFILE)
@given(
    scheme=st.sampled_from([b"Bearer", b"bearer", b"BEARER"]),
    spaces=st.integers(min_value=1, max_value=4),
    token=b64tokens,
)
def test_extract_bearer_returns_every_well_formed_token(
    scheme: bytes, spaces: int, token: str
) -> None:
    assert extract_bearer([scheme + b" " * spaces + token.encode()]) == token


# -- (2) parse_compact ------------------------------------------------------------------------


def check_parsed(token: str, jws: CompactJWS) -> None:
    """What ``parse_compact`` may return: a strict, canonical, acceptable compact JWS."""
    header_segment, payload_segment, signature_segment = token.split(".")
    for segment in (header_segment, payload_segment, signature_segment):
        assert segment
        assert set(segment) <= set(B64URL_ALPHABET)
    # Canonical base64url only: no two spellings of one token (RFC 7515 §2, RFC 4648 §3.5).
    assert b64u(b64d(header_segment)) == header_segment
    assert b64u(jws.signature) == signature_segment
    assert jws.payload_segment == payload_segment
    assert jws.signing_input == f"{header_segment}.{payload_segment}".encode()
    assert json.loads(b64d(header_segment)) == jws.header
    assert isinstance(jws.alg, str)
    assert jws.alg
    assert jws.alg.lower() != "none"
    assert not {"crit", "b64", "enc", "zip"} & jws.header.keys()
    assert isinstance(jws.header.get("kid", ""), str)
    cty = jws.header.get("cty")
    assert cty is None or cty.upper() not in {"JWT", "APPLICATION/JWT"}


def parse_or_refuse(token: str) -> None:
    try:
        jws = parse_compact(token)
    except AuthError as exc:
        event(f"refused: {type(exc).__name__}")
        return  # any other exception fails the test
    event("parsed")
    check_parsed(token, jws)


@settings(PROFILE)
@given(token=st.text(max_size=200))
def test_parse_compact_over_arbitrary_text(token: str) -> None:
    parse_or_refuse(token)


@settings(PROFILE)
@given(
    token=st.text(alphabet=B64URL_ALPHABET + ".=", max_size=120)
    | st.lists(st.text(B64URL_ALPHABET, max_size=40), min_size=1, max_size=6).map(".".join)
)
def test_parse_compact_over_token_shaped_text(token: str) -> None:
    parse_or_refuse(token)


@settings(PROFILE)
@given(
    index=st.integers(min_value=0, max_value=2),
    donor=st.integers(min_value=0, max_value=2),
    steps=mutation_lists,
)
def test_parse_compact_over_mutated_valid_tokens(
    index: int, donor: int, steps: list[tuple[Any, ...]]
) -> None:
    tokens = local_tokens()
    parse_or_refuse(mutate(tokens[index], steps, tokens[donor]))


header_members = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "cty", "crit", "b64", "enc", "zip", "jwk", "jku"])
    | st.text(max_size=5),
    st.sampled_from(["RS256", "ES256", "none", "None", "HS256", "JWT", "at+jwt", ""]) | json_values,
    max_size=5,
)
raw_segments = st.one_of(
    st.builds(lambda value: json.dumps(value).encode(), header_members),
    st.builds(lambda value: json.dumps(value).encode(), json_values),
    st.binary(max_size=40),
)


@settings(PROFILE)
@given(header=raw_segments, payload=raw_segments, signature=st.binary(min_size=1, max_size=80))
def test_parse_compact_over_structured_tokens(
    header: bytes, payload: bytes, signature: bytes
) -> None:
    parse_or_refuse(f"{b64u(header)}.{b64u(payload)}.{b64u(signature)}")


# -- (3) validate_claims ----------------------------------------------------------------------

claim_names = st.sampled_from(
    ["iss", "aud", "exp", "nbf", "iat", "sub", "jti", "client_id", "azp", "scope", "custom"]
)
interesting_claim_values = st.one_of(
    st.sampled_from([ISSUER, ISSUER + "/", AUDIENCE, [AUDIENCE], [AUDIENCE, 1], [], "", True]),
    st.floats(min_value=NOW - 1000, max_value=NOW + 1000),
    st.integers(min_value=int(NOW) - 1000, max_value=int(NOW) + 1000),
    json_values,
)


def valid_claims() -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 300, "iat": NOW - 10, "sub": "user-1"}


def _check_custom(claims: Mapping[str, Any]) -> object:
    return claims["custom"]["allowed"]  # raises KeyError/TypeError on odd claims


policies = st.builds(
    ClaimsPolicy,
    issuer=st.just(ISSUER),
    audiences=st.just(frozenset({AUDIENCE})),
    leeway=st.floats(min_value=0, max_value=120),
    max_age=st.none() | st.floats(min_value=1, max_value=1e6),
    require_typ=st.booleans(),
    required_claims=st.frozensets(st.sampled_from(["sub", "jti", "client_id", "iat"]), max_size=2),
    checks=st.sampled_from([(), (_check_custom,)]),
)


def numeric_date(value: Any) -> float:
    """The oracle's NumericDate: a finite, non-boolean number in [0, year 9999]."""
    assert not isinstance(value, bool)
    assert isinstance(value, int | float)
    number = float(value)
    assert math.isfinite(number)
    assert 0 <= number <= 253_402_300_799
    return number


def check_accepted(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    policy: ClaimsPolicy,
    now: float,
    times: TimeClaims,
) -> None:
    """An independent statement of what an acceptable token's claims look like."""
    assert claims["iss"] == ISSUER
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    assert isinstance(audiences, list)
    assert all(isinstance(item, str) for item in audiences)
    assert AUDIENCE in audiences
    exp = numeric_date(claims["exp"])
    assert now < exp + policy.leeway
    assert times.expires_at == exp
    assert times.valid_until <= exp + policy.leeway
    for name in ("nbf", "iat"):
        if name in claims:
            assert numeric_date(claims[name]) <= now + policy.leeway
            assert numeric_date(claims[name]) < exp
    if policy.max_age is not None:
        assert now < numeric_date(claims["iat"]) + policy.max_age + policy.leeway
    for name in STRING_CLAIMS:
        assert name not in claims or (isinstance(claims[name], str) and claims[name])
    if policy.require_typ:
        assert str(header.get("typ")).lower() in ACCESS_TOKEN_TYPES
    for name in policy.required_claims:
        assert claims.get(name) is not None


@st.composite
def near_valid_claims(draw: st.DrawFn) -> dict[str, Any]:
    """Valid claims (or none) with some changed to interesting or arbitrary values, some removed."""
    claims = valid_claims() if draw(st.integers(min_value=0, max_value=3)) else {}
    claims.update(
        draw(
            st.dictionaries(claim_names | st.text(max_size=4), interesting_claim_values, max_size=4)
        )
    )
    for name in draw(st.sets(claim_names, max_size=3)):
        claims.pop(name, None)
    return claims


typ_headers = st.fixed_dictionaries(
    {},
    optional={
        "typ": st.sampled_from(["at+jwt", "AT+JWT", "application/at+jwt", "JWT"]) | json_values
    },
)


@settings(PROFILE)
@given(
    header=st.just({"typ": "at+jwt"}) | typ_headers,
    claims=near_valid_claims(),
    policy=policies,
    now=st.just(NOW) | st.floats(min_value=0, max_value=3e11),
)
def test_validate_claims_refuses_only_with_invalid_token_errors(
    header: dict[str, Any], claims: dict[str, Any], policy: ClaimsPolicy, now: float
) -> None:
    try:
        times = validate_claims(header, claims, policy, now)
    except InvalidTokenError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("accepted")
    check_accepted(header, claims, policy, now, times)


MISSING = object()
dates_near_now = st.floats(min_value=NOW - 600, max_value=NOW + 600) | st.integers(
    min_value=int(NOW) - 600, max_value=int(NOW) + 600
)
# Values that are not NumericDates (RFC 7519 §2), or out of any sensible range.
non_dates: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, False, "1700000000", "", [], {}, -1, -0.5, 1e20, 10**30, math.nan, math.inf]
)
# The edges of a 30 s leeway, where an off-by-one would hide.
edges = st.sampled_from([NOW + delta for delta in (-30.5, -30, -29.5, -1, 0, 1, 29.5, 30, 30.5)])
# Mostly plausible dates, so that acceptance is exercised as much as refusal.
expiries = st.one_of(
    st.floats(min_value=NOW, max_value=NOW + 600),
    dates_near_now,
    edges,
    non_dates,
    st.just(MISSING),
)
optional_dates = st.one_of(
    st.just(MISSING), st.floats(min_value=NOW - 600, max_value=NOW), edges, non_dates
)


def time_rules_accept(claims: Mapping[str, Any], policy: ClaimsPolicy, now: float) -> bool:
    """RFC 7519 §4.1.4-4.1.6 and the maximum age, stated independently of the library."""
    dates: dict[str, float | None] = {}
    for name in ("exp", "nbf", "iat"):
        if name not in claims:
            dates[name] = None
            continue
        value = claims[name]  # present as null: no NumericDate (RFC 7519 §4.1.4-4.1.6)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not (math.isfinite(value) and 0 <= value <= 253_402_300_799):
            return False
        dates[name] = float(value)
    exp, nbf, iat = dates["exp"], dates["nbf"], dates["iat"]
    if exp is None or not now < exp + policy.leeway:
        return False
    if any(date is not None and now + policy.leeway < date for date in (nbf, iat)):
        return False
    if any(date is not None and date >= exp for date in (nbf, iat)):
        return False  # valid at no instant: from nbf (iat) until before exp is empty
    if policy.max_age is None:
        return True
    return iat is not None and now < iat + policy.max_age + policy.leeway


@settings(PROFILE)
@given(
    dates=st.tuples(expiries, optional_dates, optional_dates),
    leeway=st.sampled_from([0.0, 30.0, 30.0]) | st.floats(min_value=0, max_value=600),
    max_age=st.none() | st.floats(min_value=1, max_value=900),
)
def test_time_claims_are_accepted_exactly_when_the_rules_say(
    dates: tuple[Any, Any, Any], leeway: float, max_age: float | None
) -> None:
    claims = {"iss": ISSUER, "aud": AUDIENCE}
    claims.update(
        (name, value)
        for name, value in zip(("exp", "nbf", "iat"), dates, strict=True)
        if value is not MISSING
    )
    policy = ClaimsPolicy(
        issuer=ISSUER, audiences=frozenset({AUDIENCE}), leeway=leeway, max_age=max_age
    )
    try:
        validate_claims({}, claims, policy, NOW)
    except InvalidTokenError:
        accepted = False
    else:
        accepted = True
    event("accepted" if accepted else "refused")
    assert accepted == time_rules_accept(claims, policy, NOW)


@settings(PROFILE)
@given(claims=st.dictionaries(st.text(max_size=8), json_values, max_size=8), policy=policies)
def test_validate_claims_over_arbitrary_dicts(claims: dict[str, Any], policy: ClaimsPolicy) -> None:
    try:
        times = validate_claims({}, claims, policy, NOW)
    except InvalidTokenError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("accepted")
    check_accepted({}, claims, policy, NOW, times)


# -- (4) the middleware -----------------------------------------------------------------------

OK_BODY = b"protected"
# The token: what follows the scheme, less trailing OWS (no part of the value, RFC 9110 §5.5).
BEARER_VALUE = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +(.+?)[ \t]*", re.DOTALL)


async def protected_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": OK_BODY})


@dataclass(frozen=True)
class Outcome:
    """What the middleware answered, and the audit events it emitted meanwhile."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    events: list[MutableMapping[str, Any]]


class Target:
    """The middleware in front of a bare ASGI app, and the genuine tokens it must accept."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.guard: BearerGuard = issuer.guard()
        self.app = BearerGuardMiddleware(protected_app, guard=self.guard)
        self.tokens = (
            issuer.mint(scopes=["read"]),
            issuer.mint(algorithm="ES256", sub="ec-user"),
            issuer.mint(expires_in=3600, aud=["https://other.example", issuer.audience]),
        )

    async def call(self, values: list[bytes], query: bytes = b"") -> Outcome:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/protected",
            "raw_path": b"/protected",
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"testserver")] + [(b"authorization", value) for value in values],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        messages: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            messages.append(message)

        with capture_logs() as events:
            await self.app(scope, receive, send)
        start, body = messages[0], messages[1]
        assert start["type"] == "http.response.start"
        for audit in events:  # as real sinks write them: a UTF-8 console, and orjson
            CONSOLE(None, "warning", dict(audit)).encode("utf-8")
            orjson.dumps(audit)
        return Outcome(start["status"], start["headers"], body["body"], events)

    def check(self, values: list[bytes], query: bytes, outcome: Outcome) -> None:
        """The properties of every answer to a request carrying ``values``."""
        status, events = outcome.status, outcome.events
        assert status in (200, 400, 401), status
        assert len(events) == 1, events
        audit = events[0]
        if status == 200:
            # Only a genuine token, byte for byte, in the only Authorization header.
            assert len(values) == 1
            match = BEARER_VALUE.fullmatch(values[0])
            assert match is not None
            assert match.group(1).decode("latin-1") in self.tokens
            assert b"access_token" not in query
            assert audit["event"] == "token.accepted"
            assert outcome.body == OK_BODY
            return
        challenges = [value for name, value in outcome.headers if name == b"www-authenticate"]
        assert len(challenges) == 1
        assert challenges[0].startswith(b"Bearer")
        assert audit["event"] == "token.rejected"
        assert audit["status"] == status
        assert (status == 400) == (audit["reason"] == "invalid_request")
        assert not (audit.get("detail") or "").startswith("unexpected"), audit
        assert outcome.body != OK_BODY
        for token in self.tokens:
            assert token.encode() not in outcome.body
            assert token.rsplit(".", 1)[1] not in repr(audit)


@pytest.fixture(scope="module")
def target(session_issuer: DevIssuer) -> Target:
    return Target(session_issuer)


CONSOLE = structlog.dev.ConsoleRenderer(colors=False)
# Headers that parse, so that their kid and alg reach the refusal's audit event.
audited_headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "ES256", "PS384"]) | st.text(any_characters, min_size=1)},
    optional={"kid": st.text(any_characters, max_size=8), "typ": st.text(any_characters)},
).map(lambda value: json.dumps(value).encode())

queries = st.sampled_from([b"", b"a=1", b"access_token=x", b"x=1&access_token="])


@pytest.mark.anyio
@settings(MIDDLEWARE_PROFILE)
@given(values=st.lists(header_values, max_size=3), query=queries)
async def test_middleware_over_arbitrary_authorization_bytes(
    target: Target, values: list[bytes], query: bytes
) -> None:
    outcome = await target.call(values, query)
    event(f"status {outcome.status}")
    target.check(values, query, outcome)


@pytest.mark.anyio
@settings(MIDDLEWARE_PROFILE)
@given(
    pair=st.tuples(st.integers(min_value=0, max_value=2), st.integers(min_value=0, max_value=2)),
    steps=st.lists(mutations, max_size=3),
    scheme=st.sampled_from([b"Bearer ", b"bearer ", b"Bearer  ", b"Basic ", b"Bearer\t"]),
    extra_header=st.booleans(),
)
async def test_middleware_over_mutated_valid_tokens(
    target: Target,
    pair: tuple[int, int],
    steps: list[tuple[Any, ...]],
    scheme: bytes,
    extra_header: bool,
) -> None:
    index, donor = pair
    token = mutate(target.tokens[index], steps, target.tokens[donor])
    values = [scheme + token.encode()]
    if extra_header:
        values.append(b"Bearer " + target.tokens[donor].encode())
    outcome = await target.call(values)
    event(f"status {outcome.status}")
    target.check(values, b"", outcome)


@pytest.mark.anyio
@settings(MIDDLEWARE_PROFILE)
@given(
    header=raw_segments | audited_headers,
    payload=raw_segments,
    signature=st.binary(min_size=1, max_size=40),
)
async def test_middleware_over_structured_unsigned_tokens(
    target: Target, header: bytes, payload: bytes, signature: bytes
) -> None:
    # Header members reach the audit event of the refusal (kid, alg): whatever their text,
    # the event must render and the answer be a clean refusal.
    values = [f"Bearer {b64u(header)}.{b64u(payload)}.{b64u(signature)}".encode()]
    outcome = await target.call(values)
    event(f"status {outcome.status}")
    target.check(values, b"", outcome)
    kid = outcome.events[0].get("kid")
    assert kid is None or (kid.isascii() and kid.isprintable())


@pytest.mark.anyio
async def test_control_middleware_accepts_every_genuine_token(target: Target) -> None:
    """The properties above are meaningful only if genuine tokens get through."""
    for token in target.tokens:
        values = [b"Bearer " + token.encode()]
        outcome = await target.call(values)
        assert outcome.status == 200
        target.check(values, b"", outcome)


# -- (5) the cache-hit fast path against the general path -------------------------------------


class Differential:
    """One middleware whose guard reuses verified tokens (the cache-hit fast path), one whose
    guard caches nothing (every request takes the general path): same issuer, same rules."""

    PUBLIC = ("/public", "/static/*")

    def __init__(self, issuer: DevIssuer) -> None:
        self.tokens = (issuer.mint(scopes=["read"]), issuer.mint(algorithm="ES256", sub="ec"))
        self.warm_guard = issuer.guard()
        self.warm = BearerGuardMiddleware(
            self._app, guard=self.warm_guard, public_paths=self.PUBLIC
        )
        self.cold = BearerGuardMiddleware(
            self._app, guard=issuer.guard(cache_size=0), public_paths=self.PUBLIC
        )

    @staticmethod
    async def _app(scope: Scope, receive: Receive, send: Send) -> None:
        # The app answers with what the middleware put in the scope for it.
        auth = scope.get("auth")
        body = repr((getattr(auth, "scopes", None), scope["user"].is_authenticated)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def call(
        self,
        app: BearerGuardMiddleware,
        headers: list[tuple[bytes, bytes]],
        path: str,
        query: bytes | bytearray | str,
    ) -> tuple[int, bytes, list[tuple[Any, ...]]]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 50000),
        }
        messages: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            messages.append(message)

        with capture_logs() as events:
            await app(scope, receive, send)
        seen = [
            (e["event"], e.get("reason"), e.get("status"), e.get("request_id"), e.get("path"))
            for e in events
        ]
        return messages[0]["status"], messages[1]["body"], seen


@pytest.fixture(scope="module")
def differential(session_issuer: DevIssuer) -> Differential:
    return Differential(session_issuer)


def _authorization(tokens: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """Header values around the genuine tokens: spellings of the scheme, white space and
    junk on either side, or arbitrary bytes."""
    return st.one_of(
        st.builds(
            lambda scheme, token, suffix: scheme + token.encode() + suffix,
            st.sampled_from([b"Bearer ", b"bearer ", b"Bearer  ", b"BEARER ", b"Bearer\t", b""]),
            st.sampled_from(tokens),
            st.sampled_from([b"", b" ", b"\t", b"=", b"x", b"\x00", b", Bearer x", b"\r\n"]),
        ),
        header_values,
    )


@pytest.mark.anyio
@settings(MIDDLEWARE_PROFILE)
@given(data=st.data())
async def test_the_fast_path_answers_as_the_general_path(
    differential: Differential, data: st.DataObject
) -> None:
    """Whatever the request, a guard serving cache hits answers it as one without a cache:
    same status and body, same audit events (the fast path never accepts what the general
    path refuses)."""
    names = st.sampled_from([b"authorization", b"Authorization", b"x-request-id", b"x-other"])
    headers = data.draw(
        st.lists(
            st.tuples(names, _authorization(differential.tokens) | st.binary(max_size=8)),
            max_size=4,
        )
    )
    path = data.draw(
        st.sampled_from(["/me", "/public", "/static/a", "/static/../me", "/public/x", "/"])
    )
    query: bytes | bytearray | str = data.draw(
        st.sampled_from(
            [b"", b"a=1", b"access_token=x", b"access%5Ftoken=x", b"a=%41", b"x=access_token"]
        )
    )
    # ASGI says bytes; test tools put text there, or another kind of bytes.
    query = data.draw(st.sampled_from([bytes, bytearray, bytes.decode]))(query)
    for token in differential.tokens:  # every genuine token is a cache hit for the warm one
        await differential.call(
            differential.warm, [(b"authorization", b"Bearer " + token.encode())], "/me", b""
        )
    warm = await differential.call(differential.warm, headers, path, query)
    cold = await differential.call(differential.cold, headers, path, query)
    event(f"status {warm[0]}")
    assert warm == cold


@pytest.mark.anyio
async def test_control_the_warm_guard_serves_genuine_tokens_from_its_cache(
    differential: Differential,
) -> None:
    """The comparison above is meaningful only if the warm guard's hits take the fast path."""
    for token in differential.tokens:
        value = b"Bearer " + token.encode()
        await differential.call(differential.warm, [(b"authorization", value)], "/me", b"")
        assert differential.warm_guard.reused(b"Bearer " + token.encode()) is not None


# -- (6) the guard's cache lookup against a guard without one ---------------------------------

# What a respelling writes into a genuine token: its own alphabet, "?" (what latin-1's
# "replace" writes for text it cannot encode, as authenticate() and the WSGI cache hit
# encode text), text latin-1 cannot encode (two of them become the same bytes), latin-1
# beyond ASCII, white space, NUL and a lone surrogate.
RESPELLING_CHARS = "A_-.=?\u20ac\u0100\u2024\u00e9\u00a0 \t\n\x00\udc80"


def respelled(token: str, how: str, at: int, char: str) -> str:
    """``token`` with ``char`` put at ``at`` (replacing or inserting) or around it."""
    at %= len(token) + 1
    if how == "replace":
        return token[:at] + char + token[at + 1 :]
    if how == "insert":
        return token[:at] + char + token[at:]
    return char + token if how == "prefix" else token + char


class GuardDifferential:
    """A guard caching verified tokens and one caching nothing: same issuer, same rules."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.tokens = (issuer.mint(scopes=["read"]), issuer.mint(algorithm="ES256", sub="ec"))
        self.warm = issuer.guard(in_process=True)
        self.cold = issuer.guard(in_process=True, cache_size=0)

    @staticmethod
    def verdict(guard: BearerGuard, token: str | bytes) -> tuple[Any, ...]:
        try:
            access = guard.authenticate_sync(token)
        except AuthError as error:
            return ("refused", type(error).__name__, error.status, error.fingerprint)
        return ("accepted", access.subject, access.raw, access.fingerprint)


@pytest.fixture(scope="module")
def guard_differential(session_issuer: DevIssuer) -> GuardDifferential:
    return GuardDifferential(session_issuer)


@settings(PROFILE)
@given(
    index=st.integers(min_value=0, max_value=1),
    how=st.sampled_from(["none", "replace", "insert", "prefix", "suffix"]),
    at=positions,
    char=st.sampled_from(RESPELLING_CHARS),
    as_bytes=st.booleans(),
)
def test_the_guard_answers_a_cached_token_as_an_uncached_one(
    guard_differential: GuardDifferential,
    index: int,
    how: str,
    at: int,
    char: str,
    as_bytes: bool,
) -> None:
    """Text or bytes, a genuine token or a respelling of one (latin-1's "replace" makes
    "?" of what it cannot encode, so two texts can give the same bytes): a guard whose cache
    holds every genuine token answers as one without a cache, and serves a cached
    verification, authenticate's or reused()'s, only to the very bytes of a genuine token."""
    diff = guard_differential
    genuine = diff.tokens[index]
    text = genuine if how == "none" else respelled(genuine, how, at, char)
    token: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    for each in diff.tokens:  # every genuine token is a cache hit for the warm guard
        diff.warm.authenticate_sync(each)
    warm = diff.verdict(diff.warm, token)
    event(f"{warm[0]} {'bytes' if as_bytes else 'text'}")
    assert warm == diff.verdict(diff.cold, token)
    sent = token if isinstance(token, bytes) else token.encode("latin-1", "replace")
    genuine_bytes = {each.encode() for each in diff.tokens}
    assert (warm[0] == "accepted") == (sent in genuine_bytes)
    assert (warm[0] == "accepted") == (text in diff.tokens)
    assert (diff.warm.reused(b"Bearer " + sent) is not None) == (sent in genuine_bytes)
