"""Subscription delivery on the Celery workers (``fhir-server worker``).

Each worker runs a dispatcher thread. Every FHIR_SUBSCRIPTION_POLL_INTERVAL seconds it
lists the Subscriptions with queued notifications and, for each that is active, due
(past its retry time) and not held by a live worker, claims its lease and queues a
``deliver`` task that carries the lease. The claim is one conditional update, so
however many workers run, a Subscription is delivered by one of them at a time: in
order. A task whose worker died is redelivered (acks_late) or, if it never ran, the
lease runs out (FHIR_SUBSCRIPTION_LEASE_SECONDS) and the next dispatcher claims it
again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from pymongo import MongoClient

from fhir_server.config import Settings
from fhir_server.jsonio import load_stored
from fhir_server.workflows.subscriptions.active import NOTIFICATIONS, STATE
from fhir_server.workflows.subscriptions.delivery import Deliverer

TASK = "fhir_server.subscriptions.deliver"
log = logging.getLogger(__name__)


def register(app: Celery, settings: Settings) -> None:
    """Add the delivery task to a worker's app."""
    deliverers: dict[str, Deliverer] = {}
    clients: list[MongoClient[dict[str, Any]]] = []

    def deliverer(database: str) -> Deliverer:
        if database not in deliverers:
            if not clients:
                clients.append(MongoClient(settings.mongo_url, tz_aware=True))
            deliverers[database] = Deliverer(settings, clients[0].get_database(database))
        return deliverers[database]

    @app.task(name=TASK, acks_late=True)  # type: ignore[untyped-decorator]
    def deliver(database: str, sub_id: str, holder: str) -> int:
        outcome = deliverer(database).run(sub_id, holder)
        if outcome.handshake:  # R4 backport: active once the handshake succeeded
            asyncio.run(set_status(settings, database, sub_id, "active", ("requested",)))
        if outcome.gave_up and outcome.failure is not None:
            tries = settings.subscription_max_attempts
            reason = f"Delivery failed {tries} times: {outcome.failure}"
            asyncio.run(
                set_status(settings, database, sub_id, "error", ("active", "requested"), reason)
            )
        return outcome.delivered


async def set_status(
    settings: Settings,
    database: str,
    sub_id: str,
    status: str,
    only_from: tuple[str, ...],
    error: str | None = None,
) -> None:
    """Write the Subscription's new status (a new version, through the pipeline, which
    activates or deactivates it), if it still has one of ``only_from``."""
    from fhir_server.outcome import FhirError
    from fhir_server.workflows.services import worker_services

    async with worker_services(settings, database) as resources:
        for _ in range(3):  # a concurrent change of the Subscription: read it again
            try:
                current = await resources.read("Subscription", sub_id)
            except FhirError:
                return  # deleted meanwhile
            if current.raw is None:
                return
            resource = load_stored(current.raw)
            if resource.get("status") not in only_from:
                return
            resource["status"] = status
            resource.pop("error", None)
            if error is not None:
                resource["error"] = error
            try:
                await resources.update("Subscription", sub_id, resource, current.version)
                return
            except FhirError as exc:
                if exc.status != 412:
                    raise


class Dispatcher(threading.Thread):
    """The worker's dispatcher: claims due Subscriptions and queues their delivery."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        super().__init__(name="subscription-dispatcher", daemon=True)
        self.app = app
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        client: MongoClient[dict[str, Any]] = MongoClient(self.settings.mongo_url, tz_aware=True)
        db = client.get_database(self.settings.database)
        try:
            while not self.stopped.wait(self.settings.subscription_poll_interval):
                try:
                    self.dispatch(db)
                except Exception:  # mongod or the broker away: next time
                    log.exception("the subscription dispatcher failed")
        finally:
            client.close()

    def heartbeats(self, db: Any) -> None:
        """Queue a heartbeat for each topic-based Subscription silent for its period
        (backport-heartbeat-period); one worker wins each, by the conditional update."""
        now = datetime.now(UTC)
        due = db[STATE].find(
            {"active": True, "heartbeat": {"$gt": 0}, "beat_at": {"$lte": now}},
            {"heartbeat": 1, "beat_at": 1},
        )
        for state in due:
            after = now + timedelta(seconds=state["heartbeat"])
            won = db[STATE].update_one(
                {"_id": state["_id"], "beat_at": state["beat_at"]}, {"$set": {"beat_at": after}}
            )
            if won.modified_count:
                db[NOTIFICATIONS].insert_one({"sub": state["_id"], "kind": "heartbeat", "at": now})

    def ended(self, db: Any) -> None:
        """Turn off the Subscriptions whose ``end`` has passed (R4: "The time for the
        server to turn the subscription off"); matching already ignores them."""
        now = datetime.now(UTC)
        for state in db[STATE].find({"active": True, "end": {"$lte": now}}, {"_id": 1}):
            won = db[STATE].update_one(
                {"_id": state["_id"], "active": True}, {"$set": {"active": False}}
            )
            if won.modified_count:
                asyncio.run(
                    set_status(
                        self.settings,
                        self.settings.database,
                        state["_id"],
                        "off",
                        ("active", "requested"),
                    )
                )

    def dispatch(self, db: Any) -> int:
        """Claim and queue every deliverable Subscription; how many were queued."""
        self.heartbeats(db)
        self.ended(db)
        waiting = db[NOTIFICATIONS].distinct("sub")
        if not waiting:
            return 0
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=self.settings.subscription_lease_seconds)
        queued = 0
        for sub_id in waiting:
            holder = uuid.uuid4().hex
            claimed = db[STATE].update_one(
                {
                    "_id": sub_id,
                    "$or": [{"active": True}, {"handshake": "pending"}],
                    "lease": {"$lte": now},
                    "retry_at": {"$lte": now},
                },
                {"$set": {"lease": lease, "holder": holder}},
            )
            if claimed.modified_count:
                self.app.send_task(
                    TASK,
                    args=[self.settings.database, sub_id, holder],
                    queue=self.settings.celery_queue,
                )
                queued += 1
        return queued
