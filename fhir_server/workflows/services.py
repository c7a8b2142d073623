"""The server's write path, opened in a worker process: a task that writes FHIR
resources (generated Slots, a Subscription gone to ``error``, a reminder's
Communication) writes them as the API does, through the same rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fhir_server.config import Settings

if TYPE_CHECKING:
    from fhir_server.search.registry import Registry
    from fhir_server.service.resources import ResourceService

_REGISTRY: list[Registry] = []


def registry() -> Registry:
    """The search parameter registry, built once per process (it takes a while)."""
    from fhir_server.search.registry import Registry

    if not _REGISTRY:
        _REGISTRY.append(Registry.from_definitions())
    return _REGISTRY[0]


@asynccontextmanager
async def worker_services(settings: Settings, database: str) -> AsyncIterator[ResourceService]:
    """A ResourceService on ``database`` whose writes go through every pipeline rule
    (no authorization: the worker writes as the server)."""
    from pymongo import AsyncMongoClient

    from fhir_server.service.resources import ResourceService
    from fhir_server.service.search import SearchService
    from fhir_server.storage import Storage
    from fhir_server.workflows import rules
    from fhir_server.workflows.pipeline import WritePipeline

    client: Any = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    try:
        storage = Storage(client, database)
        resources = ResourceService(storage, settings, SearchService(storage, registry()))
        pipeline = WritePipeline(storage, resources.render, rules(settings, resources.search))
        await pipeline.start()
        storage.hook = pipeline
        yield resources
    finally:
        await client.close()
