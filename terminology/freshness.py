"""When what a process read of the terminology may be used again without asking MongoDB.

A $lookup or $validate-code is a few index lookups; resolving the canonical URL of the
code system or value set it names was most of its cost (a round trip and about 0.2 ms
of client CPU each). A process may reuse what it resolved while nothing of the
terminology changed since, and it learns of changes two ways:

- its own writes: storage tells it when a transaction starts writing a CodeSystem,
  ValueSet or ConceptMap and when that transaction has ended (``WriteObserver``); in
  between nothing is reused, so a client that wrote and then asks sees its write;
- everyone else's (other workers, other servers, ``fhir-server terminology import``):
  a MongoDB change stream on those collections and on the concept store's systems.

Every change ends the reuse of everything read before it (``generation``). While the
change stream is not open (starting, MongoDB unreachable, a stream error) nothing is
reused at all: resolution asks MongoDB every time, as it does with no ``Freshness``.
What another process writes is seen once its change event arrives, milliseconds after
the commit; the process that writes sees it at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pymongo.errors import PyMongoError

from fhir_server.storage import Storage
from terminology.concepts import SYSTEMS

log = logging.getLogger(__name__)

TYPES = frozenset({"CodeSystem", "ValueSet", "ConceptMap"})
_RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


class Freshness:
    """One process's knowledge of whether its terminology reads are still current."""

    types = TYPES

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.generation = 0  # bumped by every change: reads from before are not reused
        self.live = False  # the change stream is open
        self.in_flight = 0  # this process's transactions writing terminology
        self.opened = asyncio.Event()  # set each time the stream (re)opens

    @property
    def trusted(self) -> bool:
        """May reads tagged with the current ``generation`` be used without asking?"""
        return self.live and self.in_flight == 0

    def changed(self) -> None:
        self.generation += 1

    # --- storage's WriteObserver -------------------------------------------------------

    def writing(self) -> None:
        self.in_flight += 1
        self.changed()

    def written(self) -> None:
        self.in_flight -= 1
        self.changed()

    # --- everyone else's writes --------------------------------------------------------

    async def watch(self) -> None:
        """Follow the change stream until cancelled, reopening it after errors (nothing is
        reused while it is closed)."""
        collections = [*(self.storage.current(t).name for t in sorted(TYPES)), SYSTEMS]
        pipeline: list[dict[str, Any]] = [
            {"$match": {"ns.coll": {"$in": collections}}},
            {"$project": {"_id": 1}},  # the event's resume token is all we need
        ]
        failures = 0
        while True:
            try:
                async with await self.storage.db.watch(pipeline) as stream:
                    # opened at a cluster time: everything after it will be reported,
                    # so what is read from here on may be reused until then
                    self.changed()
                    self.live = True
                    self.opened.set()
                    failures = 0
                    async for _event in stream:
                        self.changed()
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:  # once per outage: a standalone mongod fails forever
                (log.debug if failures else log.warning)(
                    "terminology change stream closed (%s); definitions are looked up on "
                    "every request until it reopens",
                    exc,
                )
            finally:
                self.live = False
                self.opened.clear()
                self.changed()
            await asyncio.sleep(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)])
            failures += 1
