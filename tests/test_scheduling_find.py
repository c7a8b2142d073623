"""``Appointment/$find`` parameter by parameter (issue 12; the served
OperationDefinition ``appointment-find`` lists them): each narrows the free Slots it
proposes, GET and POST alike; taken and tentative slots are never proposed."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, app_client, assert_outcome, expressions, put
from scheduling_helpers import appointment, slot

WINDOW = {"start": "2030-03-04T09:00:00Z", "end": "2030-03-04T11:00:00Z"}


def coded(system: str, code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": system, "code": code}]}]


def seed(client: TestClient) -> None:
    """Schedule a: dr in room1; b: dr2 in room2. Slots at 09:00, 09:15, ... with
    service types, visit types and specialties that differ."""
    for sid, actors in (
        ("a", ("Practitioner/dr", "Location/room1")),
        ("b", ("Practitioner/dr2", "Location/room2")),
    ):
        schedule = {
            "resourceType": "Schedule",
            "id": sid,
            "actor": [{"reference": r} for r in actors],
        }
        assert put(client, schedule).status_code == 201
    rows = [
        ("a0", "a", 0, "consult", "routine", "card"),
        ("a1", "a", 15, "echo", "followup", "card"),
        ("b0", "b", 0, "consult", "walkin", "derm"),
        ("b1", "b", 15, "consult", "routine", "derm"),
    ]
    for sid, schedule, begin, service, visit, specialty in rows:
        found = {
            **slot(sid, begin=begin),
            "schedule": {"reference": f"Schedule/{schedule}"},
            "serviceType": coded("urn:svc", service),
            "appointmentType": coded(
                "http://terminology.hl7.org/CodeSystem/v2-0276", visit.upper()
            )[0],
            "specialty": coded("urn:spec", specialty),
        }
        assert put(client, found).status_code == 201


def find(client: TestClient, **params: Any) -> list[str]:
    r = client.get("/fhir/Appointment/$find", params={**WINDOW, **params})
    assert r.status_code == 200, r.text
    return [
        e["resource"]["slot"][0]["reference"].removeprefix("Slot/")
        for e in r.json().get("entry", [])
    ]


def test_service_type_narrows_and_is_carried_into_the_proposal(client):
    seed(client)
    assert find(client, **{"service-type": "urn:svc|echo"}) == ["a1"]
    assert sorted(find(client, **{"service-type": "urn:svc|consult"})) == ["a0", "b0", "b1"]
    r = client.get("/fhir/Appointment/$find", params={**WINDOW, "service-type": "urn:svc|echo"})
    (only,) = r.json()["entry"]
    assert only["resource"]["serviceType"] == coded("urn:svc", "echo")
    assert only["resource"]["specialty"] == coded("urn:spec", "card")


def test_visit_type_searches_the_slots_appointment_type(client):
    seed(client)
    v2 = "http://terminology.hl7.org/CodeSystem/v2-0276"
    assert find(client, **{"visit-type": f"{v2}|WALKIN"}) == ["b0"]
    assert sorted(find(client, **{"visit-type": "ROUTINE"})) == ["a0", "b1"]
    r = client.get("/fhir/Appointment/$find", params={**WINDOW, "visit-type": "FOLLOWUP"})
    assert r.json()["entry"][0]["resource"]["appointmentType"] == coded(v2, "FOLLOWUP")[0]


def test_parameters_combine_and_count_limits(client):
    seed(client)
    assert find(client, practitioner="dr2", **{"service-type": "urn:svc|consult"}) == ["b0", "b1"]
    assert find(client, location="room1", specialty="urn:spec|derm") == []
    assert find(client, specialty="urn:spec|derm", _count="1") == ["b0"]
    # earliest first across schedules
    assert [s[1] for s in find(client)] == ["0", "0", "1", "1"]


def test_start_is_inclusive_and_end_exclusive(client):
    seed(client)
    assert sorted(find(client, start="2030-03-04T09:15:00Z")) == ["a1", "b1"]
    assert sorted(find(client, end="2030-03-04T09:15:00Z")) == ["a0", "b0"]
    assert find(client, start="2030-03-05T09:00:00Z", end="2030-03-05T10:00:00Z") == []


def test_taken_and_held_slots_are_not_proposed(client):
    seed(client)
    booked = appointment(slot="a0", practitioner="dr")
    assert (
        client.post(
            "/fhir/Appointment", json=booked, headers={"Content-Type": FHIR_JSON}
        ).status_code
        == 201
    )
    held = appointment(slot="b1", practitioner="dr2", begin=15, status="pending")
    assert (
        client.post("/fhir/Appointment", json=held, headers={"Content-Type": FHIR_JSON}).status_code
        == 201
    )
    assert find(client) == ["b0", "a1"]


def test_post_takes_the_same_parameters_as_get(client):
    seed(client)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "start", "valueDateTime": WINDOW["start"]},
            {"name": "end", "valueDateTime": WINDOW["end"]},
            {"name": "service-type", "valueString": "urn:svc|consult"},
            {"name": "visit-type", "valueString": "ROUTINE"},
            {"name": "location-reference", "valueString": "Location/room2"},
            {"name": "_count", "valueInteger": 5},
        ],
    }
    r = client.post("/fhir/Appointment/$find", json=body, headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 200, r.text
    assert [e["resource"]["slot"][0]["reference"] for e in r.json()["entry"]] == ["Slot/b1"]


def test_practitioner_finds_the_schedules_of_their_roles(client):
    """A Schedule's actor may be a PractitionerRole (Schedule.actor: "Practitioner |
    PractitionerRole | ..."): asking for the practitioner finds it too."""
    role = {
        "resourceType": "PractitionerRole",
        "id": "cardio",
        "practitioner": {"reference": "Practitioner/dr3"},
    }
    assert put(client, role).status_code == 201
    schedule = {
        "resourceType": "Schedule",
        "id": "r",
        "actor": [{"reference": "PractitionerRole/cardio"}],
    }
    assert put(client, schedule).status_code == 201
    assert put(client, {**slot("r0"), "schedule": {"reference": "Schedule/r"}}).status_code == 201
    seed(client)
    assert find(client, practitioner="Practitioner/dr3") == ["r0"]
    assert sorted(find(client, practitioner=["dr3", "dr2"])) == ["b0", "b1", "r0"]
    assert "r0" not in find(client, practitioner="dr")
    r = client.get("/fhir/Appointment/$find", params={**WINDOW, "practitioner": "dr3"})
    (only,) = r.json()["entry"]
    assert only["resource"]["participant"][0]["actor"] == {"reference": "PractitionerRole/cardio"}


def test_too_many_schedules_is_400_not_a_partial_answer(settings):
    with app_client(settings, search_max_count=2) as client:
        for i in range(3):
            schedule = {
                "resourceType": "Schedule",
                "id": f"x{i}",
                "actor": [{"reference": "Practitioner/dr"}],
            }
            assert put(client, schedule).status_code == 201
        r = client.get("/fhir/Appointment/$find", params={**WINDOW, "practitioner": "dr"})
        issues = assert_outcome(r, 400)
        assert issues[0]["code"] == "too-costly" and expressions(issues) == ["practitioner"]
