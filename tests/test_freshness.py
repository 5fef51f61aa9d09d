"""Pure unit tests of how long a response stays fresh (RFC 9111 §4.2): no I/O, no clock."""

from __future__ import annotations

import calendar
import time

import pytest

from bearerguard._core.freshness import freshness_lifetime, http_date
from bearerguard._core.keycache import RefreshPolicy

POLICY = RefreshPolicy(default_ttl=300, min_ttl=60, max_ttl=3600, cooldown=30, max_stale=600)
# Sun, 06 Nov 1994 08:49:37 GMT: RFC 9110 §5.6.7's example.
T0 = float(calendar.timegm((1994, 11, 6, 8, 49, 37, 0, 0, 0)))


# -- Cache-Control and Age ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("public", None),
        ("max-age=120", 120.0),
        ("public, max-age=120", 120.0),
        ("public,max-age=120", 120.0),
        ("Max-Age=120", 120.0),
        ('max-age="120"', 120.0),
        ("max-age=0", 0.0),
        # RFC 9111 §1.2.2: delta-seconds is 1*DIGIT; §4.2.1: a response whose freshness
        # directive is invalid is stale (then min_ttl), never fresh for a number read out of it.
        ("max-age=-5", 0.0),
        ("max-age=abc", 0.0),
        ("max-age=600abc", 0.0),
        ("max-age=600 abc", 0.0),
        ("max-age=+600", 0.0),
        ("max-age=6.5", 0.0),
        ("max-age=0x10", 0.0),
        ("max-age=", 0.0),
        ("max-age", 0.0),
        ('max-age=""', 0.0),
        ('max-age="600', 0.0),
        ('max-age=600"', 0.0),
        ('max-age="600"abc', 0.0),
        ("max-age = 600", 0.0),
        ("s-maxage=60x", 0.0),
        # RFC 9111 §5.2: recipients ought to accept the quoted-string form too (RFC 9110
        # §5.6.4: a quoted-pair stands for its character).
        ('max-age="6\\00"', 600.0),
        # A quoted argument is one value: the commas and names inside it are not directives.
        ('private="x, max-age=86400", max-age=60', 60.0),
        ('no-cache="a, b", max-age=60', 0.0),
        ("s-maxage=90", 90.0),
        # A shared cache's lifetime never overrides our own (RFC 9111 §5.2.2.10).
        ("public, s-maxage=86400, max-age=60", 60.0),
        ("max-age=60, s-maxage=86400", 60.0),
        ("no-store", 0.0),
        ("no-cache", 0.0),
        ("public, max-age=600, no-cache", 0.0),
        ('no-cache="Set-Cookie", max-age=600', 0.0),
        ("NO-STORE", 0.0),
        # Directive names that merely contain the words are not those directives.
        ("x-no-store-ext=1, max-age=120", 120.0),
        ("x-max-age=120", None),
        # RFC 9111 §4.2.1: conflicting values of one directive leave the response stale.
        ("max-age=60, max-age=86400", 0.0),
        ("max-age=86400, max-age=60", 0.0),
        ("s-maxage=60, s-maxage=86400", 0.0),
        ("max-age=60, max-age=60", 60.0),
        # RFC 9111 §1.2.2: delta-seconds is any run of digits, leading zeros included, and
        # one too large to represent is 2**31 seconds.
        ("max-age=0000000000600", 600.0),
        ("max-age=12345678901", 2.0**31),
        ("max-age=" + "9" * 5000, 2.0**31),
        # RFC 9111 §5.2.2.10: beside max-age, s-maxage is ignored, conflicting or not.
        ("max-age=600, s-maxage=60, s-maxage=86400", 600.0),
    ],
)
def test_cache_control(header: str | None, expected: float | None) -> None:
    assert freshness_lifetime(header, received=T0) == expected


