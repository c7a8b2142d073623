"""The process tree of a server under test, read from /proc (Linux), for tests that
find or inspect the children ``fhir-server serve`` starts."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a child process still running, then SIGKILL it if it has not ended
    within 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def descendant_pids(pid: int) -> list[int]:
    """Every live descendant of ``pid``: children, their children, and so on."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found
