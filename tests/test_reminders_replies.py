"""Patients' replies to reminders: ``POST /webhooks/twilio`` as Twilio posts it (form
fields, X-Twilio-Signature over the public URL), after a real worker sent the reminders
to the local Twilio-like server. Each keyword in its variants, what it changes (through
the scheduling rules), the Communication and Provenance recorded, signature tampering,
replays, unknown numbers, phone number forms."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from fhir_helpers import app_client
from reminder_helpers import (
    TOKEN,
    WEBHOOK_URL,
    TwilioServer,
    Workers,
    appointment,
    as_settings,
    due_in,
    inbound,
    mobile,
    patient,
    phone,
    reminder_env,
    twilio_server,
    twilio_signature,
    wait_for,
)

from fhir_server.config import Settings
from profiles import REMINDER_OPT_OUT

pytestmark = pytest.mark.slow
REMINDER = "urn:fhir-server:communication-category|appointment-reminder"
SID_SYSTEM = "urn:fhir-server:twilio-message-sid"


@dataclass
class Booked:
    patient: str  # id
    appointment: str  # id
    number: str  # E.164
    slot: str | None = None


@dataclass
class World:
    client: TestClient
    twilio: TwilioServer
    workers: Workers
    booked: dict[str, Booked] = field(default_factory=dict)


# name -> (how the patient's number is written, status, patient participant status)
CASES = {
    "confirm-1": ("national", "pending", "needs-action"),
    "confirm-2": ("spaced", "pending", "needs-action"),
    "confirm-3": ("dashed", "pending", "needs-action"),
    "confirm-4": ("national", "booked", "needs-action"),
    "cancel-1": ("national", "booked", "accepted"),
    "cancel-2": ("spaced", "booked", "accepted"),
    "cancel-3": ("national", "pending", "needs-action"),
    "late-cancel": ("national", "booked", "accepted"),
    "reschedule-1": ("national", "booked", "accepted"),
    "reschedule-2": ("dashed", "booked", "accepted"),
    "stop": ("spaced", "booked", "accepted"),
    "help": ("national", "booked", "accepted"),
    "replay": ("national", "booked", "accepted"),
    "sms": ("national", "booked", "accepted"),
}


def written(national: str, form: str) -> str:
    """The same Ecuadorian mobile number as people write it."""
    if form == "spaced":  # +593 99 123 4567
        rest = national[1:]
        return f"+593 {rest[:2]} {rest[2:5]} {rest[5:]}"
    if form == "dashed":  # 099-123-4567
        return f"{national[:3]}-{national[3:6]}-{national[6:]}"
    return national


@pytest.fixture(scope="module")
def world(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Every case's patient and appointment, reminded once by one real worker."""
    tmp = tmp_path_factory.mktemp("replies")
    with twilio_server() as twilio:
        # appointments start in about 2 h; "late-cancel" in 30 min, inside the notice
        env = reminder_env(twilio, 1, FHIR_SMTP_HOST="", FHIR_APPOINTMENT_MIN_NOTICE="PT1H")
        base = Settings(mongo_url=mongo_url, auth_enabled=False)
        with app_client(base, **as_settings(env)) as client:
            settings: Settings = client.app.state.services.settings  # type: ignore[attr-defined]
            workers = Workers(mongo_url, settings.database, env, tmp / "workers.log")
            w = World(client, twilio, workers)
            start = due_in(2.5)
            schedule = fhir(
                client,
                "POST",
                "Schedule",
                {"resourceType": "Schedule", "actor": [{"display": "Dra. Vega"}]},
            )
            for name, (form, status, participant) in CASES.items():
                national, number = mobile()
                p = fhir(
                    client, "POST", "Patient", patient("Luz", [phone(written(national, form))])
                )
                at = start if name != "late-cancel" else due_in(30 * 60, dt.timedelta(0))
                body = appointment(p["id"], at, status, patient_status=participant)
                slot = None
                if name == "cancel-1":  # a booked slot, to see it freed
                    slot = fhir(
                        client,
                        "POST",
                        "Slot",
                        {
                            "resourceType": "Slot",
                            "schedule": {"reference": f"Schedule/{schedule['id']}"},
                            "status": "free",
                            "start": body["start"],
                            "end": body["end"],
                        },
                    )["id"]
                    body["slot"] = [{"reference": f"Slot/{slot}"}]
                a = fhir(client, "POST", "Appointment", body)
                w.booked[name] = Booked(p["id"], a["id"], number, slot)
            workers.start()
            try:
                assert wait_for(lambda: len(reminders(client)) == len(CASES), 40)
                yield w
            finally:
                workers.stop()


