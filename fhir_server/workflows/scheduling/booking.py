"""No double booking, guaranteed by MongoDB rather than by a read-then-write check.

An active Appointment holds *booking keys*, documents of the ``booking_keys``
collection whose ``_id`` (unique by definition) names what it occupies:

- ``slot|Slot/<id>`` for every Slot it references;
- ``<actor>|<minute>`` for every minute of [start, end) of each practitioner
  (``Practitioner``/``PractitionerRole``) and room (``Location``) taking part.

A ``PractitionerRole`` participant counts as its practitioner: the role is read in the
write's transaction and its key is ``Practitioner/<id>|<minute>``, so the same person
booked once through a role and once directly (or through two roles) collides. A role
without a practitioner, or not stored here, keys as itself. A role's ``location`` is
not a room of the appointment: it lists where the person works (0..*, often a site or
a building), so deriving rooms from it would block whole clinics; rooms are booked by
naming them as participants (``$find`` does, from the Schedule's actors). Keys are
resolved when the appointment is written: changing a role's practitioner later does
not move the keys of appointments already booked.

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

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.marker import is_hold

KEYS = "booking_keys"
INACTIVE = frozenset({"cancelled", "noshow", "entered-in-error"})
ACTOR_TYPES = ("Practitioner", "PractitionerRole", "Location")
_PERSON = ("Practitioner",)
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


def actors(appointment: dict[str, Any]) -> list[tuple[str, str]]:
    """(``Type/id``, expression) of the practitioners, roles and rooms taking part
    (those that declined do not)."""
    found: list[tuple[str, str]] = []
    for i, participant in enumerate(appointment.get("participant") or []):
        if not isinstance(participant, dict) or participant.get("status") == "declined":
            continue
        actor = local_reference(participant.get("actor"), ACTOR_TYPES)
        if actor is not None:
            found.append((actor, f"Appointment.participant[{i}].actor"))
    return found


def booking_keys(
    appointment: dict[str, Any], roles: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """(key, expression) of what an active appointment occupies, each key once.
    ``roles`` maps ``PractitionerRole/<id>`` to its ``Practitioner/<id>``."""
    keys: dict[str, str] = {}
    for i, slot in enumerate(appointment.get("slot") or []):
        ref = local_reference(slot, ("Slot",))
        if ref is not None:
            keys.setdefault(f"slot|{ref}", f"Appointment.slot[{i}]")
    start, end = appointment.get("start"), appointment.get("end")
    if start is None or end is None:
        return list(keys.items())
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
    for actor, where in actors(appointment):
        who = (roles or {}).get(actor, actor)
        for m in minutes:
            keys.setdefault(f"{who}|{m}", where)
    return list(keys.items())


async def practitioners_of_roles(
    tx: Transaction, appointments: Sequence[dict[str, Any]]
) -> dict[str, str]:
    """``PractitionerRole/<id>`` -> ``Practitioner/<id>`` for the stored roles taking
    part, read in the transaction (one query)."""
    ids = sorted(
        {
            actor.split("/", 1)[1]
            for a in appointments
            for actor, _ in actors(a)
            if actor.startswith("PractitionerRole/")
        }
    )
    if not ids:
        return {}
    found: dict[str, str] = {}
    for current in await tx.storage.read_many("PractitionerRole", ids, tx.session):
        if current.raw is None:
            continue
        practitioner = local_reference(load_stored(current.raw).get("practitioner"), _PERSON)
        if practitioner is not None:
            found[f"PractitionerRole/{current.id}"] = practitioner
    return found


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
    """``hold``: how long a temporary hold (``$hold``, or a ``pending`` appointment
    carrying the hold tag: marker.py; the clinics' "reserva temporal") keeps its keys.
    Its keys carry the expiry; a booking that collides with an expired one removes it,
    so an expired hold never blocks anyone. Any other appointment, ``pending`` ones
    included, keeps its keys until it is cancelled, moved or deleted."""

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
        held: dict[str, datetime | None] = {}
        # Only a live appointment holds keys: a create (nothing live before, and not
        # a rewrite of this transaction's own version) has none to read or replace.
        mine = [w.key for w in writes if w.previous is not None or w.rewrite]
        if mine:
            found = keys.find({"a": {"$in": mine}}, {"a": 1, "exp": 1}, session=tx.session)
            async for doc in found:
                held[doc["a"]] = doc.get("exp")
            await keys.delete_many({"a": {"$in": mine}}, session=tx.session)
        now = datetime.now(UTC)
        where: dict[str, str] = {}
        docs: list[dict[str, Any]] = []
        active = [w for w in writes if is_active(w.new)]
        roles = await practitioners_of_roles(tx, [w.new for w in active if w.new is not None])
        for w in active:
            assert w.new is not None
            expires = self._expiry(w, held.get(w.key), now)
            for key, expression in booking_keys(w.new, roles):
                if key in where:  # the same key twice in one request
                    raise conflict(key, expression)
                where[key] = expression
                docs.append({"_id": key, "a": w.key, "exp": expires})
        if not docs:
            return
        await self._expire(tx, list(where), now)
        taken = await tx.claim(KEYS, docs)
        if taken is not None:
            raise conflict(taken, where.get(taken, "Appointment"))

    @staticmethod
    async def _expire(tx: Transaction, wanted: list[str], now: datetime) -> None:
        """Expired holds give way, in this transaction (a concurrent booking of the
        same keys conflicts with it): their keys go, and each such hold is cancelled
        ("hold expired"), which frees its Slot and is logged. An expired key of an
        appointment that is not a hold (written before holds were marked) becomes
        permanent instead, and so still collides."""
        keys = tx.db[KEYS]
        expired = {"_id": {"$in": wanted}, "exp": {"$lte": now}}
        holders = await keys.distinct("a", expired, session=tx.session)
        if not holders:
            return
        ids = [h.split("/", 1)[1] for h in holders]
        staying: list[str] = []
        for current in await tx.storage.read_many("Appointment", ids, tx.session):
            if current.raw is None:
                continue
            held = load_stored(current.raw)
            if not is_hold(held):
                staying.append(f"Appointment/{current.id}")
                continue
            reason = {"text": "hold expired"}
            tx.update(current, {**held, "status": "cancelled", "cancelationReason": reason}, held)
        gone = [h for h in holders if h not in staying]
        await keys.delete_many({"a": {"$in": gone}}, session=tx.session)
        if staying:
            kept = {**expired, "a": {"$in": staying}}
            await keys.update_many(kept, {"$set": {"exp": None}}, session=tx.session)

    def _expiry(self, w: Write, current: datetime | None, now: datetime) -> datetime | None:
        """A hold keeps the expiry it was given; a new hold gets ``now + hold``; what is
        not a hold does not expire."""
        assert w.new is not None
        if not is_hold(w.new):
            return None
        if current is not None and is_hold(w.previous):
            return current if current.tzinfo else current.replace(tzinfo=UTC)
        return now + self.hold
