"""``fhir-server import profile``: what a legacy database holds in the columns a mapping
checks, before anything is imported.

A migration engineer wants every distinct value of every coded column, and every date,
reference and identifier the mapping would refuse or drop, before the first row is
written, not one failed row at a time afterwards. The columns come from the mapping
itself (``Read``: a column passed straight to ``code``, ``ref``, ``date``,
``datetime``, ``cedula`` or ``ruc``); the database counts each column's distinct values
(``GROUP BY``, streamed), and each distinct value is judged once by the importer's own
functions, so the profile and a run never disagree. Read-only.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from importers import cedula as ced
from importers.mapping.codemaps import CodeMap, fold, vocabularies
from importers.mapping.expressions import Expression, Functions, Read, compile_expression
from importers.mapping.model import FUNCTIONS, Mapping, ResourceMapping
from importers.mapping.template import Each, When
from importers.source import Source, key_text

_KEEP = 1000  # values listed per problem (the counts cover all of them)


@dataclass(slots=True)
class Finding:
    """Values of one column that one check does not accept, with their row counts."""

    check: str
    what: str  # "not in code map X", "orphan key (no patients row)", ...
    values: Counter[str] = field(default_factory=Counter)
    rows: int = 0

    def add(self, value: str, count: int) -> None:
        self.rows += count
        if value in self.values or len(self.values) < _KEEP:
            self.values[value] += count


@dataclass(slots=True)
class ColumnProfile:
    """One column of one source table or query, and what the mapping checks in it."""

    mapping: str  # the resource mappings reading it (``patients``, ``appointments.items``)
    source: str  # the table, or ``query of <mapping>``
    column: str
    checks: list[str] = field(default_factory=list)
    rows: int = 0
    null: int = 0
    empty: int = 0
    distinct: int = 0
    top: list[tuple[str, int]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "mapping": self.mapping,
            "source": self.source,
            "column": self.column,
            "checks": self.checks,
            "rows": self.rows,
            "null": self.null,
            "empty": self.empty,
            "distinct": self.distinct,
            "top": [{"value": v, "rows": n} for v, n in self.top],
            "problems": [
                {
                    "check": f.check,
                    "what": f.what,
                    "rows": f.rows,
                    "distinct": len(f.values),
                    "values": [{"value": v, "rows": n} for v, n in f.values.most_common()],
                }
                for f in self.findings
                if f.rows
            ],
        }


@dataclass(slots=True)
class Profile:
    mapping: str
    columns: list[ColumnProfile] = field(default_factory=list)
    # code map -> folded key -> (first spelling seen, rows)
    missing: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """Nothing the mapping refuses or drops."""
        return not any(f.rows for c in self.columns for f in c.findings)

    def as_json(self) -> dict[str, Any]:
        return {
            "mapping": self.mapping,
            "clean": self.clean,
            "columns": [c.as_json() for c in self.columns],
            "missing_codes": {
                name: {spelling: rows for spelling, rows in entries.values()}
                for name, entries in self.missing.items()
                if entries
            },
        }


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a column's rows come from: a table, or a mapping's query. A table several
    resource mappings read (vital signs: one per measurement) is profiled once."""

    table: str | None
    query: str | None
    owner: str  # the first mapping reading it, to name a query by

    def describe(self) -> str:
        return self.table or f"query of {self.owner}"


def _by_origin(node: Any, here: str | None = None) -> Iterator[tuple[str | None, Expression]]:
    """Every expression of a template with the child (``$each``) whose rows it reads."""
    if isinstance(node, Expression):
        yield here, node
    elif isinstance(node, Each):
        yield from _by_origin(node.template, node.child)
    elif isinstance(node, When):
        yield here, node.condition
        yield from _by_origin(node.template, here)
    elif isinstance(node, list):
        for item in node:
            yield from _by_origin(item, here)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _by_origin(value, here)


