"""Writing one export unit's files to GridFS, on a worker (sync PyMongo: Celery tasks
are synchronous).

A run first claims the unit with a lease (so two deliveries of the same task never
write the same unit at once), deletes files of an earlier run that were never committed,
then streams the unit's resources in ``_id`` order after its checkpoint. The stored
``raw`` bytes are the resource's exact JSON and are copied to the file as they are
(only ``_elements`` parses them). Each full file is closed, then committed together
with the new checkpoint in one update that also checks the lease is still ours:
memory stays at one cursor batch and a few MB of chunks whatever the export size.

What a file holds is the unit kind's ``FileContent`` (``content_for``): the resources'
NDJSON lines for ``$export``, a ViewDefinition's rows for ``$viewdefinition-export``
(views/export.py); the claim, checkpoint, commit and recovery are the same for both.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any, Protocol

import bson
from bson import ObjectId
from pymongo.database import Database

from fhir_server.bulk.jobs import BUCKET, JOBS, UNITS
from fhir_server.datetimes import now
from fhir_server.jsonio import dumps, load_stored
from fhir_server.subsetting import select_elements

log = logging.getLogger(__name__)

_RENEW_EVERY = 2.0  # seconds between lease renewals while scanning
_BATCH = 500  # documents per cursor batch: bounds the memory of one read


class NdjsonFile:
    """One GridFS file (the spec's ``files``/``chunks`` layout, so any GridFS bucket reads
    it) written in flushes of a few MB. PyMongo's own upload stream buffers up to 48 MB
    of chunks before inserting them, which would set the worker's peak memory."""

    CHUNK = 255 * 1024
    FLUSH_CHUNKS = 16  # about 4 MB per insert

    def __init__(self, db: Database[dict[str, Any]], filename: str, metadata: dict[str, Any]):
        self._id = ObjectId()
        self.files = db[f"{BUCKET}.files"]
        self.chunks = db[f"{BUCKET}.chunks"]
        self.pending = bytearray()
        self.docs: list[dict[str, Any]] = []
        self.n = 0
        self.length = 0
        self.closed = False
        # Written first (marked open) so that a crash leaves a file the next run of the
        # unit finds by its metadata and deletes, chunks included.
        self.files.insert_one(
            {
                "_id": self._id,
                "length": 0,
                "chunkSize": self.CHUNK,
                "uploadDate": now(),
                "filename": filename,
                "metadata": {**metadata, "open": True},
            }
        )

    def write(self, data: bytes) -> None:
        self.pending += data
        self.length += len(data)
        while len(self.pending) >= self.CHUNK:
            self._chunk(bytes(self.pending[: self.CHUNK]))
            del self.pending[: self.CHUNK]
        if len(self.docs) >= self.FLUSH_CHUNKS:
            self._flush()

    def _chunk(self, data: bytes) -> None:
        self.docs.append({"files_id": self._id, "n": self.n, "data": data})
        self.n += 1

    def _flush(self) -> None:
        if self.docs:
            self.chunks.insert_many(self.docs, ordered=True)
            self.docs = []

    def close(self) -> None:
        if self.pending:
            self._chunk(bytes(self.pending))
            self.pending = bytearray()
        self._flush()
        self.files.update_one(
            {"_id": self._id},
            {"$set": {"length": self.length, "uploadDate": now()}, "$unset": {"metadata.open": ""}},
        )
        self.closed = True

    def abort(self) -> None:
        self.chunks.delete_many({"files_id": self._id})
        self.files.delete_one({"_id": self._id})


class FileContent(Protocol):
    """What one unit kind writes: the file's name and media type, its first and last
    bytes, and each resource's bytes. ``add`` returns how many items (lines, rows) the
    resource gave; a file is committed once it holds ``file_max`` of them, always after
    a whole resource, so that the unit's checkpoint is a resource id."""

    media_type: str
    always_file: bool  # write an (empty) file when the unit has no resources at all

    def file_name(self, seq: int) -> str: ...

    def start(self, out: NdjsonFile) -> None: ...

    def add(self, out: NdjsonFile, raw: bytes) -> int: ...

    def end(self, out: NdjsonFile) -> None: ...

    def discard(self) -> None: ...


