"""Whole migrations of generated legacy databases into a real server: idempotent re-runs,
incremental runs, dry runs, resuming a killed run, PostgreSQL, accented column names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import test_import_support as support
from pymongo import MongoClient
from sqlalchemy import create_engine, text
from test_import_support import (
    by_identifier,
    count,
    execute,
    get,
    history_total,
    report_rows,
    run,
    search,
    stats,
)

from importers.sample import Dirt, make_sample
from importers.state import State, state_path

fhir_base = support.fhir_base  # a fixture
fhir_target = support.fhir_target  # a fixture
mariadb_url = support.mariadb_url  # a fixture
mariadb_server = support.mariadb_server  # a fixture
postgres_url = support.postgres_url  # a fixture
postgres_server = support.postgres_server  # a fixture

L = "urn:legacy:clinica:"


def test_rerun_creates_nothing_and_incremental_updates_only_changes(
    mariadb_url: str, fhir_base: str, tmp_path: Path
) -> None:
    make_sample(mariadb_url, "clinica", 40, seed=3)
    first = run(mariadb_url, "clinica", fhir_base, tmp_path)
    written = first.total("created")
    assert written == first.total("mapped") > 500
    assert first.total("updated") == first.total("unchanged") == 0
    # the legacy quantities on hand open the stock ledger, batch by batch, and the
    # historic dispenses (no location) take nothing from it (docs/pharmacy.md)
    with create_engine(mariadb_url).connect() as db:
        legacy = db.execute(
            text("SELECT batch_number, quantity FROM pharmacy_medicationbatch WHERE quantity > 0")
        ).all()
    held = {
        (parts["lotNumber"]["valueString"], parts["quantity"]["valueQuantity"]["value"])
        for p in get(fhir_base, "$stock")["parameter"]
        if p["name"] == "batch"
        for parts in [{q["name"]: q for q in p["part"]}]
    }
    assert held == {(lot, quantity) for lot, quantity in legacy}
    versions = history_total(fhir_base)
    # each new appointment also gets its action-log Provenance (docs/scheduling.md)
    assert versions == written + stats(first, "appointments").created

    # http.html#update: the server keeps an identical update without a new version; the
    # re-run must neither create resources nor make versions.
    second = run(mariadb_url, "clinica", fhir_base, tmp_path)
    assert second.total("created") == second.total("updated") == 0
    assert second.total("unchanged") == written
    assert history_total(fhir_base) == versions

    # One patient changes in the legacy system: an incremental run reads only the rows
    # updated since the last run and makes one new version.
    execute(
        mariadb_url,
        "UPDATE patients_patient SET last_name = 'Villacís Guzmán', updated_at = "
        "'2030-01-01 00:00:00' WHERE id = 5",
    )
    third = run(mariadb_url, "clinica", fhir_base, tmp_path, incremental=True)
    patients = stats(third, "patients")
    # (>= the watermark: the newest row of the last run is read again, unchanged)
    assert (patients.read, patients.updated, patients.created) == (2, 1, 0)
    assert third.total("read") < first.total("read") / 3  # tables with an update column
    assert third.total("created") == third.total("updated") - 1 == 0
    patient = by_identifier(fhir_base, "Patient", L + "patients_patient", "5")
    assert patient["name"][0]["family"] == "Villacís Guzmán"
    assert patient["meta"]["versionId"] == "2"
    assert history_total(fhir_base) == versions + 1

    # --since: everything updated from that time on, whatever the watermark says.
    since = run(mariadb_url, "clinica", fhir_base, tmp_path, since="2029-12-31T00:00:00")
    assert stats(since, "patients").read == 1
    assert stats(since, "patients").unchanged == 1


def test_dry_run_validates_and_writes_nothing(
    mariadb_url: str, fhir_base: str, tmp_path: Path
) -> None:
    dirt = Dirt(mojibake=0.2, null=0.2, zero_date=0.1, orphan=0.05, duplicate=0.1, bad_cedula=0.1)
    made = make_sample(mariadb_url, "clinica", 30, seed=5, dirt=dirt)
    for kind in ("mojibake", "zero_date", "orphan", "duplicate", "bad_cedula"):
        assert made[f"dirt:{kind}"] > 0, kind
    summary = run(mariadb_url, "clinica", None, tmp_path, dry_run=True)
    assert stats(summary, "patients").merged == made["dirt:duplicate"]
    assert summary.total("mapped") > 300
    assert summary.total("failed") > 0  # orphans with required references
    assert count(fhir_base, "Patient") == 0
    assert history_total(fhir_base) == 0
    rows = report_rows(tmp_path / "report.csv")
    assert {r["severity"] for r in rows} == {"warning", "error"}
    assert all(r["mapping"] and r["table"] and r["key"] for r in rows)
    reasons = " ".join(r["reason"] for r in rows)
    for found in ("mojibake repaired", "zero date", "orphan key", "duplicate of", "module 10"):
        assert found in reasons, found


def test_end_to_end_from_postgresql(postgres_url: str, fhir_base: str, tmp_path: Path) -> None:
    """The seed-004 clinic ran on PostgreSQL: the same schema and mapping work there."""
    make_sample(postgres_url, "clinica", 40, seed=11)
    summary = run(postgres_url, "clinica", fhir_base, tmp_path)
    assert summary.total("created") == summary.total("mapped") > 500
    # An appointment's patient and practitioner resolve ...
    appointments = search(fhir_base, "Appointment", status="fulfilled")
    assert appointments
    appt = appointments[0]
    actors = [p["actor"]["reference"] for p in appt["participant"]]
    patient = get(fhir_base, actors[0])
    assert patient["resourceType"] == "Patient"
    assert get(fhir_base, actors[1])["resourceType"] == "Practitioner"
    # ... and the patient's vital signs come back by LOINC code.
    encounters = search(fhir_base, "Encounter", patient=f"Patient/{patient['id']}")
    assert encounters
    vitals = search(
        fhir_base,
        "Observation",
        subject=f"Patient/{patient['id']}",
        code="http://loinc.org|85354-9",
    )
    assert vitals and all(v["code"]["coding"][0]["code"] == "85354-9" for v in vitals)
    assert vitals[0]["component"][0]["code"]["coding"][0]["code"] == "8480-6"
    bundle = get(fhir_base, "Observation", category="vital-signs", _summary="count")
    assert bundle["total"] == sum(
        t.created
        for t in summary.tables
        if t.resource_type == "Observation" and t.name != "blood_groups"  # (laboratory)
    )


def test_accented_column_names_historial_medico(
    mariadb_url: str, fhir_target: support.Target, tmp_path: Path
) -> None:
    fhir_base = fhir_target.base
    make_sample(mariadb_url, "historial_medico", 40, seed=2)
    execute(
        mariadb_url,
        "UPDATE `Paciente` SET `Nombre` = 'MarÃ­a JosÃ©', `Apellido` = 'Ibáñez',"
        " `Género` = ' FEMENINO', `Teléfono` = '(09) 8765-4321' WHERE `ID_Paciente` = 1",
        "UPDATE `Cita` SET `ID_Paciente` = 1, `ID_Médico` = 2, `Estado` = 'completada ',"
        " `Fecha` = '2024-07-01', `Hora` = '10:40:00' WHERE `ID_Cita` = 1",
    )
    summary = run(mariadb_url, "historial_medico", fhir_base, tmp_path)
    assert stats(summary, "patients").created == 40
    system = "urn:legacy:historial_medico:"
    patient = by_identifier(fhir_base, "Patient", system + "Paciente", "1")
    assert patient["name"] == [{"use": "official", "family": "Ibáñez", "given": ["María", "José"]}]
    assert patient["gender"] == "female"
    assert {"system": "phone", "value": "0987654321"} in patient["telecom"]
    doctor = by_identifier(fhir_base, "Practitioner", system + "Médico", "2")
    appt = by_identifier(fhir_base, "Appointment", system + "Cita", "1")
    assert appt["start"] == "2024-07-01T10:40:00-05:00"
    assert [p["actor"]["reference"] for p in appt["participant"]] == [
        f"Patient/{patient['id']}",
        f"Practitioner/{doctor['id']}",
    ]
    encounter = by_identifier(fhir_base, "Encounter", system + "Cita", "1")
    assert encounter["appointment"] == [{"reference": f"Appointment/{appt['id']}"}]
    rows = report_rows(tmp_path / "report.csv")
    assert any(r["column"] == "Nombre" and "mojibake" in r["reason"] for r in rows)
    # A treatment without medications is a Procedure; one with them, its medications'
    # MedicationRequests, the treatment's description a note on each.
    engine = create_engine(mariadb_url)
    with engine.connect() as conn:
        alone = conn.execute(text(
            "SELECT t.`ID_Tratamiento`, t.`Descripción`, t.`Fecha_Inicio`, t.`Fecha_Fin`"
            " FROM `Tratamiento` t WHERE NOT EXISTS (SELECT 1 FROM `Medicamento` m"
            " WHERE m.`ID_Tratamiento` = t.`ID_Tratamiento`) ORDER BY 1")).all()  # fmt: skip
        medicated = conn.execute(text(
            "SELECT m.`ID_Medicamento`, t.`Descripción` FROM `Medicamento` m"
            " JOIN `Tratamiento` t ON t.`ID_Tratamiento` = m.`ID_Tratamiento` ORDER BY 1"
        )).first()  # fmt: skip
    engine.dispose()
    assert alone and medicated
    assert stats(summary, "procedures").created == len(alone)
    key, description, start, end = alone[0]
    procedure = by_identifier(fhir_base, "Procedure", system + "Tratamiento", str(key))
    assert procedure["code"] == {"text": description}
    assert procedure["performedPeriod"] == {"start": start.isoformat(), "end": end.isoformat()}
    assert procedure["status"] == "completed"
    assert procedure["subject"]["reference"].startswith("Patient/")
    request = by_identifier(
        fhir_base, "MedicationRequest", system + "Medicamento", str(medicated[0])
    )
    assert request["note"] == [{"text": medicated[1]}]

    # Legacy users and roles become smart_auth users linked to their records, with a
    # password they must reset, and their e-mail (added to the linked record when it
    # lacks it); a second run leaves them alone.
    execute(
        mariadb_url,
        "UPDATE `Usuario` SET `Correo` = ' Ramon.Nuevo@Historial.EC' "
        "WHERE `Nombre_Usuario` = 'medico2'",
    )
    args = [
        sys.executable, "-m", "fhir_server", "import", "users", "--source", mariadb_url,
        "--mapping", "historial_medico", "--fhir-url", fhir_base,
        "--mongo-url", fhir_target.mongo_url, "--database", fhir_target.database,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "users: 1 read" not in first.stdout
    with MongoClient(fhir_target.mongo_url) as mc:
        users = {u["_id"]: u for u in mc[fhir_target.database]["auth_users"].find()}
    assert users["admin"]["role"] == "admin" and users["admin"]["must_reset_password"]
    assert users["medico2"]["role"] == "practitioner"
    assert users["medico2"]["fhir_user"] == f"Practitioner/{doctor['id']}"
    assert users["medico2"]["email"] == "ramon.nuevo@historial.ec"
    assert users["admin"]["email"] == "admin@historial.ec"
    emails = [t["value"] for t in get(fhir_base, f"Practitioner/{doctor['id']}")["telecom"]
              if t["system"] == "email"]  # fmt: skip
    assert emails == [doctor_email(doctor), "ramon.nuevo@historial.ec"]
    assert "1 e-mails added" in first.stdout
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "0 created" in again.stdout


def doctor_email(doctor: dict[str, object]) -> str:
    telecom = doctor["telecom"]
    assert isinstance(telecom, list)
    return str(next(t["value"] for t in telecom if t["system"] == "email"))


def test_resume_after_a_killed_run(mariadb_url: str, fhir_base: str, tmp_path: Path) -> None:
    make_sample(mariadb_url, "clinica", 40, seed=9)
    state_dir = tmp_path / "state"
    args = [
        sys.executable, "-m", "fhir_server", "import", "run", "--source", mariadb_url,
        "--mapping", "clinica", "--fhir-url", fhir_base, "--state-dir", str(state_dir),
        "--batch-size", "5", "--concurrency", "1", "--no-progress",
        "--report", str(tmp_path / "report.csv"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    path = state_path(state_dir, mariadb_url, _builtin("clinica"))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    killed_in = None
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists():
            try:
                run_state = json.loads(path.read_text())["run"]
            except (json.JSONDecodeError, KeyError):
                run_state = None
            moving = [k for k, v in (run_state or {}).get("checkpoints", {}).items() if v]
            if run_state and "patients" in run_state["done"] and moving:
                proc.send_signal(signal.SIGKILL)  # no clean-up at all
                killed_in = moving[0]
                break
        time.sleep(0.05)
    proc.wait(30)
    assert killed_in is not None, "the run ended before it could be killed"
    state = State.load(path)
    assert state.run is not None and state.run["status"] == "running"
    before = {t: count(fhir_base, t) for t in ("Patient", "Appointment", "Slot", "Schedule")}

    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr  # seed 9: no orphans
    assert "resumed an interrupted run at" in resumed.stdout
    assert f"{killed_in} after key" in resumed.stdout
    # Mappings finished before the kill were not read again.
    assert "\npatients " not in resumed.stdout
    assert before["Patient"] == count(fhir_base, "Patient")

    # Nothing is missing and nothing is there twice: a full re-run finds every resource.
    check = run(mariadb_url, "clinica", fhir_base, tmp_path, restart=True)
    assert check.total("created") == 0
    assert check.total("unchanged") == check.total("mapped")
    # (+ the action-log Provenance of each appointment, docs/scheduling.md)
    logged = count(fhir_base, "Appointment")
    assert history_total(fhir_base) == check.total("mapped") + check.total("updated") + logged


def _builtin(name: str) -> str:
    from importers.mapping.model import builtin_path

    return str(builtin_path(name))


def test_failed_rows_are_retried_until_they_go_in(
    mariadb_url: str, fhir_base: str, tmp_path: Path
) -> None:
    """The watermark never passes a row's first failure, and rows that failed are fetched
    again by the next incremental runs even when nothing marks them updated
    (importers/retry.py); the report says which rows were retried and how each ended."""
    make_sample(mariadb_url, "clinica", 30, seed=4, dirt=support.CLEAN)
    table = "appointments_appointment"
    execute(
        mariadb_url,
        f"UPDATE {table} SET updated_at = '2024-01-01 00:00:00'",
        # two rows fail for a patient not migrated, older than the newest row ...
        f"UPDATE {table} SET patient_id = 999999, updated_at = '2029-01-01 00:00:00' WHERE id = 3",
        f"UPDATE {table} SET patient_id = 999998, updated_at = '2029-06-01 00:00:00' WHERE id = 5",
        # ... one with no update time at all (an incremental run never reads it)
        f"UPDATE {table} SET patient_id = 999997, updated_at = NULL WHERE id = 6",
        f"UPDATE {table} SET updated_at = '2030-01-01 00:00:00' WHERE id = 4",
    )
    first = run(mariadb_url, "clinica", fhir_base, tmp_path)
    assert stats(first, "appointments").failed == 3
    state = State.load(state_path(tmp_path, mariadb_url, _builtin("clinica")))
    assert state.watermarks["appointments"] == "2029-01-01T00:00:00"  # not 2030
    assert state.failed["appointments"] == {
        "3": "2029-01-01T00:00:00",
        "5": "2029-06-01T00:00:00",
        "6": None,
    }

    # Rows 3 and 6 are fixed in the legacy system without touching their update time.
    execute(mariadb_url, f"UPDATE {table} SET patient_id = 1 WHERE id IN (3, 6)")
    second = run(mariadb_url, "clinica", fhir_base, tmp_path, incremental=True)
    appointments = stats(second, "appointments")
    assert (appointments.retried, appointments.retried_failed) == (3, 1)
    assert (appointments.created, appointments.failed) == (2, 1)
    retried = {
        r["key"]: r["reason"]
        for r in report_rows(tmp_path / "report.csv")
        if r["severity"] == "retried" and r["mapping"] == "appointments"
    }
    assert retried == {
        "3": "failed in an earlier run; imported",
        "5": "failed in an earlier run; failed again (see this run's errors for the row)",
        "6": "failed in an earlier run; imported",
    }
    assert any("3 rows that failed in an earlier run were retried" in line
               for line in second.lines())  # fmt: skip
    # a row that keeps failing is retried by key and does not hold the watermark back
    state = State.load(state_path(tmp_path, mariadb_url, _builtin("clinica")))
    assert state.watermarks["appointments"] == "2030-01-01T00:00:00"
    for key in ("3", "6"):
        appt = by_identifier(fhir_base, "Appointment", L + table, key)
        assert appt["participant"][0]["actor"]["reference"].startswith("Patient/")

    third = run(mariadb_url, "clinica", fhir_base, tmp_path, incremental=True)
    assert (stats(third, "appointments").retried, stats(third, "appointments").failed) == (1, 1)
    state = State.load(state_path(tmp_path, mariadb_url, _builtin("clinica")))
    assert state.failed["appointments"] == {"5": "2029-06-01T00:00:00"}


def test_dry_run_against_a_server_catches_a_profile_violation(
    mariadb_url: str, mongo_url: str, tmp_path: Path
) -> None:
    """--dry-run with --fhir-url checks every resource with that server's $validate, so
    it finds what the real run would refuse: here a required profile (birthDate 1..1)
    that the R4 base definitions alone do not ask for. Nothing is written."""
    from fhir_helpers import constraint_profile

    from fhir_server.testing import ServerProcess

    url = "http://clinic.example/StructureDefinition/born-patient"
    make_sample(mariadb_url, "clinica", 12, seed=2, dirt=support.CLEAN)
    execute(mariadb_url, "UPDATE patients_patient SET birth_date = NULL WHERE id IN (3, 7)")
    server = ServerProcess(
        mongo_url=mongo_url,
        database=f"imp_{os.getpid()}_dry",
        env={"FHIR_AUTH_ENABLED": "false", "FHIR_REQUIRED_PROFILES": f"Patient={url}"},
        log_file=tmp_path / "server.log",
    )
    with server:
        profile = constraint_profile(url, "Patient", [{"path": "Patient.birthDate", "min": 1}])
        r = httpx.post(f"{server.base_url}/StructureDefinition", json=profile, timeout=30)
        assert r.status_code == 201, r.text
        local = run(mariadb_url, "clinica", None, tmp_path / "local", dry_run=True)
        assert stats(local, "patients").failed == 0  # the base definitions allow it
        remote = run(mariadb_url, "clinica", server.base_url, tmp_path / "remote", dry_run=True)
        patients = stats(remote, "patients")
        assert (patients.read, patients.mapped, patients.failed) == (12, 10, 2)
        refused = {
            r["key"]: r["reason"]
            for r in report_rows(tmp_path / "remote" / "report.csv")
            if r["mapping"] == "patients" and r["severity"] == "error"
        }
        assert set(refused) == {"3", "7"}
        assert all(reason.startswith("$validate: ") and url in reason
                   for reason in refused.values())  # fmt: skip
        assert count(server.base_url, "Patient") == 0
        with MongoClient(mongo_url) as mc:
            mc.drop_database(f"imp_{os.getpid()}_dry")


def test_a_changed_duplicate_reaches_the_record_it_was_merged_into(
    mariadb_url: str, fhir_base: str, tmp_path: Path
) -> None:
    """dedupe merges a duplicate into the first row of its group, keeping its phones and
    addresses. When only the duplicate changes, an incremental run reads only it: the
    record it was merged into must still be rebuilt (importers/retry.py)."""
    make_sample(mariadb_url, "clinica", 10, seed=6, dirt=support.CLEAN)
    execute(
        mariadb_url,
        "UPDATE patients_patient SET updated_at = '2024-01-01' + INTERVAL id DAY",
        "UPDATE patients_patient p JOIN patients_patient q ON q.id = 1"
        " SET p.cedula = CONCAT(' ', q.cedula) WHERE p.id = 2",
    )
    first = run(mariadb_url, "clinica", fhir_base, tmp_path)
    assert stats(first, "patients").merged == 1
    execute(
        mariadb_url,
        "UPDATE patients_patient SET phone = '0991234500', updated_at = '2030-01-01 00:00:00'"
        " WHERE id = 2",
    )
    second = run(mariadb_url, "clinica", fhir_base, tmp_path, incremental=True)
    patients = stats(second, "patients")
    # read: the duplicate, the newest row of the last run (>= the watermark), and by key
    # the row the duplicate was merged into, rebuilt with the new phone
    assert (patients.read, patients.merged, patients.updated, patients.unchanged) == (3, 1, 1, 1)
    merged = by_identifier(fhir_base, "Patient", L + "patients_patient", "1")
    assert {"system": "phone", "value": "0991234500", "use": "mobile"} in merged["telecom"]
    assert by_identifier(fhir_base, "Patient", L + "patients_patient", "2") == merged
