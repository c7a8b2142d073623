"""The clinics' reports, ``GET [base]/$report`` (issue #17, docs/reports.md), over HTTP
on a real server and MongoDB, with authorization on.

A small clinic is written through the API as the workflows write it (appointments,
finished encounters, vital signs, receipts and dispenses that move the pharmacy's
ledger, invoices generated from the dispenses' charges, issued and cancelled), and
every figure the reports give is worked out here by hand, next to the data.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pypdf
import pypdfium2 as pdfium
import pytest
from billing_helpers import generate, issue, price
from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, assert_outcome, expressions, put, shared_client
from httpx import Response
from openpyxl import load_workbook
from pharmacy_helpers import receipt
from smart_helpers import TokenMint, smart_client

from profiles.clinics import CEDULA, RUC

ADMIN = "system/*.cruds"
REPORT = "/fhir/$report"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category"
MARCH = {"from": "2025-03-01", "to": "2025-03-31"}
# A batch of paracetamol that expires 30 days from now: inside the 90-day horizon.
SOON = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()

PARACETAMOL = (SNOMED, "387517004", "Paracetamol 500 mg")
AMOXICILINA = (SNOMED, "372687004", "Amoxicilina 500 mg")
JERINGA = (SNOMED, "61968008", "Jeringa 5 ml")


# --- the clinic ----------------------------------------------------------------------


def write(client: TestClient, headers: dict[str, str], *resources: dict[str, Any]) -> None:
    for resource in resources:
        r = put(client, resource, **headers)
        assert r.status_code in (200, 201), r.text


def appointment(
    rid: str, practitioner: str, patient: str, start: str, status: str
) -> dict[str, Any]:
    begin = datetime.fromisoformat(start)
    return {
        "resourceType": "Appointment",
        "id": rid,
        "status": status,
        "start": start,
        "end": (begin + timedelta(minutes=30)).isoformat(),
        "participant": [
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            {
                "actor": {
                    "reference": f"Practitioner/{practitioner}",
                    "display": NAMES[practitioner],
                },
                "status": "accepted",
            },
        ],
    }


NAMES = {"dra": "Dra. Ana Andrade", "drb": "Dr. Bruno Bravo"}


def appointments() -> list[dict[str, Any]]:
    """March 2025, by hand:

    - Dra. Andrade, 3 March: 2 fulfilled, 1 noshow -> 3, no-show rate 1/3 = 33.3 %;
    - Dra. Andrade, 4 March: 1 booked, 1 cancelled -> 2; the rate counts the
      appointments not cancelled: 0/1 = 0.0 %;
    - Dr. Bravo, 3 March: 1 noshow, 1 fulfilled -> 50.0 %;
    - left out: one entered-in-error (3 March) and one in April.
    Totals: 7 appointments, 1 pending, 3 fulfilled, 2 noshow, 1 cancelled; rate 2/6.
    Patient pa's own: Andrade 3 March fulfilled, 4 March booked, Bravo 3 March noshow.
    """
    return [
        appointment("a1", "dra", "pa", "2025-03-03T09:00:00-05:00", "fulfilled"),
        appointment("a2", "dra", "pb", "2025-03-03T09:30:00-05:00", "noshow"),
        appointment("a3", "dra", "pb", "2025-03-03T10:00:00-05:00", "fulfilled"),
        appointment("a4", "dra", "pa", "2025-03-04T09:00:00-05:00", "booked"),
        appointment("a5", "dra", "pb", "2025-03-04T09:30:00-05:00", "cancelled"),
        appointment("a6", "drb", "pa", "2025-03-03T09:00:00-05:00", "noshow"),
        appointment("a7", "drb", "pb", "2025-03-03T11:00:00-05:00", "fulfilled"),
        appointment("a8", "dra", "pa", "2025-03-03T12:00:00-05:00", "entered-in-error"),
        appointment("a9", "drb", "pa", "2025-04-10T09:00:00-05:00", "fulfilled"),
    ]


def encounter(rid: str, patient: str, start: str, status: str = "finished") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": rid,
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": start, "end": start},
    }


def encounters() -> list[dict[str, Any]]:
    """Finished: pa 3 and 20 March, pb 3 March and 2 April; pa's visit of 5 March is
    still in progress (not seen yet). The shared world's ea and eb have no period.
    March: 2 patients, 3 encounters; April: 1 and 1; March-April: 2 patients, 4."""
    return [
        encounter("v1", "pa", "2025-03-03T09:00:00-05:00"),
        encounter("v2", "pa", "2025-03-20T09:00:00-05:00"),
        encounter("v3", "pb", "2025-03-03T10:00:00-05:00"),
        encounter("v4", "pb", "2025-04-02T10:00:00-05:00"),
        encounter("v5", "pa", "2025-03-05T10:00:00-05:00", status="in-progress"),
    ]


def vital(rid: str, patient: str, when: str, code: str, label: str, **value: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "category": [{"coding": [{"system": VITALS, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": label}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        **value,
    }


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


def vitals() -> list[dict[str, Any]]:
    """pa's heart rate: 72 on 1 March, 80 and 76 on 2 March (mean 78); a blood pressure
    panel on 2 March, 120/80 in its components; a heart rate in May (outside March).
    pb's heart rate of 100 on 1 March is not pa's."""
    bp = vital("bp1", "pa", "2025-03-02T08:00:00-05:00", "85354-9", "Blood pressure panel")
    bp["component"] = [
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
            "valueQuantity": quantity(120, "mm[Hg]"),
        },
        {
            "code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic"}]},
            "valueQuantity": quantity(80, "mm[Hg]"),
        },
    ]
    hr = ("8867-4", "Heart rate")
    return [
        vital("hr1", "pa", "2025-03-01T08:00:00-05:00", *hr, valueQuantity=quantity(72, "/min")),
        vital("hr2", "pa", "2025-03-02T08:00:00-05:00", *hr, valueQuantity=quantity(80, "/min")),
        vital("hr3", "pa", "2025-03-02T18:00:00-05:00", *hr, valueQuantity=quantity(76, "/min")),
        vital("hr4", "pa", "2025-05-01T08:00:00-05:00", *hr, valueQuantity=quantity(90, "/min")),
        vital("hr5", "pb", "2025-03-01T08:00:00-05:00", *hr, valueQuantity=quantity(100, "/min")),
        bp,
    ]


def medicine(rid: str, code: tuple[str, str, str], lot: str | None, expiry: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Medication",
        "id": rid,
        "status": "active",
        "code": {"coding": [{"system": code[0], "code": code[1], "display": code[2]}]},
    }
    if lot is not None:
        resource["batch"] = {"lotNumber": lot, "expirationDate": expiry}
    return resource


def dispense(
    rid: str,
    code: tuple[str, str, str],
    amount: int,
    patient: str,
    when: str,
    reference: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "id": rid,
        "status": "completed",
        "subject": {"reference": f"Patient/{patient}"},
        "quantity": {"value": amount},
        "whenHandedOver": when,
        "location": {"reference": "Location/farmacia"},
    }
    if reference is None:
        resource["medicationCodeableConcept"] = {
            "coding": [{"system": code[0], "code": code[1], "display": code[2]}]
        }
    else:
        resource["medicationReference"] = {"reference": reference}
    return resource


def pharmacy(client: TestClient, headers: dict[str, str]) -> None:
    """Receipts: paracetamol P1 100 (2099) and P2 20 (expires in 30 days), amoxicilina
    A1 50, jeringa J1 100. Dispenses take the earliest expiry first:

    - paracetamol: 10 (pa, 5 March), 5 (pb, 6 March), 3 (pa, 10 February: outside
      March): 18 from P2 -> on hand P1 100 + P2 2 = 102; expiring in 90 days: 2 (P2);
    - amoxicilina, named by reference to its product Medication: 7 (pa, 7 March) ->
      43 on hand;
    - jeringa: 4 (pb, 8 March) and 1 (pa, 9 March) -> 95 on hand.
    March: dispenses 2 + 1 + 2 = 5, quantities 15 + 7 + 5 = 27; on hand 240.
    """
    write(
        client,
        headers,
        {"resourceType": "Location", "id": "farmacia", "name": "Farmacia"},
        medicine("p1", PARACETAMOL, "P1", "2099-12-31"),
        medicine("p2", PARACETAMOL, "P2", SOON),
        medicine("amox", AMOXICILINA, None, ""),
        medicine("a1", AMOXICILINA, "A1", "2099-12-31"),
        medicine("j1", JERINGA, "J1", "2099-12-31"),
        {**receipt("Medication/p1", 100), "id": "in-p1"},
        {**receipt("Medication/p2", 20), "id": "in-p2"},
        {**receipt("Medication/a1", 50), "id": "in-a1"},
        {**receipt("Medication/j1", 100), "id": "in-j1"},
        dispense("d4", PARACETAMOL, 3, "pa", "2025-02-10T10:00:00-05:00"),
        dispense("d1", PARACETAMOL, 10, "pa", "2025-03-05T10:00:00-05:00"),
        dispense("d2", PARACETAMOL, 5, "pb", "2025-03-06T10:00:00-05:00"),
        dispense("d3", AMOXICILINA, 7, "pa", "2025-03-07T10:00:00-05:00", "Medication/amox"),
        dispense("d5", JERINGA, 4, "pb", "2025-03-08T10:00:00-05:00"),
    )


def billing(client: TestClient, headers: dict[str, str]) -> dict[str, str]:
    """Prices: paracetamol 0.50 and amoxicilina 1.00 (medicines: IVA 0), jeringa 2.00
    with IVA 15 %. Invoices of the dispenses' charges:

    - pa: d1 5.00 + d3 7.00 + d4 1.50 = 13.50 net, IVA 0 -> 13.50; issued;
    - pb: d2 2.50 + d5 8.00 = 10.50 net, IVA 8.00 x 0.15 = 1.20 -> 11.70; issued,
      cancelled (left out), generated again and issued (counted);
    - pa: d6 (jeringa 1, 9 March) 2.00 + 0.30, left a draft (left out).
    Income in the month of issue: 2 invoices, net 24.00, IVA 1.20, total 25.20.
    """
    write(
        client,
        headers,
        price("pr-para", PARACETAMOL[:2], "0.50", "0"),
        price("pr-amox", AMOXICILINA[:2], "1.00", "0"),
        price("pr-jer", JERINGA[:2], "2.00", "0.15"),
    )
    pharmacy(client, headers)
    first = _issued(client, headers, "pa")
    cancelled = _issued(client, headers, "pb")
    r = client.patch(
        f"/fhir/Invoice/{cancelled['id']}",
        json=[
            {"op": "replace", "path": "/status", "value": "cancelled"},
            {"op": "add", "path": "/cancelledReason", "value": "wrong patient data"},
        ],
        headers={"Content-Type": "application/json-patch+json", **headers},
    )
    assert r.status_code == 200, r.text
    second = _issued(client, headers, "pb")
    assert second["totalGross"]["value"] == 11.7
    write(client, headers, dispense("d6", JERINGA, 1, "pa", "2025-03-09T10:00:00-05:00"))
    draft = generate(client, "pa", **headers)
    assert draft.status_code in (200, 201), draft.text
    return {"first": first["date"], "second": second["date"]}


def _issued(client: TestClient, headers: dict[str, str], patient: str) -> dict[str, Any]:
    r = generate(client, patient, **headers)
    assert r.status_code in (200, 201), r.text
    r = issue(client, r.json()["id"], **headers)
    assert r.status_code == 200, r.text
    invoice: dict[str, Any] = r.json()
    return invoice


@pytest.fixture(scope="module")
def clinic(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint, dict[str, str]]]:
    with smart_client(mongo_url, billing_issuer="Organization/clinic") as (client, mint):
        headers = mint.headers(ADMIN)
        people = [
            {
                "resourceType": "Organization",
                "id": "clinic",
                "name": "Clínica Central",
                "identifier": [{"system": RUC, "value": "1790012345001"}],
            },
            {
                "resourceType": "Patient",
                "id": "pa",
                "identifier": [{"system": CEDULA, "value": "1710034065"}],
                "name": [{"family": "Alpha", "given": ["Ana"]}],
            },
            {
                "resourceType": "Patient",
                "id": "pb",
                "identifier": [{"system": CEDULA, "value": "1710034073"}],
                "name": [{"family": "Bravo", "given": ["Beto"]}],
            },
            {"resourceType": "Practitioner", "id": "dra", "name": [{"family": "Andrade"}]},
            {"resourceType": "Practitioner", "id": "drb", "name": [{"family": "Bravo"}]},
        ]
        write(client, headers, *people, *appointments(), *encounters(), *vitals())
        issued = billing(client, headers)
        yield client, mint, issued


def get(client: TestClient, headers: dict[str, str] | None = None, **params: str) -> Response:
    return client.get(REPORT, params=params, headers=headers or {})


def admin(clinic: tuple[TestClient, TokenMint, dict[str, str]]) -> dict[str, str]:
    return clinic[1].headers(ADMIN)


def csv_rows(r: Response) -> list[list[str]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    return list(csv.reader(io.StringIO(r.content.decode("utf-8"))))


# --- each report, figures by hand -----------------------------------------------------

APPOINTMENTS_ES = [
    ["Profesional", "Día", "Citas", "Pendientes", "Atendidas", "No asistió", "Canceladas",
     "Tasa de inasistencia (%)"],
    ["Dra. Ana Andrade", "2025-03-03", "3", "0", "2", "1", "0", "33.3"],
    ["Dra. Ana Andrade", "2025-03-04", "2", "1", "0", "0", "1", "0.0"],
    ["Dr. Bruno Bravo", "2025-03-03", "2", "0", "1", "1", "0", "50.0"],
    ["Total", "", "7", "1", "3", "2", "1", "33.3"],
]  # fmt: skip


def test_appointments_csv_by_hand(clinic) -> None:
    client = clinic[0]
    rows = csv_rows(get(client, admin(clinic), name="appointments", _format="csv", **MARCH))
    assert rows == APPOINTMENTS_ES


def test_appointments_in_english(clinic) -> None:
    client = clinic[0]
    r = get(client, admin(clinic), name="appointments", _format="csv", lang="en", **MARCH)
    rows = csv_rows(r)
    assert r.headers["content-language"] == "en"
    assert rows[0] == [
        "Practitioner", "Day", "Appointments", "Pending", "Fulfilled", "No-show",
        "Cancelled", "No-show rate (%)",
    ]  # fmt: skip
    assert rows[1:] == APPOINTMENTS_ES[1:]


@pytest.mark.parametrize(
    ("accept_language", "first"),
    [
        ("en-US,en;q=0.9", "Practitioner"),
        ("fr-FR, en;q=0.5, es;q=0.8", "Profesional"),  # es ranks above en
        ("fr-FR", "Profesional"),  # neither: the default, Spanish
        ("de, en-GB;q=0.7", "Practitioner"),
    ],
)
def test_language_from_accept_language(clinic, accept_language: str, first: str) -> None:
    headers = {**admin(clinic), "Accept-Language": accept_language}
    rows = csv_rows(get(clinic[0], headers, name="appointments", _format="csv", **MARCH))
    assert rows[0][0] == first


def test_patients_seen_per_month_and_day(clinic) -> None:
    """Distinct patients: the totals row counts each patient once over the period,
    not the sum of the months (2, not 3)."""
    client, period = clinic[0], {"from": "2025-03", "to": "2025-04"}
    rows = csv_rows(get(client, admin(clinic), name="patients-seen", _format="csv", **period))
    assert rows == [
        ["Período", "Pacientes", "Atenciones"],
        ["2025-03", "2", "3"],
        ["2025-04", "1", "1"],
        ["Total", "2", "4"],
    ]
    r = get(
        client, admin(clinic), name="patients-seen", _format="csv", by="day", lang="en", **period
    )
    assert csv_rows(r) == [
        ["Period", "Patients", "Encounters"],
        ["2025-03-03", "2", "2"],
        ["2025-03-20", "1", "1"],
        ["2025-04-02", "1", "1"],
        ["Total", "2", "4"],
    ]


VITALS_EN = [
    ["Vital sign", "Unit", "Day", "Readings", "Mean", "Minimum", "Maximum"],
    ["Diastolic", "mm[Hg]", "2025-03-02", "1", "80", "80", "80"],
    ["Systolic", "mm[Hg]", "2025-03-02", "1", "120", "120", "120"],
    ["Heart rate", "/min", "2025-03-01", "1", "72", "72", "72"],
    ["Heart rate", "/min", "2025-03-02", "2", "78", "76", "80"],
    ["Total", "", "", "5", "", "", ""],
]


def test_vital_signs_of_one_patient(clinic) -> None:
    client = clinic[0]
    r = get(
        client, admin(clinic), name="vital-signs", patient="pa", _format="csv", lang="en", **MARCH
    )
    assert csv_rows(r) == VITALS_EN
    r = get(client, admin(clinic), name="vital-signs", patient="Patient/pb", _format="csv", **MARCH)
    assert csv_rows(r)[1:] == [["Heart rate", "/min", "2025-03-01", "1", "100", "100", "100"],
                               ["Total", "", "", "1", "", "", ""]]  # fmt: skip


def test_dispenses_and_stock(clinic) -> None:
    client = clinic[0]
    rows = csv_rows(get(client, admin(clinic), name="dispenses-stock", _format="csv", **MARCH))
    assert rows[0] == [
        "Medicamento", "Dispensaciones", "Cantidad dispensada", "Existencia actual",
        "Por caducar (90 días)", "Lotes por caducar",
    ]  # fmt: skip
    assert rows[1] == ["Amoxicilina 500 mg", "1", "7", "43", "0", ""]
    assert rows[2] == ["Paracetamol 500 mg", "2", "15", "102", "2", f"P2 ({SOON}): 2"]
    assert rows[3] == ["Jeringa 5 ml", "2", "5", "95", "0", ""]
    assert rows[4] == ["Total", "5", "27", "240", "2", ""]
    # a 10-day horizon: P2 (30 days away) is not expiring yet
    r = get(client, admin(clinic), name="dispenses-stock", _format="csv", days="10", **MARCH)
    rows = csv_rows(r)
    assert rows[0][4] == "Por caducar (10 días)"
    assert rows[2][4:] == ["0", ""]


def test_income_per_month_with_iva(clinic) -> None:
    client, _, issued = clinic
    month = issued["second"][:7]
    assert issued["first"][:7] == month
    period = {"from": month, "to": month}
    rows = csv_rows(get(client, admin(clinic), name="income", _format="csv", lang="en", **period))
    assert rows == [
        ["Month", "Invoices", "Net", "IVA", "Total"],
        [month, "2", "24.00", "1.20", "25.20"],
        ["Total", "2", "24.00", "1.20", "25.20"],
    ]
    # another month: no rows, zero totals
    rows = csv_rows(get(client, admin(clinic), name="income", _format="csv", **MARCH))
    assert rows[1:] == [["Total", "0", "0.00", "0.00", "0.00"]]


def test_json_and_the_list_of_reports(clinic) -> None:
    client = clinic[0]
    r = get(client, admin(clinic), name="appointments", _format="json", lang="en", **MARCH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["clinic"] == "Clínica Central"
    assert body["rows"][0] == ["Dra. Ana Andrade", "2025-03-03", "3", "0", "2", "1", "0", "33.3"]
    listing = get(client, admin(clinic), lang="en").json()
    names = {item["name"]: item for item in listing["reports"]}
    assert set(names) == {
        "appointments",
        "patients-seen",
        "vital-signs",
        "dispenses-stock",
        "income",
    }
    assert names["vital-signs"]["view"]["resourceType"] == "ViewDefinition"
    assert "patient" in names["vital-signs"]["parameters"]


def test_period_is_pushed_to_the_index(clinic, monkeypatch) -> None:
    """The view's resources come from a MongoDB query that holds the period (the
    ``date`` search parameter's index), not from the whole collection."""
    from fhir_server.views import run as views_run

    queries: list[dict[str, Any]] = []
    original = views_run.ViewRunService._documents

    def spy(self: Any, t: str, query: dict[str, Any]) -> Any:
        queries.append(query)
        return original(self, t, query)

    monkeypatch.setattr(views_run.ViewRunService, "_documents", spy)
    assert (
        get(clinic[0], admin(clinic), name="appointments", _format="csv", **MARCH).status_code
        == 200
    )
    text = json.dumps(queries[-1], default=str)
    assert "sp.date" in text and "2025-03-01" in text and "2025-03-31" in text, text


