"""Billing (issue 16): prices, charges, invoices, numbering and payments
(docs/billing.md)."""
