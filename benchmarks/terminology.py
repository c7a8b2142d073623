"""Terminology operation latency against a real server process.

    .venv/bin/python benchmarks/terminology.py [--requests 300] [--concepts 1000]
    .venv/bin/python benchmarks/terminology.py --subsumption [--sct-concepts 100000]
        [--conditions 100000] [--descendants 5000] [--requests 300]

Starts `fhir-server serve` (embedded mongod in a temporary data dir, authorization off),
posts a CodeSystem of --concepts concepts (a two-level hierarchy, each with a Spanish
designation) and a ValueSet of all of them, warms up, then times sequential requests
over HTTP: a plain Patient read (the HTTP baseline), CodeSystem/$lookup,
CodeSystem/$validate-code, ValueSet/$validate-code (repeating 90 codes, as validating a
stream of data does), $lookup and ValueSet/$validate-code of a code not asked before,
and ValueSet/$expand of the whole value set, without and with a text filter, in rounds
of one request of each kind.
Prints p50 and p95 in milliseconds (client-measured, so HTTP is included) and the
machine's load average before and after.

With --subsumption: token search by subsumption instead. Writes a SNOMED CT-shaped RF2
snapshot (benchmarks/terminology_import.py's generator), imports it with `fhir-server
terminology import` into a private mongod, starts the server on that mongod, picks the
concept whose descendant count is nearest --descendants, loads --conditions Conditions
(each coded with a random concept of the release) through the loader, then times
`Condition?code:below=http://snomed.info/sct|<that concept>` (first page, default
total), `code:above` of a leaf, and `code:in` of a ValueSet that is-a the concept.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import httpx
from pymongo import MongoClient

from fhir_server import loader
from fhir_server.embedded_mongo import EmbeddedMongo
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


def report(name: str, times: list[float]) -> None:
    times = sorted(times)
    p95 = times[int(len(times) * 0.95)]
    print(f"{name:32} p50 {statistics.median(times):7.2f} ms  p95 {p95:7.2f} ms")


def rf2_generator() -> ModuleType:
    path = Path(__file__).resolve().parent / "terminology_import.py"
    spec = importlib.util.spec_from_file_location("terminology_import", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCT = "http://snomed.info/sct"


def pick_concept(mongo_url: str, database: str, wanted: int) -> tuple[str, int, str]:
    """(concept with the descendant count nearest ``wanted``, that count, a leaf)."""
    with MongoClient(mongo_url) as mc:
        db = mc[database]
        key = db["terminology_systems"].find_one({"url": SCT})["k"]  # type: ignore[index]
        concepts = db["terminology_concepts"]
        best = ("", -1)
        for doc in concepts.find({"k": key}, {"c": 1}, sort=[("o", 1)], limit=400):
            n = concepts.count_documents({"k": key, "anc": doc["c"]})
            if abs(n - wanted) < abs(best[1] - wanted):
                best = (doc["c"], n)
        leaf = concepts.find_one({"k": key, "anc": best[0], "anc.8": {"$exists": True}})
        assert leaf is not None
        return best[0], best[1], leaf["c"]


def write_conditions(path: Path, n: int, codes: list[str]) -> None:
    rng = random.Random(11)
    with path.open("w") as f:
        for i in range(n):
            condition = {
                "resourceType": "Condition",
                "id": f"c{i}",
                "subject": {"reference": f"Patient/p{i % 5000}"},
                "code": {"coding": [{"system": SCT, "code": rng.choice(codes)}]},
            }
            f.write(json.dumps(condition) + "\n")


def subsumption(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        release = Path(tmp) / "rf2"
        release.mkdir()
        generator = rf2_generator()
        generator.write(release, args.sct_concepts)
        mongo = EmbeddedMongo(Path(tmp) / "mongo", None)
        url = mongo.start()
        try:
            command = generator.import_command(release, url)
            started = time.monotonic()
            subprocess.run(command, check=True, capture_output=True)
            print(f"imported {args.sct_concepts} concepts in {time.monotonic() - started:.0f} s")
            concept, below, leaf = pick_concept(url, "bench", args.descendants)
            print(f"{SCT}|{concept}: {below} descendants; deep concept {leaf}")
            with MongoClient(url) as mc:
                key = mc["bench"]["terminology_systems"].find_one({"url": SCT})["k"]  # type: ignore[index]
                codes = [
                    d["c"] for d in mc["bench"]["terminology_concepts"].find({"k": key}, {"c": 1})
                ]
            data = Path(tmp) / "conditions.ndjson"
            write_conditions(data, args.conditions, codes)
            with (
                ServerProcess(mongo_url=url, database="bench") as server,
                httpx.Client(base_url=server.base_url, timeout=120) as http,
            ):
                started = time.monotonic()
                options = loader.Options(base_url=server.base_url, concurrency=4)
                summary = asyncio.run(loader.load([data], options))
                print(
                    f"loaded {summary.succeeded} Conditions in {time.monotonic() - started:.0f} s"
                )
                filter_ = [{"property": "concept", "op": "is-a", "value": concept}]
                vs = {
                    "resourceType": "ValueSet",
                    "url": "http://example.org/bench/vs-below",
                    "status": "active",
                    "compose": {"include": [{"system": SCT, "filter": filter_}]},
                }
                assert http.post("/ValueSet", json=vs).status_code == 201
                below_q = {"code:below": f"{SCT}|{concept}"}
                first = http.get("/Condition", params={**below_q, "_total": "accurate"}).json()
                print(f"code:below matches {first['total']} of {args.conditions} Conditions")
                calls: dict[str, Callable[[httpx.Client, int], httpx.Response]] = {
                    "Condition?code:below (page 1)": lambda h, i: h.get(
                        "/Condition", params=below_q
                    ),
                    "Condition?code:below _total=none": lambda h, i: h.get(
                        "/Condition", params={**below_q, "_total": "none"}
                    ),
                    "Condition?code:above (deep concept)": lambda h, i: h.get(
                        "/Condition", params={"code:above": f"{SCT}|{leaf}"}
                    ),
                    "Condition?code:in (is-a VS)": lambda h, i: h.get(
                        "/Condition", params={"code:in": vs["url"]}
                    ),
                }
                for name, call in calls.items():
                    timed(http, 20, call)  # warm up
                    report(name, timed(http, args.requests, call))
        finally:
            mongo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concepts", type=int, default=1000)
    parser.add_argument("--subsumption", action="store_true")
    parser.add_argument("--sct-concepts", type=int, default=100_000)
    parser.add_argument("--conditions", type=int, default=100_000)
    parser.add_argument("--descendants", type=int, default=5000)
    args = parser.parse_args()
    if args.subsumption:
        subsumption(args)
        return
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(Path(tmp) / "data") as server,
        httpx.Client(base_url=server.base_url, timeout=60) as http,
    ):
        cs = code_system(args.concepts)
        # leaf codes, taken once each from the front (lookups) and from the back
        # (validations): a code not asked before, so only its canonical is cached
        leaves = [c["code"] for g in cs["concept"] for c in g["concept"]]  # type: ignore[attr-defined]

        def fresh(i: int) -> str:
            return str(leaves[i % len(leaves)])

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
            # a code not asked before: nothing about it is cached yet (only the canonical)
            "CodeSystem/$lookup, new code": lambda h, i: h.get(
                "/CodeSystem/$lookup", params={"system": SYSTEM, "code": fresh(i)}
            ),
            "ValueSet/$validate-code, new code": lambda h, i: h.get(
                "/ValueSet/$validate-code",
                params={"url": VS, "system": SYSTEM, "code": fresh(-1 - i)},
            ),
            f"ValueSet/$expand ({total})": lambda h, i: h.get(
                "/ValueSet/$expand", params={"url": VS}
            ),
            "ValueSet/$expand filter": lambda h, i: h.get(
                "/ValueSet/$expand", params={"url": VS, "filter": f"organ {i % 37}"}
            ),
        }
        for name, call in calls.items():
            if "new code" not in name:
                timed(http, 20, call)  # warm up
        # round robin: one request of each kind per round, so a load that comes and
        # goes on a shared machine falls on every line alike
        samples: dict[str, list[float]] = {name: [] for name in calls}
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        for i in range(args.requests):
            for name, call in calls.items():
                samples[name] += timed(http, 1, lambda h, _, c=call, n=i: c(h, n))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        for name, found in samples.items():
            times = sorted(found)
            p95 = times[int(len(times) * 0.95)]
            print(f"{name:32} p50 {statistics.median(times):7.2f} ms  p95 {p95:7.2f} ms")


if __name__ == "__main__":
    main()
