"""Paging cursors (the ``_cursor`` of next/previous links), signed so that a client can
only hand back what the server gave it.

A cursor holds where a page ended: sort values that go into a MongoDB filter. Read from
client bytes, a crafted one put ``{"$foo": 1}`` into the query as an operator, and
another overflowed a date. So a cursor is the server's BSON payload with an
HMAC-SHA256 tag (keyed per database, the key kept in MongoDB so every worker and every
restart shares it), for one kind of paging (a search cursor is no history cursor); a
cursor whose tag does not verify is a 400. After verification its values are still
checked to be scalars of the expected types before any of them reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import bson
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.errors import BSONError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhir_server.outcome import FhirError, bad_request

SECRETS = "server_secrets"
_KEY_ID = "cursor-hmac"
_TAG_BYTES = 16  # 128 bits of HMAC-SHA256
# What a sort value may be: never a document or an array, which MongoDB would read as
# operators or as several values.
SCALARS = (str, int, float, bool, datetime, Decimal128, type(None))


def invalid_cursor() -> FhirError:
    return bad_request("Invalid paging cursor: not one this server gave out", "_cursor")


class Cursors:
    """Seals and opens cursors with this database's key (created on first use, so a
    database that never pages holds no key)."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self.db = db
        self._key: bytes | None = None

    async def key(self) -> bytes:
        if self._key is None:
            secrets = self.db[SECRETS]
            doc = await secrets.find_one({"_id": _KEY_ID})
            if doc is None:
                with contextlib.suppress(DuplicateKeyError):  # another worker won the race
                    await secrets.update_one(
                        {"_id": _KEY_ID},
                        {"$setOnInsert": {"key": Binary(os.urandom(32))}},
                        upsert=True,
                    )
                doc = await secrets.find_one({"_id": _KEY_ID})
            assert doc is not None
            self._key = bytes(doc["key"])
        return self._key

    async def seal(self, kind: str, payload: dict[str, Any]) -> str:
        raw = bson.encode(payload)
        tag = _tag(await self.key(), kind, raw)
        return f"{_b64(raw)}.{_b64(tag)}"

    async def open(self, kind: str, token: str) -> dict[str, Any]:
        """The payload of a cursor this server sealed for ``kind``; 400 for any other."""
        body, dot, tag_text = token.partition(".")
        try:
            raw, tag = _unb64(body), _unb64(tag_text)
        except (binascii.Error, ValueError):
            raise invalid_cursor() from None
        if not dot or not hmac.compare_digest(tag, _tag(await self.key(), kind, raw)):
            raise invalid_cursor()
        try:
            return bson.decode(raw)
        except (BSONError, ValueError, OverflowError):  # sealed by another version
            raise invalid_cursor() from None


def scalars(values: Any, count: int | None = None) -> list[Any]:
    """``values`` as a list of sort values (``count`` of them when given); 400 if they
    are anything else."""
    if not isinstance(values, list) or (count is not None and len(values) != count):
        raise invalid_cursor()
    if not all(isinstance(v, SCALARS) for v in values):
        raise invalid_cursor()
    return values


def order_digest(order: Sequence[str]) -> bytes:
    """What a cursor's position is a position in (sort fields, or the types of a
    multi-type listing), in 8 bytes: a cursor of $everything lists up to 146 types."""
    return hashlib.sha256("\x00".join(order).encode()).digest()[:8]


def _tag(key: bytes, kind: str, raw: bytes) -> bytes:
    return hmac.new(key, kind.encode() + b"\x00" + raw, hashlib.sha256).digest()[:_TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError(text)
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
