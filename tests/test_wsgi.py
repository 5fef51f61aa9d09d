"""WSGI specifics: environ handling, thread-safe key fetching, framework responders."""

from __future__ import annotations

import importlib
import inspect
import io
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import flask
import httpx
import pytest
import structlog

from bearerguard import AccessToken, RefreshPolicy, get_access_token, requires_scopes
from bearerguard._context import current_auth
from bearerguard.dpop import DPoPPolicy
from bearerguard.errors import ConfigurationError, KeySetUnavailableError, UnknownKeyError
from bearerguard.flask import protect
from bearerguard.guard import BearerGuard
from bearerguard.metadata import WELL_KNOWN_PATH
from bearerguard.revocation.redis import RedisRevocationStore
from bearerguard.testing import DevIssuer, Override
from bearerguard.wsgi import (
    BearerGuardWSGIMiddleware,
    plain_response,
    responder_for,
    serve_metadata,
)
from tests.helpers import serving, until
from tests.redis_server import RedisServer


def hello_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def call(app: Any, **environ: Any) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"] = status
        seen["headers"] = dict(headers)

    base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
    }
    body = b"".join(app({**base, **environ}, start_response))
    return seen["status"], seen["headers"], body


def test_joined_duplicate_headers_are_invalid_request(session_issuer: DevIssuer) -> None:
    app = BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard())
    token = session_issuer.mint()
    status, headers, _ = call(app, HTTP_AUTHORIZATION=f"Bearer {token}, Bearer {token}")
    assert status == "400 Bad Request"
    assert 'error="invalid_request"' in headers["www-authenticate"]


def test_a_percent_encoded_access_token_name_is_a_query_token(session_issuer: DevIssuer) -> None:
    # As over ASGI: the application decodes access%5Ftoken to access_token, cached or not.
    app = BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard())
    token = session_issuer.mint()
    header = f"Bearer {token}"
    for query in ("access%5Ftoken", "%61ccess_token"):
        status, _, _ = call(app, HTTP_AUTHORIZATION=header, QUERY_STRING=f"{query}={token}")
        assert status.startswith("400"), query
    assert call(app, HTTP_AUTHORIZATION=header)[0].startswith("200")  # now cached
    for query in ("access%5Ftoken", "%61ccess_token"):
        status, _, _ = call(app, HTTP_AUTHORIZATION=header, QUERY_STRING=f"{query}={token}")
        assert status.startswith("400"), query


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("Basic dXNlcjpwYXNz,Bearer {expired}", "400 Bad Request"),
        ("Bearer {expired}, Basic dXNlcjpwYXNz", "400 Bad Request"),
        ("Basic dXNlcjpwYXNz", "200 OK"),  # not Bearer: no credentials, a public path
        ('Digest username="u", realm="a, b", nonce="n"', "200 OK"),  # one value, with commas
        ('Digest username="Doe, John Q", realm="r"', "200 OK"),  # a quoted comma, then words
    ],
)
def test_joined_values_are_split_back_as_over_asgi(
    session_issuer: DevIssuer, value: str, status: str
) -> None:
    app = BearerGuardWSGIMiddleware(
        hello_app, guard=session_issuer.guard(), public_paths=["/health"]
    )
    header = value.format(expired=session_issuer.mint_expired())
    assert call(app, PATH_INFO="/health", HTTP_AUTHORIZATION=header)[0] == status


def test_a_store_subclass_overriding_the_synchronous_check_is_asked_on_every_reuse(
    session_issuer: DevIssuer, redis_server: RedisServer, redis_namespace: str
) -> None:
    blocked: set[str] = set()

    class DenySubjects(RedisRevocationStore):
        def is_revoked_sync(self, token: AccessToken) -> bool:
            return token.subject in blocked or super().is_revoked_sync(token)

    store = DenySubjects(redis_server.url, namespace=redis_namespace)
    try:
        app = BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard(revocation=store))
        token = session_issuer.mint(sub="mallory")
        authorization = f"Bearer {token}"
        assert [call(app, HTTP_AUTHORIZATION=authorization)[0] for _ in range(2)] == ["200 OK"] * 2
        blocked.add("mallory")  # the inherited is_revoked_now knows nothing of it
        for _ in range(3):
            assert call(app, HTTP_AUTHORIZATION=authorization)[0] == "401 Unauthorized"
    finally:
        store.close()


def test_odd_environ_values_never_crash(session_issuer: DevIssuer) -> None:
    app = BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard())
    for value in ["Bearer \u0100\u2603", "Bearer \udcff", "\x00", ""]:
        status, _, _ = call(app, HTTP_AUTHORIZATION=value)
        assert status[:3] in {"400", "401"}, value
    status, _, _ = call(app, PATH_INFO="/caf\xc3\xa9", QUERY_STRING="x=\u2603")
    assert status.startswith("401")


