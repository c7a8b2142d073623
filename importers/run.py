"""``fhir-server import run``: legacy rows -> transaction bundles -> any FHIR server.

Resource mappings run one after the other in the mapping's order (a barrier between
them, so every conditional reference names resources already committed). Within one,
a reader thread streams batches of rows, maps and validates them, and ``concurrency``
senders POST them as transaction bundles of ``PUT [type]?identifier=system|key``
entries: a re-run finds the same resources, and the server leaves unchanged content
without a new version. A bundle the server rejects is re-sent entry by entry, so one
bad resource fails alone. After every batch committed in order, the state file records
the last key, and a run that crashed resumes after it.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo

import orjson

from fhir_server import loader
from fhir_server.jsonio import dumps
from importers.build import Mapped, References, RowMapper, r4_problems, request_url
from importers.mapping.expressions import MappingError, RowIssue
from importers.mapping.model import Mapping, ResourceMapping, load_mapping
from importers.retry import Retries
from importers.source import Source
from importers.state import State, state_path

if TYPE_CHECKING:
    from smart_auth.backend_client import BackendAuth

PARALLEL_MAPPINGS = 3  # resource mappings in progress at once (each streams its rows)
SAVE_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class RunOptions:
    source_url: str
    mapping: str
    fhir_url: str | None
    token: str | None = None
    dry_run: bool = False
    since: str | None = None
    incremental: bool = False
    restart: bool = False
    batch_size: int = 200
    concurrency: int = 4
    state_dir: Path = Path(".fhir-import")
    report: Path | None = None
    retries: int = 5
    timeout_s: float = 300.0
    validate_first: bool = False  # validate every resource before sending (dry runs do)
    mapping_overrides: Path | None = None  # code-map entries completing the mapping
    # instead of ``token``: a SMART backend client whose tokens are renewed before they
    # expire, so a run longer than one token's life goes on (``--client-id/--key``)
    auth: BackendAuth | None = None


@dataclass(slots=True)
class TableStats:
    """Counts of one resource mapping (a "table" of the summary)."""

    name: str
    resource_type: str
    read: int = 0
    mapped: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    merged: int = 0
    failed: int = 0
    warnings: int = 0
    retried: int = 0  # rows that had failed in an earlier run, tried again
    retried_failed: int = 0  # ... and failed again
    elapsed_s: float = 0.0

    @property
    def written(self) -> int:
        return self.created + self.updated + self.unchanged


@dataclass(slots=True)
class Summary:
    tables: list[TableStats] = field(default_factory=list)
    elapsed_s: float = 0.0
    dry_run: bool = False
    resumed_from: str | None = None
    failed_earlier: int = 0  # by the interrupted run this one resumed
    report: Path | None = None
    users: str | None = None

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.tables)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.failed_earlier == 0

    def total(self, attr: str) -> int:
        return sum(getattr(t, attr) for t in self.tables)

    def lines(self) -> list[str]:
        cols: tuple[str, ...] = ("read", "created", "updated", "unchanged", "skipped", "merged")
        cols += ("failed", "warnings")
        if self.dry_run:
            cols = ("read", "mapped", "skipped", "merged", "failed", "warnings")
        head = f"{'mapping':<22} {'type':<18} " + " ".join(f"{c:>9}" for c in cols) + "   res/s"
        out = [head]
        for t in self.tables:
            rate = (t.mapped / t.elapsed_s) if t.elapsed_s > 0 else 0.0
            values = " ".join(f"{getattr(t, c):>9}" for c in cols)
            out.append(f"{t.name:<22} {t.resource_type:<18} {values} {rate:>7.0f}")
        totals = " ".join(f"{self.total(c):>9}" for c in cols)
        mapped = self.total("mapped")
        rate = mapped / self.elapsed_s if self.elapsed_s > 0 else 0.0
        out.append(f"{'total':<22} {'':<18} {totals} {rate:>7.0f}")
        rows = self.total("read")
        out.append(
            f"elapsed {self.elapsed_s:.1f} s: {rows / max(self.elapsed_s, 1e-9):.0f} rows/s, "
            f"{rate:.0f} resources/s" + (" (dry run: nothing written)" if self.dry_run else "")
        )
        for t in self.tables:
            if t.retried:
                out.append(
                    f"{t.name}: {t.retried} rows that failed in an earlier run were retried: "
                    f"{t.retried - t.retried_failed} went in or were settled, "
                    f"{t.retried_failed} failed again"
                )
        if self.resumed_from:
            out.append(f"resumed an interrupted run at {self.resumed_from}")
            if self.failed_earlier:
                out.append(f"{self.failed_earlier} rows failed before the interruption")
        if self.users:
            out.append(self.users)
        if self.report:
            out.append(f"report of every problem row: {self.report}")
        return out


class Report:
    """The CSV report: one line per problem (severity, mapping, table, key, column, reason)."""

    HEADER = ("severity", "mapping", "table", "key", "column", "reason")

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file: TextIO = path.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.HEADER)

    def add(self, rm: ResourceMapping, key: str, issue: RowIssue) -> None:
        self.writer.writerow((issue.severity, rm.name, rm.where(), key, issue.column, issue.reason))

    def close(self) -> None:
        self.file.close()


Progress = Callable[[str, int], None]


@dataclass(slots=True)
class Batch:
    seq: int
    last_key: Any
    rows: int
    entries: list[tuple[str, dict[str, Any]]]  # (legacy key, resource)
    max_updated: Any = None
    updated: dict[str, Any] = field(default_factory=dict)  # legacy key -> its update time
    retry_pass: bool = False  # rows fetched by key because they had failed before


def _parse_since(since: str, tz: str) -> datetime:
    """--since as the legacy columns hold it: naive local time of the mapping's zone."""
    moment = datetime.fromisoformat(since)
    if moment.tzinfo is not None:
        moment = moment.astimezone(ZoneInfo(tz)).replace(tzinfo=None)
    return moment


