"""bearerguard.django: the guard in settings.MIDDLEWARE, driven by Django's own test clients.

The same requests go through Django's ``Client`` (the sync path, WSGI requests) and
``AsyncClient`` (the async path, ASGI requests), and their answers are compared with those
of ``BearerGuardWSGIMiddleware`` around the same Django project.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import django
import httpx
import pytest
import structlog
from django.conf import settings

if not settings.configured:  # the first Django test of the session (see docs/wsgi.md)
    settings.configure(
        ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="tests-only", MIDDLEWARE=[]
    )
    django.setup()

from asgiref.sync import markcoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIRequest
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View

from bearerguard import BearerGuard, get_access_token, requires_any_scope, requires_scopes
from bearerguard._context import SCOPE_KEY, current_auth
from bearerguard.django import _described
from bearerguard.metadata import WELL_KNOWN_PATH
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from bearerguard.wsgi import BearerGuardWSGIMiddleware
from tests.helpers import Clock, http_scope, serving, until

MIDDLEWARE = "bearerguard.django.BearerGuardMiddleware"
guard: BearerGuard | None = None  # the guard the settings below name, set per test


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@requires_scopes("items:read")
def items(request: HttpRequest) -> JsonResponse:
    token = get_access_token(request)
    return JsonResponse({"for": token.subject if token else None, "view": "sync"})


@requires_any_scope("items:read", "admin")
async def async_items(request: HttpRequest) -> JsonResponse:
    token = get_access_token(request)
    return JsonResponse({"for": token.subject if token else None, "view": "async"})


def whoami(request: HttpRequest) -> JsonResponse:
    token = get_access_token(request)
    return JsonResponse({"for": token.subject if token else None})


@method_decorator(requires_scopes("reports:read"), name="dispatch")
class Reports(View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"reports": []})


def streamed(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        for _ in range(2):
            token = get_access_token()  # the current request's, read while the body streams
            yield (token.subject if token else "-").encode() + b";"

    return StreamingHttpResponse(body())


async def async_streamed(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(2):
            token = get_access_token()
            yield (token.subject if token else "-").encode() + b";"

    return StreamingHttpResponse(body())


cleaned_up: list[str | None] = []  # what the abandoned body's clean-up read, as it ran


def abandoned(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        try:
            yield from (b"chunk;", b"chunk;")
        finally:  # on close(), when the client went away before the end
            token = get_access_token()
            cleaned_up.append(token.subject if token else None)

    return StreamingHttpResponse(body())


async def async_abandoned(request: HttpRequest) -> StreamingHttpResponse:
    held: list[object] = []

    async def body() -> AsyncIterator[bytes]:
        try:
            for _ in range(3):
                yield b"chunk;"
        finally:  # when the client went away before the end
            token = get_access_token()
            cleaned_up.append(token.subject if token else None)
            held.clear()

    generator = body()
    if "cycle" in request.GET:
        # The generator's frame holds `held`, which holds the generator: only the cyclic
        # garbage collector frees it, not its last reference going away.
        held.append(generator)
    return StreamingHttpResponse(generator)


def user(request: HttpRequest) -> JsonResponse:
    current = request.user
    return JsonResponse(
        {
            "authenticated": current.is_authenticated,
            "anonymous": current.is_anonymous,
            "username": current.get_username(),
            # The token, as on Starlette's request.user (none for Django's AnonymousUser).
            "subject": getattr(getattr(current, "access_token", None), "subject", None),
            "staff": current.is_staff,
            "perm": current.has_perm("auth.view_user"),
        }
    )


async def async_user(request: HttpRequest) -> JsonResponse:
    current = await request.auser()
    names = [current.get_username(), request.user.get_username()]
    return JsonResponse({"authenticated": current.is_authenticated, "names": names})


between_chunks: list[Callable[[], None]] = []  # run by the rechecked views after a chunk


def rechecked(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        yield b"one;"
        for step in between_chunks:
            step()
        yield b"two;"

    return StreamingHttpResponse(body())


async def async_rechecked(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"one;"
        for step in between_chunks:
            step()
        yield b"two;"

    return StreamingHttpResponse(body())


class ChunkedFile(io.RawIOBase):
    """A file sent by ``rechecked_file``: one chunk per read, ``between_chunks`` run at the
    second read, closed by the response."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks = [b"one;", b"two;"]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if len(self._chunks) == 1:
            for step in between_chunks:
                step()
        return self._chunks.pop(0) if self._chunks else b""


files: list[ChunkedFile] = []  # what rechecked_file sent


def rechecked_file(request: HttpRequest) -> FileResponse:
    files.append(ChunkedFile())
    return FileResponse(files[-1], content_type="application/octet-stream")


verdicts: list[object] = []  # what the verdict view found, for the tests that ask


def verdict(request: HttpRequest) -> HttpResponse:
    scope = getattr(request, "scope", None)
    found = request.META.get(SCOPE_KEY) if scope is None else scope.get(SCOPE_KEY)
    verdicts.extend((found, current_auth.get()))
    return HttpResponse("ok")


urlpatterns = [
    path("verdict", verdict),
    path("health", health),
    path("streamed", streamed),
    path("async-streamed", async_streamed),
    path("abandoned", abandoned),
    path("rechecked", rechecked),
    path("async-rechecked", async_rechecked),
    path("rechecked-file", rechecked_file),
    path("async-abandoned", async_abandoned),
    path("user", user),
    path("async-user", async_user),
    path("health-slash/", health),
    path("items", items),
    path("async-items", async_items),
    path("whoami", whoami),
    path("reports", Reports.as_view()),
]

ClientKind = Callable[[], Any]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def configured(
    the_guard: BearerGuard | None, **options: Any
) -> override_settings:  # the BEARERGUARD setting and this module's URLs
    global guard  # noqa: PLW0603 - the settings name it by its dotted path, as a project does
    guard = the_guard
    bearerguard = {"GUARD": f"{__name__}.guard", "PUBLIC_PATHS": ["/health"], **options}
    return override_settings(
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["testserver"],
        MIDDLEWARE=[MIDDLEWARE],
        BEARERGUARD=bearerguard,
    )


def get(
    kind: str, url: str, authorization: str | None = None, headers: dict[str, str] | None = None
) -> HttpResponse:
    """GET ``url`` through Django's Client (sync) or AsyncClient (async)."""
    headers = dict(headers or {})
    if authorization is not None:
        headers["Authorization"] = authorization
    if kind == "sync":
        return Client().get(url, headers=headers)
    return asyncio.run(AsyncClient().get(url, headers=headers))


@pytest.fixture
def project(session_issuer: DevIssuer) -> Iterator[BearerGuard]:
    the_guard = session_issuer.guard()
    with configured(the_guard):
        yield the_guard


def bearer(issuer: DevIssuer, *scopes: str, sub: str = "mia") -> str:
    return f"Bearer {issuer.mint(scopes=scopes, sub=sub)}"


@pytest.mark.parametrize("url", ["/items", "/async-items"])
def test_a_valid_token_reaches_sync_and_async_views(
    project: BearerGuard, session_issuer: DevIssuer, kind: str, url: str
) -> None:
    with structlog.testing.capture_logs() as events:
        response = get(kind, url, bearer(session_issuer, "items:read"))
    assert response.status_code == 200
    assert response.json() == {"for": "mia", "view": "async" if "async" in url else "sync"}
    assert [event["event"] for event in events] == ["token.accepted"]
    assert events[0]["path"] == url


