"""Amounts in US dollars, computed with ``Decimal`` only (never a float: 0.1 + 0.2 is
not 0.3 in binary). Amounts read from resources arrive as ``Decimal`` already
(jsonio parses every JSON number with a fraction as one).

Rounding: to the cent, half up (``ROUND_HALF_UP``: 0.125 -> 0.13), which is how the
SRI's electronic invoice (ficha técnica de comprobantes electrónicos) rounds the
amounts of each line; half-even ("banker's") rounding would give 0.12.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from profiles.clinics import IVA, SRI_TAX

CURRENCY = "USD"
CENT = Decimal("0.01")
ZERO = Decimal("0.00")
TAX_CODE = {"coding": [{"system": SRI_TAX, "code": IVA, "display": "IVA"}]}


def cents(value: Decimal) -> Decimal:
    """``value`` rounded to the cent, half up."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def money(value: Decimal) -> dict[str, Any]:
    return {"value": cents(value), "currency": CURRENCY}


def decimal_of(value: Any) -> Decimal | None:
    """A JSON number as a Decimal (an int too); None for anything else (a bool, a
    string, a float that jsonio never produces)."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    try:
        return Decimal(value)
    except InvalidOperation:  # pragma: no cover - jsonio gives finite numbers only
        return None


def amount_of(value: Any) -> Decimal | None:
    """The value of a Money (its currency must be USD or absent), or None."""
    if not isinstance(value, dict):
        return None
    if value.get("currency", CURRENCY) != CURRENCY:
        return None
    return decimal_of(value.get("value"))


def is_iva(component: dict[str, Any]) -> bool:
    """Is this priceComponent the IVA (type tax, code 2 of the SRI's tax codes)?"""
    if component.get("type") != "tax":
        return False
    codings = (component.get("code") or {}).get("coding") or []
    return any(
        isinstance(c, dict) and c.get("system") == SRI_TAX and c.get("code") == IVA for c in codings
    )
