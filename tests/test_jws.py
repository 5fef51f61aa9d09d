"""Strict compact JWS parsing (RFC 7515 §7.1, RFC 8725 §3)."""

from __future__ import annotations

import pytest

from bearerguard._core.jws import decode_json_object, parse_compact
from bearerguard.errors import MalformedTokenError, UnsupportedAlgorithmError
from tests.helpers import b64, compact, segment

HEADER = {"alg": "RS256", "kid": "k1", "typ": "at+jwt"}


def test_parses_header_and_signature_but_not_payload() -> None:
    token = compact(HEADER, {"sub": "x"}, b"\x01\x02")
    jws = parse_compact(token)
    assert jws.header == HEADER
    assert jws.alg == "RS256"
    assert jws.signature == b"\x01\x02"
    assert jws.signing_input == token.rsplit(".", 1)[0].encode()
    assert decode_json_object(jws.payload_segment, "payload") == {"sub": "x"}


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        f"{segment(HEADER)}.{segment({})}.",
        f"{segment(HEADER)}..{b64(b'sig')}",
        f"{segment(HEADER)}.{segment({})}.{b64(b'sig')}=",
        f"{segment(HEADER)}.{segment({})}.ab+c",
        f" {compact(HEADER, {})}",
        # RFC 4648 §3.5: non-zero trailing bits make a different string decode the same.
        f"{segment(HEADER)}.{segment({})}.AB",
        f"{segment(HEADER)}.{segment({})}.ABD",
        f"{segment(HEADER)}.{segment({})}.A",
    ],
    ids=[
        "empty",
        "two-segments",
        "four-segments",
        "jwe",
        "no-signature",
        "no-payload",
        "padding",
        "std-base64",
        "leading-space",
        "trailing-bits-2",
        "trailing-bits-3",
        "length-1-mod-4",
    ],
)
def test_refuses_bad_framing(token: str) -> None:
    with pytest.raises(MalformedTokenError):
        parse_compact(token)


@pytest.mark.parametrize(
    "header",
    [
        {**HEADER, "crit": ["exp"]},
        {**HEADER, "crit": []},
        {**HEADER, "b64": False},
        {**HEADER, "enc": "A128GCM"},
        {**HEADER, "zip": "DEF"},
        {**HEADER, "cty": "JWT"},
        {**HEADER, "cty": "application/jwt"},
        {**HEADER, "cty": 5},
        {**HEADER, "kid": 7},
        ["alg", "RS256"],
        "RS256",
    ],
    ids=[
        "crit",
        "crit-empty",
        "b64",
        "enc",
        "zip",
        "nested",
        "nested-media",
        "cty-int",
        "kid-int",
        "array",
        "string",
    ],
)
def test_refuses_headers_needing_processing_we_do_not_do(header: object) -> None:
    with pytest.raises(MalformedTokenError):
        parse_compact(compact(header, {}))


@pytest.mark.parametrize("alg", [None, "", "none", "None", "NONE", 256, ["RS256"]])
def test_refuses_missing_or_unsecured_alg(alg: object) -> None:
    header = {"kid": "k1"} if alg is None else {"alg": alg}
    with pytest.raises(UnsupportedAlgorithmError):
        parse_compact(compact(header, {}))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"alg":"RS256","alg":"HS256"}',
        b'{"a":{"b":1,"b":2}}',
        b"\xff\xfe{}",
        '{"a":1}'.encode("utf-16"),
        b'\xef\xbb\xbf{"a":1}',
        b'{"exp":NaN}',
        b'{"exp":Infinity}',
        b'{"exp":-Infinity}',
        b'{"exp":1e400}',
        b'{"exp":' + b"9" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b"not json",
        b"[]",
    ],
    ids=[
        "dup",
        "nested-dup",
        "not-utf8",
        "utf16",
        "bom",
        "nan",
        "inf",
        "-inf",
        "1e400",
        "huge-int",
        "deep",
        "garbage",
        "array",
    ],
)
def test_strict_json(raw: bytes) -> None:
    with pytest.raises(MalformedTokenError):
        decode_json_object(b64(raw), "payload")


@pytest.mark.parametrize("segment", ["e\x0530", "e y", "ab+c", ""])
def test_decode_checks_the_alphabet_itself(segment: str) -> None:
    with pytest.raises(MalformedTokenError):
        decode_json_object(segment, "payload")


def test_checked_headers_are_remembered_within_a_bound() -> None:
    from bearerguard._core import jws

    for number in range(jws._MAX_CACHED_HEADERS + 50):
        parse_compact(compact({"alg": "RS256", "kid": f"k{number}"}, {}))
        assert len(jws._HEADERS) <= jws._MAX_CACHED_HEADERS
