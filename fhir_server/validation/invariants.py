"""The FHIRPath invariants of R4 (the StructureDefinitions' ``constraint``s) on a resource.

definitions/constraints.json (tools/generate_constraints.py, which lists what is skipped
and excluded and why) gives, per type of the element model, its constraints and the
children each sits on. The structural walk records every object whose type has some
that concern it (``Walk.sites``, ``TypeConstraints.concerns``); ``check_invariants``
then evaluates each constraint on each such instance, reporting a failure as an
``invariant`` issue ("<key>: <human>") of the constraint's severity, at the FHIRPath of
the instance (``Observation.referenceRange[0]``).

Cost (validating must stay cheap, benchmarks/validation.py): nothing is evaluated where
the constraint's element is absent; a constraint whose guard child is absent, or whose
``x.exists()`` term is present, is settled without evaluation (the walk does not even
record such an instance: a Quantity with a system, a Reference that is not local); the
constraints met on nearly every resource (dom-2..dom-6, ref-1, qty-3, per-1, con-4/5,
ait-1/2, org-1..3, ...: see NATIVE) are implemented here; the rest go to fhirpathpy,
each expression parsed once. On the Synthea sample this leaves ~25,000 instances to
look at among ~520,000 objects, and no fhirpathpy evaluation at all. Best-practice
constraints (dom-6, con-3) only run for $validate.

Conformance: a constraint that cannot be evaluated (the engine raises, or the result is
empty, e.g. a comparison of dates of different precision) reports nothing: no false
errors. %resource is the resource the instance is in, %rootResource its container when
it is contained. Two readings differ from the letter of the 4.0.1 expressions: ref-1
accepts ``#`` (a contained resource referring to its container, references.html#contained,
which the 4.0.1 expression forgets), and dom-6 (narrative) is not asked of contained
resources, which the container's narrative covers. dom-3's native reading counts any
string '#id' in the resource as a reference to the contained resource (the expression
counts Reference.reference and canonical/uri/url values): never stricter than it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from fhir_server.outcome import Issue
from fhir_server.validation.fhirpath import Unsupported, compile_fhirpath
from fhir_server.validation.model import PRIMITIVE, TypeInfo

log = logging.getLogger(__name__)

# (value, its FHIRPath, its type's constraints)
Site = tuple[dict[str, Any], str, "TypeConstraints"]
# native(instance, resource, root) -> passes
Native = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    severity: str
    message: str  # "<key>: <human>"
    expression: str
    type_name: str  # the type of the instance it is evaluated on
    guard: tuple[tuple[str, ...], ...]  # JSON keys of children whose absence settles it
    present: tuple[str, ...]  # JSON keys whose presence settles it
    native: Native | None
    best_practice: bool = False  # a recommendation (dom-6, con-3): $validate only
    direct: Native | None = None  # ``native``, which needs no guard or presence checked


@dataclass(frozen=True, slots=True)
class TypeConstraints:
    always: tuple[Constraint, ...]  # on the type itself, with no guard: always evaluated
    advice: tuple[Constraint, ...]  # best-practice ones (dom-6, con-3): $validate only
    guarded: tuple[Constraint, ...]  # on the type itself, each with a guard
    triggers: frozenset[str]  # keys one of which a guarded constraint needs present
    # (JSON key, FHIRPath name, is a primitive, constraints): constraints on a child
    children: tuple[tuple[str, str, bool, tuple[Constraint, ...]], ...]
    # "": every instance is looked at; else only one whose value of this key is a string
    # starting with ``wanted_prefix`` (a Reference: ref-1 concerns local references only)
    wanted_key: str = ""
    wanted_prefix: str = ""
    unconditional: bool = False  # always or children: every instance is looked at
    # keys whose presence settles every guarded constraint (qty-3's system): such an
    # instance is not looked at either
    settled: frozenset[str] = frozenset()

    def concerns(self, value: dict[str, Any], advice: bool) -> bool:
        """Whether ``value`` has anything to check (the walk records it only then)."""
        if self.unconditional or (advice and self.advice):
            if not self.wanted_key:
                return True
            wanted = value.get(self.wanted_key)
            return type(wanted) is str and wanted.startswith(self.wanted_prefix)
        return not self.triggers.isdisjoint(value) and self.settled.isdisjoint(value)


def check_invariants(
    sites: list[Site],
    resource: dict[str, Any],
    root: dict[str, Any],
    contained: bool,
    best_practice: bool = False,
) -> list[Issue]:
    """The failed invariants of the instances recorded by the walk of ``resource``
    (with the best-practice recommendations if ``best_practice``)."""
    issues: list[Issue] = []
    for value, path, table in sites:
        for c in table.advice if best_practice else ():
            if not (contained and c.key == "dom-6") and not _passes(c, value, resource, root):
                issues.append(Issue("invariant", c.message, c.severity, (path,)))
        for c in table.always:
            if c.direct is not None:  # a native check with nothing to look at first
                try:
                    if c.direct(value, resource, root):
                        continue
                except (TypeError, AttributeError):  # a shape the walk reports: no verdict
                    continue
            elif _passes(c, value, resource, root):
                continue
            issues.append(Issue("invariant", c.message, c.severity, (path,)))
        if table.guarded and not table.triggers.isdisjoint(value):
            for c in table.guarded:
                if c.direct is not None:
                    try:
                        if c.direct(value, resource, root):
                            continue
                    except (TypeError, AttributeError):  # the walk reports the shape
                        continue
                elif _passes(c, value, resource, root):
                    continue
                issues.append(Issue("invariant", c.message, c.severity, (path,)))
        for key, name, primitive, constraints in table.children:
            child = value.get(key)
            if child is None:
                continue
            items = child if type(child) is list else [child]
            for i, item in enumerate(items):
                if (type(item) is dict) is primitive:
                    continue  # a wrong shape, which the walk reports
                where = f"{path}.{name}[{i}]" if type(child) is list else f"{path}.{name}"
                for c in constraints:
                    if not _passes(c, item, resource, root):
                        issues.append(Issue("invariant", c.message, c.severity, (where,)))
    return issues


def _passes(c: Constraint, value: dict[str, Any], resource: Any, root: Any) -> bool:
    for keys in c.guard:
        for k in keys:
            if k in value:
                break
        else:
            return True
    for k in c.present:
        if k in value:
            return True
    if c.native is not None:
        try:
            return c.native(value, resource, root)
        except (TypeError, AttributeError):  # a shape the walk reports: no verdict
            return True
    return _evaluate(c, value, resource, root)


def _evaluate(c: Constraint, value: dict[str, Any], resource: Any, root: Any) -> bool:
    """fhirpathpy's verdict: fails only on a result of exactly ``false`` (from the
    compiled expression when validation/fhirpath.py covers it and the instance)."""
    fast = compile_fhirpath(c.expression, c.type_name)
    if fast is not None:
        try:
            result = fast(value, resource, root)
            return not (len(result) == 1 and result[0] is False)
        except Unsupported:
            pass
    from fhirpathpy import apply_parsed_path
    from fhirpathpy.engine.nodes import ResourceNode
    from fhirpathpy.models import models

    node = value if value is resource else ResourceNode.create_node(value, c.type_name)
    context = {"resource": resource, "rootResource": root}
    options = {"returnRawData": True, "userInvocationTable": _functions(), "traceFn": _quiet}
    try:
        result = apply_parsed_path(node, _parsed(c.expression), context, models["r4"], options)
    except Exception as exc:  # cannot be evaluated: no verdict, no false error
        log.debug("invariant %s not evaluated: %s", c.key, exc)
        return True
    return not (len(result) == 1 and result[0] is False)


def _quiet(label: str, value: Any) -> None:
    """trace() (ref-1, dom-3, que-1, sdf-16 use it) would print to stdout."""


@lru_cache(maxsize=512)
def _parsed(expression: str) -> Any:
    from fhirpathpy.parser import parse

    return parse(expression)


@cache
def _functions() -> dict[str, Any]:
    """The FHIR functions of the expressions that fhirpathpy 2.x lacks."""
    from fhirpathpy.engine.nodes import ResourceNode

    def data(item: Any) -> Any:
        return item.data if isinstance(item, ResourceNode) else item

    def has_value(inputs: list[Any]) -> list[bool]:
        return [len(inputs) == 1 and data(inputs[0]) is not None]

    def resolve(inputs: list[Any]) -> list[Any]:
        """A stand-in of the referenced type (only ``ofType``/``is`` tests read it)."""
        out = []
        for item in inputs:
            ref = data(item)
            reference = ref.get("reference") if isinstance(ref, dict) else None
            if isinstance(reference, str):
                m = _TYPED_REFERENCE.search(reference)
                if m:
                    out.append(ResourceNode.create_node({"resourceType": m.group(1)}))
        return out

    return {
        "hasValue": {"fn": has_value, "arity": {0: []}},
        "resolve": {"fn": resolve, "arity": {0: []}},
    }


_TYPED_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


# --- native implementations ---------------------------------------------------------


def _dom2(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """contained.contained.empty()"""
    return not any(type(c) is dict and "contained" in c for c in value.get("contained", ()))


def _contained_meta(value: dict[str, Any], keys: tuple[str, ...]) -> bool:
    for c in value.get("contained", ()):
        meta = c.get("meta") if type(c) is dict else None
        if type(meta) is dict and any(k in meta or "_" + k in meta for k in keys):
            return False
    return True


def _dom4(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()"""
    return _contained_meta(value, ("versionId", "lastUpdated"))


