"""FHIR REST routes under the base path (http.html). Each handler parses what the
request asks for, calls one service method, and renders the result."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jsonpatch
from fastapi import APIRouter, Depends, Request
from pymongo.errors import PyMongoError
from starlette.responses import Response

from fhir_server.api import negotiation as neg
from fhir_server.api import paths  # noqa: F401  (registers the "seg" convertor used below)
from fhir_server.api.rendering import (
    bundle,
    etag,
    json_response,
    outcome_response,
    resource_json,
    resource_response,
    search_entry,
    version_headers,
)
from fhir_server.audit import seen
from fhir_server.authz.authenticate import verify_bearer
from fhir_server.authz.context import request_policy
from fhir_server.authz.policy import Filter, Policy
from fhir_server.config import Settings
from fhir_server.datetimes import format_instant
from fhir_server.digits import whole_number
from fhir_server.jsonio import dumps
from fhir_server.outcome import FhirError, bad_request, info_outcome, not_found
from fhir_server.resource_types import is_resource_type, resource_types
from fhir_server.service.capability import READ_ONLY_TYPES, capability_statement
from fhir_server.service.context import request_base_url
from fhir_server.service.history import (
    HistoryService,
    RestrictedHistoryQuery,
    parse_instant_param,
)
from fhir_server.service.resources import ResourceService, WriteOutcome, check_id
from fhir_server.service.search import SearchService
from fhir_server.storage import StoredVersion
from fhir_server.storage.store import HistoryQuery
from terminology.capabilities import terminology_capabilities


async def bind_base_url(request: Request) -> None:
    """Make this request's base URL known to the services (see service/context.py)."""
    request_base_url.set(base_url(request))


router = APIRouter(dependencies=[Depends(bind_base_url)])


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    resources: ResourceService
    history: HistoryService
    search: SearchService


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def base_url(request: Request) -> str:
    configured = services(request).settings.base_url
    if configured:
        return configured.rstrip("/")
    return str(request.base_url).rstrip("/") + "/fhir"


def resource_type(name: str) -> str:
    if not is_resource_type(name):
        raise FhirError.of(404, "not-supported", f"Unknown resource type {name!r}", "type")
    return name


async def require_visible(request: Request, rtype: str, rid: str, interaction: str = "r") -> None:
    """403 when no scope covers reading the type; 404 when this resource is outside
    what the token may see, exactly as if it did not exist (no existence leak)."""
    policy = request_policy(request)
    if policy.unrestricted:
        return
    await policy.restriction(rtype, interaction)  # 403: no usable scope for the type
    check_id(rid)
    if not await policy.contains(rtype, rid, interaction):
        raise not_found(f"{rtype}/{rid} is not known")


# --- capabilities ----------------------------------------------------------------------


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    out = neg.negotiate(request)
    mode = request.query_params.get("mode", "full")
    if mode not in ("full", "normative", "terminology"):
        raise bad_request("mode must be full, normative or terminology", "mode")
    if mode == "terminology":
        statement = await terminology_capabilities(
            services(request).resources.storage, base_url(request), await _listable(request)
        )
        return json_response(statement, out)
    content = await _capability(request, out.pretty)
    return Response(content, 200, media_type=out.content_type)


async def _listable(request: Request) -> Filter | None:
    """Which CodeSystems ``mode=terminology`` may list: all with authorization off;
    with it on, those the caller's token may search (none without a token: the
    statement is public, the CodeSystem resources are not)."""
    if not services(request).settings.auth_enabled:
        return {}
    if "authorization" not in request.headers:
        return None
    await verify_bearer(request)  # 401 for a bad token, as on any other path
    return await request_policy(request).try_restriction("CodeSystem", "s")


_CAPABILITY_CACHE = 16  # base URLs (from Host headers) whose statement is kept


