"""The OpenAPI 3.1 document of the FHIR API (``GET [base]/openapi.json``).

It is derived from the CapabilityStatement itself (``capability_statement``), so the two
cannot disagree: every ``rest.resource`` becomes its paths, each declared interaction one
operation, each ``searchParam`` a query parameter typed by its search type, each declared
operation the endpoints it is served at, and the SMART ``oauth-uris`` the OAuth2
security scheme. What a CapabilityStatement cannot say (the media types, the JSON shape
of each resource's top level, the parameters of the operations) comes from the same
modules the routes use. The point is a machine-readable contract for clients and for
schema-driven fuzzing (schemathesis in tests/test_openapi_fuzz.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from fhir_server.bulk.request import PARAMS as EXPORT_PARAMS
from fhir_server.config import Settings
from fhir_server.resource_types import ID_PATTERN, resource_types
from fhir_server.search.registry import Registry
from fhir_server.service.capability import capability_statement
from fhir_server.service.everything import PARAMS as EVERYTHING_PARAMS
from fhir_server.subsetting import SUMMARY_MODES
from fhir_server.validation.model import raw_definitions
from fhir_server.workflows import operations as workflow_operations
from smart_auth.discovery import SCOPES
from terminology.service import OPERATIONS as TERMINOLOGY_OPERATIONS

OPENAPI_VERSION = "3.1.0"
FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
FORM = "application/x-www-form-urlencoded"
NDJSON = "application/fhir+ndjson"
# Resource types the system endpoints take or return, described whatever ``types`` asks.
ALWAYS_DESCRIBED = (
    "Bundle",
    "CapabilityStatement",
    "OperationOutcome",
    "Parameters",
    "TerminologyCapabilities",  # /metadata?mode=terminology
)
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

Json = dict[str, Any]
PathItems = dict[str, dict[str, Json]]

# search.html: the prefixes of ordered types, and the value grammar of each search type.
_PREFIX = "(eq|ne|gt|lt|ge|le|sa|eb|ap)?"
_NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
_DATE = (
    r"[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9](:([0-5][0-9]|60)(\.[0-9]+)?)?"
    r"(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))?)?)?)?"
)
SEARCH_VALUE_SCHEMAS: Mapping[str, Json] = {
    "number": {"type": "string", "pattern": f"^{_PREFIX}{_NUMBER}$"},
    "date": {"type": "string", "pattern": f"^{_PREFIX}{_DATE}$"},
    "quantity": {"type": "string", "pattern": rf"^{_PREFIX}{_NUMBER}(\|[^|]*\|[^|]*)?$"},
    "token": {"type": "string"},
    "string": {"type": "string"},
    "reference": {"type": "string"},
    "uri": {"type": "string"},
    "composite": {"type": "string"},
    "special": {"type": "string"},
}
_JSON_TYPES = {
    "boolean": "boolean",
    "integer": "integer",
    "positiveInt": "integer",
    "unsignedInt": "integer",
    "decimal": "number",
}
_RESULT_PARAMS: Mapping[str, Json] = {
    "_count": {"type": "integer", "minimum": 0},
    "_sort": {"type": "string"},
    "_include": {"type": "string"},
    "_revinclude": {"type": "string"},
    "_summary": {"type": "string", "enum": list(SUMMARY_MODES)},
    "_elements": {"type": "string"},
    "_total": {"type": "string", "enum": ["none", "estimate", "accurate"]},
    "_cursor": {"type": "string", "description": "Opaque paging cursor from a Bundle link"},
}


def openapi_document(
    settings: Settings, base_url: str, registry: Registry, types: Collection[str] | None = None
) -> Json:
    """The OpenAPI document of this server at ``base_url``, as its CapabilityStatement
    describes it; with ``types``, the paths of those resource types only (the system
    endpoints stay): about 150 types make a document of several MB, and a client or a
    fuzzer often needs a few."""
    cs = capability_statement(settings, base_url, registry)
    return from_capability(cs, registry, types)


def from_capability(cs: Json, registry: Registry, types: Collection[str] | None = None) -> Json:
    rest = cs["rest"][0]
    base_url = cs["implementation"]["url"]
    secured = "security" in rest
    paths: PathItems = {}
    add = _adder(paths, secured)
    resources = [r for r in rest["resource"] if types is None or r["type"] in types]
    shared = _shared_parameters()
    schemas = _schemas(sorted({*(r["type"] for r in resources), *ALWAYS_DESCRIBED}))
    _capability_paths(add, secured)
    common = rest.get("searchParam", [])
    for resource in resources:
        _resource_paths(add, shared, schemas, resource, common)
    _system_paths(add, shared, schemas, rest, [r["type"] for r in resources], common)
    _compartment_paths(add, registry)
    if types is None:  # ViewDefinition is no R4 type: only in the whole document
        _view_definition_paths(add, schemas, rest)
    doc: Json = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"{cs['software']['name']} FHIR R4 API",
            "version": cs["software"]["version"],
            "description": (
                f"FHIR {cs['fhirVersion']} REST API (http.html), generated from the "
                f"server's CapabilityStatement ({base_url}/metadata). "
                + rest.get("documentation", "")
            ),
        },
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": shared,
            "responses": _shared_responses(),
        },
    }
    if secured:
        doc["components"]["securitySchemes"] = _security_schemes(rest["security"])
        doc["security"] = [{"smart": []}, {"bearer": []}]
    return doc


# --- building blocks -----------------------------------------------------------------------

Adder = Callable[..., None]


def _adder(paths: PathItems, secured: bool) -> Adder:
    def add(path: str, method: str, operation: Json, *, public: bool = False) -> None:
        if public and secured:
            operation["security"] = []  # no token needed (as for /metadata)
        if secured and not public:
            operation["responses"].setdefault("401", {"$ref": "#/components/responses/error"})
            operation["responses"].setdefault("403", {"$ref": "#/components/responses/error"})
        operation["responses"].setdefault("default", {"$ref": "#/components/responses/error"})
        paths.setdefault(path, {})[method] = operation

    return add


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _query(name: str, schema: Json, description: str | None = None) -> Json:
    p: Json = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        p["description"] = description
    return p


def _path_param(name: str, schema: Json | None = None) -> Json:
    return {"name": name, "in": "path", "required": True, "schema": schema or _id_schema()}


def _id_schema() -> Json:
    return {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"}


def _fhir_body(schema: Json, status: str = "200", description: str = "OK") -> Json:
    return {status: {"description": description, "content": {FHIR_JSON: {"schema": schema}}}}


def _resource_body(rtype: str) -> Json:
    schema = _ref("schemas", rtype)
    return {
        "required": True,
        "content": {FHIR_JSON: {"schema": schema}, "application/json": {"schema": schema}},
    }


def _search_params(shared: Json, owner: str, params: Iterable[Json]) -> list[Json]:
    """One query parameter per CapabilityStatement searchParam, typed by its search type
    (modifiers and chains extend the name, which OpenAPI cannot template); each is
    defined once in ``components.parameters`` as ``owner.name`` and referenced."""
    refs = []
    for p in params:
        key = f"{owner}.{p['name']}"
        schema = dict(SEARCH_VALUE_SCHEMAS[p["type"]])
        shared.setdefault(key, _query(p["name"], schema, f"{p['type']}: {p['definition']}"))
        refs.append(_ref("parameters", key))
    return refs


def _result_params() -> list[Json]:
    return [_ref("parameters", name) for name in _RESULT_PARAMS]


def _rendering(summary: bool = False) -> list[Json]:
    refs = [_ref("parameters", "_format"), _ref("parameters", "_pretty")]
    if summary:
        refs += [_ref("parameters", "_summary"), _ref("parameters", "_elements")]
    return refs


def _form(shared: Json, schemas: Json, name: str, params: list[Json]) -> Json:
    """The same parameters as an application/x-www-form-urlencoded body (POST _search),
    as the schema ``name``."""
    properties = {}
    for p in params:
        param = shared[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
        if param["in"] == "query":
            properties[param["name"]] = param["schema"]
    schemas[name] = {"type": "object", "properties": properties}
    return {"required": True, "content": {FORM: {"schema": _ref("schemas", name)}}}


# --- the paths of a resource type -------------------------------------------------------------


def _resource_paths(
    add: Adder, shared: Json, schemas: Json, resource: Json, common: list[Json]
) -> None:
    t = resource["type"]
    codes = {i["code"] for i in resource.get("interaction", [])}
    search = [
        *_search_params(shared, "Resource", common),
        *_search_params(shared, t, resource.get("searchParam", [])),
        *_result_params(),
    ]
    bundle = _fhir_body(_ref("schemas", "Bundle"))
    one = _fhir_body(_ref("schemas", t))
    rid = _path_param("id")
    tag = [t]

    def op(
        interaction: str, summary: str, params: list[Json], responses: Json, **extra: Any
    ) -> Json:
        return {
            "operationId": f"{interaction}-{t}",
            "tags": tag,
            "summary": summary,
            "parameters": params,
            "responses": responses,
            **extra,
        }

    form = _form(shared, schemas, f"{t}-search", search)
    # The criteria of conditional interactions: the same parameters, one schema exploded
    # into the query (OpenAPI 3.1 "style: form, explode: true" on an object).
    criteria = {
        "name": "criteria",
        "in": "query",
        "required": True,
        "style": "form",
        "explode": True,
        "schema": _ref("schemas", f"{t}-search"),
    }
    if "search-type" in codes:
        add(f"/{t}", "get", op("search-type", f"Search {t}", [*search, *_rendering()], bundle))
        add(
            f"/{t}/_search",
            "post",
            op(
                "search-type-post",
                f"Search {t} (form body)",
                _rendering(),
                bundle,
                requestBody=form,
            ),
        )
    if "create" in codes:
        headers = [_ref("parameters", "Prefer")]
        if resource.get("conditionalCreate"):
            headers.append(_ref("parameters", "If-None-Exist"))
        created = {**_fhir_body(_ref("schemas", t), "201", "Created"), **one}
        add(
            f"/{t}",
            "post",
            op(
                "create",
                f"Create a {t}",
                [*headers, *_rendering()],
                created,
                requestBody=_resource_body(t),
            ),
        )
    if "read" in codes:
        conditional = [_ref("parameters", "If-None-Match"), _ref("parameters", "If-Modified-Since")]
        add(
            f"/{t}/{{id}}",
            "get",
            op(
                "read",
                f"Read a {t}",
                [rid, *conditional, *_rendering(True)],
                {**one, "304": {"description": "Not Modified"}},
            ),
        )
    if "vread" in codes:
        add(
            f"/{t}/{{id}}/_history/{{vid}}",
            "get",
            op(
                "vread",
                f"Read a version of a {t}",
                [
                    rid,
                    _path_param("vid", {"type": "string", "pattern": "^[0-9]+$"}),
                    *_rendering(True),
                ],
                one,
            ),
        )
    writes = [_ref("parameters", "If-Match"), _ref("parameters", "Prefer"), *_rendering()]
    if "update" in codes:
        add(
            f"/{t}/{{id}}",
            "put",
            op(
                "update",
                f"Update (or create) a {t}",
                [rid, *writes],
                {**one, **_fhir_body(_ref("schemas", t), "201", "Created")},
                requestBody=_resource_body(t),
            ),
        )
        if resource.get("conditionalUpdate"):
            add(
                f"/{t}",
                "put",
                op(
                    "conditional-update",
                    f"Update the {t} the criteria match",
                    [criteria, *writes],
                    one,
                    requestBody=_resource_body(t),
                ),
            )
    if "patch" in codes:
        patch = {
            "required": True,
            "content": {JSON_PATCH: {"schema": _ref("schemas", "JsonPatch")}},
        }
        add(
            f"/{t}/{{id}}",
            "patch",
            op("patch", f"Patch a {t} (JSON Patch)", [rid, *writes], one, requestBody=patch),
        )
        if resource.get("conditionalUpdate"):
            add(
                f"/{t}",
                "patch",
                op(
                    "conditional-patch",
                    f"Patch the {t} the criteria match",
                    [criteria, *writes],
                    one,
                    requestBody=patch,
                ),
            )
    deleted = {**_fhir_body(_ref("schemas", "OperationOutcome")), "204": {"description": "Deleted"}}
    if "delete" in codes:
        add(
            f"/{t}/{{id}}",
            "delete",
            op(
                "delete",
                f"Delete a {t}",
                [rid, _ref("parameters", "If-Match"), _ref("parameters", "Prefer")],
                deleted,
            ),
        )
        if resource.get("conditionalDelete", "not-supported") != "not-supported":
            add(
                f"/{t}",
                "delete",
                op(
                    "conditional-delete",
                    f"Delete the {t} the criteria match",
                    [criteria, _ref("parameters", "Prefer")],
                    deleted,
                ),
            )
    history = [*_history_params(), *_rendering()]
    if "history-instance" in codes:
        add(
            f"/{t}/{{id}}/_history",
            "get",
            op("history-instance", f"History of a {t}", [rid, *history], bundle),
        )
    if "history-type" in codes:
        add(f"/{t}/_history", "get", op("history-type", f"History of every {t}", history, bundle))
    for operation in resource.get("operation", []):
        _operation_paths(add, operation, [t])


def _history_params() -> list[Json]:
    return [
        _query("_count", {"type": "integer", "minimum": 0}),
        _query("_since", {"type": "string", "format": "date-time"}),
        _query("_at", dict(SEARCH_VALUE_SCHEMAS["date"])),
        _query("_cursor", {"type": "string"}),
        _ref("parameters", "_summary"),
        _ref("parameters", "_elements"),
    ]


# --- operations ($everything, $validate, $export) -------------------------------------------


def _operation_paths(add: Adder, operation: Json, types: list[str]) -> None:
    """The endpoints of one declared operation, by its OperationDefinition URL. An
    operation this function does not know is a programming error: the CapabilityStatement
    would be declaring something the document cannot describe."""
    definition = operation["definition"]
    name = operation["name"]
    outcome = _fhir_body(_ref("schemas", "OperationOutcome"))
    if definition.endswith("/Patient-everything"):
        params = [_query(p, {"type": "string"}) for p in sorted(EVERYTHING_PARAMS - {"_count"})]
        params += [_query("_count", {"type": "integer", "minimum": 0}), *_rendering(True)]
        body = {
            "required": False,
            "content": {FHIR_JSON: {"schema": _ref("schemas", "Parameters")}},
        }
        bundle = _fhir_body(_ref("schemas", "Bundle"))
        for path, level, extra in (
            ("/Patient/$everything", "type", []),
            ("/Patient/{id}/$everything", "instance", [_path_param("id")]),
        ):
            for method in ("get", "post"):
                add(
                    path,
                    method,
                    {
                        "operationId": f"everything-{level}-{method}",
                        "tags": ["Patient"],
                        "summary": f"Patient $everything ({level} level, {definition})",
                        "parameters": [*extra, *params],
                        "responses": bundle,
                        **({"requestBody": body} if method == "post" else {}),
                    },
                )
    elif definition.endswith("/Resource-validate"):
        params = [
            _query("mode", {"type": "string", "enum": ["create", "update", "delete", "profile"]}),
            _query("profile", {"type": "string", "format": "uri"}),
            _ref("parameters", "If-Match"),
            *_rendering(),
        ]
        for t in types:
            body = {
                "required": False,
                "content": {
                    FHIR_JSON: {
                        "schema": {"oneOf": [_ref("schemas", t), _ref("schemas", "Parameters")]}
                    }
                },
            }
            for path, level, extra in (
                (f"/{t}/$validate", "type", []),
                (f"/{t}/{{id}}/$validate", "instance", [_path_param("id")]),
            ):
                add(
                    path,
                    "post",
                    {
                        "operationId": f"validate-{level}-{t}",
                        "tags": [t],
                        "summary": f"Validate a {t} ({definition})",
                        "parameters": [*extra, *params],
                        "responses": outcome,
                        "requestBody": body,
                    },
                )
    elif name == "export":
        _export_paths(add, definition)
    elif name == "import":
        _import_paths(add, definition)
    elif definition.endswith("/appointment-find"):
        params = [
            _query(p, {"type": "string"})
            for p in ("start", "end", "practitioner", "location", "specialty", "service-type")
        ]
        params += [_query("visit-type", {"type": "string"}), _query("_count", {"type": "integer"})]
        for method in ("get", "post"):
            body = {
                "requestBody": {
                    "required": False,
                    "content": {FHIR_JSON: {"schema": _ref("schemas", "Parameters")}},
                }
            }
            add(
                "/Appointment/$find",
                method,
                {
                    "operationId": f"find-Appointment-{method}",
                    "tags": ["Appointment"],
                    "summary": f"Appointment $find ({definition})",
                    "parameters": params if method == "get" else [],
                    "responses": _fhir_body(_ref("schemas", "Bundle")),
                    **(body if method == "post" else {}),
                },
            )
    elif definition.endswith(("/appointment-hold", "/appointment-book", "/appointment-cancel")):
        _scheduling_path(add, name, definition)
    elif definition in WORKFLOW:
        _workflow_paths(add, WORKFLOW[definition], types)
    elif definition in TERMINOLOGY:
        _terminology_paths(add, TERMINOLOGY[definition])
    elif definition.endswith("/StructureDefinition-snapshot"):
        _snapshot_paths(add, definition)
    else:
        raise ValueError(f"no OpenAPI description for operation {definition}")


def _snapshot_paths(add: Adder, definition: str) -> None:
    """StructureDefinition/$snapshot, type level (``url``, or a Parameters with
    ``definition`` or ``url``, or the StructureDefinition) and instance level
    (fhir_server/api/snapshot.py); the StructureDefinition with its snapshot back."""
    body = {
        "requestBody": {
            "required": False,
            "content": {
                FHIR_JSON: {
                    "schema": {
                        "oneOf": [
                            _ref("schemas", "Parameters"),
                            _ref("schemas", "StructureDefinition"),
                        ]
                    }
                }
            },
        }
    }
    for path, level, extra in (
        ("/StructureDefinition/$snapshot", "type", [_query("url", {"type": "string"})]),
        ("/StructureDefinition/{id}/$snapshot", "instance", [_path_param("id")]),
    ):
        for method in ("get", "post"):
            add(
                path,
                method,
                {
                    "operationId": f"snapshot-{level}-{method}",
                    "tags": ["StructureDefinition"],
                    "summary": f"StructureDefinition $snapshot ({level} level, {definition})",
                    "parameters": [*extra, *_rendering()],
                    "responses": _fhir_body(_ref("schemas", "StructureDefinition")),
                    **(body if method == "post" else {}),
                },
            )


def _scheduling_path(add: Adder, name: str, definition: str) -> None:
    """Appointment $hold and $book (a Parameters with the appointment; a searchset
    Bundle back) and Appointment/[id]/$cancel (optional reason; the Appointment back),
    fhir_server/workflows/scheduling/operations.py."""
    instance = name == "cancel"
    path = "/Appointment/{id}/$cancel" if instance else f"/Appointment/${name}"
    schema = _ref("schemas", "Appointment" if instance else "Bundle")
    add(
        path,
        "post",
        {
            "operationId": f"{name}-Appointment",
            "tags": ["Appointment"],
            "summary": f"Appointment ${name} ({definition})",
            "parameters": [_path_param("id")] if instance else [],
            "requestBody": {
                "required": not instance,
                "content": {FHIR_JSON: {"schema": _ref("schemas", "Parameters")}},
            },
            "responses": _fhir_body(schema),
        },
    )


def _workflow_paths(add: Adder, od: Json, types: list[str]) -> None:
    """A workflow operation (fhir_server/workflows/*/conformance/), described from its
    OperationDefinition: at system level when declared in ``rest.operation`` (``types``
    is then every type), else at type and/or instance level of the one type. GET as well
    as POST when it does not affect state (http.html#operations), its primitive inputs as
    query parameters; the ``return`` output's type is the answer."""
    code = od["code"]
    inputs = [q for q in od.get("parameter", []) if q["use"] == "in"]
    answer = next((q["type"] for q in od.get("parameter", []) if q["name"] == "return"), None)
    schema = _ref("schemas", answer) if answer else _ref("schemas", "Parameters")
    # A Binary return is the document itself ($report: CSV, Excel, PDF or JSON rows).
    responses = _BINARY_ANSWER if answer == "Binary" else _fhir_body(schema)
    query = [
        _query(q["name"], {"type": "string", **({"format": "date"} if q["type"] == "date" else {})})
        for q in inputs
        if q["type"] in ("string", "date", "code", "uri", "Reference")
    ]
    levels: list[tuple[str, str, list[Json], str]] = []
    if len(types) > 1:
        if od.get("system"):
            levels.append((f"/${code}", "system", [], "system"))
    else:
        (t,) = types
        if od.get("type"):
            levels.append((f"/{t}/${code}", "type", [], t))
        if od.get("instance"):
            levels.append((f"/{t}/{{id}}/${code}", "instance", [_path_param("id")], t))
    methods = ("post",) if od.get("affectsState") else ("get", "post")
    body = {
        "requestBody": {
            "required": False,
            "content": {FHIR_JSON: {"schema": _ref("schemas", "Parameters")}},
        }
    }
    for path, level, extra, tag in levels:
        for method in methods:
            add(
                path,
                method,
                {
                    "operationId": f"{code}-{level}-{tag}-{method}",
                    "tags": [tag],
                    "summary": f"{od.get('title', code)} ({od['url']})",
                    "description": od.get("description", ""),
                    "parameters": [*extra, *(query if method == "get" else [])],
                    "responses": responses,
                    **(body if method == "post" else {}),
                },
            )


_BINARY_ANSWER: Json = {
    "200": {
        "description": "The document, in the format asked for",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in (
                "text/csv",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/pdf",
                "application/json",
            )
        },
    }
}
WORKFLOW = {d["url"]: d for ops in workflow_operations() for d in ops.definitions()}
TERMINOLOGY = {op.definition["definition"]: op for op in TERMINOLOGY_OPERATIONS}
# inputs that only a POSTed Parameters resource can carry (a Coding, a resource ...)
_COMPLEX_INPUTS = frozenset(
    {"coding", "codingA", "codingB", "codeableConcept", "valueSet", "conceptMap", "codeSystem"}
)
_INPUT_SCHEMAS: Mapping[str, Json] = {
    "count": {"type": "integer", "minimum": 0},
    "offset": {"type": "integer", "minimum": 0},
    **{
        b: {"type": "boolean"}
        for b in (
            "activeOnly",
            "includeDesignations",
            "includeDefinition",
            "excludeNested",
            "excludeNotForUI",
            "excludePostCoordinated",
            "limitedExpansion",
            "abstract",
            "reverse",
        )
    },
}


def _terminology_paths(add: Adder, op: Any) -> None:
    """A terminology operation (terminology/service.py) at type and instance level, GET
    with its primitive inputs as query parameters or POST with a Parameters body."""
    params = [
        _query(name, dict(_INPUT_SCHEMAS.get(name, {"type": "string"})))
        for name in op.params
        if name not in _COMPLEX_INPUTS
    ]
    params += _rendering()
    result = "ValueSet" if op.name == "expand" else "Parameters"
    body = {
        "required": False,
        "content": {FHIR_JSON: {"schema": _ref("schemas", "Parameters")}},
    }
    for path, level, extra in (
        (f"/{op.type}/${op.name}", "type", []),
        (f"/{op.type}/{{id}}/${op.name}", "instance", [_path_param("id")]),
    ):
        for method in ("get", "post"):
            add(
                path,
                method,
                {
                    "operationId": f"{op.name}-{level}-{op.type}-{method}",
                    "tags": [op.type],
                    "summary": f"{op.type} ${op.name} ({level} level)",
                    "parameters": [*extra, *params],
                    "responses": _fhir_body(_ref("schemas", result)),
                    **({"requestBody": body} if method == "post" else {}),
                },
            )


def _export_paths(add: Adder, definition: str) -> None:
    """Bulk Data Access kick-off (export.html), at the level its definition names, and,
    once, the status and file endpoints every export shares."""
    level, path, extra = "system", "/$export", []
    if definition.endswith("/patient-export"):
        level, path = "patient", "/Patient/$export"
    elif definition.endswith("/group-export"):
        level, path, extra = "group", "/Group/{group_id}/$export", [_path_param("group_id")]
    params = [
        *extra,
        _ref("parameters", "Prefer-async"),
        _ref("parameters", "Accept-fhir"),
        *(_query(p, {"type": "string"}) for p in sorted(EXPORT_PARAMS)),
    ]
    accepted = {
        "202": {
            "description": "Accepted: poll the Content-Location",
            "headers": {"Content-Location": {"schema": {"type": "string"}}},
        }
    }
    tags = ["Bulk Data"]
    for method in ("get", "post"):
        extra_body = {}
        if method == "post":
            schema = _ref("schemas", "Parameters")
            extra_body = {
                "requestBody": {"required": False, "content": {FHIR_JSON: {"schema": schema}}}
            }
        add(
            path,
            method,
            {
                "operationId": f"export-{level}-{method}",
                "tags": tags,
                "summary": f"Bulk export kick-off ({definition})",
                "parameters": params,
                "responses": dict(accepted),
                **extra_body,
            },
        )
    if level != "system":
        return
    _job_paths(add, "export", "file_id", "Download an export file")


def _import_paths(add: Adder, definition: str) -> None:
    """Bulk Data Import kick-off (a Parameters manifest; fhir_server/bulk/import_routes.py),
    its status (and cancel) and its error files."""
    tags = ["Bulk Data"]
    schema = _ref("schemas", "Parameters")
    add(
        "/$import",
        "post",
        {
            "operationId": "import",
            "tags": tags,
            "summary": f"Bulk import kick-off ({definition})",
            "parameters": [_ref("parameters", "Prefer-async"), _ref("parameters", "Accept-fhir")],
            "requestBody": {"required": True, "content": {FHIR_JSON: {"schema": schema}}},
            "responses": {
                "202": {
                    "description": "Accepted: poll the Content-Location",
                    "headers": {"Content-Location": {"schema": {"type": "string"}}},
                }
            },
        },
    )
    _job_paths(add, "import", "input", "Download an import's error file (OperationOutcome NDJSON)")


def _job_paths(add: Adder, kind: str, file_param: str, file_summary: str) -> None:
    """A bulk job's status poll, cancel and file download (``kind``: export or import,
    fhir_server/bulk/routes.py and import_routes.py share them)."""
    tags = ["Bulk Data"]
    job = _path_param("job_id", {"type": "string"})
    status = f"/${kind}-status/{{job_id}}"
    add(
        status,
        "get",
        {
            "operationId": f"{kind}-status",
            "tags": tags,
            "summary": f"Bulk {kind} status",
            "parameters": [job],
            "responses": {
                "200": {
                    "description": "Complete: the manifest",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "202": {"description": "In progress"},
            },
        },
    )
    add(
        status,
        "delete",
        {
            "operationId": f"{kind}-cancel",
            "tags": tags,
            "summary": f"Cancel a bulk {kind}",
            "parameters": [job],
            "responses": _fhir_body(_ref("schemas", "OperationOutcome"), "202"),
        },
    )
    add(
        f"/${kind}-file/{{job_id}}/{{{file_param}}}",
        "get",
        {
            "operationId": "export-file" if kind == "export" else "import-errors",
            "tags": tags,
            "summary": file_summary,
            "parameters": [job, _path_param(file_param, {"type": "string"})],
            "responses": {
                "200": {
                    "description": "NDJSON",
                    "content": {NDJSON: {"schema": {"type": "string"}}},
                }
            },
        },
    )


# --- system level ----------------------------------------------------------------------------


def _capability_paths(add: Adder, secured: bool) -> None:
    """The public documents: /metadata, this document, and SMART discovery."""
    add(
        "/metadata",
        "get",
        {
            "operationId": "capabilities",
            "tags": ["System"],
            "summary": "CapabilityStatement (mode=terminology: TerminologyCapabilities)",
            "parameters": [
                _query("mode", {"type": "string", "enum": ["full", "normative", "terminology"]}),
                *_rendering(),
            ],
            "responses": _fhir_body(
                {
                    "oneOf": [
                        _ref("schemas", "CapabilityStatement"),
                        _ref("schemas", "TerminologyCapabilities"),
                    ]
                }
            ),
        },
        public=True,
    )
    add(
        "/openapi.json",
        "get",
        {
            "operationId": "openapi",
            "tags": ["System"],
            "summary": "This OpenAPI document",
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        },
        public=True,
    )
    if secured:
        add(
            "/.well-known/smart-configuration",
            "get",
            {
                "operationId": "smart-configuration",
                "tags": ["System"],
                "summary": "SMART App Launch discovery",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            },
            public=True,
        )


def _system_paths(
    add: Adder, shared: Json, schemas: Json, rest: Json, types: list[str], common: list[Json]
) -> None:
    codes = {i["code"] for i in rest.get("interaction", [])}
    bundle = _fhir_body(_ref("schemas", "Bundle"))
    tags = ["System"]
    if codes & {"transaction", "batch"}:
        kinds = sorted(codes & {"transaction", "batch"})
        schema = {
            "allOf": [
                _ref("schemas", "Bundle"),
                {"properties": {"type": {"enum": kinds}}, "required": ["type"]},
            ]
        }
        add(
            "/",
            "post",
            {
                "operationId": "transaction-batch",
                "tags": tags,
                "summary": f"Process a {' or '.join(kinds)} Bundle",
                "parameters": [_ref("parameters", "Prefer"), *_rendering()],
                "requestBody": {"required": True, "content": {FHIR_JSON: {"schema": schema}}},
                "responses": bundle,
            },
        )
    if "search-system" in codes:
        params = [
            _query(
                "_type",
                {"type": "string"},
                "Comma-separated resource types: " + ", ".join(types[:5]) + ", ...",
            ),
            *_search_params(shared, "Resource", common),
            *_result_params(),
        ]
        add(
            "/",
            "get",
            {
                "operationId": "search-system",
                "tags": tags,
                "summary": "Search every type",
                "parameters": [*params, *_rendering()],
                "responses": bundle,
            },
        )
        add(
            "/_search",
            "post",
            {
                "operationId": "search-system-post",
                "tags": tags,
                "summary": "Search every type (form body)",
                "parameters": _rendering(),
                "requestBody": _form(shared, schemas, "system-search", params),
                "responses": bundle,
            },
        )
    if "history-system" in codes:
        add(
            "/_history",
            "get",
            {
                "operationId": "history-system",
                "tags": tags,
                "summary": "History of every resource",
                "parameters": [*_history_params(), *_rendering()],
                "responses": bundle,
            },
        )
    for operation in rest.get("operation", []):
        _operation_paths(add, operation, types)


def _compartment_paths(add: Adder, registry: Registry) -> None:
    """Patient compartment search (compartmentdefinition.html): Patient/[id]/[type]."""
    members = sorted({"Patient", *(t for t in resource_types() if registry.patient_compartment(t))})
    add(
        "/Patient/{id}/{type}",
        "get",
        {
            "operationId": "search-compartment-Patient",
            "tags": ["Patient"],
            "summary": "Search the Patient compartment",
            "parameters": [
                _path_param("id"),
                _path_param("type", {"type": "string", "enum": members}),
                *_result_params(),
                *_rendering(),
            ],
            "responses": _fhir_body(_ref("schemas", "Bundle")),
        },
    )


# --- components ------------------------------------------------------------------------------


def _schemas(types: Iterable[str]) -> Json:
    """Each resource's top-level JSON shape, from the R4 element definitions the
    validator uses (the validator, not this schema, decides what is valid)."""
    raw = raw_definitions()
    infos = resource_types()
    schemas: Json = {}
    for t in types:
        properties: Json = {"resourceType": {"const": t}, "id": _id_schema()}
        for key, entry in raw["types"][t]["e"].items():
            if key == "id":
                continue
            one = _element_schema(entry[0], raw)
            properties[key] = {"type": "array", "items": one} if entry[1] else one
        required = ["resourceType", *sorted(k for k in infos[t].mandatory if k in properties)]
        schemas[t] = {"type": "object", "properties": properties, "required": required}
    schemas["JsonPatch"] = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "required": ["op", "path"],
            "properties": {
                "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
                "path": {"type": "string"},
                "from": {"type": "string"},
                "value": {},
            },
        },
    }
    return schemas


def _element_schema(type_name: str, raw: Json) -> Json:
    if type_name in _JSON_TYPES:
        return {"type": _JSON_TYPES[type_name]}
    if type_name in raw["primitives"]:
        return {"type": "string"}
    return {"type": "object"}


def _shared_parameters() -> Json:
    def header(name: str, schema: Json, description: str) -> Json:
        return {
            "name": name,
            "in": "header",
            "required": False,
            "schema": schema,
            "description": description,
        }

    etag = {"type": "string", "pattern": '^(W/)?"[0-9]+"$'}
    return {
        "_format": _query(
            "_format", {"type": "string", "enum": ["json", FHIR_JSON, "application/json"]}
        ),
        "_pretty": _query("_pretty", {"type": "string", "enum": ["true", "false"]}),
        "_summary": _query("_summary", {"type": "string", "enum": list(SUMMARY_MODES)}),
        "_elements": _query("_elements", {"type": "string"}),
        "If-Match": header("If-Match", etag, "Version-aware update (http.html#concurrency)"),
        "If-None-Match": header("If-None-Match", etag, "Conditional read (http.html#cread)"),
        "If-Modified-Since": header(
            "If-Modified-Since", {"type": "string"}, "Conditional read: an HTTP date"
        ),
        "If-None-Exist": header(
            "If-None-Exist",
            {"type": "string"},
            "Conditional create: search criteria (http.html#ccreate)",
        ),
        "Prefer": header(
            "Prefer",
            {
                "type": "string",
                "enum": [
                    "return=minimal",
                    "return=representation",
                    "return=OperationOutcome",
                    "handling=strict",
                    "handling=lenient",
                ],
            },
            "RFC 7240 preferences FHIR defines",
        ),
        "Prefer-async": {
            **header(
                "Prefer",
                {"type": "string", "const": "respond-async"},
                "Bulk export is asynchronous",
            ),
            "required": True,
        },
        "Accept-fhir": header(
            "Accept", {"type": "string", "const": FHIR_JSON}, "Bulk export kick-off Accept"
        ),
        **{name: _query(name, dict(schema)) for name, schema in _RESULT_PARAMS.items()},
    }


def _shared_responses() -> Json:
    return {
        "error": {
            "description": "An OperationOutcome saying what went wrong",
            "content": {FHIR_JSON: {"schema": _ref("schemas", "OperationOutcome")}},
        }
    }


def _security_schemes(security: Json) -> Json:
    """OAuth2 (SMART App Launch 2.2) with the endpoints the CapabilityStatement's
    oauth-uris extension names, and plain bearer for tokens obtained elsewhere."""
    uris = {
        e["url"]: e["valueUri"]
        for ext in security.get("extension", [])
        if ext.get("url") == OAUTH_URIS
        for e in ext.get("extension", [])
    }
    scopes = {scope: f"SMART scope {scope}" for scope in SCOPES}
    return {
        "smart": {
            "type": "oauth2",
            "description": "SMART on FHIR (SMART App Launch 2.2); any SMART v1/v2 scope",
            "flows": {
                "authorizationCode": {
                    "authorizationUrl": uris["authorize"],
                    "tokenUrl": uris["token"],
                    "refreshUrl": uris["token"],
                    "scopes": scopes,
                },
                "clientCredentials": {"tokenUrl": uris["token"], "scopes": scopes},
            },
        },
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    }


# --- stored SQL on FHIR ViewDefinitions (fhir_server/api/view_store.py, api/views.py) -----


def _view_definition_paths(add: Adder, schemas: Json, rest: Json) -> None:
    """The paths of ``[base]/ViewDefinition`` and its ``$run`` operations, from the
    ``rest`` extension that declares them (views/capability.py)."""
    from fhir_server.views.capability import ADDITIONAL_RESOURCE

    found = [e for e in rest.get("extension", []) if e.get("url") == ADDITIONAL_RESOURCE]
    if not found:
        return
    parts = found[0]["extension"]
    t = next(p["valueCode"] for p in parts if p["url"] == "type")
    codes = {p["valueCode"] for p in parts if p["url"] == "interaction"}
    searchable = [p["valueString"].split("|") for p in parts if p["url"] == "searchParam"]
    operations = [p["valueCanonical"] for p in parts if p["url"] == "operation"]
    schemas[t] = {
        "type": "object",
        "required": ["resourceType", "resource", "status", "select"],
        "properties": {
            "resourceType": {"const": t},
            "id": _id_schema(),
            "url": {"type": "string"},
            "version": {"type": "string"},
            "name": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
            "title": {"type": "string"},
            "status": {"enum": ["draft", "active", "retired", "unknown"]},
            "resource": {"type": "string"},
            "select": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "constant": {"type": "array", "items": {"type": "object"}},
            "where": {"type": "array", "items": {"type": "object"}},
        },
    }
    one = _fhir_body(_ref("schemas", t))
    created = _fhir_body(_ref("schemas", t), "201", "Created")
    rid = _path_param("id")
    vid = _path_param("vid", {"type": "string", "pattern": "^[0-9]+$"})
    writes = [_ref("parameters", "If-Match"), _ref("parameters", "Prefer"), *_rendering()]
    bundle = _fhir_body(_ref("schemas", "Bundle"))
    outcome = _fhir_body(_ref("schemas", "OperationOutcome"))

    def op(name: str, summary: str, params: list[Json], responses: Json, **extra: Any) -> Json:
        return {
            "operationId": f"{name}-{t}",
            "tags": [t],
            "summary": summary,
            "parameters": params,
            "responses": responses,
            **extra,
        }

    if "search-type" in codes:
        query = [_query(name, dict(SEARCH_VALUE_SCHEMAS[kind])) for name, kind in searchable]
        paging = [
            _query("_count", {"type": "integer", "minimum": 0}),
            _query("_cursor", {"type": "string"}),
        ]
        add(
            f"/{t}",
            "get",
            op("search-type", f"Search {t}", [*query, *paging, *_rendering()], bundle),
        )
    if "create" in codes:
        add(
            f"/{t}",
            "post",
            op(
                "create",
                f"Create a {t}",
                [_ref("parameters", "Prefer"), *_rendering()],
                {**created, **one},
                requestBody=_resource_body(t),
            ),
        )
    if "read" in codes:
        conditional = [_ref("parameters", "If-None-Match"), _ref("parameters", "If-Modified-Since")]
        add(
            f"/{t}/{{id}}",
            "get",
            op(
                "read",
                f"Read a {t}",
                [rid, *conditional, *_rendering()],
                {**one, "304": {"description": "Not Modified"}},
            ),
        )
    if "vread" in codes:
        add(
            f"/{t}/{{id}}/_history/{{vid}}",
            "get",
            op("vread", f"Read a version of a {t}", [rid, vid, *_rendering()], one),
        )
    if "update" in codes:
        add(
            f"/{t}/{{id}}",
            "put",
            op(
                "update",
                f"Update (or create) a {t}",
                [rid, *writes],
                {**one, **created},
                requestBody=_resource_body(t),
            ),
        )
    if "delete" in codes:
        add(
            f"/{t}/{{id}}",
            "delete",
            op(
                "delete",
                f"Delete a {t}",
                [rid, *writes],
                {**outcome, "204": {"description": "Deleted"}},
            ),
        )
    if "history-instance" in codes:
        paging = [
            _query("_count", {"type": "integer", "minimum": 0}),
            _query("_cursor", {"type": "string"}),
        ]
        add(
            f"/{t}/{{id}}/_history",
            "get",
            op("history-instance", f"History of a {t}", [rid, *paging, *_rendering()], bundle),
        )
    rows = {
        "200": {
            "description": "The view's rows in the requested format",
            "content": {
                media: {"schema": {}}
                for media in (
                    "application/json",
                    "application/x-ndjson",
                    "text/csv",
                    "application/vnd.apache.parquet",
                )
            },
        }
    }
    body = {
        "required": False,
        "content": {FHIR_JSON: {"schema": _ref("schemas", "Parameters")}},
    }
    formats = [
        _query("_format", {"type": "string"}),
        _query("header", {"type": "string", "enum": ["true", "false"]}),
    ]
    accepted = {
        "202": {
            "description": "Accepted: poll the Content-Location (the status of the export)",
            "content": {FHIR_JSON: {"schema": _ref("schemas", "Parameters")}},
        }
    }
    prefer = _ref("parameters", "Prefer")
    for definition in operations:
        if definition.endswith("$viewdefinition-export"):
            export = f"Export views ({definition}); needs Prefer: respond-async"
            for path, level in (
                ("/$viewdefinition-export", "system"),
                (f"/{t}/$viewdefinition-export", "type"),
                (f"/{t}/$export", "type-short"),
            ):
                add(
                    path,
                    "post",
                    op(
                        f"export-{level}",
                        export,
                        [prefer],
                        accepted,
                        requestBody={**body, "required": True},
                    ),
                )
            for path, level in (
                (f"/{t}/{{id}}/$viewdefinition-export", "instance"),
                (f"/{t}/{{id}}/$export", "instance-short"),
            ):
                add(
                    path,
                    "post",
                    op(f"export-{level}", export, [rid, prefer], accepted, requestBody=body),
                )
            continue
        if definition.endswith("$viewdefinition-run"):
            path, level = "/$viewdefinition-run", "system"
        else:
            add(
                f"/{t}/{{id}}/$run",
                "post",
                op(
                    "run-instance",
                    f"Run the stored {t} ({definition})",
                    [rid, *formats],
                    rows,
                    requestBody=body,
                ),
            )
            path, level = f"/{t}/$run", "type"
        add(
            path,
            "post",
            op(
                f"run-{level}",
                f"Run a {t} ({definition})",
                formats,
                rows,
                requestBody=body,
            ),
        )
