"""The journal that lets ``fhir-server load`` resume where it stopped.

Re-sending a transaction with POST entries creates its resources a second time, so a
load killed halfway must not start over. The journal holds one JSON line per upload the
server answered 2xx for, written (and fsynced) as soon as the answer arrives. An upload
is known by the server's base URL, the file's absolute path, size and ``mtime_ns``, its
position in the file (``file`` for a JSON file, ``lines A-B`` for an NDJSON chunk) and the
SHA-256 of its source bytes, so a file changed since is sent again. Uploads the server
refused (4xx, 5xx) wrote nothing and are not journaled: a rerun sends them again and
reports them again. A line torn by a kill is dropped when the journal is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import orjson

DEFAULT_JOURNAL = Path(".fhir-load-journal.ndjson")
Key = tuple[str, str, int, int, str, str]
"""(base URL, absolute path, size, mtime_ns, position, sha256)."""


class Journal:
    """Completed uploads, read at start and appended to as answers arrive."""

    def __init__(self, path: Path, base_url: str, *, restart: bool = False) -> None:
        self.path = path
        self.base_url = base_url.rstrip("/")
        self.done: dict[Key, int] = {} if restart else _read(path)
        if not restart:
            _drop_torn_tail(path)
        self._file: IO[bytes] = path.open("wb" if restart else "ab")

    def key(self, path: Path, size: int, mtime_ns: int, position: str, digest: str) -> Key:
        return (self.base_url, str(path.resolve()), size, mtime_ns, position, digest)

    def resources(self, key: Key) -> int | None:
        """How many resources the upload held if it was loaded before, else None."""
        return self.done.get(key)

    def record(self, key: Key, resources: int) -> None:
        url, file, size, mtime_ns, position, digest = key
        line = {
            "url": url,
            "file": file,
            "size": size,
            "mtime_ns": mtime_ns,
            "at": position,
            "sha256": digest,
            "resources": resources,
        }
        self._file.write(orjson.dumps(line) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())  # a kill right after the answer must not lose it
        self.done[key] = resources

    def close(self) -> None:
        self._file.close()


def _read(path: Path) -> dict[Key, int]:
    done: dict[Key, int] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return done
    for raw in data.splitlines():
        try:
            line = orjson.loads(raw)
            key: Key = (
                str(line["url"]),
                str(line["file"]),
                int(line["size"]),
                int(line["mtime_ns"]),
                str(line["at"]),
                str(line["sha256"]),
            )
            done[key] = int(line["resources"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a torn or foreign line: that upload is simply not known as done
    return done


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline, so the next line does not join it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
