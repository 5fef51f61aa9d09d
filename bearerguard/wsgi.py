"""``BearerGuardWSGIMiddleware``: the guard for Flask, Django and any WSGI application.

The same rules as the ASGI middleware, from the same core: extraction, verification, public
paths, RFC 6750 answers, audit events and revocation (through the store's synchronous side).
Key fetches use httpx's sync client, one at a time per guard across threads.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from http import HTTPStatus
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

from bearerguard._context import (
    SCOPE_KEY,
    BodyWithAuth,
    RequestAuth,
    already_let_in,
    current_auth,
    decided_by,
    refusal_for,
)
from bearerguard._core.dpop import server_authority
from bearerguard._core.extract import (
    bound_credentials,
    redact_query_token,
    request_credentials,
    split_joined_values,
)
from bearerguard._core.paths import PublicPaths
from bearerguard._core.refusal import Refusal
from bearerguard._stream import RecheckedBody, RecheckedSends, absorbed
from bearerguard.audit import RequestInfo
from bearerguard.decorators import (
    app_layers,
    attribute_of,
    misplaced_decorators,
    unchecked_endpoints,
    wrapped_app,
)
from bearerguard.dpop import DPoPPolicy, DPoPRequest, dpop_request
from bearerguard.errors import AuthError, ConfigurationError, ServiceUnavailableError
from bearerguard.guard import BearerGuard
from bearerguard.issuers import TrustedIssuers
from bearerguard.metadata import ProtectedResource, resource_to_serve
from bearerguard.mtls import binding_of, environ_certificate
from bearerguard.token import AccessToken

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["BearerGuardWSGIMiddleware", "plain_response", "responder_for", "serve_metadata"]

_log = logging.getLogger("bearerguard")
Responder = Callable[[Refusal], Any]


def plain_response(refusal: Refusal) -> tuple[bytes, int, list[tuple[str, str]]]:
    """A refusal as ``(body, status, headers)``: what Flask and many frameworks accept."""
    return refusal.body, refusal.status, list(refusal.headers)


def _flask_response(refusal: Refusal) -> Any:
    import flask  # noqa: PLC0415 - only when the app is a Flask app

    return flask.Response(refusal.body, status=refusal.status, headers=list(refusal.headers))


def _django_response(refusal: Refusal) -> Any:
    from django.http import HttpResponse  # noqa: PLC0415 - only when the app is Django

    response = HttpResponse(refusal.body, status=refusal.status)
    for name, value in refusal.headers:
        response[name] = value
    return response


def responder_for(app: object) -> Responder:
    """How ``requires_scopes`` answers inside ``app``: a Flask or Django response, or a tuple.

    Flask's ``app.wsgi_app`` (a bound method) counts as the Flask app.
    """
    owner = attribute_of(app, "__self__") or app
    frameworks = {cls.__module__.partition(".")[0] for cls in type(owner).__mro__}
    if "flask" in frameworks:
        return _flask_response
    if "django" in frameworks:
        return _django_response
    return plain_response


def proxy_fix_type() -> type | None:
    """werkzeug's ``ProxyFix`` class, once something imported it; else ``None`` (then no
    app holds one)."""
    proxy_fix = getattr(sys.modules.get("werkzeug.middleware.proxy_fix"), "ProxyFix", None)
    return proxy_fix if isinstance(proxy_fix, type) else None


def _proxy_fix_under(app: object) -> bool:
    """Whether werkzeug's ``ProxyFix`` is ``app`` or under it (``app_layers``)."""
    proxy_fix = proxy_fix_type()
    if proxy_fix is None:
        return False
    # type() rather than isinstance, which reads __class__: an app proxy not configured yet
    # may raise there, and what cannot be read is no reason to stop the app from starting.
    return any(issubclass(type(owner), proxy_fix) for owner in app_layers(app))


_PROXY_FIX_INSIDE = (
    "werkzeug's ProxyFix is inside BearerGuardWSGIMiddleware: the guard would see the "
    "proxy's address, scheme and host instead of the client's (audit events, usage "
    "monitoring, DPoP htu). Wrap the middleware in ProxyFix instead: with Flask, set "
    "app.wsgi_app = ProxyFix(app.wsgi_app, ...) after protect(app); otherwise "
    "ProxyFix(BearerGuardWSGIMiddleware(app, ...), ...)"
)


