"""Pharmacy and billing against a real server (issue 16): ``$stock`` latency over a full
ledger, concurrent dispensers draining one batch, and invoice generation.

    .venv/bin/python benchmarks/pharmacy.py      # 1,000 medicines x 5 batches x 3 places

A fresh ``fhir-server serve`` (one worker, embedded mongod) per run. The data: 1,000
product Medications, 5 batch Medications each (expiries spread over five years), and a
completed SupplyDelivery of every batch into each of 3 Locations: 15,000 receipts, so
15,000 ledger entries. Then:

- ``Medication/[id]/$stock`` (15 batches: every batch of the product at every place)
  and ``Location/[id]/$stock?medication=`` (5 batches) for random products;
- 20 threads dispensing one unit at a time from one product's single batch of 500
  until refused: exactly 500 dispenses must succeed and the ledger must end at 0;
- ``Invoice/$generate`` for a patient with 20 billable ChargeItems (billing.py's part).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_server.testing import ServerProcess

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ATC = "http://www.whocc.no/atc"
PLACES = ("farmacia", "bodega", "urgencias")


def code(n: int) -> dict[str, Any]:
    return {"coding": [{"system": ATC, "code": f"BENCH{n:04d}"}], "text": f"Medicina {n}"}


def receipt(batch: str, place: str, amount: int) -> dict[str, Any]:
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
        "suppliedItem": {"quantity": {"value": amount}, "itemReference": {"reference": batch}},
        "destination": {"reference": f"Location/{place}"},
    }


def put_entry(resource: dict[str, Any]) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": url}}


def post_entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def transaction(http: httpx.Client, entries: list[dict[str, Any]]) -> None:
    for i in range(0, len(entries), 500):
        body = {"resourceType": "Bundle", "type": "transaction", "entry": entries[i : i + 500]}
        r = http.post("", json=body, headers=FHIR_JSON)
        r.raise_for_status()


def load(http: httpx.Client, products: int, batches: int) -> float:
    started = time.perf_counter()
    reference: list[dict[str, Any]] = [
        {"resourceType": "Location", "id": p, "name": p.title(), "status": "active"} for p in PLACES
    ]
    for n in range(products):
        reference.append({"resourceType": "Medication", "id": f"m{n}", "code": code(n)})
        for b in range(batches):
            expiry = f"{2031 + b}-{1 + n % 12:02d}-28"
            batch = {"lotNumber": f"L{n}-{b}", "expirationDate": expiry}
            reference.append(
                {"resourceType": "Medication", "id": f"m{n}b{b}", "code": code(n), "batch": batch}
            )
    transaction(http, [put_entry(r) for r in reference])
    receipts = [
        post_entry(receipt(f"Medication/m{n}b{b}", place, 100))
        for n in range(products)
        for b in range(batches)
        for place in PLACES
    ]
    transaction(http, receipts)
    return time.perf_counter() - started


def timed(call: Callable[[], httpx.Response], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        r = call()
        out.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    return out


def summary(name: str, ms: list[float]) -> None:
    p95 = statistics.quantiles(ms, n=20)[18]
    print(f"{name:<48} p50 {statistics.median(ms):6.2f} ms   p95 {p95:6.2f} ms   n={len(ms)}")


def stock_latency(http: httpx.Client, products: int, rounds: int) -> None:
    rng = random.Random(16)
    by_product = timed(lambda: http.get(f"Medication/m{rng.randrange(products)}/$stock"), rounds)
    summary("Medication/[id]/$stock (15 batches)", by_product)
    at_place = timed(
        lambda: http.get(
            "Location/farmacia/$stock", params={"medication": f"m{rng.randrange(products)}"}
        ),
        rounds,
    )
    summary("Location/[id]/$stock?medication= (5 batches)", at_place)
    r = http.get("Medication/m0/$stock")
    assert len(r.json()["parameter"]) == 15 + 3, r.text  # 15 batches, 3 totals


def contest(base: str, units: int, dispensers: int) -> None:
    with httpx.Client(base_url=base, timeout=60) as http:
        http.put(
            "Medication/race", json={"resourceType": "Medication", "id": "race", "code": code(9999)}
        ).raise_for_status()
        batch = {"lotNumber": "RACE", "expirationDate": "2035-01-01"}
        body = {"resourceType": "Medication", "id": "raceb", "code": code(9999), "batch": batch}
        http.put("Medication/raceb", json=body).raise_for_status()
        http.post(
            "SupplyDelivery", json=receipt("Medication/raceb", "farmacia", units)
        ).raise_for_status()
    dispense = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationReference": {"reference": "Medication/race"},
        "location": {"reference": "Location/farmacia"},
        "quantity": {"value": 1},
    }

    def worker(_: int) -> tuple[int, int]:
        done = refused = 0
        with httpx.Client(base_url=base, timeout=60) as http:
            while True:
                r = http.post("MedicationDispense", json=dispense)
                if r.status_code == 201:
                    done += 1
                elif r.status_code == 409:
                    refused += 1
                    return done, refused
                else:
                    raise SystemExit(f"unexpected {r.status_code}: {r.text}")

    started = time.perf_counter()
    with ThreadPoolExecutor(dispensers) as pool:
        results = list(pool.map(worker, range(dispensers)))
    seconds = time.perf_counter() - started
    made = sum(d for d, _ in results)
    with httpx.Client(base_url=base, timeout=60) as http:
        left = http.get("Medication/race/$stock").json()["parameter"]
    quantities = [
        q["valueQuantity"]["value"] for p in left for q in p["part"] if q["name"] == "quantity"
    ]
    verdict = "ok" if made == units and all(q == 0 for q in quantities) else "WRONG"
    print(
        f"{dispensers} dispensers on one batch of {units}: {made} dispensed, stock left "
        f"{quantities or [0]}, {made / seconds:.0f} dispenses/s: {verdict}"
    )
    if verdict != "ok":
        raise SystemExit(1)


SRI_TAX = {"coding": [{"system": "urn:fhir-server:ec:sri-impuesto", "code": "2"}]}
SERVICES = "urn:clinica:procedimientos"


def invoice_latency(http: httpx.Client, invoices: int, items: int) -> None:
    """``Invoice/$generate`` for a patient with ``items`` billable ChargeItems (half at
    15 % IVA, half exempt), each round its own patient; the totals are checked."""
    clinic = {
        "resourceType": "Organization",
        "id": "clinic",
        "name": "Clinica",
        "identifier": [{"system": "urn:fhir-server:ec:ruc", "value": "1790012345001"}],
    }
    prices = [
        {
            "resourceType": "ChargeItemDefinition",
            "id": f"p{k}",
            "url": f"urn:clinica:precios:p{k}",
            "status": "active",
            "code": {"coding": [{"system": SERVICES, "code": f"S{k}"}]},
            "propertyGroup": [
                {
                    "priceComponent": [
                        {"type": "base", "amount": {"value": 10 + k, "currency": "USD"}},
                        {"type": "tax", "code": SRI_TAX, "factor": 0.15 if k % 2 else 0},
                    ]
                }
            ],
        }
        for k in range(items)
    ]
    transaction(http, [put_entry(r) for r in (clinic, *prices)])
    expected = sum((10 + k) * (115 if k % 2 else 100) for k in range(items))  # in cents
    ms = []
    for n in range(invoices):
        patient = {
            "resourceType": "Patient",
            "id": f"inv{n}",
            "identifier": [{"system": "urn:fhir-server:ec:cedula", "value": "1710034065"}],
        }
        charges = [
            post_entry(
                {
                    "resourceType": "ChargeItem",
                    "status": "billable",
                    "code": {"coding": [{"system": SERVICES, "code": f"S{k}"}]},
                    "subject": {"reference": f"Patient/inv{n}"},
                    "definitionCanonical": [f"urn:clinica:precios:p{k}"],
                    "quantity": {"value": 1},
                }
            )
            for k in range(items)
        ]
        transaction(http, [put_entry(patient), *charges])
        body = {
            "resourceType": "Parameters",
            "parameter": [{"name": "patient", "valueReference": {"reference": f"Patient/inv{n}"}}],
        }
        t = time.perf_counter()
        r = http.post("Invoice/$generate", json=body, headers=FHIR_JSON)
        ms.append((time.perf_counter() - t) * 1000)
        if r.status_code != 201:
            raise SystemExit(f"Invoice/$generate: {r.status_code} {r.text}")
        invoice = r.json()
        gross = round(float(invoice["totalGross"]["value"]) * 100)
        if len(invoice["lineItem"]) != items or gross != expected:
            raise SystemExit(f"wrong invoice: {gross} cents, expected {expected}: {r.text}")
    summary(f"Invoice/$generate ({items} items)", ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--dispensers", type=int, default=20)
    parser.add_argument("--invoices", type=int, default=100)
    parser.add_argument("--items", type=int, default=20, help="ChargeItems per invoice")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        env = {"FHIR_BILLING_ISSUER": "Organization/clinic"}
        with ServerProcess(Path(tmp) / "data", log_file=log, env=env) as server:
            print("load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
            with httpx.Client(base_url=server.base_url, timeout=600) as http:
                seconds = load(http, args.products, args.batches)
                entries = args.products * args.batches * len(PLACES)
                print(f"loaded {entries} receipts in {seconds:.1f} s")
                stock_latency(http, args.products, args.rounds)
            contest(server.base_url, args.units, args.dispensers)
            with httpx.Client(base_url=server.base_url, timeout=60) as http:
                invoice_latency(http, args.invoices, args.items)


if __name__ == "__main__":
    main()