# --- the formats ----------------------------------------------------------------------


def test_xlsx_is_typed(clinic) -> None:
    client = clinic[0]
    r = get(client, admin(clinic), name="appointments", _format="xlsx", **MARCH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert "attachment" in r.headers["content-disposition"]
    sheet = load_workbook(io.BytesIO(r.content)).active
    assert sheet["A1"].value == "Citas por profesional, día y estado"
    assert "Clínica Central" in sheet["A2"].value
    header = [c.value for c in sheet[4]]
    assert header == APPOINTMENTS_ES[0]
    assert all(c.font.bold for c in sheet[4])
    assert sheet.freeze_panes == "A5"
    first = [c.value for c in sheet[5]]
    assert first[0] == "Dra. Ana Andrade"
    assert first[1] == datetime(2025, 3, 3)  # a date cell, not text
    assert sheet["B5"].is_date and sheet["B5"].number_format == "yyyy-mm-dd"
    assert first[2:7] == [3, 0, 2, 1, 0] and all(isinstance(v, int) for v in first[2:7])
    assert first[7] == pytest.approx(1 / 3) and sheet["H5"].number_format == "0.0%"
    totals = [c.value for c in sheet[8]]
    assert totals[0] == "Total" and totals[2] == 7 and sheet["A8"].font.bold
    assert sheet.column_dimensions["A"].width >= len("Dra. Ana Andrade")


def test_xlsx_money(clinic) -> None:
    client, _, issued = clinic
    month = issued["second"][:7]
    r = get(
        client,
        admin(clinic),
        name="income",
        _format="xlsx",
        lang="en",
        **{"from": month, "to": month},
    )
    sheet = load_workbook(io.BytesIO(r.content)).active
    assert [c.value for c in sheet[4]] == ["Month", "Invoices", "Net", "IVA", "Total"]
    row = sheet[5]
    assert (
        row[0].value == datetime.fromisoformat(f"{month}-01") and row[0].number_format == "yyyy-mm"
    )
    assert row[2].value == pytest.approx(24.0) and row[2].number_format == "#,##0.00"
    assert row[3].value == pytest.approx(1.2) and row[4].value == pytest.approx(25.2)
    assert all(c.number_format == "#,##0.00" for c in row[2:5])


def pdf_text(r: Response) -> str:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    reader = pypdf.PdfReader(io.BytesIO(r.content))
    return "\n".join(page.extract_text(extraction_mode="layout") for page in reader.pages)


def test_pdf_text_holds_the_figures(clinic) -> None:
    client = clinic[0]
    text = pdf_text(get(client, admin(clinic), name="appointments", _format="pdf", **MARCH))
    assert "Clínica Central" in text
    assert "Citas por profesional, día y estado" in text
    assert "2025-03-01 \u2013 2025-03-31" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["Dra.", "Ana", "Andrade", "2025-03-03", "3", "0", "2", "1", "0", "33.3"] in lines
    assert ["Dr.", "Bruno", "Bravo", "2025-03-03", "2", "0", "1", "1", "0", "50.0"] in lines
    assert ["Total", "7", "1", "3", "2", "1", "33.3"] in lines


def test_pdf_income_in_english(clinic) -> None:
    client, _, issued = clinic
    month = issued["second"][:7]
    period = {"from": month, "to": month}
    text = pdf_text(get(client, admin(clinic), name="income", _format="pdf", lang="en", **period))
    assert "Invoiced income per month, with IVA" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["Total", "2", "24.00", "1.20", "25.20"] in lines


def _pixels(pdf: bytes) -> tuple[Any, int, int]:
    page = pdfium.PdfDocument(pdf)[0]
    bitmap = page.render(scale=1.5)
    image = bitmap.to_pil().convert("RGB")
    return image, image.width, image.height


def _count(image: Any, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> int:
    found = 0
    for x in range(box[0], box[2]):
        for y in range(box[1], box[3]):
            pixel = image.getpixel((x, y))
            if all(abs(a - b) <= 12 for a, b in zip(pixel, colour, strict=True)):
                found += 1
    return found


def test_pdf_vital_signs_chart_is_drawn(clinic) -> None:
    """The trend chart: each vital's line in its colour (Diastolic first, #1f77b4;
    Systolic #d62728; the heart rate's two days joined in #2ca02c), above the table."""
    client = clinic[0]
    r = get(
        client, admin(clinic), name="vital-signs", patient="pa", _format="pdf", lang="en", **MARCH
    )
    text = pdf_text(r)
    assert "Patient: Ana Alpha (Patient/pa)" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["Heart", "rate", "/min", "2025-03-02", "2", "78", "76", "80"] in lines
    image, width, height = _pixels(r.content)
    top = (0, 0, width, height // 2)  # the chart is above the table, in the page's top half
    assert _count(image, (0x2C, 0xA0, 0x2C), top) > 50  # the heart rate line
    assert _count(image, (0x1F, 0x77, 0xB4), top) > 5  # diastolic point
    assert _count(image, (0xD6, 0x27, 0x28), top) > 5  # systolic point
    # the Spanish PDF draws the same chart
    r = get(client, admin(clinic), name="vital-signs", patient="pa", _format="pdf", **MARCH)
    assert "Evolución de signos vitales" in pdf_text(r)
    image, width, height = _pixels(r.content)
    assert _count(image, (0x2C, 0xA0, 0x2C), (0, 0, width, height // 2)) > 50


def test_pdf_without_rows_has_no_chart(clinic) -> None:
    client = clinic[0]
    period = {"from": "2020-01-01", "to": "2020-01-31"}
    r = get(
        client, admin(clinic), name="vital-signs", patient="pa", _format="pdf", lang="en", **period
    )
    assert "No data in the period." in pdf_text(r)
    image, width, height = _pixels(r.content)
    assert _count(image, (0x2C, 0xA0, 0x2C), (0, 0, width, height)) == 0


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "status", "where"),
    [
        ({"name": "nope", **MARCH}, 404, "name"),
        ({"name": "appointments", "to": "2025-03-31"}, 400, "from"),
        ({"name": "appointments", "from": "2025-03-01"}, 400, "to"),
        ({"name": "appointments", "from": "2025-13-01", "to": "2025-03-31"}, 400, "from"),
        ({"name": "appointments", "from": "yesterday", "to": "2025-03-31"}, 400, "from"),
        ({"name": "appointments", "from": "2025-03-01", "to": "2025-02-30"}, 400, "to"),
        ({"name": "appointments", "from": "2025-04-01", "to": "2025-03-31"}, 400, "from"),
        ({"name": "appointments", "_format": "docx", **MARCH}, 400, "_format"),
        ({"name": "appointments", "lang": "fr", **MARCH}, 400, "lang"),
        ({"name": "appointments", "colour": "red", **MARCH}, 400, "colour"),
        ({"name": "appointments", "patient": "pa", **MARCH}, 400, "patient"),
        ({"name": "vital-signs", **MARCH}, 400, "patient"),
        ({"name": "vital-signs", "patient": "Patient/../x", **MARCH}, 400, "patient"),
        ({"name": "patients-seen", "by": "week", **MARCH}, 400, "by"),
        ({"name": "appointments", "by": "day", **MARCH}, 400, "by"),
        ({"name": "dispenses-stock", "days": "-1", **MARCH}, 400, "days"),
        ({"name": "income", "days": "30", **MARCH}, 400, "days"),
        ({"from": "2025-03-01"}, 400, "name"),
        ({"_format": "csv"}, 400, "_format"),
    ],
)
def test_errors(clinic, params: dict[str, str], status: int, where: str) -> None:
    issues = assert_outcome(get(clinic[0], admin(clinic), **params), status)
    assert expressions(issues) == [where]


def test_repeated_parameter(clinic) -> None:
    r = clinic[0].get(
        f"{REPORT}?name=income&name=appointments&from=2025&to=2025", headers=admin(clinic)
    )
    assert expressions(assert_outcome(r, 400)) == ["name"]


def test_other_methods(clinic) -> None:
    for method in ("PUT", "PATCH", "DELETE"):
        r = clinic[0].request(
            method, REPORT, content=b"{}", headers={"Content-Type": FHIR_JSON, **admin(clinic)}
        )
        assert r.status_code == 405 and r.headers["allow"] == "GET, POST", method


def test_post_with_a_parameters_body(clinic) -> None:
    """http.html#operations: an operation that does not affect state may be invoked by
    GET, and by POST with its parameters in a Parameters resource."""
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "name", "valueCode": "appointments"},
            {"name": "from", "valueDate": MARCH["from"]},
            {"name": "to", "valueDate": MARCH["to"]},
            {"name": "_format", "valueCode": "csv"},
        ],
    }
    headers = {"Content-Type": FHIR_JSON, **admin(clinic)}
    r = clinic[0].post(REPORT, content=json.dumps(body), headers=headers)
    assert csv_rows(r) == APPOINTMENTS_ES
    body["parameter"].append({"name": "lang", "valueCoding": {"code": "en"}})
    r = clinic[0].post(REPORT, content=json.dumps(body), headers=headers)
    assert expressions(assert_outcome(r, 400)) == ["Parameters.parameter[4]"]
    r = clinic[0].post(REPORT, content=b'{"resourceType": "Patient"}', headers=headers)
    assert expressions(assert_outcome(r, 400)) == ["Parameters"]


