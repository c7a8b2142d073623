"""``$viewdefinition-export`` (SQL on FHIR v2, OperationDefinition ViewDefinitionExport):
the request's parameters, the rows a worker writes, and the Parameters resources of the
kick-off, status and result responses. Nothing of HTTP (api/view_export.py) and nothing
of jobs: a view export is a bulk export job (fhir_server/bulk) whose units are of kind
``view``, so leases, checkpoints, dispatch, status, cancel, download and expiry are
bulk's own code.

Parameters (a Parameters body; the spec's "Input Parameters"):

- ``view`` (1..*), parts ``name`` (the output's name), ``viewResource`` (inline) or
  ``viewReference`` (a stored ViewDefinition: views/store.py ``resolve``), one of them;
- ``clientTrackingId`` (echoed), ``_format`` (csv, ndjson, parquet, json; default
  ndjson, whatever ``Accept`` says), ``header`` (csv only, default true);
- ``patient`` and ``group`` (0..* References), ``_since`` (instant);
- ``source``: 400 ``not-supported`` (only the server's data is exported).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir_server.bulk.export import NdjsonFile
from fhir_server.datetimes import format_instant
from fhir_server.jsonio import dumps, load_stored
from fhir_server.outcome import FhirError, Issue
from fhir_server.resource_types import is_valid_id
from fhir_server.service.context import request_base_url
from fhir_server.service.parameters import Parameter, read_parameters
from fhir_server.views.engine import Row, View, compile_view
from fhir_server.views.errors import ViewError
from fhir_server.views.output import FORMATS, Encoder, Format, encoder_for, format_named
from fhir_server.views.run import (
    bad_parameter,
    boolean_parameter,
    patient_parameter,
    since_parameter,
    view_error,
)

OPERATION = "$viewdefinition-export"
FLUSH_ROWS = 1000  # rows encoded at once (a Parquet row group), bounding the buffer
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ExportView:
    """One ``view`` repetition: its definition, compiled, and its output's name."""

    name: str
    definition: dict[str, Any]
    view: View
    at: str  # where the ViewDefinition is in the request, for error expressions


@dataclass(slots=True)
class ViewSource:
    """A ``view`` repetition as read, before a viewReference is resolved."""

    path: str
    name: tuple[str, str] | None = None  # (value, where)
    resource: tuple[Any, str] | None = None
    reference: tuple[str, str] | None = None


@dataclass(slots=True)
class ExportRequest:
    sources: list[ViewSource]
    format: Format = FORMATS["ndjson"]
    header: bool = True
    client_tracking_id: str | None = None
    patients: list[tuple[str, str]] = field(default_factory=list)  # (id, where)
    groups: list[tuple[str, str]] = field(default_factory=list)  # (id, where)
    since: datetime | None = None


# --- parameters -------------------------------------------------------------------------


def parse_export_request(
    body: dict[str, Any], query: Sequence[tuple[str, str]], instance: bool = False
) -> ExportRequest:
    """The kick-off's parameters; 400 naming the one at fault. Views are compiled later
    (``compile_views``), once references are resolved. At the instance level
    (``instance``) the view is the one the URL names, and ``view`` is 400 (the spec:
    "supplying view as well would be ambiguous")."""
    for name, _ in query:
        raise bad_parameter(
            f"{OPERATION} takes its parameters in the Parameters body, not the URL ({name})",
            name,
            code="not-supported",
        )
    req = ExportRequest(sources=[])
    seen: set[str] = set()

    def once(p: Parameter) -> Any:
        if p.name in seen:
            raise bad_parameter(f"{OPERATION} takes one {p.name}", p.path)
        seen.add(p.name)
        if not p.has_value:
            raise bad_parameter(f"{p.name} must have a value[x]", p.path)
        return p.value

    items = body.get("parameter", [])
    for i, p in enumerate(read_parameters(body)):
        if p.name == "view":
            if instance:
                raise bad_parameter(
                    "view does not apply at the instance level: the URL names the view",
                    p.path,
                    code="not-supported",
                )
            req.sources.append(_view_source(items[i], p.path))
        elif p.name == "clientTrackingId":
            value = once(p)
            if not isinstance(value, str) or not value:
                raise bad_parameter("clientTrackingId must be a string", p.path)
            req.client_tracking_id = value
        elif p.name == "_format":
            value = once(p)
            fmt = format_named(value) if isinstance(value, str) else None
            if fmt is None:
                raise bad_parameter(
                    f"Format {value!r} is not supported; supported formats: " + ", ".join(FORMATS),
                    p.path,
                    code="not-supported",
                )
            req.format = fmt
        elif p.name == "header":
            req.header = boolean_parameter((once(p), p.path), "header", default=True)
        elif p.name == "_since":
            req.since = since_parameter((once(p), p.path))
        elif p.name == "patient":
            if not p.has_value:
                raise bad_parameter("patient must have a valueReference", p.path)
            req.patients.append((str(patient_parameter((p.value, p.path))), p.path))
        elif p.name == "group":
            req.groups.append((_group(p), p.path))
        elif p.name == "source":
            raise bad_parameter(
                "external data sources (source) are not supported: the server's data is exported",
                p.path,
                code="not-supported",
            )
        else:
            raise bad_parameter(
                f"{OPERATION} has no parameter {p.name!r}", p.path, code="not-supported"
            )
    if not req.sources and not instance:
        raise bad_parameter(
            "view (a ViewDefinition to export) is required", "Parameters", code="required"
        )
    return req


