"""Audit records of the authorization server's events (docs/audit.md): login success
and failure, lockout, logout, tokens issued and refreshed, revocation, and the consent
a user gives or refuses an app. They go to the FHIR server's audit sink (the same
AuditEvent collection as the API's records); with auditing off there is no sink and
these cost nothing."""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

from starlette.responses import Response

from fhir_server.audit.events import Caller, auth_event


class Sink(Protocol):
    def emit(self, events: list[dict[str, Any]]) -> None: ...


class Recorder:
    """One request's view: where records go and who is asking from where."""

    def __init__(self, sink: Sink | None, address: str, fhir_base: str) -> None:
        self.sink = sink
        self.caller = Caller(None, address, fhir_base)

    def record(self, kind: str, success: bool, **details: Any) -> None:
        if self.sink is not None:
            self.sink.emit([auth_event(kind, success, self.caller, **details)])

    def token_response(self, form: dict[str, str], response: Response) -> None:
        """A token endpoint answer: the token issued (its client, user, patient and
        ``jti`` from the JWT this server just signed) or the refusal."""
        if self.sink is None:
            return
        kind = "refresh" if form.get("grant_type") == "refresh_token" else "token"
        body = _json(response)
        if response.status_code != 200:
            error = str(body.get("error", response.status_code))
            self.record(kind, False, client_id=form.get("client_id"), detail=error)
            return
        claims = _claims(str(body.get("access_token", "")))
        sub = claims.get("sub")
        client_id = claims.get("client_id") or form.get("client_id")
        self.record(
            kind,
            True,
            username=sub if sub and sub != client_id else None,
            client_id=client_id,
            patient=body.get("patient"),
            jti=claims.get("jti"),
            detail=f"scope: {body.get('scope', '')}",
        )


def _json(response: Response) -> dict[str, Any]:
    try:
        out = json.loads(bytes(response.body))
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _claims(jwt: str) -> dict[str, Any]:
    """The payload of a JWT this server signed a moment ago (not verified again)."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return {}
    try:
        out = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}
