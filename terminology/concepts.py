"""The concept store: every code system's concepts in their own collections, so that a
code system of any size (SNOMED CT's ~350k concepts) is queried by index, never by
reading its CodeSystem resource.

Collections (one document per item, ``k`` naming one loaded code system version):

- ``terminology_systems``: one per stored CodeSystem whose concepts are loaded:
  ``{_id: <CodeSystem id>, k, url, version, source: "resource" | "import", gen, count,
  hierarchical}``. ``gen`` is the resource version the concepts were built from: a
  CodeSystem updated since is rebuilt on next use, under a new ``k``, and the old
  generation removed only after the new one is in place (readers never see half).
- ``terminology_concepts``: ``{k, c: code, o: position in the definition, d: display,
  a: inactive, ab: abstract (notSelectable), des: [{l: language, u: use Coding,
  v: value}], p: [{c: code, t: value type, v: value, s: value as text}], par: [parent
  codes], anc: [every proper ancestor], w: [search words]}``. Unique on (k, c); (k, o)
  gives definition order; (k, w) serves $expand's text filter; (k, par) the children.

The transitive closure of the hierarchy (parents from nested concepts and the
``parent``/``child``/``subsumedBy`` properties) is kept with each concept as ``anc``,
under a multikey index (k, anc): is-a/descendent-of is one index range on the concept
collection itself ({k, anc: X}), subsumption one point lookup ({k, c: B, anc: A}).
A closure collection of (ancestor, descendant) rows was the first design; on a
SNOMED CT-shaped release (about 19 ancestors per concept) it meant 20 times more
documents to write (50,000 concepts: 967,000 rows, 93 s) and a second query (a $in
of every descendant code) for each is-a.
"""

from __future__ import annotations

import re
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhir_server.jsonio import dumps, load_stored

SYSTEMS = "terminology_systems"
QUERY_MS = 10_000  # a filter query (say, a pathological regex) stops here: too-costly
CONCEPTS = "terminology_concepts"
_BIG_BATCH = 100_000  # documents per reply when all are wanted (the 16 MB cap applies)
_BATCH = 5000
_INACTIVE_STATUS = frozenset({"retired", "inactive"})
_PARENT_PROPERTIES = frozenset({"parent", "subsumedBy"})

