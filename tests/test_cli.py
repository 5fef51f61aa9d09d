"""``bearerguard token ...`` and ``bearerguard jwks ...`` against real issuers on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from bearerguard import BearerGuard, cli
from bearerguard._cli_common import CommandError, Console, describe_duration, read_token
from bearerguard._cli_jwks import analyze_jwks
from bearerguard._cli_token import inspect_token
from bearerguard.testing import DevIssuer, Override, SigningKey

ROOT = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _err = run(capsys, *argv, "--json")
    return code, json.loads(out)


def b64(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- groups and help --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [(["token"], ["mint", "inspect", "verify"]), (["jwks"], ["show", "check"])],
)
def test_a_group_alone_prints_its_help(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert out == ""
    for word in words:
        assert word in err


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(capsys, "--help")
    assert code == 0
    for word in ("demo", "token", "jwks"):
        assert word in out


# -- token mint -------------------------------------------------------------------------


def test_mint_prints_only_the_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "token", "mint", "--scope", "items:read items:write", "-s", "x")
    assert code == 0
    token = out.strip()
    assert token.count(".") == 2
    assert "\n" not in token
    assert "development only" in err
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["scope"] == "items:read items:write x"
    assert claims["sub"] == "user-1"
    assert claims["aud"] == "https://api.example"


def test_mint_json_carries_the_keys_to_verify_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(
        capsys,
        "token",
        "mint",
        "--sub",
        "alice",
        "--audience",
        "https://orders.example",
        "--algorithm",
        "ES256",
        "--expires-in",
        "60",
        "--claim",
        "tenant=acme",
        "--claim",
        "level=3",
        "--claim",
        'tags=["a", "b"]',
    )
    assert code == 0
    assert doc["development_only"] is True
    assert doc["alg"] == "ES256"
    assert doc["claims"]["tenant"] == "acme"
    assert doc["claims"]["level"] == 3
    assert doc["claims"]["tags"] == ["a", "b"]
    assert doc["claims"]["exp"] - doc["claims"]["iat"] == 60
    assert doc["serving"] is None
    guard = BearerGuard(issuer=doc["issuer"], audience="https://orders.example", keys=doc["jwks"])
    assert guard.authenticate_sync(doc["token"]).subject == "alice"
    code, doc = run_json(capsys, "token", "mint", "--claim", "sub=bob", "--claim", "scope=a b")
    assert (doc["claims"]["sub"], doc["claims"]["scope"]) == ("bob", "a b")
    code, doc = run_json(capsys, "token", "mint", "--claim", "jti=null")
    assert "jti" not in doc["claims"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--issuer", "https://login.example.com/tenant"], "refusing to mint for issuer"),
        (["--claim", "iss=https://accounts.google.com"], "development issuers only"),
        (["--claim", "iss=42"], "development issuers only"),
        (["--issuer", "nonsense"], "development issuers only"),
        (["--issuer", "http://[::1"], "development issuers only"),
        (["--claim", "novalue"], "--claim takes NAME=VALUE"),
        (["--issuer", "http://127.0.0.1:9", "--serve"], "do not go together"),
        # The token would name an issuer other than the one served: nothing could verify it.
        (["--claim", "iss=http://127.0.0.1:9", "--serve"], "do not go together"),
        (["--port", "9000"], "--port is the port of --serve"),  # would be ignored
        (["--key", "/nonexistent/dev.pem"], "cannot read /nonexistent/dev.pem"),
        (["--expires-in", "nan"], "not a sensible number of seconds"),
        (["--expires-in", "soon"], "not a number of seconds"),
        (["--serve", "--port", "70000"], "port 70000 is not between 0 and 65535"),
    ],
)
def test_mint_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "token", "mint", *argv)
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "issuer", ["http://127.0.0.1:9000", "http://localhost:8080/realms/dev", "https://id.test"]
)
def test_mint_accepts_development_issuers(capsys: pytest.CaptureFixture[str], issuer: str) -> None:
    code, doc = run_json(capsys, "token", "mint", "--issuer", issuer)
    assert code == 0
    assert doc["claims"]["iss"] == issuer


def test_mint_with_a_key_file_verifies_against_an_issuer_serving_that_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pem = tmp_path / "dev.pem"
    pem.write_bytes(SigningKey.generate("ES256").private_pem())
    with DevIssuer(keys=[SigningKey.from_pem(pem.read_bytes())]) as issuer:
        code, out, _err = run(
            capsys, "token", "mint", "--key", str(pem), "--issuer", issuer.url, "--sub", "kim"
        )
        assert code == 0
        token = out.strip()
        assert jwt.get_unverified_header(token)["kid"] == issuer.keys[0].kid
        code, out, _err = run(
            capsys,
            "token",
            "verify",
            token,
            "--issuer",
            issuer.url,
            "--audience",
            "https://api.example",
        )
    assert code == 0, out
    assert "VALID" in out
    assert "kim" in out


@pytest.mark.parametrize("algorithm", ["EdDSA", "Ed25519", "Ed448"])
def test_mint_signs_with_edwards_keys(capsys: pytest.CaptureFixture[str], algorithm: str) -> None:
    code, doc = run_json(capsys, "token", "mint", "--algorithm", algorithm)
    assert code == 0
    assert doc["alg"] == jwt.get_unverified_header(doc["token"])["alg"] == algorithm
    guard = BearerGuard(issuer=doc["issuer"], audience="https://api.example", keys=doc["jwks"])
    assert guard.authenticate_sync(doc["token"]).algorithm == algorithm


def test_mint_with_a_bad_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pem = tmp_path / "dev.pem"
    pem.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    code, _out, err = run(capsys, "token", "mint", "--key", str(pem))
    assert code == cli.EXIT_USAGE
    assert f"{pem}: not an unencrypted PEM private key" in err
    rsa_pem = tmp_path / "rsa.pem"
    rsa_pem.write_bytes(SigningKey.generate("RS256").private_pem())
    code, _out, err = run(capsys, "token", "mint", "--key", str(rsa_pem), "--algorithm", "ES256")
    assert code == cli.EXIT_USAGE
    assert "an RSA key signs RS256 or PS256" in err


# An EC key on X9.62 prime192v2, a curve OpenSSL knows and cryptography does not load:
# `openssl ecparam -name prime192v2 -genkey -noout` (a throwaway key, for this test only).
PRIME192V2_PEM = """\
-----BEGIN EC PRIVATE KEY-----
MF8CAQEEGAjPAgts02kq8t8xTncQp3f9r4hXBUfgsqAKBggqhkjOPQMBAqE0AzIA
BCKpda7xen+TVDIdxcs63lrHNDWxPTGNRXsVITzhgLnKVQz2odlGa3etKHpgRxrZ
BA==
-----END EC PRIVATE KEY-----
"""


def test_mint_with_a_key_on_an_unsupported_curve(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # cryptography raises UnsupportedAlgorithm, not ValueError: it was a traceback.
    pem = tmp_path / "p192.pem"
    pem.write_text(PRIME192V2_PEM)
    code, out, err = run(capsys, "token", "mint", "--key", str(pem))
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err.startswith(f"bearerguard: {pem}: not a supported private key")
    with pytest.raises(ValueError, match="not a supported private key"):
        SigningKey.from_pem(PRIME192V2_PEM)


def test_mint_serve_serves_the_keys_until_ctrl_c(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bearerguard import _cli_token

    seen: dict[str, Any] = {}

    def check_then_interrupt() -> None:
        so_far = capsys.readouterr()
        seen["err"] = so_far.err
        doc = json.loads(so_far.out)
        guard = BearerGuard(issuer=doc["serving"], audience="https://api.example")
        seen["subject"] = guard.authenticate_sync(doc["token"]).subject
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli_token, "wait_for_interrupt", check_then_interrupt)
    code, _out, err = run(capsys, "token", "mint", "--serve", "--sub", "sam", "--json")
    assert code == 0
    assert seen["subject"] == "sam"
    assert "Serving issuer http://127.0.0.1:" in seen["err"]
    assert 'BearerGuard(issuer="http://127.0.0.1:' in seen["err"]
    assert err == "Stopping.\n"


def test_mint_serve_on_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        code, _out, err = run(capsys, "token", "mint", "--serve", "--port", str(port))
    assert code == cli.EXIT_FAILURE
    assert f"cannot listen on 127.0.0.1:{port}" in err


# -- token inspect ----------------------------------------------------------------------


def test_inspect_shows_everything_marked_unverified(
    capsys: pytest.CaptureFixture[str], session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(scopes=["items:read"], sub="ann")
    code, out, err = run(capsys, "token", "inspect", token)
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "!" * 78
    assert lines[1].startswith("! UNVERIFIED: decoded without checking the signature")
    assert '"sub": "ann"' in out
    assert '"kid": "' in out
    assert "exp  " in out
    assert "structure: acceptable" in out
    assert token.split(".")[2] not in out  # the signature is never printed


def test_inspect_json(capsys: pytest.CaptureFixture[str], session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(expires_in=90)
    code, doc = run_json(capsys, "token", "inspect", token)
    assert code == 0
    assert doc["verified"] is False
    assert doc["warning"].startswith("UNVERIFIED")
    assert doc["structure"] == {"ok": True}
    assert doc["header"]["typ"] == "at+jwt"
    assert doc["claims"]["iss"] == session_issuer.url
    assert doc["times"]["exp"]["relative"].startswith("in 1 min")
    assert doc["notes"] == []


def _token(header: object, payload: object, signature: bytes = b"sig") -> str:
    first = header if isinstance(header, str) else b64(header)
    second = payload if isinstance(payload, str) else b64(payload)
    return f"{first}.{second}.{b64(signature)}"


PAYLOAD = {"iss": "https://id.example", "aud": "a", "exp": 4_000_000_000, "jti": "j"}


@pytest.mark.parametrize(
    ("token", "error", "detail"),
    [
        ("a.b", "MalformedTokenError", "not a compact JWS (2 segments"),
        ("a.b.c.d.e", "MalformedTokenError", "JWE (five segments)"),
        (_token({"alg": "none"}, PAYLOAD), "UnsupportedAlgorithmError", "alg none"),
        (_token({"typ": "JWT"}, PAYLOAD), "UnsupportedAlgorithmError", "alg is missing"),
        (
            _token(b64(b'{"alg":"RS256","alg":"HS256"}'), PAYLOAD),
            "MalformedTokenError",
            "duplicate JSON member name",
        ),
        (_token({"alg": "RS256", "crit": ["exp"]}, PAYLOAD), "MalformedTokenError", "'crit'"),
        (_token({"alg": "RS256", "cty": "JWT"}, PAYLOAD), "MalformedTokenError", "nested JWTs"),
        (_token({"alg": "RS256"}, b64(b"[1, 2]")), "MalformedTokenError", "not a JSON object"),
    ],
    ids=["two-segments", "jwe", "alg-none", "no-alg", "duplicate", "crit", "nested", "array"],
)
def test_inspect_names_structural_refusals(
    capsys: pytest.CaptureFixture[str], token: str, error: str, detail: str
) -> None:
    code, doc = run_json(capsys, "token", "inspect", token)
    assert code == cli.EXIT_FAILURE
    assert doc["structure"]["ok"] is False
    assert doc["structure"]["error"] == error
    assert detail in doc["structure"]["detail"]
    code, out, _err = run(capsys, "token", "inspect", token)
    assert code == cli.EXIT_FAILURE
    assert f"structure: REFUSED by BearerGuard's parser: {error}" in out


def test_inspect_decodes_what_it_can_of_a_refused_token(capsys: pytest.CaptureFixture[str]) -> None:
    token = _token({"alg": "none", "typ": "JWT"}, {"sub": "eve"})
    code, out, _err = run(capsys, "token", "inspect", token)
    assert code == cli.EXIT_FAILURE
    assert '"sub": "eve"' in out
    code, out, _err = run(capsys, "token", "inspect", "not.a-token.!")
    assert "(not decodable)" in out


def test_inspect_notes() -> None:
    header = {"alg": "HS256", "typ": "JWT", "jku": "https://evil.example/jwks"}
    report = inspect_token(_token(header, {"exp": 100, "nbf": 10_000}), now=1_000)
    notes = "\n".join(report["notes"])
    assert "offers its own key (jku): ignored" in notes
    assert "alg HS256 (HMAC)" in notes
    assert "no kid" in notes
    assert "typ is 'JWT', not 'at+jwt'" in notes
    assert "no aud claim: always refused" in notes
    assert "no iss claim" in notes
    assert "expired 15 min ago" in notes
    assert "not valid before in 2 h 30 min" in notes
    assert "no jti" in notes
    big = inspect_token(_token({"alg": "RS256", "kid": "k"}, {"pad": "x" * 9000}), now=0)
    assert "over the default max_token_bytes (8192)" in big["notes"][0]
    odd = inspect_token(_token({"alg": "RS256"}, {"exp": 1e300, "iat": True}), now=0)
    assert odd["times"] == {}


def test_an_encrypted_token_is_explained(
    capsys: pytest.CaptureFixture[str], session_issuer: DevIssuer
) -> None:
    # Auth0 issues an encrypted token when the client names no audience: "JWE is not
    # accepted" and notes on its kid and typ left the user guessing what to change.
    jwe = f"{b64({'alg': 'dir', 'enc': 'A256GCM'})}..aXY.Y2lwaGVy.dGFn"
    notes = inspect_token(jwe)["notes"]
    assert len(notes) == 1
    assert notes[0].startswith("an encrypted token (JWE): only its issuer can read it")
    assert "the audience of your API" in notes[0]
    code, out, _err = verify(capsys, session_issuer, jwe)
    assert code == cli.EXIT_FAILURE
    assert "why      an encrypted token (JWE): only its issuer can read it" in out


def _strict_json(text: str) -> Any:
    """``text`` as RFC 8259 JSON: Python's ``Infinity`` and ``NaN`` are refused."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"exp": -Infinity, "iss": "x", "aud": "y"}',
        b'{"exp": 1, "nbf": Infinity, "iss": "x", "aud": "y"}',
        b'{"exp": NaN, "iat": -Infinity}',
        b'{"exp": 1e400, "nbf": -1e400}',
        b'{"exp": -1' + b"0" * 400 + b', "nbf": 1' + b"0" * 400 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["exp-minus-infinity", "nbf-infinity", "nan", "overflowing-floats", "huge-ints", "deep"],
)
def test_inspect_survives_hostile_numbers_and_nesting(
    capsys: pytest.CaptureFixture[str], payload: bytes
) -> None:
    token = _token({"alg": "RS256", "typ": "at+jwt"}, b64(payload))
    code, out, err = run(capsys, "token", "inspect", token)
    assert code in (cli.EXIT_OK, cli.EXIT_FAILURE)
    assert "Traceback" not in out + err
    code, out, _err = run(capsys, "token", "inspect", token, "--json")
    document = _strict_json(out)  # valid JSON: no Infinity or NaN printed
    assert document["times"] == {}  # none of these is an instant
    if b"Infinity" in payload or b"NaN" in payload or b"e400" in payload:
        assert document["claims"] is None  # undecodable, as the strict parser says
        assert document["structure"]["reason"] == "malformed_token"


