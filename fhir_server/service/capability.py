"""The CapabilityStatement (capabilitystatement.html), built from what this server
implements: the interaction lists here are the ones the routes serve, and a test
exercises every one of them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fhir_server import FHIR_VERSION, __version__
from fhir_server.config import Settings
from fhir_server.resource_types import resource_types
from fhir_server.search.parse import MODIFIERS
from fhir_server.search.registry import Registry, SearchParam
from fhir_server.service.operations import RESOURCE_OPERATIONS, SYSTEM_OPERATIONS, operation_json
from fhir_server.views.capability import view_definition_extension

TYPE_INTERACTIONS = (
    "search-type",
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
)
# The audit trail is written by the server alone and keeps one version per record
# (fhir_server/audit/): read, vread and search only.
READ_ONLY_TYPES: dict[str, tuple[str, ...]] = {"AuditEvent": ("search-type", "read", "vread")}
_READ_ONLY_FLAGS = {
    "readHistory": False,
    "updateCreate": False,
    "conditionalCreate": False,
    "conditionalUpdate": False,
    "conditionalDelete": "not-supported",
}
SYSTEM_INTERACTIONS = ("transaction", "batch", "search-system", "history-system")

_STARTED = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


WEBSOCKET_EXTENSION = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"


def statement_header(resource_type: str, description: str, base_url: str) -> dict[str, Any]:
    """The opening every statement of this server makes about itself (the
    CapabilityStatement, the TerminologyCapabilities): an active ``instance`` statement
    of this software, dated when the process started."""
    return {
        "resourceType": resource_type,
        "status": "active",
        "date": _STARTED,
        "publisher": "fhir-server",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": description, "url": base_url},
    }


def _search_param(p: SearchParam) -> dict[str, Any]:
    """One searchParam; R4's CapabilityStatement has no element for modifiers, so the
    ones the server accepts on the parameter are listed in its documentation."""
    out = {"name": p.code, "definition": p.url, "type": p.type}
    modifiers = sorted(m for m in MODIFIERS.get(p.type, ()) if m != "of-type")
    if p.type == "token" and p.code == "identifier":
        modifiers.append("of-type")
    if p.type == "reference":
        modifiers.append("[type]")
    if modifiers:
        out["documentation"] = "Modifiers: " + ", ".join(f":{m}" for m in modifiers)
    return out


def _search_facts(registry: Registry) -> dict[str, dict[str, Any]]:
    """searchParam, searchInclude and searchRevInclude of every type."""
    facts: dict[str, dict[str, Any]] = {
        t: {"params": [], "includes": [], "revincludes": []} for t in resource_types()
    }
    for t in resource_types():
        for code, p in sorted(registry.params(t).items()):
            if not p.supported or p.base == "Resource":
                continue
            facts[t]["params"].append(_search_param(p))
            if p.type == "reference":
                facts[t]["includes"].append(f"{t}:{code}")
                for target in p.targets:
                    if target in facts:
                        facts[target]["revincludes"].append(f"{t}:{code}")
    return facts


def _security(base_url: str) -> dict[str, Any]:
    """rest.security for SMART on FHIR (SMART App Launch 2.2, "Conformance": the
    oauth-uris extension and the SMART-on-FHIR service coding)."""
    auth = base_url.rstrip("/").removesuffix("/fhir") + "/auth"
    uris = [
        {"url": name, "valueUri": f"{auth}/{path}"}
        for name, path in (
            ("authorize", "authorize"),
            ("token", "token"),
            ("introspect", "introspect"),
            ("revoke", "revoke"),
        )
    ]
    return {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": uris,
            }
        ],
    }


def _topics() -> list[dict[str, Any]]:
    """The subscription topics offered (Subscriptions R5 Backport IG, R4 form)."""
    from fhir_server.workflows.subscriptions.backport import TOPIC_CANONICAL
    from fhir_server.workflows.subscriptions.topics import TOPICS

    return [{"url": TOPIC_CANONICAL, "valueCanonical": url} for url in TOPICS]


def capability_statement(
    settings: Settings,
    base_url: str,
    registry: Registry,
    supported: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """``supported``: the constraint profiles held per type (rest.resource.
    supportedProfile; profiles/capability.py)."""
    supported = supported or {}
    facts = _search_facts(registry)
    common = [
        _search_param(p)
        for _, p in sorted(registry.params("Patient").items())
        if p.base == "Resource" and p.supported
    ]
    resources = [
        {
            **({"extension": _topics()} if name == "Subscription" else {}),
            "type": name,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{name}",
            **({"supportedProfile": supported[name]} if supported.get(name) else {}),
            "interaction": [
                {"code": code} for code in READ_ONLY_TYPES.get(name, TYPE_INTERACTIONS)
            ],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": settings.allow_update_create,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": settings.conditional_delete,
            **(_READ_ONLY_FLAGS if name in READ_ONLY_TYPES else {}),
            "searchInclude": ["*", *sorted(facts[name]["includes"])],
            "searchRevInclude": sorted(set(facts[name]["revincludes"])),
            "searchParam": facts[name]["params"],
            **(
                {"operation": operation_json(RESOURCE_OPERATIONS[name])}
                if name in RESOURCE_OPERATIONS
                else {}
            ),
        }
        for name in resource_types()
    ]
    return {
        **statement_header("CapabilityStatement", "FHIR R4 server on MongoDB", base_url),
        "fhirVersion": FHIR_VERSION,
        "format": ["json", "application/fhir+json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                # R4 subscription.html#2.46.7.2: where websocket Subscriptions bind
                "extension": [
                    {
                        "url": WEBSOCKET_EXTENSION,
                        "valueUri": "ws" + base_url.removeprefix("http") + "/websocket",
                    },
                    # stored SQL on FHIR ViewDefinitions: no R4 type (views/capability.py)
                    view_definition_extension(),
                ],
                **({"security": _security(base_url)} if settings.auth_enabled else {}),
                "documentation": (
                    "Search supports every R4 SearchParameter with an expression; "
                    "conditional create, update, patch and delete take any search as "
                    "criteria. Chaining, _has, _include/_revinclude (:iterate) and "
                    "keyset paging are supported."
                ),
                "resource": resources,
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "operation": operation_json(SYSTEM_OPERATIONS),
                "searchParam": common,
            }
        ],
    }
