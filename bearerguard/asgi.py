"""``BearerGuardMiddleware``: the guard as pure ASGI middleware (Starlette, FastAPI, any ASGI app).

Every HTTP request and websocket handshake is authenticated before the app sees it, except
on public paths reached without credentials. The verified token is put where Starlette looks
(``scope["auth"]`` and ``scope["user"]``, so ``request.auth``, ``request.user`` and
``starlette.authentication.requires`` work) and where ``get_access_token`` and
``requires_scopes`` find it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from time import perf_counter
from typing import Literal
from urllib.parse import unquote_to_bytes

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bearerguard._context import (
    SCOPE_KEY,
    Refused,
    RequestAuth,
    already_let_in,
    current_auth,
    refusal_for,
)
from bearerguard._core.dpop import server_authority
from bearerguard._core.extract import (
    bound_credentials,
    has_query_token,
    is_query_token,
    joined_request_ids,
    redact_query_token,
    request_credentials,
)
from bearerguard._core.paths import PublicPaths
from bearerguard._core.refusal import Refusal
from bearerguard._stream import STREAM_KEY, RecheckedStream, absorbed
from bearerguard._websocket import RecheckedWebSocket
from bearerguard.audit import RequestInfo
from bearerguard.decorators import (
    attribute_of,
    misplaced_decorators,
    unchecked_endpoints,
    wrapped_app,
)
from bearerguard.dpop import DPoPPolicy, DPoPRequest, dpop_request
from bearerguard.errors import (
    AuthError,
    ConfigurationError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from bearerguard.guard import BearerGuard
from bearerguard.issuers import TrustedIssuers
from bearerguard.metadata import WELL_KNOWN_PATH, ProtectedResource
from bearerguard.mtls import binding_of, scope_certificate
from bearerguard.token import AccessToken

__all__ = [
    "WEBSOCKET_TOKEN_PROTOCOL_PREFIX",
    "BearerGuardMiddleware",
    "PublicPaths",
    "TokenCredentials",
    "TokenUser",
]

_log = logging.getLogger("bearerguard")
_new_auth = object.__new__
_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
WebSocketCredential = Literal["subprotocol", "query"]

WEBSOCKET_TOKEN_PROTOCOL_PREFIX = "bearer."  # noqa: S105 - a prefix, not a secret
"""With ``websocket_credentials=["subprotocol"]``: the offered subprotocol ``bearer.<token>``
carries the token (browsers cannot set headers on a websocket handshake)."""


class TokenUser(BaseUser):
    """The Starlette user of a request authenticated by a token.

    ``access_token`` is read-only: one instance serves every request that reuses the token,
    so it cannot be changed by one of them.
    """

    __slots__ = ("_access_token",)

    def __init__(self, access_token: AccessToken) -> None:
        self._access_token = access_token

    @property
    def access_token(self) -> AccessToken:
        """The verified token."""
        return self._access_token

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.access_token.subject or self.access_token.client_id or ""

    @property
    def identity(self) -> str:
        return self.access_token.subject or ""


class TokenCredentials(AuthCredentials):
    """Starlette's ``request.auth`` for a request authenticated by a token.

    ``scopes`` holds the token's scopes, sorted, as a tuple, and is read-only: one instance
    serves every request that reuses the token, so it cannot be changed (nor rebound) by
    one of them.
    """

    __slots__ = ("_scopes",)

    def __init__(self, access_token: AccessToken) -> None:
        # Not AuthCredentials.__init__: it only assigns the list this property replaces.
        self._scopes = tuple(sorted(access_token.scopes))

    @property
    def scopes(self) -> tuple[str, ...]:  # type: ignore[override]
        """The token's scopes, sorted."""
        return self._scopes


