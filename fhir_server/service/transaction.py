"""Transaction bundles (http.html#transaction): every entry applied, or none.

The CPU work (validating every resource) happens before the database transaction;
inside it, one MongoDB multi-document transaction resolves conditional entries and
conditional references, rewrites references to the new ids, and writes every version in
bulk. On a write conflict the whole inside part is re-run from a fresh snapshot.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import jsonpatch
import jsonpointer

from fhir_server.jsonio import load_stored, parse_json
from fhir_server.outcome import FhirError, bad_request, not_found, precondition_failed
from fhir_server.resource_types import is_resource_type, is_valid_id
from fhir_server.service.resources import ResourceService, check_version_match, same_content
from fhir_server.storage import StoredVersion, VersionWrite
from fhir_server.storage.store import Session

# http.html#trules: deletes, then creates, then updates/patches, then reads.
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_METHODS = frozenset(_ORDER)


@dataclass(slots=True)
class Entry:
    """One transaction entry, parsed, and what happened to it."""

    index: int
    full_url: str | None
    method: str
    type: str
    id: str | None = None  # target id (URL, assigned, or resolved from criteria)
    query: str | None = None  # conditional criteria of PUT/PATCH/DELETE
    if_none_exist: str | None = None
    if_match: int | None = None
    resource: dict[str, Any] | None = None
    patch: jsonpatch.JsonPatch | None = None
    url: str = ""
    # outcome
    status: str = ""
    stored: StoredVersion | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


@dataclass(slots=True)
class TransactionResult:
    entries: list[Entry]
    reads: list[Entry] = field(default_factory=list)  # GET/HEAD, run after commit


def entry_error(entry: Entry, exc: FhirError) -> FhirError:
    """The failing entry's error, naming the entry (index and fullUrl) in every issue."""
    label = f"{entry.where}" + (f" ({entry.full_url})" if entry.full_url else "")
    issues = []
    for issue in exc.issues:
        expression = tuple(_within(entry, e) for e in issue.expression) or (entry.where,)
        issues.append(
            replace(issue, diagnostics=f"{label}: {issue.diagnostics}", expression=expression)
        )
    return FhirError(exc.status, issues)


def _within(entry: Entry, expression: str) -> str:
    """'Patient.birthDate' of entry 3 → 'Bundle.entry[3].resource.birthDate'."""
    if entry.resource is not None and expression.split(".")[0] == entry.type:
        return f"{entry.where}.resource{expression[len(entry.type) :]}"
    return f"{entry.where}.{expression}" if expression else entry.where


def split_url(url: str, base_url: str) -> tuple[str, str]:
    """Entry request.url → (path, query), relative to the base."""
    base = base_url.rstrip("/") + "/"
    if url.startswith(base):
        url = url[len(base) :]
    path, _, query = url.lstrip("/").partition("?")
    return path, query