async def _capability(request: Request, pretty: bool) -> bytes:
    """The CapabilityStatement for this base URL as JSON, built and written once:
    building it took ~9 ms of the event loop per ``GET /metadata``, and writing its
    600 KB 5-10 ms more, C work during which no other thread runs either (settings and
    registry never change). Its supportedProfiles come from the stored
    StructureDefinitions, so the cache holds until one is written by any process (one
    indexed lookup per request: profiles/registry.py's stamp). With the database
    unreachable the statement still describes the server: the last one built, else one
    without supportedProfile (those are stored resources)."""
    from profiles.capability import supported_profiles

    state = request.app.state
    svc = services(request)
    key = (base_url(request), pretty)
    profiles = svc.resources.profiles
    try:
        stamp = await profiles.stamp_now() if profiles is not None else None
    except PyMongoError:
        last: dict[tuple[str, bool], bytes] = getattr(state, "capability", None) or {}
        return last.get(key) or _statement(svc, key, {})
    cache: dict[tuple[str, bool], bytes] | None = getattr(state, "capability", None)
    if cache is None or getattr(state, "capability_stamp", None) != stamp:
        cache = state.capability = {}
        state.capability_stamp = stamp
    content = cache.get(key)
    if content is None:
        content = _statement(svc, key, await supported_profiles(svc.resources.storage))
        if len(cache) < 2 * _CAPABILITY_CACHE:
            cache[key] = content
    return content


def _statement(svc: Services, key: tuple[str, bool], supported: dict[str, list[str]]) -> bytes:
    base, pretty = key
    return dumps(capability_statement(svc.settings, base, svc.search.registry, supported), pretty)


@router.api_route("/metadata", methods=["POST", "PUT", "PATCH", "DELETE"])
@router.api_route("/_history", methods=["POST", "PUT", "PATCH", "DELETE"])
async def read_only_endpoint(request: Request) -> Response:
    """These paths are endpoints, not resource types: any method but GET is 405 (RFC 9110
    15.5.6) rather than falling through to the type-level routes as an unknown type."""
    raise FhirError.of(
        405,
        "not-supported",
        f"{request.method} is not allowed on {request.url.path}",
        headers={"Allow": "GET"},
    )


# --- history ---------------------------------------------------------------------------

_HISTORY_PARAMS = frozenset(
    {"_count", "_since", "_at", "_cursor", "_format", "_pretty", "_summary", "_elements"}
)


async def _history(request: Request, query: HistoryQuery, path: str) -> Response:
    svc = services(request)
    if query.type in READ_ONLY_TYPES:  # one version per record, kept out of history
        raise FhirError.of(
            400,
            "not-supported",
            f"{query.type} records have a single version and no history: read or search them",
            query.type,
        )
    out = neg.negotiate(request, allow_count=True)
    params = request.query_params
    lenient = neg.prefer(request).handling == "lenient"
    for name in params:
        if name not in _HISTORY_PARAMS and not lenient:
            raise bad_request(f"Unknown or unsupported history parameter {name!r}", name)
    count = svc.settings.history_default_count
    if "_count" in params:
        asked = whole_number(params["_count"])
        if asked is None:
            raise bad_request("_count must be a non-negative integer", "_count")
        count = min(asked, svc.settings.history_max_count)
    since = at = None
    if "_since" in params:
        since = parse_instant_param("_since", params["_since"])[0]
    if "_at" in params:
        at = parse_instant_param("_at", params["_at"])
    policy = request_policy(request)
    allowed = None
    if query.id is None and not policy.unrestricted:
        if query.type is not None:
            policy.require(query.type, "r")
        existing = set(await svc.resources.storage.db.list_collection_names())
        types = None if query.type is None else [query.type]
        allowed = await policy.types_filter("r", types, existing)
    query = RestrictedHistoryQuery(
        query.type,
        query.id,
        since=since,
        at_low=at[0] if at else None,
        at_high=at[1] if at else None,
        allowed=allowed,
    )
    if out.summary == "count":
        total = await svc.resources.storage.history_count(query)
        return json_response(bundle("history", [], {"self": str(request.url)}, total), out)
    page = await svc.history.page(query, count, params.get("_cursor"), query.id is not None)
    base = base_url(request)
    kept = [(k, v) for k, v in params.multi_items() if k in _HISTORY_PARAMS and k != "_cursor"]

    def link(cursor: str | None) -> str:
        items = kept + ([("_cursor", cursor)] if cursor else [])
        return f"{base}/{path}" + (f"?{urlencode(items)}" if items else "")

    links = {"self": link(params.get("_cursor")), "first": link(None)}
    if page.previous:
        links["previous"] = link(page.previous)
    if page.next:
        links["next"] = link(page.next)
    policy = request_policy(request)
    versions = [v for v in page.versions if policy.version_visible(v)]
    entries = [_history_entry(v, base, out) for v in versions]
    return json_response(bundle("history", entries, links, page.total), out)


