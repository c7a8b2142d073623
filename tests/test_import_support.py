"""Fixtures and helpers of the importer tests (tests/test_import_*.py): a fresh database
per test on the machine's real MariaDB and PostgreSQL, and a real ``fhir-server serve``
process per test. No tests here."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir_helpers import shipped_resources
from pymongo import MongoClient
from sqlalchemy import create_engine, text

from fhir_server.testing import ServerProcess, free_port
from importers.run import RunOptions, Summary, run_import
from importers.sample import Dirt, ensure_database

# a sample with no dirt: the tests that plant their own dirty values start from it
CLEAN = Dirt(mojibake=0, null=0, zero_date=0, orphan=0, duplicate=0, bad_cedula=0)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def start_private_mariadb(directory: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A throw-away ``mariadbd`` (Debian's mariadb-server) on a free port, for machines
    without a MariaDB service. Grant tables are skipped: it listens on loopback only."""
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    daemon = shutil.which("mariadbd") or shutil.which("mysqld") or "/usr/sbin/mariadbd"
    if install is None or not Path(daemon).exists():
        raise pytest.fail.Exception(
            "no MariaDB on 127.0.0.1:3306 and no mariadb-server to start one: install it "
            "(apt-get install -y mariadb-server)",
            pytrace=False,
        )
    data = directory / "data"
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        [install, "--no-defaults", f"--datadir={data}", "--skip-test-db", *user],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = _start_listening(
        [daemon, "--no-defaults", f"--datadir={data}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--socket={directory / 'mysqld.sock'}",
         "--skip-grant-tables", "--skip-networking=0", *user],
        port,
        "mariadbd",
    )  # fmt: skip
    return f"mysql+pymysql://root@127.0.0.1:{port}", proc


def _start_listening(args: list[str], port: int, what: str) -> subprocess.Popen[bytes]:
    """Start a private database server and wait (up to 60 s) until it accepts connections."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _listening("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise pytest.fail.Exception(f"the private {what} did not start", pytrace=False)
        time.sleep(0.2)
    return proc


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """FHIR_TEST_MARIADB_URL, else the machine's MariaDB on 127.0.0.1:3306, else a private
    mariadbd started for the session."""
    external = os.environ.get("FHIR_TEST_MARIADB_URL")
    if external:
        yield external
        return
    if _listening("127.0.0.1", 3306):
        yield "mysql+pymysql://root@127.0.0.1:3306"
        return
    url, proc = start_private_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _drop(server_url: str, name: str) -> None:
    admin = server_url + ("/postgres" if server_url.startswith("postgresql") else "")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        q = conn.dialect.identifier_preparer.quote
        if server_url.startswith("postgresql"):
            conn.execute(text(f"DROP DATABASE IF EXISTS {q(name)} WITH (FORCE)"))
        else:
            conn.execute(text(f"DROP DATABASE IF EXISTS {q(name)}"))
    engine.dispose()


@pytest.fixture
def mariadb_url(mariadb_server: str) -> Iterator[str]:
    """A new, empty MariaDB database for this test, dropped after it."""
    name = f"imp_{uuid.uuid4().hex[:10]}"
    url = f"{mariadb_server}/{name}?charset=utf8mb4"
    ensure_database(url)
    yield url
    _drop(mariadb_server, name)


def start_private_postgres() -> tuple[str, subprocess.Popen[bytes], Path]:
    """A throw-away PostgreSQL (Debian's postgresql package) on a free port, trust auth on
    loopback. PostgreSQL refuses to run as root, so then it runs as the postgres user."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        raise pytest.fail.Exception(
            "no PostgreSQL on 127.0.0.1:5432 and no postgresql package to start one: install "
            "it (apt-get install -y postgresql)",
            pytrace=False,
        )
    bindir = bins[-1].parent
    directory = Path(tempfile.mkdtemp(prefix="fhir-import-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        os.chown(directory, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(directory / "data"), "-U", "postgres",
         "--auth=trust", "-E", "UTF8", "--no-locale"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = _start_listening(
        [*as_user, str(bindir / "postgres"), "-D", str(directory / "data"), "-p", str(port),
         "-k", str(directory), "-c", "listen_addresses=127.0.0.1"],
        port,
        "PostgreSQL",
    )  # fmt: skip
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}", proc, directory


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """FHIR_TEST_POSTGRES_URL, else the machine's PostgreSQL on 127.0.0.1:5432, else a
    private one started for the session."""
    external = os.environ.get("FHIR_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    if _listening("127.0.0.1", 5432):
        yield "postgresql+psycopg://postgres@127.0.0.1:5432"
        return
    url, proc, directory = start_private_postgres()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    name = f"imp_{uuid.uuid4().hex[:10]}"
    url = f"{postgres_server}/{name}"
    ensure_database(url)
    yield url
    _drop(postgres_server, name)


@dataclass(frozen=True)
class Target:
    base: str
    mongo_url: str
    database: str


@pytest.fixture
def fhir_target(mongo_url: str, tmp_path: Path) -> Iterator[Target]:
    """A real server process on its own MongoDB database (auth off: see common.md)."""
    database = f"imp_{uuid.uuid4().hex[:10]}"
    server = ServerProcess(
        mongo_url=mongo_url,
        database=database,
        env={"FHIR_AUTH_ENABLED": "false"},
        log_file=tmp_path / "server.log",
    )
    with server:
        yield Target(server.base_url, mongo_url, database)
    with MongoClient(mongo_url) as mc:
        mc.drop_database(database)


@pytest.fixture
def fhir_base(fhir_target: Target) -> str:
    return fhir_target.base


def execute(url: str, *statements: str, params: list[dict[str, Any]] | None = None) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name != "postgresql":
            conn.execute(text("SET SESSION sql_mode = ''"))
        for statement in statements:
            conn.execute(text(statement), params or {})
    engine.dispose()


def run(source: str, mapping: str, base: str | None, state_dir: Path, **kw: Any) -> Summary:
    options = RunOptions(
        source_url=source,
        mapping=mapping,
        fhir_url=base,
        state_dir=state_dir,
        report=kw.pop("report", state_dir / "report.csv"),
        batch_size=kw.pop("batch_size", 50),
        **kw,
    )
    return run_import(options)


def stats(summary: Summary, name: str) -> Any:
    return next(t for t in summary.tables if t.name == name)


def get(base: str, path: str, **params: Any) -> Any:
    r = httpx.get(f"{base}/{path}", params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def search(base: str, path: str, **params: Any) -> list[dict[str, Any]]:
    bundle = get(base, path, _count=1000, **params)
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def by_identifier(base: str, resource_type: str, system: str, value: str) -> dict[str, Any]:
    found = search(base, resource_type, identifier=f"{system}|{value}")
    assert len(found) == 1, (resource_type, system, value, len(found))
    return found[0]


def count(base: str, resource_type: str) -> int:
    return int(get(base, resource_type, _summary="count")["total"])


def history_total(base: str, resource_type: str | None = None) -> int:
    """Versions in the type's (or the system's) history; the system's without the
    definitions the server installs at start-up (fhir_helpers.shipped_resources)."""
    if resource_type:
        return int(get(base, f"{resource_type}/_history", _summary="count")["total"])
    return int(get(base, "_history", _summary="count")["total"]) - len(shipped_resources())


def report_rows(path: Path) -> list[dict[str, str]]:
    from importers.run import iter_report

    return list(iter_report(path))
