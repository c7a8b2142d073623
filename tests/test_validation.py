"""validate_resource: hand-built resources with known answers (no MongoDB needed)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from fhir_server.jsonio import parse_json
from fhir_server.outcome import Issue
from fhir_server.resource_types import resource_types
from fhir_server.validation import r4b, validate_resource
from fhir_server.validation.model import model

XHTML_DIV = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Peter James Chalmers</p></div>'


def found(resource: Any, expected_type: str | None = None) -> set[tuple[str, str]]:
    """(issue code, expression) of every issue; asserts the Issue shape on the way."""
    issues = validate_resource(resource, expected_type)
    for issue in issues:
        assert isinstance(issue, Issue)
        assert issue.severity in ("error", "warning")
        assert issue.diagnostics and "pydantic" not in issue.diagnostics
        assert isinstance(issue.expression, tuple)
    return {(i.code, i.expression[0] if i.expression else "") for i in issues}


def patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **elements}


def observation(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **elements}


def full_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "example-1.a",
        "meta": {"versionId": "1", "lastUpdated": "2020-01-01T10:00:00.123+01:00"},
        "text": {"status": "generated", "div": XHTML_DIV},
        "contained": [{"resourceType": "Organization", "id": "org", "name": "Acme"}],
        "extension": [{"url": "http://example.org/ext", "valueCode": "x"}],
        "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595", "value": "12345"}],
        "active": True,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "rank": 1}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1974-12-25T14:35:45-05:00",
                }
            ]
        },
        "deceasedBoolean": False,
        "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille"}],
        "contact": [
            {
                "relationship": [{"coding": [{"system": "http://x.org", "code": "N"}]}],
                "name": {"family": "du Marché"},
                "gender": "female",
            }
        ],
        "communication": [{"language": {"text": "English"}, "preferred": True}],
        "managingOrganization": {"reference": "#org"},
    }


# --- valid resources ------------------------------------------------------------------


def test_a_full_patient_is_valid() -> None:
    assert validate_resource(full_patient()) == []
    assert validate_resource(full_patient(), "Patient") == []


def test_parsed_json_with_decimals_is_valid() -> None:
    body = b"""{"resourceType": "Observation", "status": "final", "code": {"text": "w"},
        "valueQuantity": {"value": 1.50, "unit": "kg"},
        "referenceRange": [{"low": {"value": 1e3}, "high": {"value": 2000}}]}"""
    assert validate_resource(parse_json(body)) == []


def test_validation_does_not_change_the_resource() -> None:
    resource = full_patient()
    resource["contained"].append({"resourceType": "Patient", "foo": 1})
    before = copy.deepcopy(resource)
    validate_resource(resource)
    assert resource == before


# --- top-level shape ------------------------------------------------------------------


@pytest.mark.parametrize("value", [[1, 2], "Patient", None, 5, True, Decimal("1.5")])
def test_a_resource_must_be_an_object(value: Any) -> None:
    assert found(value) == {("structure", "")}


@pytest.mark.parametrize(
    ("resource", "code"),
    [
        ({}, "required"),
        ({"id": "1"}, "required"),
        ({"resourceType": 5}, "structure"),
        ({"resourceType": None}, "required"),
        ({"resourceType": "Foo"}, "not-supported"),
        ({"resourceType": "patient"}, "not-supported"),
        ({"resourceType": "Citation"}, "not-supported"),  # R4B/R5 only
    ],
)
def test_resource_type_is_checked(resource: dict[str, Any], code: str) -> None:
    assert found(resource) == {(code, "")}


def test_expected_type_must_match() -> None:
    assert found(patient(), "Observation") == {("invalid", "")}
    assert found(patient(), "Patient") == set()


@pytest.mark.parametrize("bad_id", ["a b", "a/b", "a" * 65, "é", "", 5, ["a"]])
def test_bad_ids(bad_id: Any) -> None:
    issues = found(patient(id=bad_id))
    assert {e for _, e in issues} == {"Patient.id"}


def test_a_64_character_id_is_fine() -> None:
    assert found(patient(id="A-z.0" + "a" * 59)) == set()


# --- primitive JSON types ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("elements", "expression"),
    [
        ({"active": "true"}, "Patient.active"),
        ({"active": 1}, "Patient.active"),
        ({"multipleBirthInteger": Decimal("1.0")}, "Patient.multipleBirth.ofType(integer)"),
        ({"multipleBirthInteger": "2"}, "Patient.multipleBirth.ofType(integer)"),
        ({"multipleBirthInteger": True}, "Patient.multipleBirth.ofType(integer)"),
        ({"multipleBirthInteger": 2**31}, "Patient.multipleBirth.ofType(integer)"),
        ({"birthDate": 1974}, "Patient.birthDate"),
        ({"name": [{"given": [1]}]}, "Patient.name[0].given[0]"),
        ({"telecom": [{"rank": 0}]}, "Patient.telecom[0].rank"),  # positiveInt
        ({"telecom": [{"rank": 1.5}]}, "Patient.telecom[0].rank"),
        ({"photo": [{"size": -1}]}, "Patient.photo[0].size"),  # unsignedInt
        ({"photo": [{"contentType": "image/png", "data": "not base64!"}]}, "Patient.photo[0].data"),
        ({"birthDate": "1974-13-01"}, "Patient.birthDate"),
        ({"birthDate": "2021-02-29"}, "Patient.birthDate"),  # caught by fhir.resources
        ({"implicitRules": "http://a b"}, "Patient.implicitRules"),
        ({"language": "en  US"}, "Patient.language"),
        ({"text": {"status": "generated", "div": "<p>hi</p>"}}, "Patient.text.div"),
    ],
)
def test_primitive_values(elements: dict[str, Any], expression: str) -> None:
    issues = found(patient(**elements))
    assert {e for _, e in issues} == {expression}


def test_a_json_string_is_not_a_boolean() -> None:
    assert found(patient(active="true")) == {("structure", "Patient.active")}


@pytest.mark.parametrize("value", [Decimal("1.50"), 2, 2.5, Decimal("-1E+3")])
def test_decimals_are_numbers(value: Any) -> None:
    assert found(observation(valueQuantity={"value": value})) == set()


@pytest.mark.parametrize("value", ["1.5", True, float("nan"), float("inf")])
def test_bad_decimals(value: Any) -> None:
    issues = found(observation(valueQuantity={"value": value}))
    assert {e for _, e in issues} == {"Observation.value.ofType(Quantity).value"}


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_empty_and_blank_strings(value: str) -> None:
    assert found(patient(name=[{"family": value}])) == {("value", "Patient.name[0].family")}


# --- arrays, objects, null ----------------------------------------------------------------


def test_repeating_elements_must_be_arrays() -> None:
    assert found(patient(name={"family": "x"})) == {("structure", "Patient.name")}


def test_single_elements_must_not_be_arrays() -> None:
    assert found(patient(gender=["male"])) == {("structure", "Patient.gender")}
    assert found(patient(maritalStatus=[{"text": "x"}])) == {("structure", "Patient.maritalStatus")}


def test_complex_elements_must_be_objects() -> None:
    assert found(patient(maritalStatus="married")) == {("structure", "Patient.maritalStatus")}


def test_empty_objects_and_arrays() -> None:
    assert found(patient(name=[{}])) == {("structure", "Patient.name[0]")}
    assert found(patient(name=[])) == {("structure", "Patient.name")}
    assert found(patient(maritalStatus={})) == {("structure", "Patient.maritalStatus")}


@pytest.mark.parametrize(
    ("elements", "expression"),
    [
        ({"active": None}, "Patient.active"),
        ({"name": None}, "Patient.name"),
        ({"name": [None]}, "Patient.name[0]"),
        ({"name": [{"given": ["a", None]}]}, "Patient.name[0].given[1]"),
        ({"name": [{"given": ["a", None], "_given": [None, None]}]}, "Patient.name[0].given[1]"),
    ],
)
def test_null(elements: dict[str, Any], expression: str) -> None:
    assert found(patient(**elements)) == {("structure", expression)}


def test_null_paired_with_an_extension_is_fine() -> None:
    name = {"given": ["a", None], "_given": [None, {"id": "g2"}]}
    assert found(patient(name=[name])) == set()


def test_extension_arrays_must_line_up() -> None:
    name = {"given": ["a", "b"], "_given": [{"id": "g1"}]}
    assert found(patient(name=[name])) == {("structure", "Patient.name[0].given")}


# --- unknown properties -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elements", "expression"),
    [
        ({"foo": 1}, "Patient.foo"),
        ({"resource_type": "Patient"}, "Patient.resource_type"),  # fhir.resources drops it
        ({"fhir_comments": ["x"]}, "Patient.fhir_comments"),
        ({"name": [{"family": "x", "nickname": "y"}]}, "Patient.name[0].nickname"),
        ({"_name": [{"id": "x"}]}, "Patient._name"),  # `_` only for primitives
        ({"deceasedString": "yes"}, "Patient.deceasedString"),  # not a deceased[x] type
        ({"deceased": True}, "Patient.deceased"),
    ],
)
def test_unknown_properties_are_reported_once(elements: dict[str, Any], expression: str) -> None:
    issues = validate_resource(patient(**elements))
    assert [(i.code, i.expression) for i in issues] == [("structure", (expression,))]


def test_r4b_only_elements_are_unknown() -> None:
    extension = {"url": "http://x", "valueCodeableReference": {"concept": {"text": "x"}}}
    assert found(patient(extension=[extension])) == {
        ("structure", "Patient.extension[0].valueCodeableReference")
    }


def test_r4_elements_missing_in_r4b_are_accepted() -> None:
    meta = {"url": "http://x", "valueMeta": {"versionId": "1"}}
    uuid1 = {"url": "http://y", "valueUuid": "urn:uuid:c757873d-ec9a-11e0-9000-2e3b6c0b5a3b"}
    assert found(patient(extension=[meta, uuid1])) == set()


def test_non_string_keys() -> None:
    assert found({"resourceType": "Patient", 1: 2}) == {("structure", "Patient")}


# --- required elements and bindings --------------------------------------------------------


def test_missing_required_elements() -> None:
    assert found({"resourceType": "Observation"}) == {
        ("required", "Observation.status"),
        ("required", "Observation.code"),
    }
    assert found(patient(link=[{"type": "seealso"}])) == {("required", "Patient.link[0].other")}
    assert found(patient(extension=[{"valueString": "x"}])) == {
        ("required", "Patient.extension[0].url")
    }


def test_a_required_primitive_may_be_an_extension_only() -> None:
    absent = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason"}
    resource = {
        "resourceType": "Observation",
        "_status": {"extension": [{**absent, "valueCode": "unknown"}]},
        "code": {"text": "x"},
    }
    assert found(resource) == set()


def test_a_required_choice_is_satisfied_by_any_type() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/1"},
    }
    assert found(request) == {("required", "MedicationRequest.medication")}
    assert found({**request, "medicationReference": {"reference": "Medication/1"}}) == set()


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (patient(gender="x"), "Patient.gender"),
        (patient(gender="Male"), "Patient.gender"),
        (observation(status="done"), "Observation.status"),
        ({"resourceType": "Bundle", "type": "bag"}, "Bundle.type"),
        (patient(telecom=[{"system": "pigeon", "value": "1"}]), "Patient.telecom[0].system"),
        (patient(name=[{"use": "nick", "text": "x"}]), "Patient.name[0].use"),
    ],
)
def test_required_code_bindings(resource: dict[str, Any], expression: str) -> None:
    assert found(resource) == {("code-invalid", expression)}


def test_weaker_bindings_are_not_checked() -> None:
    marital = {"coding": [{"system": "http://example.org", "code": "whatever"}]}
    assert found(patient(language="xx-YY", maritalStatus=marital)) == set()


def test_unenumerable_required_bindings_are_not_checked() -> None:
    assert found(patient(photo=[{"contentType": "image/x-anything"}])) == set()


# --- choice types -----------------------------------------------------------------------------


def test_one_type_per_choice() -> None:
    resource = patient(deceasedBoolean=True, deceasedDateTime="2020-01-01")
    issues = validate_resource(resource)
    assert [(i.code, i.expression) for i in issues] == [("structure", ("Patient.deceased",))]
    assert "deceasedBoolean" in issues[0].diagnostics


def test_choice_values_are_checked_by_type() -> None:
    """Expressions name a choice element's type as FHIRPath does (and the HL7 validator):
    ``value.ofType(boolean)`` for valueBoolean (fhirpath.html#functions: ofType)."""
    assert found(observation(valueBoolean="yes")) == {
        ("structure", "Observation.value.ofType(boolean)")
    }
    assert found(observation(valueQuantity={"value": "x"})) == {
        ("structure", "Observation.value.ofType(Quantity).value")
    }
    assert found(observation(_valueString={"id": 1})) == {
        ("structure", "Observation.value.ofType(string).id")
    }
    assert found(observation(valueFoo=1)) == {("structure", "Observation.valueFoo")}


def test_nested_choice_in_a_backbone() -> None:
    component = {"code": {"text": "a"}, "valueString": "a", "valueInteger": 1}
    assert found(observation(component=[component])) == {
        ("structure", "Observation.component[0].value")
    }


def test_simple_quantity_has_no_comparator() -> None:
    range_ = {"low": {"value": 1, "comparator": "<"}}
    assert found(observation(referenceRange=[range_])) == {
        ("structure", "Observation.referenceRange[0].low.comparator")
    }


# --- backbone elements, primitive extensions, invariants ---------------------------------------


def test_nested_backbone_elements() -> None:
    contact = {"name": {"family": 5}, "gender": "f"}
    assert found(patient(contact=[contact])) == {
        ("structure", "Patient.contact[0].name.family"),
        ("code-invalid", "Patient.contact[0].gender"),
    }
    assert found(observation(component=[{"valueString": "x"}])) == {
        ("required", "Observation.component[0].code")
    }


def test_recursive_backbone_elements() -> None:
    item = {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "nonsense"}]}
    questionnaire = {"resourceType": "Questionnaire", "status": "draft", "item": [item]}
    assert found(questionnaire) == {("code-invalid", "Questionnaire.item[0].item[0].type")}


def test_primitive_extensions() -> None:
    birth_time = {"url": "http://x", "valueDateTime": "1974-12-25T14:35:45-05:00"}
    assert found(patient(_birthDate={"extension": [birth_time]})) == set()
    assert found(patient(_birthDate={"foo": 1})) == {("structure", "Patient.birthDate.foo")}
    assert found(patient(_birthDate=[{"id": "x"}])) == {("structure", "Patient.birthDate")}
    assert found(patient(_birthDate={"extension": [{"valueString": "x"}]})) == {
        ("required", "Patient.birthDate.extension[0].url")
    }
    assert found(patient(_birthDate={})) == {("structure", "Patient.birthDate")}


def test_an_extension_has_a_value_or_extensions_not_both() -> None:
    extension = {
        "url": "http://x",
        "valueString": "a",
        "extension": [{"url": "y", "valueCode": "b"}],
    }
    assert found(patient(extension=[extension])) == {("invariant", "Patient.extension[0]")}


# --- contained and nested resources --------------------------------------------------------------


def test_contained_resources_are_validated_with_their_own_type() -> None:
    contained = [
        {"resourceType": "Organization", "name": "A"},
        {"resourceType": "Patient", "foo": 1},
    ]
    # and dom-3 on the container: neither is referenced
    assert found(patient(contained=contained)) == {
        ("structure", "Patient.contained[1].foo"),
        ("invariant", "Patient"),
    }
    bad_type = [{"resourceType": "Nope"}]
    assert found(patient(contained=bad_type)) == {
        ("not-supported", "Patient.contained[0]"),
        ("invariant", "Patient"),  # dom-3: not referenced
    }
    assert found(patient(contained=["x"])) == {("structure", "Patient.contained[0]")}


