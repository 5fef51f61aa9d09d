"""Django REST framework views behind bearerguard.django.BearerGuardMiddleware.

Every claim of docs/django.md's "Django REST framework" section, against real DRF views
(``@api_view`` functions, an ``APIView``, a viewset and its extra action) driven by Django's
``Client`` (the sync path, WSGI requests) and ``AsyncClient`` (the async path, ASGI
requests; DRF's views are sync, run by Django in a thread). The authentication classes are
those the page's ``REST_FRAMEWORK`` setting lists, its block run as written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
import structlog
from django.conf import settings

if not settings.configured:  # the first Django test of the session (see docs/wsgi.md)
    settings.configure(
        ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="tests-only", MIDDLEWARE=[]
    )
    django.setup()

from django.http import HttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.decorators import action, api_view
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView
from rest_framework.viewsets import ViewSet

from bearerguard import BearerGuard, get_access_token, requires_scopes
from bearerguard.django import BearerGuardAuthentication, TokenUser
from bearerguard.testing import DevIssuer

ROOT = Path(__file__).resolve().parent.parent


def _page_block(marker: str) -> dict[str, Any]:
    """The namespace of docs/django.md's block holding ``marker``, run as written."""
    page = (ROOT / "docs" / "django.md").read_text()
    blocks = [block.split("\n```", 1)[0] for block in page.split("```python\n")[1:]]
    (block,) = [block for block in blocks if marker in block]
    namespace: dict[str, Any] = {"__name__": "docs_django_drf"}
    exec(compile(block, "django.md", "exec", dont_inherit=True), namespace)  # noqa: S102
    return namespace


# What APIView.authentication_classes is in a project with the page's setting: DRF reads
# it once, when rest_framework.views is first imported (after the project's settings).
with override_settings(
    REST_FRAMEWORK=_page_block("DEFAULT_AUTHENTICATION_CLASSES")["REST_FRAMEWORK"]
):
    PAGE_CLASSES = tuple(api_settings.DEFAULT_AUTHENTICATION_CLASSES)

MIDDLEWARE = "bearerguard.django.BearerGuardMiddleware"
CSRF = "django.middleware.csrf.CsrfViewMiddleware"
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"
APPS = ["django.contrib.auth", "django.contrib.contenttypes", "rest_framework"]


def _whom(request: Request) -> dict[str, Any]:
    token = get_access_token(request)
    return {"for": token.subject if token else None, "drf": isinstance(request, Request)}


@api_view(["GET", "POST"])
@requires_scopes("items:read")
def below(request: Request) -> Response:  # requires_scopes below @api_view: DRF's Request
    return Response(_whom(request))


@requires_scopes("items:read")
@api_view(["GET", "POST"])
def above(request: Request) -> Response:  # above: the check runs before DRF does
    return Response(_whom(request))


class Items(APIView):
    @requires_scopes("items:read")
    def get(self, request: Request) -> Response:
        return Response(_whom(request))

    @requires_scopes("items:write")
    def post(self, request: Request) -> Response:
        return Response({"created": True}, status=201)


class ItemSet(ViewSet):
    @requires_scopes("items:read")
    def list(self, request: Request) -> Response:
        return Response(_whom(request))

    @action(detail=False, methods=["get"])
    @requires_scopes("reports:read")
    def recent(self, request: Request) -> Response:
        return Response(_whom(request))

    @requires_scopes("reports:write")  # above @action, which marks what it wraps
    @action(detail=False, methods=["post"])
    def archive(self, request: Request) -> Response:
        return Response(_whom(request))


@method_decorator(requires_scopes("items:read"), name="dispatch")
class Whole(APIView):  # every method, OPTIONS (DRF's own answer) included
    def get(self, request: Request) -> Response:
        return Response(_whom(request))


def _user(request: Request) -> dict[str, Any]:
    user, auth = request.user, request.auth
    return {
        "user": user.get_username(),
        "token_user": isinstance(user, TokenUser),
        "auth": getattr(auth, "subject", None),
    }


class Authenticated(APIView):
    authentication_classes = PAGE_CLASSES
    permission_classes = (IsAuthenticated,)

    def get(self, request: Request) -> Response:
        return Response(_user(request))

    def post(self, request: Request) -> Response:
        return Response(_user(request))


class Failing(Authenticated):  # the view's own refusal of a token the middleware let in
    def get(self, request: Request) -> Response:
        raise AuthenticationFailed("the account is locked")


class SessionFirst(Authenticated):  # the page's classes, listed the other way round
    authentication_classes = PAGE_CLASSES[::-1]


