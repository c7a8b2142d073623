"""Scheduling (issue 12): rules on Appointment writes. See README.md and
docs/scheduling.md."""
