"""``POST /webhooks/twilio``: the messages patients send to the clinic's WhatsApp or SMS
number (Twilio's inbound webhook), answered with TwiML.

- Outside ``/fhir``, so no bearer token is asked for (authz/authenticate.py leaves
  other paths alone): Twilio cannot send one. What authenticates it is Twilio's
  ``X-Twilio-Signature`` over the public URL and the form fields, with the auth token
  (twilio.py); missing or wrong: 403.
- The URL signed is the one Twilio was told: FHIR_TWILIO_WEBHOOK_URL, else the parent of
  FHIR_BASE_URL + ``/webhooks/twilio`` (``https://clinic.example/fhir`` ->
  ``https://clinic.example/webhooks/twilio``), else the URL the request came to (right
  only without a proxy in front).
- Idempotent on ``MessageSid`` (``twilio_inbound``): a message seen before is not acted
  on again; its answer is repeated (Twilio retries when it got none). A message being
  handled by another request gets an empty answer; one whose handler died is handled
  again after ``_STALE`` (every write it makes is done once: replies.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request
from pymongo.errors import DuplicateKeyError
from starlette.responses import Response

from fhir_server.api.routes import services
from fhir_server.config import Settings
from fhir_server.datetimes import now as now_utc
from fhir_server.outcome import FhirError
from fhir_server.workflows.reminders.phones import e164
from fhir_server.workflows.reminders.replies import Inbound, Replies
from fhir_server.workflows.reminders.twilio import valid_signature

PATH = "/webhooks/twilio"
INBOUND = "twilio_inbound"
MAX_BODY = 64 * 1024
_STALE = timedelta(seconds=30)
router = APIRouter()


def public_url(settings: Settings, request: Request) -> str:
    if settings.twilio_webhook_url:
        return settings.twilio_webhook_url
    if settings.base_url:
        parts = urlsplit(settings.base_url.rstrip("/"))
        parent = parts.path.rsplit("/", 1)[0]
        return urlunsplit((parts.scheme, parts.netloc, parent + PATH, "", ""))
    return str(request.url)


def twiml(text: str | None) -> Response:
    inner = f"<Message>{escape(text)}</Message>" if text else ""
    body = f'<?xml version="1.0" encoding="UTF-8"?><Response>{inner}</Response>'
    return Response(body, 200, media_type="application/xml")


async def _form(request: Request) -> list[tuple[str, str]]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise FhirError.of(
            415,
            "not-supported",
            "Twilio posts application/x-www-form-urlencoded",
            "Content-Type",
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise FhirError.of(413, "too-costly", f"More than {MAX_BODY} bytes", "body")
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise FhirError.of(400, "invalid", "The form is not UTF-8 text", "body") from None


@router.post(PATH)
async def twilio_webhook(request: Request) -> Response:
    svc = services(request)
    settings = svc.settings
    token = settings.twilio_auth_token
    if not token:
        raise FhirError.of(
            403,
            "forbidden",
            "Replies are not accepted: no Twilio auth token is configured (FHIR_TWILIO_AUTH_TOKEN)",
            "X-Twilio-Signature",
        )
    params = await _form(request)
    if not valid_signature(
        token, public_url(settings, request), params, request.headers.get("x-twilio-signature")
    ):
        raise FhirError.of(
            403,
            "forbidden",
            "X-Twilio-Signature is missing or does not match the request",
            "X-Twilio-Signature",
        )
    fields = dict(params)
    sid = fields.get("MessageSid") or fields.get("SmsMessageSid") or ""
    if not sid:
        raise FhirError.of(400, "required", "MessageSid is missing", "MessageSid")
    sender = fields.get("From", "")
    number = e164(sender, settings.reminder_country_code)
    if number is None:
        raise FhirError.of(400, "invalid", f"From {sender!r} is not a phone number", "From")
    channel = "whatsapp" if sender.lower().startswith("whatsapp:") else "sms"
    seen = svc.resources.storage.db[INBOUND]
    now = now_utc()
    try:
        await seen.insert_one({"_id": sid, "state": "handling", "at": now, "received": now})
        received = now
    except DuplicateKeyError:
        doc: dict[str, Any] | None = await seen.find_one({"_id": sid})
        if doc is None or doc.get("state") == "done":
            return twiml((doc or {}).get("answer"))
        stale = doc["at"] <= now - _STALE
        taken = (
            stale
            and (
                await seen.update_one({"_id": sid, "at": doc["at"]}, {"$set": {"at": now}})
            ).modified_count
        )
        if not taken:
            return twiml(None)  # being handled by another request right now
        received = doc["received"]
    message = Inbound(sid, number, channel, fields.get("Body", ""), received)
    answer = await Replies(settings, svc.resources).handle(message)
    await seen.update_one({"_id": sid}, {"$set": {"state": "done", "answer": answer}})
    return twiml(answer)
