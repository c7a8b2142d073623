"""Which scopes a user of each role may grant to an app (docs/smart.md has the table).

- ``patient``: only ``patient/`` scopes, always in the context of their own Patient.
- ``practitioner``: ``patient/`` and ``user/`` scopes.
- ``admin``: ``patient/`` and ``user/`` scopes (``user/*.cruds`` included); the only
  role that may grant ``user/AuditEvent`` scopes (the audit trail, docs/audit.md).
- ``operator``: ``user/`` scopes reading (``r``/``s``) administrative types only.

Nobody grants ``system/`` scopes interactively: those go only to backend services
(client credentials). Non-resource scopes (``openid``, ``launch/patient`` ...) pass.
"""

from __future__ import annotations

from smart_auth.scopes import InvalidScope, ResourceScope, parse_scope

ADMINISTRATIVE_TYPES = frozenset(
    {
        "Organization",
        "Location",
        "Practitioner",
        "PractitionerRole",
        "Schedule",
        "Slot",
        "HealthcareService",
        "Endpoint",
    }
)
NON_RESOURCE_SCOPES = frozenset(
    {
        "launch",
        "launch/patient",
        "launch/encounter",
        "openid",
        "fhirUser",
        "profile",
        "offline_access",
        "online_access",
    }
)


def _role_allows(role: str, scope: ResourceScope) -> bool:
    if scope.context == "system":
        return False
    if role == "patient":
        return scope.context == "patient"
    if scope.context == "user" and scope.resource_type == "AuditEvent" and role != "admin":
        return False
    if role in ("practitioner", "admin"):
        return True
    if role == "operator":
        return (
            scope.context == "user"
            and scope.resource_type in ADMINISTRATIVE_TYPES
            and scope.interactions <= frozenset("rs")
        )
    return False


def grantable(role: str, requested: list[str]) -> list[str]:
    """The requested scopes a user of ``role`` may grant, in request order."""
    out: list[str] = []
    for text in requested:
        try:
            parsed = parse_scope(text)
        except InvalidScope:
            continue
        if parsed is None:
            if text in NON_RESOURCE_SCOPES and not (
                role == "operator" and text == "launch/patient"
            ):
                out.append(text)
        elif _role_allows(role, parsed):
            out.append(text)
    return out


def system_scopes(requested: list[str]) -> list[str]:
    """The ``system/`` scopes of a backend-service request (nothing else is granted)."""
    out = []
    for text in requested:
        try:
            parsed = parse_scope(text)
        except InvalidScope:
            continue
        if parsed is not None and parsed.context == "system":
            out.append(text)
    return out
