"""OAuth 2.0 Protected Resource Metadata (RFC 9728), as plain data: no I/O.

A guard built with ``resource="https://api.example/mcp"`` describes itself with a metadata
document; the middlewares serve it at its well-known URLs, and every 401 and 403 challenge
points to it with ``resource_metadata="..."`` (RFC 9728 §5.1), so a client that only knows
the API's URL can find the authorization server and the scopes to ask for (the discovery
the MCP authorization specification builds on).

    guard = BearerGuard(
        issuer="https://issuer.example",
        resource="https://api.example/mcp",  # also the audience unless one is given
        resource_metadata=ResourceMetadata(scopes_supported=["tools:read"]),
    )
    guard.protected_resource.metadata_url
    # 'https://api.example/.well-known/oauth-protected-resource/mcp'
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from bearerguard._core.scopes import validate_scope_names
from bearerguard.errors import ConfigurationError
from bearerguard.jwks import check_url

__all__ = [
    "WELL_KNOWN_PATH",
    "ProtectedResource",
    "ResourceMetadata",
    "check_resource",
    "resource_to_serve",
]

WELL_KNOWN_PATH = "/.well-known/oauth-protected-resource"
"""The well-known URI suffix registered by RFC 9728 §3."""

_DEFAULT_PORTS = {"https": 443, "http": 80}
# RFC 3986 §2: unreserved and reserved characters, and percent-encoded octets.
_URI = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
# The members ResourceMetadata's own arguments give, checked there; never taken from extra.
_MODELLED = frozenset(
    {"authorization_servers", "resource_documentation", "resource_name", "scopes_supported"}
)
_ALLOWED = "GET, HEAD, OPTIONS"
# A browser sends a CORS preflight (Fetch standard, "CORS-preflight fetch") before a GET
# carrying a header of its own, as MCP clients send MCP-Protocol-Version: without these
# headers in a 2xx answer, the browser never sends the GET.
_PREFLIGHT = [
    ("allow", _ALLOWED),
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET, HEAD"),
    ("access-control-allow-headers", "*"),
    ("access-control-max-age", "3600"),
]


def _strings(values: Iterable[str], what: str) -> tuple[str, ...]:
    items = (values,) if isinstance(values, str) else tuple(values)
    if not all(isinstance(item, str) and item for item in items):
        raise ConfigurationError(f"{what} must be non-empty strings")
    return items


@dataclass(frozen=True, slots=True)
class ResourceMetadata:
    """The parts of the metadata document that the guard's own settings do not give, and
    the scopes its 401 challenges name.

    Args:
        scopes_supported: the scopes clients may request for this resource (RFC 9728 §2);
            omitted from the document when empty.
        authorization_servers: issuer identifiers (https URLs) of the authorization servers;
            the guard's issuer by default (RFC 9728 §2).
        resource_name: a human-readable name of the resource.
        resource_documentation: an absolute http(s) URL of developer documentation.
        challenge_scopes: the scopes a client should request first, named as ``scope`` (RFC
            6750 §3) by every 401 challenge whose request's own scopes are not known (the
            middlewares' own, before any route runs). The MCP authorization specification
            asks servers for it (its scope selection strategy): clients request exactly
            these, and step up on a 403 ``insufficient_scope``; without it they request all
            of ``scopes_supported``. Not a member of the document, and not enforced: what
            a route or tool needs is checked where it is declared. None by default.
    """

    scopes_supported: Iterable[str] = ()
    authorization_servers: Iterable[str] = ()
    resource_name: str | None = None
    resource_documentation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Further members, for registered parameters not modelled here (one of the arguments
    above given here raises ``ConfigurationError``)."""
    challenge_scopes: Iterable[str] = ()


