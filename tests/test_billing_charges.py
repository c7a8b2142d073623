"""ChargeItems made by the billing rules (issue 16), once each, on every write path:
a completed MedicationDispense, a finished Encounter's Procedures.

chargeitem.html: "The resource ChargeItem describes the provision of healthcare
provider products for a certain patient, therefore referring not only to the product,
but containing in addition details of the provision, like date, time, amounts and
participating organizations and persons."
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from billing_helpers import (
    AMOXICILINA,
    CONSULTA,
    CURACION,
    ISSUER,
    PARACETAMOL,
    charge_items,
    dispense,
    encounter,
    people,
    price,
    procedure,
    write,
)
from fastapi.testclient import TestClient
from fhir_helpers import (
    app_client,
    assert_outcome,
    bundle_response,
    entry,
    expressions,
    post_bundle,
    put,
)

from fhir_server.config import Settings


@pytest.fixture
def billing(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings, billing_issuer=ISSUER) as client:
        people(client)
        yield client


def test_a_completed_dispense_is_charged_once(billing):
    write(billing, price("paracetamol", PARACETAMOL, "0.25", "0"))
    write(billing, dispense("d1", PARACETAMOL, 20, status="in-progress"))
    assert charge_items(billing) == []
    write(billing, dispense("d1", PARACETAMOL, 20))
    (item,) = charge_items(billing)
    assert item["status"] == "billable"
    assert item["subject"] == {"reference": "Patient/pa"}
    assert item["service"] == [{"reference": "MedicationDispense/d1"}]
    assert item["code"]["coding"][0]["code"] == PARACETAMOL[1]
    assert item["quantity"]["value"] == 20
    assert item["definitionCanonical"] == ["urn:clinica:precios:paracetamol"]
    # the same dispense written again, changed, or replayed: still one charge
    write(billing, dispense("d1", PARACETAMOL, 20))
    write(billing, {**dispense("d1", PARACETAMOL, 20), "note": [{"text": "con comida"}]})
    assert len(charge_items(billing)) == 1


def test_a_replayed_transaction_charges_once(billing):
    bundle = [
        entry("PUT", "Encounter/e1", encounter("e1")),
        entry("PUT", "MedicationDispense/d2", dispense("d2", AMOXICILINA, 2, encounter="e1")),
    ]
    bundle_response(post_bundle(billing, bundle))
    bundle_response(post_bundle(billing, bundle))  # the client retries: same content
    # and as a batch, too
    bundle_response(post_bundle(billing, bundle, "batch"), "batch-response")
    (item,) = charge_items(billing)
    assert item["context"] == {"reference": "Encounter/e1"}
    assert "definitionCanonical" not in item  # no price for it (yet)


def test_two_dispenses_in_one_transaction_are_two_charges(billing):
    bundle = [
        entry("PUT", "MedicationDispense/a", dispense("a", PARACETAMOL)),
        entry("PUT", "MedicationDispense/b", dispense("b", PARACETAMOL)),
        entry("POST", "MedicationDispense", dispense("c", AMOXICILINA, status="preparation")),
    ]
    bundle_response(post_bundle(billing, bundle))
    services = sorted(i["service"][0]["reference"] for i in charge_items(billing))
    assert services == ["MedicationDispense/a", "MedicationDispense/b"]


def test_a_dispense_not_from_this_pharmacy_is_not_charged(billing):
    """Without a location a dispense was not given from a stock kept here (another
    pharmacy, or history an importer brings, billed by the old system): no charge."""
    write(billing, dispense("elsewhere", PARACETAMOL, location=None))
    assert charge_items(billing) == []


def test_a_voided_dispense_voids_its_charge(billing):
    write(billing, dispense("d1", PARACETAMOL))
    write(billing, dispense("d1", PARACETAMOL, status="entered-in-error"))
    (item,) = charge_items(billing)
    assert item["status"] == "entered-in-error"
    # and it is not charged again if it comes back: once each
    write(billing, dispense("d1", PARACETAMOL))
    assert len(charge_items(billing)) == 1


def test_a_finished_encounter_charges_its_procedures(billing):
    write(
        billing,
        encounter("e1", account="acc"),
        procedure("p1", CONSULTA, "e1"),
        procedure("p2", CURACION, "e1"),
        procedure("p3", CURACION, "e1", status="not-done"),
        procedure("other", CONSULTA, "e2"),
    )
    assert charge_items(billing) == []  # the visit is not over
    write(billing, encounter("e1", "finished", account="acc"))
    items = charge_items(billing)
    assert sorted(i["service"][0]["reference"] for i in items) == [
        "Procedure/p1",
        "Procedure/p2",
    ]
    assert all(i["context"] == {"reference": "Encounter/e1"} for i in items)
    assert all(i["account"] == [{"reference": "Account/acc"}] for i in items)
    assert all(i["quantity"] == {"value": 1} for i in items)
    # a procedure recorded after the visit closed is charged too; a rewrite is not
    write(billing, procedure("p4", CONSULTA, "e1"), encounter("e1", "finished"))
    write(billing, {**procedure("p1", CONSULTA, "e1"), "note": [{"text": "ok"}]})
    assert len(charge_items(billing)) == 3


def test_only_the_clinics_own_encounters_are_charged(billing):
    """encounter.html: serviceProvider is "the organization that is primarily
    responsible for this Encounter's services". A visit at another provider, exchanged
    through this server (a referral, a summary), is not the clinic's to charge."""
    write(
        billing,
        encounter("elsewhere", "finished", provider="Organization/hospital"),
        procedure("x1", CONSULTA, "elsewhere"),
    )
    assert charge_items(billing) == []
    write(billing, encounter("ours", "finished"), procedure("x2", CONSULTA, "ours"))
    assert [i["service"][0]["reference"] for i in charge_items(billing)] == ["Procedure/x2"]


