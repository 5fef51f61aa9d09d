"""The authentication outcome of the current request, for decorators and accessors."""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from bearerguard._core.refusal import Refusal, render_refusal
from bearerguard.audit import RequestInfo
from bearerguard.errors import AuthError
from bearerguard.token import AccessToken

if TYPE_CHECKING:
    from bearerguard.guard import BearerGuard
    from bearerguard.issuers import TrustedIssuers

__all__ = [
    "SCOPE_KEY",
    "AsyncBodyWithAuth",
    "BodyWithAuth",
    "Refused",
    "RequestAuth",
    "already_let_in",
    "current_auth",
    "presented_with",
    "refusal_for",
]

SCOPE_KEY = "bearerguard"
"""The ASGI scope key (and WSGI environ key) under which ``RequestAuth`` is stored."""


class RequestAuth(RequestInfo):
    """What the middleware decided for this request, with what the audit log records of it.

    One plain slotted object per request: it is built on the hot path. The ASGI cache hit
    sets its slots without calling ``__init__``: a slot added here is set there too.
    """

    __slots__ = ("guard", "respond", "started", "token", "websocket")

    def __init__(  # noqa: PLR0917 - built per request: positional, no keyword matching
        self,
        guard: BearerGuard | TrustedIssuers,
        token: AccessToken | None,
        started: float,
        method: str,
        path: str,
        client: str | None,
        request_id: str | None,
        respond: Callable[[Refusal], Any],
        *,
        websocket: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.client = client
        self.request_id = request_id
        self.guard = guard
        self.token = token
        self.started = started
        self.respond = respond
        """Turns a refusal into the response type of the framework serving the request."""
        self.websocket = websocket


current_auth: ContextVar[RequestAuth | None] = ContextVar("bearerguard_auth", default=None)


# A WSGI body, and a Django streaming one, is iterated after the middleware has returned
# and undone its current_auth.set(). Leaving it set until close() would rely on every server
# calling close() (PEP 3333 asks it to; one that does not would hand the next request on that
# thread this one's token) and on close() running in the same context. Instead each step sets
# it and resets it at once, in the caller's context: nothing is left set, however the body
# ends.


_NOT_STARTED: Iterator[bytes] = iter(())


class BodyWithAuth:
    """A response body iterated, and closed, with ``current_auth`` set to the request's."""

    __slots__ = ("_auth", "_body", "_iterator")

    def __init__(self, body: Iterable[bytes], auth: RequestAuth) -> None:
        self._body = body
        self._auth = auth
        self._iterator: Iterator[bytes] = _NOT_STARTED

    def __iter__(self) -> Iterator[bytes]:
        # iter(body) when the server first asks, not in the middleware: if it raises, the
        # server still holds this body and closes it (PEP 3333), as it would the app's own.
        if self._iterator is _NOT_STARTED:
            reset = current_auth.set(self._auth)
            try:
                self._iterator = iter(self._body)
            finally:
                current_auth.reset(reset)
        return self

    def __next__(self) -> bytes:
        if self._iterator is _NOT_STARTED:  # next() without iter(): not a server's way
            self.__iter__()
        reset = current_auth.set(self._auth)
        try:
            return next(self._iterator)
        finally:
            current_auth.reset(reset)

    def close(self) -> None:
        """Close the body, as a WSGI middleware must (PEP 3333)."""
        close = getattr(self._body, "close", None)
        if callable(close):
            reset = current_auth.set(self._auth)
            try:
                close()
            finally:
                current_auth.reset(reset)


class AsyncBodyWithAuth:
    """An asynchronous response body iterated with ``current_auth`` set to the request's.

    Attributes:
        loop: the event loop it was first iterated in (``None`` before): where it is
            closed (``aclose``) from another thread.
    """

    __slots__ = ("_auth", "_iterator", "loop")

    def __init__(self, body: AsyncIterable[bytes], auth: RequestAuth) -> None:
        self._auth = auth
        self._iterator: AsyncIterator[bytes] = aiter(body)
        self.loop: asyncio.AbstractEventLoop | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        reset = current_auth.set(self._auth)
        try:
            return await anext(self._iterator)
        finally:
            current_auth.reset(reset)

    async def aclose(self) -> None:
        """Close the body (an async generator's ``aclose()``), its clean-up run with
        ``current_auth`` set; nothing to do for one that has ended."""
        close = getattr(self._iterator, "aclose", None)
        if callable(close):
            reset = current_auth.set(self._auth)
            try:
                await close()
            finally:
                current_auth.reset(reset)


def already_let_in(store: Mapping[str, Any], guard: object) -> bool:
    """Whether a middleware with ``guard`` further out let this request in with a token.

    ``store`` is the ASGI scope or the WSGI environ. An app mounted with its own middleware
    behind another with the same guard meets the request decided: the decision stands,
    audited once, and a DPoP proof is not checked (and refused as replayed) a second time.
    A request let in without a token is decided again: the inner ``public_paths`` may be
    stricter.
    """
    prior = store.get(SCOPE_KEY)
    return isinstance(prior, RequestAuth) and prior.token is not None and decided_by(prior, guard)


def decided_by(prior: RequestAuth, guard: object) -> bool:
    """Whether ``prior`` is ``guard``'s verdict: its own, or one made by the very guard that
    ``guard`` would hand the token to. A ``TrustedIssuers``, on either side, hands a token to
    the guard of its issuer, which verified it, DPoP proof and all: verified again, the proof
    was refused as replayed (RFC 9449 §11.1)."""
    if prior.guard is guard:
        return True
    token = prior.token
    if token is None:
        return False
    verifier = _verifier(prior.guard, token)
    return verifier is not None and verifier is _verifier(guard, token)


def _verifier(guard: object, token: AccessToken) -> object:
    """The guard that verifies ``token`` for ``guard``: ``guard`` itself, or the one a
    ``TrustedIssuers`` hands it to (``verifier_of``)."""
    routed = getattr(guard, "verifier_of", None)
    return guard if routed is None else routed(token)


def presented_with(guard: BearerGuard | TrustedIssuers, token: AccessToken | None) -> str:
    """How ``guard`` let ``token`` in, as the audit's ``binding`` names it, for a check made
    after authentication, which knows the token but not the scheme.

    A DPoP-bound token was presented with DPoP: as Bearer it would have been refused (RFC
    9449 §7.2); a certificate-bound one was checked against the client certificate (RFC
    8705 §3), as ``token.accepted`` records it.
    """
    cnf = None if token is None else token.claims.get("cnf")
    if not isinstance(cnf, Mapping):
        return "bearer"
    if guard.dpop is not None and "jkt" in cnf:
        return "dpop"
    if guard.mtls is not None and "x5t#S256" in cnf:
        return "mtls"
    return "bearer"


def refusal_for(
    guard: BearerGuard | TrustedIssuers, error: AuthError, scope: Sequence[str] = ()
) -> Refusal:
    """The RFC 6750 answer to ``error`` under ``guard``'s settings, for every integration.

    Adds ``resource_metadata`` when the guard has a resource (RFC 9728 §5.1), and ``scope``
    as a hint to 401 challenges (RFC 6750 §3): the route's scopes when known, else the
    resource's ``challenge_scopes`` (the MCP authorization specification's scope selection).
    """
    resource = guard.protected_resource
    if not scope and resource is not None:
        scope = resource.challenge_scopes
    dpop = guard.dpop
    # A refusal made after authentication says nothing of the scheme: the request's token
    # does. authenticate's own refusals carry their token, framed in the client's scheme.
    if (
        dpop is not None
        and error.scheme == "bearer"
        and error.token is None
        and presented_with(guard, getattr(current_auth.get(), "token", None)) == "dpop"
    ):
        error.sent_with("dpop")
    return render_refusal(
        error,
        guard.realm,
        resource_metadata=None if resource is None else resource.metadata_url,
        scope=scope,
        dpop_algs=None if dpop is None else dpop.algs,
        dpop_only=dpop is not None and dpop.mode == "required",
    )


class Refused(Exception):  # noqa: N818 - a signal, like StopIteration: not an error to report
    """Raised inside an app to answer with a refusal that has already been audited.

    The ASGI middleware catches it and sends ``refusal``; it is how a check that runs as a
    FastAPI dependency (before the body is validated) answers without an exception handler.
    """

    def __init__(self, error: AuthError, refusal: Refusal) -> None:
        super().__init__(error.reason)
        self.error = error
        self.refusal = refusal