class Defaults(APIView):  # DRF's own authentication classes: session, basic
    permission_classes = (IsAuthenticated,)

    def get(self, request: Request) -> Response:
        return Response(_user(request))


class UserThrottled(UserRateThrottle):
    rate = "1/hour"  # set here: DRF reads DEFAULT_THROTTLE_RATES once, at import


class TokenThrottled(_page_block("class TokenRateThrottle")["TokenRateThrottle"]):
    rate = "1/hour"


class Throttled(Authenticated):
    throttle_classes = (UserThrottled,)


class TokenRateThrottled(Authenticated):
    throttle_classes = (TokenThrottled,)


def plain(request: Any) -> HttpResponse:  # a Django view beside them, not exempt from CSRF
    return HttpResponse("ok")


router = SimpleRouter(trailing_slash=False)
router.register("set", ItemSet, basename="set")

urlpatterns = [
    path("below", below),
    path("above", above),
    path("items", Items.as_view()),
    path("whole", Whole.as_view()),
    path("authenticated", Authenticated.as_view()),
    path("session-first", SessionFirst.as_view()),
    path("failing", Failing.as_view()),
    path("defaults", Defaults.as_view()),
    path("plain", plain),
    path("throttled", Throttled.as_view()),
    path("token-throttled", TokenRateThrottled.as_view()),
    *router.urls,
]

SCOPED = {  # each scoped DRF view, its scope for a GET
    "/below": "items:read",
    "/above": "items:read",
    "/items": "items:read",
    "/set": "items:read",
    "/set/recent": "reports:read",
    "/whole": "items:read",
}
PUBLIC = ["/public/*"]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def configured(the_guard: BearerGuard, *middleware: str, **options: Any) -> override_settings:
    """This module's URLs behind the middleware (and ``middleware`` below it)."""
    return override_settings(
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=APPS,
        MIDDLEWARE=[MIDDLEWARE, *middleware],
        BEARERGUARD={"GUARD": the_guard, **options},
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
    )


@pytest.fixture
def project(session_issuer: DevIssuer) -> Iterator[BearerGuard]:
    the_guard = session_issuer.guard()
    with configured(the_guard):
        yield the_guard


def send(
    kind: str,
    method: str,
    url: str,
    authorization: str | None = None,
    *,
    csrf: bool = False,
    cookies: dict[str, str] | None = None,
) -> Any:
    """``method`` ``url`` through Django's Client (sync) or AsyncClient (async); ``csrf``:
    a client that enforces CSRF checks, as production does."""
    headers = {} if authorization is None else {"Authorization": authorization}
    client: Any = (Client if kind == "sync" else AsyncClient)(enforce_csrf_checks=csrf)
    for name, value in (cookies or {}).items():
        client.cookies[name] = value
    response = getattr(client, method.lower())(url, headers=headers)
    return response if kind == "sync" else asyncio.run(response)


def bearer(issuer: DevIssuer, *scopes: str, sub: str = "mia") -> str:
    return f"Bearer {issuer.mint(scopes=scopes, sub=sub)}"


@pytest.mark.parametrize(("url", "scope"), SCOPED.items())
def test_a_scoped_drf_view_lets_a_token_with_its_scope_in(
    project: BearerGuard, session_issuer: DevIssuer, kind: str, url: str, scope: str
) -> None:
    with structlog.testing.capture_logs() as events:
        response = send(kind, "GET", url, bearer(session_issuer, scope))
    assert response.status_code == 200
    # get_access_token(request) takes DRF's Request (which the views are handed) as Django's.
    assert response.json() == {"for": "mia", "drf": True}
    assert [event["event"] for event in events] == ["token.accepted"]


@pytest.mark.parametrize(("url", "scope"), SCOPED.items())
def test_a_scoped_drf_view_refuses_a_token_without_its_scope_in_rfc_6750_form(
    project: BearerGuard, session_issuer: DevIssuer, kind: str, url: str, scope: str
) -> None:
    with structlog.testing.capture_logs() as events:
        response = send(kind, "GET", url, bearer(session_issuer, "other"))
    assert response.status_code == 403  # RFC 6750 §3.1
    assert response["WWW-Authenticate"] == (
        f'Bearer realm="{project.realm}", error="insufficient_scope", error_description='
        f'"The access token does not grant the scope this request needs.", scope="{scope}"'
    )
    assert response.json()["error"] == "insufficient_scope"
    assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]