def test_inspect_reads_stdin_and_pasted_headers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, session_issuer: DevIssuer
) -> None:
    token = session_issuer.mint(sub="pat")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"Authorization: Bearer {token}\n"))
    code, doc = run_json(capsys, "token", "inspect", "-")
    assert code == 0
    assert doc["claims"]["sub"] == "pat"
    assert read_token(f"  bearer {token} ") == token
    code, _out, err = run(capsys, "token", "inspect", "  ")
    assert code == cli.EXIT_USAGE
    assert "no token given" in err


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_token_of_undecodable_bytes_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    # argv and a C-locale stdin carry undecodable bytes as lone surrogates (surrogateescape);
    # a strict UTF-8 stdin raises while reading. Either is one line, never a traceback.
    verify = ["--issuer", "http://127.0.0.1:1", "--audience", "a"] if command == "verify" else []
    code, _out, err = run(capsys, "token", command, "a\udcff.b.c", *verify)
    assert code == cli.EXIT_USAGE
    assert "not UTF-8" in err
    raw = io.TextIOWrapper(io.BytesIO(b"\xff\xfe.b.c"), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdin", raw)
    code, _out, err = run(capsys, "token", command, "-", *verify)
    assert code == cli.EXIT_USAGE
    assert "not UTF-8" in err


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_closed_standard_input_is_a_usage_error(command: str) -> None:
    # `bearerguard token inspect - <&-`: sys.stdin is None, and reading it was an
    # AttributeError traceback.
    verify = ["--issuer", "http://127.0.0.1:1", "--audience", "a"] if command == "verify" else []
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    argv = [sys.executable, "-m", "bearerguard", "token", command, "-", *verify]
    result = subprocess.run(  # noqa: S603 - our own command, its stdin closed by sh
        ["/bin/sh", "-c", 'exec "$@" <&-', "sh", *argv],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (cli.EXIT_USAGE, b"")
    assert result.stderr.decode() == "bearerguard: no token given: standard input is closed\n"


class _TerminalGone(io.StringIO):
    """A standard input whose terminal went away: reading fails with EIO."""

    def read(self, size: int | None = -1) -> str:
        raise OSError(5, "Input/output error")


def test_standard_input_that_cannot_be_read_is_a_usage_error() -> None:
    with pytest.raises(CommandError, match="cannot read the token from standard input: Input"):
        read_token("-", _TerminalGone())


def test_durations() -> None:
    assert describe_duration(59.6) == "1 min"
    assert describe_duration(-45) == "45 s"
    assert describe_duration(3 * 3600) == "3 h"
    assert describe_duration(5 * 86400) == "5 d"
    assert describe_duration(-math.inf) == describe_duration(math.nan) == "forever"


# -- token verify -----------------------------------------------------------------------


def verify(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer, token: str, *extra: str
) -> tuple[int, str, str]:
    return run(
        capsys,
        "token",
        "verify",
        token,
        "--issuer",
        issuer.url,
        "--audience",
        issuer.audience,
        *extra,
    )


def test_verify_a_valid_token(capsys: pytest.CaptureFixture[str], issuer: DevIssuer) -> None:
    token = issuer.mint(scopes=["items:read", "items:write"], sub="val")
    code, out, err = verify(capsys, issuer, token, "--scope", "items:read")
    assert code == 0
    assert out.startswith("VALID: every check passed")
    assert "sub        val" in out
    assert "scopes     items:read items:write" in out
    assert f"discovering the keys of {issuer.url} ..." in err
    assert "done in" in err
    assert f"{issuer.jwks_uri}: 2 usable key(s)" in err
    assert issuer.fetch_count() == 1


def test_verify_json_and_quiet(capsys: pytest.CaptureFixture[str], issuer: DevIssuer) -> None:
    token = issuer.mint(sub="jo", algorithm="ES256")
    code, out, err = verify(
        capsys, issuer, token, "--json", "--quiet", "--jwks-uri", issuer.jwks_uri
    )
    assert code == 0
    assert err == ""
    doc = json.loads(out)
    assert doc["valid"] is True
    assert doc["jwks_uri"] == issuer.jwks_uri
    assert doc["token"]["sub"] == "jo"
    assert doc["token"]["alg"] == "ES256"
    assert issuer.requests == [issuer.jwks_path]  # no discovery with --jwks-uri


def _other_issuer_token(issuer: DevIssuer) -> str:
    return issuer.mint(iss="http://127.0.0.1:1/other")


@pytest.mark.parametrize(
    ("make", "extra", "error", "reason", "why"),
    [
        (lambda i: i.mint_expired(ago=600), [], "ExpiredTokenError", "expired", "exp was 10 min"),
        (lambda i: i.mint_not_yet_valid(), [], "NotYetValidError", "not_yet_valid", "nbf is in"),
        (
            lambda i: i.mint_for_audience("https://other.example"),
            [],
            "InvalidAudienceError",
            "invalid_audience",
            "the token's aud is 'https://other.example'; --audience is ['https://api.example']",
        ),
        (
            _other_issuer_token,
            [],
            "InvalidIssuerError",
            "invalid_issuer",
            "the token's iss is 'http://127.0.0.1:1/other'",
        ),
        (lambda i: i.mint_forged(), [], "BadSignatureError", "bad_signature", "was altered"),
        (
            lambda i: i.mint_forged(kid="gone"),
            [],
            "UnknownKeyError",
            "unknown_key",
            "the token's kid 'gone' is not published; the key set has",
        ),
        (
            lambda i: i.mint(),
            ["--algorithm", "ES256"],
            "UnsupportedAlgorithmError",
            "unsupported_algorithm",
            "the token's alg is 'RS256'",
        ),
        (
            lambda i: i.mint(scopes=["items:read"]),
            ["--scope", "items:read", "--scope", "admin"],
            "InsufficientScopeError",
            "insufficient_scope",
            "--scope asks for ['admin', 'items:read']",
        ),
        (
            lambda i: i.mint(headers={"typ": "JWT"}),
            ["--profile", "rfc9068"],
            "InvalidTypeError",
            "invalid_type",
            "the header's typ is 'JWT'",
        ),
        (lambda i: "a.b", [], "MalformedTokenError", "malformed_token", None),
    ],
    ids=[
        "expired",
        "nbf",
        "audience",
        "issuer",
        "forged",
        "unknown-kid",
        "alg",
        "scope",
        "typ",
        "malformed",
    ],
)
def test_verify_names_the_failing_check(
    capsys: pytest.CaptureFixture[str],
    session_issuer: DevIssuer,
    make: Any,
    extra: list[str],
    error: str,
    reason: str,
    why: str | None,
) -> None:
    token = make(session_issuer)
    code, out, _err = verify(capsys, session_issuer, token, *extra)
    assert code == cli.EXIT_FAILURE
    assert out.startswith(f"INVALID: {error} (reason {reason})")
    if why is not None:
        assert why in out
    status = "403" if reason == "insufficient_scope" else "401"
    assert f"an API answers {status}" in out
    code, out, _err = verify(capsys, session_issuer, token, *extra, "--json")
    doc = json.loads(out)
    assert doc["valid"] is False
    assert doc["error"]["class"] == error
    assert doc["error"]["reason"] == reason
    assert doc["error"]["status"] == int(status)


def test_verify_scope_claims(capsys: pytest.CaptureFixture[str], session_issuer: DevIssuer) -> None:
    token = session_issuer.mint(realm_access={"roles": ["admin"]})
    code, out, _err = verify(
        capsys, session_issuer, token, "--scope", "admin", "--scope-claim", "realm_access.roles"
    )
    assert code == 0, out


@pytest.mark.parametrize(
    ("claims", "scope", "claim"),
    [
        ({"realm_access": {"roles": ["orders-admin"]}}, "orders-admin", "realm_access.roles"),
        ({"permissions": ["read:orders"]}, "read:orders", "permissions"),  # Auth0 RBAC
        ({"roles": "Orders.Read"}, "Orders.Read", "roles"),
        (
            {"resource_access": {"orders-api": {"roles": ["reader"]}}},
            "reader",
            "resource_access.orders-api.roles",
        ),
        ({"https://api.example/roles": ["editor"]}, "editor", "https://api.example/roles"),
    ],
)
def test_verify_names_the_claim_a_missing_scope_is_in(
    capsys: pytest.CaptureFixture[str],
    session_issuer: DevIssuer,
    claims: dict[str, Any],
    scope: str,
    claim: str,
) -> None:
    # Keycloak's roles or Auth0's permissions, not read without --scope-claim: the check
    # said only that the scope was missing, though the token grants it elsewhere.
    token = session_issuer.mint(scopes=["openid"], **claims)
    code, out, _err = verify(capsys, session_issuer, token, "--scope", scope)
    assert code == cli.EXIT_FAILURE
    assert "the token grants ['openid']" in out
    assert f"{scope!r} is in the claim {claim!r}, not read: add --scope-claim {claim}" in out
    code, out, _err = verify(
        capsys, session_issuer, token, "--scope", scope, "--scope-claim", claim
    )
    assert code == 0, out


@pytest.mark.parametrize("command", ["show", "check"])
def test_jwks_of_a_metadata_url_names_its_key_set(
    capsys: pytest.CaptureFixture[str], session_issuer: DevIssuer, command: str
) -> None:
    # The discovery URL pasted where the key set URL goes: it was "not a JWK Set" alone.
    url = session_issuer.url + session_issuer.oidc_metadata_path
    code, _out, err = run(capsys, "jwks", command, url, "--quiet")
    assert code == cli.EXIT_FAILURE
    assert f"its jwks_uri is {session_issuer.jwks_uri!r}" in err


def test_verify_names_an_entra_v1_token_and_a_missing_audience(
    capsys: pytest.CaptureFixture[str], session_issuer: DevIssuer
) -> None:
    # Entra ID's v1.0 tokens (its default) against the v2.0 issuer of the recipe, and a
    # Keycloak token without an audience mapper: both named with what to change.
    v1 = session_issuer.mint(iss="https://sts.windows.net/00000000-0000-0000-0000-000000000000/")
    code, out, _err = verify(capsys, session_issuer, v1)
    assert code == cli.EXIT_FAILURE
    assert "an Entra ID v1.0 token: set the API's app registration" in out
    assert "requestedAccessTokenVersion" in out
    code, out, _err = verify(capsys, session_issuer, session_issuer.mint(aud=None))
    assert code == cli.EXIT_FAILURE
    assert "the token has no aud: it names no API" in out
    assert "Audience mapper" in out
    code, out, _err = verify(capsys, session_issuer, session_issuer.mint(aud="account"))
    assert "Keycloak's default audience 'account'" in out


def test_verify_scopes_separated_by_spaces_are_several(
    capsys: pytest.CaptureFixture[str], session_issuer: DevIssuer
) -> None:
    # As for mint: a scope-token holds no space (RFC 6749 §3.3), so "a b" is two scopes;
    # taken as one, no token could grant it and every token was INVALID.
    token = session_issuer.mint(scopes=["items:read", "items:write"])
    code, out, _err = verify(capsys, session_issuer, token, "--scope", "items:read items:write")
    assert code == 0, out
    code, out, _err = verify(capsys, session_issuer, token, "--scope", "items:read admin")
    assert code == cli.EXIT_FAILURE
    assert "missing ['admin']" in out


def test_verify_reports_skipped_keys(capsys: pytest.CaptureFixture[str], issuer: DevIssuer) -> None:
    jwks = issuer.jwks()
    jwks["keys"].append({"kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB"})
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps(jwks).encode())
    code, _out, err = verify(capsys, issuer, issuer.mint())
    assert code == 0
    assert "skipped key 'enc-1': use is 'enc', not 'sig'" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (Override(status=500, body=b"oops"), "answered 500"),
        (Override(body=b"<html>"), "did not return JSON"),
        (Override(body=b'{"nope": 1}'), "not a JWK Set"),
        (Override(body=b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'), "has no usable key"),
    ],
    ids=["500", "not-json", "not-a-jwks", "no-usable-key"],
)
def test_verify_when_keys_cannot_be_had(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer, override: Override, message: str
) -> None:
    issuer.overrides[issuer.jwks_path] = override
    code, out, err = verify(capsys, issuer, issuer.mint())
    assert code == cli.EXIT_UNREACHABLE
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_verify_unreachable_issuer(capsys: pytest.CaptureFixture[str], closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    argv = ["token", "verify", "a.b.c", "--issuer", url, "--audience", "x", "--timeout", "2"]
    code, _out, err = run(capsys, *argv)
    assert code == cli.EXIT_UNREACHABLE
    assert err.startswith(f"discovering the keys of {url} ...")
    assert "bearerguard: discovery failed" in err
    code, doc = run_json(capsys, *argv)
    assert code == cli.EXIT_UNREACHABLE
    assert doc["ok"] is False
    assert doc["error"]["kind"] == "unreachable"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--issuer", "http://id.example.com"], "issuer must be an https URL"),
        (["--issuer", "https://id.example", "--algorithm", "HS256"], "HS* algorithms need"),
        (["--issuer", "https://id.example", "--algorithm", "none"], "unsupported algorithms"),
        (["--issuer", "https://id.example", "--jwks-uri", "ftp://x"], "jwks_uri must be"),
        (["--issuer", "https://id.example", "--timeout", "0"], "must be more than 0 seconds"),
        (
            ["--issuer", "https://id.example", "--leeway", "-1"],
            "leeway must be a finite number of seconds, not negative: -1",
        ),
    ],
)
def test_verify_usage_errors(
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, _out, err = run(capsys, "token", "verify", "a.b.c", "--audience", "x", *extra)
    assert code == cli.EXIT_USAGE
    assert message in err
    assert "Traceback" not in err


# -- jwks show and check ----------------------------------------------------------------


def test_jwks_show(capsys: pytest.CaptureFixture[str], issuer: DevIssuer) -> None:
    code, out, err = run(capsys, "jwks", "show", "--issuer", issuer.url)
    assert code == 0
    assert f"discovering the keys of {issuer.url} ..." in err
    lines = out.splitlines()
    assert lines[0] == f"{issuer.jwks_uri}  (fresh for 300 s)"
    assert lines[1].split() == ["KID", "KTY", "ALG", "USE", "SIZE", "BEARERGUARD"]
    rsa_kid, ec_kid = (key.kid for key in issuer.keys)
    assert any(
        line.split()[:6] == [rsa_kid, "RSA", "RS256", "sig", "2048", "bits"] for line in lines
    )
    assert any(line.split()[:5] == [ec_kid, "EC", "ES256", "sig", "P-256"] for line in lines)
    assert lines[-1] == "2 key(s), 2 usable"


def test_jwks_show_json_by_url_and_file(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer, tmp_path: Path
) -> None:
    code, doc = run_json(capsys, "jwks", "show", issuer.jwks_uri)
    assert code == 0
    assert doc["source"] == {"jwks_uri": issuer.jwks_uri, "max_age": 300.0}
    assert [key["kid"] for key in doc["keys"]] == [key.kid for key in issuer.keys]
    assert doc["keys"][0]["algorithms"] == ["RS256"]
    assert doc["keys"][0]["usable"] is True
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    code, doc = run_json(capsys, "jwks", "show", "--file", str(path))
    assert code == 0
    assert doc["source"] == {"file": str(path)}
    assert len(doc["keys"]) == 2


def test_jwks_check_a_good_set(capsys: pytest.CaptureFixture[str], issuer: DevIssuer) -> None:
    code, out, _err = run(capsys, "jwks", "check", "--issuer", issuer.url)
    assert code == 0
    assert out.splitlines()[-1] == "no problems found"
    code, doc = run_json(capsys, "jwks", "check", "--issuer", issuer.url)
    assert doc["ok"] is True
    assert doc["problems"] == []


def _public(private_key: Any, **members: Any) -> dict[str, Any]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    jwk.update(members)
    return jwk


@pytest.fixture(scope="module")
def bad_jwks() -> dict[str, Any]:
    weak = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the weakness under test
    strong = rsa.generate_private_key(65537, 2048)
    p256 = ec.generate_private_key(ec.SECP256R1())
    leaked: dict[str, Any] = RSAAlgorithm.to_jwk(strong, as_dict=True)
    leaked.update(kid="leaked")
    return {
        "keys": [
            _public(strong, kid="good", alg="RS256", use="sig"),
            _public(weak, kid="weak", alg="RS256"),
            _public(p256),  # no kid in a set of several
            _public(p256, kid="twin"),
            _public(ec.generate_private_key(ec.SECP256R1()), kid="twin"),
            _public(strong, kid="enc-1", use="enc", alg="RSA-OAEP"),
            leaked,
            {"kty": "oct", "kid": "hmac", "k": b64(b"s" * 32)},
            _public(p256, kid="mismatch", alg="RS256"),
            _public(ed25519.Ed25519PrivateKey.generate(), kid="ed", alg="EdDSA"),
            _public(ed25519.Ed25519PrivateKey.generate(), kid="ed-9864", alg="Ed25519"),  # RFC 9864
            _public(ed25519.Ed25519PrivateKey.generate(), kid="ed-curve", alg="Ed448"),
        ]
    }


def test_jwks_check_refuses_more_keys_under_one_kid_than_are_tried(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer
) -> None:
    keys = [_public(ec.generate_private_key(ec.SECP256R1()), kid="many") for _ in range(5)]
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": keys}).encode())
    code, doc = run_json(capsys, "jwks", "check", issuer.jwks_uri)
    assert code == cli.EXIT_FAILURE
    found = {(problem["severity"], problem["code"], problem["kid"]) for problem in doc["problems"]}
    assert found == {("error", "duplicate_kid", "many")}


def test_jwks_check_counts_keys_under_one_kid_per_alg(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer
) -> None:
    """RFC 7517 §4.5's own example of a shared kid is keys of different types: a token's alg
    picks among them, so five types under one kid are each tried, not an error."""
    private = [
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP521R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ]
    keys = [_public(key, kid="shared", use="sig") for key in private]
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": keys}).encode())
    code, doc = run_json(capsys, "jwks", "check", issuer.jwks_uri)
    assert code == cli.EXIT_OK
    found = {(problem["severity"], problem["code"], problem["kid"]) for problem in doc["problems"]}
    assert found == {("warning", "duplicate_kid", "shared")}


def test_jwks_check_flags_every_problem(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer, bad_jwks: dict[str, Any]
) -> None:
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps(bad_jwks).encode())
    code, doc = run_json(capsys, "jwks", "check", issuer.jwks_uri)
    assert code == cli.EXIT_FAILURE
    assert doc["ok"] is False
    found = {(problem["severity"], problem["code"], problem["kid"]) for problem in doc["problems"]}
    assert found == {
        ("error", "weak_rsa_key", "weak"),
        ("error", "missing_kid", None),
        ("warning", "duplicate_kid", "twin"),
        ("warning", "encryption_key", "enc-1"),
        ("error", "private_key_material", "leaked"),
        ("warning", "no_verify_op", "leaked"),  # a private JWK says key_ops ["sign"]
        ("error", "symmetric_key", "hmac"),
        ("error", "alg_mismatch", "mismatch"),
        ("error", "alg_mismatch", "ed-curve"),
    }
    usable = {key["kid"] for key in doc["keys"] if key["usable"]}
    assert usable == {"good", None, "twin", "leaked", "ed", "ed-9864"} - {"leaked"}

    code, out, _err = run(capsys, "jwks", "check", issuer.jwks_uri)
    assert code == cli.EXIT_FAILURE
    assert "ERROR    kid weak: an RSA key of 1024 bits (under 2048): refused as weak" in out
    assert "ERROR    key #3: no kid in a set of several keys" in out
    assert "WARNING  kid enc-1: an encryption key (use: enc)" in out
    assert "ERROR    kid hmac: a symmetric (oct) key is published" in out
    assert "ERROR    kid leaked: private key members published (d, p, q, dp, dq, qi)" in out
    assert "alg 'RS256' does not fit a EC key on P-256 (it may say: ES256)" in out
    assert "alg 'Ed448' does not fit a OKP key on Ed25519 (it may say: Ed25519, EdDSA)" in out
    assert out.splitlines()[-1] == "6 error(s), 3 warning(s)"

    code, out, _err = run(capsys, "jwks", "show", issuer.jwks_uri)
    assert code == 0
    assert "skips it: use is 'enc', not 'sig'" in out
    assert "skips it: weak key: an RSA modulus of 1024 bits (under 2048)" in out


