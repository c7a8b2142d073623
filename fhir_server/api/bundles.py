"""``POST [base]`` with a transaction or batch Bundle (http.html#transaction).

A transaction goes to the TransactionService (all or nothing, one MongoDB
transaction). A batch is, by the spec's definition, its entries performed one by one:
each entry is dispatched through this same application as the request it describes, so
it behaves exactly as that request sent on its own would. GET entries of a transaction
are dispatched the same way, after its writes commit.
"""

from __future__ import annotations

import base64
import binascii
import logging
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import httpx
from fastapi import APIRouter, Request
from starlette.responses import Response

from fhir_server.api import negotiation as neg
from fhir_server.api.rendering import json_response
from fhir_server.api.routes import base_url, services
from fhir_server.authz.context import request_policy
from fhir_server.datetimes import format_instant
from fhir_server.jsonio import dumps, load_stored
from fhir_server.outcome import FhirError, bad_request, info_outcome, operation_outcome
from fhir_server.resource_types import DOT_SEGMENTS
from fhir_server.service.transaction import (
    Entry,
    TransactionService,
    bundle_entries,
    entry_error,
    split_url,
)

router = APIRouter()
log = logging.getLogger("fhir_server")
_FORWARDED = ("authorization", "prefer", "accept")


@router.post("")
@router.post("/")
async def transaction_or_batch(request: Request) -> Response:
    svc = services(request)
    out = neg.negotiate(request)
    raw = await neg.read_body(
        request, svc.settings.bundle_max_bytes, neg.RESOURCE_BODY, "application/fhir+json"
    )
    bundle = await svc.resources.offload.parse(raw, limits=svc.settings.input_limits())
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise bad_request("POST [base] takes a Bundle", "resourceType")
    kind = bundle.get("type")
    if kind == "transaction":
        return await _transaction(request, bundle, out)
    if kind == "batch":
        return await _batch(request, bundle, out)
    raise bad_request(
        f"POST [base] takes a transaction or batch Bundle, not {kind!r}; store other "
        "Bundles (document, message, collection) with POST [base]/Bundle",
        "Bundle.type",
    )


# --- transaction -------------------------------------------------------------------------


async def _transaction(request: Request, bundle: dict[str, Any], out: neg.Output) -> Response:
    svc = services(request)
    base = base_url(request)
    lenient = neg.prefer(request).handling == "lenient"
    policy = request_policy(request)
    transactions = TransactionService(
        svc.resources, svc.settings.bundle_max_entries, lenient, policy
    )
    result = await transactions.process(bundle, base)
    prefer_return = neg.prefer(request).return_
    reads: dict[int, dict[str, Any]] = {}
    async with _internal_client(request) as client:
        for e in result.reads:
            reads[e.index] = await _dispatch(client, request, e.method, e.url, None, {})
    entries = []
    for e in result.entries:
        if e.index in reads:
            entries.append(reads[e.index])
        else:
            shown = e.stored is None or await policy.sees(e.stored)
            entries.append(_write_entry(e, base, prefer_return if shown else "minimal"))
    body = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
    return json_response(body, out)


def _write_entry(e: Entry, base: str, prefer_return: str) -> dict[str, Any]:
    response: dict[str, Any] = {"status": e.status}
    entry: dict[str, Any] = {}
    stored = e.stored
    if stored is not None:
        entry["fullUrl"] = f"{base}/{stored.type}/{stored.id}"
        if not stored.deleted:
            response["location"] = f"{stored.type}/{stored.id}/_history/{stored.version}"
        response["etag"] = f'W/"{stored.version}"'
        response["lastModified"] = format_instant(stored.last_updated)
        if prefer_return == "representation" and stored.raw is not None:
            entry["resource"] = load_stored(stored.raw)
    if prefer_return == "OperationOutcome":
        # Bundle.entry.response.outcome: "An OperationOutcome containing hints and
        # warnings produced as part of processing this entry in a batch or transaction"
        what = f"{e.type}/{e.id}" + (f" version {stored.version}" if stored else "")
        response["outcome"] = _entry_outcome(e, f"{e.method} {what}: {e.status}")
    entry["response"] = response
    return entry


def _entry_outcome(e: Entry, message: str) -> dict[str, Any]:
    """Says whether a write made a new version, in codes of
    http://hl7.org/fhir/operation-outcome (MSG_CREATED, MSG_UPDATED, MSG_DELETED_DONE):
    a PUT or POST whose content equals the current version's makes none (then no code),
    which a client re-sending data (an importer) counts as unchanged without comparing
    clocks."""
    outcome = info_outcome(message)
    code = None
    if e.write is not None and e.method == "DELETE":
        code = "MSG_DELETED_DONE"
    elif e.write is not None:
        code = "MSG_CREATED" if e.status.startswith("201") else "MSG_UPDATED"
    elif e.stored is not None and e.method in ("PUT", "POST", "PATCH"):
        outcome["issue"][0]["diagnostics"] = f"{message}; no change (the same content)"
    if code is not None:
        outcome["issue"][0]["details"] = {
            "coding": [{"system": "http://hl7.org/fhir/operation-outcome", "code": code}]
        }
    return outcome


# --- batch --------------------------------------------------------------------------------


