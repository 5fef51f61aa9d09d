"""``bearerguard.testing`` (token variants, audit capture) and the opt-in pytest plugin."""

from __future__ import annotations

import gc
import re
import socket
import textwrap
import threading
import time
import warnings
from pathlib import Path
from unittest.mock import ANY

import httpx
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519

from bearerguard import BearerGuard, RefreshPolicy
from bearerguard.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidAudienceError,
    KeySetUnavailableError,
    NotYetValidError,
    RevokedTokenError,
    UnknownKeyError,
)
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import (
    AUDIT_EVENT_NAMES,
    AuditEvents,
    DevIssuer,
    Override,
    SigningKey,
    audit_events,
)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


# -- token variants ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mint", "error"),
    [
        (lambda issuer: issuer.mint_expired(), ExpiredTokenError),
        (lambda issuer: issuer.mint_expired(ago=60, sub="ann"), ExpiredTokenError),
        (lambda issuer: issuer.mint_not_yet_valid(), NotYetValidError),
        (lambda issuer: issuer.mint_for_audience("https://other.example"), InvalidAudienceError),
        (lambda issuer: issuer.mint_for_audience(["a", "b"]), InvalidAudienceError),
        (lambda issuer: issuer.mint_forged(), BadSignatureError),
        (lambda issuer: issuer.mint_forged(algorithm="ES256"), BadSignatureError),
        (lambda issuer: issuer.mint_forged(kid="never-published"), UnknownKeyError),
    ],
    ids=[
        "expired",
        "expired-60s",
        "not-yet-valid",
        "audience",
        "audiences",
        "forged",
        "forged-es256",
        "unknown-kid",
    ],
)
def test_bad_token_variants_are_refused_for_their_reason(
    session_issuer: DevIssuer, mint: object, error: type[Exception]
) -> None:
    guard = session_issuer.guard()
    token = mint(session_issuer)  # type: ignore[operator]
    with pytest.raises(error):
        guard.authenticate_sync(token)


