"""The report definitions of ``definitions/``: which view, how its rows are filtered by
the period, grouped and aggregated, with headings in each language.

Definitions are data so that a clinic's report is reviewed as a ViewDefinition plus a
few lines of JSON, not as code; this module checks them once, when first read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fhir_server.views.engine import View, compile_view

LANGUAGES = ("es", "en")
Language = Literal["es", "en"]
Kind = Literal["text", "date", "integer", "decimal", "money", "percent"]
AGGREGATES = frozenset({"count", "distinct", "sum", "avg", "min", "max", "rate", "stock"})
BUCKETS = frozenset({"day", "month"})

DEFINITIONS = Path(__file__).parent / "definitions"


@dataclass(frozen=True, slots=True)
class Text:
    """A heading or title in each language."""

    es: str
    en: str

    def get(self, language: Language) -> str:
        return self.es if language == "es" else self.en


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    column: str
    heading: Text
    kind: Kind
    label: str | None = None  # a column whose first value names the group (a display)
    bucket: str | None = None  # day, month, or {by} (the request chooses)


@dataclass(frozen=True, slots=True)
class Measure:
    id: str
    agg: str
    heading: Text
    kind: Kind
    column: str | None = None
    where: tuple[tuple[str, frozenset[str]], ...] = ()  # rows counted: column in values
    numerator: str | None = None  # rate: numerator / denominator measures
    denominator: str | None = None
    total: bool = True  # shown in the totals row
    hidden: bool = False  # computed (for a rate) but not shown


@dataclass(frozen=True, slots=True)
class Chart:
    kind: Literal["line", "bar"]
    x: str
    y: str
    series: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    id: str
    title: Text
    view: View
    view_json: dict[str, Any]
    search: tuple[tuple[str, str], ...]  # search criteria pushed to MongoDB ({from}, {to})
    period: str  # the column whose date places a row in the period
    groups: tuple[Group, ...]
    measures: tuple[Measure, ...]
    buckets: tuple[str, ...] = ()
    patient: bool = False  # takes (and requires) patient=
    skip_empty: str | None = None  # rows without a value in this column are left out
    keep: tuple[tuple[str, frozenset[str]], ...] = ()  # only rows with these values
    drop: tuple[tuple[str, frozenset[str]], ...] = ()  # rows with these values left out
    enrich: str | None = None  # "stock": on hand and expiring batches from the ledger
    chart: Chart | None = None

    @property
    def shown(self) -> tuple[Measure, ...]:
        return tuple(m for m in self.measures if not m.hidden)


class DefinitionError(ValueError):
    """A report definition that cannot work (a bug of the shipped data)."""


def _text(value: Any, where: str) -> Text:
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in LANGUAGES):
        raise DefinitionError(f"{where} needs a text in each of {LANGUAGES}")
    return Text(es=value["es"], en=value["en"])


def _kind(value: Any, where: str) -> Kind:
    if value not in ("text", "date", "integer", "decimal", "money", "percent"):
        raise DefinitionError(f"{where}: unknown type {value!r}")
    return value  # type: ignore[no-any-return]


def _values(
    given: dict[str, list[str]], columns: set[str], where: str
) -> tuple[tuple[str, frozenset[str]], ...]:
    """Row filters of the definition: column -> the values kept (or dropped). A status
    is filtered here rather than in the view's ``where``: the rows' columns are read by
    the compiled fast path, a ``where`` by the FHIRPath interpreter (~50 us a resource),
    and the period's search criteria already narrow the same status in MongoDB."""
    for column in given:
        if column not in columns:
            raise DefinitionError(f"{where} names a column the view lacks: {column}")
    return tuple((column, frozenset(values)) for column, values in given.items())


def _report(data: dict[str, Any]) -> Report:
    rid = data["id"]
    view_json = json.loads((DEFINITIONS / data["view"]).read_text())
    view = compile_view(view_json)
    columns = {c.name for c in view.columns} | {"product", "product_name"}
    groups = tuple(
        Group(
            id=g["id"],
            column=g["column"],
            heading=_text(g["heading"], f"{rid}.group.{g['id']}"),
            kind=_kind(g["type"], f"{rid}.group.{g['id']}"),
            label=g.get("label"),
            bucket=g.get("bucket"),
        )
        for g in data["group"]
    )
    measures = tuple(
        Measure(
            id=m["id"],
            agg=m["agg"],
            heading=_text(m["heading"], f"{rid}.measure.{m['id']}"),
            kind=_kind(m["type"], f"{rid}.measure.{m['id']}"),
            column=m.get("column"),
            where=tuple((k, frozenset(v)) for k, v in m.get("where", {}).items()),
            numerator=m.get("numerator"),
            denominator=m.get("denominator"),
            total=m.get("total", True),
            hidden=m.get("hidden", False),
        )
        for m in data["measures"]
    )
    ids = {m.id for m in measures}
    for g in groups:
        if g.column not in columns or (g.label and g.label not in columns):
            raise DefinitionError(f"{rid}: group {g.id} names a column the view lacks")
        if g.bucket not in (None, "{by}", *BUCKETS):
            raise DefinitionError(f"{rid}: group {g.id} has an unknown bucket {g.bucket!r}")
    for m in measures:
        if m.agg not in AGGREGATES:
            raise DefinitionError(f"{rid}: measure {m.id} has an unknown aggregate {m.agg!r}")
        if m.column is not None and m.column not in columns:
            raise DefinitionError(f"{rid}: measure {m.id} names a column the view lacks")
        if m.agg == "rate" and not {m.numerator, m.denominator} <= ids:
            raise DefinitionError(f"{rid}: rate {m.id} needs numerator and denominator measures")
    if data["period"] not in columns:
        raise DefinitionError(f"{rid}: the period column is not a column of the view")
    chart = data.get("chart")
    return Report(
        id=rid,
        title=_text(data["title"], f"{rid}.title"),
        view=view,
        view_json=view_json,
        search=tuple((name, value) for name, value in data.get("search", [])),
        period=data["period"],
        groups=groups,
        measures=measures,
        buckets=tuple(data.get("buckets", ())),
        patient=data.get("patient", False),
        skip_empty=data.get("skip_empty"),
        keep=_values(data.get("keep", {}), columns, f"{rid}.keep"),
        drop=_values(data.get("drop", {}), columns, f"{rid}.drop"),
        enrich=data.get("enrich"),
        chart=Chart(chart["kind"], chart["x"], chart["y"], chart.get("series")) if chart else None,
    )


@cache
def catalog() -> dict[str, Report]:
    """Every shipped report, by id (read and checked once)."""
    found: dict[str, Report] = {}
    for path in sorted(DEFINITIONS.glob("*.json")):
        if path.name.endswith(".view.json"):
            continue
        report = _report(json.loads(path.read_text()))
        found[report.id] = report
    return found
