"""A constraint StructureDefinition compiled into a checker (issue #14).

``compile_profile`` reads the profile's snapshot when it has one; a differential-only
profile is read over the base R4 element model the structural pass already holds
(fhir_server/validation/model.py): each differential element is the base element (its
types and repetition, from elements.json) narrowed by what the differential says. The
rules are then checked per instance element, by ``CompiledProfile.validate``:

- cardinality (``min``/``max``; ``max`` 0 prohibits the element), counted per parent
  instance, and only where the profile is stricter than the base (the base pass
  reports the rest);
- the type list: which types of a choice element (``value[x]``) remain allowed, which
  resource types an element of type Resource may hold;
- ``fixed[x]`` (exact match) and ``pattern[x]`` (the instance contains the pattern:
  every property of a complex pattern present with an equal value; every item of an
  array in a pattern matched by some item of the instance's array);
- ``maxLength``; ``minValue[x]``/``maxValue[x]`` (integer, decimal, date, dateTime,
  instant, time, and the value of a Quantity in the same unit);
- ``targetProfile`` of a Reference: the type in the reference string must be one of the
  types the target profiles constrain (base resource profiles only: a target that is
  itself a constraint profile leaves the element unchecked);
- ``constraint``: each FHIRPath ``expression``, parsed once here and evaluated with
  fhirpathpy on every instance of the element (severity error: an error, warning: a
  warning). Constraints the base specification defines (their ``source`` is a core
  StructureDefinition, as in every snapshot; or, without a source, ``ele-1``,
  ``ext-1`` and the ``dom-`` invariants) are not evaluated here: they belong to the
  base invariants, whatever the profile.

Choice elements are named as the structural pass names them in expressions
(``Observation.value.ofType(Quantity)``); repeating elements carry their index
(``Patient.identifier[0].system``).

Slicing (profiling.html#slicing) with ``value``, ``pattern``, ``type``, ``profile`` and
``exists`` discriminators over paths of names, ``$this``, ``extension('url')``,
``ofType(T)`` and ``resolve()`` (of a contained resource, or of an entry of the Bundle
being validated): each item of a sliced element goes to the first slice it matches (the
fixed/pattern value at the path; one of the slice's types there; conformance to one of
the profiles of its type -- ``targetProfile`` through ``resolve()`` --, which the
registry links in as ``CompiledProfile.linked``; presence per the slice's min 1 / max
0); then each slice's min/max, the slicing's ``rules`` (closed, openAtEnd)
and ``ordered``, and the slice's own element rules on its items. Extensions are sliced
by url implicitly, the url taken from the slice's type profile when no fixed url is
given. A differential over another profile (baseDefinition not a core type) is
checked together with that profile (profiles/registry.py resolves the chain).

Slices of slices (reslicing, one level): an element sliced within a slice is a
slicing of that slice's items, checked on each item the outer slice holds; the fixed
values of its slices also discriminate the outer slice.

Extension definitions are checked by profiles/extensions.py, with this module's
checker (an Extension profile's ``validate_item``).

Gaps: slices nested two levels deep are not enforced; ``resolve()`` of a reference to a
stored resource finds nothing; a profile discriminator whose profile is not held leaves
that slicing unchecked, with a warning. Bindings in the profile are not checked. A
partial date compared with
minValue/maxValue fails only when it lies wholly outside the limit; Quantities in
different units are not compared (no UCUM conversion).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cache
from typing import Any

from fhir_server.datetimes import parse_range
from fhir_server.jsonio import dumps
from fhir_server.outcome import Issue
from fhir_server.resource_types import is_resource_type
from fhir_server.search.extract import reference_type
from fhir_server.validation.fhirpath import Evaluator, Unsupported, compile_fhirpath
from fhir_server.validation.model import PRIMITIVE, RESOURCE, Element, Model, TypeInfo, model

log = logging.getLogger(__name__)

CORE = "http://hl7.org/fhir/StructureDefinition/"
_BASE_KEYS = re.compile(r"(ele|ext)-1|dom-\d+")

# (JSON key, element) pairs one path step selects, per type of the parent instance.
Step = dict[str, list[tuple[str, Element]]]
# An instance element: its value, its FHIRPath and its base element (None: the resource).
Node = tuple[Any, str, Element | None]


class ProfileError(Exception):
    """The StructureDefinition cannot be used as a profile (not a constraint of a
    known type, or no elements)."""


@dataclass(slots=True)
class Constraint:
    key: str
    severity: str
    human: str
    expression: str
    parsed: Any  # fhirpathpy's parse tree, or None when it does not parse
    # the compiled expression by the instance's type (validation/fhirpath.py; None: not
    # in the subset it covers), filled on first use
    fast: dict[str | None, Evaluator | None] = field(default_factory=dict)


@dataclass(slots=True)
class Rule:
    """What the profile says about one element path."""

    path: str  # as the profile writes it (choice renames resolved): Patient.identifier
    name: str  # the FHIRPath name of a missing element: identifier, value
    steps: list[Step]
    min: int | None = None  # only when stricter than the base
    max: int | None = None  # only when stricter than the base (0: prohibited)
    types: frozenset[str] | None = None  # allowed types of a choice or Resource element
    targets: frozenset[str] | None = None  # resource types a Reference may point to
    fixed: tuple[str, Any] | None = None  # (fixedX key, value)
    pattern: tuple[str, Any] | None = None
    max_length: int | None = None
    min_value: tuple[str, Any] | None = None  # (type suffix, limit)
    max_value: tuple[str, Any] | None = None
    constraints: list[Constraint] = field(default_factory=list)

    @property
    def checks_value(self) -> bool:
        """Anything for ``_check_value`` to look at (most rules are cardinality only)."""
        return not (
            self.types is None
            and self.targets is None
            and self.fixed is None
            and self.pattern is None
            and self.max_length is None
            and self.min_value is None
            and self.max_value is None
        )


@dataclass(slots=True)
class Sliced:
    """Where an element of a slice is: the sliced element, the slice, the path below."""

    path: str
    name: str
    below: list[str]
    nested: bool  # within a slice of the slice (a reslice)
    inner: list[tuple[int, str]] = field(default_factory=list)  # (index in below, name)


@dataclass(slots=True)
class Slice:
    """One slice: its cardinality within the parent, the values that identify its items
    (relative path -> ("fixed" | "pattern", value)) and the rules of its items."""

    name: str
    min: int = 0
    max: int | None = None
    values: dict[str, tuple[str, Any]] = field(default_factory=dict)
    types: dict[str, frozenset[str]] = field(default_factory=dict)  # type discriminator
    profiles: dict[str, list[str]] = field(default_factory=dict)  # profile discriminator
    bounds: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # exists
    rules: list[Rule] = field(default_factory=list)
    # elements sliced within the slice's items (reslicing), by their label path
    slicings: dict[str, Slicing] = field(default_factory=dict)
    # ``rules`` less those an item meets by matching the slice (filled on first use)
    after_match: list[Rule] | None = None


@dataclass(slots=True)
class Slicing:
    """A sliced element (profiling.html#slicing), with value/pattern discriminators."""

    path: str
    name: str  # the FHIRPath name of the element, for a count's expression
    steps: list[Step]  # from the resource to the sliced element
    info: TypeInfo | None  # the sliced element's type: slice paths are read from it
    discriminators: list[tuple[str, str]]  # (type, path)
    rules: str = "open"  # closed, open, openAtEnd
    ordered: bool = False
    slices: list[Slice] = field(default_factory=list)
    unusable: str = ""  # why the slicing cannot be enforced ("": it can)
    # (type, parsed path, slice key) of each discriminator, filled on first use
    parsed: list[tuple[str, tuple[tuple[str, str], ...], str]] | None = None


@dataclass(slots=True)
class CompiledProfile:
    url: str
    version: str | None
    type: str
    rules: list[Rule]
    notes: list[str] = field(default_factory=list)  # elements that could not be read
    slicings: list[Slicing] = field(default_factory=list)
    base: str | None = None  # a profile this differential constrains further
    # the profiles its slices name (profile discriminators): the registry resolves
    # them into ``linked`` (url -> the profile with those it derives from)
    needs: set[str] = field(default_factory=set)
    linked: dict[str, list[CompiledProfile]] = field(default_factory=dict)
    # an extension definition: where it may appear, (context type, expression)
    contexts: list[tuple[str, str]] = field(default_factory=list)
    root_max: int | None = None  # the root element's max (repetitions per host element)
    where: str = ""  # how messages name the profile: "(profile <url>)"

    def __post_init__(self) -> None:
        self.where = f"(profile {self.url})"

    def validate(self, resource: Any) -> list[Issue]:
        """The issues of ``resource`` against this profile (empty: it conforms)."""
        if not isinstance(resource, dict):
            return []
        if resource.get("resourceType") != self.type:
            message = (
                f"The profile {self.url} applies to {self.type} resources, not "
                f"{resource.get('resourceType')!r}"
            )
            return [Issue("invalid", message, expression=(str(resource.get("resourceType")),))]
        return self.validate_item(resource, self.type, resource)

    def validate_item(self, value: Any, path: str, resource: Any = None) -> list[Issue]:
        """The issues of one instance of the profiled type (a resource, or a data type
        such as an Extension) found at ``path`` within ``resource``."""
        out: list[Issue] = []
        root: Node = (value, path, None)
        top = value if resource is None else resource
        for rule in self.rules:
            _check_rule(self, rule, root, top, out)
        for slicing in self.slicings:
            if not slicing.unusable:
                _check_slicing(self, slicing, root, top, out)
        return out


# --- compiling -----------------------------------------------------------------------------


def compile_profile(sd: dict[str, Any]) -> CompiledProfile:
    """The checker of a constraint StructureDefinition (ProfileError if unusable)."""
    url = sd.get("url")
    rtype = sd.get("type")
    if not isinstance(url, str) or not isinstance(rtype, str):
        raise ProfileError("A profile needs a url and a type")
    if sd.get("derivation") not in (None, "constraint") or sd.get("kind") == "logical":
        raise ProfileError(f"{url} is not a constraint profile (derivation constraint)")
    m = model()
    if rtype not in m.types:
        raise ProfileError(f"{url} constrains {rtype!r}, which is not an R4 type")
    elements = _elements(sd)
    if elements is None:
        raise ProfileError(f"{url} has neither a snapshot nor a differential")
    profile = CompiledProfile(url, sd.get("version"), rtype, [])
    base = sd.get("baseDefinition")
    snapshot = sd.get("snapshot")
    if isinstance(base, str) and not base.startswith(CORE) and not isinstance(snapshot, dict):
        profile.base = base  # its rules hold too: the registry resolves it
    root = m.types[rtype]
    for c in sd.get("context") or ():
        if isinstance(c, dict) and isinstance(c.get("expression"), str):
            profile.contexts.append((str(c.get("type", "element")), c["expression"]))
    slicings: dict[str, Slicing] = {}
    for element in elements:
        if not isinstance(element, dict):
            continue
        where = _effective_path(element)
        if where is None:
            continue
        path, sliced = where
        if path == rtype and sliced is None:
            hi = element.get("max")
            if isinstance(hi, str) and hi.isdigit():
                profile.root_max = int(hi)
        if path.split(".")[0] != rtype:
            profile.notes.append(f"{path}: not an element of {rtype}")
        elif sliced is None:
            rule = _rule(m, root, path.split(".")[1:], path, element, profile.notes)
            if rule is not None:
                profile.rules.append(rule)
            if isinstance(element.get("slicing"), dict):
                segments = path.split(".")[1:]
                slicings[path] = _slicing(root, segments, path, element["slicing"])
        else:
            _slice_element(m, root, slicings, path, sliced, element, profile)
    profile.slicings = [s for s in slicings.values() if s.slices]
    _finish(profile.slicings, profile.notes)
    return profile


def _finish(slicings: list[Slicing], notes: list[str]) -> None:
    """Check the discriminators of each slicing and of those within its slices."""
    for slicing in slicings:
        _check_discriminators(slicing)
        if slicing.unusable:
            notes.append(f"{slicing.path}: slicing not enforced ({slicing.unusable})")
        for piece in slicing.slices:
            piece.slicings = {k: v for k, v in piece.slicings.items() if v.slices}
            _finish(list(piece.slicings.values()), notes)


def _elements(sd: dict[str, Any]) -> list[Any] | None:
    for part in ("snapshot", "differential"):
        holder = sd.get(part)
        if isinstance(holder, dict) and isinstance(holder.get("element"), list):
            return holder["element"]  # type: ignore[no-any-return]
    return None


def _effective_path(element: dict[str, Any]) -> tuple[str, Sliced | None] | None:
    """The element's path with type-choice renames applied (``Observation.value[x]:
    valueQuantity.unit`` is ``Observation.valueQuantity.unit``), and, for an element of a
    slice, (sliced path, slice name, path below the slice, whether a slice of the slice
    is on the way)."""
    ident = element.get("id")
    path = element.get("path")
    if not isinstance(ident, str):
        if not isinstance(path, str):
            return None
        name = element.get("sliceName")
        if isinstance(name, str):
            return path, Sliced(path, name, [], False)
        return path, None
    parts: list[str] = []
    sliced: Sliced | None = None
    for segment in ident.split("."):
        name, _, slice_name = segment.partition(":")
        if slice_name and name.endswith("[x]"):
            stem = name[:-3]
            if slice_name.lower().startswith(stem.lower()):  # valueQuantity, BornAge
                name, slice_name = stem + slice_name[len(stem) :], ""
        if sliced is not None:
            sliced.below.append(name)
            if slice_name:
                sliced.nested = True
                sliced.inner.append((len(sliced.below) - 1, slice_name))
        elif slice_name:
            sliced = Sliced(".".join([*parts, name]), slice_name, [], False)
        parts.append(name)
    return ".".join(parts), sliced


def _resolve(root: TypeInfo, segments: list[str]) -> list[Step] | None:
    """The path steps from the resource, or None when the base model has no such path."""
    steps: list[Step] = []
    parents = [root]
    for segment in segments:
        step: Step = {}
        for info in parents:
            if segment.endswith("[x]"):
                keys = info.choice_groups.get(segment[:-3], ())
                found = [(k, info.elements[k]) for k in keys]
            else:
                el = info.elements.get(segment)
                found = [(segment, el)] if el is not None else []
            if found:
                step[info.name] = found
        if not step:
            return None
        steps.append(step)
        parents = [el.info for found in step.values() for _, el in found if el.info is not None]
    return steps


def _rule(
    m: Model,
    info: TypeInfo,
    segments: list[str],
    path: str,
    element: dict[str, Any],
    notes: list[str],
) -> Rule | None:
    """The rule of the element at ``segments`` below an instance of ``info`` (the
    resource, or a slice's item); ``path`` names it in messages."""
    steps = _resolve(info, segments)
    if steps is None:
        notes.append(f"{path}: no such element in R4 {info.name}")
        return None
    name = segments[-1].removesuffix("[x]") if segments else info.name
    rule = Rule(path, name, steps)
    if steps:
        _cardinality(m, rule, element, steps[-1])
        _types(rule, element, steps[-1])
    _values(rule, element)
    rule.constraints = _constraints(element)
    useful = (
        rule.min is not None
        or rule.max is not None
        or rule.types is not None
        or rule.targets is not None
        or rule.fixed is not None
        or rule.pattern is not None
        or rule.max_length is not None
        or rule.min_value is not None
        or rule.max_value is not None
        or rule.constraints
    )
    return rule if useful else None


def _slicing(root: TypeInfo, segments: list[str], path: str, spec: dict[str, Any]) -> Slicing:
    """The slicing entry of the element at ``segments`` below ``root`` (its
    discriminators and rules); ``path`` names it."""
    steps = _resolve(root, segments) or []
    found = [el for pairs in steps[-1].values() for _, el in pairs] if steps else []
    info = found[0].info if len(found) == 1 else None
    discriminators = [
        (str(d.get("type")), str(d.get("path")))
        for d in spec.get("discriminator") or ()
        if isinstance(d, dict)
    ]
    rules = spec.get("rules")
    name = path.rsplit(".", 1)[-1].removesuffix("[x]")
    slicing = Slicing(
        path,
        name,
        steps,
        info,
        discriminators,
        rules if rules in ("closed", "open", "openAtEnd") else "open",
        spec.get("ordered") is True,
    )
    if not steps:
        slicing.unusable = "the sliced element is not an element of the base model"
    elif info is None and any(el.kind != RESOURCE for el in found):
        slicing.unusable = "the sliced element is not a complex element of the base model"
    return slicing


def _below_key(info: TypeInfo | None, below: list[str]) -> str:
    """The key of an element below a slice, as ``_key`` names discriminator paths: a
    type choice by its FHIRPath name (``valueQuantity`` and ``value[x]``: ``value``)."""
    names = [b.removesuffix("[x]") for b in below]
    if info is not None and below:
        steps = _resolve(info, below)
        if steps is not None:
            for i, step in enumerate(steps):
                groups = {el.group for pairs in step.values() for _, el in pairs}
                if len(groups) == 1 and "" not in groups:
                    names[i] = groups.pop()
    return ".".join(names) or "$this"


def _discriminating(piece: Slice, key: str, element: dict[str, Any], needs: set[str]) -> None:
    """What a slice's element says for the type, profile and exists discriminators: its
    type codes, the profiles of its types (``targetProfile`` for a Reference, which a
    ``resolve()`` path follows) and its cardinality."""
    types = element.get("type")
    if isinstance(types, list):
        codes = frozenset(
            t["code"] for t in types if isinstance(t, dict) and isinstance(t.get("code"), str)
        )
        if codes:
            piece.types[key] = codes
        urls: list[str] = []
        for t in types:
            if not isinstance(t, dict):
                continue
            for name in ("profile", "targetProfile"):
                for u in t.get(name) or ():
                    if isinstance(u, str) and u not in urls:
                        urls.append(u)
        if urls:
            piece.profiles[key] = urls
            needs.update(u for u in urls if not u.startswith(CORE))
    lo, hi = element.get("min"), element.get("max")
    if type(lo) is int or isinstance(hi, str):
        piece.bounds[key] = (
            lo if type(lo) is int else 0,
            int(hi) if isinstance(hi, str) and hi.isdigit() else None,
        )


def _slice_element(
    m: Model,
    root: TypeInfo,
    slicings: dict[str, Slicing],
    path: str,
    sliced: Sliced,
    element: dict[str, Any],
    profile: CompiledProfile,
    segments: list[str] | None = None,
) -> None:
    """Add a slice, or an element below one, to its slicing (``segments``: the sliced
    element below ``root``; by default its path below the resource). Extensions are
    sliced by url without saying so (the base Element.extension slicing). An element
    of a slice of the slice (a reslice: one level) goes to the slicing within the outer
    slice; its fixed and pattern values also discriminate the outer slice (as the
    coding of a component's code does)."""
    sliced_path, slice_name, below = sliced.path, sliced.name, sliced.below
    if segments is None:
        segments = sliced_path.split(".")[1:]
    slicing = slicings.get(sliced_path)
    if slicing is None:
        if sliced_path.rsplit(".", 1)[-1] in ("extension", "modifierExtension"):
            spec = {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}
            slicing = slicings[sliced_path] = _slicing(root, segments, sliced_path, spec)
        else:
            profile.notes.append(f"{element.get('id')}: a slice of an element with no slicing")
            return
    if not below:
        piece = Slice(slice_name)
        lo, hi = element.get("min"), element.get("max")
        piece.min = lo if type(lo) is int else 0
        piece.max = int(hi) if isinstance(hi, str) and hi.isdigit() else None
        slicing.slices.append(piece)
        for t in element.get("type") or ():
            if isinstance(t, dict) and t.get("code") == "Extension" and t.get("profile"):
                url = t["profile"][0] if isinstance(t["profile"], list) else None
                if isinstance(url, str):
                    piece.values.setdefault("url", ("fixed", url))
    else:
        matching = [p for p in slicing.slices if p.name == slice_name]
        if not matching:
            profile.notes.append(f"{element.get('id')}: an element of an undeclared slice")
            return
        piece = matching[-1]
    key = _below_key(slicing.info, below)
    for k, v in element.items():
        if k.startswith("fixed") and k[5:6].isupper():
            piece.values[key] = ("fixed", v)
        elif k.startswith("pattern") and k[7:8].isupper():
            piece.values[key] = ("pattern", v)
    _discriminating(piece, key, element, profile.needs)
    if slicing.info is None:
        return
    label = f"{sliced_path}:{slice_name}" + "".join("." + b for b in below)
    if sliced.nested:
        if len(sliced.inner) != 1:
            profile.notes.append(f"{element.get('id')}: slices nested deeper (not enforced)")
            return
        at, inner = sliced.inner[0]
        within = below[: at + 1]
        inner_path = f"{sliced_path}:{slice_name}" + "".join("." + b for b in within)
        deeper = Sliced(inner_path, inner, below[at + 1 :], False)
        _slice_element(
            m, slicing.info, piece.slicings, inner_path, deeper, element, profile, within
        )
        return
    if below and isinstance(element.get("slicing"), dict):
        piece.slicings[label] = _slicing(slicing.info, below, label, element["slicing"])
    rule = _rule(m, slicing.info, below, label, element, profile.notes)
    if rule is not None:
        if not below:
            rule.min = rule.max = None  # the slice's own count: checked by the slicing
        piece.rules.append(rule)


def _check_discriminators(slicing: Slicing) -> None:
    """Discriminators ``value``, ``pattern``, ``type``, ``profile`` and ``exists`` over
    paths of names, ``extension('url')``, ``ofType(T)`` and ``resolve()``. A slice that
    does not say what its discriminator looks for (no fixed or pattern value, no type,
    no profile, no min 1 / max 0 at the path) makes the whole slicing unenforced: its
    items could not be told apart."""
    if not slicing.discriminators:
        slicing.unusable = "no discriminator"
        return
    for kind, path in slicing.discriminators:
        if kind not in ("value", "pattern", "type", "profile", "exists"):
            slicing.unusable = f"discriminator type {kind} is not supported"
            return
        parts = _path_parts(path)
        if parts is None:
            slicing.unusable = f"discriminator path {path!r} is not supported"
            return
        key = _key(parts)
        for piece in slicing.slices:
            if kind in ("value", "pattern"):
                known = key in piece.values
            elif kind == "type":
                known = key in piece.types
            elif kind == "profile":
                known = key in piece.profiles
            else:
                lo, hi = piece.bounds.get(key, (0, None))
                known = lo >= 1 or hi == 0
            if not known:
                slicing.unusable = f"slice {piece.name} says nothing of its {kind} at {path}"
                return


_PART = re.compile(
    r"""(?:^|\.)(?:(\$this)|([A-Za-z_]\w*)(?:\(\s*(?:'([^']*)'|"([^"]*)"|([A-Za-z_]\w*))?\s*\))?)"""
)


@cache
def _path_parts(path: str) -> tuple[tuple[str, str], ...] | None:
    """A discriminator path as (kind, argument) steps: ``("name", n)``, ``("extension",
    url)``, ``("ofType", T)``, ``("resolve", "")``; ``$this`` is no step. None for
    anything else (other functions)."""
    out: list[tuple[str, str]] = []
    pos = 0
    for match in _PART.finditer(path):
        if match.start() != pos:
            return None
        pos = match.end()
        this, name = match.group(1), match.group(2)
        if this:
            continue
        call = match.group(0).endswith(")")
        arg = match.group(3) or match.group(4) or match.group(5) or ""
        if not call:
            out.append(("name", name))
        elif name == "extension" and arg:
            out.append(("extension", arg))
        elif name == "ofType" and arg:
            out.append(("ofType", arg))
        elif name == "resolve" and not arg:
            out.append(("resolve", ""))
        else:
            return None
    return tuple(out) if pos == len(path) and path else None


@cache
def _key(parts: tuple[tuple[str, str], ...]) -> str:
    """Where a discriminator looks, as the slice's elements are keyed: the element
    names below the slice (``ofType`` and ``resolve()`` are no elements)."""
    names = [
        arg if kind == "name" else "extension"
        for kind, arg in parts
        if kind in ("name", "extension")
    ]
    return ".".join(names) or "$this"


def _type_of(value: Any, el: Element | None) -> str:
    """The FHIR type of an instance value: a resource's resourceType, else its element's."""
    if type(value) is dict and isinstance(value.get("resourceType"), str):
        return str(value["resourceType"])
    return el.type_name if el is not None else ""


def _walk(
    value: Any, type_name: str, parts: tuple[tuple[str, str], ...], resource: Any
) -> list[tuple[Any, str]]:
    """The (value, type) items a discriminator path selects from one item."""
    items = [(value, type_name)]
    if not parts:  # $this, the commonest pattern discriminator
        return items
    m = model()
    for kind, arg in parts:
        nxt: list[tuple[Any, str]] = []
        for v, t in items:
            if kind == "ofType":
                if t == arg:
                    nxt.append((v, t))
                continue
            if kind == "resolve":
                target = _resolve_reference(v, resource)
                if target is not None:
                    nxt.append((target, str(target.get("resourceType"))))
                continue
            if type(v) is not dict:
                continue
            name = "extension" if kind == "extension" else arg
            info = m.types.get(t)
            pairs: list[tuple[str, Element | None]]
            if info is None:
                pairs = [(name, None)]
            elif name in info.elements:
                pairs = [(name, info.elements[name])]
            else:
                pairs = [(k, info.elements[k]) for k in info.choice_groups.get(name, ())]
            for key, el in pairs:
                found = v.get(key)
                for x in found if type(found) is list else [found]:
                    if x is None:
                        continue
                    if kind == "extension" and not (type(x) is dict and x.get("url") == arg):
                        continue
                    nxt.append((x, _type_of(x, el)))
        items = nxt
    return items


def _resolve_reference(value: Any, resource: Any) -> dict[str, Any] | None:
    """resolve() within the resource being validated: a contained resource (``#id``),
    or, in a Bundle, the entry whose fullUrl (or ``Type/id``) the reference names.
    Anything else (a server read) is not resolved."""
    if type(value) is not dict or type(resource) is not dict:
        return None
    ref = value.get("reference")
    if not isinstance(ref, str):
        return None
    if ref.startswith("#"):
        for c in resource.get("contained") or ():
            if type(c) is dict and c.get("id") == ref[1:]:
                return c
        return None
    if resource.get("resourceType") != "Bundle":
        return None
    for entry in resource.get("entry") or ():
        if type(entry) is not dict or type(entry.get("resource")) is not dict:
            continue
        r = entry["resource"]
        if entry.get("fullUrl") == ref or f"{r.get('resourceType')}/{r.get('id')}" == ref:
            return r  # type: ignore[no-any-return]
    return None


def _parsed(slicing: Slicing) -> list[tuple[str, tuple[tuple[str, str], ...], str]]:
    """(type, parsed path, slice key) of each discriminator, parsed on first use."""
    if slicing.parsed is None:
        slicing.parsed = [
            (kind, parts, _key(parts))
            for kind, path in slicing.discriminators
            for parts in [_path_parts(path) or ()]
        ]
    return slicing.parsed


def _matches(
    profile: CompiledProfile, piece: Slice, slicing: Slicing, node: Node, resource: Any
) -> bool | None:
    """The item belongs to the slice (None: a profile it names is not held)."""
    value, _, el = node
    start = _type_of(value, el)
    for kind, parts, key in _parsed(slicing):
        found = _walk(value, start, parts, resource)
        if kind in ("value", "pattern"):
            how, wanted = piece.values[key]
            test = _equal if how == "fixed" else _contains
            if not any(test(v, wanted) for v, _ in found):
                return False
        elif kind == "type":
            if not any(t in piece.types[key] for _, t in found):
                return False
        elif kind == "exists":
            lo, _hi = piece.bounds[key]
            if bool(found) != (lo >= 1):
                return False
        else:
            ok = unknown = False
            for v, t in found:
                for u in piece.profiles[key]:
                    chain = profile.linked.get(u)
                    if u.startswith(CORE):
                        ok = ok or t == u[len(CORE) :]
                    elif not chain:
                        unknown = True
                    else:
                        ok = ok or _conforms(chain, v, t)
            if not ok:
                return None if unknown else False
    return True


def _conforms(chain: list[CompiledProfile], value: Any, type_name: str) -> bool:
    """The value meets every profile of the chain (errors only)."""
    for p in chain:
        if p.type != type_name:
            return False
        issues = p.validate_item(value, p.type)
        if any(i.severity in ("error", "fatal") for i in issues):
            return False
    return True


def _base_cardinality(m: Model, name: str, step: Step) -> tuple[int, int | None]:
    """(min, max) of the base element (max None: unbounded), from the model: min 1
    when every parent type requires the element (the base pass reports those)."""
    found = [el for pairs in step.values() for _, el in pairs]
    many = any(el.many for el in found)
    required = all(any(label == name for label, _ in m.types[parent].required) for parent in step)
    return (1 if required else 0), (None if many else 1)


def _cardinality(m: Model, rule: Rule, element: dict[str, Any], step: Step) -> None:
    base_min, base_max = _base_cardinality(m, rule.name, step)
    lo = element.get("min")
    if type(lo) is int and lo > base_min:
        rule.min = lo
    hi = element.get("max")
    if isinstance(hi, str) and hi.isdigit():
        limit = int(hi)
        if base_max is None or limit < base_max:
            rule.max = limit


def _types(rule: Rule, element: dict[str, Any], step: Step) -> None:
    types = element.get("type")
    if not isinstance(types, list):
        return
    codes: set[str] = {
        t["code"] for t in types if isinstance(t, dict) and isinstance(t.get("code"), str)
    }
    found = [el for pairs in step.values() for _, el in pairs]
    if any(el.group for el in found) or any(el.kind == RESOURCE for el in found):
        offered = {el.type_name for el in found}
        if codes and not (offered <= codes) and "Resource" not in codes:
            rule.types = frozenset(codes)
    targets: set[str] = set()
    for t in types:
        if not isinstance(t, dict) or t.get("code") != "Reference":
            continue
        for target in t.get("targetProfile") or ():
            name = target[len(CORE) :] if isinstance(target, str) else ""
            if not (isinstance(target, str) and target.startswith(CORE)):
                return  # a constraint profile as target: its type is not known here
            if name == "Resource":
                return
            if is_resource_type(name):
                targets.add(name)
    if targets:
        rule.targets = frozenset(targets)


def _values(rule: Rule, element: dict[str, Any]) -> None:
    for key, value in element.items():
        if key.startswith("fixed") and key[5:6].isupper():
            rule.fixed = (key, value)
        elif key.startswith("pattern") and key[7:8].isupper():
            rule.pattern = (key, value)
        elif key.startswith("minValue") and key[8:9].isupper():
            rule.min_value = (key[8:], value)
        elif key.startswith("maxValue") and key[8:9].isupper():
            rule.max_value = (key[8:], value)
    length = element.get("maxLength")
    if type(length) is int and length > 0:
        rule.max_length = length


def _constraints(element: dict[str, Any]) -> list[Constraint]:
    from fhirpathpy.parser import parse

    out = []
    for c in element.get("constraint") or ():
        if not isinstance(c, dict) or not isinstance(c.get("expression"), str):
            continue
        source = c.get("source")
        key = c.get("key")
        if (isinstance(source, str) and source.startswith(CORE)) or (
            source is None and isinstance(key, str) and _BASE_KEYS.fullmatch(key)
        ):
            continue  # a base invariant, inherited into the snapshot
        try:
            parsed = parse(c["expression"])
        except Exception:  # any parser failure: reported when checked
            parsed = None
        out.append(
            Constraint(
                str(c.get("key", "?")),
                "warning" if c.get("severity") == "warning" else "error",
                str(c.get("human", "")),
                c["expression"],
                parsed,
            )
        )
    return out


# --- checking ------------------------------------------------------------------------------


def _children(node: Node, step: Step) -> Iterator[Node]:
    value, path, el = node
    if type(value) is not dict:
        return
    info_name = el.info.name if el is not None and el.info is not None else None
    if el is None:
        pairs = next(iter(step.values()))  # the resource: its one type
    elif info_name is None or info_name not in step:
        return
    else:
        pairs = step[info_name]
    for key, sub in pairs:
        v = value.get(key)
        if v is None:
            continue
        if type(v) is list:
            for i, item in enumerate(v):
                if item is not None:
                    yield item, f"{path}.{sub.fhirpath}[{i}]", sub
        else:
            yield v, f"{path}.{sub.fhirpath}", sub


def _count(node: Node, step: Step) -> int:
    """How many values the parent holds for the step (a primitive may be present by its
    ``_name`` extension alone)."""
    value, _, el = node
    if type(value) is not dict:
        return 0
    if el is None:
        pairs = next(iter(step.values()))
    else:
        info = el.info
        if info is None or info.name not in step:
            return 0
        pairs = step[info.name]
    total = 0
    for key, sub in pairs:
        counts = [0]
        for k in (key, "_" + key) if sub.kind == PRIMITIVE else (key,):
            v = value.get(k)
            if v is not None:
                counts.append(len(v) if type(v) is list else 1)
        total += max(counts)
    return total


def _check_rule(
    profile: CompiledProfile, rule: Rule, root: Node, resource: dict[str, Any], out: list[Issue]
) -> None:
    parents = [root]
    for step in rule.steps[:-1]:
        parents = [child for p in parents for child in _children(p, step)]
        if not parents:
            return
    where = profile.where
    if not rule.steps:
        nodes = [root]
    else:
        last = rule.steps[-1]
        nodes = []
        for parent in parents:
            if rule.min is not None or rule.max is not None:
                n = _count(parent, last)
                at = f"{parent[1]}.{rule.name}"
                if rule.min is not None and n < rule.min:
                    message = (
                        f"{rule.path}: minimum required = {rule.min}, but only found {n} {where}"
                    )
                    out.append(Issue("structure", message, expression=(at,)))
                if rule.max is not None and n > rule.max:
                    if rule.max == 0:
                        message = (
                            f"{rule.path}: the element is prohibited (max 0), but found {n} {where}"
                        )
                    else:
                        message = (
                            f"{rule.path}: maximum allowed = {rule.max}, but found {n} {where}"
                        )
                    out.append(Issue("structure", message, expression=(at,)))
            nodes.extend(_children(parent, last))
    for node in nodes:
        _check_value(rule, node, resource, where, out)
        if rule.constraints:
            _check_constraints(rule, node, resource, where, out)


def _check_slicing(
    profile: CompiledProfile,
    slicing: Slicing,
    root: Node,
    resource: dict[str, Any],
    out: list[Issue],
) -> None:
    """Each item of the sliced element goes to the first slice it matches: the slices'
    counts, the slicing's rules (closed, openAtEnd) and order, then each slice's rules
    on its items."""
    where = profile.where
    parents = [root]
    for step in slicing.steps[:-1]:
        parents = [child for p in parents for child in _children(p, step)]
    for parent in parents:
        items = list(_children(parent, slicing.steps[-1]))
        chosen = []
        missing = False
        for item in items:
            index = -1
            for i, sl in enumerate(slicing.slices):
                hit = _matches(profile, sl, slicing, item, resource)
                if hit is None:
                    missing = True
                    break
                if hit:
                    index = i
                    break
            chosen.append(index)
        if missing:
            message = (
                f"{slicing.path}: a profile named by its slices is not held by this server; "
                f"the slicing was not checked {where}"
            )
            at = f"{parent[1]}.{slicing.name}"
            out.append(Issue("not-supported", message, severity="warning", expression=(at,)))
            continue
        for i, piece in enumerate(slicing.slices):
            n = chosen.count(i)
            if n < piece.min:
                message = (
                    f"{slicing.path}:{piece.name}: minimum required = {piece.min}, "
                    f"but only found {n} {where}"
                )
                at = f"{parent[1]}.{slicing.name}"
                out.append(Issue("structure", message, expression=(at,)))
            if piece.max is not None and n > piece.max:
                message = (
                    f"{slicing.path}:{piece.name}: maximum allowed = {piece.max}, "
                    f"but found {n} {where}"
                )
                at = f"{parent[1]}.{slicing.name}"
                out.append(Issue("structure", message, expression=(at,)))
        last = -1
        for item, index in zip(items, chosen, strict=True):
            if index < 0:
                if slicing.rules == "closed":
                    message = (
                        f"{slicing.path}: this item matches none of the slices, and the "
                        f"slicing is closed {where}"
                    )
                    out.append(Issue("structure", message, expression=(item[1],)))
                continue
            if slicing.ordered and index < last:
                message = f"{slicing.path}: the slices are out of order {where}"
                out.append(Issue("structure", message, expression=(item[1],)))
            last = max(last, index)
            for rule in _after_match(slicing, slicing.slices[index]):
                _check_rule(profile, rule, item, resource, out)
            for inner in slicing.slices[index].slicings.values():
                if not inner.unusable:
                    _check_slicing(profile, inner, item, resource, out)
        if slicing.rules == "openAtEnd":
            unmatched = [i for i, c in enumerate(chosen) if c < 0]
            matched = [i for i, c in enumerate(chosen) if c >= 0]
            if unmatched and matched and unmatched[0] < matched[-1]:
                message = (
                    f"{slicing.path}: items that match no slice must come after the "
                    f"slices (openAtEnd) {where}"
                )
                out.append(Issue("structure", message, expression=(items[unmatched[0]][1],)))


def _after_match(slicing: Slicing, piece: Slice) -> list[Rule]:
    """The slice's rules an item that matched it must still be checked against: not a
    fixed or pattern value that a value or pattern discriminator compared already, on
    the item itself (``$this``) or on a single-valued element of it (the match found
    that one value equal, so it exists and is right: a ``min`` of 1 holds as well)."""
    if piece.after_match is None:
        compared = {key for kind, _, key in _parsed(slicing) if kind in ("value", "pattern")}

        def redundant(rule: Rule) -> bool:
            if rule.constraints or rule.max is not None:
                return False
            if not rule.steps:
                key, ok_min = "$this", rule.min is None
            elif len(rule.steps) == 1:
                single = all(not el.many for pairs in rule.steps[0].values() for _, el in pairs)
                key, ok_min = rule.name, single and (rule.min or 0) <= 1
            else:
                return False
            if not ok_min or key not in compared or key not in piece.values:
                return False
            how, wanted = piece.values[key]
            value, other = (
                (rule.fixed, rule.pattern) if how == "fixed" else (rule.pattern, rule.fixed)
            )
            if value is None or other is not None or not _equal(value[1], wanted):
                return False
            return not replace(rule, pattern=None, fixed=None).checks_value

        piece.after_match = [rule for rule in piece.rules if not redundant(rule)]
    return piece.after_match


def _check_value(
    rule: Rule, node: Node, resource: dict[str, Any], where: str, out: list[Issue]
) -> None:
    if not rule.checks_value:
        return
    value, path, el = node

    def fail(code: str, what: str) -> None:
        out.append(Issue(code, f"{rule.path}: {what} {where}", expression=(path,)))

    if rule.types is not None and el is not None:
        actual = el.type_name
        if el.kind == RESOURCE and type(value) is dict:
            actual = str(value.get("resourceType"))
        if actual not in rule.types:
            allowed = ", ".join(sorted(rule.types))
            fail("structure", f"the type {actual} is not allowed here (allowed: {allowed})")
    if rule.fixed is not None and not _equal(value, rule.fixed[1]):
        fail("value", f"the value must be exactly {rule.fixed[0]} {_show(rule.fixed[1])}")
    if rule.pattern is not None and not _contains(value, rule.pattern[1]):
        fail("value", f"the value must match {rule.pattern[0]} {_show(rule.pattern[1])}")
    if rule.max_length is not None and isinstance(value, str) and len(value) > rule.max_length:
        fail(
            "value",
            f"the value is {len(value)} characters long, more than maxLength {rule.max_length}",
        )
    for limit, sign, side in ((rule.min_value, -1, "below"), (rule.max_value, 1, "above")):
        if limit is not None and _compare(value, limit) == sign:
            name = ("minValue" if sign < 0 else "maxValue") + limit[0]
            fail("value", f"the value {_show(value)} is {side} {name} {_show(limit[1])}")
    if rule.targets is not None and type(value) is dict:
        target = reference_type(value, resource)
        if target is not None and target not in rule.targets:
            allowed = ", ".join(sorted(rule.targets))
            fail(
                "structure",
                f"the reference points to a {target}, but the profile allows only {allowed}",
            )


def _show(value: Any) -> str:
    """A value in a message, as compact JSON."""
    try:
        return dumps(value).decode()
    except Exception:  # only a message
        return json.dumps(value, default=str)


def _equal(value: Any, fixed: Any) -> bool:
    """Exact equality, JSON-wise (a boolean never equals a number)."""
    if type(fixed) is bool or type(value) is bool:
        return type(value) is type(fixed) and value == fixed
    if isinstance(fixed, dict):
        return (
            isinstance(value, dict)
            and value.keys() == fixed.keys()
            and all(_equal(value[k], fixed[k]) for k in fixed)
        )
    if isinstance(fixed, list):
        return (
            isinstance(value, list)
            and len(value) == len(fixed)
            and all(_equal(a, b) for a, b in zip(value, fixed, strict=True))
        )
    if isinstance(fixed, (int, Decimal)) and not isinstance(value, (int, Decimal)):
        return False
    return bool(value == fixed)


def _contains(value: Any, pattern: Any) -> bool:
    """The instance holds the pattern (elementdefinition-definitions.html#
    ElementDefinition.pattern_x_): every property of the pattern, recursively; an array
    in the pattern: each of its items matched by some item of the instance's array."""
    # loops rather than all()/any() over generators: this runs for every item of every
    # slicing with a pattern discriminator
    if type(pattern) is dict:
        if type(value) is not dict:
            return False
        for k, p in pattern.items():  # noqa: SIM110 (see above)
            if not _contains(value.get(k), p):
                return False
        return True
    if type(pattern) is list:
        if type(value) is not list:
            return False
        for p in pattern:
            for v in value:
                if _contains(v, p):
                    break
            else:
                return False
        return True
    if value is None:
        return False
    if type(value) is str and type(pattern) is str:
        return value == pattern
    return _equal(value, pattern)


def _compare(value: Any, limit: tuple[str, Any]) -> int:
    """-1 when the value is below the limit, 1 above, 0 otherwise (or not comparable)."""
    kind, bound = limit
    try:
        if kind in ("Integer", "Decimal", "PositiveInt", "UnsignedInt", "Integer64"):
            if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
                return (value > bound) - (value < bound)
        elif kind in ("Date", "DateTime", "Instant"):
            if isinstance(value, str) and isinstance(bound, str):
                return _compare_dates(value, bound)
        elif kind == "Time":
            if isinstance(value, str) and isinstance(bound, str):
                return (value > bound) - (value < bound)
        elif kind == "Quantity" and isinstance(value, dict) and isinstance(bound, dict):
            v, b = value.get("value"), bound.get("value")
            if not isinstance(v, (int, Decimal)) or not isinstance(b, (int, Decimal)):
                return 0
            if "code" in bound and (
                value.get("code") != bound.get("code") or value.get("system") != bound.get("system")
            ):
                return 0  # different units: not compared (no UCUM conversion)
            return (v > b) - (v < b)
    except (TypeError, ValueError):
        return 0
    return 0


def _compare_dates(value: str, bound: str) -> int:
    """Wholly below (-1) or above (1) the limit's range; 0 when they overlap."""
    low, high = parse_range(value)
    b_low, b_high = parse_range(bound)
    return -1 if high <= b_low else 1 if low >= b_high else 0


def _check_constraints(
    rule: Rule, node: Node, resource: dict[str, Any], where: str, out: list[Issue]
) -> None:
    """The rule's invariants on one instance. The type the expressions are compiled for
    is found once per instance; messages are only built for a failure (this loop runs
    for every resource a profile with invariants checks)."""
    value, path, el = node
    type_name = el.type_name if el is not None else None
    if type_name is None and value is resource:
        type_name = resource.get("resourceType")
    for c in rule.constraints:
        if c.parsed is None:
            message = f"{_label(rule, c)} has an expression that cannot be parsed {where}"
            out.append(Issue("invariant", message, severity="warning", expression=(path,)))
            continue
        try:
            fast = c.fast[type_name]
        except KeyError:
            fast = c.fast[type_name] = compile_fhirpath(c.expression, type_name)
        try:
            if fast is None:
                ok = _evaluate(c, value, el, resource)
            else:
                try:
                    ok = fast(value, resource, resource) == [True]
                except Unsupported:  # this instance is fhirpathpy's
                    ok = _evaluate(c, value, el, resource)
        except Exception as exc:  # an engine failure is reported, not raised
            log.warning("constraint %s of %s failed: %s", c.key, rule.path, exc)
            message = f"{_label(rule, c)} could not be evaluated ({type(exc).__name__}) {where}"
            out.append(Issue("invariant", message, severity="warning", expression=(path,)))
            continue
        if not ok:
            message = f"{_label(rule, c)} failed {where}"
            out.append(Issue("invariant", message, severity=c.severity, expression=(path,)))


def _label(rule: Rule, c: Constraint) -> str:
    return f"{rule.path}: constraint {c.key} ({c.human or c.expression})"


def _evaluate(c: Constraint, value: Any, el: Element | None, resource: dict[str, Any]) -> bool:
    """The constraint holds by fhirpathpy: the expression gives true (empty or false is
    a failure, as the HL7 validator's evaluateToBoolean has it). For what the compiled
    subset (validation/fhirpath.py) does not cover."""
    from fhirpathpy import apply_parsed_path
    from fhirpathpy.engine.nodes import ResourceNode
    from fhirpathpy.models import models

    target = value
    if el is not None and (el.kind == PRIMITIVE or type(value) is dict):
        # typed, so that ``$this as dateTime`` or ``ofType(Quantity)`` see the type
        target = ResourceNode.create_node(value, el.type_name)
    context = {"resource": resource, "rootResource": resource}
    result = apply_parsed_path(target, c.parsed, context, models["r4"], {"returnRawData": True})
    return isinstance(result, list) and result == [True]
