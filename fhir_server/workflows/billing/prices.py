"""Prices are ChargeItemDefinitions (chargeitemdefinition.html): ``code`` the item's
code (a Procedure's code, a Medication's code), ``propertyGroup.priceComponent`` its
price: a ``base`` amount (USD), the IVA as a ``tax`` component with the SRI's code 2
and ``factor`` the rate (0 for the exempt items: medicines, medical services), and an
optional ``discount`` (an ``amount`` per unit, or a ``factor`` of the base).

R4 defines no search parameter on ChargeItemDefinition.code, so the rule ``PriceIndex``
keeps one: a document per ``system|code`` of each *active* definition, written in the
definition's own transaction, naming it. Its ``_id`` is the code, so two active
definitions for one code cannot both be stored (409): the price of a code is never
ambiguous. A definition that is retired, made draft or deleted leaves the index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.storage.store import Session, Storage
from fhir_server.workflows.billing.money import amount_of, decimal_of, is_iva
from fhir_server.workflows.pipeline import Rule, Transaction, Write

PRICES = "billing_prices"


def code_keys(concept: Any) -> list[str]:
    """``system|code`` of each coding of a CodeableConcept."""
    if not isinstance(concept, dict):
        return []
    found: list[str] = []
    for c in concept.get("coding") or []:
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            found.append(f"{c.get('system') or ''}|{c['code']}")
    return found


@dataclass(frozen=True, slots=True)
class Price:
    """The list price of one unit of a code."""

    definition: str  # ChargeItemDefinition/<id>
    url: str | None
    base: Decimal | None
    rate: Decimal | None  # the IVA factor; None: the definition states none
    discount_amount: Decimal | None = None
    discount_factor: Decimal | None = None


def price_of(definition_id: str, definition: dict[str, Any]) -> Price:
    """The first base, IVA and discount components of the definition's property
    groups (a group's ``applicability`` conditions are not evaluated: docs/billing.md)."""
    base = rate = d_amount = d_factor = None
    for group in definition.get("propertyGroup") or []:
        for component in (group or {}).get("priceComponent") or []:
            if not isinstance(component, dict):
                continue
            kind = component.get("type")
            if kind == "base" and base is None:
                base = amount_of(component.get("amount"))
            elif is_iva(component) and rate is None:
                rate = decimal_of(component.get("factor"))
            elif kind == "discount" and d_amount is None and d_factor is None:
                d_amount = amount_of(component.get("amount"))
                d_factor = decimal_of(component.get("factor")) if d_amount is None else None
    url = definition.get("url")
    return Price(
        f"ChargeItemDefinition/{definition_id}",
        url if isinstance(url, str) else None,
        base,
        rate,
        d_amount,
        d_factor,
    )


async def prices_for(
    storage: Storage, codes: Iterable[str], session: Session | None = None
) -> dict[str, Price]:
    """The active price of each ``system|code`` that has one (two queries)."""
    wanted = sorted(set(codes))
    if not wanted:
        return {}
    index: dict[str, str] = {}
    async for doc in storage.db[PRICES].find({"_id": {"$in": wanted}}, session=session):
        index[doc["_id"]] = doc["d"]
    ids = sorted({d.split("/", 1)[1] for d in index.values()})
    found: dict[str, Price] = {}
    for current in await storage.read_many("ChargeItemDefinition", ids, session):
        if current.raw is not None:
            found[current.id] = price_of(current.id, load_stored(current.raw))
    return {
        code: found[d.split("/", 1)[1]] for code, d in index.items() if d.split("/", 1)[1] in found
    }


def first_price(prices: dict[str, Price], concept: Any) -> Price | None:
    for key in code_keys(concept):
        if key in prices:
            return prices[key]
    return None


class PriceIndex(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"ChargeItemDefinition"})
    collections: ClassVar[dict[str, list[IndexModel]]] = {
        PRICES: [IndexModel([("d", ASCENDING)], name="definition")]
    }

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        prices = tx.db[PRICES]
        await prices.delete_many({"d": {"$in": [w.key for w in writes]}}, session=tx.session)
        docs: list[dict[str, Any]] = []
        where: dict[str, str] = {}
        for w in writes:
            if w.new is None or w.new.get("status") != "active":
                continue
            for key in code_keys(w.new.get("code")):
                if key in where:
                    raise _taken(key)
                where[key] = w.key
                docs.append({"_id": key, "d": w.key})
        if not docs:
            return
        taken = await tx.claim(PRICES, docs)
        if taken is not None:
            raise _taken(taken)


def _taken(key: str) -> FhirError:
    return FhirError.of(
        409,
        "conflict",
        f"Another active ChargeItemDefinition already prices the code {key!r}: retire it "
        "first (a code has one price)",
        "ChargeItemDefinition.code",
    )
