"""Bulk Data export (https://hl7.org/fhir/uv/bulkdata/export.html) end to end: the real
app, a real MongoDB, a real Celery worker process and a real broker (Redis at
127.0.0.1:6379 for most tests; the MongoDB transport of the embedded default in the
``serve`` round trip)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from gridfs import GridFSBucket
from process_helpers import stop
from pymongo import MongoClient

from fhir_server.app import create_app
from fhir_server.bulk.tasks import broker_url
from fhir_server.config import Settings
from fhir_server.testing import ServerProcess
from smart_auth.tokens import KeyRing, issue_access_token

# FHIR_TEST_REDIS_URL=redis://127.0.0.1:1 exercises the MongoDB-broker fallback.
REDIS = os.environ.get("FHIR_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
SUBSETTED = "SUBSETTED"


# --- fixtures ----------------------------------------------------------------------------


def _redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def broker_for(mongo_url: str) -> str:
    """Redis when the machine has it, else the MongoDB transport (on its own database,
    since every test has its own data database)."""
    if _redis_available():
        return REDIS
    return broker_url(Settings(mongo_url=mongo_url, database="bulk_test_broker"))


def start_worker(
    mongo_url: str, queue: str, log: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    broker = broker_for(mongo_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    args = [sys.executable, "-m", "fhir_server", "worker", "--mongo-url", mongo_url]
    args += ["--broker-url", broker, "--queue", queue, "--log-level", "warning"]
    return subprocess.Popen(args, env=env, stdout=log, stderr=log)


@pytest.fixture(scope="module")
def queue() -> str:
    return f"bulk-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker(mongo_url: str, queue: str) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(mongo_url, queue)
    yield process
    stop(process)


def make_settings(mongo_url: str, queue: str, **extra: Any) -> Settings:
    options: dict[str, Any] = {
        "mongo_url": mongo_url,
        "database": f"test_{uuid.uuid4().hex[:12]}",
        "celery_broker_url": broker_for(mongo_url),
        "celery_queue": queue,
        "export_file_max_resources": 7,
        "export_lease_seconds": 2,
        "auth_enabled": False,
    }
    options.update(extra)
    return Settings(**options)


def open_client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), base_url="http://testserver")


def bearer(
    settings: Settings, client_id: str, scope: str = "system/*.cruds", patient: str | None = None
) -> dict[str, str]:
    """A real access token, signed with the server's own key ring."""
    with MongoClient(settings.mongo_url) as mc:
        token, _ = issue_access_token(
            KeyRing(mc[settings.database]),
            issuer="http://testserver/auth",
            audience="http://testserver/fhir",
            client_id=client_id,
            scope=scope,
            lifetime=300,
            patient=patient,
        )
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def bulk(mongo_url: str, queue: str, worker: Any) -> Iterator[TestClient]:
    settings = make_settings(mongo_url, queue)
    with open_client(settings) as c:
        c.settings = settings  # type: ignore[attr-defined]
        yield c
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


# --- helpers ------------------------------------------------------------------------------


def transaction(client: Any, resources: list[dict[str, Any]], url: str = "/fhir") -> None:
    entries = [
        {
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        }
        for r in resources
    ]
    body = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    r = client.post(url, json=body)
    assert r.status_code == 200, r.text


def population(n_patients: int, obs_per_patient: int, tag: str = "") -> list[dict[str, Any]]:
    """Patients with Observations (half final, half preliminary; two codes) and a
    Condition each, plus an Organization outside any compartment."""
    out: list[dict[str, Any]] = [{"resourceType": "Organization", "id": f"org{tag}", "name": "H"}]
    for p in range(n_patients):
        pid = f"p{tag}{p}"
        out.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "gender": "female" if p % 2 else "male",
                "birthDate": "1970-01-01",
                "managingOrganization": {"reference": f"Organization/org{tag}"},
            }
        )
        out.append(
            {
                "resourceType": "Condition",
                "id": f"c{tag}{p}",
                "subject": {"reference": f"Patient/{pid}"},
                "code": {"text": "x"},
            }
        )
        for o in range(obs_per_patient):
            out.append(
                {
                    "resourceType": "Observation",
                    "id": f"o{tag}{p}-{o}",
                    "status": "final" if o % 2 == 0 else "preliminary",
                    "code": {
                        "coding": [
                            {"system": "http://loinc.org", "code": "1" if o % 3 == 0 else "2"}
                        ]
                    },
                    "subject": {"reference": f"Patient/{pid}"},
                }
            )
    return out  # fmt: skip


