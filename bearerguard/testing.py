"""Helpers for testing APIs protected by bearerguard: a development issuer and audit capture.

``DevIssuer`` generates signing keys, serves OIDC discovery and a JWKS over real HTTP on a
loopback port, and mints access tokens, good ones and the usual bad ones (expired, for
another audience, forged, revoked). It is for development only: it signs whatever it is
asked to.

``audit_events()`` captures the audit events bearerguard emits while it is active, with
assertions that say what was emitted instead when they fail.

    with DevIssuer() as issuer, audit_events() as events:
        guard = issuer.guard(audience="https://api.example")
        token = issuer.mint(scopes=["items:read"])
        ...
        events.assert_one("token.accepted", sub="user-1")

The pytest fixtures built on these live in ``bearerguard.pytest_plugin`` (opt-in).
"""

from __future__ import annotations

import base64
import hashlib
import json
import selectors
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from structlog.testing import capture_logs

from bearerguard.guard import BearerGuard

__all__ = [
    "AUDIT_EVENT_NAMES",
    "DEFAULT_AUDIENCE",
    "AuditEvents",
    "DevIssuer",
    "Override",
    "RecordedRequest",
    "SigningKey",
    "audit_events",
]

DEFAULT_AUDIENCE = "https://api.example"
"""The ``aud`` of minted tokens unless the issuer is given another."""

AUDIT_EVENT_NAMES = frozenset(
    {
        "token.accepted",
        "token.rejected",
        "token.anomaly",
        "scope.denied",
        "auth.unavailable",
        "event.received",
        "event.rejected",
    }
)
"""The names of bearerguard's audit events (``docs/audit-events.md``)."""

# Every audit event carries `outcome` and is named "<namespace>.<what>" in one of these
# namespaces: events added later are captured too, before this list learns their names.
_AUDIT_NAMESPACES = frozenset(name.partition(".")[0] for name in AUDIT_EVENT_NAMES)

