"""Rebuild the index fields (``sp``, ``so``, ``comp``) of stored resources, after a change
of the search parameters or of how values are extracted (``fhir-server reindex``).

Each current, non-deleted document is re-indexed from its stored ``raw`` JSON and
updated only if it is still at the version that was read: a resource written meanwhile
keeps the index its writer computed. Documents stream through a cursor and are written
in unordered batches, so memory stays bounded whatever the collection size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pymongo import UpdateOne

from fhir_server.jsonio import load_stored
from fhir_server.resource_types import is_resource_type
from fhir_server.search.extract import index_resource
from fhir_server.search.registry import Registry
from fhir_server.storage import Storage

log = logging.getLogger(__name__)


async def stored_types(storage: Storage) -> list[str]:
    """The resource types that have a collection (ever written)."""
    names = await storage.db.list_collection_names()
    return sorted(n for n in names if is_resource_type(n))


def index_update(doc: dict[str, Any], registry: Registry, base_url: str | None = None) -> UpdateOne:
    """The compare-and-set update that gives one stored document its fresh index."""
    index = index_resource(load_stored(doc["raw"]), registry, base_url)
    fields = {"sp": index.sp, "so": index.so, "comp": index.comp}
    return UpdateOne({"_id": doc["_id"], "v": doc["v"]}, {"$set": fields})


async def reindex_type(
    storage: Storage,
    registry: Registry,
    resource_type: str,
    batch: int = 500,
    base_url: str | None = None,
) -> int:
    """Re-index every live document of one type; the number updated."""
    coll = storage.current(resource_type)
    cursor = coll.find({"del": False}, {"raw": 1, "v": 1}, batch_size=batch)
    updated = 0
    pending: list[UpdateOne] = []
    async for doc in cursor:
        pending.append(index_update(doc, registry, base_url))
        if len(pending) >= batch:
            updated += (await coll.bulk_write(pending, ordered=False)).matched_count
            pending = []
    if pending:
        updated += (await coll.bulk_write(pending, ordered=False)).matched_count
    return updated


async def reindex(
    storage: Storage,
    registry: Registry,
    types: Sequence[str] | None = None,
    batch: int = 500,
    base_url: str | None = None,
) -> dict[str, int]:
    """Re-index the given types (default: every stored type); {type: documents updated}.
    ``base_url`` as for index_resource: this server's public base URL, if known."""
    counts: dict[str, int] = {}
    for resource_type in types or await stored_types(storage):
        if not is_resource_type(resource_type):
            raise ValueError(f"unknown resource type {resource_type!r}")
        counts[resource_type] = await reindex_type(
            storage, registry, resource_type, batch, base_url
        )
        log.info("reindexed %d %s", counts[resource_type], resource_type)
    return counts