def kick_off(client: Any, url: str, method: str = "GET", **kwargs: Any) -> str:
    headers = {**ASYNC, **kwargs.pop("headers", {})}
    r = client.request(method, url, headers=headers, **kwargs)
    assert r.status_code == 202, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    return str(r.headers["Content-Location"])


def wait(client: Any, status_url: str, timeout: float = 60, **kwargs: Any) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(status_url, **kwargs)
        if r.status_code != 202:
            return r
        assert "X-Progress" in r.headers and int(r.headers["Retry-After"]) > 0
        time.sleep(0.1)
    raise AssertionError(f"export not finished after {timeout} s")


def download(
    client: Any, manifest: dict[str, Any], **kwargs: Any
) -> dict[str, list[dict[str, Any]]]:
    """Every output file's resources by type, checking each file's type and count."""
    out: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        r = client.get(item["url"], **kwargs)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = r.content.decode().splitlines()
        assert len(lines) == item["count"]
        resources = [json.loads(line) for line in lines]
        assert {res["resourceType"] for res in resources} == {item["type"]}
        out.setdefault(item["type"], []).extend(resources)
    return out


def export(
    client: Any, url: str, method: str = "GET", **kwargs: Any
) -> dict[str, list[dict[str, Any]]]:
    """Kick-off, poll and download, all with the kick-off's headers (its token)."""
    headers = {k: v for k, v in kwargs.get("headers", {}).items() if k.lower() != "prefer"}
    r = wait(client, kick_off(client, url, method, **kwargs), headers=headers)
    assert r.status_code == 200, r.text
    return download(client, r.json(), headers=headers)


def ids(exported: dict[str, list[dict[str, Any]]], rtype: str) -> list[str]:
    return sorted(r["id"] for r in exported.get(rtype, []))


def search_ids(client: TestClient, query: str) -> set[str]:
    found: set[str] = set()
    url: str | None = f"/fhir/{query}&_count=1000"
    while url:
        body = client.get(url).json()
        found |= {e["resource"]["id"] for e in body.get("entry", [])}
        url = next(
            (link["url"] for link in body.get("link", []) if link["relation"] == "next"), None
        )
    return found


def stored_files(settings: Settings) -> int:
    with MongoClient(settings.mongo_url) as mc:
        return mc[settings.database]["bulk.files"].count_documents({})


# --- kick-off, manifest, download -----------------------------------------------------------


def test_system_export_round_trip(bulk: TestClient) -> None:
    transaction(bulk, population(5, 4))
    url = kick_off(bulk, "/fhir/$export?_outputFormat=application/fhir%2Bndjson")
    assert url.startswith("http://testserver/fhir/$export-status/")
    r = wait(bulk, url)
    assert r.status_code == 200
    manifest = r.json()
    assert (
        manifest["request"]
        == "http://testserver/fhir/$export?_outputFormat=application/fhir%2Bndjson"
    )
    assert manifest["requiresAccessToken"] is True
    assert manifest["transactionTime"].endswith("Z") or "+" in manifest["transactionTime"]
    assert manifest["error"] == []
    assert "Expires" in r.headers
    # export_file_max_resources=7 splits the 20 Observations into files of at most 7
    obs_files = [o for o in manifest["output"] if o["type"] == "Observation"]
    assert [o["count"] for o in obs_files] == [7, 7, 6]
    exported = download(bulk, manifest)
    assert ids(exported, "Patient") == sorted(f"p{i}" for i in range(5))
    assert len(ids(exported, "Observation")) == 20 == len(set(ids(exported, "Observation")))
    assert ids(exported, "Organization") == ["org"]
    assert ids(exported, "Condition") == sorted(f"c{i}" for i in range(5))
    # lines are the stored resources, byte for byte what a read returns
    read = bulk.get("/fhir/Patient/p1").json()
    assert next(p for p in exported["Patient"] if p["id"] == "p1") == read


