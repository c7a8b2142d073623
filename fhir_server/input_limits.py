"""Per-request bounds on client JSON, so that no single request can make the server do
unbounded work: nesting depth, array length, string length, number size.

Numbers are the dangerous case: ``1e100000000`` is 11 bytes, but turning it into an
integer (as pydantic does for an ``integer`` element) takes minutes. The JSON reader
therefore never converts a number whose digits or exponent exceed the limits: it keeps
its text in an ``OversizedNumber`` and ``check_limits`` reports it with its path. RFC
8259 section 6 allows exactly this: "This specification allows implementations to set
limits on the range and precision of numbers accepted."
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.outcome import FhirError, Issue


@dataclass(frozen=True, slots=True)
class InputLimits:
    """The bounds one request's JSON must keep (Settings.json_* fields)."""

    max_depth: int = 128
    max_array_length: int = 100_000
    max_string_chars: int = 8 * 1024 * 1024
    max_number_digits: int = 64
    max_number_exponent: int = 308
    max_decimals: int = 100_000


DEFAULT_LIMITS = InputLimits()


class OversizedNumber:
    """A JSON number beyond the limits, kept as text: never converted."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"OversizedNumber({shown_number(self.text)})"


# Every decimal after the first max_decimals of a body (the text is not kept).
TOO_MANY_DECIMALS = OversizedNumber("")


def shown_number(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"


def number_within(text: str, limits: InputLimits) -> bool:
    """Whether a JSON number's text has at most max_number_digits digits and an exponent
    of at most max_number_exponent (in size), decided on the text alone."""
    mantissa, _, exponent = text.lower().partition("e")
    digits = len(mantissa) - (mantissa[:1] == "-") - ("." in mantissa)
    if digits > limits.max_number_digits:
        return False
    if exponent:
        exponent = exponent.lstrip("+-").lstrip("0")
        # compare as text first: a long exponent must not be converted either
        if len(exponent) > len(str(limits.max_number_exponent)):
            return False
        if exponent and int(exponent) > limits.max_number_exponent:
            return False
    return True


def check_limits(
    value: Any, limits: InputLimits, what: str = "request body", scalars: bool = True
) -> None:
    """Raise 400 (too-costly) with the path of the first value beyond ``limits``.

    One iterative pass over the parsed JSON (no recursion, linear in its size).
    ``scalars`` False: containers only (depth, array length), for a body whose strings
    are all short enough (the body is) and whose numbers the reader found in bounds,
    which skips most of the values (the full pass cost ~5% of ingest)."""
    root = value.get("resourceType") if type(value) is dict else None
    root_name = root if isinstance(root, str) and root.isalnum() else "$this"
    max_depth, max_len = limits.max_depth, limits.max_array_length
    # (value, depth, trail); trail is (parent trail, key) and becomes a path only on error
    stack: list[tuple[Any, int, Any]] = [(value, 1, None)]
    pop, push = stack.pop, stack.append
    while stack:
        v, depth, trail = pop()
        kind = type(v)
        if kind is dict:
            if depth > max_depth:
                _fail(f"The {what} nests deeper than {max_depth} levels", root_name, trail)
            for key, item in v.items():
                t = type(item)
                if t is dict or t is list:
                    push((item, depth + 1, (trail, key)))
                elif scalars:
                    _scalar(item, limits, what, root_name, (trail, key))
        elif kind is list:
            if depth > max_depth:
                _fail(f"The {what} nests deeper than {max_depth} levels", root_name, trail)
            if len(v) > max_len:
                message = f"An array of {len(v)} items exceeds the limit of {max_len}"
                _fail(message, root_name, trail)
            for i, item in enumerate(v):
                t = type(item)
                if t is dict or t is list:
                    push((item, depth + 1, (trail, i)))
                elif scalars:
                    _scalar(item, limits, what, root_name, (trail, i))
        elif scalars:
            _scalar(v, limits, what, root_name, trail)


def _scalar(v: Any, limits: InputLimits, what: str, root: str, trail: Any) -> None:
    kind = type(v)
    if kind is str:
        if len(v) > limits.max_string_chars:
            message = (
                f"A string of {len(v)} characters exceeds the limit of {limits.max_string_chars}"
            )
            _fail(message, root, trail)
    elif v is TOO_MANY_DECIMALS:
        _fail(f"The {what} holds more than {limits.max_decimals} decimal numbers", root, trail)
    elif kind is OversizedNumber:
        message = (
            f"The number {shown_number(v.text)} exceeds the limits of this server "
            f"({limits.max_number_digits} digits, exponents up to "
            f"{limits.max_number_exponent})"
        )
        _fail(message, root, trail)


def _fail(message: str, root: str, trail: Any) -> None:
    raise FhirError(400, [Issue("too-costly", message, expression=(path_of(root, trail),))])


def path_of(root: str, trail: Any) -> str:
    """A FHIRPath-like location ("Patient.extension[3].url") of a value in the JSON."""
    parts: list[str] = []
    while trail is not None:
        trail, key = trail
        parts.append(f"[{key}]" if type(key) is int else f".{key}")
    return root + "".join(reversed(parts))
