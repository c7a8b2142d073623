"""``fhir-server import run --client-id --key``: a migration into a real server with
authorization on, as a SMART backend client (client_credentials with a signed
assertion, tokens renewed by smart_auth.backend_client.BackendAuth, as ``load`` does).
The token goes through the SMART policy like any other: a read-only client writes
nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_import_support as support
from pymongo import MongoClient
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from fhir_server.testing import ServerProcess
from importers.sample import make_sample

pytestmark = pytest.mark.slow
mariadb_url = support.mariadb_url  # a fixture
mariadb_server = support.mariadb_server  # a fixture
FHIR_SERVER = Path(sys.executable).parent / "fhir-server"


class Secured:
    def __init__(self, base: str, mongo_url: str, database: str) -> None:
        self.base = base
        self.token_url = base.removesuffix("/fhir") + "/auth/token"
        self.mongo_url = mongo_url
        self.database = database

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        env.update(FHIR_MONGO_URL=self.mongo_url, FHIR_DATABASE=self.database)
        return subprocess.run(
            [str(FHIR_SERVER), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    def backend_key(self, client_id: str, directory: Path, scope: str) -> Path:
        made = self.cli(
            "auth", "create-client", "--type", "backend", "--generate-key",
            "--client-id", client_id, "--key-out", directory, "--scope", scope,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        return directory / f"{client_id}.key.pem"

    def token(self, client_id: str, key: Path) -> str:
        got = self.cli("auth", "token", "--url", self.base, "--client-id", client_id, "--key", key)
        assert got.returncode == 0, got.stderr
        return got.stdout.strip()

    def patients(self, access: str) -> int:
        r = httpx.get(
            f"{self.base}/Patient",
            params={"_summary": "count"},
            headers={"Authorization": f"Bearer {access}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        total: int = r.json()["total"]
        return total


@pytest.fixture
def secured(mongo_url: str, tmp_path: Path) -> Iterator[Secured]:
    """A real server with SMART authorization on and 30-second tokens."""
    database = f"imp_auth_{uuid.uuid4().hex[:10]}"
    server = ServerProcess(
        mongo_url=mongo_url,
        database=database,
        auth=True,
        env={"FHIR_AUTH_ACCESS_TOKEN_SECONDS": "30"},
        log_file=tmp_path / "server.log",
    )
    with server:
        yield Secured(server.base_url, mongo_url, database)
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    with client:
        client.drop_database(database)


def _import(secured: Secured, source: str, state: Path, *auth: str | Path) -> Any:
    return secured.cli(
        "import", "run", "--source", source, "--mapping", "clinica",
        "--fhir-url", secured.base, "--state-dir", state, "--no-progress", *auth,
    )  # fmt: skip


def _refusals(report: Path) -> set[str]:
    """The HTTP statuses with which the server refused the report's rows."""
    found = set()
    for row in support.report_rows(report):
        match = re.search(r"HTTP \d{3}", row["reason"])
        if row["severity"] == "error" and match:
            found.add(match.group(0))
    return found


