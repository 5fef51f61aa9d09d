"""Instants given by users: epoch seconds or aware datetimes."""

from __future__ import annotations

import math
from datetime import datetime

__all__ = ["Instant", "to_epoch"]

Instant = int | float | datetime
"""Epoch seconds (int or float) or an aware ``datetime``."""


def to_epoch(value: Instant) -> float:
    """Convert an instant to epoch seconds.

    Raises:
        ValueError: a naive datetime (its meaning depends on the machine's zone), or a
            number that is not finite.
        TypeError: anything else.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: pass an aware datetime or epoch seconds")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected epoch seconds or an aware datetime, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError("instant is not finite")
    return float(value)
