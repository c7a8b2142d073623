"""Reading ICD-10 (or its Spanish edition, CIE-10) from the files a user holds.

- ClaML XML (the WHO distribution format, also used for CIE-10): every ``Class``
  (chapter, block, category) becomes a concept; its ``SuperClass`` its parent; the
  ``preferred`` rubric's label its display, in the label's ``xml:lang``; other rubrics
  (``inclusion``, ``exclusion`` ...) are not designations and are skipped. The version
  is the ``Title`` element's.
- Tabular CSV: a header row with ``code`` and ``display`` (or ``description``) columns
  and, optionally, ``parent``; without it a code's parent is the code one level up
  (``E11.9`` under ``E11``) when that code is in the file.

The system is ``http://hl7.org/fhir/sid/icd-10`` (terminologies-systems.html): CIE-10
is the same code system in Spanish, so its labels become ``es`` designations and
displays.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

from terminology.concepts import Concept
from terminology.importing import Release

SYSTEM = "http://hl7.org/fhir/sid/icd-10"
_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


class ReleaseError(Exception):
    """The path holds no readable ClaML or tabular CSV."""


def read_release(path: Path, version: str | None = None) -> Release:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    claml = [p for p in files if p.suffix.lower() == ".xml" and p.is_file()]
    tables = [p for p in files if p.suffix.lower() in (".csv", ".txt") and p.is_file()]
    if claml:
        found, language, title_version = _claml(claml[0])
        used = claml[0]
    elif tables:
        found, language, title_version = _table(tables[0]), "en", None
        used = tables[0]
    else:
        raise ReleaseError(f"no ClaML .xml or tabular .csv under {path}")
    version = version or title_version or "unknown"
    return Release(
        url=SYSTEM,
        version=version,
        name="ICD10",
        title="ICD-10" if language.startswith("en") else f"ICD-10 ({language})",
        slug=f"icd-10-{version}".replace(".", "-"),
        fingerprint=f"{used.name}:{used.stat().st_size}",
        concepts=list(found.values()),
    )


def _claml(path: Path) -> tuple[dict[str, Concept], str, str | None]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ReleaseError(f"{path.name} is not XML: {exc}") from None
    if root.tag != "ClaML":
        raise ReleaseError(f"{path.name} is not ClaML (root element {root.tag})")
    title = root.find("Title")
    version = title.get("version") if title is not None else None
    found: dict[str, Concept] = {}
    language = "en"
    for cls in root.iter("Class"):
        code = cls.get("code")
        if not code:
            continue
        concept = Concept(code)
        concept.properties.append(
            {"c": "kind", "t": "Code", "v": cls.get("kind", ""), "s": cls.get("kind", "")}
        )
        for sup in cls.findall("SuperClass"):
            if sup.get("code"):
                concept.parents.append(sup.attrib["code"])
        for rubric in cls.findall("Rubric"):
            if rubric.get("kind") != "preferred":
                continue
            for label in rubric.findall("Label"):
                text = " ".join("".join(label.itertext()).split())
                lang = label.get(_LANG) or "en"
                language = lang
                if concept.display is None:
                    concept.display = text
                concept.designations.append({"l": lang, "v": text})
        found[code] = concept
    return found, language, version


def _table(path: Path) -> dict[str, Concept]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        rows = list(csv.DictReader(f, dialect=dialect))
    if not rows:
        raise ReleaseError(f"{path.name} has no rows")
    columns = {c.lower().strip(): c for c in rows[0] if c}
    code_col = columns.get("code")
    text_col = columns.get("display") or columns.get("description")
    if code_col is None or text_col is None:
        raise ReleaseError(f"{path.name} needs code and display (or description) columns")
    parent_col = columns.get("parent")
    found: dict[str, Concept] = {}
    for row in rows:
        code = (row.get(code_col) or "").strip()
        if code:
            concept = Concept(code, (row.get(text_col) or "").strip() or None)
            parent = (row.get(parent_col) or "").strip() if parent_col else ""
            if parent:
                concept.parents.append(parent)
            found[code] = concept
    if parent_col is None:
        for code, concept in found.items():
            up = code[:-1].rstrip(".") if len(code) > 3 else ""
            if up in found:
                concept.parents.append(up)
    return found
