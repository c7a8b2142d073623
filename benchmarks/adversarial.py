"""Adversarial bodies against a real server: how long each is in being answered, and
what ``GET /metadata`` and a resource read cost meanwhile (issue 11: a 2 MB body is
answered within 1 s, and reads keep p99 <= 50 ms).

    .venv/bin/python benchmarks/adversarial.py                      # every shape, 10 each
    .venv/bin/python benchmarks/adversarial.py --shapes ints --rounds 20
    .venv/bin/python benchmarks/adversarial.py --env FHIR_PARSE_IN_PROCESSES=false

A fresh ``fhir-server serve`` (one worker, embedded mongod) per run. One thread posts
the attack bodies back to back; another connection alternates ``GET /metadata`` and
``GET /Patient/[id]`` every 5 ms, before (baseline) and during the attack.

Shapes (each about 2 MB):
- ints: the issue's Patient with ``"extension": [1, 1, ...]`` (a million items);
- ints-split: 20 arrays of 50,000 integers, each within the array limit;
- decimals: 10 arrays of 50,000 decimals (every one a Python hook in the parser);
- objects: 45,000 valid extensions (stored: validated and indexed in full).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from fhir_server.testing import ServerProcess

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def body(shape: str) -> bytes:
    head = b'{"resourceType":"Patient",'
    if shape == "ints":
        return head + b'"extension":[' + b",".join([b"1"] * 1_000_000) + b"]}"
    if shape == "ints-split":
        arrays = (b'"x%d":[' % i + b",".join([b"1"] * 50_000) + b"]" for i in range(20))
        return head + b",".join(arrays) + b"}"
    if shape == "decimals":
        arrays = (b'"x%d":[' % i + b",".join([b"1.5"] * 50_000) + b"]" for i in range(10))
        return head + b",".join(arrays) + b"}"
    if shape == "objects":
        item = b'{"url":"http://example.org/x","valueString":"abc"}'
        return head + b'"extension":[' + b",".join([item] * 45_000) + b"]}"
    raise ValueError(shape)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<22} n={len(ms):<5} median {statistics.median(ms):7.1f} ms  "
        f"p95 {quantile(ms, 0.95):7.1f} ms  p99 {quantile(ms, 0.99):7.1f} ms  "
        f"max {max(ms):7.1f} ms"
    )


def probe(base: str, patient: str, stop: threading.Event) -> tuple[list[float], list[float]]:
    """/metadata and read latencies until ``stop``."""
    metadata: list[float] = []
    reads: list[float] = []
    with httpx.Client(base_url=base, timeout=120) as http:
        while not stop.is_set():
            for path, out in (("/metadata", metadata), (f"/Patient/{patient}", reads)):
                started = time.perf_counter()
                assert http.get(path).status_code == 200
                out.append(time.perf_counter() - started)
                time.sleep(0.005)
    return metadata, reads


def run(base: str, shapes: list[str], rounds: int) -> None:
    with httpx.Client(base_url=base, timeout=120) as http:
        patient = http.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        http.post("/Patient", content=body("ints")[:70_000] + b"]}", headers=FHIR_JSON)
    stop = threading.Event()
    timer = threading.Timer(3.0, stop.set)
    timer.start()
    metadata, reads = probe(base, patient, stop)
    print(summary("baseline /metadata", metadata))
    print(summary("baseline read", reads))
    for shape in shapes:
        payload = body(shape)
        answers: list[float] = []
        statuses: set[int] = set()
        stop = threading.Event()
        results: dict[str, tuple[list[float], list[float]]] = {}

        def read(into: dict[str, tuple[list[float], list[float]]], until: threading.Event) -> None:
            into["r"] = probe(base, patient, until)

        reader = threading.Thread(target=read, args=(results, stop))
        reader.start()
        time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=600) as http:
            for _ in range(rounds):
                started = time.perf_counter()
                response = http.post("/Patient", content=payload, headers=FHIR_JSON)
                answers.append(time.perf_counter() - started)
                statuses.add(response.status_code)
        stop.set()
        reader.join()
        metadata, reads = results["r"]
        print(f"--- {shape}: {len(payload) / 1e6:.2f} MB, status {sorted(statuses)}")
        print(summary("answer", answers))
        print(summary("/metadata meanwhile", metadata))
        print(summary("read meanwhile", reads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", nargs="+", default=["ints", "ints-split", "decimals", "objects"]
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--url", help="an already running server's base URL")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=value for the server")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.shapes, args.rounds)
        return
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        with ServerProcess(Path(tmp) / "data", env=env, log_file=log) as server:
            print(f"server {server.base_url} env {env or '{}'}", file=sys.stderr)
            run(server.base_url, args.shapes, args.rounds)


if __name__ == "__main__":
    main()
