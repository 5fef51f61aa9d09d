"""``bearerguard revoke ...`` and ``bearerguard revocations list`` against a real Redis.

The commands are driven through ``bearerguard._cli_revoke.run`` (the same parser and
handlers that ``bearerguard.cli`` registers), against the session redis-server of
``tests/redis_server.py`` with a namespace per test, or a private one for outages.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from bearerguard import AccessToken
from bearerguard._cli_revoke import add_revocation_commands, parse_instant, run
from bearerguard.errors import RevokedTokenError
from bearerguard.testing import DevIssuer
from tests.redis_server import RedisServer

ISS = "https://issuer.example"


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def invoke(*argv: str) -> Result:
        code = run(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def target(redis_server: RedisServer, redis_namespace: str) -> list[str]:
    """The connection options of a namespace of this test's own."""
    return ["--redis-url", redis_server.url, "--namespace", redis_namespace]


def token(
    jti: str = "j1", sub: str = "alice", client_id: str = "web", iat: float = 0, sid: str = ""
) -> Any:
    now = time.time()
    claims = {"iss": ISS, "aud": "api", "exp": now + 600, "jti": jti, "sub": sub}
    claims |= {"client_id": client_id, "iat": iat or now - 10}
    if sid:
        claims["sid"] = sid
    return AccessToken.from_claims(
        claims,
        scopes=frozenset(),
        expires_at=now + 600,
        issued_at=claims["iat"],
        key_id=None,
        algorithm="RS256",
        fingerprint="f",
    )


@pytest.fixture
def store(redis_server: RedisServer, redis_namespace: str) -> Iterator[Any]:
    """The namespace as an API instance sees it (no mirror: each check asks Redis)."""
    from bearerguard.revocation import RedisRevocationStore

    checked = RedisRevocationStore(redis_server.url, namespace=redis_namespace, mirror=False)
    yield checked
    checked.close()


# -- revoking and listing -------------------------------------------------------------------


