"""CSV: RFC 4180 (CRLF), a header row in the report's language, a row per group and
the totals row; numbers as plain text (a dot as decimal mark) so that any program
reads them back."""

from __future__ import annotations

import csv
import io

from reports.aggregate import Table
from reports.render.cells import heading, text

MEDIA_TYPE = "text/csv; charset=utf-8"


def render(table: Table) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([heading(c) for c in table.columns])
    for row in table.rows:
        writer.writerow([text(c, v) for c, v in zip(table.columns, row, strict=True)])
    if table.totals is not None:
        writer.writerow([text(c, v) for c, v in zip(table.columns, table.totals, strict=True)])
    return out.getvalue().encode("utf-8")
