"""``GET [base]/$report``: the request's parameters checked, the report's view run within
the token's reach, aggregated, and rendered in the requested format and language.
fhir_server/api/reports.py serves it; nothing here knows HTTP beyond the parameters.

Parameters: ``name`` (a report id), ``from`` and ``to`` (FHIR dates: ``2025``,
``2025-03`` or ``2025-03-04``; ``from`` is the start of its precision, ``to`` the end),
``_format`` (csv, xlsx, pdf, json), ``lang`` (es, en; else ``Accept-Language``; else
es), ``patient`` (the vital-signs report), ``by`` (patients-seen: month or day),
``days`` (dispenses-stock: the expiry horizon, default 90).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from fhir_server.authz.policy import Policy
from fhir_server.config import Settings
from fhir_server.jsonio import dumps, load_stored
from fhir_server.offload import Offload
from fhir_server.outcome import FhirError
from fhir_server.resource_types import is_valid_id
from fhir_server.search.registry import Registry
from fhir_server.storage import Storage
from reports import stock
from reports.aggregate import Table, aggregate
from reports.catalog import LANGUAGES, Language, Report, catalog
from reports.render import cells, csv_out, pdf_out, xlsx_out
from reports.source import view_rows

OPERATION = "$report"
PARAMETERS = frozenset({"name", "from", "to", "_format", "lang", "patient", "by", "days"})
FORMATS = {
    "csv": csv_out.MEDIA_TYPE,
    "xlsx": xlsx_out.MEDIA_TYPE,
    "pdf": pdf_out.MEDIA_TYPE,
    "json": "application/json",
}
ALIASES = {
    "text/csv": "csv",
    xlsx_out.MEDIA_TYPE: "xlsx",
    "application/pdf": "pdf",
    "application/json": "json",
}
EXTENSIONS = {"csv": "csv", "xlsx": "xlsx", "pdf": "pdf", "json": "json"}
DEFAULT_DAYS = 90
MAX_DAYS = 3660
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def bad(message: str, where: str, code: str = "invalid") -> FhirError:
    return FhirError.of(400, code, message, where)


@dataclass(frozen=True, slots=True)
class ReportRequest:
    report: Report
    start: date
    end: date
    format: str
    language: Language
    patient: str | None = None
    by: str = "month"
    days: int = DEFAULT_DAYS


@dataclass(frozen=True, slots=True)
class Rendered:
    media_type: str
    body: bytes
    filename: str


def _single(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    given: dict[str, str] = {}
    for name, value in query:
        if name not in PARAMETERS:
            raise bad(f"{OPERATION} has no parameter {name!r}", name, "not-supported")
        if name in given:
            raise bad(f"{OPERATION} takes one {name}", name)
        given[name] = value.strip()
    return given


def _day(value: str, where: str, end: bool) -> date:
    """A FHIR date at any precision; ``to`` stands for the last day it covers."""
    match = _DATE.match(value)
    if match is not None:
        year, month, day = (int(g) if g else None for g in match.groups())
        try:
            assert year is not None
            if month is None:
                return date(year, 12, 31) if end else date(year, 1, 1)
            if day is None:
                last = calendar.monthrange(year, month)[1]
                return date(year, month, last if end else 1)
            return date(year, month, day)
        except ValueError:
            pass
    raise bad(f"{where} must be a date (YYYY, YYYY-MM or YYYY-MM-DD), not {value!r}", where)


def language_of(given: str | None, accept_language: str | None) -> Language:
    """``lang``, else the first of es and en in Accept-Language by its q, else es."""
    if given is not None:
        if given not in LANGUAGES:
            raise bad(f"lang must be one of {', '.join(LANGUAGES)}, not {given!r}", "lang")
        return "es" if given == "es" else "en"
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and q > 0:
            ranked.append((-q, i, primary))
    return "en" if ranked and min(ranked)[2] == "en" else "es"


def _format(given: str | None, accept: str | None) -> str:
    if given is not None:
        fmt = ALIASES.get(given.lower(), given.lower())
        if fmt not in FORMATS:
            raise bad(
                f"_format {given!r} is not supported; supported: {', '.join(FORMATS)}",
                "_format",
                "not-supported",
            )
        return fmt
    for media_type in (accept or "").split(","):
        found = ALIASES.get(media_type.split(";")[0].strip().lower())
        if found is not None:
            return found
    return "csv"


def parse_request(
    query: Iterable[tuple[str, str]], accept: str | None, accept_language: str | None
) -> ReportRequest | None:
    """The request, or None for the list of reports (no ``name``); 400 (404 for an
    unknown report) naming the parameter at fault."""
    given = _single(query)
    language = language_of(given.get("lang"), accept_language)
    if "name" not in given:
        for name in given:
            if name not in ("_format", "lang"):
                raise bad(f"{name} needs a report name", "name", "required")
        if given.get("_format", "json") != "json":
            raise bad("the list of reports is JSON only", "_format", "not-supported")
        return None
    report = catalog().get(given["name"])
    if report is None:
        raise FhirError.of(
            404,
            "not-found",
            f"There is no report {given['name']!r}; the reports: {', '.join(sorted(catalog()))}",
            "name",
        )
    for name in ("from", "to"):
        if not given.get(name):
            raise bad(f"{OPERATION} needs {name} (a date)", name, "required")
    start, end = _day(given["from"], "from", False), _day(given["to"], "to", True)
    if start > end:
        raise bad(f"from ({start}) is after to ({end})", "from")
    patient = given.get("patient")
    if report.patient:
        if not patient:
            raise bad(f"The report {report.id} needs patient", "patient", "required")
        pid = patient[len("Patient/") :] if patient.startswith("Patient/") else patient
        if not is_valid_id(pid):
            raise bad(f"patient must be a Patient id or Patient/<id>, not {patient!r}", "patient")
        patient = pid
    elif patient is not None:
        raise bad(f"The report {report.id} takes no patient", "patient", "not-supported")
    by = given.get("by", report.buckets[0] if report.buckets else "month")
    if "by" in given and by not in report.buckets:
        allowed = ", ".join(report.buckets) or "none"
        raise bad(
            f"by must be one of: {allowed}",
            "by",
            "not-supported" if not report.buckets else "invalid",
        )
    days = DEFAULT_DAYS
    if "days" in given:
        if report.enrich != "stock":
            raise bad(f"The report {report.id} takes no days", "days", "not-supported")
        if not given["days"].isdigit() or not 0 <= int(given["days"]) <= MAX_DAYS:
            raise bad(f"days must be a whole number from 0 to {MAX_DAYS}", "days")
        days = int(given["days"])
    return ReportRequest(
        report=report,
        start=start,
        end=end,
        format=_format(given.get("_format"), accept),
        language=language,
        patient=patient,
        by=by,
        days=days,
    )


def listing(language: Language) -> bytes:
    """The available reports and what each takes, as JSON."""
    items = [
        {
            "name": r.id,
            "title": r.title.get(language),
            "view": r.view_json,
            "parameters": sorted(
                {"from", "to", "_format", "lang"}
                | ({"patient"} if r.patient else set())
                | ({"by"} if r.buckets else set())
                | ({"days"} if r.enrich == "stock" else set())
            ),
            "formats": list(FORMATS),
        }
        for r in catalog().values()
    ]
    return dumps({"reports": items})


class ReportService:
    def __init__(
        self, storage: Storage, registry: Registry, offload: Offload, settings: Settings
    ) -> None:
        self.storage = storage
        self.registry = registry
        self.offload = offload
        self.settings = settings

    async def table(self, req: ReportRequest, policy: Policy) -> Table:
        """The report's table, from what the token may read."""
        report = req.report
        if report.enrich == "stock":
            await stock.require_stock_scope(policy)
        values = {"from": req.start.isoformat(), "to": req.end.isoformat()}
        criteria = [(name, value.format(**values)) for name, value in report.search]
        rows = await view_rows(
            report.view,
            criteria,
            policy,
            self.storage,
            self.registry,
            self.offload,
            patient=req.patient,
        )
        external: dict[tuple[Any, ...], dict[str, Any]] = {}
        labels: dict[tuple[Any, ...], str] = {}
        if report.enrich == "stock":
            await stock.add_products(rows, self.storage, policy)
            today = datetime.now(ZoneInfo(self.settings.slot_timezone)).date()
            found = await stock.holdings(self.storage, today, req.days)
            external = stock.stock_measures(found)
            labels = {(p,): h.name for p, h in found.items() if h.name}
        table = await self.offload.call(
            aggregate,
            report,
            rows,
            req.language,
            req.start,
            req.end,
            req.by,
            external,
            labels,
        )
        if report.enrich == "stock":
            table.columns = [
                replace(c, heading=c.heading.replace("{days}", str(req.days)))
                for c in table.columns
            ]
        table.clinic = await self.clinic()
        if req.patient is not None:
            table.subject = await self.patient_label(req.patient, policy)
        return table

    async def render(self, req: ReportRequest, policy: Policy) -> Rendered:
        table = await self.table(req, policy)
        name = f"{req.report.id}_{req.start.isoformat()}_{req.end.isoformat()}"
        filename = f"{name}.{EXTENSIONS[req.format]}"
        if req.format == "json":
            return Rendered(FORMATS["json"], as_json(req, table), filename)
        writer = {"csv": csv_out.render, "xlsx": xlsx_out.render, "pdf": pdf_out.render}
        body = await self.offload.call(writer[req.format], table)
        return Rendered(FORMATS[req.format], body, filename)

    async def clinic(self) -> str:
        """The billing issuer's name (the clinic, docs/billing.md), else the setting."""
        issuer = self.settings.billing_issuer
        if issuer and "/" in issuer:
            kind, _, rid = issuer.partition("/")
            stored = await self.storage.read_current(kind, rid)
            if stored is not None and stored.raw is not None:
                name = load_stored(stored.raw).get("name")
                if isinstance(name, str) and name.strip():
                    return name.strip()
        return self.settings.report_clinic_name

    async def patient_label(self, pid: str, policy: Policy) -> str:
        """The patient's name when the token may read it, with its reference."""
        reference = f"Patient/{pid}"
        if await policy.try_restriction("Patient", "r") is None:
            return reference
        if not await policy.contains("Patient", pid, "r"):
            return reference
        stored = await self.storage.read_current("Patient", pid)
        if stored is None or stored.raw is None:
            return reference
        names = load_stored(stored.raw).get("name") or []
        name = names[0] if names and isinstance(names[0], dict) else {}
        given = " ".join(g for g in name.get("given", []) if isinstance(g, str))
        full = " ".join(p for p in (given, name.get("family")) if isinstance(p, str) and p)
        text = name.get("text") if isinstance(name.get("text"), str) else full
        return f"{text} ({reference})" if text else reference


def as_json(req: ReportRequest, table: Table) -> bytes:
    """The table as JSON: columns (id, heading, type), rows and totals as the CSV's
    text values, so that money keeps its cents and rates their percent."""

    def line(values: list[Any]) -> list[str | None]:
        return [
            None if v is None else cells.text(c, v)
            for c, v in zip(table.columns, values, strict=True)
        ]

    return dumps(
        {
            "report": req.report.id,
            "title": table.title,
            "clinic": table.clinic,
            "from": req.start.isoformat(),
            "to": req.end.isoformat(),
            "language": table.language,
            "subject": table.subject,
            "columns": [{"id": c.id, "heading": c.heading, "type": c.kind} for c in table.columns],
            "rows": [line(r) for r in table.rows],
            "totals": line(table.totals) if table.totals is not None else None,
        }
    )
