"""Structural validation of a SQL on FHIR v2 ViewDefinition (https://sql-on-fhir.org/).

A ViewDefinition arrives as JSON from a client, so every rule of the logical model that
can be checked without data is checked here, before any resource is read: required
elements, JSON types, ``constant.value[x]``, the ``sql-name`` invariant on names, at
most one of ``forEach``/``forEachOrNull``/``repeat`` per select, column names unique
across the view and ``unionAll`` branches with the same columns (the "ValidateColumns"
step of the specification's processing algorithm). Errors name the element at fault.
The result is a small immutable tree that ``engine`` compiles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir_server.resource_types import is_resource_type
from fhir_server.views.errors import ViewDefinitionError

SQL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
STATUSES = frozenset({"draft", "active", "retired", "unknown"})

# constant.value[x] types, and the JSON shape each takes.
_TEXT_TYPES = (
    "base64Binary canonical code date dateTime id instant oid string time uri url uuid markdown"
)
CONSTANT_TYPES: dict[str, tuple[type, ...]] = {
    **{name: (str,) for name in _TEXT_TYPES.split()},
    "boolean": (bool,),
    "decimal": (int, float, Decimal),
    "integer": (int,),
    "integer64": (int, str),  # R5 writes integer64 as a JSON string
    "positiveInt": (int,),
    "unsignedInt": (int,),
}
_INTEGER_MINIMUM = {"positiveInt": 1, "unsignedInt": 0}
# The R4 regexes of the temporal primitives (datatypes.html#primitive), so that a
# malformed constant is refused rather than silently matching nothing.
_YEAR_MONTH_DAY = r"[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?"
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_ZONE = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_TEMPORAL_FORMATS = {
    "date": re.compile(_YEAR_MONTH_DAY),
    "dateTime": re.compile(f"{_YEAR_MONTH_DAY}(T{_CLOCK}{_ZONE})?"),
    "instant": re.compile(rf"[0-9]{{4}}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T{_CLOCK}{_ZONE}"),
    "time": re.compile(_CLOCK),
}
# The elements each part may have (besides id/extension): anything else is most likely a
# misspelling ("foreach") that would otherwise silently change the view.
_COMMON = frozenset({"id", "extension", "modifierExtension"})
_ELEMENTS = {
    "select": _COMMON | {"column", "select", "forEach", "forEachOrNull", "repeat", "unionAll"},
    "column": _COMMON | {"name", "path", "description", "collection", "type", "tag"},
    "where": _COMMON | {"path", "description"},
    "tag": _COMMON | {"name", "value"},
}


@dataclass(frozen=True, slots=True)
class Constant:
    name: str
    type: str  # the FHIR type of value[x], e.g. "string"
    value: Any


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    path: str
    location: str  # e.g. "ViewDefinition.select[0].column[1]"
    type: str | None = None
    collection: bool = False
    description: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Select:
    location: str
    columns: tuple[Column, ...] = ()
    selects: tuple[Select, ...] = ()
    union_all: tuple[Select, ...] = ()
    for_each: str | None = None
    for_each_or_null: str | None = None
    repeat: tuple[str, ...] = ()

    def all_columns(self) -> tuple[Column, ...]:
        """The columns this select produces, in output order: its own, then those of its
        nested selects, then those of the first unionAll branch."""
        found = list(self.columns)
        for child in self.selects:
            found.extend(child.all_columns())
        if self.union_all:
            found.extend(self.union_all[0].all_columns())
        return tuple(found)


@dataclass(frozen=True, slots=True)
class Where:
    path: str
    location: str


@dataclass(frozen=True, slots=True)
class ViewDefinition:
    resource: str
    selects: tuple[Select, ...]
    constants: tuple[Constant, ...] = ()
    where: tuple[Where, ...] = ()
    name: str | None = None
    status: str | None = None

    def columns(self) -> tuple[Column, ...]:
        found: list[Column] = []
        for select in self.selects:
            found.extend(select.all_columns())
        return tuple(found)


# --- JSON shape helpers ---------------------------------------------------------------------


def _object(value: Any, where: str, part: str | None = None) -> Mapping[str, Any]:
    """``value`` as an object; with ``part``, one having only that part's elements."""
    if not isinstance(value, Mapping):
        raise ViewDefinitionError("must be a JSON object", where)
    if part is not None:
        for key in value:
            if key not in _ELEMENTS[part]:
                raise ViewDefinitionError(f"unknown element {key!r} in a {part}", f"{where}.{key}")
    return value


def _list(data: Mapping[str, Any], key: str, where: str, required: bool = False) -> list[Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise ViewDefinitionError(f"{key} is required", f"{where}.{key}")
        return []
    if not isinstance(value, list) or (required and not value):
        shape = "a non-empty array" if required else "an array"
        raise ViewDefinitionError(f"{key} must be {shape}", f"{where}.{key}")
    return value


def _string(data: Mapping[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        text = "is required" if value is None else "must be a non-empty string"
        raise ViewDefinitionError(f"{key} {text}", f"{where}.{key}")
    return value


def _sql_name(data: Mapping[str, Any], where: str, required: bool = True) -> str | None:
    name = _string(data, "name", where, required)
    if name is not None and SQL_NAME.fullmatch(name) is None:
        raise ViewDefinitionError(
            f"name {name!r} must match ^[A-Za-z][A-Za-z0-9_]*$", f"{where}.name"
        )
    return name


# --- elements -------------------------------------------------------------------------------


def _constant(data: Any, where: str) -> Constant:
    data = _object(data, where)
    name = _sql_name(data, where)
    assert name is not None
    values = [key for key in data if key.startswith("value")]
    for key in data:
        if key not in _COMMON and key != "name" and key not in values:
            raise ViewDefinitionError(f"unknown element {key!r} in a constant", f"{where}.{key}")
    if len(values) != 1:
        raise ViewDefinitionError("needs exactly one value[x]", f"{where}.value[x]")
    key = values[0]
    kind = key[len("value") : len("value") + 1].lower() + key[len("value") + 1 :]
    if kind not in CONSTANT_TYPES:
        raise ViewDefinitionError(f"{key} is not an allowed constant type", f"{where}.{key}")
    value = data[key]
    _check_constant_value(value, kind, f"{where}.{key}")
    return Constant(name, kind, value)


def _check_constant_value(value: Any, kind: str, where: str) -> None:
    allowed = CONSTANT_TYPES[kind]
    wrong_bool = isinstance(value, bool) and bool not in allowed
    if wrong_bool or not isinstance(value, allowed):
        raise ViewDefinitionError(f"must be a {kind}", where)
    if isinstance(value, str) and not value.strip():
        raise ViewDefinitionError("must not be empty", where)
    minimum = _INTEGER_MINIMUM.get(kind)
    if minimum is not None and isinstance(value, int) and value < minimum:
        raise ViewDefinitionError(f"a {kind} must be at least {minimum}", where)
    pattern = _TEMPORAL_FORMATS.get(kind)
    if pattern is not None and pattern.fullmatch(str(value)) is None:
        raise ViewDefinitionError(f"{value!r} is not a valid {kind}", where)


def _tags(data: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    tags = []
    for i, tag in enumerate(_list(data, "tag", where)):
        at = f"{where}.tag[{i}]"
        tag = _object(tag, at, "tag")
        name, value = _string(tag, "name", at, True), _string(tag, "value", at, True)
        assert name is not None and value is not None
        tags.append((name, value))
    return tuple(tags)


def _column(data: Any, where: str) -> Column:
    data = _object(data, where, "column")
    name = _sql_name(data, where)
    path = _string(data, "path", where, True)
    assert name is not None and path is not None
    collection = data.get("collection", False)
    if not isinstance(collection, bool):
        raise ViewDefinitionError("collection must be a boolean", f"{where}.collection")
    return Column(
        name=name,
        path=path,
        location=where,
        type=_string(data, "type", where),
        collection=collection,
        description=_string(data, "description", where),
        tags=_tags(data, where),
    )


def _select(data: Any, where: str) -> Select:
    data = _object(data, where, "select")
    iterations = [key for key in ("forEach", "forEachOrNull", "repeat") if key in data]
    if len(iterations) > 1:
        raise ViewDefinitionError(
            "a select may have only one of forEach, forEachOrNull and repeat",
            f"{where}.{iterations[1]}",
        )
    repeat = _list(data, "repeat", where, required="repeat" in data)
    for i, path in enumerate(repeat):
        if not isinstance(path, str) or not path.strip():
            raise ViewDefinitionError("must be a non-empty string", f"{where}.repeat[{i}]")
    return Select(
        location=where,
        columns=tuple(
            _column(c, f"{where}.column[{i}]") for i, c in enumerate(_list(data, "column", where))
        ),
        selects=tuple(
            _select(s, f"{where}.select[{i}]") for i, s in enumerate(_list(data, "select", where))
        ),
        union_all=tuple(
            _select(s, f"{where}.unionAll[{i}]")
            for i, s in enumerate(_list(data, "unionAll", where))
        ),
        for_each=_string(data, "forEach", where),
        for_each_or_null=_string(data, "forEachOrNull", where),
        repeat=tuple(repeat),
    )


def _where(data: Any, where: str) -> Where:
    data = _object(data, where, "where")
    path = _string(data, "path", where, True)
    assert path is not None
    return Where(path, f"{where}.path")


# --- column checks (ValidateColumns) ----------------------------------------------------------


def _check_columns(select: Select, seen: dict[str, Column]) -> None:
    """Column names unique across the view; unionAll branches alike (names, order, and
    types where both declare one)."""
    for column in select.columns:
        _claim(column, seen)
    for child in select.selects:
        _check_columns(child, seen)
    if not select.union_all:
        return
    first = select.union_all[0].all_columns()
    for branch in select.union_all:
        _check_branch(branch, first, dict(seen))
    for column in first:
        _claim(column, seen)


def _claim(column: Column, seen: dict[str, Column]) -> None:
    if column.name in seen:
        raise ViewDefinitionError(
            f"column name {column.name!r} is already used by {seen[column.name].location}",
            f"{column.location}.name",
        )
    seen[column.name] = column


def _check_branch(branch: Select, first: tuple[Column, ...], seen: dict[str, Column]) -> None:
    _check_columns(branch, seen)
    columns = branch.all_columns()
    names = [c.name for c in columns]
    if names != [c.name for c in first]:
        raise ViewDefinitionError(
            f"unionAll branches must have the same columns in the same order: {names} "
            f"differs from {[c.name for c in first]}",
            branch.location,
        )
    for mine, theirs in zip(columns, first, strict=True):
        if mine.type and theirs.type and mine.type != theirs.type:
            raise ViewDefinitionError(
                f"column {mine.name!r} is {mine.type} here but {theirs.type} in the first "
                "unionAll branch",
                f"{mine.location}.type",
            )
        if mine.collection != theirs.collection:
            raise ViewDefinitionError(
                f"column {mine.name!r} differs in collection from the first unionAll branch",
                f"{mine.location}.collection",
            )


# --- entry point ----------------------------------------------------------------------------


def parse_view_definition(data: Any) -> ViewDefinition:
    """The validated ViewDefinition in ``data`` (its JSON), or ViewDefinitionError."""
    root = "ViewDefinition"
    data = _object(data, root)
    kind = data.get("resourceType", "ViewDefinition")
    if kind != "ViewDefinition":
        raise ViewDefinitionError("resourceType must be ViewDefinition", f"{root}.resourceType")
    resource = _string(data, "resource", root, True)
    assert resource is not None
    if not is_resource_type(resource):
        raise ViewDefinitionError(f"{resource!r} is not an R4 resource type", f"{root}.resource")
    status = _string(data, "status", root)
    if status is not None and status not in STATUSES:
        raise ViewDefinitionError(f"status must be one of {sorted(STATUSES)}", f"{root}.status")
    constants = tuple(
        _constant(c, f"{root}.constant[{i}]") for i, c in enumerate(_list(data, "constant", root))
    )
    _check_unique_constants(constants)
    view = ViewDefinition(
        resource=resource,
        selects=tuple(
            _select(s, f"{root}.select[{i}]")
            for i, s in enumerate(_list(data, "select", root, required=True))
        ),
        constants=constants,
        where=tuple(
            _where(w, f"{root}.where[{i}]") for i, w in enumerate(_list(data, "where", root))
        ),
        name=_sql_name(data, root, required=False),
        status=status,
    )
    seen: dict[str, Column] = {}
    for select in view.selects:
        _check_columns(select, seen)
    return view


def _check_unique_constants(constants: tuple[Constant, ...]) -> None:
    names: set[str] = set()
    for i, constant in enumerate(constants):
        if constant.name in names:
            raise ViewDefinitionError(
                f"constant {constant.name!r} is defined twice", f"ViewDefinition.constant[{i}]"
            )
        names.add(constant.name)