def plan(mapping: Mapping) -> tuple[dict[tuple[_Origin, str], set[Read]], dict[_Origin, list[str]]]:
    """What to profile: each (origin, column) with the checks the mapping applies to it
    (the row key of each resource mapping is always profiled, for duplicates), and the
    mappings that read each origin."""
    todo: dict[tuple[_Origin, str], set[Read]] = defaultdict(set)
    readers: dict[_Origin, list[str]] = defaultdict(list)
    origins: dict[tuple[str | None, str | None], _Origin] = {}

    def origin_of(table: str | None, query: str | None, reader: str) -> _Origin:
        origin = origins.setdefault((table, query), _Origin(table, query, reader))
        if reader not in readers[origin]:
            readers[origin].append(reader)
        return origin

    for rm in mapping.resources:
        own = origin_of(rm.table, rm.query, rm.name)
        todo[(own, rm.key)].add(Read("key", rm.key))
        extra = [e for e in (rm.when, rm.dedupe) if e is not None]
        for child_name, expression in [*_by_origin(rm.template), *((None, e) for e in extra)]:
            origin = own
            if child_name is not None:
                child = rm.children[child_name]
                origin = origin_of(child.table, child.query, f"{rm.name}.{child_name}")
            for read in expression.reads:
                todo[(origin, read.column)].add(read)
    users = mapping.users
    if users:
        origin = origin_of(None, users["query"], "users")
        for name in ("role", "fhir_user", "email"):
            if name in users:
                expression = compile_expression(users[name], FUNCTIONS, f"users.{name}")
                for read in expression.reads:
                    todo[(origin, read.column)].add(read)
    return todo, readers


