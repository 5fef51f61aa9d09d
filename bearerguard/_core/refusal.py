"""The HTTP answer to a refused request (RFC 6750 §3), as plain data for any integration."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from bearerguard.errors import (
    AuthError,
    InsufficientScopeError,
    InvalidDPoPProofError,
    ServiceUnavailableError,
    UseDPoPNonceError,
    render_challenge,
    scope_attribute,
)

__all__ = ["RETRY_AFTER_SECONDS", "Refusal", "render_refusal"]

RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Refusal:
    """Status, headers and JSON body of a refusal."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def framed_headers(self) -> list[tuple[str, str]]:
        """``headers`` with the body's ``content-length``, for a response written raw to an
        ASGI or WSGI server (a framework's response object adds its own): without it, an
        HTTP/1.1 server chunks the body and an HTTP/1.0 client's connection is closed."""
        return [*self.headers, ("content-length", str(len(self.body)))]


def render_refusal(
    error: AuthError,
    realm: str | None,
    *,
    resource_metadata: str | None = None,
    scope: Sequence[str] = (),
    dpop_algs: str | None = None,
    dpop_only: bool = False,
) -> Refusal:
    """Render ``error`` as an RFC 6750 response.

    401 and 403 carry a ``WWW-Authenticate`` challenge; a missing token gets one without an
    error code (RFC 6750 §3.1). 503 (fail closed) carries ``Retry-After`` instead. The body
    holds only the fixed ``error`` code and ``error_description`` of the error class.

    Args:
        error: the refusal.
        realm: the challenge's ``realm``.
        resource_metadata: the URL of the protected-resource metadata, added to 401 and
            403 challenges (RFC 9728 §5.1).
        scope: the scopes the route needs, as a hint in 401 challenges (RFC 6750 §3: the
            ``scope`` attribute; 403 ``insufficient_scope`` names its own).
        dpop_algs: when DPoP is accepted, the proof algorithms: a ``DPoP`` challenge with
            ``algs`` is added (RFC 9449 §7.1), and the error code goes on the challenge of
            the scheme the request used. A ``use_dpop_nonce`` refusal adds ``DPoP-Nonce``.
        dpop_only: DPoP is required: the ``Bearer`` challenge is left out.
    """
    code = error.error_code or "unauthorized"
    body = json.dumps({"error": code, "error_description": error.description}).encode()
    headers: list[tuple[str, str]] = [
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ]
    if isinstance(error, ServiceUnavailableError):
        headers.append(("retry-after", str(RETRY_AFTER_SECONDS)))
    else:
        extra: list[tuple[str, str]] = []
        if error.status in (401, 403) and resource_metadata is not None:
            extra.append(("resource_metadata", resource_metadata))
        hint = scope_attribute(scope) if error.status == 401 else None
        if hint is not None and not isinstance(error, InsufficientScopeError):
            extra.append(("scope", hint))
        if dpop_algs is None:
            headers.append(("www-authenticate", render_challenge(realm, error, extra=extra)))
        else:
            headers.extend(_dpop_challenges(error, realm, extra, dpop_algs, dpop_only=dpop_only))
    return Refusal(error.status, tuple(headers), body)


def _dpop_challenges(
    error: AuthError,
    realm: str | None,
    extra: list[tuple[str, str]],
    algs: str,
    *,
    dpop_only: bool,
) -> list[tuple[str, str]]:
    on_dpop = (
        dpop_only
        or error.scheme == "dpop"
        or isinstance(error, InvalidDPoPProofError | UseDPoPNonceError)
    )
    challenges = []
    if not dpop_only:
        challenges.append(render_challenge(realm, None if on_dpop else error, extra=extra))
    dpop_extra = [*extra, ("algs", algs)]
    challenges.append(
        render_challenge(realm, error if on_dpop else None, scheme="DPoP", extra=dpop_extra)
    )
    # Several challenges in one field (RFC 9110 §11.6.1): a dict of headers keeps them all.
    headers = [("www-authenticate", ", ".join(challenges))]
    if isinstance(error, UseDPoPNonceError):
        headers.append(("dpop-nonce", error.nonce))  # RFC 9449 §8.1
    return headers
