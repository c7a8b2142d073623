"""CPU-bound request work off the event loop, in a pool sized to the cores.

The event loop answers every connection; whatever runs on it runs instead of them (a
validator on the loop held every request, ``/metadata`` included, for as long as one
body took). Parsing large bodies, validation, JSON Patch, transaction link rewriting and
search-index extraction run in a pool of daemon threads instead. They are Python (the
JSON reader calls a Python hook for every object and number), which gives up the GIL
every ``sys.getswitchinterval()`` (5 ms), so the loop keeps answering.

Chosen by measurement (docs/benchmarks.md, "Adversarial input"): a process pool for
parsing (``FHIR_PARSE_IN_PROCESSES=true``, kept as an option) answered the 2 MB bodies
no faster and kept ``/metadata`` no faster meanwhile, and it cost ~25% more server CPU
on ingest: every body is pickled back from the child, and the children start.
Bounding the work (input_limits.py, the issue limit) is what makes any one request
cheap; this pool is what keeps it from delaying the others.

Bodies below ``PARSE_INLINE_BYTES`` are parsed on the loop: under a millisecond, less
than the hand-over to a thread. A resource body below ``INLINE_BODY_BYTES`` is also
validated and rendered on the loop (``parse_resource``, ``call_for_body``): the
costliest such body holds the loop for a few milliseconds (docs/benchmarks.md, "Small
bodies on the loop"), and a create then skips two hand-overs to the pool, which cost
it more than that work under load.

A thread cannot be stopped from outside, so work given to the pool is cancelled by
asking: when the request awaiting it is cancelled (uvicorn's graceful timeout ran out,
or the server is closing), its token is set, and the long loops (a transaction's
entries) call ``checkpoint()`` between items and stop there. Without it a cancelled
10,000-entry transaction kept two cores busy for seconds after its request was gone,
and the server's shutdown waited behind it for the GIL.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ParamSpec, TypeVar

from fhir_server.input_limits import DEFAULT_LIMITS, InputLimits
from fhir_server.jsonio import parse_json

P = ParamSpec("P")
T = TypeVar("T")

PARSE_INLINE_BYTES = 16 * 1024
# A resource body below this is validated and rendered on the loop (``call_for_body``).
INLINE_BODY_BYTES = 4 * 1024

# Set for the rest of a request whose resource body was small (``parse_resource``).
_SMALL_BODY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "offload_small_body", default=False
)

_TOKEN: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "offload_token", default=None
)


class WorkCancelled(Exception):
    """The request this pool work was for is gone: the work stops where it checks."""


def checkpoint() -> None:
    """Stop (``WorkCancelled``) if the work running here has been cancelled; a no-op
    outside the pool. Cheap: call it once per item of a long loop."""
    token = _TOKEN.get()
    if token is not None and token.is_set():
        raise WorkCancelled()


def pool_size(workers: int = 1) -> int:
    """Pool slots per server process: the cores, shared by the ``serve --workers``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


class DaemonThreads(Executor):
    """A fixed pool of daemon threads. ``ThreadPoolExecutor``'s threads are joined at
    interpreter exit, so a server told to stop (SIGTERM) would wait for whatever
    validation was running for a request uvicorn already cancelled."""

    def __init__(self, size: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._size = size
        self.running = 0  # work items being run now (read without a lock: a hint)
        for i in range(size):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, work = item
            if not future.set_running_or_notify_cancel():
                continue
            self.running += 1
            try:
                future.set_result(work())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                self.running -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in range(self._size):
            self._queue.put(None)


def _warm() -> None:
    """Child start-up: import what parsing needs before the first request waits."""
    parse_json(b"{}")


class Offload:
    """Where a request's CPU work runs: ``call`` (thread pool) and ``parse`` (large
    bodies: thread pool, or a process pool if configured). ``Offload.inline()`` runs
    everything in place (scripts, tests of the services without a server)."""

    def __init__(self, threads: Executor | None, size: int = 0) -> None:
        self.threads = threads
        self.size = size  # child processes; 0: large bodies are parsed in a thread
        self.processes: ProcessPoolExecutor | None = None
        self._tokens: set[threading.Event] = set()  # the pool work being awaited now

    @classmethod
    def inline(cls) -> Offload:
        return cls(None)

    @classmethod
    def start(cls, size: int, processes: bool = False) -> Offload:
        """Pools of ``size``; the children start with the first large body (an app
        that never sees one, such as most tests', starts none). ``processes`` False:
        large bodies are parsed in the thread pool too."""
        threads = DaemonThreads(size, "fhir-cpu")
        return cls(threads, size if processes else 0)

    def _process_pool(self) -> ProcessPoolExecutor:
        if self.processes is None:
            self.processes = ProcessPoolExecutor(
                self.size, mp_context=multiprocessing.get_context("spawn"), initializer=_warm
            )
        return self.processes

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` in the thread pool, with the caller's context variables."""
        if self.threads is None:
            return fn(*args, **kwargs)
        token = threading.Event()
        context = contextvars.copy_context()
        context.run(_TOKEN.set, token)
        work = functools.partial(context.run, fn, *args, **kwargs)
        self._tokens.add(token)
        try:
            return await asyncio.get_running_loop().run_in_executor(self.threads, work)
        except asyncio.CancelledError:
            token.set()  # the thread stops at its next checkpoint()
            raise
        finally:
            self._tokens.discard(token)

    async def call_for_body(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call``, for work that grows with the request's resource body (validating
        it, rendering its version): on the loop when that body was small."""
        if _SMALL_BODY.get():
            return fn(*args, **kwargs)
        return await self.call(fn, *args, **kwargs)

    async def parse_resource(
        self, body: bytes, what: str = "request body", limits: InputLimits = DEFAULT_LIMITS
    ) -> Any:
        """``parse`` of a request's resource body; a small one marks the request (the
        rest of its task), so that ``call_for_body`` runs its work on the loop."""
        if len(body) < INLINE_BODY_BYTES:
            _SMALL_BODY.set(True)
        return await self.parse(body, what, limits)

    async def parse(
        self, body: bytes, what: str = "request body", limits: InputLimits = DEFAULT_LIMITS
    ) -> Any:
        """``parse_json``; a large body in a child process."""
        if len(body) < PARSE_INLINE_BYTES:
            return parse_json(body, what, limits)
        if self.size == 0:
            return await self.call(parse_json, body, what, limits)
        loop = asyncio.get_running_loop()
        pool = self._process_pool()
        try:
            return await loop.run_in_executor(pool, parse_json, body, what, limits)
        except BrokenProcessPool:  # a child died (killed): a new pool for the next body
            if self.processes is pool:
                self.processes = None
            pool.shutdown(wait=False, cancel_futures=True)
            return await self.call(parse_json, body, what, limits)

    def busy(self) -> bool:
        """Whether a pool thread is running work now (cancelled requests' included)."""
        return isinstance(self.threads, DaemonThreads) and self.threads.running > 0

    def close(self) -> None:
        """Stop both pools now: queued work is cancelled, children are terminated (a
        SIGTERM must not wait for a body being parsed); running work is asked to stop."""
        for token in list(self._tokens):
            token.set()
        if self.threads is not None:
            self.threads.shutdown(wait=False, cancel_futures=True)
        if self.processes is not None:
            children = list(getattr(self.processes, "_processes", {}).values())
            self.processes.shutdown(wait=False, cancel_futures=True)
            for child in children:
                if child.is_alive():
                    child.terminate()
