"""Patient/$everything (patient-operation-everything.html): the patient(s), every
resource in their Patient compartment, and the Practitioner, PractitionerRole,
Organization, Location and Medication resources those refer to, as a paged searchset.

Compartment membership is the stored ``comp`` field (``Patient/<id>`` keys written at
index time from the official CompartmentDefinition; a Patient's own document holds its
own key), so each type is one indexed query. Pages walk the types in a fixed order, then
ids, with the multi-type keyset cursor of the search service; the referenced resources
of each page come from the search service's ``_include`` machinery (``*`` references,
iterated so a PractitionerRole's Practitioner or an Organization's parent comes too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fhir_server.digits import whole_number
from fhir_server.outcome import FhirError, bad_request
from fhir_server.resource_types import is_resource_type, resource_types
from fhir_server.search.plan import Include
from fhir_server.search.registry import Registry
from fhir_server.service.cursors import invalid_cursor, order_digest, scalars
from fhir_server.service.history import parse_instant_param
from fhir_server.service.search import (
    DEFAULT_TOTAL_LIMIT,
    SearchResult,
    SearchService,
)
from fhir_server.storage import StoredVersion

if TYPE_CHECKING:
    from fhir_server.authz.policy import Policy

Filter = dict[str, Any]

REFERENCED_TYPES = ("Location", "Medication", "Organization", "Practitioner", "PractitionerRole")
# Names this operation understands; the rendering ones are handled by negotiation
# (_summary and _elements stay in the paging links, _format and _pretty do not, as in
# search).
PARAMS = frozenset({"_since", "_type", "_count", "start", "end", "_cursor"})
RENDERING_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements"})
_LINKED_RENDERING = frozenset({"_summary", "_elements"})
_PROJECTION = {"raw": 1, "v": 1, "lu": 1, "del": 1, "sp": 1}


@dataclass(frozen=True, slots=True)
class PatientScope:
    """Whose records a request covers. ``ids`` None: every patient (the type-level
    operation, while no authorization exists); a tuple narrows it (empty: nobody)."""

    ids: tuple[str, ...] | None = None

    def filter(self) -> Filter:
        if self.ids is None:
            # Every compartment key is "Patient/<id>": a range over the comp index.
            return {"comp": {"$gt": "Patient/", "$lt": "Patient0"}}
        return {"comp": {"$in": [f"Patient/{i}" for i in self.ids]}}


@dataclass(slots=True)
class EverythingQuery:
    scope: PatientScope
    types: tuple[str, ...]  # compartment types returned as matches, Patient first
    referenced: tuple[str, ...] = REFERENCED_TYPES  # types returned as includes
    since: datetime | None = None
    count: int = 20
    cursor: str | None = None
    # The parameters as understood, for the self/first/next links.
    canonical: list[tuple[str, str]] = field(default_factory=list)
    # Per type, what the request's token may read (authz policy; absent: everything).
    allowed: dict[str, Filter] = field(default_factory=dict)


def compartment_types(registry: Registry) -> tuple[str, ...]:
    """Patient, then every other type of the Patient compartment: the page order."""
    others = sorted(
        t for t in resource_types() if t != "Patient" and registry.patient_compartment(t)
    )
    return ("Patient", *others)


# In the compartment, but not the record itself: who looked at it (docs/audit.md), which
# grows with every call. Returned when ``_type`` names it.
ASKED_FOR_ONLY = frozenset({"AuditEvent"})


# --- parameters ----------------------------------------------------------------------------


def parse_query(
    scope: PatientScope,
    registry: Registry,
    pairs: Sequence[tuple[str, str]],
    *,
    default_count: int,
    max_count: int,
    lenient: bool = False,
) -> EverythingQuery:
    """The operation's parameters (already merged from URL and body) as a query; 400
    naming the parameter for anything malformed or unsupported."""
    compartment = compartment_types(registry)
    unasked = tuple(t for t in compartment if t not in ASKED_FOR_ONLY)
    query = EverythingQuery(scope, unasked, count=default_count)
    requested: list[str] = []
    seen: set[str] = set()
    for name, value in pairs:
        if name in RENDERING_PARAMS or value == "":  # empty ones are ignored, as in search
            if name in _LINKED_RENDERING and value != "":
                query.canonical.append((name, value))
            continue
        if name not in PARAMS:
            if lenient:
                continue
            raise FhirError.of(
                400, "not-supported", f"Unknown parameter {name!r} for $everything", name
            )
        if name in seen and name != "_type":
            raise bad_request(f"{name} may be given only once", name)
        seen.add(name)
        _one(query, requested, name, value, max_count)
        if name != "_cursor":
            query.canonical.append((name, value))
    if requested:
        query.types, query.referenced = select_types(compartment, requested)
    return query


def _one(
    query: EverythingQuery, requested: list[str], name: str, value: str, max_count: int
) -> None:
    if name == "_count":
        count = whole_number(value)
        if count is None:
            raise bad_request("_count must be a non-negative integer", "_count")
        query.count = min(count, max_count)
    elif name == "_since":
        query.since = parse_instant_param("_since", value)[0]
    elif name == "_type":
        requested += [t.strip() for t in value.split(",") if t.strip()]
    elif name == "_cursor":
        query.cursor = value
    else:  # start / end
        raise FhirError.of(
            400,
            "not-supported",
            f"{name}: limiting $everything by care dates is not supported; "
            "use _since for record changes",
            name,
        )


def select_types(
    compartment: tuple[str, ...], requested: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """_type: the compartment types and referenced types kept (in page order)."""
    for name in requested:
        if not is_resource_type(name):
            raise bad_request(f"_type: unknown resource type {name!r}", "_type")
        if name not in compartment and name not in REFERENCED_TYPES:
            raise bad_request(
                f"_type: {name} is neither in the Patient compartment nor one of the "
                f"referenced types ({', '.join(REFERENCED_TYPES)})",
                "_type",
            )
    wanted = set(requested)
    types = tuple(t for t in compartment if t in wanted)
    if not types:
        # Referenced resources are found through the compartment resources returned;
        # with none of those there is nothing to find them from.
        raise bad_request(
            "_type must name at least one type of the Patient compartment "
            "(e.g. Patient, Observation)",
            "_type",
        )
    return types, tuple(t for t in REFERENCED_TYPES if t in wanted)


# --- running it ------------------------------------------------------------------------------


async def restrict(query: EverythingQuery, policy: Policy) -> None:
    """Keep the types the token may read, each within what it may read: a patient
    context token gets its own patient's record only, whatever patients were asked."""
    if policy.unrestricted:
        return
    kept: list[str] = []
    for t in query.types:
        allowed = await policy.try_restriction(t, "r")
        if allowed is not None:
            kept.append(t)
            query.allowed[t] = allowed
    if not kept:
        raise FhirError.of(
            403, "forbidden", "The access token does not permit reading any type of $everything"
        )
    query.types = tuple(kept)
    query.referenced = tuple(query.referenced)