def _history_entry(v: StoredVersion, base: str, out: neg.Output) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": f"{base}/{v.type}/{v.id}"}
    if v.raw is not None:
        seen.saw(v)
        entry["resource"] = resource_json(v.raw, out)
    url = v.type if v.method == "POST" else f"{v.type}/{v.id}"
    entry["request"] = {"method": v.method, "url": url}
    if v.deleted:
        status = "204 No Content"
    else:
        status = "201 Created" if v.created or v.method == "POST" else "200 OK"
    entry["response"] = {
        "status": status,
        "etag": etag(v.version),
        "lastModified": format_instant(v.last_updated.astimezone(UTC)),
    }
    return entry


@router.get("/_history")
async def history_system(request: Request) -> Response:
    return await _history(request, HistoryQuery(), "_history")


@router.get("/{rtype:seg}/_history")
async def history_type(request: Request, rtype: str) -> Response:
    t = resource_type(rtype)
    return await _history(request, HistoryQuery(type=t), f"{t}/_history")


@router.get("/{rtype:seg}/{rid:seg}/_history")
async def history_instance(request: Request, rtype: str, rid: str) -> Response:
    t = resource_type(rtype)
    svc = services(request)
    await require_visible(request, t, rid)
    await svc.resources.read_any(t, rid)
    return await _history(request, HistoryQuery(type=t, id=rid), f"{t}/{rid}/_history")


# --- search ----------------------------------------------------------------------------

_FORM = frozenset({"application/x-www-form-urlencoded"})


async def _search(
    request: Request,
    types: Sequence[str],
    path: str,
    extra: Sequence[tuple[str, str]] = (),
    compartment: tuple[str, str] | None = None,
) -> Response:
    svc = services(request)
    policy = request_policy(request)
    out = neg.negotiate(request, allow_count=True)
    base = base_url(request)
    # search.html#errors: "Empty parameters are not an error - they are just ignored"
    params = [(k, v) for k, v in [*request.query_params.multi_items(), *extra] if v != ""]
    seen.searched(urlencode(params))  # GET or POST: the parameters the audit records
    plan = svc.search.parser(base).parse(
        types,
        [(k, v) for k, v in params if k != "_type"],
        lenient=neg.prefer(request).handling == "lenient",
        default_count=svc.settings.search_default_count,
        max_count=svc.settings.search_max_count,
        compartment=compartment,
    )
    seen.planned(plan)  # whom its criteria name: whose audit record may show the query
    fixed = [("_type", ",".join(types))] if path == "" and request.query_params.get("_type") else []

    def link(cursor: str | None) -> str:
        items = fixed + plan.canonical + ([("_cursor", cursor)] if cursor else [])
        return f"{base}/{path}".rstrip("/") + (f"?{urlencode(items)}" if items else "")

    # search.html#count: "if _count has the value 0, this shall be treated the same as
    # _summary=count"
    if plan.summary == "count" or plan.count == 0:
        total = await svc.search.count(plan, policy=policy)
        return json_response(bundle("searchset", [], {"self": link(None)}, total), out)
    result = await svc.search.search(plan, policy)
    links = {"self": link(plan.cursor), "first": link(None)}
    if result.previous:
        links["previous"] = link(result.previous)
    if result.next:
        links["next"] = link(result.next)
    entries = [search_entry(m, base, out, "match") for m in result.matches]
    # search.html#elements: "The list of elements does not apply to included resources."
    out_included = replace(out, elements=None)
    entries += [search_entry(m, base, out_included, "include") for m in result.included]
    return json_response(bundle("searchset", entries, links, result.total), out)


