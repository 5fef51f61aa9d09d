"""How long a fetched response stays fresh, read from its headers (RFC 9111). Pure: the
time the response was received is passed in."""

from __future__ import annotations

import calendar
import re
import time

__all__ = ["freshness_lifetime", "http_date"]

# RFC 9110 §5.6.2: a token; §5.6.4: a quoted-string, whose quoted-pairs stand for their
# character (the alternatives are disjoint: matching stays linear). RFC 9111 §5.2:
# cache-directive = token [ "=" ( token / quoted-string ) ].
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_DIRECTIVE = re.compile(rf'({_TCHARS})(?:=(?:({_TCHARS})|"((?:[^"\\]|\\.)*)"))?')
_QUOTED_PAIR = re.compile(r"\\(.)")
_DELTA_SECONDS = re.compile(r"[0-9]+")  # RFC 9111 §1.2.2: 1*DIGIT, ASCII digits only
# RFC 9111 §1.2.2: delta-seconds too large to represent count as 2**31, never as unsaid.
_MAX_DELTA_SECONDS = 2**31
_LIFETIMES = ("max-age", "s-maxage")
_NO_REUSE = ("no-cache", "no-store")
_STALE = 0.0

# RFC 9110 §5.6.7: an HTTP-date is an IMF-fixdate; recipients accept the two obsolete forms
# as well. Names are case-sensitive, and the zone is always GMT.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(?P<month>" + "|".join(_MONTHS) + ")"
_DAY_NAME = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_CLOCK = "(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_HTTP_DATES = (
    re.compile(rf"{_DAY_NAME}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_CLOCK} GMT"),
    re.compile(
        r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
        rf"(?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_CLOCK} GMT"
    ),
    re.compile(rf"{_DAY_NAME} {_MONTH} (?P<day>[0-9]{{2}}| [0-9]) {_CLOCK} (?P<year>[0-9]{{4}})"),
)


def _full_year(two_digits: int, now: float) -> int | None:
    """RFC 9110 §5.6.7: an rfc850-date's year is the one ending in those digits that lies
    at most 50 years ahead of ``now`` (and so less than 50 behind)."""
    try:
        this_year = time.gmtime(now).tm_year
    except (OverflowError, OSError, ValueError):  # a clock out of any calendar
        return None
    year = this_year - this_year % 100 + two_digits
    if year > this_year + 50:
        return year - 100
    return year + 100 if year <= this_year - 50 else year


