"""Workflows: capabilities that act on writes through the write pipeline
(pipeline.py). ``rules()`` is the one list of registered rules."""

from __future__ import annotations

from fhir_server.config import Settings
from fhir_server.workflows.pipeline import Rule


def rules(settings: Settings) -> list[Rule]:
    """Every rule of the pipeline, in the order they run: refusals first (cheapest),
    then the booking keys, then the action log."""
    from fhir_server.workflows.scheduling.actions import ActionLog
    from fhir_server.workflows.scheduling.booking import NoDoubleBooking
    from fhir_server.workflows.scheduling.lifecycle import MinimumNotice, StatusTransitions
    from fhir_server.workflows.scheduling.plans import SlotPlanning
    from fhir_server.workflows.scheduling.responses import ParticipantResponses
    from fhir_server.workflows.scheduling.slots import SlotStatus

    return [
        StatusTransitions(),
        MinimumNotice(settings.appointment_min_notice),
        NoDoubleBooking(settings.appointment_hold),
        SlotStatus(),
        ActionLog(),
        ParticipantResponses(),
        SlotPlanning(),
    ]
