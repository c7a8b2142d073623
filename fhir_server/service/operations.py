"""The FHIR operations this server implements, as the CapabilityStatement declares them
(capabilitystatement.html: ``rest.resource.operation`` for operations on a type or its
instances, ``rest.operation`` for the rest). api/operations.py serves them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from fhir_server.workflows.billing.definitions import OPERATIONS as BILLING
from fhir_server.workflows.pharmacy.definitions import OPERATIONS as PHARMACY
from fhir_server.workflows.scheduling.definitions import APPOINTMENT_OPERATIONS
from fhir_server.workflows.subscriptions.definitions import OPERATIONS as SUBSCRIPTIONS
from reports.operation import OPERATIONS as REPORTS
from terminology.service import capability_operations

PATIENT_EVERYTHING: Mapping[str, str] = MappingProxyType(
    {
        "name": "everything",
        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    }
)
RESOURCE_VALIDATE: Mapping[str, str] = MappingProxyType(
    {
        "name": "validate",
        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    }
)
STRUCTUREDEFINITION_SNAPSHOT: Mapping[str, str] = MappingProxyType(
    {
        "name": "snapshot",
        "definition": "http://hl7.org/fhir/OperationDefinition/StructureDefinition-snapshot",
    }
)

# Bulk Data Access IG (fhir_server/bulk): system, Patient and Group level $export.
_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
EXPORT = MappingProxyType({"name": "export", "definition": f"{_BULK}/export"})
PATIENT_EXPORT = MappingProxyType({"name": "export", "definition": f"{_BULK}/patient-export"})
GROUP_EXPORT = MappingProxyType({"name": "export", "definition": f"{_BULK}/group-export"})
# The Bulk Data Import proposal (manifest form; fhir_server/bulk/import_routes.py), under
# the canonical base of the Bulk Data IG it is drafted for.
IMPORT = MappingProxyType({"name": "import", "definition": f"{_BULK}/import"})

# rest.resource[type].operation
RESOURCE_OPERATIONS: Mapping[str, tuple[Mapping[str, str], ...]] = MappingProxyType(
    {
        "Patient": (PATIENT_EVERYTHING, PATIENT_EXPORT),
        "Group": (GROUP_EXPORT,),
        "Appointment": APPOINTMENT_OPERATIONS,  # fhir_server/workflows/scheduling
        "Location": PHARMACY.on("Location"),  # fhir_server/workflows/pharmacy: $stock
        "Medication": PHARMACY.on("Medication"),
        "Invoice": BILLING.on("Invoice"),  # fhir_server/workflows/billing
        "Account": BILLING.on("Account"),
        "Subscription": SUBSCRIPTIONS.on("Subscription"),  # workflows/subscriptions: $status
        "StructureDefinition": (STRUCTUREDEFINITION_SNAPSHOT,),  # api/snapshot.py
        # terminology/: CodeSystem, ValueSet and ConceptMap operations
        **capability_operations(),
    }
)
# rest.operation ($validate works on every type, so it is declared once here)
SYSTEM_OPERATIONS: tuple[Mapping[str, str], ...] = (
    RESOURCE_VALIDATE,
    EXPORT,
    IMPORT,
    *PHARMACY.system(),
    *REPORTS.system(),  # reports/: the clinics' $report
)


def operation_json(operations: tuple[Mapping[str, str], ...]) -> list[dict[str, str]]:
    """The operations as CapabilityStatement JSON (plain dicts for the serializer)."""
    return [dict(op) for op in operations]
