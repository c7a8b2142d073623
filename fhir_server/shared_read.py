"""One small read shared by every request that needs "an answer from after I began".

Some reads only say where the database stands: the majority commit point a search on
the secondaries starts from (``Storage._acknowledged``), the newest code system or value
set version a validation must see (``terminology.membership``). A request needs an
answer from a read sent after it began, so that every write acknowledged before it is
included; an answer from any such read will do. ``SharedRead`` sends one at a time:
callers that start while one is in flight share the next, which is sent when that one
is back. A busy server then sends about one per round trip instead of one per request,
and a lone request still waits for exactly one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# The reads in flight: held until done (a task nobody references may be collected).
_RUNNING: set[asyncio.Future[None]] = set()


class SharedRead(Generic[T]):
    """``await shared.get()``: the answer of ``read()`` sent after the call began."""

    def __init__(self, read: Callable[[], Awaitable[T]]) -> None:
        self._read = read
        self._sent: asyncio.Future[T] | None = None  # in flight
        self._next: asyncio.Future[T] | None = None  # what callers arriving now share

    async def get(self) -> T:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            sending = asyncio.ensure_future(self._send(self._sent, self._next))
            _RUNNING.add(sending)
            sending.add_done_callback(_RUNNING.discard)
        # shielded: one caller cancelled does not cancel the read the others wait on
        return await asyncio.shield(self._next)

    async def _send(self, previous: asyncio.Future[T] | None, mine: asyncio.Future[T]) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])
            # From here on, a caller that starts needs a later read: the next one.
            self._next, self._sent = None, mine
            answer = await self._read()
        except asyncio.CancelledError:  # the loop is closing
            mine.cancel()
            raise
        except Exception as exc:  # every caller waiting on it gets the error
            mine.set_exception(exc)
            mine.exception()  # retrieved, whether or not a caller still waits
        else:
            mine.set_result(answer)
        finally:
            if self._sent is mine:
                self._sent = None
            if self._next is mine:  # never handed to a later caller, done or not
                self._next = None