@pytest.mark.parametrize(
    ("header", "age", "expected"),
    [
        # RFC 9111 §4.2.3: a response a cache in between held for a while has used up that
        # much of its freshness.
        ("max-age=3600", "3500", 100.0),
        ("max-age=3600", "7200", 0.0),
        ("max-age=3600", " 0 ", 3600.0),
        ("max-age=3600", "-5", 3600.0),  # not delta-seconds: ignored
        ("max-age=3600", "abc", 3600.0),
        # RFC 9111 §1.2.2: an Age too large to represent is 2**31 seconds, not unsaid.
        ("max-age=3600", "99999999999", 0.0),
        ("max-age=3600", "9" * 5000, 0.0),
        ("max-age=3600", "0000000000060", 3540.0),
        ("public", "100", None),
        ("no-store", "100", 0.0),
        # RFC 9111 §5.1: a list-based Age (two header lines joined) counts its first member,
        # never none: ignored, it left the set fresh for all of its max-age.
        ("max-age=3600", "3500, 3500", 100.0),
        ("max-age=3600", "3500,10", 100.0),
        ("max-age=3600", "3500 , abc", 100.0),
        # ... and when that first member is invalid, the field is ignored (RFC 9111 §5.1).
        ("max-age=3600", "abc, 3500", 3600.0),
        ("max-age=3600", ", 3500", 3600.0),
    ],
)
def test_the_age_is_subtracted(header: str, age: str, expected: float | None) -> None:
    assert freshness_lifetime(header, age, received=T0) == expected


@pytest.mark.parametrize(
    "header",
    [
        # A quote never closed leaves the rest of the list unreadable (RFC 9110 §5.6.4): the
        # directives after it may say anything, no-store included. Read as unsaid, it made
        # the set fresh for default_ttl; invalid freshness information is stale (RFC 9111
        # §4.2.1).
        'ext="x, no-store',
        'ext="x, max-age=0',
        'public, ext="x',
        'max-age=60, ext="x\\',
    ],
)
def test_a_quote_never_closed_leaves_the_response_stale(header: str) -> None:
    assert freshness_lifetime(header, received=T0) == 0.0


def test_a_huge_max_age_is_still_a_number() -> None:
    value = freshness_lifetime("max-age=99999999999999", received=T0)
    assert value is not None
    assert POLICY.ttl(value) == POLICY.max_ttl


# -- HTTP-date ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 format
        "Sun Nov  6 08:49:37 1994",  # ANSI C's asctime() format
    ],
)
def test_the_three_http_date_forms(value: str) -> None:
    assert http_date(value, T0) == T0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0",
        "-1",
        "1994-11-06T08:49:37Z",
        "784111777",
        "Sun, 06 Nov 1994 08:49:37",  # no zone
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "sun, 06 nov 1994 08:49:37 GMT",  # names are case-sensitive
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",  # November has 30 days
        "Sun, 29 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        " Sun, 06 Nov 1994 08:49:37 GMT",
        # Two header lines joined: not one date.
        "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT\x00",
        "Sun, ٠٦ Nov 1994 08:49:37 GMT",  # digits are ASCII digits
    ],
)
def test_what_is_not_an_http_date(value: str) -> None:
    assert http_date(value, T0) is None


def test_a_leap_second_and_a_leap_day_are_dates() -> None:
    assert http_date("Sat, 31 Dec 2016 23:59:60 GMT", T0) == calendar.timegm(
        (2017, 1, 1, 0, 0, 0, 0, 0, 0)
    )
    assert http_date("Thu, 29 Feb 2024 00:00:00 GMT", T0) is not None


@pytest.mark.parametrize(
    ("now_year", "two_digits", "year"),
    [
        # RFC 9110 §5.6.7: a year more than 50 years ahead is the last one in the past with
        # those digits.
        (2025, 75, 2075),
        (2025, 76, 1976),
        (2025, 94, 1994),
        (2025, 0, 2000),
        (2090, 5, 2105),
        (2090, 40, 2140),
        (2090, 41, 2041),
    ],
)
def test_an_rfc850_two_digit_year(now_year: int, two_digits: int, year: int) -> None:
    now = float(calendar.timegm((now_year, 6, 1, 0, 0, 0, 0, 0, 0)))
    value = f"Monday, 01-Jan-{two_digits:02d} 00:00:00 GMT"
    assert http_date(value, now) == calendar.timegm((year, 1, 1, 0, 0, 0, 0, 0, 0))


