"""Subscription life cycle and criteria matching on every write path
(http://hl7.org/fhir/R4/subscription.html). Matching is observed in the delivery queue
the write's transaction fills; delivery itself is tested in test_subscriptions_delivery.

R4 subscription.html: "criteria: The rules that the server should use to determine when
to generate notifications for this subscription ... a search URL" and "requested: The
client has requested the subscription, and the server has not yet set it up ... active:
The subscription is active." """

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import app_client, assert_outcome, expressions, observation, patient
from subscription_helpers import queued, subscribe, subscription

from fhir_server.config import Settings

LOINC = "http://loinc.org"


@pytest.fixture
def hub(settings: Settings) -> Iterator[tuple[TestClient, Settings]]:
    custom = {"outbound_allow": "127.0.0.1"}
    with app_client(settings, **custom) as c:
        c.base_url = "http://testserver/fhir"  # type: ignore[assignment]
        yield c, c.app.state.services.settings  # type: ignore[attr-defined]


def _obs(code: str, subject: str | None = None, **extra: Any) -> dict[str, Any]:
    o = observation(code={"coding": [{"system": LOINC, "code": code}]}, **extra)
    if subject:
        o["subject"] = {"reference": subject}
    return o


def _created(client: TestClient, resource: dict[str, Any]) -> str:
    r = client.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    rid: str = r.json()["id"]
    return rid


def _located(entry: dict[str, Any]) -> str:
    location: str = entry["response"]["location"]
    return location.split("Patient/", 1)[1].split("/", 1)[0]


def test_requested_becomes_active_and_off_stops_matching(
    hub: tuple[TestClient, Settings],
) -> None:
    client, settings = hub
    sid = subscribe(client, f"Observation?code={LOINC}|1234-5")
    assert client.get(f"/Subscription/{sid}").json()["status"] == "active"
    first = _created(client, _obs("1234-5"))
    _created(client, _obs("9999-9"))  # another code: no notification
    assert queued(settings, sid) == [("Observation", first, 1)]
    current = client.get(f"/Subscription/{sid}").json()
    current["status"] = "off"
    assert client.put(f"/Subscription/{sid}", json=current).status_code == 200
    _created(client, _obs("1234-5"))
    assert queued(settings, sid) == [("Observation", first, 1)]
    current = client.get(f"/Subscription/{sid}").json()
    current["status"] = "requested"  # on again
    r = client.put(f"/Subscription/{sid}", json=current)
    assert r.json()["status"] == "active"
    third = _created(client, _obs("1234-5"))
    assert [q[1] for q in queued(settings, sid)] == [first, third]


@pytest.mark.parametrize(
    ("criteria", "expression"),
    [
        ("Nope?code=1", "Subscription.criteria"),
        ("Observation?no-such-param=1", "Subscription.criteria"),
        ("Observation?code=1&_sort=date", "Subscription.criteria"),
        ("Observation?date=notadate", "Subscription.criteria"),
    ],
)
def test_invalid_criteria_are_422_naming_criteria(
    hub: tuple[TestClient, Settings], criteria: str, expression: str
) -> None:
    client, _ = hub
    r = client.post("/Subscription", json=subscription(criteria))
    issues = assert_outcome(r, 422)
    assert any(e.startswith(expression) for e in expressions(issues)), issues
    assert client.get("/Subscription").json().get("total", 0) == 0


@pytest.mark.parametrize(
    ("channel", "endpoint", "expression"),
    [
        ("sms", "tel:+593999999999", "Subscription.channel.type"),
        ("rest-hook", "http://10.0.0.1/hook", "Subscription.channel.endpoint"),
        ("rest-hook", "http://169.254.169.254/latest/meta-data", "Subscription.channel.endpoint"),
        ("rest-hook", "http://[::1]:8080/", "Subscription.channel.endpoint"),
        ("rest-hook", "http://127.0.0.2:8080/", "Subscription.channel.endpoint"),
        ("rest-hook", "http://0x7f000002/", "Subscription.channel.endpoint"),
        ("rest-hook", "ftp://127.0.0.1/hook", "Subscription.channel.endpoint"),
        ("email", "someone@example.org", "Subscription.channel.endpoint"),
    ],
)
def test_channels_and_endpoints_outside_the_allow_list_are_422(
    hub: tuple[TestClient, Settings], channel: str, endpoint: str, expression: str
) -> None:
    """FHIR_OUTBOUND_ALLOW here is 127.0.0.1 only: a private address, the cloud metadata
    address, another loopback address (however it is spelled) are all refused before
    anything is stored, so a Subscription cannot make the server reach them."""
    client, _ = hub
    r = client.post("/Subscription", json=subscription("Patient", endpoint, channel))
    assert expression in expressions(assert_outcome(r, 422))


