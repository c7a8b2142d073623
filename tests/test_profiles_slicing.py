"""Slicing discriminators ``type``, ``profile`` and ``exists``, and discriminator paths
with ``ofType()``, ``extension('url')`` and ``resolve()`` (issue #14), over HTTP.

profiling.html#discriminator:
- "type: The slices are differentiated by type of the nominated element."
- "profile: The slices are differentiated by conformance of the nominated element to a
  specified profile. Note that if the path specifies an aggregation (e.g. resolve()) the
  profile applies to the referenced resource (targetProfile)."
- "exists: The slices are differentiated by the presence or absence of the nominated
  element. There SHALL be no more than two slices. The slices are differentiated by the
  fact that one must have a max of 0 and the other must have a min of 1 (or more)."
"""

from __future__ import annotations

from typing import Any

from fhir_helpers import assert_outcome, constraint_profile, expressions, observation, patient, post
from test_profiles_validation import errors, validate

CLINIC = "http://clinic.example/StructureDefinition/"


def element(ident: str, **extra: Any) -> dict[str, Any]:
    path = ".".join(part.split(":")[0] for part in ident.split("."))
    return {"id": ident, "path": path, **extra}


def profile(name: str, rtype: str, *elements: dict[str, Any]) -> dict[str, Any]:
    return constraint_profile(CLINIC + name, rtype, list(elements))


def slicing(kind: str, path: str, rules: str = "open") -> dict[str, Any]:
    return {"discriminator": [{"type": kind, "path": path}], "rules": rules}


def collection(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}", "resource": r}
            for i, r in enumerate(resources)
        ],
    }


def encounter() -> dict[str, Any]:
    return {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}}


# --- type ---------------------------------------------------------------------------------------

TYPED = profile(
    "typed-bundle",
    "Bundle",
    element("Bundle.entry", slicing=slicing("type", "resource", "closed")),
    element("Bundle.entry:patient", sliceName="patient", min=1, max="1"),
    element("Bundle.entry:patient.resource", type=[{"code": "Patient"}]),
    element("Bundle.entry:obs", sliceName="obs", min=0, max="*"),
    element("Bundle.entry:obs.resource", type=[{"code": "Observation"}]),
)


def test_type_discriminator_on_bundle_entries(client):
    assert post(client, TYPED).status_code == 201
    url = TYPED["url"]
    ok = collection(patient(), observation())
    assert errors(validate(client, "Bundle", ok, profile=url)) == []
    # no Patient: the patient slice's min 1
    found = errors(validate(client, "Bundle", collection(observation()), profile=url))
    assert expressions(found) == ["Bundle.entry"], found
    assert "Bundle.entry:patient" in found[0]["diagnostics"]
    # an Encounter matches no slice of a closed slicing
    found = errors(validate(client, "Bundle", collection(patient(), encounter()), profile=url))
    assert expressions(found) == ["Bundle.entry[1]"], found
    # two Patients: the slice's max 1
    found = errors(validate(client, "Bundle", collection(patient(), patient()), profile=url))
    assert expressions(found) == ["Bundle.entry"], found
    # and on create, through meta.profile
    claimed = {**collection(observation()), "meta": {"profile": [url]}}
    issues = assert_outcome(post(client, claimed), 422)
    assert expressions(issues) == ["Bundle.entry"]
    assert post(client, {**ok, "meta": {"profile": [url]}}).status_code == 201


COMPONENTS = profile(
    "typed-components",
    "Observation",
    element("Observation.component", slicing=slicing("type", "value")),
    element("Observation.component:measured", sliceName="measured", min=1, max="1"),
    element("Observation.component:measured.value[x]", type=[{"code": "Quantity"}]),
    element("Observation.component:note", sliceName="note", min=0, max="1"),
    element("Observation.component:note.value[x]", type=[{"code": "string"}]),
)


def component(**value: Any) -> dict[str, Any]:
    return {"code": {"text": "part"}, **value}


