"""Security Event Tokens (RFC 8417) judged, and turned into subject and session cut-offs.

Pure code: a SET's verified header and claims come in, with ``now``; out comes either the
RFC 8935 §2.4 error to answer with, or the plan: which subjects and sessions to cut off as
of when, and which events are acknowledged without action (and why). Receiving, verifying
signatures, de-duplicating and applying the plan live in ``bearerguard.events``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from bearerguard._core.times import is_numeric_date

__all__ = [
    "CAEP_CREDENTIAL_CHANGE",
    "CAEP_SESSION_REVOKED",
    "RISC_ACCOUNT_DISABLED",
    "RISC_ACCOUNT_PURGED",
    "RISC_CREDENTIAL_COMPROMISE",
    "SUBJECT_CUTOFF_EVENTS",
    "EventPlan",
    "IgnoredEvent",
    "SecurityEventError",
    "SessionCutoff",
    "SubjectCutoff",
    "plan_security_event",
]

_CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
_RISC = "https://schemas.openid.net/secevent/risc/event-type/"
CAEP_SESSION_REVOKED = _CAEP + "session-revoked"
CAEP_CREDENTIAL_CHANGE = _CAEP + "credential-change"
RISC_ACCOUNT_DISABLED = _RISC + "account-disabled"
RISC_ACCOUNT_PURGED = _RISC + "account-purged"
RISC_CREDENTIAL_COMPROMISE = _RISC + "credential-compromise"
SUBJECT_CUTOFF_EVENTS: frozenset[str] = frozenset(
    {
        CAEP_SESSION_REVOKED,
        CAEP_CREDENTIAL_CHANGE,
        RISC_ACCOUNT_DISABLED,
        RISC_ACCOUNT_PURGED,
        RISC_CREDENTIAL_COMPROMISE,
    }
)
"""Event types that cut off every token of their subject issued up to the event."""

# RFC 8417 §2.3: "secevent+jwt", with or without the "application/" prefix (RFC 7515
# §4.1.9), compared case-insensitively as media types are.
_SET_TYPES = frozenset({"secevent+jwt", "application/secevent+jwt"})
_MAX_JTI = 256
# The members of an OpenID SSF complex subject.
_COMPLEX_MEMBERS = frozenset(
    {"user", "device", "session", "application", "tenant", "org_unit", "group"}
)

_DESCRIPTIONS = {
    "invalid_request": "The request is not an acceptable Security Event Token.",
    "invalid_key": "The SET is not signed with a key this recipient accepts.",
    "invalid_issuer": "The SET issuer is not trusted by this recipient.",
    "invalid_audience": "The SET audience does not name this recipient.",
    "authentication_failed": "The SET signature does not verify.",
    "access_denied": "The SET transmitter may not send this SET to this recipient.",
}


class SecurityEventError(Exception):
    """A SET refused with an RFC 8935 §2.4 error code.

    Args:
        err: the error code.
        detail: what exactly was wrong, for the audit log only.
        description: the sentence sent back; a fixed one per code by default.
    """

    def __init__(self, err: str, detail: str, description: str | None = None) -> None:
        super().__init__(detail)
        self.err = err
        self.detail = detail
        self.description = description or _DESCRIPTIONS[err]


@dataclass(frozen=True, slots=True)
class SubjectCutoff:
    """Refuse every token of ``subject`` issued at or before ``issued_before``."""

    event_type: str
    subject: str
    issued_before: float


@dataclass(frozen=True, slots=True)
class SessionCutoff:
    """Refuse every token whose ``sid`` is ``session`` issued at or before ``issued_before``;
    and the tokens of ``subjects`` (the session's user) that carry no ``sid``."""

    event_type: str
    session: str
    subjects: tuple[str, ...]
    issued_before: float


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """An event acknowledged without action, and why."""

    event_type: str
    why: str


@dataclass(frozen=True, slots=True)
class EventPlan:
    """What one valid SET asks for."""

    jti: str
    issued_at: float
    event_types: tuple[str, ...]
    cutoffs: tuple[SubjectCutoff, ...]
    ignored: tuple[IgnoredEvent, ...]
    sessions: tuple[SessionCutoff, ...] = ()


def _invalid(detail: str) -> SecurityEventError:
    return SecurityEventError("invalid_request", detail)


def _numeric_date(value: Any, name: str) -> float:
    if not is_numeric_date(value):
        raise _invalid(f"{name} is not a NumericDate in range")
    return float(value)


@dataclass(frozen=True, slots=True)
class _Unsupported:
    """A well-formed subject this recipient cannot map to a token's ``sub``: acknowledged."""

    why: str


def _is_complex(identifier: dict[str, Any]) -> bool:
    """Whether a subject identifier is an OpenID SSF complex subject: ``"format":
    "complex"`` as SSF 1.0 (final) spells it, or, as its drafts did, no format and one of
    the complex members (``user``, ``session``, ...)."""
    fmt = identifier.get("format", identifier.get("subject_type"))
    return fmt == "complex" or (fmt is None and not _COMPLEX_MEMBERS.isdisjoint(identifier))


def _subject_of(
    identifier: Any, issuer: str, *, complex_ok: bool = True, aliases_ok: bool = True
) -> tuple[str, ...] | _Unsupported:
    """The ``sub`` values an RFC 9493 subject identifier names (``iss_sub`` or ``opaque``;
    every one of them for ``aliases``), or why it names none we act on (another issuer's
    ``iss_sub``, another format).

    Raises:
        SecurityEventError: the identifier is malformed.
    """
    if not isinstance(identifier, dict):
        raise _invalid("a subject identifier is not a JSON object")
    # "format" (RFC 9493 §3); "subject_type" in the RISC and CAEP drafts before it, whose
    # subject identifier drafts (before draft-ietf-secevent-subject-identifiers-05) spelled
    # iss_sub "iss-sub", as Google's Cross-Account Protection still sends it.
    fmt = identifier.get("format", identifier.get("subject_type"))
    if fmt == "iss-sub" and "format" not in identifier:
        fmt = "iss_sub"
    if complex_ok and _is_complex(identifier):
        # A complex subject (OpenID SSF 1.0): act on its user, if it names one. Each
        # member is a Subject Identifier, so the user may be an aliases one.
        if "user" in identifier:
            return _subject_of(identifier["user"], issuer, complex_ok=False)
        return _Unsupported("a complex subject without a user")
    if not isinstance(fmt, str):
        raise _invalid("a subject identifier has no format")
    if fmt == "iss_sub":  # RFC 9493 §3.2.5
        iss, sub = identifier.get("iss"), identifier.get("sub")
        if not (isinstance(iss, str) and isinstance(sub, str) and sub):
            raise _invalid("an iss_sub identifier lacks iss or sub")
        if iss != issuer:
            return _Unsupported("an iss_sub identifier of another issuer")
        return (sub,)
    if fmt == "opaque":  # RFC 9493 §3.2.4: the id the issuer uses, taken as the token's sub
        value = identifier.get("id")
        if not (isinstance(value, str) and value):
            raise _invalid("an opaque identifier lacks id")
        return (value,)
    if fmt == "aliases" and aliases_ok:
        # RFC 9493 §3.2.7: every identifier names the same subject, and which of them is the
        # token's sub is not known (an opaque id may be another one): cut off each of them.
        aliases = identifier.get("identifiers")
        if not (isinstance(aliases, list) and aliases):
            raise _invalid("an aliases identifier lacks identifiers")
        subjects: list[str] = []
        for alias in aliases:
            # RFC 9493 §3.2.7: an aliases identifier never holds another one.
            found = _subject_of(alias, issuer, complex_ok=False, aliases_ok=False)
            if not isinstance(found, _Unsupported):
                subjects += [sub for sub in found if sub not in subjects]
        return tuple(subjects) or _Unsupported("no supported identifier among aliases")
    return _Unsupported(f"subject format {fmt[:64]!r} is not supported")


def _session_of(
    identifier: Any, issuer: str, *, strict: bool
) -> tuple[str, tuple[str, ...]] | None:
    """The session a CAEP ``session-revoked`` subject names, with its user's ``sub`` values,
    or ``None`` when it names no session this recipient can match to a token's ``sid`` (or,
    not ``strict``, a malformed one: the session is then not used, its user is).

    Only a complex subject (OpenID SSF 1.0) has a ``session`` member; CAEP 1.0 §3.1
    gives it as an ``opaque`` identifier whose ``id`` is the session identifier, the value
    the identity provider puts in its tokens' ``sid`` claim.

    Raises:
        SecurityEventError: the session identifier is malformed.
    """
    if not (isinstance(identifier, dict) and _is_complex(identifier)):
        return None
    session = identifier.get("session")
    if not isinstance(session, dict) or session.get("format") != "opaque":
        return None
    sid = session.get("id")
    if not (isinstance(sid, str) and sid):
        if not strict:
            return None
        raise _invalid("an opaque session identifier lacks id")
    users: tuple[str, ...] | _Unsupported = ()
    if "user" in identifier:
        users = _subject_of(identifier["user"], issuer, complex_ok=False)
    return sid, () if isinstance(users, _Unsupported) else users


def _check_envelope(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audiences: Collection[str],
    now: float,
    leeway: float,
) -> tuple[str, float, dict[str, Any]]:
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in _SET_TYPES:
        # RFC 8417 §2.3 explicit typing keeps an access token or ID token from being
        # accepted as a SET (and the reverse, RFC 8725 §3.11).
        raise _invalid(f"typ is {str(typ)[:64]!r}, not secevent+jwt")
    iss = claims.get("iss")
    if iss != issuer:
        raise SecurityEventError("invalid_issuer", f"iss {str(iss)[:200]!r} is not trusted")
    aud = claims.get("aud")
    named = [aud] if isinstance(aud, str) else aud
    if not isinstance(named, list) or not any(
        isinstance(item, str) and item in audiences for item in named
    ):
        raise SecurityEventError("invalid_audience", "aud does not name this recipient")
    if "iat" not in claims:
        raise _invalid("iat is required")
    iat = _numeric_date(claims["iat"], "iat")
    if iat > now + leeway:
        raise _invalid(f"iat is {iat - now:.0f}s in the future")
    if "exp" in claims and now >= _numeric_date(claims["exp"], "exp") + leeway:
        raise _invalid("the SET has expired")
    # RFC 7519 §4.1.5: a JWT is not accepted for processing before its nbf, when it has one.
    if "nbf" in claims and now + leeway < _numeric_date(claims["nbf"], "nbf"):
        raise _invalid("the SET is not yet valid")
    jti = claims.get("jti")
    if not (isinstance(jti, str) and 0 < len(jti) <= _MAX_JTI):
        raise _invalid("jti is missing, not a string or too long")
    events = claims.get("events")
    if not (isinstance(events, dict) and events):
        raise _invalid("events is missing or not a non-empty object")
    for payload in events.values():
        if not isinstance(payload, dict):
            raise _invalid("an event payload is not a JSON object")
    return jti, iat, events


def plan_security_event(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audiences: Collection[str],
    now: float,
    leeway: float,
    cutoff_events: Collection[str] = SUBJECT_CUTOFF_EVENTS,
    revoke_sessions: bool = False,
) -> EventPlan:
    """Validate a signature-verified SET and decide what it asks for.

    The SET must be explicitly typed ``secevent+jwt`` (RFC 8417 §2.3), come from
    ``issuer``, name one of ``audiences``, carry ``iat`` (not in the future beyond
    ``leeway``), a ``jti`` and a non-empty ``events`` object of objects (RFC 8417 §2.2). A
    SET needs no ``exp`` nor ``nbf``; one that has them must not have expired, nor be
    before its ``nbf`` (RFC 7519 §4.1.4, §4.1.5).

    Each event of a type in ``cutoff_events`` becomes a ``SubjectCutoff`` for its subject as
    of its ``event_timestamp`` (CAEP), else the SET's ``iat``. The subject is the event's
    ``subject`` member (RISC and CAEP drafts), else the SET's ``sub_id`` claim (RFC 9493
    §4), else its ``sub`` claim (also when ``sub_id`` is not understood, §4.1);
    identifiers of format ``iss_sub`` (of ``issuer`` only),
    ``opaque``, ``aliases`` (each of its identifiers of those formats is cut off), and
    complex subjects with a ``user`` are understood. Other event types and subject formats
    are acknowledged, not acted on.

    A CAEP ``session-revoked`` event whose subject is a complex subject with an ``opaque``
    ``session`` becomes a ``SessionCutoff`` instead: that session's tokens (by ``sid``), and
    the tokens of its ``user`` (if named; else, for a ``sub_id``, the SET's ``sub``, RFC 9493
    §4.1) that carry no ``sid``. A malformed session identifier is an error only with
    ``revoke_sessions``; without it the receiver does not use the session, and the event cuts
    off its user.

    Raises:
        SecurityEventError: the RFC 8935 §2.4 code to answer with.
    """
    jti, iat, events = _check_envelope(
        header, claims, issuer=issuer, audiences=audiences, now=now, leeway=leeway
    )
    sub_id = claims.get("sub_id")
    sub = claims.get("sub")
    cutoffs: list[SubjectCutoff] = []
    sessions: list[SessionCutoff] = []
    ignored: list[IgnoredEvent] = []
    for event_type, payload in events.items():
        if event_type not in cutoff_events:
            ignored.append(IgnoredEvent(event_type, "event type not acted on"))
            continue
        at = iat
        if "event_timestamp" in payload:
            at = _numeric_date(payload["event_timestamp"], "event_timestamp")
            if at > now + leeway:
                raise _invalid("event_timestamp is in the future")
        subjects: tuple[str, ...] | _Unsupported
        named = sub if isinstance(sub, str) and sub else None
        if event_type == CAEP_SESSION_REVOKED:
            session = _session_of(payload.get("subject", sub_id), issuer, strict=revoke_sessions)
            if session is not None:
                sid, users = session
                if not users and "subject" not in payload and named is not None:
                    # RFC 9493 §4.1: sub names the principal sub_id does, the session's user
                    # (as for a sub_id naming no session it is the subject).
                    users = (named,)
                sessions.append(SessionCutoff(event_type, sid, users, at))
                continue
        if "subject" in payload:
            subjects = _subject_of(payload["subject"], issuer)
        elif sub_id is not None:
            subjects = _subject_of(sub_id, issuer)
            if isinstance(subjects, _Unsupported) and named is not None:
                # RFC 9493 §4.1: sub and sub_id name the same principal; a sub_id of a format
                # not understood falls back to sub.
                subjects = (named,)
        elif named is not None:
            subjects = (named,)  # RFC 8417 §2.2: the SET's own subject, in the issuer's namespace
        else:
            raise _invalid(f"no subject for {event_type[:200]!r}")
        if isinstance(subjects, _Unsupported):
            ignored.append(IgnoredEvent(event_type, subjects.why))
        else:
            cutoffs += [SubjectCutoff(event_type, subject, at) for subject in subjects]
    return EventPlan(jti, iat, tuple(events), tuple(cutoffs), tuple(ignored), tuple(sessions))
