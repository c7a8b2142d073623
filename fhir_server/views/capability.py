"""How the CapabilityStatement declares the stored ViewDefinitions and their operations.

R4's ``rest.resource.type`` is bound (required) to the R4 ResourceType codes, so
ViewDefinition, a SQL on FHIR logical model, cannot be a ``rest.resource`` of an R4
statement. It is declared instead by one ``rest`` extension with the parts a
``rest.resource`` would have: ``type``, ``profile``, each ``interaction``, the
``versioning``, each ``searchParam`` (name and type, ``name|type``) and each
``operation`` (the OperationDefinition's canonical). service/openapi.py derives the
ViewDefinition paths from it, as it does for the R4 types.
"""

from __future__ import annotations

from typing import Any

from fhir_server.views.store import PROFILE, SEARCH_PARAMS, TYPE

ADDITIONAL_RESOURCE = "urn:fhir-server:StructureDefinition/capability-additional-resource"
INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "create", "search-type")
# SQL on FHIR v2: $viewdefinition-run at the system level (the R4 form), and the type
# and instance level $run (fhir_server/api/views.py serves both).
RUN_OPERATIONS = (
    "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-run",
    "http://sql-on-fhir.org/OperationDefinition/$run",
)
# $viewdefinition-export, asynchronous (fhir_server/api/view_export.py): at the system,
# type and instance levels.
EXPORT_OPERATIONS = ("http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export",)
_SEARCH_TYPES = {"token": "token", "string": "string", "uri": "uri"}


def view_definition_extension() -> dict[str, Any]:
    """The ``rest`` extension declaring ``[base]/ViewDefinition``."""
    parts: list[dict[str, Any]] = [
        {"url": "type", "valueCode": TYPE},
        {"url": "profile", "valueCanonical": PROFILE},
        *({"url": "interaction", "valueCode": code} for code in INTERACTIONS),
        {"url": "versioning", "valueCode": "versioned-update"},
        *(
            {"url": "searchParam", "valueString": f"{name}|{_SEARCH_TYPES[kind]}"}
            for name, (_, kind) in SEARCH_PARAMS.items()
        ),
        *(
            {"url": "operation", "valueCanonical": url}
            for url in RUN_OPERATIONS + EXPORT_OPERATIONS
        ),
    ]
    return {"url": ADDITIONAL_RESOURCE, "extension": parts}