# RFC 9864 §2.2: "Ed25519" and "Ed448" are EdDSA on one curve each. PyJWT signs them only as
# "EdDSA"; a JWS signer of our own signs them under their own names (the same signature).
_FULLY_SPECIFIED_EDDSA = jwt.PyJWS()
_FULLY_SPECIFIED_EDDSA.register_algorithm("Ed25519", OKPAlgorithm())
_FULLY_SPECIFIED_EDDSA.register_algorithm("Ed448", OKPAlgorithm())


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key of the dev issuer, its ``kid`` and algorithm."""

    kid: str
    algorithm: str
    private_key: Any = field(repr=False)

    @classmethod
    def generate(cls, algorithm: str = "RS256") -> SigningKey:
        """A new key for ``algorithm`` (RS256, PS256: RSA 2048 bits; ES256: P-256; EdDSA,
        Ed25519: Ed25519; Ed448: Ed448)."""
        return _new_key(algorithm)

    @classmethod
    def from_pem(
        cls, pem: str | bytes, *, algorithm: str | None = None, kid: str | None = None
    ) -> SigningKey:
        """Load an unencrypted PEM private key: RSA (2048 bits or more), EC P-256, Ed25519
        or Ed448.

        Args:
            pem: the PEM text.
            algorithm: RS256 or PS256 for an RSA key (RS256 by default); ES256 for P-256;
                Ed25519 (the default) or EdDSA for an Ed25519 key, Ed448 (the default) or
                EdDSA for an Ed448 key (RFC 9864).
            kid: the key id; by default the RFC 7638 thumbprint of the public key, so the
                same key file always publishes and signs under the same ``kid``.

        Raises:
            ValueError: not a PEM private key of a supported type, size or algorithm.
        """
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            private_key = serialization.load_pem_private_key(data, password=None)
        except UnsupportedAlgorithm as exc:  # an EC curve OpenSSL does not offer, say
            raise ValueError(f"not a supported private key: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not an unencrypted PEM private key: {exc}") from None
        if isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < 2048:
                raise ValueError(f"an RSA key of {private_key.key_size} bits is too weak")
            chosen = algorithm or "RS256"
            if chosen not in ("RS256", "PS256"):
                raise ValueError(f"an RSA key signs RS256 or PS256, not {chosen}")
        elif isinstance(private_key, ec.EllipticCurvePrivateKey):
            if not isinstance(private_key.curve, ec.SECP256R1):
                raise ValueError(  # noqa: TRY004 - a bad key file is a value, not a caller's type
                    f"EC curve {private_key.curve.name} is not supported (P-256 only)"
                )
            chosen = algorithm or "ES256"
            if chosen != "ES256":
                raise ValueError(f"a P-256 key signs ES256, not {chosen}")
        elif isinstance(private_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            curve = "Ed25519" if isinstance(private_key, ed25519.Ed25519PrivateKey) else "Ed448"
            chosen = algorithm or curve
            if chosen not in ("EdDSA", curve):
                raise ValueError(f"an {curve} key signs {curve} or EdDSA, not {chosen}")
        else:
            raise ValueError(  # noqa: TRY004 - idem
                "only RSA, EC P-256, Ed25519 and Ed448 private keys are supported"
            )
        if kid is None:
            kid = _thumbprint(cls("", chosen, private_key).public_jwk())
        return cls(kid, chosen, private_key)

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK, with ``kid``, ``alg`` and ``use``."""
        public_key = self.private_key.public_key()
        jwk: dict[str, Any]
        if isinstance(public_key, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
        jwk.update(kid=self.kid, alg=self.algorithm, use="sig")
        return jwk

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (for ``from_pem`` and ``--key``)."""
        pem: bytes = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return pem


@dataclass(slots=True)
class Override:
    """A canned answer for one path, to simulate a misbehaving issuer."""

    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra response headers; a ``Content-Type`` here replaces the default JSON one."""

    def __post_init__(self) -> None:
        # A str body would fail only in the serving thread, mid-answer: a traceback on stderr
        # and a key fetch failing for no visible reason. Say so where the mistake is made.
        body: object = self.body
        if not isinstance(body, bytes | bytearray):
            raise TypeError(
                f"Override body is bytes, not {type(body).__name__}: "
                "encode it, as json.dumps(document).encode()"
            )


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request the dev issuer received: its path (without query) and its headers."""

    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    """The request headers, names lower-cased."""


_SIGN_OPTIONS = frozenset({"algorithm", "headers"})


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of an RSA, EC or OKP public JWK."""
    members = {"RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}.get(
        jwk["kty"], ("crv", "kty", "x", "y")
    )  # RFC 7638 §3.2, RFC 8037 §2
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _sign(key: SigningKey, claims: Mapping[str, Any], headers: Mapping[str, Any]) -> str:
    """A JWT of ``claims`` signed by ``key``; header members given as ``None`` left out."""
    # A member given as None is left out: headers={"kid": None} signs without a kid.
    header = {name: value for name, value in headers.items() if value is not None}
    # PyJWT writes "typ": "JWT" into a header without typ; a typ of None is its way to omit it.
    header.setdefault("typ", None)
    if key.algorithm in ("Ed25519", "Ed448"):
        payload = json.dumps(dict(claims), separators=(",", ":")).encode()
        return _FULLY_SPECIFIED_EDDSA.encode(
            payload, key.private_key, algorithm=key.algorithm, headers=header
        )
    return jwt.encode(dict(claims), key.private_key, algorithm=key.algorithm, headers=header)


def _new_key(algorithm: str, kid: str | None = None) -> SigningKey:
    kid = kid or f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
    if algorithm in ("RS256", "PS256"):
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return SigningKey(kid, algorithm, private_key)
    if algorithm == "ES256":
        return SigningKey(kid, algorithm, ec.generate_private_key(ec.SECP256R1()))
    if algorithm in ("EdDSA", "Ed25519"):
        return SigningKey(kid, algorithm, ed25519.Ed25519PrivateKey.generate())
    if algorithm == "Ed448":
        return SigningKey(kid, algorithm, ed448.Ed448PrivateKey.generate())
    raise ValueError(f"DevIssuer does not generate {algorithm} keys")


class _ServingThread:
    """Serves an HTTP server from a daemon thread that sleeps while no request comes.

    ``serve_forever`` polls (here every 20 ms, so that it stops quickly), and each wake-up
    then waits for the GIL. A thread waiting for the GIL is woken again every time another
    thread releases it around a system call, so a polling server taxes every write the
    process under test makes: about 5 µs per audit event in the benchmarks. This thread
    blocks in ``select`` until a connection or ``stop()`` comes.
    """

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        server.daemon_threads = True
        server.timeout = 1.0  # handle_request never waits long for a connection that vanished
        # Made by start(): an issuer never started (in_process guards) holds no pair to close.
        self._stop_reader: socket.socket | None = None
        self._stop_writer: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.closed = False

    def start(self) -> None:
        """Start listening and serving (once; not after ``close``)."""
        if self._thread is None:
            self.server.server_activate()  # listen: before it, connections are refused
            self._stop_reader, self._stop_writer = socket.socketpair()
            self._thread = threading.Thread(
                target=self._serve, args=(self._stop_reader,), daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop serving, wait for the thread, and release the port."""
        if self._thread is not None and self._stop_writer is not None:
            self._stop_writer.send(b"\0")
            self._thread.join()
            self._thread = None
        for end in (self._stop_reader, self._stop_writer):
            if end is not None:
                end.close()
        self.server.server_close()
        self.closed = True

    def _serve(self, stop: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.server.socket, selectors.EVENT_READ)
            selector.register(stop, selectors.EVENT_READ)
            while all(key.fileobj is not stop for key, _ in selector.select()):
                self.server.handle_request()


class _IssuerServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` whose closing ends the connections it is still handling.

    Its handler threads are daemons, which ``server_close`` does not wait for: one waiting
    out an ``Override`` delay lived on after ``stop()``, its connection open, and answered
    once the delay ran out. Closing now wakes them (``pause``) and waits for them to end.
    """

    daemon_threads = True

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", port), handler, bind_and_activate=False)
        self.closing = threading.Event()
        self._handling: dict[threading.Thread, socket.socket] = {}
        self._handling_lock = threading.Lock()

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` in a handler; ``False`` when the server closes meanwhile."""
        return not self.closing.wait(seconds)

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's, with each thread and its connection kept until it ends.
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        with self._handling_lock:
            self._handling[thread] = request
        try:
            thread.start()
        except BaseException:
            with self._handling_lock:
                del self._handling[thread]
            raise

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._handling_lock:
                self._handling.pop(threading.current_thread(), None)

    def server_close(self) -> None:
        self.closing.set()  # a paused handler wakes and closes its connection unanswered
        super().server_close()
        with self._handling_lock:
            handling = list(self._handling.items())
        for _, connection in handling:
            # A handler reading a request that never comes reads its end now; one writing
            # an answer still finishes it.
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + 5.0
        for thread, _ in handling:
            thread.join(max(deadline - time.monotonic(), 0.0))


class DevIssuer:
    """An OAuth issuer for development: discovery, JWKS and token minting on 127.0.0.1.

    Args:
        algorithms: one key is generated per algorithm (RS256, PS256, ES256, EdDSA and
            RFC 9864's Ed25519 and Ed448 supported; EdDSA signs with an Ed25519 key); the
            first signs by default.
        audience: the default ``aud`` of minted tokens.
        port: the port to listen on; 0 picks a free one.
        jwks_max_age: the ``Cache-Control: max-age`` sent with the JWKS.
        path: a path component for the issuer identifier (``"/tenant-a"`` makes the issuer
            ``http://127.0.0.1:<port>/tenant-a``); metadata and JWKS are served under it.
            A trailing slash is kept in the issuer: ``"/"`` makes it
            ``http://127.0.0.1:<port>/``, as Auth0's issuers end.
        oidc_discovery: serve OpenID Connect Discovery metadata at
            ``<path>/.well-known/openid-configuration``.
        oauth_metadata: also serve RFC 8414 metadata at
            ``/.well-known/oauth-authorization-server<path>``.
        keys: signing keys to use instead of generating one per algorithm (generating an
            RSA key takes a while: share keys across the issuers of a test session); the
            first signs by default and ``algorithms`` is ignored.

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
        keys: Iterable[SigningKey] | None = None,
    ) -> None:
        if path and (not path.startswith("/") or "//" in path or "?" in path or "#" in path):
            raise ValueError(
                "path must start with '/', without an empty segment, query or fragment "
                "(or be empty)"
            )
        self.audience = audience
        self.path = path
        # Where metadata and keys are served: under the path, its trailing slash aside (the
        # guard's discovery drops it too: OIDC Discovery §4.1, RFC 8414 §3.1).
        self._base = path.rstrip("/")
        self.oidc_discovery = oidc_discovery
        self.oauth_metadata = oauth_metadata
        self.jwks_max_age = jwks_max_age
        if isinstance(algorithms, str):  # iterating "ES256" would ask for an "E" key
            raise TypeError(f"algorithms is an iterable of names: [{algorithms!r}], not a string")
        self.keys: list[SigningKey] = (
            [_new_key(alg) for alg in algorithms] if keys is None else list(keys)
        )
        if not self.keys:
            raise ValueError("a DevIssuer needs at least one key")
        self._strangers: dict[str, SigningKey] = {}
        self.published: list[SigningKey] = list(self.keys)
        self.requests: list[str] = []
        self.received: list[RecordedRequest] = []
        self.overrides: dict[str, Override] = {}
        self._lock = threading.Lock()
        # Bound now, so that the port (and the issuer's URL) is known; listening only from
        # start(): an issuer not started refuses connections rather than leave them hanging.
        self._server = self._bind(port)
        self._serving = _ServingThread(self._server)

    def _bind(self, port: int) -> _IssuerServer:
        server = _IssuerServer(port, self._handler())
        try:
            server.server_bind()
        except OSError:
            server.server_close()
            raise
        # The port is bound from construction (for the URL), and an issuer used only for
        # in_process guards is never stopped: close it when the issuer goes. The socket alone,
        # as the server refers back to the issuer (its handler), which would then never go.
        weakref.finalize(self, server.socket.close)
        return server

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
        return f"http://127.0.0.1:{self.port}{self._base}/jwks.json"

    @property
    def jwks_path(self) -> str:
        """The request path of the JWKS (a key for ``overrides`` and ``fetch_count``)."""
        return f"{self._base}/jwks.json"

    @property
    def oidc_metadata_path(self) -> str:
        """The request path of the OpenID Connect Discovery document."""
        return f"{self._base}/.well-known/openid-configuration"

    @property
    def oauth_metadata_path(self) -> str:
        """The request path of the RFC 8414 metadata document (RFC 8414 §3.1)."""
        return f"/.well-known/oauth-authorization-server{self._base}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> DevIssuer:
        """Serve in a background thread; returns ``self``.

        A stopped issuer starts again on the same port with the same keys, so its ``url``
        (the tokens' ``iss``) and the guards made for it still fit: stop and start it to
        simulate an outage of the issuer. Starting a started issuer changes nothing.

        Raises:
            OSError: the issuer was stopped and its port has since been taken.
        """
        if self._serving.closed:
            try:
                server = self._bind(self.port)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"cannot start the DevIssuer again: port {self.port} was taken while it "
                    f"was stopped ({exc.strerror})",
                ) from exc
            self._server = server
            self._serving = _ServingThread(server)
        self._serving.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (``start()`` serves on it again)."""
        self._serving.close()

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
        """The discovery document, with the members OpenID Connect Discovery 1.0 §3 requires
        (the endpoints are named, not served: tokens come from ``mint``)."""
        return {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "authorization_endpoint": f"http://127.0.0.1:{self.port}{self._base}/authorize",
            "token_endpoint": f"http://127.0.0.1:{self.port}{self._base}/token",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": sorted({k.algorithm for k in self.keys}),
        }

    def rotate(self, algorithm: str | None = None) -> SigningKey:
        """Publish a new key and sign with it from now on; older keys stay published.

        The new key is for ``algorithm``, by default the current signing key's: a provider
        rotating its key keeps its algorithm, and a guard allowing only that one still
        accepts the new key's tokens.
        """
        key = _new_key(self.key().algorithm if algorithm is None else algorithm)
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
        if isinstance(scopes, str):  # list("a:b") would grant one scope per character
            raise TypeError("scopes is an iterable of scope names: ['items:read'], not a string")
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
        return _sign(key, claims, {"kid": key.kid, "typ": "at+jwt", **(headers or {})})

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

    # -- the usual bad tokens ---------------------------------------------------------------

    def mint_expired(self, *, ago: float = 600, **options: Any) -> str:
        """A token whose ``exp`` passed ``ago`` seconds ago, well beyond the default leeway.

        Other keyword arguments are those of ``mint``. A guard answers it ``expired``.
        """
        now = int(time.time())
        options.setdefault("iat", now - int(ago) - 300)
        return self.mint(exp=now - int(ago), **options)

    def mint_not_yet_valid(self, *, starts_in: float = 600, **options: Any) -> str:
        """A token whose ``nbf`` lies ``starts_in`` seconds ahead: ``not_yet_valid``."""
        now = int(time.time())
        return self.mint(nbf=now + int(starts_in), **options)

    def mint_for_audience(self, audience: str | list[str], **options: Any) -> str:
        """A token issued for another API (``aud`` is ``audience``): ``invalid_audience``."""
        return self.mint(aud=audience, **options)

    def mint_forged(
        self, *, kid: str | None = None, algorithm: str | None = None, **options: Any
    ) -> str:
        """A token with this issuer's claims, signed by a key it never published.

        Args:
            kid: the ``kid`` to claim. By default that of the issuer's signing key for
                ``algorithm``, which a guard answers ``bad_signature``; a ``kid`` the issuer
                never published is answered ``unknown_key``.
            algorithm: the algorithm signed with (the default signing key's by default).
            options: as for ``mint``.
        """
        genuine = self.key(algorithm)
        stranger = self._strangers.get(genuine.algorithm)
        if stranger is None:
            stranger = self._strangers[genuine.algorithm] = _new_key(genuine.algorithm)
        headers = dict(options.pop("headers", None) or {})
        headers.setdefault("kid", genuine.kid if kid is None else kid)
        return _sign(stranger, self.claims(**options), {"typ": "at+jwt", **headers})

    def mint_revoked(self, store: Any, **options: Any) -> str:
        """A token that is revoked in ``store`` by its ``jti``: ``revoked``.

        Args:
            store: a revocation store with the synchronous ``revoke_token_sync(jti,
                expires_at)``, such as ``MemoryRevocationStore``; the guard must use it.
            options: as for ``mint``.

        Raises:
            TypeError: the store has no ``revoke_token_sync``; revoke with
                ``await store.revoke_token(jti, expires_at)`` instead.
            ValueError: ``jti=None`` was given: a token without ``jti`` cannot be revoked by
                it (cut its subject off with ``store.revoke_subject_sync`` instead).
        """
        revoke = getattr(store, "revoke_token_sync", None)
        if not callable(revoke):
            raise TypeError(
                f"{type(store).__name__} has no revoke_token_sync: mint the token, then "
                "await store.revoke_token(jti, expires_at) yourself"
            )
        payload = self.claims(
            **{name: value for name, value in options.items() if name not in _SIGN_OPTIONS}
        )
        if "jti" not in payload:
            # Revoking by subject instead would also refuse every other token of that
            # subject minted in the same second: say so rather than guess.
            raise ValueError(
                "mint_revoked revokes by jti, and jti=None leaves it out: mint the token with "
                "mint(jti=None), then cut its subject off with "
                "store.revoke_subject_sync(sub, issued_before=...)"
            )
        revoke(payload["jti"], payload["exp"])
        return self.sign(
            payload, algorithm=options.get("algorithm"), headers=options.get("headers")
        )

    def guard(
        self, *, discover: bool = True, in_process: bool = False, **options: Any
    ) -> BearerGuard:
        """A ``BearerGuard`` that trusts this issuer; keyword arguments pass through.

        Args:
            discover: find the JWKS through discovery, as against a real provider; ``False``
                configures ``jwks_uri`` directly.
            in_process: give the guard the published keys as static keys: no HTTP at all
                (the issuer need not be started), but later ``rotate`` and ``retire`` calls
                are not seen.
            options: ``BearerGuard`` options; ``audience`` defaults to the issuer's, unless
                ``resource`` is given: then the resource is the audience, as in production.
        """
        if "resource" not in options:
            options.setdefault("audience", self.audience)
        if in_process:
            options.setdefault("keys", self.jwks())
        elif not discover:
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
                server = cast("_IssuerServer", self.server)  # the one made with this class
                if answer.delay and not server.pause(answer.delay):
                    return  # stopped meanwhile: the connection closes unanswered
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


# -- audit events -----------------------------------------------------------------------


def _is_audit_event(entry: Mapping[str, Any]) -> bool:
    name = entry.get("event")
    if not isinstance(name, str):
        return False
    if name in AUDIT_EVENT_NAMES:
        return True
    namespace, dot, what = name.partition(".")
    return bool(dot and what) and namespace in _AUDIT_NAMESPACES and "outcome" in entry


def _show(event: Mapping[str, Any]) -> str:
    fields = " ".join(
        f"{name}={value!r}"
        for name, value in event.items()
        if name not in ("event", "log_level") and value is not None
    )
    return f"{event.get('event')} {fields}".rstrip()


class AuditEvents:
    """bearerguard's audit events captured by ``audit_events()``, oldest first.

    Iterating, ``len()`` and indexing see the events captured so far, each a ``dict`` with
    the fields of ``docs/audit-events.md`` plus ``event`` (its name) and ``log_level``.
    Other structlog events are left out.
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: list[MutableMapping[str, Any]]) -> None:
        self._entries = entries

    @property
    def events(self) -> list[dict[str, Any]]:
        """The audit events captured so far."""
        return [dict(entry) for entry in self._entries if _is_audit_event(entry)]

    @property
    def names(self) -> list[str]:
        """The names of the audit events captured so far, in order."""
        return [str(event["event"]) for event in self.events]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.events[index]

    def __repr__(self) -> str:
        return f"AuditEvents({self.names!r})"

    def named(self, event: str) -> list[dict[str, Any]]:
        """The captured events called ``event``."""
        return [entry for entry in self.events if entry["event"] == event]

    def clear(self) -> None:
        """Forget the events captured so far."""
        self._entries.clear()

    def assert_one(self, event: str, **fields: Any) -> dict[str, Any]:
        """Assert that exactly one ``event`` was emitted, and that it has these field values.

        Values are compared with ``==``, so ``unittest.mock.ANY`` matches anything present.

        Returns:
            The event, for further checks.

        Raises:
            AssertionError: naming what was emitted instead.
        """
        found = self.named(event)
        wanted = " ".join(f"{name}={value!r}" for name, value in fields.items())
        if len(found) != 1:
            raise AssertionError(
                f"expected exactly one {event!r} audit event, got {len(found)}; "
                f"captured: {self._listing()}"
            )
        entry = found[0]
        wrong = [
            f"{name}: wanted {value!r}, got "
            + (repr(entry[name]) if name in entry else "no such field")
            for name, value in fields.items()
            if name not in entry or entry[name] != value
        ]
        if wrong:
            raise AssertionError(
                f"the {event!r} audit event does not have {wanted}: "
                + "; ".join(wrong)
                + f"\n  the event: {_show(entry)}"
            )
        return entry

    def assert_none(self, event: str | None = None) -> None:
        """Assert that no audit event (or none called ``event``) was emitted.

        Raises:
            AssertionError: naming what was emitted.
            ValueError: ``event`` is no audit event's name (``token.revoked``: a revoked
                token is a ``token.rejected``), so the assertion could never fail.
        """
        found = self.events if event is None else self.named(event)
        if event is not None and not found and event not in AUDIT_EVENT_NAMES:
            raise ValueError(
                f"{event!r} is not the name of an audit event, so this assertion cannot fail; "
                f"the names are {', '.join(sorted(AUDIT_EVENT_NAMES))}"
            )
        if found:
            what = "audit events" if event is None else f"{event!r} audit events"
            raise AssertionError(f"expected no {what}; captured: {self._listing()}")

    def _listing(self) -> str:
        events = self.events
        if not events:
            return "no audit event"
        return "".join(f"\n  {_show(entry)}" for entry in events)


@contextmanager
def audit_events() -> Iterator[AuditEvents]:
    """Capture bearerguard's audit events while the block runs.

    Built on ``structlog.testing.capture_logs``: structlog's processors are replaced for the
    duration, process-wide, so events are captured whichever thread emits them (a WSGI
    test client's, a server's). Guards built with their own ``audit_logger`` are not seen.

        with audit_events() as events:
            client.get("/items")
        events.assert_one("token.rejected", reason="missing_token", status=401)
    """
    with capture_logs() as entries:
        yield AuditEvents(entries)
