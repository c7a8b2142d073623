"""Optimistic locking (http.html#concurrency) and many concurrent writers on one
resource: no update may be lost.

The TestClient runs the app on one event loop in a background thread; requests sent
from several threads at once are handled concurrently by that loop (they interleave
at every MongoDB round trip). ``InFlight`` measures that, so the test proves it really
had overlapping requests rather than assuming it. A separate test runs the same kind
of load against a real server process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import all_pages, assert_outcome, create, patch, patient, post, put
from pymongo import MongoClient

from fhir_server.app import create_app
from fhir_server.service.resources import LOCK_SHARDS, conditional_locks

THREADS = 16
PER_THREAD = 5
RMW_PER_THREAD = 3  # read-modify-write retries grow with contention; keep it quick


class InFlight:
    """ASGI wrapper counting how many HTTP requests the app handles at the same time."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            with self.lock:
                self.now -= 1


@pytest.fixture
def counted(settings) -> Iterator[tuple[TestClient, InFlight]]:
    app = InFlight(create_app(settings))
    with TestClient(app, base_url="http://testserver") as c:  # type: ignore[arg-type]
        yield c, app
    with MongoClient(settings.mongo_url) as mc:
        mc.drop_database(settings.database)


# --- If-Match --------------------------------------------------------------------------


def test_if_match_on_update(client):
    created = create(client, patient())
    rid = created["id"]
    # http.html#concurrency: "If the version id given in the If-Match header does not
    # match, the server returns a 412 Precondition Failed status code instead of
    # updating the resource."
    r = put(client, {**created, "gender": "female"}, **{"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    assert_outcome(put(client, {**created, "gender": "other"}, **{"If-Match": 'W/"1"'}), 412)
    assert client.get(f"/fhir/Patient/{rid}").json()["gender"] == "female"
    # a strong-looking ETag quoting the version is understood too
    r = put(client, {**created, "gender": "other"}, **{"If-Match": '"2"'})
    assert r.status_code == 200


@pytest.mark.parametrize("value", ["1", 'W/"abc"', "W/1", "*x", 'W/"1", W/"2"', ""])
def test_malformed_if_match_is_400(client, value):
    created = create(client, patient())
    r = put(client, {**created, "gender": "female"}, **{"If-Match": value})
    assert_outcome(r, 400)
    assert client.get(f"/fhir/Patient/{created['id']}").headers["etag"] == 'W/"1"'


def test_if_match_on_patch_and_delete(client):
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    assert_outcome(patch(client, url, ops, **{"If-Match": 'W/"7"'}), 412)
    r = patch(client, url, ops, **{"If-Match": 'W/"1"'})
    assert r.status_code == 200
    assert_outcome(client.delete(url, headers={"If-Match": 'W/"1"'}), 412)
    assert client.get(url).status_code == 200
    assert client.delete(url, headers={"If-Match": 'W/"2"'}).status_code in (200, 204)
    assert client.get(url).status_code == 410


def test_if_match_on_a_missing_resource_is_412(client):
    r = put(client, patient(id="not-there"), **{"If-Match": 'W/"1"'})
    assert_outcome(r, 412)
    assert client.get("/fhir/Patient/not-there").status_code == 404


def test_if_match_brings_a_deleted_resource_back(client):
    # http.html#read: "servers MAY include an ETag on the error response when reading a
    # deleted record to allow version contention management when a resource is brought
    # back to life": If-Match with the deletion's version must be usable for that.
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    deleted = client.delete(url)
    assert deleted.headers["etag"] == 'W/"2"'
    gone = client.get(url)
    assert gone.status_code == 410
    assert gone.headers["etag"] == 'W/"2"'
    assert_outcome(put(client, {**created, "gender": "female"}, **{"If-Match": 'W/"1"'}), 412)
    r = put(client, {**created, "gender": "female"}, **{"If-Match": gone.headers["etag"]})
    assert r.status_code in (200, 201), r.text
    assert r.headers["etag"] == 'W/"3"'
    assert client.get(url).json()["gender"] == "female"


# --- many writers ----------------------------------------------------------------------


def run_all(jobs: list[Any]) -> list[Any]:
    barrier = threading.Barrier(len(jobs))

    def start(job: Any) -> Any:
        barrier.wait()
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(start, jobs))


def assert_history_complete(client: TestClient, rid: str, versions: int) -> None:
    pages = all_pages(client, f"/fhir/Patient/{rid}/_history", _count="17")
    seen = [e["resource"]["meta"]["versionId"] for p in pages for e in p["entry"]]
    assert seen == [str(v) for v in range(versions, 0, -1)]  # each once, newest first
    assert pages[0]["total"] == versions


def test_concurrent_patches_lose_nothing(counted):
    client, meter = counted
    seed = {"system": "urn:writer", "value": "seed"}
    rid = create(client, patient(identifier=[seed]))["id"]
    url = f"/fhir/Patient/{rid}"

    def writer(t: int) -> Any:
        def job() -> list[int]:
            statuses = []
            for n in range(PER_THREAD):
                value = {"system": "urn:writer", "value": f"{t}-{n}"}
                r = patch(client, url, [{"op": "add", "path": "/identifier/-", "value": value}])
                statuses.append(r.status_code)
            return statuses

        return job

    results = run_all([writer(t) for t in range(THREADS)])
    assert all(s == 200 for statuses in results for s in statuses), results
    assert meter.peak > 1, "requests never overlapped: this test proved nothing"

    final = client.get(url).json()
    writes = THREADS * PER_THREAD
    assert final["meta"]["versionId"] == str(1 + writes)
    values = sorted(i["value"] for i in final["identifier"])
    expected = ["seed"] + [f"{t}-{n}" for t in range(THREADS) for n in range(PER_THREAD)]
    assert values == sorted(expected)
    assert_history_complete(client, rid, 1 + writes)


def test_concurrent_read_modify_write_with_if_match(counted):
    """Each writer reads, increments a counter and PUTs with If-Match, retrying on 412:
    the final count equals the number of successful writes."""
    client, meter = counted
    rid = create(client, patient(multipleBirthInteger=0))["id"]
    url = f"/fhir/Patient/{rid}"
    conflicts = 0
    lock = threading.Lock()

    def writer() -> int:
        nonlocal conflicts
        done = 0
        while done < RMW_PER_THREAD:
            current = client.get(url)
            body = current.json()
            body["multipleBirthInteger"] += 1
            r = put(client, body, **{"If-Match": current.headers["etag"]})
            if r.status_code == 412:
                with lock:
                    conflicts += 1
                continue
            assert r.status_code == 200, r.text
            done += 1
        return done

    results = run_all([writer for _ in range(THREADS)])
    writes = sum(results)
    assert meter.peak > 1, "requests never overlapped: this test proved nothing"
    assert conflicts > 0, "no writer ever conflicted: the If-Match path was not exercised"
    final = client.get(url).json()
    assert final["multipleBirthInteger"] == writes == THREADS * RMW_PER_THREAD
    assert final["meta"]["versionId"] == str(1 + writes)
    assert_history_complete(client, rid, 1 + writes)


def test_concurrent_conditional_creates_make_one_resource(counted):
    """If-None-Exist racing with itself: exactly one create wins, the others see it."""
    client, _ = counted
    body = patient(identifier=[{"system": "urn:race", "value": "1"}])
    headers = {"If-None-Exist": "identifier=urn:race|1"}

    def job() -> tuple[int, str]:
        r = post(client, body, **headers)
        return r.status_code, r.json().get("id", "")

    results = run_all([job for _ in range(THREADS)])
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] * (THREADS - 1) + [201], results
    assert len({rid for _, rid in results}) == 1


