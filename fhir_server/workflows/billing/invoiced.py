"""Which ChargeItems an invoice holds, kept with the invoice in its transaction.

An Invoice in ``draft``, ``issued`` or ``balanced`` holds the ChargeItems of its
``lineItem.chargeItemReference``: each is ``billed`` (chargeitem.html#status: "billed:
the charge item has been included in an invoice") and has a document in
``billing_invoiced`` (``_id`` the ChargeItem, unique), so no ChargeItem is ever on two
invoices, even when two are generated at once (the second transaction conflicts, is
retried and is refused: 409). An invoice that is cancelled, entered in error or
deleted holds none: its ChargeItems are ``billable`` again, to be invoiced anew.

This is done by a rule on Invoice writes, not by the operations, so an invoice written
by hand (PUT, a transaction) holds its items the same way. A ChargeItem taken onto an
invoice must be ``billable`` (422 otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.booking import local_reference

INVOICED = "billing_invoiced"
HOLDING = frozenset({"draft", "issued", "balanced"})


def charge_items(invoice: dict[str, Any] | None) -> dict[str, str]:
    """``ChargeItem/<id>`` -> the expression of its line item, for the items an invoice
    in a holding status holds."""
    if invoice is None or invoice.get("status") not in HOLDING:
        return {}
    found: dict[str, str] = {}
    for i, line in enumerate(invoice.get("lineItem") or []):
        if not isinstance(line, dict):
            continue
        ref = local_reference(line.get("chargeItemReference"), ("ChargeItem",))
        if ref is not None:
            found.setdefault(ref, f"Invoice.lineItem[{i}].chargeItemReference")
    return found


class InvoicedItems(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"Invoice"})
    creates: ClassVar[frozenset[str]] = frozenset({"ChargeItem"})
    collections: ClassVar[dict[str, list[IndexModel]]] = {
        INVOICED: [IndexModel([("i", ASCENDING)], name="invoice")]
    }

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        keys = tx.db[INVOICED]
        mine = [w.key for w in writes if w.previous is not None or w.rewrite]
        held: dict[str, str] = {}
        if mine:  # a new invoice holds nothing yet
            async for doc in keys.find({"i": {"$in": mine}}, session=tx.session):
                held[doc["_id"]] = doc["i"]
        wanted: dict[str, tuple[str, str]] = {}  # item -> (invoice, expression)
        for w in writes:
            for item, where in charge_items(w.new).items():
                if item in wanted:
                    raise _twice(item, where)
                wanted[item] = (w.key, where)
        released = [item for item, invoice in held.items() if wanted.get(item, ("",))[0] != invoice]
        added = {item: v for item, v in wanted.items() if held.get(item) != v[0]}
        if released:
            await keys.delete_many({"_id": {"$in": released}}, session=tx.session)
        await self._set_status(tx, released, added)
        if added:
            docs = [{"_id": item, "i": invoice} for item, (invoice, _) in added.items()]
            taken = await tx.claim(INVOICED, docs)
            if taken is not None:
                raise _twice(taken, added.get(taken, ("", "Invoice.lineItem"))[1])

    @staticmethod
    async def _set_status(
        tx: Transaction, released: list[str], added: dict[str, tuple[str, str]]
    ) -> None:
        ids = sorted({k.split("/", 1)[1] for k in [*released, *added]})
        if not ids:
            return
        stored = {c.id: c for c in await tx.storage.read_many("ChargeItem", ids, tx.session)}
        for item, (_, where) in added.items():
            current = stored.get(item.split("/", 1)[1])
            charge = load_stored(current.raw) if current and current.raw else None
            if current is None or charge is None:
                raise FhirError.of(422, "business-rule", f"{item} is not known", where)
            if charge.get("status") != "billable":
                raise FhirError.of(
                    422,
                    "business-rule",
                    f"{item} is {charge.get('status')!r}: only a billable ChargeItem can be "
                    "invoiced",
                    where,
                )
            tx.update(current, {**charge, "status": "billed"}, charge)
        for item in released:
            if item in added:
                continue
            current = stored.get(item.split("/", 1)[1])
            if current is None or current.raw is None:
                continue
            charge = load_stored(current.raw)
            if charge.get("status") == "billed":
                tx.update(current, {**charge, "status": "billable"}, charge)


def _twice(item: str, where: str) -> FhirError:
    return FhirError.of(409, "conflict", f"{item} is already on another invoice", where)
