"""``bearerguard demo``: a development issuer, a protected API, and a walkthrough.

Everything runs in this process and on 127.0.0.1: a ``DevIssuer`` serves discovery and its
JWK Set, uvicorn serves the demo API from a thread, and the walkthrough sends real HTTP
requests to it with httpx, printing for each one the status, the ``WWW-Authenticate``
challenge and the audit events the guard emitted.

The demo collects audit events by giving its guard an ``audit_logger`` (a structlog logger
whose last processor records the event) rather than calling ``structlog.configure()``:
the walkthrough can then run inside another program, a test suite for one, without
touching its logging. An application would usually configure structlog once at start-up.

This module needs uvicorn (the ``demo`` extra); ``bearerguard.cli`` imports it lazily.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
import httpx
import jwt
import structlog
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bearerguard._cli_common import Console, write_line
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.decorators import get_access_token, requires_scopes
from bearerguard.guard import BearerGuard
from bearerguard.revocation.memory import MemoryRevocationStore
from bearerguard.testing import DevIssuer

__all__ = ["AuditTrail", "DemoError", "create_demo_app", "run_demo"]

EXIT_OK = 0
EXIT_FAILURE = 1
SERVE_TOKEN_LIFETIME = 3600  # seconds: long enough to play with curl
_STARTUP_TIMEOUT = 10.0
_SHUTDOWN_TIMEOUT = 5.0
_ERROR_CODE = re.compile(r'\berror="([^"]*)"')
_AUTH_PARAM = re.compile(r'[^,\s=]+="(?:[^"\\]|\\.)*"|[^,\s]+')  # name="quoted", or a token
# The audit fields worth a glance, in the order shown (the status is printed already; the
# detail names a kid when it matters). docs/audit-events.md documents every field.
_SHOWN_FIELDS = ("reason", "sub", "scopes", "required_scopes", "jti", "token_fp", "detail")


class DemoError(Exception):
    """The demo could not run (a port in use, a server that did not start)."""


# -- the API ----------------------------------------------------------------------------


def create_demo_app(guard: BearerGuard) -> Starlette:
    """The demo API: a small item list behind ``BearerGuardMiddleware``.

    ``GET /health`` is public; ``GET /me`` takes any valid token; ``GET /items`` needs
    ``items:read`` and ``POST /items`` needs ``items:write``.
    """
    items: list[dict[str, Any]] = [{"id": 1, "name": "teapot"}, {"id": 2, "name": "kettle"}]

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def me(request: Request) -> JSONResponse:
        token = get_access_token(request)
        if token is None:  # cannot happen off a public path: the middleware refused it
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return JSONResponse(
            {
                "subject": token.subject,
                "client_id": token.client_id,
                "scopes": sorted(token.scopes),
                "expires_at": token.expires_at.isoformat(),
            }
        )

    @requires_scopes("items:read")
    async def list_items(_request: Request) -> JSONResponse:
        return JSONResponse({"items": items})

    @requires_scopes("items:write")
    async def create_item(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not 0 < len(name) <= 100:
            return JSONResponse({"error": 'send {"name": "..."}'}, status_code=422)
        item = {"id": max((item["id"] for item in items), default=0) + 1, "name": name}
        items.append(item)
        return JSONResponse(item, status_code=201)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/me", me),
            Route("/items", list_items, methods=["GET"]),
            Route("/items", create_item, methods=["POST"]),
        ],
        middleware=[
            Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/health"], warm_up=True)
        ],
    )


# -- audit events -----------------------------------------------------------------------


class AuditTrail:
    """Records the audit events of one guard; optionally echoes each one as it comes.

    Use ``logger()`` as the guard's ``audit_logger``. Events are recorded from whichever
    thread the API serves on, hence the lock.
    """

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.echo: Callable[[dict[str, Any]], None] | None = None

    def __call__(
        self, _logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event = {"level": method_name, **event_dict}
        with self._lock:
            self._events.append(event)
        if self.echo is not None:
            self.echo(event)
        raise structlog.DropEvent

    def logger(self) -> Any:
        """A structlog logger that records into this trail and prints nothing."""
        return structlog.wrap_logger(
            structlog.ReturnLogger(),
            processors=[self],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            cache_logger_on_first_use=True,
        )

    def mark(self) -> int:
        """A position in the trail, for ``since``."""
        with self._lock:
            return len(self._events)

    def since(self, mark: int) -> list[dict[str, Any]]:
        """The events recorded after ``mark``."""
        with self._lock:
            return self._events[mark:]


def _value(name: str, value: Any, ellipsis: str) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "[]"
    text = str(value)
    if name == "jti" and len(text) > 8:
        text = text[:8] + ellipsis
    elif len(text) > 60:
        text = text[:59] + ellipsis
    return json.dumps(text, ensure_ascii=False) if not text or re.search(r"[\s\"=]", text) else text


def event_fields(
    event: dict[str, Any], *, with_request: bool = False, ellipsis: str = "..."
) -> list[str]:
    """An audit event as its name and the ``key=value`` fields worth a glance."""
    parts = [str(event.get("event"))]
    if with_request:
        parts.append(f"{event.get('method')} {event.get('path')}")
    for name in _SHOWN_FIELDS:
        value = event.get(name)
        if value is None or value == [] or (name == "reason" and value == "ok"):
            continue
        parts.append(f"{name}={_value(name, value, ellipsis)}")
    return parts


def wrap(
    parts: Sequence[str], *, first: str, indent: str, sep: str = "", width: int = 100
) -> list[str]:
    """Pack ``parts``, each followed by ``sep`` but the last, into lines of about ``width``."""
    lines: list[str] = []
    line = first
    fresh = True
    for index, part in enumerate(parts):
        piece = part if index == len(parts) - 1 else part + sep
        if not fresh and len(line) + 1 + len(piece) > width:
            lines.append(line)
            line, fresh = indent, True
        line += piece if fresh else " " + piece
        fresh = False
    lines.append(line)
    return lines


# -- the server -------------------------------------------------------------------------


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise DemoError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from exc
    return sock


@contextmanager
def serving(app: Starlette, port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn from a thread on 127.0.0.1; yields its base URL.

    The socket is bound here, so a port in use is reported at once and port 0 gives a
    free port known before the server starts.

    Raises:
        DemoError: the port cannot be bound, or the server does not start.
    """
    sock = _bind(port)
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the host program's logging alone
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="bearerguard-demo-api", daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise DemoError("the demo API did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        try:
            thread.join(_SHUTDOWN_TIMEOUT)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for open connections
            server.force_exit = True
            thread.join(_SHUTDOWN_TIMEOUT)
        sock.close()


# -- the walkthrough --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One request of the walkthrough and the answer expected."""

    title: str
    method: str
    path: str
    token: str | None
    status: int
    error: str | None = None  # the RFC 6750 error code expected in the challenge
    before: Callable[[], str] | None = None  # an action taken first; returns what it did


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one step's request got back."""

    status: int
    challenge: str | None
    body: str
    events: list[dict[str, Any]]

    @property
    def error(self) -> str | None:
        """The ``error`` auth-param of the challenge, if any."""
        match = _ERROR_CODE.search(self.challenge or "")
        return match.group(1) if match else None


class Printer:
    """Writes the demo's lines, abbreviating tokens with an ellipsis the stream can encode."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        try:
            "…".encode(getattr(out, "encoding", None) or "utf-8")
            self.ellipsis = "…"
        except (UnicodeEncodeError, LookupError):
            self.ellipsis = "..."

    def __call__(self, text: str = "") -> None:
        write_line(self.out, text)  # a full disk: one line and exit 74, as every command

    def short(self, token: str, width: int = 16) -> str:
        """The first ``width`` characters of a token: enough to tell what it is."""
        return token[:width] + self.ellipsis if len(token) > width else token

    def challenge(self, value: str, indent: str) -> None:
        """A ``WWW-Authenticate`` header, its auth-params wrapped at commas."""
        scheme, _, params = value.partition(" ")
        parts: list[str] = _AUTH_PARAM.findall(params) or [""]
        parts[0] = f"{scheme} {parts[0]}".rstrip()
        first = f"{indent}WWW-Authenticate: "
        for line in wrap(parts, first=first, indent=" " * len(first), sep=","):
            self(line)

    def event(self, event: dict[str, Any], indent: str, *, with_request: bool = False) -> None:
        """An audit event, its fields wrapped."""
        parts = event_fields(event, with_request=with_request, ellipsis=self.ellipsis)
        first = f"{indent}audit: "
        for line in wrap(parts, first=first, indent=" " * (len(first) + 2)):
            self(line)


def _tamper(token: str) -> str:
    """Change one character in the middle of the signature."""
    head, _, signature = token.rpartition(".")
    middle = len(signature) // 2
    swapped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{signature[:middle]}{swapped}{signature[middle + 1 :]}"


def _stranger_token(issuer: DevIssuer) -> str:
    """A well-formed token with the issuer's claims, signed by a key it never published."""
    key = ec.generate_private_key(ec.SECP256R1())
    claims = issuer.claims(scopes=["items:read"])
    headers = {"kid": "es256-stranger", "typ": "at+jwt"}
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)


