"""Loading a mapping file: YAML, checked against ``mapping.schema.json``, compiled.

A mapping names the legacy ``source`` (it goes into the default identifier systems
``urn:legacy:<source>:<table>``), the time zone of its naive timestamps, code maps, and
an ordered list of resource mappings. Order matters: a resource mapping may reference
(``ref()``) only mappings listed before it, so that every conditional reference the
importer sends resolves to a resource already written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import yaml

from importers.mapping.codemaps import CodeMapError, code_maps, with_overrides
from importers.mapping.expressions import Expression, Functions, MappingError, compile_expression
from importers.mapping.template import children_of, compile_template, expressions_of

BUILTIN = ("clinica", "historial_medico")
DEFAULT_TZ = "America/Guayaquil"
FUNCTIONS = frozenset(Functions("UTC", {}).table())


@dataclass(frozen=True, slots=True)
class Child:
    """Rows of another table or query attached to each row by a parent key column."""

    name: str
    table: str | None
    query: str | None
    parent: str
    order: str | None


@dataclass(slots=True)
class ResourceMapping:
    name: str
    resource_type: str
    table: str | None
    query: str | None
    key: str
    system: str
    updated: str | None
    when: Expression | None
    dedupe: Expression | None
    template: Any
    children: dict[str, Child]
    names: frozenset[str] = frozenset()
    refs: frozenset[str] = frozenset()
    identity: str = "identifier"

    def where(self) -> str:
        return self.table or self.name


@dataclass(slots=True)
class Mapping:
    name: str
    source: str
    timezone: str
    codes: dict[str, dict[str, Any]]
    resources: list[ResourceMapping]
    users: dict[str, Any] | None = None
    path: str = ""
    by_name: dict[str, ResourceMapping] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {r.name: r for r in self.resources}


def schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("mapping.schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("importers").joinpath("mappings", f"{name}.yaml")))


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise MappingError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:  # one line: where and what, not PyYAML's drawing
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MappingError(f"{path}: not valid YAML or JSON ({at}{problem})") from None


def load_mapping(name_or_path: str, overrides: Path | None = None) -> Mapping:
    """A built-in mapping by name, or a mapping file; with ``overrides``, a file whose
    ``codes:`` entries complete or replace the mapping's code maps (what
    ``import profile --skeleton`` wrote, filled in)."""
    path = builtin_path(name_or_path) if name_or_path in BUILTIN else Path(name_or_path)
    doc = _read_yaml(path, "mapping")
    if overrides is not None:
        extra = _read_yaml(overrides, "mapping overrides")
        if not (isinstance(extra, dict) and isinstance(extra.get("codes"), dict)):
            raise MappingError(f"{overrides}: expected a 'codes:' table of code maps")
        if isinstance(doc, dict):
            try:
                doc["codes"] = with_overrides(doc.get("codes") or {}, extra["codes"])
            except CodeMapError as exc:
                raise MappingError(f"{overrides}: {exc}") from None
    mapping = parse_mapping(doc, str(path))
    mapping.path = str(path)
    return mapping


def _validate(doc: Any, where: str) -> None:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        path = "/".join(str(p) for p in first.absolute_path) or "(top)"
        raise MappingError(f"{where}: {path}: {first.message}")


def parse_mapping(doc: Any, where: str = "mapping") -> Mapping:
    _validate(doc, where)
    tz = doc.get("timezone", DEFAULT_TZ)
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise MappingError(f"{where}: unknown time zone {tz!r}") from None
    source = doc["source"]
    codes = doc.get("codes", {})
    try:
        code_maps(codes)
    except CodeMapError as exc:
        raise MappingError(f"{where}: {exc}") from None
    seen: set[str] = set()
    out: list[ResourceMapping] = []
    for i, r in enumerate(doc["resources"]):
        at = f"{where}: resources[{i}] ({r['name']})"
        if r["name"] in seen:
            raise MappingError(f"{at}: the name is used twice")
        table = r.get("table")
        template = compile_template(r["fhir"], FUNCTIONS, f"{at}.fhir")
        when = compile_expression(r["when"], FUNCTIONS, f"{at}.when") if "when" in r else None
        dedupe = (
            compile_expression(r["dedupe"], FUNCTIONS, f"{at}.dedupe") if "dedupe" in r else None
        )
        children = {
            name: Child(name, c.get("table"), c.get("query"), c["parent"], c.get("order"))
            for name, c in r.get("children", {}).items()
        }
        unknown = children_of(template) - set(children)
        if unknown:
            raise MappingError(f"{at}: $each of undeclared children {sorted(unknown)}")
        exprs = expressions_of(template) + [e for e in (when, dedupe) if e is not None]
        own = expressions_of(template, children=False) + [e for e in (when, dedupe) if e]
        names = frozenset(n for e in own for n in e.names)
        refs = frozenset(n for e in exprs for n in e.refs)
        for ref in refs:
            if ref not in seen:
                raise MappingError(
                    f"{at}: ref({ref!r}) must name a resource mapping listed before this one"
                )
        out.append(
            ResourceMapping(
                name=r["name"],
                resource_type=r["resource"],
                table=table,
                query=r.get("query"),
                key=r["key"],
                system=r.get("system") or f"urn:legacy:{source}:{table or r['name']}",
                updated=r.get("updated"),
                when=when,
                dedupe=dedupe,
                template=template,
                children=children,
                names=names,
                refs=refs,
                identity=r.get("identity", "identifier"),
            )
        )
        seen.add(r["name"])
    return Mapping(doc["name"], source, tz, codes, out, doc.get("users"))
