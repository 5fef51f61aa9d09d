"""The MCP example, served by uvicorn on 127.0.0.1 and driven by the MCP SDK's own client.

Tokens come from a real development issuer; the guard verifies them against its keys, for
the server's resource URL as audience (RFC 8707). Raw HTTP checks the exact 401/403 answers
and the RFC 9728 metadata; the SDK's ``Client`` (streamable HTTP) checks that a real MCP
client gets through with a good token and is refused without the scope.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from bearerguard.testing import DevIssuer
from tests.test_examples import load_example

mcp = pytest.importorskip("mcp", reason="the MCP SDK (mcp, in the dev extra) is not installed")
httpx2 = pytest.importorskip("httpx2")
uvicorn = pytest.importorskip("uvicorn")

from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.server.auth.middleware.auth_context import get_access_token as sdk_token  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult  # noqa: E402

pytestmark = pytest.mark.anyio

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class Served:
    url: str
    resource: str
    issuer: DevIssuer

    def token(self, *scopes: str, **claims: Any) -> str:
        claims.setdefault("aud", self.resource)
        return self.issuer.mint(scopes=scopes, sub="mia", **claims)

    def headers(self, *scopes: str, **claims: Any) -> dict[str, str]:
        return {**ACCEPT, "Authorization": f"Bearer {self.token(*scopes, **claims)}"}


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    yield from load_example("mcp_server")


@pytest.fixture(scope="module")
def served(example: ModuleType) -> Iterator[Served]:
    with DevIssuer() as issuer, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        resource = f"http://127.0.0.1:{port}/mcp"
        app = example.create_app(example.create_guard(issuer.url, resource))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the MCP server did not start"
            time.sleep(0.01)
        try:
            yield Served(f"http://127.0.0.1:{port}/mcp", resource, issuer)
        finally:
            server.should_exit = True
            thread.join(10)


def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


@asynccontextmanager
async def client_for(served: Served, *scopes: str) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP, sending a token with every request."""
    headers = {"Authorization": f"Bearer {served.token(*scopes)}"} if scopes else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=10) as http,
        Client(streamable_http_client(served.url, http_client=http)) as client,
    ):
        yield client


# -- raw HTTP: the answers a client discovers authorization from -----------------------


def test_401_points_to_the_metadata(served: Served) -> None:
    metadata_url = f"{served.url.rsplit('/', 1)[0]}/.well-known/oauth-protected-resource/mcp"
    with capture_logs() as events:
        response = httpx.post(served.url, json=INIT, headers=ACCEPT)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer realm="{served.resource}", resource_metadata="{metadata_url}", scope="notes:read"'
    )
    assert response.json()["error"] == "unauthorized"
    assert [event["event"] for event in events] == ["token.rejected"]
    document = httpx.get(metadata_url).json()
    assert document == {
        "resource": served.resource,
        "authorization_servers": [served.issuer.url],
        "scopes_supported": ["notes:read", "notes:write"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Notes",
    }


def test_a_token_for_another_resource_is_refused(served: Served) -> None:
    response = httpx.post(
        served.url, json=INIT, headers=served.headers(aud="http://127.0.0.1:1/mcp")
    )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_403_step_up_names_the_missing_scope(served: Served) -> None:
    with capture_logs() as events:
        denied = httpx.post(
            served.url, json=call("write_note", {"text": "x"}), headers=served.headers("notes:read")
        )
    assert denied.status_code == 403
    challenge = denied.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="notes:write"' in challenge
    assert "resource_metadata=" in challenge
    assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]
    assert events[1]["required_scopes"] == ["notes:write"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","name":"write_note"}}',
            400,
        ),
        (b"{not json", 400),
        (b'{"x": NaN}', 400),
        (b"\xff\xfe", 400),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\udc00"}}', 400),
        (b"[" * 100_000, 400),
        (b'{"pad": "' + b"a" * (5 * 1024 * 1024) + b'"}', 413),
    ],
    ids=["duplicate-name", "not-json", "nan", "not-utf8", "lone-surrogate", "deep", "too-large"],
)
def test_what_cannot_be_checked_is_refused(served: Served, body: bytes, status: int) -> None:
    with capture_logs() as events:
        response = httpx.post(served.url, content=body, headers=served.headers())
    assert response.status_code == status
    assert response.json()["error"]["code"] in (-32700, -32600)
    # Written raw: its length stated, not chunked (as every other refusal, RFC 9112 §6.3).
    assert response.headers["content-length"] == str(len(response.content))
    # Audited as a refusal, after the middleware's acceptance of the token.
    assert [event["event"] for event in events] == ["token.accepted", "token.rejected"]
    assert (events[1]["reason"], events[1]["status"]) == ("invalid_request", status)
    assert events[1]["sub"] is not None