class ResourceLines:
    """Bulk Data ``$export``: each resource's stored JSON as one NDJSON line, copied
    as it is (parsed only for ``_elements``)."""

    media_type = "application/fhir+ndjson"
    always_file = False

    def __init__(self, unit: dict[str, Any], unit_id: str) -> None:
        self.type = unit["type"]
        self.unit_id = unit_id
        self.elements = frozenset(unit["elements"]) if unit.get("elements") else None

    def file_name(self, seq: int) -> str:
        return f"{self.type}-{self.unit_id}-{seq}.ndjson"

    def start(self, out: NdjsonFile) -> None:
        pass

    def add(self, out: NdjsonFile, raw: bytes) -> int:
        if self.elements is not None:
            raw = dumps(select_elements(load_stored(raw), self.elements))
        out.write(raw)
        out.write(b"\n")
        return 1

    def end(self, out: NdjsonFile) -> None:
        pass

    def discard(self) -> None:
        pass


def content_for(unit: dict[str, Any], unit_id: str) -> FileContent:
    """The writer of a unit's kind (units stored before kinds existed are resources)."""
    if unit.get("kind") == "view":
        from fhir_server.views.export import ViewRows

        return ViewRows(unit)
    return ResourceLines(unit, unit_id)


class LeaseLost(Exception):
    """Another run took the unit over, or the job was cancelled: stop quietly."""


