"""Importing one ``$import`` unit on a worker: NDJSON lines read in chunks and written
through the server's own write path.

A unit is a byte range [lo, hi) of one input: it owns the lines that *start* in the
range (a file is split at arbitrary bytes; the unit whose range holds a line's first
byte reads it to its end, the next one skips that partial line). An http(s) input is one
unit read from its start (a resumed run asks for a ``Range`` and skips what the server
sends again if it ignores it).

Each chunk (FHIR_IMPORT_CHUNK_RESOURCES lines) is one MongoDB transaction that holds
together: the chunk's new versions, its error lines and the unit's checkpoint (the
byte offset after the chunk, and the counts), the latter written only if this run still
holds the unit's lease. A worker killed anywhere therefore leaves either all of a chunk
or none of it, and its successor resumes at the last checkpoint: nothing is lost and
nothing counted twice. A chunk is also idempotent in itself: each resource is written
as an update with the id it was given, and one whose content equals the stored version
makes no new version (resources.same_content, the rule of every PUT).

Validation is the one every write gets (ResourceService.checked with the bindings, the
QuestionnaireResponse rules, profile enforcement; the write pipeline's rules inside the
transaction), with the API's validation settings at kick-off (stored in the job), so a
worker configured differently still validates as the API would have. A line that fails
becomes one OperationOutcome line of the input's error file, naming the line
(``issue.location`` ``Line[n]``, and its diagnostics) and the element (``expression``);
the other lines of the chunk are written.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, TYPE_CHECKING, Any

import httpx
from celery import Celery
from pymongo import ReplaceOne
from pymongo.errors import PyMongoError

from fhir_server.bulk.jobs import IMPORT_ERRORS as ERRORS
from fhir_server.bulk.jobs import JOBS, UNITS
from fhir_server.config import Settings
from fhir_server.datetimes import now
from fhir_server.jsonio import dumps, parse_json
from fhir_server.offload import Offload, checkpoint
from fhir_server.outcome import FhirError, bad_request
from fhir_server.resource_types import is_valid_id
from fhir_server.service.context import request_base_url
from fhir_server.service.resources import same_content
from fhir_server.storage import StoredVersion, VersionWrite
from fhir_server.storage.store import Session
from fhir_server.validation import BindingContext, Seen

if TYPE_CHECKING:
    from fhir_server.service.resources import ResourceService

TASK = "fhir_server.bulk.import_unit"
log = logging.getLogger(__name__)

# The API's settings that decide what a write accepts: stored in the job at kick-off.
VALIDATION_SETTINGS = (
    "allow_update_create",
    "validate_bindings",
    "validate_invariants",
    "validate_r4b_models",
    "validation_max_issues",
    "profile_enforcement",
    "profile_enforcement_overrides",
    "required_profiles",
    "unknown_extensions",
    "terminology_max_expansion",
    "max_body_bytes",
    "json_max_depth",
    "json_max_array_length",
    "json_max_string_chars",
    "json_max_number_digits",
    "json_max_number_exponent",
    "json_max_decimals",
)
_READ_BLOCK = 1 << 20
_HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def validation_snapshot(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in VALIDATION_SETTINGS}


def error_key(job_id: str, input_n: int, offset: int) -> str:
    """Error lines sort by input, then position in it."""
    return f"{job_id}:{input_n:05d}:{offset:015d}"


class LeaseLost(Exception):
    """Another run took the unit over, or the job was cancelled: stop quietly."""


class InputUnreadable(Exception):
    """The input cannot be read (gone, refused, not NDJSON over HTTP)."""


# --- reading inputs -----------------------------------------------------------------------


def _file_lines(path: str, start: int, lo: int, hi: int | None) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the lines of ``path`` that start in [lo, hi), from ``start``
    (a checkpoint) or from the first line starting at or after ``lo``."""
    try:
        f: IO[bytes] = open(path, "rb")  # noqa: SIM115 (closed below; a generator)
    except OSError as exc:
        raise InputUnreadable(f"cannot open the input: {exc.strerror}") from None
    with f:
        pos = start
        if start == lo and lo > 0:
            f.seek(lo - 1)
            if f.read(1) != b"\n":
                f.readline()  # the end of a line the previous unit owns
            pos = f.tell()
        else:
            f.seek(start)
        while hi is None or pos < hi:
            line = f.readline()
            if not line:
                return
            yield pos, line
            pos += len(line)


