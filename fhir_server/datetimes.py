"""FHIR date/time values as instants and ranges.

A FHIR dateTime carries its precision ("2020" is the whole year), so a parsed value is
the half-open instant range [low, high) it covers (search.html#date). Values without a
time zone are taken as UTC, the server's time zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

_DATETIME = re.compile(
    r"(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<hour>\d{2}):(?P<minute>\d{2})(:(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,  # \d is 0-9 only, not every script's digits
)


# The instants the server represents: Python's datetime range, at the millisecond
# precision of MongoDB (BSON dates). A value naming an instant outside it is refused; the
# end of a value's precision range is clamped to it ("9999" ends at LATEST).
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


def now() -> datetime:
    """The current instant at MongoDB's precision (milliseconds), in UTC."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def after(previous: datetime | None) -> datetime:
    """Now, but strictly later than ``previous``: versions of one resource never share
    a lastUpdated, so history order by time is also version order."""
    t = now()
    if previous is not None and t <= previous:
        t = previous + timedelta(milliseconds=1)
    return t


def format_instant(t: datetime) -> str:
    """``2026-12-07T16:05:26.123+00:00``: isoformat is C, strftime was 4x slower and a
    tenth of making an audit record."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def http_date(t: datetime) -> str:
    return format_datetime(t.astimezone(UTC), usegmt=True)


def parse_range(value: str) -> tuple[datetime, datetime]:
    """The [low, high) range of a FHIR date, dateTime or instant; ValueError if malformed
    or if the instant it names lies outside [EARLIEST, LATEST] (in UTC, so
    "9999-12-31T23:59:59-14:00" is out: it is 10000-01-01T13:59:59Z)."""
    try:
        low, high = _range(value)
    except OverflowError:
        raise ValueError(f"{value!r} is outside the supported range (years 1 to 9999)") from None
    if low < EARLIEST or low > LATEST:
        raise ValueError(f"{value!r} is outside the supported range (years 1 to 9999)")
    return low, min(high, LATEST)


def stored_range(value: str) -> tuple[datetime, datetime]:
    """The [low, high) range of a date in a stored resource, for its index: as
    parse_range, but an instant that only its time zone puts outside [EARLIEST, LATEST]
    is clamped to the nearer limit instead of refused. datatypes.html#dateTime allows
    any year 0001-9999 with any offset -14:00..+14:00, so "9999-12-31T23:59:59-14:00"
    (10000-01-01T13:59:59Z) is a valid value: indexed at LATEST, ``ge9999-12-31``
    finds it and ``lt9999-12-31`` does not. ValueError if malformed."""
    try:
        return parse_range(value)
    except ValueError:
        m = _DATETIME.fullmatch(value.strip())
        if m is None or not m["tz"] or m["tz"] == "Z":
            raise
    local = value.strip()[: m.start("tz")]  # the same wall-clock time, in UTC
    low, high = parse_range(local)
    sign = 1 if m["tz"][0] == "+" else -1
    hours, minutes = m["tz"][1:].split(":")
    offset = sign * timedelta(hours=int(hours), minutes=int(minutes))
    return _shifted(low, offset), _shifted(high, offset)


def _shifted(t: datetime, offset: timedelta) -> datetime:
    """``t`` (a wall-clock time read as UTC) at UTC offset ``offset``, in UTC, clamped
    to [EARLIEST, LATEST]."""
    try:
        return min(max(t - offset, EARLIEST), LATEST)
    except OverflowError:
        return LATEST if offset < timedelta(0) else EARLIEST


def widened(low: datetime, high: datetime, margin: timedelta) -> tuple[datetime, datetime]:
    """[low - margin, high + margin), clamped to [EARLIEST, LATEST] (the "ap" prefix)."""
    low = low - margin if low - EARLIEST > margin else EARLIEST
    high = high + margin if LATEST - high > margin else LATEST
    return low, high


def _range(value: str) -> tuple[datetime, datetime]:
    m = _DATETIME.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a FHIR date/dateTime")
    g = m.groupdict()
    year = int(g["year"])
    month = int(g["month"] or 1)
    day = int(g["day"] or 1)
    hour = int(g["hour"] or 0)
    minute = int(g["minute"] or 0)
    second = int(g["second"] or 0)
    fraction = g["fraction"] or ""
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    tz: timezone = UTC  # a time without a zone is read as UTC (the server's zone)
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hh, mm = g["tz"][1:].split(":")
        tz = timezone(sign * timedelta(hours=int(hh), minutes=int(mm)))
    low = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz).astimezone(UTC)
    try:
        if g["month"] is None:
            high = low.replace(year=year + 1)
        elif g["day"] is None:
            high = (low.replace(day=28) + timedelta(days=4)).replace(day=1)
        elif g["hour"] is None:
            high = low + timedelta(days=1)
        elif g["second"] is None:
            high = low + timedelta(minutes=1)
        elif not fraction:
            high = low + timedelta(seconds=1)
        else:
            digits = len(fraction) - 1
            high = low + timedelta(microseconds=10 ** max(0, 6 - digits))
    except (OverflowError, ValueError):  # the range runs past year 9999: it ends there
        high = LATEST
    return low, high
