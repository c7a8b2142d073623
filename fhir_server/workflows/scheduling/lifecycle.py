"""Appointment life cycle: which status may follow which (docs/scheduling.md
publishes the table), and the minimum notice a patient must give to change or cancel.

R4 leaves the transitions to the implementation (appointment.html#status: "the status
of the appointment ... may change"); this table follows the workflow of the clinic
systems the server replaces: a request awaits confirmation or is held (pending),
booked, then the patient arrives/checks in and the visit is fulfilled, or it is
cancelled or missed (noshow).
Keeping the status is always allowed (an edit of other elements). A create may start
in any status (an import brings past appointments as they are); a delete is not a
transition.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from fhir_server.outcome import FhirError
from fhir_server.workflows.pipeline import Rule, Write
from fhir_server.workflows.scheduling.booking import instant, is_active

_CLOSE = ("cancelled", "entered-in-error")
TRANSITIONS: dict[str, frozenset[str]] = {
    "proposed": frozenset({"pending", "booked", "waitlist", *_CLOSE}),
    "pending": frozenset({"booked", "waitlist", *_CLOSE}),
    "waitlist": frozenset({"pending", "booked", *_CLOSE}),
    "booked": frozenset({"arrived", "checked-in", "fulfilled", "noshow", *_CLOSE}),
    "arrived": frozenset({"checked-in", "fulfilled", *_CLOSE}),
    "checked-in": frozenset({"arrived", "fulfilled", *_CLOSE}),
    "fulfilled": frozenset({"entered-in-error"}),
    "cancelled": frozenset({"entered-in-error"}),
    "noshow": frozenset({"entered-in-error"}),
    "entered-in-error": frozenset(),
}
STATUSES = tuple(TRANSITIONS)


def allowed(old: str, new: str) -> bool:
    return old == new or new in TRANSITIONS.get(old, frozenset())


class StatusTransitions(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"Appointment"})

    async def before_write(self, writes: Sequence[Write]) -> None:
        for w in writes:
            if w.previous is None or w.new is None:
                continue
            old, new = w.previous.get("status", ""), w.new.get("status", "")
            if not allowed(old, new):
                targets = ", ".join(sorted(TRANSITIONS.get(old, ()))) or "none"
                raise FhirError.of(
                    422,
                    "business-rule",
                    f"Appointment/{w.id} cannot go from status {old!r} to {new!r} "
                    f"(from {old!r} it may go to: {targets}; see docs/scheduling.md)",
                    "Appointment.status",
                )


class MinimumNotice(Rule):
    """A patient may not change, cancel or delete an active appointment less than
    ``notice`` before its start (FHIR_APPOINTMENT_MIN_NOTICE); staff and the server may.
    The start that counts is the one already booked: moving an appointment away from a
    time that is too close is a change of it too."""

    types: ClassVar[frozenset[str]] = frozenset({"Appointment"})

    def __init__(self, notice: timedelta) -> None:
        self.notice = notice

    async def before_write(self, writes: Sequence[Write]) -> None:
        now = datetime.now(UTC)
        for w in writes:
            if w.previous is None or not w.context.patient_side or w.rewrite:
                continue
            if not is_active(w.previous) or w.previous.get("start") is None:
                continue
            start = instant(w.previous["start"], "Appointment.start")
            if start - now < self.notice:
                action = "cancelled" if w.new is None or not is_active(w.new) else "changed"
                raise FhirError.of(
                    422,
                    "business-rule",
                    f"Appointment/{w.id} starts at {w.previous['start']}: a patient may "
                    f"no longer have it {action} (at least {_hours(self.notice)} notice "
                    "is needed; please call the clinic)",
                    "Appointment.start",
                )


def _hours(notice: timedelta) -> str:
    hours = notice.total_seconds() / 3600
    return f"{hours:g} h"
