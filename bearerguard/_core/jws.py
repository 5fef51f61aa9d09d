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
from dataclasses import dataclass, field
from typing import Any

from bearerguard.errors import MalformedTokenError, UnsupportedAlgorithmError

__all__ = ["CompactJWS", "decode_json_object", "looks_compact", "parse_compact"]

_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")

# A canonical base64url string leaves the unused low bits of its last character zero
# (RFC 4648 §3.5); anything else decodes to the same bytes and would make tokens malleable.
_CANONICAL_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")

# Header parameters whose presence means processing we do not do: JWE (RFC 7516 §4.1.2,
# §4.1.3), unencoded payloads (RFC 7797 §3) and critical extensions (RFC 7515 §4.1.11).
_REFUSED_HEADER_MEMBERS = ("crit", "b64", "enc", "zip")


@dataclass(frozen=True, slots=True)
class CompactJWS:
    """A compact JWS split into its parts; the payload is not decoded until verified."""

    token: str = field(repr=False)
    header: dict[str, Any]
    signing_input: bytes = field(repr=False)
    payload_segment: str = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def alg(self) -> str:
        """The header's ``alg``, already checked to be a string."""
        alg: str = self.header["alg"]
        return alg


def _b64decode(segment: str) -> bytes:
    remainder = len(segment) % 4
    if remainder == 1 or (remainder and segment[-1] not in _CANONICAL_LAST[remainder]):
        raise MalformedTokenError("non-canonical base64url segment")
    # The characters were checked by _COMPACT: map the url-safe alphabet onto the standard
    # one and let the C decoder work (surplus padding is ignored by a2b_base64).
    try:
        return binascii.a2b_base64(segment.encode("ascii").translate(_URLSAFE) + b"==")
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex rules these out
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


def decode_json_object(segment: str, what: str) -> dict[str, Any]:
    """Decode a base64url segment holding a UTF-8 JSON object, strictly."""
    if _SEGMENT.fullmatch(segment) is None:  # parse_compact checked it; other callers may not
        raise MalformedTokenError(f"{what} is not base64url")
    raw = _b64decode(segment)
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except MalformedTokenError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedTokenError(f"{what} is not valid UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise MalformedTokenError(f"{what} is not a JSON object")
    return value


def looks_compact(token: str) -> bool:
    """Whether ``token`` has the shape of a compact JWS (three base64url segments)."""
    return _COMPACT.fullmatch(token) is not None


# An issuer signs every token with a handful of headers (one per key), so checked headers are
# remembered by their segment: a token from a known key skips the header's decoding. Only
# headers that passed every check are kept, and the bound keeps a flood of distinct headers
# from growing it.
_HEADERS: dict[str, dict[str, Any]] = {}
_MAX_CACHED_HEADERS = 256


def _checked_header(header_segment: str) -> dict[str, Any]:
    header = decode_json_object(header_segment, "header")
    for member in _REFUSED_HEADER_MEMBERS:
        if member in header:
            raise MalformedTokenError(f"header parameter {member!r} is not accepted")
    cty = header.get("cty")
    if cty is not None and (not isinstance(cty, str) or cty.upper() in {"JWT", "APPLICATION/JWT"}):
        # RFC 7519 §5.2: cty "JWT" means a nested JWT; we accept only one layer.
        raise MalformedTokenError("nested JWTs are not accepted")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise UnsupportedAlgorithmError("header alg is missing or not a string")
    if alg.lower() == "none":
        # RFC 8725 §3.1: never accept unsecured JWTs.
        raise UnsupportedAlgorithmError("alg none")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise MalformedTokenError("header kid is not a string")
    return header


def parse_compact(token: str) -> CompactJWS:
    """Split and check a compact JWS; decode its header and signature, not its payload.

    Raises:
        MalformedTokenError: anything but a strict compact JWS with an acceptable header.
        UnsupportedAlgorithmError: ``alg`` is missing, not a string, or ``none``.
    """
    match = _COMPACT.fullmatch(token)
    if match is None:
        parts = token.count(".") + 1
        if parts == 5:
            raise MalformedTokenError("JWE (five segments) is not accepted")
        raise MalformedTokenError(f"not a compact JWS ({parts} segments or bad characters)")
    header_segment, payload_segment, signature_segment = match.groups()
    header = _HEADERS.get(header_segment)
    if header is None:
        header = _checked_header(header_segment)
        if len(_HEADERS) >= _MAX_CACHED_HEADERS:
            _HEADERS.clear()
        _HEADERS[header_segment] = header
    return CompactJWS(
        token=token,
        header=header,
        signing_input=token[: match.end(2)].encode("ascii"),
        payload_segment=payload_segment,
        signature=_b64decode(signature_segment),
    )
