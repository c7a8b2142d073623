"""Appointment reminders by WhatsApp, SMS and email, and the patients' replies
(docs/reminders.md; the modules are listed in README.md here)."""