def test_post_kickoff_with_parameters(bulk: TestClient) -> None:
    transaction(bulk, population(2, 2))
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Patient,Condition"},
            {"name": "_outputFormat", "valueString": "ndjson"},
        ],
    }
    exported = export(bulk, "/fhir/$export", "POST", json=body)
    assert set(exported) == {"Patient", "Condition"}


def test_deleted_and_later_resources_are_not_exported(bulk: TestClient) -> None:
    transaction(bulk, population(3, 0))
    assert bulk.delete("/fhir/Patient/p2").status_code in (200, 204)
    exported = export(bulk, "/fhir/$export?_type=Patient")
    assert ids(exported, "Patient") == ["p0", "p1"]


def test_respond_async_is_required(bulk: TestClient) -> None:
    r = bulk.get("/fhir/$export")
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Prefer"]


@pytest.mark.parametrize(
    ("query", "expression"),
    [
        ("_outputFormat=text/csv", "_outputFormat"),
        ("_since=yesterday", "_since"),
        ("_until=2020-13-01", "_until"),
        ("_type=Nonsense", "_type"),
        ("_typeFilter=Observation%3Fnonsense%3D1", "_typeFilter"),
        ("_typeFilter=Observation%3F_sort%3Ddate", "_typeFilter"),
        ("_typeFilter=nothing", "_typeFilter"),
        ("_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal", "Observation"),
        ("_elements=Patient.name.given", "_elements"),
        ("includeAssociatedData=LatestProvenanceResources", "includeAssociatedData"),
        ("unknownParam=1", "unknownParam"),
        ("_since=2024-01-02&_until=2024-01-01", "_until"),
        ("patient=Patient/1", "patient"),
    ],
)
def test_invalid_parameters_are_400_naming_them(
    bulk: TestClient, query: str, expression: str
) -> None:
    r = bulk.get(f"/fhir/$export?{query}", headers=ASYNC)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"][0] == expression, issue


def test_lenient_handling_ignores_and_reports(bulk: TestClient) -> None:
    transaction(bulk, population(1, 1))
    url = kick_off(
        bulk,
        "/fhir/$export?_type=Patient,Nonsense&unknownParam=1&includeAssociatedData=x",
        headers={"Prefer": "respond-async, handling=lenient"},
    )
    manifest = wait(bulk, url).json()
    assert [o["type"] for o in manifest["output"]] == ["Patient"]
    [error] = manifest["error"]
    assert error["type"] == "OperationOutcome"
    outcome = json.loads(bulk.get(error["url"]).content)
    text = " ".join(i["diagnostics"] for i in outcome["issue"])
    assert "Nonsense" in text and "unknownParam" in text and "includeAssociatedData" in text
    assert {i["severity"] for i in outcome["issue"]} == {"warning"}


def test_other_methods_are_405(bulk: TestClient) -> None:
    r = bulk.put("/fhir/$export", headers=ASYNC)
    assert r.status_code == 405 and "GET" in r.headers["Allow"]


# --- filters -----------------------------------------------------------------------------------


def test_since_and_until_filter_on_last_updated(bulk: TestClient) -> None:
    transaction(bulk, population(2, 0, tag="a"))
    # lastUpdated of the first batch, to the millisecond, as the server reports it
    first = bulk.get("/fhir/Patient/pa1").json()["meta"]["lastUpdated"]
    time.sleep(0.05)
    transaction(bulk, population(2, 0, tag="b"))
    later = bulk.get("/fhir/Patient/pb0").json()["meta"]["lastUpdated"]
    since = export(bulk, "/fhir/$export", params={"_type": "Patient", "_since": later})
    assert ids(since, "Patient") == ["pb0", "pb1"]
    until = export(bulk, "/fhir/$export", params={"_type": "Patient", "_until": first})
    assert ids(until, "Patient") == ["pa0", "pa1"]


