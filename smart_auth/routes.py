"""HTTP routes of the authorization server, mounted at ``/auth`` (and the SMART
configuration at ``/fhir/.well-known/smart-configuration``).

Handlers are ``async`` only to read the form body (no multipart dependency); the work
is synchronous (authlib, PyMongo) and runs in a worker thread."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InsecureTransportError
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from smart_auth import discovery
from smart_auth.audit import Recorder
from smart_auth.clients import Client, get_client, launchable_clients
from smart_auth.i18n import TEXT, language
from smart_auth.launch import consume_launch, create_launch, find_patients, resource_exists
from smart_auth.pages import (
    Page,
    consent_page,
    ehr_launch_page,
    error_page,
    login_page,
    picker_page,
    with_query,
)
from smart_auth.roles import grantable
from smart_auth.server import Grantor, SmartRequest
from smart_auth.session import Session
from smart_auth.state import AuthState
from smart_auth.store import PENDING
from smart_auth.urls import Urls
from smart_auth.users import LoginFailed, User, authenticate, get_user

router = APIRouter(prefix="/auth")
smart_configuration_router = APIRouter()

MAX_FORM_BYTES = 64 * 1024
PENDING_SECONDS = 900
LAUNCHER_ROLES = ("practitioner", "admin")
_HTML_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


class _Ctx:
    """One request's view of the server: state, URLs, session and page language."""

    def __init__(self, request: Request, form: list[tuple[str, str]]) -> None:
        self.state: AuthState = request.app.state.auth
        self.urls = Urls.of(request, self.state.settings)
        self.session: Session = self.state.sessions.load(request)
        self.form = form
        self.form_data = dict(reversed(form))
        lang = self.form_data.get("lang")
        self.lang = lang if lang in TEXT else language(request)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        self.page = Page(self.lang, path, self.state.sessions.csrf_token(self.session))
        self.secure = request.url.scheme == "https"
        # uvicorn (proxy_headers) puts a trusted proxy's X-Forwarded-For here.
        self.client_ip = request.client.host if request.client else "unknown"
        # audit records of this request's auth events (smart_auth/audit.py)
        self.audit = Recorder(
            getattr(request.app.state, "audit_sink", None), self.client_ip, self.urls.fhir
        )
        self.query = request.query_params

    @property
    def db(self) -> Any:
        return self.state.db

    def html(self, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status, _HTML_HEADERS)

    def error(self, message: str, status: int = 400) -> HTMLResponse:
        return self.html(error_page(self.page, message), status)

    def csrf_ok(self) -> bool:
        return self.state.sessions.check_csrf(self.session, self.form_data.get("csrf"))

    def local(self, path: str) -> str:
        return with_query(path, {"lang": self.lang})


async def _form(request: Request) -> list[tuple[str, str]]:
    if request.method != "POST":
        return []
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return []
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return []
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


async def _run(
    request: Request, work: Callable[[_Ctx], Response], *, form: bool = True
) -> Response:
    ctx = _Ctx(request, await _form(request) if form else [])
    response = await run_in_threadpool(work, ctx)
    ctx.state.sessions.save(ctx.session, response, ctx.secure)
    return response


def _insecure() -> JSONResponse:
    return JSONResponse(
        {"error": "invalid_request", "error_description": "OAuth 2.0 requires https"},
        400,
        {"Cache-Control": "no-store"},
    )


# ----------------------------------------------------------------------------- discovery


@smart_configuration_router.get("/fhir/.well-known/smart-configuration")
async def smart_configuration(request: Request) -> JSONResponse:
    urls = Urls.of(request, request.app.state.auth.settings)
    return JSONResponse(discovery.smart_configuration(urls))


@router.get("/.well-known/openid-configuration")
async def openid_configuration(request: Request) -> JSONResponse:
    urls = Urls.of(request, request.app.state.auth.settings)
    return JSONResponse(discovery.openid_configuration(urls))


@router.get("/jwks")
async def jwks(request: Request) -> JSONResponse:
    state: AuthState = request.app.state.auth
    return JSONResponse(await run_in_threadpool(state.server.keyring.jwks))


