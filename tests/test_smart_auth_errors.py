"""Bad input at the authorization server: every one refused with the right OAuth error,
and never a redirect to a URI the client did not register (open redirect)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import urlencode

import pyotp
import pytest
from smart_as_helpers import (
    REDIRECT,
    Smart,
    app_tokens,
    authorize_params,
    authorize_to_code,
    location,
    login,
    pkce,
    query_of,
    seed,
    smart_server,
    token_request,
)

from smart_auth.clients import create_client
from smart_auth.users import create_user


@pytest.fixture
def smart(mongo_url: str) -> Iterator[Smart]:
    with smart_server(mongo_url) as s:
        seed(s.settings, [{"resourceType": "Patient", "id": "p1"}])
        create_client(s.db, "app", "public", redirect_uris=[REDIRECT])
        s.secret = create_client(  # type: ignore[attr-defined]
            s.db, "conf", "confidential-symmetric", redirect_uris=[REDIRECT]
        )["client_secret"]
        create_user(s.db, "ana", "patient-pass", "patient", fhir_user="Patient/p1")
        yield s


def _authorize(s: Smart, **params: str) -> tuple[int, str | None]:
    r = s.client.get("/auth/authorize?" + urlencode(params))
    return r.status_code, r.headers.get("location")


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"redirect_uri": "http://evil.example/cb"}, "unregistered redirect_uri"),
        ({"redirect_uri": REDIRECT + "/extra"}, "prefix of a registered redirect_uri"),
        ({"redirect_uri": REDIRECT + "?x=1"}, "query added to the redirect_uri"),
        ({"client_id": "nobody"}, "unknown client"),
    ],
)
def test_no_redirect_to_unregistered_uris(smart: Smart, change: dict[str, str], what: str) -> None:
    _, challenge = pkce()
    params = authorize_params("app", "patient/*.rs", challenge) | change
    status, loc = _authorize(smart, **params)
    assert status == 400, what
    assert loc is None, what


@pytest.mark.parametrize(
    ("change", "drop"),
    [
        ({"aud": "http://elsewhere/fhir"}, None),  # aud must be this FHIR server
        ({"code_challenge_method": "plain"}, None),  # SMART 2.2: plain must not be supported
        ({}, "code_challenge"),  # PKCE is required for public clients
        ({"response_type": "token"}, None),  # implicit flow is not offered
    ],
)
def test_invalid_requests_go_back_to_the_app_with_an_error(
    smart: Smart, change: dict[str, str], drop: str | None
) -> None:
    _, challenge = pkce()
    params = authorize_params("app", "patient/*.rs", challenge) | change
    if drop:
        params.pop(drop)
        params.pop("code_challenge_method")
    status, loc = _authorize(smart, **params)
    assert status == 302 and loc is not None and loc.startswith(REDIRECT + "?")
    q = query_of(loc)
    assert q["error"] in ("invalid_request", "unsupported_response_type")
    assert q["state"] == "st-123"


def _code(s: Smart, challenge: str) -> str:
    back = authorize_to_code(
        s.client, authorize_params("app", "patient/*.rs", challenge), "ana", "patient-pass"
    )
    return back["code"]


def test_pkce_mismatch_and_missing_verifier(smart: Smart) -> None:
    _, challenge = pkce()
    code = _code(smart, challenge)
    other, _ = pkce()
    base = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "app",
    }
    r = token_request(smart.client, base | {"code_verifier": other})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # the code was consumed by the failed attempt: a stolen code cannot be retried
    _, challenge2 = pkce()
    code2 = _code(smart, challenge2)
    r = token_request(smart.client, base | {"code": code2})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_token_redirect_uri_must_match(smart: Smart) -> None:
    verifier, challenge = pkce()
    code = _code(smart, challenge)
    r = token_request(
        smart.client,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT + "x",
            "client_id": "app",
            "code_verifier": verifier,
        },
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_code_of_another_client_is_refused(smart: Smart) -> None:
    verifier, challenge = pkce()
    code = _code(smart, challenge)
    basic = base64.b64encode(f"conf:{smart.secret}".encode()).decode()  # type: ignore[attr-defined]
    r = token_request(
        smart.client,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        headers={"Authorization": f"Basic {basic}"},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_confidential_client_secret_basic_and_wrong_secret(smart: Smart) -> None:
    c = smart.client
    verifier, challenge = pkce()
    back = authorize_to_code(
        c, authorize_params("conf", "patient/*.rs", challenge), "ana", "patient-pass"
    )
    data = {
        "grant_type": "authorization_code",
        "code": back["code"],
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    wrong = base64.b64encode(b"conf:not-the-secret").decode()
    r = token_request(c, data, headers={"Authorization": f"Basic {wrong}"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert r.headers["www-authenticate"].startswith("Basic")
    good = base64.b64encode(f"conf:{smart.secret}".encode()).decode()  # type: ignore[attr-defined]
    r = token_request(c, data, headers={"Authorization": f"Basic {good}"})
    # the wrong-secret attempt never reached the code, so it is still valid
    assert r.status_code == 200, r.text
    # a confidential client cannot pretend to be public
    verifier, challenge = pkce()
    back = authorize_to_code(
        c, authorize_params("conf", "patient/*.rs", challenge), "ana", "patient-pass"
    )
    r = token_request(
        c, data | {"code": back["code"], "client_id": "conf", "code_verifier": verifier}
    )
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"


def _login_page(s: Smart) -> object:
    return s.client.get("/auth/login")


def test_throttle_after_repeated_failures(smart: Smart) -> None:
    """Per username and client address (tests/test_login_throttle.py has the attack)."""
    c = smart.client
    for _ in range(5):
        r = login(c, c.get("/auth/login"), "ana", "wrong-password")
        assert r.status_code == 401 and 'aria-invalid="true"' in r.text
    r = login(c, c.get("/auth/login"), "ana", "patient-pass")
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    assert r.headers["Retry-After"] == "1"
    assert smart.db["auth_login_attempts"].count_documents({"username": "ana", "ok": False}) == 5


def test_totp_second_factor(smart: Smart) -> None:
    c = smart.client
    secret = create_user(smart.db, "doc", "doctor-pass", "practitioner", totp=True)["totp_secret"]
    r = login(c, c.get("/auth/login"), "doc", "doctor-pass")
    assert r.status_code == 401 and 'id="totp"' in r.text
    r = login(
        c,
        r,
        "doc",
        "doctor-pass",
        totp="000000" if pyotp.TOTP(secret).now() != "000000" else "111111",
    )
    assert r.status_code == 401 and 'id="totp"' in r.text and "not correct" in r.text
    code = pyotp.TOTP(secret).now()
    r = login(c, r, "doc", "doctor-pass", totp=code)
    assert r.status_code == 303
    # the same code cannot log in twice (RFC 6238 section 5.2)
    c.cookies.clear()
    r = login(c, c.get("/auth/login"), "doc", "doctor-pass", totp=code)
    assert r.status_code == 401 and 'id="totp"' in r.text


def test_must_reset_password(smart: Smart) -> None:
    c = smart.client
    create_user(smart.db, "imp", "initial-pass", "practitioner", must_reset_password=True)
    r = login(c, c.get("/auth/login"), "imp", "initial-pass")
    assert r.status_code == 403 and 'id="new_password"' in r.text
    r = login(c, r, "imp", "initial-pass", new_password="brand-new-pass")
    assert r.status_code == 303
    c.cookies.clear()
    r = login(c, c.get("/auth/login"), "imp", "brand-new-pass")
    assert r.status_code == 303


def test_login_never_redirects_off_site(smart: Smart) -> None:
    c = smart.client
    page = c.get("/auth/login?next=https://evil.example/")
    r = login(c, page, "ana", "patient-pass")
    assert location(r) == "/auth/ehr-launch"


def test_csrf_token_is_required(smart: Smart) -> None:
    r = smart.client.post("/auth/login", data={"username": "ana", "password": "patient-pass"})
    assert r.status_code == 403


def test_introspection_and_revocation(smart: Smart) -> None:
    c = smart.client
    tok = app_tokens(c, "offline_access patient/*.rs", "ana", "patient-pass")
    basic = {"Authorization": "Basic " + base64.b64encode(f"conf:{smart.secret}".encode()).decode()}  # type: ignore[attr-defined]
    info = c.post("/auth/introspect", data={"token": tok["access_token"]}, headers=basic).json()
    assert info["active"] is True and info["client_id"] == "app" and info["patient"] == "p1"
    assert info["scope"] == tok["scope"]
    assert c.post("/auth/introspect", data={"token": "garbage"}, headers=basic).json() == {
        "active": False
    }
    # no client authentication: refused
    assert c.post("/auth/introspect", data={"token": tok["access_token"]}).status_code in (400, 401)
    auth = {"Authorization": f"Bearer {tok['access_token']}"}
    assert c.get("/fhir/Patient/p1", headers=auth).status_code == 200
    r = c.post("/auth/revoke", data={"token": tok["access_token"], "client_id": "app"})
    assert r.status_code == 200
    info = c.post("/auth/introspect", data={"token": tok["access_token"]}, headers=basic).json()
    assert info == {"active": False}
    denied = c.get("/fhir/Patient/p1", headers=auth)
    assert denied.status_code == 401 and "www-authenticate" in denied.headers
    # refresh tokens are revoked with their family
    r = c.post("/auth/revoke", data={"token": tok["refresh_token"], "client_id": "app"})
    assert r.status_code == 200
    r = token_request(
        c,
        {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"], "client_id": "app"},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("POST", "/auth/token", {}),
        ("POST", "/auth/token", {"grant_type": "authorization_code", "code": "x"}),
        (
            "POST",
            "/auth/token",
            {"grant_type": "authorization_code", "code": "x", "client_id": "app"},
        ),
        ("POST", "/auth/token", {"grant_type": "refresh_token", "client_id": "app"}),
        (
            "POST",
            "/auth/token",
            {"grant_type": "refresh_token", "client_id": "app", "refresh_token": "nope"},
        ),
        (
            "POST",
            "/auth/token",
            {
                "grant_type": "client_credentials",
                "client_assertion": "a.b.c",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            },
        ),
        (
            "POST",
            "/auth/token",
            {
                "grant_type": "client_credentials",
                "client_assertion": "%%%",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            },
        ),
        ("POST", "/auth/token", {"grant_type": "password", "username": "a", "password": "b"}),
        ("POST", "/auth/introspect", {"client_id": "app"}),
        ("POST", "/auth/revoke", {"client_id": "app", "token": "x", "token_type_hint": "weird"}),
        ("GET", "/auth/authorize", {}),
        ("GET", "/auth/authorize", {"client_id": "app"}),
        (
            "GET",
            "/auth/authorize",
            {
                "response_type": "code",
                "client_id": "app",
                "redirect_uri": REDIRECT,
                "scope": "patient/Obs.zzz",
            },
        ),
        ("GET", "/auth/consent/unknown", {}),
        ("POST", "/auth/consent/unknown", {"csrf": "x"}),
        ("POST", "/auth/consent/unknown/patient", {}),
        ("GET", "/auth/userinfo", {}),
        ("POST", "/auth/ehr-launch", {}),
        ("POST", "/auth/logout", {}),
    ],
)
def test_garbage_never_gives_a_server_error(
    smart: Smart, method: str, path: str, data: dict[str, str]
) -> None:
    if method == "GET":
        r = smart.client.get(path + ("?" + urlencode(data) if data else ""))
    else:
        r = smart.client.post(path, data=data)
    assert r.status_code < 500, r.text
    if path in ("/auth/token", "/auth/introspect", "/auth/revoke") and r.status_code >= 400:
        assert "error" in r.json()


def test_confidential_client_secret_post(smart: Smart) -> None:
    c = smart.client
    verifier, challenge = pkce()
    back = authorize_to_code(
        c, authorize_params("conf", "offline_access patient/*.rs", challenge), "ana", "patient-pass"
    )
    secret = smart.secret  # type: ignore[attr-defined]
    data = {
        "grant_type": "authorization_code",
        "code": back["code"],
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
        "client_id": "conf",
        "client_secret": secret,
    }
    r = token_request(c, data)
    assert r.status_code == 200, r.text
    refresh = {"grant_type": "refresh_token", "refresh_token": r.json()["refresh_token"]}
    # the refresh token is bound to its client: another client cannot redeem it
    assert token_request(c, refresh | {"client_id": "app"}).status_code == 400
    r = token_request(c, refresh | {"client_id": "conf", "client_secret": secret})
    assert r.status_code == 200, r.text
