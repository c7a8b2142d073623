"""Topic-based Subscriptions in the R4 form of the Subscriptions R5 Backport IG (STU 1.1,
http://hl7.org/fhir/uv/subscriptions-backport/): what a Subscription asks for, and the
notification Bundles the workers send.

- ``criteria``: a topic canonical (topics.py); ``criteria.extension`` backport-filter-
  criteria: searches on the topic's resource types, ANDed ("When multiple filters are
  applied, evaluates to true if all the conditions are met").
- ``channel.payload``: application/fhir+json; its backport-payload-content extension:
  ``empty``, ``id-only`` (the default) or ``full-resource``.
- ``channel.extension`` backport-heartbeat-period (seconds): a heartbeat notification
  after that long without one; backport-timeout (seconds) bounds each delivery.
- Channels: rest-hook (the Bundle is POSTed to the endpoint, after a handshake) and
  email (the Bundle attached). The backport websocket (binding tokens) is not offered.

A notification is a ``history`` Bundle whose first entry is the SubscriptionStatus
(the R4 form: a Parameters with the backport-subscription-status-r4 profile).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir_server.outcome import FhirError
from fhir_server.workflows.subscriptions.topics import TOPICS, Topic

IG = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER = IG + "backport-filter-criteria"
CONTENT = IG + "backport-payload-content"
HEARTBEAT = IG + "backport-heartbeat-period"
TIMEOUT = IG + "backport-timeout"
STATUS_PROFILE = IG + "backport-subscription-status-r4"
NOTIFICATION_PROFILE = IG + "backport-subscription-notification-r4"
TOPIC_CANONICAL = IG + "capabilitystatement-subscriptiontopic-canonical"
CONTENTS = ("empty", "id-only", "full-resource")


@dataclass(frozen=True, slots=True)
class TopicRequest:
    topic: Topic
    filters: dict[str, str]  # resource type -> search criteria (``Type?a=1&b=2``)
    content: str
    heartbeat: int | None
    timeout: int | None


def _invalid(message: str, expression: str) -> FhirError:
    return FhirError.of(422, "invalid", message, expression)


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    return [e for e in element.get("extension") or [] if e.get("url") == url]


def is_topic(criteria: str) -> bool:
    """Is this criteria a topic canonical rather than a search?"""
    return "?" not in criteria and (":" in criteria.split("?", 1)[0])


def topic_request(resource: dict[str, Any]) -> TopicRequest:
    """The topic-based Subscription ``resource`` asks for (422 names what is wrong)."""
    url = str(resource.get("criteria", "")).strip()
    topic = TOPICS.get(url)
    if topic is None:
        raise _invalid(
            f"{url!r} is not a topic of this server; its topics are {', '.join(TOPICS)}",
            "Subscription.criteria",
        )
    filters: dict[str, list[str]] = {}
    for i, ext in enumerate(_extensions(resource.get("_criteria"), FILTER)):
        where = f"Subscription.criteria.extension[{i}]"
        text = ext.get("valueString")
        if not isinstance(text, str) or "?" not in text:
            raise _invalid("a filter criteria is a search: Type?param=value", where)
        rtype, query = text.split("?", 1)
        if rtype not in topic.types:
            raise _invalid(f"{topic.url} is about {', '.join(topic.types)}, not {rtype}", where)
        filters.setdefault(rtype, []).append(query)
    channel = resource.get("channel") or {}
    contents = _extensions(channel.get("_payload"), CONTENT)
    content = contents[0].get("valueCode") if contents else "id-only"
    if channel.get("payload") is None and not contents:
        content = "empty"
    if content not in CONTENTS:
        raise _invalid(
            f"payload content {content!r}: use {', '.join(CONTENTS)}",
            "Subscription.channel.payload.extension",
        )
    return TopicRequest(
        topic,
        {t: f"{t}?{'&'.join(qs)}" for t, qs in filters.items()},
        content,
        _seconds(channel, HEARTBEAT, "heartbeat"),
        _seconds(channel, TIMEOUT, "timeout"),
    )


def _seconds(channel: dict[str, Any], url: str, what: str) -> int | None:
    found = _extensions(channel, url)
    if not found:
        return None
    value = found[0].get("valueUnsignedInt")
    if not isinstance(value, int) or value < 1:
        raise _invalid(
            f"the {what} period is a number of seconds", "Subscription.channel.extension"
        )
    return value


# --- notifications -------------------------------------------------------------------


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_parameters(
    state: dict[str, Any], kind: str, status: str, events: int, event: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The SubscriptionStatus of a notification or of ``$status`` (R4: Parameters)."""
    base = state.get("base") or ""
    params: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": f"{base}/Subscription/{state['_id']}"},
        },
    ]
    if state.get("topic"):
        params.append({"name": "topic", "valueCanonical": state["topic"]})
    params += [
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events)},
    ]
    if event is not None:
        params.append({"name": "notification-event", "part": event["parts"]})
    if state.get("error_text") and kind == "query-status":
        params.append({"name": "error", "valueCodeableConcept": {"text": state["error_text"]}})
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": params,
    }


def notification_bundle(
    state: dict[str, Any],
    note: dict[str, Any],
    number: int,
    resource: dict[str, Any] | None,
) -> dict[str, Any]:
    """The Bundle for one queued notification (handshake, heartbeat or an event)."""
    base = state.get("base") or ""
    kind = note.get("kind") or "event-notification"
    status = "requested" if kind == "handshake" else "active"
    event = None
    entries: list[dict[str, Any]] = []
    if kind == "event-notification":
        focus = f"{base}/{note['t']}/{note['rid']}"
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(number)},
            {"name": "timestamp", "valueInstant": _instant(note["at"])},
        ]
        if state.get("content") != "empty":
            parts.append({"name": "focus", "valueReference": {"reference": focus}})
        event = {"parts": parts}
        if state.get("content") == "full-resource" and resource is not None:
            entries.append(
                {
                    "fullUrl": focus,
                    "resource": resource,
                    "request": {"method": "PUT", "url": f"{note['t']}/{note['rid']}"},
                    "response": {"status": "200"},
                }
            )
        elif state.get("content") == "id-only":
            entries.append(
                {
                    "fullUrl": focus,
                    "request": {"method": "PUT", "url": f"{note['t']}/{note['rid']}"},
                    "response": {"status": "200"},
                }
            )
    events = number if kind == "event-notification" else number - 1
    parameters = status_parameters(state, kind, status, events, event)
    status_entry = {
        "fullUrl": f"urn:uuid:{parameters['id']}",
        "resource": parameters,
        "request": {"method": "GET", "url": f"{base}/Subscription/{state['_id']}/$status"},
        "response": {"status": "200"},
    }
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": _instant(datetime.now(UTC)),
        "entry": [status_entry, *entries],
    }
