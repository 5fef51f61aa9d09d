"""Bearer credentials from the Authorization header (RFC 6750 §2.1)."""

from __future__ import annotations

import pytest

from bearerguard._core.extract import (
    extract_bearer,
    has_query_token,
    redact_query_token,
    split_joined_values,
)
from bearerguard.errors import InvalidRequestError, MalformedTokenError


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        ([b"Bearer abc.def.ghi"], "abc.def.ghi"),
        ([b"bearer abc"], "abc"),
        ([b"BEARER abc"], "abc"),
        ([b"Bearer   abc"], "abc"),
        ([b"Bearer a-b_c~d+e/f=="], "a-b_c~d+e/f=="),
        ([b"Basic dXNlcjpwYXNz"], None),
        ([b"DPoP abc"], None),
        ([b"Bearerabc"], None),
        # Trailing OWS is no part of the field value (RFC 9110 §5.5); not every server strips it.
        ([b"Bearer abc "], "abc"),
        ([b"Bearer abc \t"], "abc"),
    ],
)
def test_extracts_or_ignores(values: list[bytes], expected: str | None) -> None:
    assert extract_bearer(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        [b"Bearer a", b"Bearer b"],
        [b"Bearer a", b"Basic b"],
        [b"Bearer"],
        [b"Bearer "],
        [b"Bearer a b"],
        [b"Bearer a,b"],
        [b"Bearer a=b"],
        [b"Bearer \xff\xfe"],
        [b"Bearer a\tb"],
        [b"Bearer \t"],
        [b"Bearer\t"],
        [b"Bearer abc\r\n"],
    ],
)
def test_malformed_credentials_are_invalid_request(values: list[bytes]) -> None:
    with pytest.raises(InvalidRequestError):
        extract_bearer(values)


def test_size_cap_applies_before_decoding() -> None:
    assert extract_bearer([b"Bearer " + b"a" * 64], max_bytes=64) == "a" * 64
    with pytest.raises(MalformedTokenError):
        extract_bearer([b"Bearer " + b"a" * 65], max_bytes=64)
    # Even bytes that are not a b64token are refused for their size first.
    with pytest.raises(MalformedTokenError):
        extract_bearer([b"Bearer " + b"\xff" * 10_000])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", False),
        (b"access_token=abc", True),
        (b"a=1&access_token=abc", True),
        (b"access_token", True),
        (b"my_access_token=abc", False),
        (b"x=access_token", False),
        # RFC 6750 §2.3: form-encoded, so the name is percent-decoded as query parsers do.
        (b"access%5Ftoken=abc", True),
        (b"a=1&%61ccess_token=abc", True),
        (b"access%5ftoken", True),
        (b"access+token=abc", False),
        (b"access%2Btoken=abc", False),
        (b"x=access%5Ftoken", False),
    ],
)
def test_query_token_detection(query: bytes, expected: bool) -> None:
    assert has_query_token(query) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"access_token=abc", b"access_token=REDACTED"),
        (b"page=2&access_token=abc&x=1", b"page=2&access_token=REDACTED&x=1"),
        (b"access%5Ftoken=abc&x=1", b"access%5Ftoken=REDACTED&x=1"),
        (b"%61ccess_token=abc", b"%61ccess_token=REDACTED"),
        (b"access_token", b"access_token=REDACTED"),
        (b"access_token=a&access_token=b", b"access_token=REDACTED&access_token=REDACTED"),
        (b"my_access_token=abc&q=access_token", b"my_access_token=abc&q=access_token"),
        (b"page=2", b"page=2"),
        (b"", b""),
    ],
)
def test_a_query_token_value_is_redacted(query: bytes, expected: bytes) -> None:
    # The name as sent, the rest of the query as it was: the line still says what was sent.
    assert redact_query_token(query) == expected


def test_a_query_without_a_token_is_returned_as_it_is() -> None:
    query = b"page=2&q=%20"
    assert redact_query_token(query) is query


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Bearer a", [b"Bearer a"]),
        (b"Bearer a, Bearer b", [b"Bearer a", b"Bearer b"]),
        (b"Basic x, Bearer y", [b"Basic x", b"Bearer y"]),
        (b'Digest realm="r", nonce="n"', [b'Digest realm="r", nonce="n"']),
        # A comma inside a quoted-string separates nothing (RFC 9110 §5.6.4), whatever follows.
        (b'Digest username="Doe, John Q"', [b'Digest username="Doe, John Q"']),
        (b'Digest realm="a\\\\", Bearer b', [b'Digest realm="a\\\\"', b"Bearer b"]),
        (b'Digest realm="a\\", b c", Bearer d', [b'Digest realm="a\\", b c"', b"Bearer d"]),
        (b"Bearer a,b,c, Basic d", [b"Bearer a,b,c", b"Basic d"]),
    ],
)
def test_joined_values_are_split(value: bytes, expected: list[bytes]) -> None:
    assert split_joined_values(value) == expected


def test_a_long_joined_value_is_rejoined_once() -> None:
    # waitress passes headers up to 256 KB: appended part by part, 128 000 comma-separated
    # parts were copied over and over (~0.3 s per request, quadratic). The result is
    # checked here; the cost belongs to benchmarks (it happens inside C-level copies).
    value = b"Bearer a" + b",b" * 128_000
    assert split_joined_values(value) == [value]