# --- SMART ----------------------------------------------------------------------------


def test_no_token_is_401(clinic) -> None:
    assert get(clinic[0], name="appointments", _format="csv", **MARCH).status_code == 401


def test_patient_token_sees_its_own_appointments(clinic) -> None:
    client, mint, _ = clinic
    headers = mint.headers("patient/*.rs", patient="pa")
    rows = csv_rows(get(client, headers, name="appointments", _format="csv", **MARCH))
    assert rows[1:] == [
        ["Dra. Ana Andrade", "2025-03-03", "1", "0", "1", "0", "0", "0.0"],
        ["Dra. Ana Andrade", "2025-03-04", "1", "1", "0", "0", "0", "0.0"],
        ["Dr. Bruno Bravo", "2025-03-03", "1", "0", "0", "1", "0", "100.0"],
        ["Total", "", "3", "1", "1", "1", "0", "33.3"],
    ]


def test_patient_token_gets_only_its_own_vital_signs(clinic) -> None:
    """A patient token asking for another patient's trends: with read on Patient the
    other patient is unknown to it (400, as $viewdefinition-run answers); with only
    Observation scopes, its rows stay confined to its own record, so none are pb's."""
    client, mint, _ = clinic
    own = mint.headers("patient/*.rs", patient="pa")
    r = get(client, own, name="vital-signs", patient="pa", _format="csv", lang="en", **MARCH)
    assert csv_rows(r) == VITALS_EN
    r = get(client, own, name="vital-signs", patient="pb", _format="csv", **MARCH)
    assert expressions(assert_outcome(r, 400)) == ["patient"]
    narrow = mint.headers("patient/Observation.rs", patient="pa")
    r = get(client, narrow, name="vital-signs", patient="pb", _format="csv", **MARCH)
    rows = csv_rows(r)
    assert rows[1:] == [["Total", "", "", "0", "", "", ""]]
    r = get(client, narrow, name="vital-signs", patient="pb", _format="pdf", **MARCH)
    assert "100" not in pdf_text(r)


