"""Strict compact JWS parsing (RFC 7515 §7.1, RFC 8725 §3).

Only the compact serialization of a signed JWT is accepted: exactly three non-empty
base64url segments in canonical form, UTF-8 JSON objects without duplicate members, and no
header parameter that would change how the token must be processed (``crit``, ``b64``,
``enc``, ``zip``, nested ``cty: JWT``).
"""

from __future__ import annotations

import binascii
import json
import math
import re
import string
from collections.abc import Callable
from typing import Any, NamedTuple

from bearerguard._core.unicode import has_lone_surrogate
from bearerguard.errors import AuthError, MalformedTokenError, UnsupportedAlgorithmError

__all__ = [
    "CompactJWS",
    "decode_json_object",
    "decode_payload",
    "looks_compact",
    "parse_compact",
    "parse_credentials",
]

_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")

# The base64url alphabet (RFC 4648 §5): deleting it with bytes.translate checks every
# character of a segment in one C-level pass.
_B64URL_CHARS = (string.ascii_letters + string.digits + "-_").encode()


def _standard_table() -> bytes:
    table = bytearray(b"*" * 256)
    for char in (string.ascii_letters + string.digits + ".").encode():
        table[char] = char
    table[ord("-")], table[ord("_")] = ord("+"), ord("/")
    return bytes(table)


# One translate pass over a compact JWS: the base64url alphabet becomes the standard one
# (RFC 4648 §4) that binascii decodes, dots stay, and every other byte ("+", "/" and "="
# included) becomes "*", so a single search tells whether any was there.
_TO_STANDARD = _standard_table()
# A canonical base64url string leaves the unused low bits of its last character zero
# (RFC 4648 §3.5); anything else decodes to the same bytes and would make tokens malleable.
_CANONICAL_LAST = {2: frozenset(b"AQgw"), 3: frozenset(b"AEIMQUYcgkosw048")}
_PADDING = (b"", b"", b"==", b"=")  # by length % 4; 1 is never valid

# Header parameters whose presence means processing we do not do: JWE (RFC 7516 §4.1.2,
# §4.1.3), unencoded payloads (RFC 7797 §3) and critical extensions (RFC 7515 §4.1.11).
_REFUSED_HEADER_MEMBERS = ("crit", "b64", "enc", "zip")


class CompactJWS(NamedTuple):
    """A compact JWS split into its parts; the payload is not decoded until verified."""

    token: str
    header: dict[str, Any]
    signing_input: bytes
    signature: bytes
    standard_payload: bytes
    """The payload segment in the standard base64 alphabet, for ``decode_payload``."""

    @property
    def payload_segment(self) -> str:
        """The payload segment as it appears in the token."""
        end = len(self.signing_input)
        return self.token[end - len(self.standard_payload) : end]

    @property
    def alg(self) -> str:
        """The header's ``alg``, already checked to be a string."""
        alg: str = self.header["alg"]
        return alg

    def __repr__(self) -> str:
        return f"CompactJWS(header={self.header!r})"  # the token stays out of logs


# CompactJWS(...) through tuple.__new__ directly, skipping the generated Python-level __new__
# (this runs once per token verified).
_new_jws = tuple.__new__


def _b64decode(standard: bytes) -> bytes:
    """Decode a segment already checked and mapped onto the standard base64 alphabet."""
    remainder = len(standard) % 4
    if remainder == 1 or (remainder and standard[-1] not in _CANONICAL_LAST[remainder]):
        raise MalformedTokenError("non-canonical base64url segment")
    try:
        return binascii.a2b_base64(standard + _PADDING[remainder])
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the alphabet rules these out
        raise MalformedTokenError("invalid base64url segment") from exc


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # RFC 7515 §5.2 step 4 / RFC 7519 §4: reject duplicate member names.
        raise MalformedTokenError("duplicate JSON member name")
    return result


def _refuse_constant(name: str) -> Any:
    raise MalformedTokenError(f"JSON constant {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MalformedTokenError("JSON number out of range")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_refuse_duplicates,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
)
# The decoder's scanner, called directly: decode() adds two regex passes for white space.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _decode_object(standard: bytes, what: str) -> dict[str, Any]:
    """Decode a segment (as ``_b64decode`` takes it) holding a UTF-8 JSON object, strictly."""
    raw = _b64decode(standard)
    try:
        text = raw.decode("utf-8")
        try:
            # The scanner alone, for a document that is one value and nothing else; anything
            # else (white space around it, extra data, invalid JSON) goes through decode(),
            # which accepts or names it exactly as it always did.
            value, end = _SCAN(text, 0)
            if end != len(text):
                value = _DECODER.decode(text)
        except StopIteration:
            value = _DECODER.decode(text)
    except MalformedTokenError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedTokenError(f"{what} is not valid UTF-8 JSON") from exc
    if type(value) is not dict:  # the decoder makes plain dicts and lists
        raise MalformedTokenError(f"{what} is not a JSON object")
    # Only an escape can hide a lone surrogate, and a token's JSON rarely has any.
    if "\\" in text and has_lone_surrogate(text, value):
        raise MalformedTokenError(f"{what} is not valid UTF-8 JSON")
    return value


