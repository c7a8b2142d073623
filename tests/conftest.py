"""Suite-wide fixtures. Tests run against a real MongoDB replica set, never a fake."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import AT_START, raw_document_count
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.embedded_mongo import EmbeddedMongo, MongodNotFound

_SESSION_MONGO: list[EmbeddedMongo] = []  # the suite's own mongod, once started
_HELLO_CLIENT: list[MongoClient[dict[str, object]]] = []  # a direct connection to it


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Fail the test after which the suite's mongod is gone or out of its replica set,
    with its log's tail, and start a dead one again on its port: one test's fault must not
    turn into a hundred errors, and must name the test."""
    result = yield
    if not _SESSION_MONGO:
        return result
    mongo = _SESSION_MONGO[0]
    if mongo.alive:
        hello = _hello(mongo)
        if hello.get("setName") == mongo.replica_set:
            return result
        problem = f"answers hello without its replica set ({hello})"
        tail = _log_tail(mongo)
    else:
        problem = f"exited (code {mongo.returncode})"
        tail = _log_tail(mongo)  # before the restart appends its own start-up lines
        mongo.restart()
    raise pytest.fail.Exception(
        "\n".join(
            [
                "the suite's mongod log ends:",
                *tail,
                f"the suite's mongod {problem} after {item.nodeid} (its log's tail above)",
            ]
        ),
        pytrace=False,
    )


def _log_tail(mongo: EmbeddedMongo) -> list[str]:
    return mongo.log_path.read_text(errors="replace").splitlines()[-40:]


def _hello(mongo: EmbeddedMongo) -> dict[str, object]:
    if not _HELLO_CLIENT:
        _HELLO_CLIENT.append(
            MongoClient(f"127.0.0.1:{mongo.port}", directConnection=True, timeoutMS=5000)
        )
    try:
        return dict(_HELLO_CLIENT[0].admin.command("hello"))
    except PyMongoError as exc:
        return {"error": repr(exc)}


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """FHIR_TEST_MONGO_URL if set, else a private mongod for the session (fails if none)."""
    external = os.environ.get("FHIR_TEST_MONGO_URL")
    if external:
        yield external
        return
    # Each test database is dozens of WiredTiger files: close idle ones fast, so that the
    # suite's ~2,000 databases never hold more descriptors than the machine allows.
    mongo = EmbeddedMongo(
        tmp_path_factory.mktemp("mongo"),
        os.environ.get("FHIR_MONGOD_BIN"),
        cache_size_gb=0.25,
        close_idle_files_after=30,
        parameters={"enableTestCommands": "1"},  # fail points (configureFailPoint)
    )
    try:
        url = mongo.start()
    except MongodNotFound as exc:  # a missing mongod must fail the suite, never skip it
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    _SESSION_MONGO.append(mongo)
    try:
        yield url
    finally:
        _SESSION_MONGO.clear()
        while _HELLO_CLIENT:
            _HELLO_CLIENT.pop().close()
        mongo.stop()


_KEPT = frozenset({"admin", "config", "local"})


@pytest.fixture(scope="module", autouse=True)
def _drop_module_databases(mongo_url: str) -> Iterator[None]:
    """Drop every database a test module created and did not drop itself (servers started
    by helpers, fixed names): left behind, their files pile up in the suite's mongod.
    Module-scoped fixtures are torn down before this runs (it is set up first). Only on
    the suite's own mongod: an external one (FHIR_TEST_MONGO_URL) may hold others' data."""
    if not _SESSION_MONGO:
        yield
        return
    with MongoClient(mongo_url) as mc:
        before = set(mc.list_database_names())
    yield
    with MongoClient(mongo_url) as mc:
        for name in set(mc.list_database_names()) - before - _KEPT:
            mc.drop_database(name)


@pytest.fixture
def settings(mongo_url: str) -> Settings:
    """Settings for one test: its own database, so tests never see each other's data.
    Authorization is off here (tests of the FHIR behaviour itself); SMART tests use
    ``auth_settings``/``auth_client``."""
    return Settings(
        mongo_url=mongo_url, database=f"test_{uuid.uuid4().hex[:12]}", auth_enabled=False
    )


@pytest.fixture
def auth_settings(mongo_url: str) -> Settings:
    """Like ``settings``, with SMART authorization on (the production default)."""
    return Settings(
        mongo_url=mongo_url, database=f"test_{uuid.uuid4().hex[:12]}", auth_enabled=True
    )


@pytest.fixture
def auth_client(auth_settings: Settings) -> Iterator[TestClient]:
    """An HTTP client on the real app with authorization on; requests need tokens."""
    with TestClient(create_app(auth_settings), base_url="http://testserver") as c:
        yield c
    with MongoClient(auth_settings.mongo_url) as mc:
        mc.drop_database(auth_settings.database)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """An HTTP client on the real ASGI app (lifespan run), dropping the database after."""
    with TestClient(create_app(settings), base_url="http://testserver") as c:
        AT_START[settings.database] = raw_document_count(settings)
        yield c
    AT_START.pop(settings.database, None)
    with MongoClient(settings.mongo_url) as mc:
        mc.drop_database(settings.database)


@pytest.fixture
def database(mongo_url: str) -> Iterator[str]:
    """A fresh database name for a server started as a process; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    with MongoClient(mongo_url) as mc:
        mc.drop_database(name)
