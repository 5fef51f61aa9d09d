"""Several trusted issuers (``TrustedIssuers``): routing by ``iss``, resolvers, both stacks."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.testclient import TestClient

from bearerguard import BearerGuard
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.dpop import DPoPPolicy
from bearerguard.errors import (
    ConfigurationError,
    InvalidIssuerError,
    InvalidTokenError,
    KeySetUnavailableError,
)
from bearerguard.issuers import TrustedIssuers
from bearerguard.jwks import FetchPolicy
from bearerguard.metadata import ResourceMetadata
from bearerguard.mtls import CertificateBinding
from bearerguard.readiness import readiness_wsgi
from bearerguard.testing import DevIssuer
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.apps import build_app, build_flask_app
from tests.test_dpop import Holder
from tests.test_introspection import IntrospectionServer
from tests.test_mtls import issue
from tests.test_mtls import open_client as open_tls_client

Client = Callable[..., httpx.Response]


@pytest.fixture(scope="module")
def alpha() -> Iterator[DevIssuer]:
    with DevIssuer(audience="api://alpha", path="/tenants/alpha") as issuer:
        yield issuer


@pytest.fixture(scope="module")
def beta() -> Iterator[DevIssuer]:
    with DevIssuer(audience="api://beta", path="/tenants/beta", algorithms=["ES256"]) as issuer:
        yield issuer


@pytest.fixture(scope="module")
def stranger() -> Iterator[DevIssuer]:
    with DevIssuer(path="/tenants/stranger") as issuer:
        yield issuer


@pytest.fixture(params=["asgi", "wsgi"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_client(stack: str, guard: TrustedIssuers) -> Iterator[Client]:
    if stack == "asgi":
        with TestClient(build_app(guard), base_url="http://testserver") as client:  # type: ignore[arg-type]
            yield client.request
    else:
        transport = httpx.WSGITransport(app=build_flask_app(guard))  # type: ignore[arg-type]
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            yield client.request


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_construction_rules(alpha: DevIssuer, beta: DevIssuer) -> None:
    with pytest.raises(ConfigurationError):
        TrustedIssuers([])
    with pytest.raises(ConfigurationError):
        TrustedIssuers([alpha.guard(in_process=True), alpha.guard(in_process=True)])
    with pytest.raises(ConfigurationError):
        TrustedIssuers(["https://issuer.example"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match=r"a list of guards"):
        TrustedIssuers(alpha.guard(in_process=True))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TrustedIssuers(7)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TrustedIssuers(
            [alpha.guard(in_process=True), beta.guard(in_process=True, dpop=DPoPPolicy())]
        )
    with pytest.raises(ConfigurationError):
        TrustedIssuers([alpha.guard(in_process=True)], resolver="nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TrustedIssuers([alpha.guard(in_process=True)], max_resolved=-1)
    both = TrustedIssuers([alpha.guard(in_process=True), beta.guard(in_process=True)])
    assert both.issuers == [alpha.url, beta.url]
    assert alpha.url in repr(both)
    assert both.realm == "api://alpha"


def test_each_issuer_with_its_own_keys_and_audience(
    stack: str, alpha: DevIssuer, beta: DevIssuer, stranger: DevIssuer
) -> None:
    guards = TrustedIssuers([alpha.guard(in_process=True), beta.guard(in_process=True)])
    for call in open_client(stack, guards):
        with structlog.testing.capture_logs() as logged:
            assert call("GET", "/me", headers=bearer(alpha.mint())).status_code == 200
            assert call("GET", "/me", headers=bearer(beta.mint(sub="b"))).json()["sub"] == "b"
            # A token for alpha's audience, from beta: beta's guard refuses the audience.
            wrong_audience = beta.mint(aud="api://alpha")
            assert call("GET", "/me", headers=bearer(wrong_audience)).status_code == 401
            # iss says alpha, beta signed it: alpha's guard knows no such key.
            forged = beta.sign(beta.claims(iss=alpha.url, aud="api://alpha"))
            assert call("GET", "/me", headers=bearer(forged)).status_code == 401
            unknown = call("GET", "/me", headers=bearer(stranger.mint()))
        assert unknown.status_code == 401
        assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
        reasons = [e["reason"] for e in logged if e["event"] == "token.rejected"]
        assert reasons == ["invalid_audience", "unknown_key", "invalid_issuer"]
        rejected = [e for e in logged if e["event"] == "token.rejected"][-1]
        assert rejected["token_fp"]
        assert rejected["kid"]
        assert call("GET", "/me").status_code == 401
        assert call("GET", "/me", headers=bearer("not-a-jwt")).status_code == 401
    assert stranger.fetch_count() == 0  # never a request to an issuer named by a token


def test_keys_are_fetched_only_from_configured_issuers(
    alpha: DevIssuer, beta: DevIssuer, stranger: DevIssuer
) -> None:
    guards = TrustedIssuers([alpha.guard(), beta.guard(discover=False)])
    guards.warm_up_sync()
    before = stranger.fetch_count()
    with pytest.raises(InvalidIssuerError):
        guards.authenticate_sync(stranger.mint())
    assert stranger.fetch_count() == before == 0
    assert guards.authenticate_sync(beta.mint()).issuer == beta.url


@pytest.mark.anyio
async def test_async_warm_up_and_failure(alpha: DevIssuer, beta: DevIssuer) -> None:
    guards = TrustedIssuers([alpha.guard(), beta.guard()])
    await guards.warm_up()
    assert (await guards.authenticate(alpha.mint())).issuer == alpha.url
    down = BearerGuard(
        issuer="http://127.0.0.1:9/down", audience="x", jwks_uri="http://127.0.0.1:9/jwks"
    )
    broken = TrustedIssuers([alpha.guard(), down])
    # The failure names the issuer whose keys could not be had, among several.
    with pytest.raises(KeySetUnavailableError, match=r"http://127\.0\.0\.1:9/down: "):
        await broken.warm_up()
    with pytest.raises(KeySetUnavailableError, match=r"http://127\.0\.0\.1:9/down: "):
        broken.warm_up_sync()


class Tenants:
    """A tenant-pattern resolver that counts its calls."""

    def __init__(self, *issuers: DevIssuer, **options: Any) -> None:
        self.by_url = {issuer.url: issuer for issuer in issuers}
        self.calls: list[str] = []
        self.options = options

    def __call__(self, iss: str) -> BearerGuard | None:
        self.calls.append(iss)
        if not re.fullmatch(r"http://127\.0\.0\.1:\d+/tenants/[a-z]+", iss):
            return None
        issuer = self.by_url.get(iss)
        return None if issuer is None else issuer.guard(in_process=True, **self.options)


def test_resolver_admits_tenants_and_caches_them(
    stack: str, alpha: DevIssuer, beta: DevIssuer, stranger: DevIssuer
) -> None:
    tenants = Tenants(beta)
    guards = TrustedIssuers([alpha.guard(in_process=True)], resolver=tenants)
    for call in open_client(stack, guards):
        for _ in range(2):
            assert call("GET", "/me", headers=bearer(beta.mint())).status_code == 200
        assert tenants.calls == [beta.url]
        assert guards.issuers == [alpha.url, beta.url]
        assert call("GET", "/me", headers=bearer(stranger.mint())).status_code == 401
        assert call("GET", "/me", headers=bearer(alpha.mint())).status_code == 200
        assert tenants.calls == [beta.url, stranger.url]
        long_iss = alpha.mint(iss="https://x.example/" + "a" * 600)
        assert call("GET", "/me", headers=bearer(long_iss)).status_code == 401
        assert len(tenants.calls) == 2  # too long to be asked about


def test_resolved_guards_are_bounded(alpha: DevIssuer, beta: DevIssuer) -> None:
    tenants = Tenants(alpha, beta)
    guards = TrustedIssuers(
        [BearerGuard(issuer="https://home.example", audience="x", keys=alpha.jwks())],
        resolver=tenants,
        max_resolved=1,
    )
    for issuer in (alpha, beta, alpha):
        guards.authenticate_sync(issuer.mint())
    assert tenants.calls == [alpha.url, beta.url, alpha.url]
    assert guards.issuers == ["https://home.example", alpha.url]


@pytest.mark.parametrize(
    "resolver",
    [
        lambda issuer, iss: 1 / 0,
        lambda issuer, iss: "a guard?",
        lambda issuer, iss: BearerGuard(
            issuer="https://other.example", audience="api://beta", keys=issuer.jwks()
        ),
        lambda issuer, iss: issuer.guard(in_process=True, mtls=CertificateBinding()),
    ],
    ids=["raises", "not-a-guard", "another-issuer", "other-request-settings"],
)
def test_a_bad_resolved_guard_is_not_used(
    alpha: DevIssuer,
    beta: DevIssuer,
    resolver: Callable[[DevIssuer, str], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    guards = TrustedIssuers(
        [alpha.guard(in_process=True)], resolver=lambda iss: resolver(beta, iss)
    )
    with caplog.at_level(logging.ERROR, "bearerguard"), pytest.raises(InvalidIssuerError):
        guards.authenticate_sync(beta.mint())
    assert caplog.records
    assert guards.issuers == [alpha.url]


def test_a_resolver_cannot_admit_an_issuer_with_a_query(
    beta: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # RFC 8414 §2: no issuer identifier has a query; a guard for one cannot be built, so a
    # resolver building it refuses the token (logged), as a configured guard is refused.
    def resolver(iss: str) -> BearerGuard:
        return BearerGuard(issuer=iss, audience="api://beta", keys=beta.jwks())

    guards = TrustedIssuers([beta.guard(in_process=True)], resolver=resolver)
    token = beta.mint(iss=beta.url + "?tenant=a")
    with caplog.at_level(logging.ERROR, "bearerguard"), pytest.raises(InvalidIssuerError):
        guards.authenticate_sync(token)
    assert "without a query or fragment" in caplog.text
    with pytest.raises(ConfigurationError, match="without a query"):
        TrustedIssuers([resolver(beta.url + "#")])


def test_only_the_primary_guard_may_introspect(
    alpha: DevIssuer, beta: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # An opaque token names no issuer: it goes to the primary guard only, never to another
    # issuer's authorization server; a later guard's introspector would never be asked.
    with IntrospectionServer() as server:
        server.activate("opaque-1", sub="kim", aud=alpha.audience)
        with pytest.raises(ConfigurationError, match="only the primary"):
            TrustedIssuers(
                [
                    alpha.guard(in_process=True),
                    beta.guard(in_process=True, introspection=server.introspector()),
                ]
            )
        first = TrustedIssuers(
            [
                alpha.guard(in_process=True, introspection=server.introspector()),
                beta.guard(in_process=True),
            ]
        )
        token = first.authenticate_sync("opaque-1")
        assert (token.subject, token.issuer) == ("kim", alpha.url)
        assert first.authenticate_sync(beta.mint()).issuer == beta.url
        resolving = TrustedIssuers(
            [alpha.guard(in_process=True)],
            resolver=lambda iss: beta.guard(in_process=True, introspection=server.introspector()),
        )
        # A resolver that builds every guard alike, introspection included (a factory
        # shared with the primary): its JWTs pass, as before; its introspector is never
        # asked, and a warning says so.
        with caplog.at_level(logging.WARNING, "bearerguard"):
            assert resolving.authenticate_sync(beta.mint()).issuer == beta.url
        assert "has introspection, never used" in caplog.text
        with pytest.raises(InvalidTokenError):
            resolving.authenticate_sync("opaque-1")  # to the primary, which cannot introspect
        assert server.calls == 1


@pytest.mark.parametrize(("remembered", "warnings"), [(1024, 2), (1, 6)])
def test_an_unused_introspector_is_warned_about_once_per_issuer(
    beta: DevIssuer,
    stranger: DevIssuer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    remembered: int,
    warnings: int,
) -> None:
    """The warning came each time the issuer was resolved: with more tenants than
    ``max_resolved``, on every eviction and resolving again. It now comes once per issuer,
    among the most recent issuers warned about (a bounded memory)."""
    monkeypatch.setattr("bearerguard.issuers._MAX_WARNED", remembered)
    with IntrospectionServer() as server:
        tenants = Tenants(beta, stranger, introspection=server.introspector())
        home = BearerGuard(issuer="https://home.example", audience="x", keys=beta.jwks())
        guards = TrustedIssuers([home], resolver=tenants, max_resolved=1)
        with caplog.at_level(logging.WARNING, "bearerguard"):
            for _ in range(3):
                for issuer in (beta, stranger):
                    assert guards.authenticate_sync(issuer.mint()).issuer == issuer.url
        assert len(tenants.calls) == 6  # each evicted by the other, resolved again
        warned = [r.getMessage() for r in caplog.records if "never used" in r.getMessage()]
        assert len(warned) == warnings
        assert all(any(issuer.url in line for line in warned) for issuer in (beta, stranger))
        assert server.calls == 0


def test_wsgi_needs_synchronous_sides(alpha: DevIssuer, beta: DevIssuer) -> None:
    class AsyncOnly:
        async def is_revoked(self, token: object) -> bool:
            return False

    guards = TrustedIssuers(
        [alpha.guard(in_process=True), beta.guard(in_process=True, revocation=AsyncOnly())]
    )
    with pytest.raises(ConfigurationError):
        BearerGuardWSGIMiddleware(build_flask_app(alpha.guard(in_process=True)), guard=guards)
    # Resolved under WSGI: a guard without the synchronous side is not used.
    tenants = TrustedIssuers(
        [alpha.guard(in_process=True)],
        resolver=lambda iss: beta.guard(in_process=True, revocation=AsyncOnly()),
    )
    BearerGuardWSGIMiddleware(build_flask_app(alpha.guard(in_process=True)), guard=tenants)
    with pytest.raises(InvalidIssuerError):
        tenants.authenticate_sync(beta.mint())


def test_middlewares_refuse_other_guards() -> None:
    with pytest.raises(ConfigurationError):
        BearerGuardWSGIMiddleware(lambda environ, start: [], guard=object())  # type: ignore[arg-type]


def test_certificate_bound_tokens_from_several_issuers(
    stack: str, alpha: DevIssuer, beta: DevIssuer
) -> None:
    ca = issue("CA")
    alice, mallory = issue("alice", ca), issue("mallory", ca)
    guards = TrustedIssuers(
        [
            alpha.guard(in_process=True, mtls=CertificateBinding()),
            beta.guard(in_process=True, mtls=CertificateBinding()),
        ]
    )
    token = beta.mint(cnf={"x5t#S256": alice.thumbprint})
    for call in open_tls_client(stack, guards, alice.pem):  # type: ignore[arg-type]
        with structlog.testing.capture_logs() as logged:
            assert call("GET", "/me", headers=bearer(token)).status_code == 200
        assert [e["binding"] for e in logged if e["event"] == "token.accepted"] == ["mtls"]
    for call in open_tls_client(stack, guards, mallory.pem):  # type: ignore[arg-type]
        assert call("GET", "/me", headers=bearer(token)).status_code == 401
        assert call("GET", "/me", headers=bearer(alpha.mint())).status_code == 200


def test_dpop_scheme_on_an_untrusted_issuer(alpha: DevIssuer, stranger: DevIssuer) -> None:
    policy = DPoPPolicy()
    guards = TrustedIssuers([alpha.guard(in_process=True, dpop=policy)])
    for call in open_client("asgi", guards):
        response = call("GET", "/me", headers={"Authorization": f"DPoP {stranger.mint()}"})
        assert response.status_code == 401
        assert (
            ', DPoP realm="api://alpha", error="invalid_token"'
            in response.headers["www-authenticate"]
        )


def test_the_resource_metadata_names_every_trusted_issuer(
    stack: str, alpha: DevIssuer, beta: DevIssuer
) -> None:
    resource = "https://api.example/orders"
    guards = [
        issuer.guard(in_process=True, audience=issuer.audience, resource=resource)
        for issuer in (alpha, beta)
    ]
    trusted = TrustedIssuers(guards)
    for client in open_client(stack, trusted):
        document = client("GET", "/.well-known/oauth-protected-resource/orders").json()
        assert document["authorization_servers"] == [alpha.url, beta.url]
        assert document["resource"] == resource
        assert client("GET", "/me", headers=bearer(beta.mint())).status_code == 200
    # Servers given explicitly are kept as they are.
    named = ResourceMetadata(authorization_servers=["https://login.example"])
    explicit = TrustedIssuers(
        [
            issuer.guard(
                in_process=True,
                audience=issuer.audience,
                resource=resource,
                resource_metadata=named,
            )
            for issuer in (alpha, beta)
        ]
    )
    assert explicit.protected_resource is not None
    assert explicit.protected_resource.document["authorization_servers"] == [
        "https://login.example"
    ]


def test_an_oversized_token_is_refused_before_its_issuer_is_read(
    alpha: DevIssuer, beta: DevIssuer
) -> None:
    """The primary's ``max_token_bytes`` refuses a token before any decoding, as
    ``BearerGuard`` does: ``TrustedIssuers`` decoded it to read its ``iss``, asked the
    resolver, and accepted it when its issuer's guard allowed more."""
    tenants = Tenants(beta)
    guards = TrustedIssuers([alpha.guard(in_process=True, max_token_bytes=2048)], resolver=tenants)
    oversized = beta.mint(padding="x" * 4096)
    for authenticate in (guards.authenticate_sync, guards.primary.authenticate_sync):
        with pytest.raises(InvalidTokenError) as refused:
            authenticate(oversized)
        assert refused.value.reason == "malformed_token"
    assert tenants.calls == []
    assert guards.authenticate_sync(beta.mint()).issuer == beta.url


