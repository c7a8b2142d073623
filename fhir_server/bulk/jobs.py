"""Export jobs in MongoDB, shared by API nodes and workers.

``bulk_jobs``:  {_id, kind: resources|view, status: running|complete|failed, client_id,
                 owner ({client, user, patient}: access.owner_of), request (kick-off
                 URL), tx (transactionTime), created, completed, expires, error,
                 error_files: [{id, count}], expiry_seconds, + the kind's own fields}
``bulk_units``: {_id: "<job>:<n>", job, n, kind, type, filter (BSON bytes), lo, hi (an
                 _id range, None: open), elements, state: pending|done, after (last _id
                 written), files: [{id, count, seq}], count, owner, lease, dispatched,
                 file_max, lease_seconds, + the kind's own fields}
The limits are the API's settings at kick-off, so workers need no export settings.
GridFS bucket ``bulk``: the files, metadata {job, unit, seq, type, contentType}.

Three kinds of job share this machinery: ``resources`` (Bulk Data ``$export``: a unit
copies resources to NDJSON) and ``view`` (SQL on FHIR ``$viewdefinition-export``: a
unit writes a ViewDefinition's rows, views/export.py), and ``import`` (Bulk Data
``$import``: a unit reads a byte range of an NDJSON input and writes its resources,
bulk/imports.py; its units and job are made by bulk/import_routes.py). Only what a unit writes per
resource differs (export.py ``content_for``); jobs, units, leases, checkpoints,
dispatch, status, cancel, download and expiry are the same code.

One unit is one resource type, or an ``_id`` range of a big type so that several
workers share it. A unit's files are committed one by one: a file counts only once its
id is in ``files`` (pushed together with ``after``), so a unit restarted after a crash
deletes its uncommitted files and resumes after ``after`` without duplicating a line.
This module holds the job lifecycle of the API side (async); ``export`` the worker's.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import bson
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.datetimes import now

JOBS = "bulk_jobs"
UNITS = "bulk_units"
BUCKET = "bulk"
IMPORT_ERRORS = "bulk_import_errors"
UNIT_MIN_RESOURCES = 100_000  # a type is split into ranges of about this many resources

Filter = dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnitPlan:
    resource_type: str
    filter: Filter
    elements: Sequence[str] | None
    kind: str = "resources"  # what the unit writes: see export.content_for
    extra: Mapping[str, Any] | None = None  # the kind's own unit fields


def new_job_id() -> str:
    return uuid.uuid4().hex


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    await db[JOBS].create_indexes([IndexModel([("expires", ASCENDING)], name="expires")])
    await db[UNITS].create_indexes([IndexModel([("job", ASCENDING), ("n", ASCENDING)], name="job")])
    # GridFS's own indexes: workers write files without a bucket's upload stream.
    await db[f"{BUCKET}.chunks"].create_indexes(
        [
            IndexModel(
                [("files_id", ASCENDING), ("n", ASCENDING)], name="files_id_1_n_1", unique=True
            )
        ]
    )
    await db[f"{BUCKET}.files"].create_indexes(
        [
            IndexModel([("metadata.job", ASCENDING)], name="job"),
            IndexModel([("metadata.unit", ASCENDING)], name="unit"),
        ]
    )


async def id_ranges(
    db: AsyncDatabase[dict[str, Any]], resource_type: str, unit_size: int
) -> list[tuple[str | None, str | None]]:
    """``_id`` ranges [lo, hi) of about ``unit_size`` documents each (one open range for
    a small type). Boundaries come from skipping along the ``_id`` index."""
    collection = db[resource_type]
    estimated = await collection.estimated_document_count()
    bounds: list[str | None] = [None]
    for k in range(1, (estimated + unit_size - 1) // unit_size):
        doc = await collection.find_one({}, {"_id": 1}, sort=[("_id", 1)], skip=k * unit_size)
        if doc is None:
            break
        if doc["_id"] != bounds[-1]:
            bounds.append(doc["_id"])
    bounds.append(None)
    return list(itertools.pairwise(bounds))


async def create_job(
    db: AsyncDatabase[dict[str, Any]],
    *,
    job_id: str,
    client_id: str | None,
    owner: dict[str, str | None] | None,
    request_url: str,
    tx: datetime,
    units: Sequence[UnitPlan],
    unit_size: int,
    error_files: list[dict[str, Any]],
    file_max: int,
    lease_seconds: int,
    expiry_seconds: int,
    kind: str = "resources",
    extra: Mapping[str, Any] | None = None,
) -> list[str]:
    """Store the job and its units; returns the unit ids to dispatch. Units are written
    before the job, so a job document always has all its units."""
    unit_docs: list[dict[str, Any]] = []
    for plan in units:
        for k, (lo, hi) in enumerate(await id_ranges(db, plan.resource_type, unit_size)):
            unit_docs.append(
                {
                    **(plan.extra or {}),
                    "_id": f"{job_id}:{len(unit_docs):05d}",
                    "job": job_id,
                    "n": len(unit_docs),
                    "kind": plan.kind,
                    "range": k,  # which of the plan's _id ranges
                    "type": plan.resource_type,
                    "filter": bson.encode(plan.filter),
                    "lo": lo,
                    "hi": hi,
                    "elements": list(plan.elements) if plan.elements else None,
                    "state": "pending",
                    "after": None,
                    "files": [],
                    "count": 0,
                    "owner": None,
                    "lease": None,
                    "dispatched": now(),
                    "file_max": file_max,
                    "lease_seconds": lease_seconds,
                }
            )
    if unit_docs:
        await db[UNITS].insert_many(unit_docs)
    done = not unit_docs
    t = now()
    await db[JOBS].insert_one(
        {
            **(extra or {}),
            "_id": job_id,
            "kind": kind,
            "status": "complete" if done else "running",
            "client_id": client_id,
            "owner": owner,
            "request": request_url,
            "tx": tx,
            "created": t,
            "completed": t if done else None,
            "expires": t + timedelta(seconds=expiry_seconds) if done else None,
            "error": None,
            "error_files": error_files,
            "expiry_seconds": expiry_seconds,
        }
    )
    return [d["_id"] for d in unit_docs]


async def delete_job(db: AsyncDatabase[dict[str, Any]], job_id: str) -> None:
    """Remove a job, its units and its files (cancel, expiry)."""
    await db[JOBS].delete_one({"_id": job_id})
    await db[UNITS].delete_many({"job": job_id})
    # $import's error lines (bulk/imports.py), keyed "<job>:<input>:<offset>"
    await db[IMPORT_ERRORS].delete_many({"_id": {"$gt": f"{job_id}:", "$lt": f"{job_id};"}})
    # Not bucket.delete: a worker may be deleting one of these files at the same time.
    files = await db[f"{BUCKET}.files"].find({"metadata.job": job_id}, {"_id": 1}).to_list()
    ids = [f["_id"] for f in files]
    await db[f"{BUCKET}.chunks"].delete_many({"files_id": {"$in": ids}})
    await db[f"{BUCKET}.files"].delete_many({"_id": {"$in": ids}})


async def purge_expired(db: AsyncDatabase[dict[str, Any]]) -> int:
    """Delete every job whose files have expired; returns how many."""
    expired = await db[JOBS].find({"expires": {"$lt": now()}}, {"_id": 1}).to_list()
    for job in expired:
        await delete_job(db, job["_id"])
    return len(expired)


async def stalled_units(db: AsyncDatabase[dict[str, Any]], job_id: str, lease: int) -> list[str]:
    """Pending units nobody is working on: their worker's lease ran out (it died), or
    no worker took their task for a long time (a broker that lost it). They are marked
    dispatched again here, so that concurrent status polls re-send each only once."""
    t = now()
    stale = t - timedelta(seconds=max(60, 5 * lease))
    query = {
        "job": job_id,
        "state": "pending",
        "dispatched": {"$lt": t - timedelta(seconds=lease)},
        "$or": [{"owner": {"$ne": None}, "lease": {"$lt": t}}, {"dispatched": {"$lt": stale}}],
    }
    found = []
    async for unit in db[UNITS].find(query, {"_id": 1}):
        claimed = await db[UNITS].update_one(
            {"_id": unit["_id"], "dispatched": {"$lt": t - timedelta(seconds=lease)}},
            {"$set": {"dispatched": t}},
        )
        if claimed.modified_count:
            found.append(unit["_id"])
    return found


async def progress(db: AsyncDatabase[dict[str, Any]], job_id: str) -> tuple[int, int, int]:
    """(resources written, units done, units) of a running job."""
    written = done = total = 0
    async for unit in db[UNITS].find({"job": job_id}, {"count": 1, "state": 1}):
        written += unit["count"]
        done += unit["state"] == "done"
        total += 1
    return written, done, total


async def committed_files(
    db: AsyncDatabase[dict[str, Any]], job_id: str, field: str = "type"
) -> list[tuple[Any, str, int]]:
    """(the unit's ``field``, file id, count) of every committed file, by unit then
    sequence: the output of a finished job, whatever its kind."""
    out: list[tuple[Any, str, int]] = []
    async for unit in db[UNITS].find({"job": job_id}, {field: 1, "files": 1}, sort=[("n", 1)]):
        for f in sorted(unit["files"], key=lambda f: f["seq"]):
            out.append((unit.get(field), str(f["id"]), f["count"]))
    return out


async def manifest_files(
    db: AsyncDatabase[dict[str, Any]], job_id: str
) -> list[tuple[str, str, int]]:
    """(type, file id, count) of every committed file, by unit then sequence."""
    return [(str(t), fid, count) for t, fid, count in await committed_files(db, job_id)]
