"""The write pipeline: one place where rules act on every write, whatever its path
(docs of the design: ../shared/docs/write-pipeline.md).

Storage calls it from ``Storage.write`` (and ``rewrite``), which every write path
reaches: REST create, update, patch and delete and their conditional forms,
transaction and batch entries (a batch entry is a REST request), the operations and
the importers. So a rule registered here is enforced on a path added tomorrow too.

For the versions one storage write produces, inside the request's MongoDB transaction:

    before_write(writes)            may refuse (raise FhirError), before anything is stored
    <the versions are stored>
    in_transaction(tx, writes)      may read/write other collections through tx.session
    after_commit(writes)            messages, put in the ``outbox`` collection in the same
                                    transaction: sent only if the write commits, never lost

A rule declares the resource types it watches; a write of another type costs one set
lookup. ``Write.previous`` is the content it replaces (read from history, one query for
all watched writes), ``Write.context`` who writes (the access token of the request).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from fhir_server.datetimes import after
from fhir_server.jsonio import load_stored
from fhir_server.service.context import request_access
from fhir_server.storage.documents import StoredVersion, VersionWrite, history_key
from fhir_server.storage.store import Session, Storage
from smart_auth.tokens import AccessToken

OUTBOX = "outbox"
DUPLICATE_KEY = 11000  # MongoDB's error code
_STAFF_USERS = ("Practitioner/", "PractitionerRole/")


@dataclass(frozen=True, slots=True)
class Acting:
    """A write the server makes for someone who holds no token: a patient's reply to a
    reminder (fhir_server/workflows/reminders/). The Provenance names them as its agent
    and the message as its source; a patient token's limits do not apply (the server
    writes)."""

    who: dict[str, Any]  # Provenance.agent.who
    source: dict[str, Any] | None = None  # Provenance.entity (role source).what


# Set around the writes the server makes for someone (see Acting); None otherwise.
request_acting: ContextVar[Acting | None] = ContextVar("request_acting", default=None)


@dataclass(frozen=True, slots=True)
class WriteContext:
    """Who writes: the request's access token (None: authorization off, or the server
    itself, e.g. an importer), and whom the server writes for (``acting``)."""

    access: AccessToken | None
    acting: Acting | None = None

    @property
    def patient_side(self) -> bool:
        """Does a patient (or an app acting for one) write, rather than staff or the
        server? A ``Patient/`` user; or a token without a staff user whose clinical
        scopes are all ``patient/`` ones (a patient-facing app)."""
        a = self.access
        if a is None:
            return False
        user = a.fhir_user or ""
        if user.startswith(("Patient/", "RelatedPerson/")):
            return True
        if user.startswith(_STAFF_USERS):
            return False
        contexts = a.scopes.contexts
        return bool(contexts) and contexts <= {"patient"}

    @property
    def agent(self) -> dict[str, Any]:
        """The agent as a Provenance.agent.who: whom the server acts for, else the
        user, else the client."""
        if self.acting is not None:
            return self.acting.who
        a = self.access
        if a is None:
            return {"display": "fhir-server"}
        if a.fhir_user:
            return {"reference": a.fhir_user}
        return {"identifier": {"system": "urn:smart:client_id", "value": a.client_id}}


@dataclass(slots=True)
class Write:
    """One new version as the rules see it. ``new`` None: a deletion; ``previous``
    None: nothing live before (a create, or a write over a deletion)."""

    type: str
    id: str
    version: int
    last_updated: datetime
    method: str
    previous: dict[str, Any] | None
    new: dict[str, Any] | None
    context: WriteContext
    rewrite: bool = False  # corrects a version written earlier in the same transaction
    source: VersionWrite | None = None  # the version being written (for ``amend``)

    @property
    def key(self) -> str:
        return f"{self.type}/{self.id}"


@dataclass(slots=True)
class Transaction:
    """What ``in_transaction`` may use: the session and the database, and ``create``
    to add a resource (a Provenance, say) to the same transaction."""

    session: Session
    storage: Storage
    render: Callable[[VersionWrite, dict[str, Any]], None]
    created: list[VersionWrite] = field(default_factory=list)
    amended: list[VersionWrite] = field(default_factory=list)

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        return self.storage.db

    def create(
        self, resource: dict[str, Any], when: datetime, resource_id: str | None = None
    ) -> VersionWrite:
        """Queue a new resource (stored after every rule has run, in one write)."""
        write = VersionWrite(
            type=resource["resourceType"],
            id=resource_id or str(uuid.uuid4()),
            version=1,
            last_updated=when,
            method="POST",
            raw=None,
            previous=None,
            created=True,
        )
        self.render(write, resource)
        self.created.append(write)
        return write

    async def claim(self, collection: str, docs: list[dict[str, Any]]) -> str | None:
        """Insert key documents (each ``_id`` unique) in this transaction: None when
        every key was free, else the first ``_id`` another write already holds. A
        concurrent transaction claiming the same key conflicts, and its retry sees it."""
        try:
            await self.db[collection].insert_many(docs, ordered=True, session=self.session)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if not errors or errors[0].get("code") != DUPLICATE_KEY:
                raise
            return str((errors[0].get("keyValue") or {}).get("_id", ""))
        return None

    def amend(self, write: Write, resource: dict[str, Any]) -> None:
        """Replace the content of the version being written (same version number): for
        what only the rule can settle, such as the batches a dispense was taken from.
        The requester's answer carries the amended content; the rules see it as a
        rewrite."""
        assert write.source is not None
        self.render(write.source, resource)
        write.new = resource
        if not any(v is write.source for v in self.amended):
            self.amended.append(write.source)

    def update(
        self, current: StoredVersion, resource: dict[str, Any], was: dict[str, Any] | None = None
    ) -> VersionWrite:
        """Queue a new version of a stored resource (a Slot's status, say). ``was``: the
        current content, when the rule has parsed it (the rules of the new version then
        need not read it again)."""
        write = VersionWrite(
            type=current.type,
            id=current.id,
            version=current.version + 1,
            last_updated=after(current.last_updated),
            method="PUT",
            raw=None,
            previous=current.version,
            prior=was,
        )
        self.render(write, resource)
        self.created.append(write)
        return write


class Rule:
    """A rule of the pipeline. Subclasses set ``types`` and override what they need."""

    types: ClassVar[frozenset[str]] = frozenset()
    # Collections the rule writes, with their indexes (created at start-up, because
    # a transaction cannot create indexes).
    collections: ClassVar[dict[str, list[IndexModel]]] = {}
    # Resource types the rule creates (their collections must exist before a transaction).
    creates: ClassVar[frozenset[str]] = frozenset()
    # A rule whose types change while the server runs (subscription matching: the types
    # of the active Subscriptions) sets ``dynamic`` and overrides ``refresh`` and
    # ``wants``; it does not get ``Write.previous`` (no history read for it).
    dynamic: ClassVar[bool] = False

    async def refresh(self) -> None:
        """Bring what ``wants`` answers up to date (called before each write)."""

    def wants(self, resource_type: str) -> bool:
        return resource_type in self.types

    async def before_write(self, writes: Sequence[Write]) -> None:
        """Refuse a write by raising FhirError."""

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        """Read and write through ``tx.session``: all or nothing with the write."""

    def after_commit(self, writes: Sequence[Write]) -> list[dict[str, Any]]:
        """Messages to deliver once the write has committed (put in the outbox)."""
        return []


class WritePipeline:
    """The registered rules; ``Storage.hook``."""

    def __init__(
        self,
        storage: Storage,
        render: Callable[[VersionWrite, dict[str, Any]], None],
        rules: Iterable[Rule],
    ) -> None:
        self.storage = storage
        self.render = render
        self.rules = list(rules)
        self.watching: dict[str, list[Rule]] = defaultdict(list)
        self.dynamic = [rule for rule in self.rules if rule.dynamic]
        for rule in self.rules:
            for t in rule.types:
                self.watching[t].append(rule)

    def _watched(self, resource_type: str) -> bool:
        return resource_type in self.watching or any(r.wants(resource_type) for r in self.dynamic)

    async def start(self) -> None:
        """Create what the rules write into (run once at start-up), all at once: each is
        a round trip, and on a new database a collection's files to create."""
        wanted: dict[str, dict[str, IndexModel]] = {
            OUTBOX: {"created": IndexModel([("created", ASCENDING)], name="created")}
        }
        for rule in self.rules:  # two rules may name the same collection and indexes
            for name, indexes in rule.collections.items():
                mine = wanted.setdefault(name, {})
                mine.update((i.document["name"], i) for i in indexes)
        types = sorted({t for rule in self.rules for t in rule.creates})
        await asyncio.gather(
            *(self._collection(name, list(indexes.values())) for name, indexes in wanted.items()),
            *(self.storage.ensure_type(t) for t in types),
        )

    async def _collection(self, name: str, indexes: list[IndexModel]) -> None:
        if indexes:
            await self.storage.db[name].create_indexes(indexes)
        else:
            await self.storage.db[name].create_index("_id")

    async def prepare(
        self, versions: Sequence[VersionWrite], session: Session, rewrite: bool = False
    ) -> _Prepared | None:
        for rule in self.dynamic:
            await rule.refresh()
        watched = [v for v in versions if self._watched(v.type)]
        if not watched:
            return None
        previous = await self._previous([v for v in watched if v.type in self.watching], session)
        context = WriteContext(request_access.get(), request_acting.get())
        writes = [
            Write(
                type=v.type,
                id=v.id,
                version=v.version,
                last_updated=v.last_updated,
                method=v.method,
                previous=v.prior
                if v.prior is not None
                else previous.get(history_key(v.type, v.id, v.previous))
                if v.previous is not None
                else None,
                new=None if v.raw is None else v.content or load_stored(v.raw),
                context=context,
                rewrite=rewrite,
                source=v,
            )
            for v in watched
        ]
        by_rule: list[tuple[Rule, list[Write]]] = []
        for rule in self.rules:
            mine = [w for w in writes if rule.wants(w.type)]
            if mine:
                await rule.before_write(mine)
                by_rule.append((rule, mine))
        return _Prepared(self, by_rule)

    async def _previous(
        self, versions: Sequence[VersionWrite], session: Session
    ) -> dict[str, dict[str, Any]]:
        keys = [
            history_key(v.type, v.id, v.previous)
            for v in versions
            if v.previous and v.prior is None
        ]
        if not keys:
            return {}
        found: dict[str, dict[str, Any]] = {}
        cursor = self.storage.history.find({"_id": {"$in": keys}}, session=session)
        async for doc in cursor:
            if doc.get("raw") is not None:
                found[doc["_id"]] = load_stored(doc["raw"])
        return found


@dataclass(slots=True)
class _Prepared:
    pipeline: WritePipeline
    by_rule: list[tuple[Rule, list[Write]]]

    async def apply(self, session: Session) -> None:
        p = self.pipeline
        tx = Transaction(session, p.storage, p.render)
        messages: list[dict[str, Any]] = []
        for rule, writes in self.by_rule:
            await rule.in_transaction(tx, writes)
            messages.extend(rule.after_commit(writes))
        if tx.amended:
            await p.storage.rewrite(tx.amended, session)
        if tx.created:
            # What rules write (a Slot's status, a Provenance, an expired hold's
            # cancellation) is the server's doing, not the requester's: the rules on
            # those writes see the server as the writer (no patient notice applies).
            reset = request_access.set(None)
            try:
                await p.storage.write(tx.created, session)
            finally:
                request_access.reset(reset)
        if messages:
            await p.storage.db[OUTBOX].insert_many(messages, session=session)
