"""A Subscription's ``channel`` checked and kept as the workers use it
(http://hl7.org/fhir/R4/subscription.html#channels):

- ``rest-hook``: ``endpoint`` an http(s) URL the allow-list permits; ``header`` strings
  "Name: value" sent with each notification; no ``payload``: an empty POST to the
  endpoint; ``payload`` application/fhir+json: ``PUT [endpoint]/[type]/[id]`` with the
  resource ("If the payload type is present, the server is instructed to send the
  resource to the endpoint ... the notification is sent as a PUT").
- ``email``: ``endpoint`` a mailto: address; with a payload, the resource is attached.
- ``websocket``: no endpoint; a client binds to the server's websocket (websocket.py).

SMS and message channels are refused (422): reminders reach patients by SMS and
WhatsApp, but a Subscription notifies systems.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_server.outbound.allow import OutboundAllowList, Refused
from fhir_server.outcome import FhirError

CHANNELS = ("rest-hook", "email", "websocket")
JSON_PAYLOADS = ("application/fhir+json", "application/json")
_HEADER = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*)$")
_MAILTO = re.compile(r"^mailto:([^@\s,;<>]+@[^@\s,;<>]+)$")
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def _invalid(message: str, expression: str) -> FhirError:
    return FhirError.of(422, "invalid", message, expression)


def parse_channel(
    resource: dict[str, Any], allow: OutboundAllowList, topic: bool = False
) -> dict[str, Any]:
    """The channel of a Subscription being activated, as stored (422 names the element).
    A ``topic``-based one is delivered by rest-hook or email, as notification Bundles."""
    channel = resource.get("channel") or {}
    kind = channel.get("type")
    offered = CHANNELS[:2] if topic else CHANNELS
    if kind not in offered:
        raise _invalid(
            f"channel type {kind!r} is not supported here for this Subscription: use one of "
            + ", ".join(offered),
            "Subscription.channel.type",
        )
    endpoint = channel.get("endpoint")
    payload = channel.get("payload")
    headers = []
    for i, header in enumerate(channel.get("header") or []):
        m = _HEADER.match(header) if isinstance(header, str) else None
        if m is None or m[1].lower() in _FORBIDDEN_HEADERS:
            raise _invalid(
                f"header {header!r} must be 'Name: value', and not one of "
                + ", ".join(sorted(_FORBIDDEN_HEADERS)),
                f"Subscription.channel.header[{i}]",
            )
        headers.append([m[1], m[2]])
    if kind == "rest-hook":
        if not isinstance(endpoint, str) or not endpoint:
            raise _invalid("a rest-hook needs an endpoint", "Subscription.channel.endpoint")
        try:
            allow.check(endpoint)
        except Refused as exc:
            raise _invalid(str(exc), "Subscription.channel.endpoint") from None
        if payload is not None and payload not in JSON_PAYLOADS:
            raise _invalid(
                f"payload {payload!r}: a rest-hook sends application/fhir+json, or nothing",
                "Subscription.channel.payload",
            )
    elif kind == "email":
        if not isinstance(endpoint, str) or _MAILTO.match(endpoint) is None:
            raise _invalid(
                "an email channel needs a mailto: endpoint", "Subscription.channel.endpoint"
            )
        if payload is not None and payload not in (*JSON_PAYLOADS, "text/plain"):
            raise _invalid(
                f"payload {payload!r}: email sends application/fhir+json, text/plain or nothing",
                "Subscription.channel.payload",
            )
    elif payload is not None:
        raise _invalid("a websocket only pings: it has no payload", "Subscription.channel.payload")
    return {"type": kind, "endpoint": endpoint, "headers": headers, "payload": payload}


def mail_address(endpoint: str) -> str:
    m = _MAILTO.match(endpoint)
    assert m is not None
    return m[1]
