"""Response headers, attacked as a browser on another origin would (issue 11, finding 9).

- Health data and tokens must not be kept by shared caches: ``Cache-Control: no-store``
  (RFC 9111 section 5.2.2.5: "a cache MUST NOT store any part of either the immediate
  request or the response") on every answer, errors and preflights included.
- ``X-Content-Type-Options: nosniff``, so a browser never sniffs a resource as HTML.
- CORS only where browser apps need it: the FHIR API and the token endpoint. The login
  page answered ``Access-Control-Allow-Origin: *``, so any site could read it.
- With allowed origins configured, a preflight from any other origin is refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from smart_as_helpers import REDIRECT, Smart, app_tokens, seed, smart_server

from smart_auth.clients import create_client
from smart_auth.users import create_user

EVIL = "https://evil.example.com"
APP = "https://app.example.org"


@pytest.fixture(scope="module")
def smart(mongo_url: str) -> Iterator[Smart]:
    with smart_server(mongo_url) as s:
        seed(s.settings, [{"resourceType": "Patient", "id": "p1"}])
        create_client(s.db, "app", "public", redirect_uris=[REDIRECT])
        create_user(s.db, "ana", "patient-pass", "patient", fhir_user="Patient/p1")
        yield s


def preflight(c: httpx.Client, path: str, origin: str, method: str = "POST") -> httpx.Response:
    return c.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "Content-Type",
        },
    )


def assert_protected(r: httpx.Response) -> None:
    assert r.headers.get("cache-control") == "no-store", (r.request.url, r.headers)
    assert r.headers.get("x-content-type-options") == "nosniff", (r.request.url, r.headers)


def test_no_store_and_nosniff_on_every_answer(smart: Smart) -> None:
    c = smart.client
    tokens = app_tokens(c, "launch/patient patient/*.rs", "ana", "patient-pass")
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    answers = {
        "read with a token": c.get("/fhir/Patient/p1", headers=bearer),
        "search with a token": c.get("/fhir/Patient", headers=bearer),
        "HEAD": c.head("/fhir/Patient/p1", headers=bearer),
        "no token (401)": c.get("/fhir/Patient/p1"),
        "unknown endpoint (404)": c.get("/fhir/NoSuchType/1", headers=bearer),
        "metadata": c.get("/fhir/metadata"),
        "smart-configuration": c.get("/fhir/.well-known/smart-configuration"),
        "token error": c.post("/auth/token", data={"grant_type": "password"}),
        "login page": c.get("/auth/login"),
        "jwks": c.get("/auth/jwks"),
        "preflight": preflight(c, "/fhir/Patient", APP),
    }
    for what, r in answers.items():
        assert r.status_code < 500, (what, r.text)
        assert_protected(r)


def test_no_cors_on_login_pages(smart: Smart) -> None:
    """Browser apps call only the FHIR API and the token endpoint cross-origin."""
    c = smart.client
    origin = {"Origin": EVIL}
    for r in (
        c.get("/auth/login", headers=origin),
        c.post("/auth/login", headers=origin, data={"username": "ana", "password": "x"}),
        c.get("/auth/ehr-launch", headers=origin),
        preflight(c, "/auth/login", EVIL),
        preflight(c, "/auth/consent/x", EVIL),
    ):
        assert "access-control-allow-origin" not in r.headers, (r.request.url, r.headers)
    # Where apps need it, the default ('*') still answers any origin.
    assert preflight(c, "/auth/token", EVIL).headers["access-control-allow-origin"] == "*"
    token = c.post("/auth/token", headers=origin, data={"grant_type": "password"})
    assert token.headers["access-control-allow-origin"] == "*"
    assert c.get("/fhir/metadata", headers=origin).headers["access-control-allow-origin"] == "*"


def test_configured_origins_refuse_other_preflights(mongo_url: str) -> None:
    with smart_server(mongo_url, cors_origins=f"{APP}, http://localhost:3000") as s:
        c = s.client
        for path in ("/fhir/Patient", "/auth/token"):
            refused = preflight(c, path, EVIL)
            assert refused.status_code == 400, refused.text
            assert "access-control-allow-origin" not in refused.headers
            outcome = refused.json()
            assert outcome["resourceType"] == "OperationOutcome"
            assert outcome["issue"][0]["code"] == "security"
            assert outcome["issue"][0]["expression"] == ["Origin"]
            assert_protected(refused)
            allowed = preflight(c, path, APP)
            assert allowed.status_code == 200
            assert allowed.headers["access-control-allow-origin"] == APP
        other = c.get("/fhir/metadata", headers={"Origin": EVIL})
        assert "access-control-allow-origin" not in other.headers
