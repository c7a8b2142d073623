"""Health, Prometheus metrics and request ids (issue 18, "Health and metrics").

- ``/metrics`` (Prometheus text exposition format 0.0.4): request counts by interaction,
  type and status are exact; the latency histogram's buckets are cumulative and end at
  ``+Inf`` = ``_count``; MongoDB pool, bulk jobs/units, the Celery queue depth (the
  MongoDB broker) and failing subscription deliveries are reported.
- ``/metrics`` is not a FHIR endpoint: a FHIR access token (even an admin's) does not
  open it; FHIR_METRICS_TOKEN does, and without it only loopback clients are answered.
- ``X-Request-Id`` is echoed when sane (<= 128 of [A-Za-z0-9._-]), else generated, and
  the JSON log line of a real ``serve`` process carries it.
- ``/health/ready``: PRIMARY and schema checked; the worker heartbeat is reported
  (fresh, stale, missing) without turning ready 503.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient
from smart_helpers import TokenMint

from fhir_server.app import create_app
from fhir_server.bulk.heartbeat import HEARTBEATS, Heartbeat, beat
from fhir_server.config import Settings
from fhir_server.metrics import REGISTRY, classify
from fhir_server.request_id import JsonFormatter, request_id
from fhir_server.resource_types import resource_types
from fhir_server.testing import ServerProcess
from fhir_server.workflows.subscriptions.active import STATE

LOOPBACK = ("127.0.0.1", 50000)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextmanager
def app_client(
    mongo_url: str, peer: tuple[str, int] = LOOPBACK, **overrides: Any
) -> Iterator[TestClient]:
    settings = Settings(
        mongo_url=mongo_url,
        database=f"test_{uuid.uuid4().hex[:12]}",
        **{"auth_enabled": False, **overrides},
    )
    try:
        with TestClient(create_app(settings), base_url="http://testserver", client=peer) as c:
            yield c
    finally:
        with MongoClient[dict[str, Any]](mongo_url) as mc:
            mc.drop_database(settings.database)


def scrape(client: TestClient, **headers: str) -> Samples:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests(samples: Samples, interaction: str, rtype: str, status: int) -> float:
    labels = {"interaction": interaction, "type": rtype, "status": str(status)}
    return value(samples, "fhir_requests_total", **labels)


def outcome(r: httpx.Response, status: int, expression: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert any(expression in i.get("expression", []) for i in body["issue"]), body
    return body


# --- request counts and the histogram --------------------------------------------------


def test_request_counts_are_exact_by_interaction_type_and_status(mongo_url: str) -> None:
    with app_client(mongo_url) as c:
        before = scrape(c)
        r = c.post("/fhir/Patient", json={"resourceType": "Patient"})
        assert r.status_code == 201
        pid = r.json()["id"]
        for _ in range(2):
            assert c.get(f"/fhir/Patient/{pid}").status_code == 200
        assert c.get("/fhir/Patient/missing").status_code == 404
        assert c.get("/fhir/Patient", params={"_id": pid}).status_code == 200
        assert c.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
        assert c.get(f"/fhir/Patient/{pid}/_history").status_code == 200
        r = c.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid})
        assert r.status_code == 200
        assert c.delete(f"/fhir/Patient/{pid}").status_code in (200, 204)
        assert c.get("/fhir/metadata").status_code == 200
        assert c.head("/fhir/metadata").status_code == 200
        # an unknown type is counted without a type label: ids and junk never become labels
        assert c.get(f"/fhir/NoSuchType/{uuid.uuid4().hex}").status_code == 404
        after = scrape(c)

    def delta(interaction: str, rtype: str, status: int) -> float:
        return requests(after, interaction, rtype, status) - requests(
            before, interaction, rtype, status
        )

    assert delta("create", "Patient", 201) == 1
    assert delta("read", "Patient", 200) == 2
    assert delta("read", "Patient", 404) == 1
    assert delta("search-type", "Patient", 200) == 1
    assert delta("vread", "Patient", 200) == 1
    assert delta("history", "Patient", 200) == 1
    assert delta("update", "Patient", 200) == 1
    assert delta("capabilities", "", 200) == 1
    assert delta("head", "", 200) == 1
    assert delta("read", "", 404) == 1
    labels = {label for (name, ls) in after for (key, label) in ls if key == "type"}
    assert labels <= {""} | set(resource_types()), labels  # never an id

    # the histogram: cumulative buckets, +Inf equals _count, _count equals the reads
    name = "fhir_request_duration_seconds"
    count = value(after, f"{name}_count", interaction="read") - value(
        before, f"{name}_count", interaction="read"
    )
    assert count == 4  # 2 x 200, 404 on Patient, 404 on the unknown type
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in after.items()
        if n == f"{name}_bucket" and dict(ls)["interaction"] == "read"
    )
    assert buckets[-1][0] == float("inf")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1][1] == value(after, f"{name}_count", interaction="read")
    assert value(after, f"{name}_sum", interaction="read") > 0


def test_transaction_and_operation_interactions(mongo_url: str) -> None:
    with app_client(mongo_url) as c:
        before = scrape(c)
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": "Patient"},
                    "request": {"method": "POST", "url": "Patient"},
                }
            ],
        }
        assert c.post("/fhir", json=bundle).status_code == 200
        r = c.post("/fhir/Patient/$validate", json={"resourceType": "Patient"})
        assert r.status_code == 200
        after = scrape(c)
    assert requests(after, "transaction", "", 200) - requests(before, "transaction", "", 200) == 1
    assert (
        requests(after, "operation", "Patient", 200) - requests(before, "operation", "Patient", 200)
        == 1
    )


@pytest.mark.parametrize(
    ("route", "method", "expected"),
    [
        ("/_history", "GET", "history"),
        ("/_history", "POST", "history"),
        ("/fhir/_history", "DELETE", "history"),
        ("/{rtype:seg}/_history", "GET", "history"),
        ("/{rtype:seg}/{rid:seg}/_history/{vid:seg}", "GET", "vread"),
        ("", "POST", "transaction"),
        ("/", "GET", "search-system"),
        ("/_search", "POST", "search-system"),
        ("/{rtype:seg}/_search", "POST", "search-type"),
        ("/{ctype:seg}/{cid:seg}/{rtype:seg}", "GET", "search-compartment"),
        ("/{rtype:seg}", "DELETE", "delete"),
        ("/{rtype:seg}/{rid:seg}", "PATCH", "patch"),
        ("/Patient/{pid}/$everything", "GET", "operation"),
        ("/metadata", "PUT", "capabilities"),
        ("/ViewDefinition/x/y/z", "GET", "other"),
    ],
)
def test_classify_every_route_shape(route: str, method: str, expected: str) -> None:
    """Every route template of the app maps to an interaction without raising (the
    middleware runs it after every request)."""
    assert classify(route, method) == expected


def test_system_history_is_counted(mongo_url: str) -> None:
    with app_client(mongo_url) as c:
        before = scrape(c)
        assert c.get("/fhir/_history").status_code == 200
        assert c.post("/fhir/_history").status_code == 405
        after = scrape(c)
    for status in (200, 405):
        assert requests(after, "history", "", status) - requests(before, "history", "", status) == 1


def test_mongo_pool_and_scrape_time_gauges(mongo_url: str) -> None:
    with app_client(mongo_url) as c:
        db_name = c.app.state.services.settings.database  # type: ignore[attr-defined]
        with MongoClient[dict[str, Any]](mongo_url, tz_aware=True) as mc:
            db = mc[db_name]
            now = datetime.now(UTC)
            db["bulk_jobs"].insert_many(
                [{"_id": "j1", "status": "running"}, {"_id": "j2", "status": "failed"}]
            )
            db["bulk_units"].insert_many(
                [
                    {"_id": "j1:0", "state": "pending", "lease": now - timedelta(minutes=1)},
                    {"_id": "j1:1", "state": "pending", "lease": now + timedelta(minutes=1)},
                    {"_id": "j1:2", "state": "done"},
                ]
            )
            db["messages"].insert_many([{"queue": "fhir-bulk"}, {"queue": "fhir-bulk"}])
            # the state delivery.py keeps: ``failures`` in a row, reset to 0 on success
            db[STATE].insert_many(
                [{"_id": "s1", "failures": 3}, {"_id": "s2", "failures": 1}, {"_id": "s3"}]
            )
            # two units of audit facts another (live: leased) process staged while busy
            later = now + timedelta(minutes=5)
            db["audit_staging"].insert_many([{"lease": later, "facts": []} for _ in range(2)])
        m = scrape(c)
    assert value(m, "fhir_mongo_pool_connections_created_total") >= 1
    assert value(m, "fhir_mongo_pool_checked_out") >= 0
    assert value(m, "fhir_mongo_up") == 1
    assert value(m, "fhir_bulk_jobs", status="running") == 1
    assert value(m, "fhir_bulk_jobs", status="failed") == 1
    assert value(m, "fhir_bulk_jobs", status="complete") == 0
    assert value(m, "fhir_bulk_units", state="pending") == 1
    assert value(m, "fhir_bulk_units", state="running") == 1
    assert value(m, "fhir_celery_queue_depth") == 2
    assert value(m, "fhir_subscription_deliveries_failing") == 2
    assert value(m, "fhir_subscription_delivery_failures") == 4
    assert value(m, "fhir_audit_staged_units") == 2


def test_failed_mongo_commands_are_counted(mongo_url: str) -> None:
    with app_client(mongo_url) as c:
        before = scrape(c)
        client = c.app.state.mongo  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="no such command"):
            c.portal.call(client.admin.command, "noSuchCommandAtAll")  # type: ignore[union-attr]
        after = scrape(c)
    name = "fhir_mongo_command_failures_total"
    assert (
        value(after, name, command="noSuchCommandAtAll")
        - value(before, name, command="noSuchCommandAtAll")
        == 1
    )


def test_metrics_off_counts_nothing_and_answers_404(mongo_url: str) -> None:
    labels = {"interaction": "capabilities", "type": "", "status": "200"}
    with app_client(mongo_url, metrics=False) as c:
        before = REGISTRY.get_sample_value("fhir_requests_total", labels) or 0
        r = c.get("/metrics")
        outcome(r, 404, "/metrics")
        assert c.get("/fhir/metadata").headers["x-request-id"]  # ids stay on
        assert (REGISTRY.get_sample_value("fhir_requests_total", labels) or 0) == before
        assert not c.app.state.mongo._options.event_listeners  # type: ignore[attr-defined]


# --- who may scrape ----------------------------------------------------------------------


def test_metrics_loopback_only_without_token(mongo_url: str) -> None:
    with app_client(mongo_url, peer=("203.0.113.7", 4000)) as c:
        outcome(c.get("/metrics"), 403, "Authorization")
    with app_client(mongo_url, peer=("::1", 4000)) as c:
        assert c.get("/metrics").status_code == 200


def test_metrics_token_required_when_set(mongo_url: str) -> None:
    secret = uuid.uuid4().hex
    with app_client(mongo_url, peer=("203.0.113.7", 4000), metrics_token=secret) as c:
        r = c.get("/metrics")
        outcome(r, 401, "Authorization")
        assert r.headers["www-authenticate"].startswith("Bearer")
        outcome(c.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "Authorization")
        outcome(c.get("/metrics", headers={"Authorization": secret}), 401, "Authorization")
        assert c.get("/metrics", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    # with a token set, loopback alone is not enough either
    with app_client(mongo_url, metrics_token=secret) as c:
        outcome(c.get("/metrics"), 401, "Authorization")


def test_fhir_tokens_do_not_open_metrics(mongo_url: str) -> None:
    """A SMART access token is for the FHIR API; /metrics has its own token."""
    secret = uuid.uuid4().hex
    with app_client(
        mongo_url, peer=("203.0.113.7", 4000), auth_enabled=True, metrics_token=secret
    ) as c:
        db = c.app.state.services.settings.database  # type: ignore[attr-defined]
        mint = TokenMint(mongo_url, db)
        try:
            for scope in ("system/*.rs", "patient/*.rs", "user/*.cruds"):
                headers = mint.headers(scope)
                outcome(c.get("/metrics", headers=headers), 401, "Authorization")
            # and the metrics token is no FHIR token
            r = c.get("/fhir/Patient", headers={"Authorization": f"Bearer {secret}"})
            assert r.status_code == 401
        finally:
            mint.close()


# --- request ids -----------------------------------------------------------------------


def test_request_id_echoed_when_sane_else_generated(mongo_url: str) -> None:
    with app_client(mongo_url) as c:
        sane = "abc-DEF_1.2"
        assert (
            c.get("/fhir/metadata", headers={"X-Request-Id": sane}).headers["x-request-id"] == sane
        )
        longest = "a" * 128
        assert (
            c.get("/health/live", headers={"X-Request-Id": longest}).headers["x-request-id"]
            == longest
        )
        seen = set()
        for bad in ("a" * 129, "has space", "semi;colon", "", "ünï"):
            headers = {"X-Request-Id": bad} if bad != "ünï" else {}
            r = c.get("/fhir/Patient/missing", headers=headers)
            assert r.status_code == 404
            rid = r.headers["x-request-id"]
            assert rid != bad and re.fullmatch(r"[0-9a-f]{32}", rid)
            seen.add(rid)
        assert len(seen) == 5  # a new one for each request
        # errors carry it too (a bad-id FHIR error and an OperationOutcome 404)
        assert c.get("/nowhere").headers["x-request-id"]


# --- the JSON log of a real server ---------------------------------------------------------


def test_json_log_line_of_a_real_server(mongo_url: str, database: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(
        mongo_url=mongo_url, database=database, env={"FHIR_LOG_FORMAT": "json"}, log_file=log
    )
    server.args[server.args.index("warning")] = "info"
    rid = f"trace-{uuid.uuid4().hex}"
    with server:
        r = httpx.get(f"{server.base_url}/Patient/nope", headers={"X-Request-Id": rid})
        assert r.status_code == 404 and r.headers["x-request-id"] == rid
        root = server.base_url[: -len("/fhir")]
        # a real loopback peer: /metrics answers without a token
        assert httpx.get(f"{root}/metrics").status_code == 200
        # the export worker `serve` starts beats: ready reports it fresh
        deadline = time.monotonic() + 60
        worker: dict[str, Any] = {}
        while time.monotonic() < deadline:
            worker = httpx.get(f"{root}/health/ready").json()["worker"]
            if worker["fresh"]:
                break
            time.sleep(0.3)
        assert worker["status"] == "fresh" and worker["workers"] == 1, worker
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("request_id") == rid]
    assert len(mine) == 1, lines
    line = mine[0]
    assert line["method"] == "GET" and line["path"] == "/fhir/Patient/nope"
    assert line["status"] == 404 and line["level"] == "info"
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    assert datetime.fromisoformat(line["time"]).tzinfo is not None


def test_multiprocess_workers_are_summed(mongo_url: str, database: str, tmp_path: Path) -> None:
    """``serve --workers 2`` with PROMETHEUS_MULTIPROC_DIR: whichever worker answers the
    scrape, the counts are those of both workers together."""
    shared = tmp_path / "prom"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    server = ServerProcess(mongo_url=mongo_url, database=database, workers=2, env=env)
    with server, httpx.Client() as http:
        root = server.base_url[: -len("/fhir")]
        for _ in range(20):  # new connections: the kernel spreads them over both workers
            with httpx.Client() as one:
                assert one.get(f"{server.base_url}/metadata").status_code == 200
        for _ in range(4):
            r = http.get(f"{root}/metrics", headers={"Connection": "close"})
            assert r.status_code == 200
            m: Samples = {}
            for family in text_string_to_metric_families(r.text):
                for sample in family.samples:
                    m[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            # ServerProcess's own start-up polls GET /metadata too
            assert requests(m, "capabilities", "", 200) >= 20
            assert list(shared.glob("counter_*.db"))  # the workers' shared counters
        # the sum is stable across scrapes answered by either worker
        first = requests(m, "capabilities", "", 200)
        for _ in range(3):
            r = http.get(f"{root}/metrics", headers={"Connection": "close"})
            again = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(r.text)
                for s in f.samples
            }
            assert requests(again, "capabilities", "", 200) == first


def test_error_lines_carry_the_request_id_in_json() -> None:
    """The error log (api/errors.py logs unexpected errors on ``fhir_server``) names the
    request's id and keeps the traceback, in the JSON format."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("fhir_server.test_metrics")
    log.addHandler(handler)
    token = request_id.set("req-42")
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("unexpected error on GET /fhir/Patient/1")
    finally:
        request_id.reset(token)
        log.removeHandler(handler)
    line = json.loads(stream.getvalue().strip())
    assert line["request_id"] == "req-42" and line["level"] == "error"
    assert "RuntimeError: boom" in line["exception"]


