"""Connections that never finish their headers, attacked over real TCP (issue 11, finding
9: 1,100 half-open connections were held for ever).

RFC 9110 section 15.5.9, 408 Request Timeout: "the server did not receive a complete
request message within the time that it was prepared to wait". The header deadline runs
from the connection (or the request's first byte) and is not extended by dribbled bytes;
idle keep-alive connections close after their own timeout; and over the concurrency limit
requests get 503 + Retry-After as an OperationOutcome, until the deadline frees places.
A request's body has its own absolute deadline from the end of its headers (slow body).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from pymongo import MongoClient

from fhir_server.testing import ServerProcess

pytestmark = pytest.mark.slow
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
KEEP_ALIVE = 1
LIMIT = 40
PARTIAL = b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nAccept: application/fhir+json\r\n"
FULL = b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture(scope="module")
def server(mongo_url: str) -> Iterator[ServerProcess]:
    database = f"test_{uuid.uuid4().hex[:12]}"
    env = {
        "FHIR_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "FHIR_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "FHIR_KEEP_ALIVE_TIMEOUT_SECONDS": str(KEEP_ALIVE),
        "FHIR_LIMIT_CONCURRENCY": str(LIMIT),
    }
    with ServerProcess(mongo_url=mongo_url, database=database, env=env) as process:
        yield process
    with MongoClient(mongo_url) as mc:
        mc.drop_database(database)


def connect(server: ServerProcess, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if first:
        sock.sendall(first)
    return sock


def closed_after(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``sock`` (reading what it sent), or fail."""
    start = time.monotonic()
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        pytest.fail(f"connection still open after {limit} s; got {received[:200]!r}")
    except ConnectionResetError:
        pass
    return time.monotonic() - start, received


def test_slow_loris_connections_are_closed_and_others_served(server: ServerProcess) -> None:
    silent = [connect(server) for _ in range(10)]  # connect, send nothing
    partial = [connect(server, PARTIAL) for _ in range(20)]  # headers never finished
    dribbler = connect(server, b"GET /fhir/metadata HTTP/1.1\r\n")
    stop = threading.Event()

    def dribble() -> None:  # one header byte every 0.2 s: must not extend the deadline
        with contextlib.suppress(OSError):
            while not stop.wait(0.2):
                dribbler.sendall(b"X")

    threading.Thread(target=dribble, daemon=True).start()
    started = time.monotonic()
    try:
        # Meanwhile a normal client is served at once.
        r = httpx.get(f"{server.base_url}/metadata", timeout=5)
        assert r.status_code == 200
        assert time.monotonic() - started < HEADER_TIMEOUT
        slack = HEADER_TIMEOUT + 2.0
        for sock in silent:
            _, got = closed_after(sock, slack)
            assert got == b""
        for sock in [*partial, dribbler]:
            _, got = closed_after(sock, slack)
            assert got.startswith(b"HTTP/1.1 408"), got
        assert time.monotonic() - started < slack + 0.5
    finally:
        stop.set()
        for sock in [*silent, *partial, dribbler]:
            sock.close()


def test_slow_body_gets_408_and_is_closed_while_others_are_served(
    server: ServerProcess,
) -> None:
    """Headers complete, ``Content-Length: 1000000``, then a byte every 0.2 s: the route
    awaits the body, holding a request task. RFC 9110 15.5.9: 408 means "the server did
    not receive a complete request message within the time that it was prepared to
    wait"; it is answered as an OperationOutcome and the connection is closed."""
    head = (
        b"POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/fhir+json\r\nContent-Length: 1000000\r\n\r\n"
    )
    slow = [connect(server, head + b'{"resourceType":"Patient"') for _ in range(5)]
    stop = threading.Event()

    def dribble() -> None:
        with contextlib.suppress(OSError):
            while not stop.wait(0.2):
                for sock in slow:
                    sock.sendall(b" ")

    threading.Thread(target=dribble, daemon=True).start()
    started = time.monotonic()
    try:
        # Meanwhile a normal read and a normal write are served at once.
        r = httpx.get(f"{server.base_url}/metadata", timeout=5)
        assert r.status_code == 200
        r = httpx.post(
            f"{server.base_url}/Patient",
            json={"resourceType": "Patient", "active": True},
            headers={"Content-Type": "application/fhir+json"},
            timeout=5,
        )
        assert r.status_code == 201, r.text
        assert time.monotonic() - started < BODY_TIMEOUT
        for sock in slow:
            _, got = closed_after(sock, BODY_TIMEOUT + 3.0)
            assert got.startswith(b"HTTP/1.1 408"), got
            head_part, _, body = got.partition(b"\r\n\r\n")
            assert b"application/fhir+json" in head_part.lower()
            outcome = json.loads(body)
            assert outcome["resourceType"] == "OperationOutcome"
            assert outcome["issue"][0]["code"] == "timeout"
        # Dribbling did not extend the deadline.
        assert time.monotonic() - started < BODY_TIMEOUT + 1.5
        assert httpx.get(f"{server.base_url}/metadata", timeout=5).status_code == 200
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_idle_keep_alive_connection_is_closed(server: ServerProcess) -> None:
    sock = connect(server, FULL)
    try:
        sock.settimeout(5)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        waited, _ = closed_after(sock, KEEP_ALIVE + 2.0)
        assert waited >= KEEP_ALIVE - 0.3
    finally:
        sock.close()


def test_over_the_limit_requests_get_503_until_the_deadline_frees_places(
    server: ServerProcess,
) -> None:
    held = [connect(server, PARTIAL) for _ in range(LIMIT)]
    try:
        time.sleep(0.2)  # let the server accept them all
        r = httpx.get(f"{server.base_url}/metadata", timeout=5)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1"
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "transient"
        for sock in held:
            closed_after(sock, HEADER_TIMEOUT + 2.0)
        r = httpx.get(f"{server.base_url}/metadata", timeout=5)
        assert r.status_code == 200
    finally:
        for sock in held:
            sock.close()
