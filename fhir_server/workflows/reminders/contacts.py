"""Where a patient's reminder goes: the first usable ``Patient.telecom`` by ``rank``.

- ``system`` ``phone``: WhatsApp (or SMS: FHIR_REMINDER_PHONE_CHANNEL); ``sms``: SMS;
  ``other`` with a ``whatsapp:+...`` value: WhatsApp; ``email``: email.
- Not usable: ``use`` ``old``, a ``period`` that has ended, a channel the server has no
  sender for, a number that is not one, and an opted-out entry.
- Opting out is the extension ``urn:fhir-server:StructureDefinition/reminder-opt-out``
  (valueBoolean true): on a ContactPoint, no reminders to that address; on the Patient,
  none at all. Staff set or clear it by writing the Patient; a STOP reply sets it on
  every ContactPoint of that number (START clears it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir_server.workflows.reminders.phones import e164
from profiles import REMINDER_OPT_OUT as OPT_OUT

NOT_DONE = "http://terminology.hl7.org/CodeSystem/communication-not-done-reason"


@dataclass(frozen=True, slots=True)
class Contact:
    channel: str  # whatsapp | sms | email
    address: str  # E.164 for whatsapp and sms


@dataclass(frozen=True, slots=True)
class NoContact:
    reason: str  # communication-not-done-reason code
    text: str


def opted_out(element: dict[str, Any]) -> bool:
    return any(
        isinstance(e, dict) and e.get("url") == OPT_OUT and e.get("valueBoolean") is True
        for e in element.get("extension") or ()
    )


def with_opt_out(point: dict[str, Any], out: bool) -> dict[str, Any]:
    """A copy of the ContactPoint opted out (or back in)."""
    kept = [
        e
        for e in point.get("extension") or ()
        if not (isinstance(e, dict) and e.get("url") == OPT_OUT)
    ]
    if out:
        kept.append({"url": OPT_OUT, "valueBoolean": True})
    found = {k: v for k, v in point.items() if k != "extension"}
    if kept:
        found["extension"] = kept
    return found


def _ended(point: dict[str, Any], now: datetime) -> bool:
    end = (point.get("period") or {}).get("end")
    if not isinstance(end, str):
        return False
    try:
        t = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return False
    if len(end) <= 10:  # a date: the whole day still counts
        return t.date() < now.date()
    return (t if t.tzinfo else t.replace(tzinfo=UTC)) <= now


def channel_of(point: dict[str, Any], phone_channel: str) -> str | None:
    system, value = point.get("system"), point.get("value")
    if not isinstance(value, str):
        return None
    if system == "email":
        return "email"
    if system == "sms":
        return "sms"
    if system == "phone":
        return phone_channel
    if system == "other" and value.lower().startswith("whatsapp:"):
        return "whatsapp"
    return None


def _rank(point: dict[str, Any]) -> int:
    rank = point.get("rank")
    return rank if isinstance(rank, int) else 1 << 30


def choose(
    patient: dict[str, Any],
    phone_channel: str,
    configured: frozenset[str],
    country: str,
    now: datetime,
) -> Contact | NoContact:
    """The address the reminder goes to, or why there is none."""
    if opted_out(patient):
        return NoContact("patient-objection", "the patient opted out of reminders")
    points = [p for p in patient.get("telecom") or () if isinstance(p, dict)]
    points.sort(key=_rank)
    refused: list[NoContact] = []
    for point in points:
        channel = channel_of(point, phone_channel)
        if channel is None or point.get("use") == "old" or _ended(point, now):
            continue
        if opted_out(point):
            refused.append(NoContact("patient-objection", f"{channel} opted out"))
            continue
        if channel not in configured:
            refused.append(NoContact("system-error", f"no {channel} sender is configured"))
            continue
        if channel == "email":
            value = point["value"].strip()
            if "@" in value:
                return Contact("email", value)
            refused.append(NoContact("invalid-phone-number", f"{value!r} is not an address"))
            continue
        number = e164(point["value"], country)
        if number is None:
            refused.append(
                NoContact("invalid-phone-number", f"{point['value']!r} is not a phone number")
            )
            continue
        return Contact(channel, number)
    if refused:
        return NoContact(refused[0].reason, "; ".join(r.text for r in refused))
    return NoContact("recipient-unavailable", "the patient has no phone or email")
