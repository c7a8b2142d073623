"""Bulk Data ``$import`` (docs/bulk-import.md) end to end: the real app over HTTP, a
real MongoDB, real Celery worker processes and a real broker; inputs from files in an
allowed directory and from a loopback HTTP server."""

from __future__ import annotations

import functools
import http.server
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from process_helpers import stop
from pymongo import MongoClient
from scheduling_helpers import appointment
from test_bulk_export import bearer, make_settings, open_client, start_worker, wait

from fhir_server.config import Settings

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
SOURCE = "https://source.example.org/fhir"


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def queue() -> str:
    return f"import-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker(mongo_url: str, queue: str) -> Iterator[Any]:
    process = start_worker(mongo_url, queue)
    yield process
    stop(process)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "imports"
    d.mkdir()
    return d


def importer(mongo_url: str, queue: str, data_dir: Path, **extra: Any) -> Settings:
    options: dict[str, Any] = {
        "import_dirs": str(data_dir),
        "import_chunk_resources": 4,
        "import_unit_bytes": 700,  # several units per input
    }
    options.update(extra)
    return make_settings(mongo_url, queue, **options)


@pytest.fixture
def bulk(mongo_url: str, queue: str, worker: Any, data_dir: Path) -> Iterator[TestClient]:
    settings = importer(mongo_url, queue, data_dir)
    with open_client(settings) as c:
        c.settings = settings  # type: ignore[attr-defined]
        yield c
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


def manifest(*inputs: tuple[str, str], source: str = SOURCE) -> dict[str, Any]:
    """A Parameters manifest of (type, url) inputs."""
    params: list[dict[str, Any]] = [
        {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
        {"name": "inputSource", "valueUri": source},
        {"name": "storageDetail", "part": [{"name": "type", "valueCode": "https"}]},
    ]
    for t, url in inputs:
        params.append(
            {
                "name": "input",
                "part": [{"name": "type", "valueCode": t}, {"name": "url", "valueUrl": url}],
            }
        )
    return {"resourceType": "Parameters", "parameter": params}


def ndjson(path: Path, lines: list[Any]) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path.as_uri()


def patients(n: int) -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": f"p{i}", "gender": "female", "birthDate": "1980-01-01"}
        for i in range(n)
    ]


def observations(n: int, patients_n: int, tag: str = "") -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Observation",
            "id": f"o{tag}{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/p{i % patients_n}"},
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min"},
        }
        for i in range(n)
    ]


def start(client: Any, body: dict[str, Any], **headers: str) -> str:
    r = client.post("/fhir/$import", json=body, headers={**ASYNC, **headers})
    assert r.status_code == 202, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    return str(r.headers["Content-Location"])


