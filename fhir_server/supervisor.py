"""Restarting what ``fhir-server serve`` runs beside the API when it dies: the embedded
mongod and the embedded export worker. Nothing restarted them before, so one SIGKILL
(or an out-of-memory kill) left every data request failing, or an export waiting for
ever, until someone restarted the whole server.

A watcher thread polls the child; when it has died it waits ``backoff`` seconds and
restarts it, doubling the wait (up to ``max_backoff``) while restarts keep failing or the
child keeps dying within ``stable_after`` seconds, so a child that cannot start does not
spin the CPU. Stop the supervisor before stopping the child, or it brings it back.

A restarted child is forked from the watcher thread and armed to die with it
(PR_SET_PDEATHSIG follows the forking thread), so the thread stays parked after ``stop``
until ``release``: the child is then stopped in order, not killed by the thread's end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

if TYPE_CHECKING:
    from fhir_server.config import Settings

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(
        self,
        name: str,
        alive: Callable[[], bool],
        restart: Callable[[], None],
        *,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        stable_after: float = 30.0,
        poll: float = 0.25,
    ) -> None:
        self.name = name
        self.alive = alive
        self.restart = restart
        self.backoff = backoff
        self.max_backoff = max(backoff, max_backoff)
        self.stable_after = stable_after
        self.poll = poll
        self.restarts = 0
        self._stop = threading.Event()
        self._parked = threading.Event()  # the watcher left its loop: no restart under way
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching (an ongoing restart finishes first, up to ``timeout``); the
        thread stays alive until ``release``."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._parked.wait(timeout)

    def release(self, timeout: float = 10.0) -> None:
        """Let the stopped watcher thread end (after the child it restarted was stopped)."""
        self._stop.set()
        self._released.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.release()

    def _watch(self) -> None:
        try:
            self._loop()
        finally:
            self._parked.set()
        self._released.wait()

    def _loop(self) -> None:
        delay = self.backoff
        started = time.monotonic()
        while not self._stop.wait(self.poll):
            if self.alive():
                if time.monotonic() - started >= self.stable_after:
                    delay = self.backoff  # it has run a while: the next death starts over
                continue
            log.warning("%s died; restarting it in %.1f s", self.name, delay)
            if self._stop.wait(delay):
                return
            try:
                self.restart()
            except Exception:
                log.exception("restarting %s failed", self.name)
            else:
                self.restarts += 1
                log.warning("%s restarted", self.name)
            started = time.monotonic()
            delay = min(delay * 2, self.max_backoff)


class Child(Protocol):
    """What ``supervised`` watches: a process that can say it runs, be restarted and stopped."""

    @property
    def alive(self) -> bool: ...

    def restart(self) -> None: ...

    def stop(self) -> None: ...


@contextmanager
def supervised(name: str, child: Child, settings: Settings) -> Iterator[None]:
    """Keep ``child`` running for the block, with the configured backoff; on exit stop the
    supervisor first (or it would restart the child), then the child, then let the
    supervisor's thread end."""
    supervisor = Supervisor(
        name,
        lambda: child.alive,
        child.restart,
        backoff=settings.supervisor_backoff_seconds,
        max_backoff=settings.supervisor_backoff_max_seconds,
    ).start()
    try:
        yield
    finally:
        supervisor.stop()
        try:
            child.stop()
        finally:
            supervisor.release()
