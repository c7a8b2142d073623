"""The clinics' reports over a year of data (issue #17: "each clinic report over a year
of data renders in under 3 s"), over HTTP against a real server.

    .venv/bin/python benchmarks/reports.py            # a year: ~12,500 appointments ...
    .venv/bin/python benchmarks/reports.py --scale 0.2 --rounds 3   # a quick look

A fresh ``fhir-server serve`` (one worker, embedded mongod, no authorization) is loaded
through the API with transaction Bundles, as the workflows write the data:

- 4 practitioners, 12 appointments each per working day of 2025 (30 min from 08:00):
  80 % fulfilled, 8 % noshow, 10 % cancelled, 2 % booked;
- a finished Encounter for each fulfilled appointment, of one of 1,500 patients, and
  its vital signs (a heart rate and a blood pressure panel with two components);
- 40 medicines received into the pharmacy (the ledger), and 8,000 completed
  dispenses over the year that take from it (and are charged, by the billing rules);
- 5,000 invoices as the clinica importer brings them (issued, balanced or cancelled,
  lines with their base, IVA in the total tax component), over the year.

Then each report, for the whole year (vital-signs: of patient p0), in each format,
``--rounds`` times: median and p95 wall time of the request.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_server.testing import ServerProcess
from profiles.clinics import CEDULA, RUC

FHIR_JSON = {"Content-Type": "application/fhir+json"}
YEAR = 2025
LOINC = "http://loinc.org"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category"
ATC = "http://www.whocc.no/atc"
TARGET_S = 3.0
REPORTS = ("appointments", "patients-seen", "vital-signs", "dispenses-stock", "income")
FORMATS = ("csv", "xlsx", "pdf")


def put_entry(resource: dict[str, Any]) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": url}}


def send(http: httpx.Client, resources: list[dict[str, Any]], size: int = 500) -> None:
    for i in range(0, len(resources), size):
        entries = [put_entry(r) for r in resources[i : i + size]]
        body = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        r = http.post("", json=body, headers=FHIR_JSON)
        if r.status_code != 200:
            raise SystemExit(f"load failed: {r.status_code} {r.text[:2000]}")


def working_days() -> list[date]:
    day, found = date(YEAR, 1, 1), []
    while day.year == YEAR:
        if day.weekday() < 5:
            found.append(day)
        day += timedelta(days=1)
    return found


def stamp(day: date, minutes: int) -> str:
    moment = datetime(day.year, day.month, day.day, 8) + timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:00-05:00")


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


def people(patients: int, practitioners: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {
            "resourceType": "Organization",
            "id": "clinic",
            "name": "Clínica Benchmark",
            "identifier": [{"system": RUC, "value": "1790012345001"}],
        },
        {"resourceType": "Location", "id": "farmacia", "name": "Farmacia"},
    ]
    found += [
        {
            "resourceType": "Practitioner",
            "id": f"dr{n}",
            "name": [{"family": f"Doctor {n}", "prefix": ["Dr."]}],
        }
        for n in range(practitioners)
    ]
    found += [
        {
            "resourceType": "Patient",
            "id": f"p{n}",
            "identifier": [{"system": CEDULA, "value": f"17{n:08d}"}],
            "name": [{"family": f"Paciente {n}", "given": ["Ana"]}],
        }
        for n in range(patients)
    ]
    return found


def clinic_year(
    rng: random.Random, scale: float, patients: int, practitioners: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Appointments, and encounters with their vital signs."""
    appointments: list[dict[str, Any]] = []
    visits: list[dict[str, Any]] = []
    per_day = max(1, round(12 * scale))
    statuses = ["fulfilled"] * 80 + ["noshow"] * 8 + ["cancelled"] * 10 + ["booked"] * 2
    n = 0
    for day in working_days():
        for dr in range(practitioners):
            for k in range(per_day):
                n += 1
                status = rng.choice(statuses)
                patient = f"p{rng.randrange(patients)}"
                start, end = stamp(day, 30 * k), stamp(day, 30 * k + 30)
                appointments.append(
                    {
                        "resourceType": "Appointment",
                        "id": f"a{n}",
                        "status": status,
                        "start": start,
                        "end": end,
                        "participant": [
                            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
                            {
                                "actor": {
                                    "reference": f"Practitioner/dr{dr}",
                                    "display": f"Dr. Doctor {dr}",
                                },
                                "status": "accepted",
                            },
                        ],
                    }
                )
                if status != "fulfilled":
                    continue
                visits += visit(rng, n, patient, start, end)
    return appointments, visits


