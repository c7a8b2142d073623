"""What a request asks for and sends: formats, Prefer, conditional headers, bodies
(http.html#mime-type, http.html#ops, http.html#concurrency)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from starlette.requests import Request

from fhir_server.digits import whole_number
from fhir_server.outcome import FhirError, bad_request
from fhir_server.subsetting import SUMMARY_MODES, parse_elements

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
_JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir", "text/json"})
_JSON_FORMATS = frozenset({"json", *_JSON_TYPES})
_XML_FORMATS = frozenset(
    {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}
)
_ETAG = re.compile(r'(?:W/)?"(\d+)"', re.ASCII)


def media_type(header: str | None) -> str | None:
    if not header:
        return None
    return header.split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Output:
    """How to render the response."""

    content_type: str = f"{FHIR_JSON}; charset=utf-8"
    pretty: bool = False
    summary: str | None = None
    elements: frozenset[str] | None = None

    @property
    def subsetting(self) -> bool:
        return (self.summary not in (None, "false")) or self.elements is not None


def _format_error(value: str, where: str) -> FhirError:
    return FhirError.of(
        406,
        "not-supported",
        f"{where} asks for {value!r}; this server produces JSON only (application/fhir+json)",
        where,
    )


def negotiate(request: Request, allow_count: bool = False) -> Output:
    params = request.query_params
    content_type = f"{FHIR_JSON}; charset=utf-8"
    fmt = params.get("_format")
    if fmt is not None:
        value = fmt.strip().lower().replace(" ", "+")  # '+' arrives decoded as a space
        base = value.split(";", 1)[0]
        if base in _XML_FORMATS or base not in _JSON_FORMATS:
            raise _format_error(fmt, "_format")
        if base == "application/json":
            content_type = "application/json; charset=utf-8"
    else:
        accept = request.headers.get("accept")
        if accept:
            types = [media_type(p) or "" for p in accept.split(",")]
            if not any(t in _JSON_TYPES or t in ("*/*", "application/*") for t in types):
                raise _format_error(accept, "Accept")
            if "application/json" in types and FHIR_JSON not in types:
                content_type = "application/json; charset=utf-8"
    pretty_value = params.get("_pretty")
    if pretty_value not in (None, "true", "false"):
        raise bad_request("_pretty must be true or false", "_pretty")
    summary = params.get("_summary")
    if summary is not None and summary not in SUMMARY_MODES:
        raise bad_request(
            f"_summary must be one of {', '.join(SUMMARY_MODES)}, got {summary!r}", "_summary"
        )
    if summary == "count" and not allow_count:
        raise bad_request("_summary=count applies to searches and history only", "_summary")
    elements_value = params.get("_elements")
    elements = parse_elements(elements_value) if elements_value is not None else None
    if elements is not None and summary not in (None, "false"):
        raise bad_request("_summary and _elements cannot be combined", "_elements")
    return Output(content_type, pretty_value == "true", summary, elements)


@dataclass(frozen=True, slots=True)
class Prefer:
    """The Prefer header (RFC 7240) as FHIR uses it."""

    return_: str = "representation"  # minimal | representation | OperationOutcome
    handling: str = "strict"


def prefer(request: Request) -> Prefer:
    header = request.headers.get("prefer")
    if not header:
        return Prefer()
    values: dict[str, str] = {}
    for part in re.split(r"[,;]", header):
        key, _, value = part.strip().partition("=")
        values[key.strip().lower()] = value.strip().strip('"')
    ret = values.get("return", "representation")
    if ret not in ("minimal", "representation", "OperationOutcome"):
        ret = "representation"  # RFC 7240: unknown preferences are ignored
    handling = values.get("handling", "strict")
    return Prefer(ret, handling if handling in ("strict", "lenient") else "strict")


def if_match(request: Request) -> int | None:
    value = request.headers.get("if-match")
    if value is None:
        return None
    m = _ETAG.fullmatch(value.strip())
    if not m:
        raise bad_request(
            f'If-Match must be a version ETag such as W/"3", got {value!r}', "If-Match"
        )
    version = whole_number(m.group(1))
    assert version is not None  # _ETAG matched ASCII digits
    return version


def if_none_match(request: Request) -> int | None:
    value = request.headers.get("if-none-match")
    if value is None:
        return None
    m = _ETAG.fullmatch(value.strip())
    return whole_number(m.group(1)) if m else None


def if_modified_since(request: Request) -> datetime | None:
    value = request.headers.get("if-modified-since")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # RFC 9110 13.1.3: an invalid date is ignored


async def read_bounded(request: Request, limit: int) -> bytes:
    """The raw request body, refused with 413 as soon as it exceeds ``limit``."""
    length = request.headers.get("content-length")
    declared = whole_number(length) if length is not None else None
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request, limit: int, allowed: frozenset[str], kind: str) -> bytes:
    """The request body, after checking its media type and size."""
    declared = media_type(request.headers.get("content-type"))
    if declared is not None and declared not in allowed:
        raise FhirError.of(
            415,
            "not-supported",
            f"Content-Type {declared!r} is not supported here; send {kind}",
            "Content-Type",
        )
    body = await read_bounded(request, limit)
    if not body.strip():
        raise bad_request("The request body is empty", "$this")
    return body


def _too_large(limit: int) -> FhirError:
    """The expression is `$this`, the body as a whole (as for the JSON limits)."""
    message = f"The request body exceeds the limit of {limit} bytes"
    return FhirError.of(413, "too-costly", message, "$this")


RESOURCE_BODY = _JSON_TYPES
PATCH_BODY = frozenset({JSON_PATCH})
