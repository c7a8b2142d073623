"""A view's ``where`` as search criteria, so that the database reads only the resources
that can give rows.

The SQL on FHIR spec has a view's ``where`` filter its resources; run over stored data
each one would be read and evaluated. The common forms, an element compared with a
literal (``status = 'final'``, ``active = true``, joined by ``and``), name an element that
one of the type's search parameters indexes (``Observation.status``), so they become that
parameter's criteria (``status=final``) for the search service to compile into the
cursor's filter. The criteria select a superset of what the expression keeps (a token
search on a code matches it exactly, a string search by prefix and without case), and
the engine still evaluates every ``where`` on what is read: the rows are the same, only
fewer resources are read. Anything else stays in the engine alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fhir_server.authz.policy import Filter, all_of
from fhir_server.outcome import FhirError
from fhir_server.search.compile import criterion_filter
from fhir_server.search.parse import Criterion, Parser
from fhir_server.search.registry import Registry
from fhir_server.views.engine import View
from fhir_server.views.fhirpath import parse

# Parameter types whose search matches every resource where the element equals the value.
_SUPERSET_TYPES = frozenset({"token", "string"})
# Characters with a meaning in a search value (escaping, or, system|code, composites).
_SEARCH_SYNTAX = frozenset("\\,|$")


def where_criteria(view: View, registry: Registry) -> list[tuple[str, str]]:
    """Search criteria (name, value) implied by the view's ``where`` expressions."""
    params = {
        p.expression: p.code
        for p in registry.params(view.resource_type).values()
        if p.type in _SUPERSET_TYPES and p.expression and p.supported
    }
    pairs: list[tuple[str, str]] = []
    for where in view.definition.where:
        for element, value in _comparisons(parse(where.path)["children"][0]):
            code = params.get(f"{view.resource_type}.{element}")
            if code is not None and not _SEARCH_SYNTAX & set(value) and value:
                pairs.append((code, value))
    return pairs


def where_filter(view: View, registry: Registry) -> Filter:
    """The view's pushable ``where`` tests as one MongoDB filter on the index ({} when
    none); a criterion the search parser would refuse is left to the engine alone."""
    clauses = []
    for pair in where_criteria(view, registry):
        try:
            clauses.append(index_filter(registry, view.resource_type, [pair]))
        except (FhirError, ValueError):
            continue
    return all_of(*clauses)


def index_filter(
    registry: Registry, resource_type: str, criteria: Iterable[tuple[str, str]]
) -> Filter:
    """Plain search criteria (``status``, ``final``; ``date``, ``ge2025-01-01``: no
    chain, no ``_has``, so nothing the token's policy would narrow) as a MongoDB filter
    on the stored index, compiled as a search compiles them."""
    parser = Parser(registry)
    clauses: list[Filter] = []
    for name, value in criteria:
        condition = parser.condition(resource_type, name, value)
        if not isinstance(condition, Criterion):
            raise ValueError(f"{name} is not a plain criterion")
        clauses.append(criterion_filter(condition))
    return all_of(*clauses)


def _comparisons(node: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``element = literal`` conjuncts of an expression (others are skipped: an ``and``
    keeps only what each side keeps, so each side's criteria hold on their own)."""
    kind = node.get("type")
    children = node.get("children") or []
    if kind == "AndExpression" and node.get("terminalNodeText") == ["and"]:
        for child in children:
            yield from _comparisons(child)
    elif (
        kind == "EqualityExpression"
        and node.get("terminalNodeText") == ["="]
        and len(children) == 2
    ):
        element, value = _member_chain(children[0]), _literal(children[1])
        if element is not None and value is not None:
            yield element, value


def _member_chain(node: Mapping[str, Any]) -> str | None:
    """``a.b.c`` for a chain of plain element names, else None."""
    kind = node.get("type")
    children = node.get("children") or []
    if kind == "InvocationExpression" and len(children) == 2:
        head, tail = _member_chain(children[0]), _member_name(children[1])
        return f"{head}.{tail}" if head is not None and tail is not None else None
    if kind == "TermExpression" and len(children) == 1:
        term = children[0]
        if term.get("type") == "InvocationTerm" and len(term.get("children") or []) == 1:
            return _member_name(term["children"][0])
    return None


def _member_name(node: Mapping[str, Any]) -> str | None:
    children = node.get("children") or []
    if node.get("type") != "MemberInvocation" or len(children) != 1:
        return None
    name = children[0].get("text")
    if not isinstance(name, str) or not name[:1].islower() or not name.isalnum():
        return None
    return name


def _literal(node: Mapping[str, Any]) -> str | None:
    """A string literal without escapes, or a boolean literal, as search text."""
    children = node.get("children") or []
    if node.get("type") != "TermExpression" or len(children) != 1:
        return None
    term = children[0]
    inner = term.get("children") or []
    if term.get("type") != "LiteralTerm" or len(inner) != 1:
        return None
    text = inner[0].get("text")
    if not isinstance(text, str):
        return None
    if inner[0].get("type") == "BooleanLiteral" and text in ("true", "false"):
        return text
    if inner[0].get("type") == "StringLiteral" and len(text) >= 2 and "\\" not in text:
        return text[1:-1]
    return None
