"""Request ids, the access log, the per-request metrics and the audit record, in one
ASGI middleware.

Every HTTP response carries ``X-Request-Id``: the client's (or the proxy's) own when it
is a sane token (1 to 128 characters of ``[A-Za-z0-9._-]``), else a new one. The id is
in a context variable for the request, so every log line of the request (the access
line here, the errors of api/errors.py) names it. ``FHIR_LOG_FORMAT=json`` writes one
JSON object per line.

A pure ASGI middleware (not BaseHTTPMiddleware): it adds a header and a few
microseconds, and reads the matched route from the scope after the app ran, so the
interaction is known without matching the path again.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server import metrics
from fhir_server.audit.recorder import Auditor, recorded
from fhir_server.audit.seen import opened
from fhir_server.audit.sink import AuditSink
from fhir_server.config import Settings
from fhir_server.jsonio import dumps

HEADER = b"x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._-]{1,128}")
request_id: ContextVar[str] = ContextVar("request_id", default="-")
access_log = logging.getLogger("fhir_server.access")


def sane(value: bytes) -> str | None:
    """The incoming id when it is safe to echo and log, else None."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if _SANE.fullmatch(text) else None


class RequestTelemetry:
    """Request id, access log line, request metrics and audit record of every HTTP
    request."""

    def __init__(self, app: ASGIApp, collect: bool, audit: bool) -> None:
        self.app = app
        self.collect = collect
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = None
        for name, value in scope["headers"]:
            if name == HEADER:
                rid = sane(value)
                break
        rid = rid or uuid.uuid4().hex
        # not reset after the request: each request runs in its own task (a copy of the
        # context), and the error log of an exception escaping the app comes later
        request_id.set(rid)
        status = 500  # what an exception escaping the app becomes

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, rid.encode())]
            await send(message)

        auditor: Auditor | None = None
        sink: AuditSink | None = None
        if self.audit:  # the audit sink makes records when no request is running
            sink = getattr(scope["app"].state, "audit_sink", None)
            if recorded(scope):
                auditor = getattr(scope["app"].state, "auditor", None)
        if sink is not None:
            sink.entered()
        try:
            if auditor is None:
                await self.app(scope, receive, send_with_id)
            else:
                with opened() as seen:
                    try:
                        await self.app(scope, receive, send_with_id)
                    finally:
                        auditor.finish(scope, status, rid, seen)
        finally:
            if sink is not None:
                sink.left()
            seconds = time.perf_counter() - started
            if self.collect:
                rtype = metrics.resource_type(scope.get("path_params") or {})
                metrics.observe(metrics.interaction(scope), rtype, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    scope["path"],
                    status,
                    seconds * 1000,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                    },
                )


# --- log formats -------------------------------------------------------------------------

_FIELDS = ("method", "path", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message, and for the
    access lines method, path, status and duration_ms."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": request_id.get(),
            "message": record.getMessage(),
        }
        for field in _FIELDS:
            if field in record.__dict__:
                out[field] = record.__dict__[field]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return dumps(out).decode()


class TextFormatter(logging.Formatter):
    """The text format, with the request id after the level."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id.get()
        return super().format(record)


class _ServerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs (so a second app replaces it)."""


def install(app: Any, settings: Settings) -> None:
    """Wrap the whole app, Starlette's ServerErrorMiddleware included, so the 500s of
    unexpected errors carry the id and are counted too."""
    build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return RequestTelemetry(build(), settings.metrics, settings.audit)

    app.build_middleware_stack = build_middleware_stack
    configure_logging(settings)


def configure_logging(settings: Settings) -> None:
    """The server's logs (the ``fhir_server`` loggers) on stderr in the configured
    format; access lines at INFO. The access line here replaces uvicorn's, which knows
    no request id."""
    server = logging.getLogger("fhir_server")
    for handler in list(server.handlers):
        if isinstance(handler, _ServerHandler):
            server.removeHandler(handler)
    handler = _ServerHandler(sys.stderr)
    handler.setLevel(settings.log_level.upper())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    server.addHandler(handler)
    access_log.setLevel(logging.INFO)
    logging.getLogger("uvicorn.access").disabled = True
