"""Appointment reminders sent by two real workers (``fhir-server worker``, Redis broker)
to a local Twilio-like server and a real SMTP server (STARTTLS and AUTH), for
appointments booked over HTTP. Lead times 48h,2h: an appointment starting in 2 h and a
few seconds has its reminder due within seconds."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.header import decode_header, make_header
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import app_client
from reminder_helpers import (
    SMS_FROM,
    WHATSAPP_FROM,
    ZONE,
    Mailbox,
    TwilioServer,
    Workers,
    appointment,
    as_settings,
    due_in,
    mobile,
    patient,
    phone,
    reminder_env,
    smtp_server,
    twilio_server,
    wait_for,
)

from fhir_server.config import Settings
from profiles import REMINDER_OPT_OUT

pytestmark = pytest.mark.slow
NOT_DONE = "http://terminology.hl7.org/CodeSystem/communication-not-done-reason"
REMINDER = "urn:fhir-server:communication-category|appointment-reminder"


@dataclass
class World:
    client: TestClient
    twilio: TwilioServer
    mail: Mailbox
    workers: Workers


@pytest.fixture(scope="module")
def world(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The API in-process (it books; its rules plan the reminders) and two workers."""
    tmp = tmp_path_factory.mktemp("reminders")
    with twilio_server() as twilio, smtp_server(tmp) as (mail, smtp_port):
        env = reminder_env(twilio, smtp_port)
        base = Settings(mongo_url=mongo_url, auth_enabled=False)
        with app_client(base, **as_settings(env)) as client:
            client.base_url = "http://testserver/fhir"  # type: ignore[assignment]
            settings: Settings = client.app.state.services.settings  # type: ignore[attr-defined]
            workers = Workers(mongo_url, settings.database, env, tmp / "workers.log")
            workers.start()
            workers.start()
            try:
                yield World(client, twilio, mail, workers)
            finally:
                workers.stop()


