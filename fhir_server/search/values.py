"""Index values: the one definition of how each search parameter type is stored under
``sp`` (written by ``extract`` at write time) and matched (by ``compile`` at query time).

Under ``sp.<code>`` every parameter holds a list (absent when the resource has no value,
which is what ``:missing`` tests). By type:

- token: strings. A coding/identifier (system S, code C) gives ``C`` and ``S␟C`` (``␟``
  is U+001F, which no FHIR string may contain, so the forms cannot collide); without a
  system it gives ``C`` and ``␟C``. So ``C``, ``S|C``, ``|C`` are equality matches and
  ``S|`` an anchored prefix. Primitives (code, string, uri, id, ...; booleans as
  ``true``/``false``) and ContactPoint.value have no system: ``C`` and ``␟C``.
  ``sp.<code>:text`` holds the normalised Coding.display, CodeableConcept.text and
  Identifier.type.text for ``:text``; identifiers' type codings go to
  ``sp.<code>:of-type`` as ``TS␟TC␟value``.
- string: normalised text (accents stripped, case folded, spaces collapsed) for the
  default starts-with and ``:contains``; ``sp.<code>:exact`` holds the raw strings.
- uri: the raw strings (``:below``/``:above`` compare prefixes); a canonical
  ``url|version`` also gives ``url``.
- reference: ``Type/id`` (a relative or absolute reference to this server's type),
  plus the reference as written when it is absolute, plus ``Type/id/_history/v`` when
  versioned; an absolute reference to another server (known when the server's base URL
  is given to ``index_resource``) gives only the URL as written; canonicals give ``url``
  and ``url|version``. ``sp.<code>:identifier`` holds token strings of
  ``Reference.identifier``. A resource held inline (``Bundle.entry[0].resource``) gives
  ``Type/id``.
- date, number, quantity: ranges ``{"lo": x, "hi": y}``: the interval the stored value
  covers (a date's precision; a Period's start/end; a Range's low/high; a plain number
  or quantity has lo == hi). Dates are UTC datetimes (hi exclusive; an open Period end
  is DATE_MIN/DATE_MAX), numbers Decimal128 (an open Range end is -/+Infinity, and more
  than 34 significant digits are rounded). Quantities add ``"s"`` (system), ``"c"``
  (code) and ``"u"`` (unit) when present; Money gives its currency as ``"c"`` with
  ``"s"`` ``urn:iso:std:iso:4217``. A Timing gives one range over its outer limits.
- composite: ``[{"<component code>": [values as above], ...}]``, one dict per element
  the composite's expression selects, so components match on the same element.

Sort keys live under ``so.<code>``: ``{"a": lowest, "d": highest}`` (search.html#_sort:
ascending sorts by the lowest value, descending by the highest): the normalised string;
a token's code (no system); a date's lo/hi; a number's or quantity's lo/hi (Decimal128);
a uri; a reference as written. Composites have none.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, DecimalException
from functools import lru_cache
from typing import Any

from bson.decimal128 import Decimal128

from fhir_server.datetimes import stored_range

SEP = "\x1f"
# Open ends of periods and ranges: BSON dates span far wider than FHIR needs.
DATE_MIN = datetime(1, 1, 1, tzinfo=UTC)
DATE_MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
# Open ends of numeric ranges (Decimal128 orders them around every number).
NUMBER_MIN = Decimal("-Infinity")
NUMBER_MAX = Decimal("Infinity")
# Decimal128's own limits, rounding instead of raising on excess digits.
_DECIMAL128 = Context(prec=34, Emax=6144, Emin=-6143, rounding=ROUND_HALF_EVEN, clamp=1)
_EXP_BIAS, _EXP_MIN, _EXP_MAX = 6176, -6176, 6111
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=65536)
def normalize_text(value: str) -> str:
    """Accent- and case-insensitive form: "Núñez" and "NUNEZ" both give "nunez".
    (Memoised: names, displays and texts repeat across resources.)"""
    if value.isascii():  # the same result, without the Unicode passes
        return " ".join(value.lower().split())
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACES.sub(" ", stripped.casefold()).strip()


def token_keys(system: str | None, code: str) -> list[str]:
    return [code, f"{system or ''}{SEP}{code}"]


def token_system_prefix(system: str) -> str:
    return f"{system}{SEP}"


def decimal128(value: Decimal | int | float) -> Decimal128:
    """The Decimal128 of a number, rounded to its 34 digits when longer. Finite values
    are encoded here directly: bson's own encoder is ~8x slower (a loop per bit)."""
    if isinstance(value, float):
        d = Decimal(str(value))
    else:
        d = value if isinstance(value, Decimal) else Decimal(value)
    if not d.is_finite():
        return Decimal128(d)
    sign, digits, exponent = d.as_tuple()
    if len(digits) > 34 or not _EXP_MIN <= int(exponent) <= _EXP_MAX:
        try:
            return Decimal128(d)
        except DecimalException:  # more digits or range than Decimal128 holds
            return Decimal128(_DECIMAL128.create_decimal(d))
    # the coefficient: < 10**34 < 2**113, so the BID needs no special form
    coefficient = abs(int(d.scaleb(-int(exponent), _DECIMAL128)))
    high = (sign << 63) | ((int(exponent) + _EXP_BIAS) << 49) | (coefficient >> 64)
    return Decimal128((high, coefficient & 0xFFFFFFFFFFFFFFFF))  # type: ignore[arg-type]


