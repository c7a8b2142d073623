"""The profiles this server holds, compiled once and cached per process (issue #14).

A profile is a stored StructureDefinition, found by its canonical url (``url`` or
``url|version``; without a version the newest). Compiled profiles are cached by (url,
version, meta.versionId, meta.lastUpdated), so a new version of a profile is compiled
once, on first use. Which version a url names is cached too, until a StructureDefinition
is written by any process: ``resolve`` first reads the newest StructureDefinition version
in ``history`` (one indexed lookup, as terminology/membership.py does for value sets), and
a different one drops the url cache. A write that commits after a later-stamped one went
unseen would be missed by that check, so the url cache is also dropped after
``MAX_AGE`` seconds. Callers ask only when a resource declares ``meta.profile`` (or
``$validate`` names one): a write without profiles costs no round trip at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from fhir_server.offload import checkpoint
from fhir_server.outcome import Issue
from fhir_server.shared_read import SharedRead
from fhir_server.storage import Storage
from fhir_server.validation import DEFAULT_MAX_ISSUES
from profiles.compile import CompiledProfile, ProfileError, compile_profile
from profiles.extensions import Found, extension_issues
from terminology.resolve import Resolver

log = logging.getLogger(__name__)

MAX_AGE = 120.0  # seconds the url cache is trusted without a newer stamp
MAX_COMPILED = 256  # compiled profiles kept (least recently used dropped first)
MAX_DEPTH = 10  # profiles of profiles followed through baseDefinition

# What a canonical url resolves to: the profile and the profiles it derives from (a
# differential over another profile), None when not held, a ProfileError when unusable.
Resolved = list[CompiledProfile] | ProfileError | None


def declared_profiles(resource: Any) -> list[str]:
    """The canonical urls in the resource's ``meta.profile`` (empty: none)."""
    if not isinstance(resource, dict):
        return []
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return []
    profiles = meta.get("profile")
    if not isinstance(profiles, list):
        return []
    return [p for p in profiles if isinstance(p, str)]


def profile_issues(
    resource: Any,
    profiles: Iterable[CompiledProfile],
    severity: str = "error",
    max_issues: int = DEFAULT_MAX_ISSUES,
) -> list[Issue]:
    """The issues of ``resource`` against each profile; errors become ``severity``
    (``warning`` when FHIR_PROFILE_ENFORCEMENT=warn). At most ``max_issues``
    (FHIR_VALIDATION_MAX_ISSUES), then a note that there may be more, as the base pass."""
    out: list[Issue] = []
    for profile in profiles:
        try:
            issues = profile.validate(resource)
        except Exception as exc:  # never crash on input: report it
            log.exception("profile validation failed")
            message = f"The resource could not be validated against {profile.url} ({exc!r})"
            issues = [Issue("exception", message)]
        for issue in issues:
            if issue.severity == "error" and severity != "error":
                issue = Issue(issue.code, issue.diagnostics, severity, issue.expression)
            if len(out) >= max_issues:
                message = f"Validation stopped after {max_issues} issues; there may be more"
                out.append(Issue("too-costly", message, severity="information"))
                return out
            out.append(issue)
    return out


def all_issues(
    resource: Any,
    profiles: Iterable[CompiledProfile],
    found: list[Found],
    definitions: dict[str, Resolved],
    severity: str = "error",
    unknown: str = "warn",
    max_issues: int = DEFAULT_MAX_ISSUES,
) -> list[Issue]:
    """``profile_issues`` (errors: the caller passes only the profiles that refuse),
    then those of the resource's extensions against their definitions
    (profiles/extensions.py) at ``severity``, bounded together."""
    out = profile_issues(resource, profiles, "error", max_issues)
    if found and not any(i.code == "too-costly" for i in out):
        for issue in extension_issues(resource, found, definitions, unknown, severity):
            if len(out) >= max_issues:
                message = f"Validation stopped after {max_issues} issues; there may be more"
                out.append(Issue("too-costly", message, severity="information"))
                break
            out.append(issue)
    return out


def first_violation(
    work: Iterable[tuple[int, Any, list[CompiledProfile], list[Found]]],
    max_issues: int,
    definitions: dict[str, Resolved] | None = None,
    unknown: str = "warn",
    severity: str = "error",
) -> tuple[int, list[Issue]] | None:
    """The first (index, issues) whose resource breaks one of its profiles or the
    definition of one of its extensions: the errors, and the note that validation
    stopped at the issue limit if it did. Pool work: it stops between resources when
    its request is cancelled."""
    for index, resource, profiles, found in work:
        checkpoint()
        issues = all_issues(
            resource, profiles, found, definitions or {}, severity, unknown, max_issues
        )
        errors = [x for x in issues if x.severity in ("error", "fatal")]
        if errors:
            return index, errors + [x for x in issues if x.code == "too-costly"]
    return None


def held(found: dict[str, Resolved], urls: Iterable[str]) -> list[CompiledProfile]:
    """The usable profiles among ``urls`` (unknown or unusable ones are left out), with
    the profiles they derive from."""
    out: list[CompiledProfile] = []
    for u in urls:
        chain = found.get(u)
        if isinstance(chain, list):
            out.extend(p for p in chain if p not in out)
    return out