async def _form_params(request: Request) -> list[tuple[str, str]]:
    """POST [type]/_search: parameters in an application/x-www-form-urlencoded body."""
    limit = services(request).settings.max_body_bytes
    declared = neg.media_type(request.headers.get("content-type"))
    if declared not in _FORM:
        raise FhirError.of(
            415,
            "not-supported",
            "POST _search takes an application/x-www-form-urlencoded body",
            "Content-Type",
        )
    body = await neg.read_bounded(request, limit)
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise bad_request("The form body is not valid UTF-8") from None


async def _system_types(request: Request) -> list[str]:
    """The types of a system search: those of _type (each must be searchable with the
    token, else 403), or every type the token may search."""
    policy = request_policy(request)
    value = request.query_params.get("_type")
    if not value:  # absent, or empty and so ignored
        if policy.unrestricted:
            return list(resource_types())
        types = await policy.readable(resource_types(), "s")
        if not types:
            raise FhirError.of(
                403, "forbidden", "The access token does not permit searching any type", "_type"
            )
        return types
    names = [t.strip() for t in value.split(",") if t.strip()]
    for name in names:
        if not is_resource_type(name):
            raise bad_request(f"_type: unknown resource type {name!r}", "_type")
        await policy.restriction(name, "s")
    if not names:
        raise bad_request("_type needs at least one resource type", "_type")
    return names


@router.get("")
@router.get("/")
async def search_system(request: Request) -> Response:
    return await _search(request, await _system_types(request), "")


@router.post("/_search")
async def search_system_post(request: Request) -> Response:
    extra = await _form_params(request)
    return await _search(request, await _system_types(request), "", extra)


@router.get("/{rtype:seg}")
async def search_type(request: Request, rtype: str) -> Response:
    t = resource_type(rtype)
    return await _search(request, [t], t)


@router.post("/{rtype:seg}/_search")
async def search_type_post(request: Request, rtype: str) -> Response:
    t = resource_type(rtype)
    extra = await _form_params(request)
    return await _search(request, [t], t, extra)


# --- read ------------------------------------------------------------------------------


def not_modified(request: Request, stored: StoredVersion) -> bool:
    """Conditional read (http.html#cread): If-None-Match / If-Modified-Since."""
    tag = neg.if_none_match(request)
    if tag is not None:
        return tag == stored.version
    since = neg.if_modified_since(request)
    return since is not None and stored.last_updated.replace(microsecond=0) <= since


@router.get("/{rtype:seg}/{rid:seg}")
async def read(request: Request, rtype: str, rid: str) -> Response:
    t = resource_type(rtype)
    out = neg.negotiate(request)
    await require_visible(request, t, rid)
    stored = await services(request).resources.read(t, rid)
    if not_modified(request, stored):
        return Response(status_code=304, headers=version_headers(stored))
    return resource_response(stored, out)


@router.get("/{rtype:seg}/{rid:seg}/_history/{vid:seg}")
async def vread(request: Request, rtype: str, rid: str, vid: str) -> Response:
    t = resource_type(rtype)
    out = neg.negotiate(request)
    await require_visible(request, t, rid)
    stored = await services(request).resources.vread(t, rid, vid)
    if not request_policy(request).version_visible(stored):
        raise not_found(f"{t}/{rid} has no version {vid}")
    return resource_response(stored, out)


@router.get("/{ctype:seg}/{cid:seg}/{rtype:seg}")
async def search_compartment(request: Request, ctype: str, cid: str, rtype: str) -> Response:
    """Compartment search (compartmentdefinition.html): Patient/123/Observation?..."""
    compartment_type = resource_type(ctype)
    t = resource_type(rtype)
    if compartment_type != "Patient":
        raise FhirError.of(
            400, "not-supported", "Only the Patient compartment is supported", "compartment"
        )
    registry = services(request).search.registry
    if t != "Patient" and not registry.patient_compartment(t):
        raise bad_request(f"{t} is not in the Patient compartment", "type")
    check_id(cid)
    return await _search(request, [t], f"{ctype}/{cid}/{t}", compartment=(ctype, cid))


