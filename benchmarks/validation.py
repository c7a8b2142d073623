"""Validation cost per resource over the Synthea bundles, with and without the R4B models,
and with and without the terminology binding checks.

    .venv/bin/python benchmarks/validation.py [--rounds 3]
    .venv/bin/python benchmarks/validation.py --bindings [--mongo-url URL]

In-process (no server): every entry resource of ../shared/data/synthea-r4 is validated
by ``validate_resource`` as a create does, first by the definition-driven pass alone
(the default), then with ``r4b_models=True`` (FHIR_VALIDATE_R4B_MODELS). Prints the
median and p95 time per resource and the total per round, in milliseconds.

``--bindings`` compares instead the pass without and with a ``BindingContext``: the R4
core terminology is loaded into a fresh database (an embedded mongod unless
``--mongo-url``), the value sets the resources meet are loaded into a
``terminology.membership.Membership`` as a server process would, and the time of one
``Membership.context()`` (the per-request stamp lookup) is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# Run as a script: the project's packages (and benchmarks.*) come from the checkout, ahead
# of benchmarks/, whose terminology.py would shadow the terminology package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_server.jsonio import parse_json
from fhir_server.validation import BindingContext, validate_resource

SYNTHEA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "synthea-r4"


def resources(data: Path = SYNTHEA) -> list[dict[str, Any]]:
    out = []
    for path in sorted(data.glob("*.json")):
        bundle = parse_json(path.read_bytes())
        out += [e["resource"] for e in bundle.get("entry", [])]
    return out


def run(
    items: list[dict[str, Any]], r4b_models: bool, bindings: BindingContext | None = None
) -> tuple[list[float], float]:
    times = []
    start = time.perf_counter()
    for resource in items:
        t = time.perf_counter()
        validate_resource(
            resource, resource["resourceType"], r4b_models=r4b_models, bindings=bindings
        )
        times.append((time.perf_counter() - t) * 1000)
    return times, (time.perf_counter() - start) * 1000


def line(label: str, items: list[dict[str, Any]], rounds: int, **kwargs: Any) -> None:
    run(items[:500], **kwargs)  # warm caches (models, compiled regexes)
    totals, per = [], []
    for _ in range(rounds):
        times, total = run(items, **kwargs)
        totals.append(total)
        per += times
    per.sort()
    p95 = per[int(len(per) * 0.95)]
    print(
        f"{label}  per resource median {statistics.median(per):.3f} ms"
        f"  p95 {p95:.3f} ms  round median {statistics.median(totals):.0f} ms"
    )


async def binding_context(mongo_url: str, items: list[dict[str, Any]]) -> BindingContext:
    """A Membership over a fresh database with the core terminology, holding every
    value set the resources meet; the cost of its per-request stamp check."""
    from pymongo import AsyncMongoClient

    from fhir_server.search.registry import Registry
    from fhir_server.storage import Storage
    from terminology.core import load_core
    from terminology.membership import Membership

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    database = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        storage = Storage(client, database)
        await storage.ensure_indexes()
        print((await load_core(storage, Registry.from_definitions())).line())
        membership = Membership(storage)
        ctx = await membership.context()
        for resource in items:
            validate_resource(resource, resource["resourceType"], bindings=ctx)
        started = time.perf_counter()
        await membership.load(ctx.missing)
        print(
            f"{len(ctx.missing)} bound value sets met, loaded in "
            f"{time.perf_counter() - started:.1f} s"
        )
        stamps = []
        for _ in range(200):
            t = time.perf_counter()
            ctx = await membership.context()
            stamps.append((time.perf_counter() - t) * 1000)
        stamps.sort()
        print(
            f"Membership.context() median {statistics.median(stamps):.3f} ms"
            f"  p95 {stamps[int(len(stamps) * 0.95)]:.3f} ms"
        )
        return ctx
    finally:
        await client.drop_database(database)
        await client.close()


def compare_bindings(items: list[dict[str, Any]], rounds: int, mongo_url: str | None) -> None:
    from fhir_server.embedded_mongo import EmbeddedMongo

    if mongo_url is None:
        with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp)) as mongo:
            assert mongo.url is not None
            ctx = asyncio.run(binding_context(mongo.url, items))
    else:
        ctx = asyncio.run(binding_context(mongo_url, items))
    checked = sum(1 for r in items for i in validate_resource(r, r["resourceType"], bindings=ctx))
    print(f"issues with bindings over all resources: {checked} (warnings: extensible misses)")
    for _ in range(2):  # alternate, so that drift affects both
        line("bindings off", items, rounds, r4b_models=False)
        line("bindings on ", items, rounds, r4b_models=False, bindings=ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=SYNTHEA, help="bundles directory")
    parser.add_argument("--bindings", action="store_true", help="bindings off vs on")
    parser.add_argument("--mongo-url", help="with --bindings: this MongoDB, not an embedded one")
    args = parser.parse_args()
    items = resources(args.data)
    print(f"{len(items)} resources")
    if args.bindings:
        compare_bindings(items, args.rounds, args.mongo_url)
        return
    for flag in (False, True):
        line(f"r4b_models={flag!s:5}", items, args.rounds, r4b_models=flag)


if __name__ == "__main__":
    main()
