"""Patient/$everything (patient-operation-everything.html): the patient, its Patient
compartment (compartmentdefinition-patient.html) and the Practitioner, PractitionerRole,
Organization, Location and Medication resources those refer to. Expected sets are worked
out by hand from the seeded resources below."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
from fhir_helpers import (
    FHIR_JSON,
    assert_outcome,
    create_with_id,
    expressions,
    keys,
    link,
    observation,
    patient,
    put,
    relative,
    shared_client,
)

ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"

CODE = {"text": "thing"}


def ref(target: str) -> dict[str, str]:
    return {"reference": target}


def _seed(client) -> None:
    def at(resource: dict[str, Any], rid: str) -> None:
        create_with_id(client, resource, rid)

    # referenced resources (not in any Patient compartment)
    at({"resourceType": "Practitioner", "name": [{"family": "Shared"}]}, "dr")
    at({"resourceType": "Practitioner", "name": [{"family": "OtherDoc"}]}, "dr2")
    at({"resourceType": "Practitioner", "name": [{"family": "ViaRole"}]}, "dr3")
    at({"resourceType": "Organization", "name": "Acme"}, "org")
    at({"resourceType": "Location", "name": "Ward 1"}, "loc")
    at({"resourceType": "Location", "name": "Closed ward"}, "loc-gone")
    at({"resourceType": "Medication", "code": {"text": "aspirin"}}, "med")
    at({"resourceType": "PractitionerRole", "practitioner": ref("Practitioner/dr3")}, "role")
    # the patients
    at(
        patient(
            generalPractitioner=[ref("Practitioner/dr")],
            managingOrganization=ref("Organization/org"),
        ),
        "p1",
    )
    at(patient(name=[{"family": "Other"}]), "p2")
    # p1's record
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": ref("Patient/p1"),
        "participant": [{"individual": ref("Practitioner/dr")}],
        "location": [{"location": ref("Location/loc")}, {"location": ref("Location/loc-gone")}],
        "serviceProvider": ref("Organization/org"),
    }
    at(encounter, "e1")
    at(observation(subject=ref("Patient/p1"), performer=[ref("Practitioner/dr")]), "o1")
    at(observation(subject=ref("Patient/p1"), performer=[ref("Organization/org")]), "o2")
    # in p1's compartment through performer, in p2's through subject
    at(observation(subject=ref("Patient/p2"), performer=[ref("Patient/p1")]), "o3")
    condition = {
        "resourceType": "Condition",
        "code": CODE,
        "subject": ref("Patient/p1"),
        "asserter": ref("Practitioner/dr"),
    }
    at(condition, "c1")
    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationReference": ref("Medication/med"),
        "subject": ref("Patient/p1"),
        "requester": ref("PractitionerRole/role"),
    }
    at(request, "mr1")
    active = {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]}  # ait-1
    at(
        {
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": active,
            "patient": ref("Patient/p1"),
        },
        "a1",
    )
    at(observation(subject=ref("Patient/p1")), "o5")
    assert client.delete("/fhir/Observation/o5").status_code in (200, 204)
    assert client.delete("/fhir/Location/loc-gone").status_code in (200, 204)
    # p2's record
    at(observation(subject=ref("Patient/p2"), performer=[ref("Practitioner/dr2")]), "o4")
    at({"resourceType": "Condition", "code": CODE, "subject": ref("Patient/p2")}, "c2")
    # nobody's
    at(observation(), "o6")
    at(observation(subject=ref("Group/g")), "o7")


P1_MATCHES = {
    "Patient/p1",
    "Encounter/e1",
    "Observation/o1",
    "Observation/o2",
    "Observation/o3",
    "Condition/c1",
    "MedicationRequest/mr1",
    "AllergyIntolerance/a1",
}
P1_INCLUDES = {
    "Practitioner/dr",
    "Organization/org",
    "Location/loc",
    "Medication/med",
    "PractitionerRole/role",
    "Practitioner/dr3",  # through the PractitionerRole (iterated)
}
P2_MATCHES = {"Patient/p2", "Observation/o3", "Observation/o4", "Condition/c2"}
P2_INCLUDES = {"Practitioner/dr2"}


@pytest.fixture(scope="module")
def world(mongo_url):
    with shared_client(mongo_url) as client:  # read-only tests share these
        _seed(client)
        yield client


def everything(client, path: str = "Patient/p1", params: Any = None) -> dict[str, Any]:
    r = client.get(f"/fhir/{path}/$everything", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset", body
    return body  # type: ignore[no-any-return]


def all_pages(client, bundle: dict[str, Any]) -> list[dict[str, Any]]:
    pages = [bundle]
    while (nxt := link(pages[-1], "next")) is not None:
        r = client.get(relative(nxt))
        assert r.status_code == 200, r.text
        pages.append(r.json())
        assert len(pages) < 100, "next links never end"
    return pages


# --- completeness -------------------------------------------------------------------------


def test_patient_compartment_and_references(world):
    bundle = everything(world, params={"_count": "100"})
    matches, includes = keys(bundle), keys(bundle, "include")
    assert matches[0] == "Patient/p1"  # the patient leads
    assert set(matches) == P1_MATCHES
    assert set(includes) == P1_INCLUDES
    every = keys(bundle, None)
    assert len(every) == len(set(every)), Counter(every).most_common(3)  # dr appears once
    assert bundle["total"] == len(P1_MATCHES)
    for entry in bundle["entry"]:
        res = entry["resource"]
        assert entry["fullUrl"] == f"http://testserver/fhir/{res['resourceType']}/{res['id']}"
    assert link(bundle, "self").startswith("http://testserver/fhir/Patient/p1/$everything")
    assert link(bundle, "first") is not None and link(bundle, "next") is None


def test_other_patient_sees_only_its_own(world):
    bundle = everything(world, "Patient/p2")
    assert set(keys(bundle)) == P2_MATCHES
    assert set(keys(bundle, "include")) == P2_INCLUDES


def test_deleted_resources_are_absent(world):
    every = keys(everything(world), None)
    assert "Observation/o5" not in every
    assert "Location/loc-gone" not in every


def test_type_level_covers_every_patient_and_nothing_else(world):
    bundle = everything(world, "Patient", {"_count": "100"})
    assert set(keys(bundle)) == P1_MATCHES | P2_MATCHES
    assert set(keys(bundle, "include")) == P1_INCLUDES | P2_INCLUDES
    assert "Observation/o6" not in keys(bundle, None)  # no patient
    assert "Observation/o7" not in keys(bundle, None)  # a Group's


def test_post_with_parameters(world):
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueCode": "Observation"},
            {"name": "_type", "valueCode": "Practitioner"},
            {"name": "_count", "valueInteger": 50},
        ],
    }
    r = world.post(
        "/fhir/Patient/p1/$everything",
        content=json.dumps(body),
        headers={"Content-Type": FHIR_JSON},
    )
    assert r.status_code == 200, r.text
    assert set(keys(r.json())) == {"Observation/o1", "Observation/o2", "Observation/o3"}
    assert set(keys(r.json(), "include")) == {"Practitioner/dr"}
    r = world.post("/fhir/Patient/p1/$everything")  # no body: no parameters
    assert r.status_code == 200 and set(keys(r.json())) == P1_MATCHES


def test_main_routes_still_answer(world):
    assert world.get("/fhir/Patient/p1").json()["id"] == "p1"
    r = world.get("/fhir/Patient/p1/Observation")
    assert {e["resource"]["id"] for e in r.json()["entry"]} == {"o1", "o2", "o3"}


# --- _type, _count and paging -------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "matches", "includes"),
    [
        ("Condition", {"Condition/c1"}, set()),
        (
            "Observation,Practitioner",
            {"Observation/o1", "Observation/o2", "Observation/o3"},
            {"Practitioner/dr"},
        ),
        (
            "MedicationRequest,Medication,PractitionerRole",
            {"MedicationRequest/mr1"},
            {"Medication/med", "PractitionerRole/role"},
        ),
        ("Patient,Organization", {"Patient/p1"}, {"Organization/org"}),
    ],
)
def test_type_restricts_the_types_returned(world, types, matches, includes):
    bundle = everything(world, params={"_type": types})
    assert set(keys(bundle)) == matches
    assert set(keys(bundle, "include")) == includes
    assert f"_type={types.replace(',', '%2C')}" in link(bundle, "self")


def test_type_may_repeat(world):
    bundle = everything(world, params=[("_type", "Condition"), ("_type", "AllergyIntolerance")])
    assert set(keys(bundle)) == {"Condition/c1", "AllergyIntolerance/a1"}


@pytest.mark.parametrize("count", ["1", "2", "3", "7"])
def test_paging_returns_every_resource_once(world, count):
    first = everything(world, params={"_count": count})
    assert first["total"] == len(P1_MATCHES)
    pages = all_pages(world, first)
    assert len(pages) == -(-len(P1_MATCHES) // int(count))
    matches = [k for page in pages for k in keys(page)]
    assert Counter(matches) == Counter(P1_MATCHES)  # each exactly once
    included = set()
    for page in pages:
        assert len(keys(page)) <= int(count)
        every = keys(page, None)
        assert len(every) == len(set(every))
        included |= set(keys(page, "include"))
        assert f"_count={count}" in link(page, "self")
    assert included == P1_INCLUDES
    assert all("total" not in page for page in pages[1:])


def test_count_zero_gives_the_total_only(world):
    bundle = everything(world, params={"_count": "0"})
    assert bundle["total"] == len(P1_MATCHES) and "entry" not in bundle
    bundle = everything(world, params={"_summary": "count"})
    assert bundle["total"] == len(P1_MATCHES) and "entry" not in bundle


def test_elements_apply_to_matches(world):
    bundle = everything(world, params={"_elements": "id", "_type": "Patient"})
    assert set(bundle["entry"][0]["resource"]) <= {"resourceType", "id", "meta"}
    assert "_elements=id" in link(bundle, "self")


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expression"),
    [
        ({"_count": "x"}, "_count"),
        ({"_count": "-1"}, "_count"),
        ({"_since": "yesterday"}, "_since"),
        ({"_type": "NotAType"}, "_type"),
        ({"_type": "ValueSet"}, "_type"),  # neither in the compartment nor referenced
        ({"_type": "Practitioner"}, "_type"),  # nothing to find it through
        ({"foo": "bar"}, "foo"),
        ({"start": "2020-01-01"}, "start"),
        ({"end": "2020-01-01"}, "end"),
        ({"_cursor": "not-a-cursor"}, "_cursor"),
        ([("_since", "2020"), ("_since", "2021")], "_since"),
    ],
)
def test_bad_parameters(world, params, expression):
    issues = assert_outcome(world.get("/fhir/Patient/p1/$everything", params=params), 400)
    assert expression in expressions(issues)


def test_unsupported_dates_say_so(world):
    issues = assert_outcome(world.get("/fhir/Patient/$everything?start=2020"), 400)
    assert issues[0]["code"] == "not-supported"


def test_lenient_handling_ignores_unknown_parameters(world):
    r = world.get(
        "/fhir/Patient/p1/$everything",
        params={"foo": "bar"},
        headers={"Prefer": "handling=lenient"},
    )
    assert r.status_code == 200 and set(keys(r.json())) == P1_MATCHES


def test_unknown_patient_is_404(world):
    assert_outcome(world.get("/fhir/Patient/nobody/$everything"), 404)
    assert_outcome(world.post("/fhir/Patient/nobody/$everything"), 404)


def test_invalid_patient_id_is_400(world):
    assert_outcome(world.get("/fhir/Patient/bad_id/$everything"), 400)


def test_post_body_must_be_parameters(world):
    r = world.post(
        "/fhir/Patient/p1/$everything",
        content=json.dumps(patient()),
        headers={"Content-Type": FHIR_JSON},
    )
    assert_outcome(r, 400)
    r = world.post("/fhir/Patient/p1/$everything", content="{", headers={"Content-Type": FHIR_JSON})
    assert_outcome(r, 400)


def test_other_methods_are_405(world):
    r = world.delete("/fhir/Patient/p1/$everything")
    assert_outcome(r, 405)
    assert r.headers["allow"] == "GET, POST"


# --- changes over time ---------------------------------------------------------------------


def test_deleted_patient_is_410(client):
    create_with_id(client, patient(), "gone")
    assert client.delete("/fhir/Patient/gone").status_code in (200, 204)
    assert_outcome(client.get("/fhir/Patient/gone/$everything"), 410)


def test_since_returns_what_changed_at_or_after(client):
    _seed(client)
    time.sleep(0.01)  # later changes get a strictly later lastUpdated
    current = client.get("/fhir/Condition/c1").json()
    changed = put(client, {**current, "note": [{"text": "worse"}]})
    assert changed.status_code == 200, changed.text
    since = changed.json()["meta"]["lastUpdated"]
    create_with_id(client, observation(subject=ref("Patient/p1")), "o8")
    bundle = everything(client, params={"_since": since})
    assert set(keys(bundle)) == {"Condition/c1", "Observation/o8"}
    # the changed Condition still brings the Practitioner it refers to
    assert set(keys(bundle, "include")) == {"Practitioner/dr"}
    assert link(bundle, "self").find("_since=") > 0
    later = everything(client, params={"_since": "2999-01-01T00:00:00Z"})
    assert "entry" not in later and later["total"] == 0


def test_new_records_appear_and_deleted_ones_go(client):
    _seed(client)
    create_with_id(client, observation(subject=ref("Patient/p1")), "o9")
    assert client.delete("/fhir/Observation/o1").status_code in (200, 204)
    matches = set(keys(everything(client)))
    assert "Observation/o9" in matches and "Observation/o1" not in matches


def test_capability_statement_declares_everything(world):
    rest = world.get("/fhir/metadata").json()["rest"][0]
    by_type = {res["type"]: res for res in rest["resource"]}
    assert {
        "name": "everything",
        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    } in by_type["Patient"]["operation"]
    assert "operation" not in by_type["Observation"]