def test_type_discriminator_on_a_choice_element(client):
    """The type of ``value[x]`` tells the component slices apart."""
    assert post(client, COMPONENTS).status_code == 201
    url = COMPONENTS["url"]
    ok = observation(component=[component(valueQuantity={"value": 1}), component(valueString="ok")])
    assert errors(validate(client, "Observation", ok, profile=url)) == []
    two_notes = observation(component=[component(valueString="a"), component(valueString="b")])
    found = errors(validate(client, "Observation", two_notes, profile=url))
    assert sorted(expressions(found)) == ["Observation.component", "Observation.component"]
    texts = " ".join(i["diagnostics"] for i in found)
    assert "component:measured: minimum required = 1" in texts
    assert "component:note: maximum allowed = 1" in texts


# --- value through ofType() and extension('url') -----------------------------------------------

KIND = "http://clinic.example/StructureDefinition/id-kind"

OF_TYPE = profile(
    "coded-components",
    "Observation",
    element(
        "Observation.component",
        slicing=slicing("value", "value.ofType(CodeableConcept).coding.code"),
    ),
    element("Observation.component:smoker", sliceName="smoker", min=1, max="1"),
    element(
        "Observation.component:smoker.value[x]:valueCodeableConcept.coding.code",
        fixedCode="77176002",
    ),
)


def test_value_discriminator_through_of_type(client):
    assert post(client, OF_TYPE).status_code == 201
    url = OF_TYPE["url"]

    def coded(code: str) -> dict[str, Any]:
        concept = {"coding": [{"system": "http://snomed.info/sct", "code": code}]}
        return component(valueCodeableConcept=concept)

    ok = observation(component=[coded("77176002"), component(valueString="77176002")])
    assert errors(validate(client, "Observation", ok, profile=url)) == []
    # the code as a string value is not a CodeableConcept: no smoker slice
    wrong = observation(component=[coded("8517006"), component(valueString="77176002")])
    found = errors(validate(client, "Observation", wrong, profile=url))
    assert expressions(found) == ["Observation.component"], found


EXT_PATH = profile(
    "kinded-identifiers",
    "Patient",
    element(
        "Patient.identifier",
        slicing=slicing("value", f"extension('{KIND}').value", "closed"),
    ),
    element("Patient.identifier:national", sliceName="national", min=1, max="1"),
    element("Patient.identifier:national.extension:kind", sliceName="kind", min=1),
    element("Patient.identifier:national.extension:kind.value[x]", fixedCode="national"),
    element("Patient.identifier:foreign", sliceName="foreign", min=0, max="*"),
    element("Patient.identifier:foreign.extension:kind", sliceName="kind", min=1),
    element("Patient.identifier:foreign.extension:kind.value[x]", fixedCode="foreign"),
)


def kinded(kind: str, value: str) -> dict[str, Any]:
    return {"extension": [{"url": KIND, "valueCode": kind}], "value": value}


def test_value_discriminator_through_an_extension(client):
    assert post(client, EXT_PATH).status_code == 201
    url = EXT_PATH["url"]
    ok = patient(identifier=[kinded("national", "1710034065"), kinded("foreign", "A1")])
    assert errors(validate(client, "Patient", ok, profile=url)) == []
    wrong = patient(identifier=[kinded("foreign", "A1"), kinded("other", "B2")])
    found = errors(validate(client, "Patient", wrong, profile=url))
    # no national identifier; the "other" one matches no slice of the closed slicing
    assert sorted(expressions(found)) == ["Patient.identifier", "Patient.identifier[1]"], found


# --- exists -------------------------------------------------------------------------------------

EXISTS = profile(
    "assigned-identifiers",
    "Patient",
    element("Patient.identifier", slicing=slicing("exists", "assigner", "closed")),
    element("Patient.identifier:assigned", sliceName="assigned", min=0, max="1"),
    element("Patient.identifier:assigned.assigner", min=1),
    element("Patient.identifier:own", sliceName="own", min=1, max="*"),
    element("Patient.identifier:own.assigner", max="0"),
)