def date_value(value: str) -> dict[str, datetime] | None:
    """A FHIR date/dateTime/instant as its {lo, hi} range (hi exclusive); None if bad."""
    bounds = _date_range(value)
    return {"lo": bounds[0], "hi": bounds[1]} if bounds else None


@lru_cache(maxsize=16384)
def _date_range(value: str) -> tuple[datetime, datetime] | None:
    """stored_range, memoised: resources written together repeat their dates."""
    try:
        return stored_range(value)
    except (ValueError, OverflowError):
        return None


def period_value(start: str | None, end: str | None) -> dict[str, datetime] | None:
    lo_range = date_value(start) if start else None
    hi_range = date_value(end) if end else None
    lo = lo_range["lo"] if lo_range else DATE_MIN
    hi = hi_range["hi"] if hi_range else DATE_MAX
    if lo == DATE_MIN and hi == DATE_MAX:
        return None
    return {"lo": lo, "hi": hi}


def number_value(value: Decimal | int | float) -> dict[str, Decimal128]:
    d = decimal128(value)
    return {"lo": d, "hi": d}


def reference_keys(reference: str, base_url: str | None = None) -> list[str]:
    """Index strings for a Reference.reference (see module docstring). Given this
    server's ``base_url``, an absolute reference elsewhere is only its URL; without it,
    any absolute ``.../Type/id`` also gives ``Type/id``."""
    if not reference or reference.startswith("#"):
        return []
    if base_url and "://" in reference and not reference.startswith(base_url.rstrip("/") + "/"):
        return [reference]
    keys = [reference]
    parts = reference.split("?", 1)[0].rstrip("/").split("/")
    if "_history" in parts:
        i = parts.index("_history")
        if i >= 2 and i + 1 < len(parts):
            typed = f"{parts[i - 2]}/{parts[i - 1]}"
            keys += [typed, f"{typed}/_history/{parts[i + 1]}"]
    elif len(parts) >= 2 and parts[-2][:1].isupper():
        keys.append(f"{parts[-2]}/{parts[-1]}")
    return sorted({k for k in keys if k})


def canonical_keys(url: str) -> list[str]:
    base, _, version = url.partition("|")
    return [base, url] if version else [base]


def sort_key(value: Any) -> tuple[Any, Any] | None:
    """(lowest, highest) orderable form of one stored index value."""
    if isinstance(value, dict):
        if "lo" in value:
            return value["lo"], value["hi"]
        return None
    return value, value