def _unchecked_routes(scope: Scope, app: ASGIApp) -> list[str]:
    """Routes behind this middleware whose scope decorator never runs (see
    ``unchecked_endpoints``): those of the app it wraps, else of the scope's app.

    The app it wraps: a middleware added with ``add_middleware`` finds the Starlette app's
    router there, and one wrapping an app mounted under another (``Mount("/api",
    app=BearerGuardMiddleware(api))``) finds ``api``, where ``scope["app"]`` is the outer
    app, whose other routes it does not guard (one may serve public a function that ``api``
    serves scoped). The scope's app when a middleware below holds the next app under a
    name the walk does not know (``app_layers``), so that no routes are found under it.
    A Flask app under asgiref's ``WsgiToAsgi`` is found by its views: the last layer
    reached may be a wrapper of its ``wsgi_app`` instead.
    """
    own = wrapped_app(app, "routes", "view_functions")
    found = unchecked_endpoints(own)
    outer = scope.get("app")
    if outer is not None and outer is not own and attribute_of(own, "routes") is None:
        found += [route for route in unchecked_endpoints(outer) if route not in found]
    return found


async def _refuse_startup(receive: Receive, send: Send, unchecked: list[str]) -> None:
    """Fail the application's start-up (the server exits) rather than serve those routes.

    As Starlette's own lifespan does: ``lifespan.startup.failed``, then the error raised.
    """
    text = misplaced_decorators(unchecked)
    message = await receive()
    if message["type"] == "lifespan.startup":
        await send({"type": "lifespan.startup.failed", "message": text})
    raise ConfigurationError(text)


