"""``fhir-server load`` resumes where it stopped (the --journal): a load of transaction
Bundles with POST entries, SIGKILLed partway and rerun, leaves every resource on the
server exactly once. Real processes throughout: a ``serve`` process, the ``load`` CLI, and
between them a small forwarding proxy that holds one request unanswered, so the kill
lands at a known point (a request the server applied but whose answer was not yet
journaled would be sent again: the one window a journal cannot close)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.testing import ServerProcess

pytestmark = pytest.mark.slow
FHIR_SERVER = Path(sys.executable).parent / "fhir-server"
BUNDLES = 30
OBSERVATIONS = 3  # per bundle, besides its Patient
FORWARDED = ("Content-Type", "Accept", "Prefer", "Authorization")


class Proxy:
    """Forwards to ``target``; with ``hold_at`` n, the n-th POST is held unanswered."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.hold_at: int | None = None
        self.posts = 0
        self.held = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "POST":
                    with proxy.lock:
                        proxy.posts += 1
                        hold = proxy.posts == proxy.hold_at
                    if hold:
                        proxy.held.set()
                        proxy.release.wait(60)
                        self.close_connection = True
                        return  # never answered: the client is killed meanwhile
                headers = {h: v for h in FORWARDED if (v := self.headers.get(h))}
                r = httpx.request(
                    self.command, proxy.target + self.path, content=body, headers=headers
                )
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("Content-Type", "text/plain"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = _forward

        return Handler

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(mongo_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    database = f"load_resume_{uuid.uuid4().hex[:10]}"
    with ServerProcess(
        mongo_url=mongo_url, database=database, log_file=tmp_path / "server.log"
    ) as process:
        yield process


def _bundle(n: int, observations: int = OBSERVATIONS) -> dict[str, Any]:
    """A Synthea-like transaction: POST entries, urn:uuid fullUrls referring to each other."""
    patient = f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:test:load-resume", "value": str(n)}],
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for i in range(observations):
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": f"reading {i}"},
            "subject": {"reference": patient},
            "valueQuantity": {"value": i + 0.5},
        }
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _count(server: ServerProcess, rtype: str) -> int:
    r = httpx.get(f"{server.base_url}/{rtype}", params={"_summary": "count"}, timeout=30)
    assert r.status_code == 200, r.text
    total: int = r.json()["total"]
    return total


def _counts(server: ServerProcess) -> tuple[int, int]:
    return _count(server, "Patient"), _count(server, "Observation")


def _journal_lines(journal: Path) -> int:
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def test_a_killed_load_resumes_without_duplicates(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "bundles"
    data.mkdir()
    for n in range(BUNDLES):
        (data / f"bundle-{n:02}.json").write_bytes(orjson.dumps(_bundle(n)))
    journal = tmp_path / "journal.ndjson"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}

    with Proxy(server.base_url.removesuffix("/fhir")) as proxy:
        command = [
            str(FHIR_SERVER), "load", str(data), "--url", proxy.base_url,
            "--concurrency", "1", "--no-progress", "--journal", str(journal),
        ]  # fmt: skip

        def load(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*command, *extra], capture_output=True, text=True, timeout=60, env=env
            )

        # the 8th upload is held: the first 7 were answered and journaled; kill -9
        proxy.hold_at = 8
        first = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            assert proxy.held.wait(30), first.communicate(timeout=5)
            assert _journal_lines(journal) == 7
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert first.returncode == -signal.SIGKILL
        assert _counts(server) == (7, 7 * OBSERVATIONS)
        with journal.open("ab") as torn:  # a line cut short by a kill mid-write
            torn.write(b'{"url":"http://127.0.0.1')

        # the rerun sends only the 23 uploads it had not loaded
        proxy.hold_at = None
        second = load()
        assert second.returncode == 0, second.stdout + second.stderr
        per_bundle = 1 + OBSERVATIONS
        assert f"resumed: 7 uploads ({7 * per_bundle} resources) already loaded" in second.stdout
        assert f"requests: {BUNDLES - 7} " in second.stdout
        assert _counts(server) == (BUNDLES, BUNDLES * OBSERVATIONS)
        assert _journal_lines(journal) == BUNDLES  # the torn line was dropped
        lines = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
        assert len({(line["file"], line["sha256"]) for line in lines}) == BUNDLES

        # a complete load rerun is a no-op
        third = load()
        assert third.returncode == 0, third.stdout + third.stderr
        assert "requests: 0 " in third.stdout
        assert f"resumed: {BUNDLES} uploads ({BUNDLES * per_bundle} resources)" in third.stdout
        assert _counts(server) == (BUNDLES, BUNDLES * OBSERVATIONS)

        # a changed file is sent again, whole (its digest and size differ)
        (data / "bundle-03.json").write_bytes(orjson.dumps(_bundle(3, OBSERVATIONS + 1)))
        fourth = load()
        assert fourth.returncode == 0, fourth.stdout + fourth.stderr
        assert "requests: 1 " in fourth.stdout
        assert f"resumed: {BUNDLES - 1} uploads" in fourth.stdout
        observations = (BUNDLES + 1) * OBSERVATIONS + 1
        assert _counts(server) == (BUNDLES + 1, observations)

        # --restart forgets the journal: everything is sent again
        fifth = load("--restart")
        assert fifth.returncode == 0, fifth.stdout + fifth.stderr
        assert f"requests: {BUNDLES} " in fifth.stdout and "resumed" not in fifth.stdout
        observations += BUNDLES * OBSERVATIONS + 1
        assert _counts(server) == (2 * BUNDLES + 1, observations)
        assert _journal_lines(journal) == BUNDLES


def test_a_refused_upload_is_not_journaled(server: ServerProcess, tmp_path: Path) -> None:
    """A transaction the server refused wrote nothing: a rerun sends (and reports) it
    again, while the good file next to it is skipped."""
    data = tmp_path / "bundles"
    data.mkdir()
    (data / "a-good.json").write_bytes(orjson.dumps(_bundle(1)))
    bad = _bundle(2)
    bad["entry"][0]["resource"]["gender"] = "nope"
    (data / "b-bad.json").write_bytes(orjson.dumps(bad))
    journal = tmp_path / "journal.ndjson"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    command = [
        str(FHIR_SERVER), "load", str(data), "--url", server.base_url, "--no-progress",
        "--journal", str(journal),
    ]  # fmt: skip
    for attempt in range(2):
        run = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        assert run.returncode == 1, run.stdout + run.stderr
        assert "b-bad.json" in run.stdout and "transaction not applied" in run.stdout
        assert _journal_lines(journal) == 1
        assert ("resumed: 1 uploads" in run.stdout) == (attempt == 1)
    assert _counts(server) == (1, OBSERVATIONS)