def test_type_filter_matches_the_search_engine(bulk: TestClient) -> None:
    transaction(bulk, population(4, 6))
    filters = [
        "Observation?code=http://loinc.org|1",
        "Observation?status=preliminary&subject=Patient/p1",
    ]
    exported = export(
        bulk, "/fhir/$export", params={"_type": "Observation,Patient", "_typeFilter": filters}
    )
    expected = search_ids(bulk, "Observation?code=http://loinc.org|1") | search_ids(
        bulk, "Observation?status=preliminary&subject=Patient/p1"
    )
    assert 0 < len(expected) < 24
    assert ids(exported, "Observation") == sorted(expected)
    assert len(ids(exported, "Patient")) == 4  # a type without _typeFilter is not filtered
    # a chained search works too: Observations of female patients
    chained = export(
        bulk,
        "/fhir/$export",
        params={"_type": "Observation", "_typeFilter": "Observation?subject:Patient.gender=female"},
    )
    assert ids(chained, "Observation") == sorted(
        search_ids(bulk, "Observation?subject:Patient.gender=female")
    )
    assert len(ids(chained, "Observation")) == 12  # fmt: skip


def test_elements_keep_listed_and_mandatory_elements(bulk: TestClient) -> None:
    transaction(bulk, population(2, 1))
    exported = export(
        bulk, "/fhir/$export?_type=Patient,Observation&_elements=Patient.gender,status"
    )
    for p in exported["Patient"]:
        assert set(p) == {"resourceType", "id", "meta", "gender"}
        assert any(t["code"] == SUBSETTED for t in p["meta"]["tag"])
    for o in exported["Observation"]:
        # status is mandatory anyway; code is mandatory (1..1) so it stays; subject goes
        assert "subject" not in o and "status" in o and "code" in o


# --- Patient and Group level --------------------------------------------------------------------


def test_patient_level_exports_the_compartment(bulk: TestClient) -> None:
    transaction(bulk, population(3, 2))
    exported = export(bulk, "/fhir/Patient/$export")
    assert "Organization" not in exported
    assert ids(exported, "Patient") == ["p0", "p1", "p2"]
    assert len(ids(exported, "Observation")) == 6
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
        {"name": "_type", "valueString": "Patient,Observation"},
    ]}  # fmt: skip
    one = export(bulk, "/fhir/Patient/$export", "POST", json=body)
    assert ids(one, "Patient") == ["p1"]
    assert ids(one, "Observation") == ["o1-0", "o1-1"]
    r = bulk.get("/fhir/Patient/$export?_type=Organization", headers=ASYNC)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["_type"]


def test_group_level_exports_members_only(bulk: TestClient) -> None:
    transaction(bulk, population(4, 1))
    members = [{"entity": {"reference": "Patient/p0"}}, {"entity": {"reference": "Patient/p3"}}]
    group = {"resourceType": "Group", "id": "g", "type": "person", "actual": True}
    group["member"] = members
    assert bulk.put("/fhir/Group/g", json=group).status_code == 201
    exported = export(bulk, "/fhir/Group/g/$export")
    assert ids(exported, "Patient") == ["p0", "p3"]
    assert ids(exported, "Condition") == ["c0", "c3"]
    assert ids(exported, "Observation") == ["o0-0", "o3-0"]
    assert "Organization" not in exported
    assert ids(exported, "Group") == ["g"]  # Group.member puts it in its members' compartments
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/p3"}},
        {"name": "patient", "valueReference": {"reference": "Patient/p1"}},  # not a member
    ]}  # fmt: skip
    narrowed = export(bulk, "/fhir/Group/g/$export", "POST", json=body)
    assert ids(narrowed, "Patient") == ["p3"]
    assert bulk.get("/fhir/Group/nope/$export", headers=ASYNC).status_code == 404


# --- status, cancel, expiry ----------------------------------------------------------------------


