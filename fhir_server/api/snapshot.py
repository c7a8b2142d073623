"""``StructureDefinition/$snapshot`` (structuredefinition-operation-snapshot.html): the
StructureDefinition with a snapshot generated from its differential (profiles/snapshot.py).

Type level: ``GET/POST StructureDefinition/$snapshot?url=`` (a stored one, by canonical),
or POST a Parameters resource with ``definition`` (the StructureDefinition itself) or
``url``. Instance level: ``GET/POST StructureDefinition/[id]/$snapshot``. It reads
StructureDefinitions, so it needs read access to them (SMART scopes), and a stored one
outside the token's reach is as unknown. A profile of a profile is generated over its
base profile's snapshot (a stored one, generated in turn if it has none).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api import negotiation as neg
from fhir_server.api.operations import not_allowed, optional_body
from fhir_server.api.rendering import json_response
from fhir_server.api.routes import bind_base_url, require_visible, services
from fhir_server.authz.context import request_policy
from fhir_server.authz.policy import Filter
from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError, bad_request
from fhir_server.service.parameters import is_parameters, primitive_text, read_parameters
from fhir_server.service.resources import check_id
from profiles.snapshot import SnapshotError, base_url_of, generate
from terminology.resolve import Resolver

router = APIRouter(dependencies=[Depends(bind_base_url)])

SD = "StructureDefinition"
MAX_DEPTH = 10  # profiles of profiles followed
_URL_PARAMS = frozenset({"url", "_format", "_pretty"})


async def _restriction(request: Request) -> Filter:
    policy = request_policy(request)
    policy.require(SD, "r")
    return {} if policy.unrestricted else await policy.restriction(SD, "r")


async def _by_url(request: Request, url: str, restriction: Filter, where: str) -> dict[str, Any]:
    stored = await Resolver(services(request).resources.storage).by_url(SD, url, None, restriction)
    if stored is None:
        raise FhirError.of(404, "not-found", f"No StructureDefinition has the url {url}", where)
    return stored.resource


async def _base_elements(
    request: Request, sd: dict[str, Any], restriction: Filter, depth: int = 0
) -> list[dict[str, Any]] | None:
    """The snapshot of the profile ``sd`` derives from (None: an R4 core type's)."""
    base = base_url_of(sd)
    if base is None:
        return None
    if depth >= MAX_DEPTH:
        raise SnapshotError(f"more than {MAX_DEPTH} levels of baseDefinition")
    stored = await Resolver(services(request).resources.storage).by_url(SD, base, None, restriction)
    if stored is None:
        raise SnapshotError(
            f"the base definition {base} is not held by this server",
            "StructureDefinition.baseDefinition",
        )
    parent = stored.resource
    snapshot = parent.get("snapshot")
    if isinstance(snapshot, dict) and isinstance(snapshot.get("element"), list):
        return snapshot["element"]  # type: ignore[no-any-return]
    generated = generate(parent, await _base_elements(request, parent, restriction, depth + 1))
    return generated["snapshot"]["element"]  # type: ignore[no-any-return]


async def _answer(request: Request, sd: dict[str, Any], restriction: Filter) -> Response:
    out = neg.negotiate(request)
    if sd.get("resourceType") != SD:
        raise bad_request("The definition must be a StructureDefinition", "definition")
    try:
        result = generate(sd, await _base_elements(request, sd, restriction))
    except SnapshotError as exc:
        raise FhirError.of(422, "processing", str(exc), exc.expression) from None
    return json_response(result, out)


def _check_url_params(request: Request, allowed: frozenset[str]) -> None:
    for name in request.query_params:
        if name not in allowed:
            raise FhirError.of(
                400, "not-supported", f"Unknown parameter {name!r} for $snapshot", name
            )


@router.get("/StructureDefinition/$snapshot")
@router.post("/StructureDefinition/$snapshot")
async def snapshot_type(request: Request) -> Response:
    _check_url_params(request, _URL_PARAMS)
    restriction = await _restriction(request)
    url = request.query_params.get("url")
    definition: Any = None
    if request.method == "POST":
        body = await optional_body(request)
        if is_parameters(body):
            for p in read_parameters(body):
                if p.name == "definition":
                    definition = p.resource
                elif p.name == "url":
                    url = primitive_text(p)
                else:
                    raise bad_request(f"Unknown parameter {p.name!r} for $snapshot", p.path)
        elif body is not None:
            definition = body  # the StructureDefinition itself
    if (definition is None) == (url is None):
        raise bad_request("$snapshot takes either a definition or a url (one of them)", "url")
    if definition is None:
        assert url is not None
        definition = await _by_url(request, url, restriction, "url")
    if not isinstance(definition, dict):
        raise bad_request("The definition must be a StructureDefinition", "definition")
    return await _answer(request, definition, restriction)


@router.get("/StructureDefinition/{sid}/$snapshot")
@router.post("/StructureDefinition/{sid}/$snapshot")
async def snapshot_instance(request: Request, sid: str) -> Response:
    _check_url_params(request, frozenset({"_format", "_pretty"}))
    check_id(sid)
    restriction = await _restriction(request)
    await require_visible(request, SD, sid)
    stored = await services(request).resources.read(SD, sid)
    assert stored.raw is not None
    return await _answer(request, load_stored(stored.raw), restriction)


@router.api_route("/StructureDefinition/$snapshot", methods=["PUT", "PATCH", "DELETE"])
@router.api_route("/StructureDefinition/{sid}/$snapshot", methods=["PUT", "PATCH", "DELETE"])
async def snapshot_other_methods(request: Request) -> Response:
    raise not_allowed(request, "GET, POST")
