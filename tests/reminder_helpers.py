"""What the reminder tests run against: a local HTTP server that speaks Twilio's
Messages API (records what it is sent, can be told to fail or to answer slowly), a real
SMTP server (aiosmtpd, STARTTLS and AUTH required), real ``fhir-server worker``
processes, and the resources (patients, appointments) the tests book."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import random
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from http_helpers import serving
from process_helpers import stop

from fhir_server.config import Settings
from fhir_server.testing import free_port

REDIS = os.environ.get("FHIR_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "test-auth-token-" + "x" * 16
WHATSAPP_FROM = "whatsapp:+14155238886"
SMS_FROM = "+15005550006"
SMTP_USER, SMTP_PASSWORD = "clinic", "s3cret"
PUBLIC_BASE = "https://clinic.example/fhir"
WEBHOOK_URL = "https://clinic.example/webhooks/twilio"  # PUBLIC_BASE's parent + the path
ZONE = "America/Guayaquil"


# --- Twilio ------------------------------------------------------------------------------


@dataclass
class Message:
    sid: str
    to: str
    sender: str
    body: str
    at: float  # time.time() when it arrived
    answered: bool = False


@dataclass
class TwilioServer:
    """POST/GET /2010-04-01/Accounts/{ACCOUNT}/Messages.json on 127.0.0.1. A message
    is recorded as soon as it arrives (before any delay): Twilio has it even when the
    sender never reads the answer."""

    messages: list[Message] = field(default_factory=list)
    # To -> list of (status, code, message) answers to give, in order, before accepting
    failures: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to(self, number: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.to.removeprefix("whatsapp:") == number]

    def fail(self, number: str, *answers: tuple[int, int, str]) -> None:
        with self.lock:
            self.failures.setdefault(number, []).extend(answers)


@contextmanager
def twilio_server() -> Iterator[TwilioServer]:
    state = TwilioServer()
    path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    expected_auth = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the sender is gone (killed while waiting)

        def _check(self) -> bool:
            if urlsplit(self.path).path != path:
                self._answer(404, {"code": 20404, "message": "not found", "status": 404})
                return False
            if self.headers.get("Authorization") != expected_auth:
                self._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
                return False
            return True

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = dict(parse_qsl(self.rfile.read(length).decode()))
            if not self._check():
                return
            to, sender, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
            if not (to and sender and body):
                self._answer(400, {"code": 21604, "message": "To, From, Body", "status": 400})
                return
            number = to.removeprefix("whatsapp:")
            with state.lock:
                queued = state.failures.get(number)
                failure = queued.pop(0) if queued else None
            if failure is not None:
                status, code, text = failure
                self._answer(status, {"code": code, "message": text, "status": status})
                return
            message = Message("SM" + uuid.uuid4().hex, to, sender, body, time.time())
            with state.lock:
                state.messages.append(message)
            if state.delay:
                time.sleep(state.delay)
            self._answer(201, _resource(message))
            message.answered = True

        def do_GET(self) -> None:
            if not self._check():
                return
            query = dict(parse_qsl(urlsplit(self.path).query))
            with state.lock:
                found = [
                    _resource(m)
                    for m in reversed(state.messages)
                    if m.to == query.get("To", m.to) and m.sender == query.get("From", m.sender)
                ]
            self._answer(200, {"messages": found[: int(query.get("PageSize", 50))]})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    with serving(server):
        yield state


def _resource(m: Message) -> dict[str, Any]:
    created = dt.datetime.fromtimestamp(m.at, dt.UTC)
    return {
        "sid": m.sid,
        "account_sid": ACCOUNT,
        "to": m.to,
        "from": m.sender,
        "body": m.body,
        "status": "queued",
        "date_created": format_datetime(created),
    }


def twilio_signature(url: str, params: list[tuple[str, str]], token: str = TOKEN) -> str:
    """Twilio's algorithm, written here from its documentation (not the server's code):
    the full URL, then each POST parameter sorted by name, name immediately followed by
    value; HMAC-SHA1 with the auth token; base64."""
    data = url
    for name, value in sorted(params):
        data += name + value
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def inbound(
    number: str, body: str, channel: str = "whatsapp", sid: str | None = None
) -> list[tuple[str, str]]:
    """The form Twilio posts for a message a patient sends."""
    prefix = "whatsapp:" if channel == "whatsapp" else ""
    sid = sid or "SM" + uuid.uuid4().hex
    return [
        ("MessageSid", sid),
        ("SmsMessageSid", sid),
        ("AccountSid", ACCOUNT),
        ("From", prefix + number),
        ("To", WHATSAPP_FROM if channel == "whatsapp" else SMS_FROM),
        ("Body", body),
        ("NumMedia", "0"),
        ("ProfileName", "Paciente"),
    ]


# --- SMTP --------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler keeping every message; the server requires STARTTLS and AUTH."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        envelope.tls = session.ssl is not None
        envelope.login = session.auth_data if session.authenticated else None
        self.messages.append(envelope)
        return "250 OK"

    def to(self, address: str) -> list[Any]:
        return [m for m in self.messages if address in m.rcpt_tos]


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)


def _certificate(directory: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


@contextmanager
def smtp_server(directory: Path) -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        tls_context=_certificate(directory),
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


# --- settings and workers ----------------------------------------------------------------

LEADS = "48h,2h"


def reminder_env(twilio: TwilioServer, smtp_port: int, **more: str) -> dict[str, str]:
    """The reminder settings, as environment variables (the workers') ..."""
    env = {
        "FHIR_REMINDER_LEAD_TIMES": LEADS,
        "FHIR_REMINDER_CHECK_INTERVAL": "0.3",
        "FHIR_REMINDER_LEASE_SECONDS": "3",
        "FHIR_TWILIO_TIMEOUT_SECONDS": "1.5",
        "FHIR_TWILIO_ACCOUNT_SID": ACCOUNT,
        "FHIR_TWILIO_AUTH_TOKEN": TOKEN,
        "FHIR_TWILIO_WHATSAPP_FROM": WHATSAPP_FROM,
        "FHIR_TWILIO_SMS_FROM": SMS_FROM,
        "FHIR_TWILIO_API_BASE": twilio.base,
        "FHIR_SMTP_HOST": "127.0.0.1",
        "FHIR_SMTP_PORT": str(smtp_port),
        "FHIR_SMTP_SECURITY": "starttls",
        "FHIR_SMTP_USER": SMTP_USER,
        "FHIR_SMTP_PASSWORD": SMTP_PASSWORD,
        "FHIR_SMTP_VERIFY_TLS": "false",
        "FHIR_SMTP_FROM": "Clínica <citas@clinic.example>",
        "FHIR_BASE_URL": PUBLIC_BASE,
        "FHIR_SLOT_CHECK_INTERVAL": "60",
    }
    env.update(more)
    return env


def as_settings(env: dict[str, str]) -> dict[str, Any]:
    """... and as Settings fields (the in-process API's), parsed as the workers parse
    them (``app_client``'s model_copy would keep the strings)."""
    fields = {k.removeprefix("FHIR_").lower(): v for k, v in env.items()}
    parsed = Settings(**fields)
    return {k: getattr(parsed, k) for k in fields}


class Workers:
    """``fhir-server worker`` processes on one database, Redis broker, own queue."""

    def __init__(self, mongo_url: str, database: str, env: dict[str, str], log: Path) -> None:
        self.mongo_url, self.database, self.env, self.log = mongo_url, database, env, log
        self.queue = f"reminders-{uuid.uuid4().hex[:8]}"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        full.update(self.env)
        args = [sys.executable, "-m", "fhir_server", "worker", "--mongo-url", self.mongo_url]
        args += ["--database", self.database, "--broker-url", REDIS, "--queue", self.queue]
        with self.log.open("ab") as log:
            process = subprocess.Popen(args, env=full, stdout=log, stderr=log)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for p in self.processes:
            stop(p)


# --- resources ---------------------------------------------------------------------------


def mobile() -> tuple[str, str]:
    """A fresh Ecuadorian mobile number: (national 09... form, E.164)."""
    digits = f"{random.randrange(10**8):08d}"
    return f"09{digits}", f"+5939{digits}"


def patient(
    given: str = "José",
    telecom: list[dict[str, Any]] | None = None,
    languages: list[tuple[str, bool]] = (),  # type: ignore[assignment]
    **extra: Any,
) -> dict[str, Any]:
    found: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": "Núñez", "given": [given]}],
        "telecom": telecom or [],
        **extra,
    }
    if languages:
        found["communication"] = [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": c}]}, "preferred": p}
            for c, p in languages
        ]
    return found


def phone(value: str, system: str = "phone", **extra: Any) -> dict[str, Any]:
    return {"system": system, "value": value, **extra}


def appointment(
    patient_id: str,
    start: dt.datetime,
    status: str = "booked",
    practitioner: dict[str, Any] | None = None,
    location: dict[str, Any] | None = None,
    patient_status: str = "accepted",
    **extra: Any,
) -> dict[str, Any]:
    participants: list[dict[str, Any]] = [
        {"actor": {"reference": f"Patient/{patient_id}"}, "status": patient_status}
    ]
    if practitioner is not None:
        participants.append({"actor": practitioner, "status": "accepted"})
    if location is not None:
        participants.append({"actor": location, "status": "accepted"})
    return {
        "resourceType": "Appointment",
        "status": status,
        "start": iso(start),
        "end": iso(start + dt.timedelta(minutes=30)),
        "participant": participants,
        **extra,
    }


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def due_in(seconds: float, lead: dt.timedelta = dt.timedelta(hours=2)) -> dt.datetime:
    """The start of an appointment whose reminder of ``lead`` is due in ``seconds``."""
    return dt.datetime.now(dt.UTC) + lead + dt.timedelta(seconds=seconds)


def wait_for(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
