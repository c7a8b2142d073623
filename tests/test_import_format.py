"""The pieces under the mapping format: cédula/RUC check digits, mojibake repair, code
maps, local times, the expression sandbox, mapping-file errors, and a user's own
mapping file for a legacy table the built-ins know nothing about (real MariaDB + server)."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import test_import_support as support
from test_import_support import (
    by_identifier,
    execute,
    report_rows,
    run,
    stats,
)

from importers import cedula
from importers.mapping import MappingError, load_mapping, parse_mapping
from importers.mapping.codemaps import fold
from importers.mapping.expressions import Functions
from importers.text import repair_mojibake

fhir_base = support.fhir_base  # a fixture
fhir_target = support.fhir_target  # a fixture
mariadb_url = support.mariadb_url  # a fixture
mariadb_server = support.mariadb_server  # a fixture


def test_cedula_and_ruc_check_digits() -> None:
    assert cedula.cedula_problem("1710034065") is None  # module 10
    assert cedula.cedula_problem("1710034066") == "check digit does not match (module 10)"
    assert cedula.cedula_problem("171003406-5") is None  # typed with a dash
    assert cedula.cedula_problem("2510034065") == "province code 25 does not exist"
    assert cedula.cedula_problem("17100340") == "a cédula has 10 digits"
    assert cedula.ruc_problem("1710034065001") is None  # natural person
    assert cedula.ruc_problem("1790011674001") is None  # company, module 11
    assert cedula.ruc_problem("1790011675001") == "check digit does not match (module 11)"
    assert cedula.ruc_problem("1760001550001") is None  # public entity, module 11
    made = cedula.make_cedula(9, 1234567)
    assert cedula.cedula_problem(made) is None and made.startswith("09")
    assert cedula.ruc_problem(cedula.make_company_ruc(17, 4321)) is None


def test_mojibake_is_repaired_only_when_it_round_trips() -> None:
    assert repair_mojibake("JosÃ© NÃºÃ±ez") == "José Núñez"
    assert repair_mojibake("MarÃ\xada") == "María"  # í is C3 AD: a soft hyphen in latin1
    assert repair_mojibake("NÃºÃ±ez Ordóñez") == "Núñez Ordóñez"  # mixed text
    assert repair_mojibake("Gesti√≥n M√©dica") == "Gestión Médica"  # Mac Roman (seed 002)
    assert repair_mojibake("Ã solo") == "Ã solo"  # not a UTF-8 sequence: left alone
    assert repair_mojibake("Peñafiel") == "Peñafiel"


def test_code_maps_local_times_and_numbers() -> None:
    f = Functions("America/Guayaquil", {"st": {"CONFIRMED": "booked", "$default": "x"}})
    assert f.f_code("st", "  confirmed ") == "booked"
    assert fold(" No  Asistió ") == fold("NO_ASISTIO")
    # a $default the author wrote is used, and each use is reported
    assert f.f_code("st", "otro", _col="estado") == "x"
    assert [(i.severity, i.column) for i in f.issues] == [("warning", "estado")]
    assert "imported as its $default 'x'" in f.issues[0].reason
    f.issues.clear()
    # America/Guayaquil is UTC-05:00 all year (no DST); MySQL TIME arrives as timedelta.
    assert f.f_datetime(date(2025, 7, 1), timedelta(hours=8, minutes=20)) == (
        "2025-07-01T08:20:00-05:00"
    )
    assert f.f_datetime(datetime(2025, 1, 1, 23, 59), None, 20) == "2025-01-02T00:19:00-05:00"
    assert f.f_date("0000-00-00", _col="Fecha") is None
    assert f.issues[-1].column == "Fecha" and "zero date" in f.issues[-1].reason
    assert f.f_number("12,5") == pytest.approx(12.5)
    assert f.f_integer("7") == 7


def _doc(template: dict[str, object], **extra: object) -> dict[str, object]:
    return {
        "name": "t",
        "source": "t",
        "resources": [{"name": "p", "resource": "Patient", "table": "p", "key": "id",
                       "fhir": template, **extra}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"gender": "=g.__class__"}, "Attribute is not allowed"),
        ({"gender": "=(lambda: 1)()"}, "Lambda is not allowed"),
        ({"gender": "=[x for x in y]"}, "ListComp is not allowed"),
        ({"gender": "=open('/etc/passwd')"}, "unknown function"),
        ({"gender": "=text(g"}, "not an expression"),
        ({"generalPractitioner": [{"reference": "=ref('p', x)"}]}, "listed before"),
        ({"name": [{"$each": "kids", "$do": {"text": "=x"}}]}, "undeclared children"),
    ],
)
def test_mapping_errors_name_the_place(template: dict[str, object], message: str) -> None:
    with pytest.raises(MappingError, match=message) as exc:
        parse_mapping(_doc(template))
    assert "resources[0] (p)" in str(exc.value)


def test_mapping_schema_errors() -> None:
    with pytest.raises(MappingError, match="'key' is a required property"):
        parse_mapping({"name": "t", "source": "t", "resources": [
            {"name": "p", "resource": "Patient", "table": "p", "fhir": {}}]})  # fmt: skip
    with pytest.raises(MappingError, match="unknown time zone"):
        parse_mapping({**_doc({}), "timezone": "Mars/Olympus"})
    for name in ("clinica", "historial_medico"):
        assert load_mapping(name).resources


@pytest.mark.parametrize(
    ("typed", "same_as"),
    [
        (" Programada.", "programada"),
        ("PROGRAMADA", "programada"),
        ("No  asistió", "NO_ASISTIO"),
        ("no-asistio", "NO_ASISTIO"),
        ("Niño", "NINO"),
        ("A+", "A pos"),
        ("O Rh(-)", "O RH NEG"),
        ("AB -", "ab neg"),
    ],
)
def test_code_keys_fold_case_accents_spaces_and_punctuation(typed: str, same_as: str) -> None:
    assert fold(typed) == fold(same_as)


def test_built_in_vocabularies_and_their_errors() -> None:
    f = Functions("UTC", {"st": {"$synonyms": "appointment-status", "AGENDADA": "pending"}})
    words = {"Reservada": "booked", "no asistió": "noshow", "Anulada": "cancelled",
             "ATENDIDA": "fulfilled", "agendada ": "pending"}  # fmt: skip
    assert {w: f.f_code("st", w) for w in words} == words  # own entries win
    blood = Functions("UTC", {"abo": {"$synonyms": "blood-type"}})
    assert blood.f_code("abo", "O+") == blood.f_code("abo", "0 Rh positivo") == "278147001"
    assert blood.f_code("abo", "AB-") == "278154007" and blood.f_code("abo", "A") == "112144000"
    with pytest.raises(MappingError, match="no built-in vocabulary 'estados'"):
        parse_mapping({**_doc({}), "codes": {"st": {"$synonyms": "estados"}}})
    with pytest.raises(MappingError, match="same key as another entry"):
        parse_mapping({**_doc({}), "codes": {"st": {"No show": "noshow", "NO_SHOW": "booked"}}})


def test_check_mapping_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: x\nresources: []\n")
    out = subprocess.run(
        [sys.executable, "-m", "fhir_server", "import", "check-mapping", str(bad)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "should be non-empty" in out.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "fhir_server", "import", "check-mapping", "historial_medico"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "Médico -> Practitioner" in ok.stdout


USER_MAPPING = """
name: consultorio
source: consultorio_viejo
timezone: America/Guayaquil
codes:
  sexo: {H: male, M: female, X: unknown}
