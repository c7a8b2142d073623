"""Invoice numbers: ``establecimiento-punto de emisión-secuencial`` as the SRI writes
them (``001-001-000000123``), sequential per issuer, without gaps.

The secuencial comes from a counter document per issuer (``billing_invoice_counters``,
``_id`` the issuer ``Organization/<id>``) incremented with ``find_one_and_update``
in the transaction that stores the issued version (by Invoice/[id]/$issue, or a plain
update, patch or transaction entry setting ``issued``). Two issuings
at once both write the counter: one of the transactions conflicts and is retried from
the start, so each takes the next number after the other's commit; an issuing that
fails (a refused write, a crash) rolls its increment back with it. Hence numbers
1, 2, 3, ... in commit order, none skipped, none twice.

The rule ``InvoiceNumbers`` draws the number and puts it on the version being written
(``Transaction.amend``: the answer carries it); lifecycle.py refuses a number written by
hand, and every number is recorded once (``billing_invoice_numbers``, ``_id`` issuer and
number). An imported invoice
(created issued, balanced or cancelled by the server) keeps its number, in whatever
format the old system wrote it; it is recorded, and when it is of this server's
series (same establecimiento and punto de emisión) the counter moves past it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from pymongo import ReturnDocument

from fhir_server.outcome import FhirError
from fhir_server.storage.store import Session, Storage
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.booking import local_reference

NUMBER_SYSTEM = "urn:fhir-server:ec:invoice-number"
COUNTERS = "billing_invoice_counters"
NUMBERS = "billing_invoice_numbers"
_NUMBER = re.compile(r"^([0-9]{3})-([0-9]{3})-([0-9]{9})$")
NUMBERED = frozenset({"issued", "balanced", "cancelled"})


def number_of(invoice: dict[str, Any]) -> str | None:
    for identifier in invoice.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == NUMBER_SYSTEM:
            value = identifier.get("value")
            return value if isinstance(value, str) else ""
    return None


def issuer_of(invoice: dict[str, Any]) -> str | None:
    return local_reference(invoice.get("issuer"), ("Organization",))


def formatted(establishment: str, point: str, sequence: int) -> str:
    return f"{establishment}-{point}-{sequence:09d}"


async def draw(storage: Storage, issuer: str, session: Session) -> int:
    """The next secuencial of ``issuer``, in ``session``'s transaction."""
    doc = await storage.db[COUNTERS].find_one_and_update(
        {"_id": issuer},
        {"$inc": {"n": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
        session=session,
    )
    assert doc is not None
    return int(doc["n"])


class InvoiceNumbers(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"Invoice"})
    collections: ClassVar[dict[str, list[Any]]] = {COUNTERS: [], NUMBERS: []}

    def __init__(self, establishment: str = "001", point: str = "001") -> None:
        self.establishment = establishment
        self.point = point

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        for w in writes:
            if w.rewrite or w.new is None or w.new.get("status") not in NUMBERED:
                continue
            issuing = w.previous is not None and w.previous.get("status") == "draft"
            issuer = issuer_of(w.new)
            if issuing:
                await self._issue(tx, w, issuer)
                continue
            number = number_of(w.new)
            if number is None:
                continue  # an import without a number
            issuer = issuer or "-"  # an imported number without its issuer: unique all the same
            key = f"{issuer}|{number}"
            found = await tx.db[NUMBERS].find_one({"_id": key}, session=tx.session)
            if found is not None:
                if found["i"] == w.key:
                    continue
                raise FhirError.of(
                    409,
                    "conflict",
                    f"{issuer} already issued invoice number {number}",
                    "Invoice.identifier",
                )
            match = _NUMBER.match(number)
            if match is not None and match.group(1, 2) == (self.establishment, self.point):
                # an import in this server's series: the counter moves past it
                await tx.db[COUNTERS].update_one(
                    {"_id": issuer},
                    {"$max": {"n": int(match.group(3))}},
                    upsert=True,
                    session=tx.session,
                )
            await tx.db[NUMBERS].insert_one({"_id": key, "i": w.key}, session=tx.session)

    async def _issue(self, tx: Transaction, w: Write, issuer: str | None) -> None:
        """Draw the issuer's next number and put it on the version being written (the
        life cycle refuses a number given by hand)."""
        assert w.new is not None
        if issuer is None:
            raise FhirError.of(
                422,
                "business-rule",
                "An issued invoice needs its issuer (a reference to the Organization)",
                "Invoice.issuer",
            )
        number = formatted(
            self.establishment, self.point, await draw(tx.storage, issuer, tx.session)
        )
        identifiers = [*(w.new.get("identifier") or []), {"system": NUMBER_SYSTEM, "value": number}]
        tx.amend(w, {**w.new, "identifier": identifiers})
        await tx.db[NUMBERS].insert_one(
            {"_id": f"{issuer}|{number}", "i": w.key}, session=tx.session
        )
