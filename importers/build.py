"""Rows to resources: one resource mapping applied to source rows, with the legacy
identifiers, dedupe merging, reference checks and R4 validation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from fhir_server.validation import validate_resource
from importers.mapping.expressions import Functions, MappingError, Reject, RowIssue
from importers.mapping.model import Mapping, ResourceMapping
from importers.mapping.template import render
from importers.source import Source, key_text
from importers.state import State


def identifier_query(system: str, key: str) -> str:
    """``identifier=system|value``, escaped for a URL (``|`` and ``:`` stay readable)."""
    return f"identifier={quote(system, safe=':/')}|{quote(key, safe='')}"


class References:
    """Which legacy keys of each resource mapping hold a resource: the keys present in
    the source, minus those that produced no resource (``State.absent``). Loaded when a
    mapping that refers to them starts, which is after they were imported."""

    def __init__(self, mapping: Mapping, source: Source, state: State) -> None:
        self.mapping, self.source, self.state = mapping, source, state
        self.valid: dict[str, set[str]] = {}

    def ensure(self, names: frozenset[str]) -> None:
        for name in names:
            if name not in self.valid:
                keys = self.source.keys(self.mapping.by_name[name])
                self.valid[name] = keys - self.state.absent_keys(name)

    def resolve(self, name: str, key: Any) -> str | None:
        k = key_text(key)
        if k not in self.valid.get(name, ()):
            return None
        return request_url(self.mapping.by_name[name], k)


@dataclass(slots=True)
class Mapped:
    """What one source row became."""

    key: str
    outcome: str  # mapped | skipped | merged | rejected
    resource: dict[str, Any] | None = None
    issues: list[RowIssue] = field(default_factory=list)
    updated: Any = None
    merged_into: str | None = None  # (merged) the key of the row it was merged into


class RowMapper:
    def __init__(self, mapping: Mapping, rm: ResourceMapping, refs: References) -> None:
        self.rm = rm
        self.fn = Functions(mapping.timezone, mapping.codes, refs.resolve)
        self.env = self.fn.env()
        self.merged: dict[str, str] = {}
        self.extra: dict[str, list[str]] = {}
        self.duplicates: dict[str, list[dict[str, Any]]] = {}  # kept key -> merged rows
        self.checked_columns = False

    def prepare_dedupe(self, source: Source) -> None:
        """Group rows by the dedupe expression: the lowest key of a group is imported and
        carries every key of the group as an identifier."""
        if self.rm.dedupe is None:
            return
        first: dict[Any, str] = {}
        for row in source.all_rows(self.rm):
            self.fn.row, self.fn.issues = row, []
            try:
                value = eval(self.rm.dedupe.code, self.env, row)
            except Reject:
                continue
            if value is None or value == "":
                continue
            key = key_text(row[self.rm.key])
            if value in first:
                self.merged[key] = first[value]
                self.extra.setdefault(first[value], []).append(key)
                self.duplicates.setdefault(first[value], []).append(row)
            else:
                first[value] = key

    def _check_columns(self, row: dict[str, Any]) -> None:
        missing = sorted(n for n in self.rm.names if n not in row and n != "_key")
        if missing:
            raise MappingError(
                f"resource mapping {self.rm.name!r}: no column {', '.join(missing)} "
                f"in {self.rm.where()} (columns: {', '.join(sorted(row))})"
            )
        self.checked_columns = True

    def map(self, row: dict[str, Any], validate: bool = True) -> Mapped:
        rm, fn = self.rm, self.fn
        if not self.checked_columns:
            self._check_columns(row)
        key = key_text(row[rm.key])
        row["_key"] = key
        fn.row, fn.issues = row, []
        out = Mapped(key, "mapped", updated=row.get(rm.updated) if rm.updated else None)
        try:
            if key in self.merged:
                out.outcome, out.merged_into = "merged", self.merged[key]
                same = rm.dedupe.source if rm.dedupe else ""
                fn.warn(
                    rm.key,
                    f"duplicate of {rm.name} {self.merged[key]} (same {same}); "
                    "merged into it: its key, identifiers, telecom and addresses kept there",
                )
            elif rm.when is not None and not eval(rm.when.code, self.env, row):
                out.outcome = "skipped"
            else:
                body = render(rm.template, row, self.env) or {}
                if key in self.duplicates:
                    body = self._with_duplicates(key, body, row)
                out.resource = self._resource(key, body)
        except Reject as exc:
            fn.issues.append(RowIssue("error", exc.column, exc.reason))
            out.outcome = "rejected"
        except MappingError:
            raise
        except NameError as exc:
            raise MappingError(f"resource mapping {rm.name!r}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            fn.issues.append(RowIssue("error", "", f"{type(exc).__name__}: {exc}"))
            out.outcome = "rejected"
        if out.resource is not None and validate:
            problems = r4_problems(out.resource)
            if problems:
                fn.issues.extend(problems)
                out.outcome, out.resource = "rejected", None
        out.issues = list(dict.fromkeys(fn.issues))  # the same warning once per row
        return out

    def _with_duplicates(
        self, key: str, body: dict[str, Any], row: dict[str, Any]
    ) -> dict[str, Any]:
        """The kept row's resource with what its merged duplicates hold: every
        identifier, telecom and address of each (once), any element only a duplicate
        has, and a warning for each element where they disagree (the kept row's wins)."""
        fn = self.fn
        for dup in self.duplicates[key]:
            dup_key = key_text(dup[self.rm.key])
            dup = {**dup, "_key": dup_key}
            for child in self.rm.children:  # (a duplicate's child rows are not read)
                dup.setdefault(f"$children:{child}", [])
            # (warnings about the duplicate's own values are reported on its own row)
            issues, fn.row, fn.issues = fn.issues, dup, []
            try:
                other = render(self.rm.template, dup, self.env) or {}
            except Reject:
                continue
            finally:
                fn.row, fn.issues = row, issues
            for name, value in other.items():
                mine = body.get(name)
                if name in _ALL_OF_EACH and isinstance(value, list):
                    body[name] = [*(mine or []), *(v for v in value if v not in (mine or []))]
                elif mine is None:
                    body[name] = value
                elif mine != value:
                    fn.warn(
                        self.rm.key,
                        f"merged duplicate {self.rm.name} {dup_key} has {name} "
                        f"{_brief(value)}; kept {_brief(mine)} of {key}",
                    )
        return body

    def _resource(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        resource: dict[str, Any] = {"resourceType": self.rm.resource_type}
        if self.rm.identity == "id":
            # Types without an identifier (Provenance): a stable id from the legacy key,
            # and the key as a tag, so that it stays searchable (_tag=system|key).
            resource["id"] = legacy_id(self.rm.system, key)
            meta = body.pop("meta", None) or {}
            tags = [{"system": self.rm.system, "code": key}, *meta.get("tag", [])]
            resource["meta"] = {**meta, "tag": tags}
        else:
            keys = [key, *self.extra.get(key, [])]
            legacy = [{"system": self.rm.system, "value": k} for k in keys]
            resource["identifier"] = legacy + list(body.pop("identifier", None) or [])
        resource.update(body)
        return resource


# Elements a merged duplicate adds to rather than competes with: every way to reach the
# person and every identifier of each legacy row is kept.
_ALL_OF_EACH = frozenset({"identifier", "telecom", "address"})


def _brief(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def r4_problems(resource: dict[str, Any]) -> list[RowIssue]:
    """The server's own R4 validation, as report lines (column: the FHIRPath)."""
    return [
        RowIssue("error", ", ".join(i.expression), f"not valid R4: {i.diagnostics}")
        for i in validate_resource(resource, resource["resourceType"])
        if i.severity in ("error", "fatal")
    ]


def legacy_id(system: str, key: str) -> str:
    """The id a resource mapped with ``identity: id`` gets: the same on every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{system}|{key}"))


def request_url(rm: ResourceMapping, key: str) -> str:
    """The conditional update (or, for ``identity: id``, the update) that writes it."""
    if rm.identity == "id":
        return f"{rm.resource_type}/{legacy_id(rm.system, key)}"
    return f"{rm.resource_type}?{identifier_query(rm.system, key)}"
