"""Response bodies collected within a size limit, inflated here when a server compressed them.

bearerguard asks authorization servers for plain bodies (``Accept-Encoding: identity``), but
a server may compress anyway. httpx would inflate each network chunk whole before a size
limit could be checked: a thousandfold for gzip, a millionfold for gzip applied twice. The
raw chunks are fed here instead, and never more than the limit plus one byte is inflated.
"""

from __future__ import annotations

import zlib

__all__ = ["BodyError", "BoundedBody"]

# RFC 9110 §8.4.1: gzip (x-gzip its alias) and deflate, which is the zlib format.
_WINDOW_BITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": 15}


_CORRUPT = "corrupt compressed body"


class BodyError(Exception):
    """The body is not one a fetch may use: a coding other than one gzip or deflate layer,
    a corrupt or truncated stream, or more than the limit once decoded.

    ``cause`` says which in a fixed form that quotes nothing the server sent (for the
    ``auth.unavailable`` event's detail).
    """

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class BoundedBody:
    """Collects a response body of at most ``max_bytes`` decoded bytes.

    Args:
        content_encoding: the response's ``Content-Encoding``, or ``None``.
        max_bytes: the most decoded bytes accepted.

    Raises:
        BodyError: a content coding other than ``identity``, ``gzip`` or ``deflate`` (several
            layers included).
    """

    def __init__(self, content_encoding: str | None, max_bytes: int) -> None:
        coding = (content_encoding or "identity").strip().lower()
        self._inflate: zlib._Decompress | None = None
        if coding != "identity":
            if coding not in _WINDOW_BITS:
                raise BodyError(
                    f"content coding {coding[:40]!r} is not accepted", "content coding refused"
                )
            self._inflate = zlib.decompressobj(_WINDOW_BITS[coding])
        self._max = max_bytes
        self._body = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Add a chunk as it came over the wire.

        Raises:
            BodyError: the decoded body exceeds the limit, or the compressed stream is corrupt.
        """
        inflate = self._inflate
        if inflate is None:
            self._body += chunk
        else:
            try:
                # One byte past what is left, to tell "exactly full" from "too large".
                self._body += inflate.decompress(chunk, self._max - len(self._body) + 1)
            except zlib.error as exc:
                raise BodyError(f"corrupt compressed body: {exc}", _CORRUPT) from None
            if inflate.unused_data:
                # What follows the stream's end is kept aside by zlib, outside the limit:
                # refused as it comes, not held until the deadline ends the fetch.
                raise BodyError("trailing data after the compressed body", _CORRUPT)
        if len(self._body) > self._max:
            raise BodyError(f"body exceeds {self._max} bytes", "body too large")

    def finish(self) -> bytes:
        """The whole decoded body.

        Raises:
            BodyError: the compressed stream ended early or is corrupt, or exceeds the limit.
        """
        inflate = self._inflate
        if inflate is not None:
            try:
                self._body += inflate.flush()
            except zlib.error as exc:
                raise BodyError(f"corrupt compressed body: {exc}", _CORRUPT) from None
            if not inflate.eof or inflate.unused_data:
                raise BodyError("truncated or trailing data in the compressed body", _CORRUPT)
            if len(self._body) > self._max:
                raise BodyError(f"body exceeds {self._max} bytes", "body too large")
        return bytes(self._body)
