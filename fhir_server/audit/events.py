"""AuditEvent resources, shaped by IHE Basic Audit Log Patterns (BALP) for FHIR R4.

A RESTful interaction becomes the BALP pattern of its kind (Create, Read, Update,
Delete, Query, and the "with Patient" variants): ``type`` rest, ``subtype`` the
interaction, the client (Source Role ID) with its network address, this server
(Destination Role ID), the user (information recipient, with the token's ``jti`` as
policy, BALP's OAuth pattern), the request id (``XrequestId``), the resources and,
for searches, the query.

BALP: one patient per record ("entity:patient 1..1"). A request touching several
patients gives one record per patient, each listing only that patient's resources and
carrying the query only when no other patient was involved, so a patient reading its
own trail (the AuditEvent ``patient`` compartment) learns nothing about another; one
more record, in no patient's compartment, holds the whole request for admins.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import quote

from fhir_server.audit.seen import PATIENT, Seen
from fhir_server.datetimes import format_instant, now

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
ENTITY_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
OPERATION = "urn:fhir-server:CodeSystem/operation"  # subtype: the operation's name
AUTH_EVENT = "urn:fhir-server:CodeSystem/auth-event"  # subtype of auth events
CLIENT_ID = "urn:fhir-server:client-id"  # agent identifiers (altId carries them too)
USERNAME = "urn:fhir-server:username"

# interaction (fhir_server.metrics.classify) -> (restful-interaction code, action, BALP)
_REST: dict[str, tuple[str, str, str]] = {
    "read": ("read", "R", "Read"),
    "vread": ("vread", "R", "Read"),
    "update": ("update", "U", "Update"),
    "patch": ("patch", "U", "Update"),
    "delete": ("delete", "D", "Delete"),
    "create": ("create", "C", "Create"),
    "search-type": ("search-type", "E", "Query"),
    "search-system": ("search-system", "E", "Query"),
    "search-compartment": ("search", "E", "Query"),
    "history-system": ("history-system", "R", "Query"),
    "history-type": ("history-type", "R", "Query"),
    "history-instance": ("history-instance", "R", "Query"),
    "transaction": ("transaction", "E", ""),
    "operation": ("operation", "E", ""),
}
MAX_LISTED = 500  # resources named per record; more make more records of the request
_QUERIES = frozenset(code for code, (_, _, pattern) in _REST.items() if pattern == "Query")


def coding(system: str, code: str) -> dict[str, str]:
    """A Coding without display: each display is an index key and a few dozen bytes of
    every record, on every read (the admin console names the codes it shows)."""
    return {"system": system, "code": code}


def outcome_of(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (the client's), 8 serious (ours)."""
    return "0" if status < 400 else "4" if status < 500 else "8"


