"""The real ``fhir-server serve`` process over TCP: embedded MongoDB, durability across
restarts, the data-dir lock, and truly concurrent writers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from process_helpers import descendant_pids

from fhir_server.testing import ServerProcess

pytestmark = pytest.mark.slow
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def test_restart_keeps_every_resource_and_version(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created: dict[str, int] = {}
    with ServerProcess(data) as server, httpx.Client(base_url=server.base_url) as http:
        for i in range(20):
            patient = {"resourceType": "Patient", "name": [{"family": f"P{i}"}]}
            r = http.post("/Patient", json=patient)
            assert r.status_code == 201
            created[r.json()["id"]] = 1
        first = next(iter(created))
        for n in range(2, 5):
            patient = http.get(f"/Patient/{first}").json()
            patient["active"] = n % 2 == 0
            r = http.put(f"/Patient/{first}", json=patient)
            assert r.status_code == 200, r.text
            created[first] = n
        gone = list(created)[1]
        assert http.delete(f"/Patient/{gone}").status_code in (200, 204)
    assert server.process is not None and server.process.returncode == 0

    with ServerProcess(data) as server, httpx.Client(base_url=server.base_url) as http:
        for rid, version in created.items():
            if rid == gone:
                assert http.get(f"/Patient/{rid}").status_code == 410
                assert http.get(f"/Patient/{rid}/_history/1").status_code == 200
                continue
            r = http.get(f"/Patient/{rid}")
            assert r.status_code == 200
            assert r.json()["meta"]["versionId"] == str(version)
            for v in range(1, version + 1):
                assert http.get(f"/Patient/{rid}/_history/{v}").status_code == 200
        history = http.get(f"/Patient/{first}/_history").json()
        versions = [e["resource"]["meta"]["versionId"] for e in history["entry"]]
        assert versions == ["4", "3", "2", "1"]


def test_second_server_on_same_data_dir_refuses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data):
        second = subprocess.run(
            [sys.executable, "-m", "fhir_server", "serve", "--port", "0", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert second.returncode == 2
    assert str(data) in second.stderr or "data dir" in second.stderr.lower()


def test_concurrent_patches_lose_no_update(tmp_path: Path) -> None:
    """16 clients append to one resource at once over real TCP; each server-side write
    re-reads the current version in its transaction, so every append survives
    (http.html#concurrency: no lost updates)."""
    writers, per_writer = 16, 6

    async def run(base: str) -> tuple[str, int]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            basic = {
                "resourceType": "Basic",
                "code": {"text": "c"},
                "extension": [{"url": "http://e/start", "valueString": "s"}],
            }
            r = await http.post("/Basic", json=basic)
            rid = r.json()["id"]

            async def writer(w: int) -> int:
                ok = 0
                for i in range(per_writer):
                    value = {"url": "http://e/w", "valueString": f"{w}-{i}"}
                    op = [{"op": "add", "path": "/extension/-", "value": value}]
                    r = await http.patch(
                        f"/Basic/{rid}", content=json.dumps(op), headers=JSON_PATCH
                    )
                    assert r.status_code == 200, r.text
                    ok += 1
                return ok

            results = await asyncio.gather(*(writer(w) for w in range(writers)))
            return rid, sum(results)

    with ServerProcess(tmp_path / "data") as server:
        rid, writes = asyncio.run(run(server.base_url))
        final = httpx.get(f"{server.base_url}/Basic/{rid}").json()
        values = {e["valueString"] for e in final["extension"] if e["url"] == "http://e/w"}
        assert values == {f"{w}-{i}" for w in range(writers) for i in range(per_writer)}
        assert final["meta"]["versionId"] == str(1 + writes)
        url = f"{server.base_url}/Basic/{rid}/_history"
        history = httpx.get(url, params={"_count": 1000}).json()
        versions = [int(e["resource"]["meta"]["versionId"]) for e in history["entry"]]
        assert versions == list(range(1 + writes, 0, -1))


def _connection_owners(server_pid: int, port: int) -> dict[int, int]:
    """How many established connections to ``port`` each descendant of ``server_pid``
    holds (from /proc: the socket inodes a process has open, matched to /proc/net/tcp)."""
    family = [server_pid, *descendant_pids(server_pid)]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local_port, state = int(cols[1].rsplit(":", 1)[1], 16), cols[3]
            if local_port == port and state == "01":  # ESTABLISHED, server side
                inodes.add(cols[9])
    owners: dict[int, int] = {}
    for pid in family:
        try:
            links = [p.readlink().name for p in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        held = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
        if held:
            owners[pid] = held
    return owners


def test_workers_share_the_connections(tmp_path: Path) -> None:
    """With --workers 2 each worker owns a SO_REUSEPORT socket, so long-lived client
    connections spread over both processes (one shared socket let one worker take them
    all; fhir_server/serving.py)."""
    with ServerProcess(tmp_path / "data", workers=2) as server:
        clients = [httpx.Client(base_url=server.base_url) for _ in range(16)]
        try:
            for c in clients:
                assert c.get("/metadata").status_code == 200
            assert server.process is not None
            owners = _connection_owners(server.process.pid, server.port)
            assert sum(owners.values()) == 16, owners
            assert len(owners) == 2, owners  # 16 connections all hashed to one: 2**-15
        finally:
            for c in clients:
                c.close()
    assert server.process is not None and server.process.returncode == 0


def test_workers_refuse_a_taken_port(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "a", workers=2) as server:
        taken = subprocess.run(
            [
                *(sys.executable, "-m", "fhir_server", "serve", "--workers", "2", "--no-auth"),
                *("--port", str(server.port), "--data-dir", str(tmp_path / "b")),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert taken.returncode != 0
        assert str(server.port) in taken.stderr
