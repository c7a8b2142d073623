"""Twilio's Messages REST API (WhatsApp and SMS) and its webhook signature.

Sending: ``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`` with the form
fields To, From, Body, HTTP basic auth SID:token. WhatsApp addresses are
``whatsapp:+E.164``. An answer 201 carries the message's ``sid``; an error answers a
JSON ``{code, message, status}``: 4xx is final (a bad number, an unsubscribed
recipient), 429 and 5xx may be retried (Twilio created no message).

``sent_before`` lists the messages already sent to a number, for a worker taking over a
reminder whose sender died while handing it over: it asks before sending again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from fhir_server.config import Settings

API = "2010-04-01"


@dataclass(frozen=True, slots=True)
class Sent:
    sid: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Twilio refused the message (final): ``reason`` a not-done reason code."""

    reason: str
    text: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Not sent, may be retried (429, 5xx, no connection)."""

    text: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """The request went out but no answer came back: maybe sent (ask before resending)."""

    text: str


Outcome = Sent | Refused | Retry | Unknown
_INVALID_NUMBER = {21211, 21614, 63003, 21606, 21612}
_UNSUBSCRIBED = {21610}


def whatsapp(address: str) -> str:
    return address if address.startswith("whatsapp:") else f"whatsapp:{address}"


def sender(settings: Settings, channel: str) -> str | None:
    if channel == "whatsapp":
        return whatsapp(settings.twilio_whatsapp_from) if settings.twilio_whatsapp_from else None
    return settings.twilio_sms_from


def configured_channels(settings: Settings) -> frozenset[str]:
    """The channels the server has a Twilio account and sender for (email: SMTP)."""
    found: set[str] = set()
    if settings.twilio_account_sid and settings.twilio_auth_token:
        found.update(c for c in ("whatsapp", "sms") if sender(settings, c))
    if settings.smtp_host:
        found.add("email")
    return frozenset(found)


class TwilioClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        sid = settings.twilio_account_sid or ""
        self.messages = f"{settings.twilio_api_base.rstrip('/')}/{API}/Accounts/{sid}/Messages.json"
        self.http = httpx.AsyncClient(
            auth=(sid, settings.twilio_auth_token or ""),
            timeout=settings.twilio_timeout_seconds,
            limits=httpx.Limits(max_connections=settings.reminder_concurrency),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, channel: str, to: str, body: str) -> Outcome:
        frm = sender(self.settings, channel)
        if frm is None:
            return Refused("system-error", f"no {channel} sender is configured")
        address = whatsapp(to) if channel == "whatsapp" else to
        try:
            r = await self.http.post(self.messages, data={"To": address, "From": frm, "Body": body})
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return Retry(f"Twilio not reachable: {exc!r}")
        except httpx.HTTPError as exc:  # sent, but the answer was lost
            return Unknown(f"Twilio did not answer: {exc!r}")
        if r.status_code in (200, 201):
            sid = _json(r).get("sid")
            return (
                Sent(str(sid)) if sid else Unknown(f"Twilio answered {r.status_code} without a sid")
            )
        error = _json(r)
        code, message = error.get("code"), error.get("message") or r.text[:300]
        text = f"Twilio {r.status_code} (error {code}): {message}"
        if r.status_code == 429 or r.status_code >= 500:
            return Retry(text)
        if code in _UNSUBSCRIBED:
            return Refused("patient-objection", text)
        if code in _INVALID_NUMBER:
            return Refused("invalid-phone-number", text)
        return Refused("system-error", text)

    async def sent_before(self, channel: str, to: str, body: str, since: datetime) -> str | None:
        """The sid of a message with this body sent to ``to`` since ``since``, if any."""
        frm = sender(self.settings, channel)
        address = whatsapp(to) if channel == "whatsapp" else to
        params = {"To": address, "PageSize": "100"}
        if frm:
            params["From"] = frm
        r = await self.http.get(self.messages, params=params)
        r.raise_for_status()
        for message in _json(r).get("messages") or ():
            created = message.get("date_created")
            try:
                when = parsedate_to_datetime(created) if isinstance(created, str) else None
            except (TypeError, ValueError):
                when = None
            if message.get("body") == body and (when is None or when >= since):
                return str(message.get("sid"))
        return None


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        found = r.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature: base64(HMAC-SHA1(token, url + each name and value,
    sorted by name))."""
    data = url + "".join(k + v for k, v in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as signed with and without its default port (Twilio's own validators
    accept both: proxies add or drop it)."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    found = [url]
    if parts.port is None and default:
        found.append(urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}")))
    elif parts.port == default:
        netloc = parts.netloc.rsplit(":", 1)[0] if host else parts.netloc
        found.append(urlunsplit(parts._replace(netloc=netloc)))
    return found


def valid_signature(
    auth_token: str, url: str, params: list[tuple[str, str]], given: str | None
) -> bool:
    if not given:
        return False
    return any(
        hmac.compare_digest(signature(auth_token, u, params), given) for u in _port_variants(url)
    )
