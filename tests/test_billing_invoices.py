"""Draft invoices built from billable ChargeItems (issue 16): Invoice/$generate and
Account/[id]/$invoice, with totals checked by hand.

Rounding (docs/billing.md): each line's amounts to the cent, half up, the IVA on the
line's net after discount; totals are the sums of the rounded lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from billing_helpers import (
    CONSULTA,
    CURACION,
    ISSUER,
    JERINGA,
    PARACETAMOL,
    PROCS,
    charge_items,
    components,
    dispense,
    encounter,
    exact,
    generate,
    people,
    price,
    procedure,
    write,
)
from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, app_client, assert_outcome, expressions, put

from fhir_server.config import Settings
from profiles.clinics import CEDULA, INVOICE, RUC

CERTIFICADO = (PROCS, "C-003")
KIT = (PROCS, "C-004")


@pytest.fixture
def billing(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings, billing_issuer=ISSUER) as client:
        people(client, "pa", "pb")
        write(
            client,
            price("paracetamol", PARACETAMOL, "0.25", "0"),  # a medicine: exempt
            price("jeringa", JERINGA, "0.35", "0.15"),  # a supply: 15 %
            price("consulta", CONSULTA, "30.00", "0"),  # a medical service: exempt
            price("certificado", CERTIFICADO, "12.50", "0.15", discount={"factor": 0.10}),
            price("kit", KIT, "8.00"),  # no tax component: FHIR_BILLING_IVA_RATE
        )
        yield client


def by_service(client: TestClient) -> dict[str, dict[str, Any]]:
    return {i["service"][0]["reference"]: i for i in charge_items(client)}


def visit(client: TestClient) -> None:
    """What patient pa had: two dispenses, and a visit with three procedures, the
    consultation at a price the operator lowered to 20.00."""
    write(
        client,
        dispense("d1", PARACETAMOL, 20, encounter="e1"),
        dispense("d2", JERINGA, 2, encounter="e1"),
        encounter("e1"),
        procedure("p1", CONSULTA, "e1"),
        procedure("p2", CERTIFICADO, "e1"),
        procedure("p3", KIT, "e1"),
        encounter("e1", "finished"),
    )
    consult = by_service(client)["Procedure/p1"]
    write(client, {**consult, "priceOverride": {"value": 20.00, "currency": "USD"}})


def test_totals_of_a_mix_of_iva_rates_by_hand(billing):
    """Base, discount and IVA per line:

    | item                         | base  | discount | net   | IVA              |
    | paracetamol 20 x 0.25, 0 %   |  5.00 |          |  5.00 | 0.00             |
    | jeringa 2 x 0.35, 15 %       |  0.70 |          |  0.70 | 0.105 -> 0.11    |
    | consulta 30.00 -> 20.00, 0 % | 20.00 |          | 20.00 | 0.00             |
    | certificado 12.50, -10 %, 15%| 12.50 | 1.25     | 11.25 | 1.6875 -> 1.69   |
    | kit 8.00, default 15 %       |  8.00 |          |  8.00 | 1.20             |

    totalNet 44.95, IVA 3.00, totalGross 47.95. (0.105 rounds half up to 0.11; half
    even would give 0.10.)"""
    visit(billing)
    r = generate(billing, "pa", "e1")
    assert r.status_code == 201, r.text
    invoice = exact(r)
    assert r.headers["Location"].startswith(f"http://testserver/fhir/Invoice/{invoice['id']}/")
    assert invoice["status"] == "draft"
    assert invoice["meta"]["profile"] == [INVOICE]  # validated against ec-invoice
    assert invoice["subject"] == {"reference": "Patient/pa"}
    assert invoice["recipient"] == {
        "reference": "Patient/pa",
        "identifier": {"system": CEDULA, "value": "1710034000"},
    }
    assert invoice["issuer"] == {
        "reference": ISSUER,
        "identifier": {"system": RUC, "value": "1790012345001"},
    }
    items = by_service(billing)
    lines = {line["chargeItemReference"]["reference"]: line for line in invoice["lineItem"]}
    expected = {
        "MedicationDispense/d1": {"base": ("5.00", None), "tax": ("0.00", "0")},
        "MedicationDispense/d2": {"base": ("0.70", None), "tax": ("0.11", "0.15")},
        "Procedure/p1": {"base": ("20.00", None), "tax": ("0.00", "0")},
        "Procedure/p2": {
            "base": ("12.50", None),
            "discount": ("1.25", None),
            "tax": ("1.69", "0.15"),
        },
        "Procedure/p3": {"base": ("8.00", None), "tax": ("1.20", "0.15")},
    }
    for service, wanted in expected.items():
        assert components(lines[f"ChargeItem/{items[service]['id']}"]) == wanted, service
    assert [line["sequence"] for line in invoice["lineItem"]] == [1, 2, 3, 4, 5]
    assert invoice["totalNet"] == {"value": Decimal("44.95"), "currency": "USD"}
    assert invoice["totalGross"] == {"value": Decimal("47.95"), "currency": "USD"}
    assert str(invoice["totalNet"]["value"]) == "44.95"
    # the invoiced items are billed, and not invoiced twice
    assert {i["status"] for i in by_service(billing).values()} == {"billed"}
    again = generate(billing, "pa")
    assert expressions(assert_outcome(again, 422)) == ["Parameters.parameter[0]"]


def test_generate_for_a_patient_or_one_encounter(billing):
    write(
        billing,
        encounter("e2"),
        dispense("d1", PARACETAMOL, 4),
        dispense("d2", PARACETAMOL, 8, encounter="e2"),
        dispense("d3", PARACETAMOL, 100, patient="pb"),
    )
    r = generate(billing, "pa", "e2")
    assert r.status_code == 201, r.text
    assert len(r.json()["lineItem"]) == 1 and r.json()["totalGross"]["value"] == 2.00
    r = generate(billing, "pa")
    assert r.status_code == 201, r.text
    assert len(r.json()["lineItem"]) == 1 and r.json()["totalGross"]["value"] == 1.00
    assert by_service(billing)["MedicationDispense/d3"]["status"] == "billable"


def test_account_invoice(billing):
    account = {
        "resourceType": "Account",
        "id": "acc",
        "status": "active",
        "subject": [{"reference": "Patient/pa"}],
        "owner": {"reference": ISSUER},
    }
    write(
        billing,
        account,
        encounter("e1", account="acc"),
        procedure("p1", CONSULTA, "e1"),
        procedure("p2", CURACION, "e1"),
        encounter("e1", "finished", account="acc"),
    )
    # the curación has no price: an operator sets one
    cure = by_service(billing)["Procedure/p2"]
    r = billing.post("/fhir/Account/acc/$invoice")
    assert expressions(assert_outcome(r, 422)) == ["ChargeItem.priceOverride"]
    write(billing, {**cure, "priceOverride": {"value": 15, "currency": "USD"}})
    r = billing.post("/fhir/Account/acc/$invoice")
    assert r.status_code == 201, r.text
    invoice = r.json()
    assert invoice["account"] == {"reference": "Account/acc"}
    assert invoice["totalNet"]["value"] == 45.00
    assert invoice["totalGross"]["value"] == 47.25  # 30 exempt + 15 at the default 15 %
    assert billing.post("/fhir/Account/nope/$invoice").status_code == 404


def post_parameters(client: TestClient, params: Any) -> Any:
    body = {"resourceType": "Parameters", "parameter": params}
    return client.post("/fhir/Invoice/$generate", json=body, headers={"Content-Type": FHIR_JSON})


def test_bad_input(billing):
    r = billing.post("/fhir/Invoice/$generate", json={"resourceType": "Patient"})
    assert expressions(assert_outcome(r, 400)) == ["Parameters"]
    assert expressions(assert_outcome(post_parameters(billing, []), 400)) == [
        "Parameters.parameter"
    ]
    wrong = [{"name": "patient", "valueReference": {"reference": "Observation/x"}}]
    assert expressions(assert_outcome(post_parameters(billing, wrong), 400)) == [
        "Parameters.parameter[0].value[x]"
    ]
    odd = [{"name": "patient", "valueString": "pa"}, {"name": "colour", "valueString": "x"}]
    assert expressions(assert_outcome(post_parameters(billing, odd), 400)) == [
        "Parameters.parameter[1]"
    ]
    unknown = [{"name": "patient", "valueString": "Patient/nobody"}]
    assert_outcome(post_parameters(billing, unknown), 404)
    nothing = [{"name": "patient", "valueString": "Patient/pb"}]
    assert expressions(assert_outcome(post_parameters(billing, nothing), 422)) == [
        "Parameters.parameter[0]"
    ]
    write(billing, dispense("d1", PARACETAMOL, patient="pb"))
    bad_issuer = [*nothing, {"name": "issuer", "valueString": "Organization/none"}]
    assert expressions(assert_outcome(post_parameters(billing, bad_issuer), 422)) == [
        "Parameters.parameter[1].value[x]"
    ]
    assert by_service(billing)["MedicationDispense/d1"]["status"] == "billable"


def test_without_an_issuer(settings):
    with app_client(settings) as client:
        people(client)
        write(client, price("paracetamol", PARACETAMOL, "0.25", "0"), dispense("d", PARACETAMOL))
        r = generate(client)
        issues = assert_outcome(r, 422)
        assert "FHIR_BILLING_ISSUER" in issues[0]["diagnostics"]


def test_an_invoice_written_by_hand_holds_its_items(billing):
    """The rule, not the operation, bills the items: a draft PUT by hand does too, and
    the same item cannot go on two invoices."""
    write(billing, dispense("d1", PARACETAMOL, 4))
    item = by_service(billing)["MedicationDispense/d1"]
    draft = {
        "resourceType": "Invoice",
        "id": "hand",
        "status": "draft",
        "subject": {"reference": "Patient/pa"},
        "lineItem": [{"chargeItemReference": {"reference": f"ChargeItem/{item['id']}"}}],
    }
    write(billing, draft)
    assert by_service(billing)["MedicationDispense/d1"]["status"] == "billed"
    r = put(billing, {**draft, "id": "hand-2"})
    assert expressions(assert_outcome(r, (409, 422))) == ["Invoice.lineItem[0].chargeItemReference"]
    # deleting the draft returns the item
    assert billing.delete("/fhir/Invoice/hand").status_code in (200, 204)
    assert by_service(billing)["MedicationDispense/d1"]["status"] == "billable"