class UnitExport:
    def __init__(self, db: Database[dict[str, Any]], unit_id: str, worker_id: str) -> None:
        self.db = db
        self.unit_id = unit_id
        self.worker_id = worker_id
        self.file_max = 1
        self.lease = timedelta(seconds=60)
        self.units = db[UNITS]
        self.renewed = 0.0

    # --- lease ---------------------------------------------------------------------------

    def claim(self) -> dict[str, Any] | None:
        """The unit, now leased to this run; None when it is done, gone, or leased to a
        run that is still alive."""
        found = self.units.find_one({"_id": self.unit_id}, {"file_max": 1, "lease_seconds": 1})
        if found is None:
            return None
        self.file_max = found["file_max"]
        self.lease = timedelta(seconds=found["lease_seconds"])
        t = now()
        return self.units.find_one_and_update(
            {
                "_id": self.unit_id,
                "state": "pending",
                "$or": [{"owner": None}, {"owner": self.worker_id}, {"lease": {"$lt": t}}],
            },
            {"$set": {"owner": self.worker_id, "lease": t + self.lease}},
            return_document=True,
        )

    def _mine(self) -> dict[str, Any]:
        return {"_id": self.unit_id, "owner": self.worker_id, "state": "pending"}

    def renew(self) -> None:
        result = self.units.update_one(self._mine(), {"$set": {"lease": now() + self.lease}})
        if result.matched_count == 0:
            raise LeaseLost(self.unit_id)
        self.renewed = time.monotonic()

    # --- the run -------------------------------------------------------------------------

    def run(self) -> int:
        """Export what is left of the unit; returns the resources written by this run."""
        unit = self.claim()
        if unit is None:
            return 0
        job = self.db[JOBS].find_one({"_id": unit["job"]}, {"status": 1, "expiry_seconds": 1})
        if job is None or job["status"] != "running":
            return 0
        self._drop_uncommitted(unit)
        written = 0
        try:
            written = self._write(unit)
        except LeaseLost:
            log.info("unit %s: lease lost, stopping", self.unit_id)
            return written
        self._finish(unit["job"], timedelta(seconds=job["expiry_seconds"]))
        return written

    def _drop_uncommitted(self, unit: dict[str, Any]) -> None:
        committed = [f["id"] for f in unit["files"]]
        query = {"metadata.unit": self.unit_id, "_id": {"$nin": committed}}
        stale = [f["_id"] for f in self.db[f"{BUCKET}.files"].find(query, {"_id": 1})]
        if stale:
            self.db[f"{BUCKET}.chunks"].delete_many({"files_id": {"$in": stale}})
            self.db[f"{BUCKET}.files"].delete_many({"_id": {"$in": stale}})

    def _query(self, unit: dict[str, Any]) -> dict[str, Any]:
        clauses: list[dict[str, Any]] = [bson.decode(unit["filter"])]
        id_range: dict[str, Any] = {}
        if unit["after"] is not None:
            id_range["$gt"] = unit["after"]
        elif unit["lo"] is not None:
            id_range["$gte"] = unit["lo"]
        if unit["hi"] is not None:
            id_range["$lt"] = unit["hi"]
        if id_range:
            clauses.append({"_id": id_range})
        return {"$and": clauses}

    def _write(self, unit: dict[str, Any]) -> int:
        content = content_for(unit, self.unit_id)
        seq = len(unit["files"])
        cursor = self.db[unit["type"]].find(
            self._query(unit), {"raw": 1}, sort=[("_id", 1)], batch_size=_BATCH
        )
        written = 0
        upload: NdjsonFile | None = None
        count = 0
        last_id = unit["after"]
        self.renewed = time.monotonic()
        try:
            for doc in cursor:
                if upload is None:
                    upload = self._open(unit, content, seq)
                count += content.add(upload, doc["raw"])
                last_id = doc["_id"]
                if count >= self.file_max:
                    content.end(upload)
                    self._commit(upload, seq, count, last_id)
                    written += count
                    upload, count, seq = None, 0, seq + 1
                elif time.monotonic() - self.renewed > _RENEW_EVERY:
                    self.renew()
            if upload is None and seq == 0 and content.always_file:
                upload = self._open(unit, content, seq)  # no resources: an empty file
            if upload is not None:
                content.end(upload)
                self._commit(upload, seq, count, last_id)
                written += count
                upload = None
        finally:
            cursor.close()
            if upload is not None and not upload.closed:
                upload.abort()  # an error or a lost lease mid-file: this file never counts
            content.discard()
        return written

    def _open(self, unit: dict[str, Any], content: FileContent, seq: int) -> NdjsonFile:
        metadata = {
            "job": unit["job"],
            "unit": self.unit_id,
            "seq": seq,
            "type": unit["type"],
            "contentType": content.media_type,
        }
        upload = NdjsonFile(self.db, content.file_name(seq), metadata)
        content.start(upload)
        return upload

    def _commit(self, upload: NdjsonFile, seq: int, count: int, last_id: Any) -> None:
        upload.close()
        result = self.units.update_one(
            self._mine(),
            {
                "$push": {"files": {"id": upload._id, "count": count, "seq": seq}},
                "$set": {"after": last_id, "lease": now() + self.lease},
                "$inc": {"count": count},
            },
        )
        if result.matched_count == 0:  # not committed: nobody will ever list it
            upload.abort()
            raise LeaseLost(self.unit_id)
        self.renewed = time.monotonic()

    def _finish(self, job_id: str, expiry: timedelta) -> None:
        """Mark the unit done, and the job complete when it was the last one."""
        result = self.units.update_one(self._mine(), {"$set": {"state": "done", "owner": None}})
        if result.matched_count == 0:
            return
        if self.units.count_documents({"job": job_id, "state": {"$ne": "done"}}, limit=1):
            return
        t = now()
        self.db[JOBS].update_one(
            {"_id": job_id, "status": "running"},
            {"$set": {"status": "complete", "completed": t, "expires": t + expiry}},
        )


def fail_job(db: Database[dict[str, Any]], unit_id: str, message: str) -> None:
    """A unit that cannot be exported fails its job (status answers 500); its files
    expire like those of a finished job."""
    unit = db[UNITS].find_one({"_id": unit_id}, {"job": 1})
    job = db[JOBS].find_one({"_id": unit["job"]}, {"expiry_seconds": 1}) if unit else None
    if unit is not None and job is not None:
        t = now()
        db[JOBS].update_one(
            {"_id": unit["job"], "status": "running"},
            {
                "$set": {
                    "status": "failed",
                    "error": message,
                    "completed": t,
                    "expires": t + timedelta(seconds=job["expiry_seconds"]),
                }
            },
        )
