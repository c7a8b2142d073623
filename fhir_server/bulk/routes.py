"""Bulk export over HTTP (bulkdata export.html): kick-off, status, cancel, download.

- ``GET|POST [base]/$export``, ``[base]/Patient/$export``, ``[base]/Group/[id]/$export``
  (``Prefer: respond-async``) → 202, ``Content-Location: [base]/$export-status/[job]``
- ``GET [base]/$export-status/[job]`` → 202 with X-Progress and Retry-After while running,
  200 with the manifest when complete, 500 with an OperationOutcome when failed;
  ``DELETE`` cancels the job and removes its files (202).
- ``GET [base]/$export-file/[job]/[file]`` → the NDJSON file, streamed from GridFS.

The same job machinery serves SQL on FHIR ``$viewdefinition-export`` (api/view_export.py
starts those jobs): its status poll answers an interim Parameters while running and 303
to ``[base]/$export-status/[job]/result`` once finished (the manifest Parameters, or the
failure's OperationOutcome); cancel and download are the ones above.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import anyio
from bson import ObjectId
from bson.errors import InvalidId
from celery import Celery
from fastapi import APIRouter, Depends, Request
from gridfs import AsyncGridFSBucket
from pymongo.asynchronous.database import AsyncDatabase
from starlette.responses import Response, StreamingResponse

from fhir_server.api import negotiation as neg
from fhir_server.api.operations import optional_body
from fhir_server.api.routes import Services, base_url, bind_base_url, require_visible, services
from fhir_server.authz.context import request_policy
from fhir_server.authz.policy import Policy
from fhir_server.bulk import jobs
from fhir_server.bulk.access import (
    Grant,
    access_of,
    authorize_kickoff,
    owner_of,
    owns,
    row_filter,
)
from fhir_server.bulk.request import (
    ExportRequest,
    Level,
    elements_for,
    pairs_from_body,
    parse_request,
)
from fhir_server.bulk.tasks import dispatch, make_celery
from fhir_server.datetimes import format_instant, http_date, now
from fhir_server.jsonio import dumps, load_stored
from fhir_server.outcome import FhirError, Issue, bad_request, info_outcome, operation_outcome
from fhir_server.resource_types import resource_types
from fhir_server.service.everything import compartment_types
from fhir_server.service.search import RESULT_ONLY
from fhir_server.views.export import result_parameters, status_parameters

router = APIRouter(dependencies=[Depends(bind_base_url)])
log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
RETRY_AFTER = "2"
_READ_BLOCK = 1 << 20
Filter = dict[str, Any]


def _db(svc: Services) -> AsyncDatabase[dict[str, Any]]:
    return svc.search.storage.db


def _celery(request: Request) -> Celery:
    """One Celery app per ASGI app, made on first use (sending only)."""
    app: Celery | None = getattr(request.app.state, "bulk_celery", None)
    if app is None:
        app = make_celery(services(request).settings)
        request.app.state.bulk_celery = app
    return app


async def dispatch_units(request: Request, unit_ids: list[str]) -> None:
    """Queue the units' tasks. A broker that is down does not fail the request: the job
    is stored, and status polls re-send tasks of units nobody has started."""
    try:
        await anyio.to_thread.run_sync(
            dispatch, _celery(request), services(request).settings, unit_ids
        )
    except Exception:
        log.exception("could not queue %d export tasks; status polls will retry", len(unit_ids))


async def prepare(request: Request) -> AsyncDatabase[dict[str, Any]]:
    """The database, with the bulk indexes made once per app, and expired jobs gone."""
    db = _db(services(request))
    if not getattr(request.app.state, "bulk_ready", False):
        await jobs.ensure_indexes(db)
        request.app.state.bulk_ready = True
    await jobs.purge_expired(db)
    return db


# --- kick-off ----------------------------------------------------------------------------


def respond_async(request: Request) -> bool:
    header = request.headers.get("prefer", "")
    return any(p.strip().lower() == "respond-async" for p in header.replace(";", ",").split(","))


async def _kickoff(
    request: Request, level: Level, path: str, group_id: str | None = None
) -> Response:
    if not respond_async(request):
        raise bad_request("$export is asynchronous: send Prefer: respond-async", "Prefer")
    svc = services(request)
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        pairs += pairs_from_body(await optional_body(request))
    lenient = neg.prefer(request).handling == "lenient"
    req = parse_request(level, pairs, group_id=group_id, lenient=lenient, method=request.method)
    db = await prepare(request)
    existing = set(await db.list_collection_names())
    grant, patients = await _scope(request, level, req, lenient)
    base = base_url(request)
    policy = request_policy(request)
    compiled = {
        t: [await _compile(svc, policy, t, q, base) for q in queries]
        for t, queries in req.type_filters.items()
    }
    tx = now()
    units = []
    for t in grant.types:
        if t not in existing:
            continue
        f = _type_filter(req, t, tx, level, patients, compiled.get(t, []))
        restriction = await row_filter(request, t)
        if restriction:
            f["$and"].append(restriction)
        units.append(jobs.UnitPlan(t, f, sorted(elements_for(req.elements, t) or ()) or None))
    job_id = jobs.new_job_id()
    error_files = await _warnings_file(db, job_id, req)
    unit_ids = await jobs.create_job(
        db,
        job_id=job_id,
        client_id=grant.client_id,
        owner=owner_of(access_of(request)),
        request_url=_request_url(request, path),
        tx=tx,
        units=units,
        unit_size=max(jobs.UNIT_MIN_RESOURCES, svc.settings.export_file_max_resources),
        error_files=error_files,
        file_max=svc.settings.export_file_max_resources,
        lease_seconds=svc.settings.export_lease_seconds,
        expiry_seconds=svc.settings.export_expiry_seconds,
    )
    if unit_ids:
        await dispatch_units(request, unit_ids)
    status_url = f"{base_url(request)}/$export-status/{job_id}"
    body = info_outcome(f"Export started; poll {status_url}")
    return Response(
        dumps(body), 202, headers={"Content-Location": status_url}, media_type=FHIR_JSON
    )


async def _scope(
    request: Request, level: Level, req: ExportRequest, lenient: bool
) -> tuple[Grant, tuple[str, ...] | None]:
    """The types the export may contain and the patients it is confined to (None: no
    patient restriction beyond the level's), after authorization."""
    svc = services(request)
    candidates = _candidates(svc, level)
    if req.types is not None and level != "system":
        outside = [t for t in req.types if t not in candidates]
        if outside and not lenient:
            raise bad_request(
                f"_type: {', '.join(outside)} not in the Patient compartment", "_type"
            )
        req.warnings += [
            Issue("not-supported", f"_type {t} ignored: not in the Patient compartment",
                  "warning", ("_type",))
            for t in outside
        ]  # fmt: skip
        req.types = tuple(t for t in req.types if t in candidates)
    patients = req.patients
    if level == "group":
        # Before the lookup: a token that may not read this group gets the same answer
        # whether it exists or not (403 without Group scope, 404 outside it).
        await require_visible(request, "Group", req.group_id or "")
        members = await group_members(svc, req.group_id or "")
        patients = tuple(p for p in members if patients is None or p in patients)
    grant = authorize_kickoff(access_of(request), level, req.types, candidates, patients)
    if grant.patients is not None:  # a patient-bound token narrows whatever was asked
        allowed = set(grant.patients)
        patients = tuple(p for p in (patients or grant.patients) if p in allowed)
    return grant, patients


def _candidates(svc: Services, level: Level) -> tuple[str, ...]:
    if level == "system":
        return tuple(resource_types())
    return compartment_types(svc.search.registry)


def _request_url(request: Request, path: str) -> str:
    query = request.url.query
    return f"{base_url(request)}{path}" + (f"?{query}" if query else "")


async def group_members(svc: Services, group_id: str) -> tuple[str, ...]:
    """Patient ids of ``Group.member.entity`` (404 unknown group, 410 deleted)."""
    stored = await svc.resources.read("Group", group_id)
    assert stored.raw is not None
    group = load_stored(stored.raw)
    ids: list[str] = []
    for member in group.get("member") or []:
        ref = (member.get("entity") or {}).get("reference")
        if not isinstance(ref, str):
            continue
        parts = ref.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1] not in ids:
            ids.append(parts[-1])
    return tuple(ids)


