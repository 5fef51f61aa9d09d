"""Lone surrogates: JSON string escapes that decode to text no UTF-8 encoder can carry.

RFC 8259 §8.2 leaves the meaning of a string holding an unpaired surrogate (``"\\ud800"``)
to each implementation, and Python decodes one into a ``str`` that every later ``encode``
refuses: a log renderer printing it raises. A JOSE header or claims set is UTF-8 JSON (RFC
7515 §4, RFC 7519 §7.2), so text that cannot be UTF-8 is refused where it is decoded.
"""

from __future__ import annotations

import json

__all__ = ["has_lone_surrogate"]


def has_lone_surrogate(text: str, value: object) -> bool:
    """Whether ``value``, decoded from the JSON ``text``, holds an unpaired surrogate.

    Only a ``\\u`` escape can produce one, so text without one is answered by a search
    (hot callers test for a backslash first: one character is found fastest); the rare text
    with one is checked exactly by encoding it again.
    """
    if "\\u" not in text:
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return True
    return False
