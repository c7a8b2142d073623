"""The structural pass: one resource's JSON against the R4 element model.

This is where FHIR JSON rules that fhir.resources does not enforce are checked
(json.html): primitive JSON types, arrays exactly where an element repeats, no empty
objects/arrays/strings, null only as a placeholder in primitive arrays paired with a
``_name`` array, known properties only, one type per choice element, min-1 elements
present, required code bindings (and, given the server's terminology, the bindings of
bindings.py), and the Attachment rules (attachments.py) on every Attachment. Choice
elements are named as FHIRPath names them in expressions
(``Observation.value.ofType(Quantity)``). Nested resources (contained, Bundle.entry.resource,
Parameters.parameter.resource) are not entered but queued in ``nested`` so that each
is checked as a resource of its own type.
"""

from __future__ import annotations

from typing import Any

from fhir_server.outcome import Issue
from fhir_server.validation.attachments import attachment_issues
from fhir_server.validation.bindings import (
    BindingContext,
    code_issues,
    coding_issues,
    concept_issues,
)
from fhir_server.validation.invariants import Site
from fhir_server.validation.model import COMPLEX, PRIMITIVE, RESOURCE, Element, TypeInfo
from fhir_server.validation.primitives import json_kind

# Object nesting beyond this is refused rather than walked (and never given to pydantic):
# real resources stay far below it, and it bounds the recursion.
MAX_DEPTH = 100
NULL_RULE = "null is only allowed inside an array of primitives, paired with a value in '_{}'"


class IssueLimitReached(Exception):
    """Raised by ``Issues`` when one more issue would exceed the limit."""


class Issues:
    """The issues of one validation, at most ``limit`` of them: reaching the limit
    stops the validation (IssueLimitReached), so that its cost is bounded by the limit
    rather than by how many bad values a body holds."""

    __slots__ = ("extended", "items", "limit")

    def __init__(self, items: list[Issue], limit: int) -> None:
        self.items = items
        self.limit = limit
        self.extended = False  # an extension was met (profiles/extensions.py reads them)

    def append(self, issue: Issue) -> None:
        if len(self.items) >= self.limit:
            raise IssueLimitReached
        self.items.append(issue)

    def extend(self, issues: list[Issue]) -> None:
        for issue in issues:
            self.append(issue)

    @property
    def remaining(self) -> int:
        return self.limit - len(self.items)


