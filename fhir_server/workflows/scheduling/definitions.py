"""The scheduling operations as the CapabilityStatement declares them
(``rest.resource[Appointment].operation``): $find, $hold and $book (Argonaut
Scheduling's, in R4 form) and this server's $cancel.

Their OperationDefinitions ship as JSON files in ``conformance/`` and are installed as
stored resources at start-up (fhir_server/service/shipped.py), so each ``definition``
canonical of the CapabilityStatement resolves on this server
(``GET OperationDefinition?url=...``). The files are the one source: the declarations
are read from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fhir_server.service.shipped import Shipment, digest_of

CONFORMANCE = Path(__file__).parent / "conformance"
_ORDER = ("find", "hold", "book", "cancel")


@cache
def _files() -> tuple[tuple[Path, bytes], ...]:
    return tuple((p, p.read_bytes()) for p in sorted(CONFORMANCE.glob("*.json")))


def operation_definitions() -> list[dict[str, Any]]:
    """The shipped OperationDefinitions, in the order the CapabilityStatement lists them."""
    found = [json.loads(raw) for _, raw in _files()]
    return sorted(found, key=lambda d: _ORDER.index(d["code"]))


def shipment() -> Shipment:
    return Shipment(
        what="scheduling OperationDefinitions",
        marker="scheduling-operations",
        resources=operation_definitions(),
        digest=digest_of(*(raw for _, raw in _files())),
    )


APPOINTMENT_OPERATIONS: tuple[Mapping[str, str], ...] = tuple(
    MappingProxyType({"name": d["code"], "definition": d["url"]}) for d in operation_definitions()
)
