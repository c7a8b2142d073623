"""The first token in one command, through real processes: ``fhir-server auth
create-client --type backend --generate-key`` then ``fhir-server auth token`` against a
real ``fhir-server serve`` (authorization on, 30-second tokens), the token used on the
FHIR API; every failure one line on stderr; client secrets refused for
client_credentials; ``load --client-id --key`` and the token renewal behind it.

SMART Backend Services ("Protocol details", client-confidential-asymmetric): the client
authenticates with a JWT assertion, ``iss`` = ``sub`` = client_id, ``aud`` = the token
endpoint, ``exp`` "no more than five minutes in the future", a ``jti`` never reused,
signed RS384 or ES384.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from pymongo import MongoClient

from fhir_server.testing import ServerProcess, free_port
from smart_auth.backend_client import (
    ASSERTION_TYPE,
    BackendAuth,
    BackendClient,
    client_assertion,
    read_key,
)

pytestmark = pytest.mark.slow
TOKEN_SECONDS = 30
FHIR_SERVER = Path(sys.executable).parent / "fhir-server"
README = Path(__file__).resolve().parent.parent / "README.md"


class Server:
    def __init__(self, process: ServerProcess, mongo_url: str, database: str) -> None:
        self.base = process.base_url
        self.root = process.base_url.removesuffix("/fhir")
        self.token_url = f"{self.root}/auth/token"
        self.mongo_url = mongo_url
        self.database = database


@pytest.fixture(scope="module")
def server(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    database = f"test_first_token_{uuid.uuid4().hex[:12]}"
    env = {"FHIR_AUTH_ACCESS_TOKEN_SECONDS": str(TOKEN_SECONDS)}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with ServerProcess(
        mongo_url=mongo_url, database=database, auth=True, env=env, log_file=log
    ) as process:
        yield Server(process, mongo_url, database)
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    with client:
        client.drop_database(database)


def fhir_server(
    server: Server, *args: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed ``fhir-server`` script, as a user runs it; the database comes from
    FHIR_MONGO_URL/FHIR_DATABASE, as the README says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    env.update(FHIR_MONGO_URL=server.mongo_url, FHIR_DATABASE=server.database)
    return subprocess.run(
        [str(FHIR_SERVER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def create_backend(
    server: Server, client_id: str, key_out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return fhir_server(
        server,
        "auth", "create-client", "--type", "backend", "--generate-key",
        "--client-id", client_id, "--key-out", key_out, *extra,
    )  # fmt: skip


def token(
    server: Server, client_id: str, key: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return fhir_server(
        server,
        "auth",
        "token",
        "--url",
        server.base,
        "--client-id",
        client_id,
        "--key",
        key,
        *extra,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *must_name: str) -> str:
    """A failure: non-zero exit, nothing on stdout, one line on stderr naming things."""
    assert result.returncode != 0, result.stdout
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in must_name:
        assert text in lines[0], lines[0]
    return lines[0]


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def readme_first_token_block() -> str:
    text = README.read_text()
    section = text.split("### Your first token", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_commands_work_as_printed(server: Server, tmp_path: Path) -> None:
    """The README's "Your first token" block, run by bash as printed (the database from
    FHIR_MONGO_URL, the server at this test's port instead of 8080)."""
    script = readme_first_token_block()
    assert "--generate-key" in script and "auth token" in script
    script = script.replace(".venv/bin/fhir-server", str(FHIR_SERVER))
    script = script.replace("http://127.0.0.1:8080/fhir", server.base)
    seed = httpx.put(
        f"{server.base}/Patient/readme",
        json={"resourceType": "Patient", "id": "readme"},
        timeout=30,
    )
    assert seed.status_code == 401  # no token, no write
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    env.update(FHIR_MONGO_URL=server.mongo_url, FHIR_DATABASE=server.database)
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    # create-client printed the client and its public key; curl printed a Bundle
    created, bundle = result.stdout.strip().split("\n", 1)
    out = json.loads(created)
    assert out["client_id"] == "my-backend" and out["alg"] == "ES384"
    assert Path(out["key_file"]) == (tmp_path / "my-backend.key.pem").resolve()
    assert json.loads(bundle)["resourceType"] == "Bundle"
    assert "private key written to my-backend.key.pem" in result.stderr


def test_generated_key_client_token_on_the_fhir_api(server: Server, tmp_path: Path) -> None:
    created = create_backend(server, "svc-es", tmp_path, "--scope", "system/*.cruds")
    assert created.returncode == 0, created.stderr
    out = json.loads(created.stdout)
    key_file = Path(out["key_file"])
    assert key_file == (tmp_path / "svc-es.key.pem").resolve()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert out["client_secret"] is None and out["alg"] == "ES384"
    (public,) = out["jwks"]["keys"]
    assert public["kty"] == "EC" and public["crv"] == "P-384" and "d" not in public
    assert public["kid"] == out["kid"] == read_key(key_file).kid
    assert str(key_file) in created.stderr  # where the key went

    got = token(server, "svc-es", key_file, "--scope", "system/*.cruds")
    assert got.returncode == 0, got.stderr
    access = got.stdout.strip()
    assert got.stdout == access + "\n" and access.count(".") == 2  # the token alone
    put = httpx.put(
        f"{server.base}/Patient/es1",
        json={"resourceType": "Patient", "id": "es1"},
        headers=bearer(access),
        timeout=30,
    )
    assert put.status_code in (200, 201), put.text
    read = httpx.get(f"{server.base}/Patient", headers=bearer(access), timeout=30)
    assert read.status_code == 200, read.text
    assert "es1" in {e["resource"]["id"] for e in read.json()["entry"]}

    whole = token(server, "svc-es", key_file, "--json")
    assert whole.returncode == 0, whole.stderr
    body = json.loads(whole.stdout)
    assert body["token_type"] == "Bearer" and body["expires_in"] == TOKEN_SECONDS
    assert body["scope"] == "system/*.rs"  # the default scope


def test_token_reach_is_its_scopes(server: Server, tmp_path: Path) -> None:
    """The token goes through the SMART policy like any other: a system/Patient.rs token
    cannot read Observations or write Patients, and patient/ or user/ scopes are never
    granted to a backend client (docs/smart.md: "they get nothing else")."""
    assert create_backend(server, "svc-narrow", tmp_path).returncode == 0
    key = tmp_path / "svc-narrow.key.pem"
    got = token(server, "svc-narrow", key, "--scope", "system/Patient.rs")
    assert got.returncode == 0, got.stderr
    headers = bearer(got.stdout.strip())
    assert httpx.get(f"{server.base}/Patient", headers=headers, timeout=30).status_code == 200
    obs = httpx.get(f"{server.base}/Observation", headers=headers, timeout=30)
    assert obs.status_code == 403
    assert obs.json()["issue"][0]["expression"]
    write = httpx.put(
        f"{server.base}/Patient/x1",
        json={"resourceType": "Patient", "id": "x1"},
        headers=headers,
        timeout=30,
    )
    assert write.status_code == 403
    for scope in ("patient/*.rs", "user/*.cruds launch/patient"):
        refused = token(server, "svc-narrow", key, "--scope", scope)
        one_line_error(refused, server.token_url, "invalid_scope")


def test_rs384_key(server: Server, tmp_path: Path) -> None:
    created = create_backend(server, "svc-rs", tmp_path, "--alg", "RS384")
    assert created.returncode == 0, created.stderr
    out = json.loads(created.stdout)
    assert out["alg"] == "RS384" and out["jwks"]["keys"][0]["kty"] == "RSA"
    assert "d" not in out["jwks"]["keys"][0]
    got = token(server, "svc-rs", tmp_path / "svc-rs.key.pem")
    assert got.returncode == 0, got.stderr
    r = httpx.get(f"{server.base}/Patient", headers=bearer(got.stdout.strip()), timeout=30)
    assert r.status_code == 200


def test_wrong_key_is_one_line(server: Server, tmp_path: Path) -> None:
    assert create_backend(server, "svc-a", tmp_path).returncode == 0
    assert create_backend(server, "svc-b", tmp_path).returncode == 0
    wrong = token(server, "svc-a", tmp_path / "svc-b.key.pem")
    line = one_line_error(wrong, server.token_url, "invalid_client", "svc-a")
    assert line.startswith("error: ")
    unknown = token(server, "nobody", tmp_path / "svc-a.key.pem")
    one_line_error(unknown, server.token_url, "invalid_client")


def test_unreachable_and_wrong_urls_are_one_line(server: Server, tmp_path: Path) -> None:
    assert create_backend(server, "svc-u", tmp_path).returncode == 0
    key = tmp_path / "svc-u.key.pem"
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    result = fhir_server(
        server, "auth", "token", "--url", dead, "--client-id", "svc-u", "--key", key
    )
    one_line_error(result, f"cannot reach {dead}/.well-known/smart-configuration")
    not_fhir = f"{server.root}/nothing-here"
    result = fhir_server(
        server, "auth", "token", "--url", not_fhir, "--client-id", "svc-u", "--key", key
    )
    one_line_error(result, f"{not_fhir}/.well-known/smart-configuration", "HTTP 404")


