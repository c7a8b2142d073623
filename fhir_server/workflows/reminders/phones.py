"""Phone numbers in E.164, and the index that finds patients by number.

Patients write their numbers in every form ("099 123 4567", "+593 99 123 4567",
"(09) 9123-4567"), so a reply from "whatsapp:+593991234567" cannot be found with a
plain search. The rule ``PatientPhones`` keeps, in each Patient write's own
transaction, the patient's numbers in E.164 (``patient_phones``); a reply looks its
sender up there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel, ReplaceOne

from fhir_server.jsonio import load_stored
from fhir_server.storage import Storage
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.reminders.plan import META

PHONES = "patient_phones"
PHONE_SYSTEMS = ("phone", "sms", "other")
_NOT_DIGITS = re.compile(r"\D")


def e164(raw: str, country: str) -> str | None:
    """``raw`` as +<country><number>, or None when it is not a phone number. A national
    number (a leading trunk 0, as Ecuador's 09...) gets ``country``; 00 is the
    international prefix."""
    s = raw.strip()
    for prefix in ("whatsapp:", "tel:", "sms:"):
        if s.lower().startswith(prefix):
            s = s[len(prefix) :]
    if "@" in s or any(c.isalpha() for c in s):
        return None
    digits = _NOT_DIGITS.sub("", s)
    if not digits:
        return None
    if s.lstrip().startswith("+"):
        number = digits
    elif digits.startswith("00"):
        number = digits[2:]
    elif digits.startswith("0"):
        number = country + digits[1:]
    elif digits.startswith(country) and len(digits) - len(country) >= 8:
        number = digits
    else:
        number = country + digits
    if not 8 <= len(number) <= 15 or number.startswith("0"):
        return None
    return "+" + number


def phone_values(patient: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The patient's telecom entries that may hold a phone number."""
    for point in patient.get("telecom") or ():
        if (
            isinstance(point, dict)
            and point.get("system") in PHONE_SYSTEMS
            and isinstance(point.get("value"), str)
        ):
            yield point


def numbers_of(patient: dict[str, Any] | None, country: str) -> list[str]:
    if patient is None:
        return []
    found = {e164(p["value"], country) for p in phone_values(patient)}
    return sorted(n for n in found if n)


class PatientPhones(Rule):
    """Keeps ``patient_phones`` ({_id: patient id, numbers: [E.164]}) in step."""

    types: ClassVar[frozenset[str]] = frozenset({"Patient"})
    collections: ClassVar[dict[str, list[IndexModel]]] = {
        PHONES: [IndexModel([("numbers", ASCENDING)], name="numbers")]
    }

    def __init__(self, country: str) -> None:
        self.country = country

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        ops = [
            ReplaceOne({"_id": w.id}, {"numbers": numbers_of(w.new, self.country)}, upsert=True)
            for w in writes
            if numbers_of(w.previous, self.country) != numbers_of(w.new, self.country)
            or w.previous is None
        ]
        if ops:
            await tx.db[PHONES].bulk_write(ops, session=tx.session)


async def backfill(storage: Storage, country: str) -> int:
    """Index the numbers of patients stored before the index existed (once per
    database: a marker in ``reminder_meta``)."""
    meta = storage.db[META]
    if await meta.find_one({"_id": "phones"}) is not None:
        return 0
    ops: list[ReplaceOne[dict[str, Any]]] = []
    async for doc in storage.current("Patient").find({"del": False}, {"raw": 1}):
        numbers = numbers_of(load_stored(doc["raw"]), country)
        if numbers:
            ops.append(ReplaceOne({"_id": doc["_id"]}, {"numbers": numbers}, upsert=True))
    for i in range(0, len(ops), 500):
        await storage.db[PHONES].bulk_write(ops[i : i + 500], ordered=False)
    await meta.update_one({"_id": "phones"}, {"$set": {"done": True}}, upsert=True)
    return len(ops)


async def patients_with(storage: Storage, number: str) -> list[str]:
    """The ids of the patients with this E.164 number."""
    cursor = storage.db[PHONES].find({"numbers": number}, {"_id": 1})
    return sorted([d["_id"] async for d in cursor])
