"""Storage on MongoDB through PyMongo's native async API."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import pymongo
from bson.timestamp import Timestamp
from pymongo import (
    ASCENDING,
    DESCENDING,
    AsyncMongoClient,
    IndexModel,
    InsertOne,
    ReplaceOne,
    UpdateOne,
)
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    DuplicateKeyError,
    NetworkTimeout,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import Nearest, PrimaryPreferred, SecondaryPreferred
from pymongo.write_concern import WriteConcern

from fhir_server.audit import seen
from fhir_server.audit.indexes import AUDIT_INDEXES
from fhir_server.resource_types import resource_types
from fhir_server.shared_read import SharedRead
from fhir_server.storage.documents import HISTORY, StoredVersion, VersionWrite, history_key

T = TypeVar("T")
Session = AsyncClientSession
log = logging.getLogger(__name__)

# Writes are acknowledged by a majority and journaled: a 201 means the version survives
# a crash or a failover, never "accepted but lost".
_WRITE_CONCERN = WriteConcern(w="majority", j=True)
_MAX_ATTEMPTS = 20
# The longest a commit whose outcome is unknown is looked up afterwards (``_settle``;
# at most the transaction's own time again): a new primary is usually elected within
# MongoDB's 10 s election timeout plus a little.
SETTLE_SECONDS = 10.0
# FHIR_READ_PREFERENCE: where searches may read. A secondary further behind than this
# (MongoDB's estimate; 90 s is its smallest allowed value) is not chosen: a causal read
# there would wait for it to catch up.
MAX_STALENESS_SECONDS = 90
# Where a search learns the majority commit point (``Storage._acknowledged``).
_NEAREST_PRIMARY = PrimaryPreferred()
READ_PREFERENCES = {
    "secondaryPreferred": SecondaryPreferred(max_staleness=MAX_STALENESS_SECONDS),
    "nearest": Nearest(max_staleness=MAX_STALENESS_SECONDS),
}


_HISTORY_INDEXES = [
    IndexModel([("lu", DESCENDING), ("_id", DESCENDING)], name="system_history"),
    IndexModel([("t", ASCENDING), ("lu", DESCENDING), ("_id", DESCENDING)], name="type_history"),
    IndexModel(
        [("t", ASCENDING), ("id", ASCENDING), ("lu", DESCENDING), ("_id", DESCENDING)],
        name="instance_history",
    ),
]
HISTORY_INDEX_NAMES = frozenset(i.document["name"] for i in _HISTORY_INDEXES)  # health.py
# Every search parameter's index values and sort keys are covered by one wildcard
# index, so no search parameter needs a collection scan; compartment membership and
# lastUpdated get their own.
_CURRENT_INDEXES = [
    IndexModel([("$**", ASCENDING)], name="search", wildcardProjection={"sp": 1}),
    IndexModel([("comp", ASCENDING)], name="compartment"),
    IndexModel([("lu", DESCENDING)], name="last_updated"),
]
# Types with their own index sets instead: the audit trail (fhir_server/audit/indexes.py)
_TYPE_INDEXES = {"AuditEvent": AUDIT_INDEXES}
# kept too: the audit records' TTL index (fhir_server/audit/retention.py)
_KEPT_INDEXES = {"_id_", "audit_retention"}


# Types whose records are written once, outside history (the audit trail,
# fhir_server/audit/sink.py): a version is read from the current collection.
SINGLE_VERSION_TYPES = frozenset({"AuditEvent"})
_RESOURCE_ONLY = {"sp": 0, "so": 0}  # comp: the patients a read discloses (audit)


class ConcurrentModification(Exception):
    """The version a write was based on is no longer current; the caller retries."""


@dataclass(frozen=True, slots=True)
class HistoryCursor:
    """Keyset position in a history listing ordered by (lastUpdated, key) descending."""

    last_updated: datetime
    key: str


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    type: str | None = None
    id: str | None = None
    since: datetime | None = None
    # _at: versions current at some point in [at_low, at_high)
    at_low: datetime | None = None
    at_high: datetime | None = None

    def filter(self) -> dict[str, Any]:
        f: dict[str, Any] = {}
        if self.type is not None:
            f["t"] = self.type
        if self.id is not None:
            f["id"] = self.id
        lu: dict[str, Any] = {}
        if self.since is not None:
            lu["$gte"] = self.since
        if self.at_high is not None:
            lu["$lt"] = self.at_high
            f["$or"] = [{"ut": None}, {"ut": {"$gt": self.at_low}}]
        if lu:
            f["lu"] = lu
        return f


class PreparedWrites(Protocol):
    async def apply(self, session: Session) -> None:
        """Run after the versions are stored, in the same transaction."""


class WriteHook(Protocol):
    """What storage calls on every write (the write pipeline,
    fhir_server/workflows/pipeline.py): storage is the one place every write path
    (REST, conditional, transaction, batch, importers) goes through, so a rule hooked
    here cannot be missed by a new path. Storage itself knows nothing of the rules."""

    async def prepare(
        self, writes: Sequence[VersionWrite], session: Session, rewrite: bool = False
    ) -> PreparedWrites | None:
        """Before the versions are stored (may refuse by raising); None: nothing to do.
        ``rewrite``: the versions correct ones written earlier in the transaction."""


class WriteObserver(Protocol):
    """Told, in this process, when a transaction starts writing one of ``types`` and
    when that transaction has ended (committed or not): for in-process caches of what
    those types hold (terminology/freshness.py), which must not be refilled with what a
    concurrent request reads before the commit."""

    types: frozenset[str]

    def writing(self) -> None: ...

    def written(self) -> None: ...


# The observers told of the running transaction's writes (``Storage.transaction``).
_TOLD: contextvars.ContextVar[list[WriteObserver] | None] = contextvars.ContextVar(
    "told", default=None
)


class CommitOutcomeUnknown(PyMongoError):
    """A commit was sent, and neither its success nor its failure could be learnt in
    time (the election outlasted the transaction's time and the look-up after it): the
    writes may or may not be stored. Never reported as a failure (the API answers 504
    and says so), since telling the client to retry could store them twice."""


# What the running transaction attempt wrote: its history documents by key, to look
# one up when the commit's outcome is unknown (``Storage._settle``).
_WRITTEN: contextvars.ContextVar[dict[str, dict[str, Any]] | None] = contextvars.ContextVar(
    "written", default=None
)


@dataclass(slots=True)
class _Attempt:
    """One run of ``with_transaction``: whether its callback returned (so the commit
    was sent), with what, and what it wrote."""

    committing: bool = False
    result: Any = None
    reruns: int = 0  # after the primary went away mid-transaction
    written: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Unreachable(Exception):
    """Carries a connection failure out of ``with_transaction`` unretried."""

    def __init__(self, error: ConnectionFailure) -> None:
        super().__init__(str(error))
        self.error = error


class Storage:
    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        database: str,
        *,
        transaction_timeout: float | None = None,
        read_preference: str = "primary",
    ) -> None:
        """``transaction_timeout``: the longest a transaction may take, retries included
        (None: PyMongo's 120 s retry limit). ``read_preference``: where searches read
        (``searched``), "primary" or a key of READ_PREFERENCES."""
        self.client = client
        self.transaction_timeout = transaction_timeout
        self.db = client.get_database(
            database, write_concern=_WRITE_CONCERN, read_concern=ReadConcern("majority")
        )
        self.search_db = self.db
        if read_preference != "primary":
            self.search_db = client.get_database(
                database,
                write_concern=_WRITE_CONCERN,
                read_concern=ReadConcern("majority"),
                read_preference=READ_PREFERENCES[read_preference],
            )
        # The newest operation and cluster times of this process's committed writes:
        # where a search's causal session starts at the least (``reading``).
        self._operation_time: Timestamp | None = None
        self._cluster_time: Mapping[str, Any] | None = None
        # The ``hello`` a search's session starts from: one at a time, shared by the
        # searches that start while one is in flight.
        self._hello: SharedRead[dict[str, Any]] = SharedRead(self._send_hello)
        self.history: AsyncCollection[dict[str, Any]] = self.db[HISTORY]
        self._ready: set[str] = set()
        self.hook: WriteHook | None = None
        self.observers: list[WriteObserver] = []

    def current(self, resource_type: str) -> AsyncCollection[dict[str, Any]]:
        return self.db[resource_type]

    async def ensure_indexes(self) -> None:
        """Create the indexes of history and of every type that already has a collection
        (idempotent; run at start-up, so changed index definitions apply on restart).
        Types never written yet get theirs on first write (``ensure_type``): a fresh
        database then starts in milliseconds instead of creating 146 collections."""
        await self.history.create_indexes(_HISTORY_INDEXES)
        existing = set(await self.db.list_collection_names())
        await asyncio.gather(*(self.ensure_type(t) for t in resource_types() if t in existing))

    async def ensure_type(self, resource_type: str) -> None:
        if resource_type in self._ready:
            return
        # create_indexes creates the collection too, and is a no-op when both exist
        # (so concurrent workers may race here harmlessly).
        collection = self.current(resource_type)
        indexes = _TYPE_INDEXES.get(resource_type, _CURRENT_INDEXES)
        kept = _KEPT_INDEXES | {i.document["name"] for i in indexes}
        await collection.create_indexes(indexes)
        async for index in await collection.list_indexes():
            if index["name"] not in kept:  # an index this version dropped
                await collection.drop_index(index["name"])
        self._ready.add(resource_type)

    # --- reads -------------------------------------------------------------------------

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Session | None]:
        """The session a search reads in. With the primary (the default): none, reads
        are as they always were. With secondaries allowed: a causally consistent
        session that starts at the primary's majority commit point, so it sees every
        write acknowledged before the search began, through any API process or worker
        (a member that has not applied them yet waits until it has: readConcern
        afterClusterTime), and a client reads its own writes."""
        if self.search_db is self.db:
            yield None
            return
        async with self.client.start_session(causal_consistency=True) as session:
            operation_time, cluster_time = await self._acknowledged()
            if cluster_time is not None:
                session.advance_cluster_time(cluster_time)
            if operation_time is not None:
                session.advance_operation_time(operation_time)
            yield session

    async def _acknowledged(self) -> tuple[Timestamp | None, Mapping[str, Any] | None]:
        """(operation time, cluster time) at or after every acknowledged write: the
        majority commit point from a ``hello`` (one small round trip, on the primary;
        on a secondary while there is none, its view of that point). Never before the
        newest write this process committed, which also stands in when no member
        answers or reports one (a ``mongos``)."""
        operation_time, cluster_time = self._operation_time, self._cluster_time
        try:
            reply = await self._hello.get()
        except PyMongoError as exc:
            log.info("searching from this process's own writes: %s", exc)
            return operation_time, cluster_time
        majority = reply.get("lastWrite", {}).get("majorityOpTime", {}).get("ts")
        if not isinstance(majority, Timestamp):
            majority = None
        return _later(operation_time, majority), _later_cluster(
            cluster_time, reply.get("$clusterTime")
        )

    async def _send_hello(self) -> dict[str, Any]:
        return await self.client.admin.command("hello", read_preference=_NEAREST_PRIMARY)

    def searched(self, resource_type: str, session: Session | None) -> AsyncCollection[Any]:
        """The collection a search reads ``resource_type`` from in ``session``: the
        members FHIR_READ_PREFERENCE allows in a session from ``reading``; the primary
        with no session or inside a transaction (a write's own conditions)."""
        if session is None or session.in_transaction:
            return self.current(resource_type)
        return self.search_db[resource_type]

    def _committed(self, session: Session) -> None:
        """Move the searches' starting point past a write this process committed."""
        if self.search_db is self.db:
            return
        self._operation_time = _later(self._operation_time, session.operation_time)
        self._cluster_time = _later_cluster(self._cluster_time, session.cluster_time)

    async def newest_version(self, resource_types: Iterable[str]) -> tuple[Any, ...] | None:
        """The newest version of any of ``resource_types`` anywhere, as (lastUpdated,
        history key): what caches derived from stored resources of those types (value
        set members, compiled profiles) compare to learn of any process's writes. The
        types' ``type_history`` ranges are merged (SORT_MERGE): one round trip, one index
        key examined, no document read."""
        doc = await self.history.find_one(
            {"t": {"$in": list(resource_types)}},
            {"lu": 1},
            sort=[("lu", -1), ("_id", -1)],
            hint="type_history",  # never system_history: newer versions of other types
        )
        return None if doc is None else (doc["lu"], doc["_id"])

    async def read_current(
        self, resource_type: str, resource_id: str, session: Session | None = None
    ) -> StoredVersion | None:
        doc = await self.current(resource_type).find_one(
            {"_id": resource_id}, _RESOURCE_ONLY, session=session
        )
        return StoredVersion.from_current(resource_type, doc) if doc else None

    async def read_many(
        self, resource_type: str, resource_ids: Sequence[str], session: Session | None = None
    ) -> list[StoredVersion]:
        """Current versions (deleted ones included) of several resources, one query."""
        cursor = self.current(resource_type).find(
            {"_id": {"$in": list(resource_ids)}}, _RESOURCE_ONLY, session=session
        )
        return [StoredVersion.from_current(resource_type, d) async for d in cursor]

    async def read_version(
        self,
        resource_type: str,
        resource_id: str,
        version: int,
        session: Session | None = None,
    ) -> StoredVersion | None:
        if resource_type in SINGLE_VERSION_TYPES:  # no history documents: the current one
            current = await self.read_current(resource_type, resource_id, session)
            return current if current is not None and current.version == version else None
        doc = await self.history.find_one(
            {"_id": history_key(resource_type, resource_id, version)}, session=session
        )
        return StoredVersion.from_history(doc) if doc else None

    async def find_current(
        self,
        resource_type: str,
        query: dict[str, Any],
        limit: int,
        session: Session | None = None,
    ) -> list[StoredVersion]:
        """Live (not deleted) resources matching an index query, at most ``limit``."""
        cursor = self.current(resource_type).find(
            {**query, "del": False}, _RESOURCE_ONLY, limit=limit, session=session
        )
        return [StoredVersion.from_current(resource_type, d) async for d in cursor]

    async def history_page(
        self,
        query: HistoryQuery,
        count: int,
        after: HistoryCursor | None = None,
        before: HistoryCursor | None = None,
    ) -> list[StoredVersion]:
        """Up to ``count`` versions, newest first, strictly after/before a cursor."""
        f = query.filter()
        sort = DESCENDING
        if after is not None:
            f = {"$and": [f, _keyset(after, "$lt")]}
        elif before is not None:
            f = {"$and": [f, _keyset(before, "$gt")]}
            sort = ASCENDING
        cursor = self.history.find(f, sort=[("lu", sort), ("_id", sort)], limit=count)
        docs = [StoredVersion.from_history(d) async for d in cursor]
        if before is not None:
            docs.reverse()
        return docs

    async def history_count(self, query: HistoryQuery) -> int:
        return await self.history.count_documents(query.filter())

    # --- writes ------------------------------------------------------------------------

    async def transaction(
        self, fn: Callable[[Session], Awaitable[T]], types: Sequence[str] = ()
    ) -> T:
        """Run ``fn`` in a multi-document transaction, retrying it from the start on
        write conflicts and on :class:`ConcurrentModification` (its reads are redone).
        ``types`` are the resource types it may write (their collections must exist)."""
        for t in types:
            await self.ensure_type(t)
        told: list[WriteObserver] = []
        reset = _TOLD.set(told)
        try:
            with seen.staged():  # the audit record names the versions only once committed
                return await self._transaction(fn)
        finally:
            _TOLD.reset(reset)
            for observer in told:
                observer.written()

    async def _transaction(self, fn: Callable[[Session], Awaitable[T]]) -> T:
        attempt = _Attempt()

        async def unless_unreachable(session: Session) -> T:
            # with_transaction retries a transaction that could not reach the server
            # (a TransientTransactionError) for up to 120 s: a request would hang that
            # long while mongod is down. The server was already waited for
            # (serverSelectionTimeoutMS, or a refused connection): answer 503 now.
            # Write conflicts are not connection failures and are still retried.
            # Nothing is committed before the callback returns, so 503 is the truth.
            # One exception: the primary went away under a running transaction (a
            # reset connection, "not primary" after a step-down), not a failed wait for
            # one. Running it again (with_transaction does) waits at most one server
            # selection for the next primary, which a step-down has ready in a second.
            attempt.committing = False
            attempt.written.clear()
            seen.retried()
            try:
                result = await fn(session)
            except ConnectionFailure as exc:
                if (
                    attempt.reruns < 1
                    and not isinstance(exc, ServerSelectionTimeoutError)
                    and exc.has_error_label("TransientTransactionError")
                ):
                    attempt.reruns += 1
                    raise
                raise _Unreachable(exc) from exc
            attempt.result, attempt.committing = result, True
            return result

        for retry in range(_MAX_ATTEMPTS):
            attempt = _Attempt()
            written = _WRITTEN.set(attempt.written)
            try:
                async with self.client.start_session() as session:
                    unknown = await self._attempt(session, unless_unreachable, attempt)
                    self._committed(session)  # committed, or perhaps (then harmless)
                    if unknown is None:
                        return attempt.result  # type: ignore[no-any-return]
                    # Never hand this session out again: it is killed below.
                    _retire(session)
                    session_id = session.session_id
                return await self._settle(attempt, session_id, unknown)  # type: ignore[no-any-return]
            except _Unreachable as unreachable:
                raise unreachable.error from None
            except (ConcurrentModification, DuplicateKeyError):
                if retry == _MAX_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.002 * (retry + 1))
            finally:
                _WRITTEN.reset(written)
        raise AssertionError("unreachable")

    async def _attempt(
        self,
        session: Session,
        callback: Callable[[Session], Awaitable[Any]],
        attempt: _Attempt,
    ) -> PyMongoError | None:
        """Run the transaction (``attempt.result``); None when it committed, the error
        when its commit was sent and its outcome is unknown; raises otherwise."""
        try:
            # Not pymongo.timeout: under it every retryable operation (the abort of a
            # failed transaction too) retries until the deadline.
            # A commit that failed over is retried by with_transaction (its outcome is
            # learnt from the new primary: committed, or NoSuchTransaction and the
            # whole transaction runs again) until this deadline.
            async with asyncio.timeout(self.transaction_timeout):
                await session.with_transaction(callback, write_concern=_WRITE_CONCERN)
            return None
        except TimeoutError:
            timeout = NetworkTimeout(
                f"the transaction did not finish within {self.transaction_timeout} s"
            )
            if attempt.committing:
                return timeout
            raise timeout from None
        except PyMongoError as exc:
            if attempt.committing and exc.has_error_label("UnknownTransactionCommitResult"):
                return exc
            raise

    async def _settle(
        self, attempt: _Attempt, session_id: Mapping[str, Any], error: PyMongoError
    ) -> Any:
        """The commit was sent but its outcome is unknown: the primary died with it and
        no new one confirmed it within the transaction's time, or its answers were lost.
        Kill the session first (a primary that is still alive aborts the transaction if
        it did not commit, rather than holding its locks until it expires), then read
        one version it wrote back, linearizably (on a primary, reflecting every
        majority-acknowledged write): the client is told success only if it committed,
        and 503 only if not."""
        try:
            with pymongo.timeout(self.client.options.server_selection_timeout):
                await self.client.admin.command("killSessions", [session_id])
        except PyMongoError as exc:  # no primary yet, say: the look-up still decides
            log.info("could not kill the session of an unknown commit: %s", exc)
        if not attempt.written:  # nothing to look for (no resource versions written)
            raise CommitOutcomeUnknown(f"the commit's outcome is unknown: {error}") from error
        key, mine = next(iter(attempt.written.items()))
        history = self.db.get_collection(HISTORY, read_concern=ReadConcern("linearizable"))
        budget = min(self.transaction_timeout or SETTLE_SECONDS, SETTLE_SECONDS)
        deadline = asyncio.get_running_loop().time() + budget
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                with pymongo.timeout(max(left, 0.001)):
                    found = await history.find_one({"_id": key}, {"lu": 1, "raw": 1})
                break
            except PyMongoError as exc:
                if asyncio.get_running_loop().time() >= deadline:
                    log.warning("commit outcome unknown (%s; look-up: %s)", error, exc)
                    raise CommitOutcomeUnknown(
                        f"the commit's outcome is unknown: {error}"
                    ) from error
                await asyncio.sleep(0.1)
        if found is not None and found.get("lu") == mine["lu"] and found.get("raw") == mine["raw"]:
            log.warning("commit outcome was unknown (%s): it committed (%s)", error, key)
            return attempt.result
        log.warning("commit outcome was unknown (%s): it did not commit (%s)", error, key)
        # a connection failure, whatever the commit's error was: the API's 503
        raise AutoReconnect(f"the transaction did not commit: {error}") from error

    async def claim(self, keys: Sequence[str], session: Session) -> None:
        """Serialise transactions that decide on the same keys (e.g. conditional
        criteria): both write these documents, so one of them conflicts and is retried,
        and its re-run sees what the other committed. One round trip for all keys."""
        if keys:
            await self.db["locks"].bulk_write(
                [UpdateOne({"_id": k}, {"$inc": {"n": 1}}, upsert=True) for k in keys],
                session=session,
            )

    async def write(self, writes: Sequence[VersionWrite], session: Session) -> None:
        """Apply new versions inside ``session``'s transaction, in bulk: one
        insert_many or bulk_write per collection, however many resources.

        Each write replaces the current document only if it is still at ``previous``
        (compare-and-set), records the version in history, and closes the previous
        history version's validity interval (``ut``) for ``_at`` queries.

        The write pipeline (``hook``) runs around it, in the same transaction.
        """
        self._tell(writes)
        prepared = await self.hook.prepare(writes, session) if self.hook else None
        for w in writes:
            seen.wrote(w)  # the request's audit record lists what it wrote
        created: dict[str, list[dict[str, Any]]] = defaultdict(list)
        replaced: dict[str, list[ReplaceOne[dict[str, Any]]]] = defaultdict(list)
        closed: list[UpdateOne] = []
        for w in writes:
            if w.previous is None:
                created[w.type].append(w.current_document())
                continue
            replaced[w.type].append(
                ReplaceOne({"_id": w.id, "v": w.previous}, w.current_document())
            )
            closed.append(
                UpdateOne(
                    {"_id": history_key(w.type, w.id, w.previous)},
                    {"$set": {"ut": w.last_updated}},
                )
            )
        for t, docs in created.items():
            await self.current(t).insert_many(docs, session=session)
        for t, ops in replaced.items():
            result = await self.current(t).bulk_write(ops, session=session)
            if result.matched_count != len(ops):
                raise ConcurrentModification(t)
        versions = [w.history_document() for w in writes]
        _remember(versions)
        if closed:  # one round trip: close the replaced versions, add the new ones
            inserts = [InsertOne(d) for d in versions]
            await self.history.bulk_write([*closed, *inserts], session=session)
        else:
            await self.history.insert_many(versions, session=session)
        if prepared is not None:
            await prepared.apply(session)

    def _tell(self, writes: Sequence[VersionWrite]) -> None:
        """Tell the observers of these types, once per transaction, that it writes them."""
        if not self.observers:
            return
        told = _TOLD.get()
        for observer in self.observers:
            if told is not None and observer in told:
                continue
            if any(w.type in observer.types for w in writes):
                observer.writing()
                if told is None:  # not in ``transaction``: no end to wait for
                    observer.written()
                else:
                    told.append(observer)

    async def rewrite(self, writes: Sequence[VersionWrite], session: Session) -> None:
        """Replace versions written earlier in the same transaction (same version
        number): for content that could only be settled after the writes. The write
        pipeline sees the corrected content as well (its rules are idempotent for a
        version they have seen)."""
        self._tell(writes)
        prepared = await self.hook.prepare(writes, session, True) if self.hook else None
        by_type: dict[str, list[VersionWrite]] = defaultdict(list)
        for w in writes:
            by_type[w.type].append(w)
        for t, group in by_type.items():
            await self.current(t).bulk_write(
                [ReplaceOne({"_id": w.id, "v": w.version}, w.current_document()) for w in group],
                session=session,
            )
        versions = [w.history_document() for w in writes]
        _remember(versions)
        await self.history.bulk_write(
            [ReplaceOne({"_id": v["_id"]}, v) for v in versions], session=session
        )
        if prepared is not None:
            await prepared.apply(session)


def _later(a: Timestamp | None, b: Timestamp | None) -> Timestamp | None:
    """The later of two operation times (None: unknown)."""
    return a if b is None or (a is not None and a >= b) else b


def _later_cluster(
    a: Mapping[str, Any] | None, b: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """The later of two cluster times (``$clusterTime`` documents)."""
    return a if b is None or (a is not None and a["clusterTime"] >= b["clusterTime"]) else b


def _retire(session: Session) -> None:
    """Keep PyMongo from reusing the session's server-side id for another transaction
    (it pools them), since ``_settle`` kills that id. The dirty mark is PyMongo's own,
    set when a network error may have left the session in an unknown state."""
    server_session = getattr(session, "_server_session", None)
    if server_session is not None:
        server_session.mark_dirty()


def _remember(versions: Sequence[dict[str, Any]]) -> None:
    """Note the history documents the running transaction attempt writes (``_settle``)."""
    written = _WRITTEN.get()
    if written is not None:
        for v in versions:
            written[v["_id"]] = v


def _keyset(cursor: HistoryCursor, op: str) -> dict[str, Any]:
    return {
        "$or": [
            {"lu": {op: cursor.last_updated}},
            {"lu": cursor.last_updated, "_id": {op: cursor.key}},
        ]
    }
