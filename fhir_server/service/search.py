"""The search interaction (search.html): runs a SearchPlan against storage with keyset
paging, totals and _include/_revinclude. Also the matcher of conditional interactions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fhir_server.outcome import FhirError, bad_request
from fhir_server.search.compile import (
    Codes,
    Compiler,
    Filter,
    Resolver,
    _all,
    field_value,
    keyset_filter,
    sort_fields,
)
from fhir_server.search.parse import Parser, plain_identifier
from fhir_server.search.plan import Include, SearchPlan
from fhir_server.search.registry import Registry
from fhir_server.search.values import token_keys
from fhir_server.service.context import request_base_url
from fhir_server.service.cursors import Cursors, invalid_cursor, order_digest, scalars
from fhir_server.storage import Storage, StoredVersion
from fhir_server.storage.store import Session

if TYPE_CHECKING:
    from fhir_server.authz.policy import Policy

# The terminology of :in/:not-in/:below/:above for one request, given how to restrict
# the definitions it reads (terminology.service.TerminologyService.for_search).
CodesFor = Callable[[Callable[[str], Awaitable[Filter]]], Codes]
MAX_INCLUDED = 1000
DEFAULT_TOTAL_LIMIT = 1000
INCLUDE_ITERATIONS = 3


@dataclass(slots=True)
class SearchResult:
    matches: list[StoredVersion] = field(default_factory=list)
    included: list[StoredVersion] = field(default_factory=list)
    total: int | None = None
    next: str | None = None
    previous: str | None = None
    # index values of the matches by "Type/id", for _include
    index: dict[str, dict[str, Any]] = field(default_factory=dict)


def _type_position(direction: str, values: list[Any], types: int) -> tuple[int, str]:
    """(index of the type, last id in it) of a multi-type cursor."""
    start, last_id = values
    if direction != "a" or type(start) is not int or not isinstance(last_id, str):
        raise invalid_cursor()
    if not 0 <= start < types:
        raise invalid_cursor()
    return start, last_id


def _stored(resource_type: str, doc: dict[str, Any]) -> StoredVersion:
    return StoredVersion.from_current(resource_type, doc)


class SearchService:
    def __init__(self, storage: Storage, registry: Registry) -> None:
        self.storage = storage
        self.registry = registry
        self.cursors = Cursors(storage.db)
        self.terminology: CodesFor | None = None  # set by the app (fhir_server/app.py)

    def codes(self, policy: Policy | None) -> Codes | None:
        """The terminology lookups of a search, reading only the definitions (ValueSet,
        CodeSystem) the policy lets the token read; 403 when it may not read them."""
        if self.terminology is None:
            return None

        async def readable(resource_type: str) -> Filter:
            if policy is None:
                return {}
            return await policy.restriction(resource_type, "r")

        return self.terminology(readable)

    async def seal_position(
        self, direction: str, values: Sequence[Any], order: Sequence[Any]
    ) -> str:
        """A search cursor: where a page ended, for the sort ``order`` it was read in
        (field names of one type, or the types of a multi-type search)."""
        payload = {"d": direction, "v": list(values), "o": order_digest(order)}
        return await self.cursors.seal("search", payload)

    async def open_position(
        self, token: str, order: Sequence[Any], count: int
    ) -> tuple[str, list[Any]]:
        """(direction, sort values) of a search cursor for this ``order``; 400 for a
        cursor that is not this server's, or belongs to another search."""
        doc = await self.cursors.open("search", token)
        direction = doc.get("d")
        if direction not in ("a", "b") or doc.get("o") != order_digest(order):
            raise bad_request("The paging cursor does not belong to this search", "_cursor")
        return direction, scalars(doc.get("v"), count)

    def parser(self, base_url: str = "") -> Parser:
        return Parser(self.registry, base_url)

    # --- Resolver for chains ---------------------------------------------------------

    async def ids(
        self, resource_type: str, query: Filter, limit: int, session: Session | None = None
    ) -> list[str]:
        cursor = self.storage.searched(resource_type, session).find(
            query, {"_id": 1}, limit=limit, session=session
        )
        return [d["_id"] async for d in cursor]

    async def references(
        self,
        resource_type: str,
        query: Filter,
        field_name: str,
        limit: int,
        session: Session | None = None,
    ) -> list[str]:
        pipeline: list[dict[str, Any]] = [
            {"$match": query},
            {"$project": {"r": f"${field_name}"}},
            {"$unwind": "$r"},
            {"$group": {"_id": "$r"}},
            {"$limit": limit},
        ]
        collection = self.storage.searched(resource_type, session)
        cursor = await collection.aggregate(pipeline, session=session)
        return [d["_id"] async for d in cursor if isinstance(d["_id"], str)]

    # --- authorization -----------------------------------------------------------------

    async def filter(
        self,
        resource_type: str,
        plan: SearchPlan,
        policy: Policy | None,
        interaction: str = "s",
        session: Session | None = None,
    ) -> Filter:
        """The plan's query on one type, within what ``policy`` allows: its restriction
        is ANDed in, and so is each chained or ``_has`` type's (403 if one of those is
        not searchable), so no criterion can probe resources the token may not see.
        With a ``session`` the chained and ``_has`` sub-queries read inside it: a
        transaction's own writes count (Subscriptions match within the write), or a
        search's causal session (``Storage.reading``) holds for them too."""
        base: Resolver = self if session is None else _SessionResolver(self, session)
        resolver: Resolver = base
        if policy is not None and not policy.unrestricted:
            resolver = _PolicyResolver(base, policy)
        compiler = Compiler(resolver, codes=self.codes(policy))
        query = await compiler.filter(resource_type, plan.conditions, plan.compartment)
        if plan.narrowing is not None:
            query = _all([query, plan.narrowing])
        if policy is None:
            return query
        return _all([query, await policy.restriction(resource_type, interaction)])

    # --- search ------------------------------------------------------------------------

    async def count(
        self, plan: SearchPlan, limit: int | None = None, policy: Policy | None = None
    ) -> int:
        """Matches of the plan (counting stops at ``limit`` when given)."""
        async with self.storage.reading() as session:
            return await self._count(plan, limit, policy, session)

    async def _count(
        self, plan: SearchPlan, limit: int | None, policy: Policy | None, session: Session | None
    ) -> int:
        total = 0
        for t in plan.types:
            query = await self.filter(t, plan, policy, session=session)
            options: dict[str, Any] = {"limit": limit - total} if limit is not None else {}
            collection = self.storage.searched(t, session)
            total += await collection.count_documents(query, session=session, **options)
            if limit is not None and total >= limit:
                break
        return total

    async def _total(
        self,
        plan: SearchPlan,
        result: SearchResult,
        policy: Policy | None,
        session: Session | None,
    ) -> int | None:
        """Bundle.total. Asked for (``_total=accurate|estimate``): always counted.
        By default: on the first page only, exact when the matches fit the page or
        number under DEFAULT_TOTAL_LIMIT, and left out beyond (counting millions of
        matches for every first page would dominate the search's cost)."""
        if plan.total == "none":
            return None
        if plan.total in ("accurate", "estimate"):
            return await self._count(plan, None, policy, session)
        if plan.cursor is not None:
            return None
        if result.next is None:
            return len(result.matches)
        counted = await self._count(plan, DEFAULT_TOTAL_LIMIT, policy, session)
        return counted if counted < DEFAULT_TOTAL_LIMIT else None

    async def search(self, plan: SearchPlan, policy: Policy | None = None) -> SearchResult:
        """One page. With a ``policy`` every page (cursors included) is re-restricted:
        a cursor only says where to resume, never what may be seen.
        All its reads are in one session (``Storage.reading``): on a secondary they
        see every write acknowledged before it, and page, total and includes agree."""
        async with self.storage.reading() as session:
            if len(plan.types) == 1:
                result = await self._search_type(plan, plan.types[0], policy, session)
            else:
                result = await self._search_types(plan, policy, session)
            result.total = await self._total(plan, result, policy, session)
            if plan.includes and result.matches:
                result.included = await self.included(plan.includes, result, policy, session)
        return result

    def _projection(
        self, plan: SearchPlan, order: Sequence[tuple[str, int]] = ()
    ) -> dict[str, int]:
        """What a page reads of each match: of the sort keys only those of ``order``
        (for the paging cursor); all of them would be decoded for nothing (a 50-entry
        page of Observations spent a sixth of its time decoding BSON)."""
        projection = {"raw": 1, "v": 1, "lu": 1, "del": 1, "comp": 1}  # comp: audit
        for name, _ in order:
            if name.startswith("so."):
                projection[name] = 1
        for include in plan.includes:
            if not include.reverse:
                projection["sp"] = 1  # the page's references, for _include
        return projection

    async def _search_type(
        self, plan: SearchPlan, resource_type: str, policy: Policy | None, session: Session | None
    ) -> SearchResult:
        query = await self.filter(resource_type, plan, policy, session=session)
        fields = sort_fields(plan.sort)
        names = [f"{resource_type}:{f}:{d}" for f, d in fields]
        direction, values = "a", None
        if plan.cursor:
            direction, values = await self.open_position(plan.cursor, names, len(fields))
        order = fields if direction == "a" else [(f, -d) for f, d in fields]
        if values is not None:
            query = _all([query, keyset_filter(order, values)])
        docs = (
            await self.storage.searched(resource_type, session)
            .find(
                query,
                self._projection(plan, order),
                sort=order,
                limit=plan.count + 1,
                session=session,
            )
            .to_list()
        )
        more = len(docs) > plan.count
        docs = docs[: plan.count]
        if direction == "b":
            docs.reverse()
        result = SearchResult(
            matches=[_stored(resource_type, d) for d in docs],
            index={f"{resource_type}/{d['_id']}": d.get("sp", {}) for d in docs},
        )
        if docs:
            first = [field_value(docs[0], f) for f, _ in fields]
            last = [field_value(docs[-1], f) for f, _ in fields]
            has_after = more if direction == "a" else True
            has_before = (values is not None) if direction == "a" else more
            if has_after:
                result.next = await self.seal_position("a", last, names)
            if has_before:
                result.previous = await self.seal_position("b", first, names)
        return result

    async def _search_types(
        self, plan: SearchPlan, policy: Policy | None, session: Session | None
    ) -> SearchResult:
        """A system search over several types, in type order then id order."""
        if plan.sort and plan.sort[0].code != "_id":
            raise FhirError.of(
                400, "not-supported", "_sort is not supported when searching several types", "_sort"
            )
        start_type, last_id = 0, ""
        if plan.cursor:
            direction, values = await self.open_position(plan.cursor, plan.types, 2)
            start_type, last_id = _type_position(direction, values, len(plan.types))
        result = SearchResult()
        remaining = plan.count + 1
        docs: list[tuple[int, dict[str, Any]]] = []
        for ti in range(start_type, len(plan.types)):
            t = plan.types[ti]
            query = await self.filter(t, plan, policy, session=session)
            if ti == start_type and last_id:
                query = _all([query, {"_id": {"$gt": last_id}}])
            projection = self._projection(plan)
            found = (
                await self.storage.searched(t, session)
                .find(query, projection, sort=[("_id", 1)], limit=remaining, session=session)
                .to_list()
            )
            docs += [(ti, d) for d in found]
            remaining -= len(found)
            if remaining <= 0:
                break
        more = len(docs) > plan.count
        docs = docs[: plan.count]
        for ti, d in docs:
            t = plan.types[ti]
            result.matches.append(_stored(t, d))
            result.index[f"{t}/{d['_id']}"] = d.get("sp", {})
        if more and docs:
            position = [docs[-1][0], docs[-1][1]["_id"]]
            result.next = await self.seal_position("a", position, plan.types)
        return result

    # --- _include / _revinclude ----------------------------------------------------------

    async def included(
        self,
        includes: Sequence[Include],
        result: SearchResult,
        policy: Policy | None = None,
        session: Session | None = None,
    ) -> list[StoredVersion]:
        """The _include/_revinclude resources of a page. With a ``policy``, only those
        the token may read: the others are left out silently (search.html does not
        make them an error, and naming them would leak that they exist)."""
        seen = {f"{m.type}/{m.id}" for m in result.matches}
        sp_by_key = dict(result.index)
        frontier = list(result.matches)
        out: list[StoredVersion] = []
        for round_ in range(INCLUDE_ITERATIONS + 1):
            active = [i for i in includes if round_ == 0 or i.iterate]
            if not active or not frontier:
                break
            found: list[StoredVersion] = []
            for include in active:
                if include.reverse:
                    docs = await self._revinclude(include, frontier, policy, session)
                else:
                    docs = await self._include(include, frontier, sp_by_key, policy, session)
                for t, d in docs:
                    key = f"{t}/{d['_id']}"
                    if key in seen:
                        continue
                    seen.add(key)
                    sp_by_key[key] = d.get("sp", {})
                    found.append(_stored(t, d))
            out += found
            if len(out) >= MAX_INCLUDED:
                return out[:MAX_INCLUDED]
            frontier = found
        return out

    def _include_codes(self, include: Include, resource_type: str) -> list[str]:
        if include.source_type != resource_type:
            return []
        if include.code != "*":
            return [include.code]
        return [
            code
            for code, p in self.registry.params(resource_type).items()
            if p.type == "reference" and p.supported
        ]

    async def _include(
        self,
        include: Include,
        frontier: list[StoredVersion],
        sp_by_key: dict[str, Any],
        policy: Policy | None,
        session: Session | None,
    ) -> list[tuple[str, dict[str, Any]]]:
        wanted: dict[str, set[str]] = {}
        for m in frontier:
            sp = sp_by_key.get(f"{m.type}/{m.id}", {})
            for code in self._include_codes(include, m.type):
                for ref in sp.get(code, []):
                    parts = ref.split("/") if isinstance(ref, str) else []
                    if len(parts) != 2 or "://" in ref:
                        continue
                    if include.target_type and parts[0] != include.target_type:
                        continue
                    wanted.setdefault(parts[0], set()).add(parts[1])
        out: list[tuple[str, dict[str, Any]]] = []
        for t, ids in wanted.items():
            if not self.registry.params(t):
                continue
            allowed = await policy.try_restriction(t, "r") if policy else {}
            if allowed is None:
                continue
            cursor = self.storage.searched(t, session).find(
                _all([{"_id": {"$in": sorted(ids)}, "del": False}, allowed]),
                {"raw": 1, "v": 1, "lu": 1, "del": 1, "sp": 1},
                limit=MAX_INCLUDED,
                session=session,
            )
            out += [(t, d) async for d in cursor]
        return out

    async def _revinclude(
        self,
        include: Include,
        frontier: list[StoredVersion],
        policy: Policy | None,
        session: Session | None,
    ) -> list[tuple[str, dict[str, Any]]]:
        keys = [f"{m.type}/{m.id}" for m in frontier]
        codes = self._include_codes(include, include.source_type)
        if not codes:
            return []
        allowed = await policy.try_restriction(include.source_type, "r") if policy else {}
        if allowed is None:
            return []
        query = _all([{"del": False, "$or": [{f"sp.{c}": {"$in": keys}} for c in codes]}, allowed])
        cursor = self.storage.searched(include.source_type, session).find(
            query,
            {"raw": 1, "v": 1, "lu": 1, "del": 1, "sp": 1},
            limit=MAX_INCLUDED,
            session=session,
        )
        return [(include.source_type, d) async for d in cursor]

    # --- diagnostics ------------------------------------------------------------------------

    async def explain(
        self, plan: SearchPlan, policy: Policy | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """MongoDB's winning plan for every query the plan runs (chained sub-queries
        first, then the main query per type): how to check a search uses indexes."""
        inner: Resolver = self
        if policy is not None and not policy.unrestricted:
            inner = _PolicyResolver(self, policy)  # the sub-queries ``filter`` would run
        recording = _RecordingResolver(inner)
        compiler = Compiler(recording, codes=self.codes(policy))
        queries = []
        for t in plan.types:
            query = await compiler.filter(t, plan.conditions, plan.compartment)
            if policy is not None:
                query = _all([query, await policy.restriction(t, "s")])
            queries.append((t, query, sort_fields(plan.sort)))
        plans = []
        for t, query, sort in [*recording.queries, *queries]:
            command = {"find": t, "filter": query, "sort": dict(sort), "limit": plan.count + 1}
            result = await self.storage.db.command(
                {"explain": command, "verbosity": "queryPlanner"}
            )
            plans.append((t, result["queryPlanner"]["winningPlan"]))
        return plans

    # --- conditional interactions --------------------------------------------------------

    async def match(
        self,
        resource_type: str,
        query: str,
        where: str,
        limit: int,
        session: Session | None = None,
        policy: Policy | None = None,
        interaction: str = "s",
    ) -> list[StoredVersion]:
        """Resources matching a conditional interaction's criteria (at most ``limit``).
        With a ``policy``, only among those ``interaction`` may touch: a condition
        cannot find, and so cannot probe, resources outside the token's access."""
        query_filter = await self._criteria_filter(resource_type, query, where, policy, interaction)
        cursor = self.storage.current(resource_type).find(
            query_filter, {"sp": 0, "so": 0}, limit=limit, session=session
        )
        return [_stored(resource_type, d) async for d in cursor]

    async def match_identifiers(
        self,
        resource_type: str,
        criteria: Sequence[str],
        limit: int,
        session: Session | None = None,
        policy: Policy | None = None,
        interaction: str = "s",
    ) -> dict[str, list[StoredVersion]]:
        """``match`` for many criteria at once, for those that are one plain
        ``identifier=system|value`` (parse.plain_identifier); the others are left out of
        the answer. A transaction of 500 conditional updates from a migration then makes
        one query instead of 500. Each criteria gets at most ``limit`` matches, exactly
        the resources ``match`` would find (same compiled filter, same policy)."""
        wanted = {c: v for c in criteria if (v := plain_identifier(c)) is not None}
        values = sorted(set(wanted.values()))
        found: dict[str, list[StoredVersion]] = {}
        for start in range(0, len(values), _IDENTIFIER_BATCH):
            chunk = values[start : start + _IDENTIFIER_BATCH]
            query = "identifier=" + ",".join(chunk)
            query_filter = await self._criteria_filter(
                resource_type, query, "criteria", policy, interaction
            )
            cap = len(chunk) * limit + 1
            cursor = self.storage.current(resource_type).find(
                query_filter, {"so": 0}, limit=cap, session=session
            )
            docs = [d async for d in cursor]
            if len(docs) == cap:  # some identifier is shared widely: ask one by one
                continue
            for value in chunk:
                system, _, code = value.partition("|")
                key = token_keys(system, code)[1]
                hits = [d for d in docs if key in _as_list(d.get("sp", {}).get("identifier"))]
                found[value] = [_stored(resource_type, d) for d in hits[:limit]]
        return {c: found[v] for c, v in wanted.items() if v in found}

    async def _criteria_filter(
        self,
        resource_type: str,
        query: str,
        where: str,
        policy: Policy | None,
        interaction: str,
    ) -> Filter:
        """The MongoDB filter of a conditional interaction's criteria; errors name
        ``where`` (the request part holding them). The criteria are a search: under a
        policy they need a search scope (403 before they are evaluated) and match only
        among the resources the token may search, as well as ``interaction``."""
        searchable: dict[str, Any] = {}
        if policy is not None and interaction != "s":
            try:
                searchable = await policy.restriction(resource_type, "s")
            except FhirError as exc:
                issues = [replace(i, expression=(where,)) for i in exc.issues]
                raise FhirError(exc.status, issues) from None
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
        pairs = [(k, v) for k, v in pairs if k not in ("_format", "_pretty")]
        if not pairs:
            raise bad_request(f"A conditional interaction needs search criteria in {where}", where)
        for name, _ in pairs:
            if name.startswith("_") and name in RESULT_ONLY:
                raise bad_request(f"{name} is not a criterion (in {where})", where)
        try:
            found = await self.criteria_filter(resource_type, pairs, policy, interaction)
        except FhirError as exc:  # point at the request part holding the criteria
            issues = [replace(i, expression=(where, *i.expression)) for i in exc.issues]
            raise FhirError(exc.status, issues) from None
        return _all([found, searchable])

    async def criteria_filter(
        self,
        resource_type: str,
        pairs: Sequence[tuple[str, str]],
        policy: Policy | None,
        interaction: str = "s",
        base_url: str = "",
    ) -> Filter:
        """The filter of search criteria embedded in another request: conditional
        headers and URLs, conditional references, ``_typeFilter`` of ``$export``. They
        are parsed and compiled by ``filter``, the one compilation the search
        interaction uses too, so a criterion a search would refuse or empty under the
        token's policy (a chain into a type it may not search, a ``_has`` over other
        patients' records) is refused or emptied here in exactly the same way. The
        request's base URL makes this server's absolute references local, as in search."""
        base = base_url or request_base_url.get() or ""
        plan = self.parser(base).parse([resource_type], list(pairs))
        return await self.filter(resource_type, plan, policy, interaction)


_IDENTIFIER_BATCH = 500


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def plan_stages(plan: Any) -> set[str]:
    """Every stage name in an explain() winning plan (e.g. {"FETCH", "IXSCAN"})."""
    found: set[str] = set()
    if isinstance(plan, dict):
        if isinstance(plan.get("stage"), str):
            found.add(plan["stage"])
        for value in plan.values():
            found |= plan_stages(value)
    elif isinstance(plan, list):
        for item in plan:
            found |= plan_stages(item)
    return found


class _SessionResolver:
    """Chained and ``_has`` sub-queries read within a session (a write's transaction)."""

    def __init__(self, inner: SearchService, session: Session) -> None:
        self.inner = inner
        self.session = session

    async def ids(self, resource_type: str, query: Filter, limit: int) -> list[str]:
        return await self.inner.ids(resource_type, query, limit, self.session)

    async def references(
        self, resource_type: str, query: Filter, field_name: str, limit: int
    ) -> list[str]:
        return await self.inner.references(resource_type, query, field_name, limit, self.session)


class _PolicyResolver:
    """Chained and ``_has`` sub-queries restricted to what the policy lets search."""

    def __init__(self, inner: Resolver, policy: Policy) -> None:
        self.inner = inner
        self.policy = policy

    async def ids(self, resource_type: str, query: Filter, limit: int) -> list[str]:
        allowed = await self.policy.restriction(resource_type, "s")
        return await self.inner.ids(resource_type, _all([query, allowed]), limit)

    async def references(
        self, resource_type: str, query: Filter, field_name: str, limit: int
    ) -> list[str]:
        allowed = await self.policy.restriction(resource_type, "s")
        return await self.inner.references(resource_type, _all([query, allowed]), field_name, limit)


class _RecordingResolver:
    """Runs chained sub-queries like the service does, and remembers them."""

    def __init__(self, inner: Resolver) -> None:
        self.inner = inner
        self.queries: list[tuple[str, Filter, list[tuple[str, int]]]] = []

    async def ids(self, resource_type: str, query: Filter, limit: int) -> list[str]:
        self.queries.append((resource_type, query, [("_id", 1)]))
        return await self.inner.ids(resource_type, query, limit)

    async def references(
        self, resource_type: str, query: Filter, field_name: str, limit: int
    ) -> list[str]:
        self.queries.append((resource_type, query, [("_id", 1)]))
        return await self.inner.references(resource_type, query, field_name, limit)


RESULT_ONLY = frozenset(
    {"_sort", "_count", "_total", "_summary", "_elements", "_include", "_revinclude"}
)
