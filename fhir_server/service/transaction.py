"""Transaction bundles (http.html#transaction): every entry applied, or none.

The CPU work (validating every resource, checking search entries) happens before the
database transaction; inside it, one MongoDB multi-document transaction resolves
conditional entries in the order of http.html#trules (DELETE, POST, PUT/PATCH), rewrites
links to the entries' fullUrls (references, uri elements, narrative links) to the new
ids, writes every version in bulk, then resolves conditional references against what it
wrote (step 5) and checks that the GET entries' resources exist (step 4; the GETs are
answered after the commit). On a write conflict the whole inside part is re-run from
the parsed bundle and a fresh snapshot.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import jsonpatch
import jsonpointer

from fhir_server.digits import whole_number
from fhir_server.jsonio import parse_json
from fhir_server.offload import checkpoint
from fhir_server.outcome import FhirError, bad_request, not_found, precondition_failed
from fhir_server.resource_types import is_resource_type, is_valid_id
from fhir_server.service.links import conditional_references, rewrite_links, rewrite_references
from fhir_server.service.resources import (
    ResourceService,
    check_version_match,
    conditional_locks,
    gone,
    same_content,
)
from fhir_server.storage import StoredVersion, VersionWrite
from fhir_server.storage.store import Session
from fhir_server.validation import BindingContext, Seen
from fhir_server.validation.bundle_rules import bundle_issues
from fhir_server.validation.questionnaire import QR

if TYPE_CHECKING:
    from fhir_server.authz.policy import Policy

# http.html#trules: deletes, then creates, then updates/patches, then reads.
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_METHODS = frozenset(_ORDER)
# The SMART interaction each entry needs (GET of a resource: r, GET of a type: s).
_INTERACTION = {"DELETE": "d", "POST": "c", "PUT": "u", "PATCH": "u"}


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
    read_id: str | None = None  # GET/HEAD of one resource (read or vread) ...
    read_version: int | None = None  # ... and of which version
    # as parsed: what every attempt of the database transaction starts from
    parsed_id: str | None = None
    parsed_resource: dict[str, Any] | None = None
    # outcome
    status: str = ""
    stored: StoredVersion | None = None
    write: VersionWrite | None = None
    same_as: Entry | None = None  # a conditional create resolved to another entry's
    unresolved: dict[str, Any] | None = None  # resource before conditional references
    extended: bool = True  # the resource may have extensions (False: validation saw none)
    assigned_id: bool = False  # a conditional PUT without a match got a new server id

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"

    def reset(self) -> None:
        """Back to the parsed state: a retried transaction redoes every decision."""
        self.id, self.resource = self.parsed_id, self.parsed_resource
        self.status, self.stored, self.write = "", None, None
        self.same_as = self.unresolved = None
        self.assigned_id = False


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


async def _enforce_profiles(resources: ResourceService, entries: list[Entry]) -> None:
    """The entries' ``meta.profile``s (ResourceService.enforce_profiles): a violation
    fails the whole transaction, naming the entry."""
    await resources.enforce_profiles(
        [e.resource for e in entries],
        lambda i, exc: entry_error(entries[i], exc),
        [e.extended for e in entries],
    )


def _within(entry: Entry, expression: str) -> str:
    """'Patient.birthDate' of entry 3 → 'Bundle.entry[3].resource.birthDate'."""
    if entry.resource is not None and expression.split(".")[0] == entry.type:
        return f"{entry.where}.resource{expression[len(entry.type) :]}"
    return f"{entry.where}.{expression}" if expression else entry.where


def bundle_entries(bundle: dict[str, Any], max_entries: int) -> list[Any]:
    """Bundle.entry of a transaction or batch, within the configured size (413 beyond)."""
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise bad_request("Bundle.entry must be an array", "Bundle.entry")
    if len(raw_entries) > max_entries:
        raise FhirError.of(
            413,
            "too-costly",
            f"The bundle has {len(raw_entries)} entries; the limit is {max_entries}",
            "Bundle.entry",
        )
    return raw_entries


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
    def __init__(
        self,
        resources: ResourceService,
        max_entries: int,
        lenient: bool = False,
        policy: Policy | None = None,
    ) -> None:
        self.resources = resources
        self.policy = policy
        self.storage = resources.storage
        self.search = resources.search
        self.max_entries = max_entries
        self.lenient = lenient  # Prefer: handling=lenient (search parameters)

    # --- parsing (no database) ---------------------------------------------------------

    def parse(self, bundle: dict[str, Any], base_url: str) -> list[Entry]:
        raw_entries = bundle_entries(bundle, self.max_entries)
        entries = []
        full_urls: dict[str, Entry] = {}
        for i, raw in enumerate(raw_entries):
            checkpoint()
            entry = Entry(index=i, full_url=None, method="", type="")
            try:
                entries.append(self._parse_entry(entry, raw, base_url))
                # bdl-7: "FullUrl must be unique in a bundle"; references to it would be
                # ambiguous
                if entry.full_url is not None and entry.full_url in full_urls:
                    raise bad_request(
                        f"fullUrl {entry.full_url!r} is also the fullUrl of "
                        f"{full_urls[entry.full_url].where}",
                        "fullUrl",
                    )
            except FhirError as exc:
                raise entry_error(entry, exc) from None
            if entry.full_url is not None:
                full_urls[entry.full_url] = entry
            entry.parsed_id, entry.parsed_resource = entry.id, entry.resource
        # The rest of the Bundle invariants (bdl-1, -2, -4, -8, fullUrl absolute and
        # agreeing with the id, one self link) as $validate and POST [base]/Bundle check
        # them; after the entries' own parse, whose messages for bdl-3 and bdl-7 come first.
        issues = bundle_issues(bundle, "Bundle")
        if issues:
            raise FhirError(400, issues[: self.resources.settings.validation_max_issues])
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
            _parse_read(entry, parts)
            if len(parts) == 1 and query:
                self._check_search(entry.type, query, base_url)
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
            entry.resource = resource  # validated by check_resources, after _authorize
        return entry

    def check_resources(self, entries: list[Entry], bindings: BindingContext | None) -> None:
        """Validate the POST/PUT entries' resources (CPU work, run off the event loop):
        only once every entry's interaction is known to be granted."""
        for entry in entries:
            if entry.method not in ("POST", "PUT"):
                continue
            checkpoint()
            try:
                seen = Seen()
                checked = self.resources.checked(
                    entry.type, entry.resource, "resource", bindings, seen
                )
                entry.extended = seen.extensions
                if entry.method == "PUT" and entry.id is not None and checked.get("id") != entry.id:
                    raise bad_request(
                        "The resource id must equal the id in request.url", f"{entry.type}.id"
                    )
            except FhirError as exc:
                raise entry_error(entry, exc) from None
            entry.resource = entry.parsed_resource = checked

    async def _check_answers(self, checked: list[Entry], entries: list[Entry]) -> None:
        """The QuestionnaireResponses among ``checked`` against their Questionnaires
        (422), which may be resources of this bundle (``entries``); no work at all for
        a bundle without a response."""
        answers = [e for e in checked if e.type == QR and e.resource is not None]
        if not answers:
            return
        pending = [e.resource for e in entries if e.resource is not None]
        for e in answers:
            try:
                await self.resources.check_answers(e.type, e.resource, pending)
            except FhirError as exc:
                raise entry_error(e, exc) from None

    def _check_search(self, resource_type: str, query: str, base_url: str) -> None:
        """A search entry's parameters, checked before anything is written: an invalid
        search fails the transaction (the search itself runs after the commit)."""
        pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if v and k != "_type"]
        settings = self.resources.settings
        try:
            self.search.parser(base_url).parse(
                [resource_type],
                pairs,
                lenient=self.lenient,
                default_count=settings.search_default_count,
                max_count=settings.search_max_count,
            )
        except FhirError as exc:
            issues = [replace(i, expression=("request.url",)) for i in exc.issues]
            raise FhirError(exc.status, issues) from None

    # --- processing (in the database transaction) ----------------------------------------

    def _authorize(self, entries: list[Entry]) -> None:
        """Every entry's interaction must be granted: one that is not fails the whole
        transaction (403 naming the entry) before anything is read or written."""
        if self.policy is None:
            return
        for e in entries:
            try:
                self.policy.require(e.type, interaction(e))
                if e.method == "PATCH":
                    self.policy.require_patch(e.type, "request.method")
                if e.if_none_exist:
                    self.policy.require_criteria(e.type, "request.ifNoneExist")
                if e.query and e.method != "GET":
                    self.policy.require_criteria(e.type, "request.url")
            except FhirError as exc:
                raise entry_error(e, exc) from None

    async def process(self, bundle: dict[str, Any], base_url: str) -> TransactionResult:
        offload = self.resources.offload
        entries = await offload.call(self.parse, bundle, base_url)
        self._authorize(entries)  # before the resources are validated: that is the cost
        await self.resources.with_bindings(functools.partial(self.check_resources, entries))
        await self._check_answers([e for e in entries if e.method in ("POST", "PUT")], entries)
        await _enforce_profiles(self.resources, [e for e in entries if e.method in ("POST", "PUT")])
        writes = [e for e in entries if e.method not in ("GET", "HEAD")]
        reads = [e for e in entries if e.method in ("GET", "HEAD")]
        types = sorted({e.type for e in writes})
        # New ids are fixed before the transaction so retries reuse them.
        for e in writes:
            if e.method == "POST":
                e.id = e.parsed_id = str(uuid.uuid4())

        async def txn(s: Session) -> None:
            await self._apply(s, writes, base_url)
            await self._check_reads(s, reads)

        if writes or any(e.read_id is not None for e in reads):
            await self.resources._transaction_for(types, txn)
        return TransactionResult(entries, reads)

    async def _apply(self, s: Session, entries: list[Entry], base_url: str) -> None:
        for e in entries:
            e.reset()
        locks = [
            lock
            for e in entries
            for criteria in (e.if_none_exist, e.query)
            if criteria
            for lock in conditional_locks(e.type, criteria)
        ]
        if locks:
            await self.resources.claim_conditional(s, locks)
        ordered = sorted(entries, key=lambda e: _ORDER[e.method])
        references: dict[str, str] = {}
        skip: set[int] = set()
        resolution = _Resolution()
        await self._prefetch_targets(s, entries, resolution)
        for e in ordered:
            try:
                await self._resolve_target(s, e, references, skip, resolution)
            except FhirError as exc:
                raise entry_error(e, exc) from None
        self._check_distinct(entries, skip)
        active = [e for e in ordered if e.index not in skip]
        current = await self._current_versions(s, active)
        # A resource out of the token's reach is as missing (before a PATCH op could
        # probe it); a PUT that would then create checks that it may.
        for e in active:
            if e.method == "POST":
                continue
            key = (e.type, e.id or "")
            try:
                seen = await ResourceService.within_reach(
                    s, self.policy, current.get(key), interaction(e), reads=e.method == "PATCH"
                )
                if seen is None:
                    current.pop(key, None)
                if e.method == "PUT" and seen is None:
                    await self.resources.check_update_as_create(
                        self.policy, e.type, key[1], not e.assigned_id
                    )
            except FhirError as exc:
                raise entry_error(e, exc) from None
        patches = [e for e in active if e.method == "PATCH"]
        if patches:
            await self.resources.with_bindings(functools.partial(self._patch_all, patches, current))
            await self._check_answers(patches, entries)
            await _enforce_profiles(self.resources, patches)
        resources = [e for e in active if e.resource is not None]
        await self.resources.offload.call(_rewrite_all, entries, resources, references)
        # Step 5 of http.html#trules resolves conditional references after the writes:
        # they are searched before (so that an unchanged resource makes no new version)
        # and again after this transaction's writes, which decide.
        conditional = [e for e in resources if conditional_references(e.resource)]
        before = await self._conditional_matches(s, conditional, strict=False)
        for e in conditional:
            e.unresolved = e.resource
            e.resource = rewrite_references(e.resource, before)
        versions = await self.resources.offload.call(self._versions, active, current)
        if versions:
            await self.storage.write(versions, s)
        after = await self._conditional_matches(s, conditional, strict=True)
        if after != before:
            changed = [
                e
                for e in conditional
                if any(before.get(r) != after[r] for r in conditional_references(e.unresolved))
            ]
            await self._re_resolve(s, changed, after, current)
        for e in active:  # what was written must be within the token's reach
            if e.write is not None:
                e.stored = e.write.stored()  # as stored: a rule may have amended it
                try:
                    await ResourceService.guard_after(s, self.policy, e.write)
                except FhirError as exc:
                    raise entry_error(e, exc) from None
        for e in entries:
            if e.same_as is not None:
                e.stored = e.same_as.stored

    async def _resolve_target(
        self,
        s: Session,
        e: Entry,
        references: dict[str, str],
        skip: set[int],
        resolution: _Resolution,
    ) -> None:
        """Fix each entry's target id: conditional create/update/patch/delete are
        resolved by search inside the transaction's snapshot. Entries come in the
        order of http.html#trules, and each sees what the earlier ones did: a resource
        deleted here matches no later criteria, and a conditional create finds the
        resource an earlier create of the same criteria makes."""
        if e.method == "POST" and e.if_none_exist:
            matches = await self._match(
                s, e.type, e.if_none_exist, "request.ifNoneExist", resolution, "c"
            )
            if len(matches) > 1:
                raise precondition_failed("ifNoneExist matches more than one resource")
            key = (e.type, e.if_none_exist)
            if matches:
                e.id, e.stored, e.status = matches[0].id, matches[0], "200 OK"
                skip.add(e.index)
            elif key in resolution.creates:
                first = resolution.creates[key]
                e.id, e.same_as, e.status = first.id, first, "200 OK"
                skip.add(e.index)
            else:
                resolution.creates[key] = e
        elif e.query is not None:
            matches = await self._match(
                s, e.type, e.query, "request.url", resolution, interaction(e)
            )
            if len(matches) > 1:
                raise precondition_failed("The conditional criteria match more than one resource")
            if matches:
                body_id = e.resource.get("id") if e.resource else None
                if body_id is not None and body_id != matches[0].id:
                    raise bad_request("The resource id does not match the resource found")
                e.id = matches[0].id
            elif e.method == "PUT":
                e.id = (e.resource or {}).get("id")
                if e.id is None:
                    e.id, e.assigned_id = str(uuid.uuid4()), True
            elif e.method == "PATCH":
                raise not_found("The conditional patch criteria match no resource")
            else:  # DELETE with no match: nothing to do (http.html#3.1.0.7.1)
                e.status = "204 No Content"
                skip.add(e.index)
        if e.method == "DELETE" and e.id is not None and e.index not in skip:
            resolution.deleted.add((e.type, e.id))
        if e.full_url and e.id:
            references[e.full_url] = f"{e.type}/{e.id}"

    async def _match(
        self,
        s: Session,
        resource_type: str,
        query: str,
        where: str,
        resolution: _Resolution,
        action: str,
    ) -> list[StoredVersion]:
        """Up to 2 live matches, not counting resources this transaction deletes, among
        the resources the token may touch with ``action``."""
        deleted = {i for t, i in resolution.deleted if t == resource_type}
        matches = resolution.prefetched.get((resource_type, action, query))
        if matches is None or len(matches) >= _PREFETCH_LIMIT:
            matches = await self.search.match(
                resource_type, query, where, 2 + len(deleted), s, self.policy, action
            )
        return [m for m in matches if m.id not in deleted][:2]

    async def _prefetch_targets(
        self, s: Session, entries: list[Entry], resolution: _Resolution
    ) -> None:
        """The matches of every plain-identifier condition, a query per type and action
        rather than one per entry (the snapshot is the same: nothing is written before
        every target is resolved)."""
        groups: dict[tuple[str, str], list[str]] = {}
        for e in entries:
            criteria = e.if_none_exist if e.method == "POST" else e.query
            if criteria:
                action = "c" if e.method == "POST" else interaction(e)
                groups.setdefault((e.type, action), []).append(criteria)
        for (type_, action), criteria_list in groups.items():
            found = await self.search.match_identifiers(
                type_, criteria_list, _PREFETCH_LIMIT, s, self.policy, action
            )
            for criteria, matches in found.items():
                resolution.prefetched[(type_, action, criteria)] = matches

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

    async def _conditional_matches(
        self, s: Session, entries: list[Entry], strict: bool
    ) -> dict[str, str]:
        """ "Patient?identifier=…" references (http.html#trules): "if there are no
        matches, or multiple matches, the transaction fails" (when ``strict``;
        otherwise only the references with exactly one match are returned)."""
        found: dict[str, str] = {}
        seen: set[str] = set()
        by_type: dict[str, list[str]] = {}
        for e in entries:
            for ref in conditional_references(e.unresolved or e.resource):
                type_, _, query = ref.partition("?")
                by_type.setdefault(type_, []).append(query)
        prefetched: dict[str, list[StoredVersion]] = {}
        for type_, queries in by_type.items():
            answers = await self.search.match_identifiers(type_, queries, 2, s, self.policy, "s")
            prefetched.update({f"{type_}?{q}": m for q, m in answers.items()})
        for e in entries:
            for ref in conditional_references(e.unresolved or e.resource):
                if ref in seen:
                    continue
                seen.add(ref)
                type_, _, query = ref.partition("?")
                try:
                    matches = prefetched.get(ref)
                    if matches is None:
                        matches = await self.search.match(
                            type_, query, "reference", 2, s, self.policy, "s"
                        )
                except FhirError as exc:
                    raise entry_error(e, exc) from None
                if len(matches) == 1:
                    found[ref] = f"{type_}/{matches[0].id}"
                elif strict:
                    count = "no" if not matches else "more than one"
                    raise entry_error(
                        e,
                        precondition_failed(
                            f"The conditional reference {ref!r} matches {count} resource"
                        ),
                    )
        return found

    async def _re_resolve(
        self,
        s: Session,
        entries: list[Entry],
        resolved: dict[str, str],
        current: dict[tuple[str, str], StoredVersion],
    ) -> None:
        """Conditional references whose match this transaction's own writes changed:
        the versions just written are corrected in place (same version), and a resource
        that was left unchanged gets its new version now."""
        fixed: list[VersionWrite] = []
        new: list[VersionWrite] = []
        for e in entries:
            assert e.unresolved is not None and e.id is not None
            e.resource = rewrite_references(e.unresolved, resolved)
            if e.write is None:
                write = self._version(e, current.get((e.type, e.id)))
                if write is not None:
                    new.append(write)
                continue
            write = e.write
            self.resources.render(write, e.resource)
            e.stored = write.stored()
            fixed.append(write)
        if fixed:
            await self.storage.rewrite(fixed, s)
        if new:
            await self.storage.write(new, s)

    async def _check_reads(self, s: Session, reads: list[Entry]) -> None:
        """GET entries are processed after the writes (http.html#trules) and are part
        of the all-or-nothing: reading a resource that does not exist (or that this
        transaction deletes) fails the transaction. The entries themselves are answered
        after the commit."""
        for e in reads:
            if e.read_id is None:
                continue
            current = await self.storage.read_current(e.type, e.read_id, s)
            policy = self.policy
            if policy and current and not await policy.contains(e.type, e.read_id, "r", s):
                current = None  # outside the token's reach: as if it did not exist
            try:
                if current is None:
                    raise not_found(f"{e.type}/{e.read_id} is not known")
                if e.read_version is None:
                    if current.deleted:
                        raise gone(current)
                    continue
                version = await self.storage.read_version(e.type, e.read_id, e.read_version, s)
                if version is None:
                    raise not_found(f"{e.type}/{e.read_id} has no version {e.read_version}")
                if version.deleted:
                    raise FhirError.of(
                        410,
                        "deleted",
                        f"{e.type}/{e.read_id} version {e.read_version} is a deletion",
                    )
            except FhirError as exc:
                raise entry_error(e, exc) from None

    async def _current_versions(
        self, s: Session, entries: list[Entry]
    ) -> dict[tuple[str, str], StoredVersion]:
        wanted: dict[str, list[str]] = {}
        for e in entries:
            if e.method != "POST" and e.id is not None:
                wanted.setdefault(e.type, []).append(e.id)
        found: dict[tuple[str, str], StoredVersion] = {}
        for t, ids in wanted.items():
            for v in await self.storage.read_many(t, ids, s):
                found[(t, v.id)] = v
        return found

    def _patch_all(
        self,
        entries: list[Entry],
        current: dict[tuple[str, str], StoredVersion],
        bindings: BindingContext | None,
    ) -> None:
        for e in entries:
            checkpoint()
            try:
                self._patched(e, current.get((e.type, e.id or "")), bindings)
            except FhirError as exc:
                raise entry_error(e, exc) from None

    def _patched(
        self, e: Entry, current: StoredVersion | None, bindings: BindingContext | None
    ) -> None:
        """The PATCH entry's resource: its patch applied to the current version."""
        if current is None:
            raise not_found(f"{e.type}/{e.id} is not known")
        if current.raw is None:
            raise gone(current)
        check_version_match(current, e.if_match)
        assert e.patch is not None
        e.resource = self.resources.patched(current, e.patch, bindings)
        if e.resource.get("id") != e.id:
            raise bad_request("A patch may not change the resource id")

    def _versions(
        self, active: list[Entry], current: dict[tuple[str, str], StoredVersion]
    ) -> list[VersionWrite]:
        """Every entry's new version, rendered and indexed (CPU work, off the loop)."""
        versions = []
        for e in active:
            checkpoint()
            try:
                write = self._version(e, current.get((e.type, e.id or "")))
            except FhirError as exc:
                raise entry_error(e, exc) from None
            if write is not None:
                versions.append(write)
        return versions

    def _version(self, e: Entry, current: StoredVersion | None) -> VersionWrite | None:
        e.write = self._new_version(e, current)
        return e.write

    def _new_version(self, e: Entry, current: StoredVersion | None) -> VersionWrite | None:
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
        if e.method == "PUT":
            check_version_match(current, e.if_match)
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