def test_an_apiview_method_checks_its_own_scope(
    project: BearerGuard, session_issuer: DevIssuer, kind: str
) -> None:
    reader = bearer(session_issuer, "items:read")
    assert send(kind, "POST", "/items", reader).status_code == 403
    writer = bearer(session_issuer, "items:write")
    created = send(kind, "POST", "/items", writer)
    assert (created.status_code, created.json()) == (201, {"created": True})


def test_a_viewset_action_decorated_above_action_checks_its_scope(
    project: BearerGuard, session_issuer: DevIssuer, kind: str
) -> None:
    assert send(kind, "POST", "/set/archive", bearer(session_issuer, "other")).status_code == 403
    archived = send(kind, "POST", "/set/archive", bearer(session_issuer, "reports:write"))
    assert (archived.status_code, archived.json()) == (200, {"for": "mia", "drf": True})


def test_on_dispatch_the_check_covers_drfs_options_answer(
    project: BearerGuard, session_issuer: DevIssuer, kind: str
) -> None:
    # A method's decorator leaves OPTIONS to DRF, which describes the view to any token.
    other = bearer(session_issuer, "other")
    assert send(kind, "OPTIONS", "/items", other).status_code == 200
    assert send(kind, "OPTIONS", "/whole", other).status_code == 403
    assert send(kind, "OPTIONS", "/whole", bearer(session_issuer, "items:read")).status_code == 200


@pytest.mark.parametrize("url", [*SCOPED, "/authenticated", "/defaults"])
@pytest.mark.parametrize(
    ("authorization", "query", "status", "error"),
    [
        (None, "", 401, None),  # RFC 6750 §3.1: no error code without credentials
        ("Bearer a b", "", 400, "invalid_request"),
        (None, "?access_token=x", 400, "invalid_request"),
        ("Bearer a.b.c", "", 401, "invalid_token"),
    ],
)
def test_the_middleware_refuses_before_drf_runs(
    project: BearerGuard,
    kind: str,
    url: str,
    authorization: str | None,
    query: str,
    status: int,
    error: str | None,
) -> None:
    response = send(kind, "GET", url + query, authorization)
    assert response.status_code == status
    challenge = response["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{project.realm}"')
    if error is None:
        assert challenge == f'Bearer realm="{project.realm}"'
    else:
        assert f'error="{error}"' in challenge
        assert response.json()["error"] == error


def test_a_scoped_drf_view_on_a_public_path_still_needs_a_token(
    session_issuer: DevIssuer, kind: str
) -> None:
    with configured(session_issuer.guard(), PUBLIC_PATHS=list(SCOPED)):
        for url, scope in SCOPED.items():
            refused = send(kind, "GET", url)
            assert refused.status_code == 401, url
            assert refused["WWW-Authenticate"].endswith(f'scope="{scope}"')  # a hint
            assert "error=" not in refused["WWW-Authenticate"]


@pytest.mark.parametrize("url", ["/authenticated", "/session-first"])
def test_the_pages_authentication_class_hands_drf_the_token(
    session_issuer: DevIssuer, kind: str, url: str
) -> None:
    # DRF's request.user is a TokenUser, request.auth the AccessToken: IsAuthenticated
    # lets it in, as a session's user behind SessionAuthentication listed first.
    with configured(session_issuer.guard(), SESSIONS, AUTHENTICATION):
        response = send(kind, "GET", url, bearer(session_issuer, sub="ada"))
    assert response.status_code == 200
    assert response.json() == {"user": "ada", "token_user": True, "auth": "ada"}


@pytest.mark.parametrize("options", [{}, {"resource": "https://api.example"}, {"dpop": "required"}])
def test_without_a_token_drf_answers_401_with_the_middlewares_challenge(
    session_issuer: DevIssuer, kind: str, options: dict[str, Any]
) -> None:
    # On a public path (the middleware lets it in without a token) DRF refuses, with the
    # challenge of the class listed first. The page's class answered a bare "Bearer", which
    # RFC 6750 §3 forbids ("MUST be followed by one or more auth-param values"), with no
    # resource_metadata (RFC 9728 §5.1) and the wrong scheme for a DPoP-only guard.
    from bearerguard.dpop import DPoPPolicy
    from tests.test_docs import check_documented_fields

    if "dpop" in options:
        options = {"dpop": DPoPPolicy(mode="required")}
    the_guard = session_issuer.guard(**options)
    with configured(the_guard, PUBLIC_PATHS=["/authenticated"]):
        expected = send(kind, "GET", "/items")  # the middleware's own answer, no token
        with structlog.testing.capture_logs() as events:
            response = send(kind, "GET", "/authenticated")
    assert expected.status_code == response.status_code == 401
    assert response["WWW-Authenticate"] == expected["WWW-Authenticate"]
    assert response["WWW-Authenticate"].startswith(("Bearer realm=", "DPoP realm="))
    # Audited as the middleware audits a missing token.
    assert [(event["event"], event["reason"]) for event in events] == [
        ("token.rejected", "missing_token")
    ]
    check_documented_fields(events)


def test_a_views_own_refusal_of_a_token_is_not_audited_as_a_missing_token(
    project: BearerGuard, session_issuer: DevIssuer, kind: str
) -> None:
    # DRF asks the class for its challenge whenever AuthenticationFailed is raised, here by
    # the view for a token the middleware let in (and audited): a 401, and no second event
    # saying that no token was sent.
    expected = send(kind, "GET", "/items")  # the middleware's answer to a missing token
    with structlog.testing.capture_logs() as events:
        response = send(kind, "GET", "/failing", bearer(session_issuer))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == expected["WWW-Authenticate"]
    assert [event["event"] for event in events] == ["token.accepted"]


def test_listed_after_session_authentication_drf_answers_403(
    session_issuer: DevIssuer, kind: str
) -> None:
    # The page: DRF takes the challenge of the first class; SessionAuthentication has none.
    with configured(session_issuer.guard(), PUBLIC_PATHS=["/session-first"]):
        response = send(kind, "GET", "/session-first")
    assert response.status_code == 403
    assert "WWW-Authenticate" not in response


def test_without_the_middleware_the_authentication_class_names_it() -> None:
    from bearerguard.errors import ConfigurationError

    with (
        override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["testserver"], MIDDLEWARE=[]),
        pytest.raises(ConfigurationError, match=r"bearerguard\.django\.BearerGuardMiddleware"),
    ):
        Client().get("/authenticated")


