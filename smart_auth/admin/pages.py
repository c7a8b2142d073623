"""The admin console's HTML: the login pages' look (their style sheet, their language
switch), plain forms that work without JavaScript, every value escaped. The one inline
style is allowed by its hash in the Content-Security-Policy (``CSP``), nothing else is."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode

from smart_auth.admin.actions import NewClient
from smart_auth.admin.i18n import TEXT
from smart_auth.admin.views import (
    ACTIONS,
    OUTCOMES,
    AuditPage,
    AuditQuery,
    ClientRow,
    ExportRow,
    ReminderRow,
    SubscriptionRow,
    UserRow,
)
from smart_auth.pages import _STYLE as LOGIN_STYLE
from smart_auth.pages import Page
from smart_auth.users import ROLES

STYLE = (
    LOGIN_STYLE
    + """body{max-width:72rem}
header{display:flex;flex-wrap:wrap;gap:1rem;align-items:center;border-bottom:1px solid #ccc}
header nav{text-align:left}header nav a{margin-right:1rem}
header form button{margin:0}
table{border-collapse:collapse;width:100%;margin:1rem 0}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}
td form{display:inline}td form button{margin:0;padding:.2rem .6rem;font-size:.9rem}
textarea{width:100%;font-family:monospace;box-sizing:border-box}
.notice{background:#e8f5e9;padding:.5rem 1rem}
fieldset{margin-top:1.5rem}
input[type=date],input[type=email],input[type=url]{width:100%;padding:.5rem;box-sizing:border-box}
.check label{display:inline;font-weight:400}
"""
)
_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECTIONS = ("clients", "users", "jobs", "audit", "health")


class Raw(str):
    """HTML already escaped (a cell that holds markup)."""


def _cell(value: str | int | bool | Raw) -> str:
    return value if isinstance(value, Raw) else escape(str(value))


@dataclass(frozen=True)
class Console:
    """One rendered page's frame: who is signed in, in which language."""

    page: Page
    user: str
    nav: bool = True  # the section links (not on a refusal)

    @property
    def lang(self) -> str:
        return self.page.lang

    @property
    def t(self) -> dict[str, str]:
        return TEXT[self.page.lang]

    def url(self, path: str, **params: str) -> str:
        return f"{path}?{urlencode({**params, 'lang': self.lang})}"

    def yes_no(self, value: bool) -> str:
        return self.t["yes" if value else "no"]

    def post_form(self, action: str, inner: str, attrs: str = "") -> str:
        return (
            f'<form method="post" action="{escape(self.url(action))}"{attrs}>'
            f"{self.page.hidden()}{inner}</form>"
        )

    def header(self) -> str:
        links = (
            ""
            if not self.nav
            else "".join(
                f'<a id="nav-{s}" href="{escape(self.url("/admin/" + s))}">'
                f"{escape(self.t['nav_' + s])}</a>"
                for s in SECTIONS
            )
        )
        logout = (
            f'<form method="post" action="/auth/logout">{self.page.hidden()}'
            f'<button type="submit" id="sign-out">{escape(self.t["sign_out"])}</button></form>'
        )
        who = escape(self.t["signed_in_as"].format(user=self.user))
        return f'<header><nav aria-label="{escape(self.t["console"])}">{links}</nav>' + (
            f"<span>{who}</span>{logout}</header>" if self.user else "</header>"
        )

    def document(self, title: str, body: str, notice: str = "") -> str:
        notice_html = (
            f'<p class="notice" role="status" id="notice">{escape(notice)}</p>' if notice else ""
        )
        full = f"{self.t['console']}: {title}"
        return (
            f'<!DOCTYPE html><html lang="{self.lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(full)}</title><style>{STYLE}</style></head><body>"
            f"{self.page.switch_link()}{self.header()}<main><h1>{escape(title)}</h1>"
            f"{notice_html}{body}</main></body></html>"
        )

    def table(
        self,
        table_id: str,
        headers: Sequence[str],
        rows: Iterable[Sequence[str | int | bool | Raw]],
    ) -> str:
        body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
        if not body:
            return f'<p id="{table_id}-empty">{escape(self.t["none"])}</p>'
        head = "".join(f'<th scope="col">{escape(self.t[h])}</th>' for h in headers)
        return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _text(c: Console, name: str, label: str, *, kind: str = "text", extra: str = "") -> str:
    return (
        f'<label for="{name}">{escape(c.t[label])}</label>'
        f'<input type="{kind}" id="{name}" name="{name}"{extra}>'
    )


def _select(c: Console, name: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{escape(v)}">{escape(text)}</option>' for v, text in options)
    return (
        f'<label for="{name}">{escape(c.t[label])}</label>'
        f'<select id="{name}" name="{name}">{opts}</select>'
    )


def _checkbox(c: Console, name: str, label: str) -> str:
    return (
        f'<p class="check"><input type="checkbox" id="{name}" name="{name}" value="1"> '
        f'<label for="{name}">{escape(c.t[label])}</label></p>'
    )


# ----------------------------------------------------------------------------- clients


def clients_page(c: Console, rows: list[ClientRow], notice: str = "", error: str = "") -> str:
    def revoke(row: ClientRow) -> Raw:
        inner = (
            f'<input type="hidden" name="client_id" value="{escape(row.client_id)}">'
            f'<button type="submit" class="revoke">{escape(c.t["revoke"])}</button>'
        )
        return Raw(c.post_form("/admin/clients/revoke", inner))

    table = c.table(
        "clients",
        [
            "client_id",
            "client_type",
            "client_name",
            "client_scopes",
            "rate_limit",
            "created",
            "revoke",
        ],
        [[r.client_id, r.type, r.name, r.scope, r.rate_limit, r.created, revoke(r)] for r in rows],
    )
    types = [
        ("backend", c.t["type_backend"]),
        ("public", c.t["type_public"]),
        ("confidential-symmetric", c.t["type_symmetric"]),
    ]
    error_html = f'<p class="error" role="alert" id="error">{escape(error)}</p>' if error else ""
    form = c.post_form(
        "/admin/clients",
        f"<fieldset><legend>{escape(c.t['new_client'])}</legend>{error_html}"
        + _select(c, "type", "client_type", types)
        + _text(c, "client_id", "client_id_hint", extra=' maxlength="200"')
        + _text(c, "name", "client_name")
        + f'<label for="redirect_uris">{escape(c.t["redirect_uris"])}</label>'
        '<textarea id="redirect_uris" name="redirect_uris" rows="2"></textarea>'
        + _text(c, "launch_url", "launch_url", kind="url")
        + _text(c, "scope", "scope_hint")
        + _text(c, "rate_limit", "rate_limit_hint")
        + _select(c, "alg", "alg", [("ES384", "ES384 (EC P-384)"), ("RS384", "RS384 (RSA 3072)")])
        + f'<button type="submit" id="register">{escape(c.t["register"])}</button></fieldset>',
    )
    return c.document(c.t["clients_title"], table + form, notice)


def client_created_page(c: Console, new: NewClient) -> str:
    t = c.t
    body = (
        f'<p>{escape(t["client_id"])}: <code id="new-client-id">{escape(new.client_id)}</code></p>'
    )
    if new.secret:
        body += (
            f'<label for="client-secret">{escape(t["client_secret"])}</label>'
            f'<input type="text" id="client-secret" readonly value="{escape(new.secret)}">'
        )
    if new.private_key_pem:
        data = base64.b64encode(new.private_key_pem.encode()).decode()
        filename = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in new.client_id)
        body += (
            f'<p>{escape(t["kid"])}: <code id="new-kid">{escape(new.kid or "")}</code></p>'
            f'<label for="private-key">{escape(t["private_key"])}</label>'
            f'<textarea id="private-key" readonly rows="8">{escape(new.private_key_pem)}</textarea>'
            f'<p><a id="download-key" download="{escape(filename)}.key.pem" '
            f'href="data:application/x-pem-file;base64,{data}">{escape(t["download_key"])}</a></p>'
        )
    body += f'<p><a id="back" href="{escape(c.url("/admin/clients"))}">{escape(t["back"])}</a></p>'
    return c.document(t["clients_title"], body, t["client_created"].format(id=new.client_id))


# ----------------------------------------------------------------------------- users


def users_page(c: Console, rows: list[UserRow], notice: str = "", error: str = "") -> str:
    def buttons(row: UserRow) -> Raw:
        hidden = f'<input type="hidden" name="username" value="{escape(row.username)}">'
        reset = c.post_form(
            "/admin/users/reset",
            hidden + f'<button type="submit" class="reset">{escape(c.t["reset"])}</button>',
        )
        unlock = c.post_form(
            "/admin/users/unlock",
            hidden + f'<button type="submit" class="unlock">{escape(c.t["unlock"])}</button>',
        )
        return Raw(reset + " " + unlock)

    table = c.table(
        "users",
        ["username", "role", "totp", "failures_login", "locked", "must_reset", "email", "reset"],
        [
            [
                r.username,
                r.role,
                c.yes_no(r.totp),
                r.failures,
                r.locked_until or c.t["no"],
                c.yes_no(r.must_reset),
                r.email,
                buttons(r),
            ]
            for r in rows
        ],
    )
    error_html = f'<p class="error" role="alert" id="error">{escape(error)}</p>' if error else ""
    form = c.post_form(
        "/admin/users",
        f"<fieldset><legend>{escape(c.t['new_user'])}</legend>{error_html}"
        + _text(c, "username", "username", extra=' required maxlength="200" autocomplete="off"')
        + _text(
            c,
            "password",
            "password",
            kind="password",
            extra=' required minlength="8" autocomplete="new-password"',
        )
        + _select(c, "role", "role", [(r, r) for r in ROLES])
        + _text(c, "fhir_user", "fhir_user")
        + _text(c, "email", "email_optional", kind="email")
        + _checkbox(c, "totp", "with_totp")
        + _checkbox(c, "must_reset", "with_reset")
        + f'<button type="submit" id="create-user">{escape(c.t["create"])}</button></fieldset>',
    )
    return c.document(c.t["users_title"], table + form, notice)


def user_created_page(c: Console, created: dict[str, str]) -> str:
    t = c.t
    body = ""
    if created.get("totp_secret"):
        body += (
            f'<label for="totp-secret">{escape(t["totp_secret"])}</label>'
            '<input type="text" id="totp-secret" readonly '
            f'value="{escape(created["totp_secret"])}">'
            f'<label for="totp-uri">{escape(t["totp_uri"])}</label>'
            f'<input type="text" id="totp-uri" readonly value="{escape(created["totp_uri"])}">'
        )
    body += f'<p><a id="back" href="{escape(c.url("/admin/users"))}">{escape(t["back"])}</a></p>'
    return c.document(t["users_title"], body, t["user_created"].format(id=created["username"]))


def reset_done_page(c: Console, username: str, temporary: str) -> str:
    t = c.t
    body = (
        f"<p>{escape(t['user_reset'].format(id=username))}</p>"
        f'<p><code id="temporary-password">{escape(temporary)}</code></p>'
        f'<p><a id="back" href="{escape(c.url("/admin/users"))}">{escape(t["back"])}</a></p>'
    )
    return c.document(t["users_title"], body)


# ----------------------------------------------------------------------------- jobs


def jobs_page(
    c: Console,
    exports: list[ExportRow],
    subscriptions: list[SubscriptionRow],
    reminders: list[ReminderRow],
) -> str:
    t = c.t
    body = f"<h2>{escape(t['exports'])}</h2>" + c.table(
        "exports",
        ["job", "kind", "status", "owner", "created", "progress"],
        [
            [
                e.job_id,
                e.kind,
                e.status + (f": {e.error}" if e.error else ""),
                e.owner,
                e.created,
                t["progress_value"].format(done=e.done, total=e.total, written=e.written),
            ]
            for e in exports
        ],
    )
    body += f'<h2>{escape(t["imports"])}</h2><p id="imports">{escape(t["imports_note"])}</p>'
    body += f"<h2>{escape(t['subscriptions'])}</h2>" + c.table(
        "subscriptions",
        ["subscription", "channel", "status", "failures", "retry_at", "pending"],
        [
            [
                s.sub_id,
                s.channel,
                "active" if s.active else "off",
                s.failures,
                s.retry_at,
                s.pending,
            ]
            for s in subscriptions
        ],
    )
    body += f"<h2>{escape(t['reminders'])}</h2>" + c.table(
        "reminders",
        ["appointment", "status", "channel", "attempts", "due", "reason"],
        [[r.appointment, r.state, r.channel, r.attempts, r.due, r.reason] for r in reminders],
    )
    return c.document(t["jobs_title"], body)


# ----------------------------------------------------------------------------- audit


def audit_page(c: Console, query: AuditQuery, result: AuditPage | None) -> str:
    t = c.t

    def value(name: str, current: str, label: str, kind: str = "text") -> str:
        return _text(c, name, label, kind=kind, extra=f' value="{escape(current)}"')

    def choice(name: str, label: str, current: str, options: Sequence[str], prefix: str) -> str:
        opts = f'<option value="">{escape(t["any"])}</option>' + "".join(
            f'<option value="{o}"{" selected" if o == current else ""}>'
            f"{escape(t[prefix + o])}</option>"
            for o in options
        )
        return (
            f'<label for="{name}">{escape(t[label])}</label>'
            f'<select id="{name}" name="{name}">{opts}</select>'
        )

    form = (
        f'<form method="get" action="/admin/audit" role="search">'
        f'<input type="hidden" name="lang" value="{c.lang}">'
        + value("patient", query.patient, "patient")
        + value("user", query.user, "agent")
        + value("client", query.client, "client")
        + choice("action", "action", query.action, ACTIONS, "a_")
        + choice("outcome", "outcome", query.outcome, OUTCOMES, "o_")
        + value("from", query.date_from, "date_from", "date")
        + value("to", query.date_to, "date_to", "date")
        + f'<button type="submit" id="search">{escape(t["search"])}</button></form>'
    )
    body = form
    if result is not None:
        if result.error:
            body += (
                f'<p class="error" role="alert" id="error">'
                f"{escape(t['search_error'].format(error=result.error))}</p>"
            )
        elif not result.rows:
            body += f'<p id="no-events">{escape(t["no_events"])}</p>'
        else:
            body += c.table(
                "events",
                ["recorded", "event", "action", "outcome", "agents", "entities"],
                [
                    [
                        r.recorded,
                        r.event,
                        t.get("a_" + r.action, r.action),
                        t.get("o_" + r.outcome, r.outcome),
                        Raw("<br>".join(escape(a) for a in r.agents)),
                        Raw("<br>".join(escape(e) for e in r.entities)),
                    ]
                    for r in result.rows
                ],
            )
            if result.next_cursor:
                href = c.url("/admin/audit", **query.form(), cursor=result.next_cursor)
                body += (
                    f'<p><a id="next-page" href="{escape(href)}">{escape(t["next_page"])}</a></p>'
                )
    return c.document(t["audit_title"], body)


# ----------------------------------------------------------------------------- health


def health_page(c: Console, status: int, report: dict[str, object], version: str) -> str:
    t = c.t
    rows: list[list[str | Raw]] = [[t["version"], version]]
    if status == 200 or "mongo" in report:
        mongo = report.get("mongo") or {}
        schema = report.get("schema") or {}
        assert isinstance(mongo, dict) and isinstance(schema, dict)
        primary = t["primary"] if mongo.get("primary") else t["not_primary"]
        rows.append([t["ready"], c.yes_no(report.get("status") == "ready")])
        rows.append([t["mongo"], f"{primary}, {t['replica_set']} {mongo.get('set') or '-'}"])
        missing = schema.get("missing_indexes") or []
        assert isinstance(missing, list)
        rows.append(
            [
                t["schema"],
                t["applied"]
                if schema.get("applied")
                else t["missing"].format(names=", ".join(str(m) for m in missing)),
            ]
        )
        worker = report.get("worker")
        rows.append([t["worker"], _plain(worker)])
    else:
        issues = report.get("issue") or []
        text = (
            "; ".join(str(i.get("diagnostics", "")) for i in issues if isinstance(i, dict))
            if isinstance(issues, list)
            else ""
        )
        rows.append([t["ready"], c.yes_no(False)])
        rows.append([t["mongo"], text or t["unavailable"]])
    body = (
        '<table id="health"><tbody>'
        + "".join(f'<tr><th scope="row">{escape(k)}</th><td>{_cell(v)}</td></tr>' for k, v in rows)
        + "</tbody></table>"
    )
    return c.document(t["health_title"], body)


def _plain(value: object) -> str:
    """A heartbeat report as ``key: value`` pairs."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    return "-" if value is None else str(value)


# ----------------------------------------------------------------------------- refusals


def refusal_page(c: Console, message: str) -> str:
    body = f'<p class="error" role="alert" id="error">{escape(message)}</p>'
    return c.document(c.t["forbidden_title"], body)
