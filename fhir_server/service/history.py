"""The history interaction (http.html#history) for an instance, a type or the system,
paged by keyset so pages stay stable while new versions are written."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir_server.datetimes import parse_range
from fhir_server.outcome import bad_request
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


def encode_cursor(direction: str, version: StoredVersion) -> str:
    ms = int(version.last_updated.timestamp() * 1000)
    key = f"{version.type}/{version.id}/{version.version}"
    token = f"{direction}:{ms}:{key}".encode()
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[str, HistoryCursor]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        direction, ms, key = raw.split(":", 2)
        if direction not in ("a", "b"):
            raise ValueError(direction)
        when = datetime.fromtimestamp(int(ms) / 1000, UTC)
    except (ValueError, UnicodeDecodeError):
        raise bad_request(f"Invalid paging cursor {token!r}", "_cursor") from None
    return direction, HistoryCursor(when, key)


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

    async def page(
        self,
        query: HistoryQuery,
        count: int,
        cursor: str | None,
        with_total: bool,
    ) -> HistoryPage:
        direction, position = decode_cursor(cursor) if cursor else ("a", None)
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
            next=encode_cursor("a", rows[-1]) if rows and has_older else None,
            previous=encode_cursor("b", rows[0]) if rows and has_newer else None,
            total=total,
        )
