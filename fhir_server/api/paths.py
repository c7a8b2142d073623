"""The path segments of the FHIR routes, as Starlette convertors, and the order the
routers are tried in.

FastAPI tries every route in order until one matches, and each try costs several
microseconds (its scope bookkeeping, then the regex): a read tried 65 routes before
reaching ``/{rtype}/{rid}``, about a third of its server time. The REST routes
therefore come first, with segments that never start with ``$``: an operation path
(``/CodeSystem/$lookup``, ``/Patient/123/$everything``, ``/$export``) cannot match
them and goes on to the operation routers behind; an operation no router knows ends
at ``unknown_operation`` (400 not-supported, as before).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.convertors import Convertor, register_url_convertor

from fhir_server.outcome import FhirError


class Segment(Convertor[str]):
    """One path segment that is not an operation name (``$...``)."""

    regex = r"[^/$][^/]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class Operation(Convertor[str]):
    """An operation name: ``$`` and its code."""

    regex = r"\$[^/]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("seg", Segment())
register_url_convertor("op", Operation())


unknown_operations = APIRouter()
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@unknown_operations.api_route("/{name:op}", methods=_METHODS)
@unknown_operations.api_route("/{rtype:seg}/{name:op}", methods=_METHODS)
@unknown_operations.api_route("/{rtype:seg}/{rid:seg}/{name:op}", methods=_METHODS)
async def unknown_operation(request: Request, name: str) -> None:
    """Last of the FHIR routes: an operation that no router serves at this level."""
    raise FhirError.of(400, "not-supported", f"Operation {name} is not supported on this endpoint")
