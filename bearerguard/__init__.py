"""bearerguard: accept OAuth 2.0 bearer tokens safely in Starlette, FastAPI and WSGI apps."""

from bearerguard.__about__ import __version__
from bearerguard._core.keycache import RefreshPolicy
from bearerguard._core.scopes import ScopeImplications
from bearerguard.decorators import get_access_token, requires_any_scope, requires_scopes
from bearerguard.errors import (
    AuthError,
    BearerGuardError,
    ConfigurationError,
    InsufficientScopeError,
    InvalidRequestError,
    InvalidTokenError,
    KeySetUnavailableError,
    MissingTokenError,
    RevocationStoreError,
    ServiceUnavailableError,
)
from bearerguard.guard import DEFAULT_ALGORITHMS, BearerGuard
from bearerguard.jwks import FetchPolicy
from bearerguard.metadata import ResourceMetadata
from bearerguard.token import AccessToken

__all__ = [
    "DEFAULT_ALGORITHMS",
    "AccessToken",
    "AuthError",
    "BearerGuard",
    "BearerGuardError",
    "ConfigurationError",
    "FetchPolicy",
    "InsufficientScopeError",
    "InvalidRequestError",
    "InvalidTokenError",
    "KeySetUnavailableError",
    "MissingTokenError",
    "RefreshPolicy",
    "ResourceMetadata",
    "RevocationStoreError",
    "ScopeImplications",
    "ServiceUnavailableError",
    "__version__",
    "get_access_token",
    "requires_any_scope",
    "requires_scopes",
]