def _file_newlines(path: str, start: int, upto: int) -> int:
    """How many lines end in [start, upto) (to number a failing line; errors only)."""
    count = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = upto - start
        while left > 0:
            block = f.read(min(_READ_BLOCK, left))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def _http_lines(url: str, start: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) from ``start`` of an http(s) input, streamed. No redirects (the
    allow-list names the place) and no content coding (offsets are the file's bytes)."""
    headers = {"Accept": "application/fhir+ndjson", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    with httpx.Client(timeout=_HTTP_TIMEOUT, follow_redirects=False) as client:
        try:
            with client.stream("GET", url, headers=headers) as r:
                if r.status_code not in (200, 206):
                    raise InputUnreadable(f"GET {url} answered {r.status_code}")
                skip = start if r.status_code == 200 else 0  # Range ignored: from 0
                pos = start
                pending = b""
                for block in r.iter_raw(_READ_BLOCK):
                    if skip:
                        cut = min(skip, len(block))
                        block, skip = block[cut:], skip - cut
                        if not block:
                            continue
                    pending += block
                    begin = 0
                    while True:
                        end = pending.find(b"\n", begin)
                        if end < 0:
                            break
                        yield pos, pending[begin : end + 1]
                        pos += end + 1 - begin
                        begin = end + 1
                    pending = pending[begin:]
                if pending:
                    yield pos, pending
        except httpx.HTTPError as exc:
            raise InputUnreadable(f"GET {url} failed: {exc}") from None


# --- one chunk ------------------------------------------------------------------------------


_UNSEEN_LINE = ("unseen",)


@dataclass(slots=True)
class Line:
    offset: int
    raw: bytes
    resource: dict[str, Any] | None = None
    number: int | None = None  # 1-based line number, when known as read
    extended: bool = True
    error: FhirError | None = None
    seen: Any = _UNSEEN_LINE  # the current version ``prepared`` was rendered over
    prepared: VersionWrite | None = None  # None: unchanged (when ``seen`` is set)


class ChunkWriter:
    """Validates and writes the lines of one chunk of one input (see module docs)."""

    def __init__(self, resources: ResourceService, unit: dict[str, Any], source: str) -> None:
        self.resources = resources
        self.type: str = unit["type"]
        self.source = source  # inputSource: meta.source of resources that have none
        self.limits = resources.settings.input_limits()
        self.max_line = resources.settings.max_body_bytes

    def parse(self, line: Line) -> None:
        if len(line.raw) > self.max_line:
            raise FhirError.of(413, "too-costly", f"The line is longer than {self.max_line} bytes")
        body = parse_json(line.raw, "line", self.limits)
        if not isinstance(body, dict):
            raise bad_request("The line must be a JSON object holding a resource", "$this")
        if body.get("resourceType") != self.type:
            raise bad_request(
                f"resourceType {body.get('resourceType')!r} is not the input's type {self.type}",
                "resourceType",
            )
        rid = body.get("id")
        if not isinstance(rid, str) or not is_valid_id(rid):
            raise bad_request(
                "Each imported resource needs a valid id (it is written as an update)",
                f"{self.type}.id",
            )
        if self.source:
            meta = body.get("meta")
            if isinstance(meta, dict) and "source" not in meta:
                body["meta"] = {**meta, "source": self.source}
            elif meta is None:
                body["meta"] = {"source": self.source}
        line.resource = body

    def check_all(self, lines: list[Line], bindings: BindingContext | None) -> None:
        """Parse and validate every line (CPU work; in the worker's own thread)."""
        for line in lines:
            line.error = None  # (run again when the terminology snapshot was renewed)
            try:
                self.parse(line)
                seen = Seen()
                line.resource = self.resources.checked(
                    self.type, line.resource, "resource", bindings, seen
                )
                line.extended = seen.extensions
            except FhirError as exc:
                line.error = exc

    async def validate(self, lines: list[Line]) -> list[Line]:
        """The lines that pass every check; the others carry their error."""
        for line in lines:
            line.error, line.resource = None, None
        await self.resources.with_bindings(functools.partial(self.check_all, lines))
        good = [line for line in lines if line.error is None]
        pending = [line.resource for line in good]
        for line in good:
            try:
                await self.resources.check_answers(self.type, line.resource, pending)
            except FhirError as exc:
                line.error = exc
        good = [line for line in good if line.error is None]
        while good:  # profiles: one failure at a time names its line
            failed: list[int] = []

            def fail(i: int, exc: FhirError, failed: list[int] = failed) -> FhirError:
                failed.append(i)
                return exc

            try:
                await self.resources.enforce_profiles(
                    [line.resource for line in good], fail, [line.extended for line in good]
                )
                break
            except FhirError as exc:
                if not failed:
                    raise
                good[failed[0]].error = exc
                good = [line for line in good if line.error is None]
        return good

    async def prepare(self, lines: list[Line]) -> None:
        """Render each line's new version ahead of its transaction (in the pool
        thread, while the previous chunk commits), against the current versions as
        read now. ``write`` uses them when the transaction sees the same versions, and
        renders again those that changed meanwhile."""
        svc = self.resources
        ids = [line.resource["id"] for line in lines if line.resource is not None]
        current = {v.id: v for v in await svc.storage.read_many(self.type, ids)}
        await svc.offload.call(self._render_all, lines, current)

    def _render_all(self, lines: list[Line], current: dict[str, StoredVersion]) -> None:
        for line in lines:
            checkpoint()
            assert line.resource is not None
            cur = current.get(line.resource["id"])
            line.seen = _mark(cur)
            line.prepared = self._version(line, cur)

    def _version(self, line: Line, cur: StoredVersion | None) -> VersionWrite | None:
        """The line's new version over ``cur``; None when its content is unchanged (no
        new version: a re-run, or a resumed chunk)."""
        assert line.resource is not None
        if cur is not None and cur.raw is not None and same_content(cur.raw, line.resource):
            return None
        return self.resources.new_version(self.type, line.resource["id"], line.resource, cur, "PUT")

    async def write(self, s: Session, lines: list[Line]) -> int:
        """New versions of the lines whose content changed; returns how many."""
        svc = self.resources
        ids = [line.resource["id"] for line in lines if line.resource is not None]
        current = {v.id: v for v in await svc.storage.read_many(self.type, ids, s)}
        writes = []
        for line in lines:
            assert line.resource is not None
            rid = line.resource["id"]
            cur = current.get(rid)
            if line.seen is not _UNSEEN_LINE and line.seen == _mark(cur):
                # as rendered; a copy, since a rule may amend it and a retry reuses it
                write = copy.copy(line.prepared) if line.prepared is not None else None
            else:
                write = self._version(line, cur)
            if write is None:
                continue
            if cur is None:
                await svc.check_update_as_create(None, self.type, rid, True)
            writes.append(write)
        if writes:
            await svc.storage.write(writes, s)
        return len(writes)


def _mark(cur: StoredVersion | None) -> tuple[int, bool] | None:
    """What identifies the version a rendering was based on."""
    return None if cur is None else (cur.version, cur.raw is None)


# --- one unit -------------------------------------------------------------------------------


class UnitImport:
    def __init__(self, resources: ResourceService, unit_id: str, worker_id: str) -> None:
        self.resources = resources
        self.db = resources.storage.db
        self.unit_id = unit_id
        self.worker_id = worker_id
        self.units = self.db[UNITS]
        self.lease = timedelta(seconds=60)
        self.counted = (0, 0)  # (offset, newlines before it) of a file input
        self.registered: list[Any] = []  # the sessions of this run's transactions

    async def claim(self) -> dict[str, Any] | None:
        """The unit, now leased to this run; None when it is done, gone, or leased to a
        run that is still alive. Taking over from a dead run first ends the
        transaction it left open (see ``_end_sessions``)."""
        found = await self.units.find_one(
            {"_id": self.unit_id}, {"lease_seconds": 1, "owner": 1, "sessions": 1}
        )
        if found is None:
            return None
        self.lease = timedelta(seconds=found["lease_seconds"])
        t = now()
        claimed = await self.units.find_one_and_update(
            {
                "_id": self.unit_id,
                "state": "pending",
                "$or": [{"owner": None}, {"owner": self.worker_id}, {"lease": {"$lt": t}}],
            },
            {"$set": {"owner": self.worker_id, "lease": t + self.lease}},
            return_document=True,
        )
        if claimed is not None and found.get("owner") not in (None, self.worker_id):
            await self._end_sessions(found.get("sessions") or [])
        return claimed

    async def _end_sessions(self, sessions: list[Any]) -> None:
        """A worker killed in the middle of a chunk leaves its transaction open on the
        server, holding the unit's checkpoint document, until MongoDB reaps it
        (transactionLifetimeLimitSeconds, 60 s): every commit of its successor would
        conflict until then. The dead run's sessions are known (``_register``), so
        they are killed, which aborts that transaction at once. Without the privilege
        (killAnySession), the successor waits for the reaper instead."""
        if sessions:
            try:
                await self.db.client.admin.command(
                    {"killSessions": [{"id": lsid} for lsid in sessions]}
                )
            except PyMongoError as exc:
                log.warning("import unit %s: could not end a dead run's sessions: %s",
                            self.unit_id, exc)  # fmt: skip
        await self.units.update_one(self._mine(), {"$set": {"sessions": []}})

    async def _register(self, s: Session) -> None:
        """Record the session of a transaction about to start on the unit, before its
        first operation (so the write is outside its snapshot), once per session."""
        lsid = s.session_id["id"]
        if lsid in self.registered:
            return
        await self.units.update_one(self._mine(), {"$addToSet": {"sessions": lsid}})
        self.registered.append(lsid)

    def _mine(self) -> dict[str, Any]:
        return {"_id": self.unit_id, "owner": self.worker_id, "state": "pending"}

    async def run(self, job: dict[str, Any], unit: dict[str, Any]) -> int:
        """Import what is left of the unit; returns the resources this run wrote."""
        writer = ChunkWriter(self.resources, unit, job.get("input_source") or "")
        chunk_max = unit["chunk"]
        start = unit["after"] if unit["after"] is not None else unit["lo"]
        counting = "url" in unit["source"]  # http: lines are numbered as they come
        n = unit.get("line") or 0
        self.written = 0
        self.pending: asyncio.Task[None] | None = None
        try:
            chunk: list[Line] = []
            ids: set[str] = set()
            end = start  # after the last line read (the final checkpoint)
            for offset, raw in self._lines(unit, start):
                n += 1
                end = offset + len(raw)
                if not raw.strip():
                    continue
                rid = _peek_id(raw)
                if len(chunk) >= chunk_max or (rid is not None and rid in ids):
                    await self._next(writer, unit, chunk, offset, n - 1)
                    chunk, ids = [], set()
                chunk.append(Line(offset, raw, number=n if counting else None))
                if rid is not None:
                    ids.add(rid)
            await self._next(writer, unit, chunk, end, n)
            await self._drain()
        except InputUnreadable as exc:
            await self._drain()
            await self._unreadable(unit, str(exc))
        finally:
            if self.pending is not None:
                self.pending.cancel()
        await self._finish(unit["job"], timedelta(seconds=job["expiry_seconds"]))
        return self.written

    async def _next(
        self, writer: ChunkWriter, unit: dict[str, Any], chunk: list[Line], end: int,
        lines_before_end: int,
    ) -> None:  # fmt: skip
        """Validate ``chunk`` (in the pool thread) while the previous chunk's
        transaction runs, then start its own once that one has committed: the
        worker's CPU and the database's commit overlap, and checkpoints stay in order."""
        good = await writer.validate(chunk) if chunk else []
        for part, part_good, part_end, before in _parts(chunk, good, end, lines_before_end):
            if part_good:
                await writer.prepare(part_good)
            await self._drain()
            self.pending = asyncio.create_task(
                self._chunk(writer, unit, part, part_good, part_end, before)
            )

    async def _drain(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending

    def _lines(self, unit: dict[str, Any], start: int) -> Iterator[tuple[int, bytes]]:
        source = unit["source"]
        if "path" in source:
            return _file_lines(source["path"], start, unit["lo"], unit["hi"])
        return _http_lines(source["url"], start)

    def _number(self, unit: dict[str, Any], line: Line) -> int | None:
        """The failing line's 1-based number: counted as read (http), or by counting
        the newlines before it (a file; from the previous failure on, once per run)."""
        if line.number is not None:
            return line.number
        source = unit["source"]
        if "path" not in source:
            return None
        pos, before = self.counted if self.counted[0] <= line.offset else (0, 0)
        before += _file_newlines(source["path"], pos, line.offset)
        self.counted = (line.offset, before)
        return before + 1

    async def _chunk(
        self, writer: ChunkWriter, unit: dict[str, Any], chunk: list[Line], good: list[Line],
        end: int, lines_before_end: int,
    ) -> None:  # fmt: skip
        """Write one validated chunk, with its errors and the checkpoint ``end``, in
        one transaction."""
        resources = self.resources

        async def txn(s: Session) -> int:
            await self._register(s)
            written = await writer.write(s, good) if good else 0
            await self._commit(s, unit, chunk, end, len(good), lines_before_end)
            return written

        try:
            written = await resources.storage.transaction(txn, (writer.type,))
        except FhirError:
            # A write rule refused one of them: each alone, to name the line it was.
            written = await self._one_by_one(writer, unit, chunk, good, end, lines_before_end)
        unit["after"] = end  # committed: the next chunk's checkpoint starts here
        self.written += written

    async def _one_by_one(
        self, writer: ChunkWriter, unit: dict[str, Any], chunk: list[Line], good: list[Line],
        end: int, lines_before_end: int,
    ) -> int:  # fmt: skip
        written = 0
        for line in good:
            try:
                written += await self.resources.storage.transaction(
                    functools.partial(self._write_one, writer, line), (writer.type,)
                )
            except FhirError as exc:
                line.error = exc
        ok = sum(1 for line in good if line.error is None)

        async def txn(s: Session) -> None:
            await self._register(s)
            await self._commit(s, unit, chunk, end, ok, lines_before_end)

        await self.resources.storage.transaction(txn)
        return written

    async def _write_one(self, writer: ChunkWriter, line: Line, s: Session) -> int:
        await self._register(s)
        return await writer.write(s, [line])

    async def _commit(
        self, s: Session, unit: dict[str, Any], chunk: list[Line], end: int, ok: int,
        lines_before_end: int,
    ) -> None:  # fmt: skip
        """The chunk's error lines and the unit's checkpoint, in the chunk's
        transaction: only while this run holds the lease and the checkpoint is where
        this run found it (a concurrent run cannot count the chunk twice)."""
        failed = [line for line in chunk if line.error is not None]
        if failed:
            ops = []
            for line in failed:
                assert line.error is not None
                outcome = _outcome(line.error, self._number(unit, line), line.offset, unit["url"])
                key = error_key(unit["job"], unit["input"], line.offset)
                doc = {"_id": key, "job": unit["job"], "input": unit["input"],
                       "offset": line.offset, "outcome": dumps(outcome)}  # fmt: skip
                ops.append(ReplaceOne({"_id": key}, doc, upsert=True))
            await self.db[ERRORS].bulk_write(ops, session=s)
        update: dict[str, Any] = {
            "$set": {"after": end, "line": lines_before_end, "lease": now() + self.lease},
            "$inc": {"count": ok, "errors": len(failed)},
        }
        query = {**self._mine(), "after": unit["after"]}
        result = await self.units.update_one(query, update, session=s)
        if result.matched_count == 0:
            raise LeaseLost(self.unit_id)  # aborts the transaction: nothing of it stays

    async def _unreadable(self, unit: dict[str, Any], message: str) -> None:
        """The input cannot be read: one error line for it, and the unit ends there."""
        key = error_key(unit["job"], unit["input"], 10**14)
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "exception",
                    "diagnostics": f"{unit['url']}: {message}",
                    "expression": [unit["where"]],
                }
            ],
        }
        doc = {"_id": key, "job": unit["job"], "input": unit["input"], "offset": 10**14,
               "outcome": dumps(outcome)}  # fmt: skip
        await self.db[ERRORS].replace_one({"_id": key}, doc, upsert=True)
        result = await self.units.update_one(self._mine(), {"$inc": {"errors": 1}})
        if result.matched_count == 0:
            raise LeaseLost(self.unit_id)

    async def _finish(self, job_id: str, expiry: timedelta) -> None:
        """Mark the unit done, and the job complete when it was the last one."""
        result = await self.units.update_one(
            self._mine(), {"$set": {"state": "done", "owner": None}}
        )
        if result.matched_count == 0:
            return
        if await self.units.count_documents({"job": job_id, "state": {"$ne": "done"}}, limit=1):
            return
        t = now()
        await self.db[JOBS].update_one(
            {"_id": job_id, "status": "running"},
            {"$set": {"status": "complete", "completed": t, "expires": t + expiry}},
        )


