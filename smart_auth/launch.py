"""Launch contexts: EHR launches (single-use, five minutes) and the FHIR records a
launch or a patient picker may name (read straight from the FHIR collections)."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database

from fhir_server.jsonio import load_stored
from smart_auth.pages import PatientChoice
from smart_auth.store import LAUNCHES

LAUNCH_SECONDS = 300
PICKER_LIMIT = 50
PICKER_SCAN = 2000


def resource_exists(db: Database[Any], resource_type: str, resource_id: str) -> bool:
    if not resource_id or len(resource_id) > 64:
        return False
    doc = db[resource_type].find_one({"_id": resource_id, "del": {"$ne": True}}, {"_id": 1})
    return doc is not None


def create_launch(
    db: Database[Any], client_id: str, username: str, patient: str, encounter: str | None
) -> str:
    launch_id = secrets.token_urlsafe(24)
    db[LAUNCHES].insert_one(
        {
            "_id": launch_id,
            "client_id": client_id,
            "user": username,
            "patient": patient,
            "encounter": encounter,
            "expires": datetime.fromtimestamp(time.time() + LAUNCH_SECONDS, UTC),
        }
    )
    return launch_id


def consume_launch(db: Database[Any], launch_id: str, client_id: str) -> dict[str, Any] | None:
    """The launch context, deleted as it is read (single use); None when unknown, used,
    expired or created for another client."""
    doc = db[LAUNCHES].find_one_and_delete({"_id": launch_id})
    if doc is None or doc["client_id"] != client_id:
        return None
    if doc["expires"].replace(tzinfo=UTC).timestamp() < time.time():
        return None
    return doc


def _name(resource: dict[str, Any]) -> str:
    for name in resource.get("name") or []:
        if not isinstance(name, dict):
            continue
        if name.get("text"):
            return str(name["text"])
        parts = [*(name.get("given") or []), name.get("family") or ""]
        text = " ".join(str(p) for p in parts if p)
        if text:
            return text
    return ""


def find_patients(db: Database[Any], query: str) -> list[PatientChoice]:
    """Patients whose name contains ``query`` (case-insensitive), for the picker."""
    wanted = query.strip().lower()
    out: list[PatientChoice] = []
    cursor = db["Patient"].find({"del": {"$ne": True}}, {"raw": 1}).sort("_id", 1)
    for doc in cursor.limit(PICKER_SCAN):
        resource = load_stored(doc["raw"])
        name = _name(resource)
        if wanted and wanted not in name.lower():
            continue
        out.append(PatientChoice(doc["_id"], name, str(resource.get("birthDate", ""))))
        if len(out) >= PICKER_LIMIT:
            break
    return out