# --- writes ----------------------------------------------------------------------------


async def _write_response(
    request: Request, result: WriteOutcome, out: neg.Output, policy: Policy
) -> Response:
    """The answer to a write: the resource as Prefer asks, except to a token that may
    not read it, which gets the minimal answer whatever it prefers (Policy.sees)."""
    visible = await policy.sees(result.stored)
    return written_response(request, result.stored, result.created, out, visible)


def written_response(
    request: Request, stored: StoredVersion, created: bool, out: neg.Output, visible: bool
) -> Response:
    """A create's or update's answer: 201 with Location or 200 with Content-Location, the
    version headers, and the body Prefer asks for (none when ``visible`` is false: the
    token may not read what it wrote). api/view_store.py answers with it too."""
    prefer = neg.prefer(request)
    status = 201 if created else 200
    location = f"{base_url(request)}/{stored.type}/{stored.id}/_history/{stored.version}"
    headers = {"Location": location} if created else {"Content-Location": location}
    if prefer.return_ == "minimal" or not visible:
        return Response(status_code=status, headers={**version_headers(stored), **headers})
    if prefer.return_ == "OperationOutcome":
        verb = "Created" if created else "Updated"
        message = f"{verb} {stored.type}/{stored.id} version {stored.version}"
        return outcome_response(
            info_outcome(message), out, status, {**version_headers(stored), **headers}
        )
    return resource_response(stored, out, status, headers)


async def _resource_body(request: Request) -> Any:
    settings = services(request).settings
    limit = settings.max_body_bytes
    body = await neg.read_body(request, limit, neg.RESOURCE_BODY, "application/fhir+json")
    offload = services(request).resources.offload
    return await offload.parse_resource(body, limits=settings.input_limits())


def _writer(request: Request, rtype: str, interaction: str) -> tuple[str, Policy]:
    """The type a write names and the caller's policy, once it may ``interaction`` it."""
    t = resource_type(rtype)
    policy = request_policy(request)
    policy.require(t, interaction)
    return t, policy


@router.post("/{rtype:seg}")
async def create(request: Request, rtype: str) -> Response:
    t, policy = _writer(request, rtype, "c")
    out = neg.negotiate(request)
    body = await _resource_body(request)
    criteria = request.headers.get("if-none-exist")
    if criteria is not None:
        policy.require_criteria(t, "If-None-Exist")
    result = await services(request).resources.create(t, body, criteria, policy)
    return await _write_response(request, result, out, policy)


@router.put("/{rtype:seg}/{rid:seg}")
async def update(request: Request, rtype: str, rid: str) -> Response:
    t, policy = _writer(request, rtype, "u")
    out = neg.negotiate(request)
    body = await _resource_body(request)
    result = await services(request).resources.update(t, rid, body, neg.if_match(request), policy)
    return await _write_response(request, result, out, policy)


def _conditional_writer(request: Request, rtype: str, interaction: str) -> tuple[str, Policy]:
    """``_writer`` for a conditional interaction, whose criteria need a search scope."""
    t, policy = _writer(request, rtype, interaction)
    policy.require_criteria(t, "url")
    return t, policy


def _criteria(request: Request) -> str:
    query = request.url.query
    if not query:
        raise bad_request("A conditional interaction needs search criteria in the URL", "url")
    return query


@router.put("/{rtype:seg}")
async def conditional_update(request: Request, rtype: str) -> Response:
    t, policy = _conditional_writer(request, rtype, "u")
    out = neg.negotiate(request)
    body = await _resource_body(request)
    result = await services(request).resources.conditional_update(
        t, _criteria(request), body, neg.if_match(request), policy
    )
    return await _write_response(request, result, out, policy)


_PATCH_MEMBERS: dict[str, tuple[str, ...]] = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}


