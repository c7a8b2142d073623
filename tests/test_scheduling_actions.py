"""The appointment action log (issue 12; the clinic systems' "AppointmentAction"):
every booking, status change, reschedule and cancellation writes a Provenance in the
same transaction, whatever the path, and ``GET Provenance?target=Appointment/[id]``
returns the log in order. Provenance.target "SHOULD be version specific"
(provenance.html#Provenance.target) so it names the Appointment version."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import (
    assert_outcome,
    binary_patch,
    bundle_response,
    create,
    entry,
    patch,
    post,
    post_bundle,
    put,
    urn,
)
from pymongo import MongoClient
from scheduling_helpers import appointment, at, smart

REASON = {"coding": [{"code": "pat"}], "text": "patient asked"}


def log(client: TestClient, appointment_id: str, **headers: str) -> list[dict[str, Any]]:
    r = client.get(
        "/fhir/Provenance", params={"target": f"Appointment/{appointment_id}"}, headers=headers
    )
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def activities(entries: list[dict[str, Any]]) -> list[str]:
    return [p["activity"]["coding"][0]["code"] for p in entries]


def test_booking_reschedule_confirm_and_cancel_are_logged_in_order(client):
    held = create(client, appointment(slot="s1", status="pending"))
    aid = held["id"]
    booked = put(client, {**held, "status": "booked"}).json()
    moved = put(
        client,
        {**booked, "slot": [{"reference": "Slot/s2"}], "start": at(60), "end": at(75)},
    ).json()
    put(client, {**moved, "comment": "bring the referral"})  # an edit: not logged
    cancelled = put(client, {**moved, "status": "cancelled", "cancelationReason": REASON}).json()
    entries = log(client, aid)
    # a plain pending appointment awaits acceptance: "request"; only a tagged hold
    # (marker.py, $hold) is logged as "hold" (test_scheduling_operations)
    assert activities(entries) == ["request", "confirm", "reschedule", "cancel"]
    assert [p["target"][0]["reference"] for p in entries] == [
        f"Appointment/{aid}/_history/{v}" for v in (1, 2, 3, 5)
    ]
    assert entries[-1]["reason"] == [REASON]
    assert entries[-1]["recorded"] == cancelled["meta"]["lastUpdated"]
    assert all("reason" not in p for p in entries[:-1])


def test_patch_transaction_batch_and_delete_are_logged(client):
    made = create(client, appointment(slot="s1"))
    aid = made["id"]
    ops = [{"op": "replace", "path": "/status", "value": "arrived"}]
    assert patch(client, f"/fhir/Appointment/{aid}", ops).status_code == 200
    ops = [{"op": "replace", "path": "/status", "value": "fulfilled"}]
    bundle_response(post_bundle(client, [entry("PATCH", f"Appointment/{aid}", binary_patch(ops))]))
    r = post_bundle(client, [entry("POST", "Appointment", appointment(slot="s9"), urn())])
    (created,) = bundle_response(r)
    other = created["response"]["location"].split("/")[1]
    r = post_bundle(client, [entry("DELETE", f"Appointment/{other}")], kind="batch")
    bundle_response(r, "batch-response")
    assert activities(log(client, aid)) == ["book", "arrive", "complete"]
    assert activities(log(client, other)) == ["book", "delete"]


def test_a_refused_write_logs_nothing(client):
    create(client, appointment(slot="s1"))
    r = post(client, appointment(slot="s1", patient="pb"))
    assert_outcome(r, 409)
    r = post_bundle(
        client,
        [
            entry("POST", "Appointment", appointment(slot="s2"), urn()),
            entry("POST", "Appointment", appointment(slot="s1", patient="pb"), urn()),
        ],
    )
    assert_outcome(r, 409)
    total = client.get("/fhir/Provenance", params={"_summary": "count"}).json()["total"]
    assert total == 1  # the first booking only


def test_the_agent_is_the_tokens_user_or_client(mongo_url: str) -> None:
    with smart(mongo_url) as (client, mint):
        staff = mint.headers("user/Appointment.cruds", fhir_user="Practitioner/dr")
        r = post(client, appointment(slot="s1"), **staff)
        assert r.status_code == 201, r.text
        aid = r.json()["id"]
        service = mint.headers("system/*.cruds", client_id="call-centre")
        r = put(client, {**r.json(), "status": "cancelled"}, **service)
        assert r.status_code == 200, r.text
        entries = log(client, aid, **mint.headers("system/*.cruds"))
        assert [p["agent"][0]["who"] for p in entries] == [
            {"reference": "Practitioner/dr"},
            {"identifier": {"system": "urn:smart:client_id", "value": "call-centre"}},
        ]


def outbox(settings) -> list[dict[str, Any]]:
    with MongoClient(settings.mongo_url) as mc:
        return list(mc[settings.database]["outbox"].find({}, {"_id": 0, "created": 0}))


def test_actions_are_announced_in_the_outbox_only_when_committed(client, settings):
    # write-pipeline.md: after_commit only enqueues, in the same transaction, so a
    # refused write (rolled back) announces nothing
    made = create(client, appointment(slot="s1"))
    assert_outcome(post(client, appointment(slot="s1", patient="pb")), 409)
    put(client, {**made, "comment": "an edit, not an action"})
    put(client, {**made, "comment": "x", "status": "cancelled"})
    assert outbox(settings) == [
        {
            "topic": "appointment",
            "activity": "book",
            "target": f"Appointment/{made['id']}/_history/1",
        },
        {
            "topic": "appointment",
            "activity": "cancel",
            "target": f"Appointment/{made['id']}/_history/3",
        },
    ]
