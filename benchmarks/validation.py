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
from profiles.compile import CompiledProfile, compile_profile

SYNTHEA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "synthea-r4"


def resources(data: Path = SYNTHEA) -> list[dict[str, Any]]:
    out = []
    for path in sorted(data.glob("*.json")):
        bundle = parse_json(path.read_bytes())
        out += [e["resource"] for e in bundle.get("entry", [])]
    return out


def run(
    items: list[dict[str, Any]],
    r4b_models: bool,
    bindings: BindingContext | None = None,
    invariants: bool = False,
    profile: CompiledProfile | None = None,
) -> tuple[list[float], float]:
    """Each resource validated as a create does (``profile``: then against it too)."""
    times = []
    start = time.perf_counter()
    for resource in items:
        t = time.perf_counter()
        validate_resource(
            resource,
            resource["resourceType"],
            r4b_models=r4b_models,
            bindings=bindings,
            invariants=invariants,
        )
        if profile is not None:
            profile.validate(resource)
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


def observation_profile() -> dict[str, Any]:
    """A differential-only Observation profile: two slicings (code.coding by the value
    of ``system``, category by pattern) and 10 FHIRPath invariants, all of which the
    Synthea Observations meet."""
    cat = "http://terminology.hl7.org/CodeSystem/observation-category"
    invariants = [
        "status.exists()",
        "code.coding.exists()",
        "subject.reference.startsWith('urn:uuid:') or subject.reference.contains('/')",
        "effective.exists() or issued.exists()",
        "value.exists() or component.exists() or dataAbsentReason.exists() or hasMember.exists()",
        "category.coding.all(system.exists() and code.exists())",
        "code.coding.all(system.exists())",
        "component.all(code.exists())",
        "value.ofType(Quantity).all(system.empty() or code.exists())",
        "status != 'entered-in-error' or issued.exists()",
    ]
    constraints = [
        {"key": f"bench-{i}", "severity": "error", "human": f"rule {i}", "expression": e}
        for i, e in enumerate(invariants, 1)
    ]
    slicing = {"discriminator": [{"type": "value", "path": "system"}], "rules": "open"}
    return {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/bench/StructureDefinition/observation",
        "name": "BenchObservation",
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Observation",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "derivation": "constraint",
        "differential": {
            "element": [
                {"id": "Observation", "path": "Observation", "constraint": constraints},
                {
                    "id": "Observation.category",
                    "path": "Observation.category",
                    "slicing": {
                        "discriminator": [{"type": "pattern", "path": "$this"}],
                        "rules": "open",
                    },
                },
                {
                    "id": "Observation.category:typed",
                    "path": "Observation.category",
                    "sliceName": "typed",
                    "min": 0,
                    "max": "1",
                    "patternCodeableConcept": {"coding": [{"system": cat}]},
                },
                {
                    "id": "Observation.code.coding",
                    "path": "Observation.code.coding",
                    "slicing": slicing,
                },
                {
                    "id": "Observation.code.coding:loinc",
                    "path": "Observation.code.coding",
                    "sliceName": "loinc",
                    "min": 1,
                    "max": "1",
                },
                {
                    "id": "Observation.code.coding:loinc.system",
                    "path": "Observation.code.coding.system",
                    "min": 1,
                    "fixedUri": "http://loinc.org",
                },
            ]
        },
    }


def compare_profile(items: list[dict[str, Any]], rounds: int) -> None:
    """Base validation of the Observations, then base plus the profile (issue 14: at
    most twice the base cost); and what compiling the profile costs, paid once."""
    observations = [r for r in items if r["resourceType"] == "Observation"]
    sd = observation_profile()
    compiles = []
    for _ in range(5):
        t = time.perf_counter()
        profile = compile_profile(sd)
        compiles.append((time.perf_counter() - t) * 1000)
    print(
        f"{len(observations)} Observations; compiling the profile (snapshot generated from"
        f" the differential): median {statistics.median(compiles):.1f} ms"
    )
    failing = sum(1 for r in observations if profile.validate(r))
    print(f"Observations the profile finds issues in: {failing}")
    for _ in range(2):  # alternate, so that drift affects both
        line("base              ", observations, rounds, r4b_models=False)
        line("base + invariants ", observations, rounds, r4b_models=False, invariants=True)
        line("base + profile    ", observations, rounds, r4b_models=False, profile=profile)
        line(
            "base + inv + prof ",
            observations,
            rounds,
            r4b_models=False,
            invariants=True,
            profile=profile,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=SYNTHEA, help="bundles directory")
    parser.add_argument("--bindings", action="store_true", help="bindings off vs on")
    parser.add_argument("--mongo-url", help="with --bindings: this MongoDB, not an embedded one")
    parser.add_argument("--invariants", action="store_true", help="invariants off vs on")
    parser.add_argument("--profile", action="store_true", help="base vs base + a profile")
    args = parser.parse_args()
    items = resources(args.data)
    print(f"{len(items)} resources")
    if args.bindings:
        compare_bindings(items, args.rounds, args.mongo_url)
    elif args.invariants:
        for _ in range(2):
            line("invariants off", items, args.rounds, r4b_models=False)
            line("invariants on ", items, args.rounds, r4b_models=False, invariants=True)
    elif args.profile:
        compare_profile(items, args.rounds)
    else:
        for flag in (False, True):
            line(f"r4b_models={flag!s:5}", items, args.rounds, r4b_models=flag)


if __name__ == "__main__":
    main()
