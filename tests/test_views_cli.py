"""``fhir-server view run`` (issue #17) through the real CLI: a ViewDefinition file over
resource files (NDJSON, a Bundle) with no server, and over a server's database; every
error one line on stderr with a non-zero exit code."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from fhir_helpers import put

from fhir_server.cli import main
from fhir_server.config import Settings
from fhir_server.views.cli import FORMAT_CHOICES
from fhir_server.views.output import FORMATS

VIEW = {
    "resourceType": "ViewDefinition",
    "resource": "Patient",
    "status": "active",
    "select": [
        {"column": [{"name": "id", "path": "getResourceKey()"}]},
        {
            "forEachOrNull": "name",
            "column": [
                {"name": "family", "path": "family"},
                {"name": "given", "path": "given.join(' ')"},
            ],
        },
    ],
}
PATIENTS = [
    {"resourceType": "Patient", "id": "p1", "name": [{"family": "Núñez", "given": ["Ana", "Mª"]}]},
    {"resourceType": "Patient", "id": "p2", "name": [{"family": 'O"Neil, Jr'}]},
    {"resourceType": "Patient", "id": "p3"},
]
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
}


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


@pytest.fixture
def view_file(tmp_path: Path) -> Path:
    return write_json(tmp_path / "view.json", VIEW)


@pytest.fixture
def ndjson(tmp_path: Path) -> Path:
    path = tmp_path / "patients.ndjson"
    lines = [json.dumps(r) for r in [PATIENTS[0], OBSERVATION, PATIENTS[1], PATIENTS[2]]]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n", encoding="utf-8")
    return path


def view_run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["view", "run", *map(str, args)])


def failed(result: Result, code: int) -> str:
    """The one stderr line of a failed run."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


EXPECTED = [
    {"id": "p1", "family": "Núñez", "given": "Ana Mª"},
    {"id": "p2", "family": 'O"Neil, Jr', "given": ""},  # join() of nothing
    {"id": "p3", "family": None, "given": None},
]


def test_csv_with_header_from_ndjson(view_file: Path, ndjson: Path) -> None:
    result = view_run(view_file, "--resources", ndjson, "--format", "csv")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no progress bar off a terminal
    assert result.stdout_bytes.startswith(b"id,family,given\r\n")
    rows = list(csv.reader(io.StringIO(result.stdout_bytes.decode("utf-8"), newline="")))
    assert rows == [
        ["id", "family", "given"],
        ["p1", "Núñez", "Ana Mª"],
        ["p2", 'O"Neil, Jr', ""],
        ["p3", "", ""],
    ]
    bare = view_run(view_file, "--resources", ndjson, "--format", "csv", "--no-header")
    assert bare.stdout.splitlines() == result.stdout.splitlines()[1:]


def test_ndjson_from_a_bundle_with_limit(view_file: Path, tmp_path: Path) -> None:
    entries = [{"resource": r} for r in PATIENTS] + [{"request": {"method": "DELETE"}}]
    bundle = write_json(
        tmp_path / "bundle.json", {"resourceType": "Bundle", "type": "batch", "entry": entries}
    )
    result = view_run(view_file, "--resources", bundle, "--format", "ndjson")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == EXPECTED
    limited = view_run(view_file, "--resources", bundle, "--format", "ndjson", "--limit", "2")
    assert [json.loads(line) for line in limited.stdout.splitlines()] == EXPECTED[:2]
    default = view_run(view_file, "--resources", bundle)  # JSON by default
    assert json.loads(default.stdout) == EXPECTED


def test_output_file_and_parquet(view_file: Path, ndjson: Path, tmp_path: Path) -> None:
    target = tmp_path / "rows.parquet"
    result = view_run(view_file, "--resources", ndjson, "--format", "parquet", "-o", target)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert pq.read_table(target).to_pylist() == EXPECTED
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_invalid_view_is_one_line(tmp_path: Path, ndjson: Path) -> None:
    bad = {**VIEW, "select": [{"column": [{"name": "bad name", "path": "id"}]}]}
    line = failed(view_run(write_json(tmp_path / "bad.json", bad), "--resources", ndjson), 1)
    assert "invalid ViewDefinition" in line
    assert "(at ViewDefinition.select[0].column[0].name)" in line
    assert "bad.json" in line


