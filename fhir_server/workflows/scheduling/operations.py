"""``GET|POST [base]/Appointment/$find``, ``POST [base]/Appointment/$hold`` and ``$book``
(Argonaut Scheduling, R4 form). $hold and $book: the
body is a Parameters whose ``appointment`` is a proposed (or, for $book, a held or
booked) Appointment; the answer is a searchset Bundle with the resulting Appointment.

Both are ordinary writes of the Appointment with the status set (``pending`` and the
hold tag of marker.py for a hold, ``booked`` without that tag for a booking), so every
rule of the write pipeline applies: the slot and times are claimed by unique keys (409
``conflict`` naming the slot when taken), the Slot's status follows, the action log
records it. A hold's keys expire after FHIR_APPOINTMENT_HOLD; booking an existing
Appointment id is a confirmation, or, onto another slot, a reschedule that frees the
old one in the same transaction.

``POST [base]/Appointment/[id]/$cancel`` (optional Parameters ``reason``) cancels one.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api import negotiation as neg
from fhir_server.api.operations import optional_body
from fhir_server.api.rendering import json_response
from fhir_server.api.routes import base_url, bind_base_url, services
from fhir_server.authz.context import request_policy
from fhir_server.datetimes import parse_range
from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError, bad_request, not_found
from fhir_server.service.parameters import is_parameters, read_parameters
from fhir_server.service.resources import WriteOutcome, check_id
from fhir_server.workflows.scheduling.booking import local_reference
from fhir_server.workflows.scheduling.marker import marked, unmarked

router = APIRouter(dependencies=[Depends(bind_base_url)])


_RESOURCE_NAMES = ("appointment", "appt-resource")  # the name, Argonaut's


async def appointment_parameter(request: Request, body: Any) -> dict[str, Any]:
    """The Appointment to hold or book: the ``appointment`` (Argonaut: ``appt-resource``)
    resource, or the stored Appointment ``appt-id`` names (400 otherwise)."""
    if not is_parameters(body):
        raise bad_request("The body must be a Parameters resource", "Parameters")
    params = read_parameters(body)
    found = [p for p in params if p.name in (*_RESOURCE_NAMES, "appt-id")]
    if len(found) != 1:
        raise bad_request(
            "Exactly one 'appointment' (or 'appt-resource', or 'appt-id') parameter is needed",
            "Parameters.parameter",
        )
    (chosen,) = found
    if chosen.name == "appt-id":
        return await _stored_appointment(request, chosen.value, f"{chosen.path}.value[x]")
    resource = chosen.resource
    if not isinstance(resource, dict) or resource.get("resourceType") != "Appointment":
        raise bad_request(
            f"The '{chosen.name}' parameter must hold an Appointment resource",
            f"{chosen.path}.resource",
        )
    return resource


async def _stored_appointment(request: Request, value: Any, where: str) -> dict[str, Any]:
    """The current content of ``Appointment/<id>`` (an absolute URL's last two segments
    too): 404 when it is unknown or the token may not see it."""
    parts = str(value or "").split("/_history/")[0].rstrip("/").split("/")
    if not isinstance(value, str) or (len(parts) > 1 and parts[-2] != "Appointment"):
        raise bad_request("'appt-id' must be a valueUri naming an Appointment", where)
    rid = parts[-1]
    check_id(rid)
    policy = request_policy(request)
    policy.require("Appointment", "r")
    current = await services(request).resources.read("Appointment", rid)
    if not await policy.sees(current) or current.raw is None:
        raise not_found(f"Appointment/{rid} is not known")
    return load_stored(current.raw)


async def _write(request: Request, status: str) -> Response:
    out = neg.negotiate(request)
    given = await appointment_parameter(request, await optional_body(request))
    appointment = {**given, "status": status}
    appointment = marked(appointment) if status == "pending" else unmarked(appointment)
    policy = request_policy(request)
    resources = services(request).resources
    rid = appointment.get("id")
    if isinstance(rid, str):
        check_id(rid)
        policy.require("Appointment", "u")
        await resources.read("Appointment", rid)  # 404/410: $book does not create ids
        if not await policy.contains("Appointment", rid, "u"):  # another patient's
            raise not_found(f"Appointment/{rid} is not known")
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
_ALIASES = {"location-reference": "location"}  # Argonaut's name
_FIND_ALL = frozenset(
    {"start", "end", "practitioner", "location", "_count", *_FIND_PARAMS, *_ALIASES}
)


def _reference(kind: str, value: str) -> str:
    return value if value.startswith(f"{kind}/") else f"{kind}/{value}"


async def _lookup(
    request: Request, rtype: str, criteria: list[tuple[str, str]], where: str
) -> list[str]:
    """Ids of the roles of the practitioners asked for (a Schedule whose actor is a
    role is that practitioner's too: booking.py keys a role as its practitioner), and
    of the Schedules of those actors. Looked up without the token's policy, like the
    Schedules whose actors a proposal names: they only narrow the Slot search, which
    the policy restricts (a patient app may not read a practitioner's Schedule, which
    is outside its patient's compartment, yet finds the practitioner's free slots)."""
    svc = services(request)
    most = svc.settings.search_max_count
    plan = svc.search.parser(base_url(request)).parse(
        [rtype],
        [*criteria, ("_count", str(most)), ("_elements", "id")],
        default_count=most,
        max_count=most,
    )
    result = await svc.search.search(plan)
    if result.next is not None:  # never a silently partial answer
        raise FhirError.of(
            400,
            "too-costly",
            f"$find would search more than {most} {rtype} resources; ask for fewer "
            "practitioners or locations",
            where,
        )
    return [m.id for m in result.matches]


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


def _starting_within(params: list[tuple[str, str]]) -> dict[str, Any]:
    """``start`` ge and ``end`` lt (already parsed as dates) say that the Slot's one
    ``start`` (1..1) lies in [start - 1 s, end): as one range on one index field, so the
    scan is bounded on both sides (the two criteria alone bound one side each). The
    second of slack covers a start given to the millisecond."""
    low = min(parse_range(v)[0] for k, v in params if k == "start") - timedelta(seconds=1)
    high = max(parse_range(v)[0] for k, v in params if k == "end")
    return {"sp.start": {"$elemMatch": {"lo": {"$gte": low, "$lt": high}}}}


@router.api_route("/Appointment/$find", methods=["GET", "POST"])
async def find(request: Request) -> Response:
    """Argonaut $find (R4 form): free Slots in [start, end) of the practitioner /
    location / specialty / service / visit type asked, earliest first, each as a
    ``proposed`` Appointment referencing exactly that Slot, with the Schedule's actors
    as participants. Book one by sending it to $hold or $book."""
    out = neg.negotiate(request)
    svc = services(request)
    criteria: list[tuple[str, str]] = [("status", "free"), ("_sort", "start"), ("_total", "none")]
    params = await _find_params(request)
    given: dict[str, list[str]] = {}
    for name, value in params:
        if name in ("_format", "_pretty"):
            continue
        if name not in _FIND_ALL:
            raise bad_request(f"$find has no parameter {name!r}", name)
        given.setdefault(_ALIASES.get(name, name), []).append(value)
    for single in ("start", "end", "_count"):
        if len(given.get(single, ())) > 1:
            raise bad_request(f"$find takes one {single}", single)
    for needed in ("start", "end"):
        if needed not in given:
            raise bad_request(f"$find needs {needed}", needed)
    criteria.append(("start", f"ge{given['start'][0]}"))
    criteria.append(("start", f"lt{given['end'][0]}"))
    # a repeated parameter is any of its values (Argonaut: "appointments with any of
    # these actors"); different parameters must all match
    actors: list[str] = []
    if "practitioner" in given:
        people = [_reference("Practitioner", v) for v in given["practitioner"]]
        by = [("practitioner", ",".join(people))]
        roles = await _lookup(request, "PractitionerRole", by, "practitioner")
        actors.append(",".join([*people, *(f"PractitionerRole/{r}" for r in roles)]))
    if "location" in given:
        actors.append(",".join(_reference("Location", v) for v in given["location"]))
    if actors:
        where = "practitioner" if "practitioner" in given else "location"
        offered = await _lookup(request, "Schedule", [("actor", a) for a in actors], where)
        if not offered:
            return json_response({"resourceType": "Bundle", "type": "searchset", "entry": []}, out)
        criteria.append(("schedule", ",".join(f"Schedule/{i}" for i in offered)))
    for name, search in _FIND_PARAMS.items():
        if name in given:
            criteria.append((search, ",".join(given[name])))
    if "_count" in given:
        criteria.append(("_count", given["_count"][0]))
    base = base_url(request)
    plan = svc.search.parser(base).parse(
        ["Slot"],
        criteria,
        default_count=svc.settings.search_default_count,
        max_count=svc.settings.search_max_count,
    )
    plan.narrowing = _starting_within(params)
    result = await svc.search.search(plan, request_policy(request))
    slots = [(m.id, load_stored(m.raw)) for m in result.matches if m.raw is not None]
    wanted = {local_reference(slot.get("schedule"), ("Schedule",)) for _, slot in slots}
    ids = sorted(w.split("/", 1)[1] for w in wanted if w is not None)
    schedules = {
        s.id: load_stored(s.raw)
        for s in await svc.resources.storage.read_many("Schedule", ids)
        if s.raw is not None
    }
    entries = []
    for sid, slot in slots:
        ref = local_reference(slot.get("schedule"), ("Schedule",)) or "/"
        schedule = schedules.get(ref.split("/", 1)[1], {})
        proposal: dict[str, Any] = {
            "resourceType": "Appointment",
            "status": "proposed",
            "start": slot.get("start"),
            "end": slot.get("end"),
            "slot": [{"reference": f"Slot/{sid}"}],
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
    """A ``pending`` Appointment tagged as a hold, holding its slot
    (``busy-tentative``) for FHIR_APPOINTMENT_HOLD."""
    return await _write(request, "pending")


@router.post("/Appointment/$book")
async def book(request: Request) -> Response:
    """A ``booked`` Appointment (a hold's tag removed: it no longer expires); its slot
    becomes ``busy``."""
    return await _write(request, "booked")