async def _serve_metadata(resource: ProtectedResource, scope: Scope, send: Send) -> None:
    """Answer a request for the protected-resource metadata (RFC 9728 §3)."""
    _redact_query_token(scope)  # served without a token check: still nothing to log
    status, headers, body = resource.response(scope["method"])
    raw = [(name.encode(), value.encode()) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _respond(refusal: Refusal) -> Response:
    return Response(refusal.body, status_code=refusal.status, headers=dict(refusal.headers))


def _describe(scope: Scope, request_id: bytes | None) -> tuple[str, str, str | None, str | None]:
    """Method, path, client address and request id, as the audit log records them.

    The address is ``None`` when the server gives none: ``client`` absent or ``None``, or a
    host of ``""`` (granian, gunicorn on a Unix socket), which is no address either.

    The cache-hit fast path in ``BearerGuardMiddleware.__call__`` writes the same four
    values inline (no frame, no tuple): a change here belongs there too.
    """
    client = scope.get("client")
    return (
        scope.get("method", "WEBSOCKET"),
        scope["path"],
        (client[0] or None) if client else None,
        request_id.decode("latin-1") if request_id else None,
    )


def _websocket_credentials(
    scope: Scope, authorization: list[bytes], allowed: frozenset[str]
) -> tuple[list[bytes], bytes]:
    """The credentials of a browser's handshake, where the opt-ins allow them.

    Returns the ``Authorization`` values and query string to apply the common rules to. A
    token found in a subprotocol or the query is handed on as a header value, so it meets
    the same b64token and size checks; the subprotocol and the query parameter are removed
    from what the app sees, so they can never be echoed back or logged by the app (or by
    the server, which logs the scope's query string). Two methods at once are refused
    (RFC 6750 §2: a client uses one method per request).
    """
    found: list[bytes] = []
    query = _query_string(scope)
    if "subprotocol" in allowed:
        offered = list(scope.get("subprotocols") or ())
        tokens = [p for p in offered if p.startswith(WEBSOCKET_TOKEN_PROTOCOL_PREFIX)]
        if tokens:
            # By the same test, not by membership in tokens: that was quadratic in the
            # number offered (uvicorn's websockets parser passes ~1 MB of them).
            kept = [p for p in offered if not p.startswith(WEBSOCKET_TOKEN_PROTOCOL_PREFIX)]
            scope["subprotocols"] = kept
            # The raw header carries them too (RFC 6455 §4.1): rewritten without the token.
            headers = [(n, v) for n, v in scope["headers"] if n != b"sec-websocket-protocol"]
            if kept:
                try:
                    header = ", ".join(kept).encode("latin-1")  # as servers decode it
                except UnicodeEncodeError:
                    raise InvalidRequestError("a subprotocol that is not latin-1 text") from None
                headers.append((b"sec-websocket-protocol", header))
            scope["headers"] = headers
            found.extend(p[len(WEBSOCKET_TOKEN_PROTOCOL_PREFIX) :].encode() for p in tokens)
    if "query" in allowed and has_query_token(query):
        parts = query.split(b"&")
        found.extend(
            unquote_to_bytes(part.partition(b"=")[2]) for part in parts if is_query_token(part)
        )
        query = b"&".join(part for part in parts if not is_query_token(part))
        # Out of what the app and the server see too: uvicorn logs the handshake's URL
        # from this scope once the app accepts or refuses it (RFC 6750 §5.3). Given as
        # text, it is left as text: the app was handed it so.
        text = isinstance(scope.get("query_string"), str)
        scope["query_string"] = query.decode("utf-8", "surrogatepass") if text else query
    if not found:
        return authorization, query
    if authorization or len(found) > 1:
        raise InvalidRequestError("bearer credentials sent by more than one method")
    return [b"Bearer " + found[0]], query


def _authorization(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every ``Authorization`` value of an ASGI header list, as bytes.

    ASGI says bytes; a ``bytearray`` or ``memoryview`` value, which Starlette reads as well,
    is read as the bytes it holds (the extraction rules and the cache need ``bytes``).
    """
    return [bytes(value) for name, value in headers if name == b"authorization"]


def _query_string(scope: Scope) -> bytes:
    """The scope's query string as bytes, which the extraction rules read.

    ASGI says bytes; Django's AsyncClient and some test tools put text there, read back as
    the bytes it stands for (``surrogatepass`` keeps any lone surrogate). A ``bytearray``
    or ``memoryview`` is read as the bytes it holds, not taken for no query: its
    ``access_token`` is refused (RFC 6750 §2). Anything else is no query.
    """
    query = scope.get("query_string", b"")
    if isinstance(query, bytes):
        return query
    if isinstance(query, str):
        return query.encode("utf-8", "surrogatepass")
    return bytes(query) if isinstance(query, bytearray | memoryview) else b""


def _redact_query_token(scope: Scope) -> None:
    """Replace ``access_token`` values in a refused request's query with ``REDACTED``.

    uvicorn builds its log line from the scope once the app answers: the access log's for a
    plain request, ``uvicorn.error``'s for a websocket handshake (RFC 6750 §5.3). Only
    refusals and the metadata answers (which check no token) are redacted: a request let
    in keeps its query.
    """
    raw = _query_string(scope)  # as the extraction read it
    redacted = redact_query_token(raw)
    if redacted is not raw:
        # Text stays text (Django reads it too); surrogatepass gives back any lone surrogate.
        text = isinstance(scope.get("query_string"), str)
        scope["query_string"] = redacted.decode("utf-8", "surrogatepass") if text else redacted


def _app_path(scope: Scope) -> str:
    """The path inside the app, which ``public_paths`` match: as Starlette's router sees it.

    Under a mount or ``uvicorn --root-path``, ``path`` includes ``root_path`` (ASGI 3); it
    is stripped only where a ``/`` follows it, so ``/apihealth`` stays as it is under
    ``/api``. A server that leaves it out of ``path`` gives the app's path already. The
    mount point itself (``/api``) is the app's ``/``, as WSGI's empty ``PATH_INFO`` is.
    """
    root, path = scope.get("root_path", ""), scope["path"]
    if not root or not path.startswith(root):
        return str(path)
    rest = path[len(root) :]
    if not rest:
        return "/"
    return str(rest if rest[0] == "/" else path)


def _well_known_path(scope: Scope) -> str:
    """The path compared with the metadata's (RFC 9728 §3.1): below the server's root path
    (``uvicorn --root-path`` behind a proxy that strips it, as ``_app_path``), not below
    a mount.

    A well-known URI is only one at the top of the path (RFC 8615 §3): under a mount at
    ``/api``, ``/api/.well-known/oauth-protected-resource/api`` is a path of the API, not
    the URL challenges name, which the outer app serves (``bearerguard.fastapi
    .serve_metadata``). Starlette's ``Mount`` keeps the server's root path in
    ``app_root_path`` as it adds its own prefix to ``root_path``.
    """
    root = scope.get("app_root_path")
    return _app_path(scope if root is None else {"root_path": root, "path": scope["path"]})


def _full_path(scope: Scope) -> str:
    # Servers differ on whether path already includes root_path (ASGI 3 says it does).
    root, path = scope.get("root_path", ""), scope["path"]
    return str(path if not root or path.startswith(root) else root + path)


def _path_bytes(path: str) -> bytes:
    """The path as bytes: a server's surrogate escapes give back their bytes."""
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no server decodes: no htu can match it
        return path.encode("utf-8", "surrogatepass")


def _host(scope: Scope) -> str:
    for name, value in scope["headers"]:
        # An empty Host names no authority (RFC 9112 §3.2): granian passes one on from an
        # HTTP/1.0 request that sent none. Bytes-like values too, as _authorization reads.
        if name == b"host" and value:
            return bytes(value).decode("latin-1")
    server = scope.get("server")
    return "" if not server else server_authority(server[0], server[1])


async def _authenticate_bound(  # noqa: PLR0917 - private: the middleware's and BearerAuth's
    guard: BearerGuard | TrustedIssuers,
    scope: Scope,
    authorization: list[bytes],
    query: bytes,
    request: tuple[str, str, str | None, str | None],
    public_paths: PublicPaths,
) -> tuple[AccessToken | None, str]:
    """Extraction and verification when the guard accepts sender-constrained tokens: DPoP
    (RFC 9449) and/or certificate-bound ones (RFC 8705). Returns the binding used.

    ``public_paths`` are matched against the path inside the app (``_app_path``)."""
    policy = guard.dpop
    token, scheme = bound_credentials(
        policy is not None,
        authorization,
        query,
        _app_path(scope),
        public_paths,
        max_bytes=guard.max_token_bytes,
    )
    if token is None:
        return None, scheme
    dpop = None if policy is None else _dpop_request(policy, scope, scheme)
    mtls = guard.mtls
    certificate = None if mtls is None else scope_certificate(scope, mtls)
    info = RequestInfo(*request)
    access = await guard.authenticate(
        token, client=info.client, request=info, dpop=dpop, certificate=certificate
    )
    return access, binding_of(scheme, mtls, access)


def _dpop_request(
    policy: DPoPPolicy, scope: Scope, scheme: Literal["bearer", "dpop"]
) -> DPoPRequest:
    """What the guard needs of the request to check a DPoP proof (RFC 9449 §4.3)."""
    url_scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), "http")
    if scope.get("scheme") in ("http", "https"):
        url_scheme = scope["scheme"]
    return dpop_request(
        policy,
        scheme,
        [bytes(value) for name, value in scope["headers"] if name == b"dpop"],
        scope.get("method", "GET"),
        url_scheme,
        _host(scope),
        _path_bytes(_full_path(scope)),
        _raw_path(scope),
    )