def create(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def communications(client: TestClient, appointment_id: str) -> list[dict[str, Any]]:
    """The reminders recorded about the appointment (R4 has no ``about`` search)."""
    r = client.get("/Communication", params={"category": REMINDER, "_count": "1000"})
    assert r.status_code == 200, r.text
    return [
        e["resource"]
        for e in r.json().get("entry", [])
        if e["resource"].get("about") == [{"reference": f"Appointment/{appointment_id}"}]
    ]


def local(start: dt.datetime) -> dt.datetime:
    return start.astimezone(ZoneInfo(ZONE))


def test_due_reminders_go_out_on_time_in_the_patients_language(world: World) -> None:
    client = world.client
    doctor = create(
        client,
        {
            "resourceType": "Practitioner",
            "name": [{"prefix": ["Dra."], "given": ["Ana"], "family": "Pérez"}],
        },
    )
    room = create(client, {"resourceType": "Location", "name": "Consultorio 3"})
    es_national, es_number = mobile()
    en_national, en_number = mobile()
    maria = create(client, patient("María", [phone(es_national)]))
    john = create(
        client,
        patient("John", [phone(en_national)], languages=[("es", False), ("en-US", True)]),
    )
    start_es, start_en = due_in(3), due_in(3.5)
    es = create(
        client,
        appointment(
            maria["id"],
            start_es,
            practitioner={"reference": f"Practitioner/{doctor['id']}"},
            location={"reference": f"Location/{room['id']}"},
        ),
    )
    en = create(
        client,
        appointment(
            john["id"], start_en, practitioner={"display": "Dr. Smith", "type": "Practitioner"}
        ),
    )
    assert wait_for(lambda: world.twilio.to(es_number) and world.twilio.to(en_number), 30)
    (got_es,) = world.twilio.to(es_number)
    (got_en,) = world.twilio.to(en_number)
    for got, start in ((got_es, start_es), (got_en, start_en)):
        due = (start - dt.timedelta(hours=2)).timestamp()
        assert due - 0.5 <= got.at <= due + 60, got.at - due  # not early, within 60 s
        assert got.to.startswith("whatsapp:+5939") and got.sender == WHATSAPP_FROM
    t = local(start_es)
    months = ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto"]
    months += ["septiembre", "octubre", "noviembre", "diciembre"]
    assert f"{t.day} de {months[t.month - 1]}" in got_es.body
    assert f"a las {t.hour:02d}:{t.minute:02d}" in got_es.body
    assert "Hola María" in got_es.body and "Dra. Ana Pérez" in got_es.body
    assert "Consultorio 3" in got_es.body and "CONFIRMAR" in got_es.body
    t = local(start_en)
    assert got_en.body.startswith("Hello John") and "Dr. Smith" in got_en.body
    assert f"{t.strftime('%B')} {t.day} at {t.hour % 12 or 12}:{t.minute:02d}" in got_en.body
    assert "RESCHEDULE" in got_en.body
    (record,) = wait_for(lambda: communications(client, es["id"]), 10)
    assert record["status"] == "completed"
    assert record["recipient"] == [{"reference": f"Patient/{maria['id']}"}]
    assert record["about"] == [{"reference": f"Appointment/{es['id']}"}]
    assert record["payload"] == [{"contentString": got_es.body}]
    assert {c["code"] for c in record["medium"][0]["coding"]} == {"ONLINEWRIT", "whatsapp"}
    assert {"system": "urn:fhir-server:twilio-message-sid", "value": got_es.sid} in record[
        "identifier"
    ]
    assert abs(dt.datetime.fromisoformat(record["sent"]).timestamp() - got_es.at) < 5
    wait_for(lambda: communications(client, en["id"]), 10)
    assert len(world.twilio.to(es_number)) == 1 and len(world.twilio.to(en_number)) == 1


def test_the_channel_follows_telecom_rank_and_system(world: World) -> None:
    client = world.client
    sms_national, sms_number = mobile()
    wa_national, wa_number = mobile()
    email_first = create(
        client,
        patient(
            "Lucía",
            [
                phone(wa_national, rank=2),
                {"system": "email", "value": "lucia@example.ec", "rank": 1},
            ],
        ),
    )
    by_sms = create(client, patient("Pedro", [phone(sms_national, "sms")]))
    ranked = create(
        client,
        patient(
            "Rosa",
            [
                {"system": "email", "value": "old@example.ec", "use": "old", "rank": 1},
                {"system": "email", "value": "gone@example.ec", "period": {"end": "2020-01-01"}},
                phone(wa_national, rank=3),
            ],
        ),
    )
    nothing = create(client, patient("Nadie", [{"system": "fax", "value": "022222222"}]))
    made = [
        create(client, appointment(p["id"], due_in(2.5)))
        for p in (email_first, by_sms, ranked, nothing)
    ]
    assert wait_for(lambda: world.mail.to("lucia@example.ec") and world.twilio.to(sms_number), 30)
    (mail,) = world.mail.to("lucia@example.ec")
    assert mail.tls and mail.login == b"clinic"  # STARTTLS, then AUTH
    message = message_from_bytes(mail.content)
    assert str(make_header(decode_header(message["Subject"]))).startswith("Recordatorio de su cita")
    assert "Hola Lucía" in message.get_payload(decode=True).decode()
    (sms,) = world.twilio.to(sms_number)
    assert sms.to == sms_number and sms.sender == SMS_FROM  # plain number: SMS
    assert wait_for(lambda: len(world.twilio.to(wa_number)) == 1, 10)  # Rosa, by WhatsApp
    assert "Hola Rosa" in world.twilio.to(wa_number)[0].body
    (failed,) = wait_for(lambda: communications(client, made[3]["id"]), 10)
    assert failed["status"] == "not-done"
    assert failed["statusReason"]["coding"][0] == {
        "system": NOT_DONE,
        "code": "recipient-unavailable",
    }
    (emailed,) = wait_for(lambda: communications(client, made[0]["id"]), 10)
    assert emailed["medium"][0]["coding"][0]["code"] == "EMAILWRIT"
    assert world.mail.to("old@example.ec") == [] and world.mail.to("gone@example.ec") == []


def test_opted_out_contacts_and_patients_get_nothing(world: World) -> None:
    client = world.client
    national, number = mobile()
    opt = {"extension": [{"url": REMINDER_OPT_OUT, "valueBoolean": True}]}
    by_mail = create(
        client,
        patient(
            "Ana", [phone(national, rank=1, **opt), {"system": "email", "value": "ana@example.ec"}]
        ),
    )
    other_national, other_number = mobile()
    silent = create(
        client,
        patient("Eva", [phone(other_national)], extension=opt["extension"]),
    )
    a = create(client, appointment(by_mail["id"], due_in(2.5)))
    b = create(client, appointment(silent["id"], due_in(2.5)))
    assert wait_for(lambda: world.mail.to("ana@example.ec"), 30)
    (record,) = wait_for(lambda: communications(client, b["id"]), 10)
    assert record["status"] == "not-done"
    assert record["statusReason"]["coding"][0]["code"] == "patient-objection"
    assert wait_for(lambda: communications(client, a["id"]), 10)
    assert world.twilio.to(number) == [] and world.twilio.to(other_number) == []


def test_a_late_cancellation_sends_nothing_and_a_reschedule_follows_the_new_start(
    world: World,
) -> None:
    client = world.client
    numbers = [mobile() for _ in range(3)]
    cancelled_p, moved_p, again_p = (
        create(client, patient(n, [phone(national)]))
        for n, (national, _) in zip(("Carla", "Mario", "Inés"), numbers, strict=True)
    )
    cancelled = create(client, appointment(cancelled_p["id"], due_in(2.5)))
    moved = create(client, appointment(moved_p["id"], due_in(2.5)))
    again_start = due_in(2.5)
    again = create(client, appointment(again_p["id"], again_start))
    # 1 s before they are due: one is cancelled, one moved a day later
    body = {**cancelled, "status": "cancelled"}
    assert client.put(f"/Appointment/{cancelled['id']}", json=body).status_code == 200
    later = dt.datetime.fromisoformat(moved["start"]) + dt.timedelta(days=1)
    body = {
        **moved,
        "start": later.isoformat(),
        "end": (later + dt.timedelta(minutes=30)).isoformat(),
    }
    assert client.put(f"/Appointment/{moved['id']}", json=body).status_code == 200
    assert wait_for(lambda: world.twilio.to(numbers[2][1]), 30)  # the third: reminded
    # the third is moved after its reminder: to two days later, its 48h reminder is due
    new_start = due_in(2.5, dt.timedelta(hours=48))
    current = client.get(f"/Appointment/{again['id']}").json()
    body = {
        **current,
        "start": new_start.isoformat(),
        "end": (new_start + dt.timedelta(minutes=30)).isoformat(),
    }
    assert client.put(f"/Appointment/{again['id']}", json=body).status_code == 200
    assert wait_for(lambda: len(world.twilio.to(numbers[2][1])) == 2, 30)
    first, second = world.twilio.to(numbers[2][1])
    assert f"a las {local(again_start).strftime('%H:%M')}" in first.body
    assert f"{local(new_start).day} de" in second.body
    assert f"a las {local(new_start).strftime('%H:%M')}" in second.body
    assert world.twilio.to(numbers[0][1]) == [] and world.twilio.to(numbers[1][1]) == []
    assert communications(client, cancelled["id"]) == []
    assert communications(client, moved["id"]) == []


def test_a_twilio_error_is_recorded_with_its_reason_and_a_5xx_is_retried(world: World) -> None:
    client = world.client
    bad_national, bad_number = mobile()
    flaky_national, flaky_number = mobile()
    world.twilio.fail(bad_number, (400, 21211, "The 'To' number is not a valid phone number."))
    world.twilio.fail(flaky_number, (503, 20500, "Service unavailable"))
    bad = create(client, patient("Raúl", [phone(bad_national)]))
    flaky = create(client, patient("Sara", [phone(flaky_national)]))
    a = create(client, appointment(bad["id"], due_in(2)))
    b = create(client, appointment(flaky["id"], due_in(2)))
    (record,) = wait_for(lambda: communications(client, a["id"]), 30)
    assert record["status"] == "not-done"
    reason = record["statusReason"]
    assert reason["coding"][0] == {"system": NOT_DONE, "code": "invalid-phone-number"}
    assert "21211" in reason["text"] and "not a valid phone number" in reason["text"]
    assert record["recipient"] == [{"reference": f"Patient/{bad['id']}"}]
    assert "sent" not in record
    (sent,) = wait_for(lambda: communications(client, b["id"]), 30)  # after one retry
    assert sent["status"] == "completed"
    assert len(world.twilio.to(flaky_number)) == 1 and world.twilio.to(bad_number) == []


def test_two_workers_send_a_burst_each_exactly_once(world: World) -> None:
    client = world.client
    numbers = [mobile() for _ in range(40)]
    entries = []
    for national, _ in numbers:
        pid = f"burst-{national}"
        entries.append(
            {
                "resource": {**patient("Paula", [phone(national)]), "id": pid},
                "request": {"method": "PUT", "url": f"Patient/{pid}"},
            }
        )
    start = due_in(3)
    for national, _ in numbers:
        entries.append(
            {
                "resource": appointment(f"burst-{national}", start),
                "request": {"method": "POST", "url": "Appointment"},
            }
        )
    r = client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text
    assert wait_for(lambda: all(world.twilio.to(n) for _, n in numbers), 30)
    wait_for(lambda: False, 2)  # both workers' passes over
    assert [len(world.twilio.to(n)) for _, n in numbers] == [1] * len(numbers)


def test_admins_change_the_templates_through_a_library(world: World) -> None:
    client = world.client

    def content(title: str, language: str, text: str) -> dict[str, Any]:
        data = base64.b64encode(text.encode()).decode()
        return {"contentType": "text/plain", "language": language, "title": title, "data": data}

    library: dict[str, Any] = {
        "resourceType": "Library",
        "id": "appointment-reminders",
        "url": "urn:fhir-server:Library/appointment-reminders",
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/library-type",
                    "code": "asset-collection",
                }
            ]
        },
        "content": [content("reminder", "en", "Hi {patient}! See you {date}, {time}. {nope}")],
    }
    r = client.put("/Library/appointment-reminders", json=library)
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Library.content[0].data"] and "{nope}" in issue["diagnostics"]
    library["content"] = [content("farewell", "en", "Bye")]
    r = client.put("/Library/appointment-reminders", json=library)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == [
        "Library.content[0].title"
    ]
    library["content"] = [
        content("reminder", "en", "Hi {patient}! See you {date}, {time}."),
        content("reminder", "qu", "Alli puncha {patient}, {date} {time}."),
    ]
    assert client.put("/Library/appointment-reminders", json=library).status_code in (200, 201)
    (en_nat, en_num), (qu_nat, qu_num), (es_nat, es_num) = mobile(), mobile(), mobile()
    en = create(client, patient("Ann", [phone(en_nat)], languages=[("en", True)]))
    qu = create(client, patient("Sisa", [phone(qu_nat)], languages=[("qu", True)]))
    es = create(client, patient("Olga", [phone(es_nat)]))
    for p in (en, qu, es):
        create(client, appointment(p["id"], due_in(2)))
    assert wait_for(lambda: all(world.twilio.to(n) for n in (en_num, qu_num, es_num)), 30)
    assert world.twilio.to(en_num)[0].body.startswith("Hi Ann! See you ")
    assert world.twilio.to(qu_num)[0].body.startswith("Alli puncha Sisa")
    assert world.twilio.to(es_num)[0].body.startswith("Hola Olga")  # built-in Spanish kept
    assert client.delete("/Library/appointment-reminders").status_code in (200, 204)
