"""Scheduling against a real server process with two workers (issue 12): the
guarantees that matter under load — one booking per Slot, a refused reschedule that
changes nothing, an expired hold that blocks nobody — hold when requests really run in
parallel, in different processes, over TCP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from pymongo import MongoClient
from scheduling_helpers import appointment, slot

from fhir_server.testing import ServerProcess

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def server(mongo_url: str) -> Iterator[ServerProcess]:
    database = f"test_{uuid.uuid4().hex[:12]}"
    env = {"FHIR_APPOINTMENT_HOLD": "2", "FHIR_APPOINTMENT_HOLD_SWEEP": "0.5"}
    with ServerProcess(mongo_url=mongo_url, database=database, workers=2, env=env) as s:
        yield s
    with MongoClient(mongo_url) as mc:
        mc.drop_database(database)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60, headers=JSON) as client:
        yield client


def operation(http: httpx.Client, name: str, resource: dict[str, Any]) -> httpx.Response:
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment", "resource": resource}],
    }
    return http.post(f"/Appointment/${name}", json=body)


def test_fifty_concurrent_books_of_one_slot_one_201_and_49_409(http):
    assert http.put("/Slot/hot", json=slot("hot")).status_code == 201

    def attempt(n: int) -> httpx.Response:
        proposal = appointment(slot="hot", patient=f"p{n}", status="proposed")
        return operation(http, "book", proposal)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(attempt, range(50)))
    assert sorted(r.status_code for r in answers) == [201] + [409] * 49
    for r in answers:
        if r.status_code == 409:
            issue = r.json()["issue"][0]
            assert issue["code"] == "conflict" and "Slot/hot" in issue["diagnostics"]
    assert http.get("/Slot/hot").json()["status"] == "busy"
    found = http.get("/Appointment", params={"slot": "Slot/hot", "_summary": "count"}).json()
    assert found["total"] == 1


def test_a_refused_reschedule_leaves_the_old_slot_and_the_appointment_as_they_were(http):
    """$book of an existing id onto another Slot frees the old one "in the same
    transaction": when the new Slot is taken, nothing moves."""
    for sid, begin in (("r1", 60), ("r2", 75)):
        assert http.put(f"/Slot/{sid}", json=slot(sid, begin=begin)).status_code == 201
    mine = operation(
        http, "book", appointment(slot="r1", patient="pa", begin=60, status="proposed")
    )
    assert mine.status_code == 201, mine.text
    first = mine.json()["entry"][0]["resource"]
    assert (
        operation(http, "book", appointment(slot="r2", patient="pb", begin=75)).status_code == 201
    )
    moved = {
        **first,
        "slot": [{"reference": "Slot/r2"}],
        "start": slot("r2", 75)["start"],
        "end": slot("r2", 75)["end"],
    }
    assert operation(http, "book", moved).status_code == 409
    assert http.get("/Slot/r1").json()["status"] == "busy"
    assert http.get(f"/Appointment/{first['id']}").json()["meta"]["versionId"] == "1"
    log = http.get("/Provenance", params={"target": f"Appointment/{first['id']}"}).json()
    assert [e["resource"]["activity"]["text"] for e in log["entry"]] == ["book"]


def test_holds_expire_at_booking_time_and_by_the_sweep(http):
    """FHIR_APPOINTMENT_HOLD=2 s, FHIR_APPOINTMENT_HOLD_SWEEP=0.5 s."""
    for sid, begin in (("h1", 120), ("h2", 135)):
        assert http.put(f"/Slot/{sid}", json=slot(sid, begin=begin)).status_code == 201
    held = operation(
        http, "hold", appointment(slot="h1", patient="pa", begin=120, status="proposed")
    )
    assert held.status_code == 201
    assert http.get("/Slot/h1").json()["status"] == "busy-tentative"
    other = appointment(slot="h1", patient="pb", begin=120, status="proposed")
    assert operation(http, "book", other).status_code == 409  # still held
    swept = operation(
        http, "hold", appointment(slot="h2", patient="pc", begin=135, status="proposed")
    )
    hold_id = swept.json()["entry"][0]["resource"]["id"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the sweep cancels h2's hold, nobody asked
        if http.get(f"/Appointment/{hold_id}").json()["status"] == "cancelled":
            break
        time.sleep(0.25)
    found = http.get(f"/Appointment/{hold_id}").json()
    assert (found["status"], found["cancelationReason"]) == ("cancelled", {"text": "hold expired"})
    assert http.get("/Slot/h2").json()["status"] == "free"
    # h1's hold expired too (swept or not): the booking goes through
    done = operation(http, "book", other)
    assert done.status_code == 201, done.text
    assert http.get("/Slot/h1").json()["status"] == "busy"
