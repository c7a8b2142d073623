"""The ASGI application: ``create_app(settings)`` wires storage, services and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pymongo import AsyncMongoClient

from fhir_server import __version__
from fhir_server.api import errors
from fhir_server.api.bundles import router as bundles_router
from fhir_server.api.head import HeadAsGet
from fhir_server.api.operations import router as operations_router
from fhir_server.api.routes import Services, router
from fhir_server.config import Settings
from fhir_server.search.registry import Registry
from fhir_server.service.history import HistoryService
from fhir_server.service.resources import ResourceService
from fhir_server.service.search import SearchService
from fhir_server.storage import Storage

BASE_PATH = "/fhir"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if not settings.mongo_url:
        raise RuntimeError(
            "create_app needs settings.mongo_url; `fhir-server serve` starts an embedded "
            "mongod and sets it for you"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client: AsyncMongoClient = AsyncMongoClient(settings.mongo_url, tz_aware=True)
        storage = Storage(client, settings.database)
        await storage.ensure_indexes()
        search = SearchService(storage, Registry.from_definitions())
        app.state.services = Services(
            settings, ResourceService(storage, settings, search), HistoryService(storage), search
        )
        try:
            yield
        finally:
            await client.close()

    app = FastAPI(
        title="fhir-server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    errors.install(app)
    app.add_middleware(HeadAsGet)
    app.include_router(bundles_router, prefix=BASE_PATH)
    app.include_router(operations_router, prefix=BASE_PATH)  # before router: $ paths
    app.include_router(router, prefix=BASE_PATH)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings come from FHIR_* environment variables."""
    return create_app(Settings())
