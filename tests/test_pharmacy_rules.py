"""Prescription limits, low-stock alerts, ``$stock``'s parameters and who may see and
move stock (issue 16)."""

from __future__ import annotations

from decimal import Decimal

from fhir_helpers import assert_outcome, expressions, post, put, search
from pharmacy_helpers import THRESHOLD, dispense, medication, pharmacy, receipt, seed, stock
from scheduling_helpers import smart

D = Decimal


def request(rid: str, amount: int, repeats: int | None = None, status: str = "active") -> tuple:
    supply: dict = {"quantity": {"value": amount}}
    if repeats is not None:
        supply["numberOfRepeatsAllowed"] = repeats
    return (
        rid,
        {
            "resourceType": "MedicationRequest",
            "status": status,
            "intent": "order",
            "medicationReference": {"reference": "Medication/para"},
            "subject": {"reference": "Patient/pa"},
            "dispenseRequest": supply,
        },
    )


def against(rid: str, amount: int, **extra) -> dict:
    return dispense(
        amount, authorizingPrescription=[{"reference": f"MedicationRequest/{rid}"}], **extra
    )


def test_a_prescription_limits_what_is_dispensed_and_completes(client):
    """medicationrequest.html: dispenseRequest.quantity is "the amount that is to be
    dispensed for one fill", numberOfRepeatsAllowed the refills "in addition to the
    original dispense": 10 x (1 + 2) = 30 in all."""
    pharmacy(client, a="2031-01-31")
    post(client, receipt("Medication/a", 100))
    seed(client, request("rx", 10, repeats=2), request("done", 5, status="stopped"))
    assert post(client, against("rx", 10)).status_code == 201
    second = post(client, against("rx", 10)).json()
    too_much = post(client, against("rx", 11))
    issues = assert_outcome(too_much, 422)
    assert expressions(issues) == ["MedicationDispense.quantity"]
    assert "allows 30 in all" in issues[0]["diagnostics"]
    assert post(client, against("rx", 10)).status_code == 201
    assert client.get("/fhir/MedicationRequest/rx").json()["status"] == "completed"
    # cancelling a fill reopens the prescription it completed
    assert put(client, {**second, "status": "entered-in-error"}).status_code == 200
    assert client.get("/fhir/MedicationRequest/rx").json()["status"] == "active"
    assert post(client, against("rx", 10)).status_code == 201
    # only an active prescription is dispensed; the stock is untouched by a refusal
    refused = post(client, against("done", 1))
    assert expressions(assert_outcome(refused, 422)) == [
        "MedicationDispense.authorizingPrescription"
    ]
    assert stock(client, "/fhir/$stock")[("A", "Location/farmacia")] == D(70)


def _threshold(minimum: int) -> dict:
    return medication(
        extension=[
            {
                "url": THRESHOLD,
                "extension": [
                    {"url": "location", "valueReference": {"reference": "Location/farmacia"}},
                    {"url": "minimum", "valueQuantity": {"value": minimum}},
                ],
            }
        ]
    )


def _alerts(client) -> tuple[list[str], list[str]]:
    flags = search(client, "Flag", [("subject", "Medication/para")])
    tasks = search(client, "Task", [("focus", "Medication/para")])
    return (
        sorted(e["resource"]["status"] for e in flags.get("entry", [])),
        sorted(e["resource"]["status"] for e in tasks.get("entry", [])),
    )


def test_low_stock_raises_one_flag_and_task_closed_on_replenishment(client):
    pharmacy(client, a="2031-01-31")
    assert _alerts(client) == ([], [])
    # a threshold over an empty shelf is low at once
    assert put(client, {**_threshold(10), "id": "para"}).status_code == 200
    assert _alerts(client) == (["active"], ["requested"])
    post(client, receipt("Medication/a", 15))
    assert _alerts(client) == (["inactive"], ["completed"])
    post(client, dispense(6))  # 9 left: below 10
    assert _alerts(client) == (["active", "inactive"], ["completed", "requested"])
    post(client, dispense(4))  # still low: nothing new
    assert _alerts(client) == (["active", "inactive"], ["completed", "requested"])
    flags = search(client, "Flag", [("subject", "Medication/para")])["entry"]
    (active,) = [e["resource"] for e in flags if e["resource"]["status"] == "active"]
    assert "9 (minimum 10)" in active["code"]["text"]
    post(client, receipt("Medication/a", 5))  # 10: replenished
    assert _alerts(client) == (["inactive"] * 2, ["completed"] * 2)
    post(client, dispense(1))  # low again: a new alert
    assert _alerts(client) == (
        ["active", "inactive", "inactive"],
        ["completed"] * 2 + ["requested"],
    )
    # lowering the threshold under the stock closes it at once
    assert put(client, {**_threshold(5), "id": "para"}).status_code == 200
    assert _alerts(client) == (["inactive"] * 3, ["completed"] * 3)


