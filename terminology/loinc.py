"""Reading a LOINC release (the files a LOINC user downloads).

From the release folder (searched recursively): ``Loinc.csv`` (the LOINC table:
display from LONG_COMMON_NAME, designations from SHORTNAME and DisplayName, the six
axes, CLASS, CLASSTYPE, ORDER_OBS and STATUS as properties; DEPRECATED terms inactive),
when present ``ComponentHierarchyBySystem.csv`` (or the older ``MultiAxialHierarchy.csv``:
its LP part codes become concepts and every row's IMMEDIATE_PARENT a parent, so
``is-a`` works over the component hierarchy) and ``*LinguisticVariant.csv`` files (each
a language: ``esMX...`` gives ``es-MX`` designations). Comma-separated with quoted
fields and a header row, as LOINC ships them. The version is given, or read from the
folder name (``Loinc_2.77``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from terminology.concepts import Concept
from terminology.importing import Release

SYSTEM = "http://loinc.org"
PROPERTIES = (
    "COMPONENT",
    "PROPERTY",
    "TIME_ASPCT",
    "SYSTEM",
    "SCALE_TYP",
    "METHOD_TYP",
    "CLASS",
    "CLASSTYPE",
    "ORDER_OBS",
    "STATUS",
)
_VARIANT = re.compile(r"^([a-z]{2})([A-Z]{2})\d*LinguisticVariant\.csv$")
_VERSION = re.compile(r"(\d+\.\d+)")


class ReleaseError(Exception):
    """The folder does not hold a readable LOINC release."""


def _rows(path: Path) -> csv.DictReader[str]:
    return csv.DictReader(path.open(encoding="utf-8-sig", newline=""))


def _find(root: Path, name: str) -> list[Path]:
    return sorted(p for p in root.rglob(name) if p.is_file())


def read_release(root: Path, version: str | None = None) -> Release:
    tables = _find(root, "Loinc.csv")
    if not tables:
        raise ReleaseError(f"no Loinc.csv under {root}")
    hierarchy = _find(root, "ComponentHierarchyBySystem.csv") or _find(
        root, "MultiAxialHierarchy.csv"
    )
    variants = [p for p in root.rglob("*LinguisticVariant.csv") if _VARIANT.match(p.name)]
    files = tables + hierarchy[:1] + sorted(variants)
    found: dict[str, Concept] = {}
    for row in _rows(tables[0]):
        code = row["LOINC_NUM"]
        concept = Concept(code, row.get("LONG_COMMON_NAME") or row.get("COMPONENT"))
        concept.inactive = row.get("STATUS") == "DEPRECATED"
        for name in ("SHORTNAME", "DisplayName"):
            if row.get(name):
                concept.designations.append({"l": "en", "v": row[name]})
        for name in PROPERTIES:
            value = row.get(name)
            if value:
                kind = "String" if name in ("COMPONENT", "ORDER_OBS") else "Code"
                concept.properties.append({"c": name, "t": kind, "v": value, "s": value})
        found[code] = concept
    for path in hierarchy[:1]:
        for row in _rows(path):
            code, parent = row["CODE"], row.get("IMMEDIATE_PARENT") or ""
            node = found.get(code)
            if node is None:  # an LP part or class of the hierarchy
                node = found[code] = Concept(code, row.get("CODE_TEXT") or None)
            if parent and parent not in node.parents:
                node.parents.append(parent)
    for path in sorted(variants):
        match = _VARIANT.match(path.name)
        assert match is not None
        language = f"{match.group(1)}-{match.group(2)}"
        for row in _rows(path):
            term = found.get(row.get("LOINC_NUM", ""))
            text = row.get("LONG_COMMON_NAME") or row.get("COMPONENT")
            if term is not None and text:
                term.designations.append({"l": language, "v": text})
    if version is None:
        match = _VERSION.search(root.resolve().name)
        version = match.group(1) if match else "unknown"
    return Release(
        url=SYSTEM,
        version=version,
        name="LOINC",
        title="LOINC Code System",
        slug=f"loinc-{version}",
        fingerprint=";".join(f"{p.name}:{p.stat().st_size}" for p in files),
        concepts=list(found.values()),
    )
