"""Excel with openpyxl: typed cells (numbers as numbers, days as dates, money with two
decimals, rates as percentages), a bold header row with the panes frozen below it,
column widths that fit, and a bold totals row. Title and period above the table."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from reports.aggregate import Column, Table
from reports.render.cells import heading, text

MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PERIOD = {"es": "Período", "en": "Period"}
HEADER_ROW = 4  # title, period, a blank row, then the header

FORMATS = {
    "money": "#,##0.00",
    "percent": "0.0%",
    "integer": "0",
    "decimal": "0.##",
}


def _cell_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _format(column: Column, value: Any) -> str | None:
    if isinstance(value, date):
        return "yyyy-mm" if column.monthly else "yyyy-mm-dd"
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return FORMATS.get(column.kind)
    return None


def render(table: Table) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "".join(c for c in table.title if c not in "[]:*?/\\")[:31]
    sheet["A1"] = table.title
    sheet["A1"].font = Font(bold=True, size=14)
    sheet["A2"] = (
        f"{PERIOD[table.language]}: {table.start.isoformat()} \u2013 {table.end.isoformat()}"
    )
    if table.clinic:
        sheet["A2"] = f"{table.clinic} · {sheet['A2'].value}"
    if table.subject:
        sheet["A3"] = table.subject
    bold = Font(bold=True)
    widths = [len(heading(c)) for c in table.columns]
    for i, column in enumerate(table.columns, start=1):
        cell = sheet.cell(row=HEADER_ROW, column=i, value=heading(column))
        cell.font = bold
    lines = [*table.rows, *([table.totals] if table.totals is not None else [])]
    for r, line in enumerate(lines, start=HEADER_ROW + 1):
        last = table.totals is not None and r == HEADER_ROW + len(lines)
        for i, (column, value) in enumerate(zip(table.columns, line, strict=True), start=1):
            cell = sheet.cell(row=r, column=i, value=_cell_value(value))
            fmt = _format(column, value)
            if fmt is not None:
                cell.number_format = fmt
            if last:
                cell.font = bold
            widths[i - 1] = max(widths[i - 1], len(text(column, value)))
    for i, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(i)].width = min(max(width + 2, 8), 60)
    sheet.freeze_panes = sheet.cell(row=HEADER_ROW + 1, column=1)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
