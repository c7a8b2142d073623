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
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import bson
from pymongo import IndexModel, ReturnDocument

from fhir_server.jsonio import load_stored
from fhir_server.outbound.allow import OutboundAllowList
from fhir_server.outcome import FhirError
from fhir_server.search import memory
from fhir_server.service.context import request_base_url
from fhir_server.storage.documents import HISTORY, history_key
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
from fhir_server.workflows.subscriptions.backport import is_topic, topic_request
from fhir_server.workflows.subscriptions.channel import parse_channel
from fhir_server.workflows.subscriptions.criteria import (
    Criteria,
    access_document,
    access_of,
    compile_criteria,
)
from fhir_server.workflows.subscriptions.topics import TOPICS

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
        self,
        search: SearchService,
        allow: OutboundAllowList,
        active: ActiveSubscriptions,
        base_url: str | None = None,
    ) -> None:
        self.search = search
        self.allow = allow
        self.active = active
        self.base_url = base_url or ""

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
        criteria_text = new.get("criteria")
        if not isinstance(criteria_text, str) or not criteria_text.strip():
            raise FhirError.of(422, "required", "criteria is required", "Subscription.criteria")
        channel = parse_channel(new, self.allow, is_topic(criteria_text))
        access = w.context.access
        state = await tx.db[STATE].find_one({"_id": w.id}, session=tx.session)
        if access is None and _handshake_passed(state, criteria_text, channel):
            # The worker activates a Subscription whose handshake succeeded: what was
            # compiled under its writer's token stays.
            await tx.db[STATE].update_one(
                {"_id": w.id},
                {"$set": {"active": True, "handshake": "done"}},
                session=tx.session,
            )
            return
        fields: dict[str, Any] = {
            "criteria": criteria_text,
            "access": access_document(access),
            "channel": channel,
            "end": _instant(new.get("end")),
            "base": request_base_url.get() or self.base_url,
            "failures": 0,
            "retry_at": EPOCH,
            "topic": None,
            "handshake": None,
        }
        if is_topic(criteria_text):
            await self._topic(tx, w, new, fields, channel)
        else:
            criteria = await compile_criteria(self.search, criteria_text, access)
            fields["parts"] = [_part(criteria.type, criteria_text, criteria)]
            fields["active"] = True
        fresh = {k: v for k, v in _fresh().items() if k not in fields}
        await tx.db[STATE].update_one(
            {"_id": w.id}, {"$set": fields, "$setOnInsert": fresh}, upsert=True, session=tx.session
        )
        # The stored status says where it stands: active, or requested until the
        # handshake (then the worker's write makes it active).
        status = "active" if fields["active"] else "requested"
        if new.get("status") != status or "error" in new:
            amended = {k: v for k, v in new.items() if k != "error"}
            amended["status"] = status
            tx.amend(w, amended)

    async def _topic(
        self,
        tx: Transaction,
        w: Write,
        new: dict[str, Any],
        fields: dict[str, Any],
        channel: dict[str, Any],
    ) -> None:
        """A topic-based Subscription (backport.py): one compiled filter per type of the
        topic (the writer's restriction, and the filter criteria for that type). A
        rest-hook stays ``requested`` until its handshake succeeds (the worker sends it
        first and then activates it); email is active at once."""
        wanted = topic_request(new)
        parts = []
        for rtype in wanted.topic.types:
            text = wanted.filters.get(rtype, rtype)
            criteria = await compile_criteria(self.search, text, w.context.access)
            parts.append(_part(rtype, text, criteria))
        hook = channel["type"] == "rest-hook"
        fields.update(
            parts=parts,
            topic=wanted.topic.url,
            content=wanted.content,
            heartbeat=wanted.heartbeat,
            beat_at=datetime.now(UTC) + timedelta(seconds=wanted.heartbeat or 0),
            timeout=wanted.timeout,
            active=not hook,
            handshake="pending" if hook else None,
            events=0,
        )
        if hook:  # first in the queue: nothing is delivered before it succeeded
            await tx.db[NOTIFICATIONS].insert_one(
                {"sub": w.id, "kind": "handshake", "at": datetime.now(UTC)}, session=tx.session
            )


