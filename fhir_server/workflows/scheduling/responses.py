"""AppointmentResponse: a participant's reply sets that participant's status on the
Appointment, in the same transaction (appointmentresponse.html: "a reply to an
appointment request for a patient and/or practitioner(s)"). The Appointment's new
version goes through the Appointment rules like any other: a practitioner or room
that declines no longer holds the time. A reply naming an actor that is not a
participant is refused (422 ``business-rule``); one whose Appointment is not stored
here is left alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.workflows.pipeline import Rule, Transaction, Write


def local(value: Any) -> str | None:
    """``Type/id`` of a reference (relative, or the last two segments of a URL)."""
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        return None
    parts = value["reference"].split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


class ParticipantResponses(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"AppointmentResponse"})
    creates: ClassVar[frozenset[str]] = frozenset({"Appointment"})

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        for w in writes:
            if w.new is None or w.rewrite:
                continue
            target = local(w.new.get("appointment"))
            actor = local(w.new.get("actor"))
            status = w.new.get("participantStatus")
            if target is None or not target.startswith("Appointment/") or actor is None:
                continue
            current = await tx.storage.read_current("Appointment", target.split("/")[1], tx.session)
            if current is None or current.raw is None:
                continue
            appointment = load_stored(current.raw)
            participants = appointment.get("participant") or []
            found = [i for i, p in enumerate(participants) if local(p.get("actor")) == actor]
            if not found:
                raise FhirError.of(
                    422,
                    "business-rule",
                    f"{actor} is not a participant of {target}",
                    "AppointmentResponse.actor",
                )
            if all(participants[i].get("status") == status for i in found):
                continue
            changed = [
                {**p, "status": status} if i in found else p for i, p in enumerate(participants)
            ]
            tx.update(current, {**appointment, "participant": changed}, appointment)
