"""SearchPlan → MongoDB filter and sort (the matching rules of search.html, over the
index values described in values.py). Knows MongoDB, not HTTP. Chained and reverse-
chained criteria need the ids of other resources first; a ``Resolver`` supplies them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from bson.decimal128 import Decimal128

from fhir_server.decimals import bounded
from fhir_server.outcome import FhirError
from fhir_server.search.plan import (
    TERMINOLOGY_MODIFIERS,
    Chain,
    CompositeValue,
    Condition,
    Criterion,
    RangeValue,
    ReferenceValue,
    ReverseChain,
    SortKey,
    TokenValue,
    Value,
)
from fhir_server.search.values import SEP, decimal128, normalize_text, token_keys

Filter = dict[str, Any]
MAX_CHAIN_MATCHES = 10_000


class Codes(Protocol):
    """The terminology behind the token modifiers :in, :not-in, :below and :above, within
    what the request may read (terminology/searching.py). Errors are FhirErrors whose
    expression the compiler replaces with the parameter's name."""

    async def members(self, url: str) -> list[tuple[str, str]]:
        """(system, code) of every concept in the ValueSet with this canonical."""
        ...

    async def subsumed(self, system: str, code: str, above: bool) -> list[str]:
        """``code`` and its descendants (``above``: its ancestors) in ``system``."""
        ...


class Resolver(Protocol):
    async def ids(self, resource_type: str, query: Filter, limit: int) -> list[str]: ...

    async def references(
        self, resource_type: str, query: Filter, field: str, limit: int
    ) -> list[str]: ...


def _all(clauses: Sequence[Filter]) -> Filter:
    clauses = [c for c in clauses if c]
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": list(clauses)}


def _any(clauses: Sequence[Filter]) -> Filter:
    return clauses[0] if len(clauses) == 1 else {"$or": list(clauses)}


def _prefix_regex(text: str) -> Filter:
    return {"$regex": "^" + re.escape(text)}


# --- values ----------------------------------------------------------------------------


def token_match(value: TokenValue) -> Any:
    """The condition on a token field for one search value (equality or prefix)."""
    if value.code is None:
        return _prefix_regex(f"{value.system}{SEP}")
    if value.system is None:
        return value.code
    return token_keys(value.system, value.code)[1]


def _equalities_or(field: str, matches: Sequence[Any]) -> Filter:
    """OR of values on one field: ``$in`` when they are all plain equalities."""
    if all(not isinstance(m, dict) for m in matches):
        return {field: matches[0]} if len(matches) == 1 else {field: {"$in": list(matches)}}
    return _any([{field: m} for m in matches])


def _as_bson(value: datetime | Decimal) -> datetime | Decimal128:
    return decimal128(value) if isinstance(value, Decimal) else value


def range_match(value: RangeValue, kind: str) -> Filter:
    """Conditions on the value of one stored {lo, hi} element (search.html#prefix).

    Dates: the stored range is [lo, hi). Numbers and quantities: a point (lo == hi) or
    an inclusive Range; eq/ne/ap use the search value's implicit range, the other
    prefixes its exact value (search.html#number: "When a comparison prefix in the set
    lgt, lt, ge, le, sa & eb is provided, the implicit precision of the number is
    ignored")."""
    sl, sh = _as_bson(value.low), _as_bson(value.high)
    is_date = kind == "date"
    eq: Filter = {"lo": {"$gte": sl}, "hi": {"$lte" if is_date else "$lt": sh}}
    if is_date:
        exact_gt, exact_lt = {"hi": {"$gt": sh}}, {"lo": {"$lt": sl}}
        ge: Filter = {"$or": [{"hi": {"$gt": sh}}, eq]}
        le: Filter = {"$or": [{"lo": {"$lt": sl}}, eq]}
        sa: Filter = {"lo": {"$gte": sh}}
        eb: Filter = {"hi": {"$lte": sl}}
    else:
        assert isinstance(value.low, Decimal) and isinstance(value.high, Decimal)
        exact = decimal128(bounded((value.low + value.high) / 2))
        exact_gt, exact_lt = {"hi": {"$gt": exact}}, {"lo": {"$lt": exact}}
        ge, le = {"hi": {"$gte": exact}}, {"lo": {"$lte": exact}}
        sa, eb = {"lo": {"$gt": exact}}, {"hi": {"$lt": exact}}
    by_prefix: dict[str, Filter] = {
        "eq": eq,
        "gt": exact_gt,
        "lt": exact_lt,
        "ge": ge,
        "le": le,
        "sa": sa,
        "eb": eb,
        "ap": {"lo": {"$lt": sh}, "hi": {"$gt" if is_date else "$gte": sl}},
        "ne": eq,  # negated by the caller
    }
    return dict(by_prefix[value.prefix])


def unit_match(value: RangeValue) -> Filter:
    """Conditions on the units of one stored quantity (search.html#quantity): system
    and code together, or a code alone matching the code or the human unit."""
    if value.system and value.code:
        return {"s": value.system, "c": value.code}
    if value.system:
        return {"s": value.system}
    if value.code:
        return {"$or": [{"c": value.code}, {"u": value.code}]}
    return {}