def test_drfs_default_authentication_leaves_a_token_bearer_anonymous(
    project: BearerGuard, session_issuer: DevIssuer, kind: str
) -> None:
    # The page: DRF's default classes do not take the token, so IsAuthenticated refuses a
    # request the middleware let in (403: SessionAuthentication, listed first, names no
    # challenge), and request.user there is DRF's AnonymousUser.
    assert Defaults.authentication_classes == [SessionAuthentication, BasicAuthentication]
    response = send(kind, "GET", "/defaults", bearer(session_issuer))
    assert response.status_code == 403
    assert "WWW-Authenticate" not in response


def test_the_pages_setting_lists_bearerguards_class_first() -> None:
    assert (BearerGuardAuthentication, SessionAuthentication) == PAGE_CLASSES


@pytest.mark.parametrize("url", ["/below", "/above", "/session-first"])
def test_drf_views_need_no_csrf_token_for_a_bearer_request(
    session_issuer: DevIssuer, kind: str, url: str
) -> None:
    # With CsrfViewMiddleware and a client enforcing CSRF, as in production: DRF exempts its
    # views (requires_scopes above @api_view keeps the exemption), and SessionAuthentication
    # skips the TokenUser (not is_active), so asks no CSRF token of a request with no
    # cookie, nor of one that carries a session cookie beside its token.
    token = bearer(session_issuer, "items:read", sub="ada")
    with configured(session_issuer.guard(), CSRF, SESSIONS, AUTHENTICATION):
        assert send(kind, "POST", "/plain", token, csrf=True).status_code == 403  # not exempt
        for cookies in ({}, {settings.SESSION_COOKIE_NAME: "stale"}):
            response = send(kind, "POST", url, token, csrf=True, cookies=cookies)
            assert response.status_code == 200, response.content


def test_drfs_user_throttle_shares_one_rate_among_tokens_the_pages_does_not(
    session_issuer: DevIssuer, kind: str
) -> None:
    # UserRateThrottle keys on request.user.pk, None for every TokenUser: one client's
    # request spends the rate of every other. The page's throttle keys on the principal.
    from django.core.cache import cache

    cache.clear()
    ann, bob = (bearer(session_issuer, sub=sub) for sub in ("ann", "bob"))
    with configured(session_issuer.guard()):
        shared = [send(kind, "GET", "/throttled", token).status_code for token in (ann, bob)]
        own = [send(kind, "GET", "/token-throttled", token).status_code for token in (ann, bob)]
        again = send(kind, "GET", "/token-throttled", ann).status_code
    cache.clear()
    assert shared == [200, 429]
    assert own == [200, 200]
    assert again == 429
