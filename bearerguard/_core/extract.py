"""Bearer credentials from an ``Authorization`` header (RFC 6750 §2.1)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from typing import Literal
from urllib.parse import unquote_to_bytes

from bearerguard._core.paths import PublicPaths
from bearerguard.errors import (
    AuthError,
    InvalidRequestError,
    MalformedTokenError,
    MissingTokenError,
)

__all__ = [
    "DEFAULT_MAX_TOKEN_BYTES",
    "bearer_credentials",
    "bound_credentials",
    "check_b64token",
    "extract_bearer",
    "has_query_token",
    "is_query_token",
    "joined_request_ids",
    "redact_query_token",
    "redact_token",
    "request_credentials",
    "request_dpop_credentials",
    "split_joined_values",
    "too_large",
]

DEFAULT_MAX_TOKEN_BYTES = 8192

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN_CHARS = (string.ascii_letters + string.digits + "-._~+/").encode()


# RFC 9110 §11.6.2: credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]. In a value
# joined with commas, a part starting with a scheme and a space opens new credentials; an
# auth-param ("name=value", as in Digest) continues the previous ones.
_NEW_CREDENTIALS = re.compile(rb"[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+ +[^ =]")
_QUOTED_PAIR = re.compile(rb"\\.", re.DOTALL)


def too_large(credentials: bytes, max_bytes: int) -> MalformedTokenError:
    """The refusal of a token longer than ``max_bytes``, given before any decoding."""
    return MalformedTokenError(f"token of {len(credentials)} bytes exceeds {max_bytes}")


def split_joined_values(value: bytes) -> list[bytes]:
    """The ``Authorization`` values a WSGI server joined into one with commas (RFC 9110 §5.3).

    ``Bearer a, Bearer b`` and ``Basic x, Bearer y`` are two values, as two headers are over
    ASGI; ``Digest realm="r", nonce="n"`` and ``Digest username="Doe, John Q"`` stay one.
    """
    if value.find(b",") == -1:
        return [value]
    # Each value's parts are joined once: appending part by part copied the value so far
    # each time, quadratic in a long header (waitress takes 256 KB of them).
    values: list[list[bytes]] = []
    # RFC 9110 §5.6.4: a comma inside a quoted-string separates nothing. Merging parts never
    # makes credentials acceptable: a Bearer value with a comma is no b64token.
    quotes = value.find(b'"') != -1
    quoted = False  # the value so far ends inside a quoted-string
    for part in value.split(b","):
        if values and (quoted or not _NEW_CREDENTIALS.match(part)):
            values[-1].append(part)
        else:
            values.append([part.strip(b" \t")])
        if quotes and part.find(b'"') != -1:  # its quotes, less escaped ones (quoted-pair)
            if part.find(b"\\") != -1:
                part = _QUOTED_PAIR.sub(b"", part)  # noqa: PLW2901 - only its quotes count
            quoted ^= part.count(b'"') % 2 == 1
    return [b",".join(parts) for parts in values]


def bearer_credentials(
    values: Sequence[bytes], *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> bytes | None:
    """Return the credentials of a ``Bearer`` ``Authorization`` header, not yet checked.

    ``check_b64token`` checks them; the guard does that only for tokens it has not verified
    before, so a reused token skips the scan.

    Raises:
        InvalidRequestError: several ``Authorization`` headers, or ``Bearer`` without
            credentials (RFC 6750 §2.1, §3.1).
        MalformedTokenError: the credentials are longer than ``max_bytes``.
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequestError("several Authorization headers")
    # Trailing OWS is no part of the field value (RFC 9110 §5.5), yet not every server strips
    # it: uvicorn's httptools parser passes "Bearer <token> \t" on as it came.
    scheme, _, credentials = values[0].rstrip(b" \t").partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    # RFC 6750 §2.1 allows 1*SP between the scheme and the token.
    credentials = credentials.lstrip(b" ")
    if len(credentials) > max_bytes:
        raise too_large(credentials, max_bytes)
    if not credentials:
        raise InvalidRequestError("Bearer without credentials")
    return credentials


def check_b64token(credentials: bytes) -> str:
    """Return ``credentials`` as text if they are one b64token (RFC 6750 §2.1).

    Raises:
        InvalidRequestError: they are not.
    """
    # Deleting every allowed character leaves nothing of a b64token: a single C-level pass.
    body = credentials.rstrip(b"=")
    if not body or body.translate(None, _B64TOKEN_CHARS):
        raise InvalidRequestError("Bearer credentials are not a single b64token")
    return credentials.decode("ascii")


