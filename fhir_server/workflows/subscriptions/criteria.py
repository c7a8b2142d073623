"""A Subscription's ``criteria``: a search URL (``Observation?code=...``), compiled once
by the search engine's own parser and compiler, under the policy of whoever wrote the
Subscription. The filter then holds that token's restriction too, so a subscriber is
told only of resources its token could have searched (a patient token: its own).

Most criteria compile to a filter that memory.py evaluates against a new version's
index values, with no query. Chains, ``_has`` and terminology modifiers depend on other
resources: those ("live" criteria) are compiled again in each write's transaction and
queried once for all of its resources they may match."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fhir_server.authz.policy import Policy
from fhir_server.outcome import FhirError
from fhir_server.resource_types import is_resource_type
from fhir_server.search import memory
from fhir_server.search.plan import TERMINOLOGY_MODIFIERS, Criterion, SearchPlan
from smart_auth.scopes import ScopeSet
from smart_auth.tokens import AccessToken

if TYPE_CHECKING:
    from fhir_server.service.search import SearchService
    from fhir_server.storage.store import Session

EXPRESSION = "Subscription.criteria"
_NOT_CRITERIA = frozenset(
    {"_sort", "_count", "_total", "_summary", "_elements", "_include", "_revinclude"}
    | {"_format", "_pretty", "_cursor", "_contained", "_containedType"}
)


@dataclass(frozen=True, slots=True)
class Criteria:
    """Compiled criteria: the type they watch, the filter, and whether the filter can be
    evaluated in memory (else it is compiled and queried at each write)."""

    type: str
    pairs: tuple[tuple[str, str], ...]
    query: dict[str, Any]
    in_memory: bool


def _invalid(message: str, status: int = 422) -> FhirError:
    return FhirError.of(status, "invalid", message, EXPRESSION)


def split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The type and the parameters of a criteria string (422 when malformed)."""
    text = text.strip()
    base, _, query = text.partition("?")
    resource_type = base.rsplit("/", 1)[-1]
    if not resource_type or not is_resource_type(resource_type):
        raise _invalid(
            f"Subscription.criteria must start with a resource type (Type?params), not {base!r}"
        )
    pairs = parse_qsl(query, keep_blank_values=True)
    for name, _ in pairs:
        if name in _NOT_CRITERIA:
            raise _invalid(f"{name} is not a criterion (Subscription.criteria is a search)")
    return resource_type, pairs


def _live(plan: SearchPlan) -> bool:
    """Does the plan depend on other resources than the one written?"""
    return plan.narrowing is not None or any(
        not isinstance(c, Criterion) or c.modifier in TERMINOLOGY_MODIFIERS for c in plan.conditions
    )


async def compile_criteria(
    search: SearchService, text: str, access: AccessToken | None, session: Session | None = None
) -> Criteria:
    """Compile ``text`` under ``access``'s policy: errors name Subscription.criteria (422
    for a search the engine refuses, 403 when the token may not search the type). With a
    ``session``, chains and ``_has`` see that transaction's writes."""
    resource_type, pairs = split(text)
    policy = Policy(access, search) if access is not None else None
    try:
        plan = search.parser().parse([resource_type], pairs)
        query = await search.filter(resource_type, plan, policy, "s", session)
    except FhirError as exc:
        status = 403 if exc.status == 403 else 422
        issues = [replace(i, expression=(EXPRESSION, *i.expression)) for i in exc.issues]
        raise FhirError(status, issues) from None
    in_memory = not _live(plan)
    if in_memory:
        try:
            memory.check(query)
        except memory.Unsupported:
            in_memory = False
    return Criteria(resource_type, tuple(pairs), query, in_memory)


def access_document(access: AccessToken | None) -> dict[str, Any] | None:
    """What ``access_of`` needs to compile live criteria again, as stored."""
    if access is None:
        return None
    return {
        "client_id": access.client_id,
        "subject": access.subject,
        "scope": str(access.scopes),
        "patient": access.patient,
        "encounter": access.encounter,
        "fhir_user": access.fhir_user,
    }


def access_of(doc: dict[str, Any] | None) -> AccessToken | None:
    """The writer's access, as ``access_document`` stored it."""
    if doc is None:
        return None
    return AccessToken(
        client_id=doc["client_id"],
        subject=doc.get("subject"),
        scopes=ScopeSet.parse(doc.get("scope") or ""),
        patient=doc.get("patient"),
        encounter=doc.get("encounter"),
        fhir_user=doc.get("fhir_user"),
        jti="subscription",
        expires_at=0,
        claims={},
    )
