"""$validate (resource-operation-validate.html): the body is the resource or a Parameters
resource (resource, mode, profile); the answer is a 200 OperationOutcome listing the
issues ("All OK" when none); nothing is ever stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fhir_helpers import (
    FHIR_JSON,
    app_client,
    assert_outcome,
    create_with_id,
    expressions,
    observation,
    patient,
    stored_document_count,
)

BAD_PATIENT = {**patient(), "gender": "x", "birthDate": "2020-13-01", "foo": 1}


def validate(client, path: str, body: Any = None, **params: str):
    """POST [path]/$validate; ``body`` None sends no body."""
    content = None if body is None else json.dumps(body)
    headers = {"Content-Type": FHIR_JSON} if body is not None else {}
    return client.post(f"/fhir/{path}/$validate", content=content, params=params, headers=headers)


def issues_of(r) -> list[dict[str, Any]]:
    """The issues of a 200 OperationOutcome (the operation itself succeeded)."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"], body
    return body["issue"]  # type: ignore[no-any-return]


def errors(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in issues if i["severity"] in ("error", "fatal")]


def all_ok(r) -> bool:
    """All OK, or only dom-6: these bodies have no narrative, which is a best-practice
    warning (domainresource.html#invs; tests/test_validation_invariants.py)."""
    issues = issues_of(r)
    if [(i["severity"], i["diagnostics"][:6]) for i in issues] == [("warning", "dom-6:")]:
        return True
    return (
        len(issues) == 1 and issues[0]["severity"] == "information" and "All OK" in str(issues[0])
    )


def parameters(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


@pytest.fixture
def api(client):
    create_with_id(client, patient(), "p1")
    create_with_id(client, patient(), "gone")
    assert client.delete("/fhir/Patient/gone").status_code in (200, 204)
    return client


# --- no mode: general validation ---------------------------------------------------------


def test_valid_resource_is_all_ok(api):
    assert all_ok(validate(api, "Patient", patient()))
    assert all_ok(validate(api, "Observation", observation()))


def test_invalid_resource_lists_issues_with_expressions(api):
    issues = issues_of(validate(api, "Patient", BAD_PATIENT))
    assert {"Patient.gender", "Patient.birthDate", "Patient.foo"} <= set(
        expressions(errors(issues))
    )


def test_missing_required_elements(api):
    issues = issues_of(validate(api, "Observation", {"resourceType": "Observation"}))
    assert {"Observation.status", "Observation.code"} <= set(expressions(errors(issues)))


def test_nested_resources_are_validated(api):
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Observation", "code": {"text": "x"}}}],
    }
    issues = issues_of(validate(api, "Bundle", bundle))
    assert "Bundle.entry[0].resource.status" in expressions(errors(issues))


def test_wrong_resource_type_is_an_issue(api):
    issues = issues_of(validate(api, "Patient", observation()))
    assert expressions(errors(issues)) == ["resourceType"]


def test_instance_level_without_mode_validates_the_body(api):
    assert all_ok(validate(api, "Patient/p1", patient(id="p1")))
    assert errors(issues_of(validate(api, "Patient/p1", BAD_PATIENT)))


# --- Parameters form -----------------------------------------------------------------------


def test_parameters_form(api):
    good = parameters({"name": "resource", "resource": patient()})
    assert all_ok(validate(api, "Patient", good))
    bad = parameters(
        {"name": "resource", "resource": BAD_PATIENT}, {"name": "mode", "valueCode": "create"}
    )
    assert "Patient.gender" in expressions(errors(issues_of(validate(api, "Patient", bad))))


def test_parameters_mode_applies(api):
    body = parameters(
        {"name": "resource", "resource": patient(id="other")},
        {"name": "mode", "valueCode": "update"},
    )
    issues = issues_of(validate(api, "Patient/p1", body))
    assert expressions(errors(issues)) == ["Patient.id"]


def test_validating_a_parameters_resource(api):
    plain = parameters({"name": "x", "valueString": "y"})
    assert all_ok(validate(api, "Parameters", plain))
    wrapped = parameters({"name": "resource", "resource": plain})
    assert all_ok(validate(api, "Parameters", wrapped))


