"""``_summary`` and ``_elements`` (search.html#summary, search.html#elements).

Both act on top-level elements; a subsetted resource is tagged SUBSETTED as the spec
requires, so a client never mistakes it for the whole record.
"""

from __future__ import annotations

from typing import Any

from fhir_server.outcome import bad_request
from fhir_server.resource_types import resource_types

SUMMARY_MODES = ("true", "text", "data", "count", "false")
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


# The type suffixes a choice element's JSON name can carry (formats.html#choice):
# ``_elements=deceased`` names the element ``deceased[x]``, sent as ``deceasedBoolean``.
_CHOICE_SUFFIXES = frozenset(
    {
        "Base64Binary", "Boolean", "Canonical", "Code", "Date", "DateTime", "Decimal", "Id",
        "Instant", "Integer", "Markdown", "Oid", "PositiveInt", "String", "Time",
        "UnsignedInt", "Uri", "Url", "Uuid", "Address", "Age", "Annotation", "Attachment",
        "CodeableConcept", "Coding", "ContactPoint", "Count", "Distance", "Duration",
        "HumanName", "Identifier", "Money", "Period", "Quantity", "Range", "Ratio",
        "Reference", "SampledData", "Signature", "Timing", "ContactDetail", "Contributor",
        "DataRequirement", "Expression", "ParameterDefinition", "RelatedArtifact",
        "TriggerDefinition", "UsageContext", "Dosage", "Meta",
    }
)  # fmt: skip


def _element_name(key: str) -> str:
    return key[1:] if key.startswith("_") else key


def _matches(key: str, names: frozenset[str]) -> bool:
    """Does JSON property ``key`` belong to one of the element ``names``?
    Handles choice elements (``deceased[x]`` or ``deceased`` ↔ ``deceasedBoolean``) and primitive
    extensions (``_birthDate`` ↔ ``birthDate``)."""
    name = _element_name(key)
    if name in names:
        return True
    for n in names:
        if n.endswith("[x]"):
            stem = n[:-3]
            if name.startswith(stem) and name[len(stem) : len(stem) + 1].isupper():
                return True
        elif name.startswith(n) and name[len(n) :] in _CHOICE_SUFFIXES:
            return True
    return False


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(SUBSETTED)
    meta["tag"] = tags
    return {**resource, "meta": meta}


def summarize(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    if mode == "false":
        return resource
    info = resource_types().get(resource.get("resourceType", ""))
    if mode == "data":
        kept = {k: v for k, v in resource.items() if k not in ("text", "_text")}
    elif info is None:
        return resource
    elif mode == "true":
        kept = {k: v for k, v in resource.items() if k in _ALWAYS or _matches(k, info.summary)}
    elif mode == "text":
        allowed = info.mandatory | {"text"}
        kept = {k: v for k, v in resource.items() if k in _ALWAYS or _matches(k, allowed)}
    else:
        raise bad_request(f"_summary={mode} cannot be applied to a resource", "_summary")
    return _tagged(kept)


def select_elements(resource: dict[str, Any], elements: frozenset[str]) -> dict[str, Any]:
    """Keep the requested elements plus the mandatory ones (search.html#elements)."""
    info = resource_types().get(resource.get("resourceType", ""))
    allowed = elements | (info.mandatory if info else frozenset())
    kept = {k: v for k, v in resource.items() if k in _ALWAYS or _matches(k, allowed)}
    return _tagged(kept)


def parse_elements(value: str) -> frozenset[str]:
    names = set()
    for part in value.split(","):
        name = part.strip()
        if "." in name:  # "Patient.name" form names the type too
            name = name.split(".", 1)[1]
        if name:
            names.add(name)
    if not names:
        raise bad_request("_elements needs at least one element name", "_elements")
    return frozenset(names)
