"""Running the API in several worker processes that each own a listening socket
(``SO_REUSEPORT``), so that the kernel spreads incoming connections across them.

uvicorn's own ``--workers`` shares one socket between the processes, and asyncio's
accept loop lets whichever worker wakes first drain the whole backlog. A few long-lived
keep-alive clients (an integration engine, a loader, the ingest benchmark) then all land
on one process while the other cores idle: measured during ``benchmarks/ingest.py``
with two workers, one at 80% CPU and the other at 3%.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn

from fhir_server import parent_death
from fhir_server.config import Settings

APP = "fhir_server.app:create_app_from_env"
HTTP_PROTOCOL = "fhir_server.http_timeouts:HeaderTimeoutProtocol"
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not start
_STARTUP_SECONDS = 10.0  # a worker that dies sooner failed to start: do not respawn it


def listening_socket(host: str, port: int, shared: bool = True) -> socket.socket:
    """A socket bound to ``host:port``; ``shared``: other processes (of this user) may
    bind it as well, and the kernel spreads connections over all of them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None: it can), found by binding it once,
    so that ``serve`` refuses before it starts mongod or the worker."""
    if port == 0:
        return None
    try:
        listening_socket(host, port, shared=False).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"port {port} on {host} is in use"
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _options(host: str, port: int, log_level: str, graceful: float) -> dict[str, Any]:
    """uvicorn's options; the connection limits come from the FHIR_* environment (as
    the app's Settings do in every worker)."""
    settings = Settings()
    return {
        "factory": True,
        "host": host,
        "port": port,
        "log_level": log_level,
        "proxy_headers": True,
        # X-Forwarded-* from these peers only (FHIR_TRUSTED_PROXIES, checked by Settings)
        "forwarded_allow_ips": settings.trusted_proxies,
        # Header-read deadline and OperationOutcome 503s (fhir_server/http_timeouts.py).
        "http": HTTP_PROTOCOL,
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
        "limit_concurrency": settings.limit_concurrency or None,
        # SIGTERM: requests still running after this are cancelled, so the server stops
        "timeout_graceful_shutdown": graceful,
    }


def _worker(host: str, port: int, log_level: str, graceful: float, parent: int) -> None:
    """One worker process: its own socket in the port's SO_REUSEPORT group. It stops
    when the server dies (even by SIGKILL); a hang-up is the server's to handle."""
    parent_death.arm(parent)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server = uvicorn.Server(uvicorn.Config(APP, **_options(host, port, log_level, graceful)))
    server.run(sockets=[listening_socket(host, port)])


def serve(host: str, port: int, workers: int, log_level: str, graceful: float = 10.0) -> int:
    """Serve until SIGTERM, SIGINT or SIGHUP; returns the exit status."""
    if workers == 1 or port == 0 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(APP, workers=workers, **_options(host, port, log_level, graceful))
        return 0
    try:
        # A bind without SO_REUSEPORT fails if anything holds the port, including another
        # server's shared sockets (which would otherwise silently take half the traffic).
        listening_socket(host, port, shared=False).close()
        reserved = listening_socket(host, port)  # held, not listening: takes no connections
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(f"serving on http://{host}:{port} with {workers} workers", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.set())
    context = multiprocessing.get_context("spawn")

    def start() -> tuple[BaseProcess, float]:
        process = context.Process(
            target=_worker, args=(host, port, log_level, graceful, os.getpid()), daemon=False
        )
        process.start()
        return process, time.monotonic()

    processes = [start() for _ in range(workers)]
    status = 0
    try:
        while not stop.wait(0.5):
            for i, (process, started) in enumerate(processes):
                if process.is_alive():
                    continue
                if time.monotonic() - started < _STARTUP_SECONDS:
                    print(f"error: worker exited at start-up ({process.exitcode})", file=sys.stderr)
                    status = STARTUP_FAILURE
                    stop.set()
                    break
                note = f"worker {process.pid} exited ({process.exitcode}); restarting"
                print(note, file=sys.stderr)
                processes[i] = start()
    finally:
        for process, _ in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        for process, _ in processes:
            process.join(timeout=graceful + 5)
            if process.is_alive():
                process.kill()
                process.join()
        reserved.close()
    return status
