"""requires_scopes / requires_any_scope on every kind of Starlette and FastAPI endpoint."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, cast

import httpx
import pytest
import structlog
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import bearerguard.fastapi
from bearerguard import (
    AccessToken,
    BearerGuard,
    decorators,
    get_access_token,
    requires_any_scope,
    requires_scopes,
)
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.errors import ConfigurationError
from bearerguard.testing import DevIssuer
from tests.apps import build_app

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    name: str
    owner: str | None


def build_fastapi(guard: BearerGuard) -> FastAPI:
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])

    @app.get("/async/{name}")
    @requires_scopes("items:read")
    async def read_async(name: str) -> Item:
        token = get_access_token()
        return Item(name=name, owner=None if token is None else token.subject)

    @app.get("/sync/{name}")
    @requires_scopes("items:read")
    def read_sync(name: str, limit: int = 10) -> Item:
        token = get_access_token()
        return Item(name=f"{name}:{limit}", owner=None if token is None else token.subject)

    @app.delete("/any")
    @requires_any_scope("admin", "items:delete")
    async def delete_any() -> dict[str, bool]:
        return {"deleted": True}

    return app


@pytest.fixture
def guard(session_issuer: DevIssuer) -> BearerGuard:
    return session_issuer.guard()


@pytest.fixture
async def starlette_client(guard: BearerGuard) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def fastapi_client(guard: BearerGuard) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_fastapi(guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def bearer(issuer: DevIssuer, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(scopes=scopes, sub='erin')}"}


@pytest.mark.parametrize(
    ("method", "path", "scopes", "status"),
    [
        ("GET", "/items", ["items:read"], 200),
        ("GET", "/items", ["items:write"], 403),
        ("POST", "/items", ["items:read", "items:write"], 200),
        ("POST", "/items", ["items:write"], 403),
        ("DELETE", "/items", ["items:delete"], 200),
        ("DELETE", "/items", ["admin"], 200),
        ("DELETE", "/items", ["items:read"], 403),
        ("GET", "/reports", ["reports:read"], 200),
        ("GET", "/reports", ["reports:write"], 403),
        ("POST", "/reports", ["reports:write"], 200),
        ("POST", "/reports", ["Reports:write"], 403),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
async def test_starlette_endpoints(
    starlette_client: httpx.AsyncClient,
    session_issuer: DevIssuer,
    method: str,
    path: str,
    scopes: list[str],
    status: int,
) -> None:
    response = await starlette_client.request(method, path, headers=bearer(session_issuer, *scopes))
    assert response.status_code == status


class Export:
    """An endpoint written as an object with an async ``__call__``."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    async def __call__(self, request: Request) -> JSONResponse:
        return JSONResponse({"format": self.fmt})


async def export_as(request: Request, fmt: str) -> JSONResponse:
    return JSONResponse({"format": fmt})


async def test_starlette_async_callable_objects_and_partials(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # Not coroutine functions themselves: the object was wrapped as a sync endpoint and its
    # coroutine returned unawaited, a 500 for every request the scopes let through.
    app = Starlette(
        routes=[
            Route("/csv", requires_scopes("export")(Export("csv"))),
            Route("/pdf", requires_any_scope("export")(functools.partial(export_as, fmt="pdf"))),
        ],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/csv", "/pdf"):
            allowed = await client.get(path, headers=bearer(session_issuer, "export"))
            denied = await client.get(path, headers=bearer(session_issuer, "other"))
            assert allowed.json() == {"format": path[1:]}
            assert denied.status_code == 403


async def test_denial_challenge_names_the_required_scopes(
    starlette_client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    with structlog.testing.capture_logs() as events:
        response = await starlette_client.post(
            "/items", headers=bearer(session_issuer, "items:read")
        )
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="items:read items:write"' in challenge
    assert response.json()["error"] == "insufficient_scope"
    assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]
    denied = events[1]
    assert denied["required_scopes"] == ["items:read", "items:write"]
    assert denied["scopes"] == ["items:read"]
    assert denied["status"] == 403


async def test_fastapi_path_operations_without_request_parameter(
    fastapi_client: httpx.AsyncClient, session_issuer: DevIssuer
) -> None:
    ok = await fastapi_client.get("/async/pen", headers=bearer(session_issuer, "items:read"))
    assert ok.json() == {"name": "pen", "owner": "erin"}
    ok_sync = await fastapi_client.get(
        "/sync/pen?limit=3", headers=bearer(session_issuer, "items:read")
    )
    assert ok_sync.json() == {"name": "pen:3", "owner": "erin"}
    for path in ["/async/pen", "/sync/pen"]:
        denied = await fastapi_client.get(path, headers=bearer(session_issuer, "other"))
        assert denied.status_code == 403
        assert 'scope="items:read"' in denied.headers["www-authenticate"]
    assert (
        await fastapi_client.delete("/any", headers=bearer(session_issuer, "admin"))
    ).status_code == 200
    assert (await fastapi_client.delete("/any", headers=bearer(session_issuer))).status_code == 403
    assert (await fastapi_client.get("/async/pen")).status_code == 401


_LOADED: list[int] = []


def load_item(item_id: int) -> dict[str, int]:
    """A dependency that looks a record up (module level: FastAPI resolves it by name)."""
    _LOADED.append(item_id)
    raise HTTPException(404, "no such item")


async def test_fastapi_scope_check_runs_before_the_operations_own_dependencies(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # An under-scoped token must get 403 before the operation's dependencies run: one that
    # loads a record would otherwise answer 404 (an existence oracle) or write something.
    loaded = _LOADED
    loaded.clear()
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])

    @app.get("/items/{item_id}")
    @requires_scopes("items:read")
    async def read_item(item: Annotated[dict[str, int], Depends(load_item)]) -> dict[str, int]:
        return item  # pragma: no cover

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        denied = await client.get("/items/7", headers=bearer(session_issuer, "other"))
        assert denied.status_code == 403
        assert loaded == []
        found = await client.get("/items/7", headers=bearer(session_issuer, "items:read"))
        assert found.status_code == 404
        assert loaded == [7]


async def test_fastapi_check_is_declared_beside_a_flask_app(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # Flask and Django views keep their signatures, told by what the namespace they are
    # decorated in holds; a FastAPI app there (here beside a Flask app it would mount) says
    # the function may be a path operation: its check still runs before its dependencies.
    import flask

    loaded = _LOADED
    loaded.clear()
    legacy = flask.Flask("legacy")
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])

    @app.get("/items/{item_id}")
    @requires_scopes("items:read")
    async def read_item(item: Annotated[dict[str, int], Depends(load_item)]) -> dict[str, int]:
        return item  # pragma: no cover

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        denied = await client.get("/items/7", headers=bearer(session_issuer, "other"))
    assert denied.status_code == 403
    assert loaded == []
    assert legacy.name == "legacy"


