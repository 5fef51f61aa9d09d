"""Live revocations held in this process, and the rules that decide what they revoke.

Shared by ``MemoryRevocationStore`` (the table is the store) and ``RedisRevocationStore``
(the table is the mirror of Redis), so both apply the same rules.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Literal

from bearerguard._fork import reset_after_fork
from bearerguard.token import AccessToken

__all__ = ["DEFAULT_EXPIRY_GRACE", "Entry", "Kind", "RevocationTable", "check_target"]

DEFAULT_EXPIRY_GRACE = 300.0
"""Seconds a revoked token's entry outlives its ``exp``: past any sensible leeway."""

Kind = Literal["t", "s", "c", "n", "u"]
"""A revoked token, a subject cut-off, a client cut-off, a session cut-off (on ``sid``), or
the cut-off of a subject's tokens that carry no ``sid`` (beside a session cut-off)."""
_Key = tuple[str | None, str]
_versions = itertools.count(1)  # shared by every table: a version never repeats


def check_target(name: object, issuer: object) -> None:
    """Refuse what no token's ``jti``, ``sub``, ``client_id`` or ``sid`` (or ``iss``) can equal.

    The claims are non-empty JSON strings (RFC 7519 §4.1.1, §4.1.2, §4.1.7; ``sid``: OpenID
    Connect Front-Channel Logout 1.0 §3), and a guard's issuer is a URL: an entry under
    ``b"j1"``, ``42`` or ``""`` would be held, and reported held, yet never match a token.

    Raises:
        TypeError: ``name`` is not a non-empty string, or ``issuer`` neither a non-empty
            string nor None (every issuer).
    """
    if not isinstance(name, str) or not name:
        raise TypeError("the jti, sub, client_id or sid must be a non-empty string")
    if issuer is not None and (not isinstance(issuer, str) or not issuer):
        raise TypeError("issuer must be a non-empty string or None")


@dataclass(frozen=True, slots=True)
class Entry:
    """One revocation as stored: a token (``cutoff`` is ``None``) or a cut-off."""

    kind: Kind
    issuer: str | None
    name: str
    until: float
    cutoff: float | None
    reason: str | None
    updated_at: float


class RevocationTable:
    """Live revocations held in this process; the same rules as ``MemoryRevocationStore``.

    Reads take no lock (single dictionary lookups); writes merge under a lock so that two
    writers can never leave the weaker of two entries behind.
    """

    # __weakref__: bearerguard._fork holds each table weakly.
    __slots__ = (
        "__weakref__",
        "_lock",
        "clients",
        "sessionless",
        "sessions",
        "subjects",
        "tokens",
        "version",
    )

    def __init__(self) -> None:
        self.tokens: dict[_Key, float] = {}
        # (cutoff, until)
        self.subjects: dict[_Key, tuple[float, float]] = {}
        self.clients: dict[_Key, tuple[float, float]] = {}
        # Keyed on (iss, sid), and on (iss, sub) for that subject's tokens without a sid.
        self.sessions: dict[_Key, tuple[float, float]] = {}
        self.sessionless: dict[_Key, tuple[float, float]] = {}
        self._lock = threading.Lock()
        reset_after_fork(self)
        self.version = next(_versions)
        """Changes whenever an entry is added, after the entry is readable: a token found
        unrevoked at one version stays unrevoked while the version stays the same (entries
        only lapse, and a lapsed entry no longer revoked anything that had not expired)."""

    def _forked(self) -> None:
        """In a child process after ``fork()`` (bearerguard._fork): a lock another thread of
        the parent held at the fork (a revocation or the mirror's update being merged) is
        never released here, and the next revocation waited for it forever."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        cutoffs = len(self.subjects) + len(self.clients)
        return len(self.tokens) + cutoffs + len(self.sessions) + len(self.sessionless)

    def apply(self, entry: Entry) -> None:
        key = (entry.issuer, entry.name)
        with self._lock:
            if entry.cutoff is None:
                self.tokens[key] = max(entry.until, self.tokens.get(key, entry.until))
            else:
                cutoffs = self._cutoffs(entry.kind)
                cutoff, until = cutoffs.get(key, (entry.cutoff, entry.until))
                cutoffs[key] = (max(cutoff, entry.cutoff), max(until, entry.until))
            self.version = next(_versions)

    def holds(self, kind: Kind, issuer: str | None, name: str) -> bool:
        """Whether an entry of ``kind`` is held under ``(issuer, name)``: writing it again
        merges into that entry and takes no more room."""
        entries = self.tokens if kind == "t" else self._cutoffs(kind)
        return (issuer, name) in entries

    def _cutoffs(self, kind: Kind) -> dict[_Key, tuple[float, float]]:
        if kind == "s":
            return self.subjects
        if kind == "c":
            return self.clients
        return self.sessions if kind == "n" else self.sessionless

    def revoked(self, token: AccessToken, now: float) -> bool:
        """Whether ``token``, its subject, its client or its session is revoked at ``now``.

        A session cut-off refuses the tokens whose ``sid`` it names; the cut-off of a
        subject's tokens without a ``sid`` (a session revoked together with its user) refuses
        those of the subject's tokens that carry none, as they cannot show which session
        they belong to.
        """
        tokens, subjects, clients = self.tokens, self.subjects, self.clients
        sessions, sessionless = self.sessions, self.sessionless
        if not (tokens or subjects or clients or sessions or sessionless):
            return False
        iss = token.issuer
        jti = token.token_id
        if jti is not None and tokens:
            for key in ((iss, jti), (None, jti)):
                until = tokens.get(key)
                if until is not None and now < until:
                    return True
        iat = token.claims.get("iat")
        checks = [(subjects, token.subject), (clients, token.client_id)]
        if sessions or sessionless:
            sid = token.claims.get("sid")
            if isinstance(sid, str) and sid:
                checks.append((sessions, sid))
            else:  # no sid (or not one a session could be named by): by its subject
                checks.append((sessionless, token.subject))
        for cutoffs, name in checks:
            if name is None or not cutoffs:
                continue
            for key in ((iss, name), (None, name)):
                entry = cutoffs.get(key)
                # No iat: the token cannot show it is newer than the cut-off.
                if entry is not None and now < entry[1] and (iat is None or iat <= entry[0]):
                    return True
        return False

    def prune(self, now: float) -> None:
        """Forget lapsed entries (each dictionary is swapped whole: readers never block)."""
        with self._lock:
            self.tokens = {key: until for key, until in self.tokens.items() if now < until}
            self.subjects = {key: item for key, item in self.subjects.items() if now < item[1]}
            self.clients = {key: item for key, item in self.clients.items() if now < item[1]}
            self.sessions = {key: item for key, item in self.sessions.items() if now < item[1]}
            self.sessionless = {
                key: item for key, item in self.sessionless.items() if now < item[1]
            }
