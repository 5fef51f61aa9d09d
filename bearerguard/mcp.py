"""Per-tool scopes for MCP servers over streamable HTTP, answered at the HTTP level.

The MCP authorization specification asks a server to refuse a call its token's scopes do
not cover with an HTTP 403 ``insufficient_scope`` challenge naming the scope to ask for
(step-up authorization, RFC 6750 §3.1), so the client can obtain a broader token and retry.
A tool function cannot answer that way: by the time it runs, the MCP transport has
committed to a 200 stream. ``MCPToolScopes`` therefore reads the JSON-RPC message of each
POST before the MCP app does, and refuses ``tools/call`` for a tool whose scopes the token
lacks (with the guard's ``scope_implications`` applied).

    app = BearerGuardMiddleware(
        MCPToolScopes(server.streamable_http_app(), tools={"delete_note": ["notes:write"]}),
        guard=guard,  # built with resource="https://notes.example/mcp"
    )

It needs no MCP package and sits inside ``BearerGuardMiddleware``, whose verdict it reads.

``GuardTokenVerifier`` serves servers that use the SDK's own resource-server auth instead
(``MCPServer(auth=AuthSettings(...), token_verifier=...)``): the SDK asks it about each
token, and bearerguard's verification, revocation and failure policy decide. Wrapped in
``SDKAuthAudit``, the SDK's app audits each request once, with its request line, the
SDK's own refusals included:

    app = SDKAuthAudit(server.streamable_http_app(), verifier=verifier)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from functools import cache
from time import perf_counter
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bearerguard._context import SCOPE_KEY, RequestAuth, presented_with
from bearerguard._core.extract import joined_request_ids
from bearerguard._core.scopes import validate_scope_names
from bearerguard._core.unicode import has_lone_surrogate
from bearerguard._stream import STREAM_KEY, RecheckedStream, absorbed
from bearerguard.asgi import TokenUser, _describe
from bearerguard.audit import RequestInfo
from bearerguard.decorators import ScopeRequirement, challenge_scopes, check_scopes
from bearerguard.errors import (
    AuthError,
    ConfigurationError,
    ExpiredTokenError,
    InsufficientScopeError,
    InvalidAudienceError,
    InvalidRequestError,
    MissingTokenError,
)
from bearerguard.guard import BearerGuard
from bearerguard.issuers import TrustedIssuers
from bearerguard.token import AccessToken

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken as SDKAccessToken

__all__ = ["DEFAULT_MAX_BODY_BYTES", "GuardTokenVerifier", "MCPToolScopes", "SDKAuthAudit"]

_log = logging.getLogger("bearerguard")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""The largest JSON-RPC POST body read for checking (the MCP SDK's own default limit)."""


