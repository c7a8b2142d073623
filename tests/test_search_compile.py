"""Which compiled search filters may leave out ``del: false`` (search.compile.
excludes_deleted): only those no deleted resource can match, since a deleted resource's
current document keeps no index values and no compartments. Through HTTP:
test_search_results.py::test_deleted_resources_never_appear; the count this makes
index-only: test_a_first_pages_total_reads_no_documents below."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient

from fhir_server.config import Settings
from fhir_server.search.compile import excludes_deleted


@pytest.mark.parametrize(
    "clause",
    [
        {"sp.gender": "male"},
        {"sp.code": {"$in": ["a", "b"]}},
        {"sp.birthdate": {"$elemMatch": {"lo": {"$gte": 1}}}},
        {"sp.name": {"$regex": "^gh"}},
        {"sp.name": {"$exists": True}},
        {"comp": "Patient/p"},
        {"$and": [{"_id": "x"}, {"sp.gender": "male"}]},
        {"$or": [{"sp.gender": "male"}, {"sp.code": "c"}]},
        {"sp.code": {"$not": {"$eq": "x"}}, "sp.gender": "male"},
        {"sp.value": {"$gte": 3, "$ne": 5}},
    ],
)
def test_conditions_that_need_an_index_value(clause: dict[str, Any]) -> None:
    assert excludes_deleted(clause)


@pytest.mark.parametrize(
    "clause",
    [
        {"_id": "x"},
        {"lu": {"$gte": 1}},
        {"sp.gender": None},
        {"sp.gender": {"$exists": False}},
        {"sp.gender": {"$ne": "male"}},
        {"sp.gender": {"$nin": ["male"]}},
        {"sp.gender": {"$not": {"$eq": "male"}}},
        {"sp.gender": {"$in": ["male", None]}},
        {"sp.gender": {"$in": []}},
        {"sp.gender": {"$eq": None}},
        {"sp.gender": ["male"]},
        {"$or": [{"sp.gender": "male"}, {"_id": "x"}]},
        {"$or": []},
        {"$nor": [{"sp.gender": "male"}]},
        {"$and": [{"_id": "x"}, {"sp.gender": {"$exists": False}}]},
    ],
)
def test_conditions_a_deleted_resource_may_meet(clause: dict[str, Any]) -> None:
    assert not excludes_deleted(clause)


def test_a_first_pages_total_reads_no_documents(client: TestClient, settings: Settings) -> None:
    """The first page's Bundle.total counts up to 1,000 matches: with an index value in
    the filter MongoDB counts index keys and reads no document (its profiler records
    what the server's count cost)."""
    code = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    for _ in range(3):
        body = {"resourceType": "Observation", "status": "final", "code": code}
        assert client.post("/fhir/Observation", json=body).status_code == 201
    with MongoClient(settings.mongo_url) as mc:
        db = mc[settings.database]
        db.command("profile", 2)
        try:
            bundle = client.get("/fhir/Observation?code=http://loinc.org|8867-4&_count=1").json()
        finally:
            db.command("profile", 0)
        counts = list(db["system.profile"].find({"command.aggregate": "Observation"}))
    assert bundle["total"] == 3
    assert len(counts) == 1, counts
    assert counts[0]["keysExamined"] == 3 and counts[0]["docsExamined"] == 0, counts[0]