def _native(value: object) -> str | None:
    """An environ value as PEP 3333's native string, or ``None`` for no value.

    A server outside PEP 3333 may hand bytes over: read as the latin-1 characters that
    stand for them, as a native string stands for the bytes received (and as the ASGI
    middleware reads a ``bytearray`` or ``memoryview`` as the bytes it holds). Anything
    else (a number, a list) is no value: its ``repr`` (``"b'GET'"``) is no request's.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    return None


def _native_bytes(environ: WSGIEnvironment, key: str) -> bytes:
    """The bytes an environ value stands for (``b""`` for none), as the extraction reads."""
    return (_native(environ.get(key)) or "").encode("latin-1", "replace")


def _path(environ: WSGIEnvironment) -> str:
    # PEP 3333 hands PATH_INFO over as latin-1; decode it as UTF-8, as ASGI servers do. It
    # is empty for the application's root reached without a slash (SCRIPT_NAME "/api",
    # request "/api"), which Django serves as "/" and Werkzeug redirects to "/": so is it
    # matched against public_paths.
    path = environ.get("PATH_INFO", "")
    if type(path) is not str:  # a server outside PEP 3333 (see _native)
        path = _native(path) or ""
    return path.encode("latin-1", "replace").decode("utf-8", "replace") or "/"


def _describe(environ: WSGIEnvironment, path: str) -> tuple[str, str, str | None, str | None]:
    """The request as ``RequestInfo`` takes it: every audit event's fields are text.

    The client is ``None`` when ``REMOTE_ADDR`` is absent or empty (granian, gunicorn on a
    Unix socket): no address, as the ASGI middleware gives for such a server.
    """
    method = environ.get("REQUEST_METHOD", "GET")
    client = environ.get("REMOTE_ADDR")
    request_id = environ.get("HTTP_X_REQUEST_ID")
    if type(method) is str and type(client) in _TEXT_OR_NONE and type(request_id) in _TEXT_OR_NONE:
        return method, path, client or None, request_id
    # A server outside PEP 3333: the values as text, or none (the event is still emitted).
    return _native(method) or "", path, _native(client) or None, _native(request_id)


_TEXT_OR_NONE = (str, type(None))


def _host(environ: WSGIEnvironment) -> str:
    host = _native(environ.get("HTTP_HOST"))
    if host:
        return host
    return server_authority(
        _native(environ.get("SERVER_NAME")) or "", _native(environ.get("SERVER_PORT"))
    )


def _redact_query_token(environ: WSGIEnvironment) -> None:
    """Replace ``access_token`` values with ``REDACTED`` in a refused request's environ.

    gunicorn builds its access-log line from this environ after the app answers (``%(r)s``
    from ``RAW_URI``, ``%(q)s`` from ``QUERY_STRING``), and some servers set ``REQUEST_URI``
    too: each is redacted where it carries the token (RFC 6750 §5.3). A server that logs its
    own copy of the request line (werkzeug's and Django's development servers, wsgiref,
    uWSGI, mod_wsgi) is out of reach: see docs/security.md.
    """
    for key in ("QUERY_STRING", "RAW_URI", "REQUEST_URI"):
        value = _native(environ.get(key))
        if value is None:
            continue
        if key == "QUERY_STRING":
            target, mark, query = "", "", value
        else:
            target, mark, query = value.partition("?")
        # PEP 3333: latin-1 characters standing for the bytes as received.
        raw = query.encode("latin-1", "replace")
        redacted = redact_query_token(raw)
        if redacted is not raw:
            text = target + mark + redacted.decode("latin-1")
            # Given as bytes (see _native), it is left as bytes: the server set it so.
            environ[key] = text if isinstance(environ[key], str) else text.encode("latin-1")


def _at_the_top(environ: WSGIEnvironment) -> bool:
    """Whether the request reached the app at the host's top (``SCRIPT_NAME`` empty).

    A well-known URI is one only at the top of the path (RFC 8615 §3): under a mount at
    ``/api`` (a dispatcher, a server's alias or ``SCRIPT_NAME`` setting, ``ProxyFix``'s
    ``x_prefix`` for a prefix the proxy stripped), ``PATH_INFO``
    ``/.well-known/oauth-protected-resource/api`` is the URL
    ``/api/.well-known/oauth-protected-resource/api``, a path of the API, not the one
    challenges name, which the outer app serves (``serve_metadata``).
    """
    return not environ.get("SCRIPT_NAME")


def _metadata_answer(
    resource: ProtectedResource, environ: WSGIEnvironment, start_response: StartResponse
) -> list[bytes]:
    """Answer a request for the protected-resource metadata (RFC 9728 §3)."""
    _redact_query_token(environ)  # served without a token check: nothing to log
    status_code, headers, body = resource.response(_native(environ.get("REQUEST_METHOD")) or "")
    start_response(f"{status_code} {HTTPStatus(status_code).phrase}", headers)
    return [body]


class _MetadataServer:
    """``app``, with the protected-resource metadata served at the host's top in front."""

    def __init__(self, app: WSGIApplication, resource: ProtectedResource) -> None:
        self.app = app
        self.resource = resource

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        resource = self.resource
        if _path(environ) in resource.paths and _at_the_top(environ):
            return _metadata_answer(resource, environ, start_response)
        return self.app(environ, start_response)