def interaction(e: Entry) -> str:
    if e.method in ("GET", "HEAD"):
        return "r" if e.read_id is not None else "s"
    return _INTERACTION[e.method]


@dataclass(slots=True)
class _Resolution:
    """What the entries resolved so far did, for the entries processed after them."""

    deleted: set[tuple[str, str]] = field(default_factory=set)
    creates: dict[tuple[str, str], Entry] = field(default_factory=dict)  # by ifNoneExist
    # matches of plain-identifier conditions, by (type, action, criteria), fetched at once
    prefetched: dict[tuple[str, str, str], list[StoredVersion]] = field(default_factory=dict)


# A prefetched list this long may have been cut short: ask the database again.
_PREFETCH_LIMIT = 8


_RESTFUL = re.compile(r"(https?://.+)/([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


def _restful(full_url: str | None) -> tuple[str, str, str] | None:
    """(root, type, id) of a RESTful fullUrl ([root]/[type]/[id])."""
    m = _RESTFUL.fullmatch(full_url or "")
    if m is None or not is_resource_type(m.group(2)):
        return None
    return m.group(1), m.group(2), m.group(3)


def _rewrite_all(entries: list[Entry], resources: list[Entry], references: dict[str, str]) -> None:
    """Links to the entries' fullUrls rewritten to their ids in every written resource."""
    relative = _relative_links(entries)
    for e in resources:
        checkpoint()
        links = references
        root = _restful(e.full_url)
        if root is not None and root[0] in relative:
            links = {**references, **relative[root[0]]}
        e.resource = rewrite_links(e.resource, links)  # type: ignore[arg-type]


def _relative_links(entries: list[Entry]) -> dict[str, dict[str, str]]:
    """Relative references ("Patient/abc") to entries with a RESTful fullUrl
    ("http://other/fhir/Patient/abc") that now have another id, by the fullUrl's root.
    Within a bundle a relative reference in an entry whose fullUrl has that same root
    means that entry (bundle.html#references: "extract the [root] from the fullUrl, and
    append the reference (type/id) to it"), so it is rewritten as the fullUrl is."""
    out: dict[str, dict[str, str]] = {}
    for e in entries:
        parts = _restful(e.full_url)
        if parts is None or e.id is None:
            continue
        root, type_, id_ = parts
        if (type_, id_) != (e.type, e.id):
            out.setdefault(root, {})[f"{type_}/{id_}"] = f"{e.type}/{e.id}"
    return out


def _parse_read(entry: Entry, parts: list[str]) -> None:
    """GET [type]/[id] (read) and GET [type]/[id]/_history/[vid] (vread): known to the
    transaction, which checks that they succeed; other GETs (searches, histories,
    operations) are only performed."""
    if len(parts) not in (2, 4) or parts[1].startswith(("$", "_")) or not parts[1]:
        return
    version = whole_number(parts[3]) if len(parts) == 4 else None
    if len(parts) == 4 and (parts[2] != "_history" or version is None):
        return
    if not is_valid_id(parts[1]):
        raise bad_request(f"Invalid id in request.url {entry.url!r}", "request.url")
    entry.read_id = parts[1]
    entry.read_version = version


def _if_match(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    version = whole_number(text)
    if version is None:
        raise bad_request(
            f'ifMatch must be a version ETag such as W/"3", got {value!r}', "request.ifMatch"
        )
    return version
