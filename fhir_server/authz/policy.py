"""What an access token lets a request do, answered in one place.

``Policy.restriction(type, interaction)`` is the MongoDB filter every resource of the
type must match to be touched by ``interaction`` (one of ``c r u d s``): ``{}`` for no
restriction; a 403 when no scope covers the pair. The services AND it into their
queries, so searches, chains, includes, history and conditional criteria all see only
the allowed set, and writes are checked against it before and after the change.

Rules (SMART App Launch 2.2, "Scopes for requesting clinical data"):

- ``system/`` scopes: the scope's types and interactions, no further restriction.
- ``user/`` scopes: a practitioner, admin or operator user is unrestricted within the
  scope's types and interactions (there is no practitioner compartment); a user whose
  ``fhirUser`` is ``Patient/<id>`` is treated as in patient context for that patient.
- ``patient/`` scopes: only the token's ``patient`` (a token without one gets nothing).
  Types of the Patient compartment (and Patient itself): reads see resources whose
  stored ``comp`` holds ``Patient/<id>``; writes touch only resources whose ``comp`` is
  that patient alone (see compartment_filter). Other types (Practitioner, Organization,
  Location, Medication ...) are shared reference data: readable and searchable when a scope covers
  them, never writable.
- Granular scopes (``patient/Observation.rs?category=laboratory``): the resource must
  also match the scope's search parameters, compiled with the search compiler. Several
  scopes for one type are ORed; one without parameters lifts the restriction. A scope
  whose parameters chain (``subject:Patient.name=...``) or reverse-chain (``_has:...``)
  grants nothing: a client may ask for any narrower scope, and such a parameter would
  be compiled outside every policy, so which of its own resources the token then sees
  would answer questions about resources it may not search. For the same reason a
  scope whose token parameters need the terminology (``:in``, ``:not-in``, ``:below``,
  ``:above``: a ValueSet's or CodeSystem's content) grants nothing: they are compiled
  without one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.resource_types import resource_types
from fhir_server.search.compile import Compiler
from fhir_server.search.extract import index_resource
from fhir_server.search.plan import Chain, ReverseChain
from fhir_server.service.context import request_base_url
from fhir_server.storage import StoredVersion
from smart_auth.scopes import ResourceScope
from smart_auth.tokens import AccessToken

if TYPE_CHECKING:
    from fhir_server.service.search import SearchService
    from fhir_server.storage.store import Session

Filter = dict[str, Any]
READ_ONLY = frozenset("rs")
NOTHING: Filter = {"_id": {"$in": []}}
_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def forbidden(resource_type: str, interaction: str, why: str = "") -> FhirError:
    reason = why or "no granted scope covers it"
    return FhirError.of(
        403,
        "forbidden",
        f"The access token does not permit {_WORDS.get(interaction, interaction)} on "
        f"{resource_type}: {reason}",
        resource_type,
    )


def any_of(filters: list[Filter]) -> Filter:
    if any(not f for f in filters):
        return {}
    return filters[0] if len(filters) == 1 else {"$or": filters}


def all_of(*filters: Filter) -> Filter:
    kept = [f for f in filters if f]
    if not kept:
        return {}
    return kept[0] if len(kept) == 1 else {"$and": kept}


def compartment_filter(patient: str, interaction: str) -> Filter:
    """The resources a grant confined to ``patient`` covers, by their stored ``comp``
    (the ``Patient/<id>`` values of the type's Patient compartment parameters,
    compartmentdefinition-patient.html; a Patient's own id counts as one).

    Reading needs the patient among them: the resource is in that patient's record.
    Writing (c, u, d) needs the patient to be the only one, so every compartment
    reference of what is written (and, for updates and deletes, of what it replaces) is
    the patient in context: a Condition whose ``asserter`` is the patient cannot name
    another patient as its ``subject`` and land in that patient's record. ``comp`` is
    stored deduplicated, so the exact array match says "this patient and no other"."""
    member = f"Patient/{patient}"
    if interaction in READ_ONLY:
        return {"comp": member}
    return {"comp": [member]}


@dataclass
class Policy:
    """The access of one request. ``access`` None: authorization is off, all allowed."""

    access: AccessToken | None
    search: SearchService
    _cache: dict[tuple[str, str], Filter | None] = field(default_factory=dict)

    @property
    def unrestricted(self) -> bool:
        return self.access is None

    def allows(self, resource_type: str, interaction: str) -> bool:
        """Does some scope cover the pair (before any compartment restriction)?"""
        return self.access is None or self.access.scopes.allows(resource_type, interaction)

    def require(self, resource_type: str, interaction: str) -> None:
        if not self.allows(resource_type, interaction):
            raise forbidden(resource_type, interaction)

    async def restriction(self, resource_type: str, interaction: str) -> Filter:
        """The filter of the resources ``interaction`` may touch; 403 if none."""
        found = await self.try_restriction(resource_type, interaction)
        if found is None:
            raise forbidden(resource_type, interaction, self._why(resource_type, interaction))
        return found

    async def try_restriction(self, resource_type: str, interaction: str) -> Filter | None:
        """Like ``restriction``, but None (rather than a 403) when nothing is allowed."""
        if self.access is None:
            return {}
        key = (resource_type, interaction)
        if key not in self._cache:
            grants = self.access.scopes.grants(resource_type, interaction)
            filters = [await self._grant_filter(g, resource_type, interaction) for g in grants]
            usable = [f for f in filters if f is not None]
            self._cache[key] = any_of(usable) if usable else None
        return self._cache[key]

    async def contains(
        self,
        resource_type: str,
        resource_id: str,
        interaction: str,
        session: Session | None = None,
    ) -> bool:
        """Is this stored resource (its current version) within the allowed set?"""
        allowed = await self.try_restriction(resource_type, interaction)
        if allowed is None:
            return False
        if not allowed:
            return True
        found = await self.search.storage.current(resource_type).find_one(
            all_of({"_id": resource_id}, allowed), {"_id": 1}, session=session
        )
        return found is not None

    async def require_contains(
        self,
        resource_type: str,
        resource_id: str,
        interaction: str,
        session: Session | None = None,
    ) -> None:
        """403 unless the resource is within what ``interaction`` may touch (writes)."""
        if not await self.contains(resource_type, resource_id, interaction, session):
            raise forbidden(
                resource_type,
                interaction,
                f"{resource_type}/{resource_id} is outside what the token may access",
            )

    def require_patch(self, resource_type: str, where: str | None = None) -> None:
        """A PATCH reads the resource it changes: JSON Patch operations succeed or fail
        by its content (a ``test`` compares, a ``remove`` or ``replace`` of a missing
        path fails), so an update-only token could learn what a resource holds from
        200 against 422. It needs the read scope on the type besides update; without
        it, 403 before anything is loaded, whether the target exists or not."""
        self.require(resource_type, "u")
        self._require_implied(
            resource_type,
            "r",
            "a PATCH reads the resource it changes (use update, PUT, to write without reading)",
            where or resource_type,
        )

    async def within_reach(
        self,
        current: StoredVersion | None,
        interaction: str,
        session: Session | None = None,
        *,
        reads: bool = False,
    ) -> StoredVersion | None:
        """The current version a write (``interaction`` u or d) replaces, as far as the
        token may know it: None when there is none, or when the token may neither
        change it nor read it. The write then goes on exactly as for a missing resource
        (same status, same OperationOutcome), so writes are no existence oracle for
        what is out of reach (issue 11, finding 8). A resource the token can read but
        may not change is a 403: saying so reveals nothing it could not see. ``reads``
        (a PATCH): one the token may change but not read is out of reach as well."""
        if self.access is None or current is None:
            return current
        if await self.contains(current.type, current.id, interaction, session):
            if reads and not await self.contains(current.type, current.id, "r", session):
                return None
            return current
        if await self.contains(current.type, current.id, "r", session):
            if current.deleted:
                return current  # a deletion it sees (410 on read): as before
            raise forbidden(
                current.type,
                interaction,
                f"{current.type}/{current.id} is outside what the token may change",
            )
        return None

    async def sees(self, stored: StoredVersion, session: Session | None = None) -> bool:
        """May a response show this version's content? Only when the token may read the
        resource: a write-only token learns from a write what it sent and the new
        version's id, never a stored resource (a conditional create's match, a patch's
        result)."""
        return self.access is None or await self.contains(stored.type, stored.id, "r", session)

    def require_criteria(self, resource_type: str, where: str) -> None:
        """Conditional criteria (If-None-Exist, a conditional update, patch or delete
        URL, a transaction entry's) are a search: whether they match one, several or no
        resources tells what exists. Without a search scope on the type: 403, before
        they are evaluated."""
        self._require_implied(resource_type, "s", "conditional criteria are a search", where)

    def _require_implied(self, resource_type: str, interaction: str, why: str, where: str) -> None:
        """403 unless the token has ``interaction`` on the type, which the request implies
        besides the one it names (``why`` says how), with ``where`` as the expression."""
        if not self.allows(resource_type, interaction):
            raise FhirError.of(
                403,
                "forbidden",
                f"The access token does not permit {_WORDS.get(interaction, interaction)} on "
                f"{resource_type}, and {why}",
                where,
            )

    async def confines(self, resource_type: str, interaction: str) -> bool:
        """Is the token's ``interaction`` on the type limited to part of its resources
        (a patient's record, a category), or not granted at all?"""
        return bool(await self.try_restriction(resource_type, interaction) != {})

    async def readable(self, types: Iterable[str], interaction: str) -> list[str]:
        """The types of ``types`` the token may touch with ``interaction`` at all."""
        return [t for t in types if await self.try_restriction(t, interaction) is not None]

    def patient_context(self, scope: ResourceScope) -> str | bool | None:
        """The patient a grant is confined to; False when unconfined; None when it
        is a patient-confined grant without a patient (unusable)."""
        assert self.access is not None
        if scope.context == "system":
            return False
        if scope.context == "user":
            user = self.access.fhir_user or ""
            return user.split("/", 1)[1] if user.startswith("Patient/") else False
        return self.access.patient or None

    async def _grant_filter(
        self, scope: ResourceScope, resource_type: str, interaction: str
    ) -> Filter | None:
        patient = self.patient_context(scope)
        if patient is None:
            return None
        context: Filter = {}
        if isinstance(patient, str):
            registry = self.search.registry
            if resource_type == "Patient" or registry.patient_compartment(resource_type):
                context = compartment_filter(patient, interaction)
            elif interaction not in READ_ONLY:
                return None  # shared reference data is never written in patient context
        if not scope.params:
            return context
        try:
            plan = self.search.parser().parse([resource_type], list(scope.params))
            if any(isinstance(c, Chain | ReverseChain) for c in plan.conditions):
                return None  # see the module docstring: granular scopes do not chain
            params = await Compiler(self.search).filter(resource_type, plan.conditions)
        except FhirError:
            return None  # a scope whose parameters do not apply to this type grants nothing
        return all_of(context, params)

    def _why(self, resource_type: str, interaction: str) -> str:
        assert self.access is not None
        grants = self.access.scopes.grants(resource_type, interaction)
        if not grants:
            return "no granted scope covers it"
        if all(self.patient_context(g) is None for g in grants):
            return "its patient scopes need a patient in the launch context"
        if interaction not in READ_ONLY:
            return "resources outside the Patient compartment are read-only in patient context"
        return "the granted scopes do not apply to this type"

    def confined_patients(self, resource_type: str) -> frozenset[str] | None:
        """The patients every usable read grant on the type confines it to; None when
        some grant leaves it unconfined (or the type is outside the compartment)."""
        if self.access is None:
            return None
        registry = self.search.registry
        if resource_type != "Patient" and not registry.patient_compartment(resource_type):
            return None
        found: set[str] = set()
        for grant in self.access.scopes.grants(resource_type, "r"):
            patient = self.patient_context(grant)
            if patient is False:
                return None
            if isinstance(patient, str):
                found.add(patient)
        return frozenset(found)

    def version_visible(self, version: StoredVersion) -> bool:
        """History: was this version, when written, in a compartment the token covers?
        (A resource moved from another patient's record into this one keeps its older
        versions out of sight.) Deletions carry no content and follow the resource."""
        if self.access is None or version.raw is None:
            return True
        patients = self.confined_patients(version.type)
        if patients is None:
            return True
        resource = load_stored(version.raw)
        comp = index_resource(resource, self.search.registry, request_base_url.get()).comp
        return any(f"Patient/{p}" in comp for p in patients)

    async def types_filter(
        self, interaction: str, types: list[str] | None, existing: set[str]
    ) -> Filter | None:
        """A filter on documents that carry their type in ``t`` (history) for ``types``
        (None: every type): per type, the ids within the allowed set. None: no
        restriction at all."""
        if self.access is None:
            return None
        clauses: list[Filter] = []
        everything = True
        permitted = False
        for t in types if types is not None else resource_types():
            allowed = await self.try_restriction(t, interaction)
            if allowed is None:
                everything = False
                continue
            permitted = True
            if t not in existing:
                continue
            if not allowed:
                clauses.append({"t": t})
                continue
            everything = False
            ids = await self.allowed_ids(t, allowed)
            if ids:
                clauses.append({"t": t, "id": {"$in": ids}})
        if not permitted:
            raise FhirError.of(
                403,
                "forbidden",
                f"The access token does not permit {_WORDS.get(interaction, interaction)} "
                "on any of these resource types",
            )
        if everything:
            return None
        return any_of(clauses) if clauses else NOTHING

    async def allowed_ids(self, resource_type: str, allowed: Filter) -> list[str]:
        """The ids of the allowed set (which includes deleted resources only when it is
        unrestricted), bounded: a restricted token sees a patient's record, not a
        population."""
        limit = MAX_RESTRICTED_IDS
        cursor = self.search.storage.current(resource_type).find(
            allowed, {"_id": 1}, limit=limit + 1
        )
        ids = [d["_id"] async for d in cursor]
        if len(ids) > limit:
            raise FhirError.of(
                400,
                "too-costly",
                f"The token's access to {resource_type} covers more than {limit} resources; "
                "ask for the history of one resource instead",
                resource_type,
            )
        return ids


MAX_RESTRICTED_IDS = 10_000
