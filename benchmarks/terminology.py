"""Terminology operation latency against a real server process.

    .venv/bin/python benchmarks/terminology.py [--requests 300] [--concepts 1000]

Starts `fhir-server serve` (embedded mongod in a temporary data dir, authorization off),
posts a CodeSystem of --concepts concepts (a two-level hierarchy, each with a Spanish
designation) and a ValueSet of all of them, warms up, then times sequential requests
over HTTP: a plain Patient read (the HTTP baseline), CodeSystem/$lookup,
CodeSystem/$validate-code, ValueSet/$validate-code, and ValueSet/$expand of the whole
value set, without and with a text filter. Prints p50 and p95 in milliseconds
(client-measured, so HTTP is included).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from fhir_server.testing import ServerProcess

SYSTEM = "http://example.org/bench/cs"
VS = "http://example.org/bench/vs"


def code_system(n: int) -> dict[str, object]:
    groups = max(1, n // 100)
    concepts = []
    made = 0
    for g in range(groups):
        children = []
        for i in range(n // groups - 1):
            made += 1
            children.append(
                {
                    "code": f"C{g}-{i}",
                    "display": f"Concept {g} {i} disorder of organ {i % 37}",
                    "designation": [{"language": "es", "value": f"Trastorno {g} {i}"}],
                }
            )
        concepts.append({"code": f"G{g}", "display": f"Group {g}", "concept": children})
    return {
        "resourceType": "CodeSystem",
        "url": SYSTEM,
        "status": "active",
        "content": "complete",
        "concept": concepts,
    }


def timed(
    http: httpx.Client, n: int, call: Callable[[httpx.Client, int], httpx.Response]
) -> list[float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        r = call(http, i)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concepts", type=int, default=1000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(Path(tmp) / "data") as server,
        httpx.Client(base_url=server.base_url, timeout=60) as http,
    ):
        cs = code_system(args.concepts)
        created = http.post("/CodeSystem", json=cs)
        assert created.status_code == 201
        pid = http.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        vs = {
            "resourceType": "ValueSet",
            "url": VS,
            "status": "active",
            "compose": {"include": [{"system": SYSTEM}]},
        }
        assert http.post("/ValueSet", json=vs).status_code == 201
        total = http.get("/ValueSet/$expand", params={"url": VS}).json()["expansion"]["total"]
        print(f"value set of {total} concepts")
        calls: dict[str, Callable[[httpx.Client, int], httpx.Response]] = {
            "baseline: read a Patient": lambda h, i: h.get(f"/Patient/{pid}"),
            "CodeSystem/$lookup": lambda h, i: h.get(
                "/CodeSystem/$lookup", params={"system": SYSTEM, "code": f"C{i % 9}-{i % 90}"}
            ),
            "CodeSystem/$validate-code": lambda h, i: h.get(
                "/CodeSystem/$validate-code",
                params={"url": SYSTEM, "code": f"C{i % 9}-{i % 90}"},
            ),
            "ValueSet/$validate-code": lambda h, i: h.get(
                "/ValueSet/$validate-code",
                params={"url": VS, "system": SYSTEM, "code": f"C{i % 9}-{i % 90}"},
            ),
            f"ValueSet/$expand ({total})": lambda h, i: h.get(
                "/ValueSet/$expand", params={"url": VS}
            ),
            "ValueSet/$expand filter": lambda h, i: h.get(
                "/ValueSet/$expand", params={"url": VS, "filter": f"organ {i % 37}"}
            ),
        }
        for name, call in calls.items():
            timed(http, 20, call)  # warm up
            times = sorted(timed(http, args.requests, call))
            p95 = times[int(len(times) * 0.95)]
            print(f"{name:32} p50 {statistics.median(times):7.2f} ms  p95 {p95:7.2f} ms")


if __name__ == "__main__":
    main()
