"""Turning stored versions, bundles and outcomes into HTTP responses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from starlette.responses import Response

from fhir_server.api.negotiation import Output
from fhir_server.audit import seen
from fhir_server.datetimes import http_date
from fhir_server.jsonio import dumps, load_stored
from fhir_server.outcome import operation_outcome
from fhir_server.storage import StoredVersion
from fhir_server.subsetting import select_elements, summarize


def etag(version: int) -> str:
    return f'W/"{version}"'


def version_headers(stored: StoredVersion) -> dict[str, str]:
    return {"ETag": etag(stored.version), "Last-Modified": http_date(stored.last_updated)}


def resource_json(raw: bytes, out: Output) -> Any:
    """A stored resource for embedding in a bundle: untouched bytes when neither
    subsetting nor _pretty is asked for (no parse, no re-serialisation), else the
    (subsetted) object; an orjson Fragment is written verbatim, never indented."""
    if not out.subsetting and not out.pretty:
        return orjson.Fragment(raw)
    resource = load_stored(raw)  # parsed for subsetting, and so _pretty can indent it
    if out.summary is not None:
        resource = summarize(resource, out.summary)
    if out.elements is not None:
        resource = select_elements(resource, out.elements)
    return resource


def json_response(
    body: Any, out: Output, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    content = dumps(body, pretty=out.pretty)
    return Response(content, status, headers=headers, media_type=out.content_type)


def resource_response(
    stored: StoredVersion,
    out: Output,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    assert stored.raw is not None
    seen.saw(stored)  # what the answer discloses, for the audit record
    all_headers = {**version_headers(stored), **(headers or {})}
    if not out.subsetting and not out.pretty:
        return Response(stored.raw, status, headers=all_headers, media_type=out.content_type)
    return json_response(resource_json(stored.raw, out), out, status, all_headers)


def search_entry(v: StoredVersion, base: str, out: Output, mode: str) -> dict[str, Any]:
    """A searchset entry (``match`` or ``include``) for a search or an operation."""
    assert v.raw is not None
    seen.saw(v)
    return {
        "fullUrl": f"{base}/{v.type}/{v.id}",
        "resource": resource_json(v.raw, out),
        "search": {"mode": mode},
    }


def outcome_response(
    outcome: dict[str, Any], out: Output, status: int, headers: dict[str, str] | None = None
) -> Response:
    return json_response(outcome, out, status, headers)


def bundle(
    bundle_type: str,
    entries: Iterable[dict[str, Any]],
    links: dict[str, str],
    total: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": bundle_type}
    if total is not None:
        out["total"] = total
    out["link"] = [{"relation": rel, "url": url} for rel, url in links.items()]
    out["entry"] = list(entries)
    if not out["entry"]:
        del out["entry"]
    return out


def error_body(issues_outcome: dict[str, Any] | None = None) -> bytes:
    return dumps(issues_outcome or operation_outcome([]))
