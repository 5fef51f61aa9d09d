"""Certificate-bound tokens (RFC 8705 §3): thumbprints, both middlewares, real TLS servers.

Certificates are made here with ``cryptography``: a CA, a server certificate for 127.0.0.1 and
client certificates. The thumbprint is checked against ``cryptography``'s own fingerprint.
The real-server tests run uvicorn (ASGI) and werkzeug (WSGI) serving HTTPS on 127.0.0.1 with
client-certificate verification, and httpx presenting a client certificate.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.testclient import TestClient

from bearerguard import BearerGuard
from bearerguard._core.mtls import (
    MAX_CERTIFICATE_BYTES,
    certificate_thumbprint,
    check_certificate_binding,
    der_from_header,
    der_from_pem,
)
from bearerguard.dpop import DPoPPolicy, MemoryDPoPReplayStore
from bearerguard.errors import CertificateBindingError, ConfigurationError, MalformedTokenError
from bearerguard.mtls import CertificateBinding, environ_certificate, scope_certificate
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from tests.apps import build_app, build_flask_app
from tests.helpers import serving

Client = Callable[..., httpx.Response]
_DAY = datetime.timedelta(days=1)


@dataclass
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def thumbprint(self) -> str:
        # Independent of our code: cryptography's fingerprint, base64url without padding.
        digest = self.cert.fingerprint(hashes.SHA256())
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_text(self.pem)
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert, key


def issue(name: str, ca: Issued | None = None, *, server: bool = False) -> Issued:
    """A certificate signed by ``ca``, or a self-signed CA certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if ca is None else ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + _DAY)
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        usage = (
            x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    signer = key if ca is None else ca.key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass
class PKI:
    ca: Issued
    server: Issued
    alice: Issued
    mallory: Issued


@pytest.fixture(scope="module")
def pki() -> PKI:
    ca = issue("bearerguard test CA")
    return PKI(ca, issue("127.0.0.1", ca, server=True), issue("alice", ca), issue("mallory", ca))


# -- the core: thumbprints, certificate forms, the binding check ------------------------


def test_thumbprint_is_base64url_sha256_of_the_der(pki: PKI) -> None:
    assert certificate_thumbprint(pki.alice.der) == pki.alice.thumbprint
    assert len(pki.alice.thumbprint) == 43  # 32 bytes, unpadded (RFC 8705 §3.1)
    assert certificate_thumbprint(pki.alice.der) != certificate_thumbprint(pki.mallory.der)


def test_der_from_pem_takes_the_leaf_of_a_chain(pki: PKI) -> None:
    assert der_from_pem(pki.alice.pem) == pki.alice.der
    assert der_from_pem((pki.alice.pem + pki.ca.pem).encode()) == pki.alice.der
    assert der_from_pem(pki.alice.pem.replace("\n", "\r\n")) == pki.alice.der


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----",  # bad padding
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\n" + "A" * (MAX_CERTIFICATE_BYTES * 2) + "\n-----END",
    ],
)
def test_der_from_pem_refuses_what_is_not_a_certificate(value: str) -> None:
    assert der_from_pem(value) is None


def test_der_from_header_forms(pki: PKI) -> None:
    rfc9440 = ":" + base64.b64encode(pki.alice.der).decode() + ":"
    assert der_from_header(rfc9440) == pki.alice.der
    assert der_from_header(f"  {rfc9440} ") == pki.alice.der
    assert der_from_header(quote(pki.alice.pem)) == pki.alice.der  # nginx, AWS ALB
    assert der_from_header(quote(pki.alice.pem, safe="")) == pki.alice.der


def test_der_from_header_takes_a_byte_sequence_without_padding(pki: PKI) -> None:
    # RFC 8941 §4.2.7: parsers of a Byte Sequence SHOULD NOT fail when its "=" padding is
    # missing; a certificate whose length is no multiple of 3 was taken for none at all.
    for der in (pki.alice.der, pki.alice.der[:-1], pki.alice.der[:-2]):
        unpadded = base64.b64encode(der).decode().rstrip("=")
        assert der_from_header(f":{unpadded}:") == der
    assert der_from_header(":QUFBQ:") is None  # 4n + 1 characters: no base64 at all


