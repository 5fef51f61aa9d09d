"""Django glue: the guard as a class in ``settings.MIDDLEWARE``, under WSGI and ASGI.

    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "bearerguard.django.BearerGuardMiddleware",
        ...
    ]
    BEARERGUARD = {"GUARD": "myproject.auth.guard", "PUBLIC_PATHS": ["/health/"]}

The decisions, refusals and audit events are those of ``BearerGuardWSGIMiddleware``, from
the same functions; Django's test ``Client`` and ``AsyncClient`` go through it. Under WSGI
(and the test ``Client``) the guard's synchronous side verifies tokens, as the WSGI
middleware does; under ASGI (``get_asgi_application()``, ``AsyncClient``) its asynchronous
side does, in the event loop, with no thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from time import perf_counter
from typing import Any, Literal

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.http import HttpResponse
    from django.utils.module_loading import import_string
except ImportError as exc:  # pragma: no cover - only without Django installed
    raise ImportError("bearerguard.django needs Django: pip install 'bearerguard[django]'") from exc

from bearerguard import asgi, wsgi
from bearerguard._context import (
    SCOPE_KEY,
    AsyncBodyWithAuth,
    BodyWithAuth,
    RequestAuth,
    already_let_in,
    current_auth,
    refusal_for,
)
from bearerguard._core.extract import (
    bound_credentials,
    joined_request_ids,
    request_credentials,
    split_joined_values,
)
from bearerguard._core.paths import PublicPaths
from bearerguard._stream import RecheckedAsyncBody, RecheckedBody
from bearerguard.audit import RequestInfo
from bearerguard.decorators import _request_auth
from bearerguard.dpop import DPoPRequest
from bearerguard.errors import (
    AuthError,
    ConfigurationError,
    MissingTokenError,
    ServiceUnavailableError,
)
from bearerguard.guard import BearerGuard
from bearerguard.issuers import TrustedIssuers
from bearerguard.mtls import binding_of, environ_certificate, scope_certificate
from bearerguard.token import AccessToken

__all__ = ["SETTING", "BearerGuardAuthentication", "BearerGuardMiddleware", "TokenUser"]

_log = logging.getLogger("bearerguard")

SETTING = "BEARERGUARD"
"""The name of the Django setting the middleware reads."""

_OPTIONS = ("GUARD", "PUBLIC_PATHS", "WARM_UP", "STREAM_RECHECK")
_Described = tuple[str, str, str | None, str | None]


def _refused(message: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"settings.{SETTING}: {message}")


def _guard_of(named: object) -> BearerGuard | TrustedIssuers:
    """The guard ``GUARD`` names: a dotted path to one, or the object itself."""
    found = named
    if isinstance(named, str):
        try:
            found = import_string(named)
        # A relative path (".auth.guard") is importlib's TypeError, an empty module its
        # ValueError: the same mistake in the setting as a module that is not there.
        except (ImportError, TypeError, ValueError) as exc:
            raise _refused(f"cannot import GUARD {named!r}: {exc}") from exc
    if not isinstance(found, BearerGuard | TrustedIssuers):
        raise _refused(
            f"GUARD {named!r} is not a BearerGuard or TrustedIssuers (found {type(found).__name__})"
        )
    return found


def _settings_of(
    value: object,
) -> tuple[BearerGuard | TrustedIssuers, PublicPaths, bool, bool]:
    """The guard, public paths, warm-up and stream recheck of a ``BEARERGUARD`` setting.

    Raises:
        ImproperlyConfigured: no setting, not a dict, an unknown key (a misspelt
            ``PUBLIC_PATHS`` would silently protect nothing it names), no ``GUARD`` or one
            that is not a guard, or public paths that are not a list of paths.
    """
    if value is None:
        raise _refused(
            "missing: set it to a dict such as "
            '{"GUARD": "myproject.auth.guard", "PUBLIC_PATHS": ["/health/"]}'
        )
    if not isinstance(value, Mapping):
        raise _refused(f"must be a dict with GUARD (and PUBLIC_PATHS), not {type(value).__name__}")
    unknown = sorted(str(key) for key in value if key not in _OPTIONS)
    if unknown:
        raise _refused(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(_OPTIONS)}")
    if "GUARD" not in value:
        raise _refused("GUARD is required: the dotted path to a BearerGuard or TrustedIssuers")
    guard = _guard_of(value["GUARD"])
    paths = value.get("PUBLIC_PATHS", ())
    if isinstance(paths, str | bytes):
        raise _refused(f"PUBLIC_PATHS must be a list of paths, not the string {paths!r}")
    try:
        public_paths = PublicPaths(paths)
    except (ConfigurationError, TypeError) as exc:
        raise _refused(f"PUBLIC_PATHS: {exc}") from exc
    warm_up = value.get("WARM_UP", False)
    if not isinstance(warm_up, bool):
        raise _refused("WARM_UP must be True or False")
    stream_recheck = value.get("STREAM_RECHECK", False)
    if not isinstance(stream_recheck, bool):
        raise _refused("STREAM_RECHECK must be True or False")
    return guard, public_paths, warm_up, stream_recheck


def _redact_query_token(request: Any) -> None:
    """Replace ``access_token`` values with ``REDACTED`` where the server logs a refused
    request from (RFC 6750 §5.3): ``META``, which under WSGI is the environ itself (as
    ``BearerGuardWSGIMiddleware`` does), and an ASGI request's scope (as the ASGI middleware
    does). Django's ``runserver`` logs its own copy of the request line: out of reach."""
    wsgi._redact_query_token(request.META)
    scope = _scope(request)
    if scope is not None:
        asgi._redact_query_token(scope)


