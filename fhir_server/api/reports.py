"""``GET [base]/$report``: the clinics' reports (reports/, docs/reports.md) as CSV,
Excel, PDF or JSON; without ``name``, the list of reports. GET with the parameters in
the URL, or POST with them in a Parameters body. The route reads them and the headers
and hands them to ``reports.service``; every error is an OperationOutcome raised there
or by the SMART policy. Other methods: 405."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api.operations import not_allowed, optional_body
from fhir_server.api.routes import bind_base_url, services
from fhir_server.authz.context import request_policy
from fhir_server.outcome import bad_request
from fhir_server.service.parameters import is_parameters, read_parameters
from reports.service import ReportService, language_of, listing, parse_request

router = APIRouter(dependencies=[Depends(bind_base_url)])


@router.get("/$report")
async def report(request: Request) -> Response:
    return await _report(request, request.query_params.multi_items())


@router.post("/$report")
async def report_posted(request: Request) -> Response:
    """POST, as any operation may be invoked (http.html#operations): the parameters in a
    Parameters body (primitive values), or in the URL."""
    body = await optional_body(request)
    pairs = list(request.query_params.multi_items())
    if body is not None:
        if not is_parameters(body):
            raise bad_request("The body must be a Parameters resource", "Parameters")
        for p in read_parameters(body):
            if not p.has_value or isinstance(p.value, (dict, list, bool)):
                raise bad_request(f"{p.name} must have a primitive value[x]", p.path)
            pairs.append((p.name, str(p.value)))
    return await _report(request, pairs)


async def _report(request: Request, pairs: list[tuple[str, str]]) -> Response:
    req = parse_request(
        pairs,
        request.headers.get("accept"),
        request.headers.get("accept-language"),
    )
    if req is None:
        lang = language_of(dict(pairs).get("lang"), request.headers.get("accept-language"))
        return Response(listing(lang), media_type="application/json")
    svc = services(request)
    runner = ReportService(
        svc.search.storage, svc.search.registry, svc.resources.offload, svc.settings
    )
    rendered = await runner.render(req, request_policy(request))
    disposition = "inline" if req.format in ("pdf", "json") else "attachment"
    headers = {
        "Content-Disposition": f'{disposition}; filename="{rendered.filename}"',
        "Content-Language": req.language,
        "Vary": "Accept, Accept-Language",
    }
    return Response(rendered.body, media_type=rendered.media_type, headers=headers)


@router.api_route("/$report", methods=["PUT", "PATCH", "DELETE"])
async def report_other_methods(request: Request) -> Response:
    raise not_allowed(request, "GET, POST")
