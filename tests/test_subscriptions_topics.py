"""Topic-based Subscriptions, the R4 form of the Subscriptions R5 Backport IG
(http://hl7.org/fhir/uv/subscriptions-backport/): the topics' triggers and filter
criteria on real writes, the refusals, ``$status`` and the CapabilityStatement.

IG, backport-subscription: "When using topic-based subscriptions, the primary criteria
is always the topic, indicated by its canonical URL"; backport-filter-criteria: "When
multiple filters are applied, evaluates to true if all the conditions are met"."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import app_client, assert_outcome, expressions
from subscription_helpers import queued

from fhir_server.config import Settings
from fhir_server.workflows.subscriptions.backport import CONTENT, FILTER, TOPIC_CANONICAL
from fhir_server.workflows.subscriptions.topics import BASE

LAB = "http://terminology.hl7.org/CodeSystem/observation-category"


@pytest.fixture
def hub(settings: Settings) -> Iterator[tuple[TestClient, Settings]]:
    with app_client(settings, outbound_allow="127.0.0.1") as c:
        c.base_url = "http://testserver/fhir"  # type: ignore[assignment]
        yield c, c.app.state.services.settings  # type: ignore[attr-defined]


def topic_subscription(
    topic: str,
    filters: tuple[str, ...] = (),
    channel: str = "email",
    endpoint: str = "mailto:desk@example.org",
    content: str | None = "id-only",
    **channel_extra: Any,
) -> dict[str, Any]:
    ch: dict[str, Any] = {"type": channel, "payload": "application/fhir+json", **channel_extra}
    if endpoint:
        ch["endpoint"] = endpoint
    if content is not None:
        ch["_payload"] = {"extension": [{"url": CONTENT, "valueCode": content}]}
    sub: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": BASE + topic,
        "channel": ch,
    }
    if filters:
        sub["_criteria"] = {"extension": [{"url": FILTER, "valueString": f} for f in filters]}
    return sub


def _sub(client: TestClient, body: dict[str, Any]) -> str:
    r = client.post("/Subscription", json=body)
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def appointment(aid: str, status: str, patient: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": "2031-03-04T15:00:00Z",
        "end": "2031-03-04T15:30:00Z",
        "participant": [
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/dr"}, "status": "accepted"},
        ],
        **extra,
    }


def _put(client: TestClient, resource: dict[str, Any]) -> int:
    r = client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
    assert r.status_code in (200, 201), r.text
    version: int = int(r.json()["meta"]["versionId"])
    return version


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        (topic_subscription("no-such-topic"), "Subscription.criteria"),
        (
            topic_subscription("appointment-booked", ("Observation?code=1",)),
            "Subscription.criteria.extension[0]",
        ),
        (
            topic_subscription("appointment-booked", ("Appointment",)),
            "Subscription.criteria.extension[0]",
        ),
        (
            topic_subscription("appointment-booked", ("Appointment?nope=1",)),
            "Subscription.criteria",
        ),
        (topic_subscription("lab-result", content="everything"), "Subscription.channel.payload"),
        (
            topic_subscription("lab-result", channel="websocket", endpoint=""),
            "Subscription.channel.type",
        ),
        (
            topic_subscription(
                "lab-result",
                extension=[
                    {
                        "url": "http://hl7.org/fhir/uv/subscriptions-backport/"
                        "StructureDefinition/backport-heartbeat-period",
                        "valueUnsignedInt": 0,
                    }
                ],
            ),
            "Subscription.channel.extension",
        ),
    ],
)
def test_refusals_name_the_element(
    hub: tuple[TestClient, Settings], body: dict[str, Any], expression: str
) -> None:
    client, _ = hub
    issues = assert_outcome(client.post("/Subscription", json=body), 422)
    assert any(e.startswith(expression) for e in expressions(issues)), issues


def test_appointment_topics_fire_on_their_transitions_only(
    hub: tuple[TestClient, Settings],
) -> None:
    client, settings = hub
    booked = _sub(client, topic_subscription("appointment-booked"))
    changed = _sub(client, topic_subscription("appointment-changed"))
    cancelled = _sub(client, topic_subscription("appointment-cancelled"))
    mine = _sub(client, topic_subscription("appointment-booked", ("Appointment?patient=p2",)))
    _put(client, appointment("a1", "proposed"))  # v1: no topic
    _put(client, appointment("a1", "booked"))  # v2: booked
    _put(client, appointment("a1", "booked", comment="bring results"))  # v3: nothing moved
    moved = appointment("a1", "booked", start="2031-03-05T15:00:00Z", end="2031-03-05T15:30:00Z")
    _put(client, moved)  # v4: changed
    _put(client, {**moved, "status": "cancelled"})  # v5: cancelled
    _put(client, appointment("a2", "booked", patient="p2"))  # created booked
    assert queued(settings, booked) == [("Appointment", "a1", 2), ("Appointment", "a2", 1)]
    assert queued(settings, changed) == [("Appointment", "a1", 4)]
    assert queued(settings, cancelled) == [("Appointment", "a1", 5)]
    assert queued(settings, mine) == [("Appointment", "a2", 1)]


def test_lab_and_dispense_topics(hub: tuple[TestClient, Settings]) -> None:
    client, settings = hub
    lab = _sub(client, topic_subscription("lab-result"))
    dispensed = _sub(client, topic_subscription("medication-dispensed"))

    def obs(oid: str, category: str, status: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": status,
            "category": [{"coding": [{"system": LAB, "code": category}]}],
            "code": {"text": "glucose"},
        }

    _put(client, obs("o1", "laboratory", "preliminary"))  # v1: new
    noted = {**obs("o1", "laboratory", "preliminary"), "note": [{"text": "haemolysed"}]}
    assert _put(client, noted) == 2  # no change of status
    assert _put(client, obs("o1", "laboratory", "final")) == 3  # resulted
    _put(client, obs("o2", "vital-signs", "final"))  # not a lab result
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}
        ],
        "code": {"text": "panel"},
    }
    _put(client, report)
    dispense = {
        "resourceType": "MedicationDispense",
        "id": "d1",
        "status": "in-progress",
        "medicationCodeableConcept": {"text": "paracetamol"},
    }
    _put(client, dispense)
    _put(client, {**dispense, "status": "completed"})
    assert queued(settings, lab) == [
        ("Observation", "o1", 1),
        ("Observation", "o1", 3),
        ("DiagnosticReport", "r1", 1),
    ]
    assert queued(settings, dispensed) == [("MedicationDispense", "d1", 2)]


def test_status_operation_and_capability(hub: tuple[TestClient, Settings]) -> None:
    client, _ = hub
    email = _sub(client, topic_subscription("lab-result"))
    hook = _sub(
        client,
        topic_subscription("lab-result", channel="rest-hook", endpoint="http://127.0.0.1:9/x"),
    )
    assert client.get(f"/Subscription/{hook}").json()["status"] == "requested"  # handshake
    r = client.get(f"/Subscription/{email}/$status")
    assert r.status_code == 200, r.text
    (entry,) = r.json()["entry"]
    params = {p["name"]: p for p in entry["resource"]["parameter"]}
    assert params["type"]["valueCode"] == "query-status"
    assert params["status"]["valueCode"] == "active"
    assert params["topic"]["valueCanonical"] == BASE + "lab-result"
    assert params["events-since-subscription-start"]["valueString"] == "0"
    assert params["subscription"]["valueReference"]["reference"].endswith(f"/Subscription/{email}")
    r = client.get("/Subscription/$status", params={"status": "requested"})
    got = [
        p["valueReference"]["reference"].rsplit("/", 1)[1]
        for e in r.json()["entry"]
        for p in e["resource"]["parameter"]
        if p["name"] == "subscription"
    ]
    assert got == [hook]
    assert_outcome(client.get("/Subscription/nope/$status"), 404)
    assert_outcome(client.get("/Subscription/$status", params={"bogus": "1"}), 400)
    meta = client.get("/metadata").json()
    (sub,) = [r for r in meta["rest"][0]["resource"] if r["type"] == "Subscription"]
    topics = {e["valueCanonical"] for e in sub["extension"] if e["url"] == TOPIC_CANONICAL}
    assert BASE + "appointment-booked" in topics and len(topics) == 5
    assert any(o["name"] == "status" for o in sub["operation"])


def test_an_update_of_a_rest_hook_topic_subscription_asks_for_a_new_handshake(
    hub: tuple[TestClient, Settings],
) -> None:
    """A rest-hook topic Subscription is requested until its handshake; one written as
    active (a client's update) is set back to requested, so the worker's activation
    after the new handshake applies."""
    client, _ = hub
    body = topic_subscription("lab-result", channel="rest-hook", endpoint="http://127.0.0.1:9/x")
    r = client.post("/Subscription", json={**body, "status": "active"})
    assert r.status_code == 201 and r.json()["status"] == "requested", r.text
    current = r.json()
    r = client.put(f"/Subscription/{current['id']}", json={**current, "status": "active"})
    assert r.json()["status"] == "requested"