def _scope(request: Any) -> dict[str, Any] | None:
    """The ASGI scope of a request Django's ASGI handler made, else ``None``."""
    scope = getattr(request, "scope", None)
    return scope if isinstance(scope, dict) else None


def _described(request: Any) -> tuple[str, str, str | None, str | None]:
    """The method, path, client and request id the audit events give for ``request``, as
    the WSGI middleware reads them from ``META``; for an ASGI request, the request ids as
    the ASGI middleware joins them."""
    meta = request.META
    scope = _scope(request)
    if scope is None:
        return wsgi._describe(meta, request.path_info)
    # Django's ASGI request joins repeated headers with a bare ","; the ASGI middleware
    # joins X-Request-ID values as WSGI servers do, with ", " (RFC 9110 §5.3), so one
    # request names one id whichever integration audits it. Read from the scope only:
    # META's copy, read too and thrown away, cost a second read per request.
    joined = joined_request_ids(scope.get("headers", ()))
    return (
        wsgi._native(meta.get("REQUEST_METHOD", "GET")) or "",
        request.path_info,
        wsgi._native(meta.get("REMOTE_ADDR")) or None,  # "": no address, as wsgi._describe
        joined.decode("latin-1") if joined else None,
    )


def _received_method(request: Any) -> str:
    """The method of ``request`` as the server received it, and frames the answer by (RFC
    9110 §9.1: case-sensitive), as the WSGI and ASGI middlewares read it; Django's
    ``request.method`` is upper-cased (``"HEAD"`` for ``head``)."""
    scope = _scope(request)
    if scope is None:
        return wsgi._native(request.META.get("REQUEST_METHOD")) or ""
    return str(scope.get("method"))


