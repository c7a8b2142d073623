"""The action log of appointments (the clinic systems' "AppointmentAction"): every
booking, status change, reschedule, cancellation and deletion of an Appointment writes
a Provenance in the write's own transaction, so the log has an entry exactly when the
change committed.

- ``target``: the Appointment version (``Appointment/<id>/_history/<v>``);
- ``activity``: what happened (ACTIVITIES);
- ``agent``: the user of the token (``fhirUser``), else its client, else the server;
  for a patient's reply to a reminder, the patient, with the message as ``entity``;
- ``reason``: ``Appointment.cancelationReason`` of a cancellation.

Provenance ids start with the version's time in hex, so ``GET
Provenance?target=Appointment/<id>`` (sorted by id unless asked otherwise) lists the log
in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from fhir_server.datetimes import format_instant
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.marker import is_hold

ACTIVITY_SYSTEM = "urn:fhir-server:appointment-action"
# activity for a new appointment, by its status
# (``pending``: "request", awaiting a participant's acceptance; "hold" when it is a
# temporary hold, marker.py)
_CREATED = {"pending": "request", "booked": "book", "waitlist": "waitlist", "proposed": "propose"}
# activity for a status change, by the new status
_CHANGED = {
    "pending": "request",
    "booked": "confirm",
    "waitlist": "waitlist",
    "arrived": "arrive",
    "checked-in": "check-in",
    "fulfilled": "complete",
    "noshow": "noshow",
    "cancelled": "cancel",
    "entered-in-error": "enter-in-error",
}
ACTIVITIES = frozenset(
    {*_CREATED.values(), *_CHANGED.values(), "hold", "record", "reschedule", "delete"}
)
_WHEN = ("start", "end", "slot")
_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def activity(w: Write) -> str | None:
    """What the write did to the appointment, or None for an edit the log ignores."""
    if w.new is None:
        return "delete"
    status = w.new.get("status", "")
    if is_hold(w.new) and not is_hold(w.previous):
        return "hold"
    if w.previous is None:
        return _CREATED.get(status, "record")
    if status != w.previous.get("status"):
        return _CHANGED.get(status, "record")
    if any(w.new.get(k) != w.previous.get(k) for k in _WHEN):
        return "reschedule"
    return None


def provenance(w: Write, action: str) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": _PARTICIPANT_TYPE, "code": "author"}]},
        "who": w.context.agent,
    }
    found: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": f"Appointment/{w.id}/_history/{w.version}"}],
        "recorded": format_instant(w.last_updated),
        "activity": {"coding": [{"system": ACTIVITY_SYSTEM, "code": action}], "text": action},
        "agent": [agent],
    }
    acting = w.context.acting
    if acting is not None and acting.source is not None:  # the message that asked for it
        found["entity"] = [{"role": "source", "what": acting.source}]
    reason = (w.new or {}).get("cancelationReason") if action == "cancel" else None
    if isinstance(reason, dict):
        found["reason"] = [reason]
    return found


class ActionLog(Rule):
    """Also announces each action in the outbox (topic ``appointment``), for the
    notifications the clinics send (WhatsApp, e-mail): a worker delivers them once
    the change has committed; a refused or rolled-back change announces nothing."""

    types: ClassVar[frozenset[str]] = frozenset({"Appointment"})
    creates: ClassVar[frozenset[str]] = frozenset({"Provenance"})

    def after_commit(self, writes: Sequence[Write]) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        return [
            {
                "topic": "appointment",
                "activity": action,
                "target": f"Appointment/{w.id}/_history/{w.version}",
                "created": now,
            }
            for w in writes
            if not w.rewrite and (action := activity(w)) is not None
        ]

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        for w in writes:
            if w.rewrite:  # a correction of a version already logged
                continue
            action = activity(w)
            if action is not None:
                millis = int(w.last_updated.timestamp() * 1000)
                tx.create(
                    provenance(w, action),
                    w.last_updated,
                    f"{millis:012x}-{uuid.uuid4().hex[:20]}",
                )
