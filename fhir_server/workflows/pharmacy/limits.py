"""What a prescription allows to be dispensed (medicationrequest.html,
``dispenseRequest``: "the quantity ... to be dispensed for one fill" and
``numberOfRepeatsAllowed``: "the number of times ... the prescription can be refilled",
so in all quantity x (1 + numberOfRepeatsAllowed)).

A ``completed`` MedicationDispense whose ``authorizingPrescription`` is a
MedicationRequest stored here counts against it. One given from a stock kept here (at
a location that keeps stock, see movements.py) is refused (422) unless the request is ``active``
and the total dispensed stays within what it allows; any other reports a fact from
elsewhere (another pharmacy, an imported history): it is counted, but neither
refused nor allowed to change the request (an imported history keeps the status the
legacy system gave it). When a dispense given here brings the total to what the request
allows, the request becomes ``completed`` in the same transaction; a cancelled dispense
gives its quantity back, and a request this rule completed becomes ``active`` again.

``stock_dispensed``: per dispense, the request and quantity it counted against;
``stock_prescriptions``: per request, the total dispensed.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

from bson.decimal128 import Decimal128

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.workflows.pharmacy.items import location, plain, quantity
from fhir_server.workflows.pharmacy.ledger import Ledger, decimal
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.booking import local_reference

COUNTED = "stock_dispensed"
TOTALS = "stock_prescriptions"


def _request(dispense: dict[str, Any]) -> str | None:
    for ref in dispense.get("authorizingPrescription") or []:
        found = local_reference(ref, ("MedicationRequest",))
        if found is not None:
            return found
    return None


async def _enforced(tx: Transaction, dispense: dict[str, Any] | None) -> bool:
    """Given from a stock kept here (movements.py): held to the prescription."""
    place = location(dispense.get("location")) if dispense is not None else None
    return place is not None and await Ledger(tx.db, tx.session).stocked(place)


def _counted(dispense: dict[str, Any] | None) -> tuple[str, Decimal] | None:
    if dispense is None or dispense.get("status") != "completed":
        return None
    request = _request(dispense)
    if request is None:
        return None
    return request, quantity(dispense.get("quantity"), "MedicationDispense.quantity")


def allowed(request: dict[str, Any]) -> Decimal | None:
    """quantity x (1 + numberOfRepeatsAllowed), or None when the request sets no quantity."""
    supply = request.get("dispenseRequest") or {}
    amount = (supply.get("quantity") or {}).get("value")
    if amount is None:
        return None
    repeats = supply.get("numberOfRepeatsAllowed") or 0
    return Decimal(str(amount)) * (1 + int(repeats))


class PrescriptionLimits(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"MedicationDispense"})
    collections: ClassVar[dict[str, list[Any]]] = {COUNTED: [], TOTALS: []}
    creates: ClassVar[frozenset[str]] = frozenset({"MedicationRequest"})

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        for w in writes:
            if w.rewrite:
                continue
            before = await tx.db[COUNTED].find_one({"_id": w.key}, session=tx.session)
            now = _counted(w.new)
            old = (before["req"], decimal(before["q"])) if before else None
            if old == now:
                continue
            enforce = await _enforced(tx, w.new)
            if old is not None and now is not None and old[0] == now[0]:
                await self._count(tx, now[0], now[1] - old[1], enforce)
            else:
                if old is not None:
                    await self._count(tx, old[0], -old[1], enforce)
                if now is not None:
                    await self._count(tx, now[0], now[1], enforce)
            if now is not None:
                await tx.db[COUNTED].replace_one(
                    {"_id": w.key},
                    {"_id": w.key, "req": now[0], "q": Decimal128(now[1])},
                    upsert=True,
                    session=tx.session,
                )
            else:
                await tx.db[COUNTED].delete_one({"_id": w.key}, session=tx.session)

    async def _count(self, tx: Transaction, request: str, amount: Decimal, enforce: bool) -> None:
        stored = await tx.storage.read_current(
            "MedicationRequest", request.split("/")[1], tx.session
        )
        if stored is None or stored.raw is None:
            return  # a prescription kept elsewhere: nothing to hold the dispense to
        content = load_stored(stored.raw)
        status = content.get("status")
        totals = tx.db[TOTALS]
        doc = await totals.find_one_and_update(
            {"_id": request},
            {"$inc": {"q": Decimal128(amount)}},
            upsert=True,
            return_document=True,
            session=tx.session,
        )
        assert doc is not None  # upserted
        total = decimal(doc["q"])
        limit = allowed(content)
        if amount > 0 and enforce:
            if status != "active":
                raise FhirError.of(
                    422,
                    "business-rule",
                    f"{request} is {status!r}: only an active prescription is dispensed",
                    "MedicationDispense.authorizingPrescription",
                )
            if limit is not None and total > limit:
                raise FhirError.of(
                    422,
                    "business-rule",
                    f"{request} allows {plain(limit)} in all (quantity x (1 + repeats)); "
                    f"{plain(total - amount)} has been dispensed, so {plain(amount)} more "
                    "is too much",
                    "MedicationDispense.quantity",
                )
        if amount > 0 and enforce:
            if limit is not None and total >= limit and status == "active":
                tx.update(stored, {**content, "status": "completed"}, content)
                await totals.update_one(
                    {"_id": request}, {"$set": {"ours": True}}, session=tx.session
                )
        elif status == "completed" and doc.get("ours") and (limit is None or total < limit):
            tx.update(stored, {**content, "status": "active"}, content)
            await totals.update_one({"_id": request}, {"$set": {"ours": False}}, session=tx.session)
