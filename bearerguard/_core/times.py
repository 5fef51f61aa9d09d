"""Instants given by users (epoch seconds or aware datetimes), and durations and counts
from configuration."""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal
from numbers import Integral, Real
from threading import TIMEOUT_MAX

from bearerguard.errors import ConfigurationError

__all__ = [
    "MAX_NUMERIC_DATE",
    "Instant",
    "check_count",
    "check_seconds",
    "check_wait",
    "is_numeric_date",
    "to_epoch",
]

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


def check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """A configured duration: a finite number of seconds, not negative (above 0 if
    ``positive``).

    NaN compares false with everything: a NaN grace or TTL turned every check made with it
    off. ``bool`` is an ``int``, but ``True`` is no duration.

    Raises:
        ConfigurationError: anything else.
    """
    least = "positive" if positive else "not negative"
    if isinstance(value, bool) or not isinstance(value, Real | Decimal):
        raise _refusal(name, f"a finite number of seconds, {least}", value)
    try:
        seconds = float(value)
    except (ValueError, OverflowError):  # Decimal("sNaN"); an int beyond any float
        raise _refusal(name, f"a finite number of seconds, {least}", value) from None
    if not (0 < seconds < math.inf if positive else 0 <= seconds < math.inf):  # NaN fails too
        raise _refusal(name, f"a finite number of seconds, {least}", value)
    return seconds


def check_wait(name: str, value: object) -> float:
    """A timeout: positive seconds (``check_seconds``), no longer than a thread can wait.

    Past ``threading.TIMEOUT_MAX`` (the longest wait Python's sockets and locks take) every
    wait raised OverflowError: a 500, or a worker thread dead of it.

    Raises:
        ConfigurationError: anything else.
    """
    seconds = check_seconds(name, value, positive=True)
    if seconds > TIMEOUT_MAX:
        raise ConfigurationError(f"{name} must be at most {TIMEOUT_MAX:.0f} seconds: {seconds!r}")
    return seconds


def check_count(name: str, value: object, *, least: int = 1) -> int:
    """A configured size or bound: a whole number, at least ``least``.

    A NaN or infinite bound compares false with every size: the bound was off.

    Raises:
        ConfigurationError: anything else (``bool`` included).
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise _refusal(name, f"a whole number, at least {least}", value)
    # Compared once converted: an Integral need not compare with an int (only int() is sure).
    count = int(value)
    if count < least:
        raise _refusal(name, f"a whole number, at least {least}", value)
    return count


_MAX_SHOWN = 60


def _refusal(name: str, wanted: str, value: object) -> ConfigurationError:
    """The error refusing setting ``name``, built only once refused: ``value`` is shown
    shortened, and a value that cannot be shown (an int past Python's 4300 digits for
    ``str()``, a failing ``repr``) by its type, so that the error is this one."""
    try:
        shown = repr(value)
    except Exception:  # noqa: BLE001 - any value's own failure
        size = f" of {value.bit_length()} bits" if isinstance(value, int) else ""
        shown = f"<{type(value).__name__}{size}>"
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 3] + "..."
    return ConfigurationError(f"{name} must be {wanted}: {shown}")