@pytest.mark.parametrize(
    ("environ", "field", "logged"),
    [
        ({"REQUEST_METHOD": b"GET"}, "method", "GET"),
        ({"PATH_INFO": b"/caf\xc3\xa9"}, "path", "/caf\u00e9"),
        ({"REMOTE_ADDR": b"10.0.0.7"}, "client", "10.0.0.7"),
        ({"REMOTE_ADDR": bytearray(b"10.0.0.7")}, "client", "10.0.0.7"),
        ({"HTTP_X_REQUEST_ID": b"r-\n1"}, "request_id", "r-\\n1"),
        ({"HTTP_X_REQUEST_ID": memoryview(b"r-1")}, "request_id", "r-1"),
        # Neither text nor bytes: no value, rather than its repr.
        ({"REMOTE_ADDR": 7}, "client", None),
        ({"HTTP_X_REQUEST_ID": ["r-1"]}, "request_id", None),
        ({"REQUEST_METHOD": None}, "method", ""),
    ],
)
@pytest.mark.parametrize("valid", [True, False])
def test_environ_values_given_as_bytes_are_read_as_the_text_they_stand_for(
    session_issuer: DevIssuer, environ: dict[str, Any], field: str, logged: Any, valid: bool
) -> None:
    # PEP 3333 says native strings; a server outside it may hand bytes over. A bytes
    # REMOTE_ADDR or X-Request-ID made an accepted request a 500 and lost a refusal's event
    # (the audit log truncates and escapes text); a bytes method or path was logged as its
    # repr ("b'GET'"). Every decision still emits exactly one event, its fields text.
    app = BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard())
    token = session_issuer.mint() if valid else session_issuer.mint_expired()
    with structlog.testing.capture_logs() as events:
        status, _, _ = call(app, HTTP_AUTHORIZATION=f"Bearer {token}", **environ)
    assert status == ("200 OK" if valid else "401 Unauthorized")
    (event,) = events
    assert event["event"] == ("token.accepted" if valid else "token.rejected")
    assert event[field] == logged


def test_an_authorization_given_as_bytes_is_read_as_its_text(session_issuer: DevIssuer) -> None:
    # A bytes Authorization value was a 500 (str.startswith on bytes), first use or cached.
    app = BearerGuardWSGIMiddleware(
        hello_app, guard=session_issuer.guard(), public_paths=["/health"]
    )
    token = session_issuer.mint(sub="kim")
    for _ in range(2):  # verified, then from the cache
        with structlog.testing.capture_logs() as events:
            status, _, _ = call(app, HTTP_AUTHORIZATION=f"Bearer {token}".encode())
        assert status == "200 OK"
        assert [(e["event"], e["sub"]) for e in events] == [("token.accepted", "kim")]
    expired = f"Bearer {session_issuer.mint_expired()}".encode()
    assert call(app, HTTP_AUTHORIZATION=expired)[0] == "401 Unauthorized"
    # A public path given as bytes is that path; a query token given as bytes is refused.
    assert call(app, PATH_INFO=b"/health")[0] == "200 OK"
    environ = {"PATH_INFO": b"/health", "QUERY_STRING": f"access_token={token}".encode()}
    assert call(app, **environ)[0] == "400 Bad Request"


@pytest.mark.parametrize(
    ("public_paths", "message"),
    [
        (["/health?full=1"], "query string"),
        (["/health#top"], "fragment"),
        (["/health\n"], "white space"),
        (["/caf%C3%A9"], "decoded path"),
        ("/health", "a list of paths"),
    ],
)
def test_a_public_path_that_can_never_match_is_refused(
    session_issuer: DevIssuer, public_paths: Any, message: str
) -> None:
    # PATH_INFO is the decoded path alone: such an entry would keep its path protected.
    guard = session_issuer.guard()
    with pytest.raises(ConfigurationError, match=message):
        BearerGuardWSGIMiddleware(hello_app, guard=guard, public_paths=public_paths)
    with pytest.raises(ConfigurationError, match=message):
        protect(flask.Flask(__name__), guard=guard, public_paths=public_paths)


def test_the_root_reached_without_a_slash_is_the_public_root(session_issuer: DevIssuer) -> None:
    # PATH_INFO is empty for a request to the mount point itself (SCRIPT_NAME "/api", request
    # "/api"): Django serves its "/" route for it, so a public "/" was refused there (401).
    app = BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard(), public_paths=["/"])
    assert call(app, SCRIPT_NAME="/api", PATH_INFO="")[0] == "200 OK"
    assert call(app, SCRIPT_NAME="/api", PATH_INFO="/")[0] == "200 OK"
    guarded = BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard())
    assert call(guarded, SCRIPT_NAME="/api", PATH_INFO="")[0] == "401 Unauthorized"


def test_a_dpop_proof_that_is_not_latin_1_is_refused_not_a_500(session_issuer: DevIssuer) -> None:
    # As an Authorization value that is not latin-1 (above): refused as the client's error.
    app = BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard(dpop=DPoPPolicy()))
    token = session_issuer.mint()
    for proof in ["\u0100", "a.b.\udcff"]:
        status, headers, _ = call(app, HTTP_AUTHORIZATION=f"DPoP {token}", HTTP_DPOP=proof)
        assert status == "401 Unauthorized", proof
        assert 'error="invalid_dpop_proof"' in headers["www-authenticate"]


def test_plain_wsgi_app_and_audit(session_issuer: DevIssuer) -> None:
    app = BearerGuardWSGIMiddleware(
        hello_app, guard=session_issuer.guard(), public_paths=["/health"]
    )
    with structlog.testing.capture_logs() as events:
        status, _, body = call(
            app,
            HTTP_AUTHORIZATION=f"Bearer {session_issuer.mint(sub='kim')}",
            HTTP_X_REQUEST_ID="r-1",
        )
    assert (status, body) == ("200 OK", b"hello")
    (event,) = events
    assert event["event"] == "token.accepted"
    assert (event["sub"], event["request_id"], event["client"]) == ("kim", "r-1", "127.0.0.1")
    assert call(app, PATH_INFO="/health")[0] == "200 OK"


def test_store_without_a_sync_side_is_refused_at_construction(session_issuer: DevIssuer) -> None:
    class AsyncOnly:
        async def is_revoked(self, token: AccessToken) -> bool:
            return False

    with pytest.raises(ConfigurationError, match="synchronous"):
        BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard(revocation=AsyncOnly()))


