"""The search index of an audit record, computed straight from its known shape.

Every read is audited, so the generic indexer (search/extract.py walks every search
parameter of the type, ~45 µs for an AuditEvent) would be a large part of a read's
cost. The records are built by events.py alone, so their shape is known: this reads
just the elements they use and writes the same keys the generic indexer would (token
``code`` and ``system|code``, ``:text`` of displays, normalised strings with ``:exact``,
reference keys with ``:identifier``, date ranges, lowest/highest sort keys).
tests/test_audit_index.py holds the two to the same ``sp``, ``so`` and ``comp`` over
every kind of record the server writes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fhir_server.search.extract import Index, _reference_keys
from fhir_server.search.values import SEP, canonical_keys, date_value, normalize_text

PATIENT = "Patient/"


class _Param:
    """One parameter's values, suffixed values and sort candidates."""

    __slots__ = ("extra", "high", "low", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.extra: dict[str, list[Any]] = {}
        self.low: Any = None
        self.high: Any = None

    def sort(self, low: Any, high: Any) -> None:
        if self.low is None or low < self.low:
            self.low = low
        if self.high is None or high > self.high:
            self.high = high

    def token(self, system: str | None, code: Any) -> None:
        if isinstance(code, str) and code:
            self.values += (code, f"{system or ''}{SEP}{code}")
            self.sort(code, code)

    def coding(self, coding: Any) -> None:
        if isinstance(coding, dict):
            self.token(coding.get("system"), coding.get("code"))
            display = coding.get("display")
            if isinstance(display, str) and display:
                self.extra.setdefault(":text", []).append(normalize_text(display))

    def reference(self, ref: Any) -> None:
        if not isinstance(ref, dict):
            return
        text = ref.get("reference")
        if isinstance(text, str) and (keys := _reference_keys(text, None)):
            self.values += keys
            self.sort(text, text)
        ident = ref.get("identifier")
        if isinstance(ident, dict) and isinstance(value := ident.get("value"), str) and value:
            extra = self.extra.setdefault(":identifier", [])
            extra += (value, f"{ident.get('system') or ''}{SEP}{value}")

    def date(self, value: Any) -> None:
        if isinstance(value, str) and (r := _instant(value)) is not None:
            self.values.append(r)
            self.sort(r["lo"], r["hi"])

    def plain(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.values.append(value)
            self.sort(value, value)

    def store(self, index: Index, code: str) -> None:
        if self.values:
            index.sp[code] = _dedupe(self.values)
        for suffix, extra in self.extra.items():
            index.sp[code + suffix] = _dedupe(extra)
        if self.low is not None:
            index.so[code] = {"a": self.low, "d": self.high}


_MS = timedelta(milliseconds=1)


def _instant(value: str) -> dict[str, datetime] | None:
    """date_value of an instant as the server writes them (``…T03:15:00.123+00:00``,
    millisecond precision: the range is that millisecond), without the general parser."""
    if len(value) == 29 and value.endswith("+00:00") and value[19] == ".":
        lo = datetime.fromisoformat(value)
        return {"lo": lo, "hi": lo + _MS}
    return date_value(value)


class _Params(dict[str, _Param]):
    """The parameters of one index, each made on first use."""

    def __missing__(self, code: str) -> _Param:
        found = self[code] = _Param()
        return found

    def store(self, index: Index) -> None:
        for code, param in self.items():
            if param.values or param.extra:
                param.store(index, code)


def _dedupe(values: list[Any]) -> list[Any]:
    if len(values) < 2:
        return values
    if isinstance(values[0], dict):  # date ranges
        out: list[Any] = []
        for v in values:
            if v not in out:
                out.append(v)
        return out
    return list(dict.fromkeys(values))


def audit_index(resource: dict[str, Any]) -> Index:
    """``sp``/``so``/``comp`` of an AuditEvent events.py built (meta set by storage).

    What depends only on who asked and what kind of event it was (agents, source, type,
    subtype, action, outcome, profile) is computed once per such shape and reused;
    the times and the entities are indexed for each record."""
    agents = resource.get("agent") or ()
    meta = resource.get("meta") or {}
    shape = (
        tuple(_agent_key(a) for a in agents),
        _coding_key(resource.get("type")),
        tuple(_coding_key(c) for c in resource.get("subtype") or ()),
        resource.get("action"),
        resource.get("outcome"),
        tuple(meta.get("profile") or ()),
        _observer_key(resource.get("source")),
    )
    static = _static(shape, resource)
    index = Index(dict(static.sp), dict(static.so))
    params = _Params()
    p = params.__getitem__

    p("_lastUpdated").date(meta.get("lastUpdated"))
    p("date").date(resource.get("recorded"))
    patients = p("patient")
    for agent in agents:
        if _is_patient(agent.get("who")):
            patients.reference(agent["who"])
    for entity in resource.get("entity") or ():
        what = entity.get("what")
        p("entity").reference(what)
        if _is_patient(what):
            patients.reference(what)
        p("entity-role").coding(entity.get("role"))
        p("entity-type").coding(entity.get("type"))
    params.store(index)
    comp = [k for k in index.sp.get("patient", ()) if k.startswith(PATIENT) and k.count("/") == 1]
    index.comp = list(dict.fromkeys(comp))
    return index


_SHAPES: dict[tuple[Any, ...], Index] = {}
_MAX_SHAPES = 4096


def _static(shape: tuple[Any, ...], resource: dict[str, Any]) -> Index:
    """The index of the shape's elements (shared: callers copy the dicts, and nothing
    changes the lists, which only go to BSON)."""
    found = _SHAPES.get(shape)
    if found is not None:
        return found
    index = Index()
    params = _Params()
    p = params.__getitem__

    for profile in (resource.get("meta") or {}).get("profile") or ():
        for key in canonical_keys(profile):
            p("_profile").values.append(key)
        p("_profile").sort(profile, profile)
    p("action").token(None, resource.get("action"))
    p("outcome").token(None, resource.get("outcome"))
    p("type").coding(resource.get("type"))
    for subtype in resource.get("subtype") or ():
        p("subtype").coding(subtype)
    source = resource.get("source") or {}
    p("site").token(None, source.get("site"))
    p("source").reference(source.get("observer"))
    for agent in resource.get("agent") or ():
        network = agent.get("network")
        if network is not None:
            address = network.get("address")
            if isinstance(address, str) and address:
                norm = normalize_text(address)
                p("address").values.append(norm)
                p("address").extra.setdefault(":exact", []).append(address)
                p("address").sort(norm, norm)
        p("agent").reference(agent.get("who"))
        p("altid").token(None, agent.get("altId"))
        for policy in agent.get("policy") or ():
            p("policy").plain(policy)
    params.store(index)
    if len(_SHAPES) >= _MAX_SHAPES:
        _SHAPES.clear()  # tokens expire: old shapes are not asked for again
    _SHAPES[shape] = index
    return index


def _coding_key(c: Any) -> Any:
    return (c.get("system"), c.get("code"), c.get("display")) if isinstance(c, dict) else c


def _agent_key(a: dict[str, Any]) -> Any:
    who = a.get("who") or {}
    ident = who.get("identifier") or {}
    return (
        tuple(_coding_key(c) for c in (a.get("type") or {}).get("coding") or ()),
        who.get("reference"),
        ident.get("system"),
        ident.get("value"),
        a.get("altId"),
        (a.get("network") or {}).get("address"),
        tuple(a.get("policy") or ()),
    )


def _observer_key(source: Any) -> Any:
    if not isinstance(source, dict):
        return None
    observer = source.get("observer") or {}
    ident = observer.get("identifier") or {}
    return (source.get("site"), observer.get("reference"), ident.get("system"), ident.get("value"))


def _is_patient(ref: Any) -> bool:
    return (
        isinstance(ref, dict)
        and isinstance(ref.get("reference"), str)
        and ref["reference"].startswith(PATIENT)
    )
