"""Every refusal reason, through the ASGI and the WSGI middleware, against the audit schema.

Each request makes exactly one event, with the fields docs/audit-events.md lists for it,
the reason and status of its table, and no value holding the token or its signature.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bearerguard import BearerGuard
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.dpop import DPoPPolicy
from bearerguard.mtls import CertificateBinding
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from bearerguard.token import AccessToken
from bearerguard.usage import MemoryUsageMonitor, UsagePolicy
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.helpers import compact
from tests.test_docs import check_documented_fields

Get = Callable[[dict[str, str], str], int]


class FailingStore:
    """An application's revocation store whose backend is down."""

    nonblocking = True

    async def is_revoked(self, token: AccessToken) -> bool:
        raise ConnectionError("store down")

    def is_revoked_sync(self, token: AccessToken) -> bool:
        raise ConnectionError("store down")


def serve_asgi(guard: BearerGuard) -> Get:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(
        routes=[Route("/", hello)], middleware=[Middleware(BearerGuardMiddleware, guard=guard)]
    )
    client = TestClient(app)

    def get(headers: dict[str, str], query: str) -> int:
        return client.get("/?" + query, headers=headers).status_code

    return get


def serve_wsgi(guard: BearerGuard) -> Get:
    def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    app = BearerGuardWSGIMiddleware(hello, guard=guard)

    def get(headers: dict[str, str], query: str) -> int:
        seen: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "QUERY_STRING": query,
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.input": io.BytesIO(b""),
            **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()},
        }
        b"".join(app(environ, lambda status, _headers: seen.append(status)))
        return int(seen[0].split()[0])

    return get


def _cases(issuer: DevIssuer) -> Iterator[tuple[str, int, dict[str, Any], str, str]]:
    """(reason, status, guard options, token, query string) for each refusal."""
    now = int(time.time())
    store = MemoryRevocationStore()
    yield "missing_token", 401, {}, "", ""
    yield "invalid_request", 400, {}, "", "access_token=" + issuer.mint()
    yield "malformed_token", 401, {}, "a.b.c", ""
    forged = compact({"alg": "HS256", "typ": "at+jwt"}, issuer.claims(), b"signature")
    yield "unsupported_algorithm", 401, {}, forged, ""
    yield "unknown_key", 401, {}, issuer.mint_forged(kid="never-published"), ""
    yield "bad_signature", 401, {}, issuer.mint_forged(), ""
    yield "expired", 401, {}, issuer.mint_expired(), ""
    yield "not_yet_valid", 401, {}, issuer.mint_not_yet_valid(), ""
    yield "too_old", 401, {"max_age": 60}, issuer.mint(iat=now - 3600), ""
    yield "invalid_issuer", 401, {}, issuer.mint(iss="https://other.example"), ""
    yield "invalid_audience", 401, {}, issuer.mint_for_audience("https://other.example"), ""
    typed = issuer.mint(headers={"typ": "secevent+jwt"})
    yield "invalid_type", 401, {}, typed, ""
    yield "invalid_claim", 401, {"required_claims": ["tenant"]}, issuer.mint(), ""
    yield "revoked", 401, {"revocation": store}, issuer.mint_revoked(store), ""
    yield "invalid_token", 401, {"dpop": DPoPPolicy(mode="required")}, issuer.mint(), ""
    bound = {"mtls": CertificateBinding(source="header", required=True)}
    yield "certificate_binding", 401, bound, issuer.mint(), ""
    yield "revocation_unavailable", 503, {"revocation": FailingStore()}, issuer.mint(), ""


SERVERS = [pytest.param(serve_asgi, id="asgi"), pytest.param(serve_wsgi, id="wsgi")]


@pytest.mark.parametrize("serve", SERVERS)
def test_each_refusal_makes_one_documented_event_without_the_token(
    session_issuer: DevIssuer, serve: Callable[[BearerGuard], Get]
) -> None:
    for reason, status, options, token, query in _cases(session_issuer):
        guard = session_issuer.guard(**options)
        get = serve(guard)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with structlog.testing.capture_logs() as events:
            assert get(headers, query) == status, reason
        assert len(events) == 1, (reason, events)
        assert events[0]["reason"] == reason, events
        assert events[0]["status"] == status
        check_documented_fields(events)
        secret = query.partition("=")[2] or token
        for part in (secret, secret.rpartition(".")[2]):
            if len(part) >= 8:
                assert part not in repr(events[0]), (reason, events[0])


@pytest.mark.parametrize("serve", SERVERS)
def test_keys_unavailable_makes_one_documented_event(
    session_issuer: DevIssuer, serve: Callable[[BearerGuard], Get]
) -> None:
    offline = BearerGuard(issuer="http://127.0.0.1:9", audience=session_issuer.audience)
    token = session_issuer.mint()
    with structlog.testing.capture_logs() as events:
        assert serve(offline)({"Authorization": f"Bearer {token}"}, "") == 503
    assert [(event["event"], event["reason"]) for event in events] == [
        ("auth.unavailable", "keys_unavailable")
    ]
    check_documented_fields(events)
    assert token.rpartition(".")[2] not in repr(events)


@pytest.mark.parametrize("serve", SERVERS)
def test_a_dpop_request_without_its_proof_makes_one_documented_event(
    session_issuer: DevIssuer, serve: Callable[[BearerGuard], Get]
) -> None:
    token = session_issuer.mint()
    get = serve(session_issuer.guard(dpop=DPoPPolicy()))
    with structlog.testing.capture_logs() as events:
        assert get({"Authorization": f"DPoP {token}"}, "") == 401
    assert [(event["reason"], event["binding"]) for event in events] == [
        ("invalid_dpop_proof", "dpop")
    ]
    check_documented_fields(events)
    assert token.rpartition(".")[2] not in repr(events)


@pytest.mark.parametrize("serve", SERVERS)
def test_a_token_refused_for_its_usage_makes_its_anomaly_and_its_refusal(
    session_issuer: DevIssuer, serve: Callable[[BearerGuard], Get]
) -> None:
    # The anomaly (once a window) and the refusal of the request (docs/deployment.md).
    monitor = MemoryUsageMonitor(UsagePolicy(max_uses_per_token=1, action="reject"))
    get = serve(session_issuer.guard(usage=monitor))
    token = session_issuer.mint()
    assert get({"Authorization": f"Bearer {token}"}, "") == 200
    with structlog.testing.capture_logs() as events:
        assert get({"Authorization": f"Bearer {token}"}, "") == 401
    assert [(event["event"], event["reason"]) for event in events] == [
        ("token.anomaly", "usage_anomaly"),
        ("token.rejected", "usage_anomaly"),
    ]
    assert events[0]["status"] == events[1]["status"] == 401
    assert (events[0]["method"], events[0]["path"]) == ("GET", "/")
    check_documented_fields(events)
    assert token.rpartition(".")[2] not in repr(events)
