"""A real SMART app in a real browser (issue #5): Debian's headless chromium, driven by
Playwright, runs tests/smart_app (the official npm ``fhirclient``) against a real
``fhir-server serve`` with auth on. The app lives on another origin, so discovery, the
token exchange and the FHIR reads all go through CORS, as for any browser app.

SMART App Launch 2.2, "App Launch: Launch and Authorization": the app discovers the
endpoints from ``[iss]/.well-known/smart-configuration``, sends the user to ``authorize``
with PKCE S256, and exchanges the code at ``token``; for an EHR launch it receives ``iss``
and ``launch`` on its launch URL and passes ``launch`` back to ``authorize``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pyotp
import pytest
from browser_helpers import CHROMIUM, auth_cli, missing_prerequisites, static_app_server
from playwright.sync_api import Browser, Page, sync_playwright
from pymongo import MongoClient

from fhir_server.testing import ServerProcess
from smart_auth.tokens import KeyRing, issue_access_token

pytestmark = pytest.mark.slow

CLIENT_ID = "smart-browser-test-app"  # the default in tests/smart_app/app.js
PASSWORD = "Correct-Horse-Battery-9"
ANA_CODES = ["29463-7", "8310-5", "8867-4"]  # LOINC: body weight, body temperature, heart rate
JOHN_CODES = ["8867-4"]
UI_TIMEOUT_MS = 20_000


@dataclass(frozen=True)
class Smart:
    """Everything the browser flows need: where things are and who may log in."""

    fhir_base: str
    root: str
    app: str
    practitioner: str
    patient_user: str
    totp_user: str
    totp_secret: str
    log_file: Path


def _observation(oid: str, patient: str, code: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": value, "unit": unit},
    }


SEED: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "ana",
        "name": [{"family": "García", "given": ["Ana", "María"]}],
        "birthDate": "1984-03-07",
    },
    {
        "resourceType": "Patient",
        "id": "john",
        "name": [{"family": "Smith", "given": ["John"]}],
        "birthDate": "1950-11-30",
    },
    {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Ruiz", "given": ["Eva"]}]},
    _observation("ana-hr", "ana", "8867-4", 72, "/min"),
    _observation("ana-temp", "ana", "8310-5", 36.8, "Cel"),
    _observation("ana-weight", "ana", "29463-7", 61.5, "kg"),
    _observation("john-hr", "john", "8867-4", 64, "/min"),
]


def _seed(mongo_url: str, database: str, fhir_base: str, root: str) -> None:
    """Load the test data through the real API with a system token signed by the server's
    own key ring (the same keys its authorization server signs with)."""
    with MongoClient(mongo_url) as mc:
        token, _ = issue_access_token(
            KeyRing(mc[database]),
            issuer=f"{root}/auth",
            audience=fhir_base,
            client_id="browser-test-seeder",
            scope="system/*.cruds",
            lifetime=300,
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{fhir_base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in SEED
        ],
    }
    response = httpx.post(
        fhir_base,
        json=bundle,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def smart(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smart]:
    missing = missing_prerequisites()
    if missing:
        pytest.fail("the browser test needs " + ", ".join(missing), pytrace=False)
    database = f"test_browser_{uuid.uuid4().hex[:12]}"
    log_file = tmp_path_factory.mktemp("browser") / "server.log"
    with static_app_server() as app:
        # CORS limited to the app's origin, as a deployment would configure it.
        server = ServerProcess(
            mongo_url=mongo_url,
            database=database,
            auth=True,
            env={"FHIR_CORS_ORIGINS": app},
            log_file=log_file,
        )
        try:
            server.start()
            root = server.base_url.removesuffix("/fhir")
            _seed(mongo_url, database, server.base_url, root)
            db = ("--mongo-url", mongo_url, "--database", database)
            auth_cli(
                "create-client",
                *db,
                "--client-id",
                CLIENT_ID,
                "--type",
                "public",
                "--redirect-uri",
                f"{app}/index.html",
                "--launch-url",
                f"{app}/launch.html",
                "--name",
                "Browser test app",
            )
            auth_cli(
                "create-user",
                *db,
                *("--username", "dr.ruiz", "--password", PASSWORD),
                *("--role", "practitioner", "--fhir-user", "Practitioner/doc"),
            )
            auth_cli(
                "create-user",
                *db,
                *("--username", "john", "--password", PASSWORD),
                *("--role", "patient", "--fhir-user", "Patient/john"),
            )
            totp = auth_cli(
                "create-user",
                *db,
                *("--username", "dr.otp", "--password", PASSWORD, "--totp"),
                *("--role", "practitioner", "--fhir-user", "Practitioner/doc"),
            )
            yield Smart(
                server.base_url,
                root,
                app,
                "dr.ruiz",
                "john",
                "dr.otp",
                totp["totp_secret"],
                log_file,
            )
        finally:
            server.stop()
            with MongoClient(mongo_url) as mc:
                mc.drop_database(database)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        # Debian's chromium, never a downloaded one; Playwright passes --no-sandbox itself
        # (chromiumSandbox defaults to false), which chromium needs when run as root.
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh profile per flow (no AS session cookie or app sessionStorage carried over),
    in the locale a test asks for with ``@pytest.mark.parametrize("page", [...],
    indirect=True)`` (English by default). ``page.visited`` lists the top-level URLs."""
    context = browser.new_context(locale=getattr(request, "param", "en-US"))
    context.set_default_timeout(UI_TIMEOUT_MS)
    pg = context.new_page()
    console: list[str] = []
    visited: list[str] = []
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    authorize: list[str] = []
    pg.on("framenavigated", lambda f: visited.append(f.url) if f == pg.main_frame else None)
    pg.on("request", lambda r: authorize.append(r.url) if "/auth/authorize?" in r.url else None)
    pg.console_log = console  # type: ignore[attr-defined]
    pg.visited = visited  # type: ignore[attr-defined]
    pg.authorize_requests = authorize  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


