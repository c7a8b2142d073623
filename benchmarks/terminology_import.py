"""SNOMED CT-shaped RF2 import time (`fhir-server terminology import --format snomed`).

    .venv/bin/python benchmarks/terminology_import.py [--concepts 350000]

Writes a synthetic RF2 snapshot of --concepts concepts (a ternary is-a tree, a fifth of
the concepts with a second parent, so a concept has about as many ancestors as in
SNOMED CT), two English descriptions and one Spanish per concept, a language refset;
then times the import command against a private mongod, and prints the concept and
closure counts and the seconds taken (reading included).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fhir_server.embedded_mongo import EmbeddedMongo

DATE = "20250131"
CORE = "900000000000207008"


FSN, SYN, PREFERRED = "900000000000003001", "900000000000013009", "900000000000548007"
CASE, IS_A = "900000000000448009", "116680003"
INFERRED, EXISTENTIAL = "900000000000011006", "900000000000451002"
HEADS = {
    "c": ["id", "effectiveTime", "active", "moduleId", "definitionStatusId"],
    "d": [
        "id",
        "effectiveTime",
        "active",
        "moduleId",
        "conceptId",
        "languageCode",
        "typeId",
        "term",
        "caseSignificanceId",
    ],
    "r": [
        "id",
        "effectiveTime",
        "active",
        "moduleId",
        "sourceId",
        "destinationId",
        "relationshipGroup",
        "typeId",
        "characteristicTypeId",
        "modifierId",
    ],
    "l": [
        "id",
        "effectiveTime",
        "active",
        "moduleId",
        "refsetId",
        "referencedComponentId",
        "acceptabilityId",
    ],
}
NAMES = {
    "c": f"sct2_Concept_Snapshot_INT_{DATE}.txt",
    "d": f"sct2_Description_Snapshot-en_INT_{DATE}.txt",
    "r": f"sct2_Relationship_Snapshot_INT_{DATE}.txt",
    "l": f"der2_cRefset_LanguageSnapshot-en_INT_{DATE}.txt",
}


def write(root: Path, n: int) -> None:
    rng = random.Random(7)
    ids = [str(100000000 + i * 7) + "00" for i in range(n)]
    rows: dict[str, list[list[str]]] = {"c": [], "d": [], "r": [], "l": []}
    head = [DATE, "1", CORE]
    for i, cid in enumerate(ids):
        organ = i % 997
        rows["c"].append([cid, *head, "900000000000074008"])
        rows["d"].append(
            [f"{i}1011", *head, cid, "en", FSN, f"Concept {i} of organ {organ} (disorder)", CASE]
        )
        rows["d"].append([f"{i}2011", *head, cid, "en", SYN, f"Concept {i} of organ {organ}", CASE])
        rows["d"].append(
            [f"{i}3011", *head, cid, "es", SYN, f"Concepto {i} del órgano {organ}", CASE]
        )
        rows["l"].append([f"u{i}", *head, "900000000000509007", f"{i}2011", PREFERRED])
        if i:
            parents = {ids[(i - 1) // 3]}
            if rng.random() < 0.2:
                parents.add(ids[rng.randrange(i)])
            for j, p in enumerate(sorted(parents)):
                rows["r"].append([f"{i}{j}021", *head, cid, p, "0", IS_A, INFERRED, EXISTENTIAL])
    for k, name in NAMES.items():
        lines = ["\t".join(HEADS[k])] + ["\t".join(r) for r in rows[k]]
        (root / name).write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")


def import_command(release: Path, mongo_url: str, database: str = "bench") -> list[str]:
    """The `fhir-server terminology import` of a generated RF2 snapshot, as a user runs it."""
    command = [sys.executable, "-m", "fhir_server", "terminology", "import"]
    command += ["--format", "snomed", str(release), "--no-progress"]
    return [*command, "--mongo-url", mongo_url, "--database", database]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=350_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        release = Path(tmp) / "rf2"
        release.mkdir()
        write(release, args.concepts)
        mongo = EmbeddedMongo(Path(tmp) / "mongo", None)
        url = mongo.start()
        try:
            command = import_command(release, url)
            load = os.getloadavg()[0]
            cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.monotonic()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            seconds = time.monotonic() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
            print(done.stdout.strip(), done.stderr.strip()[-500:], sep="\n")
            print(f"{args.concepts} concepts: import command took {seconds:.1f} s")
            # on a shared machine the wall time is mostly waiting for a core: the
            # command's own CPU time (mongod's not included) says what it costs
            print(f"import process CPU time {used:.1f} s")
            print(f"load average before {load:.2f}, after {os.getloadavg()[0]:.2f}")
        finally:
            mongo.stop()


if __name__ == "__main__":
    main()