def _parts(
    chunk: list[Line], good: list[Line], end: int, lines_before_end: int
) -> list[tuple[list[Line], list[Line], int, int]]:
    """The chunk cut before each line whose resource an earlier line of the same part
    already writes (``_peek_id`` missed it): one transaction cannot write two versions
    of one resource. (lines, valid lines, checkpoint, lines before it) per part."""
    valid = {id(line) for line in good}
    starts = [0]
    seen: set[str] = set()
    for i, line in enumerate(chunk):
        if id(line) not in valid or line.resource is None:
            continue
        rid = line.resource["id"]
        if rid in seen:
            starts.append(i)
            seen = set()
        seen.add(rid)
    if len(starts) == 1:
        return [(chunk, good, end, lines_before_end)]
    parts = []
    for k, first in enumerate(starts):
        last = starts[k + 1] if k + 1 < len(starts) else len(chunk)
        lines = chunk[first:last]
        if last < len(chunk):
            following = chunk[last]
            part_end = following.offset
            before = following.number - 1 if following.number is not None else lines_before_end
        else:
            part_end, before = end, lines_before_end
        parts.append((lines, [x for x in lines if id(x) in valid], part_end, before))
    return parts


def _peek_id(raw: bytes) -> str | None:
    """The resource id of a line, cheaply, to keep two versions of one resource out of
    one chunk (they would conflict in its transaction). None: not found (the parse
    will report the line)."""
    at = raw.find(b'"id"')
    if at < 0:
        return None
    colon = raw.find(b":", at + 4)
    first = raw.find(b'"', colon + 1)
    second = raw.find(b'"', first + 1)
    if colon < 0 or first < 0 or second < 0:
        return None
    return raw[first + 1 : second].decode("utf-8", "replace")