def test_variants_keep_the_other_claims(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(leeway=0)
    # Only the claim that makes the variant bad differs: the rest verifies.
    accepted = guard.authenticate_sync(session_issuer.mint_expired(ago=-120, sub="bo"))
    assert accepted.subject == "bo"
    right_aud = session_issuer.mint_for_audience(session_issuer.audience, scopes=["a"])
    assert guard.authenticate_sync(right_aud).scopes == frozenset({"a"})


def test_forged_token_reuses_one_stranger_key_per_algorithm(session_issuer: DevIssuer) -> None:
    first = session_issuer.mint_forged(headers={"typ": None})
    stranger = session_issuer._strangers["RS256"]
    second = session_issuer.mint_forged()
    assert first.split(".")[2] != second.split(".")[2]
    assert session_issuer._strangers["RS256"] is stranger


def test_revoked_variant(session_issuer: DevIssuer) -> None:
    store = MemoryRevocationStore()
    guard = session_issuer.guard(revocation=store)
    token = session_issuer.mint_revoked(store, scopes=["a"], algorithm="ES256")
    with pytest.raises(RevokedTokenError):
        guard.authenticate_sync(token)
    assert guard.authenticate_sync(session_issuer.mint()).subject == "user-1"
    assert len(store) == 1


def test_revoked_variant_needs_a_synchronous_store(session_issuer: DevIssuer) -> None:
    class AsyncOnly:
        async def revoke_token(self, jti: str, expires_at: float) -> None:
            raise NotImplementedError

    with pytest.raises(TypeError, match=r"await store\.revoke_token"):
        session_issuer.mint_revoked(AsyncOnly())


def test_revoked_variant_needs_a_jti(session_issuer: DevIssuer) -> None:
    store = MemoryRevocationStore()
    with pytest.raises(ValueError, match=r"mint_revoked revokes by jti.*revoke_subject_sync"):
        session_issuer.mint_revoked(store, jti=None)
    assert len(store) == 0


def test_in_process_guard_needs_no_server() -> None:
    issuer = DevIssuer()  # never started: connections are refused
    try:
        guard = issuer.guard(in_process=True)
        assert guard.authenticate_sync(issuer.mint(sub="ida")).subject == "ida"
        assert issuer.requests == []
    finally:
        issuer.stop()


def test_an_issuer_never_started_nor_stopped_leaves_no_socket_open() -> None:
    # in_process needs no server, so an issuer used for it alone is never stopped: its
    # sockets must not outlive it (a ResourceWarning, an error under filterwarnings).
    def use() -> str:
        issuer = DevIssuer(keys=[SigningKey.generate("ES256")])
        return issuer.guard(in_process=True).authenticate_sync(issuer.mint()).subject or ""

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert use() == "user-1"
        gc.collect()
    assert [str(each.message) for each in caught if each.category is ResourceWarning] == []


def test_an_issuer_not_started_refuses_connections_at_once() -> None:
    issuer = DevIssuer()
    try:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            httpx.get(issuer.jwks_uri, timeout=5.0)
        assert time.monotonic() - started < 2.0  # refused, not left hanging to the timeout
        issuer.start()
        assert httpx.get(issuer.jwks_uri, timeout=5.0).json() == issuer.jwks()
    finally:
        issuer.stop()


def test_a_stopped_issuer_starts_again_on_its_port_with_its_keys() -> None:
    issuer = DevIssuer(algorithms=["ES256"]).start()
    try:
        guard = issuer.guard()
        token = issuer.mint(sub="ada")
        assert guard.authenticate_sync(token).subject == "ada"
        url, jwks = issuer.url, issuer.jwks()
        issuer.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(issuer.jwks_uri, timeout=5.0)
        assert issuer.start() is issuer
        assert issuer.url == url  # the same iss: guards and tokens made before still fit
        assert httpx.get(issuer.jwks_uri, timeout=5.0).json() == jwks
        assert issuer.guard().authenticate_sync(token).subject == "ada"
        issuer.start()  # starting a started issuer changes nothing
        assert httpx.get(issuer.jwks_uri, timeout=5.0).json() == jwks
    finally:
        issuer.stop()
    issuer.stop()  # stopping twice is harmless


def test_a_stopped_issuer_whose_port_was_taken_says_so() -> None:
    issuer = DevIssuer(algorithms=["ES256"]).start()
    issuer.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", issuer.port))
        squatter.listen()
        with pytest.raises(OSError, match=rf"port {issuer.port} .*taken"):
            issuer.start()
    issuer.start()  # free again
    try:
        assert httpx.get(issuer.jwks_uri, timeout=5.0).json() == issuer.jwks()
    finally:
        issuer.stop()


def test_stop_ends_connections_still_waiting_out_a_delay() -> None:
    # An Override's delay slept on after stop(): the handler thread and its connection
    # lived on, and the "stopped" issuer answered 200 when the delay ran out. Now stop()
    # ends them at once, unanswered, as an issuer that went down would.
    issuer = DevIssuer(keys=[SigningKey.generate("ES256")]).start()
    issuer.overrides[issuer.jwks_path] = Override(body=issuer.jwks_bytes(), delay=30)
    before = set(threading.enumerate())
    outcomes: list[object] = []

    def fetch() -> None:
        try:
            outcomes.append(httpx.get(issuer.jwks_uri, timeout=60).status_code)
        except httpx.HTTPError as exc:
            outcomes.append(exc)

    client = threading.Thread(target=fetch)
    try:
        client.start()
        deadline = time.monotonic() + 5
        while issuer.fetch_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert issuer.fetch_count() == 1
        started = time.monotonic()
        issuer.stop()
        assert time.monotonic() - started < 2.0
        assert [t for t in threading.enumerate() if t not in before and t is not client] == []
        client.join(5)
        assert not client.is_alive()
        assert len(outcomes) == 1
        assert isinstance(outcomes[0], httpx.RemoteProtocolError)  # closed, unanswered
        del issuer.overrides[issuer.jwks_path]
        issuer.start()  # and it serves again
        assert httpx.get(issuer.jwks_uri, timeout=5.0).json() == issuer.jwks()
    finally:
        issuer.stop()
        client.join(60)


# -- keys -------------------------------------------------------------------------------


def test_issuers_can_share_keys() -> None:
    keys = [SigningKey.generate("ES256"), SigningKey.generate("PS256")]
    with DevIssuer(keys=keys) as first, DevIssuer(keys=keys, algorithms=["RS256"]) as second:
        assert [key.kid for key in first.keys] == [key.kid for key in second.keys]
        assert first.key().algorithm == "ES256"
        first.rotate()
        assert len(second.keys) == 2  # rotating one issuer leaves the other alone
        assert second.guard().authenticate_sync(second.mint(algorithm="PS256"))
    with pytest.raises(ValueError, match="at least one key"):
        DevIssuer(keys=[])
    with pytest.raises(ValueError, match="does not generate"):
        SigningKey.generate("ES384")


@pytest.mark.parametrize(("path", "suffix"), [("/", "/"), ("/tenant/", "/tenant/")])
def test_an_issuer_with_a_trailing_slash_as_auth0s(
    session_issuer: DevIssuer, path: str, suffix: str
) -> None:
    # Auth0's issuers end with a slash, the most common mismatch: a test can now reproduce
    # both the configuration that works and the one missing the slash.
    with DevIssuer(path=path, keys=session_issuer.keys) as issuer:
        assert issuer.url == f"http://127.0.0.1:{issuer.port}{suffix}"
        assert issuer.metadata()["issuer"] == issuer.url
        token = issuer.mint(scopes=["items:read"])
        assert issuer.guard().authenticate_sync(token).issuer == issuer.url
        assert issuer.guard(discover=False).authenticate_sync(token).issuer == issuer.url
        assert "//" not in issuer.jwks_uri.removeprefix("http://")
        slashless = issuer.url.removesuffix("/")
        with pytest.raises(KeySetUnavailableError):  # its metadata names the other spelling
            BearerGuard(issuer=slashless, audience=issuer.audience).authenticate_sync(token)
    with DevIssuer(
        path="/", keys=session_issuer.keys, oauth_metadata=True, oidc_discovery=False
    ) as rfc8414:
        assert rfc8414.guard().authenticate_sync(rfc8414.mint()).issuer == rfc8414.url


@pytest.mark.parametrize("path", ["//", "tenant/", "/a//", "/a?b"])
def test_a_malformed_issuer_path_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="path must start with '/'"):
        DevIssuer(path=path, keys=[SigningKey.generate("ES256")])


def test_discovery_has_the_members_oidc_discovery_requires(session_issuer: DevIssuer) -> None:
    from bearerguard.fastapi import oauth2_flows

    served = httpx.get(session_issuer.url + "/.well-known/openid-configuration").json()
    # OpenID Connect Discovery 1.0 §3: REQUIRED members (token_endpoint: no implicit flow).
    required = {"issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"}
    required |= {"response_types_supported", "subject_types_supported"}
    required.add("id_token_signing_alg_values_supported")
    assert required <= served.keys()
    flows = oauth2_flows(served).model_dump(by_alias=True, exclude_none=True)
    assert flows["authorizationCode"]["authorizationUrl"] == f"{session_issuer.url}/authorize"


@pytest.mark.parametrize("algorithm", ["ES256", "Ed25519"])
def test_rotation_keeps_the_signing_algorithm(algorithm: str) -> None:
    # A provider rotating its key keeps its algorithm: a guard allowing only that one
    # must accept the new key's tokens, as it would the provider's.
    with DevIssuer(algorithms=[algorithm]) as issuer:
        guard = issuer.guard(algorithms=[algorithm], refresh=RefreshPolicy(cooldown=0))
        guard.authenticate_sync(issuer.mint())
        new = issuer.rotate()
        assert new.algorithm == algorithm
        assert issuer.key() is new
        assert guard.authenticate_sync(issuer.mint(sub="rob")).key_id == new.kid
        assert issuer.rotate("PS256").algorithm == "PS256"  # another one when named


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "EdDSA", "Ed25519", "Ed448"])
def test_pem_round_trip_and_stable_kid(algorithm: str) -> None:
    key = SigningKey.generate(algorithm)
    pem = key.private_pem()
    loaded = SigningKey.from_pem(pem, algorithm=algorithm)
    again = SigningKey.from_pem(pem.decode(), algorithm=algorithm)
    assert loaded.kid == again.kid  # the RFC 7638 thumbprint
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", loaded.kid)
    assert SigningKey.from_pem(pem, algorithm=algorithm, kid="mine").kid == "mine"
    with DevIssuer(keys=[loaded]) as issuer:
        assert issuer.guard().authenticate_sync(issuer.mint()).key_id == loaded.kid


@pytest.mark.parametrize(
    ("algorithm", "crv"), [("EdDSA", "Ed25519"), ("Ed25519", "Ed25519"), ("Ed448", "Ed448")]
)
def test_edwards_keys_sign_tokens_the_guard_accepts(algorithm: str, crv: str) -> None:
    """DevIssuer generated RSA and P-256 keys only: EdDSA and RFC 9864's Ed25519 and Ed448,
    which the guard accepts, could not be tested against it (PyJWT signs only "EdDSA")."""
    with DevIssuer(algorithms=[algorithm]) as issuer:
        token = issuer.mint()
        assert jwt.get_unverified_header(token)["alg"] == algorithm
        jwk = issuer.jwks()["keys"][0]
        assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", crv, algorithm)
        guard = issuer.guard()
        access = guard.authenticate_sync(token)
        assert (access.subject, access.algorithm) == ("user-1", algorithm)
        with pytest.raises(BadSignatureError):
            guard.authenticate_sync(issuer.mint_forged())


def test_rfc8037_thumbprint_example() -> None:
    # RFC 8037 §A.3: the example Ed25519 key and its RFC 7638 thumbprint.
    from bearerguard.testing import _thumbprint

    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert _thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 §3.1: the example RSA key and its thumbprint.
    from bearerguard.testing import _thumbprint

    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6t"
        "Soc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
        "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-b"
        "FTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert _thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _pem(private_key: object) -> bytes:
    return private_key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("pem", "algorithm", "message"),
    [
        (b"not a key", None, "not an unencrypted PEM private key"),
        (_pem(rsa.generate_private_key(65537, 1024)), None, "1024 bits is too weak"),  # noqa: S505
        (_pem(ec.generate_private_key(ec.SECP384R1())), None, "secp384r1 is not supported"),
        (_pem(ec.generate_private_key(ec.SECP256R1())), "RS256", "signs ES256, not RS256"),
        (_pem(rsa.generate_private_key(65537, 2048)), "ES256", "signs RS256 or PS256"),
        (_pem(ed25519.Ed25519PrivateKey.generate()), "Ed448", "signs Ed25519 or EdDSA"),
        (_pem(ed448.Ed448PrivateKey.generate()), "Ed25519", "signs Ed448 or EdDSA"),
        (_pem(x25519.X25519PrivateKey.generate()), None, "only RSA, EC P-256, Ed25519"),
    ],
    ids=[
        "garbage",
        "rsa-1024",
        "p-384",
        "ec-as-rsa",
        "rsa-as-ec",
        "ed25519-as-ed448",
        "ed448-as-ed25519",
        "x25519",
    ],
)
def test_bad_pem_keys(pem: bytes, algorithm: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SigningKey.from_pem(pem, algorithm=algorithm)


# -- audit events -----------------------------------------------------------------------


def _emit(issuer: DevIssuer, *tokens: str | None) -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware

    async def hello(_request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(
        routes=[Route("/", hello)],
        middleware=[Middleware(BearerGuardMiddleware, guard=issuer.guard())],
    )
    with TestClient(app) as client:
        for token in tokens:
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            client.get("/", headers=headers)


def test_audit_events_capture_only_bearerguard_events(session_issuer: DevIssuer) -> None:
    with audit_events() as events:
        structlog.get_logger("app").info("order.placed", outcome="allow")
        structlog.get_logger("app").info("token.refreshed")  # a namespace, but no outcome
        structlog.get_logger("app").info(42)
        _emit(session_issuer, session_issuer.mint(sub="al"), None)
    assert events.names == ["token.accepted", "token.rejected"]
    assert len(events) == 2
    assert events[0]["sub"] == "al"
    assert [event["event"] for event in events] == events.names
    assert repr(events) == "AuditEvents(['token.accepted', 'token.rejected'])"
    accepted = events.assert_one("token.accepted", sub="al", outcome="allow", token_fp=ANY)
    assert accepted["log_level"] == "info"
    events.assert_one("token.rejected", reason="missing_token", status=401)
    events.assert_none("scope.denied")
    events.clear()
    events.assert_none()


def test_audit_assertions_say_what_was_emitted(session_issuer: DevIssuer) -> None:
    with audit_events() as events:
        _emit(session_issuer, session_issuer.mint_expired(sub="cy"))
    with pytest.raises(AssertionError) as missing:
        events.assert_one("token.accepted")
    assert "expected exactly one 'token.accepted' audit event, got 0" in str(missing.value)
    assert "token.rejected" in str(missing.value)
    assert "reason='expired'" in str(missing.value)

    with pytest.raises(AssertionError) as wrong:
        events.assert_one("token.rejected", reason="bad_signature", status=401, nope=1)
    message = str(wrong.value)
    assert "reason: wanted 'bad_signature', got 'expired'" in message
    assert "nope: wanted 1, got no such field" in message
    assert "status:" not in message  # the fields that match are not listed

    with pytest.raises(AssertionError, match="expected no audit events"):
        events.assert_none()
    with pytest.raises(AssertionError, match=r"expected no 'token\.rejected' audit events"):
        events.assert_none("token.rejected")


def test_audit_assertions_on_nothing_captured() -> None:
    with audit_events() as events:
        pass
    with pytest.raises(AssertionError, match="captured: no audit event"):
        events.assert_one("token.accepted")
    assert isinstance(events, AuditEvents)
    assert list(events) == []


def test_assert_none_refuses_a_name_no_event_has(session_issuer: DevIssuer) -> None:
    # An expired token is a token.rejected (reason expired): assert_none("token.expired")
    # passed whatever happened, as did any misspelt name.
    with audit_events() as events:
        _emit(session_issuer, session_issuer.mint_expired())
    events.assert_one("token.rejected", reason="expired")
    for name in ("token.expired", "token.rejectd"):
        with pytest.raises(ValueError, match="is not the name of an audit event"):
            events.assert_none(name)
    events.assert_none("token.accepted")  # a real name, not emitted: passes


def test_events_named_later_are_captured_by_their_shape() -> None:
    with audit_events() as events:
        structlog.get_logger("bearerguard.audit").warning("token.replayed", outcome="deny")
    assert events.names == ["token.replayed"]


def test_audit_event_names_cover_the_documented_schema() -> None:
    text = (ROOT / "docs" / "audit-events.md").read_text()
    table = text.split("## Event names", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", table, re.MULTILINE))
    assert documented
    assert documented <= AUDIT_EVENT_NAMES


# -- the pytest plugin, in a scratch project --------------------------------------------

APPS_TESTS = textwrap.dedent(
    """
    from fastapi import FastAPI
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard import get_access_token, requires_scopes
    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.flask import protect


    def bearer(token):
        return {"Authorization": f"Bearer {token}"}


    def test_starlette(bearerguard_issuer, bearerguard_guard, bearerguard_audit):
        @requires_scopes("items:read")
        async def items(request):
            return JSONResponse({"for": request.user.display_name})

        app = Starlette(
            routes=[Route("/items", items)],
            middleware=[Middleware(BearerGuardMiddleware, guard=bearerguard_guard)],
        )
        with TestClient(app) as client:
            good = client.get("/items", headers=bearer(bearerguard_issuer.mint(
                scopes=["items:read"], sub="sal")))
            assert good.json() == {"for": "sal"}
            expired = client.get("/items", headers=bearer(bearerguard_issuer.mint_expired()))
            assert expired.status_code == 401
        bearerguard_audit.assert_one("token.accepted", sub="sal")
        bearerguard_audit.assert_one("token.rejected", reason="expired", status=401)


    def test_fastapi(bearerguard_issuer, bearerguard_guard, bearerguard_audit):
        api = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=bearerguard_guard)])

        @api.get("/me")
        @requires_scopes("profile")
        async def me():
            return {"sub": get_access_token().subject}

        with TestClient(api) as client:
            token = bearerguard_issuer.mint(scopes=["profile"], sub="fay")
            assert client.get("/me", headers=bearer(token)).json() == {"sub": "fay"}
            other = bearerguard_issuer.mint_for_audience("https://other.example")
            assert client.get("/me", headers=bearer(other)).status_code == 401
            unscoped = bearerguard_issuer.mint(sub="fay")
            assert client.get("/me", headers=bearer(unscoped)).status_code == 403
        bearerguard_audit.assert_one("token.rejected", reason="invalid_audience")
        bearerguard_audit.assert_one("scope.denied", required_scopes=["profile"])


    def test_flask(bearerguard_issuer, bearerguard_guard, bearerguard_audit):
        app = Flask(__name__)

        @app.get("/items")
        @requires_scopes("items:read")
        def items():
            return {"for": get_access_token().subject}

        protect(app, guard=bearerguard_guard)
        client = app.test_client()
        token = bearerguard_issuer.mint(scopes=["items:read"], sub="flo")
        assert client.get("/items", headers=bearer(token)).json == {"for": "flo"}
        forged = bearerguard_issuer.mint_forged(scopes=["items:read"])
        assert client.get("/items", headers=bearer(forged)).status_code == 401
        bearerguard_audit.assert_one("token.accepted", sub="flo")
        bearerguard_audit.assert_one("token.rejected", reason="bad_signature")
    """
)

OPTIONS_TESTS = textwrap.dedent(
    """
    import pytest


    @pytest.fixture
    def bearerguard_guard_options():
        return {"audience": "https://orders.example", "leeway": 0}


    def test_options(bearerguard_issuer, bearerguard_guard):
        assert bearerguard_guard.audiences == ("https://orders.example",)
        token = bearerguard_issuer.mint(aud="https://orders.example")
        assert bearerguard_guard.authenticate_sync(token).subject == "user-1"


    def test_keys_are_shared(bearerguard_issuer, bearerguard_signing_keys):
        assert bearerguard_issuer.keys == bearerguard_signing_keys
    """
)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-W", "error", "-p", "no:cacheprovider", *args)


def test_plugin_is_off_unless_enabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_off="def test_off(bearerguard_issuer):\n    pass\n")
    result = _run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'bearerguard_issuer' not found*"])
    listing = _run(pytester, "--fixtures")
    assert "bearerguard_guard" not in listing.stdout.str()


def test_plugin_enabled_with_dash_p(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_apps=APPS_TESTS, test_options=OPTIONS_TESTS)
    result = _run(pytester, "-p", "bearerguard")
    result.assert_outcomes(passed=5)
    listing = _run(pytester, "-p", "bearerguard", "--fixtures")
    listing.stdout.fnmatch_lines(["bearerguard_guard*", "*trusts ``bearerguard_issuer``*"])


def test_plugin_enabled_in_addopts_without_autoload(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini("[pytest]\naddopts = -p bearerguard\n")
    pytester.makepyfile(test_options=OPTIONS_TESTS)
    _run(pytester).assert_outcomes(passed=2)


def test_plugin_enabled_by_pytest_plugins_and_dash_p_together(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest('pytest_plugins = ["bearerguard.pytest_plugin"]\n')
    pytester.makepyfile(test_apps=APPS_TESTS)
    _run(pytester).assert_outcomes(passed=3)
    # Both ways at once register the module once, not twice.
    _run(pytester, "-p", "bearerguard").assert_outcomes(passed=3)


def test_a_failing_audit_assertion_reads_well(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fail=textwrap.dedent(
            """
            def test_fail(bearerguard_guard, bearerguard_issuer, bearerguard_audit):
                bearerguard_audit.assert_one("token.accepted")
            """
        )
    )
    result = _run(pytester, "-p", "bearerguard")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*expected exactly one 'token.accepted' audit event, got 0; captured: no audit event*"]
    )


def test_the_issuer_mints_for_the_audience_the_options_name(pytester: pytest.Pytester) -> None:
    # docs/testing.md tells a suite to set its API's audience in bearerguard_guard_options:
    # the issuer's tokens must then be for that API, not all refused as invalid_audience.
    pytester.makepyfile(
        test_audience=textwrap.dedent(
            """
            import pytest

            from bearerguard.errors import InvalidAudienceError


            @pytest.fixture(params=[
                {"audience": "https://orders.example"},
                {"audience": ["https://orders.example", "api://orders"]},
                {"resource": "https://orders.example"},
            ])
            def bearerguard_guard_options(request):
                return request.param


            def test_minted_tokens_are_for_the_guard(bearerguard_issuer, bearerguard_guard):
                token = bearerguard_guard.authenticate_sync(bearerguard_issuer.mint())
                assert token.audience == ("https://orders.example",)
                other = bearerguard_issuer.mint_for_audience("https://api.example")
                with pytest.raises(InvalidAudienceError):
                    bearerguard_guard.authenticate_sync(other)
            """
        )
    )
    _run(pytester, "-p", "bearerguard").assert_outcomes(passed=3)


def test_a_guard_for_a_resource_checks_the_resource_as_audience(session_issuer: DevIssuer) -> None:
    # As BearerGuard(resource=...) does in production (RFC 8707): no lenient test default.
    resource = "https://notes.example/mcp"
    guard = session_issuer.guard(resource=resource, in_process=True)
    assert guard.authenticate_sync(session_issuer.mint(aud=resource)).audience == (resource,)
    with pytest.raises(InvalidAudienceError):
        guard.authenticate_sync(session_issuer.mint())


def test_scopes_given_as_one_string_are_refused(session_issuer: DevIssuer) -> None:
    with pytest.raises(TypeError, match="not a string"):
        session_issuer.mint(scopes="items:read")  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["RS256", "Ed25519"])
def test_header_members_given_as_none_are_left_out(algorithm: str) -> None:
    # PyJWT writes typ "JWT" into a header without typ: None must leave typ out altogether.
    with DevIssuer(algorithms=[algorithm]) as issuer:
        for token in (
            issuer.mint(headers={"typ": None, "kid": None}),
            issuer.mint_forged(headers={"typ": None, "kid": None}),
            issuer.sign(issuer.claims(), headers={"typ": None, "kid": None}),
        ):
            assert jwt.get_unverified_header(token) == {"alg": algorithm}


def test_algorithms_given_as_one_string_are_refused() -> None:
    # iterating "ES256" would ask for keys of algorithm "E", "S", ...
    with pytest.raises(TypeError, match=r"\['ES256'\], not a string"):
        DevIssuer(algorithms="ES256")


@pytest.mark.parametrize("body", ['{"keys": []}', {"keys": []}])
def test_an_override_body_that_is_not_bytes_is_refused_at_once(body: object) -> None:
    # Not in the serving thread, mid-answer, as a traceback and a failed key fetch.
    with pytest.raises(TypeError, match="body is bytes"):
        Override(body=body)  # type: ignore[arg-type]


def test_the_testing_page_runs_under_pytest(pytester: pytest.Pytester) -> None:
    # docs/testing.md's own tests and its options fixture, run by pytest with the plugin
    # as the page tells a user to enable it (the page's last block calls them by hand).
    blocks = re.findall(
        r"^```python\n(.*?)^```", (ROOT / "docs" / "testing.md").read_text(), re.M | re.S
    )
    conftest = next(block for block in blocks if "pytest_plugins" in block)
    # The tests, and the Django project its test runs against, in the page's order.
    tests = [block for block in blocks if "def test_" in block or "settings.configure" in block]
    [override] = [block for block in blocks if "def bearerguard_guard_options" in block]
    pytester.makeconftest(conftest)
    project = textwrap.dedent(
        """

        @pytest.fixture(autouse=True)
        def _settings_module():  # the page's stand-in for a project's settings module
            with project:
                yield
        """
    )
    pytester.makepyfile(
        test_page="\n".join([blocks[0], *tests, "import pytest", project]),
        test_override=override
        + textwrap.dedent(
            """

            def test_the_options_apply(bearerguard_issuer, bearerguard_guard):
                token = bearerguard_issuer.mint(
                    aud="https://orders.example", permissions=["orders:read"]
                )
                assert "orders:read" in bearerguard_guard.authenticate_sync(token).scopes
            """
        ),
    )
    _run(pytester).assert_outcomes(passed=5)
