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
_INT_LIMIT = 10 ** (MAX_ADJUSTED + 1)
RANGE_TEXT = "numbers must lie within ±9.99…e6144, with no digit finer than 1e-6176"


def in_range(value: Decimal | int) -> bool:
    """Whether Decimal128 holds ``value`` (rounded to 34 digits if longer)."""
    if isinstance(value, int):
        return -_INT_LIMIT < value < _INT_LIMIT
    if not value.is_finite():
        return False
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return exponent >= MIN_EXPONENT and (not value or value.adjusted() <= MAX_ADJUSTED)


def bounded(value: Decimal) -> Decimal:
    """``value``, or the infinity on its side when its magnitude is beyond Decimal128:
    for the computed ends of a search range (a value near the limit widened by "ap")."""
    if value.is_finite() and value and value.adjusted() > MAX_ADJUSTED:
        return Decimal("Infinity") if value > 0 else Decimal("-Infinity")
    return value
