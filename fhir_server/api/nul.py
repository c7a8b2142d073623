"""NUL bytes (U+0000) in a request's URL or headers are refused with 400 before any route
runs. No FHIR value holds one (datatypes.html#string: "Strings SHOULD not contain Unicode
character points below 32, except for u0009 (horizontal tab), u0010 (carriage return)
and u0013 (line feed)"), XML cannot carry one, and MongoDB refuses one in a regular
expression: left in, a NUL made a search parameter a 500. Searches that do not
come through the URL (POST _search bodies, If-None-Exist, bundle entries) are refused by
the search parser itself (search/parse.py). In a header a NUL is invalid anyway (RFC 9110
5.5: "a recipient of CR, LF, or NUL within a field value MUST either reject the message or
replace each of those characters with SP before further processing")."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_server.api.errors import outcome_response
from fhir_server.outcome import Issue

NUL = "\x00"


def nul_location(scope: Scope) -> str | None:
    """What holds a NUL: a query parameter's name, "url" (the path) or a header's name."""
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" in query or NUL in query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if NUL in name or NUL in value:
                return name.replace(NUL, "\\0") or "url"
        return "url"
    if NUL in scope.get("path", ""):  # the server has decoded it
        return "url"
    for header, value in scope.get("headers", ()):
        if b"\x00" in value:  # named as clients write it: If-None-Exist
            return "-".join(part.capitalize() for part in header.decode("latin-1").split("-"))
    return None


class RefuseNul:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        where = nul_location(scope) if scope["type"] == "http" else None
        if where is None:
            await self.app(scope, receive, send)
            return
        issue = Issue("invalid", f"{where} contains a NUL character (U+0000)", "error", (where,))
        await outcome_response(400, [issue], {})(scope, receive, send)