def test_jwks_check_names_why_a_weak_or_unusable_key_is_skipped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # It said "no allowed algorithm for this key", or "alg ... does not match the key type".
    small_order = {"kty": "OKP", "crv": "Ed25519", "x": b64(bytes(32)), "kid": "ed", "alg": "EdDSA"}
    n = (1 << 16400) | 1
    huge = {"kty": "RSA", "kid": "huge", "alg": "RS256", "n": b64(n.to_bytes(2051, "big"))}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [small_order, {**huge, "e": "AQAB"}]}))
    code, out, _err = run(capsys, "jwks", "check", "--file", str(path))
    assert code == cli.EXIT_FAILURE
    assert "kid ed: the key cannot be used: weak key: an Ed25519 point of small order" in out
    assert "kid huge: the key cannot be used: an RSA modulus of 16401 bits: OpenSSL" in out
    code, out, _err = run(capsys, "jwks", "show", "--file", str(path))
    assert "skips it: weak key: an Ed25519 point of small order" in out


def test_jwks_check_warnings_alone_pass(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer
) -> None:
    key = issuer.jwks()["keys"][0]
    del key["kid"]
    enc = _public(ec.generate_private_key(ec.SECP256R1()), kid="enc", use="enc")
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": [key]}).encode())
    code, out, _err = run(capsys, "jwks", "check", issuer.jwks_uri)
    assert code == 0
    assert "WARNING  key #1: no kid: fine while it is the only key" in out
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": [enc]}).encode())
    code, out, _err = run(capsys, "jwks", "check", issuer.jwks_uri)
    assert code == cli.EXIT_FAILURE
    assert "ERROR    key set: no key in the set can verify a token" in out


