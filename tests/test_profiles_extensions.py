"""Extensions checked against their definitions (issue #14, profiles/extensions.py), on
every resource, over HTTP: ``$validate`` and writes.

extensibility.html#Extension: "the url is a mandatory attribute / property and
identifies the meaning of the extension ... it SHALL be a URL that resolves to a
StructureDefinition"; defining-extensions.html#context: "the context of use ... where
the extension can be used" (element contexts: an element path or a data type, e.g.
``Patient``, ``HumanName``, ``Element``); the value[x], and for a complex extension its
``Extension.extension`` slices, as its StructureDefinition says.
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir_helpers import (
    app_client,
    assert_outcome,
    constraint_profile,
    expressions,
    observation,
    patient,
    post,
    without_best_practice,
)
from test_profiles_validation import bundle, errors, post_bundle, validate

from profiles import AVAILABLE_TIME, definitions

BASE = "http://clinic.example/StructureDefinition/"
NICKNAME = BASE + "nickname"  # string, on Patient, at most once
ORDER = BASE + "name-order"  # code, on HumanName
CERTAINTY = BASE + "birth-certainty"  # boolean, on Patient.birthDate (a primitive)
INITIALS = BASE + "initials"  # string, capitals (a constraint of its own)


def extension_sd(
    url: str, contexts: list[str], *elements: dict[str, Any], max_: str = "*"
) -> dict[str, Any]:
    root = {"id": "Extension", "path": "Extension", "min": 0, "max": max_}
    fixed_url = {"id": "Extension.url", "path": "Extension.url", "fixedUri": url}
    return constraint_profile(
        url,
        "Extension",
        [root, fixed_url, *elements],
        kind="complex-type",
        context=[{"type": "element", "expression": c} for c in contexts],
    )


def value(*types: str) -> dict[str, Any]:
    return {
        "id": "Extension.value[x]",
        "path": "Extension.value[x]",
        "min": 1,
        "type": [{"code": t} for t in types],
    }


DEFINITIONS = [
    extension_sd(NICKNAME, ["Patient"], value("string"), max_="1"),
    extension_sd(ORDER, ["HumanName"], value("code")),
    extension_sd(CERTAINTY, ["Patient.birthDate"], value("boolean")),
    extension_sd(
        INITIALS,
        ["Element"],
        {
            **value("string"),
            "constraint": [
                {
                    "key": "ini-1",
                    "severity": "error",
                    "human": "Initials are capital letters",
                    "expression": "matches('^[A-Z]+$')",
                }
            ],
        },
    ),
]


@pytest.fixture
def api(client):
    for sd in [*DEFINITIONS, *definitions()]:
        r = post(client, sd)
        assert r.status_code == 201, r.text
    return client


def ext(url: str, **v: Any) -> dict[str, Any]:
    return {"url": url, **v}


def test_conforming_extensions_pass(api):
    ok = patient(
        extension=[ext(NICKNAME, valueString="Pepe")],
        name=[{"family": "Núñez", "extension": [ext(ORDER, valueCode="western")]}],
        _birthDate={"extension": [ext(CERTAINTY, valueBoolean=True)]},
    )
    assert errors(validate(api, "Patient", ok)) == []
    assert post(api, ok).status_code == 201


CASES = [
    (
        "value type",
        patient(extension=[ext(NICKNAME, valueInteger=1)]),
        ["Patient.extension[0].value.ofType(integer)"],
    ),
    (
        "value missing",
        patient(extension=[ext(NICKNAME, extension=[ext("x", valueString="a")])]),
        ["Patient.extension[0].value"],
    ),
    (
        "context: a resource",
        patient(name=[{"family": "Núñez", "extension": [ext(NICKNAME, valueString="P")]}]),
        ["Patient.name[0].extension[0]"],
    ),
    (
        "context: a data type",
        patient(extension=[ext(ORDER, valueCode="western")]),
        ["Patient.extension[0]"],
    ),
    (
        "context: a primitive element",
        patient(_gender={"extension": [ext(CERTAINTY, valueBoolean=True)]}),
        ["Patient.gender.extension[0]"],
    ),
    (
        "cardinality on the element (max 1)",
        patient(extension=[ext(NICKNAME, valueString="A"), ext(NICKNAME, valueString="B")]),
        ["Patient"],
    ),
    (
        "the extension's own constraint",
        patient(name=[{"family": "Núñez", "extension": [ext(INITIALS, valueString="jn")]}]),
        ["Patient.name[0].extension[0].value.ofType(string)"],
    ),
]


@pytest.mark.parametrize(("case", "resource", "where"), CASES, ids=[c[0] for c in CASES])
def test_each_extension_rule_fails(api, case, resource, where):
    found = errors(validate(api, "Patient", resource))
    assert expressions(found) == where, found
    issues = assert_outcome(post(api, resource), 422)
    assert expressions(issues) == where


def test_context_on_another_resource(api):
    bad = observation(extension=[ext(NICKNAME, valueString="Pepe")])
    found = errors(validate(api, "Observation", bad))
    assert expressions(found) == ["Observation.extension[0]"]
    assert "not allowed on Observation" in found[0]["diagnostics"]
    assert "Patient" in found[0]["diagnostics"]


# --- a complex extension: the shipped available-time (profiles/definitions) ---------------------


def hours(*parts: dict[str, Any]) -> dict[str, Any]:
    return ext(AVAILABLE_TIME, extension=list(parts))


def schedule(*extensions: dict[str, Any], rtype: str = "Schedule") -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": rtype, "extension": list(extensions)}
    if rtype == "Schedule":
        body["actor"] = [{"display": "Consultorio 1"}]
    return body


COMPLEX_CASES = [
    (
        "an undefined sub-extension (closed slicing)",
        hours(ext("daysOfWeek", valueCode="mon"), ext("weekday", valueCode="mon")),
        ["Schedule.extension[0].extension[1]"],
    ),
    (
        "a sub-extension of the wrong type",
        hours(ext("allDay", valueString="yes")),
        ["Schedule.extension[0].extension[0].value.ofType(string)"],
    ),
    (
        "a sub-extension too often (allDay 0..1)",
        hours(ext("allDay", valueBoolean=True), ext("allDay", valueBoolean=False)),
        ["Schedule.extension[0].extension"],
    ),
]


def test_complex_extension_conforming(api):
    ok = schedule(
        hours(
            ext("daysOfWeek", valueCode="mon"),
            ext("daysOfWeek", valueCode="tue"),
            ext("availableStartTime", valueTime="08:00:00"),
            ext("availableEndTime", valueTime="12:00:00"),
        )
    )
    assert errors(validate(api, "Schedule", ok)) == []
    assert post(api, ok).status_code == 201


@pytest.mark.parametrize(
    ("case", "extension", "where"), COMPLEX_CASES, ids=[c[0] for c in COMPLEX_CASES]
)
def test_complex_extension_rules(api, case, extension, where):
    found = errors(validate(api, "Schedule", schedule(extension)))
    assert expressions(found) == where, found
    assert AVAILABLE_TIME in found[0]["diagnostics"]
    assert_outcome(post(api, schedule(extension)), 422)


def test_complex_extension_context(api):
    """available-time's context is Schedule and Location, not Practitioner."""
    bad = {
        "resourceType": "Practitioner",
        "extension": [hours(ext("allDay", valueBoolean=True))],
    }
    found = errors(validate(api, "Practitioner", bad))
    assert expressions(found) == ["Practitioner.extension[0]"]


def test_extension_in_a_transaction_entry(api):
    body = bundle("transaction", patient(extension=[ext(NICKNAME, valueInteger=1)]))
    issues = assert_outcome(post_bundle(api, body), 422)
    assert expressions(issues) == ["Bundle.entry[0].resource.extension[0].value.ofType(integer)"]


# --- unknown extensions -------------------------------------------------------------------------

UNKNOWN = "http://elsewhere.example/StructureDefinition/unknown"
CORE_EXT = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"


def test_unknown_extension_is_a_warning(api):
    body = patient(extension=[ext(UNKNOWN, valueString="x")])
    r = validate(api, "Patient", body)
    assert errors(r) == []
    issues = without_best_practice(r.json()["issue"])
    warnings = [i for i in issues if i["severity"] == "warning"]
    assert [i["expression"] for i in warnings] == [["Patient.extension[0]"]]
    assert UNKNOWN in warnings[0]["diagnostics"]
    assert post(api, body).status_code == 201


def test_unknown_extension_is_an_error_when_configured(settings):
    with app_client(settings, unknown_extensions="error") as c:
        body = patient(extension=[ext(UNKNOWN, valueString="x")])
        issues = assert_outcome(post(c, body), 422)
        assert expressions(issues) == ["Patient.extension[0]"]
        assert expressions(errors(validate(c, "Patient", body))) == ["Patient.extension[0]"]
        # an R4 core extension (not held here) stays a warning
        core = patient(extension=[ext(CORE_EXT, valueAddress={"city": "Quito"})])
        assert post(c, core).status_code == 201


def test_unknown_extensions_ignored(settings):
    with app_client(settings, unknown_extensions="ignore") as c:
        r = validate(c, "Patient", patient(extension=[ext(UNKNOWN, valueString="x")]))
        issues = without_best_practice(r.json()["issue"])
        assert [i for i in issues if i["severity"] != "information"] == []


def test_warn_enforcement_accepts_a_broken_extension(settings):
    with app_client(settings, profile_enforcement="warn") as c:
        assert post(c, DEFINITIONS[0]).status_code == 201
        bad = patient(extension=[ext(NICKNAME, valueInteger=1)])
        assert post(c, bad).status_code == 201
        issues = without_best_practice(validate(c, "Patient", bad).json()["issue"])
        assert [(i["severity"], i["expression"]) for i in issues] == [
            ("warning", ["Patient.extension[0].value.ofType(integer)"])
        ]


def test_validate_a_malformed_body_with_an_empty_key(api):
    """An empty property name (found by schemathesis: the extension walk indexed key[0])
    is a structural issue in the OperationOutcome, never a 500."""
    body = {"resourceType": "Observation", "": {}, "status": "final", "code": {"text": "x"}}
    r = validate(api, "Observation", body)
    assert r.status_code == 200, r.text
    issues = r.json()["issue"]
    assert any(i["severity"] == "error" and i["code"] == "structure" for i in issues), issues
