"""Workflows: capabilities that act on writes through the write pipeline
(pipeline.py). ``rules()`` is the one list of registered rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.config import Settings
from fhir_server.service.shipped import Shipment
from fhir_server.workflows.conformance import Operations, shipment_of
from fhir_server.workflows.pipeline import Rule

if TYPE_CHECKING:
    from fhir_server.service.search import SearchService


def operations() -> list[Operations]:
    """The OperationDefinitions of every workflow (each package's ``conformance/``), and
    of the reports (reports/conformance/)."""
    from fhir_server.workflows.billing.definitions import OPERATIONS as BILLING
    from fhir_server.workflows.pharmacy.definitions import OPERATIONS as PHARMACY
    from fhir_server.workflows.scheduling.definitions import OPERATIONS as SCHEDULING
    from fhir_server.workflows.subscriptions.definitions import OPERATIONS as SUBSCRIPTIONS
    from reports.operation import OPERATIONS as REPORTS

    return [SCHEDULING, PHARMACY, BILLING, SUBSCRIPTIONS, REPORTS]


def operations_shipment() -> Shipment:
    """What start-up installs, so the CapabilityStatement's canonicals resolve here."""
    return shipment_of("workflow OperationDefinitions", "workflow-operations", operations())


def rules(settings: Settings, search: SearchService) -> list[Rule]:
    """Every rule of the pipeline, in the order they run: refusals first (cheapest),
    then the booking keys, then the action log; then the pharmacy's stock, billing;
    subscription matching last, so that it sees what the other rules made of a write."""
    from fhir_server.audit.guard import ReadOnlyAudit
    from fhir_server.outbound.allow import OutboundAllowList
    from fhir_server.workflows.billing.charges import ChargeCapture
    from fhir_server.workflows.billing.invoiced import InvoicedItems
    from fhir_server.workflows.billing.lifecycle import (
        BilledByInvoices,
        InvoiceLifecycle,
        StaffOnly,
    )
    from fhir_server.workflows.billing.numbering import InvoiceNumbers
    from fhir_server.workflows.billing.payments import Payments
    from fhir_server.workflows.billing.prices import PriceIndex
    from fhir_server.workflows.pharmacy.alerts import StockThresholds
    from fhir_server.workflows.pharmacy.limits import PrescriptionLimits
    from fhir_server.workflows.pharmacy.movements import StockMovements
    from fhir_server.workflows.reminders.rules import reminder_rules
    from fhir_server.workflows.scheduling.actions import ActionLog
    from fhir_server.workflows.scheduling.booking import NoDoubleBooking
    from fhir_server.workflows.scheduling.lifecycle import MinimumNotice, StatusTransitions
    from fhir_server.workflows.scheduling.plans import SlotPlanning
    from fhir_server.workflows.scheduling.responses import ParticipantResponses
    from fhir_server.workflows.scheduling.slots import SlotStatus
    from fhir_server.workflows.subscriptions.active import ActiveSubscriptions
    from fhir_server.workflows.subscriptions.rules import (
        SubscriptionLifecycle,
        SubscriptionMatching,
    )

    active = ActiveSubscriptions(search.storage.db)

    return [
        ReadOnlyAudit(),  # the audit trail: written by the server alone (fhir_server/audit/)
        StatusTransitions(),
        MinimumNotice(settings.appointment_min_notice),
        NoDoubleBooking(settings.appointment_hold),
        SlotStatus(),
        ActionLog(),
        ParticipantResponses(),
        SlotPlanning(),
        PrescriptionLimits(),
        StockMovements(settings.slot_timezone),
        StockThresholds(settings.slot_timezone),
        # billing (docs/billing.md): refusals, then prices, charges, invoices, payments
        StaffOnly(),
        InvoiceLifecycle(),
        BilledByInvoices(),
        PriceIndex(),
        ChargeCapture(settings.billing_issuer),
        InvoicedItems(),
        InvoiceNumbers(settings.billing_establishment, settings.billing_emission_point),
        Payments(),
        *reminder_rules(settings),  # reminders and replies (docs/reminders.md)
        # subscriptions (docs/subscriptions.md)
        SubscriptionLifecycle(
            search, OutboundAllowList(settings.outbound_allow), active, settings.base_url
        ),
        SubscriptionMatching(search, active),
    ]
