"""One pass of the reminder workers: claim what is due, send it, record it.

1. Plans whose appointment has started are dropped (a reminder after the start is
   useless); claims whose worker died (lease run out) are taken over.
2. Due plans, earliest first, in batches: one claim per appointment, lead and start is
   inserted (claims.py); the plan moves on to the next lead whoever won the claim.
3. For each claim won: the Appointment is read again (cancelled or moved since: nothing
   is sent), the patient's contact and language chosen, the text rendered; the claim
   records what goes where (``sending``) before it goes.
4. Messages go out concurrently (FHIR_REMINDER_CONCURRENCY). The Communications of the
   batch and the claims' final states are written in one transaction.

A message Twilio refuses is recorded not-done with Twilio's reason; one that could not
be handed over (429, 5xx, no connection, SMTP down) is retried, up to ``ATTEMPTS``.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from fhir_server.config import Settings
from fhir_server.datetimes import now as now_utc
from fhir_server.jsonio import load_stored
from fhir_server.outbound.mail import MailError, build_message, send_mail
from fhir_server.service.resources import ResourceService
from fhir_server.storage.store import Session
from fhir_server.workflows.reminders import templates
from fhir_server.workflows.reminders.claims import (
    CLAIMS,
    claim,
    claim_key,
    communication_id,
    take_over,
)
from fhir_server.workflows.reminders.contacts import Contact, NoContact, choose
from fhir_server.workflows.reminders.details import Details, patient_of
from fhir_server.workflows.reminders.leads import next_due, parse_leads, seconds, to_send
from fhir_server.workflows.reminders.plan import PLAN, start_of
from fhir_server.workflows.reminders.records import reminder
from fhir_server.workflows.reminders.twilio import (
    Outcome,
    Refused,
    Retry,
    Sent,
    TwilioClient,
    Unknown,
    configured_channels,
)

BATCH = 200
ATTEMPTS = 3
RETRY_AFTER = timedelta(seconds=5)  # times the attempts made
log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    """One claimed reminder on its way."""

    claim: dict[str, Any]
    text: str | None = None
    subject: str | None = None
    contact: Contact | None = None
    outcome: Outcome | NoContact | None = None
    skipped: str | None = None  # why nothing is sent

    @property
    def key(self) -> str:
        return str(self.claim["_id"])


class Sender:
    """What a worker needs to send reminders; one per worker thread."""

    def __init__(self, settings: Settings, resources: ResourceService, worker: str) -> None:
        self.settings = settings
        self.resources = resources
        self.storage = resources.storage
        self.db = resources.storage.db
        self.worker = worker
        self.leads = parse_leads(settings.reminder_lead_times)
        self.lease = timedelta(
            seconds=max(settings.reminder_lease_seconds, 2 * settings.twilio_timeout_seconds)
        )
        self.channels = configured_channels(settings)
        self.twilio = TwilioClient(settings)
        self.gate = asyncio.Semaphore(settings.reminder_concurrency)

    async def close(self) -> None:
        await self.twilio.close()

    async def run(self) -> int:
        """One pass; how many reminders it settled (sent, failed or skipped)."""
        if not self.channels:
            return 0  # nothing configured: nothing is claimed (docs/reminders.md)
        now = now_utc()
        plans = self.db[PLAN]
        await plans.update_many(
            {"due": {"$lte": now}, "start": {"$lte": now}}, {"$set": {"due": None}}
        )
        done = 0
        taken = await take_over(self.db[CLAIMS], self.worker, now, self.lease, BATCH)
        if taken:
            done += await self.process(taken)
        while True:
            now = now_utc()
            due = await plans.find(
                {"due": {"$lte": now}, "start": {"$gt": now}}, sort=[("due", 1)], limit=BATCH
            ).to_list()
            if not due:
                return done
            done += await self.process(await self._claim(due, now))
            if len(due) < BATCH:
                return done

    async def _claim(self, due: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        moves: list[UpdateOne] = []
        for plan in due:
            start = plan["start"].astimezone(UTC)
            lead = to_send(self.leads, start, timedelta(seconds=plan["lead"]), now)
            docs.append(
                {
                    "_id": claim_key(plan["_id"], seconds(lead), start),
                    "appointment": plan["_id"],
                    "lead": seconds(lead),
                    "start": start,
                    "due": start - lead,
                    "state": "claimed",
                    "worker": self.worker,
                    "lease": now + self.lease,
                    "attempts": 0,
                    "created": now,
                }
            )
            after = next_due(self.leads, start, lead)
            moves.append(
                UpdateOne(
                    {"_id": plan["_id"], "start": plan["start"], "lead": plan["lead"]},
                    {
                        "$set": {
                            "due": after[0] if after else None,
                            "lead": seconds(after[1]) if after else None,
                        }
                    },
                )
            )
        won = await claim(self.db[CLAIMS], docs)
        await self.db[PLAN].bulk_write(moves, ordered=False)
        return [d for d in docs if d["_id"] in won]

    async def process(self, claims: list[dict[str, Any]]) -> int:
        if not claims:
            return 0
        jobs = [Job(c) for c in claims]
        await self._prepare(jobs)
        await asyncio.gather(*(self._send(j) for j in jobs if j.contact is not None))
        await self._record(jobs)
        return len(jobs)

    # --- preparing -----------------------------------------------------------------

    async def _prepare(self, jobs: list[Job]) -> None:
        ids = sorted({j.claim["appointment"] for j in jobs})
        appointments = {
            v.id: load_stored(v.raw)
            for v in await self.storage.read_many("Appointment", ids)
            if v.raw is not None
        }
        patients = {
            j.key: patient_of(appointments[j.claim["appointment"]])
            for j in jobs
            if j.claim["appointment"] in appointments
        }
        details = Details(self.storage)
        await details.load(
            [p for p in patients.values() if p]
            + [r for a in appointments.values() for r in details.refs_of(a)]
        )
        texts = await templates.load(self.storage, self.settings.reminder_language)
        now = now_utc()
        marks: list[UpdateOne] = []
        for job in jobs:
            appointment = appointments.get(job.claim["appointment"])
            start = job.claim["start"].astimezone(UTC)
            if appointment is None or start_of(appointment) != start:
                job.skipped = "cancelled or moved" if appointment else "deleted"
            if job.claim["state"] == "sending":  # taken over: the stored message, as it was
                job.text, job.subject = job.claim.get("body"), job.claim.get("subject")
                job.contact = Contact(job.claim["channel"], job.claim["to"])
                continue  # (if it went out before, it is recorded even when skipped now)
            if job.skipped is not None or appointment is None:
                continue
            patient_ref = patients.get(job.key)
            patient = details.found.get(patient_ref or "")
            if patient is None:
                job.outcome = NoContact("recipient-unavailable", "the appointment has no patient")
                continue
            job.claim["patient"] = patient_ref
            found = choose(
                patient,
                self.settings.reminder_phone_channel,
                self.channels,
                self.settings.reminder_country_code,
                now,
            )
            if isinstance(found, NoContact):
                job.outcome = found
                continue
            language = texts.language_for(patient)
            values = details.values(
                appointment, patient, start, self.settings.reminder_timezone, language
            )
            if found.channel == "email":
                job.subject = texts.render("reminder-email-subject", language, values)
                job.text = texts.render("reminder-email", language, values)
            else:
                job.text = texts.render("reminder", language, values)
            job.contact = found
            marks.append(
                UpdateOne(
                    {"_id": job.key, "worker": self.worker, "state": "claimed"},
                    {
                        "$set": {
                            "state": "sending",
                            "sending": now,
                            "lease": now + self.lease,
                            "patient": patient_ref,
                            "channel": found.channel,
                            "to": found.address,
                            "body": job.text,
                            "subject": job.subject,
                            "language": language,
                        }
                    },
                )
            )
        if marks:
            result = await self.db[CLAIMS].bulk_write(marks, ordered=True)
            if result.matched_count != len(marks):  # another worker took some over
                keys = [j.key for j in jobs if j.contact is not None]
                cursor = self.db[CLAIMS].find(
                    {"_id": {"$in": keys}, "worker": self.worker}, {"_id": 1}
                )
                mine = {d["_id"] async for d in cursor}
                for job in jobs:
                    if job.contact is not None and job.key not in mine:
                        job.contact, job.skipped = None, "taken over by another worker"

    # --- sending -------------------------------------------------------------------

    async def _send(self, job: Job) -> None:
        contact = job.contact
        assert contact is not None and job.text is not None
        async with self.gate:
            if job.claim["state"] == "sending" and contact.channel != "email":
                since = job.claim.get("sending") or job.claim["created"]
                try:
                    sid = await self.twilio.sent_before(
                        contact.channel, contact.address, job.text, since - timedelta(minutes=5)
                    )
                except Exception as exc:  # cannot tell: ask again later, never resend blind
                    job.outcome = Unknown(f"could not ask Twilio: {exc!r}")
                    return
                if sid is not None:
                    job.outcome, job.skipped = Sent(sid), None
                    return
            if job.skipped is not None:
                return
            if contact.channel == "email":
                job.outcome = await self._mail(job, contact.address)
            else:
                job.outcome = await self.twilio.send(contact.channel, contact.address, job.text)

    async def _mail(self, job: Job, to: str) -> Outcome:
        message = build_message(
            self.settings,
            to,
            job.subject or "",
            job.text or "",
            message_id=_message_id(job.key),  # a resend after a takeover: the same message
        )
        try:
            await asyncio.to_thread(send_mail, self.settings, message)
        except MailError as exc:
            if isinstance(exc.__cause__, smtplib.SMTPRecipientsRefused) or exc.__cause__ is None:
                return Refused("recipient-unavailable", str(exc))
            return Retry(str(exc))
        return Sent(_message_id(job.key))

    # --- recording -----------------------------------------------------------------

    async def _record(self, jobs: list[Job]) -> None:
        now = now_utc()
        records: dict[str, dict[str, Any]] = {}
        updates: list[UpdateOne] = []
        for job in jobs:
            state, fields, record = self._settle(job, now)
            mine = {"_id": job.key, "worker": self.worker}
            updates.append(UpdateOne(mine, {"$set": {"state": state, **fields}}))
            if record is not None:
                checked = await self.resources.check("Communication", record)
                records[communication_id(job.key)] = checked

        async def txn(s: Session) -> None:
            if records:
                held = await self.storage.read_many("Communication", list(records), s)
                known = {v.id for v in held}
                writes = [
                    self.resources.new_version("Communication", rid, body, None, "POST")
                    for rid, body in records.items()
                    if rid not in known
                ]
                if writes:
                    await self.storage.write(writes, s)
            await self.db[CLAIMS].bulk_write(updates, session=s)

        await self.storage.transaction(txn, ("Communication",))
        for job in jobs:
            if job.skipped is None:
                log.debug("reminder %s: %s", job.key, job.outcome)

    def _settle(self, job: Job, now: datetime) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        """The claim's new state, its fields, and the Communication to store (if any)."""
        c = job.claim
        if job.skipped is not None:
            return "skipped", {"reason": job.skipped, "settled": now}, None
        channel = job.contact.channel if job.contact else None
        outcome = job.outcome
        attempts = int(c.get("attempts", 0)) + 1
        if isinstance(outcome, Retry) and attempts < ATTEMPTS:
            wait = now + RETRY_AFTER * attempts
            return (
                "claimed",
                {"attempts": attempts, "lease": wait, "last_error": outcome.text},
                None,
            )
        if isinstance(outcome, Unknown) and attempts < ATTEMPTS + 2:
            wait = now + RETRY_AFTER * attempts  # then ask Twilio whether it went out
            return (
                "sending",
                {"attempts": attempts, "lease": wait, "last_error": outcome.text},
                None,
            )
        patient = c.get("patient")
        appointment = f"Appointment/{c['appointment']}"
        body = job.text if job.subject is None else f"{job.subject}\n\n{job.text}"
        if isinstance(outcome, Sent):
            is_mail = channel == "email"
            record = reminder(
                c["_id"],
                appointment,
                patient,
                channel,
                now,
                body,
                sid=None if is_mail else outcome.sid,
                message_id=outcome.sid if is_mail else None,
            )
            fields = {"sid": outcome.sid, "settled": now}
            state = "sent"
        else:
            if isinstance(outcome, NoContact | Refused):
                failure = (outcome.reason, outcome.text)
            else:
                text = outcome.text if outcome is not None else "not sent"
                failure = ("system-error", f"gave up after {attempts} attempts: {text}")
            record = reminder(c["_id"], appointment, patient, channel, now, body, failure=failure)
            fields = {"reason": failure[1], "settled": now}
            state = "failed"
        fields["communication"] = communication_id(c["_id"])
        return state, fields, record


def _message_id(key: str) -> str:
    return f"<{communication_id(key)}@fhir-server>"