def test_contained_resources_do_not_nest() -> None:
    inner = {"resourceType": "Organization", "contained": [{"resourceType": "Basic", "code": {}}]}
    issues = found(patient(contained=[inner]))
    assert ("invariant", "Patient") in issues  # dom-2, on the container
    dom2 = [i for i in validate_resource(patient(contained=[inner])) if i.code == "invariant"]
    assert next(i.diagnostics[:6] for i in dom2 if i.expression == ("Patient",)) == "dom-2:"
    # without the invariants, the structural pass says it
    plain = validate_resource(patient(contained=[inner]), invariants=False)
    assert ("invalid", ("Patient.contained[0]",)) in {(i.code, i.expression) for i in plain}
    assert ("structure", "Patient.contained[0].contained[0].code") in issues


def test_bundle_entries_are_validated_with_their_own_type() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": observation(status="bogus"), "request": {"method": "POST", "url": "x"}},
            {"resource": {"resourceType": "Observation"}, "request": {"method": "GET", "url": "x"}},
            {"resource": patient(active="yes"), "request": {"method": "PUT", "url": "Patient/1"}},
            {"request": {"method": "DELETE", "url": "Patient/2"}},
        ],
    }
    assert found(bundle) == {
        ("code-invalid", "Bundle.entry[1].resource.status"),
        ("required", "Bundle.entry[2].resource.status"),
        ("required", "Bundle.entry[2].resource.code"),
        ("structure", "Bundle.entry[3].resource.active"),
    }


