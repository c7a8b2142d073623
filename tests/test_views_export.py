"""SQL on FHIR v2 ``$viewdefinition-export`` end to end: the real app, a real MongoDB, a
real Celery worker process and a real broker (the fixtures of test_bulk_export: a view
export is a bulk export job whose units write a view's rows).

The flow is the spec's (ViewDefinitionExport; operations-common "Asynchronous
Delivery"): kick-off 202 with ``Content-Location`` and a Parameters body; polls 202
with ``X-Progress`` while running; "once the job has finished - whether it succeeded or
failed - the status poll returns 303 See Other with a Location header carrying the
result URL and an empty body"; the result URL answers 200 with the manifest Parameters
(``exportId``, ``status``, ``output`` with ``name`` and ``location``s) or the failure's
OperationOutcome; DELETE on the status URL cancels.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from gridfs import GridFSBucket
from process_helpers import stop
from pymongo import MongoClient
from test_bulk_export import (  # noqa: F401 (the worker fixtures)
    bearer,
    make_settings,
    open_client,
    population,
    queue,
    start_worker,
    transaction,
    worker,
)

from fhir_server.config import Settings

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
KICKOFF = "/fhir/$viewdefinition-export"

OBSERVATIONS = {
    "resourceType": "ViewDefinition",
    "name": "observations",
    "resource": "Observation",
    "status": "active",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                {"name": "status", "path": "status"},
                {"name": "code", "path": "code.coding.first().code"},
            ]
        }
    ],
}
PATIENTS = {
    "resourceType": "ViewDefinition",
    "name": "patients",
    "resource": "Patient",
    "status": "active",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "gender", "path": "gender"},
                {"name": "active", "path": "active", "type": "boolean"},
                {"name": "birth", "path": "birthDate", "type": "date"},
            ]
        }
    ],
}


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def views(mongo_url: str, queue: str, worker: Any) -> Iterator[TestClient]:  # noqa: F811
    """The app with authorization off; export files of at most 7 rows."""
    settings = make_settings(mongo_url, queue)
    with open_client(settings) as c:
        c.settings = settings  # type: ignore[attr-defined]
        yield c
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


@pytest.fixture
def secured(mongo_url: str, queue: str, worker: Any) -> Iterator[TestClient]:  # noqa: F811
    """Like ``views``, with SMART authorization on (requests need real tokens)."""
    settings = make_settings(mongo_url, queue, auth_enabled=True)
    with open_client(settings) as c:
        c.settings = settings  # type: ignore[attr-defined]
        c.headers.update(bearer(settings, "loader"))  # system/*.cruds
        yield c
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


def view_param(
    definition: dict[str, Any] | None = None,
    name: str | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if name is not None:
        parts.append({"name": "name", "valueString": name})
    if definition is not None:
        parts.append({"name": "viewResource", "resource": definition})
    if reference is not None:
        parts.append({"name": "viewReference", "valueReference": {"reference": reference}})
    return {"name": "view", "part": parts}


def parameters(*params: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(params)}


def values(body: dict[str, Any], name: str) -> list[Any]:
    """The values (or parts) of every parameter ``name`` of a Parameters resource."""
    out = []
    for p in body["parameter"]:
        if p["name"] == name:
            value = [v for k, v in p.items() if k.startswith("value")]
            out.append(value[0] if value else p.get("part"))
    return out


def kick_off(client: TestClient, body: dict[str, Any], url: str = KICKOFF, **kw: Any) -> str:
    headers = {**ASYNC, **kw.pop("headers", {})}
    r = client.post(url, json=body, headers=headers, **kw)
    assert r.status_code == 202, r.text
    status_url = str(r.headers["Content-Location"])
    out = r.json()
    assert out["resourceType"] == "Parameters"
    assert values(out, "status") == ["accepted"]
    assert values(out, "location") == [status_url]
    assert status_url.endswith(f"/$export-status/{values(out, 'exportId')[0]}")
    return status_url


def poll(client: TestClient, status_url: str, timeout: float = 60, **kw: Any) -> httpx.Response:
    """Poll until the status URL stops answering 202; each 202 carries X-Progress,
    Retry-After and an in-progress Parameters."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(status_url, follow_redirects=False, **kw)
        if r.status_code != 202:
            return r
        assert "X-Progress" in r.headers and int(r.headers["Retry-After"]) > 0
        assert values(r.json(), "status") == ["in-progress"]
        time.sleep(0.1)
    raise AssertionError(f"export not finished after {timeout} s")


