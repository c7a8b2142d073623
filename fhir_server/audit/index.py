"""The search index of an audit record, computed straight from its known shape.

Every read is audited, so the generic indexer (search/extract.py walks every search
parameter of the type, ~45 µs for an AuditEvent) would be a large part of a read's
cost. The records are built by events.py alone, so their shape is known: this walks
just the elements they use, through extract.py's own converters (the same
normalisation, token keys and sort keys). tests/test_audit_index.py holds the two to
the same ``sp``, ``so`` and ``comp`` over every kind of record the server writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fhir_server.search.extract import (
    Acc,
    Index,
    _canonical,
    _date,
    _reference,
    _string,
    _token_code,
    _token_coding,
    _uri,
    dedupe,
)

Converter = Callable[[Any, Acc, Any], None]
PATIENT = "Patient/"


def _store(index: Index, code: str, acc: Acc) -> None:
    """As extract._store, for parameters compared as plain values (no numbers)."""
    if acc.values:
        index.sp[code] = dedupe(acc.values)
    for suffix, extra in acc.extra.items():
        index.sp[code + suffix] = dedupe(extra)
    if acc.sort:
        low = min(acc.sort, key=_first)
        high = max(acc.sort, key=_second)
        index.so[code] = {"a": low[0], "d": high[1]}


def _first(entry: tuple[Any, ...]) -> Any:
    return entry[0]


def _second(entry: tuple[Any, ...]) -> Any:
    return entry[1]


def _add(index: Index, code: str, values: Iterable[Any], convert: Converter, root: Any) -> None:
    acc = Acc(None)
    for v in values:
        convert(v, acc, root)
    if acc.values or acc.extra:
        _store(index, code, acc)


def audit_index(resource: dict[str, Any]) -> Index:
    """``sp``/``so``/``comp`` of an AuditEvent events.py built (meta set by storage)."""
    index = Index()
    meta = resource.get("meta") or {}
    agents = resource.get("agent") or []
    entities = resource.get("entity") or []
    source = resource.get("source") or {}
    _add(index, "_lastUpdated", [meta.get("lastUpdated")], _date, resource)
    _add(index, "_profile", meta.get("profile") or [], _canonical, resource)
    _add(index, "action", [resource.get("action")], _token_code, resource)
    networks = [a["network"].get("address") for a in agents if "network" in a]
    _add(index, "address", networks, _string, resource)
    whos = [a["who"] for a in agents if "who" in a]
    _add(index, "agent", whos, _reference, resource)
    _add(index, "altid", [a.get("altId") for a in agents], _token_code, resource)
    _add(index, "date", [resource.get("recorded")], _date, resource)
    whats = [e["what"] for e in entities if "what" in e]
    _add(index, "entity", whats, _reference, resource)
    _add(index, "entity-role", [e.get("role") for e in entities], _token_coding, resource)
    _add(index, "entity-type", [e.get("type") for e in entities], _token_coding, resource)
    _add(index, "outcome", [resource.get("outcome")], _token_code, resource)
    patients = [
        w
        for w in (*whos, *whats)
        if isinstance(w.get("reference"), str) and w["reference"].startswith(PATIENT)
    ]
    _add(index, "patient", patients, _reference, resource)
    policies = [p for a in agents for p in a.get("policy") or ()]
    _add(index, "policy", policies, _uri, resource)
    _add(index, "site", [source.get("site")], _token_code, resource)
    _add(index, "source", [source.get("observer")], _reference, resource)
    _add(index, "subtype", resource.get("subtype") or [], _token_coding, resource)
    _add(index, "type", [resource.get("type")], _token_coding, resource)
    comp = [k for k in index.sp.get("patient", ()) if k.startswith(PATIENT) and k.count("/") == 1]
    index.comp = list(dict.fromkeys(comp))
    return index