class Note(BaseModel):
    text: str


@dataclasses.dataclass
class Draft:
    text: str


class _OwnRouter(APIRouter):
    """An app's own router class: nothing of FastAPI's module, but FastAPI's all the same."""


async def test_fastapi_check_is_declared_beside_a_werkzeug_helper(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # A FastAPI module that uses a Werkzeug (or Django) helper and reaches FastAPI only
    # through its own router class was read as a Flask view's: no check parameter, so the
    # operation's dependencies ran and its body was validated (422, the schema told) before
    # the scope check. Its parameters (Depends) and its router's base class say FastAPI.
    from werkzeug.utils import secure_filename

    loaded = _LOADED
    loaded.clear()

    @requires_scopes("items:read")
    async def read_item(item: Annotated[dict[str, int], Depends(load_item)]) -> dict[str, int]:
        return item  # pragma: no cover

    router = _OwnRouter()
    router.get("/items/{item_id}")(read_item)

    @router.post("/notes")
    @requires_scopes("notes:write")
    async def add_note(note: Note) -> dict[str, str]:
        return {"text": secure_filename(note.text)}

    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        denied = await client.get("/items/7", headers=bearer(session_issuer, "other"))
        unread = await client.post("/notes", headers=bearer(session_issuer, "other"), json={})
        added = await client.post(
            "/notes", headers=bearer(session_issuer, "notes:write"), json={"text": "a b"}
        )
    assert denied.status_code == 403
    assert loaded == []
    assert unread.status_code == 403, unread.text
    assert added.json() == {"text": "a_b"}


async def test_fastapi_check_is_declared_beside_a_django_helper_for_a_body_model(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # A module holding nothing of FastAPI's, a Django helper imported, a path operation
    # added elsewhere (add_api_route) taking only a body model: read as a Django view's, so
    # FastAPI validated the body first (422, the schema told) and the check came after.
    # Django passes a view the request first: a body model there says it is none.
    from django.utils.text import slugify

    @requires_scopes("notes:write")
    async def add_note(note: Note) -> dict[str, str]:
        return {"text": slugify(note.text)}

    @requires_scopes("notes:write")
    async def add_draft(draft: Draft) -> dict[str, str]:  # a dataclass body, as FastAPI reads one
        return {"text": slugify(draft.text)}

    @requires_scopes("notes:write")
    def django_view(request: object, note: Note) -> None: ...  # Django Ninja's shape

    assert "bearerguard_scope_check" not in str(inspect.signature(django_view))
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])
    app.add_api_route("/notes", add_note, methods=["POST"])
    app.add_api_route("/drafts", add_draft, methods=["POST"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for path in ["/notes", "/drafts"]:
            unread = await client.post(path, headers=bearer(session_issuer, "other"), json={})
            added = await client.post(
                path, headers=bearer(session_issuer, "notes:write"), json={"text": "a b"}
            )
            assert unread.status_code == 403, (path, unread.text)
            assert added.json() == {"text": "a-b"}


def test_a_body_model_beside_a_werkzeug_helper_stays_a_flask_views() -> None:
    # Flask extensions hand a view its body model as its only parameter (flask-pydantic's
    # validate, flask-openapi3), so that shape beside Werkzeug's or Flask's objects keeps
    # its signature: the limitation docs/fastapi.md states, with what to write instead.
    from werkzeug.utils import secure_filename

    @requires_scopes("notes:write")
    def add_note(body: Note) -> str:
        return secure_filename(body.text)  # pragma: no cover

    @requires_scopes("notes:write")
    def add_marked_note(body: Annotated[Note, Body()]) -> str:  # the documented remedy
        return secure_filename(body.text)  # pragma: no cover

    assert str(inspect.signature(add_note)) == "(body: 'Note') -> 'str'"
    assert "bearerguard_scope_check" in str(inspect.signature(add_marked_note))


def test_django_ninja_views_keep_their_signatures() -> None:
    # Django Ninja Extra's controller methods take their body model first, after self
    # (the request is self.context), beside Django's objects: read as path operations, they
    # were given the FastAPI check as a parameter, and Ninja could no longer build its
    # OpenAPI document (a Depends default it cannot encode). A plain Ninja module (a Router,
    # no Django import) lost its views' signatures the same way. Ninja's objects are
    # Django's: stand-ins named as Ninja's modules name them, as the check reads them.
    from django.utils.text import slugify

    router = type("Router", (), {"__module__": "ninja.router"})()

    class NotesController:  # its body holds what the check reads first: as a module would
        helper = slugify
        route = type("Route", (), {"__module__": "ninja_extra.controllers.route"})

        @requires_scopes("notes:write")
        def create(self, payload: Note) -> str:
            return self.helper(payload.text)  # pragma: no cover

    def ninja_module() -> Any:
        @requires_scopes("notes:write")
        def create(request: object, payload: Note) -> str:
            return str(router)  # pragma: no cover

        return create

    assert "bearerguard_scope_check" not in str(inspect.signature(NotesController.create))
    assert "bearerguard_scope_check" not in str(inspect.signature(ninja_module()))


async def test_fastapi_body_that_is_not_json_is_422_before_any_check(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # FastAPI decodes a JSON body before it solves any dependency: only a body that fails
    # validation gets the check's 403; one that is not JSON gets FastAPI's 422 first.
    app = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])

    @app.post("/notes")
    @requires_scopes("notes:write")
    async def add_note(note: Note) -> dict[str, str]:
        return {"text": note.text}  # pragma: no cover

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        headers = {**bearer(session_issuer, "other"), "Content-Type": "application/json"}
        invalid = await client.post("/notes", headers=headers, content=b'{"text": 1}')
        assert invalid.status_code == 403  # fails validation: the check answers first
        not_json = await client.post("/notes", headers=headers, content=b"{oops")
        assert not_json.status_code == 422  # not JSON: FastAPI answers before any check


def test_documents_do_not_promise_403_for_a_body_that_is_not_json() -> None:
    root = Path(__file__).resolve().parent.parent
    for path in [root / "README.md", root / "examples" / "fastapi_app.py"]:
        assert "never 422" not in " ".join(path.read_text().split()), path
    for module in (decorators, bearerguard.fastapi):
        assert "never 422" not in " ".join((module.__doc__ or "").split()), module


def test_fastapi_keeps_the_handler_signature_in_openapi(guard: BearerGuard) -> None:
    schema = build_fastapi(guard).openapi()
    parameters = schema["paths"]["/sync/{name}"]["get"]["parameters"]
    assert [parameter["name"] for parameter in parameters] == ["name", "limit"]


async def test_without_middleware_the_decorator_fails_loudly() -> None:
    @requires_scopes("x")
    async def handler() -> str:
        return "never"  # pragma: no cover

    with pytest.raises(ConfigurationError, match="BearerGuardMiddleware"):
        await handler()


def test_the_decorator_without_a_verdict_says_what_to_add_for_each_framework(
    guard: BearerGuard,
) -> None:
    # The user of a Flask app without protect(), or of a FastAPI app with BearerAuth alone,
    # must learn what to add: BearerGuardMiddleware is an ASGI middleware they cannot use.
    import flask
    from starlette.testclient import TestClient

    app = flask.Flask(__name__)
    app.testing = True  # the exception reaches the test, not a 500 page

    @app.get("/items")
    @requires_scopes("items:read")
    def items() -> str:
        return "never"  # pragma: no cover

    with pytest.raises(ConfigurationError, match=r"bearerguard\.flask\.protect\(app\)"):
        app.test_client().get("/items")

    bearer = bearerguard.fastapi.BearerAuth(guard)
    api = bearer.install(FastAPI())

    @api.get("/reports")
    @requires_scopes("reports:read")
    async def reports() -> list[str]:
        return []  # pragma: no cover

    with pytest.raises(ConfigurationError, match=r"bearer\.requires"), TestClient(api) as client:
        client.get("/reports")


def test_get_access_token_outside_a_request_is_none() -> None:
    assert get_access_token() is None


def test_access_token_has_scopes() -> None:
    token = AccessToken.from_claims(
        {"iss": "https://i", "aud": "a", "exp": 2_000_000_000, "scope": "a b"},
        scopes=frozenset({"a", "b"}),
        expires_at=2_000_000_000,
        issued_at=None,
        key_id=None,
        algorithm="RS256",
        fingerprint="0" * 16,
    )
    assert token.has_scopes("a", "b")
    assert not token.has_scopes("c")
    assert token.audience == ("a",)
    assert token.expires_at.year == 2033


# -- a scope decorator above the route decorator ----------------------------------------


def _misplaced_api(guard: BearerGuard) -> FastAPI:
    api = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])

    @requires_scopes("admin")  # above: FastAPI registered the function unwrapped
    @api.get("/admin")
    async def admin() -> dict[str, bool]:
        return {"ok": True}  # pragma: no cover - the app never starts

    return api


