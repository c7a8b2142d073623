"""A real multi-member MongoDB replica set on loopback ports, for failover tests and
benchmarks: members are mongod processes started the way the embedded default starts
its single one (embedded_mongo.py), with distinct priorities so that the set settles on
a known primary, and can be SIGKILLed and restarted one by one.

Not used by the server itself; production replica sets are run by their operators.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from fhir_server.embedded_mongo import (
    EmbeddedMongo,
    _file_size,
    _free_port,
    _lock_data_dir,
    _log_tail,
    find_mongod,
)

log = logging.getLogger(__name__)

_ALREADY_INITIALIZED = 23


class _Member(EmbeddedMongo):
    """One member: EmbeddedMongo's process handling, without its single-node set-up."""

    log_offset = 0  # where this run's lines start in the (appended) log

    def launch(self, port: int) -> None:
        """Start mongod on ``port`` (the data directory is kept across launches)."""
        binary = find_mongod(self.mongod_bin)
        (self.data_dir / "db").mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = _lock_data_dir(self.data_dir)
        self.log_offset = _file_size(self.log_path)
        self._spawn(binary, port)
        self.port = port

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no step-down; the port and data stay ours."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._reap()

    def hello(self, client: MongoClient[dict[str, Any]]) -> dict[str, Any] | None:
        """The member's ``hello`` reply, None when it does not answer."""
        if not self.alive:
            return None
        try:
            return dict(client.admin.command("hello"))
        except PyMongoError:
            return None

    def tail(self) -> str:
        return _log_tail(self.log_path, self.log_offset)


