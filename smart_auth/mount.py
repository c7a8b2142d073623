"""How the FHIR app mounts the authorization server: its routers, and the state it
opens at start-up. With authorization off nothing is mounted (the SMART configuration
answers 404, so clients do not try to authorize)."""

from __future__ import annotations

from fastapi import FastAPI

from fhir_server.config import Settings
from smart_auth.routes import router, smart_configuration_router
from smart_auth.state import AuthState


def install_smart_configuration(app: FastAPI, settings: Settings) -> None:
    """Mount ``/fhir/.well-known/smart-configuration`` (call before the FHIR routers,
    whose ``/fhir/{type}/{id}`` would otherwise match it)."""
    if settings.auth_enabled:
        app.include_router(smart_configuration_router)


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Mount ``/auth/...`` (after the FHIR routers: a FHIR request need not try them)."""
    if settings.auth_enabled:
        app.include_router(router)


async def open_auth(app: FastAPI, settings: Settings) -> None:
    app.state.auth = await AuthState.open(settings) if settings.auth_enabled else None


def close_auth(app: FastAPI) -> None:
    state: AuthState | None = getattr(app.state, "auth", None)
    if state is not None:
        state.close()
