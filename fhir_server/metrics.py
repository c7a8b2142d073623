"""Prometheus metrics (prometheus-client) and ``GET /metrics``.

- ``fhir_requests_total{interaction,type,status}`` and the latency histogram
  ``fhir_request_duration_seconds{interaction}``: observed by the request middleware
  (request_id.py). The interaction comes from the matched route, looked up once per
  route (``classify``), never from the URL; ``type`` is a known resource type or empty,
  so label values are bounded (never ids).
- MongoDB: pool connections checked out, created, checkout failures and failed commands,
  from PyMongo's monitoring listeners on the API's client (``listeners``).
- Read from MongoDB at scrape time, so they cover every API node and worker: bulk export
  jobs by status and units pending/running, the Celery queue depth (the MongoDB broker),
  worker heartbeats, and subscriptions whose deliveries are failing.

With ``--workers N`` each uvicorn worker is a process with its own counters: set
PROMETHEUS_MULTIPROC_DIR (an empty directory, the same for all of them) and /metrics
sums every worker's (prometheus-client's multiprocess mode; docs/operations.md).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pymongo
from fastapi import APIRouter, Request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from pymongo import monitoring
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from starlette.responses import Response

from fhir_server.audit.staging import staged_units
from fhir_server.bulk.heartbeat import HEARTBEATS, STALE_AFTER_BEATS
from fhir_server.bulk.jobs import JOBS, UNITS
from fhir_server.config import Settings
from fhir_server.outcome import Issue
from fhir_server.resource_types import resource_types
from fhir_server.workflows.subscriptions.active import STATE

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # CPU, memory, open files of this process

REQUESTS = Counter(
    "fhir_requests",
    "HTTP requests answered, by FHIR interaction, resource type and status code.",
    ["interaction", "type", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "fhir_request_duration_seconds",
    "Time from request to the end of the response, by FHIR interaction.",
    ["interaction"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "fhir_rate_limited",
    "Requests refused 429 by the API rate limits, by the limit (client or user).",
    ["limit"],
    registry=REGISTRY,
)
POOL_CHECKED_OUT = Gauge(
    "fhir_mongo_pool_checked_out",
    "MongoDB connections in use.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
POOL_CREATED = Counter(
    "fhir_mongo_pool_connections_created", "MongoDB connections opened.", registry=REGISTRY
)
POOL_CHECKOUT_FAILED = Counter(
    "fhir_mongo_pool_checkout_failures",
    "Failed waits for a MongoDB connection, by reason (timeout, connectionError, ...).",
    ["reason"],
    registry=REGISTRY,
)
COMMAND_FAILED = Counter(
    "fhir_mongo_command_failures",
    "MongoDB commands that failed, by command name.",
    ["command"],
    registry=REGISTRY,
)
JOBS_BY_STATUS = Gauge(
    "fhir_bulk_jobs",
    "Bulk export jobs (ndjson and view exports) by status.",
    ["status"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
UNITS_BY_STATE = Gauge(
    "fhir_bulk_units",
    "Bulk export units: pending (waiting for a worker) and running (leased now).",
    ["state"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
QUEUE_DEPTH = Gauge(
    "fhir_celery_queue_depth",
    "Tasks waiting in the Celery queue (MongoDB broker only; -1 with another broker).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
WORKERS = Gauge(
    "fhir_workers_alive",
    "Celery workers whose heartbeat is fresh.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
DELIVERY_FAILING = Gauge(
    "fhir_subscription_deliveries_failing",
    "Subscriptions whose last delivery attempt failed (retrying or in error).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
DELIVERY_FAILURES = Gauge(
    "fhir_subscription_delivery_failures",
    "Consecutive failed delivery attempts, summed over all Subscriptions.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
AUDIT_STAGED = Gauge(
    "fhir_audit_staged_units",
    "Units of up to 32 requests whose audit facts are staged (the server was busy) and "
    "whose AuditEvents are not made yet: made when it is quiet, or "
    "FHIR_AUDIT_MAX_LAG_SECONDS late at most.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
MONGO_UP = Gauge(
    "fhir_mongo_up",
    "Whether the last scrape could read MongoDB (1) or not (0).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
JOB_STATUSES = ("running", "complete", "failed")
KOMBU_MESSAGES = "messages"  # kombu's MongoDB transport: one document per queued task
BASE = "/fhir"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# the classic text format every Prometheus reads (our names need no 1.0.0 escaping)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
router = APIRouter()


# --- interactions ----------------------------------------------------------------------


@cache
def known_types() -> frozenset[str]:
    return frozenset(resource_types())


_INSTANCE = {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_TYPE = {"GET": "search-type", "POST": "create"}  # PUT/PATCH/DELETE [type]?: conditional
_TYPE.update({m: i for m, i in _INSTANCE.items() if m != "GET"})


@cache
def classify(route: str, method: str) -> str:
    """The FHIR interaction of a route under /fhir (its path template, with or without
    the /fhir prefix: FastAPI keeps an included router's own paths) and method; cached,
    so a request costs one dictionary lookup."""
    rest = route.removeprefix(BASE).strip("/")
    parts = rest.split("/") if rest else []
    if "$" in route:
        return "operation"
    if not parts:
        return "transaction" if method == "POST" else "search-system"
    if parts == ["metadata"]:
        return "capabilities"
    if parts[-1] == "_history":
        return "history"
    if len(parts) > 1 and parts[-2] == "_history":
        return "vread"
    if parts[-1] == "_search":
        return "search-system" if len(parts) == 1 else "search-type"
    templated = [p.startswith("{") for p in parts]
    if templated == [True]:
        return _TYPE.get(method, "other")
    if templated == [True, True]:
        return _INSTANCE.get(method, "other")
    if templated == [True, True, True]:
        return "search-compartment"
    return "other"


def interaction(scope: Mapping[str, Any]) -> str:
    """The interaction of a request the app has answered (``other`` outside /fhir,
    ``unmatched`` when no route matched)."""
    path: str = scope["path"]
    if path != BASE and not path.startswith(BASE + "/"):
        return "other"
    if scope["method"] == "HEAD":
        return "head"  # api/head.py answers it as a GET on a copy of the scope
    route = getattr(scope.get("route"), "path", None)
    return classify(route, scope["method"]) if route is not None else "unmatched"


def resource_type(params: dict[str, Any]) -> str:
    """The resource type label: the route's type parameter when it is a known type."""
    rtype = params.get("rtype") or params.get("ctype") or params.get("type")
    return rtype if isinstance(rtype, str) and rtype in known_types() else ""


def observe(interaction: str, rtype: str, status: int, seconds: float) -> None:
    REQUESTS.labels(interaction, rtype, str(status)).inc()
    LATENCY.labels(interaction).observe(seconds)


# --- MongoDB -----------------------------------------------------------------------------


class PoolListener(monitoring.ConnectionPoolListener):
    """Pool connections in use and checkout failures (PyMongo's CMAP events)."""

    def pool_created(self, event: monitoring.PoolCreatedEvent) -> None:
        pass

    def pool_ready(self, event: monitoring.PoolReadyEvent) -> None:
        pass

    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None:
        pass

    def pool_closed(self, event: monitoring.PoolClosedEvent) -> None:
        pass

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        POOL_CREATED.inc()

    def connection_ready(self, event: monitoring.ConnectionReadyEvent) -> None:
        pass

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:
        pass

    def connection_check_out_started(
        self, event: monitoring.ConnectionCheckOutStartedEvent
    ) -> None:
        pass

    def connection_check_out_failed(self, event: monitoring.ConnectionCheckOutFailedEvent) -> None:
        POOL_CHECKOUT_FAILED.labels(str(event.reason)).inc()

    def connection_checked_out(self, event: monitoring.ConnectionCheckedOutEvent) -> None:
        POOL_CHECKED_OUT.inc()

    def connection_checked_in(self, event: monitoring.ConnectionCheckedInEvent) -> None:
        POOL_CHECKED_OUT.dec()


class CommandFailures(monitoring.CommandListener):
    """Failed commands (a server error reply or a network error), by command name."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        COMMAND_FAILED.labels(event.command_name).inc()


def listeners(settings: Settings) -> list[monitoring._EventListener]:
    """PyMongo listeners for the API's client (none when metrics are off)."""
    return [PoolListener(), CommandFailures()] if settings.metrics else []


# --- scrape-time gauges --------------------------------------------------------------


async def refresh(db: AsyncDatabase[dict[str, Any]], settings: Settings) -> None:
    """Read what other processes (workers, other API nodes) changed: jobs, units, the
    queue, heartbeats and deliveries."""
    now = datetime.now(UTC)
    counts = {s: 0 for s in JOB_STATUSES}
    async for row in await db[JOBS].aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}]):
        counts[str(row["_id"])] = row["n"]
    for status, n in counts.items():
        JOBS_BY_STATUS.labels(status).set(n)
    pending = await db[UNITS].count_documents({"state": "pending"})
    running = await db[UNITS].count_documents({"state": "pending", "lease": {"$gt": now}})
    UNITS_BY_STATE.labels("pending").set(pending - running)
    UNITS_BY_STATE.labels("running").set(running)
    broker = settings.celery_broker_url
    if broker is None or broker.startswith("mongodb"):
        depth = await db[KOMBU_MESSAGES].count_documents({"queue": settings.celery_queue})
        QUEUE_DEPTH.set(depth)
    else:
        QUEUE_DEPTH.set(-1)
    fresh_since = now.timestamp() - settings.worker_heartbeat_seconds * STALE_AFTER_BEATS
    WORKERS.set(
        await db[HEARTBEATS].count_documents(
            {"seen": {"$gte": datetime.fromtimestamp(fresh_since, UTC)}}
        )
    )
    failing = 0
    failures = 0
    async for row in await db[STATE].aggregate(
        [
            {"$match": {"failures": {"$gt": 0}}},
            {"$group": {"_id": None, "n": {"$sum": 1}, "f": {"$sum": "$failures"}}},
        ]
    ):
        failing, failures = row["n"], row["f"]
    DELIVERY_FAILING.set(failing)
    DELIVERY_FAILURES.set(failures)
    AUDIT_STAGED.set(await staged_units(db))


