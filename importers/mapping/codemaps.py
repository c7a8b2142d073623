"""Code maps: what the values of a legacy coded column mean in FHIR.

Legacy statuses were typed by hand for years: ``' Programada.'``, ``PROGRAMADA`` and
``programada`` are one value to the clinic, so keys are compared folded (``fold``). A
map may start from a built-in vocabulary (``$synonyms: appointment-status``, from
synonyms.yaml) holding the Spanish and English words clinics use for each FHIR code; its
own entries come first. ``$default`` is the value for anything else, only where the
mapping's author writes one (and each use is reported as a warning).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

DEFAULT = "$default"
SYNONYMS = "$synonyms"
_SIGN_AT_END = re.compile(r"(?<=\w)[\s(]*([+-])[\s)]*$")


class CodeMapError(ValueError):
    """A code map that cannot be used as written (the mapping's error names where)."""


def fold(value: Any) -> str:
    """The comparison key of a code: case, accents, spaces and punctuation do not count
    (``' No asistió.'`` = ``NO_ASISTIO`` = ``noasistio``). A sign ends a blood group
    (``A+``, ``O Rh(-)``), so a final ``+``/``-`` and any ``+`` are read as words."""
    text = unicodedata.normalize("NFKD", str(value)).casefold().strip()
    text = _SIGN_AT_END.sub(lambda m: " pos" if m.group(1) == "+" else " neg", text)
    text = text.replace("+", " pos ")
    return "".join(ch for ch in text if ch.isalnum())  # combining accents are not alnum


@cache
def vocabularies() -> dict[str, dict[str, str]]:
    """The built-in vocabularies: folded word -> FHIR code, per vocabulary name."""
    raw = yaml.safe_load(resources.files(__package__).joinpath("synonyms.yaml").read_text("utf-8"))
    out: dict[str, dict[str, str]] = {}
    for name, codes in raw.items():
        table: dict[str, str] = {}
        for code, words in codes.items():
            for word in [code, *words]:
                _put(table, word, str(code), f"synonyms {name}")
        out[name] = table
    return out


def _put(table: dict[str, Any], key: Any, value: Any, where: str) -> None:
    folded = fold(key)
    if not folded:
        raise CodeMapError(f"{where}: key {key!r} is only spaces and punctuation")
    if folded in table and table[folded] != value:
        raise CodeMapError(
            f"{where}: {key!r} is the same key as another entry (compared without case, "
            f"accents, spaces and punctuation) with a different value: "
            f"{table[folded]!r} and {value!r}"
        )
    table[folded] = value


@dataclass(slots=True)
class CodeMap:
    """One code map, ready for lookups."""

    name: str
    entries: dict[str, Any] = field(default_factory=dict)  # folded key -> FHIR value
    default: Any = None
    synonyms: str | None = None

    def get(self, value: Any) -> Any:
        return self.entries.get(fold(value))


def code_map(name: str, table: dict[str, Any]) -> CodeMap:
    """Build the code map ``name`` as a mapping declares it (``CodeMapError`` if it cannot
    be used: an unknown vocabulary, two spellings of one key with different values)."""
    where = f"codes.{name}"
    own: dict[str, Any] = {}
    for key, value in table.items():
        if key in (DEFAULT, SYNONYMS):
            continue
        _put(own, key, value, where)
    out = CodeMap(name, default=table.get(DEFAULT))
    vocabulary = table.get(SYNONYMS)
    if vocabulary is not None:
        known = vocabularies()
        if vocabulary not in known:
            raise CodeMapError(
                f"{where}: no built-in vocabulary {vocabulary!r} (there are "
                f"{', '.join(sorted(known))})"
            )
        out.synonyms = str(vocabulary)
        out.entries.update(known[vocabulary])
    out.entries.update(own)  # the mapping's own entries win over the vocabulary
    return out


def code_maps(codes: dict[str, dict[str, Any]]) -> dict[str, CodeMap]:
    return {name: code_map(name, table) for name, table in codes.items()}


def with_overrides(
    codes: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``codes`` with the entries of an overrides file (``import profile``'s skeleton,
    completed) in place of the same keys; every map named must exist and every value be
    filled in."""
    merged = {name: dict(table) for name, table in codes.items()}
    for name, entries in overrides.items():
        if name not in merged:
            raise CodeMapError(
                f"overrides: the mapping has no code map {name!r} "
                f"(it has {', '.join(sorted(merged)) or 'none'})"
            )
        if not isinstance(entries, dict):
            raise CodeMapError(f"overrides: codes.{name} must be a table of value: code")
        empty = [k for k, v in entries.items() if v is None or v == ""]
        if empty:
            raise CodeMapError(f"overrides: codes.{name}: no value given for {empty[0]!r}")
        replaced = {fold(k) for k in entries}
        table = merged[name]
        for key in [k for k in table if k not in (DEFAULT, SYNONYMS) and fold(k) in replaced]:
            del table[key]
        table.update(entries)
    return merged
