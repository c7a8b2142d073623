"""Every error becomes an OperationOutcome with the right status: FhirError from the
layers below, routing errors from Starlette, and anything unforeseen (500, logged,
never a stack trace to the client)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from fhir_server.api.security_headers import HEADERS as SECURITY_HEADERS
from fhir_server.health import RETRY_AFTER_SECONDS, unavailable, unavailable_issue
from fhir_server.jsonio import dumps
from fhir_server.offload import WorkCancelled
from fhir_server.outcome import FhirError, Issue, operation_outcome
from fhir_server.storage.store import CommitOutcomeUnknown

log = logging.getLogger("fhir_server")
CONTENT_TYPE = "application/fhir+json; charset=utf-8"
_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}
_OUTCOME_UNKNOWN = Issue(
    "timeout",
    "The database did not confirm or refuse this write in time (a failover took longer "
    "than the server waits): it may or may not have been stored. Read the resource (or "
    "search for it) before sending the write again",
)


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str]) -> Response:
    return Response(
        dumps(operation_outcome(issues)), status, headers=headers, media_type=CONTENT_TYPE
    )


async def on_fhir_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    return outcome_response(exc.status, exc.issues, exc.headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "processing")
    if exc.status_code == 404:
        message = f"No FHIR endpoint at {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return outcome_response(exc.status_code, [Issue(code, message)], dict(exc.headers or {}))


async def on_validation_error(request: Request, exc: Exception) -> Response:
    return outcome_response(400, [Issue("invalid", "The request is malformed")], {})


def unavailable_response() -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return outcome_response(503, [unavailable_issue()], headers)


async def on_database_error(request: Request, exc: Exception) -> Response:
    """MongoDB unreachable (mongod down, failover, network): 503 + Retry-After, fast
    (see fhir_server/health.py for the timeouts). Other database errors are bugs: 500.
    A write whose commit nobody could confirm or refuse is 504: neither "done" nor
    "not done, retry" would be the truth (docs/scaling.md, failover)."""
    if isinstance(exc, CommitOutcomeUnknown):
        log.warning("write outcome unknown on %s %s: %s", request.method, request.url.path, exc)
        return outcome_response(504, [_OUTCOME_UNKNOWN], {})
    if unavailable(exc):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return unavailable_response()
    return await on_unexpected(request, exc)


async def on_disconnect(request: Request, exc: Exception) -> Response:
    """The client went away (or was cut off, e.g. by the body deadline of
    fhir_server/http_timeouts.py) while its body was read: nothing to log as an error,
    and nobody to answer (uvicorn drops this response)."""
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return outcome_response(400, [Issue("incomplete", "The request body is incomplete")], {})


async def on_cancelled(request: Request, exc: Exception) -> Response:
    """The server is stopping and asked the request's pool work to stop: 503, so the
    client retries elsewhere or later; nothing was written."""
    log.info("stopped %s %s: the server is shutting down", request.method, request.url.path)
    issue = Issue("transient", "The server is shutting down; the request was not completed")
    return outcome_response(503, [issue], {"Retry-After": str(RETRY_AFTER_SECONDS)})


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    issue = Issue("exception", "Internal server error; the request was not completed")
    # Answered outside every middleware (Starlette's ServerErrorMiddleware): add them here.
    return outcome_response(500, [issue], dict(SECURITY_HEADERS))


def install(app: FastAPI) -> None:
    app.add_exception_handler(FhirError, on_fhir_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(PyMongoError, on_database_error)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(WorkCancelled, on_cancelled)
    app.add_exception_handler(Exception, on_unexpected)
