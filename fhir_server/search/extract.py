"""Index on write: the values of every search parameter of a resource, stored under
``sp``/``so`` as ``fhir_server.search.values`` describes, plus its Patient compartments.

Each parameter's FHIRPath expression is compiled once per registry and resource type.
The shapes the R4 definitions use (paths, ``|``, ``as``/``.as()``/``ofType()``,
``where(resolve() is T)``, ``where(field='literal')``, ``[n]``, ``%resource``) become
plain dict walks typed statically against the R4 element model (``elements.json``), so a
choice such as ``Observation.value`` turns into lookups of ``valueQuantity``,
``valueCodeableConcept``, ... each with a known datatype and converter. Anything else
(``Patient.deceased.exists() and ...``) is evaluated by fhirpathpy, whose results are
typed from its node paths or, failing that, their JSON shape.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any, TypeGuard

from bson.decimal128 import Decimal128

from fhir_server.jsonio import JsonDecimal
from fhir_server.resource_types import is_resource_type
from fhir_server.search.registry import COMMON_BASES, Registry, SearchParam, split_union
from fhir_server.search.values import (
    DATE_MAX,
    DATE_MIN,
    NUMBER_MAX,
    NUMBER_MIN,
    SEP,
    canonical_keys,
    date_value,
    decimal128,
    normalize_text,
    period_value,
    reference_keys,
    token_keys,
)
from fhir_server.validation.model import raw_definitions

_log = logging.getLogger(__name__)
Json = dict[str, Any]
# A compiled step maps the current collection to the next one (root: the resource).
Step = Callable[[list[Any], Json], list[Any]]
# A converter adds the index values of one selected element to an accumulator.
Converter = Callable[[Any, "Acc", Json], None]

ISO_4217 = "urn:iso:std:iso:4217"
NOT_STORED = frozenset({"_id"})  # the query side matches the document _id

QUANTITIES = frozenset(
    {"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"}
)
URIS = frozenset({"uri", "url", "canonical", "oid", "uuid"})
STRINGS = frozenset({"string", "markdown", "code", "id"}) | URIS
DATES = frozenset({"date", "dateTime", "instant"})
NUMBERS = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
# FHIR and System type names that ``as``/``ofType`` also accept for a datatype.
SUPERTYPES: dict[str, frozenset[str]] = {
    "Quantity": QUANTITIES,
    "string": frozenset({"string", "markdown", "code", "id"}),
    "uri": URIS,
    "integer": frozenset({"integer", "positiveInt", "unsignedInt"}),
    "String": STRINGS,
    "Boolean": frozenset({"boolean"}),
    "Integer": frozenset({"integer", "positiveInt", "unsignedInt"}),
    "Decimal": frozenset({"decimal"}),
    "Date": frozenset({"date"}),
    "DateTime": frozenset({"dateTime", "instant"}),
    "Time": frozenset({"time"}),
}


@dataclass(slots=True)
class Index:
    """What one resource contributes to its document: ``sp`` (index values by code,
    with ``code:text`` etc. beside them), ``so`` (sort keys) and ``comp`` (the
    ``Patient/<id>`` compartments it belongs to)."""

    sp: dict[str, list[Any]] = field(default_factory=dict)
    so: dict[str, dict[str, Any]] = field(default_factory=dict)
    comp: list[str] = field(default_factory=list)


class Acc:
    """Values gathered for one parameter: the main list, suffixed lists (``:text``,
    ``:exact``, ``:of-type``, ``:identifier``) and (low, high) sort candidates."""

    __slots__ = ("base_url", "extra", "sort", "values")

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url  # this server's, to tell its references from others'
        self.values: list[Any] = []
        self.extra: dict[str, list[Any]] = {}
        # (lo, hi) to compare; numbers add their Decimal128 forms (lo, hi, d_lo, d_hi)
        self.sort: list[tuple[Any, ...]] = []

    def add_extra(self, suffix: str, value: Any) -> None:
        self.extra.setdefault(suffix, []).append(value)


# --- converters: one selected element to index values, by parameter type and datatype ---


def _token_code(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, str) and v:
        acc.values += token_keys(None, v)
        acc.sort.append((v, v))


def _token_boolean(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, bool):
        _token_code("true" if v else "false", acc, root)


def _token_coding(v: Any, acc: Acc, root: Json) -> None:
    if not isinstance(v, dict):
        return
    code = v.get("code")
    if isinstance(code, str) and code:
        acc.values += token_keys(v.get("system"), code)
        acc.sort.append((code, code))
    display = v.get("display")
    if isinstance(display, str) and display:
        acc.add_extra(":text", normalize_text(display))


def _token_codeable(v: Any, acc: Acc, root: Json) -> None:
    if not isinstance(v, dict):
        return
    for coding in v.get("coding") or ():
        _token_coding(coding, acc, root)
    text = v.get("text")
    if isinstance(text, str) and text:
        acc.add_extra(":text", normalize_text(text))


def _token_identifier(v: Any, acc: Acc, root: Json) -> None:
    if not isinstance(v, dict):
        return
    value = v.get("value")
    if not isinstance(value, str) or not value:
        return
    acc.values += token_keys(v.get("system"), value)
    acc.sort.append((value, value))
    id_type = v.get("type")
    if isinstance(id_type, dict):
        for coding in id_type.get("coding") or ():
            if isinstance(coding, dict) and coding.get("code"):
                of_type = f"{coding.get('system') or ''}{SEP}{coding['code']}{SEP}{value}"
                acc.add_extra(":of-type", of_type)
        if isinstance(id_type.get("text"), str):
            acc.add_extra(":text", normalize_text(id_type["text"]))


def _token_contact(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, dict):
        _token_code(v.get("value"), acc, root)


def _string(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, str) and v:
        norm = normalize_text(v)
        acc.values.append(norm)
        acc.add_extra(":exact", v)
        acc.sort.append((norm, norm))


def _strings(v: Json, names: Sequence[str], acc: Acc, root: Json) -> None:
    for name in names:
        part = v.get(name)
        if isinstance(part, list):
            for item in part:
                _string(item, acc, root)
        else:
            _string(part, acc, root)


def _human_name(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, dict):
        _strings(v, ("family", "given", "prefix", "suffix", "text"), acc, root)


def _address(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, dict):
        names = ("line", "city", "district", "state", "postalCode", "country", "text")
        _strings(v, names, acc, root)


def _add_range(acc: Acc, r: dict[str, Any] | None) -> None:
    if r is not None:
        acc.values.append(r)
        acc.sort.append((r["lo"], r["hi"]))


def _date(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, str):
        _add_range(acc, date_value(v))


def _period(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, dict):
        _add_range(acc, period_value(v.get("start"), v.get("end")))


def _timing(v: Any, acc: Acc, root: Json) -> None:
    """Only the outer limits of a schedule count (search.html#date): one range from the
    first event or bounds start to the last event or bounds end."""
    if not isinstance(v, dict):
        return
    ranges = [r for e in v.get("event") or () if isinstance(e, str) and (r := date_value(e))]
    repeat = v.get("repeat")
    bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
    if isinstance(bounds, dict) and (r := period_value(bounds.get("start"), bounds.get("end"))):
        ranges.append(r)
    if ranges:
        lo, hi = min(r["lo"] for r in ranges), max(r["hi"] for r in ranges)
        if (lo, hi) != (DATE_MIN, DATE_MAX):
            _add_range(acc, {"lo": lo, "hi": hi})


def _is_number(v: Any) -> TypeGuard[Decimal | int]:
    return isinstance(v, (int, Decimal)) and not isinstance(v, bool)


@lru_cache(maxsize=4096)
def _decimal128_of(text: str) -> Decimal128:
    return decimal128(Decimal(text))


def _to_decimal128(value: Decimal | int) -> Decimal128:
    """decimal128, memoised on a parsed decimal's exact text: one quantity feeds several
    parameters (value-quantity, combo-value-quantity, the composites)."""
    if type(value) is JsonDecimal:
        return _decimal128_of(value.text)
    return decimal128(value)


def _add_numbers(acc: Acc, lo: Decimal | int, hi: Decimal | int, units: Json | None) -> None:
    """A {lo, hi} range (Decimal128) with the units of a quantity; sorts on the Decimals
    (and keeps their Decimal128 forms for the sort keys)."""
    try:
        d_lo = _to_decimal128(lo)
        d_hi = d_lo if hi is lo else _to_decimal128(hi)
    except ArithmeticError:  # beyond Decimal128 (validation refuses it): not indexed
        return
    item: dict[str, Any] = {"lo": d_lo, "hi": d_hi}
    if units:
        for key, name in (("s", "system"), ("c", "code"), ("u", "unit")):
            unit = units.get(name)
            if isinstance(unit, str):
                item[key] = unit
    acc.values.append(item)
    acc.sort.append((lo, hi, d_lo, d_hi))


def _number(v: Any, acc: Acc, root: Json) -> None:
    if _is_number(v):
        _add_numbers(acc, v, v, None)


def _quantity(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, dict) and _is_number(value := v.get("value")):
        _add_numbers(acc, value, value, v)


def _number_of_quantity(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, dict) and _is_number(value := v.get("value")):
        _add_numbers(acc, value, value, None)


def _money(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, dict) and _is_number(value := v.get("value")):
        currency = v.get("currency")
        units = {"system": ISO_4217, "code": currency} if isinstance(currency, str) else None
        _add_numbers(acc, value, value, units)


def _range_ends(v: Any) -> tuple[Decimal | int, Decimal | int, Json | None] | None:
    """(low, high, the quantity giving the units) of a Range; open ends are infinite."""
    if not isinstance(v, dict):
        return None
    low, high = v.get("low"), v.get("high")
    lo = low.get("value") if isinstance(low, dict) else None
    hi = high.get("value") if isinstance(high, dict) else None
    if not _is_number(lo) and not _is_number(hi):
        return None
    units = low if _is_number(lo) else high
    return (lo if _is_number(lo) else NUMBER_MIN), (hi if _is_number(hi) else NUMBER_MAX), units


def _range(v: Any, acc: Acc, root: Json) -> None:
    ends = _range_ends(v)
    if ends is not None:
        _add_numbers(acc, *ends)


def _number_of_range(v: Any, acc: Acc, root: Json) -> None:
    ends = _range_ends(v)
    if ends is not None:
        _add_numbers(acc, ends[0], ends[1], None)


def _reference(v: Any, acc: Acc, root: Json) -> None:
    if not isinstance(v, dict):
        return
    ref = v.get("reference")
    if isinstance(ref, str) and (keys := _reference_keys(ref, acc.base_url)):
        acc.values += keys
        acc.sort.append((ref, ref))
    ident = v.get("identifier")
    if isinstance(ident, dict) and isinstance(value := ident.get("value"), str) and value:
        for key in token_keys(ident.get("system"), value):
            acc.add_extra(":identifier", key)


@lru_cache(maxsize=16384)
def _reference_keys(reference: str, base_url: str | None) -> tuple[str, ...]:
    """reference_keys, memoised: subjects and encounters recur across resources."""
    return tuple(reference_keys(reference, base_url))


def _canonical(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, str) and v:
        acc.values += canonical_keys(v)
        acc.sort.append((v, v))


def _uri(v: Any, acc: Acc, root: Json) -> None:
    if isinstance(v, str) and v:
        acc.values.append(v)
        acc.sort.append((v, v))


def _embedded_resource(v: Any, acc: Acc, root: Json) -> None:
    """A resource held inline (Bundle.entry.resource): referenced as Type/id."""
    if isinstance(v, dict) and isinstance(v.get("id"), str):
        _uri(f"{v.get('resourceType')}/{v['id']}", acc, root)


_BY_TYPE: dict[str, dict[str, Converter]] = {
    "token": {
        "CodeableConcept": _token_codeable,
        "Coding": _token_coding,
        "Identifier": _token_identifier,
        "ContactPoint": _token_contact,
        "boolean": _token_boolean,
        **dict.fromkeys(STRINGS, _token_code),
    },
    "string": {
        "HumanName": _human_name,
        "Address": _address,
        **dict.fromkeys(STRINGS, _string),
    },
    "date": {"Period": _period, "Timing": _timing, **dict.fromkeys(DATES, _date)},
    "number": {
        "Range": _number_of_range,
        **dict.fromkeys(QUANTITIES, _number_of_quantity),
        **dict.fromkeys(NUMBERS, _number),
    },
    "quantity": {
        "Money": _money,
        "Range": _range,
        **dict.fromkeys(QUANTITIES, _quantity),
        **dict.fromkeys(NUMBERS, _number),
    },
    "reference": {
        "Reference": _reference,
        "canonical": _canonical,
        "Resource": _embedded_resource,
        **dict.fromkeys(URIS - {"canonical"}, _uri),
    },
    "uri": {"canonical": _canonical, **dict.fromkeys(STRINGS - {"canonical"}, _uri)},
}


def converter(param_type: str, datatype: str) -> Converter | None:
    """How a parameter of ``param_type`` indexes an element of ``datatype``; None when it
    does not (e.g. SampledData for a quantity)."""
    table = _BY_TYPE.get(param_type, {})
    if datatype not in table and is_resource_type(datatype):
        datatype = "Resource"
    return table.get(datatype)


# --- references: the target type for where(resolve() is T) -------------------------------


def reference_type(ref: Any, root: Json) -> str | None:
    """The resource type a Reference points to, read from its reference string (a
    contained ``#id`` is looked up in ``root``), else from Reference.type."""
    if not isinstance(ref, dict):
        return None
    target = ref.get("reference")
    if not isinstance(target, str):
        declared = ref.get("type")
        return declared if isinstance(declared, str) else None
    if target.startswith("#"):
        for contained in root.get("contained") or ():
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                return contained.get("resourceType")  # type: ignore[no-any-return]
        return None
    return _type_in_reference(target)


@lru_cache(maxsize=16384)
def _type_in_reference(target: str) -> str | None:
    """``Patient`` for ``Patient/1``, ``http://x/fhir/Patient/1/_history/2`` and the
    conditional ``Patient?identifier=...``; None for ``urn:uuid:...``."""
    path = target.partition("?")[0]
    parts = path.rstrip("/").split("/")
    if "_history" in parts:
        i = parts.index("_history")
        name = parts[i - 2] if i >= 2 else ""
    elif len(parts) >= 2:
        name = parts[-2]
    else:
        name = parts[0] if "?" in target else ""
    return name if is_resource_type(name) else None


# --- compiling FHIRPath ------------------------------------------------------------------


class Unsupported(Exception):
    """An expression shape the compiler does not handle: fhirpathpy evaluates it."""


class UnknownElement(Unsupported):
    """A path naming no element of the R4 model."""


@cache
def _types() -> dict[str, Any]:
    return raw_definitions()["types"]  # type: ignore[no-any-return]


# A branch of a compiled selection: the steps (hashable descriptions) and the datatype of
# what they select.
StepSpec = tuple[Any, ...]
Branch = tuple[tuple[StepSpec, ...], str]

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+)|(?P<id>[A-Za-z_]\w*|`[^`]*`)"
    r"|(?P<var>%\w+|\$this)|(?P<op>!=|[().\[\]|=,]))"
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if not text[pos:].strip():
                break
            raise Unsupported(f"cannot read {text[pos:]!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        out.append((kind, value.strip("`") if kind == "id" else value))
        pos = m.end()
    return out


class _Compiler:
    """Recursive descent over the supported subset, typing each branch as it goes."""

    def __init__(self, text: str, resource_type: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.resource_type = resource_type

    def peek(self, offset: int = 0) -> tuple[str, str]:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        k, v = self.peek()
        if k != kind or (value is not None and v != value):
            raise Unsupported(f"expected {value or kind}, found {v or 'end'}")
        self.pos += 1
        return v

    def compile(self, context: list[Branch]) -> list[Branch]:
        branches = self.union(context)
        if self.peek()[0] != "end":
            raise Unsupported(f"unexpected {self.peek()[1]!r}")
        return branches

    def union(self, context: list[Branch]) -> list[Branch]:
        branches = self.as_type(context)
        while self.peek() == ("op", "|"):
            self.pos += 1
            branches += [b for b in self.as_type(context) if b not in branches]
        return branches

    def as_type(self, context: list[Branch]) -> list[Branch]:
        branches = self.term(context)
        if self.peek() == ("id", "as"):
            self.pos += 1
            branches = _of_type(branches, self.type_name())
        return branches

    def type_name(self) -> str:
        name = self.take("id")
        if name in ("FHIR", "System") and self.peek() == ("op", "."):
            self.pos += 1
            name = self.take("id")
        return name

    def term(self, context: list[Branch]) -> list[Branch]:
        branches = self.primary(context)
        while True:
            tok = self.peek()
            if tok == ("op", "."):
                self.pos += 1
                branches = self.invocation(branches)
            elif tok == ("op", "["):
                self.pos += 1
                index = int(self.take("num"))
                self.take("op", "]")
                branches = _step(branches, ("index", index), single=True)
            else:
                return branches

    def primary(self, context: list[Branch]) -> list[Branch]:
        kind, value = self.peek()
        if (kind, value) == ("op", "("):
            self.pos += 1
            branches = self.union(context)
            self.take("op", ")")
            return branches
        if kind == "var":
            self.pos += 1
            if value in ("%resource", "%rootResource"):
                return [((("root",),), self.resource_type)]
            if value == "$this":
                return context
            raise Unsupported(f"variable {value}")
        if kind == "id" and self.peek(1) != ("op", "("):
            self.pos += 1
            return self.identifier(context, value)
        raise Unsupported(f"unexpected {value or 'end'}")

    def identifier(self, context: list[Branch], name: str) -> list[Branch]:
        """A leading type name filters the context (``Observation.x``); else a member."""
        if name[:1].isupper():
            if name in COMMON_BASES:
                return context
            kept = [b for b in context if b[1] == name]
            if kept:
                return kept
            if is_resource_type(name):
                return []
        return _member(context, name)

    def invocation(self, branches: list[Branch]) -> list[Branch]:
        name = self.take("id")
        if self.peek() != ("op", "("):
            return _member(branches, name)
        self.pos += 1
        if name in ("as", "ofType"):
            result = _of_type(branches, self.type_name())
        elif name == "where":
            result = self.where(branches)
        elif name == "first":
            result = _step(branches, ("index", 0), single=True)
        else:
            raise Unsupported(f"function {name}()")
        self.take("op", ")")
        return result

    def where(self, branches: list[Branch]) -> list[Branch]:
        """``where(resolve() is T [or resolve() is U])`` or ``where(field = 'literal')``."""
        if self.peek() == ("id", "resolve"):
            types = []
            while True:
                self.take("id", "resolve")
                self.take("op", "(")
                self.take("op", ")")
                self.take("id", "is")
                types.append(self.type_name())
                if self.peek() != ("id", "or"):
                    break
                self.pos += 1
            if any(b[1] != "Reference" for b in branches):
                raise Unsupported("resolve() on a non-Reference")
            return _step(branches, ("resolve", frozenset(types)))
        name = self.take("id")
        self.take("op", "=")
        literal = self.take("str")[1:-1].replace("\\'", "'")
        for _, datatype in branches:
            if name not in _types().get(datatype, {}).get("e", {}):
                raise Unsupported(f"where() on {name}, not a plain element of {datatype}")
        return _step(branches, ("eq", name, literal))


def _member(branches: list[Branch], name: str) -> list[Branch]:
    """Navigate to ``name`` on every branch; a choice name (``value``) fans out to each
    of its typed properties (``valueQuantity``, ...)."""
    out: list[Branch] = []
    for steps, datatype in branches:
        table = _types().get(datatype)
        if table is None:
            raise Unsupported(f"{datatype} has no elements to navigate ({name})")
        entry = table["e"].get(name)
        if entry is not None:
            out.append(((*steps, ("get", name)), entry[0]))
            continue
        choices = [(p, e[0]) for p, e in table["e"].items() if len(e) > 2 and e[2] == name]
        if not choices:
            raise UnknownElement(f"{datatype} has no element {name!r}")
        out += [((*steps, ("get", p)), t) for p, t in choices]
    return out


def _of_type(branches: list[Branch], type_name: str) -> list[Branch]:
    """Keep the branches whose datatype is ``type_name`` or one of its specialisations."""
    accepted = SUPERTYPES.get(type_name, frozenset()) | {type_name}
    return [b for b in branches if b[1] in accepted]


def _step(branches: list[Branch], spec: StepSpec, single: bool = False) -> list[Branch]:
    if single and len(branches) > 1:
        raise Unsupported("an indexer over a union of types")
    return [((*steps, spec), datatype) for steps, datatype in branches]


def compile_branches(expression: str, resource_type: str, datatype: str) -> list[Branch]:
    """The typed branches of ``expression`` evaluated on an element of ``datatype``
    (the resource itself for a parameter's own expression). Unsupported if it can't."""
    return _Compiler(expression, resource_type).compile([((), datatype)])


# --- running compiled selections ---------------------------------------------------------


def _get(name: str) -> Step:
    def step(values: list[Any], root: Json) -> list[Any]:
        out: list[Any] = []
        for v in values:
            if type(v) is dict:
                x = v.get(name)
                if x is not None:
                    if type(x) is list:
                        out += x
                    else:
                        out.append(x)
        return out

    return step


def _index(n: int) -> Step:
    return lambda values, root: values[n : n + 1]


def _where_eq(name: str, literal: str) -> Step:
    def keep(v: Any) -> bool:
        x = v.get(name) if type(v) is dict else None
        return x == literal or (type(x) is list and literal in x)

    return lambda values, root: [v for v in values if keep(v)]


def _where_resolve(types: frozenset[str]) -> Step:
    return lambda values, root: [v for v in values if reference_type(v, root) in types]


def _root(values: list[Any], root: Json) -> list[Any]:
    return [root]


def _make_step(spec: StepSpec) -> Step:
    kind = spec[0]
    if kind == "get":
        return _get(spec[1])
    if kind == "index":
        return _index(spec[1])
    if kind == "eq":
        return _where_eq(spec[1], spec[2])
    if kind == "resolve":
        return _where_resolve(spec[1])
    return _root


class Node:
    """One step of a selection trie; ``convert`` is set where a branch ends."""

    __slots__ = ("children", "convert", "spec", "step")

    def __init__(self, spec: StepSpec) -> None:
        self.spec = spec
        self.step = _make_step(spec)
        self.convert: Converter | None = None
        self.children: list[Node] = []


def _trie(branches: list[tuple[tuple[StepSpec, ...], Converter]]) -> list[Node]:
    """Branches sharing a prefix (``component`` of ``component.valueX``) share its walk."""
    roots: list[Node] = []
    for steps, convert in branches:
        level, node = roots, None
        for spec in steps:
            node = next((n for n in level if n.spec == spec), None)
            if node is None:
                node = Node(spec)
                level.append(node)
            level = node.children
        if node is not None:
            node.convert = convert
    return roots


def _run(nodes: list[Node], values: list[Any], root: Json, acc: Acc) -> None:
    for node in nodes:
        got = node.step(values, root)
        if got:
            convert = node.convert
            if convert is not None:
                for v in got:
                    convert(v, acc, root)
            if node.children:
                _run(node.children, got, root, acc)


# --- the fhirpathpy fallback -------------------------------------------------------------


def _resolve_types(inputs: list[Any], root: Json) -> list[Any]:
    """resolve() for fhirpathpy: a stand-in resource of the referenced type (a typed
    node, so that ``is Patient`` can test it)."""
    from fhirpathpy.engine.nodes import ResourceNode

    return [
        ResourceNode.create_node({"resourceType": t})
        for r in inputs
        if (t := reference_type(r, root))
    ]


@lru_cache(maxsize=1024)
def _parsed(expression: str) -> Any:
    from fhirpathpy.parser import parse

    return parse(expression)


def _fallback_expression(expression: str, resource_type: str) -> str:
    """fhirpathpy does not treat ``Resource.x`` as applying to every type."""
    parts = split_union(expression)
    for base in COMMON_BASES:
        parts = [resource_type + p[len(base) :] if p.startswith(base + ".") else p for p in parts]
    return " | ".join(parts)


def evaluate_fhirpathpy(
    expression: str,
    element: Any,
    root: Json,
    resource_type: str,
    element_type: str | None = None,
) -> list[tuple[str, Any]]:
    """(datatype, value) of each item fhirpathpy selects from ``element`` (the resource,
    or an element of ``element_type`` for a composite's component)."""
    from fhirpathpy import apply_parsed_path
    from fhirpathpy.engine.nodes import ResourceNode
    from fhirpathpy.models import models

    if element_type is not None and element is not root:
        element = ResourceNode.create_node(element, element_type)
    resolve = {"fn": lambda inputs: _resolve_types(inputs, root), "arity": {0: []}}
    options = {"returnRawData": True, "userInvocationTable": {"resolve": resolve}}
    context = {"resource": root, "rootResource": root}
    out = []
    # Operand by operand: fhirpathpy's union drops the node types of its items.
    for part in split_union(_fallback_expression(expression, resource_type)):
        try:
            items = apply_parsed_path(element, _parsed(part), context, models["r4"], options)
        except Exception as exc:  # an engine error must not fail the write: index nothing
            _log.warning("FHIRPath %r failed on %s: %s", part, resource_type, exc)
            continue
        for item in items:
            if isinstance(item, ResourceNode):
                value = item.data
                datatype = item.path if _is_datatype(item.path) else infer_datatype(value)
            else:
                value, datatype = item, infer_datatype(item)
            out.append((datatype, value))
    return out


def _is_datatype(name: Any) -> bool:
    return isinstance(name, str) and (
        name in _types() or name in raw_definitions()["primitives"] or is_resource_type(name)
    )


_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def infer_datatype(value: Any) -> str:
    """A FHIR datatype guessed from JSON shape (for fhirpathpy results without a path)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, Decimal):
        return "decimal"
    if not isinstance(value, dict):
        return "unknown"
    keys = value.keys()
    if "resourceType" in keys:
        return "Resource"
    if "coding" in keys or keys <= {"text", "id", "extension"}:
        return "CodeableConcept"
    if "reference" in keys or ("display" in keys and "code" not in keys):
        return "Reference"
    if keys & {"family", "given", "prefix", "suffix"}:
        return "HumanName"
    if keys & {"line", "city", "district", "state", "postalCode", "country"}:
        return "Address"
    for marker, name in (
        ("low", "Range"),
        ("high", "Range"),
        ("start", "Period"),
        ("end", "Period"),
        ("event", "Timing"),
        ("repeat", "Timing"),
        ("currency", "Money"),
    ):
        if marker in keys:
            return name
    if "value" in keys:
        if _is_number(value["value"]):
            return "Quantity"
        if value.get("system") in _CONTACT_SYSTEMS and "assigner" not in keys:
            return "ContactPoint"
        return "Identifier"
    return "Coding"


# --- per-type plans ----------------------------------------------------------------------


class ParamPlan:
    """How to compute one parameter's index values from a resource."""

    __slots__ = (
        "code",
        "converters",
        "fallback",
        "guard",
        "nodes",
        "param",
        "problems",
        "sort_numbers",
    )

    def __init__(self, param: SearchParam, resource_type: str) -> None:
        self.param = param
        self.code = param.code
        self.sort_numbers = param.type in ("number", "quantity")
        self.problems: list[str] = []
        self.nodes: list[Node] = []
        self.fallback: list[str] = []  # union operands left to fhirpathpy
        self.converters: dict[str, Converter | None] = {}  # for fallback results
        self._compile(param.expression or "", resource_type)
        # Top-level properties of which one must be present for any value (most of a
        # type's parameters are absent from a given resource: skip them cheaply).
        self.guard: tuple[str, ...] | None = None
        if not self.fallback and all(n.spec[0] == "get" for n in self.nodes):
            self.guard = tuple(n.spec[1] for n in self.nodes)

    def _compile(self, expression: str, resource_type: str) -> None:
        branches: list[tuple[tuple[StepSpec, ...], Converter]] = []
        root_nodes: list[Converter] = []
        for part in split_union(expression):
            try:
                compiled = compile_branches(part, resource_type, resource_type)
            except Unsupported as exc:
                self.problems.append(f"{part!r} falls back to fhirpathpy: {exc}")
                self.fallback.append(part)
                continue
            for steps, datatype in compiled:
                convert = self._converter(datatype, resource_type)
                if convert is None:
                    self.problems.append(f"{part!r} selects {datatype}: not indexed")
                elif steps:
                    branches.append((steps, convert))
                else:
                    root_nodes.append(convert)
        self.nodes = _trie(branches)
        if root_nodes:  # the expression is the resource itself (composite bases)
            self.nodes.insert(0, _self_node(root_nodes))

    def _converter(self, datatype: str, resource_type: str) -> Converter | None:
        if self.param.type == "composite":
            return _composite_converter(self.param, datatype, resource_type, self.problems)
        return converter(self.param.type, datatype)

    def run(self, resource: Json, resource_type: str, acc: Acc) -> None:
        if self.nodes:
            _run(self.nodes, [resource], resource, acc)
        for part in self.fallback:
            for datatype, value in evaluate_fhirpathpy(part, resource, resource, resource_type):
                if datatype not in self.converters:
                    self.converters[datatype] = self._converter(datatype, resource_type)
                convert = self.converters[datatype]
                if convert is not None:
                    convert(value, acc, resource)


def _self_node(converters: list[Converter]) -> Node:
    node = Node(("self",))
    node.step = lambda values, root: values
    node.convert = converters[0]
    return node


class _Component:
    __slots__ = ("code", "fallback", "nodes")

    def __init__(self, code: str, nodes: list[Node], fallback: str | None) -> None:
        self.code, self.nodes, self.fallback = code, nodes, fallback


def _compile_component(
    code: str, ptype: str, expression: str, resource_type: str, datatype: str, problems: list[str]
) -> _Component:
    """A component's expression, relative to an element of ``datatype``."""
    try:
        compiled = compile_branches(expression, resource_type, datatype)
    except Unsupported as exc:
        problems.append(f"component {code} {expression!r} falls back to fhirpathpy: {exc}")
        return _Component(code, [], expression)
    branches = []
    for steps, dt in compiled:
        convert = converter(ptype, dt)
        if convert is None:
            problems.append(f"component {code} selects {dt}: not indexed")
        else:
            branches.append((steps, convert))
    return _Component(code, _trie(branches), None)


def _composite_converter(
    param: SearchParam, datatype: str, resource_type: str, problems: list[str]
) -> Converter:
    """Index one element a composite selects: a dict of its components' values, kept
    only when every component has some."""
    components = [
        _compile_component(c.code, c.type, c.expression, resource_type, datatype, problems)
        for c in param.components
    ]
    types = {c.code: c.type for c in param.components}

    def convert_element(element: Any, acc: Acc, root: Json) -> None:
        found: dict[str, list[Any]] = {}
        for comp in reversed(components):  # the value parts are the ones often absent
            sub = Acc(acc.base_url)
            _run(comp.nodes, [element], root, sub)
            if comp.fallback:
                items = evaluate_fhirpathpy(comp.fallback, element, root, resource_type, datatype)
                for dt, value in items:
                    if (fn := converter(types[comp.code], dt)) is not None:
                        fn(value, sub, root)
            if not sub.values:
                return
            found[comp.code] = dedupe(sub.values)
        acc.values.append({c.code: found[c.code] for c in components})

    return convert_element


@dataclass(slots=True)
class TypePlan:
    resource_type: str
    params: list[ParamPlan]
    compartment: tuple[str, ...]


_plans: weakref.WeakKeyDictionary[Registry, dict[str, TypePlan]] = weakref.WeakKeyDictionary()


def type_plan(registry: Registry, resource_type: str) -> TypePlan:
    """The compiled parameters of a type (compiled on first use, kept per registry)."""
    per_registry = _plans.setdefault(registry, {})
    plan = per_registry.get(resource_type)
    if plan is None:
        params = [
            ParamPlan(p, resource_type)
            for p in registry.params(resource_type).values()
            if p.supported and p.code not in NOT_STORED
        ]
        plan = TypePlan(resource_type, params, registry.patient_compartment(resource_type))
        per_registry[resource_type] = plan
    return plan


def expression_problems(resource_type: str, param: SearchParam) -> list[str]:
    """What the compiler could not do for a parameter (for the generator's report)."""
    if not param.supported:
        return []
    return ParamPlan(param, resource_type).problems


# --- indexing ----------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """A hashable form of an index value (Decimal128 is not hashable)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Decimal128):
        return ("d128", value.bid)
    return value


def dedupe(values: list[Any]) -> list[Any]:
    """Values in first-seen order without repeats (FHIRPath ``|`` is a set union)."""
    if len(values) < 2:
        return values
    if type(values[0]) is str:  # a parameter's values are all strings or all dicts
        return list(dict.fromkeys(values))
    seen: dict[Any, Any] = {}
    for v in values:
        seen.setdefault(_freeze(v), v)
    return list(seen.values())


def _store(plan: ParamPlan, acc: Acc, index: Index) -> None:
    code = plan.code
    if acc.values:
        index.sp[code] = dedupe(acc.values)
    for suffix, extra in acc.extra.items():
        index.sp[code + suffix] = dedupe(extra)
    sort = acc.sort
    if sort:
        if len(sort) == 1:
            low = high = sort[0]
        else:
            low = min(sort, key=_first)
            high = max(sort, key=_second)
        if plan.sort_numbers:
            index.so[code] = {"a": low[2], "d": high[3]}
        else:
            index.so[code] = {"a": low[0], "d": high[1]}


def _first(entry: tuple[Any, ...]) -> Any:
    return entry[0]


def _second(entry: tuple[Any, ...]) -> Any:
    return entry[1]


def _compartments(resource: Json, plan: TypePlan, sp: dict[str, list[Any]]) -> list[str]:
    found = []
    if plan.resource_type == "Patient" and isinstance(resource.get("id"), str):
        found.append(f"Patient/{resource['id']}")
    for code in plan.compartment:
        for key in sp.get(code, ()):
            if key.startswith("Patient/") and key.count("/") == 1:
                found.append(key)
    return list(dict.fromkeys(found))


def index_resource(
    resource: Json, registry: Registry | None = None, base_url: str | None = None
) -> Index:
    """Every search parameter value of ``resource`` (its stored index fields).
    ``base_url`` is this server's (``http://host/fhir``): absolute references elsewhere
    then index as URLs only, not as local ``Type/id`` (see values.reference_keys)."""
    registry = registry or Registry.from_definitions()
    resource_type = resource["resourceType"]
    plan = type_plan(registry, resource_type)
    index = Index()
    for param in plan.params:
        guard = param.guard
        if guard is not None:
            for key in guard:
                if key in resource:
                    break
            else:
                continue
        acc = Acc(base_url)
        param.run(resource, resource_type, acc)
        if acc.values or acc.extra:
            _store(param, acc, index)
    index.comp = _compartments(resource, plan, index.sp)
    return index


def fallback_params(registry: Registry) -> Iterator[tuple[str, str, str]]:
    """(type, code, operand) of every expression part left to fhirpathpy."""
    for resource_type in registry.resource_types():
        for plan in type_plan(registry, resource_type).params:
            for part in plan.fallback:
                yield resource_type, plan.code, part
