"""The typed search plan: what a parsed query string means, independent of MongoDB
(compile.py) and of HTTP (api/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
PREFIXES: tuple[str, ...] = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# Token modifiers answered with the terminology service (search.html#token): a ValueSet's
# members (:in, :not-in) or a code's descendants/ancestors in its code system.
TERMINOLOGY_MODIFIERS = frozenset({"in", "not-in", "below", "above"})


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None  # None: no "|" given (any system); "": "|code" (no system)
    code: str | None  # None: "system|" (any code in the system)


@dataclass(frozen=True, slots=True)
class RangeValue:
    """A date, number or quantity search value: the prefix and the [low, high) range
    the value's precision implies (search.html#prefix)."""

    prefix: Prefix
    low: datetime | Decimal
    high: datetime | Decimal
    system: str | None = None  # quantity only
    code: str | None = None  # quantity only


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    keys: tuple[str, ...]  # index keys any of which matches (see values.py)


@dataclass(frozen=True, slots=True)
class CompositeValue:
    parts: tuple[tuple[str, str, Value], ...]  # (component code, component type, value)


Value = str | TokenValue | RangeValue | ReferenceValue | CompositeValue


@dataclass(frozen=True, slots=True)
class Criterion:
    """One occurrence of a parameter: its values are ORed; criteria are ANDed."""

    resource_type: str
    code: str  # "_id", "_lastUpdated" or a registry code
    type: str  # the parameter type
    modifier: str | None
    values: tuple[Value, ...]
    missing: bool | None = None  # set for :missing


@dataclass(frozen=True, slots=True)
class Chain:
    """``subject:Patient.name=x``: the reference parameter must point at a resource of
    one of ``target_types`` matching the inner condition for that type."""

    resource_type: str
    code: str
    target_types: tuple[str, ...]
    inners: tuple[Condition, ...]  # one per target type


@dataclass(frozen=True, slots=True)
class ReverseChain:
    """``_has:Observation:patient:code=x``: some ``source_type`` resource referring to
    this one through ``code`` matches ``inner``."""

    resource_type: str
    source_type: str
    code: str
    inner: Condition


Condition = Criterion | Chain | ReverseChain


@dataclass(frozen=True, slots=True)
class SortKey:
    code: str
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    source_type: str
    code: str  # "*" for every reference parameter
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass(slots=True)
class SearchPlan:
    types: tuple[str, ...]  # one type, or several for a system search
    conditions: list[Condition] = field(default_factory=list)
    sort: tuple[SortKey, ...] = ()
    count: int = 20
    total: str | None = None  # none | estimate | accurate (None: server default)
    summary: str | None = None
    elements: frozenset[str] | None = None
    includes: tuple[Include, ...] = ()
    cursor: str | None = None
    compartment: tuple[str, str] | None = None  # ("Patient", "123")
    # The parameters as understood, in canonical form, for the self link.
    canonical: list[tuple[str, str]] = field(default_factory=list)
    # A MongoDB filter the conditions imply, ANDed in so an index can bound the scan
    # (e.g. $find: a Slot's one start within [start, end), on both sides at once).
    narrowing: dict[str, Any] | None = None
