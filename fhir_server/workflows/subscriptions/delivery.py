"""Delivering one Subscription's queued notifications, in order, on a worker.

A worker delivers a Subscription's queue only while it holds the Subscription's lease
(``lease``/``holder`` in its state; worker.py claims it). Notifications go in queue
order, one at a time; each is removed from the queue once its endpoint accepted it
(2xx, or the SMTP server took the mail). So a worker killed at any point loses nothing:
another takes the lease when it runs out and starts from the first notification not
yet removed. The one notification in flight when a worker died is sent again (at least
once); nothing else is.

A failure (timeout, refused connection, non-2xx answer, an address the allow-list no
longer permits) stops the queue: the Subscription waits ``base * 2**(n-1)`` seconds
(at most FHIR_SUBSCRIPTION_RETRY_MAX_SECONDS) before the n-th retry, and after
FHIR_SUBSCRIPTION_MAX_ATTEMPTS failures in a row it goes to ``error`` with the reason
in ``Subscription.error``; its queue is kept, so setting it back to ``requested``
delivers what was waiting. Redirects are never followed (they could lead past the
allow-list).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pymongo.database import Database

from fhir_server.config import Settings
from fhir_server.jsonio import dumps, load_stored
from fhir_server.outbound.allow import OutboundAllowList, Refused
from fhir_server.outbound.mail import Attachment, MailError, build_message, send_mail
from fhir_server.storage.documents import HISTORY, history_key
from fhir_server.workflows.subscriptions.active import EPOCH, NOTIFICATIONS, STATE
from fhir_server.workflows.subscriptions.backport import notification_bundle
from fhir_server.workflows.subscriptions.channel import JSON_PAYLOADS, mail_address

log = logging.getLogger(__name__)
BATCH = 100
TURN_SECONDS = 2.0  # one task's turn: then the worker serves other Subscriptions too


class Failed(Exception):
    """A delivery failed; the text is the reason kept in Subscription.error."""


@dataclass(slots=True)
class Outcome:
    delivered: int = 0
    failure: str | None = None
    gave_up: bool = False
    handshake: bool = False  # a handshake succeeded: the Subscription may be activated


class Deliverer:
    """Sends a Subscription's notifications (one per worker process, reused)."""

    def __init__(self, settings: Settings, db: Database[dict[str, Any]]) -> None:
        self.settings = settings
        self.db = db
        self.allow = OutboundAllowList(settings.outbound_allow)
        self.http = httpx.Client(
            timeout=settings.subscription_timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "fhir-server subscriptions"},
        )
        self._contents: dict[str, Any] = {}  # history key -> raw, for the current batch

    def close(self) -> None:
        self.http.close()

    def run(self, sub_id: str, holder: str) -> Outcome:
        """Deliver from the head of ``sub_id``'s queue while holding its lease."""
        outcome = Outcome()
        state = self.db[STATE].find_one({"_id": sub_id, "holder": holder})
        if state is None:
            return outcome  # the lease went to another worker
        try:
            if state.get("active") or state.get("handshake") == "pending":
                self._drain(state, holder, outcome)
        finally:
            if outcome.failure is None:
                self._release(sub_id, holder, {"failures": 0})
        return outcome

    def _drain(self, state: dict[str, Any], holder: str, outcome: Outcome) -> None:
        sub_id = state["_id"]
        stop = time.monotonic() + TURN_SECONDS
        leased = -math.inf  # claimed by the dispatcher a while ago: extend before sending
        while time.monotonic() < stop:
            batch = list(self.db[NOTIFICATIONS].find({"sub": sub_id}).sort("_id", 1).limit(BATCH))
            if not batch:
                return
            self._prefetch(batch)
            for note in batch:
                kind = note.get("kind") or "event-notification"
                if not state.get("active") and kind != "handshake":
                    return  # events wait for the handshake (and the activation)
                if self._lease_short(leased):
                    if not self._keep_lease(state, holder):
                        return  # the lease went to another worker: it delivers from here
                    leased = time.monotonic()
                try:
                    self.send(state, note)
                except Failed as exc:
                    self._failed(state, holder, str(exc), outcome)
                    return
                self.db[NOTIFICATIONS].delete_one({"_id": note["_id"]})
                outcome.delivered += 1
                numbered = state.get("topic") or kind != "event-notification"
                if numbered and not self._delivered(state, holder, kind):
                    return
                if kind == "handshake":
                    outcome.handshake = True
                    return
                if time.monotonic() >= stop:
                    return

    def _lease_short(self, leased: float) -> bool:
        """Would the lease set at ``leased`` (monotonic) run out during the next send?
        Extended only then, so a plain rest-hook delivery costs no state write."""
        s = self.settings
        left = s.subscription_lease_seconds - (time.monotonic() - leased)
        return left < max(s.subscription_lease_seconds / 2, s.subscription_timeout_seconds + 5)

    def _keep_lease(self, state: dict[str, Any], holder: str) -> bool:
        kept = self.db[STATE].update_one(
            {"_id": state["_id"], "holder": holder}, {"$set": {"lease": self._lease_end()}}
        )
        return kept.matched_count > 0

    def _prefetch(self, batch: list[dict[str, Any]]) -> None:
        """The stored versions a batch's payloads carry, read in one query."""
        keys = [history_key(n["t"], n["rid"], n["v"]) for n in batch if "rid" in n]
        self._contents = (
            {
                d["_id"]: d.get("raw")
                for d in self.db[HISTORY].find({"_id": {"$in": keys}}, {"raw": 1})
            }
            if keys
            else {}
        )

    def _delivered(self, state: dict[str, Any], holder: str, kind: str) -> bool:
        """Record a topic-based delivery (its event number, the next heartbeat); False
        when the lease is no longer ours."""
        fields: dict[str, Any] = {"lease": self._lease_end()}
        if state.get("heartbeat"):  # a heartbeat follows a silence, not a notification
            fields["beat_at"] = datetime.now(UTC) + timedelta(seconds=state["heartbeat"])
        update: dict[str, Any] = {"$set": fields}
        if kind == "event-notification":
            update["$inc"] = {"events": 1}
            state["events"] = int(state.get("events") or 0) + 1
        if kind == "handshake":
            fields["handshake"] = "passed"
        kept = self.db[STATE].update_one({"_id": state["_id"], "holder": holder}, update)
        return kept.matched_count > 0

    def _lease_end(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.settings.subscription_lease_seconds)

    def _release(self, sub_id: str, holder: str, fields: dict[str, Any]) -> None:
        self.db[STATE].update_one(
            {"_id": sub_id, "holder": holder},
            {"$set": {"lease": EPOCH, "holder": None, **fields}},
        )

    def _failed(self, state: dict[str, Any], holder: str, reason: str, outcome: Outcome) -> None:
        s = self.settings
        failures = int(state.get("failures") or 0) + 1
        wait = min(
            s.subscription_retry_base_seconds * 2 ** (failures - 1),
            s.subscription_retry_max_seconds,
        )
        outcome.failure = reason
        outcome.gave_up = failures >= s.subscription_max_attempts
        log.warning("subscription %s: delivery failed (%d): %s", state["_id"], failures, reason)
        retry_at = datetime.now(UTC) + timedelta(seconds=wait)
        self._release(state["_id"], holder, {"failures": failures, "retry_at": retry_at})

    # --- channels ------------------------------------------------------------------------

    def send(self, state: dict[str, Any], note: dict[str, Any]) -> None:
        channel = state["channel"]
        kind = channel["type"]
        if state.get("topic"):
            self._topic(state, channel, note)
        elif kind == "rest-hook":
            self._rest_hook(channel, note)
        elif kind == "email":
            self._email(state, channel, note)
        else:
            raise Failed(f"channel {kind} is not delivered by workers")

    def _topic(self, state: dict[str, Any], channel: dict[str, Any], note: dict[str, Any]) -> None:
        """A topic-based Subscription's notification Bundle (backport.py): POSTed to a
        rest-hook, attached to an email."""
        kind = note.get("kind") or "event-notification"
        resource = None
        if kind == "event-notification" and state.get("content") == "full-resource":
            resource = self._stored(note)
        number = int(state.get("events") or 0) + 1
        bundle = dumps(notification_bundle(state, note, number, resource))
        if channel["type"] == "email":
            self._mail(
                state,
                channel,
                f"FHIR Subscription {state['_id']}: {note.get('kind', 'event-notification')}",
                f"Notification of Subscription {state['_id']} ({state.get('topic')}).\n",
                Attachment("notification.json", bundle),
                note,
            )
            return
        timeout = min(
            float(state.get("timeout") or self.settings.subscription_timeout_seconds),
            self.settings.subscription_timeout_seconds,
        )
        headers = dict(channel.get("headers") or [])
        headers["Content-Type"] = "application/fhir+json"
        self._request(channel["endpoint"], "POST", channel["endpoint"], bundle, headers, timeout)

    def _stored(self, note: dict[str, Any]) -> dict[str, Any]:
        key = history_key(note["t"], note["rid"], note["v"])
        raw = self._contents.get(key)
        if raw is None:
            doc = self.db[HISTORY].find_one({"_id": key}, {"raw": 1})
            raw = None if doc is None else doc.get("raw")
        if raw is None:
            raise Failed(f"{note['t']}/{note['rid']}/_history/{note['v']} is no longer stored")
        resource: dict[str, Any] = load_stored(raw)
        return resource

    def _resource(self, note: dict[str, Any]) -> bytes:
        return dumps(self._stored(note))

    def _rest_hook(self, channel: dict[str, Any], note: dict[str, Any]) -> None:
        endpoint: str = channel["endpoint"]
        headers = dict(channel.get("headers") or [])
        method, url, content = "POST", endpoint, b""
        if channel.get("payload") in JSON_PAYLOADS:
            method, url = "PUT", f"{endpoint.rstrip('/')}/{note['t']}/{note['rid']}"
            content = self._resource(note)
            headers["Content-Type"] = "application/fhir+json"
        timeout = self.settings.subscription_timeout_seconds
        self._request(endpoint, method, url, content, headers, timeout)

    def _request(
        self,
        endpoint: str,
        method: str,
        url: str,
        content: bytes,
        headers: dict[str, str],
        timeout: float,
    ) -> None:
        """One HTTP delivery, after the allow-list check; Failed unless 2xx."""
        try:
            self.allow.check(endpoint)
        except Refused as exc:
            raise Failed(str(exc)) from None
        try:
            response = self.http.request(
                method, url, content=content, headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise Failed(f"{url}: {type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise Failed(f"{url} answered HTTP {response.status_code}")

    def _email(self, state: dict[str, Any], channel: dict[str, Any], note: dict[str, Any]) -> None:
        key = f"{note['t']}/{note['rid']}"
        attachment = None
        if channel.get("payload") in JSON_PAYLOADS:
            attachment = Attachment(f"{note['t']}-{note['rid']}.json", self._resource(note))
        self._mail(
            state,
            channel,
            f"FHIR Subscription {state['_id']}: {key} changed",
            f"{key} (version {note['v']}) matches the criteria of Subscription "
            f"{state['_id']}: {state['criteria']}\n",
            attachment,
            note,
        )

    def _mail(
        self,
        state: dict[str, Any],
        channel: dict[str, Any],
        subject: str,
        body: str,
        attachment: Attachment | None,
        note: dict[str, Any],
    ) -> None:
        message = build_message(
            self.settings,
            mail_address(channel["endpoint"]),
            subject,
            body,
            attachment,
            message_id=f"<{note['_id']}@fhir-server.subscription>",
        )
        try:
            send_mail(self.settings, message)
        except MailError as exc:
            raise Failed(str(exc)) from None
