"""Legacy migration throughput: a generated ``clinica`` database into a real server.

    .venv/bin/python benchmarks/import.py                  # 5,000 patients, MariaDB
    .venv/bin/python benchmarks/import.py --patients 500 --concurrency 4 --workers 2

1. ``make-sample`` fills a fresh MariaDB database (``--mariadb``) with ``--patients``.
2. The bundles the importer would send are built once (read + map, nothing
   sent) and kept in memory.
3. Server ingest: a fresh server (own embedded mongod, ``--workers``) receives exactly
   those bundles, POSTed with the same concurrency and the same order (one resource
   mapping after the other, as references need): the server's own rate for them.
4. Importer: another fresh server; ``fhir-server import run`` as the CLI runs it (read,
   map, validate, send, checkpoint), timed end to end.

The importer is "never the bottleneck" when its resources/s reach >= 90% of step 3's.
Everything runs on the same machine, so the importer's CPU competes with the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from fhir_server.embedded_mongo import EmbeddedMongo
from fhir_server.testing import ServerProcess
from importers.mapping.model import ResourceMapping
from importers.run import Importer, RunOptions, TableStats, bundle_body
from importers.sample import make_sample


class _Capture(Importer):
    """The importer with its sending replaced by keeping the bundles."""

    def __init__(self, options: RunOptions) -> None:
        super().__init__(options)
        self.bundles: list[tuple[str, bytes, int]] = []

    async def _send(
        self, rm: ResourceMapping, stats: TableStats, entries: list[tuple[str, dict[str, Any]]]
    ) -> set[str]:
        self.bundles.append((rm.name, bundle_body(rm, entries), len(entries)))
        return set()  # (nothing refused)


@contextmanager
def fresh_server(workers: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="import-bench-") as tmp:
        mongo = EmbeddedMongo(Path(tmp) / "mongo", None)
        url = mongo.start()
        try:
            env = {"FHIR_AUTH_ENABLED": "false"}
            with ServerProcess(mongo_url=url, database="bench", workers=workers, env=env) as s:
                yield s.base_url
        finally:
            mongo.stop()


async def post_all(base: str, bundles: list[tuple[str, bytes, int]], concurrency: int) -> int:
    """POST the bundles, mapping by mapping; returns the resources the server took."""
    ok = 0
    headers = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
    async with httpx.AsyncClient(headers=headers, timeout=600) as client:
        names = list(dict.fromkeys(name for name, _, _ in bundles))
        for name in names:
            queue = [b for b in bundles if b[0] == name]

            async def worker(queue: list[tuple[str, bytes, int]] = queue) -> int:
                done = 0
                while queue:
                    which, body, n = queue.pop(0)
                    r = await client.post(base, content=body)
                    if r.status_code != 200:
                        raise RuntimeError(f"{which}: {r.status_code} {r.text[:300]}")
                    done += n
                return done

            ok += sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="server uvicorn workers")
    parser.add_argument("--mariadb", default="mysql+pymysql://root@127.0.0.1:3306")
    args = parser.parse_args()

    name = f"imp_bench_{uuid.uuid4().hex[:8]}"
    source = f"{args.mariadb}/{name}?charset=utf8mb4"
    state = Path(tempfile.mkdtemp(prefix="import-bench-state-"))
    try:
        t = time.perf_counter()
        counts = make_sample(source, "clinica", args.patients, seed=1)
        rows = sum(v for k, v in counts.items() if not k.startswith("dirt:"))
        print(f"sample: {args.patients} patients, {rows} legacy rows "
              f"in {time.perf_counter() - t:.1f} s")  # fmt: skip

        def options(fhir_url: str) -> RunOptions:
            return RunOptions(
                source_url=source, mapping="clinica", fhir_url=fhir_url,
                batch_size=args.batch_size, concurrency=args.concurrency,
                state_dir=state, restart=True,
            )  # fmt: skip

        capture = _Capture(options("http://127.0.0.1:9/fhir"))  # never contacted
        t = time.perf_counter()
        summary = asyncio.run(capture.run())
        build_s = time.perf_counter() - t
        resources = sum(n for _, _, n in capture.bundles)
        print(f"build only (read + map, nothing sent): {summary.total('read')} rows -> "
              f"{resources} resources in {build_s:.1f} s = "
              f"{resources / build_s:.0f} resources/s")  # fmt: skip

        with fresh_server(args.workers) as base:
            t = time.perf_counter()
            taken = asyncio.run(post_all(base, capture.bundles, args.concurrency))
            server_s = time.perf_counter() - t
        server_rate = taken / server_s
        print(f"server ingest of those {len(capture.bundles)} bundles: {taken} resources "
              f"in {server_s:.1f} s = {server_rate:.0f} resources/s")  # fmt: skip

        with fresh_server(args.workers) as base:
            run = Importer(options(base))
            t = time.perf_counter()
            result = asyncio.run(run.run())
            import_s = time.perf_counter() - t
        written = result.total("created") + result.total("updated") + result.total("unchanged")
        rate = written / import_s
        print(f"importer end to end: {result.total('read')} rows, {written} resources in "
              f"{import_s:.1f} s = {result.total('read') / import_s:.0f} rows/s, "
              f"{rate:.0f} resources/s; failed rows {result.failed}")  # fmt: skip
        print(f"importer / server ingest = {rate / server_rate:.1%} (target >= 90%)")
    finally:
        engine = create_engine(args.mariadb, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        engine.dispose()


if __name__ == "__main__":
    main()