def _type_filter(
    req: ExportRequest,
    resource_type: str,
    tx: datetime,
    level: Level,
    patients: tuple[str, ...] | None,
    alternatives: list[Filter],
) -> Filter:
    """The MongoDB filter of one type: live, changed by transactionTime (and within
    _since/_until), in the patients' compartments, matching one of its _typeFilters."""
    lu: Filter = {"$lte": tx}
    if req.since is not None:
        lu["$gte"] = req.since
    if req.until is not None:
        lu["$lte"] = min(tx, req.until)
    clauses: list[Filter] = [{"del": False, "lu": lu}]
    if level != "system" or patients is not None:
        clauses.append(_patient_clause(resource_type, patients))
    if alternatives:
        clauses.append(alternatives[0] if len(alternatives) == 1 else {"$or": alternatives})
    return {"$and": clauses}


def _patient_clause(resource_type: str, patients: tuple[str, ...] | None) -> Filter:
    if resource_type == "Patient":
        return {} if patients is None else {"_id": {"$in": list(patients)}}
    if patients is None:  # every compartment key is "Patient/<id>"
        return {"comp": {"$gt": "Patient/", "$lt": "Patient0"}}
    return {"comp": {"$in": [f"Patient/{p}" for p in patients]}}


async def _compile(
    svc: Services, policy: Policy, resource_type: str, query: str, base: str
) -> Filter:
    """One ``_typeFilter`` query, compiled by the search service under the token's
    policy exactly as a search with these criteria would be: a chain into a type the
    token may not search is a 403, a ``_has`` sees only the records the token may
    search (bulk data CapabilityStatement: "The FHIR server SHALL limit the data
    returned to only those FHIR resources for which the client is authorized"; an
    unrestricted filter would let the row count answer questions about the rest)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    for name, _ in pairs:
        if name in RESULT_ONLY or name in ("_type", "_cursor", "_format", "_pretty"):
            raise bad_request(f"_typeFilter: {name} is not a search criterion", "_typeFilter")
    try:
        return await svc.search.criteria_filter(resource_type, pairs, policy, "s", base)
    except FhirError as exc:
        issues = [
            Issue(i.code, f"_typeFilter {resource_type}?{query}: {i.diagnostics}", i.severity,
                  ("_typeFilter", *i.expression))
            for i in exc.issues
        ]  # fmt: skip
        raise FhirError(exc.status, issues) from None


async def _warnings_file(
    db: AsyncDatabase[dict[str, Any]], job_id: str, req: ExportRequest
) -> list[dict[str, Any]]:
    """What lenient handling ignored, as an OperationOutcome NDJSON file for the
    manifest's ``error`` array."""
    if not req.warnings:
        return []
    bucket = AsyncGridFSBucket(db, jobs.BUCKET)
    content = dumps(operation_outcome(req.warnings)) + b"\n"
    file_id = await bucket.upload_from_stream(
        f"OperationOutcome-{job_id}.ndjson",
        content,
        metadata={"job": job_id, "unit": f"{job_id}:kickoff", "type": "OperationOutcome"},
    )
    return [{"id": file_id, "count": 1}]


