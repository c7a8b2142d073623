"""CORS for browser SMART apps on other origins (they call the FHIR API and the token
endpoint with fetch). Starlette's middleware answers preflight OPTIONS requests itself,
before authentication, and adds the headers to every answer, errors included."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

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


def install_cors(app: FastAPI, setting: str) -> None:
    """Add CORS as the outermost middleware (call it after the others). Tokens travel in
    the Authorization header, never in cookies, so credentials mode stays off and ``*``
    is a safe default."""
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins(setting),
        allow_methods=ALLOWED_METHODS,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        allow_credentials=False,
        max_age=600,
    )
