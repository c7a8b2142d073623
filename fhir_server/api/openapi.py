"""``GET [base]/openapi.json``: the OpenAPI 3.1 document of the FHIR API
(service/openapi.py). Public, like ``/metadata`` it is derived from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from fhir_server.api.routes import base_url, bind_base_url, services
from fhir_server.jsonio import dumps
from fhir_server.outcome import FhirError, bad_request
from fhir_server.resource_types import is_resource_type
from fhir_server.service.openapi import openapi_document

router = APIRouter(dependencies=[Depends(bind_base_url)])
_CACHED = 16  # documents kept per app (base URL x _type)


@router.get("/openapi.json")
async def openapi(request: Request) -> Response:
    """The whole API, or with ``_type=A,B`` the paths of those types and the system
    endpoints. Built once per base URL, types and app: the settings and the registry it
    is derived from do not change while the app runs."""
    for name in request.query_params:
        if name != "_type":
            raise bad_request(f"Unknown parameter {name!r} for openapi.json", name)
    types = _types(request.query_params.get("_type"))
    base = base_url(request)
    key = (base, types)
    cache: dict[tuple[str, tuple[str, ...] | None], bytes] = _cache(request)
    body = cache.get(key)
    if body is None:
        svc = services(request)
        body = dumps(openapi_document(svc.settings, base, svc.search.registry, types))
        if len(cache) >= _CACHED:  # the base URL comes from the Host header: bounded
            cache.clear()
        cache[key] = body
    return Response(body, media_type="application/json")


def _types(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(sorted({t.strip() for t in value.split(",") if t.strip()}))
    for name in names:
        if not is_resource_type(name):
            raise bad_request(f"_type: unknown resource type {name!r}", "_type")
    if not names:
        raise bad_request("_type needs at least one resource type", "_type")
    return names


def _cache(request: Request) -> dict[Any, Any]:
    state = request.app.state
    if not hasattr(state, "openapi_cache"):
        state.openapi_cache = {}
    return state.openapi_cache  # type: ignore[no-any-return]


@router.api_route("/openapi.json", methods=["POST", "PUT", "PATCH", "DELETE"])
async def openapi_read_only(request: Request) -> Response:
    """A document, not a resource type: any method but GET is 405 (RFC 9110 15.5.6)."""
    raise FhirError.of(
        405,
        "not-supported",
        f"{request.method} is not allowed on {request.url.path}",
        headers={"Allow": "GET"},
    )
