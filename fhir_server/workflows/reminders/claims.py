"""The claims of reminders (``reminder_claims``): one document per appointment, lead
time and start, whose unique ``_id`` a worker inserts before it sends anything. A second
worker (or a second look by the same one) meets the key and sends nothing.

States: ``claimed`` (nothing sent yet) -> ``sending`` (the message is being handed to
Twilio or the SMTP server; what and to whom is recorded first) -> ``sent`` or
``failed`` (the Communication is stored in the same transaction), or ``skipped`` (the
appointment was cancelled or moved meanwhile: nothing sent). A claim whose ``lease``
ran out while ``claimed`` or ``sending`` belonged to a worker that died: another worker
takes it over (``take_over``). A ``claimed`` one is simply sent; a ``sending`` one may
have gone out just before the worker died, so Twilio is asked first whether that
message exists (sending.py), and it is sent only if not.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

CLAIMS = "reminder_claims"
CLAIM_INDEXES = [
    IndexModel([("state", ASCENDING), ("lease", ASCENDING)], name="lease"),
    IndexModel([("patient", ASCENDING), ("state", ASCENDING)], name="patient"),
]
OPEN = ("claimed", "sending")
DUPLICATE_KEY = 11000


def claim_key(appointment: str, lead: int, start: datetime) -> str:
    return f"{appointment}|{lead}|{start.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z"


def communication_id(key: str) -> str:
    """The Communication of a reminder has an id derived from its claim: recorded twice
    (two workers, a takeover), it is still one resource."""
    return "reminder-" + hashlib.sha256(key.encode()).hexdigest()[:40]


async def claim(claims: AsyncCollection[dict[str, Any]], docs: list[dict[str, Any]]) -> set[str]:
    """Insert the claims; the ``_id``s this call won (the others were taken before)."""
    if not docs:
        return set()
    try:
        await claims.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors") or []
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        lost = {docs[e["index"]]["_id"] for e in errors}
        return {d["_id"] for d in docs} - lost
    return {d["_id"] for d in docs}


async def take_over(
    claims: AsyncCollection[dict[str, Any]],
    worker: str,
    now: datetime,
    lease: timedelta,
    limit: int,
) -> list[dict[str, Any]]:
    """Open claims whose lease ran out (their worker died, or a transient failure's
    wait is over), now this worker's."""
    taken: list[dict[str, Any]] = []
    cursor = claims.find({"state": {"$in": list(OPEN)}, "lease": {"$lte": now}}, limit=limit)
    async for doc in cursor:
        result = await claims.update_one(
            {"_id": doc["_id"], "state": doc["state"], "lease": doc["lease"]},
            {"$set": {"worker": worker, "lease": now + lease}},
        )
        if result.modified_count:
            taken.append({**doc, "worker": worker, "lease": now + lease})
    return taken
