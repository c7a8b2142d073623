"""Terminology bindings (terminologies.html#strength) checked on write and by $validate,
against a real ``fhir-server serve`` (two worker processes) holding the R4 core
terminology it loads at first start.

    required: "To be conformant, the concept in this element SHALL be from the
    specified value set."  -> an error: the write is refused (400), $validate says so.
    extensible: "To be conformant, the concept in this element SHALL be from the
    specified value set if any of the codes within the value set can apply to the
    concept being communicated."  -> whether one applies is not for the server to
    judge: a $validate warning, the write is accepted.
    preferred / example: guidance only -> not checked.

Issue expressions are FHIRPath as the HL7 validator writes them: a choice element's
type is ``value.ofType(Expression)`` (fhirpath.html#functions).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhir_helpers import (
    FHIR_JSON,
    assert_outcome,
    binary_patch,
    bundle_response,
    entry,
    expressions,
    patch_request,
    post_bundle,
    urn,
)
from pymongo import MongoClient

from fhir_server.testing import ServerProcess

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CLINICAL_VS = "http://hl7.org/fhir/ValueSet/condition-clinical"
MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOCAL = "http://clinica.example.org/fhir/CodeSystem/local"


@pytest.fixture(scope="module")
def module_database(mongo_url: str) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    with MongoClient(mongo_url) as mc:
        mc.drop_database(name)


@pytest.fixture(scope="module")
def server(mongo_url: str, module_database: str) -> Iterator[ServerProcess]:
    """Two workers: each validates with its own cached value sets."""
    with ServerProcess(
        mongo_url=mongo_url, database=module_database, workers=2, terminology=True
    ) as s:
        yield s


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url.removesuffix("/fhir"), timeout=60) as c:
        yield c


def condition(status: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "fiebre"},
        **extra,
    }
    if status is not None:
        out["clinicalStatus"] = status
    return out


def concept(*codings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"coding": list(codings), **extra}


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def post(http: httpx.Client, resource: dict[str, Any]) -> httpx.Response:
    return http.post(
        f"/fhir/{resource['resourceType']}",
        content=json.dumps(resource),
        headers={"Content-Type": FHIR_JSON},
    )


NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}


def validate(http: httpx.Client, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """$validate's issues; the body gets a narrative, so that the best-practice dom-6
    warning (domainresource.html#invs, tests/test_validation_invariants.py) stays out."""
    resource = {"text": NARRATIVE, **resource}
    r = http.post(
        f"/fhir/{resource['resourceType']}/$validate",
        content=json.dumps(resource),
        headers={"Content-Type": FHIR_JSON},
    )
    assert r.status_code == 200, r.text
    return r.json()["issue"]  # type: ignore[no-any-return]


def by_severity(issues: list[dict[str, Any]], severity: str) -> list[tuple[str, str]]:
    return [(i["code"], i["expression"][0]) for i in issues if i["severity"] == severity]


# --- required ------------------------------------------------------------------------------


def test_required_codeable_concept_in_the_value_set_is_accepted(http: httpx.Client) -> None:
    good = condition(concept(coding(CLINICAL, "active", "Active")))
    assert post(http, good).status_code == 201
    issues = validate(http, good)
    assert [i["severity"] for i in issues] == ["information"]  # All OK


def test_required_codeable_concept_outside_the_value_set_is_refused(http: httpx.Client) -> None:
    bad = condition(concept(coding(CLINICAL, "dormant")))
    issues = assert_outcome(post(http, bad), 400)
    assert expressions(issues) == ["Condition.clinicalStatus"]
    assert issues[0]["code"] == "code-invalid" and CLINICAL_VS in issues[0]["diagnostics"]
    assert by_severity(validate(http, bad), "error") == [
        ("code-invalid", "Condition.clinicalStatus")
    ]


def test_one_coding_in_the_value_set_is_enough(http: httpx.Client) -> None:
    """The other codings of a CodeableConcept are translations (datatypes.html#
    CodeableConcept); a local one beside a member is not even a warning."""
    both = condition(concept(coding(LOCAL, "activa"), coding(CLINICAL, "active")))
    assert post(http, both).status_code == 201
    assert by_severity(validate(http, both), "warning") == []


def test_text_only_concept_fails_a_required_binding(http: httpx.Client) -> None:
    text_only = condition({"text": "activa"})
    assert expressions(assert_outcome(post(http, text_only), 400)) == ["Condition.clinicalStatus"]
    absent = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    assert post(http, condition(absent)).status_code == 201


def test_unknown_system_under_a_required_binding_is_an_error(http: httpx.Client) -> None:
    issues = assert_outcome(post(http, condition(concept(coding(LOCAL, "activa")))), 400)
    assert expressions(issues) == ["Condition.clinicalStatus"]
    assert f"the code system {LOCAL} is not known" in issues[0]["diagnostics"]


def test_required_binding_on_update_patch_transaction_and_batch(http: httpx.Client) -> None:
    good = condition(concept(coding(CLINICAL, "active")))
    created = post(http, good).json()
    url = f"/fhir/Condition/{created['id']}"
    bad_status = concept(coding(CLINICAL, "dormant"))

    bad = {**created, "clinicalStatus": bad_status}
    r = http.put(url, content=json.dumps(bad), headers={"Content-Type": FHIR_JSON})
    assert expressions(assert_outcome(r, 400)) == ["Condition.clinicalStatus"]

    ops = [{"op": "replace", "path": "/clinicalStatus/coding/0/code", "value": "dormant"}]
    r = http.patch(url, **patch_request(ops))
    assert expressions(assert_outcome(r, 400)) == ["Condition.clinicalStatus"]
    assert http.get(url).json()["clinicalStatus"] == good["clinicalStatus"]

    tx = [entry("POST", "Condition", condition(bad_status), urn())]
    issues = assert_outcome(post_bundle(http, tx), 400)  # type: ignore[arg-type]
    assert expressions(issues) == ["Bundle.entry[0].resource.clinicalStatus"]

    tx = [entry("PATCH", f"Condition/{created['id']}", binary_patch(ops))]
    assert_outcome(post_bundle(http, tx), 400)  # type: ignore[arg-type]

    batch = [
        entry("POST", "Condition", condition(bad_status)),
        entry("POST", "Condition", good),
    ]
    first, second = bundle_response(post_bundle(http, batch, "batch"), "batch-response")  # type: ignore[arg-type]
    assert first["response"]["status"].startswith("400")
    assert first["response"]["outcome"]["issue"][0]["code"] == "code-invalid"
    assert second["response"]["status"].startswith("201")


# --- extensible ------------------------------------------------------------------------------


def test_extensible_codeable_concept_outside_is_a_warning_only(http: httpx.Client) -> None:
    """Patient.maritalStatus is bound extensible to marital-status (v3 MaritalStatus
    and a NullFlavor)."""
    patient = {"resourceType": "Patient", "maritalStatus": concept(coding(ACT_CODE, "AMB"))}
    assert post(http, patient).status_code == 201
    issues = validate(http, patient)
    assert by_severity(issues, "error") == []
    assert by_severity(issues, "warning") == [("code-invalid", "Patient.maritalStatus")]
    member = {"resourceType": "Patient", "maritalStatus": concept(coding(MARITAL, "M"))}
    assert by_severity(validate(http, member), "warning") == []


def test_extensible_unknown_system_is_a_warning(http: httpx.Client) -> None:
    """A local code system under an extensible binding: accepted, with a warning that
    the code could not be checked (not a second one that it is outside)."""
    patient = {"resourceType": "Patient", "maritalStatus": concept(coding(LOCAL, "casado"))}
    assert post(http, patient).status_code == 201
    issues = validate(http, patient)
    assert by_severity(issues, "warning") == [
        ("not-found", "Patient.maritalStatus.coding[0].system")
    ]


def test_extensible_coding(http: httpx.Client) -> None:
    """Encounter.class is a Coding bound extensible to v3 ActEncounterCode."""
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": coding(ACT_CODE, "AMB", "ambulatory"),
    }
    assert by_severity(validate(http, encounter), "warning") == []
    outside = {**encounter, "class": coding(ACT_CODE, "_ActAccountCode")}
    assert post(http, outside).status_code == 201
    assert by_severity(validate(http, outside), "warning") == [("code-invalid", "Encounter.class")]