def test_revoke_a_token_and_see_it_refused(cli: Any, target: list[str], store: Any) -> None:
    result = cli(
        "revoke", "token", "j1", "--issuer", ISS, "--expires-at", "2099-01-01T00:00:00Z",
        "--reason", "stolen laptop", *target,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.out == (
        f"revoked token jti='j1' (issuer {ISS}) until 2099-01-01T00:05:00Z (exp + 5 min grace)\n"
    )
    assert "revoking token 'j1'" in result.err
    assert store.is_revoked_sync(token())
    assert not store.is_revoked_sync(token(jti="j2"))
    [listed] = store.list_revocations_sync()
    assert (listed.kind, listed.issuer, listed.name, listed.reason) == (
        "token",
        ISS,
        "j1",
        "stolen laptop",
    )
    # Kept until the token's exp plus the expiry grace (5 min).
    assert listed.lapses_at == datetime(2099, 1, 1, 0, 5, tzinfo=timezone.utc)


def test_the_expiry_grace_matches_the_api_s_leeway(
    cli: Any, target: list[str], redis_server: RedisServer, session_issuer: DevIssuer
) -> None:
    """With the API's grace (900 s for a 600 s leeway) the entry outlives every acceptance."""
    from bearerguard.revocation import RedisRevocationStore

    raw = session_issuer.mint(expires_in=60, jti="tok-grace")
    exp = json.loads(base64.urlsafe_b64decode(raw.split(".")[1] + "=="))["exp"]
    result = cli(
        "revoke", "token", "tok-grace", "--issuer", session_issuer.url, "--expires-at", str(exp),
        "--expiry-grace", "900", "-q", *target,
    )  # fmt: skip
    assert result.code == 0, result.err
    lapse = datetime.fromtimestamp(exp + 900, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert result.out.endswith(f"until {lapse} (exp + 15 min grace)\n")
    now = [0.0]
    api = RedisRevocationStore(
        redis_server.url, namespace=target[-1], mirror=False, expiry_grace=900,
        clock=lambda: now[0],
    )  # fmt: skip
    guard = session_issuer.guard(leeway=600, revocation=api, clock=lambda: now[0])
    for offset in (0, 400, 590):  # accepted by the leeway, so refused only by the revocation
        now[0] = exp + offset
        with pytest.raises(RevokedTokenError):
            guard.authenticate_sync(raw)
    api.close()
    listed = cli("revocations", "list", "--json", *target).json()["revocations"]
    assert [item["lapses_at"] for item in listed] == [lapse]


def test_the_default_grace_and_the_lapse_in_json(cli: Any, target: list[str]) -> None:
    result = cli("revoke", "token", "j1", "--expires-at", "4070908800", "--json", *target)
    assert result.json()["revocation"]["lapses_at"] == "2099-01-01T00:05:00Z"
    result = cli(
        "revoke", "token", "j2", "--expires-at", "4070908800", "--expiry-grace", "0", "--json",
        *target,
    )  # fmt: skip
    assert result.json()["revocation"]["lapses_at"] == "2099-01-01T00:00:00Z"


@pytest.mark.parametrize("grace", ["-1", "nan", "inf", "soon"])
def test_a_bad_expiry_grace_is_a_usage_error(cli: Any, grace: str) -> None:
    result = cli("revoke", "token", "j1", "--expires-at", "4070908800", "--expiry-grace", grace)
    assert result.code == 2
    assert "--expiry-grace" in result.err
    assert "Traceback" not in result.err


def test_revoke_a_subject_and_a_client(cli: Any, target: list[str], store: Any) -> None:
    cutoff = time.time() - 5
    result = cli("revoke", "subject", "alice", "--issued-before", str(cutoff), *target)
    assert result.code == 0, result.err
    assert "revoked subject 'alice' (any issuer): tokens issued at or before" in result.out
    assert store.is_revoked_sync(token(iat=cutoff - 60))
    assert not store.is_revoked_sync(token(iat=cutoff + 1))  # issued after the cut-off
    assert cli("revoke", "client", "web", "--issuer", ISS, "-q", *target).code == 0
    assert store.is_revoked_sync(token(sub="bob"))  # every token of the client, up to now
    assert not store.is_revoked_sync(token(sub="bob", client_id="cli"))


def test_revoke_a_session(cli: Any, target: list[str], store: Any) -> None:
    cutoff = time.time() - 5
    argv = ["revoke", "session", "sess-1", "--subject", "alice", "--issuer", ISS]
    result = cli(*argv, "--issued-before", str(cutoff), *target)
    assert result.code == 0, result.err
    assert "revoked session 'sess-1' (issuer " in result.out
    assert "and those of 'alice' without a sid" in result.out
    assert store.is_revoked_sync(token(iat=cutoff - 60, sid="sess-1"))
    assert not store.is_revoked_sync(token(iat=cutoff - 60, sid="sess-2"))
    assert store.is_revoked_sync(token(iat=cutoff - 60))  # alice's, without a sid
    assert not store.is_revoked_sync(token(iat=cutoff + 1, sid="sess-1"))
    listed = cli("revocations", "list", "--json", "--kind", "session", *target).json()
    assert [(item["kind"], item["name"]) for item in listed["revocations"]] == [
        ("session", "sess-1")
    ]
    document = cli("revoke", "session", "sess-2", "--json", *target).json()
    assert document["revocation"]["kind"] == "session"
    assert document["revocation"]["subject"] is None


def test_issued_before_now_is_the_store_s_now(cli: Any, target: list[str], store: Any) -> None:
    # Not this machine's clock read at parsing: the store's default, at least Redis's now
    # (a clock behind Redis's would spare the tokens issued in the lag).
    parser = argparse.ArgumentParser()
    add_revocation_commands(parser.add_subparsers())
    for when in ("now", " NOW "):
        args = parser.parse_args(["revoke", "client", "web", "--issued-before", when])
        assert args.issued_before is None
    result = cli("revoke", "subject", "alice", "--issued-before", "now", *target)
    assert result.code == 0, result.err
    assert store.is_revoked_sync(token(iat=time.time() - 1))


def test_list_as_a_table_and_as_json(cli: Any, target: list[str]) -> None:
    assert cli("revocations", "list", *target).out == (
        f"no live revocations in namespace {target[-1]!r}\n"
    )
    cli("revoke", "token", "j1", "--expires-at", str(time.time() + 600), *target)
    cli("revoke", "subject", "al\x1b[31mice", "--reason", "offboarded\n", *target)
    table = cli("revocations", "list", *target)
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == ["KIND", "ISSUER", "NAME", "ISSUED", "BEFORE", "LAPSES", "REASON"]
    assert lines[1].split()[:3] == ["token", "*", "j1"]
    assert "in 15 min" in lines[1]  # 10 minutes and the 5-minute grace
    # Names and reasons from Redis cannot drive the terminal.
    assert "\x1b" not in table.out
    assert "al\\x1b[31mice" in lines[2]
    assert lines[2].endswith("offboarded\\n")
    assert lines[3] == f"2 live revocation(s) in namespace {target[-1]!r}"

    document = cli("revocations", "list", "--json", *target).json()
    assert document["namespace"] == target[-1]
    assert document["count"] == 2
    first, second = document["revocations"]
    assert (first["kind"], first["name"], first["issuer"], first["issued_before"]) == (
        "token",
        "j1",
        None,
        None,
    )
    assert second["name"] == "al\x1b[31mice"
    assert second["reason"] == "offboarded\n"
    assert second["issued_before"].endswith("Z")
    only = cli("revocations", "list", "--json", "--kind", "subject", *target).json()
    assert [item["kind"] for item in only["revocations"]] == ["subject"]
    assert (
        "1 live subject revocation(s)"
        in cli("revocations", "list", "--kind", "subject", *target).out
    )


def test_json_output_of_revoke(cli: Any, target: list[str]) -> None:
    result = cli("revoke", "client", "web", "--json", "--issued-before", "1767225600", *target)
    assert result.json() == {
        "ok": True,
        "written": True,
        "listening": 0,
        "revocation": {
            "kind": "client",
            "name": "web",
            "issuer": None,
            "namespace": target[-1],
            "reason": None,
            "issued_before": "2026-01-01T00:00:00Z",
        },
    }


def test_the_url_comes_from_the_environment(
    cli: Any, redis_server: RedisServer, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BEARERGUARD_REDIS_URL", redis_server.url)
    assert cli("revoke", "token", "j9", "--namespace", redis_namespace).code == 0
    listed = cli("revocations", "list", "--json", "--namespace", redis_namespace).json()
    assert [item["name"] for item in listed["revocations"]] == ["j9"]


def test_a_namespace_no_api_listens_on_is_flagged(
    cli: Any, target: list[str], redis_server: RedisServer, redis_namespace: str
) -> None:
    """An operator who forgets --namespace (or mistypes it) revokes in a namespace no API
    reads: the write succeeds and nothing is refused, so the command must say so."""
    from bearerguard.revocation import RedisRevocationStore

    alone = cli("revoke", "subject", "alice", "-q", *target)
    assert alone.code == 0
    assert alone.out.startswith("revoked subject 'alice'")
    assert f"no API instance listens on namespace {redis_namespace!r}" in alone.err
    assert cli("revoke", "subject", "alice", "--json", *target).json()["listening"] == 0
    api = RedisRevocationStore(redis_server.url, namespace=redis_namespace)
    api.start_sync()
    try:
        heard = cli("revoke", "subject", "bob", "-q", *target)
        assert heard.code == 0
        assert heard.err == ""
        assert cli("revoke", "subject", "bob", "--json", *target).json()["listening"] == 1
    finally:
        api.close()


def test_namespaces_are_apart(cli: Any, target: list[str]) -> None:
    cli("revoke", "token", "j1", *target)
    other = [*target[:-1], target[-1] + "-other"]
    assert cli("revocations", "list", "--json", *other).json()["count"] == 0


def test_a_token_without_expiry_is_kept_for_the_retention(cli: Any, target: list[str]) -> None:
    result = cli("revoke", "token", "j1", "--retention", "3600", *target)
    assert result.code == 0
    assert "without --expires-at the entry is kept for 1 h" in result.err
    [listed] = cli("revocations", "list", "--json", *target).json()["revocations"]
    lapses = datetime.fromisoformat(listed["lapses_at"].replace("Z", "+00:00")).timestamp()
    assert abs(lapses - (time.time() + 3600 + 300)) < 5  # plus the default expiry_grace


def test_an_expired_token_needs_no_revocation(cli: Any, target: list[str]) -> None:
    result = cli("revoke", "token", "old", "--expires-at", "2020-01-01T00:00:00Z", *target)
    assert result.code == 0
    assert result.out.startswith("nothing written: the token expired")
    assert cli("revocations", "list", "--json", *target).json()["count"] == 0
    result = cli("revoke", "token", "old", "--json", "--expires-at", "1000", *target)
    assert result.json()["written"] is False


# -- usage errors (exit 2) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("tomorrow", "not an instant: 'tomorrow'"),
        ("2026-01-01T00:00:00", "has no UTC offset"),
        ("2026-01-01", "has no UTC offset"),
        ("1767225600000", "not milliseconds"),
        ("-5", "not an instant"),
        ("9999-12-31T23:59:59Z", "out of range"),
        ("0001-01-01T00:00:00+01:00", "out of range"),
        ("1969-12-31T23:59:59Z", "out of range"),
    ],
)
def test_bad_dates_are_usage_errors(cli: Any, when: str, message: str) -> None:
    result = cli("revoke", "subject", "alice", f"--issued-before={when}")
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("option", ["--expires-at", "--issued-before"])
def test_an_instant_near_the_end_of_the_calendar_is_refused_before_redis(
    cli: Any, target: list[str], option: str
) -> None:
    # Year 9999 passes fromisoformat, but its entry's lapse is no datetime: writing it
    # crashed, and so did every later `revocations list` of the namespace.
    kind, name = ("token", "j9999") if option == "--expires-at" else ("subject", "s9999")
    result = cli("revoke", kind, name, f"{option}=9999-12-31T23:59:59Z", *target)
    assert result.code == 2
    assert "Traceback" not in result.err
    listed = cli("revocations", "list", *target)
    assert listed.code == 0, listed.err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1767225600", 1767225600.0),
        ("1767225600.5", 1767225600.5),
        ("2026-01-01T00:00:00Z", 1767225600.0),
        ("2026-01-01T01:00:00+01:00", 1767225600.0),
        ("2026-01-01 00:00z", 1767225600.0),
    ],
)
def test_instants(text: str, expected: float) -> None:
    assert parse_instant(text) == expected
    assert abs(parse_instant("now") - time.time()) < 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "must start with redis://, rediss:// or unix://"),
        ("redis://127.0.0.1:abc/0", "Port could not be cast"),
        ("redis://127.0.0.1:99999/0", "out of range"),
        ("redis://127.0.0.1:6379/orders", "the path must be a database number"),
        ("redis:///0", "no host"),
        ("unix://", "needs a socket path"),
        # redis-py passes query options to the connection: an unknown one was a TypeError
        # traceback at the first command.
        ("redis://:s3cret@127.0.0.1:6379/0?foo=bar", "unexpected keyword argument 'foo'"),
        ("rediss://:s3cret@127.0.0.1:6379/0?ssl_cert_reqs=no", "Invalid SSL Certificate"),
    ],
)
def test_malformed_urls_are_usage_errors(cli: Any, url: str, message: str) -> None:
    result = cli("revocations", "list", "--redis-url", url)
    assert result.code == 2
    assert message in result.err
    assert "s3cret" not in result.err
    assert len(result.err.strip().splitlines()) <= 2  # the progress line, then the error


