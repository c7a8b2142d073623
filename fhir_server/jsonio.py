"""FHIR JSON in and out.

Parsing uses the standard library on purpose: FHIR decimals keep their precision
("1.50" is not "1.5", datatypes.html#decimal) so they are read as ``Decimal``, duplicate
keys are an error rather than a silent loss, and NaN/Infinity are not JSON. Output goes
through orjson, writing Decimals back verbatim as JSON fragments.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from fhir_server.input_limits import (
    DEFAULT_LIMITS,
    TOO_MANY_DECIMALS,
    InputLimits,
    OversizedNumber,
    check_limits,
    number_within,
)
from fhir_server.outcome import bad_request


class DuplicateKeyError(ValueError):
    pass


class JsonDecimal(Decimal):
    """A Decimal that remembers its JSON text, so ``0.0000001`` is written back as
    ``0.0000001`` and ``1.0e2`` as ``1.0e2`` rather than str()'s ``1E-7`` / ``1.0E+2``."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> JsonDecimal:
        value = super().__new__(cls, text)
        value.text = text
        return value

    def __reduce__(self) -> tuple[type[JsonDecimal], tuple[str]]:
        return JsonDecimal, (self.text,)  # a copy keeps its JSON text


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(f"duplicate property {key!r}")
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decoder(limits: InputLimits) -> json.JSONDecoder:
    """A decoder for one body that converts only decimals within ``limits``: their text
    is checked first, since ``Decimal()`` or a later ``int()`` of a huge number is where
    the time would go (measured: no slower than converting unchecked). After
    ``max_decimals`` decimals the rest are not converted either (each conversion is a
    Python call, ~1.5 us: 2 MB of decimals took seconds), and check_limits reports the
    first of them. Integers need no hook: Python refuses to convert more than 4300
    digits (sys.int_info), and check_limits holds them to max_number_digits."""
    left = limits.max_decimals

    def parse_float(text: str) -> JsonDecimal | OversizedNumber:
        nonlocal left
        left -= 1
        if left < 0:
            return TOO_MANY_DECIMALS
        return JsonDecimal(text) if number_within(text, limits) else OversizedNumber(text)

    return json.JSONDecoder(
        parse_float=parse_float,
        parse_constant=_reject_constant,
        object_pairs_hook=_object_without_duplicates,
    )


def parse_json(
    body: bytes | str, what: str = "request body", limits: InputLimits = DEFAULT_LIMITS
) -> Any:
    """Parse client JSON; malformed input raises a 400 FhirError with a position, and
    JSON beyond ``limits`` a 400 (too-costly) with the path of the first excess."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise bad_request(f"The {what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = _decoder(limits).decode(text)
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"The {what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="structure",
        ) from None
    except RecursionError:
        message = f"The {what} nests deeper than {limits.max_depth} levels"
        raise bad_request(message, "$this", code="too-costly") from None
    except DuplicateKeyError as exc:
        raise bad_request(f"The {what} is not valid JSON: {exc}", code="structure") from None
    except ValueError as exc:  # NaN/Infinity, or an integer of more than 4300 digits
        code = "too-costly" if "digits" in str(exc) else "structure"
        raise bad_request(f"The {what} is not valid JSON: {exc}", code=code) from None
    check_limits(value, limits, what)
    return value


def load_stored(raw: bytes) -> Any:
    """Parse JSON this server wrote itself (trusted: no duplicate check)."""
    return json.loads(raw, parse_float=JsonDecimal)


def _default(obj: Any) -> Any:
    if isinstance(obj, JsonDecimal):
        return orjson.Fragment(obj.text)
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(obj: Any, pretty: bool = False) -> bytes:
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(obj, default=_default, option=option)
