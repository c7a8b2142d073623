"""The embedded mongod, against the real binary: replica set, restarts, locking, lookup."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient

from fhir_server.embedded_mongo import (
    DataDirLocked,
    EmbeddedMongo,
    MongodNotFound,
    find_mongod,
)

CACHE_GB = 0.25


async def _write_in_transaction(url: str, tag: str) -> None:
    """Two collections in one transaction: standalone mongod would refuse this."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    try:
        db = client.t
        async with client.start_session() as session, await session.start_transaction():
            await db.a.insert_one({"_id": tag}, session=session)
            await db.b.insert_one({"_id": tag}, session=session)
        with pytest.raises(RuntimeError):  # an aborted transaction leaves nothing behind
            async with client.start_session() as session, await session.start_transaction():
                await db.a.insert_one({"_id": f"{tag}-aborted"}, session=session)
                raise RuntimeError("abort")
    finally:
        await client.close()


def _ids(url: str) -> tuple[set[str], set[str]]:
    client: MongoClient[dict[str, Any]] = MongoClient(url)
    with client:
        return (
            {d["_id"] for d in client.t.a.find()},
            {d["_id"] for d in client.t.b.find()},
        )


def _member_hosts(url: str) -> list[str]:
    client: MongoClient[dict[str, Any]] = MongoClient(url)
    with client:
        config = client.admin.command("replSetGetConfig")["config"]
        return [m["host"] for m in config["members"]]


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie nobody reaps, e.g. under a container init, is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_dead(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_restart_keeps_data_transactions_and_lock(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(tmp_path, cache_size_gb=CACHE_GB)
    url = mongo.start()
    assert url == mongo.url
    assert url.startswith("mongodb://127.0.0.1:")
    first_port, first_pid = mongo.port, mongo.pid
    assert first_pid is not None
    asyncio.run(_write_in_transaction(url, "first"))
    assert _ids(url) == ({"first"}, {"first"})

    # A second instance in this process conflicts (flock is per open file description)...
    other = EmbeddedMongo(tmp_path, cache_size_gb=CACHE_GB)
    with pytest.raises(DataDirLocked, match=f"{tmp_path}.*process {os.getpid()}"):
        other.start()
    assert other.pid is None and other.url is None
    # ... and so does another process.
    code = f"import fhir_server.embedded_mongo as m; m.EmbeddedMongo({str(tmp_path)!r}).start()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DataDirLocked" in proc.stderr and str(tmp_path) in proc.stderr

    mongo.stop()
    mongo.stop()  # idempotent
    assert mongo.url is None
    assert _wait_dead(first_pid, timeout=0)  # stop() waited for mongod to exit

    # A restart reuses the previous port when it is free: nothing to reconfigure.
    mongo.start()
    assert mongo.port == first_port
    assert mongo.url is not None and _ids(mongo.url) == ({"first"}, {"first"})
    mongo.stop()

    # With the old port taken, the replica-set member must move to the new port. (Bound,
    # not listening: mongod probes a listener on the old port and hangs 30 s if it is silent.)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first_port or 0))
        with EmbeddedMongo(tmp_path, cache_size_gb=CACHE_GB) as again:
            assert again.url is not None and again.port != first_port
            assert _member_hosts(again.url) == [f"127.0.0.1:{again.port}"]
            assert _ids(again.url) == ({"first"}, {"first"})
            asyncio.run(_write_in_transaction(again.url, "second"))
            assert _ids(again.url) == ({"first", "second"}, {"first", "second"})
            second_pid = again.pid
        assert again.url is None
        assert second_pid is not None and not _alive(second_pid)


def test_mongod_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """No orphan mongod when the server is SIGKILLed; the data dir is usable afterwards."""
    script = textwrap.dedent(f"""
        import sys, time
        from fhir_server.embedded_mongo import EmbeddedMongo
        mongo = EmbeddedMongo({str(tmp_path)!r}, cache_size_gb={CACHE_GB})
        mongo.start()
        print(mongo.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        mongod_pid = int(parent.stdout.readline())
        assert _alive(mongod_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_dead(mongod_pid), "mongod outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
    with EmbeddedMongo(tmp_path, cache_size_gb=CACHE_GB) as mongo:
        assert mongo.url is not None
        asyncio.run(_write_in_transaction(mongo.url, "after-crash"))


def test_early_exit_reports_log_tail_and_releases_lock(tmp_path: Path) -> None:
    fake = tmp_path / "mongod"
    fake.write_text("#!/bin/sh\necho 'cannot open shared object file: libcurl.so.4' >&2\nexit 3\n")
    fake.chmod(0o755)
    for _ in range(2):  # the second start would be DataDirLocked if the lock leaked
        mongo = EmbeddedMongo(tmp_path / "data", str(fake))
        with pytest.raises(RuntimeError, match=r"code 3(.|\n)*libcurl\.so\.4"):
            mongo.start(timeout=10)
        assert mongo.pid is None


def test_find_mongod_rejects_bogus_explicit_path(tmp_path: Path) -> None:
    with pytest.raises(MongodNotFound, match=r"FHIR_MONGOD_BIN.*not an executable file"):
        find_mongod(str(tmp_path / "no-such-mongod"))
    not_executable = tmp_path / "mongod"
    not_executable.write_text("")
    with pytest.raises(MongodNotFound, match="not an executable file"):
        find_mongod(str(not_executable))
    with pytest.raises(MongodNotFound, match="not an executable file"):
        find_mongod(str(tmp_path))  # a directory
    not_executable.chmod(0o755)
    assert find_mongod(str(not_executable)) == str(not_executable)


def test_find_mongod_uses_the_wheel_without_importing_fiftyone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    already_imported = "fiftyone" in sys.modules
    found = find_mongod()
    assert found.endswith(os.path.join("fiftyone", "db", "bin", "mongod"))
    assert os.access(found, os.X_OK)
    if not already_imported:
        assert "fiftyone" not in sys.modules


def test_find_mongod_without_any_mongod(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def no_fiftyone(name: str, package: str | None = None) -> Any:
        return None if name.split(".")[0] == "fiftyone" else real_find_spec(name, package)

    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(importlib.util, "find_spec", no_fiftyone)
    with pytest.raises(MongodNotFound) as caught:
        find_mongod()
    message = str(caught.value)
    for hint in (
        "FHIR_MONGO_URL",
        "pip install 'fhir-server[embedded]'",
        "FHIR_MONGOD_BIN",
        "docker compose up mongo",
    ):
        assert hint in message
    assert "\n" not in message  # one paragraph


def test_mongod_gets_the_hard_open_file_limit_and_closes_idle_files(tmp_path: Path) -> None:
    """Every collection and index is a WiredTiger file with its own descriptor; with the
    usual soft limit of 1,024 a server holding many databases aborts ("Too many open
    files"), so mongod is started at the hard limit and closes files idle for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard))  # mongod inherits it
    try:
        mongo = EmbeddedMongo(tmp_path, cache_size_gb=CACHE_GB, close_idle_files_after=45)
        mongo.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{mongo.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        expected = str(1 << 20 if hard == resource.RLIM_INFINITY else hard)
        assert line.split()[3] == expected, line
        with MongoClient(mongo.url) as mc:
            got = mc.admin.command({"getParameter": 1, "wiredTigerFileHandleCloseIdleTime": 1})
        assert got["wiredTigerFileHandleCloseIdleTime"] == 45
    finally:
        mongo.stop()
