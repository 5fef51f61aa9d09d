"""Property-based tests of ``MCPToolScopes``: whatever body a client posts, and however it is
chunked, a tool the token lacks the scope for never runs, and nothing fails open.

The oracle is the MCP SDK's own reading of a body (``pydantic_core.from_json``, as its
streamable HTTP transport parses it): whenever that reading is a ``tools/call`` of the
protected tool, the MCP app behind must not be reached. Each request is answered without a
5xx, audited as ``token.accepted`` and at most one refusal, whose status is the answer's.
The paths posted to include those Starlette routes to ``/mcp`` with a final newline
(``/mcp%0A``: its route patterns end in ``$``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send
from structlog.testing import capture_logs

from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.mcp import MCPToolScopes
from bearerguard.testing import DevIssuer
from tests.test_properties import MIDDLEWARE_PROFILE

pydantic_core = pytest.importorskip("pydantic_core", reason="the MCP SDK's JSON parser, the oracle")
pytestmark = pytest.mark.anyio

PROTECTED = "write"


async def mcp_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The MCP app's place: reads the body, answers 200 saying it ran."""
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ran"})


def sdk_calls(body: bytes) -> list[object]:
    """The tool names the SDK would read from ``body`` (a batch read item by item)."""
    try:
        message = pydantic_core.from_json(body)
    except ValueError:
        return []
    names = []
    for item in message if isinstance(message, list) else [message]:
        if isinstance(item, dict) and item.get("method") == "tools/call":
            params = item.get("params")
            names.append(params.get("name") if isinstance(params, dict) else None)
    return names


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
names = st.just(PROTECTED) | st.sampled_from(["read", "", "Write", "write ", "w\u0000rite"])
names |= json_values
calls = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": st.sampled_from(["tools/call", "tools/list"])},
    optional={
        "id": json_values,
        "params": st.fixed_dictionaries({}, optional={"name": names, "arguments": json_values})
        | json_values,
    },
)
tool_calls = st.fixed_dictionaries(
    {
        "jsonrpc": st.just("2.0"),
        "id": json_values,
        "method": st.just("tools/call"),
        "params": st.fixed_dictionaries({"name": names}, optional={"arguments": json_values}),
    }
)
messages = tool_calls | st.lists(tool_calls | calls, min_size=1, max_size=3) | calls | json_values


def encoded(message: object, style: str) -> bytes:
    """``message`` as JSON, written as a client might: compact, escaped, with duplicates."""
    if style == "ascii":
        return json.dumps(message, ensure_ascii=True).encode()
    text = json.dumps(message, ensure_ascii=False)
    if style == "escaped":
        text = text.replace("tools/call", "tools\\/call").replace('"write"', '"\\u0077rite"')
    elif style == "duplicated":
        text = text.replace('"name": ', '"name": "read", "name": ', 1)
    elif style == "bom":
        text = "\ufeff" + text
    return text.encode("utf-8", "surrogatepass")


bodies = st.builds(
    encoded, messages, st.sampled_from(["ascii", "utf8", "escaped", "duplicated", "bom"])
) | st.binary(max_size=64)


class Target:
    """``MCPToolScopes`` (``paths=["/mcp"]``) behind the middleware, and a token without the
    protected tool's scope."""

    def __init__(self, issuer: DevIssuer) -> None:
        checked = MCPToolScopes(
            mcp_app, tools={PROTECTED: ["notes:write"]}, paths=["/mcp"], max_body_bytes=4096
        )
        self.app = BearerGuardMiddleware(checked, guard=issuer.guard(in_process=True))
        self.token = issuer.mint(scopes=["notes:read"])

    async def post(self, path: str, chunks: list[bytes]) -> tuple[int, bytes, list[Any]]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"testserver"),
                (b"authorization", f"Bearer {self.token}".encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        pending = list(chunks)
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            body = pending.pop(0) if pending else b""
            return {"type": "http.request", "body": body, "more_body": bool(pending)}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        with capture_logs() as events:
            await self.app(scope, receive, send)
        for audit in events:
            orjson.dumps(audit)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), events


@pytest.fixture(scope="module")
def target(session_issuer: DevIssuer) -> Target:
    return Target(session_issuer)


@settings(MIDDLEWARE_PROFILE)
@given(
    body=bodies,
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=3),
    path=st.sampled_from(["/mcp", "/mcp\n", "/mcp/", "/api/mcp", "/api/mcp\n"]),
)
async def test_a_protected_tool_never_runs_without_its_scope(
    target: Target, body: bytes, cuts: list[int], path: str
) -> None:
    edges = sorted({0, len(body), *(cut % (len(body) + 1) for cut in cuts)})
    chunks = [body[start:end] for start, end in itertools.pairwise(edges)] or [b""]
    status, answer, events = await target.post(path, chunks)
    event(f"status {status}")
    assert status in (200, 400, 403, 413), status
    if PROTECTED in sdk_calls(body):
        assert status != 200, body
    assert (answer == b"ran") == (status == 200)
    kinds = [audit["event"] for audit in events]
    assert kinds[0] == "token.accepted"
    assert len(kinds) == (1 if status == 200 else 2), kinds
    if status != 200:
        assert events[1]["status"] == status
    assert target.token.rsplit(".", 1)[1] not in repr(events)