_INDEXES: dict[str, list[IndexModel]] = {
    CONCEPTS: [
        IndexModel([("k", ASCENDING), ("c", ASCENDING)], name="code", unique=True),
        IndexModel([("k", ASCENDING), ("o", ASCENDING)], name="order"),
        IndexModel([("k", ASCENDING), ("w", ASCENDING)], name="words"),
        IndexModel([("k", ASCENDING), ("par", ASCENDING)], name="parents"),
        IndexModel([("k", ASCENDING), ("anc", ASCENDING)], name="ancestors"),
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
    children: list[str] = field(default_factory=list)

    def document(
        self, key: str, order: int = 0, ancestors: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
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
        if self.children:
            doc["ch"] = self.children
        if ancestors:
            doc["anc"] = sorted(ancestors)
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
            doc.get("ch", []),
        )


def property_value(prop: dict[str, Any]) -> tuple[str, Any] | None:
    """(type, value) of a CodeSystem concept property's value[x]."""
    for name, value in prop.items():
        if name.startswith("value") and len(name) > 5:
            return name[5:], value
    return None


def stored_property(code: str, kind: str, value: Any) -> dict[str, Any]:
    """A concept property as the store keeps it: strings, booleans and integers as they
    are; anything else (a decimal, a Coding with extensions) as its JSON text under
    ``j``, since BSON has no exact decimal of FHIR's kind."""
    out: dict[str, Any] = {"c": code, "t": kind, "s": value_text(kind, value)}
    if isinstance(value, str | bool) or (isinstance(value, int) and abs(value) < 2**63):
        out["v"] = value
    else:
        out["j"] = dumps(value).decode()
    return out


def property_json(p: dict[str, Any]) -> Any:
    """The value of a stored property, as FHIR JSON writes it."""
    return load_stored(p["j"].encode()) if "j" in p else p.get("v")


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return (
        value is None
        or isinstance(value, str | bool)
        or (isinstance(value, int) and abs(value) < 2**63)
    )


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
            if isinstance(d.get("use"), dict) and _plain(d["use"]):
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
        concept.properties.append(stored_property(code, kind, value))
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


def link_children(concepts: list[Concept]) -> None:
    """Give each concept its children (the concepts naming it a parent, in definition
    order), kept in its document so $lookup's child property needs no second query."""
    by_code = {c.code: c for c in concepts}
    for c in concepts:
        c.children = []
    for c in concepts:
        for p in c.parents:
            parent = by_code.get(p)
            if parent is not None and c.code not in parent.children and p != c.code:
                parent.children.append(c.code)


def ancestor_sets(concepts: Iterable[Concept]) -> dict[str, frozenset[str]]:
    """Every concept's proper ancestors (parents from nesting and properties, their
    parents, ...), computed bottom-up without recursion (SNOMED CT is deep and wide);
    a cycle in bad content is cut at the edge that closes it."""
    parents = {c.code: c.parents for c in concepts}
    memo: dict[str, frozenset[str]] = {}
    for root in parents:
        if root in memo:
            continue
        stack = [(root, iter(parents.get(root, ())))]
        on_path = {root}
        while stack:
            code, pending = stack[-1]
            for p in pending:
                if p not in memo and p not in on_path:
                    stack.append((p, iter(parents.get(p, ()))))
                    on_path.add(p)
                    break
            else:
                stack.pop()
                on_path.discard(code)
                out: set[str] = set()
                for p in parents.get(code, ()):
                    if p == code or p in on_path:
                        continue  # the edge that closes a cycle
                    out.add(p)
                    out |= memo.get(p, frozenset())
                memo[code] = frozenset(out)
    return memo


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
    children: bool = False  # its concept documents carry their children (``ch``)


async def write_concepts(db: Db, key: str, found: list[Concept]) -> bool:
    """Insert one generation's concepts with their ancestors; True when it has a
    hierarchy."""
    ancestors = ancestor_sets(found)
    link_children(found)
    docs = [c.document(key, i, ancestors.get(c.code, frozenset())) for i, c in enumerate(found)]
    for i in range(0, len(docs), _BATCH):
        try:
            await db[CONCEPTS].insert_many(docs[i : i + _BATCH], ordered=False)
        except Exception as exc:  # another worker built the same generation meanwhile
            if not only_duplicates(exc):
                raise
    return any(ancestors.values())


def only_duplicates(exc: Exception) -> bool:
    details = getattr(exc, "details", None) or {}
    errors = details.get("writeErrors", [])
    return isinstance(exc, DuplicateKeyError) or (
        bool(errors) and all(e.get("code") == 11000 for e in errors)
    )


async def drop_generation(db: Db, key: str) -> None:
    await db[CONCEPTS].delete_many({"k": key})


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
    # No clean-up first: leftovers of a build that died half-way, or a concurrent build
    # of the same generation, hold the same documents, and the unique index on (k, c)
    # turns the repeats into no-ops.
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
        "children": True,
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
        bool(doc.get("children")),
    )


async def forget(db: Db, rid: str) -> None:
    """Remove a deleted CodeSystem's concepts."""
    entry = await db[SYSTEMS].find_one_and_delete({"_id": rid})
    if entry is not None:
        await drop_generation(db, entry["k"])


# --- queries ----------------------------------------------------------------------------


_KNOWN_SIZE = 20_000
_UNCHANGING = "cs:"  # a CodeSystem version's generation: written whole, then never changed


class ConceptStore:
    """Index lookups over loaded code systems."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self.concepts = db[CONCEPTS]
        # (key, code) -> the concept (None: no such code) of generations that never
        # change once loaded (a CodeSystem resource version's; not an import's, which a
        # re-run may change): the lookup a $lookup or $validate-code repeats
        self._known: OrderedDict[tuple[str, str], Concept | None] = OrderedDict()

    async def get(self, key: str, code: str) -> Concept | None:
        """The concept ``code`` of generation ``key`` (shared: do not change it)."""
        unchanging = key.startswith(_UNCHANGING)
        if unchanging:
            try:
                found = self._known[(key, code)]
            except KeyError:
                pass
            else:
                self._known.move_to_end((key, code))
                return found
        doc = await self.concepts.find_one({"k": key, "c": code}, {"w": 0, "anc": 0})
        concept = Concept.from_document(doc) if doc else None
        if unchanging:
            self._known[(key, code)] = concept
            if len(self._known) > _KNOWN_SIZE:
                self._known.popitem(last=False)
        return concept

    async def descendants(self, key: str, code: str) -> list[str]:
        cursor = self.concepts.find({"k": key, "anc": code}, {"_id": 0, "c": 1})
        return [d["c"] async for d in cursor]

    async def ancestors(self, key: str, code: str) -> list[str]:
        doc = await self.concepts.find_one({"k": key, "c": code}, {"_id": 0, "anc": 1})
        return list(doc.get("anc", [])) if doc else []

    async def children(self, cs: LoadedSystem, concept: Concept) -> list[str]:
        """The concept's children: from its document, or (a generation written before
        documents held them) by query."""
        if cs.children:
            return concept.children
        cursor = self.concepts.find({"k": cs.key, "par": concept.code}, {"_id": 0, "c": 1})
        return [d["c"] async for d in cursor]

    async def is_ancestor(self, key: str, ancestor: str, descendant: str) -> bool:
        found = await self.concepts.find_one(
            {"k": key, "c": descendant, "anc": ancestor}, {"_id": 1}
        )
        return found is not None

    async def find(
        self,
        query: dict[str, Any],
        projection: dict[str, int] | None = None,
        limit: int = 0,
        skip: int = 0,
        ordered: bool = True,
        batch: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Concepts in definition order; ``ordered`` False: in whatever order the
        query's own indexes give them (asked for order, MongoDB may answer an is-a by
        walking the whole system's order index rather than sorting the subtree).
        ``batch``: in as few replies as fit (up to ``limit``), rather than a first reply
        of 101 and then getMores."""
        cursor = self.concepts.find(
            query,
            projection,
            limit=limit,
            skip=skip,
            sort=[("k", 1), ("o", 1)] if ordered else None,
            max_time_ms=QUERY_MS,
            batch_size=(limit or _BIG_BATCH) if batch else 0,
        )
        async for doc in cursor:
            yield doc

    async def count(self, query: dict[str, Any], limit: int = 0) -> int:
        if limit:
            return await self.concepts.count_documents(query, limit=limit, maxTimeMS=QUERY_MS)
        return await self.concepts.count_documents(query, maxTimeMS=QUERY_MS)
