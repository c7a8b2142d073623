"""Subscriptions in tests: creating them over HTTP, reading the delivery queue, and the
real receivers the workers deliver to (an HTTP server, an SMTP server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from http_helpers import serving
from pymongo import MongoClient

from fhir_server.config import Settings

HOOK = "http://127.0.0.1:9/hook"  # never reached: matching tests read the queue


def subscription(
    criteria: str,
    endpoint: str = HOOK,
    channel: str = "rest-hook",
    payload: str | None = None,
    headers: list[str] | None = None,
    status: str = "requested",
    **extra: Any,
) -> dict[str, Any]:
    ch: dict[str, Any] = {"type": channel}
    if channel != "websocket":
        ch["endpoint"] = endpoint
    if payload is not None:
        ch["payload"] = payload
    if headers:
        ch["header"] = headers
    return {
        "resourceType": "Subscription",
        "status": status,
        "reason": "test",
        "criteria": criteria,
        "channel": ch,
        **extra,
    }


def subscribe(client: Any, criteria: str, **kwargs: Any) -> str:
    r = client.post("/Subscription", json=subscription(criteria, **kwargs))
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "active"
    sid: str = r.json()["id"]
    return sid


def queued(settings: Settings, sub_id: str) -> list[tuple[str, str, int]]:
    """The notifications waiting for ``sub_id``, in order: (type, id, version)."""
    with MongoClient(settings.mongo_url) as mc:
        rows = mc[settings.database]["subscription_notifications"].find({"sub": sub_id})
        return [(r["t"], r["rid"], r["v"]) for r in rows.sort("_id", 1)]


def wait_for(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {check}")
        time.sleep(every)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A real HTTP server in the test process that records what it receives. ``answer``
    decides the status of each request; ``delay`` holds each answer that long."""

    requests: list[Received] = field(default_factory=list)
    answer: Callable[[Received], int] = lambda _: 200
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def of(self, method: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.method == method]


@contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            got = Received(self.command, self.path, dict(self.headers), body, time.monotonic())
            with state.lock:
                state.requests.append(got)
            if state.delay:
                time.sleep(state.delay)
            status = state.answer(got)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_GET = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    with serving(server):
        yield state
