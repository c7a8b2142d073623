"""FHIR_READ_PREFERENCE on the suite's one-member set: every kind of search answers
exactly as with the primary (each reads in the causal session of ``Storage.reading``:
page, total, chains, includes, several types), and the session starts after the
process's last write. The secondaries themselves: tests/test_failover.py
(``test_c_searches_on_secondaries_read_their_own_writes``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymongo import AsyncMongoClient, MongoClient, monitoring

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.storage import Storage

SEARCHES = [
    "/fhir/Patient?family=Quispe",
    "/fhir/Patient?family=Quispe&_total=accurate",
    "/fhir/Patient?_count=1&family=Quispe",
    "/fhir/Patient?_summary=count",
    "/fhir/Patient?_count=0&family=Quispe",
    "/fhir/Patient?_revinclude=Observation:subject&family=Quispe",
    "/fhir/Observation?_include=Observation:subject&code=http://loinc.org|8867-4",
    "/fhir/Observation?subject:Patient.family=Quispe",
    "/fhir/Patient?_has:Observation:subject:code=http://loinc.org|8867-4",
    "/fhir?_type=Patient,Observation&_count=3",
    "/fhir/Patient/{p}/Observation",
]


def _observation(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


@pytest.fixture
def clients(settings: Settings) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps on one database: the default, and searches with secondaryPreferred."""
    secondary = settings.model_copy(update={"read_preference": "secondaryPreferred"})
    with (
        TestClient(create_app(settings), base_url="http://testserver") as primary_client,
        TestClient(create_app(secondary), base_url="http://testserver") as secondary_client,
    ):
        yield primary_client, secondary_client
    with MongoClient(settings.mongo_url) as mc:
        mc.drop_database(settings.database)


def _entries(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["resource"]["id"], e["search"]["mode"]) for e in body.get("entry", [])]


def test_every_search_answers_as_on_the_primary(clients: tuple[TestClient, TestClient]) -> None:
    primary, secondary = clients
    patients = []
    for family in ("Quispe", "Quispe", "Andrade"):
        r = secondary.post(
            "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}
        )
        assert r.status_code == 201
        patients.append(r.json()["id"])
    for p in patients:
        assert secondary.post("/fhir/Observation", json=_observation(p)).status_code == 201
    for search in SEARCHES:
        url = search.format(p=patients[0])
        a, b = primary.get(url), secondary.get(url)
        assert a.status_code == b.status_code == 200, (url, b.text)
        assert b.json().get("total") == a.json().get("total"), url
        assert _entries(b.json()) == _entries(a.json()), url
        counting = "_summary=count" in url or "_count=0" in url
        assert counting or _entries(b.json()), url  # each search finds something
    # a page found by a cursor of the other app: the same next page
    first = secondary.get("/fhir/Patient?_count=1&family=Quispe").json()
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    path = following.removeprefix("http://testserver")
    assert _entries(secondary.get(path).json()) == _entries(primary.get(path).json())


def test_the_search_session_starts_after_the_last_write(settings: Settings) -> None:
    """``reading`` hands out a causal session at the primary's majority commit point,
    never before the newest write this storage committed (the afterClusterTime of its
    first read), and no session at all with the primary."""

    async def run() -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
        try:
            plain = Storage(client, settings.database)
            async with plain.reading() as none:
                assert none is None
            storage = Storage(client, settings.database, read_preference="secondaryPreferred")
            async with storage.reading() as fresh:  # no write yet: the majority point
                assert fresh is not None and fresh.operation_time is not None
                before = fresh.operation_time

            async def write(session: Any) -> Any:
                await storage.db["things"].insert_one({"x": 1}, session=session)
                return session.operation_time

            await storage.db.create_collection("things")
            await storage.transaction(write)
            written = storage._operation_time
            assert written is not None and written > before
            async with storage.reading() as session:
                assert session is not None
                assert session.options.causal_consistency
                assert session.operation_time is not None
                assert session.operation_time >= written
                assert storage.searched("things", session).read_preference.mode == 3
                assert storage.searched("things", None).read_preference.mode == 0
        finally:
            await client.close()

    asyncio.run(run())


def test_searches_that_start_together_share_one_hello(settings: Settings) -> None:
    """Each search needs a ``hello`` sent after it began; those that start while one is
    in flight share the next, so 20 at once cost two commands at most, while searches
    one after another each get their own."""

    async def run() -> None:
        hellos = _Hellos()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_url, event_listeners=[hellos]
        )
        storage = Storage(client, settings.database, read_preference="secondaryPreferred")

        async def search() -> Any:
            async with storage.reading() as session:
                assert session is not None
                return session.operation_time

        try:
            times = await asyncio.gather(*(search() for _ in range(20)))
            assert all(t is not None for t in times)
            assert 1 <= hellos.count <= 2, hellos.count
            for expected in range(hellos.count + 1, hellos.count + 4):
                await search()
                assert hellos.count == expected
        finally:
            await client.close()

    asyncio.run(run())


class _Hellos(monitoring.CommandListener):
    """Counts the hello commands a client sends (its monitors' are not commands)."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "hello":
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass
