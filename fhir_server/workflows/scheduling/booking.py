"""No double booking, guaranteed by MongoDB rather than by a read-then-write check.

An active Appointment holds *booking keys*, documents of the ``booking_keys``
collection whose ``_id`` (unique by definition) names what it occupies:

- ``slot|Slot/<id>`` for every Slot it references;
- ``<actor>|<minute>`` for every minute of [start, end) of each practitioner
  (``Practitioner``/``PractitionerRole``) and room (``Location``) taking part.

Two appointments that overlap for the same actor share the minute where the later one
starts, so the second insert is a duplicate key: the database refuses it even when both
requests run at the same time (the second transaction conflicts with the first, is
retried, and then sees its committed key). Appointments not aligned to whole minutes
may collide within a shared minute: the guarantee errs on the side of refusing.

Keys are written in the transaction that stores the Appointment version and are
replaced on every write of it: an appointment that becomes inactive (cancelled, noshow,
entered-in-error) or is deleted holds none, which frees its slot and times.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel
from pymongo.errors import BulkWriteError

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.workflows.pipeline import Rule, Transaction, Write

KEYS = "booking_keys"
DUPLICATE_KEY = 11000
INACTIVE = frozenset({"cancelled", "noshow", "entered-in-error"})
ACTOR_TYPES = ("Practitioner", "PractitionerRole", "Location")
QUANTUM = timedelta(minutes=1)
MAX_SPAN = timedelta(hours=24)  # at most 1440 keys per actor


def is_active(appointment: dict[str, Any] | None) -> bool:
    return appointment is not None and appointment.get("status") not in INACTIVE


def local_reference(value: Any, types: Sequence[str]) -> str | None:
    """``Type/id`` of a reference to one of ``types`` (relative, or absolute: the last
    two segments), or None."""
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        return None
    parts = value["reference"].split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] in types and parts[-1]:
        return f"{parts[-2]}/{parts[-1]}"
    return None


def instant(value: Any, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise FhirError.of(422, "invalid", f"{value!r} is not an instant", where) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def booking_keys(appointment: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, expression) of what an active appointment occupies."""
    keys: list[tuple[str, str]] = []
    for i, slot in enumerate(appointment.get("slot") or []):
        ref = local_reference(slot, ("Slot",))
        if ref is not None:
            keys.append((f"slot|{ref}", f"Appointment.slot[{i}]"))
    start, end = appointment.get("start"), appointment.get("end")
    if start is None or end is None:
        return keys
    low = instant(start, "Appointment.start")
    high = instant(end, "Appointment.end")
    if high - low > MAX_SPAN:
        raise FhirError.of(
            422,
            "business-rule",
            f"An active appointment with practitioners or rooms may last at most "
            f"{MAX_SPAN} (this one: {high - low})",
            "Appointment.end",
        )
    minutes: list[str] = []
    t = low.astimezone(UTC).replace(second=0, microsecond=0)
    while t < high:
        minutes.append(t.strftime("%Y-%m-%dT%H:%MZ"))
        t += QUANTUM
    for i, participant in enumerate(appointment.get("participant") or []):
        if not isinstance(participant, dict) or participant.get("status") == "declined":
            continue
        actor = local_reference(participant.get("actor"), ACTOR_TYPES)
        if actor is not None:
            where = f"Appointment.participant[{i}].actor"
            keys.extend((f"{actor}|{m}", where) for m in minutes)
    return keys


def conflict(key: str, where: str) -> FhirError:
    """409 naming what is taken, never the appointment that holds it (which may be
    another patient's)."""
    what, _, minute = key.partition("|")
    if what == "slot":
        message = f"{minute} is already booked by another active appointment"
    else:
        message = f"{what} already has an active appointment at {minute}"
    return FhirError.of(409, "conflict", message, where)


class NoDoubleBooking(Rule):
    """``hold``: how long a ``pending`` appointment (a temporary hold, the clinics'
    "reserva temporal") keeps its keys. Its keys carry the expiry; a booking that
    collides with an expired one removes it, so an expired hold never blocks anyone."""

    types: ClassVar[frozenset[str]] = frozenset({"Appointment"})
    collections: ClassVar[dict[str, list[IndexModel]]] = {
        KEYS: [
            IndexModel([("a", ASCENDING)], name="appointment"),
            IndexModel([("exp", ASCENDING)], name="expiry", sparse=True),
        ]
    }

    def __init__(self, hold: timedelta = timedelta(minutes=10)) -> None:
        self.hold = hold

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        keys = tx.db[KEYS]
        mine = [w.key for w in writes]
        held: dict[str, datetime | None] = {}
        async for doc in keys.find({"a": {"$in": mine}}, {"a": 1, "exp": 1}, session=tx.session):
            held[doc["a"]] = doc.get("exp")
        await keys.delete_many({"a": {"$in": mine}}, session=tx.session)
        now = datetime.now(UTC)
        where: dict[str, str] = {}
        docs: list[dict[str, Any]] = []
        for w in writes:
            if not is_active(w.new):
                continue
            assert w.new is not None
            expires = self._expiry(w, held.get(w.key), now)
            for key, expression in booking_keys(w.new):
                if key in where:  # the same key twice in one request
                    raise conflict(key, expression)
                where[key] = expression
                docs.append({"_id": key, "a": w.key, "exp": expires})
        if not docs:
            return
        await self._expire(tx, list(where), now)
        try:
            await keys.insert_many(docs, ordered=True, session=tx.session)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if not errors or errors[0].get("code") != DUPLICATE_KEY:
                raise
            key = (errors[0].get("keyValue") or {}).get("_id", "")
            raise conflict(key, where.get(key, "Appointment")) from None

    @staticmethod
    async def _expire(tx: Transaction, wanted: list[str], now: datetime) -> None:
        """Expired holds give way, in this transaction (a concurrent booking of the
        same keys conflicts with it): their keys go, and each such hold is cancelled
        ("hold expired"), which frees its Slot and is logged."""
        keys = tx.db[KEYS]
        expired = {"_id": {"$in": wanted}, "exp": {"$lte": now}}
        holders = await keys.distinct("a", expired, session=tx.session)
        if not holders:
            return
        await keys.delete_many(expired, session=tx.session)
        ids = [h.split("/", 1)[1] for h in holders]
        for current in await tx.storage.read_many("Appointment", ids, tx.session):
            if current.raw is None:
                continue
            held = load_stored(current.raw)
            if held.get("status") == "pending":
                reason = {"text": "hold expired"}
                tx.update(current, {**held, "status": "cancelled", "cancelationReason": reason})

    def _expiry(self, w: Write, current: datetime | None, now: datetime) -> datetime | None:
        """A hold keeps the expiry it was given; a new hold gets ``now + hold``."""
        assert w.new is not None
        if w.new.get("status") != "pending":
            return None
        if current is not None and (w.previous or {}).get("status") == "pending":
            return current if current.tzinfo else current.replace(tzinfo=UTC)
        return now + self.hold