def value_filter(field: str, kind: str, modifier: str | None, value: Value) -> Filter:
    """Filter for one search value on one index field (``sp.<code>`` or a component)."""
    if kind == "token":
        if modifier == "text":
            assert isinstance(value, str)
            words = re.escape(normalize_text(value))
            return {f"{field}:text": {"$regex": f"(^|\\s){words}"}}
        assert isinstance(value, TokenValue)
        if modifier == "of-type":
            assert value.system is not None and value.code is not None
            system, code = value.system.split("|", 1)
            return {f"{field}:of-type": f"{system}{SEP}{code}{SEP}{value.code}"}
        return {field: token_match(value)}
    if kind == "string":
        assert isinstance(value, str)
        if modifier == "exact":
            return {f"{field}:exact": value}
        text = re.escape(normalize_text(value))
        return {field: {"$regex": text if modifier == "contains" else "^" + text}}
    if kind == "uri":
        assert isinstance(value, str)
        if modifier == "below":
            return {field: _prefix_regex(value)}
        if modifier == "above":
            # search.html#uri: ":above ... the search term left-matches the value, or
            # vice-versa": the stored uri is a leading part of the search value (the
            # converse of :below's starts-with).
            return {field: {"$in": [value[:i] for i in range(len(value), 0, -1)]}}
        return {field: value}
    if kind == "reference":
        if modifier == "identifier":
            assert isinstance(value, TokenValue)
            return {f"{field}:identifier": token_match(value)}
        assert isinstance(value, ReferenceValue)
        return _equalities_or(field, value.keys)
    if kind in ("date", "number", "quantity"):
        assert isinstance(value, RangeValue)
        units = unit_match(value) if kind == "quantity" else {}
        match = {"$elemMatch": _all([range_match(value, kind), units])}
        if value.prefix != "ne":
            return {field: match}
        if units:  # a value in these units that is not equal
            return {"$and": [{field: {"$elemMatch": units}}, {field: {"$not": match}}]}
        return {field: {"$exists": True, "$not": match}}
    if kind == "composite":
        assert isinstance(value, CompositeValue)
        inner = _all(
            [value_filter(code, ckind, None, cvalue) for code, ckind, cvalue in value.parts]
        )
        return {field: {"$elemMatch": inner}}
    raise FhirError.of(400, "not-supported", f"{kind} parameters are not supported")


def criterion_filter(c: Criterion) -> Filter:
    if c.code == "_id":
        return {"_id": {"$in": list(c.values)}} if len(c.values) > 1 else {"_id": c.values[0]}
    field = f"sp.{c.code}"
    if c.modifier == "missing":
        return {field: {"$exists": not c.missing}}
    if c.type == "token" and c.modifier == "not":
        keys = [token_match(v) for v in c.values if isinstance(v, TokenValue)]
        plain = [k for k in keys if not isinstance(k, dict)]
        regexes = [k for k in keys if isinstance(k, dict)]
        clauses: list[Filter] = []
        if plain:
            clauses.append({field: {"$nin": plain}})
        clauses += [{field: {"$not": re.compile(k["$regex"])}} for k in regexes]
        return _all(clauses)
    filters = [value_filter(field, c.type, c.modifier, v) for v in c.values]
    simple = [f[field] for f in filters if set(f) == {field} and not isinstance(f[field], dict)]
    if len(simple) == len(filters):
        return _equalities_or(field, simple)
    return _any(filters)


# --- the whole query ---------------------------------------------------------------------


