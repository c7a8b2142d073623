"""The concept store: every code system's concepts in their own collections, so that a
code system of any size (SNOMED CT's ~350k concepts) is queried by index, never by
reading its CodeSystem resource.

Collections (one document per item, ``k`` naming one loaded code system version):

- ``terminology_systems``: one per stored CodeSystem whose concepts are loaded:
  ``{_id: <CodeSystem id>, k, url, version, source: "resource" | "import", gen, count,
  hierarchical}``. ``gen`` is the resource version the concepts were built from: a
  CodeSystem updated since is rebuilt on next use, under a new ``k``, and the old
  generation removed only after the new one is in place (readers never see half).
- ``terminology_concepts``: ``{k, c: code, d: display, a: inactive, ab: abstract
  (notSelectable), des: [{l: language, u: use Coding, v: value}], p: [{c: code,
  t: value type, v: value, s: value as text}], par: [parent codes], w: [search words]}``.
  Unique on (k, c); (k, o) gives definition order; (k, w) serves $expand's text
  filter; (k, par) the children.
- ``terminology_closure``: the transitive closure of the hierarchy (parents from nested
  concepts and the ``parent``/``child``/``subsumedBy`` properties): ``{k, a: ancestor,
  d: descendant}`` for every proper ancestor. (k, a, d) answers is-a/descendent-of,
  (k, d, a) generalizes/subsumption, each one index range.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

SYSTEMS = "terminology_systems"
CONCEPTS = "terminology_concepts"
CLOSURE = "terminology_closure"
_BATCH = 5000
_INACTIVE_STATUS = frozenset({"retired", "inactive"})
_PARENT_PROPERTIES = frozenset({"parent", "subsumedBy"})

_INDEXES: dict[str, list[IndexModel]] = {
    CONCEPTS: [
        IndexModel([("k", ASCENDING), ("c", ASCENDING)], name="code", unique=True),
        IndexModel([("k", ASCENDING), ("o", ASCENDING)], name="order"),
        IndexModel([("k", ASCENDING), ("w", ASCENDING)], name="words"),
        IndexModel([("k", ASCENDING), ("par", ASCENDING)], name="parents"),
    ],
    CLOSURE: [
        IndexModel(
            [("k", ASCENDING), ("a", ASCENDING), ("d", ASCENDING)], name="down", unique=True
        ),
        IndexModel([("k", ASCENDING), ("d", ASCENDING), ("a", ASCENDING)], name="up"),
    ],
    SYSTEMS: [IndexModel([("url", ASCENDING), ("version", ASCENDING)], name="canonical")],
}

Db = AsyncDatabase[dict[str, Any]]


async def ensure_indexes(db: Db) -> None:
    """Declare the concept store's indexes (idempotent)."""
    for name, indexes in _INDEXES.items():
        await db[name].create_indexes(indexes)


_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def fold(text: str) -> str:
    """Lower case without accents: ``Diabetes Mellitus`` and ``diabétes`` compare equal."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


@dataclass(slots=True)
class Concept:
    """One concept as the store holds it (and as a document)."""

    code: str
    display: str | None = None
    inactive: bool = False
    abstract: bool = False
    designations: list[dict[str, Any]] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    definition: str | None = None

    def document(self, key: str, order: int = 0) -> dict[str, Any]:
        texts = [self.code, self.display or ""] + [d["v"] for d in self.designations]
        doc: dict[str, Any] = {
            "k": key,
            "c": self.code,
            "o": order,
            "w": sorted({w for t in texts for w in words(t)}),
        }
        if self.display is not None:
            doc["d"] = self.display
        if self.definition is not None:
            doc["def"] = self.definition
        if self.inactive:
            doc["a"] = True
        if self.abstract:
            doc["ab"] = True
        if self.designations:
            doc["des"] = self.designations
        if self.properties:
            doc["p"] = self.properties
        if self.parents:
            doc["par"] = self.parents
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Concept:
        return cls(
            doc["c"],
            doc.get("d"),
            bool(doc.get("a")),
            bool(doc.get("ab")),
            doc.get("des", []),
            doc.get("p", []),
            doc.get("par", []),
            doc.get("def"),
        )


def property_value(prop: dict[str, Any]) -> tuple[str, Any] | None:
    """(type, value) of a CodeSystem concept property's value[x]."""
    for name, value in prop.items():
        if name.startswith("value") and len(name) > 5:
            return name[5:], value
    return None