def test_a_responder_that_cannot_be_called_is_refused_at_construction(
    session_issuer: DevIssuer,
) -> None:
    # Taken before, the first scope refusal inside the app was a 500.
    for respond in ["json", 403]:
        with pytest.raises(ConfigurationError, match="respond"):
            BearerGuardWSGIMiddleware(
                hello_app,
                guard=session_issuer.guard(),
                respond=respond,  # type: ignore[arg-type]
            )


def test_warm_up_at_construction(issuer: DevIssuer) -> None:
    guard = issuer.guard()
    BearerGuardWSGIMiddleware(hello_app, guard=guard, warm_up=True)
    assert guard.key_ids
    assert issuer.requests == ["/.well-known/openid-configuration", "/jwks.json"]


def test_failed_warm_up_does_not_prevent_start(issuer: DevIssuer) -> None:
    issuer.overrides["/jwks.json"] = Override(status=500)
    app = BearerGuardWSGIMiddleware(hello_app, guard=issuer.guard(), warm_up=True)
    status, headers, _ = call(app, HTTP_AUTHORIZATION=f"Bearer {issuer.mint()}")
    assert status == "503 Service Unavailable"
    assert headers["retry-after"] == "5"


def test_concurrent_cold_threads_share_one_fetch(issuer: DevIssuer) -> None:
    issuer.overrides["/jwks.json"] = Override(body=issuer.jwks_bytes(), delay=0.3)
    guard = issuer.guard(jwks_uri=issuer.jwks_uri)
    token = issuer.mint()
    results: list[str] = []

    def worker() -> None:
        results.append(guard.authenticate_sync(token).subject or "")

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["user-1"] * 20
    assert issuer.fetch_count("/jwks.json") == 1


def test_threads_with_usable_keys_do_not_wait_for_a_refresh(issuer: DevIssuer) -> None:
    clock = [time.time()]
    guard = issuer.guard(jwks_uri=issuer.jwks_uri, clock=lambda: clock[0])
    guard.warm_up_sync()
    clock[0] += 3600  # the set is stale but usable; the next fetch is slow
    issuer.overrides["/jwks.json"] = Override(body=issuer.jwks_bytes(), delay=1.0)
    slow = threading.Thread(target=guard.authenticate_sync, args=(issuer.mint(expires_in=7200),))
    slow.start()
    # The slow refresh under way (its request received), not guessed by a sleep: a thread
    # started late would leave the refresh to this one.
    assert until(lambda: issuer.fetch_count("/jwks.json") == 2, timeout=5)
    started = time.perf_counter()
    guard.authenticate_sync(issuer.mint(expires_in=7200))
    assert time.perf_counter() - started < 0.5
    slow.join()


def test_a_slow_key_set_blocks_no_longer_than_the_fetch_timeout(issuer: DevIssuer) -> None:
    from bearerguard import FetchPolicy

    issuer.overrides["/jwks.json"] = Override(body=issuer.jwks_bytes(), delay=2.0)
    guard = issuer.guard(jwks_uri=issuer.jwks_uri, fetch=FetchPolicy(timeout=0.3))
    started = time.perf_counter()
    with pytest.raises(KeySetUnavailableError):
        guard.authenticate_sync(issuer.mint())
    assert time.perf_counter() - started < 1.5


def test_a_thread_that_waited_for_a_fetch_does_not_fetch_again(issuer: DevIssuer) -> None:
    # The fetch fails at its timeout, by when the cooldown has passed: a thread that waited
    # for it goes on without a second fetch, so it too blocks at most one fetch timeout.
    from bearerguard import FetchPolicy

    issuer.overrides["/jwks.json"] = Override(body=issuer.jwks_bytes(), delay=2.0)
    guard = issuer.guard(
        jwks_uri=issuer.jwks_uri,
        fetch=FetchPolicy(timeout=0.5),
        refresh=RefreshPolicy(cooldown=0.5),
    )
    token = issuer.mint()

    def fetching() -> None:
        with pytest.raises(KeySetUnavailableError):
            guard.authenticate_sync(token)

    first = threading.Thread(target=fetching)
    first.start()
    assert until(lambda: issuer.fetch_count("/jwks.json") == 1, timeout=5)  # its fetch under way
    started = time.perf_counter()
    with pytest.raises(KeySetUnavailableError):
        guard.authenticate_sync(token)
    assert time.perf_counter() - started < 0.75
    first.join()
    assert issuer.fetch_count("/jwks.json") == 1


def test_unknown_kid_refreshes_then_refuses(issuer: DevIssuer) -> None:
    guard = issuer.guard(refresh=RefreshPolicy(cooldown=0))
    guard.authenticate_sync(issuer.mint())
    new_key = issuer.rotate()
    assert guard.authenticate_sync(issuer.mint()).key_id == new_key.kid
    with pytest.raises(UnknownKeyError):
        guard.authenticate_sync(issuer.mint(headers={"kid": "nobody"}))


def test_responders() -> None:
    assert responder_for(flask.Flask("x").wsgi_app).__name__ == "_flask_response"
    assert responder_for(hello_app) is plain_response
    from django.core.handlers.wsgi import WSGIHandler

    assert responder_for(WSGIHandler.__new__(WSGIHandler)).__name__ == "_django_response"


def test_flask_get_access_token_forms(session_issuer: DevIssuer) -> None:
    from bearerguard import get_access_token
    from bearerguard.flask import protect

    app = flask.Flask("forms", static_folder=None)

    @app.get("/")
    def both() -> Any:
        implicit = get_access_token()
        explicit = get_access_token(flask.request)
        return {"same": implicit is explicit, "sub": None if explicit is None else explicit.subject}

    protect(app, guard=session_issuer.guard())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        response = client.get(
            "/", headers={"Authorization": f"Bearer {session_issuer.mint(sub='lee')}"}
        )
    assert response.json() == {"same": True, "sub": "lee"}