def test_analyze_jwks_edge_cases() -> None:
    with pytest.raises(ValueError, match="not a JWK Set"):
        analyze_jwks({"keys": "no"})
    p384 = _public(ec.generate_private_key(ec.SECP384R1()), kid="p384")
    k1 = {"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"}
    reports, findings = analyze_jwks(
        {
            "keys": [
                "not an object",
                {"kty": "RSA", "kid": 7, "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "kid": "ops", "n": "AQAB", "e": "AQAB", "key_ops": ["encrypt"]},
                {"kty": "RSA", "kid": "use", "n": "AQAB", "e": "AQAB", "use": "wrap"},
                {"kty": "RSA", "kid": "garbage", "n": "!!", "e": "AQAB"},
                {"kty": "XYZ", "kid": "xyz"},
                k1,
                p384,
            ]
        }
    )
    codes = [(finding.code, finding.kid) for finding in findings]
    assert ("not_an_object", None) in codes
    assert ("kid_not_string", None) in codes
    assert ("no_verify_op", "ops") in codes
    assert ("unknown_use", "use") in codes
    assert ("unusable_key", "garbage") in codes
    assert ("unknown_kty", "xyz") in codes
    assert ("unsupported_curve", "k1") in codes
    assert [report.kid for report in reports if report.usable] == ["p384"]
    assert reports[-1].algorithms == ["ES384"]
    assert reports[-1].size == "P-384"
    reports, _findings = analyze_jwks({"keys": [{"kty": "oct", "k": "AAAA"}]})
    assert reports[0].size == "24 bits"


@pytest.mark.parametrize("crv", [["P-256"], {"name": "Ed25519"}, 7, None])
@pytest.mark.parametrize("kty", ["EC", "OKP"])
def test_jwks_check_survives_a_curve_that_is_not_a_string(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kty: str, crv: object
) -> None:
    # RFC 7518 §6.2.1.1 and RFC 8037 §2: crv is a string; anything else is a bad key, not
    # a crash (a list or an object is unhashable).
    entry = {"kty": kty, "crv": crv, "x": "AA", "y": "AA", "kid": "k", "alg": "ES256"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [entry]}))
    for command in ("show", "check"):
        code, out, err = run(capsys, "jwks", command, "--file", str(path))
        assert "Traceback" not in out + err
    assert code == cli.EXIT_FAILURE
    assert "alg_mismatch" in json.dumps(analyze_jwks({"keys": [entry]}), default=repr)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["jwks", "show", "http://id.example.com/jwks"], cli.EXIT_USAGE, "must be an https URL"),
        (["jwks", "check", "--issuer", "http://id.example.com"], cli.EXIT_USAGE, "issuer must be"),
        (["jwks", "check", "--issuer", "https://id.example.com/?t=a"], cli.EXIT_USAGE, "query"),
        (["jwks", "check", "--file", "/nonexistent.json"], cli.EXIT_USAGE, "cannot read"),
        (["jwks", "show"], cli.EXIT_USAGE, "one of the arguments"),
    ],
)
def test_jwks_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    got, _out, err = run(capsys, *argv)
    assert got == code
    assert message in err


