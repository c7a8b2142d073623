"""Upload FHIR data to any FHIR server over its REST API (the ``fhir-server load`` command).

Inputs, streamed one file at a time (an NDJSON file one line at a time), so a directory of
any size loads in bounded memory:

- ``*.json`` holding a Bundle of type ``transaction`` or ``batch``: POSTed as-is to the
  base URL (http.html#transaction); its bytes are sent untouched.
- ``*.json`` holding any other resource (including a Bundle of another type, which is a
  resource in its own right): ``PUT [type]/[id]`` when it has an id, else ``POST [type]``.
- ``*.ndjson`` / ``*.jsonl``: one resource per line, sent as Bundles of ``batch_size``
  entries (``transaction`` by default; the ``load`` command's help says why).
- directories: their ``*.json``, ``*.ndjson`` and ``*.jsonl`` files, recursively, in sorted
  order; other files are skipped.

Resources are spliced into NDJSON Bundles as their original bytes, never re-serialised,
so decimals keep their exact JSON text.

With a ``Journal`` (fhir_server/load_journal.py) every upload the server answered 2xx for
is recorded, and a rerun skips those, so a killed load resumes without creating the
resources of its POST entries twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson

from fhir_server.load_journal import Journal, Key
from fhir_server.progress import stderr_progress

JSON_SUFFIXES = (".json",)
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"PUT", "DELETE", "GET", "HEAD"})
# Raised before any byte of the request reached the server: always safe to retry.
UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAX_BACKOFF_S = 30.0
FHIR_JSON = "application/fhir+json"
BundleType = Literal["transaction", "batch"]


class UsageError(ValueError):
    """A path the loader cannot take (the CLI turns it into exit code 2)."""


@dataclass(frozen=True, slots=True)
class EntryRef:
    """Where an uploaded resource came from, for failure reports."""

    file: str
    where: str
    full_url: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A resource, entry or whole Bundle the server (or the reader) did not accept."""

    file: str
    where: str
    full_url: str | None
    status: int | None
    diagnostics: str
    resources: int = 1

    def describe(self) -> str:
        url = f" ({self.full_url})" if self.full_url else ""
        status = f"{self.status}: " if self.status is not None else ""
        return f"{self.file} {self.where}{url}: {status}{self.diagnostics}"


@dataclass(slots=True)
class Upload:
    """One HTTP request: a Bundle for the base URL or a single resource."""

    file: str
    method: str
    path: str
    body: bytes
    entries: list[EntryRef]
    bundle_type: str | None
    source_bytes: int
    bundle_where: str = "bundle"
    idempotent: bool = False
    # where in its file it came from ("file", "lines A-B") and the SHA-256 of its source
    # bytes: with the file's identity, the journal's key
    position: str = "file"
    digest: str = ""
    key: Key | None = None


@dataclass(frozen=True, slots=True)
class Options:
    """How to talk to the server."""

    base_url: str
    token: str | None = None
    # instead of a fixed token: authentication that renews its own (a backend client)
    auth: httpx.Auth | None = None
    concurrency: int = 4
    batch_size: int = 500
    ndjson_bundle: BundleType = "transaction"
    retries: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 300.0
    # what each response carries: an importer asks for OperationOutcome to learn which
    # entries made no new version (bundles.py codes the ones that did)
    prefer_return: str = "minimal"


@dataclass(slots=True)
class Summary:
    """What a load did; ``ok`` is False when anything failed."""

    files: int = 0
    skipped: int = 0
    requests: int = 0
    bundles: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    resumed_uploads: int = 0  # skipped: the journal says an earlier run loaded them
    resumed_resources: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.failures

    @property
    def per_second(self) -> float:
        return self.succeeded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def lines(self) -> list[str]:
        out = [
            f"files: {self.files} ({self.skipped} skipped)  requests: {self.requests} "
            f"({self.bundles} bundles)  retries: {self.retries}",
            f"resources: {self.sent} sent, {self.succeeded} succeeded, {self.failed} failed",
            f"elapsed: {self.elapsed_s:.1f} s, {self.per_second:.0f} resources/s",
        ]
        if self.resumed_uploads:
            out.append(
                f"resumed: {self.resumed_uploads} uploads ({self.resumed_resources} resources) "
                "already loaded were skipped"
            )
        if self.failures:
            out.append(f"failures ({len(self.failures)}):")
            out += [f"  {f.describe()}" for f in self.failures]
        return out


