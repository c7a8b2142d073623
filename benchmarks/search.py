"""Search latency on the 120 Synthea patients (28,066 resources) against a real server.

    .venv/bin/python benchmarks/search.py                 # embedded mongod, loads the data
    .venv/bin/python benchmarks/search.py --runs 50 --json out.json

Loads ../shared/data/synthea-r4 (benchmarks/synthea.py), starts `fhir-server serve` on
that database, then times every shape in benchmarks/search_shapes.py sequentially with
one keep-alive client (p50/p95 over --runs), and reports whether MongoDB's winning plan
for every query of the shape uses an index (no COLLSCAN).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

# Run as a script: the project's packages (and benchmarks.*) come from the checkout, ahead
# of benchmarks/, whose terminology.py would shadow the terminology package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.search_shapes import DEEP_PAGE, SHAPES
from benchmarks.synthea import load_url
from fhir_server.embedded_mongo import EmbeddedMongo
from fhir_server.jsonio import load_stored
from fhir_server.search.registry import Registry
from fhir_server.service.search import SearchService, plan_stages
from fhir_server.storage import Storage
from fhir_server.testing import ServerProcess


async def discover(storage: Storage) -> dict[str, str]:
    """Placeholder values taken from the loaded data."""
    db = storage.db
    top = await (
        await db.Observation.aggregate(
            [
                {"$unwind": "$comp"},
                {"$group": {"_id": "$comp", "n": {"$sum": 1}}},
                {"$sort": {"n": -1}},
                {"$limit": 1},
            ]
        )
    ).to_list()
    pid = top[0]["_id"].split("/", 1)[1]
    patient = load_stored((await db.Patient.find_one({"_id": pid}))["raw"])
    name = patient["name"][0]
    mrn = next(i for i in patient["identifier"] if i.get("system", "").startswith("http"))

    async def most_common(collection: str, field: str) -> str:
        rows = await (
            await db[collection].aggregate(
                [
                    {"$unwind": f"${field}"},
                    {"$match": {field: {"$not": {"$regex": "\x1f"}}}},
                    {"$group": {"_id": f"${field}", "n": {"$sum": 1}}},
                    {"$sort": {"n": -1}},
                    {"$limit": 1},
                ]
            )
        ).to_list()
        return str(rows[0]["_id"])

    practitioner = load_stored((await db.Practitioner.find_one())["raw"])
    return {
        "pid": pid,
        "family": name["family"],
        "given": name["given"][0],
        "family_part": name["family"][1:4].lower(),
        "birthdate": patient["birthDate"],
        "mrn_system": mrn["system"],
        "mrn": mrn["value"],
        "code": "8302-2",  # body height
        "value": "180",
        "value_prefix": "gt",
        "encounter_class": await most_common("Encounter", "sp.class"),
        "med_status": await most_common("MedicationRequest", "sp.status"),
        "condition_code": await most_common("Condition", "sp.code"),
        "practitioner_family": practitioner["name"][0]["family"],
    }


async def uses_indexes(search: SearchService, query: str) -> bool:
    plan = search.parser().parse_url(query)
    plans = await search.explain(plan)
    return all("COLLSCAN" not in plan_stages(p) for _, p in plans)


async def timed(http: httpx.AsyncClient, url: str, runs: int) -> tuple[list[float], dict[str, Any]]:
    body: dict[str, Any] = {}
    for _ in range(3):
        r = await http.get(url)
        r.raise_for_status()
        body = r.json()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        r = await http.get(url)
        times.append((time.perf_counter() - start) * 1000)
        r.raise_for_status()
    return times, body


async def run(base: str, mongo_url: str, database: str, runs: int) -> list[dict[str, Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    storage = Storage(client, database)
    search = SearchService(storage, Registry.from_definitions())
    values = await discover(storage)
    rows = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for name, template in SHAPES:
            query = template.format(**values)
            times, body = await timed(http, f"/{query}", runs)
            indexed = await uses_indexes(search, query)
            rows.append(_row(name, query, times, body, indexed))
        name, template, pages = DEEP_PAGE
        url = f"/{template}"
        for _ in range(pages):
            body = (await http.get(url)).json()
            url = next(link["url"] for link in body["link"] if link["relation"] == "next")
        times, body = await timed(http, url, runs)
        rows.append(_row(f"{name} (page {pages + 1})", template, times, body, True))
    await client.close()
    return rows


def _row(
    name: str, query: str, times: list[float], body: dict[str, Any], indexed: bool
) -> dict[str, Any]:
    times.sort()
    row = {
        "shape": name,
        "query": query,
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 2),
        "entries": len(body.get("entry", [])),
        "total": body.get("total"),
        "indexed": indexed,
    }
    print(
        f"{row['p50_ms']:7.2f} {row['p95_ms']:7.2f}  {'idx' if indexed else 'SCAN'}  "
        f"{row['total']!s:>6} {row['entries']:>4}  {name}",
        flush=True,
    )
    return row


async def _load_if_empty(mongo_url: str, database: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    empty = await client[database]["Patient"].estimated_document_count() == 0
    await client.close()
    if empty:
        loaded = await load_url(mongo_url, database)
        print(f"loaded {loaded['resources']} resources in {loaded['seconds']:.1f} s", flush=True)
    print("   p50     p95  plan   total  page  shape")


def main() -> None:
    parser = argparse.ArgumentParser(description="FHIR search benchmark on Synthea data")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--mongo-url", help="use this MongoDB (with --database) instead")
    parser.add_argument("--database", default="bench", help="with --mongo-url: loaded if empty")
    args = parser.parse_args()
    if args.mongo_url:
        asyncio.run(_load_if_empty(args.mongo_url, args.database))
        with ServerProcess(mongo_url=args.mongo_url, database=args.database) as server:
            rows = asyncio.run(run(server.base_url, args.mongo_url, args.database, args.runs))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        mongo = EmbeddedMongo(Path(tmp) / "mongo")
        url = mongo.start()
        try:
            loaded = asyncio.run(load_url(url, "bench"))
            print(
                f"loaded {loaded['resources']} resources in {loaded['seconds']:.1f} s", flush=True
            )
            print("   p50     p95  plan   total  page  shape")
            with ServerProcess(mongo_url=url, database="bench") as server:
                rows = asyncio.run(run(server.base_url, url, "bench", args.runs))
        finally:
            mongo.stop()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
