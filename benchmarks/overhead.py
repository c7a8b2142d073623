"""What a server setting costs on reads: two servers, with and without it, read in
alternating rounds so that drift on a shared machine falls on both alike.

    .venv/bin/python benchmarks/overhead.py FHIR_AUDIT=false            # the audit trail
    .venv/bin/python benchmarks/overhead.py FHIR_METRICS=false --concurrency 16
    .venv/bin/python benchmarks/overhead.py FHIR_AUDIT=false FHIR_METRICS=false --rounds 12

Both servers (each its own ``fhir-server serve`` and embedded mongod, authorization off)
get the same 200 Patients; then each round sends ``--requests`` reads of them to one
server and then to the other (the order alternating by round). Reported: the median of
the rounds' throughputs per server, the cost as the relative difference, and the read
latency p50/p95 over all rounds. The client runs on the same machine, so its CPU counts.

Throughput on two shared cores depends on how the client, both servers and both mongod
are scheduled; so the server side's CPU time per read is reported too (the ``serve``
process and its children: the embedded mongod and worker, from /proc), which other
load on the machine does not change. Where the client runs elsewhere and the server is
CPU-bound, throughput is inversely proportional to it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from fhir_server.testing import ServerProcess


async def seed(http: httpx.AsyncClient, n: int) -> list[str]:
    ids = []
    for i in range(n):
        body = {"resourceType": "Patient", "name": [{"family": f"Overhead{i}"}]}
        r = await http.post("/Patient", json=body)
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


async def round_of(
    http: httpx.AsyncClient, ids: list[str], n: int, concurrency: int, latencies: list[float]
) -> float:
    """Reads per second of one round."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            r = await http.get(f"/Patient/{ids[i % len(ids)]}")
            latencies.append(time.perf_counter() - start)
            r.raise_for_status()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants."""
    parents: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += parents.get(p, [])
    return total


async def compare(bases: dict[str, str], pids: dict[str, int], args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=64)
    clients = {
        k: httpx.AsyncClient(base_url=b, limits=limits, timeout=60) for k, b in bases.items()
    }
    try:
        ids = {k: await seed(c, 200) for k, c in clients.items()}
        names = list(clients)
        for name in names:  # warm-up round, not counted
            await round_of(clients[name], ids[name], args.requests, args.concurrency, [])
        rates: dict[str, list[float]] = {k: [] for k in names}
        lat: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                before = tree_cpu(pids[name])
                rate = await round_of(
                    clients[name], ids[name], args.requests, args.concurrency, lat[name]
                )
                await asyncio.sleep(0.5)  # the audit sink's last flush of the round
                cpu[name].append((tree_cpu(pids[name]) - before) / args.requests * 1e6)
                rates[name].append(rate)
    finally:
        for c in clients.values():
            await c.aclose()
    base, changed = names
    for name in names:
        ordered = sorted(lat[name])
        median = statistics.median(rates[name])
        print(
            f"{name:10s} reads c={args.concurrency}: median {median:7.1f}/s "
            f"(rounds {min(rates[name]):.0f}-{max(rates[name]):.0f})  "
            f"p50 {statistics.median(ordered) * 1000:.2f} ms  "
            f"p95 {ordered[int(len(ordered) * 0.95) - 1] * 1000:.2f} ms  "
            f"server CPU per read: median {statistics.median(cpu[name]):.0f} µs "
            f"(rounds {min(cpu[name]):.0f}-{max(cpu[name]):.0f})"
        )
    cost = 1 - statistics.median(rates[base]) / statistics.median(rates[changed])
    print(f"cost of the default ({base}) against {' '.join(args.settings)}: {cost * 100:+.1f} %")
    cpu_cost = statistics.median(cpu[base]) / statistics.median(cpu[changed]) - 1
    print(f"server CPU per read of the default against the changed: {cpu_cost * 100:+.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", metavar="FHIR_X=V", help="the changed settings")
    parser.add_argument("--requests", type=int, default=1000, help="reads per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.settings)
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(Path(tmp) / "default") as default,
        ServerProcess(Path(tmp) / "changed", env=env) as changed,
    ):
        assert default.process and changed.process
        bases = {"default": default.base_url, "changed": changed.base_url}
        pids = {"default": default.process.pid, "changed": changed.process.pid}
        asyncio.run(compare(bases, pids, args))


if __name__ == "__main__":
    main()
