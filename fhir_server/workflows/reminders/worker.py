"""Reminders on the Celery workers (``fhir-server worker``; the embedded default's worker
child too).

Each worker runs a beat: a thread that every FHIR_REMINDER_CHECK_INTERVAL seconds runs a
pass (sending.py) itself, with its own event loop and MongoDB client. Not a task on the
worker's queue: the pool runs one task at a time, and an export or a slot generation
may hold it for minutes, while a reminder must go out within a minute of its time.
Every worker's beat sends; the claims make them share the work. When a pass leaves a
backlog (a full batch), the beat also queues the task ``send_due_reminders``, so the
pools of idle workers help too. A worker that starts plans the appointments stored
before reminders existed, and replans after a change of lead times (plan.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from celery import Celery

from fhir_server.config import Settings

if TYPE_CHECKING:
    from fhir_server.workflows.reminders.sending import Sender

TASK = "fhir_server.reminders.send_due"
HELP_EVERY = 10.0  # seconds between two tasks queued for a backlog
log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def sender_for(settings: Settings, database: str) -> AsyncIterator[Sender]:
    """A Sender on ``database`` (its writes go through every rule), after the start-up
    chores: replan on changed lead times, plan and index what predates reminders."""
    from fhir_server.workflows.reminders.leads import parse_leads
    from fhir_server.workflows.reminders.phones import backfill as backfill_phones
    from fhir_server.workflows.reminders.plan import backfill, replan
    from fhir_server.workflows.reminders.sending import Sender
    from fhir_server.workflows.services import worker_services

    async with worker_services(settings, database) as resources:
        storage = resources.storage
        leads = parse_leads(settings.reminder_lead_times)
        await replan(storage, leads)
        await backfill(storage, leads)
        await backfill_phones(storage, settings.reminder_country_code)
        sender = Sender(settings, resources, worker_id())
        try:
            yield sender
        finally:
            await sender.close()


async def one_pass(settings: Settings, database: str) -> int:
    async with sender_for(settings, database) as sender:
        return await sender.run()


def register(app: Celery, settings: Settings) -> None:
    """Add the task to a worker's app."""

    @app.task(name=TASK, acks_late=True)  # type: ignore[untyped-decorator]
    def send_due_reminders(database: str) -> int:
        return asyncio.run(one_pass(settings, database))


class ReminderBeat(threading.Thread):
    """The worker's reminder beat (see the module's docstring)."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        super().__init__(name="reminder-beat", daemon=True)
        self.app = app
        self.settings = settings
        self.stopped = threading.Event()
        self.helped = 0.0  # when the last task was queued

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                asyncio.run(self._loop())
            except Exception:  # mongod away at start: try again
                log.exception("the reminder beat failed; restarting it")
            self.stopped.wait(self.settings.reminder_check_interval)

    async def _loop(self) -> None:
        from fhir_server.workflows.reminders.sending import BATCH

        every = self.settings.reminder_check_interval
        async with sender_for(self.settings, self.settings.database) as sender:
            while not self.stopped.is_set():
                try:
                    done = await sender.run()
                except Exception:  # mongod away: next time
                    log.exception("a reminder pass failed")
                    done = 0
                if done >= BATCH:
                    self._help()
                    continue  # a backlog: on at once
                await asyncio.sleep(every)

    def _help(self) -> None:
        if time.monotonic() - self.helped < HELP_EVERY:
            return
        self.helped = time.monotonic()
        try:
            self.app.send_task(
                TASK, args=[self.settings.database], queue=self.settings.celery_queue
            )
        except Exception:
            log.exception("could not queue a reminder pass")
