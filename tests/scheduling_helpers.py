"""Appointments for the scheduling tests (issue 12)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import put
from pymongo import MongoClient
from smart_helpers import TokenMint

from fhir_server.app import create_app
from fhir_server.config import Settings

START = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    """START plus ``minutes``, as a FHIR instant."""
    return (START + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def appointment(
    *,
    slot: str | None = None,
    practitioner: str | None = None,
    room: str | None = None,
    patient: str = "pa",
    begin: int = 0,
    minutes: int = 15,
    status: str = "booked",
    **extra: Any,
) -> dict[str, Any]:
    participants = [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}]
    if practitioner:
        participants.append(
            {"actor": {"reference": f"Practitioner/{practitioner}"}, "status": "accepted"}
        )
    if room:
        participants.append({"actor": {"reference": f"Location/{room}"}, "status": "accepted"})
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "status": status,
        "start": at(begin),
        "end": at(begin + minutes),
        "participant": participants,
    }
    if slot:
        resource["slot"] = [{"reference": f"Slot/{slot}"}]
    resource.update(extra)
    return resource


def slot(sid: str, begin: int = 0, minutes: int = 15) -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "id": sid,
        "schedule": {"reference": "Schedule/s"},
        "status": "free",
        "start": at(begin),
        "end": at(begin + minutes),
    }


def seed_slots(client: TestClient, *ids: str, **headers: str) -> None:
    for i, sid in enumerate(ids):
        r = put(client, slot(sid, begin=15 * i), **headers)
        assert r.status_code in (200, 201), r.text


@contextlib.contextmanager
def smart(mongo_url: str, **overrides: Any) -> Iterator[tuple[TestClient, TokenMint]]:
    settings = Settings(
        mongo_url=mongo_url,
        database=f"test_{uuid.uuid4().hex[:12]}",
        auth_enabled=True,
        **overrides,
    )
    mint = TokenMint(mongo_url, settings.database)
    try:
        with TestClient(create_app(settings), base_url="http://testserver") as client:
            yield client, mint
    finally:
        mint.close()
        with MongoClient(mongo_url) as mc:
            mc.drop_database(settings.database)