def test_a_guards_verdict_stands_behind_a_trusted_issuers_holding_it(
    alpha: DevIssuer, beta: DevIssuer
) -> None:
    """A middleware with one guard outside, one with a ``TrustedIssuers`` holding that guard
    inside (or another ``TrustedIssuers`` sharing it): the inner one would hand the token to
    the guard that let it in. It verified the token again instead: a second audit event, and
    the DPoP proof refused as replayed (RFC 9449 §11.1), a 401 for every DPoP request."""
    holder = Holder()
    policy = DPoPPolicy()
    first = alpha.guard(in_process=True, dpop=policy)
    second = beta.guard(in_process=True, dpop=policy)
    token = alpha.mint(sub="ada", cnf={"jkt": holder.jkt})
    for outer in (first, TrustedIssuers([second, first])):
        inner = build_app(TrustedIssuers([first, second]))
        app = Starlette(
            routes=[Mount("/api", app=inner)],
            middleware=[Middleware(BearerGuardMiddleware, guard=outer)],
        )
        proof = holder.proof(token, url="http://testserver/api/me")
        with TestClient(app) as client, structlog.testing.capture_logs() as logged:
            response = client.get(
                "/api/me", headers={"Authorization": f"DPoP {token}", "DPoP": proof}
            )
        assert response.status_code == 200, (outer, response.text)
        assert response.json()["sub"] == "ada"
        assert [e["event"] for e in logged] == ["token.accepted"]
    # The guard each accepted token is handed to, as guard_for reads it: one over the
    # primary's max_token_bytes goes to the primary, which refuses it.
    big = alpha.guard(in_process=True, max_token_bytes=16384)
    small = TrustedIssuers([beta.guard(in_process=True, max_token_bytes=2048), big])
    assert small.verifier_of(big.authenticate_sync(alpha.mint())) is big
    assert small.verifier_of(big.authenticate_sync(alpha.mint(pad="x" * 4096))) is small.primary
    # Under WSGI as well: one decision, one event. An opaque token goes to the primary
    # only: a TrustedIssuers that would give it to another guard decides for itself.
    with IntrospectionServer() as server:
        server.activate("opaque-1", sub="kim", aud=alpha.audience)
        guard = alpha.guard(in_process=True, introspection=server.introspector())
        home = BearerGuard(issuer="https://home.example", audience="x", keys=beta.jwks())
        trusting = TrustedIssuers([guard])
        resolving = TrustedIssuers([home], resolver=lambda iss: guard)
        resolving.authenticate_sync(alpha.mint())  # resolved: its guard_of is the guard
        for inner, events in (
            (trusting, ["token.accepted"] * 2),
            (resolving, ["token.accepted", "token.accepted", "token.rejected"]),
        ):
            wrapped = BearerGuardWSGIMiddleware(build_flask_app(inner), guard=guard)
            transport = httpx.WSGITransport(app=wrapped)
            with (
                httpx.Client(transport=transport, base_url="http://t") as client,
                structlog.testing.capture_logs() as logged,
            ):
                jwt = client.get("/me", headers=bearer(alpha.mint(sub="ada")))
                opaque = client.get("/me", headers=bearer("opaque-1"))
            assert (jwt.status_code, jwt.json()["sub"]) == (200, "ada")
            assert opaque.status_code == (200 if inner is trusting else 401)
            assert [e["event"] for e in logged] == events