def test_no_token_is_401_with_a_bare_challenge(project: BearerGuard, kind: str) -> None:
    with structlog.testing.capture_logs() as events:
        response = get(kind, "/items")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == f'Bearer realm="{project.realm}"'  # RFC 6750 §3.1
    assert [event["event"] for event in events] == ["token.rejected"]


@pytest.mark.parametrize(
    ("authorization", "url"),
    [
        ("Bearer a b", "/items"),
        ("Bearer x, Bearer y", "/items"),
        (None, "/items?access_token=x"),
        (None, "/items?%61ccess_token=x"),
    ],
)
def test_malformed_requests_are_400(
    project: BearerGuard, kind: str, authorization: str | None, url: str
) -> None:
    with structlog.testing.capture_logs() as events:
        response = get(kind, url, authorization)
    assert response.status_code == 400
    assert 'error="invalid_request"' in response["WWW-Authenticate"]
    assert response.json()["error"] == "invalid_request"
    assert len(events) == 1


def test_a_bad_token_is_401_invalid_token(
    project: BearerGuard, session_issuer: DevIssuer, kind: str
) -> None:
    for token in ["a.b.c", session_issuer.mint_expired(), session_issuer.mint_forged()]:
        with structlog.testing.capture_logs() as events:
            response = get(kind, "/items", f"Bearer {token}")
        assert response.status_code == 401
        assert 'error="invalid_token"' in response["WWW-Authenticate"]
        assert [event["event"] for event in events] == ["token.rejected"]
        assert token not in str(events)  # never a raw token in the audit log


@pytest.mark.parametrize("url", ["/items", "/async-items", "/reports"])
def test_a_missing_scope_is_403_naming_the_scope(
    project: BearerGuard, session_issuer: DevIssuer, kind: str, url: str
) -> None:
    with structlog.testing.capture_logs() as events:
        response = get(kind, url, bearer(session_issuer, "other"))
    assert response.status_code == 403
    challenge = response["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge
    wanted = {"/items": "items:read", "/async-items": "items:read admin"}
    assert f'scope="{wanted.get(url, "reports:read")}"' in challenge
    assert response.json()["error"] == "insufficient_scope"
    assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]


def test_public_paths_match_path_info(
    project: BearerGuard, session_issuer: DevIssuer, kind: str
) -> None:
    with structlog.testing.capture_logs() as events:
        assert get(kind, "/health").status_code == 200
    assert events == []  # let in without a token: nothing to audit
    # A token sent to a public path is still verified.
    assert get(kind, "/health", "Bearer a.b.c").status_code == 401
    assert get(kind, "/health", bearer(session_issuer)).status_code == 200
    assert get(kind, "/whoami").status_code == 401  # not public


def test_a_scoped_view_on_a_public_path_still_needs_a_token(
    session_issuer: DevIssuer, kind: str
) -> None:
    with configured(session_issuer.guard(), PUBLIC_PATHS=["/items", "/whoami"]):
        assert get(kind, "/whoami").json() == {"for": None}
        with structlog.testing.capture_logs() as events:
            refused = get(kind, "/items")
        allowed = get(kind, "/items", bearer(session_issuer, "items:read"))
    assert refused.status_code == 401
    assert 'scope="items:read"' in refused["WWW-Authenticate"]  # the route's scopes, a hint
    assert [event["event"] for event in events] == ["token.rejected"]
    assert allowed.json() == {"for": "mia", "view": "sync"}


@pytest.mark.parametrize("url", ["/static/../whoami", "/static/%252e%252e/whoami"])
def test_a_dot_segment_path_is_never_public(session_issuer: DevIssuer, kind: str, url: str) -> None:
    # path_info "/static/../whoami" is /whoami to whatever removes dot segments (RFC 3986
    # §5.2.4): refused before the URLconf answers 404 (fail closed).
    with configured(session_issuer.guard(), PUBLIC_PATHS=["/static/*"]):
        with structlog.testing.capture_logs() as events:
            response = get(kind, url)
        assert response.status_code == 401
        assert [event["reason"] for event in events] == ["missing_token"]
        assert get(kind, "/static/x").status_code == 404  # public: the URLconf answers


def test_append_slash_does_not_open_a_public_path(session_issuer: DevIssuer, kind: str) -> None:
    # "/health" is public; "/health/" is another path (PATH_INFO as the WSGI middleware
    # matches it): refused, and CommonMiddleware's redirect of "/health-slash" to
    # "/health-slash/" (when only the former is listed) is refused too. Fail closed.
    with (
        configured(session_issuer.guard(), PUBLIC_PATHS=["/health", "/health-slash"]),
        override_settings(
            MIDDLEWARE=["django.middleware.common.CommonMiddleware", MIDDLEWARE],
            APPEND_SLASH=True,
        ),
    ):
        assert get(kind, "/health").status_code == 200
        assert get(kind, "/health/").status_code == 401
        redirected = get(kind, "/health-slash")
        assert redirected.status_code == 301
        assert redirected["Location"] == "/health-slash/"
        assert get(kind, "/health-slash/").status_code == 401


def test_a_revoked_token_is_401(session_issuer: DevIssuer, kind: str) -> None:
    store = MemoryRevocationStore()
    with configured(session_issuer.guard(revocation=store)):
        token = session_issuer.mint_revoked(store, scopes=["items:read"])
        with structlog.testing.capture_logs() as events:
            response = get(kind, "/items", f"Bearer {token}")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response["WWW-Authenticate"]
    assert [(event["event"], event["reason"]) for event in events] == [
        ("token.rejected", "revoked")
    ]


def test_keys_unavailable_fail_closed_with_503(session_issuer: DevIssuer, kind: str) -> None:
    offline = BearerGuard(issuer="http://127.0.0.1:9", audience=session_issuer.audience)
    with configured(offline):
        with structlog.testing.capture_logs() as events:
            response = get(kind, "/items", bearer(session_issuer, "items:read"))
        assert get(kind, "/health").status_code == 200  # no token: no keys needed
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert [event["event"] for event in events] == ["auth.unavailable"]


def test_audit_events_carry_the_fields_their_documentation_lists(
    session_issuer: DevIssuer, kind: str
) -> None:
    # docs/audit-events.md, as tests/test_docs.py checks it for the other integrations:
    # every event the Django middleware (and requires_scopes in a Django view) emits.
    from bearerguard.usage import MemoryUsageMonitor, UsagePolicy
    from tests.test_docs import check_documented_fields

    store = MemoryRevocationStore()
    monitor = MemoryUsageMonitor(UsagePolicy(max_uses_per_token=1))  # action "log"
    the_guard = session_issuer.guard(revocation=store, usage=monitor)
    offline = BearerGuard(issuer="http://127.0.0.1:9", audience=session_issuer.audience)
    token = f"Bearer {session_issuer.mint(scopes=['items:read'], sub='alice', jti='dj-fields')}"
    with structlog.testing.capture_logs() as events:
        with configured(the_guard):
            assert get(kind, "/items", token).status_code == 200
            assert get(kind, "/items", token).status_code == 200  # token.anomaly, a cache hit
            assert get(kind, "/items").status_code == 401
            assert get(kind, "/items", "Bearer a.b.c").status_code == 401
            assert get(kind, "/items", "Bearer a b").status_code == 400
            assert get(kind, "/items", bearer(session_issuer, "other")).status_code == 403
            revoked = session_issuer.mint_revoked(store, scopes=["items:read"])
            assert get(kind, "/items", f"Bearer {revoked}").status_code == 401
        with configured(offline):
            assert get(kind, "/items", token).status_code == 503
    assert {event["event"] for event in events} == {
        "token.accepted",
        "token.anomaly",
        "token.rejected",
        "scope.denied",
        "auth.unavailable",
    }
    assert [event["reason"] for event in events if event["event"] == "token.rejected"] == [
        "missing_token",
        "malformed_token",
        "invalid_request",
        "revoked",
    ]
    check_documented_fields(events)