@pytest.mark.parametrize(
    "value",
    ["", "::", ":not base64!:", "garbage", "a" * (MAX_CERTIFICATE_BYTES * 3 + 1), ":QQ==:, :QQ==:"],
)
def test_der_from_header_refuses_malformed_values(value: str) -> None:
    assert der_from_header(value) is None


def test_der_from_header_refuses_joined_values(pki: PKI) -> None:
    one = ":" + base64.b64encode(pki.alice.der).decode() + ":"
    assert der_from_header(f"{one}, {one}") is None


def test_check_certificate_binding(pki: PKI) -> None:
    bound = {"cnf": {"x5t#S256": pki.alice.thumbprint}}
    assert check_certificate_binding(bound, pki.alice.der) is True
    assert check_certificate_binding({"sub": "x"}, pki.alice.der) is False
    assert check_certificate_binding({"cnf": {"jkt": "abc"}}, None) is False
    with pytest.raises(CertificateBindingError):
        check_certificate_binding(bound, None)
    with pytest.raises(CertificateBindingError):
        check_certificate_binding(bound, pki.mallory.der)
    with pytest.raises(MalformedTokenError):
        check_certificate_binding({"cnf": {"x5t#S256": 42}}, pki.alice.der)


def test_certificate_binding_configuration() -> None:
    assert CertificateBinding().source == "tls"
    assert CertificateBinding(source="header", header="X-Client-Cert").header == "x-client-cert"
    assert CertificateBinding(source="header").environ_key == "HTTP_CLIENT_CERT"
    for bad in ({"source": "proxy"}, {"header": "bad header"}, {"header": "Authorization"}):
        with pytest.raises(ConfigurationError):
            CertificateBinding(**bad)


def test_a_header_named_without_source_header_is_refused(pki: PKI) -> None:
    # header= is read only with source="header": given alone, the guard read the TLS
    # connection instead (nothing, behind the proxy) and refused every bound token.
    with pytest.raises(ConfigurationError, match="source='header'"):
        CertificateBinding(header="X-SSL-Client-Cert")
    with pytest.raises(ConfigurationError, match="source='header'"):
        CertificateBinding(source="tls", header="x-amzn-mtls-clientcert")
    assert CertificateBinding(source="tls", header="Client-Cert").source == "tls"  # the default
    binding = CertificateBinding(source="header", header="X-SSL-Client-Cert")
    value = quote(pki.alice.pem).encode()
    assert scope_certificate({"headers": [(b"x-ssl-client-cert", value)]}, binding) == pki.alice.der