@pytest.mark.parametrize("max_resolved", [0, 100])
def test_a_resolved_guards_verdict_stands_for_its_fastapi_dependency(
    alpha: DevIssuer, beta: DevIssuer, max_resolved: int
) -> None:
    """The middleware's ``TrustedIssuers`` resolves a tenant to the guard a ``BearerAuth``
    holds. With ``max_resolved=0`` no resolved guard was kept, so the verdict was not known
    for that guard's: the dependency verified the token again (two audit events, and a DPoP
    proof refused as replayed, RFC 9449 §11.1: a 401 for every DPoP request)."""
    fastapi = pytest.importorskip("fastapi")
    from bearerguard import get_access_token
    from bearerguard.fastapi import BearerAuth

    policy = DPoPPolicy()
    tenant = beta.guard(in_process=True, dpop=policy)
    calls: list[str] = []

    def tenants(iss: str) -> BearerGuard | None:
        calls.append(iss)
        return tenant if iss == beta.url else None

    home = alpha.guard(in_process=True, dpop=policy)
    guards = TrustedIssuers([home], resolver=tenants, max_resolved=max_resolved)
    bearer_auth = BearerAuth(tenant)
    app = bearer_auth.install(
        fastapi.FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guards)])
    )

    @app.get("/me", dependencies=[bearer_auth.requires("items:read")])
    async def me() -> dict[str, Any]:
        token = get_access_token()
        return {"sub": None if token is None else token.subject}

    holder = Holder()
    with TestClient(app) as client:
        for sub in ("ada", "kim"):
            token = beta.mint(sub=sub, scopes=["items:read"], cnf={"jkt": holder.jkt})
            proof = holder.proof(token, url="http://testserver/me")
            with structlog.testing.capture_logs() as logged:
                response = client.get(
                    "/me", headers={"Authorization": f"DPoP {token}", "DPoP": proof}
                )
            assert response.status_code == 200, response.text
            assert response.json() == {"sub": sub}
            assert [e["event"] for e in logged] == ["token.accepted"]
    assert set(calls) == {beta.url}