GARBAGE = [
    "Bearer",
    "Bearer ",
    "bearer",
    "Basic dXNlcjpwYXNz",
    "Bearer \u00e9\u00e8",
    "Bearer " + "a" * 20000,
    "Bearer ....",
    "Bearer a.b.c.d.e",
    "Bearer eyJhbGciOiJub25lIn0.e30.",
    "DPoP abc",
    "Bearer\tabc",
    "Bearer ===",
    "Bearer a,b",
]


@pytest.mark.parametrize("authorization", GARBAGE)
def test_a_garbage_header_is_never_a_500(
    project: BearerGuard, kind: str, authorization: str
) -> None:
    with structlog.testing.capture_logs() as events:
        response = get(kind, "/items", authorization)
    assert response.status_code in {400, 401}
    assert len(events) == 1
    assert response["Content-Type"] == "application/json"


def test_same_answers_as_the_wsgi_middleware(session_issuer: DevIssuer, kind: str) -> None:
    the_guard = session_issuer.guard()
    cases = [
        (None, "/items"),
        ("Bearer a.b.c", "/items"),
        ("Bearer x, Bearer y", "/items"),
        (bearer(session_issuer, "other"), "/items"),
        (bearer(session_issuer, "items:read"), "/items"),
        (None, "/health"),
        (None, "/items?access_token=x"),
    ]
    with configured(the_guard):
        wrapped = BearerGuardWSGIMiddleware(
            WSGIHandler(), guard=the_guard, public_paths=["/health"]
        )
        transport = httpx.WSGITransport(app=wrapped)
        with httpx.Client(transport=transport, base_url="http://testserver") as wsgi:
            for authorization, url in cases:
                headers = {} if authorization is None else {"Authorization": authorization}
                expected = wsgi.get(url, headers=headers)
                with override_settings(MIDDLEWARE=[MIDDLEWARE]):
                    response = get(kind, url, authorization)
                assert response.status_code == expected.status_code, url
                assert response.content == expected.content, url
                assert response.get("WWW-Authenticate") == expected.headers.get(
                    "www-authenticate"
                ), url


def test_behind_the_wsgi_middleware_with_the_same_guard_one_audit_event(
    session_issuer: DevIssuer,
) -> None:
    the_guard = session_issuer.guard()
    with configured(the_guard):
        wrapped = BearerGuardWSGIMiddleware(
            WSGIHandler(), guard=the_guard, public_paths=["/health"]
        )
        transport = httpx.WSGITransport(app=wrapped)
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            token = bearer(session_issuer, "items:read")
            with structlog.testing.capture_logs() as events:
                response = client.get("/items", headers={"Authorization": token})
                denied = client.get(
                    "/items", headers={"Authorization": bearer(session_issuer, "x")}
                )
    assert response.status_code == 200
    assert response.json()["for"] == "mia"
    assert denied.status_code == 403
    assert [event["event"] for event in events] == [
        "token.accepted",
        "token.accepted",
        "scope.denied",
    ]


def test_listed_twice_audits_once(
    project: BearerGuard, session_issuer: DevIssuer, kind: str
) -> None:
    with (
        override_settings(MIDDLEWARE=[MIDDLEWARE, MIDDLEWARE]),
        structlog.testing.capture_logs() as events,
    ):
        response = get(kind, "/items", bearer(session_issuer, "items:read"))
    assert response.status_code == 200
    assert [event["event"] for event in events] == ["token.accepted"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (None, "BEARERGUARD: missing"),
        ({}, "GUARD"),
        ({"GUARD": "no_such_module_here.guard"}, "cannot import"),
        ({"GUARD": ".auth.guard"}, "cannot import"),  # relative: importlib's TypeError
        ({"GUARD": ".guard"}, "cannot import"),  # no module: importlib's ValueError
        ({"GUARD": f"{__name__}.health"}, "not a BearerGuard"),
        ({"GUARD": 42}, "not a BearerGuard"),
        ({"GUARD": f"{__name__}.guard", "PUBLIC_PATH": ["/health"]}, "PUBLIC_PATH"),
        ({"GUARD": f"{__name__}.guard", "PUBLIC_PATHS": "/health"}, "PUBLIC_PATHS"),
        ({"GUARD": f"{__name__}.guard", "PUBLIC_PATHS": ["health"]}, "must start"),
        ({"GUARD": f"{__name__}.guard", "PUBLIC_PATHS": ["/health/?x=1"]}, "query string"),
        ({"GUARD": f"{__name__}.guard", "PUBLIC_PATHS": ["/health/ "]}, "white space"),
        (f"{__name__}.guard", "dict"),
        ({"GUARD": f"{__name__}.guard", "STREAM_RECHECK": "yes"}, "STREAM_RECHECK must be"),
    ],
)
def test_a_misconfiguration_is_refused_at_start_up(
    session_issuer: DevIssuer, setting: Any, message: str
) -> None:
    global guard  # noqa: PLW0603
    guard = session_issuer.guard()
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[MIDDLEWARE]):
        if setting is None:
            del settings.BEARERGUARD
        else:
            settings.BEARERGUARD = setting
        with pytest.raises(ImproperlyConfigured, match=message):
            WSGIHandler()  # what get_wsgi_application() builds: the middleware is loaded


def test_a_guard_object_in_settings(session_issuer: DevIssuer, kind: str) -> None:
    with override_settings(
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["testserver"],
        MIDDLEWARE=[MIDDLEWARE],
        BEARERGUARD={"GUARD": session_issuer.guard()},
    ):
        assert get(kind, "/items", bearer(session_issuer, "items:read")).status_code == 200


def test_an_async_only_store_is_refused_for_the_sync_path(session_issuer: DevIssuer) -> None:
    class AsyncOnly:
        async def is_revoked(self, token: Any) -> bool:
            return False

    with configured(session_issuer.guard(revocation=AsyncOnly())):
        with pytest.raises(ImproperlyConfigured, match="synchronous"):
            WSGIHandler()
        # The async path (ASGI) awaits the store: served.
        response = get("async", "/items", bearer(session_issuer, "items:read"))
    assert response.status_code == 200


def test_an_async_only_store_refused_under_asgi_names_the_sync_only_middleware(
    session_issuer: DevIssuer,
) -> None:
    # Under ASGI a sync-only middleware listed after the guard makes Django run it
    # synchronously: the refusal said "(a WSGI deployment verifies synchronously)", which
    # sent an ASGI project looking for a WSGI server it does not have.
    from django.core.handlers.asgi import ASGIHandler

    class AsyncOnlyStore:
        async def is_revoked(self, token: Any) -> bool:
            return False

    with (
        configured(session_issuer.guard(revocation=AsyncOnlyStore())),
        override_settings(MIDDLEWARE=[MIDDLEWARE, f"{__name__}.SyncOnly"]),
        pytest.raises(ImproperlyConfigured) as refused,
    ):
        ASGIHandler()
    message = str(refused.value)
    assert "a WSGI deployment" not in message
    assert "sync-only middleware listed after it" in message
    with configured(session_issuer.guard(revocation=AsyncOnlyStore())):
        with pytest.raises(ImproperlyConfigured, match="under WSGI") as refused:
            WSGIHandler()
        ASGIHandler()  # the async path, nothing sync-only below: accepted


