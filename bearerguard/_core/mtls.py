"""Certificate-bound access tokens (RFC 8705 §3): thumbprints and the binding check, no I/O.

A bound token's ``cnf`` claim carries ``x5t#S256``, the base64url SHA-256 of the DER of the
client certificate it was issued to (RFC 8705 §3.1). Certificates arrive as PEM (the ASGI
``tls`` extension, ``SSL_CLIENT_CERT``, URL-encoded by proxies such as nginx's
``$ssl_client_escaped_cert``) or as an RFC 9440 ``Client-Cert`` byte sequence
(``:base64(DER):``); the chain and the certificate's validity were checked by whoever
terminated TLS, so only the bytes matter here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from bearerguard.errors import CertificateBindingError, MalformedTokenError

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "certificate_thumbprint",
    "check_certificate_binding",
    "der_from_header",
    "der_from_pem",
]

MAX_CERTIFICATE_BYTES = 16_384
"""Longer certificate values are ignored: no client certificate is that large."""

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
_THUMBPRINT = "x5t#S256"


def certificate_thumbprint(der: bytes) -> str:
    """The ``x5t#S256`` of a DER certificate: unpadded base64url of its SHA-256 (RFC 8705 §3.1)."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def der_from_pem(pem: str | bytes) -> bytes | None:
    """The DER of the first certificate in ``pem`` (the leaf of a chain), or ``None``."""
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    if len(text) > MAX_CERTIFICATE_BYTES * 2:
        return None
    match = _PEM.search(text)
    if match is None:
        return None
    try:
        der = base64.b64decode("".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return der or None


def der_from_header(value: str) -> bytes | None:
    """The DER of a certificate forwarded in a header by a TLS-terminating proxy, or ``None``.

    Accepts the RFC 9440 §2.2 byte sequence ``:base64(DER):``, its padding optional (RFC
    8941 §4.2.7), and a URL-encoded PEM. A value with a comma is refused: servers join
    repeated headers with commas, and a second value may have come from the client rather
    than the proxy.
    """
    value = value.strip()
    if not value or len(value) > MAX_CERTIFICATE_BYTES * 3 or "," in value:
        return None
    if len(value) > 2 and value[0] == ":" and value[-1] == ":":
        encoded = value[1:-1]
        # RFC 8941 §4.2.7: parsers SHOULD NOT fail when the "=" padding is not present.
        encoded += "=" * (-len(encoded) % 4)
        try:
            der = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None
        return der or None
    return der_from_pem(unquote(value))


def check_certificate_binding(claims: Mapping[str, Any], der: bytes | None) -> bool:
    """Check a token's certificate binding against the request's client certificate.

    Args:
        claims: the verified token's claims.
        der: the client certificate of the request (DER), ``None`` when none was presented.

    Returns:
        Whether the token is certificate-bound (and the binding holds).

    Raises:
        CertificateBindingError: the token is bound, and no certificate or another one was
            presented (RFC 8705 §3).
        MalformedTokenError: ``cnf`` ``x5t#S256`` is not a string.
    """
    cnf = claims.get("cnf")
    if not isinstance(cnf, Mapping) or _THUMBPRINT not in cnf:
        return False
    expected = cnf[_THUMBPRINT]
    if not isinstance(expected, str):
        raise MalformedTokenError("cnf x5t#S256 is not a string")
    if der is None:
        raise CertificateBindingError("certificate-bound token without a client certificate")
    # Both are public values, but compare in constant time all the same.
    actual = certificate_thumbprint(der).encode()
    if not hmac.compare_digest(actual, expected.encode("utf-8", "replace")):
        raise CertificateBindingError("the client certificate is not the one the token is bound to")
    return True
