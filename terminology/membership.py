"""The members of the value sets bound in the R4 base definitions, cached per process
for the validator's binding checks (fhir_server/validation/bindings.py).

Validation runs in the CPU pool (a small body's on the loop) and must not wait on
MongoDB for each code, so it reads a ``Terminology`` snapshot: value set url -> its
members (system, code, displays), and the code systems held. A value set is expanded
(valueset.py's evaluation, over the concept store) the first time a validation meets it;
until then that validation notes it as missing and the caller loads it and validates
again. So a process only ever holds the few dozen value sets its resources use, and
never expands one on the hot path.

The snapshot is dropped when a CodeSystem or ValueSet is written by any process: each
``context()`` reads the newest such version in ``history`` (one indexed lookup, with
``type_history``; validations that start while one is in flight share the next,
fhir_server/shared_read.py), and a different one starts a new, empty snapshot. A write that
commits after a later-stamped one went unseen would be missed by that check, so a
snapshot is also dropped after ``MAX_AGE`` seconds.

A value set that is not stored, cannot be evaluated (a code system the server does not
hold, an unsupported filter) or has more than ``max_expansion`` members (SNOMED CT and
LOINC value sets, which R4 binds as example or preferred almost everywhere) maps to
None: not checked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from pymongo.errors import PyMongoError

from fhir_server.outcome import FhirError
from fhir_server.search.values import SEP
from fhir_server.shared_read import SharedRead
from fhir_server.storage import Storage
from fhir_server.validation.bindings import BindingContext, Terminology, ValueSetContent
from terminology.concepts import ConceptStore, ensure_indexes
from terminology.resolve import Resolver
from terminology.valueset import Options, ValueSetOperations

MAX_AGE = 120.0  # seconds a snapshot is trusted without a newer stamp
WATCHED = ["CodeSystem", "ValueSet"]
_ALL: dict[str, dict[str, Any]] = {"ValueSet": {}, "CodeSystem": {}}  # no policy filter


class Membership:
    """One process's snapshot of the bound value sets (see the module docstring)."""

    def __init__(self, storage: Storage, max_expansion: int = 10_000) -> None:
        self.storage = storage
        resolver = Resolver(storage)
        self.valuesets = ValueSetOperations(resolver, ConceptStore(storage.db), max_expansion)
        self.resolver = resolver
        self.max_expansion = max_expansion
        self.snapshot = Terminology({}, frozenset())
        self.stamp: tuple[Any, ...] | None = None
        self.taken = float("-inf")  # monotonic time the snapshot was started
        self.lock = asyncio.Lock()
        self.indexed = False
        # one stamp read at a time, shared by the validations that start meanwhile
        # (the newest CodeSystem or ValueSet version: read after the validation began,
        # so a code system or value set whose write was acknowledged before it is seen)
        self._stamps: SharedRead[tuple[Any, ...] | None] = SharedRead(
            lambda: storage.newest_version(WATCHED)
        )

    async def context(self) -> BindingContext:
        """A fresh validation's view: the current snapshot, renewed first when a code
        system or value set was written since it was started."""
        stamp = await self._stamps.get()
        if stamp != self.stamp or time.monotonic() - self.taken > MAX_AGE:
            async with self.lock:
                if stamp != self.stamp or time.monotonic() - self.taken > MAX_AGE:
                    systems = await self._systems()
                    self.snapshot = Terminology({}, systems)
                    self.stamp, self.taken = stamp, time.monotonic()
        return BindingContext(self.snapshot)

    def held(self) -> BindingContext:
        """The snapshot as it is, unchecked: to validate against while ``context()``
        checks, in parallel, that it is still current."""
        return BindingContext(self.snapshot)

    async def load(self, urls: Iterable[str]) -> None:
        """Expand the value sets a validation found missing into the snapshot."""
        async with self.lock:
            known = self.snapshot.value_sets
            wanted = sorted(u for u in set(urls) if u not in known)
            if not wanted:
                return
            if not self.indexed:
                await ensure_indexes(self.storage.db)
                self.indexed = True
            # together: each expansion is a few queries, and the first ever also
            # builds its code systems' concepts (concepts.py)
            contents = await asyncio.gather(*(self._content(url) for url in wanted))
            found = dict(zip(wanted, contents, strict=True))
            self.snapshot = Terminology({**known, **found}, self.snapshot.systems)

    async def _systems(self) -> frozenset[str]:
        """The canonical urls of the CodeSystems stored (deleted ones excluded)."""
        urls = await self.storage.current("CodeSystem").distinct("sp.url", {"del": False})
        return frozenset(u for u in urls if isinstance(u, str) and not u.startswith(SEP))

    async def _content(self, url: str) -> ValueSetContent | None:
        try:
            found = await self.resolver.by_url("ValueSet", url, None, {})
            if found is None:
                return None
            options = Options(designations=True, limit=self.max_expansion)
            entries = await self.valuesets.evaluate(found.resource, options, _ALL, ())
        except (FhirError, PyMongoError):
            return None  # not evaluable here (or not now): not checked
        members = [
            (e.system, e.code, [e.display or "", *(d["v"] for d in e.designations)])
            for e in entries
        ]
        return ValueSetContent.of(url, members)