@pytest.mark.parametrize("url", ["/streamed", "/async-streamed"])
@pytest.mark.parametrize("below", [None, "SyncOnly", "AsyncOnly"])
def test_get_access_token_while_a_streaming_body_is_consumed(
    session_issuer: DevIssuer, kind: str, url: str, below: str | None
) -> None:
    # current_auth was reset when the view returned, before a StreamingHttpResponse's body
    # ran: get_access_token() read None there. Each step of the body now sees the request's
    # token, and nothing is left set in the caller's context, consumed or not.
    authorization = bearer(session_issuer, sub="streamer")
    middleware = [MIDDLEWARE] + ([] if below is None else [f"{__name__}.{below}"])
    headers = {"Authorization": authorization}
    with configured(session_issuer.guard()), override_settings(MIDDLEWARE=middleware):
        if kind == "sync":
            with warnings.catch_warnings():  # Django warns of an async body served sync
                warnings.simplefilter("ignore", Warning)
                response = Client().get(url, headers=headers)
                assert b"".join(response) == b"streamer;streamer;"
            assert current_auth.get() is None
            Client().get(url, headers=headers)  # left unread
            assert current_auth.get() is None
        else:

            async def consume() -> bytes:
                response = await AsyncClient().get(url, headers=headers)
                assert current_auth.get() is None
                with warnings.catch_warnings():  # Django warns of a sync body served async
                    warnings.simplefilter("ignore", Warning)
                    parts = [part async for part in response]
                assert current_auth.get() is None
                return b"".join(parts)

            async def abandon() -> None:  # the client went away after one chunk
                response = await AsyncClient().get(url, headers=headers)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Warning)
                    assert await anext(aiter(response)) == b"streamer;"
                assert current_auth.get() is None

            assert asyncio.run(consume()) == b"streamer;streamer;"
            asyncio.run(abandon())


@pytest.mark.parametrize("recheck", [False, True])
def test_stream_recheck_ends_a_streaming_response_once_its_token_expires(
    session_issuer: DevIssuer, kind: str, recheck: bool
) -> None:
    # Sync under WSGI (Django's Client), async under ASGI (AsyncClient): the token is
    # checked again before the second chunk, which an expired token does not get.
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    between_chunks[:] = [lambda: clock.advance(61)]
    headers = {"Authorization": f"Bearer {token}"}
    options = {"STREAM_RECHECK": True} if recheck else {}
    try:
        with (
            configured(session_issuer.guard(clock=clock, leeway=0), **options),
            structlog.testing.capture_logs() as events,
        ):
            if kind == "sync":
                body = b"".join(Client().get("/rechecked", headers=headers))
            else:

                async def consume() -> bytes:
                    response = await AsyncClient().get("/async-rechecked", headers=headers)
                    return b"".join([part async for part in response])

                body = asyncio.run(consume())
    finally:
        between_chunks.clear()
    refused = [(e["event"], e["reason"]) for e in events if e["event"] != "token.accepted"]
    if recheck:
        assert (body, refused) == (b"one;", [("token.rejected", "expired")])
    else:
        assert (body, refused) == (b"one;two;", [])


@pytest.mark.parametrize("served", [False, True])
@pytest.mark.parametrize("recheck", [False, True])
def test_stream_recheck_ends_a_file_response_once_its_token_expires(
    session_issuer: DevIssuer, recheck: bool, served: bool
) -> None:
    # A FileResponse was left alone: Django hands its file to the server's
    # wsgi.file_wrapper when there is one (served here by wsgiref, which offers it), else
    # iterates it (Django's Client), either way past the recheck. Rechecked, it is read
    # through the recheck as a StreamingHttpResponse is, and its file closed at the end.
    token = session_issuer.mint(sub="eve", expires_in=60)
    clock = Clock()
    between_chunks[:] = [lambda: clock.advance(61)]
    headers = {"Authorization": f"Bearer {token}"}
    options = {"STREAM_RECHECK": True} if recheck else {}
    try:
        with (
            configured(session_issuer.guard(clock=clock, leeway=0), **options),
            structlog.testing.capture_logs() as events,
        ):
            if served:
                from wsgiref.simple_server import WSGIRequestHandler, make_server

                class Quiet(WSGIRequestHandler):
                    def log_message(self, *args: Any) -> None:
                        pass

                server = make_server("127.0.0.1", 0, WSGIHandler(), handler_class=Quiet)
                with serving(server) as port:
                    url = f"http://127.0.0.1:{port}/rechecked-file"
                    body = httpx.get(url, headers=headers).content
                    assert until(lambda: files[-1].closed, 10)
            else:
                response = Client().get("/rechecked-file", headers=headers)
                body = b"".join(response)
                response.close()
                assert files[-1].closed
    finally:
        between_chunks.clear()
    refused = [(e["event"], e["reason"]) for e in events if e["event"] != "token.accepted"]
    if recheck:
        assert (body, refused) == (b"one;", [("token.rejected", "expired")])
    else:
        assert (body, refused) == (b"one;two;", [])


AUTH_APPS = ["django.contrib.auth", "django.contrib.contenttypes"]
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"


@pytest.mark.parametrize(
    "middleware",
    [
        [MIDDLEWARE],
        [SESSIONS, AUTHENTICATION, MIDDLEWARE],
        [MIDDLEWARE, SESSIONS, AUTHENTICATION],  # Django's, below, replaces request.user
    ],
    ids=["alone", "below-django-auth", "above-django-auth"],
)
@pytest.mark.parametrize("url", ["/user", "/async-user"])
def test_request_user_is_the_token_user(
    session_issuer: DevIssuer, kind: str, middleware: list[str], url: str
) -> None:
    # request.user was never set: Django's login_required, LoginRequiredMiddleware and
    # request.user.is_authenticated (and DRF's permissions) saw no user, or AnonymousUser,
    # for a request the guard let in. It is now the token's, with no permission, whichever
    # the order beside Django's AuthenticationMiddleware.
    with (
        configured(session_issuer.guard(), PUBLIC_PATHS=["/user"]),
        override_settings(
            MIDDLEWARE=middleware,
            INSTALLED_APPS=AUTH_APPS,
            SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        ),
    ):
        answered = get(kind, url, bearer(session_issuer, sub="ada")).json()
        if url == "/user":
            assert answered == {
                "authenticated": True,
                "anonymous": False,
                "username": "ada",
                "subject": "ada",
                "staff": False,
                "perm": False,
            }
            if AUTHENTICATION in middleware:  # a public path without a token: Django's user
                assert get(kind, url).json()["authenticated"] is False
        else:
            assert answered == {"authenticated": True, "names": ["ada", "ada"]}


