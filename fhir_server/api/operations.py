"""Operation routes (operations.html): Patient/$everything and $validate.

This router is included before the main one: otherwise ``GET Patient/$everything``
would match the read route and ``Patient/123/$everything`` the compartment search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api import negotiation as neg
from fhir_server.api.rendering import (
    bundle,
    json_response,
    outcome_response,
    search_entry,
)
from fhir_server.api.routes import (
    base_url,
    bind_base_url,
    require_visible,
    resource_type,
    services,
)
from fhir_server.authz.context import request_policy
from fhir_server.outcome import FhirError, bad_request
from fhir_server.service.everything import (
    EverythingQuery,
    EverythingService,
    PatientScope,
    restrict,
)
from fhir_server.service.everything import parse_query as parse_everything
from fhir_server.service.parameters import is_parameters, primitive_text, read_parameters
from fhir_server.service.resources import check_id
from fhir_server.service.validate import ValidateService, validate_request, validation_outcome

router = APIRouter(dependencies=[Depends(bind_base_url)])

_VALIDATE_URL_PARAMS = frozenset({"mode", "profile", "_format", "_pretty"})


async def optional_body(request: Request) -> Any:
    """The parsed JSON body, or None when there is none (an operation's body is
    optional: $everything without parameters, $validate with mode=delete)."""
    body = await neg.read_bounded(request, services(request).settings.max_body_bytes)
    if not body.strip():
        return None
    declared = neg.media_type(request.headers.get("content-type"))
    if declared is not None and declared not in neg.RESOURCE_BODY:
        raise FhirError.of(
            415,
            "not-supported",
            f"Content-Type {declared!r} is not supported here; send application/fhir+json",
            "Content-Type",
        )
    svc = services(request)
    return await svc.resources.offload.parse(body, limits=svc.settings.input_limits())


def not_allowed(request: Request, allow: str) -> FhirError:
    """405 naming the methods the operation does take (RFC 9110 15.5.6)."""
    return FhirError.of(
        405,
        "not-supported",
        f"{request.method} is not allowed on {request.url.path} (allowed: {allow})",
        headers={"Allow": allow},
    )


# --- Patient/$everything ------------------------------------------------------------------


def patient_scope(request: Request, patient_id: str | None) -> PatientScope:
    """The patients whose records this request may see: the one named, or (type level)
    every patient. The one place authorization (SMART scopes) will narrow the set."""
    return PatientScope(None if patient_id is None else (patient_id,))


async def _everything_pairs(request: Request) -> list[tuple[str, str]]:
    """URL parameters, plus those of a POSTed Parameters resource."""
    pairs = list(request.query_params.multi_items())
    if request.method != "POST":
        return pairs
    body = await optional_body(request)
    if body is None:
        return pairs
    if not is_parameters(body):
        raise bad_request("POST $everything takes a Parameters resource (or no body)")
    return pairs + [(p.name, primitive_text(p)) for p in read_parameters(body)]


async def _everything(request: Request, patient_id: str | None) -> Response:
    svc = services(request)
    out = neg.negotiate(request, allow_count=True)
    query = parse_everything(
        patient_scope(request, patient_id),
        svc.search.registry,
        await _everything_pairs(request),
        default_count=svc.settings.search_default_count,
        max_count=svc.settings.search_max_count,
        lenient=neg.prefer(request).handling == "lenient",
    )
    policy = request_policy(request)
    if patient_id is not None:
        await require_visible(request, "Patient", patient_id)  # 404 outside the token
        await svc.resources.read("Patient", patient_id)  # 404 unknown, 410 deleted
    else:
        policy.require("Patient", "r")
    await restrict(query, policy)
    path = f"Patient/{patient_id}/$everything" if patient_id else "Patient/$everything"
    link = _linker(base_url(request), path, query)
    service = EverythingService(svc.search, policy)
    if out.summary == "count" or query.count == 0:  # as search does (search.html#count)
        total = await service.count(query)
        return json_response(bundle("searchset", [], {"self": link(None)}, total), out)
    result = await service.page(query)
    links = {"self": link(query.cursor), "first": link(None)}
    if result.next:
        links["next"] = link(result.next)
    base = base_url(request)
    entries = [search_entry(m, base, out, "match") for m in result.matches]
    # search.html#elements: the element list does not apply to included resources
    entries += [
        search_entry(m, base, replace(out, elements=None), "include") for m in result.included
    ]
    return json_response(bundle("searchset", entries, links, result.total), out)


def _linker(base: str, path: str, query: EverythingQuery) -> Callable[[str | None], str]:
    def link(cursor: str | None) -> str:
        items = query.canonical + ([("_cursor", cursor)] if cursor else [])
        return f"{base}/{path}" + (f"?{urlencode(items)}" if items else "")

    return link


@router.get("/Patient/$everything")
@router.post("/Patient/$everything")
async def everything_type(request: Request) -> Response:
    return await _everything(request, None)


@router.get("/Patient/{pid}/$everything")
@router.post("/Patient/{pid}/$everything")
async def everything_instance(request: Request, pid: str) -> Response:
    check_id(pid)
    return await _everything(request, pid)


@router.api_route("/Patient/$everything", methods=["PUT", "PATCH", "DELETE"])
@router.api_route("/Patient/{pid}/$everything", methods=["PUT", "PATCH", "DELETE"])
async def everything_other_methods(request: Request) -> Response:
    raise not_allowed(request, "GET, POST")


# --- $validate ---------------------------------------------------------------------------------


async def _validate(request: Request, rtype: str, rid: str | None) -> Response:
    t = resource_type(rtype)
    out = neg.negotiate(request)
    params = request.query_params
    for name in params:
        if name not in _VALIDATE_URL_PARAMS:
            raise FhirError.of(
                400, "not-supported", f"Unknown parameter {name!r} for $validate", name
            )
    # $validate previews a write: it needs the scope of the write it checks (mode
    # create or none: c, update: u, delete: d; profile reads the stored one: r); an
    # instance's must be visible too.
    mode = params.get("mode")
    interaction = {"update": "u", "delete": "d", "profile": "r"}.get(mode or "", "c")
    request_policy(request).require(t, interaction)
    if rid is not None and not rid.startswith("$"):
        await require_visible(request, t, rid, interaction)
    body = await optional_body(request)
    req = validate_request(t, body, mode, params.get("profile"))
    resources = services(request).resources
    issues = await ValidateService(resources).run(t, rid, req, neg.if_match(request))
    return outcome_response(validation_outcome(issues), out, 200)


@router.post("/{rtype}/$validate")
async def validate_type(request: Request, rtype: str) -> Response:
    return await _validate(request, rtype, None)


@router.post("/{rtype}/{rid}/$validate")
async def validate_instance(request: Request, rtype: str, rid: str) -> Response:
    return await _validate(request, rtype, rid)


@router.api_route("/{rtype}/$validate", methods=["GET", "PUT", "PATCH", "DELETE"])
@router.api_route("/{rtype}/{rid}/$validate", methods=["GET", "PUT", "PATCH", "DELETE"])
async def validate_other_methods(request: Request) -> Response:
    raise not_allowed(request, "POST")
