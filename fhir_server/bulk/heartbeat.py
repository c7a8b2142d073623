"""The Celery worker's heartbeat: each worker process writes ``{_id: worker, seen}`` to
``worker_heartbeats`` every FHIR_WORKER_HEARTBEAT_SECONDS, so ``/health/ready`` on any
API node can say when a worker was last alive (Celery's own heartbeats are off:
``--without-heartbeat``, and they live in the broker, which the API does not read).

A beat is a stamp, not a lease: a dead worker simply stops beating. Old stamps expire
after a day (TTL index), so the collection holds the recent workers only.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel, MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.errors import PyMongoError

from fhir_server.config import Settings

HEARTBEATS = "worker_heartbeats"
STALE_AFTER_BEATS = 3  # missed beats before a worker counts as gone
_EXPIRE_SECONDS = 86_400
log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(db: Database[dict[str, Any]], worker: str) -> None:
    """Record that ``worker`` is alive now."""
    db[HEARTBEATS].update_one({"_id": worker}, {"$set": {"seen": datetime.now(UTC)}}, upsert=True)


class Heartbeat(threading.Thread):
    """Beats until the process ends (a daemon thread: it never holds a shutdown up)."""

    def __init__(self, settings: Settings, interval: float | None = None) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.settings = settings
        self.interval = interval or settings.worker_heartbeat_seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        client: MongoClient[dict[str, Any]] = MongoClient(self.settings.mongo_url, tz_aware=True)
        db = client.get_database(self.settings.database)
        worker = worker_name()
        try:
            db[HEARTBEATS].create_indexes(
                [
                    IndexModel(
                        [("seen", ASCENDING)], name="expire", expireAfterSeconds=_EXPIRE_SECONDS
                    )
                ]
            )
        except PyMongoError as exc:
            log.warning("worker heartbeat index: %s", exc)
        while not self.stopped.is_set():
            try:
                beat(db, worker)
            except PyMongoError as exc:  # mongod restarting: the next beat retries
                log.warning("worker heartbeat: %s", exc)
            self.stopped.wait(self.interval)
        client.close()


async def last_seen(db: AsyncDatabase[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """What ready reports about the workers: the latest beat, its age, whether it is
    fresh (within three intervals), and how many workers beat freshly."""
    now = datetime.now(UTC)
    stale = timedelta(seconds=settings.worker_heartbeat_seconds * STALE_AFTER_BEATS)
    # counted before the latest is read, so a worker beating in between can only make
    # the latest fresher than the count, never the count say fresh beside a stale age
    fresh = await db[HEARTBEATS].count_documents({"seen": {"$gte": now - stale}})
    latest = await db[HEARTBEATS].find_one({}, sort=[("seen", -1)])
    if latest is None:
        return {"status": "missing", "fresh": False, "last_seen": None, "workers": 0}
    age = (now - latest["seen"]).total_seconds()
    if age <= stale.total_seconds():
        fresh = max(fresh, 1)
    return {
        "status": "fresh" if fresh else "stale",
        "fresh": bool(fresh),
        "last_seen": latest["seen"].isoformat(),
        "age_seconds": round(age, 3),
        "workers": fresh,
    }
