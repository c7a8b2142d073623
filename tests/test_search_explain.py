"""Every benchmark query shape runs on indexes: MongoDB's winning plan for each query
the search issues (chained sub-queries included) has no COLLSCAN stage. Same shapes as
benchmarks/search.py, on a small hand-built record instead of the Synthea data."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_server.service.search import plan_stages

_spec = importlib.util.spec_from_file_location(
    "search_shapes", Path(__file__).resolve().parent.parent / "benchmarks" / "search_shapes.py"
)
assert _spec and _spec.loader
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)

LOINC = "http://loinc.org"
VALUES = {
    "family": "Núñez",
    "given": "José",
    "family_part": "uñe",
    "birthdate": "1953-01-10",
    "mrn_system": "http://hospital.example.org",
    "mrn": "MRN-1",
    "code": "8302-2",
    "value": "180",
    "value_prefix": "gt",
    "encounter_class": "AMB",
    "med_status": "active",
    "condition_code": "444814009",
    "practitioner_family": "Ramírez",
}


def _post(client: TestClient, resource: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _record(client: TestClient) -> dict[str, str]:
    """One patient with a record touching every shape's parameters."""
    doctor = _post(client, {"resourceType": "Practitioner", "name": [{"family": "Ramírez"}]})
    pid = _post(
        client,
        {
            "resourceType": "Patient",
            "name": [{"family": "Núñez", "given": ["José"]}],
            "gender": "female",
            "birthDate": "1953-01-10",
            "identifier": [{"system": "http://hospital.example.org", "value": "MRN-1"}],
        },
    )
    subject = {"reference": f"Patient/{pid}"}
    height = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "8302-2"}]},
        "subject": subject,
        "effectiveDateTime": "2005-06-01T10:00:00Z",
        "valueQuantity": {"value": 181, "system": "http://unitsofmeasure.org", "code": "cm"},
    }
    bp = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": subject,
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 150, "code": "mm[Hg]"},
            }
        ],
    }
    obs = _post(client, height)
    _post(client, bp)
    condition = _post(
        client,
        {
            "resourceType": "Condition",
            "subject": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "444814009"}]},
        },
    )
    _post(
        client,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": subject,
            "period": {"start": "2005-06-01T10:00:00Z"},
            "diagnosis": [{"condition": {"reference": f"Condition/{condition}"}}],
        },
    )
    _post(
        client,
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "medicationCodeableConcept": {"text": "x"},
            "requester": {"reference": f"Practitioner/{doctor}"},
        },
    )
    _post(
        client,
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"text": "panel"},
            "subject": subject,
            "result": [{"reference": f"Observation/{obs}"}],
        },
    )
    _post(
        client,
        {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"text": "flu"},
            "patient": subject,
            "occurrenceDateTime": "2005-01-01",
        },
    )
    return {**VALUES, "pid": pid}


def _plan_for(client: TestClient, query: str) -> Any:
    search = client.app.state.services.search  # type: ignore[attr-defined]
    return search, search.parser().parse_url(query)


def test_every_benchmark_shape_uses_indexes(client: TestClient) -> None:
    values = _record(client)
    scans = []
    for name, template in [*shapes.SHAPES, shapes.DEEP_PAGE[:2]]:
        query = template.format(**values)
        assert client.get(f"/fhir/{query}").status_code == 200, query
        search, plan = _plan_for(client, query)
        explained = client.portal.call(search.explain, plan)  # type: ignore[union-attr]
        for collection, winning in explained:
            if "COLLSCAN" in plan_stages(winning):
                scans.append((name, collection))
    assert not scans, f"collection scans: {scans}"


@pytest.mark.parametrize("query", ["Patient?name=x", "Patient?gender=male&_sort=-birthdate"])
def test_explain_reports_the_index(client: TestClient, query: str) -> None:
    _post(client, {"resourceType": "Patient", "name": [{"family": "x"}]})
    search, plan = _plan_for(client, query)
    explained = client.portal.call(search.explain, plan)  # type: ignore[union-attr]
    assert all("IXSCAN" in plan_stages(w) for _, w in explained)
