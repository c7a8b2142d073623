"""Which writes move stock, and how (docs/pharmacy.md).

- A ``SupplyDelivery`` with status ``completed``, a Medication item (a code, a contained
  or a stored Medication; its batch is the Medication's ``batch``) and a ``destination``
  Location adds its quantity there. With the ``stock-adjustment`` extension (breakage,
  expiry write-off, inventory count) the quantity may be negative: it is written off.
- A ``MedicationDispense`` with status ``completed`` at a ``location`` where stock is
  kept (one that has ever received stock) takes its quantity from that location's
  unexpired batches, earliest expiry first, and records the batches on itself
  (``dispensed-batch`` extensions). A dispense without a location, or at one that keeps
  no stock here, was not given from a stock kept here (another pharmacy, an imported
  history) and moves nothing.
- Corrections undo the recorded move and apply the new one (a receipt whose stock was
  used since cannot be withdrawn: 409). A completed dispense returns its quantity when it
  becomes ``entered-in-error`` or ``cancelled`` or is deleted; its medication, quantity
  and location cannot change otherwise (422: cancel it and dispense again).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from fhir_server.outcome import FhirError
from fhir_server.workflows.pharmacy import alerts
from fhir_server.workflows.pharmacy.items import Item, location, plain, quantity, resolve
from fhir_server.workflows.pharmacy.ledger import INDEXES, MOVES, Ledger, Line
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.booking import local_reference
from profiles import DISPENSED_BATCH
from profiles import STOCK_ADJUSTMENT as ADJUSTMENT

_RETURNS = ("entered-in-error", "cancelled")


def _extension(resource: dict[str, Any], url: str) -> dict[str, Any] | None:
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext
    return None


class StockMovements(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"SupplyDelivery", "MedicationDispense"})
    collections = {**INDEXES, **alerts.INDEXES}
    creates: ClassVar[frozenset[str]] = frozenset({"Flag", "Task"})

    def __init__(self, timezone: str = "UTC") -> None:
        self.zone = ZoneInfo(timezone)

    def today(self) -> date:
        return datetime.now(self.zone).date()

    async def before_write(self, writes: Sequence[Write]) -> None:
        """Stock is the pharmacy's: a patient (or a patient-facing app) may record a
        dispense or a delivery that does not touch it, but never move it."""
        for w in writes:
            if w.context.patient_side and (_moves(w.previous) or _moves(w.new)):
                raise FhirError.of(
                    403,
                    "forbidden",
                    f"{w.type} that moves the pharmacy's stock is written by staff, "
                    "not with a patient's token",
                    f"{w.type}.status",
                )

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        ledger = Ledger(tx.db, tx.session)
        touched: set[tuple[str, str]] = set()
        for w in writes:
            if w.rewrite:
                continue
            if w.type == "SupplyDelivery":
                await self._receipt(tx, ledger, w, touched)
            else:
                await self._dispense(tx, ledger, w, touched)
        if touched:
            await alerts.check(tx, ledger, touched, self.today())

    async def _receipt(
        self, tx: Transaction, ledger: Ledger, w: Write, touched: set[tuple[str, str]]
    ) -> None:
        moved = await self._receipt_move(tx, w.new)
        recorded = await ledger.recorded(w.key)
        signature = _signature(moved)
        if recorded is not None and recorded["sig"] == signature:
            return
        if recorded is not None:
            await ledger.undo([Line.of(d) for d in recorded["lines"]], "SupplyDelivery.status")
            touched.update(_pairs(recorded))
        if moved is None:
            await ledger.forget(w.key)
            return
        where, item, amount = moved
        line = await ledger.receive(where, item, amount, "SupplyDelivery.suppliedItem.quantity")
        await ledger.record(w.key, [line], signature)
        touched.add((where, item.product))

    async def _receipt_move(
        self, tx: Transaction, resource: dict[str, Any] | None
    ) -> tuple[str, Item, Decimal] | None:
        """(location, item, signed quantity) of a receipt that moves stock, else None."""
        if resource is None or resource.get("status") != "completed":
            return None
        place = location(resource.get("destination"))
        supplied = resource.get("suppliedItem")
        if place is None or not isinstance(supplied, dict):
            return None
        concept, ref = supplied.get("itemCodeableConcept"), supplied.get("itemReference")
        kind = ((resource.get("type") or {}).get("coding") or [{}])[0].get("code")
        names_medication = local_reference(ref, ("Medication",)) is not None or (
            isinstance(ref, dict) and str(ref.get("reference", "")).startswith("#")
        )
        if not names_medication and not (concept is not None and kind == "medication"):
            return None  # a device or another supply: not kept in this ledger
        where = "SupplyDelivery.suppliedItem.item"
        item = await resolve(resource, concept, ref, where, tx.storage, tx.session)
        amount = quantity(supplied.get("quantity"), "SupplyDelivery.suppliedItem.quantity")
        if amount < 0 and _extension(resource, ADJUSTMENT) is None:
            raise FhirError.of(
                422,
                "business-rule",
                "A negative quantity is a write-off: give the stock-adjustment extension "
                f"({ADJUSTMENT}) with its reason",
                "SupplyDelivery.suppliedItem.quantity.value",
            )
        return place, item, amount

    async def _dispense(
        self, tx: Transaction, ledger: Ledger, w: Write, touched: set[tuple[str, str]]
    ) -> None:
        recorded = await ledger.recorded(w.key)
        new = w.new
        if recorded is not None:
            status = new.get("status") if new is not None else None
            if new is None or status in _RETURNS:
                await ledger.undo([Line.of(d) for d in recorded["lines"]], "")
                await ledger.forget(w.key)
                touched.update(_pairs(recorded))
                return
            moved = await self._dispense_move(tx, ledger, new)
            if status != "completed" or _signature(moved) != recorded["sig"]:
                raise FhirError.of(
                    422,
                    "business-rule",
                    f"MedicationDispense/{w.id} has taken its stock: its status, medication, "
                    "quantity and location can no longer change. Set it to "
                    "entered-in-error (the stock goes back) and dispense again",
                    "MedicationDispense.status",
                )
            lines = [Line.of(d) for d in recorded["lines"]]
            if _batches(new) != _batch_extensions(lines):
                tx.amend(w, _with_batches(new, lines))
            return
        moved = await self._dispense_move(tx, ledger, new)
        if moved is None:
            return
        where, item, amount = moved
        lines = await ledger.draw(where, item, amount, self.today(), "MedicationDispense.quantity")
        await ledger.record(w.key, lines, _signature(moved))
        assert new is not None
        tx.amend(w, _with_batches(new, lines))
        touched.add((where, item.product))

    async def _dispense_move(
        self, tx: Transaction, ledger: Ledger, resource: dict[str, Any] | None
    ) -> tuple[str, Item, Decimal] | None:
        if resource is None or resource.get("status") != "completed":
            return None
        place = location(resource.get("location"))
        if place is None or not await ledger.stocked(place):
            return None
        item = await resolve(
            resource,
            resource.get("medicationCodeableConcept"),
            resource.get("medicationReference"),
            "MedicationDispense.medication",
            tx.storage,
            tx.session,
        )
        amount = quantity(resource.get("quantity"), "MedicationDispense.quantity")
        if amount <= 0:
            raise FhirError.of(
                422,
                "business-rule",
                "A dispense takes a positive quantity",
                "MedicationDispense.quantity.value",
            )
        return place, item, amount


def _moves(resource: dict[str, Any] | None) -> bool:
    """Is this the shape of a version that moves stock (see the module docstring)?"""
    if resource is None or resource.get("status") != "completed":
        return False
    if resource.get("resourceType") == "MedicationDispense":
        return location(resource.get("location")) is not None
    return location(resource.get("destination")) is not None


def _signature(moved: tuple[str, Item, Decimal] | None) -> str:
    if moved is None:
        return ""
    where, item, amount = moved
    return f"{where}|{item.product}|{item.lot or ''}|{item.expiry or ''}|{amount.normalize()}"


def _pairs(recorded: dict[str, Any]) -> set[tuple[str, str]]:
    """(location, product) of each batch a recorded move touched."""
    return {(d["loc"], d["prod"]) for d in recorded["lines"]}


def _batch_extensions(lines: list[Line]) -> list[dict[str, Any]]:
    """The ``dispensed-batch`` extensions for a dispense's lines."""
    out = []
    for line in lines:
        parts: list[dict[str, Any]] = []
        if line.lot:
            parts.append({"url": "lotNumber", "valueString": line.lot})
        if line.expiry:
            parts.append({"url": "expirationDate", "valueDateTime": line.expiry})
        if line.medication:
            parts.append({"url": "medication", "valueReference": {"reference": line.medication}})
        parts.append({"url": "quantity", "valueQuantity": {"value": plain(-line.quantity)}})
        out.append({"url": DISPENSED_BATCH, "extension": parts})
    return out


def _batches(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension") or [] if e.get("url") == DISPENSED_BATCH]


def _with_batches(resource: dict[str, Any], lines: list[Line]) -> dict[str, Any]:
    others = [e for e in resource.get("extension") or [] if e.get("url") != DISPENSED_BATCH]
    return {**resource, "extension": [*others, *_batch_extensions(lines)]}


__all__ = ["MOVES", "StockMovements"]
