"""A ViewDefinition compiled once and run resource by resource.

``compile_view`` validates the definition (``definition``), parses every FHIRPath
expression once and checks that each ``%name`` it uses is a constant of the view or a
built-in variable, so that a broken view fails before any data is read. ``View.rows``
then follows the specification's processing algorithm for one resource: ``where``
filters, then each select's foci (``forEach``, ``forEachOrNull``, ``repeat`` or the node
itself) produce partial rows whose Cartesian product with the nested selects and the
concatenated ``unionAll`` branches gives the rows. Only one resource's rows are held at
a time, so ``View.run`` streams over any iterable of resources.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import product
from typing import Any

from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.engine.util import get_data

from fhir_server.views.definition import (
    Column,
    Constant,
    Select,
    ViewDefinition,
    parse_view_definition,
)
from fhir_server.views.errors import ViewDefinitionError, ViewRunError
from fhir_server.views.fhirpath import BUILTIN_VARIABLES, FhirPathError, Path, to_value

Row = dict[str, Any]
Variables = Mapping[str, Any]

# repeat follows paths to any depth; a path that leads back to its input (``$this``)
# would never end, so nesting deeper than any real resource is refused.
MAX_REPEAT_DEPTH = 100

_TEMPORAL_TYPES = frozenset({"date", "dateTime", "instant", "time"})


@dataclass(frozen=True, slots=True)
class ViewColumn:
    """An output column: for headers and schemas (``type`` None means unspecified)."""

    name: str
    type: str | None
    collection: bool
    description: str | None
    tags: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Expression:
    path: Path
    location: str


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    expression: _Expression
    collection: bool


@dataclass(frozen=True, slots=True)
class _Select:
    columns: tuple[_Column, ...]
    selects: tuple[_Select, ...]
    union_all: tuple[_Select, ...]
    kind: str | None  # "forEach", "forEachOrNull", "repeat" or None
    iterate: tuple[_Expression, ...]  # the forEach/forEachOrNull path, or repeat's paths
    null_row: Row  # what forEachOrNull emits for an empty collection


class _Compiler:
    """Parses the expressions of one view, checking the variables each one uses."""

    def __init__(self, constants: Iterable[str]) -> None:
        self.known = BUILTIN_VARIABLES | frozenset(constants)

    def expression(self, text: str, location: str) -> _Expression:
        try:
            path = Path(text)
        except FhirPathError as exc:
            raise ViewDefinitionError(str(exc), location) from exc
        unknown = sorted(path.variables - self.known)
        if unknown:
            raise ViewDefinitionError(f"undefined constant %{unknown[0]}", location)
        return _Expression(path, location)

    def column(self, column: Column) -> _Column:
        expression = self.expression(column.path, f"{column.location}.path")
        return _Column(column.name, expression, column.collection)

    def select(self, select: Select) -> _Select:
        kind, iterate = _iteration(select)
        return _Select(
            columns=tuple(self.column(c) for c in select.columns),
            selects=tuple(self.select(s) for s in select.selects),
            union_all=tuple(self.select(s) for s in select.union_all),
            kind=kind,
            iterate=tuple(self.expression(text, where) for text, where in iterate),
            null_row={c.name: (0 if c.path == "%rowIndex" else None) for c in select.all_columns()},
        )


def _iteration(select: Select) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """The select's iteration kind and its (path, location) pairs, if it iterates."""
    where = select.location
    if select.for_each is not None:
        return "forEach", ((select.for_each, f"{where}.forEach"),)
    if select.for_each_or_null is not None:
        return "forEachOrNull", ((select.for_each_or_null, f"{where}.forEachOrNull"),)
    if select.repeat:
        paths = tuple((p, f"{where}.repeat[{i}]") for i, p in enumerate(select.repeat))
        return "repeat", paths
    return None, ()


def _check_constant_names(constants: tuple[Constant, ...]) -> None:
    """A constant may not hide a built-in variable such as %rowIndex or %resource."""
    for i, constant in enumerate(constants):
        if constant.name in BUILTIN_VARIABLES:
            raise ViewDefinitionError(
                f"constant {constant.name!r} would hide the built-in %{constant.name}",
                f"ViewDefinition.constant[{i}].name",
            )


def _constant_value(constant: Constant) -> Any:
    """A constant as FHIRPath sees it: dates and times typed (compared as such), numbers
    as numbers."""
    value = constant.value
    if constant.type in _TEMPORAL_TYPES:
        return ResourceNode.create_node(value, constant.type)
    if constant.type == "decimal":
        return Decimal(str(value))
    if constant.type == "integer64":
        return int(value)
    return value