def test_bundle_entry_request_is_checked() -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"url": "x"}}]}
    assert found(bundle) == {("required", "Bundle.entry[0].request.method")}


def test_parameters_resources() -> None:
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "a", "resource": patient(gender="x")},
            {"name": "b", "part": [{"name": "c", "resource": {"resourceType": "Nope"}}]},
            {"name": "d", "valueUuid": "urn:uuid:c757873d-ec9a-11e0-9000-2e3b6c0b5a3b"},
        ],
    }
    assert found(parameters) == {
        ("code-invalid", "Parameters.parameter[0].resource.gender"),
        ("not-supported", "Parameters.parameter[1].part[0].resource"),
    }


# --- R4-only and reshaped types -------------------------------------------------------------------


def medicinal_product(**elements: Any) -> dict[str, Any]:
    name = {
        "productName": "Equilidem 2.5 mg film-coated tablets",
        "namePart": [{"part": "Equilidem", "type": {"code": "INV"}}],
        "countryLanguage": [{"country": {"text": "EU"}, "language": {"coding": [{"code": "EN"}]}}],
    }
    return {"resourceType": "MedicinalProduct", "id": "example", "name": [name], **elements}


def test_an_r4_only_type_is_validated_from_the_r4_definitions() -> None:
    assert found(medicinal_product()) == set()
    assert found(medicinal_product(domain={"code": "Human"}, foo=1)) == {
        ("structure", "MedicinalProduct.foo")
    }
    assert found({"resourceType": "MedicinalProduct"}) == {("required", "MedicinalProduct.name")}
    assert found(medicinal_product(name={"productName": "x"})) == {
        ("structure", "MedicinalProduct.name")
    }
    part = {"part": 5, "type": {"code": "INV"}}
    bad = medicinal_product(name=[{"productName": "x", "namePart": [part]}])
    assert found(bad) == {("structure", "MedicinalProduct.name[0].namePart[0].part")}


