"""Terminology operation routes (terminology-service.html): CodeSystem/$lookup,
$validate-code and $subsumes, ValueSet/$expand and $validate-code,
ConceptMap/$translate, each at type and instance level, GET or POST (Parameters).

Authorization as for reads: the token must be able to read every type the operation
reads (ValueSet operations read code systems too), and only the resources it may read
are used; an instance outside the token's reach is a 404, as for a read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api import negotiation as neg
from fhir_server.api.operations import not_allowed, optional_body
from fhir_server.api.rendering import json_response
from fhir_server.api.routes import bind_base_url, require_visible
from fhir_server.authz.context import request_policy
from fhir_server.service.resources import check_id
from terminology.params import Inputs
from terminology.service import OPERATIONS, Operation, TerminologyService

router = APIRouter(dependencies=[Depends(bind_base_url)])


def terminology(request: Request) -> TerminologyService:
    """The application's one service (fhir_server/app.py; it caches definitions)."""
    found: TerminologyService = request.app.state.terminology
    return found


async def _run(request: Request, op: Operation, rid: str | None) -> Response:
    out = neg.negotiate(request)
    policy = request_policy(request)
    restrictions = {t: await policy.restriction(t, "r") for t in op.reads}
    if rid is not None:
        check_id(rid)
        await require_visible(request, op.type, rid)
    inp = Inputs(f"${op.name}", op.params)
    inp.add_url(request.query_params.multi_items())
    if request.method == "POST":
        body = await optional_body(request)
        if body is not None:
            inp.add_parameters(body)
    result = await terminology(request).run(op, inp, rid, restrictions)
    return json_response(result, out)


def _handlers(op: Operation) -> tuple[Callable[..., Awaitable[Response]], ...]:
    async def on_type(request: Request) -> Response:
        return await _run(request, op, None)

    async def on_instance(request: Request, rid: str) -> Response:
        return await _run(request, op, rid)

    async def other(request: Request) -> Response:
        raise not_allowed(request, "GET, POST")

    return on_type, on_instance, other


for _op in OPERATIONS:
    _type_path = f"/{_op.type}/${_op.name}"
    _instance_path = f"/{_op.type}/{{rid}}/${_op.name}"
    _on_type, _on_instance, _other = _handlers(_op)
    router.add_api_route(_type_path, _on_type, methods=["GET", "POST"])
    router.add_api_route(_instance_path, _on_instance, methods=["GET", "POST"])
    router.add_api_route(_type_path, _other, methods=["PUT", "PATCH", "DELETE"])
    router.add_api_route(_instance_path, _other, methods=["PUT", "PATCH", "DELETE"])
