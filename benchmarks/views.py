"""SQL on FHIR views benchmark: real mongod, real ``fhir-server serve``, the real CLI.

Loads the shared Synthea bundles (28,066 resources, 13,969 Observations) ``--copies``
times with fresh ids (benchmarks/export.py ``load``: validated and indexed as a create
would, bulk-inserted straight into MongoDB; ``--copies 18`` gives ~505,000 resources).
With several sizes (``--copies 1,18``) the database grows from one to the next, and
each size gets a fresh server. Then, per size:

- ``POST /fhir/ViewDefinition/$run`` of a 10-column Observation view (id, patient,
  status, category, code, effective, value, and per component its code, value and
  unit) over every stored Observation, streamed as CSV and as NDJSON, ``--repeat``
  times each: rows/s (rows over the time to the body's end), time to the first row
  (request sent to the first complete row received), and the server's peak RSS during
  each run (/proc VmHWM, reset through /proc/PID/clear_refs before each run);
- ``fhir-server view run`` over the same database (``--mongo-url``), CSV to a file,
  ``--repeat`` times: rows/s over the command's whole wall time (start-up included)
  and its peak RSS.

The server runs with authorization off (``ServerProcess``, as every benchmark does),
``--workers 1``, pinned to one core with ``taskset`` (``--cpu``; mongod, this client
and the CLI share the others). The view uses ``forEachOrNull`` over ``component`` so
that every Observation gives rows (only ~14% of Synthea's have components: with
``forEach`` most would give none, and rows/s would measure reading, not rows);
``--for-each`` runs the strict ``forEach`` instead. Targets (issue #17), one PASS/FAIL
line each: median rows/s >= 20,000 (CSV and NDJSON, and the CLI), p95 time to first
row < 200 ms, peak server RSS < 300 MB at every size. ``--profile`` records py-spy on
the server for one extra CSV run of the largest size and prints the top functions.

    .venv/bin/python benchmarks/views.py                      # 1 copy: ~15k rows, quick
    .venv/bin/python benchmarks/views.py --copies 1,18        # ~505k resources: the target
    .venv/bin/python benchmarks/views.py --copies 2,6 --repeat 3 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

# Run as a script: the project's packages (and benchmarks.*) come from the checkout, ahead
# of benchmarks/, whose terminology.py would shadow the terminology package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.export import load, peak_rss_mb
from benchmarks.ingest import Profiler, cpu_ticks, print_profile
from benchmarks.synthea import SYNTHEA
from fhir_server.embedded_mongo import EmbeddedMongo
from fhir_server.testing import ServerProcess

ROWS_PER_S = 20_000
FIRST_ROW_MS = 200
PEAK_RSS_MB = 300


def observation_view(for_each: str) -> dict[str, Any]:
    """10 columns: 7 of the Observation, 3 of each of its components."""

    def col(name: str, path: str) -> dict[str, str]:
        return {"name": name, "path": path}

    return {
        "resourceType": "ViewDefinition",
        "name": "observation_components",
        "status": "active",
        "resource": "Observation",
        "select": [
            {
                "column": [
                    col("id", "getResourceKey()"),
                    col("patient", "subject.getReferenceKey(Patient)"),
                    col("status", "status"),
                    col("category", "category.coding.code.first()"),
                    col("code", "code.coding.code.first()"),
                    col("effective", "effective.ofType(dateTime)"),
                    col("value", "value.ofType(Quantity).value"),
                ]
            },
            {
                for_each: "component",
                "column": [
                    col("component_code", "code.coding.code.first()"),
                    col("component_value", "value.ofType(Quantity).value"),
                    col("component_unit", "value.ofType(Quantity).unit"),
                ],
            },
        ],
    }


# --- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    rows: int
    seconds: float
    first_row_ms: float
    peak_rss_mb: float
    cpu_s: float  # the server's (HTTP) or the command's (CLI) CPU seconds

    @property
    def per_s(self) -> float:
        return self.rows / self.seconds


def reset_peak_rss(pid: int) -> None:
    """VmHWM back to the current RSS (Linux clear_refs "5"), so it is this run's peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def http_run(http: httpx.Client, pid: int, view: dict[str, Any], fmt: str) -> Run:
    """One streamed $run: rows are lines (less CSV's header row)."""
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "viewResource", "resource": view},
            {"name": "_format", "valueCode": fmt},
        ],
    }
    header = 1 if fmt == "csv" else 0
    reset_peak_rss(pid)
    lines, first = 0, None
    ticks = cpu_ticks(pid)
    start = time.perf_counter()
    with http.stream("POST", "/ViewDefinition/$run", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
        for chunk in response.iter_raw():
            lines += chunk.count(b"\n")
            if first is None and lines > header:
                first = time.perf_counter() - start
    seconds = time.perf_counter() - start
    rows = lines - header
    cpu = (cpu_ticks(pid) - ticks) / os.sysconf("SC_CLK_TCK")
    return Run(rows, seconds, 1000 * (first or seconds), peak_rss_mb(pid), cpu)


def cli_run(view_file: Path, url: str, database: str, out: Path, cpu: str | None) -> Run:
    """``fhir-server view run`` to a CSV file; peak RSS from wait4's rusage."""
    args = [sys.executable, "-m", "fhir_server", "view", "run", str(view_file)]
    args += ["--format", "csv", "--mongo-url", url, "--database", database, "-o", str(out)]
    if cpu is not None:
        args = ["taskset", "-c", cpu, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stderr is not None
    errors = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode:
        raise RuntimeError(f"view run exited {process.returncode}: {errors[-500:]}")
    with out.open("rb") as f:
        rows = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) - 1
    cpu = usage.ru_utime + usage.ru_stime
    return Run(rows, seconds, float("nan"), usage.ru_maxrss / 1024, cpu)


# --- figures --------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summarize(label: str, runs: list[Run]) -> dict[str, float]:
    rates = [r.per_s for r in runs]
    firsts = [r.first_row_ms for r in runs]
    row = {
        "rows": runs[0].rows,
        "rows_per_s_median": statistics.median(rates),
        # p95 of a rate: the slow end, i.e. the 5th percentile of rows/s
        "rows_per_s_p95": -p95([-r for r in rates]),
        "first_row_ms_median": statistics.median(firsts),
        "first_row_ms_p95": p95(firsts),
        "seconds_median": statistics.median(r.seconds for r in runs),
        "peak_rss_mb": max(r.peak_rss_mb for r in runs),
        "cpu_share": statistics.median(r.cpu_s / r.seconds for r in runs),
    }
    first = (
        f"; first row median {row['first_row_ms_median']:.0f} ms, "
        f"p95 {row['first_row_ms_p95']:.0f} ms"
        if runs[0].first_row_ms == runs[0].first_row_ms
        else ""
    )
    print(
        f"  {label:8} {row['rows']:>8,} rows in {row['seconds_median']:.2f} s (median): "
        f"{row['rows_per_s_median']:,.0f} rows/s median, {row['rows_per_s_p95']:,.0f} "
        f"p95 (slowest 5%){first}; peak RSS {row['peak_rss_mb']:.0f} MB; "
        f"CPU {100 * row['cpu_share']:.0f}% of a core",
        flush=True,
    )
    return row


def verdict(ok: bool, text: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {text}")


# --- main -----------------------------------------------------------------------------------


def measure_size(
    args: argparse.Namespace, url: str, database: str, tmp: Path, view_file: Path, last: bool
) -> dict[str, dict[str, float]]:
    view = json.loads(view_file.read_text())
    results: dict[str, dict[str, float]] = {}
    server = ServerProcess(
        mongo_url=url, database=database, log_file=tmp / "server.log", env=dict(args.env)
    )
    if args.cpu is not None:
        server.args = ["taskset", "-c", args.cpu, *server.args]
    server.start(timeout=120)  # (not `with server.start()`: __enter__ starts it again)
    try:
        with httpx.Client(base_url=server.base_url, timeout=600) as http:
            pid = server.pid
            assert pid is not None
            print(f"  server pid {pid}: RSS at start {peak_rss_mb(pid):.0f} MB (VmHWM)")
            http_run(http, pid, view, "csv")  # warm-up: imports, mongod cache
            for fmt in ("csv", "ndjson"):
                runs = [http_run(http, pid, view, fmt) for _ in range(args.repeat)]
                if len({r.rows for r in runs}) != 1:
                    raise RuntimeError(f"{fmt}: row counts differ between runs: {runs}")
                results[fmt] = summarize(f"HTTP {fmt}", runs)
            if results["csv"]["rows"] != results["ndjson"]["rows"]:
                raise RuntimeError(f"CSV and NDJSON row counts differ: {results}")
            if args.profile and last:
                profiler = Profiler(pid, tmp / "pyspy.txt")
                run = http_run(http, pid, view, "csv")
                stacks = profiler.stop()
                print(f"  py-spy over one CSV run ({run.per_s:,.0f} rows/s, under the profiler):")
                print_profile(stacks, run.seconds, args.top)
    finally:
        server.stop()
    runs = [
        cli_run(view_file, url, database, tmp / "cli.csv", args.cpu) for _ in range(args.repeat)
    ]
    if runs[0].rows != results["csv"]["rows"]:
        raise RuntimeError(f"CLI rows {runs[0].rows} != HTTP rows {results['csv']['rows']}")
    results["cli"] = summarize("CLI csv", runs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SYNTHEA)
    parser.add_argument(
        "--copies", default="1", help="sizes in copies of the data, ascending, e.g. 1,18"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per format and size")
    parser.add_argument("--cpu", default="1", help="taskset CPU list for the server ('': none)")
    parser.add_argument(
        "--for-each", action="store_true", help="forEach over component, not forEachOrNull"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy one run, largest size")
    parser.add_argument("--top", type=int, default=20, help="functions per profile table")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        type=lambda s: tuple(s.split("=", 1)),
        metavar="NAME=VALUE",
        help="a server setting",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    args.cpu = args.cpu or None
    sizes = [int(c) for c in args.copies.split(",")]
    if sizes != sorted(set(sizes)):
        parser.error("--copies: ascending sizes")

    view = observation_view("forEach" if args.for_each else "forEachOrNull")
    figures: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-views-") as name:
        tmp = Path(name)
        view_file = tmp / "view.json"
        view_file.write_text(json.dumps(view))
        mongo = EmbeddedMongo(tmp / "mongo", cache_size_gb=1.0)
        url = mongo.start()
        database = "bench"
        try:
            loaded = 0
            for copies in sizes:
                n, seconds = asyncio.run(load(url, database, args.data, copies, loaded))
                loaded = copies
                with MongoClient(url) as mc:
                    db = mc[database]
                    total = sum(
                        db[t].estimated_document_count()
                        for t in db.list_collection_names()
                        if t[:1].isupper()
                    )
                    observations = db["Observation"].count_documents({"del": False})
                print(
                    f"{copies} copies: {total:,} resources, {observations:,} Observations "
                    f"(loaded {n:,} in {seconds:.0f} s)",
                    flush=True,
                )
                figures[copies] = {
                    "resources": total,
                    "observations": observations,
                    **measure_size(args, url, database, tmp, view_file, copies == sizes[-1]),
                }
        finally:
            mongo.stop()

    print()
    for f in figures.values():
        size = f"{f['resources']:,} resources, {f['csv']['rows']:,} rows"
        for key, label in (("csv", "HTTP csv"), ("ndjson", "HTTP ndjson"), ("cli", "CLI csv")):
            rate = f[key]["rows_per_s_median"]
            verdict(
                rate >= ROWS_PER_S,
                f"{label:11} {rate:>9,.0f} rows/s median >= {ROWS_PER_S:,} ({size})",
            )
        for key in ("csv", "ndjson"):
            ms = f[key]["first_row_ms_p95"]
            verdict(
                ms < FIRST_ROW_MS, f"first row {key:6} p95 {ms:.0f} ms < {FIRST_ROW_MS} ms ({size})"
            )
        peak = max(f[k]["peak_rss_mb"] for k in ("csv", "ndjson"))
        verdict(peak < PEAK_RSS_MB, f"server peak RSS {peak:.0f} MB < {PEAK_RSS_MB} MB ({size})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