def value_text(kind: str, value: Any) -> str:
    """A property value as filter operators compare it (a Coding by its code)."""
    if kind == "Coding" and isinstance(value, dict):
        return str(value.get("code", ""))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def concepts_of(resource: dict[str, Any]) -> list[Concept]:
    """Every concept of a CodeSystem resource, nested ones included, with its parents
    (from nesting and the parent/child/subsumedBy properties) and status."""
    found: dict[str, Concept] = {}
    children: list[tuple[str, str]] = []  # (parent, child) from the child property

    def walk(items: Any, parent: str | None) -> None:
        if not isinstance(items, list):
            return
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("code"), str):
                continue
            concept = _concept(item)
            if parent is not None:
                concept.parents.append(parent)
            for p in concept.properties:
                if p["c"] == "child" and p["s"]:
                    children.append((concept.code, p["s"]))
            previous = found.get(concept.code)
            if previous is not None:  # the same code nested twice: merge its parents
                previous.parents.extend(p for p in concept.parents if p not in previous.parents)
            else:
                found[concept.code] = concept
            walk(item.get("concept"), concept.code)

    walk(resource.get("concept"), None)
    for parent, child in children:
        target = found.get(child)
        if target is not None and parent not in target.parents:
            target.parents.append(parent)
    return list(found.values())


def _concept(item: dict[str, Any]) -> Concept:
    concept = Concept(item["code"], item.get("display"), definition=item.get("definition"))
    for d in item.get("designation") or []:
        if isinstance(d, dict) and isinstance(d.get("value"), str):
            des: dict[str, Any] = {"v": d["value"]}
            if d.get("language"):
                des["l"] = d["language"]
            if isinstance(d.get("use"), dict):
                des["u"] = d["use"]
            concept.designations.append(des)
    for prop in item.get("property") or []:
        if not isinstance(prop, dict) or not isinstance(prop.get("code"), str):
            continue
        typed = property_value(prop)
        if typed is None:
            continue
        kind, value = typed
        code = prop["code"]
        concept.properties.append({"c": code, "t": kind, "v": value, "s": value_text(kind, value)})
        text = value_text(kind, value)
        if (code == "inactive" and value is True) or (
            code == "status" and text in _INACTIVE_STATUS
        ):
            concept.inactive = True
        elif code in ("notSelectable", "abstract") and value is True:
            concept.abstract = True
        elif code in _PARENT_PROPERTIES and value_text(kind, value):
            concept.parents.append(value_text(kind, value))
    return concept


def closure(concepts: Iterable[Concept]) -> Iterator[tuple[str, str]]:
    """(ancestor, descendant) for every proper ancestor of every concept; cycles (bad
    content) are cut rather than followed forever."""
    parents = {c.code: c.parents for c in concepts}
    memo: dict[str, frozenset[str]] = {}

    def ancestors(code: str, visiting: frozenset[str]) -> frozenset[str]:
        if code in memo:
            return memo[code]
        out: set[str] = set()
        for p in parents.get(code, ()):
            if p in visiting or p == code:
                continue
            out.add(p)
            out |= ancestors(p, visiting | {code})
        result = frozenset(out)
        memo[code] = result
        return result

    for code in parents:
        for a in _iterative_ancestors(code, parents, memo, ancestors):
            yield a, code


def _iterative_ancestors(
    code: str,
    parents: dict[str, list[str]],
    memo: dict[str, frozenset[str]],
    recurse: Any,
) -> frozenset[str]:
    """Ancestors without deep recursion: warm the memo bottom-up along the parent chain
    first, so the recursive step only ever looks one level up."""
    chain = [code]
    seen = {code}
    i = 0
    while i < len(chain):
        for p in parents.get(chain[i], ()):
            if p not in seen and p not in memo:
                seen.add(p)
                chain.append(p)
        i += 1
    for c in reversed(chain):
        recurse(c, frozenset())
    return memo[code]


@dataclass(frozen=True, slots=True)
class LoadedSystem:
    """A code system version whose concepts are in the store under ``key``."""

    key: str
    url: str
    version: str | None
    count: int
    hierarchical: bool
    name: str | None = None
    content: str | None = None  # CodeSystem.content: complete, fragment, not-present ...