def _part(rtype: str, text: str, criteria: Criteria) -> dict[str, Any]:
    return {
        "type": rtype,
        "criteria": text,
        "filter": bson.encode(criteria.query),
        "in_memory": criteria.in_memory,
    }


def _handshake_passed(state: dict[str, Any] | None, criteria: str, channel: dict[str, Any]) -> bool:
    return (
        state is not None
        and state.get("handshake") == "passed"
        and state.get("criteria") == criteria
        and state.get("channel") == channel
    )


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
        heard: list[tuple[Active, Write]] = []
        live: dict[str, tuple[Active, list[Write]]] = {}  # compiled once per transaction
        for w in writes:
            if w.rewrite or w.new is None or w.source is None:
                continue
            doc = w.source.current_document()
            previous: list[dict[str, Any] | None] = []  # read once, when a topic asks
            for sub in self.active.candidates(w.type, doc):
                if sub.expired(now):
                    continue
                if sub.topic is not None:
                    if not previous:
                        previous.append(await _previous(tx, w))
                    if not TOPICS[sub.topic].fires(w.type, previous[0], w.new):
                        continue
                if not sub.in_memory:
                    live.setdefault(sub.id, (sub, []))[1].append(w)
                elif memory.matches(sub.query, doc):
                    heard.append((sub, w))
        for sub, candidates in live.values():
            matched = await self._live_matches(tx, sub, candidates)
            heard += [(sub, w) for w in candidates if (w.type, w.id) in matched]
        queued = [_notification(sub, w, now) for sub, w in heard if sub.channel != "websocket"]
        pings = [{"sub": sub.id, "at": now} for sub, _ in heard if sub.channel == "websocket"]
        if queued:
            await tx.db[NOTIFICATIONS].insert_many(queued, session=tx.session)
        if pings:
            await tx.db[PINGS].insert_many(pings, session=tx.session)

    async def _live_matches(
        self, tx: Transaction, sub: Active, writes: list[Write]
    ) -> set[tuple[str, str]]:
        """Which of ``writes`` live criteria (chains, _has, terminology) match: compiled
        inside the transaction, so a chain's target written alongside counts, and one
        query per type for all of them."""
        try:
            compiled = await compile_criteria(
                self.search, sub.criteria, access_of(sub.access), tx.session
            )
        except FhirError:
            return set()  # no longer valid for its writer: it matches nothing
        by_type: dict[str, list[str]] = {}
        for w in writes:
            by_type.setdefault(w.type, []).append(w.id)
        matched: set[tuple[str, str]] = set()
        for resource_type, ids in by_type.items():
            cursor = tx.storage.current(resource_type).find(
                {"$and": [{"_id": {"$in": ids}}, compiled.query]}, {"_id": 1}, session=tx.session
            )
            matched.update([(resource_type, d["_id"]) async for d in cursor])
        return matched


def _notification(sub: Active, w: Write, now: datetime) -> dict[str, Any]:
    """A queued notification: the worker delivers them in this order per Subscription."""
    return {
        "sub": sub.id,
        "t": w.type,
        "rid": w.id,
        "v": w.version,
        "at": now,
        "kind": "event-notification",
    }


async def _previous(tx: Transaction, w: Write) -> dict[str, Any] | None:
    """The content ``w`` replaces (None for a create): topics look at what changed."""
    source = w.source
    if source is None or source.previous is None or source.created:
        return None
    if source.prior is not None:
        return source.prior
    doc = await tx.db[HISTORY].find_one(
        {"_id": history_key(w.type, w.id, source.previous)}, {"raw": 1}, session=tx.session
    )
    return None if doc is None or doc.get("raw") is None else load_stored(doc["raw"])
