"""Stored, versioned SQL on FHIR ViewDefinitions (``[base]/ViewDefinition``).

ViewDefinition is no R4 resource type, so it does not go through the R4 definitions,
validation, search index or write pipeline: a written ViewDefinition is checked by the
view compiler (``views/engine.py`` ``compile_view``, which validates it structurally
and parses every FHIRPath) plus what the ViewDefinition StructureDefinition requires of
a stored one (``check_view``), and kept in two collections of its own:

- ``view_definitions`` (current versions, one per id):
  ``{_id, v, lu, del, raw, url, ver, name, status, res, canon}``, ``canon`` being
  ``url|version`` of a live view with a url (unique: see below), absent otherwise;
- ``view_definitions_history`` (every version): ``{_id: "id/v", id, v, lu, m, c, raw}``.

They are not the R4 collections because the generic ones are indexed, searched and
hooked as R4 types (system ``_history``, the write pipeline's rules) and a
ViewDefinition would be a stranger there. Each write is one MongoDB transaction through
``Storage.transaction`` (retried on conflicts, compare-and-set on the version), so
versions are gapless and ``If-Match`` is exact.

Canonical identity: among live views, ``url`` + ``version`` is unique (a view without a
version counts as version "" for this), so a canonical ``url|version`` names at most one
view; a write that would make a second one is 409. A canonical without a version names
the most recently updated live view with that url.

Access (SMART): ViewDefinition is a definitional resource outside the Patient
compartment, so the policy (authz/policy.py) treats it as shared reference data:
reading and searching need a ``r``/``s`` scope on it (``ViewDefinition`` or ``*``; a
``patient/`` one does too, with the patient in context), and writes a ``c``/``u``/``d``
scope in ``user/`` or ``system/`` context: patient-context tokens never write it.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from fhir_server.authz.policy import Filter, Policy, all_of
from fhir_server.datetimes import after, format_instant
from fhir_server.digits import whole_number
from fhir_server.jsonio import dumps, load_stored
from fhir_server.outcome import FhirError, bad_request, not_found, precondition_failed
from fhir_server.resource_types import is_valid_id
from fhir_server.service.context import request_base_url
from fhir_server.storage import ConcurrentModification, Storage, StoredVersion
from fhir_server.storage.store import Session
from fhir_server.views.engine import compile_view
from fhir_server.views.errors import ViewError

TYPE = "ViewDefinition"
CURRENT = "view_definitions"
HISTORY = "view_definitions_history"
# The profile of the logical model (SQL on FHIR v2), for CapabilityStatement and docs.
PROFILE = "https://sql-on-fhir.org/ig/StructureDefinition/ViewDefinition"

# ViewDefinition elements of the logical model that are plain strings (StructureDefinition
# ViewDefinition: url uri, name string, version/title/description/publisher/copyright
# string or markdown, fhirVersion code). resource, status and select are checked by the
# view compiler and ``check_view``.
_STRINGS = ("url", "version", "title", "name", "description", "publisher", "copyright")

# The elements a ViewDefinition may have (the logical model's, with those of the
# CanonicalResource pattern it follows): anything else is most likely a misspelling
# ("selects") that would silently change nothing, so a write with it is refused.
ELEMENTS = frozenset(
    {
        *("resourceType", "id", "meta", "implicitRules", "language", "text", "contained"),
        *("extension", "modifierExtension", "url", "identifier", "version", "name", "title"),
        *("status", "experimental", "date", "publisher", "contact", "description"),
        *("useContext", "jurisdiction", "purpose", "copyright", "copyrightLabel"),
        *("versionAlgorithmString", "versionAlgorithmCoding", "profile"),
        *("resource", "fhirVersion", "constant", "select", "where"),
    }
)

# Search parameters: name -> (document field, kind). "string" matches case-insensitively
# from the start (search.html#string), ":exact" exactly; the others exactly.
SEARCH_PARAMS: Mapping[str, tuple[str, str]] = {
    "_id": ("_id", "token"),
    "name": ("name", "string"),
    "url": ("url", "uri"),
    "version": ("ver", "token"),
    "status": ("status", "token"),
    "resource": ("res", "token"),
}
RESULT_PARAMS = frozenset({"_count", "_cursor", "_format", "_pretty", "_summary"})

_CURRENT_INDEXES = [
    IndexModel(
        [("canon", ASCENDING)],
        name="canonical",
        unique=True,
        partialFilterExpression={"canon": {"$type": "string"}},
    ),
    IndexModel([("url", ASCENDING), ("lu", DESCENDING)], name="url"),
]
_HISTORY_INDEXES = [IndexModel([("id", ASCENDING), ("v", DESCENDING)], name="instance")]


@dataclass(frozen=True, slots=True)
class Written:
    """The result of a write: the new (or unchanged) version, and whether it created."""

    stored: StoredVersion
    created: bool


@dataclass(frozen=True, slots=True)
class SearchPage:
    views: list[StoredVersion]
    total: int
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[StoredVersion]
    total: int
    next_cursor: str | None


# --- validation ---------------------------------------------------------------------------


def check_view(body: Any, root: str = TYPE) -> dict[str, Any]:
    """``body`` as a ViewDefinition fit to store, or a 400 whose expression names the
    element at fault (``ViewDefinition.select[0].column[1].path``), ``root`` replacing
    the leading ``ViewDefinition``.

    Beyond what ``compile_view`` checks for a view to run (resource an R4 type, select
    1..*, column names ``^[A-Za-z][A-Za-z0-9_]*$``, FHIRPath syntax, constants...), the
    StructureDefinition requires of a ViewDefinition resource: ``resourceType``
    ViewDefinition, ``status`` 1..1 from publication-status (draft | active | retired |
    unknown), url, name, version, title... as strings, experimental a boolean, and
    no element the model does not have."""
    if not isinstance(body, dict):
        raise bad_request("The body must be a ViewDefinition (a JSON object)", root)
    if body.get("resourceType") != TYPE:
        raise bad_request(
            f"resourceType must be {TYPE}, not {body.get('resourceType')!r}",
            f"{root}.resourceType",
        )
    for key in body:
        if key not in ELEMENTS:
            raise bad_request(f"unknown element {key!r} in a ViewDefinition", f"{root}.{key}")
    if "experimental" in body and not isinstance(body["experimental"], bool):
        raise bad_request("experimental must be a boolean", f"{root}.experimental")
    if body.get("status") is None:
        raise bad_request(
            "status is required (draft | active | retired | unknown)", f"{root}.status"
        )
    for key in _STRINGS:
        value = body.get(key)
        if key in body and (not isinstance(value, str) or not value.strip()):
            raise bad_request(f"{key} must be a non-empty string", f"{root}.{key}")
    url = body.get("url")
    if isinstance(url, str) and (any(c.isspace() for c in url) or "|" in url):
        raise bad_request("url must be a URI without spaces or '|'", f"{root}.url")
    meta = body.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise bad_request("meta must be an object", f"{root}.meta")
    try:
        compile_view(body)
    except ViewError as exc:
        where = exc.expression
        if where.startswith(TYPE):
            where = root + where[len(TYPE) :]
        raise bad_request(f"Invalid ViewDefinition: {exc.message}", where) from None
    return body


def with_meta(view: dict[str, Any], rid: str, version: int, at: datetime) -> dict[str, Any]:
    """The view as stored: id, meta.versionId and meta.lastUpdated the server's, the rest
    as sent."""
    meta = {
        k: v for k, v in (view.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    out: dict[str, Any] = {
        "resourceType": TYPE,
        "id": rid,
        "meta": {"versionId": str(version), "lastUpdated": format_instant(at), **meta},
    }
    out.update((k, v) for k, v in view.items() if k not in ("resourceType", "id", "meta"))
    return out


def _content(view: Mapping[str, Any]) -> bytes:
    """What tells two versions apart: all but id, versionId and lastUpdated."""
    meta = {
        k: v for k, v in (view.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    rest = {k: v for k, v in view.items() if k not in ("id", "meta")}
    return dumps({**rest, "meta": meta})


# --- the store ----------------------------------------------------------------------------


def _canonical(view: Mapping[str, Any]) -> str | None:
    url = view.get("url")
    return f"{url}|{view.get('version') or ''}" if isinstance(url, str) else None


def _current_doc(
    rid: str, version: int, at: datetime, view: dict[str, Any] | None, raw: bytes | None
) -> dict[str, Any]:
    """The current-version document: the stored JSON (``raw``, ``view`` serialised) and
    the fields searches and canonical lookups use."""
    if view is None:
        return {"_id": rid, "v": version, "lu": at, "del": True, "raw": None}
    doc: dict[str, Any] = {
        "_id": rid,
        "v": version,
        "lu": at,
        "del": False,
        "raw": raw,
        "url": view.get("url"),
        "ver": view.get("version"),
        "name": view.get("name"),
        "name_lower": view["name"].lower() if isinstance(view.get("name"), str) else None,
        "status": view.get("status"),
        "res": view.get("resource"),
    }
    canon = _canonical(view)
    if canon is not None:
        doc["canon"] = canon
    return doc


def _stored(doc: Mapping[str, Any]) -> StoredVersion:
    """A current document as a StoredVersion (deletions have no raw)."""
    return StoredVersion(
        TYPE, doc["_id"], doc["v"], doc["lu"], None if doc.get("del") else doc["raw"]
    )


def _stored_version(doc: Mapping[str, Any]) -> StoredVersion:
    return StoredVersion(
        TYPE, doc["id"], doc["v"], doc["lu"], doc.get("raw"), doc["m"], doc.get("c", False)
    )


def gone(stored: StoredVersion) -> FhirError:
    return FhirError.of(
        410,
        "deleted",
        f"{TYPE}/{stored.id} was deleted (version {stored.version})",
        headers={"ETag": f'W/"{stored.version}"'},
    )


def check_id(rid: str, where: str = "id") -> None:
    if not is_valid_id(rid):
        raise bad_request(
            f"{rid!r} is not a valid resource id (1-64 of A-Z a-z 0-9 - ., and not . or ..)",
            where,
        )


class ViewStore:
    """Stored ViewDefinitions: CRUD, history, search, and ``resolve`` for the operations.

    Every method that touches data takes the request's ``Policy`` and applies it: reads
    need ``r``, search ``s``, writes ``c``/``u``/``d`` on ViewDefinition (403 otherwise)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.current: AsyncCollection[dict[str, Any]] = storage.db[CURRENT]
        self.history: AsyncCollection[dict[str, Any]] = storage.db[HISTORY]
        self._ready = False
        self._lock = asyncio.Lock()

    async def ensure(self) -> None:
        """Create the collections and indexes on first use (idempotent, cheap after)."""
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await self.current.create_indexes(_CURRENT_INDEXES)
                await self.history.create_indexes(_HISTORY_INDEXES)
                self._ready = True

    # --- access ---

    @staticmethod
    async def _allowed(policy: Policy, interaction: str) -> Filter:
        """The token's filter for ``interaction`` on ViewDefinition; 403 if none. For this
        type it is ``{}`` or nothing at all (no compartment, no granular parameters the
        R4 search compiler knows), but it is ANDed into every query regardless, so
        anything narrower would fail closed."""
        return await policy.restriction(TYPE, interaction)

    async def _visible(self, rid: str, policy: Policy, interaction: str = "r") -> None:
        allowed = await self._allowed(policy, interaction)
        check_id(rid)
        if (
            allowed
            and await self.current.find_one(all_of({"_id": rid}, allowed), {"_id": 1}) is None
        ):
            raise not_found(f"{TYPE}/{rid} is not known")

    # --- reads ---

    async def read(self, rid: str, policy: Policy) -> StoredVersion:
        """The current version; 404 unknown, 410 deleted."""
        await self.ensure()
        await self._visible(rid, policy)
        doc = await self.current.find_one({"_id": rid})
        if doc is None:
            raise not_found(f"{TYPE}/{rid} is not known")
        stored = _stored(doc)
        if stored.deleted:
            raise gone(stored)
        return stored

    async def vread(self, rid: str, vid: str, policy: Policy) -> StoredVersion:
        await self.ensure()
        await self._visible(rid, policy)
        number = whole_number(vid)
        if number is None or number < 1:
            raise bad_request(f"{vid!r} is not a version id (a positive integer)", "vid")
        doc = await self.history.find_one({"_id": f"{rid}/{number}"})
        if doc is None:
            raise not_found(f"{TYPE}/{rid} has no version {vid}")
        stored = _stored_version(doc)
        if stored.deleted:
            raise gone(stored)
        return stored

    async def history_page(
        self, rid: str, policy: Policy, count: int, cursor: str | None
    ) -> HistoryPage:
        """The versions of one view, newest first, ``count`` at a time; ``cursor`` is the
        version number the next page starts below. 404 for an id never written."""
        await self.ensure()
        await self._visible(rid, policy)
        if await self.current.find_one({"_id": rid}, {"_id": 1}) is None:
            raise not_found(f"{TYPE}/{rid} is not known")
        query: dict[str, Any] = {"id": rid}
        total = await self.history.count_documents(query)
        if cursor is not None:
            below = whole_number(cursor)
            if below is None:
                raise bad_request("_cursor is not one this server wrote", "_cursor")
            query["v"] = {"$lt": below}
        if count == 0:
            return HistoryPage([], total, None)
        found = self.history.find(query, sort=[("v", DESCENDING)], limit=count + 1)
        versions = [_stored_version(d) async for d in found]
        more = len(versions) > count
        versions = versions[:count]
        return HistoryPage(versions, total, str(versions[-1].version) if more else None)

    async def search(
        self, params: Sequence[tuple[str, str]], policy: Policy, count: int, cursor: str | None
    ) -> SearchPage:
        """Live views matching every parameter (each a comma-separated OR), in id order,
        ``count`` per page after the id ``cursor``."""
        await self.ensure()
        allowed = await self._allowed(policy, "s")
        query = all_of({"del": False}, allowed, *(_condition(k, v) for k, v in params))
        total = await self.current.count_documents(query)
        if count == 0:
            return SearchPage([], total, None)
        page = all_of(query, {"_id": {"$gt": cursor}}) if cursor is not None else query
        found = self.current.find(page, sort=[("_id", ASCENDING)], limit=count + 1)
        views = [_stored(d) async for d in found]
        more = len(views) > count
        views = views[:count]
        return SearchPage(views, total, views[-1].id if more else None)

    # --- writes ---

    async def create(self, body: Any, policy: Policy) -> Written:
        """POST: a new view with a server id (an id in the body is ignored, http.html#create)."""
        await self._allowed(policy, "c")
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k != "id"}
        view = check_view(body)
        return await self._write(str(uuid.uuid4()), view, None, "POST")

    async def update(self, rid: str, body: Any, if_match: int | None, policy: Policy) -> Written:
        """PUT: a new version, or the view's first one at this id (update-as-create). The
        body's id must be the URL's; ``If-Match`` must name the current version (412)."""
        await self._allowed(policy, "u")
        check_id(rid)
        view = check_view(body)
        if "id" not in view:
            raise bad_request(
                "The ViewDefinition must have an id (the URL's) to update", f"{TYPE}.id"
            )
        if view["id"] != rid:
            raise bad_request(
                f"The body's id {view['id']!r} is not the URL's {rid!r}", f"{TYPE}.id"
            )
        return await self._write(rid, view, if_match, "PUT")

    async def delete(self, rid: str, if_match: int | None, policy: Policy) -> StoredVersion | None:
        """DELETE: a deletion version (None when there is nothing live to delete)."""
        await self._allowed(policy, "d")
        check_id(rid)
        await self.ensure()

        async def run(session: Session) -> StoredVersion | None:
            doc = await self.current.find_one({"_id": rid}, session=session)
            current = _stored(doc) if doc else None
            _check_match(current, if_match)
            if current is None or current.deleted:
                return None
            at = after(current.last_updated)
            version = current.version + 1
            await self._put(rid, version, at, None, None, current.version, session)
            await self.history.insert_one(
                {
                    "_id": f"{rid}/{version}",
                    "id": rid,
                    "v": version,
                    "lu": at,
                    "m": "DELETE",
                    "c": False,
                    "raw": None,
                },
                session=session,
            )
            return StoredVersion(TYPE, rid, version, at, None, "DELETE")

        return await self.storage.transaction(run)

    async def _write(
        self,
        rid: str,
        view: dict[str, Any],
        if_match: int | None,
        method: str,
    ) -> Written:
        await self.ensure()

        async def run(session: Session) -> Written:
            doc = await self.current.find_one({"_id": rid}, session=session)
            current = _stored(doc) if doc else None
            _check_match(current, if_match)
            raw_now = current.raw if current is not None else None
            if raw_now is not None and _content(load_stored(raw_now)) == _content(view):
                assert current is not None
                return Written(current, False)  # an identical PUT: no new version
            await self._check_unique(rid, view, session)
            at = after(current.last_updated if current else None)
            version = current.version + 1 if current else 1
            stored_view = with_meta(view, rid, version, at)
            raw = dumps(stored_view)
            created = current is None or current.deleted
            previous = current.version if current else None
            await self._put(rid, version, at, stored_view, raw, previous, session)
            await self.history.insert_one(
                {
                    "_id": f"{rid}/{version}",
                    "id": rid,
                    "v": version,
                    "lu": at,
                    "m": method,
                    "c": created,
                    "raw": raw,
                },
                session=session,
            )
            return Written(StoredVersion(TYPE, rid, version, at, raw, method, created), created)

        return await self.storage.transaction(run)

    async def _put(
        self,
        rid: str,
        version: int,
        at: datetime,
        view: dict[str, Any] | None,
        raw: bytes | None,
        previous: int | None,
        session: Session,
    ) -> None:
        """Compare-and-set the current document (a concurrent writer: retried)."""
        doc = _current_doc(rid, version, at, view, raw)
        if previous is None:
            await self.current.insert_one(doc, session=session)
            return
        result = await self.current.replace_one({"_id": rid, "v": previous}, doc, session=session)
        if result.matched_count != 1:
            raise ConcurrentModification(TYPE)

    async def _check_unique(self, rid: str, view: Mapping[str, Any], session: Session) -> None:
        canon = _canonical(view)
        if canon is None:
            return
        other = await self.current.find_one(
            {"canon": canon, "_id": {"$ne": rid}}, {"_id": 1}, session=session
        )
        if other is not None:
            version = view.get("version")
            which = f"url {view['url']!r}" + (
                f" and version {version!r}" if version else " and no version"
            )
            raise FhirError.of(
                409,
                "duplicate",
                f"{TYPE}/{other['_id']} already has {which}: a canonical names one live view",
                f"{TYPE}.url",
            )

    # --- resolving a reference (the operations) ---

    async def resolve(
        self, reference: str, policy: Policy, where: str
    ) -> tuple[dict[str, Any], str]:
        """The stored ViewDefinition ``reference`` names, as JSON, and the root of its
        own error expressions (``ViewDefinition``: a failing column of it is
        ``ViewDefinition.select[0].column[0].path``, the stored view's element): for
        $viewdefinition-run's ``viewReference`` and $viewdefinition-export.

        ``reference`` is ``ViewDefinition/<id>``, ``ViewDefinition/<id>/_history/<vid>``
        (or this server's absolute URL of either), or a canonical
        ``url`` / ``url|version`` (without a version: the most recently updated live
        view with that url). The token must be allowed to read ViewDefinitions (403,
        before anything else); a malformed ``ViewDefinition/...`` reference is 400, an
        unknown or deleted view 404 ``not-found`` (a version of a deleted view is still
        found), both with ``where``, the reference's place in the request, as the
        expression."""
        await self.ensure()
        await self._allowed(policy, "r")
        base = request_base_url.get() or ""
        if base and reference.startswith(f"{base}/{TYPE}/"):
            reference = reference[len(base) + 1 :]  # this server's absolute URL of it
        doc: Mapping[str, Any] | None
        kind, _, rest = reference.partition("/")
        if kind == TYPE and rest:
            rid, _, tail = rest.partition("/_history/")
            if not is_valid_id(rid) or (tail and whole_number(tail) is None):
                raise bad_request(f"{reference!r} is not a reference to a ViewDefinition", where)
            await self._visible(rid, policy)
            if tail:
                doc = await self.history.find_one({"_id": f"{rid}/{whole_number(tail)}"})
            else:
                doc = await self.current.find_one({"_id": rid})
        else:
            url, _, version = reference.partition("|")
            query: dict[str, Any] = {"url": url, "del": False}
            if version:
                query["ver"] = version
            found = self.current.find(query, sort=[("lu", DESCENDING)], limit=1)
            doc = next(iter([d async for d in found]), None)
        if doc is None or doc.get("raw") is None:
            raise FhirError.of(
                404, "not-found", f"No stored ViewDefinition matches {reference!r}", where
            )
        return load_stored(doc["raw"]), TYPE