def _credentials_of(
    guard: BearerGuard | TrustedIssuers, request: Any, public_paths: PublicPaths
) -> tuple[bytes | None, Literal["bearer", "dpop"], DPoPRequest | None, bytes | None]:
    """The token of ``request``, its scheme, and what its proof (URL, RFC 9449 §4.3) and
    client certificate are checked against when the guard accepts sender-constrained tokens
    (RFC 9449, RFC 8705). Read from the ASGI scope of an ASGI request, as the ASGI middleware
    reads them, else from ``META``, the environ the WSGI middleware reads: whichever path
    (sync or async) Django runs the middleware on, as a sync-only or async-only middleware
    below it decides."""
    meta = request.META
    header = wsgi._native(meta.get("HTTP_AUTHORIZATION"))
    # Servers (and Django's ASGI request) join repeated headers with commas: split back, so
    # that two values are refused as invalid_request, as by the WSGI middleware.
    values = [] if header is None else split_joined_values(header.encode("latin-1", "replace"))
    query = wsgi._native_bytes(meta, "QUERY_STRING")
    path = request.path_info
    max_bytes = guard.max_token_bytes
    if not guard.sender_constrained:
        return (
            request_credentials(values, query, path, public_paths, max_bytes=max_bytes),
            "bearer",
            None,
            None,
        )
    policy = guard.dpop
    token, scheme = bound_credentials(
        policy is not None, values, query, path, public_paths, max_bytes=max_bytes
    )
    if token is None:
        return None, scheme, None, None
    mtls = guard.mtls
    scope = _scope(request)
    if scope is not None:
        dpop = None if policy is None else asgi._dpop_request(policy, scope, scheme)
        return token, scheme, dpop, None if mtls is None else scope_certificate(scope, mtls)
    dpop = None if policy is None else wsgi._dpop_request(policy, meta, scheme)
    return token, scheme, dpop, None if mtls is None else environ_certificate(meta, mtls)


def _record(request: Any, auth: RequestAuth) -> None:
    """Record the verdict where decorators and ``get_access_token(request)`` read it:
    ``META`` (the WSGI environ), and the ASGI scope, which they read first on an ASGI
    request; and the token's user as ``request.user`` (``_log_in``)."""
    request.META[SCOPE_KEY] = auth
    scope = _scope(request)
    if scope is not None:
        scope[SCOPE_KEY] = auth
    if auth.token is not None:
        _log_in(request, auth.token)


def _log_in(request: Any, token: AccessToken) -> None:
    """Make ``request.user`` (and ``await request.auser()``) the ``TokenUser`` of ``token``.

    Django's ``AuthenticationMiddleware`` listed after this one replaces both with lazy
    reads of the session's user, which it caches on the request as ``_cached_user`` and
    ``_acached_user``: cached here first, they read this user instead, so the token's
    user stands whichever the order (listed before, it is simply replaced here).
    """
    user = TokenUser(token)

    async def auser() -> TokenUser:
        return user

    request.user = request._cached_user = request._acached_user = user
    request.auser = auser


class TokenUser:
    """``request.user`` for a request let in with a token: who the token names, with no
    database row behind it and no permission.

    ``is_authenticated`` is true, so Django's ``login_required``, ``LoginRequiredMiddleware``
    and ``request.user.is_authenticated`` let it in; ``is_staff``, ``is_superuser`` and every
    ``has_perm`` are false (the admin and permission checks refuse it: scopes are checked
    with ``requires_scopes``). ``is_active`` is false as for Django's ``AnonymousUser``:
    Django REST framework's ``SessionAuthentication`` takes an active ``request.user`` for a
    session login and would then require a CSRF token of a request that carries no cookie.

    Attributes:
        access_token: the verified ``AccessToken`` (read-only), as on Starlette's
            ``request.user`` (``bearerguard.asgi.TokenUser``).
        username: its subject (``sub``), or ``""``.
    """

    __slots__ = ("_access_token", "username")

    id = None
    pk = None
    is_active = False
    is_staff = False
    is_superuser = False
    is_anonymous = False
    is_authenticated = True

    def __init__(self, access_token: AccessToken) -> None:
        self._access_token = access_token
        self.username = access_token.subject or ""

    @property
    def access_token(self) -> AccessToken:
        """The verified token."""
        return self._access_token

    def __str__(self) -> str:
        return self.username

    def __repr__(self) -> str:
        return f"TokenUser({self.username!r})"

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return False

    def has_perms(self, perm_list: Iterable[str], obj: object = None) -> bool:
        return False

    def has_module_perms(self, app_label: str) -> bool:
        return False

    async def ahas_perm(self, perm: str, obj: object = None) -> bool:
        return False

    async def ahas_perms(self, perm_list: Iterable[str], obj: object = None) -> bool:
        return False

    async def ahas_module_perms(self, app_label: str) -> bool:
        return False

    def get_all_permissions(self, obj: object = None) -> set[str]:
        return set()

    async def aget_all_permissions(self, obj: object = None) -> set[str]:
        return set()