def test_granular_scope_narrows_the_rows(clinic) -> None:
    """A token that may read only one category of Observations reads only those:
    laboratory results give no vital-sign rows."""
    client, mint, _ = clinic
    headers = mint.headers("user/Observation.rs?category=laboratory user/Patient.rs")
    r = get(client, headers, name="vital-signs", patient="pa", _format="csv", **MARCH)
    assert csv_rows(r)[1:] == [["Total", "", "", "0", "", "", ""]]


@pytest.mark.parametrize(
    ("name", "scope", "options"),
    [
        ("appointments", "system/Observation.rs", {}),  # nothing on Appointment
        ("appointments", "system/Appointment.r", {}),  # read but no search
        ("appointments", "system/Appointment.s", {}),  # search but no read
        ("patients-seen", "system/Appointment.rs", {}),
        ("income", "patient/Appointment.rs", {"patient": "pa"}),
        ("vital-signs", "system/Encounter.rs", {}),
        # the stock figures need SupplyDelivery for the whole store, as $stock does
        ("dispenses-stock", "system/MedicationDispense.rs", {}),
        ("dispenses-stock", "patient/*.rs", {"patient": "pa"}),
        (
            "dispenses-stock",
            "user/MedicationDispense.rs user/SupplyDelivery.rs",
            {"fhir_user": "Patient/pa"},
        ),
    ],
)
def test_missing_scopes_are_403(clinic, name: str, scope: str, options: dict[str, Any]) -> None:
    client, mint, _ = clinic
    params = {"name": name, "_format": "csv", **MARCH}
    if name == "vital-signs":
        params["patient"] = "pa"
    r = get(client, mint.headers(scope, **options), **params)
    assert_outcome(r, 403)


