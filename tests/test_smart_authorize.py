"""The SMART authorization code flow (SMART App Launch 2.2, "Launch app: standalone" and
"EHR launch"), driven through the server's real HTML forms with a TestClient."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from smart_as_helpers import (
    FHIR,
    REDIRECT,
    Smart,
    app_tokens,
    authorize_params,
    authorize_to_code,
    csrf,
    form_action,
    location,
    pkce,
    query_of,
    seed,
    smart_server,
    token_request,
)

from smart_auth.clients import create_client
from smart_auth.users import create_user

PATIENTS = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"given": ["Ana"], "family": "García"}],
        "birthDate": "1980-02-03",
    },
    {"resourceType": "Patient", "id": "p2", "name": [{"given": ["Bob"], "family": "Smith"}]},
    {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p1"},
    },
]


@pytest.fixture
def smart(mongo_url: str) -> Iterator[Smart]:
    with smart_server(mongo_url) as s:
        seed(s.settings, PATIENTS)
        create_client(
            s.db,
            "app",
            "public",
            redirect_uris=[REDIRECT],
            launch_url="http://localhost:9999/launch",
        )
        create_user(s.db, "doc", "doctor-pass", "practitioner", fhir_user="Practitioner/d1")
        create_user(s.db, "ana", "patient-pass", "patient", fhir_user="Patient/p1")
        yield s


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_smart_configuration_has_the_required_fields(smart: Smart) -> None:
    r = smart.client.get("/fhir/.well-known/smart-configuration")
    assert r.status_code == 200
    conf = r.json()
    assert conf["issuer"] == "http://localhost/auth"
    assert conf["authorization_endpoint"] == "http://localhost/auth/authorize"
    assert conf["token_endpoint"] == "http://localhost/auth/token"
    assert conf["jwks_uri"] == "http://localhost/auth/jwks"
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert conf["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    for cap in (
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "permission-v2",
        "context-standalone-patient",
        "sso-openid-connect",
        "authorize-post",
    ):
        assert cap in conf["capabilities"]
    assert "registration_endpoint" not in conf
    oidc = smart.client.get("/auth/.well-known/openid-configuration").json()
    assert oidc["issuer"] == conf["issuer"]
    keys = smart.client.get("/auth/jwks").json()["keys"]
    assert keys and all("d" not in k for k in keys)


def test_standalone_launch_with_patient_picker_then_fhir_read(smart: Smart) -> None:
    c = smart.client
    verifier, challenge = pkce()
    scope = (
        "launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs"
    )
    params = authorize_params("app", scope, challenge, nonce="n-1")
    back = authorize_to_code(c, params, "doc", "doctor-pass", patient="p1")
    assert back["state"] == "st-123"
    r = token_request(
        c,
        {
            "grant_type": "authorization_code",
            "code": back["code"],
            "redirect_uri": REDIRECT,
            "client_id": "app",
            "code_verifier": verifier,
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["patient"] == "p1"
    assert body["need_patient_banner"] is True
    assert set(body["scope"].split()) == set(scope.split())
    assert body["fhirUser"] == f"{FHIR}/Practitioner/d1"
    assert body["refresh_token"]
    at = claims(body["access_token"])
    assert at["aud"] == FHIR and at["patient"] == "p1" and at["client_id"] == "app"
    idt = claims(body["id_token"])
    assert idt["aud"] == "app" and idt["nonce"] == "n-1" and idt["sub"] == "doc"
    assert idt["fhirUser"] == f"{FHIR}/Practitioner/d1"
    read = c.get("/fhir/Patient/p1", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert read.status_code == 200, read.text
    assert read.json()["id"] == "p1"
    # the code is single use (RFC 6749 section 4.1.2)
    again = token_request(
        c,
        {
            "grant_type": "authorization_code",
            "code": back["code"],
            "redirect_uri": REDIRECT,
            "client_id": "app",
            "code_verifier": verifier,
        },
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_picker_search_filters_by_name(smart: Smart) -> None:
    c = smart.client
    _, challenge = pkce()
    params = authorize_params("app", "launch/patient patient/*.rs", challenge)
    step = location(c.get("/auth/authorize?" + urlencode(params)))
    login_page = c.get(location(c.get(step)))
    from smart_as_helpers import login

    c.get(location(login(c, login_page, "doc", "doctor-pass")))
    page = c.get(step + "&q=garc")
    assert 'id="patient-search"' in page.text
    assert 'value="p1"' in page.text and 'value="p2"' not in page.text
    assert "1980-02-03" in page.text


def test_patient_user_gets_own_record_and_unticked_scopes_are_not_granted(smart: Smart) -> None:
    c = smart.client
    verifier, challenge = pkce()
    scope = "launch/patient patient/Patient.rs patient/Observation.rs user/Patient.rs"
    back = authorize_to_code(
        c,
        authorize_params("app", scope, challenge),
        "ana",
        "patient-pass",
        untick=("patient/Observation.rs",),
    )
    r = token_request(
        c,
        {
            "grant_type": "authorization_code",
            "code": back["code"],
            "redirect_uri": REDIRECT,
            "client_id": "app",
            "code_verifier": verifier,
        },
    )
    body = r.json()
    assert body["patient"] == "p1"
    # user/ scopes are not for patients; the unticked scope is not granted
    assert body["scope"].split() == ["launch/patient", "patient/Patient.rs"]
    assert "refresh_token" not in body


def test_deny_redirects_with_access_denied(smart: Smart) -> None:
    _, challenge = pkce()
    back = authorize_to_code(
        smart.client,
        authorize_params("app", "patient/*.rs", challenge),
        "ana",
        "patient-pass",
        decision="deny",
    )
    assert back == {"error": "access_denied", "state": "st-123"} | {
        k: v for k, v in back.items() if k == "error_description"
    }


def test_pages_are_bilingual(smart: Smart) -> None:
    c = smart.client
    es = c.get("/auth/login", headers={"Accept-Language": "es-ES,es;q=0.9"})
    assert '<html lang="es">' in es.text and "Contraseña" in es.text
    assert '<label for="password">' in es.text and 'id="lang-switch"' in es.text
    en = c.get("/auth/login?lang=en", headers={"Accept-Language": "es"})
    assert '<html lang="en">' in en.text and "Password" in en.text


def test_refresh_token_rotation_and_reuse_revokes_the_family(smart: Smart) -> None:
    c = smart.client
    first = app_tokens(c, "offline_access patient/*.rs", "ana", "patient-pass")
    r1 = token_request(
        c,
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": "app",
        },
    )
    assert r1.status_code == 200, r1.text
    second = r1.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["patient"] == "p1" and second["scope"] == first["scope"]
    # reusing the rotated token fails, and revokes the newer one too
    reuse = token_request(
        c,
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": "app",
        },
    )
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    newer = token_request(
        c,
        {
            "grant_type": "refresh_token",
            "refresh_token": second["refresh_token"],
            "client_id": "app",
        },
    )
    assert newer.status_code == 400


def test_ehr_launch_is_single_use(smart: Smart) -> None:
    c = smart.client
    page = c.get("/auth/ehr-launch")
    login_page = c.get(location(page))
    from smart_as_helpers import login

    r = login(c, login_page, "doc", "doctor-pass")
    page = c.get(location(r))
    assert 'id="client"' in page.text and 'id="launch-patient"' in page.text
    r = c.post(
        "/auth/ehr-launch",
        data={"csrf": csrf(page), "client_id": "app", "patient": "p1", "encounter": "e1"},
    )
    target = location(r)
    assert r.status_code == 303 and target.startswith("http://localhost:9999/launch?")
    q = query_of(target)
    assert q["iss"] == FHIR
    verifier, challenge = pkce()
    params = authorize_params(
        "app", "launch openid fhirUser patient/*.rs", challenge, launch=q["launch"]
    )
    back = authorize_to_code(c, params, "doc", "doctor-pass")
    body = token_request(
        c,
        {
            "grant_type": "authorization_code",
            "code": back["code"],
            "redirect_uri": REDIRECT,
            "client_id": "app",
            "code_verifier": verifier,
        },
    ).json()
    assert body["patient"] == "p1" and body["encounter"] == "e1"
    assert body["need_patient_banner"] is False
    # second use of the same launch id
    again = c.get("/auth/authorize?" + urlencode(params))
    err = query_of(location(again))
    assert err["error"] == "invalid_request" and err["state"] == "st-123"


def test_ehr_launch_refuses_unknown_patient_and_patient_users(smart: Smart) -> None:
    c = smart.client
    login_page = c.get(location(c.get("/auth/ehr-launch")))
    from smart_as_helpers import login

    page = c.get(location(login(c, login_page, "doc", "doctor-pass")))
    r = c.post("/auth/ehr-launch", data={"csrf": csrf(page), "client_id": "app", "patient": "nope"})
    assert r.status_code == 400 and 'id="launch-error"' in r.text
    r = c.post("/auth/ehr-launch", data={"csrf": "forged", "client_id": "app", "patient": "p1"})
    assert r.status_code == 403
    _ = form_action


def test_authorize_by_post_and_userinfo(smart: Smart) -> None:
    """authorize-post capability: the same request as a form POST."""
    c = smart.client
    verifier, challenge = pkce()
    params = authorize_params("app", "openid fhirUser patient/*.rs", challenge)
    r = c.post("/auth/authorize", data=params)
    assert r.status_code == 303 and location(r).startswith("/auth/consent/")
    back = authorize_to_code(c, params, "ana", "patient-pass")
    body = token_request(
        c,
        {
            "grant_type": "authorization_code",
            "code": back["code"],
            "redirect_uri": REDIRECT,
            "client_id": "app",
            "code_verifier": verifier,
        },
    ).json()
    info = c.get("/auth/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.json() == {"sub": "ana", "fhirUser": f"{FHIR}/Patient/p1"}
    assert c.get("/auth/userinfo").status_code == 401


def test_expired_launch_is_refused(smart: Smart) -> None:
    from datetime import UTC, datetime, timedelta

    from smart_auth.launch import create_launch

    launch = create_launch(smart.db, "app", "doc", "p1", None)
    past = datetime.now(UTC) - timedelta(seconds=1)
    smart.db["auth_launches"].update_one({"_id": launch}, {"$set": {"expires": past}})
    _, challenge = pkce()
    params = authorize_params("app", "launch patient/*.rs", challenge, launch=launch)
    err = query_of(location(smart.client.get("/auth/authorize?" + urlencode(params))))
    assert err["error"] == "invalid_request"
    # a launch made for another client cannot be used either
    launch = create_launch(smart.db, "other-app", "doc", "p1", None)
    params = authorize_params("app", "launch patient/*.rs", challenge, launch=launch)
    err = query_of(location(smart.client.get("/auth/authorize?" + urlencode(params))))
    assert err["error"] == "invalid_request"


def test_operator_may_grant_only_administrative_reads(smart: Smart) -> None:
    create_user(smart.db, "ops", "operator-pass", "operator")
    verifier, challenge = pkce()
    scope = "user/Organization.rs user/Location.read user/Patient.rs user/Organization.cruds"
    back = authorize_to_code(
        smart.client, authorize_params("app", scope, challenge), "ops", "operator-pass"
    )
    body = token_request(
        smart.client,
        {
            "grant_type": "authorization_code",
            "code": back["code"],
            "redirect_uri": REDIRECT,
            "client_id": "app",
            "code_verifier": verifier,
        },
    ).json()
    assert body["scope"].split() == ["user/Organization.rs", "user/Location.read"]
    assert "patient" not in body


def test_capability_statement_declares_smart_security(smart: Smart) -> None:
    rest = smart.client.get("/fhir/metadata").json()["rest"][0]
    security = rest["security"]
    assert security["cors"] is True
    coding = security["service"][0]["coding"][0]
    assert coding == {
        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
        "code": "SMART-on-FHIR",
    }
    ext = security["extension"][0]
    assert ext["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    uris = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert uris == {
        "authorize": "http://localhost/auth/authorize",
        "token": "http://localhost/auth/token",
        "introspect": "http://localhost/auth/introspect",
        "revoke": "http://localhost/auth/revoke",
    }


def test_auth_off_has_no_authorization_server(client: Any) -> None:
    """With authorization disabled nothing advertises it (clients then do not try)."""
    assert client.get("/fhir/.well-known/smart-configuration").status_code == 404
    assert client.get("/auth/authorize").status_code == 404
    assert "security" not in client.get("/fhir/metadata").json()["rest"][0]


def test_public_client_may_refresh_without_client_id(smart: Smart) -> None:
    """RFC 6749 section 6 lists no client_id, and fhirclient sends none: the refresh token
    names its (public) client."""
    c = smart.client
    first = app_tokens(c, "offline_access patient/*.rs", "ana", "patient-pass")
    r = token_request(c, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    assert r.json()["patient"] == "p1"
    r = token_request(c, {"grant_type": "refresh_token", "refresh_token": "unknown"})
    assert r.status_code in (400, 401) and r.json()["error"] in ("invalid_client", "invalid_grant")
