"""Materialising a Schedule's Slots from its hours (availability.py) over its planning
horizon, through the normal storage path (search index, history), in bulk.

Generated Slots carry the tag ``urn:fhir-server:slot-origin|generated`` and an id that
depends only on the Schedule and the start (``gen-`` + a hash), so a run is idempotent
and two runs at once cannot create the same slot twice: each piece of the window is one
transaction that re-reads what is stored, and the loser of a race is retried by
``Storage.transaction`` and finds the slots there. A run killed half-way leaves whole
pieces behind; the next run completes it.

A run only touches its own ``free`` slots: a generated slot that is no longer in the
hours is deleted if free; ``busy``, ``busy-tentative`` and other statuses are never
touched, nor are Slots written by hand (no tag). A new slot that would overlap such a
kept slot of the Schedule is not generated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fhir_server.datetimes import format_instant, parse_range
from fhir_server.jsonio import load_stored
from fhir_server.storage import Storage, StoredVersion, VersionWrite
from fhir_server.storage.store import Session
from fhir_server.workflows.scheduling.availability import Interval, Plan, slot_times

# ResourceService.new_version: (type, id, resource or None to delete, current, method)
NewVersion = Callable[[str, str, dict[str, Any] | None, StoredVersion | None, str], VersionWrite]

TAG_SYSTEM = "urn:fhir-server:slot-origin"
GENERATED = {"system": TAG_SYSTEM, "code": "generated"}
PIECE = timedelta(days=14)  # one transaction per Schedule and piece of the window
_RESOURCE = {"raw": 1, "v": 1, "lu": 1, "del": 1}


@dataclass
class Outcome:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    kept: int = 0  # slots of the hours not generated: a kept slot is there


def slot_id(schedule_id: str, start: datetime) -> str:
    key = f"{schedule_id}|{format_instant(start)}".encode()
    return "gen-" + hashlib.blake2b(key, digest_size=12).hexdigest()


def is_generated(slot: dict[str, Any]) -> bool:
    tags = (slot.get("meta") or {}).get("tag") or []
    return any(t.get("system") == TAG_SYSTEM and t.get("code") == "generated" for t in tags)


def slot_resource(plan: Plan, start: datetime, end: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "meta": {"tag": [GENERATED]},
        **plan.fields,
        "schedule": {"reference": f"Schedule/{plan.schedule_id}"},
        "status": "free",
        "start": _instant(start),
        "end": _instant(end),
    }


def _instant(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _same(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    keys = set(stored) | set(wanted)
    return all(stored.get(k) == wanted.get(k) for k in keys - {"id", "meta"})


class Generator:
    """Writes the slots of plans; ``new_version`` builds a version as every write does
    (ResourceService.new_version: JSON, meta and search index)."""

    def __init__(self, storage: Storage, new_version: NewVersion) -> None:
        self.storage = storage
        self.new_version = new_version

    async def apply(self, plan: Plan, since: datetime | None = None) -> Outcome:
        """Make the stored generated slots of the plan's window what the plan says."""
        await self.storage.ensure_type("Slot")
        outcome = Outcome()
        times = slot_times(plan)
        low, high = plan.window
        if since is not None and plan.duration is not None:
            # nothing changed but time: only extend (a slot ending past the last run's
            # horizon end was not made then)
            low = max(low, since - plan.duration)
        piece = low
        while piece < high:
            end = min(high, piece + PIECE)
            mine = [t for t in times if piece <= t[0] < end]

            async def txn(
                s: Session, lo: datetime = piece, hi: datetime = end, wanted: list[Interval] = mine
            ) -> Outcome:
                return await self._piece(plan, lo, hi, wanted, s)

            done = await self.storage.transaction(txn, ("Slot",))
            outcome.created += done.created
            outcome.updated += done.updated
            outcome.deleted += done.deleted
            outcome.kept += done.kept
            piece = end
        return outcome

    async def _piece(
        self, plan: Plan, low: datetime, high: datetime, times: Sequence[Interval], s: Session
    ) -> Outcome:
        outcome = Outcome()
        wanted = {slot_id(plan.schedule_id, a): (a, b) for a, b in times}
        slots = self.storage.current("Slot")
        stored: dict[str, StoredVersion] = {}
        by_id = slots.find({"_id": {"$in": list(wanted)}}, _RESOURCE, session=s)
        async for doc in by_id:
            stored[doc["_id"]] = StoredVersion.from_current("Slot", doc)
        reach = plan.duration or timedelta(0)
        near = slots.find(
            {
                "sp.schedule": f"Schedule/{plan.schedule_id}",
                "sp.start.lo": {"$gte": low - max(reach, timedelta(days=1)), "$lt": high + reach},
                "del": False,
            },
            _RESOURCE,
            session=s,
        )
        async for doc in near:
            stored[doc["_id"]] = StoredVersion.from_current("Slot", doc)
        writes: list[VersionWrite] = []
        kept: list[Interval] = []  # slots of the schedule no run may replace
        ours: dict[str, tuple[StoredVersion, dict[str, Any]]] = {}
        for sid, current in stored.items():
            if current.raw is None:
                continue
            slot = load_stored(current.raw)
            if is_generated(slot) and slot.get("status") == "free":
                ours[sid] = (current, slot)
            elif (slot.get("schedule") or {}).get("reference") == f"Schedule/{plan.schedule_id}":
                kept.append(_interval(slot))
        for sid, (start, end) in wanted.items():
            if sid in stored and stored[sid].raw is not None and sid not in ours:
                continue  # booked (or otherwise taken): left as it is
            if any(k[0] < end and k[1] > start for k in kept):
                outcome.kept += 1
                continue
            resource = slot_resource(plan, start, end)
            current_slot = ours.pop(sid, None)
            if current_slot is not None:
                if not _same(current_slot[1], resource):
                    writes.append(self._version(current_slot[0], resource))
                    outcome.updated += 1
                continue
            writes.append(self._version(stored.get(sid), resource, sid))
            outcome.created += 1
        for current, slot in ours.values():
            start = _interval(slot)[0]
            if low <= start < high:  # in this piece, and no longer in the hours
                writes.append(self._version(current, None))
                outcome.deleted += 1
        if writes:
            await self.storage.write(writes, s)
        return outcome

    def _version(
        self, current: StoredVersion | None, resource: dict[str, Any] | None, sid: str = ""
    ) -> VersionWrite:
        method = "DELETE" if resource is None else ("PUT" if current else "POST")
        return self.new_version("Slot", current.id if current else sid, resource, current, method)


def _interval(slot: dict[str, Any]) -> Interval:
    return parse_range(str(slot.get("start")))[0], parse_range(str(slot.get("end")))[0]
