"""The CPU pool's cooperative cancellation (fhir_server/offload.py): work whose request
was cancelled stops at its next checkpoint instead of running to the end on a core."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from fhir_server.offload import Offload, WorkCancelled, checkpoint


def counting(counter: list[int], started: threading.Event, stopped: threading.Event) -> None:
    """A long loop that checks between items, like a transaction's entries."""
    started.set()
    try:
        for _ in range(10_000_000):
            checkpoint()
            counter[0] += 1
            time.sleep(0.0001)
    finally:
        stopped.set()


def run_counting(offload: Offload, stop: str) -> tuple[list[int], threading.Event]:
    """Run ``counting`` in the pool until it has started, then stop it: ``cancel`` its
    awaiting task (which must end CancelledError) or ``close`` the pool (WorkCancelled)."""
    counter = [0]
    started, stopped = threading.Event(), threading.Event()

    async def run() -> None:
        task = asyncio.create_task(offload.call(counting, counter, started, stopped))
        await asyncio.to_thread(started.wait, 5)
        if stop == "cancel":
            task.cancel()
        else:
            offload.close()
        with pytest.raises(asyncio.CancelledError if stop == "cancel" else WorkCancelled):
            await task

    asyncio.run(run())
    return counter, stopped


def test_a_cancelled_request_stops_its_pool_work() -> None:
    offload = Offload.start(1)
    try:
        counter, stopped = run_counting(offload, "cancel")
        assert stopped.wait(2), "the pool thread kept running after its request was cancelled"
        seen = counter[0]
        time.sleep(0.05)
        assert counter[0] == seen
    finally:
        offload.close()


def test_closing_the_pool_stops_running_work_with_work_cancelled() -> None:
    _, stopped = run_counting(Offload.start(1), "close")
    assert stopped.is_set()


def test_checkpoint_outside_the_pool_is_a_no_op() -> None:
    checkpoint()
    assert asyncio.run(Offload.inline().call(lambda: 7)) == 7
