"""How the FHIR app mounts the authorization server: its routers, and the state it
opens at start-up. With authorization off nothing is mounted (the SMART configuration
answers 404, so clients do not try to authorize)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from fhir_server.config import Settings
from smart_auth.admin.routes import router as admin_router
from smart_auth.ratelimit import RateLimiter, open_limiter
from smart_auth.routes import router, smart_configuration_router
from smart_auth.state import AuthState


def install_smart_configuration(app: FastAPI, settings: Settings) -> None:
    """Mount ``/fhir/.well-known/smart-configuration`` (call before the FHIR routers,
    whose ``/fhir/{type}/{id}`` would otherwise match it)."""
    if settings.auth_enabled:
        app.include_router(smart_configuration_router)


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Mount ``/auth/...`` and the admin console ``/admin/...`` (after the FHIR routers:
    a FHIR request need not try them)."""
    if settings.auth_enabled:
        app.include_router(router)
        app.include_router(admin_router)


async def open_auth(app: FastAPI, settings: Settings) -> None:
    """The auth server's state, and the API rate limiter (none with authorization off:
    the limits are per client and user, which only a token names)."""
    app.state.auth = await AuthState.open(settings) if settings.auth_enabled else None
    app.state.rate_limiter = (
        open_limiter(settings, app.state.services.resources.storage.db)
        if settings.auth_enabled
        else None
    )


def close_auth(app: FastAPI) -> None:
    state: AuthState | None = getattr(app.state, "auth", None)
    if state is not None:
        state.close()
    limiter: RateLimiter | None = getattr(app.state, "rate_limiter", None)
    if limiter is not None:  # a Redis pool closes on the loop; the lifespan awaits after this
        app.state.rate_limiter = None
        try:
            closing = asyncio.get_running_loop().create_task(limiter.close())
        except RuntimeError:  # no loop: the process is ending anyway
            return
        app.state.rate_limiter_closing = closing
