"""Terminology operations reuse what they resolved until a terminology write says
otherwise (terminology/freshness.py): the writing process at once, every other process
once MongoDB's change stream reports the write. These tests fail if a stale code system
or value set is ever answered after that."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from fhir_server.embedded_mongo import EmbeddedMongo
from fhir_server.testing import ServerProcess

pytestmark = pytest.mark.slow

SYSTEM = "http://example.org/fresh/cs"
VS = "http://example.org/fresh/vs"


def code_system(display: str, codes: tuple[str, ...] = ("a", "b")) -> dict[str, object]:
    return {
        "resourceType": "CodeSystem",
        "id": "fresh",
        "url": SYSTEM,
        "status": "active",
        "content": "complete",
        "concept": [{"code": c, "display": f"{display} {c}"} for c in codes],
    }


def value_set(codes: tuple[str, ...]) -> dict[str, object]:
    return {
        "resourceType": "ValueSet",
        "id": "fresh-vs",
        "url": VS,
        "status": "active",
        "compose": {"include": [{"system": SYSTEM, "concept": [{"code": c} for c in codes]}]},
    }


def display(http: httpx.Client, code: str = "a") -> str | None:
    r = http.get("/CodeSystem/$lookup", params={"system": SYSTEM, "code": code})
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return next(p["valueString"] for p in r.json()["parameter"] if p["name"] == "display")


def in_value_set(http: httpx.Client, code: str) -> bool:
    r = http.get("/ValueSet/$validate-code", params={"url": VS, "system": SYSTEM, "code": code})
    assert r.status_code == 200, r.text
    return next(p["valueBoolean"] for p in r.json()["parameter"] if p["name"] == "result")


@pytest.fixture
def two_servers(mongo_url: str, database: str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Two server processes on one database (as two hosts behind a balancer)."""
    with (
        ServerProcess(mongo_url=mongo_url, database=database) as a,
        ServerProcess(mongo_url=mongo_url, database=database) as b,
        httpx.Client(base_url=a.base_url, timeout=30) as ha,
        httpx.Client(base_url=b.base_url, timeout=30) as hb,
    ):
        yield ha, hb


def eventually(check: Callable[[], bool], within: float = 5.0) -> float:
    """Seconds until ``check`` holds (fails after ``within``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, "the change was never seen"
        time.sleep(0.01)
    return time.monotonic() - start


def test_the_writing_process_sees_its_write_at_once(mongo_url: str, database: str) -> None:
    with (
        ServerProcess(mongo_url=mongo_url, database=database) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):
        _write_then_read(http)


def _write_then_read(http: httpx.Client) -> None:
    # The change stream reports the write a millisecond or so after the commit, so the
    # read right after the write's answer beats it only now and then: many rounds.
    for round_ in range(250):
        r = http.put("/CodeSystem/fresh", json=code_system(f"v{round_}"))
        assert r.status_code in (200, 201), r.text
        assert display(http) == f"v{round_} a"
        assert display(http) == f"v{round_} a"  # from what was resolved just now
        member = "ab"[round_ % 2]
        r = http.put("/ValueSet/fresh-vs", json=value_set((member,)))
        assert r.status_code in (200, 201), r.text
        assert in_value_set(http, member) and not in_value_set(http, "ba"[round_ % 2])
    assert http.delete("/CodeSystem/fresh").status_code in (200, 204)
    assert display(http) is None


def test_another_process_sees_updates_and_deletes_once_reported(
    two_servers: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = two_servers
    assert a.put("/CodeSystem/fresh", json=code_system("old")).status_code == 201
    assert a.put("/ValueSet/fresh-vs", json=value_set(("a",))).status_code == 201
    for _ in range(5):  # b resolves both, and then reuses what it resolved
        assert display(b) == "old a"
        assert in_value_set(b, "a") and not in_value_set(b, "b")
    assert a.put("/CodeSystem/fresh", json=code_system("new")).status_code == 200
    assert a.put("/ValueSet/fresh-vs", json=value_set(("b",))).status_code == 200
    eventually(lambda: display(b) == "new a")
    eventually(lambda: in_value_set(b, "b") and not in_value_set(b, "a"))
    for _ in range(5):  # and never goes back
        assert display(b) == "new a"
        assert not in_value_set(b, "a")
    assert a.delete("/CodeSystem/fresh").status_code in (200, 204)
    eventually(lambda: display(b) is None)
    # a code system created again under the same url is found again
    assert a.put("/CodeSystem/fresh", json=code_system("again")).status_code == 201
    eventually(lambda: display(b) == "again a")


def test_nothing_is_reused_while_the_change_stream_is_closed(tmp_path: Path) -> None:
    """terminology/freshness.py: while a process's change stream is not open it cannot
    learn of other processes' writes, so it must reuse nothing. Server b's stream is
    broken with a MongoDB fail point (its getMore and aggregate fail, b's other reads do
    not): a's update must be answered by b at once, where a b that kept trusting its
    cache would answer the old display for ever."""
    with EmbeddedMongo(
        tmp_path / "mongo", close_idle_files_after=30, parameters={"enableTestCommands": "1"}
    ) as mongo:
        assert mongo.url is not None
        b_url = mongo.url + "&appName=fresh-b"
        with (
            ServerProcess(mongo_url=mongo.url, database="fresh") as a_server,
            ServerProcess(mongo_url=b_url, database="fresh") as b_server,
            httpx.Client(base_url=a_server.base_url, timeout=30) as a,
            httpx.Client(base_url=b_server.base_url, timeout=30) as b,
            MongoClient(mongo.url) as admin,
        ):
            assert a.put("/CodeSystem/fresh", json=code_system("v0")).status_code == 201
            for _ in range(5):  # b resolves it and reuses it
                assert display(b) == "v0 a"
            assert a.put("/CodeSystem/fresh", json=code_system("v1")).status_code == 200
            eventually(lambda: display(b) == "v1 a")  # the stream works: b learns of it
            admin.admin.command(
                "configureFailPoint", "failCommand", mode="alwaysOn",
                data={"failCommands": ["getMore", "aggregate"], "errorCode": 2,
                      "appName": "fresh-b"},
            )  # fmt: skip
            try:
                time.sleep(2.5)  # b's next getMore (at most 1 s away) fails: stream closed
                for round_ in range(2, 12):
                    r = a.put("/CodeSystem/fresh", json=code_system(f"v{round_}"))
                    assert r.status_code == 200, r.text
                    assert display(b) == f"v{round_} a"  # at once: nothing reused
            finally:
                admin.admin.command("configureFailPoint", "failCommand", mode="off")
            # the stream reopens (backoff of at most 5 s) and b follows a again
            assert a.put("/CodeSystem/fresh", json=code_system("v99")).status_code == 200
            eventually(lambda: display(b) == "v99 a", within=10)