def test_exists_discriminator(client):
    assert post(client, EXISTS).status_code == 201
    url = EXISTS["url"]
    assigned = {"value": "1", "assigner": {"display": "Registro Civil"}}
    own = {"value": "2"}
    ok = patient(identifier=[own, assigned])
    assert errors(validate(client, "Patient", ok, profile=url)) == []
    wrong = patient(identifier=[assigned, assigned])
    found = errors(validate(client, "Patient", wrong, profile=url))
    texts = " ".join(i["diagnostics"] for i in found)
    assert expressions(found) == ["Patient.identifier", "Patient.identifier"], found
    assert "identifier:assigned: maximum allowed = 1" in texts
    assert "identifier:own: minimum required = 1" in texts
    claimed = {**wrong, "meta": {"profile": [url]}}
    assert_outcome(post(client, claimed), 422)


# --- profile ------------------------------------------------------------------------------------

IDENTIFIED = profile(
    "identified-patient",
    "Patient",
    element("Patient.identifier", min=1),
)

PROFILED = profile(
    "profiled-bundle",
    "Bundle",
    element("Bundle.entry", slicing=slicing("profile", "resource")),
    element("Bundle.entry:identified", sliceName="identified", min=1, max="1"),
    element(
        "Bundle.entry:identified.resource",
        type=[{"code": "Patient", "profile": [IDENTIFIED["url"]]}],
    ),
)


def test_profile_discriminator(client):
    assert post(client, IDENTIFIED).status_code == 201
    assert post(client, PROFILED).status_code == 201
    url = PROFILED["url"]
    identified = patient(identifier=[{"value": "1710034065"}])
    ok = collection(patient(), identified)
    assert errors(validate(client, "Bundle", ok, profile=url)) == []
    found = errors(validate(client, "Bundle", collection(patient(), patient()), profile=url))
    assert expressions(found) == ["Bundle.entry"], found
    assert "Bundle.entry:identified: minimum required = 1" in found[0]["diagnostics"]
    claimed = {**collection(patient()), "meta": {"profile": [url]}}
    assert_outcome(post(client, claimed), 422)


def test_profile_discriminator_with_an_unknown_profile_is_a_warning(client):
    sd = profile(
        "profiled-unknown",
        "Bundle",
        element("Bundle.entry", slicing=slicing("profile", "resource")),
        element("Bundle.entry:x", sliceName="x", min=1),
        element(
            "Bundle.entry:x.resource",
            type=[{"code": "Patient", "profile": [CLINIC + "not-held"]}],
        ),
    )
    assert post(client, sd).status_code == 201
    r = validate(client, "Bundle", collection(patient()), profile=sd["url"])
    assert errors(r) == []
    warnings = [i for i in r.json()["issue"] if i["severity"] == "warning"]
    assert any("not held" in i["diagnostics"] for i in warnings), warnings


