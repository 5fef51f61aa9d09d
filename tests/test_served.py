"""Adversarial request heads, over raw sockets, to the middlewares as real servers serve them.

uvicorn (httptools and h11 parsers) in front of the ASGI middleware and werkzeug's development
server in front of the WSGI one receive what httpx refuses to send: odd bytes, obs-fold lines,
oversized and repeated Authorization headers, query tokens encoded oddly, unknown methods,
absolute-form targets, encoded slashes and dot segments. Whatever gets through, the answer is
no 5xx, 200 only to a genuine token, and otherwise one well-formed RFC 6750 challenge, with one
audit event per request the middleware saw.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from bearerguard.testing import DevIssuer
from tests.apps import build_app, build_flask_app
from tests.helpers import serving, uvicorn_logging

SEED = 20261130
REQUESTS = 120

# RFC 9110 §11.2 / §5.6: challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_PARAM = rb"%s[ \t]*=[ \t]*(?:%s|%s)" % (_TOKEN, _TOKEN, _QUOTED)
CHALLENGE = re.compile(rb"Bearer(?: +%s(?:[ \t]*,[ \t]*%s)*)?" % (_PARAM, _PARAM))

# CR and LF frame the head (RFC 9112 §2.2): in a value they end it early, and werkzeug's
# development server then waits for the rest of the body it believes follows.
ANY_BYTES = [byte for byte in range(256) if byte not in b"\r\n"]
SCOPED_BODY = b"without a token"  # /open's view (tests/apps.py), behind a scope decorator
ODD_BYTES = [byte for byte in ANY_BYTES if not 0x20 <= byte < 0x7F]


@dataclass(frozen=True)
class Sent:
    """One request head, and whether it carries exactly one genuine token the proper way."""

    head: bytes
    genuine: bool


@dataclass(frozen=True)
class Answer:
    status: int
    head: bytes
    body: bytes


def _exchange(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        with contextlib.suppress(OSError):  # answered and closed before reading it all
            connection.sendall(head)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := connection.recv(65536):
                answer += chunk
    return answer


def _parse(raw: bytes) -> Answer | None:
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        return None
    status = int(head.split(b" ", 2)[1])
    return Answer(status, head, body)


def _challenges(head: bytes) -> list[bytes]:
    lines = head.split(b"\r\n")[1:]
    return [
        line.split(b":", 1)[1].strip(b" \t")
        for line in lines
        if line.split(b":", 1)[0].lower() == b"www-authenticate"
    ]


class Heads:
    """A seeded generator of adversarial request heads."""

    def __init__(self, issuer: DevIssuer, seed: int) -> None:
        self.rng = random.Random(seed)
        self.token = issuer.mint(scopes=["items:read"])
        self.other = issuer.mint_forged()

    def method(self) -> bytes:
        return self.rng.choice(
            [b"GET", b"GET", b"HEAD", b"OPTIONS", b"POST", b"DELETE", b"BREW", b"get"]
        )

    def path(self) -> tuple[bytes, bool]:
        """A request target, and whether the app routes it to a public route."""
        # /open is public, its view scoped: Flask answers OPTIONS itself, without the view.
        public = [b"/health", b"/%68ealth", b"/static/x", b"/static/a%2Fb", b"/open"]
        protected = [
            b"/me",
            b"/items",
            b"/health/../me",
            b"/static/../me",
            b"/static/%2e%2e/me",
            b"/static/..%2Fme",
            b"/health%2F..%2Fme",
            b"//me",
            b"/healthcheck-admin",
            b"/me/",
            b"/ME",
        ]
        path = self.rng.choice(public + protected)
        if self.rng.random() < 0.2:
            path = b"http://api.example" + path
        elif self.rng.random() < 0.03:
            path = b"*"  # asterisk-form (RFC 9112 §3.2.4)
        return path, path.rsplit(b"example", 1)[-1] in public

    def query(self) -> tuple[bytes, bool]:
        """A query string, and whether it carries a token (RFC 6750 §2.3)."""
        token = self.token.encode()
        dotted = token.replace(b".", b"%2E")
        choices = [
            (b"", False),
            (b"a=1", False),
            (b"access_token=" + token, True),
            (b"access%5Ftoken=" + dotted, True),
            (b"%61ccess_token=" + token, True),
            (b"a=1&access_token=" + dotted + b"&access_token=x", True),
            (b"access_token", True),
            (b"ACCESS_TOKEN=" + token, False),
            (b"x=%ZZ&access_token=%", True),
            (b"access_token%3D" + token, False),
        ]
        return self.rng.choice(choices)

    def value(self) -> tuple[bytes, bool]:
        """An Authorization value, and whether it is a genuine token sent properly."""
        rng, token = self.rng, self.token.encode()
        odd = bytes(rng.choice(ODD_BYTES) for _ in range(3))
        choices: list[tuple[bytes, bool]] = [
            (b"Bearer " + token, True),
            (b"bEaReR   " + token, True),
            (b"Bearer " + token + b" ", True),
            (b"Bearer " + self.other.encode(), False),
            (b"Bearer " + token[:-2], False),
            (b"Bearer " + token + odd, False),
            (b"Bearer " + odd + token, False),
            (b"Bearer " + token.replace(b".", odd[:1], 1), False),
            (b"Bearer\x00" + token, False),
            (b"Bearer", False),
            (b"", False),
            (b"Basic dXNlcjpwYXNz", False),
            (b"DPoP " + token, False),
            (b"Bearer " + b"A" * rng.choice([8191, 8192, 8193, 9000]), False),
            (b"Bearer " + b"A" * rng.choice([20_000, 70_000]), False),
            (b"Bearer " + token + b", Bearer " + token, False),
            (b"Bearer " + token + b'", x="', False),
            (bytes(rng.choice(ANY_BYTES) for _ in range(rng.randrange(1, 40))), False),
        ]
        return rng.choice(choices)

    def authorization(self) -> tuple[list[bytes], bool]:
        """Authorization lines (names of mixed case, obs-fold) and whether they are genuine."""
        rng = self.rng
        count = rng.choice([0, 1, 1, 1, 2, 3, 40])
        lines, genuine = [], count == 1
        for _ in range(count):
            name = rng.choice(
                [b"Authorization", b"authorization", b"AUTHORIZATION", b"AuThOrIzAtIoN"]
            )
            value, proper = self.value()
            genuine = genuine and proper
            if rng.random() < 0.1 and b" " in value:
                scheme, _, rest = value.partition(b" ")
                # obs-fold: refused, or replaced by SP before use (RFC 9112 §5.2)
                value = scheme + b"\r\n " + rest
            lines.append(name + b": " + value)
        return lines, genuine

    def __iter__(self) -> Iterator[tuple[Sent, bool]]:
        """Requests, each with whether its path is a public route."""
        for _ in range(REQUESTS):
            path, public = self.path()
            query, in_query = self.query()
            lines, genuine = self.authorization()
            target = path + (b"?" + query if query else b"")
            version = self.rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"])
            head = b"%s %s %s\r\nHost: api.example\r\nConnection: close\r\n" % (
                self.method(),
                target,
                version,
            )
            if self.rng.random() < 0.1:
                head += (
                    b"X-Request-ID: "
                    + bytes(self.rng.choice(ANY_BYTES) for _ in range(9))
                    + b"\r\n"
                )
            head += b"".join(line + b"\r\n" for line in lines) + b"\r\n"
            yield Sent(head, genuine and not in_query), public


def _check(sent: Sent, public: bool, answer: Answer, events: list[dict[str, Any]]) -> None:
    assert answer.status < 500, (sent.head[:300], answer.head)
    challenges = _challenges(answer.head)
    if challenges:
        assert answer.status in (400, 401, 403), answer.head
        assert len(challenges) == 1, answer.head
        assert CHALLENGE.fullmatch(challenges[0]), challenges[0]
        rejections = [e for e in events if e["event"] in ("token.rejected", "scope.denied")]
        assert len(rejections) == 1, (sent.head[:300], events)
    elif answer.status == 200 and (not public or SCOPED_BODY in answer.body):
        assert sent.genuine, (sent.head[:300], answer.head, answer.body)
        if not public:
            assert [event["event"] for event in events] == ["token.accepted"], events
    if not public or sent.genuine:
        assert len(events) <= 2, events
    else:
        assert len(events) <= 1, events


ServerFactory = Callable[[DevIssuer], AbstractContextManager[int]]


@contextmanager
def _uvicorn(issuer: DevIssuer, http: str) -> Iterator[int]:
    with uvicorn_logging(build_app(issuer.guard()), http=http) as (address, _):
        yield int(address.rpartition(":")[2])


@contextmanager
def _werkzeug(issuer: DevIssuer) -> Iterator[int]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, build_flask_app(issuer.guard()), threaded=False)
    with serving(server) as port:
        yield port


SERVERS: dict[str, ServerFactory] = {
    "uvicorn-httptools": lambda issuer: _uvicorn(issuer, "httptools"),
    "uvicorn-h11": lambda issuer: _uvicorn(issuer, "h11"),
    "werkzeug": _werkzeug,
}


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_adversarial_heads_on_a_real_server(session_issuer: DevIssuer, server: str) -> None:
    with SERVERS[server](session_issuer) as port:
        for sent, public in Heads(session_issuer, SEED):
            with capture_logs() as events:
                raw = _exchange(port, sent.head)
            answer = _parse(raw)
            if answer is None:
                continue  # the server closed without answering: it never reached the app
            _check(sent, public, answer, events)
