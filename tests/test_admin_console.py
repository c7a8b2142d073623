"""The admin console (/admin, docs/admin.md) over HTTP on the real app with auth on and a
real MongoDB: who may use it (admin role AND TOTP, through the real login with a one-time
code), CSRF, the security headers, clients (a backend client whose generated key then
gets a token, until it is revoked), users (create, reset, unlock after real failed
sign-ins), a real bulk export job, the audit search and health; English and Spanish."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from joserfc.jwk import ECKey
from smart_as_helpers import (
    REDIRECT,
    ROOT,
    Smart,
    app_tokens,
    csrf,
    form_action,
    location,
    smart_server,
    token_request,
)

from smart_auth.admin.pages import CSP
from smart_auth.backend_client import (
    ASSERTION_TYPE,
    SigningKey,
    client_assertion,
    generate_key,
)
from smart_auth.clients import create_client, get_client
from smart_auth.session import COOKIE
from smart_auth.users import create_user, get_user

PASSWORD = "Admin-Console-Pass-7"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@dataclass
class Console:
    smart: Smart
    cookies: dict[str, str]  # username -> session cookie value

    @property
    def c(self) -> TestClient:
        return self.smart.client

    def as_user(self, username: str | None) -> None:
        """Switch the one TestClient's session cookie to this user's (None: no session)."""
        self.c.cookies.clear()
        if username is not None:
            for path in ("/auth", "/admin"):
                self.c.cookies.set(
                    COOKIE, self.cookies[username], domain="localhost.local", path=path
                )

    def page(self, path: str, **kw: Any) -> Response:
        r = self.c.get(path, **kw)
        assert r.status_code == 200, (r.status_code, r.text)
        return r

    def post(self, path: str, data: dict[str, str], token: str | None = "page") -> Response:
        """POST a console form; ``token`` "page": the CSRF token of the page ``path``'s
        section shows (the session's), None: none at all, else that value."""
        if token == "page":
            token = csrf(self.page("/admin/clients"))
        body = {**data, **({"csrf": token} if token is not None else {})}
        return self.c.post(path, data=body)


def _login(c: TestClient, username: str, totp_secret: str | None) -> str:
    """Sign in through /admin -> /auth/login (password, then the one-time code) and back
    to /admin; returns the session cookie."""
    c.cookies.clear()
    r = c.get("/admin")
    login_url = location(r)
    assert urlsplit(login_url).path == "/auth/login"
    assert parse_qs(urlsplit(login_url).query)["next"] == ["/admin"]
    page = c.get(login_url)
    data = {"csrf": csrf(page), "username": username, "password": PASSWORD}
    r = c.post(login_url, data=data)
    if totp_secret is not None:
        assert r.status_code == 401 and 'id="totp"' in r.text  # the second factor asked
        r = c.post(login_url, data={**data, "totp": pyotp.TOTP(totp_secret).now()})
    assert location(r) == "/admin"
    cookie = c.cookies.get(COOKIE, path="/admin")
    assert cookie
    return cookie


@pytest.fixture(scope="module")
def console(mongo_url: str) -> Iterator[Console]:
    with smart_server(mongo_url, auth_lockout_attempts=3) as smart:
        admin = create_user(smart.db, "root", PASSWORD, "admin", totp=True)
        create_user(smart.db, "plain-admin", PASSWORD, "admin")
        create_user(smart.db, "dr", PASSWORD, "practitioner", "Practitioner/1")
        cookies = {
            "root": _login(smart.client, "root", admin["totp_secret"]),
            "plain-admin": _login(smart.client, "plain-admin", None),
            "dr": _login(smart.client, "dr", None),
        }
        yield Console(smart, cookies)


@pytest.fixture
def root(console: Console) -> Console:
    console.as_user("root")
    return console


def _headers_are_strict(r: Response) -> None:
    assert r.headers["content-security-policy"] == CSP
    for part in (
        "default-src 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ):
        assert part in CSP
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_not_signed_in_goes_to_the_login_page_with_a_return_to_admin(console: Console) -> None:
    console.as_user(None)
    for path in ("/admin", "/admin/users", "/admin/health"):
        target = location(console.c.get(path))
        assert target.startswith("/auth/login?")
        assert parse_qs(urlsplit(target).query)["next"] == [path]
    # a POST without a session changes nothing and goes to the login page too
    r = console.c.post("/admin/clients", data={"type": "public", "client_id": "sneaky"})
    assert location(r).startswith("/auth/login?")
    assert get_client(console.smart.db, "sneaky") is None
    # the login page never returns anywhere but this server's pages
    r = console.c.get("/auth/login?next=//evil.example/admin")
    assert "evil.example" not in form_action(r)


def test_a_non_admin_is_refused_with_the_reason(console: Console) -> None:
    console.as_user("dr")
    r = console.c.get("/admin/clients?lang=en")
    assert r.status_code == 403
    assert "administrators only" in r.text and "practitioner" in r.text
    assert 'id="nav-clients"' not in r.text
    _headers_are_strict(r)
    r = console.c.get("/admin/clients?lang=es")
    assert r.status_code == 403 and "solo para administradores" in r.text
    r = console.c.post("/admin/users/unlock", data={"username": "root"})
    assert r.status_code == 403


def test_an_admin_without_totp_is_told_to_enrol(console: Console) -> None:
    console.as_user("plain-admin")
    r = console.c.get("/admin/users")
    assert r.status_code == 403
    assert "TOTP" in r.text and "--totp" in r.text
    # not even with a valid CSRF token can it act
    token = csrf(r)  # the sign-out form carries it
    r = console.c.post("/admin/clients", data={"csrf": token, "type": "public", "client_id": "x"})
    assert r.status_code == 403
    assert get_client(console.smart.db, "x") is None


def test_pages_are_english_or_spanish_with_strict_headers_and_a_hashed_style(root: Console) -> None:
    for path in ("/admin/clients", "/admin/users", "/admin/jobs", "/admin/audit", "/admin/health"):
        en = root.page(path + "?lang=en")
        es = root.page(path, headers={"accept-language": "es-EC,es;q=0.9"})
        assert '<html lang="en">' in en.text and '<html lang="es">' in es.text
        assert "Sign out" in en.text and "Cerrar sesión" in es.text
        assert 'hreflang="es"' in en.text and 'hreflang="en"' in es.text
        _headers_are_strict(en)
        style = re.search(r"<style>(.*?)</style>", en.text, re.S)
        assert style
        digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
        assert f"'sha256-{digest}'" in en.headers["content-security-policy"]
        assert " style=" not in en.text and "<script" not in en.text
    assert location(root.c.get("/admin?lang=es")) == "/admin/clients?lang=es"


def test_a_post_without_the_csrf_token_is_refused(root: Console) -> None:
    data = {"type": "public", "client_id": "no-csrf", "redirect_uris": "https://a.example/cb"}
    for token in (None, "", "0" * 64):
        r = root.post("/admin/clients", data, token=token)
        assert r.status_code == 403, token
        assert "form expired" in r.text
    assert get_client(root.smart.db, "no-csrf") is None
    assert root.post("/admin/users/reset", {"username": "dr"}, token=None).status_code == 403
    assert get_user(root.smart.db, "dr") is not None


def test_backend_client_with_a_generated_key_gets_a_token_until_revoked(root: Console) -> None:
    r = root.post(
        "/admin/clients",
        {"type": "backend", "client_id": "", "name": "Nightly <export>", "scope": "system/*.rs"},
    )
    assert r.status_code == 200, r.text
    client_id = html.unescape(re.search(r'id="new-client-id">([^<]+)<', r.text).group(1))  # type: ignore[union-attr]
    assert client_id.startswith("backend-")
    pem = html.unescape(re.search(r'id="private-key" readonly rows="8">([^<]+)<', r.text).group(1))  # type: ignore[union-attr]
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    href = re.search(r'id="download-key" download="([^"]+)" href="([^"]+)"', r.text)
    assert href and href.group(1) == f"{client_id}.key.pem"
    assert base64.b64decode(href.group(2).split(",", 1)[1]).decode() == pem
    stored = root.smart.db["auth_clients"].find_one({"_id": client_id})
    assert stored and "PRIVATE" not in str(stored)  # only the public key is kept
    key = SigningKey(ECKey.import_key(pem), "ES384")
    assert stored["jwks"]["keys"][0]["kid"] == key.kid

    def token() -> Response:
        data = {
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(key, client_id, f"{ROOT}/auth/token"),
        }
        return token_request(root.c, data)

    assert token().status_code == 200
    listed = root.page("/admin/clients").text
    assert client_id in listed and "Nightly &lt;export&gt;" in listed and "<export>" not in listed
    r = root.post("/admin/clients/revoke", {"client_id": client_id})
    assert location(r).startswith("/admin/clients?")
    after = root.page(location(r)).text
    assert f"Client {client_id} is revoked" in after
    assert f"<td>{client_id}</td>" not in after
    assert token().status_code in (400, 401)
    assert root.post("/admin/clients/revoke", {"client_id": client_id}).status_code == 404


def test_public_and_confidential_clients_and_refusals(root: Console) -> None:
    r = root.post(
        "/admin/clients",
        {
            "type": "confidential-symmetric",
            "client_id": "web-app",
            "redirect_uris": "https://app.example/cb\r\nhttps://app.example/cb2",
            "rate_limit": "600/60s",
        },
    )
    assert r.status_code == 200, r.text
    secret = re.search(r'id="client-secret" readonly value="([^"]+)"', r.text)
    assert secret
    client = get_client(root.smart.db, "web-app")
    assert client and client.check_client_secret(html.unescape(secret.group(1)))
    assert client.redirect_uris == ["https://app.example/cb", "https://app.example/cb2"]
    assert "600/60s" in root.page("/admin/clients").text
    # never replaces an existing registration, and says why in the page's language
    r = root.c.post(
        "/admin/clients?lang=es",
        data={"csrf": csrf(r), "type": "public", "client_id": "web-app", "lang": "es"},
    )
    assert r.status_code == 409 and "Ya existe un cliente" in r.text
    assert get_client(root.smart.db, "web-app").client_type == "confidential-symmetric"  # type: ignore[union-attr]
    r = root.post(
        "/admin/clients", {"type": "public", "client_id": "p", "redirect_uris": "ftp://x"}
    )
    assert r.status_code == 400 and "not an absolute http(s) URI" in r.text


def test_create_user_reset_password_and_unlock(root: Console) -> None:
    r = root.post(
        "/admin/users",
        {"username": "nurse", "password": PASSWORD, "role": "practitioner", "totp": "1"},
    )
    assert r.status_code == 200 and "User nurse is created" in r.text
    assert re.search(r'id="totp-secret" readonly value="[A-Z2-7]{32}"', r.text)
    user = get_user(root.smart.db, "nurse")
    assert user and user.role == "practitioner" and user.has_totp
    r = root.post("/admin/users", {"username": "x", "password": "short", "role": "admin"})
    assert r.status_code == 400 and "at least 8 characters" in r.text
    # real failed sign-ins, then the console clears them
    token = csrf(root.page("/admin/users"))
    for _ in range(2):
        bad = root.c.post(
            "/auth/login", data={"csrf": token, "username": "nurse", "password": "wrong-pass"}
        )
        assert bad.status_code == 401
    row = re.search(r"<tr><td>nurse</td>(.*?)</tr>", root.page("/admin/users").text)
    assert row and "<td>2</td>" in row.group(1)
    r = root.post("/admin/users/unlock", {"username": "nurse"})
    page = root.page(location(r)).text
    assert "nurse may sign in again" in page
    row = re.search(r"<tr><td>nurse</td>(.*?)</tr>", page)
    assert row and "<td>0</td>" in row.group(1)
    # reset: a temporary password that only lets the user choose a new one, and the
    # user's apps lose their refresh tokens
    create_client(root.smart.db, "app", "public", redirect_uris=[REDIRECT])
    root.as_user(None)
    refresh = app_tokens(root.c, "openid offline_access user/*.rs", "dr", PASSWORD)["refresh_token"]
    root.as_user("root")
    r = root.post("/admin/users/reset", {"username": "dr"})
    assert r.status_code == 200
    temporary = html.unescape(re.search(r'id="temporary-password">([^<]+)<', r.text).group(1))  # type: ignore[union-attr]
    doc = root.smart.db["auth_users"].find_one({"_id": "dr"})
    assert doc and doc["must_reset_password"] is True
    refused = root.c.post(
        "/auth/login", data={"csrf": token, "username": "dr", "password": temporary}
    )
    assert refused.status_code == 403 and 'id="new_password"' in refused.text
    again = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "app"}
    assert token_request(root.c, again).status_code == 400
    assert root.post("/admin/users/reset", {"username": "nobody"}).status_code == 404
    # each change is an audit record naming the admin (docs/audit.md)
    done = _admin_records(root, 4)
    assert {"user-created", "user-unlocked", "password-reset"} <= set(done)
    assert done["password-reset"] == ("root", "password of dr reset", "110113")


def _admin_records(root: Console, expect: int) -> dict[str, tuple[str, str, str]]:
    """The console's audit records by kind: (admin, what, event type)."""
    deadline = time.monotonic() + 5
    while True:
        found = {}
        for doc in root.smart.db["AuditEvent"].find({"sp.altid": "root"}):
            event = json.loads(doc["raw"])
            kind = event["subtype"][-1]["code"]
            desc = event.get("outcomeDesc", "")
            found[kind] = (event["agent"][0]["altId"], desc, event["type"]["code"])
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_jobs_page_lists_a_real_export_job(root: Console) -> None:
    key = generate_key("ES384")
    create_client(root.smart.db, "exporter", "confidential-asymmetric", jwks=key.public_jwks())
    data = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(key, "exporter", f"{ROOT}/auth/token"),
    }
    access = token_request(root.c, data).json()["access_token"]
    kick = root.c.get(
        "/fhir/$export",
        headers={
            "Authorization": f"Bearer {access}",
            "Accept": "application/fhir+json",
            "Prefer": "respond-async",
        },
    )
    assert kick.status_code == 202, kick.text
    job_id = kick.headers["content-location"].rstrip("/").rsplit("/", 1)[-1]
    page = root.page("/admin/jobs").text
    row = re.search(rf"<tr><td>{job_id}</td>(.*?)</tr>", page)
    assert row, page
    assert "client=exporter" in row.group(1)
    assert re.search(r"<td>(running|complete)</td>", row.group(1))
    assert "parts" in row.group(1)
    assert 'id="imports"' in page
    es = root.page("/admin/jobs?lang=es").text
    assert "Exportaciones masivas" in es and job_id in es