GLUCOSE = profile(
    "glucose-member",
    "Observation",
    element(
        "Observation.code",
        patternCodeableConcept={"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
    ),
)

PANEL = profile(
    "glucose-panel",
    "Observation",
    element("Observation.hasMember", slicing=slicing("profile", "resolve()")),
    element(
        "Observation.hasMember:glucose",
        sliceName="glucose",
        min=1,
        max="1",
        type=[{"code": "Reference", "targetProfile": [GLUCOSE["url"]]}],
    ),
)


def test_profile_discriminator_through_resolve_of_contained(client):
    """``resolve()`` finds contained resources (references.html#contained)."""
    assert post(client, GLUCOSE).status_code == 201
    assert post(client, PANEL).status_code == 201
    url = PANEL["url"]

    def panel(code: str) -> dict[str, Any]:
        member = observation(
            id="m1", code={"coding": [{"system": "http://loinc.org", "code": code}]}
        )
        return observation(contained=[member], hasMember=[{"reference": "#m1"}])

    assert errors(validate(client, "Observation", panel("2339-0"), profile=url)) == []
    found = errors(validate(client, "Observation", panel("718-7"), profile=url))
    assert expressions(found) == ["Observation.hasMember"], found


# --- reslicing: slices within a slice -----------------------------------------------------------

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"

RESLICED = profile(
    "resliced-bp",
    "Observation",
    element("Observation.component", slicing=slicing("value", "code.coding.code")),
    element("Observation.component:sys", sliceName="sys", min=1, max="1"),
    element("Observation.component:sys.code.coding", slicing=slicing("value", "system", "closed")),
    element("Observation.component:sys.code.coding:loinc", sliceName="loinc", min=1, max="1"),
    element("Observation.component:sys.code.coding:loinc.system", fixedUri=LOINC),
    element("Observation.component:sys.code.coding:loinc.code", fixedCode="8480-6"),
)


def test_rules_inside_a_reslice(client):
    """profiling.html#reslicing: a slice's element may itself be sliced; its slices'
    rules hold within each item of the outer slice."""
    assert post(client, RESLICED).status_code == 201
    url = RESLICED["url"]

    def systolic(*codings: dict[str, Any]) -> dict[str, Any]:
        return observation(
            component=[{"code": {"coding": list(codings)}, "valueQuantity": {"value": 120}}]
        )

    loinc = {"system": LOINC, "code": "8480-6"}
    assert errors(validate(client, "Observation", systolic(loinc), profile=url)) == []
    # the inner slicing is closed: a SNOMED coding in the systolic component
    extra = systolic(loinc, {"system": SNOMED, "code": "271649006"})
    found = errors(validate(client, "Observation", extra, profile=url))
    assert expressions(found) == ["Observation.component[0].code.coding[1]"], found
    assert "component:sys.code.coding" in found[0]["diagnostics"]
    # the inner slice's max 1
    twice = systolic(loinc, dict(loinc))
    found = errors(validate(client, "Observation", twice, profile=url))
    assert expressions(found) == ["Observation.component[0].code.coding"], found
    assert "coding:loinc: maximum allowed = 1" in found[0]["diagnostics"]


# --- what a match already proved ----------------------------------------------------------------

MRN = "http://clinic.example/mrn"
MRN_PATIENT = profile(
    "mrn-patient",
    "Patient",
    element("Patient.identifier", slicing=slicing("value", "system")),
    element("Patient.identifier:mrn", sliceName="mrn", min=1, max="1"),
    element("Patient.identifier:mrn.system", min=1, fixedUri=MRN),
    element("Patient.identifier:mrn.value", min=1),
    element("Patient.identifier:mrn.use", fixedCode="official"),
)


def test_a_match_skips_only_the_comparison_it_made(client):
    """The slice's fixed ``system`` is what its value discriminator compares, so an item
    in the slice meets it (and its min 1: system is single-valued) without a second
    look; the slice's other rules (value min 1, fixed use) are still checked on it."""
    assert post(client, MRN_PATIENT).status_code == 201
    url = MRN_PATIENT["url"]
    good = {**patient(), "identifier": [{"system": MRN, "value": "123", "use": "official"}]}
    assert errors(validate(client, "Patient", good, profile=url)) == []
    no_value = {**patient(), "identifier": [{"system": MRN, "use": "official"}]}
    found = errors(validate(client, "Patient", no_value, profile=url))
    assert expressions(found) == ["Patient.identifier[0].value"], found
    wrong_use = {**patient(), "identifier": [{"system": MRN, "value": "1", "use": "usual"}]}
    found = errors(validate(client, "Patient", wrong_use, profile=url))
    assert expressions(found) == ["Patient.identifier[0].use"], found
    # another system matches no slice: the mrn slice's min 1 fails on the list
    other = {**patient(), "identifier": [{"system": "http://x", "value": "1"}]}
    found = errors(validate(client, "Patient", other, profile=url))
    assert expressions(found) == ["Patient.identifier"], found