class EverythingService:
    def __init__(self, search: SearchService, policy: Policy | None = None) -> None:
        self.search = search
        self.storage = search.storage
        self.policy = policy

    def _filter(self, query: EverythingQuery, resource_type: str) -> Filter:
        f: Filter = {"del": False, **query.scope.filter()}
        if query.since is not None:
            f["lu"] = {"$gte": query.since}
        allowed = query.allowed.get(resource_type)
        return {"$and": [f, allowed]} if allowed else f

    async def _present(self, types: Sequence[str]) -> list[tuple[int, str]]:
        """(position, type) of the types that have a collection: a patient's record
        touches a few of the ~70 compartment types, so the rest need no query."""
        existing = set(await self.storage.db.list_collection_names())
        return [(i, t) for i, t in enumerate(types) if t in existing]

    async def count(self, query: EverythingQuery, limit: int | None = None) -> int:
        """The compartment resources (not the referenced ones), counting at most ``limit``."""
        total = 0
        for _, t in await self._present(query.types):
            collection = self.storage.current(t)
            if limit is None:
                total += await collection.count_documents(self._filter(query, t))
                continue
            total += await collection.count_documents(self._filter(query, t), limit=limit - total)
            if total >= limit:
                break
        return total

    async def page(self, query: EverythingQuery) -> SearchResult:
        start, last_id = await self._position(query)
        result = SearchResult()
        docs: list[tuple[int, dict[str, Any]]] = []
        for ti, t in await self._present(query.types):
            if ti < start:
                continue
            f = self._filter(query, t)
            if ti == start and last_id:
                f = {"$and": [f, {"_id": {"$gt": last_id}}]}
            limit = query.count + 1 - len(docs)
            found = (
                await self.storage.current(t)
                .find(f, _PROJECTION, sort=[("_id", 1)], limit=limit)
                .to_list()
            )
            docs += [(ti, d) for d in found]
            if len(docs) > query.count:
                break
        more = len(docs) > query.count
        docs = docs[: query.count]
        for ti, d in docs:
            t = query.types[ti]
            result.matches.append(StoredVersion.from_current(t, d))
            result.index[f"{t}/{d['_id']}"] = d.get("sp", {})
        if more:
            position = [docs[-1][0], docs[-1][1]["_id"]]
            payload = {"v": position, "o": order_digest(query.types)}
            result.next = await self.search.cursors.seal("everything", payload)
        result.total = await self._total(query, result)
        if result.matches and query.referenced:
            result.included = await self.search.included(
                self._includes(query, result), result, self.policy
            )
        return result

    async def _position(self, query: EverythingQuery) -> tuple[int, str]:
        if query.cursor is None:
            return 0, ""
        doc = await self.search.cursors.open("everything", query.cursor)
        if doc.get("o") != order_digest(query.types):
            raise bad_request("The paging cursor does not belong to these _type", "_cursor")
        start, last_id = scalars(doc.get("v"), 2)
        if type(start) is not int or not isinstance(last_id, str):
            raise invalid_cursor()
        if not 0 <= start < len(query.types):
            raise invalid_cursor()
        return start, last_id

    async def _total(self, query: EverythingQuery, result: SearchResult) -> int | None:
        """Bundle.total on the first page, as search reports it by default: exact when
        the matches fit the page or number under DEFAULT_TOTAL_LIMIT, else left out."""
        if query.cursor is not None:
            return None
        if result.next is None:
            return len(result.matches)
        counted = await self.count(query, DEFAULT_TOTAL_LIMIT)
        return counted if counted < DEFAULT_TOTAL_LIMIT else None

    def _includes(self, query: EverythingQuery, result: SearchResult) -> tuple[Include, ...]:
        """Every reference of the page's resources to a referenced type, iterated
        (over the referenced resources found) so their own such references come too."""
        sources = sorted({m.type for m in result.matches} | set(query.referenced))
        return tuple(
            Include(source, "*", target, iterate=True, reverse=False)
            for source in sources
            for target in query.referenced
        )