class BearerGuardAuthentication:
    """Django REST framework authentication: the token the middleware verified, handed to
    DRF. List ``"bearerguard.django.BearerGuardAuthentication"`` first in
    ``REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"]`` (or a view's
    ``authentication_classes``); it needs no DRF import and verifies nothing itself.

    For a request let in with a token, DRF's ``request.user`` is its ``TokenUser`` and
    ``request.auth`` the ``AccessToken``, so ``IsAuthenticated`` lets it in. A request let in
    without one (a public path) is left to the classes listed after it; refused by DRF
    then, it is answered 401 with the challenge the middleware answers a missing token with
    (RFC 6750 §3.1: the guard's ``realm``, and ``resource_metadata`` or the ``DPoP`` scheme
    as configured), and audited as the middleware audits one. DRF takes the challenge of
    the class listed first: listed after ``SessionAuthentication``, such a request gets
    DRF's 403 without one.

    Raises:
        ConfigurationError: the request reached DRF with no verdict of the middleware
            (``BearerGuardMiddleware`` is not in ``settings.MIDDLEWARE``).
    """

    def authenticate(self, request: Any) -> tuple[TokenUser, AccessToken] | None:
        token = _verdict(request).token
        return None if token is None else (TokenUser(token), token)

    def authenticate_header(self, request: Any) -> str:
        # DRF asks for it to answer NotAuthenticated or AuthenticationFailed with a 401: the
        # middleware's own answer to a missing token. Audited as the middleware audits one
        # when no token was sent; a token it let in was audited then, and the refusal is the
        # view's (an AuthenticationFailed of its own).
        auth = _verdict(request)
        guard = auth.guard
        error = MissingTokenError("Django REST framework refused a request without a token")
        if auth.token is None:
            guard.audit.refused(error, auth, perf_counter() - auth.started)
        headers = refusal_for(guard, error).headers
        return next(value for name, value in headers if name == "www-authenticate")


def _verdict(request: Any) -> RequestAuth:
    """The middleware's verdict on ``request`` (DRF's ``Request`` or Django's)."""
    auth = _request_auth(request)
    if auth is None:
        raise ConfigurationError(
            "BearerGuardAuthentication found no verified token for this request: list "
            "bearerguard.django.BearerGuardMiddleware in settings.MIDDLEWARE"
        )
    return auth


def _streamed_with(response: Any, auth: RequestAuth, *, recheck: bool, run_async: bool) -> Any:
    """``response``, its streaming body (sync or async) read with ``current_auth`` set, so
    that ``get_access_token()`` works while it streams, as behind the ASGI middleware; a
    file's body is left alone (Django hands it to the server's ``wsgi.file_wrapper``),
    unless it is rechecked.

    With ``recheck`` (``STREAM_RECHECK``), a request's token is checked again before each
    further chunk: not for a sync body under ASGI, which Django reads whole before sending
    any of it (nothing streams), and whose recheck would need the store's sync side. A
    ``FileResponse`` is rechecked too: its file, read through the recheck, is no longer
    one Django hands to the server's ``wsgi.file_wrapper`` (which may send it with
    ``sendfile``, past any recheck), but a body the server iterates."""
    if getattr(response, "streaming", False):
        recheck = recheck and auth.token is not None
        if getattr(response, "file_to_stream", None) is not None and (not recheck or run_async):
            return response
        if getattr(response, "is_async", False):
            # The view's own iterator (Django keeps it as _iterator): streaming_content is a
            # wrapper of it, whose aclose() leaves it suspended (an async for never closes
            # what it iterates), to the garbage collector and no token whenever anything
            # else held it. Django's wrapper is put back around this one as it streams.
            inner = getattr(response, "_iterator", None)
            body = response.streaming_content if inner is None else inner
            streamed = (RecheckedAsyncBody if recheck else AsyncBodyWithAuth)(body, auth)
            response.streaming_content = streamed
            response.close = _aclosed_with(response.close, streamed)
        else:
            wrapper = RecheckedBody if recheck and not run_async else BodyWithAuth
            # A FileResponse's file_to_stream goes with a body that cannot read(): Django
            # then serves the body, rechecked, and still closes the file with the response.
            response.streaming_content = wrapper(response.streaming_content, auth)
            # Django closes the view's generator in response.close(), which the server calls
            # when the client went away mid-stream: its clean-up reads the token there too,
            # as behind the WSGI middleware, which closes the response with it set.
            response.close = _closed_with(response.close, auth)
    return response


