"""Issue 11, finding 2: a patient-context token wrote into another patient's record.

The attack: a token for patient ``pa`` writes a resource whose ``subject`` (or
``patient``) is ``pb`` and which points at ``pa`` through another Patient-compartment
reference (Condition.asserter, Observation.performer, AllergyIntolerance.recorder). The
old check only asked whether the written resource was in *some* compartment of ``pa``,
so it passed, and the record showed up in ``pb``'s chart. The rule now: every
Patient-compartment reference of what is written (compartmentdefinition-patient.html:
the compartment's parameters for the type) is the patient in context, on every path
that writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import binary_patch, patch_request
from smart_helpers import ADMIN, ids, smart_client

World = tuple[TestClient, Any]
SCOPE = "patient/*.cruds"
IDENT = "urn:test:cross"


@pytest.fixture
def world(mongo_url: str) -> Iterator[World]:
    with smart_client(mongo_url) as found:
        yield found


def as_pa(world: World, method: str, url: str, **kwargs: Any) -> Any:
    client, mint = world
    headers = {**mint.headers(SCOPE, patient="pa"), **kwargs.pop("headers", {})}
    return client.request(method, f"/fhir/{url}", headers=headers, **kwargs)


def as_admin(world: World, method: str, url: str, **kwargs: Any) -> Any:
    client, mint = world
    return client.request(method, f"/fhir/{url}", headers=mint.headers(ADMIN), **kwargs)


def code(text: str) -> dict[str, Any]:
    return {"coding": [{"system": "http://snomed.info/sct", "code": "1"}], "text": text}


def condition() -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "identifier": [{"system": IDENT, "value": "condition"}],
        "code": code("HIV"),
        "subject": {"reference": "Patient/pb"},
        "asserter": {"reference": "Patient/pa"},
    }


def observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": IDENT, "value": "observation"}],
        "status": "final",
        "code": code("weight"),
        "subject": {"reference": "Patient/pb"},
        "performer": [{"reference": "Patient/pa"}],
    }


def allergy() -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "identifier": [{"system": IDENT, "value": "allergy"}],
        "code": code("peanut"),
        "clinicalStatus": {  # ait-1
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                }
            ]
        },
        "patient": {"reference": "Patient/pb"},
        "recorder": {"reference": "Patient/pa"},
    }


ATTACKS = [condition, observation, allergy]


def bundle(kind: str, method: str, url: str, resource: dict[str, Any], **req: Any) -> Any:
    entry = {"request": {"method": method, "url": url, **req}, "resource": resource}
    return {"resourceType": "Bundle", "type": kind, "entry": [entry]}


def own(world: World, resource: dict[str, Any]) -> str:
    """The same resource, first written wholly within pa's record (by pa's token): the
    starting point for the update and patch attacks."""
    body = json.loads(json.dumps(resource).replace("Patient/pb", "Patient/pa"))
    r = as_pa(world, "POST", resource["resourceType"], json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def moved_ops(resource: dict[str, Any]) -> list[dict[str, Any]]:
    field = "patient" if resource["resourceType"] == "AllergyIntolerance" else "subject"
    return [{"op": "replace", "path": f"/{field}/reference", "value": "Patient/pb"}]


def attempt(world: World, path: str, resource: dict[str, Any]) -> tuple[int, str]:
    """One write path: (status, status of the entry for bundles)."""
    t = resource["resourceType"]
    if path == "POST":
        r = as_pa(world, "POST", t, json=resource)
    elif path == "conditional create":
        criteria = {"If-None-Exist": f"identifier={IDENT}|nothing"}
        r = as_pa(world, "POST", t, json=resource, headers=criteria)
    elif path == "PUT":
        rid = own(world, resource)
        r = as_pa(world, "PUT", f"{t}/{rid}", json={**resource, "id": rid})
    elif path == "conditional update":
        own(world, resource)
        query = f"identifier={IDENT}|{resource['identifier'][0]['value']}"
        r = as_pa(world, "PUT", f"{t}?{query}", json=resource)
    elif path == "PATCH":
        rid = own(world, resource)
        r = as_pa(world, "PATCH", f"{t}/{rid}", **patch_request(moved_ops(resource)))
    elif path == "transaction":
        r = as_pa(world, "POST", "", json=bundle("transaction", "POST", t, resource))
    elif path == "transaction PATCH":
        rid = own(world, resource)
        tx = bundle("transaction", "PATCH", f"{t}/{rid}", binary_patch(moved_ops(resource)))
        r = as_pa(world, "POST", "", json=tx)
    elif path == "batch":
        r = as_pa(world, "POST", "", json=bundle("batch", "POST", t, resource))
        assert r.status_code == 200, r.text
        return int(r.json()["entry"][0]["response"]["status"][:3]), r.text
    else:
        raise AssertionError(path)
    return r.status_code, r.text


PATHS = [
    "POST",
    "conditional create",
    "PUT",
    "conditional update",
    "PATCH",
    "transaction",
    "transaction PATCH",
    "batch",
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("make", ATTACKS, ids=lambda f: f.__name__)
def test_patient_token_cannot_write_into_another_patients_record(
    world: World, path: str, make: Any
) -> None:
    resource = make()
    before = ids(as_admin(world, "GET", "Patient/pb/$everything").json())
    status, text = attempt(world, path, resource)
    assert status == 403, text
    # pb's record holds nothing written by pa's token, by search or $everything
    t = resource["resourceType"]
    field = "patient" if t == "AllergyIntolerance" else "subject"
    found = as_admin(world, "GET", f"{t}?{field}=Patient/pb&identifier={IDENT}|").json()
    assert ids(found) == set(), found
    assert ids(as_admin(world, "GET", "Patient/pb/$everything").json()) == before


def test_resources_shared_with_another_patient_are_not_writable(world: World) -> None:
    """The version a write replaces must also be the context patient's alone: pa's
    token cannot delete or rewrite an Observation about pb that pa performed (it sees
    it, as part of pa's record, so the answer is 403, not 404)."""
    shared = {**observation(), "id": "shared"}
    assert as_admin(world, "PUT", "Observation/shared", json=shared).status_code == 201
    assert as_pa(world, "GET", "Observation/shared").status_code == 200
    taken = json.loads(json.dumps(shared).replace("Patient/pb", "Patient/pa"))
    r = as_pa(world, "PUT", "Observation/shared", json=taken)
    assert r.status_code == 403, r.text
    r = as_pa(world, "DELETE", "Observation/shared")
    assert r.status_code == 403, r.text
    after = as_admin(world, "GET", "Observation/shared").json()
    assert after["meta"]["versionId"] == "1"


def test_the_context_patients_own_writes_still_work(world: World) -> None:
    for make in ATTACKS:
        body = json.loads(json.dumps(make()).replace("Patient/pb", "Patient/pa"))
        r = as_pa(world, "POST", body["resourceType"], json=body)
        assert r.status_code == 201, r.text
    r = as_pa(world, "PUT", "Patient/pa", json={"resourceType": "Patient", "id": "pa"})
    assert r.status_code == 200, r.text
    linked = {
        "resourceType": "Patient",
        "id": "pa",
        "link": [{"other": {"reference": "Patient/pb"}, "type": "seealso"}],
    }
    r = as_pa(world, "PUT", "Patient/pa", json=linked)
    assert r.status_code == 403, r.text  # Patient.link is a compartment reference too


def test_a_patient_users_user_scopes_follow_the_same_rule(world: World) -> None:
    """``user/`` scopes of a user whose fhirUser is a Patient are that patient's context."""
    client, mint = world
    headers = mint.headers("user/*.cruds", fhir_user="Patient/pa")
    for make in ATTACKS:
        resource = make()
        r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
        assert r.status_code == 403, r.text
