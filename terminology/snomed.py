"""Reading a SNOMED CT RF2 snapshot release (the files a licensee downloads).

From the snapshot folder (searched recursively): ``sct2_Concept_Snapshot*``,
``sct2_Description_Snapshot*`` (every language: the Spanish edition's ``-es`` files
give Spanish designations), ``sct2_Relationship_Snapshot*`` (active ``116680003 |Is a|``
rows are the hierarchy; stated relationships are not read) and, when present,
``der2_cRefset_Language*Snapshot*`` (which synonym is preferred). Tab-separated with a
header row, as RF2 specifies. The display is the preferred synonym of the first
language refset, else the fully specified name.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from terminology.concepts import Concept
from terminology.importing import Release

SYSTEM = "http://snomed.info/sct"
IS_A = "116680003"
FSN = "900000000000003001"
SYNONYM = "900000000000013009"
PREFERRED = "900000000000548007"
_USES = {FSN: "Fully specified name", SYNONYM: "Synonym"}
_DATE = re.compile(r"_(\d{8})\.txt$")


class ReleaseError(Exception):
    """The folder does not hold a readable RF2 snapshot."""


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)


def _find(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def read_release(root: Path) -> Release:
    concept_files = _find(root, "sct2_Concept_*Snapshot*.txt")
    if not concept_files:
        raise ReleaseError(f"no sct2_Concept_*Snapshot*.txt file under {root}")
    descriptions = _find(root, "sct2_Description_*Snapshot*.txt")
    relationships = [
        p for p in _find(root, "sct2_Relationship*Snapshot*.txt") if "Stated" not in p.name
    ]
    languages = _find(root, "der2_cRefset_Language*Snapshot*.txt")
    files = concept_files + descriptions + relationships + languages
    date = _DATE.search(concept_files[0].name)
    version_date = date.group(1) if date else "unknown"

    found: dict[str, Concept] = {}
    modules: dict[str, str] = {}
    for path in concept_files:
        for row in _rows(path):
            cid = row["id"]
            found[cid] = Concept(cid, inactive=row["active"] != "1")
            modules[cid] = row["moduleId"]
    preferred: set[str] = set()
    for path in languages:
        for row in _rows(path):
            if row["active"] == "1" and row["acceptabilityId"] == PREFERRED:
                preferred.add(row["referencedComponentId"])
    fsn: dict[str, str] = {}
    display: dict[str, str] = {}
    for path in descriptions:
        for row in _rows(path):
            concept = found.get(row["conceptId"])
            if concept is None or row["active"] != "1":
                continue
            kind = row["typeId"]
            use = {"system": SYSTEM, "code": kind, "display": _USES.get(kind, kind)}
            des = {"l": row["languageCode"], "u": use, "v": row["term"]}
            if row["id"] in preferred:
                concept.designations.insert(0, des)
                display.setdefault(concept.code, row["term"])
            else:
                concept.designations.append(des)
            if kind == FSN and row["languageCode"] == "en":
                fsn.setdefault(concept.code, row["term"])
    for cid, concept in found.items():
        concept.display = display.get(cid) or fsn.get(cid)
        concept.properties.append(
            {"c": "moduleId", "t": "Code", "v": modules[cid], "s": modules[cid]}
        )
    parents: dict[str, list[str]] = defaultdict(list)
    for path in relationships:
        for row in _rows(path):
            if row["active"] == "1" and row["typeId"] == IS_A:
                parents[row["sourceId"]].append(row["destinationId"])
    for cid, ps in parents.items():
        if cid in found:
            found[cid].parents = sorted(set(ps))
    module = Counter(modules.values()).most_common(1)[0][0] if modules else "900000000000207008"
    fingerprint = ";".join(f"{p.name}:{p.stat().st_size}" for p in files)
    return Release(
        url=SYSTEM,
        version=f"{SYSTEM}/{module}/version/{version_date}",
        name="SNOMED_CT",
        title="SNOMED CT",
        slug=f"snomed-ct-{version_date}",
        fingerprint=fingerprint,
        concepts=list(found.values()),
    )
