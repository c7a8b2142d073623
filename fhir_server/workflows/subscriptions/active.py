"""The active Subscriptions as each process holds them for matching, and their state.

``subscriptions`` (one document per Subscription, ``_id`` its id) is the server's side
of a Subscription: its compiled criteria (``filter``, BSON), the access they were
compiled under, the channel, and the delivery state (lease, failures, retry time,
events delivered). It is written in the transaction of the Subscription's own write.

Every change bumps ``subscription_generation``. A process reloads its active
Subscriptions when that number moved: it looks at most once a second
(``REFRESH_SECONDS``), and at once after a Subscription write of its own. A Subscription
written through another process is matched here within a second.

For speed with many Subscriptions on one type, each in-memory filter is indexed by an
"anchor": one equality its filter requires (``sp.code`` = a code, ``comp`` = a patient).
A write is tested only against the Subscriptions whose anchor value it holds, and those
without an anchor.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bson
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.search import memory

STATE = "subscriptions"
GENERATION = "subscription_generation"
NOTIFICATIONS = "subscription_notifications"
PINGS = "subscription_pings"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PING_SECONDS = 3600  # websocket pings are kept an hour (only bound sockets see them)

COLLECTIONS: dict[str, list[IndexModel]] = {
    STATE: [IndexModel([("active", ASCENDING)], name="active")],
    GENERATION: [],
    NOTIFICATIONS: [IndexModel([("sub", ASCENDING), ("_id", ASCENDING)], name="queue")],
    PINGS: [IndexModel([("at", ASCENDING)], name="expiry", expireAfterSeconds=PING_SECONDS)],
}


@dataclass(frozen=True, slots=True)
class Active:
    """One active Subscription, ready to test writes against."""

    id: str
    type: str
    query: dict[str, Any]
    in_memory: bool
    criteria: str
    access: dict[str, Any] | None
    channel: str
    end: datetime | None
    topic: str | None = None  # a topic-based Subscription (topics.py): its canonical

    def expired(self, now: datetime) -> bool:
        return self.end is not None and self.end <= now


def _anchor(query: dict[str, Any]) -> tuple[str, list[str]] | None:
    """An equality ``query`` requires, as (field, values): the write must hold one."""
    clauses = query["$and"] if set(query) == {"$and"} else [query]
    found: list[tuple[int, str, list[str]]] = []
    for clause in clauses:
        if len(clause) != 1:
            continue
        ((name, cond),) = clause.items()
        if name.startswith("$") or name == "del":
            continue
        if isinstance(cond, str):
            values = [cond]
        elif isinstance(cond, dict) and set(cond) == {"$in"}:
            values = cond["$in"]
            if not values or not all(isinstance(v, str) for v in values):
                continue
        else:
            continue
        rank = 0 if name.startswith("sp.") else 1 if name == "_id" else 2
        found.append((rank, name, values))
    if not found:
        return None
    _, name, values = min(found, key=lambda f: (f[0], len(f[2])))
    return name, values


@dataclass(slots=True)
class _ByType:
    anchored: dict[str, dict[str, list[Active]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    others: list[Active] = field(default_factory=list)

    def add(self, sub: Active) -> None:
        anchor = _anchor(sub.query) if sub.in_memory else None
        if anchor is None:
            self.others.append(sub)
            return
        name, values = anchor
        for value in values:
            self.anchored[name][value].append(sub)

    def candidates(self, doc: dict[str, Any]) -> list[Active]:
        seen: dict[str, Active] = {s.id: s for s in self.others}
        for name, by_value in self.anchored.items():
            for value in _strings(memory.values_at(doc, name)):
                for sub in by_value.get(value, ()):
                    seen.setdefault(sub.id, sub)
        return list(seen.values())


def _strings(values: Any) -> set[str]:
    out: set[str] = set()
    for v in values:
        if isinstance(v, str):
            out.add(v)
        elif isinstance(v, list):
            out.update(x for x in v if isinstance(x, str))
    return out


def active_of(doc: dict[str, Any]) -> list[Active]:
    """One Active per resource type the Subscription watches (a topic may watch two)."""
    return [
        Active(
            id=doc["_id"],
            type=part["type"],
            query=bson.decode(part["filter"]),
            in_memory=bool(part.get("in_memory")),
            criteria=part["criteria"],
            access=doc.get("access"),
            channel=doc["channel"]["type"],
            end=doc.get("end"),
            topic=doc.get("topic"),
        )
        for part in doc.get("parts") or []
    ]


class ActiveSubscriptions:
    """This process's copy of the active Subscriptions, by type."""

    REFRESH_SECONDS = 1.0

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.db = db
        self.generation = -1
        self.checked = 0.0
        self.stale = True
        self.wanted = 0  # a generation this process wrote: look until it is seen
        self.wanted_until = 0.0
        self.by_type: dict[str, _ByType] = {}

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self.by_type)

    def written(self, generation: int) -> None:
        """A Subscription write of this process took ``generation``: reload as soon as
        it is committed (if the write rolls back, stop looking after a few seconds)."""
        self.wanted = max(self.wanted, generation)
        self.wanted_until = time.monotonic() + 5.0

    async def refresh(self) -> None:
        now = time.monotonic()
        waiting = self.wanted > self.generation and now < self.wanted_until
        if not self.stale and not waiting and now - self.checked < self.REFRESH_SECONDS:
            return
        self.stale = False
        self.checked = now
        doc = await self.db[GENERATION].find_one({"_id": "g"})
        generation = int(doc["n"]) if doc else 0
        if generation == self.generation:
            return
        by_type: dict[str, _ByType] = {}
        # A topic Subscription awaiting its handshake is matched already: its events wait
        # in its queue behind the handshake (delivered once it is active, kept if not).
        matching = {"$or": [{"active": True}, {"handshake": {"$in": ["pending", "passed"]}}]}
        async for state in self.db[STATE].find(matching, {"lease": 0, "holder": 0}):
            for sub in active_of(state):
                by_type.setdefault(sub.type, _ByType()).add(sub)
        self.by_type = by_type
        self.generation = generation

    def candidates(self, resource_type: str, doc: dict[str, Any]) -> list[Active]:
        found = self.by_type.get(resource_type)
        return found.candidates(doc) if found is not None else []
