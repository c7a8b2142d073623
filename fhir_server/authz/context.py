"""The request's policy: built once per request from ``request.state.access``."""

from __future__ import annotations

from fastapi import Request

from fhir_server.authz.policy import Policy


def request_policy(request: Request) -> Policy:
    found: Policy | None = getattr(request.state, "policy", None)
    if found is None:
        access = getattr(request.state, "access", None)
        found = Policy(access, request.app.state.services.search)
        request.state.policy = found
    return found