def test_request_user_behind_the_wsgi_middleware(session_issuer: DevIssuer) -> None:
    # Let in by BearerGuardWSGIMiddleware with the same guard, the request is passed on as
    # decided: request.user is the token's there too.
    the_guard = session_issuer.guard()
    with configured(the_guard):
        wrapped = BearerGuardWSGIMiddleware(WSGIHandler(), guard=the_guard)
        transport = httpx.WSGITransport(app=wrapped)
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            headers = {"Authorization": bearer(session_issuer, sub="kim")}
            answered = client.get("/user", headers=headers).json()
    assert (answered["authenticated"], answered["username"]) == (True, "kim")


def test_the_token_user_holds_its_token_as_starlettes_does(session_issuer: DevIssuer) -> None:
    # One name on every framework: Starlette's request.user.access_token, read-only there
    # (one user per token), read-only here too, so a view cannot swap the verified token.
    from bearerguard.asgi import TokenUser as StarletteUser
    from bearerguard.django import TokenUser

    access = session_issuer.guard(in_process=True).authenticate_sync(session_issuer.mint())
    user = TokenUser(access)
    assert user.access_token is StarletteUser(access).access_token is access
    with pytest.raises(AttributeError):
        user.access_token = access  # type: ignore[misc]
    assert not hasattr(user, "token")


def test_login_required_lets_the_token_user_in(session_issuer: DevIssuer) -> None:
    from django.contrib.auth.decorators import login_required
    from django.test import RequestFactory

    from bearerguard.django import BearerGuardMiddleware

    with (
        configured(session_issuer.guard()),
        override_settings(INSTALLED_APPS=AUTH_APPS, LOGIN_URL="/login"),
    ):
        request = RequestFactory().get("/whoami")
        request.META["HTTP_AUTHORIZATION"] = bearer(session_issuer, sub="lee")
        response = BearerGuardMiddleware(login_required(whoami))(request)
        assert response.status_code == 200  # not a redirect to the login page
        assert response.content == b'{"for": "lee"}'


def test_dpop_bound_tokens_on_both_paths(session_issuer: DevIssuer, kind: str) -> None:
    # The sync path reads the proof and the URL from the environ (as the WSGI middleware),
    # the async path from the ASGI scope (as the ASGI middleware): RFC 9449 §4.3.
    from bearerguard.dpop import DPoPPolicy
    from tests.test_dpop import Holder

    holder = Holder()
    with configured(session_issuer.guard(dpop=DPoPPolicy())):
        token = session_issuer.mint(scopes=["items:read"], sub="mia", cnf={"jkt": holder.jkt})
        proof = holder.proof(token, url="http://testserver/items")
        with structlog.testing.capture_logs() as events:
            accepted = get(kind, "/items", f"DPoP {token}", headers={"DPoP": proof})
            replayed = get(kind, "/items", f"DPoP {token}", headers={"DPoP": proof})
            as_bearer = get(kind, "/items", f"Bearer {token}")
    assert accepted.status_code == 200
    assert accepted.json()["for"] == "mia"
    assert replayed.status_code == 401
    assert as_bearer.status_code == 401
    assert [(event["event"], event.get("binding")) for event in events] == [
        ("token.accepted", "dpop"),
        ("token.rejected", "dpop"),
        ("token.rejected", "bearer"),
    ]


def test_without_the_middleware_a_scoped_view_names_it() -> None:
    from bearerguard.errors import ConfigurationError

    with (
        override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["testserver"], MIDDLEWARE=[]),
        pytest.raises(ConfigurationError, match=r"bearerguard\.django\.BearerGuardMiddleware"),
    ):
        Client().get("/items")


def test_sync_and_async_capable(project: BearerGuard) -> None:
    from asgiref.sync import iscoroutinefunction

    from bearerguard.django import BearerGuardMiddleware

    async def async_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    # Django hands an async get_response under ASGI: the middleware is then awaited.
    assert iscoroutinefunction(BearerGuardMiddleware(async_view))
    assert not iscoroutinefunction(BearerGuardMiddleware(health))


def test_warm_up_fetches_the_keys_when_loaded(issuer: DevIssuer) -> None:
    the_guard = issuer.guard()
    with configured(the_guard, WARM_UP=True):
        WSGIHandler()
    assert the_guard.key_ids
    assert issuer.requests == ["/.well-known/openid-configuration", "/jwks.json"]


def test_a_project_under_a_script_name_serves_no_metadata_inside_it(
    session_issuer: DevIssuer,
) -> None:
    # RFC 9728 §3.1, RFC 8615 §3: the well-known path follows the host. Under SCRIPT_NAME
    # /api (a server's alias, a dispatcher), the middleware answered the document at
    # /api/.well-known/oauth-protected-resource/api, a URL no challenge names, over the
    # project's own URL there; it now answers at the host's top only, as the WSGI middleware.
    the_guard = session_issuer.guard(audience=None, resource="https://api.example/api")
    statuses: list[str] = []
    with configured(the_guard):
        for script_name in ("", "/api"):
            environ = {
                "REQUEST_METHOD": "GET",
                "SCRIPT_NAME": script_name,
                "PATH_INFO": f"{WELL_KNOWN_PATH}/api",
                "QUERY_STRING": "",
                "SERVER_NAME": "api.example",
                "SERVER_PORT": "443",
                "HTTP_HOST": "api.example",
                "REMOTE_ADDR": "127.0.0.1",
                "wsgi.url_scheme": "https",
                "wsgi.input": io.BytesIO(b""),
                "wsgi.errors": io.StringIO(),
            }
            body = WSGIHandler()(environ, lambda status, *_: statuses.append(status))
            b"".join(body)
            getattr(body, "close", lambda: None)()
    assert statuses == ["200 OK", "401 Unauthorized"]


def test_an_asgi_project_mounted_under_a_path_serves_no_metadata_inside_it(
    session_issuer: DevIssuer,
) -> None:
    # As BearerGuardMiddleware: below the server's root path (uvicorn --root-path), not
    # below a Starlette Mount, whose prefix Django's request.path_info leaves out too.
    from django.core.asgi import get_asgi_application
    from starlette.applications import Starlette
    from starlette.routing import Mount

    the_guard = session_issuer.guard(audience=None, resource="https://api.example/api")
    url = f"/api{WELL_KNOWN_PATH}/api"

    async def statuses() -> list[int]:
        mounted = Starlette(routes=[Mount("/api", app=get_asgi_application())])
        answers = []
        for app, root_path in [(get_asgi_application(), "/api"), (mounted, "")]:
            transport = httpx.ASGITransport(app=app, root_path=root_path)
            async with httpx.AsyncClient(
                transport=transport, base_url="https://api.example"
            ) as client:
                answers.append((await client.get(url)).status_code)
        return answers

    with configured(the_guard):
        assert asyncio.run(statuses()) == [200, 401]


def test_behind_the_asgi_middleware_with_the_same_guard_one_audit_event(
    session_issuer: DevIssuer,
) -> None:
    from django.core.asgi import get_asgi_application

    from bearerguard.asgi import BearerGuardMiddleware as ASGIMiddleware

    the_guard = session_issuer.guard()

    async def requests() -> list[httpx.Response]:
        app = ASGIMiddleware(get_asgi_application(), guard=the_guard)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [
                await client.get(url, headers={"Authorization": bearer(session_issuer, scope)})
                for url, scope in [("/async-items", "items:read"), ("/items", "x")]
            ]

    with configured(the_guard), structlog.testing.capture_logs() as events:
        allowed, denied = asyncio.run(requests())
    assert allowed.json() == {"for": "mia", "view": "async"}
    assert denied.status_code == 403
    assert [event["event"] for event in events] == [
        "token.accepted",
        "token.accepted",
        "scope.denied",
    ]