@pytest.mark.parametrize(
    ("make", "code", "expected"),
    [
        (lambda d: d / "missing.json", 2, "no such file"),
        (lambda d: d / "not.json", 1, "is not valid JSON"),
        (
            lambda d: write_json(d / "obs.json", {"resourceType": "Observation"}),
            1,
            "resourceType must be ViewDefinition",
        ),
    ],
    ids=["missing", "not-json", "not-a-view"],
)
def test_bad_view_files(tmp_path: Path, ndjson: Path, make: Any, code: int, expected: str) -> None:
    (tmp_path / "not.json").write_text('{"resourceType": ', encoding="utf-8")
    line = failed(view_run(make(tmp_path), "--resources", ndjson), code)
    assert expected in line


def test_bad_resources(view_file: Path, tmp_path: Path) -> None:
    assert "no such file" in failed(view_run(view_file, "--resources", tmp_path / "x.ndjson"), 2)
    broken = tmp_path / "broken.ndjson"
    broken.write_text(json.dumps(PATIENTS[0]) + "\n{oops\n", encoding="utf-8")
    line = failed(view_run(view_file, "--resources", broken), 1)
    assert "line 2" in line and "not valid JSON" in line
    numbers = tmp_path / "numbers.ndjson"
    numbers.write_text("[1]\n", encoding="utf-8")
    assert "not a FHIR resource" in failed(view_run(view_file, "--resources", numbers), 1)


def test_view_failing_on_data(tmp_path: Path, ndjson: Path) -> None:
    """A column with several values but no collection: the resource it failed on."""
    many = {**VIEW, "select": [{"column": [{"name": "given", "path": "name.given"}]}]}
    target = tmp_path / "out.csv"
    target.write_text("kept", encoding="utf-8")
    result = view_run(write_json(tmp_path / "many.json", many), "--resources", ndjson, "-o", target)
    line = failed(result, 1)
    assert "not a collection" in line and "Patient/p1" in line
    assert "(at ViewDefinition.select[0].column[0].path)" in line
    assert target.read_text(encoding="utf-8") == "kept"  # a failed run leaves it alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.json", "out.csv", "patients.ndjson"]


def test_format_choices_are_the_operations() -> None:
    assert tuple(FORMATS) == FORMAT_CHOICES


# --- over the server's database ---------------------------------------------------------------


@pytest.fixture
def seeded(client: TestClient) -> Iterator[TestClient]:
    for patient in PATIENTS:
        assert put(client, patient).status_code == 201
    assert put(client, {"resourceType": "Patient", "id": "gone"}).status_code == 201
    assert client.delete("/fhir/Patient/gone").status_code in (200, 204)
    assert put(client, OBSERVATION).status_code == 201
    yield client


def test_run_over_the_database(seeded: TestClient, settings: Settings, view_file: Path) -> None:
    assert settings.mongo_url is not None
    db = ["--mongo-url", settings.mongo_url, "--database", settings.database]
    result = view_run(view_file, *db, "--format", "ndjson")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line, parse_float=Decimal) for line in result.stdout.splitlines()]
    assert rows == EXPECTED  # id order; the deleted one and the Observation left out
    csv_run = view_run(view_file, *db, "--format", "csv", "--limit", "1")
    assert csv_run.stdout.splitlines() == ["id,family,given", "p1,Núñez,Ana Mª"]


def test_run_over_the_database_failing(
    seeded: TestClient, settings: Settings, tmp_path: Path
) -> None:
    assert settings.mongo_url is not None
    many = write_json(
        tmp_path / "many.json",
        {**VIEW, "select": [{"column": [{"name": "given", "path": "name.given"}]}]},
    )
    db = ["--mongo-url", settings.mongo_url, "--database", settings.database]
    line = failed(view_run(many, *db), 1)
    assert "not a collection" in line and "Patient/p1" in line