def test_extensible_code_inside_a_choice_type(http: httpx.Client) -> None:
    """Expression.language is a code bound extensible to expression-language; here in
    Extension.value[x], so the expression names the type with ofType."""
    extension = {
        "url": "http://clinica.example.org/fhir/StructureDefinition/regla",
        "valueExpression": {"language": "text/python", "expression": "1"},
    }
    patient = {"resourceType": "Patient", "extension": [extension]}
    assert post(http, patient).status_code == 201

    def code_warnings() -> list[tuple[str, str]]:
        # without the warning that the extension is unknown (profiles/extensions.py)
        found = by_severity(validate(http, patient), "warning")
        return [w for w in found if w[0] == "code-invalid"]

    assert code_warnings() == [
        ("code-invalid", "Patient.extension[0].value.ofType(Expression).language")
    ]
    extension["valueExpression"]["language"] = "text/fhirpath"
    assert code_warnings() == []


def test_extensible_codeable_concept_in_a_choice_type(http: httpx.Client) -> None:
    specimen = {
        "resourceType": "Specimen",
        "collection": {"fastingStatusCodeableConcept": concept(coding(ACT_CODE, "AMB"))},
    }
    assert by_severity(validate(http, specimen), "warning") == [
        ("code-invalid", "Specimen.collection.fastingStatus.ofType(CodeableConcept)")
    ]


