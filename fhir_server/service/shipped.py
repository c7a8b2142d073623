"""Installing shipped conformance resources: definitions the server carries as files
(the R4 core terminology, the scheduling OperationDefinitions, profiles) become
ordinary stored resources (read, search by ``url``, history).

Written in bulk: one insert per collection and chunk, not one transaction per
resource. Idempotent by ``url`` + ``version``: a resource whose canonical is already
stored (installed before, or written by a user) is left alone, and a marker document
(the digest of what was shipped) makes later starts a single lookup. Server workers
that start together may race: the loser's inserts hit the ids the winner stored, and
it simply looks again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from fhir_server.datetimes import after
from fhir_server.jsonio import dumps
from fhir_server.search.extract import index_resource
from fhir_server.search.registry import Registry
from fhir_server.search.values import SEP
from fhir_server.service.resources import with_meta
from fhir_server.storage import Storage, VersionWrite
from fhir_server.storage.store import Session

META = "shipped_meta"
_CHUNK = 400


@dataclass
class InstallReport:
    """What an install did: resources written per type, those already present, seconds."""

    what: str
    written: dict[str, int] = field(default_factory=dict)
    present: int = 0
    seconds: float = 0.0
    skipped_run: bool = False  # the marker said this content was installed already

    def line(self) -> str:
        if self.skipped_run:
            return f"{self.what} already loaded"
        parts = ", ".join(f"{n} {t}" for t, n in self.written.items() if n)
        return (
            f"loaded {self.what}: {parts or 'nothing new'} "
            f"({self.present} already present) in {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class Shipment:
    """A set of resources shipped together. ``marker`` names its document in the
    ``meta`` collection; ``clash_suffix`` is appended to a published id that a
    different stored resource already holds."""

    what: str
    marker: str
    resources: Sequence[dict[str, Any]]
    digest: str
    meta: str = META
    clash_suffix: str = "-shipped"
    source: str | None = None


def digest_of(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def canonical_key(url: str | None, version: str | None) -> str:
    return f"{url or ''}|{version or ''}"


async def stored_canonicals(storage: Storage, rtype: str) -> tuple[set[str], set[str]]:
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


async def install(
    storage: Storage,
    registry: Registry,
    shipment: Shipment,
    *,
    force: bool = False,
    base_url: str | None = None,
) -> InstallReport:
    """Store every shipped resource not already stored (by url + version)."""
    for attempt in range(3):
        try:
            return await _install(storage, registry, shipment, force, base_url)
        except (BulkWriteError, DuplicateKeyError) as exc:
            # another worker installed the same ids meanwhile: look again
            if attempt == 2 or not _duplicate(exc):
                raise
    raise AssertionError("unreachable")


async def _install(
    storage: Storage, registry: Registry, shipment: Shipment, force: bool, base_url: str | None
) -> InstallReport:
    started = time.monotonic()
    report = InstallReport(shipment.what)
    meta = storage.db[shipment.meta]
    if not force:
        marker = await meta.find_one({"_id": shipment.marker})
        if marker is not None and marker.get("digest") == shipment.digest:
            report.skipped_run = True
            return report
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in shipment.resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    for rtype, resources in by_type.items():
        await storage.ensure_type(rtype)
        keys, ids = await stored_canonicals(storage, rtype)
        new = [r for r in resources if canonical_key(r.get("url"), r.get("version")) not in keys]
        report.present += len(resources) - len(new)
        written = 0
        for chunk in _chunks(new, _CHUNK):
            writes = [
                _write(rtype, r, ids, registry, base_url, shipment.clash_suffix) for r in chunk
            ]

            async def txn(s: Session, w: list[VersionWrite] = writes) -> None:
                await storage.write(w, s)

            await storage.transaction(txn, (rtype,))
            written += len(writes)
        report.written[rtype] = written
    marker_doc: dict[str, Any] = {
        "_id": shipment.marker,
        "digest": shipment.digest,
        "written": report.written,
    }
    if shipment.source:
        marker_doc["source"] = shipment.source
    await meta.replace_one({"_id": shipment.marker}, marker_doc, upsert=True)
    report.seconds = time.monotonic() - started
    return report


def _duplicate(exc: BulkWriteError | DuplicateKeyError) -> bool:
    if isinstance(exc, DuplicateKeyError):
        return True
    errors = exc.details.get("writeErrors") or []
    return bool(errors) and all(e.get("code") == 11000 for e in errors)


def _chunks(items: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _write(
    rtype: str,
    resource: dict[str, Any],
    ids: set[str],
    registry: Registry,
    base: str | None,
    suffix: str,
) -> VersionWrite:
    """A first version of a shipped resource under its published id, or a new id when
    a different resource already holds that one."""
    rid = resource["id"]
    if rid in ids:
        rid = f"{rid}{suffix}"
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