def serve_metadata(app: WSGIApplication, guard: BearerGuard | TrustedIssuers) -> WSGIApplication:
    """Serve ``guard``'s protected-resource metadata (RFC 9728 §3) in front of ``app``.

    RFC 9728 §3.1 puts the well-known path between the host and the resource's path: for
    ``https://api.example/api`` the document is at
    ``https://api.example/.well-known/oauth-protected-resource/api``, the URL every 401 and
    403 names. An app mounted under a path (``SCRIPT_NAME``: werkzeug's
    ``DispatcherMiddleware``, a server's alias) never receives it, and its middleware
    serves the metadata at the host's top only: wrap the outer app, the one that receives
    the host's paths. The wrapper answers those paths (``GET``, ``HEAD``, ``OPTIONS``)
    without credentials; every other request goes to ``app`` unchanged.

    Args:
        app: the outer WSGI application.
        guard: the guard (or ``TrustedIssuers``) of the mounted app, with a ``resource``.

    Returns:
        The WSGI application to serve in place of ``app``.

    Raises:
        ConfigurationError: the guard has no ``resource``, so no metadata to serve.
    """
    resource = resource_to_serve(guard)
    return _MetadataServer(app, resource)


def _authenticate_bound(  # noqa: PLR0917 - private, one call site
    guard: BearerGuard | TrustedIssuers,
    environ: WSGIEnvironment,
    authorization: list[bytes],
    query: bytes,
    path: str,
    request: tuple[str, str, str | None, str | None],
    public_paths: PublicPaths,
) -> tuple[AccessToken | None, str]:
    """Extraction and verification when the guard accepts sender-constrained tokens: DPoP
    (RFC 9449) and/or certificate-bound ones (RFC 8705). Returns the binding used."""
    policy = guard.dpop
    token, scheme = bound_credentials(
        policy is not None,
        authorization,
        query,
        path,
        public_paths,
        max_bytes=guard.max_token_bytes,
    )
    if token is None:
        return None, scheme
    dpop = None if policy is None else _dpop_request(policy, environ, scheme)
    mtls = guard.mtls
    certificate = None if mtls is None else environ_certificate(environ, mtls)
    info = RequestInfo(*request)
    access = guard.authenticate_sync(
        token, client=info.client, request=info, dpop=dpop, certificate=certificate
    )
    return access, binding_of(scheme, mtls, access)


