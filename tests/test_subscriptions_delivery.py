"""Subscription delivery by real Celery workers (two of them, on Redis) to real
receivers: an HTTP server and an SMTP server (aiosmtpd) in the test process.

R4 subscription.html#channels: "rest-hook: ... If the payload type is present, the
server is instructed to send the resource to the endpoint ... PUT [base]/[type]/[id]
... If there is no payload, a POST with no body"; "email: ... the payload (if present)".
R4 subscription.html#errors: "the server SHOULD set the status to error and record the
issue in Subscription.error"."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from fhir_helpers import app_client, observation, patient
from process_helpers import stop
from subscription_helpers import Receiver, receiver, subscribe, wait_for

from fhir_server.config import Settings
from fhir_server.testing import free_port

pytestmark = pytest.mark.slow
REDIS = os.environ.get("FHIR_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


class Sink:
    """aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def hook() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


class Workers:
    """``fhir-server worker`` processes on one database and a queue of their own."""

    def __init__(self, mongo_url: str, settings: Settings, env: dict[str, str], log: Path):
        self.mongo_url, self.settings, self.env, self.log = mongo_url, settings, env, log
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        full.update(self.env)
        args = [sys.executable, "-m", "fhir_server", "worker", "--mongo-url", self.mongo_url]
        args += ["--database", self.settings.database, "--broker-url", REDIS]
        args += ["--queue", self.settings.celery_queue]
        with self.log.open("ab") as log:
            process = subprocess.Popen(args, env=full, stdout=log, stderr=log)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for p in self.processes:
            stop(p)


@pytest.fixture(scope="module")
def world(
    mongo_url: str,
    smtp: tuple[Sink, int],
    hook: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, Workers]]:
    """The API in-process (it only writes and queues) and two workers that deliver.
    The workers may reach the module's receiver's port only; the API allows all of
    127.0.0.1, so a Subscription to another local port is accepted but its delivery
    is refused by the worker's own check."""
    env = {
        "FHIR_OUTBOUND_ALLOW": f"127.0.0.1:{hook.port}",
        "FHIR_SUBSCRIPTION_MAX_ATTEMPTS": "3",
        "FHIR_SUBSCRIPTION_RETRY_BASE_SECONDS": "0.2",
        "FHIR_SUBSCRIPTION_RETRY_MAX_SECONDS": "0.5",
        "FHIR_SUBSCRIPTION_LEASE_SECONDS": "3",
        "FHIR_SUBSCRIPTION_TIMEOUT_SECONDS": "3",
        "FHIR_SUBSCRIPTION_POLL_INTERVAL": "0.1",
        "FHIR_SMTP_HOST": "127.0.0.1",
        "FHIR_SMTP_PORT": str(smtp[1]),
        "FHIR_SMTP_SECURITY": "none",
        "FHIR_SLOT_CHECK_INTERVAL": "60",
    }
    base = Settings(mongo_url=mongo_url, auth_enabled=False)
    overrides = {"outbound_allow": "127.0.0.1", "celery_queue": f"subs-{uuid.uuid4().hex[:8]}"}
    log = tmp_path_factory.mktemp("workers") / "workers.log"
    with app_client(base, **overrides) as client:
        client.base_url = "http://testserver/fhir"  # type: ignore[assignment]
        settings: Settings = client.app.state.services.settings  # type: ignore[attr-defined]
        workers = Workers(mongo_url, settings, env, log)
        workers.start()
        workers.start()
        try:
            yield client, workers
        finally:
            workers.stop()


