"""The search parameters of each resource type (search.html#params).

Built from the generated ``definitions/search_parameters.json`` (the official R4
SearchParameters, each expression restricted to one base type) and
``definitions/compartment_patient.json``; ``Registry.with_custom`` adds or overrides
parameters from SearchParameter resources. A registry is immutable: the extractor
(``fhir_server.search.extract``) compiles each type's expressions once per registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from fhir_server.resource_types import is_resource_type

COMMON_BASES = frozenset({"Resource", "DomainResource"})
PARAM_TYPES = frozenset(
    {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"}
)
EMPTY: Mapping[str, SearchParam] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a composite: the component parameter's code and type, and its
    expression relative to each element the composite's expression selects."""

    code: str
    type: str
    expression: str


@dataclass(frozen=True, slots=True)
class SearchParam:
    code: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    url: str
    base: str  # the resource type, or "Resource" for the parameters of every type
    expression: str | None  # FHIRPath, restricted to ``base``; None: not indexable
    targets: tuple[str, ...] = ()  # reference: the resource types it may point to
    components: tuple[Component, ...] = ()  # composite only
    comparators: tuple[str, ...] = ()  # prefixes the definition allows (eq, gt, ...)
    modifiers: tuple[str, ...] = ()  # as declared by the definition (R4 core declares none)
    multiple_or: bool = True
    multiple_and: bool = True
    usage: str = "normal"  # xpathUsage: normal | phonetic | nearby | distance | other

    @property
    def supported(self) -> bool:
        """Whether values can be indexed (``_text``, ``_content``, ``_query`` cannot)."""
        return self.expression is not None and self.type != "special"


# --- FHIRPath unions ---------------------------------------------------------------------


