"""Writing audit records off the request path, in batches, into their own collection.

``emit`` (a record) and ``defer`` (what builds a request's records) only append to a
deque (thread-safe: the authorization server's handlers run on worker threads), so a
request pays microseconds. A task on the app's loop drains it every ``interval``
seconds. When the server is quiet (no request for ``QUIET`` s), each record becomes a
stored AuditEvent (id, meta, search index and Patient compartments, as every resource
gets; index.py), and up to ``MAX_BATCH`` requests' records are one ``insert_many``
into the ``AuditEvent`` collection. When it is not, the requests' facts are staged in
MongoDB instead, and their records made when it is quiet again, or once ``max_lag``
old whatever the load (staging.py).

Records bypass the write pipeline (the API refuses AuditEvent writes: guard.py) and
history: each is written once and never changes, so it has one version, read from the
current collection; and system ``_history``, which sync clients page through, is not
flooded with a record of every read. What a killed process had neither stored nor
staged (at most ``interval`` seconds of requests) is lost; a clean shutdown stores
what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError

from fhir_server.audit import staging
from fhir_server.audit.events import RestRequest, rest_events
from fhir_server.audit.index import audit_index
from fhir_server.datetimes import now
from fhir_server.jsonio import dumps
from fhir_server.service.resources import with_meta
from fhir_server.storage.documents import VersionWrite
from fhir_server.storage.store import Storage

log = logging.getLogger("fhir_server.audit")
TYPE = "AuditEvent"
MAX_BATCH = 32  # queued requests per insert_many (their encoding holds the loop)
QUIET = 0.02  # seconds without a request after which records are made at once
STOP_BUDGET = 2.0  # seconds a clean stop spends making staged units into records
ADOPT_EVERY = 60.0  # seconds between looks for units whose process died
DUPLICATE_KEY = 11000
MAX_PENDING = 200_000  # beyond this (MongoDB down for long) the oldest are dropped, logged
# a record, or what reads a request's facts (recorder.Auditor: read when idle)
Item = dict[str, Any] | Callable[[], RestRequest | None]


class AuditSink:
    def __init__(self, storage: Storage, interval: float = 0.25, max_lag: float = 60.0) -> None:
        self.storage = storage
        self.interval = interval
        self.max_lag = max_lag
        # this process's staged units: (id, when due: loop time), oldest first
        self.units: deque[tuple[str, float]] = deque()
        self._unsent: list[dict[str, Any]] = []  # staged units MongoDB has not taken yet
        self._adopted_at = float("-inf")
        self.pending: deque[Item] = deque()
        self.dropped = 0
        self.in_flight = 0  # requests running now (request_id.RequestTelemetry counts)
        self.last_request = float("-inf")  # time.monotonic() of the latest start
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def collection(self) -> AsyncCollection[dict[str, Any]]:
        return self.storage.current(TYPE)

    def emit(self, events: list[dict[str, Any]]) -> None:
        """Queue records (any thread); the flusher stores them."""
        self.pending.extend(events)
        self._trim()

    def defer(self, read: Callable[[], RestRequest | None]) -> None:
        """Queue what reads a request's facts: the flusher calls it (on the loop)."""
        self.pending.append(read)
        self._trim()

    def _trim(self) -> None:
        while len(self.pending) > MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1

    # --- the requests running now ------------------------------------------------------

    def entered(self) -> None:
        self.in_flight += 1
        self.last_request = time.monotonic()

    def left(self) -> None:
        self.in_flight -= 1

    def quiet(self) -> bool:
        """No request running, nor one started within ``QUIET`` s: making records now
        delays no one (a clinic's server, most of the time)."""
        return self.in_flight <= 0 and time.monotonic() - self.last_request >= QUIET

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

    @property
    def staged(self) -> AsyncCollection[dict[str, Any]]:
        return self.storage.db[staging.COLLECTION]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            try:
                if loop.time() - self._adopted_at >= ADOPT_EVERY:
                    await self._adopt()
                await self.flush()
            except PyMongoError as exc:  # kept queued; retried next round
                log.warning("audit records not stored yet (%s); retrying", exc)
            except Exception:  # a fault of ours must not end the trail for good
                log.exception("audit records not stored this round")

    async def flush(self, wait: bool = True) -> int:
        """Store what is queued now: as records while the server is quiet, else as
        facts (staged); then make staged units into records while it is quiet, or when
        they are due. ``wait`` False (stopping): records at once, and staged units for
        at most ``STOP_BUDGET`` s. The number of records stored."""
        async with self._lock:
            if self.dropped:
                log.error("%d audit records dropped: MongoDB unreachable too long", self.dropped)
                self.dropped = 0
            await self._send_units()
            stored = await self._store_pending(wait)
            stored += await self._make_units(wait)
        return stored

    # --- records now --------------------------------------------------------------------

    async def _store_pending(self, wait: bool) -> int:
        """The queued requests' records, one at a time between requests; if requests
        come meanwhile (``wait``), the rest are staged."""
        stored = 0
        while self.pending:
            if wait and not self.quiet():  # what came meanwhile waits for the next round
                await self._stage()
                await self._send_units()
                break
            batch: list[dict[str, Any]] = []
            docs = []
            try:
                for _ in range(min(MAX_BATCH, len(self.pending))):
                    if wait and not self.quiet():
                        break
                    for event in _events(_read(self.pending.popleft())):
                        batch.append(event)
                        docs.append(self._document(event))
                    await asyncio.sleep(0)  # a request arriving meanwhile goes first
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

    # --- facts now, records later (staging.py) ------------------------------------------

    async def _stage(self) -> None:
        """The queued requests' facts, ``staging.UNIT`` per unit, to be sent: a few at
        a time, so that the work fills the loop's waits on MongoDB rather than holding
        the next request back (at concurrency 1, every request)."""
        facts = []
        try:
            for n in range(len(self.pending)):
                got = _read(self.pending.popleft())
                if got is not None:
                    facts.append(staging.fact(got))
                if n % 8 == 7:
                    await asyncio.sleep(0)
        finally:  # cancelled (stopping) too: what was taken is sent by the stop's flush
            lease = now() + timedelta(seconds=self.max_lag) + staging.LEASE_MARGIN
            for i in range(0, len(facts), staging.UNIT):
                self._unsent.append(staging.unit(facts[i : i + staging.UNIT], lease))

    async def _send_units(self) -> None:
        """Store the staged units not stored yet (kept, with their ids, until MongoDB
        has them all: a retry stores none twice)."""
        if not self._unsent:
            return
        await _insert_once(self.staged, self._unsent)
        due = asyncio.get_running_loop().time() + self.max_lag
        self.units.extend((u["_id"], due) for u in self._unsent)
        self._unsent = []

    async def _make_units(self, wait: bool) -> int:
        """This process's staged units made into records, oldest first: while no
        request runs, or once due (``wait`` False: all, for at most ``STOP_BUDGET`` s,
        the rest left to the next start or another process)."""
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + STOP_BUDGET
        stored = 0
        while self.units:
            unit_id, due = self.units[0]
            if wait and not self.quiet() and loop.time() < due:
                break
            if not wait and loop.time() > stop_at:
                break
            found = await self.staged.find_one({"_id": unit_id})
            if found is not None:  # else another process made it (after our lease)
                stored += await self._make(found)
                await self.staged.delete_one({"_id": unit_id})
            self.units.popleft()
        if not wait and self.units:  # leased to no one: the next to look takes them
            ids = [u for u, _ in self.units]
            await self.staged.update_many({"_id": {"$in": ids}}, {"$set": {"lease": now()}})
            self.units.clear()
        return stored

    async def _make(self, unit: dict[str, Any]) -> int:
        """One unit's records, stored; their ids derived from the unit's."""
        docs = []
        for n, stored_fact in enumerate(unit["facts"]):
            for k, event in enumerate(_events(staging.unfact(stored_fact))):
                event["id"] = staging.record_id(unit["_id"], n, k)
                docs.append(self._document(event))
            await asyncio.sleep(0)  # a request arriving meanwhile goes first
        if docs:
            await _insert_once(self.collection, docs)  # made before: a process killed after
        return len(docs)

    async def _adopt(self) -> None:
        """Take the units whose lease ran out (their process died, or stopped with
        units left), due at once: they are late already."""
        loop = asyncio.get_running_loop()
        self._adopted_at = loop.time()
        lease = now() + timedelta(seconds=self.max_lag) + staging.LEASE_MARGIN
        expired = self.staged.find({"lease": {"$lt": now()}}, {"lease": 1}).sort("lease")
        async for found in expired.limit(1000):
            taken = await self.staged.update_one(
                {"_id": found["_id"], "lease": found["lease"]}, {"$set": {"lease": lease}}
            )
            if taken.modified_count:
                self.units.append((found["_id"], loop.time()))

    def _document(self, event: dict[str, Any]) -> dict[str, Any]:
        """The stored form of one record (its id fixed on first try, so a retried
        batch cannot store a record twice: the duplicate-key error of an
        ``ordered=False`` retry leaves the others stored)."""
        rid = event.get("id") or event.setdefault("id", str(uuid.uuid4()))
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


def _read(item: Item) -> RestRequest | dict[str, Any] | None:
    """A queued item's request (read from its scope now) or record."""
    return item() if callable(item) else item


def _events(got: RestRequest | dict[str, Any] | None) -> list[dict[str, Any]]:
    """The records of a request (or the record itself); a fault is logged, not raised:
    one malformed request must not hold back everyone else's records."""
    if got is None:
        return []
    if isinstance(got, dict):
        return [got]
    try:
        return rest_events(got)
    except Exception:
        log.exception("the audit record of %s %s was not made", got.method, got.path)
        return []


async def _insert_once(collection: AsyncCollection[dict[str, Any]], docs: list[Any]) -> None:
    """Insert documents whose ids are fixed, some perhaps stored by an earlier try: only
    an error other than their duplicate key is one."""
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise
