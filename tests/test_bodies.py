"""``BoundedBody``: response bodies within a size limit, compressed or not."""

from __future__ import annotations

import gzip
import zlib

import pytest

from bearerguard._core.bodies import BodyError, BoundedBody

DATA = b'{"keys": []}' + b" " * 1000


def collect(coding: str | None, wire: bytes, max_bytes: int, chunk: int = 7) -> bytes:
    body = BoundedBody(coding, max_bytes)
    for start in range(0, len(wire), chunk):
        body.feed(wire[start : start + chunk])
    return body.finish()


@pytest.mark.parametrize(
    ("coding", "wire"),
    [
        (None, DATA),
        ("identity", DATA),
        ("gzip", gzip.compress(DATA)),
        (" GZip ", gzip.compress(DATA)),
        ("x-gzip", gzip.compress(DATA)),
        ("deflate", zlib.compress(DATA)),
    ],
)
def test_plain_and_compressed_bodies_decode_whole(coding: str | None, wire: bytes) -> None:
    assert collect(coding, wire, len(DATA)) == DATA  # exactly at the limit
    with pytest.raises(BodyError, match="exceeds"):
        collect(coding, wire, len(DATA) - 1)


@pytest.mark.parametrize("coding", ["gzip, gzip", "br", "zstd", "compress", "gzip;q=1"])
def test_other_codings_are_refused_before_reading(coding: str) -> None:
    with pytest.raises(BodyError, match="not accepted"):
        BoundedBody(coding, 1000)


def test_a_bomb_is_never_inflated_past_the_limit() -> None:
    bomb = gzip.compress(b" " * 50_000_000)  # 50 MB in about 50 KB
    body = BoundedBody("gzip", 1000)
    with pytest.raises(BodyError, match="exceeds 1000 bytes"):
        body.feed(bomb)
    assert len(body._body) <= 1001  # what was inflated: the limit and one byte


@pytest.mark.parametrize(
    ("coding", "wire"),
    [
        ("gzip", DATA),  # not gzip at all
        ("gzip", gzip.compress(DATA)[:-6]),  # truncated
        ("gzip", gzip.compress(DATA) + b"junk"),  # trailing data
        ("deflate", zlib.compress(DATA)[:10]),
    ],
    ids=["not-gzip", "truncated", "trailing", "deflate-truncated"],
)
def test_corrupt_streams_are_refused(coding: str, wire: bytes) -> None:
    with pytest.raises(BodyError):
        collect(coding, wire, 10_000)


@pytest.mark.parametrize(
    ("coding", "wire"),
    [("gzip", gzip.compress(DATA)), ("deflate", zlib.compress(DATA))],
    ids=["gzip", "deflate"],
)
def test_data_after_the_compressed_stream_is_refused_as_it_comes(coding: str, wire: bytes) -> None:
    body = BoundedBody(coding, len(DATA))
    body.feed(wire)
    # zlib keeps what follows the stream's end aside (unused_data), outside the limit: a
    # server sending a small stream then gigabytes would fill memory until the deadline.
    with pytest.raises(BodyError, match="trailing data"):
        body.feed(b"x" * 100_000)  # refused at once, not after the deadline
    assert body._inflate is not None
    assert len(body._inflate.unused_data) <= 100_000