async def write_concepts(db: Db, key: str, concepts: list[Concept]) -> bool:
    """Insert one generation's concepts and closure; True when it has a hierarchy."""
    docs = [c.document(key, i) for i, c in enumerate(concepts)]
    for i in range(0, len(docs), _BATCH):
        try:
            await db[CONCEPTS].insert_many(docs[i : i + _BATCH], ordered=False)
        except Exception as exc:  # another worker built the same generation meanwhile
            if not only_duplicates(exc):
                raise
    pairs = [{"k": key, "a": a, "d": d} for a, d in closure(concepts)]
    for i in range(0, len(pairs), _BATCH):
        try:
            await db[CLOSURE].insert_many(pairs[i : i + _BATCH], ordered=False)
        except Exception as exc:
            if not only_duplicates(exc):
                raise
    return bool(pairs)


def only_duplicates(exc: Exception) -> bool:
    details = getattr(exc, "details", None) or {}
    errors = details.get("writeErrors", [])
    return isinstance(exc, DuplicateKeyError) or (
        bool(errors) and all(e.get("code") == 11000 for e in errors)
    )


async def drop_generation(db: Db, key: str) -> None:
    await db[CONCEPTS].delete_many({"k": key})
    await db[CLOSURE].delete_many({"k": key})


async def build_from_resource(
    db: Db, rid: str, version_id: int, resource: dict[str, Any]
) -> LoadedSystem:
    """The concepts of CodeSystem/``rid`` at ``version_id``: loaded already, or built now
    from the resource (a newer version replaces an older generation)."""
    gen = f"{rid}/{version_id}"
    entry = await db[SYSTEMS].find_one({"_id": rid})
    if entry is not None and (entry.get("gen") == gen or entry.get("source") == "import"):
        return loaded(entry)
    key = f"cs:{gen}"
    concepts = concepts_of(resource)
    await drop_generation(db, key)  # leftovers of a build that died half-way
    hierarchical = await write_concepts(db, key, concepts)
    doc = {
        "_id": rid,
        "k": key,
        "gen": gen,
        "url": resource.get("url"),
        "version": resource.get("version"),
        "name": resource.get("name"),
        "source": "resource",
        "content": resource.get("content"),
        "count": len(concepts),
        "hierarchical": hierarchical,
    }
    await db[SYSTEMS].replace_one({"_id": rid}, doc, upsert=True)
    if entry is not None and entry.get("k") != key:
        await drop_generation(db, entry["k"])
    return loaded(doc)


def loaded(doc: dict[str, Any]) -> LoadedSystem:
    return LoadedSystem(
        doc["k"],
        doc.get("url") or "",
        doc.get("version"),
        doc.get("count", 0),
        bool(doc.get("hierarchical")),
        doc.get("name"),
        doc.get("content"),
    )


async def forget(db: Db, rid: str) -> None:
    """Remove a deleted CodeSystem's concepts."""
    entry = await db[SYSTEMS].find_one_and_delete({"_id": rid})
    if entry is not None:
        await drop_generation(db, entry["k"])


# --- queries ----------------------------------------------------------------------------


class ConceptStore:
    """Index lookups over loaded code systems."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self.concepts = db[CONCEPTS]
        self.closure = db[CLOSURE]

    async def get(self, key: str, code: str) -> Concept | None:
        doc = await self.concepts.find_one({"k": key, "c": code})
        return Concept.from_document(doc) if doc else None

    async def descendants(self, key: str, code: str) -> list[str]:
        cursor = self.closure.find({"k": key, "a": code}, {"_id": 0, "d": 1})
        return [d["d"] async for d in cursor]

    async def ancestors(self, key: str, code: str) -> list[str]:
        cursor = self.closure.find({"k": key, "d": code}, {"_id": 0, "a": 1})
        return [d["a"] async for d in cursor]

    async def children(self, key: str, code: str) -> list[str]:
        cursor = self.concepts.find({"k": key, "par": code}, {"_id": 0, "c": 1})
        return [d["c"] async for d in cursor]

    async def is_ancestor(self, key: str, ancestor: str, descendant: str) -> bool:
        found = await self.closure.find_one({"k": key, "a": ancestor, "d": descendant}, {"_id": 1})
        return found is not None

    async def find(
        self,
        query: dict[str, Any],
        projection: dict[str, int] | None = None,
        limit: int = 0,
        skip: int = 0,
    ) -> AsyncIterator[dict[str, Any]]:
        cursor = self.concepts.find(
            query, projection, limit=limit, skip=skip, sort=[("k", 1), ("o", 1)]
        )
        async for doc in cursor:
            yield doc

    async def count(self, query: dict[str, Any], limit: int = 0) -> int:
        if limit:
            return await self.concepts.count_documents(query, limit=limit)
        return await self.concepts.count_documents(query)
