"""Validation cost per resource over the Synthea bundles, with and without the R4B models.

    .venv/bin/python benchmarks/validation.py [--rounds 3]

In-process (no server): every entry resource of ../shared/data/synthea-r4 is validated
by ``validate_resource`` as a create does, first by the definition-driven pass alone
(the default), then with ``r4b_models=True`` (FHIR_VALIDATE_R4B_MODELS). Prints the
median and p95 time per resource and the total per round, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from fhir_server.jsonio import parse_json
from fhir_server.validation import validate_resource

SYNTHEA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "synthea-r4"


def resources() -> list[dict[str, Any]]:
    out = []
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = parse_json(path.read_bytes())
        out += [e["resource"] for e in bundle.get("entry", [])]
    return out


def run(items: list[dict[str, Any]], r4b_models: bool) -> tuple[list[float], float]:
    times = []
    start = time.perf_counter()
    for resource in items:
        t = time.perf_counter()
        validate_resource(resource, resource["resourceType"], r4b_models=r4b_models)
        times.append((time.perf_counter() - t) * 1000)
    return times, (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    items = resources()
    print(f"{len(items)} resources")
    for flag in (False, True):
        run(items[:500], flag)  # warm caches (models, compiled regexes)
        totals, per = [], []
        for _ in range(args.rounds):
            times, total = run(items, flag)
            totals.append(total)
            per += times
        per.sort()
        p95 = per[int(len(per) * 0.95)]
        print(
            f"r4b_models={flag!s:5}  per resource median {statistics.median(per):.3f} ms"
            f"  p95 {p95:.3f} ms  round median {statistics.median(totals):.0f} ms"
        )


if __name__ == "__main__":
    main()
