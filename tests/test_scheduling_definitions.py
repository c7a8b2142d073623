"""The scheduling operations' OperationDefinitions (issue 12): the CapabilityStatement
declares $find, $hold, $book and $cancel, and each ``definition`` canonical resolves to
an OperationDefinition this server serves (capabilitystatement.html#CapabilityStatement
.rest.resource.operation.definition: "Where the formal definition can be found"),
installed once at start-up however often the server starts, and saying what the
operations really accept."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, assert_outcome, expressions, put
from pymongo import AsyncMongoClient, MongoClient
from scheduling_helpers import appointment, seed_slots, slot

from fhir_server.app import create_app
from fhir_server.search.registry import Registry
from fhir_server.service.shipped import install
from fhir_server.storage import Storage
from fhir_server.workflows.scheduling.definitions import shipment


def declared(client: TestClient) -> list[dict[str, str]]:
    statement = client.get("/fhir/metadata").json()
    (found,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Appointment"]
    return found["operation"]  # type: ignore[no-any-return]


def definition(client: TestClient, url: str) -> dict[str, Any]:
    r = client.get("/fhir/OperationDefinition", params={"url": url})
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["total"] == 1, url
    return bundle["entry"][0]["resource"]  # type: ignore[no-any-return]


def inputs(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in d["parameter"] if p["use"] == "in"}


def test_each_declared_operation_resolves_to_a_served_definition(client):
    ops = declared(client)
    assert [op["name"] for op in ops] == ["find", "hold", "book", "cancel"]
    for op in ops:
        found = definition(client, op["definition"])
        assert found["code"] == op["name"] and found["resource"] == ["Appointment"]
        assert found["kind"] == "operation" and found["status"] == "active"
        by_id = client.get(f"/fhir/OperationDefinition/{found['id']}")
        assert by_id.status_code == 200 and by_id.json()["url"] == op["definition"]
    cancel = definition(client, ops[3]["definition"])
    assert cancel["instance"] is True and cancel["type"] is False
    assert set(inputs(cancel)) == {"reason"}
    find = definition(client, ops[0]["definition"])
    assert {n: (p["min"], p["max"]) for n, p in inputs(find).items()} == {
        "start": (1, "1"),
        "end": (1, "1"),
        "practitioner": (0, "*"),
        "location": (0, "*"),
        "location-reference": (0, "*"),
        "specialty": (0, "*"),
        "service-type": (0, "*"),
        "visit-type": (0, "*"),
        "_count": (0, "1"),
    }
    # R4 form: code parameters are strings searched as tokens (OperationDefinition
    # .parameter.searchType, "how the parameter is understood as a search parameter")
    assert inputs(find)["specialty"]["searchType"] == "token"
    for name in ("hold", "book"):
        d = definition(client, next(op["definition"] for op in ops if op["name"] == name))
        assert set(inputs(d)) == {"appointment", "appt-resource", "appt-id"}
        (out,) = [p for p in d["parameter"] if p["use"] == "out"]
        assert out["type"] == "Bundle"


def test_every_declared_find_parameter_is_accepted_and_no_other(client):
    find = definition(client, declared(client)[0]["definition"])
    values = {
        "start": "2030-03-04T09:00:00Z",
        "end": "2030-03-04T10:00:00Z",
        "practitioner": "Practitioner/dr",
        "location": "Location/room1",
        "location-reference": "Location/room1",
        "specialty": "urn:spec|card",
        "service-type": "urn:svc|x",
        "visit-type": "urn:visit|y",
        "_count": "5",
    }
    assert set(values) == set(inputs(find))
    for name in inputs(find):
        params = {"start": values["start"], "end": values["end"], name: values[name]}
        r = client.get("/fhir/Appointment/$find", params=params)
        assert r.status_code == 200, (name, r.text)
    r = client.get("/fhir/Appointment/$find", params={**values, "organization": "Organization/o"})
    assert expressions(assert_outcome(r, 400)) == ["organization"]


def operation(client: TestClient, name: str, param: dict[str, Any]) -> Any:
    body = {"resourceType": "Parameters", "parameter": [param]}
    return client.post(f"/fhir/Appointment/${name}", json=body, headers={"Content-Type": FHIR_JSON})


def test_hold_and_book_accept_each_declared_form_of_the_appointment(client):
    seed_slots(client, "s1", "s2")
    held = operation(
        client,
        "hold",
        {"name": "appt-resource", "resource": appointment(slot="s1", status="proposed")},
    )
    assert held.status_code == 201, held.text
    aid = held.json()["entry"][0]["resource"]["id"]
    assert client.get("/fhir/Slot/s1").json()["status"] == "busy-tentative"
    done = operation(client, "book", {"name": "appt-id", "valueUri": f"Appointment/{aid}"})
    assert done.status_code == 200, done.text
    assert done.json()["entry"][0]["resource"]["status"] == "booked"
    assert client.get("/fhir/Slot/s1").json()["status"] == "busy"
    r = operation(client, "book", {"name": "appt-id", "valueUri": "Appointment/nope"})
    assert_outcome(r, 404)
    r = operation(client, "book", {"name": "appt-id", "valueUri": "Patient/pa"})
    assert expressions(assert_outcome(r, 400)) == ["Parameters.parameter[0].value[x]"]
    both = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "appointment", "resource": appointment(slot="s2")},
            {"name": "appt-id", "valueUri": f"Appointment/{aid}"},
        ],
    }
    r = client.post("/fhir/Appointment/$book", json=both, headers={"Content-Type": FHIR_JSON})
    assert expressions(assert_outcome(r, 400)) == ["Parameters.parameter"]


def test_find_ors_a_repeated_practitioner(client):
    """Argonaut $find: "If multiple practitioner references are listed ... The response
    will contain appointments with any of these actors"."""
    for sid, doctor in (("a", "dr"), ("b", "dr2"), ("c", "dr3")):
        schedule = {
            "resourceType": "Schedule",
            "id": sid,
            "actor": [{"reference": f"Practitioner/{doctor}"}],
        }
        assert put(client, schedule).status_code == 201
        assert (
            put(
                client, {**slot(f"{sid}1"), "schedule": {"reference": f"Schedule/{sid}"}}
            ).status_code
            == 201
        )
    window = {"start": "2030-03-04T09:00:00Z", "end": "2030-03-04T10:00:00Z"}
    r = client.get(
        "/fhir/Appointment/$find",
        params=[*window.items(), ("practitioner", "dr"), ("practitioner", "Practitioner/dr3")],
    )
    assert r.status_code == 200, r.text
    found = {e["resource"]["slot"][0]["reference"] for e in r.json()["entry"]}
    assert found == {"Slot/a1", "Slot/c1"}


def test_definitions_are_installed_once_across_starts_and_racing_workers(settings):
    try:
        for _ in range(2):  # a restart: the marker says there is nothing to do
            with TestClient(create_app(settings)) as client:
                for op in declared(client):
                    assert definition(client, op["definition"])["meta"]["versionId"] == "1"
    finally:
        with MongoClient(settings.mongo_url) as mc:
            mc.drop_database(settings.database)

    async def race() -> None:
        """Two workers starting together on a fresh database (forced: no marker)."""
        async with AsyncMongoClient(settings.mongo_url, tz_aware=True) as mc:
            storage = Storage(mc, settings.database + "_race")
            await storage.ensure_indexes()
            registry = Registry.from_definitions()
            try:
                reports = await asyncio.gather(
                    *(install(storage, registry, shipment(), force=True) for _ in range(3))
                )
                assert sum(sum(r.written.values()) for r in reports) == 4
                count = await storage.current("OperationDefinition").count_documents({})
                assert count == 4
            finally:
                await mc.drop_database(settings.database + "_race")

    asyncio.run(race())
