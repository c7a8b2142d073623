"""What a message says about an appointment: the patient's name, the practitioner, the
place, its local date and time (the template placeholders), read for many appointments
at once (one query per type)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fhir_server.jsonio import load_stored
from fhir_server.storage import Storage
from fhir_server.workflows.reminders.templates import local_date_time
from fhir_server.workflows.scheduling.booking import local_reference

PEOPLE = ("Practitioner", "PractitionerRole")


def patient_of(appointment: dict[str, Any]) -> str | None:
    """The first Patient participant that has not declined (``Patient/id``)."""
    for p in appointment.get("participant") or ():
        ref = local_reference(p.get("actor"), ("Patient",))
        if ref and p.get("status") != "declined":
            return ref
    return None


def _participant(appointment: dict[str, Any], types: tuple[str, ...]) -> dict[str, Any] | None:
    for p in appointment.get("participant") or ():
        actor = p.get("actor")
        if p.get("status") == "declined" or not isinstance(actor, dict):
            continue
        ref = local_reference(actor, types)
        if ref or (actor.get("type") in types and actor.get("display")):
            return actor
    return None


def person_name(resource: dict[str, Any] | None, first_only: bool = False) -> str:
    names = [n for n in (resource or {}).get("name") or () if isinstance(n, dict)]
    names.sort(key=lambda n: n.get("use") != "official")
    for n in names:
        given = [g for g in n.get("given") or () if isinstance(g, str)]
        if first_only and given:
            return given[0]
        parts = [*(n.get("prefix") or ()), *given, n.get("family") or ""]
        text = " ".join(p for p in parts if isinstance(p, str) and p)
        return text or n.get("text") or ""
    return ""


class Details:
    """Loads what the messages of a batch of appointments need."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.found: dict[str, dict[str, Any]] = {}

    async def load(self, refs: Iterable[str]) -> None:
        wanted: dict[str, set[str]] = defaultdict(set)
        for ref in refs:
            if ref not in self.found:
                t, _, rid = ref.partition("/")
                wanted[t].add(rid)
        for t, ids in wanted.items():
            for v in await self.storage.read_many(t, sorted(ids)):
                if v.raw is not None:
                    self.found[f"{t}/{v.id}"] = load_stored(v.raw)
        roles = [r for r in self.found.values() if r.get("resourceType") == "PractitionerRole"]
        people = [local_reference(r.get("practitioner"), ("Practitioner",)) for r in roles]
        missing = {p for p in people if p and p not in self.found}
        if missing:
            await self.load(missing)

    def refs_of(self, appointment: dict[str, Any]) -> list[str]:
        out = []
        for types in (PEOPLE, ("Location",)):
            actor = _participant(appointment, types)
            ref = local_reference(actor, types) if actor else None
            if ref:
                out.append(ref)
        return out

    def practitioner(self, appointment: dict[str, Any]) -> str:
        actor = _participant(appointment, PEOPLE)
        if actor is None:
            return ""
        ref = local_reference(actor, PEOPLE)
        resource = self.found.get(ref or "")
        if resource and resource.get("resourceType") == "PractitionerRole":
            person = local_reference(resource.get("practitioner"), ("Practitioner",))
            named = person_name(self.found.get(person or ""))
            return named or (resource.get("practitioner") or {}).get("display") or ""
        return person_name(resource) or str(actor.get("display") or "")

    def place(self, appointment: dict[str, Any]) -> tuple[str, str]:
        actor = _participant(appointment, ("Location",))
        if actor is None:
            return "", ""
        location = self.found.get(local_reference(actor, ("Location",)) or "") or {}
        name = location.get("name") or actor.get("display") or ""
        address = location.get("address") or {}
        lines = [*(address.get("line") or ()), address.get("city") or ""]
        text = address.get("text") or ", ".join(x for x in lines if isinstance(x, str) and x)
        return str(name), str(text)

    def values(
        self,
        appointment: dict[str, Any],
        patient: dict[str, Any] | None,
        start: datetime,
        zone: str,
        language: str,
    ) -> dict[str, str]:
        date, time = local_date_time(start, zone, language)
        place, address = self.place(appointment)
        return {
            "patient": person_name(patient, first_only=True),
            "date": date,
            "time": time,
            "practitioner": self.practitioner(appointment),
            "place": place,
            "address": address,
        }
