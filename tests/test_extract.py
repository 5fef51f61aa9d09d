"""Bearer credentials from the Authorization header (RFC 6750 §2.1)."""

from __future__ import annotations

import pytest

from bearerguard._core.extract import extract_bearer, has_query_token
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