def run_import(client: Any, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = wait(client, start(client, body, **headers), headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def versions(settings: Settings, resource_type: str) -> int:
    """Every stored version of the type (history), to see that nothing was duplicated."""
    with MongoClient(settings.mongo_url) as mc:
        return mc[settings.database]["history"].count_documents({"t": resource_type})


def refused(client: Any, body: dict[str, Any], status: int, expression: str, **h: str) -> str:
    r = client.post("/fhir/$import", json=body, headers={**ASYNC, **h})
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome"
    assert issue["expression"] == [expression], issue
    return str(issue["diagnostics"])


def nothing_queued(settings: Settings) -> None:
    with MongoClient(settings.mongo_url) as mc:
        db = mc[settings.database]
        assert db["bulk_jobs"].count_documents({}) == 0
        assert db["bulk_units"].count_documents({}) == 0
        assert db["history"].count_documents({"t": {"$in": ["Patient", "Observation"]}}) == 0


# --- file inputs, errors, re-runs -------------------------------------------------------------


def test_file_import_with_a_bad_line_then_a_rerun(bulk: TestClient, data_dir: Path) -> None:
    settings: Settings = bulk.settings  # type: ignore[attr-defined]
    people = ndjson(data_dir / "Patient.ndjson", patients(5))
    obs = observations(30, 5)
    bad_status = {**obs[7], "id": "bad1", "status": "bogus"}
    lines: list[Any] = [*obs[:7], bad_status, *obs[7:20], "{not json", "", *obs[20:]]
    lines.append({**obs[0], "id": "p0", "resourceType": "Patient"})  # wrong type: line 34
    observed = ndjson(data_dir / "Observation.ndjson", lines)
    body = manifest(("Patient", people), ("Observation", observed))
    done = run_import(bulk, body)
    assert done["request"].endswith("/fhir/$import") and done["requiresAccessToken"]
    assert done["output"] == [
        {"type": "Patient", "inputUrl": people, "count": 5},
        {"type": "Observation", "inputUrl": observed, "count": 30},
    ]
    assert len(done["error"]) == 1 and done["error"][0]["count"] == 3
    assert done["error"][0]["inputUrl"] == observed
    r = bulk.get(done["error"][0]["url"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+ndjson")
    errors = [json.loads(x) for x in r.text.splitlines()]
    assert [e["resourceType"] for e in errors] == ["OperationOutcome"] * 3
    located = [e["issue"][0]["location"] for e in errors]
    assert located == [["Line[8]"], ["Line[22]"], ["Line[34]"]]
    assert "Observation.status" in errors[0]["issue"][0]["expression"]
    assert "line 8" in errors[0]["issue"][0]["diagnostics"]
    assert errors[1]["issue"][0]["expression"] == ["$this"]
    assert errors[2]["issue"][0]["expression"] == ["resourceType"]
    # ids and references as given; meta.source from inputSource
    o = bulk.get("/fhir/Observation/o12").json()
    assert o["subject"] == {"reference": "Patient/p2"} and o["meta"]["source"] == SOURCE
    found = bulk.get("/fhir/Observation?subject=Patient/p2&_count=100").json()
    assert {e["resource"]["id"] for e in found["entry"]} == {f"o{i}" for i in range(2, 30, 5)}
    assert bulk.get("/fhir/Observation/bad1").status_code == 404
    assert versions(settings, "Observation") == 30 and versions(settings, "Patient") == 5
    # the same inputs again: everything counted, no new version of anything
    again = run_import(bulk, body)
    assert [o["count"] for o in again["output"]] == [5, 30]
    assert versions(settings, "Observation") == 30 and versions(settings, "Patient") == 5
    assert bulk.get("/fhir/Observation/o3/_history").json()["total"] == 1
    # a changed line makes exactly one new version of that resource
    obs[3]["status"] = "amended"
    ndjson(data_dir / "Observation.ndjson", obs)
    run_import(bulk, manifest(("Observation", observed)))
    assert versions(settings, "Observation") == 31
    assert bulk.get("/fhir/Observation/o3").json()["meta"]["versionId"] == "2"


def test_write_rules_apply_and_name_the_refused_line(bulk: TestClient, data_dir: Path) -> None:
    """The write pipeline's rules run on imported resources as on any write: a second
    booking of the same practitioner's time is refused (409 conflict) and reported
    for its line alone; the other appointments of the chunk are imported."""
    booked = [
        {**appointment(practitioner="dr", begin=0), "id": "a1"},
        {**appointment(practitioner="dr", begin=5), "id": "a2"},  # overlaps a1
        {**appointment(practitioner="dr", begin=30), "id": "a3"},
    ]
    url = ndjson(data_dir / "Appointment.ndjson", booked)
    done = run_import(bulk, manifest(("Appointment", url)))
    assert done["output"][0]["count"] == 2 and done["error"][0]["count"] == 1
    outcome = json.loads(bulk.get(done["error"][0]["url"]).text)
    assert outcome["issue"][0]["code"] == "conflict"
    assert outcome["issue"][0]["location"] == ["Line[2]"]
    assert bulk.get("/fhir/Appointment/a2").status_code == 404
    assert bulk.get("/fhir/Appointment/a3").status_code == 200


def test_plain_json_manifest_status_and_cancel(bulk: TestClient, data_dir: Path) -> None:
    settings: Settings = bulk.settings  # type: ignore[attr-defined]
    # p1 twice in one chunk, its id after another "id" (meta.id): two versions, in order
    again = {"resourceType": "Patient", "meta": {"id": "m"}, "id": "p1", "gender": "male"}
    url = ndjson(data_dir / "Patient.ndjson", [*patients(3), again])
    body = {
        "inputFormat": "application/fhir+ndjson",
        "inputSource": SOURCE,
        "input": [{"type": "Patient", "url": url}],
    }
    done = run_import(bulk, body)
    assert done["output"][0]["count"] == 4 and done["error"] == []
    assert bulk.get("/fhir/Patient/p1").json()["gender"] == "male"
    assert versions(settings, "Patient") == 4
    status = start(bulk, body)
    assert bulk.delete(status).status_code == 202
    r = bulk.get(status)
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    # an import job is not an export job, and the reverse
    assert bulk.get(status.replace("$import-status", "$export-status")).status_code == 404


# --- http inputs ------------------------------------------------------------------------------


@pytest.fixture
def served(data_dir: Path) -> Iterator[str]:
    """A loopback HTTP server of ``data_dir`` (under /data/), in a thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    root = data_dir.parent
    (root / "data").symlink_to(data_dir)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_import_from_an_allow_listed_url(
    mongo_url: str, queue: str, worker: Any, data_dir: Path, served: str
) -> None:
    settings = importer(mongo_url, queue, data_dir, import_url_allow=f"{served}/data/")
    ndjson(data_dir / "Patient.ndjson", patients(4))
    lines: list[Any] = observations(12, 4)
    lines.insert(5, {**lines[0], "id": "x", "status": "nope"})
    ndjson(data_dir / "Observation.ndjson", lines)
    with open_client(settings) as c:
        body = manifest(
            ("Patient", f"{served}/data/Patient.ndjson"),
            ("Observation", f"{served}/data/Observation.ndjson"),
        )
        done = run_import(c, body)
        assert [o["count"] for o in done["output"]] == [4, 12]
        errors = c.get(done["error"][0]["url"]).text.splitlines()
        assert len(errors) == 1 and json.loads(errors[0])["issue"][0]["location"] == ["Line[6]"]
        assert c.get("/fhir/Observation/o5").json()["subject"]["reference"] == "Patient/p1"
        # an input the server cannot fetch is an error line for that input, not a hang
        missing = run_import(c, manifest(("Patient", f"{served}/data/none.ndjson")))
        assert missing["output"][0]["count"] == 0
        outcome = json.loads(c.get(missing["error"][0]["url"]).text)
        assert "404" in outcome["issue"][0]["diagnostics"]
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


# --- refusals ---------------------------------------------------------------------------------


def test_refused_inputs_and_manifests(bulk: TestClient, data_dir: Path, tmp_path: Path) -> None:
    settings: Settings = bulk.settings  # type: ignore[attr-defined]
    inside = ndjson(data_dir / "Patient.ndjson", patients(1))
    outside = ndjson(tmp_path / "outside.ndjson", patients(1))
    (data_dir / "link.ndjson").symlink_to(tmp_path / "outside.ndjson")
    part = "Parameters.parameter[3].part[1].value"
    message = refused(bulk, manifest(("Patient", outside)), 400, part)
    assert "FHIR_IMPORT_DIRS" in message
    refused(bulk, manifest(("Patient", (data_dir / "link.ndjson").as_uri())), 400, part)
    refused(bulk, manifest(("Patient", f"{data_dir.as_uri()}/../outside.ndjson")), 400, part)
    refused(bulk, manifest(("Patient", (data_dir / "none.ndjson").as_uri())), 400, part)
    message = refused(bulk, manifest(("Patient", "http://127.0.0.1:9/x.ndjson")), 400, part)
    assert "FHIR_IMPORT_URL_ALLOW" in message
    refused(bulk, manifest(("Patient", "ftp://example.org/x.ndjson")), 400, part)
    refused(bulk, manifest(("Patient", inside), ("Patient", outside)), 400,
            "Parameters.parameter[4].part[1].value")  # fmt: skip
    refused(bulk, manifest(("Bogus", inside)), 400, "Parameters.parameter[3].part[0].value")
    no_format = manifest(("Patient", inside))
    no_format["parameter"] = no_format["parameter"][1:]
    refused(bulk, no_format, 400, "inputFormat")
    csv = manifest(("Patient", inside))
    csv["parameter"][0]["valueCode"] = "text/csv"
    refused(bulk, csv, 400, "inputFormat")
    refused(bulk, {"resourceType": "Patient"}, 400, "resourceType")
    r = bulk.post("/fhir/$import", json=manifest(("Patient", inside)))
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Prefer"]
    assert bulk.get("/fhir/$import", headers=ASYNC).status_code == 405
    nothing_queued(settings)


def test_file_inputs_are_refused_without_import_dirs(
    mongo_url: str, queue: str, data_dir: Path
) -> None:
    settings = importer(mongo_url, queue, data_dir, import_dirs="")
    url = ndjson(data_dir / "Patient.ndjson", patients(1))
    with open_client(settings) as c:
        message = refused(
            c, manifest(("Patient", url)), 400, "Parameters.parameter[3].part[1].value"
        )
        assert "FHIR_IMPORT_DIRS is empty" in message
        nothing_queued(settings)
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


# --- authorization ----------------------------------------------------------------------------


def test_import_needs_system_write_scopes_for_every_type(
    mongo_url: str, queue: str, worker: Any, data_dir: Path
) -> None:
    settings = importer(mongo_url, queue, data_dir, auth_enabled=True)
    body = manifest(
        ("Patient", ndjson(data_dir / "Patient.ndjson", patients(2))),
        ("Observation", ndjson(data_dir / "Observation.ndjson", observations(3, 2))),
    )
    outside = manifest(("Patient", "file:///etc/passwd"), ("Observation", "file:///etc/hosts"))
    with open_client(settings) as c:
        r = c.post("/fhir/$import", json=body, headers=ASYNC)
        assert r.status_code == 401
        for scope, patient in (
            ("user/*.cruds", None),  # a user's token, however broad
            ("patient/*.cruds", "p0"),
            ("system/*.rs", None),  # read and search only
            ("system/Patient.cu", None),  # lacks Observation
            ("system/Patient.cu system/Observation.u", None),  # update without create
            ("system/Patient.cu system/Observation.cu?status=final", None),  # part of a type
        ):
            token = bearer(settings, "loader", scope, patient)
            r = c.post("/fhir/$import", json=body, headers={**ASYNC, **token})
            assert r.status_code == 403, (scope, r.text)
            assert r.json()["resourceType"] == "OperationOutcome"
            # refused before the inputs are looked at: no probing of the server's disk
            r = c.post("/fhir/$import", json=outside, headers={**ASYNC, **token})
            assert r.status_code == 403, (scope, r.text)
        nothing_queued(settings)
        r = c.post(
            "/fhir/$import",
            json=body,
            headers={**ASYNC, **bearer(settings, "x", "system/Patient.cu")},
        )
        assert r.json()["issue"][0]["expression"] == ["input"]
        assert "Observation" in r.json()["issue"][0]["diagnostics"]
        loader = bearer(settings, "loader", "system/Patient.cu system/Observation.write")
        status = start(c, body, **loader)
        other = bearer(settings, "other", "system/*.*")
        assert c.get(status, headers=other).status_code == 404  # another client's job
        assert c.delete(status, headers=other).status_code == 404
        errors_url = status.replace("$import-status", "$import-file") + "/0"
        assert c.get(errors_url, headers=other).status_code == 404
        r = wait(c, status, headers=loader)
        assert r.status_code == 200 and [o["count"] for o in r.json()["output"]] == [2, 3]
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


def test_issued_legacy_invoices_come_in_through_import_with_authorization_on(
    mongo_url: str, queue: str, worker: Any, data_dir: Path
) -> None:
    """docs/billing.md: invoices are created as drafts and numbered when issued; only
    the server itself may create one already issued, with the number the old system
    gave it. An authorized $import writes as the server (its kick-off checked the
    client's system write scopes), so a clinic's issued invoices come across with
    authorization on, while the same client's REST create of an issued one is refused."""
    settings = importer(mongo_url, queue, data_dir, auth_enabled=True)
    number = {"system": "urn:fhir-server:ec:invoice-number", "value": "001-001-000000457"}
    invoice = {
        "resourceType": "Invoice",
        "id": "legacy-457",
        "status": "issued",
        "identifier": [number],
        "subject": {"reference": "Patient/p0"},
        "date": "2019-05-02",
    }
    body = manifest(
        ("Patient", ndjson(data_dir / "Patient.ndjson", patients(1))),
        ("Invoice", ndjson(data_dir / "Invoice.ndjson", [invoice])),
    )
    token = bearer(settings, "migration", "system/Patient.cu system/Invoice.cu system/Invoice.r")
    with open_client(settings) as c:
        done = run_import(c, body, **token)
        assert [o["count"] for o in done["output"]] == [1, 1] and not done.get("error")
        stored = c.get("/fhir/Invoice/legacy-457", headers=token).json()
        assert (stored["status"], stored["identifier"]) == ("issued", [number])
        again = {k: v for k, v in invoice.items() if k != "id"}
        again["identifier"] = [{**number, "value": "001-001-000000458"}]
        r = c.post("/fhir/Invoice", json=again, headers=token)
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["expression"] == ["Invoice.status"]
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


# --- a killed worker ------------------------------------------------------------------------------


def test_worker_killed_mid_import_resumes_exactly(
    mongo_url: str, data_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL the only worker while it imports; a new worker (after the lease runs out;
    status polls re-dispatch the unit) finishes: every line imported once, one version
    each, the counts exact."""
    queue = f"import-kill-{uuid.uuid4().hex[:8]}"
    settings = importer(
        mongo_url, queue, data_dir, import_chunk_resources=25, import_unit_bytes=1 << 30,
        export_lease_seconds=2,
    )  # fmt: skip
    total = 2000
    url = ndjson(data_dir / "Observation.ndjson", observations(total, 50))
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115
    first = start_worker(mongo_url, queue, log)
    second = None
    try:
        with open_client(settings) as c, MongoClient(mongo_url) as mc:
            status = start(c, manifest(("Observation", url)))
            units = mc[settings.database]["bulk_units"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if (units.find_one({}, {"count": 1}) or {}).get("count", 0) >= 100:
                    break
                time.sleep(0.005)
            first.send_signal(signal.SIGKILL)
            first.wait()
            unit = units.find_one({})
            assert unit is not None and unit["state"] == "pending"
            assert 100 <= unit["count"] < total, "the kill must land mid-import"
            second = start_worker(mongo_url, queue, log)
            r = wait(c, status, timeout=90)
            assert r.status_code == 200, r.text
            assert r.json()["output"][0]["count"] == total and r.json()["error"] == []
            history = mc[settings.database]["history"]
            assert history.count_documents({"t": "Observation"}) == total
            assert mc[settings.database]["Observation"].count_documents({}) == total
            mc.drop_database(settings.database)
    finally:
        stop(first)
        if second is not None:
            stop(second)
        log.close()


def test_capability_statement_declares_import(bulk: TestClient) -> None:
    rest = bulk.get("/fhir/metadata").json()["rest"][0]
    assert "import" in {op["name"] for op in rest["operation"]}
