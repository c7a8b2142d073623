"""A compiled search filter (compile.py) tested against one stored document in memory,
with MongoDB's matching rules: what a Subscription's criteria needs for each write,
without a query. Covers the operators the compiler and the policy produce; a filter
with anything else is ``Unsupported`` (``check``), and its user queries MongoDB instead.

MongoDB's rules kept here: a path through arrays reaches every element; a condition on a
field holding an array holds when it holds for the array or for one element; ``null``
matches a missing field (and a path that stops at a scalar or at an array element without
the field); comparisons hold only within one type bracket (numbers, strings, dates), and
dates only to the millisecond, as BSON keeps them; ``$elemMatch`` needs an array, and reads
its argument as a query on each element when it has a field or a logical operator.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from bson.regex import Regex

Filter = dict[str, Any]
_MISSING = object()
_LOGICAL = ("$and", "$or", "$nor")
_COMPARISONS = frozenset({"$gt", "$gte", "$lt", "$lte"})
_FIELD_OPERATORS = frozenset(
    {"$eq", "$ne", "$in", "$nin", "$exists", "$not", "$regex", "$options", "$elemMatch"}
    | _COMPARISONS
)


class Unsupported(Exception):
    """The filter uses an operator this module does not evaluate."""


def check(query: Filter) -> None:
    """Raise Unsupported unless ``matches`` can evaluate ``query`` exactly."""
    for key, cond in query.items():
        if key in _LOGICAL:
            for part in cond:
                check(part)
        elif key.startswith("$"):
            raise Unsupported(key)
        else:
            _check_condition(cond)


def _check_condition(cond: Any) -> None:
    if not _is_operators(cond):
        return
    for op, arg in cond.items():
        if op not in _FIELD_OPERATORS:
            raise Unsupported(op)
        if op == "$elemMatch":
            if _is_value_form(arg):
                _check_condition(arg)
            else:
                check(arg)
        elif op == "$not":
            _check_condition(arg)


def matches(query: Filter, doc: dict[str, Any]) -> bool:
    """Does ``doc`` match ``query`` as MongoDB would?"""
    for key, cond in query.items():
        if key == "$and":
            if not all(matches(part, doc) for part in cond):
                return False
        elif key == "$or":
            if not any(matches(part, doc) for part in cond):
                return False
        elif key == "$nor":
            if any(matches(part, doc) for part in cond):
                return False
        elif not _field(list(_walk(doc, key.split("."))), cond):
            return False
    return True


def values_at(doc: Any, path: str) -> Iterator[Any]:
    """Every value the dotted ``path`` reaches, through arrays (nothing when missing)."""
    return (v for v in _walk(doc, path.split(".")) if v is not _MISSING)


def _walk(current: Any, parts: list[str]) -> Iterator[Any]:
    """The values ``parts`` reaches, and ``_MISSING`` where the path stops at a document
    without the field or at a scalar; array elements that are not documents reach
    nothing (MongoDB: ``{"a.b": null}`` holds for ``a: [{}]`` and ``a: 1``, not for
    ``a: []`` or ``a: [null]``)."""
    if not parts:
        yield current
    elif isinstance(current, dict):
        if parts[0] in current:
            yield from _walk(current[parts[0]], parts[1:])
        else:
            yield _MISSING
    elif isinstance(current, list):
        for item in current:
            if isinstance(item, dict):
                yield from _walk(item, parts)
    else:
        yield _MISSING


def _is_operators(cond: Any) -> bool:
    return isinstance(cond, dict) and bool(cond) and all(k.startswith("$") for k in cond)


def _is_value_form(arg: Any) -> bool:
    """``$elemMatch: {$gt: 1}`` tests scalar elements; with a field or a logical
    operator (``$elemMatch: {$or: [...]}``) it is a query on each element."""
    return _is_operators(arg) and not any(k in _LOGICAL for k in arg)


def _candidates(found: list[Any]) -> list[Any]:
    """The values a scalar condition is tested against: each value, and the elements
    of a value that is an array."""
    out: list[Any] = []
    for v in found:
        if v is _MISSING:
            continue
        out.append(v)
        if isinstance(v, list):
            out.extend(v)
    return out


def _field(found: list[Any], cond: Any) -> bool:
    if not _is_operators(cond):
        return _equals_any(found, cond)
    return all(_operator(found, op, arg, cond) for op, arg in cond.items())


def _operator(found: list[Any], op: str, arg: Any, cond: Filter) -> bool:
    if op == "$eq":
        return _equals_any(found, arg)
    if op == "$ne":
        return not _equals_any(found, arg)
    if op == "$in":
        return any(_equals_any(found, a) for a in arg)
    if op == "$nin":
        return not any(_equals_any(found, a) for a in arg)
    if op == "$exists":
        return any(v is not _MISSING for v in found) == bool(arg)
    if op == "$not":
        if isinstance(arg, re.Pattern | Regex):
            return not _equals_any(found, arg)
        return not _field(found, arg)
    if op == "$regex":
        pattern = _pattern(arg, cond.get("$options", ""))
        return any(isinstance(v, str) and pattern.search(v) for v in _candidates(found))
    if op == "$options":
        return True
    if op == "$elemMatch":
        elements = [e for v in found if isinstance(v, list) for e in v]
        if _is_value_form(arg):
            return any(_field([e], arg) for e in elements if not isinstance(e, list))
        return any(isinstance(e, dict) and matches(arg, e) for e in elements)
    if op in _COMPARISONS:
        return any(_compare(v, op, arg) for v in _candidates(found))
    raise Unsupported(op)


_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


def _pattern(arg: Any, options: str) -> re.Pattern[str]:
    if isinstance(arg, re.Pattern):
        return arg
    if isinstance(arg, Regex):
        return re.compile(arg.pattern, arg.flags)
    flags = 0
    for letter in options:
        flags |= _FLAGS.get(letter, 0)
    return re.compile(arg, flags)


def _equals_any(found: list[Any], wanted: Any) -> bool:
    if wanted is None:
        return any(v is _MISSING for v in found) or any(v is None for v in _candidates(found))
    if isinstance(wanted, re.Pattern | Regex):
        pattern = _pattern(wanted, "")
        return any(isinstance(v, str) and pattern.search(v) for v in _candidates(found))
    key = _comparable(wanted)
    return any(_comparable(v) == key for v in _candidates(found))


def _comparable(value: Any) -> Any:
    """A value in a form where Python's == and < agree with BSON's within a bracket."""
    if isinstance(value, Decimal128):
        return ("n", value.to_decimal())
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float | Decimal):
        return ("n", Decimal(value))
    if isinstance(value, datetime):
        value = value.replace(microsecond=value.microsecond // 1000 * 1000)
        return ("d", value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("a", tuple(_comparable(v) for v in value))
    if isinstance(value, dict):
        return ("o", tuple((k, _comparable(v)) for k, v in value.items()))
    return ("?", value)


def _compare(value: Any, op: str, arg: Any) -> bool:
    a, b = _comparable(value), _comparable(arg)
    if a[0] != b[0] or a[0] not in ("n", "d", "s"):
        return False
    x, y = a[1], b[1]
    if x.is_nan() if isinstance(x, Decimal) else False:
        return False
    if op == "$gt":
        return bool(x > y)
    if op == "$gte":
        return bool(x >= y)
    if op == "$lt":
        return bool(x < y)
    return bool(x <= y)
