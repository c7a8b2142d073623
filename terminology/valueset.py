"""ValueSet/$expand and ValueSet/$validate-code (valueset-operations.html).

A value set's ``compose`` is evaluated include by include: each include with a system
becomes one query on the concept store (its concept list, its filters, the text filter
and activeOnly pushed into the query, so a filter over SNOMED CT is an index lookup),
nested ``valueSet`` imports are expanded recursively (and intersected with the system
part, valuesets.html#compose), and excludes are subtracted. $validate-code runs the
same evaluation narrowed to the one code, never expanding the whole value set.

An expansion larger than ``max_expansion`` concepts answers ``too-costly`` (422)
rather than running away.
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from fhir_server.outcome import FhirError, bad_request
from terminology.codesystem import (
    Coded,
    codings_of,
    designation_json,
    pick_display,
    validation_result,
)
from terminology.concepts import Concept, ConceptStore, LoadedSystem, words
from terminology.params import Inputs, Output
from terminology.resolve import Filter, Resolver, Stored

EXPAND_PARAMS = (
    "url",
    "valueSet",
    "valueSetVersion",
    "context",
    "filter",
    "date",
    "offset",
    "count",
    "includeDesignations",
    "designation",
    "includeDefinition",
    "activeOnly",
    "excludeNested",
    "excludeNotForUI",
    "excludePostCoordinated",
    "displayLanguage",
    "limitedExpansion",
)
VALIDATE_PARAMS = (
    "url",
    "context",
    "valueSet",
    "valueSetVersion",
    "code",
    "system",
    "systemVersion",
    "version",
    "display",
    "coding",
    "codeableConcept",
    "date",
    "abstract",
    "displayLanguage",
)
T = TypeVar("T")
_CONCEPT_PROPERTIES = frozenset({"concept", "code"})
_MAX_DEPTH = 20
_MEMBERS_SIZE = 20_000


def too_costly(message: str, *where: str) -> FhirError:
    return FhirError.of(422, "too-costly", message, *where)


@dataclass(frozen=True, slots=True)
class Options:
    text: list[str] = field(default_factory=list)  # words of the filter parameter
    active_only: bool = False
    designations: bool = False
    language: str | None = None
    limit: int = 10_000
    probe: Coded | None = None  # $validate-code: only this code matters
    within: frozenset[str] | None = None  # excludes: only these codes can matter
    nested: bool = False  # excludeNested=false: entries keep their ancestors for nesting
    ordered: bool = True  # False: membership only (search's :in), in any order
    selectable_only: bool = False  # excludeNotForUI: no abstract (not selectable) concepts
    designation: tuple[str, ...] = ()  # designation tokens: languages or uses to show


@dataclass(slots=True)
class Entry:
    system: str
    version: str | None
    code: str
    display: str | None
    inactive: bool = False
    abstract: bool = False
    designations: list[dict[str, Any]] = field(default_factory=list)
    doc: dict[str, Any] | None = None  # the stored concept's document, when there is one
    ancestors: tuple[str, ...] = ()  # the concept's proper ancestors (nesting only)

    @property
    def concept(self) -> Concept | None:
        """The stored concept, made from its document only when asked (an expansion
        of a thousand concepts asks for none)."""
        return Concept.from_document(self.doc) if self.doc is not None else None

    def json(self, options: Options) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.system}
        if self.version:
            out["version"] = self.version
        if self.abstract:
            out["abstract"] = True
        if self.inactive:
            out["inactive"] = True
        out["code"] = self.code
        display = self.display
        if options.language and self.doc is not None:
            display = pick_display(Concept.from_document(self.doc), options.language)
        if display is not None:
            out["display"] = display
        if (options.designations or options.designation) and self.designations:
            shown = [d for d in self.designations if _designation_wanted(d, options.designation)]
            if shown:
                out["designation"] = [designation_json(d) for d in shown]
        return out


Key = tuple[str, str]  # (system, code)


class ValueSetOperations:
    def __init__(self, resolver: Resolver, store: ConceptStore, max_expansion: int) -> None:
        self.resolver = resolver
        self.store = store
        self.max_expansion = max_expansion
        # $validate-code answers: (value set's id(), system, code, version, restrictions)
        # -> (freshness generation, the value set, its entry or why none)
        self._members: OrderedDict[tuple[Any, ...], tuple[int, dict[str, Any], Entry | str]] = (
            OrderedDict()
        )

    # --- which value set ---------------------------------------------------------------

    async def on_target(
        self,
        inp: Inputs,
        rid: str | None,
        restriction: Filter,
        then: Callable[[dict[str, Any]], Awaitable[T]],
    ) -> T:
        """``then`` of the value set asked for: the instance, an inline ``valueSet``,
        or ``url`` (+ ``valueSetVersion``); a stored one is looked up while ``then``
        runs on what it was last time (Resolver._speculate)."""

        async def run(stored: Stored) -> T:
            return await then(stored.resource)

        if rid is not None:
            _, out = await self.resolver.with_definition_by_id("ValueSet", rid, restriction, run)
            return out
        inline = inp.resource("valueSet", "ValueSet")
        if inline is not None:
            return await then(inline)
        url = inp.text("url")
        if url is None:
            raise bad_request("url, valueSet or a ValueSet instance is required", "url")
        found = await self.resolver.with_definition(
            "ValueSet", url, inp.text("valueSetVersion"), restriction, run
        )
        if found is None:
            raise FhirError.of(404, "not-found", f"ValueSet {url} is not known", inp.where("url"))
        return found[1]

    # --- $expand -----------------------------------------------------------------------

    async def expand(
        self, inp: Inputs, rid: str | None, restrictions: dict[str, Filter]
    ) -> dict[str, Any]:
        async def run(vs: dict[str, Any]) -> dict[str, Any]:
            return await self._expand(vs, inp, restrictions)

        return await self.on_target(inp, rid, restrictions["ValueSet"], run)

    async def _expand(
        self, vs: dict[str, Any], inp: Inputs, restrictions: dict[str, Filter]
    ) -> dict[str, Any]:
        count = inp.integer("count")
        offset = inp.integer("offset") or 0
        text = inp.text("filter")
        options = Options(
            text=words(text) if text else [],
            active_only=inp.boolean("activeOnly"),
            designations=inp.boolean("includeDesignations"),
            language=inp.text("displayLanguage"),
            limit=self.max_expansion,
        )
        nested = not inp.boolean("excludeNested", default=True)
        tokens = tuple(inp.texts("designation"))
        options = replace(
            options,
            nested=nested,
            selectable_only=inp.boolean("excludeNotForUI"),
            designation=tokens,
        )
        paged = await self._paged(vs, options, restrictions, offset, count)
        if paged is not None:
            page, total = paged
        else:
            entries = await self.evaluate(vs, options, restrictions, ())
            total = len(entries)
            page = entries[offset : offset + count if count is not None else None]
        parameters: list[dict[str, Any]] = []
        for name, kind, value in (
            ("filter", "String", text),
            ("offset", "Integer", offset if inp.has("offset") else None),
            ("count", "Integer", count),
            ("activeOnly", "Boolean", options.active_only if inp.has("activeOnly") else None),
            ("displayLanguage", "Code", options.language),
            ("includeDesignations", "Boolean", True if options.designations else None),
            ("excludeNested", "Boolean", not nested),
            ("excludeNotForUI", "Boolean", True if options.selectable_only else None),
            ("includeDefinition", "Boolean", True if inp.boolean("includeDefinition") else None),
        ):
            if value is not None:
                parameters.append({"name": name, f"value{kind}": value})
        parameters += [{"name": "designation", "valueString": t} for t in tokens]
        # includeDefinition: 'Controls whether the value set definition is included or
        # excluded in an expansion' (the compose stays in the answer)
        dropped: tuple[str, ...] = ("expansion", "text", "meta")
        if not inp.boolean("includeDefinition"):
            dropped += ("compose",)
        out = {k: v for k, v in vs.items() if k not in dropped}
        out["resourceType"] = "ValueSet"
        out["expansion"] = {
            "identifier": f"urn:uuid:{uuid.uuid4()}",
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            "total": total,
            "offset": offset,
            "parameter": parameters,
            "contains": nest(page, options) if nested else [e.json(options) for e in page],
        }
        if not page:
            del out["expansion"]["contains"]
        return out

    async def _paged(
        self,
        vs: dict[str, Any],
        options: Options,
        restrictions: dict[str, Filter],
        offset: int,
        count: int | None,
    ) -> tuple[list[Entry], int] | None:
        """A page read straight from the concept store, when the value set is one
        include of a stored code system (filters allowed; no concept list, nested value
        set or exclude) and a count is asked: then a value set of any size (all of
        SNOMED CT's findings) pages by index instead of answering too-costly. None: the
        general evaluation applies."""
        compose = vs.get("compose")
        if count is None or not isinstance(compose, dict) or compose.get("exclude"):
            return None
        includes = compose.get("include")
        if not isinstance(includes, list) or len(includes) != 1:
            return None
        part = includes[0]
        if (
            not isinstance(part, dict)
            or not isinstance(part.get("system"), str)
            or part.get("concept") is not None
            or part.get("valueSet")
        ):
            return None
        cs = await self.resolver.code_system(
            part["system"], part.get("version"), restrictions["CodeSystem"]
        )
        if cs is None or cs.content == "not-present" or cs.count == 0:
            return None
        if compose.get("inactive") is False:
            options = replace(options, active_only=True)
        query = await self._query(cs, part, None, "ValueSet.compose.include[0]", options)
        total = await self.store.count(query)
        version = part.get("version")
        found = self.store.find(query, _fields(options), skip=offset, limit=count, batch=True)
        page = [_entry(cs, version, doc, None, []) async for doc in found] if count else []
        return page, total

    async def evaluate(
        self,
        vs: dict[str, Any],
        options: Options,
        restrictions: dict[str, Filter],
        stack: tuple[str, ...],
    ) -> list[Entry]:
        """The concepts of a value set, in compose order, each once."""
        compose = vs.get("compose")
        if not isinstance(compose, dict):
            return self._from_expansion(vs, options)
        included: dict[Key, Entry] = {}
        for i, inc in enumerate(compose.get("include") or []):
            where = f"ValueSet.compose.include[{i}]"
            for e in await self._part(inc, where, options, restrictions, stack):
                included.setdefault((e.system, e.code), e)
            if options.limit and len(included) > options.limit:
                raise too_costly(
                    f"The expansion has more than {options.limit} concepts; use a filter or a "
                    "smaller value set",
                    where,
                )
        for i, exc in enumerate(compose.get("exclude") or []):
            where = f"ValueSet.compose.exclude[{i}]"
            codes = frozenset(code for _, code in included)
            narrowed = replace(
                options, limit=0, within=codes, text=[], active_only=False, selectable_only=False
            )
            for e in await self._part(exc, where, narrowed, restrictions, stack):
                included.pop((e.system, e.code), None)
        entries = list(included.values())
        if compose.get("inactive") is False or options.active_only:
            entries = [e for e in entries if not e.inactive]
        if options.selectable_only:
            entries = [e for e in entries if not e.abstract]
        return entries

    def _from_expansion(self, vs: dict[str, Any], options: Options) -> list[Entry]:
        """A value set without compose but with a stored expansion: its contains."""
        expansion = vs.get("expansion")
        if not isinstance(expansion, dict):
            raise FhirError.of(
                422, "not-supported", "The value set has neither compose nor expansion", "ValueSet"
            )
        out: list[Entry] = []
        # (item, codes of the items it is nested in): a stored hierarchy nests again
        stack: list[tuple[Any, tuple[str, ...]]] = [
            (c, ()) for c in expansion.get("contains") or []
        ]
        while stack:
            c, above = stack.pop(0)
            if not isinstance(c, dict):
                continue
            if c.get("code") and c.get("system"):
                entry = Entry(c["system"], c.get("version"), c["code"], c.get("display"))
                entry.inactive = bool(c.get("inactive"))
                entry.abstract = bool(c.get("abstract"))
                entry.ancestors = above
                if self._keep(entry, options):
                    out.append(entry)
            inner = (*above, c["code"]) if isinstance(c.get("code"), str) else above
            stack[0:0] = [(x, inner) for x in c.get("contains") or []]
        return out

    def _keep(self, e: Entry, options: Options) -> bool:
        if options.probe is not None and (
            e.code != options.probe.code or (options.probe.system not in (None, e.system))
        ):
            return False
        if options.within is not None and e.code not in options.within:
            return False
        if options.active_only and e.inactive:
            return False
        if options.selectable_only and e.abstract:
            return False
        if options.text:
            have = set(words(" ".join([e.code, e.display or ""])))
            return all(any(h.startswith(w) for h in have) for w in options.text)
        return True

    async def _part(
        self,
        part: Any,
        where: str,
        options: Options,
        restrictions: dict[str, Filter],
        stack: tuple[str, ...],
    ) -> list[Entry]:
        """The concepts one include (or exclude) selects."""
        if not isinstance(part, dict):
            raise bad_request("a compose include/exclude must be an object", where)
        nested: list[set[Key]] = []
        nested_entries: dict[Key, Entry] = {}
        for j, url in enumerate(part.get("valueSet") or []):
            entries = await self._nested(
                url, f"{where}.valueSet[{j}]", options, restrictions, stack
            )
            nested.append({(e.system, e.code) for e in entries})
            for e in entries:
                nested_entries.setdefault((e.system, e.code), e)
        system = part.get("system")
        if system is None:
            if not nested:
                raise bad_request("an include needs a system or a valueSet", where)
            common = set.intersection(*nested)
            return [e for k, e in nested_entries.items() if k in common]
        found = await self._system_part(part, system, where, options, restrictions)
        if nested:
            common = set.intersection(*nested)
            found = [e for e in found if (e.system, e.code) in common]
        return found

    async def _nested(
        self,
        url: Any,
        where: str,
        options: Options,
        restrictions: dict[str, Filter],
        stack: tuple[str, ...],
    ) -> list[Entry]:
        if not isinstance(url, str):
            raise bad_request("valueSet must be a canonical URL", where)
        if url in stack or len(stack) > _MAX_DEPTH:
            raise FhirError.of(422, "processing", f"ValueSet {url} includes itself", where)
        found = await self.resolver.by_url("ValueSet", url, None, restrictions["ValueSet"])
        if found is None:
            raise FhirError.of(422, "not-found", f"The included ValueSet {url} is not known", where)
        return await self.evaluate(found.resource, options, restrictions, (*stack, url))

    async def _system_part(
        self,
        part: dict[str, Any],
        system: str,
        where: str,
        options: Options,
        restrictions: dict[str, Filter],
    ) -> list[Entry]:
        if options.probe is not None and options.probe.system not in (None, system):
            return []
        version = part.get("version")
        listed = _listed(part, where)

        async def read(cs: LoadedSystem) -> list[Entry] | None:
            """The part's concepts from the store; None: the system's concepts are not
            here (the value set's own list is all there is)."""
            if cs.content == "not-present" or (cs.count == 0 and listed):
                return None
            query = await self._query(cs, part, listed, where, options)
            # one read of at most limit + 1 documents in one batch: more than the limit
            # is refused, and nothing needs counting first (a count was a round trip)
            limit = options.limit + 1 if options.limit else 0
            out = []
            async for doc in self.store.find(
                query, _fields(options), limit=limit, batch=True, ordered=options.ordered
            ):
                display, des = (listed or {}).get(doc["c"], (None, []))
                out.append(_entry(cs, version, doc, display, des))
            if options.limit and len(out) > options.limit:
                raise too_costly(
                    f"{where} selects more than {options.limit} concepts; use a filter or a "
                    "smaller value set",
                    where,
                )
            if listed:  # keep the order the value set lists its concepts in
                order = {code: i for i, code in enumerate(listed)}
                out.sort(key=lambda e: order.get(e.code, 0))
            return out

        found = await self.resolver.with_code_system(
            system, version, restrictions["CodeSystem"], read
        )
        if found is not None and found[1] is not None:
            return found[1]
        if listed is None or part.get("filter"):
            raise FhirError.of(
                422,
                "not-found",
                f"The code system {system} is not known here, so {where} cannot be evaluated",
                f"{where}.system",
            )
        entries = [
            Entry(system, version, code, display, designations=des)
            for code, (display, des) in listed.items()
        ]
        return [e for e in entries if self._keep(e, options)]

    async def _query(
        self,
        cs: LoadedSystem,
        part: dict[str, Any],
        listed: dict[str, tuple[str | None, list[dict[str, Any]]]] | None,
        where: str,
        options: Options,
    ) -> dict[str, Any]:
        clauses: list[dict[str, Any]] = [{"k": cs.key}]
        if listed is not None:
            clauses.append({"c": {"$in": list(listed)}})
        for i, f in enumerate(part.get("filter") or []):
            clauses.append(await self._filter(cs, f, f"{where}.filter[{i}]"))
        if options.probe is not None:
            clauses.append({"c": options.probe.code})
        if options.within is not None:
            clauses.append({"c": {"$in": sorted(options.within)}})
        if options.text:
            clauses.append({"w": {"$all": [re.compile("^" + re.escape(w)) for w in options.text]}})
        if options.active_only:
            clauses.append({"a": {"$ne": True}})
        if options.selectable_only:
            clauses.append({"ab": {"$ne": True}})
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    async def _filter(self, cs: LoadedSystem, f: Any, where: str) -> dict[str, Any]:
        """One compose filter as a concept-store query (valueset-filter-operator)."""
        if not isinstance(f, dict):
            raise bad_request("a filter must be an object", where)
        prop, op, value = f.get("property"), f.get("op"), f.get("value")
        if not isinstance(prop, str) or not isinstance(op, str) or not isinstance(value, str):
            raise bad_request("a filter needs property, op and value", where)
        values = [v.strip() for v in value.split(",") if v.strip()]
        if prop in _CONCEPT_PROPERTIES:
            if op == "=":
                return {"c": value}
            if op == "is-a":
                return {"$or": [{"c": value}, {"anc": value}]}
            if op == "descendent-of":
                return {"anc": value}
            if op == "is-not-a":
                return {"c": {"$ne": value}, "anc": {"$ne": value}}
            if op == "generalizes":
                return {"c": {"$in": [value, *await self.store.ancestors(cs.key, value)]}}
            if op == "in":
                return {"c": {"$in": values}}
            if op == "not-in":
                return {"c": {"$nin": values}}
            if op == "regex":
                return {"c": {"$regex": _regex(value, f"{where}.value")}}
        elif prop == "display":
            if op == "=":
                return {"d": value}
            if op == "regex":
                return {"d": {"$regex": _regex(value, f"{where}.value")}}
            if op == "in":
                return {"d": {"$in": values}}
            if op == "not-in":
                return {"d": {"$nin": values}}
            if op == "exists":
                return {"d": {"$exists": _truth(value, f"{where}.value")}}
        elif prop in ("parent", "child") and op == "exists":
            has = _truth(value, f"{where}.value")
            if prop == "parent":
                return {"par.0": {"$exists": has}}
            parents = await self.store.concepts.distinct("par", {"k": cs.key})
            return {"c": {"$in" if has else "$nin": parents}}
        elif prop == "parent" and op in ("=", "in"):
            return {"par": {"$in": values}}
        else:
            text = {"$in": values} if op in ("in", "not-in") else value
            if op in ("=", "in"):
                return {"p": {"$elemMatch": {"c": prop, "s": text}}}
            if op == "not-in":
                return {"p": {"$not": {"$elemMatch": {"c": prop, "s": text}}}}
            if op == "regex":
                rx = _regex(value, f"{where}.value")
                return {"p": {"$elemMatch": {"c": prop, "s": {"$regex": rx}}}}
            if op == "exists":
                has = _truth(value, f"{where}.value")
                return {"p.c": prop} if has else {"p.c": {"$ne": prop}}
        raise FhirError.of(
            422,
            "not-supported",
            f"The filter operator {op!r} is not supported on property {prop!r}",
            f"{where}.op",
        )

    # --- $validate-code ------------------------------------------------------------------

    async def validate_code(
        self, inp: Inputs, rid: str | None, restrictions: dict[str, Filter]
    ) -> dict[str, Any]:
        # a stored value set's answers may be reused (``_membership``), an inline one's not
        stored = rid is not None or inp.resource("valueSet", "ValueSet") is None

        async def run(vs: dict[str, Any]) -> dict[str, Any]:
            return await self._validate(vs, inp, restrictions, stored)

        return await self.on_target(inp, rid, restrictions["ValueSet"], run)

    async def _validate(
        self, vs: dict[str, Any], inp: Inputs, restrictions: dict[str, Filter], stored: bool
    ) -> dict[str, Any]:
        language = inp.text("displayLanguage")
        messages: list[str] = []
        url = vs.get("url") or "the value set"
        for c in codings_of(inp):
            version = c.version or inp.text("systemVersion") or inp.text("version")
            c = replace(c, version=version)
            found = await self._membership(vs, c, restrictions, stored)
            if isinstance(found, Entry):
                concept = found.concept or Concept(
                    found.code, found.display, found.inactive, found.abstract, found.designations
                )
                return validation_result(concept, found.system, c, language).json()
            messages.append(f"The code {c.system or ''}#{c.code} is not in {url}{found}")
        out = Output().add("result", "Boolean", False).add("message", "String", "; ".join(messages))
        return out.json()

    async def _membership(
        self, vs: dict[str, Any], c: Coded, restrictions: dict[str, Filter], stored: bool
    ) -> Entry | str:
        """The value set's entry for ``c``, or why it has none. A stored value set's
        answer is reused while nothing of the terminology changed (freshness.py): the
        parsed resource is the resolver's shared copy, held here to keep its identity."""
        fresh = self.resolver.freshness
        key = (id(vs), c.system, c.code, c.version, repr(restrictions))
        generation = -1 if fresh is None else fresh.generation
        if stored and fresh is not None and fresh.trusted:
            hit = self._members.get(key)
            if hit is not None and hit[0] == generation and hit[1] is vs:
                self._members.move_to_end(key)
                return hit[2]
        options = Options(active_only=False, probe=c, limit=0)
        entries = await self.evaluate(vs, options, restrictions, ())
        found: Entry | str = entries[0] if entries else await self._why(c, restrictions)
        if stored and fresh is not None:
            self._members[key] = (generation, vs, found)
            self._members.move_to_end(key)
            if len(self._members) > _MEMBERS_SIZE:
                self._members.popitem(last=False)
        return found

    async def _why(self, c: Coded, restrictions: dict[str, Filter]) -> str:
        if c.system is None:
            return " (no system given)"
        cs = await self.resolver.code_system(c.system, c.version, restrictions["CodeSystem"])
        if cs is None:
            return f" (the code system {c.system} is not known)"
        if await self.store.get(cs.key, c.code) is None:
            return f" (it is not a code of {c.system})"
        return ""


def _designation_wanted(d: dict[str, Any], tokens: tuple[str, ...]) -> bool:
    """Does a designation match one of $expand's ``designation`` tokens ('a use or a
    language': ``es`` or ``urn:ietf:bcp:47|es`` for a language, ``system|code`` for a
    use)? No tokens: every designation is shown."""
    if not tokens:
        return True
    lang = str(d.get("l") or "").lower()
    use: dict[str, Any] = d["u"] if isinstance(d.get("u"), dict) else {}
    for token in tokens:
        system, bar, code = token.rpartition("|")
        if not bar or system == "urn:ietf:bcp:47":
            wanted = code.lower()
            if lang == wanted or lang.split("-")[0] == wanted:
                return True
        elif use.get("code") == code and use.get("system") in (system, None):
            return True
    return False


def _fields(options: Options) -> dict[str, int]:
    """What an expansion reads of each concept document: never the search words,
    ancestors or properties (most of a document's bytes), designations only when they
    are shown or a display has to be checked or chosen."""
    fields = {"_id": 0, "c": 1, "d": 1, "a": 1, "ab": 1}
    if options.designations or options.designation or options.language or options.probe:
        fields["des"] = 1
    if options.nested:
        fields["anc"] = fields["par"] = 1
    return fields


def _entry(
    cs: LoadedSystem,
    version: Any,
    doc: dict[str, Any],
    display: str | None,
    designations: list[dict[str, Any]],
) -> Entry:
    """An expansion entry for a stored concept document (the value set's display and
    designations, when it lists the concept with its own, first)."""
    stored = doc.get("des")
    return Entry(
        cs.url,
        cs.version if version else None,
        doc["c"],
        display or doc.get("d"),
        bool(doc.get("a")),
        bool(doc.get("ab")),
        designations + stored if stored else designations,
        doc,
        tuple(doc.get("anc", ())),
    )


def nest(entries: list[Entry], options: Options) -> list[dict[str, Any]]:
    """The entries as a hierarchy (expansion.contains.contains, for excludeNested=false):
    each under its nearest ancestor that is itself in the list, in list order; a concept
    with several such ancestors (a polyhierarchy) goes under the deepest one, a direct
    parent first, and appears once. Entries without one are the top level."""
    nodes = [e.json(options) for e in entries]
    where = {(e.system, e.code): i for i, e in enumerate(entries)}
    top: list[dict[str, Any]] = []
    for i, e in enumerate(entries):
        present = [a for a in e.ancestors if (e.system, a) in where and a != e.code]
        if not present:
            top.append(nodes[i])
            continue
        # the deepest: no other present ancestor lies below it
        deepest = [
            a
            for a in present
            if not any(a in entries[where[(e.system, b)]].ancestors for b in present if b != a)
        ]
        parents = e.concept.parents if e.concept is not None else []
        chosen = min(deepest, key=lambda a: (a not in parents, where[(e.system, a)]))
        nodes[where[(e.system, chosen)]].setdefault("contains", []).append(nodes[i])
    return top


def _listed(
    part: dict[str, Any], where: str
) -> dict[str, tuple[str | None, list[dict[str, Any]]]] | None:
    """The include's concept list: code -> (display, designations), in order."""
    concepts = part.get("concept")
    if concepts is None:
        return None
    if not isinstance(concepts, list):
        raise bad_request("concept must be an array", f"{where}.concept")
    out: dict[str, tuple[str | None, list[dict[str, Any]]]] = {}
    for i, c in enumerate(concepts):
        if not isinstance(c, dict) or not isinstance(c.get("code"), str):
            raise bad_request("a listed concept needs a code", f"{where}.concept[{i}]")
        des = [
            {"v": d["value"], **({"l": d["language"]} if d.get("language") else {})}
            for d in c.get("designation") or []
            if isinstance(d, dict) and isinstance(d.get("value"), str)
        ]
        out[c["code"]] = (c.get("display"), des)
    return out


def _regex(value: str, where: str) -> str:
    """The whole property must match (valueset-filter-operator: regex)."""
    if len(value) > 500:
        raise bad_request("the regex is too long", where)
    try:
        re.compile(value)
    except re.error as exc:
        raise bad_request(f"invalid regex: {exc}", where) from None
    return f"^(?:{value})$"


def _truth(value: str, where: str) -> bool:
    if value not in ("true", "false"):
        raise bad_request("exists takes true or false", where)
    return value == "true"
