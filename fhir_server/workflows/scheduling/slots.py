"""A Slot's status follows the appointments on it, in the same transaction: ``busy``
under an active appointment, ``busy-tentative`` under a ``pending`` one (a hold, or an
appointment awaiting confirmation; also ``proposed``/``waitlist``), ``free`` again when
the appointment leaves it, becomes inactive or is deleted. Slots that are not stored
here (or are deleted) are left alone; a Slot marked ``busy-unavailable`` or
``entered-in-error`` by hand is never changed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fhir_server.jsonio import load_stored
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.booking import KEYS, is_active, local_reference

TENTATIVE = frozenset({"pending", "proposed", "waitlist"})
_MANAGED = frozenset({"free", "busy", "busy-tentative"})


def slots_of(appointment: dict[str, Any] | None) -> list[str]:
    if not is_active(appointment):
        return []
    assert appointment is not None
    refs = (local_reference(s, ("Slot",)) for s in appointment.get("slot") or [])
    return [r.split("/", 1)[1] for r in refs if r is not None]


class SlotStatus(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"Appointment"})
    creates: ClassVar[frozenset[str]] = frozenset({"Slot"})

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        wanted: dict[str, str] = {}
        for w in writes:
            for sid in slots_of(w.previous):
                wanted.setdefault(sid, "free")
        for w in writes:
            status = "busy-tentative" if (w.new or {}).get("status") in TENTATIVE else "busy"
            for sid in slots_of(w.new):
                wanted[sid] = status
        if not wanted:
            return
        # a slot another appointment holds now (its booking key) stays as it is
        freed = [f"slot|Slot/{sid}" for sid, status in wanted.items() if status == "free"]
        if freed:
            taken = await tx.db[KEYS].distinct("_id", {"_id": {"$in": freed}}, session=tx.session)
            for key in taken:
                del wanted[key.removeprefix("slot|Slot/")]
        if not wanted:
            return
        stored = await tx.storage.read_many("Slot", sorted(wanted), tx.session)
        for current in stored:
            if current.raw is None:
                continue
            slot = load_stored(current.raw)
            status = wanted[current.id]
            if slot.get("status") in _MANAGED and slot.get("status") != status:
                tx.update(current, {**slot, "status": status}, slot)
