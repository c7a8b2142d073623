"""ConceptMap/$translate (conceptmap-operation-translate.html): the matches of a code in
one concept map (the instance, ``url`` or an inline ``conceptMap``) or, with none named,
in every stored map whose source and target fit ``source``/``target``/``targetsystem``.
``reverse`` reads the maps from target to source, with the equivalence turned round
(a target *wider* than its source is a source *narrower* than the target)."""

from __future__ import annotations

from typing import Any

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError, bad_request
from terminology.codesystem import Coded, codings_of
from terminology.params import Inputs, Output, part
from terminology.resolve import Filter, Resolver, split_canonical

TRANSLATE_PARAMS = (
    "url",
    "conceptMap",
    "conceptMapVersion",
    "code",
    "system",
    "version",
    "source",
    "coding",
    "codeableConcept",
    "target",
    "targetsystem",
    "dependency",
    "reverse",
)
_REVERSED = {
    "wider": "narrower",
    "narrower": "wider",
    "subsumes": "specializes",
    "specializes": "subsumes",
}
_MAX_MAPS = 500


def _canonical(value: Any) -> str | None:
    """ConceptMap.source[x]/target[x] (uri or canonical) without its version."""
    if isinstance(value, str):
        return value.split("|")[0]
    return None


class ConceptMapOperations:
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def _maps(
        self, inp: Inputs, rid: str | None, restriction: Filter
    ) -> list[dict[str, Any]]:
        if rid is not None:
            return [(await self.resolver.by_id("ConceptMap", rid, restriction)).resource]
        inline = inp.resource("conceptMap", "ConceptMap")
        if inline is not None:
            return [inline]
        url = inp.text("url")
        if url is not None:
            found = await self.resolver.by_url(
                "ConceptMap", url, inp.text("conceptMapVersion"), restriction
            )
            if found is None:
                raise FhirError.of(
                    404, "not-found", f"ConceptMap {url} is not known", inp.where("url")
                )
            return [found.resource]
        query: Filter = {"del": False}
        if restriction:
            query = {"$and": [query, restriction]}
        cursor = self.resolver.storage.current("ConceptMap").find(
            query, {"raw": 1}, limit=_MAX_MAPS
        )
        maps: list[dict[str, Any]] = [load_stored(d["raw"]) async for d in cursor]
        source, target = inp.text("source"), inp.text("target")
        reverse = inp.boolean("reverse")
        if reverse:
            source, target = target, source
        return [
            m
            for m in maps
            if (
                source is None
                or _canonical(m.get("sourceUri") or m.get("sourceCanonical"))
                == source.split("|")[0]
            )
            and (
                target is None
                or _canonical(m.get("targetUri") or m.get("targetCanonical"))
                == target.split("|")[0]
            )
        ]

    async def translate(self, inp: Inputs, rid: str | None, restriction: Filter) -> dict[str, Any]:
        reverse = inp.boolean("reverse")
        codes = codings_of(inp)
        target_system = inp.text("targetsystem")
        maps = await self._maps(inp, rid, restriction)
        matches: list[dict[str, Any]] = []
        for c in codes:
            for m in maps:
                matches += _matches(m, c, reverse, target_system)
        out = Output().add(
            "result",
            "Boolean",
            any(m["equivalence"] not in ("unmatched", "disjoint") for m in matches),
        )
        if not matches:
            out.add(
                "message",
                "String",
                "No mapping found for " + ", ".join(f"{c.system or ''}#{c.code}" for c in codes),
            )
        for m in matches:
            parts = [part("equivalence", "Code", m["equivalence"])]
            if m.get("concept"):
                parts.append(part("concept", "Coding", m["concept"]))
            if m.get("comment"):
                parts.append(part("message", "String", m["comment"]))
            parts.append(part("source", "Uri", m["source"]))
            out.part("match", parts)
        return out.json()


def _matches(
    cmap: dict[str, Any], c: Coded, reverse: bool, target_system: str | None
) -> list[dict[str, Any]]:
    url = cmap.get("url") or ""
    if cmap.get("version"):
        url = f"{url}|{cmap['version']}"
    found: list[dict[str, Any]] = []
    for group in cmap.get("group") or []:
        if not isinstance(group, dict):
            continue
        source, target = group.get("source"), group.get("target")
        if reverse:
            source, target = target, source
        if c.system is not None and source is not None and source != c.system:
            continue
        if target_system is not None and target != target_system:
            continue
        hit = False
        for element in group.get("element") or []:
            for t in element.get("target") or []:
                code_from, code_to = (
                    (t.get("code"), element.get("code"))
                    if reverse
                    else (element.get("code"), t.get("code"))
                )
                display_to = element.get("display") if reverse else t.get("display")
                if code_from != c.code:
                    continue
                hit = True
                equivalence = t.get("equivalence", "equivalent")
                if reverse:
                    equivalence = _REVERSED.get(equivalence, equivalence)
                concept = None
                if code_to is not None:
                    concept = {"system": target, "code": code_to}
                    if display_to:
                        concept["display"] = display_to
                found.append(
                    {
                        "equivalence": equivalence,
                        "concept": concept,
                        "comment": t.get("comment"),
                        "source": url,
                    }
                )
        unmapped = group.get("unmapped")
        if not hit and not reverse and isinstance(unmapped, dict):
            mode = unmapped.get("mode")
            if mode == "provided":
                found.append(
                    {
                        "equivalence": "equal",
                        "concept": {"system": target, "code": c.code},
                        "source": url,
                    }
                )
            elif mode == "fixed" and unmapped.get("code"):
                concept = {"system": target, "code": unmapped["code"]}
                if unmapped.get("display"):
                    concept["display"] = unmapped["display"]
                found.append({"equivalence": "equivalent", "concept": concept, "source": url})
    return found


def check_translate_inputs(inp: Inputs) -> None:
    if inp.has("dependency"):
        raise FhirError.of(
            400, "not-supported", "dependency is not supported", inp.where("dependency")
        )
    if inp.text("source") is not None:
        split_canonical(inp.text("source") or "", None)
    if not (inp.has("code") or inp.has("coding") or inp.has("codeableConcept")):
        raise bad_request("code (with system), coding or codeableConcept is required", "code")
