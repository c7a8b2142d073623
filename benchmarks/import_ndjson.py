"""Bulk ``$import`` benchmark: real mongod, real ``fhir-server serve``, real Celery workers.

The shared Synthea bundles (28,066 resources, ``--copies`` times with fresh ids) become
one NDJSON file per resource type (urn:uuid references rewritten to ``Type/id``, as a
Bulk Data export would give them), in a directory the server may import from. Then, for
each worker count of ``--workers``, a fresh database gets one ``$import`` of every file:
kick-off to complete manifest, checking that the manifest's counts and the stored
resources equal the lines; then the same import again (every resource unchanged: no new
version). Reports resources/s.

    .venv/bin/python benchmarks/import_ndjson.py                   # 2 workers
    .venv/bin/python benchmarks/import_ndjson.py --workers 1,2 --profile /tmp/import
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

# Run as a script: the project's packages (and benchmarks.*) come from the checkout, ahead
# of benchmarks/, whose terminology.py would shadow the terminology package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.export import copies_of_bundles, peak_rss_mb, start_workers, stop_all
from benchmarks.synthea import SYNTHEA
from fhir_server.embedded_mongo import EmbeddedMongo
from fhir_server.jsonio import dumps
from fhir_server.testing import ServerProcess

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def write_ndjson(directory: Path, data: Path, copies: int) -> tuple[Counter[str], Counter[str]]:
    """One ``<Type>.ndjson`` per resource type; returns the lines of each, and the
    distinct resources of each (Synthea repeats its Organizations and Practitioners in
    every patient's bundle)."""
    files: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    ids: set[tuple[str, str]] = set()
    try:
        for resources in copies_of_bundles(data, copies):
            for r in resources:
                t = r["resourceType"]
                if t not in files:
                    files[t] = open(directory / f"{t}.ndjson", "wb")  # noqa: SIM115
                files[t].write(dumps(r) + b"\n")
                counts[t] += 1
                ids.add((t, r["id"]))
    finally:
        for f in files.values():
            f.close()
    return counts, Counter(t for t, _ in ids)


def manifest(directory: Path, types: list[str]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
        {"name": "inputSource", "valueUri": "https://synthea.example.org/fhir"},
    ]
    for t in types:
        url = (directory / f"{t}.ndjson").as_uri()
        part = [{"name": "type", "valueCode": t}, {"name": "url", "valueUrl": url}]
        params.append({"name": "input", "part": part})
    return {"resourceType": "Parameters", "parameter": params}


def run_import(http: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    r = http.post("/$import", json=body, headers=ASYNC)
    assert r.status_code == 202, r.text
    status = r.headers["Content-Location"]
    while True:
        r = http.get(status)
        if r.status_code != 202:
            break
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    assert r.status_code == 200, r.text
    return seconds, r.json()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used (its threads included)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(pids: list[int], out: str, seconds: int) -> list[subprocess.Popen[bytes]]:
    """py-spy of each worker for ``seconds`` (needs ptrace rights: root, or sudo)."""
    return [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--duration", str(seconds), "--format", "raw", "--output", f"{out}-{pid}.txt",
             "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SYNTHEA)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--workers", default="2", help="worker counts to run, e.g. 1,2")
    parser.add_argument("--unit-bytes", type=int, default=4 << 20)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--profile", help="py-spy raw profiles of the workers to this prefix")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        inputs = Path(tmp) / "ndjson"
        inputs.mkdir()
        started = time.perf_counter()
        lines, distinct = write_ndjson(inputs, args.data, args.copies)
        size = sum(f.stat().st_size for f in inputs.iterdir()) / 1e6
        print(
            f"{sum(lines.values())} resources of {len(lines)} types as NDJSON "
            f"({size:.0f} MB; {sum(distinct.values())} distinct) in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        body = manifest(inputs, sorted(lines, key=lambda t: -lines[t]))
        mongo = EmbeddedMongo(Path(tmp) / "mongo", cache_size_gb=1.0)
        url = mongo.start()
        try:
            for n in (int(x) for x in args.workers.split(",")):
                database = f"bench_import_{n}"
                env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
                env.update(
                    FHIR_MONGO_URL=url,
                    FHIR_DATABASE=database,
                    FHIR_AUTH_ENABLED="false",
                    FHIR_CELERY_QUEUE=f"bench-{uuid.uuid4().hex[:8]}",
                    FHIR_CELERY_BROKER_URL=args.broker,
                    FHIR_IMPORT_DIRS=str(inputs),
                    FHIR_IMPORT_UNIT_BYTES=str(args.unit_bytes),
                    FHIR_IMPORT_CHUNK_RESOURCES=str(args.chunk),
                )
                with (
                    ServerProcess(
                        mongo_url=url, database=database, env=env,
                        log_file=Path(tmp) / "server.log",
                    ) as server,
                    httpx.Client(base_url=server.base_url, timeout=120) as http,
                ):  # fmt: skip
                    workers = start_workers(n, env, Path(tmp) / "workers.log")
                    try:
                        time.sleep(3)  # let them connect
                        total = sum(lines.values())
                        spies = []
                        if args.profile:
                            spies = profile([w.pid for w in workers], f"{args.profile}-w{n}", 25)
                        for run in ("first", "re-run"):
                            pids = {
                                "mongod": mongo._proc.pid if mongo._proc else None,
                                "workers": None,
                            }
                            before = {k: cpu_seconds(v) for k, v in pids.items()}
                            workers_before = sum(cpu_seconds(w.pid) for w in workers)
                            seconds, done = run_import(http, body)
                            used = {k: cpu_seconds(v) - before[k] for k, v in pids.items()}
                            used["workers"] = (
                                sum(cpu_seconds(w.pid) for w in workers) - workers_before
                            )
                            counted = sum(o["count"] for o in done["output"])
                            failed = sum(e["count"] for e in done["error"])
                            with MongoClient(url) as mc:
                                db = mc[database]
                                stored = sum(db[t].count_documents({}) for t in lines)
                                versions = db["history"].count_documents(
                                    {"t": {"$in": list(lines)}}
                                )
                            unique = sum(distinct.values())
                            ok = counted == total and stored == versions == unique and not failed
                            print(
                                f"workers={n} {run}: {total} resources in {seconds:.1f} s = "
                                f"{total / seconds:,.0f} resources/s; manifest {counted} imported, "
                                f"{failed} failed; stored {stored}, versions {versions}: "
                                f"{'OK' if ok else 'MISMATCH'}",
                                flush=True,
                            )
                            print(
                                f"  CPU seconds: workers {used['workers']:.1f}, "
                                f"mongod {used['mongod']:.1f} (of {2 * seconds:.1f} on 2 cores)"
                            )
                            for e in done["error"][:3]:  # what failed, if anything
                                print("  e.g.", http.get(e["url"]).text.splitlines()[0][:400])
                        for s in spies:
                            s.terminate()
                        peaks = ", ".join(f"{peak_rss_mb(w.pid):.0f} MB" for w in workers)
                        print(f"workers={n} peak RSS per worker: {peaks}", flush=True)
                    finally:
                        stop_all(workers)
                with MongoClient(url) as mc:
                    mc.drop_database(database)
        finally:
            mongo.stop()


if __name__ == "__main__":
    main()
