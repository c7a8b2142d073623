"""``reindex`` and ``fhir-server reindex`` on a real MongoDB: stale index fields are
rebuilt from the stored JSON, deleted and concurrently changed documents are left alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from pymongo import AsyncMongoClient, MongoClient
from pymongo.database import Database

from fhir_server.cli import main
from fhir_server.jsonio import dumps
from fhir_server.search.extract import index_resource
from fhir_server.search.registry import Registry
from fhir_server.search.reindex import index_update, reindex
from fhir_server.storage import Storage

NOW = datetime(2024, 1, 1, tzinfo=UTC)
STALE = {"sp": {"old": ["x"]}, "so": {}, "comp": []}


def patient(i: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": f"p{i}", "name": [{"family": f"Núñez{i}"}]}


OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]},
    "subject": {"reference": "Patient/p1"},
}


def stored(resource: dict[str, Any] | None, rid: str, version: int = 1) -> dict[str, Any]:
    """A current-version document as the storage layer writes it, with a stale index."""
    return {
        "_id": rid,
        "v": version,
        "lu": NOW,
        "del": resource is None,
        "raw": None if resource is None else dumps(resource),
        **STALE,
    }


@pytest.fixture
def database(mongo_url: str) -> Iterator[tuple[str, Database[dict[str, Any]]]]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    client: MongoClient[dict[str, Any]]
    with MongoClient(mongo_url, tz_aware=True) as client:
        db: Database[dict[str, Any]] = client[name]
        db["Patient"].insert_many([stored(patient(i), f"p{i}") for i in range(7)])
        db["Observation"].insert_many([stored(OBSERVATION, "o1", 2), stored(None, "gone", 3)])
        yield name, db
        client.drop_database(name)


def run_reindex(mongo_url: str, name: str, **kwargs: Any) -> dict[str, int]:
    async def go() -> dict[str, int]:
        client: AsyncMongoClient[dict[str, Any]]
        client = AsyncMongoClient(mongo_url, tz_aware=True)
        try:
            registry = kwargs.pop("registry", Registry.from_definitions())
            return await reindex(Storage(client, name), registry, **kwargs)
        finally:
            await client.close()

    return asyncio.run(go())


def get(db: Database[dict[str, Any]], collection: str, rid: str) -> dict[str, Any]:
    doc = db[collection].find_one({"_id": rid})
    assert doc is not None
    return doc


def fields(doc: dict[str, Any]) -> dict[str, Any]:
    return {"sp": doc["sp"], "so": doc["so"], "comp": doc["comp"]}


def expected(resource: dict[str, Any]) -> dict[str, Any]:
    """The index as MongoDB gives it back (datetimes round to milliseconds: none here)."""
    index = index_resource(resource)
    return {"sp": index.sp, "so": index.so, "comp": index.comp}


def test_reindex_rebuilds_every_live_document(
    mongo_url: str, database: tuple[str, Database[dict[str, Any]]]
) -> None:
    name, db = database
    counts = run_reindex(mongo_url, name, batch=3)  # batches of 3, 3 and 1 patients
    assert counts == {"Observation": 1, "Patient": 7}
    assert fields(get(db, "Observation", "o1")) == expected(OBSERVATION)
    for i in range(7):
        doc = get(db, "Patient", f"p{i}")
        assert fields(doc) == expected(patient(i))
        assert doc["sp"]["family"] == [f"nunez{i}"]
        assert doc["comp"] == [f"Patient/p{i}"]
    gone = get(db, "Observation", "gone")
    assert fields(gone) == STALE  # deleted: nothing to index
    assert gone["v"] == 3


def test_reindex_selected_types_only(
    mongo_url: str, database: tuple[str, Database[dict[str, Any]]]
) -> None:
    name, db = database
    assert run_reindex(mongo_url, name, types=["Observation"]) == {"Observation": 1}
    assert get(db, "Patient", "p1")["sp"] == STALE["sp"]
    with pytest.raises(ValueError, match="Nope"):
        run_reindex(mongo_url, name, types=["Nope"])


def test_reindex_skips_a_document_changed_meanwhile(
    database: tuple[str, Database[dict[str, Any]]],
) -> None:
    _, db = database
    update = index_update(get(db, "Patient", "p1"), Registry.from_definitions())
    db["Patient"].update_one({"_id": "p1"}, {"$set": {"v": 2}})  # a write in between
    assert db["Patient"].bulk_write([update]).matched_count == 0
    assert get(db, "Patient", "p1")["sp"] == STALE["sp"]


def test_reindex_with_a_custom_parameter(
    mongo_url: str, database: tuple[str, Database[dict[str, Any]]]
) -> None:
    name, db = database
    registry = Registry.from_definitions().with_custom(
        [
            {
                "resourceType": "SearchParameter",
                "url": "http://example.org/SearchParameter/loinc",
                "code": "loinc",
                "type": "token",
                "base": ["Observation"],
                "expression": "Observation.code.coding.where(system='http://loinc.org')",
            }
        ]
    )
    assert run_reindex(mongo_url, name, registry=registry, types=["Observation"]) == {
        "Observation": 1
    }
    doc = get(db, "Observation", "o1")
    assert doc["sp"]["loinc"] == ["1-8", "http://loinc.org\x1f1-8"]


def test_cli_reindex(mongo_url: str, database: tuple[str, Database[dict[str, Any]]]) -> None:
    name, db = database
    runner = CliRunner()
    args = ["reindex", "--mongo-url", mongo_url, "--database", name, "--type", "Patient"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["Patient: 7", "reindexed 7 resources of 1 types"]
    assert get(db, "Patient", "p3")["sp"]["family"] == ["nunez3"]
    assert get(db, "Observation", "o1")["sp"] == STALE["sp"]

    remote = {**OBSERVATION, "subject": {"reference": "http://elsewhere.org/Patient/p1"}}
    db["Observation"].update_one({"_id": "o1"}, {"$set": {"raw": dumps(remote)}})
    args = ["reindex", "--mongo-url", mongo_url, "--database", name, "--type", "Observation"]
    result = runner.invoke(main, [*args, "--base-url", "http://here.org/fhir"])
    assert result.exit_code == 0, result.output
    assert get(db, "Observation", "o1")["sp"]["subject"] == ["http://elsewhere.org/Patient/p1"]

    bad = runner.invoke(main, ["reindex", "--mongo-url", mongo_url, "--type", "Nope"])
    assert bad.exit_code == 2
    assert "Nope" in bad.output
