"""The texts of reminders and replies, in Spanish and English, and how admins change
them: a ``Library`` with url ``urn:fhir-server:Library/appointment-reminders`` whose
``content`` holds one text/plain attachment per message (``title``: which message,
``language``: its language, ``data``: the text, base64 as every Attachment). Any text it
holds replaces the built-in one of that message and language; a language it adds
(``qu``, say) becomes one patients may get. Writes of that Library are checked (rule
``TemplateCheck``): an unknown message, placeholder or missing language is 422.

Placeholders: ``{patient}``, ``{date}``, ``{time}``, ``{practitioner}``, ``{place}``,
``{address}``; an unknown value is left empty (``{practitioner}`` and ``{place}`` have
wording of their own: "su médico", "la clínica").
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from fhir_server.outcome import FhirError
from fhir_server.storage import Storage
from fhir_server.workflows.pipeline import Rule, Write

LIBRARY_URL = "urn:fhir-server:Library/appointment-reminders"
PLACEHOLDERS = frozenset({"patient", "date", "time", "practitioner", "place", "address"})
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

_STOP_ES = " Para no recibir más recordatorios, responda STOP."
_STOP_EN = " To stop these reminders, reply STOP."
DEFAULTS: dict[str, dict[str, str]] = {
    "es": {
        "reminder": "Hola {patient}, le recordamos su cita el {date} a las {time} con "
        "{practitioner} en {place}. Responda CONFIRMAR (1), CANCELAR (2) o "
        "REPROGRAMAR (3)." + _STOP_ES,
        "reminder-email-subject": "Recordatorio de su cita del {date}",
        "reminder-email": "Hola {patient}:\n\nLe recordamos su cita el {date} a las {time} "
        "con {practitioner} en {place}.\n\nSi no puede asistir o desea cambiarla, por favor "
        "comuníquese con la clínica.\n",
        "reply-confirmed": "Gracias, {patient}. Su cita del {date} a las {time} con "
        "{practitioner} está confirmada.",
        "reply-cancelled": "Su cita del {date} a las {time} ha sido cancelada. Si desea "
        "una nueva cita, comuníquese con la clínica.",
        "reply-too-late": "Su cita del {date} a las {time} es muy pronto para cancelarla "
        "por este medio; se mantiene. Avisamos a la clínica, que se comunicará con usted.",
        "reply-reschedule": "Recibimos su pedido de reprogramar la cita del {date} a las "
        "{time}. El personal de la clínica le contactará para acordar una nueva fecha; "
        "hasta entonces su cita se mantiene.",
        "reply-stopped": "No recibirá más recordatorios en este número. Para volver a "
        "recibirlos, responda START.",
        "reply-started": "Volverá a recibir recordatorios de sus citas en este número.",
        "reply-help": "No entendimos su respuesta. Para su cita del {date} a las {time}, "
        "responda CONFIRMAR (1), CANCELAR (2) o REPROGRAMAR (3)." + _STOP_ES,
        "reply-no-appointment": "No encontramos una cita próxima con recordatorio para "
        "este número. Por favor comuníquese con la clínica.",
        "reply-error": "No pudimos procesar su respuesta. Por favor comuníquese con la clínica.",
    },
    "en": {
        "reminder": "Hello {patient}, this is a reminder of your appointment on {date} at "
        "{time} with {practitioner} at {place}. Reply CONFIRM (1), CANCEL (2) or "
        "RESCHEDULE (3)." + _STOP_EN,
        "reminder-email-subject": "Reminder of your appointment on {date}",
        "reminder-email": "Hello {patient},\n\nThis is a reminder of your appointment on "
        "{date} at {time} with {practitioner} at {place}.\n\nIf you cannot come or want to "
        "change it, please contact the clinic.\n",
        "reply-confirmed": "Thank you, {patient}. Your appointment on {date} at {time} with "
        "{practitioner} is confirmed.",
        "reply-cancelled": "Your appointment on {date} at {time} has been cancelled. To book "
        "a new one, please contact the clinic.",
        "reply-too-late": "Your appointment on {date} at {time} is too soon to cancel "
        "by message; it stands. We have told the clinic, who will contact you.",
        "reply-reschedule": "We have your request to reschedule the appointment on {date} at "
        "{time}. The clinic's staff will contact you to agree on a new date; until then "
        "your appointment stands.",
        "reply-stopped": "You will not get more reminders on this number. To get them "
        "again, reply START.",
        "reply-started": "You will get appointment reminders on this number again.",
        "reply-help": "Sorry, we did not understand. For your appointment on {date} at "
        "{time}, reply CONFIRM (1), CANCEL (2) or RESCHEDULE (3)." + _STOP_EN,
        "reply-no-appointment": "We found no upcoming appointment with a reminder for this "
        "number. Please contact the clinic.",
        "reply-error": "We could not process your reply. Please contact the clinic.",
    },
}
MESSAGES = frozenset(DEFAULTS["es"])
_FALLBACK = {
    "es": {"practitioner": "su médico", "place": "la clínica"},
    "en": {"practitioner": "your doctor", "place": "the clinic"},
}
_DAYS = {
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}
_MONTHS = {
    "es": [
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ],
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
}


def local_date_time(t: datetime, zone: str, language: str) -> tuple[str, str]:
    """The date and time of ``t`` in the clinic's zone, as the language says them."""
    local = t.astimezone(ZoneInfo(zone))
    if language == "en":
        hour = local.hour % 12 or 12
        half = "AM" if local.hour < 12 else "PM"
        day, month = _DAYS["en"][local.weekday()], _MONTHS["en"][local.month - 1]
        return f"{day}, {month} {local.day}", f"{hour}:{local.minute:02d} {half}"
    days = _DAYS.get(language, _DAYS["es"])
    months = _MONTHS.get(language, _MONTHS["es"])
    return (
        f"{days[local.weekday()]} {local.day} de {months[local.month - 1]}",
        f"{local.hour:02d}:{local.minute:02d}",
    )


