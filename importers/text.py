"""Repairs of legacy text: latin1/cp1252-as-UTF-8 mojibake and stray whitespace."""

from __future__ import annotations

import contextlib
import re

# A UTF-8 lead byte (0xC2-0xF4) read as cp1252/latin1, then its continuation bytes.
_CONTINUATION = (
    "\u0080-\u00bf\u2018-\u203a\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
    "\u02c6\u02dc\u20ac\u2122"
)
_SEQUENCE = re.compile(f"[\u00c2-\u00f4][{_CONTINUATION}]{{1,3}}")
_MAC_ROMAN_LEAD = "\u221a"  # Mac Roman shows UTF-8's 0xC3 as a square root sign
_SPACES = re.compile(r"\s+")


def _repair_sequence(match: re.Match[str]) -> str:
    chunk = match.group()
    for codec in ("cp1252", "latin1"):
        try:
            return chunk.encode(codec).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return chunk


def repair_mojibake(text: str) -> str:
    """``JosÃ© NÃºÃ±ez`` -> ``José Núñez``: undo UTF-8 bytes shown as cp1252/latin1 one
    sequence at a time (text mixing both still comes out right), and whole-text Mac Roman
    (``Gesti√≥n``). A sequence that does not decode as UTF-8 stays as it is."""
    fixed = _SEQUENCE.sub(_repair_sequence, text)
    if _MAC_ROMAN_LEAD in fixed:
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            fixed = fixed.encode("mac_roman").decode("utf-8")
    return fixed


def clean(text: str) -> str | None:
    """Mojibake repaired, whitespace collapsed, None when nothing is left."""
    fixed = _SPACES.sub(" ", repair_mojibake(text)).strip()
    return fixed or None
