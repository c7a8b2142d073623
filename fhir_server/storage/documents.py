"""The shape of stored documents.

Current versions live in one collection per resource type (named after the type):
    {_id: id, v: versionId (int), lu: lastUpdated, del: bool, raw: <resource JSON bytes>,
     sp: {param: [index values]}, so: {param: {a: lowest, d: highest}},
     comp: ["Patient/<id>", ...]}   (search/values.py describes sp and so)
Every version (current ones included) lives in the single ``history`` collection:
    {_id: "Type/id/v", t: type, id, v, lu, m: method, raw: bytes | None for a delete,
     c: true when this version created the resource (a POST, an update-as-create, or an
     update bringing a deleted resource back), so history can report 201 for it}
History is one collection rather than one per type because system-level ``_history``
must page through all types in lastUpdated order; one compound index does that,
where 146 collections would need a k-way merge on every page.

The resource is kept as the exact JSON bytes the server returns: a read is one indexed
lookup and a byte copy, and decimals keep their precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

HISTORY = "history"


def history_key(resource_type: str, resource_id: str, version: int) -> str:
    return f"{resource_type}/{resource_id}/{version}"


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of a resource as read back from storage."""

    type: str
    id: str
    version: int
    last_updated: datetime
    raw: bytes | None  # None: this version is a deletion
    method: str = "PUT"
    created: bool = False  # this version created the resource (answered 201)
    comp: tuple[str, ...] = ()  # its Patient compartments, when read with them (audit)

    @property
    def deleted(self) -> bool:
        return self.raw is None

    @classmethod
    def from_current(cls, resource_type: str, doc: dict[str, Any]) -> StoredVersion:
        return cls(
            resource_type,
            doc["_id"],
            doc["v"],
            doc["lu"],
            None if doc.get("del") else doc["raw"],
            comp=tuple(doc.get("comp") or ()),
        )

    @classmethod
    def from_history(cls, doc: dict[str, Any]) -> StoredVersion:
        return cls(
            doc["t"],
            doc["id"],
            doc["v"],
            doc["lu"],
            doc.get("raw"),
            doc["m"],
            doc.get("c", doc["v"] == 1),
            tuple(doc.get("comp") or ()),
        )


@dataclass(slots=True)
class VersionWrite:
    """A new version to write: ``previous`` is the version it replaces (None: new id)."""

    type: str
    id: str
    version: int
    last_updated: datetime
    method: str  # POST | PUT | PATCH | DELETE
    raw: bytes | None  # None for a delete
    previous: int | None
    sp: dict[str, Any] = field(default_factory=dict)  # search index values
    so: dict[str, Any] = field(default_factory=dict)  # sort keys
    comp: list[str] = field(default_factory=list)  # Patient compartments
    created: bool = False  # no live version before this one (new, or after a delete)
    prior: dict[str, Any] | None = None  # the replaced content, when the writer parsed it
    content: dict[str, Any] | None = None  # ``raw`` as a dict, as rendered (not re-parsed)

    def current_document(self) -> dict[str, Any]:
        # A deleted resource keeps no index values and no compartments: searches rely
        # on it (search.compile.excludes_deleted) to leave out ``del: false``.
        deleted = self.raw is None
        return {
            "_id": self.id,
            "v": self.version,
            "lu": self.last_updated,
            "del": deleted,
            "raw": self.raw,
            "sp": {} if deleted else self.sp,
            "so": {} if deleted else self.so,
            "comp": [] if deleted else self.comp,
        }

    def history_document(self) -> dict[str, Any]:
        return {
            "_id": history_key(self.type, self.id, self.version),
            "t": self.type,
            "id": self.id,
            "v": self.version,
            "lu": self.last_updated,
            "m": self.method,
            "c": self.created,
            "raw": self.raw,
            # whose record this version was: a vread or history entry names the patient
            # in its audit record, as a read of the current version does
            **({"comp": self.comp} if self.comp else {}),
        }

    def stored(self) -> StoredVersion:
        return StoredVersion(
            self.type,
            self.id,
            self.version,
            self.last_updated,
            self.raw,
            self.method,
            self.created,
        )
