"""Which profiles a write must conform to, and what breaking one does (issue #14).

Two settings, read once (and checked when Settings is built, so a typo stops the
server at start rather than at the first write):

- ``FHIR_REQUIRED_PROFILES``: ``Type=url`` pairs, comma-separated (a type may be named
  several times: the resource must conform to all of its profiles). A resource of that
  type must conform whether or not its ``meta.profile`` names the profile; breaking it
  is always refused (422), whatever the enforcement mode. A required profile the server
  does not hold (or cannot use) refuses the writes of its type with a 422 that names
  it, rather than letting unchecked resources in: the setting promises conformance.
  The server logs a warning at start for each such profile.
- ``FHIR_PROFILE_ENFORCEMENT_OVERRIDES``: ``url=reject`` or ``url=warn`` pairs,
  comma-separated, overriding ``FHIR_PROFILE_ENFORCEMENT`` for the ``meta.profile``
  urls they name (the issue's "configurable per profile").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MODES = ("reject", "warn")


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        left, sep, right = part.rpartition("=") if what == "override" else part.partition("=")
        left, right = left.strip(), right.strip()
        if not sep or not left or not right:
            example = "url=warn" if what == "override" else "Patient=http://x/p"
            raise ValueError(f"{part!r} is not a valid {what} pair (expected {example})")
        out.append((left, right))
    return out


def parse_required(text: str) -> dict[str, tuple[str, ...]]:
    """``Patient=url1,Patient=url2,Observation=url3`` → {type: (urls)} (ValueError if
    malformed or a type is not an R4 resource type)."""
    from fhir_server.resource_types import is_resource_type

    out: dict[str, list[str]] = {}
    for rtype, url in _pairs(text, "required profile"):
        if not is_resource_type(rtype):
            raise ValueError(f"{rtype!r} is not an R4 resource type (in {rtype}={url})")
        urls = out.setdefault(rtype, [])
        if url not in urls:
            urls.append(url)
    return {t: tuple(u) for t, u in out.items()}


def parse_overrides(text: str) -> dict[str, str]:
    """``url=warn,url2=reject`` → {url: mode} (ValueError if malformed)."""
    out: dict[str, str] = {}
    for url, mode in _pairs(text, "override"):
        if mode not in MODES:
            raise ValueError(f"{mode!r} is not reject or warn (in {url}={mode})")
        out[url] = mode
    return out


@dataclass(frozen=True)
class Enforcement:
    """The parsed settings: ``default`` (FHIR_PROFILE_ENFORCEMENT), the per-profile
    overrides and the required profiles per type."""

    default: str = "reject"
    overrides: dict[str, str] = field(default_factory=dict)
    required: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Any) -> Enforcement:
        return cls(
            settings.profile_enforcement,
            parse_overrides(settings.profile_enforcement_overrides),
            parse_required(settings.required_profiles),
        )

    def mode(self, url: str) -> str:
        """reject or warn, for a profile named in ``meta.profile``."""
        return self.overrides.get(url, self.default)

    def required_for(self, resource: Any) -> tuple[str, ...]:
        """The required profiles of the resource's type."""
        if not isinstance(resource, dict) or not self.required:
            return ()
        return self.required.get(str(resource.get("resourceType")), ())

    def rejecting(self, resource: Any, declared: Iterable[str]) -> list[str]:
        """The profiles whose violation refuses the write: the required ones, and
        the declared ones in reject mode."""
        out = list(self.required_for(resource))
        out += [u for u in declared if u not in out and self.mode(u) == "reject"]
        return out

    def all_required(self) -> list[str]:
        return list(dict.fromkeys(u for urls in self.required.values() for u in urls))
