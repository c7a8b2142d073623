"""``GET [base]/$report``: the clinics' reports (reports/, docs/reports.md) as CSV,
Excel, PDF or JSON; without ``name``, the list of reports. The route reads the query
and headers and hands them to ``reports.service``; every error is an
OperationOutcome raised there or by the SMART policy. Other methods: 405."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api.operations import not_allowed
from fhir_server.api.routes import bind_base_url, services
from fhir_server.authz.context import request_policy
from reports.service import ReportService, language_of, listing, parse_request

router = APIRouter(dependencies=[Depends(bind_base_url)])


@router.get("/$report")
async def report(request: Request) -> Response:
    req = parse_request(
        request.query_params.multi_items(),
        request.headers.get("accept"),
        request.headers.get("accept-language"),
    )
    if req is None:
        lang = language_of(request.query_params.get("lang"), request.headers.get("accept-language"))
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


@router.api_route("/$report", methods=["POST", "PUT", "PATCH", "DELETE"])
async def report_other_methods(request: Request) -> Response:
    raise not_allowed(request, "GET")
