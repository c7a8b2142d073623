"""CodeSystem/$lookup, CodeSystem/$validate-code and CodeSystem/$subsumes
(codesystem-operations.html), over the concept store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fhir_server.outcome import FhirError, bad_request
from terminology.concepts import Concept, ConceptStore, LoadedSystem, property_json
from terminology.params import Inputs, Output, part
from terminology.resolve import Filter, Resolver

LOOKUP_PARAMS = ("code", "system", "version", "coding", "date", "displayLanguage", "property")
VALIDATE_PARAMS = (
    "url",
    "codeSystem",
    "code",
    "version",
    "display",
    "coding",
    "codeableConcept",
    "date",
    "abstract",
    "displayLanguage",
)
SUBSUMES_PARAMS = ("codeA", "codeB", "system", "version", "codingA", "codingB")
T = TypeVar("T")
# properties every concept has, beyond those its CodeSystem declares
_INTRINSIC = ("display", "definition", "designation", "parent", "child", "inactive")


@dataclass(frozen=True, slots=True)
class Coded:
    """A code to look at, from code + system (+ version) or a Coding; ``where`` is the
    expression of its code for errors."""

    system: str | None
    version: str | None
    code: str
    display: str | None
    where: str


def coded(inp: Inputs, code: str, system: str, coding: str, version: str = "version") -> Coded:
    """The code an operation is about: ``code``/``system`` or ``coding`` (not both)."""
    c = inp.coding(coding)
    text = inp.text(code)
    if c is not None and text is not None:
        raise bad_request(f"give either {code} or {coding}, not both", inp.where(coding))
    if c is not None:
        value, where = c
        if not isinstance(value.get("code"), str) or not value["code"]:
            raise bad_request(f"{coding} has no code", f"{where}.code")
        return Coded(
            value.get("system"), value.get("version"), value["code"], value.get("display"), where
        )
    if text is None:
        raise bad_request(f"{code} (with {system}) or {coding} is required", code)
    return Coded(inp.text(system), inp.text(version), text, None, inp.where(code))


def pick_display(concept: Concept, language: str | None) -> str | None:
    """The concept's display in ``language`` (a designation whose language is it or a
    regional form of it: ``es`` matches ``es-EC``), else its display."""
    if language:
        wanted = language.lower()
        for d in concept.designations:
            lang = str(d.get("l", "")).lower()
            if lang == wanted or lang.split("-")[0] == wanted.split("-")[0]:
                return str(d["v"])
    return concept.display


def designation_json(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if d.get("l"):
        out["language"] = d["l"]
    if d.get("u"):
        out["use"] = d["u"]
    out["value"] = d["v"]
    return out


class CodeSystemOperations:
    def __init__(self, resolver: Resolver, store: ConceptStore) -> None:
        self.resolver = resolver
        self.store = store

    async def system_for(
        self, c: Coded, rid: str | None, restriction: Filter, system_where: str
    ) -> LoadedSystem:
        """The code system the request is about: the instance, or the one ``system``
        names; 404 (with the expression of the system) when none is stored."""
        cs, _ = await self.system_and(c, rid, restriction, system_where, _nothing)
        return cs

    async def system_and_concept(
        self, c: Coded, rid: str | None, restriction: Filter, system_where: str
    ) -> tuple[LoadedSystem, Concept | None]:
        """The code system (as ``system_for``) and the concept ``c`` names in it (None
        when it has no such code), the two looked up at once where possible."""

        async def concept(cs: LoadedSystem) -> Concept | None:
            return await self.store.get(cs.key, c.code)

        return await self.system_and(c, rid, restriction, system_where, concept)

    async def system_and(
        self,
        c: Coded,
        rid: str | None,
        restriction: Filter,
        system_where: str,
        then: Callable[[LoadedSystem], Awaitable[T]],
    ) -> tuple[LoadedSystem, T]:
        if rid is not None:
            cs, out = await self.resolver.with_code_system_by_id(rid, restriction, then)
            if c.system is not None and c.system != cs.url:
                raise bad_request(
                    f"system {c.system!r} is not the url of CodeSystem/{rid} ({cs.url})",
                    system_where,
                )
            return cs, out
        if c.system is None:
            raise bad_request(
                "system is required (or call the operation on a CodeSystem)", system_where
            )
        found = await self.resolver.with_code_system(c.system, c.version, restriction, then)
        if found is None:
            what = f"{c.system}|{c.version}" if c.version else c.system
            raise FhirError.of(404, "not-found", f"CodeSystem {what} is not known", system_where)
        return found

    async def lookup(self, inp: Inputs, rid: str | None, restriction: Filter) -> dict[str, Any]:
        c = coded(inp, "code", "system", "coding")
        where = _system_where(inp, c, "system")
        cs, concept = await self.system_and_concept(c, rid, restriction, where)
        if concept is None:
            if cs.content == "not-present":
                raise FhirError.of(
                    404,
                    "not-found",
                    f"The concepts of {cs.url} are not on this server (its CodeSystem is "
                    "content not-present): import its release with `fhir-server terminology "
                    "import`",
                    _system_where(inp, c, "system"),
                )
            raise FhirError.of(
                404, "not-found", f"Code {c.code!r} is not in {cs.url}", _code_where(c)
            )
        wanted = set(inp.texts("property"))
        language = inp.text("displayLanguage")
        out = Output()
        out.add("name", "String", cs.name or cs.url)
        out.add("version", "String", cs.version)
        out.add("display", "String", pick_display(concept, language))
        if not wanted or "definition" in wanted:
            out.add("definition", "String", concept.definition)
        if not wanted or "designation" in wanted:
            for d in concept.designations:
                if language and not _language_matches(d.get("l"), language):
                    continue
                parts = [part(n, k, v) for n, k, v in _designation_parts(d)]
                out.part("designation", parts)
        for code, kind, value in await self._properties(cs, concept, wanted):
            out.part("property", [part("code", "Code", code), part("value", kind, value)])
        return out.json()

    async def _properties(
        self, cs: LoadedSystem, concept: Concept, wanted: set[str]
    ) -> list[tuple[str, str, Any]]:
        def asked(name: str) -> bool:
            return not wanted or name in wanted

        found: list[tuple[str, str, Any]] = []
        for p in concept.properties:
            if p["c"] in ("parent", "child"):
                continue  # answered from the hierarchy below
            if asked(p["c"]):
                found.append((p["c"], p["t"], property_json(p)))
        if asked("inactive"):
            found.append(("inactive", "Boolean", concept.inactive))
        if asked("parent"):
            found += [("parent", "Code", p) for p in concept.parents]
        if asked("child"):
            found += [("child", "Code", ch) for ch in await self.store.children(cs, concept)]
        return found

    async def validate_code(
        self, inp: Inputs, rid: str | None, restriction: Filter
    ) -> dict[str, Any]:
        url = inp.text("url")
        candidates = codings_of(inp)
        if inp.has("codeSystem"):
            raise FhirError.of(
                400,
                "not-supported",
                "An inline codeSystem is not supported",
                inp.where("codeSystem"),
            )
        language = inp.text("displayLanguage")
        messages: list[str] = []
        for c in candidates:
            if c.system is None and url is not None:
                c = Coded(url, c.version, c.code, c.display, c.where)
            if url is not None and c.system != url:
                messages.append(f"{c.system} is not the code system {url}")
                continue
            where = _system_where(inp, c, "url")
            cs, concept = await self.system_and_concept(c, rid, restriction, where)
            if concept is None:
                known = (
                    " (its concepts are not on this server)" if cs.content == "not-present" else ""
                )
                messages.append(f"Unknown code {c.code!r} in {cs.url}{known}")
                continue
            return validation_result(concept, cs.url, c, language).json()
        return (
            Output()
            .add("result", "Boolean", False)
            .add("message", "String", "; ".join(messages))
            .json()
        )

    async def subsumes(self, inp: Inputs, rid: str | None, restriction: Filter) -> dict[str, Any]:
        a = coded(inp, "codeA", "system", "codingA")
        b = coded(inp, "codeB", "system", "codingB")
        if a.system and b.system and a.system != b.system:
            raise bad_request("codingA and codingB are from different code systems", b.where)
        system = a.system or b.system
        probe = Coded(system, a.version or b.version, a.code, None, a.where)
        cs = await self.system_for(probe, rid, restriction, _system_where(inp, probe, "system"))
        for c in (a, b):
            if await self.store.get(cs.key, c.code) is None:
                raise FhirError.of(
                    404, "not-found", f"Code {c.code!r} is not in {cs.url}", _code_where(c)
                )
        if a.code == b.code:
            outcome = "equivalent"
        elif await self.store.is_ancestor(cs.key, a.code, b.code):
            outcome = "subsumes"
        elif await self.store.is_ancestor(cs.key, b.code, a.code):
            outcome = "subsumed-by"
        else:
            outcome = "not-subsumed"
        return Output().add("outcome", "Code", outcome).json()


async def _nothing(cs: LoadedSystem) -> None:
    return None


def validation_result(concept: Concept, system: str, c: Coded, language: str | None) -> Output:
    """result true, with a warning message when the display is not one of the concept's
    (the right one given in ``display``) and when the concept is inactive."""
    out = Output().add("result", "Boolean", True)
    messages = []
    right = pick_display(concept, language)
    if c.display is not None:
        valid = {concept.display, *(d["v"] for d in concept.designations)}
        if c.display not in valid:
            messages.append(
                f"Warning: the display {c.display!r} is not a display of {system}#{c.code}; "
                f"it should be {right!r}"
            )
    if concept.inactive:
        messages.append(f"The code {system}#{c.code} is inactive")
    if messages:
        out.add("message", "String", "; ".join(messages))
    out.add("display", "String", right)
    if concept.inactive:
        out.add("inactive", "Boolean", True)
    return out


def codings_of(inp: Inputs) -> list[Coded]:
    """The codes a $validate-code call checks: code (+ system/url), coding, or each
    coding of codeableConcept."""
    cc = inp.codeable("codeableConcept")
    if cc is not None:
        value, where = cc
        codings = value.get("coding")
        if not isinstance(codings, list) or not codings:
            raise bad_request("codeableConcept has no coding", f"{where}.coding")
        out = []
        for i, coding in enumerate(codings):
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                out.append(
                    Coded(
                        coding.get("system"),
                        coding.get("version"),
                        coding["code"],
                        coding.get("display"),
                        f"{where}.coding[{i}]",
                    )
                )
        if not out:
            raise bad_request("codeableConcept has no coding with a code", f"{where}.coding")
        return out
    c = coded(inp, "code", "system" if "system" in inp.allowed else "url", "coding")
    if c.display is None and inp.text("display") is not None:
        c = Coded(c.system, c.version, c.code, inp.text("display"), c.where)
    return [c]


def _system_where(inp: Inputs, c: Coded, name: str) -> str:
    if c.where.startswith("Parameters") and not inp.has(name):
        return f"{c.where}.system"
    return inp.where(name)


def _code_where(c: Coded) -> str:
    return f"{c.where}.code" if c.where.endswith(("Coding", "]")) else c.where


def _language_matches(lang: Any, wanted: str) -> bool:
    if not isinstance(lang, str):
        return False
    return lang.lower().split("-")[0] == wanted.lower().split("-")[0]


def _designation_parts(d: dict[str, Any]) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = []
    if d.get("l"):
        out.append(("language", "Code", d["l"]))
    if d.get("u"):
        out.append(("use", "Coding", d["u"]))
    out.append(("value", "String", d["v"]))
    return out
