"""``$stock``: quantity on hand from the ledger (ledger.py), never from history.

- ``GET|POST [base]/Location/[id]/$stock``: every batch at that location (optional
  ``medication``: a Medication id or reference, to narrow it to that product);
- ``GET|POST [base]/Medication/[id]/$stock``: every batch of that Medication's product
  (its code), at every location (optional ``location``);
- ``GET|POST [base]/$stock``: every batch; with ``expiring-before=DATE``, those whose
  expiry is before DATE (the ones about to expire, and the expired ones still held).

The answer is a Parameters: a ``batch`` per batch held (parts ``medication``,
``lotNumber``, ``expirationDate``, ``location``, ``quantity``, ``expired``) and a
``total`` per medication and location (the usable quantity: expired batches excluded).
Stock figures are the pharmacy's, not a patient's: they need a read scope on
SupplyDelivery that no patient context confines (a patient's token gets 403).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api import negotiation as neg
from fhir_server.api.operations import optional_body
from fhir_server.api.rendering import json_response
from fhir_server.api.routes import bind_base_url, services
from fhir_server.authz.context import request_policy
from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError, bad_request, not_found
from fhir_server.service.parameters import is_parameters, read_parameters
from fhir_server.service.resources import check_id
from fhir_server.workflows.pharmacy.items import of_medication, plain
from fhir_server.workflows.pharmacy.ledger import STOCK, decimal, expired

router = APIRouter(dependencies=[Depends(bind_base_url)])
_NAMES = frozenset({"medication", "location", "expiring-before"})


async def _params(request: Request) -> dict[str, str]:
    """The operation's parameters, from the query and (POST) a Parameters body."""
    given: dict[str, str] = {}
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
        if name not in _NAMES:
            raise bad_request(f"$stock has no parameter {name!r}", where)
        if not isinstance(value, str) or not value.strip():
            raise bad_request(f"{name} must be a string", where)
        if name in given:
            raise bad_request(f"$stock takes one {name}", where)
        given[name] = value.strip()
    if "expiring-before" in given:
        day = given["expiring-before"]
        try:
            datetime.strptime(day[:10], "%Y-%m-%d")
        except ValueError:
            raise bad_request(
                f"expiring-before must be a date (YYYY-MM-DD), not {day!r}", "expiring-before"
            ) from None
        given["expiring-before"] = day[:10]
    return given


async def _authorised(request: Request) -> None:
    policy = request_policy(request)
    policy.require("SupplyDelivery", "r")
    if await policy.confines("SupplyDelivery", "r"):
        raise FhirError.of(
            403,
            "forbidden",
            "$stock needs a read scope on SupplyDelivery for the whole store (user/ or "
            "system/), not one confined to a patient",
            "SupplyDelivery",
        )


async def _visible(request: Request, rtype: str, rid: str) -> dict[str, Any]:
    check_id(rid)
    policy = request_policy(request)
    policy.require(rtype, "r")
    current = await services(request).resources.read(rtype, rid)
    if not await policy.sees(current) or current.raw is None:
        raise not_found(f"{rtype}/{rid} is not known")
    return load_stored(current.raw)


def _reference(value: str, rtype: str) -> str:
    return value if value.startswith(f"{rtype}/") else f"{rtype}/{value}"


async def _product(request: Request, value: str, where: str) -> str:
    rid = _reference(value, "Medication").split("/", 1)[1]
    medication = await _visible(request, "Medication", rid)
    return of_medication(medication, f"Medication/{rid}", where).product


async def _answer(request: Request, query: dict[str, Any], given: dict[str, str]) -> Response:
    out = neg.negotiate(request)
    if "expiring-before" in given:
        query["xs"] = {"$lt": given["expiring-before"]}
    svc = services(request)
    today = datetime.now(ZoneInfo(svc.settings.slot_timezone)).date()
    cursor = (
        svc.resources.storage.db[STOCK]
        .find(query, {"_id": 0})
        .sort([("prod", 1), ("loc", 1), ("xs", 1), ("lot", 1)])
    )
    batches: list[dict[str, Any]] = []
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    names: dict[tuple[str, str], dict[str, Any]] = {}
    async for b in cursor:
        qty = decimal(b["qty"])
        if qty == 0:
            continue
        gone = expired(b, today)
        medication = _medication(b)
        parts: list[dict[str, Any]] = [{"name": "medication", "valueReference": medication}]
        if b.get("lot"):
            parts.append({"name": "lotNumber", "valueString": b["lot"]})
        if b.get("exp"):
            parts.append({"name": "expirationDate", "valueDateTime": b["exp"]})
        parts += [
            {"name": "location", "valueReference": {"reference": b["loc"]}},
            {"name": "quantity", "valueQuantity": {"value": plain(qty)}},
            {"name": "expired", "valueBoolean": gone},
        ]
        batches.append({"name": "batch", "part": parts})
        key = (b["prod"], b["loc"])
        names.setdefault(key, {"display": medication.get("display", b["prod"])})
        if not gone:
            totals[key] += qty
        else:
            totals.setdefault(key, Decimal(0))
    summary = [
        {
            "name": "total",
            "part": [
                {"name": "medication", "valueCodeableConcept": _concept(product, names[key])},
                {"name": "location", "valueReference": {"reference": place}},
                {"name": "quantity", "valueQuantity": {"value": plain(amount)}},
            ],
        }
        for key, amount in totals.items()
        for product, place in [key]
    ]
    body = {"resourceType": "Parameters", "parameter": [*batches, *summary]}
    return json_response(body, out)


def _medication(batch: dict[str, Any]) -> dict[str, Any]:
    ref: dict[str, Any] = {"display": batch.get("name") or batch["prod"]}
    if batch.get("med"):
        ref["reference"] = batch["med"]
    return ref


def _concept(product: str, name: dict[str, Any]) -> dict[str, Any]:
    if product.startswith("text:"):
        return {"text": name["display"]}
    system, _, code = product.partition("|")
    return {"coding": [{"system": system, "code": code}], "text": name["display"]}


@router.api_route("/Location/{rid}/$stock", methods=["GET", "POST"])
async def location_stock(request: Request, rid: str) -> Response:
    given = await _params(request)
    await _authorised(request)
    await _visible(request, "Location", rid)
    query: dict[str, Any] = {"loc": f"Location/{rid}"}
    if "medication" in given:
        query["prod"] = await _product(request, given["medication"], "medication")
    if "location" in given:
        raise bad_request("Location/[id]/$stock takes no location", "location")
    return await _answer(request, query, given)


@router.api_route("/Medication/{rid}/$stock", methods=["GET", "POST"])
async def medication_stock(request: Request, rid: str) -> Response:
    given = await _params(request)
    await _authorised(request)
    query: dict[str, Any] = {"prod": await _product(request, rid, "Medication")}
    if "location" in given:
        place = _reference(given["location"], "Location")
        await _visible(request, "Location", place.split("/", 1)[1])
        query["loc"] = place
    if "medication" in given:
        raise bad_request("Medication/[id]/$stock takes no medication", "medication")
    return await _answer(request, query, given)


@router.api_route("/$stock", methods=["GET", "POST"])
async def all_stock(request: Request) -> Response:
    given = await _params(request)
    await _authorised(request)
    query: dict[str, Any] = {}
    if "medication" in given:
        query["prod"] = await _product(request, given["medication"], "medication")
    if "location" in given:
        place = _reference(given["location"], "Location")
        await _visible(request, "Location", place.split("/", 1)[1])
        query["loc"] = place
    return await _answer(request, query, given)