# --- readiness ---------------------------------------------------------------------------


def test_ready_reports_primary_schema_and_missing_worker(mongo_url: str) -> None:
    with app_client(mongo_url) as c:
        r = c.get("/health/ready")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready"
        assert body["mongo"]["primary"] is True
        assert body["schema"] == {"applied": True, "missing_indexes": []}
        # no worker ever beat: reported, but the API still serves (not 503)
        assert body["worker"]["status"] == "missing" and body["worker"]["fresh"] is False


def test_ready_with_fresh_and_stale_heartbeats(mongo_url: str) -> None:
    with app_client(mongo_url, worker_heartbeat_seconds=0.2) as c:
        settings = c.app.state.services.settings  # type: ignore[attr-defined]
        with MongoClient[dict[str, Any]](mongo_url, tz_aware=True) as mc:
            db = mc[settings.database]
            old = datetime.now(UTC) - timedelta(seconds=60)
            db[HEARTBEATS].insert_one({"_id": "gone:1", "seen": old})
            r = c.get("/health/ready")
            assert r.status_code == 200  # a stale worker does not take the API out
            worker = r.json()["worker"]
            assert worker["status"] == "stale" and worker["fresh"] is False
            assert worker["age_seconds"] >= 60 and worker["workers"] == 0
            # the heartbeat the Celery worker runs (bulk/tasks.py run_worker)
            thread = Heartbeat(settings, interval=0.05)
            thread.start()
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    worker = c.get("/health/ready").json()["worker"]
                    if worker["fresh"]:
                        break
                    time.sleep(0.05)
                assert worker["status"] == "fresh" and worker["workers"] == 1
                assert worker["age_seconds"] < 1
                m = scrape(c)
                assert value(m, "fhir_workers_alive") == 1
            finally:
                thread.stopped.set()
                thread.join(5)
            time.sleep(0.7)  # three missed beats of 0.2 s
            assert c.get("/health/ready").json()["worker"]["status"] == "stale"
            beat(db, "again:2")
            assert c.get("/health/ready").json()["worker"]["fresh"] is True


