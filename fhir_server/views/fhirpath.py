"""FHIRPath for ViewDefinitions: fhirpathpy with the functions SQL on FHIR requires.

fhirpathpy's public ``compile`` re-creates its context on every call and wraps user
functions so that they only see plain data (no node types), so an expression is parsed
here once and evaluated through fhirpathpy's engine directly, with a function table of
our own that sees the typed nodes. The table adds what the specification needs and
fhirpathpy lacks or gets wrong for it:

- ``getResourceKey()`` / ``getReferenceKey([type])`` (ViewDefinition notes), keyed on the
  resource id, since this server has one id per resource and relative references to it;
- ``extension(url)`` returning every matching extension (fhirpathpy keeps the first);
- ``join([sep])`` giving ``''`` on an empty input, as the official tests expect;
- ``lowBoundary()`` / ``highBoundary()`` for decimal, date, dateTime, instant and time.

Values come back as fhirpathpy nodes so that a ``forEach`` focus keeps its type (which
``value.ofType(string)`` under it needs); ``to_value`` turns them into JSON values.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine import do_eval
from fhirpathpy.engine.invocations.constants import constants as _fhirpath_clock
from fhirpathpy.engine.nodes import (
    FP_DateTime,
    FP_Quantity,
    FP_Time,
    FP_Type,
    ResourceNode,
    TypeInfo,
)
from fhirpathpy.engine.util import get_data
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhir_server.resource_types import is_resource_type
from fhir_server.views.fastpath import Fallback, compile_chain

R4_MODEL: dict[str, Any] = models["r4"]

# %-variables every expression may use besides the view's constants.
BUILTIN_VARIABLES = frozenset({"rowIndex", "resource", "rootResource", "context", "ucum"})


class FhirPathError(ValueError):
    """An expression that does not parse, or that fails while being evaluated."""


Function = Callable[..., Any]


def _node_type(item: Any) -> str | None:
    """The FHIR type name of a node (``date``, ``decimal``...), if it has one."""
    if isinstance(item, ResourceNode):
        info = item.get_type_info()
        return info.name if info is not None else None
    return None


# --- getResourceKey / getReferenceKey ------------------------------------------------

# A relative literal reference: Type/id, optionally with a version (references.html).
_RELATIVE_REFERENCE = re.compile(
    r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)


def _get_resource_key(ctx: dict[str, Any], inputs: list[Any]) -> list[Any]:
    """The resource's id: getReferenceKey() returns the same value for a reference to it."""
    keys = []
    for item in inputs:
        data = get_data(item)
        if isinstance(data, Mapping) and "resourceType" in data and "id" in data:
            keys.append(data["id"])
    return keys


def _get_reference_key(ctx: dict[str, Any], inputs: list[Any], wanted: Any = None) -> list[Any]:
    """The id a relative reference points at, or nothing (absolute URLs may name other
    servers, where the id is not a key of ours), or nothing if of another type."""
    wanted_type = wanted.name if isinstance(wanted, TypeInfo) else None
    keys = []
    for item in inputs:
        data = get_data(item)
        reference = data.get("reference") if isinstance(data, Mapping) else None
        match = _RELATIVE_REFERENCE.match(reference) if isinstance(reference, str) else None
        if match is None or not is_resource_type(match.group(1)):
            continue
        if wanted_type is None or wanted_type == match.group(1):
            keys.append(match.group(2))
    return keys


# --- extension / join -----------------------------------------------------------------


def _extension(ctx: dict[str, Any], inputs: list[Any], url: Any) -> list[Any]:
    """Every extension with ``url`` on each input, including those of primitives."""
    found = []
    for item in inputs:
        holders = [get_data(item)]
        if isinstance(item, ResourceNode):
            holders.append(item._data)
        for holder in holders:
            if not isinstance(holder, Mapping):
                continue
            for ext in holder.get("extension") or []:
                if isinstance(ext, Mapping) and ext.get("url") == url:
                    found.append(ResourceNode.create_node(ext, "Extension"))
    return found


