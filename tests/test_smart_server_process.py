"""End to end over TCP: a real ``fhir-server serve`` with authorization on, clients and
users registered with the ``fhir-server auth`` CLI, a standalone launch followed through
the HTML forms with httpx, and a backend-services token used on the FHIR API."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from smart_as_helpers import pkce

from fhir_server.testing import ServerProcess

pytestmark = pytest.mark.slow
REDIRECT = "http://127.0.0.1:9/callback"


def cli(mongo_url: str, database: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fhir_server",
            "auth",
            *args,
            "--mongo-url",
            mongo_url,
            "--database",
            database,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_and_real_server_end_to_end(mongo_url: str, database: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS384"})
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    with ServerProcess(mongo_url=mongo_url, database=database, auth=True, log_file=log) as server:
        assert "fhir-server auth create-client" in log.read_text()  # the first-start hint
        base = server.base_url
        root = base.removesuffix("/fhir")
        # seed a patient: no token, no write
        http = httpx.Client(follow_redirects=False, timeout=30)
        assert (
            http.put(f"{base}/Patient/p1", json={"resourceType": "Patient", "id": "p1"}).status_code
            == 401
        )
        r = cli(
            mongo_url,
            database,
            "create-client",
            "--client-id",
            "app",
            "--type",
            "public",
            "--redirect-uri",
            REDIRECT,
            "--name",
            "Test app",
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"client_id": "app", "client_secret": None}
        r = cli(
            mongo_url,
            database,
            "create-client",
            "--client-id",
            "svc",
            "--type",
            "confidential-asymmetric",
            "--jwks-file",
            str(jwks_file),
            "--scope",
            "system/*.cruds",
        )
        assert r.returncode == 0, r.stderr
        r = cli(
            mongo_url,
            database,
            "create-user",
            "--username",
            "ana",
            "--password",
            "patient-pass",
            "--role",
            "patient",
            "--fhir-user",
            "Patient/p1",
        )
        assert r.returncode == 0, r.stderr
        bad = cli(
            mongo_url,
            database,
            "create-user",
            "--username",
            "x",
            "--password",
            "short",
            "--role",
            "admin",
        )
        assert bad.returncode == 2 and "8 characters" in bad.stderr
        bad_email = cli(
            mongo_url, database, "create-user", "--username", "y", "--password",
            "long-enough", "--role", "operator", "--email", "y at clinic",
        )  # fmt: skip
        assert bad_email.returncode == 2
        assert bad_email.stderr.strip() == "error: 'y at clinic' is not an e-mail address"
        mail = cli(
            mongo_url, database, "create-user", "--username", "z", "--password",
            "long-enough", "--role", "operator", "--email", "z@clinica.ec",
        )  # fmt: skip
        assert mail.returncode == 0 and json.loads(mail.stdout)["email"] == "z@clinica.ec"

        # backend services: write the patient with a system/ token
        now = int(time.time())
        assertion = jwt.encode(
            {"alg": "RS384", "kid": "k1"},
            {
                "iss": "svc",
                "sub": "svc",
                "aud": f"{root}/auth/token",
                "exp": now + 120,
                "jti": uuid.uuid4().hex,
            },
            key,
            algorithms=["RS384"],
        )
        r = http.post(
            f"{root}/auth/token",
            data={
                "grant_type": "client_credentials",
                "scope": "system/*.cruds",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
        assert r.status_code == 200, r.text
        system = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = http.put(
            f"{base}/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=system
        )
        assert r.status_code in (200, 201), r.text

        # standalone launch by the patient, through the real pages
        conf = http.get(f"{base}/.well-known/smart-configuration").json()
        assert conf["token_endpoint"] == f"{root}/auth/token"
        verifier, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": "app",
            "redirect_uri": REDIRECT,
            "scope": "launch/patient openid fhirUser patient/*.rs",
            "state": "s1",
            "aud": base,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        r = http.get(conf["authorization_endpoint"] + "?" + urlencode(params))
        step = root + r.headers["location"]
        r = http.get(step)
        login_page = http.get(root + r.headers["location"])
        action = html.unescape(
            re.search(r'form method="post" action="([^"]+)"', login_page.text).group(1)
        )
        token = re.search(r'name="csrf" value="([^"]+)"', login_page.text).group(1)
        r = http.post(
            root + action, data={"csrf": token, "username": "ana", "password": "patient-pass"}
        )
        assert r.status_code == 303, r.text
        consent = http.get(root + r.headers["location"])
        assert "Test app" in consent.text
        token = re.search(r'name="csrf" value="([^"]+)"', consent.text).group(1)
        scopes = re.findall(r'name="scope" value="([^"]+)"', consent.text)
        form = [("csrf", token), ("decision", "allow")] + [("scope", s) for s in scopes]
        r = http.post(
            step.split("?")[0],
            content=urlencode(form),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        back = parse_qs(urlsplit(r.headers["location"]).query)
        assert back["state"] == ["s1"]
        r = http.post(
            conf["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": back["code"][0],
                "client_id": "app",
                "redirect_uri": REDIRECT,
                "code_verifier": verifier,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["patient"] == "p1" and "id_token" in body
        r = http.get(
            f"{base}/Patient/p1", headers={"Authorization": f"Bearer {body['access_token']}"}
        )
        assert r.status_code == 200, r.text
        http.close()