class Walk:
    """Checks one resource's elements, collecting issues and nested resources."""

    __slots__ = (
        "advice",
        "bindings",
        "element_type",
        "found",
        "malformed",
        "nested",
        "out",
        "sites",
    )

    def __init__(
        self,
        element_type: TypeInfo,
        out: Issues | None = None,
        bindings: BindingContext | None = None,
        invariants: bool = False,
        advice: bool = False,
    ) -> None:
        self.element_type = element_type  # "Element": the shape of a `_name` object
        self.bindings = bindings  # None: only the enumerated required code bindings
        self.out = out if out is not None else Issues([], 1 << 62)
        self.found: list[Issue] = []  # this resource's issues (all also in ``out``)
        self.nested: list[tuple[Any, str, int, bool]] = []  # value, path, depth, contained
        self.malformed = False  # too deep, or not JSON: unfit for the pydantic models
        # objects whose type has FHIRPath invariants (invariants.py), when they are checked
        self.sites: list[Site] | None = [] if invariants else None
        self.advice = advice  # the best-practice invariants too ($validate)

    def error(self, code: str, diagnostics: str, path: str) -> None:
        issue = Issue(code, diagnostics, expression=(path,))
        self.out.append(issue)
        self.found.append(issue)

    def object(self, obj: dict[Any, Any], info: TypeInfo, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            if not self.malformed:
                self.error("too-costly", f"Nesting deeper than {MAX_DEPTH} objects", path)
            self.malformed = True
            return
        if not obj:
            self.error("structure", "Empty objects are not allowed in FHIR JSON", path)
            return
        elements = info.elements
        groups: dict[str, str] | None = None
        for key, value in obj.items():
            el = elements.get(key)
            if el is None:
                self.other_property(obj, info, key, value, path, depth)
                continue
            if el.group:
                groups = self.choice(groups, el, key, path)
            self.element(obj, el, value, f"{path}.{el.fhirpath}", depth)
        self.invariants(obj, info, groups is not None, path)
        constraints = info.constraints
        if constraints is not None and self.sites is not None:
            # inlined TypeConstraints.concerns: this runs for ~a third of all objects
            if constraints.unconditional or (self.advice and constraints.advice):
                key = constraints.wanted_key
                if not key:
                    self.sites.append((obj, path, constraints))
                else:
                    wanted = obj.get(key)
                    if type(wanted) is str and wanted.startswith(constraints.wanted_prefix):
                        self.sites.append((obj, path, constraints))
            elif not constraints.triggers.isdisjoint(obj) and constraints.settled.isdisjoint(obj):
                self.sites.append((obj, path, constraints))

    def element(self, obj: dict[Any, Any], el: Element, value: Any, path: str, depth: int) -> None:
        """One property's value: an array exactly when the element repeats."""
        if el.many:
            if type(value) is list:
                if value:
                    self.items(obj, el, value, path, depth)
                else:
                    self.error("structure", "Empty arrays are not allowed in FHIR JSON", path)
            elif value is None:
                self.error("structure", NULL_RULE.format(el.name), path)
            else:
                what = json_kind(value)
                self.error(
                    "structure", f"'{el.name}' repeats: it must be an array, not {what}", path
                )
        elif value is None:
            self.error("structure", NULL_RULE.format(el.name), path)
        elif type(value) is list:
            self.error("structure", f"'{el.name}' does not repeat: it must not be an array", path)
        else:
            self.value(el, value, path, depth)

    def invariants(self, obj: dict[Any, Any], info: TypeInfo, has_choice: bool, path: str) -> None:
        """Min-1 elements present; ext-1 (an extension has a value or extensions)."""
        for label, keys in info.required:
            for k in keys:
                if k in obj:
                    break
            else:
                self.error("required", f"Missing required element '{label}'", f"{path}.{label}")
        if has_choice and info.name == "Extension" and "extension" in obj:
            self.error(
                "invariant", "ext-1: Must have either extensions or value[x], not both", path
            )

    def choice(
        self, groups: dict[str, str] | None, el: Element, key: str, path: str
    ) -> dict[str, str]:
        """Record a choice element; a second type for the same element is an error."""
        if groups is None:
            groups = {}
        first = groups.setdefault(el.group, key)
        if first != key:
            self.error(
                "structure",
                f"'{el.group}[x]' may have one type only, but has both {first} and {key}",
                f"{path}.{el.group}",
            )
        return groups

    def items(
        self, obj: dict[Any, Any], el: Element, values: list[Any], path: str, depth: int
    ) -> None:
        extensions = None
        if el.type_name == "Extension":
            self.out.extended = True
        for i, item in enumerate(values):
            if item is None:
                if el.kind == PRIMITIVE:
                    if extensions is None:
                        extensions = obj.get("_" + el.name)
                    if type(extensions) is list and i < len(extensions) and extensions[i]:
                        continue
                self.error("structure", NULL_RULE.format(el.name), f"{path}[{i}]")
            else:
                self.value(el, item, f"{path}[{i}]", depth)

    def value(self, el: Element, value: Any, path: str, depth: int) -> None:
        kind = el.kind
        if kind == PRIMITIVE:
            bad = el.check(value)  # type: ignore[misc]
            if bad is not None:
                self.error(bad[0], bad[1], path)
            elif el.codes is not None:
                if value not in el.codes:
                    self.error("code-invalid", unknown_code(value, el), path)
            elif el.strength and self.bindings is not None:
                self.bound(code_issues(self.bindings, el.value_set, el.strength, value, path))
        elif kind == COMPLEX:
            if type(value) is dict:
                self.object(value, el.info, path, depth + 1)  # type: ignore[arg-type]
                if el.strength and self.bindings is not None:
                    self.bound_complex(el, value, path)
                if el.type_name == "Attachment":
                    for issue in attachment_issues(value, path):
                        self.error(issue.code, issue.diagnostics, path=issue.expression[0])
            else:
                what = json_kind(value)
                self.error("structure", f"{el.type_name} must be a JSON object, not {what}", path)
        elif kind == RESOURCE:
            self.nested.append((value, path, depth + 1, el.name == "contained"))

    def bound(self, issues: list[Issue]) -> None:
        for issue in issues:
            self.out.append(issue)
            if issue.severity == "error":
                self.found.append(issue)

    def bound_complex(self, el: Element, value: dict[Any, Any], path: str) -> None:
        """A Coding or CodeableConcept with a checked binding."""
        assert self.bindings is not None
        if el.type_name == "CodeableConcept":
            self.bound(concept_issues(self.bindings, el.value_set, el.strength, value, path))
        elif el.type_name == "Coding":
            self.bound(coding_issues(self.bindings, el.value_set, el.strength, value, path))

    def other_property(
        self,
        obj: dict[Any, Any],
        info: TypeInfo,
        key: Any,
        value: Any,
        path: str,
        depth: int,
    ) -> None:
        """A key that is not an element: a primitive's `_name` extension, or an error."""
        if type(key) is not str:
            self.error("structure", f"Property names must be strings, not {key!r}", path)
            self.malformed = True
            return
        if key[:1] == "_":
            base = info.elements.get(key[1:])
            if base is not None and base.kind == PRIMITIVE:
                self.primitive_extension(obj, base, value, f"{path}.{base.fhirpath}", depth)
                return
        self.error("structure", f"Unknown element '{key}' in {info.name}", f"{path}.{key}")

    def primitive_extension(
        self, obj: dict[Any, Any], base: Element, value: Any, path: str, depth: int
    ) -> None:
        """`_name`: the id/extensions of a primitive, an array lined up with its values
        when the element repeats (json.html#primitive)."""
        if not base.many:
            if type(value) is dict:
                self.object(value, self.element_type, path, depth + 1)
            else:
                self.error(
                    "structure",
                    f"'_{base.name}' must be a JSON object, not {json_kind(value)}",
                    path,
                )
            return
        if type(value) is not list:
            self.error(
                "structure", f"'_{base.name}' must be a JSON array, not {json_kind(value)}", path
            )
            return
        if not value:
            self.error("structure", "Empty arrays are not allowed in FHIR JSON", path)
            return
        values = obj.get(base.name)
        paired = len(values) if isinstance(values, list) else -1  # -1: no value array
        if paired >= 0 and paired != len(value):
            self.error(
                "structure",
                f"'_{base.name}' has {len(value)} entries but '{base.name}' has {paired}",
                path,
            )
        for i, item in enumerate(value):
            if type(item) is dict:
                self.object(item, self.element_type, f"{path}[{i}]", depth + 1)
            elif item is not None:
                self.error(
                    "structure",
                    f"'_{base.name}' entries must be objects or null, not {json_kind(item)}",
                    f"{path}[{i}]",
                )
            elif i >= paired:  # a null beside a value is fine, beside a null reported once
                self.error("structure", NULL_RULE.format(base.name), f"{path}[{i}]")


def unknown_code(value: str, el: Element) -> str:
    codes = sorted(el.codes or ())
    listed = ", ".join(codes[:12]) + (", ..." if len(codes) > 12 else "")
    return f"Code {value!r} is not in the required value set {el.value_set} ({listed})"
