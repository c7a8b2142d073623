"""The R4 Bundle invariants (bundle.html#invs), checked natively rather than by FHIRPath.

Run by the validation pass on every Bundle it meets (top level, or nested in a Bundle or
Parameters), after the structural walk, and only on Bundles: other resources pay nothing.
The values are read defensively, as the structural pass reports wrong shapes itself.

Besides bdl-1 .. bdl-12 (bdl-6 does not exist in R4): Bundle.entry.fullUrl is absolute
(an absolute URL or a urn:uuid:/urn:oid:, bundle.html#bundle-unique), at most one
Bundle.link has relation 'self', and a fullUrl that looks like a RESTful URL
(references.html#regex) ends with the entry resource's id (Bundle.entry.fullUrl:
"the 'id' portion of the fullUrl SHALL end with the Resource.id").

A transaction POSTed to [base] is not given to validate_resource as a whole: the
TransactionService parses it (bdl-3 and bdl-7 with its own messages, which come first),
then runs these rules on it (400 when broken), then validates each entry's resource. A
batch is its entries performed one by one (api/bundles.py), each failing on its own, so
it is not checked as a whole. A Bundle stored with POST [base]/Bundle, or checked with
$validate, goes through validate_resource, which runs these rules.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_server.outcome import Issue
from fhir_server.resource_types import is_resource_type

BDL = {
    "bdl-1": "total only when a search or history",
    "bdl-2": "entry.search only when a search",
    "bdl-3": "entry.request mandatory for batch/transaction/history, otherwise prohibited",
    "bdl-4": (
        "entry.response mandatory for batch-response/transaction-response/history, "
        "otherwise prohibited"
    ),
    "bdl-5": "must be a resource unless there's a request or response",
    "bdl-7": (
        "FullUrl must be unique in a bundle, or else entries with the same fullUrl must "
        "have different meta.versionId (except in history bundles)"
    ),
    "bdl-8": "fullUrl cannot be a version specific reference",
    "bdl-9": "A document must have an identifier with a system and a value",
    "bdl-10": "A document must have a date",
    "bdl-11": "A document must have a Composition as the first resource",
    "bdl-12": "A message must have a MessageHeader as the first resource",
}

REQUEST_TYPES = frozenset({"batch", "transaction", "history"})
RESPONSE_TYPES = frozenset({"batch-response", "transaction-response", "history"})

# An absolute URL has a scheme and an authority; URNs only as urn:uuid: or urn:oid:.
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#]+\S*|urn:(uuid|oid):\S+")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _bdl(key: str, where: str, detail: str = "") -> Issue:
    message = f"{key}: {BDL[key]}" + (f" ({detail})" if detail else "")
    return Issue("invariant", message, expression=(where,))


def bundle_issues(bundle: dict[str, Any], path: str) -> list[Issue]:
    """The Bundle rules ``bundle`` breaks, with expressions under ``path``."""
    issues: list[Issue] = []
    kind = bundle.get("type")
    kind = kind if isinstance(kind, str) else None
    entries = bundle.get("entry")
    entries = entries if isinstance(entries, list) else []
    if kind is not None:
        _bundle_level(bundle, kind, entries, path, issues)
    _self_links(bundle.get("link"), path, issues)
    seen: dict[tuple[str, Any], int] = {}
    for i, entry in enumerate(entries):
        if isinstance(entry, dict):
            _entry(entry, kind, f"{path}.entry[{i}]", i, seen, issues)
    return issues


def _bundle_level(
    bundle: dict[str, Any], kind: str, entries: list[Any], path: str, issues: list[Issue]
) -> None:
    if "total" in bundle and kind not in ("searchset", "history"):
        issues.append(_bdl("bdl-1", f"{path}.total", f"type is {kind!r}"))
    if kind == "document":
        identifier = bundle.get("identifier")
        if not (
            isinstance(identifier, dict)
            and isinstance(identifier.get("system"), str)
            and isinstance(identifier.get("value"), str)
        ):
            issues.append(_bdl("bdl-9", f"{path}.identifier"))
        if not isinstance(bundle.get("timestamp"), str):
            issues.append(_bdl("bdl-10", f"{path}.timestamp"))
        _first_resource("bdl-11", "Composition", entries, path, issues)
    elif kind == "message":
        _first_resource("bdl-12", "MessageHeader", entries, path, issues)


def _first_resource(
    key: str, resource_type: str, entries: list[Any], path: str, issues: list[Issue]
) -> None:
    first = entries[0] if entries else None
    resource = first.get("resource") if isinstance(first, dict) else None
    actual = resource.get("resourceType") if isinstance(resource, dict) else None
    if actual != resource_type:
        where = f"{path}.entry[0].resource" if resource is not None else f"{path}.entry"
        detail = f"found {actual}" if isinstance(actual, str) else "there is none"
        issues.append(_bdl(key, where, detail))


def _self_links(links: Any, path: str, issues: list[Issue]) -> None:
    """Bundle.link: 'self' is the URL this Bundle is (http.html#search), so only one."""
    if not isinstance(links, list):
        return
    first: int | None = None
    for i, link in enumerate(links):
        if isinstance(link, dict) and link.get("relation") == "self":
            if first is None:
                first = i
                continue
            message = f"A Bundle has at most one link with relation 'self' (also link[{first}])"
            issues.append(Issue("invariant", message, expression=(f"{path}.link[{i}]",)))


def _entry(
    entry: dict[str, Any],
    kind: str | None,
    where: str,
    index: int,
    seen: dict[tuple[str, Any], int],
    issues: list[Issue],
) -> None:
    has_request, has_response = "request" in entry, "response" in entry
    resource = entry.get("resource")
    if kind is not None:
        if "search" in entry and kind != "searchset":
            issues.append(_bdl("bdl-2", f"{where}.search", f"type is {kind!r}"))
        if has_request != (kind in REQUEST_TYPES):
            detail = "missing" if not has_request else f"not allowed in a {kind}"
            issues.append(_bdl("bdl-3", f"{where}.request", detail))
        if has_response != (kind in RESPONSE_TYPES):
            detail = "missing" if not has_response else f"not allowed in a {kind}"
            issues.append(_bdl("bdl-4", f"{where}.response", detail))
    if resource is None and not has_request and not has_response:
        issues.append(_bdl("bdl-5", where))
    full_url = entry.get("fullUrl")
    if not isinstance(full_url, str):
        return
    url_path = f"{where}.fullUrl"
    urn = full_url.startswith(("urn:uuid:", "urn:oid:"))  # the usual case, and cheap
    if not urn and _ABSOLUTE.fullmatch(full_url) is None:
        message = (
            f"fullUrl {full_url!r} must be absolute: a URL with a scheme, or a urn:uuid: or "
            "urn:oid: (bundle.html#bundle-unique)"
        )
        issues.append(Issue("value", message, expression=(url_path,)))
    if "/_history/" in full_url:
        issues.append(_bdl("bdl-8", url_path))
    if not urn and isinstance(resource, dict):
        _agrees_with_id(full_url, resource, url_path, issues)
    if kind != "history":
        meta = resource.get("meta") if isinstance(resource, dict) else None
        version = meta.get("versionId") if isinstance(meta, dict) else None
        key = (full_url, version if isinstance(version, str) else None)
        other = seen.setdefault(key, index)
        if other != index:
            issues.append(_bdl("bdl-7", url_path, f"also the fullUrl of entry[{other}]"))


def _agrees_with_id(
    full_url: str, resource: dict[str, Any], where: str, issues: list[Issue]
) -> None:
    """A RESTful fullUrl ([base]/Type/id[/_history/vid], references.html#regex) names
    the resource's id."""
    parts = full_url.split("/_history/", 1)[0].rsplit("/", 2)
    if len(parts) != 3 or not is_resource_type(parts[1]) or _ID.fullmatch(parts[2]) is None:
        return
    resource_id = resource.get("id")
    if isinstance(resource_id, str) and resource_id != parts[2]:
        message = (
            f"fullUrl {full_url!r} ends with id {parts[2]!r} but the resource's id is "
            f"{resource_id!r}: the fullUrl SHALL agree with Resource.id"
        )
        issues.append(Issue("value", message, expression=(where,)))
