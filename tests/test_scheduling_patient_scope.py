"""Patient apps and scheduling (issue 12): under SMART ``patient/`` scopes an app finds,
holds, books and cancels only for its own patient; it sees free slots, never another
patient's appointments (not even through the operations' side doors: an ``appt-id``, an
existing id sent to $book, a $cancel, the action log). SMART App Launch, scopes and
launch context: "patient/ ... the specific patient in context"."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, assert_outcome, expressions, put
from scheduling_helpers import appointment, slot, smart
from smart_helpers import TokenMint

APP = "patient/Appointment.cruds patient/Slot.rs patient/Schedule.rs patient/Provenance.rs"
WINDOW = {"start": "2030-03-04T09:00:00Z", "end": "2030-03-04T10:00:00Z"}


@pytest.fixture
def world(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint]]:
    with smart(mongo_url) as (client, mint):
        admin = mint.headers("system/*.cruds")
        schedule = {
            "resourceType": "Schedule",
            "id": "sch",
            "actor": [{"reference": "Practitioner/dr"}],
        }
        assert put(client, schedule, **admin).status_code == 201
        for i in range(4):
            found = {**slot(f"s{i}", begin=15 * i), "schedule": {"reference": "Schedule/sch"}}
            assert put(client, found, **admin).status_code == 201
        yield client, mint


def call(client: TestClient, path: str, params: list[dict[str, Any]], **headers: str) -> Any:
    body = {"resourceType": "Parameters", "parameter": params}
    return client.post(
        f"/fhir/Appointment/{path}", json=body, headers={"Content-Type": FHIR_JSON, **headers}
    )


def book(client: TestClient, sid: str, patient: str, **headers: str) -> Any:
    found = appointment(slot=sid, patient=patient, practitioner="dr", status="proposed")
    found["start"], found["end"] = (
        slot(sid, begin=15 * int(sid[1:]))["start"],
        slot(sid, begin=15 * int(sid[1:]))["end"],
    )
    return call(client, "$book", [{"name": "appointment", "resource": found}], **headers)


def made(r: Any) -> dict[str, Any]:
    assert r.status_code == 201, r.text
    return r.json()["entry"][0]["resource"]  # type: ignore[no-any-return]


def test_a_patient_finds_free_slots_but_not_whose_they_are(world):
    client, mint = world
    pa = mint.headers(APP, patient="pa")
    pb = mint.headers(APP, patient="pb")
    theirs = made(book(client, "s0", "pb", **pb))
    # (practitioner: roles are looked up too, without needing a PractitionerRole scope)
    r = client.get("/fhir/Appointment/$find", params={**WINDOW, "practitioner": "dr"}, headers=pa)
    assert r.status_code == 200, r.text
    proposals = [e["resource"] for e in r.json()["entry"]]
    assert [p["slot"][0]["reference"] for p in proposals] == ["Slot/s1", "Slot/s2", "Slot/s3"]
    assert all(e["search"]["mode"] == "match" for e in r.json()["entry"])
    # a proposal names the Schedule's actors, though the patient may not read Schedules
    # outside its compartment: booking it books the practitioner
    assert {p["participant"][0]["actor"]["reference"] for p in proposals} == {"Practitioner/dr"}
    assert "Patient/pb" not in r.text and theirs["id"] not in r.text
    # the taken slot shows as busy, the appointment on it stays hidden
    assert client.get("/fhir/Slot/s0", headers=pa).json()["status"] == "busy"
    assert client.get(f"/fhir/Appointment/{theirs['id']}", headers=pa).status_code == 404
    listed = client.get("/fhir/Appointment", headers=pa).json()
    assert listed.get("total", 0) == 0 and not listed.get("entry")
    log = client.get(
        "/fhir/Provenance", params={"target": f"Appointment/{theirs['id']}"}, headers=pa
    )
    assert log.status_code in (200, 403)
    assert not (log.json().get("entry") if log.status_code == 200 else None)


def test_a_patient_holds_and_books_only_for_themselves(world):
    client, mint = world
    pa = mint.headers(APP, patient="pa")
    held = call(
        client,
        "$hold",
        [{"name": "appointment", "resource": appointment(slot="s1", patient="pb")}],
        **pa,
    )
    assert_outcome(held, 403)
    assert_outcome(book(client, "s1", "pb", **pa), 403)
    mine = made(book(client, "s1", "pa", **pa))
    assert mine["participant"][0]["actor"] == {"reference": "Patient/pa"}


def test_a_patient_cannot_take_over_another_patients_appointment(world):
    """Rebooking another patient's appointment id under one's own name, by $book with
    the id, by appt-id, by PUT or by $cancel: each refused, the appointment unchanged."""
    client, mint = world
    admin = mint.headers("system/*.cruds")
    pa = mint.headers(APP, patient="pa")
    theirs = made(book(client, "s2", "pb", **mint.headers(APP, patient="pb")))
    stolen = {
        **theirs,
        "participant": [
            {"actor": {"reference": "Patient/pa"}, "status": "accepted"},
            *theirs["participant"][1:],
        ],
    }
    r = call(client, "$book", [{"name": "appointment", "resource": stolen}], **pa)
    assert_outcome(r, 404)
    r = call(
        client, "$book", [{"name": "appt-id", "valueUri": f"Appointment/{theirs['id']}"}], **pa
    )
    assert_outcome(r, 404)
    r = call(
        client, "$hold", [{"name": "appt-id", "valueUri": f"Appointment/{theirs['id']}"}], **pa
    )
    assert_outcome(r, 404)
    r = client.put(
        f"/fhir/Appointment/{theirs['id']}",
        json=stolen,
        headers={"Content-Type": FHIR_JSON, **pa},
    )
    # an id outside the token's reach looks like an unknown one (update-as-create is
    # not offered to a compartment-limited token: 405, whether it exists or not)
    assert_outcome(r, 405)
    r = call(client, f"{theirs['id']}/$cancel", [{"name": "reason", "valueString": "x"}], **pa)
    assert_outcome(r, 404)
    now = client.get(f"/fhir/Appointment/{theirs['id']}", headers=admin).json()
    assert now["meta"]["versionId"] == theirs["meta"]["versionId"]
    assert now["status"] == "booked"
    assert now["participant"][0]["actor"] == {"reference": "Patient/pb"}


def test_a_patient_cancels_their_own_appointment(world):
    client, mint = world
    pa = mint.headers(APP, patient="pa")
    mine = made(book(client, "s3", "pa", **pa))
    r = call(client, f"{mine['id']}/$cancel", [{"name": "reason", "valueString": "travel"}], **pa)
    assert r.status_code == 200, r.text
    assert client.get("/fhir/Slot/s3", headers=pa).json()["status"] == "free"
    # the cancelled one stays cancelled (transition table); a new booking takes the slot
    made(book(client, "s3", "pa", **pa))


def test_operations_need_the_scopes_they_use(world):
    client, mint = world
    read_only = mint.headers("patient/Appointment.rs patient/Slot.rs", patient="pa")
    assert_outcome(book(client, "s1", "pa", **read_only), 403)
    no_slots = mint.headers("patient/Appointment.cruds", patient="pa")
    r = client.get("/fhir/Appointment/$find", params=WINDOW, headers=no_slots)
    assert_outcome(r, 403)
    assert_outcome(client.get("/fhir/Appointment/$find", params=WINDOW), 401)


def test_a_patient_cannot_reschedule_through_book_within_the_notice(world):
    """The minimum notice holds on $book too: moving an appointment that starts in 2 h
    onto another slot is a change of it (422 business-rule); staff may."""
    client, mint = world
    admin = mint.headers("system/*.cruds")
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    times = [(soon + timedelta(minutes=15 * i)).strftime("%Y-%m-%dT%H:%M:%SZ") for i in range(3)]
    for i in range(2):
        near = {**slot(f"n{i}"), "start": times[i], "end": times[i + 1]}
        assert put(client, near, **admin).status_code == 201
    first = appointment(slot="n0", patient="pa", status="proposed")
    first["start"], first["end"] = times[0], times[1]
    mine = made(call(client, "$book", [{"name": "appointment", "resource": first}], **admin))
    moved = {**mine, "slot": [{"reference": "Slot/n1"}], "start": times[1], "end": times[2]}
    pa = mint.headers(APP, patient="pa")
    r = call(client, "$book", [{"name": "appointment", "resource": moved}], **pa)
    issues = assert_outcome(r, 422)
    assert issues[0]["code"] == "business-rule" and expressions(issues) == ["Appointment.start"]
    assert client.get("/fhir/Slot/n0", headers=admin).json()["status"] == "busy"
    staff = mint.headers("user/Appointment.cruds", fhir_user="Practitioner/dr")
    r = call(client, "$book", [{"name": "appointment", "resource": moved}], **staff)
    assert r.status_code == 200, r.text
    assert client.get("/fhir/Slot/n0", headers=admin).json()["status"] == "free"
