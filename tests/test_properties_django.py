"""Property-based differential test of ``bearerguard.django.BearerGuardMiddleware``.

As for the ASGI and WSGI middlewares (``tests/test_properties.py``, section 5, and
``tests/test_properties_wsgi.py``): a project whose guard reuses verified tokens (the
middleware's cache-hit fast path serves its hits) and one whose guard caches nothing (every
request takes the general path) must answer every request alike (status, headers, body, the
verdict the view sees, the audit events), under WSGI (sync mode) and ASGI (async mode).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path, re_path
from hypothesis import event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import tests.test_django  # noqa: F401 - configures Django when this file runs first
from bearerguard import get_access_token, requires_scopes
from bearerguard._context import SCOPE_KEY, current_auth
from bearerguard.guard import BearerGuard
from bearerguard.testing import DevIssuer
from tests.test_properties import MIDDLEWARE_PROFILE
from tests.test_properties_wsgi import (
    DIFF_PUBLIC,
    authorization_values,
    call_wsgi,
    comparable_events,
    environ_overrides,
    verdict_seen,
)


def echo(request: HttpRequest) -> HttpResponse:
    """Answers with the verdict the middleware recorded for the view."""
    auth = request.META.get(SCOPE_KEY)
    scope = getattr(request, "scope", None) or {}  # an ASGI request's: read there first
    token = get_access_token(request)
    seen = (verdict_seen(scope.get(SCOPE_KEY)), None if token is None else token.subject)
    return HttpResponse(repr((verdict_seen(auth), current_auth.get() is auth, *seen)))


urlpatterns = [
    path("items", requires_scopes("items:read")(echo)),
    re_path(r"^.*$", echo),
]

# A request as a server sends it most often.
USUAL = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/me", "QUERY_STRING": ""}
Outcome = tuple[int, list[tuple[str, str]], bytes, list[dict[str, Any]]]


class DjangoDifferential:
    """A warm guard (cache hits served by the fast path) and a cold one (no cache), each
    in a Django project under WSGI and under ASGI."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.tokens = (
            issuer.mint(scopes=["items:read"]),
            issuer.mint(algorithm="ES256", sub="ec"),
        )
        self.warm_guard = issuer.guard()
        guards = (self.warm_guard, issuer.guard(cache_size=0))
        self.wsgi = tuple(self._loaded(guard, WSGIHandler) for guard in guards)
        self.asgi = tuple(self._loaded(guard, ASGIHandler) for guard in guards)

    @staticmethod
    def _loaded(guard: BearerGuard, handler: type[Any]) -> Any:
        options = {"GUARD": guard, "PUBLIC_PATHS": list(DIFF_PUBLIC)}
        with override_settings(
            MIDDLEWARE=["bearerguard.django.BearerGuardMiddleware"], BEARERGUARD=options
        ):
            return handler()  # loads the middleware, which reads the setting once

    def warm_up(self) -> None:
        for token in self.tokens:
            call_wsgi(self.wsgi[0], {"HTTP_AUTHORIZATION": f"Bearer {token}"})


def _header_bytes(text: str) -> bytes:
    """An environ's header text as an ASGI server hands it over: its latin-1 bytes, or for
    text that is not latin-1 (a respelled token), the UTF-8 a client would have sent."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def call_asgi(handler: Any, overrides: dict[str, str]) -> Outcome:
    """The request of ``overrides`` (an environ's keys) as an ASGI server would send it."""
    root = overrides["SCRIPT_NAME"]
    headers = [(b"host", b"localhost")]
    for key, name in (
        ("HTTP_AUTHORIZATION", b"authorization"),
        ("HTTP_X_REQUEST_ID", b"x-request-id"),
    ):
        if key in overrides:
            headers.append((name, _header_bytes(overrides[key])))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": overrides["REQUEST_METHOD"].upper(),
        "scheme": "http",
        "root_path": root,
        "path": root + overrides["PATH_INFO"].encode("latin-1").decode("utf-8", "replace"),
        "query_string": overrides["QUERY_STRING"].encode("latin-1"),
        "headers": headers,
        "client": (overrides.get("REMOTE_ADDR") or "127.0.0.1", 50000),
        "server": ("localhost", 80),
    }
    messages: list[MutableMapping[str, Any]] = []

    sent = asyncio.Event()  # one request message; then a client that stays (Django listens)

    async def receive() -> dict[str, Any]:
        if sent.is_set():
            await asyncio.Event().wait()
        sent.set()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    with capture_logs() as events:
        asyncio.run(handler(scope, receive, send))
    start = messages[0]
    body = b"".join(message.get("body", b"") for message in messages[1:])
    headers_seen = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"]
    ]
    return start["status"], headers_seen, body, comparable_events(events)


@pytest.fixture(scope="module")
def django_differential(session_issuer: DevIssuer) -> Iterator[DjangoDifferential]:
    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"]):
        yield DjangoDifferential(session_issuer)


@settings(MIDDLEWARE_PROFILE)
@given(data=st.data())
def test_the_django_fast_path_answers_as_the_general_path(
    django_differential: DjangoDifferential, data: st.DataObject
) -> None:
    """Whatever the request, under WSGI or ASGI, a project whose guard serves cache hits
    answers it as one whose guard has no cache."""
    overrides = data.draw(environ_overrides)
    authorization = data.draw(st.none() | authorization_values(django_differential.tokens))
    if authorization is not None:
        overrides["HTTP_AUTHORIZATION"] = authorization
    mode = data.draw(st.sampled_from(["wsgi", "asgi"]))
    django_differential.warm_up()
    if mode == "wsgi":
        warm_app, cold_app = django_differential.wsgi
        warm, cold = call_wsgi(warm_app, dict(overrides)), call_wsgi(cold_app, dict(overrides))
    else:
        warm_app, cold_app = django_differential.asgi
        warm, cold = call_asgi(warm_app, overrides), call_asgi(cold_app, overrides)
    event(f"{mode} {warm[0]}")
    assert warm == cold


def test_control_a_hit_on_the_warm_django_guard_answers_as_a_miss(
    django_differential: DjangoDifferential,
) -> None:
    """The comparison above is meaningful only if the warm guard's hits take the fast path
    and reach the view: checked here for every token and mode, whatever Hypothesis draws."""
    django_differential.warm_up()
    for token in django_differential.tokens:
        assert django_differential.warm_guard.reused(b"Bearer " + token.encode()) is not None
        overrides = {
            **USUAL,
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "HTTP_X_REQUEST_ID": "rid",
            "REMOTE_ADDR": "10.0.0.1",
        }
        pairs = ((call_wsgi, django_differential.wsgi), (call_asgi, django_differential.asgi))
        for call, (warm_app, cold_app) in pairs:
            warm = call(warm_app, dict(overrides))
            assert str(warm[0]).startswith("200"), warm
            assert warm == call(cold_app, dict(overrides))