def test_import_as_backend_client(secured: Secured, mariadb_url: str, tmp_path: Path) -> None:
    make_sample(mariadb_url, "clinica", 5, seed=3)
    reader = secured.backend_key("reader", tmp_path, "system/*.rs")
    reader_token = secured.token("reader", reader)

    # no credentials: every bundle is refused (401), nothing is written
    anonymous = _import(secured, mariadb_url, tmp_path / "s0", "--report", tmp_path / "s0.csv")
    assert anonymous.returncode == 1, anonymous.stdout + anonymous.stderr
    assert secured.patients(reader_token) == 0
    assert _refusals(tmp_path / "s0.csv") == {"HTTP 401"}

    # a client whose scopes only read: asking for write scopes (the default --scope) gets
    # no token, one line before any row is read; with its own read scopes, the SMART
    # policy refuses every write (403)
    refused = _import(
        secured, mariadb_url, tmp_path / "s1", "--client-id", "reader", "--key", reader
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "invalid_scope" in refused.stderr
    read_only = _import(
        secured, mariadb_url, tmp_path / "s1", "--client-id", "reader", "--key", reader,
        "--scope", "system/*.rs", "--report", tmp_path / "s1.csv",
    )  # fmt: skip
    assert read_only.returncode == 1, read_only.stdout + read_only.stderr
    assert secured.patients(reader_token) == 0
    assert _refusals(tmp_path / "s1.csv") == {"HTTP 403"}

    # the wrong key: one line naming the token endpoint, before any row is read
    importer = secured.backend_key("importer", tmp_path, "system/*.cruds")
    wrong = _import(
        secured, mariadb_url, tmp_path / "s2", "--client-id", "importer", "--key", reader
    )
    assert wrong.returncode == 1
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in wrong.stderr, wrong.stderr
    assert secured.token_url in lines[0] and "invalid_client" in lines[0]
    assert secured.patients(reader_token) == 0

    # the backend client with write scopes: the migration goes in. Issued invoices are
    # the exception: with authorization on, a client creates an Invoice as a draft only
    # (fhir_server/workflows/billing/lifecycle.py), so they are the only failed rows.
    report = tmp_path / "s3.csv"
    done = _import(
        secured, mariadb_url, tmp_path / "s3", "--client-id", "importer", "--key", importer,
        "--report", report,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [row for row in support.report_rows(report) if row["severity"] == "error"]
    assert errors and {row["mapping"] for row in errors} == {"invoices"}
    assert all("created as a draft" in row["reason"] for row in errors)
    assert secured.patients(reader_token) == 5

    half = _import(secured, mariadb_url, tmp_path / "s4", "--client-id", "importer")
    assert half.returncode == 2 and "--client-id and --key go together" in half.stderr
    both = _import(
        secured, mariadb_url, tmp_path / "s4", "--client-id", "importer", "--key", importer,
        "--token", reader_token,
    )  # fmt: skip
    assert both.returncode == 2 and "not both" in both.stderr


def test_import_outlives_the_token_lifetime(
    secured: Secured, mariadb_url: str, tmp_path: Path
) -> None:
    """A run longer than one token (30 s here) finishes: the run takes its first token
    before it reads any row, then waits 35 s for the legacy dispensations table, held
    locked (LOCK TABLES ... WRITE) meanwhile; every write comes after the first token
    ran out, with a renewed one."""
    make_sample(mariadb_url, "clinica", 5, seed=3)
    importer = secured.backend_key("long-import", tmp_path, "system/*.cruds")
    report = tmp_path / "long.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    command = [
        str(FHIR_SERVER), "import", "run", "--source", mariadb_url, "--mapping", "clinica",
        "--fhir-url", secured.base, "--state-dir", str(tmp_path / "st"), "--no-progress",
        "--client-id", "long-import", "--key", str(importer), "--report", str(report),
    ]  # fmt: skip
    engine = create_engine(mariadb_url, poolclass=NullPool)
    held = engine.connect()
    process: subprocess.Popen[str] | None = None
    try:
        held.execute(text("LOCK TABLES pharmacy_dispensation WRITE"))
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        time.sleep(35)
        assert process.poll() is None, process.communicate()
        held.execute(text("UNLOCK TABLES"))
        out, err = process.communicate(timeout=180)
    finally:
        held.close()  # a closed session releases its table locks
        engine.dispose()
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
    errors = [row for row in support.report_rows(report) if row["severity"] == "error"]
    assert {row["mapping"] for row in errors} <= {"invoices"}, out + err  # drafts only
    access = secured.token("long-import", importer)
    assert secured.patients(access) == 5, out + err
    dispensed = httpx.get(
        f"{secured.base}/MedicationDispense",
        params={"_summary": "count"},
        headers={"Authorization": f"Bearer {access}"},
        timeout=30,
    )
    assert dispensed.status_code == 200, dispensed.text
    assert dispensed.json()["total"] > 0, out + err


def _users(secured: Secured, source: str, *auth: str | Path) -> Any:
    return secured.cli(
        "import", "users", "--source", source, "--mapping", "clinica",
        "--fhir-url", secured.base, *auth,
    )  # fmt: skip


def test_import_users_as_backend_client(secured: Secured, mariadb_url: str, tmp_path: Path) -> None:
    """``import users --client-id --key`` looks the linked records up with the backend
    client's token: each user gets its migrated Practitioner or Patient."""
    make_sample(mariadb_url, "clinica", 5, seed=3)
    migrator = secured.backend_key("migrator", tmp_path, "system/*.cruds")
    migrated = _import(
        secured, mariadb_url, tmp_path / "st", "--client-id", "migrator", "--key", migrator
    )
    assert "Traceback" not in migrated.stderr, migrated.stderr  # (issued invoices: exit 1)
    reader = secured.backend_key("user-reader", tmp_path, "system/*.rs")

    def accounts() -> dict[str, dict[str, Any]]:
        with MongoClient(secured.mongo_url) as mc:
            found = mc[secured.database]["auth_users"].find()
            return {u["_id"]: u for u in found}

    # the wrong key: one line naming the token endpoint, no user created
    wrong = _users(secured, mariadb_url, "--client-id", "migrator", "--key", reader)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and secured.token_url in lines[0] and "invalid_client" in lines[0]
    assert "admin" not in accounts()

    done = _users(secured, mariadb_url, "--client-id", "migrator", "--key", migrator)
    assert done.returncode == 0, done.stdout + done.stderr
    users = accounts()
    doctors = [u for u in users.values() if u["role"] == "practitioner"]
    patients = [u for u in users.values() if u["role"] == "patient"]
    assert doctors and patients and users["admin"]["role"] == "admin"
    access = secured.token("user-reader", reader)
    for user in doctors + patients:
        assert user["fhir_user"], user  # resolved through the token's search
        r = httpx.get(
            f"{secured.base}/{user['fhir_user']}",
            headers={"Authorization": f"Bearer {access}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["resourceType"] == user["role"].capitalize()

    half = _users(secured, mariadb_url, "--client-id", "migrator")
    assert half.returncode == 2 and "--client-id and --key go together" in half.stderr