def _view_source(item: dict[str, Any], path: str) -> ViewSource:
    """The parts of one ``view``: ``name`` and exactly one of ``viewResource`` and
    ``viewReference`` (ViewDefinitionExport, "Identifying each ViewDefinition")."""
    parts = item.get("part")
    if not isinstance(parts, list) or not parts:
        raise bad_parameter("view must have parts (viewResource or viewReference)", path)
    source = ViewSource(path)
    try:
        read = read_parameters({"parameter": parts})
    except FhirError as exc:  # rooted at the view's parts, not the top level
        raise FhirError(
            exc.status,
            [
                Issue(
                    i.code,
                    i.diagnostics,
                    i.severity,
                    tuple(
                        e.replace("Parameters.parameter", f"{path}.part", 1) for e in i.expression
                    ),
                )
                for i in exc.issues
            ],
        ) from None
    for part in read:
        where = part.path.replace("Parameters.parameter", f"{path}.part", 1)
        if part.name == "name":
            value = part.value
            if source.name is not None:
                raise bad_parameter("view takes one name", where)
            if not isinstance(value, str) or not _NAME.match(value):
                raise bad_parameter(
                    f"view.name must be 1 to 64 letters, digits, '_', '.' or '-', not {value!r}",
                    where,
                )
            source.name = (value, where)
        elif part.name in ("viewResource", "viewReference"):
            if source.resource is not None or source.reference is not None:
                raise bad_parameter(
                    "view takes exactly one of viewResource and viewReference", where
                )
            if part.name == "viewResource":
                if not isinstance(part.resource, dict):
                    raise bad_parameter(
                        "viewResource must hold a ViewDefinition resource", f"{where}.resource"
                    )
                source.resource = (part.resource, f"{where}.resource")
            else:
                ref = part.value.get("reference") if isinstance(part.value, dict) else None
                if not isinstance(ref, str) or not ref:
                    raise bad_parameter(
                        "viewReference must be a Reference to a ViewDefinition", where
                    )
                source.reference = (ref, where)
        else:
            raise bad_parameter(f"view has no part {part.name!r}", where, code="not-supported")
    if source.resource is None and source.reference is None:
        raise bad_parameter("view needs a viewResource or a viewReference", path, code="required")
    return source


def _group(p: Parameter) -> str:
    """The id of the Group a ``group`` Reference names (``Group/<id>``, or this server's
    absolute URL of it)."""
    ref = p.value.get("reference") if isinstance(p.value, dict) else None
    if isinstance(ref, str):
        base = request_base_url.get() or ""
        if base and ref.startswith(f"{base}/"):
            ref = ref[len(base) + 1 :]
        kind, _, gid = ref.partition("/")
        if kind == "Group" and is_valid_id(gid):
            return gid
    raise bad_parameter(f"group must be a reference to a Group, not {p.value!r}", p.path)


def compile_views(resolved: Sequence[tuple[ViewSource, dict[str, Any], str]]) -> list[ExportView]:
    """Every view compiled before anything starts (422 for the first invalid one, its
    expression rooted where it is in the request), each with a unique output name: the
    ``name`` part, else the ViewDefinition's ``name``, else ``view_<n>``."""
    out: list[ExportView] = []
    names: set[str] = set()
    for n, (source, definition, at) in enumerate(resolved):
        try:
            compiled = compile_view(definition)
        except ViewError as exc:
            raise view_error(exc, at) from None
        if source.name is not None:
            name, where = source.name
            if name in names:
                raise bad_parameter(f"Two views are named {name!r}", where)
        else:
            own = definition.get("name")
            name = own if isinstance(own, str) and _NAME.match(own) else f"view_{n + 1}"
            while name in names:
                name = f"{name}_{n + 1}"
        names.add(name)
        out.append(ExportView(name, definition, compiled, at))
    return out