def _closed_with(close: Callable[[], object], auth: RequestAuth) -> Callable[[], None]:
    """``close``, run with ``current_auth`` set to ``auth`` and reset at once."""

    def closed() -> None:
        reset = current_auth.set(auth)
        try:
            close()
        finally:
            current_auth.reset(reset)

    return closed


_closing: set[asyncio.Task[None]] = set()  # strong references: the loop keeps weak ones


def _aclosed_with(close: Callable[[], object], body: AsyncBodyWithAuth) -> Callable[[], None]:
    """``close``, which first has ``body`` closed with ``current_auth`` set.

    Django never closes an async body: a view's async generator left suspended by a client
    that went away was finalized by the garbage collector, its clean-up (``finally``) run
    with no token, where behind the ASGI middleware it reads the request's. Django closes
    the response synchronously (in a worker thread under ASGI): the generator's ``aclose()``
    is started on the loop it streamed in, as the collector would start it, with the token.
    A body never iterated has no clean-up to run.
    """

    def closed() -> None:
        loop = body.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs there
                loop.call_soon_threadsafe(_start_closing, body)
        close()

    return closed


def _start_closing(body: AsyncBodyWithAuth) -> None:
    task = asyncio.ensure_future(body.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class BearerGuardMiddleware:
    """Authenticate every request to a Django project with a ``BearerGuard``.

    Put ``"bearerguard.django.BearerGuardMiddleware"`` in ``settings.MIDDLEWARE``, above any
    middleware or view that must only see authenticated requests, and configure it with
    the ``BEARERGUARD`` setting, a dict:

    - ``GUARD`` (required): the dotted path to a ``BearerGuard`` or ``TrustedIssuers``
      (``"myproject.auth.guard"``), or the object itself.
    - ``PUBLIC_PATHS``: paths served without credentials (exact, or ``"/prefix/*"``),
      matched against ``request.path_info`` as the WSGI middleware matches ``PATH_INFO``.
      ``"/health"`` is not ``"/health/"``: list the path as your URLconf serves it. A
      ``CommonMiddleware`` redirect for ``APPEND_SLASH`` leads to a path that is then
      refused unless listed too (fail closed).
    - ``WARM_UP``: fetch the key set when the middleware is loaded (blocking, once).
    - ``STREAM_RECHECK``: check a request's token again before each further chunk of a
      ``StreamingHttpResponse`` (and, under WSGI, of a ``FileResponse``, which the
      server then iterates instead of sending it through its ``wsgi.file_wrapper``), as
      ``BearerGuardWSGIMiddleware(stream_recheck=True)`` does; the first that fails ends
      the response there, audited once. Off by default.

    It works under WSGI and ASGI: Django hands it a sync or an async ``get_response`` and it
    answers in kind, verifying with the guard's synchronous side (WSGI) or awaiting its
    asynchronous one (ASGI). Refusals are RFC 6750 §3 answers, identical to those of
    ``BearerGuardWSGIMiddleware``, with the same audit events; ``requires_scopes``,
    ``requires_any_scope`` and ``get_access_token(request)`` work in views as behind it.
    Behind ``BearerGuardWSGIMiddleware`` (or the ASGI middleware) with the same guard, a
    request they let in with a token is passed on as decided: audited once.

    Raises:
        ImproperlyConfigured: at start-up (when Django loads the middleware), for a missing
            or wrong ``BEARERGUARD`` setting, or, when Django runs it synchronously (WSGI, or
            ASGI with a sync-only middleware listed after it), a guard whose revocation
            store, usage monitor or DPoP replay store has no synchronous side.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        guard, public_paths, warm_up, stream_recheck = _settings_of(
            getattr(settings, SETTING, None)
        )
        self.get_response = get_response
        self.stream_recheck = stream_recheck
        self.guard = guard
        self.public_paths = public_paths
        # The cache-hit fast path serves a plain single-issuer Bearer setup (decided once).
        self._reusing = (
            guard if isinstance(guard, BearerGuard) and not guard.sender_constrained else None
        )
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)  # Django then awaits what __call__ returns
        else:
            try:
                guard.require_sync_side()
            except ConfigurationError as exc:
                # Django's handler does not say which it is: a sync get_response comes under
                # WSGI, and under ASGI from a sync-only middleware listed after this one.
                raise _refused(
                    f"{exc} (Django calls this middleware synchronously under WSGI, and under "
                    "ASGI when a sync-only middleware listed after it in MIDDLEWARE makes it "
                    "run in sync mode: there, list that middleware before it instead)"
                ) from exc
        if warm_up:
            try:
                guard.warm_up_sync()
            except ServiceUnavailableError as exc:
                _log.warning("bearerguard: warm-up failed, requests fail closed: %s", exc)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self._acall(request)
        started = perf_counter()
        metadata = self._metadata(request)
        if metadata is not None:
            return metadata
        if self._let_in(request):
            return self.get_response(request)
        described = _described(request)
        auth = self._reused(request, described, started)
        if auth is None:
            try:
                access, binding = self._verify(request, described)
            except AuthError as error:
                return self._refuse(request, error, described, started)
            auth = self._admit(request, access, binding, described, started)
        reset = current_auth.set(auth)
        try:
            response = self.get_response(request)
        finally:
            current_auth.reset(reset)
        return _streamed_with(response, auth, recheck=self.stream_recheck, run_async=False)

    async def _acall(self, request: Any) -> Any:
        started = perf_counter()
        metadata = self._metadata(request)
        if metadata is not None:
            return metadata
        if self._let_in(request):
            return await self.get_response(request)
        described = _described(request)
        auth = self._reused(request, described, started)  # no I/O: fine in the event loop
        if auth is None:
            try:
                access, binding = await self._averify(request, described)
            except AuthError as error:
                return self._refuse(request, error, described, started)
            auth = self._admit(request, access, binding, described, started)
        reset = current_auth.set(auth)
        try:
            response = await self.get_response(request)
        finally:
            current_auth.reset(reset)
        return _streamed_with(response, auth, recheck=self.stream_recheck, run_async=True)

    def _metadata(self, request: Any) -> HttpResponse | None:
        """The protected-resource metadata (RFC 9728 §3) when ``request`` asks for it at
        the host's top (RFC 8615 §3), as the WSGI and ASGI middlewares serve it: not under
        a ``SCRIPT_NAME``, nor below a Starlette ``Mount`` (see ``serve_metadata``)."""
        resource = self.guard.protected_resource
        if resource is None or request.path_info not in resource.paths:
            return None
        scope = _scope(request)
        if scope is None:
            if not wsgi._at_the_top(request.META):
                return None
        elif asgi._well_known_path(scope) not in resource.paths:
            return None
        _redact_query_token(request)  # served without a token check: nothing to log
        status, headers, body = resource.response(_received_method(request))
        response = HttpResponse(body, status=status)
        for name, value in headers:
            response[name] = value
        return response

    def _let_in(self, request: Any) -> bool:
        """Whether a middleware further out with the same guard let ``request`` in with a
        token (``already_let_in``): the WSGI middleware's verdict is in ``META`` (the
        environ), the ASGI middleware's in the scope, this one's (listed twice) in both."""
        guard = self.guard
        scope = _scope(request)
        for store in (request.META,) if scope is None else (request.META, scope):
            if already_let_in(store, guard):
                _log_in(request, store[SCOPE_KEY].token)
                return True
        return False

    def _reused(self, request: Any, described: _Described, started: float) -> RequestAuth | None:
        """The verdict for a token verified before and sent the usual way (one
        ``Authorization: Bearer`` value, no ``access_token`` in the query), from the guard's
        cache with no I/O (``BearerGuard.reused``), as the WSGI and ASGI middlewares serve it;
        ``None`` sends the request down the general path, which applies every rule."""
        reusing = self._reusing
        if reusing is None:
            return None
        meta = request.META
        header = meta.get("HTTP_AUTHORIZATION")
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return None
        query = str(meta.get("QUERY_STRING", ""))
        if "access_token" in query or "%" in query:  # a percent-encoded name may decode to it
            return None
        entry = reusing.reused(header.encode("latin-1", "replace"))
        if entry is None:
            return None
        auth = RequestAuth(reusing, entry.token, started, *described, wsgi._django_response)
        audit = reusing.audit
        if audit.records_accepted:
            entry.record_accepted(audit, auth, perf_counter() - started)
        _record(request, auth)
        return auth

    def _verify(self, request: Any, described: _Described) -> tuple[AccessToken | None, str]:
        """Extraction and verification with the guard's synchronous side, as under WSGI."""
        guard = self.guard
        token, scheme, dpop, certificate = _credentials_of(guard, request, self.public_paths)
        if token is None:
            return None, scheme
        info = RequestInfo(*described)
        access = guard.authenticate_sync(
            token, client=info.client, request=info, dpop=dpop, certificate=certificate
        )
        return access, binding_of(scheme, guard.mtls, access)

    async def _averify(self, request: Any, described: _Described) -> tuple[AccessToken | None, str]:
        """``_verify`` with the guard's asynchronous side, as under ASGI."""
        guard = self.guard
        token, scheme, dpop, certificate = _credentials_of(guard, request, self.public_paths)
        if token is None:
            return None, scheme
        info = RequestInfo(*described)
        access = await guard.authenticate(
            token, client=info.client, request=info, dpop=dpop, certificate=certificate
        )
        return access, binding_of(scheme, guard.mtls, access)

    def _refuse(
        self, request: Any, error: AuthError, described: _Described, started: float
    ) -> HttpResponse:
        """Audit ``error`` and answer it (RFC 6750 §3), as the WSGI middleware does."""
        guard = self.guard
        guard.audit.refused(error, RequestInfo(*described), perf_counter() - started)
        _redact_query_token(request)
        refusal = refusal_for(guard, error)
        response = wsgi._django_response(refusal)
        if _received_method(request) == "HEAD":  # RFC 9110 §9.3.2, as WSGI and ASGI
            response.content = b""
            # RFC 9110 §8.6: the GET's length, which a middleware above (CommonMiddleware)
            # would otherwise measure on the emptied content, as 0.
            response["Content-Length"] = str(len(refusal.body))
        return response

    def _admit(
        self,
        request: Any,
        access: AccessToken | None,
        binding: str,
        described: _Described,
        started: float,
    ) -> RequestAuth:
        """Audit the acceptance and record the verdict (``_record``)."""
        guard = self.guard
        auth = RequestAuth(guard, access, started, *described, wsgi._django_response)
        if access is not None:
            guard.audit.accepted(access, auth, perf_counter() - started, binding=binding)
        _record(request, auth)
        return auth
