"""SMART scopes and billing (issue 16): a patient's token reads its own invoices only,
and never makes, issues, changes or pays one; staff tokens do what their scopes allow.
SMART App Launch, scopes: "patient/ ... the specific patient in context". Invoice is in
the Patient compartment through subject, patient and recipient
(compartmentdefinition-patient)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from billing_helpers import (
    ISSUER,
    PARACETAMOL,
    dispense,
    generate,
    issue,
    people,
    price,
    write,
)
from fastapi.testclient import TestClient
from fhir_helpers import assert_outcome, expressions, put
from scheduling_helpers import smart
from smart_helpers import TokenMint

PATIENT_APP = "patient/Invoice.rs patient/ChargeItem.rs patient/Patient.r"
GREEDY_APP = "patient/*.cruds"
CLERK = "user/Invoice.cruds user/ChargeItem.cruds user/Patient.rs user/Account.rs"


@pytest.fixture
def world(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint, dict[str, Any]]]:
    with smart(mongo_url, billing_issuer=ISSUER) as (client, mint):
        admin = mint.headers("system/*.cruds")
        people(client, "pa", "pb", **admin)
        write(client, price("paracetamol", PARACETAMOL, "0.25", "0"), **admin)
        write(client, dispense("da", PARACETAMOL, 4, patient="pa"), **admin)
        write(client, dispense("db", PARACETAMOL, 8, patient="pb"), **admin)
        invoices = {}
        for pid in ("pa", "pb"):
            r = generate(client, pid, **admin)
            assert r.status_code == 201, r.text
            invoices[pid] = r.json()
        yield client, mint, invoices


def test_a_patient_reads_its_own_invoices_only(world):
    client, mint, invoices = world
    pa = mint.headers(PATIENT_APP, patient="pa")
    mine, theirs = invoices["pa"]["id"], invoices["pb"]["id"]
    assert client.get(f"/fhir/Invoice/{mine}", headers=pa).status_code == 200
    assert client.get(f"/fhir/Invoice/{theirs}", headers=pa).status_code == 404
    listed = client.get("/fhir/Invoice", headers=pa).json()
    assert [e["resource"]["id"] for e in listed.get("entry", [])] == [mine]
    found = client.get("/fhir/Invoice", params={"recipient": "Patient/pb"}, headers=pa).json()
    assert not found.get("entry")
    items = client.get("/fhir/ChargeItem", headers=pa).json()
    assert {e["resource"]["subject"]["reference"] for e in items["entry"]} == {"Patient/pa"}


def test_a_patient_token_makes_no_invoice(world):
    client, mint, invoices = world
    for scopes in (PATIENT_APP, GREEDY_APP):
        pa = mint.headers(scopes, patient="pa")
        assert_outcome(generate(client, "pa", **pa), 403)
        assert_outcome(generate(client, "pb", **pa), 403)
        assert_outcome(issue(client, invoices["pa"]["id"], **pa), 403)
        assert_outcome(client.post("/fhir/Account/x/$invoice", headers=pa), 403)
    pa = mint.headers(GREEDY_APP, patient="pa")
    # nor by REST, even with scopes that would allow writing in its compartment
    paid = {**invoices["pa"], "status": "cancelled"}
    assert_outcome(put(client, paid, **pa), 403)
    assert client.get(f"/fhir/Invoice/{paid['id']}", headers=pa).json()["status"] == "draft"


def test_staff_scopes_apply(world):
    client, mint, invoices = world
    reader = mint.headers("user/Invoice.rs user/ChargeItem.rs", fhir_user="Practitioner/x")
    assert_outcome(issue(client, invoices["pa"]["id"], **reader), 403)
    assert_outcome(generate(client, "pa", **reader), 403)
    clerk = mint.headers(CLERK, fhir_user="Practitioner/clerk")
    r = issue(client, invoices["pa"]["id"], **clerk)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "issued"


def test_billed_follows_the_invoice(world):
    """A client cannot take a ChargeItem off its invoice by hand: cancelling the
    invoice does that."""
    client, mint, invoices = world
    clerk = mint.headers(CLERK, fhir_user="Practitioner/clerk")
    line = invoices["pa"]["lineItem"][0]["chargeItemReference"]["reference"]
    item = client.get(f"/fhir/{line}", headers=clerk).json()
    assert item["status"] == "billed"
    for changed in ({**item, "status": "billable"}, {**item, "note": [{"text": "x"}]}):
        r = put(client, changed, **clerk)
        assert expressions(assert_outcome(r, 422)) == ["ChargeItem.status"]
    cancelled = {**invoices["pa"], "status": "cancelled"}
    assert put(client, cancelled, **clerk).status_code == 200
    assert client.get(f"/fhir/{line}", headers=clerk).json()["status"] == "billable"