def _status(client: TestClient, sid: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/Subscription/{sid}").json()
    return body


def _path(hook: Receiver, name: str) -> str:
    return f"{hook.url}/{name}"


def test_rest_hook_without_payload_is_an_empty_post_with_the_headers(
    world: tuple[TestClient, Workers], hook: Receiver
) -> None:
    client, _ = world
    tag = uuid.uuid4().hex[:8]
    endpoint = _path(hook, f"empty-{tag}")
    subscribe(
        client,
        f"Patient?family={tag}",
        endpoint=endpoint,
        headers=["Authorization: Bearer s3cret", "X-Tag: " + tag],
    )
    client.post("/Patient", json=patient(name=[{"family": tag}]))
    got = wait_for(lambda: [r for r in hook.of("POST") if r.path == f"/empty-{tag}"])
    assert got[0].body == b""
    assert got[0].headers["Authorization"] == "Bearer s3cret"
    assert got[0].headers["X-Tag"] == tag


def test_rest_hook_with_payload_puts_each_version_in_order_once(
    world: tuple[TestClient, Workers], hook: Receiver
) -> None:
    """30 versions of one resource, written as fast as the API takes them, reach the
    endpoint in version order, each exactly once, although two workers deliver."""
    client, _ = world
    tag = uuid.uuid4().hex[:8]
    endpoint = _path(hook, f"put-{tag}")
    subscribe(client, f"Patient?family={tag}", endpoint=endpoint, payload="application/fhir+json")
    pid = client.post("/Patient", json=patient(name=[{"family": tag}])).json()["id"]
    for n in range(29):
        body = patient(name=[{"family": tag}], id=pid, birthDate=f"19{50 + n}-01-01")
        assert client.put(f"/Patient/{pid}", json=body).status_code == 200

    def arrived() -> list[Any]:
        got = [r for r in hook.of("PUT") if r.path.startswith(f"/put-{tag}/")]
        return got if len(got) >= 30 else []

    got = wait_for(arrived)
    assert {r.path for r in got} == {f"/put-{tag}/Patient/{pid}"}
    versions = [json.loads(r.body)["meta"]["versionId"] for r in got]
    assert versions == [str(v) for v in range(1, 31)]
    assert got[0].headers["Content-Type"] == "application/fhir+json"


def test_email_channel_sends_the_resource_as_an_attachment(
    world: tuple[TestClient, Workers], smtp: tuple[Sink, int]
) -> None:
    client, _ = world
    sink, _ = smtp
    tag = uuid.uuid4().hex[:8]
    address = f"lab-{tag}@example.org"
    subscribe(
        client,
        f"Observation?code=http://loinc.org|{tag}",
        channel="email",
        endpoint=f"mailto:{address}",
        payload="application/fhir+json",
    )
    obs = observation(code={"coding": [{"system": "http://loinc.org", "code": tag}]})
    oid = client.post("/Observation", json=obs).json()["id"]
    mails = wait_for(lambda: [m for m in sink.messages if address in m.rcpt_tos])
    message = message_from_bytes(mails[0].content)
    assert f"Observation/{oid}" in message["Subject"]
    parts = {p.get_filename(): p for p in message.walk() if p.get_filename()}
    attached = json.loads(parts[f"Observation-{oid}.json"].get_payload(decode=True))
    assert attached["id"] == oid and attached["code"]["coding"][0]["code"] == tag


def test_failing_endpoint_is_retried_then_error_and_resumes_when_requested(
    world: tuple[TestClient, Workers], hook: Receiver
) -> None:
    """Three failures (FHIR_SUBSCRIPTION_MAX_ATTEMPTS here) with growing waits, then
    status error with the reason; nothing is lost: set back to requested, the waiting
    notification is delivered."""
    client, _ = world
    tag = uuid.uuid4().hex[:8]
    failing = {"on": True}
    previous = hook.answer
    hook.answer = lambda r: 500 if (tag in r.path and failing["on"]) else previous(r)
    sid = subscribe(client, f"Patient?family={tag}", endpoint=_path(hook, f"fail-{tag}"))
    client.post("/Patient", json=patient(name=[{"family": tag}]))
    current = wait_for(lambda: (s := _status(client, sid))["status"] == "error" and s)
    assert "HTTP 500" in current["error"]
    tries = [r for r in hook.of("POST") if r.path == f"/fail-{tag}"]
    assert len(tries) == 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    assert gaps[1] > gaps[0] * 1.3  # backoff grows (0.2 s, then 0.4 s)
    failing["on"] = False
    current["status"] = "requested"
    assert client.put(f"/Subscription/{sid}", json=current).json()["status"] == "active"
    wait_for(lambda: len([r for r in hook.of("POST") if r.path == f"/fail-{tag}"]) == 4)
    wait_for(lambda: "error" not in _status(client, sid))
    hook.answer = previous


def test_redirects_are_not_followed(world: tuple[TestClient, Workers], hook: Receiver) -> None:
    client, _ = world
    tag = uuid.uuid4().hex[:8]
    previous = hook.answer
    hook.answer = lambda r: 302 if r.path == f"/moved-{tag}" else previous(r)
    sid = subscribe(client, f"Patient?family={tag}", endpoint=_path(hook, f"moved-{tag}"))
    client.post("/Patient", json=patient(name=[{"family": tag}]))
    current = wait_for(lambda: (s := _status(client, sid))["status"] == "error" and s)
    assert "HTTP 302" in current["error"]
    hook.answer = previous


def test_the_worker_checks_the_allow_list_before_each_delivery(
    world: tuple[TestClient, Workers],
) -> None:
    """The API accepted the endpoint; the workers' allow-list (one port) refuses it: no
    request is made, and the Subscription ends in error saying why."""
    client, _ = world
    with receiver() as other:
        tag = uuid.uuid4().hex[:8]
        sid = subscribe(client, f"Patient?family={tag}", endpoint=f"{other.url}/x")
        client.post("/Patient", json=patient(name=[{"family": tag}]))
        current = wait_for(lambda: (s := _status(client, sid))["status"] == "error" and s)
        assert "not an allowed destination" in current["error"]
        assert other.requests == []


def test_a_worker_killed_mid_delivery_loses_nothing(
    world: tuple[TestClient, Workers], hook: Receiver
) -> None:
    """SIGKILL both workers while a slow endpoint is receiving a queue of 12, then start
    a fresh one: every notification arrives, in order, and the only repeat is at most
    the one that was in flight (at-least-once: its receipt was never recorded)."""
    client, workers = world
    tag = uuid.uuid4().hex[:8]
    hook.delay = 0.25
    try:
        subscribe(
            client,
            f"Patient?family={tag}",
            endpoint=_path(hook, f"kill-{tag}"),
            payload="application/fhir+json",
        )
        pid = client.post("/Patient", json=patient(name=[{"family": tag}])).json()["id"]
        for n in range(11):
            body = patient(name=[{"family": tag}], id=pid, birthDate=f"19{60 + n}-01-01")
            client.put(f"/Patient/{pid}", json=body)

        def received() -> list[str]:
            return [
                json.loads(r.body)["meta"]["versionId"]
                for r in hook.of("PUT")
                if r.path.startswith(f"/kill-{tag}/")
            ]

        wait_for(lambda: len(received()) >= 4)
        for p in workers.processes:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        workers.start()
        got = wait_for(lambda: (r := received()) and len(set(r)) == 12 and r, timeout=60)
        first_seen = list(dict.fromkeys(got))
        assert first_seen == [str(v) for v in range(1, 13)]
        assert len(got) - 12 <= 1
        if len(got) == 13:  # the repeat is the one in flight, right after itself
            i = next(i for i in range(1, 13) if got[i] == got[i - 1])
            assert got[i] == got[i - 1]
    finally:
        hook.delay = 0.0
        workers.start()  # the module's second worker again


def test_topic_subscription_handshake_events_and_heartbeat(
    world: tuple[TestClient, Workers], hook: Receiver
) -> None:
    """Backport IG (R4 form): the rest-hook gets a handshake Bundle while the
    Subscription is requested, then it is active; each event is a history Bundle whose
    SubscriptionStatus counts the events and whose second entry is the resource
    (full-resource); after a silence of the heartbeat period, a heartbeat Bundle."""
    from test_subscriptions_topics import appointment, topic_subscription

    client, _ = world
    tag = uuid.uuid4().hex[:8]
    heartbeat = {
        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
        "backport-heartbeat-period",
        "valueUnsignedInt": 2,
    }
    body = topic_subscription(
        "appointment-booked",
        (f"Appointment?patient=Patient/{tag}",),
        channel="rest-hook",
        endpoint=_path(hook, f"topic-{tag}"),
        content="full-resource",
        extension=[heartbeat],
    )
    r = client.post("/Subscription", json=body)
    assert r.status_code == 201 and r.json()["status"] == "requested", r.text
    sid = r.json()["id"]

    def bundles() -> list[dict[str, Any]]:
        return [json.loads(x.body) for x in hook.of("POST") if x.path == f"/topic-{tag}"]

    def status_of(bundle: dict[str, Any]) -> dict[str, Any]:
        return {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}

    wait_for(lambda: _status(client, sid)["status"] == "active")
    handshake = status_of(bundles()[0])
    assert handshake["type"]["valueCode"] == "handshake"
    assert handshake["status"]["valueCode"] == "requested"
    for n in (1, 2, 3):  # at other times: the practitioner is not booked twice
        aid = f"{tag}-{n}"
        at = {"start": f"2032-0{n}-01T10:00:00Z", "end": f"2032-0{n}-01T10:30:00Z"}
        patient = tag if n < 3 else "other"
        r = client.put(f"/Appointment/{aid}", json=appointment(aid, "booked", patient, **at))
        assert r.status_code == 201, r.text
    events = wait_for(
        lambda: (
            (
                e := [
                    b
                    for b in bundles()
                    if status_of(b)["type"]["valueCode"] == "event-notification"
                ]
            )
            and len(e) >= 2
            and e
        )
    )
    assert [status_of(b)["events-since-subscription-start"]["valueString"] for b in events] == [
        "1",
        "2",
    ]
    assert [b["entry"][1]["resource"]["id"] for b in events] == [f"{tag}-1", f"{tag}-2"]
    assert events[0]["type"] == "history"
    beat = wait_for(
        lambda: [b for b in bundles() if status_of(b)["type"]["valueCode"] == "heartbeat"],
        timeout=15,
    )
    assert status_of(beat[0])["events-since-subscription-start"]["valueString"] == "2"
    r = client.get(f"/Subscription/{sid}/$status")
    params = {p["name"]: p for p in r.json()["entry"][0]["resource"]["parameter"]}
    assert params["events-since-subscription-start"]["valueString"] == "2"


def test_a_subscription_is_turned_off_at_its_end(world: tuple[TestClient, Workers]) -> None:
    """R4 Subscription.end: "The time for the server to turn the subscription off"."""
    from datetime import UTC, datetime, timedelta

    client, _ = world
    end = (datetime.now(UTC) + timedelta(seconds=2)).isoformat(timespec="seconds")
    sid = subscribe(client, "Patient?family=Ending", end=end.replace("+00:00", "Z"))
    wait_for(lambda: _status(client, sid)["status"] == "off", timeout=20)
