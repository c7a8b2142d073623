"""Slot generation on real Celery workers (`fhir-server worker`) with the Redis broker
(127.0.0.1:6379): the periodic task rolls the horizon on and picks up changes of hours;
a worker SIGKILLed in the middle of a generation loses nothing and, rerun by two workers
at once, duplicates nothing (deterministic slot ids, one transaction per piece)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from process_helpers import stop
from slot_generation_helpers import (
    REDIS,
    TAG,
    hours,
    put,
    schedule,
    slots_of,
    start_worker,
    starts,
    wait_for,
)

from fhir_server.testing import ServerProcess
from profiles import SLOT_DURATION

pytestmark = pytest.mark.slow
EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@pytest.fixture
def queue() -> str:
    return f"slots-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def server(mongo_url: str, database: str, queue: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on the Redis broker: it runs no worker of its own."""
    env = {"FHIR_CELERY_BROKER_URL": REDIS, "FHIR_CELERY_QUEUE": queue}
    log = tmp_path / "server.log"
    with ServerProcess(mongo_url=mongo_url, database=database, env=env, log_file=log) as s:
        yield s


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop(process)


def generated(http: httpx.Client) -> int:
    r = http.get("/Slot", params={"_tag": TAG, "_summary": "count"})
    r.raise_for_status()
    total: int = r.json()["total"]
    return total


def test_sigkill_mid_generation_then_two_workers_rerun(
    http: httpx.Client,
    mongo_url: str,
    database: str,
    queue: str,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    schedules = [f"s{n}" for n in range(12)]
    for n, sid in enumerate(schedules):
        put(
            http,
            {
                "resourceType": "PractitionerRole",
                "id": f"pr{n}",
                "availableTime": [hours(EVERY_DAY)],
            },
        )
        horizon = ("2031-02-03T00:00:00Z", "2031-03-03T00:00:00Z")  # 28 days
        put(http, schedule(sid, [f"PractitionerRole/pr{n}"], 15, horizon=horizon))
    expected = len(schedules) * 28 * 96
    log = open(tmp_path / "workers.log", "ab")  # noqa: SIM115
    first = start_worker(mongo_url, database, queue, {}, log)
    workers.append(first)
    assert wait_for(lambda: generated(http) > 0, timeout=90, every=0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    partial = generated(http)
    assert 0 < partial < expected, partial

    workers.append(start_worker(mongo_url, database, queue, {}, log))
    workers.append(start_worker(mongo_url, database, queue, {}, log))
    assert wait_for(lambda: generated(http) == expected, timeout=240, every=1), generated(http)
    time.sleep(3)  # both runs over: still exactly that many
    assert generated(http) == expected
    for sid in schedules[:3]:
        slots = slots_of(http, sid)
        assert len(slots) == 28 * 96
        assert len(set(starts(slots))) == len(slots)  # no two slots at the same time
        assert {s["meta"]["versionId"] for s in slots} == {"1"}  # none written twice
    versions = http.get("/Slot/_history", params={"_summary": "count"}).json()["total"]
    assert versions == expected  # no version lost or written again, in history either


def test_periodic_task_rolls_the_horizon_and_follows_hours(
    http: httpx.Client,
    mongo_url: str,
    database: str,
    queue: str,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """No planningHorizon end: the slots reach FHIR_SLOT_HORIZON (PT2M here) past now,
    and the periodic task (every FHIR_SLOT_ROLL_INTERVAL, 1 s here) rolls them on."""
    role: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": "pr-roll",
        "availableTime": [hours(EVERY_DAY)],
    }
    put(http, role)
    sched = schedule("s-roll", ["PractitionerRole/pr-roll"], None, horizon=None)
    sched["extension"] = [
        {"url": SLOT_DURATION, "valueDuration": {"value": 10, "unit": "s", "code": "s"}}
    ]
    put(http, sched)
    env = {"FHIR_SLOT_HORIZON": "PT2M", "FHIR_SLOT_ROLL_INTERVAL": "1"}
    log = open(tmp_path / "workers.log", "ab")  # noqa: SIM115
    workers.append(start_worker(mongo_url, database, queue, env, log))
    slots = wait_for(lambda: slots_of(http, "s-roll"), timeout=60)
    first_end = max(s["end"] for s in slots)
    later = wait_for(
        lambda: max((s["end"] for s in slots_of(http, "s-roll")), default="") > first_end,
        timeout=30,
    )
    assert later, "the horizon did not roll on"
    # a change of hours is picked up: none that fit a 10 s slot -> the free slots ahead go
    changed = time.time()
    role["availableTime"] = [hours(EVERY_DAY, "00:00:00", "00:00:01")]
    put(http, role)
    assert wait_for(
        lambda: not [s for s in slots_of(http, "s-roll") if s["start"] > _iso(changed + 60)],
        timeout=30,
    )


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def test_a_worker_refuses_an_unknown_time_zone(mongo_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    env["FHIR_SLOT_TIMEZONE"] = "Mars/Olympus_Mons"
    done = subprocess.run(
        [sys.executable, "-m", "fhir_server", "worker", "--mongo-url", mongo_url],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert b"is not an IANA time zone" in done.stderr
