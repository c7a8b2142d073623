"""Messages as FHIR ``Communication``s: every reminder (completed, or not-done with
its reason) and every reply a patient sends (completed, received).

- ``category``: ``urn:fhir-server:communication-category`` ``appointment-reminder`` or
  ``appointment-reply``;
- ``medium``: v3 ParticipationMode (``ONLINEWRIT`` WhatsApp, ``WRITTEN`` SMS,
  ``EMAILWRIT`` email) and the channel (``urn:fhir-server:message-channel``);
- ``about``: the Appointment; ``recipient``/``sender`` and ``subject``: the Patient;
- ``identifier``: the Twilio message SID (``urn:fhir-server:twilio-message-sid``) or the
  email Message-ID; ``statusReason``: communication-not-done-reason and the details.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_server.datetimes import format_instant
from fhir_server.workflows.reminders.contacts import NOT_DONE

CATEGORY = "urn:fhir-server:communication-category"
CHANNEL = "urn:fhir-server:message-channel"
TWILIO_SID = "urn:fhir-server:twilio-message-sid"
MESSAGE_ID = "urn:ietf:rfc:5322"
REMINDER_KEY = "urn:fhir-server:reminder"
_MODE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
_MODES = {
    "whatsapp": ("ONLINEWRIT", "online written"),
    "sms": ("WRITTEN", "written"),
    "email": ("EMAILWRIT", "email"),
}
_CHANNELS = {"whatsapp": "WhatsApp", "sms": "SMS", "email": "email"}


def medium(channel: str) -> list[dict[str, Any]]:
    code, display = _MODES[channel]
    return [
        {
            "coding": [
                {"system": _MODE, "code": code, "display": display},
                {"system": CHANNEL, "code": channel, "display": _CHANNELS[channel]},
            ],
            "text": _CHANNELS[channel],
        }
    ]


def _category(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": CATEGORY, "code": code}]}]


def reminder(
    key: str,
    appointment: str,
    patient: str | None,
    channel: str | None,
    when: datetime,
    text: str | None,
    *,
    sid: str | None = None,
    message_id: str | None = None,
    failure: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The Communication of one reminder; ``failure``: (not-done reason code, text)."""
    found: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": REMINDER_KEY, "value": key}],
        "status": "not-done" if failure else "completed",
        "category": _category("appointment-reminder"),
        "about": [{"reference": appointment}],
    }
    if sid:
        found["identifier"].append({"system": TWILIO_SID, "value": sid})
    if message_id:
        found["identifier"].append({"system": MESSAGE_ID, "value": message_id})
    if failure:
        found["statusReason"] = {
            "coding": [{"system": NOT_DONE, "code": failure[0]}],
            "text": failure[1],
        }
    if channel:
        found["medium"] = medium(channel)
    if patient:
        found["subject"] = {"reference": patient}
        found["recipient"] = [{"reference": patient}]
    if not failure:
        found["sent"] = format_instant(when)
    if text:
        found["payload"] = [{"contentString": text}]
    return found


def reply(
    sid: str,
    patient: str,
    channel: str,
    when: datetime,
    text: str,
    appointment: str | None,
    in_response_to: str | None,
) -> dict[str, Any]:
    """The Communication of a message a patient sent."""
    found: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": TWILIO_SID, "value": sid}],
        "status": "completed",
        "category": _category("appointment-reply"),
        "medium": medium(channel),
        "subject": {"reference": patient},
        "sender": {"reference": patient},
        "received": format_instant(when),
        "payload": [{"contentString": text}],
    }
    if appointment:
        found["about"] = [{"reference": appointment}]
    if in_response_to:
        found["inResponseTo"] = [{"reference": in_response_to}]
    return found
