"""The OpenAPI side of the FastAPI glue: what ``app.openapi()`` says of bearer tokens.

``BearerAuth.install`` and ``document_middleware`` wrap the app's ``openapi`` so that each
operation that needs a token names the security scheme with the scopes it needs (any-of
groups as alternatives, beside the app's other schemes) and the RFC 6750 refusals it may
answer; ``oauth2_flows`` builds the OAuth 2.0 flows Swagger UI's "Authorize" runs. Only the
document changes here: verification is ``bearerguard.fastapi``'s.

The document tells ``BearerAuth`` dependencies from other schemes' by their base class,
``BearerScheme``, defined here so that this module needs nothing of the dependency that
verifies (``bearerguard.fastapi`` imports this one).
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.openapi.models import OAuth2 as OAuth2Model
from fastapi.openapi.models import OAuthFlows as OAuthFlowsModel
from fastapi.openapi.models import OpenIdConnect as OpenIdConnectModel
from fastapi.openapi.models import SecurityBase as SchemeModel
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase

from bearerguard._core.paths import PublicPaths
from bearerguard._core.scopes import validate_scope_names
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.decorators import ScopeRequirement, scope_requirements
from bearerguard.errors import ConfigurationError
from bearerguard.guard import BearerGuard
from bearerguard.jwks import check_url, discovery_urls

_COMPONENT_NAME = re.compile(r"[a-zA-Z0-9.\-_]+")  # OpenAPI 3.1 §4.8.7
_MAX_ALTERNATIVES = 64  # any-of groups multiply; past this the document lists the groups
_ERROR_SCHEMA = "BearerError"
_ERROR_SCHEMA_TAKEN = "bearerguard.BearerError"  # when the app has a schema of that name
_INSTALLED = "__bearerguard_schemes__"  # on app.openapi: the scheme names it documents
_DESCRIBED = "__bearerguard_described__"  # on app.openapi: by name, the scheme it documents
_AUTHENTICATES = "__bearerguard_auth__"  # on a requires_any dependency: its BearerAuth
_GUARDED = "__bearerguard_guarded__"  # on an app: per scheme name, the middleware's public paths


class BearerScheme(SecurityBase):
    """A security scheme whose dependency verifies bearer tokens: ``BearerAuth``, as the
    document reads it (by ``scheme_name``), told apart from other schemes by this class."""


def oauth2_flows(
    metadata: Mapping[str, Any],
    *,
    scopes: Mapping[str, str] | Iterable[str] = (),
    flows: Sequence[str] = ("authorizationCode",),
) -> OAuthFlowsModel:
    """OpenAPI OAuth 2.0 flows built from an authorization server's metadata (RFC 8414 §2).

    Args:
        metadata: the issuer's metadata document (``authorization_endpoint``,
            ``token_endpoint``), as fetched from its discovery URL.
        scopes: the scopes Swagger UI offers, with descriptions, or just their names.
        flows: which flows to describe: ``"authorizationCode"`` (with PKCE in Swagger UI)
            and/or ``"clientCredentials"``.

    Raises:
        ConfigurationError: the metadata lacks an endpoint a requested flow needs; no flow,
            or a string given for ``flows`` or ``scopes`` (a list of names), or a scope
            name that is no scope-token (RFC 6749 §3.3).
    """
    for option, given in (("scopes", scopes), ("flows", flows)):
        if isinstance(given, str):
            raise ConfigurationError(f"oauth2_flows: {option} takes a list of names: [{given!r}]")
    if not flows:
        raise ConfigurationError("oauth2_flows: flows names no flow")
    described = dict(scopes) if isinstance(scopes, Mapping) else {name: name for name in scopes}
    if described:
        validate_scope_names(described)
    built: dict[str, Any] = {}
    token_url = metadata.get("token_endpoint")
    for flow in flows:
        if not isinstance(token_url, str):
            raise ConfigurationError("the issuer metadata has no token_endpoint")
        if flow == "authorizationCode":
            authorize = metadata.get("authorization_endpoint")
            if not isinstance(authorize, str):
                raise ConfigurationError("the issuer metadata has no authorization_endpoint")
            built[flow] = {
                "authorizationUrl": authorize,
                "tokenUrl": token_url,
                "scopes": described,
            }
        elif flow == "clientCredentials":
            built[flow] = {"tokenUrl": token_url, "scopes": described}
        else:
            raise ConfigurationError(f"unsupported flow {flow!r}")
    return OAuthFlowsModel.model_validate(built)


def document_middleware(
    app: FastAPI,
    *,
    public_paths: Iterable[str] | None = None,
    scheme_name: str = "bearerAuth",
    description: str | None = None,
    oauth2_flows: OAuthFlowsModel | None = None,
) -> FastAPI:
    """Document the token ``BearerGuardMiddleware`` requires on ``app``'s operations.

    ``BearerAuth.document_middleware`` without a ``BearerAuth``, which needs one
    ``BearerGuard``: for a middleware with a ``TrustedIssuers``. ``app.openapi()`` names
    the scheme on every operation not at a public path (with the scopes of its scope
    decorators) and the 400, 401 (and 403) and 503 responses. Only the document changes:
    refusals are the middleware's. Returns ``app``.

    Args:
        app: the FastAPI app the middleware protects.
        public_paths: the middleware's public paths, as ``app``'s own paths (for an app
            mounted under ``/api``, ``/health`` for the middleware's ``/api/health``); by
            default those of the ``BearerGuardMiddleware`` among ``app``'s middleware
            (every one's, stacked).
        scheme_name: the security scheme's name in the OpenAPI document.
        description: its description there.
        oauth2_flows: describe the scheme as OAuth 2.0 with these flows (see
            ``oauth2_flows``) instead of an HTTP bearer JWT.

    Raises:
        ConfigurationError: no ``public_paths`` and no ``BearerGuardMiddleware`` among
            ``app``'s middleware, a public path the middleware would refuse, or a
            ``scheme_name`` that is not an OpenAPI component name.
    """
    model = _scheme_model(description, oauth2_flows)
    _document_middleware(app, public_paths, _checked_scheme_name(scheme_name, "scheme_name"))
    _document_openapi(app, scheme_name, model)
    return app


def _checked_scheme_name(name: object, option: str) -> str:
    """``name``, a security scheme's name in the OpenAPI document.

    Raises:
        ConfigurationError: not a name OpenAPI allows: the keys of ``components`` are
            letters, digits, ``.``, ``-`` and ``_`` (OpenAPI 3.1 §4.8.7).
    """
    if not isinstance(name, str) or _COMPONENT_NAME.fullmatch(name) is None:
        raise ConfigurationError(
            f"{option} must be an OpenAPI component name (letters, digits, '.', '-', '_'): {name!r}"
        )
    return name


def _scheme_model(
    description: str | None, flows: OAuthFlowsModel | None
) -> HTTPBearerModel | OAuth2Model:
    """The OpenAPI security scheme: an HTTP bearer JWT, or OAuth 2.0 with ``flows``."""
    text = description or "An OAuth 2.0 access token (JWT) in the Authorization header."
    if flows is None:
        return HTTPBearerModel(bearerFormat="JWT", description=text)
    return OAuth2Model(flows=flows, description=text)


def _openid_connect_url(guard: BearerGuard, given: bool | str) -> str | None:
    """The URL of the OpenID Connect discovery document ``given`` names, if any.

    Raises:
        ConfigurationError: neither a bool nor a string, or a URL that is not https (http
            only on loopback).
    """
    if given is False:
        return None
    if given is True:
        return discovery_urls(guard.issuer)[0]  # OIDC Discovery 1.0 §4
    if not isinstance(given, str):
        raise ConfigurationError(
            f"openid_connect must be True, False or the discovery document's URL: {given!r}"
        )
    return check_url(given, "openid_connect")


def _openid_connect_model(url: str, description: str | None) -> OpenIdConnectModel:
    """The OpenAPI ``openIdConnect`` security scheme (OpenAPI 3.1 §4.8.27 ``openIdConnectUrl``)."""
    text = description or (
        "Log in with the issuer (OpenID Connect); the access token is sent in the "
        "Authorization header."
    )
    return OpenIdConnectModel(openIdConnectUrl=url, description=text)


def _document_middleware(
    app: FastAPI, public_paths: Iterable[str] | None, scheme_name: str
) -> None:
    """Record, for ``scheme_name``'s document, the public paths of the middleware in front."""
    if public_paths is None:
        found = [
            _public_paths_of(entry.kwargs, built=app.middleware_stack is not None)
            for entry in app.user_middleware
            if isinstance(entry.cls, type) and issubclass(entry.cls, BearerGuardMiddleware)
        ]
        if not found:
            raise ConfigurationError(
                "document_middleware: no BearerGuardMiddleware among the app's middleware; "
                "for one in front of the app, pass its public_paths=[...] as this app's "
                "paths (without the prefix it is mounted under)"
            )
    else:
        found = [PublicPaths(public_paths)]
    guarded = dict(getattr(app, _GUARDED, {}))
    guarded[scheme_name] = tuple(found)
    setattr(app, _GUARDED, guarded)
    app.openapi_schema = None  # a document generated before would not say it


def _document_openapi(
    app: FastAPI,
    scheme_name: str,
    model: SchemeModel,
    *,
    beside: tuple[str, SchemeModel] | None = None,
) -> None:
    """Make ``app.openapi()`` document ``scheme_name``, and ``beside`` (a scheme's name and
    model) as an alternative to it; once per scheme name."""
    generate = app.openapi
    installed: tuple[str, ...] = getattr(generate, _INSTALLED, ())
    described = _described(generate, [(scheme_name, model), *([] if beside is None else [beside])])
    if scheme_name in installed:
        # Documenting a schema twice under one scheme would read the any-of
        # alternatives written the first time as scopes all required.
        return
    documented: list[dict[str, Any]] = []  # the schema already documented, held on to

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not documented or documented[0] is not schema:
            # once per schema FastAPI generates
            guarded = getattr(app, _GUARDED, {}).get(scheme_name, ())
            _document(
                schema,
                app.routes,
                (scheme_name, model),
                earlier=installed,
                guarded=guarded,
                beside=beside,
            )
            documented[:] = [schema]
        return schema

    names = (scheme_name,) if beside is None else (scheme_name, beside[0])
    setattr(openapi, _INSTALLED, (*installed, *names))
    setattr(openapi, _DESCRIBED, described)
    app.openapi = openapi  # type: ignore[method-assign]


def _described(
    generate: Any, schemes: Iterable[tuple[str, SchemeModel]]
) -> dict[str, dict[str, Any]]:
    """The schemes ``generate`` (an app's ``openapi``) documents, by name, with ``schemes``
    (names and models) added; a description may differ.

    Raises:
        ConfigurationError: a name that already documents another scheme: one of the two
            would be lost from the document (``securitySchemes`` is a map by name), and its
            operations would name the other (a login at another issuer, for instance).
    """
    described: dict[str, dict[str, Any]] = dict(getattr(generate, _DESCRIBED, {}))
    for name, model in schemes:
        shape = model.model_dump(
            by_alias=True, exclude_none=True, mode="json", exclude={"description"}
        )
        if described.setdefault(name, shape) != shape:
            raise ConfigurationError(
                f"the OpenAPI security scheme {name!r} already describes another scheme in "
                "this app: give each BearerAuth its own scheme_name, and each issuer's "
                "openid_connect its own openid_connect_scheme"
            )
    return described


def _document(
    schema: dict[str, Any],
    routes: Iterable[Any],
    scheme: tuple[str, SchemeModel],
    *,
    earlier: tuple[str, ...],
    guarded: Sequence[PublicPaths] = (),
    beside: tuple[str, SchemeModel] | None = None,
) -> None:
    """Document the operations that need ``scheme`` (its name and model); ``earlier``: the
    schemes that documented ``schema`` before this one; ``guarded``: the public paths of
    the middlewares in front (``document_middleware``), which require a token on every
    other operation; ``beside``: a scheme (name and model) whose token will do as well."""
    name, model = scheme
    paths = schema.get("paths", {})
    error_schema = _error_schema_name(schema)
    used = False
    named: dict[str, str] = {}  # every scope an operation requires, in order
    for route in _api_routes(routes):
        if not route.include_in_schema:
            continue
        # Scope decorators check the verdict of the route's BearerAuth, or with none
        # (behind the middleware) any: the first installed documents them then.
        bearers = {
            bearer.scheme_name
            for bearer in map(_bearer_of, (each.call for each in _walk(route.dependant)))
            if bearer is not None
        }
        decorated = name in bearers if bearers else not earlier
        # The middleware needs a token on every path not public in each of them; an
        # operation with a BearerAuth of its own is documented by its scheme.
        behind = not bearers and any(route.path_format not in each for each in guarded)
        required, groups = _dependency_requirements(route, name, decorated=decorated)
        endpoint_requirements = scope_requirements(route.endpoint) if decorated else []
        for method in sorted(route.methods or ()):
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            security = operation.get("security", [])
            mine = [entry for entry in security if name in entry]
            all_of = [scope for entry in mine for scope in entry[name]] + required
            alternatives = list(groups)
            for requirement in endpoint_requirements:
                if requirement.any_of:
                    alternatives.append(requirement.scopes)
                else:
                    all_of.extend(requirement.scopes)
            needed = mine or required or alternatives or endpoint_requirements or behind
            if not needed:
                continue
            used = True
            operation["security"] = _combined(
                _other_requirements(security, name, _optional_schemes(route), earlier),
                _requirements(name, all_of, alternatives),
            )
            for entry in operation["security"]:
                named.update((scope, scope) for scope in entry[name])
            if beside is not None:
                operation["security"] = _offered_beside(operation["security"], name, beside[0])
            _document_refusals(operation, error_schema, scoped=bool(all_of or alternatives))
    if used:
        components = schema.setdefault("components", {})
        scheme_object = model.model_dump(by_alias=True, exclude_none=True, mode="json")
        for flow in scheme_object.get("flows", {}).values():
            # OAuth 2.0: the flows offer every scope an operation requires (Swagger UI's
            # "Authorize" lists these); the descriptions given to oauth2_flows are kept.
            given = flow.setdefault("scopes", {})
            given.update((scope, text) for scope, text in named.items() if scope not in given)
        components.setdefault("securitySchemes", {})[name] = scheme_object
        if beside is not None:
            other, other_model = beside
            components["securitySchemes"][other] = other_model.model_dump(
                by_alias=True, exclude_none=True, mode="json"
            )
        components.setdefault("schemas", {})[error_schema] = _error_body()


def _error_schema_name(schema: Mapping[str, Any]) -> str:
    """The name of the RFC 6750 body's schema: ``BearerError``, unless the app has a schema
    of its own by that name, which is kept (its operations refer to it)."""
    taken = schema.get("components", {}).get("schemas", {}).get(_ERROR_SCHEMA)
    return _ERROR_SCHEMA if taken in (None, _error_body()) else _ERROR_SCHEMA_TAKEN


def _error_body() -> dict[str, Any]:
    """The schema of an RFC 6750 error answer's body, a fresh one to put in a document."""
    return {
        "type": "object",
        "title": _ERROR_SCHEMA,
        "description": "An RFC 6750 error answer.",
        "properties": {
            "error": {"type": "string"},
            "error_description": {"type": "string"},
        },
        "required": ["error", "error_description"],
    }


def _api_routes(routes: Iterable[Any], kinds: type | tuple[type, ...] = APIRoute) -> Iterator[Any]:
    """Every path operation (every route of ``kinds``), with the dependencies and path it
    has where it is mounted."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:  # pragma: no cover - FastAPI before included routers stayed nested
        yield from (route for route in routes if isinstance(route, kinds))
        return
    for context in contexts(list(routes)):
        if isinstance(context.original_route, kinds):
            yield context


def _public_paths_of(options: dict[str, Any], *, built: bool) -> PublicPaths:
    """The public paths of a ``BearerGuardMiddleware`` given ``options`` (its keywords).

    A one-shot iterable (a generator) is read once, and what it gave is put back in
    ``options`` for the middleware, built from them on the first request: else whichever
    reads second sees no public path. Once the middleware is ``built`` it has read it.

    Raises:
        ConfigurationError: a one-shot iterable the middleware has already read.
    """
    given = options.get("public_paths", ())
    if not isinstance(given, Collection):
        if built:
            raise ConfigurationError(
                "document_middleware: the middleware has already read its public_paths "
                "(a generator, which can be read once); pass them as a list or tuple, or "
                "document the app before it serves a request"
            )
        given = options["public_paths"] = tuple(given)
    return PublicPaths(given)


def _walk(dependant: Any) -> Iterator[Any]:
    """Every dependency under ``dependant``, breadth first."""
    pending = list(dependant.dependencies)
    while pending:
        each = pending.pop(0)
        yield each
        pending.extend(each.dependencies)


def _bearer_of(call: Any) -> BearerScheme | None:
    """The ``BearerAuth`` a dependency is (``Security(bearer)``) or verifies with
    (``requires_any``)."""
    owner = call if isinstance(call, BearerScheme) else getattr(call, _AUTHENTICATES, None)
    return owner if isinstance(owner, BearerScheme) else None


def _dependency_requirements(
    route: Any, scheme_name: str, *, decorated: bool
) -> tuple[list[str], list[tuple[str, ...]]]:
    """The scopes the route's dependencies check: all-of, and the any-of groups once each.

    Those of scheme ``scheme_name``'s ``requires_any`` (another scheme documents its own) and,
    when ``decorated``, of dependencies decorated with ``requires_scopes`` or
    ``requires_any_scope`` (stacked ones too); a ``requires_any`` also checks, all of them,
    the scopes FastAPI hands it from ``Security(..., scopes=...)`` declared around it.
    """
    all_of: list[str] = []
    groups: list[tuple[str, ...]] = []
    for dependant in _walk(route.dependant):
        call = dependant.call
        owner = getattr(call, _AUTHENTICATES, None)
        if isinstance(owner, BearerScheme):
            if owner.scheme_name != scheme_name:
                continue  # another scheme's, which documents it
            all_of.extend(_security_scopes(dependant))
        elif not decorated:
            continue
        for requirement in _call_requirements(call):
            if not requirement.any_of:
                all_of.extend(requirement.scopes)
            elif requirement.scopes not in groups:
                groups.append(requirement.scopes)
    return all_of, groups


def _call_requirements(call: Any) -> list[ScopeRequirement]:
    """The scope decorators on a dependency: a function, a class's ``__init__`` (FastAPI
    calls the class), or an object's ``__call__``."""
    found = scope_requirements(call)
    if not found and inspect.isclass(call):
        found = scope_requirements(call.__init__)
    elif not found and not inspect.isroutine(call) and callable(call):
        found = scope_requirements(type(call).__call__)
    return found


def _security_scopes(dependant: Any) -> list[str]:
    """The scopes FastAPI passes ``dependant`` as ``SecurityScopes``: those declared around
    it, then its own."""
    scopes = getattr(dependant, "security_scopes", None)  # older FastAPI: already joined
    if scopes is None:
        scopes = (dependant.parent_oauth_scopes or []) + (dependant.own_oauth_scopes or [])
    return list(scopes)


def _requirements(
    name: str, all_of: list[str], alternatives: list[tuple[str, ...]]
) -> list[dict[str, list[str]]]:
    """Security requirement objects: OpenAPI ORs the list, ANDs the scopes of one entry."""
    base = list(dict.fromkeys(all_of))
    count = 1
    for group in alternatives:
        count *= len(group)
    if count > _MAX_ALTERNATIVES:  # too many to list: name every scope that may be needed
        flat = base + [scope for group in alternatives for scope in group]
        return [{name: list(dict.fromkeys(flat))}]
    return [
        {name: list(dict.fromkeys(base + list(pick)))} for pick in itertools.product(*alternatives)
    ]


def _optional_schemes(route: Any) -> set[str]:
    """The other security schemes the route's dependencies declare that let a request
    without their credentials through (``auto_error=False``), and no dependency requires."""
    required: set[str] = set()
    optional: set[str] = set()
    for dependant in _walk(route.dependant):
        call = dependant.call
        if isinstance(call, SecurityBase) and not isinstance(call, BearerScheme):
            needed = getattr(call, "auto_error", True) is not False
            (required if needed else optional).add(call.scheme_name)
    return optional - required


def _other_requirements(
    security: list[dict[str, list[str]]],
    name: str,
    optional: set[str],
    earlier: tuple[str, ...],
) -> list[dict[str, list[str]]]:
    """What the operation needs besides scheme ``name``, as alternatives.

    FastAPI lists one object per security dependency, so the list reads "any one of them";
    but every dependency runs, and each refuses a request without its credentials: they
    are all required, in one object (OpenAPI 3.1 §4.8.30: all the schemes of one object
    are needed, the list ORs objects). An optional one (``optional``) adds the alternative
    with it. A list another ``BearerAuth`` (``earlier``) rewrote is alternatives already.
    """
    rest = [{key: scopes for key, scopes in entry.items() if key != name} for entry in security]
    if any(key in entry for entry in rest for key in earlier):
        unique: list[dict[str, list[str]]] = []
        for entry in rest:
            if entry not in unique:
                unique.append(entry)
        return unique
    required: dict[str, list[str]] = {}
    extra: dict[str, list[str]] = {}
    for entry in rest:
        for key, scopes in entry.items():
            into = extra if key in optional else required
            into[key] = list(dict.fromkeys([*into.get(key, []), *scopes]))
    return [required, {**required, **extra}] if extra else [required]


def _combined(
    others: list[dict[str, list[str]]], mine: list[dict[str, list[str]]]
) -> list[dict[str, list[str]]]:
    """Each alternative of ``mine`` with each of ``others`` (both lists OR, objects AND)."""
    if len(others) * len(mine) > _MAX_ALTERNATIVES:  # name every scope that may be needed
        (name,) = mine[0]
        flat = [scope for entry in mine for scope in entry[name]]
        mine = [{name: list(dict.fromkeys(flat))}]
    return [{**entry, **other} for other in others for entry in mine]


def _offered_beside(
    security: list[dict[str, list[str]]], name: str, other: str
) -> list[dict[str, list[str]]]:
    """The requirements, then each again with scheme ``other`` in place of ``name``: a token
    obtained through either will do (OpenAPI ORs the list), with the same scopes."""
    swapped = [
        {(other if key == name else key): scopes for key, scopes in entry.items()}
        for entry in security
        if name in entry
    ]
    return [*security, *swapped]


def _document_refusals(operation: dict[str, Any], error_schema: str, *, scoped: bool) -> None:
    """The refusals an operation that needs a token answers, each with the RFC 6750 body;
    the 403 only when it needs a scope. An answer the app documents itself is kept."""
    responses = operation.setdefault("responses", {})
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{error_schema}"}}}
    challenge = {
        "WWW-Authenticate": {
            "description": "The Bearer challenge (RFC 6750 §3).",
            "schema": {"type": "string"},
        }
    }
    retry = {
        "Retry-After": {
            "description": "Seconds to wait before retrying (RFC 9110 §10.2.3).",
            "schema": {"type": "integer"},
        }
    }
    refusals = [
        ("400", "Malformed or duplicated credentials (invalid_request, RFC 6750 §3.1).", challenge),
        ("401", "No valid access token (RFC 6750 §3.1).", challenge),
        ("403", "The token lacks a required scope (insufficient_scope).", challenge),
        ("503", "Tokens cannot be checked now (keys or a store unavailable): fail closed.", retry),
    ]
    for status, description, headers in refusals:
        if status != "403" or scoped:
            responses.setdefault(
                status, {"description": description, "headers": headers, "content": content}
            )
