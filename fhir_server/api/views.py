"""SQL on FHIR v2 ``$viewdefinition-run`` over HTTP (fhir_server/views/run.py).

``POST [base]/$viewdefinition-run`` and ``POST [base]/ViewDefinition/$run`` take a
Parameters body with the ViewDefinition inline (``viewResource``) and answer the rows
in the requested format, streamed. The body is read as JSON only: the operation's
Parameters is not validated as an R4 resource (ViewDefinition is no R4 type, and the
inline resources are data to transform, not writes), which is how every operation body
here is read (api/operations.py ``optional_body``). Other methods: 405.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from fhir_server.api.operations import not_allowed, optional_body
from fhir_server.api.routes import bind_base_url, services
from fhir_server.authz.context import request_policy
from fhir_server.outcome import bad_request
from fhir_server.service.parameters import is_parameters, read_parameters
from fhir_server.views.run import ViewRunService, parse_run_request

router = APIRouter(dependencies=[Depends(bind_base_url)])


@router.post("/$viewdefinition-run")
@router.post("/ViewDefinition/$run")
async def run_view(request: Request) -> Response:
    body = await optional_body(request)
    if not is_parameters(body):
        raise bad_request("The body must be a Parameters resource", "Parameters")
    req = parse_run_request(
        read_parameters(body),
        request.query_params.multi_items(),
        request.headers.get("accept"),
    )
    svc = services(request)
    runner = ViewRunService(svc.search.storage, svc.search.registry, svc.resources.offload)
    result = await runner.run(req, request_policy(request))
    return StreamingResponse(result.chunks, media_type=result.media_type)


@router.api_route("/$viewdefinition-run", methods=["GET", "PUT", "PATCH", "DELETE"])
@router.api_route("/ViewDefinition/$run", methods=["GET", "PUT", "PATCH", "DELETE"])
async def run_view_other_methods(request: Request) -> Response:
    raise not_allowed(request, "POST")
