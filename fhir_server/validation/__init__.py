"""Validation of incoming resources against the FHIR R4 (4.0.1) base specification.

``validate_resource`` returns the problems as ``Issue`` objects (an empty list means
valid) and never raises: the caller turns errors into a 400 OperationOutcome and
``$validate`` returns the list as is. The passes over every resource:

1. structure.py, driven by elements.json (generated from the 4.0.1 StructureDefinitions):
   the FHIR JSON rules fhir.resources is lax about (primitive JSON types, arrays exactly
   where elements repeat, no empty objects/arrays/strings, null only as a placeholder in
   primitive arrays paired with ``_name``, unknown properties, one type per choice,
   min-1 elements, required code bindings where the value set can be enumerated) and,
   given a ``BindingContext`` (the server's terminology), the required and extensible
   bindings of code, Coding and CodeableConcept elements (bindings.py), and the
   Attachment rules (att-1, size and hash agreeing with data: attachments.py).
2. bundle_rules.py, on Bundles only: the Bundle invariants bdl-1 .. bdl-12 and the
   fullUrl rules (absolute, agreeing with Resource.id).
3. invariants.py, on $validate always and on writes unless FHIR_VALIDATE_INVARIANTS is
   off: the FHIRPath invariants (``constraint``s) of the StructureDefinitions, from
   constraints.json, on the instances the walk recorded; dom-2..dom-5 are checked on
   the container, each nested resource gets its own (with %rootResource the container,
   when contained).
4. r4b.py, only with FHIR_VALIDATE_R4B_MODELS: the fhir.resources R4B pydantic models,
   with errors R4 contradicts dropped and ones already reported not repeated. The
   structural pass covers what it finds (calendar dates included), which
   tests/test_validation_differential.py checks over generated invalid resources.

Nested resources (contained, Bundle.entry.resource, Bundle.entry.response.outcome,
Parameters.parameter.resource) are validated as resources of their own type, with
expressions such as ``Bundle.entry[3].resource.status``.

R4 vs R4B, as found by tools/generate_definitions.py comparing the R4B models with the
R4 elements (elements.json ``r4bDifferences``, regenerated with the definitions):

- No R4B model (R4-only types): EffectEvidenceSynthesis, RiskEvidenceSynthesis, the ten
  MedicinalProduct* types, SubstanceNucleicAcid, SubstancePolymer, SubstanceProtein,
  SubstanceReferenceInformation, SubstanceSourceMaterial, SubstanceSpecification, and the
  SubstanceAmount datatype (used only by SubstancePolymer).
- Reshaped in R4B: Evidence (R4 exposureBackground, exposureVariant, outcome, name,
  shortTitle, copyright, effectivePeriod, jurisdiction, ... are gone) and
  EvidenceVariable (approvalDate, characteristic.definition[x] types,
  participantEffective[x], timeFromStart is a backbone in R4B, ...).
  These and the R4-only types are checked by the structural pass alone.
- Everything else keeps its R4 elements with the same types, repetition and
  requiredness in R4B (DeviceDefinition, Subscription, ... included); R4B only adds
  elements and types, which the structural pass rejects as unknown in R4.
- Datatypes: R4 Extension.value[x] and ElementDefinition's fixed/pattern/defaultValue/
  example value[x] allow Meta, R4B does not; fhir.resources types ``uuid`` as a version-4
  UUID where R4 accepts any ``urn:uuid:`` (both ignored in the R4B pass).
- Required bindings: the R4B models' enum lists agree with the R4 value sets wherever
  both exist (fhir.resources does not enforce them anyway).

Other differences met on the way: fhir.resources silently drops a ``resource_type`` key
(reported here as unknown), and raises KeyError on a nested resource of an unknown type
(never reached: nested resources are stripped before the R4B pass). The medplum copy of
the definitions is not pristine 4.0.1 (medplum Meta fields, R5 back-ports in
EvidenceVariable, ResearchStudy, DeviceDefinition, ...); the generator undoes that.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from fhir_server.outcome import Issue
from fhir_server.resource_types import is_resource_type
from fhir_server.validation.bindings import BindingContext
from fhir_server.validation.bundle_rules import bundle_issues
from fhir_server.validation.invariants import check_invariants
from fhir_server.validation.model import Model, model
from fhir_server.validation.primitives import json_kind
from fhir_server.validation.r4b import r4b_issues
from fhir_server.validation.structure import IssueLimitReached, Issues, Walk

__all__ = ["DEFAULT_MAX_ISSUES", "BindingContext", "validate_resource"]

log = logging.getLogger(__name__)

# A nested resource waiting for its turn: value, FHIRPath, depth, inside "contained",
# and its %rootResource (the container's, for a contained resource; else itself).
Pending = tuple[Any, str, int, bool, Any]


# Issues collected before validation stops (Settings.validation_max_issues).
DEFAULT_MAX_ISSUES = 1000


def validate_resource(
    resource: Any,
    expected_type: str | None = None,
    *,
    r4b_models: bool = False,
    max_issues: int = DEFAULT_MAX_ISSUES,
    bindings: BindingContext | None = None,
    seen: Seen | None = None,
    invariants: bool = True,
    best_practice: bool = False,
) -> list[Issue]:
    """The problems in ``resource`` as an R4 resource (of ``expected_type``, if given).

    ``r4b_models`` adds the fhir.resources pass (FHIR_VALIDATE_R4B_MODELS): the structural
    pass alone catches everything it does for R4 (tests/test_validation_differential.py)
    at a fraction of its cost, so it is off by default. After ``max_issues`` issues the
    validation stops, and a last informational issue (code too-costly) says so: a body
    of a million bad values costs no more than one of a thousand. ``bindings``: the
    terminology the binding checks read (None: only enumerated required code bindings).
    ``seen`` learns whether the resource has extensions, so that the extension checks
    (profiles/extensions.py) need not walk it again when it has none. ``invariants``:
    evaluate the FHIRPath constraints too (FHIR_VALIDATE_INVARIANTS); ``best_practice``:
    with the best-practice ones (dom-6, con-3: warnings, for $validate)."""
    issues: list[Issue] = []
    out = Issues(issues, max_issues)
    if seen is not None:
        seen.extensions = True  # until the walk completes
    try:
        checks = (invariants, invariants and best_practice)
        _validate(resource, expected_type, r4b_models, out, bindings, checks)
        if seen is not None:
            seen.extensions = out.extended
    except IssueLimitReached:
        message = f"Validation stopped after {max_issues} issues; there may be more"
        issues.append(Issue("too-costly", message, severity="information"))
    except Exception as exc:  # never crash on input: report it
        log.exception("validation failed")
        message = f"The resource could not be validated ({type(exc).__name__})"
        return [Issue("exception", message)]
    return issues


@dataclass(slots=True)
class Seen:
    """What one validation met, for the passes after it."""

    extensions: bool = True  # the resource may have extensions


def _validate(
    resource: Any,
    expected_type: str | None,
    r4b_models: bool,
    out: Issues,
    bindings: BindingContext | None,
    invariants: tuple[bool, bool] = (True, False),
) -> None:
    m = model()
    issues = top_level_issues(resource, expected_type)
    if issues:
        out.extend(issues)
        return
    queue: deque[Pending] = deque([(resource, "", 0, False, resource)])
    while queue:
        check_resource(m, queue.popleft(), queue, out, r4b_models, bindings, invariants)


def top_level_issues(resource: Any, expected_type: str | None) -> list[Issue]:
    if expected_type is None or not isinstance(resource, dict):
        return []
    actual = resource.get("resourceType")
    if isinstance(actual, str) and actual != expected_type:
        message = f"Expected a {expected_type} resource, got resourceType {actual!r}"
        return [Issue("invalid", message)]
    return []


def check_resource(
    m: Model,
    pending: Pending,
    queue: deque[Pending],
    out: Issues,
    r4b_models: bool = False,
    bindings: BindingContext | None = None,
    invariants: tuple[bool, bool] = (True, False),
) -> None:
    """The passes over one resource; its nested resources join the queue. ``invariants``:
    (evaluate the FHIRPath constraints, with the best-practice ones)."""
    resource, path, depth, contained, root = pending
    resource_type, problem = resource_type_of(resource, path)
    if problem is not None:
        out.append(problem)
        return
    path = path or resource_type
    info = m.types[resource_type]
    walk = Walk(m.types["Element"], out, bindings, *invariants)
    try:
        walk.object(resource, info, path, depth)
        if contained and "contained" in resource and not invariants[0]:  # else dom-2 says it
            walk.error("invalid", "A contained resource must not contain resources (dom-2)", path)
        if resource_type == "Bundle":
            out.extend(bundle_issues(resource, path))
    finally:
        if walk.nested:
            queue.extend((v, p, d, c, root if c else v) for v, p, d, c in walk.nested)
    if walk.sites and not walk.malformed:
        for issue in check_invariants(walk.sites, resource, root, contained, invariants[1]):
            out.append(issue)
            if issue.severity == "error":
                walk.found.append(issue)
    if r4b_models and resource_type not in m.r4b_unusable and not walk.malformed:
        out.extend(r4b_issues(resource, info, path, walk.found, out.remaining + 1))


def resource_type_of(resource: Any, path: str) -> tuple[str, Issue | None]:
    """The resourceType, or the issue that stops this resource from being checked."""
    where = (path,) if path else ()
    if not isinstance(resource, dict):
        message = f"A resource must be a JSON object, not {json_kind(resource)}"
        return "", Issue("structure", message, expression=where)
    resource_type = resource.get("resourceType")
    if resource_type is None:
        return "", Issue("required", "Missing resourceType", expression=where)
    if type(resource_type) is not str:
        message = f"resourceType must be a string, not {json_kind(resource_type)}"
        return "", Issue("structure", message, expression=where)
    if not is_resource_type(resource_type):
        message = f"{resource_type!r} is not an R4 (4.0.1) resource type"
        return "", Issue("not-supported", message, expression=where)
    return resource_type, None