@router.api_route("/$export", methods=["GET", "POST"])
async def export_system(request: Request) -> Response:
    return await _kickoff(request, "system", "/$export")


@router.api_route("/Patient/$export", methods=["GET", "POST"])
async def export_patients(request: Request) -> Response:
    return await _kickoff(request, "patient", "/Patient/$export")


@router.api_route("/Group/{group_id}/$export", methods=["GET", "POST"])
async def export_group(request: Request, group_id: str) -> Response:
    return await _kickoff(request, "group", f"/Group/{group_id}/$export", group_id)


@router.api_route("/$export", methods=["PUT", "PATCH", "DELETE"])
@router.api_route("/Patient/$export", methods=["PUT", "PATCH", "DELETE"])
@router.api_route("/Group/{group_id}/$export", methods=["PUT", "PATCH", "DELETE"])
async def export_other_methods(request: Request) -> Response:
    raise FhirError.of(
        405, "not-supported", f"{request.method} is not allowed on $export",
        headers={"Allow": "GET, POST"},
    )  # fmt: skip


# --- status, cancel, files ------------------------------------------------------------------


async def _job(request: Request, job_id: str) -> dict[str, Any]:
    db = await prepare(request)
    job = await db[jobs.JOBS].find_one({"_id": job_id})
    if job is None or job.get("kind") == "import" or not owns(access_of(request), job):
        # One answer for both: another user must not learn that the job exists.
        raise FhirError.of(404, "not-found", f"No export job {job_id!r} (expired or deleted?)")
    return job


@router.get("/$export-status/{job_id}")
async def export_status(request: Request, job_id: str) -> Response:
    svc = services(request)
    job = await _job(request, job_id)
    db = _db(svc)
    view = job.get("kind") == "view"
    if job["status"] == "running":
        stalled = await jobs.stalled_units(db, job_id, svc.settings.export_lease_seconds)
        if stalled:
            await dispatch_units(request, stalled)
        written, done, total = await jobs.progress(db, job_id)
        what = "rows" if view else "resources"
        headers = {
            "X-Progress": f"{done} of {total} parts done, {written} {what} written",
            "Retry-After": RETRY_AFTER,
        }
        if view:  # SQL on FHIR: an interim Parameters (ViewDefinitionExport, polling)
            body = status_parameters(job, "in-progress", _status_url(request, job_id))
            return Response(dumps(body), 202, headers=headers, media_type=FHIR_JSON)
        return Response(status_code=202, headers=headers)
    if view:
        # SQL on FHIR (operations-common "Asynchronous Delivery"): "once the job has
        # finished - whether it succeeded or failed - the status poll returns 303 See
        # Other with a Location header carrying the result URL and an empty body".
        return Response(status_code=303, headers={"Location": _result_url(request, job_id)})
    if job["status"] == "failed":
        return _failed(job)
    base = base_url(request)
    output = [
        {"type": t, "url": f"{base}/$export-file/{job_id}/{fid}", "count": count}
        for t, fid, count in await jobs.manifest_files(db, job_id)
    ]
    errors = [
        {"type": "OperationOutcome", "url": f"{base}/$export-file/{job_id}/{f['id']}"}
        for f in job.get("error_files", [])
    ]
    return manifest_response(job, output, errors)


