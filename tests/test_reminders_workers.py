"""A reminder worker SIGKILLed while it sends: Twilio answers slowly (1 s), so when the
kill lands some messages have reached Twilio without the worker hearing back, and others
are claimed but not sent yet. Another worker takes the claims over once their lease ran
out, asks Twilio about the first ones instead of sending them again, and sends the rest:
every reminder exactly once, each recorded once."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import app_client
from reminder_helpers import (
    Workers,
    appointment,
    as_settings,
    due_in,
    mobile,
    patient,
    phone,
    reminder_env,
    twilio_server,
    wait_for,
)

from fhir_server.config import Settings

pytestmark = pytest.mark.slow
REMINDER = "urn:fhir-server:communication-category|appointment-reminder"


@pytest.fixture
def client(mongo_url: str) -> Iterator[TestClient]:
    yield from _client(mongo_url)


def _client(mongo_url: str) -> Iterator[TestClient]:
    with twilio_server() as twilio:
        env = reminder_env(twilio, 1, FHIR_REMINDER_CONCURRENCY="4", FHIR_SMTP_HOST="")
        base = Settings(mongo_url=mongo_url, auth_enabled=False)
        with app_client(base, **as_settings(env)) as c:
            c.base_url = "http://testserver/fhir"  # type: ignore[assignment]
            c.twilio = twilio  # type: ignore[attr-defined]
            c.env = env  # type: ignore[attr-defined]
            yield c


def test_a_worker_killed_mid_run_loses_nothing_and_sends_nothing_twice(
    client: TestClient, mongo_url: str, tmp_path: Any
) -> None:
    twilio = client.twilio  # type: ignore[attr-defined]
    twilio.delay = 1.0
    settings: Settings = client.app.state.services.settings  # type: ignore[attr-defined]
    workers = Workers(mongo_url, settings.database, client.env, tmp_path / "w.log")  # type: ignore[attr-defined]
    numbers = [mobile() for _ in range(12)]
    start = due_in(4)
    for national, _ in numbers:
        p = client.post("/Patient", json=patient("Kim", [phone(national)])).json()
        r = client.post("/Appointment", json=appointment(p["id"], start))
        assert r.status_code == 201, r.text
    try:
        first = workers.start()
        assert wait_for(lambda: twilio.messages, 40, 0.02)  # the first have arrived ...
        first.send_signal(signal.SIGKILL)  # ... and wait for their answer
        first.wait()
        arrived = len(twilio.messages)
        assert 0 < arrived < len(numbers), arrived
        assert not any(m.answered for m in twilio.messages)
        workers.start()
        assert wait_for(lambda: all(twilio.to(n) for _, n in numbers), 40), len(twilio.messages)
        wait_for(lambda: False, 2)
        assert [len(twilio.to(n)) for _, n in numbers] == [1] * len(numbers)
        records = wait_for(lambda: _reminders(client, len(numbers)), 20)
        assert len(records) == len(numbers)
        assert {r["status"] for r in records} == {"completed"}
        sids = {i["value"] for r in records for i in r["identifier"] if "twilio" in i["system"]}
        assert sids == {m.sid for m in twilio.messages}  # the first ones recorded too
    finally:
        workers.stop()


def _reminders(client: TestClient, wanted: int) -> list[dict[str, Any]]:
    r = client.get("/Communication", params={"category": REMINDER, "_count": "100"})
    found = [e["resource"] for e in r.json().get("entry", [])]
    return found if len(found) >= wanted else []
