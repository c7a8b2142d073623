"""The admin console in a real browser: Debian's headless chromium (Playwright, never a
downloaded browser) against a real ``fhir-server serve`` with auth on. An admin signs in
with password and one-time code (pyotp), registers a backend client with a generated
key, downloads the key, sees the client listed, revokes it, switches to Spanish, and
no page of the console logs a Content-Security-Policy violation or any other error."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from browser_helpers import CHROMIUM, auth_cli
from playwright.sync_api import Page, sync_playwright
from pymongo import MongoClient

from fhir_server.testing import ServerProcess

pytestmark = pytest.mark.slow

PASSWORD = "Browser-Admin-Pass-5"
UI_TIMEOUT_MS = 20_000


@dataclass(frozen=True)
class Server:
    root: str
    mongo_url: str
    database: str
    totp_secret: str


@pytest.fixture(scope="module")
def server(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not CHROMIUM.exists():
        pytest.fail(f"the browser test needs {CHROMIUM} (apt-get install -y chromium)")
    database = f"test_admin_browser_{uuid.uuid4().hex[:12]}"
    log_file = tmp_path_factory.mktemp("admin-browser") / "server.log"
    process = ServerProcess(mongo_url=mongo_url, database=database, auth=True, log_file=log_file)
    try:
        process.start()
        created = auth_cli(
            "create-user",
            *("--mongo-url", mongo_url, "--database", database),
            *("--username", "chief", "--password", PASSWORD, "--role", "admin", "--totp"),
        )
        yield Server(
            process.base_url.removesuffix("/fhir"), mongo_url, database, created["totp_secret"]
        )
    finally:
        process.stop()
        with MongoClient(mongo_url) as mc:
            mc.drop_database(database)


@pytest.fixture
def page(server: Server) -> Iterator[Page]:
    """A fresh Chromium profile; ``page.console_log`` gathers every console message and
    page error (a CSP violation is reported there as an error)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(locale="en-US", accept_downloads=True)
            context.set_default_timeout(UI_TIMEOUT_MS)
            pg = context.new_page()
            log: list[str] = []
            pg.on("console", lambda m: log.append(f"{m.type}: {m.location.get('url')}: {m.text}"))
            pg.on("pageerror", lambda e: log.append(f"pageerror: {e}"))
            pg.console_log = log  # type: ignore[attr-defined]
            yield pg
        finally:
            browser.close()


def test_admin_signs_in_with_totp_creates_and_revokes_a_backend_client(
    page: Page, server: Server, tmp_path: Path
) -> None:
    page.goto(f"{server.root}/admin")
    assert "/auth/login" in page.url
    page.fill("#username", "chief")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_selector("#totp")
    page.fill("#username", "chief")
    page.fill("#password", PASSWORD)
    page.fill("#totp", pyotp.TOTP(server.totp_secret).now())
    page.click("#login")
    page.wait_for_url(f"{server.root}/admin/clients*")
    assert page.get_attribute("html", "lang") == "en"

    page.select_option("#type", "backend")
    page.fill("#name", "Nightly export")
    page.fill("#scope", "system/*.rs")
    page.click("#register")
    page.wait_for_selector("#new-client-id")
    client_id = page.text_content("#new-client-id") or ""
    assert client_id.startswith("backend-")
    pem = page.input_value("#private-key")
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    with page.expect_download() as download:
        page.click("#download-key")
    saved = tmp_path / "key.pem"
    download.value.save_as(saved)
    assert download.value.suggested_filename == f"{client_id}.key.pem"
    assert saved.read_text() == pem

    page.click("#back")
    page.wait_for_selector("#clients")
    row = page.locator("#clients tr", has_text=client_id)
    assert row.count() == 1 and "Nightly export" in (row.text_content() or "")
    row.locator("button.revoke").click()
    page.wait_for_selector("#notice")
    assert client_id in (page.text_content("#notice") or "")
    assert page.locator("#clients tr", has_text=client_id).count() == 0
    with MongoClient(server.mongo_url) as mc:
        assert mc[server.database]["auth_clients"].find_one({"_id": client_id}) is None

    for section in ("users", "jobs", "audit", "health"):
        page.click(f"#nav-{section}")
        page.wait_for_url(f"{server.root}/admin/{section}*")
        page.wait_for_selector("h1")
    page.click("#lang-switch")
    page.wait_for_selector("html[lang=es]")
    assert "Estado" in (page.text_content("h1") or "")
    page.click("#nav-users")
    page.wait_for_url(f"{server.root}/admin/users*")
    assert "chief" in (page.text_content("#users") or "")
    assert page.get_attribute("html", "lang") == "es"

    page.click("#sign-out")
    page.wait_for_url(f"{server.root}/auth/login*")
    page.goto(f"{server.root}/admin/clients")
    assert "/auth/login" in page.url

    # the login page answers 401 while it asks for the code: only the console's own
    # messages count, and a CSP violation counts wherever it happens
    console_pages = f": {server.root}/admin"
    log: list[str] = page.console_log  # type: ignore[attr-defined]
    errors = [m for m in log if console_pages in m or "Content Security Policy" in m]
    assert errors == [], errors
