"""Failover of a 3-member replica set under load: how long writes stop, what clients see.

    .venv/bin/python benchmarks/failover.py                       # MongoDB's 10 s election timeout
    .venv/bin/python benchmarks/failover.py --election-timeout-ms 2000 --threads 8
    .venv/bin/python benchmarks/failover.py --env FHIR_MONGO_SELECT_TIMEOUT_SECONDS=5
    .venv/bin/python benchmarks/failover.py --no-kill --members 1   # cost of replication:
    .venv/bin/python benchmarks/failover.py --no-kill --members 3   # compare the two

Starts three mongod (fhir_server/replica_set.py) and one ``fhir-server serve`` on them,
runs creates, transaction Bundles, If-Match updates and reads from ``--threads`` client
threads (fhir_server/failover_load.py), SIGKILLs the primary after ``--before`` seconds
and keeps going ``--after`` seconds past the first write a new primary acknowledged.
Prints:

- the election gap: from the kill to the first acknowledged write that started after it;
- every outcome counted by kind and HTTP status;
- write latency median / p95 before the kill, during the gap and after it;
- the check that nothing acknowledged was lost and nothing refused was applied.

Everything runs on one machine (2 cores here): the figures include the clients' and
the three mongod's CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from fhir_server.failover_load import (
    WRITES,
    Load,
    Outcome,
    check_outcomes,
    percentile,
    summary,
    write_gap,
)
from fhir_server.replica_set import ReplicaSet
from fhir_server.testing import ServerProcess


def _latencies(outcomes: list[Outcome]) -> dict[str, float | int]:
    ms = [o.seconds * 1000 for o in outcomes if o.kind in WRITES and o.acknowledged]
    return {
        "writes": len(ms),
        "p50_ms": round(percentile(ms, 0.5), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--before", type=float, default=5.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load after")
    parser.add_argument("--election-timeout-ms", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="API worker processes")
    parser.add_argument(
        "--members", type=int, default=3, help="replica set members (1: the cost baseline)"
    )
    parser.add_argument(
        "--no-kill",
        action="store_true",
        help="only steady-state latency (--before seconds): the cost of replication",
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=value for serve")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)

    with tempfile.TemporaryDirectory() as tmp:
        heartbeat = min(2000, max(500, args.election_timeout_ms // 3))
        with ReplicaSet(
            Path(tmp) / "rs",
            args.members,
            election_timeout_ms=args.election_timeout_ms,
            heartbeat_interval_ms=heartbeat,
        ) as rs:
            server = ServerProcess(
                mongo_url=rs.url,
                database=f"bench_{uuid.uuid4().hex[:8]}",
                workers=args.workers,
                env=env,
                log_file=Path(tmp) / "server.log",
            )
            with server:
                load = Load(server.base_url, threads=args.threads, timeout=120)
                load.start()
                time.sleep(args.before)
                if args.no_kill:
                    load.stop()
                    steady = {
                        "members": args.members,
                        "threads": args.threads,
                        "api_workers": args.workers,
                        "counts": summary(load.outcomes)["counts"],
                        "write_latency": _latencies(load.outcomes),
                    }
                    print(json.dumps(steady, indent=2))
                    return
                killed_at = time.monotonic()
                killed = rs.kill_primary()
                elected = rs.wait_for_primary(120, other_than=killed)
                elected_after = time.monotonic() - killed_at
                load.wait_for(lambda os: write_gap(os, killed_at) < float("inf"), 120)
                time.sleep(args.after)
                load.stop()
                outcomes = load.outcomes
                gap = write_gap(outcomes, killed_at)
                problems = check_outcomes(server.base_url, load)
    before = [o for o in outcomes if o.start < killed_at]
    during = [o for o in outcomes if killed_at <= o.start < killed_at + gap]
    after = [o for o in outcomes if o.start >= killed_at + gap]
    in_flight = [o for o in before if o.end > killed_at]
    report = {
        "threads": args.threads,
        "api_workers": args.workers,
        "election_timeout_ms": args.election_timeout_ms,
        "killed_member": killed,
        "new_primary": elected,
        "primary_elected_after_s": round(elected_after, 2),
        "write_gap_s": round(gap, 2),
        "longest_request_s": round(max(o.seconds for o in outcomes), 2),
        "counts": summary(outcomes)["counts"],
        "in_flight_at_kill": {
            "n": len(in_flight),
            "statuses": sorted({o.status for o in in_flight}),
            "longest_s": round(max((o.seconds for o in in_flight), default=0), 2),
        },
        "write_latency": {
            "before": _latencies(before),
            "during": _latencies(during),
            "after": _latencies(after),
        },
        "problems": problems,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
