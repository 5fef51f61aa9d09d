"""Flask glue: protect a Flask application (and its blueprints) with one call.

app = Flask(__name__)
protect(app, guard=guard, public_paths=["/health"])

@app.get("/items")
@requires_scopes("items:read")
def items():
    return {"owner": get_access_token().subject}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bearerguard.decorators import misplaced_decorators, unchecked_endpoints
from bearerguard.errors import ConfigurationError
from bearerguard.guard import BearerGuard
from bearerguard.issuers import TrustedIssuers
from bearerguard.wsgi import BearerGuardWSGIMiddleware, proxy_fix_type, responder_for

if TYPE_CHECKING:
    import flask

__all__ = ["protect"]


def protect(
    app: flask.Flask,
    *,
    guard: BearerGuard | TrustedIssuers,
    public_paths: Iterable[str] = (),
    warm_up: bool = False,
    stream_recheck: bool = False,
) -> BearerGuardWSGIMiddleware:
    """Wrap ``app.wsgi_app`` in ``BearerGuardWSGIMiddleware`` and return the middleware.

    ``requires_scopes`` then answers with Flask responses, and ``get_access_token()`` (or
    ``get_access_token(flask.request)``) returns the token inside views.

    ``public_paths``, ``warm_up`` and ``stream_recheck`` (a streamed response's token checked
    again at each further chunk, off by default) are the middleware's.

    When ``app.wsgi_app`` is already werkzeug's ``ProxyFix`` (Flask's documented set-up,
    done where the app is made), the middleware goes inside it, so that the guard reads the
    client's address, scheme and host as the app does.

    Raises:
        ConfigurationError: as ``BearerGuardWSGIMiddleware`` (a ``ProxyFix`` deeper in
            ``app.wsgi_app``, under another wrapper: wrap it after ``protect``); or a view
            registered so far has its scope decorator above its route decorator (it would
            run unchecked).
    """
    unchecked = unchecked_endpoints(app)
    if unchecked:
        raise ConfigurationError(misplaced_decorators(unchecked))
    proxy, inner = _outer_proxy_fix(app.wsgi_app)
    middleware = BearerGuardWSGIMiddleware(
        inner,
        guard=guard,
        public_paths=public_paths,
        warm_up=warm_up,
        respond=responder_for(app),
        stream_recheck=stream_recheck,
    )
    # The first request's check reads this app's views, not the ones it finds under
    # app.wsgi_app: a wrapper there may hold the next app under another name (werkzeug's
    # ProfilerMiddleware keeps it as ``_app``).
    middleware._routes_owner = app
    if proxy is None:
        app.wsgi_app = middleware  # type: ignore[method-assign]
    else:
        proxy.app = middleware
    return middleware


_MAX_PROXY_FIXES = 16


def _outer_proxy_fix(wsgi_app: Any) -> tuple[Any, Any]:
    """The innermost of the ``ProxyFix`` wrappers ``wsgi_app`` starts with, and the app it
    wraps; ``(None, wsgi_app)`` when it is no ``ProxyFix``."""
    proxy_fix = proxy_fix_type()
    proxy, inner = None, wsgi_app
    if proxy_fix is None:
        return proxy, inner
    # type() rather than isinstance: an app proxy may claim any class (its __class__). A
    # bounded walk: ProxyFix objects wrapping each other in a loop must not hang protect().
    for _ in range(_MAX_PROXY_FIXES):
        if not issubclass(type(inner), proxy_fix):
            return proxy, inner
        proxy, inner = inner, inner.app
    raise ConfigurationError(f"more than {_MAX_PROXY_FIXES} ProxyFix wrappers on app.wsgi_app")