def test_an_r4_only_type_checks_choices() -> None:
    base = medicinal_product()
    issue = {
        "resourceType": "MedicinalProductContraindication",
        "subject": [{"reference": "MedicinalProduct/x"}],
    }
    assert found(base) == set()
    assert found(issue) == set()
    interaction = {
        "resourceType": "MedicinalProductInteraction",
        "interactant": [
            {"itemReference": {"reference": "Medication/a"}, "itemCodeableConcept": {"text": "b"}}
        ],
    }
    assert found(interaction) == {("structure", "MedicinalProductInteraction.interactant[0].item")}


def test_r4_only_types_inside_a_bundle() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": medicinal_product()}, {"resource": medicinal_product(foo=1)}],
    }
    assert found(bundle) == {("structure", "Bundle.entry[1].resource.foo")}


def test_evidence_has_its_r4_shape() -> None:
    evidence = {
        "resourceType": "Evidence",
        "status": "draft",
        "name": "E",
        "exposureBackground": {"reference": "EvidenceVariable/1"},
    }
    assert found(evidence) == set()
    r4b_shaped = {"resourceType": "Evidence", "status": "draft", "variableDefinition": []}
    assert found(r4b_shaped) == {
        ("required", "Evidence.exposureBackground"),
        ("structure", "Evidence.variableDefinition"),
    }


def test_evidence_variable_has_its_r4_shape() -> None:
    characteristic = {"definitionCodeableConcept": {"text": "x"}, "groupMeasure": "median"}
    resource = {"resourceType": "EvidenceVariable", "status": "active"}
    assert found({**resource, "characteristic": [characteristic]}) == set()
    medplum_r5 = {"definitionByTypeAndValue": {"type": {"text": "x"}}}
    assert found({**resource, "characteristic": [medplum_r5]}) == {
        ("structure", "EvidenceVariable.characteristic[0].definitionByTypeAndValue"),
        ("required", "EvidenceVariable.characteristic[0].definition"),
    }


def test_medplum_additions_are_not_r4() -> None:
    meta = {"project": "x", "versionId": "1"}
    assert found(patient(meta=meta)) == {("structure", "Patient.meta.project")}
    issue = {"resourceType": "DetectedIssue", "status": "final"}
    assert found(issue) == set()
    assert found({**issue, "status": "mitigated"}) == {("code-invalid", "DetectedIssue.status")}


# --- robustness -----------------------------------------------------------------------------------


def nested_extension(depth: int) -> dict[str, Any]:
    extension: dict[str, Any] = {"url": "http://x", "valueString": "leaf"}
    for _ in range(depth):
        extension = {"url": "http://x", "extension": [extension]}
    return extension


def test_deep_but_reasonable_nesting_is_fine() -> None:
    assert found(patient(extension=[nested_extension(40)])) == set()


