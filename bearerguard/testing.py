"""A development issuer for tests, demos and local work: real keys, served on 127.0.0.1.

``DevIssuer`` generates signing keys, serves OIDC discovery and a JWKS over real HTTP on a
loopback port, and mints access tokens. It is for development only: it signs whatever it is
asked to.

    with DevIssuer() as issuer:
        guard = issuer.guard(audience="https://api.example")
        token = issuer.mint(scopes=["items:read"])
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bearerguard.guard import BearerGuard

__all__ = ["DevIssuer", "Override", "RecordedRequest", "SigningKey"]

DEFAULT_AUDIENCE = "https://api.example"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key of the dev issuer, its ``kid`` and algorithm."""

    kid: str
    algorithm: str
    private_key: Any = field(repr=False)

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK, with ``kid``, ``alg`` and ``use``."""
        impl = RSAAlgorithm if self.algorithm.startswith(("RS", "PS")) else ECAlgorithm
        jwk: dict[str, Any] = impl.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, alg=self.algorithm, use="sig")
        return jwk


@dataclass(slots=True)
class Override:
    """A canned answer for one path, to simulate a misbehaving issuer."""

    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra response headers; a ``Content-Type`` here replaces the default JSON one."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request the dev issuer received: its path (without query) and its headers."""

    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    """The request headers, names lower-cased."""


def _new_key(algorithm: str) -> SigningKey:
    kid = f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
    if algorithm.startswith(("RS", "PS")):
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return SigningKey(kid, algorithm, private_key)
    if algorithm == "ES256":
        return SigningKey(kid, algorithm, ec.generate_private_key(ec.SECP256R1()))
    raise ValueError(f"DevIssuer does not generate {algorithm} keys")