def _dpop_request(
    policy: DPoPPolicy, environ: WSGIEnvironment, scheme: Literal["bearer", "dpop"]
) -> DPoPRequest:
    """What the guard needs of the request to check a DPoP proof (RFC 9449 §4.3)."""
    proof = _native(environ.get("HTTP_DPOP"))
    # PEP 3333 hands the path over as latin-1 characters standing for the raw bytes.
    full_path = (_native(environ.get("SCRIPT_NAME")) or "") + (
        _native(environ.get("PATH_INFO")) or ""
    )
    return dpop_request(
        policy,
        scheme,
        # Servers join repeated headers with commas, so two proofs arrive as one value. A
        # value that is not latin-1 (a server outside PEP 3333) is a bad proof, not a 500.
        [] if proof is None else [part.encode("latin-1", "replace") for part in proof.split(",")],
        _native(environ.get("REQUEST_METHOD", "GET")) or "",
        _native(environ.get("wsgi.url_scheme")) or "http",
        _host(environ),
        full_path.encode("latin-1", "replace"),
        # The request target as received (werkzeug, uWSGI: REQUEST_URI; gunicorn: RAW_URI).
        (_native(environ.get("REQUEST_URI")) or _native(environ.get("RAW_URI")) or "")
        .partition("?")[0]
        .encode("latin-1", "replace"),
    )