def _outcome_text(outcome: Any) -> str:
    if isinstance(outcome, dict):
        parts = [
            i.get("diagnostics") or i.get("code", "")
            for i in outcome.get("issue", [])
            if isinstance(i, dict)
        ]
        return "; ".join(p for p in parts if p) or "rejected"
    return "rejected"


class Importer:
    def __init__(self, options: RunOptions, progress: Any = None) -> None:
        self.o = options
        self.mapping: Mapping = load_mapping(options.mapping, options.mapping_overrides)
        self.source = Source(options.source_url)
        self.state = State.load(
            state_path(options.state_dir, options.source_url, self.mapping.path)
        )
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        self.report = Report(options.report or options.state_dir / f"import-report-{stamp}.csv")
        self.refs = References(self.mapping, self.source, self.state)
        self.summary = Summary(dry_run=options.dry_run, report=self.report.path)
        self.progress = progress
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="import-reader")
        self.sender: loader.Sender | None = None
        self.slots = asyncio.Semaphore(options.concurrency)  # requests in flight, in all
        self.saved_at = 0.0

    # --- planning ---------------------------------------------------------------------
    def _plan(self) -> tuple[list[ResourceMapping], dict[str, Any]]:
        """Mappings still to run, and the key each resumes after (absent: the start)."""
        names = [r.name for r in self.mapping.resources]
        run = self.state.run
        resumable = (
            run is not None
            and run.get("status") == "running"
            and run.get("mappings") == names
            and not self.o.restart
            and not self.o.dry_run
        )
        if resumable and run is not None:
            done = set(run.get("done", []))
            todo = [r for r in self.mapping.resources if r.name not in done]
            after = {k: v for k, v in run.get("checkpoints", {}).items() if v is not None}
            where = [f"{r.name} after key {after[r.name]}" for r in todo if r.name in after]
            self.summary.resumed_from = ", ".join(where) or (todo[0].name if todo else "the end")
            self.summary.failed_earlier = int(run.get("failed", 0))
            return todo, after
        if not self.o.dry_run:
            self.state.run = {
                "status": "running",
                "mappings": names,
                "done": [],
                "checkpoints": {},
                "since": self.o.since,
                "incremental": self.o.incremental,
                "started": datetime.now().isoformat(timespec="seconds"),
            }
            self._save()
        return list(self.mapping.resources), {}

    def _save(self, throttled: bool = False) -> None:
        """Write the state; checkpoints at most every SAVE_EVERY_S (a resume then re-sends
        a few more batches, which are idempotent updates)."""
        now = time.monotonic()
        if throttled and now - self.saved_at < SAVE_EVERY_S:
            return
        self.saved_at = now
        if self.state.run is not None:
            self.state.run["failed"] = self.summary.failed + self.summary.failed_earlier
        self.state.save()

    def _since(self, rm: ResourceMapping) -> Any:
        run = self.state.run or {}
        since = self.o.since or run.get("since")
        if since:
            return _parse_since(since, self.mapping.timezone)
        if (self.o.incremental or run.get("incremental")) and rm.name in self.state.watermarks:
            return datetime.fromisoformat(self.state.watermarks[rm.name])
        return None

    # --- the run ----------------------------------------------------------------------
    async def run(self) -> Summary:
        start = time.perf_counter()
        if self.o.fhir_url:  # (a dry run with a server validates with its $validate)
            self.sender = loader.Sender(
                loader.Options(
                    base_url=self.o.fhir_url,
                    token=self.o.token,
                    auth=self.o.auth,
                    concurrency=self.o.concurrency,
                    retries=self.o.retries,
                    timeout_s=self.o.timeout_s,
                    prefer_return="OperationOutcome",
                )
            )
        try:
            if self.o.auth is not None:  # the first token before any row is read
                await self.o.auth.client.token()
            todo, after = self._plan()
            await self._run_all(todo, after)
            if not self.o.dry_run:
                assert self.state.run is not None
                self.state.run["status"] = "finished"
                self._save()
        finally:
            self.summary.elapsed_s = time.perf_counter() - start
            self.report.close()
            self.pool.shutdown(wait=True)
            self.source.close()
            if self.sender is not None:
                await self.sender.aclose()
        return self.summary

    async def _run_all(self, todo: list[ResourceMapping], after: dict[str, Any]) -> None:
        """Each resource mapping starts as soon as the mappings it refers to are done
        (their failures decide which references are dropped), a few at a time, so the
        server always has bundles to work on while a mapping starts or drains."""
        finished = {r.name: asyncio.Event() for r in self.mapping.resources}
        for name in finished:
            if name not in {r.name for r in todo}:
                finished[name].set()
        running = asyncio.Semaphore(PARALLEL_MAPPINGS)

        async def one(rm: ResourceMapping) -> None:
            for ref in rm.refs:
                await finished[ref].wait()
            async with running:
                await self._run_mapping(rm, after.get(rm.name))
            finished[rm.name].set()

        try:
            async with asyncio.TaskGroup() as tasks:
                for rm in todo:
                    tasks.create_task(one(rm))
        except ExceptionGroup as group:
            raise group.exceptions[0] from None
        order = {r.name: i for i, r in enumerate(self.mapping.resources)}
        self.summary.tables.sort(key=lambda t: order[t.name])

    async def _in_reader(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _run_mapping(self, rm: ResourceMapping, after: Any) -> None:
        stats = TableStats(rm.name, rm.resource_type)
        self.summary.tables.append(stats)
        started = time.perf_counter()
        since = self._since(rm)
        mapper = RowMapper(self.mapping, rm, self.refs)
        await self._in_reader(self.refs.ensure, rm.refs)
        await self._in_reader(mapper.prepare_dedupe, self.source)
        total = await self._in_reader(self.source.count, rm, after, since)
        if self.progress is not None:
            self.progress.start_table(rm.name, total)
        if self.state.run is not None and not self.o.dry_run:
            self.state.run.setdefault("checkpoints", {})[rm.name] = after
        # a run that reads only some rows fetches earlier failures it did not read by key
        restricted = since is not None or after is not None
        retries = Retries(
            {} if self.o.dry_run else self.state.failed.setdefault(rm.name, {}), restricted
        )
        main = self.source.batches(rm, after, since, self.o.batch_size)
        retry_pass = [False]

        def again() -> Iterator[list[dict[str, Any]]]:
            keys = retries.remaining()  # (the main pass is over: the reader is here)
            if not restricted:
                retries.gone(keys)
                return
            retry_pass[0] = True
            yield from self.source.rows_by_keys(rm, keys, self.o.batch_size)

        def rows() -> Generator[list[dict[str, Any]], None, None]:
            yield from main
            yield from again()

        batches = rows()
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=self.o.concurrency * 2)
        tracker = _Checkpoints(after)
        max_updated: list[Any] = [None]

        def next_batch(seq: int) -> Batch | None:
            rows = next(batches, None)
            if rows is None:
                return None
            batch = Batch(seq, rows[-1][rm.key], len(rows), [], retry_pass=retry_pass[0])
            self._attach_children(rm, rows)
            for row in rows:
                mapped = mapper.map(row, validate=self.o.dry_run or self.o.validate_first)
                self._account(rm, stats, mapped, retries, batch.retry_pass)
                if mapped.resource is not None:
                    batch.entries.append((mapped.key, mapped.resource))
                    batch.updated[mapped.key] = mapped.updated
                # (a zero or unreadable timestamp arrives as text: not a watermark)
                if isinstance(mapped.updated, date) and (
                    batch.max_updated is None or mapped.updated > batch.max_updated
                ):
                    batch.max_updated = mapped.updated
            return batch

        async def produce() -> None:
            seq = 0
            try:
                while (batch := await self._in_reader(next_batch, seq)) is not None:
                    seq += 1
                    if batch.max_updated is not None and (
                        max_updated[0] is None or batch.max_updated > max_updated[0]
                    ):
                        max_updated[0] = batch.max_updated
                    await queue.put(batch)
            finally:
                for _ in range(self.o.concurrency):
                    await queue.put(None)

        async def consume() -> None:
            while (batch := await queue.get()) is not None:
                if self.o.dry_run and self.sender is not None and batch.entries:
                    await self._validate_remotely(rm, stats, batch.entries)
                elif not self.o.dry_run and batch.entries:
                    refused = await self._send(rm, stats, batch.entries)
                    for key, _ in batch.entries:
                        if key in refused:
                            retries.failed(key, batch.updated.get(key), batch.retry_pass)
                        else:
                            retries.done(key, "imported")
                if self.progress is not None:
                    self.progress.advance(rm.name, batch.rows)
                if tracker.done(batch.seq, batch.last_key) and not self.o.dry_run:
                    assert self.state.run is not None
                    self.state.run["checkpoints"][rm.name] = tracker.checkpoint
                    self._save(throttled=True)

        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(produce())
                for _ in range(self.o.concurrency):
                    tasks.create_task(consume())
        except ExceptionGroup as group:  # a mapping error in the reader, say: raise it
            raise group.exceptions[0] from None
        finally:
            await self._in_reader(batches.close)
        stats.elapsed_s = time.perf_counter() - started
        if not self.o.dry_run:
            assert self.state.run is not None
            self.state.run["done"] = [*self.state.run.get("done", []), rm.name]
            self.state.run["checkpoints"].pop(rm.name, None)
            newest = retries.watermark(max_updated[0])
            if rm.updated and newest is not None:
                self.state.watermarks[rm.name] = newest.isoformat()
            for key, how in retries.ended.items():
                stats.retried += 1
                stats.retried_failed += how.startswith("failed")
                self.report.add(
                    rm, key, RowIssue("retried", "", f"failed in an earlier run; {how}")
                )
            self._save()

    def _attach_children(self, rm: ResourceMapping, rows: list[dict[str, Any]]) -> None:
        for child in rm.children.values():
            parents = [row[rm.key] for row in rows]
            groups = self.source.children(child, parents)
            for row in rows:
                row[f"$children:{child.name}"] = groups.get(str(row[rm.key]).strip(), [])

    def _account(
        self,
        rm: ResourceMapping,
        stats: TableStats,
        mapped: Mapped,
        retries: Retries,
        retry_pass: bool,
    ) -> None:
        stats.read += 1
        if not retry_pass:
            retries.read(mapped.key, mapped.merged_into)
        for issue in mapped.issues:
            self.report.add(rm, mapped.key, issue)
            stats.warnings += issue.severity == "warning"
        absent = self.state.absent_keys(rm.name)
        if mapped.outcome == "mapped":
            stats.mapped += 1
            absent.discard(mapped.key)
        elif mapped.outcome == "skipped":
            stats.skipped += 1
            absent.add(mapped.key)
            retries.done(mapped.key, "skipped (its `when` is false)")
        elif mapped.outcome == "merged":
            stats.merged += 1
            retries.done(mapped.key, "merged into its duplicate")
        else:
            stats.failed += 1
            absent.add(mapped.key)
            retries.failed(mapped.key, mapped.updated, retry_pass)

    # --- sending ----------------------------------------------------------------------
    async def _send(
        self, rm: ResourceMapping, stats: TableStats, entries: list[tuple[str, dict[str, Any]]]
    ) -> set[str]:
        """One transaction; if the server rejects it, each entry alone, so that only the
        resources the server refuses fail (and are reported with its diagnostics).
        Returns the keys of the entries that failed."""
        status, content = await self._post(rm, bundle_body(rm, entries), "transaction")
        if status is not None and 200 <= status < 300:
            self._count_responses(stats, entries, content)
            return set()
        if len(entries) > 1:
            # Validation is left to the server on the fast path; when it refuses a
            # bundle, the invalid resources are found here, reported, and the rest sent
            # again; if that is refused too, every entry goes alone.
            invalid = await self._in_reader(self._invalid_entries, rm, stats, entries)
            valid = [e for e in entries if e[0] not in invalid]
            if invalid and valid:
                return invalid | await self._send(rm, stats, valid)
            for entry in valid:
                invalid |= await self._send(rm, stats, [entry])
            return invalid
        key = entries[0][0]
        reason = content.decode("utf-8", "replace")[:500] if status is None else ""
        if status is not None:
            try:
                reason = f"HTTP {status}: {_outcome_text(orjson.loads(content))}"
            except orjson.JSONDecodeError:
                reason = f"HTTP {status}"
        issue = RowIssue("error", "", f"the server refused it: {reason}")
        await self._in_reader(self._refused, rm, stats, key, issue)
        return {key}

    async def _post(
        self, rm: ResourceMapping, body: bytes, bundle_type: str
    ) -> tuple[int | None, bytes]:
        """POST one Bundle to the server within the run's concurrency (retried: every
        Bundle the importer sends is idempotent)."""
        assert self.sender is not None
        upload = loader.Upload(
            file=rm.name, method="POST", path="", body=body, entries=[],
            bundle_type=bundle_type, source_bytes=0, idempotent=True,
        )  # fmt: skip
        async with self.slots:
            return await self.sender.send(upload)

    async def _validate_remotely(
        self, rm: ResourceMapping, stats: TableStats, entries: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """A dry run against a server: each resource through that server's own $validate
        (its profiles, required profiles, bindings and invariants), a batch Bundle of
        them per batch; every error is reported and its row counted failed."""
        body = dumps(
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [
                    {
                        "request": {"method": "POST", "url": f"{rm.resource_type}/$validate"},
                        "resource": resource,
                    }
                    for _key, resource in entries
                ],
            }
        )
        status, content = await self._post(rm, body, "batch")
        if status is None or not 200 <= status < 300:
            what = f"HTTP {status}" if status is not None else content.decode("utf-8", "replace")
            raise MappingError(f"the server could not validate {rm.name}: {what[:300]}")
        answers = orjson.loads(content).get("entry") or []
        for (key, _resource), answer in zip(entries, answers, strict=False):
            response = answer.get("response") or {}
            outcome = response.get("outcome") or answer.get("resource") or {}
            errors = [
                i for i in outcome.get("issue") or [] if i.get("severity") in ("error", "fatal")
            ]
            if not str(response.get("status", "")).startswith("2") and not errors:
                errors = [{"diagnostics": f"HTTP {response.get('status')}"}]
            if errors:
                issues = [
                    RowIssue(
                        "error",
                        ", ".join(i.get("expression") or []),
                        f"$validate: {i.get('diagnostics') or i.get('code')}",
                    )
                    for i in errors
                ]
                await self._in_reader(self._invalid_remotely, rm, stats, key, issues)

    def _invalid_remotely(
        self, rm: ResourceMapping, stats: TableStats, key: str, issues: list[RowIssue]
    ) -> None:
        """(In the reader thread, which owns the report and the counts.)"""
        for issue in issues:
            self.report.add(rm, key, issue)
        stats.mapped -= 1
        stats.failed += 1

    def _refused(self, rm: ResourceMapping, stats: TableStats, key: str, issue: RowIssue) -> None:
        """(In the reader thread, which owns the report and the counts.)"""
        self.report.add(rm, key, issue)
        stats.failed += 1
        self.state.absent_keys(rm.name).add(key)

    def _invalid_entries(
        self, rm: ResourceMapping, stats: TableStats, entries: list[tuple[str, dict[str, Any]]]
    ) -> set[str]:
        invalid = set()
        for key, resource in entries:
            problems = r4_problems(resource)
            if problems:
                invalid.add(key)
                for issue in problems:
                    self.report.add(rm, key, issue)
                stats.failed += 1
                self.state.absent_keys(rm.name).add(key)
        return invalid

    def _count_responses(
        self, stats: TableStats, entries: list[tuple[str, dict[str, Any]]], content: bytes
    ) -> None:
        """201: created. 200: updated when the server wrote a new version (its outcome
        says MSG_UPDATED), unchanged when it kept the version it had because the content
        was the same: decided by the server comparing content, not by clocks."""
        try:
            answers = orjson.loads(content).get("entry") or []
        except (orjson.JSONDecodeError, AttributeError):
            answers = []
        for i in range(len(entries)):
            response = answers[i].get("response", {}) if i < len(answers) else {}
            status = str(response.get("status", ""))
            if status.startswith("201"):
                stats.created += 1
            elif _new_version(response) or not status:
                stats.updated += 1
            else:
                stats.unchanged += 1