def split_union(expression: str) -> list[str]:
    """The top-level ``|`` operands of an expression (not inside brackets or strings)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(expression):
        if quote:
            if ch == quote and expression[i - 1] != "\\":
                quote = ""
        elif ch in "'`":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def root_name(part: str) -> str:
    """The leading identifier of a union operand: ``(Observation.value as X)`` gives
    ``Observation``."""
    text = part.lstrip("( ")
    end = 0
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return text[:end]


def restrict_expression(expression: str, resource_type: str) -> str | None:
    """The operands of a multi-base expression that apply to ``resource_type``
    (``clinical-patient`` lists one operand per base). An expression whose operands
    do not start with type names (``%resource...``, a bare path) is kept whole."""
    parts = split_union(expression)
    roots = [root_name(p) for p in parts]
    if not all(r[:1].isupper() for r in roots):
        return expression
    kept = [p for p, r in zip(parts, roots, strict=True) if r in (resource_type, *COMMON_BASES)]
    return " | ".join(kept) if kept else None


# --- the registry ------------------------------------------------------------------------


class Registry:
    """Search parameters by resource type (``common`` apply to every type and are
    overridden by a type's own parameter of the same code)."""

    def __init__(
        self,
        common: Mapping[str, SearchParam],
        by_type: Mapping[str, Mapping[str, SearchParam]],
        compartment: Mapping[str, tuple[str, ...]],
    ) -> None:
        self.common = MappingProxyType(dict(common))
        self.by_type = MappingProxyType({t: MappingProxyType(dict(p)) for t, p in by_type.items()})
        self.compartment = MappingProxyType(dict(compartment))
        self._merged: dict[str, Mapping[str, SearchParam]] = {}

    @classmethod
    def from_definitions(cls) -> Registry:
        """The R4 core parameters (loaded once, shared)."""
        return _default_registry()

    def params(self, resource_type: str) -> Mapping[str, SearchParam]:
        """Every parameter of the type, common ones included, by code."""
        merged = self._merged.get(resource_type)
        if merged is None:
            own = self.by_type.get(resource_type, EMPTY)
            merged = MappingProxyType({**self.common, **own})
            self._merged[resource_type] = merged
        return merged

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self.params(resource_type).get(code)

    def patient_compartment(self, resource_type: str) -> tuple[str, ...]:
        """Codes of the parameters that put a resource of this type in a Patient's
        compartment (compartmentdefinition-patient.html); empty if it never is."""
        return self.compartment.get(resource_type, ())

    def resource_types(self) -> Iterator[str]:
        return iter(self.by_type)

    def with_custom(self, search_parameters: Iterable[dict[str, Any]]) -> Registry:
        """A new registry with parameters from SearchParameter resources added (a code a
        type already has is replaced). ValueError on a definition that cannot be used."""
        common = dict(self.common)
        by_type = {t: dict(p) for t, p in self.by_type.items()}
        # composites last: their components may be defined in the same batch
        ordered = sorted(search_parameters, key=lambda r: r.get("type") == "composite")
        for resource in ordered:
            for param in _from_resource(resource, common, by_type):
                if param.base in COMMON_BASES:
                    common[param.code] = param
                else:
                    by_type.setdefault(param.base, {})[param.code] = param
        return Registry(common, by_type, self.compartment)


# --- loading -----------------------------------------------------------------------------


def _read_definition(name: str) -> Any:
    return json.loads(resources.files("fhir_server.definitions").joinpath(name).read_text())


@cache
def _default_registry() -> Registry:
    data = _read_definition("search_parameters.json")
    any_target = tuple(data["anyTarget"])
    common = {c: param_from_entry(c, "Resource", e, any_target) for c, e in data["common"].items()}
    by_type = {
        t: {c: param_from_entry(c, t, e, any_target) for c, e in params.items()}
        for t, params in data["types"].items()
    }
    compartment = _read_definition("compartment_patient.json")["resources"]
    return Registry(common, by_type, {t: tuple(p) for t, p in compartment.items()})


def param_from_entry(
    code: str, base: str, e: dict[str, Any], any_target: tuple[str, ...] = ()
) -> SearchParam:
    """One parameter from its compact generated form (see tools/generate_definitions.py);
    a target of "any" stands for ``any_target``."""
    target = e.get("target", ())
    return SearchParam(
        code=code,
        type=e["type"],
        url=e["url"],
        base=base,
        expression=e.get("expression"),
        targets=any_target if target == "any" else tuple(target),
        components=tuple(Component(*c) for c in e.get("component", ())),
        comparators=tuple(e.get("comparator", ())),
        modifiers=tuple(e.get("modifier", ())),
        multiple_or=e.get("multipleOr", True),
        multiple_and=e.get("multipleAnd", True),
        usage=e.get("xpathUsage", "normal"),
    )


def _from_resource(
    sp: dict[str, Any],
    common: Mapping[str, SearchParam],
    by_type: Mapping[str, Mapping[str, SearchParam]],
) -> Iterator[SearchParam]:
    """One SearchParam per base of a SearchParameter resource."""
    if sp.get("resourceType") != "SearchParameter":
        raise ValueError("not a SearchParameter resource")
    code, ptype, url = sp.get("code"), sp.get("type"), sp.get("url")
    if not isinstance(code, str) or not code or ptype not in PARAM_TYPES:
        raise ValueError(f"SearchParameter {url!r}: needs a code and a valid type")
    bases = sp.get("base") or []
    for base in bases:
        if base not in COMMON_BASES and not is_resource_type(base):
            raise ValueError(f"SearchParameter {url!r}: unknown base {base!r}")
    expression = sp.get("expression")
    for base in bases:
        restricted = restrict_expression(expression, base) if expression else None
        yield SearchParam(
            code=code,
            type=ptype,
            url=url or "",
            base="Resource" if base in COMMON_BASES else base,
            expression=restricted,
            targets=tuple(sp.get("target", ())),
            components=tuple(_components(sp, base, common, by_type)),
            comparators=tuple(sp.get("comparator", ())),
            modifiers=tuple(sp.get("modifier", ())),
            multiple_or=sp.get("multipleOr", True),
            multiple_and=sp.get("multipleAnd", True),
            usage=sp.get("xpathUsage", "normal"),
        )


def _components(
    sp: dict[str, Any],
    base: str,
    common: Mapping[str, SearchParam],
    by_type: Mapping[str, Mapping[str, SearchParam]],
) -> Iterator[Component]:
    """A composite's components, each resolved by its definition URL to a parameter of
    the same base."""
    known = {**common, **by_type.get(base, {})}
    by_url = {p.url: p for p in known.values()}
    for c in sp.get("component", ()):
        target = by_url.get(c.get("definition", ""))
        if target is None or not c.get("expression"):
            raise ValueError(
                f"SearchParameter {sp.get('url')!r}: component {c.get('definition')!r} "
                f"is not a parameter of {base}"
            )
        yield Component(target.code, target.type, c["expression"])
