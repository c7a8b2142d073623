"""docker-compose.yml and deploy/ (issue 18): no Docker engine here, so the compose file is
checked as data (MongoDB unpublished with authentication and a keyfile, credentials only
from .env, a healthcheck that waits for PRIMARY, the API reachable only through nginx,
which is its one trusted proxy), and deploy/nginx.conf is run by Debian's real nginx: first
``nginx -t``, then serving TLS in front of a local upstream that echoes what it received,
with the certificate made by the openssl command docs/deploy.md gives.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from http_helpers import serving
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from fhir_server.embedded_mongo import find_mongod
from fhir_server.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = Path("/usr/sbin/nginx")
Client = MongoClient[dict[str, Any]]
# docs/deploy.md gives this command verbatim (checked below), run here to make the pair.
OPENSSL = (
    "openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=localhost "
    '-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" '
    "-keyout deploy/certs/privkey.pem -out deploy/certs/fullchain.pem"
)


def _environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def test_mongo_is_not_published_and_requires_auth_with_a_keyfile() -> None:
    mongo = SERVICES["mongo"]
    for port in mongo.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"mongo publishes {port} beyond loopback"
    command = mongo["command"]
    assert "--auth" in command and "--replSet" in command
    keyfile = command[command.index("--keyFile") + 1]
    script = " ".join(mongo["entrypoint"])
    # made once, owned by mongod's user, readable by it alone; then the image's entrypoint
    assert keyfile.rsplit("/", 1)[0] in script and "chmod 400" in script
    assert "chown mongodb:mongodb" in script and "exec docker-entrypoint.sh" in script
    assert any(v.startswith("mongo-config:/data/configdb") for v in mongo["volumes"])
    assert keyfile.startswith("/data/configdb/")  # kept in its volume across restarts


def test_credentials_come_only_from_the_env_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / "deploy" / ".env.example").read_text()
    assigned = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    assert {"MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"} <= assigned.keys()
    assert assigned["MONGO_INITDB_ROOT_PASSWORD"] not in text
    assert "MONGO_INITDB_ROOT_PASSWORD:" not in text.replace("${MONGO_INITDB_ROOT_PASSWORD:", "")
    assert SERVICES["mongo"]["env_file"] in (".env", [".env"])
    for service in ("api", "worker"):
        url = _environment(service)["FHIR_MONGO_URL"]
        userinfo = url.removeprefix("mongodb://").split("@", 1)[0]
        # nothing but the two interpolations: no literal user or password
        parts = re.fullmatch(r"\$\{(\w+)(?::\?[^}]*)?\}:\$\{(\w+)(?::\?[^}]*)?\}", userinfo)
        assert parts, url
        assert parts.groups() == ("MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD")
        assert "replicaSet=rs0" in url and "authSource=admin" in url
    assert (ROOT / ".gitignore").read_text().count("/.env") == 1
    # every "$" is the container's ("$$") or a variable .env.example sets
    for match in re.finditer(r"\$(\$|\{(\w+)|.)", text):
        assert match.group(1) == "$" or match.group(2) in assigned, match.group(0)


def test_mongo_healthcheck_initiates_and_waits_for_primary_with_credentials() -> None:
    check = SERVICES["mongo"]["healthcheck"]
    test = " ".join(check["test"])
    assert "rs.initiate(" in test and "db.hello().isWritablePrimary" in test
    assert "NotYetInitialized" in test  # initiates only a set that is not initiated yet
    # the container's own variables ($$ escapes compose interpolation)
    assert '-u "$$MONGO_INITDB_ROOT_USERNAME"' in test
    assert '-p "$$MONGO_INITDB_ROOT_PASSWORD"' in test
    for service in ("api", "worker"):
        assert SERVICES[service]["depends_on"]["mongo"]["condition"] == "service_healthy"


def test_api_is_reached_only_through_nginx_its_one_trusted_proxy() -> None:
    assert "ports" not in SERVICES["api"] and "ports" not in SERVICES["worker"]
    nginx = SERVICES["nginx"]
    assert nginx["image"] == "nginx:stable"
    published = {str(p).rsplit(":", 1)[-1] for p in nginx["ports"]}
    assert {"443", "80"} <= published
    address = nginx["networks"]["default"]["ipv4_address"]
    subnet = COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    for service in ("api", "worker"):
        env = _environment(service)
        assert env["FHIR_TRUSTED_PROXIES"] == address
        assert env["FHIR_BASE_URL"].startswith("https://")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nginx["volumes"]}
    assert mounts["/etc/nginx/conf.d/default.conf"] == "./deploy/nginx.conf"
    assert mounts["/etc/nginx/certs"] == "./deploy/certs"


def test_import_state_dir_is_a_volume_the_image_user_owns() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR (\S+)", dockerfile, re.M)[-1]
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)[-1]
    assert user not in ("root", "0")
    # `import run` keeps its state in ./.fhir-import: the working directory, made the
    # user's own in the image, on a named volume (which starts as the image's copy)
    assert re.search(rf"install -d -o {user} -g {user} [^\n]*{workdir}", dockerfile)
    assert f"fhir-state:{workdir}" in SERVICES["api"]["volumes"]


def test_body_limit_matches_nginx() -> None:
    size = re.search(r"client_max_body_size (\d+)m;", NGINX_CONF.read_text())
    assert size is not None
    limit = int(size.group(1)) * 1024 * 1024
    assert int(_environment("api")["FHIR_MAX_BODY_BYTES"]) == limit
    assert f"exceeds the limit of {limit} bytes" in NGINX_CONF.read_text()


def test_docs_give_the_steps_from_zero() -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for step in (
        "cp deploy/.env.example .env",
        OPENSSL,
        "docker compose up -d",
        "docker compose exec api fhir-server auth create-user",
        "docker compose exec api fhir-server auth create-client",
    ):
        assert step in docs, step


def _mongod(binary: str, data: Path, port: int, *flags: str) -> subprocess.Popen[bytes]:
    data.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--dbpath", str(data), "--port", str(port), "--bind_ip", "127.0.0.1",
         "--wiredTigerCacheSizeGB", "0.25", "--logpath", str(data / "mongod.log"), *flags],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not _listening(port):
        assert proc.poll() is None, (data / "mongod.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "mongod never listened"
        time.sleep(0.1)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_compose_mongo_steps_on_a_real_mongod(tmp_path: Path) -> None:
    """The mongo service's steps, on the suite's mongod binary: the entrypoint's keyfile;
    the root user from deploy/.env.example (what the image does on its first start);
    mongod with the compose command's flags; the healthcheck's steps (in PyMongo: mongosh
    is not installed here) up to PRIMARY; then the API's FHIR_MONGO_URL, interpolated from
    .env.example, writes in a transaction, and nothing is served without credentials."""
    mongo = SERVICES["mongo"]
    script = mongo["entrypoint"][2].replace("$$", "$")
    chown = 'chown mongodb:mongodb "$key" && '
    assert chown in script  # mongod runs as mongodb in the image; here as whoever runs this
    keep = script.replace(chown, "").replace("/data/configdb", str(tmp_path))
    subprocess.run(["bash", "-c", keep.split("exec docker-entrypoint.sh")[0]], check=True)
    command = [a.replace("/data/configdb", str(tmp_path)) for a in mongo["command"]]
    keyfile = Path(command[command.index("--keyFile") + 1])
    assert keyfile.stat().st_mode & 0o777 == 0o400
    assert 6 <= len(keyfile.read_text()) <= 1024  # mongod's keyfile bounds

    example = (ROOT / "deploy" / ".env.example").read_text()
    env = dict(ln.split("=", 1) for ln in example.splitlines() if ln and not ln.startswith("#"))
    user, password = env["MONGO_INITDB_ROOT_USERNAME"], env["MONGO_INITDB_ROOT_PASSWORD"]
    binary = find_mongod(os.environ.get("FHIR_MONGOD_BIN"))
    port = free_port()
    first = _mongod(binary, tmp_path / "db", port)  # the image's first start: no auth yet
    try:
        plain: Client = MongoClient("127.0.0.1", port, directConnection=True)
        with plain:
            plain.admin.command("createUser", user, pwd=password, roles=["root"])
    finally:
        _stop(first)
    assert command[0] == "mongod" and "--bind_ip_all" in command
    flags = [a for a in command[1:] if a != "--bind_ip_all"]  # loopback only, here
    proc = _mongod(binary, tmp_path / "db", port, *flags)
    try:
        health = " ".join(mongo["healthcheck"]["test"])
        member = re.search(r"host: '([^']+)'", health)
        assert member is not None and member.group(1) == "mongo:27017"
        admin: Client = MongoClient(
            "127.0.0.1", port, directConnection=True, username=user, password=password,
            authSource="admin",
        )  # fmt: skip
        with admin:
            with pytest.raises(OperationFailure) as fresh:
                admin.admin.command("replSetGetStatus")
            assert (fresh.value.details or {}).get("codeName") == "NotYetInitialized"
            admin.admin.command(
                "replSetInitiate",
                {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]},
            )
            deadline = time.monotonic() + 60
            while not admin.admin.command("hello").get("isWritablePrimary"):
                assert time.monotonic() < deadline, "never PRIMARY"
                time.sleep(0.2)
        url = re.sub(
            r"\$\{(\w+)(?::\?[^}]*)?\}",
            lambda m: env[m.group(1)],
            _environment("api")["FHIR_MONGO_URL"],
        ).replace("@mongo:27017/", f"@127.0.0.1:{port}/")
        app: Client = MongoClient(url, serverSelectionTimeoutMS=20000)
        with app:
            with app.start_session() as session, session.start_transaction():
                app.fhir.probe.insert_one({"ok": 1}, session=session)
            assert app.fhir.probe.count_documents({}) == 1
        anonymous: Client = MongoClient("127.0.0.1", port, directConnection=True)
        with anonymous, pytest.raises(OperationFailure, match="requires authentication"):
            anonymous.fhir.probe.find_one()
    finally:
        _stop(proc)


class _Echo(BaseHTTPRequestHandler):
    """The upstream: answers every request with the path and headers it received."""

    def _answer(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Front:
    def __init__(self, https: int, http: int, cert: Path) -> None:
        self.https, self.http, self.cert = https, http, cert

    def client(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=self.cert), timeout=10)


def _wrapped(tmp: Path, upstream: int, https: int, http: int) -> Path:
    """deploy/nginx.conf as compose mounts it (inside an http block), with the host's
    addresses for the compose ones: the upstream, the listening ports, the certificates."""
    conf = NGINX_CONF.read_text()
    for old, new in (
        ("server api:8080;", f"server 127.0.0.1:{upstream};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{http};"),
        ("/etc/nginx/certs/", f"{tmp}/deploy/certs/"),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    (tmp / "default.conf").write_text(conf)
    temp = " ".join(
        f"{kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp / "nginx.conf"
    main.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
        + "events { worker_connections 64; }\n"
        + f"http {{ access_log off; {temp} include {tmp}/default.conf; }}\n"
    )
    return main


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    if not NGINX.exists():
        pytest.fail(f"the compose test needs {NGINX}: install it (apt-get install -y nginx-light)",
                    pytrace=False)  # fmt: skip
    tmp = tmp_path_factory.mktemp("front")
    (tmp / "deploy" / "certs").mkdir(parents=True)
    made = subprocess.run(shlex.split(OPENSSL), cwd=tmp, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    https, http = free_port(), free_port()
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Echo)) as echo:
        main = _wrapped(tmp, echo.server_address[1], https, http)
        checked = subprocess.run(
            [NGINX, "-t", "-c", main, "-e", tmp / "error.log"], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr
        assert "syntax is ok" in checked.stderr
        nginx = subprocess.Popen(
            [NGINX, "-c", main, "-e", tmp / "error.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not _listening(https):
                assert nginx.poll() is None, (tmp / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx never listened"
                time.sleep(0.1)
            yield Front(https, http, tmp / "deploy" / "certs" / "fullchain.pem")
        finally:
            nginx.terminate()
            nginx.wait(30)


def test_nginx_forwards_tls_requests_with_proxy_headers(front: Front) -> None:
    with front.client() as http:
        got = http.get(f"https://localhost:{front.https}/fhir/Patient?name=x")
    assert got.status_code == 200, got.text
    seen = got.json()
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert seen["path"] == "/fhir/Patient?name=x"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["host"] == f"localhost:{front.https}"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # nginx's own
    assert headers.get("connection", "") in ("", "keep-alive")  # no upgrade for plain requests
    with front.client() as http:
        mine = http.get(f"https://localhost:{front.https}/fhir/x", headers={"X-Request-Id": "abc"})
    assert mine.json()["headers"]["X-Request-Id"] == "abc"


def test_nginx_passes_the_websocket_upgrade(front: Front) -> None:
    with front.client() as http:
        got = http.get(
            f"https://localhost:{front.https}/fhir/websocket",
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )
    headers = {k.lower(): v for k, v in got.json()["headers"].items()}
    assert headers["upgrade"] == "websocket" and headers["connection"] == "upgrade"


def test_nginx_redirects_http_to_https(front: Front) -> None:
    got = httpx.get(f"http://127.0.0.1:{front.http}/fhir/metadata", headers={"Host": "fhir.test"})
    assert got.status_code == 301
    assert got.headers["location"] == "https://fhir.test/fhir/metadata"


def test_nginx_refuses_a_too_large_body_with_an_operation_outcome(front: Front) -> None:
    """Refused on Content-Length alone: the headers are sent, no body."""
    context = ssl.create_default_context(cafile=front.cert)
    raw = socket.create_connection(("127.0.0.1", front.https), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(
            b"POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/fhir+json\r\n"
            b"Content-Length: 16777217\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"content-type: application/fhir+json" in head.lower()
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "too-costly"
    assert outcome["issue"][0]["expression"] == ["$this"]


def test_nginx_answers_an_unreachable_api_with_an_operation_outcome(
    tmp_path: Path, front: Front
) -> None:
    """Last (it stops nothing: a second nginx on the same conf with a closed upstream)."""
    https, http = free_port(), free_port()
    (tmp_path / "deploy" / "certs").mkdir(parents=True)
    for name in ("fullchain.pem", "privkey.pem"):
        (tmp_path / "deploy" / "certs" / name).write_bytes((front.cert.parent / name).read_bytes())
    main = _wrapped(tmp_path, free_port(), https, http)  # nothing listens upstream
    nginx = subprocess.Popen(
        [NGINX, "-c", main, "-e", tmp_path / "error.log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _listening(https):
            assert nginx.poll() is None and time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)
        with Front(https, http, front.cert).client() as client:
            got = client.get(f"https://localhost:{https}/fhir/metadata")
    finally:
        nginx.terminate()
        nginx.wait(30)
    assert got.status_code == 503
    assert got.headers["retry-after"] == "5"
    assert got.headers["content-type"] == "application/fhir+json"
    assert got.json()["issue"][0]["code"] == "transient"
