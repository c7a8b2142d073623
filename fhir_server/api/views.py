"""SQL on FHIR v2 ``$viewdefinition-run`` over HTTP (fhir_server/views/run.py).

``POST [base]/$viewdefinition-run`` and ``POST [base]/ViewDefinition/$run`` take a
Parameters body with the ViewDefinition inline (``viewResource``) or a stored one
(``viewReference``, resolved by views/store.py ``ViewStore.resolve`` within the token's
read access); ``POST [base]/ViewDefinition/[id]/$run`` runs the stored view at ``[id]``.
They answer the rows in the requested format, streamed. The body is read as JSON only:
the operation's Parameters is not validated as an R4 resource (ViewDefinition is no R4
type, and the inline resources are data to transform, not writes), which is how every
operation body here is read (api/operations.py ``optional_body``). Other methods: 405.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from fhir_server.api.operations import not_allowed, optional_body
from fhir_server.api.routes import bind_base_url, services
from fhir_server.api.view_store import view_store
from fhir_server.authz.context import request_policy
from fhir_server.jsonio import load_stored
from fhir_server.outcome import bad_request
from fhir_server.service.parameters import is_parameters, read_parameters
from fhir_server.views.run import ViewRunService, parse_run_request
from fhir_server.views.store import TYPE

router = APIRouter(dependencies=[Depends(bind_base_url)])


@router.post("/$viewdefinition-run")
@router.post("/ViewDefinition/$run")
async def run_view(request: Request) -> Response:
    return await _run(request, None)


@router.post("/ViewDefinition/{rid:seg}/$run")
async def run_stored_view(request: Request, rid: str) -> Response:
    """The instance level: the view is the stored one at ``[id]`` (404/410 as a read,
    403 without read access to ViewDefinitions); the body holds the other parameters."""
    return await _run(request, rid)


async def _run(request: Request, rid: str | None) -> Response:
    body = await optional_body(request)
    if body is None and rid is not None:
        body = {"resourceType": "Parameters"}  # the instance level needs no parameters
    if not is_parameters(body):
        raise bad_request("The body must be a Parameters resource", "Parameters")
    policy = request_policy(request)
    store = view_store(request)
    instance = None
    if rid is not None:
        stored = await store.read(rid, policy)
        assert stored.raw is not None
        instance = (load_stored(stored.raw), TYPE)

    async def resolve(reference: str, where: str) -> tuple[dict[str, Any], str]:
        return await store.resolve(reference, policy, where)

    req = await parse_run_request(
        read_parameters(body),
        request.query_params.multi_items(),
        request.headers.get("accept"),
        resolve=resolve,
        instance=instance,
    )
    svc = services(request)
    runner = ViewRunService(svc.search.storage, svc.search.registry, svc.resources.offload)
    result = await runner.run(req, policy)
    return StreamingResponse(result.chunks, media_type=result.media_type)


@router.api_route("/$viewdefinition-run", methods=["GET", "PUT", "PATCH", "DELETE"])
@router.api_route("/ViewDefinition/$run", methods=["GET", "PUT", "PATCH", "DELETE"])
@router.api_route("/ViewDefinition/{rid:seg}/$run", methods=["GET", "PUT", "PATCH", "DELETE"])
async def run_view_other_methods(request: Request) -> Response:
    raise not_allowed(request, "POST")