# --- finding files ---------------------------------------------------------------------


def _loadable(path: Path) -> bool:
    return path.suffix.lower() in JSON_SUFFIXES + NDJSON_SUFFIXES


def _walk(directory: Path) -> Iterator[tuple[Path, bool]]:
    for child in sorted(directory.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            yield from _walk(child)
        elif child.is_file():
            yield child, _loadable(child)


def discover(paths: Iterable[Path]) -> tuple[list[Path], int]:
    """The files to load, in order, and how many were skipped. Only paths are listed, so
    a large tree costs no file reads here; the sizes give the progress bar its total."""
    files: list[Path] = []
    skipped = 0
    for path in paths:
        if not path.exists():
            raise UsageError(f"no such file or directory: {path}")
        if path.is_dir():
            for child, loadable in _walk(path):
                if loadable:
                    files.append(child)
                else:
                    skipped += 1
        elif _loadable(path):
            files.append(path)
        else:
            raise UsageError(f"not a .json, .ndjson or .jsonl file: {path}")
    if not files:
        raise UsageError("no .json, .ndjson or .jsonl files to load")
    return files, skipped


# --- turning files into requests -------------------------------------------------------


def _strip_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def _resource_path(resource: dict[str, Any]) -> tuple[str, str]:
    """(method, path): PUT keeps a given id (idempotent re-runs), POST lets the server
    assign one."""
    rtype = resource["resourceType"]
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return "PUT", f"{rtype}/{rid}"
    return "POST", rtype


def _json_file(path: Path) -> Upload | Failure:
    name = str(path)
    data = _strip_bom(path.read_bytes())
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Failure(name, "file", None, None, f"invalid JSON: {exc}")
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        return Failure(name, "file", None, None, "not a FHIR resource (no resourceType)")
    digest = hashlib.sha256(data).hexdigest()
    if doc["resourceType"] == "Bundle" and doc.get("type") in ("transaction", "batch"):
        raw = doc.get("entry")
        raw_entries = (
            [e if isinstance(e, dict) else {} for e in raw] if isinstance(raw, list) else []
        )
        entries = [
            EntryRef(name, f"entry {i}", e.get("fullUrl")) for i, e in enumerate(raw_entries)
        ]
        repeatable = all(_entry_method(e) in IDEMPOTENT_METHODS for e in raw_entries)
        bundle = Upload(name, "POST", "", data, entries, doc["type"], len(data))
        bundle.idempotent, bundle.digest = repeatable, digest
        return bundle
    method, rpath = _resource_path(doc)
    entry = [EntryRef(name, "resource")]
    single = Upload(name, method, rpath, data, entry, None, len(data), "resource")
    single.idempotent, single.digest = method == "PUT", digest
    return single


def _entry_method(entry: dict[str, Any]) -> Any:
    request = entry.get("request")
    return request.get("method") if isinstance(request, dict) else None


def _bundle_entry(raw: bytes, resource: dict[str, Any], base_url: str) -> tuple[bytes, str]:
    """One entry's bytes, the resource spliced in verbatim, and its fullUrl."""
    method, rpath = _resource_path(resource)
    full_url = f"{base_url}/{rpath}" if method == "PUT" else f"urn:uuid:{uuid.uuid4()}"
    request = orjson.dumps({"method": method, "url": rpath})
    entry = b'{"fullUrl":' + orjson.dumps(full_url) + b',"resource":' + raw
    return entry + b',"request":' + request + b"}", full_url


def _bundle(
    name: str, chunk: list[tuple[int, bytes, dict[str, Any]]], options: Options, size: int
) -> Upload:
    parts: list[bytes] = []
    entries: list[EntryRef] = []
    source = hashlib.sha256()  # of the lines, not the body: its urn:uuids are new each run
    for line_no, raw, resource in chunk:
        source.update(raw + b"\n")
        entry, full_url = _bundle_entry(raw, resource, options.base_url.rstrip("/"))
        parts.append(entry)
        entries.append(EntryRef(name, f"line {line_no}", full_url))
    head = b'{"resourceType":"Bundle","type":"' + options.ndjson_bundle.encode() + b'","entry":['
    body = head + b",".join(parts) + b"]}"
    where = f"lines {chunk[0][0]}-{chunk[-1][0]}"
    repeatable = all(e.full_url and not e.full_url.startswith("urn:") for e in entries)
    upload = Upload(name, "POST", "", body, entries, options.ndjson_bundle, size, where)
    upload.idempotent, upload.position, upload.digest = repeatable, where, source.hexdigest()
    return upload


def _ndjson_line(name: str, line_no: int, raw: bytes) -> dict[str, Any] | Failure:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Failure(name, f"line {line_no}", None, None, f"invalid JSON: {exc}")
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        return Failure(name, f"line {line_no}", None, None, "not a FHIR resource")
    return doc


def _ndjson_file(path: Path, options: Options) -> Iterator[Upload | Failure | int]:
    """Bundles of ``batch_size`` lines; unreadable lines come out as Failures, and the
    byte counts of lines in neither as ints (for the progress bar)."""
    name = str(path)
    chunk: list[tuple[int, bytes, dict[str, Any]]] = []
    size = 0
    with path.open("rb") as lines:
        for line_no, line in enumerate(lines, start=1):
            raw = (_strip_bom(line) if line_no == 1 else line).strip()
            if not raw:
                yield len(line)
                continue
            parsed = _ndjson_line(name, line_no, raw)
            if isinstance(parsed, Failure):
                yield parsed
                yield len(line)
                continue
            chunk.append((line_no, raw, parsed))
            size += len(line)
            if len(chunk) >= options.batch_size:
                yield _bundle(name, chunk, options, size)
                chunk, size = [], 0
    if chunk:
        yield _bundle(name, chunk, options, size)


def read_file(path: Path, options: Options) -> Iterator[Upload | Failure | int]:
    """Everything one file turns into, lazily."""
    if path.suffix.lower() in NDJSON_SUFFIXES:
        yield from _ndjson_file(path, options)
    else:
        item = _json_file(path)
        yield item
        if isinstance(item, Failure):
            yield path.stat().st_size


# --- reading the server's answer -------------------------------------------------------

_ENTRY_INDEX = re.compile(r"entry\s*(?:\[|#|\s)\s*(\d+)", re.IGNORECASE)


def _json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def diagnostics(outcome: Any, body: bytes = b"") -> str:
    """The OperationOutcome's issues as one line (or the body's start if it is not one)."""
    if isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome":
        texts = []
        for issue in outcome.get("issue") or []:
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
            text = text or issue.get("code", "")
            where = issue.get("expression") or issue.get("location")
            texts.append(f"{text} [{', '.join(where)}]" if where else str(text))
        return "; ".join(texts) or "OperationOutcome without issues"
    snippet = body[:300].decode("utf-8", "replace").strip()
    return snippet or "(empty response)"


def _named_entry(upload: Upload, outcome: Any) -> EntryRef | None:
    """The entry a failed transaction's OperationOutcome blames, if it names one."""
    if not isinstance(outcome, dict):
        return None
    for issue in outcome.get("issue") or []:
        texts = [*(issue.get("expression") or []), *(issue.get("location") or [])]
        texts.append(issue.get("diagnostics") or "")
        for text in texts:
            match = _ENTRY_INDEX.search(str(text))
            if match and int(match.group(1)) < len(upload.entries):
                return upload.entries[int(match.group(1))]
    return None


def _status_code(status: Any) -> int | None:
    match = re.match(r"\s*(\d{3})", str(status or ""))
    return int(match.group(1)) if match else None


def _whole_failure(upload: Upload, status: int | None, body: bytes) -> Failure:
    outcome = _json_or_none(body)
    ref = _named_entry(upload, outcome)
    where, url = (ref.where, ref.full_url) if ref else (upload.bundle_where, None)
    text = diagnostics(outcome, body)
    if upload.bundle_type == "transaction" and status is not None:
        text += f" (transaction not applied: {len(upload.entries)} resources)"
    return Failure(upload.file, where, url, status, text, len(upload.entries))


def _entry_results(upload: Upload, doc: Any) -> tuple[int, list[Failure]]:
    """Per-entry statuses of a transaction-response or batch-response."""
    answers = doc.get("entry") if isinstance(doc, dict) else None
    if not isinstance(answers, list):
        if upload.bundle_type == "transaction":  # a 2xx transaction applied every entry
            return len(upload.entries), []
        answers = []
    ok, failures = 0, []
    for i, ref in enumerate(upload.entries):
        answer = answers[i] if i < len(answers) and isinstance(answers[i], dict) else {}
        response = answer.get("response") or {}
        code = _status_code(response.get("status"))
        if code is not None and code < 400:
            ok += 1
            continue
        text = diagnostics(response.get("outcome")) if response else "no response entry"
        failures.append(Failure(ref.file, ref.where, ref.full_url, code, text))
    return ok, failures


def interpret(upload: Upload, status: int | None, body: bytes) -> tuple[int, list[Failure]]:
    """(resources that succeeded, failures) from one request's final answer; ``status``
    None means no answer at all (``body`` then holds the error)."""
    if status is None or not 200 <= status < 300:
        return 0, [_whole_failure(upload, status, body)]
    if upload.bundle_type is None:
        return 1, []
    return _entry_results(upload, _json_or_none(body))


# --- sending -----------------------------------------------------------------------------


def _delay(options: Options, attempt: int, retry_after: str | None) -> float:
    """Exponential backoff with jitter; a numeric Retry-After wins (both capped)."""
    if retry_after and retry_after.strip().isascii() and retry_after.strip().isdigit():
        return min(float(retry_after), MAX_BACKOFF_S)
    return min(options.backoff_s * 2**attempt, MAX_BACKOFF_S) * random.uniform(0.5, 1.0)


class Sender:
    """One keep-alive client for the whole load. Retries 429/503, and connection errors:
    always when the request cannot have reached the server, otherwise only when repeating
    it is harmless (PUT/DELETE only), so a retry never creates a resource twice."""

    def __init__(self, options: Options, transport: httpx.AsyncBaseTransport | None = None):
        self.options = options
        self.base = options.base_url.rstrip("/")
        headers = {
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
            "Prefer": f"return={options.prefer_return}",
        }
        if options.token:
            headers["Authorization"] = f"Bearer {options.token}"
        n = max(1, options.concurrency)
        self.client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s, connect=min(options.timeout_s, 30.0)),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            transport=transport,
            auth=options.auth,
        )
        self.retries = 0

    async def send(self, upload: Upload) -> tuple[int | None, bytes]:
        url = f"{self.base}/{upload.path}" if upload.path else self.base
        for attempt in range(self.options.retries + 1):
            last = attempt == self.options.retries
            try:
                r = await self.client.request(upload.method, url, content=upload.body)
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
                if not (upload.idempotent or isinstance(exc, UNSENT)):
                    return None, f"{error} (not retried: the server may have applied it)".encode()
                if last:
                    return None, error.encode()
                self.retries += 1
                await asyncio.sleep(_delay(self.options, attempt, None))
                continue
            if r.status_code in RETRY_STATUSES and not last:
                self.retries += 1
                await asyncio.sleep(_delay(self.options, attempt, r.headers.get("Retry-After")))
                continue
            return r.status_code, r.content
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.client.aclose()


