"""Payments are PaymentReconciliations (paymentreconciliation.html): each
``detail`` with ``request`` a reference to the Invoice it pays and ``amount`` what was
paid of it. R4 types ``PaymentReconciliation.detail.request`` as Reference(Any) ("A
link to, or reference to, the request to which this payment applies"): the invoice is
that request. (``detail.response``, ``submitter`` and ``payee`` name the parties, and
R4 has no Invoice element on the payment otherwise.)

The rule keeps a ledger, ``billing_payments``: one document per detail of an
``active`` PaymentReconciliation, replaced on every write of it (a payment cancelled,
entered in error or deleted counts no more). In the same transaction an ``issued``
invoice whose payments now cover its ``totalGross`` becomes ``balanced``
(invoice.html#status: "balanced: the invoice has been fully paid"). A balanced invoice
stays balanced if a payment is withdrawn later (a refund is a matter for the till).

A payment must be in USD, positive, and for an issued (or balanced) invoice: 422 with
the detail's expression otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

from bson.decimal128 import Decimal128
from pymongo import ASCENDING, IndexModel

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.workflows.billing.money import ZERO, amount_of
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.booking import local_reference

PAYMENTS = "billing_payments"
PAYABLE = frozenset({"issued", "balanced"})


def _details(payment: dict[str, Any]) -> list[tuple[int, str, Any]]:
    """(index, ``Invoice/<id>``, amount) of the details that pay an invoice."""
    found = []
    for i, detail in enumerate(payment.get("detail") or []):
        if not isinstance(detail, dict):
            continue
        invoice = local_reference(detail.get("request"), ("Invoice",))
        if invoice is not None:
            found.append((i, invoice, detail.get("amount")))
    return found


class Payments(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"PaymentReconciliation"})
    creates: ClassVar[frozenset[str]] = frozenset({"Invoice"})
    collections: ClassVar[dict[str, list[IndexModel]]] = {
        PAYMENTS: [
            IndexModel([("p", ASCENDING)], name="payment"),
            IndexModel([("inv", ASCENDING)], name="invoice"),
        ]
    }

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        ledger = tx.db[PAYMENTS]
        mine = [w.key for w in writes]
        touched: set[str] = set()
        async for doc in ledger.find({"p": {"$in": mine}}, {"inv": 1}, session=tx.session):
            touched.add(doc["inv"])
        await ledger.delete_many({"p": {"$in": mine}}, session=tx.session)
        paying = [
            (w, i, invoice, amount)
            for w in writes
            if w.new is not None and w.new.get("status") == "active"
            for i, invoice, amount in _details(w.new)
        ]
        invoices = await self._invoices(tx, {p[2] for p in paying} | touched)
        docs: list[dict[str, Any]] = []
        for w, i, invoice, amount in paying:
            where = f"PaymentReconciliation.detail[{i}]"
            paid = amount_of(amount)
            if paid is None or paid <= 0:
                raise FhirError.of(
                    422,
                    "business-rule",
                    "A payment's amount is a positive amount in USD",
                    f"{where}.amount",
                )
            status = invoices.get(invoice, (None, {}))[1].get("status")
            if status not in PAYABLE:
                raise FhirError.of(
                    422,
                    "business-rule",
                    f"{invoice} is {status or 'not known'}: only an issued invoice is paid",
                    f"{where}.request",
                )
            amt = Decimal128(paid)
            docs.append({"_id": f"{w.key}|{i}", "p": w.key, "inv": invoice, "amt": amt})
        if docs:
            await ledger.insert_many(docs, session=tx.session)
        for key in sorted({d["inv"] for d in docs}):
            current, paid_for = invoices[key]
            if paid_for.get("status") != "issued":
                continue
            total = amount_of(paid_for.get("totalGross"))
            if total is not None and await self._paid(tx, key) >= total:
                tx.update(current, {**paid_for, "status": "balanced"}, paid_for)

    @staticmethod
    async def _invoices(tx: Transaction, keys: set[str]) -> dict[str, tuple[Any, dict[str, Any]]]:
        ids = sorted(k.split("/", 1)[1] for k in keys)
        if not ids:
            return {}
        return {
            f"Invoice/{c.id}": (c, load_stored(c.raw))
            for c in await tx.storage.read_many("Invoice", ids, tx.session)
            if c.raw is not None
        }

    @staticmethod
    async def _paid(tx: Transaction, invoice: str) -> Decimal:
        total = ZERO
        async for doc in tx.db[PAYMENTS].find({"inv": invoice}, {"amt": 1}, session=tx.session):
            total += doc["amt"].to_decimal()
        return total
