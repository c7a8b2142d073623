"""Finding the stored CodeSystem, ValueSet or ConceptMap an operation names: by id, or
by canonical ``url`` (``url|version`` too) and version, within what the caller's access
token may read (``restriction``: the policy's filter for the type, ``{}`` for all).

Code systems come back as loaded concept-store systems (built on first use, rebuilt
after the resource changes); value sets and concept maps as their JSON, parsed once per
stored version (a small in-process cache: operations reuse the same few definitions).
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.search.values import SEP
from fhir_server.storage import Storage
from terminology import concepts
from terminology.concepts import LoadedSystem
from terminology.freshness import Freshness

Filter = dict[str, Any]
T = TypeVar("T")
X = TypeVar("X")
Ref = tuple[str, int]  # (id, versionId) of a stored resource
_CACHE_SIZE = 256
_NUMBERS = re.compile(r"\d+")


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored definition resource: its id, version id and JSON."""

    id: str
    version_id: int
    resource: dict[str, Any]


def split_canonical(url: str, version: str | None) -> tuple[str, str | None]:
    """``url|version`` (canonical form) into its parts; an explicit version wins."""
    if "|" in url:
        url, _, embedded = url.partition("|")
        return url, version or embedded or None
    return url, version


def version_key(version: str | None) -> tuple[Any, ...]:
    """Order versions so that the newest is last: numbers compare as numbers."""
    if version is None:
        return ((-1,),)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", version) if p)


