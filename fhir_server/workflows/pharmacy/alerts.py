"""Low stock: a threshold per medication and location (the ``stock-threshold``
extension on the product's Medication: a ``minimum`` quantity, for one ``location`` or,
without it, for every location). When the usable stock of a product at a location falls
below its minimum, one ``Flag`` (on the Medication) and one ``Task`` (for the pharmacy at
that Location) are created, and the event goes to the outbox (topic ``stock``). They are
not repeated while the stock stays low; when it is replenished to the minimum again the
Flag becomes ``inactive`` and the Task ``completed``.

``stock_thresholds``: one document per Medication and location (``*``: any);
``stock_alerts``: the open alert of a location and product, naming its Flag and Task.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from bson.decimal128 import Decimal128
from pymongo import ASCENDING, IndexModel

from fhir_server.jsonio import load_stored
from fhir_server.workflows.pharmacy.items import location, plain, product_key, quantity
from fhir_server.workflows.pharmacy.ledger import STOCK, Ledger
from fhir_server.workflows.pipeline import OUTBOX, Rule, Transaction, Write
from profiles import STOCK_THRESHOLD as THRESHOLD

THRESHOLDS = "stock_thresholds"
ALERTS = "stock_alerts"
ANY = "*"
INDEXES: dict[str, list[IndexModel]] = {
    THRESHOLDS: [
        IndexModel([("prod", ASCENDING), ("loc", ASCENDING)], name="product"),
        IndexModel([("med", ASCENDING)], name="medication"),
    ],
    ALERTS: [],
}


def thresholds(medication: dict[str, Any]) -> list[tuple[str, Decimal]]:
    """(location or ``*``, minimum) of each stock-threshold extension."""
    out = []
    for ext in medication.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") != THRESHOLD:
            continue
        parts = {e.get("url"): e for e in ext.get("extension") or [] if isinstance(e, dict)}
        minimum = quantity(
            (parts.get("minimum") or {}).get("valueQuantity"), "Medication.extension"
        )
        place = location((parts.get("location") or {}).get("valueReference"))
        out.append((place or ANY, minimum))
    return out


class StockThresholds(Rule):
    """Keeps ``stock_thresholds`` in step with the Medications' extensions, and raises
    or closes alerts at once when a threshold changes."""

    types: ClassVar[frozenset[str]] = frozenset({"Medication"})
    collections = INDEXES
    creates: ClassVar[frozenset[str]] = frozenset({"Flag", "Task"})

    def __init__(self, timezone: str = "UTC") -> None:
        self.zone = ZoneInfo(timezone)

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        table = tx.db[THRESHOLDS]
        touched: set[tuple[str, str]] = set()
        for w in writes:
            if w.rewrite:
                continue
            old = await table.find({"med": w.key}, session=tx.session).to_list(None)
            given = thresholds(w.new) if w.new is not None else []
            product = product_key(w.new.get("code")) if w.new is not None else None
            if not old and not given:
                continue
            await table.delete_many({"med": w.key}, session=tx.session)
            if given and product is not None:
                await table.insert_many(
                    [
                        {
                            "_id": f"{w.key}|{place}",
                            "med": w.key,
                            "prod": product,
                            "loc": place,
                            "min": Decimal128(minimum),
                        }
                        for place, minimum in given
                    ],
                    session=tx.session,
                )
            for doc in old:
                touched.update(await _places(tx, doc["prod"], doc["loc"]))
            if product is not None:
                for place, _ in given:
                    touched.update(await _places(tx, product, place))
        if touched:
            today = datetime.now(self.zone).date()
            await check(tx, Ledger(tx.db, tx.session), touched, today)


async def _places(tx: Transaction, product: str, place: str) -> set[tuple[str, str]]:
    if place != ANY:
        return {(place, product)}
    found = await tx.db[STOCK].distinct("loc", {"prod": product}, session=tx.session)
    return {(str(p), product) for p in found}


async def check(
    tx: Transaction, ledger: Ledger, pairs: Iterable[tuple[str, str]], today: date
) -> None:
    """Raise or close the alert of each (location, product) whose stock moved."""
    for place, product in sorted(pairs):
        rule = await tx.db[THRESHOLDS].find_one(
            {"prod": product, "loc": {"$in": [place, ANY]}},
            sort=[("loc", -1)],  # a location's own threshold before the ``*`` one
            session=tx.session,
        )
        key = f"{place}|{product}"
        alert = await tx.db[ALERTS].find_one({"_id": key}, session=tx.session)
        if rule is None and alert is None:
            continue
        have = await ledger.on_hand(place, product, today)
        low = rule is not None and have < rule["min"].to_decimal()
        if low and alert is None and rule is not None:
            await _raise(tx, key, place, product, rule, have)
        elif not low and alert is not None:
            await _close(tx, alert)


async def _raise(
    tx: Transaction, key: str, place: str, product: str, rule: dict[str, Any], have: Decimal
) -> None:
    now = datetime.now(UTC)
    stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    minimum = plain(rule["min"].to_decimal())
    batch = await tx.db[STOCK].find_one({"prod": product, "loc": place}, session=tx.session)
    name = (batch or {}).get("name") or product
    text = f"Stock bajo / low stock: {name} at {place}: {plain(have)} (minimum {minimum})"
    flag = tx.create(
        {
            "resourceType": "Flag",
            "status": "active",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/flag-category",
                            "code": "admin",
                            "display": "Administrative",
                        }
                    ]
                }
            ],
            "code": {"text": text},
            "subject": {"reference": rule["med"]},
            "period": {"start": stamp},
        },
        now,
    )
    task = tx.create(
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "priority": "urgent",
            "code": {"text": "Reponer stock / restock"},
            "description": text,
            "focus": {"reference": rule["med"]},
            "location": {"reference": place},
            "authoredOn": stamp,
        },
        now,
    )
    await tx.db[ALERTS].insert_one(
        {"_id": key, "flag": flag.id, "task": task.id, "since": now}, session=tx.session
    )
    await tx.db[OUTBOX].insert_one(
        {
            "_id": str(uuid.uuid4()),
            "topic": "stock",
            "activity": "low",
            "target": f"Flag/{flag.id}",
            "location": place,
            "medication": rule["med"],
            "created": now,
        },
        session=tx.session,
    )


async def _close(tx: Transaction, alert: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    flag = await tx.storage.read_current("Flag", alert["flag"], tx.session)
    if flag is not None and flag.raw is not None:
        content = load_stored(flag.raw)
        if content.get("status") == "active":
            period = {**(content.get("period") or {}), "end": stamp}
            tx.update(flag, {**content, "status": "inactive", "period": period}, content)
    task = await tx.storage.read_current("Task", alert["task"], tx.session)
    if task is not None and task.raw is not None:
        content = load_stored(task.raw)
        if content.get("status") not in ("completed", "cancelled", "failed"):
            tx.update(task, {**content, "status": "completed", "lastModified": stamp}, content)
    await tx.db[ALERTS].delete_one({"_id": alert["_id"]}, session=tx.session)