def test_a_scope_decorator_above_the_route_fails_start_up(session_issuer: DevIssuer) -> None:
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    guard = session_issuer.guard()
    misplaced = _misplaced_api(guard)
    with pytest.raises(ConfigurationError, match="decorator of GET /admin"), TestClient(misplaced):
        pass  # pragma: no cover
    # Found under a mount too, and named with its full path.
    sub = FastAPI()

    @requires_any_scope("a", "b")
    @sub.post("/items")
    async def create() -> None:
        pass  # pragma: no cover

    outer = Starlette(
        routes=[Mount("/v1", app=sub)], middleware=[Middleware(BearerGuardMiddleware, guard=guard)]
    )
    with pytest.raises(ConfigurationError, match="POST /v1/items"), TestClient(outer):
        pass  # pragma: no cover
    # The right order starts, and a copy of a decorated function made by functools.wraps
    # (another decorator of the same function) is not mistaken for it.
    api = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=guard)])

    async def report() -> dict[str, bool]:
        return {"ok": True}

    api.get("/scoped")(requires_scopes("reports:read")(report))
    api.get("/copy")(functools.wraps(report)(lambda: {"ok": True}))
    with TestClient(api) as client:
        token = session_issuer.mint(scopes=["reports:read"])
        assert client.get("/scoped", headers={"Authorization": f"Bearer {token}"}).json() == {
            "ok": True
        }


def test_uvicorn_exits_instead_of_serving_a_misplaced_scope_decorator(
    session_issuer: DevIssuer,
) -> None:
    # lifespan "auto", uvicorn's default, reads an exception as "no lifespan support" and
    # serves anyway: the middleware reports lifespan.startup.failed, and uvicorn exits.
    import anyio
    import uvicorn

    config = uvicorn.Config(
        _misplaced_api(session_issuer.guard()), host="127.0.0.1", port=0, log_level="critical"
    )
    server = uvicorn.Server(config)
    with pytest.raises(SystemExit) as exited:  # uvicorn's own exit: STARTUP_FAILURE
        anyio.run(server.serve)
    assert exited.value.code == 3
    assert not server.started


