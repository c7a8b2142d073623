"""The stock ledger: quantity on hand per location, product and batch, kept in the same
MongoDB transaction as the write that moves it, so the figures are never behind the
resources and never below zero.

``stock``: one document per location, product and lot (``qty`` a Decimal128, exact);
``stock_moves``: per resource that moved stock (``SupplyDelivery/<id>``,
``MedicationDispense/<id>``), the signed quantity it moved from each batch, so that a
correction or a cancellation undoes exactly that. Concurrent writers that move the same
batch both write its document: MongoDB makes one of them conflict and the storage
retries it from the start, on the stock the other left (no oversell).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.outcome import FhirError
from fhir_server.storage.store import Session
from fhir_server.workflows.pharmacy.items import NO_EXPIRY, Item, plain

STOCK = "stock"
MOVES = "stock_moves"
INDEXES: dict[str, list[IndexModel]] = {
    STOCK: [
        IndexModel([("prod", ASCENDING), ("loc", ASCENDING), ("xs", ASCENDING)], name="product"),
        IndexModel([("loc", ASCENDING), ("prod", ASCENDING)], name="location"),
        IndexModel([("xs", ASCENDING)], name="expiry"),
    ],
    MOVES: [],
}


@dataclass(frozen=True, slots=True)
class Line:
    """A quantity moved into (positive) or out of (negative) one batch document."""

    batch: str
    quantity: Decimal
    location: str
    product: str
    lot: str | None = None
    expiry: str | None = None
    medication: str | None = None  # the batch Medication, when one was named

    def document(self) -> dict[str, Any]:
        return {
            "b": self.batch,
            "q": Decimal128(self.quantity),
            "loc": self.location,
            "prod": self.product,
            "lot": self.lot,
            "exp": self.expiry,
            "med": self.medication,
        }

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Line:
        return cls(
            doc["b"],
            decimal(doc["q"]),
            doc["loc"],
            doc["prod"],
            doc.get("lot"),
            doc.get("exp"),
            doc.get("med"),
        )


def decimal(value: Any) -> Decimal:
    return value.to_decimal() if isinstance(value, Decimal128) else Decimal(str(value))


def batch_id(location: str, product: str, lot: str | None) -> str:
    return f"{location}|{product}|{lot or ''}"


def expiry_day(value: str | None) -> str:
    """The last day a batch may be used, as YYYY-MM-DD: a month or a year given without a
    day means to its end (``2027-05`` -> ``2027-05-31``)."""
    if not value:
        return NO_EXPIRY
    parts = value[:10].split("-")
    try:
        if len(parts) == 1:
            return f"{int(parts[0]):04d}-12-31"
        if len(parts) == 2:
            year, month = int(parts[0]), int(parts[1])
            return f"{year:04d}-{month:02d}-{calendar.monthrange(year, month)[1]:02d}"
    except ValueError:
        return NO_EXPIRY
    return value[:10]


def expired(doc: dict[str, Any], today: date) -> bool:
    return str(doc.get("xs", NO_EXPIRY)) < today.isoformat()


class Ledger:
    """The ledger's reads and moves, inside one transaction (``session``)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], session: Session) -> None:
        self.stock = db[STOCK]
        self.moves = db[MOVES]
        self.session = session

    async def receive(self, location: str, item: Item, quantity: Decimal, where: str) -> Line:
        """Add (or, negative, write off) ``quantity`` of the item's batch at ``location``."""
        key = batch_id(location, item.product, item.lot)
        if quantity < 0:
            await self._take(key, -quantity, where)
        else:
            await self.stock.update_one(
                {"_id": key},
                {
                    "$inc": {"qty": Decimal128(quantity)},
                    "$set": {
                        "loc": location,
                        "prod": item.product,
                        "lot": item.lot,
                        "exp": item.expiry,
                        "xs": expiry_day(item.expiry),
                        "name": item.display,
                        "med": item.medication,
                    },
                },
                upsert=True,
                session=self.session,
            )
        return Line(key, quantity, location, item.product, item.lot, item.expiry, item.medication)

    async def draw(
        self, location: str, item: Item, quantity: Decimal, today: date, where: str
    ) -> list[Line]:
        """Take ``quantity`` from the batches at ``location`` that have not expired,
        earliest expiry first, across batches as needed (only the item's lot when the
        item is a batch). 409 with what there is when it is not enough."""
        batches = await self.batches(location, item)
        usable = [b for b in batches if not expired(b, today) and decimal(b["qty"]) > 0]
        if sum((decimal(b["qty"]) for b in usable), Decimal(0)) < quantity:
            raise FhirError.of(
                409,
                "business-rule",
                f"Not enough {item.display or item.product} at {location} to dispense "
                f"{plain(quantity)}: {availability(batches, today)}",
                where,
            )
        lines: list[Line] = []
        left = quantity
        for b in usable:
            take = min(decimal(b["qty"]), left)
            await self._take(b["_id"], take, where)
            lot, expiry, med = b.get("lot"), b.get("exp"), b.get("med")
            lines.append(Line(b["_id"], -take, location, item.product, lot, expiry, med))
            left -= take
            if left == 0:
                break
        return lines

    async def undo(self, lines: list[Line], where: str) -> None:
        """Reverse earlier moves: a cancelled dispense's quantity goes back to its
        batches; a corrected receipt's is taken out again (409 if already used)."""
        for line in lines:
            if line.quantity < 0:
                await self.stock.update_one(
                    {"_id": line.batch},
                    {"$inc": {"qty": Decimal128(-line.quantity)}},
                    session=self.session,
                )
            elif line.quantity > 0:
                await self._take(line.batch, line.quantity, where)

    async def _take(self, key: str, quantity: Decimal, where: str) -> None:
        done = await self.stock.update_one(
            {"_id": key, "qty": {"$gte": Decimal128(quantity)}},
            {"$inc": {"qty": Decimal128(-quantity)}},
            session=self.session,
        )
        if done.matched_count == 0:
            found = await self.stock.find_one({"_id": key}, session=self.session)
            have = decimal(found["qty"]) if found else Decimal(0)
            name = found.get("name") or found.get("prod") if found else key
            lot = f" lot {found['lot']}" if found and found.get("lot") else ""
            place = found.get("loc") if found else ""
            raise FhirError.of(
                409,
                "business-rule",
                f"Stock cannot go below zero: {place} holds {plain(have)} of {name}{lot}, "
                f"{plain(quantity)} would be taken",
                where,
            )

    async def batches(self, location: str, item: Item) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"prod": item.product, "loc": location}
        if item.lot is not None:
            query["lot"] = item.lot
        cursor = self.stock.find(query, session=self.session).sort(
            [("xs", ASCENDING), ("_id", ASCENDING)]
        )
        return await cursor.to_list(None)

    async def on_hand(self, location: str, product: str, today: date) -> Decimal:
        """Usable (unexpired) quantity of a product at a location."""
        cursor = self.stock.find({"prod": product, "loc": location}, session=self.session)
        held = [decimal(b["qty"]) for b in await cursor.to_list(None) if not expired(b, today)]
        return sum(held, Decimal(0))

    async def stocked(self, location: str) -> bool:
        """Is stock kept at ``location``: has it ever received any (a receipt, or an
        opening balance an importer brought)?"""
        found = await self.stock.find_one({"loc": location}, {"_id": 1}, session=self.session)
        return found is not None

    async def recorded(self, key: str) -> dict[str, Any] | None:
        return await self.moves.find_one({"_id": key}, session=self.session)

    async def record(self, key: str, lines: list[Line], signature: str) -> None:
        await self.moves.replace_one(
            {"_id": key},
            {"_id": key, "lines": [line.document() for line in lines], "sig": signature},
            upsert=True,
            session=self.session,
        )

    async def forget(self, key: str) -> None:
        await self.moves.delete_one({"_id": key}, session=self.session)


def availability(batches: list[dict[str, Any]], today: date) -> str:
    """What there is, for a refusal: each batch with its quantity and expiry."""
    parts = []
    for b in batches:
        qty = decimal(b["qty"])
        if qty <= 0:
            continue
        lot = f"lot {b.get('lot')}" if b.get("lot") else "no lot"
        state = "expired " if expired(b, today) else ""
        until = f", {state}expiry {b['exp']}" if b.get("exp") else ""
        parts.append(f"{lot}: {plain(qty)}{until}")
    if not parts:
        return "none is in stock"
    usable = sum((decimal(b["qty"]) for b in batches if not expired(b, today)), Decimal(0))
    return f"{plain(usable)} usable ({'; '.join(parts)})"
