"""CORS for browser SMART apps on other origins. They call the FHIR API and the token
endpoint with fetch, and nothing else: the login, consent and launch pages are
top-level navigations, so they get no CORS headers (a page that other origins may read
helps only an attacker). Starlette's middleware answers preflight OPTIONS requests
itself, before authentication, and adds the headers to every answer, errors included."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_server.jsonio import dumps
from fhir_server.outcome import Issue, operation_outcome

ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Accept",
    "If-Match",
    "If-None-Match",
    "If-None-Exist",
    "If-Modified-Since",
    "Prefer",
    "X-Requested-With",
)
EXPOSED_HEADERS = (
    "Location",
    "Content-Location",
    "ETag",
    "Last-Modified",
    "WWW-Authenticate",
    "X-Progress",
    "Retry-After",
)
ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def origins(setting: str) -> list[str]:
    """``*`` or a comma-separated list of origins (scheme://host[:port])."""
    return [o.strip().rstrip("/") for o in setting.split(",") if o.strip()]


class _Cors(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as an OperationOutcome."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode()  # e.g. "Disallowed CORS origin"
        issue = Issue("security", f"CORS preflight refused: {reason}", expression=("Origin",))
        headers = {k: v for k, v in response.headers.items() if k.lower().startswith("access-")}
        return Response(
            dumps(operation_outcome([issue])),
            response.status_code,
            headers=headers,
            media_type="application/fhir+json; charset=utf-8",
        )


class ScopedCors:
    """CORS on the given path prefixes only; every other path passes straight through."""

    def __init__(self, app: ASGIApp, *, paths: Sequence[str], allow_origins: Sequence[str]) -> None:
        self.app = app
        self.paths = tuple(p.rstrip("/") for p in paths)
        self.cors = _Cors(
            app,
            allow_origins=allow_origins,
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            allow_credentials=False,
            max_age=600,
        )

    def covers(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.covers(scope["path"]):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def install_cors(app: FastAPI, setting: str, paths: Sequence[str]) -> None:
    """Add CORS for ``paths`` (call it after the other middleware). Tokens travel in the
    Authorization header, never in cookies, so credentials mode stays off and ``*`` is a
    safe default for the FHIR API."""
    app.add_middleware(ScopedCors, paths=paths, allow_origins=origins(setting))
