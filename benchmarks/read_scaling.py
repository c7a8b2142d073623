"""Searches on a 3-member replica set: the primary alone, or spread over the secondaries.

    .venv/bin/python benchmarks/read_scaling.py                  # 3 rounds, 1 API worker
    .venv/bin/python benchmarks/read_scaling.py --workers 2 --rounds 5 --duration 8

Starts three mongod (fhir_server/replica_set.py), loads the Synthea bundles through one
``fhir-server serve``, then measures the search shapes of benchmarks/peers.py with
``wrk`` (--connections each) against a fresh ``serve`` per round and mode, the modes
alternating (A/B, B/A, ...): ``FHIR_READ_PREFERENCE=primary`` (the default) and
``secondaryPreferred``. Prints each shape's rate and p50 / p95 per mode (median over
the rounds), the gain, and the CPU the primary and the two secondaries spent per search:
with members on their own hosts, the primary's is what reads take from the writes.

Everything shares this machine's cores: the three mongod, the server and wrk. Sending
reads to the secondaries moves work from one mongod process to two others on the same
cores, so the gain it brings with members on their own hosts cannot show here; what
does show is the cost of the causal session (a second round trip's worth of session
bookkeeping, and a secondary's wait for the majority snapshot).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ingest import cpu_ticks, upload
from benchmarks.peers import values, wrk
from benchmarks.synthea import SYNTHEA
from fhir_server.replica_set import ReplicaSet
from fhir_server.testing import ServerProcess

MODES = ("primary", "secondaryPreferred")
SHAPES = {
    "Patient?family=X": "/Patient?family={X}",
    "Patient?birthdate=ge1970-01-01": "/Patient?birthdate=ge1970-01-01",
    "Observation?patient=P&code=C": "/Observation?patient={P}&code={C}",
    "Observation?code=C&_count=50": "/Observation?code={C}&_count=50",
    "Encounter?patient=P&_sort=-date": "/Encounter?patient={P}&_sort=-date",
}


def members_cpu(rs: ReplicaSet) -> list[float]:
    """CPU seconds each member has spent so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    return [cpu_ticks(rs.pid(i) or 0) / ticks for i in range(len(rs.members))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="API worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--data", type=Path, default=SYNTHEA, help="bundles directory")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks/read_scaling.py needs wrk: apt-get install wrk")
    if not args.data.is_dir():
        raise SystemExit(f"no Synthea bundles at {args.data} (--data DIR)")
    print(f"{os.cpu_count()} cores; {args.rounds} rounds x {args.duration:g} s", flush=True)
    database = f"bench_{uuid.uuid4().hex[:8]}"
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, ReplicaSet(Path(tmp) / "rs", 3) as rs:
        with ServerProcess(mongo_url=rs.url, database=database) as server:
            summary, _ = upload(server.base_url, 4, args.data)
            print(f"loaded {summary.succeeded} resources", flush=True)
            v = values(server.base_url)
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else reversed(MODES):
                env = {"FHIR_READ_PREFERENCE": mode, "FHIR_AUDIT": "false"}
                with ServerProcess(
                    mongo_url=rs.url, database=database, workers=args.workers, env=env
                ) as server:
                    primary = rs.wait_for_primary(10)
                    for name, path in SHAPES.items():
                        url = server.base_url + path.format(**v)
                        wrk(url, args.connections, 1, None, Path(tmp))  # warm-up
                        before = members_cpu(rs)
                        row = wrk(url, args.connections, args.duration, None, Path(tmp))
                        spent = [b - a for a, b in zip(before, members_cpu(rs), strict=True)]
                        searches = row["per_s"] * args.duration
                        row["primary_ms"] = 1000 * spent[primary] / searches
                        row["secondaries_ms"] = 1000 * (sum(spent) - spent[primary]) / searches
                        runs.setdefault((name, mode), []).append(row)
                        print(
                            f"  round {r + 1} {mode:18} {name}: {row['per_s']:.0f}/s "
                            f"p50 {row['p50_ms']:.2f} ms p95 {row['p95_ms']:.2f} ms, mongod CPU "
                            f"{row['primary_ms']:.2f} + {row['secondaries_ms']:.2f} ms",
                            flush=True,
                        )
    print(
        f"\nc{args.connections}, {args.workers} API worker(s); median of {args.rounds} "
        "rounds: req/s, p50 / p95 ms, mongod CPU per search on the primary + secondaries"
    )
    print("| search | primary | secondaryPreferred | rate gain |")
    print("|---|---|---|---|")
    for name in SHAPES:
        cells = []
        rates = []
        for mode in MODES:
            rows = runs[(name, mode)]
            rate = statistics.median(x["per_s"] for x in rows)
            p50 = statistics.median(x["p50_ms"] for x in rows)
            p95 = statistics.median(x["p95_ms"] for x in rows)
            on_primary = statistics.median(x["primary_ms"] for x in rows)
            on_secondaries = statistics.median(x["secondaries_ms"] for x in rows)
            rates.append(rate)
            cells.append(
                f"{rate:,.0f}/s, {p50:.2f} / {p95:.2f} ms, "
                f"CPU {on_primary:.2f} + {on_secondaries:.2f} ms"
            )
        print(f"| {name} | {cells[0]} | {cells[1]} | {100 * (rates[1] / rates[0] - 1):+.0f} % |")


if __name__ == "__main__":
    main()
