"""Strict compact JWS parsing (RFC 7515 §7.1, RFC 8725 §3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bearerguard._core.jws import (
    decode_json_object,
    decode_payload,
    parse_compact,
    parse_credentials,
)
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
        {**HEADER, "kid": None},
        {**HEADER, "kid": ["k1"]},
        # RFC 7515 §4.1.9, §4.1.10: typ and cty, when present, are strings; null is not absent.
        {**HEADER, "typ": None},
        {**HEADER, "typ": 1},
        {**HEADER, "typ": ["secevent+jwt"]},
        {**HEADER, "cty": None},
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
        "kid-null",
        "kid-list",
        "typ-null",
        "typ-int",
        "typ-list",
        "cty-null",
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


# -- parse_credentials: the guard's fast path over request bytes ------------------------------

VALID = compact(HEADER, {"sub": "x"}, b"\x01\x02\x03")


def test_credentials_parse_as_the_text_does() -> None:
    from_bytes = parse_credentials(VALID.encode())
    assert from_bytes is not None
    assert tuple(from_bytes) == tuple(parse_compact(VALID))
    assert decode_payload(from_bytes) == {"sub": "x"}
    assert repr(from_bytes) == f"CompactJWS(header={HEADER!r})"  # the token stays out of logs


@pytest.mark.parametrize(
    "credentials",
    [
        VALID.encode() + b"=",  # padding (RFC 7515 §2: base64url without "=")
        VALID.replace(".", "+.", 1).encode(),  # the standard alphabet's "+" and "/"
        VALID.replace(".", "/.", 1).encode(),
        VALID.replace(".", "~.", 1).encode(),  # a b64token character, not base64url
        VALID.replace(".", " .", 1).encode(),  # white space anywhere
        VALID.replace(".", "\t.", 1).encode(),
        VALID.encode() + b"\n",
        VALID.replace(".", "*.", 1).encode(),  # the byte the translation marks with
        VALID.replace(".", "~", 1).encode(),  # a bad byte in place of a dot
        VALID.replace(".", "\x00", 1).encode(),
        VALID.replace(".", "\xe9.", 1).encode("latin-1"),
        VALID.rsplit(".", 1)[0].encode(),  # two segments
        VALID.encode() + b".x",  # four
        VALID.replace(".", "..", 1).encode(),  # an empty segment
        b"." + VALID.encode(),
    ],
    ids=[
        "padding",
        "plus",
        "slash",
        "tilde",
        "space",
        "tab",
        "newline",
        "star",
        "tilde-for-dot",
        "nul-for-dot",
        "latin-1",
        "two-segments",
        "four-segments",
        "empty-segment",
        "leading-dot",
    ],
)
def test_credentials_that_are_not_plainly_compact_are_left_to_the_checks(
    credentials: bytes,
) -> None:
    assert parse_credentials(credentials) is None
    with pytest.raises(MalformedTokenError):
        parse_compact(credentials.decode("latin-1"))


@pytest.mark.parametrize("signature", ["AB", "ABD", "A"], ids=["bits-2", "bits-3", "mod-1"])
def test_credentials_with_a_non_canonical_signature_are_refused(signature: str) -> None:
    # RFC 4648 §3.5: non-zero trailing bits would let two spellings verify as one token.
    with pytest.raises(MalformedTokenError):
        parse_credentials(f"{segment(HEADER)}.{segment({})}.{signature}".encode())


@pytest.mark.parametrize("payload", ["AB", "ABD", "A"], ids=["bits-2", "bits-3", "mod-1"])
def test_a_non_canonical_payload_is_refused_when_decoded(payload: str) -> None:
    jws = parse_compact(f"{segment(HEADER)}.{payload}.{b64(b'sig')}")
    with pytest.raises(MalformedTokenError):
        decode_payload(jws)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b' {"a":1}', {"a": 1}),
        (b'{"a":1}\n', {"a": 1}),
        (b'\t{ "a" : [1, {"b": 2}] } ', {"a": [1, {"b": 2}]}),
    ],
)
def test_white_space_around_the_json_object_is_accepted(raw: bytes, value: object) -> None:
    assert decode_json_object(b64(raw), "payload") == value


@pytest.mark.parametrize(
    "raw",
    [b'{"a":1}x', b'{"a":1}{}', b'{"a": x}', b'{"a":[1,}', b"{", b'"a"', b"1"],
    ids=["extra", "two-objects", "bad-value", "bad-array", "unclosed", "string", "number"],
)
def test_json_scanned_directly_still_refuses_what_decode_refuses(raw: bytes) -> None:
    with pytest.raises(MalformedTokenError):
        decode_json_object(b64(raw), "payload")


@pytest.mark.parametrize("segment_text", ["e30=", "e3+0", "e3/0", "e3.0", "e30\n", "e\x0530"])
def test_decode_json_object_takes_only_base64url(segment_text: str) -> None:
    with pytest.raises(MalformedTokenError):
        decode_json_object(segment_text, "payload")


def test_reliability_page_does_not_say_decode_json_object_skips_foreign_characters() -> None:
    # binascii alone decodes "e\x0530" as {}; decode_json_object refuses it (above).
    page = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    assert "decodes whatever `binascii` decodes" not in " ".join(page.split())


def test_reliability_page_does_not_promise_a_smoke_version_of_every_run() -> None:
    # The load run, atheris and the peer benchmarks have none in the default tests.
    page = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    assert "and a short smoke version inside the default test command" not in " ".join(page.split())


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"sub":"\ud800"}',  # a high surrogate alone
        rb'{"sub":"\udc00"}',  # a low surrogate alone
        rb'{"sub":"\ude00\ud83d"}',  # a pair in the wrong order
        rb'{"\ud800":1}',  # in a member name
        rb'{"aud":["a","x\ud83d"]}',  # inside an array
    ],
    ids=["high", "low", "reversed", "name", "nested"],
)
def test_a_lone_surrogate_escape_is_refused(raw: bytes) -> None:
    # RFC 8259 §8.2: no UTF-8 can carry it, and a log renderer printing it would raise.
    with pytest.raises(MalformedTokenError, match="not valid UTF-8 JSON"):
        decode_json_object(b64(raw), "payload")


def test_an_escaped_surrogate_pair_is_one_character() -> None:
    decoded = decode_json_object(b64(rb'{"sub":"\ud83d\ude00","p":"a\\u00e9"}'), "payload")
    assert decoded == {"sub": "\U0001f600", "p": "a\\u00e9"}


@pytest.mark.parametrize("member", ["kid", "alg", "x-other"])
def test_a_header_with_a_lone_surrogate_is_refused_before_any_key_lookup(member: str) -> None:
    members = {"alg": '"RS256"', "kid": '"k1"', member: '"\\ud800"'}
    header = b64(("{" + ",".join(f'"{k}":{v}' for k, v in members.items()) + "}").encode())
    with pytest.raises(MalformedTokenError, match="header is not valid UTF-8 JSON"):
        parse_compact(f"{header}.{segment({'sub': 'x'})}.{b64(b'sig')}")
