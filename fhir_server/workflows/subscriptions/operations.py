"""``$status`` (Subscriptions R5 Backport IG, R4 form): a searchset Bundle with one
SubscriptionStatus (a Parameters) per Subscription:

- ``GET|POST [base]/Subscription/[id]/$status``: that Subscription (404 when the token
  may not read it, as for a read);
- ``GET|POST [base]/Subscription/$status``: those named by ``id`` (repeatable), else
  every Subscription the token may read (at most 1,000), narrowed by ``status``.

The figures come from the server's delivery state: ``events-since-subscription-start``
counts the event notifications delivered.
"""

from __future__ import annotations

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
from fhir_server.service.resources import check_id
from fhir_server.workflows.subscriptions.active import STATE
from fhir_server.workflows.subscriptions.backport import status_parameters

router = APIRouter(dependencies=[Depends(bind_base_url)])
LIMIT = 1000


async def _params(request: Request) -> dict[str, list[str]]:
    given: dict[str, list[str]] = {"id": [], "status": []}
    pairs = [(k, v, k) for k, v in request.query_params.multi_items()]
    if request.method == "POST":
        body = await optional_body(request)
        if body is not None:
            if not is_parameters(body):
                raise bad_request("The body must be a Parameters resource", "Parameters")
            pairs += [(p.name, p.value, f"{p.path}.value[x]") for p in read_parameters(body)]
    for name, value, where in pairs:
        if name in ("_format", "_pretty"):
            continue
        if name not in given:
            raise bad_request(f"$status has no parameter {name!r}", where)
        if not isinstance(value, str) or not value.strip():
            raise bad_request(f"{name} must be a string", where)
        given[name] += [v.strip() for v in value.split(",") if v.strip()]
    return given


async def _statuses(request: Request, resources: list[dict[str, Any]]) -> Response:
    out = neg.negotiate(request)
    db = services(request).resources.storage.db
    ids = [r["id"] for r in resources]
    states = {s["_id"]: s async for s in db[STATE].find({"_id": {"$in": ids}})}
    base = base_url(request)
    entries = []
    for resource in resources:
        state = dict(states.get(resource["id"]) or {"_id": resource["id"]})
        state["base"] = base
        state["error_text"] = resource.get("error")
        parameters = status_parameters(
            state, "query-status", resource.get("status", "off"), int(state.get("events") or 0)
        )
        entries.append(
            {
                "fullUrl": f"urn:uuid:{parameters['id']}",
                "resource": parameters,
                "search": {"mode": "match"},
            }
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "entry": entries,
    }
    return json_response(bundle, out)


@router.api_route("/Subscription/{sid}/$status", methods=["GET", "POST"])
async def instance_status(request: Request, sid: str) -> Response:
    check_id(sid)
    given = await _params(request)
    if given["id"] or given["status"]:
        raise bad_request("$status on a Subscription takes no id or status", "id")
    policy = request_policy(request)
    policy.require("Subscription", "r")
    current = await services(request).resources.read("Subscription", sid)
    if current.raw is None or not await policy.sees(current):
        raise not_found(f"Subscription/{sid} is not known")
    return await _statuses(request, [load_stored(current.raw)])


@router.api_route("/Subscription/$status", methods=["GET", "POST"])
async def type_status(request: Request) -> Response:
    given = await _params(request)
    for sid in given["id"]:
        check_id(sid)
    policy = request_policy(request)
    restriction = await policy.restriction("Subscription", "r")
    query: dict[str, Any] = {"del": False}
    if given["id"]:
        query["_id"] = {"$in": given["id"]}
    db = services(request).resources.storage.db
    cursor = db["Subscription"].find({"$and": [query, restriction]}, {"raw": 1}).limit(LIMIT)
    found = [load_stored(d["raw"]) async for d in cursor]
    if given["status"]:
        found = [r for r in found if r.get("status") in given["status"]]
    return await _statuses(request, sorted(found, key=lambda r: r["id"]))
