"""When each appointment's next reminder is due: ``reminder_plan``, kept by the rule
``ReminderPlanning`` in every Appointment write's own transaction.

One document per Appointment: ``start`` (the start its reminders are for), ``due``
(when the next one is due; None: none to send) and ``lead`` (its lead time, seconds).
A cancellation (or any status but booked and pending, or a temporary hold) clears
``due`` in the same transaction as the cancellation, so no worker sends for it after
it committed; a new start plans afresh for that start. Workers send what is due
(sending.py) and move ``due`` on to the next lead, only if the plan still holds the
start and lead they sent for.

``backfill`` plans the appointments stored before reminders existed (once), and
``replan`` follows a change of FHIR_REMINDER_LEAD_TIMES; both run when a worker starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel, UpdateOne

from fhir_server.datetimes import now as now_utc
from fhir_server.jsonio import load_stored
from fhir_server.storage import Storage
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.reminders.claims import CLAIM_INDEXES, CLAIMS
from fhir_server.workflows.reminders.leads import first_due, seconds
from fhir_server.workflows.scheduling.marker import is_hold

PLAN = "reminder_plan"
META = "reminder_meta"
REMINDED = frozenset({"booked", "pending"})
log = logging.getLogger(__name__)


def start_of(appointment: dict[str, Any] | None) -> datetime | None:
    """The start of an appointment that gets reminders, else None."""
    if appointment is None or appointment.get("status") not in REMINDED:
        return None
    if is_hold(appointment) or not isinstance(appointment.get("start"), str):
        return None
    try:
        t = datetime.fromisoformat(appointment["start"].replace("Z", "+00:00"))
    except ValueError:
        return None
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return t.astimezone(UTC).replace(microsecond=t.microsecond // 1000 * 1000)


def planned(leads: Sequence[timedelta], start: datetime | None, now: datetime) -> dict[str, Any]:
    """The plan document's fields for an appointment (re)booked ``now``."""
    first = first_due(leads, start, now) if start is not None else None
    if first is None:
        return {"start": start, "due": None, "lead": None}
    return {"start": start, "due": first[0], "lead": seconds(first[1])}


class ReminderPlanning(Rule):
    """Plans an appointment's reminders when it is booked, moved or cancelled.
    (Declares the workers' claims collection too, so both exist from start-up.)"""

    types: ClassVar[frozenset[str]] = frozenset({"Appointment"})
    collections: ClassVar[dict[str, list[IndexModel]]] = {
        PLAN: [IndexModel([("due", ASCENDING)], name="due")],
        CLAIMS: CLAIM_INDEXES,
    }

    def __init__(self, leads: Sequence[timedelta]) -> None:
        self.leads = tuple(leads)

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        now = now_utc()
        ops: list[UpdateOne] = []
        for w in writes:
            start = start_of(w.new)
            before = start_of(w.previous)
            if start is not None and before == start:
                continue  # the same reminders still hold (an edit, or pending -> booked)
            ops.append(
                UpdateOne({"_id": w.id}, {"$set": planned(self.leads, start, now)}, upsert=True)
            )
        if ops:
            await tx.db[PLAN].bulk_write(ops, session=tx.session)


async def backfill(storage: Storage, leads: Sequence[timedelta]) -> int:
    """Plan the future appointments that have no plan yet (stored before reminders
    existed); once per database (a marker in ``reminder_meta``)."""
    meta = storage.db[META]
    if await meta.find_one({"_id": "backfill"}) is not None:
        return 0
    now = now_utc()
    done = 0
    ops: list[UpdateOne] = []
    cursor = storage.current("Appointment").find(
        {"del": False, "sp.date.lo": {"$gt": now}}, {"raw": 1}
    )
    async for doc in cursor:
        start = start_of(load_stored(doc["raw"]))
        if start is None:
            continue
        fields = planned(leads, start, now)
        ops.append(UpdateOne({"_id": doc["_id"]}, {"$setOnInsert": fields}, upsert=True))
        if len(ops) >= 500:
            done += (await storage.db[PLAN].bulk_write(ops, ordered=False)).upserted_count
            ops = []
    if ops:
        done += (await storage.db[PLAN].bulk_write(ops, ordered=False)).upserted_count
    await meta.update_one({"_id": "backfill"}, {"$set": {"at": now}}, upsert=True)
    return done


async def replan(storage: Storage, leads: Sequence[timedelta]) -> int:
    """After FHIR_REMINDER_LEAD_TIMES changed: plan every future appointment afresh
    under the new leads. What was sent stays sent: a claim already taken for an
    appointment, lead and start is never sent again (claims.py)."""
    meta = storage.db[META]
    wanted = [seconds(lead) for lead in leads]
    found = await meta.find_one({"_id": "leads"})
    if found is not None and found.get("leads") == wanted:
        return 0
    now = now_utc()
    ops: list[UpdateOne] = []
    done = 0
    if found is not None:  # a first start has nothing planned under other leads
        cursor = storage.db[PLAN].find({"start": {"$gt": now}})
        async for doc in cursor:
            fields = planned(leads, doc["start"].astimezone(UTC), now)
            ops.append(UpdateOne({"_id": doc["_id"], "start": doc["start"]}, {"$set": fields}))
        for i in range(0, len(ops), 500):
            done += (await storage.db[PLAN].bulk_write(ops[i : i + 500])).modified_count
    await meta.update_one({"_id": "leads"}, {"$set": {"leads": wanted}}, upsert=True)
    if found is not None:
        log.info("reminder lead times now %s: %d appointments replanned", wanted, done)
    return done