def _dom5(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """contained.meta.security.empty()"""
    return _contained_meta(value, ("security",))


def _unreferenced(value: Any, targets: set[str]) -> None:
    """Remove from ``targets`` every string found in ``value``, stopping once none is left."""
    if type(value) is str:
        targets.discard(value)
    elif type(value) is dict:
        for v in value.values():
            if type(v) is not str or v in targets:  # skip the common plain strings fast
                _unreferenced(v, targets)
                if not targets:
                    return
    elif type(value) is list:
        for v in value:
            _unreferenced(v, targets)
            if not targets:
                return


def _dom3(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """Every contained resource is referenced from elsewhere in the resource, or refers
    to the container ('#'). Any string equal to '#id' counts as a reference (the
    expression counts Reference.reference and canonical/uri/url values): never stricter."""
    contained = [c for c in value.get("contained", ()) if type(c) is dict]
    targets = {"#" + str(c.get("id")) for c in contained}
    rest = {k: v for k, v in value.items() if k != "contained"}
    _unreferenced(rest, targets)
    _unreferenced(contained, targets)  # contained resources may refer to each other
    for c in contained:
        if "#" + str(c.get("id")) in targets:
            back = {"#"}
            _unreferenced(c, back)
            if back:
                return False
    return True


def _dom6(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """text.`div`.exists()"""
    text = value.get("text")
    return type(text) is dict and "div" in text


def _ref1(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """reference.startsWith('#').not() or reference.substring(1) in %rootResource.contained.id
    (and '#' alone: the container)."""
    reference = value.get("reference")
    if type(reference) is not str or reference[:1] != "#" or reference == "#":
        return True
    ids = {c.get("id") for c in root.get("contained", ()) if type(c) is dict}
    return reference[1:] in ids


def _qty3(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """code.empty() or system.exists()"""
    if "code" not in value and "_code" not in value:
        return True
    return "system" in value or "_system" in value


_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


def _per1(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """start.hasValue().not() or end.hasValue().not() or (start <= end), natively when
    both are dates of the same precision or dateTimes with a time zone; otherwise
    (mixed precision, where FHIRPath compares component by component) fhirpathpy."""
    start, end = value.get("start"), value.get("end")
    if type(start) is not str or type(end) is not str:
        return True  # no value (only _start/_end) or not a string: the walk reports that
    if len(start) == len(end) and "T" in start and start[-6:] == end[-6:]:
        return start <= end  # the same shape and zone: the text orders as the time does
    if _DATE.match(start) and _DATE.match(end) and len(start) == len(end):
        return start <= end
    if "T" in start and "T" in end:
        try:
            a = datetime.fromisoformat(start.replace("Z", "+00:00"))
            b = datetime.fromisoformat(end.replace("Z", "+00:00"))
        except ValueError:
            return True  # malformed: the walk reports it
        if a.tzinfo is not None and b.tzinfo is not None:
            return a <= b
    return _evaluate(_PER1_FALLBACK, value, resource, root)


def _eld3(value: Any, resource: Any, root: Any) -> bool:
    """On ElementDefinition.max: empty() or ($this = '*') or (toInteger() >= 0); a string
    that is no integer converts to empty: no verdict."""
    if type(value) is not str or not re.fullmatch(r"[+-]?[0-9]+", value):
        return True
    return int(value) >= 0


def _ext1(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """extension.exists() != value.exists(), its "neither" half: the structural walk
    reports an extension with both (structure.py)."""
    return "extension" in value or any(k[:5] == "value" for k in value)


def _has_coding(concept: Any, system: str, codes: tuple[str, ...]) -> bool:
    """``concept.coding.where(system = S and code in codes).exists()``"""
    if type(concept) is not dict:
        return False
    return any(
        type(c) is dict and c.get("system") == system and c.get("code") in codes
        for c in concept.get("coding", ())
    )


_CONDITION_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_ALLERGY_VER = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
_ERROR = ("entered-in-error",)


def _con4(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """abatement.empty() or clinicalStatus.coding.where(system = condition-clinical and
    (code='resolved' or code='remission' or code='inactive')).exists()"""
    if not any(k.startswith(("abatement", "_abatement")) for k in value):
        return True
    codes = ("resolved", "remission", "inactive")
    return _has_coding(value.get("clinicalStatus"), _CONDITION_CLINICAL, codes)


def _con5(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """verificationStatus.coding.where(system = condition-ver-status and
    code='entered-in-error').empty() or clinicalStatus.empty()"""
    if "clinicalStatus" not in value:
        return True
    return not _has_coding(value.get("verificationStatus"), _CONDITION_VER, _ERROR)


def _ait1(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """verificationStatus.coding.where(system = allergyintolerance-verification and
    code = 'entered-in-error').exists() or clinicalStatus.exists()"""
    return "clinicalStatus" in value or _has_coding(
        value.get("verificationStatus"), _ALLERGY_VER, _ERROR
    )


def _ait2(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """verificationStatus.coding.where(... 'entered-in-error').empty() or clinicalStatus.empty()"""
    return "clinicalStatus" not in value or not _has_coding(
        value.get("verificationStatus"), _ALLERGY_VER, _ERROR
    )


def _org1(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """(identifier.count() + name.count()) > 0"""
    return "identifier" in value or "name" in value or "_name" in value


def _not_home(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """org-2, org-3 (on each address, telecom): where(use = 'home').empty()"""
    return value.get("use") != "home"


def _tim5(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """period.exists() implies period >= 0"""
    period = value.get("period")
    return type(period) is bool or not isinstance(period, (int, float, Decimal)) or period >= 0


def _que7(value: dict[str, Any], resource: Any, root: Any) -> bool:
    """operator = 'exists' implies (answer is Boolean): natively, because fhirpathpy
    types answerBoolean as FHIR.boolean, never System.Boolean, and so fails every
    valid 'exists' (the HL7 validator reads Boolean as the FHIR primitive here)."""
    return value.get("operator") != "exists" or "answerBoolean" in value


# Types whose instances rarely need a look, and which do: of the hundred thousand
# References in the Synthea sample, a handful are local.
WANTED: dict[str, tuple[str, str]] = {"Reference": ("reference", "#")}


NATIVE: dict[str, Native] = {
    "ext-1": _ext1,
    "eld-3": _eld3,
    "con-4": _con4,
    "con-5": _con5,
    "ait-1": _ait1,
    "ait-2": _ait2,
    "org-1": _org1,
    "org-2": _not_home,
    "org-3": _not_home,
    "tim-5": _tim5,
    "dom-2": _dom2,
    "dom-3": _dom3,
    "dom-4": _dom4,
    "dom-5": _dom5,
    "dom-6": _dom6,
    "ref-1": _ref1,
    "qty-3": _qty3,
    "per-1": _per1,
    "que-7": _que7,
}
_PER1_FALLBACK = Constraint(
    "per-1",
    "error",
    "",
    "start.hasValue().not() or end.hasValue().not() or (start <= end)",
    "Period",
    (),
    (),
    None,
)


# --- loading -------------------------------------------------------------------------


@cache
def raw_constraints() -> dict[str, Any]:
    text = resources.files("fhir_server.definitions").joinpath("constraints.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


# Checked by their own modules, with finer expressions (Bundle.entry[1].request rather
# than Bundle): the Bundle invariants (bundle_rules.py) and att-1 (attachments.py).
ELSEWHERE = frozenset({*(f"bdl-{n}" for n in range(1, 13)), "att-1"})


def attach_constraints(types: dict[str, TypeInfo], resource_names: frozenset[str]) -> None:
    """Set ``TypeInfo.constraints`` of every type that has some (but ELSEWHERE's)."""
    raw = raw_constraints()
    table: dict[str, list[list[Any]]] = raw["types"]
    domain = table.get("DomainResource", [])
    not_domain = set(raw["notDomainResource"])
    best_practice = frozenset(raw["bestPractice"])
    for name, info in types.items():
        rows = [r for r in table.get(name, []) if r[1] not in ELSEWHERE]
        if name in resource_names and name not in not_domain:
            rows = domain + rows
        if rows:
            info.constraints = _type_constraints(info, rows, best_practice)


def _type_constraints(
    info: TypeInfo, rows: list[list[Any]], best_practice: frozenset[str]
) -> TypeConstraints:
    own: list[Constraint] = []
    children: dict[str, list[Constraint]] = {}
    type_name = FHIRPATH_TYPES.get(info.name, info.name)
    for child, key, severity, human, expression, guard, present in rows:
        if not child:
            c = _constraint(info, type_name, key, severity, human, expression, guard, present)
            own.append(c if key not in best_practice else replace(c, best_practice=True))
            continue
        for json_key, el in info.elements.items():
            # on a primitive: eld-3 alone (on ElementDefinition.max), which is native
            if (el.group or el.name) == child and (el.kind != PRIMITIVE or key in NATIVE):
                c = _constraint(info, el.type_name, key, severity, human, expression, [], [])
                children.setdefault(json_key, []).append(c)
    names = {k: info.elements[k].fhirpath for k in children}
    guarded = tuple(c for c in own if c.guard and not c.best_practice)
    always = tuple(c for c in own if not c.guard and not c.best_practice)
    return TypeConstraints(
        always,
        tuple(c for c in own if c.best_practice),
        guarded,
        frozenset(k for c in guarded for k in c.guard[0]),
        tuple(
            (k, names[k], info.elements[k].kind == PRIMITIVE, tuple(cs))
            for k, cs in children.items()
        ),
        *WANTED.get(info.name, ("", "")),
        bool(always or children),
        frozenset.intersection(*(frozenset(c.present) for c in guarded))
        if guarded
        else frozenset(),
    )


# Types fhirpathpy's R4 model knows by their base name.
FHIRPATH_TYPES = {"SimpleQuantity": "Quantity", "MoneyQuantity": "Quantity"}


def _constraint(
    info: TypeInfo,
    type_name: str,
    key: str,
    severity: str,
    human: str,
    expression: str,
    guard: list[str],
    present: list[str],
) -> Constraint:
    native = NATIVE.get(key)
    return Constraint(
        key,
        severity,
        f"{key}: {human}",
        expression,
        type_name,
        tuple(_json_keys(info, g) for g in guard),
        tuple(k for p in present for k in _json_keys(info, p)),
        native,
        direct=native,
    )


def _json_keys(info: TypeInfo, name: str) -> tuple[str, ...]:
    """The JSON keys of child ``name``: a choice's every type, a primitive's ``_name``."""
    keys = info.choice_groups.get(name, (name,))
    out: list[str] = []
    for k in keys:
        out.append(k)
        el = info.elements.get(k)
        if el is not None and el.kind == PRIMITIVE:
            out.append("_" + k)
    return tuple(out)
