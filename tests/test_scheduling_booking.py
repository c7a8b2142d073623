"""No double booking (issue 12): an active Appointment (not cancelled, noshow or
entered-in-error) may not share a Slot with another, nor overlap another active
appointment of the same practitioner or room, whatever path writes it. Each test is the
attempt, through HTTP; the guarantee is a unique key written in the write's own
transaction (fhir_server/workflows/scheduling/booking.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fhir_helpers import (
    assert_outcome,
    binary_patch,
    bundle_response,
    create,
    diagnostics,
    entry,
    expressions,
    patch,
    post,
    post_bundle,
    put,
    urn,
)
from scheduling_helpers import appointment


def refused_as_conflict(r: Any, names: str) -> None:
    issues = assert_outcome(r, 409)
    assert issues[0]["code"] == "conflict", issues
    assert names in diagnostics(issues), issues


def test_post_second_appointment_on_a_taken_slot_is_409_naming_the_slot(client):
    create(client, appointment(slot="s1", patient="pa"))
    r = post(client, appointment(slot="s1", patient="pb", begin=60))
    refused_as_conflict(r, "Slot/s1")
    assert expressions(r.json()["issue"]) == ["Appointment.slot[0]"]


def test_put_moving_an_appointment_onto_a_taken_slot_is_409(client):
    create(client, appointment(slot="s1"))
    other = create(client, appointment(slot="s2", patient="pb"))
    r = put(client, {**other, "slot": [{"reference": "Slot/s1"}]})
    refused_as_conflict(r, "Slot/s1")


def test_put_update_as_create_on_a_taken_slot_is_409(client):
    create(client, appointment(slot="s1"))
    r = put(client, {**appointment(slot="s1", patient="pb"), "id": "chosen"})
    refused_as_conflict(r, "Slot/s1")
    assert client.get("/fhir/Appointment/chosen").status_code == 404


def test_patch_onto_a_taken_slot_is_409(client):
    create(client, appointment(slot="s1"))
    other = create(client, appointment(slot="s2", patient="pb"))
    ops = [{"op": "replace", "path": "/slot/0/reference", "value": "Slot/s1"}]
    r = patch(client, f"/fhir/Appointment/{other['id']}", ops)
    refused_as_conflict(r, "Slot/s1")


def test_overlapping_appointments_of_one_practitioner_are_409(client):
    create(client, appointment(practitioner="dr", begin=0, minutes=30))
    # no slot in common; 09:20-09:35 overlaps 09:00-09:30 for Practitioner/dr
    r = post(client, appointment(practitioner="dr", patient="pb", begin=20))
    refused_as_conflict(r, "Practitioner/dr")
    # back to back is not an overlap: [start, end) intervals
    create(client, appointment(practitioner="dr", patient="pb", begin=30))


def test_overlapping_appointments_in_one_room_are_409(client):
    create(client, appointment(practitioner="dr1", room="room1", begin=0, minutes=30))
    r = post(client, appointment(practitioner="dr2", room="room1", patient="pb", begin=10))
    refused_as_conflict(r, "Location/room1")
    create(client, appointment(practitioner="dr2", room="room2", patient="pb", begin=10))


def test_transaction_booking_a_taken_slot_is_409_and_writes_nothing(client):
    create(client, appointment(slot="s1"))
    r = post_bundle(
        client,
        [
            entry("POST", "Patient", {"resourceType": "Patient"}, urn()),
            entry("POST", "Appointment", appointment(slot="s1", patient="pb"), urn()),
        ],
    )
    refused_as_conflict(r, "Slot/s1")
    assert client.get("/fhir/Patient").json().get("total", 0) == 0


def test_transaction_with_two_appointments_on_one_slot_is_409(client):
    r = post_bundle(
        client,
        [
            entry("POST", "Appointment", appointment(slot="s1"), urn()),
            entry("POST", "Appointment", appointment(slot="s1", patient="pb"), urn()),
        ],
    )
    refused_as_conflict(r, "Slot/s1")


def test_transaction_patch_onto_a_taken_slot_is_409(client):
    create(client, appointment(slot="s1"))
    other = create(client, appointment(slot="s2", patient="pb"))
    ops = [{"op": "replace", "path": "/slot/0/reference", "value": "Slot/s1"}]
    r = post_bundle(client, [entry("PATCH", f"Appointment/{other['id']}", binary_patch(ops))])
    refused_as_conflict(r, "Slot/s1")


def test_batch_entry_on_a_taken_slot_fails_alone(client):
    create(client, appointment(slot="s1"))
    r = post_bundle(
        client,
        [
            entry("POST", "Appointment", appointment(slot="s1", patient="pb")),
            entry("POST", "Appointment", appointment(slot="s2", patient="pb")),
        ],
        kind="batch",
    )
    first, second = bundle_response(r, "batch-response")
    assert first["response"]["status"].startswith("409"), first
    assert "Slot/s1" in diagnostics(first["response"]["outcome"]["issue"])
    assert second["response"]["status"].startswith("201"), second


def test_fifty_concurrent_creates_on_one_slot_book_it_once(client):
    def book(n: int) -> int:
        return post(client, appointment(slot="hot", patient=f"p{n}")).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(book, range(50)))
    assert sorted(statuses) == [201] + [409] * 49, statuses
    found = client.get("/fhir/Appointment", params={"slot": "Slot/hot"}).json()
    assert found["total"] == 1


def test_cancelling_frees_the_slot_and_the_practitioner(client):
    first = create(client, appointment(slot="s1", practitioner="dr"))
    cancelled = put(client, {**first, "status": "cancelled"})
    assert cancelled.status_code == 200, cancelled.text
    create(client, appointment(slot="s1", practitioner="dr", patient="pb"))
    # editing the cancelled one does not take its slot back
    edited = put(client, {**cancelled.json(), "comment": "patient called"})
    assert edited.status_code == 200, edited.text


def test_deleting_frees_the_slot(client):
    first = create(client, appointment(slot="s1"))
    assert client.delete(f"/fhir/Appointment/{first['id']}").status_code in (200, 204)
    create(client, appointment(slot="s1", patient="pb"))


def test_noshow_and_entered_in_error_hold_nothing(client):
    for status in ("noshow", "entered-in-error", "cancelled"):
        create(client, appointment(slot="s1", practitioner="dr", status=status))
    create(client, appointment(slot="s1", practitioner="dr"))


def test_rewriting_an_appointment_keeps_its_own_slot(client):
    first = create(client, appointment(slot="s1", practitioner="dr"))
    r = put(client, {**first, "comment": "bring the referral"})
    assert r.status_code == 200, r.text


def test_batch_patch_and_put_onto_a_taken_slot_fail_alone(client):
    create(client, appointment(slot="s1"))
    other = create(client, appointment(slot="s2", patient="pb"))
    ops = [{"op": "replace", "path": "/slot/0/reference", "value": "Slot/s1"}]
    r = post_bundle(
        client,
        [
            entry("PATCH", f"Appointment/{other['id']}", binary_patch(ops)),
            entry(
                "PUT", f"Appointment/{other['id']}", {**other, "slot": [{"reference": "Slot/s1"}]}
            ),
            entry("POST", "Appointment", appointment(slot="s3", patient="pc")),
        ],
        kind="batch",
    )
    patched, replaced, created = bundle_response(r, "batch-response")
    for refused in (patched, replaced):
        assert refused["response"]["status"].startswith("409"), refused
        assert "Slot/s1" in diagnostics(refused["response"]["outcome"]["issue"])
    assert created["response"]["status"].startswith("201"), created
    assert client.get(f"/fhir/Appointment/{other['id']}").json()["slot"] == [
        {"reference": "Slot/s2"}
    ]
