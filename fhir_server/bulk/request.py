"""Kick-off parameters of ``$export`` (bulkdata export.html#query-parameters), checked
and turned into an ``ExportRequest``: anything malformed or unsupported is a 400 naming
the parameter, unless ``Prefer: handling=lenient`` lets it be ignored (and reported)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fhir_server.outcome import FhirError, Issue, bad_request
from fhir_server.resource_types import is_resource_type
from fhir_server.service.history import parse_instant_param
from fhir_server.service.parameters import is_parameters, primitive_text, read_parameters

Level = Literal["system", "patient", "group"]
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
PARAMS = frozenset(
    {
        "_outputFormat",
        "_since",
        "_until",
        "_type",
        "_typeFilter",
        "_elements",
        "patient",
        "includeAssociatedData",
    }
)
# STU 2 sends several _typeFilter queries in one value, comma-separated; a comma that
# starts a new query is followed by a resource type and '?'.
_QUERY_START = re.compile(r",(?=[A-Z][A-Za-z]+\?)")


@dataclass(slots=True)
class ExportRequest:
    """What a kick-off asks for, validated (types are checked, not yet authorized)."""

    level: Level
    group_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    types: tuple[str, ...] | None = None  # None: every type the level covers
    type_filters: dict[str, list[str]] = field(default_factory=dict)  # type -> ["a=b&c=d"]
    # resource type ("*" for all) -> element names to keep
    elements: dict[str, frozenset[str]] | None = None
    patients: tuple[str, ...] | None = None  # the ``patient`` parameter
    warnings: list[Issue] = field(default_factory=list)  # what lenient handling ignored


def pairs_from_body(body: Any) -> list[tuple[str, str]]:
    """The parameters of a POSTed Parameters resource (``patient`` as ``Patient/<id>``)."""
    if body is None:
        return []
    if not is_parameters(body):
        raise bad_request("The $export body must be a Parameters resource", "Parameters")
    pairs = []
    for p in read_parameters(body):
        if p.name == "patient":
            ref = p.value.get("reference") if isinstance(p.value, dict) else None
            if not isinstance(ref, str):
                raise bad_request("patient must be a valueReference", p.path)
            pairs.append(("patient", ref))
        else:
            pairs.append((p.name, primitive_text(p)))
    return pairs


def parse_request(
    level: Level,
    pairs: Sequence[tuple[str, str]],
    *,
    group_id: str | None = None,
    lenient: bool = False,
    method: str = "GET",
) -> ExportRequest:
    req = ExportRequest(level, group_id)
    single_seen: set[str] = set()

    def refuse(issue: Issue, status: int = 400) -> None:
        if not lenient:
            raise FhirError(status, [issue])
        req.warnings.append(Issue(issue.code, issue.diagnostics, "warning", issue.expression))

    for name, value in pairs:
        if name in ("_format", "_pretty"):
            continue
        if name not in PARAMS:
            refuse(Issue("not-supported", f"Unknown $export parameter {name!r}", "error", (name,)))
            continue
        if name in single_seen and name not in ("_type", "_typeFilter", "patient", "_elements"):
            raise bad_request(f"{name} may be given only once", name)
        single_seen.add(name)
        if name == "_outputFormat":
            if value not in OUTPUT_FORMATS:
                raise bad_request(
                    f"_outputFormat {value!r} is not supported (use application/fhir+ndjson)",
                    name,
                )
        elif name == "_since":
            req.since = parse_instant_param(name, value)[0]
        elif name == "_until":
            req.until = parse_instant_param(name, value)[0]
        elif name == "_type":
            _add_types(req, value, refuse)
        elif name == "_typeFilter":
            _add_type_filters(req, value, refuse)
        elif name == "_elements":
            _add_elements(req, value)
        elif name == "patient":
            _add_patient(req, value, method)
        elif name == "includeAssociatedData":
            refuse(
                Issue(
                    "not-supported",
                    "includeAssociatedData is not supported by this server",
                    "error",
                    (name,),
                )
            )
    if req.since and req.until and req.until < req.since:
        raise bad_request("_until is before _since", "_until")
    if req.types is not None:
        for t in req.type_filters:
            if t not in req.types:
                raise bad_request(f"_typeFilter names {t}, which _type does not include", t)
    return req


def _add_types(req: ExportRequest, value: str, refuse: Any) -> None:
    types = list(req.types or ())
    for t in (v.strip() for v in value.split(",")):
        if not t:
            continue
        if not is_resource_type(t):
            refuse(
                Issue("not-supported", f"_type: unknown resource type {t!r}", "error", ("_type",))
            )
            continue
        if t not in types:
            types.append(t)
    req.types = tuple(types)


def _add_type_filters(req: ExportRequest, value: str, refuse: Any) -> None:
    for query in _QUERY_START.split(value):
        rtype, sep, criteria = query.partition("?")
        if not sep or not is_resource_type(rtype):
            refuse(
                Issue(
                    "invalid",
                    f"_typeFilter {query!r} is not [ResourceType]?[search parameters]",
                    "error",
                    ("_typeFilter",),
                )
            )
            continue
        req.type_filters.setdefault(rtype, []).append(criteria)


def _add_elements(req: ExportRequest, value: str) -> None:
    elements: dict[str, set[str]] = {k: set(v) for k, v in (req.elements or {}).items()}
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        rtype, dot, name = item.rpartition(".")
        if dot and not is_resource_type(rtype):
            raise bad_request(f"_elements: unknown resource type in {item!r}", "_elements")
        if not re.fullmatch(r"[a-z][A-Za-z0-9]*(\[x\])?", name):
            raise bad_request(
                f"_elements: {item!r} is not a root element name ([Type.]element)", "_elements"
            )
        elements.setdefault(rtype or "*", set()).add(name)
    req.elements = {k: frozenset(v) for k, v in elements.items()}


def _add_patient(req: ExportRequest, value: str, method: str) -> None:
    if req.level == "system":
        raise bad_request("patient applies to Patient- and Group-level exports only", "patient")
    if method != "POST":
        raise bad_request("patient may only be sent in a POSTed Parameters resource", "patient")
    rtype, slash, pid = value.partition("/")
    if rtype != "Patient" or not slash or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", pid):
        raise bad_request(f"patient {value!r} is not a reference Patient/[id]", "patient")
    req.patients = (*(req.patients or ()), pid)


def elements_for(
    elements: dict[str, frozenset[str]] | None, resource_type: str
) -> frozenset[str] | None:
    """The element names kept for a type (None: the whole resource)."""
    if elements is None:
        return None
    names = elements.get("*", frozenset()) | elements.get(resource_type, frozenset())
    return names or None
