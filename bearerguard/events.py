"""Security Event Tokens pushed by the identity provider (RFC 8417, RFC 8935).

``SecurityEventReceiver`` is an ASGI app to mount in the API (``Mount("/events",
app=receiver)`` or ``Route("/events", receiver)``). The identity provider POSTs each
Security Event Token (SET) to it; the receiver verifies the SET with the guard's own keys
and turns the events that mean "this user's tokens must stop working" (OpenID CAEP
``session-revoked`` and ``credential-change``, RISC ``account-disabled``, ``account-purged``
and ``credential-compromise``) into subject cut-offs in the revocation store: every token of
that subject issued up to the event is refused from then on, by every instance sharing the
store. A ``session-revoked`` event that names the session (a complex subject with an
``opaque`` ``session``) cuts off its user too, unless the receiver is given
``revoke_sessions=True``: then it cuts off that session only, by the tokens' ``sid`` claim
(and the user's tokens without a ``sid``). Turn that on only when the identity provider's
CAEP session identifier is the ``sid`` its access tokens carry; otherwise the revoked
session's tokens would stay valid.

Answers (RFC 8935 §2.2-§2.4):

- ``202 Accepted``: the SET is valid and has been acted on (or acknowledged: unknown event
  types and subject formats are logged and not acted on). A SET whose ``jti`` was received
  before is acknowledged again and not acted on twice: a transmitter may deliver a SET more
  than once (its 202 lost), and is answered as if it had not been received (RFC 8935 §2).
- ``400`` with ``{"err": ..., "description": ...}``: ``invalid_request`` (not a SET: not a
  compact JWS, wrong ``typ``, missing or ill-typed claims),
  ``invalid_key`` (an algorithm or key this recipient does not accept, ``alg: none``
  included; an unsigned SET, its signature empty, is not a compact JWS:
  ``invalid_request``), ``authentication_failed`` (the signature does not verify),
  ``invalid_issuer``, ``invalid_audience``.
- ``405`` for another method, ``413`` for a body over ``max_body_bytes``, ``415`` for
  another ``Content-Type``: with the same JSON body, ``err`` ``invalid_request``.
- ``503`` with ``Retry-After`` when the keys or the store cannot be had (the ``jti`` is then
  not remembered as received), or for a copy of a SET still being acted on (which may yet
  fail): the transmitter should retry.

Audit events go to the guard's audit logger: ``event.received`` (event types, subjects,
the action taken for each event) and ``event.rejected`` (the error code and reason).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from cachetools import LRUCache
from starlette.types import Receive, Scope, Send

from bearerguard._core.extract import joined_request_ids
from bearerguard._core.refusal import RETRY_AFTER_SECONDS
from bearerguard._core.secevent import (
    CAEP_CREDENTIAL_CHANGE,
    CAEP_SESSION_REVOKED,
    RISC_ACCOUNT_DISABLED,
    RISC_ACCOUNT_PURGED,
    RISC_CREDENTIAL_COMPROMISE,
    SUBJECT_CUTOFF_EVENTS,
    EventPlan,
    SecurityEventError,
    SessionCutoff,
    plan_security_event,
)
from bearerguard._core.times import Instant, check_count
from bearerguard.audit import AuditLog, RequestInfo, _printable
from bearerguard.errors import (
    BadSignatureError,
    ConfigurationError,
    MalformedTokenError,
    ServiceUnavailableError,
    UnknownKeyError,
    UnsupportedAlgorithmError,
)
from bearerguard.guard import BearerGuard

__all__ = [
    "CAEP_CREDENTIAL_CHANGE",
    "CAEP_SESSION_REVOKED",
    "RISC_ACCOUNT_DISABLED",
    "RISC_ACCOUNT_PURGED",
    "RISC_CREDENTIAL_COMPROMISE",
    "SET_MEDIA_TYPE",
    "SUBJECT_CUTOFF_EVENTS",
    "SecurityEventReceiver",
    "SessionRevocationStore",
    "SubjectRevocationStore",
]

SET_MEDIA_TYPE = "application/secevent+jwt"
"""The ``Content-Type`` of a pushed SET (RFC 8935 §2, RFC 8417 §7.2)."""

_MAX_FIELD = 256
_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1


@runtime_checkable
class SubjectRevocationStore(Protocol):
    """A store that can cut off a subject's tokens (``MemoryRevocationStore``,
    ``RedisRevocationStore``)."""

    async def revoke_subject(
        self, sub: str, issued_before: Instant | None = None, *, issuer: str | None = None
    ) -> None:
        """Revoke every token of ``sub`` issued at or before ``issued_before``."""
        ...


@runtime_checkable
class SessionRevocationStore(Protocol):
    """A store that can also cut off one session's tokens, by their ``sid`` claim
    (``MemoryRevocationStore``, ``RedisRevocationStore``); needed by
    ``SecurityEventReceiver(revoke_sessions=True)`` only."""

    async def revoke_session(
        self,
        sid: str,
        issued_before: Instant | None = None,
        *,
        issuer: str | None = None,
        subject: str | None = None,
    ) -> Any:
        """Revoke every token of session ``sid`` issued at or before ``issued_before``, and
        with ``subject`` that subject's tokens without a ``sid``."""
        ...