class BearerGuardWSGIMiddleware:
    """Authenticate every request to a WSGI application with a ``BearerGuard``.

    Args:
        app: the WSGI application (for Flask, ``app.wsgi_app``; see ``bearerguard.flask``).
        guard: the configured guard, or a ``TrustedIssuers`` for several issuers; their
            revocation stores must offer the synchronous side.
        public_paths: paths served without credentials (exact, or ``"/prefix/*"``), matched
            against ``PATH_INFO``.
        warm_up: fetch the key set now, at construction, so the first request does not wait.
        respond: how ``requires_scopes`` builds its refusals inside ``app``; by default a
            Flask or Django response when ``app`` is one, else ``(body, status, headers)``.
        stream_recheck: check a request's token again before each further chunk of a
            streamed body (a generator, Flask's ``stream_with_context``, Django's
            ``StreamingHttpResponse``), as the ASGI middleware's ``stream_recheck`` does:
            the first that fails ends the body there (the app's iterable is closed),
            audited as one refusal. A body returned whole (a list, a Flask view's ``str``
            or ``dict``) is not rechecked; a file handed to the server's
            ``wsgi.file_wrapper`` (``send_file``) is, so the server iterates it instead of
            sending it with ``sendfile``, and so are the chunks sent with
            ``start_response``'s ``write``, the first failing one raising an ``OSError``
            as for a client that went away (absorbed here). Off by default.

    Refusals are exactly those of the ASGI middleware (RFC 6750 §3), and so is the
    protected-resource metadata served when the guard has a ``resource`` (RFC 9728), at
    the host's top only (``SCRIPT_NAME`` empty; for a mounted app, see ``serve_metadata``).

    Behind a proxy, werkzeug's ``ProxyFix`` goes outside the middleware, so that the guard
    reads the client's address, scheme and host as the app does.

    Raises:
        ConfigurationError: a guard that is neither, a store without the synchronous side,
            ``app`` is (or wraps) a ``ProxyFix``, or ``respond`` cannot be called.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        guard: BearerGuard | TrustedIssuers,
        public_paths: Iterable[str] = (),
        warm_up: bool = False,
        respond: Responder | None = None,
        stream_recheck: bool = False,
    ) -> None:
        if not isinstance(guard, BearerGuard | TrustedIssuers):
            raise ConfigurationError("guard must be a BearerGuard or TrustedIssuers")
        guard.require_sync_side()
        if _proxy_fix_under(app):
            raise ConfigurationError(_PROXY_FIX_INSIDE)
        if respond is not None and not callable(respond):
            raise ConfigurationError("respond must be a callable that builds a response")
        # The cache-hit fast path serves a plain single-issuer Bearer setup (decided once).
        self._reusing = (
            guard if isinstance(guard, BearerGuard) and not guard.sender_constrained else None
        )
        self.app = app
        self.guard = guard
        self.public_paths = PublicPaths(public_paths)
        self.respond = respond or responder_for(app)
        self.stream_recheck = bool(stream_recheck)
        # Until a request finds no misplaced scope decorator (WSGI has no start-up hook; a
        # Flask app's routes are all registered by its first request).
        self._routes_unchecked = True
        # The app whose views that check reads: protect() names its Flask app, which a
        # wrapper holding the next app under another name than ``app`` would hide.
        self._routes_owner: object = None
        if warm_up:
            try:
                guard.warm_up_sync()
            except ServiceUnavailableError as exc:
                _log.warning("bearerguard: warm-up failed, requests fail closed: %s", exc)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._routes_unchecked:  # one test per request: the check itself runs once
            self._check_routes()
        started = perf_counter()
        guard = self.guard
        header = environ.get("HTTP_AUTHORIZATION")
        if header is not None and type(header) is not str:  # outside PEP 3333: see _native
            header = _native(header)
        path = _path(environ)
        resource = guard.protected_resource
        if resource is not None and path in resource.paths and _at_the_top(environ):
            return _metadata_answer(resource, environ, start_response)
        # A middleware further out with this guard let the request in: its verdict stands
        # (responder, start time), audited once. Before the cache-hit path, which would
        # replace it; the membership test spares the hot path a call. Under a WSGI server
        # current_auth is unset here (each middleware resets what it set).
        if SCOPE_KEY in environ:
            if already_let_in(environ, guard):
                return self.app(environ, start_response)
        elif (outer := current_auth.get()) is not None and _let_in_outside(outer, guard, header):
            # Under a bridge from ASGI (asgiref's WsgiToAsgi, Starlette's WSGIMiddleware): a
            # new environ, but the request's context, with the outer verdict in it.
            return self._call_app(environ, start_response, self._taken_over(outer))
        request = _describe(environ, path)
        reusing = self._reusing
        if (
            reusing is not None
            and header is not None
            and header.startswith("Bearer ")
            and "access_token" not in (query := str(environ.get("QUERY_STRING", "")))
            and "%" not in query  # a percent-encoded name may decode to access_token
        ):
            # A token seen before, sent the usual way: as in the ASGI middleware, a cache hit
            # that needs no I/O is served here; anything else takes the general path.
            entry = reusing.reused(header.encode("latin-1", "replace"))
            if entry is not None:
                reused = entry.token
                auth = RequestAuth(guard, reused, started, *request, self.respond)
                audit = guard.audit
                if audit.records_accepted:
                    latency = perf_counter() - started
                    entry.record_accepted(audit, auth, latency)
                return self._call_app(environ, start_response, auth)
        # Servers join repeated headers with commas: split back, two values are refused as
        # invalid_request, as two headers are over ASGI.
        values = [] if header is None else split_joined_values(header.encode("latin-1", "replace"))
        try:
            if guard.sender_constrained:
                access, binding = _authenticate_bound(
                    guard,
                    environ,
                    values,
                    _native_bytes(environ, "QUERY_STRING"),
                    path,
                    request,
                    self.public_paths,
                )
            else:
                binding = "bearer"
                token = request_credentials(
                    values,
                    _native_bytes(environ, "QUERY_STRING"),
                    path,
                    self.public_paths,
                    max_bytes=guard.max_token_bytes,
                )
                if token is None:
                    access = None
                elif guard.usage is None:
                    access = guard.authenticate_sync(token)
                else:
                    info = RequestInfo(*request)
                    access = guard.authenticate_sync(token, client=info.client, request=info)
        except AuthError as error:
            guard.audit.refused(error, RequestInfo(*request), perf_counter() - started)
            _redact_query_token(environ)  # the server may log from it once answered
            refusal = refusal_for(guard, error)
            status = f"{refusal.status} {HTTPStatus(refusal.status).phrase}"
            start_response(status, refusal.framed_headers)
            # RFC 9110 §9.3.2: no content for HEAD (its content-length still states GET's).
            # A WSGI server may write what the app returns: werkzeug's development server does.
            return [] if request[0] == "HEAD" else [refusal.body]
        auth = RequestAuth(guard, access, started, *request, self.respond)
        if access is not None:
            guard.audit.accepted(access, auth, perf_counter() - started, binding=binding)
        return self._call_app(environ, start_response, auth)

    def _taken_over(self, outer: RequestAuth) -> RequestAuth:
        """``outer``'s verdict, answering scope refusals as this app's framework does."""
        return RequestAuth(
            outer.guard,
            outer.token,
            outer.started,
            outer.method,
            outer.path,
            outer.client,
            outer.request_id,
            self.respond,
        )

    def _check_routes(self) -> None:
        """On the first request: a Flask view whose scope decorator sits above its route
        decorator must not be served unchecked. Every request fails (500) until it is fixed.

        Raises:
            ConfigurationError: such a view (see ``unchecked_endpoints``).
        """
        owner = self._routes_owner
        unchecked = unchecked_endpoints(
            wrapped_app(self.app, "view_functions", "mounts") if owner is None else owner
        )
        if unchecked:
            raise ConfigurationError(misplaced_decorators(unchecked))
        self._routes_unchecked = False

    def _call_app(
        self, environ: WSGIEnvironment, start_response: StartResponse, auth: RequestAuth
    ) -> Iterable[bytes]:
        environ[SCOPE_KEY] = auth
        if self.stream_recheck and auth.token is not None:
            return self._call_rechecked(environ, start_response, auth)
        reset = current_auth.set(auth)
        try:
            body = self.app(environ, start_response)
        finally:
            current_auth.reset(reset)
        # A list runs nothing while it is sent, and a server may want its len() or its
        # file_wrapper (sendfile): only what may run code is iterated with current_auth.
        wrapper = environ.get("wsgi.file_wrapper")
        if (
            isinstance(body, list | tuple)
            or (isinstance(wrapper, type) and isinstance(body, wrapper))
            or _unstreamed_werkzeug_response(body)
        ):
            return body
        return BodyWithAuth(body, auth)

    def _call_rechecked(
        self, environ: WSGIEnvironment, start_response: StartResponse, auth: RequestAuth
    ) -> Iterable[bytes]:
        """``_call_app`` under ``stream_recheck``: each further chunk the app sends, by
        ``write`` or in the body it returns, is a use of the token."""
        sent = RecheckedSends(auth)
        reset = current_auth.set(auth)
        try:
            body = self.app(environ, sent.start_response(start_response))
        except Exception as error:
            # A write after the end raised, as for a client that went away: the end is
            # audited and the server has what was written; as a server, log nothing.
            if not (sent.ended and absorbed(error)):
                raise
            return []
        finally:
            current_auth.reset(reset)
        if sent.ended:  # the app caught the raise and answered: nothing more goes
            RecheckedBody(body, auth, sent).close()
            return []
        if not sent.started and (
            isinstance(body, list | tuple) or _unstreamed_werkzeug_response(body)
        ):
            return body  # sent whole, as without the recheck
        # A file in the server's own wrapper too: handed back, the server would send it as
        # it likes (gunicorn with sendfile), past any recheck; wrapped, the server iterates
        # it (PEP 3333 makes it iterable), in chunks of the app's block size.
        return RecheckedBody(body, auth, sent)


def _let_in_outside(
    outer: RequestAuth, guard: BearerGuard | TrustedIssuers, header: object
) -> bool:
    """Whether a middleware with ``guard`` outside an ASGI-to-WSGI bridge, which hands the
    app a new environ without its verdict, let in this very request: the token it accepted
    is the one this request carries. Verified again, the request was audited twice, and its
    DPoP proof refused as replayed (RFC 9449 §11.1). A request the app makes itself, with
    another token or none, is decided on its own."""
    token = outer.token
    return (
        token is not None
        and isinstance(header, str)
        and header.partition(" ")[2].strip(" \t") == token.raw
        and decided_by(outer, guard)
    )


def _unstreamed_werkzeug_response(body: object) -> bool:
    """Whether ``body`` is werkzeug's ``ClosingIterator`` over a response whose body is a
    list, with no ``call_on_close`` callback: what Flask answers for a view returning
    ``str``, ``bytes``, a ``dict``... Nothing of the app's runs while it is sent, and a
    wrapper would cost every such Flask request about 1.5 µs. Anything else (a streamed
    ``Response``, another werkzeug) is wrapped."""
    kind = type(body)
    if kind.__name__ != "ClosingIterator" or kind.__module__ != "werkzeug.wsgi":
        return False
    try:
        response = body._callbacks[-1].__self__  # type: ignore[attr-defined]
        return isinstance(response.response, list | tuple) and not response._on_close
    except Exception:  # noqa: BLE001 - another werkzeug's insides: wrap, as for anything else
        return False