def build_steps(
    issuer: DevIssuer, store: MemoryRevocationStore, *, ellipsis: str = "..."
) -> list[Step]:
    """The walkthrough: one request per rule, with the answer each must get."""
    now = int(time.time())
    reader_claims = issuer.claims(scopes=["items:read"], sub="alice")
    reader = issuer.sign(reader_claims)
    expired = issuer.mint(scopes=["items:read"], sub="alice", iat=now - 900, exp=now - 300)

    def revoke_reader() -> str:
        jti = reader_claims["jti"]
        anyio.run(store.revoke_token, jti, reader_claims["exp"])
        return f'await store.revoke_token("{jti[:8]}{ellipsis}", expires_at=<its exp>)'

    return [
        Step("No token", "GET", "/items", None, 401),
        Step("A valid token with scope items:read", "GET", "/items", reader, 200),
        Step("An expired token", "GET", "/items", expired, 401, "invalid_token"),
        Step(
            "The same valid token, on a route that needs items:write",
            "POST",
            "/items",
            reader,
            403,
            "insufficient_scope",
        ),
        Step(
            "The valid token again, after revoking it by jti",
            "GET",
            "/items",
            reader,
            401,
            "invalid_token",
            before=revoke_reader,
        ),
        Step(
            "A token whose signature was tampered with",
            "GET",
            "/items",
            _tamper(issuer.mint(scopes=["items:read"], sub="mallory")),
            401,
            "invalid_token",
        ),
        Step(
            "A token signed by a key the issuer never published",
            "GET",
            "/items",
            _stranger_token(issuer),
            401,
            "invalid_token",
        ),
    ]


