"""Certificate-bound access tokens: mutual-TLS sender constraint (RFC 8705 §3).

A certificate-bound token carries ``cnf`` ``x5t#S256``, the SHA-256 thumbprint of the client
certificate it was issued to. With ``BearerGuard(mtls=CertificateBinding(...))`` such a token
is accepted only on a request made over a TLS connection authenticated with that certificate,
checked on every request, cached tokens included. A stolen token is of no use without the
certificate's private key.

Where the client certificate comes from:

- ``source="tls"`` (the default): the server terminated TLS and verified the certificate.
  ASGI: the ``tls`` extension's ``client_cert_chain`` (PEM strings, leaf first), as the
  ASGI TLS extension specifies. uvicorn 0.54 does not fill it; check that your server does.
  WSGI: ``SSL_CLIENT_CERT`` (PEM) in the environ, as Apache mod_ssl exports with
  ``SSLOptions +ExportCertData`` (mod_wsgi) and werkzeug's development server sets.
  Whether the server could verify the certificate's chain is not looked at (the extension's
  ``client_cert_error``, mod_ssl's ``SSL_CLIENT_VERIFY``): the TLS handshake proved the
  client holds its key, which is all the binding needs, and RFC 8705 §6.2 has resource
  servers accept certificates no CA vouches for (self-signed ones, §2.2).
- ``source="header"``: a TLS-terminating proxy verified the certificate and forwards it in a
  header: an RFC 9440 ``Client-Cert`` byte sequence (``:base64(DER):``), or a URL-encoded
  PEM (nginx ``$ssl_client_escaped_cert``, AWS ALB ``X-Amzn-Mtls-Clientcert``).

Warning:
    Use ``source="header"`` only behind a proxy that removes or overwrites that header on
    every request: otherwise any client can name any certificate. A request carrying the
    header more than once is treated as having no certificate.

A request without a usable certificate is not refused for that alone: only a bound token
needs one. Refusals are 401 ``invalid_token`` (``CertificateBindingError``), recorded by the
audit log with ``binding="mtls"``; accepted bound tokens with ``binding="mtls"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bearerguard._core.mtls import (
    certificate_thumbprint,
    check_certificate_binding,
    der_from_header,
    der_from_pem,
)
from bearerguard.errors import ConfigurationError

if TYPE_CHECKING:
    from bearerguard.token import AccessToken

__all__ = [
    "CertificateBinding",
    "certificate_thumbprint",
    "check_certificate_binding",
    "environ_certificate",
    "is_certificate_bound",
    "scope_certificate",
]

_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


@dataclass(frozen=True, slots=True)
class CertificateBinding:
    """How the guard checks certificate-bound tokens (RFC 8705 §3).

    Args:
        source: ``"tls"``: the server's own TLS connection (the ASGI ``tls`` extension,
            the WSGI ``SSL_CLIENT_CERT``). ``"header"``: a header set by a trusted
            TLS-terminating proxy (see the module's warning).
        header: with ``source="header"``, the header's name (case-insensitive):
            ``client-cert`` (RFC 9440) by default; another name needs ``source="header"``.
        required: refuse tokens that are not certificate-bound. Off by default: bearer
            tokens are still accepted, bound ones only with their certificate.

    Raises:
        ConfigurationError: an unknown source, a malformed header name, a ``header`` other
            than the default without ``source="header"``, or a ``required`` that is not
            ``True`` or ``False``.
    """

    source: Literal["tls", "header"] = "tls"
    header: str = "client-cert"
    required: bool = False

    def __post_init__(self) -> None:
        if self.source not in ("tls", "header"):
            raise ConfigurationError("CertificateBinding source is 'tls' or 'header'")
        if not isinstance(self.required, bool):
            # A string such as "false" (from the environment) is truthy.
            raise ConfigurationError(f"required must be True or False, not {self.required!r}")
        name = self.header.lower() if isinstance(self.header, str) else ""
        if not _HEADER_NAME.fullmatch(name) or name in ("authorization", "dpop"):
            raise ConfigurationError(f"not a usable header name: {self.header!r}")
        if self.source == "tls" and name != "client-cert":
            # Read only from a proxy's header: given alone, the TLS connection was read
            # instead (nothing, behind that proxy) and every bound token refused.
            raise ConfigurationError(
                f"header={self.header!r} is read only with source='header'; "
                "source='tls' reads the server's TLS connection"
            )
        object.__setattr__(self, "header", name)

    @property
    def environ_key(self) -> str:
        """The WSGI environ key of the configured header (``HTTP_CLIENT_CERT``)."""
        return "HTTP_" + self.header.upper().replace("-", "_")


def scope_certificate(scope: Mapping[str, Any], binding: CertificateBinding) -> bytes | None:
    """The DER of an ASGI request's client certificate, as ``binding`` says, or ``None``."""
    if binding.source == "header":
        wanted = binding.header.encode("latin-1")
        values = [value for name, value in scope.get("headers", ()) if name == wanted]
        if len(values) != 1:
            return None
        return der_from_header(bytes(values[0]).decode("latin-1"))  # bytes-like too
    tls = (scope.get("extensions") or {}).get("tls")
    chain = tls.get("client_cert_chain") if isinstance(tls, Mapping) else None
    if not chain or not isinstance(chain, Iterable) or isinstance(chain, str | bytes):
        return None
    leaf = next(iter(chain), None)
    return der_from_pem(leaf) if isinstance(leaf, str | bytes) else None


def environ_certificate(environ: Mapping[str, Any], binding: CertificateBinding) -> bytes | None:
    """The DER of a WSGI request's client certificate, as ``binding`` says, or ``None``."""
    if binding.source == "header":
        value = environ.get(binding.environ_key)
        return der_from_header(value) if isinstance(value, str) else None
    value = environ.get("SSL_CLIENT_CERT")
    return der_from_pem(value) if isinstance(value, str | bytes) and value else None


def is_certificate_bound(token: AccessToken) -> bool:
    """Whether ``token`` carries a certificate binding (``cnf`` ``x5t#S256``)."""
    cnf = token.claims.get("cnf")
    return isinstance(cnf, Mapping) and "x5t#S256" in cnf


def binding_of(scheme: str, binding: CertificateBinding | None, token: AccessToken) -> str:
    """How an accepted token was bound: ``"mtls"`` for a certificate-bound bearer token."""
    if scheme == "bearer" and binding is not None and is_certificate_bound(token):
        return "mtls"
    return scheme
