"""Every authorization decision of bulk export, in one place.

``request.state.access`` is set by the server's token dependency: ``None`` when
authorization is off (everything allowed, jobs belong to no client), otherwise an
``AccessToken`` (smart_auth.tokens) with ``client_id``, ``scopes`` (a ScopeSet with
``allows(type, letter)`` and ``contexts``) and ``patient``.

Rules (bulkdata authorization: "system/" scopes for backend services):
- A kick-off needs ``system/`` or ``user/`` scopes granting read (``r``) and search
  (``s``) on every type named in ``_type``; one that is not is 403 naming ``_type``.
- Without ``_type`` the export is narrowed to the types the token may read and search
  (403 when that is none), rather than refused: a client asking for "everything" gets
  everything it is entitled to, and the manifest lists what it got.
- A token with only ``patient/`` scopes may run a Patient- or Group-level export limited
  to its launch patient (``patient`` context); a system-level export is 403.
- A job belongs to who started it: the client, the user (the token's ``sub``) and the
  patient context together. Status, download and cancel by any other token answer 404,
  exactly as for a job that does not exist: two users of one public app (two patients'
  phones) are one client, and neither may see, fetch or cancel the other's export.
- Within each type, the rows are narrowed by the server's policy (fhir_server/authz:
  granular scopes such as ``system/Observation.rs?category=laboratory``, a patient
  context), the same restriction a search by this token would get.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request

from fhir_server.outcome import FhirError


class ScopesLike(Protocol):
    def allows(self, resource_type: str, interaction: str) -> bool: ...

    @property
    def contexts(self) -> frozenset[str]: ...


class AccessLike(Protocol):
    """The fields of smart_auth.tokens.AccessToken this module reads."""

    client_id: str
    subject: str | None
    scopes: Any
    patient: str | None


@dataclass(frozen=True, slots=True)
class Grant:
    """What a kick-off may export: the job's owner, its types and (when the token is
    patient-bound) the only patients whose records it may contain."""

    client_id: str | None
    types: tuple[str, ...]
    patients: tuple[str, ...] | None = None


def access_of(request: Request) -> AccessLike | None:
    return getattr(request.state, "access", None)


def _forbidden(message: str, *expression: str) -> FhirError:
    return FhirError.of(403, "forbidden", message, *expression)


def _may_export(scopes: Any, resource_type: str) -> bool:
    return bool(scopes.allows(resource_type, "r") and scopes.allows(resource_type, "s"))


def authorize_kickoff(
    access: AccessLike | None,
    level: str,
    requested: Sequence[str] | None,
    candidates: Sequence[str],
    patients: Sequence[str] | None,
) -> Grant:
    """The grant for a kick-off of ``level`` asking for ``requested`` types (None: all
    of ``candidates``), or 403."""
    if access is None:
        return Grant(None, tuple(requested or candidates), tuple(patients) if patients else None)
    contexts = access.scopes.contexts
    population = bool(contexts & {"system", "user"})
    if not population:
        if "patient" not in contexts or access.patient is None:
            raise _forbidden("Bulk export needs system/ or user/ scopes")
        if level == "system":
            raise _forbidden("A patient-bound token cannot run a system-level export")
        if patients and any(p != access.patient for p in patients):
            raise _forbidden("patient names a patient outside this token's context", "patient")
        patients = (access.patient,)
    if requested:
        denied = [t for t in requested if not _may_export(access.scopes, t)]
        if denied:
            raise _forbidden(
                f"The token does not grant read and search on {', '.join(denied)}", "_type"
            )
        types = tuple(requested)
    else:
        types = tuple(t for t in candidates if _may_export(access.scopes, t))
        if not types:
            raise _forbidden("The token grants read and search on no resource type")
    return Grant(access.client_id, types, tuple(patients) if patients else None)


async def row_filter(request: Request, resource_type: str) -> dict[str, Any]:
    """The MongoDB filter the token confines this type's exported resources to
    (``{}``: none), read and search restrictions together."""
    if access_of(request) is None:
        return {}
    from fhir_server.authz.context import request_policy

    policy = request_policy(request)
    clauses = [await policy.restriction(resource_type, i) for i in ("r", "s")]
    clauses = [c for c in clauses if c]
    return {"$and": clauses} if clauses else {}


Owner = dict[str, str | None]


def owner_of(access: AccessLike | None) -> Owner | None:
    """Who a kick-off's job belongs to (None: authorization is off, nobody)."""
    if access is None:
        return None
    return {"client": access.client_id, "user": access.subject, "patient": access.patient}


def owns(access: AccessLike | None, job: dict[str, Any]) -> bool:
    """May this token see the job? A job started with authorization off (no owner) is
    open; one with an owner only to the same client, user and patient context. A job
    with a client but no owner (stored before owners were) is nobody's: it expires."""
    owner = job.get("owner")
    if owner is None:
        return job.get("client_id") is None
    return owner == owner_of(access)


def _may_import(scopes: Any, resource_type: str) -> bool:
    """A ``system/`` scope, without search parameters, granting both create and update
    of the type (an import writes each resource as an update that may create it):
    ``system/T.cu``, ``system/T.write``, ``system/*.cud``, ``system/*.*`` ..."""

    def whole(interaction: str) -> bool:
        return any(
            s.context == "system" and not s.params
            for s in scopes.grants(resource_type, interaction)
        )

    return whole("c") and whole("u")


def authorize_import(access: AccessLike | None, types: Sequence[str]) -> str | None:
    """The client an ``$import`` job belongs to, or 403 (before anything is read or
    written). Bulk import is a backend service's job: only ``system/`` scopes count,
    and each must cover all of the type, since the worker writes outside any request
    and could not confine itself to part of it. None: authorization is off."""
    if access is None:
        return None
    if "system" not in access.scopes.contexts:
        raise _forbidden("Bulk import needs system/ scopes (a backend service token)")
    denied = sorted({t for t in types if not _may_import(access.scopes, t)})
    if denied:
        raise _forbidden(
            "The token does not grant system/ create and update, on all resources, of "
            + ", ".join(denied),
            "input",
        )
    return access.client_id