def http_date(value: str, now: float) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) as epoch seconds; ``None`` if it is not one.

    ``now`` places a two-digit year (the obsolete rfc850-date form).
    """
    for form in _HTTP_DATES:
        found = form.fullmatch(value)
        if found is not None:
            break
    else:
        return None
    year = int(found["year"]) if len(found["year"]) == 4 else _full_year(int(found["year"]), now)
    month = _MONTHS.index(found["month"]) + 1
    day, hour, minute, second = (int(found[name]) for name in ("day", "hour", "minute", "second"))
    # RFC 9110 §5.6.7: second 60 is a leap second; a day the month lacks is no date.
    # Years beyond 9999 (a two-digit one placed by a clock near then) no calendar takes.
    if year is None or not 1 <= year <= 9999 or hour > 23 or minute > 59 or second > 60:
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    # A leap second (second 60) is the next second's start: timegm counts it so.
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def _delta_seconds(digits: str) -> int:
    """A delta-seconds value, at most 2**31 (RFC 9111 §1.2.2)."""
    # The length first (int() refuses strings of over 4300 digits), of the value: leading
    # zeros count for nothing.
    digits = digits.lstrip("0")
    return _MAX_DELTA_SECONDS if len(digits) > 10 else min(int(digits or "0"), _MAX_DELTA_SECONDS)


def _elements(value: str) -> list[str] | None:
    """The members of a comma-separated list (RFC 9110 §5.6.1), a comma inside a
    quoted-string (§5.6.4) kept in its member, each stripped of optional whitespace;
    ``None`` when a quoted-string is never closed: where the members end is unknown."""
    members: list[str] = []
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            escaped, quoted = char == "\\", char != '"'
        elif char == '"':
            quoted = True
        elif char == ",":
            members.append(value[start:index].strip(" \t"))
            start = index + 1
    if quoted:
        return None
    members.append(value[start:].strip(" \t"))
    return members


def _seconds(member: str) -> float:
    """The delta-seconds of a ``max-age`` or ``s-maxage`` member; stale when invalid."""
    directive = _DIRECTIVE.fullmatch(member)
    if directive is None:
        # RFC 9111 §4.2.1: a response with invalid freshness information (an argument that
        # is not 1*DIGIT, a missing one, a stray quote) is best considered stale.
        return _STALE
    token, quoted = directive[2], directive[3]
    # RFC 9111 §5.2: recipients ought to accept the quoted-string form as well as the token.
    argument = token if quoted is None else _QUOTED_PAIR.sub(r"\1", quoted)
    if argument is None or not _DELTA_SECONDS.fullmatch(argument):
        return _STALE
    return float(_delta_seconds(argument))


def _directives(value: str) -> tuple[bool, dict[str, float]]:
    """Whether ``no-cache`` or ``no-store`` is said, and the seconds of each lifetime
    directive: stale for an invalid one, or one given twice with different values."""
    members = _elements(value)
    if members is None:
        # A quote never closed hides every directive after it, no-store or max-age=0 among
        # them: invalid freshness information, best considered stale (RFC 9111 §4.2.1).
        return True, {}
    no_reuse = False
    found: dict[str, float] = {}
    for member in members:
        # RFC 9111 §5.2: directive names are compared case-insensitively.
        name = member.partition("=")[0].strip(" \t").lower()
        if name in _NO_REUSE:
            no_reuse = True
        elif name in _LIFETIMES:
            said = _seconds(member)
            # RFC 9111 §4.2.1: a directive given twice with different values (a proxy adding
            # its own header line) leaves the response stale, not fresh for the larger one.
            found[name] = said if found.setdefault(name, said) == said else _STALE
    return no_reuse, found


def _age(value: str | None) -> int | None:
    """The seconds of an ``Age`` header; ``None`` if absent or invalid (RFC 9111 §5.1)."""
    if value is None:
        return None
    # RFC 9111 §5.1: a list-based Age (two header lines, joined) counts by its first member;
    # when that is invalid, the field is ignored.
    first = value.partition(",")[0].strip(" \t")
    return _delta_seconds(first) if _DELTA_SECONDS.fullmatch(first) else None


def _expires_in(expires: str, date: str | None, received: float) -> float:
    """``Expires`` minus ``Date`` (RFC 9111 §4.2.1), at most 2**31 seconds; stale when
    ``Expires`` is invalid (RFC 9111 §5.3: "0" above all)."""
    ends = http_date(expires, received)
    if ends is None:
        return _STALE
    # RFC 9111 §4.2.1, RFC 9110 §6.6.1: without a (usable) Date, the time it was received.
    sent = None if date is None else http_date(date, received)
    lifetime = ends - (received if sent is None else sent)
    return min(max(lifetime, 0.0), float(_MAX_DELTA_SECONDS))


def freshness_lifetime(
    cache_control: str | None,
    age: str | None = None,
    *,
    expires: str | None = None,
    date: str | None = None,
    received: float,
) -> float | None:
    """How long a response stays fresh, from its headers (RFC 9111 §4.2); ``None`` if unsaid.

    The first that applies (a private cache's order, RFC 9111 §4.2.1):

    * ``no-cache`` or ``no-store``: 0, the most restrictive directive is honoured;
    * ``max-age`` (RFC 9111 §5.2.2.1); 0 when invalid or given twice with different values;
    * ``Expires`` minus ``Date`` (RFC 9111 §5.3); 0 when ``Expires`` is invalid;
    * ``s-maxage``, though it is for shared caches: better than no word at all.

    Args:
        cache_control: the ``Cache-Control`` header.
        age: the ``Age`` header: the seconds a cache in between already held the response,
            which its freshness has used up (RFC 9111 §4.2.3, §5.1).
        expires: the ``Expires`` header.
        date: the ``Date`` header.
        received: when the response came (epoch seconds), for a missing ``Date``.
    """
    no_reuse, found = _directives(cache_control or "")
    if no_reuse:
        return _STALE
    # RFC 9111 §5.3: beside max-age, Expires is ignored. RFC 9111 §5.2.2.10: s-maxage is
    # for shared caches; ours is private, so max-age wins wherever it stands, and a conflict
    # in an s-maxage beside it is ignored with it.
    lifetime = found.get("max-age")
    if lifetime is None:
        lifetime = (
            found.get("s-maxage") if expires is None else _expires_in(expires, date, received)
        )
    held = _age(age)
    if lifetime is not None and held is not None:
        lifetime = max(lifetime - held, 0.0)
    return lifetime
