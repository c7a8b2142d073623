"""``fhir-server load`` against a real ``fhir-server serve`` (and, for what a FHIR server
cannot be made to do on demand: headers seen, 503s, a loopback HTTP stub that records)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import serving
from pymongo import MongoClient

from fhir_server.testing import ServerProcess, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(mongo_url: str) -> Iterator[ServerProcess]:
    database = f"test_loader_{uuid.uuid4().hex[:12]}"
    with ServerProcess(mongo_url=mongo_url, database=database) as s:
        yield s
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    with client:
        client.drop_database(database)


def run_load(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command, as a user runs it (stderr is a pipe: no TTY, as in CI)."""
    command = [sys.executable, "-m", "fhir_server", "load", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def write_ndjson(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(text) + "\n")
    return path


def tag() -> str:
    return uuid.uuid4().hex[:10]


def patient(mark: str, n: int, **extra: Any) -> dict[str, Any]:
    ident = [{"system": "urn:test:loader", "value": f"{mark}-{n}"}]
    return {"resourceType": "Patient", "identifier": ident, "name": [{"family": "Núñez"}]} | extra


def bundle(kind: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    entries = []
    for r in resources:
        full_url = f"urn:uuid:{uuid.uuid4()}"
        request = {"method": "POST", "url": r["resourceType"]}
        entries.append({"fullUrl": full_url, "resource": r, "request": request})
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def search(server: ServerProcess, mark: str, n: int) -> list[dict[str, Any]]:
    params = {"identifier": f"urn:test:loader|{mark}-{n}"}
    r = httpx.get(f"{server.base_url}/Patient", params=params)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def found(server: ServerProcess, mark: str, n: int) -> bool:
    return len(search(server, mark, n)) == 1


# --- against the real server ----------------------------------------------------------------


def test_bundles_ndjson_and_resources_load(server: ServerProcess, tmp_path: Path) -> None:
    mark = tag()
    p0 = patient(mark, 0)
    txn = bundle("transaction", [p0])
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": txn["entry"][0]["fullUrl"]},
    }
    txn["entry"].append(
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": obs,
            "request": {"method": "POST", "url": "Observation"},
        }
    )
    write_json(tmp_path / "txn.json", txn)
    write_json(tmp_path / "batch.json", bundle("batch", [patient(mark, 1), patient(mark, 2)]))
    oid = f"o-{mark}"
    quantity = '{"value":1.50,"unit":"kg"}'
    write_ndjson(
        tmp_path / "lines.ndjson",
        [
            patient(mark, 3, id=f"p3-{mark}"),
            patient(mark, 4),
            '{"resourceType":"Observation","id":"' + oid + '","status":"final",'
            '"code":{"text":"w"},"valueQuantity":' + quantity + "}",
        ],
    )
    write_json(tmp_path / "one.json", patient(mark, 5, id=f"p5-{mark}"))

    result = run_load(tmp_path, "--url", server.base_url, "--batch-size", "2")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "files: 4 (0 skipped)" in result.stdout
    assert "resources: 8 sent, 8 succeeded, 0 failed" in result.stdout
    assert "\x1b[" not in result.stderr  # no terminal control codes off a TTY
    assert all(found(server, mark, n) for n in range(6))
    assert httpx.get(f"{server.base_url}/Patient/p3-{mark}").status_code == 200
    assert httpx.get(f"{server.base_url}/Patient/p5-{mark}").status_code == 200
    stored = httpx.get(f"{server.base_url}/Observation/{oid}").text
    assert '"value":1.50' in stored.replace(" ", "")  # spliced verbatim, never re-serialised
    subject = f"Patient/{search(server, mark, 0)[0]['id']}"  # urn:uuid resolved by the server
    linked = httpx.get(f"{server.base_url}/Observation", params={"subject": subject}).json()
    assert len(linked["entry"]) == 1


def test_failed_transaction_names_file_and_entry(server: ServerProcess, tmp_path: Path) -> None:
    mark = tag()
    doc = bundle(
        "transaction", [patient(mark, 0), patient(mark, 1, gender="nope"), patient(mark, 2)]
    )
    path = write_json(tmp_path / "bad-txn.json", doc)

    result = run_load(path, "--url", server.base_url)

    assert result.returncode == 1
    assert "resources: 3 sent, 0 succeeded, 3 failed" in result.stdout
    failure = next(line for line in result.stdout.splitlines() if "bad-txn.json" in line)
    assert "entry 1" in failure
    assert doc["entry"][1]["fullUrl"] in failure
    assert "400" in failure and "gender" in failure
    assert not any(found(server, mark, n) for n in range(3))  # all or nothing