class _Unreadable(Exception):  # noqa: N818 - a signal inside this module
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "name" members read differently by two parsers would let a call slip past the
    # check under one name and run under another: refuse duplicates outright.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _tool_calls(body: bytes) -> list[object]:
    """The names of the tools a JSON-RPC message (or batch) calls."""
    try:
        text = body.decode("utf-8")
        message = json.loads(text, object_pairs_hook=_strict_object, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Unreadable(400, -32700, "Parse error") from None
    if has_lone_surrogate(text, message):  # a tool name no UTF-8 encoder can carry
        raise _Unreadable(400, -32700, "Parse error")
    messages = message if isinstance(message, list) else [message]
    names: list[object] = []
    for item in messages:
        if isinstance(item, dict) and item.get("method") == "tools/call":
            params = item.get("params")
            names.append(params.get("name") if isinstance(params, dict) else None)
    return names


@cache
def _sdk_user() -> Callable[[AccessToken], TokenUser] | None:
    """A ``TokenUser`` the MCP SDK also takes for its own authenticated user, if it is installed.

    The SDK binds a stateful session (streamable HTTP ``Mcp-Session-Id``, the SSE
    transport's ``session_id``) to the principal that opened it, and answers 404 to any
    other: but only for a ``scope["user"]`` of its ``AuthenticatedUser`` type. Seeing a
    plain ``TokenUser``, it takes every caller for anonymous, and any valid token could
    use, read or end another principal's session. It reads ``client_id``, ``sub`` and
    ``iss`` from ``user.access_token``, which a bearerguard ``AccessToken`` provides.
    """
    try:
        from mcp.server.auth.middleware.bearer_auth import (  # noqa: PLC0415 - optional
            AuthenticatedUser,
        )
    except ImportError:  # pragma: no cover - the SDK is in the dev extra
        return None

    class MCPTokenUser(TokenUser, AuthenticatedUser):  # type: ignore[misc]
        def __init__(self, access_token: AccessToken) -> None:
            TokenUser.__init__(self, _principal_token(access_token))
            self.scopes = sorted(access_token.scopes)

    return MCPTokenUser


def _principal_token(token: AccessToken) -> AccessToken:
    """``token``, or for one naming no principal (no ``sub``, no client id), a copy whose
    ``client_id`` is ``token:`` and its fingerprint: a principal of its own.

    The SDK keys session ownership and ``requestState`` on ``(client_id, iss, sub)``, and
    compares what is left when components are missing: every such token of an issuer was
    one principal, and any of them could use, read or end the sessions of the others. The
    fingerprint (the audit events' ``token_fp``) is a hash of the token, which only its
    holder presents; a session then lasts as long as the token (after a refresh, 404: the
    client opens a new one). Fail closed: without a fingerprint, a name no request repeats.
    A client id claim in that namespace (``token:`` and another token's fingerprint, which
    every audit event shows) names no principal either: it would be that token's.
    """
    if token.subject or (token.client_id and not token.client_id.startswith("token:")):
        return token
    # Made once per verified token (the guard's cache hands every request the same one): a
    # dataclasses.replace costs several µs of each request. The token held: its id not reused.
    held = _PRINCIPALS.get(id(token))
    if held is not None and held[0] is token:
        return held[1]
    if not token.fingerprint:
        return dataclasses.replace(token, client_id=f"token:{secrets.token_hex(16)}")
    named = dataclasses.replace(token, client_id=f"token:{token.fingerprint}")
    if len(_PRINCIPALS) >= _MAX_PRINCIPALS:
        _PRINCIPALS.clear()
    _PRINCIPALS[id(token)] = (token, named)
    return named


# _principal_token's copies, by id(token), the token held; cleared when full.
_PRINCIPALS: dict[int, tuple[AccessToken, AccessToken]] = {}
_MAX_PRINCIPALS = 1024


@cache
def _sdk_auth_context() -> ContextVar[Any] | None:
    """The context variable the MCP SDK reads its authenticated user from, if installed.

    The SDK's ``get_access_token()`` reads it, and so does the principal binding of sealed
    ``requestState`` (MCP 2026-07-28 multi-round-trip requests): unset, every caller is
    anonymous there, and a ``requestState`` minted for one principal is accepted from any
    other. The SDK's own ``AuthContextMiddleware`` sets it only behind its own auth.
    """
    try:
        from mcp.server.auth.middleware.auth_context import (  # noqa: PLC0415 - optional
            auth_context_var,
        )
    except ImportError:  # pragma: no cover - the SDK is in the dev extra
        return None
    return auth_context_var


class _BodyTooLargeError(InvalidRequestError):
    """A POST body over ``max_body_bytes``: refused unread (413)."""

    status = 413


class MCPToolScopes:
    """Require scopes per MCP tool, refusing with 403 ``insufficient_scope`` before the call.

    Args:
        app: the MCP streamable HTTP application.
        tools: the scopes each tool needs (all of them), by tool name.
        default: the scopes needed by a tool not named in ``tools``; none beyond a valid
            token by default.
        max_body_bytes: larger POST bodies are refused with 413 rather than passed on
            unchecked.
        paths: the paths of the MCP endpoint as the MCP app routes them (e.g.
            ``["/mcp"]``, or the SSE transport's ``["/messages/"]``), each also covering
            itself under any prefix (``/api/mcp``, whether the MCP app is mounted above or
            inside the wrapped app) and the paths below it (``/messages/<anything>``);
            POSTs to other routes of the app (webhooks, uploads) pass through unread. By
            default every POST is read as JSON-RPC. Plain paths: no ``"/mcp/*"``.
        stream_recheck: check the token again before each further chunk of a streamed
            answer (a session's GET stream, a POST answered as an event stream), as
            ``BearerGuardMiddleware(stream_recheck=True)`` does: once it is expired or
            revoked the stream ends, audited once, and the client's reconnection is refused.
            On by default: an MCP stream lives as long as the client holds it.

    Every refusal is the RFC 6750 answer with ``resource_metadata`` when the guard has a
    resource, and one ``scope.denied`` audit event. A body that is not strict JSON is
    refused with a JSON-RPC parse error (400), and one over ``max_body_bytes`` with 413:
    what cannot be checked is not passed on, and the refusal is audited
    (``token.rejected``, ``invalid_request``). A batch is refused when any call in it is, its
    challenge naming the scopes of every call in it.

    Raises:
        ConfigurationError: an invalid scope name, path or size (here), or no
            ``BearerGuardMiddleware`` in front (at request time).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tools: Mapping[str, str | Iterable[str]],
        default: str | Iterable[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        paths: Iterable[str] | None = None,
        stream_recheck: bool = True,
    ) -> None:
        self.app = app
        self.stream_recheck = bool(stream_recheck)
        self.paths = _endpoint_paths(paths)
        self._paths = None if self.paths is None else frozenset(p.rstrip("/") for p in self.paths)
        self.tools = {
            name: validate_scope_names([scopes] if isinstance(scopes, str) else scopes)
            for name, scopes in tools.items()
        }
        # One scope as a string, as in tools: not one scope per character.
        default_scopes = (default,) if isinstance(default, str) else tuple(default)
        self.default = validate_scope_names(default_scopes) if default_scopes else ()
        if type(max_body_bytes) is not int or max_body_bytes < 1:
            # Compared with each body's size: None or "4MB" made every POST a 500.
            raise ConfigurationError("max_body_bytes must be a positive integer")
        self.max_body_bytes = max_body_bytes
        self._sdk_user = _sdk_user()
        self._sdk_context = _sdk_auth_context()

    def required(self, tool: object) -> tuple[str, ...]:
        """The scopes a call of ``tool`` needs."""
        return self.tools.get(tool, self.default) if isinstance(tool, str) else self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = scope.get(SCOPE_KEY) if scope["type"] == "http" else None
        verdict = found if isinstance(found, RequestAuth) else None
        token = None if verdict is None else verdict.token
        # Unless the middleware in front rechecks the stream already (its stream_recheck):
        # an ended stream is audited once.
        if verdict is None or token is None or not self.stream_recheck or STREAM_KEY in scope:
            await self._serve(scope, receive, send, token)
            return
        stream = RecheckedStream(verdict.guard, token, verdict, receive, send, scope=scope)
        scope[STREAM_KEY] = stream
        try:
            await self._serve(scope, stream.receive, stream.send, token)
        except Exception as error:
            # What the stream raised once it ended it (ASGI HTTP spec 2.4): audited, and
            # the client has the end; as a server, catch it and log nothing.
            if not absorbed(error):
                raise

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, token: AccessToken | None
    ) -> None:
        if token is None or self._sdk_user is None:
            await self._check(scope, receive, send)
            return
        # Session ownership (MCP security best practices: bind sessions to the user), for
        # every method: GET streams and DELETE end sessions too.
        user = scope["user"] = self._sdk_user(token)
        context = self._sdk_context
        if context is None:  # pragma: no cover - both come with the SDK
            await self._check(scope, receive, send)
            return
        # And the SDK's get_access_token() and requestState binding, as its own
        # AuthContextMiddleware would set them.
        reset = context.set(user)
        try:
            await self._check(scope, receive, send)
        finally:
            context.reset(reset)

    async def _check(self, scope: Scope, receive: Receive, send: Send) -> None:
        paths = self._paths
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or (paths is not None and not _on_paths(scope, paths))
        ):
            await self.app(scope, receive, send)
            return
        auth = scope.get(SCOPE_KEY)
        if not isinstance(auth, RequestAuth):
            raise ConfigurationError("MCPToolScopes needs BearerGuardMiddleware in front of it")
        try:
            body = await self._read(receive)
            calls = _tool_calls(body)
        except _Unreadable as unreadable:
            # A refusal like any other: audited (token.rejected, invalid_request).
            error = (_BodyTooLargeError if unreadable.status == 413 else InvalidRequestError)(
                f"MCP request body: {unreadable.message}"
            )
            error.binding = presented_with(auth.guard, auth.token)  # as its token.accepted
            auth.guard.audit.refused(error, auth, perf_counter() - auth.started, token=auth.token)
            await _send(
                send,
                unreadable.status,
                [(b"content-type", b"application/json")],
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": unreadable.code, "message": unreadable.message},
                    }
                ).encode(),
            )
            return
        needed = [self.required(tool) for tool in calls]
        # RFC 6750 §3.1: the challenge names the scope the request needs. For a batch, every
        # call's: a client that steps up to the first failing call's alone is refused the
        # next (as challenge_scopes names every check of stacked decorators).
        hint = (
            (lambda: challenge_scopes(map(ScopeRequirement, needed), auth))
            if len(needed) > 1
            else None
        )
        for required in needed:
            # "None beyond a valid token" still needs one: on a public path reached without
            # credentials a call is refused 401, as requires_scopes() refuses it.
            needs_check = required or auth.token is None
            denied = check_scopes(auth, required, any_of=False, hint=hint) if needs_check else None
            if denied is not None:
                refusal = denied[1]
                headers = [(n.encode(), v.encode("latin-1")) for n, v in refusal.headers]
                await _send(send, refusal.status, headers, refusal.body)
                return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                raise _Unreadable(400, -32600, "Invalid Request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Unreadable(413, -32600, "Request body too large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _endpoint_paths(paths: Iterable[str] | None) -> frozenset[str] | None:
    """``paths`` checked: an entry that can never match leaves every tool call unchecked.

    Raises:
        ConfigurationError: a string, no path at all, a relative path, or one with a
            wildcard, query or fragment (``"/mcp/*"``, as ``public_paths`` spells a prefix).
    """
    if paths is None:
        return None
    if isinstance(paths, str):
        raise ConfigurationError("paths is an iterable of paths: ['/mcp'], not a string")
    entries = frozenset(paths)
    if not entries:
        raise ConfigurationError("paths is empty: no POST would be checked (None checks all)")
    for entry in entries:
        if not isinstance(entry, str) or not entry.startswith("/"):
            raise ConfigurationError(f"paths are absolute: '/mcp', not {entry!r}")
        if any(char in entry for char in "*?#"):
            raise ConfigurationError(
                f"paths are plain paths: '/mcp' covers itself under any prefix and the "
                f"paths below it; no wildcard, query or fragment: {entry!r}"
            )
    return entries


def _on_paths(scope: Scope, paths: frozenset[str]) -> bool:
    """Whether the request is for one of ``paths``, under any prefix.

    The MCP app routes on what follows its mount point, wherever that is: above this
    middleware (``root_path``), or inside the app it wraps (``Mount("/api", mcp_app)``,
    which no scope field reveals here). ``/mcp`` must match ``/api/mcp`` either way: a
    path matched in excess is only read as JSON-RPC, one missed runs tools unchecked.
    """
    # Starlette's route patterns end in "$", which Python's re matches before a final
    # newline too: /mcp%0A is routed to Route("/mcp"), and must be read as /mcp is.
    path: str = scope["path"].rstrip("\n")
    # And what lies below: Mount("/messages/") (the SSE transport's message endpoint)
    # routes /messages/<anything> to the same app.
    return any(path.endswith(entry) or f"{entry}/" in path for entry in paths)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Write an answer raw, stating its length: without it an HTTP/1.1 server chunks the
    body, and an HTTP/1.0 client's connection is closed to end it (RFC 9112 §6.3)."""
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# The SDK hands a token verifier the token alone: no request line, no client address.
_SDK_REQUEST = RequestInfo("-", "-", None, None)
# What the SDK answers when its verifier refuses a token (RequireAuthMiddleware).
_SDK_REFUSAL_STATUS = 401
# The scope named by the SDK's 403 (RequireAuthMiddleware's error_description).
_SDK_REQUIRED_SCOPE = re.compile(r'error_description="Required scope: ([^"\s]+)"')


class _Exchange:
    """One request served by ``SDKAuthAudit``: the verifier's verdict, held until the SDK's
    answer shows what was decided, then audited once."""

    __slots__ = (
        "decided",
        "error",
        "expires_at",
        "guard",
        "latency",
        "request",
        "started",
        "token",
    )

    def __init__(
        self, guard: BearerGuard | TrustedIssuers, request: RequestInfo, started: float
    ) -> None:
        self.guard = guard  # the wrapper's; the verifier's once it is called
        self.request = request
        self.started = started
        self.token: AccessToken | None = None
        self.error: AuthError | None = None
        self.latency = 0.0
        self.expires_at: int | None = None  # what the SDK was told
        self.decided = False

    def verified(
        self,
        guard: BearerGuard | TrustedIssuers,
        outcome: AccessToken | AuthError,
        expires_at: int | None = None,
    ) -> None:
        """Hold the verifier's verdict: the SDK may still refuse an accepted token."""
        self.guard = guard
        self.latency = perf_counter() - self.started
        if isinstance(outcome, AuthError):
            self.error = outcome
        else:
            self.token, self.expires_at = outcome, expires_at

    def went_on(self) -> None:
        """The SDK let the request on to its app, which reads the body: the SDK refuses
        unread, so an accepted token's decision is final (and audited before the tool runs)."""
        if self.token is not None:
            self.decided = True
            self.guard.audit.accepted(self.token, self.request, self.latency)

    def answered(self, status: int | None, challenge: str | None) -> None:
        """The answer began with ``status`` (``None``: it never did) and ``challenge``, its
        ``Bearer`` ``WWW-Authenticate`` value: audit what was decided."""
        self.decided = True
        audit, request, token = self.guard.audit, self.request, self.token
        latency = perf_counter() - self.started
        # Only the SDK's refusals carry a Bearer challenge: RequireAuthMiddleware's 401 for
        # a request it did not authenticate, its 403 for AuthSettings.required_scopes.
        refused_by_sdk = challenge is not None and status in {401, 403}
        if token is not None:
            if not refused_by_sdk:
                audit.accepted(token, request, self.latency)
            elif status == 403:
                audit.refused(_sdk_scope_refusal(challenge or ""), request, latency, token=token)
            else:
                audit.refused(self._after_verifier(), request, latency, token=token)
        elif self.error is not None:
            # A route the SDK serves without auth (its metadata) answers as usual: say so.
            answered = _SDK_REFUSAL_STATUS if status is None or refused_by_sdk else status
            audit.refused(self.error, request, self.latency, status=answered)
        elif refused_by_sdk:
            # The SDK looks for "Bearer " alone and calls no verifier without it.
            audit.refused(MissingTokenError("no bearer credentials"), request, latency)

    def _after_verifier(self) -> AuthError:
        """Why the SDK's BearerAuthBackend refused a token the verifier accepted: its
        ``expires_at`` passed meanwhile, or its ``resource`` is not ``resource_server_url``."""
        if self.expires_at is not None and self.expires_at < int(time.time()):
            return ExpiredTokenError("the MCP SDK refused it past its expires_at")
        return InvalidAudienceError(
            "the MCP SDK refused its resource: not AuthSettings.resource_server_url "
            "(validate_token_resource)"
        )


def _sdk_scope_refusal(challenge: str) -> InsufficientScopeError:
    """The SDK's 403 for ``AuthSettings.required_scopes``, as the audit records it: its
    challenge names the first scope missing (RFC 6750 §3.1 ``insufficient_scope``)."""
    named = _SDK_REQUIRED_SCOPE.search(challenge)
    return InsufficientScopeError(
        () if named is None else (named.group(1),),
        detail="the MCP SDK's required_scopes (AuthSettings) refused it",
    )


_AUDITED_SCOPES = frozenset({"http", "websocket"})


def _answer_status(message: Message) -> int | None:
    """The status an answer begins with, or ``None`` if ``message`` begins none. A websocket
    accepted is 101; one closed before it was accepted is the server's 403 (ASGI spec)."""
    kind = message["type"]
    if kind in ("http.response.start", "websocket.http.response.start"):
        status: int = message["status"]
        return status
    return {"websocket.accept": 101, "websocket.close": 403}.get(kind)


def _bearer_challenge(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The response's ``WWW-Authenticate`` value when it is a ``Bearer`` challenge."""
    for name, value in headers:
        if name.lower() == b"www-authenticate" and value[:7].lower() == b"bearer ":
            return value.decode("latin-1")
    return None


# The request SDKAuthAudit serves, for the verifier the SDK calls while it does: the SDK's
# AuthenticationMiddleware calls it in the request's own task, so the variable reaches it.
_EXCHANGE: ContextVar[_Exchange | None] = ContextVar("bearerguard_sdk_exchange", default=None)


class GuardTokenVerifier:
    """The MCP SDK's ``TokenVerifier``, verifying with a ``BearerGuard`` or ``TrustedIssuers``.

    For servers that use the SDK's own resource-server auth::

        server = MCPServer(
            "notes",
            token_verifier=GuardTokenVerifier(guard),  # guard built with resource=RESOURCE
            auth=AuthSettings(
                issuer_url=ISSUER,
                resource_server_url=RESOURCE,
                required_scopes=["notes:read"],
                validate_token_resource=True,
            ),
        )

    Each token goes through the guard's ``authenticate``: signature, claims, audience,
    revocation and the failure policy. An accepted token is answered as the SDK's
    ``AccessToken``, a refused one as ``None`` (the SDK's 401). A dependency that cannot
    answer (keys, revocation store) is refused too, audited as ``auth.unavailable``: the
    SDK can answer a verifier only with 401, or a 500 for an exception.

    Audit: wrap the SDK's app in ``SDKAuthAudit`` and each request is one event on the
    guard's audit log, with its method, path, client address and request id, the SDK's own
    refusals included (no token, ``required_scopes``). Outside it, the SDK passes no
    request: each verification is one event with ``method`` and ``path`` ``"-"``, and the
    SDK's own refusals are not audited (a 403 follows the token's ``token.accepted``).

    The SDK's ``AccessToken``:

    - ``client_id``: the token's client id (``client_id``, ``azp``, ``cid``, ``appid``),
      else ``""`` (the field is a string). A token naming neither a client nor a subject
      gets ``token:`` and its fingerprint, a principal of its own: the SDK binds sessions
      and ``requestState`` to (``client_id``, ``iss``, ``sub``), which would otherwise be
      the same for every such token of an issuer.
    - ``scopes``: the granted scopes with those ``scope_implications`` imply (the SDK's
      ``required_scopes`` check reads this list).
    - ``expires_at``: ``exp`` plus the guard's ``leeway``, when the guard stops accepting
      the token. The SDK refuses a token past ``expires_at`` with no leeway: given ``exp``,
      it would refuse tokens the guard accepted and audited as accepted. ``claims["exp"]``
      keeps the token's own.
    - ``resource``: the guard's ``resource`` when the token's ``aud`` names it (whatever
      else it names), else the guard's audience it names (for
      ``AuthSettings.validate_token_resource``); the
      guard's ``resource`` for an opaque token accepted without ``aud`` from an
      introspector built with ``audience_checked_by_server=True``.
    - ``subject`` and ``claims`` (``iss`` always among them).

    Args:
        guard: the guard (or guards) that verifies tokens.
        scopes_supported: scope names to list in ``scopes`` when an implied prefix
            (``{"notes:admin": ["notes:*"]}``) covers them: a prefix itself cannot be
            listed. Give it the ``AuthSettings.required_scopes``.

    Raises:
        ConfigurationError: a guard that checks DPoP proofs or client certificates: the
            SDK hands its verifier neither, so every bound token would be refused.
    """

    def __init__(
        self, guard: BearerGuard | TrustedIssuers, *, scopes_supported: Iterable[str] = ()
    ) -> None:
        if not isinstance(guard, BearerGuard | TrustedIssuers):
            raise ConfigurationError("GuardTokenVerifier takes a BearerGuard or TrustedIssuers")
        if guard.dpop is not None or guard.mtls is not None:
            raise ConfigurationError(
                "the MCP SDK passes its token verifier no DPoP proof nor client certificate: "
                "protect the server with BearerGuardMiddleware instead"
            )
        supported = (scopes_supported,) if isinstance(scopes_supported, str) else scopes_supported
        self.scopes_supported = validate_scope_names(tuple(supported)) if supported else ()
        self.guard = guard
        self._sdk_token = _sdk_access_token()
        self._unwrapped_told = False

    def __repr__(self) -> str:
        return f"GuardTokenVerifier({self.guard!r})"

    async def verify_token(self, token: str) -> SDKAccessToken | None:
        """The SDK's ``AccessToken`` for ``token``, or ``None`` when it is refused."""
        guard = self.guard
        exchange = _EXCHANGE.get()
        if exchange is not None and not exchange.decided:
            # Inside SDKAuthAudit: it audits once the SDK's answer shows the decision.
            request = exchange.request
            try:
                access = await guard.authenticate(token, client=request.client, request=request)
            except AuthError as error:
                exchange.verified(guard, error)
                return None
            answer = self._answer(token, access)
            exchange.verified(guard, access, answer.expires_at)
            return answer
        if exchange is None and not self._unwrapped_told:
            self._unwrapped_told = True
            _log.warning(
                "bearerguard: GuardTokenVerifier is called outside SDKAuthAudit: its audit "
                "events name no request, and the MCP SDK's own refusals (no token, "
                "required_scopes) are not audited"
            )
        request = _SDK_REQUEST if exchange is None else exchange.request
        started = perf_counter()
        try:
            access = await guard.authenticate(token, client=request.client, request=request)
        except AuthError as error:
            latency = perf_counter() - started
            guard.audit.refused(error, request, latency, status=_SDK_REFUSAL_STATUS)
            return None
        guard.audit.accepted(access, request, perf_counter() - started)
        return self._answer(token, access)

    def _answer(self, token: str, access: AccessToken) -> SDKAccessToken:
        guard = self.guard
        # The guard that accepted the token: its leeway and audiences.
        verifier = (
            guard.verifier_of(access) or guard.primary
            if isinstance(guard, TrustedIssuers)
            else guard
        )
        scopes = guard.scope_implications.reached(access.scopes, self.scopes_supported)
        claims = dict(access.claims)
        claims.setdefault("iss", access.issuer)  # an introspection answer may leave it out
        return self._sdk_token(
            token=token,
            client_id=_principal_token(access).client_id or "",
            scopes=sorted(scopes),
            # The SDK refuses once int(time.time()) exceeds it, with no leeway of its own:
            # floored, it lapses when the guard's acceptance (exp + leeway) does.
            expires_at=int(access.expires_at.timestamp() + verifier.leeway),
            resource=_resource_of(verifier, access),
            subject=access.subject,
            claims=claims,
        )


def _resource_of(guard: BearerGuard, token: AccessToken) -> str | None:
    """The guard's audience ``token`` was accepted for: its ``resource`` when the ``aud``
    names one of its spellings (RFC 8707 §2), whatever else it names; else the first of the
    guard's audiences it names.

    A token accepted with no ``aud`` at all is an introspected one whose server checks the
    audience itself (``Introspector(audience_checked_by_server=True)``): it answered active
    only for a token meant for this resource server, so the ``resource`` is the guard's.
    """
    if not token.audience:
        return guard.resource
    matched = [name for name in guard.audiences if name in token.audience]
    resource = guard.resource
    # Naming the resource among the guard's other audiences, the token is for it (RFC 8707
    # §2): the first matched would have the SDK refuse a token issued for this very server.
    if resource is not None and any(name.rstrip("/") == resource.rstrip("/") for name in matched):
        return resource
    return matched[0] if matched else None


def _sdk_access_token() -> type[SDKAccessToken]:
    try:
        from mcp.server.auth.provider import (  # noqa: PLC0415 - optional
            AccessToken as SDKAccessToken,
        )
    except ImportError:  # pragma: no cover - the SDK is in the dev extra
        raise ConfigurationError("GuardTokenVerifier needs the MCP SDK: pip install mcp") from None
    return SDKAccessToken


class SDKAuthAudit:
    """ASGI middleware around an MCP SDK app whose auth uses ``GuardTokenVerifier``: one
    audit event per request, naming the request, the SDK's own refusals included.

    The SDK calls its token verifier with the token alone, and answers some requests
    without calling it at all. Around the SDK's app (``streamable_http_app()``,
    ``sse_app()``)::

        verifier = GuardTokenVerifier(guard)
        server = MCPServer("notes", token_verifier=verifier, auth=AuthSettings(...))
        app = SDKAuthAudit(server.streamable_http_app(), verifier=verifier)

    each request's event carries its ``method``, ``path``, ``client`` address and
    ``request_id`` (``X-Request-ID``), and records the decision the SDK answered:

    - ``token.accepted`` for a token the verifier accepted and the SDK let through,
      emitted when the SDK's app first reads the request (before a tool runs) or answers;
    - the verifier's refusal (``token.rejected``, ``auth.unavailable``), status 401;
    - ``scope.denied`` (403) for a token the verifier accepted and the SDK then refused
      for ``AuthSettings.required_scopes``: ``required_scopes`` is the scope its challenge
      names, the first one missing;
    - ``token.rejected`` (401) for a token the verifier accepted and the SDK's own checks
      then refused: ``invalid_audience`` when its ``resource`` is not the SDK's
      ``resource_server_url`` (``validate_token_resource``), ``expired`` past its
      ``expires_at``;
    - ``token.rejected`` ``missing_token`` (401) for a request without a Bearer token,
      which the SDK refuses without calling the verifier;
    - on a route the SDK serves without auth (its metadata), no event without a token, and
      a refused token's event with the ``status`` the SDK answered;
    - a websocket handshake, whose token the SDK's auth middleware verifies too, likewise
      (method ``WEBSOCKET``; ``status`` 403 when it is closed before being accepted, as
      the SDK's app, with no websocket route, closes it).

    An answer's ``401`` or ``403`` with a ``Bearer`` challenge is taken for the SDK's
    refusal: it is how the SDK refuses, and the app behind it has no such answer of its
    own. Starlette's ``app.add_middleware(SDKAuthAudit, verifier=verifier)`` on the SDK's
    app places it the same way, around the SDK's auth middleware.

    Args:
        app: the MCP SDK's ASGI app.
        verifier: the ``GuardTokenVerifier`` given to the server as its ``token_verifier``;
            its guard audits the requests the SDK refuses without calling it.

    Raises:
        ConfigurationError: ``verifier`` is not a ``GuardTokenVerifier``.
    """

    def __init__(self, app: ASGIApp, *, verifier: GuardTokenVerifier) -> None:
        if not isinstance(verifier, GuardTokenVerifier):
            raise ConfigurationError("SDKAuthAudit takes the server's GuardTokenVerifier")
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Inside another SDKAuthAudit, that one audits the request. A websocket handshake
        # too: the SDK's auth middleware verifies its token as a request's.
        if scope["type"] not in _AUDITED_SCOPES or _EXCHANGE.get() is not None:
            await self.app(scope, receive, send)
            return
        request_id = joined_request_ids(scope["headers"]) or None
        exchange = _Exchange(
            self.verifier.guard, RequestInfo(*_describe(scope, request_id)), perf_counter()
        )

        async def receive_on() -> Message:
            if not exchange.decided:
                exchange.went_on()
            return await receive()

        async def send_on(message: Message) -> None:
            status = None if exchange.decided else _answer_status(message)
            if status is not None:
                exchange.answered(status, _bearer_challenge(message.get("headers", ())))
            await send(message)

        reset = _EXCHANGE.set(exchange)
        try:
            await self.app(scope, receive_on, send_on)
        finally:
            _EXCHANGE.reset(reset)
            if not exchange.decided:  # no answer began: the client went away, or the app
                exchange.answered(None, None)
