"""Resources and waits for the slot generation tests (issue 12: availability -> slots)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from profiles import AVAILABLE_TIME, NOT_AVAILABLE, SLOT_DURATION, TIMEZONE

TAG = "urn:fhir-server:slot-origin|generated"
REDIS = os.environ.get("FHIR_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def minutes(n: float) -> dict[str, Any]:
    return {"value": n, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}


def hours(days: list[str], start: str | None = None, end: str | None = None) -> dict[str, Any]:
    """A PractitionerRole/HealthcareService ``availableTime``."""
    out: dict[str, Any] = {"daysOfWeek": days}
    if start is None:
        out["allDay"] = True
    else:
        out["availableStartTime"], out["availableEndTime"] = start, end
    return out


def hours_extension(days: list[str], start: str, end: str) -> dict[str, Any]:
    """The ``available-time`` extension (Location rooms, Schedule)."""
    parts: list[dict[str, Any]] = [{"url": "daysOfWeek", "valueCode": d} for d in days]
    parts += [
        {"url": "availableStartTime", "valueTime": start},
        {"url": "availableEndTime", "valueTime": end},
    ]
    return {"url": AVAILABLE_TIME, "extension": parts}


def off_extension(start: str, end: str) -> dict[str, Any]:
    return {
        "url": NOT_AVAILABLE,
        "extension": [
            {"url": "description", "valueString": "closed"},
            {"url": "during", "valuePeriod": {"start": start, "end": end}},
        ],
    }


def schedule(
    sid: str,
    actors: list[str],
    slot_minutes: float | None = 30,
    horizon: tuple[str, str] | None = ("2031-02-03T00:00:00Z", "2031-02-10T00:00:00Z"),
    extensions: list[dict[str, Any]] | None = None,
    tz: str | None = None,
) -> dict[str, Any]:
    ext = list(extensions or [])
    if slot_minutes is not None:
        ext.append({"url": SLOT_DURATION, "valueDuration": minutes(slot_minutes)})
    if tz is not None:
        ext.append({"url": TIMEZONE, "valueCode": tz})
    out: dict[str, Any] = {
        "resourceType": "Schedule",
        "id": sid,
        "actor": [{"reference": a} for a in actors],
    }
    if ext:
        out["extension"] = ext
    if horizon is not None:
        out["planningHorizon"] = {"start": horizon[0], "end": horizon[1]}
    return out


def put(client: httpx.Client, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def slots_of(client: httpx.Client, sid: str) -> list[dict[str, Any]]:
    """Every live Slot of the Schedule, earliest first."""
    out: list[dict[str, Any]] = []
    params: dict[str, Any] | None = {"schedule": f"Schedule/{sid}", "_sort": "start,_id"}
    url = "/Slot"
    while url:
        r = client.get(url, params={**(params or {}), "_count": 1000} if params else None)
        r.raise_for_status()
        body = r.json()
        out += [e["resource"] for e in body.get("entry", [])]
        url = next((link["url"] for link in body.get("link", []) if link["relation"] == "next"), "")
        params = None
    return out


def wait_for(what: Callable[[], Any], timeout: float = 60.0, every: float = 0.3) -> Any:
    """Poll until ``what()`` is truthy; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def starts(slots: list[dict[str, Any]]) -> list[str]:
    return [s["start"] for s in slots]


def start_worker(
    mongo_url: str, database: str, queue: str, env: dict[str, str], log: Any
) -> subprocess.Popen[bytes]:
    """A ``fhir-server worker`` on Redis, with the slot beat (check every 0.3 s)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    full.update({"FHIR_SLOT_CHECK_INTERVAL": "0.3", **env})
    args = [sys.executable, "-m", "fhir_server", "worker", "--mongo-url", mongo_url]
    args += ["--database", database, "--broker-url", REDIS, "--queue", queue]
    return subprocess.Popen(args, env=full, stdout=log, stderr=log)