class Identity(Protocol):
    """What a record names of the access token (smart_auth.tokens.AccessToken, or a
    staged request's, staging.Who)."""

    @property
    def client_id(self) -> str: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def fhir_user(self) -> str | None: ...
    @property
    def jti(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made the request: the token (None with authorization off) and the address."""

    access: Identity | None
    address: str | None
    server: str  # this server's FHIR base URL

    def agents(self) -> list[dict[str, Any]]:
        """BALP agents: client (Source Role ID), server (Destination), user (recipient).
        The same caller's agents are one shared list (records are never changed)."""
        a = self.access
        token = (a.client_id, a.subject, a.fhir_user, a.jti) if a is not None else None
        return _agents(token, self.address, self.server)


@lru_cache(maxsize=4096)
def _agents(
    token: tuple[str, str | None, str | None, str] | None, address: str | None, server: str
) -> list[dict[str, Any]]:
    client: dict[str, Any] = {"type": {"coding": [coding(DCM, "110153")]}}
    # a backend service's token names the client as its subject: no user then
    user = None
    if token is not None:
        client_id, subject, fhir_user, jti = token
        client["who"] = {"identifier": {"system": CLIENT_ID, "value": client_id}}
        client["altId"] = client_id
        if subject not in (None, client_id):
            user = {
                "type": {"coding": [coding(PARTICIPATION, "IRCP")]},
                "who": _user_reference(fhir_user, str(subject)),
                "altId": subject,
                "requestor": True,
                "policy": [jti],
            }
    client["requestor"] = user is None
    if address:
        client["network"] = {"address": address, "type": "2"}
    agents = [
        client,
        {
            "type": {"coding": [coding(DCM, "110152")]},
            "who": {"display": server},
            "requestor": False,
            "network": {"address": server, "type": "5"},
        },
    ]
    if user is not None:
        agents.append(user)
    return agents


def _user_reference(fhir_user: str | None, username: str) -> dict[str, Any]:
    """The user as a reference to its FHIR resource when it has one (so ``agent``
    searches find it), else by username."""
    if fhir_user:
        return {"reference": fhir_user.rsplit("/fhir/", 1)[-1], "display": username}
    return {"identifier": {"system": USERNAME, "value": username}, "display": username}


@lru_cache(maxsize=64)
def source(server: str) -> dict[str, Any]:
    """This server as the observer (shared by every record: never changed)."""
    return {
        "observer": {"display": server},
        "type": [coding(SOURCE_TYPE, "4")],
    }


def patient_entity(patient: str) -> dict[str, Any]:
    return {
        "what": {"reference": patient},
        "type": coding(ENTITY_TYPE, "1"),
        "role": coding(ENTITY_ROLE, "1"),
    }


def data_entity(key: str) -> dict[str, Any]:
    return {
        "what": {"reference": key},
        "type": coding(ENTITY_TYPE, "2"),
        "role": coding(ENTITY_ROLE, "4"),
    }


def query_entity(query: str) -> dict[str, Any]:
    return {
        "type": coding(ENTITY_TYPE, "2"),
        "role": coding(ENTITY_ROLE, "24"),
        "query": base64.b64encode(query.encode()).decode(),
    }


def request_entity(request_id: str) -> dict[str, Any]:
    return {
        "what": {"identifier": {"value": request_id}},
        "type": coding(BALP_ENTITY, "XrequestId"),
    }


@dataclass(slots=True)
class RestRequest:
    """A finished FHIR request, as the middleware saw it."""

    interaction: str  # fhir_server.metrics.classify
    method: str
    path: str  # below the FHIR base, e.g. "Patient/1" or "Patient/$everything"
    query: str  # the raw query string
    status: int
    request_id: str
    caller: Caller
    path_patient: str | None = None  # Patient/<id> named by the path itself
    operation: str | None = None  # "$everything", ...
    seen: Seen = field(default_factory=Seen)
    at: datetime = field(default_factory=now)  # when it was answered (``recorded``)


def rest_events(req: RestRequest) -> list[dict[str, Any]]:
    """The AuditEvent(s) of one request (see the module docstring for the split)."""
    interaction = req.interaction
    if interaction == "update" and req.status == 201:
        interaction = "create"  # an update that created the resource (BALP Create)
    code, action, pattern = _REST.get(interaction, ("", "E", ""))
    subtype = [coding(INTERACTION, code)] if code else []
    if req.operation:
        subtype.append(coding(OPERATION, req.operation))
    patients = set(req.seen.patients)
    if req.path_patient:
        patients.add(req.path_patient)
    query = req.seen.query if req.seen.query is not None else req.query
    is_query = interaction in _QUERIES
    # searches: their query and patients (BALP Query); the rest: what they touched
    listed = [] if is_query else list(req.seen.resources)
    base = {
        "resourceType": "AuditEvent",
        "type": coding(EVENT_TYPE, "rest"),
        "subtype": subtype,
        "action": action,
        "recorded": format_instant(req.at),
        "outcome": outcome_of(req.status),
    }
    if req.status >= 400:
        base["outcomeDesc"] = f"HTTP {req.status} to {req.method} {req.path}"
    common = {"agent": req.caller.agents(), "source": source(req.caller.server)}
    ask = [query_entity(query)] if (is_query or req.operation) and query else []

    def event(patient: str | None, keys: Iterable[str], with_query: bool) -> dict[str, Any]:
        entities = [request_entity(req.request_id)]
        if patient is not None:
            entities.append(patient_entity(patient))
        entities += [data_entity(k) for k in keys]
        if with_query:
            entities += ask
        profile = _profile(pattern, patient is not None)
        head = {"meta": {"profile": [profile]}} if profile else {}
        return {**head, **base, **common, "entity": entities}

    def split(patient: str | None, keys: list[str], with_query: bool) -> list[dict[str, Any]]:
        """Records of at most MAX_LISTED resources each (a 10,000-entry transaction
        would otherwise be one multi-megabyte record), the query in the first."""
        chunks = [keys[i : i + MAX_LISTED] for i in range(0, len(keys), MAX_LISTED)] or [[]]
        return [event(patient, c, with_query and n == 0) for n, c in enumerate(chunks)]

    if not patients:
        return split(None, listed, True)
    if len(patients) == 1 and req.seen.confined_to(next(iter(patients))):
        (only,) = patients
        return split(only, listed, True)
    # the whole request, in no patient's compartment (admins only): a Patient entity
    # would put it in that patient's, so Patients are named by their own records alone.
    # So is a one-patient search whose query names someone else (patient=a,b): its
    # text stays out of the record a's apps read.
    events = split(None, [k for k in listed if not k.startswith(PATIENT)], True)
    for p in sorted(patients):
        own = [k for k in listed if p in req.seen.resources.get(k, ()) or k.startswith(p + "/")]
        events += split(p, own, False)
    return events


def _profile(pattern: str, with_patient: bool) -> str | None:
    if not pattern:
        return None
    return f"{BALP}Patient{pattern}" if with_patient else f"{BALP}{pattern}"


_LOGINS = {"login": ("110122", "Login"), "logout": ("110123", "Logout")}
# DICOM "Security Alert" (110113), with the DICOM subtype of the change where one fits:
# a lockout, and what an admin changes in the console (smart_auth/admin/actions.py)
_CONFIGURATION = ("110129", "Security Configuration")
_ATTRIBUTES = ("110137", "User Security Attributes Changed")
_SECURITY_ALERTS: dict[str, tuple[str, str] | None] = {
    "lockout": None,
    "client-registered": _CONFIGURATION,
    "client-revoked": _CONFIGURATION,
    "user-created": _ATTRIBUTES,
    "password-reset": _ATTRIBUTES,
    "user-unlocked": _ATTRIBUTES,
}


def auth_event(
    kind: str,
    success: bool,
    caller: Caller,
    *,
    username: str | None = None,
    client_id: str | None = None,
    patient: str | None = None,
    detail: str | None = None,
    jti: str | None = None,
) -> dict[str, Any]:
    """An authorization server event (login, logout, lockout, token, refresh, revoke,
    consent-granted, consent-denied, and the admin console's changes): DICOM "User
    Authenticated" (110114), or "Security Alert" (110113) for a lockout or an admin's
    change, with the server's own subtype code."""
    subtype = [coding(AUTH_EVENT, kind)]
    if kind in _SECURITY_ALERTS:
        event_type = coding(DCM, "110113")
        dicom = _SECURITY_ALERTS[kind]
    else:
        event_type = coding(DCM, "110114")
        dicom = _LOGINS.get(kind)
    if dicom is not None:
        subtype.insert(0, coding(DCM, dicom[0]))
    agents: list[dict[str, Any]] = []
    if username is not None:
        user: dict[str, Any] = {
            "type": {"coding": [coding(PARTICIPATION, "IRCP")]},
            "who": {"identifier": {"system": USERNAME, "value": username}, "display": username},
            "altId": username,
            "requestor": True,
        }
        if caller.address:
            user["network"] = {"address": caller.address, "type": "2"}
        if jti:
            user["policy"] = [jti]
        agents.append(user)
    if client_id is not None:
        client: dict[str, Any] = {
            "type": {"coding": [coding(DCM, "110153")]},
            "who": {"identifier": {"system": CLIENT_ID, "value": client_id}},
            "altId": client_id,
            "requestor": username is None,
        }
        if caller.address and username is None:
            client["network"] = {"address": caller.address, "type": "2"}
        agents.append(client)
    if not agents:  # an unidentified caller: its address at least
        agents.append(
            {
                "type": {"coding": [coding(DCM, "110153")]},
                "requestor": True,
                **({"network": {"address": caller.address, "type": "2"}} if caller.address else {}),
            }
        )
    out: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": event_type,
        "subtype": subtype,
        "action": "E",
        "recorded": format_instant(now()),
        "outcome": "0" if success else "4",
        "agent": agents,
        "source": source(caller.server),
    }
    if detail:
        out["outcomeDesc"] = detail
    if patient:
        out["entity"] = [patient_entity(_patient_key(patient))]
    return out


def _patient_key(patient: str) -> str:
    return patient if patient.startswith(PATIENT) else PATIENT + quote(patient, safe="-.")
