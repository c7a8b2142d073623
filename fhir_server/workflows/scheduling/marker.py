"""What makes an Appointment a temporary hold: a ``meta.tag`` of ours
(``urn:fhir-server:appointment-hold|hold``) on a ``pending`` appointment.

``pending`` alone is not a hold: R4 defines it as "Some or all of the participant(s)
have not finalized their acceptance of the appointment request" (a real appointment
awaiting confirmation, the WhatsApp clinic's PENDING), which keeps its slot like
``booked``. Only marked holds expire (FHIR_APPOINTMENT_HOLD). ``$hold`` sets the tag;
a REST client or importer may set it to create a hold deliberately (the clinics'
TemporaryReservation); ``$book`` removes it. On any other status the tag means nothing.
"""

from __future__ import annotations

from typing import Any

HOLD_SYSTEM = "urn:fhir-server:appointment-hold"
HOLD_CODE = "hold"
HOLD_TAG = {"system": HOLD_SYSTEM, "code": HOLD_CODE, "display": "temporary hold"}


def _tags(appointment: dict[str, Any]) -> list[Any]:
    meta = appointment.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return tags if isinstance(tags, list) else []


def _is_tag(t: Any) -> bool:
    return isinstance(t, dict) and t.get("system") == HOLD_SYSTEM and t.get("code") == HOLD_CODE


def is_marked(appointment: dict[str, Any] | None) -> bool:
    """Whether it carries the hold tag (whatever its status)."""
    return appointment is not None and any(_is_tag(t) for t in _tags(appointment))


def is_hold(appointment: dict[str, Any] | None) -> bool:
    """A temporary hold: ``pending`` and tagged. Only these expire."""
    return (
        appointment is not None
        and appointment.get("status") == "pending"
        and is_marked(appointment)
    )


def marked(appointment: dict[str, Any]) -> dict[str, Any]:
    """A copy carrying the hold tag (once)."""
    if is_marked(appointment):
        return appointment
    found = appointment.get("meta")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    return {**appointment, "meta": {**meta, "tag": [*_tags(appointment), HOLD_TAG]}}


def unmarked(appointment: dict[str, Any]) -> dict[str, Any]:
    """A copy without the hold tag (and without an empty ``meta.tag`` left behind)."""
    if not is_marked(appointment):
        return appointment
    kept = [t for t in _tags(appointment) if not _is_tag(t)]
    meta = {k: v for k, v in appointment["meta"].items() if k != "tag"}
    if kept:
        meta["tag"] = kept
    found = {k: v for k, v in appointment.items() if k != "meta"}
    if meta:
        found["meta"] = meta
    return found
