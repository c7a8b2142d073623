"""AppointmentResponse (issue 12): "AppointmentResponse from a participant updates that
participant's status", on every path, and a practitioner who declines no longer holds
the time."""

from __future__ import annotations

from typing import Any

from fhir_helpers import assert_outcome, create, entry, expressions, post, post_bundle, urn
from scheduling_helpers import appointment


def response(aid: str, actor: str, status: str) -> dict[str, Any]:
    return {
        "resourceType": "AppointmentResponse",
        "appointment": {"reference": f"Appointment/{aid}"},
        "actor": {"reference": actor},
        "participantStatus": status,
    }


def statuses(client, aid: str) -> dict[str, str]:
    found = client.get(f"/fhir/Appointment/{aid}").json()
    return {p["actor"]["reference"]: p["status"] for p in found["participant"]}


def test_a_reply_sets_the_participants_status(client):
    made = create(client, appointment(practitioner="dr", room="room1"))
    r = post(client, response(made["id"], "Practitioner/dr", "tentative"))
    assert r.status_code == 201, r.text
    assert statuses(client, made["id"]) == {
        "Patient/pa": "accepted",
        "Practitioner/dr": "tentative",
        "Location/room1": "accepted",
    }


def test_a_declining_practitioner_frees_the_time(client):
    made = create(client, appointment(practitioner="dr"))
    assert_outcome(post(client, appointment(practitioner="dr", patient="pb")), 409)
    r = post_bundle(
        client,
        [
            entry(
                "POST",
                "AppointmentResponse",
                response(made["id"], "Practitioner/dr", "declined"),
                urn(),
            )
        ],
    )
    assert r.status_code == 200, r.text
    assert statuses(client, made["id"])["Practitioner/dr"] == "declined"
    create(client, appointment(practitioner="dr", patient="pb"))


def test_a_reply_from_a_non_participant_is_422(client):
    made = create(client, appointment(practitioner="dr"))
    issues = assert_outcome(
        post(client, response(made["id"], "Practitioner/other", "accepted")), 422
    )
    assert issues[0]["code"] == "business-rule"
    assert expressions(issues) == ["AppointmentResponse.actor"]
    assert client.get("/fhir/AppointmentResponse").json().get("entry", []) == []