def _outcome(error: FhirError, line: int | None, offset: int, url: str) -> dict[str, Any]:
    """One error line: the failure's issues, each naming the input's line."""
    where = f"line {line}" if line is not None else f"the line at byte {offset}"
    issues = []
    for issue in error.issues:
        item: dict[str, Any] = {
            "severity": issue.severity,
            "code": issue.code,
            "diagnostics": f"{url}, {where}: {issue.diagnostics}",
            "location": [f"Line[{line}]" if line is not None else f"Byte[{offset}]"],
        }
        if issue.expression:
            item["expression"] = list(issue.expression)
        issues.append(item)
    return {"resourceType": "OperationOutcome", "issue": issues}


# --- the worker's side: services and the task ----------------------------------------------


@asynccontextmanager
async def import_services(
    settings: Settings, database: str, job: dict[str, Any]
) -> AsyncIterator[ResourceService]:
    """The API's write path in this worker: validation with the terminology bindings
    and the stored profiles, under the job's validation settings, and every rule of the
    write pipeline (no token: the kick-off was authorized, the worker writes as the
    server)."""
    from pymongo import AsyncMongoClient

    from fhir_server.service.resources import ResourceService
    from fhir_server.service.search import SearchService
    from fhir_server.storage import Storage
    from fhir_server.workflows import rules
    from fhir_server.workflows.pipeline import WritePipeline
    from fhir_server.workflows.services import registry
    from profiles.registry import ProfileRegistry
    from terminology.membership import Membership

    effective = settings.model_copy(update=job.get("validation") or {})
    offload: Offload | None = None
    client: Any = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    try:
        storage = Storage(client, database)
        search = SearchService(storage, registry())
        bindings = (
            Membership(storage, effective.terminology_max_expansion)
            if effective.validate_bindings
            else None
        )
        # one pool thread: a chunk is validated there while the loop awaits the commit
        # of the previous one
        offload = Offload.start(1)
        resources = ResourceService(
            storage, effective, search, offload, bindings, ProfileRegistry(storage)
        )
        pipeline = WritePipeline(storage, resources.render, rules(effective, search))
        await pipeline.start()
        storage.hook = pipeline
        yield resources
    finally:
        if offload is not None:
            offload.close()
        await client.close()