class ProfileRegistry:
    """One process's compiled profiles (see the module docstring)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.resolver = Resolver(storage)
        self.compiled: OrderedDict[tuple[Any, ...], CompiledProfile | ProfileError] = OrderedDict()
        self.by_url: dict[str, tuple[Any, ...] | None] = {}  # canonical -> compiled key
        self.stamp: tuple[Any, ...] | None = None
        self.taken = float("-inf")
        # the newest StructureDefinition version, read after the caller began; callers
        # that start while one read is in flight share the next (shared_read.py)
        self._stamps: SharedRead[tuple[Any, ...] | None] = SharedRead(
            lambda: storage.newest_version(["StructureDefinition"])
        )
        self.lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget which version each url names (a StructureDefinition was written)."""
        self.by_url = {}
        self.taken = float("-inf")

    async def resolve(self, urls: Iterable[str]) -> dict[str, Resolved]:
        """Each url's compiled profile, with those it derives from: None when the server
        holds no such StructureDefinition, a ProfileError when it cannot be used. One
        round trip to check freshness, more only for urls not seen since."""
        wanted = list(dict.fromkeys(urls))
        if not wanted:
            return {}
        stamp = await self._stamps.get()
        if stamp != self.stamp or time.monotonic() - self.taken > MAX_AGE:
            self.invalidate()
            self.stamp, self.taken = stamp, time.monotonic()
        found = await asyncio.gather(*(self._chain(url) for url in wanted))
        return dict(zip(wanted, found, strict=True))

    async def _chain(
        self, url: str, depth: int = 0, seen: frozenset[str] = frozenset()
    ) -> Resolved:
        """The profile and, for a differential over another profile, that profile's
        chain (it must be held too: otherwise the profile cannot be checked). The
        profiles its slices name are linked into it (``CompiledProfile.linked``)."""
        found = await self._one(url)
        if not isinstance(found, CompiledProfile):
            return found
        seen = seen | {url}
        for need in found.needs - seen:
            if depth < MAX_DEPTH:
                chain = await self._chain(need, depth + 1, seen)
                if isinstance(chain, list):
                    found.linked[need] = chain
                else:
                    found.linked.pop(need, None)
        if found.base is None:
            return [found]
        if depth >= MAX_DEPTH:
            return ProfileError(f"{url}: more than {MAX_DEPTH} levels of baseDefinition")
        base = await self._chain(found.base, depth + 1, seen)
        if base is None:
            return ProfileError(f"{url} derives from {found.base}, which this server does not hold")
        if isinstance(base, ProfileError):
            return base
        return [found, *base]

    async def _one(self, url: str) -> CompiledProfile | ProfileError | None:
        if url in self.by_url:
            key = self.by_url[url]
            if key is None:
                return None
            hit = self.compiled.get(key)
            if hit is not None:
                self.compiled.move_to_end(key)
                return hit
        stored = await self.resolver.by_url("StructureDefinition", url, None, {})
        if stored is None:
            self.by_url[url] = None
            return None
        sd = stored.resource
        meta = sd.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        key = (
            sd.get("url"),
            sd.get("version"),
            stored.id,
            stored.version_id,
            meta.get("lastUpdated"),
        )
        hit = self.compiled.get(key)
        if hit is None:
            try:
                hit = compile_profile(sd)
            except ProfileError as exc:
                hit = exc
            self.compiled[key] = hit
            while len(self.compiled) > MAX_COMPILED:
                self.compiled.popitem(last=False)
        self.by_url[url] = key
        return hit

    async def stamp_now(self) -> tuple[Any, ...] | None:
        """The newest StructureDefinition version anywhere (changes on every write of
        one, by any process): what caches derived from the stored profiles key on."""
        return await self._stamps.get()


def required_gaps(
    found: dict[str, Resolved], resource: Any, required: Iterable[str]
) -> list[Issue]:
    """An error for each required profile (FHIR_REQUIRED_PROFILES) the server does not
    hold or cannot use: the write is refused rather than let in unchecked."""
    out: list[Issue] = []
    for url in required:
        chain = found.get(url)
        if isinstance(chain, list):
            continue
        why = "does not hold it" if chain is None else f"cannot use it ({chain})"
        message = (
            f"Resources of this type must conform to the profile {url} "
            f"(FHIR_REQUIRED_PROFILES), but this server {why}"
        )
        where = str(resource.get("resourceType")) if isinstance(resource, dict) else "$this"
        out.append(Issue("processing", message, expression=(where,)))
    return out


async def warn_unheld_required(registry: ProfileRegistry, required: Iterable[str]) -> list[str]:
    """Log a warning at start for each required profile the server does not hold or
    cannot use (its type's writes are refused until it is installed); the urls."""
    urls = list(required)
    found = await registry.resolve(urls)
    missing = [u for u in urls if not isinstance(found.get(u), list)]
    for url in missing:
        log.warning(
            "FHIR_REQUIRED_PROFILES names %s, which this server does not hold or cannot "
            "use (%s): writes of its type are refused until it is installed",
            url,
            found.get(url),
        )
    return missing