def test_stock_parameters_are_checked(client):
    pharmacy(client, a="2031-01-31")
    bad = client.get("/fhir/$stock?expiring-before=soon")
    assert expressions(assert_outcome(bad, 400)) == ["expiring-before"]
    unknown = client.get("/fhir/Location/farmacia/$stock?lot=1")
    assert expressions(assert_outcome(unknown, 400)) == ["lot"]
    assert_outcome(client.get("/fhir/Location/nowhere/$stock"), 404)
    assert_outcome(client.get("/fhir/Medication/nothing/$stock"), 404)
    post(client, receipt("Medication/a", 3))
    posted = client.post(
        "/fhir/Medication/para/$stock",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "location", "valueString": "farmacia"}],
        },
    )
    assert posted.status_code == 200, posted.text
    assert len(posted.json()["parameter"]) == 2  # the batch and the total


def test_a_patient_sees_no_stock_and_cannot_move_it(mongo_url):
    with smart(mongo_url) as (client, mint):
        staff = mint.headers("user/*.cruds", fhir_user="Practitioner/pharm")
        pharmacy_token = {"Authorization": staff["Authorization"]}
        for rid, resource in (
            ("farmacia", {"resourceType": "Location", "name": "Farmacia", "status": "active"}),
            ("para", medication()),
            ("a", {**medication(), "batch": {"lotNumber": "A", "expirationDate": "2031-01"}}),
            ("pa", {"resourceType": "Patient"}),
        ):
            r = put(client, {**resource, "id": rid}, **pharmacy_token)
            assert r.status_code in (200, 201), r.text
        assert post(client, receipt("Medication/a", 5), **pharmacy_token).status_code == 201
        assert post(client, dispense(2), **pharmacy_token).status_code == 201
        patient = mint.headers("patient/*.cruds", patient="pa")
        assert_outcome(client.get("/fhir/$stock", headers=patient), 403)
        assert_outcome(client.get("/fhir/Medication/para/$stock", headers=patient), 403)
        # a patient app cannot hand itself medicines from the stock
        assert post(client, dispense(1), **patient).status_code == 403
        reader = mint.headers("user/SupplyDelivery.rs user/Medication.rs user/Location.rs")
        held = stock(client, "/fhir/Medication/para/$stock", **reader)
        assert held[("A", "Location/farmacia")] == D(3)
        no_scope = mint.headers("user/Medication.rs")
        assert_outcome(client.get("/fhir/Medication/para/$stock", headers=no_scope), 403)


def test_stock_is_declared_and_its_definition_is_served(client):
    """capabilitystatement.html: rest.resource.operation.definition and rest.operation
    are canonical URLs; this server holds the OperationDefinition each one names."""
    rest = client.get("/fhir/metadata").json()["rest"][0]
    by_type = {r["type"]: r.get("operation", []) for r in rest["resource"]}
    url = "urn:fhir-server:OperationDefinition/stock"
    assert {"name": "stock", "definition": url} in by_type["Location"]
    assert {"name": "stock", "definition": url} in by_type["Medication"]
    assert {"name": "stock", "definition": url} in rest["operation"]
    found = search(client, "OperationDefinition", [("url", url)])["entry"]
    definition = found[0]["resource"]
    assert (definition["code"], definition["system"], definition["instance"]) == (
        "stock",
        True,
        True,
    )
    assert {p["name"] for p in definition["parameter"]} == {
        "medication",
        "location",
        "expiring-before",
        "return",
    }
