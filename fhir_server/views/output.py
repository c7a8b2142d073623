"""The output formats of ``$viewdefinition-run``: rows as JSON, NDJSON, CSV or Parquet.

An ``Encoder`` turns batches of rows (dicts in the view's column order) into bytes:
``begin()`` once, ``encode(rows)`` per batch, ``finish()`` at the end, so JSON, NDJSON
and CSV go out as the rows are produced. Parquet is a file with its schema and row-group
index at the end: its batches are written as row groups into a spooled temporary file
(memory, then disk beyond ``PARQUET_SPOOL_BYTES``) that ``finish()`` hands back in blocks.

Values: JSON and NDJSON keep the row values as JSON (decimals exact). CSV (RFC 4180,
Python's csv module, CRLF line ends) writes strings as they are, booleans as
``true``/``false``, numbers as their JSON text, absent values as empty fields, and
collections and complex values as their JSON text. Parquet columns take the Arrow type
of the column's declared FHIR ``type`` (``ARROW_TYPES``; a collection column is a list of
it); an undeclared type, or any other, is a string column holding what CSV would write.
"""

from __future__ import annotations

import contextlib
import csv
import io
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from fhir_server.datetimes import parse_range
from fhir_server.jsonio import JsonDecimal, dumps
from fhir_server.views.engine import Row, ViewColumn
from fhir_server.views.errors import ViewRunError

PARQUET_SPOOL_BYTES = 16 << 20
_READ_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class Format:
    name: str  # json | ndjson | csv | parquet
    media_type: str


FORMATS = {
    "json": Format("json", "application/json"),
    "ndjson": Format("ndjson", "application/x-ndjson"),
    "csv": Format("csv", "text/csv; charset=utf-8"),
    "parquet": Format("parquet", "application/vnd.apache.parquet"),
}
# _format values and Accept media types, each naming one of FORMATS.
FORMAT_NAMES = {
    "json": "json",
    "application/json": "json",
    "application/fhir+json": "json",
    "ndjson": "ndjson",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/fhir+ndjson": "ndjson",
    "csv": "csv",
    "text/csv": "csv",
    "parquet": "parquet",
    "application/vnd.apache.parquet": "parquet",
    "application/parquet": "parquet",
    "application/octet-stream": "parquet",  # what the operation's notes name for Accept
}


def format_named(value: str) -> Format | None:
    """The format a ``_format`` value or media type names (None: not one of ours)."""
    key = value.split(";", 1)[0].strip().lower().replace(" ", "+")  # '+' decoded as ' '
    name = FORMAT_NAMES.get(key)
    return None if name is None else FORMATS[name]


class Encoder(Protocol):
    def begin(self) -> bytes: ...

    def encode(self, rows: Sequence[Row]) -> bytes: ...

    def finish(self) -> Iterator[bytes]: ...


def encoder_for(fmt: Format, columns: Sequence[ViewColumn], header: bool = True) -> Encoder:
    if fmt.name == "json":
        return JsonEncoder()
    if fmt.name == "ndjson":
        return NdjsonEncoder()
    if fmt.name == "csv":
        return CsvEncoder(columns, header)
    return ParquetEncoder(columns)


class JsonEncoder:
    """A JSON array of row objects."""

    def __init__(self) -> None:
        self._first = True

    def begin(self) -> bytes:
        return b"["

    def encode(self, rows: Sequence[Row]) -> bytes:
        if not rows:
            return b""
        body = b",".join(dumps(row) for row in rows)
        if self._first:
            self._first = False
            return body
        return b"," + body

    def finish(self) -> Iterator[bytes]:
        yield b"]"


class NdjsonEncoder:
    """One row object per line."""

    def begin(self) -> bytes:
        return b""

    def encode(self, rows: Sequence[Row]) -> bytes:
        return b"".join(dumps(row) + b"\n" for row in rows)

    def finish(self) -> Iterator[bytes]:
        yield from ()


