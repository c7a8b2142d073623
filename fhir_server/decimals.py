"""The range of numbers the server accepts: what MongoDB's Decimal128, which stores and
compares every indexed number, can hold. FHIR puts no bound on a decimal
(datatypes.html#decimal), but a value beyond this could be neither indexed nor searched,
and Python's decimal arithmetic on exponents like 1e999999999 raises, so such values are
refused where they are read: in resources (validation) and in search parameters."""

from __future__ import annotations

from decimal import Decimal

# Decimal128 (IEEE 754-2008 decimal128): magnitudes below 10**6145, and no digit finer
# than 10**-6176 (its smallest quantum). Excess significant digits are only rounded.
MAX_ADJUSTED = 6144
MIN_EXPONENT = -6176
RANGE_TEXT = "numbers must lie within ±9.99…e6144, with no digit finer than 1e-6176"
# A number written as a JSON integer is kept as one, and the JSON writer (orjson) holds
# integers of 64 bits: larger ones must be written with a fraction or an exponent.
JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**64 - 1
JSON_INT_TEXT = (
    "a decimal written as an integer must lie within -2^63..2^64-1; "
    "write a larger one with an exponent (1e20)"
)


def in_range(value: Decimal | int) -> bool:
    """Whether Decimal128 holds ``value`` (rounded to 34 digits if longer) and, for an
    integer, the JSON writer too."""
    if isinstance(value, int):
        return JSON_INT_MIN <= value <= JSON_INT_MAX
    if not value.is_finite():
        return False
    text = getattr(value, "text", None)  # jsonio's JsonDecimal keeps its JSON text
    if text is not None and len(text) <= 64:
        # fewer than 64 digits: the exponent is at most 64 below the adjusted one, so
        # this decides without as_tuple(), which costs 4x the rest (ingest reads many)
        adjusted = value.adjusted()
        if MIN_EXPONENT + 64 <= adjusted <= MAX_ADJUSTED:
            return True
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    # A zero's adjusted exponent is its exponent: "0e6146" is refused too, since its
    # implied range (half its last digit, search.html#number) is beyond Decimal128.
    return exponent >= MIN_EXPONENT and value.adjusted() <= MAX_ADJUSTED


def bounded(value: Decimal) -> Decimal:
    """``value``, or the infinity on its side when its magnitude is beyond Decimal128:
    for the computed ends of a search range (a value near the limit widened by "ap")."""
    if value.is_finite() and value and value.adjusted() > MAX_ADJUSTED:
        return Decimal("Infinity") if value > 0 else Decimal("-Infinity")
    return value
