"""A Schedule's free time from the recurring hours of its actors, as slot intervals (pure:
no storage here; ``generation.py`` stores them).

Where the hours come from (R4 elements where R4 has them, extensions of ``profiles/``
where it does not):

- PractitionerRole: ``availableTime`` and ``notAvailable``;
- HealthcareService: ``availableTime`` and ``notAvailable``;
- Location (a room) and the Schedule itself: the ``available-time`` and
  ``not-available`` extensions (the same shapes);
- the Schedule: ``slot-duration`` (the slot length; without it nothing is generated)
  and ``timezone`` (how the local times are read; else FHIR_SLOT_TIMEZONE).

Every party that states hours constrains: a slot is generated where all of them are
available for its whole length (a practitioner's hours within the room's), and none
of them is ``notAvailable``. A schedule where no party states hours gets no slots. Slots
are laid out back to back from the start of each available stretch of a day.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_server.datetimes import parse_range
from profiles import AVAILABLE_TIME, NOT_AVAILABLE, SLOT_DURATION, TIMEZONE

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "wk": 604800}
Interval = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class Hours:
    """One ``availableTime``: days of the week (0 = Monday; all when none are named),
    and the local times of day (None: the whole day)."""

    days: frozenset[int]
    start: time | None
    end: time | None

    def on(self, day: date, tz: ZoneInfo) -> Interval | None:
        if self.days and day.weekday() not in self.days:
            return None
        low = datetime.combine(day, self.start or time(0), tz)
        high = (
            datetime.combine(day, self.end, tz)
            if self.end is not None and self.end != time(0)
            else datetime.combine(day + timedelta(days=1), time(0), tz)
        )
        return (low.astimezone(UTC), high.astimezone(UTC)) if low < high else None


@dataclass(frozen=True, slots=True)
class Party:
    """What one actor (or the Schedule itself) says about its time."""

    hours: tuple[Hours, ...]  # empty: no constraint
    unavailable: tuple[Interval, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything that decides a Schedule's generated slots."""

    schedule_id: str
    duration: timedelta | None  # None: not generated
    tz: ZoneInfo
    parties: tuple[Party, ...]
    window: Interval  # slots starting and ending in it
    fields: dict[str, Any]  # serviceCategory, serviceType, specialty copied to slots

    def digest(self) -> str:
        """Changes when anything that decides the slots does (the window's end aside)."""
        text = repr((self.duration, str(self.tz), self.parties, sorted(self.fields.items())))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _extensions(resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension") or [] if e.get("url") == url]


def _parts(ext: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for sub in ext.get("extension") or []:
        values = [v for k, v in sub.items() if k.startswith("value")]
        if values:
            out.setdefault(sub.get("url", ""), []).append(values[0])
    return out


def _time(value: Any) -> time | None:
    if not isinstance(value, str):
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        return None


def _hours(item: dict[str, Any]) -> Hours:
    days = frozenset(DAYS.index(d) for d in item.get("daysOfWeek") or [] if d in DAYS)
    if item.get("allDay"):
        return Hours(days, None, None)
    return Hours(days, _time(item.get("availableStartTime")), _time(item.get("availableEndTime")))


def _period(period: Any) -> Interval | None:
    if not isinstance(period, dict):
        return None
    try:
        low = parse_range(period["start"])[0] if period.get("start") else datetime.min
        end = period.get("end")
        # an instant ends there; a date (or month, year) includes the whole of it
        high = parse_range(end)[0 if "T" in end else 1] if end else datetime.max
    except (ValueError, KeyError):
        return None
    low = low if low.tzinfo else low.replace(tzinfo=UTC)
    high = high if high.tzinfo else high.replace(tzinfo=UTC)
    return (low, high)


def _from_extensions(resource: dict[str, Any]) -> Party:
    """The ``available-time`` / ``not-available`` extensions, as R4 elements."""
    times = []
    for ext in _extensions(resource, AVAILABLE_TIME):
        p = _parts(ext)
        times.append(
            {
                "daysOfWeek": p.get("daysOfWeek", []),
                "allDay": (p.get("allDay") or [False])[0],
                "availableStartTime": (p.get("availableStartTime") or [None])[0],
                "availableEndTime": (p.get("availableEndTime") or [None])[0],
            }
        )
    off = [(_parts(ext).get("during") or [None])[0] for ext in _extensions(resource, NOT_AVAILABLE)]
    return _party(times, [{"during": d} for d in off])


def _party(times: Iterable[dict[str, Any]], off: Iterable[dict[str, Any]]) -> Party:
    periods = (_period(n.get("during")) for n in off)
    return Party(
        tuple(_hours(t) for t in times if isinstance(t, dict)),
        tuple(p for p in periods if p is not None),
    )


def party_of(resource: dict[str, Any]) -> Party:
    """What an actor of a Schedule (or the Schedule) says about its hours."""
    if resource.get("resourceType") in ("PractitionerRole", "HealthcareService"):
        return _party(resource.get("availableTime") or [], resource.get("notAvailable") or [])
    return _from_extensions(resource)


def duration_of(value: Any) -> timedelta | None:
    """A Duration (UCUM s, min, h, d, wk) as a timedelta; None when not one."""
    if not isinstance(value, dict):
        return None
    unit = value.get("code") or value.get("unit")
    amount = value.get("value")
    if unit not in _UNITS or not isinstance(amount, int | float) or amount <= 0:
        return None
    return timedelta(seconds=float(amount) * _UNITS[unit])


def timezone_of(schedule: dict[str, Any], default: str) -> ZoneInfo:
    for ext in _extensions(schedule, TIMEZONE):
        try:
            return ZoneInfo(str(ext.get("valueCode")))
        except (ZoneInfoNotFoundError, ValueError):
            break
    return ZoneInfo(default)


def plan_of(
    schedule_id: str,
    schedule: dict[str, Any] | None,
    actors: Sequence[dict[str, Any]],
    now: datetime,
    horizon: timedelta,
    default_tz: str,
) -> Plan:
    """The plan of a Schedule (None: deleted) with its stored actors."""
    if schedule is None or schedule.get("active") is False:
        return Plan(schedule_id, None, ZoneInfo("UTC"), (), (now, now), {})
    durations = [duration_of(e.get("valueDuration")) for e in _extensions(schedule, SLOT_DURATION)]
    fields: dict[str, Any] = {}
    for name in ("serviceCategory", "serviceType", "specialty"):
        if schedule.get(name):
            fields[name] = schedule[name]
    for actor in actors:  # the service's or role's, where the Schedule names none
        if actor.get("resourceType") == "HealthcareService":
            for mine, theirs in (("serviceCategory", "category"), ("serviceType", "type")):
                if actor.get(theirs) and mine not in fields:
                    fields[mine] = actor[theirs]
        if actor.get("specialty") and "specialty" not in fields:
            fields["specialty"] = actor["specialty"]
    horizon_period = _period(schedule.get("planningHorizon")) or (now, now + horizon)
    low = max(now, horizon_period[0])
    high = horizon_period[1] if schedule.get("planningHorizon", {}).get("end") else now + horizon
    return Plan(
        schedule_id,
        durations[0] if durations else None,
        timezone_of(schedule, default_tz),
        (party_of(schedule), *(party_of(a) for a in actors)),
        (low, max(low, high)),
        fields,
    )


def _intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo < hi:
                out.append((lo, hi))
    return out


def _union(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def slot_times(plan: Plan) -> list[Interval]:
    """The slots of the plan within its window, in order."""
    constraining = [p for p in plan.parties if p.hours]
    if plan.duration is None or not constraining:
        return []
    low, high = plan.window
    off = [o for p in plan.parties for o in p.unavailable if o[0] < high and o[1] > low]
    out: list[Interval] = []
    day = low.astimezone(plan.tz).date() - timedelta(days=1)
    last = high.astimezone(plan.tz).date()
    while day <= last:
        free: list[Interval] | None = None
        for party in constraining:
            spans = _union([i for h in party.hours if (i := h.on(day, plan.tz)) is not None])
            free = spans if free is None else _intersect(free, spans)
        for lo, hi in _union(free or []):
            t = lo
            while t + plan.duration <= hi:
                end = t + plan.duration
                if t >= low and end <= high and not any(o[0] < end and o[1] > t for o in off):
                    out.append((t, end))
                t = end
        day += timedelta(days=1)
    return out
