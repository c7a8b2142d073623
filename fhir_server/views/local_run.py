"""A ViewDefinition run by the operator on this machine (``fhir-server view run``,
views/cli.py): over resource files, or over the server's database directly.

Over files (NDJSON, or a JSON Bundle, array or resource) nothing but the files is read:
no server, no database. Over the database the view reads the current versions of its
type as ``$viewdefinition-run`` does, with no SMART restriction: the operator reads
everything. Either way the rows come from views/run.py ``run_over`` (the operation's
encoders and ``_limit``). What goes wrong is a ``CommandError``: one line to show, and
the exit code (2: the command cannot start, such as a missing file; 1: bad input or a
failed run).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any, Protocol

from fhir_server.input_limits import InputLimits
from fhir_server.jsonio import parse_json
from fhir_server.offload import Offload
from fhir_server.outcome import FhirError
from fhir_server.views.engine import View, compile_view
from fhir_server.views.errors import ViewError
from fhir_server.views.run import BATCH, RunRequest, RunResult, run_over

# The operator's own files: the bounds of a request body on nesting and number sizes
# stay, those on its size go (a Bundle may hold millions of entries).
FILE_LIMITS = InputLimits(
    max_array_length=sys.maxsize, max_string_chars=sys.maxsize, max_decimals=sys.maxsize
)
NDJSON_SUFFIXES = (".ndjson", ".jsonl")


class CommandError(Exception):
    """What the command reports on one line before exiting with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ProgressMeter(Protocol):
    """Told how much there is (``start``) and how much more is read (``advance``):
    resources, or bytes of an NDJSON file."""

    def start(self, total: int) -> None: ...

    def advance(self, done: int) -> None: ...


# --- inputs ---------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file", 2) from None
    except OSError as exc:
        raise CommandError(f"{path}: cannot be read ({exc.strerror or exc})", 2) from None
    return parse(data, what)


def parse(data: bytes, what: str) -> Any:
    try:
        return parse_json(data, what, FILE_LIMITS)
    except FhirError as exc:
        raise CommandError(str(exc)) from None


def read_view(path: Path) -> View:
    """The compiled ViewDefinition in the file."""
    definition = read_json(path, f"ViewDefinition {path}")
    try:
        return compile_view(definition)
    except ViewError as exc:
        message = f"{path}: invalid ViewDefinition: {exc.message} (at {exc.expression})"
        raise CommandError(message) from None


def resource(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise CommandError(f"{where}: not a FHIR resource (a JSON object with a resourceType)")
    return value


def json_file_resources(data: Any, path: Path, view_type: str) -> list[dict[str, Any]]:
    """The resources of a JSON file: a Bundle's entries (unless the view is of Bundles),
    an array's items, or the resource itself."""
    if isinstance(data, list):
        return [resource(item, f"{path} [{i}]") for i, item in enumerate(data)]
    found = resource(data, str(path))
    if found["resourceType"] != "Bundle" or view_type == "Bundle":
        return [found]
    entries = found.get("entry", [])
    if not isinstance(entries, list):
        raise CommandError(f"{path}: Bundle.entry must be an array")
    return [
        resource(entry["resource"], f"{path} Bundle.entry[{i}].resource")
        for i, entry in enumerate(entries)
        if isinstance(entry, dict) and entry.get("resource") is not None
    ]


async def file_batches(
    path: Path, view_type: str, progress: ProgressMeter | None
) -> AsyncGenerator[list[Any], None]:
    """The file's resources a batch at a time; NDJSON is read a line at a time."""
    if path.suffix.lower() not in NDJSON_SUFFIXES:
        found = json_file_resources(read_json(path, f"file {path}"), path, view_type)
        if progress is not None:
            progress.start(len(found))
        for start in range(0, len(found), BATCH):
            if progress is not None:
                progress.advance(min(BATCH, len(found) - start))
            yield found[start : start + BATCH]
        return
    try:
        lines = path.open("rb")
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file", 2) from None
    except OSError as exc:
        raise CommandError(f"{path}: cannot be read ({exc.strerror or exc})", 2) from None
    with lines:
        if progress is not None:
            progress.start(os.fstat(lines.fileno()).st_size)
        batch: list[Any] = []
        for number, line in enumerate(lines, 1):
            if progress is not None:
                progress.advance(len(line))
            if not line.strip():
                continue
            where = f"{path} line {number}"
            batch.append(resource(parse(line, f"line {number} of {path}"), where))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


# --- runs -----------------------------------------------------------------------------------


async def run_files(
    req: RunRequest, path: Path, sink: IO[bytes], progress: ProgressMeter | None = None
) -> None:
    """The view over the resources of the file at ``path``, written to ``sink``."""
    batches = file_batches(path, req.view.resource_type, progress)
    await write(lambda: run_over(req, batches, Offload.inline()), sink)


async def run_stored(
    req: RunRequest,
    url: str,
    database: str,
    sink: IO[bytes],
    progress: ProgressMeter | None = None,
) -> None:
    """The view over the database's current versions of its type, written to ``sink``:
    the operation's own reading (views/run.py) with a policy that allows everything, as
    with authorization off."""
    from pymongo import AsyncMongoClient
    from pymongo.errors import PyMongoError

    from fhir_server.authz.policy import Policy
    from fhir_server.search.registry import Registry
    from fhir_server.service.search import SearchService
    from fhir_server.storage import Storage
    from fhir_server.views.run import ViewRunService

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    # One worker thread: the rows of a batch are made there while the event loop reads
    # the next batch from MongoDB (inline, the two would take turns).
    offload = Offload.start(1)
    try:
        storage = Storage(client, database)
        registry = Registry.from_definitions()
        service = ViewRunService(storage, registry, offload)
        policy = Policy(None, SearchService(storage, registry))
        if progress is not None:
            collection = storage.current(req.view.resource_type)
            progress.start(await collection.estimated_document_count())
        counted = progress.advance if progress is not None else None
        await write(lambda: service.run(req, policy, counted), sink)
    except PyMongoError as exc:
        raise CommandError(f"MongoDB: {str(exc).splitlines()[0]}") from None
    finally:
        offload.close()
        await client.close()


async def write(start: Callable[[], Awaitable[RunResult]], sink: IO[bytes]) -> None:
    """Start the run and write its chunks; a view error, before the first row or after
    it (the output so far stands), becomes a CommandError."""
    try:
        result = await start()
        async for chunk in result.chunks:
            sink.write(chunk)
    except FhirError as exc:  # a view error before the first row, as an OperationOutcome
        issue = exc.issues[0]
        at = f" (at {', '.join(issue.expression)})" if issue.expression else ""
        raise CommandError(f"{issue.diagnostics}{at}") from None
    except ViewError as exc:
        message = f"The ViewDefinition failed: {exc.message} (at {exc.expression})"
        raise CommandError(message) from None
    sink.flush()
