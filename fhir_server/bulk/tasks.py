"""The Celery app of bulk export: one task, ``export_unit(database, unit_id)``.

Tasks are acknowledged late and rejected back to the queue when their worker is lost;
the unit's lease and checkpoint (see ``export``) make a second delivery harmless and let
it resume where the first one stopped. Without ``FHIR_CELERY_BROKER_URL`` the broker is
the server's own MongoDB (kombu's MongoDB transport, same database), so the embedded
default needs no other service.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery, signals
from celery.exceptions import WorkerShutdown
from celery.worker import state
from kombu.transport.virtual.base import Transport
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from fhir_server.config import Settings

TASK = "fhir_server.bulk.export_unit"
log = logging.getLogger(__name__)


def broker_url(settings: Settings) -> str:
    """The configured broker, else the MongoDB database of the server."""
    if settings.celery_broker_url:
        return settings.celery_broker_url
    if not settings.mongo_url:
        raise RuntimeError("bulk export needs FHIR_MONGO_URL or FHIR_CELERY_BROKER_URL")
    parts = urlsplit(settings.mongo_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{settings.database}", parts.query, ""))


def make_celery(settings: Settings) -> Celery:
    """A Celery app for sending (API) or running (worker) export tasks."""
    app = Celery("fhir_server_bulk", broker=broker_url(settings), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.celery_queue,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_pool_limit=4,
    )
    if app.conf.broker_url.startswith("mongodb"):
        # kombu polls a MongoDB queue (default every second); a task waiting up to 1 s
        # for an idle worker would dominate small exports.
        app.conf.broker_transport_options = {"polling_interval": 0.2}
    return app


def dispatch(app: Celery, settings: Settings, unit_ids: Sequence[str], task: str = TASK) -> None:
    """Queue one ``task`` per unit (blocking: call it from a thread in async code)."""
    with app.producer_or_acquire() as producer:
        for unit_id in unit_ids:
            app.send_task(
                task,
                args=[settings.database, unit_id],
                queue=settings.celery_queue,
                producer=producer,
            )


def worker_app(settings: Settings) -> Celery:
    """The app a worker runs: ``make_celery`` plus the export task."""
    from fhir_server.bulk.export import UnitExport, fail_job

    app = make_celery(settings)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    clients: dict[str, MongoClient[dict[str, Any]]] = {}

    def client() -> MongoClient[dict[str, Any]]:
        if "c" not in clients:  # created lazily, in the process that runs tasks
            clients["c"] = MongoClient(settings.mongo_url, tz_aware=True)
        return clients["c"]

    @app.task(name=TASK, bind=True, acks_late=True, max_retries=10)  # type: ignore[untyped-decorator]
    def export_unit(self: Any, database: str, unit_id: str) -> int:
        db = client().get_database(database)
        try:
            return UnitExport(db, unit_id, worker_id).run()
        except PyMongoError as exc:  # transient (failover, network): retry from checkpoint
            log.warning("unit %s: %s; retrying", unit_id, exc)
            raise self.retry(exc=exc, countdown=2) from exc
        except Exception as exc:
            log.exception("unit %s failed", unit_id)
            fail_job(db, unit_id, f"Export failed: {exc}")
            return 0

    from fhir_server.bulk import imports

    imports.register(app, settings)  # bulk $import units (docs/bulk-import.md)
    from fhir_server.workflows.scheduling import worker as slots

    slots.register(app, settings)  # slot generation (docs/scheduling.md)
    from fhir_server.workflows.subscriptions import worker as subscriptions

    subscriptions.register(app, settings)  # notifications (docs/subscriptions.md)
    from fhir_server.workflows.reminders import worker as reminders

    reminders.register(app, settings)  # appointment reminders (docs/reminders.md)
    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run a worker in this process until it is stopped (one task at a time: start
    more workers to export faster; they share units of the same job)."""
    from fhir_server.workflows.scheduling.worker import Beat

    app = worker_app(settings)
    from fhir_server.workflows.subscriptions.worker import Dispatcher

    Beat(app, settings).start()  # queues slot generation when Schedules are due
    Dispatcher(app, settings).start()  # queues subscription deliveries
    from fhir_server.workflows.reminders.worker import ReminderBeat

    ReminderBeat(app, settings).start()  # sends due appointment reminders
    from fhir_server.bulk.heartbeat import Heartbeat

    Heartbeat(settings).start()  # /health/ready reports when a worker was last alive
    signals.worker_ready.connect(_stop_at_once_when_idle, weak=False)
    app.worker_main(
        [
            "worker",
            "--pool",
            "solo",
            "--queues",
            settings.celery_queue,
            "--loglevel",
            loglevel.upper(),
            "--hostname",
            f"fhir-bulk-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def _stop_at_once_when_idle(**_: Any) -> None:
    """Celery notices a warm shutdown (SIGTERM) once per broker poll cycle, up to 2 s
    later, although an idle worker has nothing to finish. SIGTERM still sets Celery's
    flag; when no task is reserved or running, the worker is then stopped where it sleeps
    between polls, the way Celery's own check stops it. Elsewhere (a poll's query may be
    taking a message) it looks again 50 ms later (SIGALRM) rather than interrupt it."""
    previous = signal.getsignal(signal.SIGTERM)
    sleeping = Transport.drain_events.__code__

    def handler(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)
        if state.active_requests or state.reserved_requests:
            return  # a warm shutdown: the task finishes first
        if frame is not None and frame.f_code is sleeping:
            raise WorkerShutdown(0)
        signal.setitimer(signal.ITIMER_REAL, 0.05)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGALRM, handler)
