"""What a stock movement is about: the product (a medicine, whatever its batch), the
batch (lot and expiry) and the place, read from the resources that move stock.

R4 has no stock item: ``Medication.batch`` (0..1) makes a Medication batch-specific,
so a receipt names the batch through the Medication it delivers (inline as a
contained resource, or stored), and a dispense names the product (or one batch). The
*product key* links them: the Medication's first coding ``system|code``, or its
folded text when it has no coding, so the batch Medications of a product and the
product's own Medication (the one prescriptions name) share it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.storage.store import Session, Storage
from fhir_server.workflows.scheduling.booking import local_reference

NO_EXPIRY = "9999-12-31"  # sorts a batch without expiry after every dated one


@dataclass(frozen=True, slots=True)
class Item:
    """A medicine as a movement names it: its product key, the batch when the
    Medication is batch-specific, and the Medication to show in answers."""

    product: str
    display: str
    medication: str | None  # "Medication/<id>" when a stored Medication is named
    lot: str | None
    expiry: str | None  # YYYY-MM-DD


def product_key(code: Any) -> str | None:
    """The product key of a CodeableConcept (see the module docstring)."""
    if not isinstance(code, dict):
        return None
    for coding in code.get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") and coding.get("code"):
            return f"{coding['system']}|{coding['code']}"
    text = code.get("text")
    if isinstance(text, str) and text.strip():
        return "text:" + fold(text)
    return None


def fold(text: str) -> str:
    """Case, accents and spacing do not tell two medicine names apart."""
    plain = unicodedata.normalize("NFKD", text).casefold()
    return " ".join("".join(ch for ch in plain if not unicodedata.combining(ch)).split())


def display(code: Any) -> str:
    if not isinstance(code, dict):
        return ""
    if isinstance(code.get("text"), str):
        return str(code["text"])
    for coding in code.get("coding") or []:
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return ""


def of_medication(med: dict[str, Any], reference: str | None, where: str) -> Item:
    """The Item a Medication resource stands for."""
    product = product_key(med.get("code"))
    if product is None:
        raise FhirError.of(
            422,
            "business-rule",
            "The Medication has no code or text to keep its stock by",
            where,
        )
    given = med.get("batch")
    batch: dict[str, Any] = given if isinstance(given, dict) else {}
    lot = batch.get("lotNumber") if isinstance(batch.get("lotNumber"), str) else None
    expiry = batch.get("expirationDate")
    return Item(
        product=product,
        display=display(med.get("code")),
        medication=reference,
        lot=lot,
        expiry=str(expiry)[:10] if isinstance(expiry, str) else None,
    )


async def resolve(
    host: dict[str, Any],
    concept: Any,
    reference: Any,
    where: str,
    storage: Storage,
    session: Session,
) -> Item:
    """The Item of a ``*CodeableConcept`` / ``*Reference`` pair of ``host``: a code, a
    contained Medication (``#id``) or a stored one (422 when it is none of these)."""
    if concept is not None:
        return of_medication({"code": concept}, None, f"{where}CodeableConcept")
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if isinstance(ref, str) and ref.startswith("#"):
        for contained in host.get("contained") or []:
            if (
                isinstance(contained, dict)
                and contained.get("id") == ref[1:]
                and contained.get("resourceType") == "Medication"
            ):
                return of_medication(contained, None, f"{where}Reference")
    target = local_reference(reference, ("Medication",))
    if target is not None:
        current = await storage.read_current("Medication", target.split("/")[1], session)
        if current is not None and current.raw is not None:
            return of_medication(load_stored(current.raw), target, f"{where}Reference")
    raise FhirError.of(
        422,
        "business-rule",
        "The medication must be a code or a Medication stored here (or contained)",
        f"{where}Reference",
    )


def quantity(value: Any, where: str) -> Decimal:
    """A Quantity's value as an exact Decimal (422 when there is none)."""
    raw = value.get("value") if isinstance(value, dict) else None
    try:
        if raw is None or isinstance(raw, bool):
            raise InvalidOperation
        return Decimal(str(raw))
    except InvalidOperation:
        raise FhirError.of(
            422, "business-rule", "A stock movement needs a quantity", f"{where}.value"
        ) from None


def location(value: Any) -> str | None:
    return local_reference(value, ("Location",))


def plain(number: Decimal) -> int | Decimal:
    """A Decimal as the JSON number it is (an integer when whole)."""
    if number == number.to_integral_value():
        return int(number)
    return number
