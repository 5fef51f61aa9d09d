"""Per-route scope requirements, and access to the verified token.

``requires_scopes`` and ``requires_any_scope`` wrap Starlette endpoints (functions and
``HTTPEndpoint`` methods) and FastAPI path operations, sync or async, without the handler
needing a ``request`` parameter: they read the outcome the middleware recorded for the
current request. The guard's ``scope_implications`` apply.

On a FastAPI path operation the check also runs as a dependency, ahead of the dependencies
declared by the operation's parameters, so it answers before FastAPI validates the
parameters and the body and before those dependencies run: an under-scoped request gets
403, not 422 with validation details. (A body that is not JSON at all is answered 422 by
FastAPI before any dependency runs; ``dependencies=[...]`` of the route, a router or the app
run before the check.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, is_dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast, get_args, get_origin

from starlette.endpoints import HTTPEndpoint, WebSocketEndpoint
from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection

from bearerguard._context import (
    SCOPE_KEY,
    RequestAuth,
    current_auth,
    presented_with,
    refusal_for,
)
from bearerguard._core.scopes import validate_scope_names
from bearerguard.errors import (
    AuthError,
    ConfigurationError,
    InsufficientScopeError,
    MissingTokenError,
)
from bearerguard.token import AccessToken

if TYPE_CHECKING:
    from types import FrameType

__all__ = [
    "REQUIREMENT_ATTRIBUTE",
    "ScopeRequirement",
    "get_access_token",
    "requires_any_scope",
    "requires_scopes",
    "scope_requirements",
    "unchecked_endpoints",
]

F = TypeVar("F", bound=Callable[..., Any])
_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
_CHECK_PARAMETER = "bearerguard_scope_check"
_decorations = itertools.count(1)  # numbers each decoration's own check parameter
_UNCHECKED = object()

if sys.version_info >= (3, 12):
    _is_coroutine_function = inspect.iscoroutinefunction
else:
    # Django marks ``as_view()`` of an async class-based view (a plain function returning a
    # coroutine) with asgiref's markcoroutinefunction: before Python 3.12, an attribute that
    # only asyncio.iscoroutinefunction reads. Wrapped as sync, its refusal would be awaited.
    _is_coroutine_function = asyncio.iscoroutinefunction

_WRAPPED_ATTRIBUTE = "__bearerguard_wrapped__"
"""Set on a function a scope decorator wrapped, to the function's ``id``: an endpoint that
is such a function itself (a copy made by ``functools.wraps`` holds another object's id)
was decorated above its route decorator, which registered it unwrapped."""

REQUIREMENT_ATTRIBUTE = "__bearerguard_scopes__"
"""Where a decorated handler keeps its ``ScopeRequirement`` (read for OpenAPI documents)."""

_NUMBERED = ("__bearerguard_scopes_", "__")
"""Each decoration also keeps its requirement under a name of its own, numbered in the
order of decoration (an outer decorator's is higher): copies of ``__dict__`` made by
``functools.update_wrapper`` then add up where one name would be overwritten. Django's
``method_decorator`` copies the wrapped method's over the wrapper's own, so of three stacked
on a method, the outermost wrapper keeps the innermost's ``REQUIREMENT_ATTRIBUTE`` only."""


@dataclass(frozen=True, slots=True)
class ScopeRequirement:
    """The scopes a route needs: all of ``scopes``, or one of them when ``any_of``."""

    scopes: tuple[str, ...]
    any_of: bool = False


def _request_auth(connection: object | None) -> RequestAuth | None:
    if connection is None:
        return current_auth.get()
    # Starlette connections keep it in .scope, Werkzeug (Flask) requests in .environ, and
    # Django requests in .META (the WSGI environ).
    for attribute in ("scope", "environ", "META"):
        store = getattr(connection, attribute, None)
        if isinstance(store, dict):
            auth = store.get(SCOPE_KEY)
            return auth if isinstance(auth, RequestAuth) else None
    return None


def scope_requirements(func: Callable[..., Any]) -> list[ScopeRequirement]:
    """The requirements of every scope decorator stacked on ``func``, outermost first."""
    found: list[ScopeRequirement] = []
    current: object = func
    seen: set[int] = set()
    # Django's method_decorator decorates on every request, and each wrapper holds copies of
    # the requirements under it: the same objects, told apart by id before by value.
    read: set[int] = set()
    while current is not None and id(current) not in seen:  # a __wrapped__ cycle ends here
        seen.add(id(current))
        # Its own attributes: functools.wraps copies the wrapped function's onto the wrapper.
        listed = [
            (number, value)
            for name, value in getattr(current, "__dict__", {}).items()
            if isinstance(value, ScopeRequirement)
            and id(value) not in read
            and ((number := _decoration(name)) or name == REQUIREMENT_ATTRIBUTE)
        ]
        listed.sort(key=lambda each: -each[0])  # outermost first, REQUIREMENT_ATTRIBUTE's last
        for _, requirement in listed:
            read.add(id(requirement))
            if requirement not in found:
                found.append(requirement)
        current = getattr(current, "__wrapped__", None)
    return found


def _decoration(name: object) -> int:
    """The decoration's number an attribute's ``name`` holds (``_NUMBERED``), or 0."""
    prefix, suffix = _NUMBERED
    if not isinstance(name, str) or not name.startswith(prefix) or not name.endswith(suffix):
        return 0
    number = name[len(prefix) : -len(suffix)]
    return int(number) if number.isascii() and number.isdigit() else 0


def challenge_scopes(
    requirements: Iterable[ScopeRequirement], auth: RequestAuth | None
) -> list[str]:
    """The scopes a challenge names for ``requirements``, all of which a route checks.

    RFC 6750 §3: ``scope`` names "the scope necessary to access the requested resource".
    Every all-of scope; of an any-of group, the alternatives ``auth``'s token holds (with
    the guard's implications), or else all of them (a space-delimited list cannot say "one
    of these"): a client that obtains every scope named is let in. A scope several
    requirements name is named once.
    """
    token = None if auth is None else auth.token
    named: list[str] = []
    for requirement in requirements:
        if requirement.any_of and auth is not None and token is not None:
            implications = auth.guard.scope_implications
            held = [
                name
                for name in requirement.scopes
                if implications.grants(token.scopes, (name,), any_of=False)
            ]
            named.extend(held or requirement.scopes)
        else:
            named.extend(requirement.scopes)
    return list(dict.fromkeys(named))


def get_access_token(connection: object | None = None) -> AccessToken | None:
    """Return the verified token of a request or websocket.

    Args:
        connection: the request: a Starlette ``Request`` or ``WebSocket``, a Flask
            (Werkzeug) request or a Django ``HttpRequest``; when omitted, the request being
            served in the current context.

    Returns:
        The ``AccessToken``, or ``None`` on a public path reached without credentials (or
        outside a request a bearerguard middleware has seen).
    """
    auth = _request_auth(connection)
    return None if auth is None else auth.token


def check_scopes(
    auth: RequestAuth,
    required: tuple[str, ...],
    *,
    any_of: bool,
    hint: Callable[[], Sequence[str]] | None = None,
) -> tuple[AuthError, Any] | None:
    """Check the request's token against ``required``, with the guard's implications.

    Returns ``None`` when the request may proceed; else the error, already audited (one
    ``scope.denied`` or ``token.rejected`` event), and its rendered refusal, whose challenge
    names ``hint()`` (the whole route's scopes, where known) or else ``required``. Shared by
    the decorators and the FastAPI dependency, so every integration applies the same rule.
    """
    token = auth.token
    guard = auth.guard
    if token is not None and guard.scope_implications.grants(token.scopes, required, any_of=any_of):
        return None
    named = required if hint is None else tuple(hint())
    error: AuthError
    if token is None:
        # A public path reached without credentials: a scoped route still needs a token.
        error = MissingTokenError("scoped route reached without a token")
    else:
        error = InsufficientScopeError(required, any_of=any_of, scope=named)
        error.binding = presented_with(guard, token)  # as its token.accepted said
        if error.binding == "dpop":  # a DPoP-bound token came with its scheme (RFC 9449 §7.2)
            error.scheme = "dpop"
    guard.audit.refused(error, auth, perf_counter() - auth.started, token=token)
    return error, refusal_for(guard, error, named)


# Said to whoever forgot what verifies the token, whichever framework theirs is.
_NO_VERDICT = (
    "requires_scopes found no verified token for this route: put BearerGuardMiddleware (ASGI) "
    "in front of the app, call bearerguard.flask.protect(app) or wrap it in "
    "BearerGuardWSGIMiddleware (WSGI), with Django list "
    "bearerguard.django.BearerGuardMiddleware in settings.MIDDLEWARE, or with FastAPI's "
    "BearerAuth alone declare the scopes with bearer.requires(...) instead"
)


def _current(
    requirements: tuple[ScopeRequirement, ...],
    auth: RequestAuth | None,
    hint: Callable[[], Sequence[str]] | None = None,
) -> tuple[RequestAuth, tuple[AuthError, Any] | None]:
    """Check ``requirements`` in order; the first that fails answers, its challenge naming
    ``hint()``, or else every scope of ``requirements`` (``challenge_scopes``)."""
    if auth is None:
        raise ConfigurationError(_NO_VERDICT)
    if hint is None and len(requirements) > 1:
        hint = functools.partial(challenge_scopes, requirements, auth)
    denied = None
    for requirement in requirements:
        denied = check_scopes(auth, requirement.scopes, any_of=requirement.any_of, hint=hint)
        if denied is not None:
            break
    if denied is not None and auth.websocket:
        raise WebSocketException(code=_POLICY_VIOLATION, reason=denied[0].reason)
    return auth, denied


def _denial(requirements: tuple[ScopeRequirement, ...], args: tuple[Any, ...]) -> Any:
    """``None`` when the current request may proceed; else the response to answer with."""
    auth, denied = _current(requirements, current_auth.get())
    if denied is None:
        return None
    response = auth.respond(denied[1])
    http = sys.modules.get("django.http")
    # A Django view must return an HttpResponse, even when the app the middleware wraps is
    # not Django's own (WhiteNoise, Sentry, OpenTelemetry...) and the default responder
    # did not recognise it: the view's request says which framework serves it.
    if (
        http is not None
        and not isinstance(response, http.HttpResponseBase)
        and any(isinstance(arg, http.HttpRequest) for arg in args[:2])
    ):
        from bearerguard.wsgi import _django_response  # noqa: PLC0415 - Django only

        return _django_response(denied[1])
    # A Flask app under BearerGuardMiddleware through an ASGI-to-WSGI bridge (asgiref's
    # WsgiToAsgi) has the ASGI middleware's verdict, whose responder makes a Starlette
    # response: no return value for a Flask view (a 500).
    flask = sys.modules.get("flask")
    starlette = sys.modules.get("starlette.responses")
    if (
        flask is not None
        and starlette is not None
        and isinstance(response, starlette.Response)
        and flask.has_request_context()
    ):
        from bearerguard.wsgi import _flask_response  # noqa: PLC0415 - Flask only

        return _flask_response(denied[1])
    return response


def _with_fastapi_check(
    wrapper: Callable[..., Any], requirement: ScopeRequirement, parameter: str
) -> None:
    """Declare the check as a FastAPI dependency in ``wrapper``'s signature.

    FastAPI solves dependencies before it validates parameters and the body, in the order
    of the parameters, so the check, declared first, answers first. The refusal is raised
    for the middleware to send, or as an ``HTTPException`` when only ``BearerAuth``
    recorded the verdict. Other frameworks ignore the extra parameter.
    Each decorator declares its own ``parameter``: stacked decorators each add a check.
    """
    from fastapi import Depends  # noqa: PLC0415 - only when the app is a FastAPI app

    from bearerguard.fastapi import (  # noqa: PLC0415 - imports fastapi
        declares_bearer,
        declares_dependency,
        raise_refusal,
        route_scopes,
        route_verdict,
    )

    async def bearerguard_scope_check(connection: HTTPConnection) -> None:
        auth = current_auth.get()
        if auth is None:
            # No middleware, and the operation's BearerAuth sits inside another dependency,
            # which FastAPI solves after this check: the check verifies the token with it.
            auth = await route_verdict(connection, requirement.scopes)
        auth, denied = _current(
            (requirement,),
            auth,
            lambda: route_scopes(connection.scope, auth, requirement.scopes),
        )
        if denied is not None:
            raise_refusal(auth, *denied, connection.scope)

    signature = inspect.signature(wrapper)
    parameters = list(signature.parameters.values())
    check = inspect.Parameter(
        parameter,
        inspect.Parameter.KEYWORD_ONLY,
        default=Depends(bearerguard_scope_check),
        annotation=None,
    )
    kinds = {each.kind for each in parameters}
    if not kinds & {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL}:
        # FastAPI solves a path operation's dependencies in the order of its parameters and
        # passes every argument by name: the check goes first, so that the operation's own
        # dependencies (loading a record, answering 404 for a missing one, writing) never run
        # for an under-scoped token. Keyword-only parameters may follow one with a default.
        # The operation's own BearerAuth dependencies go before it: without the middleware
        # they verify the token the check reads (and only that: no side effects).
        # A method's self stays first and positional: a bound method's signature drops it,
        # and inspect refuses one whose first parameter is keyword-only (ValueError when
        # FastAPI registers it). A dependency is never self (a staticmethod's first
        # parameter): it goes after the check, as any other.
        namespace = getattr(inspect.unwrap(wrapper), "__globals__", {})
        method = parameters and _defined_in_class(wrapper)
        head = (
            parameters[:1] if method and not declares_dependency(parameters[0], namespace) else []
        )
        parameters = parameters[len(head) :]
        bearers = [each for each in parameters if declares_bearer(each, namespace)]
        others = [each for each in parameters if each not in bearers]
        parameters = head + [each.replace(kind=_keyword(each.kind)) for each in bearers]
        parameters += [check, *(each.replace(kind=_keyword(each.kind)) for each in others)]
    else:
        at = len(parameters)
        if parameters and parameters[-1].kind is inspect.Parameter.VAR_KEYWORD:
            at -= 1
        parameters.insert(at, check)
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]


# Django Ninja (and Ninja Extra) serve Django views: a request first, or for a controller
# method its body model first, after self; neither is a FastAPI path operation.
_NOT_FASTAPI = frozenset({"django", "flask", "werkzeug", "ninja", "ninja_extra"})


def _origins(value: object) -> set[str]:
    """The top-level packages ``value`` comes from: a module's own; a class's, or an
    instance's type's, and those of the classes it derives from (an app's own ``APIRouter``
    or ``FastAPI`` subclass is FastAPI's); a function's ``__module__``.

    Told by ``type(value)``, never ``isinstance``: that reads ``value.__class__``, which a lazy
    proxy in a namespace (Django's ``SimpleLazyObject``, ``LazySettings``) answers by
    evaluating itself, at import time."""
    kind = type(value)
    try:
        if issubclass(kind, types.ModuleType):
            names: list[object] = [value.__name__]  # type: ignore[attr-defined]
        elif issubclass(kind, types.FunctionType | types.BuiltinFunctionType):
            names = [value.__module__]
        else:
            owner = cast(type, value) if issubclass(kind, type) else kind
            names = [each.__module__ for each in owner.__mro__]
    except Exception:  # noqa: BLE001 - any object's own failure: no evidence
        return set()
    return {name.partition(".")[0] for name in names if isinstance(name, str)}


def _annotated(func: Callable[..., Any]) -> list[tuple[inspect.Parameter, object]]:
    """``func``'s parameters with their annotations, a string one read in the function's
    module as FastAPI reads it (``None`` when it does not resolve there); none when
    ``func`` has no signature."""
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return []
    namespace = getattr(inspect.unwrap(func), "__globals__", {})
    annotated: list[tuple[inspect.Parameter, object]] = []
    for parameter in parameters:
        annotation = parameter.annotation
        if isinstance(annotation, str):
            from fastapi.dependencies.utils import get_typed_annotation  # noqa: PLC0415

            try:
                annotation = get_typed_annotation(annotation, namespace)
            except Exception:  # noqa: BLE001 - a name defined later or elsewhere
                annotation = None
        annotated.append((parameter, annotation))
    return annotated


def _declares_fastapi(func: Callable[..., Any]) -> bool:
    """Whether ``func``'s own parameters declare something of FastAPI's: a ``Depends``,
    ``Security``, ``Query``, ``Body``... marker (as a default or in ``Annotated``), an
    ``UploadFile``. A string annotation that does not resolve is no evidence."""
    for parameter, annotation in _annotated(func):
        values = [parameter.default, annotation]
        if get_origin(annotation) is Annotated:
            values.extend(get_args(annotation)[1:])
        if any("fastapi" in _origins(value) for value in values):
            return True
    return False


def _is_no_django_view(func: Callable[..., Any]) -> bool:
    """Whether ``func`` cannot be a Django view: Django passes a view the request first
    (Django Ninja too), so one whose first parameter (a method's after ``self``) is a
    pydantic model or a dataclass, a request body as FastAPI reads it, is none."""
    annotated = _annotated(func)
    if annotated and _defined_in_class(func):
        annotated = annotated[1:]
    if not annotated:
        return False
    annotation = annotated[0][1]
    if not isinstance(annotation, type):
        return False
    if is_dataclass(annotation):
        return True
    model = getattr(sys.modules.get("pydantic"), "BaseModel", None)
    try:
        return isinstance(model, type) and issubclass(annotation, model)
    except TypeError:  # a generic alias passing for a class (list[int] on Python 3.10)
        return False


def _may_be_path_operation(func: Callable[..., Any], frame: FrameType) -> bool:
    """Whether ``func`` may become a FastAPI path operation: yes when its own parameters
    declare something of FastAPI's; else told by what the namespace it is decorated in
    holds (that of a function, a class body, or a module), then its module's: the nearest
    holding something of FastAPI's says yes, one holding Flask's, Werkzeug's or Django's
    (Django Ninja's too; and nothing of FastAPI's) says no, unless it holds only Django's
    (no Ninja's: its controllers' methods take the body first) and ``func`` takes a
    body model (pydantic's, or a dataclass) first, as no Django view does. Without either,
    yes: a path operation must have its check declared before FastAPI reads the signature
    (a Flask or Django view ignores it).

    A function beside Flask's or Werkzeug's objects that takes only a body model stays a
    Flask view's: Flask extensions (flask-pydantic, flask-openapi3) pass a view its body
    model so, and their signatures are kept."""
    caller = frame.f_globals.get("__name__")
    if isinstance(caller, str) and caller.partition(".")[0] in _NOT_FASTAPI:
        # Decorated by Django's or Flask's own code: Django's method_decorator decorates a
        # bound method on every request, which must not pay for this test each time.
        return False
    if _declares_fastapi(func):
        return True
    namespaces = [frame.f_locals, frame.f_globals, getattr(inspect.unwrap(func), "__globals__", {})]
    seen: set[int] = set()
    for namespace in namespaces:
        # A function's f_locals is a mapping proxy, not a dict, on Python 3.13 (PEP 667).
        if id(namespace) in seen or not isinstance(namespace, Mapping):
            continue
        seen.add(id(namespace))
        # Ends at the first object of FastAPI's (its imports come first in a module): a
        # full read per decoration made a large module's import quadratic in its size.
        other: set[str] = set()
        for value in list(namespace.values()):
            origins = _origins(value)
            if "fastapi" in origins:
                return True
            other |= origins & _NOT_FASTAPI
        if other:
            return other == {"django"} and _is_no_django_view(func)
    return True


def _defined_in_class(func: Callable[..., Any]) -> bool:
    """Whether ``func`` was defined in a class body (a method), by its qualified name."""
    outer, _, _ = getattr(func, "__qualname__", "").rpartition(".")
    return bool(outer) and not outer.endswith("<locals>")


def _keyword(kind: Any) -> Any:
    """``kind``, as a keyword-only parameter's unless it is ``**kwargs``."""
    if kind is inspect.Parameter.VAR_KEYWORD:
        return kind
    return inspect.Parameter.KEYWORD_ONLY


def _is_async(func: Callable[..., Any]) -> bool:
    """Whether calling ``func`` returns a coroutine: a coroutine function, a partial of one,
    or an object whose ``__call__`` is one (what Starlette and FastAPI await)."""
    while isinstance(func, functools.partial):
        func = func.func
    return _is_coroutine_function(func) or _is_coroutine_function(
        getattr(func, "__call__", None)  # noqa: B004 - the method, not whether it is callable
    )


def _refuse_a_view_class(view: object) -> None:
    """Refuse a class-based view's class: the decorator goes on its methods.

    Raises:
        ConfigurationError: ``view`` is a Starlette ``HTTPEndpoint`` or ``WebSocketEndpoint``,
            or has ``as_view`` (Django's ``View``, Flask's ``View`` and ``MethodView``).
    """
    if not isinstance(view, type):
        return
    endpoint = issubclass(view, HTTPEndpoint | WebSocketEndpoint)
    if not endpoint and attribute_of(view, "as_view") is None:
        return
    raise ConfigurationError(
        f"requires_scopes (or requires_any_scope) is written on the class {view.__qualname__}: "
        "the framework would get a function in its place, with no as_view() and no methods. "
        "Decorate the view's methods (Starlette's HTTPEndpoint, a WebSocketEndpoint's "
        "on_connect, Flask's MethodView), or with "
        "Django use method_decorator(requires_scopes(...), name='dispatch') on the class; "
        "with Flask, decorators = [requires_scopes(...)] in the class also works."
    )


def _of_async_view(func: Callable[..., Any], args: tuple[Any, ...]) -> bool:
    """Whether ``func`` is a method of an async Django class-based view (``dispatch``, as
    ``method_decorator(..., name="dispatch")`` hands it over, a partial of the bound
    method, maybe under the decorators listed after ours, as ``csrf_exempt``): sync, but it
    returns the handler's coroutine, which Django awaits."""
    found: object = func
    for _ in range(100):  # bounded: __wrapped__ may lead in a circle
        if isinstance(found, functools.partial):
            found = found.func
            continue
        owner = attribute_of(found, "__self__")
        if owner is not None:
            return attribute_of(owner, "view_is_async") is True
        found = attribute_of(found, "__wrapped__")
        if found is None:
            break
    owner = args[0] if args else None
    return attribute_of(owner, "view_is_async") is True


async def _awaitable(response: Any) -> Any:
    return response


def _scope_decorator(required: tuple[str, ...], any_of: bool) -> Callable[[F], F]:
    requirement = ScopeRequirement(required, any_of)

    def decorate(func: F) -> F:
        _refuse_a_view_class(func)
        # The requirements of the scope decorators under this one, found once here, not per
        # request: this wrapper checks them all, outermost first, so that whichever fails
        # names every scope of the endpoint (RFC 6750 §3.1); theirs then pass. A FastAPI
        # path operation checks each as a dependency instead (fastapi.route_scopes).
        stack = (requirement, *(each for each in scope_requirements(func) if each != requirement))
        wrapper: Callable[..., Any]
        number = next(_decorations)
        parameter = f"{_CHECK_PARAMETER}_{number}"
        if _is_async(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                # FastAPI passes the parameter once its dependency has run the check.
                if kwargs.pop(parameter, _UNCHECKED) is _UNCHECKED:
                    denial = _denial(stack, args)
                    if denial is not None:
                        return denial
                return await func(*args, **kwargs)

            wrapper = async_wrapper
        else:

            @functools.wraps(func)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                if kwargs.pop(parameter, _UNCHECKED) is _UNCHECKED:
                    denial = _denial(stack, args)
                    if denial is not None:
                        return _awaitable(denial) if _of_async_view(func, args) else denial
                return func(*args, **kwargs)

            wrapper = sync_wrapper
        setattr(wrapper, REQUIREMENT_ATTRIBUTE, requirement)
        setattr(wrapper, f"{_NUMBERED[0]}{number}{_NUMBERED[1]}", requirement)
        # A bound method or a builtin takes no attribute: left unmarked.
        with contextlib.suppress(AttributeError, TypeError):
            setattr(func, _WRAPPED_ATTRIBUTE, id(func))
        # A FastAPI app has imported fastapi before its path operations are decorated;
        # Starlette, Flask and Django apps never pay for importing it, and keep their views'
        # signatures when another part of the process imports it.
        if "fastapi" in sys.modules and _may_be_path_operation(func, sys._getframe(1)):
            _with_fastapi_check(wrapper, requirement, parameter)
        return cast(F, wrapper)

    return decorate


def _wrapped_later(endpoint: object) -> bool:
    return getattr(endpoint, _WRAPPED_ATTRIBUTE, None) == id(endpoint)


def _rebound(endpoint: object) -> bool | None:
    """Whether the name ``endpoint`` was defined under now holds a wrapper of it: a scope
    decorator written above the route decorator rebinds it so. ``False`` when the name holds
    ``endpoint`` itself (a function served as is, which another route or app may serve
    wrapped); ``None`` when the name cannot be read (a function defined inside another).
    """
    qualname = getattr(endpoint, "__qualname__", None)
    module = sys.modules.get(str(getattr(endpoint, "__module__", None)))
    if module is None or not isinstance(qualname, str) or "<locals>" in qualname:
        return None
    named: object = module
    for part in qualname.split("."):
        named = attribute_of(named, part)
    if named is endpoint:
        return False
    return True if id(endpoint) in _inner_ids([named]) else None


def _inner_ids(endpoints: Iterable[object]) -> set[int]:
    """The ids of the functions ``endpoints`` wrap (``__wrapped__``, a partial's ``func``),
    at any depth."""
    inner: set[int] = set()
    for endpoint in endpoints:
        seen = {id(endpoint)}
        current: object = endpoint
        while True:
            if isinstance(current, functools.partial):
                current = current.func
            else:
                current = getattr(current, "__wrapped__", None)
            if current is None or id(current) in seen:
                break
            seen.add(id(current))
            inner.add(id(current))
    return inner


def unchecked_endpoints(app: object) -> list[str]:
    """Routes of ``app`` whose endpoint a scope decorator wrapped only after the route had
    registered it (the decorator written above ``@app.get(...)``): they run unchecked.

    Reads Starlette and FastAPI routes (``Mount``, ``Host``, included routers) and a Flask
    app's view functions, of ``app`` and of the apps under its middleware wrappers
    (``app_layers``), a ``Mount``'s or ``Host``'s and werkzeug's ``DispatcherMiddleware``'s
    mounts included; anything else has none. A
    function whose name still holds it, or (where the name cannot be read) that another
    route of ``app`` serves wrapped, is not one: it is served public on purpose.
    """
    endpoints: list[tuple[str, object]] = []
    seen: set[int] = set()

    def collect(owner: object, prefix: str) -> None:
        for layer in app_layers(owner):
            views = attribute_of(layer, "view_functions")
            if isinstance(views, dict) and id(views) not in seen:  # Flask
                seen.add(id(views))
                named = [(f"{prefix} view {name!r}".strip(), each) for name, each in views.items()]
                endpoints.extend(named)
            mounts = attribute_of(layer, "mounts")
            if isinstance(mounts, dict) and id(mounts) not in seen:  # DispatcherMiddleware
                seen.add(id(mounts))
                for mounted, under in list(mounts.items()):
                    collect(under, prefix + str(mounted))
            visit(_routes_of(layer), prefix)

    def visit(routes: object, prefix: str) -> None:
        if not isinstance(routes, list | tuple) or id(routes) in seen:
            return
        seen.add(id(routes))
        for route in _flattened(routes):
            path = prefix + str(getattr(route, "path", None) or "")  # a Host has none
            endpoint = getattr(route, "endpoint", None)
            if endpoint is not None:
                methods = ",".join(sorted(getattr(route, "methods", None) or ()))
                endpoints.append((f"{methods} {path}".strip(), endpoint))
            inner = _routes_of(route)
            if endpoint is None and not inner:
                # A Mount's or Host's routes are its app's own: none when the app is wrapped
                # in a middleware (Mount("/v2", app=GZipMiddleware(v2))). Look under it.
                collect(attribute_of(route, "app"), path)
            else:
                visit(inner, path)

    collect(app, "")
    inner = _inner_ids(endpoint for _, endpoint in endpoints)
    return [name for name, endpoint in endpoints if _misplaced(endpoint, inner)]


def _misplaced(endpoint: object, inner: set[int]) -> bool:
    """Whether a route serving ``endpoint`` runs it unchecked: a scope decorator wrapped it
    after the route had registered it. Told by the name it was defined under where that can
    be read (it holds the wrapper: a misplaced decorator, even if another route serves the
    wrapper; it holds the function: served as is on purpose); else by whether another route
    of ``inner``'s app serves it wrapped."""
    if not _wrapped_later(endpoint):
        return False
    rebound = _rebound(endpoint)
    return id(endpoint) not in inner if rebound is None else rebound


def attribute_of(owner: object, name: str) -> object:
    """``owner``'s attribute ``name``; ``None`` when it has none or reading it raises (an app
    may be a proxy not configured yet, as a mounted app behind Starlette's ``Mount.routes``):
    what the check cannot read is no reason to stop an app from starting or serving."""
    try:
        return getattr(owner, name, None)
    except Exception:  # noqa: BLE001 - any app's own failure
        return None


# The attributes a wrapper holds the next app under, tried in this order: ``app`` (Starlette's
# and uvicorn's middlewares, werkzeug's ProxyFix and SharedDataMiddleware, Sentry's, a2wsgi's),
# ``_app`` (werkzeug's ProfilerMiddleware), ``application`` (WhiteNoise, AsgiWhiteNoise,
# Django's static files handlers), ``other_asgi_app`` (python-engineio's and python-socketio's
# ASGIApp), ``wsgi_app`` (their WSGIApp; hypercorn's WSGI middlewares), ``wsgi_application``
# (asgiref's WsgiToAsgi), ``wsgi`` and ``asgi`` (OpenTelemetry's middlewares).
_NEXT_APP_ATTRIBUTES = (
    "app",
    "_app",
    "application",
    "other_asgi_app",
    "wsgi_app",
    "wsgi_application",
    "wsgi",
    "asgi",
)
_MAX_LAYERS = 100


def app_layers(app: object) -> Iterator[object]:
    """``app`` and the apps under its middleware wrappers, outermost first, each once.

    A wrapper holds the next app under one of ``_NEXT_APP_ATTRIBUTES`` (only callables are
    followed); one holding several has each walked in turn, depth first. A bound method
    (Flask's ``app.wsgi_app``) stands for its ``__self__``, and ends its branch: what its
    owner holds is not known to be under it (a Flask app's ``wsgi_app`` attribute holds
    the wrappers around that method). Bounded: attributes may lead in a circle, and an
    attribute that raises when read is passed over (``attribute_of``).
    """
    # Each by its id, and kept alive by it: an attribute may give a new object each time it
    # is read, and one freed would leave its id to the next, which would then be skipped.
    seen: dict[int, object] = {}
    pending = [app]
    while pending and len(seen) < _MAX_LAYERS:
        current = pending.pop()
        bound = attribute_of(current, "__self__")
        owner = current if bound is None else bound
        if id(owner) in seen:
            continue
        seen[id(owner)] = owner
        yield owner
        if bound is not None:
            continue
        following = [attribute_of(owner, name) for name in _NEXT_APP_ATTRIBUTES]
        # Reversed onto the stack: the first name's app is walked first.
        pending += [inner for inner in reversed(following) if callable(inner)]


def wrapped_app(app: object, *markers: str) -> object:
    """The first app under ``app``'s middleware wrappers (``app_layers``) that has one of
    the attributes ``markers`` (``routes`` for Starlette, ``view_functions`` for Flask), or
    the last one reached."""
    owner = app
    for owner in app_layers(app):
        if any(attribute_of(owner, marker) is not None for marker in markers):
            break
    return owner


def _routes_of(owner: object) -> object:
    """``owner.routes``, or ``None`` (see ``attribute_of``)."""
    return attribute_of(owner, "routes")


def _flattened(routes: list[Any] | tuple[Any, ...]) -> Iterable[Any]:
    """``routes``, with the routers FastAPI includes as the routes they serve, at their full
    path: FastAPI keeps an included router nested (``app.routes`` holds no copy of its path
    operations), and shows them through ``iter_route_contexts``."""
    routing = sys.modules.get("fastapi.routing")
    contexts = getattr(routing, "iter_route_contexts", None)
    return routes if contexts is None else contexts(list(routes))


def misplaced_decorators(unchecked: list[str]) -> str:
    """The error naming routes whose scope decorator sits above the route decorator."""
    listed = ", ".join(unchecked[:10]) + (", ..." if len(unchecked) > 10 else "")
    return (
        f"requires_scopes (or requires_any_scope) is written above the route decorator of "
        f"{listed}: the route registered the function unwrapped and would run unchecked. "
        "Put the scope decorator below the route decorator, next to the function."
    )


def requires_scopes(*scopes: str) -> Callable[[F], F]:
    """Require every one of ``scopes`` (exact, case-sensitive matching).

    A request whose token lacks one (with the guard's ``scope_implications`` applied) is
    answered 403 ``insufficient_scope`` with the required scopes in the challenge (RFC 6750
    §3.1); a request without a token (on a public path) is answered 401 with them as the
    ``scope`` hint. Websocket handlers are closed with code 1008 instead.

    Stacked with other scope decorators (found through ``__wrapped__``), the outermost
    checks them all, outermost first, before anything under it runs, and the challenge
    names every scope of the stack: of a ``requires_any_scope``, the alternatives the token
    holds, or else all of them (``challenge_scopes``). The ``scope.denied`` event's
    ``required_scopes`` are the failing decorator's own.

    Raises:
        ConfigurationError: no scopes, a scope name with white space, or a class-based
            view's class decorated instead of its methods (at decoration); or no
            ``BearerGuardMiddleware`` in front of the route (at request time).
    """
    return _scope_decorator(validate_scope_names(scopes, usage="requires_scopes"), any_of=False)


def requires_any_scope(*scopes: str) -> Callable[[F], F]:
    """Require at least one of ``scopes``; otherwise as ``requires_scopes``."""
    return _scope_decorator(validate_scope_names(scopes, usage="requires_any_scope"), any_of=True)
