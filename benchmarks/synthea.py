"""Load the shared Synthea transaction bundles (../shared/data/synthea-r4) for benchmarks.

Until the transaction endpoint exists this goes through the service layer directly:
every resource is validated and indexed exactly as a create would do, then written with
bulk inserts. ``urn:uuid:`` fullUrls become the ids (so runs are reproducible) and
references to them are rewritten to ``Type/id``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError

from fhir_server.config import Settings
from fhir_server.jsonio import parse_json
from fhir_server.search.registry import Registry
from fhir_server.service.resources import ResourceService
from fhir_server.service.search import SearchService
from fhir_server.storage import Storage

SYNTHEA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "synthea-r4"


def _rewrite(value: Any, refs: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _rewrite(v, refs) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in refs:
            out["reference"] = refs[ref]
        return out
    if isinstance(value, list):
        return [_rewrite(v, refs) for v in value]
    return value


def bundles(directory: Path = SYNTHEA) -> Iterator[list[dict[str, Any]]]:
    """Each bundle's resources, with ids assigned and urn:uuid references rewritten."""
    for path in sorted(directory.glob("*.json")):
        bundle = parse_json(path.read_bytes())
        refs: dict[str, str] = {}
        for entry in bundle["entry"]:
            resource = entry["resource"]
            rid = entry["fullUrl"].removeprefix("urn:uuid:")
            resource["id"] = rid
            refs[entry["fullUrl"]] = f"{resource['resourceType']}/{rid}"
        yield [_rewrite(e["resource"], refs) for e in bundle["entry"]]


async def load(storage: Storage, directory: Path = SYNTHEA) -> dict[str, float]:
    """Validate, index and insert every resource; returns counts and timing."""
    service = ResourceService(
        storage, Settings(), SearchService(storage, Registry.from_definitions())
    )
    start = time.perf_counter()
    loaded = 0
    for resources in bundles(directory):
        by_type: dict[str, list[Any]] = defaultdict(list)
        for resource in resources:
            checked = service.checked(resource["resourceType"], resource)
            write = service.new_version(
                checked["resourceType"], checked["id"], checked, None, "POST"
            )
            by_type[write.type].append(write)
        for t, writes in by_type.items():
            await storage.ensure_type(t)
            try:
                await storage.current(t).insert_many(
                    [w.current_document() for w in writes], ordered=False
                )
                await storage.history.insert_many(
                    [w.history_document() for w in writes], ordered=False
                )
            except BulkWriteError as exc:  # shared Organizations/Practitioners: first wins
                if any(e["code"] != 11000 for e in exc.details["writeErrors"]):
                    raise
            loaded += len(writes)
    return {"resources": loaded, "seconds": time.perf_counter() - start}


async def load_url(mongo_url: str, database: str, directory: Path = SYNTHEA) -> dict[str, float]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        storage = Storage(client, database)
        await storage.ensure_indexes()
        return await load(storage, directory)
    finally:
        await client.close()
