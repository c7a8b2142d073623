"""Bulk Data ``$import`` over HTTP (the Bulk Data Import proposal, manifest form; the
data consumer pulls the inputs the manifest names): kick-off, status, cancel, errors.

- ``POST [base]/$import`` (``Prefer: respond-async``, a Parameters manifest) → 202,
  ``Content-Location: [base]/$import-status/[job]``
- ``GET [base]/$import-status/[job]`` → 202 with X-Progress and Retry-After while running;
  200 with the completion manifest (``output``: per input, the resources imported;
  ``error``: per input with failures, an NDJSON file of OperationOutcomes); 500 when
  the job failed. ``DELETE`` cancels it (lines already committed stay: the proposal's
  "may not be able to roll back a partial import").
- ``GET [base]/$import-file/[job]/[input]`` → that input's error file.

Jobs and units are those of bulk export (jobs.py, kind ``import``): the same leases,
re-dispatch of stalled units by status polls, expiry and cancel. imports.py is the
worker's side.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from pymongo.asynchronous.database import AsyncDatabase
from starlette.responses import Response, StreamingResponse

from fhir_server.api.operations import not_allowed, optional_body
from fhir_server.api.routes import base_url, bind_base_url, services
from fhir_server.bulk import jobs
from fhir_server.bulk.access import access_of, authorize_import, owner_of, owns
from fhir_server.bulk.import_manifest import Manifest, check_sources, parse_manifest
from fhir_server.bulk.imports import ERRORS, TASK, validation_snapshot
from fhir_server.bulk.routes import (
    FHIR_JSON,
    NDJSON,
    RETRY_AFTER,
    manifest_response,
    prepare,
    respond_async,
)
from fhir_server.bulk.tasks import dispatch
from fhir_server.datetimes import now
from fhir_server.jsonio import dumps
from fhir_server.outcome import FhirError, Issue, bad_request, info_outcome, operation_outcome

router = APIRouter(dependencies=[Depends(bind_base_url)])
KIND = "import"


async def _dispatch(request: Request, unit_ids: list[str]) -> None:
    """Queue the units' tasks (a broker that is down: status polls re-send them)."""
    import anyio

    from fhir_server.bulk.routes import _celery, log

    try:
        await anyio.to_thread.run_sync(
            lambda: dispatch(_celery(request), services(request).settings, unit_ids, TASK)
        )
    except Exception:
        log.exception("could not queue %d import tasks; status polls will retry", len(unit_ids))


def _units(
    job_id: str, manifest: Manifest, unit_bytes: int, chunk: int, lease: int
) -> list[dict[str, Any]]:
    """One unit per byte range of ``unit_bytes`` of each file, one per http(s) input."""
    docs: list[dict[str, Any]] = []
    for i, item in enumerate(manifest.inputs):
        if item.path is not None:
            size = os.path.getsize(item.path)
            starts = list(range(0, size, unit_bytes)) or [0]
            # the last one reads to the end (the file may have grown)
            ranges: list[tuple[int, int | None]] = [
                (lo, lo + unit_bytes if k < len(starts) - 1 else None)
                for k, lo in enumerate(starts)
            ]
            source: dict[str, str] = {"path": item.path}
        else:
            ranges = [(0, None)]
            source = {"url": item.url}
        for lo, hi in ranges:
            docs.append(
                {
                    "_id": f"{job_id}:{len(docs):05d}",
                    "job": job_id,
                    "n": len(docs),
                    "kind": KIND,
                    "input": i,
                    "type": item.type,
                    "url": item.url,
                    "where": item.where,
                    "source": source,
                    "lo": lo,
                    "hi": hi,
                    "after": None,
                    "line": None,
                    "chunk": chunk,
                    "state": "pending",
                    "count": 0,
                    "errors": 0,
                    "files": [],
                    "owner": None,
                    "sessions": [],  # of its transactions (imports.UnitImport._register)
                    "lease": None,
                    "dispatched": now(),
                    "lease_seconds": lease,
                }
            )
    return docs


@router.post("/$import")
async def import_kickoff(request: Request) -> Response:
    if not respond_async(request):
        raise bad_request("$import is asynchronous: send Prefer: respond-async", "Prefer")
    svc = services(request)
    settings = svc.settings
    manifest = parse_manifest(await optional_body(request))
    # Before the inputs are looked at: a token that may not import learns nothing of
    # the server's files or allow-list.
    client_id = authorize_import(access_of(request), [i.type for i in manifest.inputs])
    manifest = check_sources(manifest, settings.import_dirs, settings.import_url_allow)
    db = await prepare(request)
    job_id = jobs.new_job_id()
    units = _units(
        job_id, manifest, settings.import_unit_bytes, settings.import_chunk_resources,
        settings.export_lease_seconds,
    )  # fmt: skip
    await db[jobs.UNITS].insert_many(units)  # before the job: a job has all its units
    base = base_url(request)
    await db[jobs.JOBS].insert_one(
        {
            "_id": job_id,
            "kind": KIND,
            "status": "running",
            "client_id": client_id,
            "owner": owner_of(access_of(request)),
            "request": f"{base}/$import",
            "tx": now(),
            "created": now(),
            "completed": None,
            "expires": None,
            "error": None,
            "error_files": [],
            "expiry_seconds": settings.export_expiry_seconds,
            "inputs": [{"type": i.type, "url": i.url} for i in manifest.inputs],
            "input_source": manifest.input_source,
            "base_url": base,
            "validation": validation_snapshot(settings),
        }
    )
    await _dispatch(request, [u["_id"] for u in units])
    status_url = f"{base}/$import-status/{job_id}"
    body = info_outcome(f"Import started; poll {status_url}")
    return Response(
        dumps(body), 202, headers={"Content-Location": status_url}, media_type=FHIR_JSON
    )