async def import_unit(settings: Settings, database: str, unit_id: str, worker_id: str) -> int:
    from pymongo import AsyncMongoClient

    probe: Any = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    try:
        db = probe.get_database(database)
        unit = await db[UNITS].find_one({"_id": unit_id}, {"job": 1})
        job = await db[JOBS].find_one({"_id": unit["job"]}) if unit else None
    finally:
        await probe.close()
    if job is None or job["status"] != "running":
        return 0
    token = request_base_url.set(job.get("base_url"))
    try:
        async with import_services(settings, database, job) as resources:
            run = UnitImport(resources, unit_id, worker_id)
            claimed = await run.claim()
            if claimed is None:
                return 0
            try:
                return await run.run(job, claimed)
            except LeaseLost:
                log.info("import unit %s: lease lost, stopping", unit_id)
                return 0
    finally:
        request_base_url.reset(token)


def fail_import(settings: Settings, database: str, unit_id: str, message: str) -> None:
    """A unit that cannot go on (a bug, not bad data) fails its job (status 500)."""
    from pymongo import MongoClient

    from fhir_server.bulk.export import fail_job

    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_url, tz_aware=True)
    with client:
        fail_job(client.get_database(database), unit_id, message)


def register(app: Celery, settings: Settings) -> None:
    """Add the import task to a worker's app (acknowledged late: a killed worker's
    task goes back to the queue, and its lease and checkpoint make that harmless)."""
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @app.task(name=TASK, bind=True, acks_late=True, max_retries=10)  # type: ignore[untyped-decorator]
    def import_unit_task(self: Any, database: str, unit_id: str) -> int:
        try:
            return asyncio.run(import_unit(settings, database, unit_id, worker_id))
        except PyMongoError as exc:  # transient (failover, network): retry from checkpoint
            log.warning("import unit %s: %s; retrying", unit_id, exc)
            raise self.retry(exc=exc, countdown=2) from exc
        except Exception as exc:
            log.exception("import unit %s failed", unit_id)
            fail_import(settings, database, unit_id, f"Import failed: {exc}")
            return 0
