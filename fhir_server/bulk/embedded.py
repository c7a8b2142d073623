"""The worker ``fhir-server serve`` runs itself when no broker is configured: one
``fhir-server worker`` child process on the same MongoDB (broker included), restarted
with backoff if it dies (fhir_server/supervisor.py) and stopped when the server stops.
A killed worker's unit is re-dispatched by the job's status polls once its lease has
run out, so the restarted worker finishes the export exactly once. A deployment with a
broker runs (and supervises) its own workers instead.

The worker runs in a process group of its own: a terminal's Ctrl-C or hang-up reaches
only the server, which then stops the worker in order. (Celery re-executes itself on
SIGHUP, so a closed terminal used to leave it orphaned.) If the server dies without
stopping it (``kill -9``), the kernel kills it (fhir_server/parent_death.py): nothing
supervises it any more, and it must never reconnect to a later server's mongod; its
unfinished export unit is re-dispatched when its lease runs out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fhir_server.config import Settings
from fhir_server.parent_death import die_with_parent
from fhir_server.supervisor import supervised


class EmbeddedWorker:
    """The worker child process; ``restart`` replaces it after it died."""

    def __init__(self, settings: Settings, mongo_url: str) -> None:
        self.env = {**os.environ, "FHIR_MONGO_URL": mongo_url, "FHIR_DATABASE": settings.database}
        self.process = self._spawn(any_thread=False)

    def _spawn(self, *, any_thread: bool) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "fhir_server", "worker"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            process_group=0,
            # From the supervisor's thread on restarts: it is parked until stop() is done.
            preexec_fn=die_with_parent(signal.SIGKILL, any_thread=any_thread),
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def restart(self) -> None:
        if not self.alive:
            self.process = self._spawn(any_thread=True)

    def stop(self) -> None:
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def embedded_worker(settings: Settings, mongo_url: str) -> Iterator[EmbeddedWorker | None]:
    """Run one supervised worker child for the block's duration (none with a broker)."""
    if settings.celery_broker_url:
        yield None
        return
    worker = EmbeddedWorker(settings, mongo_url)
    with supervised("export worker", worker, settings):
        yield worker
