"""Instance-level interactions: create, read, vread, update, patch, delete, and their
conditional forms (http.html). Every write is one MongoDB transaction that re-reads
the current version, so concurrent writers never lose an update."""

from __future__ import annotations

import asyncio
import functools
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import jsonpatch
import jsonpointer

from fhir_server.audit import seen as audit
from fhir_server.config import Settings
from fhir_server.datetimes import after, format_instant
from fhir_server.digits import whole_number
from fhir_server.jsonio import dumps, load_stored
from fhir_server.offload import Offload
from fhir_server.outcome import FhirError, Issue, bad_request, not_found, precondition_failed
from fhir_server.resource_types import is_valid_id
from fhir_server.search.extract import index_resource
from fhir_server.search.parse import plain_identifier
from fhir_server.search.registry import Registry
from fhir_server.service.context import request_base_url
from fhir_server.service.patching import apply_patch
from fhir_server.service.questionnaires import Questionnaires
from fhir_server.service.search import SearchService
from fhir_server.storage import Storage, StoredVersion, VersionWrite
from fhir_server.storage.store import Session
from fhir_server.validation import BindingContext, Seen, validate_resource
from fhir_server.validation.bindings import BindingSource
from fhir_server.validation.questionnaire import QR, questionnaire_issues

if TYPE_CHECKING:
    from fhir_server.authz.policy import Policy
    from profiles.registry import ProfileRegistry

MAX_CONDITIONAL_DELETE = 1000
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    stored: StoredVersion
    created: bool  # 201 Created rather than 200 OK


def gone(stored: StoredVersion) -> FhirError:
    return FhirError.of(
        410,
        "deleted",
        f"{stored.type}/{stored.id} was deleted (version {stored.version})",
        headers={"ETag": f'W/"{stored.version}"'},
    )


def check_id(resource_id: str) -> None:
    if not is_valid_id(resource_id):
        raise bad_request(
            f"{resource_id!r} is not a valid resource id "
            "(1-64 of A-Z a-z 0-9 - ., and not . or ..)",
            "id",
        )


def check_version_match(current: StoredVersion | None, if_match: int | None) -> None:
    """If-Match (http.html#concurrency): the update must be based on the current version.

    A deletion counts as one: its ETag is on the delete response and the 410 read so
    that bringing the resource back to life can be version-aware (http.html#read)."""
    if if_match is None:
        return
    if current is None:
        raise precondition_failed(f'If-Match W/"{if_match}" given but no current version exists')
    if current.version != if_match:
        raise precondition_failed(
            f'Version conflict: If-Match W/"{if_match}" but the current version is '
            f"{current.version}",
            "If-Match",
        )


def with_meta(resource: dict[str, Any], write: VersionWrite) -> dict[str, Any]:
    """The resource as stored: server-owned id, meta.versionId and meta.lastUpdated set,
    everything else the client sent kept as sent."""
    meta = {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated")
    }
    out: dict[str, Any] = {
        "resourceType": resource["resourceType"],
        "id": write.id,
        "meta": {
            "versionId": str(write.version),
            "lastUpdated": format_instant(write.last_updated),
            **meta,
        },
    }
    out.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta"))
    return out


def _content(resource: dict[str, Any]) -> bytes:
    """What makes two versions different: all but id, versionId and lastUpdated."""
    meta = {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated")
    }
    rest = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    return dumps({**rest, "meta": meta} if meta else rest)


def same_content(stored_raw: bytes, resource: dict[str, Any]) -> bool:
    """Would writing ``resource`` over the stored version change nothing? Then no new
    version is made (idempotent re-sends, e.g. a migration run twice)."""
    return _content(load_stored(stored_raw)) == _content(resource)


LOCK_SHARDS = 32


def conditional_locks(resource_type: str, criteria: str) -> list[str]:
    """The lock documents a conditional interaction claims, so that two transactions
    that each see no match cannot both create (write skew; http.html#ccreate: "avoid
    the risk of two clients creating duplicate resources for the same record").

    Differently written criteria can match the same resource (``identifier=a|1`` and
    ``identifier=1,zz``), so a lock per criteria string would not do. Each type has
    LOCK_SHARDS lock documents: criteria that are exactly one ``identifier=system|value``
    (what migrations, Synthea and most integration engines send) claim the one shard
    that identifier hashes to; any other criteria claim every shard. Conditional
    interactions on different identifiers then run in parallel, while an arbitrary
    search still conflicts with all of them."""
    identifier = plain_identifier(criteria)
    if identifier is not None:
        return [_lock_key(resource_type, zlib.crc32(identifier.encode()) % LOCK_SHARDS)]
    return [_lock_key(resource_type, shard) for shard in range(LOCK_SHARDS)]


