"""Checks of primitive values as FHIR JSON writes them (json.html#primitive).

fhir.resources coerces ("true" passes as a boolean, 1.0 as an integer), so the JSON type
is checked here: boolean is true/false, integer types are JSON integers in range (jsonio
parses 1.0 as Decimal, so it fails), decimal is a number, everything else is a string,
non-empty, not only whitespace, and matching the R4 regex of its type. Regexes use ASCII
semantics: in the XML Schema regexes of the spec, \\s and \\S are ASCII-only.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

from fhir_server.decimals import JSON_INT_TEXT, RANGE_TEXT, in_range

# (issue-type code, diagnostics) for a bad value, None for a good one.
PrimitiveCheck = Callable[[Any], tuple[str, str] | None]

INT_RANGES = {
    "integer": (-(2**31), 2**31 - 1),
    "positiveInt": (1, 2**31 - 1),
    "unsignedInt": (0, 2**31 - 1),
}
MAX_STRING = 1024 * 1024  # string.html: "strings SHALL NOT exceed 1MB"
# Types whose values start with a calendar date; their regexes allow any day 01-31.
DATED = frozenset({"date", "dateTime", "instant"})
FULL_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})", re.ASCII)
ASCII_SPACE = " \t\n\r\x0b\x0c"  # what \\s matches in an ASCII regex
# Types whose regex only says "not empty", which the emptiness check already covers.
FREE_TEXT = frozenset({"string", "markdown"})
# narrative.html#xhtml: the root is a <div> in the XHTML namespace (txt-1/txt-2, and the
# rest of the XHTML rules, are not checked).
XHTML_NS = "http://www.w3.org/1999/xhtml"
XHTML_ROOT = (
    r"""\s*<div\b[^>]*\bxmlns\s*=\s*["']"""
    + re.escape(XHTML_NS)
    + r"""["'][^>]*(/>|>.*</div>)\s*"""
)


def json_kind(value: Any) -> str:
    """How a value looks in JSON, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def article(word: str) -> str:
    """'An integer', 'A uri': the type name with its article, capitalised."""
    return ("An " if word[:1] in "aeio" or word == "unsignedInt" else "A ") + word


def shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def check_boolean(value: Any) -> tuple[str, str] | None:
    if value is True or value is False:
        return None
    return "structure", f"A boolean must be JSON true or false, not {json_kind(value)}"


def integer_check(type_name: str) -> PrimitiveCheck:
    low, high = INT_RANGES[type_name]

    def check(value: Any) -> tuple[str, str] | None:
        if type(value) is not int:
            kind = json_kind(value)
            return "structure", f"{article(type_name)} must be a JSON integer, not {kind}"
        if value < low or value > high:
            return "value", f"{value} is out of range for {type_name} ({low}..{high})"
        return None

    return check


def check_decimal(value: Any) -> tuple[str, str] | None:
    kind = type(value)
    if kind is int:
        return None if in_range(value) else ("value", f"Out of range: {JSON_INT_TEXT}")
    if isinstance(value, Decimal):  # jsonio's JsonDecimal is a subclass
        finite = value.is_finite()
    elif kind is float:
        finite = math.isfinite(value)
    else:
        return "structure", f"A decimal must be a JSON number, not {json_kind(value)}"
    if not finite:
        return "value", f"A decimal must be a finite number, not {value}"
    if isinstance(value, Decimal) and not in_range(value):
        # 1e999999999 is a valid JSON number, but could be neither stored nor indexed
        return "value", f"A decimal is out of range: {RANGE_TEXT}"
    return None


class Matcher(Protocol):
    def fullmatch(self, value: str) -> object | None: ...


class XhtmlRoot:
    """``XHTML_ROOT`` without backtracking: the regex retried ``>.*</div>`` after every
    xmlns attribute, quadratic in a start tag of many (300 KB took 14 s)."""

    START = re.compile(r"\s*<div\b([^>]*)>", re.ASCII)
    XMLNS = re.compile(r"""\bxmlns\s*=\s*["']""" + re.escape(XHTML_NS) + """["']""", re.ASCII)

    def fullmatch(self, value: str) -> object | None:
        start = self.START.match(value)
        if start is None:
            return None
        attributes, rest = start.group(1), value[start.end() :]
        if self.XMLNS.search(attributes) is None:
            return None
        if rest.rstrip(ASCII_SPACE).endswith("</div>"):
            return start
        if attributes.endswith("/") and not rest.strip(ASCII_SPACE):
            return start  # <div xmlns="..."/>
        return None


# The base64Binary regex ``(\s*([0-9a-zA-Z\+/=]){4}\s*)+`` backtracks exponentially (30
# blocks and a bad last character took minutes); this one means the same (blocks of 4,
# whitespace only between blocks) and its possessive quantifiers never backtrack.
BASE64 = r"\s*+(?:[0-9a-zA-Z+/=]{4})++(?:\s++(?:[0-9a-zA-Z+/=]{4})++)*+\s*+"


def string_check(type_name: str, regex: str) -> PrimitiveCheck:
    pattern: Matcher | None
    if type_name == "xhtml":
        pattern = XhtmlRoot()
    elif type_name == "base64Binary":
        pattern = re.compile(BASE64, re.ASCII)
    else:
        pattern = None if type_name in FREE_TEXT or not regex else re.compile(regex, re.ASCII)
    max_length = MAX_STRING if type_name == "string" else None
    invalid = "is not a <div> in the XHTML namespace" if type_name == "xhtml" else ""
    invalid = invalid or f"is not a valid {type_name}"
    dated = type_name in DATED

    def check(value: Any) -> tuple[str, str] | None:
        if type(value) is not str:
            kind = json_kind(value)
            return "structure", f"{article(type_name)} must be a JSON string, not {kind}"
        if not value or value.isspace():
            return "value", f"{article(type_name)} must not be empty or only whitespace"
        if "\x00" in value:  # XML cannot carry it, nor MongoDB a regex on it (api/nul.py)
            return "value", f"{article(type_name)} must not contain a NUL character (U+0000)"
        if pattern is not None and pattern.fullmatch(value) is None:
            return "value", f"{shown(value)} {invalid}"
        if dated and not on_calendar(value):
            return "value", f"{shown(value)} is not a calendar date ({type_name})"
        if max_length is not None and len(value) > max_length:
            return "value", f"A string must not exceed {max_length} characters"
        return None

    return check


def on_calendar(value: str) -> bool:
    """Whether a date that passed its regex names a real day (datatypes.html#date: "SHALL
    be valid dates"): the R4 regexes accept 2021-02-29 and 2021-04-31."""
    full = FULL_DATE.match(value)
    if full is None:  # a year or year-month: the regex already bounds the month
        return True
    year, month, day = (int(part) for part in full.groups())
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]


def primitive_check(type_name: str, regex: str) -> PrimitiveCheck:
    if type_name == "boolean":
        return check_boolean
    if type_name in INT_RANGES:
        return integer_check(type_name)
    if type_name == "decimal":
        return check_decimal
    return string_check(type_name, regex)
