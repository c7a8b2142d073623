"""``SharedRead`` (fhir_server/shared_read.py): every caller gets the answer of a read
sent after it began, and callers that start together share one read. Used for the
majority commit point a search on the secondaries starts from and for the terminology
stamp every validated write checks (terminology/membership.py)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from fhir_server.config import Settings
from fhir_server.shared_read import SharedRead
from fhir_server.storage import Storage
from terminology.membership import Membership


class Clock:
    """A read that answers with the tick it was sent at, after a short round trip."""

    def __init__(self, fail: bool = False) -> None:
        self.ticks = itertools.count(1)
        self.now = 0
        self.sent = 0
        self.fail = fail

    def tick(self) -> int:
        self.now = next(self.ticks)
        return self.now

    async def read(self) -> int:
        self.sent += 1
        at = self.tick()
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("unreachable")
        return at


def test_each_caller_gets_a_read_sent_after_it_began() -> None:
    clock = Clock()
    shared = SharedRead(clock.read)

    async def caller(delay: float) -> tuple[int, int]:
        await asyncio.sleep(delay)
        began = clock.tick()
        return began, await shared.get()

    async def run() -> list[tuple[int, int]]:
        return await asyncio.gather(*(caller(i * 0.003) for i in range(30)))

    answers = asyncio.run(run())
    assert all(sent > began for began, sent in answers), answers
    # 30 callers over ~90 ms, reads of ~10 ms one at a time: far fewer reads than callers
    assert clock.sent <= 12, clock.sent


def test_callers_that_start_together_share_one_read_and_one_after_another_do_not() -> None:
    clock = Clock()
    shared = SharedRead(clock.read)

    async def run() -> None:
        answers = await asyncio.gather(*(shared.get() for _ in range(20)))
        assert len(set(answers)) == 1 and clock.sent == 1
        for expected in (2, 3, 4):
            await shared.get()
            assert clock.sent == expected

    asyncio.run(run())


def test_an_error_reaches_every_caller_and_the_next_call_reads_again() -> None:
    clock = Clock(fail=True)
    shared = SharedRead(clock.read)

    async def run() -> None:
        results = await asyncio.gather(*(shared.get() for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results), results
        clock.fail = False
        assert await shared.get() > 0
        assert clock.sent == 2

    asyncio.run(run())


def test_a_cancelled_caller_does_not_cancel_the_read_the_others_wait_on() -> None:
    clock = Clock()
    shared = SharedRead(clock.read)

    async def run() -> None:
        first = asyncio.ensure_future(shared.get())
        second = asyncio.ensure_future(shared.get())
        await asyncio.sleep(0)
        first.cancel()
        assert await second > 0
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(run())


class _HistoryFinds(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "history":
            self.count += 1

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def test_validations_that_start_together_share_one_terminology_stamp(settings: Settings) -> None:
    """Every validated write checks that its value set snapshot is current (a read of the
    newest CodeSystem or ValueSet version): 20 at once share the next read."""

    async def run() -> None:
        finds = _HistoryFinds()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_url, event_listeners=[finds]
        )
        membership = Membership(Storage(client, settings.database))
        try:
            await membership.context()
            before = finds.count
            await asyncio.gather(*(membership.context() for _ in range(20)))
            assert 1 <= finds.count - before <= 2, finds.count - before
            await membership.context()
            assert finds.count - before in (2, 3)
        finally:
            await client.close()

    asyncio.run(run())
