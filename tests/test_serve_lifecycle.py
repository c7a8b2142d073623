"""``fhir-server serve`` fails cleanly and leaves nothing behind (issue 18), through real
processes: the server, its embedded mongod and its embedded Celery worker.

- SIGINT and SIGHUP go to the server's whole process group, as a terminal's Ctrl-C and
  hang-up do; SIGTERM and SIGKILL to the server alone. After each, no process the server
  started is left (a worker left behind reconnected to the next server's mongod).
- A busy port, a bad setting and a wrong --mongo-url are each one line, exit code 2,
  with nothing started.
- The start-up hints are printed on every start, and the command they print runs.
- Every option a command's --help mentions is one of that command's options.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import pytest
from process_helpers import descendant_pids

from fhir_server.cli import main
from fhir_server.testing import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "fhir_server"]
UNREACHABLE_SECONDS = 5.0  # fhir_server.startup.MONGO_CHECK_SECONDS


def _env(**extra: str) -> dict[str, str]:
    """The environment without the caller's FHIR_* settings (but its mongod binary)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    if "FHIR_MONGOD_BIN" in os.environ:
        env["FHIR_MONGOD_BIN"] = os.environ["FHIR_MONGOD_BIN"]
    env.update(FHIR_TERMINOLOGY_LOAD_CORE="false", FHIR_LOG_LEVEL="warning")
    env.update(extra)
    return env


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for a reaper has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _running(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _running(p)]


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


