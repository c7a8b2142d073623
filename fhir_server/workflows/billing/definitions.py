"""The billing operations as the CapabilityStatement declares them: ``Invoice/$generate``,
``Invoice/[id]/$issue`` and ``Account/[id]/$invoice``; their OperationDefinitions are the
JSON files in ``conformance/``."""

from __future__ import annotations

from pathlib import Path

from fhir_server.workflows.conformance import Operations

OPERATIONS = Operations(
    Path(__file__).parent / "conformance",
    what="billing OperationDefinitions",
    marker="billing-operations",
    order=("generate", "issue", "invoice"),
)