def decode_json_object(segment: str, what: str) -> dict[str, Any]:
    """Decode a base64url segment holding a UTF-8 JSON object, strictly."""
    data = segment.encode("ascii") if segment.isascii() else b""
    if not data or data.translate(None, _B64URL_CHARS):
        raise MalformedTokenError(f"{what} is not base64url")
    return _decode_object(data.translate(_TO_STANDARD), what)


def decode_payload(jws: CompactJWS) -> dict[str, Any]:
    """Decode the payload of a parsed JWS (its characters checked by the parse), strictly."""
    return _decode_object(jws.standard_payload, "payload")


def looks_compact(token: str) -> bool:
    """Whether ``token`` has the shape of a compact JWS (three base64url segments)."""
    return _COMPACT.fullmatch(token) is not None


# An issuer signs every token with a handful of headers (one per key), so checked headers are
# remembered by their segment (in the standard alphabet: the mapping is one-to-one on
# base64url): a token from a known key skips the header's decoding. Only
# headers that passed every check are kept, and the bound keeps a flood of distinct headers
# from growing it.
_HEADERS: dict[bytes, dict[str, Any]] = {}
_MAX_CACHED_HEADERS = 256


def _checked_header(header_segment: bytes) -> dict[str, Any]:
    header = _decode_object(header_segment, "header")
    try:
        _check_header(header)
    except AuthError as exc:
        exc.header = header  # the audit log records its kid and alg, escaped
        raise
    return header


def _check_header(header: dict[str, Any]) -> None:
    for member in _REFUSED_HEADER_MEMBERS:
        if member in header:
            raise MalformedTokenError(f"header parameter {member!r} is not accepted")
    # RFC 7515 §4.1.9, §4.1.10: typ and cty, when present, are strings; "typ": null is not
    # "no typ", and a typ of ["secevent+jwt"] would pass the checks made on a string typ.
    for member in ("typ", "cty"):
        if member in header and not isinstance(header[member], str):
            raise MalformedTokenError(f"header {member} is not a string")
    cty = header.get("cty")
    if cty is not None and cty.upper() in {"JWT", "APPLICATION/JWT"}:
        # RFC 7519 §5.2: cty "JWT" means a nested JWT; we accept only one layer.
        raise MalformedTokenError("nested JWTs are not accepted")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise UnsupportedAlgorithmError("header alg is missing or not a string")
    if alg.lower() == "none":
        # RFC 8725 §3.1: never accept unsecured JWTs.
        raise UnsupportedAlgorithmError("alg none")
    # RFC 7515 §4.1.4: kid, when present, is a string; "kid": null is not "no kid", which a
    # sole key (a PEM key, the shared secret) accepts whatever the token names.
    if "kid" in header and not isinstance(header["kid"], str):
        raise MalformedTokenError("header kid is not a string")


def parse_credentials(credentials: bytes, text: str | None = None) -> CompactJWS | None:
    """Parse credentials made of exactly three base64url segments joined by dots.

    The fast path for request credentials: those are a b64token (RFC 6750 §2.1) too, so no
    other check is needed. ``text`` is ``credentials`` as text, when the caller has it.

    Returns:
        The parsed JWS, or ``None`` when the characters or the segments are not those of a
        compact JWS: the caller then runs the checks that name the error.

    Raises:
        MalformedTokenError, UnsupportedAlgorithmError: as ``parse_compact``.
    """
    standard = credentials.translate(_TO_STANDARD)
    segments = standard.split(b".", 3)
    # find() rather than "in": bytes.__contains__ first tries the operand as an integer.
    if len(segments) != 3 or standard.find(b"*") != -1:
        return None
    header_segment, payload_segment, signature_segment = segments
    if not (header_segment and payload_segment and signature_segment):
        return None
    header = _HEADERS.get(header_segment)
    if header is None:
        header = _checked_header(header_segment)
        if len(_HEADERS) >= _MAX_CACHED_HEADERS:
            _HEADERS.clear()
        _HEADERS[header_segment] = header
    try:
        signature = _b64decode(signature_segment)
    except AuthError as exc:
        exc.header = header
        raise
    token = credentials.decode("ascii") if text is None else text
    signing_input = credentials[: len(header_segment) + 1 + len(payload_segment)]
    return _new_jws(CompactJWS, (token, header, signing_input, signature, payload_segment))


def parse_compact(token: str) -> CompactJWS:
    """Split and check a compact JWS; decode its header and signature, not its payload.

    Raises:
        MalformedTokenError: anything but a strict compact JWS with an acceptable header.
        UnsupportedAlgorithmError: ``alg`` is missing, not a string, or ``none``.
    """
    if token.isascii():
        jws = parse_credentials(token.encode("ascii"), token)
        if jws is not None:
            return jws
    parts = token.count(".") + 1
    if parts == 5:
        raise MalformedTokenError("JWE (five segments) is not accepted")
    raise MalformedTokenError(f"not a compact JWS ({parts} segments or bad characters)")
