"""Extensions checked against their definitions (issue #14; extensibility.html).

Every resource is walked once over the base element model (``find_extensions``) for its
extensions: each with its url, its FHIRPath, and where it sits (the element path and
type of its host, for the definition's ``context``). The urls are then resolved through
the profile registry, as StructureDefinitions of type Extension (``CompiledProfile``:
the value[x] types allowed, cardinality and types of the sub-extensions of a complex
extension -- ``Extension.extension`` slices by url --, fixed values and the definition's
own constraints), and ``extension_issues`` reports:

- an extension against its definition (errors);
- one where its definition's ``context`` does not allow it (``element`` contexts: the
  host's element path, its type, ``Element``, ``Resource``/``DomainResource`` on a
  resource; ``extension`` contexts never match: extensions of extensions are read as
  part of their complex extension). ``fhirpath`` contexts are not evaluated (the
  extension is allowed);
- more repetitions on one element than the definition's root ``max``;
- an extension whose definition the server does not hold: a warning, an error with
  FHIR_UNKNOWN_EXTENSIONS=error, nothing with ``ignore``. The R4 core extensions
  (``http://hl7.org/fhir/StructureDefinition/...``) are not shipped: unless one is
  stored, they are unknown too, but at most a warning.

Only an extension's own url is looked up: the extensions inside a complex extension are
its definition's slices, and extensions inside an extension's value are not visited.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from fhir_server.outcome import Issue
from fhir_server.validation.model import PRIMITIVE, RESOURCE, TypeInfo, model
from profiles.compile import CORE, CompiledProfile, ProfileError

EXTENSION_KEYS = ("extension", "modifierExtension")


@dataclass(slots=True)
class Found:
    """One extension in a resource."""

    url: str
    path: str  # FHIRPath of the extension: Patient.name[0].extension[1]
    host: str  # FHIRPath of the element it extends: Patient.name[0]
    context: str  # the host's element path: Patient.name (a choice as value[x])
    host_type: str  # HumanName, string, Patient, Patient.contact
    at_resource: bool  # the host is a resource
    value: dict[str, Any]


def find_extensions(resource: Any) -> list[Found]:
    """The extensions of the resource (contained and Bundle entry resources too)."""
    out: list[Found] = []
    if type(resource) is not dict:
        return out
    rtype = resource.get("resourceType")
    info = model().types.get(rtype) if isinstance(rtype, str) else None
    if info is not None:
        _walk(resource, info, str(rtype), str(rtype), True, out)
    return out


def _record(
    holder: dict[str, Any],
    path: str,
    context: str,
    host_type: str,
    at_resource: bool,
    out: list[Found],
) -> None:
    for key in EXTENSION_KEYS:
        v = holder.get(key)
        if type(v) is not list:
            continue
        for i, ext in enumerate(v):
            if type(ext) is dict and isinstance(ext.get("url"), str):
                out.append(
                    Found(
                        ext["url"], f"{path}.{key}[{i}]", path, context, host_type, at_resource, ext
                    )
                )


def _walk(
    obj: dict[str, Any],
    info: TypeInfo,
    path: str,
    context: str,
    at_resource: bool,
    out: list[Found],
) -> None:
    if "extension" in obj or "modifierExtension" in obj:
        _record(obj, path, context, info.name, at_resource, out)
    types = model().types
    for key, value in obj.items():
        if key[:1] == "_":
            el = info.elements.get(key[1:])
            if el is None or el.kind != PRIMITIVE:
                continue
            where = f"{context}.{el.group + '[x]' if el.group else el.name}"
            items = value if type(value) is list else [value]
            for i, item in enumerate(items):
                if type(item) is dict:
                    at = f"{path}.{el.fhirpath}" + (f"[{i}]" if type(value) is list else "")
                    _record(item, at, where, el.type_name, False, out)
            continue
        el = info.elements.get(key)
        if el is None or el.kind == PRIMITIVE or key in EXTENSION_KEYS:
            continue
        where = f"{context}.{el.group + '[x]' if el.group else el.name}"
        many = type(value) is list
        for i, item in enumerate(value if many else [value]):
            if type(item) is not dict:
                continue
            at = f"{path}.{el.fhirpath}" + (f"[{i}]" if many else "")
            if el.kind == RESOURCE:
                rtype = item.get("resourceType")
                sub = types.get(rtype) if isinstance(rtype, str) else None
                if sub is not None:
                    _walk(item, sub, at, str(rtype), True, out)
            elif el.info is not None:
                _walk(item, el.info, at, where, False, out)


def extension_urls(found: list[Found]) -> list[str]:
    return list(dict.fromkeys(f.url for f in found))


def extension_issues(
    resource: Any,
    found: list[Found],
    definitions: dict[str, Any],
    unknown: str = "warn",
    severity: str = "error",
) -> list[Issue]:
    """The issues of the resource's extensions (``definitions``: url -> what the
    registry resolved). Errors against a definition become ``severity`` (``warning``
    with FHIR_PROFILE_ENFORCEMENT=warn); ``unknown``: warn, error or ignore."""
    out: list[Issue] = []
    counts = Counter((f.host, f.url) for f in found)
    reported: set[tuple[str, str]] = set()
    for f in found:
        chain = definitions.get(f.url)
        if not isinstance(chain, list) or not chain:
            if isinstance(chain, ProfileError):
                message = f"The definition of the extension {f.url} cannot be used: {chain}"
                out.append(Issue("not-supported", message, "warning", (f.path,)))
            elif unknown != "ignore":
                level = "error" if unknown == "error" and not f.url.startswith(CORE) else "warning"
                message = (
                    f"The extension {f.url} is unknown to this server (no StructureDefinition)"
                )
                out.append(Issue("structure", message, level, (f.path,)))
            continue
        issues: list[Issue] = []
        definition = chain[0]
        if definition.type != "Extension":
            message = f"{f.url} is a profile of {definition.type}, not an extension definition"
            issues.append(Issue("structure", message, expression=(f.path,)))
        else:
            if not _allowed_here(definition, f):
                where = ", ".join(e for _, e in definition.contexts)
                message = (
                    f"The extension {f.url} is not allowed on {f.context} (its context: {where})"
                )
                issues.append(Issue("structure", message, expression=(f.path,)))
            limit = definition.root_max
            key = (f.host, f.url)
            if limit is not None and counts[key] > limit and key not in reported:
                reported.add(key)
                message = (
                    f"The extension {f.url} may appear at most {limit} time(s) on {f.context}, "
                    f"but appears {counts[key]} times"
                )
                issues.append(Issue("structure", message, expression=(f.host,)))
            for p in chain:
                issues += p.validate_item(f.value, f.path, resource)
        for issue in issues:
            if issue.severity == "error" and severity != "error":
                issue = Issue(issue.code, issue.diagnostics, severity, issue.expression)
            out.append(issue)
    return out


def _allowed_here(definition: CompiledProfile, f: Found) -> bool:
    """The definition's context allows the host (no context: anywhere)."""
    if not definition.contexts:
        return True
    for kind, expression in definition.contexts:
        if kind == "fhirpath":
            return True  # not evaluated (a documented gap)
        if kind != "element":
            continue
        if expression in (f.context, f.host_type, "Element", "Base"):
            return True
        if f.at_resource and expression in ("Resource", "DomainResource"):
            return True
        if expression == "BackboneElement" and "." in f.host_type:
            return True
    return False
