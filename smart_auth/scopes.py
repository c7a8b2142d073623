"""SMART scopes, v2 and v1 syntax, parsed once into grants the FHIR API can check.

SMART App Launch 2.2, "Scopes for requesting clinical data":
``(patient|user|system)/(Type|*).(c?r?u?d?s?)[?param=value&...]`` (v2) and
``(patient|user|system)/(Type|*).(read|write|*)`` (v1). A v1 ``read`` grants v2 ``rs``,
``write`` grants ``cud`` and ``*`` grants ``cruds``. Scopes that are not resource scopes
(``openid``, ``fhirUser``, ``launch/patient``, ``offline_access`` ...) are kept as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl

Context = Literal["patient", "user", "system"]
INTERACTIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": INTERACTIONS}
_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\."
    r"(?P<perm>read|write|\*|c?r?u?d?s?)(?:\?(?P<query>.+))?$"
)
CONTEXT_SCOPES = frozenset(
    {"launch", "launch/patient", "launch/encounter", "openid", "fhirUser", "profile"}
)
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})
# Types a ``*`` scope does not reach: the audit trail is granted by name alone
# (``user/AuditEvent.rs`` to an admin, ``patient/AuditEvent.rs`` for one's own trail),
# so an app given ``user/*.rs`` for care does not also read who did what.
NAMED_ONLY = frozenset({"AuditEvent"})


class InvalidScope(ValueError):
    """A scope string that names a resource scope but breaks its grammar."""


@dataclass(frozen=True)
class ResourceScope:
    """One clinical-data scope: who (context), which type, which interactions, and the
    search parameters (granular scopes) every accessible resource must match."""

    context: Context
    resource_type: str  # "*" for every type
    interactions: frozenset[str]
    params: tuple[tuple[str, str], ...] = ()
    text: str = ""
    v1: bool = False

    def covers(self, resource_type: str, interaction: str) -> bool:
        if interaction not in self.interactions:
            return False
        if self.resource_type == "*":
            return resource_type not in NAMED_ONLY
        return self.resource_type == resource_type


def parse_scope(text: str) -> ResourceScope | None:
    """The resource scope ``text`` names, or None for a non-resource scope.

    Raises InvalidScope for a string shaped like a resource scope that is not valid
    (``patient/Observation.xyz``, empty permissions, letters out of order)."""
    if "/" not in text or text.split("/", 1)[0] not in ("patient", "user", "system"):
        return None
    m = _RESOURCE_SCOPE.match(text)
    if m is None or m["perm"] == "":
        raise InvalidScope(f"not a SMART resource scope: {text!r}")
    perm = m["perm"]
    v1 = perm in _V1
    letters = _V1[perm] if v1 else perm
    params: tuple[tuple[str, str], ...] = ()
    if m["query"]:
        pairs = parse_qsl(m["query"], keep_blank_values=True, strict_parsing=False)
        if not pairs or any(not k or not v for k, v in pairs):
            raise InvalidScope(f"bad search parameters in scope {text!r}")
        params = tuple(pairs)
    return ResourceScope(
        context=m["context"],  # type: ignore[arg-type]
        resource_type=m["type"],
        interactions=frozenset(letters),
        params=params,
        text=text,
        v1=v1,
    )


@dataclass(frozen=True)
class ScopeSet:
    """Every scope of a token. ``resource`` holds the clinical-data grants; ``other``
    the rest (``openid``, ``launch/patient``, ``offline_access`` ...)."""

    resource: tuple[ResourceScope, ...] = ()
    other: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, scope: str | Iterable[str]) -> ScopeSet:
        """Parse a space-separated scope string; invalid resource scopes raise InvalidScope."""
        items = scope.split() if isinstance(scope, str) else list(scope)
        resource: list[ResourceScope] = []
        other: set[str] = set()
        for item in items:
            parsed = parse_scope(item)
            if parsed is None:
                other.add(item)
            else:
                resource.append(parsed)
        return cls(tuple(resource), frozenset(other))

    def grants(self, resource_type: str, interaction: str) -> list[ResourceScope]:
        """The scopes that let ``interaction`` (one of c r u d s) on ``resource_type``."""
        return [s for s in self.resource if s.covers(resource_type, interaction)]

    def allows(self, resource_type: str, interaction: str) -> bool:
        return any(s.covers(resource_type, interaction) for s in self.resource)

    @property
    def contexts(self) -> frozenset[str]:
        return frozenset(s.context for s in self.resource)

    def has(self, scope: str) -> bool:
        return scope in self.other

    def __str__(self) -> str:
        return " ".join([s.text for s in self.resource] + sorted(self.other))
