"""Instants given by users: epoch seconds or aware datetimes."""

from __future__ import annotations

import math
from datetime import datetime

__all__ = ["MAX_NUMERIC_DATE", "Instant", "is_numeric_date", "to_epoch"]

Instant = int | float | datetime
"""Epoch seconds (int or float) or an aware ``datetime``."""

MAX_NUMERIC_DATE = 253_402_300_799.0
"""9999-12-31T23:59:59Z: a later NumericDate is refused as out of range."""


def is_numeric_date(value: object) -> bool:
    """Whether a decoded JSON value is a NumericDate (RFC 7519 §2) in range.

    Booleans are not (``bool`` is an ``int``). The range is compared before any ``float()``:
    NaN fails every comparison, and an integer too large for a float cannot overflow.
    """
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and 0 <= value <= MAX_NUMERIC_DATE
    )


def to_epoch(value: Instant) -> float:
    """Convert an instant to epoch seconds.

    Raises:
        ValueError: a naive datetime (its meaning depends on the machine's zone), or a
            number that is not finite or lies beyond year 9999.
        TypeError: anything else.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: pass an aware datetime or epoch seconds")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected epoch seconds or an aware datetime, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("instant is not finite")
    # Compared before float(): that of a huge integer would overflow. A float is held to the
    # same range as an int: 1e16 is no more an instant than 10**16 (and a store keeping it in
    # milliseconds would overflow a 64-bit integer).
    if abs(value) > MAX_NUMERIC_DATE:
        raise ValueError("instant is out of range")
    return float(value)
