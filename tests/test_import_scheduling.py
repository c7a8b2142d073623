"""The importers obey the scheduling rules (issue 12: "enforced on every path that
writes an Appointment ... and the importers"): a legacy database that double books a
doctor or a room does not make the server double book them. The importer sends
transaction bundles over HTTP, so the server's write pipeline refuses the second
appointment (409); the importer re-sends the bundle entry by entry, the rest of the
batch is kept, and the report names the refused row and what was taken."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_import_support as support
from pymongo import MongoClient
from sqlalchemy import create_engine
from test_import_support import by_identifier, execute, report_rows, run, search, stats

from fhir_server.testing import ServerProcess
from importers.sample import create_tables

fhir_base = support.fhir_base  # a fixture
fhir_target = support.fhir_target  # a fixture
mariadb_url = support.mariadb_url  # a fixture
mariadb_server = support.mariadb_server  # a fixture

L = "urn:legacy:clinica:"
APPOINTMENTS = L + "appointments_appointment"

ROWS = [
    "INSERT INTO clinics_clinic (id, name, ruc, address, city, phone, email, is_active,"
    " updated_at) VALUES (1, 'Clínica Norte', '1790011674001', 'Av. Amazonas N1-12',"
    " 'Quito', '022345678', 'info@norte.ec', 1, '2025-01-01 10:00:00')",
    "INSERT INTO clinics_room (id, clinic_id, name, floor, room_type, is_active) VALUES"
    " (1, 1, 'Consultorio 101', '1', 'CONSULTA', 1), (2, 1, 'Consultorio 102', '1',"
    " 'CONSULTA', 1)",
    "INSERT INTO doctors_doctor (id, clinic_id, cedula, first_name, last_name, gender,"
    " license_number, is_active) VALUES (1, 1, '1710034065', 'Ramón', 'Peñafiel', 'M',"
    " 'MSP-000123', 1), (2, 1, '0102030405', 'Ana', 'Vela', 'F', 'MSP-000124', 1)",
    "INSERT INTO patients_patient (id, cedula, first_name, last_name, birth_date, gender,"
    " updated_at) VALUES (1, '1710034073', 'José', 'Núñez', '1980-05-04', 'M',"
    " '2025-01-02 08:00:00'), (2, '0102030413', 'Lucía', 'Andrade', '1990-12-31', 'F',"
    " '2025-01-02 08:00:00'), (3, '0102030421', 'Rosa', 'Mena', '1970-01-01', 'F',"
    " '2025-01-02 08:00:00'), (4, '0102030439', 'Luis', 'Paz', '1975-01-01', 'M',"
    " '2025-01-02 08:00:00')",
    # 1: doctor 1 in room 1, 08:20-08:40.
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, room_id, date, time,"
    " duration_minutes, status) VALUES (1, 1, 1, 1, '2025-03-10', '08:20:00', 20,"
    " 'CONFIRMED')",
    # 2: the legacy system double booked doctor 1 at 08:30 (another room): refused.
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, room_id, date, time,"
    " duration_minutes, status) VALUES (2, 2, 1, 2, '2025-03-10', '08:30:00', 20,"
    " 'CONFIRMED')",
    # 3: room 1 given to doctor 2 at 08:25: refused.
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, room_id, date, time,"
    " duration_minutes, status) VALUES (3, 3, 2, 1, '2025-03-10', '08:25:00', 20,"
    " 'COMPLETED')",
    # 4: a cancelled one at the same time holds nothing: kept.
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, room_id, date, time,"
    " duration_minutes, status) VALUES (4, 4, 1, 1, '2025-03-10', '08:20:00', 20,"
    " 'CANCELLED')",
    # 5: doctor 1 again, right after the first: kept.
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, room_id, date, time,"
    " duration_minutes, status) VALUES (5, 2, 1, 1, '2025-03-10', '08:40:00', 20,"
    " 'CONFIRMED')",
]


def test_an_import_that_double_books_is_refused_row_by_row(
    mariadb_url: str, fhir_base: str, tmp_path: Path
) -> None:
    engine = create_engine(mariadb_url)
    create_tables(engine, "clinica")
    engine.dispose()
    execute(mariadb_url, *ROWS)

    summary = run(mariadb_url, "clinica", fhir_base, tmp_path)
    appointments = stats(summary, "appointments")
    assert (appointments.failed, appointments.created) == (2, 3)
    assert not summary.ok

    kept = {a["identifier"][0]["value"] for a in search(fhir_base, "Appointment")}
    assert kept == {"1", "4", "5"}
    doctor = by_identifier(fhir_base, "Practitioner", L + "doctors_doctor", "1")
    room = by_identifier(fhir_base, "Location", L + "clinics_room", "1")

    errors = {
        r["key"]: r["reason"]
        for r in report_rows(tmp_path / "report.csv")
        if r["mapping"] == "appointments" and r["severity"] == "error"
    }
    assert set(errors) == {"2", "3"}
    # the report says what was taken and when (UTC minute), never whose appointment
    assert (
        f"Practitioner/{doctor['id']} already has an active appointment at 2025-03-10T13:30Z"
        in errors["2"]
    )
    assert (
        f"Location/{room['id']} already has an active appointment at 2025-03-10T13:25Z"
        in errors["3"]
    )

    # a re-run refuses them again and changes nothing else
    again = run(mariadb_url, "clinica", fhir_base, tmp_path)
    assert stats(again, "appointments").failed == 2
    assert {a["identifier"][0]["value"] for a in search(fhir_base, "Appointment")} == kept


@pytest.fixture
def short_hold_base(mongo_url: str, tmp_path: Path) -> Iterator[str]:
    """A real server whose holds last 1 s and whose sweep runs every 0.2 s."""
    database = f"imp_{uuid.uuid4().hex[:10]}"
    env = {
        "FHIR_AUTH_ENABLED": "false",
        "FHIR_APPOINTMENT_HOLD": "1",
        "FHIR_APPOINTMENT_HOLD_SWEEP": "0.2",
    }
    server = ServerProcess(
        mongo_url=mongo_url, database=database, env=env, log_file=tmp_path / "server.log"
    )
    with server:
        yield server.base_url
    with MongoClient(mongo_url) as mc:
        mc.drop_database(database)


PENDING_ROWS = [
    *ROWS[:4],
    # 1: awaiting the patient's confirmation (WhatsApp PENDING)
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, room_id, date, time,"
    " duration_minutes, status) VALUES (1, 1, 1, 1, '2030-03-10', '08:20:00', 20,"
    " 'PENDING')",
    # 2: confirmed
    "INSERT INTO appointments_appointment (id, patient_id, doctor_id, room_id, date, time,"
    " duration_minutes, status) VALUES (2, 2, 1, 1, '2030-03-10', '08:40:00', 20,"
    " 'CONFIRMED')",
]


def test_imported_pending_appointments_are_not_holds(
    mariadb_url: str, short_hold_base: str, tmp_path: Path
) -> None:
    """PENDING is a real appointment whose patient has not confirmed yet (R4 pending:
    "Some or all of the participant(s) have not finalized their acceptance of the
    appointment request"): migrated, it keeps its doctor and room past the hold time."""
    engine = create_engine(mariadb_url)
    create_tables(engine, "clinica")
    engine.dispose()
    execute(mariadb_url, *PENDING_ROWS)
    base = short_hold_base
    summary = run(mariadb_url, "clinica", base, tmp_path)
    assert stats(summary, "appointments").created == 2, summary

    def imported(key: str) -> dict[str, Any]:
        return by_identifier(base, "Appointment", APPOINTMENTS, key)

    waiting, confirmed = imported("1"), imported("2")
    assert waiting["status"] == "pending"
    assert [p["status"] for p in waiting["participant"]] == [
        "needs-action",
        "accepted",
        "accepted",
    ]
    assert "tag" not in waiting["meta"]
    assert confirmed["status"] == "booked"
    assert {p["status"] for p in confirmed["participant"]} == {"accepted"}

    time.sleep(1.6)  # past the hold time, several sweeps
    assert imported("1")["status"] == "pending"
    # nobody takes its doctor at that time either
    doctor = by_identifier(base, "Practitioner", L + "doctors_doctor", "1")
    clash = {
        "resourceType": "Appointment",
        "status": "booked",
        "start": waiting["start"],
        "end": waiting["end"],
        "participant": [
            {"actor": confirmed["participant"][0]["actor"], "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{doctor['id']}"}, "status": "accepted"},
        ],
    }
    r = httpx.post(
        f"{base}/Appointment",
        json=clash,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert r.status_code == 409, r.text
    assert imported("1")["status"] == "pending"