def test_redis_components_without_a_synchronous_client_are_refused_at_construction(
    session_issuer: DevIssuer,
) -> None:
    # Built with only async_client=, each would answer every WSGI request with an error
    # (a 503, or monitoring silently off): refused when the middleware is built instead.
    import redis.asyncio as aredis

    from bearerguard.dpop import DPoPPolicy, RedisDPoPReplayStore
    from bearerguard.usage import RedisUsageMonitor, UsagePolicy

    async_client = aredis.Redis()
    for options in (
        {"revocation": RedisRevocationStore(async_client=async_client)},
        {"usage": RedisUsageMonitor(UsagePolicy(max_uses_per_token=5), async_client=async_client)},
        {"dpop": DPoPPolicy(replay=RedisDPoPReplayStore(async_client=async_client))},
    ):
        guard = session_issuer.guard(in_process=True, **options)
        with pytest.raises(ConfigurationError, match="synchronous"):
            BearerGuardWSGIMiddleware(hello_app, guard=guard)
    # With a synchronous client each is accepted.
    for options in (
        {"revocation": RedisRevocationStore("redis://127.0.0.1:1/0")},
        {"usage": RedisUsageMonitor(UsagePolicy(max_uses_per_token=5), "redis://127.0.0.1:1/0")},
        {"dpop": DPoPPolicy(replay=RedisDPoPReplayStore("redis://127.0.0.1:1/0"))},
    ):
        BearerGuardWSGIMiddleware(hello_app, guard=session_issuer.guard(in_process=True, **options))


def test_a_set_installed_during_a_reuse_check_is_never_stamped_unchecked(
    issuer: DevIssuer,
) -> None:
    # Thread A finds the key in the set, then another thread installs a set without it
    # before A stamps the entry: the stamp must name the set A checked, or the fast path
    # would reuse a token whose key is gone until that set's freshness ends.
    guard = issuer.guard(refresh=RefreshPolicy(cooldown=0))
    app = BearerGuardWSGIMiddleware(hello_app, guard=guard)
    old = issuer.key().kid
    token = issuer.mint(expires_in=3600)
    assert call(app, HTTP_AUTHORIZATION=f"Bearer {token}")[0] == "200 OK"
    issuer.rotate(issuer.key().algorithm)
    assert call(app, HTTP_AUTHORIZATION=f"Bearer {issuer.mint()}")[0] == "200 OK"  # {old, new}
    issuer.retire(old)
    lines, first = inspect.getsourcelines(BearerGuard._usable_entry)
    stamp = first + next(i for i, line in enumerate(lines) if "entry.key_set =" in line)

    previous = sys.gettrace()

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == stamp:
            sys.settrace(previous)
            frame.f_trace = None
            worker = threading.Thread(
                target=guard._refresher.refresh_sync, kwargs={"unknown_kid": True}
            )
            worker.start()  # another request's refresh: the set without the old key
            worker.join()
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code is BearerGuard._usable_entry.__code__ else None

    sys.settrace(tracer)
    try:
        assert call(app, HTTP_AUTHORIZATION=f"Bearer {token}")[0] == "200 OK"  # checked first
    finally:
        sys.settrace(previous)
    assert old not in guard.key_ids
    with structlog.testing.capture_logs() as events:
        assert call(app, HTTP_AUTHORIZATION=f"Bearer {token}")[0] == "401 Unauthorized"
    assert [event["reason"] for event in events] == ["unknown_key"]


def test_a_refusal_states_its_length(session_issuer: DevIssuer) -> None:
    guard = session_issuer.guard(in_process=True)
    app = BearerGuardWSGIMiddleware(lambda environ, start_response: [], guard=guard)
    started: list[Any] = []
    for header in (None, "Bearer not-a-jwt", "x"):
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/items",
            "QUERY_STRING": "",
            "wsgi.input": io.BytesIO(b""),
        }
        if header is not None:
            environ["HTTP_AUTHORIZATION"] = header
        started.clear()
        body = b"".join(app(environ, lambda status, headers: started.append((status, headers))))
        [(status, headers)] = started
        assert status.startswith(("400", "401"))
        assert ("content-length", str(len(body))) in headers


def test_views_keep_their_signatures_when_fastapi_is_imported(session_issuer: DevIssuer) -> None:
    # Another part of the process (a FastAPI app mounted beside, a dependency) imports
    # fastapi: Flask and Django views were given a FastAPI dependency parameter first and
    # their own made keyword-only, which tools reading signatures choke on (Django's check of
    # error handlers binds (request, exception); signature-driven validators).
    importlib.import_module("fastapi")
    from django.http import HttpRequest, HttpResponse

    from bearerguard import requires_scopes
    from bearerguard.flask import protect

    app = flask.Flask("signatures", static_folder=None)

    @app.get("/items/<int:item_id>")
    @requires_scopes("items:read")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @requires_scopes("items:read")
    def django_item(request: HttpRequest, pk: str) -> HttpResponse:
        return HttpResponse(pk)

    assert str(inspect.signature(item)) == "(item_id: 'int') -> 'dict[str, int]'"
    assert inspect.signature(django_item).bind(object(), "7").arguments["pk"] == "7"
    protect(app, guard=session_issuer.guard())
    reader = {"Authorization": f"Bearer {session_issuer.mint(scopes=['items:read'])}"}
    other = {"Authorization": f"Bearer {session_issuer.mint(scopes=['other'])}"}
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        assert client.get("/items/7", headers=reader).json() == {"id": 7}
        assert client.get("/items/7", headers=other).status_code == 403


_FORWARDED = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "api.example.com",
}