def test_a_batch_is_refused_when_one_call_is(served: Served) -> None:
    batch = [call("add", {"a": 1, "b": 2}), call("read_notes", {})]
    response = httpx.post(served.url, json=batch, headers=served.headers())
    assert response.status_code == 403
    assert 'scope="notes:read"' in response.headers["www-authenticate"]
    assert response.headers.get_list("content-length") == [str(len(response.content))]


def test_the_401_of_a_tool_call_without_a_token_names_the_scopes_it_needs(
    session_issuer: DevIssuer,
) -> None:
    # MCP authorization (2025-11-25): a server SHOULD put in its 401 challenge the scope
    # (RFC 6750 §3) the request needs, which clients ask for before scopes_supported. Known
    # only once the JSON-RPC message is read: MCPToolScopes' own 401s, on a public path.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes

    async def ran(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ran")

    resource = "http://127.0.0.1:8000/mcp"
    inner = Starlette(routes=[Route("/mcp", ran, methods=["POST"])])
    checked = MCPToolScopes(inner, tools={"delete_note": ["notes:write"]})
    guard = session_issuer.guard(in_process=True, resource=resource)
    metadata = 'resource_metadata="http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"'

    def challenge(tool: str, public_paths: list[str]) -> str:
        app = BearerGuardMiddleware(checked, guard=guard, public_paths=public_paths)
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            refused = client.post("/mcp", json=body)
        assert refused.status_code == 401
        return refused.headers["www-authenticate"]

    named = challenge("delete_note", ["/mcp"])
    assert named == f'Bearer realm="{resource}", {metadata}, scope="notes:write"'
    assert challenge("ping", ["/mcp"]) == f'Bearer realm="{resource}", {metadata}'
    # The middleware answers before any message is read: no scope is known to name (no
    # challenge_scopes were given: see the next test).
    assert challenge("delete_note", []) == f'Bearer realm="{resource}", {metadata}'


def test_every_401_names_the_scopes_to_ask_for_first(session_issuer: DevIssuer) -> None:
    # MCP authorization (2025-11-25, 2026-07-28), scope selection strategy: a server SHOULD
    # put in its 401 challenge the scope (RFC 6750 §3) a client is to request first; without
    # it the SDK's client requests every scope of scopes_supported (or, with none there,
    # every scope of the authorization server): no least privilege, no step-up.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes
    from bearerguard.metadata import ResourceMetadata

    async def ran(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ran")

    resource = "http://127.0.0.1:8000/mcp"
    metadata = ResourceMetadata(
        scopes_supported=["notes:read", "notes:write"], challenge_scopes=["notes:read"]
    )
    guard = session_issuer.guard(in_process=True, resource=resource, resource_metadata=metadata)
    inner = Starlette(routes=[Route("/mcp", ran, methods=["POST"])])
    checked = MCPToolScopes(inner, tools={"delete_note": ["notes:write"]})
    url = "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"
    prefix = f'Bearer realm="{resource}"'

    def post(body: object, public_paths: list[str], **headers: str) -> httpx.Response:
        app = BearerGuardMiddleware(checked, guard=guard, public_paths=public_paths)
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            return client.post("/mcp", json=body, headers=headers)

    tool = call("delete_note", {})
    # The middleware's own 401s, before any message is read: the scopes to ask for first.
    missing = post(INIT, [])
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == (
        f'{prefix}, resource_metadata="{url}", scope="notes:read"'
    )
    assert post(tool, []).headers["www-authenticate"].endswith('scope="notes:read"')
    expired = session_issuer.mint_expired(aud=resource)
    invalid = post(INIT, [], authorization=f"Bearer {expired}")
    assert invalid.status_code == 401
    challenge = invalid.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert challenge.endswith('scope="notes:read"')
    # Where the request's own scopes are known, they are named: the call's, else the first.
    assert post(tool, ["/mcp"]).headers["www-authenticate"].endswith('scope="notes:write"')
    ping = post(call("ping", {}), ["/mcp"])
    assert ping.status_code == 401
    assert ping.headers["www-authenticate"].endswith('scope="notes:read"')
    # A 403 names what the call needs, not the scopes to ask for first.
    reader = session_issuer.mint(aud=resource, scopes=["notes:read"])
    denied = post(tool, [], authorization=f"Bearer {reader}")
    assert denied.status_code == 403
    assert ', scope="notes:write", ' in denied.headers["www-authenticate"]
    assert 'scope="notes:read' not in denied.headers["www-authenticate"]
    # The document is unchanged: challenge_scopes is no member of it.
    assert "challenge_scopes" not in guard.protected_resource.document  # type: ignore[union-attr]


def test_a_refused_batch_names_every_scope_its_calls_need(session_issuer: DevIssuer) -> None:
    # RFC 6750 §3.1: scope names what the request needs. Naming the first failing call's
    # scopes only, a client that stepped up to them was refused the batch's next call.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes

    async def ran(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ran")

    inner = Starlette(routes=[Route("/mcp", ran, methods=["POST"])])
    tools = {"read": ["notes:read"], "write": ["notes:write", "notes:read"]}
    checked = MCPToolScopes(inner, tools=tools, default="misc")
    app = BearerGuardMiddleware(checked, guard=session_issuer.guard(in_process=True))
    batch = [call("read", {}), call("write", {}), call("other", {})]

    def post(*scopes: str) -> httpx.Response:
        token = session_issuer.mint(scopes=scopes)
        return client.post("/mcp", json=batch, headers={"Authorization": f"Bearer {token}"})

    with TestClient(app) as client:
        for held in ((), ("notes:read",), ("notes:read", "notes:write"), ("misc",)):
            with capture_logs() as events:
                refused = post(*held)
            assert refused.status_code == 403, held
            challenge = refused.headers["www-authenticate"]
            assert challenge.endswith('scope="notes:read notes:write misc"'), held
            # One decision, one event: the failing call's own requirement in it.
            assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]
        assert post("notes:read", "notes:write", "misc").text == "ran"
    # A single call's challenge is unchanged: its own scopes.
    with TestClient(app) as client:
        token = session_issuer.mint(scopes=["notes:read"])
        single = client.post(
            "/mcp", json=call("write", {}), headers={"Authorization": f"Bearer {token}"}
        )
    assert single.headers["www-authenticate"].endswith('scope="notes:write notes:read"')


# -- the SDK's own client ---------------------------------------------------------------


async def test_the_sdk_client_calls_tools_with_a_token(served: Served) -> None:
    async with client_for(served, "notes:write") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"add", "whoami", "read_notes", "write_note"}
        added = await client.call_tool("add", {"a": 2, "b": 3})
        assert added.structured_content == {"result": 5}
        assert (await client.call_tool("whoami", {})).structured_content == {"result": "mia"}
        written = await client.call_tool("write_note", {"text": "hello"})
        assert not written.is_error
        # notes:write implies notes:read (scope_implications)
        notes = await client.call_tool("read_notes", {})
        assert "hello" in notes.structured_content["result"]  # type: ignore[index]


async def test_the_sdk_client_is_refused_a_tool_without_its_scope(served: Served) -> None:
    async with client_for(served, "notes:read") as client:
        assert (await client.call_tool("add", {"a": 1, "b": 1})).structured_content == {"result": 2}
        with capture_logs() as events, pytest.raises(MCPError):
            await client.call_tool("write_note", {"text": "denied"})
        assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]
        assert "denied" not in str(await client.call_tool("read_notes", {}))