class ReplicaSet:
    """``size`` mongod processes in ``base_dir`` forming replica set ``name``.

    Member *i* has priority ``size - i``: member 0 is primary after start-up. When it
    dies, whichever secondary calls the election first wins it (member 1, the higher
    priority, takes over later if it lost); a restarted member 0 takes the primary back
    once it has caught up (a step-down of the other). ``election_timeout_ms`` is how
    long secondaries wait without hearing from the primary before calling an election
    (MongoDB's default is 10 s; tests lower it to keep the election short).

    Chained replication is off (``chainingAllowed: false``): every secondary fetches
    from the primary. With chaining, a member that synced from the interim primary
    during a failover kept fetching from it after it became a secondary again, so
    holding that one member back (a test's fail point) also held back the other, and a
    majority write waited until its timeout. On loopback, chaining saves nothing."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        mongod_bin: str | None = None,
        *,
        name: str = "rs0",
        election_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 2_000,
        cache_size_gb: float = 0.25,
        parameters: dict[str, str] | None = None,
    ) -> None:
        """``parameters``: more ``--setParameter`` for every member (a test enabling
        ``enableTestCommands`` for fail points, say)."""
        if size < 1:
            raise ValueError("a replica set needs at least one member")
        self.base_dir = Path(base_dir)
        self.name = name
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.members = [
            _Member(
                self.base_dir / f"member{i}",
                mongod_bin,
                replica_set=name,
                cache_size_gb=cache_size_gb,
                # a primary told to stop waits this long (15 s by default) for a
                # secondary to catch up; stop() ends every member anyway
                parameters={
                    "shutdownTimeoutMillisForSignaledShutdown": "1000",
                    **(parameters or {}),
                },
            )
            for i in range(size)
        ]
        self._ports: list[int] = []
        self._clients: dict[int, MongoClient[dict[str, Any]]] = {}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self._ports]

    @property
    def url(self) -> str:
        """A replica-set connection string naming every member (the driver discovers
        the primary and follows elections)."""
        if not self._ports:
            raise RuntimeError("the replica set is not started")
        return f"mongodb://{','.join(self.hosts)}/?replicaSet={self.name}"

    def pid(self, index: int) -> int | None:
        return self.members[index].pid

    def start(self, timeout: float = 90.0) -> str:
        """Start every member, initiate the set and wait until member 0 is a writable
        primary and all others are secondaries; returns the URL."""
        deadline = time.monotonic() + timeout
        atexit.register(self.stop)
        try:
            self._ports = [_free_port() for _ in self.members]
            for member, port in zip(self.members, self._ports, strict=True):
                member.launch(port)
            for i in range(len(self.members)):
                self._await_answer(i, deadline)
            self._initiate()
            self._await_settled(deadline)
        except BaseException:
            self.stop()
            raise
        log.info("replica set %s up on %s", self.name, ", ".join(self.hosts))
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every member at once, SIGKILL those still running after ``timeout``;
        no mongod outlives this call."""
        atexit.unregister(self.stop)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        procs = [m._proc for m in self.members if m._proc is not None and m.alive]
        for proc in procs:
            proc.terminate()
        end = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for member in self.members:
            member.stop()  # reaps, releases the data-dir lock

    # --- state --------------------------------------------------------------------------

    def primary(self) -> int | None:
        """Index of the member that is a writable primary now, if any."""
        for i, member in enumerate(self.members):
            hello = member.hello(self._client(i))
            if hello is not None and hello.get("isWritablePrimary"):
                return i
        return None

    def wait_for_primary(self, timeout: float = 60.0, *, other_than: int | None = None) -> int:
        """Wait until a member (not ``other_than``) is a writable primary; its index."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.primary()
            if found is not None and found != other_than:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"no primary in replica set {self.name} after {timeout} s")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (no step-down: the others notice by missed heartbeats)."""
        self.members[index].kill()
        with contextlib.suppress(KeyError):
            self._clients.pop(index).close()

    def kill_primary(self) -> int:
        """SIGKILL the current primary; its index."""
        index = self.wait_for_primary(10.0)
        self.kill(index)
        return index

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Start a killed member again on its port and wait until it is a secondary or
        primary (it catches up from the others' oplog)."""
        member = self.members[index]
        if member.alive:
            return
        deadline = time.monotonic() + timeout
        member.launch(self._ports[index])
        self._await_answer(index, deadline)
        while True:
            hello = member.hello(self._client(index))
            if hello is not None and (hello.get("secondary") or hello.get("isWritablePrimary")):
                return
            self._check_deadline(index, deadline, f"did not rejoin as secondary: {hello}")
            time.sleep(0.05)

    # --- start-up -----------------------------------------------------------------------

    def _client(self, index: int) -> MongoClient[dict[str, Any]]:
        client = self._clients.get(index)
        if client is None:
            client = MongoClient(
                self.hosts[index],
                directConnection=True,
                serverSelectionTimeoutMS=500,
                connectTimeoutMS=500,
                socketTimeoutMS=2000,
            )
            self._clients[index] = client
        return client

    def _await_answer(self, index: int, deadline: float) -> None:
        member = self.members[index]
        while member.hello(self._client(index)) is None:
            if not member.alive:
                raise RuntimeError(
                    f"mongod member {index} exited with code {member.returncode} during "
                    f"start-up; the end of {member.log_path}:\n{member.tail()}"
                )
            self._check_deadline(index, deadline, "does not answer")
            time.sleep(0.05)

    def _initiate(self) -> None:
        size = len(self.members)
        config = {
            "_id": self.name,
            "members": [
                {"_id": i, "host": host, "priority": size - i} for i, host in enumerate(self.hosts)
            ],
            "settings": {
                "chainingAllowed": False,
                "electionTimeoutMillis": self.election_timeout_ms,
                "heartbeatIntervalMillis": self.heartbeat_interval_ms,
            },
        }
        try:
            self._client(0).admin.command("replSetInitiate", config)
        except OperationFailure as exc:
            if exc.code != _ALREADY_INITIALIZED:
                raise

    def _await_settled(self, deadline: float) -> None:
        """Member 0 primary, every other member a secondary."""
        while True:
            states = [m.hello(self._client(i)) for i, m in enumerate(self.members)]
            first, rest = states[0], states[1:]
            if (
                first is not None
                and first.get("isWritablePrimary")
                and all(s is not None and s.get("secondary") for s in rest)
            ):
                return
            self._check_deadline(0, deadline, f"the set did not settle: {states}")
            time.sleep(0.1)

    def _check_deadline(self, index: int, deadline: float, problem: str) -> None:
        if time.monotonic() > deadline:
            member = self.members[index]
            raise TimeoutError(
                f"replica set {self.name} member {index} {problem}; the end of "
                f"{member.log_path}:\n{member.tail()}"
            )
