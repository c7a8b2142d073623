"""What each console page reads: plain rows, from the collections the services own
(auth clients and users, bulk jobs, Subscription state, reminder claims) and, for the
audit log, through the server's own SearchService. Nothing here writes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database

from fhir_server.bulk import jobs as bulk_jobs
from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.workflows.reminders.claims import CLAIMS
from fhir_server.workflows.subscriptions.active import NOTIFICATIONS
from fhir_server.workflows.subscriptions.active import STATE as SUBSCRIPTIONS
from smart_auth.store import CLIENTS, LOGIN_THROTTLE, USERS

LIST_LIMIT = 200  # rows per table: a console, not a report
AUDIT_PAGE = 25


def when(value: Any) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS UTC`` (epoch seconds or a datetime), or ''."""
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


# ----------------------------------------------------------------------------- clients, users


@dataclass(frozen=True)
class ClientRow:
    client_id: str
    type: str
    name: str
    scope: str
    rate_limit: str
    created: str


def clients(db: Database[Any]) -> list[ClientRow]:
    rows = []
    for doc in db[CLIENTS].find().sort("_id", 1).limit(LIST_LIMIT):
        limit = doc.get("rate_limit")
        rows.append(
            ClientRow(
                str(doc["_id"]),
                str(doc.get("type", "")),
                str(doc.get("name") or doc["_id"]),
                str(doc.get("scope") or ""),
                "" if limit is None else str(limit),
                when(doc.get("created")),
            )
        )
    return rows


@dataclass(frozen=True)
class UserRow:
    username: str
    role: str
    totp: bool
    failures: int  # failed sign-ins the throttle remembers, from every address
    locked_until: str  # the latest time some address must wait for, if still ahead
    must_reset: bool
    email: str


def users(db: Database[Any]) -> list[UserRow]:
    now = time.time()
    failures: dict[str, int] = {}
    until: dict[str, float] = {}
    for d in db[LOGIN_THROTTLE].find({}, {"failures": 1, "until": 1}):
        if not isinstance(d.get("_id"), dict):
            continue
        name = str(d["_id"].get("u"))
        failures[name] = failures.get(name, 0) + int(d.get("failures") or 0)
        if float(d.get("until") or 0) > now:
            until[name] = max(until.get(name, 0.0), float(d["until"]))
    return [
        UserRow(
            str(doc["_id"]),
            str(doc.get("role", "")),
            bool(doc.get("totp_secret")),
            failures.get(str(doc["_id"]), 0),
            when(until.get(str(doc["_id"]))),
            bool(doc.get("must_reset_password")),
            str(doc.get("email") or ""),
        )
        for doc in db[USERS]
        .find({}, {"role": 1, "totp_secret": 1, "must_reset_password": 1, "email": 1})
        .sort("_id", 1)
        .limit(LIST_LIMIT)
    ]


# ----------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class ExportRow:
    job_id: str
    kind: str
    status: str
    owner: str
    created: str
    done: int
    total: int
    written: int
    error: str


def _owner(job: dict[str, Any]) -> str:
    owner = job.get("owner") or {}
    parts = [f"{k}={v}" for k, v in owner.items() if v] if isinstance(owner, dict) else []
    return ", ".join(parts) or str(job.get("client_id") or "")


async def exports(db: AsyncDatabase[dict[str, Any]]) -> list[ExportRow]:
    rows = []
    cursor = db[bulk_jobs.JOBS].find().sort("created", -1).limit(LIST_LIMIT)
    async for job in cursor:
        written, done, total = await bulk_jobs.progress(db, job["_id"])
        rows.append(
            ExportRow(
                str(job["_id"]),
                str(job.get("kind", "resources")),
                str(job.get("status", "")),
                _owner(job),
                when(job.get("created")),
                done,
                total,
                written,
                str(job.get("error") or ""),
            )
        )
    return rows


@dataclass(frozen=True)
class SubscriptionRow:
    sub_id: str
    channel: str
    active: bool
    failures: int
    retry_at: str
    pending: int


async def subscriptions(db: AsyncDatabase[dict[str, Any]]) -> list[SubscriptionRow]:
    """Subscriptions whose deliveries failed (and wait to retry) or have a queue."""
    waiting: dict[str, int] = {}
    pipeline: list[dict[str, Any]] = [
        {"$group": {"_id": "$sub", "n": {"$sum": 1}}},
        {"$limit": LIST_LIMIT},
    ]
    async for group in await db[NOTIFICATIONS].aggregate(pipeline):
        waiting[str(group["_id"])] = int(group["n"])
    query = {"$or": [{"failures": {"$gt": 0}}, {"_id": {"$in": list(waiting)}}]}
    rows = []
    async for doc in db[SUBSCRIPTIONS].find(query).limit(LIST_LIMIT):
        channel = doc.get("channel") or {}
        rows.append(
            SubscriptionRow(
                str(doc["_id"]),
                " ".join(str(channel.get(k) or "") for k in ("type", "endpoint")).strip(),
                bool(doc.get("active")),
                int(doc.get("failures") or 0),
                when(doc.get("retry_at")) if doc.get("failures") else "",
                waiting.get(str(doc["_id"]), 0),
            )
        )
    return rows


@dataclass(frozen=True)
class ReminderRow:
    appointment: str
    state: str
    channel: str
    attempts: int
    due: str
    reason: str