class Compiler:
    def __init__(
        self,
        resolver: Resolver,
        max_chain_matches: int = MAX_CHAIN_MATCHES,
        codes: Codes | None = None,
    ) -> None:
        self.resolver = resolver
        self.max = max_chain_matches
        self.codes = codes

    async def condition(self, c: Condition) -> Filter:
        if isinstance(c, Criterion):
            if c.type == "token" and c.modifier in TERMINOLOGY_MODIFIERS:
                return await self.terminology(c)
            return criterion_filter(c)
        if isinstance(c, Chain):
            keys: list[str] = []
            for target, inner in zip(c.target_types, c.inners, strict=True):
                ids = await self.resolver.ids(target, await self.condition(inner), self.max + 1)
                self._bounded(len(ids), c.code)
                keys += [f"{target}/{i}" for i in ids]
            return {f"sp.{c.code}": {"$in": keys}}
        assert isinstance(c, ReverseChain)
        refs = await self.resolver.references(
            c.source_type, await self.condition(c.inner), f"sp.{c.code}", self.max + 1
        )
        prefix = f"{c.resource_type}/"
        ids = sorted(
            {r[len(prefix) :] for r in refs if r.startswith(prefix) and "/" not in r[len(prefix) :]}
        )
        self._bounded(len(ids), f"_has:{c.source_type}:{c.code}")
        return {"_id": {"$in": ids}}

    async def terminology(self, c: Criterion) -> Filter:
        """:in/:not-in/:below/:above as index keys: the ``system␟code`` key of every
        concept the values stand for (for :in/:not-in also ``␟code``, see below), so
        the match is one ``$in`` (``$nin``) on the parameter's index; the value set or
        subtree is expanded first, by the terminology service."""
        name = f"{c.code}:{c.modifier}"
        if self.codes is None:
            raise FhirError.of(
                400, "not-supported", f"{name}: terminology is not available here", name
            )
        keys: set[str] = set()
        try:
            for value in c.values:
                if isinstance(value, TokenValue):
                    assert value.system and value.code
                    above = c.modifier == "above"
                    for code in await self.codes.subsumed(value.system, value.code, above):
                        keys.add(token_keys(value.system, code)[1])
                else:
                    assert isinstance(value, str)
                    for system, code in await self.codes.members(value):
                        keys.add(token_keys(system, code)[1])
                        # a ``code`` element (Observation.status) is indexed without a
                        # system, which its binding implies: ␟C (values.py)
                        keys.add(token_keys(None, code)[1])
        except FhirError as exc:  # a search error names the parameter (search.html#errors)
            issues = [replace(i, expression=(name,)) for i in exc.issues]
            raise FhirError(exc.status, issues, exc.headers) from None
        field = f"sp.{c.code}"
        return {field: {"$nin" if c.modifier == "not-in" else "$in": sorted(keys)}}

    def _bounded(self, n: int, name: str) -> None:
        if n > self.max:
            raise FhirError.of(
                400,
                "too-costly",
                f"{name}: the chained criteria match more than {self.max} resources; "
                "add criteria to narrow them",
                name,
            )

    async def filter(
        self,
        resource_type: str,
        conditions: Sequence[Condition],
        compartment: tuple[str, str] | None = None,
    ) -> Filter:
        clauses: list[Filter] = []
        if compartment is not None:
            clauses.append({"comp": f"{compartment[0]}/{compartment[1]}"})
        for c in conditions:
            if c.resource_type == resource_type:
                clauses.append(await self.condition(c))
        if not any(map(excludes_deleted, clauses)):
            clauses.insert(0, {"del": False})
        return _all(clauses)


# Operators that no missing field satisfies: a condition using one on an index field
# needs that field to be there.
_NEEDS_FIELD = frozenset(
    {"$eq", "$in", "$gt", "$gte", "$lt", "$lte", "$regex", "$elemMatch", "$all", "$exists"}
)


def excludes_deleted(clause: Filter) -> bool:
    """Whether no deleted resource can match ``clause``: it requires an index value
    (``sp.*``) or a compartment (``comp``), and a deleted resource's current document
    has neither (``VersionWrite.current_document``). Then the filter needs no
    ``del: false``, and a count of it is answered from the index alone, without reading
    a document per match (most of the cost of a first page's Bundle.total)."""
    for key, value in clause.items():
        if key == "$and" and any(map(excludes_deleted, value)):
            return True
        if key == "$or" and value and all(map(excludes_deleted, value)):
            return True
        if (key == "comp" or key.startswith("sp.")) and _needs_field(value):
            return True
    return False


def _needs_field(value: Any) -> bool:
    """Whether a field condition fails on a missing field (conservatively: False when
    in doubt). Conditions on one field are ANDed: one such operator is enough."""
    if value is None or isinstance(value, list):
        return False
    if not isinstance(value, dict):
        return True  # equality with a value: a missing field is null, not equal
    for op, operand in value.items():
        if op not in _NEEDS_FIELD or operand is None:
            continue
        if op == "$exists":
            if operand is True:
                return True
        elif op in ("$in", "$all"):
            if isinstance(operand, list) and operand and None not in operand:
                return True
        else:
            return True
    return False


def sort_fields(keys: Sequence[SortKey]) -> list[tuple[str, int]]:
    """MongoDB sort fields for _sort, always ending with _id so the order is total."""
    fields: list[tuple[str, int]] = []
    for key in keys:
        direction = -1 if key.descending else 1
        if key.code == "_id":
            fields.append(("_id", direction))
            return fields
        if key.code == "_lastUpdated":
            fields.append(("lu", direction))
        else:
            fields.append((f"so.{key.code}.{'d' if key.descending else 'a'}", direction))
    fields.append(("_id", 1))
    return fields


def _beyond(field: str, direction: int, value: Any) -> Filter | None:
    """Rows strictly after ``value`` in this field's order (MongoDB puts null/missing
    first ascending and last descending)."""
    if direction == 1:
        return {field: {"$ne": None}} if value is None else {field: {"$gt": value}}
    if value is None:
        return None
    return {"$or": [{field: {"$lt": value}}, {field: None}]}


def keyset_filter(fields: Sequence[tuple[str, int]], values: Sequence[Any]) -> Filter:
    """Rows after the row whose sort values are ``values`` (lexicographic order)."""
    alternatives: list[Filter] = []
    for i, (field, direction) in enumerate(fields):
        beyond = _beyond(field, direction, values[i])
        if beyond is None:
            continue
        equal = [{f: values[j]} for j, (f, _) in enumerate(fields[:i])]
        alternatives.append(_all([*equal, beyond]))
    return _any(alternatives) if alternatives else {"_id": {"$in": []}}


def field_value(doc: dict[str, Any], field: str) -> Any:
    current: Any = doc
    for part in field.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current