# --- the load ----------------------------------------------------------------------------

Progress = Callable[[int, int, int], None]
"""Called with (source bytes done, resources succeeded, resources failed) increments."""


def _no_progress(done: int, ok: int, failed: int) -> None:
    return None


class _Run:
    """A producer reading files into a bounded queue and ``concurrency`` senders."""

    def __init__(
        self,
        options: Options,
        sender: Sender,
        progress: Progress,
        summary: Summary,
        journal: Journal | None = None,
    ):
        self.options, self.sender, self.progress, self.summary = options, sender, progress, summary
        self.journal = journal
        self.queue: asyncio.Queue[Upload | None] = asyncio.Queue(maxsize=options.concurrency)

    def _fail(self, failure: Failure) -> None:
        self.summary.failures.append(failure)
        self.summary.failed += failure.resources
        self.progress(0, 0, failure.resources)

    async def produce(self, files: list[Path]) -> None:
        try:
            for path in files:
                stat = path.stat()
                for item in read_file(path, self.options):
                    if isinstance(item, Upload):
                        if self._loaded_before(item, path, stat.st_size, stat.st_mtime_ns):
                            continue
                        await self.queue.put(item)
                    elif isinstance(item, Failure):
                        self._fail(item)
                    else:
                        self.progress(item, 0, 0)
        finally:
            for _ in range(self.options.concurrency):
                await self.queue.put(None)

    def _loaded_before(self, upload: Upload, path: Path, size: int, mtime_ns: int) -> bool:
        """Whether the journal has the upload (then it is counted as resumed)."""
        if self.journal is None:
            return False
        key = self.journal.key(path, size, mtime_ns, upload.position, upload.digest)
        upload.key = key
        resources = self.journal.resources(key)
        if resources is None:
            return False
        self.summary.resumed_uploads += 1
        self.summary.resumed_resources += resources
        self.progress(upload.source_bytes, 0, 0)
        return True

    async def consume(self) -> None:
        while (upload := await self.queue.get()) is not None:
            status, body = await self.sender.send(upload)
            ok, failures = interpret(upload, status, body)
            # 2xx: applied (a batch's failed entries are reported, not re-sent on resume)
            applied = status is not None and 200 <= status < 300
            if self.journal is not None and upload.key is not None and applied:
                self.journal.record(upload.key, len(upload.entries))
            s = self.summary
            s.requests += 1
            s.bundles += upload.bundle_type is not None
            s.sent += len(upload.entries)
            s.succeeded += ok
            for failure in failures:
                s.failures.append(failure)
            s.failed += len(upload.entries) - ok
            self.progress(upload.source_bytes, ok, len(upload.entries) - ok)