def _lock_key(resource_type: str, shard: int) -> str:
    return f"{resource_type}?conditional#{shard}"


class ResourceService:
    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        search: SearchService,
        offload: Offload | None = None,
        bindings: BindingSource | None = None,
        profiles: ProfileRegistry | None = None,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.search = search
        self.registry: Registry = search.registry
        self.offload = offload or Offload.inline()  # where validation and indexing run
        # the bound value sets' members, for the binding checks (None: not checked
        # beyond the enumerated required code bindings; FHIR_VALIDATE_BINDINGS=false)
        self.bindings = bindings
        self.questionnaires = Questionnaires(storage)
        # the stored profiles, for meta.profile (None: not enforced)
        self.profiles = profiles
        from profiles.enforcement import Enforcement  # profiles/ imports this module

        self.enforcement = Enforcement.of(settings)

    async def with_bindings(self, fn: Callable[[BindingContext | None], T]) -> T:
        """``fn(bindings)`` in the pool (on the loop for a small body, ``call_for_body``):
        a validation, given the terminology snapshot.

        The snapshot's freshness check (a round trip, shared with the validations that
        start meanwhile) runs while the pool validates against the snapshot held: a
        write waits for the longer of the two, not both; on the loop, after it.
        If the snapshot was renewed meanwhile, or the validation met value sets it had
        not loaded (they are loaded on the loop, never in the pool), it runs once more;
        after that they are cached."""
        if self.bindings is None:
            return await self.offload.call_for_body(fn, None)
        checking = asyncio.ensure_future(self.bindings.context())
        ctx = self.bindings.held()
        error: FhirError | None = None
        try:
            result = await self.offload.call_for_body(fn, ctx)
        except FhirError as exc:
            error = exc
        except BaseException:
            checking.cancel()
            raise
        fresh = await checking
        if fresh.terminology is ctx.terminology and not ctx.missing:
            if error is not None:
                raise error
            return result
        if ctx.missing:
            await self.bindings.load(ctx.missing)
            fresh = await self.bindings.context()
        return await self.offload.call_for_body(fn, fresh)

    # --- checks ------------------------------------------------------------------------

    def checked(
        self,
        resource_type: str,
        body: Any,
        where: str = "body",
        bindings: BindingContext | None = None,
        seen: Seen | None = None,
    ) -> dict[str, Any]:
        """The body as a valid resource of ``resource_type``, or a 400 explaining why
        (``seen``: whether it has extensions, for ``enforce_profiles``).

        Base-specification validation failures are 400 (http.html#2.21.0.16: "failed
        basic FHIR validation rules"); 422 is for profile and business rules."""
        if not isinstance(body, dict):
            raise bad_request(f"The {where} must be a JSON object holding a resource", "$this")
        actual = body.get("resourceType")
        if actual != resource_type:
            raise bad_request(
                f"resourceType {actual!r} does not match the request's type {resource_type!r}",
                "resourceType",
            )
        issues = validate_resource(
            body,
            resource_type,
            r4b_models=self.settings.validate_r4b_models,
            max_issues=self.settings.validation_max_issues,
            bindings=bindings,
            seen=seen,
            invariants=self.settings.validate_invariants,
        )
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        if errors:
            # with the note that validation stopped at the issue limit, if it did
            raise FhirError(400, errors + [i for i in issues if i.code == "too-costly"])
        return body

    def patched(
        self,
        current: StoredVersion,
        patch: jsonpatch.JsonPatch,
        bindings: BindingContext | None = None,
    ) -> dict[str, Any]:
        """The current version with ``patch`` applied, as a valid resource (422 or 400
        otherwise). Only for a token that may read it (Policy.require_patch), so the
        reasons may quote the content."""
        assert current.raw is not None
        try:
            patched = apply_patch(patch, load_stored(current.raw), self.settings.input_limits())
        except jsonpatch.JsonPatchTestFailed as exc:
            raise FhirError.of(422, "processing", f"JSON Patch test failed: {exc}") from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise FhirError.of(
                422, "processing", f"The JSON Patch cannot be applied: {exc}"
            ) from None
        return self.checked(current.type, patched, "patched resource", bindings)

    async def check(self, resource_type: str, body: Any, where: str = "body") -> dict[str, Any]:
        """``checked`` off the event loop, with the bindings, then the resource's
        ``meta.profile``s (enforce_profiles)."""
        seen = Seen()
        resource = await self.with_bindings(
            functools.partial(self.checked, resource_type, body, where, seen=seen)
        )
        await self.enforce_profiles([resource], extended=[seen.extensions])
        return resource

    async def enforce_profiles(
        self,
        resources: Sequence[Any],
        fail: Callable[[int, FhirError], FhirError] | None = None,
        extended: Sequence[bool] | None = None,
    ) -> None:
        """422 when a resource breaks a profile that refuses it, or the definition of
        one of its extensions (profiles/extensions.py); ``fail(index, error)`` names the
        resource in a batch of them. The profiles: a required profile of its type
        (FHIR_REQUIRED_PROFILES), or one its ``meta.profile`` names, the server holds and
        enforces with ``reject`` (FHIR_PROFILE_ENFORCEMENT and its per-profile overrides;
        profiles/enforcement.py). A ``meta.profile`` the server does not hold is ignored;
        a required one it does not hold refuses the write; unknown extensions are
        ignored unless FHIR_UNKNOWN_EXTENSIONS=error. Costs no round trip when no
        profile applies and no resource carries an extension, one otherwise
        (profiles/registry.py). ``extended``: which resources may have extensions, as
        their validation saw (``Seen``; None: any may), so that a resource without any
        is not walked again."""
        if self.profiles is None:
            return
        from profiles.extensions import Found, extension_urls, find_extensions
        from profiles.registry import declared_profiles, first_violation, held, required_gaps

        enforcement = self.enforcement
        reject = self.settings.profile_enforcement == "reject"
        unknown = self.settings.unknown_extensions
        wanted = [enforcement.rejecting(r, declared_profiles(r)) for r in resources]
        walk = [
            (reject or unknown == "error") and (extended is None or extended[i])
            for i in range(len(resources))
        ]

        def found() -> list[list[Found]]:
            return [find_extensions(r) if w else [] for r, w in zip(resources, walk, strict=True)]

        # a transaction's thousands off the loop
        exts = await self.offload.call(found) if sum(walk) > 1 else found()
        if not any(wanted) and not any(exts):
            return
        urls = [u for f in exts for u in extension_urls(f)]
        resolved = await self.profiles.resolve([*(u for w in wanted for u in w), *urls])
        for i, resource in enumerate(resources):
            gaps = required_gaps(resolved, resource, enforcement.required_for(resource))
            if gaps:
                exc = FhirError(422, gaps)
                raise exc if fail is None else fail(i, exc)
        work = [
            (i, resource, held(resolved, profiles), ext)
            for i, (resource, profiles, ext) in enumerate(zip(resources, wanted, exts, strict=True))
            if profiles or ext
        ]
        # one hand-over to the pool for all of them (a transaction's thousands)
        failed = await self.offload.call(
            first_violation,
            work,
            self.settings.validation_max_issues,
            resolved,
            unknown,
            "error" if reject else "warning",
        )
        if failed is not None:
            exc = FhirError(422, failed[1])
            raise exc if fail is None else fail(failed[0], exc)

    async def answer_issues(
        self, resource_type: str, resource: Any, pending: Iterable[Any] = ()
    ) -> list[Issue]:
        """A QuestionnaireResponse against its Questionnaire (warnings too); nothing,
        and no round trip, for any other type. ``pending``: a transaction's resources,
        where the Questionnaire may be."""
        if resource_type != QR or not isinstance(resource, dict):
            return []
        questionnaire = await self.questionnaires.find(resource, pending)
        return await self.with_bindings(
            functools.partial(
                questionnaire_issues,
                resource,
                questionnaire,
                self.settings.validation_max_issues,
            )
        )

    async def check_answers(
        self, resource_type: str, resource: Any, pending: Iterable[Any] = ()
    ) -> None:
        """422 when a QuestionnaireResponse breaks its Questionnaire's rules: they are a
        profile's rules, not the base specification's (http.html: "422 Unprocessable
        Entity - the proposed resource violated applicable FHIR profiles")."""
        if resource_type != QR:
            return
        issues = await self.answer_issues(resource_type, resource, pending)
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        if errors:
            raise FhirError(422, errors + [i for i in issues if i.code == "too-costly"])

    def new_version(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any] | None,
        current: StoredVersion | None,
        method: str,
    ) -> VersionWrite:
        write = VersionWrite(
            type=resource_type,
            id=resource_id,
            version=current.version + 1 if current else 1,
            last_updated=after(current.last_updated if current else None),
            method=method,
            raw=None,
            previous=current.version if current else None,
            created=resource is not None and (current is None or current.deleted),
        )
        if resource is not None:
            self.render(write, resource)
        elif current is not None:
            audit.wrote(write, current.comp)  # the audit record names whose record it was
        return write

    def render(self, write: VersionWrite, resource: dict[str, Any]) -> None:
        """Fill a version's stored JSON and its search index from the resource."""
        stored = with_meta(resource, write)
        write.raw = dumps(stored)
        write.content = stored
        base = request_base_url.get() or self.settings.base_url
        index = index_resource(stored, self.registry, base_url=base)
        write.sp, write.so, write.comp = index.sp, index.so, index.comp

    async def _transaction(self, resource_type: str, fn: Callable[[Session], Awaitable[T]]) -> T:
        return await self.storage.transaction(fn, (resource_type,))

    async def _transaction_for(
        self, resource_types: Sequence[str], fn: Callable[[Session], Awaitable[T]]
    ) -> T:
        return await self.storage.transaction(fn, resource_types)

    async def claim_conditional(self, s: Session, locks: Iterable[str]) -> None:
        """Serialise conditional interactions that could match the same resource (see
        conditional_locks): ``locks`` from conditional_locks, for every criteria."""
        await self.storage.claim(sorted(set(locks)), s)

    async def _match(
        self,
        s: Session,
        resource_type: str,
        query: str,
        where: str,
        limit: int = 2,
        policy: Policy | None = None,
        interaction: str = "s",
    ) -> list[StoredVersion]:
        await self.claim_conditional(s, conditional_locks(resource_type, query))
        return await self.search.match(resource_type, query, where, limit, s, policy, interaction)

    # --- authorization (SMART scopes, see fhir_server/authz/policy.py) ----------------

    @staticmethod
    async def within_reach(
        s: Session,
        policy: Policy | None,
        current: StoredVersion | None,
        interaction: str,
        *,
        reads: bool = False,
    ) -> StoredVersion | None:
        """The version a write replaces as the token may know it (Policy.within_reach):
        None makes the write go on exactly as for a missing resource."""
        if policy is None:
            return current
        return await policy.within_reach(current, interaction, s, reads=reads)

    async def check_update_as_create(
        self, policy: Policy | None, resource_type: str, resource_id: str, chosen: bool
    ) -> None:
        """May a PUT create ``resource_type/resource_id`` (no current version within
        reach)? Not when the server does not allow update-as-create; nor, for an id the
        client ``chosen``, when the token's access to the type is limited to part of its
        resources: ids are one space for all records, so the answer would tell whether
        another record uses the id (its PUT answers as for a missing one, this 405)."""
        limited = chosen and policy is not None and await policy.confines(resource_type, "u")
        if not self.settings.allow_update_create or limited:
            raise FhirError.of(
                405,
                "not-supported",
                f"{resource_type}/{resource_id} does not exist and update-as-create is "
                + (
                    "not available to an access token limited to part of the "
                    f"{resource_type} resources"
                    if limited
                    else "not allowed on this server (FHIR_ALLOW_UPDATE_CREATE=false)"
                ),
            )

    @staticmethod
    async def guard_after(s: Session, policy: Policy | None, write: VersionWrite) -> None:
        """The version just written (read back inside the transaction) must be within
        what the token may create or update: a write cannot move a resource out."""
        if policy is None or policy.unrestricted or write.raw is None:
            return
        if write.created:
            policy.require(write.type, "c")
        await policy.require_contains(write.type, write.id, "c" if write.created else "u", s)

    # --- read --------------------------------------------------------------------------

    async def read(self, resource_type: str, resource_id: str) -> StoredVersion:
        check_id(resource_id)
        stored = await self.storage.read_current(resource_type, resource_id)
        if stored is None:
            raise not_found(f"{resource_type}/{resource_id} is not known")
        if stored.deleted:
            raise gone(stored)
        return stored

    async def read_any(self, resource_type: str, resource_id: str) -> StoredVersion:
        """The current version even if it is a deletion (for instance history)."""
        check_id(resource_id)
        stored = await self.storage.read_current(resource_type, resource_id)
        if stored is None:
            raise not_found(f"{resource_type}/{resource_id} is not known")
        return stored

    async def vread(self, resource_type: str, resource_id: str, version: str) -> StoredVersion:
        check_id(resource_id)
        number = whole_number(version)
        if number is None or number < 1:
            raise bad_request(f"{version!r} is not a version id (a positive integer)", "vid")
        stored = await self.storage.read_version(resource_type, resource_id, number)
        if stored is None:
            raise not_found(f"{resource_type}/{resource_id} has no version {version}")
        if stored.deleted:
            raise gone(stored)
        return stored

    # --- create ------------------------------------------------------------------------

    async def create(
        self,
        resource_type: str,
        body: Any,
        if_none_exist: str | None = None,
        policy: Policy | None = None,
    ) -> WriteOutcome:
        if isinstance(body, dict):
            # http.html#create: an id in the body SHALL be ignored; drop it before
            # validation so a malformed one does not fail the request.
            body = {k: v for k, v in body.items() if k != "id"}
        resource = await self.check(resource_type, body)
        await self.check_answers(resource_type, resource)
        new_id = str(uuid.uuid4())

        async def txn(s: Session) -> WriteOutcome:
            if if_none_exist is not None:
                matches = await self._match(
                    s, resource_type, if_none_exist, "If-None-Exist", 2, policy, "c"
                )
                if len(matches) > 1:
                    raise precondition_failed(
                        f"If-None-Exist criteria match {len(matches)} or more resources",
                        "If-None-Exist",
                    )
                if matches:
                    return WriteOutcome(matches[0], created=False)
            write = await self.offload.call_for_body(
                self.new_version, resource_type, new_id, resource, None, "POST"
            )
            await self.storage.write([write], s)
            await self.guard_after(s, policy, write)
            return WriteOutcome(write.stored(), created=True)

        return await self._transaction(resource_type, txn)

    # --- update ------------------------------------------------------------------------

    async def _put(
        self,
        s: Session,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        if_match: int | None,
        method: str = "PUT",
        policy: Policy | None = None,
        chosen: bool = True,
    ) -> WriteOutcome:
        """``chosen``: the id is the client's (not one the server just assigned)."""
        stored = await self.storage.read_current(resource_type, resource_id, s)
        current = await self.within_reach(s, policy, stored, "u")
        check_version_match(current, if_match)
        if current is None:
            await self.check_update_as_create(policy, resource_type, resource_id, chosen)
        if current is not None and current.raw is not None and same_content(current.raw, resource):
            return WriteOutcome(current, created=False)  # no change: no new version
        write = await self.offload.call_for_body(
            self.new_version, resource_type, resource_id, resource, current, method
        )
        await self.storage.write([write], s)
        await self.guard_after(s, policy, write)
        return WriteOutcome(write.stored(), created=current is None or current.deleted)

    async def update(
        self,
        resource_type: str,
        resource_id: str,
        body: Any,
        if_match: int | None,
        policy: Policy | None = None,
    ) -> WriteOutcome:
        check_id(resource_id)
        resource = await self.check(resource_type, body)
        body_id = resource.get("id")
        if body_id is None:
            raise bad_request(
                "The resource must have an id equal to the id in the URL (http.html#update)",
                f"{resource_type}.id",
            )
        if body_id != resource_id:
            raise bad_request(
                f"The resource id {body_id!r} does not match the URL id {resource_id!r}",
                f"{resource_type}.id",
            )
        await self.check_answers(resource_type, resource)
        return await self._transaction(
            resource_type,
            lambda s: self._put(s, resource_type, resource_id, resource, if_match, "PUT", policy),
        )

    async def conditional_update(
        self,
        resource_type: str,
        query: str,
        body: Any,
        if_match: int | None,
        policy: Policy | None = None,
    ) -> WriteOutcome:
        """http.html#cond-update: no match creates, one match updates, several: 412."""
        resource = await self.check(resource_type, body)
        await self.check_answers(resource_type, resource)
        body_id = resource.get("id")

        async def txn(s: Session) -> WriteOutcome:
            matches = await self._match(s, resource_type, query, "url", 2, policy, "u")
            if len(matches) > 1:
                raise precondition_failed(
                    "The conditional update criteria match more than one resource", "url"
                )
            if matches:
                target = matches[0].id
                if body_id is not None and body_id != target:
                    raise bad_request(
                        f"The resource id {body_id!r} does not match the resource the "
                        f"criteria found ({resource_type}/{target})",
                        f"{resource_type}.id",
                    )
            elif body_id is not None:
                target = body_id  # update-as-create with the client's id
            else:
                target = str(uuid.uuid4())
            chosen = target == body_id
            return await self._put(
                s, resource_type, target, resource, if_match, "PUT", policy, chosen
            )

        return await self._transaction(resource_type, txn)

    # --- patch -------------------------------------------------------------------------

    async def _patch(
        self,
        s: Session,
        resource_type: str,
        resource_id: str,
        patch: jsonpatch.JsonPatch,
        if_match: int | None,
        policy: Policy | None = None,
    ) -> WriteOutcome:
        stored = await self.storage.read_current(resource_type, resource_id, s)
        # out of reach (to change or to read) is as missing, before an op can probe it
        current = await self.within_reach(s, policy, stored, "u", reads=True)
        if current is None:
            raise not_found(f"{resource_type}/{resource_id} is not known")
        if current.raw is None:
            raise gone(current)
        check_version_match(current, if_match)
        resource = await self.with_bindings(functools.partial(self.patched, current, patch))
        await self.enforce_profiles([resource])
        if resource.get("id") != resource_id:
            raise bad_request("A patch may not change the resource id", f"{resource_type}.id")
        await self.check_answers(resource_type, resource)
        return await self._put(s, resource_type, resource_id, resource, None, "PATCH", policy)

    async def patch(
        self,
        resource_type: str,
        resource_id: str,
        patch: jsonpatch.JsonPatch,
        if_match: int | None,
        policy: Policy | None = None,
    ) -> WriteOutcome:
        check_id(resource_id)
        return await self._transaction(
            resource_type,
            lambda s: self._patch(s, resource_type, resource_id, patch, if_match, policy),
        )

    async def conditional_patch(
        self,
        resource_type: str,
        query: str,
        patch: jsonpatch.JsonPatch,
        if_match: int | None,
        policy: Policy | None = None,
    ) -> WriteOutcome:
        async def txn(s: Session) -> WriteOutcome:
            matches = await self._match(s, resource_type, query, "url", 2, policy, "u")
            if not matches:
                raise not_found("The conditional patch criteria match no resource")
            if len(matches) > 1:
                raise precondition_failed(
                    "The conditional patch criteria match more than one resource", "url"
                )
            return await self._patch(s, resource_type, matches[0].id, patch, if_match, policy)

        return await self._transaction(resource_type, txn)

    # --- delete ------------------------------------------------------------------------

    async def _delete(
        self,
        s: Session,
        resource_type: str,
        resource_id: str,
        if_match: int | None,
        policy: Policy | None = None,
    ) -> StoredVersion | None:
        stored = await self.storage.read_current(resource_type, resource_id, s)
        current = await self.within_reach(s, policy, stored, "d")
        check_version_match(current, if_match)
        if current is None or current.deleted:
            return current  # nothing to do (http.html#delete: still a success)
        write = self.new_version(resource_type, resource_id, None, current, "DELETE")
        await self.storage.write([write], s)
        return write.stored()

    async def delete(
        self,
        resource_type: str,
        resource_id: str,
        if_match: int | None,
        policy: Policy | None = None,
    ) -> StoredVersion | None:
        check_id(resource_id)
        return await self._transaction(
            resource_type,
            lambda s: self._delete(s, resource_type, resource_id, if_match, policy),
        )

    async def conditional_delete(
        self, resource_type: str, query: str, policy: Policy | None = None
    ) -> list[StoredVersion]:
        """http.html#3.1.0.7.1: several matches are all deleted only when the server is
        configured for 'multiple'; otherwise 412."""
        multiple = self.settings.conditional_delete == "multiple"
        limit = MAX_CONDITIONAL_DELETE + 1 if multiple else 2

        async def txn(s: Session) -> list[StoredVersion]:
            matches = await self._match(s, resource_type, query, "url", limit, policy, "d")
            if len(matches) > 1 and not multiple:
                raise precondition_failed(
                    "The conditional delete criteria match more than one resource", "url"
                )
            if len(matches) > MAX_CONDITIONAL_DELETE:
                raise precondition_failed(
                    f"The conditional delete criteria match more than "
                    f"{MAX_CONDITIONAL_DELETE} resources",
                    "url",
                )
            writes = [self.new_version(resource_type, m.id, None, m, "DELETE") for m in matches]
            if writes:
                await self.storage.write(writes, s)
            return [w.stored() for w in writes]

        return await self._transaction(resource_type, txn)