def _new_version(response: dict[str, Any]) -> bool:
    issues = (response.get("outcome") or {}).get("issue") or []
    return any(
        c.get("code") in ("MSG_CREATED", "MSG_UPDATED")
        for issue in issues
        for c in (issue.get("details") or {}).get("coding") or []
    )


def bundle_body(rm: ResourceMapping, entries: list[tuple[str, dict[str, Any]]]) -> bytes:
    """A transaction of conditional updates on the legacy identifiers."""
    bundle_entries = [
        {"resource": res, "request": {"method": "PUT", "url": request_url(rm, key)}}
        for key, res in entries
    ]
    return dumps({"resourceType": "Bundle", "type": "transaction", "entry": bundle_entries})


class _Checkpoints:
    """The last key before which every batch is done (batches finish out of order)."""

    def __init__(self, start: Any) -> None:
        self.checkpoint = start
        self.next = 0
        self.finished: dict[int, Any] = {}

    def done(self, seq: int, last_key: Any) -> bool:
        self.finished[seq] = last_key
        moved = False
        while self.next in self.finished:
            self.checkpoint = self.finished.pop(self.next)
            self.next += 1
            moved = True
        return moved


class ProgressBars:
    """A rich progress bar per resource mapping, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bars = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
        )
        self.tasks: dict[str, Any] = {}

    def start_table(self, name: str, total: int) -> None:
        self.tasks[name] = self.bars.add_task(name, total=total)

    def advance(self, name: str, rows: int) -> None:
        self.bars.update(self.tasks[name], advance=rows)

    def __enter__(self) -> ProgressBars:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()


def run_import(options: RunOptions, progress: bool = False) -> Summary:
    importer = Importer(options)
    if not progress:
        return asyncio.run(importer.run())
    with ProgressBars() as bars:
        importer.progress = bars
        return asyncio.run(importer.run())


def iter_report(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)
