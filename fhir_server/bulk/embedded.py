"""The worker ``fhir-server serve`` runs itself when no broker is configured: one
``fhir-server worker`` child process on the same MongoDB (broker included), stopped
when the server stops. A deployment with a broker runs its own workers instead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fhir_server.config import Settings
from fhir_server.embedded_mongo import _die_with_parent


@contextmanager
def embedded_worker(settings: Settings, mongo_url: str) -> Iterator[subprocess.Popen[bytes] | None]:
    """Run one worker child for the block's duration (none when a broker is set)."""
    if settings.celery_broker_url:
        yield None
        return
    env = {**os.environ, "FHIR_MONGO_URL": mongo_url, "FHIR_DATABASE": settings.database}
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_server", "worker"],
        env=env,
        preexec_fn=_die_with_parent(),  # a killed server takes its worker along
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