_SESSIONS_OFF = "session revocation is off"


class _Answer(Exception):  # noqa: N818 - a response to send, raised from deep in the flow
    def __init__(
        self, status: int, err: str, description: str, detail: str, *, retry: bool = False
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.err = err
        self.description = description
        self.detail = detail
        self.retry = retry


def _refused(error: SecurityEventError) -> _Answer:
    return _Answer(400, error.err, error.description, error.detail)


def _unavailable(detail: str) -> _Answer:
    return _Answer(
        503,
        "",
        "Security events cannot be processed right now; retry later.",
        detail,
        retry=True,
    )


def _trim(value: str) -> str:
    # The SET's own text (jti, event types, subjects, session ids) is written as a verified
    # token's claims are (docs/audit-events.md): a control character in it must neither
    # forge nor garble a log line.
    return _printable(value[:_MAX_FIELD])


class SecurityEventReceiver:
    """Receives Security Event Tokens pushed over HTTP (RFC 8935) and acts on them.

    Args:
        guard: the guard of the API; its issuer must have signed the SET, with one of its
            trusted keys and allowed algorithms (the same JWKS, the same algorithm binding,
            ``none`` never), and its clock and leeway apply.
        audience: what the SET's ``aud`` must name: this receiver's identifier in the
            identity provider's stream configuration.
        store: where cut-offs go; the guard's revocation store by default (it must then
            have ``revoke_subject``, and with ``revoke_sessions`` ``revoke_session``).
        events: the event types that cut off their subject (a string is one type); by
            default CAEP ``session-revoked`` and ``credential-change`` and RISC
            ``account-disabled``, ``account-purged`` and ``credential-compromise``.
        revoke_sessions: a ``session-revoked`` event naming a session (an OpenID SSF
            complex subject with an ``opaque`` ``session``, CAEP 1.0 §3.1) cuts off that
            session's tokens only, by their ``sid`` claim, and its user's tokens without a
            ``sid``. Off by default: such an event cuts off its user's every token, and one
            naming no user is acknowledged without action; the audit event says why.
            **Security**: turn it on only when the identity provider's CAEP session
            identifier is the ``sid`` claim of its access tokens (as Keycloak's user session
            id is); where they differ, the revoked session's tokens stay valid.
        max_body_bytes: larger bodies are refused with 413 before being read whole.
        replay_cache_size: how many received ``jti`` values are remembered, so that a SET
            delivered again is acknowledged without being acted on twice.
        audit_logger: a structlog-compatible logger; the guard's audit logger by default.

    Raises:
        ConfigurationError: no usable store (``revoke_sessions`` with a store lacking
            ``revoke_session`` included), an empty audience or event type, a non-bool
            ``revoke_sessions``, or a nonsensical limit.
    """

    def __init__(
        self,
        *,
        guard: BearerGuard,
        audience: str | Sequence[str],
        store: SubjectRevocationStore | None = None,
        events: Iterable[str] = SUBJECT_CUTOFF_EVENTS,
        revoke_sessions: bool = False,
        max_body_bytes: int = 64 * 1024,
        replay_cache_size: int = 10_000,
        audit_logger: Any = None,
    ) -> None:
        if not isinstance(guard, BearerGuard):
            raise ConfigurationError("guard must be a BearerGuard")
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        if not audiences or not all(isinstance(item, str) and item for item in audiences):
            raise ConfigurationError("audience must be a non-empty string or strings")
        chosen = guard.revocation if store is None else store
        if not isinstance(chosen, SubjectRevocationStore):
            raise ConfigurationError(
                f"{type(chosen).__name__} has no revoke_subject: pass a store that has"
            )
        # The string "false" would turn session revocation on: a bool, or nothing.
        if not isinstance(revoke_sessions, bool):
            raise ConfigurationError("revoke_sessions must be True or False")
        sessions: SessionRevocationStore | None = None
        if revoke_sessions:
            # An explicit opt-in that cannot work is refused, not quietly downgraded.
            if not isinstance(chosen, SessionRevocationStore):
                raise ConfigurationError(
                    f"{type(chosen).__name__} has no revoke_session, which"
                    " revoke_sessions=True needs: pass a store that has"
                )
            sessions = chosen
        # One string is one event type, not the set of its characters (which no event
        # type would match: every SET acknowledged, none acted on).
        types = (events,) if isinstance(events, str) else tuple(events)
        if not all(isinstance(item, str) and item for item in types):
            raise ConfigurationError("events must be event type URIs (strings)")
        # A NaN or infinite max_body_bytes read bodies of any size.
        max_body_bytes = check_count("max_body_bytes", max_body_bytes, least=512)
        replay_cache_size = check_count("replay_cache_size", replay_cache_size)
        self.guard = guard
        self.audiences = frozenset(audiences)
        self.store: SubjectRevocationStore = chosen
        self.events = frozenset(types)
        self.revoke_sessions = revoke_sessions
        self._sessions = sessions
        self.max_body_bytes = max_body_bytes
        self._seen: LRUCache[str, bool] = LRUCache(maxsize=replay_cache_size)
        # The guard's own audit logger, so that one configuration covers every event (AuditLog
        # has no public accessor for it yet, hence the private attribute).
        self._audit = audit_logger if audit_logger is not None else guard.audit.logger
        # Whose failures a lost event adds to (bounded reports, the lost-events counter):
        # the guard's, unless the receiver has a logger of its own, failing on its own.
        self._reports = (
            guard.audit
            if audit_logger is None
            else AuditLog(logger=audit_logger, metrics=guard.metrics)
        )

    def __repr__(self) -> str:
        audiences = sorted(self.audiences)
        return f"SecurityEventReceiver(issuer={self.guard.issuer!r}, audience={audiences!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        request = _request_fields(scope)
        if kind != "http":
            # A refusal like any other, one event (status: the 405 a GET gets; the
            # handshake itself is closed, as the middleware closes one it refuses).
            self._rejected(request, 405, "invalid_request", "websocket handshake, not a POST")
            await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
            return
        try:
            plan = await self._receive(scope, receive)
            applied = await self._apply(plan)  # None: received before, not acted on again
        except _Answer as answer:
            self._rejected(request, answer.status, answer.err, answer.detail)
            await _respond(send, answer)
            return
        except _Disconnected:
            # Nothing to answer (status null), but the SET was not taken: still one event.
            self._rejected(
                request, None, "invalid_request", "client disconnected before the SET was read"
            )
            return
        self._received(plan, applied, request)
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"cache-control", b"no-store"), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    # -- the flow -------------------------------------------------------------------------

    async def _receive(self, scope: Scope, receive: Receive) -> EventPlan:
        if scope.get("method") != "POST":
            raise _Answer(405, "invalid_request", "Security events are POSTed.", "method not POST")
        content_type, length = _headers(scope)
        if content_type != SET_MEDIA_TYPE:
            raise _Answer(
                415,
                "invalid_request",
                f"The Content-Type must be {SET_MEDIA_TYPE}.",
                f"content-type {content_type[:64]!r}",
            )
        if length is not None and length > self.max_body_bytes:
            raise _too_large(length)
        body = await self._body(receive)
        try:
            text = body.decode("ascii").strip()
        except UnicodeDecodeError:
            raise _refused(SecurityEventError("invalid_request", "body is not ASCII")) from None
        header, claims = await self._verify(text)
        guard = self.guard
        try:
            plan = plan_security_event(
                header,
                claims,
                issuer=guard.issuer,
                audiences=self.audiences,
                now=guard.clock(),
                leeway=guard.leeway,
                cutoff_events=self.events,
                revoke_sessions=self.revoke_sessions,
            )
        except SecurityEventError as error:
            raise _refused(error) from None
        return plan

    async def _body(self, receive: Receive) -> bytes:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                raise _too_large(len(body))
            if not message.get("more_body", False):
                return bytes(body)

    async def _verify(self, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            return await self.guard.verify_signed(text)
        except MalformedTokenError as exc:
            raise _refused(SecurityEventError("invalid_request", str(exc))) from None
        except (UnsupportedAlgorithmError, UnknownKeyError) as exc:
            raise _refused(SecurityEventError("invalid_key", str(exc))) from None
        except BadSignatureError as exc:
            raise _refused(SecurityEventError("authentication_failed", str(exc))) from None
        except ServiceUnavailableError as exc:
            raise _unavailable(f"keys unavailable: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any other refusal of the JWS: not a SET we take
            raise _refused(
                SecurityEventError("invalid_request", f"{type(exc).__name__}: {exc}"[:200])
            ) from None

    async def _apply(self, plan: EventPlan) -> list[dict[str, Any]] | None:
        """Act on the plan; returns the audit actions of its session cut-offs, or ``None``
        for a SET already acted on."""
        received = self._seen.get(plan.jti)
        if received is False:
            # A copy of a SET still being acted on: the first delivery may yet fail (and its
            # jti be forgotten). Asked to retry, it is acted on then, or acknowledged as
            # received.
            raise _unavailable(f"jti {plan.jti[:64]!r} is being acted on")
        if received:
            # RFC 8935 §2: the transmitter may send a SET again, whatever it was answered,
            # and the recipient answers as if it had not received it: 202, not acted on twice.
            return None
        # Marked in flight before the awaits, so a copy arriving meanwhile is not acted on
        # twice; received once acted on, and forgotten if the store fails, so the
        # transmitter's retry is acted on.
        self._seen[plan.jti] = False
        try:
            for cutoff in plan.cutoffs:
                await self.store.revoke_subject(
                    cutoff.subject, cutoff.issued_before, issuer=self.guard.issuer
                )
            actions = [
                action for cutoff in plan.sessions for action in await self._revoke_session(cutoff)
            ]
        except BaseException as exc:
            # Whatever broke (the request cancelled too), the SET was not acted on.
            self._seen.pop(plan.jti, None)
            if not isinstance(exc, Exception):
                raise
            raise _unavailable(f"store failed: {type(exc).__name__}: {exc}"[:200]) from None
        self._seen[plan.jti] = True
        return actions

    async def _revoke_session(self, cutoff: SessionCutoff) -> list[dict[str, Any]]:
        issuer, at = self.guard.issuer, cutoff.issued_before
        event = _trim(cutoff.event_type)
        store = self._sessions
        if store is None:
            # Not asked to trust that the event's session id is the tokens' sid: the user's
            # every session goes, as for any other cut-off event.
            for subject in cutoff.subjects:
                await self.store.revoke_subject(subject, at, issuer=issuer)
            if not cutoff.subjects:
                return [{"event": event, "action": "ignored", "why": f"{_SESSIONS_OFF}, no user"}]
            return [
                {
                    "event": event,
                    "action": "revoke_subject",
                    "sub": _trim(subject),
                    "issued_before": at,
                    "why": _SESSIONS_OFF,
                }
                for subject in cutoff.subjects
            ]
        # Each user's tokens without a sid go with the session (the same entry each time).
        users: tuple[str | None, ...] = cutoff.subjects or (None,)
        for user in users:
            await store.revoke_session(cutoff.session, at, issuer=issuer, subject=user)
        return [
            {
                "event": event,
                "action": "revoke_session",
                "sid": _trim(cutoff.session),
                "subjects": [_trim(subject) for subject in cutoff.subjects],
                "issued_before": at,
            }
        ]

    # -- audit ----------------------------------------------------------------------------

    def _received(
        self, plan: EventPlan, sessions: list[dict[str, Any]] | None, request: dict[str, Any]
    ) -> None:
        if sessions is None:  # received before: acknowledged, nothing done this time
            self._log_received(
                plan,
                [
                    {"event": _trim(event), "action": "ignored", "why": "already received"}
                    for event in plan.event_types
                ],
                set(),
                request,
            )
            return
        actions: list[dict[str, Any]] = [
            {
                "event": _trim(cutoff.event_type),
                "action": "revoke_subject",
                "sub": _trim(cutoff.subject),
                "issued_before": cutoff.issued_before,
            }
            for cutoff in plan.cutoffs
        ]
        actions += sessions
        # The subjects whose every token was cut off (a session's user only when session
        # revocation is off).
        cut_off = {_trim(cutoff.subject) for cutoff in plan.cutoffs}
        cut_off.update(action["sub"] for action in sessions if action["action"] == "revoke_subject")
        actions += [
            {"event": _trim(ignored.event_type), "action": "ignored", "why": ignored.why}
            for ignored in plan.ignored
        ]
        self._log_received(plan, actions, cut_off, request)

    def _log_received(
        self,
        plan: EventPlan,
        actions: list[dict[str, Any]],
        cut_off: set[str],
        request: dict[str, Any],
    ) -> None:
        try:
            self._audit.info(
                "event.received",
                outcome="allow",  # docs/audit-events.md: allow, deny or error, as every event
                status=202,
                iss=self.guard.issuer,
                jti=_trim(plan.jti),
                event_types=[_trim(event) for event in plan.event_types],
                subjects=sorted(cut_off),
                actions=actions,
                **request,
            )
        except Exception as exc:  # noqa: BLE001 - the SET was acted on: still acknowledged
            self._reports.lost("event.received", exc)
        else:
            if self._reports.sink_failing:
                self._reports.taken()

    def _rejected(self, request: dict[str, Any], status: int | None, err: str, reason: str) -> None:
        failed = status is not None and status >= 500
        log = self._audit.error if failed else self._audit.warning
        try:
            log(
                "event.rejected",
                outcome="error" if failed else "deny",
                status=status,
                err=err or None,
                reason=reason,
                **request,
            )
        except Exception as exc:  # noqa: BLE001 - the refusal is answered all the same
            self._reports.lost("event.rejected", exc)
        else:
            if self._reports.sink_failing:
                self._reports.taken()


class _Disconnected(Exception):  # noqa: N818 - the client went away: nothing to answer
    pass


def _too_large(size: int) -> _Answer:
    return _Answer(413, "invalid_request", "The SET is too large.", f"body of {size} bytes")


def _headers(scope: Scope) -> tuple[str, int | None]:
    content_type = ""
    length: int | None = None
    for name, value in scope.get("headers", []):
        # ASGI says bytes; a bytearray or memoryview value is read as the bytes it holds.
        if name == b"content-type":
            content_type = bytes(value).decode("latin-1").partition(";")[0].strip().lower()
        elif name == b"content-length":
            # RFC 9110 §8.6: 1*DIGIT, around which §5.5 strips white space; int() would
            # also take a sign and underscores.
            digits = bytes(value).strip(b" \t")
            if not digits.isdigit():  # ASCII digits only, and at least one
                raise _Answer(
                    400, "invalid_request", "Content-Length is invalid.", "bad content-length"
                )
            length = int(digits)
    return content_type, length


def _request_fields(scope: Scope) -> dict[str, Any]:
    client = scope.get("client")
    # Repeated: one comma-joined value (RFC 9110 §5.3), as the middlewares record it.
    request_id = joined_request_ids(scope.get("headers", [])).decode("latin-1") or None
    # Truncated and escaped as every other audit event's: a control character in the
    # (percent-decoded) path or the header must not forge or garble a log line.
    return RequestInfo(
        # A websocket scope has no method: WEBSOCKET, as the middleware records a handshake.
        str(scope.get("method", "WEBSOCKET"))[:16],
        str(scope.get("path", "")),
        (client[0] or None) if client else None,  # a host of "": no address, as the middleware
        request_id,
    ).fields()


async def _respond(send: Send, answer: _Answer) -> None:
    document: dict[str, str] = {"description": answer.description}
    if answer.err:
        document = {"err": answer.err, **document}
    body = json.dumps(document).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
    ]
    if answer.status == 405:
        headers.append((b"allow", b"POST"))
    if answer.retry:
        headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    # Served on its own (not mounted), the receiver still completes the lifespan protocol.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
