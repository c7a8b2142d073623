"""``Subscription/$status`` as the CapabilityStatement declares it; its
OperationDefinition is ``conformance/OperationDefinition-subscription-status.json``."""

from __future__ import annotations

from pathlib import Path

from fhir_server.workflows.conformance import Operations

OPERATIONS = Operations(
    Path(__file__).parent / "conformance",
    what="subscription OperationDefinitions",
    marker="subscription-operations",
    order=("status",),
)
