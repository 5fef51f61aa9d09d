"""Security Event Tokens pushed by the identity provider (RFC 8417, RFC 8935).

SETs are signed by a real ``DevIssuer`` and posted through a real Starlette app (the test
app of ``tests/apps.py`` with the receiver routed in) over ``httpx.ASGITransport``; the
effect is checked the way it matters: an access token issued before the event is refused by
the middleware afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
import structlog
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from bearerguard import BearerGuard, ConfigurationError, RefreshPolicy
from bearerguard._core.secevent import (
    SecurityEventError,
    SessionCutoff,
    plan_security_event,
)
from bearerguard.errors import (
    BadSignatureError,
    KeySetUnavailableError,
    UnsupportedAlgorithmError,
)
from bearerguard.events import (
    CAEP_CREDENTIAL_CHANGE,
    CAEP_SESSION_REVOKED,
    RISC_ACCOUNT_DISABLED,
    RISC_ACCOUNT_PURGED,
    RISC_CREDENTIAL_COMPROMISE,
    SET_MEDIA_TYPE,
    SUBJECT_CUTOFF_EVENTS,
    SecurityEventReceiver,
    SessionRevocationStore,
    SubjectRevocationStore,
)
from bearerguard.introspection import Introspector
from bearerguard.revocation import IntrospectionRevocationStore, MemoryRevocationStore
from bearerguard.testing import DevIssuer, Override
from tests.apps import build_app
from tests.helpers import asgi_call, b64, compact, http_scope, segment

RECEIVER = "https://api.example/events"
UNKNOWN_EVENT = "https://schemas.example/event-type/coffee-brewed"


@pytest.fixture
def issuer() -> Iterator[DevIssuer]:
    """A fresh ES256 issuer per test (fast keys); faults go in ``overrides``."""
    with DevIssuer(algorithms=["ES256"]) as running:
        yield running


@pytest.fixture(scope="module")
def stranger() -> Iterator[DevIssuer]:
    """Another issuer: its keys are trusted by nobody here."""
    with DevIssuer(algorithms=["ES256"]) as running:
        yield running


class Setup:
    """The API, its store and receiver, and a client posting to it."""

    client: httpx.AsyncClient

    def __init__(self, issuer: DevIssuer, **options: Any) -> None:
        self.issuer = issuer
        self.store = MemoryRevocationStore()
        self.guard = issuer.guard(revocation=self.store)
        self.receiver = SecurityEventReceiver(guard=self.guard, audience=RECEIVER, **options)

    def claims(self, events: dict[str, Any], **members: Any) -> dict[str, Any]:
        """SET claims (RFC 8417 §2.2); a member given as ``None`` is left out."""
        claims: dict[str, Any] = {
            "iss": self.issuer.url,
            "aud": RECEIVER,
            "iat": int(time.time()),
            "jti": uuid.uuid4().hex,
            "events": events,
            **members,
        }
        return {name: value for name, value in claims.items() if value is not None}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        """Sign as the issuer would, typed secevent+jwt; any JSON goes (PyJWT's JWT layer
        refuses a non-string iss, so the JWS layer signs the claims' bytes)."""
        return self.sign_bytes(json.dumps(claims).encode(), **headers)

    def sign_bytes(self, payload: bytes, **headers: Any) -> str:
        key = self.issuer.key()
        header = {"kid": key.kid, "typ": "secevent+jwt", **headers}
        header = {name: value for name, value in header.items() if value is not None}
        return jwt.api_jws.encode(payload, key.private_key, algorithm=key.algorithm, headers=header)

    async def post(
        self,
        body: str | bytes,
        content_type: str | None = SET_MEDIA_TYPE,
        path: str = "/events",
    ) -> httpx.Response:
        headers = {} if content_type is None else {"Content-Type": content_type}
        content = body.encode() if isinstance(body, str) else body
        return await self.client.post(path, content=content, headers=headers)

    async def push(self, events: dict[str, Any], **members: Any) -> httpx.Response:
        return await self.post(self.sign(self.claims(events, **members)))

    async def status_of(self, token: str) -> int:
        response = await self.client.get("/items", headers={"Authorization": f"Bearer {token}"})
        return response.status_code


def app_for(setup: Setup) -> Starlette:
    app = build_app(setup.guard, public_paths=("/events", "/hooks/*"))
    app.router.routes.append(Route("/events", setup.receiver))
    app.router.routes.append(Mount("/hooks", app=setup.receiver))
    return app


async def make_setup(issuer: DevIssuer, **options: Any) -> AsyncIterator[Setup]:
    setup = Setup(issuer, **options)
    transport = httpx.ASGITransport(app=app_for(setup))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        setup.client = client
        yield setup


@pytest.fixture
async def api(issuer: DevIssuer) -> AsyncIterator[Setup]:
    async for setup in make_setup(issuer):
        yield setup


@pytest.fixture
async def sessions_api(issuer: DevIssuer) -> AsyncIterator[Setup]:
    """The receiver with session-scoped revocation turned on."""
    async for setup in make_setup(issuer, revoke_sessions=True):
        yield setup


def iss_sub(issuer: DevIssuer, sub: str) -> dict[str, str]:
    return {"format": "iss_sub", "iss": issuer.url, "sub": sub}


def user_token(issuer: DevIssuer, sub: str = "kim", *, age: int = 60) -> str:
    return issuer.mint(scopes=["items:read"], sub=sub, iat=int(time.time()) - age)


# -- each event type cuts off its subject -------------------------------------------------

CUTOFF_CASES = [
    (CAEP_SESSION_REVOKED, "sub_id"),
    (CAEP_CREDENTIAL_CHANGE, "legacy"),
    (RISC_ACCOUNT_DISABLED, "legacy"),
    (RISC_ACCOUNT_PURGED, "sub_id"),
    (RISC_CREDENTIAL_COMPROMISE, "legacy"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("event_type", "placement"), CUTOFF_CASES)
async def test_each_event_type_cuts_off_the_subject(
    api: Setup, event_type: str, placement: str
) -> None:
    issuer = api.issuer
    earlier = user_token(issuer, "kim")
    bystander = user_token(issuer, "lee")
    assert await api.status_of(earlier) == 200
    now = int(time.time())
    payload: dict[str, Any] = {"event_timestamp": now - 1}
    members: dict[str, Any] = {}
    if placement == "sub_id":  # RFC 9493 §4: the subject as a top-level claim
        members["sub_id"] = iss_sub(issuer, "kim")
    else:  # the RISC and CAEP drafts: the subject inside the event
        payload["subject"] = iss_sub(issuer, "kim")
    with structlog.testing.capture_logs() as events:
        response = await api.push({event_type: payload}, **members)
    assert response.status_code == 202
    assert response.content == b""
    assert await api.status_of(earlier) == 401  # issued before: refused from now on
    assert await api.status_of(bystander) == 200
    later = issuer.mint(scopes=["items:read"], sub="kim", iat=now + 1)
    assert await api.status_of(later) == 200  # issued after the event: accepted
    (received,) = [event for event in events if event["event"] == "event.received"]
    assert received["event_types"] == [event_type]
    assert received["subjects"] == ["kim"]
    assert received["actions"] == [
        {"event": event_type, "action": "revoke_subject", "sub": "kim", "issued_before": now - 1}
    ]
    assert received["iss"] == issuer.url
    assert received["status"] == 202
    assert received["outcome"] == "allow"  # docs/audit-events.md: allow, deny or error


@pytest.mark.anyio
async def test_without_event_timestamp_the_set_iat_is_the_cutoff(api: Setup) -> None:
    issuer = api.issuer
    iat = int(time.time()) - 30
    older = user_token(issuer, "kim", age=60)
    newer = issuer.mint(scopes=["items:read"], sub="kim", iat=iat + 10)
    response = await api.push({RISC_ACCOUNT_DISABLED: {"subject": iss_sub(issuer, "kim")}}, iat=iat)
    assert response.status_code == 202
    assert await api.status_of(older) == 401
    assert await api.status_of(newer) == 200


SUBJECTS = {
    "opaque": ({"format": "opaque", "id": "kim"}, True),
    "legacy subject_type": ({"subject_type": "iss_sub", "iss": "{iss}", "sub": "kim"}, True),
    # The drafts' spelling (Google's Cross-Account Protection RISC events): ignoring it left
    # an account-disabled user's tokens valid.
    "legacy subject_type iss-sub": (
        {"subject_type": "iss-sub", "iss": "{iss}", "sub": "kim"},
        True,
    ),
    "iss-sub of another issuer": (
        {"subject_type": "iss-sub", "iss": "https://other.example", "sub": "kim"},
        False,
    ),
    "aliases": (
        {
            "format": "aliases",
            "identifiers": [
                {"format": "email", "email": "kim@example.com"},
                {"format": "iss_sub", "iss": "{iss}", "sub": "kim"},
            ],
        },
        True,
    ),
    "complex subject": (
        {
            "user": {"format": "iss_sub", "iss": "{iss}", "sub": "kim"},
            "session": {"format": "opaque", "id": "s-1"},
        },
        True,
    ),
    "complex subject, SSF 1.0 final": (
        {
            "format": "complex",
            "user": {"format": "iss_sub", "iss": "{iss}", "sub": "kim"},
            "session": {"format": "opaque", "id": "s-1"},
        },
        True,
    ),
    "complex subject with an aliases user": (
        {
            "user": {
                "format": "aliases",
                "identifiers": [
                    {"format": "email", "email": "kim@example.com"},
                    {"format": "iss_sub", "iss": "{iss}", "sub": "kim"},
                ],
            },
            "session": {"format": "opaque", "id": "s-1"},
        },
        True,
    ),
    "iss_sub of another issuer": (
        {"format": "iss_sub", "iss": "https://other.example", "sub": "kim"},
        False,
    ),
    "email": ({"format": "email", "email": "kim@example.com"}, False),
    "phone": ({"format": "phone_number", "phone_number": "+12065550100"}, False),
    "aliases without a usable one": (
        {"format": "aliases", "identifiers": [{"format": "email", "email": "k@x"}]},
        False,
    ),
    "complex subject without user": ({"session": {"format": "opaque", "id": "s-1"}}, False),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(SUBJECTS))
async def test_subject_identifier_formats(api: Setup, name: str) -> None:
    identifier, acted_on = SUBJECTS[name]
    identifier = json.loads(json.dumps(identifier).replace("{iss}", api.issuer.url))
    token = user_token(api.issuer, "kim")
    # credential-change: a session-revoked event naming a session ends that session only.
    with structlog.testing.capture_logs() as events:
        response = await api.push({CAEP_CREDENTIAL_CHANGE: {"subject": identifier}})
    assert response.status_code == 202
    assert (await api.status_of(token) == 401) is acted_on
    assert (len(api.store) == 1) is acted_on
    (received,) = events
    (action,) = received["actions"]
    assert action["action"] == ("revoke_subject" if acted_on else "ignored")
    assert "kim@example.com" not in json.dumps(received)  # unsupported identifiers unlogged


@pytest.mark.anyio
async def test_every_identifier_of_aliases_is_cut_off(api: Setup) -> None:
    # RFC 9493 §3.2.7: all name the same subject; an opaque id listed first need not be the
    # token's sub, so acting on the first one only would leave the user's tokens valid.
    token = user_token(api.issuer, "kim")
    aliases = {
        "format": "aliases",
        "identifiers": [
            {"format": "opaque", "id": "a9f3-internal"},
            {"format": "email", "email": "kim@example.com"},
            iss_sub(api.issuer, "kim"),
            {"format": "opaque", "id": "kim"},
        ],
    }
    with structlog.testing.capture_logs() as events:
        response = await api.push({CAEP_SESSION_REVOKED: {}}, sub_id=aliases)
    assert response.status_code == 202
    assert await api.status_of(token) == 401
    (received,) = [event for event in events if event["event"] == "event.received"]
    assert received["subjects"] == ["a9f3-internal", "kim"]
    assert [action["sub"] for action in received["actions"]] == ["a9f3-internal", "kim"]


@pytest.mark.anyio
async def test_top_level_sub_names_the_subject(api: Setup) -> None:
    token = user_token(api.issuer, "kim")
    assert (await api.push({RISC_ACCOUNT_PURGED: {}}, sub="kim")).status_code == 202
    assert await api.status_of(token) == 401


@pytest.mark.anyio
async def test_sub_names_the_subject_when_sub_id_is_not_understood(api: Setup) -> None:
    # RFC 9493 §4.1: sub and sub_id name the same principal, and a recipient that does not
    # understand sub_id's format may use sub; the event was ignored, leaving kim's tokens valid.
    token = user_token(api.issuer, "kim")
    email = {"format": "email", "email": "kim@example.com"}
    assert (await api.push({CAEP_SESSION_REVOKED: {}}, sub_id=email, sub="kim")).status_code == 202
    assert await api.status_of(token) == 401
    # A sub_id understood wins over sub.
    token = user_token(api.issuer, "lee")
    other = user_token(api.issuer, "max")
    sub_id = iss_sub(api.issuer, "lee")
    assert (await api.push({RISC_ACCOUNT_PURGED: {}}, sub_id=sub_id, sub="max")).status_code == 202
    assert (await api.status_of(token), await api.status_of(other)) == (401, 200)


@pytest.mark.anyio
async def test_unknown_event_types_are_acknowledged_and_change_nothing(api: Setup) -> None:
    token = user_token(api.issuer, "kim")
    with structlog.testing.capture_logs() as events:
        response = await api.push({UNKNOWN_EVENT: {"subject": iss_sub(api.issuer, "kim")}})
    assert response.status_code == 202
    assert len(api.store) == 0
    assert await api.status_of(token) == 200
    (received,) = events
    assert received["event"] == "event.received"
    assert received["actions"] == [
        {"event": UNKNOWN_EVENT, "action": "ignored", "why": "event type not acted on"}
    ]
    assert received["subjects"] == []


class Disk:
    """A processor writing to a disk that fills up: it raises while full, else drops."""

    full = True

    def __call__(self, _logger: Any, _method: str, _event: Any) -> Any:
        if self.full:
            raise OSError(28, "No space left on device")
        raise structlog.DropEvent


@pytest.mark.anyio
async def test_an_audit_logger_that_raises_changes_no_answer(
    issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # The SET acted on is still acknowledged (202), a refused one still refused, not a 500
    # the transmitter would retry. The first lost event is reported on the stdlib logger
    # with its traceback, the next only counted while the logger stays down, and its
    # recovery said once.
    disk = Disk()
    sink = structlog.wrap_logger(None, processors=[disk])
    async for api in make_setup(issuer, audit_logger=sink):
        token = user_token(issuer, "kim")
        with caplog.at_level(logging.WARNING, "bearerguard"):
            cut_off = await api.push({RISC_ACCOUNT_DISABLED: {"subject": iss_sub(issuer, "kim")}})
            refused = await api.post("not a SET")
            disk.full = False
            assert (await api.post("not a SET either")).status_code == 400
        assert cut_off.status_code == 202
        assert refused.status_code == 400
        assert await api.status_of(token) == 401
        assert [record.getMessage().split("\n")[0] for record in caplog.records] == [
            "bearerguard: the audit logger failed; event.received event lost",
            "bearerguard: audit sink recovered after 2 lost events",
        ]
        assert "\nTraceback (most recent call last)" in caplog.records[0].getMessage()


@pytest.mark.anyio
async def test_several_events_in_one_set(api: Setup) -> None:
    issuer = api.issuer
    kim, lee = user_token(issuer, "kim"), user_token(issuer, "lee")
    response = await api.push(
        {
            UNKNOWN_EVENT: {},
            RISC_ACCOUNT_DISABLED: {"subject": iss_sub(issuer, "kim")},
            RISC_CREDENTIAL_COMPROMISE: {"subject": {"format": "opaque", "id": "lee"}},
        }
    )
    assert response.status_code == 202
    assert (await api.status_of(kim), await api.status_of(lee)) == (401, 401)


@pytest.mark.anyio
async def test_the_event_types_acted_on_are_configurable(issuer: DevIssuer) -> None:
    async for api in make_setup(issuer, events=[UNKNOWN_EVENT]):
        token = user_token(issuer, "kim")
        subject = {"subject": iss_sub(issuer, "kim")}
        assert (await api.push({CAEP_SESSION_REVOKED: subject})).status_code == 202
        assert await api.status_of(token) == 200
        assert (await api.push({UNKNOWN_EVENT: subject})).status_code == 202
        assert await api.status_of(token) == 401


@pytest.mark.anyio
async def test_one_event_type_given_as_a_string(issuer: DevIssuer) -> None:
    # The string was taken as the set of its characters: no event type matched, and every
    # session-revoked SET was acknowledged but not acted on.
    async for api in make_setup(issuer, events=CAEP_SESSION_REVOKED):
        assert api.receiver.events == {CAEP_SESSION_REVOKED}
        token = user_token(issuer, "kim")
        subject = {"subject": iss_sub(issuer, "kim")}
        assert (await api.push({CAEP_SESSION_REVOKED: subject})).status_code == 202
        assert await api.status_of(token) == 401


@pytest.mark.anyio
async def test_mounted_under_a_prefix(api: Setup) -> None:
    token = user_token(api.issuer, "kim")
    body = api.sign(api.claims({CAEP_SESSION_REVOKED: {"subject": iss_sub(api.issuer, "kim")}}))
    assert (await api.post(body, path="/hooks/")).status_code == 202
    assert await api.status_of(token) == 401


# -- session-revoked naming a session: that session only, by sid (revoke_sessions=True) ----


def session_token(
    issuer: DevIssuer, sid: str | None, sub: str = "kim", *, iat: int | None = None
) -> str:
    issued = int(time.time()) - 60 if iat is None else iat
    return issuer.mint(scopes=["items:read"], sub=sub, sid=sid, iat=issued)


def complex_subject(
    issuer: DevIssuer, sid: str, sub: str | None = "kim", *, final: bool = False
) -> dict[str, Any]:
    """An OpenID SSF complex subject, as CAEP 1.0 §3.1's examples give a revoked session;
    ``final``: spelled as SSF 1.0 final does, with ``"format": "complex"``."""
    subject: dict[str, Any] = {"format": "complex"} if final else {}
    subject |= {
        "session": {"format": "opaque", "id": sid},
        "tenant": {"format": "opaque", "id": "t-1"},
    }
    if sub is not None:
        subject["user"] = iss_sub(issuer, sub)
    return subject


@pytest.mark.anyio
@pytest.mark.parametrize("placement", ["subject", "sub_id"])
@pytest.mark.parametrize("spelling", ["draft", "final"])
async def test_a_revoked_session_refuses_that_session_s_tokens_only(
    sessions_api: Setup, placement: str, spelling: str
) -> None:
    api = sessions_api
    issuer = api.issuer
    now = int(time.time())
    revoked, other = session_token(issuer, "sess-1"), session_token(issuer, "sess-2")
    sidless, bystander = session_token(issuer, None), session_token(issuer, None, "lee")
    # Verified, then served from the cache (which notes the store's table as checked): the
    # revocation must reach the cache hit of the very next request.
    for _ in range(2):
        assert [await api.status_of(token) for token in (revoked, sidless)] == [200, 200]
    # SSF 1.0 final gives a complex subject "format": "complex"; its drafts gave none.
    subject = complex_subject(issuer, "sess-1", final=spelling == "final")
    payload: dict[str, Any] = {"event_timestamp": now - 1}
    members: dict[str, Any] = {}
    if placement == "subject":
        payload["subject"] = subject
    else:
        members["sub_id"] = subject
    with structlog.testing.capture_logs() as events:
        response = await api.push({CAEP_SESSION_REVOKED: payload}, **members)
    assert response.status_code == 202
    assert await api.status_of(revoked) == 401
    assert await api.status_of(other) == 200  # the same user's other session
    assert await api.status_of(sidless) == 401  # kim's, and cannot show its session
    assert await api.status_of(bystander) == 200
    later = session_token(issuer, "sess-1", iat=now + 1)
    assert await api.status_of(later) == 200  # issued after the event
    (received,) = [event for event in events if event["event"] == "event.received"]
    assert received["subjects"] == []  # no subject lost all its tokens
    assert received["actions"] == [
        {
            "event": CAEP_SESSION_REVOKED,
            "action": "revoke_session",
            "sid": "sess-1",
            "subjects": ["kim"],
            "issued_before": now - 1,
        }
    ]


@pytest.mark.anyio
async def test_a_session_named_without_its_user_leaves_tokens_without_sid_alone(
    sessions_api: Setup,
) -> None:
    api = sessions_api
    issuer = api.issuer
    revoked, sidless = session_token(issuer, "sess-1"), session_token(issuer, None)
    subject = complex_subject(issuer, "sess-1", sub=None)
    assert (await api.push({CAEP_SESSION_REVOKED: {"subject": subject}})).status_code == 202
    assert await api.status_of(revoked) == 401
    assert await api.status_of(sidless) == 200  # no user named: nothing ties it to the session


@pytest.mark.anyio
async def test_other_events_and_other_session_formats_still_cut_off_the_user(
    sessions_api: Setup,
) -> None:
    api = sessions_api
    issuer = api.issuer
    other = session_token(issuer, "sess-2")
    subject = complex_subject(issuer, "sess-1")
    # Credential change ends every session; so does a session identifier not understood.
    assert (await api.push({CAEP_CREDENTIAL_CHANGE: {"subject": subject}})).status_code == 202
    assert await api.status_of(other) == 401
    lee = session_token(issuer, "sess-3", "lee")
    email = {
        "session": {"format": "email", "email": "x@example.com"},
        "user": iss_sub(issuer, "lee"),
    }
    assert (await api.push({CAEP_SESSION_REVOKED: {"subject": email}})).status_code == 202
    assert await api.status_of(lee) == 401


@pytest.mark.anyio
async def test_a_malformed_session_identifier_is_invalid_request(sessions_api: Setup) -> None:
    subject = {"session": {"format": "opaque"}, "user": iss_sub(sessions_api.issuer, "kim")}
    response = await sessions_api.push({CAEP_SESSION_REVOKED: {"subject": subject}})
    assert (response.status_code, response.json()["err"]) == (400, "invalid_request")


# -- session-revoked naming a session, by default: the user, as without sessions ------------


@pytest.mark.anyio
@pytest.mark.parametrize("spelling", ["draft", "final"])
async def test_by_default_a_revoked_session_cuts_off_its_user(api: Setup, spelling: str) -> None:
    # The IdP's CAEP session id need not be the sid its access tokens carry: cutting off by
    # sid unasked could leave the revoked session's tokens valid. Every token of kim goes.
    issuer = api.issuer
    now = int(time.time())
    tokens = [
        session_token(issuer, "sess-1"),  # the session named
        session_token(issuer, "sess-2"),  # another session of kim
        session_token(issuer, "idp-internal-7"),  # a sid spelled otherwise than the event's
        session_token(issuer, None),
    ]
    bystander = session_token(issuer, "sess-1", "lee")  # another user, the same sid
    subject = complex_subject(issuer, "sess-1", final=spelling == "final")
    payload = {"subject": subject, "event_timestamp": now - 1}
    with structlog.testing.capture_logs() as events:
        response = await api.push({CAEP_SESSION_REVOKED: payload})
    assert response.status_code == 202
    assert [await api.status_of(token) for token in tokens] == [401, 401, 401, 401]
    assert await api.status_of(bystander) == 200
    assert await api.status_of(session_token(issuer, "sess-1", iat=now + 1)) == 200
    (received,) = [event for event in events if event["event"] == "event.received"]
    assert received["subjects"] == ["kim"]
    assert received["actions"] == [
        {
            "event": CAEP_SESSION_REVOKED,
            "action": "revoke_subject",
            "sub": "kim",
            "issued_before": now - 1,
            "why": "session revocation is off",
        }
    ]


@pytest.mark.anyio
async def test_by_default_a_session_named_without_its_user_is_ignored(api: Setup) -> None:
    issuer = api.issuer
    revoked, sidless = session_token(issuer, "sess-1"), session_token(issuer, None)
    subject = complex_subject(issuer, "sess-1", sub=None)
    with structlog.testing.capture_logs() as events:
        assert (await api.push({CAEP_SESSION_REVOKED: {"subject": subject}})).status_code == 202
    assert [await api.status_of(token) for token in (revoked, sidless)] == [200, 200]
    assert len(api.store) == 0
    (received,) = [event for event in events if event["event"] == "event.received"]
    assert received["subjects"] == []
    assert received["actions"] == [
        {
            "event": CAEP_SESSION_REVOKED,
            "action": "ignored",
            "why": "session revocation is off, no user",
        }
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("revoke_sessions", [False, True])
async def test_a_session_in_sub_id_without_a_user_is_the_sub_claim_s(
    issuer: DevIssuer, revoke_sessions: bool
) -> None:
    # RFC 9493 §4.1: sub and sub_id name the same principal, so the top-level sub is the
    # revoked session's user, as it is for a sub_id naming a session of another format.
    async for api in make_setup(issuer, revoke_sessions=revoke_sessions):
        other, sidless = session_token(issuer, "sess-2"), session_token(issuer, None)
        subject = complex_subject(issuer, "sess-1", sub=None, final=True)
        pushed = await api.push({CAEP_SESSION_REVOKED: {}}, sub="kim", sub_id=subject)
        assert pushed.status_code == 202
        # Cut off with the session (revoke_sessions), or every token of kim (the default).
        assert await api.status_of(sidless) == 401
        assert await api.status_of(other) == (200 if revoke_sessions else 401)


@pytest.mark.anyio
async def test_by_default_a_malformed_session_identifier_does_not_spare_the_user(
    api: Setup,
) -> None:
    # The session is not used: its identifier, malformed, must not get the SET refused (400,
    # not retried) and leave the user's tokens valid.
    token = session_token(api.issuer, "sess-1")
    subject = {"session": {"format": "opaque"}, "user": iss_sub(api.issuer, "kim")}
    assert (await api.push({CAEP_SESSION_REVOKED: {"subject": subject}})).status_code == 202
    assert await api.status_of(token) == 401


class SubjectsOnlyStore:
    """A store as an application may write one: subject cut-offs, no sessions."""

    def __init__(self) -> None:
        self.cutoffs: dict[tuple[str | None, str], float] = {}

    async def revoke_subject(
        self, sub: str, issued_before: Any = None, *, issuer: str | None = None
    ) -> None:
        self.cutoffs[(issuer, sub)] = float(issued_before)

    async def is_revoked(self, token: Any) -> bool:
        cutoff = self.cutoffs.get((token.issuer, token.subject))
        iat = token.claims.get("iat")
        return cutoff is not None and (iat is None or iat <= cutoff)


@pytest.mark.anyio
async def test_a_store_without_sessions_serves_the_default_and_refuses_the_opt_in(
    issuer: DevIssuer,
) -> None:
    store = SubjectsOnlyStore()
    guard = issuer.guard(revocation=store)
    assert isinstance(store, SubjectRevocationStore)
    assert not isinstance(store, SessionRevocationStore)
    # Asked for session cut-offs it cannot make: loud at construction, not a silent fallback.
    with pytest.raises(ConfigurationError, match="revoke_session"):
        SecurityEventReceiver(guard=guard, audience=RECEIVER, revoke_sessions=True)
    receiver = SecurityEventReceiver(guard=guard, audience=RECEIVER)
    setup = Setup(issuer)
    app = build_app(guard, public_paths=("/events",))
    app.router.routes.append(Route("/events", receiver))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        setup.client = client
        other = session_token(issuer, "sess-2")
        payload = {"subject": complex_subject(issuer, "sess-1")}
        assert (await setup.push({CAEP_SESSION_REVOKED: payload})).status_code == 202
        assert await setup.status_of(other) == 401  # every session of kim
    assert list(store.cutoffs) == [(issuer.url, "kim")]


@pytest.mark.anyio
async def test_a_revoked_session_reaches_every_instance_through_redis(
    issuer: DevIssuer, redis_server: Any, redis_namespace: str
) -> None:
    from bearerguard.revocation import RedisRevocationStore

    receiving = RedisRevocationStore(redis_server.url, namespace=redis_namespace)
    serving = RedisRevocationStore(redis_server.url, namespace=redis_namespace)
    # Another instance of the API: its own guard, and its own mirror of the same namespace.
    elsewhere = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(issuer.guard(revocation=serving))),
        base_url="http://t",
    )

    async def status_elsewhere(token: str) -> int:
        response = await elsewhere.get("/items", headers={"Authorization": f"Bearer {token}"})
        return response.status_code

    revoked, other = session_token(issuer, "sess-1"), session_token(issuer, "sess-2")
    sidless = session_token(issuer, None)
    try:
        await receiving.start()
        await serving.start()
        assert await status_elsewhere(revoked) == 200  # now in that guard's cache
        async for api in make_setup(issuer, store=receiving, revoke_sessions=True):
            subject = complex_subject(issuer, "sess-1")
            response = await api.push({CAEP_SESSION_REVOKED: {"subject": subject}})
            assert response.status_code == 202
        for _ in range(1000):  # until the announcement reaches the other mirror
            if await status_elsewhere(revoked) == 401:
                break
            await asyncio.sleep(0.005)
        assert await status_elsewhere(revoked) == 401
        assert await status_elsewhere(other) == 200
        assert await status_elsewhere(sidless) == 401
    finally:
        await elsewhere.aclose()
        await receiving.aclose()
        await serving.aclose()


# -- refusals: the RFC 8935 §2.4 codes, never a 500 ---------------------------------------


def tamper(token: str, **claims: Any) -> str:
    """Change claims in a signed token, keeping its signature (which then fails)."""
    header, payload, signature = token.split(".")
    decoded = json.loads(jwt.utils.base64url_decode(payload))
    return f"{header}.{segment({**decoded, **claims})}.{signature}"


def without(claims: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in claims.items() if key != name}


def flip(token: str, index: int) -> str:
    """Change one base64url character (keeping the segment canonical)."""
    replacement = "B" if token[index] == "A" else "A"
    return token[:index] + replacement + token[index + 1 :]


def refusals(api: Setup, stranger: DevIssuer) -> dict[str, tuple[str | bytes, str]]:
    issuer = api.issuer
    event = {CAEP_SESSION_REVOKED: {"subject": iss_sub(issuer, "kim")}}
    good = api.claims(event)
    signed = api.sign(good)
    hs_secret = issuer.key().public_jwk()["x"].encode() * 4  # a public value as HMAC key
    return {
        "unsigned, empty signature": (
            f"{segment({'alg': 'none', 'typ': 'secevent+jwt'})}.{segment(good)}.",
            "invalid_request",
        ),
        "alg none with a signature": (
            compact({"alg": "none", "typ": "secevent+jwt"}, good),
            "invalid_key",
        ),
        "HS256 (not allowed)": (
            jwt.encode(good, hs_secret, algorithm="HS256", headers={"typ": "secevent+jwt"}),
            "invalid_key",
        ),
        "another issuer's key": (
            stranger.sign(good, headers={"typ": "secevent+jwt"}),
            "invalid_key",
        ),
        "another issuer's key with our kid": (
            stranger.sign(good, headers={"typ": "secevent+jwt", "kid": issuer.key().kid}),
            "authentication_failed",
        ),
        "tampered claims": (tamper(signed, iss=issuer.url + "/x"), "authentication_failed"),
        "tampered signature": (flip(signed, -10), "authentication_failed"),
        "typ at+jwt": (issuer.sign(good), "invalid_request"),
        "no typ": (api.sign(good, typ=None), "invalid_request"),
        "typ JWT": (api.sign(good, typ="JWT"), "invalid_request"),
        "an access token": (issuer.mint(aud=RECEIVER), "invalid_request"),
        "wrong iss": (api.sign({**good, "iss": stranger.url}), "invalid_issuer"),
        "no iss": (api.sign(without(good, "iss")), "invalid_issuer"),
        "wrong aud": (api.sign({**good, "aud": "https://api.example"}), "invalid_audience"),
        "aud list without us": (api.sign({**good, "aud": ["a", "b"]}), "invalid_audience"),
        "no aud": (api.sign(without(good, "aud")), "invalid_audience"),
        "no iat": (api.sign(without(good, "iat")), "invalid_request"),
        "iat as string": (api.sign({**good, "iat": "now"}), "invalid_request"),
        "iat beyond a float": (api.sign({**good, "iat": 10**400}), "invalid_request"),
        "exp beyond a float": (api.sign({**good, "exp": 10**400}), "invalid_request"),
        "iat in the future": (
            api.sign({**good, "iat": int(time.time()) + 3600}),
            "invalid_request",
        ),
        "expired": (api.sign({**good, "exp": int(time.time()) - 3600}), "invalid_request"),
        # RFC 7519 §4.1.5: not to be accepted for processing before nbf, as exp after.
        "nbf in the future": (
            api.sign({**good, "nbf": int(time.time()) + 3600}),
            "invalid_request",
        ),
        "nbf as string": (api.sign({**good, "nbf": "soon"}), "invalid_request"),
        "nbf null": (api.sign({**good, "nbf": None}), "invalid_request"),
        "no jti": (api.sign(without(good, "jti")), "invalid_request"),
        "jti as number": (api.sign({**good, "jti": 7}), "invalid_request"),
        "no events": (api.sign(without(good, "events")), "invalid_request"),
        "events empty": (api.sign({**good, "events": {}}), "invalid_request"),
        "events as list": (api.sign({**good, "events": [CAEP_SESSION_REVOKED]}), "invalid_request"),
        "event payload not an object": (
            api.sign({**good, "events": {CAEP_SESSION_REVOKED: "kim"}}),
            "invalid_request",
        ),
        "no subject": (api.sign({**good, "events": {CAEP_SESSION_REVOKED: {}}}), "invalid_request"),
        "subject not an object": (
            api.sign({**good, "events": {CAEP_SESSION_REVOKED: {"subject": "kim"}}}),
            "invalid_request",
        ),
        "subject without format": (
            api.sign({**good, "events": {CAEP_SESSION_REVOKED: {"subject": {"sub": "kim"}}}}),
            "invalid_request",
        ),
        "iss_sub without sub": (
            api.sign(
                {**good, "events": {CAEP_SESSION_REVOKED: {"subject": {"format": "iss_sub"}}}}
            ),
            "invalid_request",
        ),
        "event_timestamp beyond a float": (
            api.sign(
                {
                    **good,
                    "events": {
                        RISC_ACCOUNT_DISABLED: {
                            "subject": iss_sub(issuer, "kim"),
                            "event_timestamp": 10**400,
                        }
                    },
                }
            ),
            "invalid_request",
        ),
        "event_timestamp as string": (
            api.sign(
                {
                    **good,
                    "events": {
                        RISC_ACCOUNT_DISABLED: {
                            "subject": iss_sub(issuer, "kim"),
                            "event_timestamp": "yesterday",
                        }
                    },
                }
            ),
            "invalid_request",
        ),
        "event_timestamp in the future": (
            api.sign(
                {
                    **good,
                    "events": {
                        RISC_ACCOUNT_DISABLED: {
                            "subject": iss_sub(issuer, "kim"),
                            "event_timestamp": 253_402_300_000,
                        }
                    },
                }
            ),
            "invalid_request",
        ),
        "empty body": (b"", "invalid_request"),
        "not a JWT": (b"hello", "invalid_request"),
        "JSON": (json.dumps(good).encode(), "invalid_request"),
        "not ASCII": ("é.é.é".encode(), "invalid_request"),
        "binary": (bytes(range(256)), "invalid_request"),
        "five segments (JWE)": ("a.b.c.d.e", "invalid_request"),
        "payload not JSON": (api.sign_bytes(b"{"), "invalid_request"),
        "payload a JSON array": (api.sign_bytes(b"[1]"), "invalid_request"),
        "payload with duplicate members": (
            api.sign_bytes(b'{"iss": "a", "iss": "b"}'),
            "invalid_request",
        ),
        "garbage signed": (
            f"{segment({'alg': 'ES256'})}.{b64(b'{')}.{b64(b's')}",
            "authentication_failed",
        ),
    }


@pytest.mark.anyio
async def test_refusals_answer_the_rfc8935_codes(api: Setup, stranger: DevIssuer) -> None:
    token = user_token(api.issuer, "kim")
    for name, (body, err) in refusals(api, stranger).items():
        with structlog.testing.capture_logs() as events:
            response = await api.post(body)
        assert response.status_code == 400, name
        assert response.headers["content-type"] == "application/json"
        document = response.json()
        assert document["err"] == err, (name, document)
        assert isinstance(document["description"], str)
        (rejected,) = events
        assert (rejected["event"], rejected["err"], rejected["status"]) == (
            "event.rejected",
            err,
            400,
        ), name
    assert len(api.store) == 0
    assert await api.status_of(token) == 200


class CountingStore(MemoryRevocationStore):
    """A memory store that counts the cut-offs it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.cutoffs = 0

    async def revoke_subject(self, sub: str, issued_before: Any = None, *, issuer: Any = None):
        self.cutoffs += 1
        await super().revoke_subject(sub, issued_before, issuer=issuer)


@pytest.mark.anyio
async def test_a_set_delivered_again_is_acknowledged_and_not_acted_on_twice(
    issuer: DevIssuer,
) -> None:
    # RFC 8935 §2: a transmitter may send a SET again (its 202 lost on the way); the
    # recipient answers as if it had not received it before. A 400 made the transmitter
    # report a failed delivery for a SET that had been acted on.
    store = CountingStore()
    async for api in make_setup(issuer, store=store):
        kim = iss_sub(issuer, "kim")
        body = api.sign(api.claims({RISC_ACCOUNT_DISABLED: {"subject": kim}, UNKNOWN_EVENT: {}}))
        assert (await api.post(body)).status_code == 202
        with structlog.testing.capture_logs() as events:
            again = await api.post(body)
        assert again.status_code == 202
        assert again.content == b""
        assert store.cutoffs == 1  # acted on once
        (received,) = events
        assert (received["event"], received["outcome"], received["status"]) == (
            "event.received",
            "allow",
            202,
        )
        assert received["jti"] == jwt.decode(body, options={"verify_signature": False})["jti"]
        assert received["subjects"] == []
        assert received["actions"] == [
            {"event": RISC_ACCOUNT_DISABLED, "action": "ignored", "why": "already received"},
            {"event": UNKNOWN_EVENT, "action": "ignored", "why": "already received"},
        ]


@pytest.mark.anyio
async def test_the_replay_cache_is_bounded(issuer: DevIssuer) -> None:
    async for api in make_setup(issuer, replay_cache_size=2):
        bodies = [api.sign(api.claims({UNKNOWN_EVENT: {}})) for _ in range(3)]
        for body in bodies:
            assert (await api.post(body)).status_code == 202
        assert (await api.post(bodies[2])).status_code == 202  # received: not acted on
        assert len(api.receiver._seen) == 2
        # The oldest was forgotten; acting on it again is harmless (cut-offs are idempotent).
        assert (await api.post(bodies[0])).status_code == 202


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/jwt", "text/plain", "application/secevent+json"],
)
async def test_wrong_content_type_is_415(api: Setup, content_type: str | None) -> None:
    body = api.sign(api.claims({CAEP_SESSION_REVOKED: {"subject": iss_sub(api.issuer, "kim")}}))
    response = await api.post(body, content_type=content_type)
    assert response.status_code == 415
    assert response.json()["err"] == "invalid_request"
    assert len(api.store) == 0


@pytest.mark.anyio
async def test_content_type_parameters_and_case_are_tolerated(api: Setup) -> None:
    body = api.sign(api.claims({UNKNOWN_EVENT: {}}))
    response = await api.post(body, content_type="Application/SecEvent+JWT; charset=us-ascii")
    assert response.status_code == 202


@pytest.mark.anyio
async def test_huge_bodies_are_413(issuer: DevIssuer) -> None:
    async for api in make_setup(issuer, max_body_bytes=4096):
        huge = api.sign(api.claims({UNKNOWN_EVENT: {"pad": "x" * 8192}}))
        response = await api.post(huge)
        assert response.status_code == 413
        assert response.json()["err"] == "invalid_request"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed
            for _ in range(10):
                yield b"a" * 1024

        streamed = await api.client.post(
            "/events", content=chunks(), headers={"Content-Type": SET_MEDIA_TYPE}
        )
        assert streamed.status_code == 413
        lying = await api.client.post(
            "/events",
            content=b"abc",
            headers={"Content-Type": SET_MEDIA_TYPE, "Content-Length": "nope"},
        )
        assert lying.status_code in {400, 413}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [bytearray, memoryview])
async def test_bytes_like_header_values_are_read_as_their_bytes(
    api: Setup, kind: type[bytearray | memoryview]
) -> None:
    # ASGI says bytes, yet Starlette reads any bytes-like header value: a memoryview
    # Content-Type or Content-Length answered 500 (no decode(), int() refuses it).
    body = api.sign(api.claims({UNKNOWN_EVENT: {}})).encode()
    headers = [
        (b"content-type", kind(SET_MEDIA_TYPE.encode())),
        (b"content-length", kind(str(len(body)).encode())),
    ]
    scope = http_scope(headers, method="POST", path="/events")
    with structlog.testing.capture_logs() as events:
        sent = await asgi_call(api.receiver, scope, [{"type": "http.request", "body": body}])
    assert sent[0]["status"] == 202
    assert [event["event"] for event in events] == ["event.received"]


@pytest.mark.anyio
@pytest.mark.parametrize("length", [b"-1", b"+5", b"1_0", b"0x10", b"", b"\xd9\xa5"])
async def test_a_content_length_that_is_not_digits_is_refused(api: Setup, length: bytes) -> None:
    # RFC 9110 §8.6: Content-Length = 1*DIGIT. int() also reads a sign and underscores;
    # neither is a length (white space around the value is not part of it, §5.5).
    body = api.sign(api.claims({UNKNOWN_EVENT: {}})).encode()
    headers = [(b"content-type", SET_MEDIA_TYPE.encode()), (b"content-length", length)]
    scope = http_scope(headers, method="POST", path="/events")
    with structlog.testing.capture_logs() as events:
        sent = await asgi_call(api.receiver, scope, [{"type": "http.request", "body": body}])
    assert sent[0]["status"] == 400
    assert [event["event"] for event in events] == ["event.rejected"]


@pytest.mark.anyio
async def test_other_methods_are_405(api: Setup) -> None:
    response = await api.client.get("/events")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["err"] == "invalid_request"


@pytest.mark.anyio
async def test_request_fields_are_escaped_in_audit_events(api: Setup) -> None:
    # A percent-encoded carriage return or terminal escape in the path, or a C1 control in
    # X-Request-ID, must not reach the log raw (as with every other audit event).
    with structlog.testing.capture_logs() as events:
        response = await api.client.get(
            "/hooks/%0D%1B[2K event.received outcome=accepted",
            headers={"X-Request-ID": b"a\x85b"},
        )
    assert response.status_code == 405
    (rejected,) = [event for event in events if event["event"] == "event.rejected"]
    assert rejected["path"] == "/hooks/\\r\\x1b[2K event.received outcome=accepted"
    assert rejected["request_id"] == "a\\x85b"


@pytest.mark.anyio
@pytest.mark.parametrize("revoke_sessions", [False, True])
async def test_set_claims_are_escaped_in_audit_events(
    issuer: DevIssuer, revoke_sessions: bool
) -> None:
    # The SET's jti, event types, subjects and session ids are written as a verified
    # token's claims are (docs/audit-events.md): a line break or terminal escape in them
    # must not forge or garble a log line. Each is still acted on as sent.
    async for api in make_setup(issuer, revoke_sessions=revoke_sessions):
        kim = session_token(issuer, "s\x1b[2K", "kim\n")
        subject = {
            "user": iss_sub(issuer, "kim\n"),
            "session": {"format": "opaque", "id": "s\x1b[2K"},
        }
        with structlog.testing.capture_logs() as events:
            response = await api.push(
                {
                    CAEP_SESSION_REVOKED: {"subject": subject},
                    RISC_ACCOUNT_DISABLED: {"subject": {"format": "opaque", "id": "lee\u2028"}},
                    UNKNOWN_EVENT + "\r\n": {},
                },
                jti="j\nevent.received outcome=allow",
            )
        assert response.status_code == 202
        assert await api.status_of(kim) == 401
        (received,) = events
        assert received["jti"] == "j\\nevent.received outcome=allow"
        assert received["event_types"] == [
            CAEP_SESSION_REVOKED,
            RISC_ACCOUNT_DISABLED,
            UNKNOWN_EVENT + "\\r\\n",
        ]
        rendered = json.dumps(received, ensure_ascii=False)
        for raw in ("\n", "\r", "\x1b", "\u2028"):
            assert raw not in rendered
        assert received["subjects"] == (
            ["lee\\u2028"] if revoke_sessions else ["kim\\n", "lee\\u2028"]
        )


@pytest.mark.anyio
async def test_random_input_never_gets_a_500(api: Setup, stranger: DevIssuer) -> None:
    rng = random.Random(8417)
    issuer = api.issuer
    values: list[Any] = [
        None,
        True,
        0,
        -1,
        1.5,
        1e308,
        "",
        "kim",
        [],
        [1],
        {},
        {"format": None},
        {"format": "iss_sub", "iss": issuer.url, "sub": 5},
        {"format": "iss_sub", "iss": issuer.url, "sub": ""},
        {"format": "opaque"},
        {"format": "opaque", "id": ["x"]},
        {"format": "aliases", "identifiers": "x"},
        {"format": "aliases", "identifiers": [1]},
        {"format": "aliases", "identifiers": [{"format": "aliases", "identifiers": []}]},
        {"user": "kim"},
        {"user": {"user": {"format": "opaque", "id": "x"}}},
        {"subject_type": 3},
    ]
    statuses = set()
    for _ in range(150):
        claims = api.claims({rng.choice([*SUBJECT_CUTOFF_EVENTS, UNKNOWN_EVENT]): {}})
        event_type = next(iter(claims["events"]))
        for member in rng.sample(["subject", "event_timestamp", "reason_admin"], 2):
            claims["events"][event_type][member] = rng.choice(values)
        for member in rng.sample(["iat", "jti", "aud", "sub_id", "sub", "exp", "iss"], 2):
            if rng.random() < 0.3:
                claims[member] = rng.choice(values)
        body: str | bytes = api.sign(claims)
        if rng.random() < 0.2:
            raw = bytearray(body.encode())
            raw[rng.randrange(len(raw))] = rng.randrange(256)
            body = bytes(raw)
        response = await api.post(body)
        statuses.add(response.status_code)
        assert response.status_code in {202, 400}, (claims, response.text)
        if response.status_code == 400:
            assert response.json()["err"] in {
                "invalid_request",
                "invalid_key",
                "invalid_issuer",
                "invalid_audience",
                "authentication_failed",
            }
    assert statuses == {202, 400}


# -- outages: 503, and the transmitter's retry is acted on --------------------------------


class FlakyStore(MemoryRevocationStore):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def revoke_subject(self, sub: str, issued_before: Any = None, *, issuer: Any = None):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store down")
        await super().revoke_subject(sub, issued_before, issuer=issuer)


@pytest.mark.anyio
async def test_store_failure_is_503_and_the_retry_is_acted_on(issuer: DevIssuer) -> None:
    store = FlakyStore()
    async for api in make_setup(issuer, store=store):
        token = user_token(issuer, "kim")
        body = api.sign(api.claims({RISC_ACCOUNT_DISABLED: {"subject": iss_sub(issuer, "kim")}}))
        with structlog.testing.capture_logs() as events:
            failed = await api.post(body)
        assert failed.status_code == 503
        assert failed.headers["retry-after"]
        assert "err" not in failed.json()
        assert (events[0]["event"], events[0]["status"]) == ("event.rejected", 503)
        assert "store down" in events[0]["reason"]
        assert (await api.post(body)).status_code == 202  # the same jti, now acted on
        # The cut-off went to the receiver's store; the guard's own store is separate here.
        assert len(store) == 1
        assert await api.status_of(token) == 200


class StalledStore(MemoryRevocationStore):
    """A store whose first write hangs until released, then fails (Redis timing out)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.stalls = 1

    async def revoke_subject(self, sub: str, issued_before: Any = None, *, issuer: Any = None):
        if self.stalls:
            self.stalls -= 1
            self.entered.set()
            await self.release.wait()
            raise TimeoutError("store timed out")
        await super().revoke_subject(sub, issued_before, issuer=issuer)


@pytest.mark.anyio
async def test_a_copy_sent_while_the_set_is_in_flight_is_asked_to_retry(
    issuer: DevIssuer,
) -> None:
    # The transmitter gave up waiting and sent the SET again while the first delivery was
    # still at the store. The copy cannot be refused as received: the first delivery may
    # yet fail, and a transmitter does not retry a 400. It is asked to retry (503).
    store = StalledStore()
    async for api in make_setup(issuer, store=store):
        body = api.sign(api.claims({RISC_ACCOUNT_DISABLED: {"subject": iss_sub(issuer, "kim")}}))
        first = asyncio.ensure_future(api.post(body))
        await store.entered.wait()
        with structlog.testing.capture_logs() as events:
            copy = await api.post(body)
        assert copy.status_code == 503
        assert copy.headers["retry-after"]
        assert "err" not in copy.json()
        assert (events[0]["event"], events[0]["status"]) == ("event.rejected", 503)
        store.release.set()
        assert (await first).status_code == 503
        assert (await api.post(body)).status_code == 202  # the retry is acted on
        assert len(store) == 1
        assert (await api.post(body)).status_code == 202  # and only then received (RFC 8935 §2)
        assert len(store) == 1


@pytest.mark.anyio
async def test_a_set_cancelled_at_the_store_is_acted_on_when_sent_again(
    issuer: DevIssuer,
) -> None:
    # The server cancelled the request (shutting down, or the client went away) while the
    # store was written: nothing was acknowledged, so the transmitter's retry must be acted
    # on, not refused as received.
    store = StalledStore()
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"nothing is answered, yet {message} was sent")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/events",
        "headers": [(b"content-type", SET_MEDIA_TYPE.encode())],
    }
    async for api in make_setup(issuer, store=store):
        body = api.sign(api.claims({RISC_ACCOUNT_DISABLED: {"subject": iss_sub(issuer, "kim")}}))
        messages.append({"type": "http.request", "body": body.encode(), "more_body": False})
        delivery = asyncio.ensure_future(api.receiver(scope, receive, send))
        await store.entered.wait()
        delivery.cancel()
        with pytest.raises(asyncio.CancelledError):
            await delivery
        assert (await api.post(body)).status_code == 202
        assert len(store) == 1


