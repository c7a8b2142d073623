"""Only holds expire (issue 12). A hold is an Appointment written by ``$hold``, or any
``pending`` Appointment carrying the tag ``urn:fhir-server:appointment-hold|hold``
(the clinics' TemporaryReservation). A plain ``pending`` appointment is a real one
awaiting confirmation — R4 Appointment.status: "pending | Some or all of the
participant(s) have not finalized their acceptance of the appointment request" — and
keeps its slot like ``booked``: neither the sweep nor a later booking displaces it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, app_client, assert_outcome, create, put
from pymongo import MongoClient
from scheduling_helpers import appointment, seed_slots
from test_scheduling_operations import booked, operation, slot_status

from fhir_server.config import Settings

HOLD_TAG = {"system": "urn:fhir-server:appointment-hold", "code": "hold"}


def tags(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t.get("system"), t.get("code")) for t in resource.get("meta", {}).get("tag", [])]


def is_tagged(resource: dict[str, Any]) -> bool:
    return (HOLD_TAG["system"], HOLD_TAG["code"]) in tags(resource)


def begin(sid: str) -> int:
    """Minutes after the first slot at which seed_slots puts ``s1``, ``s2``..."""
    return 15 * (int(sid[1:]) - 1)


def pending(sid: str, patient: str = "pa", **extra: Any) -> dict[str, Any]:
    """A pending appointment as a partner EHR sends it: the patient still to accept."""
    found = appointment(
        slot=sid, practitioner="dr", patient=patient, begin=begin(sid), status="pending", **extra
    )
    found["participant"][0]["status"] = "needs-action"
    return found


def proposal(sid: str, patient: str = "pb") -> dict[str, Any]:
    return appointment(
        slot=sid, practitioner="dr", patient=patient, begin=begin(sid), status="proposed"
    )


@contextmanager
def short_holds(settings: Settings, sweep: float = 3600.0) -> Iterator[TestClient]:
    """Holds of 1 s; the sweep every ``sweep`` seconds (never, by default)."""
    with app_client(
        settings, appointment_hold=timedelta(seconds=1), appointment_hold_sweep=sweep
    ) as client:
        yield client


def read(client: TestClient, aid: str) -> dict[str, Any]:
    r = client.get(f"/fhir/Appointment/{aid}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_until(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_hold_is_tagged_and_book_clears_the_tag(settings):
    with short_holds(settings, sweep=0.2) as client:
        seed_slots(client, "s1")
        held = booked(operation(client, "hold", proposal("s1")))
        assert held["status"] == "pending" and is_tagged(held)
        done = booked(operation(client, "book", held), 200)
        assert done["status"] == "booked" and not is_tagged(done)
        assert "tag" not in done["meta"]  # no empty tag list left behind
        # booked now: it no longer expires, the sweep leaves it, nobody displaces it
        time.sleep(1.6)
        assert_outcome(operation(client, "book", proposal("s1", patient="pc")), 409)
        assert read(client, done["id"])["status"] == "booked"
        assert slot_status(client, "s1") == "busy"


def test_book_keeps_other_tags(client):
    seed_slots(client, "s1")
    other = {"system": "urn:example:tags", "code": "vip"}
    given = {**proposal("s1"), "meta": {"tag": [other, HOLD_TAG]}}
    held = booked(operation(client, "hold", given))
    assert tags(held) == [(other["system"], "vip"), (HOLD_TAG["system"], "hold")]
    done = booked(operation(client, "book", held), 200)
    assert tags(done) == [(other["system"], "vip")]


def test_a_plain_pending_appointment_is_neither_swept_nor_displaced(settings):
    with short_holds(settings, sweep=0.2) as client:
        seed_slots(client, "s1", "s2")
        kept = create(client, pending("s1"))
        assert not is_tagged(kept)
        # a real hold next to it, as the witness that the sweep ran
        held = booked(operation(client, "hold", proposal("s2")))
        wait_until(lambda: read(client, held["id"])["status"] == "cancelled")
        time.sleep(0.5)  # another sweep or two
        assert read(client, kept["id"])["status"] == "pending"
        assert slot_status(client, "s1") == "busy-tentative"
        # long past the hold time it still holds its slot and its practitioner
        r = operation(client, "book", proposal("s1"))
        assert assert_outcome(r, 409)[0]["code"] == "conflict"
        assert read(client, kept["id"])["status"] == "pending"
        # and it is confirmed like any other: booked, slot busy
        done = booked(operation(client, "book", read(client, kept["id"])), 200)
        assert done["status"] == "booked"
        assert slot_status(client, "s1") == "busy"


def test_a_rest_appointment_with_the_tag_is_a_hold(settings):
    with short_holds(settings) as client:
        seed_slots(client, "s1")
        tagged = create(client, pending("s1", meta={"tag": [HOLD_TAG]}))
        assert is_tagged(tagged)
        assert_outcome(operation(client, "book", proposal("s1")), 409)
        time.sleep(1.2)
        taken = booked(operation(client, "book", proposal("s1")))
        assert taken["status"] == "booked"
        gone = read(client, tagged["id"])
        assert gone["status"] == "cancelled"
        assert gone["cancelationReason"] == {"text": "hold expired"}


def test_the_sweep_cancels_a_rest_tagged_hold(settings):
    with short_holds(settings, sweep=0.2) as client:
        seed_slots(client, "s1")
        tagged = create(client, pending("s1", meta={"tag": [HOLD_TAG]}))
        wait_until(lambda: read(client, tagged["id"])["status"] == "cancelled")
        assert slot_status(client, "s1") == "free"


def test_the_tag_on_another_status_means_nothing(settings):
    with short_holds(settings, sweep=0.2) as client:
        seed_slots(client, "s1")
        made = create(client, {**proposal("s1", patient="pa"), "status": "booked"})
        assert put(client, {**made, "meta": {"tag": [HOLD_TAG]}}).status_code == 200
        time.sleep(1.6)
        assert read(client, made["id"])["status"] == "booked"
        assert_outcome(operation(client, "book", proposal("s1")), 409)


def test_confirming_a_rest_hold_by_put_stops_its_expiry(settings):
    # PUT to ``booked`` keeps whatever tags the client sends; a booked appointment is
    # not a hold whatever it carries, so it keeps its slot
    with short_holds(settings, sweep=0.2) as client:
        seed_slots(client, "s1")
        tagged = create(client, pending("s1", meta={"tag": [HOLD_TAG]}))
        assert put(client, {**tagged, "status": "booked"}).status_code == 200
        time.sleep(1.6)
        assert read(client, tagged["id"])["status"] == "booked"
        assert_outcome(operation(client, "book", proposal("s1")), 409)


def test_an_untagged_pending_with_an_expired_key_from_before_the_fix_stays(settings):
    # keys written before holds were marked carried an expiry on every pending
    # appointment; meeting one (at booking time, or in the sweep) makes it permanent
    with short_holds(settings, sweep=0.2) as client:
        seed_slots(client, "s1", "s2")
        old = create(client, pending("s1"))
        other = create(client, pending("s2", patient="pc"))
        database = client.app.state.services.settings.database  # type: ignore[attr-defined]
        with MongoClient(settings.mongo_url) as mongo:
            keys = mongo[database]["booking_keys"]
            past = datetime.now(UTC) - timedelta(minutes=1)
            for aid in (old["id"], other["id"]):
                done = keys.update_many({"a": f"Appointment/{aid}"}, {"$set": {"exp": past}})
                assert done.modified_count > 0
            assert_outcome(operation(client, "book", proposal("s1")), 409)
            time.sleep(0.8)  # sweeps
            assert read(client, old["id"])["status"] == "pending"
            assert read(client, other["id"])["status"] == "pending"
            assert keys.count_documents({"exp": {"$ne": None}}) == 0
        assert_outcome(operation(client, "book", proposal("s2")), 409)


def test_hold_marks_an_existing_pending_appointment(settings):
    with short_holds(settings) as client:
        seed_slots(client, "s1")
        plain = create(client, pending("s1"))
        r = client.post(
            "/fhir/Appointment/$hold",
            json={
                "resourceType": "Parameters",
                "parameter": [{"name": "appt-id", "valueUri": f"Appointment/{plain['id']}"}],
            },
            headers={"Content-Type": FHIR_JSON},
        )
        held = booked(r, 200)
        assert is_tagged(held)
        time.sleep(1.2)
        booked(operation(client, "book", proposal("s1")))
        assert read(client, plain["id"])["status"] == "cancelled"
