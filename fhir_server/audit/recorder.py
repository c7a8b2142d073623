"""The request side of the audit trail: which requests are recorded, and their record.

Called by the request middleware (fhir_server/request_id.py) around every HTTP request;
everything under the FHIR base is recorded except the server's public descriptions
(the CapabilityStatement, OpenAPI, the SMART configuration), which disclose no data.
The sink builds the records after the answer is sent, when the server is idle.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial

from starlette.types import Scope

from fhir_server.audit.events import Caller, RestRequest
from fhir_server.audit.seen import PATIENT, Seen
from fhir_server.audit.sink import AuditSink
from fhir_server.datetimes import now
from fhir_server.metrics import classify

log = logging.getLogger("fhir_server.audit")
BASE = "/fhir"
_HISTORY = ("history-system", "history-type", "history-instance")
_UNRECORDED = frozenset({"/fhir/metadata", "/fhir/metadata/", "/fhir/openapi.json"})


def recorded(scope: Scope) -> bool:
    path: str = scope["path"]
    if path != BASE and not path.startswith(BASE + "/"):
        return False
    return path not in _UNRECORDED and not path.startswith("/fhir/.well-known/")


def server_base(scope: Scope, configured: str | None) -> str:
    """This server's FHIR base as the client addressed it (or as configured)."""
    if configured:
        return configured.rstrip("/")
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
    return f"{scope.get('scheme', 'http')}://{host}{BASE}"


def caller(scope: Scope, configured: str | None) -> Caller:
    state = scope.get("state") or {}
    client = scope.get("client")
    address = client[0] if client else None
    return Caller(state.get("access"), address, server_base(scope, configured))


class Auditor:
    """Builds each recorded request's AuditEvents and queues them."""

    def __init__(self, sink: AuditSink, base_url: str | None) -> None:
        self.sink = sink
        self.base_url = base_url

    def finish(self, scope: Scope, status: int, request_id: str, seen: Seen) -> None:
        """Queue the request: the sink reads its facts from the scope later and makes
        its records when no request is running (sink.py), or stages the facts while
        the server is busy (staging.py): the request pays for a closure."""
        self.sink.defer(partial(self._request, scope, status, request_id, seen, now()))

    def _request(
        self, scope: Scope, status: int, request_id: str, seen: Seen, at: datetime
    ) -> RestRequest | None:
        """What the request's records say; a fault here is logged, never the request's."""
        try:
            return self._read(scope, status, request_id, seen, at)
        except Exception:
            log.exception("the audit record of %s %s was not made", scope["method"], scope["path"])
            return None

    def _read(
        self, scope: Scope, status: int, request_id: str, seen: Seen, at: datetime
    ) -> RestRequest:
        route = getattr(scope.get("route"), "path", None)
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        interaction = classify(route, method) if route is not None else "unmatched"
        params = scope.get("path_params") or {}
        path = scope["path"].removeprefix(BASE).strip("/")
        if interaction == "history":  # _history, Type/_history, Type/id/_history
            interaction = _HISTORY[min(path.count("/"), 2)]
        last = path.rsplit("/", 1)[-1]
        patient = None
        rtype = params.get("rtype") or params.get("ctype")
        rid = params.get("rid") or params.get("cid")
        if rtype == "Patient" and isinstance(rid, str) and rid:
            patient = PATIENT + rid
        return RestRequest(
            interaction=interaction,
            method=scope["method"],
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            status=status,
            request_id=request_id,
            caller=caller(scope, self.base_url),
            path_patient=patient,
            operation=last if last.startswith("$") else None,
            seen=seen,
            at=at,
        )
