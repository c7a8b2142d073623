"""The subscription topics this server offers, for topic-based Subscriptions in the R4
form of the Subscriptions R5 Backport IG (http://hl7.org/fhir/uv/subscriptions-backport/):
``Subscription.criteria`` is a topic's canonical URL, narrowed by ``backport-filter-
criteria`` extensions (``Appointment?patient=Patient/1``, one search per resource type).

A topic says which writes are events: its triggers look at a resource type's previous
and new content (an Appointment whose status becomes ``booked``), which a search cannot
express. The topics are the clinics' workflow events; the CapabilityStatement lists
their canonicals (``capabilitystatement-subscriptiontopic-canonical``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BASE = "urn:fhir-server:SubscriptionTopic/"
Json = dict[str, Any]
Fires = Callable[[Json | None, Json], bool]

_ENDED = ("cancelled", "entered-in-error", "noshow")
_APPOINTMENT_FIELDS = ("status", "start", "end", "minutesDuration", "participant", "slot")
_LAB_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_RESULTED = ("final", "amended", "corrected")


@dataclass(frozen=True, slots=True)
class Topic:
    url: str
    title: str
    description: str
    triggers: dict[str, Fires]

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.triggers)

    def fires(self, resource_type: str, previous: Json | None, new: Json) -> bool:
        trigger = self.triggers.get(resource_type)
        return trigger is not None and trigger(previous, new)


def _status(resource: Json | None) -> str | None:
    return None if resource is None else resource.get("status")


def _became(status: str) -> Fires:
    def fires(previous: Json | None, new: Json) -> bool:
        return _status(new) == status and _status(previous) != status

    return fires


def _appointment_changed(previous: Json | None, new: Json) -> bool:
    """An update of a live appointment that is neither its booking nor its cancellation:
    moved, re-timed, other participants, or a later status (arrived, fulfilled...)."""
    if previous is None or _status(new) in _ENDED or _status(new) == "booked" != _status(previous):
        return False
    return any(previous.get(f) != new.get(f) for f in _APPOINTMENT_FIELDS)


def _has_code(resource: Json, system: str, codes: tuple[str, ...]) -> bool:
    return any(
        c.get("system") == system and c.get("code") in codes
        for category in resource.get("category") or []
        for c in (category.get("coding") or [])
    )


def _resulted(previous: Json | None, new: Json) -> bool:
    """New (a create) or newly resulted (its status became final, amended, corrected)."""
    if _status(new) in ("entered-in-error", "cancelled"):
        return False
    return previous is None or (_status(new) in _RESULTED and _status(previous) != _status(new))


def _lab_observation(previous: Json | None, new: Json) -> bool:
    return _has_code(new, _LAB_CATEGORY, ("laboratory",)) and _resulted(previous, new)


def _lab_report(previous: Json | None, new: Json) -> bool:
    lab = _has_code(new, _V2_0074, ("LAB",)) or _has_code(new, _LAB_CATEGORY, ("laboratory",))
    return lab and _resulted(previous, new)


TOPICS: dict[str, Topic] = {
    t.url: t
    for t in (
        Topic(
            BASE + "appointment-booked",
            "Appointment booked",
            "An Appointment became booked (created booked, or a proposed or pending one "
            "confirmed).",
            {"Appointment": _became("booked")},
        ),
        Topic(
            BASE + "appointment-changed",
            "Appointment changed",
            "A live Appointment changed: moved or re-timed, other participants, or a later "
            "status (arrived, fulfilled, checked-in); not its booking or cancellation.",
            {"Appointment": _appointment_changed},
        ),
        Topic(
            BASE + "appointment-cancelled",
            "Appointment cancelled",
            "An Appointment became cancelled.",
            {"Appointment": _became("cancelled")},
        ),
        Topic(
            BASE + "lab-result",
            "New laboratory result",
            "A laboratory Observation (category laboratory) or DiagnosticReport (category "
            "LAB) was created, or its status became final, amended or corrected.",
            {"Observation": _lab_observation, "DiagnosticReport": _lab_report},
        ),
        Topic(
            BASE + "medication-dispensed",
            "Medication dispensed",
            "A MedicationDispense became completed.",
            {"MedicationDispense": _became("completed")},
        ),
    )
}