async def load(
    paths: Iterable[Path],
    options: Options,
    progress: Progress | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    journal: Journal | None = None,
) -> Summary:
    """Upload every file under ``paths``; raises UsageError for a path it cannot take."""
    files, skipped = discover(paths)
    return await load_files(
        files, options, progress, skipped=skipped, transport=transport, journal=journal
    )


async def load_files(
    files: list[Path],
    options: Options,
    progress: Progress | None = None,
    *,
    skipped: int = 0,
    transport: httpx.AsyncBaseTransport | None = None,
    journal: Journal | None = None,
) -> Summary:
    """``load`` for files already discovered (the CLI sizes its progress bar in between).
    With a ``journal``, uploads it holds are skipped and those answered 2xx are added."""
    summary = Summary(files=len(files), skipped=skipped)
    sender = Sender(options, transport)
    run = _Run(options, sender, progress or _no_progress, summary, journal)
    start = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as tasks:  # one crash cancels the rest
            tasks.create_task(run.produce(files))
            for _ in range(options.concurrency):
                tasks.create_task(run.consume())
    finally:
        summary.elapsed_s = time.perf_counter() - start
        summary.retries = sender.retries
        await sender.aclose()
    order = {str(path): i for i, path in enumerate(files)}
    summary.failures.sort(key=lambda f: (order.get(f.file, -1), _position(f.where)))
    return summary


