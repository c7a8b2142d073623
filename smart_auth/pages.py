"""Server-rendered HTML of the authorization server: login, patient picker, consent,
EHR launch and error pages. Plain forms that work without JavaScript; every input has a
label, errors are tied to their field with ``aria-describedby``, and the element ids
are the ones the browser tests select (docs/smart.md)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode

from smart_auth.i18n import TEXT, describe_scope

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;
line-height:1.5;color:#1b1b1b}
label{display:block;margin-top:1rem;font-weight:600}
input[type=text],input[type=password],input[type=search],select{width:100%;padding:.5rem;
font-size:1rem;box-sizing:border-box}
button{margin-top:1rem;padding:.5rem 1.2rem;font-size:1rem;cursor:pointer}
.error{color:#b00020;font-weight:600}
ul.scopes{list-style:none;padding:0}
ul.scopes label{font-weight:400;display:inline;margin:0}
.patients button{display:block;width:100%;text-align:left;margin:.3rem 0}
nav{text-align:right}
:focus{outline:3px solid #1a73e8;outline-offset:2px}
"""


@dataclass(frozen=True)
class Page:
    lang: str
    path: str  # path and query of this page, for the language switch
    csrf: str

    @property
    def t(self) -> dict[str, str]:
        return TEXT[self.lang]

    def switch_link(self) -> str:
        other = "es" if self.lang == "en" else "en"
        base, _, query = self.path.partition("?")
        pairs = [p for p in query.split("&") if p and not p.startswith("lang=")]
        pairs.append(f"lang={other}")
        href = base + "?" + "&".join(pairs)
        return (
            f'<nav><a id="lang-switch" href="{escape(href)}" hreflang="{other}" '
            f'lang="{other}">{escape(self.t["switch"])}</a></nav>'
        )

    def hidden(self) -> str:
        return (
            f'<input type="hidden" name="csrf" value="{escape(self.csrf)}">'
            f'<input type="hidden" name="lang" value="{self.lang}">'
        )

    def document(self, title: str, body: str) -> str:
        return (
            f'<!DOCTYPE html><html lang="{self.lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"{self.switch_link()}<main><h1>{escape(title)}</h1>{body}</main></body></html>"
        )


def login_page(
    page: Page,
    action: str,
    *,
    username: str = "",
    error: str | None = None,
    show_totp: bool = False,
    show_new_password: bool = False,
) -> str:
    t = page.t
    err_id = "login-error"
    described = f' aria-describedby="{err_id}" aria-invalid="true"' if error else ""
    error_html = (
        f'<p id="{err_id}" class="error" role="alert">{escape(t["err_" + error])}</p>'
        if error
        else ""
    )
    totp = (
        f'<label for="totp">{escape(t["totp"])}</label>'
        f'<input type="text" id="totp" name="totp" inputmode="numeric" '
        f'autocomplete="one-time-code"{described if error and "totp" in error else ""}>'
        if show_totp
        else ""
    )
    new_password = (
        f'<label for="new_password">{escape(t["new_password"])}</label>'
        '<input type="password" id="new_password" name="new_password" '
        'autocomplete="new-password" minlength="8">'
        if show_new_password
        else ""
    )
    body = (
        f'{error_html}<form method="post" action="{escape(action)}">{page.hidden()}'
        f'<label for="username">{escape(t["username"])}</label>'
        f'<input type="text" id="username" name="username" value="{escape(username)}" '
        f'autocomplete="username" required autofocus{described}>'
        f'<label for="password">{escape(t["password"])}</label>'
        f'<input type="password" id="password" name="password" '
        f'autocomplete="current-password" required{described}>'
        f'{totp}{new_password}<button type="submit" id="login">{escape(t["sign_in"])}</button>'
        "</form>"
    )
    return page.document(t["login_title"], body)


@dataclass(frozen=True)
class PatientChoice:
    id: str
    name: str
    birth_date: str