def test_concurrent_conditional_creates_with_differently_written_criteria(counted):
    """Criteria written differently but matching the same record must still let only
    one create through (http.html#ccreate: conditional create exists "to avoid the
    risk of two clients creating duplicate resources for the same record")."""
    client, _ = counted
    body = patient(identifier=[{"system": "urn:race", "value": "2"}])
    criteria = [
        "identifier=urn:race|2",
        "identifier=2",
        "identifier=urn:race|2,urn:race|zz",
        "identifier=urn%3Arace|2&identifier=2",
        "identifier=urn:race|",
    ]

    def job(n: int) -> Any:
        return lambda: post(client, body, **{"If-None-Exist": criteria[n % len(criteria)]})

    statuses = sorted(r.status_code for r in run_all([job(n) for n in range(THREADS)]))
    assert statuses == [200] * (THREADS - 1) + [201], statuses


def test_concurrent_conditional_updates_create_once(counted):
    """Conditional update racing with itself: one create, then updates of that one."""
    client, _ = counted

    def job(n: int) -> Any:
        body = patient(identifier=[{"system": "urn:race", "value": "3"}], multipleBirthInteger=n)
        return lambda: client.put(
            "/fhir/Patient?identifier=urn:race|3",
            content=json.dumps(body),
            headers={"Content-Type": "application/fhir+json"},
        )

    responses = run_all([job(n + 1) for n in range(THREADS)])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * (THREADS - 1) + [201], statuses
    assert len({r.json()["id"] for r in responses}) == 1
    rid = responses[0].json()["id"]
    assert_history_complete(client, rid, THREADS)


@pytest.mark.parametrize(
    ("criteria", "shards"),
    [
        ("identifier=urn:race|5", 1),
        ("identifier=urn%3Arace|5", 1),  # the same identifier, URL-encoded
        ("identifier=5", LOCK_SHARDS),  # any system: could match what a|5 matches
        ("identifier=urn:race|", LOCK_SHARDS),
        ("identifier=urn:race|5,urn:race|6", LOCK_SHARDS),
        ("identifier=urn:race|5&name=x", LOCK_SHARDS),
        ("identifier:of-type=a|b|5", LOCK_SHARDS),
        ("name=nunez", LOCK_SHARDS),
        ("identifier=a\\|b|5", LOCK_SHARDS),
    ],
)
def test_conditional_lock_shards(criteria: str, shards: int) -> None:
    """Only a plain identifier=system|value claims one shard; every other criteria claim
    them all, so they conflict with any conditional interaction on the type."""
    locks = conditional_locks("Patient", criteria)
    assert len(locks) == shards
    if shards == 1:
        assert locks == conditional_locks("Patient", "identifier=urn:race|5")
    assert set(locks) <= set(conditional_locks("Patient", "name=x"))


def test_conditional_creates_on_different_identifiers_all_succeed(counted):
    """Different identifiers take different shards (or share one and queue): each
    record is created exactly once."""
    client, meter = counted

    def job(n: int) -> Any:
        body = patient(identifier=[{"system": "urn:shard", "value": str(n % 8)}])
        return lambda: post(client, body, **{"If-None-Exist": f"identifier=urn:shard|{n % 8}"})

    statuses = sorted(r.status_code for r in run_all([job(n) for n in range(THREADS)]))
    assert statuses == [200] * (THREADS - 8) + [201] * 8, statuses
    assert meter.peak > 1
    found = client.get("/fhir/Patient", params={"identifier": "urn:shard|", "_count": "50"})
    values = sorted(e["resource"]["identifier"][0]["value"] for e in found.json()["entry"])
    assert values == [str(n) for n in range(8)]