def _patch_from_binary(entry: Entry, resource: Any) -> jsonpatch.JsonPatch:
    """In a bundle a JSON Patch travels as a Binary (http.html#transaction)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise FhirError.of(
            415,
            "not-supported",
            "A PATCH entry needs a Binary resource holding an application/json-patch+json "
            "document (FHIRPath Patch is not supported)",
            "resource",
        )
    if resource.get("contentType") != "application/json-patch+json":
        raise FhirError.of(
            415, "not-supported", "The Binary's contentType must be application/json-patch+json"
        )
    try:
        operations = parse_json(base64.b64decode(resource.get("data", ""), validate=True))
    except (binascii.Error, ValueError):
        raise bad_request("The Binary's data is not base64", "resource.data") from None
    if not isinstance(operations, list) or not operations:
        raise bad_request("A JSON Patch document is a non-empty array of operations")
    try:
        return jsonpatch.JsonPatch(operations)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError) as exc:
        raise bad_request(f"Invalid JSON Patch: {exc}") from None


class TransactionService:
    def __init__(self, resources: ResourceService, max_entries: int) -> None:
        self.resources = resources
        self.storage = resources.storage
        self.search = resources.search
        self.max_entries = max_entries

    # --- parsing (no database) ---------------------------------------------------------

    def parse(self, bundle: dict[str, Any], base_url: str) -> list[Entry]:
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise bad_request("Bundle.entry must be an array", "Bundle.entry")
        if len(raw_entries) > self.max_entries:
            raise FhirError.of(
                413,
                "too-costly",
                f"The bundle has {len(raw_entries)} entries; the limit is {self.max_entries}",
                "Bundle.entry",
            )
        entries = []
        for i, raw in enumerate(raw_entries):
            entry = Entry(index=i, full_url=None, method="", type="")
            try:
                entries.append(self._parse_entry(entry, raw, base_url))
            except FhirError as exc:
                raise entry_error(entry, exc) from None
        return entries

    def _parse_entry(self, entry: Entry, raw: Any, base_url: str) -> Entry:
        if not isinstance(raw, dict):
            raise bad_request("An entry must be an object")
        request = raw.get("request")
        if not isinstance(request, dict):
            raise bad_request("A transaction entry needs a request", "request")
        full_url = raw.get("fullUrl")
        entry.full_url = full_url if isinstance(full_url, str) else None
        method, url = request.get("method"), request.get("url")
        if method not in _METHODS:
            raise bad_request(f"Unsupported request.method {method!r}", "request.method")
        if not isinstance(url, str) or not url:
            raise bad_request("request.url is required", "request.url")
        entry.method, entry.url = method, url
        path, query = split_url(url, base_url)
        parts = path.split("/")
        if not is_resource_type(parts[0]):
            raise bad_request(f"Unknown resource type in request.url {url!r}", "request.url")
        entry.type = parts[0]
        if method in ("GET", "HEAD"):
            return entry
        if len(parts) == 2 and not query:
            if not is_valid_id(parts[1]):
                raise bad_request(f"Invalid id in request.url {url!r}", "request.url")
            entry.id = parts[1]
        elif len(parts) == 1 and (query or method == "POST"):
            entry.query = query or None
        else:
            raise bad_request(f"request.url {url!r} does not fit a {method}", "request.url")
        if method == "POST" and entry.id is not None:
            raise bad_request("POST goes to [type], not [type]/[id]", "request.url")
        if method == "POST" and entry.query:
            raise bad_request("POST criteria go in request.ifNoneExist", "request.url")
        entry.if_match = _if_match(request.get("ifMatch"))
        if isinstance(request.get("ifNoneExist"), str):
            entry.if_none_exist = request["ifNoneExist"]
        resource = raw.get("resource")
        if method == "PATCH":
            entry.patch = _patch_from_binary(entry, resource)
        elif method in ("POST", "PUT"):
            if method == "POST" and isinstance(resource, dict):
                resource = {k: v for k, v in resource.items() if k != "id"}
            entry.resource = resource  # set first: error expressions point into it
            checked = self.resources.checked(entry.type, resource, "resource")
            entry.resource = checked
            if method == "PUT" and entry.id is not None and checked.get("id") != entry.id:
                raise bad_request(
                    "The resource id must equal the id in request.url", f"{entry.type}.id"
                )
        return entry

    # --- processing (in the database transaction) ----------------------------------------

    async def process(self, bundle: dict[str, Any], base_url: str) -> TransactionResult:
        entries = self.parse(bundle, base_url)
        writes = [e for e in entries if e.method not in ("GET", "HEAD")]
        types = sorted({e.type for e in writes})
        # New ids are fixed before the transaction so retries reuse them.
        for e in writes:
            if e.method == "POST":
                e.id = str(uuid.uuid4())

        async def txn(s: Session) -> None:
            await self._apply(s, writes, base_url)

        if writes:
            await self.resources._transaction_for(types, txn)
        reads = [e for e in entries if e.method in ("GET", "HEAD")]
        return TransactionResult(entries, reads)

    async def _apply(self, s: Session, entries: list[Entry], base_url: str) -> None:
        if any(e.if_none_exist or e.query for e in entries):
            for t in sorted({e.type for e in entries if e.if_none_exist or e.query}):
                await self.resources.claim_conditional(s, t)
        references: dict[str, str] = {}
        skip: set[int] = set()
        for e in sorted(entries, key=lambda e: _ORDER[e.method]):
            try:
                await self._resolve_target(s, e, references, skip)
            except FhirError as exc:
                raise entry_error(e, exc) from None
        self._check_distinct(entries, skip)
        resources = [e for e in entries if e.resource is not None and e.index not in skip]
        conditional = await self._conditional_references(s, resources)
        references.update(conditional)
        for e in resources:
            e.resource = rewrite_references(e.resource, references)  # type: ignore[arg-type]
        current = await self._current_versions(s, entries, skip)
        versions: list[VersionWrite] = []
        for e in sorted(entries, key=lambda e: _ORDER[e.method]):
            if e.index in skip:
                continue
            try:
                write = self._version(e, current.get((e.type, e.id or "")))
            except FhirError as exc:
                raise entry_error(e, exc) from None
            if write is not None:
                versions.append(write)
        if versions:
            await self.storage.write(versions, s)

    async def _resolve_target(
        self, s: Session, e: Entry, references: dict[str, str], skip: set[int]
    ) -> None:
        """Fix each entry's target id: conditional create/update/patch/delete are
        resolved by search inside the transaction's snapshot."""
        if e.method == "POST" and e.if_none_exist:
            matches = await self.search.match(e.type, e.if_none_exist, "ifNoneExist", 2, s)
            if len(matches) > 1:
                raise precondition_failed("ifNoneExist matches more than one resource")
            if matches:
                e.id, e.stored, e.status = matches[0].id, matches[0], "200 OK"
                skip.add(e.index)
        elif e.query is not None:
            limit = 2
            matches = await self.search.match(e.type, e.query, "request.url", limit, s)
            if len(matches) > 1:
                raise precondition_failed("The conditional criteria match more than one resource")
            if matches:
                body_id = e.resource.get("id") if e.resource else None
                if body_id is not None and body_id != matches[0].id:
                    raise bad_request("The resource id does not match the resource found")
                e.id = matches[0].id
            elif e.method == "PUT":
                e.id = (e.resource or {}).get("id") or str(uuid.uuid4())
            elif e.method == "PATCH":
                raise not_found("The conditional patch criteria match no resource")
            else:  # DELETE with no match: nothing to do (http.html#3.1.0.7.1)
                e.status = "204 No Content"
                skip.add(e.index)
        if e.full_url and e.id:
            references[e.full_url] = f"{e.type}/{e.id}"

    def _check_distinct(self, entries: list[Entry], skip: set[int]) -> None:
        """http.html#trules: two entries may not act on the same resource."""
        seen: dict[tuple[str, str], Entry] = {}
        for e in entries:
            if e.id is None or e.index in skip:
                continue
            key = (e.type, e.id)
            if key in seen:
                raise entry_error(
                    e,
                    bad_request(
                        f"{e.type}/{e.id} is also the target of {seen[key].where}; a "
                        "transaction may change a resource only once"
                    ),
                )
            seen[key] = e

    async def _conditional_references(self, s: Session, entries: list[Entry]) -> dict[str, str]:
        """ "Patient?identifier=…" references (http.html#trules) must match exactly one."""
        found: dict[str, str] = {}
        for e in entries:
            for ref in _references(e.resource):
                type_, sep, query = ref.partition("?")
                if not sep or ref in found or not is_resource_type(type_):
                    continue
                try:
                    matches = await self.search.match(type_, query, "reference", 2, s)
                except FhirError as exc:
                    raise entry_error(e, exc) from None
                if len(matches) != 1:
                    count = "no" if not matches else "more than one"
                    raise entry_error(
                        e,
                        precondition_failed(
                            f"The conditional reference {ref!r} matches {count} resource"
                        ),
                    )
                found[ref] = f"{type_}/{matches[0].id}"
        return found

    async def _current_versions(
        self, s: Session, entries: list[Entry], skip: set[int]
    ) -> dict[tuple[str, str], StoredVersion]:
        wanted: dict[str, list[str]] = {}
        for e in entries:
            if e.method != "POST" and e.id is not None and e.index not in skip:
                wanted.setdefault(e.type, []).append(e.id)
        found: dict[tuple[str, str], StoredVersion] = {}
        for t, ids in wanted.items():
            for v in await self.storage.read_many(t, ids, s):
                found[(t, v.id)] = v
        return found

    def _version(self, e: Entry, current: StoredVersion | None) -> VersionWrite | None:
        svc = self.resources
        assert e.id is not None
        if e.method == "POST":
            write = svc.new_version(e.type, e.id, e.resource, None, "POST")
            e.status = "201 Created"
            e.stored = write.stored()
            return write
        if e.method == "DELETE":
            check_version_match(current, e.if_match)
            if current is None or current.deleted:
                e.status, e.stored = "204 No Content", None
                return None
            write = svc.new_version(e.type, e.id, None, current, "DELETE")
            e.status, e.stored = "204 No Content", write.stored()
            return write
        if e.method == "PATCH":
            if current is None or current.raw is None:
                raise not_found(f"{e.type}/{e.id} is not known")
            check_version_match(current, e.if_match)
            assert e.patch is not None
            try:
                patched = e.patch.apply(load_stored(current.raw))
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise FhirError.of(422, "processing", f"JSON Patch failed: {exc}") from None
            e.resource = svc.checked(e.type, patched, "patched resource")
            if e.resource.get("id") != e.id:
                raise bad_request("A patch may not change the resource id")
        else:
            check_version_match(current, e.if_match)
            if current is None and not svc.settings.allow_update_create:
                raise FhirError.of(405, "not-supported", "update-as-create is disabled")
        assert e.resource is not None
        stored_raw = current.raw if current is not None else None
        if stored_raw is not None and same_content(stored_raw, e.resource):
            e.status, e.stored = "200 OK", current
            return None
        write = svc.new_version(e.type, e.id, e.resource, current, e.method)
        created = current is None or current.deleted
        e.status = "201 Created" if created else "200 OK"
        e.stored = write.stored()
        return write


def _if_match(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise bad_request(
            f'ifMatch must be a version ETag such as W/"3", got {value!r}', "request.ifMatch"
        )
    return int(text)


def _references(value: Any) -> Iterable[str]:
    """Every Reference.reference string at any depth (extensions, contained, ...)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _references(v)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def rewrite_references(value: Any, mapping: dict[str, str]) -> Any:
    """A copy with every Reference.reference found in ``mapping`` replaced; urn:uuid:,
    urn:oid: and absolute fullUrls all become ``Type/id`` (http.html#trules)."""
    if not mapping:
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "reference" and isinstance(v, str) and v in mapping:
                out[k] = mapping[v]
            else:
                out[k] = rewrite_references(v, mapping)
        return out
    if isinstance(value, list):
        return [rewrite_references(v, mapping) for v in value]
    return value
