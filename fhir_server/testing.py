"""Run a real ``fhir-server serve`` process: for end-to-end tests and benchmarks, which
must talk to the server over TCP the way clients do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``fhir-server serve`` in a child process, on a free loopback port."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        mongo_url: str | None = None,
        database: str | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
        auth: bool = False,
        terminology: bool = False,
    ) -> None:
        """``auth`` False (the default for tests and benchmarks) serves without SMART
        authorization; True needs bearer tokens, as production does. ``terminology``
        False skips loading the R4 core terminology on start (about a second)."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        args = [sys.executable, "-m", "fhir_server", "serve", "--port", str(self.port)]
        args += ["--workers", str(workers), "--log-level", "warning"]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        if mongo_url is not None:
            args += ["--mongo-url", mongo_url]
        if database is not None:
            args += ["--database", database]
        self.args = args
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        self.env["FHIR_AUTH_ENABLED"] = "true" if auth else "false"
        self.env["FHIR_TERMINOLOGY_LOAD_CORE"] = "true" if terminology else "false"
        self.env.update(env or {})
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/metadata", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout} s")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (uvicorn shuts down gracefully, then the embedded mongod stops)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
