"""The history interaction (http.html#history) for an instance, a type or the system,
paged by keyset so pages stay stable while new versions are written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_server.datetimes import parse_range
from fhir_server.outcome import bad_request
from fhir_server.service.cursors import Cursors, invalid_cursor
from fhir_server.storage import Storage, StoredVersion
from fhir_server.storage.store import HistoryCursor, HistoryQuery


@dataclass(frozen=True, slots=True)
class RestrictedHistoryQuery(HistoryQuery):
    """A history query within what the request's token may read: ``allowed`` (a filter
    on history documents, from authz.policy.Policy.types_filter) is ANDed in. Every
    page and the total are filtered, so a cursor never widens access."""

    allowed: dict[str, Any] | None = None

    def filter(self) -> dict[str, Any]:
        found = HistoryQuery.filter(self)
        return found if self.allowed is None else {"$and": [found, self.allowed]}


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[StoredVersion]
    next: str | None  # cursor token for the next (older) page
    previous: str | None  # cursor token for the previous (newer) page
    total: int | None


def _position(version: StoredVersion) -> dict[str, Any]:
    return {"t": version.last_updated, "k": f"{version.type}/{version.id}/{version.version}"}


def parse_instant_param(name: str, value: str) -> tuple[datetime, datetime]:
    # A '+' zone offset sent unencoded arrives form-decoded as a space; a date never
    # contains a space, so reading it back as '+' is unambiguous.
    try:
        return parse_range(value.replace(" ", "+"))
    except ValueError:
        raise bad_request(
            f"{name} must be a FHIR instant or dateTime, got {value!r}", name
        ) from None


class HistoryService:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.cursors = Cursors(storage.db)

    async def _seal(self, direction: str, version: StoredVersion) -> str:
        return await self.cursors.seal("history", {"d": direction, **_position(version)})

    async def _open(self, token: str) -> tuple[str, HistoryCursor]:
        """(direction, position) of a history cursor; 400 unless this server sealed it."""
        doc = await self.cursors.open("history", token)
        direction, when, key = doc.get("d"), doc.get("t"), doc.get("k")
        if direction not in ("a", "b") or not isinstance(when, datetime):
            raise invalid_cursor()
        if not isinstance(key, str):
            raise invalid_cursor()
        return direction, HistoryCursor(when, key)

    async def page(
        self,
        query: HistoryQuery,
        count: int,
        cursor: str | None,
        with_total: bool,
    ) -> HistoryPage:
        direction, position = await self._open(cursor) if cursor else ("a", None)
        if direction == "a":
            rows = await self.storage.history_page(query, count + 1, after=position)
            has_more = len(rows) > count
            rows = rows[:count]
            has_newer = position is not None
            has_older = has_more
        else:
            rows = await self.storage.history_page(query, count + 1, before=position)
            has_more = len(rows) > count
            rows = rows[-count:] if count else []
            has_newer = has_more
            has_older = True
        total = await self.storage.history_count(query) if with_total else None
        return HistoryPage(
            versions=rows,
            next=await self._seal("a", rows[-1]) if rows and has_older else None,
            previous=await self._seal("b", rows[0]) if rows and has_newer else None,
            total=total,
        )
