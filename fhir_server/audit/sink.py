"""Writing audit records off the request path, in batches, into their own collection.

``emit`` (a record) and ``defer`` (what builds a request's records) only append to a
deque (thread-safe: the authorization server's handlers run on worker threads), so a
request pays microseconds. A task on the app's loop drains it every ``interval``
seconds, in the gaps between requests (``_quiet``): each record becomes a stored
AuditEvent (id, meta, search index and Patient compartments, as every resource gets;
index.py), and up to ``MAX_BATCH`` requests' records are one ``insert_many`` into the
``AuditEvent`` collection.

Records bypass the write pipeline (the API refuses AuditEvent writes: guard.py) and
history: each is written once and never changes, so it has one version, read from the
current collection; and system ``_history``, which sync clients page through, is not
flooded with a record of every read. What a killed process had not flushed (at most
``interval`` + ``MAX_DELAY`` seconds of records) is lost; a clean shutdown flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError

from fhir_server.audit.index import audit_index
from fhir_server.datetimes import now
from fhir_server.jsonio import dumps
from fhir_server.service.resources import with_meta
from fhir_server.storage.documents import VersionWrite
from fhir_server.storage.store import Storage

log = logging.getLogger("fhir_server.audit")
TYPE = "AuditEvent"
MAX_BATCH = 32  # queued requests per insert_many (their encoding holds the loop)
MAX_DELAY = 1.0  # seconds a flush waits for gaps between requests before it goes on
DUPLICATE_KEY = 11000
MAX_PENDING = 200_000  # beyond this (MongoDB down for long) the oldest are dropped, logged
# a record, or what builds a request's records (recorder.Auditor: built when idle)
Item = dict[str, Any] | Callable[[], list[dict[str, Any]]]


class AuditSink:
    def __init__(self, storage: Storage, interval: float = 0.25) -> None:
        self.storage = storage
        self.interval = interval
        self.pending: deque[Item] = deque()
        self.dropped = 0
        self.in_flight = 0  # requests running now (request_id.RequestTelemetry counts)
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def collection(self) -> AsyncCollection[dict[str, Any]]:
        return self.storage.current(TYPE)

    def emit(self, events: list[dict[str, Any]]) -> None:
        """Queue records (any thread); the flusher stores them."""
        self.pending.extend(events)
        self._trim()

    def defer(self, build: Callable[[], list[dict[str, Any]]]) -> None:
        """Queue what builds a request's records: the flusher calls it (on the loop)."""
        self.pending.append(build)
        self._trim()

    def _trim(self) -> None:
        while len(self.pending) > MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1

    # --- the requests running now ------------------------------------------------------

    def entered(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def left(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self._idle.set()

    async def _quiet(self, deadline: float) -> None:
        """Wait until no request is running, but not past ``deadline``: records are
        built and stored in the gaps between requests, so that a server with spare
        time (a clinic's) answers no later for keeping the trail; a server busy
        without a gap still stores each record at most ``MAX_DELAY`` s late."""
        left = deadline - asyncio.get_running_loop().time()
        if self.in_flight > 0 and left > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._idle.wait()
        else:
            await asyncio.sleep(0)  # one record at a time between requests

    async def start(self) -> None:
        await self.storage.ensure_type(TYPE)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task  # its batch goes back to the queue
            self._task = None
        await self.flush(wait=False)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except PyMongoError as exc:  # kept queued; retried next round
                log.warning("audit records not stored yet (%s); retrying", exc)

    async def flush(self, wait: bool = True) -> int:
        """Store everything queued now (``wait``: in the gaps between requests, at most
        ``MAX_DELAY`` s); the number stored."""
        stored = 0
        async with self._lock:
            if self.dropped:
                log.error("%d audit records dropped: MongoDB unreachable too long", self.dropped)
                self.dropped = 0
            deadline = asyncio.get_running_loop().time() + (MAX_DELAY if wait else 0.0)
            while self.pending:
                batch: list[dict[str, Any]] = []
                docs = []
                try:
                    for _ in range(min(MAX_BATCH, len(self.pending))):
                        await self._quiet(deadline)
                        if not self.pending:
                            break
                        item = self.pending.popleft()
                        for event in item() if callable(item) else (item,):
                            batch.append(event)
                            docs.append(self._document(event))
                            if len(docs) % 8 == 0:  # a request of many patients' records
                                await asyncio.sleep(0)
                    if docs:
                        await self.collection.insert_many(docs, ordered=False)
                except BulkWriteError as exc:
                    # a retried batch: records stored by the failed attempt are duplicates
                    failed = [
                        e["index"]
                        for e in exc.details.get("writeErrors", [])
                        if e.get("code") != DUPLICATE_KEY
                    ]
                    self.pending.extendleft(reversed([batch[i] for i in failed]))
                    if failed:
                        raise
                except BaseException:  # unreachable, or cancelled (stopping): kept, with
                    self.pending.extendleft(reversed(batch))  # their ids: no duplicates
                    raise
                stored += len(docs)
        return stored

    def _document(self, event: dict[str, Any]) -> dict[str, Any]:
        """The stored form of one record (its id fixed on first try, so a retried
        batch cannot store a record twice: the duplicate-key error of an
        ``ordered=False`` retry leaves the others stored)."""
        rid = event.setdefault("id", str(uuid.uuid4()))
        write = VersionWrite(
            type=TYPE,
            id=rid,
            version=1,
            last_updated=now(),
            method="POST",
            raw=None,
            previous=None,
            created=True,
        )
        stored = with_meta(event, write)
        write.raw = dumps(stored)
        index = audit_index(stored)  # the generic indexer's result, faster (index.py)
        write.sp, write.so, write.comp = index.sp, index.so, index.comp
        return write.current_document()