def _http_url(value: str, what: str) -> str:
    """Require an absolute http(s) URL: RFC 9728 §2 makes ``resource_documentation`` a URL,
    and clients parse it as one (the MCP SDK's metadata model drops a document naming a
    relative one, and with it the authorization servers)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigurationError(f"{what} must be an absolute http(s) URL: {value!r}")
    return value


def _issuer_identifiers(servers: Iterable[str]) -> tuple[str, ...]:
    """Require issuer identifiers (RFC 9728 §2, RFC 8414 §2): clients parse them as URLs and
    fetch their metadata; any other string voids the whole document for them."""
    given = _strings(servers, "authorization_servers")
    for server in given:
        check_url(server, "authorization_servers")
        if "?" in server:
            raise ConfigurationError(
                f"authorization_servers are issuer identifiers, without a query "
                f"(RFC 8414 §2): {server!r}"
            )
    return given


def check_resource(resource: str) -> str:
    """Validate a resource identifier (RFC 8707 §2, RFC 9728 §1.2).

    It must be an absolute https URL (http only on a loopback host, for development) with
    no query and no fragment, and in canonical form: lower-case scheme and host, no dot
    segments, no default port, so that the ``aud`` clients obtain for it compares equal to
    it.

    Raises:
        ConfigurationError: any other value.
    """
    check_url(resource, "resource")
    if _URI.fullmatch(resource) is None:
        # RFC 8707 §2: an absolute URI (RFC 3986 §4.3). A space, a backslash, a quote is in
        # none: clients' URL parsers encode or rewrite it, and their aud never matched.
        raise ConfigurationError(f"resource must be a URI (RFC 3986 §2): {resource!r}")
    parts = urlsplit(resource)
    if parts.query or "?" in resource or "#" in resource:
        raise ConfigurationError(
            f"resource must have no query and no fragment (RFC 8707 §2): {resource!r}"
        )
    # RFC 3986 §6.2.2.2: "%2e" is ".", and WHATWG URL parsers (browsers, Node) remove
    # "%2e%2e" as they remove "..": compared decoded, as the metadata paths are served.
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        raise ConfigurationError(f"resource must not have dot segments: {resource!r}")
    origin = f"{parts.scheme}://{parts.netloc}"
    if origin != origin.lower():
        raise ConfigurationError(f"resource must use a lower-case scheme and host: {resource!r}")
    # RFC 3986 §6.2.3: the scheme's default port, an empty port or leading zeros are not
    # canonical; clients (WHATWG URL parsers) drop them, so their aud would never match.
    _, colon, port = parts.netloc.rpartition("]")[2].partition(":")
    if colon and (port != str(parts.port) or parts.port == _DEFAULT_PORTS[parts.scheme]):
        raise ConfigurationError(
            f"resource must not name its scheme's default port, nor a port in another "
            f"form than its number: {resource!r}"
        )
    return resource


def _states(given: Any, value: Any) -> bool:
    """Whether an ``extra`` member says what the guard says: an array of algorithms is a
    set (RFC 9728 §2 gives it no order), a tuple as good as a list (both JSON arrays)."""
    if isinstance(value, list):
        return (
            isinstance(given, list | tuple)
            and all(isinstance(each, str) for each in given)
            and sorted(set(given)) == value
        )
    return bool(given == value)


def _unchecked(document: dict[str, Any], *, dpop: bool, mtls: bool) -> str | None:
    """A member claiming a binding the guard does not check: DPoP without ``dpop``, client
    certificates without ``mtls`` (``False`` and ``0`` claim nothing, as omission)."""
    if not mtls and document.get("tls_client_certificate_bound_access_tokens") not in (
        None,
        False,
    ):
        return "tls_client_certificate_bound_access_tokens"
    if not dpop:
        if "dpop_signing_alg_values_supported" in document:
            return "dpop_signing_alg_values_supported"
        if document.get("dpop_bound_access_tokens_required") not in (None, False):
            return "dpop_bound_access_tokens_required"
    return None


class ProtectedResource:
    """The metadata of one protected resource, and where it is published.

    Built by the guard from its ``resource``, ``issuer`` and ``resource_metadata``.

    Attributes:
        resource: the resource identifier.
        document: the metadata document (RFC 9728 §2).
        body: the document as served (JSON bytes).
        metadata_url: the path-suffixed well-known URL (RFC 9728 §3.1), the one challenges
            name in ``resource_metadata``.
        paths: the request paths served: the path-suffixed form and the bare
            ``/.well-known/oauth-protected-resource`` that some clients try next.
        challenge_scopes: the ``scope`` of 401 challenges that know no other (see
            ``ResourceMetadata``); empty for none.
    """

    __slots__ = (
        "body",
        "challenge_scopes",
        "document",
        "metadata_url",
        "paths",
        "resource",
        "servers_given",
    )

    def __init__(self, resource: str, issuer: str, metadata: ResourceMetadata | None) -> None:
        metadata = metadata or ResourceMetadata()
        given = _issuer_identifiers(metadata.authorization_servers)
        servers = given or (issuer,)
        supported = metadata.scopes_supported  # one scope, as one server is taken above
        scopes = (supported,) if isinstance(supported, str) else tuple(supported)
        if scopes:
            validate_scope_names(scopes)
        challenged = metadata.challenge_scopes  # one scope as a string, as scopes_supported
        first = (challenged,) if isinstance(challenged, str) else tuple(challenged)
        # Checked here: a name no challenge can carry would be dropped from every 401.
        self.challenge_scopes = validate_scope_names(first) if first else ()
        document: dict[str, Any] = {
            "resource": resource,
            "authorization_servers": list(servers),
        }
        if scopes:
            document["scopes_supported"] = list(scopes)
        # Only the Authorization header is accepted (RFC 6750 §2.1; §2.2 and §2.3 are not).
        document["bearer_methods_supported"] = ["header"]
        for name in ("resource_name", "resource_documentation"):
            value = getattr(metadata, name)
            if value is not None:
                document[name] = _strings([value], name)[0]
        if "resource_documentation" in document:
            _http_url(document["resource_documentation"], "resource_documentation")
        for name, value in metadata.extra.items():
            if not isinstance(name, str):  # json.dumps would write 1 as "1", None as "null"
                raise ConfigurationError(f"resource metadata is not JSON: member name {name!r}")
            if name in document:
                raise ConfigurationError(f"extra metadata member {name!r} is set by the guard")
            if name in _MODELLED:  # left out above, as not given: would escape its checks
                raise ConfigurationError(
                    f"extra metadata member {name!r} is a ResourceMetadata argument: "
                    f"pass {name}= instead"
                )
            document[name] = value
        parts = urlsplit(resource)
        # RFC 9728 §3.1: the well-known suffix goes between the host and the path; a path of
        # just "/" is a terminating slash and is dropped.
        suffix = "" if parts.path in ("", "/") else parts.path
        self.resource = resource
        self.servers_given = bool(given)
        """Whether ``authorization_servers`` was configured rather than the guard's issuer."""
        self.document = document
        try:
            # NaN and infinities are no JSON numbers (RFC 8259 §6): refused, not written.
            self.body = json.dumps(document, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"resource metadata is not JSON: {exc}") from exc
        self.metadata_url = f"{parts.scheme}://{parts.netloc}{WELL_KNOWN_PATH}{suffix}"
        # Servers hand apps the decoded path (ASGI "path", WSGI PATH_INFO): compare with the
        # suffix decoded, so that the URL every challenge names is the one served.
        self.paths = frozenset({WELL_KNOWN_PATH + unquote(suffix), WELL_KNOWN_PATH})

    def __repr__(self) -> str:
        return f"ProtectedResource({self.resource!r})"

    def naming(self, servers: Iterable[str]) -> ProtectedResource:
        """This metadata with ``servers`` as its ``authorization_servers`` (RFC 9728 §2), for
        a resource that trusts several issuers; unchanged when it names some already."""
        if self.servers_given:
            return self
        named = copy.copy(self)
        named.document = {**self.document, "authorization_servers": list(dict.fromkeys(servers))}
        named.body = json.dumps(named.document).encode()
        return named

    def binding(
        self,
        *,
        dpop_algorithms: Iterable[str] | None,
        dpop_required: bool,
        mtls: bool,
        upstream: bool = False,
    ) -> ProtectedResource:
        """This metadata stating which sender-constrained tokens the guard accepts.

        RFC 9728 §2: ``tls_client_certificate_bound_access_tokens`` and
        ``dpop_bound_access_tokens_required`` mean false when omitted, so a guard that checks
        certificate-bound tokens (RFC 8705) or requires DPoP (RFC 9449) must say so; the DPoP
        proof algorithms go in ``dpop_signing_alg_values_supported``. A guard that checks
        neither may not claim them (clients would get bound tokens it refuses), unless a
        gateway in front checks them (``upstream``).

        Raises:
            ConfigurationError: an ``extra`` member that says otherwise.
        """
        dpop = dpop_algorithms is not None
        claimed = None if upstream else _unchecked(self.document, dpop=dpop, mtls=mtls)
        if claimed is not None:
            raise ConfigurationError(f"extra metadata member {claimed!r} contradicts the guard")
        members: dict[str, Any] = {}
        if mtls:
            members["tls_client_certificate_bound_access_tokens"] = True
        if dpop_algorithms is not None:
            members["dpop_signing_alg_values_supported"] = sorted(dpop_algorithms)
            members["dpop_bound_access_tokens_required"] = dpop_required
        for name, value in members.items():
            if name in self.document and not _states(self.document[name], value):
                raise ConfigurationError(f"extra metadata member {name!r} contradicts the guard")
        if not members:
            return self
        bound = copy.copy(self)
        bound.document = {**self.document, **members}
        bound.body = json.dumps(bound.document).encode()
        return bound

    def response(self, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """The answer to a request for the document: ``(status, headers, body)``.

        ``GET`` and ``HEAD`` get the document (no body for ``HEAD``), ``OPTIONS`` the CORS
        preflight answer; any other method 405. The document is public: it is readable
        cross-origin, as browser-based clients need.
        """
        if method == "OPTIONS":
            # A copy, as every answer here: WSGI servers add to the list they are given
            # (wsgiref and Django's runserver append Content-Length, Connection).
            return 204, list(_PREFLIGHT), b""
        if method not in ("GET", "HEAD"):
            return 405, [("allow", _ALLOWED), ("content-length", "0")], b""
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(self.body))),
            ("cache-control", "public, max-age=3600"),
            ("access-control-allow-origin", "*"),
        ]
        return 200, headers, b"" if method == "HEAD" else self.body


def resource_to_serve(guard: Any) -> ProtectedResource:
    """The protected resource whose metadata ``serve_metadata`` serves for ``guard`` (a
    ``BearerGuard`` or ``TrustedIssuers``).

    Raises:
        ConfigurationError: the guard has no ``resource``, so no metadata to serve.
    """
    resource: ProtectedResource | None = guard.protected_resource
    if resource is None:
        raise ConfigurationError(
            "serve_metadata: the guard has no resource, so no protected-resource metadata "
            "(give it resource=, the API's canonical URL)"
        )
    return resource
