"""The stock part of the dispenses report: each dispense's product, and the pharmacy
ledger's figures per product (docs/pharmacy.md): usable quantity on hand now, and the
batches that expire within N days.

Stock is not in any resource (R4 has no stock ledger): it is the ledger the pharmacy's
rules keep, the one ``$stock`` answers from, under ``$stock``'s rule: a read scope on
SupplyDelivery that no patient context confines, else 403.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from fhir_server.authz.policy import Policy
from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.storage import Storage
from fhir_server.views.engine import Row
from fhir_server.workflows.pharmacy.items import fold, product_key
from fhir_server.workflows.pharmacy.ledger import STOCK, decimal, expired


@dataclass(slots=True)
class Holding:
    on_hand: Decimal = Decimal(0)
    expiring: Decimal = Decimal(0)
    lots: list[str] = field(default_factory=list)
    name: str | None = None


async def require_stock_scope(policy: Policy) -> None:
    """$stock's authorization (fhir_server/workflows/pharmacy/operations.py)."""
    policy.require("SupplyDelivery", "r")
    if await policy.confines("SupplyDelivery", "r"):
        raise FhirError.of(
            403,
            "forbidden",
            "The stock figures need a read scope on SupplyDelivery for the whole store "
            "(user/ or system/), not one confined to a patient",
            "SupplyDelivery",
        )


async def add_products(rows: list[Row], storage: Storage, policy: Policy) -> None:
    """Each row's ``product`` (the ledger's key: first coding ``system|code``, else the
    folded text) and ``product_name``; a dispense naming a Medication by reference takes
    that Medication's code, when the token may read it."""
    named: dict[str, tuple[str | None, str | None]] = {}
    for row in rows:
        product, name = None, row.get("text") or row.get("display") or row.get("code")
        if row.get("system") and row.get("code"):
            product = f"{row['system']}|{row['code']}"
        elif isinstance(row.get("text"), str) and row["text"].strip():
            product = "text:" + fold(row["text"])
        elif isinstance(row.get("medication"), str):
            ref = row["medication"]
            if ref not in named:
                named[ref] = await _medication(ref, storage, policy)
            product, name = named[ref]
        row["product"] = product
        row["product_name"] = name


async def _medication(ref: str, storage: Storage, policy: Policy) -> tuple[str | None, str | None]:
    kind, _, rid = ref.partition("/")
    if kind != "Medication" or not rid:
        return None, None
    if await policy.try_restriction("Medication", "r") is None:
        return None, None
    stored = await storage.read_current("Medication", rid)
    if stored is None or stored.deleted or stored.raw is None:
        return None, None
    if not await policy.contains("Medication", rid, "r"):
        return None, None
    med = load_stored(stored.raw)
    code = med.get("code")
    name = None
    if isinstance(code, dict):
        name = code.get("text") or next(
            (c.get("display") for c in code.get("coding", []) if c.get("display")), None
        )
    return product_key(code), name


async def holdings(storage: Storage, today: date, days: int) -> dict[str, Holding]:
    """Per product, over every location: usable stock now, and the unexpired batches
    whose last day of use falls within ``days`` days of today."""
    limit = (today + timedelta(days=days)).isoformat()
    found: dict[str, Holding] = defaultdict(Holding)
    cursor = storage.db[STOCK].find({}, {"_id": 0}).sort([("prod", 1), ("xs", 1), ("lot", 1)])
    async for b in cursor:
        qty = decimal(b["qty"])
        if qty == 0:
            continue
        holding = found[b["prod"]]
        holding.name = holding.name or b.get("name")
        if expired(b, today):
            continue
        holding.on_hand += qty
        if str(b.get("xs", "")) <= limit:
            holding.expiring += qty
            holding.lots.append(f"{b.get('lot') or '-'} ({b.get('exp') or b.get('xs')}): {qty}")
    return dict(found)


def stock_measures(found: dict[str, Holding]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {
        (product,): {
            "on_hand": h.on_hand,
            "expiring": h.expiring,
            "expiring_lots": "; ".join(h.lots),
        }
        for product, h in found.items()
    }
