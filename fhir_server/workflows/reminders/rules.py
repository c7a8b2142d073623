"""The reminders' rules of the write pipeline, in the order they run."""

from __future__ import annotations

from fhir_server.config import Settings
from fhir_server.workflows.pipeline import Rule


def reminder_rules(settings: Settings) -> list[Rule]:
    from fhir_server.workflows.reminders.leads import parse_leads
    from fhir_server.workflows.reminders.phones import PatientPhones
    from fhir_server.workflows.reminders.plan import ReminderPlanning
    from fhir_server.workflows.reminders.provenance import ReplyProvenance
    from fhir_server.workflows.reminders.templates import TemplateCheck

    return [
        TemplateCheck(),
        ReminderPlanning(parse_leads(settings.reminder_lead_times)),
        PatientPhones(settings.reminder_country_code),
        ReplyProvenance(),
    ]
