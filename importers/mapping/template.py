"""The ``fhir:`` template of a resource mapping: JSON-shaped YAML where a string that
starts with ``=`` is an expression (``==`` escapes a literal ``=``). After evaluation,
empty values (None, "", [], {}) are pruned, so an element whose columns are NULL simply
disappears. Two keys steer the shape:

- ``$if: EXPR`` in an object: the object is kept only when EXPR is true.
- ``{$each: CHILD, $do: TEMPLATE}`` as a list item: one item per row of the child rows
  ``CHILD`` (``children:`` of the mapping), each seeing the child's columns first and
  the parent row's after.
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from importers.mapping.expressions import Expression, MappingError, compile_expression


@dataclass(frozen=True, slots=True)
class Each:
    child: str
    template: Any


@dataclass(frozen=True, slots=True)
class When:
    condition: Expression
    template: dict[str, Any]


def compile_template(node: Any, functions: frozenset[str], where: str) -> Any:
    """The template with its expressions compiled (errors name the YAML path)."""
    if isinstance(node, str):
        if node.startswith("=="):
            return node[1:]
        if node.startswith("="):
            return compile_expression(node[1:], functions, where)
        return node
    if isinstance(node, list):
        out = []
        for i, item in enumerate(node):
            path = f"{where}[{i}]"
            if isinstance(item, dict) and "$each" in item:
                if set(item) != {"$each", "$do"}:
                    raise MappingError(f"{path}: $each needs exactly $each and $do")
                out.append(Each(str(item["$each"]), compile_template(item["$do"], functions, path)))
            else:
                out.append(compile_template(item, functions, path))
        return out
    if isinstance(node, dict):
        body = {
            str(k): compile_template(v, functions, f"{where}.{k}")
            for k, v in node.items()
            if k != "$if"
        }
        if "$if" in node:
            return When(compile_expression(str(node["$if"]), functions, f"{where}.$if"), body)
        return body
    return node


def expressions_of(node: Any, children: bool = True) -> list[Expression]:
    """Every expression of a template (without those of ``$each`` bodies when
    ``children`` is False: they read the child rows' columns)."""
    if isinstance(node, Expression):
        return [node]
    if isinstance(node, Each):
        return expressions_of(node.template) if children else []
    if isinstance(node, When):
        return [node.condition, *expressions_of(node.template, children)]
    if isinstance(node, list):
        return [e for item in node for e in expressions_of(item, children)]
    if isinstance(node, dict):
        return [e for v in node.values() for e in expressions_of(v, children)]
    return []


def children_of(node: Any) -> set[str]:
    if isinstance(node, Each):
        return {node.child} | children_of(node.template)
    if isinstance(node, When):
        return children_of(node.template)
    if isinstance(node, list):
        return {c for item in node for c in children_of(item)}
    if isinstance(node, dict):
        return {c for v in node.values() for c in children_of(v)}
    return set()


def _plain(value: Any) -> Any:
    """Database values FHIR JSON can hold (dates as ISO text, no tuples)."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def render(node: Any, scope: Any, env: dict[str, Any]) -> Any:
    """Evaluate a compiled template for one row (``scope``: the row's columns)."""
    if isinstance(node, Expression):
        return _plain(eval(node.code, env, scope))
    if isinstance(node, When):
        if not eval(node.condition.code, env, scope):
            return None
        return render(node.template, scope, env)
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            value = render(v, scope, env)
            if not _empty(value):
                out[k] = value
        return out or None
    if isinstance(node, list):
        items: list[Any] = []
        for item in node:
            if isinstance(item, Each):
                for child in scope.get(f"$children:{item.child}", ()):
                    value = render(item.template, ChainMap(child, scope), env)
                    if not _empty(value):
                        items.append(value)
                continue
            value = render(item, scope, env)
            if isinstance(value, list):  # an expression giving a list is spliced in
                items.extend(v for v in value if not _empty(v))
            elif not _empty(value):
                items.append(value)
        return items or None
    return node