def exposition() -> bytes:
    """The text of /metrics: this process's registry, or with PROMETHEUS_MULTIPROC_DIR
    (``serve --workers N``) every worker's, summed from the shared directory."""
    if not os.environ.get(MULTIPROC_ENV):
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


# --- GET /metrics ----------------------------------------------------------------------


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusal(request: Request, settings: Settings) -> Response | None:
    """401/403 unless the request may read the metrics: the FHIR_METRICS_TOKEN bearer
    token when it is set, else a loopback client."""
    from fhir_server.api.errors import outcome_response

    token = settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode()):
            return None
        issue = Issue(
            "login",
            "/metrics needs the FHIR_METRICS_TOKEN bearer token",
            expression=("Authorization",),
        )
        headers = {"WWW-Authenticate": 'Bearer realm="metrics"'}
        return outcome_response(401, [issue], headers)
    if _loopback(request.client.host if request.client else None):
        return None
    issue = Issue(
        "forbidden",
        "/metrics answers loopback clients only; set FHIR_METRICS_TOKEN to scrape it "
        "from elsewhere",
        expression=("Authorization",),
    )
    return outcome_response(403, [issue], {})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    settings: Settings = request.app.state.services.settings
    if not settings.metrics:
        from fhir_server.api.errors import outcome_response

        issue = Issue("not-found", "Metrics are off (FHIR_METRICS=false)", expression=("/metrics",))
        return outcome_response(404, [issue], {})
    refused = refusal(request, settings)
    if refused is not None:
        return refused
    try:  # the process's own metrics still answer while MongoDB is down
        with pymongo.timeout(settings.mongo_select_timeout_seconds):
            await refresh(request.app.state.mongo.get_database(settings.database), settings)
        MONGO_UP.set(1)
    except PyMongoError:
        MONGO_UP.set(0)
    return Response(
        exposition(),
        media_type=CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )
