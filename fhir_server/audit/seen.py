"""What one request disclosed or wrote, collected while it runs.

The request's middleware opens a ``Seen`` (``opened``); the places that hand resources
to the client (a read's body, a search or history bundle's entries) and storage's
write call ``saw``/``wrote``. A context variable carries it, so no signature changes;
outside an audited request every call is one ``ContextVar.get``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fhir_server.search.plan import Criterion, ReferenceValue

if TYPE_CHECKING:  # storage imports this module: no import back at run time
    from fhir_server.search.plan import SearchPlan
    from fhir_server.storage.documents import StoredVersion, VersionWrite

PATIENT = "Patient/"


@dataclass(slots=True)
class Seen:
    """Resources (``Type/id/_history/v`` with their patients) and the query."""

    resources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)
    query: str | None = None
    # what the search's criteria point at (reference values), and whether it has
    # criteria whose values cannot be told apart from another patient's (chains, _id)
    query_refs: set[str] = field(default_factory=set)
    query_opaque: bool = False

    def confined_to(self, patient: str) -> bool:
        """Whether the query names nothing but ``patient``: only then may its text go
        in that patient's own record (which the patient's apps can read)."""
        own = patient + "/_history/"
        return not self.query_opaque and all(
            r == patient or r.startswith(own) for r in self.query_refs
        )

    def add(self, rtype: str, rid: str, version: int, comp: tuple[str, ...] | list[str]) -> None:
        patients = tuple(comp)
        if rtype == "Patient" and f"{PATIENT}{rid}" not in patients:
            patients = (*patients, f"{PATIENT}{rid}")
        key = f"{rtype}/{rid}/_history/{version}"
        self.resources[key] = tuple(dict.fromkeys((*self.resources.get(key, ()), *patients)))
        self.patients.update(patients)


_current: ContextVar[Seen | None] = ContextVar("audit_seen", default=None)
# The writes of the running transaction, held until it commits (``staged``).
_held: ContextVar[list[tuple[VersionWrite, tuple[str, ...] | None]] | None] = ContextVar(
    "audit_held", default=None
)


@contextmanager
def opened() -> Iterator[Seen]:
    """A fresh collector for one request (reset after it: a batch entry runs as a
    nested request in the same task and must not leave its collector behind)."""
    seen = Seen()
    token = _current.set(seen)
    try:
        yield seen
    finally:
        _current.reset(token)


def saw(version: StoredVersion) -> None:
    """The client is given this version (read, vread, search or history entry)."""
    seen = _current.get()
    if seen is not None and version.raw is not None:
        seen.add(version.type, version.id, version.version, version.comp)


def wrote(write: VersionWrite, comp: tuple[str, ...] | None = None) -> None:
    """This version was written (every write path reaches storage's write). A
    deletion has no content to index: ``comp`` names the patients of what it deleted.
    Inside a transaction it counts only once the transaction commits (``staged``)."""
    held = _held.get()
    if held is not None:
        held.append((write, comp))
        return
    seen = _current.get()
    if seen is not None:
        seen.add(write.type, write.id, write.version, write.comp if comp is None else comp)


@contextmanager
def staged() -> Iterator[None]:
    """Hold the writes made inside this block and record them only if it ends without
    an exception (the transaction committed). A cancelled or failed transaction wrote
    nothing, so its record names nothing: a 10,000-entry transaction cancelled at
    shutdown once made 10,000 per-patient records of versions that were never stored."""
    if _current.get() is None:  # not an audited request: nothing to collect
        yield
        return
    held: list[tuple[VersionWrite, tuple[str, ...] | None]] = []
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)
    for write, comp in held:  # reached only when the block succeeded
        wrote(write, comp)


def retried() -> None:
    """The transaction runs again from the start: forget its earlier attempt's writes."""
    held = _held.get()
    if held is not None:
        held.clear()


def searched(query: str) -> None:
    """The search's parameters as the server understood them (GET or POST form)."""
    seen = _current.get()
    if seen is not None:
        seen.query = query


def planned(plan: SearchPlan) -> None:
    """What the parsed search names (``Seen.confined_to``)."""
    seen = _current.get()
    if seen is None:
        return
    for condition in plan.conditions:
        if not isinstance(condition, Criterion) or condition.code == "_id":
            seen.query_opaque = True
            continue
        for value in condition.values:
            if isinstance(value, ReferenceValue):
                seen.query_refs.update(value.keys)
