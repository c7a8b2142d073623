"""The ASGI application: ``create_app(settings)`` wires storage, services and routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from pymongo import AsyncMongoClient

import profiles
from fhir_server import __version__, heap, metrics, request_id
from fhir_server.api import errors
from fhir_server.api.bundles import router as bundles_router
from fhir_server.api.cors import install_cors
from fhir_server.api.head import HeadAsGet
from fhir_server.api.nul import RefuseNul
from fhir_server.api.openapi import router as openapi_router
from fhir_server.api.operations import router as operations_router
from fhir_server.api.paths import unknown_operations
from fhir_server.api.reports import router as reports_router
from fhir_server.api.routes import Services, router
from fhir_server.api.security_headers import SecurityHeaders
from fhir_server.api.snapshot import router as snapshot_router
from fhir_server.api.terminology import router as terminology_router
from fhir_server.api.view_export import router as view_export_router
from fhir_server.api.view_store import router as view_store_router
from fhir_server.api.views import router as views_router
from fhir_server.audit.recorder import Auditor
from fhir_server.audit.retention import ensure_retention
from fhir_server.audit.sink import AuditSink
from fhir_server.authz.authenticate import authenticate
from fhir_server.bulk.import_routes import router as bulk_import_router
from fhir_server.bulk.routes import router as bulk_router
from fhir_server.config import Settings
from fhir_server.health import client_options
from fhir_server.health import router as health_router
from fhir_server.offload import Offload, pool_size
from fhir_server.search.registry import Registry
from fhir_server.service.history import HistoryService
from fhir_server.service.resources import ResourceService
from fhir_server.service.search import SearchService
from fhir_server.service.shipped import install
from fhir_server.storage import Storage
from fhir_server.workflows import operations_shipment, rules
from fhir_server.workflows.billing.operations import router as billing_router
from fhir_server.workflows.pharmacy.operations import router as pharmacy_router
from fhir_server.workflows.pipeline import WritePipeline
from fhir_server.workflows.reminders.webhook import router as twilio_router
from fhir_server.workflows.scheduling.holds import sweep_forever
from fhir_server.workflows.scheduling.operations import router as scheduling_router
from fhir_server.workflows.subscriptions.operations import router as subscriptions_router
from fhir_server.workflows.subscriptions.websocket import close_pings
from fhir_server.workflows.subscriptions.websocket import router as websocket_router
from profiles.registry import ProfileRegistry, warn_unheld_required
from smart_auth.mount import close_auth, install_auth, install_smart_configuration, open_auth
from smart_auth.tokens import TokenVerifier
from terminology.freshness import Freshness
from terminology.membership import Membership
from terminology.service import TerminologyService

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
        client: AsyncMongoClient = AsyncMongoClient(
            settings.mongo_url,
            tz_aware=True,
            event_listeners=metrics.listeners(settings),  # pool and command failures
            **client_options(settings),
        )
        app.state.mongo = client  # /health/ready pings it
        storage = Storage(
            client,
            settings.database,
            transaction_timeout=settings.mongo_transaction_timeout_seconds,
            read_preference=settings.read_preference,
        )
        await storage.ensure_indexes()
        search = SearchService(storage, Registry.from_definitions())
        # one terminology service per app (it caches definitions): for the operations
        # (api/terminology.py) and the token modifiers :in/:not-in/:below/:above
        # what it resolved is reused until a terminology write (this process's, or one
        # its change stream reports) says otherwise
        freshness = Freshness(storage)
        storage.observers.append(freshness)
        watching = asyncio.create_task(freshness.watch())
        app.state.terminology = TerminologyService(
            storage, settings.terminology_max_expansion, freshness
        )
        search.terminology = app.state.terminology.for_search
        # the conformance resources the server's own declarations point at (together:
        # on a fresh database each creates its type's collection and indexes)
        await asyncio.gather(
            install(storage, search.registry, operations_shipment()),
            install(storage, search.registry, profiles.shipment()),
        )
        size = settings.cpu_pool_size or pool_size(settings.workers)
        offload = Offload.start(size, settings.parse_in_processes)
        bindings = (
            Membership(storage, settings.terminology_max_expansion)
            if settings.validate_bindings
            else None
        )
        registry = ProfileRegistry(storage)
        resources = ResourceService(storage, settings, search, offload, bindings, registry)
        await warn_unheld_required(registry, resources.enforcement.all_required())
        app.state.services = Services(settings, resources, HistoryService(storage), search)
        # Every write goes through the rules (fhir_server/workflows/pipeline.py).
        pipeline = WritePipeline(storage, resources.render, rules(settings, search))
        await pipeline.start()
        storage.hook = pipeline
        # the audit trail (fhir_server/audit/): records stored in batches off the request
        sink = (
            AuditSink(storage, max_lag=settings.audit_max_lag_seconds) if settings.audit else None
        )
        if sink is not None:
            await sink.start()
            await ensure_retention(sink.collection, settings.audit_retention_days)
            app.state.auditor = Auditor(sink, settings.base_url)
        app.state.audit_sink = sink
        app.state.token_verifier = TokenVerifier(storage.db)  # one per app: caches keys
        await open_auth(app, settings)  # the SMART authorization server (smart_auth/)
        sweep = asyncio.create_task(sweep_forever(resources, settings.appointment_hold_sweep))
        heap.settle(search.registry)  # last: the collector never walks it again (heap.py)
        try:
            yield
        finally:
            sweep.cancel()
            await close_pings(app)
            watching.cancel()
            heap.release(offload.busy())
            offload.close()
            close_auth(app)
            if sink is not None:
                await sink.stop()  # what is queued is stored before MongoDB closes
            await client.close()

    app = FastAPI(
        title="fhir-server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Bearer tokens on every FHIR route, including routers added below later.
        dependencies=[Depends(authenticate)],
    )
    errors.install(app)
    app.add_middleware(HeadAsGet)
    app.add_middleware(RefuseNul)
    # CORS answers preflights before auth; only the FHIR API and the token endpoint.
    install_cors(app, settings.cors_origins, (BASE_PATH, "/auth/token"))
    app.add_middleware(SecurityHeaders)  # outermost: preflight answers carry them too
    request_id.install(app, settings)  # X-Request-Id, access log, metrics: around it all
    # Routers in the order of fhir_server/api/paths.py: the REST routes first (none
    # matches a $operation path), then the operations, then what a FHIR request never
    # needs; each route tried costs a FHIR request microseconds.
    install_smart_configuration(app, settings)  # before /fhir/{type}/{id}
    app.include_router(openapi_router, prefix=BASE_PATH)  # before /fhir/{type}
    app.include_router(view_export_router, prefix=BASE_PATH)  # $viewdefinition-export
    app.include_router(view_store_router, prefix=BASE_PATH)  # before /fhir/{type}: not R4
    app.include_router(router, prefix=BASE_PATH)
    app.include_router(terminology_router, prefix=BASE_PATH)
    app.include_router(scheduling_router, prefix=BASE_PATH)
    app.include_router(billing_router, prefix=BASE_PATH)
    app.include_router(pharmacy_router, prefix=BASE_PATH)
    app.include_router(subscriptions_router, prefix=BASE_PATH)  # Subscription/$status
    app.include_router(operations_router, prefix=BASE_PATH)
    app.include_router(snapshot_router, prefix=BASE_PATH)  # StructureDefinition/$snapshot
    app.include_router(views_router, prefix=BASE_PATH)  # SQL on FHIR $viewdefinition-run
    app.include_router(reports_router, prefix=BASE_PATH)  # the clinics' $report
    app.include_router(bulk_router, prefix=BASE_PATH)
    app.include_router(bulk_import_router, prefix=BASE_PATH)  # $import (docs/bulk-import.md)
    app.include_router(bundles_router, prefix=BASE_PATH)
    app.include_router(websocket_router, prefix=BASE_PATH)  # Subscription websocket channel
    app.include_router(unknown_operations, prefix=BASE_PATH)  # last of the FHIR routes
    app.include_router(health_router)  # /health/live, /health/ready (no token)
    app.include_router(metrics.router)  # /metrics: FHIR_METRICS_TOKEN or loopback
    app.include_router(twilio_router)  # /webhooks/twilio: Twilio's signature, no token
    install_auth(app, settings)  # /auth/...
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings come from FHIR_* environment variables."""
    return create_app(Settings())