def test_cancel_deletes_job_and_files(bulk: TestClient) -> None:
    transaction(bulk, population(3, 3))
    url = kick_off(bulk, "/fhir/$export")
    assert wait(bulk, url).status_code == 200
    assert stored_files(bulk.settings) > 0  # type: ignore[attr-defined]
    manifest = bulk.get(url).json()
    r = bulk.delete(url)
    assert r.status_code == 202
    assert bulk.get(url).status_code == 404
    assert bulk.get(manifest["output"][0]["url"]).status_code == 404
    assert stored_files(bulk.settings) == 0  # type: ignore[attr-defined]
    assert bulk.delete(url).status_code == 404


def test_cancel_while_running_leaves_no_files(bulk: TestClient) -> None:
    transaction(bulk, population(40, 9))
    url = kick_off(bulk, "/fhir/$export")
    settings: Settings = bulk.settings  # type: ignore[attr-defined]
    with MongoClient(settings.mongo_url) as mc:
        units = mc[settings.database]["bulk_units"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not units.find_one({"count": {"$gt": 0}}):
            time.sleep(0.005)
        assert bulk.delete(url).status_code == 202
        assert bulk.get(url).status_code == 404
        time.sleep(1.5)  # the worker notices at its next checkpoint and drops its file
        assert mc[settings.database]["bulk.files"].count_documents({}) == 0
        assert mc[settings.database]["bulk.chunks"].count_documents({}) == 0
        assert units.count_documents({}) == 0


def test_unknown_job_and_file_are_404(bulk: TestClient) -> None:
    assert bulk.get("/fhir/$export-status/nope").status_code == 404
    transaction(bulk, population(1, 0))
    url = kick_off(bulk, "/fhir/$export?_type=Patient")
    wait(bulk, url)
    job = url.rsplit("/", 1)[1]
    assert bulk.get(f"/fhir/$export-file/{job}/notanid").status_code == 404
    assert bulk.get(f"/fhir/$export-file/{job}/{'0' * 24}").status_code == 404


def test_files_expire(mongo_url: str, queue: str, worker: Any) -> None:
    settings = make_settings(mongo_url, queue, export_expiry_seconds=1)
    with open_client(settings) as c:
        transaction(c, population(2, 2))
        url = kick_off(c, "/fhir/$export")
        manifest = wait(c, url).json()
        assert c.get(manifest["output"][0]["url"]).status_code == 200
        time.sleep(1.5)
        assert c.get(url).status_code == 404
        assert c.get(manifest["output"][0]["url"]).status_code == 404
        assert stored_files(settings) == 0
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


# --- authorization ------------------------------------------------------------------------------


@pytest.fixture
def secured(mongo_url: str, queue: str, worker: Any) -> Iterator[TestClient]:
    """Like ``bulk``, with SMART authorization on (requests need real tokens)."""
    settings = make_settings(mongo_url, queue, auth_enabled=True)
    with open_client(settings) as c:
        c.settings = settings  # type: ignore[attr-defined]
        c.headers.update(bearer(settings, "loader"))  # a system/*.cruds default
        yield c
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


def test_export_needs_a_token(secured: TestClient) -> None:
    r = secured.get("/fhir/$export", headers={**ASYNC, "Authorization": ""})
    assert r.status_code == 401


def test_only_the_kickoff_client_may_poll_download_and_cancel(secured: TestClient) -> None:
    transaction(secured, population(2, 1))
    settings: Settings = secured.settings  # type: ignore[attr-defined]
    alice = bearer(settings, "alice", "system/*.rs")
    mallory = bearer(settings, "mallory", "system/*.rs")
    url = kick_off(secured, "/fhir/$export", headers=alice)
    manifest = wait(secured, url, headers=alice).json()
    file_url = manifest["output"][0]["url"]
    assert secured.get(url, headers=mallory).status_code == 404
    assert secured.get(file_url, headers=mallory).status_code == 404
    assert secured.delete(url, headers=mallory).status_code == 404
    assert secured.get(file_url, headers={"Authorization": ""}).status_code == 401
    assert secured.get(file_url, headers=alice).status_code == 200
    assert secured.delete(url, headers=alice).status_code == 202


def test_kickoff_needs_scopes_for_the_requested_types(secured: TestClient) -> None:
    transaction(secured, population(2, 1))
    settings: Settings = secured.settings  # type: ignore[attr-defined]
    only_patients = bearer(settings, "c", "system/Patient.rs")
    r = secured.get("/fhir/$export?_type=Patient,Observation", headers={**ASYNC, **only_patients})
    assert r.status_code == 403 and r.json()["issue"][0]["expression"] == ["_type"]
    assert "Observation" in r.json()["issue"][0]["diagnostics"]
    # without _type the export is narrowed to what the token may read and search
    exported = export(secured, "/fhir/$export", headers=only_patients)
    assert set(exported) == {"Patient"}
    read_only = bearer(settings, "c", "system/*.r")  # read without search: no export
    assert secured.get("/fhir/$export", headers={**ASYNC, **read_only}).status_code == 403


def test_granular_scopes_narrow_the_exported_rows(secured: TestClient) -> None:
    transaction(secured, population(2, 4))
    settings: Settings = secured.settings  # type: ignore[attr-defined]
    lab = bearer(settings, "c", "system/Observation.rs?status=final system/Patient.rs")
    exported = export(secured, "/fhir/$export?_type=Observation,Patient", headers=lab)
    assert ids(exported, "Observation") == ["o0-0", "o0-2", "o1-0", "o1-2"]
    assert {o["status"] for o in exported["Observation"]} == {"final"}


def test_patient_bound_token_exports_its_patient_only(secured: TestClient) -> None:
    transaction(secured, population(3, 2))
    settings: Settings = secured.settings  # type: ignore[attr-defined]
    own = bearer(settings, "app", "patient/*.rs", patient="p2")
    assert secured.get("/fhir/$export", headers={**ASYNC, **own}).status_code == 403
    exported = export(secured, "/fhir/Patient/$export", headers=own)
    assert ids(exported, "Patient") == ["p2"]
    assert ids(exported, "Observation") == ["o2-0", "o2-1"]
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "patient", "valueReference": {"reference": "Patient/p1"}}],
    }
    r = secured.post("/fhir/Patient/$export", json=body, headers={**ASYNC, **own})
    assert r.status_code == 403 and r.json()["issue"][0]["expression"] == ["patient"]