@pytest.mark.anyio
async def test_keys_unavailable_is_503(issuer: DevIssuer) -> None:
    issuer.overrides[issuer.jwks_path] = Override(status=500, body=b"{}")
    async for api in make_setup(issuer):
        body = api.sign(api.claims({UNKNOWN_EVENT: {}}))
        response = await api.post(body)
        assert response.status_code == 503
        assert "retry-after" in response.headers
        issuer.overrides.clear()


# -- configuration and plumbing ------------------------------------------------------------


def test_configuration_is_checked(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard()
    with pytest.raises(ConfigurationError):
        SecurityEventReceiver(guard="guard", audience=RECEIVER)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        SecurityEventReceiver(guard=guard, audience="")
    with pytest.raises(ConfigurationError):
        SecurityEventReceiver(guard=guard, audience=[])
    with pytest.raises(ConfigurationError):
        SecurityEventReceiver(guard=guard, audience=RECEIVER, max_body_bytes=10)
    for events in ([""], [CAEP_SESSION_REVOKED, 7]):
        with pytest.raises(ConfigurationError, match="events"):
            SecurityEventReceiver(guard=guard, audience=RECEIVER, events=events)  # type: ignore[list-item]
    introspecting = session_issuer.guard(
        revocation=IntrospectionRevocationStore(
            Introspector("https://as.example/i", client_id="a", client_secret="b")
        )
    )
    with pytest.raises(ConfigurationError, match="revoke_subject"):
        SecurityEventReceiver(guard=introspecting, audience=RECEIVER)
    with pytest.raises(ConfigurationError, match="revoke_sessions"):
        SecurityEventReceiver(guard=guard, audience=RECEIVER, revoke_sessions="false")  # type: ignore[arg-type]
    store = MemoryRevocationStore()
    receiver = SecurityEventReceiver(guard=introspecting, audience=RECEIVER, store=store)
    assert receiver.store is store
    assert RECEIVER in repr(receiver)


@pytest.mark.anyio
async def test_lifespan_and_websocket_scopes(session_issuer: DevIssuer) -> None:
    receiver = SecurityEventReceiver(guard=session_issuer.guard(), audience=RECEIVER)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with structlog.testing.capture_logs() as events:
        await receiver({"type": "lifespan"}, receive, send)
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert events == []  # no decision: no event
    sent.clear()
    with structlog.testing.capture_logs() as events:
        scope = {"type": "websocket", "path": "/", "client": ("192.0.2.7", 4000)}
        await receiver(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    # A refusal like any other: one event, as the middleware audits a handshake.
    assert events == [
        {
            "event": "event.rejected",
            "log_level": "warning",
            "outcome": "deny",
            "status": 405,
            "err": "invalid_request",
            "reason": "websocket handshake, not a POST",
            "method": "WEBSOCKET",
            "path": "/",
            "client": "192.0.2.7",
            "request_id": None,
        }
    ]


@pytest.mark.anyio
async def test_a_client_that_disconnects_gets_no_answer(session_issuer: DevIssuer) -> None:
    receiver = SecurityEventReceiver(guard=session_issuer.guard(), audience=RECEIVER)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", SET_MEDIA_TYPE.encode())],
    }
    with structlog.testing.capture_logs() as events:
        await receiver(scope, receive, send)
    assert sent == []
    # Nothing answered (status null), but the SET was not taken: one event says so.
    assert events == [
        {
            "event": "event.rejected",
            "log_level": "warning",
            "outcome": "deny",
            "status": None,
            "err": "invalid_request",
            "reason": "client disconnected before the SET was read",
            "method": "POST",
            "path": "/",
            "client": None,
            "request_id": None,
        }
    ]


# -- the guard's signature step on its own --------------------------------------------------


@pytest.mark.anyio
async def test_verify_signed_checks_only_the_signature(issuer: DevIssuer) -> None:
    guard = issuer.guard(refresh=RefreshPolicy(cooldown=0))
    claims = {"iss": "anyone", "events": {}}  # no exp, no aud: not an access token
    header, verified = await guard.verify_signed(issuer.sign(claims, headers={"typ": "x"}))
    assert verified == claims
    assert header["typ"] == "x"
    assert guard.verify_signed_sync(issuer.sign(claims))[1] == claims
    with pytest.raises(BadSignatureError):
        await guard.verify_signed(tamper(issuer.sign(claims), iss="someone"))
    with pytest.raises(UnsupportedAlgorithmError):
        guard.verify_signed_sync(compact({"alg": "none"}, claims))
    # A rotated key is fetched as for access tokens (an unknown kid triggers a refresh).
    issuer.rotate("ES256")
    assert (await guard.verify_signed(issuer.sign(claims)))[1] == claims
    issuer.rotate("ES256")
    assert guard.verify_signed_sync(issuer.sign(claims))[1] == claims


def test_a_header_returned_by_verify_signed_is_the_callers_own(issuer: DevIssuer) -> None:
    guard = issuer.guard()
    claims = {"iss": "anyone", "events": {}}
    header, _ = guard.verify_signed_sync(issuer.sign(claims))
    header["alg"] = "none"  # a caller changing it must not change how later tokens parse
    header["kid"] = "elsewhere"
    again, verified = guard.verify_signed_sync(issuer.sign(claims))
    assert verified == claims
    assert again["alg"] == "ES256"
    assert again["kid"] != "elsewhere"


def test_verify_signed_fails_closed_without_keys(issuer: DevIssuer) -> None:
    issuer.overrides[issuer.jwks_path] = Override(status=500)
    with pytest.raises(KeySetUnavailableError):
        issuer.guard().verify_signed_sync(issuer.sign({"a": 1}))


def test_verify_signed_with_static_keys_and_hmac(issuer: DevIssuer) -> None:
    secret = "s" * 32
    guard = BearerGuard(
        issuer="https://idp.example",
        audience=RECEIVER,
        keys=issuer.jwks(),
        algorithms=["ES256", "HS256"],
        secret=secret,
    )
    assert guard.verify_signed_sync(issuer.sign({"a": 1}))[1] == {"a": 1}
    assert guard.verify_signed_sync(jwt.encode({"b": 2}, secret, algorithm="HS256"))[1] == {"b": 2}


# -- the pure plan ------------------------------------------------------------------------


def plan(claims: dict[str, Any], *, revoke_sessions: bool = True, **header: Any) -> Any:
    return plan_security_event(
        {"typ": "secevent+jwt", **header},
        claims,
        issuer="https://idp.example",
        audiences=frozenset({RECEIVER}),
        now=1_700_000_000.0,
        leeway=30.0,
        revoke_sessions=revoke_sessions,
    )


def test_plan_of_a_set() -> None:
    result = plan(
        {
            "iss": "https://idp.example",
            "aud": [RECEIVER, "other"],
            "iat": 1_700_000_000,
            "jti": "j-1",
            "sub_id": {"format": "opaque", "id": "kim"},
            "events": {
                CAEP_SESSION_REVOKED: {"event_timestamp": 1_699_999_990},
                CAEP_CREDENTIAL_CHANGE: {},
                UNKNOWN_EVENT: {},
            },
        },
        typ="application/SECEVENT+jwt",
    )
    assert result.jti == "j-1"
    assert [(cut.subject, cut.issued_before) for cut in result.cutoffs] == [
        ("kim", 1_699_999_990.0),
        ("kim", 1_700_000_000.0),
    ]
    assert [ignored.event_type for ignored in result.ignored] == [UNKNOWN_EVENT]
    assert result.event_types == (CAEP_SESSION_REVOKED, CAEP_CREDENTIAL_CHANGE, UNKNOWN_EVENT)
    assert result.sessions == ()


def test_plan_takes_nbf_with_the_leeway() -> None:
    # RFC 7519 §4.1.5: from nbf on (less the leeway); before it, not processed at all.
    claims = {
        "iss": "https://idp.example",
        "aud": RECEIVER,
        "iat": 1_699_999_990,
        "jti": "j-1",
        "sub": "kim",
        "events": {RISC_ACCOUNT_DISABLED: {}},
    }
    for nbf in (1_699_999_990, 1_700_000_030):
        assert plan({**claims, "nbf": nbf}).cutoffs[0].subject == "kim"
    with pytest.raises(SecurityEventError, match="not yet valid") as refused:
        plan({**claims, "nbf": 1_700_000_031})
    assert refused.value.err == "invalid_request"


def test_plan_of_a_revoked_session() -> None:
    user = {
        "format": "aliases",
        "identifiers": [{"format": "opaque", "id": "kim"}, {"format": "email", "email": "k@x"}],
    }
    result = plan(
        {
            "iss": "https://idp.example",
            "aud": RECEIVER,
            "iat": 1_700_000_000,
            "jti": "j-2",
            "events": {
                CAEP_SESSION_REVOKED: {
                    "subject": {"session": {"format": "opaque", "id": "s-1"}, "user": user}
                },
            },
        }
    )
    assert result.cutoffs == ()
    assert result.sessions == (
        SessionCutoff(CAEP_SESSION_REVOKED, "s-1", ("kim",), 1_700_000_000.0),
    )


def test_plan_of_a_malformed_session_without_session_revocation() -> None:
    claims = {
        "iss": "https://idp.example",
        "aud": RECEIVER,
        "iat": 1_700_000_000,
        "jti": "j-3",
        "events": {
            CAEP_SESSION_REVOKED: {
                "subject": {
                    "session": {"format": "opaque"},
                    "user": {"format": "opaque", "id": "kim"},
                }
            },
        },
    }
    with pytest.raises(SecurityEventError, match="session identifier"):
        plan(claims)
    # Not revoking sessions, the receiver does not use the session: its user is cut off.
    result = plan(claims, revoke_sessions=False)
    assert [(cut.subject, cut.issued_before) for cut in result.cutoffs] == [
        ("kim", 1_700_000_000.0)
    ]
    assert result.sessions == ()


def test_plan_errors_carry_fixed_descriptions() -> None:
    with pytest.raises(SecurityEventError) as caught:
        plan({"iss": "https://evil.example"})
    assert caught.value.err == "invalid_issuer"
    assert "evil" not in caught.value.description
    assert "evil" in caught.value.detail


def test_exports_are_sorted_and_resolve() -> None:
    import bearerguard.events as module

    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda item: (not item.isupper(), item))
    assert all(hasattr(module, item) for item in exported)