class Profiler:
    """Profiles one mapping's source database."""

    def __init__(self, mapping: Mapping, source: Source, top: int = 10) -> None:
        self.mapping = mapping
        self.source = source
        self.top = top
        self.fn = Functions(mapping.timezone, mapping.codes)
        self._keys: dict[str, set[str]] = {}

    def run(self) -> Profile:
        profile = Profile(self.mapping.name)
        todo, readers = plan(self.mapping)
        for origin, column in todo:  # in mapping order (dicts keep insertion order)
            reads = sorted(todo[(origin, column)], key=lambda r: (r.check, r.arg or ""))
            out = ColumnProfile(", ".join(readers[origin]), origin.describe(), column)
            profile.columns.append(self._column(origin, out, reads, profile))
        return profile

    def _distinct(self, origin: _Origin, column: str) -> Iterator[tuple[Any, int]]:
        """(value, rows) for each distinct value of the column, streamed."""
        q = self.source.q
        from_ = f"{q(origin.table)} src" if origin.table else f"({origin.query}) src"
        col = f"src.{q(column)}"
        if self.source.engine.dialect.name in ("mysql", "mariadb"):
            # MySQL groups text by its collation (case, accents and trailing spaces
            # ignored); every spelling is wanted, so group by the bytes
            sql = (
                f"SELECT MIN({col}) AS v, COUNT(*) AS n FROM {from_} GROUP BY CAST({col} AS BINARY)"
            )
        else:
            sql = f"SELECT {col} AS v, COUNT(*) AS n FROM {from_} GROUP BY {col}"
        with self.source.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=5000).execute(text(sql))
            for value, n in result:
                yield value, int(n)

    def _column(
        self, origin: _Origin, out: ColumnProfile, reads: list[Read], profile: Profile
    ) -> ColumnProfile:
        column = out.column
        judges = [self._judge(read, out, profile) for read in reads]
        out.checks = [f"{r.check} {r.arg}" if r.arg else r.check for r in reads]
        top: list[tuple[int, str]] = []
        for value, n in self._distinct(origin, column):
            out.rows += n
            out.distinct += 1
            shown = _shown(value)
            if len(top) < self.top:
                heapq.heappush(top, (n, shown))
            else:
                heapq.heappushpop(top, (n, shown))
            if value is None:
                out.null += n
                continue
            if isinstance(value, str) and not value.strip():
                out.empty += n
                continue
            for judge in judges:
                judge(value, shown, n)
        for judge in judges:
            finish = getattr(judge, "finish", None)
            if finish is not None:
                finish()
        out.top = [(v, n) for n, v in sorted(top, key=lambda t: (-t[0], t[1]))]
        return out

    # --- the checks: each returns a function of (value, shown, rows) --------------------

    def _judge(self, read: Read, out: ColumnProfile, profile: Profile) -> Any:
        if read.check == "code":
            return self._code_judge(read, out, profile)
        if read.check == "ref":
            return self._ref_judge(read, out)
        if read.check in ("date", "datetime", "time"):
            return self._parse_judge(read, out)
        if read.check == "cedula":
            return _IdentifierJudge(out)
        return _KeyJudge(out)

    def _code_judge(self, read: Read, out: ColumnProfile, profile: Profile) -> Any:
        assert read.arg is not None
        codes: CodeMap = self.fn.codes[read.arg]
        what = f"not in code map {read.arg}" + (
            f" (imported as its $default {codes.default!r})" if codes.default is not None else ""
        )
        finding = Finding("code", what)
        out.findings.append(finding)
        missing = profile.missing.setdefault(read.arg, {})

        def judge(value: Any, shown: str, n: int) -> None:
            if codes.get(value) is not None:
                return
            finding.add(shown, n)
            key = fold(value)
            first, rows = missing.get(key, (shown.strip(), 0))
            missing[key] = (first, rows + n)

        return judge

    def _ref_judge(self, read: Read, out: ColumnProfile) -> Any:
        assert read.arg is not None
        target = self.mapping.by_name[read.arg]
        keys = self._target_keys(target)
        finding = Finding("ref", f"orphan key: no {read.arg} row ({target.where()}) has it")
        out.findings.append(finding)

        def judge(value: Any, shown: str, n: int) -> None:
            if key_text(value) not in keys:
                finding.add(shown, n)

        return judge

    def _target_keys(self, rm: ResourceMapping) -> set[str]:
        if rm.name not in self._keys:
            self._keys[rm.name] = self.source.keys(rm)
        return self._keys[rm.name]

    def _parse_judge(self, read: Read, out: ColumnProfile) -> Any:
        fn = self.fn
        parse = fn._as_time if read.check == "time" else fn._as_date
        finding = Finding(read.check, f"unreadable {read.check} (imported as no value)")
        out.findings.append(finding)

        def judge(value: Any, shown: str, n: int) -> None:
            if read.check == "datetime" and hasattr(value, "tzinfo"):
                return  # a native timestamp column
            fn.issues.clear()
            if parse(value, read.column) is None or fn.issues:
                finding.add(shown, n)
            fn.issues.clear()

        return judge


class _IdentifierJudge:
    """cédula / RUC: check digits, and the same number (however typed) on two rows."""

    def __init__(self, out: ColumnProfile) -> None:
        self.invalid = Finding("cedula", "not a valid cédula or RUC (kept as typed)")
        self.duplicates = Finding("cedula", "the same cédula/RUC on more than one row")
        out.findings += [self.invalid, self.duplicates]
        self.seen: dict[str, tuple[str, int]] = {}

    def __call__(self, value: Any, shown: str, n: int) -> None:
        digits = ced.normalize(str(value))
        if ced.id_problem(digits):
            self.invalid.add(shown, n)
        first, rows = self.seen.get(digits, (shown, 0))
        self.seen[digits] = (first, rows + n)

    def finish(self) -> None:
        for first, rows in self.seen.values():
            if rows > 1:
                self.duplicates.add(first, rows)
        self.seen.clear()


class _KeyJudge:
    """The row key of a resource mapping: two rows with one key would be one resource."""

    def __init__(self, out: ColumnProfile) -> None:
        self.duplicates = Finding("key", "the same row key on more than one row")
        out.findings.append(self.duplicates)

    def __call__(self, value: Any, shown: str, n: int) -> None:
        if n > 1:
            self.duplicates.add(shown, n)


