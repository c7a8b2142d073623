"""The fhir.resources pass: the R4B pydantic models, read as R4.

fhir.resources 8 ships no R4 models; R4B is wire-compatible for most types. The
resources whose own R4 elements are missing or typed differently in R4B are listed in
elements.json (``r4bDifferences``) and skip this pass. For the rest, errors the R4
definitions contradict are dropped: properties R4 knows (Extension.valueMeta),
elements R4 does not require, and ``uuid`` values (R4B insists on version-4 UUIDs).
Nested resources are stripped before validation: the structural pass queues each to be
validated as a resource of its own type, which also keeps R4-only types inside a Bundle
away from the R4B models.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from typing import Any

from pydantic import ValidationError

from fhir_server.outcome import Issue
from fhir_server.validation.model import COMPLEX, PRIMITIVE, TypeInfo, model

log = logging.getLogger(__name__)

CHOICE_LIST = re.compile(r"from this list \[([^\]]*)\]")
QUOTED = re.compile(r"'([^']+)'")


@cache
def model_class(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def r4b_issues(
    resource: dict[str, Any],
    info: TypeInfo,
    path: str,
    found: list[Issue],
    limit: int = 1 << 62,
) -> list[Issue]:
    """Issues fhir.resources finds that the structural pass did not (``found``), at
    most ``limit`` of them."""
    try:
        model_class(info.name).model_validate(strip_resources(resource, info))
        return []
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
    except Exception as exc:  # a library bug must not fail the request
        if found:  # it trips over input already reported as invalid
            return []
        log.warning("fhir.resources failed on a %s: %r", info.name, exc)
        note = f"The fhir.resources model could not check this resource ({type(exc).__name__})"
        return [Issue("exception", note, severity="warning", expression=(path,))]
    reported = Reported(path)
    for known in found:
        if known.expression:
            reported.add(known.expression[0])
    out: list[Issue] = []
    for error in errors:
        if len(out) >= limit:
            break
        issue = convert(error, info, path)
        if issue is not None and not reported.covers(issue.expression[0]):
            out.append(issue)
            reported.add(issue.expression[0])
    return out


def convert(error: Any, info: TypeInfo, path: str) -> Issue | None:
    """A pydantic error as an Issue at its FHIRPath, or None when R4 disagrees with it."""
    kind: str = error["type"]
    expression, parent, key, target = locate(error["loc"], info, path)
    element = parent.elements.get(key.lstrip("_")) if parent is not None and key else None
    if kind == "extra_forbidden" and element is not None:
        return None  # an R4 element that R4B lacks
    if "missing" in kind and parent is not None and not requires(parent, key):
        return None
    if element is not None and element.type_name == "uuid":
        return None
    message = " ".join(str(error["msg"]).removeprefix("Value error, ").split())
    choice = CHOICE_LIST.search(message)
    if choice and target is not None:
        return choice_issue(choice.group(1), message, target, expression)
    return Issue(issue_code(kind), message, expression=(expression,))


def choice_issue(names: str, message: str, target: TypeInfo, expression: str) -> Issue:
    """fhir.resources reports choice errors on the parent object; point at the choice."""
    keys = QUOTED.findall(names)
    first = target.elements.get(keys[0]) if keys else None
    group = first.group if first is not None else ""
    where = f"{expression}.{group}" if group else expression
    if "got multiple" in message:
        text = f"'{group}[x]' may have one type only ({', '.join(keys)})"
        return Issue("structure", text, expression=(where,))
    return Issue("required", f"Missing required element '{group}'", expression=(where,))


def locate(
    loc: tuple[Any, ...], info: TypeInfo, path: str
) -> tuple[str, TypeInfo | None, str, TypeInfo | None]:
    """(FHIRPath, type holding the last property, that property, type reached)."""
    expression = path
    current: TypeInfo | None = info
    parent: TypeInfo | None = None
    key = ""
    for seg in loc:
        if type(seg) is int:
            expression += f"[{seg}]"
            continue
        seg = str(seg)
        if seg in ("root", "__root__"):
            continue
        name = seg.lstrip("_").removesuffix("__ext")
        parent, key = current, seg
        el = current.elements.get(name) if current is not None else None
        expression += "." + (el.fhirpath if el is not None else name)
        if el is not None and el.kind == PRIMITIVE and (seg[0] == "_" or seg.endswith("__ext")):
            current = model().types["Element"]
        elif el is not None and el.kind == COMPLEX:
            current = el.info
        else:
            current = None
    return expression, parent, key, current


def requires(info: TypeInfo, key: str) -> bool:
    name = key.lstrip("_")
    return any(name == label or name in keys for label, keys in info.required)


def issue_code(kind: str) -> str:
    if "missing" in kind:
        return "required"
    if kind == "extra_forbidden" or kind.endswith("_type"):
        return "structure"
    return "value"


def _boundaries(expression: str) -> list[int]:
    """Where ``expression``'s segments end ("Patient.name[0].given": 7, 12, 15)."""
    return [i for i, c in enumerate(expression) if c in ".["]


class Reported:
    """The places already reported, indexed so that ``covers`` costs the length of one
    expression rather than a comparison with every reported place (issues compared
    pairwise made a body of 20,000 bad values take 42 s)."""

    __slots__ = ("ancestors", "exact", "root")

    def __init__(self, root: str) -> None:
        self.root = root
        self.exact: set[str] = set()
        # every proper prefix ending before "." or "[": "Observation.value" for
        # "Observation.value.ofType(Quantity)" too
        self.ancestors: set[str] = set()

    def add(self, k: str) -> None:
        self.exact.add(k)
        self.ancestors.update(k[:i] for i in _boundaries(k))

    def covers(self, expression: str) -> bool:
        """Already reported: the same place, a place inside a reported one, or (below the
        resource itself) a place containing one, such as a choice element (``value``)
        when one of its types (``value.ofType(Quantity)``) was reported."""
        if expression in self.exact:
            return True
        if any(expression[:i] in self.exact for i in _boundaries(expression)):
            return True
        if expression != self.root:
            return expression in self.ancestors
        return False


def strip_resources(obj: dict[str, Any], info: TypeInfo) -> dict[str, Any]:
    """The object without its nested resources, copying only what changes."""
    if not info.resource_keys and not info.bearing_keys:
        return obj
    out: dict[str, Any] | None = None
    for key in info.resource_keys:
        if key in obj:
            out = dict(obj) if out is None else out
            del out[key]
    for key in info.bearing_keys:
        value = obj.get(key)
        stripped = _strip_value(value, info.elements[key].info)  # type: ignore[arg-type]
        if stripped is not value:
            out = dict(obj) if out is None else out
            out[key] = stripped
    return obj if out is None else out


def _strip_value(value: Any, info: TypeInfo) -> Any:
    if type(value) is dict:
        return strip_resources(value, info)
    if type(value) is list:
        items = [strip_resources(v, info) if type(v) is dict else v for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
