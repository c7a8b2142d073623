"""Rows of a view grouped and aggregated as a report definition says: one table row per
group, in group order, and a totals row computed from all the rows (so a distinct count
in the totals is distinct over the period, not a sum of the groups' counts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from fhir_server.views.engine import Row
from reports.catalog import Chart, Group, Kind, Language, Measure, Report
from reports.source import day_of

TOTAL = {"es": "Total", "en": "Total"}
NONE = {"es": "(sin dato)", "en": "(none)"}

GroupKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Column:
    id: str
    heading: str
    kind: Kind
    monthly: bool = False  # a date column of months (shown as YYYY-MM)


@dataclass(slots=True)
class Table:
    """A report ready to render: typed values (date, int, Decimal, str, None), rates
    as fractions (0.25 for 25 %)."""

    title: str
    columns: list[Column]
    rows: list[list[Any]]
    totals: list[Any] | None
    start: date
    end: date
    language: Language
    subject: str | None = None  # the patient of a per-patient report
    chart: Chart | None = None
    clinic: str = ""


@dataclass(slots=True)
class _Acc:
    """One group's accumulators, one per measure."""

    count: dict[str, int] = field(default_factory=dict)
    distinct: dict[str, set[Any]] = field(default_factory=dict)
    total: dict[str, Decimal] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    low: dict[str, Decimal] = field(default_factory=dict)
    high: dict[str, Decimal] = field(default_factory=dict)
    label: str | None = None

    def add(self, measures: Iterable[Measure], row: Row) -> None:
        for m in measures:
            if any(row.get(col) not in values for col, values in m.where):
                continue
            if m.agg == "count":
                self.count[m.id] = self.count.get(m.id, 0) + 1
            elif m.agg == "distinct":
                value = row.get(m.column or "")
                if value is not None:
                    self.distinct.setdefault(m.id, set()).add(value)
            elif m.agg in ("sum", "avg", "min", "max"):
                for number in _numbers(row.get(m.column or "")):
                    self.total[m.id] = self.total.get(m.id, Decimal(0)) + number
                    self.seen[m.id] = self.seen.get(m.id, 0) + 1
                    if m.id not in self.low or number < self.low[m.id]:
                        self.low[m.id] = number
                    if m.id not in self.high or number > self.high[m.id]:
                        self.high[m.id] = number

    def value(self, m: Measure, values: Mapping[str, Any], external: Mapping[str, Any]) -> Any:
        if m.agg == "count":
            return self.count.get(m.id, 0)
        if m.agg == "distinct":
            return len(self.distinct.get(m.id, ()))
        if m.agg == "sum":
            return self.total.get(m.id, Decimal(0))
        if m.agg == "avg":
            n = self.seen.get(m.id, 0)
            return self.total[m.id] / n if n else None
        if m.agg == "min":
            return self.low.get(m.id)
        if m.agg == "max":
            return self.high.get(m.id)
        if m.agg == "rate":
            num, den = values.get(m.numerator or ""), values.get(m.denominator or "")
            return Decimal(num) / Decimal(den) if num is not None and den else None
        return external.get(m.id)  # "stock": supplied by the report's enrichment


def _numbers(value: Any) -> list[Decimal]:
    items = value if isinstance(value, list) else [value]
    return [
        Decimal(str(v))
        for v in items
        if isinstance(v, int | float | Decimal) and not isinstance(v, bool)
    ]


def _bucket_of(group: Group, by: str) -> str | None:
    return by if group.bucket == "{by}" else group.bucket


def _bucket(group: Group, value: Any, by: str) -> Any:
    bucket = _bucket_of(group, by)
    if bucket is None:
        return value
    day = day_of(value)
    if day is None:
        return None
    return day.replace(day=1) if bucket == "month" else day


def _order(key: GroupKey) -> tuple[Any, ...]:
    """None last, then by value (mixed types compared as text)."""
    return tuple((v is None, str(v) if not isinstance(v, date) else v.isoformat()) for v in key)


def aggregate(
    report: Report,
    rows: Iterable[Row],
    language: Language,
    start: date,
    end: date,
    by: str = "month",
    external: Mapping[GroupKey, Mapping[str, Any]] | None = None,
    labels: Mapping[GroupKey, str] | None = None,
) -> Table:
    """The report's table over ``rows`` whose period column falls within [start, end].
    ``external`` gives measures computed elsewhere (stock) per group key, and adds its
    groups when no row has them; ``labels`` names groups that have no label column."""
    external = external or {}
    groups: dict[GroupKey, _Acc] = {}
    everything = _Acc()
    measures = report.measures
    for row in rows:
        if report.skip_empty and row.get(report.skip_empty) is None:
            continue
        if any(row.get(col) not in values for col, values in report.keep):
            continue
        if any(row.get(col) in values for col, values in report.drop):
            continue
        day = day_of(row.get(report.period))
        if day is None or not start <= day <= end:
            continue
        key = tuple(_bucket(g, row.get(g.column), by) for g in report.groups)
        acc = groups.get(key)
        if acc is None:
            acc = groups[key] = _Acc()
        label_column = report.groups[0].label
        if acc.label is None and label_column and row.get(label_column):
            acc.label = str(row[label_column])
        acc.add(measures, row)
        everything.add(measures, row)
    for key in external:
        groups.setdefault(key, _Acc())
    columns = [
        Column(g.id, g.heading.get(language), g.kind, _bucket_of(g, by) == "month")
        for g in report.groups
    ]
    columns += [Column(m.id, m.heading.get(language), m.kind) for m in report.shown]
    table_rows: list[list[Any]] = []
    for key in sorted(groups, key=_order):
        acc = groups[key]
        values = _values(measures, acc, external.get(key, {}))
        first = acc.label or (labels or {}).get(key)
        shown_key = [first if i == 0 and first else v for i, v in enumerate(key)]
        shown_key = [NONE[language] if v is None else v for v in shown_key]
        table_rows.append(shown_key + [values[m.id] for m in report.shown])
    totals = _totals(report, everything, external, language)
    return Table(
        title=report.title.get(language),
        columns=columns,
        rows=table_rows,
        totals=totals,
        start=start,
        end=end,
        language=language,
        chart=report.chart,
    )


def _values(measures: Iterable[Measure], acc: _Acc, external: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for m in measures:  # rates come after the measures they divide
        values[m.id] = acc.value(m, values, external)
    return values


def _totals(
    report: Report,
    everything: _Acc,
    external: Mapping[GroupKey, Mapping[str, Any]],
    language: Language,
) -> list[Any]:
    summed: dict[str, Any] = {}
    for m in report.measures:
        if m.agg == "stock" and m.kind in ("integer", "decimal", "money"):
            summed[m.id] = sum((Decimal(v.get(m.id) or 0) for v in external.values()), Decimal(0))
    values = _values(report.measures, everything, summed)
    cells: list[Any] = [TOTAL[language]] + [None] * (len(report.groups) - 1)
    cells += [values[m.id] if m.total else None for m in report.shown]
    return cells