def test_ready_503_when_schema_missing(mongo_url: str) -> None:
    with app_client(mongo_url) as c:
        settings = c.app.state.services.settings  # type: ignore[attr-defined]
        with MongoClient[dict[str, Any]](mongo_url) as mc:
            mc[settings.database]["history"].drop_index("type_history")
        r = c.get("/health/ready")
        body = outcome(r, 503, "schema")
        assert "type_history" in body["issue"][0]["diagnostics"]
        assert r.headers["retry-after"]


def test_ready_503_when_mongo_unreachable(mongo_url: str) -> None:
    """RFC 9110 15.6.4: 503 "the server is currently unable to handle the request"; the
    database is swapped for an unreachable one after start-up (the supervisor test kills
    a real mongod: tests/test_supervision.py)."""
    with app_client(mongo_url, mongo_select_timeout_seconds=0.5) as c:
        app = c.app
        real = app.state.mongo  # type: ignore[attr-defined]
        from pymongo import AsyncMongoClient

        dead: AsyncMongoClient[Any] = AsyncMongoClient(
            "mongodb://127.0.0.1:9/?directConnection=true", serverSelectionTimeoutMS=300
        )
        app.state.mongo = dead  # type: ignore[attr-defined]
        try:
            r = c.get("/health/ready")
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.json()["resourceType"] == "OperationOutcome"
            assert c.get("/health/live").status_code == 200
            m = scrape(c)  # the process's metrics still answer
            assert value(m, "fhir_mongo_up") == 0
        finally:
            app.state.mongo = real  # type: ignore[attr-defined]
            c.portal.call(dead.close)  # type: ignore[union-attr]