def test_an_rfc850_date_with_a_clock_out_of_any_calendar_is_none() -> None:
    assert http_date("Sunday, 06-Nov-94 08:49:37 GMT", 1e300) is None


def test_an_rfc850_year_past_9999_is_none() -> None:
    # A clock in 9990 places "00" in 10000, which no calendar function takes: a ValueError
    # raised out of the fetch, and the key set it brought was lost.
    now = float(calendar.timegm((9990, 6, 1, 0, 0, 0, 0, 0, 0)))
    assert http_date("Monday, 01-Jan-00 00:00:00 GMT", now) is None
    assert freshness_lifetime(None, expires="Monday, 01-Jan-00 00:00:00 GMT", received=now) == 0


# -- Expires ------------------------------------------------------------------------------

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


def later(seconds: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(T0 + seconds))


@pytest.mark.parametrize(
    ("cache_control", "expires", "date", "expected"),
    [
        # RFC 9111 §4.2.1: without max-age, Expires minus Date.
        (None, later(1200), DATE, 1200.0),
        ("public", later(1200), DATE, 1200.0),
        (None, later(0), DATE, 0.0),
        (None, later(-86_400), DATE, 0.0),  # already expired
        # Date is the server's clock, as Expires is: our own does not count beside it.
        (None, later(1200), later(600), 600.0),
        # RFC 9111 §5.3: an invalid Expires ("0" above all) is already expired.
        (None, "0", DATE, 0.0),
        (None, "-1", DATE, 0.0),
        (None, "", DATE, 0.0),
        (None, "tomorrow", DATE, 0.0),
        (None, f"{later(1200)}, {later(1200)}", DATE, 0.0),  # two lines: stale (§4.2.1)
        # RFC 9111 §5.3: beside max-age, Expires is ignored, valid or not.
        ("max-age=120", later(1200), DATE, 120.0),
        ("max-age=1200", "0", DATE, 1200.0),
        ("max-age=600abc", later(1200), DATE, 0.0),  # an invalid max-age is still there
        # s-maxage is a shared cache's: a private cache reads Expires before it.
        ("s-maxage=120", later(1200), DATE, 1200.0),
        ("s-maxage=120", None, DATE, 120.0),
        # The most restrictive directive is honoured (RFC 9111 §4.2.1).
        ("no-store", later(1200), DATE, 0.0),
        ("no-cache", later(1200), DATE, 0.0),
        # RFC 9111 §1.2.2: at most 2**31 s, as max-age.
        (None, "Fri, 31 Dec 9999 23:59:59 GMT", DATE, 2.0**31),
        (None, None, DATE, None),
    ],
)
def test_expires(
    cache_control: str | None, expires: str | None, date: str, expected: float | None
) -> None:
    lifetime = freshness_lifetime(cache_control, expires=expires, date=date, received=T0 + 5)
    assert lifetime == expected


@pytest.mark.parametrize("date", [None, "", "yesterday", f"{DATE}, {DATE}"])
def test_expires_without_a_usable_date_counts_from_when_it_was_received(
    date: str | None,
) -> None:
    # RFC 9111 §4.2.1, RFC 9110 §6.6.1: the time the response was received stands in.
    assert freshness_lifetime(None, expires=later(1200), date=date, received=T0 + 200) == 1000.0


def test_the_age_counts_against_expires_too() -> None:
    # RFC 9111 §4.2.3: a cache in between held it for 1000 of its 1200 s.
    lifetime = freshness_lifetime(None, "1000", expires=later(1200), date=DATE, received=T0)
    assert lifetime == 200.0
    assert freshness_lifetime(None, "5000", expires=later(1200), date=DATE, received=T0) == 0.0