# --- displays, weaker bindings, code elements --------------------------------------------------


def test_wrong_display_is_a_warning(http: httpx.Client) -> None:
    wrong = condition(concept(coding(CLINICAL, "active", "Inactivo")))
    assert post(http, wrong).status_code == 201
    issues = validate(http, wrong)
    assert by_severity(issues, "warning") == [
        ("code-invalid", "Condition.clinicalStatus.coding[0].display")
    ]
    assert "it should be 'Active'" in issues[0]["diagnostics"]
    # displays compare without case or extra spaces
    close = condition(concept(coding(CLINICAL, "active", "  ACTIVE ")))
    assert by_severity(validate(http, close), "warning") == []


def test_preferred_and_example_bindings_are_not_checked(http: httpx.Client) -> None:
    """Condition.code is bound by example (SNOMED CT), Condition.severity preferred."""
    resource = condition(
        concept(coding(CLINICAL, "active")),
        code=concept(coding(LOCAL, "fiebre")),
        severity=concept(coding(ACT_CODE, "AMB")),
    )
    assert [i["severity"] for i in validate(http, resource)] == ["information"]


def test_required_code_element(http: httpx.Client) -> None:
    """code elements with a required binding: the enumerated codes of the definitions."""
    issues = assert_outcome(post(http, {"resourceType": "Patient", "gender": "hombre"}), 400)
    assert expressions(issues) == ["Patient.gender"]


# --- invalidation and the switch --------------------------------------------------------------


def test_a_code_system_update_reaches_every_worker(http: httpx.Client) -> None:
    """The cached members are dropped when any process writes a CodeSystem: after the
    update, every worker accepts the new code (several requests reach both)."""
    bad = condition(concept(coding(CLINICAL, "dormant")))
    for _ in range(4):  # both workers now cache the value set without it
        assert post(http, bad).status_code == 400
    found = http.get("/fhir/CodeSystem", params={"url": CLINICAL}).json()["entry"][0]["resource"]
    found["concept"].append({"code": "dormant", "display": "Dormant"})
    r = http.put(
        f"/fhir/CodeSystem/{found['id']}",
        content=json.dumps(found),
        headers={"Content-Type": FHIR_JSON},
    )
    assert r.status_code == 200, r.text
    for _ in range(4):
        assert post(http, bad).status_code == 201


def test_bindings_can_be_switched_off(mongo_url: str, module_database: str) -> None:
    """FHIR_VALIDATE_BINDINGS=false: only the required code bindings of the definitions."""
    env = {"FHIR_VALIDATE_BINDINGS": "false"}
    with (
        ServerProcess(mongo_url=mongo_url, database=module_database, env=env) as off,
        httpx.Client(base_url=off.base_url.removesuffix("/fhir"), timeout=60) as http,
    ):
        assert post(http, condition(concept(coding(CLINICAL, "no-such-status")))).status_code == 201
        assert post(http, {"resourceType": "Patient", "gender": "hombre"}).status_code == 400
