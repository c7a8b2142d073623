"""Query string → SearchPlan (search.html). Knows FHIR search syntax and the registry,
not MongoDB. Anything it does not understand is a 400 naming the parameter, unless the
client asked for ``Prefer: handling=lenient``: then unknown parameters are dropped (and
left out of the self link), as search.html#errors allows."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.datetimes import now, parse_range, widened
from fhir_server.decimals import RANGE_TEXT, bounded, in_range
from fhir_server.digits import whole_number
from fhir_server.outcome import FhirError, bad_request
from fhir_server.resource_types import is_resource_type, is_valid_id
from fhir_server.search.plan import (
    PREFIXES,
    TERMINOLOGY_MODIFIERS,
    Chain,
    CompositeValue,
    Condition,
    Criterion,
    Include,
    RangeValue,
    ReferenceValue,
    ReverseChain,
    SearchPlan,
    SortKey,
    TokenValue,
    Value,
)
from fhir_server.search.registry import Registry, SearchParam
from fhir_server.search.values import normalize_text
from fhir_server.subsetting import SUMMARY_MODES, parse_elements

MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "of-type", "missing", *TERMINOLOGY_MODIFIERS},
    "reference": {"identifier", "missing"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"below", "above", "missing"},
    "composite": {"missing"},
    "special": set(),
}
_SORTABLE = frozenset({"string", "token", "date", "number", "quantity", "uri", "reference"})
_UNSUPPORTED = {
    "_text": "full-text search (_text) is not supported",
    "_content": "full-text search (_content) is not supported",
    "_query": "named queries (_query) are not supported",
    "_filter": "_filter is not supported",
    "_list": "_list is not supported",
}
MAX_CHAIN_DEPTH = 4
# One value (of an OR list). Strings match by regular expression, and MongoDB refuses one
# beyond 32 KB: 4,096 characters stay within it escaped and in UTF-8, and far above any
# name, code, identifier or URL a client searches for.
MAX_VALUE_LENGTH = 4096


class _Unknown(Exception):
    """An unknown parameter or modifier: an error, or ignored when lenient."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def split_escaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` except where escaped with a backslash (search.html#escaping)."""
    parts, current, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            current.append(value[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] in "\\,|$":
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


# --- values ----------------------------------------------------------------------------


def _prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


def decimal_range(text: str, name: str) -> tuple[Decimal, Decimal, Decimal]:
    """The value and the [low, high) range its significant figures imply:
    "100" → [99.5, 100.5), "1e2" → [50, 150) (search.html#number)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise bad_request(f"{name}: {text!r} is not a number", name) from None
    if not value.is_finite():
        raise bad_request(f"{name}: {text!r} is not a finite number", name)
    if not in_range(value):
        raise bad_request(f"{name}: {text!r} is out of range ({RANGE_TEXT})", name)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return value, value - half, value + half


def _approximate(low: Decimal, high: Decimal, value: Decimal) -> tuple[Decimal, Decimal]:
    margin = abs(value) / 10  # "ap": within 10% (search.html#prefix leaves it open)
    return bounded(low - margin), bounded(high + margin)


def parse_number(text: str, name: str) -> RangeValue:
    prefix, rest = _prefix(text)
    value, low, high = decimal_range(rest, name)
    if prefix == "ap":
        low, high = _approximate(low, high, value)
    return RangeValue(prefix, bounded(low), bounded(high))  # type: ignore[arg-type]


def parse_date(text: str, name: str) -> RangeValue:
    prefix, rest = _prefix(text)
    try:
        low, high = parse_range(rest)
    except ValueError as exc:
        raise bad_request(
            f"{name}: {rest!r} is not a FHIR date, dateTime or instant: {exc}", name
        ) from None
    if prefix == "ap":
        # e.g. ap0001: the margin would reach before year 1, where the range stops
        low, high = widened(low, high, max(abs(now() - low) / 10, timedelta(days=1)))
    return RangeValue(prefix, low, high)  # type: ignore[arg-type]


def parse_quantity(text: str, name: str) -> RangeValue:
    parts = split_escaped(text, "|")
    if len(parts) not in (1, 3):
        raise bad_request(f"{name}: a quantity is [prefix]number[|system|code]", name)
    number = parse_number(parts[0], name)
    system = unescape(parts[1]) or None if len(parts) == 3 else None
    code = unescape(parts[2]) or None if len(parts) == 3 else None
    return RangeValue(number.prefix, number.low, number.high, system, code)


def parse_token(text: str, name: str) -> TokenValue:
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        if not parts[0]:
            raise bad_request(f"{name}: empty token", name)
        return TokenValue(None, unescape(parts[0]))
    if len(parts) != 2 or parts == ["", ""]:
        raise bad_request(f"{name}: a token is [system|]code, got {text!r}", name)
    return TokenValue(unescape(parts[0]), unescape(parts[1]) or None)


def subsumption_token(text: str, name: str, modifier: str) -> TokenValue:
    """``system|code`` of :below/:above on a token: subsumption ("is-a, or hierarchical
    relationships", codesystem-search-modifier-code.html) is defined within one code
    system, so both the system and the code are required."""
    value = parse_token(text, name)
    if not value.system or not value.code:
        raise bad_request(f"{name}: :{modifier} on a token takes system|code", name)
    return value


def parse_reference(
    text: str, name: str, targets: Sequence[str], type_modifier: str | None, base_url: str
) -> ReferenceValue:
    value = unescape(text)
    if not value:
        raise bad_request(f"{name}: empty reference", name)
    if base_url and value.startswith(base_url.rstrip("/") + "/"):
        value = value[len(base_url.rstrip("/")) + 1 :]  # our own absolute URL: relative
    parts = value.split("/")
    if "://" in value or value.startswith("urn:"):
        return ReferenceValue((value,))
    if len(parts) == 1:
        if not is_valid_id(value):
            raise bad_request(f"{name}: {text!r} is not a resource id", name)
        types = [type_modifier] if type_modifier else list(targets)
        return ReferenceValue(tuple(f"{t}/{value}" for t in types))
    if len(parts) in (2, 4) and is_resource_type(parts[0]):
        versioned = len(parts) == 2 or (parts[2] == "_history" and is_valid_id(parts[3]))
        if not is_valid_id(parts[1]) or not versioned:
            raise bad_request(f"{name}: {text!r} is not a reference ([Type/]id or URL)", name)
        if type_modifier and parts[0] != type_modifier:
            raise bad_request(f"{name}: {value!r} is not a {type_modifier} reference", name)
        return ReferenceValue(("/".join(parts),))
    raise bad_request(f"{name}: {text!r} is not a reference ([Type/]id or URL)", name)


# --- parameters ------------------------------------------------------------------------


class Parser:
    def __init__(self, registry: Registry, base_url: str = "") -> None:
        self.registry = registry
        self.base_url = base_url

    def param(self, resource_type: str, code: str, name: str) -> SearchParam:
        if code in _UNSUPPORTED:
            raise FhirError.of(400, "not-supported", _UNSUPPORTED[code], name)
        found = self.registry.get(resource_type, code)
        if found is None:
            raise _Unknown(name, f"Unknown search parameter {code!r} for {resource_type}")
        if not found.supported:
            raise FhirError.of(
                400, "not-supported", f"Search parameter {code!r} is not supported", name
            )
        return found

    def condition(self, resource_type: str, name: str, value: str, depth: int = 0) -> Condition:
        if depth > MAX_CHAIN_DEPTH:
            raise bad_request(f"{name}: chains are limited to {MAX_CHAIN_DEPTH} levels", name)
        if name.startswith("_has:"):
            return self.reverse_chain(resource_type, name, value, depth)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        if dot:
            return self.chain(resource_type, name, code, modifier or None, rest, value, depth)
        if code == "_id":
            if modifier:
                raise _Unknown(name, f"Unknown modifier :{modifier} on _id")
            ids = tuple(unescape(v) for v in split_escaped(value, ","))
            for i in ids:
                if not is_valid_id(i):
                    raise bad_request(f"_id: {i!r} is not a valid id", name)
            return Criterion(resource_type, "_id", "special", None, ids)
        param = self.param(resource_type, code, name)
        return self.criterion(resource_type, param, name, modifier or None, value)

    def criterion(
        self,
        resource_type: str,
        param: SearchParam,
        name: str,
        modifier: str | None,
        value: str,
    ) -> Criterion:
        if modifier is not None and modifier not in MODIFIERS.get(param.type, set()):
            is_type = param.type == "reference" and modifier in param.targets
            if not is_type:
                raise _Unknown(name, f"Modifier :{modifier} is not supported on {name!r}")
        if modifier == "of-type" and param.code != "identifier":
            raise _Unknown(name, ":of-type applies to identifier parameters only")
        if modifier == "missing":
            if value not in ("true", "false"):
                raise bad_request(f"{name} must be true or false", name)
            return Criterion(resource_type, param.code, param.type, "missing", (), value == "true")
        values = tuple(self.value(param, name, modifier, v) for v in split_escaped(value, ","))
        return Criterion(resource_type, param.code, param.type, modifier, values)

    def value(self, param: SearchParam, name: str, modifier: str | None, text: str) -> Value:
        if len(text) > MAX_VALUE_LENGTH or (
            # as string and :text match it, normalised: NFKD makes up to 18 of one
            # character (uncached here: the value may yet be refused)
            not text.isascii() and len(normalize_text.__wrapped__(text)) > MAX_VALUE_LENGTH
        ):
            raise bad_request(
                f"{name}: a search value is limited to {MAX_VALUE_LENGTH} characters", name
            )
        kind = param.type
        if kind == "token":
            if modifier in ("text", "in", "not-in"):
                if not text:
                    raise bad_request(f"{name}: empty value", name)
                return unescape(text)  # :in/:not-in: a ValueSet canonical, url[|version]
            if modifier in ("below", "above"):
                return subsumption_token(text, name, modifier)
            if modifier == "of-type":
                parts = split_escaped(text, "|")
                if len(parts) != 3 or not all(parts):
                    raise bad_request(f"{name}: :of-type takes system|code|value", name)
                return TokenValue(f"{unescape(parts[0])}|{unescape(parts[1])}", unescape(parts[2]))
            return parse_token(text, name)
        if kind in ("string", "uri"):
            if not text:
                raise bad_request(f"{name}: empty value", name)
            return unescape(text)
        if kind == "date":
            return parse_date(text, name)
        if kind == "number":
            return parse_number(text, name)
        if kind == "quantity":
            return parse_quantity(text, name)
        if kind == "reference":
            if modifier == "identifier":
                return parse_token(text, name)
            type_modifier = modifier if modifier and modifier != "identifier" else None
            return parse_reference(text, name, param.targets, type_modifier, self.base_url)
        if kind == "composite":
            return self.composite(param, name, text)
        raise FhirError.of(
            400, "not-supported", f"{name}: {kind} parameters are not supported", name
        )

    def composite(self, param: SearchParam, name: str, text: str) -> CompositeValue:
        pieces = split_escaped(text, "$")
        if len(pieces) != len(param.components):
            raise bad_request(
                f"{name}: expects {len(param.components)} components separated by '$'", name
            )
        parts = []
        for component, piece in zip(param.components, pieces, strict=True):
            stand_in = SearchParam(component.code, component.type, "", param.base, None)
            value = self.value(stand_in, name, None, piece)
            parts.append((component.code, component.type, value))
        return CompositeValue(tuple(parts))

    def chain(
        self,
        resource_type: str,
        name: str,
        code: str,
        type_modifier: str | None,
        rest: str,
        value: str,
        depth: int,
    ) -> Chain:
        param = self.param(resource_type, code, name)
        if param.type != "reference":
            raise bad_request(f"{name}: only reference parameters can be chained", name)
        targets = [type_modifier] if type_modifier else list(param.targets)
        inners: list[Condition] = []
        kept: list[str] = []
        for target in targets:
            if not is_resource_type(target):
                raise _Unknown(name, f"Unknown resource type {target!r} in chain")
            try:
                inners.append(self.condition(target, rest, value, depth + 1))
                kept.append(target)
            except _Unknown:
                if type_modifier:
                    raise
        if not inners:
            raise _Unknown(name, f"No target of {code!r} has a parameter for {rest!r}")
        return Chain(resource_type, code, tuple(kept), tuple(inners))

    def reverse_chain(self, resource_type: str, name: str, value: str, depth: int) -> ReverseChain:
        parts = name.split(":", 3)
        if len(parts) != 4 or not all(parts):
            raise bad_request(f"{name}: _has is _has:Type:reference:parameter", name)
        _, source, code, rest = parts
        if not is_resource_type(source):
            raise _Unknown(name, f"Unknown resource type {source!r} in _has")
        param = self.param(source, code, name)
        if param.type != "reference":
            raise bad_request(f"{name}: {source}.{code} is not a reference parameter", name)
        if param.targets and resource_type not in param.targets:
            raise bad_request(f"{name}: {source}.{code} cannot refer to {resource_type}", name)
        inner = self.condition(source, rest, value, depth + 1)
        return ReverseChain(resource_type, source, code, inner)

    # --- result parameters ---------------------------------------------------------------

    def sort(self, types: Sequence[str], value: str) -> tuple[SortKey, ...]:
        keys = []
        for item in value.split(","):
            item = item.strip()
            descending = item.startswith("-")
            code = item[1:] if descending else item
            if not code:
                raise bad_request("_sort: empty sort key", "_sort")
            if code not in ("_id", "_lastUpdated"):
                for t in types:
                    param = self.param(t, code, "_sort")
                    if param.type not in _SORTABLE:
                        raise bad_request(f"_sort: {code} ({param.type}) has no order", "_sort")
            keys.append(SortKey(code, descending))
        return tuple(keys)

    def include(self, types: Sequence[str], value: str, reverse: bool, iterate: bool) -> Include:
        name = "_revinclude" if reverse else "_include"
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise bad_request(f"{name}: expected Type:parameter[:targetType]", name)
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if not is_resource_type(source) or (target and not is_resource_type(target)):
            raise bad_request(f"{name}: unknown resource type in {value!r}", name)
        if not reverse and source not in types and not iterate:
            raise bad_request(f"{name}: {source} is not a type being searched", name)
        if code != "*":
            param = self.param(source, code, name)
            if param.type != "reference":
                raise bad_request(f"{name}: {source}:{code} is not a reference parameter", name)
        return Include(source, code, target, iterate, reverse)

    # --- the whole query -------------------------------------------------------------------

    def parse_url(self, url: str, **options: Any) -> SearchPlan:
        """A plan from a relative search URL: ``Type?…``, ``Patient/1/Type?…`` (the
        Patient compartment) or ``?_type=A,B&…`` (system search)."""
        path, _, query = url.lstrip("/").partition("?")
        parts = [p for p in path.split("/") if p]
        pairs = parse_qsl(query, keep_blank_values=True)
        compartment = None
        if len(parts) == 3:
            compartment, parts = (parts[0], parts[1]), [parts[2]]
        types = parts or [t for k, v in pairs if k == "_type" for t in v.split(",")]
        criteria = [(k, v) for k, v in pairs if k != "_type"]
        return self.parse(types, criteria, compartment=compartment, **options)

    def parse(
        self,
        types: Sequence[str],
        params: Sequence[tuple[str, str]],
        *,
        lenient: bool = False,
        default_count: int = 20,
        max_count: int = 1000,
        compartment: tuple[str, str] | None = None,
    ) -> SearchPlan:
        plan = SearchPlan(types=tuple(types), count=default_count, compartment=compartment)
        includes: list[Include] = []
        for name, value in params:
            if "\x00" in name or "\x00" in value:
                # a NUL reaches here from bodies, headers and bundle entries (api/nul.py
                # refuses it in URLs): MongoDB refuses it in a regular expression
                where = name.replace("\x00", "\\0")
                raise bad_request(f"{where} contains a NUL character (U+0000)", where)
            # Errors name the parameter as the client sent it (``subject:Patient.foo``,
            # not the ``foo`` of the chain's last link).
            try:
                self._one(plan, includes, name, value, max_count)
            except _Unknown as exc:
                if not lenient:
                    raise FhirError.of(400, "not-supported", exc.message, name) from None
                continue
            except FhirError as exc:
                issues = [replace(i, expression=(name,)) for i in exc.issues]
                raise FhirError(exc.status, issues, exc.headers) from None
            if name not in ("_cursor", "_format", "_pretty"):
                plan.canonical.append((name, value))
        plan.includes = tuple(includes)
        if plan.summary == "text" and plan.includes:
            # search.html#summary: "the _include and _revinclude parameters cannot be
            # mixed with _summary=text"
            raise bad_request(
                "_include and _revinclude cannot be used with _summary=text", "_summary"
            )
        return plan

    def _one(
        self, plan: SearchPlan, includes: list[Include], name: str, value: str, max_count: int
    ) -> None:
        if name == "_count":
            count = whole_number(value)
            if count is None:
                raise bad_request("_count must be a non-negative integer", "_count")
            plan.count = min(count, max_count)
        elif name == "_sort":
            plan.sort = self.sort(plan.types, value)
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise bad_request("_total must be none, estimate or accurate", "_total")
            plan.total = value
        elif name == "_summary":
            if value not in SUMMARY_MODES:
                raise bad_request(f"_summary must be one of {', '.join(SUMMARY_MODES)}", name)
            plan.summary = value
        elif name == "_elements":
            plan.elements = parse_elements(value)
        elif name.split(":")[0] in ("_include", "_revinclude"):
            head, _, mod = name.partition(":")
            if mod not in ("", "iterate", "recurse"):
                raise _Unknown(name, f"Unknown modifier :{mod} on {head}")
            for item in value.split(","):
                includes.append(self.include(plan.types, item, head == "_revinclude", bool(mod)))
        elif name == "_contained":
            if value != "false":
                raise FhirError.of(
                    400, "not-supported", "_contained searches are not supported", name
                )
        elif name == "_containedType":
            if value != "container":
                raise FhirError.of(
                    400, "not-supported", "_containedType=contained is not supported", name
                )
        elif name == "_cursor":
            plan.cursor = value
        elif name in ("_format", "_pretty", "_type"):
            pass  # handled by content negotiation / the system-search route
        else:
            # A system search over several types gets one condition per type; the
            # compiler applies to each collection the conditions of its type.
            for t in plan.types:
                plan.conditions.append(self.condition(t, name, value))


_NOT_PLAIN = re.compile(r"[,$\\]")  # OR lists, composites and escapes


def plain_identifier(criteria: str) -> str | None:
    """``system|value`` when the criteria are exactly one ``identifier=system|value``
    (what migrations, Synthea and most integration engines send in conditional
    interactions and conditional references), else None."""
    pairs = parse_qsl(criteria.lstrip("?"), keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "identifier":
        return None
    value = pairs[0][1]
    system, bar, code = value.partition("|")
    if not (bar and system and code) or "|" in code or _NOT_PLAIN.search(value):
        return None
    return value
