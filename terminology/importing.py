"""Writing a big code system read from release files into the concept store:
resumable, idempotent, with progress.

The concepts (each with its ancestors: the transitive closure) are written in
numbered batches in a fixed order; after each batch ``terminology_imports`` records how
many are done, so a killed import started again skips what is already written (and a
batch half-written when it was killed is written again: the unique index on (k, c)
turns the repeats into no-ops).
A finished import of the same release files is recognised and not redone. At the end
the code system gets its CodeSystem resource (``content: not-present``: the concepts
live in the store, not in the resource) and its entry in ``terminology_systems``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fhir_server.datetimes import after
from fhir_server.jsonio import dumps
from fhir_server.search.extract import index_resource
from fhir_server.search.registry import Registry
from fhir_server.service.resources import with_meta
from fhir_server.storage import Storage, VersionWrite
from fhir_server.storage.store import Session
from terminology import concepts
from terminology.concepts import Concept, ancestor_sets, ensure_indexes, link_children

IMPORTS = "terminology_imports"
LAYOUT = 2  # 2: concept documents carry their children; an import begun before is redone
Progress = Callable[[str, int, int], None]  # (stage, done, total)


class ImportStopped(Exception):
    """Raised by ``stop_after`` (tests of resuming): the import stops as if killed."""


@dataclass(frozen=True, slots=True)
class Release:
    """A code system version read from release files."""

    url: str
    version: str
    name: str
    title: str
    slug: str  # the CodeSystem resource's id when the import creates it
    fingerprint: str  # names and sizes of the files read: the same release, the same import
    concepts: list[Concept]


@dataclass
class ImportReport:
    concepts: int = 0
    closure: int = 0
    seconds: float = 0.0
    already: bool = False
    resumed_from: int = 0

    def line(self, release: Release) -> str:
        if self.already:
            return f"{release.url} version {release.version} is already imported"
        resumed = f", resumed after {self.resumed_from} batches" if self.resumed_from else ""
        return (
            f"imported {release.url} version {release.version}: {self.concepts} concepts, "
            f"{self.closure} ancestor links in {self.seconds:.1f} s{resumed}"
        )


async def import_release(
    storage: Storage,
    registry: Registry,
    release: Release,
    *,
    batch_size: int = 5000,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> ImportReport:
    started = time.monotonic()
    db = storage.db
    await ensure_indexes(db)
    key = f"import:{release.url}|{release.version}"
    report = ImportReport()
    state = await db[IMPORTS].find_one({"_id": key}) or {}
    if state.get("fingerprint") != release.fingerprint or (
        not state.get("complete") and state.get("layout") != LAYOUT
    ):
        state = {
            "_id": key,
            "fingerprint": release.fingerprint,
            "layout": LAYOUT,
            "done": 0,
            "complete": False,
        }
        await concepts.drop_generation(db, key)  # another release under the same version
        await db[IMPORTS].replace_one({"_id": key}, state, upsert=True)
    if state.get("complete"):
        report.already = True
        return report
    report.resumed_from = int(state.get("done", 0))
    found = release.concepts
    ancestors = ancestor_sets(found)
    link_children(found)
    pair_count = sum(len(a) for a in ancestors.values())
    total = -(-len(found) // batch_size)
    for n, (collection, batch) in enumerate(
        _batches(key, found, ancestors, batch_size, report.resumed_from)
    ):
        n += report.resumed_from
        if stop_after is not None and n >= report.resumed_from + stop_after:
            raise ImportStopped(f"stopped after {stop_after} batches")
        try:
            await db[collection].insert_many(batch, ordered=False)
        except Exception as exc:  # the repeats of a batch cut short by a kill
            if not concepts.only_duplicates(exc):
                raise
        await db[IMPORTS].update_one({"_id": key}, {"$set": {"done": n + 1}})
        if progress is not None:
            progress("batches", n + 1, total)
    rid = await _code_system_resource(storage, registry, release)
    previous = await db[concepts.SYSTEMS].find_one({"_id": rid})
    await db[concepts.SYSTEMS].replace_one(
        {"_id": rid},
        {
            "_id": rid,
            "k": key,
            "gen": key,
            "url": release.url,
            "version": release.version,
            "name": release.name,
            "source": "import",
            "content": "complete",
            "count": len(found),
            "hierarchical": pair_count > 0,
            "children": state.get("layout") == LAYOUT,
        },
        upsert=True,
    )
    if previous is not None and previous.get("k") not in (None, key):
        await concepts.drop_generation(db, previous["k"])
    await db[IMPORTS].update_one({"_id": key}, {"$set": {"complete": True}})
    report.concepts, report.closure = len(found), pair_count
    report.seconds = time.monotonic() - started
    return report


async def _code_system_resource(storage: Storage, registry: Registry, release: Release) -> str:
    """The id of the CodeSystem resource of this release: the stored one with its url
    and version, or a new one (content not-present: the concepts are in the store)."""
    await storage.ensure_type("CodeSystem")
    found = await storage.current("CodeSystem").find_one(
        {"sp.url": release.url, "sp.version": release.version, "del": False}, {"_id": 1}
    )
    if found is not None:
        return str(found["_id"])
    rid = release.slug
    resource = {
        "resourceType": "CodeSystem",
        "url": release.url,
        "version": release.version,
        "name": release.name,
        "title": release.title,
        "status": "active",
        "content": "not-present",
        "count": len(release.concepts),
        "hierarchyMeaning": "is-a",
    }
    current = await storage.read_current("CodeSystem", rid)
    write = VersionWrite(
        type="CodeSystem",
        id=rid,
        version=current.version + 1 if current else 1,
        last_updated=after(current.last_updated if current else None),
        method="PUT",
        raw=None,
        previous=current.version if current else None,
        created=current is None or current.deleted,
    )
    stored = with_meta(resource, write)
    write.raw = dumps(stored)
    index = index_resource(stored, registry)
    write.sp, write.so, write.comp = index.sp, index.so, index.comp

    async def txn(s: Session) -> None:
        await storage.write([write], s)

    await storage.transaction(txn, ("CodeSystem",))
    return rid


def _batches(
    key: str,
    found: list[Concept],
    ancestors: dict[str, frozenset[str]],
    size: int,
    skip: int,
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The import's batches of concept documents in their fixed order, from batch
    number ``skip`` on (each built when needed, never all at once)."""
    for n, i in enumerate(range(0, len(found), size)):
        if n >= skip:
            yield (
                concepts.CONCEPTS,
                [
                    c.document(key, i + j, ancestors.get(c.code, frozenset()))
                    for j, c in enumerate(found[i : i + size])
                ],
            )
