"""Bearer-token authentication of the FHIR API (RFC 6750 section 3, SMART App Launch
2.2), CORS for browser apps, and `serve --no-auth`.

RFC 6750 3.1: a request without credentials gets a bare challenge; "invalid_token: The
access token provided is expired, revoked, malformed, or invalid for other reasons"
gets 401 with error="invalid_token". Every refusal is also an OperationOutcome."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient
from smart_helpers import AUDIENCE, TokenMint, claims_for, smart_client, unsigned_token

from fhir_server.testing import ServerProcess
from smart_auth.tokens import KeyRing, issue_access_token

World = tuple[TestClient, TokenMint]


@pytest.fixture(scope="module")
def world(mongo_url: str) -> Iterator[World]:
    with smart_client(mongo_url) as found:
        yield found


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refused(r: httpx.Response, code: str, error: str | None) -> None:
    assert r.status_code == 401, r.text
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="fhir"')
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge and "error_description=" in challenge
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code


@pytest.mark.parametrize(
    "url",
    ["Patient", "Patient/pa", "Observation/_history", "_history", "", "Patient/pa/$everything"],
)
def test_missing_token(world: World, url: str) -> None:
    client, _ = world
    assert_refused(client.get(f"/fhir/{url}"), "login", None)


def test_missing_token_on_writes_bundles_and_unknown_types(world: World) -> None:
    client, _ = world
    assert_refused(client.post("/fhir/Patient", json={"resourceType": "Patient"}), "login", None)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": []}
    assert_refused(client.post("/fhir", json=bundle), "login", None)
    # no hint whether a type exists before authentication
    assert_refused(client.get("/fhir/NoSuchType/1"), "login", None)


def test_not_a_bearer_token(world: World) -> None:
    client, _ = world
    r = client.get("/fhir/Patient", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_refused(r, "login", "invalid_request")


def test_garbage_tampered_and_unsigned_tokens(world: World) -> None:
    client, mint = world
    assert_refused(
        client.get("/fhir/Patient", headers=bearer("garbage")), "security", "invalid_token"
    )
    assert_refused(
        client.get("/fhir/Patient", headers=bearer("a.b.c")), "security", "invalid_token"
    )
    token = mint.token("system/*.rs")
    header, _payload, signature = token.split(".")
    other = mint.token("system/*.cruds").split(".")[1]  # a wider payload, old signature
    tampered = f"{header}.{other}.{signature}"
    assert_refused(
        client.get("/fhir/Patient", headers=bearer(tampered)), "security", "invalid_token"
    )
    none = unsigned_token(claims_for("system/*.cruds"))
    assert_refused(client.get("/fhir/Patient", headers=bearer(none)), "security", "invalid_token")
    assert client.get("/fhir/Patient", headers=bearer(token)).status_code == 200


def test_token_signed_by_another_key_ring(world: World, mongo_url: str) -> None:
    client, _ = world
    with MongoClient(mongo_url) as mc:
        foreign = KeyRing(mc["test_foreign_keys"])
        token, _ = issue_access_token(
            foreign,
            issuer="x",
            audience=AUDIENCE,
            client_id="evil",
            scope="system/*.rs",
            lifetime=300,
        )
        mc.drop_database("test_foreign_keys")
    assert_refused(client.get("/fhir/Patient", headers=bearer(token)), "security", "invalid_token")


def test_expired_token(world: World) -> None:
    client, mint = world
    token = mint.token("system/*.rs", lifetime=-120)
    assert_refused(client.get("/fhir/Patient", headers=bearer(token)), "expired", "invalid_token")


def test_wrong_audience(world: World) -> None:
    client, mint = world
    for audience in (
        "http://other.example.org/fhir",
        "http://testserver",
        "http://testserver/auth",
    ):
        token = mint.token("system/*.rs", audience=audience)
        r = client.get("/fhir/Patient", headers=bearer(token))
        assert_refused(r, "security", "invalid_token")


def test_revoked_token(world: World) -> None:
    client, mint = world
    token, claims = mint.issue("system/*.rs")
    assert client.get("/fhir/Patient", headers=bearer(token)).status_code == 200
    mint.revoke(claims)
    r = client.get("/fhir/Patient", headers=bearer(token))
    assert_refused(r, "security", "invalid_token")
    assert "revoked" in r.json()["issue"][0]["diagnostics"]


def test_batch_entries_carry_the_token(world: World) -> None:
    """Entries are dispatched through the app with the batch's own Authorization."""
    client, mint = world
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Patient/pa"}}],
    }
    r = client.post("/fhir", json=bundle, headers=mint.headers("system/*.rs"))
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["status"].startswith("200")


