"""What the CapabilityStatement says about profiles: ``rest.resource.supportedProfile``,
the constraint StructureDefinitions the server holds for each type (issue #14).

Read from the stored StructureDefinitions' search index (derivation, kind, type, url),
so it covers the shipped ones, those POSTed or PUT, and installed packages. The route
caches the statement until a StructureDefinition is written (ProfileRegistry.stamp).
"""

from __future__ import annotations

from typing import Any

from fhir_server.resource_types import is_resource_type
from fhir_server.storage import Storage


async def supported_profiles(storage: Storage) -> dict[str, list[str]]:
    """{resource type: sorted canonical urls of its constraint profiles}."""
    out: dict[str, set[str]] = {}
    query = {"del": {"$ne": True}, "sp.derivation": "constraint", "sp.kind": "resource"}
    cursor = storage.current("StructureDefinition").find(query, {"sp.type": 1, "sp.url": 1})
    async for doc in cursor:
        sp: dict[str, Any] = doc.get("sp") or {}
        types = [t for t in sp.get("type", []) if is_resource_type(t)]
        for rtype in types:
            out.setdefault(rtype, set()).update(u for u in sp.get("url", []) if u)
    return {t: sorted(urls) for t, urls in out.items()}