def _join(ctx: dict[str, Any], inputs: list[Any], separator: Any = "") -> str:
    """The inputs joined by ``separator``; an empty input gives ``''``."""
    texts = [get_data(item) for item in inputs if not _is_placeholder(item)]
    if not all(isinstance(text, str) for text in texts):
        raise FhirPathError("join() needs a collection of strings")
    return str(separator or "").join(texts)


# --- lowBoundary / highBoundary ----------------------------------------------------------

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_TIME = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?$")
_DATETIME = re.compile(r"^([0-9-]+)(?:T([0-9:.]+))?(Z|[+-]\d{2}:\d{2})?$")


def _date_boundary(text: str, high: bool) -> str | None:
    """The first (or last) day that a partial date such as ``1970-06`` can mean."""
    match = _DATE.match(text)
    if match is None:
        return None
    year = int(match.group(1))
    month = int(match.group(2) or (12 if high else 1))
    if match.group(3):
        day = int(match.group(3))
    else:
        day = calendar.monthrange(year, month)[1] if high else 1
    return f"{year:04d}-{month:02d}-{day:02d}"


def _time_boundary(text: str, high: bool) -> str | None:
    """The first (or last) millisecond that a partial time such as ``12:34`` can mean."""
    match = _TIME.match(text)
    if match is None:
        return None
    fill = "59" if high else "00"
    hour, minute, second = (match.group(i) or fill for i in (1, 2, 3))
    fraction = (match.group(4) or "")[:3].ljust(3, "9" if high else "0")
    return f"{hour}:{minute}:{second}.{fraction}"


def _datetime_boundary(text: str, high: bool) -> str | None:
    """The earliest (or latest) instant a partial dateTime can mean; without a zone, the
    zone that makes it earliest (+14:00) or latest (-12:00)."""
    match = _DATETIME.match(text)
    if match is None:
        return None
    date = _date_boundary(match.group(1), high)
    time = _time_boundary(match.group(2) or "", high) if match.group(2) else None
    if time is None:
        time = "23:59:59.999" if high else "00:00:00.000"
    zone = match.group(3) or ("-12:00" if high else "+14:00")
    return None if date is None else f"{date}T{time}{zone}"