def text(value: Any) -> str:
    """A value as one CSV field (or Parquet string cell)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, JsonDecimal):
        return value.text
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    return dumps(value).decode("utf-8")  # collections, complex values


class CsvEncoder:
    """RFC 4180: a header row of column names (unless ``header`` is false), then a
    record per row."""

    def __init__(self, columns: Sequence[ViewColumn], header: bool) -> None:
        self.names = [c.name for c in columns]
        self.header = header

    def _lines(self, records: Sequence[Sequence[str]]) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerows(records)
        return buffer.getvalue().encode("utf-8")

    def begin(self) -> bytes:
        return self._lines([self.names]) if self.header else b""

    def encode(self, rows: Sequence[Row]) -> bytes:
        return self._lines([[text(row.get(name)) for name in self.names] for row in rows])

    def finish(self) -> Iterator[bytes]:
        yield from ()


# --- Parquet ------------------------------------------------------------------------------


def _arrow_types() -> dict[str, Any]:
    """The Arrow type of each FHIR type whose Parquet column is not a string column
    (dates and dateTimes stay strings: their precision varies; decimals are doubles)."""
    import pyarrow as pa

    int32, timestamp = pa.int32(), pa.timestamp("ms", tz="UTC")
    return {
        "boolean": pa.bool_(),
        "integer": int32,
        "positiveInt": int32,
        "unsignedInt": int32,
        "integer64": pa.int64(),
        "decimal": pa.float64(),
        "instant": timestamp,
    }


def _converter(fhir_type: str | None, column: ViewColumn) -> Callable[[Any], Any]:
    """How one value of the column becomes an Arrow cell of its type."""

    def wrong(value: Any) -> ViewRunError:
        return ViewRunError(
            f"column {column.name!r} is declared {fhir_type} but has the value {value!r}"
        )

    def boolean(value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        raise wrong(value)

    def integer(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):
            raise wrong(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str | Decimal):  # integer64 is a JSON string
            try:
                number = Decimal(value)
            except ArithmeticError:
                raise wrong(value) from None
            if number == number.to_integral_value():
                return int(number)
        raise wrong(value)

    def decimal(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, int | Decimal) and not isinstance(value, bool):
            return float(value)
        raise wrong(value)

    def instant(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return parse_range(value)[0]
            except ValueError:
                pass
        raise wrong(value)

    def string(value: Any) -> Any:
        return None if value is None else text(value)

    by_type = {
        "boolean": boolean,
        "integer": integer,
        "positiveInt": integer,
        "unsignedInt": integer,
        "integer64": integer,
        "decimal": decimal,
        "instant": instant,
    }
    return by_type.get(fhir_type or "", string)


class ParquetEncoder:
    """Parquet (Apache Arrow's writer): one row group per batch of rows."""

    def __init__(self, columns: Sequence[ViewColumn]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._pq = pq
        types = _arrow_types()
        fields = []
        self._convert: list[tuple[str, bool, Callable[[Any], Any]]] = []
        for column in columns:
            kind = types.get(column.type or "", pa.string())
            if column.collection:
                kind = pa.list_(kind)
            fields.append(pa.field(column.name, kind))
            self._convert.append((column.name, column.collection, _converter(column.type, column)))
        self.schema = pa.schema(fields)
        # closed by finish() or close(): it outlives this method
        self._file = tempfile.SpooledTemporaryFile(max_size=PARQUET_SPOOL_BYTES)  # noqa: SIM115
        self._writer = pq.ParquetWriter(self._file, self.schema)
        self._written = False

    def begin(self) -> bytes:
        return b""

    def _cells(self, rows: Sequence[Row]) -> list[list[Any]]:
        columns: list[list[Any]] = []
        for name, collection, convert in self._convert:
            if collection:
                columns.append(
                    [None if r.get(name) is None else [convert(v) for v in r[name]] for r in rows]
                )
            else:
                columns.append([convert(r.get(name)) for r in rows])
        return columns

    def encode(self, rows: Sequence[Row]) -> bytes:
        if rows:
            table = self._pa.Table.from_arrays(
                [
                    self._pa.array(cells, type=field.type)
                    for cells, field in zip(self._cells(rows), self.schema, strict=True)
                ],
                schema=self.schema,
            )
            self._writer.write_table(table)
            self._written = True
        return b""

    def finish(self) -> Iterator[bytes]:
        try:
            if not self._written:  # no rows: still a file with the schema
                self._writer.write_table(self.schema.empty_table())
            self._writer.close()
            self._file.seek(0)
            while block := self._file.read(_READ_BLOCK):
                yield block
        finally:
            self._file.close()

    def close(self) -> None:
        """Drop the spooled file (a run abandoned before ``finish``, or after it)."""
        if self._file.closed:
            return
        try:
            with contextlib.suppress(self._pa.ArrowException, OSError, ValueError):
                self._writer.close()  # before the file, which it would write its footer to
        finally:
            self._file.close()
