"""The Invoice life cycle (invoice.html#status: draft | issued | balanced | cancelled |
entered-in-error), enforced on every write path:

    draft  -> issued (numbering.py gives the number), cancelled, entered-in-error
    issued -> balanced (paid: payments.py does it), cancelled (with ``cancelledReason``)
    balanced, cancelled, entered-in-error: final

Invoice.status is a modifier (invoice.html: "issued: the invoice has been finalized
and sent to the recipient"), and an issued invoice is a tax document: once it leaves
draft nothing of it may change but its status (to the next one) and, on
cancellation, ``cancelledReason``; ``meta`` and ``text`` are the server's and the
narrative. Nor can it be deleted (a draft can). A draft carries no invoice number
(numbering.py gives one when it is issued).

An invoice is created as a draft; only the server itself (an importer, or any writer
with authorization off) may create one already issued, balanced or cancelled, as it
was in the system it comes from (with its number, if it had one).

Billing resources are written by staff: a patient-side token (pipeline.WriteContext)
may not create, change or delete Invoices, ChargeItems, ChargeItemDefinitions,
Accounts or PaymentReconciliations, whatever its scopes (403); it reads its own
invoices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fhir_server.outcome import FhirError
from fhir_server.workflows.billing.numbering import number_of
from fhir_server.workflows.pipeline import Rule, Write

TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"issued", "cancelled", "entered-in-error"}),
    "issued": frozenset({"balanced", "cancelled"}),
    "balanced": frozenset(),
    "cancelled": frozenset(),
    "entered-in-error": frozenset(),
}
_MAY_CHANGE = frozenset({"status", "cancelledReason", "meta", "text"})
BILLING_TYPES = frozenset(
    {"Invoice", "ChargeItem", "ChargeItemDefinition", "Account", "PaymentReconciliation"}
)


def allowed(old: str, new: str) -> bool:
    return old == new or new in TRANSITIONS.get(old, frozenset())


def _refuse(message: str, expression: str, status: int = 422) -> FhirError:
    return FhirError.of(status, "business-rule", message, expression)


class StaffOnly(Rule):
    types: ClassVar[frozenset[str]] = BILLING_TYPES

    async def before_write(self, writes: Sequence[Write]) -> None:
        for w in writes:
            if w.context.patient_side:
                raise FhirError.of(
                    403,
                    "forbidden",
                    f"{w.type} resources are written by the clinic's staff, not by a "
                    "patient's token",
                    w.type,
                )


class InvoiceLifecycle(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"Invoice"})

    async def before_write(self, writes: Sequence[Write]) -> None:
        for w in writes:
            if w.new is None:
                self._delete(w)
            elif w.previous is None:
                self._create(w, w.new)
            else:
                self._update(w, w.previous, w.new)

    @staticmethod
    def _delete(w: Write) -> None:
        old = (w.previous or {}).get("status")
        if old in ("issued", "balanced", "cancelled"):
            raise _refuse(
                f"Invoice/{w.id} is {old}: an issued invoice cannot be deleted (cancel it "
                "with a cancelledReason)",
                "Invoice.status",
            )

    @staticmethod
    def _create(w: Write, new: dict[str, Any]) -> None:
        status = new.get("status")
        if status == "draft":
            if number_of(new) is not None:
                raise _refuse(
                    "A draft invoice has no invoice number: it is given when the invoice "
                    "is issued (Invoice/[id]/$issue)",
                    "Invoice.identifier",
                )
            return
        if w.context.access is not None and not w.rewrite:
            raise _refuse(
                f"An invoice is created as a draft (not {status!r}), then issued with "
                "Invoice/[id]/$issue",
                "Invoice.status",
            )

    @staticmethod
    def _update(w: Write, previous: dict[str, Any], new: dict[str, Any]) -> None:
        old, status = previous.get("status", ""), new.get("status", "")
        if not allowed(old, status):
            targets = ", ".join(sorted(TRANSITIONS.get(old, ()))) or "none"
            raise _refuse(
                f"Invoice/{w.id} cannot go from status {old!r} to {status!r} (from "
                f"{old!r} it may go to: {targets}; see docs/billing.md)",
                "Invoice.status",
            )
        if old != "draft":
            for field in sorted((set(previous) | set(new)) - _MAY_CHANGE):
                if previous.get(field) != new.get(field):
                    raise _refuse(
                        f"Invoice/{w.id} is {old}: an issued invoice cannot be changed, "
                        "only cancelled (with a cancelledReason) or balanced",
                        f"Invoice.{field}",
                    )
            if previous.get("cancelledReason") != new.get("cancelledReason") and not (
                old == "issued" and status == "cancelled"
            ):
                raise _refuse(
                    f"Invoice/{w.id}: cancelledReason is given when the invoice is cancelled",
                    "Invoice.cancelledReason",
                )
        if status == "cancelled" and old == "issued":
            reason = new.get("cancelledReason")
            if not isinstance(reason, str) or not reason.strip():
                raise _refuse(
                    f"Cancelling the issued Invoice/{w.id} needs a cancelledReason",
                    "Invoice.cancelledReason",
                )
        if status == "draft" and number_of(new) is not None:
            raise _refuse(
                "A draft invoice has no invoice number: it is given when the invoice is "
                "issued (Invoice/[id]/$issue)",
                "Invoice.identifier",
            )
        if old == "draft" and status == "issued" and number_of(new) is not None and not w.rewrite:
            raise _refuse(
                f"Invoice/{w.id}: the server gives the invoice number when the invoice is "
                "issued (the next of its issuer's series); issue it without one",
                "Invoice.identifier",
            )


class BilledByInvoices(Rule):
    """``billed`` is the invoices' to set and clear (invoiced.py): a client may not
    move a ChargeItem into or out of it, nor change a billed one (its invoice states
    its price), nor delete it. The server (its rules, an importer) may."""

    types: ClassVar[frozenset[str]] = frozenset({"ChargeItem"})

    async def before_write(self, writes: Sequence[Write]) -> None:
        for w in writes:
            if w.context.access is None or w.rewrite:
                continue
            old = (w.previous or {}).get("status")
            new = (w.new or {}).get("status")
            if "billed" in (old, new) and w.previous != w.new:
                raise _refuse(
                    f"ChargeItem/{w.id}: a billed charge follows its invoice (cancel the "
                    "invoice to make it billable again)",
                    "ChargeItem.status",
                )