# ----------------------------------------------------------------------------- token endpoints


def _endpoint(request: Request, name: str) -> Callable[[_Ctx], Response]:
    url, headers = str(request.url), request.headers

    def work(ctx: _Ctx) -> Response:
        try:
            oauth = SmartRequest("POST", url, headers, [], ctx.form, ctx.urls)
        except InsecureTransportError:
            return _insecure()
        server = ctx.state.server
        if name == "token":
            response: Response = server.create_token_response(oauth)
            ctx.audit.token_response(ctx.form_data, response)
        else:
            response = server.create_endpoint_response(name, oauth)
            if name == "revocation":
                ok = response.status_code == 200
                ctx.audit.record("revoke", ok, client_id=ctx.form_data.get("client_id"))
        return response

    return work


@router.post("/token")
async def token(request: Request) -> Response:
    return await _run(request, _endpoint(request, "token"))


@router.post("/introspect")
async def introspect(request: Request) -> Response:
    return await _run(request, _endpoint(request, "introspection"))


@router.post("/revoke")
async def revoke(request: Request) -> Response:
    return await _run(request, _endpoint(request, "revocation"))


@router.get("/userinfo")
async def userinfo(request: Request) -> Response:
    authorization = request.headers.get("authorization", "")

    def work(ctx: _Ctx) -> Response:
        scheme, _, value = authorization.partition(" ")
        record = ctx.state.server.verify_access_token(value.strip())
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if scheme.lower() != "bearer" or record is None or record.is_expired() or record.revoked:
            return JSONResponse({"error": "invalid_token"}, 401, challenge)
        if "openid" not in record.get_scope().split():
            return JSONResponse({"error": "insufficient_scope"}, 403)
        claims = record.claims
        out = {"sub": claims.get("sub")}
        if claims.get("fhirUser"):
            out["fhirUser"] = f"{ctx.urls.fhir}/{claims['fhirUser']}"
        return JSONResponse(out)

    return await _run(request, work, form=False)


# ----------------------------------------------------------------------------- authorize


def _authorization_request(ctx: _Ctx, params: list[tuple[str, str]]) -> SmartRequest:
    url = ctx.urls.auth("authorize") + "?" + urlencode(params)
    return SmartRequest("GET", url, {}, params, [], ctx.urls)


def _validated(ctx: _Ctx, params: list[tuple[str, str]]) -> tuple[Any, SmartRequest] | Response:
    """authlib's validation of an authorization request: the grant, or the response to
    send. Errors go back to the client only once its redirect_uri is known to be
    registered; otherwise an error page (never an open redirect)."""
    try:
        oauth = _authorization_request(ctx, params)
    except InsecureTransportError:
        return _insecure()
    try:
        grant = ctx.state.server.get_consent_grant(oauth)
    except OAuth2Error as error:
        if error.redirect_uri:
            response: Response = ctx.state.server.handle_error_response(oauth, error)
            return response
        return ctx.error(f"{error.error}: {error.get_error_description()}")
    return grant, oauth


def _redirect_error(grant: Any, oauth: SmartRequest, error: str, description: str) -> Response:
    params = {"error": error, "error_description": description}
    if oauth.payload.state:
        params["state"] = oauth.payload.state
    return RedirectResponse(with_query(grant.redirect_uri, params), 302)


