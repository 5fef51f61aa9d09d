"""An MCP server (the ``mcp`` SDK, streamable HTTP) protected by bearerguard.

Run it against your authorization server:

    ISSUER=https://issuer.example RESOURCE=https://notes.example/mcp python examples/mcp_server.py

Environment:
    ISSUER     the trusted authorization server; a token's ``iss`` must equal it exactly.
    RESOURCE   this server's canonical URL (RFC 8707): tokens must be issued for it (``aud``),
               and it is published in the protected-resource metadata (RFC 9728).
    HOST/PORT  optional: where to listen (127.0.0.1:8000).

What a client sees:
    POST /mcp without a token      401, WWW-Authenticate: Bearer resource_metadata="...",
                                   scope="notes:read" (the scope to ask for first)
    GET  /.well-known/oauth-protected-resource/mcp
                                   the metadata: authorization server, scopes_supported
    tools/call of a tool whose scope the token lacks
                                   403 insufficient_scope, scope="<the tool's scopes>":
                                   the client steps up (asks for a broader token) and retries

Tools and their scopes (``notes:write`` implies ``notes:read``):
    add           no scope beyond a valid token
    whoami        no scope; reads the verified token
    read_notes    notes:read
    write_note    notes:write
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp

from bearerguard import BearerGuard, get_access_token
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.mcp import MCPToolScopes
from bearerguard.metadata import ResourceMetadata

TOOL_SCOPES = {"read_notes": ["notes:read"], "write_note": ["notes:write"]}
SCOPE_IMPLICATIONS = {"notes:write": ["notes:read"]}


def guard_from_env(environ: Mapping[str, str] | None = None) -> BearerGuard:
    """A guard for ``RESOURCE``, trusting ``ISSUER``."""
    env = os.environ if environ is None else environ
    issuer, resource = env.get("ISSUER"), env.get("RESOURCE")
    if not issuer or not resource:
        raise SystemExit("set ISSUER and RESOURCE to run this example")
    return create_guard(issuer, resource)


def create_guard(issuer: str, resource: str) -> BearerGuard:
    """The guard: the resource is the audience, and its metadata lists the scopes."""
    return BearerGuard(
        issuer=issuer,
        resource=resource,  # tokens must be issued for this server (aud), RFC 8707
        scope_implications=SCOPE_IMPLICATIONS,
        resource_metadata=ResourceMetadata(
            scopes_supported=["notes:read", "notes:write"],
            resource_name="Notes",
            # Named in every 401: clients ask for it first, and step up to notes:write.
            challenge_scopes=["notes:read"],
        ),
    )


def create_server() -> MCPServer:
    """The MCP server and its tools; it knows nothing of tokens but what it asks for."""
    server = MCPServer("notes")
    notes: list[str] = []
    lock = threading.Lock()

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def whoami(ctx: Context) -> str:
        """Who the verified token says is calling."""
        # The HTTP request of this very message: its token, never another session's.
        token = get_access_token(ctx.request_context.request)
        return "nobody" if token is None else token.subject or token.client_id or "?"

    @server.tool()
    def read_notes() -> list[str]:
        """Every note (scope notes:read)."""
        with lock:
            return list(notes)

    @server.tool()
    def write_note(text: str) -> int:
        """Add a note and return how many there are (scope notes:write)."""
        with lock:
            notes.append(text)
            return len(notes)

    return server


def create_app(guard: BearerGuard) -> ASGIApp:
    """The ASGI app: the guard in front, per-tool scopes, then the MCP transport."""
    # Stateless JSON responses: every POST is answered on its own, so each tool call is
    # authorized with the token it carries.
    mcp_app = create_server().streamable_http_app(stateless_http=True, json_response=True)
    return BearerGuardMiddleware(
        MCPToolScopes(mcp_app, tools=TOOL_SCOPES),
        guard=guard,
        warm_up=True,
    )


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        create_app(guard_from_env()),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
    )