class _Rendezvous(BaseHTTPRequestHandler):
    """A key set answered once every issuer's fetch has arrived (a barrier), else 503."""

    def do_GET(self) -> None:
        server: Any = self.server
        try:
            server.barrier.wait()
            status, body = 200, json.dumps(server.jwks).encode()
        except threading.BrokenBarrierError:
            status, body = 503, b"{}"
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the fetch gave up meanwhile

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def rendezvous(*issuers: DevIssuer) -> Iterator[Callable[[], list[BearerGuard]]]:
    """Key set servers for ``issuers`` that answer only when all are asked at once (each
    waits for the others at most twice the fetch timeout), and a maker of fresh guards."""
    barrier = threading.Barrier(len(issuers), timeout=2.0)
    servers = []
    for issuer in issuers:
        server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Rendezvous)
        server.daemon_threads = True
        server.barrier, server.jwks = barrier, issuer.jwks()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)

    def guards() -> list[BearerGuard]:
        barrier.reset()
        return [
            BearerGuard(
                issuer=f"http://127.0.0.1:{server.server_address[1]}",
                audience="x",
                jwks_uri=f"http://127.0.0.1:{server.server_address[1]}/jwks",
                fetch=FetchPolicy(timeout=1.0),
            )
            for server in servers
        ]

    try:
        yield guards
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_synchronous_warm_up_and_readiness_fetch_every_issuer_at_once(
    alpha: DevIssuer, beta: DevIssuer
) -> None:
    """As their asynchronous sides do: one fetch after the other, issuers down held a WSGI
    start-up, or a readiness probe (documented as bounded by the fetch timeout), for the sum
    of their fetch timeouts."""
    with rendezvous(alpha, beta) as guards:
        trusted = TrustedIssuers(guards())
        trusted.warm_up_sync()
        assert all(guard.keys_ready() for guard in trusted.configured)
        probe = readiness_wsgi(TrustedIssuers(guards()))
        with httpx.Client(transport=httpx.WSGITransport(app=probe), base_url="http://t") as client:
            report = client.get("/").json()
        assert [each["keys"]["ready"] for each in report["issuers"].values()] == [True, True]


def test_a_failing_resolver_cannot_forge_a_log_line(
    alpha: DevIssuer, beta: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """The resolver's message may quote the unverified ``iss``: it is logged escaped."""
    forged = "https://evil.example\nCRITICAL bearerguard: forged line"

    def resolver(iss: str) -> BearerGuard | None:
        try:
            raise KeyError(f"no tenant db for {iss}")
        except KeyError as exc:
            raise ValueError(f"unknown tenant {iss}") from exc

    guards = TrustedIssuers([alpha.guard(in_process=True)], resolver=resolver)
    with caplog.at_level(logging.ERROR, "bearerguard"), pytest.raises(InvalidIssuerError):
        guards.authenticate_sync(beta.mint(iss=forged))
    (record,) = caplog.records
    text = record.getMessage()
    assert record.exc_info is None
    assert not any(line.startswith("CRITICAL") for line in text.splitlines())
    assert "unknown tenant https://evil.example\\nCRITICAL" in text  # kept, escaped
    assert "builtins.ValueError" in text
    assert "builtins.KeyError" in text
    assert "no tenant db for https" not in text  # a chained message is never logged
    assert "in resolver" in text  # the frames say where