def manifest_response(
    job: dict[str, Any], output: list[dict[str, Any]], errors: list[dict[str, Any]]
) -> Response:
    """A finished job's manifest (export.html#response---complete-status; $import's
    status answers the same shape), with the files' expiry."""
    manifest = {
        "transactionTime": format_instant(job["tx"]),
        "request": job["request"],
        "requiresAccessToken": True,
        "output": output,
        "error": errors,
    }
    headers = {"Expires": http_date(job["expires"])} if job.get("expires") else {}
    return Response(dumps(manifest), 200, headers=headers, media_type="application/json")


def _status_url(request: Request, job_id: str) -> str:
    return f"{base_url(request)}/$export-status/{job_id}"


def _result_url(request: Request, job_id: str) -> str:
    return f"{_status_url(request, job_id)}/result"


def _failed(job: dict[str, Any]) -> Response:
    outcome = operation_outcome([Issue("exception", job["error"] or "Export failed")])
    return Response(dumps(outcome), 500, media_type=FHIR_JSON)


@router.get("/$export-status/{job_id}/result")
async def export_result(request: Request, job_id: str) -> Response:
    """The result of a finished ``$viewdefinition-export`` (the URL its status poll's
    303 names): 200 with the manifest Parameters, or 500 with the OperationOutcome of a
    failed export. Before the end, what a status poll says (202); no result for a Bulk
    Data job, whose status poll answers its manifest itself."""
    job = await _job(request, job_id)
    if job.get("kind") != "view":
        raise FhirError.of(404, "not-found", f"Export {job_id} has no result URL")
    if job["status"] == "running":
        return await export_status(request, job_id)
    if job["status"] == "failed":
        return _failed(job)
    db = _db(services(request))
    files = ((n, fid) for n, fid, _ in await jobs.committed_files(db, job_id, "view_n"))
    body = result_parameters(
        job, _status_url(request, job_id), files, f"{base_url(request)}/$export-file/{job_id}"
    )
    headers = {"Expires": http_date(job["expires"])} if job.get("expires") else {}
    return Response(dumps(body), 200, headers=headers, media_type=FHIR_JSON)


@router.delete("/$export-status/{job_id}")
async def export_cancel(request: Request, job_id: str) -> Response:
    await _job(request, job_id)
    await jobs.delete_job(_db(services(request)), job_id)
    body = info_outcome(f"Export {job_id} cancelled and its files deleted")
    return Response(dumps(body), 202, media_type=FHIR_JSON)


@router.get("/$export-file/{job_id}/{file_id}")
async def export_file(request: Request, job_id: str, file_id: str) -> Response:
    job = await _job(request, job_id)
    if job["status"] != "complete":
        raise FhirError.of(404, "not-found", f"Export {job_id} has no files yet")
    try:
        oid = ObjectId(file_id)
    except InvalidId:
        raise FhirError.of(404, "not-found", f"No file {file_id!r} in export {job_id}") from None
    db = _db(services(request))
    info = await db[f"{jobs.BUCKET}.files"].find_one({"_id": oid, "metadata.job": job_id})
    if info is None:
        raise FhirError.of(404, "not-found", f"No file {file_id!r} in export {job_id}")
    stream = await AsyncGridFSBucket(db, jobs.BUCKET).open_download_stream(oid)
    metadata = info.get("metadata") or {}
    headers = {"Content-Length": str(info["length"])}
    if job.get("kind") == "view":  # a view's part: its name, for clients that save it
        headers["Content-Disposition"] = f'attachment; filename="{info["filename"]}"'

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                block = await stream.read(_READ_BLOCK)
                if not block:
                    return
                yield block
        finally:
            await stream.close()

    return StreamingResponse(
        chunks(), media_type=metadata.get("contentType", NDJSON), headers=headers
    )
