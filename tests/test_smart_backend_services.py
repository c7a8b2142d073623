"""SMART Backend Services (client credentials + private_key_jwt, RFC 7523): assertions
signed RS384 (inline JWKS) and ES384 (JWKS served by a real HTTP server at jwks_uri),
then a ``system/*.rs`` search on the FHIR API; and every malformed assertion refused."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from http_helpers import serving
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from smart_as_helpers import FHIR, ROOT, Smart, seed, smart_server, token_request

from smart_auth.clients import create_client

TOKEN_URL = f"{ROOT}/auth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "alg": "RS384"})


@pytest.fixture
def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "ec-1", "alg": "ES384"})


@pytest.fixture
def jwks_server(ec_key: ECKey) -> Iterator[tuple[str, list[int]]]:
    """A real HTTP server publishing the ES384 public key; counts its requests."""
    body = json.dumps({"keys": [ec_key.as_dict(private=False)]}).encode()
    hits: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    with serving(server):
        yield f"http://127.0.0.1:{server.server_port}/jwks.json", hits


@pytest.fixture
def smart(mongo_url: str, rsa_key: RSAKey, jwks_server: tuple[str, list[int]]) -> Iterator[Smart]:
    with smart_server(mongo_url) as s:
        seed(
            s.settings,
            [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p2"}],
        )
        create_client(
            s.db,
            "bulk-rsa",
            "confidential-asymmetric",
            jwks={"keys": [rsa_key.as_dict(private=False)]},
            scope="system/*.rs",
        )
        create_client(s.db, "bulk-ec", "confidential-asymmetric", jwks_uri=jwks_server[0])
        create_client(s.db, "app", "public", redirect_uris=["http://localhost:9/cb"])
        yield s


def assertion(
    key: Any,
    client_id: str,
    *,
    alg: str,
    aud: str = TOKEN_URL,
    exp_in: int = 240,
    jti: str | None = None,
    kid: str | None = None,
) -> str:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": int(time.time()) + exp_in,
        "jti": jti or uuid.uuid4().hex,
    }
    header = {"alg": alg, "typ": "JWT", "kid": kid or key.kid}
    return jwt.encode(header, claims, key, algorithms=[alg])


def request_token(s: Smart, signed: str, scope: str = "system/*.rs") -> Any:
    return token_request(
        s.client,
        {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signed,
        },
    )


def test_rs384_inline_jwks_then_system_search(smart: Smart, rsa_key: RSAKey) -> None:
    r = request_token(
        smart,
        assertion(rsa_key, "bulk-rsa", alg="RS384"),
        "system/*.rs system/Patient.cruds launch/patient",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # only system/ scopes, and only within the client's allowed system/*.rs
    assert body["scope"] == "system/*.rs"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert "refresh_token" not in body and "patient" not in body
    search = smart.client.get(
        "/fhir/Patient", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert search.status_code == 200, search.text
    assert (
        search.json()["total"] == 2
        if "total" in search.json()
        else len(search.json()["entry"]) == 2
    )
    payload = body["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == FHIR and claims["sub"] == "bulk-rsa"


def test_es384_jwks_uri_fetched_and_cached(
    smart: Smart, ec_key: ECKey, jwks_server: tuple[str, list[int]]
) -> None:
    _, hits = jwks_server
    for _ in range(2):
        r = request_token(smart, assertion(ec_key, "bulk-ec", alg="ES384"))
        assert r.status_code == 200, r.text
    assert len(hits) == 1  # cached
    # an unknown kid makes the server refetch once (key rotation at the client)
    r = request_token(smart, assertion(ec_key, "bulk-ec", alg="ES384", kid="rotated"))
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"
    assert len(hits) == 2
    token = request_token(smart, assertion(ec_key, "bulk-ec", alg="ES384")).json()
    r = smart.client.get(
        "/fhir/Patient/p1", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert r.status_code == 200, r.text


def test_replayed_jti_is_refused(smart: Smart, rsa_key: RSAKey) -> None:
    signed = assertion(rsa_key, "bulk-rsa", alg="RS384", jti="once")
    assert request_token(smart, signed).status_code == 200
    again = request_token(smart, signed)
    assert again.status_code in (400, 401) and again.json()["error"] == "invalid_client"


def _none_alg(client_id: str) -> str:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": int(time.time()) + 60,
        "jti": uuid.uuid4().hex,
    }
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


@pytest.mark.parametrize(
    "case",
    ["exp_too_far", "wrong_aud", "expired", "hs256", "none", "rs256", "wrong_key", "iss_not_sub"],
)
def test_bad_assertions_are_refused(smart: Smart, rsa_key: RSAKey, case: str) -> None:
    if case == "exp_too_far":
        signed = assertion(rsa_key, "bulk-rsa", alg="RS384", exp_in=600)
    elif case == "wrong_aud":
        signed = assertion(rsa_key, "bulk-rsa", alg="RS384", aud="http://elsewhere/token")
    elif case == "expired":
        signed = assertion(rsa_key, "bulk-rsa", alg="RS384", exp_in=-300)
    elif case == "hs256":
        secret = OctKey.generate_key(256, parameters={"kid": "rsa-1"})
        signed = assertion(secret, "bulk-rsa", alg="HS256", kid="rsa-1")
    elif case == "none":
        signed = _none_alg("bulk-rsa")
    elif case == "rs256":  # the client's own key, but an algorithm SMART does not allow
        plain = RSAKey.import_key(rsa_key.as_dict(private=True) | {"alg": "RS256"})
        signed = assertion(plain, "bulk-rsa", alg="RS256")
    elif case == "wrong_key":
        other = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
        signed = assertion(other, "bulk-rsa", alg="RS384")
    else:
        claims = {
            "iss": "someone",
            "sub": "bulk-rsa",
            "aud": TOKEN_URL,
            "exp": int(time.time()) + 60,
            "jti": uuid.uuid4().hex,
        }
        signed = jwt.encode({"alg": "RS384", "kid": "rsa-1"}, claims, rsa_key, algorithms=["RS384"])
    r = request_token(smart, signed)
    assert r.status_code in (400, 401), (case, r.text)
    assert r.json()["error"] == "invalid_client", (case, r.text)


def test_user_scopes_and_public_clients_get_nothing(smart: Smart, rsa_key: RSAKey) -> None:
    r = request_token(smart, assertion(rsa_key, "bulk-rsa", alg="RS384"), "user/*.rs patient/*.rs")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = token_request(
        smart.client,
        {"grant_type": "client_credentials", "client_id": "app", "scope": "system/*.rs"},
    )
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"
