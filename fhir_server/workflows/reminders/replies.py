"""What a patient's reply to a reminder does (keywords.py says what it asks for).

- The patient: the Patients with the sender's number (phones.py, E.164). An unknown
  number changes nothing; it is logged (the number masked) and gets no answer.
- The appointment: of those patients' appointments that were reminded (a ``sent``
  claim), the next one still booked or pending and not yet started.
- The message is stored as a Communication (completed, ``received``, ``about`` the
  Appointment, ``inResponseTo`` the reminder), then acted on with the patient as the
  writer (``request_acting``): each change gets a Provenance with the patient as agent
  and that Communication as source (provenance.py; the action log for status changes).
  confirm: the patient participant ``accepted``, a pending appointment ``booked``;
  cancel: ``cancelled`` (reason ``pat-crs``, "canceled via automated reminder system"),
  which frees the slot through the scheduling rules; but less than
  FHIR_APPOINTMENT_MIN_NOTICE before the start (the rule patients' own apps meet) the
  appointment stands, the answer says it is too late, and the clinic's staff get a
  ``Task`` (code ``abort``) to decide; reschedule: a ``Task`` (code ``change``), the
  appointment stands until the staff move it; stop/start: the number's ContactPoints
  opted out or back in (contacts.py).
- The answer (a template) goes back in the webhook's TwiML.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_server.config import Settings
from fhir_server.datetimes import format_instant
from fhir_server.datetimes import now as now_utc
from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.service.resources import ResourceService
from fhir_server.storage.store import Session
from fhir_server.workflows.pipeline import Acting, request_acting
from fhir_server.workflows.reminders import keywords, templates
from fhir_server.workflows.reminders.claims import CLAIMS
from fhir_server.workflows.reminders.contacts import with_opt_out
from fhir_server.workflows.reminders.details import Details, person_name
from fhir_server.workflows.reminders.phones import e164, patients_with, phone_values
from fhir_server.workflows.reminders.plan import start_of
from fhir_server.workflows.reminders.records import reply
from fhir_server.workflows.scheduling.booking import local_reference

log = logging.getLogger(__name__)
_CANCEL_REASON = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
            "code": "pat-crs",
            "display": "Patient: Canceled via automated reminder system",
        }
    ],
    "text": "cancelled by the patient in reply to a reminder",
}
_TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
_OPEN_TASK = frozenset(
    {"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"}
)
# kind -> Task.code (http://hl7.org/fhir/CodeSystem/task-code), its text, the description
_STAFF_TASKS = {
    "reschedule": (
        "change",
        "Reschedule the appointment",
        "The patient asked by {channel} to reschedule this appointment; propose a new "
        "time and move it (it stands until then).",
    ),
    "cancel": (
        "abort",
        "Cancel the appointment (asked too late)",
        "The patient asked by {channel} to cancel this appointment less than {notice} "
        "before its start (FHIR_APPOINTMENT_MIN_NOTICE), too late to cancel by reply: it "
        "stands; contact the patient and cancel it or keep it.",
    ),
}
_ID_CHARS = re.compile(r"[^A-Za-z0-9.-]")
_CHANNEL_NAMES = {"whatsapp": "WhatsApp", "sms": "SMS"}


@dataclass(frozen=True, slots=True)
class Inbound:
    sid: str  # Twilio's MessageSid
    number: str  # the sender, E.164
    channel: str  # whatsapp | sms
    body: str
    received: datetime


@dataclass(slots=True)
class Target:
    """The patient the reply is from, and their reminded appointment (if any)."""

    patient: str  # Patient/id
    resource: dict[str, Any]
    appointment: dict[str, Any] | None = None
    reminder: str | None = None  # Communication/id of the reminder


def reply_id(sid: str) -> str:
    """The id of the Communication of an inbound message (one per MessageSid)."""
    return "reply-" + _ID_CHARS.sub("-", sid)[:58]


def masked(number: str) -> str:
    return number[:4] + "…" + number[-3:] if len(number) > 7 else "…"


class Replies:
    def __init__(self, settings: Settings, resources: ResourceService) -> None:
        self.settings = settings
        self.resources = resources
        self.storage = resources.storage

    async def handle(self, message: Inbound) -> str | None:
        """Act on one inbound message; the answer's text (None: unknown number)."""
        target = await self._target(message.number)
        if target is None:
            log.warning(
                "reply %s from %s, a number no patient has: nothing done",
                message.sid,
                masked(message.number),
            )
            return None
        texts = await templates.load(self.storage, self.settings.reminder_language)
        language = texts.language_for(target.resource)
        values: dict[str, str] = {}
        appointment = target.appointment
        if appointment is not None:
            details = Details(self.storage)
            await details.load(details.refs_of(appointment))
            start = start_of(appointment)
            assert start is not None
            values = details.values(
                appointment, target.resource, start, self.settings.reminder_timezone, language
            )
        else:
            values = {"patient": person_name(target.resource, first_only=True)}
        received = await self._store_message(message, target)
        acting = Acting({"reference": target.patient}, {"reference": f"Communication/{received}"})
        asked = keywords.intent(message.body)
        reset = request_acting.set(acting)
        try:
            answer = await self._act(asked, message, target)
        except FhirError as exc:
            log.warning(
                "reply %s (%s) not applied: %s", message.sid, asked, exc.issues[0].diagnostics
            )
            answer = "reply-error"
        finally:
            request_acting.reset(reset)
        return texts.render(answer, language, values)

    # --- who and which appointment ------------------------------------------------

    async def _target(self, number: str) -> Target | None:
        ids = await patients_with(self.storage, number)
        live = {
            f"Patient/{v.id}": load_stored(v.raw)
            for v in await self.storage.read_many("Patient", ids)
            if v.raw is not None
        }
        if not live:
            return None
        sent = self.storage.db[CLAIMS].find(
            {"patient": {"$in": sorted(live)}, "state": "sent"},
            {"appointment": 1, "patient": 1, "communication": 1, "settled": 1},
        )
        reminded: dict[str, dict[str, Any]] = {}
        async for claim in sent:
            known = reminded.get(claim["appointment"])
            if known is None or claim.get("settled", 0) > known.get("settled", 0):
                reminded[claim["appointment"]] = claim
        now = now_utc()
        best: tuple[datetime, dict[str, Any], dict[str, Any]] | None = None
        for v in await self.storage.read_many("Appointment", sorted(reminded)):
            if v.raw is None:
                continue
            appointment = load_stored(v.raw)
            start = start_of(appointment)
            if start is None or start <= now:
                continue
            if best is None or start < best[0]:
                best = (start, appointment, reminded[v.id])
        if best is None:
            first = sorted(live)[0]
            return Target(first, live[first])
        _, appointment, claim = best
        patient = claim["patient"] if claim["patient"] in live else sorted(live)[0]
        reminder = f"Communication/{claim['communication']}" if claim.get("communication") else None
        return Target(patient, live[patient], appointment, reminder)

    # --- the message ---------------------------------------------------------------

    async def _store_message(self, message: Inbound, target: Target) -> str:
        rid = reply_id(message.sid)
        appointment = f"Appointment/{target.appointment['id']}" if target.appointment else None
        body = reply(
            message.sid,
            target.patient,
            message.channel,
            message.received,
            message.body or " ",
            appointment,
            target.reminder,
        )
        await self._create_once("Communication", rid, body)
        return rid

    async def _create_once(self, resource_type: str, rid: str, body: dict[str, Any]) -> bool:
        """Create ``resource_type/rid`` unless it exists (a replayed or retried message
        writes nothing twice); the server's own write (no update-as-create setting)."""
        checked = await self.resources.check(resource_type, {**body, "id": rid})

        async def txn(s: Session) -> bool:
            current = await self.storage.read_current(resource_type, rid, s)
            if current is not None and not current.deleted:
                return False
            write = self.resources.new_version(resource_type, rid, checked, current, "PUT")
            await self.storage.write([write], s)
            return True

        created: bool = await self.storage.transaction(txn, (resource_type,))
        return created

    # --- the actions ---------------------------------------------------------------

    async def _act(self, asked: str, message: Inbound, target: Target) -> str:
        if asked == keywords.STOP:
            await self._opt(message.number, True)
            return "reply-stopped"
        if asked == keywords.START:
            await self._opt(message.number, False)
            return "reply-started"
        appointment = target.appointment
        if appointment is None:
            return "reply-no-appointment"
        if asked == keywords.CONFIRM:
            await self._change(appointment["id"], lambda a: _confirmed(a, target.patient))
            return "reply-confirmed"
        if asked == keywords.CANCEL:
            start = start_of(appointment)
            if start is not None and start - now_utc() < self.settings.appointment_min_notice:
                await self._ask_staff("cancel", message, target, appointment)
                return "reply-too-late"
            await self._change(appointment["id"], _cancelled)
            return "reply-cancelled"
        if asked == keywords.RESCHEDULE:
            await self._ask_staff("reschedule", message, target, appointment)
            return "reply-reschedule"
        return "reply-help"

    async def _change(
        self, rid: str, change: Callable[[dict[str, Any]], dict[str, Any]], attempts: int = 3
    ) -> None:
        """Write the Appointment changed (through the rules); again on a concurrent edit."""
        for attempt in range(attempts):
            current = await self.resources.read("Appointment", rid)
            appointment = load_stored(current.raw or b"{}")
            changed = change(appointment)
            if changed == appointment:
                return
            try:
                await self.resources.update("Appointment", rid, _unmeta(changed), current.version)
                return
            except FhirError as exc:
                if exc.status != 412 or attempt == attempts - 1:
                    raise

    async def _ask_staff(
        self, kind: str, message: Inbound, target: Target, appointment: dict[str, Any]
    ) -> None:
        """A Task for the clinic's staff about the appointment (``_STAFF_TASKS[kind]``),
        one per appointment, start and kind: asked again while it is open, nothing new."""
        code, text, description = _STAFF_TASKS[kind]
        start = appointment.get("start", "")
        digest = hashlib.sha256(f"{appointment['id']}|{start}".encode()).hexdigest()[:40]
        rid = f"{kind}-{digest}"
        notice = self.settings.appointment_min_notice.total_seconds() / 3600
        channel = _CHANNEL_NAMES.get(message.channel, message.channel)
        task: dict[str, Any] = {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "priority": "urgent" if kind == "cancel" else "routine",
            "code": {"coding": [{"system": _TASK_CODE, "code": code}], "text": text},
            "description": description.format(channel=channel, notice=f"{notice:g} h"),
            "focus": {"reference": f"Appointment/{appointment['id']}"},
            "for": {"reference": target.patient},
            "requester": {"reference": target.patient},
            "authoredOn": format_instant(message.received),
            "reasonReference": {"reference": f"Communication/{reply_id(message.sid)}"},
        }
        if await self._create_once("Task", rid, task):
            return
        current = await self.resources.read("Task", rid)
        if load_stored(current.raw or b"{}").get("status") in _OPEN_TASK:
            return  # asked already: the request is open
        await self.resources.update("Task", rid, {**task, "id": rid}, current.version)

    async def _opt(self, number: str, out: bool) -> None:
        """STOP/START: every ContactPoint of this number, on every patient with it."""
        country = self.settings.reminder_country_code
        for pid in await patients_with(self.storage, number):
            for attempt in range(3):
                current = await self.storage.read_current("Patient", pid)
                if current is None or current.raw is None:
                    break
                patient = load_stored(current.raw)
                ours = [id(p) for p in phone_values(patient) if e164(p["value"], country) == number]
                telecom = [
                    with_opt_out(p, out) if id(p) in ours else p
                    for p in patient.get("telecom") or ()
                ]
                if telecom == patient.get("telecom"):
                    break
                try:
                    await self.resources.update(
                        "Patient", pid, _unmeta({**patient, "telecom": telecom}), current.version
                    )
                    break
                except FhirError as exc:
                    if exc.status != 412 or attempt == 2:
                        raise


def _unmeta(resource: dict[str, Any]) -> dict[str, Any]:
    """The content to write back: the server sets versionId and lastUpdated."""
    meta = {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated")
    }
    found = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        found["meta"] = meta
    return found


def _confirmed(appointment: dict[str, Any], patient: str) -> dict[str, Any]:
    participants = [
        {**p, "status": "accepted"}
        if local_reference(p.get("actor"), ("Patient",)) == patient
        else p
        for p in appointment.get("participant") or ()
    ]
    found = {**appointment, "participant": participants}
    if found.get("status") == "pending":
        found["status"] = "booked"
    return found


def _cancelled(appointment: dict[str, Any]) -> dict[str, Any]:
    if appointment.get("status") == "cancelled":
        return appointment
    return {**appointment, "status": "cancelled", "cancelationReason": _CANCEL_REASON}