@pytest.mark.parametrize(
    ("body", "params", "expression"),
    [
        (parameters({"name": "resource"}), {}, "Parameters.parameter[0]"),
        (
            parameters(
                {"name": "resource", "resource": patient()}, {"name": "x", "valueCode": "y"}
            ),
            {},
            "Parameters.parameter[1]",
        ),
        (
            parameters(
                {"name": "resource", "resource": patient()}, {"name": "mode", "valueInteger": 1}
            ),
            {},
            "Parameters.parameter[1]",
        ),
        (
            parameters(
                {"name": "resource", "resource": patient()},
                {"name": "mode", "valueCode": "create"},
            ),
            {"mode": "update"},
            "mode",
        ),
        (
            parameters(
                {"name": "resource", "resource": patient()},
                {"name": "resource", "resource": patient()},
            ),
            {},
            "Parameters.parameter[1]",
        ),
        ({"resourceType": "Parameters", "parameter": {}}, {}, "Parameters.parameter"),
    ],
)
def test_malformed_parameters_are_400(api, body, params, expression):
    issues = assert_outcome(validate(api, "Patient", body, **params), 400)
    assert expression in expressions(issues)


# --- mode=create ---------------------------------------------------------------------------


def test_create_mode(api):
    assert all_ok(validate(api, "Patient", patient(), mode="create"))
    issues = issues_of(validate(api, "Patient", BAD_PATIENT, mode="create"))
    assert "Patient.gender" in expressions(errors(issues))


def test_create_mode_ignores_the_id(api):
    # http.html#create: the id is ignored, so even a malformed one is no error
    issues = issues_of(validate(api, "Patient", patient(id="bad id!"), mode="create"))
    assert not errors(issues)
    notes = [i for i in issues if i["severity"] == "information"]
    assert [i["expression"] for i in notes] == [["Patient.id"]]
    # without a mode the id is part of the content checked
    issues = issues_of(validate(api, "Patient", patient(id="bad id!")))
    assert expressions(errors(issues)) == ["Patient.id"]


# --- mode=update ---------------------------------------------------------------------------


def test_update_mode(api):
    assert all_ok(validate(api, "Patient/p1", patient(id="p1"), mode="update"))
    # update-as-create is allowed by default; a deleted resource may be brought back
    assert all_ok(validate(api, "Patient/new", patient(id="new"), mode="update"))
    assert all_ok(validate(api, "Patient/gone", patient(id="gone"), mode="update"))


def test_update_mode_checks_the_id(api):
    issues = issues_of(validate(api, "Patient/p1", patient(id="p2"), mode="update"))
    assert [(i["code"], i["expression"]) for i in errors(issues)] == [("invalid", ["Patient.id"])]
    issues = issues_of(validate(api, "Patient/p1", patient(), mode="update"))
    assert expressions(errors(issues)) == ["Patient.id"]


def test_update_mode_reports_content_and_id_issues_together(api):
    issues = issues_of(validate(api, "Patient/p1", {**BAD_PATIENT, "id": "p2"}, mode="update"))
    assert {"Patient.gender", "Patient.id"} <= set(expressions(errors(issues)))


def test_update_mode_checks_if_match(api):
    r = api.post(
        "/fhir/Patient/p1/$validate",
        params={"mode": "update"},
        content=json.dumps(patient(id="p1")),
        headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"7"'},
    )
    assert [i["code"] for i in errors(issues_of(r))] == ["conflict"]


def test_update_mode_without_update_create(settings):
    with app_client(settings, allow_update_create=False) as c:
        create_with_id_denied = validate(c, "Patient/new", patient(id="new"), mode="update")
        assert [i["code"] for i in errors(issues_of(create_with_id_denied))] == ["not-supported"]


def test_update_mode_needs_an_instance(api):
    issues = assert_outcome(validate(api, "Patient", patient(id="p1"), mode="update"), 400)
    assert expressions(issues) == ["mode"]


# --- mode=delete ---------------------------------------------------------------------------


def test_delete_mode(api):
    assert all_ok(validate(api, "Patient/p1", mode="delete"))  # no body needed
    assert all_ok(validate(api, "Patient/p1", patient(), mode="delete"))  # body ignored
    assert [i["code"] for i in errors(issues_of(validate(api, "Patient/x", mode="delete")))] == [
        "not-found"
    ]
    assert [i["code"] for i in errors(issues_of(validate(api, "Patient/gone", mode="delete")))] == [
        "deleted"
    ]


