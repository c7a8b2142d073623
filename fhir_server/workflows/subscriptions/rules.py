"""The two pipeline rules of Subscriptions.

``SubscriptionLifecycle`` watches Subscription writes. One whose status is ``requested``
(or ``active``) is checked (channel, endpoint against the allow-list, criteria compiled
under the writer's token) and made ``active`` in the same transaction; ``off``,
``error`` or a delete makes it inactive. R4 (subscription.html#lifecycle): "requested:
the client has requested the subscription, and the server has not yet set it up ...
active: the subscription is active". Invalid criteria or channel: 422, nothing stored.

``SubscriptionMatching`` watches the types of the active Subscriptions (a dynamic rule)
and, for every new version on every write path, queues one notification per
Subscription it matches, in the write's transaction: a write that rolls back notifies
nobody, and a committed one is never lost. The workers deliver the queue (delivery.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import bson
from pymongo import IndexModel, ReturnDocument

from fhir_server.outbound.allow import OutboundAllowList
from fhir_server.outcome import FhirError
from fhir_server.search import memory
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.subscriptions.active import (
    COLLECTIONS,
    EPOCH,
    GENERATION,
    NOTIFICATIONS,
    PINGS,
    STATE,
    Active,
    ActiveSubscriptions,
)
from fhir_server.workflows.subscriptions.channel import parse_channel
from fhir_server.workflows.subscriptions.criteria import (
    access_document,
    access_of,
    compile_criteria,
)

if TYPE_CHECKING:
    from fhir_server.service.search import SearchService

ACTIVATING = ("requested", "active")


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SubscriptionLifecycle(Rule):
    types = frozenset({"Subscription"})
    collections: ClassVar[dict[str, list[IndexModel]]] = COLLECTIONS

    def __init__(
        self, search: SearchService, allow: OutboundAllowList, active: ActiveSubscriptions
    ) -> None:
        self.search = search
        self.allow = allow
        self.active = active

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        changed = False
        for w in writes:
            if w.rewrite:
                continue
            changed = True
            new = w.new
            if new is not None and new.get("status") in ACTIVATING:
                await self._activate(tx, w, new)
            else:
                await tx.db[STATE].update_one(
                    {"_id": w.id},
                    {"$set": {"active": False}, "$setOnInsert": _fresh()},
                    upsert=True,
                    session=tx.session,
                )
        if changed:
            doc = await tx.db[GENERATION].find_one_and_update(
                {"_id": "g"},
                {"$inc": {"n": 1}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=tx.session,
            )
            self.active.written(int(doc["n"]) if doc else 0)

    async def _activate(self, tx: Transaction, w: Write, new: dict[str, Any]) -> None:
        channel = parse_channel(new, self.allow)
        criteria_text = new.get("criteria")
        if not isinstance(criteria_text, str) or not criteria_text.strip():
            raise FhirError.of(422, "required", "criteria is required", "Subscription.criteria")
        access = w.context.access
        criteria = await compile_criteria(self.search, criteria_text, access)
        state = {
            "active": True,
            "type": criteria.type,
            "criteria": criteria_text,
            "filter": bson.encode(criteria.query),
            "in_memory": criteria.in_memory,
            "access": access_document(access),
            "channel": channel,
            "end": _instant(new.get("end")),
            "failures": 0,
            "retry_at": EPOCH,
        }
        fresh = {k: v for k, v in _fresh().items() if k not in state}
        await tx.db[STATE].update_one(
            {"_id": w.id}, {"$set": state, "$setOnInsert": fresh}, upsert=True, session=tx.session
        )
        if new.get("status") != "active" or "error" in new:
            amended = {k: v for k, v in new.items() if k != "error"}
            amended["status"] = "active"
            tx.amend(w, amended)


def _fresh() -> dict[str, Any]:
    return {"lease": EPOCH, "holder": None, "events": 0, "failures": 0, "retry_at": EPOCH}


class SubscriptionMatching(Rule):
    dynamic = True

    def __init__(self, search: SearchService, active: ActiveSubscriptions) -> None:
        self.search = search
        self.active = active

    async def refresh(self) -> None:
        await self.active.refresh()

    def wants(self, resource_type: str) -> bool:
        return resource_type in self.active.by_type

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        now = datetime.now(UTC)
        queued: list[dict[str, Any]] = []
        pings: list[dict[str, Any]] = []
        for w in writes:
            if w.rewrite or w.new is None or w.source is None:
                continue
            doc = w.source.current_document()
            for sub in self.active.candidates(w.type, doc):
                if sub.expired(now) or not await self._matches(tx, sub, w, doc):
                    continue
                if sub.channel == "websocket":
                    pings.append({"sub": sub.id, "at": now})
                else:
                    queued.append(
                        {"sub": sub.id, "t": w.type, "rid": w.id, "v": w.version, "at": now}
                    )
        if queued:
            await tx.db[NOTIFICATIONS].insert_many(queued, session=tx.session)
        if pings:
            await tx.db[PINGS].insert_many(pings, session=tx.session)

    async def _matches(self, tx: Transaction, sub: Active, w: Write, doc: dict[str, Any]) -> bool:
        if sub.in_memory:
            return memory.matches(sub.query, doc)
        # Live criteria (chains, _has, terminology): compiled now, as the search would.
        try:
            compiled = await compile_criteria(self.search, sub.criteria, access_of(sub.access))
        except FhirError:
            return False  # no longer valid for its writer: it matches nothing
        found = await tx.storage.current(w.type).find_one(
            {"$and": [{"_id": w.id}, compiled.query]}, {"_id": 1}, session=tx.session
        )
        return found is not None