def _start(ctx: _Ctx, params: list[tuple[str, str]]) -> Response:
    checked = _validated(ctx, params)
    if isinstance(checked, Response):
        return checked
    grant, oauth = checked
    data = oauth.payload.data
    client: Client = oauth.client
    if (data.get("aud") or "").rstrip("/") != ctx.urls.fhir:
        return _redirect_error(grant, oauth, "invalid_request", f"aud must be {ctx.urls.fhir}")
    if client.is_public and not data.get("code_challenge"):
        return _redirect_error(grant, oauth, "invalid_request", "PKCE code_challenge required")
    if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
        return _redirect_error(
            grant, oauth, "invalid_request", "code_challenge_method must be S256"
        )
    launch = None
    if data.get("launch"):
        launch = consume_launch(ctx.db, data["launch"], client.client_id)
        if launch is None:
            return _redirect_error(grant, oauth, "invalid_request", "unknown or expired launch")
    rid = secrets.token_urlsafe(18)
    ctx.db[PENDING].insert_one(
        {
            "_id": rid,
            "sid": ctx.session.sid,
            "params": [list(p) for p in params],
            "client_id": client.client_id,
            "launch": launch,
            "patient": None,
            "expires": datetime.fromtimestamp(time.time() + PENDING_SECONDS, UTC),
        }
    )
    return RedirectResponse(ctx.local(f"/auth/consent/{rid}"), 303)


@router.api_route("/authorize", methods=["GET", "POST"])
async def authorize(request: Request) -> Response:
    query = list(request.query_params.multi_items())

    def work(ctx: _Ctx) -> Response:
        return _start(ctx, query + ctx.form)

    return await _run(request, work)


class _Flow:
    """A pending authorization request of this browser session, once a user is known."""

    def __init__(self, ctx: _Ctx, doc: dict[str, Any], user: User, client: Client) -> None:
        self.ctx, self.doc, self.user, self.client = ctx, doc, user, client
        self.params = [(k, v) for k, v in doc["params"]]
        data = dict(reversed(self.params))
        requested = (data.get("scope") or "").split()
        self.offered = grantable(user.role, client.filter_scope(requested))
        self.launch: dict[str, Any] | None = doc.get("launch")

    @property
    def patient(self) -> str | None:
        if self.launch is not None:
            return str(self.launch["patient"])
        if self.user.role == "patient":
            return self.user.patient_id
        return self.doc.get("patient")

    @property
    def needs_picker(self) -> bool:
        return self.patient is None and "launch/patient" in self.offered


def _flow(ctx: _Ctx, rid: str) -> _Flow | Response:
    doc = ctx.db[PENDING].find_one({"_id": rid, "sid": ctx.session.sid})
    if doc is None or doc["expires"].replace(tzinfo=UTC).timestamp() < time.time():
        return ctx.error("This authorization request is unknown or has expired.")
    if ctx.session.username is None:
        return RedirectResponse(
            with_query("/auth/login", {"next": f"/auth/consent/{rid}", "lang": ctx.lang}), 303
        )
    user = get_user(ctx.db, ctx.session.username)
    client = get_client(ctx.db, doc["client_id"])
    if user is None or client is None:
        return ctx.error("This authorization request is no longer valid.")
    launch = doc.get("launch")
    if launch is not None and launch.get("user") != user.username:
        return ctx.error("This launch was started by another user.", 403)
    return _Flow(ctx, doc, user, client)


def _posted_flow(ctx: _Ctx, rid: str) -> _Flow | Response:
    """``_flow`` for a form post, which must carry the session's CSRF token."""
    if not ctx.csrf_ok():
        return ctx.error(TEXT[ctx.lang]["err_csrf"], 403)
    return _flow(ctx, rid)


@router.get("/consent/{rid}")
async def consent(request: Request, rid: str) -> Response:
    def work(ctx: _Ctx) -> Response:
        flow = _flow(ctx, rid)
        if isinstance(flow, Response):
            return flow
        action = f"/auth/consent/{rid}"
        if flow.needs_picker:
            q = ctx.query.get("q", "")
            return ctx.html(picker_page(ctx.page, action, q, find_patients(ctx.db, q)))
        return ctx.html(
            consent_page(ctx.page, action, flow.client.name, flow.offered, flow.patient)
        )

    return await _run(request, work, form=False)