def test_audit_page_has_the_form_and_reports_bad_values(root: Console) -> None:
    page = root.page("/admin/audit?patient=no-such-patient-x").text
    for field in ("patient", "user", "client", "action", "outcome", "from", "to"):
        assert f'name="{field}"' in page
    assert 'id="no-events"' in page
    assert 'value="no-such-patient-x"' in page
    bad = root.page("/admin/audit?from=not-a-date").text
    assert 'id="error"' in bad
    es = root.page("/admin/audit?lang=es&patient=no-such-patient-x").text
    assert "Ningún evento de auditoría coincide" in es


def test_health_page_reports_mongodb_and_version(root: Console) -> None:
    from fhir_server import __version__

    page = root.page("/admin/health").text
    assert f"<td>{__version__}</td>" in page
    assert "writable primary" in page and "replica set" in page
    assert "Ready for traffic</th><td>yes</td>" in page
    assert "primario con escritura" in root.page("/admin/health?lang=es").text


def _events(root: Console, query: str, at_least: int) -> tuple[str, list[str]]:
    """The audit page of ``query`` and its rows' recorded times, once it shows
    ``at_least`` events (the sink stores records in batches, a moment after the request)."""
    deadline = time.monotonic() + 10
    while True:
        page = root.page(f"/admin/audit?{query}").text
        rows = re.findall(r"<tr><td>([^<]+)</td>", page)
        if len(rows) >= at_least or time.monotonic() > deadline:
            return page, rows
        time.sleep(0.2)