@pytest.mark.parametrize("suffix", ["", "/"])
def test_jwks_of_an_issuer_url_suggests_discovery(
    capsys: pytest.CaptureFixture[str], session_issuer: DevIssuer, suffix: str
) -> None:
    # The issuer pasted where the key set URL goes: "answered 404" alone.
    url = session_issuer.url + suffix
    code, _out, err = run(capsys, "jwks", "check", url, "--quiet")
    assert code == cli.EXIT_UNREACHABLE
    assert err.startswith(f"bearerguard: GET {url} answered 404")
    assert f"if {url} is an issuer, --issuer {url} discovers its key set" in err
    keys = session_issuer.jwks_uri.replace("jwks.json", "keys.json")  # a key set URL: no hint
    code, _out, err = run(capsys, "jwks", "check", keys, "--quiet")
    assert code == cli.EXIT_UNREACHABLE
    assert "--issuer" not in err


def test_jwks_unreachable_and_not_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}/jwks.json"
    code, _out, err = run(capsys, "jwks", "check", url, "--timeout", "2")
    assert code == cli.EXIT_UNREACHABLE
    assert f"bearerguard: GET {url} failed" in err
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    code, doc = run_json(capsys, "jwks", "check", "--file", str(path))
    assert code == cli.EXIT_FAILURE
    assert doc["error"]["kind"] == "not_a_jwks"
    path.write_text('{"keys": {}}')
    code, _out, err = run(capsys, "jwks", "show", "--file", str(path))
    assert code == cli.EXIT_FAILURE
    assert "not a JWK Set" in err
    # Bytes that are not UTF-8 are not JSON either (RFC 8259 §8.1): exit 1, not a usage error.
    path.write_bytes(b'\xff{"keys": []}')
    code, doc = run_json(capsys, "jwks", "show", "--file", str(path))
    assert (code, doc["error"]["kind"]) == (cli.EXIT_FAILURE, "not_a_jwks")


