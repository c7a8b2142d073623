"""Writing audit records off the request path, in batches, into their own collection.

``emit`` only appends to a deque (thread-safe: the authorization server's handlers run
on worker threads), so a request pays microseconds. A task on the app's loop drains
it every ``interval`` seconds: each record becomes a stored AuditEvent (id, meta, search
index and Patient compartments, as every resource gets; index.py) and a batch is one
``insert_many`` into the ``AuditEvent`` collection.

Records bypass the write pipeline (the API refuses AuditEvent writes: guard.py) and
history: each is written once and never changes, so it has one version, read from the
current collection; and system ``_history``, which sync clients page through, is not
flooded with a record of every read. What a killed process had not flushed (at most
``interval`` seconds of records) is lost; a clean shutdown flushes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
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
MAX_BATCH = 200  # records per insert_many
STEP = 8  # records rendered between two yields to the loop (~0.5 ms): no request waits long
DUPLICATE_KEY = 11000
MAX_PENDING = 200_000  # beyond this (MongoDB down for long) the oldest are dropped, logged


class AuditSink:
    def __init__(self, storage: Storage, interval: float = 0.25) -> None:
        self.storage = storage
        self.interval = interval
        self.pending: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def collection(self) -> AsyncCollection[dict[str, Any]]:
        return self.storage.current(TYPE)

    def emit(self, events: list[dict[str, Any]]) -> None:
        """Queue records (any thread); the flusher stores them."""
        self.pending.extend(events)
        while len(self.pending) > MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1

    async def start(self) -> None:
        await self.storage.ensure_type(TYPE)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except PyMongoError as exc:  # kept queued; retried next round
                log.warning("audit records not stored yet (%s); retrying", exc)

    async def flush(self) -> int:
        """Store everything queued now; the number stored."""
        stored = 0
        async with self._lock:
            if self.dropped:
                log.error("%d audit records dropped: MongoDB unreachable too long", self.dropped)
                self.dropped = 0
            while self.pending:
                batch = [self.pending.popleft() for _ in range(min(MAX_BATCH, len(self.pending)))]
                docs = []
                for i, event in enumerate(batch, 1):
                    docs.append(self._document(event))
                    if i % STEP == 0:
                        await asyncio.sleep(0)
                try:
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
                except PyMongoError:
                    self.pending.extendleft(reversed(batch))  # ids kept: no duplicates
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
