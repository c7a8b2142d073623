"""HTTP routes of the admin console, mounted at ``/admin`` when authorization is on.

Every request passes ``_guard``: the authorization server's session cookie (the login
pages set it for ``/admin`` too) must name a user with the ``admin`` role and a TOTP
second factor, or the browser goes to ``/auth/login`` (not signed in) or gets a 403 page
saying why. Every POST must carry the session's CSRF token (smart_auth/session.py).
Changes go through ``actions`` only; reads through ``views``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fhir_server import __version__
from fhir_server.api.routes import base_url
from fhir_server.health import ready
from smart_auth.admin import actions, pages, views
from smart_auth.admin.i18n import TEXT
from smart_auth.audit import Recorder
from smart_auth.backend_client import ALGORITHMS
from smart_auth.clients import ClientError
from smart_auth.i18n import language
from smart_auth.pages import Page, with_query
from smart_auth.state import AuthState
from smart_auth.users import UserError, get_user

router = APIRouter(prefix="/admin")

MAX_FORM_BYTES = 64 * 1024
HEADERS = {
    "Content-Security-Policy": pages.CSP,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
CLIENT_KINDS = ("backend", "public", "confidential-symmetric")


@dataclass(frozen=True)
class Admin:
    """A request of a signed-in admin with TOTP, and what the console needs of it."""

    console: pages.Console
    db: Database[Any]
    form: dict[str, str]
    audit: Recorder

    @property
    def username(self) -> str:
        return self.console.user

    @property
    def actor(self) -> actions.Actor:
        return actions.Actor(self.username, self.audit)

    @property
    def t(self) -> dict[str, str]:
        return self.console.t

    def redirect(self, path: str, **params: str) -> Response:
        return _respond(RedirectResponse(self.console.url(path, **params), 303))


def _respond(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def _html(body: str, status: int = 200) -> Response:
    return _respond(HTMLResponse(body, status))


async def _read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (first value of each field); anything else is empty."""
    if request.method != "POST":
        return {}
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    return dict(reversed(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)))


def _guard(request: Request, form: dict[str, str]) -> Admin | Response:
    state: AuthState = request.app.state.auth
    session = state.sessions.load(request)
    asked = form.get("lang")
    lang = asked if asked in TEXT else language(request)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    page = Page(lang, path, state.sessions.csrf_token(session))
    user = get_user(state.db, session.username) if session.username else None
    if user is None:
        back = request.url.path if request.method == "GET" else "/admin"
        login = with_query("/auth/login", {"next": back, "lang": lang})
        return _respond(RedirectResponse(login, 303))
    console = pages.Console(page, user.username)
    t = console.t
    refused = None
    if user.role != "admin":
        refused = t["not_admin"].format(user=user.username, role=user.role)
    elif not user.has_totp:
        refused = t["needs_totp"].format(user=user.username)
    elif request.method == "POST" and not state.sessions.check_csrf(session, form.get("csrf")):
        refused = t["csrf"]
    if refused is not None:
        plain = pages.Console(page, user.username, nav=False)
        return _html(pages.refusal_page(plain, refused), 403)
    address = request.client.host if request.client else "unknown"
    audit = Recorder(getattr(request.app.state, "audit_sink", None), address, base_url(request))
    return Admin(console, state.db, form, audit)


async def _admin(request: Request) -> Admin | Response:
    form = await _read_form(request)
    return await run_in_threadpool(_guard, request, form)


async def _sync(request: Request, work: Callable[[Admin], Response]) -> Response:
    """Guard, then ``work`` (synchronous PyMongo) in a worker thread."""
    admin = await _admin(request)
    if isinstance(admin, Response):
        return admin
    return await run_in_threadpool(work, admin)


def _fhir_db(request: Request) -> AsyncDatabase[dict[str, Any]]:
    state: AuthState = request.app.state.auth
    database: AsyncDatabase[dict[str, Any]] = request.app.state.mongo.get_database(
        state.settings.database
    )
    return database


# ----------------------------------------------------------------------------- home


@router.get("")
async def home(request: Request) -> Response:
    admin = await _admin(request)
    return admin if isinstance(admin, Response) else admin.redirect("/admin/clients")


# ----------------------------------------------------------------------------- clients

_CLIENT_NOTICES = {"revoked": "client_revoked"}


def _clients_page(admin: Admin, notice: str = "", error: str = "", status: int = 200) -> Response:
    rows = views.clients(admin.db)
    return _html(pages.clients_page(admin.console, rows, notice, error), status)


@router.get("/clients")
async def clients(request: Request) -> Response:
    done = request.query_params.get("done", "")
    ident = request.query_params.get("id", "")

    def work(admin: Admin) -> Response:
        key = _CLIENT_NOTICES.get(done)
        return _clients_page(admin, admin.t[key].format(id=ident) if key else "")

    return await _sync(request, work)


