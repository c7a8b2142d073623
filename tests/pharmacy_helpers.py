"""Medicines, receipts and dispenses for the pharmacy tests (issue 16)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import put

ATC = "http://www.whocc.no/atc"
PARACETAMOL = {"coding": [{"system": ATC, "code": "N02BE01"}], "text": "Paracetamol 500 mg"}
ADJUSTMENT = "urn:fhir-server:StructureDefinition/stock-adjustment"
THRESHOLD = "urn:fhir-server:StructureDefinition/stock-threshold"
DISPENSED_BATCH = "urn:fhir-server:StructureDefinition/dispensed-batch"


def medication(code: dict[str, Any] = PARACETAMOL, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Medication", "code": code, "status": "active", **extra}


def batch(lot: str, expiry: str, code: dict[str, Any] = PARACETAMOL) -> dict[str, Any]:
    return medication(code, batch={"lotNumber": lot, "expirationDate": expiry})


def receipt(
    item: str, amount: float | int, place: str = "Location/farmacia", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "SupplyDelivery",
        "status": "completed",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/supply-item-type",
                    "code": "medication",
                }
            ]
        },
        "suppliedItem": {"quantity": {"value": amount}, "itemReference": {"reference": item}},
        "destination": {"reference": place},
        **extra,
    }


def adjustment(item: str, amount: int, reason: str, place: str = "Location/farmacia") -> Any:
    return receipt(
        item,
        amount,
        place,
        extension=[{"url": ADJUSTMENT, "valueCodeableConcept": {"text": reason}}],
    )


def dispense(
    amount: float | int,
    medication_ref: str = "Medication/para",
    place: str | None = "Location/farmacia",
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationReference": {"reference": medication_ref},
        "subject": {"reference": "Patient/pa"},
        "quantity": {"value": amount},
        **extra,
    }
    if place is not None:
        resource["location"] = {"reference": place}
    return resource


def seed(client: TestClient, *resources: tuple[str, dict[str, Any]]) -> None:
    for rid, resource in resources:
        r = put(client, {**resource, "id": rid})
        assert r.status_code in (200, 201), r.text


def pharmacy(client: TestClient, **lots: str) -> None:
    """The pharmacy Location, the product Medication ``para`` and one batch Medication
    per ``lot=expiry``."""
    seed(
        client,
        ("farmacia", {"resourceType": "Location", "name": "Farmacia", "status": "active"}),
        ("bodega", {"resourceType": "Location", "name": "Bodega", "status": "active"}),
        ("para", medication()),
        *((lot, batch(lot.upper(), expiry)) for lot, expiry in lots.items()),
    )


def stock(client: TestClient, url: str, **headers: str) -> dict[str, Any]:
    """$stock as {(lot, location): quantity} and the usable totals per location."""
    r = client.get(url, headers=headers)
    assert r.status_code == 200, r.text
    held: dict[Any, Any] = {}
    for p in r.json()["parameter"]:
        parts = {q["name"]: q for q in p["part"]}
        value = Decimal(str(parts["quantity"]["valueQuantity"]["value"]))
        place = parts["location"]["valueReference"]["reference"]
        if p["name"] == "batch":
            lot = parts.get("lotNumber", {}).get("valueString")
            held[(lot, place)] = value
        else:
            held[("total", place)] = value
    return held


def dispensed_lots(resource: dict[str, Any]) -> list[tuple[str, Decimal]]:
    out = []
    for ext in resource.get("extension", []):
        if ext["url"] == DISPENSED_BATCH:
            parts = {e["url"]: e for e in ext["extension"]}
            out.append(
                (
                    parts["lotNumber"]["valueString"],
                    Decimal(str(parts["quantity"]["valueQuantity"]["value"])),
                )
            )
    return out
