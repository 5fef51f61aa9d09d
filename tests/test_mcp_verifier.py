"""``GuardTokenVerifier``: the MCP SDK's own resource-server auth, verifying with bearerguard.

A real ``MCPServer`` with ``AuthSettings`` and the verifier as its ``token_verifier``, served
by uvicorn on 127.0.0.1, called over raw HTTP for the exact answers and with the SDK's own
``Client``; tokens come from a real development issuer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from bearerguard import BearerGuard
from bearerguard.dpop import DPoPPolicy
from bearerguard.errors import ConfigurationError
from bearerguard.issuers import TrustedIssuers
from bearerguard.mcp import GuardTokenVerifier, SDKAuthAudit
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from tests.test_introspection import IntrospectionServer

mcp = pytest.importorskip("mcp", reason="the MCP SDK (mcp, in the dev extra) is not installed")
httpx2 = pytest.importorskip("httpx2")
uvicorn = pytest.importorskip("uvicorn")

from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.server.auth.middleware.auth_context import get_access_token as sdk_token  # noqa: E402
from mcp.server.auth.settings import AuthSettings  # noqa: E402
from mcp.server.mcpserver import MCPServer  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

pytestmark = pytest.mark.anyio

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


@dataclass
class Served:
    url: str
    resource: str
    issuer: DevIssuer
    guard: BearerGuard

    def token(self, *scopes: str, **claims: Any) -> str:
        claims.setdefault("aud", self.resource)
        claims.setdefault("sub", "mia")
        return self.issuer.mint(scopes=scopes, **claims)

    def post(
        self, token: str | None, body: object = LIST, *, request_id: str | None = None
    ) -> httpx.Response:
        headers = dict(ACCEPT)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        return httpx.post(self.url, json=body, headers=headers, timeout=10)

    @property
    def store(self) -> MemoryRevocationStore:
        store = self.guard.revocation
        assert isinstance(store, MemoryRevocationStore)
        return store


def notes_server(verifier: GuardTokenVerifier, issuer_url: str, resource: str) -> MCPServer:
    """An MCP server using the SDK's own auth, with ``verifier`` as its token verifier."""
    server = MCPServer(
        "notes",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=issuer_url,
            resource_server_url=resource,
            required_scopes=["notes:read"],
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def whoami() -> dict[str, Any]:
        token = sdk_token()
        assert token is not None
        return {"sub": token.subject, "client_id": token.client_id, "scopes": token.scopes}

    return server


@contextmanager
def serving(build: Callable[[str], Any]) -> Iterator[str]:
    """The app ``build`` makes for its URL (``http://127.0.0.1:<port>/mcp``), served by
    uvicorn on that port until the block ends; yields the URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
        server = uvicorn.Server(uvicorn.Config(build(url), log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the MCP server did not start"
            time.sleep(0.01)
        try:
            yield url
        finally:
            server.should_exit = True
            thread.join(10)


def mcp_app(verifier: GuardTokenVerifier, issuer_url: str, resource: str) -> Any:
    server = notes_server(verifier, issuer_url, resource)
    return server.streamable_http_app(stateless_http=True, json_response=True)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with DevIssuer() as issuer:
        guards: list[BearerGuard] = []

        def build(url: str) -> Any:
            guard = BearerGuard(
                issuer=issuer.url,
                resource=url,
                scope_implications={"notes:write": ["notes:read"], "notes:admin": ["notes:*"]},
            )
            guards.append(guard)
            verifier = GuardTokenVerifier(guard, scopes_supported=["notes:read", "notes:delete"])
            return mcp_app(verifier, issuer.url, url)

        with serving(build) as url:
            yield Served(url, url, issuer, guards[0])


def events_of(captured: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["event"], event["reason"]) for event in captured]


# -- raw HTTP: what the SDK answers with the verifier's verdict ----------------------------


def test_a_valid_token_is_let_in_with_one_audit_event(served: Served) -> None:
    with capture_logs() as captured:
        answer = served.post(served.token("notes:read"))
    assert answer.status_code == 200
    assert [tool["name"] for tool in answer.json()["result"]["tools"]] == ["whoami"]
    assert events_of(captured) == [("token.accepted", "ok")]
    assert captured[0]["sub"] == "mia"


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("expired", "expired"),
        ("revoked", "revoked"),
        ("another_resource", "invalid_audience"),
        ("garbage", "malformed_token"),
        ("forged", "bad_signature"),
    ],
)
def test_a_refused_token_is_a_401_with_one_audit_event(
    served: Served, kind: str, reason: str
) -> None:
    if kind == "expired":
        token = served.issuer.mint_expired(aud=served.resource)
    elif kind == "revoked":
        jti = f"revoked-{time.time_ns()}"
        token = served.token("notes:read", jti=jti)
        served.store.revoke_token_sync(jti, issuer=served.issuer.url)
    elif kind == "another_resource":
        token = served.token("notes:read", aud="http://127.0.0.1:1/mcp")
    elif kind == "garbage":
        token = "not-a-token"
    else:
        token = served.issuer.mint_forged(aud=served.resource, scopes=["notes:read"])
    with capture_logs() as captured:
        answer = served.post(token)
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert events_of(captured) == [("token.rejected", reason)]
    assert token not in repr(captured)


def test_no_token_is_the_sdks_401_and_no_audit_event(served: Served) -> None:
    with capture_logs() as captured:
        answer = served.post(None)
    assert answer.status_code == 401
    assert "resource_metadata=" in answer.headers["www-authenticate"]
    assert captured == []


def test_a_token_without_the_required_scopes_is_the_sdks_403(served: Served) -> None:
    with capture_logs() as captured:
        answer = served.post(served.token("notes:other"))
    assert answer.status_code == 403
    assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    # The verifier accepted the token; the SDK's required_scopes refused it.
    assert events_of(captured) == [("token.accepted", "ok")]


def test_implied_scopes_satisfy_the_required_scopes(served: Served) -> None:
    assert served.post(served.token("notes:write")).status_code == 200
    # A prefix implication (notes:admin implies notes:*): the scopes_supported it covers.
    assert served.post(served.token("notes:admin")).status_code == 200


def test_a_token_within_the_leeway_is_answered_as_the_guard_decided(served: Served) -> None:
    # exp 10 s ago, within the guard's 30 s leeway: the guard accepts it, and the SDK (which
    # refuses a token past its expires_at) must not refuse what was audited as accepted.
    now = int(time.time())
    token = served.token("notes:read", exp=now - 10, iat=now - 100)
    with capture_logs() as captured:
        answer = served.post(token)
    assert events_of(captured) == [("token.accepted", "ok")]
    assert answer.status_code == 200


def test_a_dependency_that_cannot_answer_is_a_401_not_a_500(
    issuer: DevIssuer, closed_port: int
) -> None:
    # The keys cannot be had (nothing listens at jwks_uri): fail closed, audited as such.
    def build(url: str) -> Any:
        guard = BearerGuard(
            issuer=issuer.url, resource=url, jwks_uri=f"http://127.0.0.1:{closed_port}/jwks"
        )
        return mcp_app(GuardTokenVerifier(guard), issuer.url, url)

    with serving(build) as url, capture_logs() as captured:
        token = issuer.mint(scopes=["notes:read"], aud=url)
        answer = httpx.post(
            url, json=LIST, headers={**ACCEPT, "Authorization": f"Bearer {token}"}, timeout=30
        )
    assert answer.status_code == 401
    assert events_of(captured) == [("auth.unavailable", "keys_unavailable")]
    # The event says what the client was answered.
    assert captured[0]["status"] == 401


def test_an_opaque_token_vouched_for_by_its_server_names_this_resource(
    issuer: DevIssuer,
) -> None:
    # An introspector with audience_checked_by_server=True: the guard accepts an answer
    # without aud, the server having said the token is meant for this API. Its resource was
    # the aud matched, so None here, and the SDK's validate_token_resource refused every such
    # token (401) the guard had accepted and audited as accepted. It is the guard's resource.
    with IntrospectionServer() as introspection:

        def build(url: str) -> Any:
            guard = BearerGuard(
                issuer=issuer.url,
                resource=url,
                introspection=introspection.introspector(audience_checked_by_server=True),
            )
            return mcp_app(GuardTokenVerifier(guard), issuer.url, url)

        introspection.activate("opaque-1", aud=None, scope="notes:read", sub="mia")
        with serving(build) as url, capture_logs() as captured:
            answer = httpx.post(
                url, json=LIST, headers={**ACCEPT, "Authorization": "Bearer opaque-1"}, timeout=10
            )
    assert events_of(captured) == [("token.accepted", "ok")]
    assert answer.status_code == 200


# -- SDKAuthAudit: the SDK's own decisions, and the request, in the audit trail ------------


@pytest.fixture(scope="module")
def audited(served: Served) -> Iterator[Served]:
    """The same server as ``served``, wrapped in ``SDKAuthAudit``."""
    guards: list[BearerGuard] = []

    def build(url: str) -> Any:
        guard = BearerGuard(issuer=served.issuer.url, resource=url)
        guards.append(guard)
        verifier = GuardTokenVerifier(guard)
        return SDKAuthAudit(mcp_app(verifier, served.issuer.url, url), verifier=verifier)

    with serving(build) as url:
        yield Served(url, url, served.issuer, guards[0])


def request_fields(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event["method"], event["path"], event["client"], event["request_id"])


def test_an_accepted_token_is_audited_with_its_request(audited: Served) -> None:
    with capture_logs() as captured:
        answer = audited.post(audited.token("notes:read"), request_id="req-1")
    assert answer.status_code == 200
    assert events_of(captured) == [("token.accepted", "ok")]
    assert request_fields(captured[0]) == ("POST", "/mcp", "127.0.0.1", "req-1")
    assert captured[0]["sub"] == "mia"


def test_a_refused_token_is_audited_with_its_request(audited: Served) -> None:
    token = audited.issuer.mint_expired(aud=audited.resource)
    with capture_logs() as captured:
        answer = audited.post(token, request_id="req-2")
    assert answer.status_code == 401
    assert events_of(captured) == [("token.rejected", "expired")]
    assert request_fields(captured[0]) == ("POST", "/mcp", "127.0.0.1", "req-2")
    assert captured[0]["status"] == 401


def test_the_sdks_401_for_a_missing_token_is_audited(audited: Served) -> None:
    # The verifier is never called: the SDK refuses a request without a Bearer token itself.
    with capture_logs() as captured:
        answer = audited.post(None, request_id="req-3")
    assert answer.status_code == 401
    assert events_of(captured) == [("token.rejected", "missing_token")]
    assert request_fields(captured[0]) == ("POST", "/mcp", "127.0.0.1", "req-3")
    assert captured[0]["status"] == 401


def test_the_sdks_403_for_its_required_scopes_is_the_one_event(audited: Served) -> None:
    # The verifier accepted the token; the SDK's required_scopes refused it: one event, the
    # refusal, not a token.accepted.
    with capture_logs() as captured:
        answer = audited.post(audited.token("notes:other"), request_id="req-4")
    assert answer.status_code == 403
    assert events_of(captured) == [("scope.denied", "insufficient_scope")]
    event = captured[0]
    assert request_fields(event) == ("POST", "/mcp", "127.0.0.1", "req-4")
    assert (event["status"], event["sub"], event["scopes"]) == (403, "mia", ["notes:other"])
    assert event["required_scopes"] == ["notes:read"]


def test_the_sdks_own_401_after_the_verifier_accepted_is_the_one_event(
    issuer: DevIssuer,
) -> None:
    # The guard accepts aud "notes-api", so the verifier names that as the resource; the
    # SDK's validate_token_resource refuses it (401) after the verifier accepted the token.
    def build(url: str) -> Any:
        verifier = GuardTokenVerifier(BearerGuard(issuer=issuer.url, audience="notes-api"))
        return SDKAuthAudit(mcp_app(verifier, issuer.url, url), verifier=verifier)

    with serving(build) as url, capture_logs() as captured:
        token = issuer.mint(scopes=["notes:read"], aud="notes-api")
        answer = httpx.post(
            url, json=LIST, headers={**ACCEPT, "Authorization": f"Bearer {token}"}, timeout=10
        )
    assert answer.status_code == 401
    assert events_of(captured) == [("token.rejected", "invalid_audience")]
    assert (captured[0]["status"], captured[0]["path"]) == (401, "/mcp")


def test_the_sdks_public_metadata_is_audited_only_for_a_token(audited: Served) -> None:
    metadata = audited.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    with capture_logs() as captured:
        assert httpx.get(metadata, timeout=10).status_code == 200
    assert captured == []
    # A refused token there: the SDK serves the document all the same, and the event says so.
    forged = audited.issuer.mint_forged(aud=audited.resource)
    with capture_logs() as captured:
        answer = httpx.get(metadata, headers={"Authorization": f"Bearer {forged}"}, timeout=10)
    assert answer.status_code == 200
    assert events_of(captured) == [("token.rejected", "bad_signature")]
    assert captured[0]["status"] == 200


async def test_the_sdk_client_through_the_audit_has_one_event_per_request(
    audited: Served,
) -> None:
    bearer = {"Authorization": f"Bearer {audited.token('notes:read')}"}
    with capture_logs() as captured:
        async with (
            httpx2.AsyncClient(headers=bearer, timeout=10) as http,
            Client(streamable_http_client(audited.url, http_client=http)) as client,
        ):
            whoami = await client.call_tool("whoami", {})
    assert whoami.structured_content is not None
    assert whoami.structured_content["sub"] == "mia"
    assert {event["event"] for event in captured} == {"token.accepted"}
    assert all(event["path"] == "/mcp" for event in captured)


def test_a_websocket_handshake_is_audited_with_its_request(
    audited: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # The SDK's auth middleware verifies a websocket handshake's token too (its app then
    # refuses the handshake: no websocket route): outside the exchange, the event named no
    # request, and any client could have the verifier warn that it was not wrapped.
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = audited.url.replace("http://", "ws://")
    good, forged = audited.token("notes:read"), audited.issuer.mint_forged(aud=audited.resource)
    with capture_logs() as captured:
        for token in (good, forged):
            bearer = {"Authorization": f"Bearer {token}", "X-Request-ID": "ws-1"}
            with pytest.raises(InvalidStatus) as refused:
                connect(ws_url, additional_headers=bearer, open_timeout=10)
            assert refused.value.response.status_code == 403
    assert events_of(captured) == [("token.accepted", "ok"), ("token.rejected", "bad_signature")]
    assert {request_fields(event) for event in captured} == {
        ("WEBSOCKET", "/mcp", "127.0.0.1", "ws-1")
    }
    assert captured[1]["status"] == 403  # the handshake closed before it was accepted
    assert not [record for record in caplog.records if "outside SDKAuthAudit" in record.message]


def test_the_audit_takes_a_guard_token_verifier(session_issuer: DevIssuer) -> None:
    with pytest.raises(ConfigurationError, match="GuardTokenVerifier"):
        SDKAuthAudit(mcp_app, verifier=object())  # type: ignore[arg-type]


def test_the_audit_added_as_the_sdk_apps_middleware_sees_the_same(issuer: DevIssuer) -> None:
    # Starlette's add_middleware puts it outside the SDK's auth middleware, nested twice
    # (with a wrapper around) the outer one audits: one event each.
    def build(url: str) -> Any:
        verifier = GuardTokenVerifier(BearerGuard(issuer=issuer.url, resource=url))
        app = mcp_app(verifier, issuer.url, url)
        app.add_middleware(SDKAuthAudit, verifier=verifier)
        return SDKAuthAudit(app, verifier=verifier)

    with serving(build) as url, capture_logs() as captured:
        token = issuer.mint(scopes=["notes:other"], aud=url)
        refused = httpx.post(
            url, json=LIST, headers={**ACCEPT, "Authorization": f"Bearer {token}"}, timeout=10
        )
        missing = httpx.post(url, json=LIST, headers=ACCEPT, timeout=10)
    assert (refused.status_code, missing.status_code) == (403, 401)
    assert events_of(captured) == [
        ("scope.denied", "insufficient_scope"),
        ("token.rejected", "missing_token"),
    ]
    assert {event["client"] for event in captured} == {"127.0.0.1"}


async def test_outside_the_audit_the_verifier_says_once_what_its_events_lack(
    session_issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = GuardTokenVerifier(BearerGuard(issuer=session_issuer.url, audience="api"))
    with capture_logs() as captured:
        assert await verifier.verify_token(session_issuer.mint(aud="api")) is not None
        assert await verifier.verify_token("garbage") is None
    assert events_of(captured) == [("token.accepted", "ok"), ("token.rejected", "malformed_token")]
    assert {(event["method"], event["path"]) for event in captured} == {("-", "-")}
    told = [record.getMessage() for record in caplog.records if record.name == "bearerguard"]
    assert len(told) == 1
    assert "outside SDKAuthAudit" in told[0]


# -- the SDK's AccessToken the verifier answers ------------------------------------------


async def test_the_sdk_token_carries_what_the_guard_verified(session_issuer: DevIssuer) -> None:
    resource = "https://notes.example/mcp"
    guard = BearerGuard(
        issuer=session_issuer.url,
        resource=resource,
        scope_implications={"notes:write": ["notes:read"]},
    )
    verifier = GuardTokenVerifier(guard)
    token = session_issuer.mint(scopes=["notes:write"], sub="ann", aud=[resource, "other"])
    answer = await verifier.verify_token(token)
    assert answer is not None
    assert answer.token == token
    assert answer.client_id == "dev-client"
    assert answer.subject == "ann"
    assert answer.scopes == ["notes:read", "notes:write"]
    assert answer.resource == resource
    assert answer.claims is not None
    assert answer.claims["iss"] == session_issuer.url
    assert answer.claims["sub"] == "ann"
    exp = answer.claims["exp"]
    assert answer.expires_at == int(exp + guard.leeway)
    assert await verifier.verify_token("garbage") is None


async def test_a_token_naming_the_resource_among_other_audiences_names_the_resource(
    session_issuer: DevIssuer,
) -> None:
    # The guard takes an older audience and the resource; a token naming both (Keycloak's
    # several aud) was answered with the first of the guard's it names, and the SDK's
    # validate_token_resource refused (401) a token issued for this very resource.
    resource = "https://notes.example/mcp"
    guard = BearerGuard(
        issuer=session_issuer.url, audience=["api://notes", resource], resource=resource
    )
    verifier = GuardTokenVerifier(guard)
    for aud in (["api://notes", resource], [resource, "api://notes"], [resource + "/", resource]):
        answer = await verifier.verify_token(session_issuer.mint(sub="ann", aud=aud))
        assert answer is not None
        assert answer.resource == resource, aud
    older = await verifier.verify_token(session_issuer.mint(sub="ann", aud="api://notes"))
    assert older is not None
    assert older.resource == "api://notes"  # the audience matched, as before


async def test_a_token_naming_no_principal_is_a_principal_of_its_own(
    session_issuer: DevIssuer,
) -> None:
    guard = BearerGuard(issuer=session_issuer.url, audience="api")
    verifier = GuardTokenVerifier(guard)
    first = await verifier.verify_token(session_issuer.mint(sub=None, client_id=None, aud="api"))
    second = await verifier.verify_token(session_issuer.mint(sub=None, client_id=None, aud="api"))
    assert first is not None
    assert second is not None
    assert first.client_id.startswith("token:")
    assert first.client_id != second.client_id
    # A subject without a client id: the SDK's field is a string, left empty.
    named = await verifier.verify_token(session_issuer.mint(sub="ann", client_id=None, aud="api"))
    assert named is not None
    assert (named.client_id, named.subject) == ("", "ann")
    assert named.resource == "api"


async def test_trusted_issuers_verify_with_the_guard_of_the_tokens_issuer(
    session_issuer: DevIssuer, issuer: DevIssuer
) -> None:
    resource = "https://notes.example/mcp"
    issuers = TrustedIssuers(
        [
            BearerGuard(issuer=session_issuer.url, resource=resource),
            BearerGuard(issuer=issuer.url, resource=resource, leeway=5),
        ]
    )
    verifier = GuardTokenVerifier(issuers)
    with capture_logs() as captured:
        answer = await verifier.verify_token(issuer.mint(sub="bo", aud=resource))
        refused = await verifier.verify_token(
            issuer.mint(aud=resource, iss="https://stranger.example")
        )
    assert answer is not None
    assert (answer.subject, answer.resource) == ("bo", resource)
    assert answer.claims is not None
    assert answer.expires_at == int(answer.claims["exp"] + 5)
    assert refused is None
    assert events_of(captured) == [("token.accepted", "ok"), ("token.rejected", "invalid_issuer")]


def test_a_guard_checking_dpop_or_certificates_is_refused(session_issuer: DevIssuer) -> None:
    # The SDK hands the verifier the token alone: no proof, no certificate to check.
    guard = BearerGuard(issuer=session_issuer.url, audience="api", dpop=DPoPPolicy())
    with pytest.raises(ConfigurationError, match="DPoP"):
        GuardTokenVerifier(guard)


# -- the SDK's own client ---------------------------------------------------------------


async def test_the_sdk_client_calls_tools_through_the_verifier(served: Served) -> None:
    bearer = {"Authorization": f"Bearer {served.token('notes:write', jti='sdk-1')}"}
    async with (
        httpx2.AsyncClient(headers=bearer, timeout=10) as http,
        Client(streamable_http_client(served.url, http_client=http)) as client,
    ):
        whoami = await client.call_tool("whoami", {})
        assert whoami.structured_content == {
            "sub": "mia",
            "client_id": "dev-client",
            "scopes": ["notes:read", "notes:write"],
        }
        served.store.revoke_token_sync("sdk-1", issuer=served.issuer.url)
        with pytest.raises(MCPError):
            await client.call_tool("whoami", {})
