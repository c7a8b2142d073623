"""Slot generation on the Celery workers (``fhir-server worker``; the embedded default
runs one such worker itself, on the MongoDB broker).

The periodic task is ``generate_slots(database, everything)``. Each worker has a small
beat: a thread that every FHIR_SLOT_CHECK_INTERVAL seconds looks for due Schedules
(plans.py) and, if it wins the claim shared by all workers, queues the task; the task
releases the claim when done, and a claim whose worker died expires. A worker that
starts queues one run of every Schedule. Runs are idempotent and safe side by side, so
a duplicate (two workers' first runs, a redelivered task) costs time, not slots.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from typing import Any

from celery import Celery

from fhir_server.config import Settings
from fhir_server.workflows.scheduling.plans import (
    Timing,
    claim_tick,
    release_tick,
    run_all,
    run_due,
)

TASK = "fhir_server.scheduling.generate_slots"
LEASE = timedelta(minutes=10)  # a run's claim; expires if its worker died
log = logging.getLogger(__name__)


def timing(settings: Settings) -> Timing:
    return Timing(
        settings.slot_horizon,
        timedelta(seconds=settings.slot_roll_interval),
        settings.slot_timezone,
    )


async def generate(settings: Settings, database: str, everything: bool) -> int:
    """One run against ``database``: every Schedule, or the due ones. Slots are ordinary
    writes: the rules see them too."""
    from fhir_server.workflows.scheduling.generation import Generator
    from fhir_server.workflows.services import worker_services

    async with worker_services(settings, database) as resources:
        storage = resources.storage
        generator = Generator(storage, resources.new_version)
        try:
            if everything:
                return await run_all(storage, generator, timing(settings))
            return await run_due(storage, generator, timing(settings))
        finally:
            await release_tick(storage)


def register(app: Celery, settings: Settings) -> None:
    """Add the task to a worker's app."""

    @app.task(name=TASK, acks_late=True)  # type: ignore[untyped-decorator]
    def generate_slots(database: str, everything: bool = False) -> int:
        return asyncio.run(generate(settings, database, everything))


def send(app: Celery, settings: Settings, everything: bool) -> None:
    app.send_task(TASK, args=[settings.database, everything], queue=settings.celery_queue)


class Beat(threading.Thread):
    """The worker's beat: queues ``generate_slots`` when Schedules are due."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        super().__init__(name="slot-beat", daemon=True)
        self.app = app
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            send(self.app, self.settings, True)
        except Exception:
            log.exception("could not queue the first slot generation")
        while not self.stopped.wait(self.settings.slot_check_interval):
            try:
                if asyncio.run(self._claim()):
                    send(self.app, self.settings, False)
            except Exception:  # mongod or the broker away: next time
                log.exception("the slot beat failed")

    async def _claim(self) -> bool:
        from pymongo import AsyncMongoClient

        from fhir_server.storage import Storage

        client: Any = AsyncMongoClient(self.settings.mongo_url, tz_aware=True)
        try:
            return await claim_tick(Storage(client, self.settings.database), LEASE)
        finally:
            await client.close()