def test_a_misplaced_scope_decorator_is_refused_where_no_lifespan_runs(
    session_issuer: DevIssuer,
) -> None:
    # No lifespan (uvicorn --lifespan off, Daphne, a TestClient outside "with"), and an app
    # mounted under another (Starlette sends lifespans to no mount): the start-up check never
    # ran, and the route served any token. The first request runs it instead.
    from starlette.middleware.cors import CORSMiddleware
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    guard = session_issuer.guard()
    headers = {"Authorization": f"Bearer {session_issuer.mint(scopes=['read'])}"}

    def mounted(api: FastAPI) -> Starlette:
        return Starlette(routes=[Mount("/api", app=BearerGuardMiddleware(api, guard=guard))])

    def wrapped(api: FastAPI) -> Starlette:  # the middleware's app is another middleware
        inner = CORSMiddleware(api, allow_origins=["*"])
        return Starlette(routes=[Mount("/api", app=BearerGuardMiddleware(inner, guard=guard))])

    for app, path in [
        (_misplaced_api(guard), "/admin"),
        (mounted(_misplaced_api(guard)), "/api/admin"),
        (wrapped(_misplaced_api(guard)), "/api/admin"),
    ]:
        client = TestClient(app)
        for _ in range(2):  # every request, not only the first
            with pytest.raises(ConfigurationError, match="decorator of GET /admin"):
                client.get(path, headers=headers)
        assert TestClient(app, raise_server_exceptions=False).get(path).status_code == 500
    # A mounted app with its decorators in order is served.
    api = FastAPI()

    @api.get("/admin")
    @requires_scopes("admin")
    async def admin() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(mounted(api))
    assert client.get("/api/admin", headers=headers).status_code == 403
    admin_token = session_issuer.mint(scopes=["admin"])
    assert client.get("/api/admin", headers={"Authorization": f"Bearer {admin_token}"}).json() == {
        "ok": True
    }


def test_protect_refuses_a_flask_view_with_a_misplaced_scope_decorator(
    session_issuer: DevIssuer,
) -> None:
    import flask

    from bearerguard.flask import protect

    app = flask.Flask(__name__)

    @requires_scopes("admin")
    @app.get("/admin")
    def admin() -> str:
        return "ok"  # pragma: no cover

    with pytest.raises(ConfigurationError, match="view 'admin'"):
        protect(app, guard=session_issuer.guard())
    right = flask.Flask(__name__)

    @right.get("/admin")
    @requires_scopes("admin")
    def admin_right() -> str:
        return "ok"  # pragma: no cover

    protect(right, guard=session_issuer.guard())


