"""``Appointment/$hold`` and ``$book`` (issue 12, Argonaut Scheduling R4 form), the
Slot status that follows the appointments on it, and hold expiry enforced at booking
time: an expired hold never blocks anyone."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, app_client, assert_outcome, diagnostics, expressions, put
from scheduling_helpers import appointment, seed_slots, slot, smart


def operation(client: TestClient, name: str, resource: Any, **headers: str) -> Any:
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment", "resource": resource}],
    }
    return client.post(
        f"/fhir/Appointment/${name}", json=body, headers={"Content-Type": FHIR_JSON, **headers}
    )


def booked(r: Any, status: int = 201) -> dict[str, Any]:
    assert r.status_code == status, r.text
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    (only,) = bundle["entry"]
    return only["resource"]  # type: ignore[no-any-return]


def slot_status(client: TestClient, sid: str) -> str:
    return client.get(f"/fhir/Slot/{sid}").json()["status"]  # type: ignore[no-any-return]


def proposed(sid: str, patient: str = "pa") -> dict[str, Any]:
    return appointment(slot=sid, practitioner="dr", patient=patient, status="proposed")


def test_hold_then_book_marks_the_slot_and_logs_both(client):
    seed_slots(client, "s1")
    held = booked(operation(client, "hold", proposed("s1")))
    assert held["status"] == "pending"
    assert slot_status(client, "s1") == "busy-tentative"
    done = booked(operation(client, "book", held), 200)
    assert done["status"] == "booked" and done["id"] == held["id"]
    assert slot_status(client, "s1") == "busy"
    log = client.get("/fhir/Provenance", params={"target": f"Appointment/{held['id']}"}).json()
    assert [e["resource"]["activity"]["text"] for e in log["entry"]] == ["hold", "confirm"]


def test_a_held_slot_cannot_be_booked_by_another(client):
    seed_slots(client, "s1")
    booked(operation(client, "hold", proposed("s1")))
    r = operation(client, "book", proposed("s1", patient="pb"))
    issues = assert_outcome(r, 409)
    assert issues[0]["code"] == "conflict" and "Slot/s1" in diagnostics(issues)


def test_book_onto_another_slot_reschedules_and_frees_the_old_one(client):
    seed_slots(client, "s1", "s2")
    first = booked(operation(client, "book", proposed("s1")))
    moved = {
        **first,
        "slot": [{"reference": "Slot/s2"}],
        "start": "2030-03-04T09:15:00Z",
        "end": "2030-03-04T09:30:00Z",
    }
    booked(operation(client, "book", moved), 200)
    assert (slot_status(client, "s1"), slot_status(client, "s2")) == ("free", "busy")
    booked(operation(client, "book", proposed("s1", patient="pb")))


def test_cancelling_frees_the_slot_resource(client):
    seed_slots(client, "s1")
    made = booked(operation(client, "book", proposed("s1")))
    assert put(client, {**made, "status": "cancelled"}).status_code == 200
    assert slot_status(client, "s1") == "free"


def test_fifty_concurrent_books_on_one_slot(client):
    seed_slots(client, "hot")

    def attempt(n: int) -> int:
        return operation(client, "book", proposed("hot", patient=f"p{n}")).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(attempt, range(50)))
    assert sorted(statuses) == [201] + [409] * 49, statuses
    assert slot_status(client, "hot") == "busy"


def test_an_expired_hold_gives_way_at_booking_time(settings):
    with app_client(settings, appointment_hold=timedelta(seconds=1)) as client:
        seed_slots(client, "s1")
        held = booked(operation(client, "hold", proposed("s1")))
        assert_outcome(operation(client, "book", proposed("s1", patient="pb")), 409)
        time.sleep(1.2)
        done = booked(operation(client, "book", proposed("s1", patient="pb")))
        assert done["status"] == "booked"
        assert slot_status(client, "s1") == "busy"
        # the expired hold was cancelled in the same transaction, by the server
        hold = client.get(f"/fhir/Appointment/{held['id']}").json()
        assert hold["status"] == "cancelled"
        assert hold["cancelationReason"] == {"text": "hold expired"}
        log = client.get("/fhir/Provenance", params={"target": f"Appointment/{held['id']}"})
        last = log.json()["entry"][-1]["resource"]
        assert (last["activity"]["text"], last["agent"][0]["who"]) == (
            "cancel",
            {"display": "fhir-server"},
        )


def test_editing_a_hold_does_not_extend_it(settings):
    with app_client(settings, appointment_hold=timedelta(seconds=1)) as client:
        held = booked(operation(client, "hold", proposed("s1")))
        time.sleep(0.6)
        assert put(client, {**held, "comment": "still deciding"}).status_code == 200
        time.sleep(0.6)
        booked(operation(client, "book", proposed("s1", patient="pb")))


def test_book_without_an_appointment_is_400(client):
    r = client.post(
        "/fhir/Appointment/$book",
        json={"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": "y"}]},
        headers={"Content-Type": FHIR_JSON},
    )
    assert expressions(assert_outcome(r, 400)) == ["Parameters.parameter"]
    r = operation(client, "book", {"resourceType": "Patient"})
    assert expressions(assert_outcome(r, 400)) == ["Parameters.parameter[0].resource"]


def test_book_of_an_unknown_id_is_404(client):
    assert_outcome(operation(client, "book", {**proposed("s1"), "id": "nope"}), 404)


def test_a_patient_app_books_only_for_its_own_patient(mongo_url):
    with smart(mongo_url) as (client, mint):
        admin = mint.headers("system/*.cruds")
        assert put(client, slot("s1"), **admin).status_code == 201
        assert put(client, slot("s2", begin=15), **admin).status_code == 201
        app = mint.headers("patient/Appointment.cruds patient/Slot.rs", patient="pa")
        r = operation(client, "book", proposed("s1", patient="pb"), **app)
        assert_outcome(r, 403)
        assert client.get("/fhir/Slot/s1", headers=admin).json()["status"] == "free"
        mine = booked(operation(client, "book", proposed("s1", patient="pa"), **app))
        # another patient's booking of the same slot: 409 naming the slot, not the holder
        other = mint.headers("patient/Appointment.cruds", patient="pb")
        issues = assert_outcome(
            operation(client, "book", proposed("s1", patient="pb"), **other), 409
        )
        assert mine["id"] not in diagnostics(issues)
        # the patient sees the slots' status, but not the other patient's appointments
        assert client.get("/fhir/Slot/s1", headers=app).json()["status"] == "busy"
        later = appointment(slot="s2", patient="pb", begin=15, status="proposed")
        theirs = booked(operation(client, "book", later, **other))
        assert client.get(f"/fhir/Appointment/{theirs['id']}", headers=app).status_code == 404


def cancel(client: TestClient, aid: str, reason: Any = None, **headers: str) -> Any:
    params = [] if reason is None else [{"name": "reason", **reason}]
    body = {"resourceType": "Parameters", "parameter": params}
    return client.post(
        f"/fhir/Appointment/{aid}/$cancel",
        json=body,
        headers={"Content-Type": FHIR_JSON, **headers},
    )


def test_cancel_with_a_reason_frees_the_slot_and_logs_the_reason(client):
    seed_slots(client, "s1")
    made = booked(operation(client, "book", proposed("s1")))
    r = cancel(client, made["id"], {"valueString": "patient is travelling"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["cancelationReason"] == {"text": "patient is travelling"}
    assert slot_status(client, "s1") == "free"
    log = client.get("/fhir/Provenance", params={"target": f"Appointment/{made['id']}"}).json()
    last = log["entry"][-1]["resource"]
    assert last["activity"]["text"] == "cancel"
    assert last["reason"] == [{"text": "patient is travelling"}]
    booked(operation(client, "book", proposed("s1", patient="pb")))


def test_cancel_of_a_fulfilled_appointment_is_422(client):
    made = booked(operation(client, "book", proposed("s1")))
    assert put(client, {**made, "status": "fulfilled"}).status_code == 200
    issues = assert_outcome(cancel(client, made["id"]), 422)
    assert issues[0]["code"] == "business-rule"


def test_cancel_errors(client):
    assert_outcome(cancel(client, "nope"), 404)
    made = booked(operation(client, "book", proposed("s1")))
    r = cancel(client, made["id"], {"valueInteger": 3})
    assert expressions(assert_outcome(r, 400)) == ["Parameters.parameter[0].value[x]"]


def test_a_patient_cannot_cancel_late_through_the_operation(mongo_url):
    with smart(mongo_url) as (client, mint):
        admin = mint.headers("system/*.cruds")
        soon = datetime.now(UTC) + timedelta(hours=2)
        late = appointment(slot="s1", patient="pa", status="proposed")
        late["start"] = soon.strftime("%Y-%m-%dT%H:%M:%SZ")
        late["end"] = (soon + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ")
        made = booked(operation(client, "book", late, **admin))
        app = mint.headers("patient/Appointment.cruds", patient="pa")
        issues = assert_outcome(cancel(client, made["id"], **app), 422)
        assert expressions(issues) == ["Appointment.start"]
        staff = mint.headers("user/Appointment.cruds", fhir_user="Practitioner/dr")
        assert cancel(client, made["id"], **staff).status_code == 200


def test_the_capability_statement_declares_the_operations(client):
    found = client.get("/fhir/metadata").json()
    (appointment,) = [r for r in found["rest"][0]["resource"] if r["type"] == "Appointment"]
    assert [op["name"] for op in appointment["operation"]] == ["find", "hold", "book", "cancel"]


# --- $find ------------------------------------------------------------------------------


def seed_schedules(client: TestClient) -> None:
    """dr in room1 (cardiology) and dr2 in room2; four 15-minute slots each from START."""
    for sid, doctor, room, specialty in (
        ("sch1", "dr", "room1", "card"),
        ("sch2", "dr2", "room2", "derm"),
    ):
        schedule = {
            "resourceType": "Schedule",
            "id": sid,
            "actor": [{"reference": f"Practitioner/{doctor}"}, {"reference": f"Location/{room}"}],
            "specialty": [{"coding": [{"system": "urn:spec", "code": specialty}]}],
        }
        assert put(client, schedule).status_code == 201
        for i in range(4):
            found = {
                **slot(f"{sid}-{i}", begin=15 * i),
                "schedule": {"reference": f"Schedule/{sid}"},
            }
            found["specialty"] = schedule["specialty"]
            assert put(client, found).status_code == 201


def proposals(r: Any) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "searchset"
    return [e["resource"] for e in bundle.get("entry", [])]


WINDOW = {"start": "2030-03-04T09:00:00Z", "end": "2030-03-04T10:00:00Z"}


def test_find_proposes_free_slots_of_a_practitioner_earliest_first(client):
    seed_schedules(client)
    found = proposals(
        client.get("/fhir/Appointment/$find", params={**WINDOW, "practitioner": "dr"})
    )
    assert [p["slot"] for p in found] == [[{"reference": f"Slot/sch1-{i}"}] for i in range(4)]
    first = found[0]
    assert first["status"] == "proposed" and first["start"] == "2030-03-04T09:00:00Z"
    assert [p["actor"]["reference"] for p in first["participant"]] == [
        "Practitioner/dr",
        "Location/room1",
    ]
    # booking a proposal takes the slot out of the next $find
    booked(
        operation(
            client,
            "book",
            {
                **first,
                "participant": [
                    *first["participant"],
                    {"actor": {"reference": "Patient/pa"}, "status": "accepted"},
                ],
            },
        )
    )
    again = proposals(
        client.get("/fhir/Appointment/$find", params={**WINDOW, "practitioner": "dr"})
    )
    assert [p["slot"][0]["reference"] for p in again] == [f"Slot/sch1-{i}" for i in (1, 2, 3)]


def test_find_by_location_specialty_window_and_count(client):
    seed_schedules(client)
    by_room = proposals(
        client.get("/fhir/Appointment/$find", params={**WINDOW, "location": "Location/room2"})
    )
    assert {p["slot"][0]["reference"] for p in by_room} == {f"Slot/sch2-{i}" for i in range(4)}
    by_specialty = proposals(
        client.get("/fhir/Appointment/$find", params={**WINDOW, "specialty": "urn:spec|card"})
    )
    assert {p["slot"][0]["reference"] for p in by_specialty} == {f"Slot/sch1-{i}" for i in range(4)}
    narrow = {"start": "2030-03-04T09:15:00Z", "end": "2030-03-04T09:45:00Z"}
    both = proposals(client.get("/fhir/Appointment/$find", params=narrow))
    assert (
        sorted(p["start"] for p in both)
        == ["2030-03-04T09:15:00Z"] * 2 + ["2030-03-04T09:30:00Z"] * 2
    )
    counted = proposals(client.get("/fhir/Appointment/$find", params={**WINDOW, "_count": "3"}))
    assert len(counted) == 3
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "start", "valueDateTime": WINDOW["start"]},
            {"name": "end", "valueDateTime": WINDOW["end"]},
            {"name": "practitioner", "valueString": "dr2"},
        ],
    }
    posted = proposals(
        client.post("/fhir/Appointment/$find", json=body, headers={"Content-Type": FHIR_JSON})
    )
    assert len(posted) == 4 and all(
        p["slot"][0]["reference"].startswith("Slot/sch2") for p in posted
    )


def test_find_errors(client):
    r = client.get("/fhir/Appointment/$find", params={"start": WINDOW["start"]})
    assert expressions(assert_outcome(r, 400)) == ["end"]
    r = client.get("/fhir/Appointment/$find", params={**WINDOW, "colour": "blue"})
    assert expressions(assert_outcome(r, 400)) == ["colour"]


def test_a_patient_booking_over_an_expired_hold_close_to_its_start(mongo_url):
    # the hold's cancellation is the server's doing: the patient's minimum notice does
    # not apply to it (it would refuse the booking with 422 otherwise)
    with smart(mongo_url, appointment_hold=timedelta(seconds=1)) as (client, mint):
        admin = mint.headers("system/*.cruds")
        soon = datetime.now(UTC) + timedelta(hours=2)

        def near(patient: str) -> dict[str, Any]:
            found = appointment(slot="s1", patient=patient, status="proposed")
            found["start"] = soon.strftime("%Y-%m-%dT%H:%M:%SZ")
            found["end"] = (soon + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ")
            return found

        held = booked(operation(client, "hold", near("pb"), **admin))
        time.sleep(1.2)
        app = mint.headers("patient/Appointment.cruds", patient="pa")
        booked(operation(client, "book", near("pa"), **app))
        after = client.get(f"/fhir/Appointment/{held['id']}", headers=admin).json()
        assert after["status"] == "cancelled"


def test_the_sweep_cancels_an_expired_hold_nobody_displaced(settings):
    with app_client(
        settings, appointment_hold=timedelta(seconds=1), appointment_hold_sweep=0.2
    ) as client:
        seed_slots(client, "s1")
        held = booked(operation(client, "hold", proposed("s1")))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = client.get(f"/fhir/Appointment/{held['id']}").json()
            if found["status"] != "pending":
                break
            time.sleep(0.2)
        assert found["status"] == "cancelled"
        assert found["cancelationReason"] == {"text": "hold expired"}
        assert slot_status(client, "s1") == "free"
