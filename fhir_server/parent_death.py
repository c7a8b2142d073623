"""Children of ``fhir-server serve`` that die with it, however it ends.

A clean stop (SIGTERM, SIGINT, SIGHUP) stops every child in order; a ``kill -9`` or an
out-of-memory kill of the server runs no code at all, so the kernel must do it: Linux's
``PR_SET_PDEATHSIG`` sends the child a signal when its parent dies. Without it, a
``kill -9`` left the embedded mongod and the export worker running, and the worker
reconnected to the next server's mongod (issue 18).

PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process:
fork from the main thread, or from a thread that lives as long as the child should.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def arm(parent: int, sig: int = signal.SIGTERM) -> None:
    """In a child that runs Python of its own (not between fork and exec): ask for
    ``sig`` when ``parent`` dies."""
    prctl = _prctl()
    if prctl is not None:
        _arm(prctl, parent, sig)


def _arm(prctl: Callable[..., int], parent: int, sig: int) -> None:
    prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def die_with_parent(
    sig: int = signal.SIGTERM, *, any_thread: bool = False
) -> Callable[[], None] | None:
    """A ``preexec_fn`` arming ``sig`` for when this process dies (None where it cannot
    be armed: off Linux, or off the main thread unless ``any_thread`` says the calling
    thread lives as long as the child should, as a supervisor's does)."""
    prctl = _prctl()  # looked up here: loading symbols between fork and exec can deadlock
    if prctl is None:
        return None
    if not any_thread and threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def setup() -> None:
        _arm(prctl, parent, sig)

    return setup