@pytest.mark.parametrize(
    "options",
    [
        {"header": None},  # AttributeError
        {"header": b"client-cert"},  # TypeError
        {"source": "header", "header": 42},
        {"required": "false"},  # from the environment: truthy, silently required
        {"required": None},
        {"required": 1},
    ],
)
def test_certificate_binding_refuses_values_of_another_type(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        CertificateBinding(**options)


def test_guard_refuses_a_binding_of_another_type(session_issuer: DevIssuer) -> None:
    with pytest.raises(ConfigurationError):
        session_issuer.guard(in_process=True, mtls="tls")


def test_certificate_sources(pki: PKI) -> None:
    tls = CertificateBinding()
    scope: dict[str, Any] = {
        "headers": [(b"client-cert", b":AAAA:")],
        "extensions": {"tls": {"client_cert_chain": [pki.alice.pem, pki.ca.pem]}},
    }
    assert scope_certificate(scope, tls) == pki.alice.der
    assert scope_certificate({"headers": [], "extensions": {"tls": {}}}, tls) is None
    assert scope_certificate({"headers": []}, tls) is None
    assert scope_certificate({"extensions": {"tls": {"client_cert_chain": "x"}}}, tls) is None
    header = CertificateBinding(source="header")
    value = (":" + base64.b64encode(pki.alice.der).decode() + ":").encode()
    assert scope_certificate({"headers": [(b"client-cert", value)]}, header) == pki.alice.der
    twice = {"headers": [(b"client-cert", value), (b"client-cert", value)]}
    assert scope_certificate(twice, header) is None
    assert environ_certificate({"SSL_CLIENT_CERT": pki.alice.pem}, tls) == pki.alice.der
    assert environ_certificate({"SSL_CLIENT_CERT": ""}, tls) is None
    assert environ_certificate({"HTTP_CLIENT_CERT": value.decode()}, header) == pki.alice.der
    assert environ_certificate({"SSL_CLIENT_CERT": pki.alice.pem}, header) is None


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_a_bytes_like_certificate_header_is_read_as_its_bytes(
    pki: PKI, kind: type[bytearray | memoryview]
) -> None:
    # ASGI says bytes, yet Starlette reads any bytes-like header value, and the middleware
    # reads an Authorization one as its bytes: a memoryview client-cert value answered 500
    # (no decode()) where the certificate was to be read.
    header = CertificateBinding(source="header")
    value = (":" + base64.b64encode(pki.alice.der).decode() + ":").encode()
    assert scope_certificate({"headers": [(b"client-cert", kind(value))]}, header) == pki.alice.der


# -- both middlewares, with the certificate handed over as the server would -------------


@pytest.fixture(params=["asgi", "wsgi"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _with_tls_certificate(app: Any, pem: str | None) -> Any:
    """An ASGI app whose requests arrive with ``pem`` in the ``tls`` extension."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and pem is not None:
            tls = {"server_cert": None, "client_cert_chain": [pem], "tls_version": 0x0304}
            scope = {**scope, "extensions": {**scope.get("extensions", {}), "tls": tls}}
        await app(scope, receive, send)

    return wrapped


def _with_environ_certificate(app: Any, pem: str | None) -> Any:
    def wrapped(environ: Any, start_response: Any) -> Any:
        if pem is not None:
            environ["SSL_CLIENT_CERT"] = pem
        return app(environ, start_response)

    return wrapped


def open_client(stack: str, guard: BearerGuard, pem: str | None = None) -> Iterator[Client]:
    if stack == "asgi":
        app = _with_tls_certificate(build_app(guard), pem)
        with TestClient(app, base_url="https://testserver") as client:
            yield client.request
    else:
        flask_app = build_flask_app(guard)
        transport = httpx.WSGITransport(app=_with_environ_certificate(flask_app, pem))
        with httpx.Client(transport=transport, base_url="https://testserver") as client:
            yield client.request


def clients(
    stack: str, issuer: DevIssuer, *pems: str | None, **binding: Any
) -> Iterator[list[Client]]:
    guard = issuer.guard(in_process=True, mtls=CertificateBinding(**binding))
    opened = [open_client(stack, guard, pem) for pem in pems]
    yield [next(each) for each in opened]
    for each in opened:
        next(each, None)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_bound_token_with_its_certificate(stack: str, session_issuer: DevIssuer, pki: PKI) -> None:
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    for alice, mallory, nobody in clients(
        stack, session_issuer, pki.alice.pem, pki.mallory.pem, None
    ):
        with structlog.testing.capture_logs() as logged:
            assert alice("GET", "/me", headers=bearer(token)).status_code == 200
            # The verification is cached now: the binding is still checked on every request.
            refused = mallory("GET", "/me", headers=bearer(token))
            missing = nobody("GET", "/me", headers=bearer(token))
            assert alice("GET", "/me", headers=bearer(token)).status_code == 200
        for response in (refused, missing):
            assert response.status_code == 401
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith("Bearer ")
            assert 'error="invalid_token"' in challenge
            assert (
                'error_description="The access token is not bound to the client certificate '
                'presented."' in challenge
            )
        accepted = [e["binding"] for e in logged if e["event"] == "token.accepted"]
        assert accepted == ["mtls", "mtls"]
        rejected = [e for e in logged if e["event"] == "token.rejected"]
        assert [(e["reason"], e["binding"]) for e in rejected] == [
            ("certificate_binding", "mtls"),
            ("certificate_binding", "mtls"),
        ]
        assert "without a client certificate" in rejected[1]["detail"]


def test_a_certificate_no_ca_vouches_for_still_carries_its_tokens(
    stack: str, session_issuer: DevIssuer, pki: PKI
) -> None:
    # RFC 8705 §6.2: the resource server need not validate the client certificate's chain,
    # and self-signed certificates are one of its methods (§2.2). A server accepting any
    # certificate says it could not verify it (the ASGI TLS extension's client_cert_error,
    # mod_ssl's SSL_CLIENT_VERIFY=GENERIC under optional_no_ca); the handshake proved the
    # client holds its key all the same, and the binding is to that certificate.
    guard = session_issuer.guard(in_process=True, mtls=CertificateBinding())
    own = issue("self-signed client")
    token = session_issuer.mint(cnf={"x5t#S256": own.thumbprint})
    others = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    unverified = "certificate verify failed: self-signed certificate"
    tls = {"client_cert_chain": [own.pem], "client_cert_error": unverified}
    assert scope_certificate({"extensions": {"tls": tls}}, CertificateBinding()) == own.der
    environ = {"SSL_CLIENT_CERT": own.pem, "SSL_CLIENT_VERIFY": "GENERIC"}
    assert environ_certificate(environ, CertificateBinding()) == own.der

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        extensions = {**(scope.get("extensions") or {}), "tls": {**tls, "server_cert": None}}
        await build_app(guard)({**scope, "extensions": extensions}, receive, send)

    flask_app = build_flask_app(guard)

    def wsgi_app(environ: Any, start_response: Any) -> Any:
        environ.update(SSL_CLIENT_CERT=own.pem, SSL_CLIENT_VERIFY="GENERIC")
        return flask_app(environ, start_response)

    if stack == "asgi":
        client = TestClient(asgi_app, base_url="https://testserver")
    else:
        client = httpx.Client(
            transport=httpx.WSGITransport(app=wsgi_app), base_url="https://testserver"
        )
    with client:
        assert client.get("/me", headers=bearer(token)).status_code == 200
        assert client.get("/me", headers=bearer(others)).status_code == 401  # another's


def test_reused_serves_no_bound_token_without_its_certificate(
    session_issuer: DevIssuer, pki: PKI
) -> None:
    # guard.reused() answers the middlewares' cache-hit fast path, which reads no
    # certificate: it handed out a certificate-bound token on its credentials alone.
    guard = session_issuer.guard(in_process=True, mtls=CertificateBinding())
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    for alice in open_client("asgi", guard, pki.alice.pem):
        assert alice("GET", "/me", headers=bearer(token)).status_code == 200
    assert guard.reused(b"Bearer " + token.encode()) is None


def test_unbound_tokens_stay_bearer_tokens(stack: str, session_issuer: DevIssuer, pki: PKI) -> None:
    token = session_issuer.mint()
    for with_cert, without in clients(stack, session_issuer, pki.alice.pem, None):
        with structlog.testing.capture_logs() as logged:
            assert with_cert("GET", "/me", headers=bearer(token)).status_code == 200
            assert without("GET", "/me", headers=bearer(token)).status_code == 200
            assert without("GET", "/health").status_code == 200
            assert without("GET", "/me").status_code == 401
        accepted = [e["binding"] for e in logged if e["event"] == "token.accepted"]
        assert accepted == ["bearer", "bearer"]


def test_required_refuses_unbound_tokens(stack: str, session_issuer: DevIssuer, pki: PKI) -> None:
    bound = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    for (alice,) in clients(stack, session_issuer, pki.alice.pem, required=True):
        assert alice("GET", "/me", headers=bearer(bound)).status_code == 200
        response = alice("GET", "/me", headers=bearer(session_issuer.mint()))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_malformed_binding_is_refused(stack: str, session_issuer: DevIssuer, pki: PKI) -> None:
    token = session_issuer.mint(cnf={"x5t#S256": ["not", "a", "string"]})
    for (alice,) in clients(stack, session_issuer, pki.alice.pem):
        assert alice("GET", "/me", headers=bearer(token)).status_code == 401


def test_header_source(stack: str, session_issuer: DevIssuer, pki: PKI) -> None:
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    alice = ":" + base64.b64encode(pki.alice.der).decode() + ":"
    for (call,) in clients(stack, session_issuer, None, source="header", header="X-Client-Cert"):
        for value in (alice, quote(pki.alice.pem)):
            headers = {**bearer(token), "X-Client-Cert": value}
            assert call("GET", "/me", headers=headers).status_code == 200
        other = ":" + base64.b64encode(pki.mallory.der).decode() + ":"
        assert (
            call("GET", "/me", headers={**bearer(token), "X-Client-Cert": other}).status_code == 401
        )
        assert call("GET", "/me", headers=bearer(token)).status_code == 401


def test_tls_source_ignores_headers(stack: str, session_issuer: DevIssuer, pki: PKI) -> None:
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    forged = ":" + base64.b64encode(pki.alice.der).decode() + ":"
    for (call,) in clients(stack, session_issuer, None):
        headers = {**bearer(token), "Client-Cert": forged, "SSL-Client-Cert": pki.alice.pem}
        assert call("GET", "/me", headers=headers).status_code == 401


def test_without_mtls_a_bound_token_is_refused_not_taken_as_a_bearer_token(
    stack: str, session_issuer: DevIssuer, pki: PKI
) -> None:
    # Accepted as a bearer token, a stolen certificate-bound token would work for anyone.
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    guard = session_issuer.guard(in_process=True)
    assert guard.mtls is None
    assert not guard.sender_constrained
    for call in open_client(stack, guard):
        with structlog.testing.capture_logs() as events:
            response = call("GET", "/me", headers=bearer(token))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert [(e["reason"], e["detail"]) for e in events] == [
            ("invalid_claim", "token bound by cnf x5t#S256, which this API does not check")
        ]
    # A gateway that checks the binding in front of the API: said so explicitly.
    upstream = session_issuer.guard(in_process=True, bindings_checked_upstream=True)
    for call in open_client(stack, upstream):
        assert call("GET", "/me", headers=bearer(token)).status_code == 200


def test_scope_denied_names_the_certificate_binding(
    stack: str, session_issuer: DevIssuer, pki: PKI
) -> None:
    # The scope check runs after authentication: its scope.denied event said "bearer" for a
    # token the middleware had just accepted, and audited, as "mtls" (RFC 8705 §3).
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    for (alice,) in clients(stack, session_issuer, pki.alice.pem):
        with structlog.testing.capture_logs() as logged:
            response = alice("GET", "/items", headers=bearer(token))
        assert response.status_code == 403
        assert response.headers["www-authenticate"].startswith("Bearer ")
        assert [(e["event"], e["binding"]) for e in logged] == [
            ("token.accepted", "mtls"),
            ("scope.denied", "mtls"),
        ]


def test_a_refusal_after_the_certificate_held_names_the_binding(
    stack: str, session_issuer: DevIssuer, pki: PKI
) -> None:
    from tests.test_audit_reasons import FailingStore
    from tests.test_dpop import Holder

    # The certificate was checked and held, then the token was revoked or its store was
    # down: the audit said binding "bearer" for a token its token.accepted calls "mtls", as
    # docs/audit-events.md promises for a certificate-bound token checked against the client
    # certificate (a DPoP-bound one refused for the same reasons says "dpop").
    store = MemoryRevocationStore()
    revoked = session_issuer.mint_revoked(store, cnf={"x5t#S256": pki.alice.thumbprint})
    bound = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    for revocation, token, event, status in (
        (store, revoked, "token.rejected", 401),
        (FailingStore(), bound, "auth.unavailable", 503),
    ):
        guard = session_issuer.guard(
            in_process=True, mtls=CertificateBinding(), revocation=revocation
        )
        for alice in open_client(stack, guard, pki.alice.pem):
            with structlog.testing.capture_logs() as logged:
                assert alice("GET", "/me", headers=bearer(token)).status_code == status
            assert [(e["event"], e["binding"]) for e in logged] == [(event, "mtls")]
    # Bound both ways and sent with the DPoP scheme: accepted as "dpop", refused as "dpop".
    holder = Holder()
    both = session_issuer.mint_revoked(
        store, cnf={"x5t#S256": pki.alice.thumbprint, "jkt": holder.jkt}
    )
    guard = session_issuer.guard(
        in_process=True, dpop=DPoPPolicy(), mtls=CertificateBinding(), revocation=store
    )
    for alice in open_client(stack, guard, pki.alice.pem):
        proof = holder.proof(both, url="https://testserver/me")
        with structlog.testing.capture_logs() as logged:
            response = alice("GET", "/me", headers={"Authorization": f"DPoP {both}", "DPoP": proof})
        assert response.status_code == 401
        assert [(e["event"], e["binding"]) for e in logged] == [("token.rejected", "dpop")]


def test_with_dpop_too(stack: str, session_issuer: DevIssuer, pki: PKI) -> None:
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(), mtls=CertificateBinding())
    for alice, nobody in zip(
        open_client(stack, guard, pki.alice.pem), open_client(stack, guard, None), strict=True
    ):
        with structlog.testing.capture_logs() as logged:
            assert alice("GET", "/me", headers=bearer(token)).status_code == 200
            response = nobody("GET", "/me", headers=bearer(token))
        assert response.status_code == 401
        challenge = response.headers["www-authenticate"]
        bearer_part, _, dpop_part = challenge.partition(", DPoP ")
        assert bearer_part.startswith("Bearer ")
        assert 'error="invalid_token"' in bearer_part
        assert "error=" not in dpop_part
        assert [e["binding"] for e in logged if e["event"] == "token.accepted"] == ["mtls"]
        assert [e["binding"] for e in logged if e["event"] == "token.rejected"] == ["mtls"]


@pytest.mark.anyio
async def test_guard_api_takes_the_der(session_issuer: DevIssuer, pki: PKI) -> None:
    guard = session_issuer.guard(in_process=True, mtls=CertificateBinding())
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    assert (await guard.authenticate(token, certificate=pki.alice.der)).subject == "user-1"
    with pytest.raises(CertificateBindingError):
        await guard.authenticate(token)
    assert guard.authenticate_sync(token, certificate=pki.alice.der).subject == "user-1"
    with pytest.raises(CertificateBindingError):
        guard.authenticate_sync(token, certificate=pki.mallory.der)


# -- real TLS-terminating servers on 127.0.0.1 ------------------------------------------


@dataclass
class Files:
    ca: Path
    server: tuple[Path, Path]
    alice: tuple[Path, Path]
    mallory: tuple[Path, Path]


@pytest.fixture(scope="module")
def files(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("pki")
    ca, _ = pki.ca.write(directory, "ca")
    return Files(
        ca,
        pki.server.write(directory, "server"),
        pki.alice.write(directory, "alice"),
        pki.mallory.write(directory, "mallory"),
    )


def tls_client(files: Files, who: tuple[Path, Path]) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(who[0]), str(who[1]))
    return httpx.Client(verify=context, timeout=10)


def _uvicorn_protocol() -> type:
    """uvicorn's h11 protocol, filling the ASGI ``tls`` extension from the connection.

    uvicorn 0.54 verifies client certificates (``ssl_cert_reqs``) but does not yet put the
    ASGI TLS extension in the scope; servers that do fill it the same way: the peer's
    certificate chain as PEM strings, leaf first.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TLSExtensionProtocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
            chain = [] if der is None else [ssl.DER_cert_to_PEM_cert(der)]
            app = self.app

            async def with_tls(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] in ("http", "websocket"):
                    extensions = dict(scope.get("extensions") or {})
                    extensions["tls"] = {"client_cert_chain": chain, "server_cert": None}
                    scope["extensions"] = extensions
                await app(scope, receive, send)

            self.app = with_tls

    return TLSExtensionProtocol


def test_uvicorn_https_with_client_certificates(
    session_issuer: DevIssuer, pki: PKI, files: Files
) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    guard = session_issuer.guard(in_process=True, mtls=CertificateBinding())
    config = uvicorn.Config(
        build_app(guard),
        http=_uvicorn_protocol(),
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(files.server[0]),
        ssl_keyfile=str(files.server[1]),
        ssl_ca_certs=str(files.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    )
    server = uvicorn.Server(config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        try:
            _exercise(f"https://127.0.0.1:{port}/me", session_issuer, pki, files)
        finally:
            server.should_exit = True
            thread.join(10)


def test_werkzeug_https_with_client_certificates(
    session_issuer: DevIssuer, pki: PKI, files: Files
) -> None:
    from werkzeug.serving import make_server

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.server[0]), str(files.server[1]))
    context.load_verify_locations(cafile=str(files.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    guard = session_issuer.guard(in_process=True, mtls=CertificateBinding())
    server = make_server("127.0.0.1", 0, build_flask_app(guard), ssl_context=context)
    with serving(server) as port:
        _exercise(f"https://127.0.0.1:{port}/me", session_issuer, pki, files)


def _exercise(url: str, issuer: DevIssuer, pki: PKI, files: Files) -> None:
    token = issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    with tls_client(files, files.alice) as alice, tls_client(files, files.mallory) as mallory:
        response = alice.get(url, headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json()["sub"] == "user-1"
        stolen = mallory.get(url, headers=bearer(token))
        assert stolen.status_code == 401
        assert 'error="invalid_token"' in stolen.headers["www-authenticate"]
        assert mallory.get(url, headers=bearer(issuer.mint())).status_code == 200


def test_a_proof_refused_for_its_certificate_is_not_remembered(
    session_issuer: DevIssuer, pki: PKI
) -> None:
    from tests.test_dpop import Holder

    # RFC 9449 §11.1: the proof of a request refused for its certificate (RFC 8705 §3) is not
    # recorded: a token bound both ways, used without its certificate, filled the replay store.
    holder = Holder()
    replay = MemoryDPoPReplayStore(max_entries=1)
    policy = DPoPPolicy(replay=replay)
    guard = session_issuer.guard(in_process=True, dpop=policy, mtls=CertificateBinding())
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint, "jkt": holder.jkt})
    url = "https://testserver/me"
    for nobody in open_client("asgi", guard, None):
        headers = {"Authorization": f"DPoP {token}", "DPoP": holder.proof(token, url=url)}
        assert nobody("GET", "/me", headers=headers).status_code == 401
        assert len(replay) == 0


def test_dpop_scheme_with_a_certificate_bound_token(
    stack: str, session_issuer: DevIssuer, pki: PKI
) -> None:
    from tests.test_dpop import Holder

    # Bound both ways, sent with the DPoP scheme and a good proof: the certificate is still
    # needed, and its refusal goes on the DPoP challenge, the scheme the client used. The
    # audit's binding names the binding that refused it: mtls (docs/audit-events.md), not
    # the scheme, as for the same refusal of a token sent with the Bearer scheme.
    holder = Holder()
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy(), mtls=CertificateBinding())
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint, "jkt": holder.jkt})
    url = "https://testserver/me"
    for pem, status in ((pki.alice.pem, 200), (None, 401), (pki.mallory.pem, 401)):
        for call in open_client(stack, guard, pem):
            headers = {"Authorization": f"DPoP {token}", "DPoP": holder.proof(token, url=url)}
            with structlog.testing.capture_logs() as logged:
                response = call("GET", "/me", headers=headers)
            assert response.status_code == status, response.text
            if status == 401:
                challenge = response.headers["www-authenticate"]
                bearer_part, _, dpop_part = challenge.partition(", DPoP ")
                assert 'error="invalid_token"' in dpop_part
                assert "error=" not in bearer_part
                assert [(e["event"], e["reason"], e["binding"]) for e in logged] == [
                    ("token.rejected", "certificate_binding", "mtls")
                ]
            else:
                assert [(e["event"], e["binding"]) for e in logged] == [("token.accepted", "dpop")]


def _wsgi_server(kind: str, app: Any) -> Iterator[int]:
    """The standard library's wsgiref or werkzeug's server, plain HTTP on 127.0.0.1."""
    if kind == "wsgiref":
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        server: Any = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    else:
        from werkzeug.serving import make_server as werkzeug_server

        server = werkzeug_server("127.0.0.1", 0, app)
    with serving(server) as port:
        yield port


@pytest.mark.parametrize(("kind", "reaches"), [("wsgiref", True), ("werkzeug", False)])
def test_an_underscore_header_name_under_wsgi(
    session_issuer: DevIssuer, pki: PKI, kind: str, reaches: bool
) -> None:
    # docs/reusing-tokens.md: CGI naming maps Client-Cert and Client_Cert to one environ key,
    # HTTP_CLIENT_CERT. wsgiref takes a client's Client_Cert there (the proxy must drop it);
    # werkzeug drops every header name with "_", so a proxy's X_Client_Cert never arrives.
    token = session_issuer.mint(cnf={"x5t#S256": pki.alice.thumbprint})
    alice = ":" + base64.b64encode(pki.alice.der).decode() + ":"
    for header in ("client-cert", "x_client_cert"):
        binding = CertificateBinding(source="header", header=header)
        guard = session_issuer.guard(in_process=True, mtls=binding)
        sent = "Client_Cert" if header == "client-cert" else "X_Client_Cert"
        for port in _wsgi_server(kind, build_flask_app(guard)):
            response = httpx.get(
                f"http://127.0.0.1:{port}/me", headers={**bearer(token), sent: alice}
            )
            assert response.status_code == (200 if reaches else 401), (header, response.text)