def test_bad_key_files_are_one_line(server: Server, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    one_line_error(token(server, "svc", missing), str(missing))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    one_line_error(token(server, "svc", junk), str(junk), "not an unencrypted PEM private key")
    p256 = tmp_path / "p256.pem"
    p256.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    one_line_error(token(server, "svc", p256), str(p256), "ES384")
    directory = tmp_path / "dir.pem"
    directory.mkdir()
    one_line_error(token(server, "svc", directory), str(directory))


def test_existing_key_is_never_overwritten(server: Server, tmp_path: Path) -> None:
    assert create_backend(server, "svc-keep", tmp_path).returncode == 0
    key = tmp_path / "svc-keep.key.pem"
    before = key.read_bytes()
    again = create_backend(server, "svc-keep", tmp_path)
    one_line_error(again, str(key), "already exists")
    assert key.read_bytes() == before
    # the registration was left as it was: the first key still gets tokens
    assert token(server, "svc-keep", key).returncode == 0


def test_generated_client_id_and_usage_errors(server: Server, tmp_path: Path) -> None:
    made = fhir_server(
        server, "auth", "create-client", "--type", "backend", "--generate-key",
        "--key-out", tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    client_id = json.loads(made.stdout)["client_id"]
    assert client_id.startswith("backend-")
    assert token(server, client_id, tmp_path / f"{client_id}.key.pem").returncode == 0
    public = fhir_server(
        server, "auth", "create-client", "--client-id", "p", "--type", "public",
        "--generate-key", "--key-out", tmp_path,
    )  # fmt: skip
    assert public.returncode == 2 and "--generate-key needs --type backend" in public.stderr
    assert not (tmp_path / "p.key.pem").exists()
    no_id = fhir_server(server, "auth", "create-client", "--type", "backend")
    assert no_id.returncode == 2 and "--client-id" in no_id.stderr


def test_client_secret_refused_for_client_credentials(server: Server, tmp_path: Path) -> None:
    """Decision (docs/smart.md): SMART's symmetric profile "is not intended for SMART
    Backend Services clients" (client-confidential-symmetric), so a secret cannot get a
    client_credentials token; the error says how to register an asymmetric client. A
    secret sent in the Authorization header gets 401 (RFC 6749 section 5.2)."""
    made = fhir_server(
        server, "auth", "create-client", "--client-id", "portal",
        "--type", "confidential-symmetric", "--redirect-uri", "https://portal.example/cb",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["client_secret"]
    form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    basic = base64.b64encode(f"portal:{secret}".encode()).decode()
    r = httpx.post(
        server.token_url, data=form, headers={"Authorization": f"Basic {basic}"}, timeout=30
    )
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    hint = "fhir-server auth create-client --type backend --generate-key"
    assert hint in r.json()["error_description"]
    r = httpx.post(
        server.token_url,
        data={**form, "client_id": "portal", "client_secret": secret},
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_client" and hint in r.json()["error_description"]


def test_assertion_is_as_smart_backend_services_says(server: Server, tmp_path: Path) -> None:
    """The assertion the command signs: aud the token endpoint, exp at most 5 minutes
    ahead, a fresh jti each time, kid of the registered key, ES384."""
    assert create_backend(server, "svc-claims", tmp_path).returncode == 0
    key = read_key(tmp_path / "svc-claims.key.pem")
    one, two = (client_assertion(key, "svc-claims", server.token_url) for _ in range(2))
    decoded = jwt.decode(one, key.key, algorithms=["ES384"])
    claims = decoded.claims
    assert decoded.header["alg"] == "ES384" and decoded.header["kid"] == key.kid
    assert claims["iss"] == claims["sub"] == "svc-claims"
    assert claims["aud"] == server.token_url
    assert 0 < claims["exp"] - time.time() <= 300
    assert claims["jti"] != jwt.decode(two, key.key, algorithms=["ES384"]).claims["jti"]
    # the server takes it once, and refuses the same assertion again (jti replay)
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": one,
    }
    assert httpx.post(server.token_url, data=form, timeout=30).status_code == 200
    assert httpx.post(server.token_url, data=form, timeout=30).status_code in (400, 401)


def test_backend_auth_renews_before_expiry_and_after_revocation(
    server: Server, tmp_path: Path
) -> None:
    """Requests spread over longer than one token's life (30 s) all pass: the token is
    renewed before it runs out; a revoked token (401) is replaced and the request
    retried once."""
    assert create_backend(server, "svc-renew", tmp_path).returncode == 0
    backend = BackendClient(server.base, "svc-renew", read_key(tmp_path / "svc-renew.key.pem"))

    async def run() -> list[int]:
        statuses: list[int] = []
        async with httpx.AsyncClient(auth=BackendAuth(backend), timeout=30) as http:
            started = time.monotonic()
            while time.monotonic() - started < TOKEN_SECONDS + 6:
                statuses.append((await http.get(f"{server.base}/Patient")).status_code)
                await asyncio.sleep(3)
            assert backend.fetches == 2  # renewed once, before the first expired
            current = await backend.token()
            revoke = {
                "token": current,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": client_assertion(backend.key, "svc-renew", server.token_url),
            }
            r = await http.post(f"{server.root}/auth/revoke", data=revoke, auth=None)
            assert r.status_code == 200, r.text
            gone = await http.get(f"{server.base}/Patient", headers=bearer(current), auth=None)
            assert gone.status_code == 401
            statuses.append((await http.get(f"{server.base}/Patient")).status_code)
            assert backend.fetches == 3
        return statuses

    assert set(asyncio.run(run())) == {200}


def test_load_as_backend_client(server: Server, tmp_path: Path) -> None:
    assert create_backend(server, "loader", tmp_path, "--scope", "system/*.cruds").returncode == 0
    key = tmp_path / "loader.key.pem"
    mark = uuid.uuid4().hex[:8]
    data = tmp_path / "data.ndjson"
    data.write_text(
        "\n".join(
            json.dumps({"resourceType": "Patient", "id": f"ld-{mark}-{n}"}) for n in range(20)
        )
        + "\n"
    )
    load = ("load", data, "--url", server.base, "--client-id", "loader", "--key", key)
    result = fhir_server(server, *load, "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    access = token(server, "loader", key).stdout.strip()
    r = httpx.get(f"{server.base}/Patient/ld-{mark}-7", headers=bearer(access), timeout=30)
    assert r.status_code == 200
    # a server that cannot be reached fails at once, naming the URL
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    started = time.monotonic()
    result = fhir_server(server, "load", data, "--url", dead, "--client-id", "loader", "--key", key)
    assert time.monotonic() - started < 20
    one_line_error(result, f"cannot reach {dead}/.well-known/smart-configuration")
    # the wrong key: one line naming the token endpoint
    other = create_backend(server, "loader-2", tmp_path)
    assert other.returncode == 0
    result = fhir_server(
        server, "load", data, "--url", server.base, "--client-id", "loader",
        "--key", tmp_path / "loader-2.key.pem",
    )  # fmt: skip
    one_line_error(result, server.token_url, "invalid_client")
    half = fhir_server(server, "load", data, "--url", server.base, "--client-id", "loader")
    assert half.returncode == 2 and "--client-id and --key go together" in half.stderr


def open_writer(fifo: Path, reader: subprocess.Popen[str], timeout: float = 60) -> int:
    """The FIFO's write end once ``reader`` has opened it (never blocks on a dead one)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert reader.poll() is None, reader.communicate()
            assert time.monotonic() < deadline, "the load never opened its input"
            time.sleep(0.1)
            continue
        os.set_blocking(fd, True)
        return fd


def test_load_outlives_the_token_lifetime(server: Server, tmp_path: Path) -> None:
    """A load lasting longer than one token (30 s here) finishes: its NDJSON comes
    through a named pipe a line every 11 s, one Bundle per line, and every Bundle after
    the first token ran out goes with a renewed one."""
    assert create_backend(server, "long-load", tmp_path).returncode == 0
    fifo = tmp_path / "slow.ndjson"
    os.mkfifo(fifo)
    mark = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    started = time.monotonic()
    key = tmp_path / "long-load.key.pem"
    command = [
        str(FHIR_SERVER), "load", str(fifo), "--url", server.base, "--client-id", "long-load",
        "--key", str(key), "--batch-size", "1", "--concurrency", "1", "--no-progress",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    with os.fdopen(open_writer(fifo, process), "w") as pipe:
        for n in range(5):
            if n:
                time.sleep(11)
            pipe.write(json.dumps({"resourceType": "Patient", "id": f"long-{mark}-{n}"}) + "\n")
            pipe.flush()
    out, err = process.communicate(timeout=120)
    assert time.monotonic() - started > TOKEN_SECONDS + 10
    assert process.returncode == 0, out + err
    access = token(server, "long-load", tmp_path / "long-load.key.pem").stdout.strip()
    for n in range(5):
        r = httpx.get(f"{server.base}/Patient/long-{mark}-{n}", headers=bearer(access), timeout=30)
        assert r.status_code == 200, (n, r.text)
