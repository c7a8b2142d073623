"""Reference rewriting for transactions (http.html#trules): every link that names a
bundle entry's fullUrl becomes the entry's new ``Type/id``. Driven by the element model,
so only elements that are links (Reference.reference, uri/url/oid/uuid values, narrative
href/src) are touched; canonicals and Extension.url are left alone."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from fhir_server.resource_types import is_resource_type
from fhir_server.validation.model import COMPLEX, PRIMITIVE, RESOURCE, TypeInfo, model


def references(value: Any) -> Iterable[str]:
    """Every Reference.reference string at any depth (extensions, contained, ...)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from references(v)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def conditional_references(resource: Any) -> list[str]:
    """The "[type]?[criteria]" references of a resource, in order, without repeats."""
    out: list[str] = []
    for ref in references(resource):
        type_, sep, _ = ref.partition("?")
        if sep and is_resource_type(type_) and ref not in out:
            out.append(ref)
    return out


def rewrite_references(value: Any, mapping: Mapping[str, str]) -> Any:
    """A copy with every Reference.reference found in ``mapping`` replaced."""
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


# http.html#trules: "Servers SHALL replace all matching links in the bundle, whether
# they are found in the resource ids, resource references, elements of type uri, url,
# oid, uuid, and <a href="" & <img src="" in the narrative. Elements of type canonical
# are not replaced."
_LINK_TYPES = frozenset({"uri", "url", "oid", "uuid"})
_NARRATIVE_LINK = re.compile(r"""(\b(?:href|src)\s*=\s*)(["'])(.*?)\2""", re.DOTALL)


def rewrite_links(resource: dict[str, Any], links: Mapping[str, str]) -> dict[str, Any]:
    """A copy of a (validated) resource with every link to a bundle entry's fullUrl
    (urn:uuid:, urn:oid: or absolute) replaced by the entry's ``Type/id``: references,
    uri/url/oid/uuid elements (not Extension.url, which names the extension) and the
    narrative's href and src attributes, at any depth."""
    if not links:
        return resource
    return _walk(resource, _resource_info(resource), links)


def _resource_info(value: Any) -> TypeInfo | None:
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        m = model()
        if value["resourceType"] in m.resources:
            return m.types.get(value["resourceType"])
    return None


def _walk(value: Any, info: TypeInfo | None, links: Mapping[str, str]) -> Any:
    """``value`` with its links rewritten; unchanged parts are shared, not copied."""
    if isinstance(value, list):
        walked = [_walk(v, info, links) for v in value]
        return value if all(a is b for a, b in zip(walked, value, strict=True)) else walked
    if not isinstance(value, dict):
        return value
    if info is None:  # not in the model: at least its references
        return rewrite_references(value, links)
    out: dict[str, Any] | None = None
    for key, v in value.items():
        new = _walk_element(info, key, v, links)
        if new is not v:
            if out is None:
                out = dict(value)
            out[key] = new
    return value if out is None else out


def _walk_element(info: TypeInfo, key: str, v: Any, links: Mapping[str, str]) -> Any:
    el = info.elements.get(key)
    if el is None:
        if key.startswith("_") and key[1:] in info.elements:  # a primitive's extensions
            return _walk(v, model().types.get("Element"), links)
        return v
    if el.kind == PRIMITIVE:
        if (info.name == "Reference" and key == "reference") or (
            el.type_name in _LINK_TYPES and not (info.name == "Extension" and key == "url")
        ):
            return _link(v, links)
        if info.name == "Narrative" and key == "div" and isinstance(v, str):
            div = _NARRATIVE_LINK.sub(
                lambda m: m.group(1) + m.group(2) + links.get(m.group(3), m.group(3)) + m.group(2),
                v,
            )
            return v if div == v else div
        return v
    if el.kind == COMPLEX:
        return _walk(v, el.info, links)
    if el.kind == RESOURCE:
        items = v if isinstance(v, list) else [v]
        walked = [_walk(item, _resource_info(item), links) for item in items]
        if all(a is b for a, b in zip(walked, items, strict=True)):
            return v
        return walked if isinstance(v, list) else walked[0]
    return v


def _link(value: Any, links: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return links.get(value, value)
    if isinstance(value, list):
        linked = [_link(v, links) for v in value]
        return value if linked == value else linked
    return value
