"""Database availability: how long a request waits for MongoDB, which PyMongo errors
mean "unreachable now, retry later" (503 + Retry-After, not 500), and the health
endpoints a process manager or load balancer polls.

- ``GET /health/live``: the process answers (restart it if not).
- ``GET /health/ready``: send it traffic. 200 when a MongoDB replica-set PRIMARY answers
  and the schema is applied (the history indexes start-up ensures exist); 503 (an
  OperationOutcome) otherwise. It also reports the bulk/Celery worker's heartbeat
  (bulk/heartbeat.py), but a stale or missing worker does not make it 503: the API
  serves without a worker, only exports, deliveries and reminders wait.

Both are outside ``/fhir`` and need no token. ``/fhir/metadata`` is generated without
the database and keeps answering 200 during an outage, as the capability statement
describes the server, not its current state.
"""

from __future__ import annotations

from typing import Any

import pymongo
from fastapi import APIRouter, Request
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError
from starlette.responses import JSONResponse, Response

from fhir_server.bulk.heartbeat import last_seen
from fhir_server.config import Settings
from fhir_server.outcome import Issue
from fhir_server.storage.documents import HISTORY
from fhir_server.storage.store import HISTORY_INDEX_NAMES

RETRY_AFTER_SECONDS = 5
router = APIRouter(prefix="/health")


def client_options(settings: Settings) -> dict[str, Any]:
    """Options of the server's MongoDB clients: fail a request after a short wait for an
    unreachable server instead of PyMongo's default 30 s."""
    return {"serverSelectionTimeoutMS": int(settings.mongo_select_timeout_seconds * 1000)}


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable or too slow right now (a retry
    later may succeed), as opposed to a bug or a refused operation."""
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError):
        return True  # AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError, ...
    return isinstance(exc, PyMongoError) and (
        exc.timeout
        or exc.has_error_label("TransientTransactionError")
        or exc.has_error_label("RetryableWriteError")
    )


def unavailable_issue() -> Issue:
    return Issue(
        "transient",
        "The database is not reachable at the moment; retry after the Retry-After delay",
    )


@router.get("/live")
async def live() -> Response:
    return JSONResponse({"status": "live"}, headers={"Cache-Control": "no-store"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    client: pymongo.AsyncMongoClient[Any] = request.app.state.mongo
    settings: Settings = request.app.state.services.settings
    db = client.get_database(settings.database)
    try:
        with pymongo.timeout(settings.mongo_select_timeout_seconds):
            hello = await client.admin.command("hello")
            primary = bool(hello.get("isWritablePrimary")) or hello.get("msg") == "isdbgrid"
            names = {i["name"] async for i in await db[HISTORY].list_indexes()}
            worker = await last_seen(db, settings)
    except PyMongoError as exc:
        if not unavailable(exc):
            raise
        from fhir_server.api.errors import unavailable_response

        return unavailable_response()
    missing = sorted(HISTORY_INDEX_NAMES - names)
    body = {
        "status": "ready" if primary and not missing else "unready",
        "mongo": {"primary": primary, "set": hello.get("setName")},
        "schema": {"applied": not missing, "missing_indexes": missing},
        "worker": worker,
    }
    if body["status"] == "ready":
        return JSONResponse(body, headers={"Cache-Control": "no-store"})
    from fhir_server.api.errors import outcome_response

    issues = []
    if not primary:
        issues.append(
            Issue(
                "transient", "MongoDB answers but is not a writable PRIMARY", expression=("mongo",)
            )
        )
    if missing:
        issues.append(
            Issue(
                "transient",
                f"The schema is not applied: missing indexes {', '.join(missing)} on "
                f"{HISTORY}; restart the server to create them",
                expression=("schema",),
            )
        )
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"}
    return outcome_response(503, issues, headers)