class View:
    """A compiled ViewDefinition: ``rows(resource)`` yields its rows for one resource."""

    def __init__(self, definition: ViewDefinition) -> None:
        self.definition = definition
        self.resource_type = definition.resource
        _check_constant_names(definition.constants)
        compiler = _Compiler(c.name for c in definition.constants)
        self._where = tuple(compiler.expression(w.path, w.location) for w in definition.where)
        self._root = _Select(
            (), tuple(compiler.select(s) for s in definition.selects), (), None, (), {}
        )
        self._constants = {c.name: _constant_value(c) for c in definition.constants}
        self.columns = tuple(
            ViewColumn(c.name, c.type, c.collection, c.description, c.tags)
            for c in definition.columns()
        )
        self._names = tuple(c.name for c in self.columns)

    def run(self, resources: Iterable[Mapping[str, Any]]) -> Iterator[Row]:
        """The rows of every resource, one resource at a time."""
        for resource in resources:
            yield from self.rows(resource)

    def rows(self, resource: Mapping[str, Any]) -> Iterator[Row]:
        """The rows for ``resource`` (none if of another type or filtered out by where),
        each with every column in the view's order."""
        if resource.get("resourceType") != self.resource_type:
            return
        run = _Run(resource, self._constants)
        if not all(run.condition(where) for where in self._where):
            return
        for row in run.select(self._root, resource, run.variables):
            yield {name: row.get(name) for name in self._names}


class _Run:
    """The evaluation of one view on one resource."""

    def __init__(self, resource: Mapping[str, Any], constants: Variables) -> None:
        self.resource = resource
        self.label = f"{resource.get('resourceType')}/{resource.get('id')}"
        self.variables: Variables = {
            **constants,
            "resource": resource,
            "rootResource": resource,
            "context": resource,
            "rowIndex": 0,
        }

    def evaluate(self, expression: _Expression, focus: Any, variables: Variables) -> list[Any]:
        try:
            return expression.path(focus, variables)
        except FhirPathError as exc:
            raise ViewRunError(str(exc), expression.location, self.label) from exc

    def condition(self, expression: _Expression) -> bool:
        """A where path: empty is false, a single boolean is itself, else an error."""
        result = self.evaluate(expression, self.resource, self.variables)
        values = [get_data(item) for item in result]
        if not values:
            return False
        if len(values) == 1 and isinstance(values[0], bool):
            return values[0]
        raise ViewRunError(
            f"where must give a boolean, got {[to_value(v) for v in values]!r}",
            expression.location,
            self.label,
        )

    def column(self, column: _Column, focus: Any, variables: Variables) -> Any:
        expression = column.expression
        try:
            values = expression.path.values(focus, variables)
        except FhirPathError as exc:
            raise ViewRunError(str(exc), expression.location, self.label) from exc
        if column.collection:
            return values
        if len(values) > 1:
            raise ViewRunError(
                f"column {column.name!r} has {len(values)} values but is not a collection",
                column.expression.location,
                self.label,
            )
        return values[0] if values else None

    def foci(self, select: _Select, node: Any, variables: Variables) -> list[Any]:
        if select.kind == "repeat":
            found: list[Any] = []
            self._descend(select.iterate, node, variables, found, 0)
            return found
        return self.evaluate(select.iterate[0], node, variables)

    def _descend(
        self,
        paths: tuple[_Expression, ...],
        node: Any,
        variables: Variables,
        found: list[Any],
        depth: int,
    ) -> None:
        """repeat: each path's results, each followed by its own descendants (pre-order)."""
        if depth >= MAX_REPEAT_DEPTH:
            raise ViewRunError(
                f"repeat goes deeper than {MAX_REPEAT_DEPTH} levels", paths[0].location, self.label
            )
        for path in paths:
            for child in self.evaluate(path, node, variables):
                found.append(child)
                self._descend(paths, child, variables, found, depth + 1)

    def select(self, select: _Select, node: Any, variables: Variables) -> list[Row]:
        """The rows of one select on ``node``: per focus, with %rowIndex its position."""
        if select.kind is None:
            return self._combine(select, node, variables)
        foci = self.foci(select, node, variables)
        if not foci and select.kind == "forEachOrNull":
            return [dict(select.null_row)]
        rows: list[Row] = []
        for index, focus in enumerate(foci):
            rows.extend(self._combine(select, focus, {**variables, "rowIndex": index}))
        return rows

    def _combine(self, select: _Select, focus: Any, variables: Variables) -> list[Row]:
        """The Cartesian product of this select's columns, nested selects and union."""
        own = {c.name: self.column(c, focus, variables) for c in select.columns}
        parts: list[list[Row]] = [[own]]
        for child in select.selects:
            parts.append(self.select(child, focus, variables))
        if select.union_all:
            union = [
                row for branch in select.union_all for row in self.select(branch, focus, variables)
            ]
            parts.append(union)
        rows = []
        for combination in product(*parts):
            row: Row = {}
            for part in combination:
                row.update(part)
            rows.append(row)
        return rows


def compile_view(definition: Mapping[str, Any] | ViewDefinition) -> View:
    """The compiled view, or ViewDefinitionError naming what is wrong with it."""
    if not isinstance(definition, ViewDefinition):
        definition = parse_view_definition(definition)
    return View(definition)
