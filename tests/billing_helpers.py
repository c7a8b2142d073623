"""Prices, dispenses, encounters and invoices for the billing tests (issue 16)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, put

from profiles.clinics import CEDULA, IVA, RUC, SRI_TAX

ISSUER = "Organization/clinic"
NUMBER = "urn:fhir-server:ec:invoice-number"
MEDS = "http://snomed.info/sct"
PROCS = "urn:clinica:procedimientos"
PARACETAMOL = (MEDS, "387517004")
AMOXICILINA = (MEDS, "372687004")
JERINGA = (MEDS, "61968008")
CONSULTA = (PROCS, "C-001")
CURACION = (PROCS, "C-002")
TAX = {"coding": [{"system": SRI_TAX, "code": IVA}]}
PHARMACY = "Location/farmacia"


def concept(code: tuple[str, str]) -> dict[str, Any]:
    return {"coding": [{"system": code[0], "code": code[1]}]}


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def price(
    rid: str,
    code: tuple[str, str],
    base: str,
    iva: str | None = None,
    *,
    discount: dict[str, Any] | None = None,
    status: str = "active",
) -> dict[str, Any]:
    """A ChargeItemDefinition: ``iva`` the IVA factor (None: no tax component, the
    server's default rate applies). Amounts are written as JSON decimals."""
    components: list[dict[str, Any]] = [
        {"type": "base", "amount": {"value": _number(base), "currency": "USD"}}
    ]
    if iva is not None:
        components.append({"type": "tax", "code": TAX, "factor": _number(iva)})
    if discount is not None:
        components.append({"type": "discount", **discount})
    return {
        "resourceType": "ChargeItemDefinition",
        "id": rid,
        "url": f"urn:clinica:precios:{rid}",
        "status": status,
        "code": concept(code),
        "propertyGroup": [{"priceComponent": components}],
    }


def dispense(
    rid: str,
    code: tuple[str, str],
    quantity: int = 1,
    *,
    patient: str = "pa",
    status: str = "completed",
    encounter: str | None = None,
    location: str | None = PHARMACY,
) -> dict[str, Any]:
    """A dispense from the clinic's pharmacy (``location``; stock it first: ``stock``)."""
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "id": rid,
        "status": status,
        "medicationCodeableConcept": concept(code),
        "subject": {"reference": f"Patient/{patient}"},
        "quantity": {"value": quantity, "unit": "tab"},
        "whenHandedOver": "2030-01-02T10:00:00Z",
    }
    if location is not None:
        resource["location"] = {"reference": location}
    if encounter is not None:
        resource["context"] = {"reference": f"Encounter/{encounter}"}
    return resource


def stock(client: TestClient, *codes: tuple[str, str], **headers: str) -> None:
    """Plenty of each medicine at the pharmacy (a receipt of one batch each), so that
    the pharmacy's stock rules let the dispenses of the billing tests through."""
    for system, code in codes:
        lot = f"lote-{code}"
        medicine = {
            "resourceType": "Medication",
            "id": lot,
            "status": "active",
            "code": {"coding": [{"system": system, "code": code}]},
            "batch": {"lotNumber": lot, "expirationDate": "2099-12-31"},
        }
        receipt = {
            "resourceType": "SupplyDelivery",
            "id": f"in-{code}",
            "status": "completed",
            "suppliedItem": {
                "quantity": {"value": 100000},
                "itemReference": {"reference": f"Medication/{lot}"},
            },
            "destination": {"reference": PHARMACY},
        }
        write(client, medicine, receipt, **headers)


def encounter(
    rid: str,
    status: str = "in-progress",
    *,
    patient: str = "pa",
    account: str | None = None,
    provider: str = ISSUER,
) -> dict[str, Any]:
    """A visit; by default one of the clinic (``serviceProvider`` the billing issuer)."""
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": rid,
        "status": status,
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
        },
        "subject": {"reference": f"Patient/{patient}"},
        "serviceProvider": {"reference": provider},
    }
    if account is not None:
        resource["account"] = [{"reference": f"Account/{account}"}]
    return resource


def procedure(
    rid: str,
    code: tuple[str, str],
    encounter: str,
    *,
    patient: str = "pa",
    status: str = "completed",
) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": rid,
        "status": status,
        "code": concept(code),
        "subject": {"reference": f"Patient/{patient}"},
        "encounter": {"reference": f"Encounter/{encounter}"},
        "performedDateTime": "2030-01-02T09:30:00Z",
    }


def people(client: TestClient, *patients: str, **headers: str) -> None:
    """The clinic (with its RUC), the patients (with a cédula each), and the medicines
    in stock at the pharmacy."""
    clinic = {
        "resourceType": "Organization",
        "id": "clinic",
        "name": "Clínica Central",
        "identifier": [{"system": RUC, "value": "1790012345001"}],
    }
    assert put(client, clinic, **headers).status_code in (200, 201)
    for i, pid in enumerate(patients or ("pa",)):
        person = {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{"system": CEDULA, "value": f"17100340{i:02d}"}],
            "name": [{"family": pid}],
        }
        r = put(client, person, **headers)
        assert r.status_code in (200, 201), r.text
    stock(client, PARACETAMOL, AMOXICILINA, JERINGA, **headers)


def write(client: TestClient, *resources: dict[str, Any], **headers: str) -> None:
    for resource in resources:
        r = put(client, resource, **headers)
        assert r.status_code in (200, 201), r.text


def charge_items(client: TestClient, **params: str) -> list[dict[str, Any]]:
    headers = {k: v for k, v in params.items() if k == "Authorization"}
    query = {k: v for k, v in params.items() if k != "Authorization"}
    r = client.get("/fhir/ChargeItem", params={"_count": "100", **query}, headers=headers)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def generate(
    client: TestClient, patient: str = "pa", encounter: str | None = None, **headers: str
) -> Any:
    params: list[dict[str, Any]] = [
        {"name": "patient", "valueReference": {"reference": f"Patient/{patient}"}}
    ]
    if encounter is not None:
        params.append(
            {"name": "encounter", "valueReference": {"reference": f"Encounter/{encounter}"}}
        )
    body = {"resourceType": "Parameters", "parameter": params}
    return client.post(
        "/fhir/Invoice/$generate", json=body, headers={"Content-Type": FHIR_JSON, **headers}
    )


def issue(client: TestClient, rid: str, **headers: str) -> Any:
    return client.post(f"/fhir/Invoice/{rid}/$issue", headers=headers)


def number(invoice: dict[str, Any]) -> str | None:
    found = [i["value"] for i in invoice.get("identifier", []) if i.get("system") == NUMBER]
    return found[0] if found else None


def exact(r: Any) -> Any:
    """A response's JSON with its decimals as written (1.50 stays 1.50)."""
    return json.loads(r.text, parse_float=Decimal)


def components(line: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """type -> (amount, factor) as written, of a line item (parsed with ``exact``)."""
    return {
        c["type"]: (str(c["amount"]["value"]), None if "factor" not in c else str(c["factor"]))
        for c in line["priceComponent"]
    }
