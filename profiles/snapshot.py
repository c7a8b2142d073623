"""Snapshot generation for ``StructureDefinition/$snapshot`` (issue #14;
structuredefinition-operation-snapshot.html).

The base snapshot of an R4 type is generated from the element model the validation pass
holds (fhir_server/definitions/elements.json, a compact form of the R4
StructureDefinitions): each element with its ``id``, ``path``, ``min``, ``max``,
``type`` (the codes; ``BackboneElement`` for nested elements), ``binding`` (required
and extensible ones) and ``base`` {path, min, max}; backbone elements are unrolled, data
types are not. The compact model does not keep the specification's element order:
data/element_order.json holds it (tools/generate_element_order.py). Nor does it keep
descriptions (``short``, ``definition``), constraints or mappings: the generated base
elements lack them, but for a ``definition`` that points at the specification (sdf-3
asks every snapshot element for one).

The differential is merged into the base (profiling.html#snapshot): each differential
element overrides the properties of the element with its id (``constraint`` and
``mapping`` are added to the inherited ones); a path into a data type unrolls that type's
children first; a slice (``id`` with ``:sliceName``) is inserted after its sliced
element, its descendants and the slices before it, as a copy of the sliced element.
Type-choice renames (``value[x]:valueQuantity``, or a path ``Observation.valueQuantity``)
are merged into the choice element itself. A profile of a profile is merged over the
base profile's snapshot (the caller provides it).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from fhir_server.validation.model import COMPLEX, PRIMITIVE, TypeInfo, model

CORE = "http://hl7.org/fhir/StructureDefinition/"
COMMON = (
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
)
ORDER_FILE = Path(__file__).parent / "data" / "element_order.json"
_APPENDED = ("constraint", "mapping")
_KEPT = ("id", "path", "base")


class SnapshotError(Exception):
    """The snapshot cannot be generated; ``expression`` names the element at fault."""

    def __init__(self, message: str, expression: str = "StructureDefinition") -> None:
        super().__init__(message)
        self.expression = expression


@cache
def _order() -> dict[str, dict[str, int]]:
    """Each type's element names -> their position in the R4 definitions
    (tools/generate_element_order.py)."""
    raw: dict[str, list[str]] = json.loads(ORDER_FILE.read_text())
    return {t: {n: i for i, n in enumerate(names)} for t, names in raw.items()}


def base_snapshot(type_name: str) -> list[dict[str, Any]]:
    """The snapshot elements of the R4 type (resource or data type)."""
    m = model()
    info = m.types.get(type_name)
    if info is None or "." in type_name:
        raise SnapshotError(f"{type_name!r} is not an R4 type", "StructureDefinition.type")
    root = {
        "id": type_name,
        "path": type_name,
        "min": 0,
        "max": "*",
        "base": {"path": type_name, "min": 0, "max": "*"},
        "definition": _definition(type_name),
    }
    return [root, *_children(info, type_name, type_name)]


def _definition(path: str) -> str:
    """sdf-3 asks every snapshot element for a definition; the compact model holds no
    texts, so the element names where its formal definition is."""
    return f"{path}, as the FHIR R4 (4.0.1) specification defines it (http://hl7.org/fhir/R4/)."


def _children(info: TypeInfo, id_prefix: str, path_prefix: str) -> list[dict[str, Any]]:
    """The elements below an instance of ``info`` (backbone elements unrolled)."""
    m = model()
    required = {name for name, _ in info.required}
    names: list[str] = []
    groups: dict[str, list[str]] = {}
    for key, el in info.elements.items():
        if key == "resourceType":
            continue
        name = el.group or key
        if name not in groups:
            names.append(name)
            groups[name] = []
        groups[name].append(key)
    common = {n: i for i, n in enumerate(COMMON)}
    order = _order().get(info.name, {})
    names.sort(key=lambda n: (order.get(n, len(order)), common.get(n, len(COMMON)), n))
    out: list[dict[str, Any]] = []
    for name in names:
        keys = groups[name]
        first = info.elements[keys[0]]
        choice = bool(first.group)
        segment = f"{name}[x]" if choice else name
        path = f"{path_prefix}.{segment}"
        backbone = first.kind == COMPLEX and "." in first.type_name
        codes = ["BackboneElement"] if backbone else [info.elements[k].type_name for k in keys]
        minimum = 1 if name in required else 0
        maximum = "*" if first.many else "1"
        element: dict[str, Any] = {
            "id": f"{id_prefix}.{segment}",
            "path": path,
            "min": minimum,
            "max": maximum,
            "base": {"path": path, "min": minimum, "max": maximum},
            "type": [{"code": c} for c in codes],
            "definition": _definition(path),
        }
        if first.value_set:
            element["binding"] = {"strength": first.strength, "valueSet": first.value_set}
        out.append(element)
        if backbone:
            out += _children(m.types[first.type_name], element["id"], path)
    return out


def _type_children(element: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The children of an element of one complex data type, or None."""
    codes = [t.get("code") for t in element.get("type") or () if isinstance(t, dict)]
    if len(codes) != 1 or not isinstance(codes[0], str):
        return None
    info = model().types.get(codes[0])
    if info is None or "." in codes[0] or codes[0] in model().resources:
        return None
    if all(el.kind == PRIMITIVE for el in info.elements.values()) and codes[0][:1].islower():
        return None  # a primitive type: its value has no elements worth unrolling
    return _children(info, element["id"], element["path"])


def _normalize(ident: str) -> str:
    """Type-choice renames merge into the choice element: ``value[x]:valueQuantity``
    is ``value[x]``."""
    out = []
    for segment in ident.split("."):
        name, _, slice_name = segment.partition(":")
        if slice_name and name.endswith("[x]") and slice_name.startswith(name[:-3]):
            segment = name
        out.append(segment)
    return ".".join(out)


def _path_id(path: str, snapshot: list[dict[str, Any]]) -> str:
    """An id for a differential element given by path only: ``Observation.valueQuantity``
    is the choice element ``Observation.value[x]`` when that exists."""
    ids = {e["id"] for e in snapshot}
    if path in ids:
        return path
    parent, _, name = path.rpartition(".")
    for e in snapshot:
        ident = e["id"]
        if ident.startswith(parent + ".") and ident.endswith("[x]"):
            stem = ident[len(parent) + 1 : -3]
            if (
                "." not in stem
                and name.startswith(stem)
                and name[len(stem) : len(stem) + 1].isupper()
            ):
                return ident
    return path


class _Merger:
    def __init__(self, snapshot: list[dict[str, Any]]) -> None:
        self.elements = snapshot
        # the base definition's elements, before the differential: a new slice starts
        # from the base's element, not from the sliced element as this profile changed it
        self.original = copy.deepcopy(snapshot)
        self.by_id = {str(e.get("id")): e for e in self.original}

    def index(self, ident: str) -> int | None:
        for i, e in enumerate(self.elements):
            if e.get("id") == ident:
                return i
        return None

    def _end_of(self, ident: str) -> int:
        """The position after the element, its descendants and its slices."""
        i = self.index(ident)
        assert i is not None
        j = i + 1
        while j < len(self.elements):
            other = str(self.elements[j].get("id"))
            if other.startswith(ident + ".") or other.startswith(ident + ":"):
                j += 1
            else:
                break
        return j

    def ensure(self, ident: str, where: str) -> int:
        """The position of the element ``ident``, made when the base allows it."""
        found = self.index(ident)
        if found is not None:
            return found
        parent, dot, last = ident.rpartition(".")
        name, colon, slice_name = last.partition(":")
        if colon:
            sliced = f"{parent}{dot}{name}"
            at = self.ensure(sliced, where)
            end = self._end_of(sliced)
            piece = copy.deepcopy(self.by_id.get(sliced, self.elements[at]))
            piece["id"] = ident
            piece["sliceName"] = slice_name
            piece.pop("slicing", None)
            # the base's descendants of the sliced element (backbone elements), under the
            # slice's id; a data type's are unrolled when the differential enters them
            below = [
                {**copy.deepcopy(e), "id": ident + str(e["id"])[len(sliced) :]}
                for e in self.original
                if str(e.get("id")).startswith(sliced + ".")
            ]
            self.elements[end:end] = [piece, *below]
            return end
        if not dot:
            raise SnapshotError(f"{ident}: not an element of the base", where)
        at = self.ensure(parent, where)
        if not any(str(e["id"]).startswith(parent + ".") for e in self.elements):
            children = _type_children(self.elements[at])
            if children:
                end = at + 1
                self.elements[end:end] = children
        found = self.index(ident)
        if found is None:
            raise SnapshotError(f"{ident}: no such element in the base definition", where)
        return found

    def apply(self, diff: dict[str, Any], where: str) -> None:
        ident = diff.get("id")
        path = diff.get("path")
        if not isinstance(ident, str):
            if not isinstance(path, str):
                raise SnapshotError("a differential element needs a path", where)
            ident = _path_id(path, self.elements)
            if isinstance(diff.get("sliceName"), str):
                ident = f"{ident}:{diff['sliceName']}"
        ident = _normalize(ident)
        if "." not in ident and self.elements and ident != self.elements[0]["id"]:
            raise SnapshotError(f"{ident}: not an element of {self.elements[0]['id']}", where)
        at = self.ensure(ident, where)
        target = self.elements[at]
        for key, value in diff.items():
            if key in _KEPT:
                continue
            if key in _APPENDED and isinstance(value, list):
                target[key] = [*(target.get(key) or []), *copy.deepcopy(value)]
            else:
                target[key] = copy.deepcopy(value)


def generate(sd: dict[str, Any], base: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The StructureDefinition with its snapshot generated from ``base`` (the base
    definition's snapshot elements; default the R4 type's) and its differential."""
    rtype = sd.get("type")
    if not isinstance(rtype, str):
        raise SnapshotError("the StructureDefinition has no type", "StructureDefinition.type")
    merger = _Merger(copy.deepcopy(base) if base is not None else base_snapshot(rtype))
    differential = sd.get("differential")
    elements = differential.get("element") if isinstance(differential, dict) else None
    if not isinstance(elements, list):
        raise SnapshotError(
            "the StructureDefinition has no differential to generate a snapshot from",
            "StructureDefinition.differential",
        )
    for i, diff in enumerate(elements):
        where = f"StructureDefinition.differential.element[{i}]"
        if not isinstance(diff, dict):
            raise SnapshotError("a differential element must be an object", where)
        merger.apply(diff, where)
    out = {k: v for k, v in sd.items() if k != "snapshot"}
    out["snapshot"] = {"element": merger.elements}
    return out


def base_url_of(sd: dict[str, Any]) -> str | None:
    """The baseDefinition when it is another profile (not an R4 core type)."""
    base = sd.get("baseDefinition")
    if isinstance(base, str) and base != CORE + str(sd.get("type")):
        return base
    return None
