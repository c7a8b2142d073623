"""FHIR JSON in and out.

Parsing uses the standard library on purpose: FHIR decimals keep their precision
("1.50" is not "1.5", datatypes.html#decimal) so they are read as ``Decimal``, duplicate
keys are an error rather than a silent loss, and NaN/Infinity are not JSON. Output goes
through orjson, writing Decimals back verbatim as JSON fragments.
"""

from __future__ import annotations

import json
import re
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


class _Decoder:
    """A decoder for one body that converts only numbers within ``limits``: their text
    is checked first, since ``int()``/``Decimal()`` of a huge number (or pydantic's
    ``int()`` of a huge Decimal later) is where the time would go. After
    ``max_decimals`` decimals the rest are not converted either (each conversion is a
    Python call, ~1.5 us: 2 MB of decimals took seconds). What is not converted is kept
    as an ``OversizedNumber``, and ``flagged`` tells check_limits to look for it.

    The integer hook costs ~0.4 us per integer (few in FHIR), and it also means that a
    long array of integers no longer holds the GIL from its start to its end in the C
    scanner (a million of them: ~100 ms in one piece)."""

    def __init__(self, limits: InputLimits) -> None:
        self.limits = limits
        self.left = limits.max_decimals
        self.flagged = False
        self.decoder = json.JSONDecoder(
            parse_float=self.parse_float,
            parse_int=self.parse_int,
            parse_constant=_reject_constant,
            object_pairs_hook=_object_without_duplicates,
        )

    def parse_float(self, text: str) -> JsonDecimal | OversizedNumber:
        self.left -= 1
        if self.left >= 0 and number_within(text, self.limits):
            return JsonDecimal(text)
        self.flagged = True
        return TOO_MANY_DECIMALS if self.left < 0 else OversizedNumber(text)

    def parse_int(self, text: str) -> int | OversizedNumber:
        if len(text) - (text[0] == "-") <= self.limits.max_number_digits:
            return int(text)
        self.flagged = True
        return OversizedNumber(text)


# A \uD800-\uDFFF escape: JSON lets one stand alone, Unicode (and so UTF-8 output) does not.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unpaired_surrogate(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) holding a lone surrogate, else None. The
    decoder joins a valid high+low pair into one character, so any left is unpaired."""
    if isinstance(value, str):
        return path or "$" if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if _SURROGATE.search(key):
                return where
            found = _unpaired_surrogate(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _unpaired_surrogate(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def parse_json(
    body: bytes | str, what: str = "request body", limits: InputLimits = DEFAULT_LIMITS
) -> Any:
    """Parse client JSON; malformed input raises a 400 FhirError with a position, and
    JSON beyond ``limits`` a 400 (too-costly) with the path of the first excess.

    Strings with an unpaired surrogate escape (``"\\ud800"``) are refused: RFC 8259
    section 8.2 leaves them unpredictable, they are no Unicode text FHIR can hold
    (datatypes.html#string), and they cannot be written back as UTF-8."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        message = f"The {what} is not valid UTF-8 (byte {exc.start})"
        raise bad_request(message, "$this") from None
    try:
        decoder = _Decoder(limits)
        value = decoder.decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"The {what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            "$this",
            code="structure",
        ) from None
    except RecursionError:
        message = f"The {what} nests deeper than {limits.max_depth} levels"
        raise bad_request(message, "$this", code="too-costly") from None
    except ValueError as exc:  # a duplicate key, NaN, Infinity
        message = f"The {what} is not valid JSON: {exc}"
        raise bad_request(message, "$this", code="structure") from None
    scalars = decoder.flagged or len(text) > limits.max_string_chars
    containers = text.count("[") + text.count("{")
    if scalars or containers > limits.max_depth or len(text) > 2 * limits.max_array_length:
        check_limits(value, limits, what, scalars)
    if _SURROGATE_ESCAPE.search(text) or _SURROGATE.search(text):
        where = _unpaired_surrogate(value)
        if where is not None:
            raise bad_request(
                f"The {what} has a string with an unpaired UTF-16 surrogate at {where}",
                where,
                code="structure",
            )
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
