"""Values of a report table as text, for CSV and PDF (xlsx keeps them typed)."""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from reports.aggregate import Column

CENT = Decimal("0.01")
TENTH = Decimal("0.1")


def text(column: Column, value: Any) -> str:
    """Money with 2 decimals, rates as percentages with one decimal (33.3), other
    decimals to at most 2, months as YYYY-MM, days as YYYY-MM-DD."""
    if value is None:
        return ""
    if column.kind == "percent" and isinstance(value, Decimal):
        return str((value * 100).quantize(TENTH, ROUND_HALF_UP))
    if column.kind == "money" and isinstance(value, Decimal | int):
        return str(Decimal(value).quantize(CENT, ROUND_HALF_UP))
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return str(value.quantize(Decimal(1)))
        return format(value.quantize(CENT, ROUND_HALF_UP).normalize(), "f")
    if isinstance(value, date):
        return value.isoformat()[:7] if column.monthly else value.isoformat()
    return str(value)


def heading(column: Column) -> str:
    """A rate's heading says it is in percent (its cells are 33.3, not 0.333)."""
    return f"{column.heading} (%)" if column.kind == "percent" else column.heading