def _position(where: str) -> int:
    """'entry 12' / 'line 7' / 'lines 1-500' -> 12 / 7 / 1, so failures list in file order."""
    match = re.search(r"\d+", where)
    return int(match.group()) if match else -1


# --- the progress bar -------------------------------------------------------------------


class ProgressBar:
    """A rich bar on stderr, sized in source bytes (known up front from the file sizes,
    unlike the resource count). Off a terminal rich draws it once, at the end."""

    def __init__(self, total_bytes: int) -> None:
        from rich.progress import TextColumn

        self.bar = stderr_progress(
            "loading",
            TextColumn("{task.fields[ok]} ok, {task.fields[failed]} failed, {task.fields[rate]}"),
        )
        self.task = self.bar.add_task("load", total=total_bytes, ok=0, failed=0, rate="")
        self.ok = self.failed = 0
        self.start = time.perf_counter()

    def __call__(self, done: int, ok: int, failed: int) -> None:
        self.ok += ok
        self.failed += failed
        elapsed = time.perf_counter() - self.start
        rate = f"{self.ok / elapsed:.0f} resources/s" if elapsed > 0 else ""
        self.bar.update(self.task, advance=done, ok=self.ok, failed=self.failed, rate=rate)

    def __enter__(self) -> ProgressBar:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def total_bytes(files: list[Path]) -> int:
    return sum(path.stat().st_size for path in files)
