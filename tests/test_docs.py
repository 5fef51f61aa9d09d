"""Every ```python block in README.md and docs/ runs, in order, one namespace per file; the
audit events page lists the fields and reasons the code emits."""

from __future__ import annotations

import ast
import inspect
import re
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bearerguard import BearerGuard, requires_scopes
from bearerguard._core.introspected import INTROSPECTION_ALGORITHM
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.audit import token_fields
from bearerguard.dpop import DPoPPolicy
from bearerguard.errors import AuthError, ServiceUnavailableError
from bearerguard.events import CAEP_SESSION_REVOKED, SET_MEDIA_TYPE, SecurityEventReceiver
from bearerguard.mcp import _BodyTooLargeError
from bearerguard.revocation import MemoryRevocationStore
from bearerguard.testing import DevIssuer
from bearerguard.usage import MemoryUsageMonitor, UsagePolicy

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_python_blocks_run(document: Path) -> None:
    namespace: dict[str, object] = {"__name__": "docs_snippet"}
    for number, block in enumerate(_BLOCK.findall(document.read_text()), start=1):
        code = compile(block, f"{document.name}[block {number}]", "exec", dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - running our own documentation is the point


AUDIT_PAGE = ROOT / "docs" / "audit-events.md"
_FIELD = re.compile(r"`([a-z_.]+)`")


def _documented_fields() -> dict[str, tuple[set[str], set[str]]]:
    """docs/audit-events.md's table of each event's fields: always, and when they apply."""
    table: dict[str, tuple[set[str], set[str]]] = {}
    for line in AUDIT_PAGE.read_text().splitlines():
        cells = line.split(" | ")
        if len(cells) == 3 and cells[0].startswith("| `") and "`outcome`" in cells[1]:
            event = _FIELD.findall(cells[0])[0]
            table[event] = (set(_FIELD.findall(cells[1])), set(_FIELD.findall(cells[2])))
    return table


def _documented_reasons() -> dict[str, int]:
    """docs/audit-events.md's table of reasons and the status each answers."""
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \|", AUDIT_PAGE.read_text(), re.MULTILINE)
    return {reason: int(status) for reason, status in rows}


def _emit_every_event(issuer: DevIssuer) -> list[dict[str, Any]]:
    """Every audit event name, through real requests to real middlewares and receivers."""

    @requires_scopes("items:read")
    async def scoped(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    store = MemoryRevocationStore()
    monitor = MemoryUsageMonitor(UsagePolicy(max_addresses_per_token=1))  # action "log"
    guard = issuer.guard(revocation=store, usage=monitor)
    receiver = SecurityEventReceiver(guard=guard, audience="https://api.example/events")
    app = Starlette(
        routes=[Route("/", scoped), Route("/events", receiver)],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/events"])],
    )
    offline = BearerGuard(issuer="http://127.0.0.1:9", audience="https://api.example")
    unavailable = BearerGuardMiddleware(scoped, guard=offline)
    dpop_only = BearerGuardMiddleware(scoped, guard=issuer.guard(dpop=DPoPPolicy(mode="required")))
    token = issuer.mint(scopes=["items:read"], sub="alice", jti="audit-fields")
    bearer = {"Authorization": f"Bearer {token}"}
    now = int(time.time())
    security_event = issuer.sign(
        {
            "iss": issuer.url,
            "aud": "https://api.example/events",
            "iat": now,
            "jti": uuid.uuid4().hex,
            "sub_id": {"format": "iss_sub", "iss": issuer.url, "sub": "carol"},
            "events": {CAEP_SESSION_REVOKED: {"event_timestamp": now}},
        },
        headers={"typ": "secevent+jwt"},
    )
    pushed = {"Content-Type": SET_MEDIA_TYPE}
    with structlog.testing.capture_logs() as events:
        client = TestClient(app)
        assert client.get("/", headers=bearer).status_code == 200
        moved = TestClient(app, client=("203.0.113.50", 1))
        assert moved.get("/", headers=bearer).status_code == 200  # token.anomaly, logged
        assert client.get("/").status_code == 401
        assert client.get("/", headers={"Authorization": "Bearer a.b.c"}).status_code == 401
        under_scoped = {"Authorization": f"Bearer {issuer.mint()}"}
        assert client.get("/", headers=under_scoped).status_code == 403
        anyio.run(lambda: store.revoke_token("audit-fields", expires_at=now + 600))
        assert client.get("/", headers=bearer).status_code == 401
        assert client.post("/events", content=security_event, headers=pushed).status_code == 202
        # Delivered again: acknowledged (RFC 8935 §2), its event.received shaped as the first.
        assert client.post("/events", content=security_event, headers=pushed).status_code == 202
        assert client.post("/events", content="not.a.set", headers=pushed).status_code == 400
        assert TestClient(unavailable).get("/", headers=bearer).status_code == 503
        assert TestClient(dpop_only).get("/", headers=bearer).status_code == 401
    return events


def check_documented_fields(events: list[dict[str, Any]]) -> None:
    """Each of ``events`` has the fields docs/audit-events.md lists for it, and no other;
    a refusal's reason is documented with the status it answered."""
    documented, reasons = _documented_fields(), _documented_reasons()
    for event in events:
        always, sometimes = documented[event["event"]]
        fields = set(event) - {"event", "log_level"}
        assert always <= fields, (event["event"], always - fields)
        assert fields <= always | sometimes, (event["event"], fields - always - sometimes)
        if event["event"] in ("token.rejected", "scope.denied", "auth.unavailable"):
            assert reasons.get(event["reason"]) == event["status"], event


def test_each_audit_event_carries_the_fields_its_documentation_lists(
    session_issuer: DevIssuer,
) -> None:
    # tests/test_django.py checks the Django middleware's events the same way.
    events = _emit_every_event(session_issuer)
    assert {event["event"] for event in events} == set(_documented_fields())
    check_documented_fields(events)
    # A DPoP-bound token's scheme mismatch has a reason of its own (RFC 9449 §7.1, §7.2).
    assert events[-1]["reason"] == "invalid_token"


def test_each_refusal_reason_is_documented_with_its_status() -> None:
    documented = _documented_reasons()
    for error in _subclasses(AuthError):
        # The base of the 503 errors is never raised itself; a private class shares the
        # reason (and the row) of a public one.
        if error is not ServiceUnavailableError and not error.__name__.startswith("_"):
            assert documented.get(error.reason) == error.status, error.__name__


def _subclasses(base: type[AuthError]) -> list[type[AuthError]]:
    found: list[type[AuthError]] = []
    for sub in base.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_the_readme_apps_answer_as_the_readme_says(session_issuer: DevIssuer) -> None:
    # The README's snippets build three apps that nothing else ever requests: run them as
    # written, with only the issuer's URL swapped for a development issuer's.
    namespace: dict[str, Any] = {"__name__": "readme"}
    source = (ROOT / "README.md").read_text().replace('"https://issuer.example"', "ISSUER")
    namespace["ISSUER"] = session_issuer.url
    for block in _BLOCK.findall(source):
        exec(compile(block, "README.md", "exec", dont_inherit=True), namespace)  # noqa: S102
    reader = session_issuer.mint(scopes=["items:read", "reports:read"], sub="ann")
    nobody = {"Authorization": f"Bearer {session_issuer.mint(sub='ann')}"}
    bearer = {"Authorization": f"Bearer {reader}"}
    with TestClient(namespace["app"]) as client:
        assert client.get("/items", headers=bearer).json() == {"owner": "ann", "items": []}
        assert client.get("/health").json() == {"ok": True}
        # The "What you get" table, RFC 6750 §3 and §3.1.
        missing = client.get("/items")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="https://api.example"'
        twice = [("Authorization", f"Bearer {reader}")] * 2
        assert client.get("/items", headers=twice).status_code == 400
        in_url = client.get(f"/items?access_token={reader}")
        assert in_url.status_code == 400
        assert 'error="invalid_request"' in in_url.headers["www-authenticate"]
        forged = {"Authorization": f"Bearer {session_issuer.mint_forged()}"}
        assert (
            'error="invalid_token"'
            in client.get("/items", headers=forged).headers["www-authenticate"]
        )
        denied = client.get("/items", headers=nobody)
        assert denied.status_code == 403
        assert denied.headers["www-authenticate"].endswith('scope="items:read"')
    with TestClient(namespace["api"]) as client:
        assert client.get("/reports/3", headers=bearer).json() == {"id": 3, "reader": "ann"}
        # Under-scoped: 403 even where FastAPI would answer 422 for the path parameter.
        assert client.get("/reports/three", headers=nobody).status_code == 403
    with TestClient(namespace["docs_api"]) as client:
        assert client.get("/items", headers=bearer).json() == []
        assert client.get("/items", headers=nobody).status_code == 403
        operation = client.get("/openapi.json").json()["paths"]["/items"]["get"]
        assert operation["security"] == [{"bearerAuth": ["items:read"]}]


def test_the_configuration_table_lists_every_option_with_its_default() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", page, re.MULTILINE))
    parameters = inspect.signature(BearerGuard).parameters
    assert set(rows) == set(parameters)
    for name, cell in rows.items():
        try:
            documented = ast.literal_eval(cell.strip().strip("`"))
        except (ValueError, SyntaxError):
            continue  # "required", "`MemoryRevocationStore()`": said in words
        assert documented == parameters[name].default, name


def test_the_wsgi_page_apps_answer_as_the_page_says(session_issuer: DevIssuer) -> None:
    # docs/wsgi.md's Django and plain WSGI snippets build apps that nothing else requests:
    # run them as written (the issuer's URL swapped), route the Django view, and ask them.
    import sys
    import types

    import httpx
    from django.conf import settings
    from django.urls import clear_url_caches, path

    namespace: dict[str, Any] = {"__name__": "docs_wsgi"}
    source = (ROOT / "docs" / "wsgi.md").read_text().replace('"https://issuer.example"', "ISSUER")
    namespace["ISSUER"] = session_issuer.url
    for block in _BLOCK.findall(source):
        exec(compile(block, "wsgi.md", "exec", dont_inherit=True), namespace)  # noqa: S102
    urls = types.ModuleType("docs_wsgi_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("items", namespace["django_items"]),
        path("reports", namespace["DjangoReports"].as_view()),
    ]
    sys.modules[urls.__name__], before = urls, settings.ROOT_URLCONF
    settings.ROOT_URLCONF = urls.__name__
    clear_url_caches()
    reader = {"Authorization": f"Bearer {session_issuer.mint(scopes=['items:read'], sub='ann')}"}
    nobody = {"Authorization": f"Bearer {session_issuer.mint(sub='ann')}"}
    try:
        for app in (namespace["application"], namespace["protected"]):
            transport = httpx.WSGITransport(app=app)
            with httpx.Client(transport=transport, base_url="http://testserver") as client:
                missing = client.get("/items")
                assert missing.status_code == 401
                assert missing.headers["www-authenticate"] == 'Bearer realm="https://api.example"'
                got = client.get("/items", headers=reader)
                assert got.status_code == 200
                if app is namespace["protected"]:
                    assert got.content == b"hello"
                else:
                    assert got.json() == {"for": "ann"}
                    denied = client.get("/items", headers=nobody)
                    assert denied.status_code == 403
                    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
                    assert client.get("/reports", headers=nobody).status_code == 403
    finally:
        settings.ROOT_URLCONF = before
        clear_url_caches()
        del sys.modules[urls.__name__]


# The pages a new user copies from, with full type hints: what they show must pass the
# `mypy --strict` that user code is checked with (a `str | None` passed where `str` is
# wanted, `**options: object` forwarded to typed keywords, an attribute the type lacks).
TYPED_PAGES = ("README.md", "getting-started.md", "starlette.md", "fastapi.md", "websockets.md")
TYPED_PAGES += ("configuration.md", "revocation.md", "dpop.md", "mcp.md", "cli.md")


def test_the_typed_pages_pass_mypy_strict(tmp_path: Path) -> None:
    from mypy import api

    files = []
    for name in TYPED_PAGES:
        document = ROOT / name if name == "README.md" else ROOT / "docs" / name
        module = tmp_path / f"page_{document.stem.replace('-', '_')}.py"
        module.write_text("\n".join(_BLOCK.findall(document.read_text())))
        files.append(str(module))
    config = tmp_path / "mypy.ini"  # a user's settings (bearerguard is read from source here)
    config.write_text("[mypy]\n[mypy-django.*]\nignore_missing_imports = True\n")
    options = ["--strict", "--disable-error-code", "no-redef", "--no-error-summary"]
    options += ["--config-file", str(config), "--cache-dir", str(tmp_path / "cache")]
    report, errors, status = api.run([*options, *files])
    assert status == 0, report + errors


def test_the_access_log_recipe_redacts_a_real_uvicorn_line(session_issuer: DevIssuer) -> None:
    # docs/security.md: the guard redacts a query token it refuses; the filter is for the
    # lines it cannot reach, here a route beside the guarded app on a real uvicorn server.
    import logging

    import httpx
    from starlette.routing import Mount

    from tests.helpers import uvicorn_logging

    namespace: dict[str, Any] = {"__name__": "docs_security"}
    for block in _BLOCK.findall((ROOT / "docs" / "security.md").read_text()):
        exec(compile(block, "security.md", "exec", dont_inherit=True), namespace)  # noqa: S102
    access = logging.getLogger("uvicorn.access")
    redact = namespace["RedactAccessToken"]
    # The page installs one too (test_python_blocks_run runs it): the line is first seen raw.
    access.filters = [f for f in access.filters if type(f).__name__ != "RedactAccessToken"]
    guarded = BearerGuardMiddleware(Starlette(), guard=session_issuer.guard())
    outside = PlainTextResponse("signed in")
    app = Starlette(routes=[Route("/login", outside), Mount("/api", app=guarded)])
    try:
        with uvicorn_logging(app) as (base, log):
            url = f"http://{base}"
            assert httpx.get(f"{url}/api/me?page=1&access_token=s3cret-0").status_code == 400
            assert httpx.get(f"{url}/login?page=1&access_token=s3cret-1").status_code == 200
            access.addFilter(redact())
            assert httpx.get(f"{url}/login?page=2&access_token=s3cret-2").status_code == 200
            assert httpx.get(f"{url}/login?access%5Ftoken=s3cret-3&x=1").status_code == 200
            assert httpx.get(f"{url}/api/me?access_token=s3cret-4").status_code == 400
    finally:
        access.filters = [f for f in access.filters if not isinstance(f, redact)]
    assert [line.split('"')[1] for line in log.getvalue().splitlines()] == [
        "GET /api/me?page=1&access_token=REDACTED HTTP/1.1",  # the guard's own doing
        "GET /login?page=1&access_token=s3cret-1 HTTP/1.1",  # what the recipe is for
        "GET /login?page=2&access_token=REDACTED HTTP/1.1",
        "GET /login?access%5Ftoken=REDACTED&x=1 HTTP/1.1",
        "GET /api/me?access_token=REDACTED HTTP/1.1",
    ]


def _audit_row(start: str) -> str:
    return next(line for line in AUDIT_PAGE.read_text().splitlines() if line.startswith(start))


def test_the_alg_of_an_opaque_token_is_documented() -> None:
    # An introspected (opaque) token has no header: its events' alg is a constant.
    assert f"`{INTROSPECTION_ALGORITHM}`" in _audit_row("| `kid`, `alg` |")


def test_every_status_of_a_reason_is_documented() -> None:
    # MCPToolScopes refuses a body too large to check with invalid_request and 413.
    assert _BodyTooLargeError.reason == "invalid_request"
    assert str(_BodyTooLargeError.status) in _audit_row("| `invalid_request` |")


def test_the_required_aud_of_an_introspection_answer_is_said_before_its_rules() -> None:
    # RFC 7662 §2.2 makes aud optional, yet an answer naming no audience is refused unless
    # the introspector says the server checks it (tests/test_introspection.py): the page
    # says so, and the way out, before the table of members; no page says it is accepted.
    page = (ROOT / "docs" / "revocation.md").read_text()
    section = page.partition("\n## Opaque access tokens\n")[2]
    before_the_rules = section.partition("| member | rule |")[0]
    assert "without `aud` is refused" in before_the_rules
    assert "audience_checked_by_server=True" in before_the_rules
    for document in DOCUMENTS:
        assert "without `aud` is accepted" not in document.read_text(), document.name


def test_the_count_of_a_cached_token_s_bound_fields_is_the_one_documented() -> None:
    # The fields bound once to a cached token's logger are token_fields'; exp joined them.
    with DevIssuer() as issuer:
        count = len(token_fields(issuer.guard().authenticate_sync(issuer.mint())))
    words = {8: "eight", 9: "nine", 10: "ten"}
    page = " ".join((ROOT / "docs" / "audit-events.md").read_text().split())
    assert f"its own logger, with its {words[count]} fields and the four constant" in page