@router.post("/consent/{rid}/patient")
async def choose_patient(request: Request, rid: str) -> Response:
    def work(ctx: _Ctx) -> Response:
        flow = _posted_flow(ctx, rid)
        if isinstance(flow, Response):
            return flow
        patient = ctx.form_data.get("patient", "")
        if not flow.needs_picker:
            return ctx.error("No patient is to be chosen for this request.")
        if not resource_exists(ctx.db, "Patient", patient):
            return ctx.error(TEXT[ctx.lang]["unknown_patient"])
        ctx.db[PENDING].update_one({"_id": rid}, {"$set": {"patient": patient}})
        return RedirectResponse(ctx.local(f"/auth/consent/{rid}"), 303)

    return await _run(request, work)


@router.post("/consent/{rid}")
async def decide(request: Request, rid: str) -> Response:
    def work(ctx: _Ctx) -> Response:
        flow = _posted_flow(ctx, rid)
        if isinstance(flow, Response):
            return flow
        if flow.needs_picker:
            return RedirectResponse(ctx.local(f"/auth/consent/{rid}"), 303)
        ctx.db[PENDING].delete_one({"_id": rid})
        checked = _validated(ctx, flow.params)
        if isinstance(checked, Response):
            return checked
        grant, oauth = checked
        server = ctx.state.server
        if ctx.form_data.get("decision") != "allow":
            denied: Response = server.create_authorization_response(oauth, None, grant)
            ctx.audit.record(
                "consent-denied",
                True,
                username=flow.user.username,
                client_id=flow.client.client_id,
                patient=flow.patient,
            )
            return denied
        ticked = {v for k, v in ctx.form if k == "scope"}
        granted = [s for s in flow.offered if s in ticked]
        launched = flow.launch is not None and "launch" in granted
        standalone = "launch/patient" in granted
        patient = flow.patient if (launched or standalone or flow.user.role == "patient") else None
        encounter = None
        if flow.launch is not None and (launched or "launch/encounter" in granted):
            encounter = flow.launch.get("encounter")
        grantor = Grantor(
            scope=" ".join(granted),
            aud=ctx.urls.fhir,
            username=flow.user.username,
            fhir_user=flow.user.fhir_user,
            patient=patient,
            encounter=encounter,
            need_patient_banner=flow.launch is None,
            nonce=oauth.payload.data.get("nonce"),
            auth_time=ctx.session.auth_time,
        )
        response: Response = server.create_authorization_response(oauth, grantor, grant)
        ctx.audit.record(
            "consent-granted",
            True,
            username=flow.user.username,
            client_id=flow.client.client_id,
            patient=patient,
            detail=f"scope: {' '.join(granted)}",
        )
        return response

    return await _run(request, work)


# ----------------------------------------------------------------------------- login


def _safe_next(value: str | None, default: str = "/auth/ehr-launch") -> str:
    """Only paths of this server's /auth pages and admin console: never an open redirect."""
    if (
        value
        and (value == "/admin" or value.startswith(("/auth/", "/admin/", "/admin?")))
        and "//" not in value
        and "\\" not in value
    ):
        return value
    return default


@router.get("/login")
async def login_form(request: Request) -> Response:
    def work(ctx: _Ctx) -> Response:
        target = _safe_next(ctx.query.get("next"))
        if ctx.session.username and get_user(ctx.db, ctx.session.username):
            return RedirectResponse(target, 303)
        action = with_query("/auth/login", {"next": target, "lang": ctx.lang})
        return ctx.html(login_page(ctx.page, action))

    return await _run(request, work, form=False)


_LOGIN_STATUS = {
    "invalid": 401,
    "locked": 429,
    "totp_required": 401,
    "totp_invalid": 401,
    "must_reset": 403,
}