async def test_the_sdk_client_without_a_token_cannot_connect(served: Served) -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK's error types vary by phase
        async with client_for(served) as client:
            await client.list_tools()  # pragma: no cover


def test_paths_limit_the_check_to_the_mcp_endpoint(session_issuer: DevIssuer) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.errors import ConfigurationError
    from bearerguard.mcp import MCPToolScopes

    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{len(await request.body())} bytes")

    inner = Starlette(
        routes=[Route("/mcp", echo, methods=["POST"]), Route("/hooks", echo, methods=["POST"])]
    )
    checked = MCPToolScopes(inner, tools={"delete_note": ["notes:write"]}, paths=["/mcp"])
    app = BearerGuardMiddleware(checked, guard=session_issuer.guard(in_process=True))
    headers = {"Authorization": f"Bearer {session_issuer.mint()}"}
    delete = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_note"}}
    with TestClient(app) as client:
        assert client.post("/hooks", content=b"plain text", headers=headers).text == "10 bytes"
        assert client.post("/mcp", content=b"plain text", headers=headers).status_code == 400
        assert client.post("/mcp", json=delete, headers=headers).status_code == 403
        assert client.post("/hooks", json=delete, headers=headers).status_code == 200
    with pytest.raises(ConfigurationError, match="not a string"):
        MCPToolScopes(inner, tools={}, paths="/mcp")