def test_a_pdf_is_not_a_way_around_the_scopes(clinic) -> None:
    """Every format goes through the same policy: the PDF and the xlsx of a token
    without Invoice scopes are 403 too, and a patient's income report holds only the
    invoices it may read (its own)."""
    client, mint, issued = clinic
    month = issued["second"][:7]
    period = {"from": month, "to": month}
    for fmt in ("pdf", "xlsx", "json"):
        r = get(client, mint.headers("system/Observation.rs"), name="income", _format=fmt, **period)
        assert_outcome(r, 403)
    own = mint.headers("patient/Invoice.rs", patient="pa")
    rows = csv_rows(get(client, own, name="income", _format="csv", lang="en", **period))
    assert rows[1:] == [
        [month, "1", "13.50", "0.00", "13.50"],
        ["Total", "1", "13.50", "0.00", "13.50"],
    ]


# --- invoices as the clinica importer brings them -------------------------------------


def imported(rid: str, status: str, when: str, net: str, iva: str | None) -> dict[str, Any]:
    """An invoice of the old system, as importers/mappings/clinica.yaml writes it: the
    lines with their base only, the IVA in the total tax component."""
    gross = str(Decimal(net) + Decimal(iva or "0"))
    invoice: dict[str, Any] = {
        "resourceType": "Invoice",
        "id": rid,
        "identifier": [{"system": "urn:fhir-server:ec:invoice-number", "value": f"OLD-{rid}"}],
        "status": status,
        "subject": {"reference": "Patient/pa"},
        "recipient": {"reference": "Patient/pa"},
        "issuer": {"reference": "Organization/clinic"},
        "date": when,
        "lineItem": [
            {
                "sequence": 1,
                "chargeItemCodeableConcept": {"text": "Consulta"},
                "priceComponent": [
                    {"type": "base", "amount": {"value": float(net), "currency": "USD"}}
                ],
            }
        ],
        "totalNet": {"value": float(net), "currency": "USD"},
        "totalGross": {"value": float(gross), "currency": "USD"},
    }
    if iva is not None:
        invoice["totalPriceComponent"] = [
            {
                "type": "tax",
                "code": {"coding": [{"system": "urn:fhir-server:ec:sri-impuesto", "code": "2"}]},
                "amount": {"value": float(iva), "currency": "USD"},
            }
        ]
    if status == "cancelled":
        invoice["cancelledReason"] = "Anulada en el sistema anterior"
    return invoice