def test_nothing_is_charged_for_encounters_without_a_billing_organization(settings):
    with app_client(settings) as client:  # FHIR_BILLING_ISSUER not set
        write(client, encounter("e1", "finished"), procedure("p1", CONSULTA, "e1"))
        assert charge_items(client) == []


def test_an_encounter_finished_in_the_same_transaction_as_its_procedures(billing):
    bundle = [
        entry("PUT", "Encounter/e9", encounter("e9", "finished")),
        entry("PUT", "Procedure/q1", procedure("q1", CONSULTA, "e9")),
    ]
    bundle_response(post_bundle(billing, bundle))
    bundle_response(post_bundle(billing, bundle))
    (item,) = charge_items(billing)
    assert item["service"] == [{"reference": "Procedure/q1"}]


def test_a_code_has_one_active_price(billing):
    write(billing, price("consulta", CONSULTA, "30.00", "0"))
    r = put(billing, price("consulta-2", CONSULTA, "35.00", "0"))
    assert expressions(assert_outcome(r, 409)) == ["ChargeItemDefinition.code"]
    write(billing, price("consulta", CONSULTA, "30.00", "0", status="retired"))
    write(billing, price("consulta-2", CONSULTA, "35.00", "0"))


def test_a_dispense_from_stock_is_charged_once(billing):
    """With the pharmacy's stock rules on the same write (they amend the dispense with
    the batches taken): the Medication's code is charged, once."""
    atc = ("http://www.whocc.no/atc", "N02BE01")
    medicine = {
        "resourceType": "Medication",
        "id": "para",
        "status": "active",
        "code": {"coding": [{"system": atc[0], "code": atc[1]}]},
        "batch": {"lotNumber": "L1", "expirationDate": "2099-01-01"},
    }
    delivery = {
        "resourceType": "SupplyDelivery",
        "id": "in1",
        "status": "completed",
        "suppliedItem": {
            "quantity": {"value": 100},
            "itemReference": {"reference": "Medication/para"},
        },
        "destination": {"reference": "Location/farmacia"},
    }
    write(billing, price("para", atc, "0.10", "0"), medicine, delivery)
    given = {
        "resourceType": "MedicationDispense",
        "id": "out1",
        "status": "completed",
        "medicationReference": {"reference": "Medication/para"},
        "subject": {"reference": "Patient/pa"},
        "quantity": {"value": 10},
        "location": {"reference": "Location/farmacia"},
    }
    write(billing, given)
    r = post_bundle(billing, [entry("PUT", "MedicationDispense/out1", given)])
    bundle_response(r)
    (item,) = charge_items(billing)
    assert item["code"]["coding"] == [{"system": atc[0], "code": atc[1]}]
    assert item["definitionCanonical"] == ["urn:clinica:precios:para"]
    assert item["quantity"] == {"value": 10}


def test_concurrent_writes_of_one_dispense_charge_once(billing):
    """Ten clients complete the same dispense at once (each a different version): the
    charge key makes one ChargeItem; and a conditional create replayed matches."""

    def complete(n: int) -> int:
        changed = {**dispense("d1", PARACETAMOL, 5), "note": [{"text": f"intento {n}"}]}
        return put(billing, changed).status_code

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(complete, range(10)))
    assert set(codes) <= {200, 201}, codes
    assert len(charge_items(billing)) == 1
    once = {**dispense("x", AMOXICILINA), "identifier": [{"system": "urn:t", "value": "1"}]}
    once.pop("id")
    for _ in range(2):
        r = billing.post(
            "/fhir/MedicationDispense",
            json=once,
            headers={
                "Content-Type": "application/fhir+json",
                "If-None-Exist": "identifier=urn:t|1",
            },
        )
        assert r.status_code in (200, 201), r.text
    assert len(charge_items(billing)) == 2