def _shown(value: Any) -> str:
    if value is None:
        return "NULL"
    return value if isinstance(value, str) else str(value)


def profile_source(mapping: Mapping, source_url: str, top: int = 10) -> Profile:
    source = Source(source_url)
    try:
        return Profiler(mapping, source, top).run()
    finally:
        source.close()


# --- output ----------------------------------------------------------------------------


def report_lines(profile: Profile) -> list[str]:
    """The terminal report: one block per column (row keys only when duplicated), its
    problems marked ``!``, and the most frequent values of coded columns."""
    lines = [f"profile of mapping {profile.mapping}"]
    for c in profile.columns:
        problems = [f for f in c.findings if f.rows]
        if c.checks == ["key"] and not problems:
            continue
        lines += ["", f"{c.source}.{c.column}  [{', '.join(c.checks)}]  read by {c.mapping}"]
        lines.append(f"  {c.rows} rows, {c.distinct} distinct, {c.null} null, {c.empty} empty")
        for f in problems:
            listed = ", ".join(f"{v!r} ({n})" for v, n in f.values.most_common(10))
            more = len(f.values) - 10
            tail = f" and {more} more" if more > 0 else ""
            lines.append(f"  ! {f.rows} rows {f.what}: {listed}{tail}")
        if any(check.startswith("code") for check in c.checks):
            lines.append("  values: " + ", ".join(f"{v!r} ({n})" for v, n in c.top))
    unhandled = sum(len(v) for v in profile.missing.values())
    lines.append("")
    if profile.clean:
        lines.append("nothing the mapping refuses or drops")
    else:
        marked = sum(1 for c in profile.columns for f in c.findings if f.rows)
        lines.append(
            f"{marked} problems (marked !); {unhandled} distinct code values no code map handles"
        )
    return lines


def skeleton(profile: Profile) -> dict[str, dict[str, None]]:
    """The code-map entries to write: every unhandled value once (its first spelling)."""
    return {
        name: {spelling: None for spelling, _rows in entries.values()}
        for name, entries in profile.missing.items()
        if entries
    }


def write_skeleton(profile: Profile, mapping: Mapping, path: Path) -> int:
    """Write the missing code-map entries (JSON for ``.json``, else YAML with each value's
    row count and the codes to choose from); returns how many entries."""
    entries = skeleton(profile)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps({"codes": entries}, ensure_ascii=False, indent=2) + "\n")
        return sum(len(v) for v in entries.values())
    lines = [
        f"# Code-map entries mapping {mapping.name} lacks (fhir-server import profile).",
        "# Write the FHIR code for each value, then pass this file to `import run` and",
        "# `import profile` with --mapping-overrides (or copy the entries into the mapping).",
        "codes:" if entries else "codes: {}",
    ]
    for name, found in profile.missing.items():
        if not found:
            continue
        lines.append(f"  {json.dumps(name, ensure_ascii=False)}:")
        choices = _choices(mapping, name)
        if choices:
            lines.append(f"    # one of: {', '.join(choices)}")
        for spelling, rows in found.values():
            lines.append(f"    {json.dumps(spelling, ensure_ascii=False)}:   # {rows} rows")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return sum(len(v) for v in entries.values())


def _choices(mapping: Mapping, name: str) -> list[str]:
    """The FHIR codes a map already gives (its vocabulary's and its own)."""
    table = mapping.codes.get(name, {})
    values: dict[str, None] = {}
    vocabulary = table.get("$synonyms")
    if vocabulary in vocabularies():
        values.update(dict.fromkeys(vocabularies()[vocabulary].values()))
    values.update(
        dict.fromkeys(str(v) for k, v in table.items() if k not in ("$synonyms", "$default"))
    )
    return list(values)
