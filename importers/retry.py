"""Rows that failed stay failed until a run gets them in.

An incremental run reads the rows updated since the watermark. A row that failed (a
required reference to a patient not migrated yet, a resource the server refused) and is
then fixed in the legacy system without touching its update column would never be read
again, so each resource mapping keeps its failed keys in the state (``State.failed``):

- the watermark never passes the earliest row that failed for the first time, so the
  next incremental run reads from there again;
- rows that failed before and are not among the rows a restricted run (``--incremental``,
  ``--since``, a resumed run) reads are fetched again by key after the others, so a row
  that keeps failing is retried on every run without holding the watermark back (the
  rows updated after it are not read again and again);
- every row retried is reported with how it ended this time.

A restricted run also fetches, the same way, the row a changed duplicate was merged into
(``dedupe``) when it did not read that row: the merged record is rebuilt from all of its
rows, so the duplicate's new phone or address reaches it.

The failed keys are updated as batches end (and saved with every checkpoint), so a
killed run loses none.
"""

from __future__ import annotations

import threading
from datetime import date
from typing import Any


def _stamp(updated: Any) -> str | None:
    return updated.isoformat() if isinstance(updated, date) else None


class Retries:
    """One resource mapping's failed rows during one run. Called from the reader thread
    (rows mapped) and the event loop (bundles answered), hence the lock."""

    def __init__(self, failed: dict[str, str | None], restricted: bool = False) -> None:
        self.live = failed  # the state's own dict: saved with every checkpoint
        self.earlier = dict(failed)  # what had failed before this run
        self.restricted = restricted  # the run reads only some rows (see remaining())
        self.seen: set[str] = set()  # earlier failures read again in the main pass
        self.read_keys: set[str] = set()  # (restricted runs) every key read
        self.merged_into: set[str] = set()  # (restricted runs) rows changed duplicates join
        self.ended: dict[str, str] = {}  # earlier failure -> how it ended this time
        self.earliest: date | None = None  # earliest updated of a first failure
        self._lock = threading.Lock()

    def read(self, key: str, merged_into: str | None = None) -> None:
        """(The reader thread, for every row of the main pass.)"""
        if key in self.earlier:
            with self._lock:
                self.seen.add(key)
        if self.restricted:
            self.read_keys.add(key)
            if merged_into is not None:
                self.merged_into.add(merged_into)

    def failed(self, key: str, updated: Any, retry_pass: bool = False) -> None:
        with self._lock:
            self.live[key] = _stamp(updated)
            if key in self.earlier:
                self.ended[key] = "failed again (see this run's errors for the row)"
            first_time = key not in self.earlier and not retry_pass
            if (
                first_time
                and isinstance(updated, date)
                and (self.earliest is None or updated < self.earliest)
            ):
                self.earliest = updated

    def done(self, key: str, how: str) -> None:
        """The row went in (``imported``), or was skipped or merged: no longer failed."""
        with self._lock:
            self.live.pop(key, None)
            if key in self.earlier:
                self.ended[key] = how

    def remaining(self) -> list[str]:
        """Earlier failures the main pass did not read, and (restricted runs) the rows
        changed duplicates were merged into that it did not read."""
        with self._lock:
            return sorted((set(self.earlier) - self.seen) | (self.merged_into - self.read_keys))

    def gone(self, keys: list[str]) -> None:
        """Earlier failures a full run did not find: the rows were deleted."""
        for key in keys:
            self.done(key, "no longer in the source")

    def watermark(self, newest: Any) -> Any:
        """The watermark to keep: the newest row read, but never past a failed row."""
        if self.earliest is None:
            return newest
        if newest is None or self.earliest < newest:
            return self.earliest
        return newest
