"""Binding checks: code, Coding and CodeableConcept elements against the value sets the
R4 base definitions bind them to (terminologies.html#strength), where the server holds
the value set's content.

- required: a code outside the value set is an error (the write is refused);
- extensible: a warning (only ``$validate`` shows it; a write is accepted). For a
  CodeableConcept it is one when no coding is in the value set: whether the concept is
  covered by the value set, which would forbid codes from elsewhere, is not judged;
- preferred and example: not checked (elements.json does not carry them).

A coding whose system is no CodeSystem the server holds is an error under a required
binding and a warning under an extensible one (say, a local code system); a coding in
the value set whose display is not one of the concept's is a warning.

The checks run in the validation thread and never touch the database: they read a
``Terminology`` snapshot of the value sets' members (terminology/membership.py loads
and caches them per process). A value set the snapshot has not looked at yet is noted
in ``BindingContext.missing`` and not checked; the caller loads it and validates again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fhir_server.outcome import Issue

REQUIRED = "required"
_EXTENSIBLE_NOTE = "a code should come from this value set unless it has no suitable code"


def normal_display(text: str) -> str:
    """Displays compare without case and with runs of whitespace as one space."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True, slots=True)
class ValueSetContent:
    """The members of one value set: system -> code -> (the concept's displays as
    ``normal_display`` writes them: display and designations; its display as is)."""

    url: str
    systems: Mapping[str, Mapping[str, tuple[frozenset[str], str]]]
    codes: frozenset[str]  # every member's code, whatever its system (code elements)

    @classmethod
    def of(cls, url: str, members: list[tuple[str, str, list[str]]]) -> ValueSetContent:
        """From (system, code, displays: the display first) of each member."""
        systems: dict[str, dict[str, tuple[frozenset[str], str]]] = {}
        for system, code, displays in members:
            known = systems.setdefault(system, {})
            names = frozenset(normal_display(d) for d in displays if d)
            before, shown = known.get(code, (frozenset(), ""))
            known[code] = (before | names, shown or next((d for d in displays if d), ""))
        return cls(url, systems, frozenset(c for _, c, _ in members))


@dataclass(frozen=True, slots=True)
class Terminology:
    """What the binding checks know: value set url -> its members (None: the server does
    not hold it, or it cannot be enumerated: not checked), and the code systems held."""

    value_sets: Mapping[str, ValueSetContent | None]
    systems: frozenset[str]


@dataclass(slots=True)
class BindingContext:
    """One validation's terminology: the snapshot it reads, and the bound value sets it
    met that the snapshot has not looked at (to load before validating again)."""

    terminology: Terminology
    missing: set[str] = field(default_factory=set)

    def content(self, url: str) -> ValueSetContent | None:
        found = self.terminology.value_sets.get(url, _MISSING)
        if found is _MISSING:
            self.missing.add(url)
            return None
        return found  # type: ignore[return-value]


_MISSING = ValueSetContent("", {}, frozenset())


class BindingSource(Protocol):
    """Where the write path gets its ``BindingContext`` (terminology/membership.py)."""

    async def context(self) -> BindingContext: ...

    def held(self) -> BindingContext: ...

    async def load(self, urls: Iterable[str]) -> None: ...


def _label(coding: dict[str, Any]) -> str:
    return f"{coding.get('system', '')}#{coding.get('code', '')}"


def _coded(value: Any) -> bool:
    return type(value) is dict and type(value.get("code")) is str


def code_issues(ctx: BindingContext, url: str, strength: str, value: Any, path: str) -> list[Issue]:
    """A ``code`` element (no system): its code must be a member of some system."""
    vs = ctx.content(url)
    if vs is None or type(value) is not str or value in vs.codes:
        return []
    if strength == REQUIRED:
        message = f"The code {value!r} is not in the value set {url}, which is required"
        return [Issue("code-invalid", message, expression=(path,))]
    message = f"The code {value!r} is not in the value set {url}, and {_EXTENSIBLE_NOTE}"
    return [Issue("code-invalid", message, severity="warning", expression=(path,))]


class _Codings:
    """The codings of one bound element, checked against one value set."""

    __slots__ = ("issues", "required", "systems", "unknown", "vs")

    def __init__(self, ctx: BindingContext, vs: ValueSetContent, strength: str) -> None:
        self.vs = vs
        self.systems = ctx.terminology.systems
        self.required = strength == REQUIRED
        self.issues: list[Issue] = []
        self.unknown: list[str] = []  # systems of codings the server knows nothing of

    def member(self, coding: dict[str, Any], path: str) -> bool:
        """Whether the coding is in the value set (checking its display if it is)."""
        system, code = coding.get("system"), coding["code"]
        known = self.vs.systems.get(system) if type(system) is str else None
        found = known.get(code) if known is not None else None
        if found is None:
            if type(system) is str and system not in self.systems:
                self.unknown.append(system)
                if not self.required:
                    message = (
                        f"The code system {system} is not known here, so the code {code!r} "
                        f"cannot be checked against the value set {self.vs.url}"
                    )
                    self.issues.append(Issue("not-found", message, "warning", (f"{path}.system",)))
            return False
        display = coding.get("display")
        displays, shown = found
        if type(display) is str and displays and normal_display(display) not in displays:
            message = f"Wrong display {display!r} for {system}#{code}: it should be {shown!r}"
            self.issues.append(Issue("code-invalid", message, "warning", (f"{path}.display",)))
        return True

    def outside(self, what: str, path: str, unknown_only: bool) -> None:
        """The element has no code from the value set; ``what`` ends before "the value
        set" ("The Coding s#c is not in")."""
        if self.required:
            message = f"{what} the value set {self.vs.url}, which is required"
            if self.unknown:
                message += f" (the code system {self.unknown[0]} is not known here)"
            self.issues.append(Issue("code-invalid", message, expression=(path,)))
        elif not unknown_only:  # an unknown system was already warned about
            message = f"{what} the value set {self.vs.url}, and {_EXTENSIBLE_NOTE}"
            self.issues.append(Issue("code-invalid", message, "warning", (path,)))


def coding_issues(
    ctx: BindingContext, url: str, strength: str, value: dict[str, Any], path: str
) -> list[Issue]:
    """A ``Coding`` element. One without a code (only a display, or extensions) is not
    checked."""
    if not _coded(value):
        return []
    vs = ctx.content(url)
    if vs is None:
        return []
    check = _Codings(ctx, vs, strength)
    if not check.member(value, path):
        check.outside(f"The Coding {_label(value)} is not in", path, bool(check.unknown))
    return check.issues


def concept_issues(
    ctx: BindingContext, url: str, strength: str, value: dict[str, Any], path: str
) -> list[Issue]:
    """A ``CodeableConcept``: fine when any of its codings is in the value set (the
    others are translations). One with no coded coding is a concept given by text only:
    outside the value set, unless extensions stand for it (say, a data-absent reason)."""
    codings = value.get("coding")
    coded = [(i, c) for i, c in enumerate(codings) if _coded(c)] if type(codings) is list else []
    if not coded and "extension" in value:
        return []
    vs = ctx.content(url)
    if vs is None:
        return []
    check = _Codings(ctx, vs, strength)
    found = False
    for i, c in coded:
        found = check.member(c, f"{path}.coding[{i}]") or found
    if not found:
        if coded:
            labels = ", ".join(_label(c) for _, c in coded[:5])
            what = f"None of the codings ({labels}) is in"
        else:
            what = "The concept has no code, so it is not in"
        check.outside(what, path, bool(coded) and len(check.unknown) == len(coded))
    return check.issues
