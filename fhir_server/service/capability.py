"""The CapabilityStatement (capabilitystatement.html), built from what this server
implements: the interaction lists here are the ones the routes serve, and a test
exercises every one of them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_server import FHIR_VERSION, __version__
from fhir_server.config import Settings
from fhir_server.resource_types import resource_types

TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
)
SYSTEM_INTERACTIONS = ("history-system",)
CONDITIONAL_CRITERIA = ("_id", "identifier")

_STARTED = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def capability_statement(settings: Settings, base_url: str) -> dict[str, Any]:
    resources = [
        {
            "type": name,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{name}",
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": settings.allow_update_create,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": settings.conditional_delete,
        }
        for name in resource_types()
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _STARTED,
        "publisher": "fhir-server",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "FHIR R4 server on MongoDB", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["json", "application/fhir+json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Conditional create, update, patch and delete accept the criteria "
                    + " and ".join(CONDITIONAL_CRITERIA)
                    + "."
                ),
                "resource": resources,
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
            }
        ],
    }