def _decimal_boundary(value: Any, high: bool) -> Decimal | None:
    """The least (or greatest) decimal that rounds to ``value`` at its precision."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | float):
        return None
    number = Decimal(str(value))
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):
        return None
    half = Decimal(5).scaleb(exponent - 1)
    return number + half if high else number - half


_TEMPORAL: dict[str, Callable[[str, bool], str | None]] = {
    "date": _date_boundary,
    "dateTime": _datetime_boundary,
    "instant": _datetime_boundary,
    "time": _time_boundary,
}


def _boundary(item: Any, high: bool) -> Any:
    """One input's boundary, typed like the input, or None when it has none (strings,
    codes...). Integers are exact, so they are their own boundaries."""
    kind, data = _node_type(item), get_data(item)
    if isinstance(data, FP_Time):
        kind, data = "time", data.asStr
    elif isinstance(data, FP_DateTime):
        kind, data = ("dateTime" if "T" in data.asStr else "date"), data.asStr
    if kind in _TEMPORAL and isinstance(data, str):
        text = _TEMPORAL[kind](data, high)
        return None if text is None else ResourceNode.create_node(text, kind)
    if isinstance(data, int) and not isinstance(data, bool) and kind != "decimal":
        return data
    return _decimal_boundary(data, high)


def _boundaries(high: bool) -> Function:
    def invoke(ctx: dict[str, Any], inputs: list[Any], precision: Any = None) -> list[Any]:
        found = (_boundary(item, high) for item in inputs)
        return [item for item in found if item is not None]

    return invoke


FUNCTIONS: dict[str, dict[str, Any]] = {
    "getResourceKey": {"fn": _get_resource_key, "arity": {0: []}},
    "getReferenceKey": {"fn": _get_reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
    "extension": {"fn": _extension, "arity": {1: ["String"]}},
    "join": {"fn": _join, "arity": {0: [], 1: ["String"]}},
    "lowBoundary": {"fn": _boundaries(False), "arity": {0: [], 1: ["Integer"]}},
    "highBoundary": {"fn": _boundaries(True), "arity": {0: [], 1: ["Integer"]}},
}


# --- compiled expressions -----------------------------------------------------------------


class _RaiseOnSyntaxError(ErrorListener):
    def syntaxError(
        self, recognizer: Any, symbol: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        raise FhirPathError(f"syntax error at column {column + 1}: {msg}")


def parse(expression: str) -> Mapping[str, Any]:
    """fhirpathpy's syntax tree for ``expression``. fhirpathpy's own ``parse`` lets ANTLR
    recover from syntax errors and ignores trailing text (``name.(`` or ``id id`` pass),
    so a broken path would quietly select something else; here both are errors."""
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaiseOnSyntaxError())
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(_RaiseOnSyntaxError())
    tree = parser.expression()
    if tokens.LA(1) != Token.EOF:
        raise FhirPathError(f"unexpected {tokens.LT(1).text!r} after the expression")
    listener = ASTPathListener()
    ParseTreeWalker().walk(listener, tree)
    root: Mapping[str, Any] = listener.parentStack[0]
    return root


def _external_constants(node: Mapping[str, Any]) -> Iterable[str]:
    """The names of the %-variables an expression's syntax tree refers to."""
    if node.get("type") == "ExternalConstant":
        names = node.get("children") or [{}]
        yield str(names[0].get("text", "")).strip("`\"'")
    for child in node.get("children") or []:
        if isinstance(child, Mapping):
            yield from _external_constants(child)


class Path:
    """A FHIRPath expression parsed once and evaluated on many nodes."""

    def __init__(self, expression: str, fast: bool = True) -> None:
        self.expression = expression
        try:
            tree = parse(expression)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            raise FhirPathError(f"invalid FHIRPath {expression!r}: {reason}") from exc
        if not isinstance(tree, Mapping) or not tree.get("children"):
            raise FhirPathError(f"invalid FHIRPath {expression!r}")
        self._root: Mapping[str, Any] = tree["children"][0]
        self.variables = frozenset(_external_constants(self._root))
        self._fast = compile_chain(self._root, R4_MODEL, _get_reference_key) if fast else None

    def __call__(self, focus: Any, variables: Mapping[str, Any]) -> list[Any]:
        """The items (nodes or values) the expression selects from ``focus``: by the
        compiled chain when the expression is one and the data allows (fastpath.py),
        else by fhirpathpy's interpreter."""
        if self._fast is not None:
            try:
                found = self._fast(focus)
            except Fallback:
                pass
            else:
                return [item for item in found if not _is_placeholder(item)]
        data = focus if isinstance(focus, list) else [focus]
        _fhirpath_clock.reset()  # now()/today() are fixed during one evaluation
        ctx = {
            "dataRoot": data,
            "$this": data,
            "vars": {"ucum": "http://unitsofmeasure.org", **variables},
            "model": R4_MODEL,
            "userInvocationTable": FUNCTIONS,
        }
        try:
            result = do_eval(ctx, data, self._root)
        except FhirPathError:
            raise
        except Exception as exc:
            raise FhirPathError(f"{self.expression!r} failed: {exc}") from exc
        return [item for item in result if not _is_placeholder(item)]

    def values(self, focus: Any, variables: Mapping[str, Any]) -> list[Any]:
        """The result as JSON values (``to_value``); the compiled chain's directly."""
        if self._fast is not None:
            try:
                return self._fast.values(focus)
            except Fallback:
                pass
        return [to_value(item) for item in self(focus, variables)]


def _is_placeholder(item: Any) -> bool:
    """A node fhirpathpy makes of a primitive's ``_name`` object (its id/extensions), or of
    the null that pads a primitive array to match it: no value, so not a result."""
    if not isinstance(item, ResourceNode):
        return False
    if item.data is None:
        return True
    kind = item.path
    is_primitive = isinstance(kind, str) and "." not in kind and kind[:1].islower()
    return is_primitive and isinstance(item.data, Mapping)


def to_value(item: Any) -> Any:
    """A JSON value for one result: decimals as Decimal, dates and times as text."""
    data = get_data(item)
    if isinstance(data, float):
        return Decimal(str(data))
    if isinstance(data, FP_Quantity):
        return {"value": data.value, "unit": data.unit}
    if isinstance(data, FP_Type):
        return str(data)
    return data