def _where(page: Page, smart: Smart) -> str:
    """What the test saw when a step failed: the page, the console, the server log."""
    try:
        body = page.inner_text("body")[:1500]
    except Exception as exc:  # the page may be mid-navigation
        body = f"(no body: {exc})"
    log = smart.log_file.read_text(errors="replace")[-3000:] if smart.log_file.exists() else ""
    console = "\n".join(page.console_log[-20:])  # type: ignore[attr-defined]
    visited = "\n".join(page.visited)  # type: ignore[attr-defined]
    return (
        f"\nURL: {page.url}\nVISITED:\n{visited}\nBODY:\n{body}\nCONSOLE:\n{console}"
        f"\nSERVER LOG:\n{log}"
    )


def _step(page: Page, smart: Smart, selector: str) -> None:
    """Wait for one element of the AS's pages (selectors fixed by the HTML contract), or
    fail at once when the app or the AS shows an error (both use ``#error``) instead."""
    try:
        page.wait_for_selector(f"{selector}, #error:not(:empty)", state="visible")
    except Exception as exc:
        raise AssertionError(f"expected {selector!r}: {exc}{_where(page, smart)}") from None
    if page.locator(selector).count() == 0:
        raise AssertionError(f"expected {selector!r}, got an error{_where(page, smart)}")


def _log_in(page: Page, smart: Smart, username: str) -> None:
    _step(page, smart, "#username")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login")


def _allow(page: Page, smart: Smart) -> None:
    _step(page, smart, "#allow")
    page.click("#allow")


def _app_result(page: Page, smart: Smart) -> dict[str, str]:
    """Wait until index.html has finished (``#status`` done or failed) and read it."""
    try:
        page.wait_for_url(f"{smart.app}/index.html*")
        page.wait_for_function(
            "['done', 'failed'].includes(document.getElementById('status')?.textContent)"
        )
    except Exception as exc:
        raise AssertionError(f"the app did not finish: {exc}{_where(page, smart)}") from None
    ids = ["status", "error", "patient-name", "patient-id", "observation-count"]
    ids += ["observation-codes", "fhir-user", "granted-scope", "refresh-token"]
    return {i: page.text_content(f"#{i}") or "" for i in ids}


def _assert_shows(result: dict[str, str], name: str, pid: str, codes: list[str]) -> None:
    assert result["error"] == "", result
    assert result["status"] == "done", result
    assert result["patient-name"] == name
    assert result["patient-id"] == pid
    assert result["observation-count"] == str(len(codes))
    assert result["observation-codes"] == ",".join(codes)


def _probe(page: Page, path: str) -> Any:
    """Ask the FHIR API for ``path`` with the app's own token (fhirclient in the page):
    the resource or Bundle, or the HTTP status it was refused with."""
    return page.evaluate(
        """async (path) => {
            try { return await window.smartClient.request(path); }
            catch (e) { return e.status || e.statusCode || String(e); }
        }""",
        path,
    )


def _launch_standalone(page: Page, smart: Smart) -> None:
    page.goto(f"{smart.app}/launch.html?iss={quote(smart.fhir_base, safe='')}")


def test_standalone_launch_as_practitioner_picks_a_patient(page: Page, smart: Smart) -> None:
    _launch_standalone(page, smart)
    _step(page, smart, "#username")
    assert page.get_attribute("html", "lang") == "en"
    _log_in(page, smart, smart.practitioner)
    _step(page, smart, "button[name=patient][value=john]")
    page.fill("#patient-search", "Ana")  # the picker's search box narrows the list
    with page.expect_navigation():
        page.press("#patient-search", "Enter")
    _step(page, smart, "button[name=patient][value=ana]")
    assert page.locator("button[name=patient][value=john]").count() == 0, _where(page, smart)
    page.click("button[name=patient][value=ana]")
    _allow(page, smart)
    result = _app_result(page, smart)
    _assert_shows(result, "Ana María García", "ana", ANA_CODES)
    assert result["fhir-user"] == "Practitioner/doc"
    granted = result["granted-scope"].split()
    assert {"patient/Patient.rs", "patient/Observation.rs", "offline_access"} <= set(granted)
    assert result["refresh-token"] == "yes"  # offline_access was asked and granted
    [authorize] = page.authorize_requests  # type: ignore[attr-defined]
    sent = parse_qs(urlsplit(authorize).query)
    assert sent["code_challenge_method"] == ["S256"] and sent["aud"] == [smart.fhir_base]
    # the token is bound to the picked patient: the other one is out of reach
    assert _probe(page, "Patient/john") in (403, 404)
    john_obs = _probe(page, "Observation?patient=john")
    assert john_obs in (403, 404) or not john_obs.get("entry"), john_obs