def test_behind_a_middleware_with_the_same_guard_the_outer_verdict_stands(
    session_issuer: DevIssuer, kind: str
) -> None:
    # Django's middleware finds the token in the cache (the outer one put it there): the
    # request keeps the outer verdict (its responder and start time), audited once.
    from django.core.asgi import get_asgi_application

    from bearerguard.asgi import BearerGuardMiddleware as ASGIMiddleware

    the_guard = session_issuer.guard()
    headers = {"Authorization": bearer(session_issuer)}
    decided: list[object] = []

    def between(environ: dict[str, Any], start_response: Any) -> Any:
        decided.append(environ[SCOPE_KEY])
        return WSGIHandler()(environ, start_response)

    async def between_asgi(scope: Any, receive: Any, send: Any) -> None:
        decided.append(scope[SCOPE_KEY])
        await get_asgi_application()(scope, receive, send)

    async def over_asgi() -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGIMiddleware(between_asgi, guard=the_guard))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/verdict", headers=headers)

    with configured(the_guard):
        for _ in range(2):  # the token's first sight outside, then a cache hit outside too
            decided.clear()
            verdicts.clear()
            with structlog.testing.capture_logs() as events:
                if kind == "sync":
                    wrapped = BearerGuardWSGIMiddleware(between, guard=the_guard)
                    transport = httpx.WSGITransport(app=wrapped)
                    with httpx.Client(transport=transport, base_url="http://testserver") as client:
                        response = client.get("/verdict", headers=headers)
                else:
                    response = asyncio.run(over_asgi())
            assert response.status_code == 200
            assert [event["event"] for event in events] == ["token.accepted"]
            assert verdicts == [decided[0], decided[0]]


def test_a_token_seen_before_takes_the_cache_hit_path(session_issuer: DevIssuer, kind: str) -> None:
    # As in the WSGI and ASGI middlewares, a cached token sent the usual way is served by
    # BearerGuard.reused (which asks the store's is_revoked_now), not by a full authenticate.
    class Store:  # a project's own store: it records which of its checks the guard asks
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def is_revoked(self, token: Any) -> bool:
            self.asked.append("is_revoked")
            return False

        def is_revoked_sync(self, token: Any) -> bool:
            self.asked.append("is_revoked_sync")
            return False

        def is_revoked_now(self, token: Any) -> bool:
            self.asked.append("is_revoked_now")
            return False

    store = Store()
    with configured(session_issuer.guard(revocation=store)):
        token = bearer(session_issuer, "items:read")
        assert get(kind, "/items", token).status_code == 200  # verified, cached
        store.asked.clear()
        with structlog.testing.capture_logs() as events:
            reused = get(kind, "/items", token)
            as_query = get(kind, "/items?x=%41", token)  # a % in the query: the general path
    assert reused.json() == {"for": "mia", "view": "sync"}
    assert as_query.status_code == 200
    assert store.asked[0] == "is_revoked_now"
    assert "is_revoked_now" not in store.asked[1:]
    assert [(event["event"], event["path"]) for event in events] == [
        ("token.accepted", "/items"),
        ("token.accepted", "/items"),
    ]


class SyncOnly:
    """A middleware written for WSGI only: under ASGI, Django runs the guard above it in
    sync mode (in a thread), with an ASGI request."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)


def test_dpop_over_https_under_asgi_above_a_sync_only_middleware(
    session_issuer: DevIssuer,
) -> None:
    # The sync path meets an ASGI request: its URL (RFC 9449 §4.3 htu) is the ASGI scope's,
    # https here, which request.META (no wsgi.url_scheme) does not say.
    from bearerguard.dpop import DPoPPolicy
    from tests.test_dpop import Holder

    holder = Holder()
    with (
        configured(session_issuer.guard(dpop=DPoPPolicy())),
        override_settings(MIDDLEWARE=[MIDDLEWARE, f"{__name__}.SyncOnly"]),
    ):
        token = session_issuer.mint(scopes=["items:read"], sub="mia", cnf={"jkt": holder.jkt})
        proof = holder.proof(token, url="https://testserver/items")
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        response = asyncio.run(AsyncClient().get("/items", headers=headers, secure=True))
    assert response.status_code == 200, response.content
    assert response.json()["for"] == "mia"


class AsyncOnly:
    """A middleware written for ASGI only: under WSGI, Django then hands the guard above it
    an async get_response, with a WSGI request (no ASGI scope)."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> Any:
        return await self.get_response(request)


def test_dpop_under_wsgi_above_an_async_only_middleware(session_issuer: DevIssuer) -> None:
    # The async path meets a WSGI request: the proof and its URL are in META (the environ),
    # as the WSGI middleware reads them; there is no ASGI scope to read.
    from bearerguard.dpop import DPoPPolicy
    from tests.test_dpop import Holder

    holder = Holder()
    with (
        configured(session_issuer.guard(dpop=DPoPPolicy())),
        override_settings(MIDDLEWARE=[MIDDLEWARE, f"{__name__}.AsyncOnly"]),
    ):
        token = session_issuer.mint(scopes=["items:read"], sub="mia", cnf={"jkt": holder.jkt})
        proof = holder.proof(token, url="https://testserver/items")
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        response = Client().get("/items", headers=headers, secure=True)
        replayed = Client().get("/items", headers=headers, secure=True)
    assert response.status_code == 200, response.content
    assert response.json()["for"] == "mia"
    assert replayed.status_code == 401


@pytest.mark.parametrize("below", [None, "SyncOnly", "AsyncOnly"])
def test_certificate_bound_tokens_on_every_path(
    session_issuer: DevIssuer, kind: str, below: str | None
) -> None:
    # RFC 8705 §3: the certificate of the TLS connection, from the WSGI environ
    # (SSL_CLIENT_CERT) or the ASGI scope (tls extension), whichever side Django runs on.
    from bearerguard.mtls import CertificateBinding
    from tests.test_mtls import issue

    ca = issue("ca")
    alice, mallory = issue("alice", ca), issue("mallory", ca)
    middleware = [MIDDLEWARE] + ([f"{__name__}.{below}"] if below else [])
    with (
        configured(session_issuer.guard(mtls=CertificateBinding())),
        override_settings(MIDDLEWARE=middleware),
    ):
        token = session_issuer.mint(
            scopes=["items:read"], sub="mia", cnf={"x5t#S256": alice.thumbprint}
        )
        answers = []
        for pem in (alice.pem, mallory.pem):
            headers = {"Authorization": f"Bearer {token}"}
            if kind == "sync":
                answers.append(Client().get("/items", headers=headers, SSL_CLIENT_CERT=pem))
            else:  # Django's ASGI application, as a server hands it the tls extension
                answers.append(asyncio.run(over_tls(pem, headers)))
    assert [answer.status_code for answer in answers] == [200, 401]


