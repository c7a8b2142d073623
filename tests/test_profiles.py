"""The server's own extensions (profiles/) are shipped into the database by `serve`,
once: served as StructureDefinitions (read, search by url), idempotent by url + version
(fhir_server/service/shipped.py, shared with the R4 core terminology)."""

from __future__ import annotations

import httpx
import pytest
from pymongo import MongoClient

from fhir_server.service.shipped import META
from fhir_server.testing import ServerProcess
from profiles import AVAILABLE_TIME, SLOT_DURATION, definitions

pytestmark = pytest.mark.slow


def urls(http: httpx.Client) -> dict[str, int]:
    out: dict[str, int] = {}
    for sd in definitions():
        r = http.get("/StructureDefinition", params={"url": sd["url"], "_summary": "count"})
        out[sd["url"]] = r.json()["total"]
    return out


def test_shipped_once_across_restarts_and_a_users_copy_is_kept(
    mongo_url: str, database: str
) -> None:
    mine = {**definitions()[0], "id": "my-copy", "title": "the user's own"}
    assert mine["url"] == AVAILABLE_TIME
    for start in range(2):
        server = ServerProcess(mongo_url=mongo_url, database=database)
        with server, httpx.Client(base_url=server.base_url, timeout=30) as http:
            if start == 0:
                # the user's own resource of a shipped canonical: a later load (the
                # marker removed below, so it really runs) keeps it and adds no other
                assert http.delete("/StructureDefinition/available-time").status_code in (
                    200,
                    204,
                )
                r = http.put("/StructureDefinition/my-copy", json=mine)
                assert r.status_code == 201, r.text
            assert set(urls(http).values()) == {1}
            sd = http.get("/StructureDefinition/slot-duration").json()
            assert sd["url"] == SLOT_DURATION
            assert sd["context"] == [{"type": "element", "expression": "Schedule"}]
            found = http.get("/StructureDefinition", params={"url": AVAILABLE_TIME}).json()
            assert [e["resource"]["id"] for e in found["entry"]] == ["my-copy"]
        with MongoClient(mongo_url) as mc:
            assert mc[database][META].delete_one({"_id": "profiles"}).deleted_count == 1


def test_shipped_definitions_are_valid_structure_definitions(mongo_url: str, database: str) -> None:
    server = ServerProcess(mongo_url=mongo_url, database=database)
    with server, httpx.Client(base_url=server.base_url, timeout=30) as http:
        for sd in definitions():
            r = http.post("/StructureDefinition/$validate", json=sd)
            assert r.status_code == 200, r.text
            issues = r.json().get("issue", [])
            assert not [i for i in issues if i["severity"] in ("error", "fatal")], issues
