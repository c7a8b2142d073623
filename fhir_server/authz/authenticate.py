"""Bearer-token authentication of every FHIR request (RFC 6750, SMART App Launch 2.2).

One app-wide dependency, so routers added later (bulk export ...) are covered too. It
only acts on paths under the FHIR base; the capability statement, the OpenAPI document
and the SMART configuration stay public. It stores the verified ``AccessToken`` in
``request.state.access`` (None when authorization is off: everything allowed) and
charges the request to the token's client and user (smart_auth/ratelimit.py: 429).
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import State
from starlette.requests import HTTPConnection

from fhir_server.outcome import FhirError
from fhir_server.service.context import request_access
from smart_auth.tokens import InvalidToken, TokenVerifier

FHIR_PREFIX = "/fhir"
PUBLIC_PATHS = frozenset(
    {"/fhir/metadata", "/fhir/metadata/", "/fhir/openapi.json"}  # the API's own descriptions
)
PUBLIC_PREFIXES = ("/fhir/.well-known/",)
REALM = 'Bearer realm="fhir"'


def is_public(method: str, path: str) -> bool:
    if not (path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")):
        return True  # not the FHIR API (the authorization server has its own rules)
    if method in ("GET", "HEAD") and path in PUBLIC_PATHS:
        return True
    return path.startswith(PUBLIC_PREFIXES)


def verifier(state: State) -> TokenVerifier:
    """One verifier per app (it caches the public keys), on the app's MongoDB."""
    found: TokenVerifier | None = getattr(state, "token_verifier", None)
    if found is None:
        found = TokenVerifier(state.services.resources.storage.db)
        state.token_verifier = found
    return found


def _challenge(error: str, description: str) -> str:
    clean = description.replace('"', "'").replace("\\", "/")
    return f'{REALM}, error="{error}", error_description="{clean}"'


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise FhirError.of(
            401,
            "login",
            "This request needs an access token (Authorization: Bearer ...)",
            "Authorization",
            headers={"WWW-Authenticate": REALM},
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise FhirError.of(
            401,
            "login",
            "The Authorization header must be 'Bearer <access token>'",
            "Authorization",
            headers={"WWW-Authenticate": _challenge("invalid_request", "not a Bearer token")},
        )
    return token


async def authenticate(connection: HTTPConnection) -> None:
    """FastAPI dependency: 401 unless the request carries a valid token for this API. A
    websocket (the Subscription channel) checks its upgrade request's token itself."""
    from fhir_server.api.routes import services

    if not isinstance(connection, Request):
        return
    request = connection

    request.state.access = None
    request_access.set(None)
    if not services(request).settings.auth_enabled:
        return
    if is_public(request.method, request.url.path):
        return
    await verify_bearer(request)


async def verify_bearer(request: Request) -> None:
    """401 unless the request's bearer token is valid; else its access is the request's.
    Also for a public path that shows more to a caller who brings a token
    (``/metadata?mode=terminology`` lists the code systems the token may search)."""
    from fhir_server.api.routes import base_url

    token = bearer_token(request)
    try:
        access = await verifier(request.app.state).verify(token, base_url(request))
    except InvalidToken as exc:
        reason = str(exc)
        code = "expired" if "expired" in reason.lower() else "security"
        raise FhirError.of(
            401,
            code,
            f"The access token is refused: {reason}",
            "Authorization",
            headers={"WWW-Authenticate": _challenge("invalid_token", reason)},
        ) from None
    request.state.access = access
    request_access.set(access)  # for the write pipeline (service/context.py)
    if (limiter := getattr(request.app.state, "rate_limiter", None)) is not None:
        await limiter.charge(access)  # 429 past the client's or user's quota