class Serve:
    """A ``serve`` child in a session of its own (its process group stands for the
    terminal's foreground job), with the embedded mongod and the embedded worker."""

    def __init__(self, data_dir: Path, log: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.log = log
        args = [*CLI, "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        args += ["--workers", str(workers)]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                args,
                env=_env(FHIR_AUTH_ENABLED="false"),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                url = f"http://127.0.0.1:{self.port}/fhir/metadata"
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.process.kill()
        raise AssertionError(f"serve not ready: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self, workers: int) -> dict[str, list[int]]:
        """The server's descendants by kind, once all of them have started."""
        deadline = time.monotonic() + 30
        kinds: dict[str, list[int]] = {}
        while time.monotonic() < deadline:
            kinds = {"mongod": [], "worker": [], "api": [], "other": []}
            for pid in descendant_pids(self.process.pid):
                cmd = _cmdline(pid)
                if "--dbpath" in cmd:
                    kinds["mongod"].append(pid)
                elif "fhir_server worker" in cmd:
                    kinds["worker"].append(pid)
                elif "spawn_main" in cmd:
                    kinds["api"].append(pid)
                else:
                    kinds["other"].append(pid)
            if kinds["mongod"] and kinds["worker"] and len(kinds["api"]) == (workers > 1) * workers:
                return kinds
            time.sleep(0.1)
        raise AssertionError(f"children of serve not all found: {kinds}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the module's servers, one after the other: every start but the
    first is a restart, and each must find nothing of the previous server running."""
    return tmp_path_factory.mktemp("serve") / "data"


def _hint_commands(output: str) -> list[str]:
    """The commands the start-up hint prints, one per line after its 'e.g.'."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Other commands on"))
    return [line.strip() for line in lines[start + 1 : start + 3]]


@pytest.mark.parametrize(
    ("sig", "to_group", "workers"),
    [
        (signal.SIGINT, True, 1),  # Ctrl-C in the terminal
        (signal.SIGTERM, False, 1),  # kill, systemd, docker stop
        (signal.SIGHUP, True, 1),  # the terminal closed
        (signal.SIGKILL, False, 1),  # kill -9, the OOM killer: no code of ours runs
        (signal.SIGKILL, False, 2),  # ... with uvicorn worker processes too
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL", "SIGKILL-2-workers"],
)
def test_signal_leaves_no_process_behind(
    data_dir: Path, tmp_path: Path, sig: signal.Signals, to_group: bool, workers: int
) -> None:
    server = Serve(data_dir, tmp_path / "serve.log", workers)
    try:
        kinds = server.children(workers)
        everything = [pid for pids in kinds.values() for pid in pids]
        # The hints, on every start (the shared data dir makes all but one a restart).
        output = server.output()
        assert re.search(r"^MongoDB \(the embedded mongod\): mongodb://127\.0\.0\.1:", output, re.M)
        for command in _hint_commands(output):  # runnable from where serve was started
            program = shlex.split(command)[0]
            assert (REPO / program).is_file() or shutil.which(program), command
        if to_group:
            os.killpg(server.process.pid, sig)
        else:
            os.kill(server.process.pid, sig)
        status = server.process.wait(60)
        left = _wait_gone(everything, 30)
        assert not left, {p: _cmdline(p) for p in left}
        if sig != signal.SIGKILL:
            assert status == 0, server.output()
    finally:
        server.stop()


def test_printed_commands_work_as_printed(data_dir: Path, tmp_path: Path) -> None:
    """The printed reindex command runs as it is, from where the server was started,
    on the server's database, while the server runs."""
    server = Serve(data_dir, tmp_path / "serve.log")
    try:
        assert httpx.put(
            f"http://127.0.0.1:{server.port}/fhir/Patient/hint",
            json={"resourceType": "Patient", "id": "hint"},
        ).status_code in (200, 201)
        reindex = next(c for c in _hint_commands(server.output()) if " reindex " in c)
        ran = subprocess.run(
            shlex.split(reindex),
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr
        assert "Patient: 1" in ran.stdout
    finally:
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(60) == 0
        server.stop()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_busy_port_is_one_line_and_starts_nothing(busy_port: int, tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = subprocess.run(
        [*CLI, "serve", "--port", str(busy_port), "--data-dir", str(data)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert _one_line(result) == f"error: port {busy_port} on 127.0.0.1 is in use"
    assert not data.exists()  # no mongod ever started on it


@pytest.mark.parametrize(
    ("args", "variable", "value"),
    [
        (["serve"], "FHIR_AUTH_ACCESS_TOKEN_SECONDS", "20"),
        (["serve"], "FHIR_PORT", "eighty"),
        (["worker", "--mongo-url", "mongodb://127.0.0.1:1/"], "FHIR_SLOT_TIMEZONE", "Mars/Olympus"),
        (["reindex"], "FHIR_AUTH_ACCESS_TOKEN_SECONDS", "20"),
        (
            [
                "auth",
                "create-user",
                "--username",
                "u",
                "--password",
                "a-long-password",
                "--role",
                "admin",
                "--mongo-url",
                "mongodb://127.0.0.1:1/",
            ],
            "FHIR_WORKERS",
            "0",
        ),
    ],
    ids=["serve-token-seconds", "serve-port", "worker-zone", "reindex", "auth"],
)
def test_bad_setting_is_one_line_naming_it(
    args: list[str], variable: str, value: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    result = subprocess.run(
        [*CLI, *args],
        env=_env(**{variable: value, "FHIR_DATA_DIR": str(data)}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    line = _one_line(result)
    assert line.startswith(f"error: invalid setting {variable}={value}: "), line
    assert not data.exists()


@pytest.mark.parametrize(
    ("args", "url", "says"),
    [
        (["serve"], "mongodb://127.0.0.1:{port}/", "no MongoDB answered"),
        (["serve"], "localhost:27017", "is not a MongoDB URL"),
        (["worker"], "mongodb://127.0.0.1:{port}/?replicaSet=rs0", "no MongoDB answered"),
    ],
    ids=["serve-unreachable", "serve-not-a-url", "worker-unreachable"],
)
def test_wrong_mongo_url_is_one_line_naming_it(
    args: list[str], url: str, says: str, tmp_path: Path
) -> None:
    url = url.format(port=free_port())
    port = free_port()
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, *args, "--mongo-url", url, *(["--port", str(port)] if args == ["serve"] else [])],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < UNREACHABLE_SECONDS + 15
    assert result.returncode == 2
    line = _one_line(result)
    assert url in line and "--mongo-url" in line and says in line, line


@pytest.mark.parametrize("name", ["serve", "worker", "reindex"])
def test_help_mentions_only_the_commands_own_options(name: str) -> None:
    """An option named in the command's help (its text, an option's help, the epilog)
    is one of its own: `worker --help` used to send users to a --data-dir it lacks, and
    `reindex --help` described --base-url as the API's Location header base."""
    command = main.get_command(click.Context(main, info_name="fhir-server"), name)
    assert command is not None
    ctx = click.Context(command, info_name=name)
    text = re.sub(r"-\n\s*", "-", command.get_help(ctx))  # an option wrapped at its hyphen
    own = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    assert mentioned <= own | {"--help"}, mentioned - own
    if name != "serve":  # the API's settings, described as the API uses them
        assert "Location headers" not in text