def test_proxy_fix_outside_the_middleware_gives_the_guard_the_client(
    session_issuer: DevIssuer,
) -> None:
    # Behind a TLS-terminating proxy the guard must see what ProxyFix restores, as the app
    # does: the client's address (audit, usage monitoring) and the https URL a DPoP proof
    # names (RFC 9449 §4.3 step 9).
    from werkzeug.middleware.proxy_fix import ProxyFix

    from tests.apps import build_flask_app
    from tests.test_dpop import Holder

    holder = Holder()
    app = build_flask_app(session_issuer.guard(dpop=DPoPPolicy()))  # protect() has run
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    token = session_issuer.mint(cnf={"jkt": holder.jkt})
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": holder.proof(token, url="https://api.example.com/me"),
        **_FORWARDED,
    }
    transport = httpx.WSGITransport(app=app, remote_addr="10.0.0.2")
    with (
        structlog.testing.capture_logs() as events,
        httpx.Client(transport=transport, base_url="http://10.0.0.7:8000") as client,
    ):
        assert client.get("/me", headers=headers).status_code == 200
    assert [(event["event"], event["client"]) for event in events] == [
        ("token.accepted", "203.0.113.9")
    ]


def test_proxy_fix_inside_the_middleware_is_refused(session_issuer: DevIssuer) -> None:
    # Inside, the guard saw the proxy's address and http URL while the app saw the
    # client's: audit events and usage monitoring named the proxy, every DPoP proof was
    # refused (htu mismatch).
    from werkzeug.middleware.proxy_fix import ProxyFix

    from bearerguard.flask import protect

    guard = session_issuer.guard()

    class Wrapper:
        def __init__(self, app: Any) -> None:
            self.app = app

    for inner in (ProxyFix(hello_app), Wrapper(ProxyFix(hello_app))):
        with pytest.raises(ConfigurationError, match="ProxyFix is inside"):
            BearerGuardWSGIMiddleware(inner, guard=guard)
    BearerGuardWSGIMiddleware(Wrapper(hello_app), guard=guard)
    ProxyFix(BearerGuardWSGIMiddleware(hello_app, guard=guard))

    class Unconfigured:
        # An app proxy not configured yet: every attribute read raises, __class__ too.
        def __getattribute__(self, name: str) -> Any:
            if name == "__call__":
                return object.__getattribute__(self, name)
            raise RuntimeError(f"not configured: {name}")

        def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
            return []

    BearerGuardWSGIMiddleware(Unconfigured(), guard=guard)  # starts, as before the check
    BearerGuardWSGIMiddleware(Wrapper(Unconfigured()), guard=guard)
    app = flask.Flask("proxied", static_folder=None)
    app.wsgi_app = Wrapper(ProxyFix(app.wsgi_app))  # type: ignore[method-assign]
    with pytest.raises(ConfigurationError, match=r"after protect\(app\)"):
        protect(app, guard=guard)


def test_protect_goes_inside_a_proxy_fix_already_on_the_app(session_issuer: DevIssuer) -> None:
    # Flask's documented set-up wraps app.wsgi_app in ProxyFix where the app is made, before
    # extensions run: protect() then places the guard inside it (refusing, it broke every
    # such app at start-up), so the guard sees the client, as the app does.
    from werkzeug.middleware.proxy_fix import ProxyFix

    from bearerguard import get_access_token
    from bearerguard.flask import protect

    app = flask.Flask("proxied", static_folder=None)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    app.wsgi_app = proxy = ProxyFix(app.wsgi_app, x_proto=1)  # type: ignore[method-assign]

    @app.get("/me")
    def me() -> dict[str, str]:
        token = get_access_token()
        return {"sub": token.subject if token else ""}

    middleware = protect(app, guard=session_issuer.guard(in_process=True))
    assert app.wsgi_app is proxy
    assert proxy.app.app is middleware  # inside both
    headers = {"Authorization": f"Bearer {session_issuer.mint()}", **_FORWARDED}
    transport = httpx.WSGITransport(app=app, remote_addr="10.0.0.2")
    with (
        structlog.testing.capture_logs() as events,
        httpx.Client(transport=transport, base_url="http://10.0.0.7:8000") as client,
    ):
        assert client.get("/me", headers=headers).json() == {"sub": "user-1"}
        assert client.get("/me", headers=_FORWARDED).status_code == 401
    accepted = next(event for event in events if event["event"] == "token.accepted")
    assert accepted["client"] == "203.0.113.9"


def test_a_lazy_object_beside_a_view_is_not_evaluated_at_decoration() -> None:
    # With fastapi imported, the decorator reads what the view's namespace holds to tell a
    # path operation from a Flask or Django view. isinstance() read a lazy proxy's __class__,
    # which evaluates it: a module's SimpleLazyObject (a query, a settings lookup) ran at
    # import time.
    importlib.import_module("fastapi")
    from django.utils.functional import SimpleLazyObject

    from bearerguard import requires_scopes

    evaluated: list[str] = []
    site = SimpleLazyObject(lambda: evaluated.append("site") or "example.com")

    @requires_scopes("items:read")
    def view(request: object) -> str:
        return "ok"  # pragma: no cover

    assert evaluated == []
    assert str(site) == "example.com"
    assert evaluated == ["site"]