def test_audit_search_finds_the_events_of_a_client_and_a_user_newest_first(
    root: Console,
) -> None:
    key = generate_key("ES384")
    create_client(root.smart.db, "auditee", "confidential-asymmetric", jwks=key.public_jwks())
    data = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(key, "auditee", f"{ROOT}/auth/token"),
    }
    bearer = {"Authorization": f"Bearer {token_request(root.c, data).json()['access_token']}"}
    for n in range(27):
        assert root.c.get(f"/fhir/Patient/audit-{n}", headers=bearer).status_code == 404
    page, rows = _events(root, "client=auditee&action=R", 25)
    assert len(rows) == 25, page  # one page
    assert rows == sorted(rows, reverse=True)  # newest first
    assert "auditee" in page and "read or search" in page
    more = re.search(r'id="next-page" href="([^"]+)"', page)
    assert more
    rest = root.page(html.unescape(more.group(1))).text
    older = re.findall(r"<tr><td>([^<]+)</td>", rest)
    assert len(older) >= 2 and max(older) <= min(rows)
    # a failed sign-in, an auth event, found by username and outcome
    token = csrf(root.page("/admin/users"))
    data = {"csrf": token, "username": "ghost-user", "password": "wrong-pass"}
    assert root.c.post("/auth/login", data=data).status_code == 401
    page, rows = _events(root, "user=ghost-user&outcome=4", 1)
    assert len(rows) == 1 and "User Authenticated, Login" in page and "minor failure" in page
    assert 'id="no-events"' in root.page("/admin/audit?user=ghost-user&outcome=0").text
    # a client that made no request has no event
    assert 'id="no-events"' in root.page("/admin/audit?client=nobody-at-all").text