resources:
  - name: personas
    resource: Patient
    table: personas
    key: codigo
    system: https://consultorio.example/personas
    fhir:
      name: [{text: "=join(' ', nombres, apellidos)"}]
      gender: "=code('sexo', sexo, 'desconocido')"
      birthDate: =date(nacimiento)
      identifier: [{system: https://www.registrocivil.gob.ec/cedula, value: =cedula(ci)}]
  - name: pesos
    resource: Observation
    query: SELECT id, persona, kilos, fecha FROM pesajes WHERE kilos > 0
    key: id
    fhir:
      status: final
      code: {coding: [{system: http://loinc.org, code: 29463-7}]}
      subject: {reference: "=ref('personas', persona, required=True)"}
      effectiveDateTime: =datetime(fecha)
      valueQuantity: {value: =number(kilos), unit: kg, system: http://unitsofmeasure.org, code: kg}
"""


def test_users_own_mapping_file(mariadb_url: str, fhir_base: str, tmp_path: Path) -> None:
    """No code: a YAML file maps a legacy table and a query, keys are text codes."""
    execute(
        mariadb_url,
        "CREATE TABLE personas (codigo VARCHAR(10) PRIMARY KEY, nombres VARCHAR(80),"
        " apellidos VARCHAR(80), sexo CHAR(1), nacimiento DATE, ci VARCHAR(13))",
        "CREATE TABLE pesajes (id INT PRIMARY KEY, persona VARCHAR(10), kilos DECIMAL(5,1),"
        " fecha DATETIME)",
        "INSERT INTO personas VALUES ('A-01', 'Ana Belén', 'Cárdenas', 'M', '1971-02-03',"
        " '0102030405'), ('B 02', 'Iván', NULL, 'X', NULL, NULL),"
        " ('C-03', 'Zoila', 'Vera', 'Q', '1960-01-01', NULL)",
        "INSERT INTO pesajes VALUES (1, 'A-01', 61.5, '2024-05-05 07:00:00'),"
        " (2, 'ZZ', 70.0, '2024-05-05 07:00:00'), (3, 'A-01', 0, NULL)",
    )
    mapping = tmp_path / "consultorio.yaml"
    mapping.write_text(USER_MAPPING, "utf-8")
    summary = run(mariadb_url, str(mapping), fhir_base, tmp_path)
    personas = stats(summary, "personas")
    assert (personas.created, personas.failed) == (2, 1)
    assert (stats(summary, "pesos").read, stats(summary, "pesos").created) == (2, 1)
    assert not summary.ok  # weight 2 names a person that does not exist
    ana = by_identifier(fhir_base, "Patient", "https://consultorio.example/personas", "A-01")
    assert ana["name"] == [{"text": "Ana Belén Cárdenas"}]
    assert (ana["gender"], ana["birthDate"]) == ("female", "1971-02-03")
    # A key with a space still makes a working conditional update and reference.
    ivan = by_identifier(fhir_base, "Patient", "https://consultorio.example/personas", "B 02")
    assert ivan["gender"] == "unknown"
    weight = by_identifier(fhir_base, "Observation", "urn:legacy:consultorio_viejo:pesos", "1")
    assert weight["subject"] == {"reference": f"Patient/{ana['id']}"}
    assert weight["valueQuantity"]["value"] == 61.5
    rows = report_rows(tmp_path / "report.csv")
    assert {(r["mapping"], r["key"], r["column"], r["severity"]) for r in rows} >= {
        ("personas", "C-03", "sexo", "warning"),  # not in the code map
        ("personas", "C-03", "Patient.gender", "error"),  # so not valid R4: rejected
        ("pesos", "2", "persona", "error"),  # required reference to nobody
    }
    invalid = next(r for r in rows if r["column"] == "Patient.gender")
    assert invalid["reason"].startswith("not valid R4:") and "desconocido" in invalid["reason"]


def test_make_sample_and_dry_run_commands(mariadb_url: str, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "fhir_server", "import"]
    made = subprocess.run(
        [*cli, "make-sample", "--schema", "historial_medico", "--patients", "15",
         "--source", mariadb_url, "--seed", "4"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "Paciente: 15" in made.stdout and "Médico: 3" in made.stdout
    again = subprocess.run(
        [*cli, "make-sample", "--schema", "historial_medico", "--source", mariadb_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 1 and "already exists" in again.stderr  # no silent mixing
    usage = subprocess.run(
        [*cli, "run", "--source", mariadb_url, "--mapping", "historial_medico"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert usage.returncode == 2 and "--fhir-url is required" in usage.stderr
    dry = subprocess.run(
        [*cli, "run", "--source", mariadb_url, "--mapping", "historial_medico", "--dry-run",
         "--no-progress", "--state-dir", str(tmp_path), "--report", str(tmp_path / "r.csv")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    rows = report_rows(tmp_path / "r.csv")
    failed = sum(r["severity"] == "error" for r in rows)
    assert dry.returncode == (1 if failed else 0), dry.stdout + dry.stderr
    assert "(dry run: nothing written)" in dry.stdout
    assert "patients               Patient" in dry.stdout


def test_checkpoint_only_moves_past_batches_all_committed(tmp_path: Path) -> None:
    """Batches finish out of order; a resume point may only pass keys whose batches,
    and all before them, are committed."""
    from importers.run import _Checkpoints
    from importers.state import State

    tracker = _Checkpoints(None)
    assert not tracker.done(1, 20) and tracker.checkpoint is None  # batch 0 still running
    assert tracker.done(0, 10) and tracker.checkpoint == 20
    assert not tracker.done(3, 40) and tracker.checkpoint == 20
    assert tracker.done(2, 30) and tracker.checkpoint == 40
    state = State(tmp_path / "s.json", {"patients": "2025-01-01T00:00:00"}, {"x": {"3", "1"}})
    state.run = {"status": "running", "checkpoints": {"x": 40}}
    state.save()
    loaded = State.load(tmp_path / "s.json")
    assert (loaded.watermarks, loaded.absent, loaded.run) == (
        state.watermarks,
        state.absent,
        state.run,
    )