@router.api_route("/$import", methods=["GET", "PUT", "PATCH", "DELETE"])
async def import_other_methods(request: Request) -> Response:
    raise not_allowed(request, "POST")


async def _job(
    request: Request, job_id: str
) -> tuple[AsyncDatabase[dict[str, Any]], dict[str, Any]]:
    db = await prepare(request)
    job = await db[jobs.JOBS].find_one({"_id": job_id, "kind": KIND})
    if job is None or not owns(access_of(request), job):
        # One answer for both: another client must not learn that the job exists.
        raise FhirError.of(404, "not-found", f"No import job {job_id!r} (expired or deleted?)")
    return db, job


@router.get("/$import-status/{job_id}")
async def import_status(request: Request, job_id: str) -> Response:
    db, job = await _job(request, job_id)
    settings = services(request).settings
    units = (
        await db[jobs.UNITS]
        .find({"job": job_id}, {"input": 1, "count": 1, "errors": 1, "state": 1})
        .to_list()
    )
    if job["status"] == "running" and all(u["state"] == "done" for u in units):
        # the last unit's worker died between finishing it and closing the job
        job = await _complete(db, job)
    if job["status"] == "running":
        stalled = await jobs.stalled_units(db, job_id, settings.export_lease_seconds)
        if stalled:
            await _dispatch(request, stalled)
        done = sum(u["state"] == "done" for u in units)
        imported = sum(u["count"] for u in units)
        failed = sum(u["errors"] for u in units)
        progress = f"{done} of {len(units)} parts done, {imported} imported, {failed} failed"
        return Response(
            status_code=202, headers={"X-Progress": progress, "Retry-After": RETRY_AFTER}
        )
    if job["status"] == "failed":
        outcome = operation_outcome([Issue("exception", job["error"] or "Import failed")])
        return Response(dumps(outcome), 500, media_type=FHIR_JSON)
    counts: dict[int, list[int]] = {}
    for u in units:
        total = counts.setdefault(u["input"], [0, 0])
        total[0] += u["count"]
        total[1] += u["errors"]
    base = base_url(request)
    output, errors = [], []
    for i, item in enumerate(job["inputs"]):
        ok, failed = counts.get(i, [0, 0])
        output.append({"type": item["type"], "inputUrl": item["url"], "count": ok})
        if failed:
            errors.append(
                {
                    "type": "OperationOutcome",
                    "inputUrl": item["url"],
                    "count": failed,
                    "url": f"{base}/$import-file/{job_id}/{i}",
                }
            )
    return manifest_response(job, output, errors)


async def _complete(db: AsyncDatabase[dict[str, Any]], job: dict[str, Any]) -> dict[str, Any]:
    t = now()
    expires = t + timedelta(seconds=job["expiry_seconds"])
    await db[jobs.JOBS].update_one(
        {"_id": job["_id"], "status": "running"},
        {"$set": {"status": "complete", "completed": t, "expires": expires}},
    )
    return await db[jobs.JOBS].find_one({"_id": job["_id"]}) or job


@router.delete("/$import-status/{job_id}")
async def import_cancel(request: Request, job_id: str) -> Response:
    db, _ = await _job(request, job_id)
    await jobs.delete_job(db, job_id)
    body = info_outcome(
        f"Import {job_id} cancelled; resources committed before the cancel stay imported"
    )
    return Response(dumps(body), 202, media_type=FHIR_JSON)


@router.get("/$import-file/{job_id}/{input_n}")
async def import_errors(request: Request, job_id: str, input_n: str) -> Response:
    db, job = await _job(request, job_id)
    if job["status"] != "complete":
        raise FhirError.of(404, "not-found", f"Import {job_id} has no error files yet")
    if not input_n.isdigit() or int(input_n) >= len(job["inputs"]):
        raise FhirError.of(404, "not-found", f"Import {job_id} has no input {input_n!r}")
    prefix = f"{job_id}:{int(input_n):05d}:"  # error ids sort by input, then offset
    cursor = db[ERRORS].find(
        {"_id": {"$gt": prefix, "$lt": prefix[:-1] + ";"}}, {"outcome": 1}, sort=[("_id", 1)]
    )

    async def lines() -> AsyncIterator[bytes]:
        async for doc in cursor:
            yield bytes(doc["outcome"]) + b"\n"

    return StreamingResponse(lines(), media_type=NDJSON)
