"""A revocation store that asks the authorization server (RFC 7662 token introspection).

Signature and claims make a JWT valid until its ``exp``; revocation at the authorization
server is invisible to them. This store closes that gap without any shared state between the
API's instances: every instance asks the authorization server, and a revocation there is
seen by all of them within the introspector's ``active_ttl``.
"""

from __future__ import annotations

from typing import Any

from bearerguard.errors import ConfigurationError
from bearerguard.introspection import IntrospectionError, Introspector
from bearerguard.token import AccessToken

__all__ = ["IntrospectionRevocationStore"]


class IntrospectionRevocationStore:
    """Refuses a verified token once the authorization server says ``active: false``.

    It implements both ``RevocationStore`` and ``SyncRevocationStore``. Each check posts
    ``token.raw`` to the introspection endpoint, unless the introspector holds a fresh answer
    (an active answer for ``active_ttl`` seconds, so a revocation takes effect on the first
    request after that). There are no ``revoke_*`` methods: revoke at the authorization
    server.

    An endpoint failure raises, so the guard fails closed (503) unless it was built with
    ``revocation_failure="allow"``.

    Args:
        introspector: the client of the authorization server's introspection endpoint.

    Raises:
        ConfigurationError: ``introspector`` is not an ``Introspector``.
    """

    name = "introspection"

    def __init__(self, introspector: Introspector) -> None:
        if not isinstance(introspector, Introspector):
            raise ConfigurationError("introspector must be an Introspector")
        self.introspector = introspector

    def __repr__(self) -> str:
        return f"IntrospectionRevocationStore({self.introspector!r})"

    @property
    def healthy(self) -> bool:
        """Whether the introspector's last readiness probe was answered properly."""
        return self.introspector.healthy

    async def health(self) -> dict[str, Any]:
        """Probe the endpoint for readiness checks (``Introspector.health``)."""
        return await self.introspector.health()

    def health_sync(self) -> dict[str, Any]:
        """Probe the endpoint, blocking (``Introspector.health_sync``)."""
        return self.introspector.health_sync()

    async def is_revoked(self, token: AccessToken) -> bool:
        """Whether the authorization server says ``token`` is no longer active.

        Raises:
            IntrospectionError: no usable answer (the guard fails closed).
        """
        return not (await self.introspector.introspect(_raw(token))).active

    def is_revoked_sync(self, token: AccessToken) -> bool:
        """Whether the authorization server says ``token`` is no longer active (blocking)."""
        return not self.introspector.introspect_sync(_raw(token)).active


def _raw(token: AccessToken) -> str:
    if not token.raw:
        # Only tokens built by hand lack it; asking about "" would get a meaningless answer.
        raise IntrospectionError("the token carries no raw form to introspect")
    return token.raw