@router.post("/clients")
async def create_client(request: Request) -> Response:
    def work(admin: Admin) -> Response:
        f = admin.form
        kind = f.get("type", "")
        if kind not in CLIENT_KINDS:
            return _clients_page(admin, error=f"type must be one of {', '.join(CLIENT_KINDS)}")
        alg = f.get("alg", "ES384")
        try:
            new = actions.register_client(
                admin.db,
                admin.actor,
                client_id=f.get("client_id", "").strip(),
                kind=kind,
                name=f.get("name", "").strip() or None,
                redirect_uris=[u.strip() for u in f.get("redirect_uris", "").split() if u],
                launch_url=f.get("launch_url", "").strip() or None,
                scope=f.get("scope", "").strip() or None,
                rate_limit=f.get("rate_limit", "").strip() or None,
                alg=alg if alg in ALGORITHMS else "ES384",
            )
        except actions.ActionError as exc:
            return _clients_page(admin, error=admin.t[str(exc)], status=409)
        except ClientError as exc:
            return _clients_page(admin, error=str(exc), status=400)
        return _html(pages.client_created_page(admin.console, new))

    return await _sync(request, work)


@router.post("/clients/revoke")
async def revoke_client(request: Request) -> Response:
    def work(admin: Admin) -> Response:
        client_id = admin.form.get("client_id", "")
        try:
            actions.revoke_client(admin.db, admin.actor, client_id)
        except actions.ActionError as exc:
            return _clients_page(admin, error=admin.t[str(exc)], status=404)
        return admin.redirect("/admin/clients", done="revoked", id=client_id)

    return await _sync(request, work)


# ----------------------------------------------------------------------------- users

_USER_NOTICES = {"unlocked": "user_unlocked"}


def _users_page(admin: Admin, notice: str = "", error: str = "", status: int = 200) -> Response:
    return _html(pages.users_page(admin.console, views.users(admin.db), notice, error), status)


@router.get("/users")
async def users(request: Request) -> Response:
    done = request.query_params.get("done", "")
    ident = request.query_params.get("id", "")

    def work(admin: Admin) -> Response:
        key = _USER_NOTICES.get(done)
        return _users_page(admin, admin.t[key].format(id=ident) if key else "")

    return await _sync(request, work)


@router.post("/users")
async def create_user(request: Request) -> Response:
    def work(admin: Admin) -> Response:
        f = admin.form
        try:
            created = actions.add_user(
                admin.db,
                admin.actor,
                username=f.get("username", "").strip(),
                password=f.get("password", ""),
                role=f.get("role", ""),
                fhir_user=f.get("fhir_user", "").strip() or None,
                totp=bool(f.get("totp")),
                must_reset=bool(f.get("must_reset")),
                email=f.get("email", "").strip() or None,
            )
        except UserError as exc:
            return _users_page(admin, error=str(exc), status=400)
        return _html(pages.user_created_page(admin.console, created))

    return await _sync(request, work)


@router.post("/users/reset")
async def reset_user(request: Request) -> Response:
    def work(admin: Admin) -> Response:
        username = admin.form.get("username", "")
        try:
            temporary = actions.reset_password(admin.db, admin.actor, username)
        except actions.ActionError as exc:
            return _users_page(admin, error=admin.t[str(exc)], status=404)
        return _html(pages.reset_done_page(admin.console, username, temporary))

    return await _sync(request, work)


@router.post("/users/unlock")
async def unlock_user(request: Request) -> Response:
    def work(admin: Admin) -> Response:
        username = admin.form.get("username", "")
        try:
            actions.unlock_user(admin.db, admin.actor, username)
        except actions.ActionError as exc:
            return _users_page(admin, error=admin.t[str(exc)], status=404)
        return admin.redirect("/admin/users", done="unlocked", id=username)

    return await _sync(request, work)


# ----------------------------------------------------------------------------- jobs, audit, health


@router.get("/jobs")
async def jobs(request: Request) -> Response:
    admin = await _admin(request)
    if isinstance(admin, Response):
        return admin
    db = _fhir_db(request)
    exports = await views.exports(db)
    subscriptions = await views.subscriptions(db)
    reminders = await views.reminders(db)
    return _html(pages.jobs_page(admin.console, exports, subscriptions, reminders))


@router.get("/audit")
async def audit(request: Request) -> Response:
    admin = await _admin(request)
    if isinstance(admin, Response):
        return admin
    query = views.AuditQuery.of(dict(request.query_params))
    result = await views.audit(request.app.state.services, base_url(request), query)
    return _html(pages.audit_page(admin.console, query, result))


@router.get("/health")
async def health(request: Request) -> Response:
    admin = await _admin(request)
    if isinstance(admin, Response):
        return admin
    answer = await ready(request)  # exactly what /health/ready reports
    report = json.loads(bytes(answer.body))
    return _html(pages.health_page(admin.console, answer.status_code, report, __version__))
