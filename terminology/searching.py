"""The terminology behind the token search modifiers (search.html#token): ``:in`` and
``:not-in`` take a ValueSet's members, ``:below`` and ``:above`` a code's descendants
or ancestors in its code system. The search compiler turns them into index keys
(fhir_server/search/compile.py, ``Codes``).

Access: the value set and the code systems are resolved only among the resources the
request may read (``restriction``, the SMART policy's read filter; a 403 when the
token may not read the type at all), as ValueSet/$expand and CodeSystem/$subsumes do:
a search cannot reveal the content of a definition its token could not read.

Cost: an expansion is bounded as $expand's (``limit`` concepts), a subtree the same
way; beyond, a 400 ``too-costly`` rather than a query with a million keys. Subtrees are
cached per loaded code-system generation (a generation's concepts never change: an
updated CodeSystem is loaded under a new key), and expansions with the versions of the
definitions they were computed from, so a search and its total, or the next page, do
not read the hierarchy again (5,000 concepts: about 200 ms of fetches on a loaded
machine, against a few index lookups to check the cache).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from pymongo.errors import ExecutionTimeout

from fhir_server.outcome import FhirError
from terminology.concepts import QUERY_MS, ConceptStore
from terminology.resolve import Filter, Resolver
from terminology.valueset import Options, ValueSetOperations

Restrict = Callable[[str], Awaitable[Filter]]
_CACHE_SIZE = 64


def _bad(code: str, message: str) -> FhirError:
    return FhirError.of(400, code, message)


class SubtreeCache:
    """(code-system key, code, above) -> codes, least recently used out first."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, bool], tuple[str, ...]] = OrderedDict()

    def get(self, key: tuple[str, str, bool]) -> tuple[str, ...] | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[str, str, bool], codes: tuple[str, ...]) -> None:
        self._items[key] = codes
        if len(self._items) > self.size:
            self._items.popitem(last=False)


# (type, url, version, the read restriction, the (id, versionId) it resolved to)
Seen = tuple[tuple[str, str, str | None, Filter, tuple[str, int] | None], ...]


class _Recording(Resolver):
    """The service's resolver, remembering every canonical an expansion resolved (the
    value set, the value sets it includes, the code systems, by whichever entry point
    the evaluation used: they all resolve through ``_candidates``). A code system's
    concepts are a function of its stored version, a value set's content too."""

    def __init__(self, inner: Resolver) -> None:
        # the inner resolver's state: its storage and the very same cache objects
        self.__dict__.update(inner.__dict__)
        # every resolution must reach ``_candidates`` to be recorded: never reuse one
        self.freshness = None
        self.seen: list[tuple[str, str, str | None, Filter, tuple[str, int] | None]] = []

    async def _candidates(
        self, rtype: str, url: str, version: str | None, restriction: Filter
    ) -> tuple[str, int] | None:
        found = await super()._candidates(rtype, url, version, restriction)
        self.seen.append((rtype, url, version, restriction, found))
        return found


class ExpansionCache:
    """Expansions for :in by (url, the request's read restrictions), each kept with
    what it was computed from (``Seen``): a hit is used only when every definition
    resolves to the same stored version (or loaded generation) again, a few index
    lookups instead of reading thousands of concepts."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[Seen, tuple[tuple[str, str], ...]]] = OrderedDict()

    def get(self, key: str) -> tuple[Seen, tuple[tuple[str, str], ...]] | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: str, seen: Seen, members: tuple[tuple[str, str], ...]) -> None:
        self._items[key] = (seen, members)
        if len(self._items) > self.size:
            self._items.popitem(last=False)


class SearchCodes:
    """One request's view of the terminology for its search criteria."""

    def __init__(
        self,
        resolver: Resolver,
        store: ConceptStore,
        restrict: Restrict,
        limit: int,
        subtrees: SubtreeCache,
        expansions: ExpansionCache,
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        self.resolver = resolver
        self.store = store
        self.restrict = restrict
        self.limit = limit
        self.subtrees = subtrees
        self.expansions = expansions
        self.ready = ready

    async def members(self, url: str) -> list[tuple[str, str]]:
        await self.ready()
        restrictions = {t: await self.restrict(t) for t in ("ValueSet", "CodeSystem")}
        key = repr((url, sorted(restrictions.items())))
        cached = self.expansions.get(key)
        if cached is not None and await self._unchanged(cached[0]):
            return list(cached[1])
        recording = _Recording(self.resolver)
        found = await recording.by_url("ValueSet", url, None, restrictions["ValueSet"])
        if found is None:
            raise _bad("not-found", f"The ValueSet {url} is not known")
        options = Options(limit=self.limit, ordered=False)
        valuesets = ValueSetOperations(recording, self.store, self.limit)
        try:
            entries = await valuesets.evaluate(found.resource, options, restrictions, (url,))
        except ExecutionTimeout:
            raise _too_costly(f"expanding {url} ran too long") from None
        except FhirError as exc:  # an operation's 422 is a search's 400
            raise FhirError(400, exc.issues, exc.headers) from None
        if len(entries) > self.limit:  # a stored expansion is not bounded by evaluate
            raise _too_costly(f"the ValueSet {url} has more than {self.limit} concepts")
        members = tuple((e.system, e.code) for e in entries)
        self.expansions.put(key, tuple(recording.seen), members)
        return list(members)

    async def _unchanged(self, seen: Seen) -> bool:
        """Does every definition an expansion used still resolve to what it did?"""
        for rtype, url, version, restriction, answer in seen:
            if await self.resolver._candidates(rtype, url, version, restriction) != answer:
                return False
        return True

    async def subsumed(self, system: str, code: str, above: bool) -> list[str]:
        await self.ready()
        restriction = await self.restrict("CodeSystem")
        cs = await self.resolver.code_system(system, None, restriction)
        which = ":above" if above else ":below"
        if cs is None or cs.content == "not-present" or cs.count == 0:
            raise _bad(
                "not-found",
                f"The code system {system} is not known here (with its concepts), so "
                f"{which} cannot be evaluated",
            )
        key = (cs.key, code, above)
        cached = self.subtrees.get(key)
        if cached is None:
            try:
                cached = tuple(await self._related(cs.key, code, above, system))
            except ExecutionTimeout:
                raise _too_costly(f"the hierarchy of {system} under {code} is too large") from None
            self.subtrees.put(key, cached)
        return [code, *cached]

    async def _related(self, key: str, code: str, above: bool, system: str) -> list[str]:
        if above:
            return await self.store.ancestors(key, code)
        # one range of the (k, anc) index, in index order (no sort: the definition
        # order would walk the whole system); one past the limit says it is too many
        cursor = self.store.concepts.find(
            {"k": key, "anc": code}, {"_id": 0, "c": 1}, limit=self.limit + 1, max_time_ms=QUERY_MS
        )
        found = [d["c"] async for d in cursor]
        if len(found) > self.limit:
            raise _too_costly(f"{system}|{code} has more than {self.limit} descendants")
        return found


def _too_costly(why: str) -> FhirError:
    return _bad("too-costly", f"{why}; search with a narrower concept or value set")
