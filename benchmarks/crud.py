"""Create / read / update latency and throughput against a real server process.

    .venv/bin/python benchmarks/crud.py                  # starts its own server (embedded mongod)
    .venv/bin/python benchmarks/crud.py --url http://127.0.0.1:8080/fhir
    .venv/bin/python benchmarks/crud.py --requests 2000 --concurrency 1 16 --workers 2
    .venv/bin/python benchmarks/crud.py --env FHIR_AUDIT=false   # a setting of the server

Each phase sends ``--requests`` requests at each concurrency with one shared
httpx.AsyncClient (keep-alive). The client runs on the same 2-core machine as the server
and mongod, so the figures include its CPU cost: they are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from fhir_server.testing import ServerProcess


def patient(i: int) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": f"{i:09d}"}],
        "name": [{"family": "Núñez", "given": ["José", f"Bench{i}"]}],
        "gender": "male" if i % 2 else "female",
        "birthDate": f"19{50 + i % 50}-0{1 + i % 9}-1{i % 9}",
        "telecom": [{"system": "phone", "value": f"+593-2-{i:07d}"}],
        "address": [{"line": ["Av. Amazonas 123"], "city": "Quito", "country": "EC"}],
    }


async def timed(
    n: int, concurrency: int, request: Callable[[int], Awaitable[httpx.Response]]
) -> dict[str, float]:
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            response = await request(i)
            latencies.append(time.perf_counter() - start)
            if response.status_code >= 400:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "per_s": n / elapsed,
    }


async def one_concurrency(http: httpx.AsyncClient, n: int, c: int) -> list[dict[str, object]]:
    ids: list[str] = []

    async def create(i: int) -> httpx.Response:
        r = await http.post("/Patient", json=patient(i))
        ids.append(r.json()["id"])
        return r

    async def read(i: int) -> httpx.Response:
        return await http.get(f"/Patient/{ids[i % len(ids)]}")

    async def update(i: int) -> httpx.Response:
        body = {**patient(i), "id": ids[i % len(ids)], "active": bool(i % 2)}
        body["name"] = [{"family": "Núñez", "given": [f"U{i}"]}]
        return await http.put(f"/Patient/{body['id']}", json=body)

    rows: list[dict[str, object]] = []
    for name, fn in (("create", create), ("read", read), ("update", update)):
        result = await timed(n, c, fn)
        rows.append({"op": name, "concurrency": c, **result})
        print(
            f"{name:7s} c={c:<3d} p50 {result['p50_ms']:7.2f} ms  "
            f"p95 {result['p95_ms']:7.2f} ms  {result['per_s']:8.1f} req/s",
            flush=True,
        )
    return rows


async def run(base: str, n: int, concurrencies: list[int]) -> list[dict[str, object]]:
    limits = httpx.Limits(max_connections=max(concurrencies), max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        return [row for c in concurrencies for row in await one_concurrency(http, n, c)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="benchmark this server instead of starting one")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (own server)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--env", action="append", default=[], metavar="FHIR_X=V", help="a server setting"
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    if args.url:
        rows = asyncio.run(run(args.url, args.requests, args.concurrency))
    else:
        with (
            tempfile.TemporaryDirectory() as tmp,
            ServerProcess(Path(tmp) / "data", workers=args.workers, env=env) as server,
        ):
            rows = asyncio.run(run(server.base_url, args.requests, args.concurrency))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
