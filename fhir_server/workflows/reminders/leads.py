"""Lead times (FHIR_REMINDER_LEAD_TIMES) and which reminder of an appointment is due
when.

An appointment gets one reminder per lead time before its start. Two rules keep it to
what a patient needs:
- when the appointment is booked or moved, a reminder whose time has already passed is
  not sent (the patient has just booked) unless every one has passed: then the last
  (shortest) one goes out at once;
- when reminders are late (workers were down), only the shortest overdue one is sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ONE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_leads(value: str) -> tuple[timedelta, ...]:
    """The lead times, longest first; ValueError names a malformed one."""
    found: set[timedelta] = set()
    for part in value.split(","):
        m = _ONE.match(part)
        if m is None:
            raise ValueError(
                f"{part.strip()!r} is not a lead time (a number and s, m, h or d: 48h)"
            )
        lead = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
        if lead <= timedelta(0):
            raise ValueError(f"{part.strip()!r}: a lead time must be positive")
        found.add(lead)
    return tuple(sorted(found, reverse=True))


def seconds(lead: timedelta) -> int:
    return round(lead.total_seconds())


def first_due(
    leads: Sequence[timedelta], start: datetime, now: datetime
) -> tuple[datetime, timedelta] | None:
    """The first reminder of an appointment booked (or moved) ``now``: (due, lead)."""
    if start <= now or not leads:
        return None
    ahead = [lead for lead in leads if start - lead > now]
    lead = max(ahead) if ahead else min(leads)
    return start - lead, lead


def to_send(
    leads: Sequence[timedelta], start: datetime, planned: timedelta, now: datetime
) -> timedelta:
    """The lead to send now for a reminder planned at ``planned``: the shortest one
    whose time has passed (a late worker sends one message, not each missed one)."""
    overdue = [lead for lead in leads if lead <= planned and start - lead <= now]
    return min(overdue) if overdue else planned


def next_due(
    leads: Sequence[timedelta], start: datetime, sent: timedelta
) -> tuple[datetime, timedelta] | None:
    """The reminder after the one of lead ``sent``: the next shorter lead, if any."""
    shorter = [lead for lead in leads if lead < sent]
    if not shorter:
        return None
    lead = max(shorter)
    return start - lead, lead