def fill(text: str, values: Mapping[str, str], language: str) -> str:
    fallback = _FALLBACK.get(language, _FALLBACK["es"])

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        return values.get(name) or fallback.get(name, "")

    return _PLACEHOLDER.sub(one, text)


class Templates:
    """The texts in force: the Library's over the built-in ones."""

    def __init__(self, custom: Mapping[tuple[str, str], str], default_language: str) -> None:
        self.custom = dict(custom)
        self.default_language = default_language
        self.languages = frozenset(DEFAULTS) | {lang for _, lang in self.custom}

    def language_for(self, patient: dict[str, Any] | None) -> str:
        """The patient's preferred language the texts have, else the first of their
        Patient.communication they have, else the default (FHIR_REMINDER_LANGUAGE)."""
        comms = [c for c in (patient or {}).get("communication") or () if isinstance(c, dict)]
        comms.sort(key=lambda c: not c.get("preferred"))
        for c in comms:
            for code in _codes(c.get("language")):
                if code in self.languages:
                    return code
        return self.default_language

    def text(self, message: str, language: str) -> str:
        for lang in (language, self.default_language, "es"):
            found = self.custom.get((message, lang)) or DEFAULTS.get(lang, {}).get(message)
            if found:
                return found
        raise KeyError(message)

    def render(self, message: str, language: str, values: Mapping[str, str]) -> str:
        return fill(self.text(message, language), values, language)


def _codes(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    codes = [c.get("code") for c in concept.get("coding") or () if isinstance(c, dict)]
    return [c.split("-")[0].lower() for c in codes if isinstance(c, str) and c]


def library_texts(library: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(message, language) -> text of a templates Library (already checked)."""
    found: dict[tuple[str, str], str] = {}
    for content in library.get("content") or ():
        title, language, data = content.get("title"), content.get("language"), content.get("data")
        if isinstance(title, str) and isinstance(language, str) and isinstance(data, str):
            found[(title, language.split("-")[0].lower())] = base64.b64decode(data).decode()
    return found


async def load(storage: Storage, default_language: str) -> Templates:
    """The templates in force: the most recently written active Library with our url."""
    from fhir_server.jsonio import load_stored

    found = await storage.find_current("Library", {"sp.url": LIBRARY_URL}, 20)
    libraries = sorted(
        (v for v in found if v.raw is not None), key=lambda v: v.last_updated, reverse=True
    )
    for version in libraries:
        library = load_stored(version.raw or b"{}")
        if library.get("status") in ("active", "draft"):
            return Templates(library_texts(library), default_language)
    return Templates({}, default_language)


def problems(library: dict[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a templates Library: (diagnostics, expression) pairs."""
    out: list[tuple[str, str]] = []
    for i, content in enumerate(library.get("content") or ()):
        where = f"Library.content[{i}]"
        title = content.get("title")
        if title not in MESSAGES:
            known = ", ".join(sorted(MESSAGES))
            out.append((f"{title!r} is not a message of the reminders ({known})", f"{where}.title"))
        if not isinstance(content.get("language"), str):
            out.append(("Each template needs its language (es, en, ...)", f"{where}.language"))
        if content.get("contentType", "").split(";")[0].strip() != "text/plain":
            out.append(("Templates are text/plain", f"{where}.contentType"))
        try:
            text = base64.b64decode(content.get("data") or "", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            out.append(("The template must be UTF-8 text in base64", f"{where}.data"))
            continue
        if not text.strip():
            out.append(("The template is empty", f"{where}.data"))
        for name in _PLACEHOLDER.findall(text):
            if name not in PLACEHOLDERS:
                known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
                out.append((f"Unknown placeholder {{{name}}} (known: {known})", f"{where}.data"))
    return out


class TemplateCheck(Rule):
    """Refuses a templates Library the workers could not use (422, at the element)."""

    types: ClassVar[frozenset[str]] = frozenset({"Library"})

    async def before_write(self, writes: Sequence[Write]) -> None:
        for w in writes:
            if w.new is None or w.new.get("url") != LIBRARY_URL:
                continue
            found = problems(w.new)
            if found:
                raise FhirError.of(422, "business-rule", found[0][0], found[0][1])


def default_library() -> dict[str, Any]:
    """The built-in texts as a Library an admin can edit and PUT (the CLI prints it)."""
    content = [
        {
            "contentType": "text/plain; charset=utf-8",
            "language": language,
            "title": message,
            "data": base64.b64encode(text.encode()).decode(),
        }
        for language, texts in DEFAULTS.items()
        for message, text in texts.items()
    ]
    return {
        "resourceType": "Library",
        "id": "appointment-reminders",
        "url": LIBRARY_URL,
        "name": "AppointmentReminders",
        "title": "Texts of appointment reminders and replies",
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/library-type",
                    "code": "asset-collection",
                }
            ]
        },
        "content": content,
    }