def fhir(client: TestClient, method: str, path: str, body: Any = None, **params: str) -> Any:
    r = client.request(method, f"/fhir/{path}", json=body, params=params or None)
    assert r.status_code in (200, 201), r.text
    return r.json()


def reminders(client: TestClient) -> list[dict[str, Any]]:
    bundle = fhir(client, "GET", "Communication", category=REMINDER, _count="100")
    return [e["resource"] for e in bundle.get("entry", [])]


def post(
    client: TestClient,
    params: list[tuple[str, str]],
    signature: str | None = "compute",
    url: str = WEBHOOK_URL,
) -> httpx.Response:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature == "compute":
        signature = twilio_signature(url, params)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    from urllib.parse import urlencode

    return client.post("/webhooks/twilio", content=urlencode(params), headers=headers)


def reply(
    client: TestClient, number: str, body: str, channel: str = "whatsapp", sid: str | None = None
) -> tuple[str, str]:
    """Post a reply; (the TwiML answer, the MessageSid)."""
    params = inbound(number, body, channel, sid)
    r = post(client, params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/xml")
    return r.text, dict(params)["MessageSid"]


def message_record(client: TestClient, sid: str) -> dict[str, Any]:
    bundle = fhir(client, "GET", "Communication", identifier=f"{SID_SYSTEM}|{sid}")
    (entry,) = bundle["entry"]
    resource: dict[str, Any] = entry["resource"]
    return resource


def provenances(client: TestClient, target: str) -> list[dict[str, Any]]:
    bundle = fhir(client, "GET", "Provenance", target=target)
    return [e["resource"] for e in bundle.get("entry", [])]


def by_patient(client: TestClient, target: str, patient_id: str, sid: str) -> list[dict[str, Any]]:
    """The Provenances of ``target`` whose agent is the patient, with the message as source."""
    return [
        p
        for p in provenances(client, target)
        if p["agent"][0]["who"] == {"reference": f"Patient/{patient_id}"}
        and p.get("entity")
        == [{"role": "source", "what": {"reference": f"Communication/reply-{sid}"}}]
    ]


def test_confirm_in_its_variants_books_and_accepts(world: World) -> None:
    client = world.client
    for name, text in (
        ("confirm-1", "Confirmar"),
        ("confirm-2", "confirmo"),
        ("confirm-3", "  ¡SÍ!! "),
        ("confirm-4", "1"),
    ):
        b = world.booked[name]
        answer, sid = reply(client, b.number, text)
        assert "<Response><Message>Gracias, Luz. Su cita del " in answer and "confirmada" in answer
        a = fhir(client, "GET", f"Appointment/{b.appointment}")
        assert a["status"] == "booked", name
        assert a["participant"][0]["status"] == "accepted", name
        record = message_record(client, sid)
        assert record["status"] == "completed" and "received" in record
        assert record["sender"] == {"reference": f"Patient/{b.patient}"}
        assert record["about"] == [{"reference": f"Appointment/{b.appointment}"}]
        assert record["payload"] == [{"contentString": text}]
        assert record["medium"][0]["coding"][1]["code"] == "whatsapp"
        reminded = [r for r in reminders(client) if r["about"] == record["about"]]
        assert record["inResponseTo"] == [{"reference": f"Communication/{reminded[0]['id']}"}]
        logged = by_patient(client, f"Appointment/{b.appointment}", b.patient, sid)
        assert len(logged) == 1, name  # the action log's "confirm", or the acceptance
        code = logged[0]["activity"]["coding"][0]["code"]
        assert code == ("UPDATE" if name == "confirm-4" else "confirm")


def test_cancel_in_its_variants_cancels_and_frees_the_slot(world: World) -> None:
    client = world.client
    for name, text in (("cancel-1", "Cancelar"), ("cancel-2", "2"), ("cancel-3", "cancelo.")):
        b = world.booked[name]
        answer, sid = reply(client, b.number, text)
        assert "ha sido cancelada" in answer
        a = fhir(client, "GET", f"Appointment/{b.appointment}")
        assert a["status"] == "cancelled", name
        assert a["cancelationReason"]["coding"][0]["code"] == "pat-crs"
        (logged,) = by_patient(client, f"Appointment/{b.appointment}", b.patient, sid)
        assert logged["activity"]["coding"][0]["code"] == "cancel"
    slot = world.booked["cancel-1"].slot
    assert fhir(client, "GET", f"Slot/{slot}")["status"] == "free"


def test_a_late_cancellation_keeps_the_appointment_and_asks_the_staff(world: World) -> None:
    """Issue #15: "If it is too late under the minimum-notice rule, the reply says so and
    the clinic gets a Task" (here FHIR_APPOINTMENT_MIN_NOTICE is 1 h, the start 30 min
    away). Asking again while the Task is open adds nothing."""
    client = world.client
    b = world.booked["late-cancel"]
    answer, sid = reply(client, b.number, "Cancelar")
    assert "muy pronto para cancelarla" in answer and "se mantiene" in answer
    a = fhir(client, "GET", f"Appointment/{b.appointment}")
    assert a["status"] == "booked" and "cancelationReason" not in a
    bundle = fhir(client, "GET", "Task", focus=f"Appointment/{b.appointment}")
    (task,) = [e["resource"] for e in bundle["entry"]]
    assert task["code"]["coding"][0]["code"] == "abort"
    assert task["status"] == "requested" and task["priority"] == "urgent"
    assert task["for"] == {"reference": f"Patient/{b.patient}"}
    assert task["reasonReference"] == {"reference": f"Communication/reply-{sid}"}
    assert "1 h" in task["description"]
    (logged,) = by_patient(client, f"Task/{task['id']}", b.patient, sid)
    assert logged["activity"]["coding"][0]["code"] == "CREATE"
    again, _ = reply(client, b.number, "2")
    assert "muy pronto" in again
    bundle = fhir(client, "GET", "Task", focus=f"Appointment/{b.appointment}")
    assert len(bundle["entry"]) == 1
    assert fhir(client, "GET", f"Appointment/{b.appointment}")["status"] == "booked"


def test_reschedule_asks_the_staff_with_a_task(world: World) -> None:
    client = world.client
    for name, text in (("reschedule-1", "Reprogramar"), ("reschedule-2", "3")):
        b = world.booked[name]
        answer, sid = reply(client, b.number, text)
        assert "le contactará" in answer and "su cita se mantiene" in answer
        bundle = fhir(client, "GET", "Task", focus=f"Appointment/{b.appointment}")
        (task,) = [e["resource"] for e in bundle["entry"]]
        assert task["status"] == "requested" and task["intent"] == "order"
        assert task["for"] == {"reference": f"Patient/{b.patient}"}
        assert task["reasonReference"] == {"reference": f"Communication/reply-{sid}"}
        assert fhir(client, "GET", f"Appointment/{b.appointment}")["status"] == "booked"
        (logged,) = by_patient(client, f"Task/{task['id']}", b.patient, sid)
        assert logged["activity"]["coding"][0]["code"] == "CREATE"


def test_stop_opts_the_number_out_and_start_back_in(world: World) -> None:
    client = world.client
    b = world.booked["stop"]
    answer, sid = reply(client, b.number, "STOP")
    assert "No recibirá más recordatorios" in answer
    p = fhir(client, "GET", f"Patient/{b.patient}")
    assert p["telecom"][0]["extension"] == [{"url": REMINDER_OPT_OUT, "valueBoolean": True}]
    (logged,) = by_patient(client, f"Patient/{b.patient}", b.patient, sid)
    assert logged["target"][0]["reference"].endswith("/_history/2")
    # a later appointment of this patient: no reminder, a not-done record
    later = fhir(client, "POST", "Appointment", appointment(b.patient, due_in(1.5)))
    about = [{"reference": f"Appointment/{later['id']}"}]
    (record,) = wait_for(lambda: [r for r in reminders(client) if r["about"] == about], 20)
    assert record["status"] == "not-done"
    assert record["statusReason"]["coding"][0]["code"] == "patient-objection"
    assert len(world.twilio.to(b.number)) == 1  # the first reminder only
    answer, _ = reply(client, b.number, "start")
    assert "Volverá a recibir" in answer
    assert "extension" not in fhir(client, "GET", f"Patient/{b.patient}")["telecom"][0]


def test_anything_else_gets_help_and_changes_nothing(world: World) -> None:
    client = world.client
    b = world.booked["help"]
    before = fhir(client, "GET", f"Appointment/{b.appointment}")
    for text in ("hola, ¿a qué hora era?", "sí, pero quiero cancelar", "No confirmo"):
        answer, _ = reply(client, b.number, text)
        assert "No entendimos su respuesta" in answer and "CONFIRMAR (1)" in answer
    after = fhir(client, "GET", f"Appointment/{b.appointment}")
    assert after["meta"]["versionId"] == before["meta"]["versionId"]


def test_sms_replies_are_understood_too(world: World) -> None:
    client = world.client
    b = world.booked["sms"]
    answer, sid = reply(client, b.number, "CONFIRMO", channel="sms")
    assert "confirmada" in answer
    assert message_record(client, sid)["medium"][0]["coding"][1]["code"] == "sms"


def test_a_replayed_message_does_nothing_twice(world: World) -> None:
    client = world.client
    b = world.booked["replay"]
    first, sid = reply(client, b.number, "3")
    version = fhir(client, "GET", f"Appointment/{b.appointment}")["meta"]["versionId"]
    again, _ = reply(client, b.number, "3", sid=sid)
    assert again == first
    bundle = fhir(client, "GET", "Task", focus=f"Appointment/{b.appointment}")
    assert len(bundle["entry"]) == 1
    bundle = fhir(client, "GET", "Communication", identifier=f"{SID_SYSTEM}|{sid}")
    assert len(bundle["entry"]) == 1
    assert fhir(client, "GET", f"Appointment/{b.appointment}")["meta"]["versionId"] == version
    assert len(by_patient(client, f"Task/{bundle_task(client, b)}", b.patient, sid)) == 1


def bundle_task(client: TestClient, b: Booked) -> str:
    bundle = fhir(client, "GET", "Task", focus=f"Appointment/{b.appointment}")
    return str(bundle["entry"][0]["resource"]["id"])


def test_tampered_or_unsigned_requests_are_refused(world: World) -> None:
    client = world.client
    b = world.booked["help"]
    params = inbound(b.number, "Cancelar")
    good = twilio_signature(WEBHOOK_URL, params)
    tampered = [(k, "2" if k == "Body" else v) for k, v in params]
    internal = "http://testserver/webhooks/twilio"  # the URL the server sees, not Twilio's
    for r in (
        post(client, params, None),
        post(client, params, "bm90IGEgc2lnbmF0dXJl"),
        post(client, tampered, good),
        post(client, params, twilio_signature(WEBHOOK_URL, params, "another-token")),
        post(client, params, twilio_signature(internal, params), internal),
    ):
        assert r.status_code == 403
        issue = r.json()["issue"][0]
        assert r.json()["resourceType"] == "OperationOutcome"
        assert issue["expression"] == ["X-Twilio-Signature"]
    assert fhir(client, "GET", f"Appointment/{b.appointment}")["status"] == "booked"
    r = client.post("/webhooks/twilio", content="{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and r.json()["issue"][0]["expression"] == ["Content-Type"]


def test_an_unknown_number_changes_nothing_and_is_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    client = world.client
    _, stranger = mobile()
    before = fhir(client, "GET", "Communication", _summary="count")["total"]
    with caplog.at_level(logging.WARNING):
        answer, sid = reply(client, stranger, "Cancelar")
    assert answer.endswith("<Response></Response>")
    assert fhir(client, "GET", "Communication", _summary="count")["total"] == before
    assert any(sid in r.getMessage() and "no patient has" in r.getMessage() for r in caplog.records)


def test_no_bearer_token_is_needed_when_authorization_is_on(mongo_url: str) -> None:
    settings = Settings(mongo_url=mongo_url, auth_enabled=True)
    with app_client(settings, twilio_auth_token=TOKEN, base_url="https://clinic.example/fhir") as c:
        assert c.get("/fhir/Patient").status_code == 401  # authorization is on
        _, number = mobile()
        r = post(c, inbound(number, "1"))
        assert r.status_code == 200 and r.text.endswith("<Response></Response>")
        assert post(c, inbound(number, "1"), None).status_code == 403