def picker_page(page: Page, action: str, query: str, patients: list[PatientChoice]) -> str:
    t = page.t
    search = (
        f'<form method="get" action="{escape(action)}" role="search">'
        f'<input type="hidden" name="lang" value="{page.lang}">'
        f'<label for="patient-search">{escape(t["search"])}</label>'
        f'<input type="search" id="patient-search" name="q" value="{escape(query)}">'
        f'<button type="submit" id="search">{escape(t["search_button"])}</button></form>'
    )
    if patients:
        buttons = "".join(
            f'<button type="submit" name="patient" value="{escape(p.id)}">'
            f"{escape(p.name or p.id)}"
            + (f" — {escape(t['born'])} {escape(p.birth_date)}" if p.birth_date else "")
            + "</button>"
            for p in patients
        )
    else:
        buttons = f"<p>{escape(t['no_patients'])}</p>"
    choose = (
        f'<form method="post" action="{escape(action)}/patient" class="patients">'
        f"{page.hidden()}{buttons}</form>"
    )
    return page.document(t["picker_title"], search + choose)


def consent_page(
    page: Page, action: str, app_name: str, scopes: list[str], patient: str | None
) -> str:
    t = page.t
    items = "".join(
        f'<li><input type="checkbox" id="scope-{i}" name="scope" value="{escape(s)}" checked> '
        f'<label for="scope-{i}">{escape(describe_scope(s, page.lang))}</label> '
        f"<code>{escape(s)}</code></li>"
        for i, s in enumerate(scopes)
    )
    context = (
        f"<p>{escape(t['patient_context'])}: <strong>{escape(patient)}</strong></p>"
        if patient
        else ""
    )
    body = (
        f"<p>{escape(t['consent_intro'].format(app=app_name))}</p>{context}"
        f'<form method="post" action="{escape(action)}">{page.hidden()}'
        f"<fieldset><legend>{escape(t['consent_title'])}</legend>"
        f'<ul class="scopes">{items}</ul></fieldset>'
        '<button type="submit" name="decision" value="allow" id="allow">'
        f"{escape(t['allow'])}</button> "
        '<button type="submit" name="decision" value="deny" id="deny">'
        f"{escape(t['deny'])}</button>"
        "</form>"
    )
    return page.document(t["consent_title"], body)


def ehr_launch_page(
    page: Page,
    action: str,
    user: str,
    clients: list[tuple[str, str]],
    error: str | None = None,
    patient: str = "",
    encounter: str = "",
) -> str:
    t = page.t
    if not clients:
        return page.document(t["launch_title"], f"<p>{escape(t['no_apps'])}</p>")
    options = "".join(
        f'<option value="{escape(cid)}">{escape(name)}</option>' for cid, name in clients
    )
    error_html = (
        f'<p id="launch-error" class="error" role="alert">{escape(t[error])}</p>' if error else ""
    )
    body = (
        f"<p>{escape(t['signed_in_as'].format(user=user))}</p>{error_html}"
        f'<form method="post" action="{escape(action)}">{page.hidden()}'
        f'<label for="client">{escape(t["app"])}</label>'
        f'<select id="client" name="client_id">{options}</select>'
        f'<label for="launch-patient">{escape(t["launch_patient"])}</label>'
        f'<input type="text" id="launch-patient" name="patient" value="{escape(patient)}" required'
        + (' aria-describedby="launch-error"' if error else "")
        + ">"
        f'<label for="launch-encounter">{escape(t["launch_encounter"])}</label>'
        f'<input type="text" id="launch-encounter" name="encounter" value="{escape(encounter)}">'
        f'<button type="submit" id="launch">{escape(t["launch"])}</button></form>'
    )
    return page.document(t["launch_title"], body)


def error_page(page: Page, message: str) -> str:
    body = f'<p class="error" role="alert" id="error">{escape(message)}</p>'
    return page.document(page.t["error_title"], body)


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` appended to its query."""
    return url + ("&" if "?" in url else "?") + urlencode(params)
