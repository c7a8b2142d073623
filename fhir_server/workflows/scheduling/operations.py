"""``GET|POST [base]/Appointment/$find``, ``POST [base]/Appointment/$hold`` and ``$book``
(Argonaut Scheduling, R4 form). $hold and $book: the
body is a Parameters whose ``appointment`` is a proposed (or, for $book, a held or
booked) Appointment; the answer is a searchset Bundle with the resulting Appointment.

Both are ordinary writes of the Appointment with the status set (``pending`` for a
hold, ``booked`` for a booking), so every rule of the write pipeline applies: the slot
and times are claimed by unique keys (409 ``conflict`` naming the slot when taken), the
Slot's status follows, the action log records it. A held appointment's keys expire
after FHIR_APPOINTMENT_HOLD; booking an existing Appointment id is a confirmation, or,
onto another slot, a reschedule that frees the old one in the same transaction.

``POST [base]/Appointment/[id]/$cancel`` (optional Parameters ``reason``) cancels one.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api import negotiation as neg
from fhir_server.api.operations import optional_body
from fhir_server.api.rendering import json_response
from fhir_server.api.routes import base_url, bind_base_url, services
from fhir_server.authz.context import request_policy
from fhir_server.jsonio import load_stored
from fhir_server.outcome import bad_request, not_found
from fhir_server.service.parameters import is_parameters, read_parameters
from fhir_server.service.resources import WriteOutcome, check_id

router = APIRouter(dependencies=[Depends(bind_base_url)])


def appointment_parameter(body: Any) -> dict[str, Any]:
    """The one ``appointment`` parameter, an Appointment resource (400 otherwise)."""
    if not is_parameters(body):
        raise bad_request("The body must be a Parameters resource", "Parameters")
    found = [p for p in read_parameters(body) if p.name == "appointment"]
    if len(found) != 1:
        raise bad_request("Exactly one 'appointment' parameter is needed", "Parameters.parameter")
    resource = found[0].resource
    if not isinstance(resource, dict) or resource.get("resourceType") != "Appointment":
        raise bad_request(
            "The 'appointment' parameter must hold an Appointment resource",
            f"{found[0].path}.resource",
        )
    return resource


async def _write(request: Request, status: str) -> Response:
    out = neg.negotiate(request)
    appointment = {**appointment_parameter(await optional_body(request)), "status": status}
    policy = request_policy(request)
    resources = services(request).resources
    rid = appointment.get("id")
    if isinstance(rid, str):
        check_id(rid)
        policy.require("Appointment", "u")
        await resources.read("Appointment", rid)  # 404/410: $book does not create ids
        result = await resources.update("Appointment", rid, appointment, None, policy)
    else:
        policy.require("Appointment", "c")
        result = await resources.create("Appointment", appointment, None, policy)
    stored = result.stored
    assert stored.raw is not None
    url = f"{base_url(request)}/Appointment/{stored.id}"
    body = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [
            {"fullUrl": url, "resource": load_stored(stored.raw), "search": {"mode": "match"}}
        ],
    }
    return json_response(body, out, 201 if result.created else 200, _headers(request, result))


def _headers(request: Request, result: WriteOutcome) -> dict[str, str]:
    stored = result.stored
    url = f"{base_url(request)}/Appointment/{stored.id}"
    return {"Location": f"{url}/_history/{stored.version}", "ETag": f'W/"{stored.version}"'}


def cancel_reason(body: Any) -> dict[str, Any] | None:
    """The optional ``reason`` parameter (a string or a CodeableConcept) as a
    CodeableConcept for ``Appointment.cancelationReason``."""
    if body is None:
        return None
    if not is_parameters(body):
        raise bad_request("The body must be a Parameters resource", "Parameters")
    for p in read_parameters(body):
        if p.name != "reason":
            continue
        if isinstance(p.value, str) and p.value.strip():
            return {"text": p.value}
        if isinstance(p.value, dict) and p.value:
            return p.value
        raise bad_request(
            "'reason' must be a valueString or a valueCodeableConcept", f"{p.path}.value[x]"
        )
    return None


@router.post("/Appointment/{rid}/$cancel")
async def cancel(request: Request, rid: str) -> Response:
    """``cancelled``, with the reason given: frees the slot and times, and the action
    log records the reason (Provenance.reason). The minimum notice applies."""
    out = neg.negotiate(request)
    reason = cancel_reason(await optional_body(request))
    check_id(rid)
    policy = request_policy(request)
    policy.require("Appointment", "u")
    resources = services(request).resources
    current = await resources.read("Appointment", rid)
    if not await policy.sees(current):
        raise not_found(f"Appointment/{rid} is not known")
    assert current.raw is not None
    appointment = {**load_stored(current.raw), "status": "cancelled"}
    if reason is not None:
        appointment["cancelationReason"] = reason
    result = await resources.update("Appointment", rid, appointment, current.version, policy)
    assert result.stored.raw is not None
    return json_response(load_stored(result.stored.raw), out, 200, _headers(request, result))


# $find parameter -> Slot search parameter (the free slots are searched, their
# Schedule's actors become the proposed Appointment's participants)
_FIND_PARAMS = {
    "specialty": "specialty",
    "service-type": "service-type",
    "visit-type": "appointment-type",
}


def _reference(kind: str, value: str) -> str:
    return value if value.startswith(f"{kind}/") else f"{kind}/{value}"


async def _find_params(request: Request) -> list[tuple[str, str]]:
    """The operation's parameters, from the query (GET) or a Parameters body (POST)."""
    pairs = [(k, v) for k, v in request.query_params.multi_items() if v != ""]
    if request.method == "POST":
        body = await optional_body(request)
        if body is not None:
            if not is_parameters(body):
                raise bad_request("The body must be a Parameters resource", "Parameters")
            for p in read_parameters(body):
                if not isinstance(p.value, str | int):
                    raise bad_request(f"{p.name} must be a primitive value", f"{p.path}.value[x]")
                pairs.append((p.name, str(p.value)))
    return pairs