def visit(rng: random.Random, n: int, patient: str, start: str, end: str) -> list[dict[str, Any]]:
    subject = {"reference": f"Patient/{patient}"}
    category = [{"coding": [{"system": VITALS, "code": "vital-signs"}]}]
    encounter = {
        "resourceType": "Encounter",
        "id": f"e{n}",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": subject,
        "period": {"start": start, "end": end},
    }
    heart = {
        "resourceType": "Observation",
        "id": f"hr{n}",
        "status": "final",
        "category": category,
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        "subject": subject,
        "encounter": {"reference": f"Encounter/e{n}"},
        "effectiveDateTime": start,
        "valueQuantity": quantity(rng.randint(55, 110), "/min"),
    }
    pressure = {
        "resourceType": "Observation",
        "id": f"bp{n}",
        "status": "final",
        "category": category,
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure"}]},
        "subject": subject,
        "encounter": {"reference": f"Encounter/e{n}"},
        "effectiveDateTime": start,
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
                "valueQuantity": quantity(rng.randint(100, 160), "mm[Hg]"),
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic"}]},
                "valueQuantity": quantity(rng.randint(60, 100), "mm[Hg]"),
            },
        ],
    }
    return [encounter, heart, pressure]


def pharmacy(
    rng: random.Random, scale: float, patients: int, products: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Batches and their receipts (plenty, some expiring soon), then the dispenses."""
    stock: list[dict[str, Any]] = []
    soon = (date.today() + timedelta(days=rng.randint(10, 80))).isoformat()
    for m in range(products):
        code = {"coding": [{"system": ATC, "code": f"BENCH{m:03d}", "display": f"Medicina {m}"}]}
        for lot, expiry, amount in ((f"L{m}a", soon, 50), (f"L{m}b", "2099-12-31", 100_000)):
            stock.append(
                {
                    "resourceType": "Medication",
                    "id": f"lot-{lot}",
                    "status": "active",
                    "code": code,
                    "batch": {"lotNumber": lot, "expirationDate": expiry},
                }
            )
            stock.append(
                {
                    "resourceType": "SupplyDelivery",
                    "id": f"in-{lot}",
                    "status": "completed",
                    "suppliedItem": {
                        "quantity": {"value": amount},
                        "itemReference": {"reference": f"Medication/lot-{lot}"},
                    },
                    "destination": {"reference": "Location/farmacia"},
                }
            )
    dispenses = []
    days = working_days()
    for n in range(round(8000 * scale)):
        m = rng.randrange(products)
        dispenses.append(
            {
                "resourceType": "MedicationDispense",
                "id": f"d{n}",
                "status": "completed",
                "medicationCodeableConcept": {
                    "coding": [{"system": ATC, "code": f"BENCH{m:03d}", "display": f"Medicina {m}"}]
                },
                "subject": {"reference": f"Patient/p{rng.randrange(patients)}"},
                "quantity": {"value": rng.randint(1, 3)},
                "whenHandedOver": stamp(rng.choice(days), rng.randrange(600)),
                "location": {"reference": "Location/farmacia"},
            }
        )
    return stock, dispenses


def invoices(rng: random.Random, scale: float, patients: int) -> list[dict[str, Any]]:
    """As the clinica importer writes them (importers/mappings/clinica.yaml)."""
    found = []
    days = working_days()
    for n in range(round(5000 * scale)):
        lines = [rng.choice((30, 45, 12.5, 8)) for _ in range(rng.randint(1, 3))]
        net = sum(lines)
        iva = round(net * 0.15, 2) if rng.random() < 0.4 else 0
        status = rng.choice(["issued"] * 60 + ["balanced"] * 35 + ["cancelled"] * 5)
        patient = {"reference": f"Patient/p{rng.randrange(patients)}"}
        invoice: dict[str, Any] = {
            "resourceType": "Invoice",
            "id": f"inv{n}",
            "identifier": [
                {"system": "urn:fhir-server:ec:invoice-number", "value": f"OLD-{n:07d}"}
            ],
            "status": status,
            "subject": patient,
            "recipient": patient,
            "issuer": {"reference": "Organization/clinic"},
            "date": stamp(rng.choice(days), rng.randrange(600)),
            "lineItem": [
                {
                    "sequence": i + 1,
                    "chargeItemCodeableConcept": {"text": "Consulta"},
                    "priceComponent": [
                        {"type": "base", "amount": {"value": value, "currency": "USD"}}
                    ],
                }
                for i, value in enumerate(lines)
            ],
            "totalNet": {"value": net, "currency": "USD"},
            "totalGross": {"value": round(net + iva, 2), "currency": "USD"},
        }
        if iva:
            invoice["totalPriceComponent"] = [
                {
                    "type": "tax",
                    "code": {
                        "coding": [{"system": "urn:fhir-server:ec:sri-impuesto", "code": "2"}]
                    },
                    "amount": {"value": iva, "currency": "USD"},
                }
            ]
        if status == "cancelled":
            invoice["cancelledReason"] = "Anulada en el sistema anterior"
        found.append(invoice)
    return found


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of a year's volume")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--patients", type=int, default=1500)
    parser.add_argument("--practitioners", type=int, default=4)
    parser.add_argument("--products", type=int, default=40)
    args = parser.parse_args()
    rng = random.Random(17)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        env = {"FHIR_BILLING_ISSUER": "Organization/clinic"}
        with ServerProcess(Path(tmp) / "data", log_file=log, env=env) as server:
            print("load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
            with httpx.Client(base_url=server.base_url, timeout=900) as http:
                started = time.perf_counter()
                appointments, visits = clinic_year(
                    rng, args.scale, args.patients, args.practitioners
                )
                stock, dispenses = pharmacy(rng, args.scale, args.patients, args.products)
                bills = invoices(rng, args.scale, args.patients)
                send(http, people(args.patients, args.practitioners))
                send(http, appointments)
                send(http, visits)
                send(http, stock)
                send(http, dispenses, size=200)
                send(http, bills)
                total = len(appointments) + len(visits) + len(stock) + len(dispenses) + len(bills)
                print(
                    f"loaded {total:,} resources in {time.perf_counter() - started:.0f} s: "
                    f"{len(appointments):,} appointments, {len(visits) // 3:,} encounters, "
                    f"{2 * len(visits) // 3:,} vital-sign observations, {len(dispenses):,} "
                    f"dispenses, {len(bills):,} invoices"
                )
                patient = "p0"  # ~7 visits: 14 readings of 3 vitals over the year
                worst = 0.0
                print(f"{'report':<18}{'format':<7}{'median s':>10}{'p95 s':>9}{'bytes':>10}")
                for name in REPORTS:
                    for fmt in FORMATS:
                        params = {"name": name, "from": f"{YEAR}-01-01", "to": f"{YEAR}-12-31"}
                        params["_format"] = fmt
                        if name == "vital-signs":
                            params["patient"] = patient
                        times, size = [], 0
                        for _ in range(args.rounds):
                            t = time.perf_counter()
                            r = http.get("$report", params=params)
                            times.append(time.perf_counter() - t)
                            if r.status_code != 200:
                                raise SystemExit(f"{name} {fmt}: {r.status_code} {r.text[:500]}")
                            size = len(r.content)
                        worst = max(worst, p95(times))
                        print(
                            f"{name:<18}{fmt:<7}{statistics.median(times):>10.2f}"
                            f"{p95(times):>9.2f}{size:>10,}"
                        )
                verdict = "PASS" if worst < TARGET_S else "FAIL"
                print(f"{verdict}: worst p95 {worst:.2f} s (target < {TARGET_S:.0f} s)")


if __name__ == "__main__":
    main()
