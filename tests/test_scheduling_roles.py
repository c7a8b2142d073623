"""A PractitionerRole participant books its practitioner (issue 12, no double booking):
Appointment.participant.actor may name the practitioner (Practitioner) or one of
their roles (PractitionerRole: "a specific set of Roles/Locations/specialties/services
that a practitioner may perform"); the person is the same, so the time is the same.
The role is resolved inside the write's transaction (booking.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from fhir_helpers import FHIR_JSON, create, entry, post, post_bundle, put, urn
from scheduling_helpers import appointment
from test_scheduling_booking import refused_as_conflict

from fhir_server.testing import ServerProcess


def role(rid: str, practitioner: str | None, **extra: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"resourceType": "PractitionerRole", "id": rid, **extra}
    if practitioner:
        found["practitioner"] = {"reference": f"Practitioner/{practitioner}"}
    return found


def by_role(rid: str, patient: str = "pa", **kw: Any) -> dict[str, Any]:
    found = appointment(patient=patient, **kw)
    found["participant"].append(
        {"actor": {"reference": f"PractitionerRole/{rid}"}, "status": "accepted"}
    )
    return found


def test_a_role_and_its_practitioner_are_one_person(client):
    assert put(client, role("cardio", "dr")).status_code == 201
    create(client, by_role("cardio", begin=0, minutes=30))
    # the same person named directly, overlapping
    r = post(client, appointment(practitioner="dr", patient="pb", begin=15))
    refused_as_conflict(r, "Practitioner/dr")
    assert r.json()["issue"][0]["expression"] == ["Appointment.participant[1].actor"]
    # and the other way round
    create(client, appointment(practitioner="dr", patient="pb", begin=60))
    refused_as_conflict(post(client, by_role("cardio", patient="pc", begin=70)), "Practitioner/dr")


def test_two_roles_of_one_practitioner_collide(client):
    assert put(client, role("cardio", "dr")).status_code == 201
    assert put(client, role("echo", "dr")).status_code == 201
    create(client, by_role("cardio"))
    refused_as_conflict(post(client, by_role("echo", patient="pb")), "Practitioner/dr")


def test_roles_of_different_practitioners_do_not_collide(client):
    assert put(client, role("cardio", "dr")).status_code == 201
    assert put(client, role("derm", "dr2")).status_code == 201
    create(client, by_role("cardio"))
    create(client, by_role("derm", patient="pb"))


def test_naming_both_the_role_and_its_practitioner_is_one_booking(client):
    assert put(client, role("cardio", "dr")).status_code == 201
    both = by_role("cardio", practitioner="dr")
    create(client, both)
    refused_as_conflict(
        post(client, appointment(practitioner="dr", patient="pb")), "Practitioner/dr"
    )


def test_a_role_without_a_stored_practitioner_books_itself(client):
    """A role not stored here, or without a practitioner, keys as the role."""
    assert put(client, role("vacant", None)).status_code == 201
    create(client, by_role("vacant"))
    refused_as_conflict(post(client, by_role("vacant", patient="pb")), "PractitionerRole/vacant")
    create(client, by_role("elsewhere"))
    refused_as_conflict(
        post(client, by_role("elsewhere", patient="pb")), "PractitionerRole/elsewhere"
    )


def test_a_roles_location_is_not_a_booked_room(client):
    """PractitionerRole.location: "The location(s) at which this practitioner provides
    care" — where the person works, not the room of one visit."""
    assert (
        put(client, role("cardio", "dr", location=[{"reference": "Location/room1"}])).status_code
        == 201
    )
    create(client, by_role("cardio"))
    create(client, appointment(practitioner="dr2", room="room1", patient="pb"))


def test_a_role_created_in_the_same_transaction_is_resolved(client):
    create(client, appointment(practitioner="dr"))
    r = post_bundle(
        client,
        [
            entry("PUT", "PractitionerRole/new", role("new", "dr")),
            entry("POST", "Appointment", by_role("new", patient="pb"), urn()),
        ],
    )
    refused_as_conflict(r, "Practitioner/dr")


def test_concurrent_bookings_through_role_and_practitioner_book_once(mongo_url, database):
    """Two worker processes, 40 clients at once, half naming the role and half the
    practitioner, each on its own Slot and patient, all at the same time: only the
    database's unique key can let exactly one through."""
    with ServerProcess(mongo_url=mongo_url, database=database, workers=2) as server:
        headers = {"Content-Type": FHIR_JSON}
        with httpx.Client(base_url=server.base_url, timeout=60, headers=headers) as http:
            assert (
                http.put("/PractitionerRole/cardio", json=role("cardio", "dr")).status_code == 201
            )

            def book(n: int) -> int:
                if n % 2:
                    body = by_role("cardio", patient=f"p{n}", slot=f"s{n}")
                else:
                    body = appointment(practitioner="dr", patient=f"p{n}", slot=f"s{n}")
                return http.post("/Appointment", json=body).status_code

            with ThreadPoolExecutor(max_workers=40) as pool:
                statuses = list(pool.map(book, range(40)))
            assert sorted(statuses) == [201] + [409] * 39, statuses
            found = http.get("/Appointment", params={"_summary": "count"}).json()
            assert found["total"] == 1
