"""``fhir-server reminders``: the admin's side of reminders."""

from __future__ import annotations

import json

import click


@click.group("reminders")
def reminders_group() -> None:
    """Appointment reminders (docs/reminders.md)."""


@reminders_group.command("templates")
def templates_command() -> None:
    """Print the built-in texts as the Library to edit and PUT to
    [base]/Library/appointment-reminders (texts base64 in content.data)."""
    from fhir_server.workflows.reminders.templates import default_library

    click.echo(json.dumps(default_library(), ensure_ascii=False, indent=2))