def extract_bearer(
    values: Sequence[bytes], *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> str | None:
    """Return the bearer token carried by the ``Authorization`` header values, if any.

    Args:
        values: every ``Authorization`` header value of the request, in order.
        max_bytes: the largest token accepted; checked before any decoding.

    Returns:
        The token, or ``None`` when the request carries no bearer credentials (no header, or
        another scheme: RFC 6750 §3.1 asks for a bare challenge then).

    Raises:
        InvalidRequestError: several ``Authorization`` headers, or a ``Bearer`` header whose
            credentials are not one b64token (RFC 6750 §2.1, §3.1).
        MalformedTokenError: the token is longer than ``max_bytes``.
    """
    credentials = bearer_credentials(values, max_bytes=max_bytes)
    return None if credentials is None else check_b64token(credentials)


def is_query_token(part: bytes) -> bool:
    """Tell whether one ``name=value`` part of a query string is ``access_token``.

    RFC 6750 §2.3 sends it form-encoded (``application/x-www-form-urlencoded``), so the name
    is decoded as the application's query parser decodes it: ``access%5Ftoken`` is
    ``access_token`` too.
    """
    name = part.partition(b"=")[0]
    if name.find(b"%") != -1 or name.find(b"+") != -1:
        name = unquote_to_bytes(name.replace(b"+", b" "))
    return name == b"access_token"


def has_query_token(query_string: bytes) -> bool:
    """Tell whether a query string carries ``access_token`` (RFC 6750 §2.3)."""
    # find(), not "in": bytes.__contains__ first tries its operand as an integer, and the
    # TypeError it raises and clears costs more than the search on every request.
    if query_string.find(b"access_token") == -1 and query_string.find(b"%") == -1:
        return False
    return any(is_query_token(part) for part in query_string.split(b"&"))


REDACTED = b"REDACTED"


_MIN_SIGNATURE = 16  # a shorter last segment (a hand-built token's) could be any word


def redact_token(text: str, raw: str) -> str:
    """``text`` with the token ``raw``, and its signature segment, replaced by ``REDACTED``.

    For the message of an application's store that failed, logged in a refusal's detail:
    it may quote the token it was given, and audit events never carry the raw token nor
    any part of its signature. Called on failure paths only, before any truncation (which
    would leave a prefix no replacement finds).
    """
    if not raw:
        return text
    text = text.replace(raw, "REDACTED")
    signature = raw.rpartition(".")[2]
    if len(signature) >= _MIN_SIGNATURE:
        text = text.replace(signature, "REDACTED")
    return text


def redact_query_token(query_string: bytes) -> bytes:
    """``query_string`` with every ``access_token`` value replaced by ``REDACTED``.

    For a refused request, whose query the server logs after the app answers (RFC 6750
    §5.3): the name stays as sent, and so does every other parameter. The same object when
    there is nothing to redact.
    """
    if not has_query_token(query_string):
        return query_string
    return b"&".join(
        part.partition(b"=")[0] + b"=" + REDACTED if is_query_token(part) else part
        for part in query_string.split(b"&")
    )


def request_credentials(
    authorization: Sequence[bytes],
    query_string: bytes,
    path: str,
    public_paths: PublicPaths,
    *,
    max_bytes: int,
) -> bytes | None:
    """Apply the request-level rules every integration shares; return the token to verify.

    Returns:
        The bearer credentials (checked by the guard as a b64token unless it has verified
        them before), or ``None`` for a public path reached without credentials.

    Raises:
        InvalidRequestError: malformed or repeated credentials, or ``access_token`` in the
            query string (RFC 6750 §2.3 is not offered, and RFC 6750 §2 allows one method).
        MalformedTokenError: the token is too large.
        MissingTokenError: no credentials on a path that needs them (RFC 6750 §3.1).
    """
    token = bearer_credentials(authorization, max_bytes=max_bytes)
    if has_query_token(query_string):
        raise InvalidRequestError("access_token in the query string is not accepted")
    if token is None and path not in public_paths:
        raise MissingTokenError("no bearer credentials")
    return token


def request_dpop_credentials(
    authorization: Sequence[bytes],
    query_string: bytes,
    path: str,
    public_paths: PublicPaths,
    *,
    max_bytes: int,
) -> tuple[bytes | None, Literal["bearer", "dpop"]]:
    """``request_credentials`` for a guard with DPoP: the ``DPoP`` scheme is accepted too.

    RFC 9449 §7.1: ``Authorization: DPoP <token>``, with the same token68 syntax and size
    limit as Bearer credentials. Only called when DPoP is configured, so the Bearer hot path
    stays as it is.

    Returns:
        The credentials (or ``None`` on a public path reached without any) and the scheme.

    Raises:
        As ``request_credentials``; errors about DPoP credentials carry ``binding="dpop"``.
    """
    if len(authorization) == 1 and authorization[0][:5].lower() == b"dpop ":
        try:
            credentials = bearer_credentials(
                [b"Bearer" + authorization[0][4:]], max_bytes=max_bytes
            )
            if has_query_token(query_string):
                raise InvalidRequestError("access_token in the query string is not accepted")
        except AuthError as exc:
            exc.sent_with("dpop")
            raise
        return credentials, "dpop"
    if len(authorization) == 1 and authorization[0].rstrip(b" \t").lower() == b"dpop":
        error = InvalidRequestError("DPoP without credentials")
        error.sent_with("dpop")
        raise error
    return (
        request_credentials(authorization, query_string, path, public_paths, max_bytes=max_bytes),
        "bearer",
    )


def bound_credentials(
    dpop_enabled: bool,
    authorization: Sequence[bytes],
    query_string: bytes,
    path: str,
    public_paths: PublicPaths,
    *,
    max_bytes: int,
) -> tuple[bytes | None, Literal["bearer", "dpop"]]:
    """The credentials and their scheme when the guard accepts sender-constrained tokens.

    With DPoP enabled the ``DPoP`` scheme is accepted too (RFC 9449 §7.1); otherwise only
    ``Bearer``, as ``request_credentials``.
    """
    if dpop_enabled:
        return request_dpop_credentials(
            authorization, query_string, path, public_paths, max_bytes=max_bytes
        )
    token = request_credentials(
        authorization, query_string, path, public_paths, max_bytes=max_bytes
    )
    return token, "bearer"


def joined_request_ids(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Every ``X-Request-ID`` of an ASGI header list as one comma-joined value (RFC 9110
    §5.3), as WSGI servers give it; empty when there is none. Joined once: concatenating
    value by value is quadratic in the number of headers."""
    return b", ".join(value for name, value in headers if name == b"x-request-id")
