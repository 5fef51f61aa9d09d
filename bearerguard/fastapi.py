"""FastAPI glue: a ``Security`` dependency that requires scopes and injects the token.

    bearer = BearerAuth(guard)
    app = FastAPI()
    bearer.install(app)  # RFC 6750 answers, and its refusals and any-of scopes in OpenAPI

    @app.get("/items")
    async def items(token: Annotated[AccessToken, bearer.requires("items:read")]) -> ...

    @app.delete("/items/{item_id}", dependencies=[bearer.requires_any("items:delete", "admin")])
    async def delete(item_id: int) -> ...

    router = APIRouter(dependencies=[bearer.requires("admin")])  # a whole router
    bearer.protect(app)  # or a whole app: a valid token on every operation
    bearer.document_middleware(app)  # behind BearerGuardMiddleware: its token in OpenAPI
    document_middleware(app)  # the same without a BearerAuth (a TrustedIssuers middleware)

``BearerAuth`` is a FastAPI security scheme, so the OpenAPI document names it and lists,
per operation, the scopes it needs: Swagger UI shows the padlock and its "Authorize" button
takes a bearer JWT (or runs OAuth 2.0 flows, with ``oauth2_flows``, or logs in with the
issuer's OpenID Connect discovery document, with ``openid_connect=True``). Scopes declared
with ``Security(bearer, scopes=[...])`` anywhere in an operation's dependencies add up
(all-of, as FastAPI's ``SecurityScopes`` do); ``requires_any`` is one-of. The guard's
``scope_implications`` apply to both.

It works with ``BearerGuardMiddleware`` in front (it then reuses the middleware's verdict:
one verification, one audit event) or without it (it verifies the token itself). Like any
FastAPI dependency it runs before the body is validated, so an under-scoped request gets
403, not 422 with validation details (a body that is not JSON at all is answered 422 by
FastAPI before any dependency runs). FastAPI has read and parsed the whole body by then,
multipart uploads included: for upload routes put the middleware in front, which refuses
before reading any. Refusals are RFC 6750 answers; without the
middleware, ``install(app)`` is what gives them the RFC 6750 JSON body (FastAPI's default
handler would answer ``{"detail": ...}``, with the right status and challenge).

What ``app.openapi()`` says of the scheme is written by ``bearerguard._openapi``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextvars import Token
from time import perf_counter
from typing import Annotated, Any, NoReturn, TypeVar, get_args, get_origin

try:
    import fastapi.routing
    from fastapi import FastAPI, Security, params
    from fastapi.dependencies.utils import get_dependant, get_typed_annotation
    from fastapi.openapi.models import OAuthFlows as OAuthFlowsModel
    from fastapi.openapi.models import SecurityBase as SchemeModel
    from fastapi.routing import APIRoute, APIRouter, APIWebSocketRoute
    from fastapi.security import SecurityScopes
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "bearerguard.fastapi needs FastAPI: pip install 'bearerguard[fastapi]'"
    ) from exc
from starlette.applications import Starlette
from starlette.datastructures import URLPath
from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from bearerguard._context import (
    SCOPE_KEY,
    Refused,
    RequestAuth,
    current_auth,
    decided_by,
    refusal_for,
)
from bearerguard._core.extract import joined_request_ids, request_credentials
from bearerguard._core.paths import PublicPaths
from bearerguard._core.refusal import Refusal
from bearerguard._core.scopes import validate_scope_names
from bearerguard._openapi import (
    _AUTHENTICATES,
    BearerScheme,
    _api_routes,
    _bearer_of,
    _call_requirements,
    _checked_scheme_name,
    _document_middleware,
    _document_openapi,
    _openid_connect_model,
    _openid_connect_url,
    _scheme_model,
    _security_scopes,
    document_middleware,
    oauth2_flows,
)
from bearerguard.asgi import (
    BearerGuardMiddleware,
    _authenticate_bound,
    _authorization,
    _query_string,
    _redact_query_token,
    _serve_metadata,
    _well_known_path,
)
from bearerguard.audit import RequestInfo
from bearerguard.decorators import (
    REQUIREMENT_ATTRIBUTE,
    ScopeRequirement,
    challenge_scopes,
    check_scopes,
    scope_requirements,
)
from bearerguard.errors import AuthError, ConfigurationError
from bearerguard.guard import BearerGuard
from bearerguard.issuers import TrustedIssuers
from bearerguard.metadata import ProtectedResource, resource_to_serve
from bearerguard.token import AccessToken

__all__ = ["BearerAuth", "BearerRefusal", "document_middleware", "oauth2_flows", "serve_metadata"]

_log = logging.getLogger("bearerguard")
_App = TypeVar("_App", bound=Starlette)  # serve_metadata returns the app it is given
_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
_NO_PUBLIC_PATHS = PublicPaths(())
# The BearerAuth route_verdict takes per operation, by id(dependant), the dependant held.
_VERDICT_BEARERS: dict[int, tuple[Any, BearerAuth | None]] = {}
_MAX_VERDICT_BEARERS = 4096


class BearerRefusal(HTTPException):
    """A refusal raised by ``BearerAuth`` when no middleware is in front to answer it.

    An ``HTTPException``, so that even without ``BearerAuth.install`` the answer has the
    right status and ``WWW-Authenticate`` challenge (never a 500); with it, the body is the
    RFC 6750 one.
    """

    def __init__(self, error: AuthError, refusal: Refusal) -> None:
        headers = {name: value for name, value in refusal.headers if name != "content-type"}
        super().__init__(refusal.status, error.description, headers)
        self.error = error
        self.refusal = refusal


async def _answer_refusal(request: Request, exc: Exception) -> Response:
    refusal = exc.refusal if isinstance(exc, BearerRefusal | Refused) else None
    if refusal is None:  # pragma: no cover - registered for these two classes only
        raise exc
    return Response(refusal.body, status_code=refusal.status, headers=dict(refusal.headers))


class _MetadataRoute(BaseRoute):
    """The protected-resource metadata (RFC 9728 §3) at one path, answering any method as
    the middlewares do (GET and HEAD, OPTIONS for a CORS preflight; 405 otherwise).

    The path is compared literally (a resource path may decode to ``{`` or ``:``, which a
    ``Route`` would read as a parameter), and a route of the app's own at the same path,
    added before or after ``install``, serves it instead: this one only stands first so
    that no catch-all route shadows it. Only below the server's root path, as
    ``BearerGuardMiddleware`` compares it: inside a mount it is a path of the app, and no
    well-known URL (RFC 8615 §3).
    """

    def __init__(self, path: str, resource: ProtectedResource, routes: list[BaseRoute]) -> None:
        self.path = path
        self.resource = resource
        self.routes = routes
        self.include_in_schema = False

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or _well_known_path(scope) != self.path:
            return Match.NONE, {}
        for route in self.routes:
            if route is not self and getattr(route, "path", None) == self.path:
                return Match.NONE, {}
        return Match.FULL, {"endpoint": self, "path_params": dict(scope.get("path_params", {}))}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _serve_metadata(self.resource, scope, send)


def _never_called(refusal: Refusal) -> Any:  # pragma: no cover - marks dependency verdicts
    raise AssertionError("a dependency verdict has no framework responder")


def _middleware_answers(scope: Mapping[str, Any]) -> bool:
    """Whether a ``Refused`` raised inside ``scope``'s app reaches something that sends it.

    The app's own handler (``install``) or a ``BearerGuardMiddleware`` among its middleware
    does. When the middleware wraps the app from outside, or sits in front of a ``Mount``
    holding it, the app's ``ServerErrorMiddleware`` would catch it first and answer 500.
    """
    app = scope.get("app")
    stack = getattr(app, "user_middleware", None)
    if stack is None or Refused in getattr(app, "exception_handlers", {}):
        return True
    return any(
        isinstance(entry.cls, type) and issubclass(entry.cls, BearerGuardMiddleware)
        for entry in stack
    )


def raise_refusal(
    auth: RequestAuth, error: AuthError, refusal: Refusal, scope: Mapping[str, Any]
) -> NoReturn:
    """Answer a refusal from inside a dependency, already audited.

    As ``Refused`` for the middleware to send when it recorded the verdict and will see the
    exception; as a ``BearerRefusal`` (an ``HTTPException``) when ``BearerAuth`` did with no
    middleware in front, or the middleware is outside the app (wrapping it, or in front of
    a ``Mount``), so the answer keeps its status and challenge, never a 500.
    """
    if auth.respond is _never_called or not _middleware_answers(scope):
        raise BearerRefusal(error, refusal)
    raise Refused(error, refusal)


async def route_verdict(
    connection: HTTPConnection, required: tuple[str, ...]
) -> RequestAuth | None:
    """The verdict of the path operation's ``BearerAuth``, for a scope decorator's check
    that FastAPI solves before it (the ``BearerAuth`` is inside another dependency).

    Verified and audited once: the ``BearerAuth`` dependency reuses it when it runs, and
    makes it current then. When ``app.dependency_overrides`` replaced what used it (a
    test's own ``current_user``) with something that takes no token, the check verifies
    with the ``BearerAuth`` the operation was written with: an override never stands in
    for a token. ``None`` when the operation has no ``BearerAuth`` at all.

    Raises:
        Refused, BearerRefusal, WebSocketException: as the ``BearerAuth`` dependency does.
    """
    bearer = _verdict_bearer(connection.scope)
    if bearer is None:
        return None
    auth, reset = await bearer._authenticate(connection, required)
    _forget(reset)  # until the dependency runs: it forgets it once the request is over
    return auth


def _verdict_bearer(scope: Mapping[str, Any]) -> BearerAuth | None:
    """The ``BearerAuth`` whose verdict ``route_verdict`` takes: the first among what
    FastAPI solves, else among what the overrides left out.

    Without overrides it depends on the operation's dependencies alone, and is found once
    per operation (it is looked for on every request without the middleware). Overrides
    are a dict a test changes at will: with any, it is looked for afresh.
    """
    dependant, overrides = _route_dependant(scope)
    if overrides:
        found = _first_bearer(_route_dependants(scope))
        if found is None:
            found = _first_bearer(_route_dependants(scope, overridden=True))
        return None if found is None else _swapped(scope, found)
    cached = _VERDICT_BEARERS.get(id(dependant))
    if cached is not None and cached[0] is dependant:  # the dependant held: its id not reused
        return cached[1]
    found = _first_bearer(_route_dependants(scope))
    if len(_VERDICT_BEARERS) >= _MAX_VERDICT_BEARERS:  # routes rebuilt again and again
        _VERDICT_BEARERS.clear()
    _VERDICT_BEARERS[id(dependant)] = (dependant, found)
    return found


def _swapped(scope: Mapping[str, Any], bearer: BearerAuth) -> BearerAuth:
    """The ``BearerAuth`` that ``app.dependency_overrides`` puts in ``bearer``'s place (a
    test's, with its guard), else ``bearer``: FastAPI swaps ``Security(bearer)`` itself, but
    not a ``requires_any`` that verifies with it. A stub is no ``BearerAuth``: ignored."""
    _, overrides = _route_dependant(scope)
    swapped = overrides.get(bearer) if overrides else None
    return swapped if isinstance(swapped, BearerAuth) else bearer


def _first_bearer(dependants: Iterable[Any]) -> BearerAuth | None:
    for each in dependants:
        bearer = _bearer_of(each.call)
        if isinstance(bearer, BearerAuth):  # the one BearerScheme: narrowed for its verdict
            return bearer
    return None


def route_scopes(
    scope: Mapping[str, Any], auth: RequestAuth | None, required: tuple[str, ...]
) -> tuple[str, ...]:
    """The scopes a token needs for the request's whole path operation, for a challenge.

    RFC 6750 §3 has ``scope`` name "the scope necessary to access the requested resource":
    all of it, not only the failing check's ``required``, or a client that asks for what a
    403 names gets a token the next check refuses. Every check's all-of scopes, and of an
    any-of group the alternatives ``auth``'s token holds, or else all of them.
    """
    all_of: list[str] = []
    endpoint = getattr(scope.get("route"), "endpoint", None)
    requirements = [] if endpoint is None else scope_requirements(endpoint)
    for dependant in _route_dependants(scope):
        if _bearer_of(dependant.call) is not None:
            all_of.extend(_security_scopes(dependant))
        requirements.extend(_call_requirements(dependant.call))
    all_of.extend(challenge_scopes(requirements, auth))
    return tuple(dict.fromkeys([*all_of, *required]))


def _route_dependant(scope: Mapping[str, Any]) -> tuple[Any, Mapping[Any, Any]]:
    """The request's path operation's ``Dependant``, and the app's dependency overrides."""
    route = scope.get("route")
    dependant = getattr(route, "dependant", None)
    provider = getattr(route, "dependency_overrides_provider", None)
    # Newer FastAPI keeps an included router's dependencies on the route's context, and the
    # overrides it solves with: the including app's (the route's own are the router's).
    effective = getattr(fastapi.routing, "_get_scope_effective_route_context", None)
    context = None if effective is None else effective(scope)
    if context is not None and getattr(context, "original_route", None) is route:
        dependant = getattr(context, "dependant", dependant)
        provider = getattr(context, "dependency_overrides_provider", provider)
    return dependant, getattr(provider, "dependency_overrides", None) or {}


def _route_dependants(scope: Mapping[str, Any], *, overridden: bool = False) -> list[Any]:
    """The dependencies FastAPI solves for the request's path operation, depth first in
    declaration order; one ``app.dependency_overrides`` replaces, without what it needs,
    is followed by what its replacement needs, or is listed when it is a ``BearerAuth``
    (a test's, say).
    With ``overridden``, those the overrides left out instead: the replaced dependencies
    and what they need, as the operation was written (a ``BearerAuth`` among them that an
    override replaces with another ``BearerAuth``, as that one)."""
    dependant, overrides = _route_dependant(scope)
    found: list[Any] = []
    expanded: list[Any] = []  # replacements read, compared by identity or equality
    pending = [(each, False) for each in reversed(getattr(dependant, "dependencies", ()))]
    while pending:
        each, dropped = pending.pop()
        replaced = dropped or each.call in overrides
        if replaced == overridden:
            swapped = overrides.get(each.call) if overridden else None
            if _bearer_of(swapped) is not None:
                # Left out with what needed it, but itself replaced by a BearerAuth (a test's,
                # with its guard): that one verifies, as it would had the dependency stayed.
                found.append(dataclasses.replace(each, call=swapped, dependencies=[]))
            else:
                found.append(each)
        if not replaced or overridden:
            pending.extend((child, replaced) for child in reversed(each.dependencies))
        elif _bearer_of(replacement := overrides[each.call]) is not None:
            # FastAPI solves the replacement with the scopes declared around the original.
            found.append(dataclasses.replace(each, call=replacement, dependencies=[]))
        elif replacement not in expanded:  # once: a replacement may need what it replaced
            # And what the replacement needs, read as FastAPI reads it: a test's own user
            # dependency may take the token with its own BearerAuth (its guard).
            expanded.append(replacement)
            solved = get_dependant(path=each.path or "", call=replacement)
            pending.extend((child, False) for child in reversed(solved.dependencies))
    return found


def declares_bearer(parameter: inspect.Parameter, namespace: dict[str, Any]) -> bool:
    """Whether ``parameter`` of a path operation is a ``BearerAuth`` dependency.

    As its default (``Security(bearer, ...)``, ``bearer.requires(...)``) or in its
    ``Annotated`` metadata; a string annotation is read in ``namespace``, as FastAPI reads it.
    """
    return any(
        isinstance(marker.dependency, BearerAuth)
        or isinstance(getattr(marker.dependency, _AUTHENTICATES, None), BearerAuth)
        for marker in _dependencies(parameter, namespace)
    )


def declares_dependency(parameter: inspect.Parameter, namespace: dict[str, Any]) -> bool:
    """Whether ``parameter`` is a dependency (``Depends``, ``Security``), read as in
    ``declares_bearer``: never a method's ``self``."""
    return bool(_dependencies(parameter, namespace))


def _dependencies(parameter: inspect.Parameter, namespace: dict[str, Any]) -> list[params.Depends]:
    """The ``Depends`` markers of ``parameter``: its default, its ``Annotated`` metadata."""
    annotation = parameter.annotation
    if isinstance(annotation, str):
        try:
            annotation = get_typed_annotation(annotation, namespace)
        except Exception:  # noqa: BLE001 - a name defined later: FastAPI will say so
            annotation = None
    markers = [parameter.default]
    if get_origin(annotation) is Annotated:
        markers.extend(get_args(annotation)[1:])
    return [marker for marker in markers if isinstance(marker, params.Depends)]


def _forget(reset: Token[RequestAuth | None] | None) -> None:
    """Undo the dependency's ``current_auth.set``, if it made one."""
    if reset is not None:
        current_auth.reset(reset)


def _describe(scope: Mapping[str, Any]) -> RequestInfo:
    client = scope.get("client")
    # Repeated: one comma-joined value (RFC 9110 §5.3), as the middlewares record it.
    request_id = joined_request_ids(scope.get("headers", ()))
    return RequestInfo(
        scope.get("method", "WEBSOCKET"),
        scope.get("path", ""),
        (client[0] or None) if client else None,  # a host of "": no address, as the middleware
        request_id.decode("latin-1") if request_id else None,
    )


class BearerAuth(BearerScheme):
    """A FastAPI security scheme whose dependency verifies the token and its scopes.

    Args:
        guard: the configured guard.
        scheme_name: the security scheme's name in the OpenAPI document.
        description: its description there.
        oauth2_flows: describe the scheme as OAuth 2.0 with these flows (see
            ``oauth2_flows``) instead of an HTTP bearer JWT, so that Swagger UI's
            "Authorize" obtains a token from the issuer. Verification is the same.
        openid_connect: offer an OpenAPI ``openIdConnect`` scheme too, so that Swagger
            UI's "Authorize" logs in with the issuer: ``True`` for the issuer's OpenID
            Connect discovery document (``<issuer>/.well-known/openid-configuration``,
            OIDC Discovery 1.0 §4, where the guard discovers its keys), or that
            document's URL. Each operation then needs the token of either scheme, with
            the same scopes. Off by default: Swagger UI logs in only with a client
            registered at the issuer (``swagger_ui_init_oauth``).
        openid_connect_scheme: the ``openIdConnect`` scheme's name in the document; give
            it ``scheme_name`` for that scheme to be the only one, instead of the HTTP
            bearer one.

    Use it as ``Security(bearer, scopes=[...])`` or through ``requires`` and
    ``requires_any``; the dependency's value is the ``AccessToken``.

    Raises:
        ConfigurationError: ``guard`` is not a ``BearerGuard``; a scheme name that is not an
            OpenAPI component name; ``openid_connect`` neither a bool nor an https URL.
    """

    def __init__(
        self,
        guard: BearerGuard,
        *,
        scheme_name: str = "bearerAuth",
        description: str | None = None,
        oauth2_flows: OAuthFlowsModel | None = None,
        openid_connect: bool | str = False,
        openid_connect_scheme: str = "openIdConnect",
    ) -> None:
        if not isinstance(guard, BearerGuard):
            raise ConfigurationError(
                "guard must be a BearerGuard; for several issuers (TrustedIssuers), put "
                "BearerGuardMiddleware(guard=...) in front of the app, declare scopes "
                "with requires_scopes and document them with document_middleware(app)"
            )
        self.guard = guard
        self.scheme_name = _checked_scheme_name(scheme_name, "scheme_name")
        self.model: SchemeModel = _scheme_model(description, oauth2_flows)
        # The openIdConnect scheme offered beside this one, as (its name, its model).
        self.beside: tuple[str, SchemeModel] | None = None
        url = _openid_connect_url(guard, openid_connect)
        if url is not None and openid_connect_scheme == scheme_name:
            if oauth2_flows is not None:
                raise ConfigurationError(
                    "one scheme cannot be both oauth2_flows and openid_connect: give "
                    "openid_connect_scheme another name to offer both"
                )
            self.model = _openid_connect_model(url, description)
        elif url is not None:
            name = _checked_scheme_name(openid_connect_scheme, "openid_connect_scheme")
            self.beside = (name, _openid_connect_model(url, None))
        self._warned: set[int] = set()

    def __repr__(self) -> str:
        return f"BearerAuth({self.guard!r})"

    # -- the dependency -------------------------------------------------------------------

    async def __call__(
        self, connection: HTTPConnection, security_scopes: SecurityScopes
    ) -> AsyncIterator[AccessToken]:
        """Verify the request's token and the scopes the operation declared (all of them).

        A dependency with ``yield``: the token it yields is the dependency's value.

        Raises:
            Refused, BearerRefusal: the RFC 6750 refusal, already audited.
            WebSocketException: on a websocket, code 1008 (before ``accept``).
        """
        required = tuple(security_scopes.scopes)
        auth, reset = await self._authenticate(connection, required)
        try:
            yield self._check(connection, auth, required, any_of=False)
        finally:
            _forget(reset)

    async def _authenticate(
        self, connection: HTTPConnection, required: tuple[str, ...]
    ) -> tuple[RequestAuth, Token[RequestAuth | None] | None]:
        """The request's verdict, and the context variable's token to reset once the request
        is over (``None`` when this call did not set it)."""
        scope = connection.scope
        found = scope.get(SCOPE_KEY)
        if isinstance(found, RequestAuth) and (
            found.guard is self.guard or (found.token is not None and decided_by(found, self.guard))
        ):
            # The middleware's verdict (or a TrustedIssuers' one reached by this guard), or this
            # dependency's earlier one: not verified twice (two audit events, and a DPoP proof
            # refused as replayed, RFC 9449 §11.1). Made current here when a scope
            # decorator's check verified it first (route_verdict) and did not keep it so.
            if current_auth.get() is found:
                return found, None
            return found, current_auth.set(found)
        guard = self.guard
        started = perf_counter()
        authorization = _authorization(scope["headers"])
        info = _describe(scope)
        binding = "bearer"
        try:
            if guard.sender_constrained:
                # DPoP (RFC 9449 §7.1) and certificate-bound tokens (RFC 8705 §3): the
                # middleware's extraction, so that the proof or certificate is checked here too.
                request = (info.method, info.path, info.client, info.request_id)
                bound, binding = await _authenticate_bound(
                    guard,
                    scope,
                    authorization,
                    _query_string(scope),
                    request,
                    _NO_PUBLIC_PATHS,
                )
                assert bound is not None  # noqa: S101 - no public paths: a missing token raises
                token = bound
            else:
                raw = request_credentials(
                    authorization,
                    _query_string(scope),
                    scope["path"],
                    _NO_PUBLIC_PATHS,
                    max_bytes=guard.max_token_bytes,
                )
                # request_credentials refuses a missing token on a non-public path. The
                # client's address and the request, as the middleware gives them: usage
                # monitoring counts the address, and a token.anomaly event describes it.
                token = await guard.authenticate(raw or "", client=info.client, request=info)
        except AuthError as error:
            guard.audit.refused(error, info, perf_counter() - started)
            self._raise(
                connection,
                error,
                refusal_for(guard, error, route_scopes(scope, None, required)),
                from_middleware=False,
            )
        auth = RequestAuth(
            guard,
            token,
            started,
            info.method,
            info.path,
            info.client,
            info.request_id,
            _never_called,
            websocket=scope["type"] == "websocket",
        )
        guard.audit.accepted(token, auth, perf_counter() - started, binding=binding)
        scope[SCOPE_KEY] = auth
        # get_access_token() in the handler, until the dependency exits: the task serving
        # this request may serve the next one (httpx.ASGITransport runs every request in
        # the caller's task), which must not see this token.
        return auth, current_auth.set(auth)

    def _check(
        self,
        connection: HTTPConnection,
        auth: RequestAuth,
        required: tuple[str, ...],
        *,
        any_of: bool,
    ) -> AccessToken:
        denied = check_scopes(
            auth,
            required,
            any_of=any_of,
            hint=lambda: route_scopes(connection.scope, auth, required),
        )
        if denied is not None:
            error, refusal = denied
            self._raise(
                connection, error, refusal, from_middleware=auth.respond is not _never_called
            )
        assert auth.token is not None  # noqa: S101 - check_scopes refuses a missing token
        return auth.token

    def _raise(
        self,
        connection: HTTPConnection,
        error: AuthError,
        refusal: Refusal,
        *,
        from_middleware: bool,
    ) -> NoReturn:
        _redact_query_token(connection.scope)  # the server logs the URL from the scope
        if connection.scope["type"] == "websocket":
            raise WebSocketException(code=_POLICY_VIOLATION, reason=error.reason)
        if from_middleware and _middleware_answers(connection.scope):
            raise Refused(error, refusal)  # the middleware sends it
        app = connection.scope.get("app")
        handlers = getattr(app, "exception_handlers", {})
        if BearerRefusal not in handlers and id(app) not in self._warned:
            self._warned.add(id(app))
            _log.warning(
                "bearerguard: BearerAuth refusals get FastAPI's {'detail'} body; call "
                "bearer.install(app) for the RFC 6750 body"
            )
        raise BearerRefusal(error, refusal)

    # -- declaring requirements -----------------------------------------------------------

    def requires(self, *scopes: str) -> Any:
        """``Security(self, scopes=scopes)``: a valid token granting every one of ``scopes``.

        With no scopes, any valid token. Use it in ``dependencies=[...]`` of an operation,
        a router or the app, or as ``Annotated[AccessToken, bearer.requires(...)]``.

        Raises:
            ConfigurationError: a scope name with white space.
        """
        names = validate_scope_names(scopes) if scopes else ()
        return Security(self, scopes=list(names))

    def requires_any(self, *scopes: str) -> Any:
        """A valid token granting at least one of ``scopes``; the dependency's value is it.

        Raises:
            ConfigurationError: no scopes, or a scope name with white space.
        """
        required = validate_scope_names(scopes)
        bearer = self

        async def any_scope(
            connection: HTTPConnection, security_scopes: SecurityScopes
        ) -> AsyncIterator[AccessToken]:
            # The all-of scopes declared around this dependency still apply.
            verifier = _swapped(connection.scope, bearer)
            auth, reset = await verifier._authenticate(connection, tuple(security_scopes.scopes))
            try:
                verifier._check(connection, auth, tuple(security_scopes.scopes), any_of=False)
                yield verifier._check(connection, auth, required, any_of=True)
            finally:
                _forget(reset)

        setattr(any_scope, REQUIREMENT_ATTRIBUTE, ScopeRequirement(required, any_of=True))
        setattr(any_scope, _AUTHENTICATES, bearer)
        any_scope.__qualname__ = f"requires_any({', '.join(required)})"
        return Security(any_scope)

    # -- applications ---------------------------------------------------------------------

    def install(self, app: FastAPI) -> FastAPI:
        """Answer refusals with the RFC 6750 body, and document them in ``app``'s OpenAPI.

        Registers the exception handler for ``BearerRefusal``, serves the guard's
        protected-resource metadata (RFC 9728) when it has a ``resource``, and makes
        ``app.openapi()`` list, per operation that needs a token, the scopes (any-of as
        alternatives, each also naming the other security schemes the operation's
        dependencies require), the scheme (also for operations protected by
        ``requires_scopes`` behind the middleware), and the 400, 401, 403 and 503
        responses. Returns ``app``. Installing again (as ``protect`` does) changes nothing.
        """
        app.add_exception_handler(BearerRefusal, _answer_refusal)
        app.add_exception_handler(Refused, _answer_refusal)
        resource = self.guard.protected_resource
        if resource is not None:
            # Every 401 and 403 names the metadata (RFC 9728 §5.1): without the middleware in
            # front, the app serves it.
            _add_metadata_routes(app.router.routes, resource)
        _document_openapi(app, self.scheme_name, self.model, beside=self.beside)
        return app

    def document_middleware(
        self, app: FastAPI, *, public_paths: Iterable[str] | None = None
    ) -> FastAPI:
        """Document the token ``BearerGuardMiddleware`` requires on ``app``'s operations.

        Behind the middleware an operation with neither ``BearerAuth`` nor a scope
        decorator needs a token too, unless its path is public; ``app.openapi()`` then
        names this scheme (with no scopes) and the 400, 401 and 503 responses on it, so
        that Swagger UI's "Authorize" sends the token there. Operations at a public path
        are left as they are, compared as the middleware compares (``/files/{name}`` is public under
        ``/files/*``). Also calls ``install``; returns ``app``. Without a ``BearerAuth``
        (a ``TrustedIssuers`` middleware), the module's ``document_middleware`` does the same.

        Args:
            app: the FastAPI app the middleware protects.
            public_paths: the middleware's public paths, as ``app``'s own paths (for an
                app mounted under ``/api``, ``/health`` for the middleware's
                ``/api/health``); by default those of the ``BearerGuardMiddleware`` among
                ``app``'s middleware (every one's, stacked).

        Raises:
            ConfigurationError: no ``public_paths`` and no ``BearerGuardMiddleware`` among
                ``app``'s middleware (one wrapping the app from outside is not), or a public
                path the middleware would refuse.
        """
        _document_middleware(app, public_paths, self.scheme_name)
        return self.install(app)

    def protect(self, target: FastAPI | APIRouter, *scopes: str) -> None:
        """Require a valid token (granting every one of ``scopes``) on every operation.

        For an app this also calls ``install``. Call it before adding routes: FastAPI
        applies router-wide dependencies to the routes added afterwards.

        Raises:
            ConfigurationError: ``target`` already has path operations, websocket
                routes or included routers, which would stay unprotected.
        """
        router = target.router if isinstance(target, FastAPI) else target
        # A websocket route, too, takes the router's dependencies only when it is added, and
        # an included router (empty yet) those the router had when it was included.
        if any(
            isinstance(getattr(route, "original_router", None), APIRouter)
            for route in router.routes
        ) or any(True for _ in _api_routes(router.routes, (APIRoute, APIWebSocketRoute))):
            raise ConfigurationError(
                "protect() before adding path operations or including routers: existing "
                "ones would stay unprotected (to keep some public, such as a health check, "
                "protect an APIRouter instead)"
            )
        router.dependencies.append(self.requires(*scopes))
        if isinstance(target, FastAPI):
            self.install(target)


def serve_metadata(app: _App, guard: BearerGuard | TrustedIssuers) -> _App:
    """Serve ``guard``'s protected-resource metadata (RFC 9728 §3) from ``app``; returns it.

    RFC 9728 §3.1 puts the well-known path between the host and the resource's path: for
    ``https://api.example/api`` the document is at
    ``https://api.example/.well-known/oauth-protected-resource/api``, the URL every 401 and
    403 names. An app mounted under a path (``Mount("/api", app=api)``) never receives it,
    whether ``BearerAuth.install`` or a ``BearerGuardMiddleware`` of its own serves the
    metadata: call this on the outer app, the one that receives the host's paths. It serves
    only those paths (``GET``, ``HEAD``, ``OPTIONS``), without credentials, ahead of the
    app's other routes; a route of the app's own at one of them answers instead.

    Args:
        app: the outer Starlette or FastAPI app.
        guard: the guard (or ``TrustedIssuers``) of the mounted app, with a ``resource``.

    Raises:
        ConfigurationError: the guard has no ``resource``, so no metadata to serve.
    """
    resource = resource_to_serve(guard)
    _add_metadata_routes(app.router.routes, resource)
    return app


def _add_metadata_routes(routes: list[BaseRoute], resource: ProtectedResource) -> None:
    """Put a ``_MetadataRoute`` for each of ``resource``'s paths that ``routes`` does not
    serve itself first, so that no catch-all route shadows it; none twice."""
    served = {getattr(route, "path", None) for route in routes}
    for path in sorted(resource.paths - served, reverse=True):
        routes.insert(0, _MetadataRoute(path, resource, routes))
