"""Email over SMTP (smtplib from the standard library): subscription notifications on the
``email`` channel and appointment reminders. Synchronous, for the workers.

Security follows FHIR_SMTP_SECURITY: STARTTLS required (the default), TLS from the start,
or none for a relay on the same host. Authentication when FHIR_SMTP_USER is set."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from fhir_server.config import Settings


class MailError(Exception):
    """The message could not be handed to the SMTP server (the reason is the text)."""


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes
    maintype: str = "application"
    subtype: str = "fhir+json"


def mail_configured(settings: Settings) -> bool:
    return bool(settings.smtp_host)


def _tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not settings.smtp_verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def build_message(
    settings: Settings,
    to: str,
    subject: str,
    body: str,
    attachment: Attachment | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id or make_msgid(domain="fhir-server")
    message.set_content(body)
    if attachment is not None:
        message.add_attachment(
            attachment.content,
            maintype=attachment.maintype,
            subtype=attachment.subtype,
            filename=attachment.filename,
        )
    return message


def send_mail(settings: Settings, message: EmailMessage) -> None:
    """Hand ``message`` to the configured SMTP server; MailError says why not."""
    host = settings.smtp_host
    if not host:
        raise MailError("no SMTP server is configured (FHIR_SMTP_HOST)")
    timeout = settings.smtp_timeout_seconds
    try:
        smtp: smtplib.SMTP
        if settings.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(
                host, settings.smtp_port, timeout=timeout, context=_tls_context(settings)
            )
        else:
            smtp = smtplib.SMTP(host, settings.smtp_port, timeout=timeout)
        with smtp:
            if settings.smtp_security == "starttls":
                smtp.starttls(context=_tls_context(settings))
            if settings.smtp_user:
                smtp.login(settings.smtp_user, settings.smtp_password or "")
            refused = smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(f"SMTP {host}:{settings.smtp_port}: {exc}") from exc
    if refused:
        raise MailError(f"SMTP refused {', '.join(sorted(refused))}")