def _send(client: httpx.Client, trail: AuditTrail, step: Step) -> Outcome:
    headers = {} if step.token is None else {"Authorization": f"Bearer {step.token}"}
    body = {"name": "mug"} if step.method == "POST" else None
    mark = trail.mark()
    # Audit events are emitted before the response is sent, so they are all in by now.
    response = client.request(step.method, step.path, headers=headers, json=body)
    return Outcome(
        status=response.status_code,
        challenge=response.headers.get("www-authenticate"),
        body=response.text,
        events=trail.since(mark),
    )


def walk_through(
    client: httpx.Client, trail: AuditTrail, steps: Sequence[Step], say: Printer
) -> bool:
    """Send every step's request and print what came back; ``True`` when all were expected."""
    failed: list[int] = []
    for number, step in enumerate(steps, 1):
        say(f"[{number}/{len(steps)}] {step.title}")
        if step.before is not None:
            say(f"      {step.before()}")
        auth = "" if step.token is None else f"  Authorization: Bearer {say.short(step.token)}"
        say(f"      {step.method} {step.path}{auth}")
        outcome = _send(client, trail, step)
        good = outcome.status == step.status and outcome.error == step.error
        if not good:
            failed.append(number)
        phrase = httpx.codes.get_reason_phrase(outcome.status)
        wanted = "ok" if good else f"UNEXPECTED, wanted {step.status} {step.error or ''}".rstrip()
        say(f"      -> {outcome.status} {phrase}  ({wanted})")
        if outcome.challenge is not None:
            say.challenge(outcome.challenge, "      ")
        elif outcome.status < 400:
            body = outcome.body if len(outcome.body) <= 70 else outcome.body[:69] + say.ellipsis
            say(f"      body: {body}")
        for event in outcome.events or [{"event": "(no audit event)"}]:
            say.event(event, "      ")
        say()
    if failed:
        numbers = ", ".join(map(str, failed))
        say(f"{len(failed)} of {len(steps)} steps did not get the expected answer: {numbers}.")
        return False
    say(f"All {len(steps)} steps got the expected answer.")
    return True


