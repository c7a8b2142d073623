"""Bulk export benchmark: real mongod, real ``fhir-server serve``, real Celery workers.

Loads the shared Synthea bundles (28,066 resources) ``--copies`` times with fresh ids
(``--copies 18`` gives ~505,000), then times a system-level and a Patient-level
``$export`` with each worker count of ``--workers``: kick-off to manifest (the export
itself), then the download of every file, checking that the exported line counts equal
the stored counts. Reports resources/s and each run's worker peak RSS (VmHWM).

    .venv/bin/python benchmarks/export.py                       # 28k, 1 and 2 workers
    .venv/bin/python benchmarks/export.py --copies 18           # the >=500k scale run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import BulkWriteError

# Run as a script: the project's packages (and benchmarks.*) come from the checkout, ahead
# of benchmarks/, whose terminology.py would shadow the terminology package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.synthea import SYNTHEA, _rewrite
from fhir_server.config import Settings
from fhir_server.embedded_mongo import EmbeddedMongo
from fhir_server.jsonio import parse_json
from fhir_server.resource_types import is_resource_type
from fhir_server.search.registry import Registry
from fhir_server.service.everything import compartment_types
from fhir_server.service.resources import ResourceService
from fhir_server.service.search import SearchService
from fhir_server.storage import Storage
from fhir_server.testing import ServerProcess

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


# --- data ----------------------------------------------------------------------------------


def copies_of_bundles(directory: Path, copies: int, first: int = 0) -> Any:
    """Each bundle's resources, once per copy from ``first`` up to ``copies``, ids
    suffixed by the copy number (copy 0 keeps Synthea's ids) and urn:uuid references
    rewritten to match."""
    paths = sorted(directory.glob("*.json"))
    for k in range(first, copies):
        for path in paths:
            bundle = parse_json(path.read_bytes())
            refs: dict[str, str] = {}
            for entry in bundle["entry"]:
                resource = entry["resource"]
                rid = entry["fullUrl"].removeprefix("urn:uuid:") + (f"-{k}" if k else "")
                resource["id"] = rid
                refs[entry["fullUrl"]] = f"{resource['resourceType']}/{rid}"
            yield [_rewrite(e["resource"], refs) for e in bundle["entry"]]


async def load(
    url: str, database: str, directory: Path, copies: int, first: int = 0
) -> tuple[int, float]:
    """Validate, index and insert every resource (as a create would), in bulk; copies
    from ``first`` only (those before it are loaded already)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    storage = Storage(client, database)
    await storage.ensure_indexes()
    service = ResourceService(
        storage, Settings(), SearchService(storage, Registry.from_definitions())
    )
    start = time.perf_counter()
    loaded = 0
    try:
        for resources in copies_of_bundles(directory, copies, first):
            by_type: dict[str, list[Any]] = defaultdict(list)
            for resource in resources:
                checked = service.checked(resource["resourceType"], resource)
                w = service.new_version(
                    checked["resourceType"], checked["id"], checked, None, "POST"
                )
                by_type[w.type].append(w)
            for t, writes in by_type.items():
                await storage.ensure_type(t)
                try:
                    await storage.current(t).insert_many(
                        [w.current_document() for w in writes], ordered=False
                    )
                except BulkWriteError as exc:  # shared resources: first copy wins
                    if any(e["code"] != 11000 for e in exc.details["writeErrors"]):
                        raise
                loaded += len(writes)
    finally:
        await client.close()
    return loaded, time.perf_counter() - start


def stored_counts(url: str, database: str) -> tuple[Counter[str], Counter[str]]:
    """Live resources by type: all of them, and those a Patient-level export covers."""
    registry = Registry.from_definitions()
    system: Counter[str] = Counter()
    patient: Counter[str] = Counter()
    in_compartment = {"comp": {"$gt": "Patient/", "$lt": "Patient0"}}
    with MongoClient(url) as mc:
        db = mc[database]
        for t in db.list_collection_names():
            if not is_resource_type(t):
                continue
            system[t] = db[t].count_documents({"del": False})
            if t == "Patient":
                patient[t] = system[t]
            elif t in compartment_types(registry):
                patient[t] = db[t].count_documents({"del": False, **in_compartment})
    return +system, +patient


# --- processes ------------------------------------------------------------------------------


def start_workers(n: int, env: dict[str, str], log: Path) -> list[subprocess.Popen[bytes]]:
    out = open(log, "ab")  # noqa: SIM115
    return [
        subprocess.Popen(
            [sys.executable, "-m", "fhir_server", "worker", "--log-level", "warning"],
            env=env,
            stdout=out,
            stderr=out,
        )
        for _ in range(n)
    ]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- one export ------------------------------------------------------------------------------


def run_export(http: httpx.Client, path: str) -> tuple[float, float, Counter[str], int]:
    """(export seconds, download seconds, lines by type, files)."""
    start = time.perf_counter()
    r = http.get(path, headers=ASYNC)
    assert r.status_code == 202, r.text
    status = r.headers["Content-Location"]
    while True:
        r = http.get(status)
        if r.status_code != 202:
            break
        time.sleep(0.1)
    exported = time.perf_counter() - start
    assert r.status_code == 200, r.text
    manifest = r.json()
    lines: Counter[str] = Counter()
    start = time.perf_counter()
    for item in manifest["output"]:
        n = 0
        with http.stream("GET", item["url"]) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                n += chunk.count(b"\n")
        assert n == item["count"], (item, n)
        lines[item["type"]] += n
    downloaded = time.perf_counter() - start
    http.delete(status)
    return exported, downloaded, lines, len(manifest["output"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SYNTHEA)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2")
    parser.add_argument("--file-max", type=int, default=50_000)
    parser.add_argument(
        "--broker", default="redis://127.0.0.1:6379/13", help="'mongodb': the MongoDB broker"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each export")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        mongo = EmbeddedMongo(Path(tmp) / "mongo", cache_size_gb=1.0)
        url = mongo.start()
        database = "bench"
        try:
            loaded, seconds = asyncio.run(load(url, database, args.data, args.copies))
            system, patient = stored_counts(url, database)
            print(
                f"loaded {loaded} resources ({sum(system.values())} stored) "
                f"in {seconds:.0f} s; Patient-level scope: {sum(patient.values())}"
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
            env.update(
                FHIR_MONGO_URL=url,
                FHIR_DATABASE=database,
                FHIR_AUTH_ENABLED="false",
                FHIR_CELERY_QUEUE=f"bench-{uuid.uuid4().hex[:8]}",
                FHIR_EXPORT_FILE_MAX_RESOURCES=str(args.file_max),
            )
            if args.broker != "mongodb":
                env["FHIR_CELERY_BROKER_URL"] = args.broker
            with (
                ServerProcess(
                    mongo_url=url, database=database, env=env, log_file=Path(tmp) / "server.log"
                ) as server,
                httpx.Client(base_url=server.base_url, timeout=120) as http,
            ):
                if args.broker == "mongodb":
                    print("(broker: MongoDB; the server's embedded worker runs too)", flush=True)
                for n in (int(x) for x in args.workers.split(",")):
                    workers = start_workers(n, env, Path(tmp) / "workers.log")
                    time.sleep(2)  # let them connect
                    for level, path, expected in (
                        ("system", "/$export", system),
                        ("patient", "/Patient/$export", patient),
                    ):
                        for _ in range(args.repeat):
                            exported, downloaded, lines, files = run_export(http, path)
                            total = sum(lines.values())
                            ok = "OK" if lines == expected else f"MISMATCH {lines - expected}"
                            print(
                                f"workers={n} {level:7} {total} resources in {files} files: "
                                f"export {exported:.2f} s = {total / exported:,.0f} res/s; "
                                f"download {downloaded:.2f} s = {total / downloaded:,.0f} res/s; "
                                f"counts {ok}"
                            )
                    peaks = ", ".join(f"{peak_rss_mb(w.pid):.0f} MB" for w in workers)
                    print(f"workers={n} peak RSS per worker: {peaks}", flush=True)
                    stop_all(workers)
        finally:
            mongo.stop()


if __name__ == "__main__":
    main()