@router.api_route("/Appointment/$find", methods=["GET", "POST"])
async def find(request: Request) -> Response:
    """Argonaut $find (R4 form): free Slots in [start, end) of the practitioner /
    location / specialty / service / visit type asked, earliest first, each as a
    ``proposed`` Appointment referencing exactly that Slot, with the Schedule's actors
    as participants. Book one by sending it to $hold or $book."""
    out = neg.negotiate(request)
    svc = services(request)
    criteria: list[tuple[str, str]] = [("status", "free"), ("_sort", "start")]
    criteria.append(("_include", "Slot:schedule"))
    params = await _find_params(request)
    for needed in ("start", "end"):
        if needed not in {name for name, _ in params}:
            raise bad_request(f"$find needs {needed}", needed)
    for name, value in params:
        if name == "start":
            criteria.append(("start", f"ge{value}"))
        elif name == "end":
            criteria.append(("start", f"lt{value}"))
        elif name == "practitioner":
            criteria.append(("schedule.actor", _reference("Practitioner", value)))
        elif name == "location":
            criteria.append(("schedule.actor", _reference("Location", value)))
        elif name in _FIND_PARAMS:
            criteria.append((_FIND_PARAMS[name], value))
        elif name == "_count":
            criteria.append(("_count", value))
        elif name not in ("_format", "_pretty"):
            raise bad_request(f"$find has no parameter {name!r}", name)
    base = base_url(request)
    plan = svc.search.parser(base).parse(
        ["Slot"],
        criteria,
        default_count=svc.settings.search_default_count,
        max_count=svc.settings.search_max_count,
    )
    result = await svc.search.search(plan, request_policy(request))
    schedules = {
        s.id: load_stored(s.raw) for s in result.included if s.type == "Schedule" and s.raw
    }
    entries = []
    for match in result.matches:
        assert match.raw is not None
        slot = load_stored(match.raw)
        ref = (slot.get("schedule") or {}).get("reference", "")
        schedule = schedules.get(ref.rsplit("/", 1)[-1], {})
        proposal: dict[str, Any] = {
            "resourceType": "Appointment",
            "status": "proposed",
            "start": slot.get("start"),
            "end": slot.get("end"),
            "slot": [{"reference": f"Slot/{match.id}"}],
            "participant": [
                {"actor": actor, "required": "required", "status": "needs-action"}
                for actor in schedule.get("actor", [])
            ],
        }
        for field in ("serviceType", "specialty", "appointmentType"):
            if slot.get(field):
                proposal[field] = slot[field]
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": proposal,
                "search": {"mode": "match"},
            }
        )
    body = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    return json_response(body, out)


@router.post("/Appointment/$hold")
async def hold(request: Request) -> Response:
    """A ``pending`` Appointment holding its slot (``busy-tentative``) for a while."""
    return await _write(request, "pending")


@router.post("/Appointment/$book")
async def book(request: Request) -> Response:
    """A ``booked`` Appointment; its slot becomes ``busy``."""
    return await _write(request, "booked")