def test_imported_invoices_by_month(mongo_url: str) -> None:
    """January: 30.00 + 15% (4.50) issued, 20.00 without IVA balanced (paid: still
    income), 99.00 cancelled (left out) -> 2 invoices, 50.00 + 4.50 = 54.50. February:
    10.00 + 1.50 -> 11.50. Totals: 3, 60.00, 6.00, 66.00. Written with authorization
    off, as an importer writes them (only then may an invoice be created issued)."""
    with shared_client(mongo_url, billing_issuer="Organization/clinic") as client:
        write(
            client,
            {},
            {
                "resourceType": "Organization",
                "id": "clinic",
                "name": "Clínica del Valle",
                "identifier": [{"system": RUC, "value": "1790012345001"}],
            },
            {
                "resourceType": "Patient",
                "id": "pa",
                "identifier": [{"system": CEDULA, "value": "1710034065"}],
            },
            imported("i1", "issued", "2025-01-10T10:00:00-05:00", "30.00", "4.50"),
            imported("i2", "balanced", "2025-01-20T10:00:00-05:00", "20.00", None),
            imported("i3", "cancelled", "2025-01-21T10:00:00-05:00", "99.00", "14.85"),
            imported("i4", "issued", "2025-02-03T10:00:00-05:00", "10.00", "1.50"),
        )
        r = get(client, name="income", _format="csv", lang="en", **{"from": "2025", "to": "2025"})
        assert csv_rows(r) == [
            ["Month", "Invoices", "Net", "IVA", "Total"],
            ["2025-01", "2", "50.00", "4.50", "54.50"],
            ["2025-02", "1", "10.00", "1.50", "11.50"],
            ["Total", "3", "60.00", "6.00", "66.00"],
        ]
        r = get(client, name="income", _format="pdf", **{"from": "2025-01", "to": "2025-02"})
        text = pdf_text(r)
        assert "Clínica del Valle" in text
        assert "Ingresos facturados por mes, con IVA" in text
        assert "2025-01-01 \u2013 2025-02-28" in text
        lines = [line.split() for line in text.splitlines()]
        assert ["2025-01", "2", "50.00", "4.50", "54.50"] in lines
        assert ["Total", "3", "60.00", "6.00", "66.00"] in lines
        image, width, height = _pixels(r.content)  # the bars of the months, in the chart
        assert _count(image, (0x1F, 0x77, 0xB4), (0, 0, width, height // 2)) > 500


REPORTS = ["appointments", "patients-seen", "vital-signs", "dispenses-stock", "income"]


@pytest.mark.parametrize("fmt", ["csv", "xlsx", "pdf", "json"])
@pytest.mark.parametrize("name", REPORTS)
@pytest.mark.parametrize("lang", ["es", "en"])
def test_every_report_in_every_format(clinic, name: str, fmt: str, lang: str) -> None:
    """Each report renders in each format and language, and the formats agree with the
    JSON: the CSV's last row is its totals, the xlsx has a row per row plus the totals
    (below the four of the head), and the PDF prints the totals line."""
    params = {"name": name, "lang": lang, **MARCH}
    if name == "vital-signs":
        params["patient"] = "pa"
    table = get(clinic[0], admin(clinic), _format="json", **params).json()
    shown = [v or "" for v in table["totals"]]
    r = get(clinic[0], admin(clinic), _format=fmt, **params)
    assert r.status_code == 200, r.text
    assert r.headers["content-language"] == lang
    if fmt == "csv":
        assert csv_rows(r)[-1] == shown
    elif fmt == "xlsx":
        sheet = load_workbook(io.BytesIO(r.content)).active
        assert sheet.max_row == 4 + len(table["rows"]) + 1
        assert sheet.cell(row=sheet.max_row, column=1).value == "Total"
    elif fmt == "pdf":
        lines = [line.split() for line in pdf_text(r).splitlines()]
        assert [v for v in shown if v] in lines
    else:
        assert r.json() == table
