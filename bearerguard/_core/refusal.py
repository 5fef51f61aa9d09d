"""The HTTP answer to a refused request (RFC 6750 §3), as plain data for any integration."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bearerguard.errors import AuthError, ServiceUnavailableError, render_challenge

__all__ = ["RETRY_AFTER_SECONDS", "Refusal", "render_refusal"]

RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Refusal:
    """Status, headers and JSON body of a refusal."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def render_refusal(error: AuthError, realm: str | None) -> Refusal:
    """Render ``error`` as an RFC 6750 response.

    401 and 403 carry a ``WWW-Authenticate`` challenge; a missing token gets one without an
    error code (RFC 6750 §3.1). 503 (fail closed) carries ``Retry-After`` instead. The body
    holds only the fixed ``error`` code and ``error_description`` of the error class.
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
        headers.append(("www-authenticate", render_challenge(realm, error)))
    return Refusal(error.status, tuple(headers), body)