# --- the worker's side: rows into files ---------------------------------------------------


class ViewRows:
    """A view unit's files (bulk/export.py ``FileContent``): the rows of each resource in
    the requested format, encoded ``FLUSH_ROWS`` at a time. Each file is complete in
    itself (a CSV header, a JSON array, a Parquet footer), so any part can be read alone.
    Parquet row groups go to a spooled temporary file (disk beyond 16 MB) that ``end``
    copies into GridFS: memory stays bounded whatever the view's size."""

    def __init__(self, unit: dict[str, Any]) -> None:
        self.view = compile_view(load_stored(unit["view"]))
        self.format = FORMATS[unit["format"]]
        self.header = bool(unit["header"])
        self.name = str(unit["name"])
        self.range = int(unit["range"])  # which _id range of the view this unit is
        self.media_type = self.format.media_type
        self.always_file = unit["lo"] is None  # the first range of a view: never no file
        self.encoder: Encoder | None = None
        self.rows: list[Row] = []

    def file_name(self, seq: int) -> str:
        ext = self.format.name  # csv, ndjson, json, parquet: also the file extensions
        if self.range == 0:
            return f"{self.name}.part{seq + 1}.{ext}"
        return f"{self.name}.{self.range + 1}.part{seq + 1}.{ext}"

    def start(self, out: NdjsonFile) -> None:
        self.discard()
        self.encoder = encoder_for(self.format, self.view.columns, self.header)
        out.write(self.encoder.begin())

    def add(self, out: NdjsonFile, raw: bytes) -> int:
        before = len(self.rows)
        self.rows.extend(self.view.rows(load_stored(raw)))
        added = len(self.rows) - before
        if len(self.rows) >= FLUSH_ROWS:
            self._flush(out)
        return added

    def _flush(self, out: NdjsonFile) -> None:
        assert self.encoder is not None
        if self.rows:
            out.write(self.encoder.encode(self.rows))
            self.rows = []

    def end(self, out: NdjsonFile) -> None:
        assert self.encoder is not None
        self._flush(out)
        for block in self.encoder.finish():
            out.write(block)
        self.encoder = None

    def discard(self) -> None:
        """Drop what an abandoned file left (a Parquet spool)."""
        self.rows = []
        close = getattr(self.encoder, "close", None)
        if close is not None:
            close()
        self.encoder = None


# --- the responses: Parameters -------------------------------------------------------------


def _string(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "valueString": value}


def status_parameters(job: dict[str, Any], status: str, location: str) -> dict[str, Any]:
    """The kick-off's and the polls' Parameters: ``exportId``, ``clientTrackingId``,
    ``status`` (accepted, in-progress), ``location`` (the status URL), start time."""
    params: list[dict[str, Any]] = [_string("exportId", job["_id"])]
    if job.get("client_tracking_id"):
        params.append(_string("clientTrackingId", job["client_tracking_id"]))
    params.append({"name": "status", "valueCode": status})
    params.append({"name": "location", "valueUri": location})
    params.append({"name": "exportStartTime", "valueInstant": format_instant(job["created"])})
    return {"resourceType": "Parameters", "parameter": params}


def result_parameters(
    job: dict[str, Any], location: str, files: Iterator[tuple[int, str]], file_url: str
) -> dict[str, Any]:
    """The manifest of a finished export (ViewDefinitionExport "Output Parameters"): the
    status parameters plus ``_format``, end time and duration, and one ``output`` per
    view, in the request's order, with every file (part) of it as a ``location``."""
    body = status_parameters(job, "completed", location)
    params = body["parameter"]
    params.append({"name": "_format", "valueCode": job["format"]})
    end = job["completed"]
    params.append({"name": "exportEndTime", "valueInstant": format_instant(end)})
    seconds = int((end - job["created"]).total_seconds())
    params.append({"name": "exportDuration", "valueInteger": seconds})
    by_view: dict[int, list[str]] = {}
    for view_n, file_id in files:
        by_view.setdefault(view_n, []).append(f"{file_url}/{file_id}")
    for n, name in enumerate(job["views"]):
        part = [_string("name", name)]
        part += [{"name": "location", "valueUri": url} for url in by_view.get(n, [])]
        params.append({"name": "output", "part": part})
    return body


def stored_view(definition: dict[str, Any]) -> bytes:
    """The ViewDefinition as a unit keeps it: JSON bytes (its keys are no MongoDB
    field names to worry about)."""
    return dumps(definition)