class DevIssuer:
    """An OAuth issuer for development: discovery, JWKS and token minting on 127.0.0.1.

    Args:
        algorithms: one key is generated per algorithm (RS256, PS256 and ES256 supported);
            the first signs by default.
        audience: the default ``aud`` of minted tokens.
        port: the port to listen on; 0 picks a free one.
        jwks_max_age: the ``Cache-Control: max-age`` sent with the JWKS.
        path: a path component for the issuer identifier (``"/tenant-a"`` makes the issuer
            ``http://127.0.0.1:<port>/tenant-a``); metadata and JWKS are served under it.
        oidc_discovery: serve OpenID Connect Discovery metadata at
            ``<path>/.well-known/openid-configuration``.
        oauth_metadata: also serve RFC 8414 metadata at
            ``/.well-known/oauth-authorization-server<path>``.

    Attributes:
        requests: the paths requested so far, in order (for counting fetches).
        received: the requests so far with their headers, in order.
        overrides: canned answers by path, consulted before the normal ones.
    """

    def __init__(
        self,
        *,
        algorithms: Iterable[str] = ("RS256", "ES256"),
        audience: str = DEFAULT_AUDIENCE,
        port: int = 0,
        jwks_max_age: int = 300,
        path: str = "",
        oidc_discovery: bool = True,
        oauth_metadata: bool = False,
    ) -> None:
        if path and (not path.startswith("/") or path.endswith("/") or "?" in path):
            raise ValueError("path must start with '/' and end without '/' (or be empty)")
        self.audience = audience
        self.path = path
        self.oidc_discovery = oidc_discovery
        self.oauth_metadata = oauth_metadata
        self.jwks_max_age = jwks_max_age
        self.keys: list[SigningKey] = [_new_key(alg) for alg in algorithms]
        self.published: list[SigningKey] = list(self.keys)
        self.requests: list[str] = []
        self.received: list[RecordedRequest] = []
        self.overrides: dict[str, Override] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- addresses ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port served on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The issuer identifier (``iss``)."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def jwks_uri(self) -> str:
        """Where the JWKS is served."""
        return f"{self.url}/jwks.json"

    @property
    def jwks_path(self) -> str:
        """The request path of the JWKS (a key for ``overrides`` and ``fetch_count``)."""
        return f"{self.path}/jwks.json"

    @property
    def oidc_metadata_path(self) -> str:
        """The request path of the OpenID Connect Discovery document."""
        return f"{self.path}/.well-known/openid-configuration"

    @property
    def oauth_metadata_path(self) -> str:
        """The request path of the RFC 8414 metadata document (RFC 8414 §3.1)."""
        return f"/.well-known/oauth-authorization-server{self.path}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> DevIssuer:
        """Serve in a background thread; returns ``self``."""
        if self._thread is None:
            # A short poll interval makes stop() quick (the default waits up to 0.5 s).
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> DevIssuer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- keys -----------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        """The JWK Set currently published."""
        with self._lock:
            return {"keys": [key.public_jwk() for key in self.published]}

    def jwks_bytes(self) -> bytes:
        """The JWK Set currently published, as the JSON body served (for overrides)."""
        return json.dumps(self.jwks()).encode()

    def metadata(self) -> dict[str, Any]:
        """The discovery document."""
        return {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "token_endpoint": f"{self.url}/token",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": sorted({k.algorithm for k in self.keys}),
        }

    def rotate(self, algorithm: str = "RS256") -> SigningKey:
        """Publish a new key and sign with it from now on; older keys stay published."""
        key = _new_key(algorithm)
        with self._lock:
            self.keys.insert(0, key)
            self.published.append(key)
        return key

    def retire(self, kid: str) -> None:
        """Stop publishing the key ``kid`` (tokens it signed then stop verifying)."""
        with self._lock:
            self.published = [key for key in self.published if key.kid != kid]

    def key(self, algorithm: str | None = None) -> SigningKey:
        """The newest key for ``algorithm`` (the default signing key when ``None``)."""
        for key in self.keys:
            if algorithm is None or key.algorithm == algorithm:
                return key
        raise LookupError(f"no {algorithm} key")

    # -- tokens ---------------------------------------------------------------------------

    def claims(
        self,
        *,
        scopes: Iterable[str] = (),
        sub: str | None = "user-1",
        expires_in: float = 300,
        **claims: Any,
    ) -> dict[str, Any]:
        """The claims ``mint`` would sign, for building variants."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "sub": sub,
            "client_id": "dev-client",
            "iat": now,
            "exp": int(now + expires_in),
            "jti": uuid.uuid4().hex,
        }
        scope_list = list(scopes)
        if scope_list:
            payload["scope"] = " ".join(scope_list)
        payload.update(claims)
        return {name: value for name, value in payload.items() if value is not None}

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        algorithm: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign ``claims`` as a JWT with the issuer's key for ``algorithm``.

        ``headers`` are merged over ``{"kid": ..., "typ": "at+jwt"}``; members given as
        ``None`` are left out.
        """
        key = self.key(algorithm)
        header: dict[str, Any] = {"kid": key.kid, "typ": "at+jwt"}
        header.update(headers or {})
        # A member given as None is left out: headers={"kid": None} signs without a kid.
        header = {name: value for name, value in header.items() if value is not None}
        return jwt.encode(dict(claims), key.private_key, algorithm=key.algorithm, headers=header)

    def mint(
        self,
        *,
        scopes: Iterable[str] = (),
        sub: str | None = "user-1",
        expires_in: float = 300,
        algorithm: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """Mint a signed access token (RFC 9068 shape); extra keyword arguments are claims.

        A claim given as ``None`` is left out.
        """
        payload = self.claims(scopes=scopes, sub=sub, expires_in=expires_in, **claims)
        return self.sign(payload, algorithm=algorithm, headers=headers)

    def guard(self, *, discover: bool = True, **options: Any) -> BearerGuard:
        """A ``BearerGuard`` that trusts this issuer; keyword arguments pass through."""
        options.setdefault("audience", self.audience)
        if not discover:
            options.setdefault("jwks_uri", self.jwks_uri)
        return BearerGuard(issuer=self.url, **options)

    def fetch_count(self, path: str | None = None) -> int:
        """How many requests ``path`` received (the JWKS path by default)."""
        wanted = self.jwks_path if path is None else path
        with self._lock:
            return sum(1 for seen in self.requests if seen == wanted)

    # -- serving --------------------------------------------------------------------------

    def _answer(self, path: str, headers: Mapping[str, str]) -> Override:
        with self._lock:
            self.requests.append(path)
            self.received.append(RecordedRequest(path, dict(headers)))
            override = self.overrides.get(path)
        if override is not None:
            return override
        if (path == self.oidc_metadata_path and self.oidc_discovery) or (
            path == self.oauth_metadata_path and self.oauth_metadata
        ):
            return Override(body=json.dumps(self.metadata()).encode())
        if path == self.jwks_path:
            return Override(
                body=json.dumps(self.jwks()).encode(),
                headers={"Cache-Control": f"public, max-age={self.jwks_max_age}"},
            )
        return Override(status=404, body=b'{"error": "not_found"}')

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                answer = issuer._answer(self.path.split("?", 1)[0], headers)
                if answer.delay:
                    time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    if not any(name.lower() == "content-type" for name in answer.headers):
                        self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer.body)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to tell it

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