@pytest.mark.parametrize(
    "text",
    [
        '{"keys": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"keys": [{"kty": "RSA", "n": NaN, "e": "AQAB"}]}',
        '{"keys": [], "max": Infinity}',
    ],
    ids=["deep", "nan", "infinity"],
)
@pytest.mark.parametrize("command", ["show", "check"])
def test_jwks_files_too_deep_or_not_strict_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, text: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(text)
    code, out, err = run(capsys, "jwks", command, "--file", str(path))
    assert (code, out) == (cli.EXIT_FAILURE, "")
    assert err == f"bearerguard: {path} is not JSON\n"
    code, document = run_json(capsys, "jwks", command, "--file", str(path))
    assert code == cli.EXIT_FAILURE
    assert document["error"]["kind"] == "not_a_jwks"


# -- the real command -------------------------------------------------------------------


def test_the_installed_command_end_to_end(session_issuer: DevIssuer) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    token = session_issuer.mint(scopes=["items:read"], sub="sub-process")
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603 - our own command
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "bearerguard",
            "token",
            "verify",
            "-",
            "--issuer",
            session_issuer.url,
            "--audience",
            session_issuer.audience,
            "--scope",
            "items:read",
            "--json",
        ],
        input=f"Bearer {token}\n",
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token"]["sub"] == "sub-process"
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 15
    assert httpx.get(session_issuer.jwks_uri, timeout=5).status_code == 200


def test_the_documented_exit_codes_include_a_document_that_is_not_a_jwk_set(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer
) -> None:
    # docs/cli.md's table is the reference for scripts: each exit code seen must be in it.
    rows = {
        line.split("|")[1].strip(): line.split("|")[3]
        for line in (ROOT / "docs" / "cli.md").read_text().splitlines()
        if line.startswith("| `bearerguard ")
    }
    issuer.overrides[issuer.jwks_path] = Override(body=b'{"nope": 1}')
    for command in ("show", "check"):
        code, _out, _err = run(capsys, "jwks", command, issuer.jwks_uri, "-q")
        assert code == cli.EXIT_FAILURE
        assert str(code) in rows[f"`bearerguard jwks {command} URL`"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        code, _out, _err = run(capsys, "token", "mint", "--serve", "--port", port, "-q")
    assert code == cli.EXIT_FAILURE
    assert str(code) in rows["`bearerguard token mint`"]


def test_text_from_a_hostile_key_set_cannot_drive_the_terminal(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer
) -> None:
    # An ESC sequence in a kid ("erase the line above") could hide an ERROR line of
    # `jwks check`; every byte that reaches the terminal is printable.
    erase = "\x1b[1A\x1b[2K\r"
    keys = [
        {"kty": "oct", "k": "c2VjcmV0c2VjcmV0", "kid": "hs"},
        {"kty": "RSA", "kid": f"k{erase}", "n": "AQAB", "e": "AQAB", "use": "sig\x9b\u202e"},
    ]
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": keys}).encode())
    for command in ("show", "check"):
        _code, out, _err = run(capsys, "jwks", command, issuer.jwks_uri, "-q")
        assert all(char.isprintable() or char == "\n" for char in out), repr(out)
        assert "k\\x1b[1A\\x1b[2K\\r" in out
    issuer.overrides.clear()
    code, out, _err = run(capsys, "token", "inspect", issuer.mint(sub="m\x9b2J\x7f\u202e"))
    assert code == cli.EXIT_OK
    assert all(char.isprintable() or char == "\n" for char in out), repr(out)
    token = issuer.mint(sub=f"mallory{erase}", scopes=["a\x1b[2J"])
    argv = ["token", "verify", token, "--issuer", issuer.url, "--audience", issuer.audience]
    code, out, _err = run(capsys, *argv, "-q")
    assert code == cli.EXIT_OK
    assert all(char.isprintable() or char == "\n" for char in out), repr(out)


@pytest.mark.parametrize("path", ["?\x9b2J\u202e", "/\x9b2J\u202e"], ids=["found", "404"])
def test_a_jwks_uri_from_hostile_metadata_cannot_drive_the_terminal_on_stderr(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer, path: str
) -> None:
    # A C1 CSI (U+009B, ESC [ to many terminals) or a bidi override in the metadata's
    # jwks_uri passes check_url (httpx percent-encodes it on the wire), and reached the
    # terminal raw in verify's progress line and in every command's failure line.
    metadata = {**issuer.metadata(), "jwks_uri": issuer.jwks_uri + path}
    issuer.overrides[issuer.oidc_metadata_path] = Override(body=json.dumps(metadata).encode())
    verify = ["token", "verify", issuer.mint(), "--issuer", issuer.url]
    for argv in (
        [*verify, "--audience", issuer.audience],
        ["jwks", "show", "--issuer", issuer.url],
        ["jwks", "check", "--issuer", issuer.url],
    ):
        _code, out, err = run(capsys, *argv)
        assert all(char.isprintable() or char == "\n" for char in out + err), repr(err)
        assert "\\x9b2J\\u202e" in err or "\\x9b2J\\u202e" in out


def test_inspect_notes_quoting_a_hostile_header_cannot_drive_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The notes quote the header's alg as it came: "alg HS256<ESC>[2J... (HMAC)" cleared
    # the screen, and could have drawn a fake verdict over the UNVERIFIED banner.
    header = {"alg": "HS256\x1b[2J\x1b[1;1HVALID", "kid": "k", "typ": "at+jwt"}
    claims = {"iss": "i", "aud": "a", "exp": 1, "jti": "j"}
    code, out, _err = run(capsys, "token", "inspect", f"{b64(header)}.{b64(claims)}.AAAA")
    assert code == cli.EXIT_OK
    assert "alg HS256\\x1b[2J\\x1b[1;1HVALID (HMAC)" in out
    assert all(char.isprintable() or char == "\n" for char in out), repr(out)


# C1 controls, DEL, bidi embeddings/overrides/isolates and marks (Trojan Source,
# CVE-2021-42574), a line separator and an astral format character (a language tag).
HOSTILE_TEXT = "m\x85\x9b2J\x7f\u202a\u202e\u2066\u2069\u200e\u200f\u061c\u2028\U000e0001"


def _printable_json(out: str) -> Any:
    assert all(char.isprintable() or char == "\n" for char in out), repr(out)
    return json.loads(out)


def test_json_output_escapes_what_could_reorder_or_hide_text_on_a_terminal(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer
) -> None:
    # json.dumps escapes only C0 controls: claims and key sets are attacker-chosen text, and
    # `--json` printed to a terminal showed them raw. Escaped, they read back the same.
    token = issuer.mint(sub=HOSTILE_TEXT)
    _code, out, _err = run(capsys, "token", "inspect", token, "--json")
    assert _printable_json(out)["claims"]["sub"] == HOSTILE_TEXT
    _code, out, _err = verify(capsys, issuer, token, "--json", "-q")
    assert _printable_json(out)["token"]["sub"] == HOSTILE_TEXT
    keys = [{"kty": "RSA", "kid": HOSTILE_TEXT, "n": "AQAB", "e": "AQAB"}]
    issuer.overrides[issuer.jwks_path] = Override(body=json.dumps({"keys": keys}).encode())
    for command in ("show", "check"):
        _code, out, _err = run(capsys, "jwks", command, issuer.jwks_uri, "--json", "-q")
        assert HOSTILE_TEXT in json.dumps(_printable_json(out), ensure_ascii=False)


def test_a_json_failure_document_escapes_what_could_drive_the_terminal(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer
) -> None:
    # The failure's message names the jwks_uri the issuer's metadata gave, which answers 404.
    metadata = {**issuer.metadata(), "jwks_uri": f"{issuer.jwks_uri}/\x9b2J\u202e"}
    issuer.overrides[issuer.oidc_metadata_path] = Override(body=json.dumps(metadata).encode())
    code, out, _err = run(capsys, "jwks", "show", "--issuer", issuer.url, "--json", "-q")
    assert code != cli.EXIT_OK
    assert "/jwks.json/\x9b2J\u202e" in _printable_json(out)["error"]["message"]


@pytest.mark.parametrize("text", [HOSTILE_TEXT, f"{HOSTILE_TEXT}\ud800"], ids=["text", "surrogate"])
def test_a_json_document_reads_back_as_the_value_it_escapes(text: str) -> None:
    # A lone surrogate cannot be UTF-8: the document falls back to ASCII escapes.
    value = {"text": f"{text}\U000f0000 jörg 日本"}
    out = io.StringIO()
    Console(as_json=True, out=out).document(value)
    assert _printable_json(out.getvalue()) == value


@pytest.mark.parametrize("argv", [["token", "inspect", "-"], ["token", "mint", "--json"]])
def test_a_reader_that_went_away_is_no_traceback(argv: list[str]) -> None:
    # `bearerguard ... | head -1`: head exits, and every later write meets a broken pipe.
    reader, writer = os.pipe()
    os.close(reader)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    try:
        result = subprocess.run(  # noqa: S603 - our own command
            [sys.executable, "-m", "bearerguard", *argv],
            input=b"Bearer " + b64({"alg": "RS256"}).encode() + b"." + b64({"sub": "a"}).encode(),
            stdout=writer,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert result.returncode == 141
    errors = result.stderr.decode()
    assert "Traceback" not in errors
    assert "BrokenPipeError" not in errors  # nor "Exception ignored" at exit


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_an_output_that_is_not_utf8_gets_escapes_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, session_issuer: DevIssuer, encoding: str
) -> None:
    # A terminal or a redirected file in another encoding (LANG=en_US.ISO-8859-1, a
    # Windows code page) cannot take every character a token's claims may hold.
    token = session_issuer.mint(sub="jörg", name="日本")
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding=encoding))
    assert cli.main(["token", "inspect", token]) == 0
    text = raw.getvalue().decode(encoding)
    assert ("jörg" if encoding == "latin-1" else "j\\xf6rg") in text
    assert "\\u65e5\\u672c" in text
    raw.seek(0)
    raw.truncate()
    assert cli.main(["token", "inspect", token, "--json"]) == 0
    document = json.loads(raw.getvalue().decode(encoding))
    assert (document["claims"]["sub"], document["claims"]["name"]) == ("jörg", "日本")


