"""How long audit records are kept: a TTL index on the AuditEvent collection.

MongoDB's TTL monitor deletes records older than the retention (it runs once a
minute). Changing ``FHIR_AUDIT_RETENTION_DAYS`` takes effect on the next start
(``collMod``), without rebuilding the index.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

INDEX = "audit_retention"  # storage/store.py keeps it (not one of its own indexes)


async def ensure_retention(collection: AsyncCollection[dict[str, Any]], days: float) -> None:
    seconds = max(1, round(days * 86_400))
    async for index in await collection.list_indexes():
        if index["name"] == INDEX:
            if index.get("expireAfterSeconds") != seconds:
                await collection.database.command(
                    {
                        "collMod": collection.name,
                        "index": {"name": INDEX, "expireAfterSeconds": seconds},
                    }
                )
            return
    await collection.create_index([("lu", ASCENDING)], name=INDEX, expireAfterSeconds=seconds)
