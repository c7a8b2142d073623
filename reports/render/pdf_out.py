"""PDF with reportlab: the clinic's name, the report's title, the period (and the
patient of a per-patient report), the table with its totals row, and, for a report
with a chart, the chart (reportlab.graphics: a line per series over the days, or bars
per period) drawn above the table."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal
from typing import Any

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, String
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from reports.aggregate import Table as Report
from reports.render.cells import heading, text

MEDIA_TYPE = "application/pdf"
PERIOD = {"es": "Período", "en": "Period"}
PATIENT = {"es": "Paciente", "en": "Patient"}
NO_DATA = {"es": "Sin datos en el período.", "en": "No data in the period."}
# Series colours, in order; the first is the line a one-vital chart is drawn in.
SERIES = [
    colors.HexColor("#1f77b4"),
    colors.HexColor("#d62728"),
    colors.HexColor("#2ca02c"),
    colors.HexColor("#ff7f0e"),
    colors.HexColor("#9467bd"),
    colors.HexColor("#8c564b"),
]
HEADER = colors.HexColor("#dde6f0")
NUMERIC = frozenset({"integer", "decimal", "money", "percent"})


def render(table: Report) -> bytes:
    wide = len(table.columns) > 6
    size = landscape(A4) if wide else A4
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=size,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=table.title,
        author=table.clinic,
    )
    styles = getSampleStyleSheet()
    story: list[Any] = []
    if table.clinic:
        story.append(Paragraph(_escape(table.clinic), styles["Heading2"]))
    story.append(Paragraph(_escape(table.title), styles["Title"]))
    period = f"{PERIOD[table.language]}: {table.start.isoformat()} \u2013 {table.end.isoformat()}"
    story.append(Paragraph(period, styles["Normal"]))
    if table.subject:
        story.append(
            Paragraph(f"{PATIENT[table.language]}: {_escape(table.subject)}", styles["Normal"])
        )
    story.append(Spacer(1, 6 * mm))
    width = size[0] - 30 * mm
    if table.chart is not None and table.rows:
        story.append(_chart(table, width))
        story.append(Spacer(1, 6 * mm))
    if not table.rows:
        story.append(Paragraph(NO_DATA[table.language], styles["Italic"]))
    story.append(_table(table, styles))
    doc.build(story)
    return out.getvalue()


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _table(table: Report, styles: Any) -> Table:
    small = styles["BodyText"].clone("cell", fontSize=7, leading=8)
    data: list[list[Any]] = [[heading(c) for c in table.columns]]
    lines = [*table.rows, *([table.totals] if table.totals is not None else [])]
    for line in lines:
        cells: list[Any] = []
        for column, value in zip(table.columns, line, strict=True):
            shown = text(column, value)
            cells.append(Paragraph(_escape(shown), small) if len(shown) > 40 else shown)
        data.append(cells)
    grid = Table(data, repeatRows=1)
    style = [
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
        ("FONT", (0, 1), (-1, -1), "Helvetica", 8),
        ("BACKGROUND", (0, 0), (-1, 0), HEADER),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
    for i, column in enumerate(table.columns):
        if column.kind in NUMERIC:
            style.append(("ALIGN", (i, 1), (i, -1), "RIGHT"))
    if table.totals is not None:
        style.append(("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 8))
        style.append(("LINEABOVE", (0, -1), (-1, -1), 1, colors.black))
    grid.setStyle(TableStyle(style))
    return grid


def _number(value: Any) -> float | None:
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return float(value)
    return None


def _chart(table: Report, width: float) -> Drawing:
    assert table.chart is not None
    ids = [c.id for c in table.columns]
    x, y = ids.index(table.chart.x), ids.index(table.chart.y)
    drawing = Drawing(width, 70 * mm)
    drawing.add(String(0, 66 * mm, heading(table.columns[y]), fontName="Helvetica", fontSize=8))
    if table.chart.kind == "line":
        _line(table, drawing, width, x, y)
    else:
        _bars(table, drawing, width, x, y)
    return drawing


def _line(table: Report, drawing: Drawing, width: float, x: int, y: int) -> None:
    """One line per series (``chart.series``: a vital sign), x the day."""
    assert table.chart is not None
    ids = [c.id for c in table.columns]
    s = ids.index(table.chart.series) if table.chart.series else None
    series: dict[str, list[tuple[float, float]]] = {}
    first = min(r[x] for r in table.rows if isinstance(r[x], date))
    for row in table.rows:
        value, day = _number(row[y]), row[x]
        if value is None or not isinstance(day, date):
            continue
        name = str(row[s]) if s is not None else table.columns[y].heading
        series.setdefault(name, []).append(((day - first).days, value))
    plot = LinePlot()
    plot.x, plot.y = 30, 25
    plot.width, plot.height = width - 190, 55 * mm - 25
    plot.data = [sorted(points) for points in series.values()]
    for i in range(len(plot.data)):
        plot.lines[i].strokeColor = SERIES[i % len(SERIES)]
        plot.lines[i].strokeWidth = 2
        plot.lines[i].symbol = makeMarker("FilledCircle", size=5)
        plot.lines[i].symbol.fillColor = SERIES[i % len(SERIES)]
    last = max((p[0] for points in plot.data for p in points), default=0)
    span = max(last, 1)
    step = max(1, -(-span // 8))  # at most ~9 whole-day ticks
    plot.xValueAxis.valueMin = 0
    plot.xValueAxis.valueMax = span
    plot.xValueAxis.valueSteps = list(range(0, span + 1, step))
    plot.xValueAxis.labelTextFormat = lambda v: date.fromordinal(
        first.toordinal() + int(v)
    ).isoformat()
    plot.xValueAxis.labels.fontSize = 6
    plot.xValueAxis.labels.angle = 30
    plot.xValueAxis.labels.boxAnchor = "ne"
    values = [p[1] for points in plot.data for p in points]
    low, high = min(values), max(values)
    margin = max((high - low) * 0.1, abs(high) * 0.05, 1.0)  # points off the axes
    plot.yValueAxis.valueMin = low - margin
    plot.yValueAxis.valueMax = high + margin
    plot.yValueAxis.labels.fontSize = 7
    drawing.add(plot)
    legend = Legend()
    legend.x, legend.y = width - 150, 55 * mm
    legend.fontSize = 7
    legend.alignment = "right"
    legend.colorNamePairs = [(SERIES[i % len(SERIES)], name[:30]) for i, name in enumerate(series)]
    drawing.add(legend)


def _bars(table: Report, drawing: Drawing, width: float, x: int, y: int) -> None:
    chart = VerticalBarChart()
    chart.x, chart.y = 30, 25
    chart.width, chart.height = width - 40, 55 * mm - 25
    chart.data = [[_number(r[y]) or 0 for r in table.rows]]
    chart.categoryAxis.categoryNames = [text(table.columns[x], r[x]) for r in table.rows]
    chart.categoryAxis.labels.fontSize = 6
    chart.categoryAxis.labels.angle = 30 if len(table.rows) > 8 else 0
    chart.categoryAxis.labels.boxAnchor = "ne" if len(table.rows) > 8 else "n"
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 7
    chart.bars[0].fillColor = SERIES[0]
    chart.bars[0].strokeColor = None
    drawing.add(chart)