def test_paths_match_when_the_mcp_app_is_mounted_under_a_prefix(
    session_issuer: DevIssuer,
) -> None:
    # Under Mount("/api"), scope["path"] is /api/mcp and root_path /api (ASGI 3): the app
    # routes /mcp. paths=["/mcp"] must still check, or a tool runs without its scope.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes

    async def ran(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ran")

    inner = Starlette(routes=[Route("/mcp", ran, methods=["POST"])])
    guard = session_issuer.guard(in_process=True)
    delete = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_note"}}
    headers = {"Authorization": f"Bearer {session_issuer.mint()}"}
    for paths in (["/mcp"], ["/api/mcp"]):
        checked = MCPToolScopes(inner, tools={"delete_note": ["notes:write"]}, paths=paths)
        app = Starlette(routes=[Mount("/api", app=BearerGuardMiddleware(checked, guard=guard))])
        with TestClient(app) as client:
            assert client.post("/api/mcp", json=delete, headers=headers).status_code == 403
            allowed = session_issuer.mint(scopes=["notes:write"])
            answer = client.post(
                "/api/mcp", json=delete, headers={"Authorization": f"Bearer {allowed}"}
            )
            assert answer.text == "ran"


def test_paths_match_when_the_wrapped_app_mounts_the_mcp_app(session_issuer: DevIssuer) -> None:
    # MCPToolScopes around an app with webhooks that mounts the MCP app under /api: the MCP
    # app routes /mcp, and nothing in the scope says where the Mount is.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.errors import ConfigurationError
    from bearerguard.mcp import MCPToolScopes

    async def ran(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ran")

    mcp_app = Starlette(routes=[Route("/mcp", ran, methods=["POST"])])
    outer = Starlette(routes=[Route("/hooks", ran, methods=["POST"]), Mount("/api", mcp_app)])
    checked = MCPToolScopes(outer, tools={"delete_note": ["notes:write"]}, paths=["/mcp"])
    app = BearerGuardMiddleware(checked, guard=session_issuer.guard(in_process=True))
    delete = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_note"}}
    headers = {"Authorization": f"Bearer {session_issuer.mint()}"}
    with TestClient(app) as client:
        assert client.post("/api/mcp", json=delete, headers=headers).status_code == 403
        assert client.post("/hooks", content=b"plain", headers=headers).text == "ran"
    with pytest.raises(ConfigurationError, match="absolute"):
        MCPToolScopes(outer, tools={}, paths=["mcp"])


def test_a_call_on_a_public_path_still_needs_a_token(session_issuer: DevIssuer) -> None:
    # A tool not named in tools needs "only a valid token": a public /mcp (initialize and
    # tools/list without credentials) must not run it anonymously.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes

    async def ran(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ran")

    inner = Starlette(routes=[Route("/mcp", ran, methods=["POST"])])
    checked = MCPToolScopes(inner, tools={"delete_note": ["notes:write"]})
    guard = session_issuer.guard(in_process=True)
    app = BearerGuardMiddleware(checked, guard=guard, public_paths=["/mcp"])
    purge = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "purge"}}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    with TestClient(app) as client, capture_logs() as logs:
        assert client.post("/mcp", json=listing).text == "ran"
        refused = client.post("/mcp", json=purge)
        token = session_issuer.mint()
        allowed = client.post("/mcp", json=purge, headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert allowed.text == "ran"
    rejected = [e for e in logs if e["event"] == "token.rejected"]
    assert [e["reason"] for e in rejected] == ["missing_token"]


def test_a_stateful_session_is_bound_to_the_principal_that_opened_it(
    session_issuer: DevIssuer,
) -> None:
    # The SDK refuses another principal's requests for a session (404) only when it
    # recognizes the request's user: behind the guard, any valid token could use or end it.
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware, TokenUser
    from bearerguard.mcp import MCPToolScopes

    server = MCPServer("notes")

    @server.tool()
    def whoami(ctx: Context) -> str:
        user = ctx.request_context.request.user
        assert isinstance(user, TokenUser)
        return user.display_name

    app = BearerGuardMiddleware(
        MCPToolScopes(server.streamable_http_app(json_response=True), tools={}),
        guard=session_issuer.guard(in_process=True),
    )

    def headers(sub: str, session: str | None = None) -> dict[str, str]:
        extra = {} if session is None else {"Mcp-Session-Id": session}
        token = session_issuer.mint(sub=sub)
        version = {"Mcp-Protocol-Version": "2025-06-18"}
        return {**ACCEPT, **version, **extra, "Authorization": f"Bearer {token}"}

    whoami_call = {**call("whoami", {}), "id": 3}
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        session = client.post("/mcp", json=INIT, headers=headers("ana")).headers["mcp-session-id"]
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert client.post("/mcp", json=initialized, headers=headers("ana", session)).is_success
        stolen = client.post("/mcp", json=whoami_call, headers=headers("eve", session))
        assert stolen.status_code == 404
        assert client.delete("/mcp", headers=headers("eve", session)).status_code == 404
        mine = client.post("/mcp", json=whoami_call, headers=headers("ana", session))
        assert mine.json()["result"]["structuredContent"] == {"result": "ana"}
        assert client.delete("/mcp", headers=headers("ana", session)).status_code == 200


def test_tokens_naming_no_principal_each_are_a_principal_of_their_own(
    session_issuer: DevIssuer,
) -> None:
    # The SDK binds a session to (client_id, iss, sub): with neither sub nor a client id,
    # every token of the issuer was one principal, and any of them used or ended the others'
    # sessions. Each such token is now its own principal, named by its fingerprint.
    from starlette.testclient import TestClient

    from bearerguard import get_access_token
    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes

    server = MCPServer("notes")

    @server.tool()
    def whoami(ctx: Context) -> list[str | None]:
        token = sdk_token()
        assert token is not None
        # bearerguard's own view keeps the token as verified: no client id.
        verified = get_access_token(ctx.request_context.request)
        assert verified is not None
        assert verified.client_id is None
        assert "client_id" not in verified.claims
        return [token.client_id, token.subject]

    app = BearerGuardMiddleware(
        MCPToolScopes(server.streamable_http_app(json_response=True), tools={}),
        guard=session_issuer.guard(in_process=True),
    )
    version = {"Mcp-Protocol-Version": "2025-06-18"}
    first, second = (session_issuer.mint(sub=None, client_id=None) for _ in range(2))

    def headers(token: str, session: str) -> dict[str, str]:
        return {**ACCEPT, **version, "Mcp-Session-Id": session, "Authorization": f"Bearer {token}"}

    whoami_call = {**call("whoami", {}), "id": 3}
    with TestClient(app, base_url="http://127.0.0.1:8000") as client, capture_logs() as logs:
        opening = {**ACCEPT, "Authorization": f"Bearer {first}"}
        session = client.post("/mcp", json=INIT, headers=opening).headers["mcp-session-id"]
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert client.post("/mcp", json=initialized, headers=headers(first, session)).is_success
        assert (
            client.post("/mcp", json=whoami_call, headers=headers(second, session)).status_code
            == 404
        )
        assert client.delete("/mcp", headers=headers(second, session)).status_code == 404
        mine = client.post("/mcp", json=whoami_call, headers=headers(first, session))
        assert client.delete("/mcp", headers=headers(first, session)).status_code == 200
    fingerprint = logs[0]["token_fp"]
    assert mine.json()["result"]["structuredContent"] == {"result": [f"token:{fingerprint}", None]}
    assert {event.get("client_id") for event in logs} == {None}  # the audit events' too


def test_a_client_id_claim_cannot_take_the_name_of_another_tokens_principal(
    session_issuer: DevIssuer,
) -> None:
    # A token naming no principal is seen by the SDK as client "token:<its fingerprint>";
    # fingerprints are in every audit event. A token without sub whose client id claim is
    # literally that name was the same (client_id, iss, sub) to the SDK: it used and ended
    # the other token's session. It is a principal of its own too.
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes

    server = MCPServer("notes")

    @server.tool()
    def whoami() -> list[str | None]:
        token = sdk_token()
        assert token is not None
        return [token.client_id, token.subject]

    app = BearerGuardMiddleware(
        MCPToolScopes(server.streamable_http_app(json_response=True), tools={}),
        guard=session_issuer.guard(in_process=True),
    )
    version = {"Mcp-Protocol-Version": "2025-06-18"}
    victim = session_issuer.mint(sub=None, client_id=None)

    def headers(token: str, session: str) -> dict[str, str]:
        return {**ACCEPT, **version, "Mcp-Session-Id": session, "Authorization": f"Bearer {token}"}

    whoami_call = {**call("whoami", {}), "id": 3}
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        opening = {**ACCEPT, "Authorization": f"Bearer {victim}"}
        with capture_logs() as logs:
            session = client.post("/mcp", json=INIT, headers=opening).headers["mcp-session-id"]
        name = f"token:{logs[0]['token_fp']}"
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert client.post("/mcp", json=initialized, headers=headers(victim, session)).is_success
        for claim in ("client_id", "azp", "cid", "appid"):
            claims = {"client_id": None, claim: name}
            thief = session_issuer.mint(sub=None, **claims)
            stolen = client.post("/mcp", json=whoami_call, headers=headers(thief, session))
            assert stolen.status_code == 404, (claim, stolen.text)
            assert client.delete("/mcp", headers=headers(thief, session)).status_code == 404
        # The thief's own session works, under a name of its own.
        thief = session_issuer.mint(sub=None, client_id=name)
        opening = {**ACCEPT, "Authorization": f"Bearer {thief}"}
        with capture_logs() as logs:
            own = client.post("/mcp", json=INIT, headers=opening).headers["mcp-session-id"]
        assert logs[0]["client_id"] == name  # the audit event names the claim as it is
        assert client.post("/mcp", json=initialized, headers=headers(thief, own)).is_success
        seen = client.post("/mcp", json=whoami_call, headers=headers(thief, own))
        assert seen.json()["result"]["structuredContent"] == {
            "result": [f"token:{logs[0]['token_fp']}", None]
        }
        mine = client.post("/mcp", json=whoami_call, headers=headers(victim, session))
        assert mine.json()["result"]["structuredContent"] == {"result": [name, None]}
        assert client.delete("/mcp", headers=headers(victim, session)).status_code == 200


def test_request_state_is_bound_to_the_principal_it_was_minted_for(
    session_issuer: DevIssuer,
) -> None:
    # MCP 2026-07-28: a tool asks for input and hands the client a sealed requestState,
    # which the SDK binds to the principal its get_access_token() names. Behind the guard
    # that was nobody, so another principal's retry with the same state was accepted.
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes

    server = MCPServer("notes")

    @server.tool()
    def confirm(ctx: Context) -> InputRequiredResult | str:
        if ctx.request_state is None:
            form = ElicitRequestFormParams(
                message="Sure?", requested_schema={"type": "object", "properties": {}}
            )
            state = f"asked {ctx.request_context.request.user.display_name}"
            return InputRequiredResult(
                input_requests={"ok": ElicitRequest(params=form)}, request_state=state
            )
        token = sdk_token()
        return f"{ctx.request_state}, answered by {token.subject if token else None}"

    mcp_app = server.streamable_http_app(stateless_http=True, json_response=True)
    app = BearerGuardMiddleware(
        MCPToolScopes(mcp_app, tools={}), guard=session_issuer.guard(in_process=True)
    )
    version = "2026-07-28"
    meta = {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
    }

    def confirming(**retry: Any) -> dict[str, Any]:
        message = call("confirm", {})
        message["params"].update(_meta=meta, **retry)
        return message

    def headers(sub: str, token: str | None = None) -> dict[str, str]:
        routing = {
            "MCP-Protocol-Version": version,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "confirm",
        }
        token = token or session_issuer.mint(sub=sub)
        return {**ACCEPT, **routing, "Authorization": f"Bearer {token}"}

    answer = {"ok": {"action": "accept", "content": {}}}
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        asked = client.post("/mcp", json=confirming(), headers=headers("ana")).json()["result"]
        retry = confirming(requestState=asked["requestState"], inputResponses=answer)
        stolen = client.post("/mcp", json=retry, headers=headers("eve"))
        mine = client.post("/mcp", json=retry, headers=headers("ana"))
        # Tokens naming no principal (no sub, no client id) are each a principal of their own.
        first, second = (session_issuer.mint(sub=None, client_id=None) for _ in range(2))
        asked = client.post("/mcp", json=confirming(), headers=headers("", first)).json()
        retry = confirming(requestState=asked["result"]["requestState"], inputResponses=answer)
        other = client.post("/mcp", json=retry, headers=headers("", second))
        same = client.post("/mcp", json=retry, headers=headers("", first))
    assert "error" in stolen.json(), stolen.text
    assert mine.json()["result"]["structuredContent"] == {"result": "asked ana, answered by ana"}
    assert "error" in other.json(), other.text
    assert same.json()["result"]["structuredContent"]["result"].startswith("asked token:")


def test_paths_cover_what_a_mount_routes_below_them(session_issuer: DevIssuer) -> None:
    # The SSE transport's message endpoint is Mount("/messages/"): /messages/x reaches it.
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount
    from starlette.testclient import TestClient
    from starlette.types import Receive, Scope, Send

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes

    async def messages(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("ran")(scope, receive, send)

    inner = Starlette(routes=[Mount("/messages/", app=messages)])
    delete = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_note"}}
    headers = {"Authorization": f"Bearer {session_issuer.mint()}"}
    for paths in (["/messages/"], ["/messages"]):
        checked = MCPToolScopes(inner, tools={"delete_note": ["notes:write"]}, paths=paths)
        app = BearerGuardMiddleware(checked, guard=session_issuer.guard(in_process=True))
        with TestClient(app) as client:
            for path in ("/messages/", "/messages/x", "/messages/x/y"):
                answer = client.post(f"{path}?session_id=1", json=delete, headers=headers)
                assert answer.status_code == 403, (paths, path)


def test_paths_match_what_the_router_takes_for_them(
    example: ModuleType, session_issuer: DevIssuer
) -> None:
    # Starlette's route patterns end in "$", which Python matches before a final newline:
    # POST /mcp%0A reaches Route("/mcp") (uvicorn unescapes it into scope["path"]), and
    # was passed on unread, the tool run without its scope.
    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes

    mcp_app = example.create_server().streamable_http_app(stateless_http=True, json_response=True)
    app = BearerGuardMiddleware(
        MCPToolScopes(mcp_app, tools=example.TOOL_SCOPES, paths=["/mcp"]),
        guard=session_issuer.guard(in_process=True),
    )
    token = session_issuer.mint(scopes=["notes:read"])
    write = call("write_note", {"text": "x"})
    with _serving(app) as base:
        for path in ("/mcp", "/mcp%0A", "/mcp/"):
            answer = httpx.post(
                f"{base}{path}", json=write, headers={**ACCEPT, "Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 403, (path, answer.text)


@pytest.mark.parametrize("paths", [[], ["/mcp/*"], ["/mcp*"], ["/mcp?x=1"], ["/mcp#tools"]])
def test_paths_that_match_nothing_are_refused(paths: list[str]) -> None:
    # "/mcp/*" is how public_paths spells a prefix; here it matched no request, and an empty
    # list none either: every tool then ran without its scopes.
    from starlette.applications import Starlette

    from bearerguard.errors import ConfigurationError
    from bearerguard.mcp import MCPToolScopes

    with pytest.raises(ConfigurationError, match="paths"):
        MCPToolScopes(Starlette(), tools={"delete_note": ["notes:write"]}, paths=paths)


@pytest.mark.parametrize("limit", [None, "4MB", 2.5, True, 0, -1])
def test_a_body_limit_that_is_not_a_size_is_refused(limit: object) -> None:
    # Compared with each body's size at request time: None or "4MB" made every POST a 500.
    from starlette.applications import Starlette

    from bearerguard.errors import ConfigurationError
    from bearerguard.mcp import MCPToolScopes

    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        MCPToolScopes(Starlette(), tools={}, max_body_bytes=limit)  # type: ignore[arg-type]


def test_default_takes_one_scope_as_a_string_as_tools_does() -> None:
    from starlette.applications import Starlette

    from bearerguard.mcp import MCPToolScopes

    checked = MCPToolScopes(Starlette(), tools={"a": "notes:write"}, default="notes:read")
    assert checked.required("a") == ("notes:write",)
    assert checked.required("b") == ("notes:read",)


def test_a_body_refusal_names_the_binding_the_token_was_accepted_with(
    session_issuer: DevIssuer,
) -> None:
    # docs/audit-events.md: binding is how the token was presented. A DPoP-bound token's
    # body refused after its token.accepted (binding "dpop") was recorded as "bearer".
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.dpop import DPoPPolicy
    from bearerguard.mcp import MCPToolScopes
    from tests.test_dpop import Holder, dpop

    async def ran(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ran")  # pragma: no cover - every body here is refused

    inner = Starlette(routes=[Route("/mcp", ran, methods=["POST"])])
    guard = session_issuer.guard(in_process=True, dpop=DPoPPolicy())
    app = BearerGuardMiddleware(MCPToolScopes(inner, tools={}), guard=guard)
    holder = Holder()
    token = session_issuer.mint(cnf={"jkt": holder.jkt})
    proof = holder.proof(token, method="POST", url="http://testserver/mcp")
    with TestClient(app) as client, capture_logs() as logs:
        assert client.post("/mcp", content=b"{", headers=dpop(token, proof)).status_code == 400
    assert [(e["event"], e["binding"]) for e in logs] == [
        ("token.accepted", "dpop"),
        ("token.rejected", "dpop"),
    ]


def test_a_principal_of_its_own_is_made_once_per_verified_token(session_issuer: DevIssuer) -> None:
    # The copy naming a token's own principal cost a dataclasses.replace (several µs) on
    # every MCP request with such a token: it is made once per verified token now (the
    # guard's cache hands each request the same AccessToken), and only for such tokens.
    from bearerguard.mcp import _principal_token

    guard = session_issuer.guard(in_process=True)
    raw = session_issuer.mint(sub=None, client_id=None)
    token = guard.authenticate_sync(raw)
    named = _principal_token(token)
    assert named.client_id == f"token:{token.fingerprint}"
    assert guard.authenticate_sync(raw) is token
    assert _principal_token(token) is named
    other = guard.authenticate_sync(session_issuer.mint(sub=None, client_id=None))
    assert _principal_token(other).client_id == f"token:{other.fingerprint}"
    assert _principal_token(token) is named
    with_sub = guard.authenticate_sync(session_issuer.mint(sub="ana"))
    assert _principal_token(with_sub) is with_sub


def test_a_session_get_stream_ends_once_its_token_is_revoked(session_issuer: DevIssuer) -> None:
    # The SDK's own GET stream (a stateful session's notifications), served by uvicorn: the
    # stream opened with a token revoked since ends at its next event, audited once, and
    # reopening it with that token is refused. Another token of the same principal (its
    # sessions are the principal's) has the server send that event.
    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.mcp import MCPToolScopes
    from bearerguard.revocation import MemoryRevocationStore

    server = MCPServer("notes")

    @server.tool()
    async def touch(ctx: Context) -> str:
        await ctx.session.send_resource_list_changed()  # no request's: on the GET stream
        return "touched"

    store = MemoryRevocationStore()
    app = BearerGuardMiddleware(
        MCPToolScopes(server.streamable_http_app(json_response=True), tools={}),
        guard=session_issuer.guard(revocation=store),
    )
    opener, other = (session_issuer.mint(sub="ana", jti=jti) for jti in ("ana-1", "ana-2"))
    version = {"Mcp-Protocol-Version": "2025-06-18"}

    def headers(token: str, session: str | None = None) -> dict[str, str]:
        extra = {} if session is None else {"Mcp-Session-Id": session}
        return {**ACCEPT, **version, **extra, "Authorization": f"Bearer {token}"}

    events: list[str] = []
    with (
        _serving(app) as base,
        httpx.Client(base_url=base, timeout=10) as client,
        capture_logs() as logs,
    ):
        opened = client.post("/mcp", json=INIT, headers=headers(opener))
        session = opened.headers["mcp-session-id"]
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        client.post("/mcp", json=initialized, headers=headers(opener, session))
        get = client.build_request("GET", "/mcp", headers=headers(opener, session))
        stream = client.send(get, stream=True)
        try:
            assert stream.status_code == 200
            touch_call = {**call("touch", {}), "id": 3}
            client.post("/mcp", json=touch_call, headers=headers(other, session))
            lines = stream.iter_lines()
            events.append(next(line for line in lines if line.startswith("data:")))
            store.revoke_token_sync("ana-1", issuer=session_issuer.url)
            client.post("/mcp", json=touch_call, headers=headers(other, session))
            # Ended at that event: the rest of the stream is empty (unchecked, it stays
            # open and this read times out).
            events.extend(line for line in lines if line.startswith("data:"))
        finally:
            stream.close()
        reopened = client.get("/mcp", headers=headers(opener, session))
    assert len(events) == 1
    assert "notifications/resources/list_changed" in events[0]
    assert reopened.status_code == 401
    refused = [(e["event"], e.get("reason"), e.get("jti")) for e in logs]
    assert [r for r in refused if r[0] != "token.accepted"] == [
        ("token.rejected", "revoked", "ana-1"),  # the stream's end
        ("token.rejected", "revoked", "ana-1"),  # the reopening
    ]


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1, its lifespan run (the MCP session manager's):
    its base URL."""
    from tests.helpers import until

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            assert until(lambda: server.started, 10), "the MCP server did not start"
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(10)