@pytest.mark.parametrize("command", ["show", "check"])
def test_a_key_set_that_is_not_json_exits_1_over_http_as_from_a_file(
    capsys: pytest.CaptureFixture[str], issuer: DevIssuer, tmp_path: Path, command: str
) -> None:
    # The same bad document is "not a JWK Set" (exit 1) wherever it comes from; over HTTP
    # it exited 3, as if the key set could not be reached.
    issuer.overrides[issuer.jwks_path] = Override(body=b"<html>")
    path = tmp_path / "jwks.json"
    path.write_bytes(b"<html>")
    for source in ([issuer.jwks_uri], ["--issuer", issuer.url], ["--file", str(path)]):
        code, out, err = run(capsys, "jwks", command, *source, "-q")
        assert (code, out) == (cli.EXIT_FAILURE, ""), source
        assert "not JSON" in err or "did not return JSON" in err
        code, document = run_json(capsys, "jwks", command, *source, "-q")
        assert (code, document["error"]["kind"]) == (cli.EXIT_FAILURE, "not_a_jwks"), source


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize(
    "argv",
    [["token", "mint"], ["token", "mint", "--json"], ["token", "inspect", "-"]],
)
def test_an_output_that_cannot_be_written_is_one_line_and_exit_74(argv: list[str]) -> None:
    # Standard output on a full disk (/dev/full: every write fails with ENOSPC).
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    with open("/dev/full", "wb") as full:
        result = subprocess.run(  # noqa: S603 - our own command
            [sys.executable, "-m", "bearerguard", *argv],
            input=b"Bearer " + b64({"alg": "RS256"}).encode() + b"." + b64({"sub": "a"}).encode(),
            stdout=full,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            timeout=60,
            check=False,
        )
    assert result.returncode == cli.EXIT_OUTPUT == 74
    assert result.stderr.decode() == (
        "bearerguard: cannot write the output: No space left on device\n"
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_json_failure_report_that_cannot_be_written_is_exit_74(tmp_path: Path) -> None:
    # The command fails (not a JWK Set, exit 1), and with --json its failure document goes
    # to standard output, which cannot take it either: one line on stderr and 74, as for a
    # result, never a traceback.
    document = tmp_path / "jwks.json"
    document.write_text('{"keys": 1}')
    argv = ["jwks", "show", "--file", str(document), "--json"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    with open("/dev/full", "wb") as full:
        result = subprocess.run(  # noqa: S603 - our own command
            [sys.executable, "-m", "bearerguard", *argv],
            stdout=full,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            timeout=60,
            check=False,
        )
    assert result.returncode == cli.EXIT_OUTPUT
    assert result.stderr.decode() == (
        "bearerguard: cannot write the output: No space left on device\n"
    )


@pytest.mark.parametrize(
    "argv", [["token", "mint"], ["token", "mint", "--json"], ["token", "inspect", "-"]]
)
def test_a_closed_standard_output_is_exit_74_not_a_lost_result(argv: list[str]) -> None:
    # `bearerguard token mint >&-`: Python starts with sys.stdout None, print() writes
    # nowhere, and the command exited 0 with the token lost.
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(  # noqa: S603 - our own command, its stdout closed by sh
        ["/bin/sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "bearerguard", *argv],
        input=b"Bearer " + b64({"alg": "RS256"}).encode() + b"." + b64({"sub": "a"}).encode(),
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    errors = result.stderr.decode()
    assert result.returncode == cli.EXIT_OUTPUT, errors
    assert "bearerguard: cannot write the output: Bad file descriptor\n" in errors
    assert "Traceback" not in errors


def test_a_closed_standard_error_keeps_standard_output_the_result_alone(
    tmp_path: Path, closed_port: int
) -> None:
    # `TOKEN=$(bearerguard token mint 2>&-)`: Python starts with sys.stderr None, and
    # print(file=None) writes to standard output: the warning landed in TOKEN, and a
    # failure line or progress lines in what a pipe or `--json | jq` reads.
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)

    def output(*argv: str) -> tuple[int, str]:
        result = subprocess.run(  # noqa: S603 - our own command, its stderr closed by sh
            ["/bin/sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "bearerguard", *argv],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            timeout=60,
            check=False,
        )
        return result.returncode, result.stdout.decode()

    code, out = output("token", "mint")
    assert code == cli.EXIT_OK
    assert len(out.splitlines()) == 1
    assert out.count(".") == 2
    assert output("jwks", "show", "--file", str(tmp_path / "missing.json")) == (cli.EXIT_USAGE, "")
    url = f"http://127.0.0.1:{closed_port}/jwks.json"
    code, out = output("jwks", "show", url, "--json")
    assert code == cli.EXIT_UNREACHABLE
    assert json.loads(out)["error"]["kind"] == "unreachable"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["token", "verify", "x", "--leeway", "nan"], "--leeway"),  # a value argparse refuses
        (["token", "mint", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["jwks", "check"], "one of the arguments"),  # a required argument missing
    ],
)
def test_arguments_argparse_refuses_are_a_json_document_with_json(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    # docs/cli.md: a bad argument is {"ok": false, "error": ...} with --json, whoever finds it.
    code, doc = run_json(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert doc["ok"] is False
    assert doc["error"]["kind"] == "usage"
    assert message in doc["error"]["message"]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err.startswith("usage: bearerguard")
    assert "error: " in err
    assert message in err


# -- Ctrl-C -----------------------------------------------------------------------------


def _interrupted_while_waiting(
    argv: list[str], wait_for_request: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (``python ...``), press Ctrl-C once ``wait_for_request()`` is true."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(  # noqa: S603 - our own command
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not wait_for_request():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the command never asked"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


class _SilentServer:
    """A TCP server on 127.0.0.1 that accepts and never answers (a hung Redis)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.02)
        self.port = int(self.listener.getsockname()[1])
        self.accepted: list[socket.socket] = []

    def connected(self) -> bool:
        with contextlib.suppress(TimeoutError):
            self.accepted.append(self.listener.accept()[0])
        return bool(self.accepted)

    def close(self) -> None:
        for connection in self.accepted:
            connection.close()
        self.listener.close()


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
@pytest.mark.parametrize("command", ["jwks", "revoke", "revoke-run"])
def test_ctrl_c_is_exit_130_and_with_json_a_json_document(command: str, as_json: bool) -> None:
    # docs/cli.md: every failure is {"ok": false, ...} with --json; Ctrl-C too, exit 130.
    issuer = DevIssuer(algorithms=["ES256"])
    silent = _SilentServer()
    try:
        json_flag = ["--json"] if as_json else []
        if command == "jwks":
            issuer.overrides[issuer.jwks_path] = Override(delay=5.0)
            issuer.start()
            argv = ["-m", "bearerguard", "jwks", "show", issuer.jwks_uri, "--timeout", "30"]
            result = _interrupted_while_waiting(argv + json_flag, lambda: issuer.fetch_count() > 0)
        else:
            revoke = ["revoke", "token", "j1", "--redis-url", f"redis://127.0.0.1:{silent.port}/0"]
            revoke += ["--timeout", "30", *json_flag]
            argv = (
                ["-m", "bearerguard", *revoke]
                if command == "revoke"
                else [
                    "-c",
                    "import sys\nfrom bearerguard._cli_revoke import run\n"
                    f"sys.exit(run({revoke!r}))",
                ]
            )
            result = _interrupted_while_waiting(argv, silent.connected)
    finally:
        issuer.stop()
        silent.close()
    assert result.returncode == cli.EXIT_INTERRUPTED == 130
    assert b"Traceback" not in result.stderr
    if as_json:
        assert json.loads(result.stdout) == {
            "ok": False,
            "error": {"kind": "interrupted", "message": "interrupted"},
        }
    else:
        assert result.stdout == b""
        assert result.stderr.decode().splitlines()[-1] == "interrupted"


# A real SIGINT, sent by the process to itself when the named code starts running: the
# KeyboardInterrupt is raised in it, as when Ctrl-C is pressed at that moment.
_SIGINT_WHEN = """
import os, signal, sys

def _press_ctrl_c(frame, event, arg):
    code = frame.f_code
    if event == "call" and (code.co_name, os.path.basename(code.co_filename)) == {where!r}:
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGINT)

sys.setprofile(_press_ctrl_c)
"""


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
@pytest.mark.parametrize(
    ("where", "entry"),
    [
        (("parse_known_args", "argparse.py"), "main"),  # argparse reading the arguments
        (("add_parser", "argparse.py"), "main"),  # the parser being built
        (("<module>", "_cli_token.py"), "python -m"),  # python -m bearerguard, loading
    ],
    ids=["parsing", "building", "loading"],
)
def test_ctrl_c_before_the_command_runs_is_exit_130_without_a_traceback(
    where: tuple[str, str], entry: str, as_json: bool
) -> None:
    # Ctrl-C pressed as soon as the command starts ended in a KeyboardInterrupt traceback.
    argv = ["jwks", "show", "--file", "keys.json", *(["--json"] if as_json else [])]
    if entry == "main":
        run_it = f"from bearerguard import cli\nsys.exit(cli.main({argv!r}))"
    else:
        run_it = (
            f"import runpy\nsys.argv[1:] = {argv!r}\n"
            "runpy.run_module('bearerguard', run_name='__main__')"
        )
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-c", _SIGINT_WHEN.format(where=where) + run_it],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == cli.EXIT_INTERRUPTED, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    if as_json:
        assert json.loads(result.stdout) == {
            "ok": False,
            "error": {"kind": "interrupted", "message": "interrupted"},
        }
    else:
        assert result.stdout == b""
        assert result.stderr.decode().splitlines()[-1] == "interrupted"


# -- file size caps ---------------------------------------------------------------------

JWKS_FILE_CAP = 512 * 1024  # the most a guard reads of a fetched key set (FetchPolicy)
KEY_FILE_CAP = 64 * 1024


def test_a_jwks_file_is_read_up_to_the_fetch_cap_and_no_further(
    capsys: pytest.CaptureFixture[str], session_issuer: DevIssuer, tmp_path: Path
) -> None:
    document = json.dumps(session_issuer.jwks()).encode()
    path = tmp_path / "jwks.json"
    path.write_bytes(document + b" " * (JWKS_FILE_CAP - len(document)))  # exactly the cap
    code, doc = run_json(capsys, "jwks", "check", "--file", str(path))
    assert code == cli.EXIT_OK, doc
    path.write_bytes(document + b" " * (JWKS_FILE_CAP + 1 - len(document)))
    code, doc = run_json(capsys, "jwks", "check", "--file", str(path))
    message = f"cannot read {path}: it is larger than 512 KiB, the most read of a JWK Set"
    assert (code, doc) == (
        cli.EXIT_USAGE,
        {"ok": False, "error": {"kind": "usage", "message": message}},
    )
    code, out, err = run(capsys, "jwks", "show", "--file", str(path))
    assert (code, out, err) == (cli.EXIT_USAGE, "", f"bearerguard: {message}\n")


@pytest.mark.parametrize(
    "argv",
    [["jwks", "show", "--file", "/dev/zero"], ["token", "mint", "--key", "/dev/zero"]],
    ids=["jwks", "key"],
)
def test_an_endless_file_is_refused_at_once(argv: list[str]) -> None:
    # Read whole, /dev/zero filled the memory: the child gets 1 GiB of address space at most.
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(  # noqa: S603 - our own command
        [
            sys.executable,
            "-c",
            f"{limit}import sys\nfrom bearerguard.cli import main\n"
            f"sys.exit(main({[*argv, '--json']!r}))",
        ],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    assert json.loads(result.stdout)["error"]["message"].startswith(
        "cannot read /dev/zero: it is larger than"
    )


def test_a_key_file_larger_than_any_pem_key_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pem = SigningKey.generate("ES256").private_pem()
    path = tmp_path / "dev.pem"
    path.write_bytes(pem + b"\n" * (KEY_FILE_CAP - len(pem)))  # exactly the cap: read
    code, doc = run_json(capsys, "token", "mint", "--key", str(path))
    assert code == cli.EXIT_OK, doc
    path.write_bytes(pem + b"\n" * (KEY_FILE_CAP + 1 - len(pem)))
    code, doc = run_json(capsys, "token", "mint", "--key", str(path))
    assert code == cli.EXIT_USAGE
    assert doc["error"] == {
        "kind": "usage",
        "message": f"cannot read {path}: it is larger than 64 KiB, the most read of a PEM key",
    }
