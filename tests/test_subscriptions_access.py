"""Subscriptions under SMART authorization, and the websocket channel.

A Subscription's criteria are a search by whoever wrote it: they are compiled under that
token's policy, so a subscriber is told only of resources the token could have searched,
and a token that may not search the type cannot subscribe to it (403). The websocket
(R4 subscription.html#2.46.7.2: "bind :id" ... "ping :id") binds only a Subscription
the connecting token may read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import app_client, assert_outcome, expressions
from smart_helpers import ADMIN, TokenMint, observation, smart_client
from starlette.websockets import WebSocketDisconnect
from subscription_helpers import queued, subscription

from fhir_server.config import Settings

HOOK = "https://hooks.example.org/fhir"  # allowed by name: never resolved, never sent


@pytest.fixture
def smart(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint, Settings]]:
    with smart_client(mongo_url, outbound_allow="hooks.example.org") as (client, mint):
        settings: Settings = client.app.state.services.settings  # type: ignore[attr-defined]
        yield client, mint, settings


def _subscribe(client: TestClient, headers: dict[str, str], criteria: str, **kw: Any) -> Any:
    return client.post(
        "/fhir/Subscription", json=subscription(criteria, HOOK, **kw), headers=headers
    )


def _write_observations(client: TestClient, mint: TokenMint, tag: str) -> None:
    admin = mint.headers(ADMIN)
    for oid, pid, category in [
        ("na-lab", "pa", "laboratory"),
        ("na-vital", "pa", "vital-signs"),
        ("nb-lab", "pb", "laboratory"),
    ]:
        body = observation(f"{oid}-{tag}", pid, category)
        r = client.put(f"/fhir/Observation/{oid}-{tag}", json=body, headers=admin)
        assert r.status_code == 201, r.text


def test_a_token_that_may_not_search_the_type_cannot_subscribe(
    smart: tuple[TestClient, TokenMint, Settings],
) -> None:
    client, mint, _ = smart
    headers = mint.headers("system/Subscription.cruds system/Patient.rs")
    r = _subscribe(client, headers, "Observation?status=final")
    assert "Subscription.criteria" in expressions(assert_outcome(r, 403))
    assert _subscribe(client, headers, "Patient").status_code == 201


def test_granular_scopes_narrow_what_a_subscription_hears(
    smart: tuple[TestClient, TokenMint, Settings],
) -> None:
    """system/Observation.rs?category=laboratory: the same criteria hear lab results
    only, as a search with that token would find only them."""
    client, mint, settings = smart
    headers = mint.headers("system/Subscription.cruds system/Observation.rs?category=laboratory")
    r = _subscribe(client, headers, "Observation")
    assert r.status_code == 201, r.text
    _write_observations(client, mint, "g")
    assert {q[1] for q in queued(settings, r.json()["id"])} == {"na-lab-g", "nb-lab-g"}


def test_a_patients_subscription_hears_only_that_patient(
    smart: tuple[TestClient, TokenMint, Settings],
) -> None:
    """An app a clinician launched in patient pa's context (patient/Observation.rs)
    subscribes with criteria that name the other patient, directly and through a chain:
    it hears nothing of pb; its plain subscription hears pa's records only."""
    client, mint, settings = smart
    headers = mint.headers(
        "user/Subscription.cruds patient/Observation.rs patient/Patient.rs",
        patient="pa",
        fhir_user="Practitioner/dr",
    )
    mine = _subscribe(client, headers, "Observation")
    assert mine.status_code == 201, mine.text
    theirs = _subscribe(client, headers, "Observation?subject=Patient/pb")
    chained = _subscribe(client, headers, "Observation?subject:Patient.name=Bravo")
    assert theirs.status_code == chained.status_code == 201
    _write_observations(client, mint, "p")
    assert {q[1] for q in queued(settings, mine.json()["id"])} == {"na-lab-p", "na-vital-p"}
    assert queued(settings, theirs.json()["id"]) == []
    assert queued(settings, chained.json()["id"]) == []


def test_websocket_binding_needs_a_token_that_may_read_the_subscription(
    smart: tuple[TestClient, TokenMint, Settings],
) -> None:
    client, mint, _ = smart
    admin = mint.headers(ADMIN)
    r = client.post(
        "/fhir/Subscription", json=subscription("Observation", channel="websocket"), headers=admin
    )
    sid = r.json()["id"]
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect("/fhir/websocket") as ws,
    ):
        ws.receive_text()
    assert refused.value.code == 1008
    other = mint.headers("system/Patient.rs")
    with client.websocket_connect("/fhir/websocket", headers=other) as ws:
        ws.send_text(f"bind {sid}")
        assert ws.receive_text() == f"error {sid} this token may not read Subscriptions"
    reader = mint.headers("system/Subscription.rs")
    with client.websocket_connect("/fhir/websocket", headers=reader) as ws:
        ws.send_text("bind no-such-id")
        assert ws.receive_text() == "error no-such-id no such Subscription"
        ws.send_text(f"bind {sid}")
        assert ws.receive_text() == f"bound {sid}"
        _write_observations(client, mint, "w")
        assert [ws.receive_text() for _ in range(3)] == [f"ping {sid}"] * 3


def test_websocket_pings_and_capability(settings: Settings) -> None:
    """Without authorization: bind, then a ping per matching write, none for others;
    the CapabilityStatement names the websocket URL."""
    with app_client(settings) as client:
        meta = client.get("/fhir/metadata").json()
        (ext,) = [e for e in meta["rest"][0]["extension"] if e["url"].endswith("-websocket")]
        assert ext["valueUri"] == "ws://testserver/fhir/websocket"
        criteria = "Patient?family=Ping"
        r = client.post("/fhir/Subscription", json=subscription(criteria, channel="websocket"))
        sid = r.json()["id"]
        rest = client.post(
            "/fhir/Subscription", json=subscription("Patient", "http://127.0.0.1:9/x")
        )
        assert rest.status_code == 422  # the default allow-list: public addresses only
        with client.websocket_connect("/fhir/websocket") as ws:
            ws.send_text("hello")
            assert ws.receive_text().startswith("error")
            ws.send_text(f"bind {sid}")
            assert ws.receive_text() == f"bound {sid}"
            client.post(
                "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Other"}]}
            )
            client.post(
                "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Ping"}]}
            )
            assert ws.receive_text() == f"ping {sid}"