def _serve_until_interrupted(issuer: DevIssuer, api: str, trail: AuditTrail, say: Printer) -> None:
    token = issuer.mint(
        scopes=["items:read", "items:write"], sub="alice", expires_in=SERVE_TOKEN_LIFETIME
    )
    auth = f"Authorization: Bearer {token}"
    say()
    say(f"Serving {api} until Ctrl-C. A token valid for 1 hour, scopes items:read items:write:")
    say()
    say(f"  {token}")
    say()
    say("Try:")
    say(f"  curl -i -H '{auth}' {api}/items")
    say(
        f"  curl -i -H '{auth}' -H 'Content-Type: application/json' "
        f'-d \'{{"name": "mug"}}\' {api}/items'
    )
    say(f"  curl -i {api}/items")
    say()
    say("Audit events:")
    trail.echo = lambda event: say.event(event, "  ", with_request=True)
    try:
        while True:
            time.sleep(0.2)
    except KeyboardInterrupt:
        trail.echo = None
        say()
        say("Stopping.")


def run_demo(*, port: int = 0, serve: bool = False, out: TextIO | None = None) -> int:
    """Run the walkthrough against a freshly started issuer and API; then serve if asked.

    Args:
        port: the API's port on 127.0.0.1; 0 picks a free one.
        serve: keep serving after the walkthrough until Ctrl-C (``KeyboardInterrupt``).
        out: where to print; standard output by default.

    Returns:
        0 when every step got the expected answer, else 1.
    """
    say = Printer(sys.stdout if out is None else out)
    trail = AuditTrail()
    store = MemoryRevocationStore()
    try:
        with DevIssuer() as issuer:
            guard = issuer.guard(revocation=store, audit_logger=trail.logger())
            with serving(create_demo_app(guard), port) as api:
                say("bearerguard demo: a development issuer, a protected API, real requests")
                say(
                    f"  issuer  {issuer.url}  (discovery and JWKS; kids {', '.join(guard.key_ids)})"
                )
                say(f"  API     {api}  (audience {issuer.audience})")
                say("  routes  GET /health (public), GET /me (any valid token),")
                say("          GET /items (items:read), POST /items (items:write)")
                say()
                steps = build_steps(issuer, store, ellipsis=say.ellipsis)
                with httpx.Client(base_url=api, timeout=10.0, trust_env=False) as client:
                    passed = walk_through(client, trail, steps, say)
                if serve:
                    _serve_until_interrupted(issuer, api, trail, say)
    except DemoError as exc:
        Console().warn(f"bearerguard demo: {exc}")
        return EXIT_FAILURE
    return EXIT_OK if passed else EXIT_FAILURE
