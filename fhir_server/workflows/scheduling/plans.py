"""Which Schedules need their slots (re)generated, and the run that does it.

``slot_plans`` holds one document per Schedule: ``due`` (when to run next; None: not
generated), ``gen`` (bumped by every write that may change the hours), ``digest`` (of
what decided the slots last time) and ``until`` (how far they reach).

- The rule ``SlotPlanning`` marks a Schedule due, in the write's own transaction, when
  it or one of its actors (PractitionerRole, HealthcareService, Location) is written: a
  change of hours is never missed, whatever path wrote it.
- ``run_due`` (the periodic task of the workers, tasks.py) generates the due ones and
  sets the next due time (``FHIR_SLOT_ROLL_INTERVAL`` later) to roll the horizon on;
  ``run_all`` does every Schedule (a worker's start, ``fhir-server slots generate``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from fhir_server.datetimes import now as now_utc
from fhir_server.jsonio import load_stored
from fhir_server.storage import Storage
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.availability import plan_of
from fhir_server.workflows.scheduling.generation import Generator, Outcome

PLANS = "slot_plans"
TICK = "slot_tick"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACTOR_TYPES = frozenset({"PractitionerRole", "HealthcareService", "Location"})
_PARALLEL = 4  # Schedules generated at once: one renders while another's writes wait
log = logging.getLogger(__name__)


class SlotPlanning(Rule):
    """A write of a Schedule or of an actor of one marks that Schedule due."""

    types: ClassVar[frozenset[str]] = frozenset({"Schedule", *ACTOR_TYPES})
    collections: ClassVar[dict[str, list[IndexModel]]] = {
        PLANS: [IndexModel([("due", ASCENDING)], name="due")]
    }

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        ids = {w.id for w in writes if w.type == "Schedule"}
        actors = [w.key for w in writes if w.type in ACTOR_TYPES]
        if actors:
            cursor = tx.storage.current("Schedule").find(
                {"sp.actor": {"$in": actors}, "del": False}, {"_id": 1}, session=tx.session
            )
            ids.update([d["_id"] async for d in cursor])
        if ids:
            when = now_utc()
            await tx.db[PLANS].bulk_write(
                [
                    UpdateOne({"_id": i}, {"$set": {"due": when}, "$inc": {"gen": 1}}, upsert=True)
                    for i in sorted(ids)
                ],
                session=tx.session,
            )


@dataclass(frozen=True, slots=True)
class Timing:
    horizon: timedelta
    roll_interval: timedelta
    timezone: str


async def _actors(storage: Storage, schedule: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for actor in schedule.get("actor") or []:
        ref = str(actor.get("reference") or "")
        kind, _, rid = ref.partition("/")
        if kind in ACTOR_TYPES and rid and "/" not in rid:
            current = await storage.read_current(kind, rid)
            if current is not None and current.raw is not None:
                out.append(load_stored(current.raw))
    return out


async def run_one(
    storage: Storage, generator: Generator, schedule_id: str, timing: Timing
) -> Outcome | None:
    """Generate one Schedule's slots as its plan document asks; None: nothing to do."""
    plans = storage.db[PLANS]
    doc = await plans.find_one({"_id": schedule_id}) or {}
    current = await storage.read_current("Schedule", schedule_id)
    schedule = load_stored(current.raw) if current is not None and current.raw else None
    actors = await _actors(storage, schedule) if schedule else []
    at = now_utc()
    plan = plan_of(schedule_id, schedule, actors, at, timing.horizon, timing.timezone)
    digest = plan.digest()
    if plan.duration is None and not doc.get("digest"):
        outcome = None  # never generated, and nothing to generate
    elif plan.duration is None:  # no longer generated: its free slots go
        until = max(at, doc.get("until") or at)
        outcome = await generator.apply(replace(plan, window=(at, until)))
    else:
        since = doc.get("until") if doc.get("digest") == digest else None
        outcome = await generator.apply(plan, since)
    generated = plan.duration is not None
    await plans.update_one(
        {"_id": schedule_id, "gen": doc.get("gen")},
        {
            "$set": {
                "due": at + timing.roll_interval if generated else None,
                "digest": digest if generated else None,
                "until": plan.window[1] if generated else None,
                "ran": at,
            }
        },
        upsert=not doc,
    )
    return outcome


async def run_due(
    storage: Storage, generator: Generator, timing: Timing, limit: int = 10_000
) -> int:
    """Generate the Schedules due now; how many were run."""
    cursor = storage.db[PLANS].find({"due": {"$lte": now_utc()}}, {"_id": 1}, limit=limit)
    ids = [d["_id"] async for d in cursor]
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(sid: str) -> None:
        async with gate:
            outcome = await run_one(storage, generator, sid, timing)
        if outcome is not None:
            log.info("slots of Schedule/%s: %s", sid, outcome)

    await asyncio.gather(*(one(sid) for sid in ids))
    return len(ids)


async def run_all(storage: Storage, generator: Generator, timing: Timing) -> int:
    """Mark every stored Schedule due, then run them (Schedules stored before this
    server generated slots, or a first start)."""
    cursor = storage.current("Schedule").find({"del": False}, {"_id": 1})
    ids = [d["_id"] async for d in cursor]
    if ids:
        when = now_utc()
        await storage.db[PLANS].bulk_write(
            [UpdateOne({"_id": i, "due": None}, {"$set": {"due": when}}) for i in ids]
            + [
                UpdateOne({"_id": i}, {"$setOnInsert": {"due": when, "gen": 0}}, upsert=True)
                for i in ids
            ]
        )
    return await run_due(storage, generator, timing)


async def claim_tick(storage: Storage, lease: timedelta) -> bool:
    """One sender per ``lease`` among all workers: claim the next run if none is running
    (a run that died leaves its claim to expire)."""
    at = now_utc()
    due = await storage.db[PLANS].find_one({"due": {"$lte": at}}, {"_id": 1})
    if due is None:
        return False
    won = await storage.db[TICK].find_one_and_update(
        {"_id": "tick", "until": {"$lte": at}},
        {"$set": {"until": at + lease}},
        return_document=ReturnDocument.AFTER,
    )
    if won is not None:
        return True
    try:
        await storage.db[TICK].insert_one({"_id": "tick", "until": at + lease})
    except DuplicateKeyError:  # another worker holds the claim
        return False
    return True


async def release_tick(storage: Storage) -> None:
    await storage.db[TICK].update_one({"_id": "tick"}, {"$set": {"until": EPOCH}})
