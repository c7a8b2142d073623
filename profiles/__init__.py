"""The server's own profiles and extensions (StructureDefinitions in definitions/),
shipped into the database when ``serve`` starts (idempotently, by url + version, through
fhir_server/service/shipped.py), so ``GET StructureDefinition/[id]`` and
``StructureDefinition?url=`` serve them.

Extensions for scheduling (docs/scheduling.md), where R4 has no element:
``slot-duration`` (Schedule), ``available-time`` and ``not-available`` (Location rooms and
Schedule; the shape of PractitionerRole.availableTime / notAvailable), ``timezone``
(Schedule).

Extensions for the pharmacy's stock (docs/pharmacy.md): ``stock-adjustment``
(SupplyDelivery: a write-off or count, with its reason), ``dispensed-batch``
(MedicationDispense: the batches the ledger took it from) and ``stock-threshold``
(Medication: the low-stock minimum per location).

For appointment reminders (docs/reminders.md): ``reminder-opt-out`` (a Patient's
ContactPoint, or the Patient: no reminders there).

The clinics' profile set (``ec-*``: Patient, Organization, Practitioner, Appointment,
Slot, Invoice; profiles/clinics.py, docs/profiles.md): constraint profiles for the
Ecuadorian identifiers (cédula, RUC, SENESCYT), the scheduling rules and IVA in USD.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from fhir_server.service.shipped import Shipment

DEFINITIONS = Path(__file__).parent / "definitions"
BASE = "urn:fhir-server:StructureDefinition/"
SLOT_DURATION = BASE + "slot-duration"
AVAILABLE_TIME = BASE + "available-time"
NOT_AVAILABLE = BASE + "not-available"
TIMEZONE = BASE + "timezone"
STOCK_ADJUSTMENT = BASE + "stock-adjustment"
DISPENSED_BATCH = BASE + "dispensed-batch"
STOCK_THRESHOLD = BASE + "stock-threshold"
REMINDER_OPT_OUT = BASE + "reminder-opt-out"
WHAT = "fhir-server profiles"


@cache
def _files() -> tuple[tuple[str, bytes], ...]:
    return tuple((p.name, p.read_bytes()) for p in sorted(DEFINITIONS.glob("*.json")))


def definitions() -> list[dict[str, Any]]:
    """Every shipped StructureDefinition."""
    return [json.loads(data) for _, data in _files()]


def digest() -> str:
    """Changes whenever a shipped file does (so a new version is loaded on start)."""
    h = hashlib.sha256()
    for name, data in _files():
        h.update(name.encode() + b"\0" + data)
    return h.hexdigest()[:16]


def shipment() -> Shipment:
    """The shipped StructureDefinitions, as ``serve`` installs them at start-up."""
    return Shipment(what=WHAT, marker="profiles", resources=definitions(), digest=digest())
