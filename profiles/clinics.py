"""The Ecuadorian clinics' profile set (issue #14; docs/profiles.md): the ``ec-*``
StructureDefinitions shipped in definitions/ (installed at start with the others), the
identifier systems they fix, and a small FHIR npm package (an IG package) built from them,
so another server or the HL7 validator can load the same rules.

Package layout (the FHIR NPM package specification, confluence "NPM Package
Specification"): a gzipped tar whose entries are under ``package/``: ``package.json``
(name, version, fhirVersions, dependencies), one ``StructureDefinition-[id].json`` per
profile and ``.index.json`` (index-version 1: filename, resourceType, id, url, version,
kind, type per file).

``python -m profiles.clinics OUT.tgz`` writes the package.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from profiles import BASE, definitions

PREFIX = BASE + "ec-"
PATIENT = PREFIX + "patient"
ORGANIZATION = PREFIX + "organization"
PRACTITIONER = PREFIX + "practitioner"
APPOINTMENT = PREFIX + "appointment"
SLOT = PREFIX + "slot"
INVOICE = PREFIX + "invoice"

# identifier systems and the tax code system the profiles fix
CEDULA = "urn:fhir-server:ec:cedula"
PASSPORT = "urn:fhir-server:ec:passport"
RUC = "urn:fhir-server:ec:ruc"
SENESCYT = "urn:fhir-server:ec:senescyt"
SRI_TAX = "urn:fhir-server:ec:sri-impuesto"  # the SRI's tax codes: 2 IVA, 3 ICE, 5 IRBPNR
IVA = "2"

PACKAGE_NAME = "fhir-server.ec.clinics"
PACKAGE_VERSION = "1.0.0"


def clinic_definitions() -> list[dict[str, Any]]:
    """The clinics' profiles among the shipped StructureDefinitions."""
    return [sd for sd in definitions() if str(sd.get("url", "")).startswith(PREFIX)]


def package_manifest() -> dict[str, Any]:
    """``package/package.json``."""
    return {
        "name": PACKAGE_NAME,
        "version": PACKAGE_VERSION,
        "description": "Profiles of the Ecuadorian clinics (fhir-server): cédula, RUC, "
        "SENESCYT, scheduling rules, IVA in USD",
        "fhirVersions": ["4.0.1"],
        "type": "fhir.ig",
        "canonical": BASE.rstrip("/"),
        "jurisdiction": "urn:iso:std:iso:3166#EC",
        "dependencies": {"hl7.fhir.r4.core": "4.0.1"},
        "author": "fhir-server",
        "license": "CC0-1.0",
    }


def build_package(dest: Path) -> Path:
    """Write the package .tgz to ``dest`` (a file, or a directory to name it in)."""
    if dest.is_dir():
        dest = dest / f"{PACKAGE_NAME}-{PACKAGE_VERSION}.tgz"
    files: dict[str, bytes] = {}
    index: list[dict[str, Any]] = []
    for sd in clinic_definitions():
        name = f"StructureDefinition-{sd['id']}.json"
        files[name] = json.dumps(sd, indent=2, ensure_ascii=False).encode()
        index.append(
            {
                "filename": name,
                "resourceType": sd["resourceType"],
                "id": sd["id"],
                "url": sd["url"],
                "version": sd.get("version"),
                "kind": sd.get("kind"),
                "type": sd.get("type"),
            }
        )
    files[".index.json"] = json.dumps({"index-version": 1, "files": index}, indent=2).encode()
    files["package.json"] = json.dumps(package_manifest(), indent=2).encode()
    now = int(time.time())
    with tarfile.open(dest, "w:gz") as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(f"package/{name}")
            info.size, info.mtime, info.mode = len(data), now, 0o644
            tar.addfile(info, io.BytesIO(data))
    return dest


if __name__ == "__main__":  # pragma: no cover - a thin command line
    if len(sys.argv) != 2:
        sys.exit("usage: python -m profiles.clinics OUT.tgz|DIR")
    print(build_package(Path(sys.argv[1])))
