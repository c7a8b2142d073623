"""``fhir-server import profile`` and code maps that match what people typed, on the
machine's real MariaDB and PostgreSQL: the profile of planted dirty values, value by
value; the overrides file round trip; each folded spelling through a real import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_import_support as support
import yaml
from sqlalchemy import create_engine, text
from test_import_support import CLEAN, by_identifier, execute

from importers.sample import make_sample

fhir_base = support.fhir_base  # a fixture
fhir_target = support.fhir_target  # a fixture
mariadb_url = support.mariadb_url  # a fixture
mariadb_server = support.mariadb_server  # a fixture
postgres_url = support.postgres_url  # a fixture
postgres_server = support.postgres_server  # a fixture

L = "urn:legacy:clinica:"
# appointment id -> what a receptionist typed, and the FHIR status it must become
TYPED = {
    1: (" Programada.", "booked"),
    2: ("PROGRAMADA", "booked"),
    3: ("programada", "booked"),
    4: ("Agendada", "booked"),
    5: ("reservada ", "booked"),
    6: ("No asistió", "noshow"),
    7: ("NO-SHOW", "noshow"),
    8: ("ausente", "noshow"),
    9: ("Anulada", "cancelled"),
    10: ("atendida", "fulfilled"),
    11: ("EN ESPERA??", "waitlist"),  # no built-in word: completed through the overrides
    12: ("en  espera", "waitlist"),
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    return subprocess.run(
        [sys.executable, "-m", "fhir_server", "import", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def scalar(url: str, sql: str) -> Any:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()


def column(profile: dict[str, Any], source: str, name: str) -> dict[str, Any]:
    return next(c for c in profile["columns"] if c["source"] == source and c["column"] == name)


def problems(col: dict[str, Any], check: str) -> dict[str, int]:
    return {
        v["value"]: v["rows"] for p in col["problems"] if p["check"] == check for v in p["values"]
    }


@pytest.mark.parametrize("database", ["mariadb_url", "postgres_url"])
def test_profile_then_overrides_then_import(
    database: str, request: pytest.FixtureRequest, fhir_base: str, tmp_path: Path
) -> None:
    url: str = request.getfixturevalue(database)
    make_sample(url, "clinica", 30, seed=5, dirt=CLEAN)
    mysql = url.startswith("mysql")
    cedula3 = scalar(url, "SELECT cedula FROM patients_patient WHERE id = 3")
    statements = [
        *(
            f"UPDATE appointments_appointment SET status = '{typed}' WHERE id = {i}"
            for i, (typed, _) in TYPED.items()
        ),
        "UPDATE appointments_appointment SET patient_id = 999999 WHERE id IN (13, 14)",
        # the same cédula typed another way on a second patient
        f"UPDATE patients_patient SET cedula = '{cedula3[:9]}-{cedula3[9:]}' WHERE id = 2",
        "UPDATE patients_patient SET cedula = '1234567890' WHERE id = 4",  # bad check digit
        "UPDATE patients_patient SET gender = 'Hombre.' WHERE id = 5",
        "UPDATE patients_patient SET gender = ' MUJER ' WHERE id = 6",
        "UPDATE patients_patient SET gender = NULL WHERE id = 7",
        "UPDATE patients_patient SET gender = '  ' WHERE id = 8",
    ]
    if mysql:  # MySQL's zero date (PostgreSQL cannot hold one)
        statements.append(
            "UPDATE patients_patient SET birth_date = '0000-00-00' WHERE id IN (9, 10)"
        )
    execute(url, *statements)

    skeleton, report = tmp_path / "missing.yaml", tmp_path / "profile.json"
    first = cli(
        "profile", "--source", url, "--mapping", "clinica",
        "--skeleton", str(skeleton), "--json", str(report),
    )  # fmt: skip
    assert first.returncode == 1, first.stdout + first.stderr  # problems found
    assert "EN ESPERA??" in first.stdout and "!" in first.stdout
    found = json.loads(report.read_text())

    status = column(found, "appointments_appointment", "status")
    rows = scalar(url, "SELECT COUNT(*) FROM appointments_appointment")
    assert status["rows"] == rows and status["null"] == 0
    # only the two spellings no code map handles, each as typed
    assert problems(status, "code") == {"EN ESPERA??": 1, "en  espera": 1}
    # they fold to one key: one entry to fill in, with both rows
    assert found["missing_codes"] == {"appointment_status": {"EN ESPERA??": 2}}

    patient = column(found, "appointments_appointment", "patient_id")
    assert problems(patient, "ref") == {"999999": 2}

    cedula = column(found, "patients_patient", "cedula")
    duplicates = next(p for p in cedula["problems"] if "more than one row" in p["what"])
    assert duplicates["rows"] == 2 and duplicates["distinct"] == 1
    invalid = next(p for p in cedula["problems"] if "not a valid" in p["what"])
    assert [v["value"] for v in invalid["values"]] == ["1234567890"]

    gender = column(found, "patients_patient", "gender")
    nulls = scalar(url, "SELECT COUNT(*) FROM patients_patient WHERE gender IS NULL")
    assert gender["null"] == nulls
    assert gender["empty"] == 1
    assert gender["problems"] == []  # 'Hombre.' and ' MUJER ' are the built-in words
    birth = column(found, "patients_patient", "birth_date")
    assert problems(birth, "date") == ({"0000-00-00": 2} if mysql else {})

    # The skeleton, completed, goes back in: the profile is clean of code problems ...
    written = skeleton.read_text()
    assert '"EN ESPERA??":   # 2 rows' in written and "one of: proposed, pending" in written
    filled = tmp_path / "filled.yaml"
    filled.write_text(written.replace('"EN ESPERA??":', '"EN ESPERA??": waitlist'))
    assert yaml.safe_load(filled.read_text()) == {
        "codes": {"appointment_status": {"EN ESPERA??": "waitlist"}}
    }
    again = cli(
        "profile", "--source", url, "--mapping", "clinica",
        "--mapping-overrides", str(filled), "--json", str(report),
    )  # fmt: skip
    assert again.returncode == 1  # the orphans and the duplicate are still there
    status = column(json.loads(report.read_text()), "appointments_appointment", "status")
    assert problems(status, "code") == {}

    # ... and a real import maps every spelling.
    run = cli(
        "run", "--source", url, "--mapping", "clinica", "--mapping-overrides", str(filled),
        "--fhir-url", fhir_base, "--state-dir", str(tmp_path / "state"), "--no-progress",
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr  # the two orphaned appointments fail
    for i, (typed, expected) in TYPED.items():
        appt = by_identifier(fhir_base, "Appointment", L + "appointments_appointment", str(i))
        assert appt["status"] == expected, (typed, appt["status"])
    assert by_identifier(fhir_base, "Patient", L + "patients_patient", "5")["gender"] == "male"
    assert by_identifier(fhir_base, "Patient", L + "patients_patient", "6")["gender"] == "female"


def test_overrides_and_profile_errors_are_one_line(mariadb_url: str, tmp_path: Path) -> None:
    make_sample(mariadb_url, "clinica", 5, seed=1, dirt=CLEAN)
    cases = {
        "codes:\n  no_such_map:\n    X: booked\n": "no code map 'no_such_map'",
        'codes:\n  appointment_status:\n    "EN ESPERA":\n': "no value given for 'EN ESPERA'",
        "appointment_status: {}\n": "expected a 'codes:' table",
        "codes: [\n": "not valid YAML or JSON",
    }
    for content, message in cases.items():
        path = tmp_path / "o.yaml"
        path.write_text(content)
        done = cli(
            "profile", "--source", mariadb_url, "--mapping", "clinica",
            "--mapping-overrides", str(path),
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    unreachable = cli(
        "profile", "--source", "mysql+pymysql://root@127.0.0.1:1/none", "--mapping", "clinica"
    )
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("source database error:")
    assert "Traceback" not in unreachable.stderr
    clean = cli("profile", "--source", mariadb_url, "--mapping", "clinica")
    assert clean.returncode == 0, clean.stdout
    assert clean.stdout.rstrip().endswith("nothing the mapping refuses or drops")