def test_a_certificate_refusal_on_the_dpop_scheme_is_audited_as_mtls(
    session_issuer: DevIssuer, kind: str
) -> None:
    # A token bound both ways (RFC 9449, RFC 8705 §3), sent with the DPoP scheme and a good
    # proof but another client certificate: the DPoP challenge carries the error, the scheme
    # the client used; the audit names the binding that refused it (docs/audit-events.md).
    from bearerguard.dpop import DPoPPolicy
    from bearerguard.mtls import CertificateBinding
    from tests.test_dpop import Holder
    from tests.test_mtls import issue

    ca = issue("ca")
    alice, mallory = issue("alice", ca), issue("mallory", ca)
    holder = Holder()
    with configured(session_issuer.guard(dpop=DPoPPolicy(), mtls=CertificateBinding())):
        token = session_issuer.mint(
            scopes=["items:read"], cnf={"x5t#S256": alice.thumbprint, "jkt": holder.jkt}
        )
        proof = holder.proof(token, url="https://testserver/items")
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        with structlog.testing.capture_logs() as logged:
            if kind == "sync":
                response = Client().get(
                    "/items", headers=headers, secure=True, SSL_CLIENT_CERT=mallory.pem
                )
            else:
                response = asyncio.run(over_tls(mallory.pem, headers))
    assert response.status_code == 401
    bearer_part, _, dpop_part = response.headers["WWW-Authenticate"].partition(", DPoP ")
    assert 'error="invalid_token"' in dpop_part
    assert "error=" not in bearer_part
    assert [(e["event"], e["reason"], e["binding"]) for e in logged] == [
        ("token.rejected", "certificate_binding", "mtls")
    ]


async def over_tls(pem: str, headers: dict[str, str]) -> Any:
    from django.core.asgi import get_asgi_application

    from tests.test_mtls import _with_tls_certificate

    app = _with_tls_certificate(get_asgi_application(), pem)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        return await client.get("/items", headers=headers)


def test_a_refused_query_token_is_redacted_where_the_server_logs_from(
    project: BearerGuard, session_issuer: DevIssuer, kind: str
) -> None:
    # Under WSGI, META is the environ a server such as gunicorn logs from once answered;
    # under ASGI, the scope uvicorn logs from (RFC 6750 §5.3). A request let in keeps both.
    token = session_issuer.mint(sub="mia")
    refused = get(kind, f"/items?a=1&access_token={token}")
    let_in = get(kind, "/health?access=1")
    assert refused.status_code == 400
    assert let_in.status_code == 200
    if kind == "sync":
        assert refused.wsgi_request.META["QUERY_STRING"] == "a=1&access_token=REDACTED"
        assert let_in.wsgi_request.META["QUERY_STRING"] == "access=1"
    else:  # AsyncClient's scope holds text where ASGI servers put bytes
        assert refused.asgi_request.scope["query_string"] == "a=1&access_token=REDACTED"
        assert refused.asgi_request.META["QUERY_STRING"] == "a=1&access_token=REDACTED"
        assert let_in.asgi_request.scope["query_string"] == "access=1"


def test_a_refused_query_token_stays_out_of_uvicorns_access_log(
    project: BearerGuard, session_issuer: DevIssuer
) -> None:
    # Django's ASGI handler under a real uvicorn: the access line comes from the scope.
    from django.core.handlers.asgi import ASGIHandler

    from tests.helpers import uvicorn_logging

    token = session_issuer.mint(sub="mia")
    with uvicorn_logging(ASGIHandler()) as (base, log):
        assert httpx.get(f"http://{base}/items?access_token={token}&a=1").status_code == 400
    assert token not in log.getvalue()
    assert '"GET /items?access_token=REDACTED&a=1 HTTP/1.1" 400' in log.getvalue()


def test_the_metadata_answer_redacts_a_query_token(session_issuer: DevIssuer, kind: str) -> None:
    # Answered without a token check (RFC 9728 §3); the server still logs the URL.
    token = session_issuer.mint(sub="mia")
    with configured(session_issuer.guard(audience=None, resource="https://api.example")):
        answer = get(kind, f"/.well-known/oauth-protected-resource?access_token={token}")
    assert answer.status_code == 200
    if kind == "sync":
        assert answer.wsgi_request.META["QUERY_STRING"] == "access_token=REDACTED"
    else:
        assert answer.asgi_request.scope["query_string"] == "access_token=REDACTED"


def test_a_refused_head_request_gets_no_content(project: BearerGuard) -> None:
    # RFC 9110 §9.3.2, as the WSGI and ASGI middlewares answer it; Django's test Client
    # drops a HEAD body itself, so the handler is called as a WSGI server calls it.
    environ = {
        "REQUEST_METHOD": "HEAD",
        "PATH_INFO": "/items",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "HTTP_AUTHORIZATION": "Bearer not-a-jwt",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
    }
    statuses: list[str] = []
    body = WSGIHandler()(environ, lambda status, headers, exc_info=None: statuses.append(status))
    content = b"".join(body)
    getattr(body, "close", lambda: None)()
    assert statuses == ["401 Unauthorized"]
    assert content == b""


@pytest.mark.parametrize("valid", [True, False])
def test_meta_values_given_as_bytes_are_read_as_the_text_they_stand_for(
    project: BearerGuard, session_issuer: DevIssuer, valid: bool
) -> None:
    # PEP 3333 says native strings; under a server outside it, a bytes REMOTE_ADDR made an
    # accepted request a 500 and lost a refusal's event, and a bytes Authorization was read
    # as its repr ("b'Bearer ...'": no credentials). As under BearerGuardWSGIMiddleware.
    token = session_issuer.mint(sub="kim") if valid else session_issuer.mint_expired()
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/whoami",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "HTTP_AUTHORIZATION": f"Bearer {token}".encode(),
        "HTTP_X_REQUEST_ID": b"r-1",
        "REMOTE_ADDR": b"10.0.0.7",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
    }
    statuses: list[str] = []
    with structlog.testing.capture_logs() as events:
        body = WSGIHandler()(
            environ, lambda status, headers, exc_info=None: statuses.append(status)
        )
        b"".join(body)
        getattr(body, "close", lambda: None)()
    assert statuses == ["200 OK" if valid else "401 Unauthorized"]
    (event,) = [e for e in events if e["event"].startswith("token.")]
    assert event["event"] == ("token.accepted" if valid else "token.rejected")
    assert (event["client"], event["request_id"], event["method"]) == ("10.0.0.7", "r-1", "GET")


def test_a_refused_head_request_states_the_length_of_the_get_refusal(
    session_issuer: DevIssuer, kind: str
) -> None:
    # RFC 9110 §8.6: a HEAD response's Content-Length, if any, is the GET's. CommonMiddleware
    # above the guard measured the emptied refusal: "Content-Length: 0" for a GET of 84 bytes.
    common = "django.middleware.common.CommonMiddleware"
    with configured(session_issuer.guard()), override_settings(MIDDLEWARE=[common, MIDDLEWARE]):
        for authorization in (None, "Bearer not-a-jwt"):
            headers = {} if authorization is None else {"Authorization": authorization}
            answers = []
            for method in ("get", "head"):
                client = Client() if kind == "sync" else AsyncClient()
                answer = getattr(client, method)("/items", headers=headers)
                answers.append(answer if kind == "sync" else asyncio.run(answer))
            got, head = answers
            assert head.status_code == got.status_code
            assert head.content == b""
            assert head["Content-Length"] == got["Content-Length"] == str(len(got.content))