def test_metadata_and_smart_configuration_are_public(world: World) -> None:
    client, _ = world
    assert client.get("/fhir/metadata").status_code == 200
    assert client.head("/fhir/metadata").status_code == 200
    r = client.get("/fhir/.well-known/smart-configuration")
    assert r.status_code != 401
    # metadata is only public for reading
    assert client.post("/fhir/metadata").status_code == 401


# --- CORS -------------------------------------------------------------------------------


def test_cors_preflight_is_answered_before_authentication(world: World) -> None:
    client, _ = world
    r = client.options(
        "/fhir/Observation",
        headers={
            "Origin": "https://app.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type, If-None-Exist",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    for header in ("authorization", "content-type", "if-none-exist", "if-match", "prefer"):
        assert header in allowed
    assert "POST" in r.headers["Access-Control-Allow-Methods"]


def test_cors_headers_on_answers_and_refusals(world: World) -> None:
    client, mint = world
    origin = {"Origin": "https://app.example.org"}
    r = client.get("/fhir/Patient/pa", headers={**origin, **mint.headers("system/*.rs")})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    exposed = r.headers["Access-Control-Expose-Headers"].lower()
    for header in (
        "location",
        "content-location",
        "etag",
        "last-modified",
        "www-authenticate",
        "x-progress",
        "retry-after",
    ):
        assert header in exposed
    refused = client.get("/fhir/Patient/pa", headers=origin)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "*"  # the app can read the 401


def test_cors_origins_setting(mongo_url: str) -> None:
    from fhir_server.app import create_app
    from fhir_server.config import Settings

    settings = Settings(
        mongo_url=mongo_url,
        database="test_cors_origins",
        auth_enabled=False,
        cors_origins="https://app.example.org, http://localhost:3000",
    )
    with TestClient(create_app(settings)) as client:
        ok = client.get("/fhir/metadata", headers={"Origin": "http://localhost:3000"})
        assert ok.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        other = client.get("/fhir/metadata", headers={"Origin": "https://evil.example.com"})
        assert "Access-Control-Allow-Origin" not in other.headers
        preflight = client.options(
            "/fhir/Patient",
            headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 400
    with MongoClient(mongo_url) as mc:
        mc.drop_database("test_cors_origins")


# --- real server processes ----------------------------------------------------------------


def test_serve_requires_tokens_and_no_auth_warns(mongo_url: str, tmp_path: Path) -> None:
    database = f"test_serve_auth_{int(time.time() * 1000)}"
    try:
        with ServerProcess(mongo_url=mongo_url, database=database, auth=True) as server:
            r = httpx.get(f"{server.base_url}/Patient")
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="fhir"'
            mint = TokenMint(mongo_url, database, audience=server.base_url)
            try:
                r = httpx.get(f"{server.base_url}/Patient", headers=mint.headers("system/*.rs"))
                assert r.status_code == 200, r.text
            finally:
                mint.close()
        log = tmp_path / "serve.log"
        server = ServerProcess(mongo_url=mongo_url, database=database, log_file=log)
        server.args.append("--no-auth")
        server.env.pop("FHIR_AUTH_ENABLED")
        with server:
            assert httpx.get(f"{server.base_url}/Patient").status_code == 200
        assert "WARNING: authorization is OFF" in log.read_text()
        env_log = tmp_path / "env.log"
        with ServerProcess(mongo_url=mongo_url, database=database, log_file=env_log) as server:
            assert httpx.get(f"{server.base_url}/Patient").status_code == 200
        assert "WARNING: authorization is OFF" in env_log.read_text()  # FHIR_AUTH_ENABLED=false
    finally:
        with MongoClient(mongo_url) as mc:
            mc.drop_database(database)
