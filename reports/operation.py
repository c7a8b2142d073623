"""``$report`` as the CapabilityStatement declares it (``rest.operation``); its
OperationDefinition is ``conformance/OperationDefinition-report.json``, installed at
start-up with the workflows' own (fhir_server/workflows/__init__.py) so that the
declared canonical resolves on this server."""

from __future__ import annotations

from pathlib import Path

from fhir_server.workflows.conformance import Operations

OPERATIONS = Operations(
    Path(__file__).parent / "conformance",
    what="report OperationDefinitions",
    marker="report-operations",
    order=("report",),
)