class Resolver:
    def __init__(self, storage: Storage, freshness: Freshness | None = None) -> None:
        """``freshness``: when what was resolved may be reused without asking again
        (terminology/freshness.py); None: never, every canonical is looked up."""
        self.storage = storage
        self.freshness = freshness
        self._parsed: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()
        # (CodeSystem id, versionId) -> its loaded concepts: a stored version never
        # changes, so this needs no invalidation (an update has a new versionId)
        self._systems: OrderedDict[tuple[str, int], LoadedSystem] = OrderedDict()
        # (type, url, version, restriction) -> what it resolved to last time, and the
        # freshness generation it was read in: the answer while that generation lasts,
        # else the guess that the next request's dependent query runs on while the
        # canonical is looked up again (``_speculate``)
        self._guesses: OrderedDict[tuple[str, ...], tuple[Ref, Any, int]] = OrderedDict()

    async def _candidates(
        self, rtype: str, url: str, version: str | None, restriction: Filter
    ) -> tuple[str, int] | None:
        """(id, versionId) of the live resource with that canonical (the highest
        version when none is asked)."""
        query: Filter = {"sp.url": url, "del": False}
        if version is not None:
            query["sp.version"] = version
        if restriction:
            query = {"$and": [query, restriction]}
        cursor = self.storage.current(rtype).find(query, {"v": 1, "sp.version": 1}, limit=50)
        found = []
        async for doc in cursor:
            versions = [
                v for v in (doc.get("sp") or {}).get("version", []) if not v.startswith(SEP)
            ]
            found.append((version_key(versions[0] if versions else None), doc["_id"], doc["v"]))
        if not found:
            return None
        found.sort()
        _, rid, v = found[-1]
        return rid, v

    async def _load(self, rtype: str, rid: str, version_id: int) -> dict[str, Any]:
        key = (rtype, rid, version_id)
        cached = self._parsed.get(key)
        if cached is not None:
            self._parsed.move_to_end(key)
            return cached
        doc = await self.storage.current(rtype).find_one({"_id": rid, "v": version_id}, {"raw": 1})
        if doc is None or doc.get("raw") is None:
            raise FhirError.of(409, "conflict", f"{rtype}/{rid} changed while being read")
        resource: dict[str, Any] = load_stored(doc["raw"])
        self._parsed[key] = resource
        if len(self._parsed) > _CACHE_SIZE:
            self._parsed.popitem(last=False)
        return resource

    async def by_url(
        self, rtype: str, url: str, version: str | None, restriction: Filter
    ) -> Stored | None:
        url, version = split_canonical(url, version)
        found = await self._candidates(rtype, url, version, restriction)
        if found is None:
            return None
        return Stored(found[0], found[1], await self._load(rtype, *found))

    async def _id_ref(self, rtype: str, rid: str, restriction: Filter) -> Ref | None:
        query: Filter = {"_id": rid, "del": False}
        if restriction:
            query = {"$and": [query, restriction]}
        doc = await self.storage.current(rtype).find_one(query, {"v": 1})
        return None if doc is None else (rid, doc["v"])

    async def by_id(self, rtype: str, rid: str, restriction: Filter) -> Stored:
        ref = await self._id_ref(rtype, rid, restriction)
        if ref is None:
            raise FhirError.of(404, "not-found", f"{rtype}/{rid} is not known")
        return Stored(rid, ref[1], await self._load(rtype, *ref))

    async def with_definition_by_id(
        self, rtype: str, rid: str, restriction: Filter, then: Callable[[Stored], Awaitable[T]]
    ) -> tuple[Stored, T]:
        """A stored ValueSet/ConceptMap by id (404 when not there) and ``then`` of it."""

        async def load(ref: Ref) -> Stored:
            return Stored(ref[0], ref[1], await self._load(rtype, *ref))

        found = await self._speculate(
            (rtype, "#" + rid, repr(restriction)),
            lambda: self._id_ref(rtype, rid, restriction),
            load,
            then,
        )
        if found is None:
            raise FhirError.of(404, "not-found", f"{rtype}/{rid} is not known")
        return found

    async def with_definition(
        self,
        rtype: str,
        url: str,
        version: str | None,
        restriction: Filter,
        then: Callable[[Stored], Awaitable[T]],
    ) -> tuple[Stored, T] | None:
        """The stored ValueSet/ConceptMap with this canonical and ``then`` of it (None
        when none is stored); ``then`` overlaps the lookup of the canonical."""
        url, version = split_canonical(url, version)

        async def load(ref: Ref) -> Stored:
            return Stored(ref[0], ref[1], await self._load(rtype, *ref))

        return await self._speculate(
            (rtype, url, version or "", repr(restriction)),
            lambda: self._candidates(rtype, url, version, restriction),
            load,
            then,
        )

    async def _speculate(
        self,
        key: tuple[str, ...],
        resolving: Callable[[], Awaitable[Ref | None]],
        load: Callable[[Ref], Awaitable[X]],
        then: Callable[[X], Awaitable[T]],
    ) -> tuple[X, T] | None:
        """Resolve a canonical and run ``then`` on what it names.

        While nothing of the terminology changed since the canonical last resolved
        (``freshness``), that answer is used as it is. Otherwise, when it resolved
        before, ``then`` runs on last time's answer while the canonical is looked up
        again, and is kept only if the lookup agrees (a resource updated or deleted
        since makes it run again on the new answer). What is saved is a round trip to
        MongoDB (about 0.4 to 0.9 ms each on the 2-core machine, docs/benchmarks.md)
        and its client CPU, the largest part of a $lookup or $validate-code."""
        guess = self._guesses.get(key)
        fresh = self.freshness
        generation = -1 if fresh is None else fresh.generation
        if guess is not None and fresh is not None and fresh.trusted and guess[2] == generation:
            self._guesses.move_to_end(key)
            return guess[1], await then(guess[1])
        if guess is None:
            ref = await resolving()
        else:
            got, early = await asyncio.gather(resolving(), then(guess[1]), return_exceptions=True)
            if isinstance(got, BaseException):
                raise got
            if got == guess[0]:
                self._remember(key, got, guess[1], generation)
                if isinstance(early, BaseException):
                    raise early
                return guess[1], early
            self._guesses.pop(key, None)  # changed since: run ``then`` again on the new
            ref = got
        if ref is None:
            return None
        found = await load(ref)
        self._remember(key, ref, found, generation)
        return found, await then(found)

    def _remember(self, key: tuple[str, ...], ref: Ref, found: Any, generation: int) -> None:
        """Keep what ``key`` resolved to, read in ``generation`` (taken before the
        lookup started: a change during it makes the answer a guess only)."""
        self._guesses[key] = (ref, found, generation)
        self._guesses.move_to_end(key)
        if len(self._guesses) > _CACHE_SIZE:
            self._guesses.popitem(last=False)

    # --- code systems ------------------------------------------------------------------

    async def with_code_system(
        self,
        url: str,
        version: str | None,
        restriction: Filter,
        then: Callable[[LoadedSystem], Awaitable[T]],
    ) -> tuple[LoadedSystem, T] | None:
        """The loaded code system with this canonical and ``then`` of it (None when
        none is stored); ``then`` overlaps the lookup of the canonical."""
        url, version = split_canonical(url, version)

        async def load(ref: Ref) -> LoadedSystem:
            return await self._system(*ref)

        return await self._speculate(
            ("CodeSystem", url, version or "", repr(restriction)),
            lambda: self._candidates("CodeSystem", url, version, restriction),
            load,
            then,
        )

    async def code_system(
        self, url: str, version: str | None, restriction: Filter
    ) -> LoadedSystem | None:
        """The loaded code system with this canonical, or None when none is stored."""
        url, version = split_canonical(url, version)
        found = await self._candidates("CodeSystem", url, version, restriction)
        if found is None:
            return None
        return await self._system(*found)

    async def with_code_system_by_id(
        self, rid: str, restriction: Filter, then: Callable[[LoadedSystem], Awaitable[T]]
    ) -> tuple[LoadedSystem, T]:
        """CodeSystem/``rid``'s loaded concepts (404 when not there) and ``then`` of them."""

        async def load(ref: Ref) -> LoadedSystem:
            return await self._system(*ref)

        found = await self._speculate(
            ("CodeSystem", "#" + rid, repr(restriction)),
            lambda: self._id_ref("CodeSystem", rid, restriction),
            load,
            then,
        )
        if found is None:
            raise FhirError.of(404, "not-found", f"CodeSystem/{rid} is not known")
        return found

    async def code_system_by_id(self, rid: str, restriction: Filter) -> LoadedSystem:
        stored = await self.by_id("CodeSystem", rid, restriction)
        return await self._system(stored.id, stored.version_id)

    async def _system(self, rid: str, version_id: int) -> LoadedSystem:
        cached = self._systems.get((rid, version_id))
        if cached is not None:
            return cached
        db = self.storage.db
        entry = await db[concepts.SYSTEMS].find_one({"_id": rid})
        if entry is not None and (
            entry.get("gen") == f"{rid}/{version_id}" or entry.get("source") == "import"
        ):
            found = concepts.loaded(entry)
        else:
            resource = await self._load("CodeSystem", rid, version_id)
            found = await concepts.build_from_resource(db, rid, version_id, resource)
        if entry is None or entry.get("source") != "import":  # an import may be re-run
            self._systems[(rid, version_id)] = found
            if len(self._systems) > _CACHE_SIZE:
                self._systems.popitem(last=False)
        return found