async def reminders(db: AsyncDatabase[dict[str, Any]]) -> list[ReminderRow]:
    """Reminders not sent yet (claimed, sending) or given up (failed), newest due first."""
    query = {"state": {"$in": ["claimed", "sending", "failed"]}}
    rows = []
    async for doc in db[CLAIMS].find(query).sort("due", -1).limit(LIST_LIMIT):
        rows.append(
            ReminderRow(
                str(doc.get("appointment", "")),
                str(doc.get("state", "")),
                str(doc.get("channel") or ""),
                int(doc.get("attempts") or 0),
                when(doc.get("due")),
                str(doc.get("reason") or doc.get("last_error") or ""),
            )
        )
    return rows


# ----------------------------------------------------------------------------- audit

# The console's audit form field -> the AuditEvent search parameter it fills. These
# follow how fhir_server/audit records an event (who is in ``agent``: the user by
# ``altId``, the client by ``who.identifier``; the patient as ``entity``).
AUDIT_FIELDS: dict[str, str] = {
    "patient": "patient",
    "user": "altid",
    "client": "agent:identifier",
    "action": "action",
    "outcome": "outcome",
}
ACTIONS = ("C", "R", "U", "D", "E")
OUTCOMES = ("0", "4", "8", "12")


@dataclass(frozen=True)
class AuditQuery:
    patient: str = ""
    user: str = ""
    client: str = ""
    action: str = ""
    outcome: str = ""
    date_from: str = ""
    date_to: str = ""
    cursor: str = ""

    @classmethod
    def of(cls, query: dict[str, str]) -> AuditQuery:
        get = lambda k: query.get(k, "").strip()[:200]  # noqa: E731
        return cls(
            get("patient"),
            get("user"),
            get("client"),
            get("action") if get("action") in ACTIONS else "",
            get("outcome") if get("outcome") in OUTCOMES else "",
            get("from"),
            get("to"),
            get("cursor"),
        )

    def params(self) -> list[tuple[str, str]]:
        """The FHIR search: newest first, one page."""
        out: list[tuple[str, str]] = []
        for name, param in AUDIT_FIELDS.items():
            value: str = getattr(self, name)
            if value:
                if name == "patient" and "/" not in value:
                    value = f"Patient/{value}"
                out.append((param, value))
        if self.date_from:
            out.append(("date", f"ge{self.date_from}"))
        if self.date_to:
            out.append(("date", f"le{self.date_to}"))
        out += [("_sort", "-date"), ("_count", str(AUDIT_PAGE))]
        if self.cursor:
            out.append(("_cursor", self.cursor))
        return out

    def form(self) -> dict[str, str]:
        """The query string of this search (without the page)."""
        pairs = {
            "patient": self.patient,
            "user": self.user,
            "client": self.client,
            "action": self.action,
            "outcome": self.outcome,
            "from": self.date_from,
            "to": self.date_to,
        }
        return {k: v for k, v in pairs.items() if v}


@dataclass(frozen=True)
class AuditRow:
    event_id: str
    recorded: str
    event: str
    action: str
    outcome: str
    agents: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)


# The DICOM codes of the audit records (fhir_server/audit/events.py writes codes only).
_LABELS = {
    "110113": "Security Alert",
    "110114": "User Authenticated",
    "110122": "Login",
    "110123": "Logout",
    "110129": "Security Configuration",
    "110137": "User Security Attributes Changed",
    "rest": "RESTful operation",
}


def _coding_text(value: Any) -> str:
    if isinstance(value, dict):
        code = str(value.get("code") or "")
        return str(value.get("display") or _LABELS.get(code, code))
    return ""


def _agent_text(agent: dict[str, Any]) -> str:
    who = agent.get("who") or {}
    ident = who.get("identifier") or {}
    parts = [
        str(x)
        for x in (
            agent.get("name"),
            agent.get("altId"),
            who.get("reference"),
            who.get("display"),
            ident.get("value"),
        )
        if x
    ]
    return " / ".join(dict.fromkeys(parts))


def audit_row(resource: dict[str, Any]) -> AuditRow:
    subtypes = [_coding_text(s) for s in resource.get("subtype") or []]
    event = ", ".join(x for x in [_coding_text(resource.get("type")), *subtypes] if x)
    entities = []
    for entity in resource.get("entity") or []:
        what = entity.get("what") or {}
        text = what.get("reference") or what.get("display") or entity.get("name")
        if text:
            entities.append(str(text))
    return AuditRow(
        str(resource.get("id", "")),
        str(resource.get("recorded", "")),
        event,
        str(resource.get("action") or ""),
        str(resource.get("outcome") or ""),
        [t for t in (_agent_text(a) for a in resource.get("agent") or []) if t],
        entities,
    )


@dataclass(frozen=True)
class AuditPage:
    rows: list[AuditRow]
    next_cursor: str | None
    error: str | None = None


async def audit(services: Any, base_url: str, query: AuditQuery) -> AuditPage:
    """One page of AuditEvents, newest first, through the server's SearchService with no
    access policy (an admin sees every event). A bad value (a malformed date) is shown,
    not raised."""
    search = services.search
    try:
        plan = search.parser(base_url).parse(
            ["AuditEvent"], query.params(), default_count=AUDIT_PAGE, max_count=AUDIT_PAGE
        )
        result = await search.search(plan, None)
    except FhirError as exc:
        return AuditPage([], None, str(exc))
    rows = [audit_row(load_stored(v.raw)) for v in result.matches if v.raw is not None]
    return AuditPage(rows, result.next)
