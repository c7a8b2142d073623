"""The R4 element model from definitions/elements.json, shaped for fast lookups.

elements.json is generated from the 4.0.1 StructureDefinitions by
tools/generate_definitions.py. It is loaded once, on first use, into ``TypeInfo`` objects
keyed by datatype name or backbone path ("HumanName", "Patient.contact"), each holding its
JSON properties as ``Element`` objects with everything the per-value checks need already
resolved (type object, primitive checker, binding, FHIRPath name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from fhir_server.validation.primitives import PrimitiveCheck, primitive_check

PRIMITIVE = 0
COMPLEX = 1
RESOURCE = 2
RESOURCE_TYPE = 3  # the "resourceType" property of a resource, checked before the walk


@dataclass(slots=True, eq=False)
class Element:
    """One JSON property of a type (a choice element has one per allowed type)."""

    name: str
    type_name: str
    many: bool
    kind: int
    group: str  # FHIRPath name of the choice element ("deceased"), "" when not a choice
    check: PrimitiveCheck | None = None
    info: TypeInfo | None = None  # the complex type, resolved after loading
    value_set: str = ""  # a required or extensible binding (bindings.py checks it)
    strength: str = ""  # "required" or "extensible" when value_set is set
    codes: frozenset[str] | None = None  # a code element's required binding, enumerated
    fhirpath: str = ""  # the name in expressions: ``name``, or ``value.ofType(Quantity)``

    def __post_init__(self) -> None:
        self.fhirpath = self.name if not self.group else choice_path(self)


def choice_path(el: Element) -> str:
    """A choice element's type as FHIRPath names it (``valueQuantity`` is
    ``value.ofType(Quantity)``, ``deceasedBoolean`` ``deceased.ofType(boolean)``), as
    the HL7 validator writes issue expressions."""
    suffix = el.name[len(el.group) :]
    if el.kind == PRIMITIVE:
        suffix = suffix[:1].lower() + suffix[1:]
    return f"{el.group}.ofType({suffix})"


@dataclass(slots=True, eq=False)
class TypeInfo:
    name: str
    elements: dict[str, Element]
    required: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (FHIRPath name, JSON keys)
    resource_keys: tuple[str, ...] = ()  # elements that hold resources
    bearing_keys: tuple[str, ...] = ()  # complex elements with resources somewhere below
    choice_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    constraints: Any = None  # invariants.TypeConstraints, when the type has invariants


@dataclass(frozen=True, slots=True)
class Model:
    types: dict[str, TypeInfo]
    resources: frozenset[str]
    r4b_unusable: frozenset[str]  # resource types whose R4B model differs from R4


@cache
def raw_definitions() -> dict[str, Any]:
    text = resources.files("fhir_server.definitions").joinpath("elements.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@cache
def model() -> Model:
    raw = raw_definitions()
    resource_names = frozenset(raw["resources"])
    checks = {name: primitive_check(name, rx) for name, rx in raw["primitives"].items()}
    value_sets = {url: frozenset(codes) for url, codes in raw["valueSets"].items()}
    types = {
        name: _type_info(name, table, checks, value_sets, resource_names)
        for name, table in raw["types"].items()
    }
    for info in types.values():
        for el in info.elements.values():
            if el.kind == COMPLEX:
                el.info = types[el.type_name]
    _mark_resource_holders(types)
    from fhir_server.validation.invariants import attach_constraints

    attach_constraints(types, resource_names)
    unusable = frozenset(raw["r4bDifferences"]["resources"])
    return Model(types, resource_names, unusable)


def _type_info(
    name: str,
    table: dict[str, Any],
    checks: dict[str, PrimitiveCheck],
    value_sets: dict[str, frozenset[str]],
    resource_names: frozenset[str],
) -> TypeInfo:
    elements: dict[str, Element] = {}
    groups: dict[str, list[str]] = {}
    for key, entry in table["e"].items():
        type_name, many = entry[0], bool(entry[1])
        group = entry[2] if len(entry) > 2 else ""
        if type_name in checks:
            el = Element(key, type_name, many, PRIMITIVE, group, check=checks[type_name])
        elif type_name == "Resource" or type_name in resource_names:
            el = Element(key, type_name, many, RESOURCE, group)
        else:
            el = Element(key, type_name, many, COMPLEX, group)
        if len(entry) > 4:
            el.value_set, el.strength = entry[3], entry[4]
            if type_name == "code" and el.strength == "required":
                el.codes = value_sets.get(el.value_set)
        elements[key] = el
        if group:
            groups.setdefault(group, []).append(key)
    if name in resource_names:
        elements["resourceType"] = Element("resourceType", "code", False, RESOURCE_TYPE, "")
    return TypeInfo(
        name,
        elements,
        required=tuple(_required_keys(r, elements, groups) for r in table["r"]),
        resource_keys=tuple(k for k, el in elements.items() if el.kind == RESOURCE),
        choice_groups={g: tuple(keys) for g, keys in groups.items()},
    )


def _required_keys(
    name: str, elements: dict[str, Element], groups: dict[str, list[str]]
) -> tuple[str, tuple[str, ...]]:
    """The JSON keys any of which satisfies a min-1 element: a primitive may be present
    through its ``_name`` extension alone (extensibility.html#Special-Case)."""
    keys = groups.get(name, [name])
    out = []
    for key in keys:
        out.append(key)
        if elements[key].kind == PRIMITIVE:
            out.append("_" + key)
    return name, tuple(out)


def _mark_resource_holders(types: dict[str, TypeInfo]) -> None:
    """Fill ``bearing_keys``: the complex elements under which resources can occur
    (Bundle.entry, Parameters.parameter.part), so that stripping them is cheap."""
    holders = {name for name, info in types.items() if info.resource_keys}
    changed = True
    while changed:
        changed = False
        for name, info in types.items():
            if name in holders:
                continue
            if any(el.kind == COMPLEX and el.type_name in holders for el in info.elements.values()):
                holders.add(name)
                changed = True
    for info in types.values():
        info.bearing_keys = tuple(
            k for k, el in info.elements.items() if el.kind == COMPLEX and el.type_name in holders
        )