def test_batch_with_a_bad_entry_loads_the_rest(server: ServerProcess, tmp_path: Path) -> None:
    mark = tag()
    doc = bundle("batch", [patient(mark, 0), patient(mark, 1, gender="nope"), patient(mark, 2)])
    path = write_json(tmp_path / "bad-batch.json", doc)

    result = run_load(path, "--url", server.base_url)

    assert result.returncode == 1
    assert "resources: 3 sent, 2 succeeded, 1 failed" in result.stdout
    failures = [line for line in result.stdout.splitlines() if "bad-batch.json" in line]
    assert len(failures) == 1
    assert "entry 1" in failures[0] and doc["entry"][1]["fullUrl"] in failures[0]
    assert "gender" in failures[0]
    assert found(server, mark, 0) and found(server, mark, 2)
    assert not found(server, mark, 1)


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_ndjson_bad_lines(server: ServerProcess, tmp_path: Path, kind: str) -> None:
    """A bad line fails its whole chunk as a transaction, only itself as a batch; an
    unreadable line never reaches the server."""
    mark = tag()
    lines: list[dict[str, Any] | str] = [
        patient(mark, 0, id=f"a-{mark}"),
        patient(mark, 1, id=f"b-{mark}"),
        patient(mark, 2, id=f"c-{mark}", gender="nope"),
        patient(mark, 3, id=f"d-{mark}"),
        "{not json",
    ]
    path = write_ndjson(tmp_path / "mixed.ndjson", lines)

    result = run_load(path, "--url", server.base_url, "--batch-size", "2", "--ndjson-bundle", kind)

    assert result.returncode == 1
    assert f"{path} line 5: invalid JSON" in result.stdout
    bad = next(line for line in result.stdout.splitlines() if "line 3" in line)
    assert f"{server.base_url}/Patient/c-{mark}" in bad and "gender" in bad
    assert found(server, mark, 0) and found(server, mark, 1)
    assert not found(server, mark, 2)
    assert found(server, mark, 3) == (kind == "batch")
    loaded = 3 if kind == "batch" else 2
    assert f"resources: 4 sent, {loaded} succeeded, {5 - loaded} failed" in result.stdout


def test_directories_recursively(server: ServerProcess, tmp_path: Path) -> None:
    mark = tag()
    write_json(tmp_path / "a" / "b" / "t.json", bundle("transaction", [patient(mark, 0)]))
    write_ndjson(tmp_path / "a" / "p.ndjson", [patient(mark, 1), patient(mark, 2)])
    write_ndjson(tmp_path / "c" / "p.jsonl", [patient(mark, 3)])
    (tmp_path / "a" / "notes.txt").write_text("not FHIR")
    write_json(tmp_path / "a" / ".hidden.json", {"oops": True})

    result = run_load(tmp_path / "a", tmp_path / "c", "--url", server.base_url, "--no-progress")

    assert result.returncode == 0, result.stdout
    assert "files: 3 (1 skipped)" in result.stdout
    assert "resources: 4 sent, 4 succeeded, 0 failed" in result.stdout
    assert result.stderr == ""
    assert all(found(server, mark, n) for n in range(4))


def test_usage_errors_exit_2(server: ServerProcess, tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("x")
    (tmp_path / "empty").mkdir()
    for args in (
        (tmp_path / "missing.json", "--url", server.base_url),
        (other, "--url", server.base_url),
        (tmp_path / "empty", "--url", server.base_url),
        (tmp_path, "--url", "ftp://example.org/fhir"),
        (tmp_path,),
    ):
        result = run_load(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Error" in result.stderr


# --- a recording HTTP stub on loopback ---------------------------------------------------------


DROP = 0  # scripted status: close the connection without answering


class Recorder(ThreadingHTTPServer):
    """Answers each request with the next scripted (status, headers), then 201."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.script = script
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fhir"


BUSY = json.dumps(
    {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "transient", "diagnostics": "busy"}],
    }
).encode()


class _Handler(BaseHTTPRequestHandler):
    server: Recorder
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        status, headers = self.server.script.pop(0) if self.server.script else (201, {})
        if status == DROP:
            self.close_connection = True
            return
        body = BUSY if status >= 400 else b""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with serving(Recorder([])) as stub:
        yield stub


def test_token_sent_as_bearer(recorder: Recorder, tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", patient("t", 0, id="p1"))

    assert run_load(path, "--url", recorder.base_url, "--token", "s3cret").returncode == 0
    # (--restart: the journal would skip the file the first run loaded)
    assert run_load(path, "--url", recorder.base_url, "--restart").returncode == 0

    (m1, path1, with_token), (_, _, without) = recorder.seen
    assert (m1, path1) == ("PUT", "/fhir/Patient/p1")
    assert with_token["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in without
    assert with_token["Content-Type"] == "application/fhir+json"


def test_retries_503_then_succeeds(recorder: Recorder, tmp_path: Path) -> None:
    recorder.script += [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})]
    path = write_json(tmp_path / "p.json", patient("r", 0))

    result = run_load(path, "--url", recorder.base_url)

    assert result.returncode == 0, result.stdout
    assert "retries: 2" in result.stdout
    assert [(m, p) for m, p, _ in recorder.seen] == [("POST", "/fhir/Patient")] * 3


def test_retries_are_bounded(recorder: Recorder, tmp_path: Path) -> None:
    recorder.script += [(503, {"Retry-After": "0"})] * 3
    path = write_json(tmp_path / "p.json", patient("r", 0))

    result = run_load(path, "--url", recorder.base_url, "--retries", "2")

    assert result.returncode == 1
    assert len(recorder.seen) == 3
    assert f"{path} resource: 503: busy" in result.stdout


def test_connection_errors_are_retried_then_reported(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", patient("c", 0))

    result = run_load(path, "--url", f"http://127.0.0.1:{free_port()}/fhir", "--retries", "1")

    assert result.returncode == 1
    assert "retries: 1" in result.stdout
    assert "ConnectError" in result.stdout


@pytest.mark.parametrize(("resource_id", "requests"), [(None, 1), ("p1", 2)])
def test_lost_answer_retried_only_when_idempotent(
    recorder: Recorder, tmp_path: Path, resource_id: str | None, requests: int
) -> None:
    """A connection dropped after the request went out: PUT is re-sent, POST is reported
    (the server may have created the resource already)."""
    recorder.script.append((DROP, {}))
    extra = {"id": resource_id} if resource_id else {}
    path = write_json(tmp_path / "p.json", patient("d", 0, **extra))

    result = run_load(path, "--url", recorder.base_url)

    assert len(recorder.seen) == requests
    if resource_id:
        assert result.returncode == 0, result.stdout
    else:
        assert result.returncode == 1
        assert "not retried" in result.stdout
