"""The TerminologyCapabilities resource (terminologycapabilities.html) that
``GET /metadata?mode=terminology`` answers (capabilitystatement.html#mode): the code
systems this server holds concepts for, with their versions and the filters $expand
takes, and what $expand, $validate-code and $translate support.

"Held" means the operations can answer from the concepts: a CodeSystem with
``content: not-present`` (the core stubs of SNOMED CT, LOINC ...) is listed only once
an import has put its concepts in the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fhir_server.search.values import SEP
from fhir_server.service.capability import statement_header
from fhir_server.storage import Storage
from terminology import concepts
from terminology.resolve import Filter, version_key

# the compose filters valueset.py evaluates (ValueSet/$expand, $validate-code)
CONCEPT_OPS = ("=", "is-a", "descendent-of", "is-not-a", "regex", "in", "not-in", "generalizes")
FILTERS = (
    {"code": "concept", "op": list(CONCEPT_OPS)},
    {"code": "code", "op": list(CONCEPT_OPS)},
    {"code": "display", "op": ["=", "regex", "in", "not-in", "exists"]},
    {"code": "parent", "op": ["=", "in", "exists"]},
    {"code": "child", "op": ["exists"]},
)
# the $expand parameters valueset.py acts on
EXPANSION_PARAMETERS = (
    ("url", "The canonical URL of a stored ValueSet (url|version too)"),
    ("valueSet", "An inline ValueSet (POST)"),
    ("valueSetVersion", "The version of the ValueSet url names"),
    ("filter", "Text filter: every word starts a word of a display or designation"),
    ("count", "Paging: the number of concepts to return"),
    ("offset", "Paging: the number of concepts to skip"),
    ("activeOnly", "Leave out inactive concepts"),
    ("includeDesignations", "Include each concept's designations"),
    ("displayLanguage", "Displays in this language where a designation has it"),
    ("excludeNested", "false nests concepts under their ancestors (contains.contains)"),
    ("excludeNotForUI", "Leave out abstract (not selectable) concepts"),
    ("includeDefinition", "Keep the value set's compose in the answer"),
    ("designation", "Show the designations of this language or use (system|code)"),
)
_MAX_SYSTEMS = 20_000  # CodeSystem resources read for the statement


async def terminology_capabilities(
    storage: Storage, base_url: str, restriction: Filter | None
) -> dict[str, Any]:
    """The statement, listing the code systems ``restriction`` (the caller's filter on
    CodeSystem; None: none may be listed) lets the caller see."""
    systems = await _held(storage, restriction) if restriction is not None else []
    return {
        **statement_header("TerminologyCapabilities", "FHIR R4 terminology service", base_url),
        "lockedDate": False,
        "codeSystem": systems,
        "expansion": {
            "hierarchical": True,
            "paging": True,
            "incomplete": False,
            "parameter": [{"name": n, "documentation": d} for n, d in EXPANSION_PARAMETERS],
            "textFilter": (
                "Each word of filter must start a word of the concept's code, display or a "
                "designation; case and accents are ignored."
            ),
        },
        "validateCode": {"translations": False},
        "translation": {"needsMap": False},
    }


async def _held(storage: Storage, restriction: Filter) -> list[dict[str, Any]]:
    imported = {
        doc["_id"]
        async for doc in storage.db[concepts.SYSTEMS].find({"source": "import"}, {"_id": 1})
    }
    query: Filter = {"del": False}
    if restriction:
        query = {"$and": [query, restriction]}
    fields = {"sp.url": 1, "sp.version": 1, "sp.content-mode": 1, "sp.language": 1}
    by_url: dict[str, list[tuple[str | None, list[str]]]] = {}
    cursor = storage.current("CodeSystem").find(query, fields, limit=_MAX_SYSTEMS)
    async for doc in cursor:
        sp = doc.get("sp") or {}
        urls = sp.get("url") or []
        if not urls:
            continue
        if "not-present" in _plain(sp.get("content-mode")) and doc["_id"] not in imported:
            continue
        versions = _plain(sp.get("version"))
        by_url.setdefault(urls[0], []).append(
            (versions[0] if versions else None, sorted(set(_plain(sp.get("language")))))
        )
    return [_code_system(url, found) for url, found in sorted(by_url.items())]


def _plain(values: Iterable[str] | None) -> list[str]:
    """Token index values without their exact-match copies (SEP-prefixed)."""
    return [v for v in values or () if not v.startswith(SEP)]


def _code_system(url: str, found: list[tuple[str | None, list[str]]]) -> dict[str, Any]:
    """One codeSystem entry: its versions, the newest (what a request without a
    version gets, resolve.py) the default."""
    found = sorted(found, key=lambda f: version_key(f[0]))
    versions = []
    for i, (version, languages) in enumerate(found):
        entry: dict[str, Any] = {}
        if version is not None:
            entry["code"] = version
        entry["isDefault"] = i == len(found) - 1
        if languages:
            entry["language"] = languages
        entry["filter"] = [dict(f) for f in FILTERS]
        versions.append(entry)
    return {"uri": url, "version": versions, "subsumption": True}