# --- workers -----------------------------------------------------------------------------------


def test_worker_killed_mid_export_resumes_without_duplicates(mongo_url: str, tmp_path: Any) -> None:
    """SIGKILL the only worker while it writes a job of many small files; a new worker
    (after the lease runs out; status polls re-dispatch the unit) completes it with
    every resource exactly once."""
    queue = f"bulk-kill-{uuid.uuid4().hex[:8]}"
    settings = make_settings(mongo_url, queue, export_file_max_resources=3, export_lease_seconds=2)
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115
    first = start_worker(mongo_url, queue, log)
    second = None
    try:
        with open_client(settings) as c, MongoClient(mongo_url) as mc:
            for chunk in range(6):
                transaction(c, population(50, 9, tag=f"k{chunk}-")[1:])  # 3000 resources
            stored = Counter(search_ids(c, "Observation?_total=none"))
            assert len(stored) == 2700
            url = kick_off(c, "/fhir/$export?_type=Observation")
            units = mc[settings.database]["bulk_units"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if (units.find_one({}, {"count": 1}) or {}).get("count", 0) >= 30:
                    break
                time.sleep(0.005)
            first.send_signal(signal.SIGKILL)
            first.wait()
            unit = units.find_one({})
            assert unit is not None and unit["state"] == "pending"
            assert 30 <= unit["count"] < 2700, "the kill must land mid-export"
            second = start_worker(mongo_url, queue, log)
            r = wait(c, url, timeout=90)
            assert r.status_code == 200, r.text
            exported = download(c, r.json())
            lines = Counter(o["id"] for o in exported["Observation"])
            assert lines == stored  # every stored resource, each exactly once
            bucket = GridFSBucket(mc[settings.database], "bulk")
            committed = {f["id"] for f in units.find_one({})["files"]}
            assert {f._id for f in bucket.find({})} == committed  # no orphan partial file
            mc.drop_database(settings.database)
    finally:
        stop(first)
        if second is not None:
            stop(second)
        log.close()


def test_two_workers_share_one_job(mongo_url: str) -> None:
    """Units of one job are picked up by whichever worker is free."""
    queue = f"bulk-two-{uuid.uuid4().hex[:8]}"
    settings = make_settings(mongo_url, queue, export_file_max_resources=2)
    workers = [start_worker(mongo_url, queue), start_worker(mongo_url, queue)]
    try:
        with open_client(settings) as c, MongoClient(mongo_url) as mc:
            transaction(c, population(40, 3))
            exported = export(c, "/fhir/$export")
            assert len(ids(exported, "Observation")) == 120
            owners = {f["owner"] for f in mc[settings.database]["bulk_units"].find()}
            assert owners == {None}  # every unit finished
            mc.drop_database(settings.database)
    finally:
        for w in workers:
            stop(w)


def test_idle_worker_stops_at_once_on_sigterm(mongo_url: str, tmp_path: Any) -> None:
    """Celery notices SIGTERM once per 2 s poll cycle of its broker; an idle worker on the
    MongoDB transport (the embedded default) stops at once instead, whatever the moment
    in the cycle (three workers, told to stop 0.3, 1.0 and 1.7 s into their polling)."""
    broker = broker_url(Settings(mongo_url=mongo_url, database="bulk_test_broker"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    seconds = []
    for offset in (0.3, 1.0, 1.7):
        log = tmp_path / f"worker-{offset}.log"
        args = [sys.executable, "-m", "fhir_server", "worker", "--mongo-url", mongo_url]
        args += ["--broker-url", broker, "--queue", f"idle-{uuid.uuid4().hex[:8]}"]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [*args, "--log-level", "info"], env=env, stdout=out, stderr=out
            )
        try:
            deadline = time.monotonic() + 60
            while b" ready." not in log.read_bytes():
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            time.sleep(offset)
            started = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, log.read_text()
            seconds.append(time.perf_counter() - started)
        finally:
            stop(process)
    assert max(seconds) < 1.5, seconds  # ~0.5 s; it was 3 to 4.5 s


@pytest.mark.slow
def test_serve_round_trip_with_embedded_worker_and_mongodb_broker(
    mongo_url: str, tmp_path: Any
) -> None:
    """``fhir-server serve`` without a broker URL starts its own worker, brokered by
    MongoDB; a bulk client's whole round trip over HTTP."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    env = {"FHIR_EXPORT_FILE_MAX_RESOURCES": "4", "FHIR_AUTH_ENABLED": "false"}
    server = ServerProcess(
        mongo_url=mongo_url, database=database, env=env, log_file=tmp_path / "s.log"
    )
    with server, httpx.Client(base_url=server.base_url, timeout=30) as http:
        transaction(http, population(3, 3), server.base_url)
        status_url = kick_off(http, f"{server.base_url}/$export")
        assert status_url.startswith(server.base_url)
        r = wait(http, status_url, timeout=60)
        assert r.status_code == 200, r.text
        manifest = r.json()
        assert manifest["request"] == f"{server.base_url}/$export"
        exported = download(http, manifest)
        assert len(ids(exported, "Observation")) == 9
        assert ids(exported, "Patient") == ["p0", "p1", "p2"]
        assert http.delete(status_url).status_code == 202
    with MongoClient(mongo_url) as mc:
        mc.drop_database(database)


def test_capability_statement_declares_export(bulk: TestClient) -> None:
    rest = bulk.get("/fhir/metadata").json()["rest"][0]
    base = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
    assert {"name": "export", "definition": f"{base}/export"} in rest["operation"]
    by_type = {res["type"]: res for res in rest["resource"]}
    assert {"name": "export", "definition": f"{base}/patient-export"} in by_type["Patient"][
        "operation"
    ]
    assert {"name": "export", "definition": f"{base}/group-export"} in by_type["Group"]["operation"]