def test_delete_mode_checks_if_match(api):
    r = api.post(
        "/fhir/Patient/p1/$validate", params={"mode": "delete"}, headers={"If-Match": 'W/"1"'}
    )
    assert all_ok(r)
    r = api.post(
        "/fhir/Patient/p1/$validate", params={"mode": "delete"}, headers={"If-Match": 'W/"2"'}
    )
    assert [i["code"] for i in errors(issues_of(r))] == ["conflict"]


def test_delete_mode_needs_an_instance(api):
    issues = assert_outcome(validate(api, "Patient", mode="delete"), 400)
    assert expressions(issues) == ["mode"]


def test_delete_mode_in_parameters(api):
    body = parameters({"name": "mode", "valueCode": "delete"})
    assert all_ok(validate(api, "Patient/p1", body))


# --- refused requests ----------------------------------------------------------------------


def test_unknown_profile_is_refused(api):
    """resource-operation-validate.html: "If a profile is nominated, and the server cannot
    validate against the nominated profile, it SHALL return an error" (profiles the
    server holds: tests/test_profiles_validation.py)."""
    issues = assert_outcome(
        validate(api, "Patient", patient(), profile="http://example.org/StructureDefinition/p"),
        400,
    )
    assert issues[0]["code"] == "not-found" and expressions(issues) == ["profile"]
    body = parameters(
        {"name": "resource", "resource": patient()},
        {"name": "profile", "valueUri": "http://example.org/StructureDefinition/p"},
    )
    issues = assert_outcome(validate(api, "Patient", body), 400)
    assert issues[0]["code"] == "not-found" and expressions(issues) == ["profile"]


@pytest.mark.parametrize(("mode", "code"), [("bogus", "invalid")])
def test_unknown_modes(api, mode, code):
    issues = assert_outcome(validate(api, "Patient/p1", patient(id="p1"), mode=mode), 400)
    assert issues[0]["code"] == code and expressions(issues) == ["mode"]


def test_malformed_bodies_are_400(api):
    headers = {"Content-Type": FHIR_JSON}
    for content in ("{", "[1]", '"Patient"', '{"a": 1, "a": 2}'):
        r = api.post("/fhir/Patient/$validate", content=content, headers=headers)
        assert_outcome(r, 400)
    issues = assert_outcome(validate(api, "Patient"), 400)  # no resource, no delete mode
    assert expressions(issues) == ["resource"]
    r = api.post(
        "/fhir/Patient/$validate", content="<Patient/>", headers={"Content-Type": "text/xml"}
    )
    assert_outcome(r, 415)


def test_other_refusals(api):
    assert_outcome(validate(api, "NotAType", patient()), 404)
    issues = assert_outcome(validate(api, "Patient", patient(), foo="bar"), 400)
    assert expressions(issues) == ["foo"]
    assert_outcome(validate(api, "Patient/bad_id", patient(), mode="update"), 400)
    r = api.get("/fhir/Patient/$validate")
    assert_outcome(r, 405)
    assert r.headers["allow"] == "POST"


# --- nothing is stored ---------------------------------------------------------------------


def test_nothing_is_ever_stored(client, settings):
    calls = [
        ("Patient", patient(), {}),
        ("Patient", patient(), {"mode": "create"}),
        ("Patient", BAD_PATIENT, {"mode": "create"}),
        ("Patient/p9", patient(id="p9"), {"mode": "update"}),
        ("Patient/p9", None, {"mode": "delete"}),
        ("Patient", parameters({"name": "resource", "resource": patient()}), {"mode": "create"}),
    ]
    for path, body, params in calls:
        assert validate(client, path, body, **params).status_code == 200
    assert stored_document_count(settings) == 0
    assert client.get("/fhir/Patient/p9").status_code == 404
    assert "entry" not in client.get("/fhir/Patient").json()


def test_existing_resources_are_untouched(api, settings):
    before = api.get("/fhir/Patient/p1").json()
    documents = stored_document_count(settings)
    changed = {**before, "gender": "female"}
    assert all_ok(validate(api, "Patient/p1", changed, mode="update"))
    assert all_ok(validate(api, "Patient/p1", mode="delete"))
    assert all_ok(validate(api, "Patient/gone", patient(id="gone"), mode="update"))
    assert api.get("/fhir/Patient/p1").json() == before
    assert api.get("/fhir/Patient/gone").status_code == 410
    assert stored_document_count(settings) == documents


def test_capability_statement_declares_validate(client):
    rest = client.get("/fhir/metadata").json()["rest"][0]
    assert {
        "name": "validate",
        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    } in rest["operation"]