@router.post("/login")
async def login(request: Request) -> Response:
    def work(ctx: _Ctx) -> Response:
        target = _safe_next(ctx.query.get("next"))
        action = with_query("/auth/login", {"next": target, "lang": ctx.lang})
        username = ctx.form_data.get("username", "")
        if not ctx.csrf_ok():
            page = login_page(ctx.page, action, username=username, error="csrf")
            return ctx.html(page, 403)
        try:
            user = authenticate(
                ctx.db,
                username,
                ctx.form_data.get("password", ""),
                ctx.form_data.get("totp") or None,
                throttle=ctx.state.throttle,
                client_ip=ctx.client_ip,
                new_password=ctx.form_data.get("new_password") or None,
            )
        except LoginFailed as failure:
            reason = failure.reason
            ctx.audit.record("login", False, username=username, detail=reason)
            if reason == "locked":
                ctx.audit.record("lockout", False, username=username, detail="throttled")
            page = login_page(
                ctx.page,
                action,
                username=username,
                error=reason,
                show_totp=reason in ("totp_required", "totp_invalid"),
                show_new_password=reason == "must_reset",
            )
            response = ctx.html(page, _LOGIN_STATUS[reason])
            if failure.retry_after is not None:
                response.headers["Retry-After"] = str(failure.retry_after)
            return response
        ctx.audit.record("login", True, username=user.username)
        old = ctx.state.sessions.login(ctx.session, user.username)
        ctx.db[PENDING].update_many({"sid": old}, {"$set": {"sid": ctx.session.sid}})
        return RedirectResponse(target, 303)

    return await _run(request, work)


@router.post("/logout")
async def logout(request: Request) -> Response:
    def work(ctx: _Ctx) -> Response:
        if ctx.csrf_ok():
            if ctx.session.username:
                ctx.audit.record("logout", True, username=ctx.session.username)
            ctx.session.username = None
            ctx.session.changed = True
        return RedirectResponse(ctx.local("/auth/login"), 303)

    return await _run(request, work)


# ----------------------------------------------------------------------------- EHR launch


def _launcher(ctx: _Ctx) -> User | Response:
    user = get_user(ctx.db, ctx.session.username) if ctx.session.username else None
    if user is None:
        return RedirectResponse(
            with_query("/auth/login", {"next": "/auth/ehr-launch", "lang": ctx.lang}), 303
        )
    if user.role not in LAUNCHER_ROLES:
        return ctx.error(TEXT[ctx.lang]["forbidden_role"], 403)
    return user


def _launch_form(ctx: _Ctx, user: User, error: str | None = None, status: int = 200) -> Response:
    clients = [(c.client_id, c.name) for c in launchable_clients(ctx.db)]
    page = ehr_launch_page(
        ctx.page,
        ctx.local("/auth/ehr-launch"),
        user.username,
        clients,
        error,
        ctx.form_data.get("patient", ""),
        ctx.form_data.get("encounter", ""),
    )
    return ctx.html(page, status)


@router.get("/ehr-launch")
async def ehr_launch_form(request: Request) -> Response:
    def work(ctx: _Ctx) -> Response:
        user = _launcher(ctx)
        return user if isinstance(user, Response) else _launch_form(ctx, user)

    return await _run(request, work, form=False)


@router.post("/ehr-launch")
async def ehr_launch(request: Request) -> Response:
    """Create a single-use launch context and send the browser to the app's launch URL
    with ``iss`` (the FHIR base) and ``launch`` (SMART App Launch, "EHR launch")."""

    def work(ctx: _Ctx) -> Response:
        user = _launcher(ctx)
        if isinstance(user, Response):
            return user
        if not ctx.csrf_ok():
            return ctx.error(TEXT[ctx.lang]["err_csrf"], 403)
        client = get_client(ctx.db, ctx.form_data.get("client_id", ""))
        if client is None or not client.launch_url:
            return _launch_form(ctx, user, "unknown_client", 400)
        patient = ctx.form_data.get("patient", "").strip()
        encounter = ctx.form_data.get("encounter", "").strip() or None
        if not resource_exists(ctx.db, "Patient", patient):
            return _launch_form(ctx, user, "unknown_patient", 400)
        if encounter is not None and not resource_exists(ctx.db, "Encounter", encounter):
            return _launch_form(ctx, user, "unknown_encounter", 400)
        launch_id = create_launch(ctx.db, client.client_id, user.username, patient, encounter)
        target = with_query(client.launch_url, {"iss": ctx.urls.fhir, "launch": launch_id})
        return RedirectResponse(target, 303)

    return await _run(request, work)