def test_get_access_token_while_an_abandoned_streaming_body_is_closed(
    session_issuer: DevIssuer,
) -> None:
    # A WSGI server closes the response when the client goes away mid-stream: the body's
    # clean-up ran there with no token, where behind BearerGuardWSGIMiddleware (which closes
    # the body with it set, as PEP 3333's close()) it read the request's.
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/abandoned",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "HTTP_AUTHORIZATION": bearer(session_issuer, sub="leaver"),
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
    }
    cleaned_up.clear()
    with configured(session_issuer.guard()):
        for app in (WSGIHandler(), BearerGuardWSGIMiddleware(WSGIHandler(), guard=guard)):
            body = app(dict(environ), lambda status, headers, exc_info=None: None)
            assert next(iter(body)) == b"chunk;"
            assert current_auth.get() is None
            body.close()  # type: ignore[attr-defined] # the server's duty (PEP 3333)
            assert current_auth.get() is None
    assert cleaned_up == ["leaver", "leaver"]


@pytest.mark.parametrize("query", [b"", b"cycle"], ids=["plain", "in-a-cycle"])
@pytest.mark.parametrize("below", [None, "SyncOnly"])
def test_get_access_token_while_an_abandoned_async_streaming_body_is_closed(
    session_issuer: DevIssuer, below: str | None, query: bytes
) -> None:
    # Under ASGI, a client that goes away mid-stream leaves the view's async generator
    # suspended: Django never closes it, the garbage collector did, later, and its clean-up
    # (its finally) ran with no token, where behind the ASGI middleware, whose context the
    # whole app runs in, it read the request's. The middleware now closes it with the token
    # set when Django closes the response: the view's own generator, not only Django's
    # wrapper of it, whose end freed the generator only if nothing else held it (in-a-cycle).
    from django.core.handlers.asgi import ASGIHandler

    authorization = bearer(session_issuer, sub="leaver").encode()
    scope = http_scope(
        [(b"host", b"testserver"), (b"authorization", authorization)],
        path="/async-abandoned",
        raw_path=b"/async-abandoned",
        query_string=query,
    )

    async def serve() -> None:
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                gone.set()  # the client went away after the first chunk
                await asyncio.sleep(1)  # cancelled by Django once it sees the disconnect

        await ASGIHandler()(scope, receive, send)
        assert current_auth.get() is None
        for _ in range(3):  # the clean-up runs on the loop, after Django's close()
            await asyncio.sleep(0)

    cleaned_up.clear()
    # A sync-only middleware below runs this one synchronously, in a worker thread.
    middleware = [MIDDLEWARE] + ([] if below is None else [f"{__name__}.{below}"])
    with configured(session_issuer.guard()), override_settings(MIDDLEWARE=middleware):
        asyncio.run(serve())
    assert cleaned_up == ["leaver"]


@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
@pytest.mark.parametrize(
    ("path", "status"), [("/items", 401), ("/.well-known/oauth-protected-resource", 405)]
)
def test_a_method_spelt_head_in_lower_case_is_no_head_request(
    session_issuer: DevIssuer, handler: str, path: str, status: int
) -> None:
    # Methods are case-sensitive (RFC 9110 §9.1): the server frames an answer to "head" with
    # its content. Django's request.method reads "HEAD": the refusal was emptied (under a
    # Content-Length of 84 that no server sent) and the metadata document too; they are
    # answered as by the WSGI and ASGI middlewares, the refusal with its body, the metadata
    # 405 (only GET, HEAD and OPTIONS are served).
    common = "django.middleware.common.CommonMiddleware"
    the_guard = session_issuer.guard(resource="https://api.example")
    with configured(the_guard), override_settings(MIDDLEWARE=[common, MIDDLEWARE]):
        if handler == "wsgi":
            environ = {
                "REQUEST_METHOD": "head",
                "PATH_INFO": path,
                "QUERY_STRING": "",
                "SERVER_NAME": "testserver",
                "SERVER_PORT": "80",
                "HTTP_HOST": "testserver",
                "REMOTE_ADDR": "127.0.0.1",
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(b""),
                "wsgi.errors": io.StringIO(),
            }
            seen: list[tuple[str, list[tuple[str, str]]]] = []
            body = WSGIHandler()(environ, lambda *answer: seen.append(answer[:2]))
            content = b"".join(body)
            getattr(body, "close", lambda: None)()
            answered, headers = int(seen[0][0][:3]), dict(seen[0][1])
        else:
            from django.core.handlers.asgi import ASGIHandler

            scope = {
                "type": "http",
                "method": "head",
                "path": path,
                "query_string": b"",
                "headers": [(b"host", b"testserver")],
                "client": ("127.0.0.1", 1),
                "server": ("testserver", 80),
                "scheme": "http",
            }
            sent: list[dict[str, Any]] = []
            requests = [{"type": "http.request", "body": b""}]

            async def receive() -> dict[str, Any]:
                if requests:
                    return requests.pop()
                await asyncio.Event().wait()  # the client stays until answered
                raise AssertionError  # pragma: no cover

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            asyncio.run(ASGIHandler()(scope, receive, send))
            content = b"".join(message.get("body", b"") for message in sent[1:])
            answered = sent[0]["status"]
            headers = {name.decode(): value.decode() for name, value in sent[0]["headers"]}
    assert answered == status
    assert content.startswith(b'{"error"') == (status == 401)
    assert {name.lower(): value for name, value in headers.items()}["content-length"] == str(
        len(content)
    )


class _CountedMeta(dict[str, Any]):
    """A request's ``META`` that counts the reads of ``HTTP_X_REQUEST_ID``."""

    reads = 0

    def get(self, key: str, default: Any = None) -> Any:
        if key == "HTTP_X_REQUEST_ID":
            self.reads += 1
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        if key == "HTTP_X_REQUEST_ID":
            self.reads += 1
        return super().__getitem__(key)


@pytest.mark.parametrize("client", [None, ("", 0), ["", 0]], ids=["none", "tuple", "list"])
def test_an_asgi_request_without_a_client_address_is_described_with_client_none(
    client: Any,
) -> None:
    # granian and gunicorn on a Unix socket: Django's ASGI request sets REMOTE_ADDR to the
    # scope's empty host, or leaves it out. No address: None, as the ASGI middleware gives.
    request = ASGIRequest(http_scope([], client=client), io.BytesIO(b""))
    assert _described(request) == ("GET", "/me", None, None)


@pytest.mark.parametrize("remote_addr", [{"REMOTE_ADDR": ""}, {}], ids=["empty", "absent"])
def test_a_wsgi_request_without_a_client_address_is_described_with_client_none(
    remote_addr: dict[str, str],
) -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/me",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(b""),
        **remote_addr,
    }
    assert _described(WSGIRequest(environ)) == ("GET", "/me", None, None)


def test_an_asgi_request_s_ids_are_read_once_from_its_scope() -> None:
    # Django's ASGI request joins X-Request-ID values with a bare ",": the events take them
    # from the scope, joined as the ASGI middleware joins them, and META's copy is not read.
    headers = [(b"x-request-id", b"r-1"), (b"x-request-id", b"r-2")]
    request = ASGIRequest(http_scope(headers, client=("10.0.0.7", 1234)), io.BytesIO(b""))
    meta = request.META = _CountedMeta(request.META)
    assert meta["HTTP_X_REQUEST_ID"] == "r-1,r-2"
    meta.reads = 0
    assert _described(request) == ("GET", "/me", "10.0.0.7", "r-1, r-2")
    assert meta.reads == 0