def _is_json_pointer(value: Any) -> bool:
    """RFC 6901: empty, or '/'-prefixed with '~' only in the escapes ~0 and ~1."""
    if not isinstance(value, str):
        return False
    if value == "":
        return True
    return value.startswith("/") and re.fullmatch(r"(?:[^~]|~[01])*", value) is not None


async def _patch_body(request: Request) -> jsonpatch.JsonPatch:
    settings = services(request).settings
    raw = await neg.read_body(request, settings.max_body_bytes, neg.PATCH_BODY, neg.JSON_PATCH)
    offload = services(request).resources.offload
    operations = await offload.parse(raw, limits=settings.input_limits())
    if not isinstance(operations, list) or not operations:
        raise bad_request("A JSON Patch body is a non-empty array of operations")
    for i, op in enumerate(operations):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise bad_request(f"JSON Patch operation {i} has no 'op'", f"[{i}]")
        name = op["op"]
        if name not in _PATCH_MEMBERS:
            raise bad_request(f"JSON Patch operation {i} has an unknown op {name!r}", f"[{i}]")
        # RFC 6902 section 4: the members each operation MUST contain; a document
        # missing one is malformed (400, RFC 5789 section 2.2), not unprocessable.
        for member in ("path", *_PATCH_MEMBERS[name]):
            if member not in op:
                raise bad_request(
                    f"JSON Patch operation {i} ({name}) has no {member!r} member", f"[{i}]"
                )
            if member in ("path", "from") and not _is_json_pointer(op[member]):
                raise bad_request(
                    f"JSON Patch operation {i}: {member} {op[member]!r} is not a JSON Pointer",
                    f"[{i}]",
                )
    try:
        return jsonpatch.JsonPatch(operations)
    except (jsonpatch.JsonPatchException, Exception) as exc:
        raise bad_request(f"Invalid JSON Patch: {exc}") from None


@router.patch("/{rtype:seg}/{rid:seg}")
async def patch(request: Request, rtype: str, rid: str) -> Response:
    t, policy = _writer(request, rtype, "u")
    policy.require_patch(t)
    out = neg.negotiate(request)
    ops = await _patch_body(request)
    result = await services(request).resources.patch(t, rid, ops, neg.if_match(request), policy)
    return await _write_response(request, result, out, policy)


@router.patch("/{rtype:seg}")
async def conditional_patch(request: Request, rtype: str) -> Response:
    t, policy = _writer(request, rtype, "u")
    policy.require_patch(t)
    policy.require_criteria(t, "url")
    out = neg.negotiate(request)
    ops = await _patch_body(request)
    result = await services(request).resources.conditional_patch(
        t, _criteria(request), ops, neg.if_match(request), policy
    )
    return await _write_response(request, result, out, policy)


def _delete_response(
    request: Request, deleted: list[StoredVersion], message: str, out: neg.Output
) -> Response:
    headers = version_headers(deleted[0]) if len(deleted) == 1 else {}
    if neg.prefer(request).return_ == "minimal":
        return Response(status_code=204, headers=headers)
    return outcome_response(info_outcome(message), out, 200, headers)


@router.delete("/{rtype:seg}/{rid:seg}")
async def delete(request: Request, rtype: str, rid: str) -> Response:
    t, policy = _writer(request, rtype, "d")
    out = neg.negotiate(request)
    stored = await services(request).resources.delete(t, rid, neg.if_match(request), policy)
    if stored is None:
        message = f"{t}/{rid} does not exist; nothing to delete"
    else:
        message = f"{t}/{rid} is deleted (version {stored.version})"
    return _delete_response(request, [stored] if stored else [], message, out)


@router.delete("/{rtype:seg}")
async def conditional_delete(request: Request, rtype: str) -> Response:
    t, policy = _conditional_writer(request, rtype, "d")
    out = neg.negotiate(request)
    deleted = await services(request).resources.conditional_delete(t, _criteria(request), policy)
    if deleted:
        names = ", ".join(f"{d.type}/{d.id}" for d in deleted)
        message = f"Deleted {len(deleted)} resource(s): {names}"
    else:
        message = "No resource matches the criteria; nothing to delete"
    return _delete_response(request, deleted, message, out)