def test_protect_refuses_proxy_fix_wrappers_in_a_loop(session_issuer: DevIssuer) -> None:
    # protect() walks the ProxyFix wrappers set on app.wsgi_app to go inside them: two that
    # wrap each other (a set-up gone wrong) hung it, and the app's start-up with it.
    from werkzeug.middleware.proxy_fix import ProxyFix

    from bearerguard.flask import protect

    app = flask.Flask("looped", static_folder=None)
    first = ProxyFix(app.wsgi_app)
    second = ProxyFix(first)
    first.app = second
    app.wsgi_app = second  # type: ignore[method-assign]
    with pytest.raises(ConfigurationError, match="ProxyFix wrappers"):
        protect(app, guard=session_issuer.guard(in_process=True))


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/health", "200 OK"),
        ("/api/me", "401 Unauthorized"),
        ("/api/api/health", "401 Unauthorized"),
    ],
)
def test_public_paths_are_app_relative_under_a_mount(
    session_issuer: DevIssuer, path: str, status: str
) -> None:
    # A WSGI app mounted under /api sees SCRIPT_NAME "/api" and PATH_INFO "/health": its
    # public "/health" is /api/health, as the ASGI middleware matches under a root_path.
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    guarded = BearerGuardWSGIMiddleware(
        hello_app, guard=session_issuer.guard(), public_paths=["/health"]
    )
    outer = DispatcherMiddleware(flask.Flask("outer"), {"/api": guarded})
    assert call(outer, PATH_INFO=path)[0] == status