def _check_match(current: StoredVersion | None, if_match: int | None) -> None:
    """If-Match (http.html#concurrency): 412 unless it names the current version."""
    if if_match is None:
        return
    if current is None:
        raise precondition_failed(
            f'If-Match W/"{if_match}" given but {TYPE} has no current version here', "If-Match"
        )
    if current.version != if_match:
        raise precondition_failed(
            f'Version conflict: If-Match W/"{if_match}" but the current version is '
            f"{current.version}",
            "If-Match",
        )


# --- search conditions ----------------------------------------------------------------------


def _condition(param: str, value: str) -> Filter:
    """One search parameter as a MongoDB condition: its comma-separated values ORed
    (search.html#combining); 400 for an unknown parameter, modifier or empty value."""
    name, _, modifier = param.partition(":")
    if name not in SEARCH_PARAMS:
        raise bad_request(
            f"Unknown search parameter {param!r} for {TYPE}; supported: "
            + ", ".join(SEARCH_PARAMS),
            param,
        )
    field, kind = SEARCH_PARAMS[name]
    if modifier and not (kind == "string" and modifier in ("exact", "contains")):
        raise bad_request(f"Modifier :{modifier} is not supported on {name}", param)
    values = _split(value)
    if not values:
        raise bad_request(f"{param} needs a value", param)
    if kind != "string":
        return {field: {"$in": values}}
    if modifier == "exact":
        return {"name": {"$in": values}}
    pattern = "|".join(
        ("" if modifier == "contains" else "^") + re.escape(v.lower()) for v in values
    )
    return {"name_lower": {"$regex": pattern}}


def _split(value: str) -> list[str]:
    """Comma-separated values, ``\\,`` being a literal comma (search.html#escaping)."""
    out: list[str] = []
    current = ""
    chars = iter(value)
    for c in chars:
        if c == "\\":
            current += next(chars, "\\")
        elif c == ",":
            out.append(current)
            current = ""
        else:
            current += c
    out.append(current)
    return [v for v in out if v]
