"""Whole numbers read from URLs and headers: _count, version ids, ETags, Content-Length.

``str.isdigit()`` holds for "²", which ``int()`` refuses, and ``int()`` refuses more than
4,300 digits too: either was a 500. Here only ASCII digits count, and a value of more
than 18 digits saturates at 10**18, beyond any count or version the server holds (and
within MongoDB's 64-bit integers), so it is compared and answered as what it is: larger.
"""

from __future__ import annotations

SATURATED = 10**18


def whole_number(text: str) -> int | None:
    """The value of ``text`` if it is ASCII digits only (saturating at SATURATED);
    None for anything else."""
    if not (text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0")
    return int(significant or "0") if len(significant) <= 18 else SATURATED