def test_bad_headers_and_payloads_are_422(hub: tuple[TestClient, Settings]) -> None:
    client, _ = hub
    bad_header = subscription("Patient", headers=["Authorization: Bearer x", "Host: evil"])
    r = client.post("/Subscription", json=bad_header)
    assert "Subscription.channel.header[1]" in expressions(assert_outcome(r, 422))
    r = client.post("/Subscription", json=subscription("Patient", payload="application/pdf"))
    assert "Subscription.channel.payload" in expressions(assert_outcome(r, 422))


def test_every_write_path_is_matched(hub: tuple[TestClient, Settings]) -> None:
    """REST create, update, patch, conditional create and update, transaction and batch
    entries: each new version that matches is queued once, in order; a delete is not a
    match (a deleted resource matches no search)."""
    client, settings = hub
    sid = subscribe(client, "Patient?family=Quispe")
    a = _created(client, patient(name=[{"family": "Quispe"}]))
    _created(client, patient(name=[{"family": "Other"}]))
    p = client.get(f"/Patient/{a}").json()
    p["gender"] = "female"
    assert client.put(f"/Patient/{a}", json=p).status_code == 200  # update: v2
    r = client.patch(
        f"/Patient/{a}",
        json=[{"op": "replace", "path": "/gender", "value": "male"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 200, r.text  # patch: v3
    cond = patient(name=[{"family": "Quispe"}], identifier=[{"system": "urn:t", "value": "c1"}])
    r = client.post("/Patient", json=cond, headers={"If-None-Exist": "identifier=urn:t|c1"})
    c = r.json()["id"]
    r = client.put("/Patient?identifier=urn:t|c1", json={**cond, "gender": "other"})
    assert r.status_code == 200  # conditional update: v2
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b7c7f4c-6d2a-4b59-8f55-5b1b3a1b2c3d",
                "resource": patient(name=[{"family": "Quispe"}]),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": patient(name=[{"family": "Nope"}]),
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    r = client.post("/", json=bundle)
    assert r.status_code == 200, r.text
    t = _located(r.json()["entry"][0])
    batch = {**bundle, "type": "batch"}
    r = client.post("/", json=batch)
    b = _located(r.json()["entry"][0])
    assert client.delete(f"/Patient/{a}").status_code in (200, 204)
    assert queued(settings, sid) == [
        ("Patient", a, 1),
        ("Patient", a, 2),
        ("Patient", a, 3),
        ("Patient", c, 1),
        ("Patient", c, 2),
        ("Patient", t, 1),
        ("Patient", b, 1),
    ]


def test_a_transaction_that_fails_notifies_nobody(hub: tuple[TestClient, Settings]) -> None:
    client, settings = hub
    sid = subscribe(client, "Patient")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "DELETE", "url": "Patient/x"}, "resource": None},
            {"request": {"method": "GET", "url": "Nope/1"}},
        ],
    }
    bundle["entry"][1].pop("resource")
    r = client.post("/", json=bundle)
    assert r.status_code >= 400
    assert queued(settings, sid) == []


