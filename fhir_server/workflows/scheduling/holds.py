"""The periodic sweep of expired holds: a hold (``pending`` with the hold tag:
marker.py) whose booking keys expired (FHIR_APPOINTMENT_HOLD) and that no booking
displaced yet is cancelled ("hold expired"), which frees its Slot and is logged. A plain
``pending`` appointment is never swept: an expired key of one (written before holds
were marked) is made permanent. Every server process runs it (the
embedded default too); two sweeps of one hold cannot both cancel it (If-Match)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.workflows.scheduling.booking import KEYS
from fhir_server.workflows.scheduling.marker import is_hold

if TYPE_CHECKING:
    from fhir_server.service.resources import ResourceService

log = logging.getLogger(__name__)
EXPIRED = {"text": "hold expired"}


async def cancel_expired_holds(resources: ResourceService, limit: int = 500) -> int:
    """Cancel up to ``limit`` expired holds; how many were cancelled."""
    now = datetime.now(UTC)
    keys = resources.storage.db[KEYS]
    holders = await keys.distinct("a", {"exp": {"$lte": now}})
    done = 0
    for holder in holders[:limit]:
        rid = holder.split("/", 1)[1]
        current = await resources.storage.read_current("Appointment", rid)
        if current is None or current.raw is None:
            continue
        held = load_stored(current.raw)
        if not is_hold(held):  # booked meanwhile (keys rewritten), or not a hold
            await keys.update_many({"a": holder, "exp": {"$lte": now}}, {"$set": {"exp": None}})
            continue
        body = {**held, "status": "cancelled", "cancelationReason": EXPIRED}
        try:
            await resources.update("Appointment", rid, body, current.version)
        except FhirError as exc:  # changed meanwhile (412), or refused: next sweep
            log.info("hold %s not cancelled: %s", holder, exc.issues[0].diagnostics)
            continue
        done += 1
    return done


async def sweep_forever(resources: ResourceService, every: float) -> None:
    """Run the sweep every ``every`` seconds until cancelled."""
    while True:
        await asyncio.sleep(every)
        try:
            await cancel_expired_holds(resources)
        except Exception:  # a failed sweep (mongod away) is retried next time
            log.exception("the sweep of expired holds failed")