def _raw_path(scope: Scope) -> bytes | None:
    """The scope's ``raw_path`` as bytes, or ``None`` for no raw path.

    ASGI says bytes or absent; a ``bytearray`` or ``memoryview`` is read as the bytes it
    holds, as ``_authorization`` reads header values. Anything else (text, a number) is no
    raw path: the decoded path, escaped again, stands for the URL, as when it is absent.
    """
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw
    return bytes(raw) if isinstance(raw, bytearray | memoryview) else None


class BearerGuardMiddleware:
    """Authenticate every HTTP request and websocket handshake with a ``BearerGuard``.

    Args:
        app: the ASGI application to protect.
        guard: the configured guard, or a ``TrustedIssuers`` for several issuers.
        public_paths: paths served without credentials (exact, or ``"/prefix/*"``), matched
            against the path inside the app, as Starlette's router does: ``"/health"`` of an
            app mounted under ``/api`` (or served with ``--root-path /api``) is
            ``/api/health``. A token sent to a public path is still verified, and refused if
            invalid.
        warm_up: fetch the key set during lifespan start-up, so the first request does not
            wait for it. A failure is logged; requests then fail closed until keys arrive.
        websocket_credentials: where else a websocket handshake may carry its token, for
            browsers, which cannot set an ``Authorization`` header on one: ``"subprotocol"``
            (an offered subprotocol ``bearer.<token>``) and/or ``"query"``
            (``?access_token=``, RFC 6750 §2.3). Empty by default: the header only. A query
            token can end up in server and proxy logs (RFC 6750 §5.3); prefer the
            subprotocol. Plain HTTP requests never accept either.
        websocket_recheck: check an accepted websocket's token again before each message,
            inbound ``websocket.receive`` and outbound ``websocket.send`` (``recheck``:
            expiry with the guard's leeway, and revocation under its failure policy); the
            first that fails closes the connection with 1008 (RFC 6455 §7.4.1), or 1013 (Try
            Again Later) when the store could not answer, audited as one refusal. On by
            default; a websocket reached without a token is not wrapped.
        stream_recheck: check a request's token again before each further chunk of a
            streamed response (one sent in parts, ``more_body``: Server-Sent Events, a long
            download), as ``websocket_recheck`` does for messages; the first that fails ends
            the response (a last empty chunk: the client sees the stream end, and is refused
            when it reconnects), audited as one refusal, and the app is told of a
            disconnect. Off by default: on, every response with a token passes through a
            wrapper (``MCPToolScopes`` turns it on for an MCP server's streams).

    When the guard has a ``resource``, its protected-resource metadata (RFC 9728 §3) is
    served at ``/.well-known/oauth-protected-resource`` and its path-suffixed form, without
    credentials, and every 401 and 403 challenge names it (RFC 9728 §5.1).

    Refusals follow RFC 6750 §3: 401 with a bare challenge when no credentials were sent,
    400 ``invalid_request``, 401 ``invalid_token``, and 503 with ``Retry-After`` when keys or
    the revocation store cannot answer. Websockets are refused before ``accept``: with the
    same HTTP response where the server supports ``websocket.http.response``, else a close
    with code 1008.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: BearerGuard | TrustedIssuers,
        public_paths: Iterable[str] = (),
        warm_up: bool = False,
        websocket_credentials: Iterable[WebSocketCredential] = (),
        websocket_recheck: bool = True,
        stream_recheck: bool = False,
    ) -> None:
        if not isinstance(guard, BearerGuard | TrustedIssuers):
            raise ConfigurationError("guard must be a BearerGuard or TrustedIssuers")
        ws_credentials = frozenset(websocket_credentials)
        if not ws_credentials <= {"subprotocol", "query"} or isinstance(websocket_credentials, str):
            raise ConfigurationError("websocket_credentials: 'subprotocol' and/or 'query'")
        self.app = app
        self.guard = guard
        self.public_paths = PublicPaths(public_paths)
        self.warm_up = warm_up
        self.websocket_credentials = ws_credentials
        self.websocket_recheck = bool(websocket_recheck)
        self.stream_recheck = bool(stream_recheck)
        # Until a request finds no misplaced scope decorator: a server that runs no lifespan
        # (uvicorn --lifespan off, Daphne), or an app mounted under another (Starlette
        # sends no lifespan to mounts), never meets the start-up check.
        self._routes_unchecked = True
        # The cache-hit fast path serves a plain single-issuer Bearer setup (decided once).
        self._reusing = (
            guard if isinstance(guard, BearerGuard) and not guard.sender_constrained else None
        )

    async def __call__(  # noqa: PLR0915 - the hot path, kept in one frame
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":  # noqa: PLR1714 - the hot path: no tuple
            if kind == "lifespan":
                unchecked = _unchecked_routes(scope, self.app)
                if unchecked:
                    await _refuse_startup(receive, send, unchecked)
                    return
                if self.warm_up:
                    receive = self._warming(receive)
            await self.app(scope, receive, send)
            return
        if self._routes_unchecked:  # one test per request: the check itself runs once
            self._check_routes(scope)
        started = perf_counter()
        guard = self.guard
        entry = None
        request_id: bytes | None = None
        resource = guard.protected_resource
        reusing = self._reusing
        if (
            kind == "http"
            and reusing is not None
            and (resource is None or WELL_KNOWN_PATH not in scope["path"])
        ):
            # A token seen before, sent the usual way: one Authorization header with the
            # "Bearer " spelling and no access_token in the query. Anything else, or a cache
            # miss, takes the general path below, which applies every rule.
            credentials = None
            repeated = ids_joined = False
            for name, value in scope["headers"]:
                if name == b"authorization":
                    repeated = credentials is not None
                    credentials = value
                elif name == b"x-request-id":
                    if request_id is None and value.__class__ is bytes:
                        request_id = value
                    else:
                        # Repeated, or a bytearray or memoryview value (see _authorization):
                        # joined as the general path joins them, into bytes.
                        ids_joined = True
            if ids_joined:
                request_id = joined_request_ids(scope["headers"])
            # Bytes only: a bytes-like value (see _authorization) is no key to look up. The
            # "Bearer " spelling is checked by reused(), which compares the whole value.
            if credentials is not None and not repeated and credentials.__class__ is bytes:
                query = scope.get("query_string")
                # A percent-encoded name may decode to access_token, and a query given as text
                # (see _query_string) is no bytes to search: the general path decides.
                if not query or (
                    query.__class__ is bytes
                    and query.find(b"access_token") == -1
                    and query.find(b"%") == -1
                ):
                    entry = reusing.reused(credentials)
            # A middleware further out with this guard let the request in: the general path
            # passes it on with that verdict, which a hit here would replace. The membership
            # test spares the hot path a call.
            if entry is not None and SCOPE_KEY in scope and already_let_in(scope, guard):
                entry = None
        access: AccessToken | None
        if entry is not None:
            reused = access = entry.token
            attached = entry.attached
            if attached is None:  # once per cached token: reused by every later request
                attached = entry.attached = (TokenCredentials(reused), TokenUser(reused))
            scope["auth"], scope["user"] = attached
            client = scope.get("client")
            # RequestAuth's slots set here, without its __init__ frame: every one of them (a
            # test holds it), the request's four as _describe gives them.
            auth = _new_auth(RequestAuth)
            auth.guard = guard
            auth.token = access
            auth.started = started
            auth.method = scope["method"]  # an HTTP scope: the fast path serves no websocket
            auth.path = scope["path"]
            auth.client = (client[0] or None) if client else None
            auth.request_id = request_id.decode("latin-1") if request_id else None
            auth.respond = _respond
            auth.websocket = False
            audit = guard.audit
            if audit.records_accepted:
                latency = perf_counter() - started
                entry.record_accepted(audit, auth, latency)
        else:
            # Compared below the server's root path, as WSGI's PATH_INFO: under uvicorn
            # --root-path every path starts with it, the proxied well-known one too. Not
            # below a mount: the well-known URL is at the host's top (RFC 8615 §3).
            if (
                resource is not None
                and kind == "http"
                and _well_known_path(scope) in resource.paths
            ):
                await _serve_metadata(resource, scope, send)
                return
            if already_let_in(scope, guard):
                try:
                    await self.app(scope, receive, send)
                except Refused as refused:
                    # As below: a FastAPI check found this middleware in the app's stack and
                    # left the answer to it; the app's ServerErrorMiddleware, further out,
                    # would turn it into a 500 before the outer middleware saw it.
                    await self._send_refusal(scope, send, refused.refusal, refused.error)
                return
            authorization = _authorization(scope["headers"])
            request_id = joined_request_ids(scope["headers"]) or None  # read again, as above
            query = _query_string(scope)
            request = _describe(scope, request_id)
            try:
                if kind == "websocket" and self.websocket_credentials:
                    authorization, query = _websocket_credentials(
                        scope, authorization, self.websocket_credentials
                    )
                if guard.sender_constrained:
                    access, binding = await _authenticate_bound(
                        guard, scope, authorization, query, request, self.public_paths
                    )
                else:
                    binding = "bearer"
                    token = request_credentials(
                        authorization,
                        query,
                        _app_path(scope),
                        self.public_paths,
                        max_bytes=guard.max_token_bytes,
                    )
                    if token is None:
                        access = None
                    else:
                        info = RequestInfo(*request)
                        access = await guard.authenticate(token, client=info.client, request=info)
            except AuthError as error:
                guard.audit.refused(error, RequestInfo(*request), perf_counter() - started)
                await self._refuse(scope, receive, send, error)
                return
            auth = RequestAuth(
                guard, access, started, *request, _respond, websocket=kind == "websocket"
            )
            if access is None:
                scope.setdefault("auth", AuthCredentials())
                scope.setdefault("user", UnauthenticatedUser())
            else:
                guard.audit.accepted(access, auth, perf_counter() - started, binding=binding)
                scope["auth"] = TokenCredentials(access)
                scope["user"] = TokenUser(access)
                if kind == "websocket" and self.websocket_recheck:
                    # Each message is a use of the token: a connection must not outlive
                    # its expiry nor its revocation.
                    connection = RecheckedWebSocket(
                        guard, access, RequestInfo(*request), receive, send
                    )
                    receive, send = connection.receive, connection.send
        if self.stream_recheck and access is not None and kind == "http":
            # Each further chunk of a streamed response is a use of the token.
            stream = RecheckedStream(guard, access, auth, receive, send, scope=scope)
            scope[STREAM_KEY] = stream
            receive, send = stream.receive, stream.send
        scope[SCOPE_KEY] = auth
        reset = current_auth.set(auth)
        try:
            await self.app(scope, receive, send)
        except Refused as refused:
            # A check that ran as a FastAPI dependency, before the app answered: already
            # audited, so only the answer is left to send.
            await self._send_refusal(scope, send, refused.refusal, refused.error)
        except Exception as error:
            # A stream this middleware ended raised into the app (ASGI HTTP spec 2.4): the
            # end is audited and the client has it; as a server, catch it and log nothing.
            if not (self.stream_recheck and absorbed(error)):
                raise
        finally:
            current_auth.reset(reset)

    def _check_routes(self, scope: Scope) -> None:
        """The start-up check, on the first request: a route whose scope decorator never
        runs must not be served unchecked. Every request fails (500) until it is fixed.

        Raises:
            ConfigurationError: a scope decorator sits above its route decorator.
        """
        unchecked = _unchecked_routes(scope, self.app)
        if unchecked:
            raise ConfigurationError(misplaced_decorators(unchecked))
        self._routes_unchecked = False

    def _warming(self, receive: Receive) -> Receive:
        async def receive_and_warm_up() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.guard.warm_up()
                except ServiceUnavailableError as exc:
                    _log.warning("bearerguard: warm-up failed, requests fail closed: %s", exc)
            return message

        return receive_and_warm_up

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: AuthError) -> None:
        refusal = refusal_for(self.guard, error)
        if scope["type"] == "websocket":
            message = await receive()  # websocket.connect: refuse before accepting
            if message["type"] != "websocket.connect":
                return
        await self._send_refusal(scope, send, refusal, error)

    @staticmethod
    async def _send_refusal(scope: Scope, send: Send, refusal: Refusal, error: AuthError) -> None:
        _redact_query_token(scope)  # before the answer: the server logs from the scope
        headers = [
            (name.encode(), value.encode("latin-1")) for name, value in refusal.framed_headers
        ]
        if scope["type"] == "http":
            await send(
                {"type": "http.response.start", "status": refusal.status, "headers": headers}
            )
            # RFC 9110 §9.3.2: no content for HEAD (its Content-Length is the GET's, §8.6).
            body = b"" if scope.get("method") == "HEAD" else refusal.body
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in (scope.get("extensions") or {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": refusal.status,
                    "headers": headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": refusal.body})
        else:
            await send(
                {"type": "websocket.close", "code": _POLICY_VIOLATION, "reason": error.reason}
            )