def test_a_mounted_app_serves_no_metadata_inside_its_mount(session_issuer: DevIssuer) -> None:
    # RFC 9728 §3.1, RFC 8615 §3: the well-known path follows the host, never a path below
    # it. Mounted under /api (SCRIPT_NAME), the middleware also answered the document at
    # /api/.well-known/oauth-protected-resource/api, a URL no challenge names and no client
    # derives, without a token and over the app's own route there; the URL challenges name
    # reached the outer app, which answered 404. As over ASGI, the middleware now serves it
    # at the host's top only (SCRIPT_NAME empty), and serve_metadata serves it from the
    # outer app.
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client

    resource = "https://api.example/api"
    guard = session_issuer.guard(audience=None, resource=resource)

    def echo(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"app: {environ['SCRIPT_NAME']}{environ['PATH_INFO']}".encode()]

    def not_found(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    api = BearerGuardWSGIMiddleware(echo, guard=guard)
    outer = serve_metadata(DispatcherMiddleware(not_found, {"/api": api}), guard)
    client = Client(outer)
    base = "https://api.example"
    bearer = {"Authorization": f"Bearer {session_issuer.mint(aud=resource)}"}
    advertised = f"{WELL_KNOWN_PATH}/api"
    document = client.get(advertised, base_url=base)
    assert document.status_code == 200
    assert document.json["resource"] == resource
    assert client.options(advertised, base_url=base).status_code == 204  # a CORS preflight
    assert client.get(WELL_KNOWN_PATH, base_url=base).status_code == 200
    challenge = client.get("/api/items", base_url=base).headers["www-authenticate"]
    assert f'resource_metadata="{base}{advertised}"' in challenge
    for inside in (advertised, WELL_KNOWN_PATH):
        path = f"/api{inside}"
        refused = client.get(path, base_url=base)
        assert refused.status_code == 401, path
        assert "resource_metadata=" in refused.headers["www-authenticate"]
        mine = client.get(path, headers=bearer, base_url=base)  # the app's own route answers
        assert (mine.status_code, mine.text) == (200, f"app: {path}")
    # Any other path of the outer app is its own.
    assert client.get("/other", base_url=base).status_code == 404
    # At the host's top (SCRIPT_NAME empty), the middleware serves it itself, as before.
    assert call(api, PATH_INFO=advertised)[0] == "200 OK"


def test_serve_metadata_needs_a_resource(session_issuer: DevIssuer) -> None:
    with pytest.raises(ConfigurationError, match="no resource"):
        serve_metadata(hello_app, session_issuer.guard())


@pytest.mark.parametrize("path", ["/static/../me", "/static/%2e%2e/me", "/static/./x"])
def test_a_dot_segment_path_is_never_public(session_issuer: DevIssuer, path: str) -> None:
    # PATH_INFO as a server decodes it: a mounted app or a proxy that removes dot segments
    # would serve /me (RFC 3986 §5.2.4), so the token is required (fail closed).
    app = BearerGuardWSGIMiddleware(
        hello_app, guard=session_issuer.guard(), public_paths=["/static/*"]
    )
    assert call(app, PATH_INFO="/static/app.js")[0] == "200 OK"
    with structlog.testing.capture_logs() as events:
        status, headers, _ = call(app, PATH_INFO=path)
    assert status == "401 Unauthorized"
    assert "error=" not in headers["www-authenticate"]  # no token sent: a bare challenge
    assert [event["reason"] for event in events] == ["missing_token"]


def test_a_refused_query_token_is_redacted_in_the_environ_servers_log_from(
    session_issuer: DevIssuer,
) -> None:
    # gunicorn builds its access line from the environ after the app answered (%(r)s from
    # RAW_URI, %(q)s from QUERY_STRING); uWSGI-style servers set REQUEST_URI. Read here as
    # such a server does, after the response, on a real werkzeug server (which sets all
    # three). RFC 6750 §5.3. A request let in keeps them as sent.
    from werkzeug.serving import make_server

    token = session_issuer.mint(sub="ann")
    seen: list[dict[str, str]] = []
    keys = ("QUERY_STRING", "RAW_URI", "REQUEST_URI")
    guarded = BearerGuardWSGIMiddleware(
        hello_app, guard=session_issuer.guard(), public_paths=["/health"]
    )

    def logging_server(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = list(guarded(environ, start_response))
        seen.append({key: environ[key] for key in keys})
        return body

    server = make_server("127.0.0.1", 0, logging_server, threaded=False)
    with serving(server) as port:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/me?a=1&access_token={token}").status_code == 400
        assert httpx.get(f"{base}/me?access%5Ftoken={token}").status_code == 400
        assert httpx.get(f"{base}/health?access=1").status_code == 200
    assert token not in str(seen)
    assert seen == [
        {
            "QUERY_STRING": "a=1&access_token=REDACTED",
            "RAW_URI": "/me?a=1&access_token=REDACTED",
            "REQUEST_URI": "/me?a=1&access_token=REDACTED",
        },
        {
            "QUERY_STRING": "access%5Ftoken=REDACTED",
            "RAW_URI": "/me?access%5Ftoken=REDACTED",
            "REQUEST_URI": "/me?access%5Ftoken=REDACTED",
        },
        dict.fromkeys(keys[1:], "/health?access=1") | {"QUERY_STRING": "access=1"},
    ]


def test_a_refused_head_request_gets_no_content_on_the_wire(session_issuer: DevIssuer) -> None:
    # RFC 9110 §9.3.2: no content in the answer to HEAD. Flask's own responses leave it out,
    # but werkzeug's development server writes whatever the app returns: read here as a
    # client sees it, on a real server.
    from werkzeug.serving import make_server

    app = flask.Flask(__name__)
    app.add_url_rule("/items", "items", lambda: {"items": []})
    protect(app, guard=session_issuer.guard())
    server = make_server("127.0.0.1", 0, app, threaded=False)
    answers: list[bytes] = []
    with serving(server) as port:
        for header in ("", "Authorization: Bearer not-a-jwt\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(f"HEAD /items HTTP/1.1\r\nHost: t\r\n{header}\r\n".encode())
                answers.append(b"".join(iter(lambda: sock.recv(4096), b"")))
    for answer in answers:
        head, _, content = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].endswith(b" 401 Unauthorized")
        assert b"\r\nwww-authenticate: Bearer realm=" in head
        assert content == b""


class StreamedBody:
    """A WSGI body that reads the current request's token at each chunk and on close()."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(2):
            self.seen.append(_subject())
            yield b"chunk;"

    def close(self) -> None:
        self.seen.append(_subject())


def _subject() -> str | None:
    token = get_access_token()
    return None if token is None else token.subject


def test_get_access_token_while_the_body_is_iterated_and_closed(session_issuer: DevIssuer) -> None:
    # The server iterates a WSGI body after the app returned, when the middleware had
    # already reset current_auth: a streaming body's get_access_token() read None. Each
    # step now sees the request's token, close() too (PEP 3333: forwarded), and nothing is
    # left set in the server's context, whether or not it reads the body to the end.
    bodies: list[StreamedBody] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(StreamedBody())
        return bodies[-1]

    guarded = BearerGuardWSGIMiddleware(app, guard=session_issuer.guard())
    authorization = f"Bearer {session_issuer.mint(sub='streamer')}"
    status, _, body = call(guarded, HTTP_AUTHORIZATION=authorization)
    assert (status, body) == ("200 OK", b"chunk;chunk;")
    assert bodies[0].seen == ["streamer", "streamer"]
    assert current_auth.get() is None

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        pass

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "HTTP_AUTHORIZATION": authorization,
    }
    result = guarded(environ, start_response)
    assert next(iter(result)) == b"chunk;"  # the client went away after one chunk
    assert current_auth.get() is None
    result.close()  # type: ignore[attr-defined] # the server's duty (PEP 3333)
    assert bodies[1].seen == ["streamer", "streamer"]
    assert current_auth.get() is None
    with httpx.Client(transport=httpx.WSGITransport(app=guarded), base_url="http://t") as client:
        assert client.get("/", headers={"Authorization": authorization}).text == "chunk;chunk;"
    assert bodies[2].seen == ["streamer", "streamer", "streamer"]


def test_a_list_body_is_passed_on_as_it_is(session_issuer: DevIssuer) -> None:
    # Nothing of a list runs while it is sent, and a server may take its len() (one chunk:
    # a Content-Length) or a wsgi.file_wrapper for sendfile: it is not wrapped.
    body = [b"hello"]

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    guarded = BearerGuardWSGIMiddleware(app, guard=session_issuer.guard())
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "HTTP_AUTHORIZATION": f"Bearer {session_issuer.mint()}",
    }
    assert guarded(environ, lambda status, headers: None) is body


def test_get_access_token_in_a_flask_streamed_response(session_issuer: DevIssuer) -> None:
    # docs/wsgi.md told Flask users to pass the request in a streamed body: no longer needed.
    from bearerguard.flask import protect

    app = flask.Flask("streams", static_folder=None)

    @app.get("/")
    def stream() -> Any:
        def body() -> Iterator[str]:
            for _ in range(2):
                yield f"{_subject()};"

        return flask.Response(body())

    protect(app, guard=session_issuer.guard())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        response = client.get(
            "/", headers={"Authorization": f"Bearer {session_issuer.mint(sub='lee')}"}
        )
    assert response.text == "lee;lee;"


def test_a_flask_response_that_is_not_streamed_is_passed_on_as_it_is(
    session_issuer: DevIssuer,
) -> None:
    # Every Flask response is werkzeug's ClosingIterator: wrapping each cost every Flask
    # request about 1.5 µs, though a view's str, bytes or dict answer runs nothing of the
    # app's while it is sent. Such a body is passed on as it is; a streamed one, or one with
    # a call_on_close callback, is still iterated (and closed) with the request's token.
    from werkzeug.wsgi import ClosingIterator

    from bearerguard._context import BodyWithAuth
    from bearerguard.flask import protect

    app = flask.Flask("plain", static_folder=None)
    closed: list[str | None] = []

    @app.get("/")
    def plain() -> Any:
        return {"hello": True}

    @app.get("/closing")
    def closing() -> Any:
        response = flask.make_response("bye")
        response.call_on_close(lambda: closed.append(_subject()))
        return response

    @app.get("/stream")
    def stream() -> Any:
        return flask.Response(iter([b"a", b"b"]))

    guarded = protect(app, guard=session_issuer.guard())
    authorization = f"Bearer {session_issuer.mint(sub='kim')}"

    def environ(path: str) -> dict[str, Any]:
        return {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "SERVER_NAME": "t",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "HTTP_AUTHORIZATION": authorization,
        }

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        assert status == "200 OK"

    body = guarded(environ("/"), start_response)
    assert type(body) is ClosingIterator
    assert b"".join(body) == b'{"hello":true}\n'
    body.close()  # type: ignore[attr-defined]
    for path in ("/closing", "/stream"):
        body = guarded(environ(path), start_response)
        assert type(body) is BodyWithAuth
        b"".join(body)
        body.close()  # type: ignore[attr-defined]
    assert closed == ["kim"]
    assert current_auth.get() is None


def test_a_body_whose_iter_raises_is_still_closed_by_the_server(
    session_issuer: DevIssuer,
) -> None:
    # The wrapper called iter(body) in the middleware: a body whose __iter__ raised made
    # the application call itself raise, so the server never held the body to close it
    # (PEP 3333: close() even when iteration fails). iter() now runs when the server
    # iterates, and close() is forwarded.
    closed: list[str | None] = []

    class Failing:
        def __iter__(self) -> Iterator[bytes]:
            raise RuntimeError("no body")

        def close(self) -> None:
            closed.append(_subject())

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Failing()

    guarded = BearerGuardWSGIMiddleware(app, guard=session_issuer.guard())
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "HTTP_AUTHORIZATION": f"Bearer {session_issuer.mint(sub='ash')}",
    }
    result = guarded(environ, lambda status, headers: None)
    with pytest.raises(RuntimeError, match="no body"):
        list(result)
    result.close()  # type: ignore[attr-defined] # the server's duty (PEP 3333)
    assert closed == ["ash"]
    assert current_auth.get() is None


class ClosingIterator:
    """An app's own body type that shares werkzeug's class name, and fails on inspection."""

    @property
    def _callbacks(self) -> Any:
        raise KeyError("not werkzeug's")

    def __iter__(self) -> Iterator[bytes]:
        token = get_access_token()
        yield b"" if token is None else (token.subject or "").encode()


def test_a_body_named_like_werkzeugs_is_still_iterated_with_the_token(
    session_issuer: DevIssuer,
) -> None:
    # The check that passes Flask's plain responses on unwrapped reads werkzeug's private
    # attributes: an app's own class of that name must not turn the request into a 500.
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingIterator()

    guarded = BearerGuardWSGIMiddleware(app, guard=session_issuer.guard())
    status, _, body = call(guarded, HTTP_AUTHORIZATION=f"Bearer {session_issuer.mint(sub='ola')}")
    assert (status, body) == ("200 OK", b"ola")


def test_the_metadata_answer_redacts_a_query_token_in_the_environ(
    session_issuer: DevIssuer,
) -> None:
    # Answered without a token check (RFC 9728 §3), and logged from the environ after.
    token = session_issuer.mint(sub="ola")
    guard = session_issuer.guard(audience=None, resource="https://api.example")
    app = BearerGuardWSGIMiddleware(hello_app, guard=guard)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/.well-known/oauth-protected-resource",
        "QUERY_STRING": f"access_token={token}",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
    }
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert environ["QUERY_STRING"] == "access_token=REDACTED"


def test_a_flask_app_under_an_asgi_bridge_takes_the_outer_verdict(
    session_issuer: DevIssuer,
) -> None:
    # A Flask app with its own protect(), mounted under BearerGuardMiddleware with the same
    # guard through asgiref's WsgiToAsgi: the bridge builds a new environ, so the inner
    # middleware verified again. Every request was audited twice, and every DPoP request
    # refused, its proof taken for a replay (RFC 9449 §11.1).
    from asgiref.wsgi import WsgiToAsgi
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerGuardMiddleware
    from tests.test_dpop import Holder

    guard = session_issuer.guard(dpop=DPoPPolicy())
    inner = flask.Flask(__name__)
    plain = BearerGuardWSGIMiddleware(hello_app, guard=guard)

    @inner.get("/me")
    def me() -> dict[str, Any]:
        token = get_access_token(flask.request)
        # A request the view makes itself, without the token, is decided on its own.
        status, _, _ = call(plain)
        return {"sub": token.subject if token else None, "nested": status}

    @inner.get("/admin")
    @requires_scopes("admin")
    def admin() -> str:
        return "secret"  # pragma: no cover - refused

    protect(inner, guard=guard)
    client = TestClient(BearerGuardMiddleware(WsgiToAsgi(inner), guard=guard))
    holder = Holder()
    bound = session_issuer.mint(sub="ida", cnf={"jkt": holder.jkt})
    proof = holder.proof(bound, url="http://testserver/me")
    bearer = session_issuer.mint(sub="ida")
    for headers in (
        {"Authorization": f"DPoP {bound}", "DPoP": proof},
        {"Authorization": f"Bearer {bearer}"},
        {"Authorization": f"Bearer {bearer}"},  # a cache hit
    ):
        with structlog.testing.capture_logs() as events:
            response = client.get("/me", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"sub": "ida", "nested": "401 Unauthorized"}
        assert [event["event"] for event in events] == ["token.accepted", "token.rejected"]
    # Its scope refusals are Flask's responses: the outer verdict's Starlette one was a 500.
    denied = client.get("/admin", headers={"Authorization": f"Bearer {bearer}"})
    assert denied.status_code == 403
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