@pytest.mark.parametrize("separator", ["/", "?", "#"])
@pytest.mark.parametrize("variable", [False, True])
def test_a_password_that_ends_the_authority_early_is_never_shown(
    cli: Any, monkeypatch: pytest.MonkeyPatch, separator: str, variable: bool
) -> None:
    # An unencoded '/', '?' or '#' ends the authority (RFC 3986 §3.2): the start of the
    # password became the "port" (quoted by the error) and the rest the path, both shown.
    url = f"redis://admin:s3c{separator}ret@127.0.0.1:6379/0"
    argv = ["revocations", "list", "-q"]
    if variable:
        monkeypatch.setenv("BEARERGUARD_REDIS_URL", url)
    else:
        argv += ["--redis-url", url]
    result = cli(*argv)
    assert result.code == 2
    assert "percent-encode it" in result.err
    assert "s3c" not in result.err
    assert "ret@" not in result.err
    document = cli(*argv, "--json").json()
    assert "s3c" not in json.dumps(document)


@pytest.mark.parametrize(
    "argv",
    [
        ["revoke"],
        ["revocations"],
        ["revoke", "token"],
        ["revoke", "token", "j1", "--timeout", "0"],
        ["revocations", "list", "--kind", "everything"],
    ],
)
def test_incomplete_commands_are_usage_errors(cli: Any, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.code == 2
    assert "usage: bearerguard" in result.err


def test_a_reason_too_long_is_a_usage_error(cli: Any, target: list[str]) -> None:
    result = cli("revoke", "token", "j1", "--reason", "x" * 501, *target)
    assert (result.code, result.err.strip()) == (
        2,
        "bearerguard: --reason must be 1 to 500 characters",
    )


def test_without_redis_py_the_extra_is_named() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from bearerguard._cli_revoke import run\n"
        "sys.exit(run(['revocations', 'list', '--redis-url', 'redis://127.0.0.1:1/0']))\n"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 2
    assert "pip install 'bearerguard[redis]'" in result.stderr
    assert "Traceback" not in result.stderr


# -- Redis that cannot be used (exit 3) -----------------------------------------------------


@pytest.mark.parametrize(
    ("userinfo", "shown"),
    # A password written where the user name goes (the colon forgotten) is hidden too.
    [(":s3cret", ":***"), ("s3cret", "***"), ("user:s3cret", "user:***")],
)
def test_an_unreachable_server(cli: Any, closed_port: int, userinfo: str, shown: str) -> None:
    url = f"redis://{userinfo}@127.0.0.1:{closed_port}/0"
    result = cli("revoke", "token", "j1", "--redis-url", url)
    assert result.code == 3
    last = result.err.strip().splitlines()[-1]
    assert last.startswith(
        f"bearerguard: cannot reach Redis at redis://{shown}@127.0.0.1:{closed_port}/0"
    )
    assert "Connection refused" in last
    assert "s3cret" not in result.err
    assert "Traceback" not in result.err
    document = cli("revocations", "list", "--json", "-q", "--redis-url", url).json()
    assert document["ok"] is False
    assert document["error"]["kind"] == "unreachable"


def test_an_unknown_host(cli: Any) -> None:
    result = cli("revocations", "list", "-q", "--redis-url", "redis://redis.invalid:6379/0")
    assert result.code == 3
    assert result.err.startswith("bearerguard: cannot reach Redis at redis://redis.invalid:6379/0")


def test_a_server_that_does_not_answer(cli: Any) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        result = cli("revocations", "list", "-q", "--timeout", "0.2", "--redis-url", url)
    assert result.code == 3
    assert "did not answer in time" in result.err
    assert time.monotonic() - started < 2


def test_a_wrong_database_or_password(cli: Any, private_redis: RedisServer) -> None:
    result = cli("revocations", "list", "-q", "--redis-url", private_redis.url[:-1] + "99")
    assert result.code == 3
    assert "refused the command: DB index is out of range" in result.err
    with private_redis.client() as admin:
        admin.config_set("requirepass", "right")
    result = cli("revocations", "list", "-q", "--redis-url", private_redis.url)
    assert result.code == 3
    assert "refused the credentials" in result.err
    wrong = private_redis.url.replace("redis://", "redis://:wrong@")
    result = cli("revoke", "subject", "alice", "-q", "--redis-url", wrong)
    assert result.code == 3
    assert "refused the credentials" in result.err
    assert "wrong" not in result.err.replace("redis://:***@", "")
    right = private_redis.url.replace("redis://", "redis://:right@")
    assert cli("revoke", "subject", "alice", "-q", "--redis-url", right).code == 0


def test_a_namespace_holding_unreadable_data(
    cli: Any, redis_server: RedisServer, target: list[str]
) -> None:
    with redis_server.client() as admin:
        admin.set(f"{target[-1]}:t:*:j1", "not json")
    result = cli("revocations", "list", "-q", *target)
    assert result.code == 1
    assert "unreadable revocation entry" in result.err


def test_through_bearerguard_cli_main(
    target: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Wired as ``bearerguard.cli`` wires every command: one entry in its ``_COMMANDS``."""
    from bearerguard import cli
    from bearerguard._cli_revoke import add_revocation_commands

    if add_revocation_commands not in cli._COMMANDS:
        monkeypatch.setattr(cli, "_COMMANDS", (*cli._COMMANDS, add_revocation_commands))
    assert cli.main(["revoke", "subject", "alice", "-q", *target]) == cli.EXIT_OK
    assert capsys.readouterr().out.startswith("revoked subject 'alice'")
    assert cli.main(["revocations", "list", "--json", "-q", *target]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["count"] == 1
    assert cli.main(["revocations", "list", "-q", "--redis-url", "redis://127.0.0.1:1/0"]) == 3
    assert "cannot reach Redis" in capsys.readouterr().err


def test_a_password_option_holding_an_at_sign(cli: Any, private_redis: RedisServer) -> None:
    # redis-py reads options from the query: ?password=p@ss is a password, not a user name
    # or password that ended the authority early. Such a spill is still refused unshown.
    with private_redis.client() as admin:
        admin.config_set("requirepass", "p@ss")
    url = f"{private_redis.url}?password=p@ss"
    assert cli("revoke", "subject", "alice", "-q", "--redis-url", url).code == 0
    result = cli("revocations", "list", "-q", "--redis-url", "redis://admin:s3c?r=et@h:6379/0")
    assert result.code == 2
    assert "percent-encode it" in result.err
    assert "s3c" not in result.err


# -- revoke token --token -----------------------------------------------------------------


def test_revoke_a_token_given_whole(
    cli: Any, target: list[str], redis_server: RedisServer, redis_namespace: str
) -> None:
    """An operator holding a token revokes it without decoding it by hand: its iss, jti
    and exp come from its payload; the token itself is never printed back."""
    from bearerguard.revocation import RedisRevocationStore

    exp = int(time.time()) + 600
    with DevIssuer() as issuer:
        raw = issuer.mint(jti="held-1", exp=exp)
        store = RedisRevocationStore(redis_server.url, namespace=redis_namespace, mirror=False)
        guard = issuer.guard(revocation=store)
        guard.authenticate_sync(raw)
        result = cli("revoke", "token", "--token", f"Bearer {raw}", "-q", *target)
        assert result.code == 0, result.err
        assert result.out == (
            f"revoked token jti='held-1' (issuer {issuer.url}) until "
            f"{_utc(exp + 300)} (exp + 5 min grace)\n"
        )
        with pytest.raises(RevokedTokenError):
            guard.authenticate_sync(raw)
        [listed] = store.list_revocations_sync()
        assert (listed.issuer, listed.name) == (issuer.url, "held-1")
        store.close()
        # Unverified on purpose: a token signed by any key names what it names.
        forged = issuer.mint(jti="held-2", exp=exp).rsplit(".", 1)[0] + ".Zm9yZ2Vk"
        result = cli("revoke", "token", "--token", forged, "--json", "-q", *target)
        assert result.code == 0, result.err
        revocation = result.json()["revocation"]
        assert (revocation["name"], revocation["issuer"]) == ("held-2", issuer.url)
        assert revocation["expires_at"] == _utc(exp)
    for shown in (result.out, result.err):
        assert raw not in shown
        assert forged not in shown


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_revoke_a_token_read_from_standard_input(
    session_issuer: DevIssuer, target: list[str], store: Any
) -> None:
    raw = session_issuer.mint(jti="piped")
    done = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "bearerguard", "revoke", "token", "--token", "-", *target],
        input=f"Authorization: Bearer {raw}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "jti='piped'" in done.stdout
    assert raw not in done.stdout + done.stderr
    assert store.list_revocations_sync()[0].name == "piped"


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        (
            {"jti": None},
            "the token has no jti claim, so it cannot be revoked alone: revoke its subject "
            "instead (bearerguard revoke subject user-1 --issuer ISS)",
        ),
        ({"jti": 7}, "the token's jti claim is not a string"),
        ({"iss": None}, "the token has no iss claim"),
        ({"exp": None}, "the token has no exp claim"),
        ({"exp": "soon"}, "the token's exp claim is not a number"),
        ({"exp": 10**12}, "the token's exp claim is out of range"),
    ],
    ids=["no-jti", "jti-number", "no-iss", "no-exp", "exp-text", "exp-milliseconds"],
)
def test_a_token_that_cannot_be_revoked_alone_is_refused(
    cli: Any, target: list[str], session_issuer: DevIssuer, claims: dict[str, Any], message: str
) -> None:
    raw = session_issuer.sign(session_issuer.claims(**claims))
    result = cli("revoke", "token", "--token", raw, *target)
    expected = message.replace("ISS", session_issuer.url)
    assert (result.code, result.err.strip()) == (2, f"bearerguard: {expected}")
    assert raw not in result.out + result.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--token", "a.b"], "--token: not a compact JWS (2 segments or bad characters)"),
        (["--token", "e30.e30.c2ln"], "--token: header alg is missing or not a string"),
        (
            ["--token", "T", "--issuer", ISS],
            "--issuer and --expires-at come from --token: leave them out",
        ),
        (
            ["--token", "T", "--expires-at", "now"],
            "--issuer and --expires-at come from --token: leave them out",
        ),
    ],
    ids=["two-segments", "no-alg", "issuer", "expires-at"],
)
def test_token_usage_errors(
    cli: Any, target: list[str], session_issuer: DevIssuer, argv: list[str], message: str
) -> None:
    raw = session_issuer.mint()
    argv = [raw if part == "T" else part for part in argv]
    result = cli("revoke", "token", *argv, *target)
    assert (result.code, result.err.strip()) == (2, f"bearerguard: {message}")
    assert raw not in result.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["j1", "--token", "T"], "argument --token: not allowed with argument jti"),
        ([], "one of the arguments jti --token is required"),
    ],
    ids=["both", "neither"],
)
def test_the_jti_or_the_token(
    cli: Any, target: list[str], session_issuer: DevIssuer, argv: list[str], message: str
) -> None:
    raw = session_issuer.mint()
    result = cli("revoke", "token", *[raw if part == "T" else part for part in argv], *target)
    assert result.code == 2
    assert "usage: bearerguard revoke token" in result.err
    assert message in result.err
    assert raw not in result.err


def test_a_token_s_issuer_is_printed_without_its_control_characters(
    cli: Any, target: list[str], session_issuer: DevIssuer, store: Any
) -> None:
    """--token reads iss from a payload no signature vouches for (a token found in a log may
    be anyone's): its text must not drive the operator's terminal, as jti's does not."""
    issuer = "https://id.example/\x1b]0;owned\x07\x1b[2J\u202e"
    raw = session_issuer.sign(session_issuer.claims(jti="odd-iss", iss=issuer))
    result = cli("revoke", "token", "--token", raw, "-q", *target)
    assert result.code == 0, result.err
    assert result.out.startswith("revoked token jti='odd-iss' (issuer https://id.example/")
    assert r"\x1b]0;owned\x07\x1b[2J\u202e" in result.out
    for shown in (result.out, result.err):
        assert not [char for char in shown if not char.isprintable() and char != "\n"]
    assert store.list_revocations_sync()[0].issuer == issuer  # written as the token has it


def test_json_output_escapes_what_could_drive_the_terminal(
    cli: Any, target: list[str], session_issuer: DevIssuer
) -> None:
    """--json showed C1 controls and bidi overrides raw (json.dumps escapes only C0); they
    are \\u escapes, and the document reads back to the issuer the token has."""
    issuer = "https://id.example/\x9b2J\u202e\u2066\x85"
    raw = session_issuer.sign(session_issuer.claims(jti="odd-iss", iss=issuer))
    written = cli("revoke", "token", "--token", raw, "--json", "-q", *target)
    listed = cli("revocations", "list", "--json", *target)
    for result in (written, listed):
        assert result.code == 0, result.err
        assert not [char for char in result.out if not char.isprintable() and char != "\n"]
    assert written.json()["revocation"]["issuer"] == issuer
    assert listed.json()["revocations"][0]["issuer"] == issuer