async def _batch(request: Request, bundle: dict[str, Any], out: neg.Output) -> Response:
    svc = services(request)
    raw_entries = bundle_entries(bundle, svc.settings.bundle_max_entries)
    entries = []
    async with _internal_client(request) as client:
        for i, raw in enumerate(raw_entries):
            try:
                method, url, content, headers = _batch_request(raw, base_url(request))
                entries.append(await _dispatch(client, request, method, url, content, headers))
            except FhirError as exc:
                entries.append(_failed_entry(i, exc))
            except Exception:  # one entry's fault must not fail the others
                log.exception("batch entry %d failed", i)
                message = "Internal server error; the entry was not completed"
                entries.append(_failed_entry(i, FhirError.of(500, "exception", message)))
    body = {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
    return json_response(body, out)


def _failed_entry(index: int, exc: FhirError) -> dict[str, Any]:
    entry = Entry(index=index, full_url=None, method="", type="")
    issues = entry_error(entry, exc).issues
    return {"response": {"status": _status_line(exc.status), "outcome": operation_outcome(issues)}}


def _batch_request(raw: Any, base: str) -> tuple[str, str, bytes | None, dict[str, str]]:
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise bad_request("A batch entry needs a request", "request")
    request = raw["request"]
    method, url = request.get("method"), request.get("url")
    if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        raise bad_request(f"Unsupported request.method {method!r}", "request.method")
    if not isinstance(url, str) or not url:
        raise bad_request("request.url is required", "request.url")
    path, query = split_url(url, base)
    if any(segment in DOT_SEGMENTS for segment in path.split("/")):
        # dispatched as a URL, "Patient/.." would become the base: refuse, as a
        # transaction does, rather than perform another request than the entry names
        raise bad_request(f"Invalid id in request.url {url!r}", "request.url")
    relative = path + (f"?{query}" if query else "")
    headers: dict[str, str] = {}
    for field, header in (
        ("ifMatch", "If-Match"),
        ("ifNoneMatch", "If-None-Match"),
        ("ifNoneExist", "If-None-Exist"),
        ("ifModifiedSince", "If-Modified-Since"),
    ):
        if isinstance(request.get(field), str):
            headers[header] = request[field]
    body: bytes | None = None
    resource = raw.get("resource")
    if method == "PATCH":
        body = _binary_patch(resource)
        headers["Content-Type"] = neg.JSON_PATCH
    elif method in ("POST", "PUT"):
        if resource is None:
            raise bad_request(f"A {method} entry needs a resource", "resource")
        body = dumps(resource)
        headers["Content-Type"] = neg.FHIR_JSON
    return method, relative, body, headers


def _binary_patch(resource: Any) -> bytes:
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise FhirError.of(
            415, "not-supported", "A PATCH entry needs a Binary holding a JSON Patch"
        )
    try:
        return base64.b64decode(resource.get("data", ""), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("The Binary's data is not base64", "resource.data") from None


# --- dispatching an entry through the application ------------------------------------------


def _internal_client(request: Request) -> httpx.AsyncClient:
    # An entry's own failure stays in its response entry (http.html#transaction: batch
    # entries are independent), even an unforeseen one the application answers with
    # 500: the transport must not re-raise it into the whole batch.
    transport = httpx.ASGITransport(app=request.app, raise_app_exceptions=False)
    root = str(request.base_url).rstrip("/")
    return httpx.AsyncClient(transport=transport, base_url=root, timeout=None)


async def _dispatch(
    client: httpx.AsyncClient,
    outer: Request,
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
) -> dict[str, Any]:
    """Perform one entry as a request to this application; its batch-response entry."""
    forwarded = {k: v for k, v in outer.headers.items() if k in _FORWARDED}
    path = "/fhir/" + url.lstrip("/")
    response = await client.request(method, path, content=body, headers={**forwarded, **headers})
    entry: dict[str, Any] = {}
    result: dict[str, Any] = {"status": _status_line(response.status_code)}
    for header, field in (("location", "location"), ("etag", "etag")):
        if header in response.headers:
            result[field] = response.headers[header]
    if "last-modified" in response.headers:
        try:
            modified = parsedate_to_datetime(response.headers["last-modified"])
            result["lastModified"] = format_instant(modified)
        except (TypeError, ValueError):
            pass
    content = _own_json(response.content) if response.content else None
    if isinstance(content, dict):
        # lastModified is the resource's meta.lastUpdated, which Last-Modified (an HTTP
        # date) truncates to the second
        last_updated = (content.get("meta") or {}).get("lastUpdated")
        if isinstance(last_updated, str) and "lastModified" in result:
            result["lastModified"] = last_updated
    if response.status_code >= 400:
        result["outcome"] = content
    elif (
        isinstance(content, dict)
        and content.get("resourceType") == "OperationOutcome"
        and method != "GET"
    ):
        # Prefer: return=OperationOutcome: "An OperationOutcome containing hints and
        # warnings produced as part of processing this entry" (Bundle.entry.response)
        result["outcome"] = content
    elif isinstance(content, dict) and method != "HEAD":
        entry["resource"] = content
    entry["response"] = result
    return entry


def _own_json(content: bytes) -> Any:
    """An entry's response: this application's own JSON, so trusted and not held to
    the limits of request bodies (a search page of 1,000 resources may exceed them)."""
    try:
        return load_stored(content)
    except ValueError:
        raise bad_request("An entry's response is not JSON", "response") from None


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