@pytest.mark.parametrize("page", ["es-ES"], indirect=True)
def test_standalone_launch_as_patient_user_shows_own_record(page: Page, smart: Smart) -> None:
    _launch_standalone(page, smart)
    _step(page, smart, "#username")
    assert page.get_attribute("html", "lang") == "es"  # from the browser's Accept-Language
    _log_in(page, smart, smart.patient_user)
    _step(page, smart, "#allow")
    assert page.get_attribute("html", "lang") == "es"
    assert page.locator("button[name=patient], #patient-search").count() == 0  # no picker
    page.click("#allow")
    result = _app_result(page, smart)
    _assert_shows(result, "John Smith", "john", JOHN_CODES)
    assert result["fhir-user"] == "Patient/john"
    # a patient user sees only their own record, even when asking for everyone's
    patients = _probe(page, "Patient")
    assert [e["resource"]["id"] for e in patients.get("entry", [])] == ["john"], patients
    assert _probe(page, "Patient/ana") in (403, 404)
    assert _probe(page, "Observation/ana-hr") in (403, 404)


def test_ehr_launch_from_the_clinician_page(page: Page, smart: Smart) -> None:
    page.goto(f"{smart.root}/auth/ehr-launch")
    _log_in(page, smart, smart.practitioner)
    _step(page, smart, "#client")
    page.select_option("#client", CLIENT_ID)
    page.fill("#launch-patient", "ana")
    page.click("#launch")
    _allow(page, smart)
    result = _app_result(page, smart)
    _assert_shows(result, "Ana María García", "ana", ANA_CODES)
    assert result["fhir-user"] == "Practitioner/doc"
    assert _probe(page, "Patient/john") in (403, 404)  # patient/*.rs: only the launch patient
    launches = [u for u in page.visited if u.startswith(f"{smart.app}/launch.html?")]  # type: ignore[attr-defined]
    assert len(launches) == 1, _where(page, smart)
    query = parse_qs(urlsplit(launches[0]).query)
    assert query["iss"] == [smart.fhir_base] and len(query["launch"]) == 1, launches
    # the launch id is single-use: opening the same launch URL again is refused
    page.goto(launches[0])
    again = _app_result(page, smart)
    assert again["status"] == "failed" and again["error"].startswith("invalid_request"), again


def test_second_factor_is_asked_in_the_browser(page: Page, smart: Smart) -> None:
    _launch_standalone(page, smart)
    _log_in(page, smart, smart.totp_user)
    _step(page, smart, "#totp")  # the password alone is not enough
    assert page.locator("button[name=patient], #allow").count() == 0
    page.fill("#password", PASSWORD)
    page.fill("#totp", pyotp.TOTP(smart.totp_secret).now())
    page.click("#login")
    _step(page, smart, "button[name=patient][value=ana]")
    page.click("button[name=patient][value=ana]")
    _allow(page, smart)
    _assert_shows(_app_result(page, smart), "Ana María García", "ana", ANA_CODES)


def test_denied_consent_reaches_the_app_as_access_denied(page: Page, smart: Smart) -> None:
    _launch_standalone(page, smart)
    _log_in(page, smart, smart.patient_user)
    _step(page, smart, "#deny")
    page.click("#deny")
    result = _app_result(page, smart)
    assert result["status"] == "failed", result
    assert result["error"].startswith("access_denied"), result
    assert result["patient-id"] == ""


def test_public_app_refreshes_its_token(page: Page, smart: Smart) -> None:
    """fhirclient's ``client.refresh()`` as it ships: a cross-origin POST of
    ``grant_type=refresh_token&refresh_token=...`` with no client authentication and no
    ``client_id`` (SMART App Launch 2.2, "Refresh access token": public apps cannot
    authenticate; RFC 6749 section 6 lists no client_id). Refresh tokens rotate on use,
    and the new access token works."""
    _launch_standalone(page, smart)
    _log_in(page, smart, smart.patient_user)
    _allow(page, smart)
    result = _app_result(page, smart)
    assert result["status"] == "done" and result["refresh-token"] == "yes", result
    refreshed = page.evaluate(
        """async () => {
            const client = window.smartClient;
            const before = { ...client.state.tokenResponse };
            try { await client.refresh(); } catch (e) { return String(e); }
            const after = client.state.tokenResponse;
            const patient = await client.request("Patient/" + client.patient.id);
            return {
                access: !!after.access_token && after.access_token !== before.access_token,
                refresh: !!after.refresh_token && after.refresh_token !== before.refresh_token,
                patient: patient.id,
            };
        }"""
    )
    assert refreshed == {"access": True, "refresh": True, "patient": "john"}, refreshed
