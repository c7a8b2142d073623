"""The terminology operations, one entry point per operation, for the HTTP layer
(fhir_server/api/terminology.py) and the CapabilityStatement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pymongo.errors import ExecutionTimeout, OperationFailure

from fhir_server.outcome import FhirError
from fhir_server.storage import Storage
from terminology import codesystem, conceptmap, valueset
from terminology.concepts import ConceptStore, ensure_indexes
from terminology.freshness import Freshness
from terminology.params import Inputs
from terminology.resolve import Filter, Resolver
from terminology.searching import ExpansionCache, Restrict, SearchCodes, SubtreeCache

_DEF = "http://hl7.org/fhir/OperationDefinition"
_BAD_REGEX = 51091


@dataclass(frozen=True, slots=True)
class Operation:
    type: str
    name: str
    params: tuple[str, ...]
    reads: tuple[str, ...]  # the types whose resources the operation reads

    @property
    def definition(self) -> Mapping[str, str]:
        return MappingProxyType(
            {"name": self.name, "definition": f"{_DEF}/{self.type}-{self.name}"}
        )


OPERATIONS: tuple[Operation, ...] = (
    Operation("CodeSystem", "lookup", codesystem.LOOKUP_PARAMS, ("CodeSystem",)),
    Operation("CodeSystem", "validate-code", codesystem.VALIDATE_PARAMS, ("CodeSystem",)),
    Operation("CodeSystem", "subsumes", codesystem.SUBSUMES_PARAMS, ("CodeSystem",)),
    Operation("ValueSet", "expand", valueset.EXPAND_PARAMS, ("ValueSet", "CodeSystem")),
    Operation("ValueSet", "validate-code", valueset.VALIDATE_PARAMS, ("ValueSet", "CodeSystem")),
    Operation("ConceptMap", "translate", conceptmap.TRANSLATE_PARAMS, ("ConceptMap",)),
)


def capability_operations() -> dict[str, tuple[Mapping[str, str], ...]]:
    """rest.resource[type].operation entries of the terminology operations."""
    out: dict[str, tuple[Mapping[str, str], ...]] = {}
    for op in OPERATIONS:
        out[op.type] = (*out.get(op.type, ()), op.definition)
    return out


class TerminologyService:
    def __init__(
        self, storage: Storage, max_expansion: int = 10_000, freshness: Freshness | None = None
    ) -> None:
        self.resolver = Resolver(storage, freshness)
        self.store = ConceptStore(storage.db)
        self.codesystems = codesystem.CodeSystemOperations(self.resolver, self.store)
        self.valuesets = valueset.ValueSetOperations(self.resolver, self.store, max_expansion)
        self.conceptmaps = conceptmap.ConceptMapOperations(self.resolver)
        self.max_expansion = max_expansion
        self.subtrees = SubtreeCache()
        self.expansions = ExpansionCache()
        self._indexed = False
        self._storage = storage

    async def ready(self) -> None:
        """The concept store's indexes exist (declared on first use)."""
        if not self._indexed:
            await ensure_indexes(self._storage.db)
            self._indexed = True

    def for_search(self, restrict: Restrict) -> SearchCodes:
        """The :in/:not-in/:below/:above lookups of one search, within ``restrict``."""
        return SearchCodes(
            self.resolver,
            self.store,
            restrict,
            self.max_expansion,
            self.subtrees,
            self.expansions,
            self.ready,
        )

    async def run(
        self, op: Operation, inp: Inputs, rid: str | None, restrictions: dict[str, Filter]
    ) -> dict[str, Any]:
        await self.ready()
        try:
            return await self._run(op, inp, rid, restrictions)
        except ExecutionTimeout:
            raise FhirError.of(
                422, "too-costly", "The operation's concept query ran too long; narrow it"
            ) from None
        except OperationFailure as exc:
            if exc.code == _BAD_REGEX:  # a regex filter Python accepts and MongoDB does not
                raise FhirError.of(
                    400, "invalid", f"The regex is not valid: {exc.details}"
                ) from None
            raise

    async def _run(
        self, op: Operation, inp: Inputs, rid: str | None, restrictions: dict[str, Filter]
    ) -> dict[str, Any]:
        key = (op.type, op.name)
        if key == ("CodeSystem", "lookup"):
            return await self.codesystems.lookup(inp, rid, restrictions["CodeSystem"])
        if key == ("CodeSystem", "validate-code"):
            return await self.codesystems.validate_code(inp, rid, restrictions["CodeSystem"])
        if key == ("CodeSystem", "subsumes"):
            return await self.codesystems.subsumes(inp, rid, restrictions["CodeSystem"])
        if key == ("ValueSet", "expand"):
            return await self.valuesets.expand(inp, rid, restrictions)
        if key == ("ValueSet", "validate-code"):
            return await self.valuesets.validate_code(inp, rid, restrictions)
        conceptmap.check_translate_inputs(inp)
        return await self.conceptmaps.translate(inp, rid, restrictions["ConceptMap"])
