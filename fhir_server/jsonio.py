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


_decoder = json.JSONDecoder(
    parse_float=JsonDecimal,
    parse_constant=_reject_constant,
    object_pairs_hook=_object_without_duplicates,
)


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


def parse_json(body: bytes | str, what: str = "request body") -> Any:
    """Parse client JSON; malformed input raises a 400 FhirError with a position.

    Strings with an unpaired surrogate escape (``"\\ud800"``) are refused: RFC 8259
    section 8.2 leaves them unpredictable, they are no Unicode text FHIR can hold
    (datatypes.html#string), and they cannot be written back as UTF-8."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise bad_request(f"The {what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = _decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"The {what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="structure",
        ) from None
    except (DuplicateKeyError, ValueError, RecursionError) as exc:
        raise bad_request(f"The {what} is not valid JSON: {exc}", code="structure") from None
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
