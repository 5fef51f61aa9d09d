"""``bearerguard revoke token|subject|client|session`` and ``bearerguard revocations list``.

Administration of a ``RedisRevocationStore`` from a shell: every instance of the API that
shares the Redis and the namespace enforces a revocation made here within milliseconds.
The commands use the store's synchronous side without a mirror (one round trip per
revocation; ``SCAN`` for the list), so they need nothing but the Redis URL.

Handlers raise ``CommandError`` for expected failures; ``bearerguard.cli.main`` (and ``run``
here) report it as one line, or a JSON document with ``--json``. Registration imports
nothing heavy; redis-py is imported when a command runs, and its absence is reported as a
missing extra (exit 2). A URL that cannot be a Redis URL is a usage error (exit 2); a Redis
that cannot be reached or used through it (refused, unknown host, timeout, wrong password
or database) exits 3 with one line saying so, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from bearerguard._cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    Commands,
    Console,
    Handler,
    add_output_options,
    describe_duration,
    non_negative_seconds,
    positive_seconds,
    print_usage,
    read_token,
    relative,
    terminal_safe,
    usage_error,
)
from bearerguard._core.times import MAX_NUMERIC_DATE
from bearerguard.revocation._table import DEFAULT_EXPIRY_GRACE

if TYPE_CHECKING:
    from bearerguard.revocation.redis import RedisRevocationStore, Revocation

__all__ = ["DEFAULT_NAMESPACE", "URL_VARIABLE", "add_revocation_commands", "parse_instant", "run"]

URL_VARIABLE = "BEARERGUARD_REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"  # as bearerguard.revocation.redis.DEFAULT_URL
DEFAULT_NAMESPACE = "bearerguard"  # as RedisRevocationStore's default
_MAX_EPOCH = 1e11  # year 5138: anything larger is almost certainly milliseconds
_NUMBER = re.compile(r"\d+(\.\d+)?")
_MAX_CELL = 80
_NAME_ARGUMENT = {"token": "jti", "subject": "sub", "client": "client_id", "session": "sid"}

_MISSING_REDIS = (
    "the revocation commands need redis-py, which is not installed.\n"
    "Install the redis extra:  pip install 'bearerguard[redis]'"
)


# -- arguments ------------------------------------------------------------------------------


def parse_instant(text: str) -> float:
    """An instant given on the command line, as epoch seconds (an argparse ``type``).

    Accepts epoch seconds (``1767225600``), ISO 8601 with a UTC offset
    (``2026-01-01T00:00:00Z``, ``2026-01-01 01:00+01:00``), or ``now``.

    Raises:
        argparse.ArgumentTypeError: anything else, a time without an offset (its meaning
            would depend on this machine's zone), or a number that looks like milliseconds.
    """
    value = text.strip()
    if value.lower() == "now":
        return time.time()
    if _NUMBER.fullmatch(value):
        seconds = float(value)
        if seconds >= _MAX_EPOCH:
            raise argparse.ArgumentTypeError(
                f"{text!r} is too far in the future: epoch seconds, not milliseconds"
            )
        return seconds
    iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        instant = datetime.fromisoformat(iso)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an instant: {text!r} (give epoch seconds, or ISO 8601 with an offset "
            "such as 2026-01-01T00:00:00Z)"
        ) from None
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset: add one (2026-01-01T00:00:00Z, ...+02:00) "
            "or give epoch seconds"
        )
    seconds = instant.timestamp()
    if not 0 <= seconds < _MAX_EPOCH:
        # Years 0001 and 9999 pass fromisoformat, but their entry's lapse (plus the grace)
        # is no datetime: writing it, and every later `revocations list`, would crash.
        raise argparse.ArgumentTypeError(
            f"{text!r} is out of range: give an instant from 1970 to the year 5138"
        )
    return seconds


def _cutoff_instant(text: str) -> float | None:
    """``--issued-before``: as ``parse_instant``, but ``now`` is the default (``None``), which
    the store takes as the later of this machine's clock and Redis's."""
    return None if text.strip().lower() == "now" else parse_instant(text)


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        default=None,
        help=f"the Redis of the revocation store (default: ${URL_VARIABLE}, else "
        f"{DEFAULT_URL}); prefer the variable for a URL with a password",
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help=f"the store's namespace, as given to RedisRevocationStore (default: "
        f"{DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="the longest wait for Redis to connect and to answer (default 5)",
    )
    add_output_options(parser)


def _add_target_options(parser: argparse.ArgumentParser, *, cutoff: bool) -> None:
    parser.add_argument(
        "--issuer",
        metavar="ISS",
        help="only tokens of this issuer (the exact iss); default: any issuer",
    )
    if cutoff:
        parser.add_argument(
            "--issued-before",
            type=_cutoff_instant,
            metavar="WHEN",
            help="refuse tokens issued at or before this instant: epoch seconds, ISO 8601 "
            "with an offset, or 'now' (the default); tokens without iat are refused too",
        )
    else:
        parser.add_argument(
            "--expires-at",
            type=parse_instant,
            metavar="WHEN",
            help="the token's exp (epoch seconds or ISO 8601 with an offset): the entry "
            "lapses then, plus --expiry-grace; without it the entry is kept for --retention "
            "plus --expiry-grace",
        )
        parser.add_argument(
            "--expiry-grace",
            type=non_negative_seconds,
            default=DEFAULT_EXPIRY_GRACE,
            metavar="SECONDS",
            help="how long the entry outlives --expires-at (or --retention): the API store's "
            "expiry_grace, at "
            f"least every guard's leeway (default {DEFAULT_EXPIRY_GRACE:g}, the stores' default)",
        )
    parser.add_argument("--reason", metavar="TEXT", help="a short note kept with the entry")
    parser.add_argument(
        "--retention",
        type=positive_seconds,
        default=86_400.0,
        metavar="SECONDS",
        help="how long an entry without a known expiry is kept"
        + (" (a cut-off always is)" if cutoff else "")
        + ": at least your longest token lifetime (default 86400, one day)",
    )


def add_revocation_commands(commands: Commands) -> None:
    """Register ``revoke`` (``token``, ``subject``, ``client``, ``session``) and
    ``revocations list``."""
    revoke = commands.add_parser(
        "revoke",
        help="revoke a token (by jti), a subject, a client or a session in a Redis store",
        description=(
            "Revoke in a RedisRevocationStore: every instance of the API sharing the Redis "
            "and the namespace refuses the token(s) within milliseconds."
        ),
    )
    revoke.set_defaults(handler=partial(print_usage, revoke))
    leaves = revoke.add_subparsers(title="commands", metavar="COMMAND")
    token = leaves.add_parser(
        "token",
        help="revoke one token by its jti, or the token itself (--token)",
        description="Revoke one token, until it would have expired anyway: by its jti, or "
        "given whole with --token.",
    )
    which = token.add_mutually_exclusive_group(required=True)
    which.add_argument("jti", nargs="?", help="the token's jti claim")
    which.add_argument(
        "--token",
        metavar="TOKEN",
        help="the token itself ('-': read from standard input, which keeps it out of the "
        "process list and shell history; an Authorization header pasted whole works): its "
        "iss, jti and exp are read from its payload, parsed strictly but not verified: no "
        "signature is checked, since revoking grants nothing (a forged token can only cut "
        "off the jti it names). The token is never printed",
    )
    subject = leaves.add_parser(
        "subject",
        help="revoke every token of a subject issued up to an instant",
        description="Revoke every token of a subject (sub) issued at or before an instant.",
    )
    subject.add_argument("sub", metavar="SUB", help="the subject (the sub claim)")
    client = leaves.add_parser(
        "client",
        help="revoke every token of a client issued up to an instant",
        description="Revoke every token issued to a client (client_id, else azp, cid or "
        "appid: the token's client_id) at or before an instant.",
    )
    client.add_argument(
        "client_id", metavar="CLIENT_ID", help="the client, as the token's client_id names it"
    )
    session = leaves.add_parser(
        "session",
        help="revoke every token of one session (by sid) issued up to an instant",
        description="Revoke every token whose sid claim names a session, issued at or before "
        "an instant; the user's other sessions stay valid.",
    )
    session.add_argument("sid", metavar="SID", help="the session (the sid claim)")
    session.add_argument(
        "--subject",
        metavar="SUB",
        help="the session's user: their tokens without a sid are revoked too (they cannot "
        "show which session they belong to)",
    )
    kinds = ((token, "token"), (subject, "subject"), (client, "client"), (session, "session"))
    for parser, kind in kinds:
        _add_target_options(parser, cutoff=kind != "token")
        _add_connection_options(parser)
        parser.set_defaults(handler=partial(run_revoke, kind))

    revocations = commands.add_parser(
        "revocations",
        help="list the live revocations of a Redis revocation store",
        description="Inspect a RedisRevocationStore.",
    )
    revocations.set_defaults(handler=partial(print_usage, revocations))
    listing = revocations.add_subparsers(title="commands", metavar="COMMAND").add_parser(
        "list",
        help="list every live revocation (SCAN, never KEYS)",
        description="List every live revocation of the namespace, oldest change first. "
        "Walks the keys with SCAN, so it never blocks Redis.",
    )
    listing.add_argument(
        "--kind",
        choices=("token", "subject", "client", "session", "sessionless"),
        help="only revocations of this kind (sessionless: a user's tokens without a sid, "
        "revoked with one of their sessions)",
    )
    _add_connection_options(listing)
    listing.set_defaults(handler=run_list)


# -- the store ------------------------------------------------------------------------------


def _spilled_userinfo(parts: SplitResult) -> bool:
    """Whether an ``@`` lies beyond the authority: a user name or password holding an
    unencoded ``/``, ``?`` or ``#`` ends the authority early (RFC 3986 §3.2), so the rest of
    the secret lands in the path, query or fragment, and in the host and port."""
    if "@" in parts.path or "@" in parts.fragment:
        return True
    if "@" not in parts.query:
        return False
    # redis-py reads options from the query (?password=p@ss): an '@' in a value is one of
    # them. A spilled secret puts it in a name, or leaves "user:pa" as the port.
    names = (field.partition("=")[0] for field in parts.query.split("&"))
    return any("@" in name for name in names) or not _numeric_port(parts)


def _numeric_port(parts: SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return False
    return True


def _redacted(url: str) -> str:
    """``url`` without its password or query (which may hold one), for messages."""
    try:
        parts = urlsplit(url)
        if _spilled_userinfo(parts):
            return f"{parts.scheme}://***"
        netloc = parts.netloc
        host = netloc.rpartition("@")[2]
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{host}"
        elif parts.username is not None:  # a password written without its colon, likely
            netloc = f"***@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(unparsable URL)"


def _check_url(url: str) -> None:
    """Refuse, as a usage error, a URL that cannot name a Redis (redis-py would guess)."""
    shown = _redacted(url)
    try:
        parts = urlsplit(url)
        if _spilled_userinfo(parts):  # the port or host error would quote the secret
            raise usage_error(
                f"--redis-url {shown}: the user name or password holds a '/', '?' or '#': "
                "percent-encode it (%2F, %3F, %23)"
            )
        port = parts.port
    except ValueError as exc:
        raise usage_error(f"--redis-url {shown}: {exc}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise usage_error(
            f"--redis-url must start with redis://, rediss:// or unix://, not {shown!r}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise usage_error(f"--redis-url {shown}: a unix:// URL needs a socket path")
        return
    if not parts.hostname:
        raise usage_error(f"--redis-url {shown}: no host")
    if port == 0:
        raise usage_error(f"--redis-url {shown}: port 0")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise usage_error(
            f"--redis-url {shown}: the path must be a database number (/0), not /{database}"
        )


def _check_url_options(url: str) -> None:
    """Refuse, as a usage error, query options redis-py would fail on only at the first
    command (it passes unknown ones, ``?foo=1``, to the connection as keyword arguments)."""
    import redis  # noqa: PLC0415 - redis-py is there once the store module imported

    try:
        redis.ConnectionPool.from_url(url).make_connection()  # builds it; no I/O
    except (TypeError, ValueError, redis.RedisError) as exc:
        raise usage_error(f"--redis-url {_redacted(url)}: {exc}") from None


def _unreachable(url: str, cause: BaseException | None) -> CommandError:
    """A one-line message for a Redis that cannot be used, by what redis-py raised."""
    import redis.exceptions as errors  # noqa: PLC0415 - redis-py is there once a store is

    shown = _redacted(url)
    text = str(cause).strip().rstrip(".") if cause is not None else "unknown failure"
    if isinstance(cause, errors.AuthenticationError | errors.AuthenticationWrongNumberOfArgsError):
        message = f"Redis at {shown} refused the credentials: {text}"
    elif isinstance(cause, errors.TimeoutError | TimeoutError):
        message = f"Redis at {shown} did not answer in time: {text}"
    elif isinstance(cause, errors.ConnectionError | OSError):
        message = f"cannot reach Redis at {shown}: {text}"
    elif isinstance(cause, errors.ResponseError):
        message = f"Redis at {shown} refused the command: {text}"
    else:
        message = f"Redis at {shown} failed: {type(cause).__name__}: {text}"
    return CommandError(message, code=EXIT_UNREACHABLE, kind="unreachable")


@contextmanager
def _store(
    args: argparse.Namespace,
    *,
    retention: float = 86_400.0,
    expiry_grace: float = DEFAULT_EXPIRY_GRACE,
) -> Iterator[Any]:
    """A store without a mirror for the parsed options; every failure is a CommandError."""
    try:
        from bearerguard.errors import (  # noqa: PLC0415 - lazily, see the module docstring
            ConfigurationError,
            RevocationStoreError,
        )
        from bearerguard.revocation.redis import (  # noqa: PLC0415
            RedisRevocationStore,
        )
    except ImportError as exc:
        if "redis" not in str(exc):
            raise
        raise CommandError(_MISSING_REDIS, code=EXIT_USAGE, kind="missing_extra") from None
    url: str = args.redis_url or os.environ.get(URL_VARIABLE) or DEFAULT_URL
    _check_url(url)
    _check_url_options(url)
    namespace: str = args.namespace
    try:
        store = RedisRevocationStore(
            url,
            namespace=namespace,
            mirror=False,
            socket_timeout=args.timeout,
            connect_timeout=args.timeout,
            retention=retention,
            expiry_grace=expiry_grace,
            max_connections=2,
        )
    except (ConfigurationError, ValueError) as exc:
        raise usage_error(f"{_redacted(url)}: {exc}") from None
    try:
        yield store
    except RevocationStoreError as exc:
        cause = exc.__cause__
        if isinstance(cause, ValueError) and not isinstance(cause, OSError):
            # The store's own refusal to read an entry: Redis works, the data is odd.
            raise CommandError(str(exc), code=EXIT_FAILURE, kind="unreadable") from None
        raise _unreachable(url, cause) from None
    finally:
        store.close()


# -- revoke ---------------------------------------------------------------------------------


def _iso(seconds: float) -> str:
    instant = datetime.fromtimestamp(min(seconds, MAX_NUMERIC_DATE), timezone.utc)
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_text(name: str, value: str | None, *, limit: int) -> None:
    if value is not None and (not value or len(value) > limit):
        raise usage_error(f"{name} must be 1 to {limit} characters")


def run_revoke(kind: str, args: argparse.Namespace) -> int:
    """``revoke token|subject|client|session``: write one revocation; exit 0 once Redis has
    it."""
    console = Console.of(args)
    if kind == "token" and args.token is not None:
        _take_token(args)
    name: str = getattr(args, _NAME_ARGUMENT[kind])
    _check_text("the jti, sub, client_id or sid", name, limit=1024)
    subject: str | None = getattr(args, "subject", None)
    _check_text("--subject", subject, limit=1024)
    _check_text("--reason", args.reason, limit=500)
    _check_text("--issuer", args.issuer, limit=2048)
    now = time.time()
    result: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "issuer": args.issuer,
        "namespace": args.namespace,
        "reason": args.reason,
    }
    if kind == "token":
        expires_at: float | None = args.expires_at
        result["expires_at"] = None if expires_at is None else _iso(expires_at)
        result["lapses_at"] = _iso(_token_lapse(args, now))
    else:
        issued_before: float = now if args.issued_before is None else args.issued_before
        result["issued_before"] = _iso(issued_before)
    if kind == "session":
        result["subject"] = subject
    step = f"revoking {kind} {_cell(name)!r} in namespace {args.namespace!r}"
    grace = getattr(args, "expiry_grace", DEFAULT_EXPIRY_GRACE)
    with (
        _store(args, retention=args.retention, expiry_grace=grace) as store,
        console.step(step),
    ):
        written = _write(store, kind, name, args)
        listening = store._listening_mirrors()  # the CLI is part of the package
    if console.as_json:
        console.document(
            {"ok": True, "written": written, "listening": listening, "revocation": result}
        )
    elif not written:
        console.say(f"nothing written: {_lapsed_note(args, now)}")
    else:
        _say_revoked(console, kind, name, args, result)
    if listening == 0:
        # A namespace no API reads: a mistyped or forgotten --namespace revokes nothing.
        console.warn(
            f"warning: no API instance listens on namespace {args.namespace!r} (no mirror "
            f"subscribed to {args.namespace + ':changes'!r}): check --namespace; stores "
            "built with mirror=False read Redis at each check and are not counted"
        )
    return EXIT_OK


def _take_token(args: argparse.Namespace) -> None:
    """``revoke token --token``: the jti, issuer and exp of the token given, as if given
    as arguments. The token is parsed as the guard parses it (a strict compact JWS: RFC
    7515 §7.1, §5.2) but its signature is not checked: a revocation refuses, never grants.

    Raises:
        CommandError: a usage error for ``--issuer`` or ``--expires-at`` given too, a token
            that does not parse, or one without a usable ``iss``, ``jti`` or ``exp``;
            messages never quote the token.
    """
    from bearerguard._core.jws import decode_payload, parse_compact  # noqa: PLC0415
    from bearerguard.errors import AuthError  # noqa: PLC0415

    if args.issuer is not None or args.expires_at is not None:
        raise usage_error("--issuer and --expires-at come from --token: leave them out")
    try:
        claims = decode_payload(parse_compact(read_token(args.token)))
    except AuthError as exc:  # its detail names the rule broken, never the token's text
        raise usage_error(f"--token: {exc.detail or exc.description}") from None
    issuer, jti, exp = claims.get("iss"), claims.get("jti"), claims.get("exp")
    if jti is None:
        raise usage_error(_no_jti(claims.get("sub"), issuer))
    for claim, value in (("iss", issuer), ("jti", jti)):
        if value is None:
            raise usage_error(f"the token has no {claim} claim")
        if not isinstance(value, str):
            raise usage_error(f"the token's {claim} claim is not a string")
    # RFC 7519 §4.1.4: exp is a NumericDate, a JSON number of seconds since the epoch.
    if exp is None:
        raise usage_error("the token has no exp claim")
    if type(exp) is not int and type(exp) is not float:
        raise usage_error("the token's exp claim is not a number")
    if not 0 <= exp < _MAX_EPOCH:  # milliseconds, or a lapse no datetime can hold
        raise usage_error("the token's exp claim is out of range")
    args.jti, args.issuer, args.expires_at = jti, issuer, float(exp)


def _no_jti(subject: object, issuer: object) -> str:
    """The error for a token without ``jti``: the command that cuts it off instead."""
    command = "bearerguard revoke subject "
    command += shlex.quote(terminal_safe(subject)) if isinstance(subject, str) else "SUB"
    if isinstance(issuer, str):
        command += f" --issuer {shlex.quote(terminal_safe(issuer))}"
    return (
        "the token has no jti claim, so it cannot be revoked alone: revoke its subject "
        f"instead ({command})"
    )


def _token_lapse(args: argparse.Namespace, now: float) -> float:
    """When a token's entry lapses: its exp, else ``retention`` from now, plus the grace."""
    if args.expires_at is None:
        return float(now + args.retention + args.expiry_grace)
    return float(args.expires_at + args.expiry_grace)


def _lapsed_note(args: argparse.Namespace, now: float) -> str:
    """Why the store wrote nothing: the entry had already lapsed by Redis's clock."""
    lapse = _token_lapse(args, now)
    if lapse > now:
        return (
            f"the entry would lapse at {_iso(lapse)} ({relative(lapse, now)} by this "
            "machine's clock), already past by Redis's clock: this clock is behind Redis's"
        )
    return (
        f"the token expired {relative(args.expires_at, now)} and its entry (exp + "
        f"{describe_duration(args.expiry_grace)}) has lapsed: it is refused anyway"
    )


def _say_revoked(
    console: Console, kind: str, name: str, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    # terminal_safe: with --token, iss comes from a payload no signature vouches for.
    issuer = "any issuer" if args.issuer is None else f"issuer {terminal_safe(args.issuer)}"
    if kind != "token":
        also = ""
        if kind == "session" and args.subject is not None:
            also = f", and those of {_cell(args.subject)!r} without a sid"
        console.say(
            f"revoked {kind} {_cell(name)!r} ({issuer}): tokens issued at or before "
            f"{result['issued_before']} are refused{also}"
        )
        return
    if args.expires_at is None:
        kept = (
            f"--retention {describe_duration(args.retention)} + "
            f"{describe_duration(args.expiry_grace)} grace"
        )
    else:
        kept = f"exp + {describe_duration(args.expiry_grace)} grace"
    console.say(
        f"revoked token jti={_cell(name)!r} ({issuer}) until {result['lapses_at']} ({kept})"
    )
    if args.expires_at is None:
        console.warn(
            f"note: without --expires-at the entry is kept for "
            f"{describe_duration(args.retention)} (--retention) plus the grace; tokens "
            "living longer would be accepted again after that"
        )


def _write(store: RedisRevocationStore, kind: str, name: str, args: argparse.Namespace) -> bool:
    """Whether Redis holds the entry: ``False`` when it had lapsed by Redis's clock."""
    # The store merges with an existing entry: a revocation is never shortened.
    if kind == "token":
        return store.revoke_token_sync(
            name, args.expires_at, issuer=args.issuer, reason=args.reason
        )
    if kind == "subject":
        return store.revoke_subject_sync(
            name, args.issued_before, issuer=args.issuer, reason=args.reason
        )
    if kind == "session":
        return store.revoke_session_sync(
            name, args.issued_before, issuer=args.issuer, subject=args.subject, reason=args.reason
        )
    return store.revoke_client_sync(
        name, args.issued_before, issuer=args.issuer, reason=args.reason
    )


# -- list -----------------------------------------------------------------------------------


def _cell(text: str, limit: int = _MAX_CELL) -> str:
    """Text from Redis made safe for a terminal: no control characters, bounded length."""
    safe = terminal_safe(text)
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def _described(revocation: Revocation) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return None if moment is None else _iso(moment.timestamp())

    return {
        "kind": revocation.kind,
        "issuer": revocation.issuer,
        "name": revocation.name,
        "issued_before": iso(revocation.issued_before),
        "lapses_at": iso(revocation.lapses_at),
        "reason": revocation.reason,
        "updated_at": iso(revocation.updated_at),
    }


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def run_list(args: argparse.Namespace) -> int:
    """``revocations list``: every live revocation, as a table or one JSON document."""
    console = Console.of(args)
    with _store(args) as store, console.step(f"listing namespace {args.namespace!r}"):
        found = store.list_revocations_sync()
    if args.kind is not None:
        found = [revocation for revocation in found if revocation.kind == args.kind]
    if console.as_json:
        console.document(
            {
                "namespace": args.namespace,
                "count": len(found),
                "revocations": [_described(revocation) for revocation in found],
            }
        )
        return EXIT_OK
    what = "live" if args.kind is None else f"live {args.kind}"
    if not found:
        console.say(f"no {what} revocations in namespace {args.namespace!r}")
        return EXIT_OK
    now = time.time()
    rows = [["KIND", "ISSUER", "NAME", "ISSUED BEFORE", "LAPSES", "REASON"]]
    for revocation in found:
        cutoff = revocation.issued_before
        rows.append(
            [
                revocation.kind,
                "*" if revocation.issuer is None else _cell(revocation.issuer, 48),
                _cell(revocation.name),
                "-" if cutoff is None else _iso(cutoff.timestamp()),
                relative(revocation.lapses_at.timestamp(), now),
                "-" if revocation.reason is None else _cell(revocation.reason),
            ]
        )
    for line in _table(rows):
        console.say(line)
    console.say(f"{len(found)} {what} revocation(s) in namespace {args.namespace!r}")
    return EXIT_OK


# -- standalone entry, until ``bearerguard.cli`` registers these commands -----------------------


def run(argv: Sequence[str] | None = None) -> int:
    """Run ``revoke ...`` or ``revocations list`` as ``bearerguard`` would.

    Args:
        argv: the arguments without the program name (``["revoke", "token", "j1"]``).

    Returns:
        The exit code: 0 done, 1 failed, 2 usage error or missing extra, 3 Redis cannot be
        reached or used, 130 interrupted.
    """
    parser = argparse.ArgumentParser(prog="bearerguard")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_revocation_commands(commands)
    parser.set_defaults(handler=partial(print_usage, parser))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error: argparse has spoken
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        return Console.of(args).fail(exc)
    except KeyboardInterrupt:
        return Console.of(args).interrupted()