def test_a_function_served_public_and_scoped_is_no_misplaced_decorator(
    session_issuer: DevIssuer,
) -> None:
    # The same function on a public route and, wrapped, on a scoped one: the app starts,
    # and the scoped route checks its scope. A misplaced decorator next to it is still found.
    import flask
    from starlette.responses import PlainTextResponse
    from starlette.testclient import TestClient

    from bearerguard.flask import protect

    guard = session_issuer.guard()

    async def items(request: Request) -> PlainTextResponse:
        return PlainTextResponse("items")

    routes = [
        Route("/public/items", items),
        Route("/items", requires_scopes("items:read")(items)),
        Route("/partial", functools.partial(requires_scopes("items:read")(items))),
    ]
    public = Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/public/*"])
    with TestClient(Starlette(routes=routes, middleware=[public])) as client:
        assert client.get("/public/items").text == "items"
        token = session_issuer.mint(scopes=["other"])
        answer = client.get("/items", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 403

    @requires_scopes("admin")
    async def admin(request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin")  # pragma: no cover

    misplaced = [*routes, Route("/admin", admin.__wrapped__)]  # type: ignore[attr-defined]
    with (
        pytest.raises(ConfigurationError, match="GET,HEAD /admin"),
        TestClient(Starlette(routes=misplaced, middleware=[public])),
    ):
        pass  # pragma: no cover
    app = flask.Flask(__name__)

    def stats() -> str:
        return "ok"  # pragma: no cover

    app.add_url_rule("/public/stats", "public_stats", stats)
    app.add_url_rule("/stats", "stats", requires_scopes("stats:read")(stats))
    protect(app, guard=guard, public_paths=["/public/*"])


def test_a_misplaced_scope_decorator_in_an_included_router_fails_start_up(
    session_issuer: DevIssuer,
) -> None:
    # FastAPI keeps an included router nested: app.routes holds no copy of its operations.
    from fastapi import APIRouter
    from starlette.testclient import TestClient

    api = FastAPI(middleware=[Middleware(BearerGuardMiddleware, guard=session_issuer.guard())])
    router, inner = APIRouter(), APIRouter()

    @router.get("/items")
    @requires_scopes("items:read")
    async def items() -> dict[str, bool]:
        return {"ok": True}  # pragma: no cover

    @requires_scopes("admin")
    @inner.delete("/all")
    async def delete_all() -> dict[str, bool]:
        return {"deleted": True}  # pragma: no cover

    router.include_router(inner, prefix="/admin")
    api.include_router(router, prefix="/v1")
    with pytest.raises(ConfigurationError, match="DELETE /v1/admin/all"), TestClient(api):
        pass  # pragma: no cover
    assert decorators.unchecked_endpoints(api) == ["DELETE /v1/admin/all"]


def test_a_misplaced_scope_decorator_under_a_wrapped_mount_fails_start_up(
    session_issuer: DevIssuer,
) -> None:
    # Starlette's Mount.routes and Host.routes read the mounted app's own routes only: one
    # wrapped in a middleware (Mount("/v2", app=GZipMiddleware(v2))) showed none, and its
    # misplaced decorator served every token unchecked.
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.routing import Host, Mount
    from starlette.testclient import TestClient

    v2, admin = FastAPI(), Starlette()

    @requires_scopes("admin")
    @v2.delete("/all")
    async def delete_all() -> dict[str, bool]:
        return {"deleted": True}  # pragma: no cover

    async def purge(request: Request) -> JSONResponse:
        return JSONResponse({"purged": True})  # pragma: no cover

    admin.add_route("/purge", purge, methods=["POST"])
    purge = requires_scopes("admin")(purge)  # rebound after the route took it
    app = Starlette(
        routes=[
            Mount("/v2", app=GZipMiddleware(v2)),
            Host("admin.example", app=GZipMiddleware(admin)),
        ],
        middleware=[Middleware(BearerGuardMiddleware, guard=session_issuer.guard())],
    )
    assert decorators.unchecked_endpoints(app) == ["DELETE /v2/all", "POST /purge"]
    with pytest.raises(ConfigurationError, match="DELETE /v2/all"), TestClient(app):
        pass  # pragma: no cover


class _Unconfigured:
    """A mounted ASGI app whose routes cannot be read yet (a proxy, configured later)."""

    @property
    def routes(self) -> list[Route]:
        raise RuntimeError("not configured")

    async def __call__(self, scope: object, receive: object, send: object) -> None:
        raise NotImplementedError  # pragma: no cover


def test_a_mounted_app_whose_routes_cannot_be_read_still_starts(
    session_issuer: DevIssuer,
) -> None:
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    async def home(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})  # pragma: no cover

    app = Starlette(
        routes=[Route("/", requires_scopes("a")(home)), Mount("/legacy", app=_Unconfigured())],
        middleware=[Middleware(BearerGuardMiddleware, guard=session_issuer.guard())],
    )
    with TestClient(app) as client:
        assert client.get("/").status_code == 401


def test_a_flask_view_registered_after_protect_is_checked_at_the_first_request(
    session_issuer: DevIssuer,
) -> None:
    # protect() sees only the views registered before it; a blueprint registered later
    # (the usual layout) is checked when the first request comes, under a wrapper too.
    import flask
    from werkzeug.middleware.shared_data import SharedDataMiddleware

    from bearerguard.flask import protect

    app = flask.Flask(__name__)
    app.wsgi_app = SharedDataMiddleware(app.wsgi_app, {})  # type: ignore[method-assign]
    protect(app, guard=session_issuer.guard(in_process=True))
    reports = flask.Blueprint("reports", __name__)

    @requires_scopes("admin")
    @reports.get("/reports")
    def reports_view() -> str:
        return "secret"  # pragma: no cover - never served

    app.register_blueprint(reports)
    client = app.test_client()
    token = session_issuer.mint(scopes=["items:read"])
    for _ in range(2):  # every request, until the app is fixed
        with pytest.raises(ConfigurationError, match=r"view 'reports\.reports_view'"):
            client.get("/reports", headers={"Authorization": f"Bearer {token}"})


def test_a_flask_view_registered_after_protect_is_checked_under_any_wrapper(
    session_issuer: DevIssuer,
) -> None:
    # protect() knows its Flask app, but the first request's check looked for it under
    # app.wsgi_app through wrappers holding the next app as ``app``: werkzeug's
    # ProfilerMiddleware (Flask's profiling recipe) keeps it as ``_app``, so the check found
    # no views and the misplaced decorator served a token without the scope.
    import flask
    from werkzeug.middleware.profiler import ProfilerMiddleware

    from bearerguard.flask import protect

    app = flask.Flask(__name__)
    app.wsgi_app = ProfilerMiddleware(app.wsgi_app, stream=None)  # type: ignore[method-assign]
    protect(app, guard=session_issuer.guard(in_process=True))
    reports = flask.Blueprint("reports", __name__)

    @requires_scopes("admin")
    @reports.get("/reports")
    def reports_view() -> str:
        return "secret"  # pragma: no cover - never served

    app.register_blueprint(reports)
    token = session_issuer.mint(scopes=["items:read"])
    with pytest.raises(ConfigurationError, match=r"view 'reports\.reports_view'"):
        app.test_client().get("/reports", headers={"Authorization": f"Bearer {token}"})


def test_a_misplaced_scope_decorator_under_werkzeugs_dispatcher_is_found(
    session_issuer: DevIssuer,
) -> None:
    # werkzeug's DispatcherMiddleware (Flask's "application dispatching" recipe) keeps the
    # apps it mounts in ``mounts``: the check found only the front app's views, and the
    # mounted app's misplaced decorator served a token without the scope.
    import flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client

    from bearerguard.flask import protect
    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    api = flask.Flask("api")

    @requires_scopes("admin")
    @api.delete("/all")
    def delete_all() -> str:
        return "deleted"  # pragma: no cover - never served

    guard = session_issuer.guard(in_process=True)
    token = session_issuer.mint(scopes=["items:read"])
    headers = {"Authorization": f"Bearer {token}"}
    front = flask.Flask("front")
    wrapped = BearerGuardWSGIMiddleware(DispatcherMiddleware(front, {"/api": api}), guard=guard)
    with pytest.raises(ConfigurationError, match=r"/api view 'delete_all'"):
        Client(wrapped).delete("/api/all", headers=headers)
    assert decorators.unchecked_endpoints(wrapped) == ["/api view 'delete_all'"]
    # Mounted on a Flask app's wsgi_app, as the recipe does: protect() refuses it.
    front = flask.Flask("front")
    front.wsgi_app = DispatcherMiddleware(front.wsgi_app, {"/api": api})  # type: ignore[method-assign]
    with pytest.raises(ConfigurationError, match=r"/api view 'delete_all'"):
        protect(front, guard=guard)


class _UnconfiguredASGI(_Unconfigured):
    """As ``_Unconfigured``, serving every path from a Starlette app it holds."""

    def __init__(self) -> None:
        async def served(request: Request) -> JSONResponse:
            return JSONResponse({"proxy": True})

        self._served = Starlette(routes=[Route("/", served)])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._served(scope, receive, send)


def test_a_guarded_app_whose_routes_cannot_be_read_is_served(
    session_issuer: DevIssuer,
) -> None:
    # The first-request check (and the lifespan's) reads the app under the middleware: one
    # whose routes raise when read (a proxy not configured yet) failed the start-up and then
    # every request (500), where a mounted one is skipped.
    from starlette.testclient import TestClient

    headers = {"Authorization": f"Bearer {session_issuer.mint(scopes=['read'])}"}
    app = BearerGuardMiddleware(_UnconfiguredASGI(), guard=session_issuer.guard())
    with TestClient(app) as client:
        for _ in range(2):
            assert client.get("/", headers=headers).json() == {"proxy": True}


def test_a_guarded_mount_does_not_judge_the_outer_apps_routes(session_issuer: DevIssuer) -> None:
    # A middleware wrapping a mounted app sees the outer app in scope["app"]: it read the
    # outer app's routes too, and took one serving a function public, which the mounted
    # app serves scoped, for a misplaced decorator: every request failed (500).
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    async def status(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    api = Starlette(routes=[Route("/status", requires_scopes("admin")(status))])
    guarded = BearerGuardMiddleware(api, guard=session_issuer.guard())
    app = Starlette(routes=[Route("/status", status), Mount("/api", app=guarded)])
    client = TestClient(app)
    admin = {"Authorization": f"Bearer {session_issuer.mint(scopes=['admin'])}"}
    reader = {"Authorization": f"Bearer {session_issuer.mint(scopes=['read'])}"}
    assert client.get("/api/status", headers=admin).json() == {"ok": True}
    assert client.get("/api/status", headers=reader).status_code == 403
    assert client.get("/status").json() == {"ok": True}
    # Where no routes are found under the middleware (one below holds the next app under
    # another name), the app it was added to is read instead.

    class Opaque:
        def __init__(self, app: Any) -> None:
            self._next = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self._next(scope, receive, send)  # pragma: no cover - refused before

    routes = [Route("/status", status)]
    requires_scopes("admin")(status)  # after the route registered it: misplaced
    stacked = Starlette(
        routes=routes,
        middleware=[
            Middleware(BearerGuardMiddleware, guard=session_issuer.guard()),
            Middleware(Opaque),
        ],
    )
    with pytest.raises(ConfigurationError, match="GET,HEAD /status"):
        TestClient(stacked).get("/status", headers=admin)


# At module level: the check reads the name a function was defined under.
_aliased = FastAPI()


@requires_scopes("admin")  # misplaced: above the route decorator
@_aliased.get("/admin/users")
async def _list_users() -> dict[str, list[str]]:
    return {"users": []}  # pragma: no cover - never served


_aliased.add_api_route("/v2/admin/users", _list_users)  # an alias: serves the wrapper


async def _status(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _flask_status() -> str:
    return "ok"


def test_a_misplaced_scope_decorator_is_found_beside_an_alias_of_its_route(
    session_issuer: DevIssuer,
) -> None:
    # A second route serving the wrapper was taken for the function served public on
    # purpose: /admin/users started and served any token.
    from starlette.testclient import TestClient

    assert decorators.unchecked_endpoints(_aliased) == ["GET /admin/users"]
    app = BearerGuardMiddleware(_aliased, guard=session_issuer.guard())
    headers = {"Authorization": f"Bearer {session_issuer.mint(scopes=['read'])}"}
    with pytest.raises(ConfigurationError, match="GET /admin/users"):
        TestClient(app).get("/admin/users", headers=headers)


def test_a_function_served_public_by_one_app_and_scoped_by_another_is_served(
    session_issuer: DevIssuer,
) -> None:
    # Two apps sharing a view function, one wrapping it: the other, which serves it as is,
    # took it for a misplaced decorator and failed every request (500).
    import flask
    from starlette.testclient import TestClient

    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    scoped = Starlette(routes=[Route("/status", requires_scopes("admin")(_status))])
    public = Starlette(
        routes=[Route("/status", _status)],
        middleware=[
            Middleware(
                BearerGuardMiddleware, guard=session_issuer.guard(), public_paths=["/status"]
            )
        ],
    )
    assert decorators.unchecked_endpoints(scoped) == decorators.unchecked_endpoints(public) == []
    assert TestClient(public).get("/status").json() == {"ok": True}
    flask_scoped = flask.Flask(__name__)
    flask_scoped.add_url_rule("/status", view_func=requires_scopes("admin")(_flask_status))
    flask_public = flask.Flask(__name__)
    flask_public.add_url_rule("/status", view_func=_flask_status)
    flask_public.wsgi_app = BearerGuardWSGIMiddleware(  # type: ignore[method-assign]
        flask_public.wsgi_app, guard=session_issuer.guard(in_process=True), public_paths=["/status"]
    )
    assert flask_public.test_client().get("/status").get_data() == b"ok"


class _UnconfiguredWSGI:
    """A WSGI proxy whose every attribute raises until configured (as the ASGI one)."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError("the proxy is not configured yet")

    def __call__(self, environ: dict[str, object], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"proxy"]


def test_a_guarded_wsgi_app_whose_attributes_cannot_be_read_is_served(
    session_issuer: DevIssuer,
) -> None:
    # The WSGI first-request check walked wrappers with hasattr, which lets any error but
    # AttributeError through: such a proxy made every request a 500.
    import io

    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    app = BearerGuardWSGIMiddleware(
        _UnconfiguredWSGI(), guard=session_issuer.guard(in_process=True)
    )
    token = session_issuer.mint(scopes=["read"])
    for _ in range(2):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "QUERY_STRING": "",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "wsgi.input": io.BytesIO(b""),
        }
        assert b"".join(app(environ, lambda status, headers: None)) == b"proxy"


# Shaped as wrappers that hold the next app under another name than ``app``: only the
# attribute the check walks through matters here.


class _SocketIOShaped:
    """As python-socketio's (python-engineio's) ``ASGIApp``: every request not for Socket.IO,
    the lifespan included, goes to ``other_asgi_app``."""

    def __init__(self, other_asgi_app: Any) -> None:
        self.engineio_server = object()
        self.other_asgi_app = other_asgi_app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.other_asgi_app(scope, receive, send)


class _WhiteNoiseShaped:
    """As WhiteNoise's ``WhiteNoise`` (WSGI) and ``AsgiWhiteNoise``: what is no static file
    goes to ``application``."""

    def __init__(self, application: Any) -> None:
        self.files: dict[str, object] = {}
        self.application = application

    def __call__(self, *args: Any) -> Any:
        return self.application(*args)


class _EngineIOWSGIShaped:
    """As python-engineio's (python-socketio's) ``WSGIApp``: the app is ``wsgi_app``."""

    def __init__(self, wsgi_app: Any) -> None:
        self.engineio_app = object()
        self.wsgi_app = wsgi_app

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.wsgi_app(environ, start_response)


class _OpenTelemetryWSGIShaped:
    """As OpenTelemetry's WSGI ``OpenTelemetryMiddleware``: the app is ``wsgi``."""

    def __init__(self, wsgi: Any) -> None:
        self.wsgi = wsgi

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.wsgi(environ, start_response)


def _misplaced_bare() -> FastAPI:
    api = FastAPI()

    @requires_scopes("admin")  # above: FastAPI registered the function unwrapped
    @api.get("/admin")
    async def admin() -> dict[str, bool]:
        return {"ok": True}  # pragma: no cover - never served

    return api


@pytest.mark.parametrize("wrapper", [_SocketIOShaped, _WhiteNoiseShaped])
def test_a_misplaced_scope_decorator_is_found_under_an_asgi_wrapper_of_another_name(
    session_issuer: DevIssuer, wrapper: Any
) -> None:
    # The check walked only through ``app`` attributes: under python-socketio's ASGIApp
    # (``other_asgi_app``) or AsgiWhiteNoise (``application``) it found no routes, and the
    # misplaced decorator's route served a token without the scope.
    from starlette.testclient import TestClient

    headers = {"Authorization": f"Bearer {session_issuer.mint(scopes=['read'])}"}
    app = BearerGuardMiddleware(wrapper(_misplaced_bare()), guard=session_issuer.guard())
    for _ in range(2):  # every request, not only the first
        with pytest.raises(ConfigurationError, match="decorator of GET /admin"):
            TestClient(app).get("/admin", headers=headers)
    starting = BearerGuardMiddleware(wrapper(_misplaced_bare()), guard=session_issuer.guard())
    with pytest.raises(ConfigurationError, match="decorator of GET /admin"), TestClient(starting):
        pass  # pragma: no cover


def test_a_flask_app_is_found_under_asgirefs_wsgi_to_asgi() -> None:
    import flask

    wsgi_to_asgi = pytest.importorskip("asgiref.wsgi").WsgiToAsgi
    app = flask.Flask(__name__)
    assert decorators.wrapped_app(wsgi_to_asgi(app), "routes") is app
    assert decorators.wrapped_app(wsgi_to_asgi(app.wsgi_app), "routes") is app


def test_a_flask_view_under_wsgi_to_asgi_is_refused_with_a_flask_response(
    session_issuer: DevIssuer,
) -> None:
    # Behind BearerGuardMiddleware through asgiref's WsgiToAsgi, the verdict's responder is
    # the ASGI middleware's: its Starlette Response, returned by a Flask view, was a 500.
    import flask
    from starlette.testclient import TestClient

    wsgi_to_asgi = pytest.importorskip("asgiref.wsgi").WsgiToAsgi
    app = flask.Flask(__name__)

    @app.get("/admin")
    @requires_scopes("admin")
    def admin() -> str:
        return "secret"  # pragma: no cover - refused

    guarded = BearerGuardMiddleware(wsgi_to_asgi(app), guard=session_issuer.guard())
    headers = {"Authorization": f"Bearer {session_issuer.mint(scopes=['read'])}"}
    with structlog.testing.capture_logs() as events:
        denied = TestClient(guarded, raise_server_exceptions=False).get("/admin", headers=headers)
    assert denied.status_code == 403
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
    assert denied.json()["error"] == "insufficient_scope"
    assert [event["event"] for event in events] == ["token.accepted", "scope.denied"]


class _ErrorReporting:
    """A Sentry-style WSGI wrapper (``app.wsgi_app = _ErrorReporting(app.wsgi_app)``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)  # pragma: no cover - refused before


def test_a_misplaced_flask_view_is_found_under_wsgi_to_asgi_with_its_wsgi_app_wrapped(
    session_issuer: DevIssuer,
) -> None:
    # Under asgiref's WsgiToAsgi, the Flask app was found only while its wsgi_app was its
    # own method: a wrapper there (Sentry's, ProxyFix, python-socketio's) was the last
    # layer reached, with no views, and the misplaced decorator's view was served.
    import flask
    from starlette.testclient import TestClient

    wsgi_to_asgi = pytest.importorskip("asgiref.wsgi").WsgiToAsgi
    app = flask.Flask(__name__)

    @requires_scopes("admin")
    @app.get("/admin")
    def admin() -> str:
        return "secret"  # pragma: no cover - never served

    app.wsgi_app = _ErrorReporting(app.wsgi_app)  # type: ignore[method-assign]
    guarded = BearerGuardMiddleware(wsgi_to_asgi(app), guard=session_issuer.guard())
    headers = {"Authorization": f"Bearer {session_issuer.mint(scopes=['read'])}"}
    with pytest.raises(ConfigurationError, match="view 'admin'"):
        TestClient(guarded).get("/admin", headers=headers)


def _profiled(app: Any) -> Any:
    from werkzeug.middleware.profiler import ProfilerMiddleware

    return ProfilerMiddleware(app, stream=None)  # holds it as ``_app``


@pytest.mark.parametrize(
    "wrapper", [_WhiteNoiseShaped, _EngineIOWSGIShaped, _OpenTelemetryWSGIShaped, _profiled]
)
def test_a_misplaced_flask_view_is_found_under_a_wsgi_wrapper_of_another_name(
    session_issuer: DevIssuer, wrapper: Any
) -> None:
    # The check walked only through ``app`` attributes: under WhiteNoise (``application``),
    # python-socketio's WSGIApp (``wsgi_app``) or OpenTelemetry's middleware (``wsgi``) it
    # found no views, and the misplaced decorator's view served a token without the scope.
    import flask
    from werkzeug.middleware.proxy_fix import ProxyFix
    from werkzeug.test import Client

    from bearerguard.wsgi import BearerGuardWSGIMiddleware

    app = flask.Flask(__name__)

    @requires_scopes("admin")
    @app.get("/admin")
    def admin() -> str:
        return "secret"  # pragma: no cover - never served

    token = session_issuer.mint(scopes=["read"])
    guard = session_issuer.guard(in_process=True)
    for wrapped in [wrapper(app.wsgi_app), wrapper(app)]:
        guarded = BearerGuardWSGIMiddleware(wrapped, guard=guard)
        with pytest.raises(ConfigurationError, match="view 'admin'"):
            Client(guarded).get("/admin", headers={"Authorization": f"Bearer {token}"})
    # The same walk finds a ProxyFix under such a wrapper: inside the middleware, refused.
    with pytest.raises(ConfigurationError, match="ProxyFix is inside"):
        BearerGuardWSGIMiddleware(wrapper(ProxyFix(app.wsgi_app)), guard=guard)


class _BackReferring(_SocketIOShaped):
    """As ``_SocketIOShaped``, also holding the app in front of it as ``application``."""

    application: object = None


def test_the_walk_under_wrappers_ends_at_a_cycle(session_issuer: DevIssuer) -> None:
    # Wrappers that lead back to one another (a back-reference, or a user's own mis-wired
    # ones) end neither in a hang nor before the app: it is checked, and served.
    from starlette.testclient import TestClient

    async def home(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})  # pragma: no cover - refused without a token

    first = _SocketIOShaped(None)
    second = _WhiteNoiseShaped(first)
    first.other_asgi_app = second
    assert list(decorators.app_layers(second)) == [second, first]
    assert decorators.wrapped_app(second, "routes") is first  # the innermost reached
    for api, misplaced in [(_misplaced_bare(), True), (Starlette(), False)]:
        api.add_route("/", requires_scopes("a")(home))
        wrapper = _BackReferring(api)
        app = BearerGuardMiddleware(wrapper, guard=session_issuer.guard())
        wrapper.application = app
        assert decorators.wrapped_app(app, "routes") is api
        if misplaced:
            with pytest.raises(ConfigurationError, match="decorator of GET /admin"):
                TestClient(app).get("/")
        else:
            assert TestClient(app).get("/").status_code == 401


def test_the_walk_reaches_the_app_under_wrappers_made_on_each_read() -> None:
    # A wrapper whose attribute gives a new object on every read: one freed during the walk
    # left its id to the next, which was taken for seen, and the walk ended above the app.
    class Made:
        def __init__(self, depth: int) -> None:
            self.depth = depth

        def __call__(self) -> None:  # pragma: no cover - never called
            pass

        @property
        def app(self) -> object:
            return Made(self.depth + 1) if self.depth < 5 else api

    api = Starlette()
    assert decorators.wrapped_app(Made(0), "routes") is api


def test_scope_requirements_end_at_a_wrapped_cycle() -> None:
    # A wrapper whose __wrapped__ chain loops back (a user's decorator bug) must not hang
    # the start-up check or a refusal that names the route's scopes.
    from bearerguard.decorators import scope_requirements

    @requires_scopes("items:read")
    def view() -> None: ...

    view.__wrapped__.__wrapped__ = view  # type: ignore[attr-defined]
    assert [requirement.scopes for requirement in scope_requirements(view)] == [("items:read",)]


class _CountedMeta(type):
    """Counts the reads of its classes' MRO: what the path-operation test reads of an object
    in the namespace a function is decorated in."""

    reads = 0

    @property
    def __mro__(cls) -> tuple[type, ...]:  # type: ignore[override]
        _CountedMeta.reads += 1
        return cast(tuple[type, ...], type.__dict__["__mro__"].__get__(cls))


class _Counted(metaclass=_CountedMeta):
    pass


def test_path_operation_test_stops_at_the_first_object_of_fastapis() -> None:
    # Deciding whether a function may be a path operation read every object of its module,
    # at each decoration, although the FastAPI import at the top decides it: a module of a
    # thousand models and a thousand operations took seconds more to import.
    router = APIRouter()
    helper = _Counted()
    _CountedMeta.reads = 0

    @requires_scopes("items:read")
    async def read_items() -> None: ...

    assert _CountedMeta.reads == 0
    assert "bearerguard_scope_check" in str(inspect.signature(read_items))
    del router, helper  # they were in the namespace at the decoration


async def test_a_scope_named_twice_is_challenged_and_audited_once(
    guard: BearerGuard, session_issuer: DevIssuer
) -> None:
    # RFC 6750 §3: scope is a space-delimited list of scopes; naming one twice says nothing
    # more and reads as a mistake. The audit's required_scopes lists each once too.
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(
        routes=[
            Route("/all", requires_scopes("a", "b", "a")(ok)),
            Route("/any", requires_any_scope("a", "a")(ok)),
            Route("/stacked", requires_scopes("b", "a", "b")(requires_scopes("a")(ok))),
        ],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path, scope, required in [
            ("/all", "a b", ["a", "b"]),
            ("/any", "a", ["a"]),
            ("/stacked", "b a", ["b", "a"]),
        ]:
            with structlog.testing.capture_logs() as events:
                response = await client.get(path, headers=bearer(session_issuer, "c"))
            assert response.status_code == 403, path
            assert f'scope="{scope}"' in response.headers["www-authenticate"], path
            assert events[-1]["required_scopes"] == required, path