@pytest.mark.parametrize(
    ("criteria", "hits"),
    [
        (f"Observation?code={LOINC}|1234-5", {"a", "b"}),
        ("Observation?code=1234-5", {"a", "b"}),
        (f"Observation?code:not={LOINC}|1234-5", {"c"}),
        ("Observation?subject=Patient/p1", {"a", "c"}),
        ("Observation?subject=Patient/p1&code=1234-5", {"a"}),
        ("Observation?date=ge2024-01-01", {"b", "c"}),
        ("Observation?date=lt2024", {"a"}),
        ("Observation?value-quantity=gt100", {"b"}),
        ("Observation?value-quantity=le100|http://unitsofmeasure.org|mg", {"a"}),
        ("Observation?status=final", {"a", "b", "c"}),
        ("Observation?status=amended", set()),
        ("Observation?subject:missing=true", {"b"}),
        ("Observation?code=1234-5,5555-5", {"a", "b", "c"}),
        ("Observation?_id=b", {"b"}),
        ("Observation?subject.name=Lopez", {"a", "c"}),  # a chain: compiled at each write
        ("Observation?subject:Patient.gender=female", set()),
    ],
)
def test_criteria_match_as_the_same_search_would(
    hub: tuple[TestClient, Settings], criteria: str, hits: set[str]
) -> None:
    """The queue holds exactly the resources the same search finds afterwards."""
    client, settings = hub
    client.put("/Patient/p1", json={**patient(name=[{"family": "Lopez"}]), "id": "p1"})
    sid = subscribe(client, criteria)
    mg = {"system": "http://unitsofmeasure.org", "code": "mg", "unit": "mg"}
    rows = {
        "a": _obs(
            "1234-5",
            "Patient/p1",
            effectiveDateTime="2023-05-01",
            valueQuantity={"value": 50, **mg},
        ),
        "b": _obs(
            "1234-5", None, effectiveDateTime="2024-02-01", valueQuantity={"value": 150, **mg}
        ),
        "c": _obs("5555-5", "Patient/p1", effectiveDateTime="2024-03-01T10:00:00Z"),
    }
    for rid, resource in rows.items():
        assert client.put(f"/Observation/{rid}", json={**resource, "id": rid}).status_code == 201
    got = {rid for _, rid, _ in queued(settings, sid)}
    assert got == hits
    found = client.get("/" + criteria).json()
    assert {e["resource"]["id"] for e in found.get("entry", [])} == hits


def test_operations_and_the_servers_own_writes_are_matched(
    hub: tuple[TestClient, Settings],
) -> None:
    """``Appointment/$book`` (an operation) books; the Slot it takes becomes busy by a
    rule of the pipeline (a write the server makes): both are heard."""
    from scheduling_helpers import slot
    from test_scheduling_operations import booked, proposed

    client, settings = hub
    appointments = subscribe(client, "Appointment?status=booked")
    busy = subscribe(client, "Slot?status=busy")
    assert client.put("/Slot/s1", json=slot("s1")).status_code == 201
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment", "resource": proposed("s1")}],
    }
    done = booked(client.post("/Appointment/$book", json=body))
    assert queued(settings, appointments) == [("Appointment", done["id"], 1)]
    assert [(t, rid) for t, rid, _ in queued(settings, busy)] == [("Slot", "s1")]


def test_live_criteria_see_what_the_same_transaction_wrote(
    hub: tuple[TestClient, Settings],
) -> None:
    """A chain's target and a ``_has`` source written in the same transaction as the
    resource count: R4 http.html#transaction, "the server SHALL process the transaction
    ... as a single atomic unit", so the search afterwards finds them, and so must the
    Subscription. Several matches in one transaction are all queued, in entry order."""
    client, settings = hub
    chained = subscribe(client, "Observation?subject:Patient.identifier=urn:mrn|77")
    has = subscribe(client, f"Patient?_has:Observation:subject:code={LOINC}|1234-5")
    pid = "urn:uuid:4f1c8a7e-2b0d-4a51-9c3e-8d7f6a5b4c3d"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": pid,
            "resource": patient(identifier=[{"system": "urn:mrn", "value": "77"}]),
            "request": {"method": "POST", "url": "Patient"},
        },
        *(
            {"resource": _obs(code, pid), "request": {"method": "POST", "url": "Observation"}}
            for code in ("1234-5", "5555-5")
        ),
        {"resource": _obs("1234-5"), "request": {"method": "POST", "url": "Observation"}},
    ]
    r = client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text
    ids = [e["response"]["location"].split("/")[1] for e in r.json()["entry"]]
    assert queued(settings, chained) == [("Observation", ids[1], 1), ("Observation", ids[2], 1)]
    assert queued(settings, has) == [("Patient", ids[0], 1)]
    found = client.get("/Observation?subject:Patient.identifier=urn:mrn|77").json()
    assert {e["resource"]["id"] for e in found["entry"]} == set(ids[1:3])
