"""``FHIR_TRUSTED_PROXIES`` through real ``fhir-server serve`` processes: the
X-Forwarded-Proto and X-Forwarded-For headers count only when the peer is a trusted
proxy (uvicorn's forwarded_allow_ips).

The requests come from loopback but name a public host (``Host: fhir.example.org``), as a
TLS-terminating proxy forwards them: authlib lets plain http through only for loopback
hosts, so a request for http://fhir.example.org/auth/token is refused ("OAuth 2.0
requires https") unless a trusted proxy says the client spoke https.

SMART Backend Services ("Protocol details"): the client's assertion has ``aud`` = the
token endpoint URL, which is the public https URL the client sees.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pytest
from nginx_helpers import (
    NGINX_HEAD,
    NGINX_HTTP_COMMON,
    certificate,
    https_client,
    network,
    nginx,
)
from pymongo import MongoClient
from smart_as_helpers import csrf, pkce

from fhir_server.testing import ServerProcess
from smart_auth.backend_client import ASSERTION_TYPE, client_assertion, read_key
from smart_auth.store import LOGIN_ATTEMPTS

pytestmark = pytest.mark.slow
FHIR_SERVER = Path(sys.executable).parent / "fhir-server"
PUBLIC = "fhir.example.org"
HTTPS_PROXY = {"Host": PUBLIC, "X-Forwarded-Proto": "https"}


class Served:
    def __init__(self, process: ServerProcess, mongo_url: str, database: str) -> None:
        self.base = process.base_url
        self.root = process.base_url.removesuffix("/fhir")
        self.mongo_url = mongo_url
        self.database = database

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        env.update(FHIR_MONGO_URL=self.mongo_url, FHIR_DATABASE=self.database)
        return subprocess.run(
            [str(FHIR_SERVER), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    def backend_key(self, client_id: str, directory: Path) -> Path:
        made = self.cli(
            "auth", "create-client", "--type", "backend", "--generate-key",
            "--client-id", client_id, "--key-out", directory, "--scope", "system/*.cruds",
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        return directory / f"{client_id}.key.pem"

    def login_ips(self, username: str) -> list[str]:
        client: MongoClient[dict[str, Any]] = MongoClient(self.mongo_url)
        with client:
            found = client[self.database][LOGIN_ATTEMPTS].find({"username": username})
            return [doc["ip"] for doc in found]


def _served(mongo_url: str, tmp: Path, proxies: str | None, workers: int = 1) -> Iterator[Served]:
    database = f"test_proxies_{uuid.uuid4().hex[:12]}"
    env = {"FHIR_TRUSTED_PROXIES": proxies} if proxies is not None else {}
    with ServerProcess(
        mongo_url=mongo_url,
        database=database,
        auth=True,
        env=env,
        workers=workers,
        log_file=tmp / "serve.log",
    ) as process:
        yield Served(process, mongo_url, database)
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    with client:
        client.drop_database(database)


@pytest.fixture(scope="module")
def untrusted(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Only 10.9.9.9 is a proxy: loopback's forwarded headers are ignored."""
    yield from _served(mongo_url, tmp_path_factory.mktemp("untrusted"), "10.9.9.9")


