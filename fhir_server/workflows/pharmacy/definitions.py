"""``$stock`` as the CapabilityStatement declares it (on Location and Medication, and at
system level); its OperationDefinition is ``conformance/OperationDefinition-stock.json``."""

from __future__ import annotations

from pathlib import Path

from fhir_server.workflows.conformance import Operations

OPERATIONS = Operations(
    Path(__file__).parent / "conformance",
    what="pharmacy OperationDefinitions",
    marker="pharmacy-operations",
    order=("stock",),
)
