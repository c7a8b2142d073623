"""Shared content and calls of the terminology tests (tests/test_terminology_*.py): a
small hierarchical CodeSystem with Spanish designations, posted over HTTP."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from httpx import Response

SYSTEM = "http://example.org/fhir/CodeSystem/clinica"
VS_ALL = "http://example.org/fhir/ValueSet/clinica-all"


def es(text: str) -> list[dict[str, Any]]:
    return [{"language": "es", "value": text}]


def concept(code: str, display: str, spanish: str, *children: dict[str, Any], **props: Any):
    out: dict[str, Any] = {"code": code, "display": display, "designation": es(spanish)}
    properties = []
    for name, value in props.items():
        key = {bool: "valueBoolean", str: "valueCode"}[type(value)]
        if name == "grupo":
            key = "valueString"
        properties.append({"code": name, key: value})
    if properties:
        out["property"] = properties
    if children:
        out["concept"] = list(children)
    return out


CODE_SYSTEM: dict[str, Any] = {
    "resourceType": "CodeSystem",
    "url": SYSTEM,
    "version": "1.0.0",
    "name": "Clinica",
    "status": "active",
    "content": "complete",
    "hierarchyMeaning": "is-a",
    "property": [
        {"code": "status", "type": "code"},
        {"code": "notSelectable", "type": "boolean"},
        {"code": "grupo", "type": "string"},
    ],
    "concept": [
        concept(
            "trastorno",
            "Disorder",
            "Trastorno",
            concept(
                "diabetes",
                "Diabetes mellitus",
                "Diabetes mellitus",
                concept(
                    "dm1",
                    "Type 1 diabetes mellitus",
                    "Diabetes mellitus tipo 1",
                    grupo="metabolico",
                ),
                concept(
                    "dm2",
                    "Type 2 diabetes mellitus",
                    "Diabetes mellitus tipo 2",
                    grupo="metabolico",
                ),
                grupo="metabolico",
            ),
            concept("hta", "Hypertension", "Hipertensión arterial", grupo="cardio"),
        ),
        concept(
            "hallazgo",
            "Finding",
            "Hallazgo",
            concept("fiebre", "Fever", "Fiebre"),
            concept("tos", "Cough", "Tos", status="retired"),
            notSelectable=True,
        ),
    ],
}
ALL_CODES = ["trastorno", "diabetes", "dm1", "dm2", "hta", "hallazgo", "fiebre", "tos"]


def value_set(url: str, *include: dict[str, Any], **compose: Any) -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "url": url,
        "status": "active",
        "compose": {"include": list(include), **compose},
    }


def create(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def get(client: TestClient, path: str, **params: Any) -> Response:
    return client.get(f"/fhir/{path}", params=params)


def post(client: TestClient, path: str, *parameters: dict[str, Any]) -> Response:
    body = {"resourceType": "Parameters", "parameter": list(parameters)}
    return client.post(f"/fhir/{path}", json=body)


def values(parameters: dict[str, Any]) -> dict[str, Any]:
    """name -> value of a Parameters resource's simple parameters (the first of each)."""
    out: dict[str, Any] = {}
    for p in parameters.get("parameter", []):
        for k, v in p.items():
            if k.startswith("value"):
                out.setdefault(p["name"], v)
    return out


def parts(parameters: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Each ``name`` parameter's parts as name -> value."""
    out = []
    for p in parameters.get("parameter", []):
        if p["name"] == name:
            out.append({q["name"]: next(v for k, v in q.items() if k != "name") for q in p["part"]})
    return out


def codes(expansion: dict[str, Any]) -> list[str]:
    return [c["code"] for c in expansion["expansion"].get("contains", [])]


def outcome(r: Response) -> dict[str, Any]:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]  # type: ignore[no-any-return]