@pytest.fixture(scope="module")
def trusted(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Loopback trusted as a network, with two worker processes (each its own uvicorn)."""
    yield from _served(
        mongo_url, tmp_path_factory.mktemp("trusted"), "10.9.9.9, 127.0.0.0/8", workers=2
    )


def _discovery(served: Served, headers: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(f"{served.base}/.well-known/smart-configuration", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    conf: dict[str, Any] = r.json()
    return conf


def _client_credentials(
    served: Served, token_url: str, client_id: str, key: Path
) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(read_key(key), client_id, token_url),
    }
    return httpx.post(f"{served.root}/auth/token", data=form, headers=HTTPS_PROXY, timeout=30)


def test_untrusted_peer_forwarded_proto_is_ignored(untrusted: Served, tmp_path: Path) -> None:
    conf = _discovery(untrusted, HTTPS_PROXY)
    assert conf["token_endpoint"] == f"http://{PUBLIC}/auth/token"
    assert conf["authorization_endpoint"].startswith(f"http://{PUBLIC}/")
    key = untrusted.backend_key("svc-untrusted", tmp_path)
    for aud in (f"https://{PUBLIC}/auth/token", f"http://{PUBLIC}/auth/token"):
        r = _client_credentials(untrusted, aud, "svc-untrusted", key)
        assert r.status_code == 400, r.text
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "OAuth 2.0 requires https",
        }


def test_trusted_proxy_https_discovery_and_backend_token(trusted: Served, tmp_path: Path) -> None:
    conf = _discovery(trusted, HTTPS_PROXY)
    assert conf["issuer"] == f"https://{PUBLIC}/auth"
    for name in ("token_endpoint", "authorization_endpoint", "jwks_uri", "revocation_endpoint"):
        assert conf[name].startswith(f"https://{PUBLIC}/auth/"), (name, conf[name])
    # without the header the same peer is plain http: the header, not the setting, decides
    assert _discovery(trusted, {"Host": PUBLIC})["token_endpoint"] == f"http://{PUBLIC}/auth/token"

    key = trusted.backend_key("svc-proxied", tmp_path)
    r = _client_credentials(trusted, conf["token_endpoint"], "svc-proxied", key)
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]
    bearer = {**HTTPS_PROXY, "Authorization": f"Bearer {access}"}
    read = httpx.get(f"{trusted.base}/Patient", headers=bearer, timeout=30)
    assert read.status_code == 200, read.text
    assert read.json()["resourceType"] == "Bundle"
    # Bundle links are built from the same public https URL
    assert read.json()["link"][0]["url"].startswith(f"https://{PUBLIC}/fhir/Patient")
    # the token still goes through the SMART policy: system/*.rs cannot write
    write = httpx.put(
        f"{trusted.base}/Patient/p1",
        json={"resourceType": "Patient", "id": "p1"},
        headers=bearer,
        timeout=30,
    )
    assert write.status_code == 403
    assert write.json()["issue"][0]["expression"]
    # an assertion made for the http URL is refused: aud must be the endpoint's URL
    wrong_aud = _client_credentials(trusted, f"http://{PUBLIC}/auth/token", "svc-proxied", key)
    assert wrong_aud.status_code in (400, 401)
    assert wrong_aud.json()["error"] == "invalid_client"
    # no token, no data, proxy or not
    assert httpx.get(f"{trusted.base}/Patient", headers=HTTPS_PROXY, timeout=30).status_code == 401


def _failed_login(served: Served, username: str, forwarded_for: str) -> None:
    """A wrong password from a client the proxy names in X-Forwarded-For (recorded with
    the address the server believes, smart_auth/users.py)."""
    headers = {"X-Forwarded-For": forwarded_for}
    with httpx.Client(base_url=served.root, headers=headers, timeout=30) as http:
        page = http.get("/auth/login")
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None
        form = {"csrf": found.group(1), "username": username, "password": "wrong"}
        r = http.post("/auth/login", data=form)
        assert r.status_code == 401, r.text


def test_forwarded_for_is_the_client_only_when_trusted(trusted: Served, untrusted: Served) -> None:
    _failed_login(trusted, "ana-trusted", "203.0.113.7")
    assert trusted.login_ips("ana-trusted") == ["203.0.113.7"]
    _failed_login(untrusted, "ana-untrusted", "203.0.113.7")
    assert untrusted.login_ips("ana-untrusted") == ["127.0.0.1"]


def test_bad_setting_is_one_line_before_anything_starts(mongo_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    for value, named in (("10.0.0.1/8", "'10.0.0.1/8'"), ("proxy.internal", "'proxy.internal'")):
        env["FHIR_TRUSTED_PROXIES"] = value
        result = subprocess.run(
            [str(FHIR_SERVER), "serve", "--mongo-url", mongo_url, "--port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: invalid setting FHIR_TRUSTED_PROXIES={value}: ")
        assert named in lines[0] and "Traceback" not in result.stderr


def test_setting_is_documented() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "FHIR_TRUSTED_PROXIES" in readme
    compose = (Path(__file__).resolve().parent.parent / "docker-compose.yml").read_text()
    assert "FHIR_TRUSTED_PROXIES" in compose


# --------------------------------------------------------------------------------------
# Behind Debian's nginx with TLS, on a non-loopback address: nginx runs in a network
# namespace (10.x.y.2), the server listens on the host end of a veth pair (10.x.y.1) and
# trusts only nginx's address, as a proxy on another host is deployed.


class Proxied:
    def __init__(self, served: Served, proxy: str, host: str, cert: Path) -> None:
        self.served = served
        self.proxy = proxy  # nginx's address (in the namespace): the only trusted peer
        self.host = host  # the server's address, and the clients' (host side)
        self.public = f"https://{proxy}/fhir"
        self.cert = cert
        self.direct = served.base  # http://10.x.y.1:port/fhir, bypassing nginx

    def https(self) -> httpx.Client:
        return https_client(self.cert)

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """The installed command, trusting the test's certificate as a system CA."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        env.update(SSL_CERT_FILE=str(self.cert))
        return subprocess.run(
            [str(FHIR_SERVER), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )


NGINX_CONF = (
    NGINX_HEAD
    + """
http {{
"""
    + NGINX_HTTP_COMMON
    + """
    server {{
        listen {proxy}:443 ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://{host}:{port};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""
)


@pytest.fixture(scope="module")
def proxied(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    tmp = tmp_path_factory.mktemp("nginx")
    with network() as net:
        host, proxy = net.host, net.proxy
        cert, key = certificate(tmp, proxy)
        database = f"test_proxies_{uuid.uuid4().hex[:12]}"
        server = ServerProcess(
            mongo_url=mongo_url,
            database=database,
            auth=True,
            env={"FHIR_HOST": host, "FHIR_TRUSTED_PROXIES": proxy},
            log_file=tmp / "serve.log",
        )
        server.base_url = f"http://{host}:{server.port}/fhir"  # where start() looks
        conf = tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(d=tmp, proxy=proxy, cert=cert, key=key, host=host, port=server.port)
        )
        with server, nginx(net, conf, f"https://{proxy}/fhir/metadata", cert):
            yield Proxied(Served(server, mongo_url, database), proxy, host, cert)
        client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
        with client:
            client.drop_database(database)


def test_nginx_tls_backend_services_flow(proxied: Proxied, tmp_path: Path) -> None:
    """Discovery through nginx advertises the public https endpoints; `auth token` and a
    `load` as a backend client work through https://<proxy>/fhir; the token reaches only
    what its scopes allow."""
    with proxied.https() as http:
        conf = http.get(f"{proxied.public}/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == f"https://{proxied.proxy}/auth/token"
    assert conf["issuer"] == f"https://{proxied.proxy}/auth"
    key = proxied.served.backend_key("svc-nginx", tmp_path)
    got = proxied.cli(
        "auth", "token", "--url", proxied.public, "--client-id", "svc-nginx", "--key", key,
        "--scope", "system/*.cruds",
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    bearer = {"Authorization": f"Bearer {got.stdout.strip()}"}
    data = tmp_path / "patients.ndjson"
    data.write_text("".join(f'{{"resourceType":"Patient","id":"ngx-{n}"}}\n' for n in range(3)))
    loaded = proxied.cli(
        "load", data, "--url", proxied.public, "--client-id", "svc-nginx", "--key", key,
        "--no-progress",
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    with proxied.https() as http:
        read = http.get(f"{proxied.public}/Patient/ngx-2", headers=bearer)
        assert read.status_code == 200, read.text
        page = http.get(f"{proxied.public}/Patient", headers=bearer).json()
        assert page["link"][0]["url"].startswith(f"https://{proxied.proxy}/fhir/Patient")
        # no token, no data, through the proxy as anywhere
        assert http.get(f"{proxied.public}/Patient").status_code == 401
    narrow = proxied.cli(
        "auth", "token", "--url", proxied.public, "--client-id", "svc-nginx", "--key", key,
        "--scope", "system/Patient.rs",
    )  # fmt: skip
    assert narrow.returncode == 0, narrow.stderr
    with proxied.https() as http:
        obs = http.get(
            f"{proxied.public}/Observation",
            headers={"Authorization": f"Bearer {narrow.stdout.strip()}"},
        )
    assert obs.status_code == 403 and obs.json()["issue"][0]["expression"]


def test_nginx_address_only_is_trusted(proxied: Proxied, tmp_path: Path) -> None:
    """Straight to the server from the host end (10.x.y.1, not a trusted proxy), the same
    headers nginx sends are ignored: http discovery, and the token endpoint refuses."""
    headers = {"Host": proxied.proxy, "X-Forwarded-Proto": "https"}
    r = httpx.get(f"{proxied.direct}/.well-known/smart-configuration", headers=headers, timeout=30)
    assert r.json()["token_endpoint"] == f"http://{proxied.proxy}/auth/token"
    key = proxied.served.backend_key("svc-direct", tmp_path)
    aud = f"https://{proxied.proxy}/auth/token"
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(read_key(key), "svc-direct", aud),
    }
    root = proxied.direct.removesuffix("/fhir")
    r = httpx.post(f"{root}/auth/token", data=form, headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error_description"] == "OAuth 2.0 requires https"


def test_nginx_forwarded_for_is_the_real_client(proxied: Proxied) -> None:
    """Logins through nginx are recorded with the client's address (what nginx saw), not
    nginx's own; an X-Forwarded-For the client made up is not believed (nginx appends
    the real one, and only the entries trusted proxies added count)."""
    with proxied.https() as http:
        for forged in (None, "198.51.100.9"):
            headers = {"X-Forwarded-For": forged} if forged else {}
            page = http.get(f"https://{proxied.proxy}/auth/login", headers=headers)
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf is not None, page.text
            form = {"csrf": csrf.group(1), "username": "ngx-user", "password": "wrong"}
            r = http.post(f"https://{proxied.proxy}/auth/login", data=form, headers=headers)
            assert r.status_code == 401, r.text
    assert proxied.served.login_ips("ngx-user") == [proxied.host, proxied.host]


def test_nginx_standalone_launch(proxied: Proxied, tmp_path: Path) -> None:
    """A patient's standalone launch (authorization code with PKCE) through nginx: the
    login and consent pages, their Secure session cookie, the code exchanged at the
    https token endpoint, and the token reading the patient's own record only."""
    served = proxied.served
    key = served.backend_key("svc-seed", tmp_path)
    seed = proxied.cli(
        "auth", "token", "--url", proxied.public, "--client-id", "svc-seed", "--key", key,
        "--scope", "system/*.cruds",
    )  # fmt: skip
    assert seed.returncode == 0, seed.stderr
    system = {"Authorization": f"Bearer {seed.stdout.strip()}"}
    redirect = "https://app.example/callback"
    made = served.cli(
        "auth", "create-client", "--client-id", "ngx-app", "--type", "public",
        "--redirect-uri", redirect, "--name", "Proxied app",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    user = served.cli(
        "auth", "create-user", "--username", "ngx-ana", "--password", "patient-pass",
        "--role", "patient", "--fhir-user", "Patient/ngx-p",
    )  # fmt: skip
    assert user.returncode == 0, user.stderr
    root = f"https://{proxied.proxy}"
    with proxied.https() as http:
        for pid in ("ngx-p", "ngx-other"):
            put = http.put(
                f"{proxied.public}/Patient/{pid}",
                json={"resourceType": "Patient", "id": pid},
                headers=system,
            )
            assert put.status_code in (200, 201), put.text
        conf = http.get(f"{proxied.public}/.well-known/smart-configuration").json()
        verifier, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": "ngx-app",
            "redirect_uri": redirect,
            "scope": "launch/patient openid fhirUser patient/*.rs",
            "state": "s1",
            "aud": proxied.public,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        r = http.get(conf["authorization_endpoint"], params=params)
        assert r.status_code in (302, 303), r.text
        step = urljoin(root, r.headers["location"])
        r = http.get(step)
        login = http.get(urljoin(root, r.headers["location"]))
        assert login.status_code == 200, login.text
        found = re.search(r'form method="post" action="([^"]+)"', login.text)
        assert found is not None
        form = {"csrf": csrf(login), "username": "ngx-ana", "password": "patient-pass"}
        r = http.post(urljoin(root, html.unescape(found.group(1))), data=form)
        assert r.status_code == 303, r.text
        consent = http.get(urljoin(root, r.headers["location"]))
        assert "Proxied app" in consent.text
        scopes = re.findall(r'name="scope" value="([^"]+)"', consent.text)
        decision = [("csrf", csrf(consent)), ("decision", "allow")]
        r = http.post(
            step.split("?")[0],
            content=urlencode(decision + [("scope", s) for s in scopes]),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.headers["location"].startswith(redirect)
        back = parse_qs(urlsplit(r.headers["location"]).query)
        assert back["state"] == ["s1"]
        r = http.post(
            conf["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": back["code"][0],
                "client_id": "ngx-app",
                "redirect_uri": redirect,
                "code_verifier": verifier,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["patient"] == "ngx-p"
        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        own = http.get(f"{proxied.public}/Patient/ngx-p", headers=bearer)
        assert own.status_code == 200, own.text
        other = http.get(f"{proxied.public}/Patient/ngx-other", headers=bearer)
        # another patient's record is not disclosed to a patient token
        assert other.status_code == 404, other.text
        assert other.json()["resourceType"] == "OperationOutcome"