def result(client: TestClient, status_url: str, **kw: Any) -> httpx.Response:
    """The 303 of the finished job, then its result URL."""
    r = poll(client, status_url, **kw)
    assert r.status_code == 303, r.text
    assert r.content == b""
    location = r.headers["Location"]
    assert location == f"{status_url}/result"
    return client.get(location, **kw)


def outputs(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Output name → its file URLs, in order."""
    out: dict[str, list[str]] = {}
    for parts in values(manifest, "output"):
        name = next(p["valueString"] for p in parts if p["name"] == "name")
        out[name] = [p["valueUri"] for p in parts if p["name"] == "location"]
    return out


def export(
    client: TestClient, body: dict[str, Any], url: str = KICKOFF, **kw: Any
) -> dict[str, list[bytes]]:
    """Kick-off, poll, result, download: each output's files' bytes."""
    r = result(client, kick_off(client, body, url, **kw), **kw)
    assert r.status_code == 200, r.text
    manifest = r.json()
    assert values(manifest, "status") == ["completed"]
    files: dict[str, list[bytes]] = {}
    for name, urls in outputs(manifest).items():
        files[name] = []
        for file_url in urls:
            got = client.get(file_url, **kw)
            assert got.status_code == 200, got.text
            files[name].append(got.content)
    return files


def csv_rows(files: list[bytes]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for content in files:
        rows += list(csv.DictReader(io.StringIO(content.decode("utf-8"), newline="")))
    return rows


def ndjson_rows(files: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for content in files for line in content.decode().splitlines()]


def stored_files(settings: Settings) -> int:
    with MongoClient(settings.mongo_url) as mc:
        return mc[settings.database]["bulk.files"].count_documents({})


# --- formats --------------------------------------------------------------------------------


def test_csv_round_trip_split_into_parts(views: TestClient) -> None:
    transaction(views, population(5, 4))  # 20 Observations
    body = parameters(
        {"name": "clientTrackingId", "valueString": "monthly-1"},
        view_param(OBSERVATIONS, name="obs"),
        {"name": "_format", "valueCode": "csv"},
    )
    status_url = kick_off(views, body)
    r = result(views, status_url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    assert "Expires" in r.headers
    manifest = r.json()
    assert values(manifest, "clientTrackingId") == ["monthly-1"]
    assert values(manifest, "_format") == ["csv"]
    assert values(manifest, "location") == [status_url]
    assert values(manifest, "exportEndTime") and values(manifest, "exportDuration")[0] >= 0
    urls = outputs(manifest)["obs"]
    assert len(urls) == 3  # files of at most 7 rows (export_file_max_resources): 7, 7, 6
    contents = []
    for url in urls:
        got = views.get(url)
        assert got.status_code == 200
        assert got.headers["content-type"].startswith("text/csv")
        assert got.headers["content-disposition"].startswith('attachment; filename="obs.part')
        assert got.content.startswith(b"id,patient,status,code\r\n")  # a header in each part
        contents.append(got.content)
    rows = csv_rows(contents)
    assert [len(csv_rows([c])) for c in contents] == [7, 7, 6]
    assert sorted(r["id"] for r in rows) == sorted(f"o{p}-{o}" for p in range(5) for o in range(4))
    first = next(r for r in rows if r["id"] == "o1-3")
    assert first == {"id": "o1-3", "patient": "p1", "status": "preliminary", "code": "1"}
    # polling the status URL again still redirects; the result can be fetched again
    assert views.get(status_url, follow_redirects=False).status_code == 303
    assert views.get(f"{status_url}/result").json() == manifest


def test_csv_without_header(views: TestClient) -> None:
    transaction(views, population(2, 1))
    body = parameters(
        view_param(PATIENTS),
        {"name": "_format", "valueCode": "csv"},
        {"name": "header", "valueBoolean": False},
    )
    files = export(views, body)
    text = b"".join(files["patients"]).decode()
    assert sorted(text.splitlines()) == ["p0,male,,1970-01-01", "p1,female,,1970-01-01"]


def test_several_views_in_one_job_default_ndjson(views: TestClient) -> None:
    """No _format: ndjson, "irrespective of Accept" (operations-common, Output Formats).
    Output names: the view's name part, else the ViewDefinition's name."""
    transaction(views, population(3, 2))
    body = parameters(view_param(PATIENTS), view_param(OBSERVATIONS, name="obs_all"))
    r = views.post(KICKOFF, json=body, headers={**ASYNC, "Accept": "text/csv"})
    assert r.status_code == 202
    res = result(views, r.headers["Content-Location"])
    manifest = res.json()
    assert values(manifest, "_format") == ["ndjson"]
    assert list(outputs(manifest)) == ["patients", "obs_all"]  # the request's order
    files = export(views, body)
    patients = ndjson_rows(files["patients"])
    assert sorted(p["id"] for p in patients) == ["p0", "p1", "p2"]
    assert patients[0] == {"id": "p0", "gender": "male", "active": None, "birth": "1970-01-01"}
    assert len(ndjson_rows(files["obs_all"])) == 6


def test_json_format_is_an_array_per_file(views: TestClient) -> None:
    transaction(views, population(4, 3))  # 12 Observations: files of 7 and 5
    body = parameters(view_param(OBSERVATIONS), {"name": "_format", "valueCode": "json"})
    files = export(views, body)["observations"]
    arrays = [json.loads(f) for f in files]
    assert [len(a) for a in arrays] == [7, 5]
    assert {row["id"] for a in arrays for row in a} == {
        f"o{p}-{o}" for p in range(4) for o in range(3)
    }


def test_parquet_read_back_with_pyarrow(views: TestClient, tmp_path: Any) -> None:
    patients = [r for r in population(3, 0) if r["resourceType"] == "Patient"]
    patients[1]["active"] = True
    transaction(views, patients)
    body = parameters(view_param(PATIENTS), {"name": "_format", "valueCode": "parquet"})
    r = result(views, kick_off(views, body))
    url = outputs(r.json())["patients"][0]
    got = views.get(url)
    assert got.headers["content-type"] == "application/vnd.apache.parquet"
    path = tmp_path / "patients.parquet"
    path.write_bytes(got.content)
    table = pq.read_table(path)
    assert str(table.schema.field("active").type) == "bool"
    assert str(table.schema.field("birth").type) == "string"
    assert table.to_pylist() == [
        {"id": "p0", "gender": "male", "active": None, "birth": "1970-01-01"},
        {"id": "p1", "gender": "female", "active": True, "birth": "1970-01-01"},
        {"id": "p2", "gender": "male", "active": None, "birth": "1970-01-01"},
    ]


def test_a_view_with_no_rows_still_has_a_file(views: TestClient) -> None:
    transaction(views, population(1, 0)[1:])
    body = parameters(view_param(OBSERVATIONS), {"name": "_format", "valueCode": "csv"})
    files = export(views, body)
    assert files == {"observations": [b"id,patient,status,code\r\n"]}


# --- filters ------------------------------------------------------------------------------


def test_since_keeps_resources_changed_at_or_after_it(views: TestClient) -> None:
    transaction(views, population(2, 1))
    before = views.get("/fhir/Patient/p0").json()["meta"]["lastUpdated"]
    time.sleep(0.05)
    later = views.get("/fhir/Patient/p1").json()
    later["active"] = True
    assert views.put("/fhir/Patient/p1", json=later).status_code == 200
    updated = views.get("/fhir/Patient/p1").json()["meta"]["lastUpdated"]
    assert updated > before
    body = parameters(view_param(PATIENTS), {"name": "_since", "valueInstant": updated})
    rows = ndjson_rows(export(views, body)["patients"])
    assert [(r["id"], r["active"]) for r in rows] == [("p1", True)]


def test_where_is_applied_and_pushed_into_the_query(views: TestClient) -> None:
    """The view's ``where`` (pushed into the unit's stored filter as index conditions,
    views/pushdown.py) keeps exactly the resources it is true for, string tests being
    exact although a string search is by prefix and without case."""
    transaction(views, population(4, 0))
    for pid, family in (("p0", "Muñoz"), ("p1", "MUÑOZ"), ("p2", "Muñozz")):
        patient = views.get(f"/fhir/Patient/{pid}").json()
        patient["name"] = [{"family": family}]
        assert views.put(f"/fhir/Patient/{pid}", json=patient).status_code == 200
    females = {**PATIENTS, "where": [{"path": "gender = 'female'"}]}
    rows = ndjson_rows(export(views, parameters(view_param(females)))["patients"])
    assert sorted(r["id"] for r in rows) == ["p1", "p3"]
    munoz = {**PATIENTS, "where": [{"path": "name.family = 'Muñoz'"}]}
    rows = ndjson_rows(export(views, parameters(view_param(munoz)))["patients"])
    assert [r["id"] for r in rows] == ["p0"]


def test_patient_and_group_confine_the_rows(views: TestClient) -> None:
    transaction(views, population(4, 2))
    group = {
        "resourceType": "Group",
        "id": "g1",
        "type": "person",
        "actual": True,
        "member": [
            {"entity": {"reference": "Patient/p1"}},
            {"entity": {"reference": "Patient/p3"}},
        ],
    }
    assert views.put("/fhir/Group/g1", json=group).status_code in (200, 201)
    ref = {"reference": "Patient/p2"}
    body = parameters(view_param(OBSERVATIONS), {"name": "patient", "valueReference": ref})
    rows = ndjson_rows(export(views, body)["observations"])
    assert sorted(r["id"] for r in rows) == ["o2-0", "o2-1"]
    body = parameters(
        view_param(OBSERVATIONS), {"name": "group", "valueReference": {"reference": "Group/g1"}}
    )
    rows = ndjson_rows(export(views, body)["observations"])
    assert sorted(r["id"] for r in rows) == ["o1-0", "o1-1", "o3-0", "o3-1"]
    # a Patient view with patient: the patient itself
    body = parameters(view_param(PATIENTS), {"name": "patient", "valueReference": ref})
    assert [r["id"] for r in ndjson_rows(export(views, body)["patients"])] == ["p2"]


def test_deleted_and_later_resources_are_not_exported(views: TestClient) -> None:
    transaction(views, population(3, 0)[1:])
    assert views.delete("/fhir/Patient/p2").status_code in (200, 204)
    body = parameters(view_param(PATIENTS))
    assert sorted(r["id"] for r in ndjson_rows(export(views, body)["patients"])) == ["p0", "p1"]


# --- errors -------------------------------------------------------------------------------


def _error(r: httpx.Response, status: int, expression: str, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome"
    assert issue["expression"] == [expression], issue
    if code is not None:
        assert issue["code"] == code, issue


def test_parameter_errors_are_400_naming_the_parameter(views: TestClient) -> None:
    transaction(views, population(1, 1))
    ok = view_param(OBSERVATIONS)

    def post(body: Any, url: str = KICKOFF) -> httpx.Response:
        return views.post(url, json=body, headers=ASYNC)

    r = views.post(KICKOFF, json=parameters(ok))  # no Prefer: respond-async
    _error(r, 400, "Prefer")
    _error(post({"resourceType": "Patient"}), 400, "Parameters")
    _error(post(parameters()), 400, "Parameters", "required")
    _error(post(parameters({"name": "view"})), 400, "Parameters.parameter[0]")
    _error(post(parameters({"name": "view", "part": [{"name": "name", "valueString": "x"}]})),
           400, "Parameters.parameter[0]", "required")  # fmt: skip
    both = view_param(OBSERVATIONS, reference="ViewDefinition/x")
    _error(post(parameters(both)), 400, "Parameters.parameter[0].part[1]")
    bad_name = view_param(OBSERVATIONS, name="no spaces")
    _error(post(parameters(bad_name)), 400, "Parameters.parameter[0].part[0]")
    two = parameters(view_param(OBSERVATIONS, name="a"), view_param(PATIENTS, name="a"))
    _error(post(two), 400, "Parameters.parameter[1].part[0]")
    odd_part = {"name": "view", "part": [{"name": "viewResource", "resource": OBSERVATIONS},
                                         {"name": "colour", "valueString": "red"}]}  # fmt: skip
    _error(post(parameters(odd_part)), 400, "Parameters.parameter[0].part[1]", "not-supported")
    for param, code in [
        ({"name": "_format", "valueCode": "xlsx"}, "not-supported"),
        ({"name": "_format", "valueCode": "fhir"}, "not-supported"),
        ({"name": "header", "valueString": "maybe"}, "invalid"),
        ({"name": "_since", "valueString": "yesterday"}, "invalid"),
        ({"name": "patient", "valueReference": {"reference": "Group/g"}}, "invalid"),
        ({"name": "group", "valueReference": {"reference": "Patient/p0"}}, "invalid"),
        ({"name": "source", "valueString": "s3://bucket"}, "not-supported"),
        ({"name": "_limit", "valueInteger": 5}, "not-supported"),
        ({"name": "clientTrackingId", "valueInteger": 5}, "invalid"),
    ]:
        _error(post(parameters(ok, param)), 400, "Parameters.parameter[1]", code)
    fmt = {"name": "_format", "valueCode": "csv"}
    twice = parameters(ok, fmt, fmt)
    _error(post(twice), 400, "Parameters.parameter[2]")
    _error(views.post(f"{KICKOFF}?_format=csv", json=parameters(ok), headers=ASYNC),
           400, "_format", "not-supported")  # fmt: skip
    # "a patient or group naming a resource the server cannot find" is 400 not-found
    # (operations-common, "Status code for a value that cannot be resolved")
    unknown = {"name": "patient", "valueReference": {"reference": "Patient/nobody"}}
    _error(post(parameters(ok, unknown)), 400, "Parameters.parameter[1]", "not-found")
    no_group = {"name": "group", "valueReference": {"reference": "Group/none"}}
    _error(post(parameters(ok, no_group)), 400, "Parameters.parameter[1]", "not-found")
    org_view = {**OBSERVATIONS, "resource": "Organization"}
    patient = {"name": "patient", "valueReference": {"reference": "Patient/p0"}}
    _error(post(parameters(view_param(org_view), patient)), 400, "Parameters.parameter[1]")
    for method in ("GET", "PUT", "DELETE"):
        r = views.request(method, KICKOFF, headers=ASYNC)
        assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert stored_files(views.settings) == 0  # type: ignore[attr-defined]


def test_an_invalid_view_is_422_at_its_place_in_the_request(views: TestClient) -> None:
    broken = {**OBSERVATIONS, "select": [{"column": [{"name": "bad name", "path": "id"}]}]}
    body = parameters(view_param(PATIENTS), view_param(broken, name="x"))
    r = views.post("/fhir/ViewDefinition/$export", json=body, headers=ASYNC)
    _error(r, 422, "Parameters.parameter[1].part[1].resource.select[0].column[0].name", "invalid")
    not_fhirpath = {**OBSERVATIONS, "select": [{"column": [{"name": "a", "path": "id.("}]}]}
    r = views.post(KICKOFF, json=parameters(view_param(not_fhirpath)), headers=ASYNC)
    _error(r, 422, "Parameters.parameter[0].part[0].resource.select[0].column[0].path")


def test_a_view_failing_on_the_data_fails_the_job(views: TestClient) -> None:
    """Valid, but a column with several values and no ``collection``: found by the
    worker, so the export fails and its result URL answers 500 with the OperationOutcome
    (the spec's "ERROR HANDLING" flow: 303 from the status, then the error status)."""
    transaction(views, population(2, 0)[1:])
    many = {
        **PATIENTS,
        "select": [{"column": [{"name": "given", "path": "name.given | gender | birthDate"}]}],
    }
    status_url = kick_off(views, parameters(view_param(many)))
    r = result(views, status_url)
    assert r.status_code == 500
    assert r.json()["issue"][0]["code"] == "exception"
    assert "collection" in r.json()["issue"][0]["diagnostics"]


def test_type_level_endpoint_and_unknown_jobs(views: TestClient) -> None:
    transaction(views, population(1, 0)[1:])
    files = export(views, parameters(view_param(PATIENTS)), url="/fhir/ViewDefinition/$export")
    assert [r["id"] for r in ndjson_rows(files["patients"])] == ["p0"]
    assert views.get("/fhir/$export-status/nope/result").status_code == 404
    # a Bulk Data job has no result URL: its status poll answers its manifest
    r = views.get("/fhir/$export?_type=Patient", headers=ASYNC)
    bulk_status = r.headers["Content-Location"]
    assert views.get(f"{bulk_status}/result").status_code == 404


def test_view_reference_to_a_stored_view(views: TestClient) -> None:
    transaction(views, population(2, 0)[1:])
    r = views.post("/fhir/ViewDefinition", json=PATIENTS)
    assert r.status_code == 201, r.text
    vid = r.json()["id"]
    files = export(views, parameters(view_param(reference=f"ViewDefinition/{vid}")))
    assert sorted(r["id"] for r in ndjson_rows(files["patients"])) == ["p0", "p1"]
    # the instance level: the stored view, with or without other parameters
    files = export(views, parameters(), url=f"/fhir/ViewDefinition/{vid}/$viewdefinition-export")
    assert sorted(r["id"] for r in ndjson_rows(files["patients"])) == ["p0", "p1"]
    csv_body = parameters({"name": "_format", "valueCode": "csv"})
    files = export(views, csv_body, url=f"/fhir/ViewDefinition/{vid}/$export")
    assert b"".join(files["patients"]).startswith(b"id,gender,active,birth\r\n")
    r = views.post(f"/fhir/ViewDefinition/{vid}/$export", headers=ASYNC)  # no body at all
    assert r.status_code == 202
    at_instance = parameters(view_param(PATIENTS))
    r = views.post(f"/fhir/ViewDefinition/{vid}/$export", json=at_instance, headers=ASYNC)
    _error(r, 400, "Parameters.parameter[0]", "not-supported")
    r = views.post("/fhir/ViewDefinition/none/$export", json=parameters(), headers=ASYNC)
    assert r.status_code == 404
    missing = parameters(view_param(reference="ViewDefinition/none"))
    _error(views.post(KICKOFF, json=missing, headers=ASYNC), 404,
           "Parameters.parameter[0].part[0]", "not-found")  # fmt: skip


# --- cancel -------------------------------------------------------------------------------


def test_cancel_deletes_the_job_and_its_files(views: TestClient) -> None:
    transaction(views, population(3, 3))
    status_url = kick_off(views, parameters(view_param(OBSERVATIONS)))
    manifest = result(views, status_url).json()
    url = outputs(manifest)["observations"][0]
    assert stored_files(views.settings) > 0  # type: ignore[attr-defined]
    assert views.delete(status_url).status_code == 202
    assert views.get(status_url).status_code == 404
    assert views.get(f"{status_url}/result").status_code == 404
    assert views.get(url).status_code == 404
    assert stored_files(views.settings) == 0  # type: ignore[attr-defined]


def test_cancel_while_running_leaves_no_files(views: TestClient) -> None:
    transaction(views, population(40, 9))
    status_url = kick_off(views, parameters(view_param(OBSERVATIONS)))
    settings: Settings = views.settings  # type: ignore[attr-defined]
    with MongoClient(settings.mongo_url) as mc:
        units = mc[settings.database]["bulk_units"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not units.find_one({"count": {"$gt": 0}}):
            time.sleep(0.005)
        assert views.delete(status_url).status_code == 202
        assert views.get(status_url).status_code == 404
        time.sleep(1.5)  # the worker notices at its next checkpoint and drops its file
        assert mc[settings.database]["bulk.files"].count_documents({}) == 0
        assert mc[settings.database]["bulk.chunks"].count_documents({}) == 0
        assert units.count_documents({}) == 0


# --- authorization ------------------------------------------------------------------------


def test_export_needs_a_token_and_scopes_on_the_views_type(secured: TestClient) -> None:
    transaction(secured, population(2, 2))
    settings: Settings = secured.settings  # type: ignore[attr-defined]
    body = parameters(view_param(PATIENTS), view_param(OBSERVATIONS))
    r = secured.post(KICKOFF, json=body, headers={**ASYNC, "Authorization": ""})
    assert r.status_code == 401
    only_patients = bearer(settings, "c", "system/Patient.rs")
    r = secured.post(KICKOFF, json=body, headers={**ASYNC, **only_patients})
    _error(r, 403, "Parameters.parameter[1].part[0].resource", "forbidden")
    read_only = bearer(settings, "c", "system/*.r")  # read without search: no export
    r = secured.post(KICKOFF, json=body, headers={**ASYNC, **read_only})
    _error(r, 403, "Parameters.parameter[0].part[0].resource", "forbidden")
    lab = bearer(settings, "c", "system/Observation.rs?status=final")
    files = export(secured, parameters(view_param(OBSERVATIONS)), headers=lab)
    rows = ndjson_rows(files["observations"])
    assert sorted(r["id"] for r in rows) == ["o0-0", "o1-0"]  # granular scope: final only


def test_a_patient_token_exports_its_own_rows_only(secured: TestClient) -> None:
    transaction(secured, population(3, 2))
    settings: Settings = secured.settings  # type: ignore[attr-defined]
    own = bearer(settings, "app", "patient/*.rs", patient="p2")
    body = parameters(view_param(OBSERVATIONS), view_param(PATIENTS))
    files = export(secured, body, headers=own)
    assert sorted(r["id"] for r in ndjson_rows(files["observations"])) == ["o2-0", "o2-1"]
    assert [r["id"] for r in ndjson_rows(files["patients"])] == ["p2"]
    # a patient parameter cannot widen it: another patient is not known to this token
    other = {"name": "patient", "valueReference": {"reference": "Patient/p1"}}
    r = secured.post(KICKOFF, json=parameters(view_param(OBSERVATIONS), other),
                     headers={**ASYNC, **own})  # fmt: skip
    _error(r, 400, "Parameters.parameter[1]", "not-found")


def test_only_the_owner_may_poll_fetch_download_and_cancel(secured: TestClient) -> None:
    transaction(secured, population(2, 1))
    settings: Settings = secured.settings  # type: ignore[attr-defined]
    alice = bearer(settings, "alice", "system/*.rs")
    mallory = bearer(settings, "mallory", "system/*.rs")
    status_url = kick_off(secured, parameters(view_param(PATIENTS)), headers=alice)
    r = result(secured, status_url, headers=alice)
    assert r.status_code == 200
    file_url = outputs(r.json())["patients"][0]
    for url in (status_url, f"{status_url}/result", file_url):
        assert secured.get(url, headers=mallory).status_code == 404  # as if it did not exist
        assert secured.get(url, headers={"Authorization": ""}).status_code == 401
    assert secured.delete(status_url, headers=mallory).status_code == 404
    assert secured.get(file_url, headers=alice).status_code == 200
    # another patient's context of the same app is another owner
    p1 = bearer(settings, "app", "patient/*.rs", patient="p1")
    p0 = bearer(settings, "app", "patient/*.rs", patient="p0")
    url = kick_off(secured, parameters(view_param(PATIENTS)), headers=p1)
    assert poll(secured, url, headers=p1).status_code == 303
    assert secured.get(url, headers=p0).status_code == 404
    assert secured.delete(status_url, headers=alice).status_code == 202


# --- workers ----------------------------------------------------------------------------------


def test_worker_killed_mid_export_resumes_without_duplicates(mongo_url: str, tmp_path: Any) -> None:
    """SIGKILL the only worker while it writes a view's many small files; a new worker
    (after the lease runs out; status polls re-dispatch the unit) completes it with every
    row exactly once, and no uncommitted file is left behind."""
    kill_queue = f"views-kill-{uuid.uuid4().hex[:8]}"
    settings = make_settings(
        mongo_url, kill_queue, export_file_max_resources=3, export_lease_seconds=2
    )
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115
    first = start_worker(mongo_url, kill_queue, log)
    second = None
    try:
        with open_client(settings) as c, MongoClient(mongo_url) as mc:
            for chunk in range(4):
                transaction(c, population(50, 9, tag=f"k{chunk}-")[1:])  # 1800 Observations
            body = parameters(view_param(OBSERVATIONS), {"name": "_format", "valueCode": "csv"})
            status_url = kick_off(c, body)
            units = mc[settings.database]["bulk_units"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if (units.find_one({}, {"count": 1}) or {}).get("count", 0) >= 30:
                    break
                time.sleep(0.005)
            first.send_signal(signal.SIGKILL)
            first.wait()
            unit = units.find_one({})
            assert unit is not None and unit["state"] == "pending"
            assert 30 <= unit["count"] < 1800, "the kill must land mid-export"
            second = start_worker(mongo_url, kill_queue, log)
            r = result(c, status_url, timeout=120)
            assert r.status_code == 200, r.text
            contents = [c.get(u).content for u in outputs(r.json())["observations"]]
            rows = Counter(row["id"] for row in csv_rows(contents))
            expected = Counter(
                f"ok{k}-{p}-{o}" for k in range(4) for p in range(50) for o in range(9)
            )
            assert rows == expected  # every row, each exactly once
            bucket = GridFSBucket(mc[settings.database], "bulk")
            committed = {f["id"] for f in units.find_one({})["files"]}
            assert {f._id for f in bucket.find({})} == committed  # no orphan partial file
            mc.drop_database(settings.database)
    finally:
        stop(first)
        if second is not None:
            stop(second)
        log.close()
