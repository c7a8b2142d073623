"""What a server setting costs on reads: two servers, with and without it, read in
alternating rounds so that drift on a shared machine falls on both alike.

    .venv/bin/python benchmarks/overhead.py FHIR_AUDIT=false            # the audit trail
    .venv/bin/python benchmarks/overhead.py FHIR_METRICS=false --concurrency 16
    .venv/bin/python benchmarks/overhead.py FHIR_AUDIT=false FHIR_METRICS=false --rounds 12
    .venv/bin/python benchmarks/overhead.py FHIR_AUDIT=false --wrk 8 --concurrency 16

Both servers (each its own ``fhir-server serve`` and embedded mongod, authorization off)
get the same 200 Patients; then each round sends ``--requests`` reads of them to one
server and then to the other (the order alternating by round). Reported: the median of
the rounds' throughputs per server, the cost as the relative difference, and the read
latency p50/p95 over all rounds. The client runs on the same machine, so its CPU counts:
with ``--wrk SECONDS`` each round is Debian's ``wrk`` (C, one thread) reading for that
long instead of httpx, which takes far less of the two cores, so the figure is the
server's.

Work a server defers to when it is quiet (the audit records of requests it staged
while busy: docs/audit.md, "Cost") is waited for after each round, before the other
server's round, so that it never runs during the other's; its CPU is reported apart.

Throughput on two shared cores depends on how the client, both servers and both mongod
are scheduled; so the server side's CPU time per read is reported too (the ``serve``
process and its children: the embedded mongod and worker, from /proc), which other
load on the machine does not change. Where the client runs elsewhere and the server is
CPU-bound, throughput is inversely proportional to it.
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
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers import _LUA_DONE, settled
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


def wrk_round(
    base: str, ids: list[str], seconds: float, concurrency: int, latencies: list[float]
) -> float:
    """Reads per second of one wrk round over the ids (its p50 and p95 are kept as two
    latencies: wrk reports percentiles, not each request)."""
    path = base.split("//", 1)[1].split("/", 1)[1]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        listed = ",".join(f'"/{path}/Patient/{i}"' for i in ids)
        script.write(
            f"paths = {{{listed}}}\nn = 0\n"
            "request = function()\n  n = n + 1\n"
            '  return wrk.format("GET", paths[(n % #paths) + 1])\nend\n' + _LUA_DONE
        )
        script.flush()
        args = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "-s", script.name, base]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    figures = json.loads(next(x for x in out.splitlines() if x.startswith("WRK "))[4:])
    if figures["errors"]:
        raise SystemExit(f"wrk: {figures['errors']} errors or non-2xx answers")
    latencies += (figures["p50_us"] / 1e6, figures["p95_us"] / 1e6)
    return float(figures["requests"] / (figures["duration_us"] / 1e6))


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
            await asyncio.to_thread(settled, bases[name])
        rates: dict[str, list[float]] = {k: [] for k in names}
        lat: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        later: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                before = tree_cpu(pids[name])
                if args.wrk:
                    rate = await asyncio.to_thread(
                        wrk_round, bases[name], ids[name], args.wrk, args.concurrency, lat[name]
                    )
                    reads = rate * args.wrk
                else:
                    rate = await round_of(
                        clients[name], ids[name], args.requests, args.concurrency, lat[name]
                    )
                    reads = args.requests
                during = tree_cpu(pids[name])
                await asyncio.to_thread(settled, bases[name])
                cpu[name].append((during - before) / reads * 1e6)
                later[name].append((tree_cpu(pids[name]) - during) / reads * 1e6)
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
            f"(rounds {min(cpu[name]):.0f}-{max(cpu[name]):.0f}), "
            f"and {statistics.median(later[name]):.0f} µs after the round"
        )
    cost = 1 - statistics.median(rates[base]) / statistics.median(rates[changed])
    print(f"cost of the default ({base}) against {' '.join(args.settings)}: {cost * 100:+.1f} %")
    cpu_cost = statistics.median(cpu[base]) / statistics.median(cpu[changed]) - 1
    print(f"server CPU per read of the default against the changed: {cpu_cost * 100:+.1f} %")
    whole = [sum(x) for x in zip(cpu[base], later[base], strict=True)]
    whole_changed = [sum(x) for x in zip(cpu[changed], later[changed], strict=True)]
    whole_cost = statistics.median(whole) / statistics.median(whole_changed) - 1
    print(f"... counting what was done after the rounds: {whole_cost * 100:+.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", metavar="FHIR_X=V", help="the changed settings")
    parser.add_argument("--requests", type=int, default=1000, help="reads per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--wrk", type=float, metavar="SECONDS", help="rounds of wrk, this long")
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
