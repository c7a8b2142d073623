"""SQL on FHIR v2 ``$viewdefinition-export`` over HTTP: the kick-off.

``POST [base]/$viewdefinition-export``, ``POST [base]/ViewDefinition/$viewdefinition-export``
(also ``ViewDefinition/$export``, the name of the spec's Operations page) and the
instance level ``POST [base]/ViewDefinition/[id]/$viewdefinition-export`` (a stored
view; ``[id]/$export`` too), with ``Prefer: respond-async`` and a Parameters body
(views/export.py), answer 202 with ``Content-Location`` set to the status URL and a
Parameters body (``exportId``, ``status`` accepted, ``location``).

The export is a Bulk Data job (fhir_server/bulk) whose units are of kind ``view``: one
unit per view (``_id`` ranges of a big type), written by the Celery workers with the
same leases and checkpoints, polled, cancelled and downloaded through bulk's
``$export-status`` and ``$export-file`` routes with the same owner checks and expiry.

Authorization is that of ``$viewdefinition-run`` over stored data: each view needs read
and search on its resource type (403 naming the view otherwise), and its rows come only
from what the token may read and search (a patient token: its own record).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api.operations import not_allowed, optional_body
from fhir_server.api.routes import base_url, bind_base_url, require_visible, services
from fhir_server.api.view_store import view_store
from fhir_server.authz.context import request_policy
from fhir_server.authz.policy import Policy, all_of
from fhir_server.bulk import jobs
from fhir_server.bulk.access import access_of, owner_of
from fhir_server.bulk.routes import dispatch_units, group_members, prepare, respond_async
from fhir_server.datetimes import now
from fhir_server.jsonio import dumps, load_stored
from fhir_server.outcome import FhirError, bad_request
from fhir_server.service.parameters import is_parameters
from fhir_server.views.export import (
    OPERATION,
    ExportRequest,
    ExportView,
    ViewSource,
    compile_views,
    parse_export_request,
    status_parameters,
    stored_view,
)
from fhir_server.views.pushdown import where_filter
from fhir_server.views.run import ViewRunService, bad_parameter
from fhir_server.views.store import TYPE

router = APIRouter(dependencies=[Depends(bind_base_url)])

FHIR_JSON = "application/fhir+json"
# ViewDefinitionExport, "Result Lifetime": the result and download URLs "SHALL remain
# valid for at least 24 hours after export completion".
MIN_EXPIRY_SECONDS = 24 * 3600


@router.post("/$viewdefinition-export")
@router.post("/ViewDefinition/$viewdefinition-export")
@router.post("/ViewDefinition/$export")
async def export_views(request: Request) -> Response:
    return await _kickoff(request, None)


@router.post("/ViewDefinition/{rid}/$viewdefinition-export")
@router.post("/ViewDefinition/{rid}/$export")
async def export_stored_view(request: Request, rid: str) -> Response:
    """The instance level: the stored ViewDefinition ``[id]`` (404/410 as a read of it,
    403 without read on ViewDefinition); the body, optional, holds the other parameters."""
    return await _kickoff(request, rid)


async def _kickoff(request: Request, rid: str | None) -> Response:
    if not respond_async(request):
        raise bad_request(f"{OPERATION} is asynchronous: send Prefer: respond-async", "Prefer")
    body = await optional_body(request)
    if body is None and rid is not None:
        body = {"resourceType": "Parameters"}  # the instance level needs no parameters
    if not is_parameters(body):
        raise bad_request("The body must be a Parameters resource", "Parameters")
    query = list(request.query_params.multi_items())
    req = parse_export_request(body, query, instance=rid is not None)
    svc = services(request)
    policy = request_policy(request)
    if rid is not None:
        stored = await view_store(request).read(rid, policy)
        assert stored.raw is not None
        resolved = [(ViewSource(TYPE), load_stored(stored.raw), TYPE)]
    else:
        resolved = [await _resolve(request, policy, s) for s in req.sources]
    views = compile_views(resolved)
    allowed = [await _allowed(policy, v) for v in views]
    patients = await _patients(request, policy, req, views)
    db = await prepare(request)
    tx = now()
    plans = [
        jobs.UnitPlan(
            v.view.resource_type,
            all_of(
                _filter(restriction, req.since, tx, patients),
                where_filter(v.view, svc.search.registry),  # the view's where, pushed down
            ),
            None,
            kind="view",
            extra={
                "view": stored_view(v.definition),
                "view_n": n,
                "name": v.name,
                "format": req.format.name,
                "header": req.header,
            },
        )
        for n, (v, restriction) in enumerate(zip(views, allowed, strict=True))
    ]
    job_id = jobs.new_job_id()
    access = access_of(request)
    settings = svc.settings
    unit_ids = await jobs.create_job(
        db,
        job_id=job_id,
        client_id=access.client_id if access is not None else None,
        owner=owner_of(access),
        request_url=str(request.url),
        tx=tx,
        units=plans,
        unit_size=max(jobs.UNIT_MIN_RESOURCES, settings.export_file_max_resources),
        error_files=[],
        file_max=settings.export_file_max_resources,
        lease_seconds=settings.export_lease_seconds,
        expiry_seconds=max(MIN_EXPIRY_SECONDS, settings.export_expiry_seconds),
        kind="view",
        extra={
            "client_tracking_id": req.client_tracking_id,
            "format": req.format.name,
            "views": [v.name for v in views],
        },
    )
    if unit_ids:
        await dispatch_units(request, unit_ids)
    status_url = f"{base_url(request)}/$export-status/{job_id}"
    job = await db[jobs.JOBS].find_one({"_id": job_id})
    assert job is not None
    return Response(
        dumps(status_parameters(job, "accepted", status_url)),
        202,
        headers={"Content-Location": status_url},
        media_type=FHIR_JSON,
    )


@router.api_route("/$viewdefinition-export", methods=["GET", "PUT", "PATCH", "DELETE"])
@router.api_route(
    "/ViewDefinition/$viewdefinition-export", methods=["GET", "PUT", "PATCH", "DELETE"]
)
@router.api_route("/ViewDefinition/$export", methods=["GET", "PUT", "PATCH", "DELETE"])
@router.api_route(
    "/ViewDefinition/{rid}/$viewdefinition-export", methods=["GET", "PUT", "PATCH", "DELETE"]
)
@router.api_route("/ViewDefinition/{rid}/$export", methods=["GET", "PUT", "PATCH", "DELETE"])
async def export_views_other_methods(request: Request) -> Response:
    raise not_allowed(request, "POST")


async def _resolve(
    request: Request, policy: Policy, source: ViewSource
) -> tuple[ViewSource, dict[str, Any], str]:
    """(source, ViewDefinition JSON, where it is for error expressions): inline, or the
    stored one a viewReference names (404 unknown, 403 without read on ViewDefinition)."""
    if source.resource is not None:
        definition, at = source.resource
        return source, definition, at
    assert source.reference is not None  # the parser requires one of them
    reference, where = source.reference
    base = base_url(request)
    if reference.startswith(f"{base}/"):
        reference = reference[len(base) + 1 :]
    definition, at = await view_store(request).resolve(reference, policy, where)
    return source, definition, at


async def _patients(
    request: Request, policy: Policy, req: ExportRequest, views: list[ExportView]
) -> list[str] | None:
    """The patients the export is confined to (None: no ``patient``/``group``): the
    ``patient`` ids, each checked to exist as ``$viewdefinition-run`` checks it, and the
    members of each ``group`` (a group the token may not read is 403 or 404 as a read of
    it would be; one that does not exist is 400, a filter value at fault)."""
    if not req.patients and not req.groups:
        return None
    svc = services(request)
    registry = svc.search.registry
    for v in views:
        t = v.view.resource_type
        if t != "Patient" and not registry.patient_compartment(t):
            where = req.patients[0][1] if req.patients else req.groups[0][1]
            raise bad_parameter(f"patient: {t} resources are not in the Patient compartment", where)
    runner = ViewRunService(svc.search.storage, registry, svc.resources.offload)
    chosen: list[str] | None = None
    if req.patients:
        chosen = []
        for pid, where in req.patients:
            await runner.require_patient(pid, where, policy)
            chosen.append(pid)
    if req.groups:
        members: list[str] = []
        for gid, where in req.groups:
            await require_visible(request, "Group", gid)
            try:
                members += await group_members(svc, gid)
            except FhirError as exc:
                if exc.status not in (404, 410):
                    raise
                raise bad_parameter(
                    f"group: Group/{gid} is not known", where, code="not-found"
                ) from None
        chosen = members if chosen is None else [p for p in chosen if p in members]
    return sorted(set(chosen or []))


async def _allowed(policy: Policy, v: ExportView) -> dict[str, Any]:
    """What the token may read and search of the view's type, as a filter; 403 naming
    the view when it may not do both (``$viewdefinition-run`` and bulk export ask the
    same: a view over stored data is a search of its type)."""
    t = v.view.resource_type
    found = [await policy.try_restriction(t, i) for i in ("r", "s")]
    if found[0] is None or found[1] is None:
        raise FhirError.of(
            403, "forbidden", f"The access token does not grant read and search on {t}", v.at
        )
    return all_of(found[0], found[1])


def _filter(
    restriction: dict[str, Any],
    since: datetime | None,
    tx: datetime,
    patients: list[str] | None,
) -> dict[str, Any]:
    """The MongoDB filter of one view's resources: live, changed by the kick-off (and
    since ``_since``), in the patients' compartments, within the token's reach."""
    lu: dict[str, Any] = {"$lte": tx}
    if since is not None:
        lu["$gte"] = since
    clauses: list[dict[str, Any]] = [{"del": False, "lu": lu}, restriction]
    if patients is not None:
        clauses.append({"comp": {"$in": [f"Patient/{p}" for p in patients]}})
    return all_of(*clauses)
