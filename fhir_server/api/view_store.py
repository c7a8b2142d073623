"""``[base]/ViewDefinition``: stored SQL on FHIR ViewDefinitions over HTTP
(fhir_server/views/store.py).

create ``POST``, read ``GET [id]``, vread ``GET [id]/_history/[vid]``, instance history
``GET [id]/_history``, update ``PUT [id]`` (update-as-create, ``If-Match``), delete
``DELETE [id]`` and search ``GET ViewDefinition?name=&url=&version=&status=&resource=&_id=``,
answered like the R4 types' (ETag, Last-Modified, Location, Prefer, OperationOutcomes).
Registered before the generic ``/{type}`` routes, which know R4 types only. Every route
goes through the request's SMART policy (the store applies it). The operations
(``$run``) are in api/views.py.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
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
    version_headers,
)
from fhir_server.api.routes import (
    base_url,
    bind_base_url,
    not_modified,
    services,
    written_response,
)
from fhir_server.authz.context import request_policy
from fhir_server.authz.policy import Policy
from fhir_server.datetimes import format_instant
from fhir_server.digits import whole_number
from fhir_server.outcome import FhirError, bad_request, info_outcome
from fhir_server.storage import StoredVersion
from fhir_server.views.store import RESULT_PARAMS, TYPE, ViewStore, Written

router = APIRouter(dependencies=[Depends(bind_base_url)])


def view_store(request: Request) -> ViewStore:
    """The app's ViewStore (made on first use, over the app's storage): for these routes,
    $run and $viewdefinition-export."""
    state = request.app.state
    found: ViewStore | None = getattr(state, "view_store", None)
    if found is None:
        found = state.view_store = ViewStore(services(request).resources.storage)
    return found


def _output(request: Request, allow_count: bool = False) -> neg.Output:
    """How to render: JSON, ``_pretty``; ``_summary=count`` on searches and history. The
    other subsetting (``_summary``, ``_elements``) follows the R4 definitions' summary
    flags, which a ViewDefinition has none of: 400 rather than a guess."""
    out = neg.negotiate(request, allow_count)
    if out.elements is not None:
        raise bad_request(
            f"_elements is not supported on {TYPE}", "_elements", code="not-supported"
        )
    if out.summary not in (None, "false", "count"):
        raise bad_request(
            f"_summary={out.summary} is not supported on {TYPE}", "_summary", code="not-supported"
        )
    return out


async def _body(request: Request) -> Any:
    settings = services(request).settings
    raw = await neg.read_body(request, settings.max_body_bytes, neg.RESOURCE_BODY, neg.FHIR_JSON)
    offload = services(request).resources.offload
    return await offload.parse(raw, limits=settings.input_limits())


async def _readable(policy: Policy) -> bool:
    """May the response show a view? Only to a token that may read ViewDefinitions (a
    write-only token gets the minimal answer, as for the R4 types: Policy.sees)."""
    return await policy.try_restriction(TYPE, "r") is not None


async def _write_response(request: Request, written: Written, out: neg.Output) -> Response:
    visible = await _readable(request_policy(request))
    return written_response(request, written.stored, written.created, out, visible)


def _count(value: str | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    number = whole_number(value)
    if number is None:
        raise bad_request("_count must be a non-negative integer", "_count")
    return min(number, maximum)


# --- type level -------------------------------------------------------------------------


@router.post(f"/{TYPE}")
async def create(request: Request) -> Response:
    out = _output(request)
    policy = request_policy(request)
    policy.require(TYPE, "c")  # before anything of the request is looked at
    if request.headers.get("if-none-exist") is not None:
        raise FhirError.of(
            400, "not-supported", f"Conditional create is not supported on {TYPE}", "If-None-Exist"
        )
    written = await view_store(request).create(await _body(request), policy)
    return await _write_response(request, written, out)


@router.get(f"/{TYPE}")
async def search(request: Request) -> Response:
    return await _search(request, request.query_params.multi_items())


@router.post(f"/{TYPE}/_search")
async def search_post(request: Request) -> Response:
    """POST _search: the parameters in an application/x-www-form-urlencoded body (and
    the URL), as for the R4 types (http.html#search)."""
    declared = neg.media_type(request.headers.get("content-type"))
    if declared != "application/x-www-form-urlencoded":
        raise FhirError.of(
            415,
            "not-supported",
            "POST _search takes an application/x-www-form-urlencoded body",
            "Content-Type",
        )
    raw = await neg.read_bounded(request, services(request).settings.max_body_bytes)
    try:
        form = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise bad_request("The form body is not valid UTF-8") from None
    return await _search(request, [*request.query_params.multi_items(), *form])


async def _search(request: Request, given: list[tuple[str, str]]) -> Response:
    """search.html, simply: each parameter's values ORed, parameters ANDed, id order,
    ``_count`` per page with keyset ``next`` links, ``total`` always."""
    out = _output(request, allow_count=True)
    settings = services(request).settings
    # search.html#errors: "Empty parameters are not an error - they are just ignored"
    given = [(k, v) for k, v in given if v != ""]
    values = dict(given)
    count = _count(values.get("_count"), settings.search_default_count, settings.search_max_count)
    params = [(k, v) for k, v in given if k not in RESULT_PARAMS]
    if out.summary == "count" or values.get("_summary") == "count":
        count = 0
    cursor = values.get("_cursor")
    page = await view_store(request).search(params, request_policy(request), count, cursor)
    base = base_url(request)
    kept = [*params, *([("_count", str(count))] if "_count" in values else [])]

    def link(after: str | None) -> str:
        items = kept + ([("_cursor", after)] if after else [])
        return f"{base}/{TYPE}" + (f"?{urlencode(items)}" if items else "")

    links = {"self": link(cursor), "first": link(None)}
    if page.next_cursor:
        links["next"] = link(page.next_cursor)
    entries = [
        {
            "fullUrl": f"{base}/{TYPE}/{v.id}",
            "resource": resource_json(v.raw, out),
            "search": {"mode": "match"},
        }
        for v in page.views
        if v.raw is not None
    ]
    return json_response(bundle("searchset", entries, links, page.total), out)


@router.get(f"/{TYPE}/_history")
async def type_history(request: Request) -> Response:
    """Only instance history is offered (the type's would list every view's versions)."""
    raise FhirError.of(
        400,
        "not-supported",
        f"History of all ViewDefinitions is not supported; ask for one: {TYPE}/[id]/_history",
        "_history",
    )


@router.api_route(f"/{TYPE}", methods=["PUT", "PATCH", "DELETE"])
async def type_level_not_allowed(request: Request) -> Response:
    """Conditional update, patch and delete are not offered on ViewDefinition."""
    raise FhirError.of(
        405,
        "not-supported",
        f"{request.method} is not allowed on {TYPE} (no conditional interactions)",
        headers={"Allow": "GET, POST"},
    )


# --- instance level ---------------------------------------------------------------------


@router.get(f"/{TYPE}/{{rid:seg}}")
async def read(request: Request, rid: str) -> Response:
    out = _output(request)
    stored = await view_store(request).read(rid, request_policy(request))
    if not_modified(request, stored):
        return Response(status_code=304, headers=version_headers(stored))
    return resource_response(stored, out)


@router.put(f"/{TYPE}/{{rid:seg}}")
async def update(request: Request, rid: str) -> Response:
    out = _output(request)
    policy = request_policy(request)
    policy.require(TYPE, "u")
    body = await _body(request)
    written = await view_store(request).update(rid, body, neg.if_match(request), policy)
    return await _write_response(request, written, out)


@router.delete(f"/{TYPE}/{{rid:seg}}")
async def delete(request: Request, rid: str) -> Response:
    out = _output(request)
    stored = await view_store(request).delete(rid, neg.if_match(request), request_policy(request))
    headers = version_headers(stored) if stored is not None else {}
    if neg.prefer(request).return_ == "minimal":
        return Response(status_code=204, headers=headers)
    if stored is None:
        message = f"{TYPE}/{rid} does not exist; nothing to delete"
    else:
        message = f"{TYPE}/{rid} is deleted (version {stored.version})"
    return outcome_response(info_outcome(message), out, 200, headers)


@router.patch(f"/{TYPE}/{{rid:seg}}")
async def patch(request: Request, rid: str) -> Response:
    raise FhirError.of(
        405,
        "not-supported",
        f"PATCH is not supported on {TYPE}: PUT the whole ViewDefinition",
        headers={"Allow": "GET, PUT, DELETE"},
    )


@router.get(f"/{TYPE}/{{rid:seg}}/_history")
async def history(request: Request, rid: str) -> Response:
    out = _output(request, allow_count=True)
    for name in request.query_params:
        if name not in ("_count", "_cursor", "_format", "_pretty", "_summary"):
            raise bad_request(f"Unknown or unsupported history parameter {name!r}", name)
    settings = services(request).settings
    count = _count(
        request.query_params.get("_count"),
        settings.history_default_count,
        settings.history_max_count,
    )
    if out.summary == "count":
        count = 0
    cursor = request.query_params.get("_cursor")
    page = await view_store(request).history_page(rid, request_policy(request), count, cursor)
    base = base_url(request)
    kept = [("_count", str(count))] if "_count" in request.query_params else []

    def link(after: str | None) -> str:
        items = kept + ([("_cursor", after)] if after else [])
        return f"{base}/{TYPE}/{rid}/_history" + (f"?{urlencode(items)}" if items else "")

    links = {"self": link(cursor), "first": link(None)}
    if page.next_cursor:
        links["next"] = link(page.next_cursor)
    entries = [_history_entry(v, base, out) for v in page.versions]
    return json_response(bundle("history", entries, links, page.total), out)


def _history_entry(v: StoredVersion, base: str, out: neg.Output) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": f"{base}/{TYPE}/{v.id}"}
    if v.raw is not None:
        entry["resource"] = resource_json(v.raw, out)
    entry["request"] = {"method": v.method, "url": TYPE if v.method == "POST" else f"{TYPE}/{v.id}"}
    status = "204 No Content" if v.deleted else "201 Created" if v.created else "200 OK"
    entry["response"] = {
        "status": status,
        "etag": etag(v.version),
        "lastModified": format_instant(v.last_updated),
    }
    return entry


@router.get(f"/{TYPE}/{{rid:seg}}/_history/{{vid:seg}}")
async def vread(request: Request, rid: str, vid: str) -> Response:
    out = _output(request)
    stored = await view_store(request).vread(rid, vid, request_policy(request))
    return resource_response(stored, out)