@pytest.mark.parametrize("depth", [150, 3000])
def test_deep_nesting_is_refused_not_crashed(depth: int) -> None:
    issues = validate_resource(patient(extension=[nested_extension(depth)]))
    assert [i.code for i in issues] == ["too-costly"]


def test_cycles_do_not_hang() -> None:
    extension: dict[str, Any] = {"url": "http://x"}
    extension["extension"] = [extension]
    assert [i.code for i in validate_resource(patient(extension=[extension]))] == ["too-costly"]


def test_nested_bundles_are_bounded() -> None:
    resource: dict[str, Any] = patient()
    for _ in range(200):
        resource = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": resource}],
        }
    assert [i.code for i in validate_resource(resource)] == ["too-costly"]


@pytest.mark.parametrize(
    "value", [{1, 2}, b"bytes", object(), (1, 2), 3 + 4j, Decimal("NaN"), {"a": {1}}]
)
def test_odd_python_values_become_issues(value: Any) -> None:
    for elements in ({"active": value}, {"name": value}, {"name": [value]}, {"foo": value}):
        issues = validate_resource(patient(**elements))
        assert issues and all(i.severity == "error" for i in issues)


def test_many_errors_are_all_reported() -> None:
    resource = patient(name=[{"family": i} for i in range(200)])
    assert len(validate_resource(resource)) == 200


def test_bundle_response_outcome_is_a_resource() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "oops", "code": "x"}]}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": "200", "outcome": outcome}}],
    }
    assert found(bundle) == {
        ("code-invalid", "Bundle.entry[0].response.outcome.issue[0].severity"),
        ("code-invalid", "Bundle.entry[0].response.outcome.issue[0].code"),
    }


# --- the model and the fhir.resources pass ------------------------------------------------------


def test_every_resource_type_has_an_element_model() -> None:
    assert set(resource_types()) <= set(model().types)


def test_types_reshaped_in_r4b_skip_the_r4b_models() -> None:
    unusable = model().r4b_unusable
    assert {"MedicinalProduct", "Evidence", "EvidenceVariable", "SubstancePolymer"} <= unusable
    assert not {"Patient", "Observation", "Bundle", "Parameters"} & unusable


def test_a_crash_in_fhir_resources_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        @staticmethod
        def model_validate(data: Any) -> None:
            raise KeyError("boom")

    monkeypatch.setattr(r4b, "model_class", lambda name: Broken)
    issues = validate_resource(patient(active=True), r4b_models=True)
    assert [(i.severity, i.code) for i in issues] == [("warning", "exception")]
    assert found(patient(active="yes")) == {("structure", "Patient.active")}


def pydantic_issues(resource: dict[str, Any]) -> list[Issue]:
    """The fhir.resources errors for a resource, converted, without deduplication."""
    info = model().types[resource["resourceType"]]
    try:
        r4b.model_class(info.name).model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    else:
        return []
    issues = [r4b.convert(e, info, info.name) for e in errors]
    return [i for i in issues if i is not None]


@pytest.mark.parametrize(
    ("resource", "expression", "code"),
    [
        (patient(name=[{"given": ["a", 1]}]), "Patient.name[0].given[1]", "structure"),
        (patient(deceasedBoolean=True, deceasedDateTime="2020"), "Patient.deceased", "structure"),
        (
            patient(_birthDate={"extension": [{"url": 5}]}),
            "Patient.birthDate.extension[0].url",
            "structure",
        ),
        (
            {"resourceType": "Encounter", "status": "planned", "class": {"code": 1}},
            "Encounter.class.code",
            "structure",
        ),
        ({"resourceType": "Encounter", "status": "planned"}, "Encounter.class", "required"),
        (patient(birthDate="2021-02-29"), "Patient.birthDate", "value"),
        (
            observation(component=[{"code": {}, "valueString": "a", "valueInteger": 1}]),
            "Observation.component[0].value",
            "structure",
        ),
    ],
)
def test_pydantic_errors_become_fhirpath_issues(
    resource: dict[str, Any], expression: str, code: str
) -> None:
    issues = pydantic_issues(resource)
    assert (code, (expression,)) in [(i.code, i.expression) for i in issues]
    assert all("https://" not in i.diagnostics for i in issues)


def test_pydantic_errors_that_r4_contradicts_are_dropped() -> None:
    meta = {"url": "http://x", "valueMeta": {"versionId": "1"}}
    uuid1 = {"url": "http://y", "valueUuid": "urn:uuid:c757873d-ec9a-11e0-9000-2e3b6c0b5a3b"}
    assert pydantic_issues(patient(extension=[meta, uuid1])) == []
