"""The scheduling operations as the CapabilityStatement declares them
(``rest.resource[Appointment].operation``): $find, $hold and $book (Argonaut
Scheduling's, in R4 form) and this server's $cancel. Their OperationDefinitions are the
JSON files in ``conformance/`` (fhir_server/workflows/conformance.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fhir_server.service.shipped import Shipment
from fhir_server.workflows.conformance import Operations

OPERATIONS = Operations(
    Path(__file__).parent / "conformance",
    what="scheduling OperationDefinitions",
    marker="scheduling-operations",
    order=("find", "hold", "book", "cancel"),
)


def operation_definitions() -> list[dict[str, Any]]:
    """The shipped OperationDefinitions, in the order the CapabilityStatement lists them."""
    return OPERATIONS.definitions()


def shipment() -> Shipment:
    return OPERATIONS.shipment()


APPOINTMENT_OPERATIONS: tuple[Mapping[str, str], ...] = OPERATIONS.on("Appointment")
